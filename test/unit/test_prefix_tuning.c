/*
 * Prefix tuning / P-tuning v2 (examples/common/prefix_tuning.c and the
 * prefix in examples/common/tfm.c) against Hugging Face PEFT's
 * PREFIX_TUNING on transformers' GPT2LMHeadModel (test/oracle/gen_peft_prefix.py):
 * n = 1, 3 and 7 virtual tokens without a projection and n = 3 with
 * prefix_projection, on a batch with labels whose last row is padded:
 * logits at every position, the loss, and every prefix parameter's
 * gradient, with the model frozen. Also: the incremental decoder (prefix
 * entered into the KV caches) against PEFT's logits and the full forward
 * pass, PEFT's saved adapter file, a stack without a prefix bitwise as
 * before, a bidirectional post-norm stack with separate q/k/v (BERT-like
 * P-tuning v2, no oracle) by finite differences, thread counts, misuse.
 *
 * ---- Tolerances -----------------------------------------------------------
 * As test_gpt.c: |got - want| <= atol + rtol |want|, rtol 1e-4 and atol
 * 1e-4 * max|want| of that tensor, against float32 PyTorch and against the
 * same model in float64. float32 PyTorch differs from float64 by ~1e-6 of
 * the scale here; a wrong mapping (key and value swapped, layers or heads
 * in another order), a wrong position or a missing mask changes results by
 * O(1) of the scale. The worst errors are printed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt.h"
#include "prefix_tuning.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const pfx_cases[] = {"pfx_l2_h4_c32_n3", "pfx_l2_h2_c48_n1",
                                        "pfx_l2_h3_c36_n7", "pfx_l2_h4_c40_n3_proj"};

/* One case: the GPT-2 model (frozen), the prefix with PEFT's values, the
 * prefix's parameter list. */
typedef struct fixture {
    tbt_ref *ref;
    gpt m;
    prefix_tuning p;
    tb_param_list plist;
    size_t B, T, V, n;
    const int32_t *tokens, *targets;
    uint8_t *valid;
} fixture;

static void model_of(tb_ctx *ctx, const tbt_ref *ref, gpt *m, const char *name)
{
    gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = (size_t)tbt_ref_i32_scalar(ref, "n_layer");
    c.n_head = (size_t)tbt_ref_i32_scalar(ref, "n_head");
    c.n_embd = (size_t)tbt_ref_i32_scalar(ref, "n_embd");
    c.block_size = (size_t)tbt_ref_i32_scalar(ref, "block_size");
    c.vocab_size = (size_t)tbt_ref_i32_scalar(ref, "vocab");
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(*ctx, gpt_init(ctx, m, &c, &rng));
    char path[600];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", getenv("TB_ORACLE_DIR"), name);
    CHECK_OK(*ctx, gpt_load_weights(ctx, m, path));
}

