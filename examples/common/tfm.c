/* The transformer stack every example is built on (tfm.h). */
#include "tfm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_try.h"

#define NORM_FLAGS (TB_NORM_SCALE | TB_NORM_SHIFT)

const tfm_names tfm_names_gpt2 = {
    .wte = "wte",
    .wpe = "wpe",
    .layer = "h.%zu",
    .norm_attn = "ln_1",
    .norm_mlp = "ln_2",
    .qkv = "attn.c_attn",
    .attn_out = "attn.c_proj",
    .fc_in = "mlp.c_fc",
    .fc_out = "mlp.c_proj",
    .final_norm = "ln_f",
};

const tfm_names tfm_names_bert = {
    .wte = "embeddings.word_embeddings",
    .wpe = "embeddings.position_embeddings",
    .wtt = "embeddings.token_type_embeddings",
    .embed_norm = "embeddings.LayerNorm",
    .layer = "encoder.layer.%zu",
    .norm_attn = "attention.output.LayerNorm",
    .norm_mlp = "output.LayerNorm",
    .q = "attention.self.query",
    .k = "attention.self.key",
    .v = "attention.self.value",
    .attn_out = "attention.output.dense",
    .fc_in = "intermediate.dense",
    .fc_out = "output.dense",
};

/* ---- sizes ---------------------------------------------------------------------- */

/* a * b added to *total; 0 on overflow. */
static int add_product(size_t *total, size_t a, size_t b)
{
    size_t p;
    return ex_mul_size(a, b, &p) && ex_add_size(*total, p, total);
}

static tb_status bad(tb_ctx *ctx, const char *field, size_t v, size_t lo, size_t hi)
{
    return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "tfm: %s = %zu is outside %zu..%zu", field,
                            v, lo, hi);
}

tb_status tfm_config_check(tb_ctx *ctx, const tfm_config *c)
{
    if (!c)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "tfm: no configuration");
    const struct {
        const char *name;
        size_t v, lo, hi;
    } sizes[] = {
        {"n_layer", c->n_layer, 1, TFM_MAX_LAYER},
        {"n_head", c->n_head, 1, TFM_MAX_WIDTH},
        {"d_model", c->d_model, 1, TFM_MAX_WIDTH},
        {"d_ff", c->d_ff, 1, TFM_MAX_WIDTH},
        {"vocab_size", c->vocab_size, 1, TFM_MAX_VOCAB},
        {"max_positions", c->max_positions, 1, TFM_MAX_POSITIONS},
        {"type_vocab_size", c->type_vocab_size, 0, TFM_MAX_VOCAB},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v < sizes[i].lo || sizes[i].v > sizes[i].hi)
            return bad(ctx, sizes[i].name, sizes[i].v, sizes[i].lo, sizes[i].hi);
    if (c->d_model % c->n_head != 0)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: d_model = %zu is not a multiple of n_head = %zu",
                                c->d_model, c->n_head);
    if ((unsigned)c->norm_place > TFM_POST_NORM || (unsigned)c->norm_kind > TFM_RMSNORM ||
        (unsigned)c->qkv > TFM_QKV_SEPARATE ||
        (c->layout != TB_LINEAR_OUT_IN && c->layout != TB_LINEAR_IN_OUT) ||
        (c->gelu != TB_GELU_EXACT && c->gelu != TB_GELU_TANH && c->gelu != TB_GELU_QUICK))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: an unknown norm place, norm kind, qkv form, layout or GELU");
    if (!(c->hidden_dropout >= 0.0f && c->hidden_dropout < 1.0f) ||
        !(c->attn_dropout >= 0.0f && c->attn_dropout < 1.0f))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: dropout %g (hidden) and %g (attention) must be in [0, 1)",
                                (double)c->hidden_dropout, (double)c->attn_dropout);
    if (!(c->norm_eps > 0.0f && isfinite(c->norm_eps)) ||
        !(c->init_std >= 0.0f && isfinite(c->init_std)) ||
        (c->norm_kind == TFM_BATCHNORM && !(c->bn_momentum >= 0.0f && c->bn_momentum <= 1.0f)))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: norm_eps = %g must be finite and > 0, init_std = %g finite "
                                "and >= 0, bn_momentum = %g in [0, 1]",
                                (double)c->norm_eps, (double)c->init_std,
                                (double)c->bn_momentum);
    if (c->has_pad_token && (c->pad_token_id < 0 || (size_t)c->pad_token_id >= c->vocab_size))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: pad_token_id = %ld is not a row of the %zu-token vocabulary",
                                (long)c->pad_token_id, c->vocab_size);
    const tfm_names *n = c->names;
    const int fused = c->qkv == TFM_QKV_FUSED;
    if (!n || !n->wte || !n->wpe || !n->layer || !n->norm_attn || !n->norm_mlp || !n->attn_out ||
        !n->fc_in || !n->fc_out || (fused && !n->qkv) || (!fused && (!n->q || !n->k || !n->v)) ||
        (c->type_vocab_size && !n->wtt) || (c->embed_norm && !n->embed_norm) ||
        (c->final_norm && !n->final_norm))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: the names table lacks a module this configuration has");
    /* L (4 C^2 + 2 C F + 5 C + F + 4 C) + (V + P + types + 2) C floats at
     * most (BatchNorm's running statistics included) must fit. */
    size_t layer = 0, all = 0;
    const size_t C = c->d_model, F = c->d_ff;
    if (!add_product(&layer, 4 * C, C) || !add_product(&layer, 2 * C, F) ||
        !add_product(&layer, 9, C) || !ex_add_size(layer, F, &layer) ||
        !add_product(&all, layer, c->n_layer) || !add_product(&all, c->vocab_size, C) ||
        !add_product(&all, c->max_positions, C) || !add_product(&all, c->type_vocab_size, C) ||
        !add_product(&all, 8, C) || !ex_mul_size(all, sizeof(float), &all))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "tfm: the parameter count overflows");
    return TB_OK;
}

/* ---- projections ----------------------------------------------------------------- */

tb_status tfm_proj_forward(tb_ctx *ctx, const tfm_proj *p, tb_mode mode, tb_rng *rng,
                           const tb_tensor *x, tb_tensor *y)
{
    if (p->ops)
        return p->ops->forward(ctx, p->self, mode, rng, x, y);
    return tb_linear_forward(ctx, &p->linear, x, y);
}

tb_status tfm_proj_backward(tb_ctx *ctx, tfm_proj *p, const tb_tensor *x, const tb_tensor *dy,
                            tb_tensor *dx)
{
    if (p->ops)
        return p->ops->backward(ctx, p->self, x, dy, dx);
    return tb_linear_backward(ctx, &p->linear, x, dy, dx);
}

/* ---- norms ------------------------------------------------------------------------- */

static tb_status norm_init(tb_ctx *ctx, tfm_norm *n, const tfm_config *c)
{
    memset(n, 0, sizeof *n);
    n->kind = c->norm_kind;
    switch (n->kind) {
    case TFM_BATCHNORM:
        return tb_batchnorm_init(ctx, &n->bn, c->d_model, c->norm_eps, c->bn_momentum, NORM_FLAGS);
    case TFM_RMSNORM:
        return tb_rmsnorm_init(ctx, &n->rms, c->d_model, c->norm_eps, TB_NORM_SCALE);
    default:
        return tb_layernorm_init(ctx, &n->ln, c->d_model, c->norm_eps, NORM_FLAGS);
    }
}

static void norm_free(tfm_norm *n)
{
    tb_layernorm_free(&n->ln);
    tb_batchnorm_free(&n->bn);
    tb_rmsnorm_free(&n->rms);
}

static tb_status norm_params(tb_ctx *ctx, tfm_norm *n, const char *name, tb_param_list *list)
{
    switch (n->kind) {
    case TFM_BATCHNORM:
        return tb_batchnorm_params(ctx, &n->bn, name, list);
    case TFM_RMSNORM:
        return tb_rmsnorm_params(ctx, &n->rms, name, list);
    default:
        return tb_layernorm_params(ctx, &n->ln, name, list);
    }
}

/* LayerNorm and RMSNorm keep per-row statistics, BatchNorm per-channel ones. */
static tb_status norm_cache_size(const tfm_config *c, size_t rows, size_t *bytes)
{
    switch (c->norm_kind) {
    case TFM_BATCHNORM:
        return tb_batchnorm_cache_size(c->d_model, bytes);
    case TFM_RMSNORM:
        return tb_rmsnorm_cache_size(rows, bytes);
    default:
        return tb_layernorm_cache_size(rows, bytes);
    }
}

/* valid (R) marks the real rows (BatchNorm's statistics skip the others;
 * the per-row norms need no mask: a padded row cannot affect a real one). A
 * NULL cache is inference. */
static tb_status norm_forward(tb_ctx *ctx, tfm_norm *n, tb_mode mode, const tb_tensor *x,
                              const uint8_t *valid, tb_tensor *y, void *cache, size_t bytes)
{
    switch (n->kind) {
    case TFM_BATCHNORM:
        return tb_batchnorm_forward(ctx, &n->bn, mode, x, valid, y, cache, bytes);
    case TFM_RMSNORM:
        return tb_rmsnorm_forward(ctx, &n->rms, x, y, cache, bytes);
    default:
        return tb_layernorm_forward(ctx, &n->ln, x, y, cache, bytes);
    }
}

