/*
 * tb_linear_*: errors and edge cases, finite differences, PyTorch oracle
 * (torch.nn.Linear).
 * Oracle cases: the block is run on the exact inputs, weights and upstream
 * gradients that test/oracle/gen_linear.py fed to PyTorch, and its results are
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

START_TEST(linear_rejects_bad_input)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 3);
    tb_linear lin;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 0, 4, 1, &rng), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 0, 1, &rng), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 4, 1, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_init(NULL, &lin, 4, 4, 1, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_init(&ctx, NULL, 4, 4, 1, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 3, 1, &rng), TB_OK);

    float xd[8], yd[6], dyd[6], dxd[8];
    tbt_fill_uniform(xd, 8, -1, 1, 1);
    tbt_fill_uniform(dyd, 6, -1, 1, 2);
    tbt_fill_sentinel(yd, 6);
    tb_tensor x = tb_tensor_2d(xd, 2, 4), y = tb_tensor_2d(yd, 2, 3);
    tb_tensor dy = tb_tensor_2d(dyd, 2, 3), dx = tb_tensor_2d(dxd, 2, 4);

    tb_tensor xbad = tb_tensor_2d(xd, 4, 2); /* wrong last dim */
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &xbad, &y), TB_ERR_SHAPE);
    tb_tensor ybad = tb_tensor_2d(yd, 1, 3); /* wrong rows */
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &ybad), TB_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "rows"));
    tb_tensor ybad2 = tb_tensor_2d(yd, 2, 2); /* wrong cols */
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &ybad2), TB_ERR_SHAPE);
    tb_tensor zero = tb_tensor_2d(xd, 0, 4);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &zero, &y), TB_ERR_SHAPE);
    tb_tensor nodata = tb_tensor_2d(NULL, 2, 4);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &nodata, &y), TB_ERR_NULL_ARG);
    tb_tensor toomany = x;
    toomany.ndim = 5;
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &toomany, &y), TB_ERR_SHAPE);
    tb_tensor overflow = tb_tensor_3d(xd, SIZE_MAX / 8, 16, 4);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &overflow, &y), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, NULL, &y), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_forward(&ctx, NULL, &x, &y), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_forward(NULL, &lin, &x, &y), TB_ERR_NULL_ARG);
    tb_tensor alias = tb_tensor_2d(xd, 2, 3); /* y overlapping x */
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &alias), TB_ERR_INVALID_ARG);
    tbt_assert_untouched(yd, 6);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &y), TB_OK);

    /* Backward: nothing written (dx or gradients) on a shape error. */
    tbt_fill_sentinel(dxd, 8);
    float gw0 = lin.weight.grad[0];
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &ybad, &dx), TB_ERR_SHAPE);
    tb_tensor dxbad = tb_tensor_2d(dxd, 2, 3);
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &dy, &dxbad), TB_ERR_SHAPE);
    tbt_assert_untouched(dxd, 8);
    ck_assert(lin.weight.grad[0] == gw0);
    tb_tensor dx_on_x = tb_tensor_2d(xd, 2, 4); /* x is still needed for dW */
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &dy, &dx_on_x), TB_ERR_INVALID_ARG);
    ck_assert(lin.weight.grad[0] == gw0);
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &dy, NULL), TB_OK); /* dx optional */
    ck_assert(lin.weight.grad[0] != gw0);

    /* A frozen weight gets no gradient; the bias still does. */
    memset(lin.weight.grad, 0, lin.weight.numel * sizeof(float));
    memset(lin.bias.grad, 0, lin.bias.numel * sizeof(float));
    lin.weight.trainable = 0;
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &dy, &dx), TB_OK);
    for (size_t i = 0; i < lin.weight.numel; i++)
        ck_assert(lin.weight.grad[i] == 0.0f);
    ck_assert(lin.bias.grad[0] == dyd[0] + dyd[3]);

    tb_linear empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_linear_forward(&ctx, &empty, &x, &y), TB_ERR_STATE);
    tb_linear_free(&lin);
}
END_TEST

