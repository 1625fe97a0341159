/*
 * PyTorch oracle tests of the normalization blocks: LayerNorm
 * (torch.nn.LayerNorm), RMSNorm (torch.nn.RMSNorm) and BatchNorm
 * (torch.nn.BatchNorm1d on the channel axis), run on the exact inputs,
 * parameters, running statistics and upstream gradients that
 * test/oracle/gen_reference.py fed to PyTorch (build_norm_cases()).
 *
 * Every case carries two references: the float32 PyTorch results (autograd)
 * and the same module run in float64 on the same float32 numbers, rounded
 * to float32 ("<name>_f64"). The library is compared with both:
 *   - with float32 PyTorch, except where the generator marks float32
 *     PyTorch itself as inaccurate (f32_accurate = 0: rows with mean 1e4
 *     and std 0.1, where PyTorch centres with a float32 mean whose rounding
 *     is 1% of the std; and rows of a constant -1234.5678, where PyTorch's
 *     backward recomputes a mean 1 ulp off and gets a gradient wrong by
 *     0.04 of ~300);
 *   - with float64 PyTorch always: the blocks accumulate their statistics
 *     in double, so they must be accurate to a few float32 ulp everywhere,
 *     including those hard cases.
 *
 * Shapes and options are read from the files; a missing file fails
 * (tbt_ref_load). Outputs are pre-filled with NaN so an element the library
 * forgets to write fails; parameter gradients are zeroed first (backward
 * adds into them).
 *
 * ---- Tolerances -----------------------------------------------------------
 * Element i passes when |got - want| <= atol + rtol * |want|, with atol
 * proportional to the natural unit of the compared quantity, computed in
 * double from the inputs (norm outputs are cancellations of O(unit) terms,
 * so their absolute error is a few ulp of the unit, not of themselves):
 *   y:               max |y_f64|  (|x_hat * w| + |b|, x_hat = O(1));
 *   dx (LN, RMS):    max over rows of rstd * max |dy * w|: dx is
 *                    rstd * (g - mean(g) - x_hat * mean(g x_hat)), g = dy w,
 *                    whose terms are of that size and cancel;
 *   dx (BN):         max_c |w_c| rstd_c * max |dy| (the same for channels);
 *   dweight:         max_c sum over positions |dy * x_hat| (a sum of those
 *                    terms; float summation errors scale with it);
 *   dbias:           max_c sum over positions |dy|;
 *   running stats:   max |reference| (momentum blends of O(1) values).
 * ulp below means 2^-24 = 6e-8 relative.
 *
 * vs float32 PyTorch: rtol 1e-5, atol 2e-6 * unit.
 *   Measured: PyTorch's own float32 results differ from float64 by up to
 *   6.3e-7 * unit beyond rtol 1e-5 (BatchNorm y: PyTorch sums the channel
 *   mean in float32, and mean/std reaches ~5 here) and by < 2e-7 * unit
 *   everywhere else. The library's own error (next paragraph) adds at most
 *   1e-6 * unit, so 2e-6 * unit (~34 ulp of the unit) covers both with
 *   margin; rtol 1e-5 (~170 ulp) lets significant elements differ by
 *   PyTorch's summation order. A 1e-3 relative error on any element above
 *   2e-3 * unit fails by 5x or more.
 * vs float64 PyTorch: rtol 2e-6, atol 1e-6 * unit.
 *   With double statistics the float32 work is a handful of roundings per
 *   element (centre, scale, weight, bias: <= ~4 ulp of the unit) plus, for
 *   dweight/dbias, a sum over at most 96 positions that the library may
 *   accumulate in float (typical error ~0.3 ulp * sqrt(96) ~ 3 ulp of the
 *   sum of magnitudes). An emulation of such an implementation (double
 *   statistics, float32 elementwise work) stays below 7e-8 * unit beyond
 *   rtol 2e-6 on every LayerNorm case; 1e-6 * unit (16 ulp) leaves >= 4x
 *   margin. The same emulation with the mean rounded to float32 before
 *   centring misses the mean-1e4 case by 1.4e-3 * unit: large offsets are
 *   what this comparison is for, and it detects that mistake by 1000x.
 * Results that are exactly 0 in exact arithmetic (LayerNorm with C = 1:
 * dx and dweight, since x - mean = 0) cannot be compared relatively; they
 * must be 0 to 1e-6 of their unit, and y must equal the bias exactly
 * (x - mean is computed exactly, so y = 0 * w + b).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const double RTOL32 = 1e-5, ATOL32_REL = 2e-6;
static const double RTOL64 = 2e-6, ATOL64_REL = 1e-6;

/* ---- helpers ------------------------------------------------------------ */

