/*
 * tb_lora_*: the PEFT oracle (test/oracle/gen_lora.py runs the real
 * peft.get_peft_model on nn.Linear and transformers' Conv1D), finite
 * differences, dropout by its own masks, initialisation, the frozen base,
 * merge and unmerge, adapter management, errors, threads and
 * tb_lora_target_matches(). The aliasing tables of tb_lora_forward() and
 * tb_lora_backward() are in test_aliasing.c, the cache's guard-zone run in
 * test_scratch.c.
 *
 * Oracle: the layer is built from the file (base weight and bias, then
 * each adapter added with its configuration and its A, B, m overwritten
 * with PEFT's), and every run of the case (an active set, enabled or not,
 * training or inference, a dropout stream) is compared with PEFT's y, dx,
 * dA, dB and dm; gradients are zeroed before each run because backward
 * ADDS into them, and the gradients of adapters a run does not use must
 * stay exactly 0 (PEFT leaves them None).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ----------------------------------------------------------- */

static const char *adapter_name(size_t j)
{
    static const char *const names[TB_LORA_MAX_ADAPTERS] = {"a0", "a1", "a2", "a3",
                                                            "a4", "a5", "a6", "a7"};
    return names[j];
}

static void zero_grads(tb_lora *l)
{
    for (size_t j = 0; j < l->n_adapters; j++) {
        tb_lora_adapter *ad = &l->adapter[j];
        memset(ad->A.grad, 0, ad->A.numel * sizeof(float));
        memset(ad->B.grad, 0, ad->B.numel * sizeof(float));
        if (ad->config.use_dora)
            memset(ad->magnitude.grad, 0, ad->magnitude.numel * sizeof(float));
    }
}

static void *cache_for(const tb_lora *l, size_t rows, size_t *bytes)
{
    ck_assert_int_eq(tb_lora_cache_size(l, rows, bytes), TB_OK);
    return tbt_alloc(*bytes);
}

/* A base layer with values from the stream (PyTorch's default init). */
static void make_base(tb_ctx *ctx, tb_linear *lin, size_t in, size_t out, int bias,
                      tb_linear_layout layout, uint64_t seed)
{
    tb_rng rng;
    tb_rng_init(&rng, seed);
    CHECK_OK(*ctx, tb_linear_init_layout(ctx, lin, in, out, bias, layout, &rng));
}

static tb_lora_config cfg_of(size_t r, float alpha, int rslora, int dora, float p)
{
    tb_lora_config c = tb_lora_config_default(r);
    c.alpha = alpha;
    c.use_rslora = rslora;
    c.use_dora = dora;
    c.dropout = p;
    c.init = TB_LORA_INIT_RANDOM;
    return c;
}

/* ---- the PEFT oracle ------------------------------------------------------
 *
 * Tolerances (element i passes when |got - want| <= atol + rtol |want|):
 * inputs are O(1) (x, dy uniform in [-1, 1); W, b, A uniform in
 * +-1/sqrt(in), B in +-1/sqrt(r), m within 40 % of the row norms), every
 * result is a short sum of products: y and dx sums over in, out and r
 * (<= 65 terms), dA, dB and dm sums over the R <= 17 rows (and r or out
 * terms before that). Two float32 evaluations of the same sums in another
 * order (PEFT's: x A^T, then B, its norm with torch.linalg.norm in float32;
 * ours: tb_gemm's blocking, the norm accumulated in double) differ by about
 * sqrt(K) ulp of the partial sums, and the norms by ~1 ulp, which g passes
 * on to every DoRA term.
 *   rtol 2e-5 (~300 ulp) for elements of significant size;
 *   atol 4e-6 * max |reference| of that quantity (~64 ulp of the largest
 *   element, what cancelling elements keep of their partial sums).
 * Measured over every case and kernel family: at most 0.12 of this
 * tolerance (dB, AVX2/AVX-512; every other quantity <= 0.09, the worst
 * absolute errors 3.8e-6 for dA, 2.9e-6 dB, 1.4e-6 dx and dm, 9.5e-7 y,
 * 1.8e-7 merged W, 2.4e-7 DoRA's initial m), so there is >= 8x headroom,
 * while a 1e-3 relative error on any
 * element of 5 % of the largest or more fails by >= 10x.
 * Every reference is also required to be non-degenerate.
 */
#define LORA_RTOL 2e-5
#define LORA_ATOL_REL 4e-6

/* The worst error vs PEFT over every case, per quantity (printed once). */
enum { Q_Y, Q_DX, Q_DA, Q_DB, Q_DM, Q_MERGED, Q_M0, NQ };
static const char *const q_names[NQ] = {"y", "dx", "dA", "dB", "dm", "merged W", "m init"};
static double q_worst[NQ]; /* max |got - want| / (atol + rtol |want|) */
static double q_abs[NQ];

static void vs_peft(int q, const char *blk, const char *what, const float *got,
                    const tbt_reft *want)
{
    char lbl[160];
    snprintf(lbl, sizeof lbl, "%s.%s", blk, what);
    const double atol = LORA_ATOL_REL * tbt_max_abs_f(want->data, want->n);
    tbt_assert_close(lbl, got, want->data, want->n, LORA_RTOL, atol);
    for (size_t i = 0; i < want->n; i++) {
        const double e = fabs((double)got[i] - (double)want->data[i]);
        const double r = e / (atol + LORA_RTOL * fabs((double)want->data[i]));
        if (r > q_worst[q])
            q_worst[q] = r;
        if (e > q_abs[q])
            q_abs[q] = e;
    }
}

/* The worst errors so far in this process (with CK_FORK=no: over every case). */
static void print_worst(const char *name)
{
    for (int q = 0; q < NQ; q++)
        if (q_abs[q] > 0)
            printf("  lora vs PEFT after %s: %-9s worst |err| %.3g, %.3f of the tolerance\n",
                   name, q_names[q], q_abs[q], q_worst[q]);
}

static void all_zero(const char *blk, const char *what, const float *got, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == 0.0f, "%s.%s[%zu] = %g: an adapter the run did not use got a "
                      "gradient", blk, what, i, (double)got[i]);
}

typedef struct oracle_layer {
    tb_linear lin;
    tb_lora lora;
    size_t in, out, n_ad;
    int layout, bias;
} oracle_layer;

/* The layer of a case: base from the file, adapters a0.. with PEFT's values. */
static void oracle_build(tb_ctx *ctx, const tbt_ref *ref, oracle_layer *L)
{
    const int32_t *cfg = tbt_ref_i32(ref, "cfg", NULL);
    L->layout = cfg[0], L->bias = cfg[1], L->n_ad = (size_t)cfg[2];
    tbt_reft w = tbt_ref_get(ref, "weight");
    L->in = L->layout ? w.shape[0] : w.shape[1];
    L->out = L->layout ? w.shape[1] : w.shape[0];
    make_base(ctx, &L->lin, L->in, L->out, L->bias,
              L->layout ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN, 1);
    memcpy(L->lin.weight.value, w.data, w.n * sizeof(float));
    if (L->bias) {
        tbt_reft b = tbt_ref_get(ref, "bias");
        memcpy(L->lin.bias.value, b.data, b.n * sizeof(float));
    }
    CHECK_OK(*ctx, tb_lora_init(ctx, &L->lora, &L->lin));
    tb_rng rng;
    tb_rng_init(&rng, 99);
    char nm[32];
    for (size_t j = 0; j < L->n_ad; j++) {
        snprintf(nm, sizeof nm, "a%zu_cfg", j);
        const int32_t *ac = tbt_ref_i32(ref, nm, NULL);
        snprintf(nm, sizeof nm, "a%zu_alpha", j);
        const float alpha = tbt_ref_scalar(ref, nm);
        snprintf(nm, sizeof nm, "a%zu_dropout", j);
        const float p = tbt_ref_scalar(ref, nm);
        tb_lora_config c = cfg_of((size_t)ac[0], alpha, ac[1], ac[2], p);
        CHECK_OK(*ctx, tb_lora_add(ctx, &L->lora, adapter_name(j), &c, &rng));
        tb_lora_adapter *ad = &L->lora.adapter[j];
        snprintf(nm, sizeof nm, "a%zu_A", j);
        tbt_reft A = tbt_ref_get(ref, nm);
        ck_assert_uint_eq(A.n, ad->A.numel);
        memcpy(ad->A.value, A.data, A.n * sizeof(float));
        snprintf(nm, sizeof nm, "a%zu_B", j);
        tbt_reft B = tbt_ref_get(ref, nm);
        ck_assert_uint_eq(B.n, ad->B.numel);
        memcpy(ad->B.value, B.data, B.n * sizeof(float));
        if (ac[2]) {
            snprintf(nm, sizeof nm, "a%zu_m", j);
            tbt_reft m = tbt_ref_get(ref, nm);
            ck_assert_uint_eq(m.n, L->out);
            memcpy(ad->magnitude.value, m.data, m.n * sizeof(float));
        }
    }
}

static void oracle_free(oracle_layer *L)
{
    tb_lora_free(&L->lora);
    tb_linear_free(&L->lin);
}

static void set_active_idx(tb_ctx *ctx, tb_lora *l, const int32_t *act)
{
    const char *names[TB_LORA_MAX_ADAPTERS];
    for (int32_t k = 0; k < act[0]; k++)
        names[k] = adapter_name((size_t)act[1 + k]);
    CHECK_OK(*ctx, tb_lora_set_active(ctx, l, names, (size_t)act[0]));
}

