/*
 * tb_gelu_* and tb_relu_*: errors and edge cases, finite differences,
 * PyTorch oracle (F.gelu both forms, F.relu). elementwise_errors and
 * elementwise_gradients each cover the element-wise and row ops together
 * (also softmax, dropout and the residual add); they live here, with the
 * first block they test (docs/adding_a_block.md, "Test layout").
 * Oracle cases: the block is run on the exact inputs, weights and upstream
 * gradients that test/oracle/gen_activation.py fed to PyTorch, and its results are
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

#include "kernels/vexp.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

START_TEST(elementwise_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float a[6], b[6], c[5];
    tbt_fill_uniform(a, 6, -1, 1, 2);
    tbt_fill_uniform(b, 6, -1, 1, 3);
    tb_tensor at = tb_tensor_2d(a, 2, 3), bt = tb_tensor_1d(b, 6), ct = tb_tensor_1d(c, 5);
    ck_assert_int_eq(tb_gelu_forward(&ctx, (tb_gelu_approx)9, &at, &bt), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_gelu_backward(&ctx, (tb_gelu_approx)3, &at, &bt, &bt), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_gelu_forward(&ctx, TB_GELU_EXACT, &at, &ct), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_gelu_backward(&ctx, TB_GELU_TANH, &at, &bt, &ct), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_relu_forward(&ctx, &at, &ct), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_relu_backward(&ctx, &at, &ct, &bt), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_residual_forward(&ctx, &at, &ct, &bt), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_residual_backward(&ctx, &at, &ct), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_gelu_forward(NULL, TB_GELU_EXACT, &at, &bt), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_relu_forward(&ctx, NULL, &bt), TB_ERR_NULL_ARG);
    /* Views of the same element count but different shapes are accepted. */
    ck_assert_int_eq(tb_relu_forward(&ctx, &at, &bt), TB_OK);
    /* ReLU: gradient 0 at exactly 0 (as PyTorch); NaN propagates forward. */
    float z[3] = {0.0f, NAN, -0.0f}, g[3] = {1, 1, 1}, o[3];
    tb_tensor zt = tb_tensor_1d(z, 3), gt = tb_tensor_1d(g, 3), ot = tb_tensor_1d(o, 3);
    ck_assert_int_eq(tb_relu_backward(&ctx, &zt, &gt, &ot), TB_OK);
    ck_assert(o[0] == 0.0f && o[2] == 0.0f);
    ck_assert_int_eq(tb_relu_forward(&ctx, &zt, &ot), TB_OK);
    ck_assert(isnan(o[1]));
    /* Residual: forward adds, backward accumulates. */
    float x1[3] = {1, 2, 3}, f1[3] = {10, 20, 30}, y1[3], dx1[3] = {1, 1, 1};
    tb_tensor x1t = tb_tensor_1d(x1, 3), f1t = tb_tensor_1d(f1, 3), y1t = tb_tensor_1d(y1, 3),
              dx1t = tb_tensor_1d(dx1, 3);
    ck_assert_int_eq(tb_residual_forward(&ctx, &x1t, &f1t, &y1t), TB_OK);
    ck_assert(y1[0] == 11 && y1[1] == 22 && y1[2] == 33);
    ck_assert_int_eq(tb_residual_backward(&ctx, &x1t, &dx1t), TB_OK);
    ck_assert(dx1[0] == 2 && dx1[1] == 3 && dx1[2] == 4);
}
END_TEST

/* ---- elementwise and row ops --------------------------------------------- */

enum op_kind { OP_GELU_EXACT, OP_GELU_TANH, OP_GELU_QUICK, OP_RELU, OP_SOFTMAX, OP_DROPOUT, OP_RESIDUAL };

typedef struct ew_prob {
    tb_ctx ctx;
    enum op_kind kind;
    float *x, *f, *y, *w;
    size_t rows, cols;
    tb_rng rng0; /* dropout: every forward starts from the same stream position */
    float p;
} ew_prob;

