/*
 * tb_dropout_*: errors and modes, and PyTorch's RNG-independent semantics
 * (libtblocks' mask cannot equal PyTorch's: different RNGs). Its finite
 * differences are part of elementwise_gradients (test_activation.c).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

START_TEST(dropout_errors_and_modes)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    float x[10], y[10];
    tbt_fill_uniform(x, 10, -1, 1, 2);
    tb_tensor xt = tb_tensor_1d(x, 10), yt = tb_tensor_1d(y, 10), y9 = tb_tensor_1d(y, 9);
    tb_dropout_cache c;
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, -0.1f, &rng, &xt, &yt, &c),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 1.5f, &rng, &xt, &yt, &c),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, NAN, &rng, &xt, &yt, &c),
                     TB_ERR_INVALID_ARG);
    memset(&c, 0x5A, sizeof c);
    tb_dropout_cache before = c;
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, NULL, &xt, &yt, &c),
                     TB_ERR_NULL_ARG);
    ck_assert(memcmp(&c, &before, sizeof c) == 0); /* untouched on error */
    ck_assert_int_eq(tb_dropout_forward(&ctx, (tb_mode)3, 0.5f, &rng, &xt, &yt, &c),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, &rng, &xt, &y9, &c),
                     TB_ERR_SHAPE);
    ck_assert_uint_eq(rng.counter, 0); /* failed calls do not consume the stream */
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, &rng, &xt, &yt, &c), TB_OK);
    ck_assert_uint_eq(rng.counter, 10);
    ck_assert_int_eq(tb_dropout_backward(&ctx, &y9, &c, &y9), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_dropout_backward(&ctx, &yt, NULL, &yt), TB_ERR_NULL_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "tb_dropout_forward"));
    /* No cache (no backward follows): the same mask, the stream advanced. */
    float y2[10];
    tb_tensor y2t = tb_tensor_1d(y2, 10);
    rng.counter = 0;
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, &rng, &xt, &y2t, NULL),
                     TB_OK);
    ck_assert_uint_eq(rng.counter, 10);
    ck_assert(memcmp(y, y2, sizeof y) == 0);
    /* Inference needs no stream and is the identity. */
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_INFERENCE, 0.5f, NULL, &xt, &yt, &c), TB_OK);
    ck_assert(memcmp(x, y, sizeof x) == 0);
}
END_TEST

/* ---- Dropout ---------------------------------------------------------------
 *
 * libtblocks' mask cannot equal PyTorch's (different RNGs), so check the
 * RNG-independent semantics of torch.nn.functional.dropout instead:
 * training output is 0 or x * (1 / (1 - p)) (PyTorch multiplies by the
 * float32 scale 1/(1-p), computed once), the kept fraction is Binomial
 * (n, 1-p), backward is dy * mask / (1 - p) with the forward's mask,
 * inference and p = 0 are the identity, p = 1 gives zeros.
 */
enum { DROP_N = 100000 };