static tb_status norm_backward(tb_ctx *ctx, tfm_norm *n, const tb_tensor *x,
                               const uint8_t *valid, const tb_tensor *dy, const void *cache,
                               size_t bytes, tb_tensor *dx)
{
    switch (n->kind) {
    case TFM_BATCHNORM:
        return tb_batchnorm_backward(ctx, &n->bn, x, valid, dy, cache, bytes, dx);
    case TFM_RMSNORM:
        return tb_rmsnorm_backward(ctx, &n->rms, x, dy, cache, bytes, dx);
    default:
        return tb_layernorm_backward(ctx, &n->ln, x, dy, cache, bytes, dx);
    }
}

/* ---- the model ----------------------------------------------------------------------- */

static tb_status normal_fill(tb_ctx *ctx, tb_rng *rng, tb_param *p, float std)
{
    return tb_rng_fill_normal(ctx, rng, p->value, p->numel, 0.0f, std);
}

/* A projection: the Linear's own initialisation from rng, then, with an
 * init_std, N(0, std) weights and zero biases. */
static tb_status proj_init(tb_ctx *ctx, tfm_proj *p, const tfm_config *c, size_t in, size_t out,
                           tb_rng *rng, float std)
{
    memset(p, 0, sizeof *p);
    TRY(tb_linear_init_layout(ctx, &p->linear, in, out, 1, c->layout, rng));
    if (c->init_std > 0.0f) {
        TRY(normal_fill(ctx, rng, &p->linear.weight, std));
        memset(p->linear.bias.value, 0, p->linear.bias.numel * sizeof(float));
    }
    return TB_OK;
}

static tb_status layer_init(tb_ctx *ctx, tfm_layer *L, const tfm_config *c, tb_rng *rng)
{
    const size_t C = c->d_model, F = c->d_ff;
    const float std = c->init_std;
    const float out_std = c->scale_residual_init ? std / sqrtf(2.0f * (float)c->n_layer) : std;
    const int pre = c->norm_place == TFM_PRE_NORM;
    if (pre)
        TRY(norm_init(ctx, &L->norm_attn, c));
    if (c->qkv == TFM_QKV_FUSED) {
        TRY(proj_init(ctx, &L->qkv, c, C, 3 * C, rng, std));
    } else {
        TRY(proj_init(ctx, &L->q, c, C, C, rng, std));
        TRY(proj_init(ctx, &L->k, c, C, C, rng, std));
        TRY(proj_init(ctx, &L->v, c, C, C, rng, std));
    }
    TRY(proj_init(ctx, &L->attn_out, c, C, C, rng, out_std));
    if (!pre)
        TRY(norm_init(ctx, &L->norm_attn, c));
    if (pre)
        TRY(norm_init(ctx, &L->norm_mlp, c));
    TRY(proj_init(ctx, &L->fc_in, c, C, F, rng, std));
    TRY(proj_init(ctx, &L->fc_out, c, F, C, rng, out_std));
    if (!pre)
        TRY(norm_init(ctx, &L->norm_mlp, c));
    return TB_OK;
}

tb_status tfm_init(tb_ctx *ctx, tfm *m, const tfm_config *cfg, tb_rng *rng)
{
    memset(m, 0, sizeof *m);
    TRY(tfm_config_check(ctx, cfg));
    m->cfg = *cfg;
    const size_t C = cfg->d_model;
    /* Every table's default first, then (with an init_std) their normals:
     * the order GPT-2's initialisation has always drawn in. */
    TRY(tb_embedding_init(ctx, &m->wte, cfg->vocab_size, C, rng));
    if (cfg->has_pad_token)
        m->wte.padding_idx = cfg->pad_token_id;
    TRY(tb_embedding_init(ctx, &m->wpe, cfg->max_positions, C, rng));
    if (cfg->type_vocab_size)
        TRY(tb_embedding_init(ctx, &m->wtt, cfg->type_vocab_size, C, rng));
    if (cfg->init_std > 0.0f) {
        TRY(normal_fill(ctx, rng, &m->wte.weight, cfg->init_std));
        TRY(normal_fill(ctx, rng, &m->wpe.weight, cfg->init_std));
        if (cfg->type_vocab_size)
            TRY(normal_fill(ctx, rng, &m->wtt.weight, cfg->init_std));
    }
    if (cfg->embed_norm)
        TRY(norm_init(ctx, &m->embed_norm, cfg));
    m->layers = calloc(cfg->n_layer, sizeof *m->layers);
    if (!m->layers)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tfm: no memory for %zu layers",
                                cfg->n_layer);
    for (size_t l = 0; l < cfg->n_layer; l++)
        TRY(layer_init(ctx, &m->layers[l], cfg, rng));
    if (cfg->final_norm)
        TRY(norm_init(ctx, &m->final_norm, cfg));
    m->attn = tb_attention_default_config(cfg->n_head, C / cfg->n_head);
    m->attn.causal = cfg->causal != 0;
    return TB_OK;
}

static void proj_free(tfm_proj *p)
{
    tb_linear_free(&p->linear);
}

void tfm_free(tfm *m)
{
    if (!m)
        return;
    tb_embedding_free(&m->wte);
    tb_embedding_free(&m->wpe);
    tb_embedding_free(&m->wtt);
    norm_free(&m->embed_norm);
    if (m->layers)
        for (size_t l = 0; l < m->cfg.n_layer; l++) {
            tfm_layer *L = &m->layers[l];
            norm_free(&L->norm_attn);
            norm_free(&L->norm_mlp);
            proj_free(&L->qkv);
            proj_free(&L->q);
            proj_free(&L->k);
            proj_free(&L->v);
            proj_free(&L->attn_out);
            proj_free(&L->fc_in);
            proj_free(&L->fc_out);
        }
    free(m->layers);
    norm_free(&m->final_norm);
    memset(m, 0, sizeof *m);
}

tb_status tfm_set_prefix(tb_ctx *ctx, tfm *m, const tfm_prefix *p)
{
    if (!m || !m->layers)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "tfm: a prefix for no model");
    if (!p) {
        m->prefix = NULL;
        return TB_OK;
    }
    const tfm_config *c = &m->cfg;
    if (!p->n || p->n > TFM_MAX_POSITIONS || p->ld < c->d_model ||
        p->first_position >= c->max_positions)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: a prefix of %zu positions (1..%zu), row stride %zu (at "
                                "least %zu), first position %zu (below %zu)",
                                p->n, (size_t)TFM_MAX_POSITIONS, p->ld, c->d_model,
                                p->first_position, c->max_positions);
    if (!p->key || !p->value)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "tfm: a prefix without keys or values");
    for (size_t l = 0; l < c->n_layer; l++)
        if (!p->key[l] || !p->value[l])
            return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG,
                                    "tfm: the prefix has no keys or values for layer %zu", l);
    m->prefix = p;
    return TB_OK;
}

/* ---- modules and their names ------------------------------------------------------ */

typedef enum module_kind { MOD_EMBEDDING, MOD_NORM, MOD_PROJ } module_kind;

/* One module as the walk visits it: its full name, kind, sizes (an
 * embedding's rows; a projection's in and out) and, when walking a built
 * model, the block. */
typedef struct module {
    const char *name;
    module_kind kind;
    size_t a, b;
    void *block;
} module;

typedef tb_status (*module_visit)(tb_ctx *ctx, void *user, const tfm_config *c,
                                  const module *mod);

/* Visit every module of c in parameter order (the embeddings, then each
 * layer's modules in computation order, then the final norm), named by
 * c->names after prefix. m may be NULL (then no blocks). */
static tb_status walk(tb_ctx *ctx, const tfm_config *c, tfm *m, const char *prefix,
                      module_visit visit, void *user)
{
    const tfm_names *n = c->names;
    const size_t C = c->d_model, F = c->d_ff;
    char name[TB_PARAM_NAME_MAX], layer[TB_PARAM_NAME_MAX];
    const int pre = c->norm_place == TFM_PRE_NORM;
#define VISIT(lay, mod, kind, a, b, blk)                                                    \
    do {                                                                                    \
        const int len_ = snprintf(name, sizeof name, "%s%s%s%s", prefix, (lay),             \
                                  *(lay) ? "." : "", (mod));                                \
        if (len_ < 0 || (size_t)len_ >= sizeof name)                                        \
            return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,                                \
                                    "tfm: the module name '%s%s.%s' is too long", prefix,   \
                                    (lay), (mod));                                          \
        const module mod_ = {name, (kind), (a), (b), m ? (void *)(blk) : NULL};             \
        TRY(visit(ctx, user, c, &mod_));                                                    \
    } while (0)
    VISIT("", n->wte, MOD_EMBEDDING, c->vocab_size, C, &m->wte);
    VISIT("", n->wpe, MOD_EMBEDDING, c->max_positions, C, &m->wpe);
    if (c->type_vocab_size)
        VISIT("", n->wtt, MOD_EMBEDDING, c->type_vocab_size, C, &m->wtt);
    if (c->embed_norm)
        VISIT("", n->embed_norm, MOD_NORM, C, 0, &m->embed_norm);
    for (size_t l = 0; l < c->n_layer; l++) {
        tfm_layer *L = m ? &m->layers[l] : NULL;
        snprintf(layer, sizeof layer, n->layer, l);
        if (pre)
            VISIT(layer, n->norm_attn, MOD_NORM, C, 0, &L->norm_attn);
        if (c->qkv == TFM_QKV_FUSED) {
            VISIT(layer, n->qkv, MOD_PROJ, C, 3 * C, &L->qkv);
        } else {
            VISIT(layer, n->q, MOD_PROJ, C, C, &L->q);
            VISIT(layer, n->k, MOD_PROJ, C, C, &L->k);
            VISIT(layer, n->v, MOD_PROJ, C, C, &L->v);
        }
        VISIT(layer, n->attn_out, MOD_PROJ, C, C, &L->attn_out);
        if (!pre)
            VISIT(layer, n->norm_attn, MOD_NORM, C, 0, &L->norm_attn);
        if (pre)
            VISIT(layer, n->norm_mlp, MOD_NORM, C, 0, &L->norm_mlp);
        VISIT(layer, n->fc_in, MOD_PROJ, C, F, &L->fc_in);
        VISIT(layer, n->fc_out, MOD_PROJ, F, C, &L->fc_out);
        if (!pre)
            VISIT(layer, n->norm_mlp, MOD_NORM, C, 0, &L->norm_mlp);
    }
    if (c->final_norm)
        VISIT("", n->final_norm, MOD_NORM, C, 0, &m->final_norm);
