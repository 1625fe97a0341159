/*
 * tb_batchnorm_*: finite differences, robustness against a double-precision
 * reference, error paths, the mode / global-statistics / padding semantics
 * and the PyTorch oracle (torch.nn.BatchNorm1d on the channel axis). Its
 * in-place, accumulation and thread-count tests run with LayerNorm's
 * (test_layernorm.c).
 * Finite differences, double-precision references and the PyTorch oracle
 * (test/oracle/gen_batchnorm.py) share the helpers and tolerances of the
 * normalization section of testutil.h, where they are justified.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

START_TEST(batchnorm_gradients)
{
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;
    /* Training: through the batch statistics. With 2 positions the
     * gradient is proportional to eps / (var + eps): eps = 1 there. */
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 4; b++) {
            const size_t rows = TBT_GRAD_ROWS[a];
            tbt_check_norm_grad(TBT_K_BN, rows, TBT_GRAD_COLS[b], aff, rows == 2 ? 1.0f : 1e-5f,
                            TB_MODE_TRAINING, NULL, rows == 2 ? ",train,eps=1" : ",train");
        }
    tbt_check_norm_grad(TBT_K_BN, 17, 3, 0, 1e-5f, TB_MODE_TRAINING, NULL, ",train,noaffine");
    tbt_check_norm_grad(TBT_K_BN, 3, 17, TB_NORM_SCALE, 1e-5f, TB_MODE_TRAINING, NULL, ",train,nobias");
    /* Training with a padding mask. */
    static const uint8_t mask17[17] = {1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0};
    static const uint8_t mask3[3] = {1, 0, 1};
    tbt_check_norm_grad(TBT_K_BN, 17, 3, aff, 1e-5f, TB_MODE_TRAINING, mask17, ",train,mask");
    tbt_check_norm_grad(TBT_K_BN, 17, 33, aff, 1e-5f, TB_MODE_TRAINING, mask17, ",train,mask");
    tbt_check_norm_grad(TBT_K_BN, 3, 17, aff, 1.0f, TB_MODE_TRAINING, mask3, ",train,mask,eps=1");
    /* Inference and global statistics: constants in backward. */
    tbt_check_norm_grad(TBT_K_BN, 3, 17, aff, 1e-5f, TB_MODE_INFERENCE, NULL, ",eval");
    tbt_check_norm_grad(TBT_K_BN, 17, 1, aff, 1e-5f, TB_MODE_INFERENCE, mask17, ",eval,mask");
    tbt_check_norm_grad(TBT_K_BN, 17, 33, aff | TB_NORM_GLOBAL_STATS, 1e-5f, TB_MODE_TRAINING, NULL,
                    ",global,train");
    tbt_check_norm_grad(TBT_K_BN, 2, 3, aff | TB_NORM_GLOBAL_STATS, 1e-5f, TB_MODE_INFERENCE, NULL,
                    ",global,eval");
}
END_TEST

/* ======================================================================
 * Numerical robustness
 * ==================================================================== */

/* BatchNorm in training on x vs the double reference (also running stats). */
static void check_bn_vs_double(size_t n, size_t c, const float *x, const uint8_t *valid,
                               float eps, float momentum, const char *tag)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const size_t nc = n * c;
    float *y = tbt_alloc(nc * sizeof(float)), *dx = tbt_alloc(nc * sizeof(float));
    float *dy = tbt_alloc(nc * sizeof(float));
    tbt_fill_uniform(dy, nc, -1, 1, 88);
    double *yr = tbt_alloc(nc * sizeof(double)), *dxr = tbt_alloc(nc * sizeof(double));
    double *xh = tbt_alloc(nc * sizeof(double)), *dummy = tbt_alloc(nc * sizeof(double));
    double *dwr = tbt_alloc(c * sizeof(double)), *dbr = tbt_alloc(c * sizeof(double));
    double *mean = tbt_alloc(c * sizeof(double)), *var = tbt_alloc(c * sizeof(double));
    double *rmr = tbt_alloc(c * sizeof(double)), *rvr = tbt_alloc(c * sizeof(double));
    tb_batchnorm bn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, c, eps, momentum, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_away_from_zero(bn.weight.value, c, -1.5f, 1.5f, 0.5f, 89);
    tbt_fill_uniform(bn.bias.value, c, -0.5f, 0.5f, 90);
    size_t bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(c, &bytes));
    void *cache = tbt_alloc(bytes);
    tb_tensor xt = tb_tensor_2d((float *)(uintptr_t)x, n, c), yt = tb_tensor_2d(y, n, c);
    tb_tensor dyt = tb_tensor_2d(dy, n, c), dxt = tb_tensor_2d(dx, n, c);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, valid, &yt, cache, bytes));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &xt, valid, &dyt, cache, bytes, &dxt));
    double unit_dx, unused;
    tbt_bn_ref(x, dy, valid, bn.weight.value, bn.bias.value, NULL, NULL, n, c, eps, 1, yr, dxr, dwr,
           dbr, mean, var, &unit_dx);
    tbt_bn_ref(x, dy, valid, NULL, NULL, NULL, NULL, n, c, eps, 1, xh, dummy, NULL, NULL, NULL, NULL,
           &unused);
    for (size_t j = 0; j < c; j++) { /* initial running stats 0 and 1 */
        rmr[j] = (double)momentum * mean[j];
        rvr[j] = (1.0 - (double)momentum) + (double)momentum * var[j];
    }
    double u_dw, u_db;
    tbt_col_units(dy, xh, n, c, valid, &u_dw, &u_db);
    char lbl[128];
    tbt_assert_all_finite("y", y, nc);
    tbt_assert_all_finite("dx", dx, nc);
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].y_vs_double", n, c, tag);
    tbt_assert_close_d(lbl, y, yr, nc, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * tbt_max_abs_d(yr, nc));
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].dx_vs_double", n, c, tag);
    tbt_assert_close_d(lbl, dx, dxr, nc, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * unit_dx);
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].dweight_vs_double", n, c, tag);
    tbt_assert_close_d(lbl, bn.weight.grad, dwr, c, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * u_dw);
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].dbias_vs_double", n, c, tag);
    tbt_assert_close_d(lbl, bn.bias.grad, dbr, c, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * u_db);
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].running_mean_vs_double", n, c, tag);
    tbt_assert_close_d(lbl, bn.running_mean.value, rmr, c, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * tbt_max_abs_d(rmr, c));
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].running_var_vs_double", n, c, tag);
    tbt_assert_close_d(lbl, bn.running_var.value, rvr, c, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * tbt_max_abs_d(rvr, c));
    tb_batchnorm_free(&bn);
    free(cache), free(y), free(dx), free(dy), free(yr), free(dxr), free(xh), free(dummy);
    free(dwr), free(dbr), free(mean), free(var), free(rmr), free(rvr);
}