/* attach: also attach the prefix to the model. */
static void fixture_init(tb_ctx *ctx, fixture *f, const char *name, int attach)
{
    memset(f, 0, sizeof *f);
    f->ref = tbt_ref_load(name);
    model_of(ctx, f->ref, &f->m, name);
    /* Only the prefix trains. */
    ck_assert_uint_eq(tb_param_list_set_trainable(&f->m.params, "", 0), f->m.params.count);
    prefix_tuning_config pc = {(size_t)tbt_ref_i32_scalar(f->ref, "n_virtual"),
                               tbt_ref_i32_scalar(f->ref, "projection"),
                               (size_t)tbt_ref_i32_scalar(f->ref, "hidden")};
    tb_rng rng;
    tb_rng_init(&rng, 2);
    CHECK_OK(*ctx, prefix_tuning_init(ctx, &f->p, &f->m.t.cfg, &pc, &rng));
    CHECK_OK(*ctx, tb_param_list_init(ctx, &f->plist));
    CHECK_OK(*ctx, prefix_tuning_params(ctx, &f->p, "", &f->plist));
    ck_assert_uint_eq(f->plist.count, pc.prefix_projection ? 5 : 1);
    for (size_t i = 0; i < f->plist.count; i++) { /* PEFT's values, by PEFT's names */
        const tb_named_param *np = &f->plist.items[i];
        char k[200];
        snprintf(k, sizeof k, "p:%s", np->name);
        tbt_reft w = tbt_ref_get(f->ref, k);
        ck_assert_uint_eq(w.n, np->param->numel);
        memcpy(np->param->value, w.data, w.n * sizeof(float));
    }
    CHECK_OK(*ctx, prefix_tuning_forward(ctx, &f->p));
    if (attach)
        CHECK_OK(*ctx, prefix_tuning_attach(ctx, &f->p, &f->m.t));
    tbt_reft lg = tbt_ref_get(f->ref, "logits");
    f->B = lg.shape[0], f->T = lg.shape[1], f->V = lg.shape[2], f->n = pc.num_virtual_tokens;
    size_t nt;
    f->tokens = tbt_ref_i32(f->ref, "tokens", &nt);
    f->targets = tbt_ref_i32(f->ref, "targets", &nt);
    const int32_t *mask = tbt_ref_i32(f->ref, "mask", &nt);
    ck_assert_uint_eq(nt, f->B * f->T);
    f->valid = tbt_alloc(nt);
    for (size_t i = 0; i < nt; i++)
        f->valid[i] = mask[i] != 0;
}

static void fixture_free(fixture *f)
{
    tb_param_list_free(&f->plist);
    prefix_tuning_free(&f->p);
    gpt_free(&f->m);
    free(f->valid);
    tbt_ref_free(f->ref);
}

/* The training forward on the padded batch (as gpt_forward(), with the
 * key-valid mask) and, with dloss, the backward into the prefix. */
static void step(tb_ctx *ctx, fixture *f, gpt_acts *a, float *loss, int backward)
{
    const size_t R = f->B * f->T, C = f->m.cfg.n_embd;
    const tfm_input in = {f->B, f->T, f->tokens, NULL, NULL, f->valid};
    CHECK_OK(*ctx, prefix_tuning_forward(ctx, &f->p));
    CHECK_OK(*ctx, tfm_forward(ctx, &f->m.t, &a->t, TB_MODE_TRAINING, NULL, &in));
    tb_tensor out = tb_tensor_2d(a->t.out, R, C), lo = tb_tensor_2d(a->logits, R, f->V);
    CHECK_OK(*ctx, tb_linear_forward(ctx, &f->m.lm_head, &out, &lo));
    CHECK_OK(*ctx, tb_cross_entropy_forward(ctx, NULL, &lo, f->targets, R, loss, a->ce_cache,
                                            a->ce_cache_bytes));
    if (backward) {
        CHECK_OK(*ctx, gpt_backward(ctx, &f->m, a, f->tokens, f->targets, 1.0f));
        CHECK_OK(*ctx, prefix_tuning_backward(ctx, &f->p));
    }
}