START_TEST(linear_3d_input_and_no_bias)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 5);
    tb_linear lin;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 3, 2, 0, &rng), TB_OK);
    ck_assert_ptr_null(lin.bias.value);
    float xd[2 * 3 * 3], yd[2 * 3 * 2];
    tbt_fill_uniform(xd, 18, -1, 1, 11);
    tb_tensor x = tb_tensor_3d(xd, 2, 3, 3), y = tb_tensor_3d(yd, 2, 3, 2);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &y), TB_OK);
    for (size_t r = 0; r < 6; r++)
        for (size_t o = 0; o < 2; o++) {
            double want = 0;
            for (size_t i = 0; i < 3; i++)
                want += (double)xd[r * 3 + i] * lin.weight.value[o * 3 + i];
            ck_assert(fabs(yd[r * 2 + o] - want) <= 1e-6 + 1e-6 * fabs(want));
        }
    tb_linear_free(&lin);
}
END_TEST

/* ---- linear ------------------------------------------------------------ */

typedef struct linear_prob {
    tb_ctx ctx;
    tb_linear lin;
    float *x, *y, *w;
    size_t n, in, out;
} linear_prob;

static double linear_loss(void *user)
{
    linear_prob *p = user;
    tb_tensor x = tb_tensor_2d(p->x, p->n, p->in), y = tb_tensor_2d(p->y, p->n, p->out);
    ck_assert_int_eq(tb_linear_forward(&p->ctx, &p->lin, &x, &y), TB_OK);
    return tbt_dot(p->w, p->y, p->n * p->out);
}