START_TEST(batchnorm_robustness)
{
    /* Channels with mean 1e4 and std 1e-2. */
    float *x = tbt_offset_rows(64, 5, 13);
    check_bn_vs_double(64, 5, x, NULL, 1e-5f, 0.1f, "mean1e4,std1e-2");
    free(x);
    /* A constant channel (variance 0) next to ordinary ones: y = bias
     * exactly there, finite gradient. */
    enum { N = 17, C = 4 };
    float xc[N * C];
    tbt_fill_spread(xc, N, C, 0, 3);
    for (size_t r = 0; r < N; r++)
        xc[r * C + 1] = -1234.5678f, xc[r * C + 2] = 0.0f;
    check_bn_vs_double(N, C, xc, NULL, 1e-5f, 0.3f, "constant channels");
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_batchnorm bn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_uniform(bn.weight.value, C, -2, 2, 7);
    tbt_fill_uniform(bn.bias.value, C, -2, 2, 8);
    float y[N * C];
    tb_tensor xt = tb_tensor_2d(xc, N, C), yt = tb_tensor_2d(y, N, C);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &yt, NULL, 0));
    for (size_t r = 0; r < N; r++)
        for (size_t j = 1; j <= 2; j++)
            ck_assert_msg(y[r * C + j] == bn.bias.value[j],
                          "batchnorm constant channel %zu: y = %.9g, expected the bias %.9g", j,
                          (double)y[r * C + j], (double)bn.bias.value[j]);
    tb_batchnorm_free(&bn);
    /* Many rows (the chunked reduction), a mask, and an offset. */
    enum { NL = 1000, CL = 7 };
    float *xl = tbt_alloc(NL * CL * sizeof(float));
    uint8_t *valid = tbt_alloc(NL);
    tbt_fill_uniform(xl, NL * CL, -1, 1, 14);
    for (size_t r = 0; r < NL; r++) {
        valid[r] = (uint8_t)(r % 5 != 2);
        for (size_t j = 0; j < CL; j++)
            xl[r * CL + j] = valid[r] ? xl[r * CL + j] + 30.0f * (float)j : 1e3f;
    }
    check_bn_vs_double(NL, CL, xl, valid, 1e-5f, 0.1f, "mask,offset");
    free(xl);
    free(valid);
}
END_TEST

/* Snapshot of a BatchNorm's running statistics. */
typedef struct bn_snap {
    float rm[8], rv[8];
} bn_snap;

static bn_snap bn_snapshot(const tb_batchnorm *bn)
{
    bn_snap s;
    memset(&s, 0, sizeof s);
    ck_assert_uint_le(bn->channels, 8);
    memcpy(s.rm, bn->running_mean.value, bn->channels * sizeof(float));
    memcpy(s.rv, bn->running_var.value, bn->channels * sizeof(float));
    return s;
}

static void assert_same_stats(const tb_batchnorm *bn, const bn_snap *s, const char *what)
{
    ck_assert_msg(memcmp(s->rm, bn->running_mean.value, bn->channels * sizeof(float)) == 0 &&
                      memcmp(s->rv, bn->running_var.value, bn->channels * sizeof(float)) == 0,
                  "%s: the running statistics changed", what);
}

