/*
 * tb_residual_*: the PyTorch oracle (x + gelu(x), x + Linear(x)). Its
 * errors and finite differences are part of elementwise_errors and
 * elementwise_gradients (test_activation.c).
 * Oracle cases: the block is run on the exact inputs, weights and upstream
 * gradients that test/oracle/gen_residual.py fed to PyTorch, and its results are
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

/* ---- Residual ------------------------------------------------------------
 *
 * y = x + f(x). The branch backward WRITES dx, tb_residual_backward ADDS
 * the skip path's dy, and the result must equal PyTorch's autograd of the
 * whole expression. One exact add on top of the branch's own rounding, so
 * the branch's tolerances apply: GELU's for the gelu branch, Linear's for
 * the linear branch.
 */
static const char *const residual_cases[] = {"residual_gelu_2x3x17", "residual_linear_17x33"};

START_TEST(test_oracle_residual_gelu)
{
    tbt_ref *ref = tbt_ref_load(residual_cases[0]);
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy");
    tbt_reft y_ref = tbt_ref_get(ref, "y"), dx_ref = tbt_ref_get(ref, "dx");

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy), *fxb = tbt_nan_buffer(x.n);
    float *yb = tbt_nan_buffer(y_ref.n), *dxb = tbt_nan_buffer(dx_ref.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy), fxt = tbt_view_like(fxb, &x);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dxt = tbt_view_like(dxb, &dx_ref);
    CHECK_OK(ctx, tb_gelu_forward(&ctx, TB_GELU_TANH, &xt, &fxt));
    CHECK_OK(ctx, tb_residual_forward(&ctx, &xt, &fxt, &yt));
    CHECK_OK(ctx, tb_gelu_backward(&ctx, TB_GELU_TANH, &xt, &dyt, &dxt));
    CHECK_OK(ctx, tb_residual_backward(&ctx, &dyt, &dxt));

    tbt_assert_close("residual[2x3x17,gelu_tanh].y", yb, y_ref.data, y_ref.n, GELU_RTOL,
                     GELU_ATOL);
    tbt_assert_close("residual[2x3x17,gelu_tanh].dx", dxb, dx_ref.data, dx_ref.n, GELU_RTOL,
                     GELU_ATOL);
    free(xb);
    free(dyb);
    free(fxb);
    free(yb);
    free(dxb);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_oracle_residual_linear)
{
    tbt_ref *ref = tbt_ref_load(residual_cases[1]);
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy"), w = tbt_ref_get(ref, "weight");
    tbt_reft b = tbt_ref_get(ref, "bias");
    tbt_reft y_ref = tbt_ref_get(ref, "y"), dx_ref = tbt_ref_get(ref, "dx");
    tbt_reft dw_ref = tbt_ref_get(ref, "dweight"), db_ref = tbt_ref_get(ref, "dbias");
    const size_t c = w.shape[1];

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 3);
    tb_linear lin;
    CHECK_OK(ctx, tb_linear_init(&ctx, &lin, c, c, 1, &rng));
    tb_param_list params;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &params));
    CHECK_OK(ctx, tb_linear_params(&ctx, &lin, "branch", &params));
    memcpy(lin.weight.value, w.data, w.n * sizeof(float));
    memcpy(lin.bias.value, b.data, b.n * sizeof(float));
    tb_param_list_zero_grad(&params);

    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy), *fxb = tbt_nan_buffer(x.n);
    float *yb = tbt_nan_buffer(y_ref.n), *dxb = tbt_nan_buffer(dx_ref.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy), fxt = tbt_view_like(fxb, &x);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dxt = tbt_view_like(dxb, &dx_ref);
    CHECK_OK(ctx, tb_linear_forward(&ctx, &lin, &xt, &fxt));
    CHECK_OK(ctx, tb_residual_forward(&ctx, &xt, &fxt, &yt));
    CHECK_OK(ctx, tb_linear_backward(&ctx, &lin, &xt, &dyt, &dxt));
    CHECK_OK(ctx, tb_residual_backward(&ctx, &dyt, &dxt));

    tb_param *pw = tb_param_list_find(&params, "branch.weight");
    tb_param *pb = tb_param_list_find(&params, "branch.bias");
    ck_assert_ptr_nonnull(pw);
    ck_assert_ptr_nonnull(pb);
    tbt_assert_close("residual[17x33,linear].y", yb, y_ref.data, y_ref.n, LIN_RTOL, LIN_ATOL);
    tbt_assert_close("residual[17x33,linear].dx", dxb, dx_ref.data, dx_ref.n, LIN_RTOL,
                     LIN_ATOL);
    tbt_assert_close("residual[17x33,linear].dW", pw->grad, dw_ref.data, dw_ref.n, LIN_RTOL,
                     LIN_ATOL);
    tbt_assert_close("residual[17x33,linear].db", pb->grad, db_ref.data, db_ref.n, LIN_RTOL,
                     LIN_ATOL);
    free(xb);
    free(dyb);
    free(fxb);
    free(yb);
    free(dxb);
    tb_param_list_free(&params);
    tb_linear_free(&lin);
    tbt_ref_free(ref);
}
END_TEST

/* ---- Coverage: every case gen_residual.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(residual_cases); k++)
        if (strcmp(residual_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_residual_all_cases_tested)
{
    ck_assert_uint_gt(
        tbt_check_manifest("residual_cases.txt", "test_residual.c", case_is_tested, NULL), 0);
}
END_TEST

Suite *suite_residual(void)
{
    Suite *s = suite_create("residual");
    TCase *t0 = tcase_create("pytorch");
    tcase_set_timeout(t0, 60);
    tcase_add_test(t0, test_oracle_residual_gelu);
    tcase_add_test(t0, test_oracle_residual_linear);
    tcase_add_test(t0, test_residual_all_cases_tested);
    suite_add_tcase(s, t0);
    return s;
}