static tb_status ew_forward(ew_prob *p)
{
    tb_tensor x = tb_tensor_2d(p->x, p->rows, p->cols), y = tb_tensor_2d(p->y, p->rows, p->cols);
    switch (p->kind) {
    case OP_GELU_EXACT: return tb_gelu_forward(&p->ctx, TB_GELU_EXACT, &x, &y);
    case OP_GELU_TANH: return tb_gelu_forward(&p->ctx, TB_GELU_TANH, &x, &y);
    case OP_GELU_QUICK: return tb_gelu_forward(&p->ctx, TB_GELU_QUICK, &x, &y);
    case OP_RELU: return tb_relu_forward(&p->ctx, &x, &y);
    case OP_SOFTMAX: return tb_softmax_forward(&p->ctx, &x, &y);
    case OP_DROPOUT: {
        tb_rng r = p->rng0;
        tb_dropout_cache c;
        return tb_dropout_forward(&p->ctx, TB_MODE_TRAINING, p->p, &r, &x, &y, &c);
    }
    case OP_RESIDUAL: {
        tb_tensor f = tb_tensor_2d(p->f, p->rows, p->cols);
        return tb_residual_forward(&p->ctx, &x, &f, &y);
    }
    }
    return TB_ERR_INVALID_ARG;
}

static double ew_loss(void *user)
{
    ew_prob *p = user;
    ck_assert_int_eq(ew_forward(p), TB_OK);
    return tbt_dot(p->w, p->y, p->rows * p->cols);
}