/* One run of a case: forward and backward as PEFT ran them. */
static void oracle_run(tb_ctx *ctx, const tbt_ref *ref, oracle_layer *L, size_t k,
                       const char *case_name)
{
    char nm[64], blk[160];
    snprintf(blk, sizeof blk, "%s.run%zu", case_name, k);
    snprintf(nm, sizeof nm, "run%zu_active", k);
    const int32_t *act = tbt_ref_i32(ref, nm, NULL);
    snprintf(nm, sizeof nm, "run%zu_flags", k);
    const int32_t *flags = tbt_ref_i32(ref, nm, NULL);
    set_active_idx(ctx, &L->lora, act);
    tb_lora_set_enabled(&L->lora, !flags[0]);
    const tb_mode mode = flags[1] ? TB_MODE_TRAINING : TB_MODE_INFERENCE;
    tb_rng rng;
    tb_rng_init(&rng, (uint64_t)flags[2]);
    zero_grads(&L->lora);

    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy");
    snprintf(nm, sizeof nm, "run%zu_y", k);
    tbt_reft y_ref = tbt_ref_get(ref, nm);
    snprintf(nm, sizeof nm, "run%zu_dx", k);
    tbt_reft dx_ref = tbt_ref_get(ref, nm);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(y_ref.n), *dxb = tbt_nan_buffer(dx_ref.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dxt = tbt_view_like(dxb, &dx_ref);
    const size_t R = x.n / L->in;
    size_t bytes;
    void *cache = cache_for(&L->lora, R, &bytes);
    const uint64_t c0 = rng.counter;
    CHECK_OK(*ctx, tb_lora_forward(ctx, &L->lora, mode, &rng, &xt, &yt, cache, bytes));
    /* The stream advanced by R * in per adapter whose dropout was active. */
    uint64_t want_adv = 0;
    if (!flags[0] && mode == TB_MODE_TRAINING)
        for (int32_t i = 0; i < act[0]; i++)
            want_adv += L->lora.adapter[act[1 + i]].config.dropout > 0.0f ? R * L->in : 0;
    ck_assert_uint_eq(rng.counter - c0, want_adv);
    CHECK_OK(*ctx, tb_lora_backward(ctx, &L->lora, &xt, &dyt, &dxt, cache, bytes));
    {
        /* Without a cache (no backward follows): the same y, bitwise; the
         * stream advances the same. Disabled: the base layer's y, bitwise. */
        float *y2 = tbt_nan_buffer(y_ref.n);
        tb_tensor y2t = tbt_view_like(y2, &y_ref);
        tb_rng r2;
        tb_rng_init(&r2, (uint64_t)flags[2]);
        CHECK_OK(*ctx, tb_lora_forward(ctx, &L->lora, mode, &r2, &xt, &y2t, NULL, 0));
        ck_assert_msg(memcmp(y2, yb, y_ref.n * sizeof(float)) == 0, "%s: y without a cache", blk);
        ck_assert_uint_eq(r2.counter - c0, want_adv);
        if (flags[0]) {
            CHECK_OK(*ctx, tb_linear_forward(ctx, &L->lin, &xt, &y2t));
            ck_assert_msg(memcmp(y2, yb, y_ref.n * sizeof(float)) == 0,
                          "%s: disabled is not the base layer's y", blk);
        }
        free(y2);
    }
    vs_peft(Q_Y, blk, "y", yb, &y_ref);
    vs_peft(Q_DX, blk, "dx", dxb, &dx_ref);
    for (size_t j = 0; j < L->n_ad; j++) {
        const tb_lora_adapter *ad = &L->lora.adapter[j];
        int used = !flags[0];
        if (used) {
            used = 0;
            for (int32_t i = 0; i < act[0]; i++)
                used |= act[1 + i] == (int32_t)j;
        }
        const char *what[3] = {"dA", "dB", "dm"};
        const float *got[3] = {ad->A.grad, ad->B.grad, ad->magnitude.grad};
        const size_t n[3] = {ad->A.numel, ad->B.numel, ad->magnitude.numel};
        for (int q = 0; q < (ad->config.use_dora ? 3 : 2); q++) {
            char lbl[32];
            snprintf(lbl, sizeof lbl, "%s%zu", what[q], j);
            snprintf(nm, sizeof nm, "run%zu_%s", k, lbl);
            tbt_reft g = tbt_ref_get(ref, nm);
            ck_assert_uint_eq(g.n, n[q]);
            if (used)
                vs_peft(Q_DA + q, blk, lbl, got[q], &g);
            else
                all_zero(blk, lbl, got[q], n[q]);
        }
    }
    /* dx = NULL: the same parameter gradients, bitwise (added again: 2x). */
    {
        float *g1 = NULL;
        size_t ng = 0;
        for (size_t j = 0; j < L->n_ad; j++)
            ng += L->lora.adapter[j].A.numel + L->lora.adapter[j].B.numel +
                  L->lora.adapter[j].magnitude.numel;
        g1 = tbt_alloc(ng * sizeof(float));
        for (int pass = 0; pass < 2; pass++) {
            size_t o = 0;
            for (size_t j = 0; j < L->n_ad; j++) {
                tb_lora_adapter *ad = &L->lora.adapter[j];
                float *gs[3] = {ad->A.grad, ad->B.grad, ad->magnitude.grad};
                const size_t ns[3] = {ad->A.numel, ad->B.numel, ad->magnitude.numel};
                for (int q = 0; q < 3; q++)
                    for (size_t i = 0; i < ns[q]; i++, o++) {
                        if (pass == 0)
                            g1[o] = gs[q][i];
                        else
                            ck_assert_msg(gs[q][i] == 2.0f * g1[o],
                                          "%s: backward without dx: gradient %zu differs", blk, o);
                    }
            }
            if (pass == 0)
                CHECK_OK(*ctx, tb_lora_backward(ctx, &L->lora, &xt, &dyt, NULL, cache, bytes));
        }
        free(g1);
    }
    free(xb), free(dyb), free(yb), free(dxb), free(cache);
}

/* Merge the last run's active set as PEFT did (safe merge), compare the
 * merged weight and the merged model's output, then unmerge. */
static void oracle_merge(tb_ctx *ctx, const tbt_ref *ref, oracle_layer *L, const char *case_name)
{
    char blk[160];
    snprintf(blk, sizeof blk, "%s.merge", case_name);
    tb_lora_set_enabled(&L->lora, 1);
    const size_t wn = L->in * L->out;
    float *w0 = tbt_alloc(wn * sizeof(float));
    memcpy(w0, L->lin.weight.value, wn * sizeof(float));
    CHECK_OK(*ctx, tb_lora_merge(ctx, &L->lora, NULL, 1));
    tbt_reft mw = tbt_ref_get(ref, "merged_weight");
    ck_assert_uint_eq(mw.n, wn);
    vs_peft(Q_MERGED, blk, "weight", L->lin.weight.value, &mw);
    tbt_reft x = tbt_ref_get(ref, "x"), my = tbt_ref_get(ref, "merged_y");
    float *xb = tbt_ref_dup(&x), *yb = tbt_nan_buffer(my.n);
    tb_tensor xt = tbt_view_like(xb, &x), yt = tbt_view_like(yb, &my);
    CHECK_OK(*ctx, tb_lora_forward(ctx, &L->lora, TB_MODE_INFERENCE, NULL, &xt, &yt, NULL, 0));
    vs_peft(Q_Y, blk, "y", yb, &my);
    CHECK_OK(*ctx, tb_lora_unmerge(ctx, &L->lora));
    tbt_reft uw = tbt_ref_get(ref, "unmerged_weight");
    /* Unmerged: the original W to a few ulp of |W| + |s B A| (checked
     * against our own W, and PEFT's within the oracle tolerance). */
    vs_peft(Q_MERGED, blk, "unmerged weight", L->lin.weight.value, &uw);
    tbt_assert_close("unmerge restores W", L->lin.weight.value, w0, wn, 0.0,
                     8.0 * 0x1p-24 * (tbt_max_abs_f(w0, wn) + tbt_max_abs_f(mw.data, wn)));
    free(w0), free(xb), free(yb);
}

static const char *const lora_cases[] = {
    "lora_plain_1x1x1_r1",
    "lora_plain_3x17x33_r3",
    "lora_plain_17x33x17_r8_rs",
    "lora_plain_3x50x65_r1",
    "lora_plain_b1t17_65x50_r3",
    "lora_plain_17x3x1_r8",
    "lora_dora_1x3x17_r8",
    "lora_dora_3x17x33_r3_rs",
    "lora_dora_17x65x50_r3",
    "lora_dora_17x33x17_r1",
    "lora_dora_3x1x3_r1",
    "lora_multi_plain_dora_17x33x17",
    "lora_multi_plain_dora_3x17x33_inout",
    "lora_multi_dora_plain_17x17x33_inout",
    "lora_multi_three_reordered_3x33x50",
    "lora_switch_17x33x17",
    "lora_switch_3x17x33_inout",
    "lora_dropout_plain_17x33x17",
    "lora_dropout_dora_17x33x17_inout",
    "lora_dropout_multi_3x17x33",
    "lora_merge_plain_17x33x17",
    "lora_merge_two_3x17x33_inout",
    "lora_merge_dora_17x33x17",
    "lora_merge_dora_3x65x50_inout",
};

static const char *const lora_init_cases[] = {
    "lora_init_dora_17x33_r3",
    "lora_init_dora_65x50_r8_inout",
    "lora_init_dora_1x3_r1",
};

START_TEST(test_oracle_lora)
{
    const char *name = lora_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    oracle_layer L;
    oracle_build(&ctx, ref, &L);
    const int32_t *cfg = tbt_ref_i32(ref, "cfg", NULL);
    for (size_t k = 0; k < (size_t)cfg[3]; k++)
        oracle_run(&ctx, ref, &L, k, name);
    if (tbt_ref_has(ref, "merged_weight"))
        oracle_merge(&ctx, ref, &L, name);
    print_worst(name);
    oracle_free(&L);
    tbt_ref_free(ref);
}
END_TEST

/* DoRA's initial magnitude: the C library draws A, B from the seed (RANDOM
 * init: A then B); gen_lora.py reproduced those draws for PEFT, whose
 * lora_magnitude_vector is then compared with ours. */
START_TEST(test_oracle_lora_dora_init)
{
    const char *name = lora_init_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const int32_t *cfg = tbt_ref_i32(ref, "cfg", NULL);
    const int32_t *ac = tbt_ref_i32(ref, "a0_cfg", NULL);
    tbt_reft w = tbt_ref_get(ref, "weight");
    const size_t in = cfg[0] ? w.shape[0] : w.shape[1], out = cfg[0] ? w.shape[1] : w.shape[0];
    tb_linear lin;
    make_base(&ctx, &lin, in, out, cfg[1], cfg[0] ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN, 1);
    memcpy(lin.weight.value, w.data, w.n * sizeof(float));
    if (cfg[1]) {
        tbt_reft b = tbt_ref_get(ref, "bias");
        memcpy(lin.bias.value, b.data, b.n * sizeof(float));
    }
    tb_lora l;
    CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
    tb_rng rng;
    tb_rng_init(&rng, (uint64_t)tbt_ref_i32_scalar(ref, "seed"));
    tb_lora_config c = cfg_of((size_t)ac[0], tbt_ref_scalar(ref, "a0_alpha"), ac[1], 1, 0.0f);
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "a0", &c, &rng));
    tbt_reft A = tbt_ref_get(ref, "a0_A"), B = tbt_ref_get(ref, "a0_B"),
             m = tbt_ref_get(ref, "a0_m");
    /* The generator's copy of the stream must give our draws exactly. */
    ck_assert_msg(memcmp(l.adapter[0].A.value, A.data, A.n * sizeof(float)) == 0,
                  "%s: A differs from the generator's reproduction of tb_rng", name);
    ck_assert_msg(memcmp(l.adapter[0].B.value, B.data, B.n * sizeof(float)) == 0,
                  "%s: B differs from the generator's reproduction of tb_rng", name);
    ck_assert_uint_eq(rng.counter, A.n + B.n);
    /* A norm of <= 65 squares: PEFT's float32 linalg.norm and our double
     * sum differ by a few ulp: the oracle tolerance. */
    vs_peft(Q_M0, name, "m", l.adapter[0].magnitude.value, &m);
    print_worst(name);
    tb_lora_free(&l);
    tb_linear_free(&lin);
    tbt_ref_free(ref);
}
END_TEST

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(lora_cases); k++)
        if (strcmp(lora_cases[k], name) == 0)
            return 1;
    for (size_t k = 0; k < ARRAY_LEN(lora_init_cases); k++)
        if (strcmp(lora_init_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_lora_all_cases_tested)
{
    ck_assert_uint_gt(tbt_check_manifest("lora_cases.txt", "test_lora.c", case_is_tested, NULL),
                      0);
}
END_TEST

/* ---- finite differences --------------------------------------------------
 *
 * tbt_gradcheck() with the shared step and tolerance (TBT_FD_*, testutil.h:
 * h = 1e-2, rtol 1e-2, atol 1e-3, and max |numeric| > 10 atol so a zero or
 * wrong gradient cannot pass) on L = sum(w .* y), forward in float on small
 * odd shapes (<= 35 outputs, so the float rounding of L is ~1e-6 and
 * contributes <= 1e-4 after dividing by 2h). Each loss call restarts the
 * dropout stream at the same position: the mask is fixed, as backward
 * assumes. DoRA's norm is a constant in backward (PEFT detaches it) but
 * not in a finite difference: dx and dm do not move the norm, so they are
 * checked with any w; dA and dB of the last adapter, a DoRA one, are
 * checked with w orthogonal (per output column, over the rows) to y - b =
 * g (W x + s B A x), which makes dL/d||.|| zero at the point, so the total
 * derivative equals the detached one (and dm is then ~0, asserted). Those
 * two use a smaller step, LORA_FD_H_NORM = 3e-3: the norm makes L curved
 * in A and B (with in = 3, r = 1, s = 2 a step of 1e-2 moves a row of
 * s B A by 2e-2 against |W| ~ 0.6), and the truncation error (h^2 / 6
 * times the third derivative) was measured at 2.8e-3 with h = 1e-2 (2 %
 * of that element, beyond rtol); it falls as h^2, ~11x, while the float
 * rounding of L (<= ~1e-6 here) divided by 2h stays below 2e-4 (atol 1e-3).
 */
#define LORA_FD_H_NORM 3e-3f
typedef struct fd_prob {
    tb_ctx ctx;
    tb_linear lin;
    tb_lora lora;
    float *x, *y, *w;
    size_t R, in, out;
    tb_mode mode;
    tb_rng rng0;
} fd_prob;

static double fd_loss(void *user)
{
    fd_prob *p = user;
    tb_rng rng = p->rng0;
    tb_tensor x = tb_tensor_2d(p->x, p->R, p->in), y = tb_tensor_2d(p->y, p->R, p->out);
    CHECK_OK(p->ctx, tb_lora_forward(&p->ctx, &p->lora, p->mode, &rng, &x, &y, NULL, 0));
    return tbt_dot(p->w, p->y, p->R * p->out);
}

/* Forward with a cache and backward with dy = w; dx into dx. */
static void fd_backward(fd_prob *p, float *dx)
{
    tb_rng rng = p->rng0;
    size_t bytes;
    void *cache = cache_for(&p->lora, p->R, &bytes);
    tb_tensor x = tb_tensor_2d(p->x, p->R, p->in), y = tb_tensor_2d(p->y, p->R, p->out);
    tb_tensor dy = tb_tensor_2d(p->w, p->R, p->out), dxt = tb_tensor_2d(dx, p->R, p->in);
    zero_grads(&p->lora);
    CHECK_OK(p->ctx, tb_lora_forward(&p->ctx, &p->lora, p->mode, &rng, &x, &y, cache, bytes));
    CHECK_OK(p->ctx, tb_lora_backward(&p->ctx, &p->lora, &x, &dy, &dxt, cache, bytes));
    free(cache);
}

typedef struct fd_spec {
    size_t R, in, out;
    int layout, bias;
    tb_mode mode;
    size_t n;
    tb_lora_config c[3];
} fd_spec;

static void check_fd(const fd_spec *sp, const char *tag)
{
    fd_prob p;
    memset(&p, 0, sizeof p);
    tbt_ctx_init(&p.ctx, 1);
    p.R = sp->R, p.in = sp->in, p.out = sp->out, p.mode = sp->mode;
    make_base(&p.ctx, &p.lin, p.in, p.out, sp->bias, sp->layout ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN,
              7 + p.in);
    CHECK_OK(p.ctx, tb_lora_init(&p.ctx, &p.lora, &p.lin));
    tb_rng rng;
    tb_rng_init(&rng, 21 + p.out);
    const char *names[3];
    for (size_t j = 0; j < sp->n; j++) {
        names[j] = adapter_name(j);
        CHECK_OK(p.ctx, tb_lora_add(&p.ctx, &p.lora, names[j], &sp->c[j], &rng));
        tb_lora_adapter *ad = &p.lora.adapter[j];
        if (ad->config.use_dora) { /* g != 1, so the (g - 1) term matters */
            float f[128];
            tbt_fill_uniform(f, p.out, 0.6f, 1.4f, 40 + j);
            for (size_t o = 0; o < p.out; o++)
                ad->magnitude.value[o] *= f[o];
        }
    }
    CHECK_OK(p.ctx, tb_lora_set_active(&p.ctx, &p.lora, names, sp->n));
    tb_rng_init(&p.rng0, 77);
    p.x = tbt_alloc(p.R * p.in * sizeof(float));
    p.y = tbt_alloc(p.R * p.out * sizeof(float));
    p.w = tbt_alloc(p.R * p.out * sizeof(float));
    float *dx = tbt_alloc(p.R * p.in * sizeof(float));
    tbt_fill_uniform(p.x, p.R * p.in, -1, 1, 1);
    tbt_fill_uniform(p.w, p.R * p.out, -1, 1, 2);
    fd_backward(&p, dx);
    char label[160];
    snprintf(label, sizeof label, "lora[%s].dx", tag);
    tbt_gradcheck(label, p.x, p.R * p.in, dx, fd_loss, &p, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL,
                  TBT_FD_MAX_CHECKS);
    const int last_dora = p.lora.adapter[sp->n - 1].config.use_dora;
    for (size_t j = 0; j < sp->n; j++) {
        tb_lora_adapter *ad = &p.lora.adapter[j];
        if (ad->config.use_dora) {
            snprintf(label, sizeof label, "lora[%s].dm%zu", tag, j);
            tbt_gradcheck(label, ad->magnitude.value, p.out, ad->magnitude.grad, fd_loss, &p,
                          TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
        } else {
            snprintf(label, sizeof label, "lora[%s].dA%zu", tag, j);
            tbt_gradcheck(label, ad->A.value, ad->A.numel, ad->A.grad, fd_loss, &p, TBT_FD_H,
                          TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
            snprintf(label, sizeof label, "lora[%s].dB%zu", tag, j);
            tbt_gradcheck(label, ad->B.value, ad->B.numel, ad->B.grad, fd_loss, &p, TBT_FD_H,
                          TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
        }
    }
    /* A second backward adds the same gradients again (exactly 2x). */
    {
        tb_lora_adapter *ad = &p.lora.adapter[0];
        float *g1 = tbt_alloc(ad->A.numel * sizeof(float));
        memcpy(g1, ad->A.grad, ad->A.numel * sizeof(float));
        size_t bytes;
        void *cache = cache_for(&p.lora, p.R, &bytes);
        tb_rng r2 = p.rng0;
        tb_tensor x = tb_tensor_2d(p.x, p.R, p.in), y = tb_tensor_2d(p.y, p.R, p.out);
        tb_tensor dy = tb_tensor_2d(p.w, p.R, p.out);
        CHECK_OK(p.ctx, tb_lora_forward(&p.ctx, &p.lora, p.mode, &r2, &x, &y, cache, bytes));
        CHECK_OK(p.ctx, tb_lora_backward(&p.ctx, &p.lora, &x, &dy, NULL, cache, bytes));
        for (size_t i = 0; i < ad->A.numel; i++)
            ck_assert_msg(ad->A.grad[i] == 2.0f * g1[i], "lora[%s]: second backward dA[%zu]", tag,
                          i);
        free(g1), free(cache);
    }
    if (last_dora && !(sp->mode == TB_MODE_TRAINING && sp->c[sp->n - 1].dropout > 0.0f)) {
        /* w orthogonal to the columns of y - b: dL/d||.|| = 0 at this point. */
        const float *b = sp->bias ? p.lin.bias.value : NULL;
        (void)fd_loss(&p);
        for (size_t o = 0; o < p.out; o++) {
            double vw = 0, vv = 0;
            for (size_t r = 0; r < p.R; r++) {
                const double v = (double)p.y[r * p.out + o] - (b ? b[o] : 0.0);
                vw += v * p.w[r * p.out + o], vv += v * v;
            }
            for (size_t r = 0; r < p.R; r++) {
                const double v = (double)p.y[r * p.out + o] - (b ? b[o] : 0.0);
                p.w[r * p.out + o] = (float)(p.w[r * p.out + o] - vw / vv * v);
            }
        }
        fd_backward(&p, dx);
        tb_lora_adapter *ad = &p.lora.adapter[sp->n - 1];
        const double dm = tbt_max_abs_f(ad->magnitude.grad, p.out);
        ck_assert_msg(dm < 1e-5, "lora[%s]: dm = %g with w orthogonal to y - b", tag, dm);
        snprintf(label, sizeof label, "lora[%s].dA%zu(w orth)", tag, sp->n - 1);
        tbt_gradcheck(label, ad->A.value, ad->A.numel, ad->A.grad, fd_loss, &p, LORA_FD_H_NORM,
                      TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
        snprintf(label, sizeof label, "lora[%s].dB%zu(w orth)", tag, sp->n - 1);
        tbt_gradcheck(label, ad->B.value, ad->B.numel, ad->B.grad, fd_loss, &p, LORA_FD_H_NORM,
                      TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    }
    tb_lora_free(&p.lora);
    tb_linear_free(&p.lin);
    free(p.x), free(p.y), free(p.w), free(dx);
}

START_TEST(lora_gradients)
{
    const tb_mode INF = TB_MODE_INFERENCE, TR = TB_MODE_TRAINING;
    const fd_spec specs[] = {
        {3, 5, 7, 0, 1, INF, 1, {cfg_of(3, 5.0f, 0, 0, 0.0f)}},
        {1, 3, 1, 1, 1, INF, 1, {cfg_of(8, 16.0f, 1, 0, 0.0f)}},
        {3, 7, 5, 0, 1, INF, 1, {cfg_of(3, 6.0f, 0, 1, 0.0f)}},
        {5, 3, 7, 1, 0, INF, 1, {cfg_of(1, 2.0f, 1, 1, 0.0f)}},
        {3, 5, 7, 1, 1, INF, 2, {cfg_of(3, 5.0f, 0, 0, 0.0f), cfg_of(8, 8.0f, 0, 1, 0.0f)}},
        {3, 5, 7, 0, 1, TR, 2, {cfg_of(3, 4.0f, 0, 1, 0.0f), cfg_of(1, 3.0f, 0, 0, 0.0f)}},
        {5, 7, 3, 0, 1, TR, 1, {cfg_of(3, 5.0f, 0, 0, 0.3f)}},
        {3, 5, 7, 1, 1, TR, 1, {cfg_of(3, 5.0f, 0, 1, 0.3f)}},
        {3, 5, 7, 0, 0, TR, 3,
         {cfg_of(1, 2.0f, 0, 0, 0.2f), cfg_of(3, 4.0f, 1, 1, 0.4f), cfg_of(3, 3.0f, 0, 1, 0.0f)}},
    };
    const char *const tags[] = {"plain 3x5->7 r3",         "plain,rs,in_out 1x3->1 r8",
                                "dora 3x7->5 r3",          "dora,rs,in_out,nobias 5x3->7 r1",
                                "plain+dora,in_out 3x5->7", "dora+plain,train 3x5->7",
                                "plain,p=0.3 5x7->3 r3",   "dora,p=0.3,in_out 3x5->7 r3",
                                "plain p+dora p+dora 3x5->7"};
    for (size_t k = 0; k < ARRAY_LEN(specs); k++)
        check_fd(&specs[k], tags[k]);
}
END_TEST

/* ---- dropout -------------------------------------------------------------
 * PEFT's mask cannot be ours; the oracle's dropout cases hand PEFT our mask.
 * Here: (a) with p > 0, inference (no stream needed) is bitwise the p = 0
 * layer's, forward and backward; (b) training is the no-dropout formula on
 * the input multiplied by the mask tb_dropout_forward() draws from the same
 * stream position, written out in double: plain y = x W^T + b + s B A xm,
 * DoRA y = x W^T + b + (g - 1) xm W^T + g s B A xm, g = m / ||W + s B A||. */
static void dropout_pair(tb_ctx *ctx, tb_linear lin[2], tb_lora l[2], int layout, int dora,
                         size_t in, size_t out, float p)
{
    for (int k = 0; k < 2; k++) {
        make_base(ctx, &lin[k], in, out, 1, layout ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN, 5);
        CHECK_OK(*ctx, tb_lora_init(ctx, &l[k], &lin[k]));
        tb_rng rng;
        tb_rng_init(&rng, 6);
        tb_lora_config c = cfg_of(3, 5.0f, 0, dora, k == 0 ? p : 0.0f);
        CHECK_OK(*ctx, tb_lora_add(ctx, &l[k], "default", &c, &rng));
        if (dora)
            for (size_t o = 0; o < out; o++)
                l[k].adapter[0].magnitude.value[o] *= 0.7f + 0.05f * (float)(o % 9);
    }
}

static void check_dropout_semantics(int layout, int dora)
{
    enum { R = 17, IN = 33, OUT = 17 };
    const float p = 0.3f;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_linear lin[2];
    tb_lora l[2];
    dropout_pair(&ctx, lin, l, layout, dora, IN, OUT, p);
    float x[R * IN], dy[R * OUT], y0[R * OUT], y1[R * OUT], dx0[R * IN], dx1[R * IN];
    tbt_fill_uniform(x, R * IN, -1, 1, 3);
    tbt_fill_uniform(dy, R * OUT, -1, 1, 4);
    tb_tensor xt = tb_tensor_2d(x, R, IN), dyt = tb_tensor_2d(dy, R, OUT);
    tb_tensor y0t = tb_tensor_2d(y0, R, OUT), y1t = tb_tensor_2d(y1, R, OUT);
    tb_tensor dx0t = tb_tensor_2d(dx0, R, IN), dx1t = tb_tensor_2d(dx1, R, IN);
    size_t bytes;
    void *c0 = cache_for(&l[0], R, &bytes), *c1 = tbt_alloc(bytes);
    /* (a) inference with p > 0 = p = 0, bitwise; no stream needed. */
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l[0], TB_MODE_INFERENCE, NULL, &xt, &y0t, c0, bytes));
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l[1], TB_MODE_INFERENCE, NULL, &xt, &y1t, c1, bytes));
    ck_assert(memcmp(y0, y1, sizeof y0) == 0);
    CHECK_OK(ctx, tb_lora_backward(&ctx, &l[0], &xt, &dyt, &dx0t, c0, bytes));
    CHECK_OK(ctx, tb_lora_backward(&ctx, &l[1], &xt, &dyt, &dx1t, c1, bytes));
    ck_assert(memcmp(dx0, dx1, sizeof dx0) == 0);
    ck_assert(memcmp(l[0].adapter[0].A.grad, l[1].adapter[0].A.grad,
                     l[0].adapter[0].A.numel * sizeof(float)) == 0);
    ck_assert(memcmp(l[0].adapter[0].B.grad, l[1].adapter[0].B.grad,
                     l[0].adapter[0].B.numel * sizeof(float)) == 0);
    /* p = 0 in training is also the identity (no stream drawn). */
    tb_rng none;
    tb_rng_init(&none, 1);
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l[1], TB_MODE_TRAINING, &none, &xt, &y0t, NULL, 0));
    ck_assert_uint_eq(none.counter, 0);
    ck_assert(memcmp(y0, y1, sizeof y0) == 0);
    /* Training without a stream is refused. */
    ck_assert_int_eq(tb_lora_forward(&ctx, &l[0], TB_MODE_TRAINING, NULL, &xt, &y0t, NULL, 0),
                     TB_ERR_NULL_ARG);

    /* (b) training = the formula on our own mask. */
    tb_rng rng, rng_m;
    tb_rng_init(&rng, 2024);
    rng_m = rng;
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l[0], TB_MODE_TRAINING, &rng, &xt, &y0t, c0, bytes));
    ck_assert_uint_eq(rng.counter, R * IN);
    float xm[R * IN];
    tb_tensor xmt = tb_tensor_2d(xm, R, IN);
    tb_dropout_cache dc;
    CHECK_OK(ctx, tb_dropout_forward(&ctx, TB_MODE_TRAINING, p, &rng_m, &xt, &xmt, &dc));
    size_t dropped = 0;
    for (size_t i = 0; i < R * IN; i++)
        dropped += xm[i] == 0.0f;
    ck_assert_msg(dropped > R * IN / 5 && dropped < R * IN * 2 / 5, "%zu of %d dropped", dropped,
                  R * IN);
    const tb_lora_adapter *ad = &l[0].adapter[0];
    const tb_linear *b = &lin[0];
    double *want = tbt_alloc(R * OUT * sizeof(double));
    float wantf[R * OUT];
    for (size_t o = 0; o < OUT; o++) {
        double nrm = 0;
        for (size_t i = 0; i < IN; i++) {
            double d = 0;
            for (size_t k = 0; k < 3; k++)
                d += (double)ad->B.value[o * 3 + k] * ad->A.value[k * IN + i];
            const double wv = layout ? b->weight.value[i * OUT + o] : b->weight.value[o * IN + i];
            nrm += (wv + ad->scaling * d) * (wv + ad->scaling * d);
        }
        const double g = dora ? ad->magnitude.value[o] / sqrt(nrm) : 1.0;
        for (size_t r = 0; r < R; r++) {
            double base = b->bias.value[o], basem = 0, lora = 0;
            for (size_t i = 0; i < IN; i++) {
                const double wv =
                    layout ? b->weight.value[i * OUT + o] : b->weight.value[o * IN + i];
                base += wv * x[r * IN + i];
                basem += wv * xm[r * IN + i];
                double d = 0;
                for (size_t k = 0; k < 3; k++)
                    d += (double)ad->B.value[o * 3 + k] * ad->A.value[k * IN + i];
                lora += ad->scaling * d * xm[r * IN + i];
            }
            want[r * OUT + o] = base + (dora ? (g - 1.0) * basem : 0.0) + g * lora;
            wantf[r * OUT + o] = (float)want[r * OUT + o];
        }
    }
    char lbl[64];
    snprintf(lbl, sizeof lbl, "lora dropout %s%s y", dora ? "dora" : "plain",
             layout ? ",in_out" : "");
    tbt_assert_close(lbl, y0, wantf, R * OUT, LORA_RTOL, LORA_ATOL_REL * tbt_max_abs_f(wantf, R * OUT));
    /* and it differs from the no-dropout output (the mask did something) */
    ck_assert(tbt_compare(y0, y1, R * OUT, 1e-3, 1e-3).n_bad > 0);
    free(want), free(c0), free(c1);
    for (int k = 0; k < 2; k++) {
        tb_lora_free(&l[k]);
        tb_linear_free(&lin[k]);
    }
}