START_TEST(test_prefix_vs_peft)
{
    const char *name = pfx_cases[_i];
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    fixture f;
    fixture_init(&ctx, &f, name, 1);
    gpt_acts a;
    CHECK_OK(ctx, gpt_acts_init(&ctx, &a, &f.m, f.B, f.T));
    tb_param_list_zero_grad(&f.plist);
    float loss;
    step(&ctx, &f, &a, &loss, 1);
    char lbl[256];
    snprintf(lbl, sizeof lbl, "%s.logits", name);
    const double e_logits =
        tbt_assert_close_f32_f64(lbl, a.logits, tbt_ref_get(f.ref, "logits").data,
                 tbt_ref_get(f.ref, "logits_f64").data, f.B * f.T * f.V, 1e-4, 1e-4);
    const float want_loss = tbt_ref_scalar(f.ref, "loss_f64");
    const double e_loss = fabs((double)loss - want_loss) / fabs(want_loss);
    ck_assert_msg(e_loss <= 1e-5, "%s: loss %.7f, torch (float64) %.7f", name, (double)loss,
                  (double)want_loss);
    double e_grad = 0.0;
    for (size_t i = 0; i < f.plist.count; i++) {
        const tb_named_param *np = &f.plist.items[i];
        char k32[200], k64[200];
        snprintf(k32, sizeof k32, "g:%s", np->name);
        snprintf(k64, sizeof k64, "g64:%s", np->name);
        tbt_reft g32 = tbt_ref_get(f.ref, k32), g64 = tbt_ref_get(f.ref, k64);
        ck_assert_uint_eq(g32.n, np->param->numel);
        ck_assert_msg(tbt_max_abs_f(g64.data, g64.n) > 0.0, "%s: an all-zero reference", k64);
        snprintf(lbl, sizeof lbl, "%s.grad.%s", name, np->name);
        e_grad = fmax(e_grad, tbt_assert_close_f32_f64(lbl, np->param->grad, g32.data, g64.data, g32.n, 1e-4, 1e-4));
    }
    /* The model is frozen: no gradient reached it. */
    for (size_t i = 0; i < f.m.params.count; i++) {
        const tb_param *p = f.m.params.items[i].param;
        ck_assert_msg(tbt_max_abs_f(p->grad, p->numel) == 0.0, "%s: frozen, yet it has a gradient",
                      f.m.params.items[i].name);
    }
    printf("  check   %s: n = %zu, logits, loss and %zu prefix gradient%s vs PEFT (float64): "
           "worst %.2e, %.2e, %.2e of scale (tolerance 1e-4 + 1e-4 rel)\n",
           name, f.n, f.plist.count, f.plist.count > 1 ? "s" : "", e_logits, e_loss, e_grad);
    gpt_acts_free(&a);
    fixture_free(&f);
}
END_TEST

START_TEST(test_prefix_manifest)
{
    const tbt_names l = {pfx_cases, ARRAY_LEN(pfx_cases)};
    ck_assert_uint_eq(tbt_check_manifest("peft_prefix_cases.txt", "test_prefix_tuning.c",
                                         tbt_name_listed, &l),
                      ARRAY_LEN(pfx_cases));
}
END_TEST

/* The decoder: the prefix is in every layer's cache from init (and again
 * after a reset); prefill 4 tokens, then one at a time: every position's
 * logits equal the full forward pass's (bitwise: the keys sit at the same
 * positions) and PEFT's. */
