/*
 * tb_lora_combine(): PEFT's add_weighted_adapter ("linear", "cat", "svd")
 * against the real PEFT (test/oracle/gen_lora_combine.py), the dense SVD
 * helper behind "svd" (src/core/lowrank_svd.c) on matrices of known
 * singular values, rank-deficient and cancelling sources, the refusals
 * (nothing changed on error, also when an allocation fails) and thread-count
 * independence. Tolerance rule: testutil.h; the tolerances are derived
 * where they are defined, below.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lowrank_svd.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ------------------------------------------------------------------------- */

static double max_abs_d(const double *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* A source's scaling in double (PEFT's Python float). */
static double src_scaling(const tb_lora_adapter *ad)
{
    const double r = (double)ad->config.rank;
    return ad->config.use_rslora ? ad->config.alpha / sqrt(r) : ad->config.alpha / r;
}

/* P (out x in) = B A of one adapter, in double, without its scaling. */
static double *adapter_product(const tb_lora *lora, const tb_lora_adapter *ad)
{
    const size_t in = lora->in_features, out = lora->out_features, r = ad->config.rank;
    double *p = tbt_alloc(in * out * sizeof(double));
    for (size_t o = 0; o < out; o++)
        for (size_t c = 0; c < in; c++) {
            double acc = 0.0;
            for (size_t j = 0; j < r; j++)
                acc += (double)ad->B.value[o * r + j] * ad->A.value[j * in + c];
            p[o * in + c] = acc;
        }
    return p;
}

/* sum_i w_i s_i B_i A_i (out x in) in double. */
static double *combined_delta(const tb_lora *lora, const char *const *names, const float *w,
                              size_t n)
{
    const size_t numel = lora->in_features * lora->out_features;
    double *d = tbt_alloc(numel * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        const tb_lora_adapter *ad = &lora->adapter[tb_lora_find(lora, names[i])];
        double *p = adapter_product(lora, ad);
        const double f = (double)w[i] * src_scaling(ad);
        for (size_t e = 0; e < numel; e++)
            d[e] += f * p[e];
        free(p);
    }
    return d;
}

/* Largest singular value of a (rows x cols) by power iteration on a^T a (double). */
static double spectral_norm(const double *a, size_t rows, size_t cols)
{
    double *v = tbt_alloc(cols * sizeof(double)), *u = tbt_alloc(rows * sizeof(double));
    for (size_t c = 0; c < cols; c++)
        v[c] = 1.0 + 0.01 * (double)c;
    double sigma = 0.0;
    for (int it = 0; it < 500; it++) {
        for (size_t r = 0; r < rows; r++) {
            double s = 0.0;
            for (size_t c = 0; c < cols; c++)
                s += a[r * cols + c] * v[c];
            u[r] = s;
        }
        double nv = 0.0;
        for (size_t c = 0; c < cols; c++) {
            double s = 0.0;
            for (size_t r = 0; r < rows; r++)
                s += a[r * cols + c] * u[r];
            v[c] = s;
            nv += s * s;
        }
        nv = sqrt(nv);
        if (nv == 0.0)
            break;
        for (size_t c = 0; c < cols; c++)
            v[c] /= nv;
        sigma = sqrt(nv);
    }
    free(v), free(u);
    return sigma;
}

/* |got - want| <= atol + rtol |want| elementwise (double reference), with
 * the degenerate-reference rule of testutil.h. */
static void assert_close_dd(const char *label, const double *got, const double *want, size_t n,
                            double rtol, double atol)
{
    double worst = 0.0, max_ref = 0.0;
    size_t at = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        const double err = fabs(got[i] - want[i]), lim = atol + rtol * fabs(want[i]);
        max_ref = fabs(want[i]) > max_ref ? fabs(want[i]) : max_ref;
        if (err > worst)
            worst = err, at = i;
        bad += !(err <= lim);
    }
    printf("%s: max_abs=%.3g (%.3g of atol) n=%zu\n", label, worst, worst / atol, n);
    ck_assert_msg(max_ref > 10.0 * atol, "%s: reference too small (max %.3g, atol %.3g)", label,
                  max_ref, atol);
    ck_assert_msg(bad == 0, "%s: %zu of %zu elements off; worst [%zu] got %.9g want %.9g", label,
                  bad, n, at, got[at], want[at]);
}

/* A layer on an nn.Linear-style base with random sources s0..s(n-1). */
typedef struct fixture {
    tb_ctx ctx;
    tb_linear lin;
    tb_lora lora;
} fixture;

static void fixture_init(fixture *f, size_t in, size_t out, tb_linear_layout layout, int threads,
                         uint64_t seed)
{
    tbt_ctx_init(&f->ctx, threads);
    tb_rng rng;
    tb_rng_init(&rng, seed);
    CHECK_OK(f->ctx, tb_linear_init_layout(&f->ctx, &f->lin, in, out, 1, layout, &rng));
    CHECK_OK(f->ctx, tb_lora_init(&f->ctx, &f->lora, &f->lin));
}

static void fixture_add(fixture *f, const char *name, size_t rank, float alpha, int rslora,
                        tb_lora_init_kind init, uint64_t seed)
{
    tb_lora_config c = tb_lora_config_default(rank);
    c.alpha = alpha;
    c.use_rslora = rslora;
    c.init = init;
    tb_rng rng;
    tb_rng_init(&rng, seed);
    CHECK_OK(f->ctx, tb_lora_add(&f->ctx, &f->lora, name, &c, &rng));
}

static void fixture_free(fixture *f)
{
    tb_lora_free(&f->lora);
    tb_linear_free(&f->lin);
}

static const tb_lora_adapter *adapter_named(const tb_lora *lora, const char *name)
{
    const int at = tb_lora_find(lora, name);
    ck_assert_msg(at >= 0, "no adapter '%s'", name);
    return &lora->adapter[at];
}