START_TEST(lora_dropout_semantics)
{
    check_dropout_semantics(0, 0);
    check_dropout_semantics(1, 0);
    check_dropout_semantics(0, 1);
    check_dropout_semantics(1, 1);
}
END_TEST

/* ---- initialisation -------------------------------------------------------
 * DEFAULT (PEFT's True): A uniform in +-1/sqrt(in), B = 0, so the output is
 * the base layer's bit for bit (DoRA too: g = m / norm is exactly 1, the
 * same function computing both). The spread of n = 4096 uniform values:
 * the sample std has a relative standard deviation of sqrt(0.8 / n) / 2 =
 * 0.7 %, so a 4 % bound is > 5 sigma; the mean's sigma is b / sqrt(3 n).
 * GAUSSIAN: std 1/r; the sample std of n normal values has relative
 * sigma 1 / sqrt(2 n) = 1.1 %: a 6 % bound is > 5 sigma. */
static void spread(const float *a, size_t n, double *mean, double *sd, double *lo, double *hi)
{
    double s = 0, s2 = 0;
    *lo = INFINITY, *hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        s += a[i];
        *lo = a[i] < *lo ? a[i] : *lo;
        *hi = a[i] > *hi ? a[i] : *hi;
    }
    *mean = s / (double)n;
    for (size_t i = 0; i < n; i++)
        s2 += (a[i] - *mean) * (a[i] - *mean);
    *sd = sqrt(s2 / (double)(n - 1));
}