START_TEST(batchnorm_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_batchnorm bn;
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;
    ck_assert_int_eq(tb_batchnorm_init(NULL, &bn, 3, 1e-5f, 0.1f, aff), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_init(&ctx, NULL, 3, 1e-5f, 0.1f, aff), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 0, 1e-5f, 0.1f, aff), TB_ERR_INVALID_ARG);
    const float bad_eps[] = {0.0f, -1e-5f, NAN, INFINITY};
    for (size_t k = 0; k < 4; k++)
        ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 3, bad_eps[k], 0.1f, aff),
                         TB_ERR_INVALID_ARG);
    const float bad_mom[] = {-0.01f, 1.01f, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 5; k++) {
        memset(&bn, 0x5A, sizeof bn);
        ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, bad_mom[k], aff),
                         TB_ERR_INVALID_ARG);
        ck_assert_msg(bn.storage == NULL && bn.weight.value == NULL &&
                          bn.running_mean.value == NULL && bn.running_var.value == NULL,
                      "batchnorm not left empty after a failed init");
    }
    ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, 0.1f, 0x80u), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, SIZE_MAX / 2, 1e-5f, 0.1f, aff),
                     TB_ERR_OVERFLOW);
    /* momentum 0 and 1 are valid */
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, 0.0f, aff));
    tb_batchnorm_free(&bn);
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, 1.0f, aff));
    tb_batchnorm_free(&bn);
    size_t bytes, bytes3;
    ck_assert_int_eq(tb_batchnorm_cache_size(3, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_cache_size(SIZE_MAX, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_batchnorm_cache_size(3, &bytes3), TB_OK);

    enum { N = 5, C = 3 };
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, aff));
    tbt_fill_uniform(bn.running_mean.value, C, -1, 1, 4);
    tbt_fill_uniform(bn.running_var.value, C, 0.5f, 2, 5);
    const bn_snap s0 = bn_snapshot(&bn);
    bytes = bytes3;
    float x[N * C], y[N * C], dy[N * C], dx[N * C];
    tbt_fill_uniform(x, N * C, -1, 1, 2);
    tbt_fill_uniform(dy, N * C, -1, 1, 3);
    unsigned char *cbuf = tbt_alloc(bytes + 16);
    float *cache = (float *)(void *)cbuf;
    memset(cbuf, 0x77, bytes + 16);
    tbt_fill_sentinel(y, N * C);
    tb_tensor xt = tb_tensor_2d(x, N, C), yt = tb_tensor_2d(y, N, C);
    tb_tensor dyt = tb_tensor_2d(dy, N, C), dxt = tb_tensor_2d(dx, N, C);
    tb_tensor x_cols = tb_tensor_2d(x, C, N), y_rows = tb_tensor_2d(y, N - 1, C);
    tb_tensor x_zero = tb_tensor_2d(x, 0, C), x_null = tb_tensor_2d(NULL, N, C);
    const tb_mode T = TB_MODE_TRAINING;
    ck_assert_int_eq(tb_batchnorm_forward(NULL, &bn, T, &xt, NULL, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, NULL, T, &xt, NULL, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, NULL, NULL, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, NULL, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x_null, NULL, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x_cols, NULL, &yt, cache, bytes),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, &y_rows, cache, bytes),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x_zero, NULL, &yt, cache, bytes),
                     TB_ERR_SHAPE);
    tb_tensor x_huge = tb_tensor_3d(x, SIZE_MAX / 8, 16, C);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x_huge, NULL, &yt, cache, bytes),
                     TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, &yt, cache, bytes - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, &yt, cbuf + 1, bytes + 8),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, (tb_mode)7, &xt, NULL, &yt, cache, bytes),
                     TB_ERR_INVALID_ARG);
    /* Fewer than two counted positions in training with batch statistics. */
    tb_tensor x1 = tb_tensor_2d(x, 1, C), y1 = tb_tensor_2d(y, 1, C);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x1, NULL, &y1, cache, bytes),
                     TB_ERR_INVALID_ARG);
    const uint8_t one_valid[N] = {0, 0, 1, 0, 0}, none_valid[N] = {0, 0, 0, 0, 0};
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, one_valid, &yt, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, none_valid, &yt, cache, bytes),
                     TB_ERR_INVALID_ARG);
    tb_batchnorm empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &empty, T, &xt, NULL, &yt, cache, bytes),
                     TB_ERR_STATE);
    tbt_assert_untouched_what(y, N * C, "batchnorm y");
    for (size_t i = 0; i < bytes + 16; i++)
        ck_assert_msg(cbuf[i] == 0x77, "batchnorm cache byte %zu written on error", i);
    assert_same_stats(&bn, &s0, "failed forwards");
    /* ... but one position is fine where no batch statistics are needed. */
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_INFERENCE, &x1, NULL, &y1, NULL, 0));
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_INFERENCE, &xt, one_valid, &yt, NULL, 0));
    assert_same_stats(&bn, &s0, "inference forwards");
    tb_batchnorm gbn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &gbn, C, 1e-5f, 0.1f, aff | TB_NORM_GLOBAL_STATS));
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &gbn, T, &x1, NULL, &y1, NULL, 0));
    tb_batchnorm_free(&gbn);

    /* Backward. */
    tbt_fill_sentinel(dx, N * C);
    memset(cbuf, 0, bytes + 16);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dxt),
                     TB_ERR_STATE);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, &yt, cache, bytes));
    tb_tensor dy_rows = tb_tensor_2d(dy, N - 1, C), dx_cols = tb_tensor_2d(dx, C, N);
    tb_tensor dx_on_x = tb_tensor_2d(x, N, C);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dy_rows, cache, bytes, &dxt),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dx_cols),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes - 1, &dxt),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, NULL, bytes, &dxt),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, NULL),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dx_on_x),
                     TB_ERR_INVALID_ARG);
    tbt_assert_untouched_what(dx, N * C, "batchnorm dx");
    for (size_t j = 0; j < C; j++)
        ck_assert(bn.weight.grad[j] == 0.0f && bn.bias.grad[j] == 0.0f);
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dxt));
    free(cbuf);
    tb_batchnorm_free(&bn);
    tb_batchnorm_free(&bn);
    tb_batchnorm_free(NULL);
}
END_TEST

