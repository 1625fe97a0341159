/*
 * The shared transformer stack (examples/common/tfm.c).
 *
 * As an encoder, against the real BERT: transformers' BertModel from a
 * BertConfig with odd sizes (3 layers, 5 heads, width 80, vocabulary 301,
 * 2 token types, intermediate 200), random weights saved with
 * save_pretrained (test/oracle/gen_tfm_bert.py) and loaded here by BERT's
 * parameter names: the last hidden state and the pooled output of a padded
 * batch with token types, every parameter's gradient (the pooler's
 * included), and the gradient w.r.t. input embeddings fed instead of ids.
 * The pooler (dense + tanh on the first token) is the caller's head, as the
 * stack leaves heads to its callers; it is written here.
 *
 * Also: the same output bit for bit from ids and from the embeddings they
 * select, and for 1 and 2 threads; every projection goes through the
 * adapter indirection (an adapter installed on each one is called from
 * every call site, forward and backward); finite differences through the
 * variants no oracle covers (post-norm with a fused QKV, RMSNorm and
 * BatchNorm stacks, causal with padding); configurations are validated.
 *
 * Tolerances as in test_gpt.c: |got - want| <= atol + rtol |want| with rtol
 * 1e-4 and atol = 1e-4 * max|want| of each tensor, against float32 and
 * float64 torch; a wrong wiring (missing residual, post- vs pre-norm, a
 * swapped projection, an ignored mask) is off by O(1) of the scale.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"
#include "tfm.h"

static tfm_config bert_config(size_t L, size_t H, size_t C, size_t F, size_t V, size_t types,
                              size_t positions)
{
    tfm_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = L, c.n_head = H, c.d_model = C, c.d_ff = F;
    c.vocab_size = V, c.max_positions = positions, c.type_vocab_size = types;
    c.has_pad_token = 1, c.pad_token_id = 0; /* BertConfig's pad_token_id */
    c.norm_place = TFM_POST_NORM;
    c.norm_kind = TFM_LAYERNORM;
    c.embed_norm = 1;
    c.norm_eps = 1e-12f;
    c.causal = 0;
    c.qkv = TFM_QKV_SEPARATE;
    c.layout = TB_LINEAR_OUT_IN;
    c.gelu = TB_GELU_EXACT;
    c.init_std = 0.02f;
    c.names = &tfm_names_bert;
    return c;
}

/* The caller's pooler head: pooled (B, C) = tanh(dense(out[:, 0])). */
typedef struct pooler {
    tb_linear dense;
    float *first, *pre, *pooled, *dpre, *dfirst; /* (B, C) each */
} pooler;

static void pooler_forward(tb_ctx *ctx, pooler *p, const float *out, size_t B, size_t T, size_t C)
{
    for (size_t b = 0; b < B; b++)
        memcpy(p->first + b * C, out + b * T * C, C * sizeof(float));
    tb_tensor x = tb_tensor_2d(p->first, B, C), y = tb_tensor_2d(p->pre, B, C);
    CHECK_OK(*ctx, tb_linear_forward(ctx, &p->dense, &x, &y));
    for (size_t i = 0; i < B * C; i++)
        p->pooled[i] = tanhf(p->pre[i]);
}

/* dout (B, T, C) += the pooler's gradient for dL/dpooled = w_p. */
static void pooler_backward(tb_ctx *ctx, pooler *p, const float *w_p, float *dout, size_t B,
                            size_t T, size_t C)
{
    for (size_t i = 0; i < B * C; i++)
        p->dpre[i] = w_p[i] * (1.0f - p->pooled[i] * p->pooled[i]);
    tb_tensor x = tb_tensor_2d(p->first, B, C), dy = tb_tensor_2d(p->dpre, B, C);
    tb_tensor dx = tb_tensor_2d(p->dfirst, B, C);
    CHECK_OK(*ctx, tb_linear_backward(ctx, &p->dense, &x, &dy, &dx));
    for (size_t b = 0; b < B; b++)
        for (size_t j = 0; j < C; j++)
            dout[b * T * C + j] += p->dfirst[b * C + j];
}

/* One run of the BERT case: forward (ids or embeds), pooler, backward of
 * L = sum(hidden w_h) + sum(pooled w_p). */
typedef struct bert_run {
    tfm m;
    tfm_acts a;
    pooler pool;
    tb_param_list params; /* the stack's, then the pooler's */
    float *dout, *d_embeds, *embeds;
} bert_run;

