/*
 * Multi-head attention module (mha.h) and KV cache (kvcache.h):
 *   - PyTorch oracle: tb_mha_forward / tb_mha_backward against
 *     torch.nn.MultiheadAttention(C, H, bias, batch_first=True) on every
 *     case of test/oracle/gen_mha.py (listed in mha_cases.txt; the names are
 *     rebuilt here by the same loops and must match that file exactly);
 *   - parameter names and initialisation (tb_mha_params, tb_mha_init);
 *   - finite-difference checks of tb_mha_backward w.r.t. x, mem and every
 *     parameter;
 *   - KV cache: tb_mha_decode over a sequence fed in pieces equals the
 *     causal tb_mha_forward on the whole sequence BITWISE (see below), for
 *     B = 1 and 2 and several groupings of the positions; the same for
 *     tb_kv_cache_append / tb_kv_cache_attend with grouped-query heads and
 *     key lengths; capacity overflow, reset and the error paths;
 *   - error paths of the module;
 *   - bitwise identical results for 1, 2 and 3 threads.
 *
 * ---- Oracle tolerances ---------------------------------------------------
 * Every case carries the float32 PyTorch results (autograd) and the same
 * module run in float64 on the same float32 numbers ("<name>_f64"). Element
 * i passes when |got - want| <= atol + rtol |want| with atol = factor *
 * unit; the unit of each quantity is computed by the generator in float64
 * (gen_mha.py, mha_units()): the largest sum of absolute terms of the last
 * operation producing it (y: U_att |W_out|^T + |b_out|; dx, dmem:
 * U_d{q,k,v} |W_in block|; din_proj_weight per q/k/v block:
 * U_block^T |input|; din_proj_bias: sum U_block; dout_proj_weight:
 * |dy|^T U_att; dout_proj_bias: sum |dy|), where U_att = p|v| and U_dq,
 * U_dk, U_dv are the attention core's own term magnitudes (as in
 * the oracle of test_attention.c), so the error an implementation carries out of
 * the core is covered as well as the final GEMM's rounding. in_proj
 * gradients are compared block by block (q, k, v rows) with their own
 * units, so a wrong block cannot hide behind a larger one.
 * Measured over all 180 cases (gen_mha.py --stats): float32 PyTorch
 * differs from float64 by at most 2.8e-7 unit (dout_proj_weight 2.8e-7,
 * din_proj_weight_v 2.7e-7, y 1.9e-7, din_proj_bias_v 1.7e-7, dmem 9.5e-8,
 * dx 4.5e-8; the exactly-zero din_proj_bias_k 5.8e-8) and by at most
 * 6.9e-8 unit beyond rtol 1e-5. The library (all three kernel families)
 * stays below 3.2e-7 unit from either reference, >= 6x inside the
 * tolerances below.
 * The library's float32 arithmetic has errors of the same kind (dot
 * products of C or D terms, exp, online-softmax rescales, sums over at most
 * 34 rows), a few ulp of the unit:
 *   vs float64:          rtol 1e-5, atol 2e-6 * unit (~34 ulp of the unit,
 *                        >= 7x float32 PyTorch's largest deviation);
 *   vs float32 PyTorch:  rtol 1e-5, atol 3e-6 * unit (both errors).
 * The unit is at most ~110x the largest |result| (median 1 to 17x, larger
 * for gradients through the softmax, which cancel), so a 1e-3 relative
 * error on the largest elements still fails by >= 4x; semantic mistakes
 * (a mask off by one key, a wrong block of in_proj, a missing bias) are
 * O(1) relative errors.
 * Quantities that are exactly 0 in exact arithmetic are compared "at
 * scale": the float64 reference is <= 1e-6 unit and the library must be
 * <= 2e-6 unit and finite. They are din_proj_bias_k (always: a key bias
 * shifts all scores of a query equally, softmax is invariant), and dq, dk
 * when every query sees exactly one key (T = 1 self-attention:
 * din_proj_weight_q/_k, din_proj_bias_q).
 *
 * ---- KV cache: bitwise ---------------------------------------------------
 * Decoding computes every element with the same operations in the same
 * order as the full forward: in_proj and out_proj are GEMMs whose elements
 * do not depend on the number of rows (gemm.h: each element by one thread,
 * same operations whatever the split, edge tiles rounding as full ones),
 * the bias is added after the product in both paths, and the core walks
 * the same keys 0..diag of each query in order with the same online
 * softmax (causal alignment at the end makes query i of a piece of Tn
 * after len stored positions see keys 0..len-Tn+i, as in the full pass).
 * So no ulp of slack is allowed: results must be bitwise equal.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const double RTOL = 1e-5;
static const double ATOL64_REL = 2e-6, ATOL32_REL = 3e-6;
static const double ZERO_REF_REL = 1e-6;

/* Finite differences (as TBT_FD_* of testutil.h, test_attention.c). */
#define H_STEP 1e-2f
#define GC_RTOL 1e-2
#define GC_ATOL 1e-3
#define GC_MAX_CHECKS 600

#define SENTINEL 12345.0f

#define CHECK_ERR(ctx, call, want)                                                   \
    do {                                                                             \
        tb_status st_ = (call);                                                      \
        ck_assert_msg(st_ == (want), "%s returned %s, expected %s (%s)", #call,       \
                      tb_strerror(st_), tb_strerror(want), tb_ctx_error(&(ctx)));    \
    } while (0)

/* ---- helpers ------------------------------------------------------------ */

static void fill_sentinel(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = SENTINEL;
}

static void assert_untouched(const float *x, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(x[i] == SENTINEL, "%s element %zu was written on error", what, i);
}

/* Distance in ulp between two finite floats (for messages). */
static long long ulp_dist(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    long long la = ia < 0 ? (long long)INT32_MIN - ia : ia;
    long long lb = ib < 0 ? (long long)INT32_MIN - ib : ib;
    return la > lb ? la - lb : lb - la;
}

/* Fails unless got[0..n) equals want[0..n) bit for bit. */
static void assert_bitwise(const char *what, const float *got, const float *want, size_t n)
{
    size_t bad = 0, first = 0;
    long long worst = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            if (!bad++)
                first = i;
            long long d = ulp_dist(got[i], want[i]);
            if (d > worst)
                worst = d;
        }
    ck_assert_msg(bad == 0,
                  "%s: %zu of %zu elements differ (first at %zu: %.9g vs %.9g; worst %lld ulp)",
                  what, bad, n, first, bad ? (double)got[first] : 0.0,
                  bad ? (double)want[first] : 0.0, worst);
}

/* A module with non-trivial values: in_proj uniform in +-amp/sqrt(C) (so
 * scores are O(1) and the softmax is neither uniform nor one-hot),
 * out_proj in +-1/sqrt(C), biases in +-0.5; gradients zeroed. */
static void init_module(tb_ctx *ctx, tb_mha *m, size_t c, size_t h, int bias, float amp,
                        uint64_t seed)
{
    tb_rng rng;
    tb_rng_init(&rng, seed);
    CHECK_OK(*ctx, tb_mha_init(ctx, m, c, h, bias, &rng));
    const float a = amp / sqrtf((float)c), o = 1.0f / sqrtf((float)c);
    tbt_fill_uniform(m->in_proj_weight.value, 3 * c * c, -a, a, seed + 1);
    tbt_fill_uniform(m->out_proj.weight.value, c * c, -o, o, seed + 2);
    memset(m->in_proj_weight.grad, 0, 3 * c * c * sizeof(float));
    memset(m->out_proj.weight.grad, 0, c * c * sizeof(float));
    if (bias) {
        tbt_fill_uniform(m->in_proj_bias.value, 3 * c, -0.5f, 0.5f, seed + 3);
        tbt_fill_uniform(m->out_proj.bias.value, c, -0.5f, 0.5f, seed + 4);
        memset(m->in_proj_bias.grad, 0, 3 * c * sizeof(float));
        memset(m->out_proj.bias.grad, 0, c * sizeof(float));
    }
}

static void *alloc_cache(tb_ctx *ctx, const tb_mha *m, size_t b, size_t tq, size_t tk,
                         size_t *bytes)
{
    CHECK_OK(*ctx, tb_mha_cache_size(m, b, tq, tk, bytes));
    return tbt_alloc(*bytes);
}

/* ======================================================================
 * PyTorch oracle
 * ==================================================================== */

/* One case of gen_mha.py; the name is built from the fields exactly as
 * build_mha_cases() builds it. */
typedef struct mha_case {
    char name[80];
    size_t c, h, b, tq, tk;
    int bias, causal, cross, keylen;
} mha_case;

#define MAX_CASES 256
static mha_case g_cases[MAX_CASES];
static size_t g_n_cases;

static void add_case(const char *name, size_t c, size_t h, size_t b, size_t tq, size_t tk,
                     int bias, int causal, int cross, int keylen)
{
    if (g_n_cases >= MAX_CASES) { /* called before any test runs: no ck_assert here */
        fprintf(stderr, "test_mha.c: more than %d cases\n", MAX_CASES);
        abort();
    }
    mha_case *k = &g_cases[g_n_cases++];
    snprintf(k->name, sizeof k->name, "mha_%s", name);
    k->c = c, k->h = h, k->b = b, k->tq = tq, k->tk = tk;
    k->bias = bias, k->causal = causal, k->cross = cross, k->keylen = keylen;
}

static void build_case_names(void)
{
    static const size_t shapes[3][2] = {{12, 3}, {16, 1}, {24, 12}};
    static const size_t lens[3] = {1, 3, 17};
    if (g_n_cases)
        return;
    for (size_t s = 0; s < 3; s++) {
        const size_t c = shapes[s][0], h = shapes[s][1];
        for (int bias = 1; bias >= 0; bias--) {
            const char *sfx = bias ? "" : "_nobias";
            char nm[80];
            for (size_t b = 1; b <= 2; b++)
                for (size_t li = 0; li < 3; li++) {
                    const size_t t = lens[li], tk = t == 1 ? 5 : t == 3 ? 17 : 5;
                    snprintf(nm, sizeof nm, "c%zu_h%zu_b%zu_t%zu_self%s", c, h, b, t, sfx);
                    add_case(nm, c, h, b, t, t, bias, 0, 0, 0);
                    snprintf(nm, sizeof nm, "c%zu_h%zu_b%zu_t%zu_causal%s", c, h, b, t, sfx);
                    add_case(nm, c, h, b, t, t, bias, 1, 0, 0);
                    if (t > 1) {
                        snprintf(nm, sizeof nm, "c%zu_h%zu_b%zu_t%zu_keylen%s", c, h, b, t, sfx);
                        add_case(nm, c, h, b, t, t, bias, 0, 0, 1);
                    }
                    snprintf(nm, sizeof nm, "c%zu_h%zu_b%zu_t%zu_cross_tk%zu%s", c, h, b, t, tk,
                             sfx);
                    add_case(nm, c, h, b, t, tk, bias, 0, 1, 0);
                    snprintf(nm, sizeof nm, "c%zu_h%zu_b%zu_t%zu_crosskl_tk%zu%s", c, h, b, t,
                             tk, sfx);
                    add_case(nm, c, h, b, t, tk, bias, 0, 1, 1);
                }
            snprintf(nm, sizeof nm, "c%zu_h%zu_b2_t17_causal_keylen%s", c, h, sfx);
            add_case(nm, c, h, 2, 17, 17, bias, 1, 0, 1);
            snprintf(nm, sizeof nm, "c%zu_h%zu_b2_t3_causal_cross_tk17%s", c, h, sfx);
            add_case(nm, c, h, 2, 3, 17, bias, 1, 1, 0);
        }
    }
    /* gen_mha.py's sweep: head sizes across the micro-kernel tiles, lengths
     * on both sides of the attention core's 64-key tiles. */
    static const size_t sweep_d[12] = {1, 17, 31, 48, 49, 55, 61, 63, 64, 65, 100, 128};
    static const size_t sweep_t[4] = {63, 64, 65, 129};
    for (size_t i = 0; i < 12; i++) {
        const size_t d = sweep_d[i], h = d <= 64 ? 2 : 1;
        const size_t t = sweep_t[i % 4], tq = sweep_t[(i + 2) % 4], tk = sweep_t[(i + 1) % 4];
        char nm[80];
        snprintf(nm, sizeof nm, "sweep_d%zu_h%zu_t%zu_causal", d, h, t);
        add_case(nm, h * d, h, 1, t, t, 1, 1, 0, 0);
        snprintf(nm, sizeof nm, "sweep_d%zu_h%zu_tq%zu_cross_tk%zu", d, h, tq, tk);
        add_case(nm, h * d, h, 1, tq, tk, i % 2 == 0, 0, 1, 0);
    }
}

static size_t ref_size(const tbt_ref *ref, const char *name)
{
    const int32_t v = tbt_ref_i32_scalar(ref, name);
    ck_assert_msg(v >= 0, "%s = %d", name, (int)v);
    return (size_t)v;
}

