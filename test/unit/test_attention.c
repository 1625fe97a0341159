/*
 * Attention core (attention.h): finite-difference gradient checks of
 * tb_attention_backward w.r.t. q, k and v on odd shapes with causal,
 * sliding-window, key-length, key-valid and additive masks, grouped-query
 * and cross-attention and a packed QKV buffer; error paths; fully masked
 * query rows; bitwise determinism across thread counts; the cache size
 * (activation memory linear in T); and the PyTorch oracle (below).
 *
 * Gradient checks: L = sum(w .* out) for a fixed random w (dL/dout = w),
 * forward in float (no cache), L accumulated in double, central
 * differences with h = 1e-2, rtol 1e-2, atol 1e-3 (TBT_FD_* of testutil.h,
 * as the normalization blocks). Rounding: a perturbation of one q element changes one
 * query's C <= 12 outputs, of one k or v element at most Tq * D <= 40
 * outputs of |out| <= 1.5, so L moves by float rounding of at most
 * ~40 * 6e-8 * 1.5 ~ 4e-6, i.e. <= 2e-4 after dividing by 2h; the
 * truncation error h^2/6 |f'''| is ~1e-5 for scores of order 1 (inputs in
 * +-1.5, scale 1/sqrt(D)). A zero, sign-flipped or mis-assigned gradient
 * fails, since every check also requires max |numeric| > 10 * atol.
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

#define H_STEP 1e-2f
#define RTOL 1e-2
#define ATOL 1e-3
#define MAX_CHECKS 600

#define SENTINEL 12345.0f

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

static void assert_all_finite(const char *what, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(isfinite(x[i]), "%s[%zu] = %g is not finite", what, i, (double)x[i]);
}

/* ======================================================================
 * Finite-difference gradient checks
 * ==================================================================== */

/* One configuration: shapes, options, masks (NULL: none). */
typedef struct grad_spec {
    const char *tag;
    size_t b, tq, tk, h, hkv, d;
    int causal;
    size_t window;
    float scale;
    const int32_t *lengths;
    const uint8_t *valid;
    const float *bias;
    int packed; /* q, k, v in one (B, T, 3C) buffer (tq == tk, hkv == h) */
} grad_spec;

typedef struct attn_prob {
    tb_ctx ctx;
    tb_attention_config cfg;
    tb_attention_mask mask;
    tb_tensor qt, kt, vt, outt;
    tb_heads q, k, v;
    float *out, *w;
    size_t n_out;
} attn_prob;

static double attn_loss(void *user)
{
    attn_prob *p = user;
    CHECK_OK(p->ctx, tb_attention_forward(&p->ctx, &p->cfg, TB_MODE_TRAINING, &p->mask, &p->q,
                                          &p->k, &p->v, &p->outt, NULL, 0));
    return tbt_dot(p->w, p->out, p->n_out);
}

/* The check, with attention dropout p (0: off) drawn from a fixed stream:
 * the mask is a fixed function of the stream, so the loss is a smooth
 * function of q, k, v and finite differences apply. */
static void check_attn_grad_dropout(const grad_spec *s, float dropout)
{
    attn_prob p;
    memset(&p, 0, sizeof p);
    tbt_ctx_init(&p.ctx, 1);
    const size_t hkv = s->hkv ? s->hkv : s->h;
    const size_t c = s->h * s->d, ckv = hkv * s->d;
    p.cfg = tb_attention_default_config(s->h, s->d);
    p.cfg.n_kv_heads = s->hkv;
    p.cfg.causal = s->causal;
    p.cfg.window = s->window;
    p.cfg.scale = s->scale;
    p.mask.key_lengths = s->lengths;
    p.mask.key_valid = s->valid;
    p.mask.bias = s->bias;
    const uint64_t seed = s->b * 1000 + s->tq * 100 + s->tk * 10 + s->h + 7 * s->d;
    if (dropout > 0.0f) {
        tb_rng rng;
        tb_rng_init(&rng, seed + 4242);
        ck_assert_int_eq(
            tb_attention_dropout_draw(&p.ctx, &p.cfg, &p.mask, &rng, dropout, s->b, s->tq, s->tk),
            TB_OK);
    }
    float *bufs[3], *grads[3];
    size_t sizes[3];
    tb_tensor gt[3];
    tb_heads dq, dk, dv;
    if (s->packed) {
        ck_assert(s->tq == s->tk && hkv == s->h);
        sizes[0] = s->b * s->tq * 3 * c;
        bufs[0] = tbt_alloc(sizes[0] * sizeof(float));
        tbt_fill_uniform(bufs[0], sizes[0], -1.5f, 1.5f, seed);
        p.qt = tb_tensor_3d(bufs[0], s->b, s->tq, 3 * c);
        p.q = (tb_heads){&p.qt, 0}, p.k = (tb_heads){&p.qt, c}, p.v = (tb_heads){&p.qt, 2 * c};
        grads[0] = tbt_nan_buffer(sizes[0]);
        gt[0] = tb_tensor_3d(grads[0], s->b, s->tq, 3 * c);
        dq = (tb_heads){&gt[0], 0}, dk = (tb_heads){&gt[0], c}, dv = (tb_heads){&gt[0], 2 * c};
    } else {
        sizes[0] = s->b * s->tq * c;
        sizes[1] = sizes[2] = s->b * s->tk * ckv;
        for (int i = 0; i < 3; i++) {
            bufs[i] = tbt_alloc(sizes[i] * sizeof(float));
            tbt_fill_uniform(bufs[i], sizes[i], i == 2 ? -1.0f : -1.5f, i == 2 ? 1.0f : 1.5f,
                             seed + (uint64_t)i + 1);
            grads[i] = tbt_nan_buffer(sizes[i]);
        }
        p.qt = tb_tensor_3d(bufs[0], s->b, s->tq, c);
        p.kt = tb_tensor_3d(bufs[1], s->b, s->tk, ckv);
        p.vt = tb_tensor_3d(bufs[2], s->b, s->tk, ckv);
        p.q = (tb_heads){&p.qt, 0}, p.k = (tb_heads){&p.kt, 0}, p.v = (tb_heads){&p.vt, 0};
        gt[0] = tb_tensor_3d(grads[0], s->b, s->tq, c);
        gt[1] = tb_tensor_3d(grads[1], s->b, s->tk, ckv);
        gt[2] = tb_tensor_3d(grads[2], s->b, s->tk, ckv);
        dq = (tb_heads){&gt[0], 0}, dk = (tb_heads){&gt[1], 0}, dv = (tb_heads){&gt[2], 0};
    }
    p.n_out = s->b * s->tq * c;
    p.out = tbt_nan_buffer(p.n_out);
    p.w = tbt_alloc(p.n_out * sizeof(float));
    tbt_fill_uniform(p.w, p.n_out, -1.0f, 1.0f, seed + 99);
    p.outt = tb_tensor_3d(p.out, s->b, s->tq, c);
    tb_tensor wt = tb_tensor_3d(p.w, s->b, s->tq, c);

    size_t bytes;
    CHECK_OK(p.ctx, tb_attention_cache_size(&p.cfg, s->b, s->tq, &bytes));
    void *cache = tbt_alloc(bytes);
    CHECK_OK(p.ctx, tb_attention_forward(&p.ctx, &p.cfg, TB_MODE_TRAINING, &p.mask, &p.q, &p.k,
                                         &p.v, &p.outt, cache, bytes));
    CHECK_OK(p.ctx, tb_attention_backward(&p.ctx, &p.cfg, &p.mask, &p.q, &p.k, &p.v, &p.outt,
                                          &wt, cache, bytes, &dq, &dk, &dv));
    char label[160];
    if (s->packed) {
        assert_all_finite("dqkv", grads[0], sizes[0]);
        snprintf(label, sizeof label, "attention[%s].dqkv", s->tag);
        tbt_gradcheck(label, bufs[0], sizes[0], grads[0], attn_loss, &p, H_STEP, RTOL, ATOL,
                      MAX_CHECKS);
    } else {
        static const char *const names[3] = {"dq", "dk", "dv"};
        for (int i = 0; i < 3; i++) {
            assert_all_finite(names[i], grads[i], sizes[i]);
            snprintf(label, sizeof label, "attention[%s].%s", s->tag, names[i]);
            tbt_gradcheck(label, bufs[i], sizes[i], grads[i], attn_loss, &p, H_STEP, RTOL,
                          ATOL, MAX_CHECKS);
        }
    }
    for (int i = 0; i < (s->packed ? 1 : 3); i++) {
        free(bufs[i]);
        free(grads[i]);
    }
    free(cache);
    free(p.out);
    free(p.w);
}

static void check_attn_grad(const grad_spec *s)
{
    check_attn_grad_dropout(s, 0.0f);
}

