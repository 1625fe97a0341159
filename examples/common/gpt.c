/* GPT-2-style model wiring for the examples (gpt.h). */
#include "gpt.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_text.h"
#include "ex_try.h"

#define LN_EPS 1e-5f
#define GELU TB_GELU_TANH /* GPT-2's "gelu_new" */

/* The message in ctx, then s (tb_ctx_set_error, under a short name for this
 * file's many messages). */
#define fail tb_ctx_set_error

/* The integer fields of a configuration: their metadata keys (which also
 * name them in messages) and limits. */
typedef struct config_field {
    const char *key;
    size_t offset, max;
} config_field;

static const config_field config_fields[5] = {
    {"gpt.n_layer", offsetof(gpt_config, n_layer), GPT_MAX_LAYER},
    {"gpt.n_head", offsetof(gpt_config, n_head), GPT_MAX_EMBD},
    {"gpt.n_embd", offsetof(gpt_config, n_embd), GPT_MAX_EMBD},
    {"gpt.block_size", offsetof(gpt_config, block_size), GPT_MAX_CONTEXT},
    {"gpt.vocab_size", offsetof(gpt_config, vocab_size), GPT_MAX_VOCAB},
};
#define DROPOUT_KEY "gpt.dropout"

static size_t *field_of(gpt_config *c, const config_field *f)
{
    return (size_t *)(void *)((char *)c + f->offset);
}

static size_t field_value(const gpt_config *c, const config_field *f)
{
    return *(const size_t *)(const void *)((const char *)c + f->offset);
}

tb_status gpt_param_count(const gpt_config *c, size_t *count)
{
    const size_t C = c->n_embd;
    size_t c2, layer, all, vt, t;
    /* L (12 C^2 + 13 C) + (V + T) C + 2 C */
    if (!ex_mul_size(C, C, &c2) || !ex_mul_size(c2, 12, &layer) || !ex_mul_size(C, 13, &t) ||
        !ex_add_size(layer, t, &layer) || !ex_mul_size(layer, c->n_layer, &all) ||
        !ex_add_size(c->vocab_size, c->block_size, &vt) || !ex_mul_size(vt, C, &vt) ||
        !ex_add_size(all, vt, &all) || !ex_mul_size(C, 2, &t) || !ex_add_size(all, t, &all))
        return TB_ERR_OVERFLOW;
    *count = all;
    return TB_OK;
}

tb_status gpt_config_check(tb_ctx *ctx, const gpt_config *c)
{
    if (!ctx || !c)
        return TB_ERR_NULL_ARG;
    for (size_t i = 0; i < sizeof config_fields / sizeof config_fields[0]; i++) {
        const size_t v = field_value(c, &config_fields[i]);
        if (v < 1 || v > config_fields[i].max)
            return fail(ctx, TB_ERR_INVALID_ARG, "gpt: %s = %zu is outside 1..%zu",
                        config_fields[i].key, v, config_fields[i].max);
    }
    if (c->n_embd % c->n_head != 0)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "gpt: gpt.n_embd = %zu is not a multiple of gpt.n_head = %zu", c->n_embd,
                    c->n_head);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return fail(ctx, TB_ERR_INVALID_ARG, "gpt: " DROPOUT_KEY " = %g is outside [0, 1)",
                    (double)c->dropout);
    size_t params = 0, act = 0;
    if (gpt_param_count(c, &params) != TB_OK || params > GPT_MAX_PARAMS)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "gpt: %zu layers of width %zu, vocabulary %zu, context %zu: %s parameters, "
                    "more than %zu",
                    c->n_layer, c->n_embd, c->vocab_size, c->block_size,
                    params ? "too many" : "an overflowing count of", GPT_MAX_PARAMS);
    if (gpt_acts_size(ctx, c, 1, c->block_size, &act) != TB_OK || act > GPT_MAX_SEQ_ACT_BYTES)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "gpt: %zu layers of width %zu, vocabulary %zu, context %zu: training one "
                    "sequence of the whole context needs more than %zu bytes of activations",
                    c->n_layer, c->n_embd, c->vocab_size, c->block_size, GPT_MAX_SEQ_ACT_BYTES);
    return TB_OK;
}