START_TEST(lora_init_values)
{
    enum { IN = 256, OUT = 7, R = 16, ROWS = 3 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    for (int dora = 0; dora < 2; dora++) {
        tb_linear lin;
        make_base(&ctx, &lin, IN, OUT, 1, TB_LINEAR_OUT_IN, 3);
        tb_lora l;
        CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
        tb_rng rng;
        tb_rng_init(&rng, 8);
        tb_lora_config c = tb_lora_config_default(R);
        c.use_dora = dora;
        ck_assert(c.alpha == 8.0f && c.init == TB_LORA_INIT_DEFAULT && !c.use_rslora &&
                  c.dropout == 0.0f);
        CHECK_OK(ctx, tb_lora_add(&ctx, &l, "default", &c, &rng));
        const tb_lora_adapter *ad = &l.adapter[0];
        ck_assert(ad->scaling == 0.5f);
        for (size_t i = 0; i < ad->B.numel; i++)
            ck_assert(ad->B.value[i] == 0.0f);
        const double bound = 1.0 / sqrt((double)IN);
        double mean, sd, lo, hi;
        spread(ad->A.value, ad->A.numel, &mean, &sd, &lo, &hi);
        ck_assert_msg(lo >= -bound && hi < bound && lo < -0.95 * bound && hi > 0.95 * bound,
                      "A in [%g, %g], bound %g", lo, hi, bound);
        ck_assert_msg(fabs(sd / (bound / sqrt(3.0)) - 1.0) < 0.04, "A std %g, want %g", sd,
                      bound / sqrt(3.0));
        ck_assert_msg(fabs(mean) < 5.0 * bound / sqrt(3.0 * ad->A.numel), "A mean %g", mean);
        float x[ROWS * IN], y[ROWS * OUT], yb[ROWS * OUT];
        tbt_fill_uniform(x, ROWS * IN, -1, 1, 9);
        tb_tensor xt = tb_tensor_2d(x, ROWS, IN), yt = tb_tensor_2d(y, ROWS, OUT),
                  ybt = tb_tensor_2d(yb, ROWS, OUT);
        CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_TRAINING, &rng, &xt, &yt, NULL, 0));
        CHECK_OK(ctx, tb_linear_forward(&ctx, &lin, &xt, &ybt));
        ck_assert_msg(memcmp(y, yb, sizeof y) == 0, "a new %s adapter changed the output",
                      dora ? "DoRA" : "LoRA");
        if (dora) /* m = the row norms of W (B = 0), to a few ulp */
            for (size_t o = 0; o < OUT; o++) {
                double n2 = 0;
                for (size_t i = 0; i < IN; i++)
                    n2 += (double)lin.weight.value[o * IN + i] * lin.weight.value[o * IN + i];
                ck_assert(fabs(ad->magnitude.value[o] - sqrt(n2)) <= 2e-7 * sqrt(n2));
            }
        tb_lora_free(&l);
        tb_linear_free(&lin);
    }
    /* GAUSSIAN */
    {
        enum { GIN = 1024, GR = 4 };
        tb_linear lin;
        make_base(&ctx, &lin, GIN, 3, 0, TB_LINEAR_IN_OUT, 3);
        tb_lora l;
        CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
        tb_rng rng;
        tb_rng_init(&rng, 10);
        tb_lora_config c = tb_lora_config_default(GR);
        c.init = TB_LORA_INIT_GAUSSIAN;
        CHECK_OK(ctx, tb_lora_add(&ctx, &l, "g", &c, &rng));
        const tb_lora_adapter *ad = &l.adapter[0];
        double mean, sd, lo, hi;
        spread(ad->A.value, ad->A.numel, &mean, &sd, &lo, &hi);
        ck_assert_msg(fabs(sd * GR - 1.0) < 0.06, "gaussian A std %g, want %g", sd, 1.0 / GR);
        ck_assert_msg(fabs(mean) < 5.0 / GR / sqrt((double)ad->A.numel), "gaussian mean %g", mean);
        ck_assert(hi > 2.0 / GR && lo < -2.0 / GR); /* not uniform in a small box */
        for (size_t i = 0; i < ad->B.numel; i++)
            ck_assert(ad->B.value[i] == 0.0f);
        /* RANDOM: B uniform in +-1/sqrt(r) as nn.Linear(r, out) */
        tb_lora_config cr = cfg_of(GR, 8.0f, 0, 0, 0.0f);
        CHECK_OK(ctx, tb_lora_add(&ctx, &l, "r", &cr, &rng));
        spread(l.adapter[1].B.value, l.adapter[1].B.numel, &mean, &sd, &lo, &hi);
        ck_assert(lo >= -0.5 && hi < 0.5 && sd > 0.2);
        tb_lora_free(&l);
        tb_linear_free(&lin);
    }
}
END_TEST