START_TEST(gradients_plain_and_causal)
{
    const grad_spec specs[] = {
        {"b2,t5,h2,d3", 2, 5, 5, 2, 0, 3, 0, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b2,t5,h2,d3,causal", 2, 5, 5, 2, 0, 3, 1, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b1,t7,h3,d1,causal", 1, 7, 7, 3, 0, 1, 1, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b1,t3,h1,d5,scale0.7", 1, 3, 3, 1, 0, 5, 0, 0, 0.7f, NULL, NULL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
        check_attn_grad(&specs[i]);
}
END_TEST

START_TEST(gradients_cross_attention)
{
    /* Tq = 7 > Tk = 4 causal: queries 0..2 see no key (zero gradient). */
    const grad_spec specs[] = {
        {"b1,tq3,tk7,h3,d5", 1, 3, 7, 3, 0, 5, 0, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b1,tq3,tk7,h3,d5,causal", 1, 3, 7, 3, 0, 5, 1, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b2,tq7,tk4,h2,d3,causal", 2, 7, 4, 2, 0, 3, 1, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b2,tq1,tk9,h2,d3,causal", 2, 1, 9, 2, 0, 3, 1, 0, 0.0f, NULL, NULL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
        check_attn_grad(&specs[i]);
}
END_TEST

START_TEST(gradients_window_padding_bias)
{
    static const int32_t len2[2] = {5, 2};
    static const int32_t len2b[2] = {1, 7};
    static const uint8_t valid2x6[12] = {1, 0, 1, 1, 0, 1, 0, 0, 3, 1, 1, 0};
    float bias[5 * 5], bias_x[3 * 7];
    tbt_fill_uniform(bias, 25, -1.0f, 1.0f, 501);
    bias[3] = bias[11] = bias[20] = -INFINITY;
    tbt_fill_uniform(bias_x, 21, -1.0f, 1.0f, 502);
    bias_x[0] = bias_x[9] = bias_x[10] = -INFINITY;
    const grad_spec specs[] = {
        {"b1,t9,h1,d4,causal,w3", 1, 9, 9, 1, 0, 4, 1, 3, 0.0f, NULL, NULL, NULL, 0},
        {"b2,t6,h2,d3,causal,w2", 2, 6, 6, 2, 0, 3, 1, 2, 0.0f, NULL, NULL, NULL, 0},
        {"b2,tq3,tk7,h2,d3,causal,w4", 2, 3, 7, 2, 0, 3, 1, 4, 0.0f, NULL, NULL, NULL, 0},
        {"b2,t6,h2,d3,keylen5,2", 2, 6, 6, 2, 0, 3, 0, 0, 0.0f, len2, NULL, NULL, 0},
        {"b2,tq3,tk7,h2,d3,keylen1,7,causal", 2, 3, 7, 2, 0, 3, 1, 0, 0.0f, len2b, NULL, NULL,
         0},
        {"b2,t6,h2,d3,keyvalid", 2, 6, 6, 2, 0, 3, 0, 0, 0.0f, NULL, valid2x6, NULL, 0},
        {"b1,t5,h2,d4,bias", 1, 5, 5, 2, 0, 4, 0, 0, 0.0f, NULL, NULL, bias, 0},
        {"b1,t5,h2,d4,bias,causal", 1, 5, 5, 2, 0, 4, 1, 0, 0.0f, NULL, NULL, bias, 0},
        {"b1,tq3,tk7,h2,d3,bias", 1, 3, 7, 2, 0, 3, 0, 0, 0.0f, NULL, NULL, bias_x, 0},
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
        check_attn_grad(&specs[i]);
}
END_TEST

START_TEST(gradients_gqa_and_packed)
{
    static const int32_t len2[2] = {4, 5};
    const grad_spec specs[] = {
        {"b2,t5,h4,kv2,d3,causal", 2, 5, 5, 4, 2, 3, 1, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b2,t5,h4,kv1,d3,causal", 2, 5, 5, 4, 1, 3, 1, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b1,tq3,tk6,h4,kv2,d2", 1, 3, 6, 4, 2, 2, 0, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b2,t5,h6,kv3,d1,causal,w2,keylen", 2, 5, 5, 6, 3, 1, 1, 2, 0.0f, len2, NULL, NULL, 0},
        {"b2,t5,h2,d3,packed,causal", 2, 5, 5, 2, 0, 3, 1, 0, 0.0f, NULL, NULL, NULL, 1},
        {"b1,t7,h3,d2,packed", 1, 7, 7, 3, 0, 2, 0, 0, 0.0f, NULL, NULL, NULL, 1},
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
        check_attn_grad(&specs[i]);
}
END_TEST

START_TEST(gradients_with_dropout)
{
    static const int32_t len2[2] = {5, 3};
    const grad_spec specs[] = {
        {"b2,t6,h2,d3,drop0.3", 2, 6, 6, 2, 0, 3, 0, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b1,tq4,tk7,h4,kv2,d2,causal,drop0.5", 1, 4, 7, 4, 2, 2, 1, 0, 0.0f, NULL, NULL, NULL, 0},
        {"b2,t5,h2,d3,packed,causal,keylen,drop0.2", 2, 5, 5, 2, 0, 3, 1, 0, 0.0f, len2, NULL,
         NULL, 1},
    };
    const float ps[] = {0.3f, 0.5f, 0.2f};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
        check_attn_grad_dropout(&specs[i], ps[i]);
}
END_TEST

/* ======================================================================
 * The exponential of the score rows (src/kernels/vexp.h), per family
 * ==================================================================== */

START_TEST(vexp_accuracy)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const tb_vexp_ops *vx = tb_vexp_select(&ctx);
    enum { N = 200003 };
    float *x = tbt_alloc(N * sizeof(float));
    double worst = 0.0, worst_x = 0.0;
    /* Every n from 0 to 40 (tails of every length), then a sweep. */
    for (size_t n = 0; n <= 40; n++) {
        float e[41];
        for (size_t j = 0; j < n; j++)
            x[j] = -3.0f + 0.37f * (float)j;
        /* The three ways to call it (sum only, into another buffer, in
         * place) give the same sum and values, bit for bit; the first two
         * leave x alone and the first writes nothing. */
        for (size_t j = 0; j <= n; j++)
            e[j] = -7.0f;
        const float sum_only = vx->exp_sub_sum(x, NULL, n, 1.5f);
        const float sum_into = vx->exp_sub_sum(x, e, n, 1.5f);
        ck_assert_msg(e[n] == -7.0f, "n=%zu: wrote past y[n)", n);
        for (size_t j = 0; j < n; j++)
            ck_assert_msg(x[j] == -3.0f + 0.37f * (float)j, "n=%zu: x[%zu] changed", n, j);
        const float sum = vx->exp_sub_sum(x, x, n, 1.5f);
        ck_assert_msg(sum_only == sum && sum_into == sum, "n=%zu: sums %a %a %a", n,
                      (double)sum_only, (double)sum_into, (double)sum);
        for (size_t j = 0; j < n; j++)
            ck_assert_msg(x[j] == e[j], "n=%zu: in place %a, into y %a at %zu", n, (double)x[j],
                          (double)e[j], j);
        double want = 0.0;
        for (size_t j = 0; j < n; j++)
            want += exp(-3.0 + (double)(0.37f * (float)j) - 1.5);
        ck_assert_msg(fabs(sum - want) <= 1e-6 * want + 1e-30, "n=%zu: sum %g, want %g", n,
                      (double)sum, want);
    }
    for (size_t j = 0; j < N; j++)
        x[j] = -100.0f + 190.0f * (float)j / (float)(N - 1);
    x[7] = -INFINITY;
    x[8] = NAN;
    float *y = tbt_alloc(N * sizeof(float));
    memcpy(y, x, N * sizeof(float));
    vx->exp_sub_sum(y, y, N, 0.0f);
    for (size_t j = 0; j < N; j++) {
        if (j == 7) {
            ck_assert_msg(y[j] == 0.0f, "exp(-inf) = %g", (double)y[j]);
            continue;
        }
        if (j == 8) {
            ck_assert_msg(isnan(y[j]), "exp(NaN) = %g", (double)y[j]);
            continue;
        }
        const double want = exp((double)x[j]);
        if (want > 3.4028234663852886e38) {
            ck_assert_msg(isinf(y[j]) && y[j] > 0, "exp(%g) = %g, expected +inf", (double)x[j],
                          (double)y[j]);
            continue;
        }
        if (want < 1.2e-38) { /* below FLT_MIN: 0 or a denormal is fine */
            ck_assert_msg(y[j] >= 0.0f && y[j] < 1.2e-38f, "exp(%g) = %g", (double)x[j],
                          (double)y[j]);
            continue;
        }
        const double rel = fabs(y[j] - want) / want;
        if (rel > worst)
            worst = rel, worst_x = x[j];
    }
    printf("  check   vexp (%s): max relative error %.2e (at x = %.3f) over [-87.3, 88.7], 0 below, +inf above\n",
           vx == &tb_vexp_avx512 ? "avx512" : "portable", worst, worst_x);
    ck_assert_msg(worst < 2.5e-7, "exp relative error %g at x = %g", worst, worst_x);
    ck_assert_msg(vx->max(x, 0) == -INFINITY, "max of nothing");
    ck_assert_msg(vx->max(x, 7) == x[6], "max of a rising row");
    ck_assert_msg(vx->max(x + 9, 21) == x[29], "max with a tail");
    free(x);
    free(y);
}
END_TEST

/* The LSTM's activations (vexp.h lstm_cell and tanh), per family, against
 * double precision: tanh over a sweep and at the edges, and whole cells on
 * rows of every length 1..40 (the vector tails), each element's value the
 * same whatever the row's length. */
START_TEST(vexp_lstm_accuracy)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const tb_vexp_ops *vx = tb_vexp_select(&ctx);
    enum { N = 100003 };
    float *x = tbt_alloc(N * sizeof(float)), *y = tbt_alloc(N * sizeof(float));
    for (size_t j = 0; j < N; j++)
        x[j] = -12.0f + 24.0f * (float)j / (float)(N - 1);
    x[0] = 0.0f, x[1] = 1e-30f, x[2] = -3e-5f, x[3] = NAN, x[4] = INFINITY, x[5] = -INFINITY;
    x[6] = 0.2499f, x[7] = 0.25f, x[8] = -0.2501f, x[9] = 100.0f;
    vx->tanh(x, y, N);
    double worst = 0.0, worst_x = 0.0;
    for (size_t j = 0; j < N; j++) {
        if (j == 3) {
            ck_assert_msg(isnan(y[j]), "tanh(NaN) = %g", (double)y[j]);
            continue;
        }
        const double want = tanh((double)x[j]);
        const double err = fabs(y[j] - want) / (fabs(want) > 1e-37 ? fabs(want) : 1.0);
        if (err > worst)
            worst = err, worst_x = x[j];
    }
    printf("  check   lstm activations (%s): tanh max relative error %.2e (at x = %.4g)\n",
           vx == &tb_vexp_avx512 ? "avx512" : vx == &tb_vexp_avx2 ? "avx2" : "portable", worst,
           worst_x);
    ck_assert_msg(worst < 4e-7, "tanh relative error %g at x = %g", worst, worst_x);
    ck_assert_msg(y[4] == 1.0f && y[5] == -1.0f && y[0] == 0.0f, "tanh(+-inf), tanh(0)");
    /* Cells: rows of length H = 1..40 over the same leading elements. */
    float g[4 * 40], c[40], h[40], g40[4 * 40], c40[40], h40[40];
    double wcell = 0.0;
    for (size_t H = 1; H <= 40; H++) {
        for (size_t k = 0; k < 4; k++)
            for (size_t j = 0; j < 40; j++)
                g40[k * 40 + j] = -9.0f + 0.4519f * (float)((j * 7 + k * 13) % 40);
        for (size_t j = 0; j < 40; j++)
            c40[j] = -2.0f + 0.1f * (float)j;
        for (size_t k = 0; k < 4; k++)
            memcpy(g + k * H, g40 + k * 40, H * sizeof(float));
        memcpy(c, c40, H * sizeof(float));
        vx->lstm_cell(g, c, h, H);
        vx->lstm_cell(g40, c40, h40, 40);
        for (size_t j = 0; j < H; j++) {
            const double cp = -2.0f + 0.1f * (float)j;
            double pre[4];
            for (size_t k = 0; k < 4; k++)
                pre[k] = -9.0f + 0.4519f * (float)((j * 7 + k * 13) % 40);
            const double ig = 1.0 / (1.0 + exp(-pre[0])), fg = 1.0 / (1.0 + exp(-pre[1]));
            const double gg = tanh(pre[2]), og = 1.0 / (1.0 + exp(-pre[3]));
            const double cn = fg * cp + ig * gg, hn = og * tanh(cn);
            wcell = fmax(wcell, fmax(fabs(c[j] - cn), fabs(h[j] - hn)));
            ck_assert_msg(h[j] == h40[j] && c[j] == c40[j] && g[j] == g40[j] &&
                              g[3 * H + j] == g40[3 * 40 + j],
                          "element %zu of a row of %zu differs from a row of 40", j, H);
        }
    }
    ck_assert_msg(wcell < 1e-6, "lstm cell error %g", wcell);
    free(x);
    free(y);
}
END_TEST

/* ======================================================================
 * Attention dropout: what the mask does, reproducibility, errors
 * ==================================================================== */

/* With V = 1 every output is (1 / (1 - p)) * (sum of the kept weights of
 * its row): 1 without dropout, a random number of mean 1 with it. */
START_TEST(dropout_statistics_and_reproducibility)
{
    enum { B = 2, H = 3, T = 40, D = 4, C = H * D, DRAWS = 25 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_attention_config cfg = tb_attention_default_config(H, D);
    cfg.causal = 1;
    float *q = tbt_alloc(B * T * C * sizeof(float)), *k = tbt_alloc(B * T * C * sizeof(float));
    float *v = tbt_alloc(B * T * C * sizeof(float));
    float *o1 = tbt_alloc(B * T * C * sizeof(float)), *o2 = tbt_alloc(B * T * C * sizeof(float));
    tbt_fill_uniform(q, B * T * C, -1.0f, 1.0f, 11);
    tbt_fill_uniform(k, B * T * C, -1.0f, 1.0f, 12);
    for (size_t i = 0; i < B * T * C; i++)
        v[i] = 1.0f;
    tb_tensor qt = tb_tensor_3d(q, B, T, C), kt = tb_tensor_3d(k, B, T, C);
    tb_tensor vt = tb_tensor_3d(v, B, T, C), t1 = tb_tensor_3d(o1, B, T, C);
    tb_tensor t2 = tb_tensor_3d(o2, B, T, C);
    tb_heads qh = {&qt, 0}, kh = {&kt, 0}, vh = {&vt, 0};
    tb_attention_mask m;
    memset(&m, 0, sizeof m);
    tb_rng rng;
    tb_rng_init(&rng, 77);
    const float p = 0.4f;
    double sum = 0.0, max_dev = 0.0;
    size_t n = 0;
    for (int draw = 0; draw < DRAWS; draw++) {
        const uint64_t before = rng.counter;
        CHECK_OK(ctx, tb_attention_dropout_draw(&ctx, &cfg, &m, &rng, p, B, T, T));
        ck_assert(rng.counter == before + (uint64_t)B * H * T * T);
        ck_assert(m.dropout_counter == before && m.dropout == p);
        CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &m, &qh, &kh, &vh, &t1,
                                           NULL, 0));
        /* The same draw gives the same bits. */
        CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &m, &qh, &kh, &vh, &t2,
                                           NULL, 0));
        ck_assert(memcmp(o1, o2, sizeof(float) * B * T * C) == 0);
        for (size_t r = 0; r < B * T; r++)
            for (size_t h = 0; h < H; h++) {
                const float x = o1[r * C + h * D];
                for (size_t d = 1; d < D; d++) /* every column of a head is equal */
                    ck_assert(o1[r * C + h * D + d] == x);
                sum += x;
                n++;
                if (fabs(x - 1.0) > max_dev)
                    max_dev = fabs(x - 1.0);
            }
    }
    const double mean = sum / (double)n;
    printf("  check   attention dropout p=%.1f, V=1: mean output %.4f over %zu rows (expected 1), "
           "max |out - 1| = %.3f\n",
           (double)p, mean, n, max_dev);
    /* Without the 1/(1-p) scaling the mean would be 0.6; without dropping
     * every output would be exactly 1. The standard error here is ~0.01. */
    ck_assert_msg(fabs(mean - 1.0) < 0.05, "mean output %g, expected 1", mean);
    ck_assert_msg(max_dev > 0.3, "outputs hardly vary (max deviation %g): nothing dropped?",
                  max_dev);
    /* p = 0 through the helper: exactly 1 everywhere (the softmax sums to 1
     * up to rounding). */
    CHECK_OK(ctx, tb_attention_dropout_draw(&ctx, &cfg, &m, &rng, 0.0f, B, T, T));
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &m, &qh, &kh, &vh, &t1, NULL,
                                       0));
    for (size_t i = 0; i < B * T * C; i++)
        ck_assert_msg(fabs(o1[i] - 1.0f) < 1e-5f, "p = 0: out[%zu] = %g", i, (double)o1[i]);
    /* Invalid probabilities. */
    const float bad[] = {1.0f, -0.1f, NAN, INFINITY};
    for (size_t i = 0; i < 4; i++) {
        tb_attention_mask mb;
        memset(&mb, 0, sizeof mb);
        const uint64_t counter = rng.counter;
        tb_ctx_clear_error(&ctx);
        ck_assert_int_eq(tb_attention_dropout_draw(&ctx, &cfg, &mb, &rng, bad[i], B, T, T),
                         TB_ERR_INVALID_ARG);
        ck_assert_msg(strstr(tb_ctx_error(&ctx), "tb_attention_dropout_draw: p = ") &&
                          strstr(tb_ctx_error(&ctx), "outside [0, 1)"),
                      "%s", tb_ctx_error(&ctx));
        ck_assert(rng.counter == counter && mb.dropout == 0.0f); /* nothing changed */
        mb.dropout = bad[i];
        fill_sentinel(o1, B * T * C);
        ck_assert_int_eq(tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &mb, &qh, &kh, &vh, &t1,
                                              NULL, 0),
                         TB_ERR_INVALID_ARG);
        assert_untouched(o1, B * T * C, "out after an invalid dropout");
    }
    /* Errors are reported through the context, like every fallible call's. */
    tb_ctx_clear_error(&ctx);
    ck_assert_int_eq(tb_attention_dropout_draw(&ctx, &cfg, NULL, &rng, 0.1f, B, T, T),
                     TB_ERR_NULL_ARG);
    ck_assert_str_eq(tb_ctx_error(&ctx),
                     "tb_attention_dropout_draw: cfg, mask and rng must not be NULL");
    ck_assert_int_eq(tb_attention_dropout_draw(&ctx, &cfg, &m, NULL, 0.1f, B, T, T),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_attention_dropout_draw(&ctx, NULL, &m, &rng, 0.1f, B, T, T),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_attention_dropout_draw(NULL, &cfg, NULL, &rng, 0.1f, B, T, T),
                     TB_ERR_NULL_ARG); /* no context: the status alone */
    const tb_attention_mask m_before = m;
    const uint64_t counter = rng.counter;
    tb_ctx_clear_error(&ctx);
    ck_assert_int_eq(tb_attention_dropout_draw(&ctx, &cfg, &m, &rng, 0.1f, SIZE_MAX / 2, 4, 4),
                     TB_ERR_OVERFLOW);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "tb_attention_dropout_draw: B x H x Tq x Tk"),
                  "%s", tb_ctx_error(&ctx));
    ck_assert(rng.counter == counter && m.dropout == m_before.dropout &&
              m.dropout_key == m_before.dropout_key &&
              m.dropout_counter == m_before.dropout_counter);
    free(q), free(k), free(v), free(o1), free(o2);
}
END_TEST