/* ---- PEFT oracle -----------------------------------------------------------------------
 *
 * Tolerances (element i passes when |got - want| <= atol + rtol |want|;
 * ulp = 2^-24 ~ 6e-8 relative):
 *
 * LINEAR, A and B: each element is sum_i c_i X_i[e] over n <= 3 sources,
 *   c_i = (sign) sqrt|w_i s_i|. PEFT rounds c_i to float32 and forms the
 *   sum in float32 (<= n + 1 roundings of at most the sum of the terms'
 *   magnitudes); the library rounds once from double. The difference is
 *   at most (n + 2) ulp of U = max_e sum_i |c_i X_i[e]|, computed here from
 *   the sources: atol = 1e-6 U (16 ulp), rtol 1e-6. A wrong coefficient
 *   (alpha / r for an rsLoRA source: a factor r^(1/4) = 1.3 on c_i; the
 *   sign on B as well as A; sqrt dropped) moves elements by >= 10% of U.
 * CAT, A: (w_i s_i) A_i, two float32 roundings in PEFT, one here:
 *   <= 1.5 ulp of the value; rtol 1e-6, atol 1e-7 U (a zero stays 0).
 *   CAT, B: the sources' B columns copied: compared bitwise.
 * SVD: only the product P = B A is unique. Reference prod_f64, the best
 *   rank-k approximation computed in float64 from the same float32 source
 *   factors, rounded to float32. The library's error: its double
 *   computation (~1e-15 sigma_1), then the rounding of B = U S and A = V^T
 *   to float: |dP_oc| <= 2 ulp sum_j sigma_j |u_oj| |v_cj| <= 2 ulp sigma_1
 *   (Cauchy-Schwarz over the orthonormal rows), plus 0.5 ulp of |P| for the
 *   reference's own rounding. atol = 3e-7 sigma_1 (5 ulp of sigma_1), rtol
 *   1e-6. Against PEFT's own float32 SVD (prod), which differs from the
 *   float64 one by up to 8e-7 max|P| (measured; LAPACK's float backward
 *   error is a small multiple of eps sigma_1): atol 3e-6 sigma_1, rtol 1e-5.
 *   Truncating at the wrong k, or dropping a source's w s, moves P by at
 *   least sigma_{k+1} or that source's share, >= 1e-2 sigma_1 in every case.
 *   The norms of B's columns are the singular values: compared with the
 *   float64 sigma, atol 3e-7 sigma_1, rtol 1e-6.
 * y (forward with "comb" only): y = x W^T + b + s x A^T B^T over in <= 50,
 *   float32 sums in both (as test_linear.c's LIN_RTOL 2e-5: a few ulp of
 *   the terms' magnitude Y = max_o (|b_o| + sum_c |W_oc| + s sum_c |P_oc|)),
 *   plus what the factors' difference explains, |s x (P - P_peft)^T| <=
 *   s max_r sum_c |x_rc| max |P - P_peft| (the product already checked
 *   above; ~1e-7 for linear and cat, ~2e-6 for svd): atol = 2e-6 Y + twice
 *   that, rtol 2e-5. The new adapter's scaling is in s: the rsLoRA case
 *   (s = sqrt(k) = 2.45 instead of 1) fails by > 100x if it is wrong.
 */
#define LIN_RTOL_F 1e-6
#define LIN_ATOL_U 1e-6
#define CAT_RTOL 1e-6
#define CAT_ATOL_U 1e-7
#define SVD_RTOL 1e-6
#define SVD_ATOL_S1 3e-7
#define PEFT_SVD_RTOL 1e-5
#define PEFT_SVD_ATOL_S1 3e-6
#define Y_RTOL 2e-5
#define Y_ATOL_U 2e-6

static const char *const combine_cases[] = {
    "lora_combine_linear_lin_17x33",      "lora_combine_linear_conv_33x50",
    "lora_combine_single_svd_50x17",      "lora_combine_cat_lin_17x33",
    "lora_combine_cat_conv_50x17",        "lora_combine_svd_lin_33x50_k4",
    "lora_combine_svd_lin_33x50_k9",      "lora_combine_svd_lin_33x50_k12",
    "lora_combine_svd_lin_33x50_kdef",    "lora_combine_svd_conv_50x17_k3",
    "lora_combine_svd_conv_50x17_k9",     "lora_combine_svd_conv_50x17_k12",
    "lora_combine_svd_rslora_17x33_k6",   "lora_combine_svd_deficient_33x17_k5",
    "lora_combine_cat_deficient_33x17",
};

