/*
 * Caller-sized buffers stay within the size their query returned: every
 * block that takes a cache sized by a `*_cache_size()` call (LayerNorm,
 * RMSNorm, BatchNorm, cross-entropy, the attention core, MHA, LoRA, the
 * LSTM and the P-tuning encoder) is run
 * forward and backward, on the kernel family of this run, on odd shapes
 * (1, 3, 17; head sizes across the micro-kernel tiles; key counts on both
 * sides of the attention tiles), in a buffer of exactly that many bytes
 * followed by a guard zone that must come back untouched. (The GEMM's own
 * caller-sized scratch, tb_gemm_serial_work(), is swept in test_gemm.c;
 * scratch the library allocates itself is covered by ASan and the TB_DEBUG
 * checks of the sanitizer pass.)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

enum { GUARD = 256 };
static const unsigned char GUARD_BYTE = 0xA5;

/* A buffer of `bytes` usable bytes (64-byte aligned, as a caller would
 * allocate a cache) followed by GUARD guard bytes. */
typedef struct guarded {
    unsigned char *mem, *buf;
    size_t bytes;
} guarded;

static guarded guarded_alloc(size_t bytes)
{
    guarded g;
    g.bytes = bytes;
    g.mem = tbt_alloc(bytes + GUARD + 64);
    g.buf = (unsigned char *)(((uintptr_t)g.mem + 63) & ~(uintptr_t)63);
    memset(g.buf + bytes, GUARD_BYTE, GUARD);
    return g;
}

static void guarded_check(const guarded *g, const char *what)
{
    for (size_t i = 0; i < GUARD; i++)
        ck_assert_msg(g->buf[g->bytes + i] == GUARD_BYTE,
                      "%s (%s kernels): byte %zu past the %zu-byte cache was written", what,
                      tb_kernel_name(tbt_test_kernel()), i, g->bytes);
}

static float *filled(size_t n, uint64_t seed)
{
    float *x = tbt_alloc(n * sizeof(float));
    tbt_fill_uniform(x, n, -1, 1, seed);
    return x;
}

START_TEST(norm_caches_stay_in_their_size)
{
    static const size_t shapes[][2] = {{1, 1}, {3, 17}, {17, 3}, {5, 64}, {7, 129}};
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const size_t n = shapes[s][0], d = shapes[s][1];
        float *x = filled(n * d, 1 + s), *dy = filled(n * d, 2 + s);
        float *y = tbt_alloc(n * d * sizeof(float)), *dx = tbt_alloc(n * d * sizeof(float));
        tb_tensor xt = tb_tensor_2d(x, n, d), dyt = tb_tensor_2d(dy, n, d);
        tb_tensor yt = tb_tensor_2d(y, n, d), dxt = tb_tensor_2d(dx, n, d);
        size_t bytes;

        tb_layernorm ln;
        CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, d, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
        CHECK_OK(ctx, tb_layernorm_cache_size(n, &bytes));
        guarded g = guarded_alloc(bytes);
        CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, g.buf, bytes));
        CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &dyt, g.buf, bytes, &dxt));
        guarded_check(&g, "layernorm");
        free(g.mem);
        tb_layernorm_free(&ln);

        tb_rmsnorm rn;
        CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, d, 1e-5f, TB_NORM_SCALE));
        CHECK_OK(ctx, tb_rmsnorm_cache_size(n, &bytes));
        g = guarded_alloc(bytes);
        CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, g.buf, bytes));
        CHECK_OK(ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, g.buf, bytes, &dxt));
        guarded_check(&g, "rmsnorm");
        free(g.mem);
        tb_rmsnorm_free(&rn);

        if (n > 1) { /* batch statistics need two rows */
            tb_batchnorm bn;
            CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, d, 1e-5f, 0.1f,
                                            TB_NORM_SCALE | TB_NORM_SHIFT));
            CHECK_OK(ctx, tb_batchnorm_cache_size(d, &bytes));
            g = guarded_alloc(bytes);
            CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &yt, g.buf,
                                               bytes));
            CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, g.buf, bytes, &dxt));
            guarded_check(&g, "batchnorm");
            free(g.mem);
            tb_batchnorm_free(&bn);
        }

        tb_cross_entropy_config ce = tb_cross_entropy_default_config();
        int32_t *targets = tbt_alloc(n * sizeof(int32_t));
        for (size_t i = 0; i < n; i++)
            targets[i] = (int32_t)((i * 7) % d);
        float loss;
        CHECK_OK(ctx, tb_cross_entropy_cache_size(n, &bytes));
        g = guarded_alloc(bytes);
        CHECK_OK(ctx, tb_cross_entropy_forward(&ctx, &ce, &xt, targets, n, &loss, g.buf, bytes));
        CHECK_OK(ctx,
                 tb_cross_entropy_backward(&ctx, &ce, &xt, targets, n, 1.0f, g.buf, bytes, &dxt));
        guarded_check(&g, "cross_entropy");
        free(g.mem);
        free(targets);
        free(x), free(dy), free(y), free(dx);
    }
}
END_TEST