/* The mode selects the arithmetic (docs/conventions.md): inference ignores
 * the mask's dropout, in forward and, through the mode the cache records,
 * in backward; an unknown mode is refused. */
START_TEST(dropout_applies_in_training_only)
{
    enum { B = 2, H = 2, T = 11, D = 3, C = H * D, N = B * T * C };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_attention_config cfg = tb_attention_default_config(H, D);
    cfg.causal = 1;
    float *x = tbt_alloc(3 * N * sizeof(float)), *o1 = tbt_alloc(N * sizeof(float));
    float *o2 = tbt_alloc(N * sizeof(float)), *dy = tbt_alloc(N * sizeof(float));
    float *g1 = tbt_alloc(3 * N * sizeof(float)), *g2 = tbt_alloc(3 * N * sizeof(float));
    tbt_fill_uniform(x, 3 * N, -1.0f, 1.0f, 21);
    tbt_fill_uniform(dy, N, -1.0f, 1.0f, 22);
    tb_tensor xt = tb_tensor_3d(x, B, T, 3 * C), t1 = tb_tensor_3d(o1, B, T, C);
    tb_tensor t2 = tb_tensor_3d(o2, B, T, C), dyt = tb_tensor_3d(dy, B, T, C);
    tb_tensor gt1 = tb_tensor_3d(g1, B, T, 3 * C), gt2 = tb_tensor_3d(g2, B, T, 3 * C);
    tb_heads qh = {&xt, 0}, kh = {&xt, C}, vh = {&xt, 2 * C};
    tb_heads dq1 = {&gt1, 0}, dk1 = {&gt1, C}, dv1 = {&gt1, 2 * C};
    tb_heads dq2 = {&gt2, 0}, dk2 = {&gt2, C}, dv2 = {&gt2, 2 * C};
    size_t bytes;
    CHECK_OK(ctx, tb_attention_cache_size(&cfg, B, T, &bytes));
    void *c1 = tbt_alloc(bytes), *c2 = tbt_alloc(bytes);
    tb_attention_mask none, drop;
    memset(&none, 0, sizeof none);
    memset(&drop, 0, sizeof drop);
    tb_rng rng;
    tb_rng_init(&rng, 9);
    CHECK_OK(ctx, tb_attention_dropout_draw(&ctx, &cfg, &drop, &rng, 0.5f, B, T, T));
    /* Inference with the dropout mask = no dropout, forward and backward. */
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_INFERENCE, &drop, &qh, &kh, &vh, &t1, c1,
                                       bytes));
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &none, &qh, &kh, &vh, &t2, c2,
                                       bytes));
    ck_assert(memcmp(o1, o2, N * sizeof(float)) == 0);
    CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, &drop, &qh, &kh, &vh, &t1, &dyt, c1, bytes,
                                        &dq1, &dk1, &dv1));
    CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, &none, &qh, &kh, &vh, &t2, &dyt, c2, bytes,
                                        &dq2, &dk2, &dv2));
    ck_assert(memcmp(g1, g2, 3 * N * sizeof(float)) == 0);
    /* Training applies it. */
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &drop, &qh, &kh, &vh, &t1,
                                       NULL, 0));
    ck_assert_msg(memcmp(o1, o2, N * sizeof(float)) != 0, "dropout 0.5 changed nothing");
    /* A training cache is not an inference one: the recorded mode differs. */
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &none, &qh, &kh, &vh, &t1, c1,
                                       bytes));
    memset(c2, 0, bytes);
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_INFERENCE, &none, &qh, &kh, &vh, &t2, c2,
                                       bytes));
    ck_assert(memcmp(c1, c2, bytes) != 0);
    fill_sentinel(o1, N);
    ck_assert_int_eq(tb_attention_forward(&ctx, &cfg, (tb_mode)5, &none, &qh, &kh, &vh, &t1, c1,
                                          bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "mode"));
    assert_untouched(o1, N, "out after an unknown mode");
    free(x), free(o1), free(o2), free(dy), free(g1), free(g2), free(c1), free(c2);
}
END_TEST

/* Backward must use the forward's draw: another draw (or none) is refused. */
START_TEST(dropout_backward_needs_the_forward_draw)
{
    enum { B = 1, H = 2, T = 9, D = 3, C = H * D };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_attention_config cfg = tb_attention_default_config(H, D);
    float *x = tbt_alloc(3 * B * T * C * sizeof(float)), *o = tbt_alloc(B * T * C * sizeof(float));
    float *g = tbt_alloc(3 * B * T * C * sizeof(float));
    tbt_fill_uniform(x, 3 * B * T * C, -1.0f, 1.0f, 5);
    tb_tensor xt = tb_tensor_3d(x, B, T, 3 * C), ot = tb_tensor_3d(o, B, T, C);
    tb_tensor gt = tb_tensor_3d(g, B, T, 3 * C);
    tb_heads qh = {&xt, 0}, kh = {&xt, C}, vh = {&xt, 2 * C};
    tb_heads dq = {&gt, 0}, dk = {&gt, C}, dv = {&gt, 2 * C};
    size_t bytes;
    CHECK_OK(ctx, tb_attention_cache_size(&cfg, B, T, &bytes));
    void *cache = tbt_alloc(bytes);
    tb_attention_mask m;
    memset(&m, 0, sizeof m);
    tb_rng rng;
    tb_rng_init(&rng, 3);
    CHECK_OK(ctx, tb_attention_dropout_draw(&ctx, &cfg, &m, &rng, 0.25f, B, T, T));
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &m, &qh, &kh, &vh, &ot, cache,
                                       bytes));
    tb_attention_mask other = m;
    other.dropout_counter++;
    tb_attention_mask none;
    memset(&none, 0, sizeof none);
    tb_attention_mask other_p = m;
    other_p.dropout = 0.3f;
    const tb_attention_mask *wrong[] = {&other, &none, &other_p, NULL};
    for (size_t i = 0; i < 4; i++) {
        fill_sentinel(g, 3 * B * T * C);
        ck_assert_int_eq(tb_attention_backward(&ctx, &cfg, wrong[i], &qh, &kh, &vh, &ot, &ot,
                                               cache, bytes, &dq, &dk, &dv),
                         TB_ERR_STATE);
        assert_untouched(g, 3 * B * T * C, "gradients after a refused backward");
    }
    free(x), free(o), free(g), free(cache);
}
END_TEST

/* ======================================================================
 * Error paths
 * ==================================================================== */

/* Fixture: B = 2, Tq = 3, Tk = 5, H = 4, D = 2 (C = 8), 2 kv heads in a
 * (B, Tk, 12) tensor (W larger than 2 * D: allowed). Buffers have slack so
 * that overlapping views can be built. */
enum { EB = 2, ETQ = 3, ETK = 5, EH = 4, EHKV = 2, ED = 2, EC = EH * ED, EW = 12 };
enum { SLACK = 256 };

typedef struct fixture {
    tb_ctx ctx;
    tb_attention_config cfg;
    float *q, *k, *v, *out, *dout, *dq, *dk, *dv, *probs;
    tb_tensor qt, kt, vt, outt, doutt, dqt, dkt, dvt, pt;
    tb_heads qh, kh, vh, dqh, dkh, dvh;
    size_t bytes;
    unsigned char *cbuf;
    void *cache;
} fixture;

static void fixture_init(fixture *f)
{
    memset(f, 0, sizeof *f);
    tbt_ctx_init(&f->ctx, 2);
    f->cfg = tb_attention_default_config(EH, ED);
    f->cfg.n_kv_heads = EHKV;
    f->cfg.causal = 1;
    const size_t nq = EB * ETQ * EC + SLACK, nk = EB * ETK * EW + SLACK;
    f->q = tbt_alloc(nq * sizeof(float));
    f->k = tbt_alloc(nk * sizeof(float));
    f->v = tbt_alloc(nk * sizeof(float));
    f->dout = tbt_alloc(nq * sizeof(float));
    tbt_fill_uniform(f->q, nq, -1, 1, 1);
    tbt_fill_uniform(f->k, nk, -1, 1, 2);
    tbt_fill_uniform(f->v, nk, -1, 1, 3);
    tbt_fill_uniform(f->dout, nq, -1, 1, 4);
    f->out = tbt_alloc(nq * sizeof(float));
    f->dq = tbt_alloc(nq * sizeof(float));
    f->dk = tbt_alloc(nk * sizeof(float));
    f->dv = tbt_alloc(nk * sizeof(float));
    f->probs = tbt_alloc((EB * EH * ETQ * ETK + SLACK) * sizeof(float));
    f->qt = tb_tensor_3d(f->q, EB, ETQ, EC);
    f->kt = tb_tensor_3d(f->k, EB, ETK, EW);
    f->vt = tb_tensor_3d(f->v, EB, ETK, EW);
    f->outt = tb_tensor_3d(f->out, EB, ETQ, EC);
    f->doutt = tb_tensor_3d(f->dout, EB, ETQ, EC);
    f->dqt = tb_tensor_3d(f->dq, EB, ETQ, EC);
    f->dkt = tb_tensor_3d(f->dk, EB, ETK, EW);
    f->dvt = tb_tensor_3d(f->dv, EB, ETK, EW);
    f->pt = tb_tensor_4d(f->probs, EB, EH, ETQ, ETK);
    f->qh = (tb_heads){&f->qt, 0};
    f->kh = (tb_heads){&f->kt, 0};
    f->vh = (tb_heads){&f->vt, 4}; /* v's heads in columns [4, 8) */
    f->dqh = (tb_heads){&f->dqt, 0};
    f->dkh = (tb_heads){&f->dkt, 0};
    f->dvh = (tb_heads){&f->dvt, 4};
    ck_assert_int_eq(tb_attention_cache_size(&f->cfg, EB, ETQ, &f->bytes), TB_OK);
    f->cbuf = tbt_alloc(f->bytes + 64);
    f->cache = f->cbuf;
}

static void fixture_free(fixture *f)
{
    free(f->q), free(f->k), free(f->v), free(f->out), free(f->dout);
    free(f->dq), free(f->dk), free(f->dv), free(f->probs), free(f->cbuf);
}

static tb_status fwd(fixture *f, const tb_attention_config *cfg, const tb_attention_mask *m,
                     const tb_heads *q, const tb_heads *k, const tb_heads *v, tb_tensor *out)
{
    return tb_attention_forward(&f->ctx, cfg, TB_MODE_TRAINING, m, q, k, v, out, f->cache,
                                f->bytes);
}

/* Forward must fail with `want` and write neither out nor the cache. */
#define EXPECT_FWD(f_, want_, cfg_, m_, q_, k_, v_, out_)                                \
    do {                                                                                    \
        fill_sentinel((f_)->out, EB * ETQ * EC);                                            \
        memset((f_)->cbuf, 0x77, (f_)->bytes + 64);                                         \
        tb_ctx_clear_error(&(f_)->ctx);                                                     \
        tb_status st_ = fwd((f_), (cfg_), (m_), (q_), (k_), (v_), (out_));                  \
        ck_assert_msg(st_ == (want_), "line %d: forward returned %s, expected %s (%s)",     \
                      __LINE__, tb_strerror(st_), tb_strerror(want_),                      \
                      tb_ctx_error(&(f_)->ctx));                                            \
        ck_assert_str_ne(tb_ctx_error(&(f_)->ctx), "");                                     \
        assert_untouched((f_)->out, EB * ETQ * EC, "out");                                  \
        for (size_t i_ = 0; i_ < (f_)->bytes + 64; i_++)                                    \
            ck_assert_msg((f_)->cbuf[i_] == 0x77, "line %d: cache byte %zu written on error", \
                          __LINE__, i_);                                                    \
    } while (0)

