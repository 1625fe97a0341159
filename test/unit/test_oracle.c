/*
 * PyTorch oracle tests: every block is run on the exact inputs, weights and
 * upstream gradients that test/oracle/gen_reference.py fed to PyTorch, and
 * its outputs, input gradients and parameter gradients are compared with
 * the float32 PyTorch results (torch.nn.Linear, torch.nn.Embedding,
 * F.gelu, F.relu, torch.softmax, F.cross_entropy, residual add; autograd).
 *
 * Shapes and options (bias, ignore index, reduction, GELU form) are read
 * from the reference files, so each case below is just a file name; a
 * missing file fails (tbt_ref_load), the oracle is never skipped.
 *
 * Outputs written by a block are pre-filled with NaN, so an element the
 * library forgets to write fails the comparison. Parameter gradients are
 * zeroed first, because backward ADDS into them.
 *
 * Tolerances: element i passes when |got - want| <= atol + rtol * |want|
 * (tbt_compare). Both sides are float32 results of the same formulas that
 * differ only in evaluation order and libm, so the expected differences are
 * a few units in the last place (ulp = 2^-24 relative = 6e-8) of the
 * operands involved. Every tolerance below is justified next to it; none is
 * loose enough for a zeroed, negated or 1e-3-relative-wrong result to pass
 * (test_harness.c demonstrates that on a real case).
 *
 * Dropout cannot match PyTorch's RNG, so it is checked against PyTorch's
 * RNG-independent semantics instead (test_oracle_dropout).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ------------------------------------------------------------ */

/* For a reference that PyTorch computes as exactly zero everywhere (e.g. the
 * loss and gradient of a 1-class cross-entropy), any tolerance-based
 * comparison is degenerate; require exact equality instead. */
static void assert_exact_zero(const char *lbl, const float *got, const float *want, size_t n)
{
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(want[i] == 0.0f, "%s: reference is not all zero", lbl);
        if (!(got[i] == 0.0f) && bad++ == 0)
            first = i;
    }
    printf("  compare %-40s n=%-7zu exact zero (reference is identically 0)%s\n", lbl, n,
           bad ? "  MISMATCH" : "");
    fflush(stdout);
    ck_assert_msg(bad == 0, "%s: %zu of %zu elements are not exactly 0; first at %zu: %.9g", lbl,
                  bad, n, first, (double)got[first]);
}

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
static const double LIN_RTOL = 2e-5, LIN_ATOL = 2e-6;

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

/* ---- Embedding -----------------------------------------------------------
 *
 * Forward is a row copy: it must be bit-exact (rtol 0, atol 0).
 * Backward sums the dy rows of repeated ids (at most 5 equal ids here,
 * |dy| < 1): a different summation order changes the result by at most a
 * few ulp of the partial sums (~5 * 6e-8 * 2), so rtol 1e-6 and atol 1e-6
 * are ample and still 1000x below a 1e-3 error. Rows never looked up must
 * stay exactly 0, which those tolerances also require (|want| = 0).
 */
static const double EMB_RTOL = 1e-6, EMB_ATOL = 1e-6;

static const char *const embedding_cases[] = {
    "embedding_17x33_n17", "embedding_257x50_n53", "embedding_1x3_n3", "embedding_3x1_n5",
};

START_TEST(test_oracle_embedding)
{
    const char *name = embedding_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    size_t n_ids;
    const int32_t *ids = tbt_ref_i32(ref, "ids", &n_ids);
    tbt_reft w = tbt_ref_get(ref, "weight"), dy = tbt_ref_get(ref, "dy");
    tbt_reft y_ref = tbt_ref_get(ref, "y"), dw_ref = tbt_ref_get(ref, "dweight");
    ck_assert_uint_eq(w.ndim, 2);

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 2);
    tb_embedding emb;
    CHECK_OK(ctx, tb_embedding_init(&ctx, &emb, w.shape[0], w.shape[1], &rng));
    memcpy(emb.weight.value, w.data, w.n * sizeof(float));
    memset(emb.weight.grad, 0, w.n * sizeof(float));

    float *dyb = tbt_ref_dup(&dy), *yb = tbt_nan_buffer(y_ref.n);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dyt = tbt_view_like(dyb, &dy);
    CHECK_OK(ctx, tb_embedding_forward(&ctx, &emb, ids, n_ids, &yt));
    CHECK_OK(ctx, tb_embedding_backward(&ctx, &emb, ids, n_ids, &dyt));

    char blk[96], lbl[128];
    snprintf(blk, sizeof blk, "embedding[%zux%zu,n=%zu]", w.shape[0], w.shape[1], n_ids);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "y"), yb, y_ref.data, y_ref.n, 0.0, 0.0);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dW"), emb.weight.grad, dw_ref.data, dw_ref.n,
                     EMB_RTOL, EMB_ATOL);
    free(dyb);
    free(yb);
    tb_embedding_free(&emb);
    tbt_ref_free(ref);
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
 */