/* ---- configurations in checkpoint files ------------------------------------ */

void gpt_config_meta(const gpt_config *cfg, gpt_config_text *text,
                     tb_st_meta meta[GPT_CONFIG_N_META])
{
    for (size_t i = 0; i < 5; i++) {
        snprintf(text->value[i], sizeof text->value[i], "%zu", field_value(cfg, &config_fields[i]));
        meta[i].key = config_fields[i].key;
        meta[i].value = text->value[i];
    }
    snprintf(text->value[5], sizeof text->value[5], "%.17g", (double)cfg->dropout);
    meta[5].key = DROPOUT_KEY;
    meta[5].value = text->value[5];
}

/* The configuration's metadata, parsed strictly (ranges are checked later). */
static tb_status config_from_meta(tb_ctx *ctx, const tb_st_file *f, gpt_config *c)
{
    for (size_t i = 0; i < sizeof config_fields / sizeof config_fields[0]; i++) {
        const char *key = config_fields[i].key, *v = tb_st_meta_get(f, key);
        uint64_t u;
        if (!v)
            return fail(ctx, TB_ERR_FORMAT,
                        "gpt: no '%s' metadata: not a checkpoint of this model", key);
        if (!ex_parse_u64(v, &u))
            return fail(ctx, TB_ERR_FORMAT,
                        "gpt: %s = '%.40s' is not a decimal integer (digits only, below 2^64)",
                        key, v);
        if (u > config_fields[i].max)
            return fail(ctx, TB_ERR_FORMAT, "gpt: %s = %.40s is outside 1..%zu", key, v,
                        config_fields[i].max);
        *field_of(c, &config_fields[i]) = (size_t)u;
    }
    const char *v = tb_st_meta_get(f, DROPOUT_KEY);
    double p;
    if (!v)
        return fail(ctx, TB_ERR_FORMAT,
                    "gpt: no '" DROPOUT_KEY "' metadata: not a checkpoint of this model");
    if (!ex_parse_real(v, &p))
        return fail(ctx, TB_ERR_FORMAT, "gpt: " DROPOUT_KEY " = '%.40s' is not a decimal number",
                    v);
    if (!(p >= 0.0 && p < 1.0))
        return fail(ctx, TB_ERR_FORMAT, "gpt: " DROPOUT_KEY " = %.40s is outside [0, 1)", v);
    c->dropout = (float)p;
    return TB_OK;
}

static int float_dtype(tb_st_dtype d)
{
    return d == TB_ST_F32 || d == TB_ST_F16 || d == TB_ST_BF16 || d == TB_ST_F64;
}

/* Kinds of tensor a checkpoint holds: the parameter itself and the Adam
 * state tb_checkpoint_save() writes for it. */
#define N_KINDS 4
static const char *const kind_prefix[N_KINDS] = {"", "optimizer.m.", "optimizer.v.",
                                                 "optimizer.vmax."};

static int kind_of(const char *name, const char **param)
{
    for (int k = N_KINDS - 1; k > 0; k--) {
        const size_t n = strlen(kind_prefix[k]);
        if (strncmp(name, kind_prefix[k], n) == 0) {
            *param = name + n;
            return k;
        }
    }
    *param = name;
    return 0;
}

/* The first tensor of a kind the configuration implies and the file lacks
 * (in parameter order). */
static tb_status name_missing(tb_ctx *ctx, const tb_st_file *f, const gpt_config *c,
                              const tfm_config *tc, size_t n, int kind, size_t have)
{
    char full[TB_PARAM_NAME_MAX + 16];
    tfm_param_spec sp;
    for (size_t k = 0; tfm_param_spec_at(tc, "", k, &sp); k++) {
        snprintf(full, sizeof full, "%s%s", kind_prefix[kind], sp.name);
        if (!tb_st_find(f, full))
            return fail(ctx, TB_ERR_NOT_FOUND,
                        "gpt: the configuration (%zu layers) implies tensor '%s', which the "
                        "file lacks (%zu of %zu such tensors present)",
                        c->n_layer, full, have, n);
    }
    return fail(ctx, TB_ERR_NOT_FOUND, "gpt: %zu of %zu tensors '%s*' present", have, n,
                kind_prefix[kind]);
}

