/* GPT-2-style model wiring for the examples (gpt.h). */
#include "gpt.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_text.h"

#define TRY(call)                       \
    do {                                \
        tb_status try_status_ = (call); \
        if (try_status_ != TB_OK)       \
            return try_status_;         \
    } while (0)

#define LN_EPS 1e-5f
#define GELU TB_GELU_TANH /* GPT-2's "gelu_new" */

/* a * b and a + b, or 0 on overflow. */
static int mul_size(size_t a, size_t b, size_t *out)
{
    if (b && a > SIZE_MAX / b)
        return 0;
    *out = a * b;
    return 1;
}

static int add_size(size_t a, size_t b, size_t *out)
{
    if (a > SIZE_MAX - b)
        return 0;
    *out = a + b;
    return 1;
}

#if defined(__GNUC__) || defined(__clang__)
#define GPT_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define GPT_PRINTF(fmt, args)
#endif

/* The message in ctx, then s. */
static tb_status fail(tb_ctx *ctx, tb_status s, const char *fmt, ...) GPT_PRINTF(3, 4);

static tb_status fail(tb_ctx *ctx, tb_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
    va_end(ap);
    return s;
}

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

static tb_attention_config attention_of(const gpt_config *cfg)
{
    tb_attention_config a = tb_attention_default_config(cfg->n_head, cfg->n_embd / cfg->n_head);
    a.causal = 1;
    return a;
}