START_TEST(forward_errors)
{
    fixture f;
    fixture_init(&f);
    const tb_attention_config *cfg = &f.cfg;
    tb_heads *q = &f.qh, *k = &f.kh, *v = &f.vh;
    tb_tensor *out = &f.outt;
    /* The fixture itself is valid (and so is a NULL mask or a NULL cache). */
    CHECK_OK(f.ctx, fwd(&f, cfg, NULL, q, k, v, out));
    CHECK_OK(f.ctx, tb_attention_forward(&f.ctx, cfg, TB_MODE_TRAINING, NULL, q, k, v, out, NULL,
                                         0));

    /* NULL arguments. */
    fill_sentinel(f.out, EB * ETQ * EC);
    ck_assert_int_eq(tb_attention_forward(NULL, cfg, TB_MODE_TRAINING, NULL, q, k, v, out, f.cache,
                                          f.bytes),
                     TB_ERR_NULL_ARG);
    assert_untouched(f.out, EB * ETQ * EC, "out");
    EXPECT_FWD(&f, TB_ERR_NULL_ARG, NULL, NULL, q, k, v, out);
    EXPECT_FWD(&f, TB_ERR_NULL_ARG, cfg, NULL, NULL, k, v, out);
    EXPECT_FWD(&f, TB_ERR_NULL_ARG, cfg, NULL, q, NULL, v, out);
    EXPECT_FWD(&f, TB_ERR_NULL_ARG, cfg, NULL, q, k, NULL, out);
    EXPECT_FWD(&f, TB_ERR_NULL_ARG, cfg, NULL, q, k, v, NULL);
    tb_heads q_notensor = {NULL, 0};
    EXPECT_FWD(&f, TB_ERR_NULL_ARG, cfg, NULL, &q_notensor, k, v, out);
    tb_tensor k_nodata = f.kt;
    k_nodata.data = NULL;
    tb_heads k_nd = {&k_nodata, 0};
    EXPECT_FWD(&f, TB_ERR_NULL_ARG, cfg, NULL, q, &k_nd, v, out);
    tb_tensor out_nodata = f.outt;
    out_nodata.data = NULL;
    EXPECT_FWD(&f, TB_ERR_NULL_ARG, cfg, NULL, q, k, v, &out_nodata);

    /* Bad configurations: zero heads / head size, kv heads not dividing H,
     * scale negative or not finite. */
    tb_attention_config bad = f.cfg;
    bad.n_heads = 0;
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, &bad, NULL, q, k, v, out);
    bad = f.cfg;
    bad.head_dim = 0;
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, &bad, NULL, q, k, v, out);
    bad = f.cfg;
    bad.n_kv_heads = 3; /* 4 % 3 != 0; k's W = 12 would hold 3 heads of D = 2 */
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, &bad, NULL, q, k, v, &f.outt);
    const float bad_scale[] = {-0.5f, -1e-30f, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof bad_scale / sizeof bad_scale[0]; i++) {
        bad = f.cfg;
        bad.scale = bad_scale[i];
        EXPECT_FWD(&f, TB_ERR_INVALID_ARG, &bad, NULL, q, k, v, out);
    }

    /* Zero sizes in a tensor (every dimension is >= 1). */
    tb_tensor q_t0 = tb_tensor_3d(f.q, EB, 0, EC), q_b0 = tb_tensor_3d(f.q, 0, ETQ, EC);
    tb_heads qh_t0 = {&q_t0, 0}, qh_b0 = {&q_b0, 0};
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, &qh_t0, k, v, out);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, &qh_b0, k, v, out);
    tb_tensor k_t0 = tb_tensor_3d(f.k, EB, 0, EW);
    tb_heads kh_t0 = {&k_t0, 0};
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, &kh_t0, v, out);

    /* W too small for offset + heads * D. */
    tb_tensor q_narrow = tb_tensor_3d(f.q, EB, ETQ, EC - 1);
    tb_heads qh_narrow = {&q_narrow, 0}, qh_off = {&f.qt, 1};
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, &qh_narrow, k, v, out);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, &qh_off, k, v, out);
    tb_heads kh_off = {&f.kt, EW - EHKV * ED + 1}, vh_off = {&f.vt, EW - EHKV * ED + 1};
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, &kh_off, v, out);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, k, &vh_off, out);
    tb_heads kh_edge = {&f.kt, EW - EHKV * ED}; /* exactly fits */
    CHECK_OK(f.ctx, fwd(&f, cfg, NULL, q, &kh_edge, v, out));
    /* An offset so large that offset + heads * D wraps around. */
    tb_heads kh_wrap = {&f.kt, SIZE_MAX - 1};
    {
        fill_sentinel(f.out, EB * ETQ * EC);
        tb_status st = fwd(&f, cfg, NULL, q, &kh_wrap, v, out);
        ck_assert_msg(st == TB_ERR_SHAPE || st == TB_ERR_OVERFLOW,
                      "offset SIZE_MAX - 1 accepted: %s", tb_strerror(st));
        assert_untouched(f.out, EB * ETQ * EC, "out");
    }

    /* Tensors that are not (B, T, W). */
    tb_tensor q_2d = tb_tensor_2d(f.q, EB * ETQ, EC), q_4d = tb_tensor_4d(f.q, 1, EB, ETQ, EC);
    tb_heads qh_2d = {&q_2d, 0}, qh_4d = {&q_4d, 0};
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, &qh_2d, k, v, out);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, &qh_4d, k, v, out);
    tb_tensor out_2d = tb_tensor_2d(f.out, EB * ETQ, EC);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, k, v, &out_2d);

    /* Mismatched B or Tk, wrong output shape. */
    tb_tensor k_b1 = tb_tensor_3d(f.k, 1, ETK, EW), v_b1 = tb_tensor_3d(f.v, 1, ETK, EW);
    tb_tensor v_t4 = tb_tensor_3d(f.v, EB, ETK - 1, EW), k_b3 = tb_tensor_3d(f.k, 3, ETK, EW);
    tb_heads kh_b1 = {&k_b1, 0}, vh_b1 = {&v_b1, 4}, vh_t4 = {&v_t4, 4}, kh_b3 = {&k_b3, 0};
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, &kh_b1, v, out);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, &kh_b3, v, out);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, k, &vh_b1, out);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, k, &vh_t4, out);
    tb_tensor out_w = tb_tensor_3d(f.out, EB, ETQ, EC + 1);
    tb_tensor out_t = tb_tensor_3d(f.out, EB, ETQ - 1, EC);
    tb_tensor out_b = tb_tensor_3d(f.out, 1, ETQ, EC);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, k, v, &out_w);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, k, v, &out_t);
    EXPECT_FWD(&f, TB_ERR_SHAPE, cfg, NULL, q, k, v, &out_b);

    /* Key lengths out of [0, Tk]; the bounds themselves are fine. */
    const int32_t len_neg[EB] = {ETK, -1}, len_big[EB] = {ETK + 1, 2};
    const int32_t len_ok[EB] = {0, ETK};
    tb_attention_mask m = {NULL, NULL, NULL, 0.0f, 0, 0};
    m.key_lengths = len_neg;
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, cfg, &m, q, k, v, out);
    m.key_lengths = len_big;
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, cfg, &m, q, k, v, out);
    m.key_lengths = len_ok;
    CHECK_OK(f.ctx, fwd(&f, cfg, &m, q, k, v, out));

    /* Cache: too small, misaligned (both untouched). */
    fill_sentinel(f.out, EB * ETQ * EC);
    memset(f.cbuf, 0x77, f.bytes + 64);
    ck_assert_int_eq(tb_attention_forward(&f.ctx, cfg, TB_MODE_TRAINING, NULL, q, k, v, out,
                                          f.cache, f.bytes - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_attention_forward(&f.ctx, cfg, TB_MODE_TRAINING, NULL, q, k, v, out,
                                          f.cache, 0),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(
        tb_attention_forward(&f.ctx, cfg, TB_MODE_TRAINING, NULL, q, k, v, out, f.cbuf + 1,
                             f.bytes + 8),
        TB_ERR_INVALID_ARG);
    assert_untouched(f.out, EB * ETQ * EC, "out");
    for (size_t i = 0; i < f.bytes + 64; i++)
        ck_assert_msg(f.cbuf[i] == 0x77, "cache byte %zu written on error", i);

    /* out overlapping q, k or v (fully or partially). */
    tb_tensor out_on_q = tb_tensor_3d(f.q, EB, ETQ, EC);
    tb_tensor out_on_q1 = tb_tensor_3d(f.q + 1, EB, ETQ, EC);
    tb_tensor out_on_k = tb_tensor_3d(f.k + 5, EB, ETQ, EC);
    /* (Only at the end of what v's heads span: its last row's column 7. An
     * output in columns no operand reads is no overlap; test_aliasing.c.) */
    tb_tensor out_on_v = tb_tensor_3d(f.v + (EB * ETK - 1) * EW + 7, EB, ETQ, EC);
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, cfg, NULL, q, k, v, &out_on_q);
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, cfg, NULL, q, k, v, &out_on_q1);
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, cfg, NULL, q, k, v, &out_on_k);
    EXPECT_FWD(&f, TB_ERR_INVALID_ARG, cfg, NULL, q, k, v, &out_on_v);
    /* ... and the inputs were not modified by any of this. */
    fixture g;
    fixture_init(&g);
    ck_assert(memcmp(f.q, g.q, (EB * ETQ * EC + SLACK) * sizeof(float)) == 0);
    ck_assert(memcmp(f.k, g.k, (EB * ETK * EW + SLACK) * sizeof(float)) == 0);
    ck_assert(memcmp(f.v, g.v, (EB * ETK * EW + SLACK) * sizeof(float)) == 0);
    fixture_free(&g);
    fixture_free(&f);
}
END_TEST

START_TEST(packed_overlap_errors)
{
    /* out overlapping a packed (B, T, 3C) QKV buffer is rejected; q, k, v
     * sharing that buffer is the supported in-place layout. */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    enum { B = 2, T = 5, HH = 2, D = 3, C = HH * D };
    float *qkv = tbt_alloc(B * T * 3 * C * sizeof(float)), *out = tbt_alloc(B * T * C * sizeof(float));
    tbt_fill_uniform(qkv, B * T * 3 * C, -1, 1, 9);
    tb_tensor qkvt = tb_tensor_3d(qkv, B, T, 3 * C), outt = tb_tensor_3d(out, B, T, C);
    tb_heads q = {&qkvt, 0}, k = {&qkvt, C}, v = {&qkvt, 2 * C};
    tb_attention_config cfg = tb_attention_default_config(HH, D);
    cfg.causal = 1;
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &q, &k, &v, &outt, NULL,
                                       0));
    tb_tensor out_in = tb_tensor_3d(qkv + 2 * C * B * T, B, T, C); /* last third of the buffer */
    ck_assert_int_eq(tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &q, &k, &v, &out_in,
                                          NULL, 0),
                     TB_ERR_INVALID_ARG);
    /* Gradients into the packed buffer of the inputs: overlap. */
    size_t bytes;
    CHECK_OK(ctx, tb_attention_cache_size(&cfg, B, T, &bytes));
    void *cache = tbt_alloc(bytes);
    float *dout = tbt_alloc(B * T * C * sizeof(float));
    tbt_fill_uniform(dout, B * T * C, -1, 1, 10);
    tb_tensor doutt = tb_tensor_3d(dout, B, T, C);
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &q, &k, &v, &outt, cache,
                                       bytes));
    float *saved = tbt_alloc(B * T * 3 * C * sizeof(float));
    memcpy(saved, qkv, B * T * 3 * C * sizeof(float));
    ck_assert_int_eq(tb_attention_backward(&ctx, &cfg, NULL, &q, &k, &v, &outt, &doutt, cache,
                                           bytes, &q, &k, &v),
                     TB_ERR_INVALID_ARG);
    ck_assert(memcmp(saved, qkv, B * T * 3 * C * sizeof(float)) == 0);
    free(qkv), free(out), free(cache), free(dout), free(saved);
}
END_TEST

/* Backward must fail with `want` and write none of dq, dk, dv. */
#define EXPECT_BWD(f_, want_, cfg_, q_, k_, v_, out_, dout_, cache_, bytes_, dq_, dk_, dv_)   \
    do {                                                                                     \
        fill_sentinel((f_)->dq, EB * ETQ * EC + SLACK);                                      \
        fill_sentinel((f_)->dk, EB * ETK * EW + SLACK);                                      \
        fill_sentinel((f_)->dv, EB * ETK * EW + SLACK);                                      \
        tb_ctx_clear_error(&(f_)->ctx);                                                      \
        tb_status st_ = tb_attention_backward(&(f_)->ctx, (cfg_), NULL, (q_), (k_), (v_),    \
                                              (out_), (dout_), (cache_), (bytes_), (dq_),    \
                                              (dk_), (dv_));                                 \
        ck_assert_msg(st_ == (want_), "line %d: backward returned %s, expected %s (%s)",     \
                      __LINE__, tb_strerror(st_), tb_strerror(want_),                       \
                      tb_ctx_error(&(f_)->ctx));                                             \
        ck_assert_str_ne(tb_ctx_error(&(f_)->ctx), "");                                      \
        assert_untouched((f_)->dq, EB * ETQ * EC + SLACK, "dq");                             \
        assert_untouched((f_)->dk, EB * ETK * EW + SLACK, "dk");                             \
        assert_untouched((f_)->dv, EB * ETK * EW + SLACK, "dv");                             \
    } while (0)