/* Worst error per case type, for the summary lines. */
START_TEST(test_oracle_lora_combine)
{
    const char *name = combine_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const int conv = tbt_ref_i32_scalar(ref, "layout");
    const int n_src = tbt_ref_i32_scalar(ref, "n_src");
    const tb_lora_combine_type type = (tb_lora_combine_type)tbt_ref_i32_scalar(ref, "combine");
    const size_t svd_rank = (size_t)tbt_ref_i32_scalar(ref, "svd_rank");
    tbt_reft w = tbt_ref_get(ref, "weight"), b = tbt_ref_get(ref, "bias"), x = tbt_ref_get(ref, "x");
    tbt_reft A_ref = tbt_ref_get(ref, "A"), B_ref = tbt_ref_get(ref, "B"), y_ref = tbt_ref_get(ref, "y");
    tbt_reft wts = tbt_ref_get(ref, "weights"), pf64 = tbt_ref_get(ref, "prod_f64");
    tbt_reft ppeft = tbt_ref_get(ref, "prod"), sig = tbt_ref_get(ref, "sigma");
    const size_t in = conv ? w.shape[0] : w.shape[1], out = conv ? w.shape[1] : w.shape[0];
    ck_assert_uint_eq((size_t)n_src, wts.n);

    fixture f;
    fixture_init(&f, in, out, conv ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN, 2, 7);
    memcpy(f.lin.weight.value, w.data, w.n * sizeof(float));
    memcpy(f.lin.bias.value, b.data, b.n * sizeof(float));
    char nm[3][16];
    const char *names[3];
    for (int k = 0; k < n_src; k++) {
        char key[32];
        snprintf(nm[k], sizeof nm[k], "s%d", k);
        names[k] = nm[k];
        snprintf(key, sizeof key, "A%d", k);
        tbt_reft Ak = tbt_ref_get(ref, key);
        snprintf(key, sizeof key, "B%d", k);
        tbt_reft Bk = tbt_ref_get(ref, key);
        snprintf(key, sizeof key, "alpha%d", k);
        const float alpha = tbt_ref_scalar(ref, key);
        snprintf(key, sizeof key, "rslora%d", k);
        fixture_add(&f, nm[k], Ak.shape[0], alpha, tbt_ref_i32_scalar(ref, key),
                    TB_LORA_INIT_RANDOM, 10 + (uint64_t)k);
        tb_lora_adapter *ad = &f.lora.adapter[k];
        ck_assert_uint_eq(ad->A.numel, Ak.n);
        ck_assert_uint_eq(ad->B.numel, Bk.n);
        memcpy(ad->A.value, Ak.data, Ak.n * sizeof(float));
        memcpy(ad->B.value, Bk.data, Bk.n * sizeof(float));
    }
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb", names, wts.data, (size_t)n_src, type,
                                    svd_rank));
    const tb_lora_adapter *cb = adapter_named(&f.lora, "comb");
    const size_t k = cb->config.rank;
    /* The same rank and factor shapes as PEFT; alpha = r; inactive. */
    ck_assert_uint_eq(cb->A.shape[0], A_ref.shape[0]);
    ck_assert_uint_eq(cb->A.shape[1], A_ref.shape[1]);
    ck_assert_uint_eq(cb->B.shape[0], B_ref.shape[0]);
    ck_assert_uint_eq(cb->B.shape[1], B_ref.shape[1]);
    ck_assert(cb->config.alpha == (float)k);
    ck_assert_int_eq(cb->config.use_rslora, f.lora.adapter[0].config.use_rslora);
    ck_assert_uint_eq(f.lora.n_active, 1);
    ck_assert_uint_eq(f.lora.active[0], 0);

    char lbl[160];
    const tb_lora_combine_type how = n_src == 1 ? TB_LORA_COMBINE_LINEAR : type;
    double *P = adapter_product(&f.lora, cb);
    double sigma1 = sig.data[0];
    if (how == TB_LORA_COMBINE_LINEAR || how == TB_LORA_COMBINE_CAT) {
        /* U: the terms' magnitude, from the sources (see above). */
        double ua = 0.0;
        const tb_lora_adapter *s0 = &f.lora.adapter[0];
        if (how == TB_LORA_COMBINE_LINEAR) {
            double ub = 0.0;
            for (size_t e = 0; e < s0->A.numel; e++) {
                double t = 0.0;
                for (int i = 0; i < n_src; i++)
                    t += sqrt(fabs(wts.data[i] * src_scaling(&f.lora.adapter[i]))) *
                         fabs(f.lora.adapter[i].A.value[e]);
                ua = t > ua ? t : ua;
            }
            for (size_t e = 0; e < s0->B.numel; e++) {
                double t = 0.0;
                for (int i = 0; i < n_src; i++)
                    t += sqrt(fabs(wts.data[i] * src_scaling(&f.lora.adapter[i]))) *
                         fabs(f.lora.adapter[i].B.value[e]);
                ub = t > ub ? t : ub;
            }
            snprintf(lbl, sizeof lbl, "%s.A", name);
            tbt_assert_close(lbl, cb->A.value, A_ref.data, A_ref.n, LIN_RTOL_F, LIN_ATOL_U * ua);
            snprintf(lbl, sizeof lbl, "%s.B", name);
            tbt_assert_close(lbl, cb->B.value, B_ref.data, B_ref.n, LIN_RTOL_F, LIN_ATOL_U * ub);
        } else {
            for (size_t e = 0; e < A_ref.n; e++)
                ua = fabs(A_ref.data[e]) > ua ? fabs(A_ref.data[e]) : ua;
            snprintf(lbl, sizeof lbl, "%s.A", name);
            tbt_assert_close(lbl, cb->A.value, A_ref.data, A_ref.n, CAT_RTOL, CAT_ATOL_U * ua);
            ck_assert_msg(memcmp(cb->B.value, B_ref.data, B_ref.n * sizeof(float)) == 0,
                          "%s: B is not the sources' B side by side", name);
        }
    } else {
        double *want = tbt_alloc(pf64.n * sizeof(double)), *peft = tbt_alloc(pf64.n * sizeof(double));
        for (size_t e = 0; e < pf64.n; e++)
            want[e] = pf64.data[e], peft[e] = ppeft.data[e];
        snprintf(lbl, sizeof lbl, "%s.BA vs float64 SVD", name);
        assert_close_dd(lbl, P, want, pf64.n, SVD_RTOL, SVD_ATOL_S1 * sigma1);
        snprintf(lbl, sizeof lbl, "%s.BA vs PEFT", name);
        assert_close_dd(lbl, P, peft, pf64.n, PEFT_SVD_RTOL, PEFT_SVD_ATOL_S1 * sigma1);
        /* ||B[:, j]|| = sigma_j for j < k (sigma past min(in, out) is 0). */
        for (size_t j = 0; j < k; j++) {
            double nrm = 0.0;
            for (size_t o = 0; o < out; o++)
                nrm += (double)cb->B.value[o * k + j] * cb->B.value[o * k + j];
            nrm = sqrt(nrm);
            const double want_s = j < sig.n ? sig.data[j] : 0.0;
            ck_assert_msg(fabs(nrm - want_s) <= SVD_ATOL_S1 * sigma1 + SVD_RTOL * want_s,
                          "%s: |B[:, %zu]| = %.9g, sigma = %.9g", name, j, nrm, want_s);
        }
        free(want), free(peft);
    }

    /* Forward with the combined adapter only. */
    const char *only[1] = {"comb"};
    CHECK_OK(f.ctx, tb_lora_set_active(&f.ctx, &f.lora, only, 1));
    float *xb = tbt_ref_dup(&x), *yb = tbt_nan_buffer(y_ref.n);
    tb_tensor xt = tbt_view_like(xb, &x), yt = tbt_view_like(yb, &y_ref);
    CHECK_OK(f.ctx, tb_lora_forward(&f.ctx, &f.lora, TB_MODE_INFERENCE, NULL, &xt, &yt, NULL, 0));
    double uy = 0.0;
    const double s_new = cb->scaling;
    for (size_t o = 0; o < out; o++) {
        double t = fabs(b.data[o]);
        for (size_t c = 0; c < in; c++)
            t += fabs(conv ? w.data[c * out + o] : w.data[o * in + c]) + s_new * fabs(P[o * in + c]);
        uy = t > uy ? t : uy;
    }
    /* The part of y's difference PEFT's different factors explain:
     * s max_r sum_c |x_rc| max |P - P_peft|, counted twice. */
    double xsum = 0.0, dp = 0.0;
    for (size_t r = 0; r < x.shape[0]; r++) {
        double t = 0.0;
        for (size_t c = 0; c < in; c++)
            t += fabs(x.data[r * in + c]);
        xsum = t > xsum ? t : xsum;
    }
    for (size_t e = 0; e < ppeft.n; e++)
        dp = fabs(P[e] - ppeft.data[e]) > dp ? fabs(P[e] - ppeft.data[e]) : dp;
    const double y_atol = Y_ATOL_U * uy + 2.0 * s_new * xsum * dp;
    snprintf(lbl, sizeof lbl, "%s.y", name);
    tbt_assert_close(lbl, yb, y_ref.data, y_ref.n, Y_RTOL, y_atol);
    free(xb), free(yb), free(P);
    fixture_free(&f);
    tbt_ref_free(ref);
}
END_TEST