static void check_ew(enum op_kind kind, const char *name, size_t rows, size_t cols)
{
    ew_prob p;
    memset(&p, 0, sizeof p);
    tbt_ctx_init(&p.ctx, 1);
    p.kind = kind, p.rows = rows, p.cols = cols, p.p = 0.3f;
    tb_rng_init(&p.rng0, 99);
    size_t n = rows * cols;
    p.x = tbt_alloc(n * sizeof(float));
    p.f = tbt_alloc(n * sizeof(float));
    p.y = tbt_alloc(n * sizeof(float));
    p.w = tbt_alloc(n * sizeof(float));
    float *dx = tbt_alloc(n * sizeof(float));
    /* Keep ReLU inputs a few steps away from its kink at 0. */
    tbt_fill_away_from_zero(p.x, n, -4, 4, 5 * TBT_FD_H, rows * 31 + cols);
    tbt_fill_uniform(p.f, n, -1, 1, 3);
    tbt_fill_uniform(p.w, n, -1, 1, 4);
    if (kind == OP_RELU && n == 1) /* a single negative input has gradient 0 */
        p.x[0] = fabsf(p.x[0]);
    ck_assert_int_eq(ew_forward(&p), TB_OK);
    tb_tensor x = tb_tensor_2d(p.x, rows, cols), y = tb_tensor_2d(p.y, rows, cols),
              dy = tb_tensor_2d(p.w, rows, cols), dxt = tb_tensor_2d(dx, rows, cols);
    switch (kind) {
    case OP_GELU_EXACT:
        ck_assert_int_eq(tb_gelu_backward(&p.ctx, TB_GELU_EXACT, &x, &dy, &dxt), TB_OK);
        break;
    case OP_GELU_TANH:
        ck_assert_int_eq(tb_gelu_backward(&p.ctx, TB_GELU_TANH, &x, &dy, &dxt), TB_OK);
        break;
    case OP_GELU_QUICK:
        ck_assert_int_eq(tb_gelu_backward(&p.ctx, TB_GELU_QUICK, &x, &dy, &dxt), TB_OK);
        break;
    case OP_RELU: ck_assert_int_eq(tb_relu_backward(&p.ctx, &x, &dy, &dxt), TB_OK); break;
    case OP_SOFTMAX: ck_assert_int_eq(tb_softmax_backward(&p.ctx, &y, &dy, &dxt), TB_OK); break;
    case OP_DROPOUT: {
        tb_rng r = p.rng0;
        tb_dropout_cache c;
        ck_assert_int_eq(tb_dropout_forward(&p.ctx, TB_MODE_TRAINING, p.p, &r, &x, &y, &c), TB_OK);
        ck_assert_int_eq(tb_dropout_backward(&p.ctx, &dy, &c, &dxt), TB_OK);
        break;
    }
    case OP_RESIDUAL: /* the branch contributed nothing here: dx starts at 0 */
        memset(dx, 0, n * sizeof(float));
        ck_assert_int_eq(tb_residual_backward(&p.ctx, &dy, &dxt), TB_OK);
        break;
    }
    char label[96];
    snprintf(label, sizeof label, "%s[%zux%zu].dx", name, rows, cols);
    tbt_gradcheck(label, p.x, n, dx, ew_loss, &p, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    free(p.x), free(p.f), free(p.y), free(p.w), free(dx);
}

START_TEST(elementwise_gradients)
{
    static const size_t shapes[][2] = {{1, 1}, {3, 17}, {17, 33}};
    for (size_t s = 0; s < 3; s++) {
        size_t r = shapes[s][0], c = shapes[s][1];
        check_ew(OP_GELU_EXACT, "gelu_exact", r, c);
        check_ew(OP_GELU_TANH, "gelu_tanh", r, c);
        check_ew(OP_GELU_QUICK, "gelu_quick", r, c);
        check_ew(OP_RELU, "relu", r, c);
        check_ew(OP_RESIDUAL, "residual", r, c);
        if (r * c > 1) /* a 1x1 softmax is constant; dropout of 1 may drop it */
            check_ew(OP_SOFTMAX, "softmax", r, c);
        if (r * c > 1)
            check_ew(OP_DROPOUT, "dropout", r, c);
    }
}
END_TEST

/* ---- GELU ----------------------------------------------------------------
 *
 * x covers [-6, 6] (a grid including 0 and both ends, plus random values),
 * |dy| < 1. Both sides evaluate the same closed forms in float32 with
 * different erf/tanh/exp implementations (each accurate to a few ulp).
 *   rtol 1e-5: ~170 ulp, room for the libm differences on large outputs
 *              (|y| up to 6) while a 1e-3 error fails;
 *   atol 3e-6: for x << 0 both forms evaluate 1 + erf(.) / 1 + tanh(.)
 *              and 1 - tanh^2 with catastrophic cancellation: these are
 *              only known to ~1-2 ulp of 1 (6e-8 .. 1.2e-7), multiplied by
 *              0.5 |x| <= 3 (forward) or 0.5 |x| |du/dx| <= 14 (tanh
 *              backward), i.e. up to ~1.7e-6 absolute on EACH side on
 *              results that are themselves tiny. Measured against float64
 *              PyTorch: torch's own float32 exact-GELU forward is off by
 *              9e-7 (x = -3.41, y = -1.09e-3) and its tanh-GELU gradient by
 *              6.5e-7; ours by up to 1.2e-6 (tanh gradient, x = -5.1).
 *              3e-6 is at most 3e-6 of the largest references (1.1 .. 6),
 *              so a 1e-3 error on any element above 3e-3 fails.
 * Quick GELU (x sigmoid(1.702 x), from transformers' QuickGELUActivation)
 * has no cancellation on either side: measured against float32 PyTorch
 * 1.2e-7 absolute, against float64 6e-7 (where PyTorch multiplies by the
 * double 1.702, the library by 1.702f: a 2e-8 relative change of the
 * slope).
 */
const double GELU_RTOL = 1e-5, GELU_ATOL = 3e-6; /* also test_residual.c */

/* Against float64 PyTorch (rounded to float32) the library's GELU, written
 * without the cancellation (erfc, sigmoid forms), must be accurate to a few
 * ulp everywhere: rtol 2e-6 (~16 ulp), atol 2e-7 (the tails, where |y| and
 * |dx| fall below 1e-3, are accurate to a few ulp of themselves). */
static const double GELU64_RTOL = 2e-6, GELU64_ATOL = 2e-7;

static const char *const gelu_cases[] = {
    "gelu_exact_17x33",  "gelu_tanh_17x33",  "gelu_exact_2x3x50", "gelu_tanh_2x3x50",
    "gelu_exact_1x3",    "gelu_tanh_1x3",    "gelu_quick_17x33",  "gelu_quick_2x3x50",
    "gelu_quick_1x3",
};
static const char *const gelu_form_names[] = {"exact", "tanh", "quick"};

START_TEST(test_oracle_gelu)
{
    const char *name = gelu_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const int32_t form = tbt_ref_i32_scalar(ref, "approximate");
    ck_assert(form == TB_GELU_EXACT || form == TB_GELU_TANH || form == TB_GELU_QUICK);
    const tb_gelu_approx approx = (tb_gelu_approx)form;
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy");
    tbt_reft y_ref = tbt_ref_get(ref, "y"), dx_ref = tbt_ref_get(ref, "dx");

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(y_ref.n), *dxb = tbt_nan_buffer(dx_ref.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dxt = tbt_view_like(dxb, &dx_ref);
    CHECK_OK(ctx, tb_gelu_forward(&ctx, approx, &xt, &yt));
    CHECK_OK(ctx, tb_gelu_backward(&ctx, approx, &xt, &dyt, &dxt));

    char blk[96], sx[32], lbl[128];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "gelu_%s[%s]", gelu_form_names[form], sx);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "y"), yb, y_ref.data, y_ref.n, GELU_RTOL,
                     GELU_ATOL);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dx"), dxb, dx_ref.data, dx_ref.n, GELU_RTOL,
                     GELU_ATOL);
    tbt_reft y64 = tbt_ref_get(ref, "y_f64"), dx64 = tbt_ref_get(ref, "dx_f64");
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "y_vs_f64"), yb, y64.data, y64.n, GELU64_RTOL,
                     GELU64_ATOL);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dx_vs_f64"), dxb, dx64.data, dx64.n,
                     GELU64_RTOL, GELU64_ATOL);
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    tbt_ref_free(ref);
}
END_TEST