#undef VISIT
    return TB_OK;
}

static tb_status add_params(tb_ctx *ctx, void *list, const tfm_config *c, const module *mod)
{
    (void)c;
    switch (mod->kind) {
    case MOD_EMBEDDING:
        return tb_embedding_params(ctx, mod->block, mod->name, list);
    case MOD_NORM:
        return norm_params(ctx, mod->block, mod->name, list);
    default:
        return tb_linear_params(ctx, &((tfm_proj *)mod->block)->linear, mod->name, list);
    }
}

tb_status tfm_params(tb_ctx *ctx, tfm *m, const char *prefix, tb_param_list *list)
{
    return walk(ctx, &m->cfg, m, prefix ? prefix : "", add_params, list);
}

typedef struct proj_sink {
    tfm_proj_visit fn;
    void *user;
} proj_sink;

static tb_status visit_proj(tb_ctx *ctx, void *user, const tfm_config *c, const module *mod)
{
    (void)c;
    const proj_sink *sink = user;
    return mod->kind == MOD_PROJ ? sink->fn(ctx, sink->user, mod->name, mod->block) : TB_OK;
}

tb_status tfm_visit_projs(tb_ctx *ctx, tfm *m, const char *prefix, tfm_proj_visit fn,
                          void *user)
{
    proj_sink sink = {fn, user};
    return walk(ctx, &m->cfg, m, prefix ? prefix : "", visit_proj, &sink);
}

/* Specs being collected: count only (specs NULL) or fill; or, with `want`
 * set, looked for: the one named want is copied to *found. */
typedef struct spec_sink {
    tfm_param_spec *specs;
    size_t count;
    const char *want;
    tfm_param_spec *found;
    int hit;
    size_t want_at; /* with found: copy the spec at this index (SIZE_MAX: none) */
} spec_sink;

static void spec_put(spec_sink *k, const char *mod_name, const char *suffix, size_t ndim,
                     size_t s0, size_t s1)
{
    tfm_param_spec one, *p = k->specs ? &k->specs[k->count] : &one;
    const int at = k->found && k->want_at == k->count;
    if (k->specs || k->want || at) {
        snprintf(p->name, sizeof p->name, "%s.%s", mod_name, suffix);
        p->ndim = ndim, p->shape[0] = s0, p->shape[1] = ndim == 2 ? s1 : 0;
    }
    if (at || (k->want && !k->hit && strcmp(p->name, k->want) == 0)) {
        *k->found = *p;
        k->hit = 1;
    }
    k->count++;
}

static tb_status add_specs(tb_ctx *ctx, void *user, const tfm_config *c, const module *mod)
{
    spec_sink *k = user;
    if (strlen(mod->name) + sizeof ".running_mean" > TB_PARAM_NAME_MAX)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "tfm: the module name '%s' is too long",
                                mod->name);
    switch (mod->kind) {
    case MOD_EMBEDDING:
        spec_put(k, mod->name, "weight", 2, mod->a, mod->b);
        break;
    case MOD_NORM:
        spec_put(k, mod->name, "weight", 1, mod->a, 0);
        if (c->norm_kind != TFM_RMSNORM)
            spec_put(k, mod->name, "bias", 1, mod->a, 0);
        if (c->norm_kind == TFM_BATCHNORM) {
            spec_put(k, mod->name, "running_mean", 1, mod->a, 0);
            spec_put(k, mod->name, "running_var", 1, mod->a, 0);
        }
        break;
    default: /* weight in the layout's order, bias (out) */
        if (c->layout == TB_LINEAR_IN_OUT)
            spec_put(k, mod->name, "weight", 2, mod->a, mod->b);
        else
            spec_put(k, mod->name, "weight", 2, mod->b, mod->a);
        spec_put(k, mod->name, "bias", 1, mod->b, 0);
        break;
    }
    return TB_OK;
}

/* The layer index of rest ("<pre><digits><post>." with the digits in
 * canonical decimal and below n_layer, pre and post around the layer
 * format's %zu), its start and length; 0 if rest names no layer. */
static int layer_of(const tfm_config *c, const char *rest, size_t *at, size_t *len)
{
    const char *fmt = c->names->layer, *hole = strstr(fmt, "%zu");
    if (!hole)
        return 0;
    const size_t npre = (size_t)(hole - fmt), npost = strlen(hole + 3);
    if (strncmp(rest, fmt, npre) != 0)
        return 0;
    const char *d = rest + npre, *e = d;
    size_t l = 0;
    while (*e >= '0' && *e <= '9') {
        l = l * 10 + (size_t)(*e - '0');
        if (l >= c->n_layer)
            return 0;
        e++;
    }
    if (e == d || (*d == '0' && e - d > 1) || strncmp(e, hole + 3, npost) != 0 ||
        e[npost] != '.')
        return 0;
    *at = npre, *len = (size_t)(e - d);
    return 1;
}

int tfm_param_spec_of(const tfm_config *cfg, const char *prefix, const char *name,
                      tfm_param_spec *spec)
{
    const size_t np = prefix ? strlen(prefix) : 0;
    if (!cfg || !cfg->names || !cfg->names->layer || !name ||
        strncmp(name, prefix ? prefix : "", np) != 0)
        return 0;
    const char *rest = name + np;
    /* Layer l's parameters have layer 0's names and shapes: look up the
     * name with the index replaced by 0 in a one-layer walk. */
    char key[TB_PARAM_NAME_MAX];
    size_t at, len;
    if (strlen(rest) >= sizeof key)
        return 0;
    if (layer_of(cfg, rest, &at, &len)) {
        memcpy(key, rest, at);
        key[at] = '0';
        memcpy(key + at + 1, rest + at + len, strlen(rest + at + len) + 1);
    } else {
        memcpy(key, rest, strlen(rest) + 1);
    }
    tfm_config one = *cfg;
    one.n_layer = 1;
    tfm_param_spec found;
    spec_sink k = {NULL, 0, key, &found, 0, SIZE_MAX};
    if (walk(NULL, &one, NULL, "", add_specs, &k) != TB_OK || !k.hit)
        return 0;
    snprintf(spec->name, sizeof spec->name, "%s", name);
    spec->ndim = found.ndim, spec->shape[0] = found.shape[0], spec->shape[1] = found.shape[1];
    return 1;
}

size_t tfm_param_spec_count(const tfm_config *cfg)
{
    spec_sink k = {NULL, 0, NULL, NULL, 0, SIZE_MAX};
    return cfg && cfg->names && walk(NULL, cfg, NULL, "", add_specs, &k) == TB_OK ? k.count : 0;
}

int tfm_param_spec_at(const tfm_config *cfg, const char *prefix, size_t index,
                      tfm_param_spec *spec)
{
    if (!cfg || !cfg->names)
        return 0;
    spec_sink k = {NULL, 0, NULL, spec, 0, index};
    return walk(NULL, cfg, NULL, prefix ? prefix : "", add_specs, &k) == TB_OK && k.hit;
}

tb_status tfm_param_specs(tb_ctx *ctx, const tfm_config *cfg, const char *prefix,
                          tfm_param_spec **specs, size_t *count)
{
    *specs = NULL;
    *count = 0;
    TRY(tfm_config_check(ctx, cfg));
    if (!prefix)
        prefix = "";
    spec_sink k = {NULL, 0, NULL, NULL, 0, SIZE_MAX};
    TRY(walk(ctx, cfg, NULL, prefix, add_specs, &k));
    k.specs = calloc(k.count ? k.count : 1, sizeof *k.specs);
    if (!k.specs)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tfm: no memory for %zu names", k.count);
    const size_t n = k.count;
    k.count = 0;
    tb_status s = walk(ctx, cfg, NULL, prefix, add_specs, &k);
    if (s != TB_OK || k.count != n) {
        free(k.specs);
        return s != TB_OK ? s : tb_ctx_set_error(ctx, TB_ERR_STATE, "tfm: the walk changed");
    }
    *specs = k.specs;
    *count = n;
    return TB_OK;
}