/* ---- the SVD helper on matrices of known singular values ------------------------------ */

/* q (rows x cols, column j at q + j * rows): orthonormal columns from a
 * private stream (Gram-Schmidt twice in double). */
static void orthonormal_columns(double *q, size_t rows, size_t cols, uint64_t seed)
{
    float *f = tbt_alloc(rows * cols * sizeof(float));
    tbt_fill_uniform(f, rows * cols, -1, 1, seed);
    for (size_t e = 0; e < rows * cols; e++)
        q[e] = f[e];
    free(f);
    for (size_t j = 0; j < cols; j++) {
        double *v = q + j * rows;
        for (int pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < j; i++) {
                double h = 0.0;
                for (size_t e = 0; e < rows; e++)
                    h += q[i * rows + e] * v[e];
                for (size_t e = 0; e < rows; e++)
                    v[e] -= h * q[i * rows + e];
            }
        double nrm = 0.0;
        for (size_t e = 0; e < rows; e++)
            nrm += v[e] * v[e];
        nrm = sqrt(nrm);
        ck_assert(nrm > 1e-3);
        for (size_t e = 0; e < rows; e++)
            v[e] /= nrm;
    }
}

/* X = U0 diag(s0) G and Y = V0 G with G an orthogonal mix of the r
 * columns (Givens rotations), so X Y^T = U0 diag(s0) V0^T: the helper must
 * find s0 (sorted), reconstruct P and return orthonormal U, V. A zero in
 * s0 makes X's columns dependent without any column being zero; repeated
 * values test ties. Needs r <= min(m, n) for U0, V0. */
static void check_known_svd(size_t m, size_t n, size_t r, const double *s0, uint64_t seed)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    double *u0 = tbt_alloc(m * r * sizeof(double)), *v0 = tbt_alloc(n * r * sizeof(double));
    orthonormal_columns(u0, m, r, seed);
    orthonormal_columns(v0, n, r, seed + 1);
    double *x = tbt_alloc(m * r * sizeof(double)), *y = tbt_alloc(n * r * sizeof(double));
    for (size_t j = 0; j < r; j++) {
        for (size_t e = 0; e < m; e++)
            x[j * m + e] = s0[j] * u0[j * m + e];
        memcpy(y + j * n, v0 + j * n, n * sizeof(double));
    }
    for (size_t p = 0; p + 1 < r; p++) { /* the same rotation of columns p, p + 1 of both */
        const double c = cos(0.3 + (double)p), s = sin(0.3 + (double)p);
        for (size_t e = 0; e < m; e++) {
            const double a = x[p * m + e], b = x[(p + 1) * m + e];
            x[p * m + e] = c * a - s * b, x[(p + 1) * m + e] = s * a + c * b;
        }
        for (size_t e = 0; e < n; e++) {
            const double a = y[p * n + e], b = y[(p + 1) * n + e];
            y[p * n + e] = c * a - s * b, y[(p + 1) * n + e] = s * a + c * b;
        }
    }
    double *P = tbt_alloc(m * n * sizeof(double)), *Q = tbt_alloc(m * n * sizeof(double));
    for (size_t a = 0; a < m; a++)
        for (size_t b = 0; b < n; b++)
            for (size_t j = 0; j < r; j++)
                P[a * n + b] += s0[j] * u0[j * m + a] * v0[j * n + b];
    double *sigma = tbt_alloc(r * sizeof(double)), *sorted = tbt_alloc(r * sizeof(double));
    CHECK_OK(ctx, tb_lowrank_svd(&ctx, "test", m, n, r, x, y, sigma));
    memcpy(sorted, s0, r * sizeof(double));
    for (size_t i = 1; i < r; i++) /* descending */
        for (size_t j = i; j > 0 && sorted[j - 1] < sorted[j]; j--) {
            const double t = sorted[j];
            sorted[j] = sorted[j - 1], sorted[j - 1] = t;
        }
    const double s1 = sorted[0];
    /* Double throughout: errors of a few 1e-16 s1 (QR, ~10 rotations). */
    for (size_t j = 0; j < r; j++) {
        ck_assert_msg(j == 0 || sigma[j] <= sigma[j - 1], "sigma not descending at %zu", j);
        ck_assert_msg(fabs(sigma[j] - sorted[j]) <= 1e-13 * s1, "sigma[%zu] = %.17g, want %.17g",
                      j, sigma[j], sorted[j]);
    }
    for (size_t a = 0; a < m; a++)
        for (size_t b = 0; b < n; b++)
            for (size_t j = 0; j < r; j++)
                Q[a * n + b] += sigma[j] * x[j * m + a] * y[j * n + b];
    char lbl[96];
    snprintf(lbl, sizeof lbl, "lowrank_svd[%zux%zu,r=%zu].P", m, n, r);
    assert_close_dd(lbl, Q, P, m * n, 0.0, 1e-13 * s1);
    /* Orthonormal columns where sigma > 0 (to 1e-12; sigma ~1e-16 s1 stand
     * for an exact 0 and have arbitrary directions). */
    for (size_t i = 0; i < r; i++)
        for (size_t j = i; j < r; j++) {
            if (sigma[j] <= 1e-12 * s1)
                continue;
            double du = 0.0, dv = 0.0;
            for (size_t e = 0; e < m; e++)
                du += x[i * m + e] * x[j * m + e];
            for (size_t e = 0; e < n; e++)
                dv += y[i * n + e] * y[j * n + e];
            const double want = i == j ? 1.0 : 0.0;
            ck_assert_msg(fabs(du - want) <= 1e-12 && fabs(dv - want) <= 1e-12,
                          "U, V columns %zu, %zu: %.3g, %.3g", i, j, du, dv);
        }
    free(u0), free(v0), free(x), free(y), free(P), free(Q), free(sigma), free(sorted);
}