/* ======================================================================
 * BatchNorm semantics
 * ==================================================================== */

START_TEST(batchnorm_modes)
{
    enum { N = 23, C = 5 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float x[N * C], y[N * C], dy[N * C], dx[N * C];
    double yr[N * C], dxr[N * C], mean[C], var[C], unit;
    tbt_fill_spread(x, N, C, 0, 9);
    tbt_fill_uniform(dy, N * C, -1, 1, 10);
    tb_tensor xt = tb_tensor_2d(x, N, C), yt = tb_tensor_2d(y, N, C);
    tb_tensor dyt = tb_tensor_2d(dy, N, C), dxt = tb_tensor_2d(dx, N, C);
    size_t bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(C, &bytes));
    void *cache = tbt_alloc(bytes);

    /* Training (default init 0 / 1, momentum 1): running = batch mean and
     * unbiased variance. Momentum 0: running statistics unchanged. */
    tb_batchnorm bn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 1.0f, TB_NORM_SCALE | TB_NORM_SHIFT));
    for (size_t j = 0; j < C; j++)
        ck_assert(bn.running_mean.value[j] == 0.0f && bn.running_var.value[j] == 1.0f &&
                  bn.weight.value[j] == 1.0f && bn.bias.value[j] == 0.0f);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &yt, cache, bytes));
    tbt_bn_ref(x, dy, NULL, NULL, NULL, NULL, NULL, N, C, 1e-5f, 1, yr, dxr, NULL, NULL, mean, var,
           &unit);
    tbt_assert_close_d("batchnorm[23x5,m=1].running_mean", bn.running_mean.value, mean, C, TBT_NORM_RTOL64,
                   TBT_NORM_ATOL64_REL * tbt_max_abs_d(mean, C));
    tbt_assert_close_d("batchnorm[23x5,m=1].running_var", bn.running_var.value, var, C, TBT_NORM_RTOL64,
                   TBT_NORM_ATOL64_REL * tbt_max_abs_d(var, C));
    tb_batchnorm_free(&bn);
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.0f, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_uniform(bn.running_mean.value, C, -1, 1, 11);
    tbt_fill_uniform(bn.running_var.value, C, 0.5f, 2, 12);
    bn_snap s = bn_snapshot(&bn);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &yt, NULL, 0));
    assert_same_stats(&bn, &s, "momentum 0");
    tb_batchnorm_free(&bn);

    /* Inference: normalises with the running statistics, never updates
     * them, and backward treats them as constants (dx = w dy / std). */
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_uniform(bn.running_mean.value, C, -1, 1, 11);
    tbt_fill_uniform(bn.running_var.value, C, 0.5f, 2, 12);
    tbt_fill_away_from_zero(bn.weight.value, C, -1.5f, 1.5f, 0.5f, 13);
    tbt_fill_uniform(bn.bias.value, C, -0.5f, 0.5f, 14);
    s = bn_snapshot(&bn);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_INFERENCE, &xt, NULL, &yt, cache, bytes));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dxt));
    assert_same_stats(&bn, &s, "inference");
    tbt_bn_ref(x, dy, NULL, bn.weight.value, bn.bias.value, s.rm, s.rv, N, C, 1e-5f, 0, yr, dxr,
           NULL, NULL, NULL, NULL, &unit);
    tbt_assert_close_d("batchnorm[23x5,eval].y", y, yr, N * C, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * tbt_max_abs_d(yr, N * C));
    tbt_assert_close_d("batchnorm[23x5,eval].dx", dx, dxr, N * C, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * unit);
    /* Training mode afterwards does use the batch statistics. */
    float y_train[N * C];
    tb_tensor ytt = tb_tensor_2d(y_train, N, C);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &ytt, NULL, 0));
    ck_assert(memcmp(y, y_train, sizeof y) != 0);
    tb_batchnorm_free(&bn);

    /* TB_NORM_GLOBAL_STATS in training mode: stored statistics, never
     * updated (forward and backward), constants in backward; the same
     * result as inference mode. */
    tb_batchnorm g;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &g, C, 1e-5f, 0.1f,
                                    TB_NORM_SCALE | TB_NORM_SHIFT | TB_NORM_GLOBAL_STATS));
    memcpy(g.running_mean.value, s.rm, C * sizeof(float));
    memcpy(g.running_var.value, s.rv, C * sizeof(float));
    tbt_fill_away_from_zero(g.weight.value, C, -1.5f, 1.5f, 0.5f, 13);
    tbt_fill_uniform(g.bias.value, C, -0.5f, 0.5f, 14);
    float yg[N * C], dxg[N * C];
    tb_tensor ygt = tb_tensor_2d(yg, N, C), dxgt = tb_tensor_2d(dxg, N, C);
    for (int rep = 0; rep < 2; rep++) {
        CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &g, TB_MODE_TRAINING, &xt, NULL, &ygt, cache, bytes));
        CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &g, &xt, NULL, &dyt, cache, bytes, &dxgt));
        assert_same_stats(&g, &s, "TB_NORM_GLOBAL_STATS training");
    }
    tbt_assert_close_d("batchnorm[23x5,global,train].y", yg, yr, N * C, TBT_NORM_RTOL64,
                   TBT_NORM_ATOL64_REL * tbt_max_abs_d(yr, N * C));
    tbt_assert_close_d("batchnorm[23x5,global,train].dx", dxg, dxr, N * C, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * unit);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &g, TB_MODE_INFERENCE, &xt, NULL, &ygt, NULL, 0));
    assert_same_stats(&g, &s, "TB_NORM_GLOBAL_STATS inference");
    tbt_assert_close_d("batchnorm[23x5,global,eval].y", yg, yr, N * C, TBT_NORM_RTOL64,
                   TBT_NORM_ATOL64_REL * tbt_max_abs_d(yr, N * C));
    tb_batchnorm_free(&g);
    free(cache);
}
END_TEST