/* ---- activations ------------------------------------------------------------------------ */

/* What a layout needs besides the struct it fills. */
typedef struct acts_layout_arg {
    tfm_acts *a;
    const tfm_config *cfg;
    tfm_layer_acts *counted; /* where a counting run "puts" each layer's buffers */
} acts_layout_arg;

/* Every buffer of tfm_acts, in one place (counted, then carved). */
static tb_status acts_layout(tb_ctx *ctx, tb_arena *ar, void *arg)
{
    acts_layout_arg *la = arg;
    tfm_acts *a = la->a;
    const tfm_config *c = la->cfg;
    const size_t R = a->max_b * a->max_t, C = c->d_model, F = c->d_ff, L = c->n_layer;
    const int pre = c->norm_place == TFM_PRE_NORM;
    void *raw;
#define F32(ptr, n) TRY(ex_take_f32(ctx, ar, (n), &(ptr)))
#define RAW(ptr, bytes) TRY(tb_arena_alloc(ctx, ar, (bytes), &(ptr)))
    const int infer = a->inference_only;
    for (size_t l = 0; l <= L; l++) {
        tfm_layer_acts *y = ar->counting ? la->counted : &a->layer[l];
        if (infer && l >= 2) { /* layer 0's buffers again, the stream in l % 2's */
            if (!ar->counting) {
                tfm_layer_acts *y0 = &a->layer[0];
                float *x = a->layer[l % 2].x;
                if (l < L)
                    *y = *y0;
                y->x = x;
            }
            continue;
        }
        if (infer && l == 1) { /* the second stream buffer; the rest as layer 0 */
            F32(y->x, R * C);
            if (!ar->counting && l < L) {
                float *x = y->x;
                *y = a->layer[0];
                y->x = x;
            }
            continue;
        }
        F32(y->x, R * C);
        if (l == L)
            break;
        if (pre)
            F32(y->h1, R * C);
        F32(y->qkv, R * 3 * C);
        F32(y->att, R * C);
        F32(y->p, R * C);
        F32(y->r1, R * C);
        if (pre)
            y->x1 = y->r1;
        else
            F32(y->x1, R * C);
        if (pre)
            F32(y->h2, R * C);
        else
            y->h2 = y->x1;
        F32(y->f, R * F);
        if (infer)
            y->g = y->f; /* GELU in place: nothing reads f after it */
        else
            F32(y->g, R * F);
        F32(y->mo, R * C);
        if (!pre)
            F32(y->r2, R * C);
        RAW(y->norm_attn_cache, a->norm_cache_bytes);
        RAW(y->norm_mlp_cache, a->norm_cache_bytes);
        RAW(y->att_cache, a->att_cache_bytes);
    }
    F32(a->emb, R * C);
    if (c->embed_norm) {
        F32(a->emb_n, R * C);
        RAW(a->embed_norm_cache, a->norm_cache_bytes);
    }
    if (c->final_norm) {
        F32(a->out, R * C);
        RAW(a->final_norm_cache, a->norm_cache_bytes);
    }
    F32(a->dt1, R * C); /* also the embeddings' scratch in forward */
    if (!infer) {
        F32(a->dx, R * C);
        F32(a->dt2, R * C);
        if (c->qkv == TFM_QKV_SEPARATE) /* the three projections' input gradients are summed */
            F32(a->dt3, R * C);
        F32(a->df, R * F);
        F32(a->dqkv, R * 3 * C);
    }
    RAW(raw, R * sizeof(int32_t));
    a->pos = raw;
    if (a->max_prefix) {
        const size_t Rk = a->max_b * (a->max_prefix + a->max_t); /* acts_header checked it */
        F32(a->pk, Rk * C);
        F32(a->pv, Rk * C);
        if (!infer) {
            F32(a->dpk, Rk * C);
            F32(a->dpv, Rk * C);
        }
        RAW(raw, Rk);
        a->pvalid = raw;
    }
#undef F32
#undef RAW
    return TB_OK;
}

/* Capacity and cache sizes; R (3C + 2F) floats must fit in size_t, which
 * bounds every product of the layout (its sums are checked there). */
static tb_status acts_header(tb_ctx *ctx, tfm_acts *a, const tfm_config *c, size_t max_b,
                             size_t max_t, size_t n_prefix)
{
    memset(a, 0, sizeof *a);
    if (!max_b || !max_t || max_t > c->max_positions || n_prefix > TFM_MAX_POSITIONS)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: activations for %zu x %zu tokens (at most %zu positions), "
                                "prefix %zu (at most %zu)",
                                max_b, max_t, c->max_positions, n_prefix,
                                (size_t)TFM_MAX_POSITIONS);
    size_t R, widest = 0, Rk, kv = 0;
    /* With a prefix, also max_b (n + max_t) (4 C floats + 1 byte). */
    if (!ex_mul_size(max_b, max_t, &R) || !add_product(&widest, 3, c->d_model) ||
        !add_product(&widest, 2, c->d_ff) || !ex_mul_size(R, widest, &widest) ||
        !ex_mul_size(widest, sizeof(float), &widest) ||
        !ex_mul_size(max_b, max_t + n_prefix, &Rk) ||
        !add_product(&kv, 4 * sizeof(float) + 1, c->d_model) || !ex_mul_size(Rk, kv, &kv))
        return tb_ctx_set_error(ctx, TB_ERR_OVERFLOW,
                                "tfm: activations for %zu x %zu tokens overflow", max_b, max_t);
    a->max_b = max_b, a->max_t = max_t, a->max_prefix = n_prefix;
    tb_attention_config att = tb_attention_default_config(c->n_head, c->d_model / c->n_head);
    att.causal = c->causal != 0;
    TRY(norm_cache_size(c, R, &a->norm_cache_bytes));
    TRY(tb_attention_cache_size(&att, max_b, max_t, &a->att_cache_bytes));
    return TB_OK;
}

tb_status tfm_acts_size_prefix(tb_ctx *ctx, const tfm_config *cfg, size_t max_b, size_t max_t,
                               size_t n_prefix, size_t *bytes)
{
    tfm_acts a;
    tfm_layer_acts counted;
    TRY(acts_header(ctx, &a, cfg, max_b, max_t, n_prefix));
    acts_layout_arg arg = {&a, cfg, &counted};
    return ex_layout_size(ctx, acts_layout, &arg, bytes);
}

tb_status tfm_acts_size(tb_ctx *ctx, const tfm_config *cfg, size_t max_b, size_t max_t,
                        size_t *bytes)
{
    return tfm_acts_size_prefix(ctx, cfg, max_b, max_t, 0, bytes);
}

static tb_status acts_init(tb_ctx *ctx, tfm_acts *a, const tfm *m, size_t max_b, size_t max_t,
                           int inference_only)
{
    tfm_layer_acts counted;
    TRY(acts_header(ctx, a, &m->cfg, max_b, max_t, m->prefix ? m->prefix->n : 0));
    a->inference_only = inference_only;
    a->layer = calloc(m->cfg.n_layer + 1, sizeof *a->layer);
    if (!a->layer)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tfm: no memory for the activations");
    acts_layout_arg arg = {a, &m->cfg, &counted};
    tb_status s = ex_layout_alloc(ctx, acts_layout, &arg, &a->buffer, &a->bytes);
    if (s == TB_OK && !m->cfg.final_norm)
        a->out = a->layer[m->cfg.n_layer].x;
    if (s != TB_OK)
        tfm_acts_free(a);
    return s;
}

tb_status tfm_acts_init(tb_ctx *ctx, tfm_acts *a, const tfm *m, size_t max_b, size_t max_t)
{
    return acts_init(ctx, a, m, max_b, max_t, 0);
}

tb_status tfm_acts_init_inference(tb_ctx *ctx, tfm_acts *a, const tfm *m, size_t max_b,
                                  size_t max_t)
{
    return acts_init(ctx, a, m, max_b, max_t, 1);
}

tb_status tfm_acts_size_inference(tb_ctx *ctx, const tfm_config *cfg, size_t max_b, size_t max_t,
                                  size_t n_prefix, size_t *bytes)
{
    tfm_acts a;
    tfm_layer_acts counted;
    TRY(acts_header(ctx, &a, cfg, max_b, max_t, n_prefix));
    a.inference_only = 1;
    acts_layout_arg arg = {&a, cfg, &counted};
    return ex_layout_size(ctx, acts_layout, &arg, bytes);
}

void tfm_acts_free(tfm_acts *a)
{
    free(a->buffer);
    free(a->layer);
    memset(a, 0, sizeof *a);
}

/* ---- freezing ---------------------------------------------------------------------------- */

static tb_status freeze_proj(tb_ctx *ctx, void *user, const char *name, tfm_proj *p)
{
    (void)ctx, (void)user, (void)name;
    tb_linear_freeze(&p->linear);
    return TB_OK;
}