/* One file tensor: a parameter of the configuration (or its Adam state)
 * with the parameter's shape, in a float dtype. */
static tb_status check_tensor(tb_ctx *ctx, const tb_st_tensor *t, const gpt_config *c,
                              const tfm_config *tc, size_t count[N_KINDS])
{
    const char *pname;
    const int kind = kind_of(t->name, &pname);
    tfm_param_spec sp;
    if (!tfm_param_spec_of(tc, "", pname, &sp))
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "gpt: unexpected tensor '%.80s': not part of a model of %zu layers", t->name,
                    c->n_layer);
    if (t->ndim != sp.ndim || t->shape[0] != sp.shape[0] ||
        (sp.ndim == 2 && t->shape[1] != sp.shape[1])) {
        char got[64] = "(";
        for (size_t d = 0; d < t->ndim && strlen(got) < 40; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%zu", d ? ", " : "",
                     t->shape[d]);
        snprintf(got + strlen(got), sizeof got - strlen(got), ")");
        return sp.ndim == 1 ? fail(ctx, TB_ERR_SHAPE,
                                   "gpt: tensor '%.80s' has shape %s; the configuration "
                                   "implies (%zu)",
                                   t->name, got, sp.shape[0])
                            : fail(ctx, TB_ERR_SHAPE,
                                   "gpt: tensor '%.80s' has shape %s; the configuration "
                                   "implies (%zu, %zu)",
                                   t->name, got, sp.shape[0], sp.shape[1]);
    }
    if (!float_dtype(t->dtype))
        return fail(ctx, TB_ERR_UNSUPPORTED, "gpt: tensor '%.80s' is not F32, F16, BF16 or F64",
                    t->name);
    count[kind]++;
    return TB_OK;
}

/* The file's tensors are exactly the parameters of c, each with its shape,
 * and optionally the Adam state of all of them. Allocates nothing: each
 * name is looked up in the stack's name table (tfm_param_spec_of()). */
static tb_status check_tensors(tb_ctx *ctx, const tb_st_file *f, const gpt_config *c)
{
    const tfm_config tc = gpt_stack_config(c);
    size_t count[N_KINDS] = {0, 0, 0, 0};
    const size_t n = tfm_param_spec_count(&tc);
    for (size_t i = 0; i < f->count; i++)
        TRY(check_tensor(ctx, &f->tensors[i], c, &tc, count));
    /* Names are unique (the parser refuses duplicates) and each maps to a
     * parameter, so a full count means every one is there. */
    if (count[0] != n)
        return name_missing(ctx, f, c, &tc, n, 0, count[0]);
    const int with_state = count[1] || count[2] || count[3];
    for (int k = 1; with_state && k < N_KINDS; k++)
        if (count[k] != n && !(k == 3 && count[k] == 0)) /* vmax only with AMSGrad */
            return name_missing(ctx, f, c, &tc, n, k, count[k]);
    return TB_OK;
}

tb_status gpt_config_from_checkpoint(tb_ctx *ctx, const tb_st_file *f, gpt_config *cfg)
{
    if (!ctx || !f || !cfg)
        return TB_ERR_NULL_ARG;
    gpt_config c;
    memset(&c, 0, sizeof c);
    TRY(config_from_meta(ctx, f, &c));
    const tb_status s = gpt_config_check(ctx, &c);
    if (s != TB_OK) /* a configuration out of range is a bad file here */
        return s == TB_ERR_INVALID_ARG ? TB_ERR_FORMAT : s;
    TRY(check_tensors(ctx, f, &c));
    *cfg = c;
    return TB_OK;
}