static void bert_setup(tb_ctx *ctx, bert_run *r, const tbt_ref *ref, size_t B, size_t T)
{
    const tfm_config c = bert_config(
        (size_t)tbt_ref_i32_scalar(ref, "n_layer"), (size_t)tbt_ref_i32_scalar(ref, "n_head"),
        (size_t)tbt_ref_i32_scalar(ref, "d_model"), (size_t)tbt_ref_i32_scalar(ref, "d_ff"),
        (size_t)tbt_ref_i32_scalar(ref, "vocab"), (size_t)tbt_ref_i32_scalar(ref, "types"),
        (size_t)tbt_ref_i32_scalar(ref, "positions"));
    const size_t C = c.d_model;
    tb_rng rng;
    tb_rng_init(&rng, 7);
    CHECK_OK(*ctx, tfm_init(ctx, &r->m, &c, &rng));
    CHECK_OK(*ctx, tb_linear_init(ctx, &r->pool.dense, C, C, 1, &rng));
    CHECK_OK(*ctx, tb_param_list_init(ctx, &r->params));
    CHECK_OK(*ctx, tfm_params(ctx, &r->m, "", &r->params));
    CHECK_OK(*ctx, tb_linear_params(ctx, &r->pool.dense, "pooler.dense", &r->params));
    char path[600];
    snprintf(path, sizeof path, "%s/tfm_bert/model.safetensors", getenv("TB_ORACLE_DIR"));
    tb_st_file f;
    CHECK_OK(*ctx, tb_st_open(ctx, path, &f));
    /* Every tensor of the file is a parameter here and every parameter is
     * in the file: loading refuses unexpected names. */
    CHECK_OK(*ctx, tb_st_load_params(ctx, &f, &r->params, 0, NULL, NULL));
    tb_st_close(&f);
    CHECK_OK(*ctx, tfm_acts_init(ctx, &r->a, &r->m, B, T));
    float **bufs[] = {&r->pool.first, &r->pool.pre, &r->pool.pooled, &r->pool.dpre,
                      &r->pool.dfirst};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        *bufs[i] = tbt_alloc(B * C * sizeof(float));
    r->dout = tbt_alloc(B * T * C * sizeof(float));
    r->d_embeds = tbt_alloc(B * T * C * sizeof(float));
    r->embeds = tbt_alloc(B * T * C * sizeof(float));
}

static void bert_free(bert_run *r)
{
    tfm_acts_free(&r->a);
    tfm_free(&r->m);
    tb_linear_free(&r->pool.dense);
    tb_param_list_free(&r->params);
    free(r->pool.first), free(r->pool.pre), free(r->pool.pooled), free(r->pool.dpre);
    free(r->pool.dfirst), free(r->dout), free(r->d_embeds), free(r->embeds);
}

static void bert_step(tb_ctx *ctx, bert_run *r, const tfm_input *in, const float *w_h,
                      const float *w_p)
{
    const size_t B = in->batch, T = in->seq, C = r->m.cfg.d_model;
    tb_param_list_zero_grad(&r->params);
    CHECK_OK(*ctx, tfm_forward(ctx, &r->m, &r->a, TB_MODE_TRAINING, NULL, in));
    pooler_forward(ctx, &r->pool, r->a.out, B, T, C);
    memcpy(r->dout, w_h, B * T * C * sizeof(float));
    pooler_backward(ctx, &r->pool, w_p, r->dout, B, T, C);
    CHECK_OK(*ctx, tfm_backward(ctx, &r->m, &r->a, r->dout, r->d_embeds));
}

/* Bitwise equality of the two runs' outputs and gradients. */
static void assert_same_run(const char *what, bert_run *x, bert_run *y, size_t n_out)
{
    ck_assert_msg(memcmp(x->a.out, y->a.out, n_out * sizeof(float)) == 0, "%s: outputs differ",
                  what);
    ck_assert_msg(memcmp(x->d_embeds, y->d_embeds, n_out * sizeof(float)) == 0,
                  "%s: input gradients differ", what);
    for (size_t i = 0; i < x->params.count; i++) {
        const tb_param *p = x->params.items[i].param, *q = y->params.items[i].param;
        ck_assert_msg(memcmp(p->grad, q->grad, p->numel * sizeof(float)) == 0,
                      "%s: gradient of %s differs", what, x->params.items[i].name);
    }
}