/* Compare got[0..n) with the float32 and float64 references (pointers
 * into the reference file), atol relative to unit; "zero at scale" when
 * the float64 reference is ~0. */
static void check_quantity(const char *blk, const char *what, const float *got,
                           const float *w32, const float *w64, size_t n, double unit)
{
    char lbl[192];
    ck_assert_msg(unit > 0 && isfinite(unit), "%s.%s: unit %g", blk, what, unit);
    snprintf(lbl, sizeof lbl, "%s.%s", blk, what);
    if (tbt_max_abs_f(w64, n) <= ZERO_REF_REL * unit) {
        const double m = tbt_max_abs_f(got, n), atol = ATOL64_REL * unit;
        int finite = 1;
        for (size_t i = 0; i < n; i++)
            finite &= isfinite(got[i]) != 0;
        printf("  compare %-48s n=%-6zu zero at scale: max|got|/unit=%.3e (atol=%.0e unit)%s\n",
               lbl, n, m / unit, ATOL64_REL, finite && m <= atol ? "" : "  MISMATCH");
        fflush(stdout);
        ck_assert_msg(finite && m <= atol, "%s: max |got| = %g, expected 0 (within %g)", lbl, m,
                      atol);
        return;
    }
    /* Errors in units (for the summary in the test log). */
    double e32 = 0, e64 = 0;
    for (size_t i = 0; i < n; i++) {
        const double d32 = fabs((double)got[i] - w32[i]), d64 = fabs((double)got[i] - w64[i]);
        e32 = d32 > e32 || isnan(d32) ? d32 : e32;
        e64 = d64 > e64 || isnan(d64) ? d64 : e64;
    }
    printf("  mha-err %-48s vs_f32=%.3e unit  vs_f64=%.3e unit\n", lbl, e32 / unit, e64 / unit);
    tbt_assert_close(lbl, got, w32, n, RTOL, ATOL32_REL * unit);
    snprintf(lbl, sizeof lbl, "%s.%s_vs_f64", blk, what);
    tbt_assert_close(lbl, got, w64, n, RTOL, ATOL64_REL * unit);
}

static void check_named(const tbt_ref *ref, const char *blk, const char *name, const float *got,
                        size_t n)
{
    char nm64[64], nmu[64];
    snprintf(nm64, sizeof nm64, "%s_f64", name);
    snprintf(nmu, sizeof nmu, "unit_%s", name);
    tbt_reft w32 = tbt_ref_get(ref, name), w64 = tbt_ref_get(ref, nm64);
    ck_assert_uint_eq(w32.n, n);
    ck_assert_uint_eq(w64.n, n);
    check_quantity(blk, name, got, w32.data, w64.data, n, tbt_ref_scalar(ref, nmu));
}

/* in_proj gradients block by block (q, k, v rows), each with its unit. */
static void check_in_proj(const tbt_ref *ref, const char *blk, const char *name,
                          const float *got, size_t c, size_t per_row)
{
    char nm64[64], nmu[64], what[64];
    snprintf(nm64, sizeof nm64, "%s_f64", name);
    tbt_reft w32 = tbt_ref_get(ref, name), w64 = tbt_ref_get(ref, nm64);
    const size_t nb = c * per_row;
    ck_assert_uint_eq(w32.n, 3 * nb);
    ck_assert_uint_eq(w64.n, 3 * nb);
    static const char *const blocks[3] = {"q", "k", "v"};
    for (size_t k = 0; k < 3; k++) {
        snprintf(nmu, sizeof nmu, "unit_%s_%s", name, blocks[k]);
        snprintf(what, sizeof what, "%s_%s", name, blocks[k]);
        check_quantity(blk, what, got + k * nb, w32.data + k * nb, w64.data + k * nb, nb,
                       tbt_ref_scalar(ref, nmu));
    }
}

START_TEST(test_mha_oracle_case)
{
    const mha_case *k = &g_cases[_i];
    tbt_ref *ref = tbt_ref_load(k->name);
    const size_t c = ref_size(ref, "embed_dim"), h = ref_size(ref, "n_heads");
    const int bias = tbt_ref_i32_scalar(ref, "has_bias");
    const int causal = tbt_ref_i32_scalar(ref, "causal");
    const int cross = tbt_ref_i32_scalar(ref, "cross");
    ck_assert_msg(c == k->c && h == k->h && bias == k->bias && causal == k->causal &&
                      cross == k->cross && tbt_ref_has(ref, "key_lengths") == k->keylen,
                  "%s: configuration in the file does not match its name", k->name);
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy");
    ck_assert(x.ndim == 3 && x.shape[0] == k->b && x.shape[1] == k->tq && x.shape[2] == c);
    ck_assert_uint_eq(dy.n, x.n);
    const size_t b = k->b, tq = k->tq, tk = k->tk;

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_mha m;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(ctx, tb_mha_init(&ctx, &m, c, h, bias, &rng));
    m.attn.causal = causal;
    tbt_reft w_in = tbt_ref_get(ref, "in_proj_weight"), w_out = tbt_ref_get(ref, "out_proj_weight");
    ck_assert_uint_eq(w_in.n, 3 * c * c);
    ck_assert_uint_eq(w_out.n, c * c);
    memcpy(m.in_proj_weight.value, w_in.data, 3 * c * c * sizeof(float));
    memcpy(m.out_proj.weight.value, w_out.data, c * c * sizeof(float));
    memset(m.in_proj_weight.grad, 0, 3 * c * c * sizeof(float));
    memset(m.out_proj.weight.grad, 0, c * c * sizeof(float));
    if (bias) {
        tbt_reft b_in = tbt_ref_get(ref, "in_proj_bias"), b_out = tbt_ref_get(ref, "out_proj_bias");
        ck_assert_uint_eq(b_in.n, 3 * c);
        ck_assert_uint_eq(b_out.n, c);
        memcpy(m.in_proj_bias.value, b_in.data, 3 * c * sizeof(float));
        memcpy(m.out_proj.bias.value, b_out.data, c * sizeof(float));
        memset(m.in_proj_bias.grad, 0, 3 * c * sizeof(float));
        memset(m.out_proj.bias.grad, 0, c * sizeof(float));
    } else {
        ck_assert(!tbt_ref_has(ref, "in_proj_bias") && !tbt_ref_has(ref, "din_proj_bias"));
    }
    tb_attention_mask mask;
    memset(&mask, 0, sizeof mask);
    if (k->keylen) {
        size_t nl;
        mask.key_lengths = tbt_ref_i32(ref, "key_lengths", &nl);
        ck_assert_uint_eq(nl, b);
    }

    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy), *memb = NULL, *dmemb = NULL;
    float *yb = tbt_nan_buffer(x.n), *dxb = tbt_nan_buffer(x.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &x), dxt = tbt_view_like(dxb, &x);
    tb_tensor memt = xt, dmemt = dxt;
    if (cross) {
        tbt_reft mr = tbt_ref_get(ref, "mem");
        ck_assert(mr.ndim == 3 && mr.shape[0] == b && mr.shape[1] == tk && mr.shape[2] == c);
        memb = tbt_ref_dup(&mr);
        dmemb = tbt_nan_buffer(mr.n);
        memt = tbt_view_like(memb, &mr);
        dmemt = tbt_view_like(dmemb, &mr);
    }
    size_t cache_bytes;
    void *cache = alloc_cache(&ctx, &m, b, tq, tk, &cache_bytes);
    CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, &mask, &xt, cross ? &memt : NULL, &yt,
                                 cache, cache_bytes));
    CHECK_OK(ctx, tb_mha_backward(&ctx, &m, &mask, &xt, cross ? &memt : NULL, &dyt, cache,
                                  cache_bytes, &dxt, cross ? &dmemt : NULL));

    char blk[128];
    snprintf(blk, sizeof blk, "mha[%s]", k->name + 4);
    check_named(ref, blk, "y", yb, x.n);
    check_named(ref, blk, "dx", dxb, x.n);
    if (cross)
        check_named(ref, blk, "dmem", dmemb, b * tk * c);
    check_in_proj(ref, blk, "din_proj_weight", m.in_proj_weight.grad, c, c);
    check_named(ref, blk, "dout_proj_weight", m.out_proj.weight.grad, c * c);
    if (bias) {
        check_in_proj(ref, blk, "din_proj_bias", m.in_proj_bias.grad, c, 1);
        check_named(ref, blk, "dout_proj_bias", m.out_proj.bias.grad, c);
    }
    free(cache);
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    free(memb);
    free(dmemb);
    tb_mha_free(&m);
    tbt_ref_free(ref);
}
END_TEST

/* The generator's manifest lists exactly the cases tested here. */
static int mha_case_listed(const char *name, const void *user)
{
    (void)user;
    for (size_t i = 0; i < g_n_cases; i++)
        if (strcmp(g_cases[i].name, name) == 0)
            return 1;
    return 0;
}

START_TEST(test_mha_oracle_all_cases_tested)
{
    /* Names are unique (the generator asserts it), so equal counts mean the
     * manifest and this file's list are the same set. */
    const size_t n = tbt_check_manifest("mha_cases.txt", "test_mha.c", mha_case_listed, NULL);
    ck_assert_msg(n == g_n_cases, "mha_cases.txt lists %zu cases; test_mha.c tests %zu", n,
                  g_n_cases);
    ck_assert_uint_eq(g_n_cases, 204);
}
END_TEST

/* ======================================================================
 * Parameters and initialisation
 * ==================================================================== */

static void check_names(tb_ctx *ctx, tb_mha *m, const char *prefix, const char *shown)
{
    tb_param_list list;
    CHECK_OK(*ctx, tb_param_list_init(ctx, &list));
    CHECK_OK(*ctx, tb_mha_params(ctx, m, prefix, &list));
    const size_t c = m->embed_dim;
    const char *const names[4] = {"in_proj_weight", "in_proj_bias", "out_proj.weight",
                                  "out_proj.bias"};
    tb_param *const params[4] = {&m->in_proj_weight, &m->in_proj_bias, &m->out_proj.weight,
                                 &m->out_proj.bias};
    const size_t numel[4] = {3 * c * c, 3 * c, c * c, c};
    const size_t n_expected = m->has_bias ? 4 : 2;
    ck_assert_uint_eq(list.count, n_expected);
    size_t j = 0;
    for (size_t i = 0; i < 4; i++) {
        if (!m->has_bias && (i == 1 || i == 3))
            continue;
        char want[TB_PARAM_NAME_MAX];
        snprintf(want, sizeof want, "%s%s%s", shown, shown[0] ? "." : "", names[i]);
        ck_assert_msg(strcmp(list.items[j].name, want) == 0, "entry %zu is '%s', expected '%s'",
                      j, list.items[j].name, want);
        ck_assert_ptr_eq(list.items[j].param, params[i]);
        ck_assert_ptr_eq(tb_param_list_find(&list, want), params[i]);
        ck_assert_uint_eq(params[i]->numel, numel[i]);
        ck_assert_int_eq(params[i]->trainable, 1);
        ck_assert_ptr_nonnull(params[i]->value);
        ck_assert_ptr_nonnull(params[i]->grad);
        j++;
    }
    ck_assert_uint_eq(m->in_proj_weight.ndim, 2);
    ck_assert_uint_eq(m->in_proj_weight.shape[0], 3 * c);
    ck_assert_uint_eq(m->in_proj_weight.shape[1], c);
    ck_assert_uint_eq(m->out_proj.weight.ndim, 2);
    ck_assert_uint_eq(m->out_proj.weight.shape[0], c);
    ck_assert_uint_eq(m->out_proj.weight.shape[1], c);
    if (m->has_bias) {
        ck_assert_uint_eq(m->in_proj_bias.ndim, 1);
        ck_assert_uint_eq(m->in_proj_bias.shape[0], 3 * c);
        ck_assert_uint_eq(m->out_proj.bias.ndim, 1);
        ck_assert_uint_eq(m->out_proj.bias.shape[0], c);
    }
    ck_assert_uint_eq(tb_param_list_numel(&list, 1),
                      m->has_bias ? 4 * c * c + 4 * c : 4 * c * c);
    /* A second registration under the same prefix collides. */
    CHECK_ERR(*ctx, tb_mha_params(ctx, m, prefix, &list), TB_ERR_DUPLICATE);
    tb_param_list_free(&list);
}

START_TEST(test_mha_param_names)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    for (int bias = 1; bias >= 0; bias--) {
        tb_mha m;
        tb_rng rng;
        tb_rng_init(&rng, 5);
        CHECK_OK(ctx, tb_mha_init(&ctx, &m, 12, 3, bias, &rng));
        ck_assert_uint_eq(m.embed_dim, 12);
        ck_assert_uint_eq(m.n_heads, 3);
        ck_assert_int_eq(m.has_bias, bias);
        ck_assert_uint_eq(m.attn.n_heads, 3);
        ck_assert_uint_eq(m.attn.head_dim, 4);
        ck_assert_int_eq(m.attn.causal, 0);
        check_names(&ctx, &m, NULL, "");
        check_names(&ctx, &m, "", "");
        check_names(&ctx, &m, "blocks.0.attn", "blocks.0.attn");
        tb_mha_free(&m);
        ck_assert_ptr_null(m.storage);
        tb_mha_free(&m); /* twice is fine */
    }
    tb_mha_free(NULL);
}
END_TEST

