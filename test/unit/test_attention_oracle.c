/*
 * PyTorch oracle tests of the attention core (tb_attention_forward,
 * tb_attention_backward, tb_attention_probs), run on the exact inputs,
 * masks and upstream gradients that test/oracle/gen_reference.py fed to
 * PyTorch (build_attention_cases(); listed in attention_cases.txt).
 *
 * Every case carries two references per quantity: float32
 * torch.nn.functional.scaled_dot_product_attention with autograd (masks as
 * an explicit boolean / additive attn_mask, K/V expanded with
 * repeat_interleave for grouped-query attention), and "<name>_f64", a
 * manual safe softmax(scale QK^T + mask) V in float64 on the same float32
 * numbers (the generator checks it against float64 SDPA to 1e-12). The
 * library is compared with both. The cases cover H in {1, 2, 12}, D in
 * {1, 3, 16, 8}, B in {1, 2}, T in {1, 3, 17, 65}, cross-attention
 * (Tq != Tk) with the end-aligned causal mask, key lengths, key-valid
 * masks, additive float masks with -inf entries, sliding windows, grouped
 * queries (H = 4 with 1 or 2 kv heads), a packed (B, T, 3C) QKV tensor
 * (gradients written into a packed buffer too), an explicit scale, scores
 * up to ~50 (online-softmax rescaling), fully masked query rows, shapes
 * of several 64 x 64 tiles (T up to 300, windows wider than a tile, masks
 * ending mid-tile), attention dropout, and a sweep over every head size
 * 1..128 with key (and query) counts on both sides of every 64-row tile
 * boundary (all six key counts for head sizes 49..65, where the AVX2
 * kernel's tiles once overran their scratch). For the dropout cases both
 * references are the manual implementation with the library's mask
 * (re-generated in Python from its definition in attention.h), since SDPA
 * draws its own mask: a wrong mask position, a missing 1/(1-p) or dropout
 * forgotten in backward changes results by O(1).
 *
 * Outputs and gradients are pre-filled with NaN, so an element the library
 * forgets to write fails (backward must overwrite, not accumulate).
 * n_kv_heads is passed as 0 ("= H") on every other case without grouping.
 *
 * ---- Tolerances -----------------------------------------------------------
 * Element i passes when |got - want| <= atol + rtol * |want| with
 * atol = factor * unit, where unit is the natural scale of the quantity,
 * computed by the generator in float64 as the same sums over absolute
 * values (the size of the terms that are added and cancel; float rounding
 * error scales with it, not with the possibly cancelled result):
 *   out:  max p |v|;              dv: max sum over the group of p^T |dout|;
 *   dq:   scale * max W |k|;      dk: scale * max sum over the group W^T |q|;
 *   with A_ij = |dout_i|.|v_j|, Abar_i = sum_j p_ij A_ij and
 *   W_ij = p_ij (A_ij + Abar_i) >= |p_ij (dP_ij - delta_i)|;
 *   probs: 1.
 * Measured: float32 SDPA differs from the float64 reference by at most
 * 6.4e-7 * unit (2.2e-7 * unit beyond rtol 1e-5), the largest on the case
 * with scores up to ~50, where a score's float rounding (~|s| ulp) becomes a
 * relative error of exp(s); elsewhere <= 1.5e-7 * unit beyond rtol.
 * An implementation in float32 has errors of the same kind (score dot
 * products of D terms, exp, an online-softmax rescale per key block, sums
 * over Tk <= 65 keys or Tq queries): a few tens of ulp of the unit at most.
 *   vs float64:          rtol 1e-5, atol 2e-6 * unit (~34 ulp of the unit,
 *                        ~9x the largest float32 SDPA deviation);
 *   vs float32 PyTorch:  rtol 1e-5, atol 3e-6 * unit (both errors).
 * Any semantic mistake (a mask off by one key, a wrong scale, a wrong kv
 * head, a missing rescale) changes results by O(p) ~ 1e-2 of the unit or
 * more, 5000x the tolerance.
 * Quantities that are exactly 0 in exact arithmetic (dq and dk when every
 * query sees exactly one key: T = 1, window 1) are checked as "zero at
 * scale": the float64 reference is <= 1e-6 * unit and the library must be
 * <= 2e-6 * unit.
 * Fully masked query rows must give exactly 0 (out and dq, every head), per
 * attention.h; probabilities of masked keys must be exactly 0 (exp(-inf)).
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

static const char *const attention_cases[] = {
    "attention_b1_t1_h1_d1",
    "attention_b1_t1_h1_d1_causal",
    "attention_b2_t3_h1_d3",
    "attention_b2_t3_h1_d3_causal",
    "attention_b1_t17_h1_d16",
    "attention_b1_t17_h1_d16_causal",
    "attention_b2_t65_h1_d3",
    "attention_b2_t65_h1_d3_causal",
    "attention_b2_t1_h2_d16",
    "attention_b2_t1_h2_d16_causal",
    "attention_b1_t3_h2_d1",
    "attention_b1_t3_h2_d1_causal",
    "attention_b2_t17_h2_d16",
    "attention_b2_t17_h2_d16_causal",
    "attention_b1_t65_h2_d16",
    "attention_b1_t65_h2_d16_causal",
    "attention_b2_t3_h12_d8",
    "attention_b2_t3_h12_d8_causal",
    "attention_b1_t17_h12_d8",
    "attention_b1_t17_h12_d8_causal",
    "attention_b2_t65_h12_d8",
    "attention_b2_t65_h12_d8_causal",
    "attention_cross_b2_tq3_tk17_h2_d16",
    "attention_cross_b2_tq3_tk17_h2_d16_causal",
    "attention_cross_b2_tq17_tk5_h2_d3",
    "attention_cross_b2_tq17_tk5_h2_d3_causal",
    "attention_cross_b1_tq1_tk65_h12_d8",
    "attention_cross_b1_tq1_tk65_h12_d8_causal",
    "attention_cross_b2_tq17_tk65_h1_d16",
    "attention_cross_b2_tq17_tk65_h1_d16_causal",
    "attention_keylen_b2_t17_h2_d16",
    "attention_keylen_b2_t17_h2_d16_causal",
    "attention_keylen_cross_b2_tq3_tk17_h12_d8",
    "attention_keyvalid_b2_t17_h2_d16",
    "attention_keyvalid_b2_t65_h1_d3",
    "attention_keyvalid_cross_b2_tq17_tk5_h2_d3",
    "attention_bias_b2_t17_h2_d16",
    "attention_bias_b2_t17_h2_d16_causal",
    "attention_bias_cross_b1_tq3_tk17_h12_d8",
    "attention_window1_b2_tq17_tk17_h2_d16",
    "attention_window4_b2_tq17_tk17_h2_d16",
    "attention_window16_b1_tq65_tk65_h12_d8",
    "attention_window5_b2_tq3_tk17_h2_d16",
    "attention_window2_b2_tq17_tk5_h1_d3",
    "attention_gqa1_b2_t17_h4_d8_causal",
    "attention_gqa1_cross_b2_tq3_tk17_h4_d16",
    "attention_gqa2_b2_t17_h4_d8_causal",
    "attention_gqa2_cross_b2_tq3_tk17_h4_d16",
    "attention_gqa2_b2_t65_h4_d3_window8",
    "attention_packed_b2_t17_h2_d8_causal",
    "attention_packed_b1_t65_h12_d8",
    "attention_scale0.3_b2_t17_h2_d16_causal",
    "attention_large_b2_t65_h2_d16",
    "attention_large_b1_t17_h1_d16_causal",
    "attention_fullmask_keylen0_b2_t17_h2_d16",
    "attention_fullmask_bias_b2_t17_h2_d8_causal",
    "attention_fullmask_all_b2_tq5_tk7_h4_d4_gqa2",
    "attention_tiles_b2_t200_h2_d16_causal",
    "attention_tiles_b1_t131_h3_d8",
    "attention_tiles_window70_b1_t200_h2_d8",
    "attention_tiles_keylen_b2_t150_h2_d8_causal",
    "attention_tiles_cross_b1_tq130_tk300_h2_d8_causal",
    "attention_tiles_bias_b1_t129_h1_d16",
    "attention_tiles_gqa2_b1_t140_h4_d8_causal",
    "attention_dropout0.1_b2_t17_h2_d8",
    "attention_dropout0.5_b1_t70_h3_d8_causal",
    "attention_dropout0.3_b2_tq5_tk80_h2_d4_gqa_keylen",
};

/* ---- helpers ------------------------------------------------------------ */