START_TEST(test_tfm_vs_bertmodel)
{
    tbt_ref *ref = tbt_ref_load("tfm_bert");
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tbt_reft hid = tbt_ref_get(ref, "hidden");
    const size_t B = hid.shape[0], T = hid.shape[1], C = hid.shape[2];
    size_t n;
    const int32_t *ids = tbt_ref_i32(ref, "ids", &n);
    ck_assert_uint_eq(n, B * T);
    const int32_t *types = tbt_ref_i32(ref, "type_ids", &n);
    const int32_t *mask = tbt_ref_i32(ref, "attention_mask", &n);
    uint8_t *valid = tbt_alloc(B * T);
    size_t n_pad = 0;
    for (size_t i = 0; i < B * T; i++)
        valid[i] = mask[i] != 0, n_pad += mask[i] == 0;
    ck_assert_uint_gt(n_pad, 0); /* the batch really is padded */
    const float *w_h = tbt_ref_get(ref, "w_h").data, *w_p = tbt_ref_get(ref, "w_p").data;
    bert_run r;
    bert_setup(&ctx, &r, ref, B, T);
    const tfm_input in = {B, T, ids, NULL, types, valid};
    bert_step(&ctx, &r, &in, w_h, w_p);
    const double e_h = tbt_assert_close_f32_f64("tfm_bert.hidden", r.a.out, hid.data,
                                tbt_ref_get(ref, "hidden_f64").data, B * T * C, 1e-4, 1e-4);
    const double e_p = tbt_assert_close_f32_f64("tfm_bert.pooled", r.pool.pooled, tbt_ref_get(ref, "pooled").data,
                                tbt_ref_get(ref, "pooled_f64").data, B * C, 1e-4, 1e-4);
    double e_g = 0.0;
    for (size_t i = 0; i < r.params.count; i++) {
        const tb_named_param *np = &r.params.items[i];
        char k32[200], k64[200], lbl[240];
        snprintf(k32, sizeof k32, "g:%s", np->name);
        snprintf(k64, sizeof k64, "g64:%s", np->name);
        tbt_reft g32 = tbt_ref_get(ref, k32), g64 = tbt_ref_get(ref, k64);
        ck_assert_uint_eq(g32.n, np->param->numel);
        snprintf(lbl, sizeof lbl, "tfm_bert.grad.%s", np->name);
        const size_t nl = strlen(np->name);
        if (nl > 8 && strcmp(np->name + nl - 8, "key.bias") == 0) {
            /* Exactly zero (a constant added to every key's score cancels
             * in the softmax): both sides hold rounding noise only, so the
             * check is that it is noise against the query bias's gradient. */
            char qb[200];
            snprintf(qb, sizeof qb, "g64:%.*squery.bias", (int)(nl - 8), np->name);
            const double qscale = tbt_max_abs_f(tbt_ref_get(ref, qb).data, g32.n);
            ck_assert_msg(qscale > 0 && tbt_max_abs_f(np->param->grad, g32.n) <= 1e-5 * qscale &&
                              tbt_max_abs_f(g64.data, g64.n) <= 1e-9 * qscale,
                          "%s: not ~0 against the query bias's %g", np->name, qscale);
            continue;
        }
        e_g = fmax(e_g, tbt_assert_close_f32_f64(lbl, np->param->grad, g32.data, g64.data, g32.n, 1e-4, 1e-4));
    }
    /* Input embeddings instead of ids: the rows wte gives, so the same
     * output bit for bit, and torch's gradient w.r.t. inputs_embeds. */
    bert_run e;
    bert_setup(&ctx, &e, ref, B, T);
    for (size_t i = 0; i < B * T; i++)
        memcpy(e.embeds + i * C, e.m.wte.weight.value + (size_t)ids[i] * C, C * sizeof(float));
    const tfm_input ein = {B, T, NULL, e.embeds, types, valid};
    bert_step(&ctx, &e, &ein, w_h, w_p);
    ck_assert_msg(memcmp(e.a.out, r.a.out, B * T * C * sizeof(float)) == 0,
                  "embeddings in: the output differs from the ids path");
    const double e_d = tbt_assert_close_f32_f64("tfm_bert.d_embeds", e.d_embeds, tbt_ref_get(ref, "d_embeds").data,
                                tbt_ref_get(ref, "d_embeds_f64").data, B * T * C, 1e-4, 1e-4);
    ck_assert_msg(memcmp(e.d_embeds, r.d_embeds, B * T * C * sizeof(float)) == 0,
                  "the input-embedding gradient differs between the ids and embeddings paths");
    /* With embeddings in, wte receives no gradient; with ids it received
     * exactly d_embeds scattered to the ids' rows (checked by the oracle). */
    ck_assert(tbt_max_abs_f(e.m.wte.weight.grad, e.m.wte.weight.numel) == 0.0);
    /* One thread: the same bits. */
    bert_run one;
    tb_ctx ctx1;
    tbt_ctx_init(&ctx1, 1);
    bert_setup(&ctx1, &one, ref, B, T);
    bert_step(&ctx1, &one, &in, w_h, w_p);
    assert_same_run("1 vs 2 threads", &one, &r, B * T * C);
    printf("  check   tfm as BertModel        hidden %.2e, pooled %.2e, %zu gradients %.2e, "
           "d_embeds %.2e (of each tensor's scale, vs float64); %zu of %zu positions padding\n",
           e_h, e_p, r.params.count, e_g, e_d, n_pad, B * T);
    bert_free(&one);
    bert_free(&e);
    bert_free(&r);
    free(valid);
    tbt_ref_free(ref);
}
END_TEST