START_TEST(test_mha_init_values)
{
    /* As PyTorch: in_proj_weight Xavier-uniform (+-sqrt(6 / (C + 3C))),
     * biases 0, out_proj.weight in +-1/sqrt(C); gradients 0. */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_mha m;
    tb_rng rng;
    tb_rng_init(&rng, 11);
    const size_t c = 64;
    CHECK_OK(ctx, tb_mha_init(&ctx, &m, c, 4, 1, &rng));
    const double xb = sqrt(6.0 / (4.0 * (double)c)), ob = 1.0 / sqrt((double)c);
    const double mi = tbt_max_abs_f(m.in_proj_weight.value, 3 * c * c);
    const double mo = tbt_max_abs_f(m.out_proj.weight.value, c * c);
    ck_assert_msg(mi <= xb * (1 + 1e-6) && mi > 0.95 * xb, "in_proj max %g, bound %g", mi, xb);
    ck_assert_msg(mo <= ob * (1 + 1e-6) && mo > 0.95 * ob, "out_proj max %g, bound %g", mo, ob);
    ck_assert(tbt_max_abs_f(m.in_proj_bias.value, 3 * c) == 0.0);
    ck_assert(tbt_max_abs_f(m.out_proj.bias.value, c) == 0.0);
    ck_assert(tbt_max_abs_f(m.in_proj_weight.grad, 3 * c * c) == 0.0);
    ck_assert(tbt_max_abs_f(m.in_proj_bias.grad, 3 * c) == 0.0);
    ck_assert(tbt_max_abs_f(m.out_proj.weight.grad, c * c) == 0.0);
    ck_assert(tbt_max_abs_f(m.out_proj.bias.grad, c) == 0.0);
    tb_mha_free(&m);
}
END_TEST

/* Backward adds to the parameter gradients (it must not overwrite them):
 * a second identical backward doubles them. Each gradient element is one
 * float sum (a GEMM with beta = 1 over B*T = 6 rows, one K block, or a
 * column sum), so the second call adds the same value again: the result
 * is 2 g up to one rounding of the final addition, here exact; rtol 1e-6
 * allows for a blocked summation all the same. dx and dmem are
 * overwritten (the same values twice). */
START_TEST(test_mha_backward_accumulates)
{
    const size_t c = 12, h = 3, b = 2, t = 3, tk = 5;
    for (int cross = 0; cross <= 1; cross++) {
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 2);
        tb_mha m;
        init_module(&ctx, &m, c, h, 1, 3.0f, 21 + (uint64_t)cross);
        const size_t tkk = cross ? tk : t, nx = b * t * c, nm = b * tkk * c;
        float *x = tbt_alloc(nx * sizeof(float)), *dy = tbt_alloc(nx * sizeof(float));
        float *mem = tbt_alloc(nm * sizeof(float)), *y = tbt_nan_buffer(nx);
        float *dx1 = tbt_nan_buffer(nx), *dx2 = tbt_nan_buffer(nx);
        float *dm1 = tbt_nan_buffer(nm), *dm2 = tbt_nan_buffer(nm);
        tbt_fill_uniform(x, nx, -1, 1, 22);
        tbt_fill_uniform(dy, nx, -1, 1, 23);
        tbt_fill_uniform(mem, nm, -1, 1, 24);
        tb_tensor xt = tb_tensor_3d(x, b, t, c), dyt = tb_tensor_3d(dy, b, t, c);
        tb_tensor yt = tb_tensor_3d(y, b, t, c), memt = tb_tensor_3d(mem, b, tkk, c);
        tb_tensor dx1t = tb_tensor_3d(dx1, b, t, c), dx2t = tb_tensor_3d(dx2, b, t, c);
        tb_tensor dm1t = tb_tensor_3d(dm1, b, tkk, c), dm2t = tb_tensor_3d(dm2, b, tkk, c);
        size_t bytes;
        void *cache = alloc_cache(&ctx, &m, b, t, tkk, &bytes);
        const tb_tensor *mp = cross ? &memt : NULL;
        CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, mp, &yt, cache, bytes));
        CHECK_OK(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, mp, &dyt, cache, bytes, &dx1t,
                                      cross ? &dm1t : NULL));
        tb_param *const ps[4] = {&m.in_proj_weight, &m.in_proj_bias, &m.out_proj.weight,
                                 &m.out_proj.bias};
        float *g1[4];
        for (int i = 0; i < 4; i++) {
            g1[i] = tbt_alloc(ps[i]->numel * sizeof(float));
            for (size_t j = 0; j < ps[i]->numel; j++)
                g1[i][j] = 2.0f * ps[i]->grad[j];
        }
        CHECK_OK(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, mp, &dyt, cache, bytes, &dx2t,
                                      cross ? &dm2t : NULL));
        static const char *const pn[4] = {"in_proj_weight", "in_proj_bias", "out_proj.weight",
                                          "out_proj.bias"};
        for (int i = 0; i < 4; i++) {
            char lbl[96];
            snprintf(lbl, sizeof lbl, "mha[%s].%s after 2 backward", cross ? "cross" : "self",
                     pn[i]);
            tbt_assert_close(lbl, ps[i]->grad, g1[i], ps[i]->numel, 1e-6,
                             1e-6 * tbt_max_abs_f(g1[i], ps[i]->numel));
            free(g1[i]);
        }
        assert_bitwise("dx of the second backward", dx2, dx1, nx);
        if (cross)
            assert_bitwise("dmem of the second backward", dm2, dm1, nm);
        free(cache);
        free(x);
        free(dy);
        free(mem);
        free(y);
        free(dx1);
        free(dx2);
        free(dm1);
        free(dm2);
        tb_mha_free(&m);
    }
}
END_TEST

/* ======================================================================
 * Finite-difference gradient checks
 *
 * L = sum(w .* y) for a fixed random w (dL/dy = w), forward in float, L in
 * double, central differences with h = 1e-2, rtol 1e-2, atol 1e-3 (as
 * TBT_FD_* of testutil.h and test_attention.c). Rounding: y has at most 2*4*6 =
 * 48 elements of |y| <~ 2, each with a few ulp of error, so L moves by
 * float rounding of at most ~48 * 2 * 2.4e-7 ~ 2.3e-5 (far less in
 * practice: unaffected elements are bitwise equal in both evaluations),
 * <= 1.2e-3 after dividing by 2h in the very worst case and ~1e-4
 * typically; the truncation error h^2/6 |f'''| is ~1e-5 for scores of
 * order 1 (x in +-1, in_proj in +-1.2: q, k of std ~1). A
 * zero, sign-flipped or misplaced gradient fails, since every check also
 * requires max |numeric| > 10 atol. din_proj_bias has an exactly-zero k
 * block; its q and v blocks keep the check non-degenerate.
 * ==================================================================== */

typedef struct mha_prob {
    tb_ctx ctx;
    tb_mha m;
    tb_attention_mask mask;
    tb_tensor xt, memt, yt;
    float *x, *mem, *y, *w;
    size_t ny;
    int cross;
    void *cache;
    size_t cache_bytes;
} mha_prob;

static double mha_loss(void *user)
{
    mha_prob *p = user;
    CHECK_OK(p->ctx, tb_mha_forward(&p->ctx, &p->m, TB_MODE_TRAINING, &p->mask, &p->xt,
                                    p->cross ? &p->memt : NULL, &p->yt, p->cache, p->cache_bytes));
    return tbt_dot(p->w, p->y, p->ny);
}

/* dropout > 0: attention dropout drawn once (a fixed mask, so the loss is
 * smooth and finite differences apply). */
static void gradcheck_mha(const char *tag, size_t c, size_t h, size_t b, size_t tq, size_t tk,
                          int cross, int causal, int bias, const int32_t *lengths, float dropout)
{
    mha_prob p;
    memset(&p, 0, sizeof p);
    tbt_ctx_init(&p.ctx, 1);
    const uint64_t seed = 1000 * c + 100 * h + 10 * tq + tk + (uint64_t)(cross * 7 + causal);
    /* in_proj in +-1.2: q and k of std ~1, scores of order 1. */
    init_module(&p.ctx, &p.m, c, h, bias, 1.2f * sqrtf((float)c), seed);
    p.m.attn.causal = causal;
    p.mask.key_lengths = lengths;
    if (dropout > 0.0f) {
        tb_rng rng;
        tb_rng_init(&rng, seed + 5);
        CHECK_OK(p.ctx, tb_attention_dropout_draw(&p.ctx, &p.m.attn, &p.mask, &rng, dropout, b, tq,
                                                  tk));
    }
    p.cross = cross;
    const size_t nx = b * tq * c, nm = b * tk * c;
    p.ny = nx;
    p.x = tbt_alloc(nx * sizeof(float));
    p.y = tbt_nan_buffer(nx);
    p.w = tbt_alloc(nx * sizeof(float));
    tbt_fill_uniform(p.x, nx, -1.0f, 1.0f, seed + 12);
    tbt_fill_uniform(p.w, nx, -1.0f, 1.0f, seed + 13);
    p.xt = tb_tensor_3d(p.x, b, tq, c);
    p.yt = tb_tensor_3d(p.y, b, tq, c);
    float *dx = tbt_nan_buffer(nx), *dmem = NULL;
    tb_tensor dxt = tb_tensor_3d(dx, b, tq, c), wt = tb_tensor_3d(p.w, b, tq, c);
    tb_tensor dmemt = dxt;
    if (cross) {
        p.mem = tbt_alloc(nm * sizeof(float));
        tbt_fill_uniform(p.mem, nm, -1.0f, 1.0f, seed + 14);
        p.memt = tb_tensor_3d(p.mem, b, tk, c);
        dmem = tbt_nan_buffer(nm);
        dmemt = tb_tensor_3d(dmem, b, tk, c);
    } else {
        ck_assert_uint_eq(tq, tk);
    }
    p.cache = alloc_cache(&p.ctx, &p.m, b, tq, tk, &p.cache_bytes);
    mha_loss(&p);
    CHECK_OK(p.ctx, tb_mha_backward(&p.ctx, &p.m, &p.mask, &p.xt, cross ? &p.memt : NULL, &wt,
                                    p.cache, p.cache_bytes, &dxt, cross ? &dmemt : NULL));
    char label[160];
    snprintf(label, sizeof label, "mha[%s].dx", tag);
    tbt_gradcheck(label, p.x, nx, dx, mha_loss, &p, H_STEP, GC_RTOL, GC_ATOL, GC_MAX_CHECKS);
    if (cross) {
        snprintf(label, sizeof label, "mha[%s].dmem", tag);
        tbt_gradcheck(label, p.mem, nm, dmem, mha_loss, &p, H_STEP, GC_RTOL, GC_ATOL,
                      GC_MAX_CHECKS);
    }
    tb_param *const ps[4] = {&p.m.in_proj_weight, &p.m.in_proj_bias, &p.m.out_proj.weight,
                             &p.m.out_proj.bias};
    static const char *const pn[4] = {"in_proj_weight", "in_proj_bias", "out_proj.weight",
                                      "out_proj.bias"};
    for (int i = 0; i < 4; i++) {
        if (!bias && (i == 1 || i == 3))
            continue;
        snprintf(label, sizeof label, "mha[%s].%s", tag, pn[i]);
        tbt_gradcheck(label, ps[i]->value, ps[i]->numel, ps[i]->grad, mha_loss, &p, H_STEP,
                      GC_RTOL, GC_ATOL, GC_MAX_CHECKS);
    }
    free(p.cache);
    free(p.x);
    free(p.y);
    free(p.w);
    free(p.mem);
    free(dx);
    free(dmem);
    tb_mha_free(&p.m);
}

START_TEST(test_mha_gradcheck_self)
{
    static const int32_t lens[2] = {4, 3};
    gradcheck_mha("c6,h2,b2,t4,causal,keylen", 6, 2, 2, 4, 4, 0, 1, 1, lens, 0.0f);
    gradcheck_mha("c6,h3,b2,t3", 6, 3, 2, 3, 3, 0, 0, 1, NULL, 0.0f);
    gradcheck_mha("c4,h1,b1,t5,causal,nobias", 4, 1, 1, 5, 5, 0, 1, 0, NULL, 0.0f);
    gradcheck_mha("c6,h2,b2,t5,causal,drop0.3", 6, 2, 2, 5, 5, 0, 1, 1, NULL, 0.3f);
}
END_TEST