START_TEST(lowrank_svd_known_singular_values)
{
    const double a[7] = {0.5, 10.0, 4.0, 1e-3, 4.0, 0.0, 2.5}; /* a tie, a zero, a tiny one */
    check_known_svd(50, 33, 7, a, 1);
    check_known_svd(17, 50, 7, a, 2);
    const double b[5] = {3.0, 0.0, 0.0, 1.0, 0.0}; /* rank 2 of 5 */
    check_known_svd(33, 17, 5, b, 3);
    const double c[1] = {2.0};
    check_known_svd(1, 1, 1, c, 4);
    check_known_svd(5, 1, 1, c, 5);
    const double d[3] = {0.0, 0.0, 0.0}; /* P = 0 */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    double x[12] = {0}, y[9] = {0}, sg[3];
    CHECK_OK(ctx, tb_lowrank_svd(&ctx, "test", 4, 3, 3, x, y, sg));
    for (int j = 0; j < 3; j++)
        ck_assert(sg[j] == d[j]);
    for (int e = 0; e < 12; e++)
        ck_assert(x[e] == 0.0); /* U is zero where sigma is 0 */
}
END_TEST

/* More columns than rows (r > min(m, n)): the QR must find the dependent
 * columns by itself; zero and duplicated columns too. */
START_TEST(lowrank_svd_dependent_columns)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    enum { M = 3, N = 4, R = 6 };
    float f[M * R + N * R];
    tbt_fill_uniform(f, M * R + N * R, -1, 1, 9);
    double x[M * R], y[N * R], P[M * N] = {0}, Q[M * N] = {0}, sg[R];
    for (size_t e = 0; e < M * R; e++)
        x[e] = f[e];
    for (size_t e = 0; e < N * R; e++)
        y[e] = f[M * R + e];
    memset(x + 2 * M, 0, M * sizeof(double));      /* column 2 of X zero */
    memcpy(y + 4 * N, y + 1 * N, N * sizeof(double)); /* column 4 of Y = column 1 */
    for (size_t a = 0; a < M; a++)
        for (size_t b = 0; b < N; b++)
            for (size_t j = 0; j < R; j++)
                P[a * N + b] += x[j * M + a] * y[j * N + b];
    CHECK_OK(ctx, tb_lowrank_svd(&ctx, "test", M, N, R, x, y, sg));
    for (size_t a = 0; a < M; a++)
        for (size_t b = 0; b < N; b++)
            for (size_t j = 0; j < R; j++)
                Q[a * N + b] += sg[j] * x[j * M + a] * y[j * N + b];
    assert_close_dd("lowrank_svd[3x4,r=6].P", Q, P, M * N, 0.0, 1e-13 * sg[0]);
    for (size_t j = M; j < R; j++) /* rank <= 3 */
        ck_assert_msg(sg[j] <= 1e-13 * sg[0], "sigma[%zu] = %g", j, sg[j]);
}
END_TEST

/* ---- combining: known products, rank-deficient and cancelling sources ------------------ */

/* B A of "comb" against the exact sum (double), within the svd tolerance
 * (atol 3e-7 sigma_1: see the oracle's derivation; sigma_1 by power
 * iteration). As PEFT, the factors carry the whole sum and the new
 * adapter's scaling is 1, or sqrt(r) when the first source is rsLoRA
 * (then forward adds sqrt(r) times the sum). */
static void check_reconstructs(const fixture *f, const char *const *names, const float *w,
                               size_t n, const char *tag)
{
    const tb_lora_adapter *cb = adapter_named(&f->lora, "comb");
    const size_t numel = f->lora.in_features * f->lora.out_features;
    double *want = combined_delta(&f->lora, names, w, n), *got = adapter_product(&f->lora, cb);
    const float r = (float)cb->config.rank;
    ck_assert(cb->scaling == (cb->config.use_rslora ? r / sqrtf(r) : 1.0f));
    const double s1 = spectral_norm(want, f->lora.out_features, f->lora.in_features);
    char lbl[96];
    snprintf(lbl, sizeof lbl, "combine[%s].BA", tag);
    assert_close_dd(lbl, got, want, numel, SVD_RTOL, SVD_ATOL_S1 * s1);
    free(want), free(got);
}

START_TEST(combine_svd_reconstructs_low_rank)
{
    fixture f;
    fixture_init(&f, 33, 50, TB_LINEAR_OUT_IN, 2, 1);
    fixture_add(&f, "s0", 3, 8.0f, 0, TB_LORA_INIT_RANDOM, 2);
    fixture_add(&f, "s1", 5, 16.0f, 1, TB_LORA_INIT_RANDOM, 3);
    const char *names[2] = {"s0", "s1"};
    const float w[2] = {0.75f, -1.5f};
    /* k = R = 8: exact; k = 40 > min(in, out) = 33: ranks past R are zero. */
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb", names, w, 2, TB_LORA_COMBINE_SVD, 8));
    check_reconstructs(&f, names, w, 2, "svd k=R");
    CHECK_OK(f.ctx, tb_lora_delete(&f.ctx, &f.lora, "comb"));
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb", names, w, 2, TB_LORA_COMBINE_SVD, 40));
    check_reconstructs(&f, names, w, 2, "svd k=40");
    const tb_lora_adapter *cb = adapter_named(&f.lora, "comb");
    ck_assert_uint_eq(cb->config.rank, 40);
    for (size_t o = 0; o < 50; o++)
        for (size_t j = 8; j < 40; j++)
            ck_assert(cb->B.value[o * 40 + j] == 0.0f);
    for (size_t e = 8 * 33; e < 40 * 33; e++)
        ck_assert(cb->A.value[e] == 0.0f);
    /* cat is exact too; so is one source under linear, also with a negative
     * weight and a negative alpha (the sign goes to A only). */
    CHECK_OK(f.ctx, tb_lora_delete(&f.ctx, &f.lora, "comb"));
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb", names, w, 2, TB_LORA_COMBINE_CAT, 0));
    check_reconstructs(&f, names, w, 2, "cat");
    CHECK_OK(f.ctx, tb_lora_delete(&f.ctx, &f.lora, "comb"));
    f.lora.adapter[0].config.alpha = -8.0f; /* s0's scaling < 0 (only read by combine here) */
    const float wneg = -0.5f;
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb", names, &wneg, 1,
                                    TB_LORA_COMBINE_CAT, 0));
    check_reconstructs(&f, names, &wneg, 1, "one source, w < 0, alpha < 0");
    /* With rsLoRA first, the factors are the same and the scaling sqrt(r). */
    const char *rs_first[2] = {"s1", "s0"};
    const float w2[2] = {w[1], w[0]};
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "rs", rs_first, w2, 2, TB_LORA_COMBINE_SVD, 8));
    ck_assert(adapter_named(&f.lora, "rs")->config.use_rslora);
    CHECK_OK(f.ctx, tb_lora_delete(&f.ctx, &f.lora, "comb"));
    CHECK_OK(f.ctx, tb_lora_delete(&f.ctx, &f.lora, "rs"));
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb", rs_first, w2, 2, TB_LORA_COMBINE_SVD, 8));
    check_reconstructs(&f, rs_first, w2, 2, "svd, rsLoRA first");
    fixture_free(&f);
}
END_TEST