/* ---- the adapter indirection ----------------------------------------------------------------- */

typedef struct counting_adapter {
    tfm_proj *proj; /* the projection it took over */
    int *forwards, *backwards;
} counting_adapter;

static tb_status counting_forward(tb_ctx *ctx, void *self, tb_mode mode, tb_rng *rng,
                                  const tb_tensor *x, tb_tensor *y)
{
    (void)mode, (void)rng;
    counting_adapter *a = self;
    (*a->forwards)++;
    return tb_linear_forward(ctx, &a->proj->linear, x, y);
}

static tb_status counting_backward(tb_ctx *ctx, void *self, const tb_tensor *x,
                                   const tb_tensor *dy, tb_tensor *dx)
{
    counting_adapter *a = self;
    (*a->backwards)++;
    return tb_linear_backward(ctx, &a->proj->linear, x, dy, dx);
}

static const tfm_proj_ops counting_ops = {counting_forward, counting_backward};

static tfm_config small_config(tfm_norm_place place, tfm_norm_kind kind, tfm_qkv_form qkv,
                               int causal)
{
    tfm_config c = bert_config(2, 3, 12, 19, 23, 3, 9);
    c.norm_place = place;
    c.norm_kind = kind;
    c.qkv = qkv;
    c.causal = causal;
    c.norm_eps = 1e-5f;
    c.bn_momentum = 0.1f;
    c.init_std = 0.3f; /* large weights: every path carries a visible gradient */
    /* GPT-2's names: no token types, no embedding norm, a final norm;
     * BERT's: the opposite. */
    const int fused = qkv == TFM_QKV_FUSED;
    c.names = fused ? &tfm_names_gpt2 : &tfm_names_bert;
    c.final_norm = fused, c.embed_norm = !fused;
    if (fused)
        c.type_vocab_size = 0, c.has_pad_token = 0;
    return c;
}

START_TEST(test_tfm_every_projection_goes_through_the_indirection)
{
    for (int sep = 0; sep < 2; sep++) {
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 2);
        const tfm_config c = small_config(sep ? TFM_POST_NORM : TFM_PRE_NORM, TFM_LAYERNORM,
                                          sep ? TFM_QKV_SEPARATE : TFM_QKV_FUSED, !sep);
        tfm m, plain;
        tb_rng rng, rng2;
        tb_rng_init(&rng, 3);
        tb_rng_init(&rng2, 3);
        CHECK_OK(ctx, tfm_init(&ctx, &m, &c, &rng));
        CHECK_OK(ctx, tfm_init(&ctx, &plain, &c, &rng2));
        int fw = 0, bw = 0, n_proj = 0;
        counting_adapter ad[2 * 6];
        for (size_t l = 0; l < c.n_layer; l++) {
            tfm_layer *L = &m.layers[l];
            tfm_proj *ps[6] = {&L->attn_out, &L->fc_in, &L->fc_out,
                               sep ? &L->q : &L->qkv, &L->k, &L->v};
            for (int i = 0; i < (sep ? 6 : 4); i++) {
                ad[n_proj] = (counting_adapter){ps[i], &fw, &bw};
                ps[i]->ops = &counting_ops, ps[i]->self = &ad[n_proj++];
            }
        }
        const size_t B = 2, T = 5, C = c.d_model;
        int32_t ids[10];
        for (int i = 0; i < 10; i++)
            ids[i] = (int32_t)((i * 7) % 23);
        tfm_acts a, pa;
        CHECK_OK(ctx, tfm_acts_init(&ctx, &a, &m, B, T));
        CHECK_OK(ctx, tfm_acts_init(&ctx, &pa, &plain, B, T));
        const tfm_input in = {B, T, ids, NULL, NULL, NULL};
        CHECK_OK(ctx, tfm_forward(&ctx, &m, &a, TB_MODE_TRAINING, NULL, &in));
        CHECK_OK(ctx, tfm_forward(&ctx, &plain, &pa, TB_MODE_TRAINING, NULL, &in));
        ck_assert_int_eq(fw, n_proj);
        ck_assert_msg(memcmp(a.out, pa.out, B * T * C * sizeof(float)) == 0,
                      "an adapter that computes the Linear changes the output");
        float *dout = tbt_alloc(B * T * C * sizeof(float));
        for (size_t i = 0; i < B * T * C; i++)
            dout[i] = (float)((int)(i % 7) - 3) * 0.25f;
        CHECK_OK(ctx, tfm_backward(&ctx, &m, &a, dout, NULL));
        ck_assert_int_eq(bw, n_proj);
        if (!sep) { /* the decoder's call sites too */
            tfm_decoder d;
            CHECK_OK(ctx, tfm_decoder_init(&ctx, &d, &m, 1, 8, 4));
            fw = 0;
            CHECK_OK(ctx, tfm_decoder_step(&ctx, &m, &d, ids, 3));
            ck_assert_int_eq(fw, n_proj);
            tfm_decoder_free(&d);
        }
        free(dout);
        tfm_acts_free(&a);
        tfm_acts_free(&pa);
        tfm_free(&m);
        tfm_free(&plain);
    }
}
END_TEST