tb_status gpt_param_count(const gpt_config *c, size_t *count)
{
    const size_t C = c->n_embd;
    size_t c2, layer, all, vt, t;
    /* L (12 C^2 + 13 C) + (V + T) C + 2 C */
    if (!mul_size(C, C, &c2) || !mul_size(c2, 12, &layer) || !mul_size(C, 13, &t) ||
        !add_size(layer, t, &layer) || !mul_size(layer, c->n_layer, &all) ||
        !add_size(c->vocab_size, c->block_size, &vt) || !mul_size(vt, C, &vt) ||
        !add_size(all, vt, &all) || !mul_size(C, 2, &t) || !add_size(all, t, &all))
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

/* The parameters of one layer, in gpt_param_list() order: name after
 * "h.<i>.", shape in units of C. */
typedef struct layer_param {
    const char *suffix;
    size_t ndim, c0, c1;
} layer_param;

#define LAYER_PARAMS 12
static const layer_param layer_params[LAYER_PARAMS] = {
    {"ln_1.weight", 1, 1, 0},       {"ln_1.bias", 1, 1, 0},
    {"attn.c_attn.weight", 2, 1, 3}, {"attn.c_attn.bias", 1, 3, 0},
    {"attn.c_proj.weight", 2, 1, 1}, {"attn.c_proj.bias", 1, 1, 0},
    {"ln_2.weight", 1, 1, 0},       {"ln_2.bias", 1, 1, 0},
    {"mlp.c_fc.weight", 2, 1, 4},    {"mlp.c_fc.bias", 1, 4, 0},
    {"mlp.c_proj.weight", 2, 4, 1},  {"mlp.c_proj.bias", 1, 1, 0},
};

/* Parameters outside the layers: wte (V, C) and wpe (T, C) first, ln_f
 * last. */
static size_t param_total(const gpt_config *c)
{
    return 4 + LAYER_PARAMS * c->n_layer;
}

/* Name and shape of parameter k (gpt_param_list() order). */
static void param_at(const gpt_config *c, size_t k, char *name, size_t cap, size_t *ndim,
                     size_t shape[2])
{
    const size_t C = c->n_embd, last = param_total(c) - 2;
    shape[1] = C;
    *ndim = 2;
    if (k == 0) {
        snprintf(name, cap, "wte.weight");
        shape[0] = c->vocab_size;
    } else if (k == 1) {
        snprintf(name, cap, "wpe.weight");
        shape[0] = c->block_size;
    } else if (k >= last) {
        snprintf(name, cap, "ln_f.%s", k == last ? "weight" : "bias");
        *ndim = 1, shape[0] = C;
    } else {
        const layer_param *lp = &layer_params[(k - 2) % LAYER_PARAMS];
        snprintf(name, cap, "h.%zu.%s", (k - 2) / LAYER_PARAMS, lp->suffix);
        *ndim = lp->ndim, shape[0] = lp->c0 * C, shape[1] = lp->c1 * C;
    }
}

/* Shape of the parameter called name, or 0 if the configuration has none:
 * parsed, not looked up, so this needs no table of names. */
static int param_shape(const gpt_config *c, const char *name, size_t *ndim, size_t shape[2])
{
    size_t k;
    if (strcmp(name, "wte.weight") == 0)
        k = 0;
    else if (strcmp(name, "wpe.weight") == 0)
        k = 1;
    else if (strcmp(name, "ln_f.weight") == 0)
        k = param_total(c) - 2;
    else if (strcmp(name, "ln_f.bias") == 0)
        k = param_total(c) - 1;
    else {
        /* "h.<i>.<suffix>" with i in canonical decimal (no leading zero) */
        if (strncmp(name, "h.", 2) != 0 || !(name[2] >= '0' && name[2] <= '9') ||
            (name[2] == '0' && name[3] != '.'))
            return 0;
        size_t i = 0;
        const char *p = name + 2;
        for (; *p >= '0' && *p <= '9'; p++) {
            i = i * 10 + (size_t)(*p - '0');
            if (i >= c->n_layer)
                return 0;
        }
        if (*p != '.')
            return 0;
        size_t j = 0;
        while (j < LAYER_PARAMS && strcmp(p + 1, layer_params[j].suffix) != 0)
            j++;
        if (j == LAYER_PARAMS)
            return 0;
        k = 2 + i * LAYER_PARAMS + j;
    }
    char unused[8];
    param_at(c, k, unused, sizeof unused, ndim, shape);
    return 1;
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

/* The first tensor of a kind the configuration implies and the file lacks. */
static tb_status name_missing(tb_ctx *ctx, const tb_st_file *f, const gpt_config *c, int kind,
                              size_t have)
{
    char name[TB_PARAM_NAME_MAX], full[TB_PARAM_NAME_MAX + 16];
    size_t ndim, shape[2];
    for (size_t k = 0; k < param_total(c); k++) {
        param_at(c, k, name, sizeof name, &ndim, shape);
        snprintf(full, sizeof full, "%s%s", kind_prefix[kind], name);
        if (!tb_st_find(f, full))
            return fail(ctx, TB_ERR_NOT_FOUND,
                        "gpt: the configuration (%zu layers) implies tensor '%s', which the "
                        "file lacks (%zu of %zu such tensors present)",
                        c->n_layer, full, have, param_total(c));
    }
    return fail(ctx, TB_ERR_NOT_FOUND, "gpt: %zu of %zu tensors '%s*' present", have,
                param_total(c), kind_prefix[kind]);
}

/* The file's tensors are exactly the parameters of c, each with its shape,
 * and optionally the Adam state of all of them. */
static tb_status check_tensors(tb_ctx *ctx, const tb_st_file *f, const gpt_config *c)
{
    size_t count[N_KINDS] = {0, 0, 0, 0};
    for (size_t i = 0; i < f->count; i++) {
        const tb_st_tensor *t = &f->tensors[i];
        const char *pname;
        const int kind = kind_of(t->name, &pname);
        size_t ndim, shape[2];
        if (!param_shape(c, pname, &ndim, shape))
            return fail(ctx, TB_ERR_INVALID_ARG,
                        "gpt: unexpected tensor '%.80s': not part of a model of %zu layers",
                        t->name, c->n_layer);
        if (t->ndim != ndim || t->shape[0] != shape[0] || (ndim == 2 && t->shape[1] != shape[1])) {
            char got[64] = "(";
            for (size_t d = 0; d < t->ndim && strlen(got) < 40; d++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%zu", d ? ", " : "",
                         t->shape[d]);
            snprintf(got + strlen(got), sizeof got - strlen(got), ")");
            return ndim == 1 ? fail(ctx, TB_ERR_SHAPE,
                                    "gpt: tensor '%.80s' has shape %s; the configuration "
                                    "implies (%zu)",
                                    t->name, got, shape[0])
                             : fail(ctx, TB_ERR_SHAPE,
                                    "gpt: tensor '%.80s' has shape %s; the configuration "
                                    "implies (%zu, %zu)",
                                    t->name, got, shape[0], shape[1]);
        }
        if (!float_dtype(t->dtype))
            return fail(ctx, TB_ERR_UNSUPPORTED,
                        "gpt: tensor '%.80s' is not F32, F16, BF16 or F64", t->name);
        count[kind]++;
    }
    const size_t n = param_total(c);
    /* Names are unique (the parser refuses duplicates) and each maps to a
     * parameter, so a full count means every one is there. */
    if (count[0] != n)
        return name_missing(ctx, f, c, 0, count[0]);
    const int with_state = count[1] || count[2] || count[3];
    for (int k = 1; with_state && k < N_KINDS; k++)
        if (count[k] != n && !(k == 3 && count[k] == 0)) /* vmax only with AMSGrad */
            return name_missing(ctx, f, c, k, count[k]);
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

static tb_status normal_init(tb_ctx *ctx, tb_rng *rng, tb_param *p, float std)
{
    return tb_rng_fill_normal(ctx, rng, p->value, p->numel, 0.0f, std);
}

static void zero(tb_param *p)
{
    memset(p->value, 0, p->numel * sizeof(float));
}

static tb_status linear_init(tb_ctx *ctx, tb_linear *l, size_t in, size_t out, tb_rng *rng,
                             float std)
{
    TRY(tb_linear_init_layout(ctx, l, in, out, 1, TB_LINEAR_IN_OUT, rng));
    TRY(normal_init(ctx, rng, &l->weight, std));
    zero(&l->bias);
    return TB_OK;
}

tb_status gpt_init(tb_ctx *ctx, gpt *m, const gpt_config *cfg, tb_rng *rng)
{
    memset(m, 0, sizeof *m);
    TRY(gpt_config_check(ctx, cfg));
    m->cfg = *cfg;
    const size_t C = cfg->n_embd, L = cfg->n_layer;
    const float std = 0.02f, proj_std = 0.02f / sqrtf(2.0f * (float)L);
    TRY(tb_embedding_init(ctx, &m->wte, cfg->vocab_size, C, rng));
    TRY(tb_embedding_init(ctx, &m->wpe, cfg->block_size, C, rng));
    TRY(normal_init(ctx, rng, &m->wte.weight, std));
    TRY(normal_init(ctx, rng, &m->wpe.weight, std));
    m->h = calloc(L, sizeof *m->h);
    if (!m->h)
        return TB_ERR_NO_MEMORY;
    for (size_t l = 0; l < L; l++) {
        gpt_block *b = &m->h[l];
        TRY(tb_layernorm_init(ctx, &b->ln_1, C, LN_EPS, TB_NORM_SCALE | TB_NORM_SHIFT));
        TRY(linear_init(ctx, &b->c_attn, C, 3 * C, rng, std));
        TRY(linear_init(ctx, &b->attn_proj, C, C, rng, proj_std));
        TRY(tb_layernorm_init(ctx, &b->ln_2, C, LN_EPS, TB_NORM_SCALE | TB_NORM_SHIFT));
        TRY(linear_init(ctx, &b->c_fc, C, 4 * C, rng, std));
        TRY(linear_init(ctx, &b->mlp_proj, 4 * C, C, rng, proj_std));
    }
    TRY(tb_layernorm_init(ctx, &m->ln_f, C, LN_EPS, TB_NORM_SCALE | TB_NORM_SHIFT));
    TRY(tb_linear_view(ctx, &m->lm_head, &m->wte.weight, NULL, TB_LINEAR_OUT_IN));
    m->attn = attention_of(cfg);
    TRY(tb_param_list_init(ctx, &m->params));
    return gpt_param_list(ctx, m, "", &m->params);
}

void gpt_free(gpt *m)
{
    if (!m)
        return;
    tb_param_list_free(&m->params);
    tb_embedding_free(&m->wte);
    tb_embedding_free(&m->wpe);
    if (m->h)
        for (size_t l = 0; l < m->cfg.n_layer; l++) {
            gpt_block *b = &m->h[l];
            tb_layernorm_free(&b->ln_1);
            tb_layernorm_free(&b->ln_2);
            tb_linear_free(&b->c_attn);
            tb_linear_free(&b->attn_proj);
            tb_linear_free(&b->c_fc);
            tb_linear_free(&b->mlp_proj);
        }
    free(m->h);
    tb_layernorm_free(&m->ln_f);
    tb_linear_free(&m->lm_head);
    memset(m, 0, sizeof *m);
}

tb_status gpt_param_list(tb_ctx *ctx, gpt *m, const char *prefix, tb_param_list *list)
{
    char name[TB_PARAM_NAME_MAX];
#define ADD(fn, obj, fmt, ...)                                        \
    do {                                                              \
        snprintf(name, sizeof name, "%s" fmt, prefix, __VA_ARGS__);   \
        TRY(fn(ctx, obj, name, list));                                \
    } while (0)
    ADD(tb_embedding_params, &m->wte, "%s", "wte");
    ADD(tb_embedding_params, &m->wpe, "%s", "wpe");
    for (size_t l = 0; l < m->cfg.n_layer; l++) {
        gpt_block *b = &m->h[l];
        ADD(tb_layernorm_params, &b->ln_1, "h.%zu.ln_1", l);
        ADD(tb_linear_params, &b->c_attn, "h.%zu.attn.c_attn", l);
        ADD(tb_linear_params, &b->attn_proj, "h.%zu.attn.c_proj", l);
        ADD(tb_layernorm_params, &b->ln_2, "h.%zu.ln_2", l);
        ADD(tb_linear_params, &b->c_fc, "h.%zu.mlp.c_fc", l);
        ADD(tb_linear_params, &b->mlp_proj, "h.%zu.mlp.c_proj", l);
    }
    ADD(tb_layernorm_params, &m->ln_f, "%s", "ln_f");
#undef ADD
    return TB_OK;
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
        if (!tb_param_list_find(&list, name) && !ignorable(name)) {
            snprintf(ctx->error, sizeof ctx->error,
                     "gpt: '%s' holds tensor '%s', which this model (%zu layers) does not have: "
                     "a checkpoint of another configuration",
                     path, name, m->cfg.n_layer);
            s = TB_ERR_INVALID_ARG;
        }
    }
    if (s == TB_OK)
        s = tb_st_load_params(ctx, &f, &list, TB_ST_ALLOW_UNEXPECTED, NULL, NULL);
    tb_param_list_free(&list);
    tb_st_close(&f);
    return s;
}

/* ---- activations ---------------------------------------------------------------- */

static tb_status take(tb_ctx *ctx, tb_arena *ar, size_t n, float **out)
{
    void *p = NULL;
    tb_status s = tb_arena_alloc(ctx, ar, n * sizeof(float), &p);
    *out = p;
    return s;
}

/* Lay out (or, with ar NULL, count into *total) every buffer. The caller
 * has checked that R (4C + V) floats fit in size_t, which bounds every
 * product below; the sums are checked by tb_arena_size_add(). */
static tb_status acts_layout(tb_ctx *ctx, gpt_acts *a, const gpt_config *cfg, tb_arena *ar,
                             size_t *total)
{
    const size_t R = a->max_b * a->max_t, C = cfg->n_embd, V = cfg->vocab_size;
    const size_t L = cfg->n_layer;
    gpt_layer_acts counted; /* where counting "puts" a layer's buffers */
#define BUF(ptr, n)                                                  \
    do {                                                             \
        if (ar)                                                      \
            TRY(take(ctx, ar, (n), &(ptr)));                         \
        else                                                         \
            TRY(tb_arena_size_add(total, (n) * sizeof(float)));      \
    } while (0)
#define RAW(ptr, bytes)                                              \
    do {                                                             \
        if (ar)                                                      \
            TRY(tb_arena_alloc(ctx, ar, (bytes), &(ptr)));           \
        else                                                         \
            TRY(tb_arena_size_add(total, (bytes)));                  \
    } while (0)
    for (size_t l = 0; l <= L; l++) {
        gpt_layer_acts *la = ar ? &a->layer[l] : &counted;
        BUF(la->x, R * C);
        if (l == L)
            break;
        BUF(la->a1, R * C);
        BUF(la->qkv, R * 3 * C);
        BUF(la->att, R * C);
        BUF(la->p, R * C);
        BUF(la->x1, R * C);
        BUF(la->a2, R * C);
        BUF(la->f, R * 4 * C);
        BUF(la->g, R * 4 * C);
        BUF(la->mo, R * C);
        RAW(la->ln1_cache, a->ln_cache_bytes);
        RAW(la->ln2_cache, a->ln_cache_bytes);
        RAW(la->att_cache, a->att_cache_bytes);
    }
    BUF(a->emb, R * C);
    BUF(a->xf, R * C);
    BUF(a->logits, R * V);
    BUF(a->dlogits, R * V);
    RAW(a->lnf_cache, a->ln_cache_bytes);
    RAW(a->ce_cache, a->ce_cache_bytes);
    BUF(a->dx, R * C);
    BUF(a->dt1, R * C);
    BUF(a->dt2, R * C);
    BUF(a->d4, R * 4 * C);
    BUF(a->dqkv, R * 3 * C);
    void *pos = NULL;
    RAW(pos, R * sizeof(int32_t));
    a->pos = pos;
#undef BUF
#undef RAW
    return TB_OK;
}

/* max_b, max_t and the cache sizes of a, which must fit in memory. */
static tb_status acts_header(tb_ctx *ctx, gpt_acts *a, const gpt_config *cfg, size_t max_b,
                             size_t max_t)
{
    memset(a, 0, sizeof *a);
    if (!max_b || !max_t || max_t > cfg->block_size)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "gpt: activations for %zu x %zu tokens (the context is %zu)", max_b, max_t,
                    cfg->block_size);
    size_t R, widest;
    if (!mul_size(max_b, max_t, &R) || !mul_size(cfg->n_embd, 4, &widest) ||
        !add_size(widest, cfg->vocab_size, &widest) || !mul_size(R, widest, &widest) ||
        !mul_size(widest, sizeof(float), &widest))
        return fail(ctx, TB_ERR_OVERFLOW, "gpt: activations for %zu x %zu tokens overflow",
                    max_b, max_t);
    a->max_b = max_b, a->max_t = max_t;
    const tb_attention_config att = attention_of(cfg);
    TRY(tb_layernorm_cache_size(R, &a->ln_cache_bytes));
    TRY(tb_attention_cache_size(&att, max_b, max_t, &a->att_cache_bytes));
    TRY(tb_cross_entropy_cache_size(R, &a->ce_cache_bytes));
    return TB_OK;
}

tb_status gpt_acts_size(tb_ctx *ctx, const gpt_config *cfg, size_t max_b, size_t max_t,
                        size_t *bytes)
{
    gpt_acts a;
    TRY(acts_header(ctx, &a, cfg, max_b, max_t));
    size_t total = 0;
    TRY(acts_layout(ctx, &a, cfg, NULL, &total));
    if (!add_size(total, TB_ARENA_ALIGN, &total))
        return fail(ctx, TB_ERR_OVERFLOW, "gpt: activations for %zu x %zu tokens overflow",
                    max_b, max_t);
    *bytes = total;
    return TB_OK;
}

tb_status gpt_acts_init(tb_ctx *ctx, gpt_acts *a, const gpt *m, size_t max_b, size_t max_t)
{
    memset(a, 0, sizeof *a);
    size_t total;
    TRY(gpt_acts_size(ctx, &m->cfg, max_b, max_t, &total));
    TRY(acts_header(ctx, a, &m->cfg, max_b, max_t));
    a->layer = calloc(m->cfg.n_layer + 1, sizeof *a->layer);
    if (!a->layer)
        return TB_ERR_NO_MEMORY;
    a->buffer = malloc(total);
    if (!a->buffer)
        return TB_ERR_NO_MEMORY;
    a->bytes = total;
    tb_arena ar;
    TRY(tb_arena_init(&ar, a->buffer, total));
    return acts_layout(ctx, a, &m->cfg, &ar, NULL);
}

void gpt_acts_free(gpt_acts *a)
{
    free(a->buffer);
    free(a->layer);
    memset(a, 0, sizeof *a);
}

/* ---- training forward / backward ----------------------------------------------------- */

tb_status gpt_forward(tb_ctx *ctx, gpt *m, gpt_acts *a, tb_mode mode, tb_rng *rng,
                      const int32_t *tokens, const int32_t *targets, size_t B, size_t T,
                      float *loss)
{
    if (B > a->max_b || T > a->max_t || !B || !T) {
        snprintf(ctx->error, sizeof ctx->error,
                 "gpt: a batch of %zu x %zu tokens; the activations hold %zu x %zu", B, T,
                 a->max_b, a->max_t);
        return TB_ERR_SHAPE;
    }
    const size_t R = B * T, C = m->cfg.n_embd, V = m->cfg.vocab_size, L = m->cfg.n_layer;
    const float p = mode == TB_MODE_TRAINING ? m->cfg.dropout : 0.0f;
    a->b = B, a->t = T;
    for (size_t r = 0; r < R; r++)
        a->pos[r] = (int32_t)(r % T);
    tb_tensor emb = tb_tensor_3d(a->emb, B, T, C), x0 = tb_tensor_3d(a->layer[0].x, B, T, C);
    tb_tensor pe = tb_tensor_3d(a->xf, B, T, C); /* xf as scratch for the positions */
    TRY(tb_embedding_forward(ctx, &m->wte, tokens, R, &emb));
    TRY(tb_embedding_forward(ctx, &m->wpe, a->pos, R, &pe));
    TRY(tb_residual_forward(ctx, &emb, &pe, &emb));
    TRY(tb_dropout_forward(ctx, mode, p, rng, &emb, &x0, &a->drop_emb));
    for (size_t l = 0; l < L; l++) {
        gpt_block *b = &m->h[l];
        gpt_layer_acts *la = &a->layer[l];
        tb_tensor x = tb_tensor_3d(la->x, B, T, C), a1 = tb_tensor_3d(la->a1, B, T, C);
        tb_tensor qkv = tb_tensor_3d(la->qkv, B, T, 3 * C), att = tb_tensor_3d(la->att, B, T, C);
        tb_tensor pt = tb_tensor_3d(la->p, B, T, C), x1 = tb_tensor_3d(la->x1, B, T, C);
        tb_tensor a2 = tb_tensor_3d(la->a2, B, T, C), f = tb_tensor_3d(la->f, B, T, 4 * C);
        tb_tensor g = tb_tensor_3d(la->g, B, T, 4 * C), mo = tb_tensor_3d(la->mo, B, T, C);
        tb_tensor xn = tb_tensor_3d(a->layer[l + 1].x, B, T, C);
        memset(&la->mask, 0, sizeof la->mask);
        if (p > 0.0f)
            TRY(tb_attention_dropout_draw(ctx, &m->attn, &la->mask, rng, p, B, T, T));
        TRY(tb_layernorm_forward(ctx, &b->ln_1, &x, &a1, la->ln1_cache, a->ln_cache_bytes));
        TRY(tb_linear_forward(ctx, &b->c_attn, &a1, &qkv));
        tb_heads q = {&qkv, 0}, k = {&qkv, C}, v = {&qkv, 2 * C};
        TRY(tb_attention_forward(ctx, &m->attn, mode, &la->mask, &q, &k, &v, &att, la->att_cache,
                                 a->att_cache_bytes));
        TRY(tb_linear_forward(ctx, &b->attn_proj, &att, &pt));
        TRY(tb_dropout_forward(ctx, mode, p, rng, &pt, &pt, &la->drop_attn));
        TRY(tb_residual_forward(ctx, &x, &pt, &x1));
        TRY(tb_layernorm_forward(ctx, &b->ln_2, &x1, &a2, la->ln2_cache, a->ln_cache_bytes));
        TRY(tb_linear_forward(ctx, &b->c_fc, &a2, &f));
        TRY(tb_gelu_forward(ctx, GELU, &f, &g));
        TRY(tb_linear_forward(ctx, &b->mlp_proj, &g, &mo));
        TRY(tb_dropout_forward(ctx, mode, p, rng, &mo, &mo, &la->drop_mlp));
        TRY(tb_residual_forward(ctx, &x1, &mo, &xn));
    }
    tb_tensor xl = tb_tensor_3d(a->layer[L].x, B, T, C), xf = tb_tensor_3d(a->xf, B, T, C);
    tb_tensor lo = tb_tensor_2d(a->logits, R, V);
    TRY(tb_layernorm_forward(ctx, &m->ln_f, &xl, &xf, a->lnf_cache, a->ln_cache_bytes));
    tb_tensor xf2 = tb_tensor_2d(a->xf, R, C);
    TRY(tb_linear_forward(ctx, &m->lm_head, &xf2, &lo));
    if (targets)
        TRY(tb_cross_entropy_forward(ctx, NULL, &lo, targets, R, loss, a->ce_cache,
                                     a->ce_cache_bytes));
    return TB_OK;
}

tb_status gpt_backward(tb_ctx *ctx, gpt *m, gpt_acts *a, const int32_t *tokens,
                       const int32_t *targets, float dloss)
{
    const size_t B = a->b, T = a->t, R = B * T, C = m->cfg.n_embd, V = m->cfg.vocab_size;
    const size_t L = m->cfg.n_layer;
    tb_tensor lo = tb_tensor_2d(a->logits, R, V), dlo = tb_tensor_2d(a->dlogits, R, V);
    tb_tensor xf2 = tb_tensor_2d(a->xf, R, C), dt1_2 = tb_tensor_2d(a->dt1, R, C);
    TRY(tb_cross_entropy_backward(ctx, NULL, &lo, targets, R, dloss, a->ce_cache,
                                  a->ce_cache_bytes, &dlo));
    TRY(tb_linear_backward(ctx, &m->lm_head, &xf2, &dlo, &dt1_2)); /* into wte.grad */
    tb_tensor xl = tb_tensor_3d(a->layer[L].x, B, T, C), dt1 = tb_tensor_3d(a->dt1, B, T, C);
    tb_tensor dx = tb_tensor_3d(a->dx, B, T, C), dt2 = tb_tensor_3d(a->dt2, B, T, C);
    TRY(tb_layernorm_backward(ctx, &m->ln_f, &xl, &dt1, a->lnf_cache, a->ln_cache_bytes, &dx));
    tb_tensor d4 = tb_tensor_3d(a->d4, B, T, 4 * C), dqkv = tb_tensor_3d(a->dqkv, B, T, 3 * C);
    for (size_t li = L; li-- > 0;) {
        gpt_block *b = &m->h[li];
        gpt_layer_acts *la = &a->layer[li];
        tb_tensor x = tb_tensor_3d(la->x, B, T, C), a1 = tb_tensor_3d(la->a1, B, T, C);
        tb_tensor qkv = tb_tensor_3d(la->qkv, B, T, 3 * C), att = tb_tensor_3d(la->att, B, T, C);
        tb_tensor x1 = tb_tensor_3d(la->x1, B, T, C), a2 = tb_tensor_3d(la->a2, B, T, C);
        tb_tensor f = tb_tensor_3d(la->f, B, T, 4 * C), g = tb_tensor_3d(la->g, B, T, 4 * C);
        /* dx = dL/d(layer output). MLP branch: */
        TRY(tb_dropout_backward(ctx, &dx, &la->drop_mlp, &dt1));
        TRY(tb_linear_backward(ctx, &b->mlp_proj, &g, &dt1, &d4));
        TRY(tb_gelu_backward(ctx, GELU, &f, &d4, &d4));
        TRY(tb_linear_backward(ctx, &b->c_fc, &a2, &d4, &dt2));
        TRY(tb_layernorm_backward(ctx, &b->ln_2, &x1, &dt2, la->ln2_cache, a->ln_cache_bytes,
                                  &dt1));
        TRY(tb_residual_backward(ctx, &dx, &dt1)); /* dt1 = dL/dx1 */
        /* Attention branch: */
        TRY(tb_dropout_backward(ctx, &dt1, &la->drop_attn, &dt2));
        TRY(tb_linear_backward(ctx, &b->attn_proj, &att, &dt2, &dx)); /* dx = dL/datt */
        tb_heads q = {&qkv, 0}, k = {&qkv, C}, v = {&qkv, 2 * C};
        tb_heads dq = {&dqkv, 0}, dk = {&dqkv, C}, dv = {&dqkv, 2 * C};
        TRY(tb_attention_backward(ctx, &m->attn, &la->mask, &q, &k, &v, &att, &dx, la->att_cache,
                                  a->att_cache_bytes, &dq, &dk, &dv));
        TRY(tb_linear_backward(ctx, &b->c_attn, &a1, &dqkv, &dt2));
        TRY(tb_layernorm_backward(ctx, &b->ln_1, &x, &dt2, la->ln1_cache, a->ln_cache_bytes,
                                  &dx));
        TRY(tb_residual_backward(ctx, &dt1, &dx)); /* dx = dL/d(layer input) */
    }
    TRY(tb_dropout_backward(ctx, &dx, &a->drop_emb, &dx));
    TRY(tb_embedding_backward(ctx, &m->wte, tokens, R, &dx));
    return tb_embedding_backward(ctx, &m->wpe, a->pos, R, &dx);
}

/* ---- incremental decoding ---------------------------------------------------------------- */

tb_status gpt_decoder_init(tb_ctx *ctx, gpt_decoder *d, const gpt *m, size_t batch,
                           size_t max_len, size_t max_new)
{
    memset(d, 0, sizeof *d);
    if (!batch || !max_len || !max_new || max_len > m->cfg.block_size || max_new > max_len) {
        snprintf(ctx->error, sizeof ctx->error,
                 "gpt: decoder for %zu sequences of %zu tokens, %zu per step (the context is %zu)",
                 batch, max_len, max_new, m->cfg.block_size);
        return TB_ERR_INVALID_ARG;
    }
    const size_t L = m->cfg.n_layer, C = m->cfg.n_embd, V = m->cfg.vocab_size;
    /* R (11 C + 1) + batch V values (floats and int32 positions) */
    size_t R, per_row, floats, bv, bytes;
    if (!mul_size(batch, max_new, &R) || !mul_size(C, 11, &per_row) ||
        !add_size(per_row, 1, &per_row) || !mul_size(R, per_row, &floats) ||
        !mul_size(batch, V, &bv) || !add_size(floats, bv, &floats) ||
        !mul_size(floats, sizeof(float), &bytes))
        return fail(ctx, TB_ERR_OVERFLOW, "gpt: decoder for %zu sequences, %zu per step overflows",
                    batch, max_new);
    d->batch = batch, d->max_len = max_len, d->max_new = max_new;
    d->kv = calloc(L, sizeof *d->kv);
    d->n_layer = d->kv ? L : 0;
    d->buffer = malloc(bytes);
    if (!d->kv || !d->buffer)
        return TB_ERR_NO_MEMORY;
    float *at = d->buffer;
    d->x = at, at += R * C;
    d->a = at, at += R * C;
    d->att = at, at += R * C;
    d->p = at, at += R * C;
    d->qkv = at, at += R * 3 * C;
    d->f = at, at += R * 4 * C;
    d->logits = at, at += batch * V;
    d->pos = (int32_t *)at;
    for (size_t l = 0; l < L; l++)
        TRY(tb_kv_cache_init(ctx, &d->kv[l], batch, max_len, m->cfg.n_head, C / m->cfg.n_head));
    return TB_OK;
}

void gpt_decoder_free(gpt_decoder *d)
{
    for (size_t l = 0; l < d->n_layer; l++)
        tb_kv_cache_free(&d->kv[l]);
    free(d->kv);
    free(d->buffer);
    memset(d, 0, sizeof *d);
}

void gpt_decoder_reset(gpt_decoder *d)
{
    for (size_t l = 0; l < d->n_layer; l++)
        tb_kv_cache_reset(&d->kv[l]);
}

tb_status gpt_decoder_step(tb_ctx *ctx, const gpt *m, gpt_decoder *d, const int32_t *tokens,
                           size_t n, float *all_logits)
{
    const size_t B = d->batch, C = m->cfg.n_embd, V = m->cfg.vocab_size, L = m->cfg.n_layer;
    const size_t start = d->kv[0].len, R = B * n;
    if (!n || n > d->max_new || start + n > d->max_len) {
        snprintf(ctx->error, sizeof ctx->error,
                 "gpt: %zu new tokens after %zu; the decoder takes %zu per step, %zu in all", n,
                 start, d->max_new, d->max_len);
        return TB_ERR_BUFFER_TOO_SMALL;
    }
    for (size_t r = 0; r < R; r++)
        d->pos[r] = (int32_t)(start + r % n);
    tb_tensor x = tb_tensor_3d(d->x, B, n, C), a = tb_tensor_3d(d->a, B, n, C);
    tb_tensor qkv = tb_tensor_3d(d->qkv, B, n, 3 * C), att = tb_tensor_3d(d->att, B, n, C);
    tb_tensor pt = tb_tensor_3d(d->p, B, n, C), f = tb_tensor_3d(d->f, B, n, 4 * C);
    TRY(tb_embedding_forward(ctx, &m->wte, tokens, R, &x));
    TRY(tb_embedding_forward(ctx, &m->wpe, d->pos, R, &a));
    TRY(tb_residual_forward(ctx, &x, &a, &x));
    for (size_t l = 0; l < L; l++) {
        const gpt_block *b = &m->h[l];
        /* LayerNorm forward without a cache is inference. */
        TRY(tb_layernorm_forward(ctx, &b->ln_1, &x, &a, NULL, 0));
        TRY(tb_linear_forward(ctx, &b->c_attn, &a, &qkv));
        tb_heads q = {&qkv, 0}, k = {&qkv, C}, v = {&qkv, 2 * C};
        TRY(tb_kv_cache_append(ctx, &d->kv[l], &k, &v));
        TRY(tb_kv_cache_attend(ctx, &d->kv[l], &m->attn, NULL, &q, &att));
        TRY(tb_linear_forward(ctx, &b->attn_proj, &att, &pt));
        TRY(tb_residual_forward(ctx, &x, &pt, &x));
        TRY(tb_layernorm_forward(ctx, &b->ln_2, &x, &a, NULL, 0));
        TRY(tb_linear_forward(ctx, &b->c_fc, &a, &f));
        TRY(tb_gelu_forward(ctx, GELU, &f, &f));
        TRY(tb_linear_forward(ctx, &b->mlp_proj, &f, &pt));
        TRY(tb_residual_forward(ctx, &x, &pt, &x));
    }
    TRY(tb_layernorm_forward(ctx, &m->ln_f, &x, &a, NULL, 0));
    if (all_logits) {
        tb_tensor a2 = tb_tensor_2d(d->a, R, C), lo = tb_tensor_2d(all_logits, R, V);
        TRY(tb_linear_forward(ctx, &m->lm_head, &a2, &lo));
        for (size_t bi = 0; bi < B; bi++)
            memcpy(d->logits + bi * V, all_logits + (bi * n + n - 1) * V, V * sizeof(float));
        return TB_OK;
    }
    /* Only the last position of each sequence needs logits. */
    for (size_t bi = 0; bi < B; bi++)
        memmove(d->x + bi * C, d->a + (bi * n + n - 1) * C, C * sizeof(float));
    tb_tensor last = tb_tensor_2d(d->x, B, C), lo = tb_tensor_2d(d->logits, B, V);
    return tb_linear_forward(ctx, &m->lm_head, &last, &lo);
}

tb_status gpt_decoder_reorder(gpt_decoder *d, const size_t *src)
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