START_TEST(test_mha_gradcheck_cross)
{
    static const int32_t lens[2] = {5, 2};
    gradcheck_mha("c6,h3,b2,tq3,tk5,cross,keylen", 6, 3, 2, 3, 5, 1, 0, 1, lens, 0.0f);
    gradcheck_mha("c6,h2,b2,tq2,tk4,cross,causal", 6, 2, 2, 2, 4, 1, 1, 1, NULL, 0.0f);
    gradcheck_mha("c4,h2,b1,tq4,tk3,cross,nobias", 4, 2, 1, 4, 3, 1, 0, 0, NULL, 0.0f);
    gradcheck_mha("c6,h3,b1,tq3,tk6,cross,drop0.5", 6, 3, 1, 3, 6, 1, 0, 1, NULL, 0.5f);
}
END_TEST

/* ======================================================================
 * KV cache and incremental decoding
 * ==================================================================== */

/* Rows [t0, t0 + n) of every batch row of a (B, T, W) buffer into a new
 * (B, n, W) buffer. */
static float *gather_rows(const float *src, size_t b, size_t t, size_t w, size_t t0, size_t n)
{
    float *out = tbt_alloc(b * n * w * sizeof(float));
    for (size_t i = 0; i < b; i++)
        memcpy(out + i * n * w, src + (i * t + t0) * w, n * w * sizeof(float));
    return out;
}

/* Decode x (B, T, C) in pieces and compare with y_full rows bitwise. */
static void decode_pieces(tb_ctx *ctx, const tb_mha *m, tb_kv_cache *kv, const float *x,
                          const float *y_full, size_t b, size_t t, const size_t *pieces,
                          size_t n_pieces, const char *tag)
{
    const size_t c = m->embed_dim;
    size_t pos = 0;
    for (size_t k = 0; k < n_pieces; k++) {
        const size_t n = pieces[k];
        float *xp = gather_rows(x, b, t, c, pos, n), *yp = tbt_nan_buffer(b * n * c);
        float *want = gather_rows(y_full, b, t, c, pos, n);
        tb_tensor xt = tb_tensor_3d(xp, b, n, c), yt = tb_tensor_3d(yp, b, n, c);
        CHECK_OK(*ctx, tb_mha_decode(ctx, m, kv, &xt, &yt));
        pos += n;
        ck_assert_uint_eq(kv->len, pos);
        char what[160];
        snprintf(what, sizeof what, "decode[%s] piece %zu (positions %zu..%zu)", tag, k, pos - n,
                 pos - 1);
        assert_bitwise(what, yp, want, b * n * c);
        free(xp);
        free(yp);
        free(want);
    }
    ck_assert_uint_eq(pos, t);
}

START_TEST(test_mha_decode_matches_forward)
{
    typedef struct spec {
        size_t c, h, b;
        int bias;
    } spec;
    static const spec specs[] = {{16, 4, 2, 1}, {12, 3, 2, 0}, {24, 12, 1, 1}, {8, 1, 2, 1}};
    static const size_t g1[] = {4, 1, 1, 3}, g2[] = {9}, g3[] = {1, 1, 1, 1, 1, 1, 1, 1, 1},
                        g4[] = {2, 7}, g5[] = {3, 3, 3};
    const size_t *groups[] = {g1, g2, g3, g4, g5};
    const size_t glen[] = {ARRAY_LEN(g1), ARRAY_LEN(g2), ARRAY_LEN(g3), ARRAY_LEN(g4),
                           ARRAY_LEN(g5)};
    const size_t t = 9;
    for (size_t s = 0; s < ARRAY_LEN(specs); s++) {
        const size_t c = specs[s].c, h = specs[s].h, b = specs[s].b;
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 2);
        tb_mha m;
        init_module(&ctx, &m, c, h, specs[s].bias, 3.0f, 300 + s);
        m.attn.causal = 1;
        float *x = tbt_alloc(b * t * c * sizeof(float)), *y = tbt_nan_buffer(b * t * c);
        tbt_fill_uniform(x, b * t * c, -1.0f, 1.0f, 400 + s);
        tb_tensor xt = tb_tensor_3d(x, b, t, c), yt = tb_tensor_3d(y, b, t, c);
        size_t bytes;
        void *cache = alloc_cache(&ctx, &m, b, t, t, &bytes);
        CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, NULL, &yt, cache,
                                     bytes));
        tb_kv_cache kv;
        CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv, b, t + 2, h, c / h));
        for (size_t g = 0; g < ARRAY_LEN(groups); g++) {
            char tag[96];
            snprintf(tag, sizeof tag, "c%zu,h%zu,b%zu%s,grouping %zu", c, h, b,
                     specs[s].bias ? "" : ",nobias", g);
            tb_kv_cache_reset(&kv);
            ck_assert_uint_eq(kv.len, 0);
            decode_pieces(&ctx, &m, &kv, x, y, b, t, groups[g], glen[g], tag);
        }
        /* Without reset, the cache keeps growing: two more positions fit
         * (capacity t + 2), a third does not. */
        float *x2 = tbt_alloc(b * 3 * c * sizeof(float)), *y2 = tbt_nan_buffer(b * 3 * c);
        tbt_fill_uniform(x2, b * 3 * c, -1.0f, 1.0f, 500 + s);
        tb_tensor x2t = tb_tensor_3d(x2, b, 3, c), y2t = tb_tensor_3d(y2, b, 3, c);
        const size_t kvn = b * (t + 2) * c;
        float *keys0 = tbt_alloc(kvn * sizeof(float)), *vals0 = tbt_alloc(kvn * sizeof(float));
        memcpy(keys0, kv.keys, kvn * sizeof(float));
        memcpy(vals0, kv.values, kvn * sizeof(float));
        CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv, &x2t, &y2t), TB_ERR_BUFFER_TOO_SMALL);
        ck_assert_uint_eq(kv.len, t);
        ck_assert(memcmp(keys0, kv.keys, kvn * sizeof(float)) == 0);
        ck_assert(memcmp(vals0, kv.values, kvn * sizeof(float)) == 0);
        x2t.shape[1] = y2t.shape[1] = 2;
        CHECK_OK(ctx, tb_mha_decode(&ctx, &m, &kv, &x2t, &y2t));
        ck_assert_uint_eq(kv.len, t + 2);
        free(x2);
        free(y2);
        free(keys0);
        free(vals0);
        tb_kv_cache_free(&kv);
        ck_assert_ptr_null(kv.storage);
        tb_kv_cache_free(&kv);
        free(cache);
        free(x);
        free(y);
        tb_mha_free(&m);
    }
    tb_kv_cache_free(NULL);
    tb_kv_cache_reset(NULL);
}
END_TEST

/* The core through the cache: grouped-query heads (H = 4, 2 kv heads),
 * keys and values appended from a packed buffer at nonzero offsets, equal
 * bitwise to tb_attention_forward on the whole sequence (causal); then
 * key lengths, with and without causal, against the core with the same
 * masks. */
START_TEST(test_kv_cache_attend_gqa)
{
    const size_t b = 2, t = 9, h = 4, hkv = 2, d = 5, cq = h * d, ckv = hkv * d;
    const size_t wp = 1 + 2 * ckv; /* packed: [pad, k, v] */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_attention_config cfg = tb_attention_default_config(h, d);
    cfg.n_kv_heads = hkv;
    cfg.causal = 1;
    float *q = tbt_alloc(b * t * cq * sizeof(float)), *kvp = tbt_alloc(b * t * wp * sizeof(float));
    tbt_fill_uniform(q, b * t * cq, -2.0f, 2.0f, 61);
    tbt_fill_uniform(kvp, b * t * wp, -2.0f, 2.0f, 62);
    tb_tensor qt = tb_tensor_3d(q, b, t, cq), kvt = tb_tensor_3d(kvp, b, t, wp);
    tb_heads qh = {&qt, 0}, kh = {&kvt, 1}, vh = {&kvt, 1 + ckv};
    float *full = tbt_nan_buffer(b * t * cq);
    tb_tensor fullt = tb_tensor_3d(full, b, t, cq);
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &qh, &kh, &vh, &fullt,
                                       NULL, 0));

    tb_kv_cache kv;
    CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv, b, t, hkv, d));
    static const size_t pieces[] = {4, 1, 1, 3};
    size_t pos = 0;
    for (size_t k = 0; k < ARRAY_LEN(pieces); k++) {
        const size_t n = pieces[k];
        float *qp = gather_rows(q, b, t, cq, pos, n), *kvpp = gather_rows(kvp, b, t, wp, pos, n);
        float *op = tbt_nan_buffer(b * n * cq), *want = gather_rows(full, b, t, cq, pos, n);
        tb_tensor qpt = tb_tensor_3d(qp, b, n, cq), kvpt = tb_tensor_3d(kvpp, b, n, wp);
        tb_tensor opt = tb_tensor_3d(op, b, n, cq);
        tb_heads qph = {&qpt, 0}, kph = {&kvpt, 1}, vph = {&kvpt, 1 + ckv};
        CHECK_OK(ctx, tb_kv_cache_append(&ctx, &kv, &kph, &vph));
        pos += n;
        ck_assert_uint_eq(kv.len, pos);
        CHECK_OK(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, NULL, &qph, &opt));
        char what[96];
        snprintf(what, sizeof what, "kv attend gqa piece %zu", k);
        assert_bitwise(what, op, want, b * n * cq);
        free(qp);
        free(kvpp);
        free(op);
        free(want);
    }
    /* The stored keys and values are the appended columns. */
    for (size_t i = 0; i < b; i++)
        for (size_t j = 0; j < t; j++) {
            ck_assert(memcmp(kv.keys + (i * t + j) * ckv, kvp + (i * t + j) * wp + 1,
                             ckv * sizeof(float)) == 0);
            ck_assert(memcmp(kv.values + (i * t + j) * ckv, kvp + (i * t + j) * wp + 1 + ckv,
                             ckv * sizeof(float)) == 0);
        }
    /* Key lengths: the last 3 queries over all 9 stored keys, lengths
     * {9, 5}, with and without causal, against the core (Tq = 3, Tk = 9). */
    static const int32_t lens[2] = {9, 5};
    tb_attention_mask mask;
    memset(&mask, 0, sizeof mask);
    mask.key_lengths = lens;
    float *q3 = gather_rows(q, b, t, cq, t - 3, 3);
    tb_tensor q3t = tb_tensor_3d(q3, b, 3, cq);
    tb_heads q3h = {&q3t, 0};
    for (int causal = 0; causal <= 1; causal++) {
        cfg.causal = causal;
        float *o1 = tbt_nan_buffer(b * 3 * cq), *o2 = tbt_nan_buffer(b * 3 * cq);
        tb_tensor o1t = tb_tensor_3d(o1, b, 3, cq), o2t = tb_tensor_3d(o2, b, 3, cq);
        CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &mask, &q3h, &kh, &vh,
                                           &o1t, NULL, 0));
        CHECK_OK(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, lens, &q3h, &o2t));
        assert_bitwise(causal ? "kv attend key lengths, causal" : "kv attend key lengths", o2,
                       o1, b * 3 * cq);
        free(o1);
        free(o2);
    }
    free(q3);
    free(q);
    free(kvp);
    free(full);
    tb_kv_cache_free(&kv);
}
END_TEST

START_TEST(test_kv_cache_capacity_and_reset)
{
    const size_t b = 2, maxlen = 6, hkv = 2, d = 3, w = hkv * d;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_kv_cache kv;
    CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv, b, maxlen, hkv, d));
    ck_assert_uint_eq(kv.len, 0);
    ck_assert_uint_eq(kv.max_len, maxlen);
    float *k = tbt_alloc(b * 7 * w * sizeof(float)), *v = tbt_alloc(b * 7 * w * sizeof(float));
    tbt_fill_uniform(k, b * 7 * w, -1, 1, 71);
    tbt_fill_uniform(v, b * 7 * w, -1, 1, 72);
    tb_tensor kt = tb_tensor_3d(k, b, 4, w), vt = tb_tensor_3d(v, b, 4, w);
    tb_heads kh = {&kt, 0}, vh = {&vt, 0};
    CHECK_OK(ctx, tb_kv_cache_append(&ctx, &kv, &kh, &vh));
    ck_assert_uint_eq(kv.len, 4);
    const size_t n = b * maxlen * w;
    float *k0 = tbt_alloc(n * sizeof(float)), *v0 = tbt_alloc(n * sizeof(float));
    memcpy(k0, kv.keys, n * sizeof(float));
    memcpy(v0, kv.values, n * sizeof(float));
    /* 4 + 3 > 6: refused, nothing appended. */
    kt.shape[1] = vt.shape[1] = 3;
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &kh, &vh), TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_uint_eq(kv.len, 4);
    ck_assert(memcmp(k0, kv.keys, n * sizeof(float)) == 0);
    ck_assert(memcmp(v0, kv.values, n * sizeof(float)) == 0);
    /* Exactly full is fine; then even one more is refused. */
    kt.shape[1] = vt.shape[1] = 2;
    CHECK_OK(ctx, tb_kv_cache_append(&ctx, &kv, &kh, &vh));
    ck_assert_uint_eq(kv.len, maxlen);
    kt.shape[1] = vt.shape[1] = 1;
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &kh, &vh), TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_uint_eq(kv.len, maxlen);
    /* More than the capacity at once, into an empty cache. */
    tb_kv_cache_reset(&kv);
    ck_assert_uint_eq(kv.len, 0);
    ck_assert_ptr_nonnull(kv.storage);
    ck_assert_uint_eq(kv.max_len, maxlen);
    kt.shape[1] = vt.shape[1] = 7;
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &kh, &vh), TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_uint_eq(kv.len, 0);
    /* After reset the cache refills from position 0. */
    kt.shape[1] = vt.shape[1] = 6;
    CHECK_OK(ctx, tb_kv_cache_append(&ctx, &kv, &kh, &vh));
    ck_assert_uint_eq(kv.len, 6);
    for (size_t i = 0; i < b; i++)
        ck_assert(memcmp(kv.keys + i * maxlen * w, k + i * 6 * w, 6 * w * sizeof(float)) == 0 &&
                  memcmp(kv.values + i * maxlen * w, v + i * 6 * w, 6 * w * sizeof(float)) == 0);
    free(k);
    free(v);
    free(k0);
    free(v0);
    tb_kv_cache_free(&kv);
}
END_TEST