/* ---- finite differences through the variants no oracle covers --------------------------------- */

typedef struct fd_case {
    tb_ctx ctx;
    tfm m;
    tfm_acts a;
    tfm_input in;
    const float *w;
} fd_case;

static double fd_loss(void *user)
{
    fd_case *f = user;
    CHECK_OK(f->ctx, tfm_forward(&f->ctx, &f->m, &f->a, TB_MODE_TRAINING, NULL, &f->in));
    return tbt_dot(f->w, f->a.out, f->in.batch * f->in.seq * f->m.cfg.d_model);
}

START_TEST(test_tfm_variants_by_finite_differences)
{
    static const struct {
        const char *name;
        tfm_norm_place place;
        tfm_norm_kind kind;
        tfm_qkv_form qkv;
        int causal;
        int quick_gelu; /* CLIP's MLP activation instead of small_config's */
    } v[] = {
        {"post-norm fused causal", TFM_POST_NORM, TFM_LAYERNORM, TFM_QKV_FUSED, 1, 0},
        {"pre-norm separate RMSNorm", TFM_PRE_NORM, TFM_RMSNORM, TFM_QKV_SEPARATE, 0, 0},
        {"pre-norm separate BatchNorm", TFM_PRE_NORM, TFM_BATCHNORM, TFM_QKV_SEPARATE, 0, 0},
        {"post-norm separate BatchNorm causal", TFM_POST_NORM, TFM_BATCHNORM, TFM_QKV_SEPARATE, 1,
         0},
        /* CLIP's text tower: pre-LN, separate q/k/v, causal, quick GELU */
        {"pre-norm separate causal quick GELU", TFM_PRE_NORM, TFM_LAYERNORM, TFM_QKV_SEPARATE, 1,
         1},
    };
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
        fd_case f;
        tbt_ctx_init(&f.ctx, 2);
        tfm_config c = small_config(v[k].place, v[k].kind, v[k].qkv, v[k].causal);
        if (v[k].quick_gelu)
            c.gelu = TB_GELU_QUICK;
        tb_rng rng;
        tb_rng_init(&rng, 11 + k);
        CHECK_OK(f.ctx, tfm_init(&f.ctx, &f.m, &c, &rng));
        const size_t B = 2, T = 5, C = c.d_model, R = B * T;
        float *emb = tbt_alloc(R * C * sizeof(float)), *w = tbt_alloc(R * C * sizeof(float));
        float *demb = tbt_alloc(R * C * sizeof(float));
        int32_t types[10];
        uint8_t valid[10] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0}; /* the second row is padded */
        CHECK_OK(f.ctx, tb_rng_fill_normal(&f.ctx, &rng, emb, R * C, 0.0f, 1.0f));
        CHECK_OK(f.ctx, tb_rng_fill_normal(&f.ctx, &rng, w, R * C, 0.0f, 1.0f));
        for (size_t i = 0; i < R; i++)
            types[i] = (int32_t)(i % 3);
        for (size_t i = 8; i < R; i++) /* padded rows' outputs do not count */
            memset(w + i * C, 0, C * sizeof(float));
        CHECK_OK(f.ctx, tfm_acts_init(&f.ctx, &f.a, &f.m, B, T));
        f.in = (tfm_input){B, T, NULL, emb, c.type_vocab_size ? types : NULL, valid};
        f.w = w;
        tb_param_list pl;
        CHECK_OK(f.ctx, tb_param_list_init(&f.ctx, &pl));
        CHECK_OK(f.ctx, tfm_params(&f.ctx, &f.m, "", &pl));
        tb_param_list_zero_grad(&pl);
        fd_loss(&f);
        CHECK_OK(f.ctx, tfm_backward(&f.ctx, &f.m, &f.a, w, demb));
        char lbl[160];
        snprintf(lbl, sizeof lbl, "tfm %s: d_embeds", v[k].name);
        tbt_gradcheck(lbl, emb, R * C, demb, fd_loss, &f, 1e-2f, 2e-2, 2e-3, 40);
        for (size_t i = 0; i < pl.count; i++) {
            tb_param *p = pl.items[i].param;
            const char *nm = pl.items[i].name;
            const size_t nl = strlen(nm);
            /* Not checked here: tables the input does not reach (the token
             * table: embeddings came in; positions past T: their rows below),
             * and the key bias, whose gradient is exactly zero (a constant
             * added to every score cancels in the softmax). */
            if (!p->trainable || !p->grad || strstr(nm, "wte") || strstr(nm, "word_") ||
                strstr(nm, "wpe") || strstr(nm, "position") ||
                (nl > 8 && strcmp(nm + nl - 8, "key.bias") == 0))
                continue;
            /* With BatchNorm after each residual sum (post-norm), a bias that
             * adds the same vector to every row before it (the value bias:
             * attention weights sum to 1; attn_out's and fc_out's) is
             * removed again with the batch mean: its gradient is exactly
             * zero, which is checked instead. */
            if (c.norm_kind == TFM_BATCHNORM && c.norm_place == TFM_POST_NORM &&
                (strstr(nm, "value.bias") || strstr(nm, "output.dense.bias"))) {
                ck_assert_msg(tbt_max_abs_f(p->grad, p->numel) <= 1e-4, "%s: %s not ~0 (%g)",
                              v[k].name, nm, tbt_max_abs_f(p->grad, p->numel));
                continue;
            }
            snprintf(lbl, sizeof lbl, "tfm %s: %s", v[k].name, pl.items[i].name);
            tbt_gradcheck(lbl, p->value, p->numel, p->grad, fd_loss, &f, 1e-2f, 2e-2, 2e-3, 8);
        }
        tb_param *pos = pl.items[1].param; /* wpe: the rows of positions 0..T-1 */
        snprintf(lbl, sizeof lbl, "tfm %s: %s[0..T)", v[k].name, pl.items[1].name);
        tbt_gradcheck(lbl, pos->value, T * C, pos->grad, fd_loss, &f, 1e-2f, 2e-2, 2e-3, 12);
        tb_param_list_free(&pl);
        tfm_acts_free(&f.a);
        tfm_free(&f.m);
        free(emb), free(w), free(demb);
    }
}
END_TEST