/* ---- ReLU ----------------------------------------------------------------
 *
 * ReLU and its gradient involve no rounding at all (a select), so both must
 * be bit-exact: rtol 0, atol 0. The inputs include exact zeros and a -0.0,
 * where PyTorch's gradient is 0.
 */
static const char *const relu_cases[] = {"relu_17x50", "relu_3x1"};

START_TEST(test_oracle_relu)
{
    tbt_ref *ref = tbt_ref_load(relu_cases[_i]);
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy");
    tbt_reft y_ref = tbt_ref_get(ref, "y"), dx_ref = tbt_ref_get(ref, "dx");

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(y_ref.n), *dxb = tbt_nan_buffer(dx_ref.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dxt = tbt_view_like(dxb, &dx_ref);
    CHECK_OK(ctx, tb_relu_forward(&ctx, &xt, &yt));
    CHECK_OK(ctx, tb_relu_backward(&ctx, &xt, &dyt, &dxt));

    char blk[96], sx[32], lbl[128];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "relu[%s]", sx);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "y"), yb, y_ref.data, y_ref.n, 0.0, 0.0);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dx"), dxb, dx_ref.data, dx_ref.n, 0.0, 0.0);
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    tbt_ref_free(ref);
}
END_TEST

/* ---- The family's GELU against double precision --------------------------
 *
 * src/kernels/vexp.h's gelu and gelu_backward of the context's family
 * (TB_KERNEL), every form, on a dense sweep of [-16, 16] (both tails: the
 * exact form's output underflows below x = -14, its Phi(x) reaches 1 in
 * float above x = 5.4) and on special values. Errors:
 *   forward  |y - ref| / |ref|, less an absolute 1e-37 (~8 FLT_MIN:
 *            results at the bottom of the normal range, where exp(-x^2/2)
 *            leaves it, may be flushed or denormal);
 *   backward |g - ref| / (|first term| + |second term|) of gelu' = Phi(x)
 *            + x phi(x) (or s + x s (1 - s) ...): its value goes through 0
 *            at x = -0.75, where no float evaluation has a relative bound,
 *            so the error is measured against the terms it is made of.
 * The exact form's reference is erfc and exp in double of the float x.
 * The tanh form's argument u = sqrt(2/pi) (x + 0.044715 x^3) is itself
 * rounded in float before the sigmoid (as torch's float kernel does), an
 * error of up to 1e-5 relative in the far negative tail that no sigmoid
 * can remove: its reference takes that float u (computed here with the
 * library's operation order) and does the rest in double; the quick
 * form's likewise takes the float 1.702f x.
 * Bounds: 1e-6 forward and backward for every form (~8 ulp; the vector
 * code measures below 4e-7, printed). A polynomial fitted to 1e-6 instead
 * of 4e-8, a coefficient of degree <= 4 off in its 4th significant digit,
 * exp(-x^2/2) without the low part of x^2 (off by up to 4% at x = -13),
 * or the tail computed as 1 - Phi(a) (all digits lost below x = -5.4),
 * fails. The portable family's erfcf(-x /
 * sqrt 2) rounds its argument first: its exact form is off by up to
 * ~3 a^2 ulp relative in the negative tail (measured 1.3e-5 at x = -14):
 * for it the bound is 2.5e-7 a^2 (+ 1e-6), which the vector families also
 * meet by a wide margin. */