START_TEST(combine_rank_deficient_sources)
{
    fixture f;
    fixture_init(&f, 17, 33, TB_LINEAR_IN_OUT, 2, 4);
    fixture_add(&f, "s0", 3, 8.0f, 0, TB_LORA_INIT_RANDOM, 5);
    fixture_add(&f, "zero", 4, 8.0f, 0, TB_LORA_INIT_DEFAULT, 6); /* B = 0 */
    /* s0 twice (exactly dependent columns) and a zero source: delta has rank 3. */
    const char *names[3] = {"s0", "zero", "s0"};
    const float w[3] = {1.0f, 2.0f, -0.25f};
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb", names, w, 3, TB_LORA_COMBINE_SVD, 10));
    check_reconstructs(&f, names, w, 3, "svd deficient");
    const tb_lora_adapter *cb = adapter_named(&f.lora, "comb");
    double *d = combined_delta(&f.lora, names, w, 3);
    const double s1 = spectral_norm(d, 33, 17);
    free(d);
    for (size_t j = 3; j < 10; j++) { /* B's columns are sigma_j u_j: ~0 past rank 3 */
        double nrm = 0.0;
        for (size_t o = 0; o < 33; o++)
            nrm += (double)cb->B.value[o * 10 + j] * cb->B.value[o * 10 + j];
        ck_assert_msg(sqrt(nrm) <= 1e-12 * s1, "column %zu of B: %g", j, sqrt(nrm));
    }
    /* Every source zero: B = 0 exactly, A finite. */
    const char *zeros[2] = {"zero", "zero"};
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb0", zeros, w, 2, TB_LORA_COMBINE_SVD, 0));
    cb = adapter_named(&f.lora, "comb0");
    ck_assert_uint_eq(cb->config.rank, 4);
    for (size_t e = 0; e < cb->B.numel; e++)
        ck_assert(cb->B.value[e] == 0.0f);
    tbt_assert_all_finite("comb0.A", cb->A.value, cb->A.numel);
    /* A source minus itself: zero product whatever the combination. */
    const char *same[2] = {"s0", "s0"};
    const float pm[2] = {0.5f, -0.5f};
    const char *tags[3] = {"cancel_lin", "cancel_cat", "cancel_svd"};
    for (int t = 0; t < 3; t++) {
        CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, tags[t], same, pm, 2,
                                        (tb_lora_combine_type)t, 0));
        double *p = adapter_product(&f.lora, adapter_named(&f.lora, tags[t]));
        const double m = max_abs_d(p, 17 * 33);
        ck_assert_msg(m <= 1e-12, "%s: |B A| = %g", tags[t], m);
        free(p);
    }
    fixture_free(&f);
}
END_TEST

/* ---- refusals: every error leaves the layer as it was ---------------------------------- */

typedef struct snapshot {
    tb_lora lora;
    float *values[TB_LORA_MAX_ADAPTERS][2];
} snapshot;

static void snap_take(snapshot *s, const tb_lora *lora)
{
    s->lora = *lora;
    for (size_t i = 0; i < lora->n_adapters; i++) {
        const tb_lora_adapter *ad = &lora->adapter[i];
        s->values[i][0] = tbt_alloc(ad->A.numel * sizeof(float));
        s->values[i][1] = tbt_alloc(ad->B.numel * sizeof(float));
        memcpy(s->values[i][0], ad->A.value, ad->A.numel * sizeof(float));
        memcpy(s->values[i][1], ad->B.value, ad->B.numel * sizeof(float));
    }
}

static void snap_check(const snapshot *s, const tb_lora *lora, const char *what)
{
    ck_assert_msg(memcmp(&s->lora, lora, sizeof *lora) == 0, "%s changed the layer", what);
    for (size_t i = 0; i < lora->n_adapters; i++) {
        const tb_lora_adapter *ad = &lora->adapter[i];
        ck_assert_msg(memcmp(s->values[i][0], ad->A.value, ad->A.numel * sizeof(float)) == 0 &&
                          memcmp(s->values[i][1], ad->B.value, ad->B.numel * sizeof(float)) == 0,
                      "%s changed adapter %zu's values", what, i);
    }
}

static void snap_free(snapshot *s)
{
    for (size_t i = 0; i < s->lora.n_adapters; i++)
        free(s->values[i][0]), free(s->values[i][1]);
}