/* ---- inference-only activations ------------------------------------------------------------ */

/* tfm_acts_init_inference(): the same output, bit for bit, as the full
 * activations in TB_MODE_INFERENCE, for 1, 2 and 3 layers (the stream's
 * two buffers alternate), every norm place and kind, fused and separate
 * QKV, causal and padded, with a deep prompt, a batch smaller than the
 * capacity, and twice in a row; a training forward and backward refused;
 * the size call agrees with what init allocates, and it is smaller. */
START_TEST(test_tfm_inference_acts)
{
    static const struct {
        tfm_norm_place place;
        tfm_norm_kind kind;
        tfm_qkv_form qkv;
        int causal, prefix;
    } v[] = {
        {TFM_POST_NORM, TFM_LAYERNORM, TFM_QKV_SEPARATE, 0, 0}, /* BERT */
        {TFM_PRE_NORM, TFM_LAYERNORM, TFM_QKV_FUSED, 1, 0},     /* GPT-2 */
        {TFM_PRE_NORM, TFM_RMSNORM, TFM_QKV_SEPARATE, 0, 1},
        {TFM_POST_NORM, TFM_BATCHNORM, TFM_QKV_FUSED, 1, 1},
    };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++)
        for (size_t L = 1; L <= 3; L++) {
            tfm_config c = small_config(v[k].place, v[k].kind, v[k].qkv, v[k].causal);
            c.n_layer = L;
            tfm m;
            tb_rng rng;
            tb_rng_init(&rng, 40 + k * 3 + L);
            CHECK_OK(ctx, tfm_init(&ctx, &m, &c, &rng));
            const size_t B = 3, T = 7, C = c.d_model, n = 2;
            float *pk = tbt_alloc(L * n * C * sizeof(float)), *pv = tbt_alloc(L * n * C * sizeof(float));
            float *kp[3], *vp[3];
            CHECK_OK(ctx, tb_rng_fill_normal(&ctx, &rng, pk, L * n * C, 0.0f, 1.0f));
            CHECK_OK(ctx, tb_rng_fill_normal(&ctx, &rng, pv, L * n * C, 0.0f, 1.0f));
            for (size_t l = 0; l < L; l++)
                kp[l] = pk + l * n * C, vp[l] = pv + l * n * C;
            const tfm_prefix pf = {n, C, 0, kp, vp, NULL, NULL};
            if (v[k].prefix)
                CHECK_OK(ctx, tfm_set_prefix(&ctx, &m, &pf));
            tfm_acts full, inf;
            CHECK_OK(ctx, tfm_acts_init(&ctx, &full, &m, B, T));
            CHECK_OK(ctx, tfm_acts_init_inference(&ctx, &inf, &m, B, T));
            size_t bytes;
            CHECK_OK(ctx, tfm_acts_size_inference(&ctx, &c, B, T, v[k].prefix ? n : 0, &bytes));
            ck_assert_uint_eq(bytes, inf.bytes);
            ck_assert_uint_lt(inf.bytes, full.bytes);
            int32_t ids[21], types[21];
            uint8_t valid[21];
            for (size_t i = 0; i < B * T; i++) {
                ids[i] = (int32_t)((i * 7 + 3) % c.vocab_size);
                types[i] = (int32_t)(i % 2);
                valid[i] = (uint8_t)(i % T < T - (i / T)); /* row b has b padding tokens */
            }
            for (size_t rep = 0; rep < 2; rep++) {
                const size_t b = rep ? B - 1 : B; /* then a smaller batch */
                const tfm_input in = {b, T, ids, NULL, c.type_vocab_size ? types : NULL, valid};
                CHECK_OK(ctx, tfm_forward(&ctx, &m, &full, TB_MODE_INFERENCE, NULL, &in));
                CHECK_OK(ctx, tfm_forward(&ctx, &m, &inf, TB_MODE_INFERENCE, NULL, &in));
                ck_assert_msg(memcmp(full.out, inf.out, b * T * C * sizeof(float)) == 0,
                              "variant %zu, %zu layers, batch %zu: inference-only activations "
                              "give another output",
                              k, L, b);
                ck_assert_msg(tbt_max_abs_f(inf.out, b * T * C) > 0.1, "output all ~0");
            }
            const tfm_input in = {B, T, ids, NULL, NULL, valid};
            ck_assert_int_eq(tfm_forward(&ctx, &m, &inf, TB_MODE_TRAINING, &rng, &in),
                             TB_ERR_INVALID_ARG);
            ck_assert_int_eq(tfm_backward(&ctx, &m, &inf, inf.out, NULL), TB_ERR_INVALID_ARG);
            tfm_acts_free(&full);
            tfm_acts_free(&inf);
            tfm_free(&m);
            free(pk), free(pv);
        }
}
END_TEST