START_TEST(test_prefix_decoder)
{
    const char *name = pfx_cases[_i];
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    fixture f;
    fixture_init(&ctx, &f, name, 1);
    size_t nt;
    const int32_t *tokens = tbt_ref_i32(f.ref, "tokens2", &nt);
    tbt_reft want = tbt_ref_get(f.ref, "logits2");
    const size_t B = want.shape[0], T = want.shape[1], V = f.V, P = 4;
    ck_assert_uint_eq(nt, B * T);
    gpt_acts a;
    CHECK_OK(ctx, gpt_acts_init(&ctx, &a, &f.m, B, T));
    CHECK_OK(ctx, gpt_forward(&ctx, &f.m, &a, TB_MODE_INFERENCE, NULL, tokens, NULL, B, T, NULL));
    char lbl[256];
    snprintf(lbl, sizeof lbl, "%s.full_forward_vs_peft", name);
    tbt_assert_close(lbl, a.logits, want.data, B * T * V, 1e-4, 1e-4 * tbt_max_abs_f(want.data, want.n));
    gpt_decoder d;
    CHECK_OK(ctx, gpt_decoder_init(&ctx, &d, &f.m, B, T, P));
    ck_assert_uint_eq(d.t.kv[0].len, f.n);
    ck_assert_uint_eq(tfm_decoder_len(&d.t), 0);
    float *dec = tbt_alloc(B * T * V * sizeof(float)), *all = tbt_alloc(B * P * V * sizeof(float));
    int32_t in[2 * 4];
    for (int pass = 0; pass < 2; pass++) {
        if (pass)
            gpt_decoder_reset(&d);
        for (size_t b = 0; b < B; b++)
            memcpy(in + b * P, tokens + b * T, P * sizeof(int32_t));
        CHECK_OK(ctx, gpt_decoder_step(&ctx, &f.m, &d, in, P, all));
        for (size_t b = 0; b < B; b++)
            memcpy(dec + b * T * V, all + b * P * V, P * V * sizeof(float));
        for (size_t t = P; t < T; t++) {
            for (size_t b = 0; b < B; b++)
                in[b] = tokens[b * T + t];
            CHECK_OK(ctx, gpt_decoder_step(&ctx, &f.m, &d, in, 1, NULL));
            for (size_t b = 0; b < B; b++)
                memcpy(dec + (b * T + t) * V, d.logits + b * V, V * sizeof(float));
        }
        ck_assert_uint_eq(tfm_decoder_len(&d.t), T);
        ck_assert_uint_eq(d.t.kv[1].len, f.n + T);
        ck_assert_msg(memcmp(dec, a.logits, B * T * V * sizeof(float)) == 0,
                      "%s: decoding differs from the full forward pass", name);
        snprintf(lbl, sizeof lbl, "%s.decoder_vs_peft", name);
        tbt_assert_close_f32_f64(lbl, dec, want.data, want.data, B * T * V, 1e-4, 1e-4);
    }
    /* The context is full (T tokens after the prefix). */
    ck_assert_int_eq(gpt_decoder_step(&ctx, &f.m, &d, in, 1, NULL), TB_ERR_BUFFER_TOO_SMALL);
    printf("  check   %s: decoding %zu x %zu tokens after the %zu-position prefix (twice, with a "
           "reset) equals the full forward pass bitwise and PEFT within 1e-4\n",
           name, B, T, f.n);
    free(dec);
    free(all);
    gpt_decoder_free(&d);
    gpt_acts_free(&a);
    fixture_free(&f);
}
END_TEST

/* PEFT's save_pretrained writes the (n, 2LC) prefix as prompt_embeddings:
 * it loads into embedding.weight, and ours reads back the same. */
START_TEST(test_prefix_peft_adapter_file)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    for (size_t c = 0; c < ARRAY_LEN(pfx_cases); c++) {
        fixture f;
        fixture_init(&ctx, &f, pfx_cases[c], 0);
        tbt_reft w = tbt_ref_get(f.ref, "p:embedding.weight");
        char path[600], out[600];
        snprintf(path, sizeof path, "%s/%s_adapter/adapter_model.safetensors",
                 getenv("TB_ORACLE_DIR"), pfx_cases[c]);
        snprintf(out, sizeof out, "%s/%s_ours.safetensors", getenv("TB_ORACLE_DIR"), pfx_cases[c]);
        if (f.p.cfg.prefix_projection) {
            ck_assert_int_eq(prefix_tuning_load(&ctx, &f.p, path), TB_ERR_UNSUPPORTED);
            fixture_free(&f);
            continue;
        }
        memset(f.p.embedding.weight.value, 0, w.n * sizeof(float));
        CHECK_OK(ctx, prefix_tuning_load(&ctx, &f.p, path));
        ck_assert(memcmp(f.p.embedding.weight.value, w.data, w.n * sizeof(float)) == 0);
        CHECK_OK(ctx, prefix_tuning_save(&ctx, &f.p, out));
        memset(f.p.embedding.weight.value, 0, w.n * sizeof(float));
        CHECK_OK(ctx, prefix_tuning_load(&ctx, &f.p, out));
        ck_assert(memcmp(f.p.embedding.weight.value, w.data, w.n * sizeof(float)) == 0);
        remove(out);
        fixture_free(&f);
    }
}
END_TEST

/* Without a prefix the stack is what it was: a model that had a prefix
 * attached (activations and decoder sized for it) and detached gives the
 * same bits as one that never had one, in logits, loss, every gradient
 * and decoding. */