tb_status tfm_freeze(tb_ctx *ctx, tfm *m, size_t *kept_grad_bytes)
{
    TRY(tfm_visit_projs(ctx, m, "", freeze_proj, NULL));
    tb_embedding_freeze(&m->wte);
    tb_embedding_freeze(&m->wpe);
    if (m->cfg.type_vocab_size)
        tb_embedding_freeze(&m->wtt);
    /* The norms (a BatchNorm only by flag: its gradients share an
     * allocation with its running statistics). */
    tfm_norm *norms[2 + 2 * TFM_MAX_LAYER];
    size_t nn = 0;
    norms[nn++] = &m->embed_norm, norms[nn++] = &m->final_norm;
    for (size_t l = 0; l < m->cfg.n_layer; l++)
        norms[nn++] = &m->layers[l].norm_attn, norms[nn++] = &m->layers[l].norm_mlp;
    for (size_t i = 0; i < nn; i++) {
        tb_layernorm_freeze(&norms[i]->ln);
        tb_rmsnorm_freeze(&norms[i]->rms);
    }
    tb_param_list list;
    TRY(tb_param_list_init(ctx, &list));
    tb_status s = tfm_params(ctx, m, "", &list);
    size_t kept = 0;
    for (size_t i = 0; s == TB_OK && i < list.count; i++) {
        tb_param *q = list.items[i].param;
        q->trainable = 0;
        if (q->grad)
            kept += q->numel * sizeof(float);
    }
    tb_param_list_free(&list);
    if (s == TB_OK && kept_grad_bytes)
        *kept_grad_bytes = kept;
    return s;
}

/* ---- forward ----------------------------------------------------------------------------- */

static tb_status check_input(tb_ctx *ctx, const tfm *m, const tfm_acts *a, const tfm_input *in)
{
    if (!in || (!in->ids) == (!in->embeds))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: an input needs token ids or input embeddings (one of them)");
    if (!in->batch || !in->seq || in->batch > a->max_b || in->seq > a->max_t)
        return tb_ctx_set_error(ctx, TB_ERR_SHAPE,
                                "tfm: a batch of %zu x %zu tokens; the activations hold %zu x %zu",
                                in->batch, in->seq, a->max_b, a->max_t);
    if (in->type_ids && !m->cfg.type_vocab_size)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: token types given to a model without a token-type "
                                "embedding");
    const tfm_prefix *pf = m->prefix;
    if (pf && pf->n > a->max_prefix)
        return tb_ctx_set_error(ctx, TB_ERR_BUFFER_TOO_SMALL,
                                "tfm: a prefix of %zu positions; the activations hold %zu "
                                "(initialise them after tfm_set_prefix())",
                                pf->n, a->max_prefix);
    if (pf && pf->first_position + in->seq > m->cfg.max_positions)
        return tb_ctx_set_error(ctx, TB_ERR_SHAPE,
                                "tfm: %zu tokens from position %zu (after the prefix) pass the "
                                "%zu positions",
                                in->seq, pf->first_position, m->cfg.max_positions);
    return TB_OK;
}

/* The embeddings into layer[0].x: (wte[ids] or embeds) + wpe[pos] (+ wtt),
 * (embed_norm), dropout. dt1 holds the other tables' rows meanwhile. */
static tb_status embed_forward(tb_ctx *ctx, tfm *m, tfm_acts *a, tb_mode mode, tb_rng *rng,
                               float p)
{
    const tfm_input *in = &a->in;
    const size_t B = in->batch, T = in->seq, R = B * T, C = m->cfg.d_model;
    tb_tensor emb = tb_tensor_3d(a->emb, B, T, C), x0 = tb_tensor_3d(a->layer[0].x, B, T, C);
    tb_tensor rows = tb_tensor_3d(a->dt1, B, T, C);
    const size_t p0 = m->prefix ? m->prefix->first_position : 0;
    for (size_t r = 0; r < R; r++)
        a->pos[r] = (int32_t)(p0 + r % T);
    TRY(tb_embedding_forward(ctx, &m->wpe, a->pos, R, &rows));
    if (in->ids) {
        TRY(tb_embedding_forward(ctx, &m->wte, in->ids, R, &emb));
        TRY(tb_residual_forward(ctx, &emb, &rows, &emb));
    } else {
        tb_tensor given = tb_tensor_3d((float *)(uintptr_t)in->embeds, B, T, C);
        TRY(tb_residual_forward(ctx, &given, &rows, &emb));
    }
    if (m->cfg.type_vocab_size) {
        if (in->type_ids) {
            TRY(tb_embedding_forward(ctx, &m->wtt, in->type_ids, R, &rows));
        } else { /* all type 0 */
            for (size_t r = 0; r < R; r++)
                memcpy(a->dt1 + r * C, m->wtt.weight.value, C * sizeof(float));
        }
        TRY(tb_residual_forward(ctx, &emb, &rows, &emb));
    }
    tb_tensor *src = &emb;
    tb_tensor embn = tb_tensor_3d(a->emb_n, B, T, C);
    if (m->cfg.embed_norm) {
        TRY(norm_forward(ctx, &m->embed_norm, mode, &emb, in->key_valid, &embn,
                         a->embed_norm_cache, a->norm_cache_bytes));
        src = &embn;
    }
    return tb_dropout_forward(ctx, mode, p, rng, src, &x0, &a->drop_emb);
}

/* The attention projections of one layer: input h (R, C) -> q, k, v heads. */
static tb_status qkv_forward(tb_ctx *ctx, tfm_layer *L, const tfm_config *c, tb_mode mode,
                             tb_rng *rng, tfm_layer_acts *y, const tb_tensor *h, size_t B,
                             size_t T, tb_tensor t[3], tb_heads hd[3])
{
    const size_t C = c->d_model;
    if (c->qkv == TFM_QKV_FUSED) {
        t[0] = tb_tensor_3d(y->qkv, B, T, 3 * C);
        TRY(tfm_proj_forward(ctx, &L->qkv, mode, rng, h, &t[0]));
        for (int i = 0; i < 3; i++)
            hd[i].tensor = &t[0], hd[i].offset = (size_t)i * C;
        return TB_OK;
    }
    tfm_proj *pr[3] = {&L->q, &L->k, &L->v};
    for (int i = 0; i < 3; i++) {
        t[i] = tb_tensor_3d(y->qkv + (size_t)i * B * T * C, B, T, C);
        TRY(tfm_proj_forward(ctx, pr[i], mode, rng, h, &t[i]));
        hd[i].tensor = &t[i], hd[i].offset = 0;
    }
    return TB_OK;
}

/* Layer l's keys and values with the prefix in front: pk, pv (B, n + T, C)
 * hold the prefix's n rows, then the T rows of the projections' heads k
 * and v (each (B, T, W) from its offset), in every batch row; k and v then
 * view pk and pv. */
static void prefix_kv(const tfm_prefix *pf, size_t l, size_t B, size_t T, size_t C, float *pk,
                      float *pv, tb_tensor kt[2], tb_heads *k, tb_heads *v)
{
    const size_t n = pf->n, Tk = n + T, row = C * sizeof(float);
    const size_t wk = k->tensor->shape[2], wv = v->tensor->shape[2];
    for (size_t b = 0; b < B; b++) {
        float *ok = pk + b * Tk * C, *ov = pv + b * Tk * C;
        for (size_t i = 0; i < n; i++) {
            memcpy(ok + i * C, pf->key[l] + i * pf->ld, row);
            memcpy(ov + i * C, pf->value[l] + i * pf->ld, row);
        }
        for (size_t t = 0; t < T; t++) {
            memcpy(ok + (n + t) * C, k->tensor->data + (b * T + t) * wk + k->offset, row);
            memcpy(ov + (n + t) * C, v->tensor->data + (b * T + t) * wv + v->offset, row);
        }
    }
    kt[0] = tb_tensor_3d(pk, B, Tk, C);
    kt[1] = tb_tensor_3d(pv, B, Tk, C);
    k->tensor = &kt[0], k->offset = 0;
    v->tensor = &kt[1], v->offset = 0;
}

/* The backward of prefix_kv: the token rows of dpk, dpv (B, n + T, C) into
 * the projections' gradient heads dk, dv; the prefix rows summed over the
 * batch (in batch order) into the prefix's gradients, if it has them. */
static void prefix_kv_backward(const tfm_prefix *pf, size_t l, size_t B, size_t T, size_t C,
                               const float *dpk, const float *dpv, const tb_heads *dk,
                               const tb_heads *dv)
{
    const size_t n = pf->n, Tk = n + T, row = C * sizeof(float);
    const size_t wk = dk->tensor->shape[2], wv = dv->tensor->shape[2];
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            memcpy(dk->tensor->data + (b * T + t) * wk + dk->offset, dpk + (b * Tk + n + t) * C,
                   row);
            memcpy(dv->tensor->data + (b * T + t) * wv + dv->offset, dpv + (b * Tk + n + t) * C,
                   row);
        }
    float *gk = pf->dkey ? pf->dkey[l] : NULL, *gv = pf->dvalue ? pf->dvalue[l] : NULL;
    for (size_t b = 0; b < B; b++)
        for (size_t i = 0; i < n; i++) {
            const float *sk = dpk + (b * Tk + i) * C, *sv = dpv + (b * Tk + i) * C;
            if (gk)
                for (size_t j = 0; j < C; j++)
                    gk[i * pf->ld + j] += sk[j];
            if (gv)
                for (size_t j = 0; j < C; j++)
                    gv[i * pf->ld + j] += sv[j];
        }
}