static double max_abs(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m)
            m = fabs((double)x[i]);
    return m;
}

static size_t ref_size(const tbt_ref *ref, const char *name)
{
    const int32_t v = tbt_ref_i32_scalar(ref, name);
    ck_assert_msg(v >= 0, "%s = %d", name, (int)v);
    return (size_t)v;
}

/* Columns [off, off + cols) of a (rows, w) buffer, as a new (rows, cols). */
static float *extract_cols(const float *buf, size_t rows, size_t w, size_t off, size_t cols)
{
    float *out = tbt_alloc(rows * cols * sizeof(float));
    for (size_t r = 0; r < rows; r++)
        memcpy(out + r * cols, buf + r * w + off, cols * sizeof(float));
    return out;
}

/* Compare `got` with reference `name` (float32 SDPA) and `name`_f64, atol
 * relative to `unit`; "zero at scale" when the float64 reference is ~0. */
static void check_vs(const tbt_ref *ref, const char *blk, const char *name, const float *got,
                     size_t n, double unit)
{
    char lbl[192], nm64[64];
    ck_assert_msg(unit > 0 && isfinite(unit), "%s.%s: unit %g", blk, name, unit);
    snprintf(nm64, sizeof nm64, "%s_f64", name);
    tbt_reft w32 = tbt_ref_get(ref, name), w64 = tbt_ref_get(ref, nm64);
    ck_assert_uint_eq(w32.n, n);
    ck_assert_uint_eq(w64.n, n);
    if (max_abs(w64.data, n) <= ZERO_REF_REL * unit) {
        const double m = max_abs(got, n), atol = ATOL64_REL * unit;
        int finite = 1;
        for (size_t i = 0; i < n; i++)
            finite &= isfinite(got[i]) != 0;
        snprintf(lbl, sizeof lbl, "%s.%s", blk, name);
        printf("  compare %-40s n=%-7zu zero at scale: max|got|=%.3e (atol=%.0e)%s\n", lbl, n,
               m, atol, finite && m <= atol ? "" : "  MISMATCH");
        fflush(stdout);
        ck_assert_msg(finite && m <= atol, "%s: max |got| = %g, expected 0 (within %g)", lbl, m,
                      atol);
        return;
    }
    snprintf(lbl, sizeof lbl, "%s.%s", blk, name);
    tbt_assert_close(lbl, got, w32.data, n, RTOL, ATOL32_REL * unit);
    snprintf(lbl, sizeof lbl, "%s.%s_vs_f64", blk, name);
    tbt_assert_close(lbl, got, w64.data, n, RTOL, ATOL64_REL * unit);
}