START_TEST(test_prefix_none_is_bitwise_unchanged)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    fixture f[2];
    gpt_acts a[2];
    gpt_decoder d[2];
    float loss[2];
    for (int k = 0; k < 2; k++) {
        fixture_init(&ctx, &f[k], pfx_cases[0], k);
        tb_param_list_set_trainable(&f[k].m.params, "", 1);
        CHECK_OK(ctx, gpt_acts_init(&ctx, &a[k], &f[k].m, f[k].B, f[k].T));
        CHECK_OK(ctx, gpt_decoder_init(&ctx, &d[k], &f[k].m, 2, f[k].T, 3));
        if (k) {
            ck_assert_uint_gt(a[1].t.bytes, a[0].t.bytes);
            CHECK_OK(ctx, tfm_set_prefix(&ctx, &f[k].m.t, NULL));
            gpt_decoder_free(&d[k]);
            CHECK_OK(ctx, gpt_decoder_init(&ctx, &d[k], &f[k].m, 2, f[k].T, 3));
        }
        tb_param_list_zero_grad(&f[k].m.params);
        step(&ctx, &f[k], &a[k], &loss[k], 1);
        CHECK_OK(ctx, gpt_decoder_step(&ctx, &f[k].m, &d[k], f[k].tokens, 3, NULL));
    }
    const size_t R = f[0].B * f[0].T, V = f[0].V;
    ck_assert(memcmp(a[0].logits, a[1].logits, R * V * sizeof(float)) == 0);
    ck_assert(memcmp(&loss[0], &loss[1], sizeof(float)) == 0);
    for (size_t i = 0; i < f[0].m.params.count; i++) {
        const tb_param *p0 = f[0].m.params.items[i].param, *p1 = f[1].m.params.items[i].param;
        ck_assert_msg(memcmp(p0->grad, p1->grad, p0->numel * sizeof(float)) == 0, "%s",
                      f[0].m.params.items[i].name);
    }
    ck_assert(memcmp(d[0].logits, d[1].logits, 2 * V * sizeof(float)) == 0);
    /* The prefix got nothing (it was detached). */
    ck_assert(tbt_max_abs_f(f[1].p.embedding.weight.grad, f[1].p.embedding.weight.numel) == 0.0);
    printf("  check   no prefix: logits, loss, %zu gradients and decoding bitwise as a stack "
           "that never had one\n",
           f[0].m.params.count);
    for (int k = 0; k < 2; k++) {
        gpt_decoder_free(&d[k]);
        gpt_acts_free(&a[k]);
        fixture_free(&f[k]);
    }
}
END_TEST

/* 1 and 2 threads give the same bits (forward, prefix gradients). */
START_TEST(test_prefix_threads)
{
    float *logits[2], *grad[2];
    size_t nl = 0, ng = 0;
    for (int th = 1; th <= 2; th++) {
        tb_ctx ctx;
        tbt_ctx_init(&ctx, th);
        fixture f;
        fixture_init(&ctx, &f, pfx_cases[2], 1);
        gpt_acts a;
        CHECK_OK(ctx, gpt_acts_init(&ctx, &a, &f.m, f.B, f.T));
        tb_param_list_zero_grad(&f.plist);
        float loss;
        step(&ctx, &f, &a, &loss, 1);
        nl = f.B * f.T * f.V, ng = f.p.embedding.weight.numel;
        logits[th - 1] = tbt_alloc(nl * sizeof(float));
        grad[th - 1] = tbt_alloc(ng * sizeof(float));
        memcpy(logits[th - 1], a.logits, nl * sizeof(float));
        memcpy(grad[th - 1], f.p.embedding.weight.grad, ng * sizeof(float));
        gpt_acts_free(&a);
        fixture_free(&f);
    }
    ck_assert(memcmp(logits[0], logits[1], nl * sizeof(float)) == 0);
    ck_assert(memcmp(grad[0], grad[1], ng * sizeof(float)) == 0);
    for (int k = 0; k < 2; k++) {
        free(logits[k]);
        free(grad[k]);
    }
}
END_TEST

