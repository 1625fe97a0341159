/*
 * tb_rmsnorm_*: finite differences, error paths and the PyTorch oracle
 * (torch.nn.RMSNorm). Its robustness against double-precision references,
 * in-place, accumulation and thread-count tests run with LayerNorm's
 * (test_layernorm.c).
 * Finite differences, double-precision references and the PyTorch oracle
 * (test/oracle/gen_rmsnorm.py) share the helpers and tolerances of the
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

START_TEST(rmsnorm_gradients)
{
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 4; b++) {
            const size_t c = TBT_GRAD_COLS[b];
            /* C = 1: y = x w / sqrt(x^2 + eps) is flat for eps << x^2. */
            tbt_check_norm_grad(TBT_K_RMS, TBT_GRAD_ROWS[a], c, TB_NORM_SCALE, c == 1 ? 0.5f : 1e-6f,
                            TB_MODE_TRAINING, NULL, c == 1 ? ",eps=0.5" : "");
        }
    tbt_check_norm_grad(TBT_K_RMS, 3, 17, 0, 1e-5f, TB_MODE_TRAINING, NULL, ",noweight");
    tbt_check_norm_grad(TBT_K_RMS, 17, 1, 0, 0.5f, TB_MODE_TRAINING, NULL, ",noweight,eps=0.5");
}
END_TEST

START_TEST(rmsnorm_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rmsnorm rn;
    ck_assert_int_eq(tb_rmsnorm_init(NULL, &rn, 4, 1e-6f, TB_NORM_SCALE), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, NULL, 4, 1e-6f, TB_NORM_SCALE), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 0, 1e-6f, TB_NORM_SCALE), TB_ERR_INVALID_ARG);
    const float bad_eps[] = {0.0f, -1e-6f, NAN, INFINITY};
    for (size_t k = 0; k < 4; k++)
        ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 4, bad_eps[k], TB_NORM_SCALE),
                         TB_ERR_INVALID_ARG);
    memset(&rn, 0x5A, sizeof rn);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 4, 1e-6f, TB_NORM_SHIFT), TB_ERR_INVALID_ARG);
    ck_assert_msg(rn.storage == NULL && rn.weight.value == NULL,
                  "rmsnorm not left empty after a failed init");
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 4, 1e-6f, TB_NORM_SCALE | TB_NORM_SHIFT),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 4, 1e-6f, TB_NORM_GLOBAL_STATS),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, SIZE_MAX / 2, 1e-6f, TB_NORM_SCALE),
                     TB_ERR_OVERFLOW);
    size_t bytes;
    ck_assert_int_eq(tb_rmsnorm_cache_size(3, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_cache_size(SIZE_MAX, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_rmsnorm_cache_size(3, &bytes), TB_OK);

    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, 4, 1e-6f, TB_NORM_SCALE));
    float x[12], y[12], dy[12], dx[12];
    tbt_fill_uniform(x, 12, -1, 1, 2);
    tbt_fill_uniform(dy, 12, -1, 1, 3);
    unsigned char *cbuf = tbt_alloc(bytes + 16);
    float *cache = (float *)(void *)cbuf;
    tbt_fill_sentinel(y, 12);
    tb_tensor xt = tb_tensor_2d(x, 3, 4), yt = tb_tensor_2d(y, 3, 4);
    tb_tensor dyt = tb_tensor_2d(dy, 3, 4), dxt = tb_tensor_2d(dx, 3, 4);
    tb_tensor x_cols = tb_tensor_2d(x, 4, 3), y_rows = tb_tensor_2d(y, 2, 4);
    tb_tensor x_zero = tb_tensor_2d(x, 3, 0), x_null = tb_tensor_2d(NULL, 3, 4);
    ck_assert_int_eq(tb_rmsnorm_forward(NULL, &rn, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, NULL, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &x_null, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &x_cols, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &xt, &y_rows, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &x_zero, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cache, bytes - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cbuf + 2, bytes + 8),
                     TB_ERR_INVALID_ARG);
    tb_rmsnorm empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &empty, &xt, &yt, cache, bytes), TB_ERR_STATE);
    tbt_assert_untouched_what(y, 12, "rmsnorm y");

    tbt_fill_sentinel(dx, 12);
    memset(cbuf, 0, bytes + 16);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt), TB_ERR_STATE);
    tb_tensor x2 = tb_tensor_2d(x, 2, 4), y2 = tb_tensor_2d(y, 2, 4);
    CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &x2, &y2, cache, bytes));
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt), TB_ERR_STATE);
    CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cache, bytes));
    tb_tensor dy_rows = tb_tensor_2d(dy, 2, 4), dx_on_x = tb_tensor_2d(x, 3, 4);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dy_rows, cache, bytes, &dxt),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes - 1, &dxt),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dx_on_x),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, NULL, &dyt, cache, bytes, &dxt),
                     TB_ERR_NULL_ARG);
    tbt_assert_untouched_what(dx, 12, "rmsnorm dx");
    for (size_t j = 0; j < 4; j++)
        ck_assert(rn.weight.grad[j] == 0.0f);
    CHECK_OK(ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt));
    free(cbuf);
    tb_rmsnorm_free(&rn);
    tb_rmsnorm_free(&rn);
    tb_rmsnorm_free(NULL);
}
END_TEST