START_TEST(test_kv_cache_errors)
{
    const size_t b = 2, hkv = 2, d = 3, w = hkv * d, h = 4;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_kv_cache kv;
    /* init */
    CHECK_ERR(ctx, tb_kv_cache_init(NULL, &kv, b, 4, hkv, d), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_init(&ctx, NULL, b, 4, hkv, d), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_init(&ctx, &kv, 0, 4, hkv, d), TB_ERR_INVALID_ARG);
    ck_assert_ptr_null(kv.storage);
    CHECK_ERR(ctx, tb_kv_cache_init(&ctx, &kv, b, 0, hkv, d), TB_ERR_INVALID_ARG);
    CHECK_ERR(ctx, tb_kv_cache_init(&ctx, &kv, b, 4, 0, d), TB_ERR_INVALID_ARG);
    CHECK_ERR(ctx, tb_kv_cache_init(&ctx, &kv, b, 4, hkv, 0), TB_ERR_INVALID_ARG);
    CHECK_ERR(ctx, tb_kv_cache_init(&ctx, &kv, b, SIZE_MAX / 2, hkv, d), TB_ERR_OVERFLOW);
    ck_assert_ptr_null(kv.storage);

    float *q = tbt_alloc(b * 3 * h * d * sizeof(float)), *o = tbt_alloc(b * 3 * h * d * sizeof(float));
    float *k = tbt_alloc(b * 3 * (w + 1) * sizeof(float)), *v = tbt_alloc(b * 3 * w * sizeof(float));
    tbt_fill_uniform(q, b * 3 * h * d, -1, 1, 81);
    tbt_fill_uniform(k, b * 3 * (w + 1), -1, 1, 82);
    tbt_fill_uniform(v, b * 3 * w, -1, 1, 83);
    tb_tensor qt = tb_tensor_3d(q, b, 3, h * d), ot = tb_tensor_3d(o, b, 3, h * d);
    tb_tensor kt = tb_tensor_3d(k, b, 3, w), vt = tb_tensor_3d(v, b, 3, w);
    tb_heads qh = {&qt, 0}, kh = {&kt, 0}, vh = {&vt, 0};
    tb_attention_config cfg = tb_attention_default_config(h, d);
    cfg.n_kv_heads = hkv;

    /* An uninitialised (zeroed) cache. */
    tb_kv_cache zero;
    memset(&zero, 0, sizeof zero);
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &zero, &kh, &vh), TB_ERR_STATE);
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &zero, &cfg, NULL, &qh, &ot), TB_ERR_STATE);

    CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv, b, 8, hkv, d));
    /* Empty cache: nothing to attend to. */
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, NULL, &qh, &ot), TB_ERR_STATE);
    /* append: NULLs and shapes; nothing appended on error. */
    CHECK_ERR(ctx, tb_kv_cache_append(NULL, &kv, &kh, &vh), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, NULL, &kh, &vh), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, NULL, &vh), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &kh, NULL), TB_ERR_NULL_ARG);
    tb_tensor bad = tb_tensor_3d(k, 1, 3, w); /* batch 1, cache has 2 */
    tb_heads badh = {&bad, 0};
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &badh, &vh), TB_ERR_SHAPE);
    bad = tb_tensor_3d(k, b, 3, w - 1); /* too narrow for 2 heads x 3 */
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &badh, &vh), TB_ERR_SHAPE);
    bad = tb_tensor_3d(k, b, 3, w + 1); /* wide enough, but offset 2 does not fit */
    badh.offset = 2;
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &badh, &vh), TB_ERR_SHAPE);
    badh.offset = 0;
    bad = tb_tensor_3d(k, b, 2, w); /* 2 key positions, 3 value positions */
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &badh, &vh), TB_ERR_SHAPE);
    bad = tb_tensor_2d(k, b * 3, w);
    CHECK_ERR(ctx, tb_kv_cache_append(&ctx, &kv, &badh, &vh), TB_ERR_SHAPE);
    ck_assert_uint_eq(kv.len, 0);
    CHECK_OK(ctx, tb_kv_cache_append(&ctx, &kv, &kh, &vh));
    ck_assert_uint_eq(kv.len, 3);

    /* attend: mismatched heads / head_dim; q shape; key lengths range. */
    fill_sentinel(o, b * 3 * h * d);
    CHECK_ERR(ctx, tb_kv_cache_attend(NULL, &kv, &cfg, NULL, &qh, &ot), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, NULL, &cfg, NULL, &qh, &ot), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, NULL, NULL, &qh, &ot), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, NULL, NULL, &ot), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, NULL, &qh, NULL), TB_ERR_NULL_ARG);
    tb_attention_config c2 = cfg;
    c2.n_kv_heads = 4; /* the cache holds 2 */
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &c2, NULL, &qh, &ot), TB_ERR_SHAPE);
    c2.n_kv_heads = 0; /* = H = 4 */
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &c2, NULL, &qh, &ot), TB_ERR_SHAPE);
    c2 = tb_attention_default_config(h, d - 1); /* D = 2; the cache has 3 */
    c2.n_kv_heads = hkv;
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &c2, NULL, &qh, &ot), TB_ERR_SHAPE);
    tb_tensor q1 = tb_tensor_3d(q, 1, 3, h * d);
    tb_heads q1h = {&q1, 0};
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, NULL, &q1h, &ot), TB_ERR_SHAPE);
    tb_tensor o2 = tb_tensor_3d(o, b, 2, h * d);
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, NULL, &qh, &o2), TB_ERR_SHAPE);
    const int32_t too_long[2] = {3, 4}, negative[2] = {-1, 3}, ok_lens[2] = {0, 3};
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, too_long, &qh, &ot), TB_ERR_INVALID_ARG);
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, negative, &qh, &ot), TB_ERR_INVALID_ARG);
    assert_untouched(o, b * 3 * h * d, "attend output");
    /* Length 0 is in range: batch row 0 sees no key and gets zeros. */
    CHECK_OK(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, ok_lens, &qh, &ot));
    ck_assert(tbt_max_abs_f(o, 3 * h * d) == 0.0);
    ck_assert(tbt_max_abs_f(o + 3 * h * d, 3 * h * d) > 0.0);
    /* After reset the cache is empty again. */
    tb_kv_cache_reset(&kv);
    CHECK_ERR(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, NULL, &qh, &ot), TB_ERR_STATE);
    free(q);
    free(o);
    free(k);
    free(v);
    tb_kv_cache_free(&kv);
}
END_TEST

/* ======================================================================
 * Error paths of the module
 * ==================================================================== */