/* Only the prefix trains: Adam over the prefix's list lowers the loss and
 * leaves every model parameter's bits as they were. */
START_TEST(test_prefix_trains_only_the_prefix)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    fixture f;
    fixture_init(&ctx, &f, pfx_cases[0], 1);
    const size_t np = f.m.params.count;
    float **before = tbt_alloc(np * sizeof *before);
    for (size_t i = 0; i < np; i++) {
        const tb_param *p = f.m.params.items[i].param;
        before[i] = tbt_alloc(p->numel * sizeof(float));
        memcpy(before[i], p->value, p->numel * sizeof(float));
    }
    gpt_acts a;
    CHECK_OK(ctx, gpt_acts_init(&ctx, &a, &f.m, f.B, f.T));
    tb_adam_config cfg = tb_adamw_default_config();
    cfg.lr = 0.2f;
    tb_adam opt;
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &f.plist, &cfg));
    float first = 0.0f, loss = 0.0f;
    for (int s = 0; s < 30; s++) {
        tb_param_list_zero_grad(&f.plist);
        step(&ctx, &f, &a, &loss, 1);
        if (s == 0)
            first = loss;
        CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
    }
    ck_assert_msg(loss < first - 0.05f, "loss %.4f after 30 steps, %.4f at first", (double)loss,
                  (double)first);
    for (size_t i = 0; i < np; i++) {
        const tb_param *p = f.m.params.items[i].param;
        ck_assert_msg(memcmp(before[i], p->value, p->numel * sizeof(float)) == 0, "%s changed",
                      f.m.params.items[i].name);
        free(before[i]);
    }
    free(before);
    printf("  check   prefix-only training: loss %.4f -> %.4f in 30 AdamW steps (lr 0.2), the "
           "model's %zu tensors unchanged\n",
           (double)first, (double)loss, np);
    tb_adam_free(&opt);
    gpt_acts_free(&a);
    fixture_free(&f);
}
END_TEST

/* ---- a bidirectional, post-norm stack with separate q, k, v (BERT-like
 * P-tuning v2): the prefix gradients by finite differences. */
#define FD_B 2
#define FD_T 5
#define FD_N 3
#define FD_L 2
#define FD_C 12
typedef struct fd_case {
    tb_ctx *ctx;
    tfm m;
    tfm_acts a;
    tfm_prefix pf;
    float *kv, *dkv; /* (N, 2 L C) as PEFT's layout */
    float *key[FD_L], *value[FD_L], *dkey[FD_L], *dvalue[FD_L];
    int32_t ids[FD_B * FD_T];
    uint8_t valid[FD_B * FD_T];
    float w[FD_B * FD_T * FD_C];
} fd_case;

static double fd_loss(void *user)
{
    fd_case *c = user;
    const tfm_input in = {FD_B, FD_T, c->ids, NULL, NULL, c->valid};
    CHECK_OK(*c->ctx, tfm_forward(c->ctx, &c->m, &c->a, TB_MODE_INFERENCE, NULL, &in));
    double s = 0.0; /* padded rows' outputs are not the loss's */
    for (size_t r = 0; r < FD_B * FD_T; r++)
        if (c->valid[r])
            s += tbt_dot(c->w + r * FD_C, c->a.out + r * FD_C, FD_C);
    return s;
}