/* Head sizes across every family's tile widths (1, 49..65 around the AVX2
 * 6 x 16 and AVX-512 12/8 x 32 tiles, 128) and query/key counts on both
 * sides of the 64-row attention tiles. */
static const size_t ATT_D[] = {1, 3, 17, 49, 55, 61, 63, 64, 65, 100, 128};
static const size_t ATT_T[] = {1, 63, 64, 65, 129};

START_TEST(attention_cache_stays_in_its_size)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    size_t n = 0;
    for (size_t di = 0; di < sizeof ATT_D / sizeof ATT_D[0]; di++)
        for (size_t ti = 0; ti < sizeof ATT_T / sizeof ATT_T[0]; ti++) {
            const size_t d = ATT_D[di], h = 2, b = 1 + (di + ti) % 2, tq = ATT_T[ti];
            const size_t tk = ATT_T[(ti + di) % 5], c = h * d;
            tb_attention_config cfg = tb_attention_default_config(h, d);
            cfg.causal = (di + ti) % 2;
            float *q = filled(b * tq * c, 10 + n), *k = filled(b * tk * c, 11 + n);
            float *v = filled(b * tk * c, 12 + n), *dout = filled(b * tq * c, 13 + n);
            float *out = tbt_alloc(b * tq * c * sizeof(float));
            float *dq = tbt_alloc(b * tq * c * sizeof(float));
            float *dk = tbt_alloc(b * tk * c * sizeof(float));
            float *dv = tbt_alloc(b * tk * c * sizeof(float));
            tb_tensor qt = tb_tensor_3d(q, b, tq, c), kt = tb_tensor_3d(k, b, tk, c);
            tb_tensor vt = tb_tensor_3d(v, b, tk, c), ot = tb_tensor_3d(out, b, tq, c);
            tb_tensor gt = tb_tensor_3d(dout, b, tq, c), dqt = tb_tensor_3d(dq, b, tq, c);
            tb_tensor dkt = tb_tensor_3d(dk, b, tk, c), dvt = tb_tensor_3d(dv, b, tk, c);
            tb_heads qh = {&qt, 0}, kh = {&kt, 0}, vh = {&vt, 0};
            tb_heads dqh = {&dqt, 0}, dkh = {&dkt, 0}, dvh = {&dvt, 0};
            size_t bytes;
            CHECK_OK(ctx, tb_attention_cache_size(&cfg, b, tq, &bytes));
            guarded g = guarded_alloc(bytes);
            CHECK_OK(ctx, tb_attention_forward(&ctx, &cfg, TB_MODE_TRAINING, NULL, &qh, &kh, &vh,
                                               &ot, g.buf, bytes));
            CHECK_OK(ctx, tb_attention_backward(&ctx, &cfg, NULL, &qh, &kh, &vh, &ot, &gt, g.buf,
                                                bytes, &dqh, &dkh, &dvh));
            char what[96];
            snprintf(what, sizeof what, "attention D=%zu Tq=%zu Tk=%zu", d, tq, tk);
            guarded_check(&g, what);
            free(g.mem);
            free(q), free(k), free(v), free(dout), free(out), free(dq), free(dk), free(dv);
            n++;
        }
    printf("  scratch: %zu attention shapes (%s) forward + backward within their cache size\n",
           n, tb_kernel_name(tbt_test_kernel()));
}
END_TEST