START_TEST(test_mha_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, 3);
    tb_mha m;
    /* init */
    CHECK_ERR(ctx, tb_mha_init(NULL, &m, 12, 3, 1, &rng), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_init(&ctx, NULL, 12, 3, 1, &rng), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_init(&ctx, &m, 12, 3, 1, NULL), TB_ERR_NULL_ARG);
    ck_assert_ptr_null(m.storage);
    CHECK_ERR(ctx, tb_mha_init(&ctx, &m, 10, 3, 1, &rng), TB_ERR_INVALID_ARG);
    ck_assert_ptr_null(m.storage);
    ck_assert_ptr_null(m.out_proj.storage);
    CHECK_ERR(ctx, tb_mha_init(&ctx, &m, 0, 1, 1, &rng), TB_ERR_INVALID_ARG);
    CHECK_ERR(ctx, tb_mha_init(&ctx, &m, 12, 0, 1, &rng), TB_ERR_INVALID_ARG);
    CHECK_ERR(ctx, tb_mha_init(&ctx, &m, 12, 24, 1, &rng), TB_ERR_INVALID_ARG);
    CHECK_ERR(ctx, tb_mha_init(&ctx, &m, (size_t)1 << 40, 1, 1, &rng), TB_ERR_OVERFLOW);
    ck_assert_ptr_null(m.storage);

    /* An uninitialised module. */
    tb_mha zero;
    memset(&zero, 0, sizeof zero);
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_ERR(ctx, tb_mha_params(&ctx, &zero, NULL, &list), TB_ERR_STATE);

    const size_t c = 12, h = 3, b = 2, t = 5, tk = 4;
    CHECK_OK(ctx, tb_mha_init(&ctx, &m, c, h, 1, &rng));
    CHECK_ERR(ctx, tb_mha_params(&ctx, NULL, NULL, &list), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_params(&ctx, &m, NULL, NULL), TB_ERR_NULL_ARG);
    ck_assert_uint_eq(list.count, 0);
    tb_param_list_free(&list);

    /* mem and dmem have room for t positions; Tk = tk = 4 unless noted. */
    float *x = tbt_alloc(b * t * c * sizeof(float)), *mem = tbt_alloc(b * t * c * sizeof(float));
    float *y = tbt_alloc(b * t * c * sizeof(float)), *dy = tbt_alloc(b * t * c * sizeof(float));
    float *dx = tbt_alloc(b * t * c * sizeof(float)), *dmem = tbt_alloc(b * t * c * sizeof(float));
    tbt_fill_uniform(x, b * t * c, -1, 1, 91);
    tbt_fill_uniform(mem, b * t * c, -1, 1, 92);
    tbt_fill_uniform(dy, b * t * c, -1, 1, 93);
    tb_tensor xt = tb_tensor_3d(x, b, t, c), memt = tb_tensor_3d(mem, b, tk, c);
    tb_tensor yt = tb_tensor_3d(y, b, t, c), dyt = tb_tensor_3d(dy, b, t, c);
    tb_tensor dxt = tb_tensor_3d(dx, b, t, c), dmemt = tb_tensor_3d(dmem, b, tk, c);
    size_t self_bytes, cross_bytes, big_bytes;
    CHECK_OK(ctx, tb_mha_cache_size(&m, b, t, t, &self_bytes));
    CHECK_OK(ctx, tb_mha_cache_size(&m, b, t, tk, &cross_bytes));
    CHECK_ERR(ctx, tb_mha_cache_size(NULL, b, t, t, &self_bytes), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_cache_size(&m, b, t, t, NULL), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_cache_size(&m, SIZE_MAX / 4, t, t, &big_bytes), TB_ERR_OVERFLOW);
    big_bytes = 2 * self_bytes + 2 * cross_bytes + 64;
    void *cache = tbt_alloc(big_bytes);

    /* forward */
    fill_sentinel(y, b * t * c);
    CHECK_ERR(ctx, tb_mha_forward(NULL, &m, TB_MODE_TRAINING, NULL, &xt, NULL, &yt, cache,
                                  big_bytes),
              TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_forward(&ctx, NULL, TB_MODE_TRAINING, NULL, &xt, NULL, &yt, cache,
                                  big_bytes),
              TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, NULL, NULL, &yt, cache,
                                  big_bytes),
              TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, NULL, NULL, cache,
                                  big_bytes),
              TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, (tb_mode)2, NULL, &xt, NULL, &yt, cache, big_bytes),
              TB_ERR_INVALID_ARG); /* unknown mode (a NULL cache is inference: see below) */
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &zero, TB_MODE_TRAINING, NULL, &xt, NULL, &yt, cache,
                                  big_bytes),
              TB_ERR_STATE);
    tb_tensor bad = tb_tensor_2d(x, b * t, c);
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &bad, NULL, &yt, cache,
                                  big_bytes),
              TB_ERR_SHAPE);
    bad = tb_tensor_3d(x, b, t * 2, c / 2); /* last dimension != C */
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &bad, NULL, &yt, cache,
                                  big_bytes),
              TB_ERR_SHAPE);
    bad = tb_tensor_3d(y, b, t - 1, c); /* y has the wrong T */
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, NULL, &bad, cache,
                                  big_bytes),
              TB_ERR_SHAPE);
    bad = tb_tensor_3d(mem, 1, tk, c); /* mem has another batch size */
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, &bad, &yt, cache,
                                  big_bytes),
              TB_ERR_SHAPE);
    bad = tb_tensor_3d(mem, b, tk * 2, c / 2);
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, &bad, &yt, cache,
                                  big_bytes),
              TB_ERR_SHAPE);
    CHECK_ERR(ctx,
              tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, NULL, &xt, cache, big_bytes),
              TB_ERR_INVALID_ARG); /* y overlaps x */
    const int32_t too_long[2] = {5, 6};
    tb_attention_mask mask;
    memset(&mask, 0, sizeof mask);
    mask.key_lengths = too_long;
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, &mask, &xt, NULL, &yt, cache,
                                  big_bytes),
              TB_ERR_INVALID_ARG);
    /* Small or misaligned cache. */
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, NULL, &yt, cache,
                                  self_bytes - 1),
              TB_ERR_BUFFER_TOO_SMALL);
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, &memt, &yt, cache,
                                  cross_bytes - 1),
              TB_ERR_BUFFER_TOO_SMALL);
    CHECK_ERR(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, NULL, &yt,
                                  (char *)cache + 2, self_bytes + 8),
              TB_ERR_INVALID_ARG);
    assert_untouched(y, b * t * c, "y");

    /* backward: a cache never filled, filled for another shape, or for
     * self- instead of cross-attention (and the reverse). */
    memset(cache, 0, big_bytes);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, NULL, &dyt, cache, big_bytes, &dxt, NULL),
              TB_ERR_STATE);
    tb_tensor x3 = tb_tensor_3d(x, b, 3, c), y3 = tb_tensor_3d(y, b, 3, c);
    CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &x3, NULL, &y3, cache,
                                 big_bytes));
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, NULL, &dyt, cache, big_bytes, &dxt, NULL),
              TB_ERR_STATE);
    tb_tensor x1 = tb_tensor_3d(x, 1, t, c), y1 = tb_tensor_3d(y, 1, t, c);
    CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &x1, NULL, &y1, cache,
                                 big_bytes));
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, NULL, &dyt, cache, big_bytes, &dxt, NULL),
              TB_ERR_STATE);
    tb_tensor mem5 = tb_tensor_3d(mem, b, t, c), dmem5 = tb_tensor_3d(dmem, b, t, c);
    CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, NULL, &yt, cache,
                                 big_bytes));
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &mem5, &dyt, cache, big_bytes, &dxt,
                                   &dmem5),
              TB_ERR_STATE); /* self cache, cross call */
    CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, &memt, &yt, cache,
                                 big_bytes));
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, NULL, &dyt, cache, big_bytes, &dxt, NULL),
              TB_ERR_STATE); /* cross cache, self call */
    tb_tensor mem3 = tb_tensor_3d(mem, b, 3, c), dmem3 = tb_tensor_3d(dmem, b, 3, c);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &mem3, &dyt, cache, big_bytes, &dxt,
                                   &dmem3),
              TB_ERR_STATE); /* cross cache for Tk = 4, call with Tk = 3 */
    /* Cross backward with the right cache works; then the other errors. */
    CHECK_OK(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &dyt, cache, big_bytes, &dxt,
                                  &dmemt));
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &dyt, cache, big_bytes, &dxt,
                                   NULL),
              TB_ERR_NULL_ARG); /* dmem is required for cross-attention */
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &dyt, cache, cross_bytes - 1,
                                   &dxt, &dmemt),
              TB_ERR_BUFFER_TOO_SMALL);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &dyt, NULL, big_bytes, &dxt,
                                   &dmemt),
              TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, NULL, cache, big_bytes, &dxt,
                                   &dmemt),
              TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &dyt, cache, big_bytes, NULL,
                                   &dmemt),
              TB_ERR_NULL_ARG);
    bad = tb_tensor_3d(dx, b, t - 1, c);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &dyt, cache, big_bytes, &bad,
                                   &dmemt),
              TB_ERR_SHAPE);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &bad, cache, big_bytes, &dxt,
                                   &dmemt),
              TB_ERR_SHAPE);
    bad = tb_tensor_3d(dmem, b, tk - 1, c);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &dyt, cache, big_bytes, &dxt,
                                   &bad),
              TB_ERR_SHAPE);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &zero, NULL, &xt, &memt, &dyt, cache, big_bytes, &dxt,
                                   &dmemt),
              TB_ERR_STATE);
    CHECK_ERR(ctx, tb_mha_backward(NULL, &m, NULL, &xt, &memt, &dyt, cache, big_bytes, &dxt,
                                   &dmemt),
              TB_ERR_NULL_ARG);
    /* A misaligned cache is refused (see the report: BUFFER_TOO_SMALL
     * here, INVALID_ARG in tb_mha_forward and the core). */
    {
        tb_status st = tb_mha_backward(&ctx, &m, NULL, &xt, &memt, &dyt, (char *)cache + 2,
                                       big_bytes - 8, &dxt, &dmemt);
        ck_assert_msg(st == TB_ERR_INVALID_ARG || st == TB_ERR_BUFFER_TOO_SMALL,
                      "misaligned cache: %s", tb_strerror(st));
    }

    /* decode */
    tb_kv_cache kv, kv_heads, kv_batch, kv_small;
    CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv, b, 16, h, c / h));
    CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv_heads, b, 16, 2 * h, c / (2 * h))); /* same width */
    CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv_batch, 1, 16, h, c / h));
    CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv_small, b, t - 1, h, c / h));
    fill_sentinel(y, b * t * c);
    CHECK_ERR(ctx, tb_mha_decode(NULL, &m, &kv, &xt, &yt), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, NULL, &kv, &xt, &yt), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, NULL, &xt, &yt), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv, NULL, &yt), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv, &xt, NULL), TB_ERR_NULL_ARG);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &zero, &kv, &xt, &yt), TB_ERR_STATE);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv_heads, &xt, &yt), TB_ERR_SHAPE);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv_batch, &xt, &yt), TB_ERR_SHAPE);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv_small, &xt, &yt), TB_ERR_BUFFER_TOO_SMALL);
    bad = tb_tensor_3d(y, b, t - 1, c);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv, &xt, &bad), TB_ERR_SHAPE);
    bad = tb_tensor_3d(x, b, t * 2, c / 2);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv, &bad, &yt), TB_ERR_SHAPE);
    CHECK_ERR(ctx, tb_mha_decode(&ctx, &m, &kv, &xt, &xt), TB_ERR_INVALID_ARG);
    ck_assert_uint_eq(kv.len, 0);
    ck_assert_uint_eq(kv_heads.len, 0);
    ck_assert_uint_eq(kv_batch.len, 0);
    ck_assert_uint_eq(kv_small.len, 0);
    assert_untouched(y, b * t * c, "decode y");
    tb_kv_cache_free(&kv);
    tb_kv_cache_free(&kv_heads);
    tb_kv_cache_free(&kv_batch);
    tb_kv_cache_free(&kv_small);

    free(cache);
    free(x);
    free(mem);
    free(y);
    free(dy);
    free(dx);
    free(dmem);
    tb_mha_free(&m);
}
END_TEST

/* ======================================================================
 * Determinism across thread counts
 * ==================================================================== */

typedef struct run_out {
    float *y, *dx, *dmem, *gw, *gb, *gow, *gob, *yd;
} run_out;

static void free_run(run_out *r)
{
    free(r->y);
    free(r->dx);
    free(r->dmem);
    free(r->gw);
    free(r->gb);
    free(r->gow);
    free(r->gob);
    free(r->yd);
}

static float *dup_floats(const float *x, size_t n)
{
    float *p = tbt_alloc(n * sizeof(float));
    memcpy(p, x, n * sizeof(float));
    return p;
}

/* Forward + backward (+ decode in pieces for self-attention) with the
 * given thread count; the outputs are copied into r. */
static void run_threads(int threads, size_t b, size_t t, size_t tk, size_t c, size_t h, int cross,
                        run_out *r)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    tb_mha m;
    init_module(&ctx, &m, c, h, 1, 3.0f, 77);
    m.attn.causal = 1;
    const size_t nx = b * t * c, nm = b * tk * c;
    float *x = tbt_alloc(nx * sizeof(float)), *dy = tbt_alloc(nx * sizeof(float));
    float *mem = cross ? tbt_alloc(nm * sizeof(float)) : NULL;
    tbt_fill_uniform(x, nx, -1, 1, 78);
    tbt_fill_uniform(dy, nx, -1, 1, 79);
    if (cross)
        tbt_fill_uniform(mem, nm, -1, 1, 80);
    r->y = tbt_nan_buffer(nx);
    r->dx = tbt_nan_buffer(nx);
    r->dmem = cross ? tbt_nan_buffer(nm) : NULL;
    tb_tensor xt = tb_tensor_3d(x, b, t, c), dyt = tb_tensor_3d(dy, b, t, c);
    tb_tensor yt = tb_tensor_3d(r->y, b, t, c), dxt = tb_tensor_3d(r->dx, b, t, c);
    tb_tensor memt = cross ? tb_tensor_3d(mem, b, tk, c) : xt;
    tb_tensor dmemt = cross ? tb_tensor_3d(r->dmem, b, tk, c) : xt;
    size_t bytes;
    void *cache = alloc_cache(&ctx, &m, b, t, cross ? tk : t, &bytes);
    CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, cross ? &memt : NULL, &yt,
                                 cache, bytes));
    CHECK_OK(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, cross ? &memt : NULL, &dyt, cache, bytes,
                                  &dxt, cross ? &dmemt : NULL));
    r->gw = dup_floats(m.in_proj_weight.grad, 3 * c * c);
    r->gb = dup_floats(m.in_proj_bias.grad, 3 * c);
    r->gow = dup_floats(m.out_proj.weight.grad, c * c);
    r->gob = dup_floats(m.out_proj.bias.grad, c);
    r->yd = NULL;
    if (!cross) {
        /* Decode 40 + 1 + 23 positions; must equal the forward too. */
        r->yd = tbt_nan_buffer(nx);
        tb_kv_cache kv;
        CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv, b, t, h, c / h));
        static const size_t pieces[] = {40, 1, 23};
        size_t pos = 0;
        for (size_t k = 0; k < ARRAY_LEN(pieces); k++) {
            const size_t n = pieces[k];
            float *xp = gather_rows(x, b, t, c, pos, n), *yp = tbt_nan_buffer(b * n * c);
            tb_tensor xpt = tb_tensor_3d(xp, b, n, c), ypt = tb_tensor_3d(yp, b, n, c);
            CHECK_OK(ctx, tb_mha_decode(&ctx, &m, &kv, &xpt, &ypt));
            for (size_t i = 0; i < b; i++)
                memcpy(r->yd + (i * t + pos) * c, yp + i * n * c, n * c * sizeof(float));
            pos += n;
            free(xp);
            free(yp);
        }
        ck_assert_uint_eq(pos, t);
        tb_kv_cache_free(&kv);
    }
    free(cache);
    free(x);
    free(dy);
    free(mem);
    tb_mha_free(&m);
}

static void check_threads(size_t b, size_t t, size_t tk, size_t c, size_t h, int cross)
{
    run_out r1, rn;
    run_threads(1, b, t, tk, c, h, cross, &r1);
    if (!cross)
        assert_bitwise("decode vs forward (1 thread)", r1.yd, r1.y, b * t * c);
    for (int threads = 2; threads <= 3; threads++) {
        run_threads(threads, b, t, tk, c, h, cross, &rn);
        char what[96];
#define SAME(field, n)                                                                   \
    do {                                                                                 \
        snprintf(what, sizeof what, "%s, %d threads vs 1: " #field, cross ? "cross" : "self", \
                 threads);                                                               \
        assert_bitwise(what, rn.field, r1.field, (n));                                   \
    } while (0)
        SAME(y, b * t * c);
        SAME(dx, b * t * c);
        if (cross)
            SAME(dmem, b * tk * c);
        SAME(gw, 3 * c * c);
        SAME(gb, 3 * c);
        SAME(gow, c * c);
        SAME(gob, c);
        if (!cross)
            SAME(yd, b * t * c);
#undef SAME
        free_run(&rn);
    }
    free_run(&r1);
}

/* Training and inference (docs/conventions.md): a NULL cache means no
 * backward follows and gives the same y bit for bit; TB_MODE_INFERENCE
 * ignores the mask's attention dropout, TB_MODE_TRAINING applies it. */