/* Masked positions: y = 0, dx = 0, and everything else as if the batch
 * held the valid rows only (statistics, running statistics, gradients).
 * The two runs reduce in different chunks, so compare with the float64
 * tolerance rather than bitwise. */
START_TEST(batchnorm_mask_equals_valid_rows)
{
    enum { N = 40, C = 7 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    uint8_t valid[N];
    size_t nv = 0;
    for (size_t r = 0; r < N; r++)
        valid[r] = (uint8_t)(r % 3 != 1 && r != 38), nv += valid[r];
    float x[N * C], dy[N * C], y[N * C], dx[N * C];
    tbt_fill_spread(x, N, C, 0, 15);
    tbt_fill_uniform(dy, N * C, -1, 1, 16);
    for (size_t r = 0; r < N; r++)
        if (!valid[r])
            for (size_t j = 0; j < C; j++)
                x[r * C + j] = 1e3f * (float)(j + 1), dy[r * C + j] = 5.0f;
    float *xv = tbt_alloc(nv * C * sizeof(float)), *dyv = tbt_alloc(nv * C * sizeof(float));
    float *yv = tbt_alloc(nv * C * sizeof(float)), *dxv = tbt_alloc(nv * C * sizeof(float));
    for (size_t r = 0, k = 0; r < N; r++)
        if (valid[r]) {
            memcpy(xv + k * C, x + r * C, C * sizeof(float));
            memcpy(dyv + k * C, dy + r * C, C * sizeof(float));
            k++;
        }
    size_t bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(C, &bytes));
    void *cache = tbt_alloc(bytes), *cache_v = tbt_alloc(bytes);
    tb_batchnorm a, b;
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &a, C, 1e-5f, 0.3f, aff));
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &b, C, 1e-5f, 0.3f, aff));
    tbt_fill_away_from_zero(a.weight.value, C, -1.5f, 1.5f, 0.5f, 17);
    tbt_fill_uniform(a.bias.value, C, -0.5f, 0.5f, 18);
    memcpy(b.weight.value, a.weight.value, C * sizeof(float));
    memcpy(b.bias.value, a.bias.value, C * sizeof(float));
    tb_tensor xt = tb_tensor_2d(x, N, C), yt = tb_tensor_2d(y, N, C);
    tb_tensor dyt = tb_tensor_2d(dy, N, C), dxt = tb_tensor_2d(dx, N, C);
    tb_tensor xvt = tb_tensor_2d(xv, nv, C), yvt = tb_tensor_2d(yv, nv, C);
    tb_tensor dyvt = tb_tensor_2d(dyv, nv, C), dxvt = tb_tensor_2d(dxv, nv, C);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &a, TB_MODE_TRAINING, &xt, valid, &yt, cache, bytes));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &a, &xt, valid, &dyt, cache, bytes, &dxt));
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &b, TB_MODE_TRAINING, &xvt, NULL, &yvt, cache_v, bytes));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &b, &xvt, NULL, &dyvt, cache_v, bytes, &dxvt));
    float *yc = tbt_alloc(nv * C * sizeof(float)), *dxc = tbt_alloc(nv * C * sizeof(float));
    for (size_t r = 0, k = 0; r < N; r++) {
        if (!valid[r]) {
            for (size_t j = 0; j < C; j++)
                ck_assert_msg(y[r * C + j] == 0.0f && dx[r * C + j] == 0.0f,
                              "padded row %zu: y=%g dx=%g", r, (double)y[r * C + j],
                              (double)dx[r * C + j]);
            continue;
        }
        memcpy(yc + k * C, y + r * C, C * sizeof(float));
        memcpy(dxc + k * C, dx + r * C, C * sizeof(float));
        k++;
    }
    /* units from the valid-rows run */
    double *yr = tbt_alloc(nv * C * sizeof(double)), *dxr = tbt_alloc(nv * C * sizeof(double));
    double *xh = tbt_alloc(nv * C * sizeof(double)), unit_dx, unused, u_dw, u_db;
    tbt_bn_ref(xv, dyv, NULL, a.weight.value, a.bias.value, NULL, NULL, nv, C, 1e-5f, 1, yr, dxr,
           NULL, NULL, NULL, NULL, &unit_dx);
    tbt_bn_ref(xv, dyv, NULL, NULL, NULL, NULL, NULL, nv, C, 1e-5f, 1, xh, dxr, NULL, NULL, NULL,
           NULL, &unused);
    tbt_col_units(dyv, xh, nv, C, NULL, &u_dw, &u_db);
    tbt_assert_close("batchnorm[40x7,mask].y_vs_valid_rows", yc, yv, nv * C, TBT_NORM_RTOL64,
                     TBT_NORM_ATOL64_REL * tbt_max_abs_f(yv, nv * C));
    tbt_assert_close("batchnorm[40x7,mask].dx_vs_valid_rows", dxc, dxv, nv * C, TBT_NORM_RTOL64,
                     TBT_NORM_ATOL64_REL * unit_dx);
    tbt_assert_close("batchnorm[40x7,mask].dweight_vs_valid_rows", a.weight.grad, b.weight.grad,
                     C, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * u_dw);
    tbt_assert_close("batchnorm[40x7,mask].dbias_vs_valid_rows", a.bias.grad, b.bias.grad, C,
                     TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * u_db);
    tbt_assert_close("batchnorm[40x7,mask].running_mean_vs_valid_rows", a.running_mean.value,
                     b.running_mean.value, C, TBT_NORM_RTOL64,
                     TBT_NORM_ATOL64_REL * tbt_max_abs_f(b.running_mean.value, C));
    tbt_assert_close("batchnorm[40x7,mask].running_var_vs_valid_rows", a.running_var.value,
                     b.running_var.value, C, TBT_NORM_RTOL64,
                     TBT_NORM_ATOL64_REL * tbt_max_abs_f(b.running_var.value, C));
    /* Inference with a mask: padded outputs 0, the rest as without it. */
    float y_all[N * C];
    tb_tensor yat = tb_tensor_2d(y_all, N, C);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &a, TB_MODE_INFERENCE, &xt, valid, &yt, NULL, 0));
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &a, TB_MODE_INFERENCE, &xt, NULL, &yat, NULL, 0));
    for (size_t i = 0; i < N * C; i++)
        ck_assert_msg(valid[i / C] ? memcmp(&y[i], &y_all[i], sizeof(float)) == 0 : y[i] == 0.0f,
                      "inference with mask: element %zu is %g (without mask %g)", i,
                      (double)y[i], (double)y_all[i]);
    tb_batchnorm_free(&a);
    tb_batchnorm_free(&b);
    free(cache), free(cache_v), free(xv), free(dyv), free(yv), free(dxv), free(yc), free(dxc);
    free(yr), free(dxr), free(xh);
}
END_TEST