/* A mask of a reference file (i32 0/1) as the library's bytes. */
static uint8_t *get_mask(const tbt_ref *ref, const char *name, size_t n)
{
    size_t m;
    const int32_t *v = tbt_ref_i32(ref, name, &m);
    ck_assert_uint_eq(m, n);
    uint8_t *out = tbt_alloc(n);
    for (size_t i = 0; i < n; i++) {
        ck_assert(v[i] == 0 || v[i] == 1);
        out[i] = (uint8_t)v[i];
    }
    return out;
}

static double max_abs(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m)
            m = fabs((double)x[i]);
    return m;
}

/* Compare `got` with the reference `name` (float32 PyTorch, if f32_ok) and
 * with `name`_f64 (float64 PyTorch), atol relative to `unit`. */
static void check_vs(const tbt_ref *ref, const char *blk, const char *name, const float *got,
                     size_t n, double unit, int f32_ok)
{
    char lbl[192], nm64[64];
    ck_assert_msg(unit > 0 && isfinite(unit), "%s.%s: unit %g", blk, name, unit);
    if (f32_ok) {
        tbt_reft w = tbt_ref_get(ref, name);
        ck_assert_uint_eq(w.n, n);
        snprintf(lbl, sizeof lbl, "%s.%s", blk, name);
        tbt_assert_close(lbl, got, w.data, n, RTOL32, ATOL32_REL * unit);
    }
    snprintf(nm64, sizeof nm64, "%s_f64", name);
    tbt_reft w64 = tbt_ref_get(ref, nm64);
    ck_assert_uint_eq(w64.n, n);
    snprintf(lbl, sizeof lbl, "%s.%s_vs_f64", blk, name);
    tbt_assert_close(lbl, got, w64.data, n, RTOL64, ATOL64_REL * unit);
}

/* For results that are exactly 0 in exact arithmetic: the float64
 * reference and the library must both be 0 to ATOL64_REL of the unit. */
static void check_zero_at_scale(const tbt_ref *ref, const char *blk, const char *name,
                                const float *got, size_t n, double unit)
{
    char lbl[192], nm64[64];
    snprintf(nm64, sizeof nm64, "%s_f64", name);
    tbt_reft w64 = tbt_ref_get(ref, nm64);
    ck_assert_uint_eq(w64.n, n);
    const double atol = ATOL64_REL * unit;
    ck_assert_msg(unit > 0 && isfinite(unit), "%s.%s: unit %g", blk, name, unit);
    ck_assert_msg(max_abs(w64.data, n) <= atol, "%s.%s: float64 reference is not ~0 (%g)", blk,
                  name, max_abs(w64.data, n));
    const double m = max_abs(got, n);
    snprintf(lbl, sizeof lbl, "%s.%s", blk, name);
    printf("  compare %-40s n=%-7zu zero at scale: max|got|=%.3e (atol=%.0e)%s\n", lbl, n, m,
           atol, m <= atol ? "" : "  MISMATCH");
    fflush(stdout);
    ck_assert_msg(m <= atol, "%s: max |got| = %g, expected 0 (within %g)", lbl, m, atol);
}

/* Natural units of a row-wise norm (LayerNorm: centred, RMSNorm: not),
 * from the float inputs, in double. w may be NULL (1). */
typedef struct units {
    double dx, dw, db;
} units;