START_TEST(test_mha_forward_modes_and_no_cache)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 5);
    tb_mha m;
    const size_t c = 8, h = 2, b = 2, t = 6, tk = 5;
    CHECK_OK(ctx, tb_mha_init(&ctx, &m, c, h, 1, &rng));
    m.attn.causal = 1;
    float *x = tbt_alloc(b * t * c * sizeof(float)), *mem = tbt_alloc(b * tk * c * sizeof(float));
    float *y1 = tbt_alloc(b * t * c * sizeof(float)), *y2 = tbt_alloc(b * t * c * sizeof(float));
    float *y3 = tbt_alloc(b * t * c * sizeof(float));
    tbt_fill_uniform(x, b * t * c, -1, 1, 7);
    tbt_fill_uniform(mem, b * tk * c, -1, 1, 8);
    tb_tensor xt = tb_tensor_3d(x, b, t, c), memt = tb_tensor_3d(mem, b, tk, c);
    tb_tensor t1 = tb_tensor_3d(y1, b, t, c), t2 = tb_tensor_3d(y2, b, t, c);
    tb_tensor t3 = tb_tensor_3d(y3, b, t, c);
    size_t bytes;
    CHECK_OK(ctx, tb_mha_cache_size(&m, b, t, t, &bytes));
    void *cache = tbt_alloc(bytes);
    tb_attention_mask none, drop;
    memset(&none, 0, sizeof none);
    memset(&drop, 0, sizeof drop);
    CHECK_OK(ctx, tb_attention_dropout_draw(&ctx, &m.attn, &drop, &rng, 0.5f, b, t, t));
    const size_t n = b * t * c * sizeof(float);
    for (int cross = 0; cross < 2; cross++) {
        const tb_tensor *mt = cross ? &memt : NULL;
        if (cross) {
            CHECK_OK(ctx, tb_mha_cache_size(&m, b, t, tk, &bytes));
            free(cache);
            cache = tbt_alloc(bytes);
            CHECK_OK(ctx, tb_attention_dropout_draw(&ctx, &m.attn, &drop, &rng, 0.5f, b, t, tk));
        }
        for (int mode = 0; mode < 2; mode++) {
            const tb_mode md = mode ? TB_MODE_TRAINING : TB_MODE_INFERENCE;
            CHECK_OK(ctx, tb_mha_forward(&ctx, &m, md, &drop, &xt, mt, &t1, cache, bytes));
            CHECK_OK(ctx, tb_mha_forward(&ctx, &m, md, &drop, &xt, mt, &t2, NULL, 0));
            ck_assert_msg(memcmp(y1, y2, n) == 0, "cross %d mode %d: a NULL cache changed y",
                          cross, mode);
        }
        /* Inference ignores the dropout in the mask; training applies it. */
        CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_INFERENCE, &none, &xt, mt, &t3, NULL, 0));
        CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_INFERENCE, &drop, &xt, mt, &t1, NULL, 0));
        ck_assert(memcmp(y1, y3, n) == 0);
        CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, &drop, &xt, mt, &t1, NULL, 0));
        ck_assert_msg(memcmp(y1, y3, n) != 0, "training with dropout 0.5 changed nothing");
    }
    /* Backward needs the cache. */
    float *dx = tbt_alloc(n);
    tb_tensor dxt = tb_tensor_3d(dx, b, t, c);
    CHECK_ERR(ctx, tb_mha_backward(&ctx, &m, &none, &xt, NULL, &t3, NULL, bytes, &dxt, NULL),
              TB_ERR_NULL_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "tb_mha_forward"));
    free(x), free(mem), free(y1), free(y2), free(y3), free(dx), free(cache);
    tb_mha_free(&m);
}
END_TEST

START_TEST(test_mha_threads_bitwise)
{
    check_threads(2, 64, 64, 64, 4, 0);
    check_threads(2, 64, 48, 64, 4, 1);
}
END_TEST

/* ======================================================================
 * Garbage at masked positions (see test_attention.c for the core)
 *
 * Module level: a row of x or mem that the masks hide entirely -- a key no
 * query sees, whose own query (self-attention) sees nothing, or a query
 * (cross-attention) that sees nothing -- may hold garbage (padding). A
 * clean run and runs with NaN, +Inf, -Inf or 1e30 in every such row must
 * agree BITWISE on y, dx, dmem and every parameter gradient, with dx and
 * dmem exactly 0 at those rows. Decoding: keys that no new query sees
 * (before the sliding window; a later key of the same piece under the
 * causal mask; past a key length) may hold garbage in the KV cache, and
 * the outputs of the queries that do not see them must not change.
 * ==================================================================== */

enum mha_garbage_form {
    MG_LEFT_PAD,       /* self, causal, left padding by key_valid */
    MG_EMPTY_ROW,      /* self, key lengths (T - T/4, 0): batch row 1 is all padding */
    MG_BIAS_ISOLATED,  /* self, causal window, -inf bias rows and columns t % 5 == 3 */
    MG_CROSS_VALID,    /* cross, scattered key_valid and key lengths */
    MG_CROSS_CAUSAL,   /* cross, causal (Tq > Tk: leading queries see nothing), lengths */
    MG_CROSS_BIAS,     /* cross, -inf bias rows i % 4 == 1 and columns j % 3 == 2 */
    MG_COUNT
};

static const char *const mha_garbage_names[MG_COUNT] = {
    "left_pad_causal", "empty_batch_row", "bias_isolated",
    "cross_key_valid", "cross_causal",    "cross_bias"};

/* One module case: the shapes, the masks (in the caller's buffers) and
 * which rows of x and mem get garbage. */
typedef struct mha_garbage {
    size_t c, h, b, tq, tk;
    int cross;
    tb_attention_mask mask;
    tbt_attn_masks vis;
    unsigned char *gx, *gmem; /* (B, Tq), (B, Tk): 1 = garbage row */
    size_t n_gx, n_gmem;
} mha_garbage;

static void plan_mha_garbage(mha_garbage *g)
{
    const size_t b = g->b, tq = g->tq, tk = g->tk;
    g->gx = tbt_alloc(b * tq), g->gmem = tbt_alloc(b * tk);
    for (size_t r = 0; r < b; r++) {
        for (size_t i = 0; i < tq; i++) {
            int sees = 0;
            for (size_t j = 0; j < tk && !sees; j++)
                sees = tbt_attn_visible(&g->vis, r, i, j);
            g->gx[r * tq + i] = !sees;
        }
        for (size_t j = 0; j < tk; j++) {
            int seen = 0;
            for (size_t i = 0; i < tq && !seen; i++)
                seen = tbt_attn_visible(&g->vis, r, i, j);
            g->gmem[r * tk + j] = !seen;
        }
    }
    /* Self-attention: one row is both; it may hold garbage only when it is
     * hidden both ways. */
    for (size_t k = 0; k < b * tq && !g->cross; k++)
        g->gx[k] = g->gx[k] && g->gmem[k];
    g->n_gx = g->n_gmem = 0;
    for (size_t k = 0; k < b * tq; k++)
        g->n_gx += g->gx[k];
    for (size_t k = 0; k < b * tk && g->cross; k++)
        g->n_gmem += g->gmem[k];
}

static void make_mha_garbage(mha_garbage *g, int form, size_t c, size_t h, size_t tq, size_t tk,
                             int32_t *lengths, uint8_t *valid, float *bias)
{
    memset(g, 0, sizeof *g);
    g->c = c, g->h = h, g->b = 2, g->tq = tq, g->tk = tk;
    g->cross = form >= MG_CROSS_VALID;
    int causal = 0;
    size_t window = 0;
    switch (form) {
    case MG_LEFT_PAD:
        causal = 1;
        for (size_t j = 0; j < tk; j++)
            valid[j] = j >= tk / 3, valid[tk + j] = j >= (2 * tk) / 3;
        g->mask.key_valid = valid;
        break;
    case MG_EMPTY_ROW:
        lengths[0] = (int32_t)(tk - tk / 4), lengths[1] = 0;
        g->mask.key_lengths = lengths;
        break;
    case MG_BIAS_ISOLATED:
    case MG_CROSS_BIAS:
        tbt_fill_uniform(bias, tq * tk, -1.0f, 1.0f, 801);
        for (size_t i = 0; i < tq; i++)
            for (size_t j = 0; j < tk; j++)
                if (form == MG_BIAS_ISOLATED ? (i % 5 == 3 || j % 5 == 3)
                                             : (i % 4 == 1 || j % 3 == 2))
                    bias[i * tk + j] = -INFINITY;
        g->mask.bias = bias;
        if (form == MG_BIAS_ISOLATED)
            causal = 1, window = tk / 3 + 2;
        break;
    case MG_CROSS_VALID:
        for (size_t j = 0; j < tk; j++)
            valid[j] = j % 4 != 1 || j == 0, valid[tk + j] = j % 2 == 0;
        lengths[0] = (int32_t)tk, lengths[1] = (int32_t)(tk - tk / 3);
        g->mask.key_valid = valid, g->mask.key_lengths = lengths;
        break;
    case MG_CROSS_CAUSAL:
        causal = 1;
        lengths[0] = (int32_t)(tk - 1), lengths[1] = (int32_t)(tk / 2 + 1);
        g->mask.key_lengths = lengths;
        break;
    default:
        break;
    }
    const tbt_attn_masks vis = {tq, tk, causal, window, g->mask.key_lengths, g->mask.key_valid,
                                g->mask.bias};
    g->vis = vis;
    plan_mha_garbage(g);
}

/* Forward and backward of the module (fixed weights and inputs); with
 * garbage != NULL, *garbage is first written into every garbage row. */
static run_out run_mha_garbage(const mha_garbage *g, int threads, const float *garbage)
{
    const size_t c = g->c, b = g->b, tq = g->tq, tk = g->tk;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    tb_mha m;
    init_module(&ctx, &m, c, g->h, 1, 3.0f, 900 + c);
    m.attn.causal = g->vis.causal;
    m.attn.window = g->vis.window;
    const size_t nx = b * tq * c, nm = b * tk * c;
    float *x = tbt_alloc(nx * sizeof(float));
    float *mem = g->cross ? tbt_alloc(nm * sizeof(float)) : NULL;
    float *dy = tbt_alloc(nx * sizeof(float));
    tbt_fill_uniform(x, nx, -1.0f, 1.0f, 910);
    tbt_fill_uniform(dy, nx, -1.0f, 1.0f, 911);
    if (mem)
        tbt_fill_uniform(mem, nm, -1.0f, 1.0f, 912);
    for (size_t k = 0; k < b * tq && garbage; k++)
        if (g->gx[k])
            for (size_t e = 0; e < c; e++)
                x[k * c + e] = *garbage;
    for (size_t k = 0; k < b * tk && garbage && mem; k++)
        if (g->gmem[k])
            for (size_t e = 0; e < c; e++)
                mem[k * c + e] = *garbage;
    run_out r;
    memset(&r, 0, sizeof r);
    r.y = tbt_nan_buffer(nx), r.dx = tbt_nan_buffer(nx);
    r.dmem = mem ? tbt_nan_buffer(nm) : NULL;
    tb_tensor xt = tb_tensor_3d(x, b, tq, c), yt = tb_tensor_3d(r.y, b, tq, c);
    tb_tensor dyt = tb_tensor_3d(dy, b, tq, c), dxt = tb_tensor_3d(r.dx, b, tq, c);
    tb_tensor mt = tb_tensor_3d(mem ? mem : x, b, tk, c);
    tb_tensor dmt = tb_tensor_3d(mem ? r.dmem : r.dx, b, tk, c);
    size_t bytes;
    void *cache = alloc_cache(&ctx, &m, b, tq, tk, &bytes);
    CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, &g->mask, &xt, mem ? &mt : NULL, &yt,
                                 cache, bytes));
    CHECK_OK(ctx, tb_mha_backward(&ctx, &m, &g->mask, &xt, mem ? &mt : NULL, &dyt, cache, bytes,
                                  &dxt, mem ? &dmt : NULL));
    r.gw = dup_floats(m.in_proj_weight.grad, 3 * c * c);
    r.gb = dup_floats(m.in_proj_bias.grad, 3 * c);
    r.gow = dup_floats(m.out_proj.weight.grad, c * c);
    r.gob = dup_floats(m.out_proj.bias.grad, c);
    free(x), free(mem), free(dy), free(cache);
    tb_mha_free(&m);
    return r;
}

/* Rows of x (n floats each) flagged in `rows` are exactly zero. */
static void assert_zero_rows(const char *what, const float *x, const unsigned char *rows,
                             size_t n_rows, size_t n)
{
    for (size_t k = 0; k < n_rows; k++)
        if (rows[k])
            for (size_t e = 0; e < n; e++)
                if (x[k * n + e] != 0.0f)
                    ck_abort_msg("%s row %zu (garbage) element %zu = %g, expected 0", what, k, e,
                                 (double)x[k * n + e]);
}