START_TEST(backward_errors)
{
    fixture f;
    fixture_init(&f);
    tb_attention_config *cfg = &f.cfg;
    tb_heads *q = &f.qh, *k = &f.kh, *v = &f.vh, *dq = &f.dqh, *dk = &f.dkh, *dv = &f.dvh;
    tb_tensor *out = &f.outt, *dout = &f.doutt;
    void *cache = f.cache;
    const size_t bytes = f.bytes;

    /* A cache that no forward filled. */
    memset(f.cbuf, 0, bytes + 64);
    EXPECT_BWD(&f, TB_ERR_STATE, cfg, q, k, v, out, dout, cache, bytes, dq, dk, dv);

    /* A cache filled by a forward of another shape: B, Tq, Tk, H x D. */
    tb_tensor q_b1 = tb_tensor_3d(f.q, 1, ETQ, EC), k_b1 = tb_tensor_3d(f.k, 1, ETK, EW);
    tb_tensor v_b1 = tb_tensor_3d(f.v, 1, ETK, EW), out_b1 = tb_tensor_3d(f.out, 1, ETQ, EC);
    tb_heads qh_b1 = {&q_b1, 0}, kh_b1 = {&k_b1, 0}, vh_b1 = {&v_b1, 4};
    CHECK_OK(f.ctx, fwd(&f, cfg, NULL, &qh_b1, &kh_b1, &vh_b1, &out_b1));
    EXPECT_BWD(&f, TB_ERR_STATE, cfg, q, k, v, out, dout, cache, bytes, dq, dk, dv);

    tb_tensor q_t2 = tb_tensor_3d(f.q, EB, ETQ - 1, EC), out_t2 = tb_tensor_3d(f.out, EB, ETQ - 1, EC);
    tb_heads qh_t2 = {&q_t2, 0};
    CHECK_OK(f.ctx, fwd(&f, cfg, NULL, &qh_t2, k, v, &out_t2));
    EXPECT_BWD(&f, TB_ERR_STATE, cfg, q, k, v, out, dout, cache, bytes, dq, dk, dv);

    /* Same C = 8 split as 2 heads of 4 (kv: 1 head of 4): fewer LSE rows. */
    tb_attention_config cfg24 = tb_attention_default_config(2, 4);
    cfg24.n_kv_heads = 1;
    cfg24.causal = 1;
    CHECK_OK(f.ctx, fwd(&f, &cfg24, NULL, q, k, v, out));
    EXPECT_BWD(&f, TB_ERR_STATE, cfg, q, k, v, out, dout, cache, bytes, dq, dk, dv);

    /* A proper forward, then every other kind of error. */
    CHECK_OK(f.ctx, fwd(&f, cfg, NULL, q, k, v, out));
    fill_sentinel(f.dq, EB * ETQ * EC + SLACK);
    ck_assert_int_eq(tb_attention_backward(NULL, cfg, NULL, q, k, v, out, dout, cache, bytes, dq,
                                           dk, dv),
                     TB_ERR_NULL_ARG);
    assert_untouched(f.dq, EB * ETQ * EC + SLACK, "dq");
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, NULL, q, k, v, out, dout, cache, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, NULL, k, v, out, dout, cache, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, q, NULL, v, out, dout, cache, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, q, k, NULL, out, dout, cache, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, q, k, v, NULL, dout, cache, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, q, k, v, out, NULL, cache, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, q, k, v, out, dout, NULL, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, q, k, v, out, dout, cache, bytes, NULL, dk, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, q, k, v, out, dout, cache, bytes, dq, NULL, dv);
    EXPECT_BWD(&f, TB_ERR_NULL_ARG, cfg, q, k, v, out, dout, cache, bytes, dq, dk, NULL);
    EXPECT_BWD(&f, TB_ERR_BUFFER_TOO_SMALL, cfg, q, k, v, out, dout, cache, bytes - 1, dq, dk,
               dv);
    tb_attention_config bad = f.cfg;
    bad.n_kv_heads = 3;
    EXPECT_BWD(&f, TB_ERR_INVALID_ARG, &bad, q, k, v, out, dout, cache, bytes, dq, dk, dv);

    /* Shapes: out, dout, dq, dk, dv. */
    tb_tensor dout_t = tb_tensor_3d(f.dout, EB, ETQ - 1, EC), dout_w = tb_tensor_3d(f.dout, EB, ETQ, EC + 1);
    tb_tensor out_w = tb_tensor_3d(f.out, EB, ETQ, EC - 1);
    EXPECT_BWD(&f, TB_ERR_SHAPE, cfg, q, k, v, out, &dout_t, cache, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_SHAPE, cfg, q, k, v, out, &dout_w, cache, bytes, dq, dk, dv);
    EXPECT_BWD(&f, TB_ERR_SHAPE, cfg, q, k, v, &out_w, dout, cache, bytes, dq, dk, dv);
    tb_tensor dq_t = tb_tensor_3d(f.dq, EB, ETQ + 1, EC), dq_w = tb_tensor_3d(f.dq, EB, ETQ, EC - 1);
    tb_tensor dk_t = tb_tensor_3d(f.dk, EB, ETK - 1, EW), dv_b = tb_tensor_3d(f.dv, 1, ETK, EW);
    tb_heads dqh_t = {&dq_t, 0}, dqh_w = {&dq_w, 0}, dkh_t = {&dk_t, 0}, dvh_b = {&dv_b, 4};
    tb_heads dvh_off = {&f.dvt, EW - EHKV * ED + 1};
    EXPECT_BWD(&f, TB_ERR_SHAPE, cfg, q, k, v, out, dout, cache, bytes, &dqh_t, dk, dv);
    EXPECT_BWD(&f, TB_ERR_SHAPE, cfg, q, k, v, out, dout, cache, bytes, &dqh_w, dk, dv);
    EXPECT_BWD(&f, TB_ERR_SHAPE, cfg, q, k, v, out, dout, cache, bytes, dq, &dkh_t, dv);
    EXPECT_BWD(&f, TB_ERR_SHAPE, cfg, q, k, v, out, dout, cache, bytes, dq, dk, &dvh_b);
    EXPECT_BWD(&f, TB_ERR_SHAPE, cfg, q, k, v, out, dout, cache, bytes, dq, dk, &dvh_off);

    /* Gradients overlapping the inputs (q, k, v, out, dout). */
    tb_tensor on_q = tb_tensor_3d(f.q, EB, ETQ, EC), on_v = tb_tensor_3d(f.v + 2, EB, ETK, EW);
    tb_tensor on_out = tb_tensor_3d(f.out, EB, ETQ, EC), on_dout = tb_tensor_3d(f.dout + 7, EB, ETK, EW);
    tb_tensor on_k = tb_tensor_3d(f.k, EB, ETK, EW);
    tb_heads g_on_q = {&on_q, 0}, g_on_v = {&on_v, 4}, g_on_out = {&on_out, 0};
    tb_heads g_on_dout = {&on_dout, 0}, g_on_k = {&on_k, 2}; /* columns 2..6 meet k's 0..4 */
    EXPECT_BWD(&f, TB_ERR_INVALID_ARG, cfg, q, k, v, out, dout, cache, bytes, &g_on_q, dk, dv);
    EXPECT_BWD(&f, TB_ERR_INVALID_ARG, cfg, q, k, v, out, dout, cache, bytes, &g_on_out, dk, dv);
    EXPECT_BWD(&f, TB_ERR_INVALID_ARG, cfg, q, k, v, out, dout, cache, bytes, dq, &g_on_v, dv);
    EXPECT_BWD(&f, TB_ERR_INVALID_ARG, cfg, q, k, v, out, dout, cache, bytes, dq, &g_on_dout, dv);
    EXPECT_BWD(&f, TB_ERR_INVALID_ARG, cfg, q, k, v, out, dout, cache, bytes, dq, dk, &g_on_k);

    /* After all that the cache still works, and a valid call succeeds. */
    CHECK_OK(f.ctx, tb_attention_backward(&f.ctx, cfg, NULL, q, k, v, out, dout, cache, bytes, dq,
                                          dk, dv));
    assert_all_finite("dq", f.dq, EB * ETQ * EC);
    fixture_free(&f);
}
END_TEST

/* The log-sum-exp rows in the cache depend on the keys too: a forward over
 * Tk - 1 keys, or with another head size D (same B, H, Tq, so the same
 * number of cache rows), is "not filled by a forward call of this shape". */
START_TEST(backward_cache_from_other_key_shape)
{
    fixture f;
    fixture_init(&f);
    tb_attention_config *cfg = &f.cfg;
    tb_heads *q = &f.qh, *k = &f.kh, *v = &f.vh, *dq = &f.dqh, *dk = &f.dkh, *dv = &f.dvh;
    tb_tensor *out = &f.outt, *dout = &f.doutt;
    tb_tensor k_t4 = tb_tensor_3d(f.k, EB, ETK - 1, EW), v_t4 = tb_tensor_3d(f.v, EB, ETK - 1, EW);
    tb_heads kh_t4 = {&k_t4, 0}, vh_t4 = {&v_t4, 4};
    CHECK_OK(f.ctx, fwd(&f, cfg, NULL, q, &kh_t4, &vh_t4, out));
    EXPECT_BWD(&f, TB_ERR_STATE, cfg, q, k, v, out, dout, f.cache, f.bytes, dq, dk, dv);
    /* The detail names the field that differs (src/core/cache_header.c). */
    ck_assert_msg(strstr(tb_ctx_error(&f.ctx), "tb_attention_forward") &&
                      strstr(tb_ctx_error(&f.ctx), "Tk = 4, this call has 5"),
                  "%s", tb_ctx_error(&f.ctx));

    /* H = 4 heads of D = 1 (q, out and dout as (B, Tq, 4) views). */
    tb_attention_config cfg41 = tb_attention_default_config(EH, 1);
    cfg41.n_kv_heads = EHKV;
    cfg41.causal = 1;
    tb_tensor q4 = tb_tensor_3d(f.q, EB, ETQ, EH), out4 = tb_tensor_3d(f.out, EB, ETQ, EH);
    tb_tensor dout4 = tb_tensor_3d(f.dout, EB, ETQ, EH), dq4 = tb_tensor_3d(f.dq, EB, ETQ, EH);
    tb_heads qh4 = {&q4, 0}, dqh4 = {&dq4, 0};
    CHECK_OK(f.ctx, fwd(&f, cfg, NULL, q, k, v, out));
    EXPECT_BWD(&f, TB_ERR_STATE, &cfg41, &qh4, k, v, &out4, &dout4, f.cache, f.bytes, &dqh4, dk,
               dv);
    fixture_free(&f);
}
END_TEST

START_TEST(probs_and_cache_size_errors)
{
    fixture f;
    fixture_init(&f);
    tb_attention_config *cfg = &f.cfg;
    tb_heads *q = &f.qh, *k = &f.kh;
    const size_t np = EB * EH * ETQ * ETK;
    CHECK_OK(f.ctx, tb_attention_probs(&f.ctx, cfg, NULL, q, k, &f.pt));
    fill_sentinel(f.probs, np + SLACK);
    ck_assert_int_eq(tb_attention_probs(NULL, cfg, NULL, q, k, &f.pt), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_attention_probs(&f.ctx, NULL, NULL, q, k, &f.pt), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_attention_probs(&f.ctx, cfg, NULL, NULL, k, &f.pt), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_attention_probs(&f.ctx, cfg, NULL, q, NULL, &f.pt), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_attention_probs(&f.ctx, cfg, NULL, q, k, NULL), TB_ERR_NULL_ARG);
    tb_tensor p_k = tb_tensor_4d(f.probs, EB, EH, ETQ, ETK + 1);
    tb_tensor p_h = tb_tensor_4d(f.probs, EB, EHKV, ETQ, ETK);
    tb_tensor p_3d = tb_tensor_3d(f.probs, EB * EH, ETQ, ETK);
    ck_assert_int_eq(tb_attention_probs(&f.ctx, cfg, NULL, q, k, &p_k), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_attention_probs(&f.ctx, cfg, NULL, q, k, &p_h), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_attention_probs(&f.ctx, cfg, NULL, q, k, &p_3d), TB_ERR_SHAPE);
    const int32_t len_big[EB] = {ETK + 1, 2};
    tb_attention_mask m = {len_big, NULL, NULL, 0.0f, 0, 0};
    ck_assert_int_eq(tb_attention_probs(&f.ctx, cfg, &m, q, k, &f.pt), TB_ERR_INVALID_ARG);
    tb_attention_config bad = f.cfg;
    bad.n_kv_heads = 3;
    ck_assert_int_eq(tb_attention_probs(&f.ctx, &bad, NULL, q, k, &f.pt), TB_ERR_INVALID_ARG);
    assert_untouched(f.probs, np + SLACK, "probs");
    /* probs over q: overlap. */
    float *qcopy = tbt_alloc((EB * ETQ * EC + SLACK) * sizeof(float));
    memcpy(qcopy, f.q, (EB * ETQ * EC + SLACK) * sizeof(float));
    tb_tensor p_on_q = tb_tensor_4d(f.q, EB, EH, ETQ, ETK);
    ck_assert_int_eq(tb_attention_probs(&f.ctx, cfg, NULL, q, k, &p_on_q), TB_ERR_INVALID_ARG);
    ck_assert(memcmp(qcopy, f.q, (EB * ETQ * EC + SLACK) * sizeof(float)) == 0);
    free(qcopy);

    /* Cache size. */
    size_t bytes;
    ck_assert_int_eq(tb_attention_cache_size(NULL, 2, 3, &bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_attention_cache_size(cfg, 2, 3, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_attention_cache_size(cfg, SIZE_MAX / 2, 3, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_attention_cache_size(cfg, 3, SIZE_MAX / 4, &bytes), TB_ERR_OVERFLOW);
    fixture_free(&f);
}
END_TEST

/* ======================================================================
 * Fully masked query rows
 * ==================================================================== */

typedef struct masked_case {
    const char *tag;
    size_t b, tq, tk, h, hkv, d;
    int causal;
    size_t window;
    const int32_t *lengths;
    const uint8_t *valid;
    const float *bias;
} masked_case;

/* Whether query i of batch row r may see key j (the spec's masks). */
static int pair_visible(const masked_case *mc, size_t r, size_t i, size_t j)
{
    const tbt_attn_masks m = {mc->tq,      mc->tk,    mc->causal, mc->window,
                              mc->lengths, mc->valid, mc->bias};
    return tbt_attn_visible(&m, r, i, j);
}

/* Whether query i of batch row r sees at least one key. */
static int query_sees_a_key(const masked_case *mc, size_t r, size_t i)
{
    for (size_t j = 0; j < mc->tk; j++)
        if (pair_visible(mc, r, i, j))
            return 1;
    return 0;
}

/* Whether key j of batch row r is seen by some query. */
static int key_is_seen(const masked_case *mc, size_t r, size_t j)
{
    for (size_t i = 0; i < mc->tq; i++)
        if (pair_visible(mc, r, i, j))
            return 1;
    return 0;
}

static void check_masked_case(const masked_case *mc)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const size_t hkv = mc->hkv ? mc->hkv : mc->h;
    const size_t c = mc->h * mc->d, ckv = hkv * mc->d;
    const size_t nq = mc->b * mc->tq * c, nk = mc->b * mc->tk * ckv;
    tb_attention_config cfg = tb_attention_default_config(mc->h, mc->d);
    cfg.n_kv_heads = mc->hkv;
    cfg.causal = mc->causal;
    cfg.window = mc->window;
    tb_attention_mask mask = {mc->lengths, mc->valid, mc->bias, 0.0f, 0, 0};
    /* Large inputs (scores up to ~100): no overflow, no NaN anywhere. */
    float *q = tbt_alloc(nq * sizeof(float)), *k = tbt_alloc(nk * sizeof(float));
    float *v = tbt_alloc(nk * sizeof(float)), *dout = tbt_alloc(nq * sizeof(float));
    tbt_fill_uniform(q, nq, -5, 5, 61);
    tbt_fill_uniform(k, nk, -5, 5, 62);
    tbt_fill_uniform(v, nk, -3, 3, 63);
    tbt_fill_uniform(dout, nq, -1, 1, 64);
    float *out = tbt_nan_buffer(nq), *dq = tbt_nan_buffer(nq);
    float *dk = tbt_nan_buffer(nk), *dv = tbt_nan_buffer(nk);
    const size_t np = mc->b * mc->h * mc->tq * mc->tk;
    float *probs = tbt_nan_buffer(np);
    tb_tensor qt = tb_tensor_3d(q, mc->b, mc->tq, c), kt = tb_tensor_3d(k, mc->b, mc->tk, ckv);
    tb_tensor vt = tb_tensor_3d(v, mc->b, mc->tk, ckv), outt = tb_tensor_3d(out, mc->b, mc->tq, c);
    tb_tensor doutt = tb_tensor_3d(dout, mc->b, mc->tq, c);
    tb_tensor dqt = tb_tensor_3d(dq, mc->b, mc->tq, c), dkt = tb_tensor_3d(dk, mc->b, mc->tk, ckv);
    tb_tensor dvt = tb_tensor_3d(dv, mc->b, mc->tk, ckv);
    tb_tensor pt = tb_tensor_4d(probs, mc->b, mc->h, mc->tq, mc->tk);
    tb_heads qh = {&qt, 0}, kh = {&kt, 0}, vh = {&vt, 0}, dqh = {&dqt, 0}, dkh = {&dkt, 0},
             dvh = {&dvt, 0};
    size_t bytes;
    CHECK_OK(ctx, tb_attention_cache_size(&cfg, mc->b, mc->tq, &bytes));
    void *cache = tbt_alloc(bytes);
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &mask, &qh, &kh, &vh, &outt,
                                       cache, bytes));
    CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, &mask, &qh, &kh, &vh, &outt, &doutt, cache,
                                        bytes, &dqh, &dkh, &dvh));
    CHECK_OK(ctx, tb_attention_probs(&ctx, &cfg, &mask, &qh, &kh, &pt));
    assert_all_finite("out", out, nq);
    assert_all_finite("dq", dq, nq);
    assert_all_finite("dk", dk, nk);
    assert_all_finite("dv", dv, nk);
    assert_all_finite("probs", probs, np);
    size_t n_masked = 0, n_unseen = 0;
    for (size_t r = 0; r < mc->b; r++) {
        for (size_t i = 0; i < mc->tq; i++) {
            const int sees = query_sees_a_key(mc, r, i);
            const float *o = out + (r * mc->tq + i) * c, *g = dq + (r * mc->tq + i) * c;
            double rowmax = 0.0;
            for (size_t j = 0; j < c; j++) {
                if (!sees)
                    ck_assert_msg(o[j] == 0.0f && g[j] == 0.0f,
                                  "[%s] fully masked query b=%zu i=%zu: out[%zu] = %g, "
                                  "dq = %g (expected 0)",
                                  mc->tag, r, i, j, (double)o[j], (double)g[j]);
                rowmax = fmax(rowmax, fabs((double)o[j]));
            }
            if (sees)
                ck_assert_msg(rowmax > 0.0, "[%s] query b=%zu i=%zu sees keys but out = 0",
                              mc->tag, r, i);
            n_masked += !sees;
            for (size_t hh = 0; hh < mc->h; hh++) {
                const float *pr = probs + ((r * mc->h + hh) * mc->tq + i) * mc->tk;
                double sum = 0.0;
                for (size_t j = 0; j < mc->tk; j++)
                    sum += pr[j];
                ck_assert_msg(sees ? fabs(sum - 1.0) <= 1e-5 : sum == 0.0,
                              "[%s] probs row b=%zu h=%zu i=%zu sums to %.9g (expected %d)",
                              mc->tag, r, hh, i, sum, sees);
            }
        }
        /* Keys no query sees get exactly zero gradients. */
        for (size_t j = 0; j < mc->tk; j++) {
            if (key_is_seen(mc, r, j))
                continue;
            n_unseen++;
            for (size_t e = 0; e < ckv; e++) {
                const size_t at = (r * mc->tk + j) * ckv + e;
                ck_assert_msg(dk[at] == 0.0f && dv[at] == 0.0f,
                              "[%s] key b=%zu j=%zu seen by no query: dk = %g, dv = %g",
                              mc->tag, r, j, (double)dk[at], (double)dv[at]);
            }
        }
    }
    ck_assert_msg(n_masked > 0, "[%s] the case has no fully masked query", mc->tag);
    printf("  check   attention[%s]: %zu fully masked queries, %zu unseen keys: zeros, "
           "no NaN\n",
           mc->tag, n_masked, n_unseen);
    fflush(stdout);
    free(q), free(k), free(v), free(dout), free(out), free(dq), free(dk), free(dv);
    free(probs), free(cache);
}