/* ---- the frozen base and the parameter list ------------------------------ */

START_TEST(lora_frozen_base_and_params)
{
    enum { R = 5, IN = 17, OUT = 33 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    for (int bias = 0; bias < 2; bias++) {
        tb_linear lin;
        make_base(&ctx, &lin, IN, OUT, bias, TB_LINEAR_IN_OUT, 4);
        ck_assert_ptr_nonnull(lin.weight.grad);
        tb_lora l;
        CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
        ck_assert_ptr_eq(l.base, &lin);
        ck_assert_uint_eq(l.in_features, IN);
        ck_assert_uint_eq(l.out_features, OUT);
        ck_assert_ptr_null(lin.weight.grad);
        ck_assert_ptr_null(lin.bias.grad);
        ck_assert_ptr_null(lin.grad_storage);
        ck_assert_int_eq(lin.weight.trainable, 0);
        if (bias)
            ck_assert_int_eq(lin.bias.trainable, 0);
        ck_assert_uint_eq(tb_lora_frozen_bytes(&l), (IN * OUT + (bias ? OUT : 0)) * sizeof(float));
        ck_assert_uint_eq(tb_lora_frozen_bytes(NULL), 0);
        /* No adapter yet: the base layer's output. */
        float x[R * IN], y[R * OUT], yb[R * OUT], dy[R * OUT], dx[R * IN];
        tbt_fill_uniform(x, R * IN, -1, 1, 1);
        tbt_fill_uniform(dy, R * OUT, -1, 1, 2);
        tb_tensor xt = tb_tensor_2d(x, R, IN), yt = tb_tensor_2d(y, R, OUT),
                  ybt = tb_tensor_2d(yb, R, OUT), dyt = tb_tensor_2d(dy, R, OUT),
                  dxt = tb_tensor_2d(dx, R, IN);
        CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_TRAINING, NULL, &xt, &yt, NULL, 0));
        CHECK_OK(ctx, tb_linear_forward(&ctx, &lin, &xt, &ybt));
        ck_assert(memcmp(y, yb, sizeof y) == 0);

        tb_rng rng;
        tb_rng_init(&rng, 5);
        tb_lora_config c1 = cfg_of(3, 5.0f, 0, 0, 0.1f), c2 = cfg_of(2, 4.0f, 1, 1, 0.0f);
        CHECK_OK(ctx, tb_lora_add(&ctx, &l, "default", &c1, &rng));
        CHECK_OK(ctx, tb_lora_add(&ctx, &l, "dora-2", &c2, &rng));
        const char *both[2] = {"default", "dora-2"};
        CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, both, 2));
        float *w0 = tbt_alloc(IN * OUT * sizeof(float)), b0[OUT];
        memcpy(w0, lin.weight.value, IN * OUT * sizeof(float));
        if (bias)
            memcpy(b0, lin.bias.value, sizeof b0);
        size_t bytes;
        void *cache = cache_for(&l, R, &bytes);
        CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_TRAINING, &rng, &xt, &yt, cache, bytes));
        CHECK_OK(ctx, tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes));
        /* Backward never touched the base: no gradient, values bitwise. */
        ck_assert_ptr_null(lin.weight.grad);
        ck_assert_ptr_null(lin.bias.grad);
        ck_assert(memcmp(w0, lin.weight.value, IN * OUT * sizeof(float)) == 0);
        if (bias)
            ck_assert(memcmp(b0, lin.bias.value, sizeof b0) == 0);
        ck_assert(tbt_max_abs_f(l.adapter[0].A.grad, l.adapter[0].A.numel) > 0);
        ck_assert(tbt_max_abs_f(l.adapter[1].magnitude.grad, OUT) > 0);

        /* Names as PEFT's state dict, A, B (m) per adapter in order. */
        tb_param_list list;
        CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
        CHECK_OK(ctx, tb_linear_params(&ctx, &lin, "h.0.attn.c_attn.base_layer", &list));
        CHECK_OK(ctx, tb_lora_params(&ctx, &l, "h.0.attn.c_attn", &list));
        const char *want[] = {"h.0.attn.c_attn.base_layer.weight",
                              "h.0.attn.c_attn.base_layer.bias",
                              "h.0.attn.c_attn.lora_A.default.weight",
                              "h.0.attn.c_attn.lora_B.default.weight",
                              "h.0.attn.c_attn.lora_A.dora-2.weight",
                              "h.0.attn.c_attn.lora_B.dora-2.weight",
                              "h.0.attn.c_attn.lora_magnitude_vector.dora-2.weight"};
        size_t k = 0;
        for (size_t i = 0; i < ARRAY_LEN(want); i++) {
            if (!bias && i == 1)
                continue;
            ck_assert_str_eq(list.items[k].name, want[i]);
            k++;
        }
        ck_assert_uint_eq(list.count, k);
        ck_assert_ptr_eq(list.items[bias ? 2 : 1].param, &l.adapter[0].A);
        const size_t lora_numel = 3 * IN + OUT * 3 + 2 * IN + OUT * 2 + OUT;
        ck_assert_uint_eq(tb_param_list_numel(&list, 1), lora_numel); /* only adapters train */
        ck_assert_uint_eq(tb_param_list_numel(&list, 0),
                          lora_numel + IN * OUT + (bias ? OUT : 0));
        tb_param_list_free(&list);
        CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
        CHECK_OK(ctx, tb_lora_params(&ctx, &l, NULL, &list));
        ck_assert_str_eq(list.items[0].name, "lora_A.default.weight");
        ck_assert_uint_eq(list.count, 5);
        tb_param_list_free(&list);
        /* A frozen adapter parameter gets no gradient; the others still do. */
        zero_grads(&l);
        l.adapter[0].B.trainable = 0;
        CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_TRAINING, &rng, &xt, &yt, cache, bytes));
        CHECK_OK(ctx, tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes));
        all_zero("frozen", "dB", l.adapter[0].B.grad, l.adapter[0].B.numel);
        ck_assert(tbt_max_abs_f(l.adapter[0].A.grad, l.adapter[0].A.numel) > 0);
        free(w0), free(cache);
        tb_lora_free(&l);
        ck_assert_ptr_null(l.base);
        tb_lora_free(&l); /* twice is fine */
        tb_linear_free(&lin);
    }
}
END_TEST

/* ---- merge and unmerge ------------------------------------------------------
 * Merged vs unmerged forward: the merged weight differs from W + s B A (or
 * g (W + s B A)) by a few roundings of each element, and the two forwards
 * sum the same products in other orders, so element (r, o) may differ by a
 * few ulp of u(r, o) = sum_i |x_ri| max(1, g_o) (|W_oi| + |s (B A)_oi|) +
 * |b_o|: the test allows 16 ulp (2^-24 each) of u, computed in double. A
 * merge forgotten (or applied twice) is off by |s B A x| ~ 0.1 .. 1, i.e.
 * > 1e5 ulp. Unmerge restores W to 8 ulp of max |W| + max |merged W|
 * (the header's "a few ulp of |W| + |s B A|"). */
static void merge_bound(const tb_lora *l, const float *x, size_t R, double *u)
{
    const tb_linear *b = l->base;
    const size_t in = l->in_features, out = l->out_features;
    for (size_t r = 0; r < R; r++)
        for (size_t o = 0; o < out; o++)
            u[r * out + o] = b->has_bias ? fabs(b->bias.value[o]) : 0.0;
    for (size_t o = 0; o < out; o++)
        for (size_t i = 0; i < in; i++) {
            double m = fabs(b->layout ? b->weight.value[i * out + o] : b->weight.value[o * in + i]);
            for (size_t a = 0; a < l->n_active; a++) {
                const tb_lora_adapter *ad = &l->adapter[l->active[a]];
                double d = 0;
                for (size_t k = 0; k < ad->config.rank; k++)
                    d += (double)ad->B.value[o * ad->config.rank + k] * ad->A.value[k * in + i];
                m += fabs(ad->scaling * d);
                if (ad->config.use_dora)
                    m *= 2.0; /* g <= 2 here (m within 40 % of the norm) */
            }
            for (size_t r = 0; r < R; r++)
                u[r * out + o] += fabs(x[r * in + i]) * m;
        }
}

static void check_merge_matches(int layout, int dora, size_t n_plain)
{
    enum { R = 17, IN = 33, OUT = 50 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_linear lin;
    make_base(&ctx, &lin, IN, OUT, 1, layout ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN, 12);
    tb_lora l;
    CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
    tb_rng rng;
    tb_rng_init(&rng, 13);
    const char *names[3] = {"d", "p0", "p1"};
    size_t n = 0;
    if (dora) {
        tb_lora_config c = cfg_of(3, 6.0f, 0, 1, 0.0f);
        CHECK_OK(ctx, tb_lora_add(&ctx, &l, "d", &c, &rng));
        for (size_t o = 0; o < OUT; o++)
            l.adapter[0].magnitude.value[o] *= 0.6f + 0.8f * (float)(o % 7) / 7.0f;
        n++;
    }
    for (size_t k = 0; k < n_plain; k++) {
        tb_lora_config c = cfg_of(k ? 8 : 1, k ? 16.0f : 3.0f, (int)k, 0, 0.0f);
        CHECK_OK(ctx, tb_lora_add(&ctx, &l, names[1 + k], &c, &rng));
    }
    const char *const *act = dora ? names : names + 1;
    n += n_plain;
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, act, n));
    float x[R * IN], y0[R * OUT], y1[R * OUT];
    tbt_fill_uniform(x, R * IN, -1, 1, 14);
    tb_tensor xt = tb_tensor_2d(x, R, IN), y0t = tb_tensor_2d(y0, R, OUT),
              y1t = tb_tensor_2d(y1, R, OUT);
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_INFERENCE, NULL, &xt, &y0t, NULL, 0));
    double *u = tbt_alloc(R * OUT * sizeof(double));
    merge_bound(&l, x, R, u);
    float *w0 = tbt_alloc(IN * OUT * sizeof(float));
    memcpy(w0, lin.weight.value, IN * OUT * sizeof(float));
    CHECK_OK(ctx, tb_lora_merge(&ctx, &l, NULL, 0));
    ck_assert_uint_eq(l.n_merged, n);
    ck_assert(memcmp(w0, lin.weight.value, IN * OUT * sizeof(float)) != 0);
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_INFERENCE, NULL, &xt, &y1t, NULL, 0));
    double worst = 0;
    for (size_t e = 0; e < R * OUT; e++) {
        const double d = fabs((double)y1[e] - y0[e]), lim = 16.0 * 0x1p-24 * u[e];
        ck_assert_msg(d <= lim, "merged y[%zu] = %.9g, unmerged %.9g: |diff| %g > %g (16 ulp of "
                      "%g)", e, (double)y1[e], (double)y0[e], d, lim, u[e]);
        worst = d / lim > worst ? d / lim : worst;
    }
    printf("  lora merge (layout %d, dora %d, plain %zu): merged vs unmerged y within %.3f of "
           "16 ulp\n", layout, dora, n_plain, worst);
    /* Merged twice: refused, nothing changed. */
    float *w1 = tbt_alloc(IN * OUT * sizeof(float));
    memcpy(w1, lin.weight.value, IN * OUT * sizeof(float));
    ck_assert_int_eq(tb_lora_merge(&ctx, &l, act[0], 0), TB_ERR_STATE);
    ck_assert_int_eq(tb_lora_merge(&ctx, &l, NULL, 1), TB_ERR_STATE);
    ck_assert(memcmp(w1, lin.weight.value, IN * OUT * sizeof(float)) == 0);
    /* Disabled while merged: forward refused (PEFT would unmerge). */
    tb_lora_set_enabled(&l, 0);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, TB_MODE_INFERENCE, NULL, &xt, &y1t, NULL, 0),
                     TB_ERR_STATE);
    tb_lora_set_enabled(&l, 1);
    /* Delete while merged: refused. */
    ck_assert_int_eq(tb_lora_delete(&ctx, &l, act[0]), TB_ERR_STATE);
    ck_assert_uint_eq(l.n_adapters, n);
    /* A DoRA adapter added while merged: refused. */
    tb_lora_config cd = cfg_of(2, 2.0f, 0, 1, 0.0f);
    ck_assert_int_eq(tb_lora_add(&ctx, &l, "late", &cd, &rng), TB_ERR_STATE);
    ck_assert_uint_eq(l.n_adapters, n);
    CHECK_OK(ctx, tb_lora_unmerge(&ctx, &l));
    ck_assert_uint_eq(l.n_merged, 0);
    tbt_assert_close("lora unmerge restores W", lin.weight.value, w0, IN * OUT, 0.0,
                     8.0 * 0x1p-24 * (tbt_max_abs_f(w0, IN * OUT) + tbt_max_abs_f(w1, IN * OUT)));
    CHECK_OK(ctx, tb_lora_unmerge(&ctx, &l)); /* nothing merged: fine */
    CHECK_OK(ctx, tb_lora_delete(&ctx, &l, act[0]));
    free(u), free(w0), free(w1);
    tb_lora_free(&l);
    tb_linear_free(&lin);
}