static tb_status layer_forward(tb_ctx *ctx, tfm *m, tfm_acts *a, size_t l, tb_mode mode,
                               tb_rng *rng, float p, float pa)
{
    const tfm_config *c = &m->cfg;
    const size_t B = a->in.batch, T = a->in.seq, C = c->d_model, F = c->d_ff;
    const int pre = c->norm_place == TFM_PRE_NORM;
    const uint8_t *valid = a->in.key_valid;
    tfm_layer *L = &m->layers[l];
    tfm_layer_acts *y = &a->layer[l];
    const size_t nb = a->norm_cache_bytes;
    tb_tensor x = tb_tensor_3d(y->x, B, T, C), h1 = tb_tensor_3d(y->h1, B, T, C);
    tb_tensor att = tb_tensor_3d(y->att, B, T, C), pt = tb_tensor_3d(y->p, B, T, C);
    tb_tensor r1 = tb_tensor_3d(y->r1, B, T, C), x1 = tb_tensor_3d(y->x1, B, T, C);
    tb_tensor h2 = tb_tensor_3d(y->h2, B, T, C), f = tb_tensor_3d(y->f, B, T, F);
    tb_tensor g = tb_tensor_3d(y->g, B, T, F), mo = tb_tensor_3d(y->mo, B, T, C);
    tb_tensor xn = tb_tensor_3d(a->layer[l + 1].x, B, T, C);
    tb_tensor r2 = pre ? xn : tb_tensor_3d(y->r2, B, T, C);
    const tfm_prefix *pf = m->prefix;
    const size_t Tk = pf ? pf->n + T : T;
    memset(&y->mask, 0, sizeof y->mask);
    y->mask.key_valid = pf && valid ? a->pvalid : valid;
    if (pa > 0.0f)
        TRY(tb_attention_dropout_draw(ctx, &m->attn, &y->mask, rng, pa, B, T, Tk));
    if (pre)
        TRY(norm_forward(ctx, &L->norm_attn, mode, &x, valid, &h1, y->norm_attn_cache, nb));
    tb_tensor qt[3], kt[2];
    tb_heads hd[3];
    TRY(qkv_forward(ctx, L, c, mode, rng, y, pre ? &h1 : &x, B, T, qt, hd));
    if (pf)
        prefix_kv(pf, l, B, T, C, a->pk, a->pv, kt, &hd[1], &hd[2]);
    TRY(tb_attention_forward(ctx, &m->attn, mode, &y->mask, &hd[0], &hd[1], &hd[2], &att,
                             y->att_cache, a->att_cache_bytes));
    TRY(tfm_proj_forward(ctx, &L->attn_out, mode, rng, &att, &pt));
    TRY(tb_dropout_forward(ctx, mode, p, rng, &pt, &pt, &y->drop_attn));
    TRY(tb_residual_forward(ctx, &x, &pt, &r1));
    if (pre)
        TRY(norm_forward(ctx, &L->norm_mlp, mode, &x1, valid, &h2, y->norm_mlp_cache, nb));
    else
        TRY(norm_forward(ctx, &L->norm_attn, mode, &r1, valid, &x1, y->norm_attn_cache, nb));
    TRY(tfm_proj_forward(ctx, &L->fc_in, mode, rng, &h2, &f));
    TRY(tb_gelu_forward(ctx, c->gelu, &f, &g));
    TRY(tfm_proj_forward(ctx, &L->fc_out, mode, rng, &g, &mo));
    TRY(tb_dropout_forward(ctx, mode, p, rng, &mo, &mo, &y->drop_mlp));
    TRY(tb_residual_forward(ctx, &x1, &mo, &r2));
    if (!pre)
        TRY(norm_forward(ctx, &L->norm_mlp, mode, &r2, valid, &xn, y->norm_mlp_cache, nb));
    return TB_OK;
}

tb_status tfm_forward(tb_ctx *ctx, tfm *m, tfm_acts *a, tb_mode mode, tb_rng *rng,
                      const tfm_input *in)
{
    TRY(check_input(ctx, m, a, in));
    if (a->inference_only && mode == TB_MODE_TRAINING)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: inference-only activations (tfm_acts_init_inference) in "
                                "a training forward");
    const tfm_config *c = &m->cfg;
    const int train = mode == TB_MODE_TRAINING;
    const float p = train ? c->hidden_dropout : 0.0f, pa = train ? c->attn_dropout : 0.0f;
    a->in = *in;
    a->b = in->batch, a->t = in->seq;
    a->n_prefix = m->prefix ? m->prefix->n : 0;
    if (m->prefix && in->key_valid) { /* the prefix keys are valid in every row */
        const size_t n = a->n_prefix, T = in->seq;
        for (size_t b = 0; b < in->batch; b++) {
            memset(a->pvalid + b * (n + T), 1, n);
            memcpy(a->pvalid + b * (n + T) + n, in->key_valid + b * T, T);
        }
    }
    TRY(embed_forward(ctx, m, a, mode, rng, p));
    for (size_t l = 0; l < c->n_layer; l++)
        TRY(layer_forward(ctx, m, a, l, mode, rng, p, pa));
    if (c->final_norm) {
        const size_t B = in->batch, T = in->seq, C = c->d_model;
        tb_tensor xl = tb_tensor_3d(a->layer[c->n_layer].x, B, T, C);
        tb_tensor out = tb_tensor_3d(a->out, B, T, C);
        TRY(norm_forward(ctx, &m->final_norm, mode, &xl, in->key_valid, &out,
                         a->final_norm_cache, a->norm_cache_bytes));
    }
    return TB_OK;
}

/* ---- backward ---------------------------------------------------------------------------- */

/* d(projection inputs) from dq, dk, dv (in a->dqkv) into dh; dtmp scratch. */
static tb_status qkv_backward(tb_ctx *ctx, tfm_layer *L, const tfm_config *c, tfm_acts *a,
                              const tb_tensor *h, tb_tensor *dh, tb_tensor *dtmp)
{
    const size_t B = a->b, T = a->t, C = c->d_model;
    if (c->qkv == TFM_QKV_FUSED) {
        tb_tensor dqkv = tb_tensor_3d(a->dqkv, B, T, 3 * C);
        return tfm_proj_backward(ctx, &L->qkv, h, &dqkv, dh);
    }
    tfm_proj *pr[3] = {&L->q, &L->k, &L->v};
    for (int i = 0; i < 3; i++) {
        tb_tensor d = tb_tensor_3d(a->dqkv + (size_t)i * B * T * C, B, T, C);
        TRY(tfm_proj_backward(ctx, pr[i], h, &d, i ? dtmp : dh));
        if (i)
            TRY(tb_residual_backward(ctx, dtmp, dh)); /* dh += dtmp */
    }
    return TB_OK;
}

/* The attention's gradient views into a->dqkv, as qkv_forward laid them out. */
static void dqkv_heads(const tfm_config *c, tfm_acts *a, tb_tensor t[3], tb_heads hd[3])
{
    const size_t B = a->b, T = a->t, C = c->d_model;
    if (c->qkv == TFM_QKV_FUSED) {
        t[0] = tb_tensor_3d(a->dqkv, B, T, 3 * C);
        for (int i = 0; i < 3; i++)
            hd[i].tensor = &t[0], hd[i].offset = (size_t)i * C;
        return;
    }
    for (int i = 0; i < 3; i++) {
        t[i] = tb_tensor_3d(a->dqkv + (size_t)i * B * T * C, B, T, C);
        hd[i].tensor = &t[i], hd[i].offset = 0;
    }
}

/* The layer's input gradient from its output gradient. On entry *dx holds
 * dL/d(layer output); on return *dx holds dL/d(layer input) (the three
 * (R, C) scratch buffers rotate through dx, d1, d2; d3 is scratch). */