static const double GELU_RTOL = 1e-5, GELU_ATOL = 3e-6;

/* Against float64 PyTorch (rounded to float32) the library's GELU, written
 * without the cancellation (erfc, sigmoid forms), must be accurate to a few
 * ulp everywhere: rtol 2e-6 (~16 ulp), atol 2e-7 (the tails, where |y| and
 * |dx| fall below 1e-3, are accurate to a few ulp of themselves). */
static const double GELU64_RTOL = 2e-6, GELU64_ATOL = 2e-7;

static const char *const gelu_cases[] = {
    "gelu_exact_17x33", "gelu_tanh_17x33", "gelu_exact_2x3x50",
    "gelu_tanh_2x3x50", "gelu_exact_1x3",  "gelu_tanh_1x3",
};

START_TEST(test_oracle_gelu)
{
    const char *name = gelu_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const int32_t form = tbt_ref_i32_scalar(ref, "approximate");
    ck_assert(form == 0 || form == 1);
    const tb_gelu_approx approx = form == 0 ? TB_GELU_EXACT : TB_GELU_TANH;
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
    snprintf(blk, sizeof blk, "gelu_%s[%s]", form == 0 ? "exact" : "tanh", sx);
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

/* ---- Cross-entropy -------------------------------------------------------
 *
 * loss: per-row lse - x[target], reduced. The row terms are accurate to a
 * few ulp of lse (|lse| <= 85 for the large-logit case: ~1e-5 absolute per
 * row, relative ~1e-7 of the loss there); the reduction adds ~sqrt(N) ulp.
 *   rtol 1e-5, atol 1e-6 (loss values are 1.2 .. 265, so atol is
 *   negligible; rtol allows ~170 ulp).
 * dlogits = scale * (softmax - onehot), scale = dloss / counted (mean) or
 * dloss (sum). softmax is computed as exp(x - lse): the rounding of
 * x - lse (<= 6e-8 * |x - lse| relative, |x - lse| <= 170 for the
 * large-logit case) gives a relative error up to ~1e-5 there, ~3e-7 for
 * the |logits| <= 3 cases.
 *   rtol 3e-5: covers the large-logit case with margin; a 1e-3 error fails;
 *   atol = 1e-7 * scale: at the target column p - 1 cancels, leaving an
 *              absolute error of ~1 ulp(1) * scale = 6e-8 * scale (small p
 *              elsewhere stay relative-accurate). `scale` is the natural
 *              unit of the gradient (|dlogits| <= scale), so this is 1e-7
 *              of the largest possible entry whatever the reduction, N or
 *              dloss (measured: <= 1.8e-7 absolute for scale = 1/15).
 */
static const double CE_LOSS_RTOL = 1e-5, CE_LOSS_ATOL = 1e-6;
static const double CE_GRAD_RTOL = 3e-5, CE_GRAD_ATOL_REL = 1e-7;

static const char *const ce_cases[] = {
    "ce_v1_mean",          "ce_v3_mean_ign100",  "ce_v3_sum_ign100",  "ce_v17_mean_ign5",
    "ce_v17_sum_ign5",     "ce_v257_mean_ign100", "ce_v257_sum_ignm1", "ce_v257_mean_noign",
    "ce_v17_mean_n1",      "ce_v17_mean_large",
};

START_TEST(test_oracle_cross_entropy)
{
    const char *name = ce_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tbt_reft logits = tbt_ref_get(ref, "logits"), dl_ref = tbt_ref_get(ref, "dlogits");
    size_t n_targets;
    const int32_t *targets = tbt_ref_i32(ref, "targets", &n_targets);
    const float want_loss = tbt_ref_scalar(ref, "loss");
    const float dloss = tbt_ref_scalar(ref, "dloss");
    const int32_t red = tbt_ref_i32_scalar(ref, "reduction");
    ck_assert(red == 0 || red == 1);
    tb_cross_entropy_config cfg = tb_cross_entropy_default_config();
    cfg.ignore_index = tbt_ref_i32_scalar(ref, "ignore_index");
    cfg.reduction = red == 0 ? TB_REDUCTION_MEAN : TB_REDUCTION_SUM;

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float *lb = tbt_ref_dup(&logits), *dlb = tbt_nan_buffer(dl_ref.n);
    tb_tensor lt = tbt_view_like(lb, &logits), dlt = tbt_view_like(dlb, &dl_ref);
    size_t cache_bytes;
    CHECK_OK(ctx, tb_cross_entropy_cache_size(tb_tensor_rows(&lt), &cache_bytes));
    void *cache = tbt_alloc(cache_bytes);
    float loss = NAN;
    CHECK_OK(ctx, tb_cross_entropy_forward(&ctx, &cfg, &lt, targets, n_targets, &loss, cache,
                                           cache_bytes));
    CHECK_OK(ctx, tb_cross_entropy_backward(&ctx, &cfg, &lt, targets, n_targets, dloss, cache,
                                            cache_bytes, &dlt));

    size_t counted = 0;
    for (size_t i = 0; i < n_targets; i++)
        counted += targets[i] != cfg.ignore_index;
    ck_assert_uint_gt(counted, 0);
    const double scale = fabs((double)dloss) / (red == 0 ? (double)counted : 1.0);

    char blk[96], lbl[128];
    snprintf(blk, sizeof blk, "ce[N=%zu,V=%zu,%s,ign=%ld]", tb_tensor_rows(&lt),
             tb_tensor_cols(&lt), red == 0 ? "mean" : "sum", (long)cfg.ignore_index);
    if (tb_tensor_cols(&lt) == 1) {
        /* One class: PyTorch's loss and gradient are exactly 0. */
        assert_exact_zero(tbt_label(lbl, sizeof lbl, blk, "loss"), &loss, &want_loss, 1);
        assert_exact_zero(tbt_label(lbl, sizeof lbl, blk, "dlogits"), dlb, dl_ref.data, dl_ref.n);
    } else {
        tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "loss"), &loss, &want_loss, 1, CE_LOSS_RTOL,
                         CE_LOSS_ATOL);
        tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dlogits"), dlb, dl_ref.data, dl_ref.n,
                         CE_GRAD_RTOL, CE_GRAD_ATOL_REL * scale);
    }
    /* Ignored rows: exactly zero gradient, as in PyTorch. */
    const size_t v = tb_tensor_cols(&lt);
    for (size_t r = 0; r < n_targets; r++)
        if (targets[r] == cfg.ignore_index)
            for (size_t j = 0; j < v; j++)
                ck_assert_msg(dlb[r * v + j] == 0.0f && dl_ref.data[r * v + j] == 0.0f,
                              "%s: ignored row %zu has dlogits[%zu] = %g", blk, r, j,
                              (double)dlb[r * v + j]);
    free(cache);
    free(lb);
    free(dlb);
    tbt_ref_free(ref);
}
END_TEST

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