START_TEST(lora_merge_unmerge)
{
    check_merge_matches(0, 0, 1);
    check_merge_matches(1, 0, 2);
    check_merge_matches(0, 1, 0);
    check_merge_matches(1, 1, 0);
    check_merge_matches(0, 1, 2); /* DoRA first, then two plain ones */
}
END_TEST

START_TEST(lora_merge_refusals)
{
    enum { R = 3, IN = 5, OUT = 7 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_linear lin;
    make_base(&ctx, &lin, IN, OUT, 1, TB_LINEAR_OUT_IN, 2);
    tb_lora l;
    CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
    tb_rng rng;
    tb_rng_init(&rng, 3);
    tb_lora_config cp = cfg_of(3, 5.0f, 0, 0, 0.0f), cd = cfg_of(2, 4.0f, 0, 1, 0.0f);
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "p", &cp, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "d", &cd, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "q", &cp, &rng));
    float w0[IN * OUT];
    memcpy(w0, lin.weight.value, sizeof w0);
    ck_assert_int_eq(tb_lora_merge(&ctx, &l, "nope", 0), TB_ERR_NOT_FOUND);
    ck_assert_int_eq(tb_lora_merge(NULL, &l, "p", 0), TB_ERR_NULL_ARG);
    /* Safe merge of a broken adapter: refused, W bitwise unchanged. */
    l.adapter[0].B.value[4] = NAN;
    ck_assert_int_eq(tb_lora_merge(&ctx, &l, "p", 1), TB_ERR_NON_FINITE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "'p'"));
    ck_assert(memcmp(w0, lin.weight.value, sizeof w0) == 0);
    ck_assert_int_eq(l.adapter[0].merged, 0);
    ck_assert_uint_eq(l.n_merged, 0);
    l.adapter[0].B.value[4] = INFINITY;
    ck_assert_int_eq(tb_lora_merge(&ctx, &l, "p", 1), TB_ERR_NON_FINITE);
    ck_assert(memcmp(w0, lin.weight.value, sizeof w0) == 0);
    l.adapter[0].B.value[4] = 0.25f;
    /* The set [p, d]: DoRA after another in one merge call: nothing merged. */
    const char *pd[2] = {"p", "d"};
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, pd, 2));
    ck_assert_int_eq(tb_lora_merge(&ctx, &l, NULL, 0), TB_ERR_STATE);
    ck_assert(memcmp(w0, lin.weight.value, sizeof w0) == 0);
    ck_assert_uint_eq(l.n_merged, 0);
    /* p merged: DoRA onto it refused; forward with d active and unmerged refused. */
    CHECK_OK(ctx, tb_lora_merge(&ctx, &l, "p", 1));
    ck_assert_int_eq(tb_lora_merge(&ctx, &l, "d", 0), TB_ERR_STATE);
    float x[R * IN], y[R * OUT], y2[R * OUT];
    tbt_fill_uniform(x, R * IN, -1, 1, 4);
    tb_tensor xt = tb_tensor_2d(x, R, IN), yt = tb_tensor_2d(y, R, OUT),
              y2t = tb_tensor_2d(y2, R, OUT);
    tbt_fill_sentinel(y, R * OUT);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, TB_MODE_INFERENCE, NULL, &xt, &yt, NULL, 0),
                     TB_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "'d'"));
    tbt_assert_untouched(y, R * OUT);
    /* A plain adapter unmerged next to the merged one still adds: [p, q]
     * with p merged equals [p, q] unmerged (|y| ~ 1 over in = 5 products:
     * rtol 1e-5, atol 1e-6 are ~16 ulp; a dropped q is off by ~0.1). */
    const char *pq[2] = {"p", "q"};
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, pq, 2));
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_INFERENCE, NULL, &xt, &yt, NULL, 0));
    CHECK_OK(ctx, tb_lora_unmerge(&ctx, &l));
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_INFERENCE, NULL, &xt, &y2t, NULL, 0));
    tbt_assert_close("lora p merged + q unmerged", y, y2, R * OUT, 1e-5, 1e-6);
    /* Merging into a weight the layer does not own (a view): refused. */
    tb_linear view;
    CHECK_OK(ctx, tb_linear_view(&ctx, &view, &lin.weight, &lin.bias, TB_LINEAR_OUT_IN));
    tb_lora lv;
    CHECK_OK(ctx, tb_lora_init(&ctx, &lv, &view));
    CHECK_OK(ctx, tb_lora_add(&ctx, &lv, "p", &cp, &rng));
    memcpy(w0, lin.weight.value, sizeof w0);
    ck_assert_int_eq(tb_lora_merge(&ctx, &lv, NULL, 0), TB_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "view"));
    ck_assert_int_eq(tb_lora_merge(&ctx, &lv, "p", 1), TB_ERR_STATE);
    ck_assert(memcmp(w0, lin.weight.value, sizeof w0) == 0);
    ck_assert_int_eq(lv.adapter[0].merged, 0);
    tb_lora_free(&lv);
    tb_linear_free(&view);
    tb_lora_free(&l);
    tb_linear_free(&lin);
}
END_TEST

/* ---- adapter management ---------------------------------------------------- */

START_TEST(lora_adapter_management)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_linear lin;
    make_base(&ctx, &lin, 5, 3, 1, TB_LINEAR_OUT_IN, 2);
    tb_lora l;
    ck_assert_int_eq(tb_lora_init(NULL, &l, &lin), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_init(&ctx, NULL, &lin), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_init(&ctx, &l, NULL), TB_ERR_NULL_ARG);
    tb_linear empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_lora_init(&ctx, &l, &empty), TB_ERR_STATE);
    ck_assert_ptr_null(l.base);
    CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_lora_config c = cfg_of(2, 4.0f, 0, 0, 0.0f);
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "first", &c, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "second", &c, &rng));
    /* The first adapter is active, later ones are added inactive. */
    ck_assert_uint_eq(l.n_active, 1);
    ck_assert_uint_eq(l.active[0], 0);
    ck_assert_int_eq(tb_lora_find(&l, "second"), 1);
    ck_assert_int_eq(tb_lora_find(&l, "third"), -1);
    ck_assert_int_eq(tb_lora_find(&l, NULL), -1);
    ck_assert_int_eq(tb_lora_find(NULL, "first"), -1);

    /* Every refused add leaves the layer (and the stream) as it was. */
    tb_lora snap;
    memcpy(&snap, &l, sizeof l);
    const uint64_t c0 = rng.counter;
    char long_name[TB_LORA_NAME_MAX + 1];
    memset(long_name, 'x', TB_LORA_NAME_MAX);
    long_name[TB_LORA_NAME_MAX] = '\0';
    const char *bad_names[] = {"", "a.b", "a b", "caf\xc3\xa9", "x/y", long_name};
    for (size_t i = 0; i < ARRAY_LEN(bad_names); i++) {
        ck_assert_int_eq(tb_lora_add(&ctx, &l, bad_names[i], &c, &rng), TB_ERR_INVALID_ARG);
        ck_assert(memcmp(&snap, &l, sizeof l) == 0);
    }
    ck_assert_int_eq(tb_lora_add(&ctx, &l, "first", &c, &rng), TB_ERR_DUPLICATE);
    ck_assert_int_eq(tb_lora_add(&ctx, &l, NULL, &c, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_add(&ctx, &l, "n", NULL, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_add(&ctx, &l, "n", &c, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_add(NULL, &l, "n", &c, &rng), TB_ERR_NULL_ARG);
    tb_lora_config bad[7];
    for (int i = 0; i < 7; i++)
        bad[i] = c;
    bad[0].rank = 0;
    bad[1].alpha = NAN;
    bad[2].alpha = INFINITY;
    bad[3].dropout = -0.1f;
    bad[4].dropout = 1.0f;
    bad[5].dropout = NAN;
    bad[6].init = (tb_lora_init_kind)7;
    for (int i = 0; i < 7; i++) {
        ck_assert_msg(tb_lora_add(&ctx, &l, "n", &bad[i], &rng) == TB_ERR_INVALID_ARG,
                      "bad config %d accepted", i);
        ck_assert(memcmp(&snap, &l, sizeof l) == 0);
    }
    ck_assert_uint_eq(rng.counter, c0);
    /* 31 characters is the longest name. */
    long_name[TB_LORA_NAME_MAX - 1] = '\0';
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, long_name, &c, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "A_b-9", &c, &rng));
    /* Up to TB_LORA_MAX_ADAPTERS. */
    char nm[16];
    for (int i = (int)l.n_adapters; i < TB_LORA_MAX_ADAPTERS; i++) {
        snprintf(nm, sizeof nm, "m%d", i);
        CHECK_OK(ctx, tb_lora_add(&ctx, &l, nm, &c, &rng));
    }
    memcpy(&snap, &l, sizeof l);
    ck_assert_int_eq(tb_lora_add(&ctx, &l, "ninth", &c, &rng), TB_ERR_INVALID_ARG);
    ck_assert(memcmp(&snap, &l, sizeof l) == 0);

    /* set_active: errors leave the set as it was. */
    const char *two[2] = {"m5", "first"};
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, two, 2));
    ck_assert_uint_eq(l.n_active, 2);
    ck_assert_uint_eq(l.active[0], 5);
    ck_assert_uint_eq(l.active[1], 0);
    memcpy(&snap, &l, sizeof l);
    const char *unknown[2] = {"first", "zzz"}, *twice[2] = {"second", "second"},
               *holes[2] = {"first", NULL};
    ck_assert_int_eq(tb_lora_set_active(&ctx, &l, unknown, 2), TB_ERR_NOT_FOUND);
    ck_assert_int_eq(tb_lora_set_active(&ctx, &l, twice, 2), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_lora_set_active(&ctx, &l, holes, 2), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_set_active(&ctx, &l, NULL, 1), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_set_active(NULL, &l, two, 2), TB_ERR_NULL_ARG);
    ck_assert(memcmp(&snap, &l, sizeof l) == 0);
    /* delete: unknown refused; a deleted adapter leaves the active set and
     * the others keep their names and order. */
    ck_assert_int_eq(tb_lora_delete(&ctx, &l, "zzz"), TB_ERR_NOT_FOUND);
    ck_assert_int_eq(tb_lora_delete(&ctx, &l, NULL), TB_ERR_NULL_ARG);
    ck_assert(memcmp(&snap, &l, sizeof l) == 0);
    CHECK_OK(ctx, tb_lora_delete(&ctx, &l, "second"));
    ck_assert_uint_eq(l.n_adapters, TB_LORA_MAX_ADAPTERS - 1);
    ck_assert_int_eq(tb_lora_find(&l, "second"), -1);
    ck_assert_uint_eq(l.n_active, 2);
    ck_assert_str_eq(l.adapter[l.active[0]].name, "m5");
    ck_assert_str_eq(l.adapter[l.active[1]].name, "first");
    CHECK_OK(ctx, tb_lora_delete(&ctx, &l, "first"));
    ck_assert_uint_eq(l.n_active, 1);
    ck_assert_str_eq(l.adapter[l.active[0]].name, "m5");
    /* The freed slot takes a new adapter again. */
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "again", &c, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "again2", &c, &rng));
    ck_assert_int_eq(tb_lora_add(&ctx, &l, "again3", &c, &rng), TB_ERR_INVALID_ARG);
    /* No active adapter: forward is the base layer's. */
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, NULL, 0));
    float x[2 * 5], y[2 * 3], yb[2 * 3];
    tbt_fill_uniform(x, 10, -1, 1, 3);
    tb_tensor xt = tb_tensor_2d(x, 2, 5), yt = tb_tensor_2d(y, 2, 3), ybt = tb_tensor_2d(yb, 2, 3);
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_INFERENCE, NULL, &xt, &yt, NULL, 0));
    CHECK_OK(ctx, tb_linear_forward(&ctx, &lin, &xt, &ybt));
    ck_assert(memcmp(y, yb, sizeof y) == 0);
    tb_lora_set_enabled(NULL, 0); /* ignored */
    tb_lora_free(&l);
    tb_lora_free(NULL);
    tb_linear_free(&lin);
}
END_TEST