START_TEST(test_mha_garbage_rows)
{
    static const float values[] = {NAN, INFINITY, -INFINITY, 1e30f};
    static const char *const names[] = {"NaN", "+Inf", "-Inf", "1e30"};
    static const size_t ch[3][2] = {{6, 2}, {64, 1}, {3, 3}}; /* D = 3, 64, 1 */
    static const size_t self_t[][2] = {{17, 17}, {65, 65}, {3, 3}};
    static const size_t cross_t[][2] = {{17, 65}, {65, 17}, {3, 17}, {1, 3}};
    const int form = _i;
    const int cross = form >= MG_CROSS_VALID;
    const size_t n_t = cross ? ARRAY_LEN(cross_t) : ARRAY_LEN(self_t);
    size_t gx = 0, gm = 0, runs = 0;
    for (size_t s = 0; s < n_t; s++)
        for (size_t v = 0; v < 3; v++) {
            const size_t tq = cross ? cross_t[s][0] : self_t[s][0];
            const size_t tk = cross ? cross_t[s][1] : self_t[s][1];
            const size_t c = ch[(s + v) % 3][0], h = ch[(s + v) % 3][1];
            int32_t lengths[2];
            uint8_t *valid = tbt_alloc(2 * tk);
            float *bias = tbt_alloc(tq * tk * sizeof(float));
            mha_garbage g;
            make_mha_garbage(&g, form, c, h, tq, tk, lengths, valid, bias);
            gx += g.n_gx, gm += g.n_gmem;
            for (int threads = 1; threads <= 2; threads++) {
                run_out clean = run_mha_garbage(&g, threads, NULL);
                for (size_t k = 0; k < ARRAY_LEN(values); k++) {
                    run_out dirty = run_mha_garbage(&g, threads, &values[k]);
                    char what[160];
#define MG_CMP(field, n)                                                                       \
    do {                                                                                       \
        snprintf(what, sizeof what, "mha garbage[%s c%zu h%zu tq%zu tk%zu, %s, %d threads] %s", \
                 mha_garbage_names[form], c, h, tq, tk, names[k], threads, #field);           \
        assert_bitwise(what, dirty.field, clean.field, (n));                                  \
    } while (0)
                    MG_CMP(y, 2 * tq * c);
                    MG_CMP(dx, 2 * tq * c);
                    if (cross)
                        MG_CMP(dmem, 2 * tk * c);
                    MG_CMP(gw, 3 * c * c);
                    MG_CMP(gb, 3 * c);
                    MG_CMP(gow, c * c);
                    MG_CMP(gob, c);
#undef MG_CMP
                    assert_zero_rows("dx", dirty.dx, g.gx, 2 * tq, c);
                    if (cross)
                        assert_zero_rows("dmem", dirty.dmem, g.gmem, 2 * tk, c);
                    free_run(&dirty);
                    runs++;
                }
                free_run(&clean);
            }
            free(g.gx), free(g.gmem), free(valid), free(bias);
        }
    ck_assert_msg(gx + gm > 0, "[%s] no garbage row: the case tests nothing",
                  mha_garbage_names[form]);
    printf("  check   mha garbage[%s]: %zu garbage x rows, %zu garbage mem rows over %zu "
           "shapes; %zu runs bitwise equal to the clean run (y, dx, dmem, every gradient)\n",
           mha_garbage_names[form], gx, gm, n_t * 3, runs);
    fflush(stdout);
}
END_TEST

/* Overwrite positions [p0, p1) of every batch row of the cache's keys and
 * values with `value`. */
static void spoil_cache(tb_kv_cache *kv, size_t p0, size_t p1, float value)
{
    const size_t w = kv->n_kv_heads * kv->head_dim;
    for (size_t r = 0; r < kv->batch; r++)
        for (size_t p = p0; p < p1; p++)
            for (size_t e = 0; e < w; e++) {
                kv->keys[(r * kv->max_len + p) * w + e] = value;
                kv->values[(r * kv->max_len + p) * w + e] = value;
            }
}

/* Decode `prefix` positions of x, then `n` more; with garbage, spoil the
 * cached positions [g0, g1) before the second call, or (spoil_last) put the
 * garbage into the x row of the last new position. Returns the second
 * call's y (B, n, C). */
static float *decode_garbage_run(const tb_mha *m, int threads, const float *x, size_t b, size_t t,
                                 size_t prefix, size_t n, const float *garbage, size_t g0,
                                 size_t g1, int spoil_last)
{
    const size_t c = m->embed_dim;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    tb_kv_cache kv;
    CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv, b, t, m->n_heads, c / m->n_heads));
    float *x1 = gather_rows(x, b, t, c, 0, prefix), *y1 = tbt_nan_buffer(b * prefix * c);
    tb_tensor x1t = tb_tensor_3d(x1, b, prefix, c), y1t = tb_tensor_3d(y1, b, prefix, c);
    CHECK_OK(ctx, tb_mha_decode(&ctx, m, &kv, &x1t, &y1t));
    if (garbage && g1 > g0)
        spoil_cache(&kv, g0, g1, *garbage);
    float *x2 = gather_rows(x, b, t, c, prefix, n), *y2 = tbt_nan_buffer(b * n * c);
    if (garbage && spoil_last)
        for (size_t r = 0; r < b; r++)
            for (size_t e = 0; e < c; e++)
                x2[(r * n + n - 1) * c + e] = *garbage;
    tb_tensor x2t = tb_tensor_3d(x2, b, n, c), y2t = tb_tensor_3d(y2, b, n, c);
    CHECK_OK(ctx, tb_mha_decode(&ctx, m, &kv, &x2t, &y2t));
    free(x1), free(y1), free(x2);
    tb_kv_cache_free(&kv);
    return y2;
}

START_TEST(test_mha_decode_garbage)
{
    static const float values[] = {NAN, INFINITY, -INFINITY, 1e30f};
    static const size_t ch[3][2] = {{6, 2}, {64, 1}, {3, 3}};
    /* (prefix, new positions, window) */
    static const size_t plan[][3] = {{17, 1, 3}, {17, 3, 5}, {65, 1, 17}, {64, 3, 9}, {3, 3, 1}};
    const size_t b = 2;
    size_t checks = 0;
    for (size_t s = 0; s < ARRAY_LEN(plan); s++) {
        const size_t prefix = plan[s][0], n = plan[s][1], w = plan[s][2], t = prefix + n;
        const size_t c = ch[s % 3][0], h = ch[s % 3][1];
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 1);
        tb_mha m;
        init_module(&ctx, &m, c, h, 1, 3.0f, 950 + s);
        m.attn.causal = 1;
        float *x = tbt_alloc(b * t * c * sizeof(float));
        tbt_fill_uniform(x, b * t * c, -1.0f, 1.0f, 960 + s);
        for (int threads = 1; threads <= 2; threads++)
            for (size_t k = 0; k < ARRAY_LEN(values); k++) {
                char what[160];
                /* Sliding window: the first new query (position prefix)
                 * sees keys from prefix + 1 - w on; the earlier ones are
                 * garbage. */
                m.attn.window = w;
                const size_t g1 = prefix + 1 > w ? prefix + 1 - w : 0;
                float *clean = decode_garbage_run(&m, threads, x, b, t, prefix, n, NULL, 0, 0, 0);
                float *dirty =
                    decode_garbage_run(&m, threads, x, b, t, prefix, n, &values[k], 0, g1, 0);
                snprintf(what, sizeof what,
                         "decode window %zu, cache positions 0..%zu garbage (%g), c%zu, "
                         "prefix %zu + %zu, %d threads",
                         w, g1, (double)values[k], c, prefix, n, threads);
                ck_assert_msg(g1 > 0, "%s: nothing spoiled", what);
                assert_bitwise(what, dirty, clean, b * n * c);
                free(clean), free(dirty);
                /* Causal within the new piece: the last new position's
                 * garbage key and value are future keys for the others. */
                m.attn.window = 0;
                if (n > 1) {
                    clean = decode_garbage_run(&m, threads, x, b, t, prefix, n, NULL, 0, 0, 0);
                    dirty = decode_garbage_run(&m, threads, x, b, t, prefix, n, &values[k], 0, 0,
                                               1);
                    snprintf(what, sizeof what,
                             "decode causal, last new position garbage (%g), c%zu, prefix %zu + "
                             "%zu, %d threads, earlier new positions",
                             (double)values[k], c, prefix, n, threads);
                    for (size_t r = 0; r < b; r++)
                        assert_bitwise(what, dirty + r * n * c, clean + r * n * c, (n - 1) * c);
                    free(clean), free(dirty);
                    checks++;
                }
                checks++;
            }
        free(x);
        tb_mha_free(&m);
    }
    printf("  check   mha decode garbage: %zu decodes with garbage outside the window or in "
           "a later key of the piece, bitwise equal to clean\n",
           checks);
}
END_TEST

/* tb_kv_cache_attend with key lengths: garbage in the stored positions past
 * each row's length (grouped-query heads). */
START_TEST(test_kv_cache_attend_garbage_past_lengths)
{
    const size_t b = 2, t = 70, h = 4, hkv = 2, d = 3, cq = h * d, ckv = hkv * d, tq = 3;
    static const int32_t lens[2] = {66, 17};
    static const float values[] = {NAN, INFINITY, -INFINITY, 1e30f};
    tb_attention_config cfg = tb_attention_default_config(h, d);
    cfg.n_kv_heads = hkv;
    float *q = tbt_alloc(b * tq * cq * sizeof(float)), *k = tbt_alloc(b * t * ckv * sizeof(float));
    float *v = tbt_alloc(b * t * ckv * sizeof(float));
    tbt_fill_uniform(q, b * tq * cq, -2.0f, 2.0f, 971);
    tbt_fill_uniform(k, b * t * ckv, -2.0f, 2.0f, 972);
    tbt_fill_uniform(v, b * t * ckv, -2.0f, 2.0f, 973);
    tb_tensor qt = tb_tensor_3d(q, b, tq, cq), kt = tb_tensor_3d(k, b, t, ckv);
    tb_tensor vt = tb_tensor_3d(v, b, t, ckv);
    tb_heads qh = {&qt, 0}, kh = {&kt, 0}, vh = {&vt, 0};
    for (int threads = 1; threads <= 2; threads++)
        for (int causal = 0; causal <= 1; causal++) {
            tb_ctx ctx;
            tbt_ctx_init(&ctx, threads);
            cfg.causal = causal;
            tb_kv_cache kv;
            CHECK_OK(ctx, tb_kv_cache_init(&ctx, &kv, b, t, hkv, d));
            CHECK_OK(ctx, tb_kv_cache_append(&ctx, &kv, &kh, &vh));
            float *clean = tbt_nan_buffer(b * tq * cq), *dirty = tbt_nan_buffer(b * tq * cq);
            tb_tensor ct = tb_tensor_3d(clean, b, tq, cq), dt = tb_tensor_3d(dirty, b, tq, cq);
            CHECK_OK(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, lens, &qh, &ct));
            for (size_t g = 0; g < ARRAY_LEN(values); g++) {
                for (size_t r = 0; r < b; r++)
                    for (size_t p = (size_t)lens[r]; p < t; p++)
                        for (size_t e = 0; e < ckv; e++)
                            kv.keys[(r * t + p) * ckv + e] = kv.values[(r * t + p) * ckv + e] =
                                values[g];
                CHECK_OK(ctx, tb_kv_cache_attend(&ctx, &kv, &cfg, lens, &qh, &dt));
                char what[120];
                snprintf(what, sizeof what,
                         "kv attend, garbage %g past the key lengths%s, %d threads",
                         (double)values[g], causal ? ", causal" : "", threads);
                assert_bitwise(what, dirty, clean, b * tq * cq);
            }
            free(clean), free(dirty);
            tb_kv_cache_free(&kv);
        }
    free(q), free(k), free(v);
}
END_TEST

Suite *suite_mha(void)
{
    build_case_names();
    Suite *s = suite_create("mha");
    TCase *tc = tcase_create("pytorch");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_mha_oracle_case, 0, (int)g_n_cases);
    tcase_add_test(tc, test_mha_oracle_all_cases_tested);
    suite_add_tcase(s, tc);

    tc = tcase_create("module");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_mha_param_names);
    tcase_add_test(tc, test_mha_init_values);
    tcase_add_test(tc, test_mha_backward_accumulates);
    tcase_add_test(tc, test_mha_gradcheck_self);
    tcase_add_test(tc, test_mha_gradcheck_cross);
    tcase_add_test(tc, test_mha_errors);
    tcase_add_test(tc, test_mha_threads_bitwise);
    tcase_add_test(tc, test_mha_forward_modes_and_no_cache);
    suite_add_tcase(s, tc);

    tc = tcase_create("kv_cache");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_mha_decode_matches_forward);
    tcase_add_test(tc, test_kv_cache_attend_gqa);
    tcase_add_test(tc, test_kv_cache_capacity_and_reset);
    tcase_add_test(tc, test_kv_cache_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("garbage_at_masked_positions");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_mha_garbage_rows, 0, MG_COUNT);
    tcase_add_test(tc, test_mha_decode_garbage);
    tcase_add_test(tc, test_kv_cache_attend_garbage_past_lengths);
    suite_add_tcase(s, tc);
    return s;
}