static units row_units(const float *x, const float *dy, const float *w, size_t rows, size_t c,
                       float eps, int centred)
{
    units u = {0, 0, 0};
    double *sdw = tbt_alloc(c * sizeof(double)), *sdb = tbt_alloc(c * sizeof(double));
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * c, *dyr = dy + r * c;
        double mean = 0.0, var = 0.0;
        if (centred) {
            for (size_t j = 0; j < c; j++)
                mean += xr[j];
            mean /= (double)c;
        }
        for (size_t j = 0; j < c; j++)
            var += ((double)xr[j] - mean) * ((double)xr[j] - mean);
        var /= (double)c;
        const double rstd = 1.0 / sqrt(var + (double)eps);
        for (size_t j = 0; j < c; j++) {
            const double g = fabs((double)dyr[j] * (w ? (double)w[j] : 1.0));
            if (rstd * g > u.dx)
                u.dx = rstd * g;
            sdw[j] += fabs((double)dyr[j] * ((double)xr[j] - mean) * rstd);
            sdb[j] += fabs((double)dyr[j]);
        }
    }
    for (size_t j = 0; j < c; j++) {
        if (sdw[j] > u.dw)
            u.dw = sdw[j];
        if (sdb[j] > u.db)
            u.db = sdb[j];
    }
    free(sdw);
    free(sdb);
    return u;
}

/* ---- LayerNorm ------------------------------------------------------------ */

static const char *const layernorm_cases[] = {
    "layernorm_1x1_affine_eps1e-5",    "layernorm_1x1_affine_eps1e-3",
    "layernorm_1x1_nobias_eps1e-5",    "layernorm_1x1_plain_eps1e-3",
    "layernorm_3x17_affine_eps1e-5",   "layernorm_3x17_affine_eps1e-3",
    "layernorm_3x17_nobias_eps1e-5",   "layernorm_3x17_plain_eps1e-3",
    "layernorm_17x33_affine_eps1e-5",  "layernorm_17x33_affine_eps1e-3",
    "layernorm_17x33_nobias_eps1e-5",  "layernorm_17x33_plain_eps1e-3",
    "layernorm_2x3x50_affine_eps1e-5", "layernorm_2x3x50_affine_eps1e-3",
    "layernorm_2x3x50_nobias_eps1e-5", "layernorm_2x3x50_plain_eps1e-3",
    "layernorm_4x768_affine_eps1e-5",  "layernorm_4x768_affine_eps1e-3",
    "layernorm_4x768_nobias_eps1e-5",  "layernorm_4x768_plain_eps1e-3",
    "layernorm_2x8192_affine_eps1e-5", "layernorm_2x8192_affine_eps1e-3",
    "layernorm_2x8192_nobias_eps1e-5", "layernorm_2x8192_plain_eps1e-3",
    "layernorm_offset1e4_7x96",        "layernorm_constrows_6x40",
    "layernorm_constrows_6x40_plain",
};