/* ---- bad input to forward and backward --------------------------------------- */

START_TEST(lora_rejects_bad_input)
{
    enum { R = 3, IN = 5, OUT = 7 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_linear lin;
    make_base(&ctx, &lin, IN, OUT, 1, TB_LINEAR_OUT_IN, 2);
    tb_lora l;
    CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
    tb_rng rng;
    tb_rng_init(&rng, 3);
    tb_lora_config cd = cfg_of(3, 5.0f, 0, 1, 0.2f), cp = cfg_of(2, 4.0f, 0, 0, 0.0f);
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "d", &cd, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "p", &cp, &rng));
    size_t bytes, b1, b2;
    ck_assert_int_eq(tb_lora_cache_size(NULL, R, &bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_cache_size(&l, R, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_cache_size(&l, SIZE_MAX / 2, &bytes), TB_ERR_OVERFLOW);
    CHECK_OK(ctx, tb_lora_cache_size(&l, R, &b1));
    const char *dp[2] = {"d", "p"};
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, dp, 2));
    CHECK_OK(ctx, tb_lora_cache_size(&l, R, &b2));
    ck_assert_uint_gt(b2, b1); /* the size follows the active set */
    bytes = b2;
    unsigned char *cache = tbt_alloc(bytes + 64);
    float x[R * IN], y[R * OUT], dy[R * OUT], dx[R * IN], big[(R + 1) * (IN + OUT)];
    tbt_fill_uniform(x, R * IN, -1, 1, 1);
    tbt_fill_uniform(dy, R * OUT, -1, 1, 2);
    tbt_fill_sentinel(y, R * OUT);
    tb_tensor xt = tb_tensor_2d(x, R, IN), yt = tb_tensor_2d(y, R, OUT);
    tb_tensor dyt = tb_tensor_2d(dy, R, OUT), dxt = tb_tensor_2d(dx, R, IN);
    const tb_mode T = TB_MODE_TRAINING;
    ck_assert_int_eq(tb_lora_forward(NULL, &l, T, &rng, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_forward(&ctx, NULL, T, &rng, &xt, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, NULL, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, &xt, NULL, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, NULL, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    tb_tensor xbad = tb_tensor_2d(x, IN, R), ybad = tb_tensor_2d(y, R - 1, OUT),
              ybad2 = tb_tensor_2d(y, R, OUT - 1);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, &xbad, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, &xt, &ybad, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, &xt, &ybad2, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, &xt, &yt, cache, b1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, &xt, &yt, cache + 2, bytes),
                     TB_ERR_INVALID_ARG); /* misaligned */
    /* y over x, y over the cache: refused. */
    memcpy(big, x, sizeof x);
    tb_tensor xin = tb_tensor_2d(big, R, IN), yon = tb_tensor_2d(big + 1, R, OUT);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, &xin, &yon, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "y overlaps x"));
    tb_tensor yc = tb_tensor_2d((float *)(void *)(cache + 64), R, OUT);
    ck_assert_int_eq(tb_lora_forward(&ctx, &l, T, &rng, &xt, &yc, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "cache"));
    tbt_assert_untouched(y, R * OUT);
    /* Refused calls drew no dropout mask: the stream is where the adds left it. */
    ck_assert_uint_eq(rng.counter, l.adapter[0].A.numel + l.adapter[0].B.numel +
                                       l.adapter[1].A.numel + l.adapter[1].B.numel);
    tb_lora empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_lora_forward(&ctx, &empty, T, &rng, &xt, &yt, NULL, 0), TB_ERR_STATE);

    /* Backward: a cache no forward filled, or one from another active set
     * or row count, is refused, and nothing is written. */
    memset(cache, 0, bytes);
    tbt_fill_sentinel(dx, R * IN);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes), TB_ERR_STATE);
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l, T, &rng, &xt, &yt, cache, bytes));
    zero_grads(&l);
    ck_assert_int_eq(tb_lora_backward(NULL, &l, &xt, &dyt, &dxt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, NULL, &dyt, &dxt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, NULL, &dxt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, NULL, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, b1),
                     TB_ERR_BUFFER_TOO_SMALL);
    tb_tensor dxbad = tb_tensor_2d(dx, R, IN + 1), dybad = tb_tensor_2d(dy, R, OUT - 1);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxbad, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dybad, &dxt, cache, bytes), TB_ERR_SHAPE);
    tb_tensor dxonx = tb_tensor_2d(x, R, IN);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxonx, cache, bytes),
                     TB_ERR_INVALID_ARG);
    const char *pd[2] = {"p", "d"}; /* same adapters, other order */
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, pd, 2));
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes), TB_ERR_STATE);
    const char *justd[1] = {"d"};
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, justd, 1));
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes), TB_ERR_STATE);
    tb_lora_set_enabled(&l, 0);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes), TB_ERR_STATE);
    tb_lora_set_enabled(&l, 1);
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, dp, 2));
    tb_tensor x2 = tb_tensor_2d(x, R - 1, IN), dy2 = tb_tensor_2d(dy, R - 1, OUT),
              dx2 = tb_tensor_2d(dx, R - 1, IN);
    ck_assert_int_eq(tb_lora_backward(&ctx, &l, &x2, &dy2, &dx2, cache, bytes), TB_ERR_STATE);
    tbt_assert_untouched(dx, R * IN);
    for (size_t j = 0; j < 2; j++) {
        all_zero("refused backward", "dA", l.adapter[j].A.grad, l.adapter[j].A.numel);
        all_zero("refused backward", "dB", l.adapter[j].B.grad, l.adapter[j].B.numel);
    }
    all_zero("refused backward", "dm", l.adapter[0].magnitude.grad, OUT);
    CHECK_OK(ctx, tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes));
    CHECK_OK(ctx, tb_lora_backward(&ctx, &l, &xt, &dyt, NULL, cache, bytes)); /* dx optional */
    free(cache);
    tb_lora_free(&l);
    tb_linear_free(&lin);
}
END_TEST

/* ---- out of memory ----------------------------------------------------------
 * An allocator that fails from its k-th request on, for k = 0, 1, ... until
 * the call succeeds: every refused call returns TB_ERR_NO_MEMORY and leaves
 * the layer, the stream, the gradients and dx as they were (the products'
 * packing scratch is requested part way through forward and backward); a
 * cache a failed forward overwrote is refused by backward. */
typedef struct failing {
    int left;
    tb_allocator inner;
} failing;

static void *failing_alloc(void *user, size_t size, size_t alignment)
{
    failing *f = user;
    if (f->left-- <= 0)
        return NULL;
    return f->inner.alloc(f->inner.user, size, alignment);
}

static void failing_free(void *user, void *ptr)
{
    failing *f = user;
    f->inner.free(f->inner.user, ptr);
}

static tb_ctx failing_ctx(failing *f, int k)
{
    tb_ctx c;
    tbt_ctx_init(&c, 2);
    f->left = k;
    f->inner = tb_default_allocator();
    c.allocator.alloc = failing_alloc;
    c.allocator.free = failing_free;
    c.allocator.user = f;
    return c;
}

static size_t grads_of(const tb_lora *l, float *to)
{
    size_t k = 0;
    for (size_t j = 0; j < l->n_adapters; j++) {
        const tb_lora_adapter *ad = &l->adapter[j];
        const tb_param *p[3] = {&ad->A, &ad->B, &ad->magnitude};
        for (int q = 0; q < 3; q++) {
            if (to && p[q]->numel) /* a plain adapter's magnitude is empty (NULL) */
                memcpy(to + k, p[q]->grad, p[q]->numel * sizeof(float));
            k += p[q]->numel;
        }
    }
    return k;
}