START_TEST(fully_masked_rows)
{
    static const int32_t len0[2] = {6, 0};
    static const uint8_t valid0[2 * 6] = {1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0};
    float bias[4 * 6];
    tbt_fill_uniform(bias, 24, -1, 1, 71);
    for (size_t j = 0; j < 6; j++)
        bias[2 * 6 + j] = -INFINITY;
    const masked_case cases[] = {
        {"keylen0", 2, 4, 6, 2, 0, 3, 0, 0, len0, NULL, NULL},
        {"keyvalid_allzero", 2, 4, 6, 2, 0, 3, 0, 0, NULL, valid0, NULL},
        {"bias_row_-inf", 2, 4, 6, 2, 0, 3, 0, 0, NULL, NULL, bias},
        {"causal_tq7_tk3", 2, 7, 3, 2, 1, 3, 1, 0, NULL, NULL, NULL},
        {"causal_w2_tq9_tk4_keylen", 2, 9, 4, 4, 2, 2, 1, 2, (const int32_t[2]){4, 2}, NULL,
         NULL},
        {"all_masks", 2, 4, 6, 4, 2, 3, 1, 3, len0, valid0, bias},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_masked_case(&cases[i]);
}
END_TEST

/* ======================================================================
 * Garbage at masked positions cannot matter
 *
 * Padding rows often hold garbage. Every masking form must keep the K and
 * V contents of a masked (query, key) pair out of that query's output and
 * out of every gradient: a clean run and runs with NaN, +Inf, -Inf or 1e30
 * written into the masked positions must agree BITWISE on everything the
 * garbage may not reach. The positions that get garbage are
 *   - every key no query sees (its K and V rows, every kv head),
 *   - the Q and dout rows of fully masked queries,
 *   - per case, keys a rule picks that some queries do see (future keys
 *     under a causal mask, keys before a sliding window, keys a scattered
 *     -inf bias masks for some queries only), and queries whose own Q and
 *     dout rows get garbage. A query that sees a garbage key, or has a
 *     garbage Q, is "dirty": its output may be garbage.
 * Compared bitwise: the output, dq and probability rows of every query that
 * is not dirty; dk and dv of every key that no dirty query sees (a dirty
 * query's garbage legitimately reaches the keys it sees through the
 * softmax). Keys no query sees must get exactly 0, fully masked queries a
 * zero output and zero dq (as documented). The other way round, garbage a
 * query sees is not hidden: with NaN in V only, the output of every query
 * that sees a garbage key is NaN (as it is in PyTorch).
 * ==================================================================== */

typedef struct garbage_case {
    masked_case m;
    int packed;    /* q, k, v in one (B, T, 3C) buffer (tq == tk, hkv == h) */
    float dropout; /* attention dropout (the same draw in every run) */
    /* Keys that get garbage besides those no query sees, or NULL. */
    int (*extra_key)(const struct garbage_case *gc, size_t j);
    /* Queries whose Q and dout rows get garbage though they see keys. */
    int (*extra_query)(const struct garbage_case *gc, size_t i);
    long cut; /* the key rule's parameter */
} garbage_case;

static int key_from_cut(const garbage_case *gc, size_t j)
{
    return (long)j >= gc->cut;
}

static int key_before_cut(const garbage_case *gc, size_t j)
{
    return (long)j < gc->cut;
}

static int index_mod3_is_1(const garbage_case *gc, size_t j)
{
    (void)gc;
    return j % 3 == 1;
}

static int index_mod5_is_2(const garbage_case *gc, size_t i)
{
    (void)gc;
    return i % 5 == 2;
}

/* Per batch row r: gk[r*Tk + j] key j gets garbage; gq[r*Tq + i] the Q
 * and dout rows of query i get garbage (1: fully masked, 2: by the rule);
 * dirty[r*Tq + i] bit 1: query i sees a garbage key, bit 2: its own Q is
 * garbage; kcmp[r*Tk + j] 0: key seen by a dirty query (not compared),
 * 1: compared, 2: seen by no query (must be exactly 0). */
typedef struct garbage_plan {
    unsigned char *gk, *gq, *dirty, *kcmp;
    size_t n_gk, n_gq, n_dirty, n_clean_seeing, n_kcmp, n_unseen;
} garbage_plan;

static garbage_plan plan_garbage(const garbage_case *gc)
{
    const masked_case *m = &gc->m;
    garbage_plan p;
    memset(&p, 0, sizeof p);
    p.gk = tbt_alloc(m->b * m->tk), p.kcmp = tbt_alloc(m->b * m->tk);
    p.gq = tbt_alloc(m->b * m->tq), p.dirty = tbt_alloc(m->b * m->tq);
    for (size_t r = 0; r < m->b; r++) {
        for (size_t j = 0; j < m->tk; j++) {
            const size_t at = r * m->tk + j;
            p.gk[at] = !key_is_seen(m, r, j) || (gc->extra_key && gc->extra_key(gc, j));
            p.n_gk += p.gk[at];
        }
        for (size_t i = 0; i < m->tq; i++) {
            const size_t at = r * m->tq + i;
            const int sees = query_sees_a_key(m, r, i);
            p.gq[at] = !sees ? 1 : (gc->extra_query && gc->extra_query(gc, i)) ? 2 : 0;
            p.n_gq += p.gq[at] != 0;
            for (size_t j = 0; j < m->tk; j++)
                if (pair_visible(m, r, i, j) && p.gk[r * m->tk + j])
                    p.dirty[at] |= 1;
            if (p.gq[at] == 2)
                p.dirty[at] |= 2;
            p.n_dirty += p.dirty[at] != 0;
            p.n_clean_seeing += sees && !p.dirty[at];
        }
        for (size_t j = 0; j < m->tk; j++) {
            unsigned char c = 2;
            for (size_t i = 0; i < m->tq; i++)
                if (pair_visible(m, r, i, j))
                    c = (p.dirty[r * m->tq + i] || c == 0) ? 0 : 1;
            p.kcmp[r * m->tk + j] = c;
            p.n_kcmp += c == 1;
            p.n_unseen += c == 2;
        }
    }
    return p;
}

static void free_plan(garbage_plan *p)
{
    free(p->gk), free(p->gq), free(p->dirty), free(p->kcmp);
}

/* Results of one run, each row-major and unpacked: out, dq (B, Tq, C);
 * dk, dv (B, Tk, Ckv); probs (B, H, Tq, Tk). */
typedef struct garbage_run {
    float *out, *dq, *dk, *dv, *probs;
} garbage_run;

static void free_garbage_run(garbage_run *g)
{
    free(g->out), free(g->dq), free(g->dk), free(g->dv), free(g->probs);
}

/* Row `row` of a block of `width` columns from column col of a buffer of
 * row stride ld: every element set to value. */
static void set_row(float *buf, size_t ld, size_t col, size_t row, size_t width, float value)
{
    for (size_t e = 0; e < width; e++)
        buf[row * ld + col + e] = value;
}

/* Where the garbage goes in a run. */
enum garbage_where { GW_NONE, GW_ALL, GW_V_ONLY };

/* Forward, backward and probs of the case; GW_ALL writes *garbage into
 * every garbage position of q, k, v and dout, GW_V_ONLY into the garbage
 * keys' V rows only. */
static garbage_run run_garbage(const garbage_case *gc, const garbage_plan *pl, int threads,
                               int where, float garbage)
{
    const masked_case *m = &gc->m;
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    const size_t hkv = m->hkv ? m->hkv : m->h;
    const size_t c = m->h * m->d, ckv = hkv * m->d;
    const size_t nq = m->b * m->tq * c, nk = m->b * m->tk * ckv;
    tb_attention_config cfg = tb_attention_default_config(m->h, m->d);
    cfg.n_kv_heads = m->hkv;
    cfg.causal = m->causal;
    cfg.window = m->window;
    tb_attention_mask mask = {m->lengths, m->valid, m->bias, 0.0f, 0, 0};
    if (gc->dropout > 0.0f) {
        tb_rng rng;
        tb_rng_init(&rng, 777);
        CHECK_OK(ctx, tb_attention_dropout_draw(&ctx, &cfg, &mask, &rng, gc->dropout, m->b, m->tq,
                                                m->tk));
    }
    /* Inputs: separate (B, T, C) buffers, or one packed (B, T, 3C). */
    const size_t wq = gc->packed ? 3 * c : c, wk = gc->packed ? 3 * c : ckv;
    const size_t ok = gc->packed ? c : 0, ov = gc->packed ? 2 * c : 0;
    const size_t nbuf_q = m->b * m->tq * wq, nbuf_k = m->b * m->tk * wk;
    float *qb = tbt_alloc(nbuf_q * sizeof(float)), *gqb = tbt_nan_buffer(nbuf_q);
    float *kb = qb, *vb = qb, *gkb = gqb, *gvb = gqb;
    tbt_fill_uniform(qb, nbuf_q, -1.5f, 1.5f, 91);
    if (!gc->packed) {
        kb = tbt_alloc(nbuf_k * sizeof(float)), vb = tbt_alloc(nbuf_k * sizeof(float));
        tbt_fill_uniform(kb, nbuf_k, -1.5f, 1.5f, 92);
        tbt_fill_uniform(vb, nbuf_k, -1.0f, 1.0f, 93);
        gkb = tbt_nan_buffer(nbuf_k), gvb = tbt_nan_buffer(nbuf_k);
    }
    float *dout = tbt_alloc(nq * sizeof(float));
    tbt_fill_uniform(dout, nq, -1.0f, 1.0f, 94);
    for (size_t r = 0; r < m->b && where != GW_NONE; r++) {
        for (size_t j = 0; j < m->tk; j++)
            if (pl->gk[r * m->tk + j]) {
                if (where == GW_ALL)
                    set_row(kb, wk, ok, r * m->tk + j, ckv, garbage);
                set_row(vb, wk, ov, r * m->tk + j, ckv, garbage);
            }
        for (size_t i = 0; i < m->tq && where == GW_ALL; i++)
            if (pl->gq[r * m->tq + i]) {
                set_row(qb, wq, 0, r * m->tq + i, c, garbage);
                set_row(dout, c, 0, r * m->tq + i, c, garbage);
            }
    }
    garbage_run g;
    g.out = tbt_nan_buffer(nq);
    g.probs = tbt_nan_buffer(m->b * m->h * m->tq * m->tk);
    tb_tensor qt = tb_tensor_3d(qb, m->b, m->tq, wq), kt = tb_tensor_3d(kb, m->b, m->tk, wk);
    tb_tensor vt = tb_tensor_3d(vb, m->b, m->tk, wk), outt = tb_tensor_3d(g.out, m->b, m->tq, c);
    tb_tensor doutt = tb_tensor_3d(dout, m->b, m->tq, c);
    tb_tensor gqt = tb_tensor_3d(gqb, m->b, m->tq, wq), gkt = tb_tensor_3d(gkb, m->b, m->tk, wk);
    tb_tensor gvt = tb_tensor_3d(gvb, m->b, m->tk, wk);
    tb_tensor pt = tb_tensor_4d(g.probs, m->b, m->h, m->tq, m->tk);
    tb_tensor *kt_ = gc->packed ? &qt : &kt, *vt_ = gc->packed ? &qt : &vt;
    tb_tensor *gkt_ = gc->packed ? &gqt : &gkt, *gvt_ = gc->packed ? &gqt : &gvt;
    tb_heads qh = {&qt, 0}, kh = {kt_, ok}, vh = {vt_, ov};
    tb_heads dqh = {&gqt, 0}, dkh = {gkt_, ok}, dvh = {gvt_, ov};
    size_t bytes;
    CHECK_OK(ctx, tb_attention_cache_size(&cfg, m->b, m->tq, &bytes));
    void *cache = tbt_alloc(bytes);
    CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &mask, &qh, &kh, &vh, &outt,
                                       cache, bytes));
    CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, &mask, &qh, &kh, &vh, &outt, &doutt, cache,
                                        bytes, &dqh, &dkh, &dvh));
    CHECK_OK(ctx, tb_attention_probs(&ctx, &cfg, &mask, &qh, &kh, &pt));
    /* Unpack the gradients. */
    g.dq = tbt_alloc(nq * sizeof(float));
    g.dk = tbt_alloc(nk * sizeof(float)), g.dv = tbt_alloc(nk * sizeof(float));
    for (size_t r = 0; r < m->b * m->tq; r++)
        memcpy(g.dq + r * c, gqb + r * wq, c * sizeof(float));
    for (size_t r = 0; r < m->b * m->tk; r++) {
        memcpy(g.dk + r * ckv, gkb + r * wk + ok, ckv * sizeof(float));
        memcpy(g.dv + r * ckv, gvb + r * wk + ov, ckv * sizeof(float));
    }
    free(qb), free(gqb), free(dout), free(cache);
    if (!gc->packed)
        free(kb), free(vb), free(gkb), free(gvb);
    return g;
}