START_TEST(batchnorm_backward_needs_the_forward_mask)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_batchnorm bn;
    ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, 0.1f, TB_NORM_SCALE | TB_NORM_SHIFT),
                     TB_OK);
    float x[5 * 3], y[5 * 3], dx[5 * 3];
    tbt_fill_uniform(x, 15, -1, 1, 4);
    uint8_t m1[5] = {1, 1, 0, 1, 0}, m2[5] = {1, 0, 1, 1, 0}; /* same count, other rows */
    size_t cb;
    ck_assert_int_eq(tb_batchnorm_cache_size(3, &cb), TB_OK);
    void *cache = tbt_alloc(cb);
    tb_tensor xt = tb_tensor_2d(x, 5, 3), yt = tb_tensor_2d(y, 5, 3), dxt = tb_tensor_2d(dx, 5, 3);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, m1, &yt, cache, cb),
                     TB_OK);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, m2, &yt, cache, cb, &dxt), TB_ERR_STATE);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &yt, cache, cb, &dxt), TB_ERR_STATE);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, m1, &yt, cache, cb, &dxt), TB_OK);
    free(cache);
    tb_batchnorm_free(&bn);
}
END_TEST

/* ---- BatchNorm -------------------------------------------------------------
 * Same tolerances, with the column-wise units. Training cases: forward on x
 * (y, running statistics after one call), backward through the batch
 * statistics (dx, dweight, dbias), then forwards on x2 and x3 (running
 * statistics after three calls; momentum 0.1 or 0.3, non-default initial
 * running statistics). Inference cases: the given running statistics, which
 * must stay bitwise unchanged; the same references must also come out of
 * TB_NORM_GLOBAL_STATS in training mode (it normalises with the stored
 * statistics in every mode and never updates them). Mask cases: PyTorch ran
 * on the valid rows only; padded rows must have y = 0 and dx = 0 exactly.
 */

static const char *const batchnorm_cases[] = {
    "batchnorm_train_2x1_m0.1",
    "batchnorm_train_3x1_m0.1",
    "batchnorm_train_17x1_m0.1",
    "batchnorm_train_96x1_m0.1",
    "batchnorm_train_2x3_m0.1",
    "batchnorm_train_3x3_m0.1",
    "batchnorm_train_17x3_m0.1",
    "batchnorm_train_96x3_m0.1",
    "batchnorm_train_2x17_m0.1",
    "batchnorm_train_3x17_m0.1",
    "batchnorm_train_17x17_m0.1",
    "batchnorm_train_96x17_m0.1",
    "batchnorm_train_2x64_m0.1",
    "batchnorm_train_3x64_m0.1",
    "batchnorm_train_17x64_m0.1",
    "batchnorm_train_96x64_m0.1",
    "batchnorm_train_17x3_m0.3",
    "batchnorm_train_96x64_m0.3",
    "batchnorm_train_2x17_m0.3_eps1e-3",
    "batchnorm_train_b4t24x17_m0.1",
    "batchnorm_train_b3t1x64_m0.3",
    "batchnorm_train_17x17_m0.1_noaffine",
    "batchnorm_train_17x17_m0.1_nobias",
    "batchnorm_eval_3x1",
    "batchnorm_eval_17x3",
    "batchnorm_eval_96x17",
    "batchnorm_eval_2x64",
    "batchnorm_eval_b2t3x17",
    "batchnorm_mask_train_17x3_m0.1",
    "batchnorm_mask_train_96x64_m0.3",
    "batchnorm_mask_train_3x17_m0.1",
    "batchnorm_mask_train_17x1_m0.3",
    "batchnorm_mask_eval_17x17",
};