/* ---- the cases ------------------------------------------------------------ */

/* ---- the sweep: head sizes 1..128, key counts around the tiles ------------
 * The names gen_reference.py's attention_sweep_specs() writes, built by the
 * same rule: every head size once (key counts cycling through 63, 64, 65,
 * 127, 128, 129; even sizes self-attention, causal on multiples of 4; odd
 * sizes cross-attention with 1, 63, 64, 65 or 129 queries, causal on
 * multiples of 3), then every other key count for head sizes 49..65. */
static const size_t SWEEP_TKS[6] = {63, 64, 65, 127, 128, 129};
static const size_t SWEEP_TQS[5] = {1, 63, 64, 65, 129};
#define MAX_SWEEP 256
static char g_sweep[MAX_SWEEP][64];
static size_t g_n_sweep;

static void sweep_add(size_t d, size_t tq, size_t tk, int causal)
{
    if (g_n_sweep >= MAX_SWEEP) { /* called before any test runs: no ck_assert here */
        fprintf(stderr, "test_attention_oracle.c: more than %d sweep cases\n", MAX_SWEEP);
        abort();
    }
    snprintf(g_sweep[g_n_sweep++], sizeof g_sweep[0], "attention_sweep_d%zu_tq%zu_tk%zu%s", d,
             tq, tk, causal ? "_causal" : "");
}