START_TEST(mha_cache_stays_in_its_size)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 3);
    size_t n = 0;
    for (size_t di = 0; di < sizeof ATT_D / sizeof ATT_D[0]; di += 2)
        for (size_t ti = 1; ti < sizeof ATT_T / sizeof ATT_T[0]; ti += 2) {
            const size_t d = ATT_D[di], h = d > 64 ? 1 : 2, c = h * d, tq = ATT_T[ti];
            const size_t tk = ATT_T[(ti + 1) % 5];
            const int cross = (int)(di / 2 % 2);
            tb_mha m;
            CHECK_OK(ctx, tb_mha_init(&ctx, &m, c, h, 1, &rng));
            m.attn.causal = !cross;
            const size_t tkv = cross ? tk : tq;
            float *x = filled(tq * c, 20 + n), *mem = filled(tkv * c, 21 + n);
            float *dy = filled(tq * c, 22 + n), *y = tbt_alloc(tq * c * sizeof(float));
            float *dx = tbt_alloc(tq * c * sizeof(float)), *dmem = tbt_alloc(tkv * c * sizeof(float));
            tb_tensor xt = tb_tensor_3d(x, 1, tq, c), mt = tb_tensor_3d(mem, 1, tkv, c);
            tb_tensor dyt = tb_tensor_3d(dy, 1, tq, c), yt = tb_tensor_3d(y, 1, tq, c);
            tb_tensor dxt = tb_tensor_3d(dx, 1, tq, c), dmt = tb_tensor_3d(dmem, 1, tkv, c);
            size_t bytes;
            CHECK_OK(ctx, tb_mha_cache_size(&m, 1, tq, tkv, &bytes));
            guarded g = guarded_alloc(bytes);
            CHECK_OK(ctx, tb_mha_forward(&ctx, &m, TB_MODE_TRAINING, NULL, &xt, cross ? &mt : NULL,
                                         &yt, g.buf, bytes));
            CHECK_OK(ctx, tb_mha_backward(&ctx, &m, NULL, &xt, cross ? &mt : NULL, &dyt, g.buf,
                                          bytes, &dxt, cross ? &dmt : NULL));
            char what[96];
            snprintf(what, sizeof what, "mha D=%zu H=%zu Tq=%zu Tk=%zu", d, h, tq, tkv);
            guarded_check(&g, what);
            free(g.mem);
            free(x), free(mem), free(dy), free(y), free(dx), free(dmem);
            tb_mha_free(&m);
            n++;
        }
    printf("  scratch: %zu MHA shapes (%s) forward + backward within their cache size\n", n,
           tb_kernel_name(tbt_test_kernel()));
}
END_TEST

/* LoRA: the cache holds per adapter (R, r), and for DoRA (R, out) + (out):
 * plain, DoRA, dropout and several adapters, on odd shapes and both layouts. */
START_TEST(lora_cache_stays_in_its_size)
{
    static const size_t shapes[][3] = {{1, 1, 1}, {3, 17, 5}, {17, 3, 33}, {5, 65, 50}};
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    size_t n = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int variant = 0; variant < 4; variant++) {
            const size_t R = shapes[si][0], in = shapes[si][1], out = shapes[si][2];
            tb_rng rng;
            tb_rng_init(&rng, 40 + n);
            tb_linear lin;
            CHECK_OK(ctx, tb_linear_init_layout(&ctx, &lin, in, out, variant & 1,
                                                variant & 2 ? TB_LINEAR_IN_OUT : TB_LINEAR_OUT_IN,
                                                &rng));
            tb_lora l;
            CHECK_OK(ctx, tb_lora_init(&ctx, &l, &lin));
            tb_lora_config c = tb_lora_config_default(1 + 3 * (size_t)variant);
            c.init = TB_LORA_INIT_RANDOM;
            c.use_dora = variant >= 1;
            c.dropout = variant == 1 || variant == 3 ? 0.25f : 0.0f;
            CHECK_OK(ctx, tb_lora_add(&ctx, &l, "a", &c, &rng));
            c.use_dora = !c.use_dora;
            c.rank = 3;
            CHECK_OK(ctx, tb_lora_add(&ctx, &l, "b", &c, &rng));
            const char *both[2] = {"b", "a"};
            CHECK_OK(ctx, tb_lora_set_active(&ctx, &l, both, (size_t)1 + (variant > 0)));
            float *x = filled(R * in, 30 + n), *dy = filled(R * out, 31 + n);
            float *y = tbt_alloc(R * out * sizeof(float)), *dx = tbt_alloc(R * in * sizeof(float));
            tb_tensor xt = tb_tensor_2d(x, R, in), yt = tb_tensor_2d(y, R, out);
            tb_tensor dyt = tb_tensor_2d(dy, R, out), dxt = tb_tensor_2d(dx, R, in);
            size_t bytes;
            CHECK_OK(ctx, tb_lora_cache_size(&l, R, &bytes));
            guarded g = guarded_alloc(bytes);
            CHECK_OK(ctx, tb_lora_forward(&ctx, &l, TB_MODE_TRAINING, &rng, &xt, &yt, g.buf, bytes));
            CHECK_OK(ctx, tb_lora_backward(&ctx, &l, &xt, &dyt, &dxt, g.buf, bytes));
            char what[96];
            snprintf(what, sizeof what, "lora R=%zu in=%zu out=%zu variant %d", R, in, out, variant);
            guarded_check(&g, what);
            free(g.mem);
            free(x), free(dy), free(y), free(dx);
            tb_lora_free(&l);
            tb_linear_free(&lin);
            n++;
        }
    printf("  scratch: %zu LoRA layers (%s) forward + backward within their cache size\n", n,
           tb_kernel_name(tbt_test_kernel()));
}
END_TEST