START_TEST(test_norm_oracle_layernorm)
{
    const char *name = layernorm_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const float eps = tbt_ref_scalar(ref, "eps");
    const int affine = tbt_ref_i32_scalar(ref, "affine");
    const int has_bias = tbt_ref_i32_scalar(ref, "has_bias");
    const int f32_ok = tbt_ref_i32_scalar(ref, "f32_accurate");
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy"), y_ref = tbt_ref_get(ref, "y");
    const size_t c = x.shape[x.ndim - 1], rows = x.n / c;
    ck_assert_uint_eq(dy.n, x.n);
    ck_assert_uint_eq(y_ref.n, x.n);
    const unsigned flags = (affine ? TB_NORM_SCALE : 0u) | (has_bias ? TB_NORM_SHIFT : 0u);

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, c, eps, flags));
    const float *w = NULL, *b = NULL;
    if (affine) {
        tbt_reft wr = tbt_ref_get(ref, "weight");
        ck_assert_uint_eq(wr.n, c);
        ck_assert_ptr_nonnull(ln.weight.value);
        memcpy(ln.weight.value, wr.data, c * sizeof(float));
        memset(ln.weight.grad, 0, c * sizeof(float));
        w = wr.data;
    }
    if (has_bias) {
        tbt_reft br = tbt_ref_get(ref, "bias");
        ck_assert_uint_eq(br.n, c);
        ck_assert_ptr_nonnull(ln.bias.value);
        memcpy(ln.bias.value, br.data, c * sizeof(float));
        memset(ln.bias.grad, 0, c * sizeof(float));
        b = br.data;
    }
    size_t cache_bytes;
    CHECK_OK(ctx, tb_layernorm_cache_size(rows, &cache_bytes));
    void *cache = tbt_alloc(cache_bytes);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(x.n), *dxb = tbt_nan_buffer(x.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &x), dxt = tbt_view_like(dxb, &x);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, cache_bytes));
    CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, cache_bytes, &dxt));

    const units u = row_units(x.data, dy.data, w, rows, c, eps, 1);
    const double u_y = max_abs(tbt_ref_get(ref, "y_f64").data, x.n);
    char blk[128], sx[32];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "layernorm[%s%s%s,eps=%.0e]", sx,
             strstr(name, "offset") ? ",mean1e4"
             : strstr(name, "constrows") ? ",constrows" : "",
             affine ? (has_bias ? "" : ",nobias") : ",noaffine", (double)eps);
    /* Constant rows (every row when C = 1): x - mean = 0 exactly, so
     * y = 0 * w + b is the bias (0 without) exactly. */
    size_t n_const = 0, bad = 0, first_bad = 0;
    for (size_t r = 0; r < rows; r++) {
        int constant = 1;
        for (size_t j = 1; j < c; j++)
            constant &= x.data[r * c + j] == x.data[r * c];
        if (!constant)
            continue;
        n_const++;
        for (size_t j = 0; j < c; j++)
            if (yb[r * c + j] != (b ? b[j] : 0.0f) && bad++ == 0)
                first_bad = r * c + j;
    }
    if (n_const) {
        char lbl[192];
        snprintf(lbl, sizeof lbl, "%s.y_const_rows", blk);
        printf("  compare %-40s rows=%-4zu exact: y == bias%s\n", lbl, n_const,
               bad ? "  MISMATCH" : "");
        fflush(stdout);
        ck_assert_msg(bad == 0, "%s: %zu elements of constant rows differ from the bias; "
                      "y[%zu] = %.9g, bias %.9g", blk, bad, first_bad, (double)yb[first_bad],
                      (double)(b ? b[first_bad % c] : 0.0f));
    }
    if (c == 1) {
        /* dx = rstd * (g - mean(g)) = 0 and dweight = sum dy * 0 = 0. */
        check_zero_at_scale(ref, blk, "dx", dxb, x.n, u.dx);
        if (affine)
            check_zero_at_scale(ref, blk, "dweight", ln.weight.grad, c, u.db);
    } else {
        check_vs(ref, blk, "y", yb, x.n, u_y, f32_ok);
        check_vs(ref, blk, "dx", dxb, x.n, u.dx, f32_ok);
        if (affine)
            check_vs(ref, blk, "dweight", ln.weight.grad, c, u.dw, f32_ok);
    }
    if (has_bias)
        check_vs(ref, blk, "dbias", ln.bias.grad, c, u.db, f32_ok);
    free(cache);
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    tb_layernorm_free(&ln);
    tbt_ref_free(ref);
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

    const units u = row_units(x.data, dy.data, w, rows, c, eps, 0);
    const double u_y = max_abs(tbt_ref_get(ref, "y_f64").data, x.n);
    char blk[128], sx[32];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "rmsnorm[%s%s%s,eps=%.0e]", sx,
             strstr(name, "special") ? ",special" : "", affine ? "" : ",noweight", (double)eps);
    check_vs(ref, blk, "y", yb, x.n, u_y, 1);
    check_vs(ref, blk, "dx", dxb, x.n, u.dx, 1);
    if (affine)
        check_vs(ref, blk, "dweight", rn.weight.grad, c, u.dw, 1);
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
    uint8_t *valid = tbt_ref_has(ref, "valid") ? get_mask(ref, "valid", n) : NULL;

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
    const double u_y = max_abs(tbt_ref_get(ref, "y_f64").data, x.n);
    char blk[160], sx[32];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "batchnorm[%s,%s%s%s%s,eps=%.0e]", sx, tag,
             valid ? ",mask" : "", affine ? (has_bias ? "" : ",nobias") : ",noaffine",
             training ? (momentum > 0.2f ? ",m=0.3" : ",m=0.1") : "", (double)eps);
    check_vs(ref, blk, "y", yb, x.n, u_y, 1);
    check_vs(ref, blk, "dx", dxb, x.n, u.dx, 1);
    if (affine)
        check_vs(ref, blk, "dweight", bn.weight.grad, c, u.dw, 1);
    if (has_bias)
        check_vs(ref, blk, "dbias", bn.bias.grad, c, u.db, 1);
    if (valid)
        for (size_t r = 0; r < n; r++)
            if (!valid[r])
                for (size_t j = 0; j < c; j++)
                    ck_assert_msg(yb[r * c + j] == 0.0f && dxb[r * c + j] == 0.0f,
                                  "%s: padded row %zu has y=%g dx=%g", blk, r,
                                  (double)yb[r * c + j], (double)dxb[r * c + j]);
    if (training) {
        tbt_reft rm_ref = tbt_ref_get(ref, "running_mean1_f64"), rv_ref = tbt_ref_get(ref, "running_var1_f64");
        check_vs(ref, blk, "running_mean1", rm1, c, max_abs(rm_ref.data, c), 1);
        check_vs(ref, blk, "running_var1", rv1, c, max_abs(rv_ref.data, c), 1);
        /* Two more training forwards (no backward follows: cache NULL). */
        for (int k = 2; k <= 3; k++) {
            char nx[16], nv[16];
            snprintf(nx, sizeof nx, "x%d", k);
            snprintf(nv, sizeof nv, "valid%d", k);
            tbt_reft xk = tbt_ref_get(ref, nx);
            ck_assert_uint_eq(xk.n, x.n);
            uint8_t *vk = valid ? get_mask(ref, nv, n) : NULL;
            float *xkb = tbt_ref_dup(&xk);
            tb_tensor xkt = tbt_view_like(xkb, &x);
            CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, mode, &xkt, vk, &yt, NULL, 0));
            free(xkb);
            free(vk);
        }
        rm_ref = tbt_ref_get(ref, "running_mean3_f64");
        rv_ref = tbt_ref_get(ref, "running_var3_f64");
        check_vs(ref, blk, "running_mean3", bn.running_mean.value, c, max_abs(rm_ref.data, c), 1);
        check_vs(ref, blk, "running_var3", bn.running_var.value, c, max_abs(rv_ref.data, c), 1);
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