static void sweep_case_names(void)
{
    if (g_n_sweep)
        return;
    for (size_t d = 1; d <= 128; d++) {
        const size_t tk = SWEEP_TKS[d % 6];
        if (d % 2 == 0)
            sweep_add(d, tk, tk, d % 4 == 0);
        else
            sweep_add(d, SWEEP_TQS[(d / 2) % 5], tk, d % 3 == 0);
    }
    for (size_t d = 49; d <= 65; d++)
        for (size_t i = 0; i < 6; i++)
            if (SWEEP_TKS[i] != SWEEP_TKS[d % 6])
                sweep_add(d, SWEEP_TKS[i], SWEEP_TKS[i], (d + i) % 2 == 0);
}

/* One case: forward, backward (and the probabilities where the file has
 * them), against both references. */
static void run_attention_case(const char *name, int case_index)
{
    const int _i = case_index; /* alternates n_kv_heads = 0 / = H below */
    tbt_ref *ref = tbt_ref_load(name);
    const size_t h = ref_size(ref, "n_heads"), hkv = ref_size(ref, "n_kv_heads");
    const size_t d = ref_size(ref, "head_dim"), window = ref_size(ref, "window");
    const int causal = tbt_ref_i32_scalar(ref, "causal");
    const int packed = tbt_ref_i32_scalar(ref, "packed");
    const float scale = tbt_ref_scalar(ref, "scale");
    const size_t c = h * d, ckv = hkv * d;

    tb_attention_config cfg = tb_attention_default_config(h, d);
    ck_assert_uint_eq(cfg.n_heads, h);
    ck_assert_uint_eq(cfg.head_dim, d);
    ck_assert(cfg.n_kv_heads == h || cfg.n_kv_heads == 0);
    ck_assert_int_eq(cfg.causal, 0);
    ck_assert_uint_eq(cfg.window, 0);
    ck_assert(cfg.scale == 0.0f || cfg.scale == 1.0f / sqrtf((float)d));
    cfg.n_kv_heads = (hkv == h && _i % 2) ? 0 : hkv;
    cfg.causal = causal;
    cfg.window = window;
    cfg.scale = scale;

    /* Inputs: separate (B, T, C) tensors or one packed (B, T, 3C). */
    size_t b, tq, tk;
    float *qkvb = NULL, *qb = NULL, *kb = NULL, *vb = NULL;
    tb_tensor qt, kt, vt;
    tb_heads q, k, v;
    tbt_reft qkv_r = {0}, q_r = {0}, k_r = {0}, v_r = {0};
    if (packed) {
        qkv_r = tbt_ref_get(ref, "qkv");
        ck_assert_uint_eq(qkv_r.ndim, 3);
        b = qkv_r.shape[0], tq = tk = qkv_r.shape[1];
        ck_assert_uint_eq(qkv_r.shape[2], 3 * c);
        qkvb = tbt_ref_dup(&qkv_r);
        qt = tbt_view_like(qkvb, &qkv_r);
        q = (tb_heads){&qt, 0}, k = (tb_heads){&qt, c}, v = (tb_heads){&qt, 2 * c};
    } else {
        q_r = tbt_ref_get(ref, "q"), k_r = tbt_ref_get(ref, "k"), v_r = tbt_ref_get(ref, "v");
        ck_assert_uint_eq(q_r.ndim, 3);
        b = q_r.shape[0], tq = q_r.shape[1], tk = k_r.shape[1];
        ck_assert_uint_eq(q_r.shape[2], c);
        ck_assert_uint_eq(k_r.shape[2], ckv);
        qb = tbt_ref_dup(&q_r), kb = tbt_ref_dup(&k_r), vb = tbt_ref_dup(&v_r);
        qt = tbt_view_like(qb, &q_r), kt = tbt_view_like(kb, &k_r), vt = tbt_view_like(vb, &v_r);
        q = (tb_heads){&qt, 0}, k = (tb_heads){&kt, 0}, v = (tb_heads){&vt, 0};
    }

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    /* Masks. key_valid bytes: any nonzero value means valid. */
    tb_attention_mask mask = {NULL, NULL, NULL, 0.0f, 0, 0};
    uint8_t *valid = NULL;
    if (tbt_ref_has(ref, "key_lengths")) {
        size_t n;
        mask.key_lengths = tbt_ref_i32(ref, "key_lengths", &n);
        ck_assert_uint_eq(n, b);
    }
    if (tbt_ref_has(ref, "key_valid")) {
        size_t n;
        const int32_t *kv = tbt_ref_i32(ref, "key_valid", &n);
        ck_assert_uint_eq(n, b * tk);
        valid = tbt_alloc(n);
        for (size_t i = 0; i < n; i++)
            valid[i] = kv[i] ? (uint8_t)(1 + (i * 37) % 255) : 0;
        mask.key_valid = valid;
    }
    if (tbt_ref_has(ref, "bias")) {
        tbt_reft br = tbt_ref_get(ref, "bias");
        ck_assert_uint_eq(br.n, tq * tk);
        mask.bias = br.data;
    }
    if (tbt_ref_has(ref, "dropout")) {
        tb_rng rng;
        tb_rng_init(&rng, (uint64_t)tbt_ref_i32_scalar(ref, "dropout_seed"));
        rng.counter = (uint64_t)tbt_ref_i32_scalar(ref, "dropout_counter");
        const tb_rng before = rng;
        const float p = tbt_ref_scalar(ref, "dropout");
        ck_assert_int_eq(tb_attention_dropout_draw(&ctx, &cfg, &mask, &rng, p, b, tq, tk), TB_OK);
        ck_assert(mask.dropout_key == before.key && mask.dropout_counter == before.counter);
        ck_assert(rng.counter == before.counter + (uint64_t)(b * h * tq * tk));
    }
    size_t nrm;
    const int32_t *row_masked = tbt_ref_i32(ref, "row_masked", &nrm);
    ck_assert_uint_eq(nrm, b * tq);

    size_t cache_bytes;
    CHECK_OK(ctx, tb_attention_cache_size(&cfg, b, tq, &cache_bytes));
    void *cache = tbt_alloc(cache_bytes);
    float *outb = tbt_nan_buffer(b * tq * c);
    tb_tensor outt = tb_tensor_3d(outb, b, tq, c);
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &mask, &q, &k, &v, &outt,
                                       cache, cache_bytes));

    tbt_reft dout_r = tbt_ref_get(ref, "dout");
    ck_assert_uint_eq(dout_r.n, b * tq * c);
    float *doutb = tbt_ref_dup(&dout_r);
    tb_tensor doutt = tb_tensor_3d(doutb, b, tq, c);
    float *dqb, *dkb, *dvb, *dqkvb = NULL;
    tb_tensor dqt, dkt, dvt;
    tb_heads dq, dk, dv;
    if (packed) {
        dqkvb = tbt_nan_buffer(b * tq * 3 * c);
        dqt = tb_tensor_3d(dqkvb, b, tq, 3 * c);
        dq = (tb_heads){&dqt, 0}, dk = (tb_heads){&dqt, c}, dv = (tb_heads){&dqt, 2 * c};
    } else {
        dqb = tbt_nan_buffer(b * tq * c);
        dkb = tbt_nan_buffer(b * tk * ckv);
        dvb = tbt_nan_buffer(b * tk * ckv);
        dqt = tb_tensor_3d(dqb, b, tq, c);
        dkt = tb_tensor_3d(dkb, b, tk, ckv);
        dvt = tb_tensor_3d(dvb, b, tk, ckv);
        dq = (tb_heads){&dqt, 0}, dk = (tb_heads){&dkt, 0}, dv = (tb_heads){&dvt, 0};
    }
    CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, &mask, &q, &k, &v, &outt, &doutt, cache,
                                        cache_bytes, &dq, &dk, &dv));
    if (packed) {
        dqb = extract_cols(dqkvb, b * tq, 3 * c, 0, c);
        dkb = extract_cols(dqkvb, b * tq, 3 * c, c, c);
        dvb = extract_cols(dqkvb, b * tq, 3 * c, 2 * c, c);
    }

    /* The inputs are not modified. */
    if (packed) {
        ck_assert(memcmp(qkvb, qkv_r.data, qkv_r.n * sizeof(float)) == 0);
    } else {
        ck_assert(memcmp(qb, q_r.data, q_r.n * sizeof(float)) == 0);
        ck_assert(memcmp(kb, k_r.data, k_r.n * sizeof(float)) == 0);
        ck_assert(memcmp(vb, v_r.data, v_r.n * sizeof(float)) == 0);
    }
    ck_assert(memcmp(doutb, dout_r.data, dout_r.n * sizeof(float)) == 0);

    char blk[160];
    snprintf(blk, sizeof blk, "attention[%s]", name + strlen("attention_"));
    check_vs(ref, blk, "out", outb, b * tq * c, tbt_ref_scalar(ref, "unit_out"));
    check_vs(ref, blk, "dq", dqb, b * tq * c, tbt_ref_scalar(ref, "unit_dq"));
    check_vs(ref, blk, "dk", dkb, b * tk * ckv, tbt_ref_scalar(ref, "unit_dk"));
    check_vs(ref, blk, "dv", dvb, b * tk * ckv, tbt_ref_scalar(ref, "unit_dv"));

    /* Fully masked queries: zero output and zero gradient, exactly. */
    size_t n_masked = 0;
    for (size_t r = 0; r < b * tq; r++) {
        if (!row_masked[r])
            continue;
        n_masked++;
        for (size_t j = 0; j < c; j++)
            ck_assert_msg(outb[r * c + j] == 0.0f && dqb[r * c + j] == 0.0f,
                          "%s: fully masked query (b=%zu, i=%zu) has out[%zu] = %g, dq = %g",
                          blk, r / tq, r % tq, j, (double)outb[r * c + j],
                          (double)dqb[r * c + j]);
    }
    if (n_masked) {
        printf("  check   %-40s %zu fully masked queries: out = dq = 0 exactly\n", blk,
               n_masked);
        fflush(stdout);
    }

    /* The probabilities themselves (small cases). */
    if (tbt_ref_has(ref, "probs")) {
        const size_t np = b * h * tq * tk;
        float *pb = tbt_nan_buffer(np);
        tb_tensor pt = tb_tensor_4d(pb, b, h, tq, tk);
        CHECK_OK(ctx, tb_attention_probs(&ctx, &cfg, &mask, &q, &k, &pt));
        check_vs(ref, blk, "probs", pb, np, 1.0);
        tbt_reft p64 = tbt_ref_get(ref, "probs_f64");
        for (size_t i = 0; i < np; i++)
            ck_assert_msg(p64.data[i] != 0.0f || pb[i] == 0.0f,
                          "%s: masked probability %zu is %g, expected 0", blk, i,
                          (double)pb[i]);
        free(pb);
    }

    free(cache);
    free(outb);
    free(doutb);
    free(dqb);
    free(dkb);
    free(dvb);
    free(dqkvb);
    free(qkvb);
    free(qb);
    free(kb);
    free(vb);
    free(valid);
    tbt_ref_free(ref);
}