static void check_linear_layout(size_t n, size_t in, size_t out, int bias,
                                tb_linear_layout layout)
{
    linear_prob p;
    tbt_ctx_init(&p.ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, n * 1000 + in * 10 + out);
    ck_assert_int_eq(tb_linear_init_layout(&p.ctx, &p.lin, in, out, bias, layout, &rng), TB_OK);
    ck_assert_uint_eq(p.lin.weight.shape[0], layout == TB_LINEAR_IN_OUT ? in : out);
    p.n = n, p.in = in, p.out = out;
    p.x = tbt_alloc(n * in * sizeof(float));
    p.y = tbt_alloc(n * out * sizeof(float));
    p.w = tbt_alloc(n * out * sizeof(float));
    float *dx = tbt_alloc(n * in * sizeof(float));
    tbt_fill_uniform(p.x, n * in, -1, 1, 1);
    tbt_fill_uniform(p.w, n * out, -1, 1, 2);
    tb_tensor x = tb_tensor_2d(p.x, n, in), dy = tb_tensor_2d(p.w, n, out),
              dxt = tb_tensor_2d(dx, n, in);
    ck_assert_int_eq(tb_linear_backward(&p.ctx, &p.lin, &x, &dy, &dxt), TB_OK);
    char label[96];
    const char *tag = layout == TB_LINEAR_IN_OUT ? (bias ? ",in_out" : ",nobias,in_out")
                                                 : (bias ? "" : ",nobias");
    snprintf(label, sizeof label, "linear[%zux%zu->%zu%s].dx", n, in, out, tag);
    tbt_gradcheck(label, p.x, n * in, dx, linear_loss, &p, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    snprintf(label, sizeof label, "linear[%zux%zu->%zu%s].dW", n, in, out, tag);
    tbt_gradcheck(label, p.lin.weight.value, in * out, p.lin.weight.grad, linear_loss, &p, TBT_FD_H,
                  TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    if (bias) {
        snprintf(label, sizeof label, "linear[%zux%zu->%zu].db", n, in, out);
        tbt_gradcheck(label, p.lin.bias.value, out, p.lin.bias.grad, linear_loss, &p, TBT_FD_H, TBT_FD_RTOL,
                      TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    }
    tb_linear_free(&p.lin);
    free(p.x), free(p.y), free(p.w), free(dx);
}

static void check_linear(size_t n, size_t in, size_t out, int bias)
{
    check_linear_layout(n, in, out, bias, TB_LINEAR_OUT_IN);
}

START_TEST(linear_gradients)
{
    check_linear(1, 1, 1, 1);
    check_linear(3, 17, 5, 1);
    check_linear(17, 33, 50, 1);
    check_linear(5, 3, 17, 0);
    /* GPT-2's Conv1D layout, W (in, out). */
    check_linear_layout(1, 1, 1, 1, TB_LINEAR_IN_OUT);
    check_linear_layout(3, 17, 5, 1, TB_LINEAR_IN_OUT);
    check_linear_layout(17, 33, 50, 0, TB_LINEAR_IN_OUT);
}
END_TEST

/* The (in, out) layout computes what nn.Linear computes with W transposed,
 * and a view over another layer's parameters (weight tying) shares its
 * values and accumulates into its gradients. */
START_TEST(linear_layout_and_view)
{
    enum { N = 7, IN = 19, OUT = 33 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 4);
    tb_linear a, b, v;
    ck_assert_int_eq(tb_linear_init_layout(&ctx, &a, IN, OUT, 1, TB_LINEAR_OUT_IN, &rng), TB_OK);
    ck_assert_int_eq(tb_linear_init_layout(&ctx, &b, IN, OUT, 1, TB_LINEAR_IN_OUT, &rng), TB_OK);
    for (size_t o = 0; o < OUT; o++)
        for (size_t i = 0; i < IN; i++)
            b.weight.value[i * OUT + o] = a.weight.value[o * IN + i];
    memcpy(b.bias.value, a.bias.value, OUT * sizeof(float));
    float x[N * IN], ya[N * OUT], yb[N * OUT], dy[N * OUT], dxa[N * IN], dxb[N * IN];
    tbt_fill_uniform(x, N * IN, -1, 1, 5);
    tbt_fill_uniform(dy, N * OUT, -1, 1, 6);
    tb_tensor xt = tb_tensor_2d(x, N, IN), yat = tb_tensor_2d(ya, N, OUT),
              ybt = tb_tensor_2d(yb, N, OUT), dyt = tb_tensor_2d(dy, N, OUT),
              dxat = tb_tensor_2d(dxa, N, IN), dxbt = tb_tensor_2d(dxb, N, IN);
    ck_assert_int_eq(tb_linear_forward(&ctx, &a, &xt, &yat), TB_OK);
    ck_assert_int_eq(tb_linear_forward(&ctx, &b, &xt, &ybt), TB_OK);
    tbt_assert_close("linear in_out y", yb, ya, N * OUT, 1e-6, 1e-6);
    ck_assert_int_eq(tb_linear_backward(&ctx, &a, &xt, &dyt, &dxat), TB_OK);
    ck_assert_int_eq(tb_linear_backward(&ctx, &b, &xt, &dyt, &dxbt), TB_OK);
    tbt_assert_close("linear in_out dx", dxb, dxa, N * IN, 1e-6, 1e-6);
    float gt[IN * OUT];
    for (size_t o = 0; o < OUT; o++)
        for (size_t i = 0; i < IN; i++)
            gt[i * OUT + o] = a.weight.grad[o * IN + i];
    tbt_assert_close("linear in_out dW", b.weight.grad, gt, IN * OUT, 1e-6, 1e-6);
    /* A view over a's parameters: same outputs, gradients land in a's. */
    ck_assert_int_eq(tb_linear_view(&ctx, &v, &a.weight, &a.bias, TB_LINEAR_OUT_IN), TB_OK);
    ck_assert_uint_eq(v.in_features, IN);
    ck_assert_uint_eq(v.out_features, OUT);
    float gw0 = a.weight.grad[3];
    ck_assert_int_eq(tb_linear_forward(&ctx, &v, &xt, &ybt), TB_OK);
    ck_assert(memcmp(ya, yb, sizeof ya) == 0);
    ck_assert_int_eq(tb_linear_backward(&ctx, &v, &xt, &dyt, NULL), TB_OK);
    ck_assert(a.weight.grad[3] == gw0 + gw0); /* the same sum added again */
    tb_linear_free(&v); /* frees nothing: a is still usable (ASan would see a use after free) */
    ck_assert_int_eq(tb_linear_forward(&ctx, &a, &xt, &yat), TB_OK);
    ck_assert_int_eq(tb_linear_view(&ctx, &v, &a.weight, &b.weight, TB_LINEAR_OUT_IN),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_linear_view(&ctx, &v, &a.bias, NULL, TB_LINEAR_OUT_IN), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_linear_view(&ctx, &v, &a.weight, NULL, (tb_linear_layout)5),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_linear_view(&ctx, &v, NULL, NULL, TB_LINEAR_OUT_IN), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_init_layout(&ctx, &v, 2, 2, 1, (tb_linear_layout)5, &rng),
                     TB_ERR_INVALID_ARG);
    tb_linear_free(&a);
    tb_linear_free(&b);
}
END_TEST

/* ---- Linear --------------------------------------------------------------
 *
 * Inputs: x, dy uniform in [-1, 1); W, b PyTorch's default init, uniform in
 * +-1/sqrt(in). Every result is a sum of K <= 50 products (y: K = in,
 * dx: K = out, dW and db: K = N rows). Two float32 summations of the same
 * K terms in different orders differ by about sqrt(K) ulp of the partial
 * sums: a few 1e-7 absolute here (partial sums <= ~10).
 *   rtol 2e-5: ~300 ulp; large elements (|ref| ~ 1 .. 8) were measured to
 *              differ by <= 1.4e-6 absolute (dW of 50x33->17, |ref| ~ 8),
 *              i.e. < 2e-7 relative, so this is >= 5x headroom, and a
 *              1e-3 relative error fails by 50x;
 *   atol 2e-6: results that cancel to ~0 keep the absolute error of their
 *              partial sums (few ulp of ~1 .. 10, <= ~1e-6) while their
 *              relative error is meaningless (measured up to 3e-4 for
 *              |ref| ~ 1e-3). 2e-6 is <= 2e-6 of the largest references.
 */
const double LIN_RTOL = 2e-5, LIN_ATOL = 2e-6; /* also test_residual.c */

static const char *const linear_cases[] = {
    "linear_1x1x1_bias",       "linear_1x1x1_nobias",     "linear_3x17x5_bias",
    "linear_3x17x5_nobias",    "linear_17x33x50_bias",    "linear_17x33x50_nobias",
    "linear_50x33x17_bias",    "linear_50x33x17_nobias",  "linear_b2t3_17x50_bias",
    "linear_b2t3_17x3_nobias",
};

START_TEST(test_oracle_linear)
{
    const char *name = linear_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tbt_reft x = tbt_ref_get(ref, "x"), w = tbt_ref_get(ref, "weight"), dy = tbt_ref_get(ref, "dy");
    tbt_reft y_ref = tbt_ref_get(ref, "y"), dx_ref = tbt_ref_get(ref, "dx");
    tbt_reft dw_ref = tbt_ref_get(ref, "dweight");
    const int has_bias = tbt_ref_has(ref, "bias");
    ck_assert_uint_eq(w.ndim, 2);
    const size_t out = w.shape[0], in = w.shape[1];

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_linear lin;
    CHECK_OK(ctx, tb_linear_init(&ctx, &lin, in, out, has_bias, &rng));
    memcpy(lin.weight.value, w.data, w.n * sizeof(float));
    memset(lin.weight.grad, 0, w.n * sizeof(float));
    if (has_bias) {
        tbt_reft b = tbt_ref_get(ref, "bias");
        ck_assert_uint_eq(b.n, out);
        memcpy(lin.bias.value, b.data, out * sizeof(float));
        memset(lin.bias.grad, 0, out * sizeof(float));
    }

    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(y_ref.n), *dxb = tbt_nan_buffer(dx_ref.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dxt = tbt_view_like(dxb, &dx_ref);
    CHECK_OK(ctx, tb_linear_forward(&ctx, &lin, &xt, &yt));
    CHECK_OK(ctx, tb_linear_backward(&ctx, &lin, &xt, &dyt, &dxt));

    char blk[96], sx[32], lbl[128];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "linear[%s->%zu%s]", sx, out, has_bias ? "" : ",nobias");
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "y"), yb, y_ref.data, y_ref.n, LIN_RTOL, LIN_ATOL);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dx"), dxb, dx_ref.data, dx_ref.n, LIN_RTOL,
                     LIN_ATOL);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dW"), lin.weight.grad, dw_ref.data, dw_ref.n,
                     LIN_RTOL, LIN_ATOL);
    if (has_bias) {
        tbt_reft db_ref = tbt_ref_get(ref, "dbias");
        tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "db"), lin.bias.grad, db_ref.data, db_ref.n,
                         LIN_RTOL, LIN_ATOL);
    }
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    tb_linear_free(&lin);
    tbt_ref_free(ref);
}
END_TEST

/* ---- Coverage: every case gen_linear.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(linear_cases); k++)
        if (strcmp(linear_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_linear_all_cases_tested)
{
    ck_assert_uint_gt(
        tbt_check_manifest("linear_cases.txt", "test_linear.c", case_is_tested, NULL), 0);
}
END_TEST

Suite *suite_linear(void)
{
    Suite *s = suite_create("linear");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, linear_rejects_bad_input);
    tcase_add_test(t0, linear_3d_input_and_no_bias);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("finite_differences");
    tcase_set_timeout(t1, 120);
    tcase_add_test(t1, linear_gradients);
    tcase_add_test(t1, linear_layout_and_view);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("pytorch");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_oracle_linear, 0, (int)ARRAY_LEN(linear_cases));
    tcase_add_test(t2, test_linear_all_cases_tested);
    suite_add_tcase(s, t2);
    return s;
}