/* memcmp of n floats, failing with the first differing element (an
 * assertion only on failure: check records every passing one). */
static void assert_same_bits(const char *tag, const char *what, size_t row, const float *got,
                             const float *want, size_t n)
{
    if (memcmp(got, want, n * sizeof(float)) == 0)
        return;
    size_t e = 0;
    while (memcmp(&got[e], &want[e], sizeof(float)) == 0)
        e++;
    ck_abort_msg("[%s] %s row %zu element %zu: %a with garbage, %a clean", tag, what, row, e,
                 (double)got[e], (double)want[e]);
}

/* The first nonzero of n floats, or n. */
static size_t first_nonzero(const float *x, size_t n)
{
    size_t e = 0;
    while (e < n && x[e] == 0.0f)
        e++;
    return e;
}

static void compare_garbage(const garbage_case *gc, const garbage_plan *pl,
                            const garbage_run *got, const garbage_run *want, const char *tag)
{
    const masked_case *m = &gc->m;
    const size_t hkv = m->hkv ? m->hkv : m->h;
    const size_t c = m->h * m->d, ckv = hkv * m->d;
    for (size_t r = 0; r < m->b; r++) {
        for (size_t i = 0; i < m->tq; i++) {
            const size_t row = r * m->tq + i;
            if (pl->dirty[row])
                continue;
            assert_same_bits(tag, "out", row, got->out + row * c, want->out + row * c, c);
            assert_same_bits(tag, "dq", row, got->dq + row * c, want->dq + row * c, c);
            for (size_t hh = 0; hh < m->h; hh++) {
                const size_t at = ((r * m->h + hh) * m->tq + i) * m->tk;
                assert_same_bits(tag, "probs", row, got->probs + at, want->probs + at, m->tk);
            }
            if (pl->gq[row] == 1) {
                const size_t eo = first_nonzero(got->out + row * c, c);
                const size_t eq = first_nonzero(got->dq + row * c, c);
                if (eo < c || eq < c)
                    ck_abort_msg("[%s] fully masked query %zu: out[%zu], dq[%zu] nonzero "
                                 "(expected 0)",
                                 tag, row, eo, eq);
            }
        }
        for (size_t j = 0; j < m->tk; j++) {
            const size_t row = r * m->tk + j;
            if (pl->kcmp[row] == 0)
                continue;
            assert_same_bits(tag, "dk", row, got->dk + row * ckv, want->dk + row * ckv, ckv);
            assert_same_bits(tag, "dv", row, got->dv + row * ckv, want->dv + row * ckv, ckv);
            if (pl->kcmp[row] == 2) {
                const size_t ek = first_nonzero(got->dk + row * ckv, ckv);
                const size_t ev = first_nonzero(got->dv + row * ckv, ckv);
                if (ek < ckv || ev < ckv)
                    ck_abort_msg("[%s] key %zu seen by no query: dk[%zu], dv[%zu] nonzero "
                                 "(expected 0)",
                                 tag, row, ek, ev);
            }
        }
    }
}

/* With NaN in the garbage keys' V rows only, every query that sees one has
 * an all-NaN output: garbage a query sees is not hidden. */
static size_t assert_seen_garbage_propagates(const garbage_case *gc, const garbage_plan *pl,
                                             const garbage_run *got, const char *tag)
{
    const masked_case *m = &gc->m;
    const size_t c = m->h * m->d;
    size_t n = 0;
    for (size_t row = 0; row < m->b * m->tq; row++) {
        if (!(pl->dirty[row] & 1))
            continue;
        n++;
        for (size_t e = 0; e < c; e++)
            if (!isnan(got->out[row * c + e]))
                ck_abort_msg("[%s] query %zu sees a NaN value row but out[%zu] = %g", tag, row,
                             e, (double)got->out[row * c + e]);
    }
    return n;
}

/* Every garbage value, 1 and 2 threads; returns the plan (for its counts). */
static garbage_plan check_garbage_case(const garbage_case *gc, size_t *n_propagated)
{
    static const float values[] = {NAN, INFINITY, -INFINITY, 1e30f};
    static const char *const names[] = {"NaN", "+Inf", "-Inf", "1e30"};
    garbage_plan pl = plan_garbage(gc);
    for (int threads = 1; threads <= 2; threads++) {
        char tag[200];
        garbage_run clean = run_garbage(gc, &pl, threads, GW_NONE, 0.0f);
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            snprintf(tag, sizeof tag, "%s, %s, %d thread%s", gc->m.tag, names[v], threads,
                     threads > 1 ? "s" : "");
            garbage_run dirty = run_garbage(gc, &pl, threads, GW_ALL, values[v]);
            compare_garbage(gc, &pl, &dirty, &clean, tag);
            free_garbage_run(&dirty);
        }
        snprintf(tag, sizeof tag, "%s, NaN in V only, %d thread%s", gc->m.tag, threads,
                 threads > 1 ? "s" : "");
        garbage_run vnan = run_garbage(gc, &pl, threads, GW_V_ONLY, NAN);
        compare_garbage(gc, &pl, &vnan, &clean, tag);
        *n_propagated += assert_seen_garbage_propagates(gc, &pl, &vnan, tag);
        free_garbage_run(&vnan);
        free_garbage_run(&clean);
    }
    return pl;
}

/* The masking forms, each over odd shapes (Tq, Tk in {1, 3, 17, 65}, D in
 * {1, 3, 64}) in self- (packed QKV for some) and cross-attention, with
 * plain, grouped-query and single-kv-head variants. */
enum garbage_form {
    GF_CAUSAL_FUTURE,   /* causal; garbage in the keys from the middle on */
    GF_WINDOW_PAST,     /* causal + window; garbage in the keys before the middle */
    GF_WINDOW_QUERIES,  /* causal + window; garbage Q and dout of queries i % 5 == 2 */
    GF_KEY_LENGTHS,     /* lengths (Tk - Tk/3, 0) */
    GF_KEY_VALID,       /* scattered invalid keys; batch row 1 left-padded */
    GF_LEFT_PAD_CAUSAL, /* causal + left padding by key_valid (padding queries fully masked) */
    GF_BIAS_DEAD,       /* -inf bias columns and rows (keys no query sees, fully masked queries) */
    GF_BIAS_SCATTERED,  /* -inf bias at (even i, j % 3 == 1): garbage in keys j % 3 == 1 */
    GF_ALL,             /* causal + window + lengths + key_valid + bias + dropout */
    GF_COUNT
};

static const char *const garbage_form_names[GF_COUNT] = {
    "causal_future",   "window_past", "window_garbage_queries", "key_lengths",       "key_valid",
    "left_pad_causal", "bias_dead",   "bias_scattered",         "all_masks+dropout"};

typedef struct garbage_shape {
    size_t tq, tk, d;
} garbage_shape;

static const garbage_shape garbage_shapes[] = {
    {1, 1, 3},   {3, 3, 1},  {17, 17, 3}, {65, 65, 64}, {17, 17, 64}, {65, 65, 1}, {1, 65, 64},
    {3, 17, 1},  {17, 65, 3}, {65, 17, 64}, {65, 3, 3},  {17, 1, 64},  {3, 65, 3},  {65, 1, 1},
};

/* Fill a garbage case of `form` on `shape` (variant picks the heads and
 * packing); masks go into the caller's buffers (lengths: 2, valid: 2 Tk,
 * bias: Tq Tk). */
static void make_garbage_case(garbage_case *gc, int form, const garbage_shape *sh, size_t variant,
                              char *tag, size_t tag_size, int32_t *lengths, uint8_t *valid,
                              float *bias)
{
    static const size_t heads[3][2] = {{2, 0}, {4, 2}, {3, 1}};
    memset(gc, 0, sizeof *gc);
    masked_case *m = &gc->m;
    const size_t tq = sh->tq, tk = sh->tk;
    const long shift = (long)tk - (long)tq; /* query i's diagonal is i + shift */
    m->b = 2, m->tq = tq, m->tk = tk, m->d = sh->d;
    m->h = heads[variant % 3][0], m->hkv = heads[variant % 3][1];
    gc->packed = tq == tk && m->hkv == 0 && variant % 2 == 0;
    switch (form) {
    case GF_CAUSAL_FUTURE: /* query 0 (diagonal shift) still sees no garbage */
        m->causal = 1;
        gc->extra_key = key_from_cut;
        gc->cut = (long)(tk + 1) / 2 > shift ? (long)(tk + 1) / 2 : shift + 1;
        break;
    case GF_WINDOW_PAST:
        m->causal = 1, m->window = tk / 4 + 1;
        gc->extra_key = key_before_cut, gc->cut = (long)tk / 2;
        break;
    case GF_WINDOW_QUERIES:
        m->causal = 1, m->window = tk / 8 + 2;
        gc->extra_query = index_mod5_is_2;
        break;
    case GF_KEY_LENGTHS:
        lengths[0] = (int32_t)(tk - tk / 3), lengths[1] = 0;
        m->lengths = lengths;
        break;
    case GF_KEY_VALID:
        for (size_t j = 0; j < tk; j++) {
            valid[j] = (j * 7) % 5 != 0 || j == tk - 1;
            valid[tk + j] = j >= tk / 2;
        }
        m->valid = valid;
        break;
    case GF_LEFT_PAD_CAUSAL:
        for (size_t j = 0; j < tk; j++) {
            valid[j] = j >= tk / 3;
            valid[tk + j] = j >= (2 * tk) / 3;
        }
        m->valid = valid, m->causal = 1;
        break;
    case GF_BIAS_DEAD:
    case GF_BIAS_SCATTERED:
    case GF_ALL:
        tbt_fill_uniform(bias, tq * tk, -1.0f, 1.0f, 95 + (uint64_t)form);
        for (size_t i = 0; i < tq; i++)
            for (size_t j = 0; j < tk; j++) {
                const int hide = form == GF_BIAS_SCATTERED ? (i % 2 == 0 && j % 3 == 1)
                                                           : (j % 4 == 2 || i % 5 == 3);
                if (hide)
                    bias[i * tk + j] = -INFINITY;
            }
        m->bias = bias;
        if (form == GF_BIAS_SCATTERED)
            gc->extra_key = index_mod3_is_1;
        if (form == GF_ALL) {
            m->causal = 1, m->window = tk / 2 + 1;
            lengths[0] = (int32_t)tk, lengths[1] = (int32_t)(tk - tk / 4);
            m->lengths = lengths;
            for (size_t j = 0; j < tk; j++)
                valid[j] = valid[tk + j] = j % 7 != 5;
            m->valid = valid;
            gc->dropout = 0.2f;
        }
        break;
    default:
        break;
    }
    snprintf(tag, tag_size, "%s tq%zu tk%zu d%zu h%zu kv%zu%s", garbage_form_names[form], tq, tk,
             sh->d, m->h, m->hkv ? m->hkv : m->h, gc->packed ? " packed" : "");
    m->tag = tag;
}