START_TEST(test_attention_oracle_case)
{
    run_attention_case(attention_cases[_i], _i);
}
END_TEST

START_TEST(test_attention_oracle_sweep_case)
{
    run_attention_case(g_sweep[_i], _i);
}
END_TEST

/* ---- Coverage: every attention case the generator wrote is tested here -- */

static int sweep_listed(const char *name, const void *user)
{
    (void)user;
    for (size_t i = 0; i < g_n_sweep; i++)
        if (strcmp(g_sweep[i], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_attention_oracle_all_cases_tested)
{
    const tbt_names l = {attention_cases, ARRAY_LEN(attention_cases)};
    ck_assert_uint_eq(tbt_check_manifest("attention_cases.txt", "test_attention_oracle.c",
                                         tbt_name_listed, &l),
                      ARRAY_LEN(attention_cases));
    /* Names are unique (the generator asserts it): equal counts mean the
     * same set. */
    ck_assert_uint_eq(tbt_check_manifest("attention_sweep_cases.txt", "test_attention_oracle.c",
                                         sweep_listed, NULL),
                      g_n_sweep);
    ck_assert_uint_eq(g_n_sweep, 213);
}
END_TEST

Suite *suite_attention_oracle(void)
{
    Suite *s = suite_create("attention_oracle");
    TCase *tc = tcase_create("pytorch");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_attention_oracle_case, 0, (int)ARRAY_LEN(attention_cases));
    sweep_case_names();
    tcase_add_loop_test(tc, test_attention_oracle_sweep_case, 0, (int)g_n_sweep);
    tcase_add_test(tc, test_attention_oracle_all_cases_tested);
    suite_add_tcase(s, tc);
    return s;
}