static tb_status layer_backward(tb_ctx *ctx, tfm *m, tfm_acts *a, size_t l, float **dx,
                                float **d1, float **d2, float *d3)
{
    const tfm_config *c = &m->cfg;
    const size_t B = a->b, T = a->t, C = c->d_model, F = c->d_ff;
    const int pre = c->norm_place == TFM_PRE_NORM;
    const uint8_t *valid = a->in.key_valid;
    const size_t nb = a->norm_cache_bytes;
    tfm_layer *L = &m->layers[l];
    tfm_layer_acts *y = &a->layer[l];
    tb_tensor x = tb_tensor_3d(y->x, B, T, C), h1 = tb_tensor_3d(y->h1, B, T, C);
    tb_tensor att = tb_tensor_3d(y->att, B, T, C), r1 = tb_tensor_3d(y->r1, B, T, C);
    tb_tensor x1 = tb_tensor_3d(y->x1, B, T, C), h2 = tb_tensor_3d(y->h2, B, T, C);
    tb_tensor f = tb_tensor_3d(y->f, B, T, F), g = tb_tensor_3d(y->g, B, T, F);
    tb_tensor r2 = tb_tensor_3d(y->r2, B, T, C);
    tb_tensor D = tb_tensor_3d(*dx, B, T, C), D1 = tb_tensor_3d(*d1, B, T, C);
    tb_tensor D2 = tb_tensor_3d(*d2, B, T, C), D3 = tb_tensor_3d(d3, B, T, C);
    tb_tensor df = tb_tensor_3d(a->df, B, T, F);
    tb_tensor dt[3];
    tb_heads dh[3];
    tb_heads q = {NULL, 0}, k = {NULL, 0}, v = {NULL, 0};
    tb_tensor qt[3], kt[2], dkt[2];
    if (c->qkv == TFM_QKV_FUSED) {
        qt[0] = tb_tensor_3d(y->qkv, B, T, 3 * C);
        q.tensor = k.tensor = v.tensor = &qt[0];
        k.offset = C, v.offset = 2 * C;
    } else {
        for (int i = 0; i < 3; i++)
            qt[i] = tb_tensor_3d(y->qkv + (size_t)i * B * T * C, B, T, C);
        q.tensor = &qt[0], k.tensor = &qt[1], v.tensor = &qt[2];
    }
    dqkv_heads(c, a, dt, dh);
    /* With a prefix the attention's keys and values are rebuilt (pk, pv)
     * and its dk, dv land in dpk, dpv (datt[1], datt[2]); prefix_kv_backward
     * hands them on. Without one datt is dh. */
    const tfm_prefix *pf = m->prefix;
    tb_heads datt[3] = {dh[0], dh[1], dh[2]};
    if (pf) {
        prefix_kv(pf, l, B, T, C, a->pk, a->pv, kt, &k, &v);
        dkt[0] = tb_tensor_3d(a->dpk, B, pf->n + T, C);
        dkt[1] = tb_tensor_3d(a->dpv, B, pf->n + T, C);
        datt[1].tensor = &dkt[0], datt[1].offset = 0;
        datt[2].tensor = &dkt[1], datt[2].offset = 0;
    }
    if (pre) {
        /* D = dL/d(out); out = x1 + mo. MLP branch: */
        TRY(tb_dropout_backward(ctx, &D, &y->drop_mlp, &D1));
        TRY(tfm_proj_backward(ctx, &L->fc_out, &g, &D1, &df));
        TRY(tb_gelu_backward(ctx, c->gelu, &f, &df, &df));
        TRY(tfm_proj_backward(ctx, &L->fc_in, &h2, &df, &D2));
        TRY(norm_backward(ctx, &L->norm_mlp, &x1, valid, &D2, y->norm_mlp_cache, nb, &D1));
        TRY(tb_residual_backward(ctx, &D, &D1)); /* D1 = dL/dx1 */
        /* Attention branch: x1 = x + p. */
        TRY(tb_dropout_backward(ctx, &D1, &y->drop_attn, &D2));
        TRY(tfm_proj_backward(ctx, &L->attn_out, &att, &D2, &D)); /* D = dL/datt */
        TRY(tb_attention_backward(ctx, &m->attn, &y->mask, &q, &k, &v, &att, &D, y->att_cache,
                                  a->att_cache_bytes, &datt[0], &datt[1], &datt[2]));
        if (pf)
            prefix_kv_backward(pf, l, B, T, C, a->dpk, a->dpv, &dh[1], &dh[2]);
        TRY(qkv_backward(ctx, L, c, a, &h1, &D2, &D3));
        TRY(norm_backward(ctx, &L->norm_attn, &x, valid, &D2, y->norm_attn_cache, nb, &D));
        TRY(tb_residual_backward(ctx, &D1, &D)); /* D = dL/dx */
        return TB_OK;
    }
    /* Post-norm. D = dL/d(out); out = norm_mlp(r2), r2 = x1 + mo. */
    TRY(norm_backward(ctx, &L->norm_mlp, &r2, valid, &D, y->norm_mlp_cache, nb, &D1));
    TRY(tb_dropout_backward(ctx, &D1, &y->drop_mlp, &D2));
    TRY(tfm_proj_backward(ctx, &L->fc_out, &g, &D2, &df));
    TRY(tb_gelu_backward(ctx, c->gelu, &f, &df, &df));
    TRY(tfm_proj_backward(ctx, &L->fc_in, &x1, &df, &D));
    TRY(tb_residual_backward(ctx, &D1, &D)); /* D = dL/dx1 */
    /* x1 = norm_attn(r1), r1 = x + p. */
    TRY(norm_backward(ctx, &L->norm_attn, &r1, valid, &D, y->norm_attn_cache, nb, &D1));
    TRY(tb_dropout_backward(ctx, &D1, &y->drop_attn, &D2));
    TRY(tfm_proj_backward(ctx, &L->attn_out, &att, &D2, &D)); /* D = dL/datt */
    TRY(tb_attention_backward(ctx, &m->attn, &y->mask, &q, &k, &v, &att, &D, y->att_cache,
                              a->att_cache_bytes, &datt[0], &datt[1], &datt[2]));
    if (pf)
        prefix_kv_backward(pf, l, B, T, C, a->dpk, a->dpv, &dh[1], &dh[2]);
    TRY(qkv_backward(ctx, L, c, a, &x, &D2, &D3));
    TRY(tb_residual_backward(ctx, &D1, &D2)); /* D2 = dL/dx */
    float *t = *dx; /* the result is in d2: rotate it into dx */
    *dx = *d2, *d2 = t;
    return TB_OK;
}

tb_status tfm_backward(tb_ctx *ctx, tfm *m, tfm_acts *a, const float *dout, float *d_embeds)
{
    const tfm_config *c = &m->cfg;
    if (!a->b || !dout)
        return tb_ctx_set_error(ctx, TB_ERR_STATE, "tfm: backward without a forward or dout");
    if (a->inference_only)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: backward with inference-only activations "
                                "(tfm_acts_init_inference keeps no layer's values)");
    if (a->n_prefix != (m->prefix ? m->prefix->n : 0))
        return tb_ctx_set_error(ctx, TB_ERR_STATE,
                                "tfm: the prefix changed between forward and backward");
    const size_t B = a->b, T = a->t, R = B * T, C = c->d_model, L = c->n_layer;
    const uint8_t *valid = a->in.key_valid;
    float *dx = a->dx, *d1 = a->dt1, *d2 = a->dt2;
    tb_tensor D = tb_tensor_3d(dx, B, T, C);
    tb_tensor dO = tb_tensor_3d((float *)(uintptr_t)dout, B, T, C);
    if (c->final_norm) {
        tb_tensor xl = tb_tensor_3d(a->layer[L].x, B, T, C);
        TRY(norm_backward(ctx, &m->final_norm, &xl, valid, &dO, a->final_norm_cache,
                          a->norm_cache_bytes, &D));
    } else {
        memcpy(dx, dout, R * C * sizeof(float));
    }
    for (size_t l = L; l-- > 0;)
        TRY(layer_backward(ctx, m, a, l, &dx, &d1, &d2, a->dt3));
    D = tb_tensor_3d(dx, B, T, C);
    TRY(tb_dropout_backward(ctx, &D, &a->drop_emb, &D));
    if (c->embed_norm) {
        tb_tensor emb = tb_tensor_3d(a->emb, B, T, C), D1 = tb_tensor_3d(d1, B, T, C);
        TRY(norm_backward(ctx, &m->embed_norm, &emb, valid, &D, a->embed_norm_cache,
                          a->norm_cache_bytes, &D1));
        D = D1;
    }
    /* D = dL/d(sum of the embeddings). */
    const tfm_input *in = &a->in;
    if (in->ids)
        TRY(tb_embedding_backward(ctx, &m->wte, in->ids, R, &D));
    TRY(tb_embedding_backward(ctx, &m->wpe, a->pos, R, &D));
    if (c->type_vocab_size) {
        if (in->type_ids) {
            TRY(tb_embedding_backward(ctx, &m->wtt, in->type_ids, R, &D));
        } else if (m->wtt.weight.trainable && m->wtt.weight.grad) { /* all type 0 */
            float *gw = m->wtt.weight.grad;
            for (size_t r = 0; r < R; r++)
                for (size_t j = 0; j < C; j++)
                    gw[j] += D.data[r * C + j];
        }
    }
    if (d_embeds)
        memcpy(d_embeds, D.data, R * C * sizeof(float));
    return TB_OK;
}

/* ---- incremental decoding ------------------------------------------------------------------ */

/* Empty every cache, then append each layer's prefix (if any) for every
 * sequence, as a step appends its tokens. */
static tb_status decoder_enter_prefix(tb_ctx *ctx, tfm_decoder *d)
{
    for (size_t l = 0; l < d->n_layer; l++)
        tb_kv_cache_reset(&d->kv[l]);
    const tfm_prefix *pf = d->prefix;
    if (!pf)
        return TB_OK;
    const size_t B = d->batch, n = d->n_prefix, C = d->kv[0].n_kv_heads * d->kv[0].head_dim;
    tb_tensor kt = tb_tensor_3d(d->pk, B, n, C), vt = tb_tensor_3d(d->pv, B, n, C);
    const tb_heads k = {&kt, 0}, v = {&vt, 0};
    for (size_t l = 0; l < d->n_layer; l++) {
        for (size_t b = 0; b < B; b++)
            for (size_t i = 0; i < n; i++) {
                memcpy(d->pk + (b * n + i) * C, pf->key[l] + i * pf->ld, C * sizeof(float));
                memcpy(d->pv + (b * n + i) * C, pf->value[l] + i * pf->ld, C * sizeof(float));
            }
        const tb_status s = tb_kv_cache_append(ctx, &d->kv[l], &k, &v);
        if (s != TB_OK) { /* step refuses caches without the prefix */
            for (size_t j = 0; j < d->n_layer; j++)
                tb_kv_cache_reset(&d->kv[j]);
            return s;
        }
    }
    return TB_OK;
}

