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
 *   float32 sums in both (as test_linear.c's LIN_RTOL 2e-5), plus for svd
 *   the factors' difference: |s x dP^T| <= s sum_c |x_c| 3e-6 sigma_1 <=
 *   s in 3e-6 sigma_1 (|x| <= 1). atol = 2e-6 Y + s in 3e-6 sigma_1 with Y =
 *   max_o (|b_o| + sum_c |W_oc| + s sum_c |P_oc|) (the terms' magnitude),
 *   rtol 2e-5.
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
    char nm[3][8];
    const char *names[3];
    for (int k = 0; k < n_src; k++) {
        char key[16];
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
    const double y_atol = Y_ATOL_U * uy +
                          (how == TB_LORA_COMBINE_SVD ? s_new * (double)in * PEFT_SVD_ATOL_S1 * sigma1 : 0.0);
    snprintf(lbl, sizeof lbl, "%s.y", name);
    tbt_assert_close(lbl, yb, y_ref.data, y_ref.n, Y_RTOL, y_atol);
    free(xb), free(yb), free(P);
    fixture_free(&f);
    tbt_ref_free(ref);
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
    TCase *t2 = tcase_create("peft");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_oracle_lora_combine, 0, (int)ARRAY_LEN(combine_cases));
    tcase_add_test(t2, test_lora_combine_all_cases_tested);
    suite_add_tcase(s, t2);
    return s;
}