tfm_config gpt_stack_config(const gpt_config *cfg)
{
    tfm_config t;
    memset(&t, 0, sizeof t);
    t.n_layer = cfg->n_layer;
    t.n_head = cfg->n_head;
    t.d_model = cfg->n_embd;
    t.d_ff = 4 * cfg->n_embd;
    t.vocab_size = cfg->vocab_size;
    t.max_positions = cfg->block_size;
    t.norm_place = TFM_PRE_NORM;
    t.norm_kind = TFM_LAYERNORM;
    t.final_norm = 1;
    t.norm_eps = LN_EPS;
    t.causal = 1;
    t.qkv = TFM_QKV_FUSED;
    t.layout = TB_LINEAR_IN_OUT;
    t.gelu = GELU;
    t.hidden_dropout = cfg->dropout;
    t.attn_dropout = cfg->dropout;
    t.init_std = 0.02f;
    t.scale_residual_init = 1;
    t.names = &tfm_names_gpt2;
    return t;
}

tb_status gpt_init(tb_ctx *ctx, gpt *m, const gpt_config *cfg, tb_rng *rng)
{
    memset(m, 0, sizeof *m);
    TRY(gpt_config_check(ctx, cfg));
    m->cfg = *cfg;
    const tfm_config tc = gpt_stack_config(cfg);
    TRY(tfm_init(ctx, &m->t, &tc, rng));
    TRY(tb_linear_view(ctx, &m->lm_head, &m->t.wte.weight, NULL, TB_LINEAR_OUT_IN));
    TRY(tb_param_list_init(ctx, &m->params));
    return gpt_param_list(ctx, m, "", &m->params);
}

void gpt_free(gpt *m)
{
    if (!m)
        return;
    tb_param_list_free(&m->params);
    tfm_free(&m->t);
    tb_linear_free(&m->lm_head);
    memset(m, 0, sizeof *m);
}

tb_status gpt_param_list(tb_ctx *ctx, gpt *m, const char *prefix, tb_param_list *list)
{
    return tfm_params(ctx, &m->t, prefix, list);
}

/* Tensors a GPT-2 file may hold that are not parameters here. */
static int ignorable(const char *name)
{
    const size_t n = strlen(name);
    return strcmp(name, "lm_head.weight") == 0 ||
           (n > 9 && strcmp(name + n - 9, ".attn.bias") == 0) ||
           (n > 16 && strcmp(name + n - 16, ".attn.masked_bias") == 0);
}

tb_status gpt_load_weights(tb_ctx *ctx, gpt *m, const char *path)
{
    tb_st_file f;
    TRY(tb_st_open(ctx, path, &f));
    const char *prefix = tb_st_find(&f, "transformer.wte.weight") ? "transformer." : "";
    tb_param_list list;
    tb_status s = tb_param_list_init(ctx, &list);
    if (s == TB_OK)
        s = gpt_param_list(ctx, m, prefix, &list);
    for (size_t i = 0; s == TB_OK && i < f.count; i++) {
        const char *name = f.tensors[i].name;
        if (!tb_param_list_find(&list, name) && !ignorable(name))
            s = fail(ctx, TB_ERR_INVALID_ARG,
                     "gpt: '%s' holds tensor '%s', which this model (%zu layers) does not have: "
                     "a checkpoint of another configuration",
                     path, name, m->cfg.n_layer);
    }
    if (s == TB_OK)
        s = tb_st_load_params(ctx, &f, &list, TB_ST_ALLOW_UNEXPECTED, NULL, NULL);
    tb_param_list_free(&list);
    tb_st_close(&f);
    return s;
}

/* ---- activations ---------------------------------------------------------------- */

/* The head's buffers (the stack's are in a->t). */
typedef struct head_layout_arg {
    gpt_acts *a;
    size_t rows, vocab;
} head_layout_arg;

static tb_status head_layout(tb_ctx *ctx, tb_arena *ar, void *arg)
{
    head_layout_arg *h = arg;
    size_t RV;
    if (!ex_mul_size(h->rows, h->vocab, &RV))
        return fail(ctx, TB_ERR_OVERFLOW, "gpt: %zu x %zu logits overflow", h->rows, h->vocab);
    TRY(ex_take_f32(ctx, ar, RV, &h->a->logits));
    TRY(ex_take_f32(ctx, ar, RV, &h->a->dlogits));
    return tb_arena_alloc(ctx, ar, h->a->ce_cache_bytes, &h->a->ce_cache);
}