/* ---- configurations -------------------------------------------------------------------------- */

START_TEST(test_tfm_config_check_and_specs)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tfm_config c = bert_config(3, 5, 80, 200, 301, 2, 40);
    CHECK_OK(ctx, tfm_config_check(&ctx, &c));
    c.gelu = TB_GELU_QUICK; /* CLIP's; one past the last form is refused */
    CHECK_OK(ctx, tfm_config_check(&ctx, &c));
    c.gelu = (tb_gelu_approx)(TB_GELU_QUICK + 1);
    ck_assert_int_eq(tfm_config_check(&ctx, &c), TB_ERR_INVALID_ARG);
    c.gelu = TB_GELU_EXACT;
    tfm_param_spec *specs;
    size_t n;
    CHECK_OK(ctx, tfm_param_specs(&ctx, &c, "bert.", &specs, &n));
    ck_assert_uint_eq(n, 5 + 3 * 16); /* 3 tables + LayerNorm; 16 tensors per layer */
    ck_assert_str_eq(specs[0].name, "bert.embeddings.word_embeddings.weight");
    ck_assert_uint_eq(specs[0].shape[0], 301);
    ck_assert_str_eq(specs[5].name, "bert.encoder.layer.0.attention.self.query.weight");
    ck_assert_uint_eq(specs[5].shape[0], 80);
    ck_assert_str_eq(specs[5 + 10].name, "bert.encoder.layer.0.intermediate.dense.weight");
    ck_assert_uint_eq(specs[5 + 10].shape[0], 200); /* (out, in) */
    ck_assert_uint_eq(specs[5 + 10].shape[1], 80);
    /* Looked up one at a time, without allocating, the same specs. */
    ck_assert_uint_eq(tfm_param_spec_count(&c), n);
    for (size_t i = 0; i < n; i++) {
        tfm_param_spec one, at;
        ck_assert(tfm_param_spec_of(&c, "bert.", specs[i].name, &one));
        ck_assert(tfm_param_spec_at(&c, "bert.", i, &at));
        ck_assert_str_eq(one.name, specs[i].name);
        ck_assert_str_eq(at.name, specs[i].name);
        ck_assert(one.ndim == specs[i].ndim && at.ndim == specs[i].ndim);
        ck_assert(one.shape[0] == specs[i].shape[0] && one.shape[1] == specs[i].shape[1]);
        ck_assert(at.shape[0] == specs[i].shape[0] && at.shape[1] == specs[i].shape[1]);
    }
    tfm_param_spec nospec;
    ck_assert(!tfm_param_spec_at(&c, "bert.", n, &nospec));
    static const char *const not_params[] = {
        "bert.encoder.layer.3.output.dense.weight",  /* layer 3 of 3 */
        "bert.encoder.layer.01.output.dense.weight", /* not canonical */
        "bert.encoder.layer..output.dense.weight",   "encoder.layer.0.output.dense.weight",
        "bert.encoder.layer.0.output.dense",         "bert.pooler.dense.weight",
        "bert.encoder.layer.0.output.dense.weight.x", "bert.encoder.layer.99999999999999999999.x",
    };
    for (size_t i = 0; i < sizeof not_params / sizeof not_params[0]; i++)
        ck_assert_msg(!tfm_param_spec_of(&c, "bert.", not_params[i], &nospec), "%s",
                      not_params[i]);
    /* The specs are what tfm_params() lists. */
    tfm m;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(ctx, tfm_init(&ctx, &m, &c, &rng));
    tb_param_list pl;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &pl));
    CHECK_OK(ctx, tfm_params(&ctx, &m, "bert.", &pl));
    ck_assert_uint_eq(pl.count, n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_str_eq(pl.items[i].name, specs[i].name);
        ck_assert_uint_eq(pl.items[i].param->ndim, specs[i].ndim);
        for (size_t d = 0; d < specs[i].ndim; d++)
            ck_assert_uint_eq(pl.items[i].param->shape[d], specs[i].shape[d]);
    }
    tb_param_list_free(&pl);
    tfm_free(&m);
    free(specs);
    /* Refusals, each naming what is wrong. */
    struct {
        const char *field;
        tfm_config c;
    } bad[8];
    for (int i = 0; i < 8; i++)
        bad[i].c = c;
    bad[0].field = "n_head", bad[0].c.n_head = 7;          /* 80 % 7 != 0 */
    bad[1].field = "n_layer", bad[1].c.n_layer = 0;
    bad[2].field = "dropout", bad[2].c.hidden_dropout = 1.0f;
    bad[3].field = "norm_eps", bad[3].c.norm_eps = 0.0f;
    bad[4].field = "names", bad[4].c.names = &tfm_names_gpt2; /* no q/k/v or token types */
    bad[5].field = "max_positions", bad[5].c.max_positions = TFM_MAX_POSITIONS + 1;
    bad[6].field = "unknown", bad[6].c.norm_kind = (tfm_norm_kind)9;
    bad[7].field = "d_ff", bad[7].c.d_ff = 0;
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(tfm_config_check(&ctx, &bad[i].c), TB_ERR_INVALID_ARG);
        ck_assert_msg(strstr(tb_ctx_error(&ctx), bad[i].field), "case %d: '%s' lacks '%s'", i,
                      tb_ctx_error(&ctx), bad[i].field);
        ck_assert_int_eq(tfm_init(&ctx, &m, &bad[i].c, &rng), TB_ERR_INVALID_ARG);
    }
    /* Inputs: ids and embeddings both or neither; a batch too large. */
    CHECK_OK(ctx, tfm_init(&ctx, &m, &c, &rng));
    tfm_acts a;
    CHECK_OK(ctx, tfm_acts_init(&ctx, &a, &m, 2, 4));
    int32_t ids[8] = {0};
    float emb[8 * 80] = {0};
    tfm_input both = {2, 4, ids, emb, NULL, NULL}, none = {2, 4, NULL, NULL, NULL, NULL};
    tfm_input big = {3, 4, ids, NULL, NULL, NULL};
    ck_assert_int_eq(tfm_forward(&ctx, &m, &a, TB_MODE_INFERENCE, NULL, &both), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tfm_forward(&ctx, &m, &a, TB_MODE_INFERENCE, NULL, &none), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tfm_forward(&ctx, &m, &a, TB_MODE_INFERENCE, NULL, &big), TB_ERR_SHAPE);
    ck_assert_int_eq(tfm_backward(&ctx, &m, &a, emb, NULL), TB_ERR_STATE); /* no forward yet */
    tfm_decoder d;
    ck_assert_int_eq(tfm_decoder_init(&ctx, &d, &m, 1, 4, 2), TB_ERR_INVALID_ARG); /* not causal */
    tfm_decoder_free(&d);
    tfm_acts_free(&a);
    tfm_free(&m);
}
END_TEST

Suite *suite_tfm(void)
{
    Suite *s = suite_create("tfm");
    TCase *tc = tcase_create("tfm");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_tfm_vs_bertmodel);
    tcase_add_test(tc, test_tfm_every_projection_goes_through_the_indirection);
    tcase_add_test(tc, test_tfm_variants_by_finite_differences);
    tcase_add_test(tc, test_tfm_config_check_and_specs);
    tcase_add_test(tc, test_tfm_inference_acts);
    suite_add_tcase(s, tc);
    return s;
}