static double ref_phi(double x)
{
    return 0.5 * erfc(-x / sqrt(2.0));
}

static float tanh_u_float(float x)
{
    const float c = 0.044715f * x;
    const float cx2 = c * x;
    const float cx3 = cx2 * x;
    const float in = x + cx3;
    return 0.79788456080286535588f * in;
}

/* |got - want| less 1e-37 (results at the bottom of the normal range may
 * be flushed or denormal), relative to scale. */
static double rel_beyond_flt_min(float got, double want, double scale)
{
    const double d = fabs(got - want) - 1e-37;
    if (d <= 0.0)
        return 0.0;
    return scale > 0.0 ? d / scale : INFINITY;
}

typedef struct gelu_err {
    double fwd, bwd, fwd_x, bwd_x;
} gelu_err;

static void gelu_measure(int form, double x, float y, float g, double a2_bound, gelu_err *e,
                         double *worst_scaled)
{
    double ref, r1, r2, one_minus_s = 0.0;
    if (form == TB_GELU_EXACT) {
        ref = x * ref_phi(x);
        r1 = ref_phi(x);
        r2 = x * exp(-0.5 * x * x) * 0.39894228040143267794; /* 1 / sqrt(2 pi) */
    } else {
        const float kx = 1.702f * (float)x;
        const double k = form == TB_GELU_TANH ? 2.0 * (double)tanh_u_float((float)x) : kx;
        const double sg = 1.0 / (1.0 + exp(-k));
        const double dk = form == TB_GELU_TANH
                              ? 2.0 * 0.79788456080286535588 * (1.0 + 3.0 * 0.044715 * x * x)
                              : 1.702;
        ref = x * sg;
        r1 = sg;
        r2 = x * sg * (1.0 - sg) * dk;
        /* The formula's 1 - s is known to ulp(1) = 1.2e-7 absolute once
         * s > 1/2 (s rounded first): the gradient's second term to
         * 1.2e-7 |x| dk absolute (6e-6 at x = 5 with the tanh form), in
         * every family, libm's included. */
        one_minus_s = 1.2e-7 * fabs(x) * dk;
    }
    const double ef = rel_beyond_flt_min(y, ref, fabs(ref));
    const double eb = rel_beyond_flt_min(g, r1 + r2, fabs(r1) + fabs(r2));
    if (ef > e->fwd)
        e->fwd = ef, e->fwd_x = x;
    if (eb > e->bwd)
        e->bwd = eb, e->bwd_x = x;
    /* Against the bound that allows for a rounded argument (see above). */
    const double lim = 1e-6 + a2_bound * x * x;
    const double lim_b = lim + one_minus_s / (fabs(r1) + fabs(r2) + 1e-300);
    if (ef / lim > *worst_scaled)
        *worst_scaled = ef / lim;
    if (eb / lim_b > *worst_scaled)
        *worst_scaled = eb / lim_b;
}