tb_status tfm_decoder_init(tb_ctx *ctx, tfm_decoder *d, const tfm *m, size_t batch,
                           size_t max_len, size_t max_new)
{
    memset(d, 0, sizeof *d);
    const tfm_config *c = &m->cfg;
    if (!c->causal)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: incremental decoding needs a causal stack");
    const tfm_prefix *pf = m->prefix;
    const size_t np = pf ? pf->n : 0, p0 = pf ? pf->first_position : 0;
    if (!batch || !max_len || !max_new || max_len > c->max_positions - p0 || max_new > max_len)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tfm: decoder for %zu sequences of %zu tokens, %zu per step (at "
                                "most %zu positions from position %zu)",
                                batch, max_len, max_new, c->max_positions - p0, p0);
    const size_t L = c->n_layer, C = c->d_model, F = c->d_ff;
    /* R (7 C + F + 1) values (floats and int32 positions), and with a
     * prefix 2 batch n C floats */
    size_t R, per_row = 0, bytes, pb = 0;
    if (!ex_mul_size(batch, max_new, &R) || !add_product(&per_row, 7, C) ||
        !ex_add_size(per_row, F + 1, &per_row) || !ex_mul_size(R, per_row, &bytes) ||
        !ex_mul_size(batch, np, &pb) || !add_product(&bytes, 2 * pb, C) ||
        !ex_mul_size(bytes, sizeof(float), &bytes))
        return tb_ctx_set_error(ctx, TB_ERR_OVERFLOW,
                                "tfm: decoder for %zu sequences, %zu per step overflows", batch,
                                max_new);
    d->batch = batch, d->max_len = max_len, d->max_new = max_new;
    d->prefix = pf, d->n_prefix = np;
    d->kv = calloc(L, sizeof *d->kv);
    d->n_layer = d->kv ? L : 0;
    d->buffer = malloc(bytes);
    if (!d->kv || !d->buffer)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tfm: no memory for the decoder");
    float *at = d->buffer;
    d->x = at, at += R * C;
    d->h = at, at += R * C;
    d->att = at, at += R * C;
    d->p = at, at += R * C;
    d->qkv = at, at += R * 3 * C;
    d->f = at, at += R * F;
    if (np) {
        d->pk = at, at += batch * np * C;
        d->pv = at, at += batch * np * C;
    }
    d->pos = (int32_t *)at;
    for (size_t l = 0; l < L; l++)
        TRY(tb_kv_cache_init(ctx, &d->kv[l], batch, max_len + np, c->n_head, C / c->n_head));
    return decoder_enter_prefix(ctx, d);
}

void tfm_decoder_free(tfm_decoder *d)
{
    for (size_t l = 0; l < d->n_layer; l++)
        tb_kv_cache_free(&d->kv[l]);
    free(d->kv);
    free(d->buffer);
    memset(d, 0, sizeof *d);
}

size_t tfm_decoder_len(const tfm_decoder *d)
{
    return d->n_layer && d->kv[0].len >= d->n_prefix ? d->kv[0].len - d->n_prefix : 0;
}

void tfm_decoder_reset(tfm_decoder *d)
{
    if (!d->prefix) {
        for (size_t l = 0; l < d->n_layer; l++)
            tb_kv_cache_reset(&d->kv[l]);
        return;
    }
    tb_ctx ctx; /* for the appends' messages; they cannot fail on caches init sized */
    tb_ctx_init(&ctx);
    (void)decoder_enter_prefix(&ctx, d);
}

tb_status tfm_decoder_step(tb_ctx *ctx, const tfm *m, tfm_decoder *d, const int32_t *ids,
                           size_t n)
{
    const tfm_config *c = &m->cfg;
    const size_t B = d->batch, C = c->d_model, F = c->d_ff, L = c->n_layer;
    const size_t start = tfm_decoder_len(d), R = B * n;
    const int pre = c->norm_place == TFM_PRE_NORM;
    const tb_mode inf = TB_MODE_INFERENCE;
    if (m->prefix != d->prefix || (d->n_prefix && (!d->n_layer || d->kv[0].len < d->n_prefix)))
        return tb_ctx_set_error(ctx, TB_ERR_STATE,
                                "tfm: the model's prefix is not the one the decoder holds "
                                "(initialise the decoder after tfm_set_prefix(), and reset it "
                                "after an error)");
    if (!n || n > d->max_new || start + n > d->max_len)
        return tb_ctx_set_error(ctx, TB_ERR_BUFFER_TOO_SMALL,
                                "tfm: %zu new tokens after %zu; the decoder takes %zu per step, "
                                "%zu in all",
                                n, start, d->max_new, d->max_len);
    const size_t p0 = d->prefix ? d->prefix->first_position : 0;
    for (size_t r = 0; r < R; r++)
        d->pos[r] = (int32_t)(p0 + start + r % n);
    tb_tensor x = tb_tensor_3d(d->x, B, n, C), h = tb_tensor_3d(d->h, B, n, C);
    tb_tensor att = tb_tensor_3d(d->att, B, n, C), pt = tb_tensor_3d(d->p, B, n, C);
    tb_tensor f = tb_tensor_3d(d->f, B, n, F);
    TRY(tb_embedding_forward(ctx, &m->wte, ids, R, &x));
    TRY(tb_embedding_forward(ctx, &m->wpe, d->pos, R, &h));
    TRY(tb_residual_forward(ctx, &x, &h, &x));
    if (c->type_vocab_size) {
        for (size_t r = 0; r < R; r++)
            memcpy(d->h + r * C, m->wtt.weight.value, C * sizeof(float));
        TRY(tb_residual_forward(ctx, &x, &h, &x));
    }
    /* The norms keep no cache (NULL: inference); a BatchNorm runs on its
     * running statistics. */
    tfm_norm *nrm;
    if (c->embed_norm) {
        nrm = (tfm_norm *)(uintptr_t)&m->embed_norm;
        TRY(norm_forward(ctx, nrm, inf, &x, NULL, &x, NULL, 0));
    }
    for (size_t l = 0; l < L; l++) {
        tfm_layer *Ly = (tfm_layer *)(uintptr_t)&m->layers[l];
        tb_tensor qt[3];
        tb_heads hd[3];
        tfm_layer_acts y;
        y.qkv = d->qkv;
        if (pre)
            TRY(norm_forward(ctx, &Ly->norm_attn, inf, &x, NULL, &h, NULL, 0));
        TRY(qkv_forward(ctx, Ly, c, inf, NULL, &y, pre ? &h : &x, B, n, qt, hd));
        TRY(tb_kv_cache_append(ctx, &d->kv[l], &hd[1], &hd[2]));
        TRY(tb_kv_cache_attend(ctx, &d->kv[l], &m->attn, NULL, &hd[0], &att));
        TRY(tfm_proj_forward(ctx, &Ly->attn_out, inf, NULL, &att, &pt));
        TRY(tb_residual_forward(ctx, &x, &pt, &x));
        if (!pre)
            TRY(norm_forward(ctx, &Ly->norm_attn, inf, &x, NULL, &x, NULL, 0));
        if (pre)
            TRY(norm_forward(ctx, &Ly->norm_mlp, inf, &x, NULL, &h, NULL, 0));
        TRY(tfm_proj_forward(ctx, &Ly->fc_in, inf, NULL, pre ? &h : &x, &f));
        TRY(tb_gelu_forward(ctx, c->gelu, &f, &f));
        TRY(tfm_proj_forward(ctx, &Ly->fc_out, inf, NULL, &f, &pt));
        TRY(tb_residual_forward(ctx, &x, &pt, &x));
        if (!pre)
            TRY(norm_forward(ctx, &Ly->norm_mlp, inf, &x, NULL, &x, NULL, 0));
    }
    if (c->final_norm) {
        nrm = (tfm_norm *)(uintptr_t)&m->final_norm;
        return norm_forward(ctx, nrm, inf, &x, NULL, &h, NULL, 0);
    }
    memcpy(d->h, d->x, R * C * sizeof(float));
    return TB_OK;
}

tb_status tfm_decoder_reorder(tfm_decoder *d, const size_t *src)
{
    const size_t B = d->batch;
    for (size_t b = 0; b < B; b++) /* check before changing anything */
        if (src[b] >= B)
            return TB_ERR_INVALID_ARG;
    if (d->n_layer == 0)
        return TB_OK;
    const tb_kv_cache *k0 = &d->kv[0];
    const size_t W = k0->n_kv_heads * k0->head_dim, row = k0->max_len * W;
    float *tmp = malloc(2 * B * row * sizeof(float));
    if (!tmp)
        return TB_ERR_NO_MEMORY;
    for (size_t l = 0; l < d->n_layer; l++) {
        tb_kv_cache *kv = &d->kv[l];
        memcpy(tmp, kv->keys, B * row * sizeof(float));
        memcpy(tmp + B * row, kv->values, B * row * sizeof(float));
        for (size_t b = 0; b < B; b++) {
            memcpy(kv->keys + b * row, tmp + src[b] * row, kv->len * W * sizeof(float));
            memcpy(kv->values + b * row, tmp + B * row + src[b] * row, kv->len * W * sizeof(float));
        }
    }
    free(tmp);
    return TB_OK;
}