typedef struct bn_units {
    double dx, dw, db;
} bn_units;

/* Column units over the counted positions, with the statistics the forward
 * used (batch statistics in training, else the given running ones). */
static bn_units bn_col_units(const float *x, const float *dy, const uint8_t *valid,
                             const float *w, const float *rm, const float *rv, size_t n,
                             size_t c, float eps, int batch_stats)
{
    bn_units u = {0, 0, 0};
    double max_dy = 0.0;
    for (size_t r = 0; r < n; r++)
        if (!valid || valid[r])
            for (size_t j = 0; j < c; j++)
                if (fabs((double)dy[r * c + j]) > max_dy)
                    max_dy = fabs((double)dy[r * c + j]);
    for (size_t j = 0; j < c; j++) {
        double mean = 0.0, var = 0.0, cnt = 0.0;
        if (batch_stats) {
            for (size_t r = 0; r < n; r++)
                if (!valid || valid[r]) {
                    mean += x[r * c + j];
                    cnt += 1.0;
                }
            mean /= cnt;
            for (size_t r = 0; r < n; r++)
                if (!valid || valid[r])
                    var += ((double)x[r * c + j] - mean) * ((double)x[r * c + j] - mean);
            var /= cnt;
        } else {
            mean = rm[j];
            var = rv[j];
        }
        const double rstd = 1.0 / sqrt(var + (double)eps);
        const double a = fabs(w ? (double)w[j] : 1.0) * rstd * max_dy;
        if (a > u.dx)
            u.dx = a;
        double sdw = 0.0, sdb = 0.0;
        for (size_t r = 0; r < n; r++)
            if (!valid || valid[r]) {
                sdw += fabs((double)dy[r * c + j] * ((double)x[r * c + j] - mean) * rstd);
                sdb += fabs((double)dy[r * c + j]);
            }
        if (sdw > u.dw)
            u.dw = sdw;
        if (sdb > u.db)
            u.db = sdb;
    }
    return u;
}

/* Runs one BatchNorm case with `flags` in `mode`, compares everything. */
static void run_bn_case(const tbt_ref *ref, tb_mode mode, unsigned flags, const char *tag)
{
    const float eps = tbt_ref_scalar(ref, "eps");
    const float momentum = tbt_ref_scalar(ref, "momentum");
    const int training = tbt_ref_i32_scalar(ref, "training");
    const int affine = tbt_ref_i32_scalar(ref, "affine");
    const int has_bias = tbt_ref_i32_scalar(ref, "has_bias");
    const int batch_stats = mode == TB_MODE_TRAINING && !(flags & TB_NORM_GLOBAL_STATS);
    ck_assert_int_eq(batch_stats, training); /* the reference's semantics */
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy");
    const size_t c = x.shape[x.ndim - 1], n = x.n / c;
    ck_assert_uint_eq(dy.n, x.n);
    tbt_reft rm0 = tbt_ref_get(ref, "running_mean0"), rv0 = tbt_ref_get(ref, "running_var0");
    ck_assert_uint_eq(rm0.n, c);
    ck_assert_uint_eq(rv0.n, c);
    uint8_t *valid = tbt_ref_has(ref, "valid") ? tbt_ref_mask(ref, "valid", n) : NULL;

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_batchnorm bn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, c, eps, momentum, flags));
    const float *w = NULL;
    if (affine) {
        tbt_reft wr = tbt_ref_get(ref, "weight");
        ck_assert_uint_eq(wr.n, c);
        memcpy(bn.weight.value, wr.data, c * sizeof(float));
        memset(bn.weight.grad, 0, c * sizeof(float));
        w = wr.data;
    }
    if (has_bias) {
        tbt_reft br = tbt_ref_get(ref, "bias");
        ck_assert_uint_eq(br.n, c);
        memcpy(bn.bias.value, br.data, c * sizeof(float));
        memset(bn.bias.grad, 0, c * sizeof(float));
    }
    memcpy(bn.running_mean.value, rm0.data, c * sizeof(float));
    memcpy(bn.running_var.value, rv0.data, c * sizeof(float));

    size_t cache_bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(c, &cache_bytes));
    void *cache = tbt_alloc(cache_bytes);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(x.n), *dxb = tbt_nan_buffer(x.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &x), dxt = tbt_view_like(dxb, &x);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, mode, &xt, valid, &yt, cache, cache_bytes));
    float *rm1 = tbt_alloc(c * sizeof(float)), *rv1 = tbt_alloc(c * sizeof(float));
    memcpy(rm1, bn.running_mean.value, c * sizeof(float));
    memcpy(rv1, bn.running_var.value, c * sizeof(float));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &xt, valid, &dyt, cache, cache_bytes, &dxt));

    const bn_units u =
        bn_col_units(x.data, dy.data, valid, w, rm0.data, rv0.data, n, c, eps, batch_stats);
    const double u_y = tbt_max_abs_f(tbt_ref_get(ref, "y_f64").data, x.n);
    char blk[160], sx[32];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "batchnorm[%s,%s%s%s%s,eps=%.0e]", sx, tag,
             valid ? ",mask" : "", affine ? (has_bias ? "" : ",nobias") : ",noaffine",
             training ? (momentum > 0.2f ? ",m=0.3" : ",m=0.1") : "", (double)eps);
    tbt_norm_check_vs(ref, blk, "y", yb, x.n, u_y, 1);
    tbt_norm_check_vs(ref, blk, "dx", dxb, x.n, u.dx, 1);
    if (affine)
        tbt_norm_check_vs(ref, blk, "dweight", bn.weight.grad, c, u.dw, 1);
    if (has_bias)
        tbt_norm_check_vs(ref, blk, "dbias", bn.bias.grad, c, u.db, 1);
    if (valid)
        for (size_t r = 0; r < n; r++)
            if (!valid[r])
                for (size_t j = 0; j < c; j++)
                    ck_assert_msg(yb[r * c + j] == 0.0f && dxb[r * c + j] == 0.0f,
                                  "%s: padded row %zu has y=%g dx=%g", blk, r,
                                  (double)yb[r * c + j], (double)dxb[r * c + j]);
    if (training) {
        tbt_reft rm_ref = tbt_ref_get(ref, "running_mean1_f64"), rv_ref = tbt_ref_get(ref, "running_var1_f64");
        tbt_norm_check_vs(ref, blk, "running_mean1", rm1, c, tbt_max_abs_f(rm_ref.data, c), 1);
        tbt_norm_check_vs(ref, blk, "running_var1", rv1, c, tbt_max_abs_f(rv_ref.data, c), 1);
        /* Two more training forwards (no backward follows: cache NULL). */
        for (int k = 2; k <= 3; k++) {
            char nx[16], nv[16];
            snprintf(nx, sizeof nx, "x%d", k);
            snprintf(nv, sizeof nv, "valid%d", k);
            tbt_reft xk = tbt_ref_get(ref, nx);
            ck_assert_uint_eq(xk.n, x.n);
            uint8_t *vk = valid ? tbt_ref_mask(ref, nv, n) : NULL;
            float *xkb = tbt_ref_dup(&xk);
            tb_tensor xkt = tbt_view_like(xkb, &x);
            CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, mode, &xkt, vk, &yt, NULL, 0));
            free(xkb);
            free(vk);
        }
        rm_ref = tbt_ref_get(ref, "running_mean3_f64");
        rv_ref = tbt_ref_get(ref, "running_var3_f64");
        tbt_norm_check_vs(ref, blk, "running_mean3", bn.running_mean.value, c, tbt_max_abs_f(rm_ref.data, c), 1);
        tbt_norm_check_vs(ref, blk, "running_var3", bn.running_var.value, c, tbt_max_abs_f(rv_ref.data, c), 1);
    } else {
        ck_assert_msg(memcmp(rm1, rm0.data, c * sizeof(float)) == 0 &&
                          memcmp(rv1, rv0.data, c * sizeof(float)) == 0 &&
                          memcmp(bn.running_mean.value, rm0.data, c * sizeof(float)) == 0 &&
                          memcmp(bn.running_var.value, rv0.data, c * sizeof(float)) == 0,
                      "%s: the running statistics changed", blk);
    }
    free(rm1);
    free(rv1);
    free(cache);
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    free(valid);
    tb_batchnorm_free(&bn);
}