tb_status gpt_acts_size(tb_ctx *ctx, const gpt_config *cfg, size_t max_b, size_t max_t,
                        size_t *bytes)
{
    const tfm_config tc = gpt_stack_config(cfg);
    gpt_acts a;
    memset(&a, 0, sizeof a);
    size_t stack, head, R;
    TRY(tfm_acts_size(ctx, &tc, max_b, max_t, &stack));
    if (!ex_mul_size(max_b, max_t, &R))
        return fail(ctx, TB_ERR_OVERFLOW, "gpt: %zu x %zu tokens overflow", max_b, max_t);
    TRY(tb_cross_entropy_cache_size(R, &a.ce_cache_bytes));
    head_layout_arg h = {&a, R, cfg->vocab_size};
    TRY(ex_layout_size(ctx, head_layout, &h, &head));
    if (!ex_add_size(stack, head, bytes))
        return fail(ctx, TB_ERR_OVERFLOW, "gpt: activations for %zu x %zu tokens overflow",
                    max_b, max_t);
    return TB_OK;
}

tb_status gpt_acts_init(tb_ctx *ctx, gpt_acts *a, const gpt *m, size_t max_b, size_t max_t)
{
    memset(a, 0, sizeof *a);
    size_t total;
    TRY(gpt_acts_size(ctx, &m->cfg, max_b, max_t, &total)); /* checks every size */
    TRY(tfm_acts_init(ctx, &a->t, &m->t, max_b, max_t));
    TRY(tb_cross_entropy_cache_size(max_b * max_t, &a->ce_cache_bytes));
    head_layout_arg h = {a, max_b * max_t, m->cfg.vocab_size};
    TRY(ex_layout_alloc(ctx, head_layout, &h, &a->buffer, &a->bytes));
    a->bytes += a->t.bytes; /* both buffers: gpt_acts_size() */
    return TB_OK;
}

void gpt_acts_free(gpt_acts *a)
{
    tfm_acts_free(&a->t);
    free(a->buffer);
    memset(a, 0, sizeof *a);
}

/* ---- training forward / backward ----------------------------------------------------- */

tb_status gpt_forward(tb_ctx *ctx, gpt *m, gpt_acts *a, tb_mode mode, tb_rng *rng,
                      const int32_t *tokens, const int32_t *targets, size_t B, size_t T,
                      float *loss)
{
    const tfm_input in = {B, T, tokens, NULL, NULL, NULL};
    return gpt_forward_input(ctx, m, a, mode, rng, &in, targets, loss);
}

tb_status gpt_forward_input(tb_ctx *ctx, gpt *m, gpt_acts *a, tb_mode mode, tb_rng *rng,
                            const tfm_input *in, const int32_t *targets, float *loss)
{
    if (!in)
        return fail(ctx, TB_ERR_NULL_ARG, "gpt: no input");
    const size_t B = in->batch, T = in->seq;
    if (B > a->t.max_b || T > a->t.max_t || !B || !T)
        return fail(ctx, TB_ERR_SHAPE,
                    "gpt: a batch of %zu x %zu tokens; the activations hold %zu x %zu", B, T,
                    a->t.max_b, a->t.max_t);
    const size_t R = B * T, C = m->cfg.n_embd, V = m->cfg.vocab_size;
    TRY(tfm_forward(ctx, &m->t, &a->t, mode, rng, in));
    tb_tensor out = tb_tensor_2d(a->t.out, R, C), lo = tb_tensor_2d(a->logits, R, V);
    TRY(tb_linear_forward(ctx, &m->lm_head, &out, &lo));
    if (targets)
        TRY(tb_cross_entropy_forward(ctx, NULL, &lo, targets, R, loss, a->ce_cache,
                                     a->ce_cache_bytes));
    return TB_OK;
}

tb_status gpt_backward(tb_ctx *ctx, gpt *m, gpt_acts *a, const int32_t *tokens,
                       const int32_t *targets, float dloss)
{
    (void)tokens; /* the stack kept them */
    return gpt_backward_embeds(ctx, m, a, targets, dloss, NULL);
}