/* The LSTM on odd shapes, 1-3 layers, both directions, with lengths and
 * training dropout; the prompt encoder of both types. */
START_TEST(lstm_caches_stay_in_their_size)
{
    static const size_t shapes[][5] = {/* B, T, in, H, layers */
                                       {1, 1, 1, 1, 1}, {3, 7, 17, 5, 2}, {2, 17, 3, 33, 3}};
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int bidir = 0; bidir < 2; bidir++) {
            const size_t B = shapes[s][0], T = shapes[s][1], in = shapes[s][2], H = shapes[s][3];
            const size_t L = shapes[s][4], D = bidir ? 2 : 1;
            tb_rng rng;
            tb_rng_init(&rng, 40 + s);
            tb_lstm m;
            const tb_lstm_config c = {in, H, L, bidir, 0.25f};
            CHECK_OK(ctx, tb_lstm_init(&ctx, &m, &c, &rng));
            int32_t lens[3] = {(int32_t)T, 1, (int32_t)(T + 1) / 2};
            float *x = filled(B * T * in, 5 + s), *dy = filled(B * T * D * H, 6 + s);
            float *y = tbt_alloc(B * T * D * H * sizeof(float)), *dx = tbt_alloc(B * T * in * sizeof(float));
            tb_tensor xt = tb_tensor_3d(x, B, T, in), yt = tb_tensor_3d(y, B, T, D * H);
            tb_tensor dyt = tb_tensor_3d(dy, B, T, D * H), dxt = tb_tensor_3d(dx, B, T, in);
            size_t bytes;
            CHECK_OK(ctx, tb_lstm_cache_size(&m, B, T, &bytes));
            guarded g = guarded_alloc(bytes);
            CHECK_OK(ctx, tb_lstm_forward(&ctx, &m, TB_MODE_TRAINING, &rng, &xt, lens, NULL, NULL,
                                          &yt, NULL, NULL, g.buf, bytes));
            CHECK_OK(ctx, tb_lstm_backward(&ctx, &m, &xt, lens, NULL, NULL, &dyt, NULL, NULL, &dxt,
                                           NULL, NULL, g.buf, bytes));
            guarded_check(&g, "lstm");
            free(g.mem), free(x), free(dy), free(y), free(dx);
            tb_lstm_free(&m);
        }
    for (int type = 0; type < 2; type++)
        for (size_t s = 0; s < 2; s++) {
            tb_rng rng;
            tb_rng_init(&rng, 50 + s);
            tb_ptuning p;
            tb_ptuning_config c;
            memset(&c, 0, sizeof c);
            c.num_virtual_tokens = s ? 20 : 1, c.token_dim = s ? 17 : 7;
            c.encoder_hidden_size = s ? 16 : 5, c.encoder_num_layers = s + 1;
            c.type = (tb_ptuning_encoder)type, c.encoder_dropout = 0.25f;
            CHECK_OK(ctx, tb_ptuning_init(&ctx, &p, &c, &rng));
            const size_t n = c.num_virtual_tokens, d = c.token_dim;
            float *o = tbt_alloc(n * d * sizeof(float)), *dout = filled(n * d, 9);
            tb_tensor ot = tb_tensor_2d(o, n, d), dt = tb_tensor_2d(dout, n, d);
            size_t bytes;
            CHECK_OK(ctx, tb_ptuning_cache_size(&p, &bytes));
            guarded g = guarded_alloc(bytes);
            CHECK_OK(ctx, tb_ptuning_forward(&ctx, &p, TB_MODE_TRAINING, &rng, &ot, g.buf, bytes));
            CHECK_OK(ctx, tb_ptuning_backward(&ctx, &p, &dt, g.buf, bytes));
            guarded_check(&g, "ptuning");
            free(g.mem), free(o), free(dout);
            tb_ptuning_free(&p);
        }
}
END_TEST

Suite *suite_scratch(void)
{
    Suite *s = suite_create("scratch");
    TCase *tc = tcase_create("guard zones");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, norm_caches_stay_in_their_size);
    tcase_add_test(tc, attention_cache_stays_in_its_size);
    tcase_add_test(tc, mha_cache_stays_in_its_size);
    tcase_add_test(tc, lora_cache_stays_in_its_size);
    tcase_add_test(tc, lstm_caches_stay_in_their_size);
    suite_add_tcase(s, tc);
    return s;
}