START_TEST(test_norm_oracle_batchnorm)
{
    const char *name = batchnorm_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const int training = tbt_ref_i32_scalar(ref, "training");
    const unsigned flags = (tbt_ref_i32_scalar(ref, "affine") ? TB_NORM_SCALE : 0u) |
                           (tbt_ref_i32_scalar(ref, "has_bias") ? TB_NORM_SHIFT : 0u);
    if (training) {
        run_bn_case(ref, TB_MODE_TRAINING, flags, "train");
    } else {
        run_bn_case(ref, TB_MODE_INFERENCE, flags, "eval");
        run_bn_case(ref, TB_MODE_INFERENCE, flags | TB_NORM_GLOBAL_STATS, "eval,global");
        run_bn_case(ref, TB_MODE_TRAINING, flags | TB_NORM_GLOBAL_STATS, "train,global");
    }
    tbt_ref_free(ref);
}
END_TEST

/* ---- Coverage: every case gen_batchnorm.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(batchnorm_cases); k++)
        if (strcmp(batchnorm_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_batchnorm_all_cases_tested)
{
    const size_t n =
        tbt_check_manifest("batchnorm_cases.txt", "test_batchnorm.c", case_is_tested, NULL);
    ck_assert_uint_eq(n, ARRAY_LEN(batchnorm_cases));
}
END_TEST

Suite *suite_batchnorm(void)
{
    Suite *s = suite_create("batchnorm");
    TCase *t0 = tcase_create("finite_differences");
    tcase_set_timeout(t0, 120);
    tcase_add_test(t0, batchnorm_gradients);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("robustness");
    tcase_set_timeout(t1, 60);
    tcase_add_test(t1, batchnorm_robustness);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("errors");
    tcase_add_test(t2, batchnorm_errors);
    tcase_add_test(t2, batchnorm_backward_needs_the_forward_mask);
    suite_add_tcase(s, t2);
    TCase *t3 = tcase_create("semantics");
    tcase_set_timeout(t3, 60);
    tcase_add_test(t3, batchnorm_modes);
    tcase_add_test(t3, batchnorm_mask_equals_valid_rows);
    suite_add_tcase(s, t3);
    TCase *t4 = tcase_create("pytorch");
    tcase_set_timeout(t4, 60);
    tcase_add_loop_test(t4, test_norm_oracle_batchnorm, 0, (int)ARRAY_LEN(batchnorm_cases));
    tcase_add_test(t4, test_batchnorm_all_cases_tested);
    suite_add_tcase(s, t4);
    return s;
}