/* ---- RMSNorm ---------------------------------------------------------------
 * Same tolerances. The one-row cases use |x| ~ 3e-3, where eps matters and
 * the C = 1 gradient eps / (x^2 + eps)^1.5 is far from 0. */

static const char *const rmsnorm_cases[] = {
    "rmsnorm_1x1_weight_eps1e-6",    "rmsnorm_1x1_weight_eps1e-5",
    "rmsnorm_1x1_plain_eps1e-6",     "rmsnorm_3x17_weight_eps1e-6",
    "rmsnorm_3x17_weight_eps1e-5",   "rmsnorm_3x17_plain_eps1e-6",
    "rmsnorm_17x33_weight_eps1e-6",  "rmsnorm_17x33_weight_eps1e-5",
    "rmsnorm_17x33_plain_eps1e-6",   "rmsnorm_2x3x50_weight_eps1e-6",
    "rmsnorm_2x3x50_weight_eps1e-5", "rmsnorm_2x3x50_plain_eps1e-6",
    "rmsnorm_4x768_weight_eps1e-6",  "rmsnorm_4x768_weight_eps1e-5",
    "rmsnorm_4x768_plain_eps1e-6",   "rmsnorm_2x8192_weight_eps1e-6",
    "rmsnorm_2x8192_weight_eps1e-5", "rmsnorm_2x8192_plain_eps1e-6",
    "rmsnorm_special_6x40",
};

START_TEST(test_norm_oracle_rmsnorm)
{
    const char *name = rmsnorm_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const float eps = tbt_ref_scalar(ref, "eps");
    const int affine = tbt_ref_i32_scalar(ref, "affine");
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy"), y_ref = tbt_ref_get(ref, "y");
    const size_t c = x.shape[x.ndim - 1], rows = x.n / c;
    ck_assert_uint_eq(dy.n, x.n);
    ck_assert_uint_eq(y_ref.n, x.n);

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rmsnorm rn;
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, c, eps, affine ? TB_NORM_SCALE : 0u));
    const float *w = NULL;
    if (affine) {
        tbt_reft wr = tbt_ref_get(ref, "weight");
        ck_assert_uint_eq(wr.n, c);
        ck_assert_ptr_nonnull(rn.weight.value);
        memcpy(rn.weight.value, wr.data, c * sizeof(float));
        memset(rn.weight.grad, 0, c * sizeof(float));
        w = wr.data;
    }
    size_t cache_bytes;
    CHECK_OK(ctx, tb_rmsnorm_cache_size(rows, &cache_bytes));
    void *cache = tbt_alloc(cache_bytes);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(x.n), *dxb = tbt_nan_buffer(x.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &x), dxt = tbt_view_like(dxb, &x);
    CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cache, cache_bytes));
    CHECK_OK(ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, cache_bytes, &dxt));

    const tbt_norm_units u = tbt_norm_row_units(x.data, dy.data, w, rows, c, eps, 0);
    const double u_y = tbt_max_abs_f(tbt_ref_get(ref, "y_f64").data, x.n);
    char blk[128], sx[32];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "rmsnorm[%s%s%s,eps=%.0e]", sx,
             strstr(name, "special") ? ",special" : "", affine ? "" : ",noweight", (double)eps);
    tbt_norm_check_vs(ref, blk, "y", yb, x.n, u_y, 1);
    tbt_norm_check_vs(ref, blk, "dx", dxb, x.n, u.dx, 1);
    if (affine)
        tbt_norm_check_vs(ref, blk, "dweight", rn.weight.grad, c, u.dw, 1);
    /* A zero row normalises to exactly 0 (0 * rstd * w). */
    for (size_t r = 0; r < rows; r++) {
        int zero = 1;
        for (size_t j = 0; j < c; j++)
            zero &= x.data[r * c + j] == 0.0f;
        for (size_t j = 0; zero && j < c; j++)
            ck_assert_msg(yb[r * c + j] == 0.0f, "%s: zero row %zu has y[%zu] = %g", blk, r, j,
                          (double)yb[r * c + j]);
    }
    free(cache);
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    tb_rmsnorm_free(&rn);
    tbt_ref_free(ref);
}
END_TEST

/* ---- Coverage: every case gen_rmsnorm.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(rmsnorm_cases); k++)
        if (strcmp(rmsnorm_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_rmsnorm_all_cases_tested)
{
    const size_t n =
        tbt_check_manifest("rmsnorm_cases.txt", "test_rmsnorm.c", case_is_tested, NULL);
    ck_assert_uint_eq(n, ARRAY_LEN(rmsnorm_cases));
}
END_TEST

Suite *suite_rmsnorm(void)
{
    Suite *s = suite_create("rmsnorm");
    TCase *t0 = tcase_create("finite_differences");
    tcase_set_timeout(t0, 120);
    tcase_add_test(t0, rmsnorm_gradients);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("errors");
    tcase_add_test(t1, rmsnorm_errors);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("pytorch");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_norm_oracle_rmsnorm, 0, (int)ARRAY_LEN(rmsnorm_cases));
    tcase_add_test(t2, test_rmsnorm_all_cases_tested);
    suite_add_tcase(s, t2);
    return s;
}