START_TEST(test_prefix_bidirectional_fd)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    fd_case *c = tbt_alloc(sizeof *c);
    memset(c, 0, sizeof *c);
    c->ctx = &ctx;
    tfm_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.n_layer = FD_L, cfg.n_head = 3, cfg.d_model = FD_C, cfg.d_ff = 20, cfg.vocab_size = 17;
    cfg.max_positions = 16, cfg.type_vocab_size = 2, cfg.norm_place = TFM_POST_NORM;
    cfg.norm_kind = TFM_LAYERNORM, cfg.embed_norm = 1, cfg.norm_eps = 1e-5f, cfg.causal = 0;
    cfg.qkv = TFM_QKV_SEPARATE, cfg.layout = TB_LINEAR_OUT_IN, cfg.gelu = TB_GELU_EXACT;
    cfg.init_std = 0.3f, cfg.names = &tfm_names_bert;
    tb_rng rng;
    tb_rng_init(&rng, 11);
    CHECK_OK(ctx, tfm_init(&ctx, &c->m, &cfg, &rng));
    const size_t W = 2 * FD_L * FD_C;
    c->kv = tbt_alloc(2 * FD_N * W * sizeof(float));
    c->dkv = c->kv + FD_N * W;
    tbt_fill_uniform(c->kv, FD_N * W, -1.0f, 1.0f, 12);
    memset(c->dkv, 0, FD_N * W * sizeof(float));
    for (size_t l = 0; l < FD_L; l++) {
        c->key[l] = c->kv + 2 * l * FD_C, c->value[l] = c->kv + (2 * l + 1) * FD_C;
        c->dkey[l] = c->dkv + 2 * l * FD_C, c->dvalue[l] = c->dkv + (2 * l + 1) * FD_C;
    }
    c->pf = (tfm_prefix){FD_N, W, 0, c->key, c->value, c->dkey, c->dvalue};
    CHECK_OK(ctx, tfm_set_prefix(&ctx, &c->m, &c->pf));
    CHECK_OK(ctx, tfm_acts_init(&ctx, &c->a, &c->m, FD_B, FD_T));
    for (size_t r = 0; r < FD_B * FD_T; r++) {
        c->ids[r] = (int32_t)((r * 7 + 3) % 17);
        c->valid[r] = !(r / FD_T == 1 && r % FD_T >= 3); /* row 1: 2 pads */
    }
    tbt_fill_uniform(c->w, FD_B * FD_T * FD_C, -1.0f, 1.0f, 13);
    float *dout = tbt_alloc(sizeof c->w);
    for (size_t r = 0; r < FD_B * FD_T; r++)
        for (size_t j = 0; j < FD_C; j++)
            dout[r * FD_C + j] = c->valid[r] ? c->w[r * FD_C + j] : 0.0f;
    fd_loss(c);
    CHECK_OK(ctx, tfm_backward(&ctx, &c->m, &c->a, dout, NULL));
    float *ana = tbt_alloc(FD_N * W * sizeof(float));
    memcpy(ana, c->dkv, FD_N * W * sizeof(float));
    tbt_gradcheck("bert_like.prefix", c->kv, FD_N * W, ana, fd_loss, c, TBT_FD_H, TBT_FD_RTOL,
                  TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    /* Misuse: the prefix must fit the activations and the positions. */
    tfm_prefix big = c->pf;
    big.n = FD_N + 1;
    CHECK_OK(ctx, tfm_set_prefix(&ctx, &c->m, &big));
    const tfm_input in = {FD_B, FD_T, c->ids, NULL, NULL, c->valid};
    ck_assert_int_eq(tfm_forward(&ctx, &c->m, &c->a, TB_MODE_INFERENCE, NULL, &in),
                     TB_ERR_BUFFER_TOO_SMALL);
    big.n = FD_N, big.first_position = 12; /* 12 + 5 > 16 positions */
    CHECK_OK(ctx, tfm_set_prefix(&ctx, &c->m, &big));
    ck_assert_int_eq(tfm_forward(&ctx, &c->m, &c->a, TB_MODE_INFERENCE, NULL, &in), TB_ERR_SHAPE);
    big.first_position = 16;
    ck_assert_int_eq(tfm_set_prefix(&ctx, &c->m, &big), TB_ERR_INVALID_ARG);
    big.first_position = 0, big.ld = FD_C - 1;
    ck_assert_int_eq(tfm_set_prefix(&ctx, &c->m, &big), TB_ERR_INVALID_ARG);
    big.ld = W, big.n = 0;
    ck_assert_int_eq(tfm_set_prefix(&ctx, &c->m, &big), TB_ERR_INVALID_ARG);
    big.n = FD_N, big.value = NULL;
    ck_assert_int_eq(tfm_set_prefix(&ctx, &c->m, &big), TB_ERR_NULL_ARG);
    /* Backward after the prefix changed: refused. */
    CHECK_OK(ctx, tfm_set_prefix(&ctx, &c->m, &c->pf));
    fd_loss(c);
    CHECK_OK(ctx, tfm_set_prefix(&ctx, &c->m, NULL));
    ck_assert_int_eq(tfm_backward(&ctx, &c->m, &c->a, dout, NULL), TB_ERR_STATE);
    free(ana);
    free(dout);
    free(c->kv);
    tfm_acts_free(&c->a);
    tfm_free(&c->m);
    free(c);
}
END_TEST