START_TEST(test_oracle_dropout)
{
    const float p = 0.3f;
    const float scale = 1.0f / (1.0f - p);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 12345);
    float *x = tbt_alloc(DROP_N * sizeof(float)), *y = tbt_nan_buffer(DROP_N);
    float *dy = tbt_alloc(DROP_N * sizeof(float)), *dx = tbt_nan_buffer(DROP_N);
    /* Nonzero inputs, so "kept" is exactly "y != 0". */
    tbt_fill_away_from_zero(x, DROP_N, -2.0f, 2.0f, 1e-3f, 7);
    tbt_fill_away_from_zero(dy, DROP_N, -1.0f, 1.0f, 1e-3f, 8);
    tb_tensor xt = tb_tensor_2d(x, 100, DROP_N / 100), yt = tb_tensor_1d(y, DROP_N);
    tb_tensor dyt = tb_tensor_2d(dy, 100, DROP_N / 100), dxt = tb_tensor_1d(dx, DROP_N);
    tb_dropout_cache cache;

    /* (a) outputs are exactly 0 or x * scale; and within 1 ulp of x / (1 - p). */
    CHECK_OK(ctx, tb_dropout_forward(&ctx, TB_MODE_TRAINING, p, &rng, &xt, &yt, &cache));
    ck_assert_uint_eq(rng.counter, DROP_N);
    size_t kept = 0;
    for (size_t i = 0; i < DROP_N; i++) {
        if (y[i] == 0.0f)
            continue;
        kept++;
        ck_assert_msg(y[i] == x[i] * scale, "dropout y[%zu] = %.9g, x = %.9g: neither 0 nor x/(1-p)",
                      i, (double)y[i], (double)x[i]);
        double exact = (double)x[i] / (1.0 - (double)p);
        ck_assert_msg(fabs((double)y[i] - exact) <= 1.2e-7 * fabs(exact),
                      "dropout y[%zu] = %.9g is not x/(1-p) = %.9g", i, (double)y[i], exact);
    }
    /* (b) kept fraction within 5 sigma of 1 - p (sigma = sqrt(n p (1-p)) = 145). */
    const double mean = DROP_N * (1.0 - (double)p);
    const double sigma = sqrt(DROP_N * (double)p * (1.0 - (double)p));
    printf("  dropout p=0.3 n=%d: kept %zu (expected %.0f +- %.0f), %.2f sigma\n", DROP_N, kept,
           mean, sigma, ((double)kept - mean) / sigma);
    ck_assert_msg(fabs((double)kept - mean) <= 5.0 * sigma, "kept %zu of %d, expected %.0f +- 5*%.0f",
                  kept, DROP_N, mean, sigma);

    /* (c) backward: dy * mask / (1 - p) with the forward's mask. */
    CHECK_OK(ctx, tb_dropout_backward(&ctx, &dyt, &cache, &dxt));
    for (size_t i = 0; i < DROP_N; i++) {
        float want = y[i] != 0.0f ? dy[i] * scale : 0.0f;
        ck_assert_msg(dx[i] == want, "dropout dx[%zu] = %.9g, want %.9g (kept=%d)", i,
                      (double)dx[i], (double)want, y[i] != 0.0f);
    }

    /* A second call draws a fresh mask (the stream advanced). */
    float *y2 = tbt_nan_buffer(DROP_N);
    tb_tensor y2t = tb_tensor_1d(y2, DROP_N);
    tb_dropout_cache cache2;
    CHECK_OK(ctx, tb_dropout_forward(&ctx, TB_MODE_TRAINING, p, &rng, &xt, &y2t, &cache2));
    size_t differ = 0;
    for (size_t i = 0; i < DROP_N; i++)
        differ += (y[i] == 0.0f) != (y2[i] == 0.0f);
    /* Independent masks differ with probability 2 p (1 - p) = 0.42. */
    ck_assert_msg(differ > DROP_N / 3 && differ < DROP_N / 2, "masks differ in %zu places", differ);

    /* (d) inference and p = 0: identity, forward and backward. */
    const tb_mode modes[2] = {TB_MODE_INFERENCE, TB_MODE_TRAINING};
    const float ps[2] = {0.3f, 0.0f};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < DROP_N; i++)
            y[i] = dx[i] = NAN;
        CHECK_OK(ctx, tb_dropout_forward(&ctx, modes[k], ps[k], &rng, &xt, &yt, &cache));
        CHECK_OK(ctx, tb_dropout_backward(&ctx, &dyt, &cache, &dxt));
        ck_assert_msg(memcmp(y, x, DROP_N * sizeof(float)) == 0, "dropout %s p=%g is not identity",
                      k == 0 ? "inference" : "training", (double)ps[k]);
        ck_assert_msg(memcmp(dx, dy, DROP_N * sizeof(float)) == 0,
                      "dropout backward %s p=%g is not identity", k == 0 ? "inference" : "training",
                      (double)ps[k]);
    }
    /* p = 1: everything dropped, forward and backward. */
    for (size_t i = 0; i < DROP_N; i++)
        y[i] = dx[i] = NAN;
    CHECK_OK(ctx, tb_dropout_forward(&ctx, TB_MODE_TRAINING, 1.0f, &rng, &xt, &yt, &cache));
    CHECK_OK(ctx, tb_dropout_backward(&ctx, &dyt, &cache, &dxt));
    for (size_t i = 0; i < DROP_N; i++)
        ck_assert_msg(y[i] == 0.0f && dx[i] == 0.0f, "dropout p=1: y[%zu]=%g dx[%zu]=%g", i,
                      (double)y[i], i, (double)dx[i]);
    free(x);
    free(y);
    free(y2);
    free(dy);
    free(dx);
}
END_TEST

Suite *suite_dropout(void)
{
    Suite *s = suite_create("dropout");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, dropout_errors_and_modes);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("dropout_semantics");
    tcase_set_timeout(t1, 60);
    tcase_add_test(t1, test_oracle_dropout);
    suite_add_tcase(s, t1);
    return s;
}