tb_status gpt_backward_embeds(tb_ctx *ctx, gpt *m, gpt_acts *a, const int32_t *targets,
                              float dloss, float *d_embeds)
{
    const size_t R = a->t.b * a->t.t, C = m->cfg.n_embd, V = m->cfg.vocab_size;
    tb_tensor lo = tb_tensor_2d(a->logits, R, V), dlo = tb_tensor_2d(a->dlogits, R, V);
    tb_tensor out = tb_tensor_2d(a->t.out, R, C), dout = tb_tensor_2d(a->t.dt1, R, C);
    TRY(tb_cross_entropy_backward(ctx, NULL, &lo, targets, R, dloss, a->ce_cache,
                                  a->ce_cache_bytes, &dlo));
    /* The head is tied to wte: one parameter, so it trains exactly when wte
     * does (the view holds a copy of the flag, taken when it was made). */
    m->lm_head.weight.trainable = m->t.wte.weight.trainable;
    m->lm_head.weight.grad = m->t.wte.weight.grad; /* NULL once wte is frozen */
    TRY(tb_linear_backward(ctx, &m->lm_head, &out, &dlo, &dout)); /* into wte.grad */
    return tfm_backward(ctx, &m->t, &a->t, a->t.dt1, d_embeds);
}

/* ---- incremental decoding ---------------------------------------------------------------- */

tb_status gpt_decoder_init(tb_ctx *ctx, gpt_decoder *d, const gpt *m, size_t batch,
                           size_t max_len, size_t max_new)
{
    memset(d, 0, sizeof *d);
    TRY(tfm_decoder_init(ctx, &d->t, &m->t, batch, max_len, max_new));
    size_t bv;
    if (!ex_mul_size(batch, m->cfg.vocab_size, &bv) || !ex_mul_size(bv, sizeof(float), &bv))
        return fail(ctx, TB_ERR_OVERFLOW, "gpt: %zu x %zu logits overflow", batch,
                    m->cfg.vocab_size);
    d->logits = malloc(bv);
    if (!d->logits)
        return fail(ctx, TB_ERR_NO_MEMORY, "gpt: no memory for %zu x %zu logits", batch,
                    m->cfg.vocab_size);
    return TB_OK;
}

void gpt_decoder_free(gpt_decoder *d)
{
    tfm_decoder_free(&d->t);
    free(d->logits);
    memset(d, 0, sizeof *d);
}

void gpt_decoder_reset(gpt_decoder *d)
{
    tfm_decoder_reset(&d->t);
}

tb_status gpt_decoder_step(tb_ctx *ctx, const gpt *m, gpt_decoder *d, const int32_t *tokens,
                           size_t n, float *all_logits)
{
    const size_t B = d->t.batch, C = m->cfg.n_embd, V = m->cfg.vocab_size, R = B * n;
    TRY(tfm_decoder_step(ctx, &m->t, &d->t, tokens, n));
    if (all_logits) {
        tb_tensor h = tb_tensor_2d(d->t.h, R, C), lo = tb_tensor_2d(all_logits, R, V);
        TRY(tb_linear_forward(ctx, &m->lm_head, &h, &lo));
        for (size_t bi = 0; bi < B; bi++)
            memcpy(d->logits + bi * V, all_logits + (bi * n + n - 1) * V, V * sizeof(float));
        return TB_OK;
    }
    /* Only the last position of each sequence needs logits (the stream in
     * d->t.x is free until the next step). */
    for (size_t bi = 0; bi < B; bi++)
        memmove(d->t.x + bi * C, d->t.h + (bi * n + n - 1) * C, C * sizeof(float));
    tb_tensor last = tb_tensor_2d(d->t.x, B, C), lo = tb_tensor_2d(d->logits, B, V);
    return tb_linear_forward(ctx, &m->lm_head, &last, &lo);
}

tb_status gpt_decoder_reorder(gpt_decoder *d, const size_t *src)
{
    return tfm_decoder_reorder(&d->t, src);
}
