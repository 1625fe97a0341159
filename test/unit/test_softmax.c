/*
 * tb_softmax_*: edge cases (masked rows, huge values, NaN, in place) and
 * the PyTorch oracle (torch.softmax). Its finite differences are part of
 * elementwise_gradients (test_activation.c).
 * Oracle cases: the block is run on the exact inputs, weights and upstream
 * gradients that test/oracle/gen_softmax.py fed to PyTorch, and its results are
 * compared with PyTorch's (tolerance rule and conventions: testutil.h;
 * outputs pre-filled with NaN, parameter gradients zeroed first because
 * backward ADDS into them). Finite differences: tbt_gradcheck() with the
 * shared step and tolerance of testutil.h (TBT_FD_*).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

START_TEST(softmax_edge_cases)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float x[4 * 3] = {-INFINITY, -INFINITY, -INFINITY, /* all masked -> zeros */
                      1.0f, -INFINITY, 1.0f,            /* partly masked */
                      1e30f, 1e30f, -1e30f,             /* huge values */
                      NAN, 0.0f, 1.0f};                 /* NaN poisons its row */
    float y[12];
    tb_tensor xt = tb_tensor_2d(x, 4, 3), yt = tb_tensor_2d(y, 4, 3);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &xt, &yt), TB_OK);
    for (int j = 0; j < 3; j++)
        ck_assert(y[j] == 0.0f);
    ck_assert(y[3] == 0.5f && y[4] == 0.0f && y[5] == 0.5f);
    ck_assert(y[6] == 0.5f && y[7] == 0.5f && y[8] == 0.0f);
    ck_assert(isnan(y[9]) && isnan(y[10]) && isnan(y[11]));
    /* Rows sum to one at any length. */
    enum { C = 1031 };
    float *a = tbt_alloc(C * sizeof(float)), *b = tbt_alloc(C * sizeof(float));
    tbt_fill_uniform(a, C, -30, 30, 4);
    tb_tensor at = tb_tensor_1d(a, C), bt = tb_tensor_1d(b, C);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &at, &bt), TB_OK);
    double s = 0;
    for (int j = 0; j < C; j++)
        s += b[j];
    ck_assert(fabs(s - 1.0) < 1e-5);
    tb_tensor bad = tb_tensor_2d(y, 3, 4);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &xt, &bad), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_softmax_backward(&ctx, &xt, &bad, &yt), TB_ERR_SHAPE);
    /* In-place works. */
    ck_assert_int_eq(tb_softmax_forward(&ctx, &at, &at), TB_OK);
    ck_assert(memcmp(a, b, C * sizeof(float)) == 0);
    free(a);
    free(b);
}
END_TEST

/* ---- Softmax -------------------------------------------------------------
 *
 * y = exp(x - max) / sum: exp is accurate to ~1 ulp, but x - max is rounded
 * (relative error eps * |x - max| <= 6e-8 * 120 in exp's result for the
 * [-60, 60] case) and the row sum of up to 1000 terms carries ~sqrt(C) ulp.
 * dx = y * (dy - <y, dy>) adds the error of the dot product, again
 * ~sqrt(C) ulp of max |dy| <= 1, scaled by y.
 *   rtol 2e-5: covers those relative errors (< 1e-5) on significant
 *              elements; a 1e-3 error fails;
 *   atol 1e-7: elements of dx that cancel (dy ~ <y, dy>) have an absolute
 *              error <= y * few ulp(1) < 1e-7 * y; y itself is relative-
 *              accurate, and masked (-inf) entries must be exactly 0. The
 *              largest references are 0.02 (C = 1000) to 1, so 1e-7 is at
 *              most 5e-6 of them.
 */
static const double SM_RTOL = 2e-5, SM_ATOL = 1e-7;

static const char *const softmax_cases[] = {
    "softmax_masked_17x33", "softmax_masked_3x17", "softmax_long_3x1000",
    "softmax_long_masked_1x1000", "softmax_big_50x3", "softmax_3d_2x3x17",
};

START_TEST(test_oracle_softmax)
{
    tbt_ref *ref = tbt_ref_load(softmax_cases[_i]);
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy");
    tbt_reft y_ref = tbt_ref_get(ref, "y"), dx_ref = tbt_ref_get(ref, "dx");

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(y_ref.n), *dxb = tbt_nan_buffer(dx_ref.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dxt = tbt_view_like(dxb, &dx_ref);
    CHECK_OK(ctx, tb_softmax_forward(&ctx, &xt, &yt));
    CHECK_OK(ctx, tb_softmax_backward(&ctx, &yt, &dyt, &dxt));

    size_t masked = 0;
    for (size_t i = 0; i < x.n; i++)
        masked += isinf(x.data[i]) && x.data[i] < 0;
    char blk[96], sx[32], lbl[128];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "softmax[%s%s]", sx, masked ? ",-inf" : "");
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "y"), yb, y_ref.data, y_ref.n, SM_RTOL, SM_ATOL);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dx"), dxb, dx_ref.data, dx_ref.n, SM_RTOL,
                     SM_ATOL);
    /* Masked entries: probability and gradient exactly 0, as in PyTorch. */
    for (size_t i = 0; i < x.n; i++)
        if (isinf(x.data[i]) && x.data[i] < 0)
            ck_assert_msg(yb[i] == 0.0f && dxb[i] == 0.0f,
                          "%s: masked element %zu has y=%g dx=%g", blk, i, (double)yb[i],
                          (double)dxb[i]);
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    tbt_ref_free(ref);
}
END_TEST

/* ---- Coverage: every case gen_softmax.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(softmax_cases); k++)
        if (strcmp(softmax_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_softmax_all_cases_tested)
{
    ck_assert_uint_gt(
        tbt_check_manifest("softmax_cases.txt", "test_softmax.c", case_is_tested, NULL), 0);
}
END_TEST

Suite *suite_softmax(void)
{
    Suite *s = suite_create("softmax");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, softmax_edge_cases);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("pytorch");
    tcase_set_timeout(t1, 60);
    tcase_add_loop_test(t1, test_oracle_softmax, 0, (int)ARRAY_LEN(softmax_cases));
    tcase_add_test(t1, test_softmax_all_cases_tested);
    suite_add_tcase(s, t1);
    return s;
}