#define EXPECT_FAIL(f, snap, status, call)                                                  \
    do {                                                                                    \
        ck_assert_int_eq((call), (status));                                                 \
        snap_check((snap), &(f).lora, #call);                                               \
    } while (0)

START_TEST(combine_refusals)
{
    fixture f;
    fixture_init(&f, 17, 13, TB_LINEAR_OUT_IN, 2, 8);
    fixture_add(&f, "a", 3, 8.0f, 0, TB_LORA_INIT_RANDOM, 9);
    fixture_add(&f, "b", 3, 4.0f, 1, TB_LORA_INIT_RANDOM, 10);
    fixture_add(&f, "c", 5, 8.0f, 0, TB_LORA_INIT_RANDOM, 11);
    tb_lora_config dc = tb_lora_config_default(2);
    dc.use_dora = 1;
    dc.init = TB_LORA_INIT_RANDOM;
    tb_rng rng;
    tb_rng_init(&rng, 12);
    CHECK_OK(f.ctx, tb_lora_add(&f.ctx, &f.lora, "dora", &dc, &rng));
    snapshot s;
    snap_take(&s, &f.lora);
    tb_ctx *ctx = &f.ctx;
    tb_lora *L = &f.lora;
    const char *ab[2] = {"a", "b"}, *ac[2] = {"a", "c"}, *ad[2] = {"a", "dora"};
    const char *ax[2] = {"a", "nope"}, *an[2] = {"a", NULL};
    const float w[2] = {1.0f, -0.5f};
    const tb_lora_combine_type LIN = TB_LORA_COMBINE_LINEAR, SVD = TB_LORA_COMBINE_SVD;
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG, tb_lora_combine(ctx, L, "n", ac, w, 2, LIN, 0));
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "equal ranks"));
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG, tb_lora_combine(ctx, L, "n", ad, w, 2, SVD, 0));
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "DoRA"));
    EXPECT_FAIL(f, &s, TB_ERR_NOT_FOUND, tb_lora_combine(ctx, L, "n", ax, w, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_DUPLICATE, tb_lora_combine(ctx, L, "b", ab, w, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG, tb_lora_combine(ctx, L, "x.y", ab, w, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG, tb_lora_combine(ctx, L, "", ab, w, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG, tb_lora_combine(ctx, L, "n", ab, w, 0, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG,
                tb_lora_combine(ctx, L, "n", ab, w, 2, (tb_lora_combine_type)3, 0));
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG,
                tb_lora_combine(ctx, L, "n", ab, w, 2, (tb_lora_combine_type)-1, 0));
    const float wnan[2] = {1.0f, NAN}, winf[2] = {INFINITY, 1.0f};
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG, tb_lora_combine(ctx, L, "n", ab, wnan, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG, tb_lora_combine(ctx, L, "n", ab, winf, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_NULL_ARG, tb_lora_combine(ctx, L, "n", an, w, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_NULL_ARG, tb_lora_combine(ctx, L, NULL, ab, w, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_NULL_ARG, tb_lora_combine(ctx, L, "n", NULL, w, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_NULL_ARG, tb_lora_combine(ctx, L, "n", ab, NULL, 2, SVD, 0));
    EXPECT_FAIL(f, &s, TB_ERR_NULL_ARG, tb_lora_combine(NULL, L, "n", ab, w, 2, SVD, 0));
    ck_assert_int_eq(tb_lora_combine(ctx, NULL, "n", ab, w, 2, SVD, 0), TB_ERR_NULL_ARG);
    tb_lora empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_lora_combine(ctx, &empty, "n", ab, w, 2, SVD, 0), TB_ERR_STATE);
    /* Sum of ranks and the svd rank: overflow before any allocation. */
    EXPECT_FAIL(f, &s, TB_ERR_OVERFLOW, tb_lora_combine(ctx, L, "n", ab, w, 2, SVD, SIZE_MAX / 2));
    snap_free(&s);
    /* A source holding a NaN (a diverged adapter): refused by every type. */
    const float keep = f.lora.adapter[1].B.value[4];
    f.lora.adapter[1].B.value[4] = NAN;
    snap_take(&s, &f.lora);
    for (int t = 0; t < 3; t++)
        EXPECT_FAIL(f, &s, TB_ERR_NON_FINITE,
                    tb_lora_combine(ctx, L, "n", ab, w, 2, (tb_lora_combine_type)t, 0));
    snap_free(&s);
    f.lora.adapter[1].B.value[4] = keep;
    /* Finite weights and alphas whose combination overflows float: w s =
     * 3e38 * 1e38 (cat: w s A; svd: sigma_1 u; linear takes square roots
     * and stays finite). */
    f.lora.adapter[0].config.alpha = 3e38f;
    snap_take(&s, &f.lora);
    const float whuge[2] = {3e38f, 1.0f};
    for (int t = 1; t < 3; t++)
        EXPECT_FAIL(f, &s, TB_ERR_NON_FINITE,
                    tb_lora_combine(ctx, L, "n", ab, whuge, 2, (tb_lora_combine_type)t, 0));
    snap_free(&s);
    f.lora.adapter[0].config.alpha = 8.0f;

    /* Too many adapters: with TB_LORA_MAX_ADAPTERS present, refused. */
    char nm[TB_LORA_MAX_ADAPTERS][32];
    for (size_t i = f.lora.n_adapters; i < TB_LORA_MAX_ADAPTERS; i++) {
        snprintf(nm[i], sizeof nm[i], "m%zu", i);
        CHECK_OK(f.ctx, tb_lora_combine(ctx, L, nm[i], ab, w, 2, LIN, 0));
    }
    snap_take(&s, &f.lora);
    EXPECT_FAIL(f, &s, TB_ERR_INVALID_ARG, tb_lora_combine(ctx, L, "n", ab, w, 2, LIN, 0));
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "at most"));
    snap_free(&s);
    fixture_free(&f);
}
END_TEST

/* Allocator failing after `budget` allocations (counting frees). */
typedef struct budget_alloc {
    int allocs, frees, budget;
} budget_alloc;

static void *budget_alloc_fn(void *user, size_t size, size_t alignment)
{
    budget_alloc *b = user;
    if (b->allocs >= b->budget)
        return NULL;
    b->allocs++;
    return aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
}

static void budget_free_fn(void *user, void *ptr)
{
    ((budget_alloc *)user)->frees++;
    free(ptr);
}

START_TEST(combine_allocation_failures)
{
    for (int t = 0; t < 3; t++) {
        fixture f;
        fixture_init(&f, 17, 33, TB_LINEAR_OUT_IN, 2, 20);
        fixture_add(&f, "a", 3, 8.0f, 0, TB_LORA_INIT_RANDOM, 21);
        fixture_add(&f, "b", 3, 6.0f, 1, TB_LORA_INIT_RANDOM, 22);
        snapshot s;
        snap_take(&s, &f.lora);
        const tb_allocator keep = f.ctx.allocator;
        const char *ab[2] = {"a", "b"};
        const float w[2] = {0.5f, 2.0f};
        budget_alloc b;
        int failures = 0;
        for (int budget = 0;; budget++) {
            b.allocs = b.frees = 0, b.budget = budget;
            f.ctx.allocator.alloc = budget_alloc_fn;
            f.ctx.allocator.free = budget_free_fn;
            f.ctx.allocator.user = &b;
            tb_status st = tb_lora_combine(&f.ctx, &f.lora, "n", ab, w, 2,
                                           (tb_lora_combine_type)t, 4);
            if (st == TB_OK)
                break;
            ck_assert_int_eq(st, TB_ERR_NO_MEMORY);
            ck_assert_int_eq(b.frees, b.allocs); /* nothing leaked */
            snap_check(&s, &f.lora, "a failed allocation");
            failures++;
        }
        /* The scratch is freed; only the adapter's storage stays. */
        ck_assert_int_eq(b.allocs - b.frees, 1);
        ck_assert_int_ge(failures, t == TB_LORA_COMBINE_SVD ? 4 : 2);
        f.ctx.allocator = keep;
        snap_free(&s);
        fixture_free(&f); /* frees "n" through the budget hooks it came from */
        ck_assert_int_eq(b.frees, b.allocs);
    }
}
END_TEST

/* ---- the new adapter, threads and kernel families --------------------------------------- */

START_TEST(combine_new_adapter_is_inactive_and_usable)
{
    fixture f;
    fixture_init(&f, 17, 13, TB_LINEAR_OUT_IN, 2, 30);
    fixture_add(&f, "a", 3, 8.0f, 1, TB_LORA_INIT_RANDOM, 31);
    f.lora.adapter[0].config.dropout = 0.25f; /* copied into the new configuration */
    fixture_add(&f, "b", 5, 4.0f, 0, TB_LORA_INIT_RANDOM, 32);
    const char *ab[2] = {"a", "b"};
    const float w[2] = {1.0f, 1.0f};
    /* Sources merged into the weight are combined from their A and B. */
    CHECK_OK(f.ctx, tb_lora_merge(&f.ctx, &f.lora, "a", 0));
    CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "comb", ab, w, 2, TB_LORA_COMBINE_SVD, 0));
    const tb_lora_adapter *cb = adapter_named(&f.lora, "comb");
    ck_assert_uint_eq(cb->config.rank, 5); /* the largest source rank */
    ck_assert(cb->config.alpha == 5.0f);
    ck_assert_int_eq(cb->config.use_rslora, 1);
    ck_assert(cb->config.dropout == 0.25f);
    ck_assert(fabsf(cb->scaling - sqrtf(5.0f)) <= 1e-6f); /* rsLoRA: alpha / sqrt(r) = sqrt(r) */
    ck_assert_int_eq(cb->merged, 0);
    ck_assert_uint_eq(f.lora.n_active, 1);
    ck_assert_uint_eq(f.lora.active[0], 0);
    ck_assert(cb->A.trainable && cb->B.trainable);
    tb_param_list list;
    CHECK_OK(f.ctx, tb_param_list_init(&f.ctx, &list));
    CHECK_OK(f.ctx, tb_lora_params(&f.ctx, &f.lora, "m", &list));
    ck_assert_ptr_nonnull(tb_param_list_find(&list, "m.lora_A.comb.weight"));
    ck_assert_ptr_nonnull(tb_param_list_find(&list, "m.lora_B.comb.weight"));
    tb_param_list_free(&list);
    CHECK_OK(f.ctx, tb_lora_unmerge(&f.ctx, &f.lora));
    CHECK_OK(f.ctx, tb_lora_delete(&f.ctx, &f.lora, "comb"));
    ck_assert_uint_eq(f.lora.n_adapters, 2);
    fixture_free(&f);
}
END_TEST

/* Combining is serial and uses no matrix kernel: the factors are bitwise
 * the same for 1 and 2 threads and for the portable family. */
START_TEST(combine_is_thread_and_kernel_independent)
{
    float *got[3][2] = {{NULL}};
    for (int run = 0; run < 3; run++) {
        fixture f;
        fixture_init(&f, 300, 200, TB_LINEAR_OUT_IN, run == 0 ? 1 : 2, 40);
        if (run == 2)
            CHECK_OK(f.ctx, tb_ctx_set_kernel(&f.ctx, TB_KERNEL_PORTABLE));
        fixture_add(&f, "a", 8, 8.0f, 0, TB_LORA_INIT_RANDOM, 41);
        fixture_add(&f, "b", 8, 16.0f, 1, TB_LORA_INIT_RANDOM, 42);
        fixture_add(&f, "c", 16, 4.0f, 0, TB_LORA_INIT_RANDOM, 43);
        const char *abc[3] = {"a", "b", "c"};
        const float w[3] = {0.5f, -1.0f, 2.0f};
        CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "lin", abc, w, 2, TB_LORA_COMBINE_LINEAR, 0));
        CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "cat", abc, w, 3, TB_LORA_COMBINE_CAT, 0));
        CHECK_OK(f.ctx, tb_lora_combine(&f.ctx, &f.lora, "svd", abc, w, 3, TB_LORA_COMBINE_SVD, 20));
        const tb_lora_adapter *lin = adapter_named(&f.lora, "lin"),
                              *cat = adapter_named(&f.lora, "cat"),
                              *svd = adapter_named(&f.lora, "svd");
        const size_t na = lin->A.numel + cat->A.numel + svd->A.numel;
        const size_t nb = lin->B.numel + cat->B.numel + svd->B.numel;
        got[run][0] = tbt_alloc(na * sizeof(float));
        got[run][1] = tbt_alloc(nb * sizeof(float));
        memcpy(got[run][0], lin->A.value, lin->A.numel * sizeof(float));
        memcpy(got[run][0] + lin->A.numel, cat->A.value, cat->A.numel * sizeof(float));
        memcpy(got[run][0] + lin->A.numel + cat->A.numel, svd->A.value, svd->A.numel * sizeof(float));
        memcpy(got[run][1], lin->B.value, lin->B.numel * sizeof(float));
        memcpy(got[run][1] + lin->B.numel, cat->B.value, cat->B.numel * sizeof(float));
        memcpy(got[run][1] + lin->B.numel + cat->B.numel, svd->B.value, svd->B.numel * sizeof(float));
        if (run > 0) {
            ck_assert_msg(memcmp(got[run][0], got[0][0], na * sizeof(float)) == 0 &&
                              memcmp(got[run][1], got[0][1], nb * sizeof(float)) == 0,
                          "run %d differs from 1 thread", run);
        }
        fixture_free(&f);
    }
    for (int run = 0; run < 3; run++)
        free(got[run][0]), free(got[run][1]);
}
END_TEST

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(combine_cases); k++)
        if (strcmp(combine_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_lora_combine_all_cases_tested)
{
    ck_assert_uint_gt(tbt_check_manifest("lora_combine_cases.txt", "test_lora_combine.c",
                                         case_is_tested, NULL),
                      0);
}
END_TEST

Suite *suite_lora_combine(void)
{
    Suite *s = suite_create("lora_combine");
    TCase *t0 = tcase_create("svd_helper");
    tcase_add_test(t0, lowrank_svd_known_singular_values);
    tcase_add_test(t0, lowrank_svd_dependent_columns);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("combine");
    tcase_set_timeout(t1, 60);
    tcase_add_test(t1, combine_svd_reconstructs_low_rank);
    tcase_add_test(t1, combine_rank_deficient_sources);
    tcase_add_test(t1, combine_refusals);
    tcase_add_test(t1, combine_allocation_failures);
    tcase_add_test(t1, combine_new_adapter_is_inactive_and_usable);
    tcase_add_test(t1, combine_is_thread_and_kernel_independent);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("peft");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_oracle_lora_combine, 0, (int)ARRAY_LEN(combine_cases));
    tcase_add_test(t2, test_lora_combine_all_cases_tested);
    suite_add_tcase(s, t2);
    return s;
}