START_TEST(gelu_vector_accuracy)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const tb_vexp_ops *vx = tb_vexp_select(&ctx);
    const int portable = vx == &tb_vexp_portable;
    const char *fam = vx == &tb_vexp_avx512 ? "avx512" : vx == &tb_vexp_avx2 ? "avx2" : "portable";
    enum { N = 640007, NS = 22 };
    const float special[NS] = {0.0f,   -0.0f,  1e-30f,  -1e-30f, 1e-45f, -1e-45f, 0.75179f,
                               -0.75179f, 5.4f, -5.4f,  13.2f,   -13.2f, -13.5f,  -14.0f,
                               -14.5f, -20.0f, 100.0f, -100.0f, 3.0e38f, -3.0e38f, 1e-6f,
                               -1e-6f};
    float *x = tbt_alloc(N * sizeof(float)), *y = tbt_alloc(N * sizeof(float));
    float *g = tbt_alloc(N * sizeof(float)), *dy = tbt_alloc(N * sizeof(float));
    for (size_t j = 0; j < N; j++)
        x[j] = j < NS ? special[j] : -16.0f + 32.0f * (float)(j - NS) / (float)(N - NS - 1);
    for (size_t j = 0; j < N; j++)
        dy[j] = 1.0f;
    for (int form = 0; form < 3; form++) {
        vx->gelu(form, x, y, N);
        vx->gelu_backward(form, x, dy, g, N);
        gelu_err e = {0, 0, 0, 0};
        double scaled = 0.0;
        const double a2 = portable && form == TB_GELU_EXACT ? 2.5e-7 : 0.0;
        for (size_t j = 0; j < N; j++) {
            /* The tanh and quick formulas overflow (x^3, x s) beyond 1e12:
             * NaN for every family, libm's included. */
            if (form != TB_GELU_EXACT && fabsf(x[j]) > 1e12f)
                continue;
            /* Their sigmoid 1 / (1 + exp(-k)) is 0 (every family's, as
             * libm's expf overflows) once k < -88.7 (x < -10.05 for tanh,
             * -52 for quick), where x s and the gradient's x s (1 - s) du
             * would still be normal floats: checked down to there. */
            const float k = form == TB_GELU_TANH ? 2.0f * tanh_u_float(x[j]) : 1.702f * x[j];
            if (form != TB_GELU_EXACT && k < -87.0f)
                continue;
            gelu_measure(form, x[j], y[j], g[j], a2, &e, &scaled);
        }
        printf("  check   gelu %s (%s): forward max relative error %.2e (at x = %.4g), backward "
               "%.2e (at x = %.4g) vs double\n",
               gelu_form_names[form], fam, e.fwd, e.fwd_x, e.bwd, e.bwd_x);
        ck_assert_msg(scaled <= 1.0,
                      "gelu %s (%s): error over its bound (forward %g at x = %g, backward %g at "
                      "x = %g)",
                      gelu_form_names[form], fam, e.fwd, e.fwd_x, e.bwd, e.bwd_x);
        /* Special values: NaN stays NaN; +-inf as the portable (libm)
         * formula gives them. */
        const float sp[3] = {NAN, INFINITY, -INFINITY};
        float sy[3], sg[3], py[3], pg[3], one[3] = {1, 1, 1};
        vx->gelu(form, sp, sy, 3);
        vx->gelu_backward(form, sp, one, sg, 3);
        tb_vexp_portable.gelu(form, sp, py, 3);
        tb_vexp_portable.gelu_backward(form, sp, one, pg, 3);
        for (int k = 0; k < 3; k++)
            ck_assert_msg((isnan(sy[k]) && isnan(py[k])) || sy[k] == py[k],
                          "gelu %s (%s) of %g: %g, libm's formula %g", gelu_form_names[form], fam,
                          (double)sp[k], (double)sy[k], (double)py[k]);
        for (int k = 0; k < 3; k++)
            ck_assert_msg((isnan(sg[k]) && isnan(pg[k])) || sg[k] == pg[k],
                          "gelu' %s (%s) of %g: %g, libm's formula %g", gelu_form_names[form],
                          fam, (double)sp[k], (double)sg[k], (double)pg[k]);
        ck_assert_msg(isnan(sy[0]) && sy[1] == INFINITY, "gelu %s of NaN, +inf",
                      gelu_form_names[form]);
        /* Every tail length and offset gives each element the same value,
         * in place too (y = x, dx = dy). */
        for (size_t n = 1; n <= 40; n++) {
            float xs[40], ys[40], gs[40], ones[40];
            for (size_t j = 0; j < n; j++)
                xs[j] = x[1000 + 7919 * j], ones[j] = 1.0f;
            vx->gelu(form, xs + 0, ys, n);
            vx->gelu_backward(form, xs, ones, gs, n);
            for (size_t j = 0; j < n; j++)
                ck_assert_msg(memcmp(&ys[j], &y[1000 + 7919 * j], sizeof(float)) == 0 &&
                                  memcmp(&gs[j], &g[1000 + 7919 * j], sizeof(float)) == 0,
                              "gelu %s (%s): element %zu of %zu differs from the sweep's",
                              gelu_form_names[form], fam, j, n);
            vx->gelu(form, xs, xs, n);
            vx->gelu_backward(form, ys, ones, ones, n); /* ys = gelu values as inputs now */
            for (size_t j = 0; j < n; j++)
                ck_assert_msg(memcmp(&xs[j], &y[1000 + 7919 * j], sizeof(float)) == 0,
                              "gelu %s (%s) in place", gelu_form_names[form], fam);
        }
    }
    /* Through the block: the same values for 1 and 3 threads. */
    tb_ctx c3;
    tbt_ctx_init(&c3, 3);
    float *y3 = tbt_alloc(N * sizeof(float));
    tb_tensor xt = tb_tensor_1d(x, N), yt = tb_tensor_1d(y, N), y3t = tb_tensor_1d(y3, N);
    for (int form = 0; form < 3; form++) {
        CHECK_OK(ctx, tb_gelu_forward(&ctx, (tb_gelu_approx)form, &xt, &yt));
        CHECK_OK(c3, tb_gelu_forward(&c3, (tb_gelu_approx)form, &xt, &y3t));
        ck_assert(memcmp(y, y3, N * sizeof(float)) == 0);
        tb_tensor dyt = tb_tensor_1d(dy, N);
        CHECK_OK(ctx, tb_gelu_backward(&ctx, (tb_gelu_approx)form, &xt, &dyt, &yt));
        CHECK_OK(c3, tb_gelu_backward(&c3, (tb_gelu_approx)form, &xt, &dyt, &y3t));
        ck_assert(memcmp(y, y3, N * sizeof(float)) == 0);
    }
    free(y3);
    free(x);
    free(y);
    free(g);
    free(dy);
}
END_TEST

/* ---- Coverage: every case gen_activation.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(gelu_cases); k++)
        if (strcmp(gelu_cases[k], name) == 0)
            return 1;
    for (size_t k = 0; k < ARRAY_LEN(relu_cases); k++)
        if (strcmp(relu_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_activation_all_cases_tested)
{
    ck_assert_uint_gt(
        tbt_check_manifest("activation_cases.txt", "test_activation.c", case_is_tested, NULL), 0);
}
END_TEST

Suite *suite_activation(void)
{
    Suite *s = suite_create("activation");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, elementwise_errors);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("finite_differences");
    tcase_set_timeout(t1, 120);
    tcase_add_test(t1, elementwise_gradients);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("pytorch");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_oracle_gelu, 0, (int)ARRAY_LEN(gelu_cases));
    tcase_add_loop_test(t2, test_oracle_relu, 0, (int)ARRAY_LEN(relu_cases));
    tcase_add_test(t2, test_activation_all_cases_tested);
    suite_add_tcase(s, t2);
    TCase *t3 = tcase_create("vector_gelu");
    tcase_set_timeout(t3, 60);
    tcase_add_test(t3, gelu_vector_accuracy);
    suite_add_tcase(s, t3);
    return s;
}