/* ---- Coverage: every case the generator wrote is tested here ----------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    const char *const *lists[] = {linear_cases, embedding_cases, gelu_cases, relu_cases,
                                  softmax_cases, ce_cases, residual_cases};
    const size_t lens[] = {ARRAY_LEN(linear_cases),  ARRAY_LEN(embedding_cases),
                           ARRAY_LEN(gelu_cases),    ARRAY_LEN(relu_cases),
                           ARRAY_LEN(softmax_cases), ARRAY_LEN(ce_cases),
                           ARRAY_LEN(residual_cases)};
    for (size_t l = 0; l < ARRAY_LEN(lists); l++)
        for (size_t k = 0; k < lens[l]; k++)
            if (strcmp(lists[l][k], name) == 0)
                return 1;
    return 0;
}

START_TEST(test_oracle_all_cases_tested)
{
    ck_assert_uint_gt(tbt_check_manifest("cases.txt", "test_oracle.c", case_is_tested, NULL), 0);
}
END_TEST

Suite *suite_oracle(void)
{
    Suite *s = suite_create("oracle");
    TCase *tc = tcase_create("pytorch");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_oracle_linear, 0, (int)ARRAY_LEN(linear_cases));
    tcase_add_loop_test(tc, test_oracle_embedding, 0, (int)ARRAY_LEN(embedding_cases));
    tcase_add_loop_test(tc, test_oracle_gelu, 0, (int)ARRAY_LEN(gelu_cases));
    tcase_add_loop_test(tc, test_oracle_relu, 0, (int)ARRAY_LEN(relu_cases));
    tcase_add_loop_test(tc, test_oracle_softmax, 0, (int)ARRAY_LEN(softmax_cases));
    tcase_add_loop_test(tc, test_oracle_cross_entropy, 0, (int)ARRAY_LEN(ce_cases));
    tcase_add_test(tc, test_oracle_residual_gelu);
    tcase_add_test(tc, test_oracle_residual_linear);
    tcase_add_test(tc, test_oracle_all_cases_tested);
    suite_add_tcase(s, tc);
    TCase *td = tcase_create("dropout_semantics");
    tcase_set_timeout(td, 60);
    tcase_add_test(td, test_oracle_dropout);
    suite_add_tcase(s, td);
    return s;
}