START_TEST(lora_out_of_memory_changes_nothing)
{
    enum { R = 17, IN = 33, OUT = 50 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_linear lin;
    make_base(&ctx, &lin, IN, OUT, 1, TB_LINEAR_IN_OUT, 8);
    tb_lora l;
    CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
    tb_rng rng;
    tb_rng_init(&rng, 9);
    failing fa;
    tb_lora snap;
    int k, fails = 0;
    /* add */
    const tb_lora_config cfgs[2] = {cfg_of(3, 5.0f, 0, 0, 0.2f), cfg_of(8, 8.0f, 1, 1, 0.3f)};
    const char *names[2] = {"p", "d"};
    for (int j = 0; j < 2; j++)
        for (k = 0;; k++) {
            tb_ctx c = failing_ctx(&fa, k);
            memcpy(&snap, &l, sizeof l);
            const tb_rng r0 = rng;
            const tb_status st = tb_lora_add(&c, &l, names[j], &cfgs[j], &rng);
            if (st == TB_OK)
                break;
            ck_assert_int_eq(st, TB_ERR_NO_MEMORY);
            ck_assert(memcmp(&snap, &l, sizeof l) == 0);
            ck_assert(rng.counter == r0.counter);
            fails++;
        }
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, names, 2));
    float *x = tbt_alloc(R * IN * sizeof(float)), *dy = tbt_alloc(R * OUT * sizeof(float));
    float *y = tbt_alloc(R * OUT * sizeof(float)), *dx = tbt_alloc(R * IN * sizeof(float));
    tbt_fill_uniform(x, R * IN, -1, 1, 1);
    tbt_fill_uniform(dy, R * OUT, -1, 1, 2);
    tb_tensor xt = tb_tensor_2d(x, R, IN), yt = tb_tensor_2d(y, R, OUT);
    tb_tensor dyt = tb_tensor_2d(dy, R, OUT), dxt = tb_tensor_2d(dx, R, IN);
    size_t bytes;
    unsigned char *cache = cache_for(&l, R, &bytes), *cache0 = tbt_alloc(bytes);
    const size_t ng = grads_of(&l, NULL);
    float *g0 = tbt_alloc(ng * sizeof(float)), *g1 = tbt_alloc(ng * sizeof(float));
    /* forward */
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_TRAINING, &rng, &xt, &yt, cache, bytes));
    int forward_fails = 0;
    for (k = 0;; k++) {
        tb_ctx c = failing_ctx(&fa, k);
        memcpy(&snap, &l, sizeof l);
        memcpy(cache0, cache, bytes);
        const tb_rng r0 = rng;
        const tb_status st = tb_lora_forward(&c, &l, TB_MODE_TRAINING, &rng, &xt, &yt, cache,
                                             bytes);
        if (st == TB_OK)
            break;
        ck_assert_int_eq(st, TB_ERR_NO_MEMORY);
        ck_assert(memcmp(&snap, &l, sizeof l) == 0);
        ck_assert_msg(rng.key == r0.key && rng.counter == r0.counter,
                      "failed forward (allocation %d) moved the stream by %llu", k,
                      (unsigned long long)(rng.counter - r0.counter));
        if (memcmp(cache0, cache, bytes) != 0) {
            tbt_fill_sentinel(dx, R * IN);
            ck_assert_msg(tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes) ==
                              TB_ERR_STATE,
                          "backward took a cache a failed forward (allocation %d) overwrote", k);
            tbt_assert_untouched(dx, R * IN);
            memcpy(cache, cache0, bytes); /* the previous forward's, still consistent */
        }
        forward_fails++;
    }
    ck_assert_int_gt(forward_fails, 2); /* the products' scratch, not only the first request */
    /* backward */
    zero_grads(&l);
    CHECK_OK(ctx, tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes));
    int backward_fails = 0;
    for (k = 0;; k++) {
        tb_ctx c = failing_ctx(&fa, k);
        tbt_fill_sentinel(dx, R * IN);
        grads_of(&l, g0);
        const tb_status st = tb_lora_backward(&c, &l, &xt, &dyt, &dxt, cache, bytes);
        if (st == TB_OK)
            break;
        ck_assert_int_eq(st, TB_ERR_NO_MEMORY);
        tbt_assert_untouched(dx, R * IN);
        grads_of(&l, g1);
        ck_assert_msg(memcmp(g0, g1, ng * sizeof(float)) == 0,
                      "failed backward (allocation %d) changed a gradient", k);
        backward_fails++;
    }
    ck_assert_int_gt(backward_fails, 2);
    /* merge (DoRA alone, then the plain one) and unmerge */
    float *w0 = tbt_alloc(IN * OUT * sizeof(float));
    const char *order[2] = {"d", "p"};
    for (int j = 0; j < 2; j++)
        for (k = 0;; k++) {
            tb_ctx c = failing_ctx(&fa, k);
            memcpy(w0, lin.weight.value, IN * OUT * sizeof(float));
            const size_t nm = l.n_merged;
            const tb_status st = tb_lora_merge(&c, &l, order[j], 1);
            if (st == TB_OK)
                break;
            ck_assert_int_eq(st, TB_ERR_NO_MEMORY);
            ck_assert(memcmp(w0, lin.weight.value, IN * OUT * sizeof(float)) == 0);
            ck_assert_uint_eq(l.n_merged, nm);
            fails++;
        }
    for (k = 0;; k++) {
        tb_ctx c = failing_ctx(&fa, k);
        memcpy(w0, lin.weight.value, IN * OUT * sizeof(float));
        const tb_status st = tb_lora_unmerge(&c, &l);
        if (st == TB_OK)
            break;
        ck_assert_int_eq(st, TB_ERR_NO_MEMORY);
        ck_assert(memcmp(w0, lin.weight.value, IN * OUT * sizeof(float)) == 0);
        ck_assert_uint_eq(l.n_merged, 2);
        fails++;
    }
    ck_assert_uint_eq(l.n_merged, 0);
    printf("  lora out of memory: %d refused adds/merges/unmerges, %d forwards, %d backwards "
           "changed nothing\n", fails, forward_fails, backward_fails);
    free(x), free(dy), free(y), free(dx), free(cache), free(cache0), free(g0), free(g1), free(w0);
    tb_lora_free(&l);
    tb_linear_free(&lin);
}
END_TEST

/* ---- threads: bitwise identical for 1, 2 and 3 threads ------------------------
 * Shapes large enough that every parallel loop is split (work >= 32768). */
typedef struct thr_out {
    float *y, *dx, *g, *w;
    size_t ny, nx, ng, nw;
} thr_out;

static thr_out run_threads(int threads, int layout)
{
    enum { R = 256, IN = 96, OUT = 160 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    tb_linear lin;
    make_base(&ctx, &lin, IN, OUT, 1, layout ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN, 30);
    tb_lora l;
    CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
    tb_rng rng;
    tb_rng_init(&rng, 31);
    tb_lora_config c0 = cfg_of(8, 16.0f, 0, 0, 0.1f), c1 = cfg_of(4, 4.0f, 1, 1, 0.2f),
                   c2 = cfg_of(3, 3.0f, 0, 1, 0.0f);
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "a", &c0, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "b", &c1, &rng));
    CHECK_OK(ctx, tb_lora_add(&ctx, &l, "c", &c2, &rng));
    const char *abc[3] = {"a", "b", "c"};
    CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, abc, 3));
    thr_out o;
    o.ny = R * OUT, o.nx = R * IN, o.nw = IN * OUT;
    o.ng = 0;
    for (size_t j = 0; j < 3; j++)
        o.ng += l.adapter[j].A.numel + l.adapter[j].B.numel + l.adapter[j].magnitude.numel;
    float *x = tbt_alloc(o.nx * sizeof(float)), *dy = tbt_alloc(o.ny * sizeof(float));
    o.y = tbt_alloc(o.ny * sizeof(float)), o.dx = tbt_alloc(o.nx * sizeof(float));
    o.g = tbt_alloc(o.ng * sizeof(float)), o.w = tbt_alloc(o.nw * sizeof(float));
    tbt_fill_uniform(x, o.nx, -1, 1, 32);
    tbt_fill_uniform(dy, o.ny, -1, 1, 33);
    tb_tensor xt = tb_tensor_2d(x, R, IN), yt = tb_tensor_2d(o.y, R, OUT);
    tb_tensor dyt = tb_tensor_2d(dy, R, OUT), dxt = tb_tensor_2d(o.dx, R, IN);
    size_t bytes;
    void *cache = cache_for(&l, R, &bytes);
    CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_TRAINING, &rng, &xt, &yt, cache, bytes));
    CHECK_OK(ctx, tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, cache, bytes));
    size_t k = 0;
    for (size_t j = 0; j < 3; j++) {
        const tb_lora_adapter *ad = &l.adapter[j];
        memcpy(o.g + k, ad->A.grad, ad->A.numel * sizeof(float)), k += ad->A.numel;
        memcpy(o.g + k, ad->B.grad, ad->B.numel * sizeof(float)), k += ad->B.numel;
        if (ad->magnitude.numel)
            memcpy(o.g + k, ad->magnitude.grad, ad->magnitude.numel * sizeof(float));
        k += ad->magnitude.numel;
    }
    /* The merged weight of b (DoRA, alone) then a and c's plain parts. */
    CHECK_OK(ctx, tb_lora_merge(&ctx, &l, "b", 1));
    CHECK_OK(ctx, tb_lora_merge(&ctx, &l, "a", 0));
    memcpy(o.w, lin.weight.value, o.nw * sizeof(float));
    free(x), free(dy), free(cache);
    tb_lora_free(&l);
    tb_linear_free(&lin);
    return o;
}

START_TEST(lora_bitwise_identical_for_1_2_3_threads)
{
    for (int layout = 0; layout < 2; layout++) {
        thr_out r1 = run_threads(1, layout);
        for (int t = 2; t <= 3; t++) {
            thr_out rt = run_threads(t, layout);
            ck_assert_msg(memcmp(r1.y, rt.y, r1.ny * sizeof(float)) == 0, "y, %d threads", t);
            ck_assert_msg(memcmp(r1.dx, rt.dx, r1.nx * sizeof(float)) == 0, "dx, %d threads", t);
            ck_assert_msg(memcmp(r1.g, rt.g, r1.ng * sizeof(float)) == 0, "grads, %d threads", t);
            ck_assert_msg(memcmp(r1.w, rt.w, r1.nw * sizeof(float)) == 0, "merged W, %d threads",
                          t);
            free(rt.y), free(rt.dx), free(rt.g), free(rt.w);
        }
        free(r1.y), free(r1.dx), free(r1.g), free(r1.w);
    }
}
END_TEST

/* ---- target_modules matching --------------------------------------------------- */

START_TEST(lora_target_matches)
{
    ck_assert_int_eq(tb_lora_target_matches("h.0.attn.c_attn", "c_attn"), 1);
    ck_assert_int_eq(tb_lora_target_matches("c_attn", "c_attn"), 1);
    ck_assert_int_eq(tb_lora_target_matches("h.0.attn.xc_attn", "c_attn"), 0);
    ck_assert_int_eq(tb_lora_target_matches("xc_attn", "c_attn"), 0);
    ck_assert_int_eq(tb_lora_target_matches("h.0.attn.c_attn.x", "c_attn"), 0);
    ck_assert_int_eq(tb_lora_target_matches("h.0.attn.c_attn", "attn.c_attn"), 1);
    ck_assert_int_eq(tb_lora_target_matches("h.0.attn.c_attn", "0.attn.c_attn"), 1);
    ck_assert_int_eq(tb_lora_target_matches("h.0.attn.c_attn", "h.0.attn.c_attn"), 1);
    ck_assert_int_eq(tb_lora_target_matches("attn", "c_attn"), 0);
    ck_assert_int_eq(tb_lora_target_matches("c_attn", ""), 0);
    ck_assert_int_eq(tb_lora_target_matches("", "c_attn"), 0);
    ck_assert_int_eq(tb_lora_target_matches("", ""), 0);
    ck_assert_int_eq(tb_lora_target_matches(NULL, "c_attn"), 0);
    ck_assert_int_eq(tb_lora_target_matches("c_attn", NULL), 0);
    ck_assert_int_eq(tb_lora_target_matches(".c_attn", "c_attn"), 1);
    ck_assert_int_eq(tb_lora_target_matches("h.0.attn.c_attn", "h.0.attn.c"), 0);
}
END_TEST

Suite *suite_lora(void)
{
    Suite *s = suite_create("lora");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, lora_adapter_management);
    tcase_add_test(t0, lora_rejects_bad_input);
    tcase_add_test(t0, lora_target_matches);
    tcase_add_test(t0, lora_out_of_memory_changes_nothing);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("finite_differences");
    tcase_set_timeout(t1, 120);
    tcase_add_test(t1, lora_gradients);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("peft");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_oracle_lora, 0, (int)ARRAY_LEN(lora_cases));
    tcase_add_loop_test(t2, test_oracle_lora_dora_init, 0, (int)ARRAY_LEN(lora_init_cases));
    tcase_add_test(t2, test_lora_all_cases_tested);
    suite_add_tcase(s, t2);
    TCase *t3 = tcase_create("semantics");
    tcase_set_timeout(t3, 60);
    tcase_add_test(t3, lora_dropout_semantics);
    tcase_add_test(t3, lora_init_values);
    tcase_add_test(t3, lora_frozen_base_and_params);
    tcase_add_test(t3, lora_merge_unmerge);
    tcase_add_test(t3, lora_merge_refusals);
    suite_add_tcase(s, t3);
    TCase *t4 = tcase_create("threads");
    tcase_set_timeout(t4, 60);
    tcase_add_test(t4, lora_bitwise_identical_for_1_2_3_threads);
    suite_add_tcase(s, t4);
    return s;
}