/* Activations and decoders made before the prefix was attached are
 * refused, not overrun. */
START_TEST(test_prefix_attach_order)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    fixture f;
    fixture_init(&ctx, &f, pfx_cases[0], 0);
    gpt_acts a;
    gpt_decoder d;
    CHECK_OK(ctx, gpt_acts_init(&ctx, &a, &f.m, f.B, f.T));
    CHECK_OK(ctx, gpt_decoder_init(&ctx, &d, &f.m, 2, f.T, 2));
    CHECK_OK(ctx, prefix_tuning_attach(&ctx, &f.p, &f.m.t));
    const tfm_input in = {f.B, f.T, f.tokens, NULL, NULL, f.valid};
    ck_assert_int_eq(tfm_forward(&ctx, &f.m.t, &a.t, TB_MODE_TRAINING, NULL, &in),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(gpt_decoder_step(&ctx, &f.m, &d, f.tokens, 2, NULL), TB_ERR_STATE);
    /* The decoder's context after a prefix of n: block_size - n tokens. */
    gpt_decoder_free(&d);
    ck_assert_int_eq(gpt_decoder_init(&ctx, &d, &f.m, 2, f.m.cfg.block_size, 2),
                     TB_ERR_INVALID_ARG);
    gpt_decoder_free(&d);
    CHECK_OK(ctx, gpt_decoder_init(&ctx, &d, &f.m, 2, f.m.cfg.block_size - f.n, 2));
    gpt_decoder_free(&d);
    gpt_acts_free(&a);
    /* A prefix built for another stack is refused. */
    tfm_config other = f.m.t.cfg;
    other.n_layer = 3;
    prefix_tuning p3;
    prefix_tuning_config pc = {2, 0, 0};
    tb_rng rng;
    tb_rng_init(&rng, 3);
    CHECK_OK(ctx, prefix_tuning_init(&ctx, &p3, &other, &pc, &rng));
    ck_assert_int_eq(prefix_tuning_attach(&ctx, &p3, &f.m.t), TB_ERR_SHAPE);
    prefix_tuning_free(&p3);
    pc.num_virtual_tokens = 0;
    ck_assert_int_eq(prefix_tuning_init(&ctx, &p3, &other, &pc, &rng), TB_ERR_INVALID_ARG);
    prefix_tuning_free(&p3);
    fixture_free(&f);
}
END_TEST

Suite *suite_prefix_tuning(void)
{
    Suite *s = suite_create("prefix_tuning");
    TCase *tc = tcase_create("peft_prefix");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_prefix_vs_peft, 0, (int)ARRAY_LEN(pfx_cases));
    tcase_add_test(tc, test_prefix_manifest);
    tcase_add_loop_test(tc, test_prefix_decoder, 0, (int)ARRAY_LEN(pfx_cases));
    tcase_add_test(tc, test_prefix_peft_adapter_file);
    tcase_add_test(tc, test_prefix_none_is_bitwise_unchanged);
    tcase_add_test(tc, test_prefix_threads);
    tcase_add_test(tc, test_prefix_trains_only_the_prefix);
    tcase_add_test(tc, test_prefix_bidirectional_fd);
    tcase_add_test(tc, test_prefix_attach_order);
    suite_add_tcase(s, tc);
    return s;
}