START_TEST(garbage_at_masked_positions)
{
    const int form = _i;
    size_t cases = 0, gk = 0, gq = 0, dirty = 0, clean = 0, kcmp = 0, unseen = 0, prop = 0;
    const size_t n_shapes = sizeof garbage_shapes / sizeof garbage_shapes[0];
    for (size_t s = 0; s < n_shapes; s++) {
        const garbage_shape *sh = &garbage_shapes[s];
        int32_t lengths[2];
        uint8_t *valid = tbt_alloc(2 * sh->tk);
        float *bias = tbt_alloc(sh->tq * sh->tk * sizeof(float));
        char tag[160];
        garbage_case gc;
        make_garbage_case(&gc, form, sh, s, tag, sizeof tag, lengths, valid, bias);
        garbage_plan pl = check_garbage_case(&gc, &prop);
        cases++;
        gk += pl.n_gk, gq += pl.n_gq, dirty += pl.n_dirty, clean += pl.n_clean_seeing;
        kcmp += pl.n_kcmp, unseen += pl.n_unseen;
        free_plan(&pl);
        free(valid), free(bias);
    }
    /* The form must really have put garbage somewhere and compared queries
     * that see keys and key gradients (else the test proves nothing). */
    ck_assert_msg(gk + gq > 0 && clean > 0 && kcmp > 0,
                  "[%s] degenerate: %zu garbage keys, %zu garbage queries, %zu clean queries "
                  "that see keys, %zu keys compared",
                  garbage_form_names[form], gk, gq, clean, kcmp);
    printf("  check   attention garbage[%s]: %zu shapes x {NaN, +-Inf, 1e30, NaN in V} x {1, 2} "
           "threads: %zu garbage keys, %zu garbage q rows; bitwise equal: %zu queries that "
           "see keys (%zu dirty ones skipped), dk/dv of %zu keys, %zu unseen keys exactly 0; "
           "%zu rows saw NaN and are NaN\n",
           garbage_form_names[form], cases, gk, gq, clean, dirty, kcmp, unseen, prop);
    fflush(stdout);
}
END_TEST

/* ======================================================================
 * Determinism across thread counts
 * ==================================================================== */

typedef struct run_out {
    float *buf;
    size_t n;
} run_out;

/* Forward, backward and probs of two configurations, concatenated. */
static run_out run_attention(int threads)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    typedef struct shape {
        size_t b, tq, tk, h, hkv, d, window;
        int lengths;
    } shape;
    const shape shapes[] = {{2, 200, 200, 4, 0, 32, 0, 0}, {2, 150, 200, 4, 2, 16, 64, 1}};
    size_t total = 0;
    for (size_t s = 0; s < 2; s++) {
        const shape *sh = &shapes[s];
        const size_t hkv = sh->hkv ? sh->hkv : sh->h;
        total += 2 * sh->b * sh->tq * sh->h * sh->d + 2 * sh->b * sh->tk * hkv * sh->d +
                 sh->b * sh->h * sh->tq * sh->tk;
    }
    run_out r = {tbt_alloc(total * sizeof(float)), total};
    float *at = r.buf;
    for (size_t s = 0; s < 2; s++) {
        const shape *sh = &shapes[s];
        const size_t hkv = sh->hkv ? sh->hkv : sh->h;
        const size_t c = sh->h * sh->d, ckv = hkv * sh->d;
        const size_t nq = sh->b * sh->tq * c, nk = sh->b * sh->tk * ckv;
        tb_attention_config cfg = tb_attention_default_config(sh->h, sh->d);
        cfg.n_kv_heads = sh->hkv;
        cfg.causal = 1;
        cfg.window = sh->window;
        const int32_t lengths[2] = {200, 117};
        /* The second shape also has attention dropout. */
        tb_attention_mask mask = {sh->lengths ? lengths : NULL, NULL, NULL,
                                  sh->lengths ? 0.2f : 0.0f, 0x1234567ULL, 99};
        float *q = tbt_alloc(nq * sizeof(float)), *k = tbt_alloc(nk * sizeof(float));
        float *v = tbt_alloc(nk * sizeof(float)), *dout = tbt_alloc(nq * sizeof(float));
        tbt_fill_uniform(q, nq, -2, 2, 81 + s);
        tbt_fill_uniform(k, nk, -2, 2, 83 + s);
        tbt_fill_uniform(v, nk, -1, 1, 85 + s);
        tbt_fill_uniform(dout, nq, -1, 1, 87 + s);
        float *out = at, *dq = at + nq, *dk = at + 2 * nq, *dv = at + 2 * nq + nk;
        float *probs = at + 2 * nq + 2 * nk;
        at += 2 * nq + 2 * nk + sh->b * sh->h * sh->tq * sh->tk;
        tb_tensor qt = tb_tensor_3d(q, sh->b, sh->tq, c), kt = tb_tensor_3d(k, sh->b, sh->tk, ckv);
        tb_tensor vt = tb_tensor_3d(v, sh->b, sh->tk, ckv);
        tb_tensor outt = tb_tensor_3d(out, sh->b, sh->tq, c), doutt = tb_tensor_3d(dout, sh->b, sh->tq, c);
        tb_tensor dqt = tb_tensor_3d(dq, sh->b, sh->tq, c), dkt = tb_tensor_3d(dk, sh->b, sh->tk, ckv);
        tb_tensor dvt = tb_tensor_3d(dv, sh->b, sh->tk, ckv);
        tb_tensor pt = tb_tensor_4d(probs, sh->b, sh->h, sh->tq, sh->tk);
        tb_heads qh = {&qt, 0}, kh = {&kt, 0}, vh = {&vt, 0}, dqh = {&dqt, 0}, dkh = {&dkt, 0},
                 dvh = {&dvt, 0};
        size_t bytes;
        CHECK_OK(ctx, tb_attention_cache_size(&cfg, sh->b, sh->tq, &bytes));
        void *cache = tbt_alloc(bytes);
        CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, &mask, &qh, &kh, &vh,
                                           &outt, cache, bytes));
        CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, &mask, &qh, &kh, &vh, &outt, &doutt,
                                            cache, bytes, &dqh, &dkh, &dvh));
        CHECK_OK(ctx, tb_attention_probs(&ctx, &cfg, &mask, &qh, &kh, &pt));
        free(q), free(k), free(v), free(dout), free(cache);
    }
    return r;
}

START_TEST(bitwise_identical_for_1_2_3_threads)
{
    run_out ref = run_attention(1);
    assert_all_finite("attention results", ref.buf, ref.n);
    for (int t = 2; t <= 3; t++) {
        run_out r = run_attention(t);
        ck_assert_uint_eq(r.n, ref.n);
        size_t first = r.n;
        for (size_t i = 0; i < r.n && first == r.n; i++)
            if (memcmp(&r.buf[i], &ref.buf[i], sizeof(float)) != 0)
                first = i;
        ck_assert_msg(first == r.n, "%d threads differ from 1 thread at element %zu of %zu", t,
                      first, r.n);
        free(r.buf);
    }
    free(ref.buf);
}
END_TEST

/* ======================================================================
 * Activation memory: one float per (batch row, head, query) plus a header
 * ==================================================================== */

START_TEST(cache_size_linear_in_t)
{
    const size_t hs[] = {1, 8, 12}, bs[] = {1, 4};
    for (size_t a = 0; a < 3; a++)
        for (size_t c = 0; c < 2; c++) {
            tb_attention_config cfg = tb_attention_default_config(hs[a], 64);
            const size_t b = bs[c];
            size_t s1, s1024, s2048;
            ck_assert_int_eq(tb_attention_cache_size(&cfg, b, 1, &s1), TB_OK);
            ck_assert_int_eq(tb_attention_cache_size(&cfg, b, 1024, &s1024), TB_OK);
            ck_assert_int_eq(tb_attention_cache_size(&cfg, b, 2048, &s2048), TB_OK);
            const size_t per_t = b * hs[a] * sizeof(float);
            ck_assert_msg(s2048 - s1024 == 1024 * per_t,
                          "H=%zu B=%zu: cache(2048) - cache(1024) = %zu bytes, expected %zu "
                          "(one float per batch row, head and query)",
                          hs[a], b, s2048 - s1024, 1024 * per_t);
            ck_assert_msg(s1024 - s1 == 1023 * per_t, "H=%zu B=%zu: cache not linear in T",
                          hs[a], b);
            ck_assert_msg(s1 >= per_t && s1 - per_t <= 1024,
                          "H=%zu B=%zu: header of %zu bytes is not small", hs[a], b, s1 - per_t);
            /* Independent of what the spec says is unused (kv heads, D, masks). */
            tb_attention_config cfg2 = cfg;
            cfg2.n_kv_heads = 1;
            cfg2.head_dim = 7;
            cfg2.causal = 1;
            cfg2.window = 5;
            size_t s2;
            ck_assert_int_eq(tb_attention_cache_size(&cfg2, b, 1024, &s2), TB_OK);
            ck_assert_uint_eq(s2, s1024);
        }
    printf("  check   attention cache: B*H*4 bytes per query position + a fixed header\n");
}
END_TEST

/* ======================================================================
 * PyTorch oracle
 * ==================================================================== */

/*
 * PyTorch oracle tests of the attention core (tb_attention_forward,
 * tb_attention_backward, tb_attention_probs), run on the exact inputs,
 * masks and upstream gradients that test/oracle/gen_attention.py fed to
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

static const double ORACLE_RTOL = 1e-5;
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
    if (tbt_max_abs_f(w64.data, n) <= ZERO_REF_REL * unit) {
        const double m = tbt_max_abs_f(got, n), atol = ATOL64_REL * unit;
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
    tbt_assert_close(lbl, got, w32.data, n, ORACLE_RTOL, ATOL32_REL * unit);
    snprintf(lbl, sizeof lbl, "%s.%s_vs_f64", blk, name);
    tbt_assert_close(lbl, got, w64.data, n, ORACLE_RTOL, ATOL64_REL * unit);
}

/* ---- the cases ------------------------------------------------------------ */

/* ---- the sweep: head sizes 1..128, key counts around the tiles ------------
 * The names gen_attention.py's attention_sweep_specs() writes, built by the
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
        fprintf(stderr, "test_attention.c: more than %d sweep cases\n", MAX_SWEEP);
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
    ck_assert_uint_eq(tbt_check_manifest("attention_cases.txt", "test_attention.c",
                                         tbt_name_listed, &l),
                      ARRAY_LEN(attention_cases));
    /* Names are unique (the generator asserts it): equal counts mean the
     * same set. */
    ck_assert_uint_eq(tbt_check_manifest("attention_sweep_cases.txt", "test_attention.c",
                                         sweep_listed, NULL),
                      g_n_sweep);
    ck_assert_uint_eq(g_n_sweep, 213);
}
END_TEST

Suite *suite_attention(void)
{
    Suite *s = suite_create("attention");
    TCase *tg = tcase_create("finite_differences");
    tcase_set_timeout(tg, 120);
    tcase_add_test(tg, gradients_plain_and_causal);
    tcase_add_test(tg, gradients_cross_attention);
    tcase_add_test(tg, gradients_window_padding_bias);
    tcase_add_test(tg, gradients_gqa_and_packed);
    tcase_add_test(tg, gradients_with_dropout);
    tcase_add_test(tg, vexp_accuracy);
    tcase_add_test(tg, vexp_lstm_accuracy);
    tcase_add_test(tg, dropout_statistics_and_reproducibility);
    tcase_add_test(tg, dropout_backward_needs_the_forward_draw);
    tcase_add_test(tg, dropout_applies_in_training_only);
    suite_add_tcase(s, tg);
    TCase *te = tcase_create("errors");
    tcase_add_test(te, forward_errors);
    tcase_add_test(te, packed_overlap_errors);
    tcase_add_test(te, backward_errors);
    tcase_add_test(te, backward_cache_from_other_key_shape);
    tcase_add_test(te, probs_and_cache_size_errors);
    suite_add_tcase(s, te);
    TCase *tm = tcase_create("masking");
    tcase_add_test(tm, fully_masked_rows);
    tcase_add_test(tm, cache_size_linear_in_t);
    suite_add_tcase(s, tm);
    TCase *tgb = tcase_create("garbage_at_masked_positions");
    tcase_set_timeout(tgb, 300);
    tcase_add_loop_test(tgb, garbage_at_masked_positions, 0, GF_COUNT);
    suite_add_tcase(s, tgb);
    TCase *tt = tcase_create("threads");
    tcase_set_timeout(tt, 180);
    tcase_add_test(tt, bitwise_identical_for_1_2_3_threads);
    suite_add_tcase(s, tt);
    TCase *tc = tcase_create("pytorch");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_attention_oracle_case, 0, (int)ARRAY_LEN(attention_cases));
    sweep_case_names();
    tcase_add_loop_test(tc, test_attention_oracle_sweep_case, 0, (int)g_n_sweep);
    tcase_add_test(tc, test_attention_oracle_all_cases_tested);
    suite_add_tcase(s, tc);
    return s;
}