/* ---- Coverage: every norm case the generator wrote is tested here ------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    const char *const *lists[] = {layernorm_cases, rmsnorm_cases, batchnorm_cases};
    const size_t lens[] = {ARRAY_LEN(layernorm_cases), ARRAY_LEN(rmsnorm_cases),
                           ARRAY_LEN(batchnorm_cases)};
    for (size_t l = 0; l < ARRAY_LEN(lists); l++)
        for (size_t k = 0; k < lens[l]; k++)
            if (strcmp(lists[l][k], name) == 0)
                return 1;
    return 0;
}

START_TEST(test_norm_oracle_all_cases_tested)
{
    const size_t n = tbt_check_manifest("norm_cases.txt", "test_norm_oracle.c", case_is_tested,
                                        NULL);
    ck_assert_uint_eq(n, ARRAY_LEN(layernorm_cases) + ARRAY_LEN(rmsnorm_cases) +
                             ARRAY_LEN(batchnorm_cases));
}
END_TEST

Suite *suite_norm_oracle(void)
{
    Suite *s = suite_create("norm_oracle");
    TCase *tc = tcase_create("pytorch");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_norm_oracle_layernorm, 0, (int)ARRAY_LEN(layernorm_cases));
    tcase_add_loop_test(tc, test_norm_oracle_rmsnorm, 0, (int)ARRAY_LEN(rmsnorm_cases));
    tcase_add_loop_test(tc, test_norm_oracle_batchnorm, 0, (int)ARRAY_LEN(batchnorm_cases));
    tcase_add_test(tc, test_norm_oracle_all_cases_tested);
    suite_add_tcase(s, tc);
    return s;
}
