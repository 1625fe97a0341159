/* The P-tuning prompt encoder, as PEFT's PromptEncoder. */
#include <stdio.h>
#include <string.h>

#include "../core/internal.h"

#define TRY(call)                    \
    do {                             \
        const tb_status s_ = (call); \
        if (s_ != TB_OK)             \
            return s_;               \
    } while (0)

/* Widths: the LSTM's output (0 for MLP) and the head's hidden layers. */
static size_t lstm_width(const tb_ptuning_config *c)
{
    return c->type == TB_PTUNING_LSTM ? 2 * c->encoder_hidden_size : 0;
}

static size_t head_width(const tb_ptuning_config *c)
{
    return c->type == TB_PTUNING_LSTM ? 2 * c->encoder_hidden_size : c->encoder_hidden_size;
}

tb_status tb_ptuning_init(tb_ctx *ctx, tb_ptuning *p, const tb_ptuning_config *config,
                          tb_rng *rng)
{
    const char *fn = __func__;
    if (p)
        memset(p, 0, sizeof *p);
    if (!ctx || !p || !config || !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, p, config and rng must not be NULL");
    const tb_ptuning_config *c = config;
    if (c->num_virtual_tokens == 0 || c->token_dim == 0 || c->encoder_hidden_size == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "num_virtual_tokens, token_dim and encoder_hidden_size must be >= 1");
    if (c->type != TB_PTUNING_LSTM && c->type != TB_PTUNING_MLP)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown encoder type %d", (int)c->type);
    if (c->encoder_hidden_size > (SIZE_MAX / 4) / sizeof(float))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "encoder_hidden_size overflows");
    p->config = *c;
    const size_t n = c->num_virtual_tokens, d = c->token_dim, H = c->encoder_hidden_size;
    tb_status s = tb_embedding_init(ctx, &p->embedding, n, d, rng);
    if (s == TB_OK && c->type == TB_PTUNING_LSTM) {
        const tb_lstm_config lc = {d, H, c->encoder_num_layers, 1, c->encoder_dropout};
        s = tb_lstm_init(ctx, &p->lstm, &lc, rng);
        if (s == TB_OK)
            s = tb_linear_init(ctx, &p->mlp[0], 2 * H, 2 * H, 1, rng);
        if (s == TB_OK)
            s = tb_linear_init(ctx, &p->mlp[1], 2 * H, d, 1, rng);
        p->n_mlp = 2;
    } else if (s == TB_OK) {
        s = tb_linear_init(ctx, &p->mlp[0], d, H, 1, rng);
        if (s == TB_OK)
            s = tb_linear_init(ctx, &p->mlp[1], H, H, 1, rng);
        if (s == TB_OK)
            s = tb_linear_init(ctx, &p->mlp[2], H, d, 1, rng);
        p->n_mlp = 3;
    }
    if (s != TB_OK)
        tb_ptuning_free(p);
    return s;
}

void tb_ptuning_free(tb_ptuning *p)
{
    if (!p)
        return;
    tb_embedding_free(&p->embedding);
    tb_lstm_free(&p->lstm);
    for (int i = 0; i < 3; i++)
        tb_linear_free(&p->mlp[i]);
    memset(p, 0, sizeof *p);
}

static tb_status check_p(tb_ctx *ctx, const char *fn, const tb_ptuning *p)
{
    if (!ctx || !p)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and p must not be NULL");
    if (!p->embedding.weight.value || p->n_mlp == 0)
        return tb_fail(ctx, TB_ERR_STATE, fn, "the encoder is not initialised");
    return TB_OK;
}

tb_status tb_ptuning_params(tb_ctx *ctx, tb_ptuning *p, const char *prefix, tb_param_list *list)
{
    TRY(check_p(ctx, __func__, p));
    char name[TB_PARAM_NAME_MAX];
    const char *pre = prefix && prefix[0] ? prefix : NULL;
#define NAME(local)                                                                        \
    (snprintf(name, sizeof name, "%s%s%s", pre ? pre : "", pre ? "." : "", (local)) < 0 \
         ? ""                                                                              \
         : name)
    TRY(tb_embedding_params(ctx, &p->embedding, NAME("embedding"), list));
    if (p->config.type == TB_PTUNING_LSTM)
        TRY(tb_lstm_params(ctx, &p->lstm, NAME("lstm_head"), list));
    for (size_t i = 0; i < p->n_mlp; i++) {
        char local[32];
        snprintf(local, sizeof local, "mlp_head.%zu", 2 * i);
        TRY(tb_linear_params(ctx, &p->mlp[i], NAME(local), list));
    }
#undef NAME
    return TB_OK;
}

/* Every parameter with its local name (as tb_ptuning_params() without a
 * prefix), for the aliasing checks. */
#define PT_MAX_PARAMS (1 + 8 * TB_LSTM_MAX_LAYERS + 6)
typedef struct pt_params {
    size_t n;
    const tb_param *p[PT_MAX_PARAMS];
    char value[PT_MAX_PARAMS][48];
    char grad[PT_MAX_PARAMS][56];
} pt_params;

static void collect(const tb_ptuning *p, pt_params *out)
{
    size_t n = 0;
    out->p[n] = &p->embedding.weight;
    snprintf(out->value[n++], sizeof out->value[0], "embedding.weight");
    if (p->config.type == TB_PTUNING_LSTM) {
        static const char *const base[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
        const tb_lstm *m = &p->lstm;
        for (size_t l = 0; l < m->config.num_layers; l++)
            for (size_t d = 0; d < m->dirs; d++) {
                const size_t k = l * m->dirs + d;
                const tb_param *ps[4] = {&m->w_ih[k], &m->w_hh[k], &m->b_ih[k], &m->b_hh[k]};
                for (int i = 0; i < 4; i++) {
                    out->p[n] = ps[i];
                    snprintf(out->value[n++], sizeof out->value[0], "lstm_head.%s_l%zu%s",
                             base[i], l, d ? "_reverse" : "");
                }
            }
    }
    for (size_t i = 0; i < p->n_mlp; i++) {
        out->p[n] = &p->mlp[i].weight;
        snprintf(out->value[n++], sizeof out->value[0], "mlp_head.%zu.weight", 2 * i);
        out->p[n] = &p->mlp[i].bias;
        snprintf(out->value[n++], sizeof out->value[0], "mlp_head.%zu.bias", 2 * i);
    }
    for (size_t i = 0; i < n; i++)
        snprintf(out->grad[i], sizeof out->grad[0], "%s.grad", out->value[i]);
    out->n = n;
}

/* ---- cache ------------------------------------------------------------------- */

/* Header: magic and fields (64 bytes), the LSTM's cache (64-byte rounded),
 * then e (n, d), the LSTM output h (n, 2H) for LSTM, and the head's
 * pre- and post-ReLU activations z1, a1 (and z2, a2 for MLP) (n, W). */
#define PT_MAGIC 0x5074756e63633031ull /* "PtuncC01" */
#define PT_FIELDS 5
static const char *const pt_field_names[PT_FIELDS] = {"num_virtual_tokens", "token_dim",
                                                      "encoder_hidden_size", "type",
                                                      "encoder_num_layers"};
static const tb_cache_kind PT_CACHE = {PT_MAGIC, "tb_ptuning_forward", "tb_ptuning_cache_size",
                                       PT_FIELDS, 3, pt_field_names};
#define PT_HEADER_BYTES 64

typedef struct pt_layout {
    size_t lstm_bytes; /* rounded to 64 */
    size_t floats;     /* after the LSTM cache */
    size_t total;      /* bytes */
} pt_layout;

static int layout_of(const tb_ptuning *p, pt_layout *lay)
{
    const tb_ptuning_config *c = &p->config;
    const size_t n = c->num_virtual_tokens, d = c->token_dim;
    const size_t W = head_width(c), Lw = lstm_width(c);
    size_t lb = 0, f, t;
    if (c->type == TB_PTUNING_LSTM && tb_lstm_cache_size(&p->lstm, 1, n, &lb) != TB_OK)
        return 0;
    if (!tb_add_size(lb, 63, &lb))
        return 0;
    lb = lb / 64 * 64;
    /* e + h + (z1, a1) [+ (z2, a2)] */
    if (!tb_mul_size(n, d + Lw + (c->type == TB_PTUNING_MLP ? 4 : 2) * W, &f))
        return 0;
    if (!tb_mul_size(f, sizeof(float), &t) || !tb_add_size(t, lb, &t) ||
        !tb_add_size(t, PT_HEADER_BYTES, &t))
        return 0;
    lay->lstm_bytes = lb, lay->floats = f, lay->total = t;
    return 1;
}

tb_status tb_ptuning_cache_size(const tb_ptuning *p, size_t *bytes)
{
    if (!p || !bytes)
        return TB_ERR_NULL_ARG;
    pt_layout lay;
    if (!layout_of(p, &lay))
        return TB_ERR_OVERFLOW;
    *bytes = lay.total;
    return TB_OK;
}

static void fill_fields(const tb_ptuning *p, uint64_t *f)
{
    const tb_ptuning_config *c = &p->config;
    f[0] = c->num_virtual_tokens, f[1] = c->token_dim, f[2] = c->encoder_hidden_size;
    f[3] = (uint64_t)c->type, f[4] = c->type == TB_PTUNING_LSTM ? c->encoder_num_layers : 0;
}

typedef struct pt_views {
    void *lstm_cache;
    float *e, *h, *z1, *a1, *z2, *a2;
} pt_views;

static pt_views views_of(const tb_ptuning *p, unsigned char *base, const pt_layout *lay)
{
    const tb_ptuning_config *c = &p->config;
    const size_t n = c->num_virtual_tokens, d = c->token_dim;
    const size_t W = head_width(c), Lw = lstm_width(c);
    pt_views v;
    v.lstm_cache = base + PT_HEADER_BYTES;
    float *f = (float *)(base + PT_HEADER_BYTES + lay->lstm_bytes);
    v.e = f, f += n * d;
    v.h = Lw ? f : NULL, f += n * Lw;
    v.z1 = f, f += n * W;
    v.a1 = f, f += n * W;
    v.z2 = c->type == TB_PTUNING_MLP ? f : NULL;
    v.a2 = c->type == TB_PTUNING_MLP ? f + n * W : NULL;
    return v;
}

/* ids 0 .. n-1 for the embedding (a short-lived allocation). */
static tb_status make_ids(tb_ctx *ctx, const char *fn, size_t n, int32_t **ids)
{
    void *mem;
    TRY(tb_alloc(ctx, fn, n * sizeof(int32_t), &mem));
    *ids = mem;
    for (size_t i = 0; i < n; i++)
        (*ids)[i] = (int32_t)i;
    return TB_OK;
}

static tb_status run_forward(tb_ctx *ctx, const tb_ptuning *p, tb_mode mode, tb_rng *rng,
                             const int32_t *ids, const pt_views *v, const pt_layout *lay,
                             tb_tensor *out)
{
    const tb_ptuning_config *c = &p->config;
    const size_t n = c->num_virtual_tokens, d = c->token_dim, W = head_width(c);
    tb_tensor e = tb_tensor_2d(v->e, n, d);
    TRY(tb_embedding_forward(ctx, &p->embedding, ids, n, &e));
    tb_tensor z1 = tb_tensor_2d(v->z1, n, W), a1 = tb_tensor_2d(v->a1, n, W);
    if (c->type == TB_PTUNING_LSTM) {
        tb_tensor x3 = tb_tensor_3d(v->e, 1, n, d), h3 = tb_tensor_3d(v->h, 1, n, W);
        TRY(tb_lstm_forward(ctx, &p->lstm, mode, rng, &x3, NULL, NULL, NULL, &h3, NULL, NULL,
                            v->lstm_cache, lay->lstm_bytes));
        tb_tensor h = tb_tensor_2d(v->h, n, W);
        TRY(tb_linear_forward(ctx, &p->mlp[0], &h, &z1));
        TRY(tb_relu_forward(ctx, &z1, &a1));
        return tb_linear_forward(ctx, &p->mlp[1], &a1, out);
    }
    tb_tensor z2 = tb_tensor_2d(v->z2, n, W), a2 = tb_tensor_2d(v->a2, n, W);
    TRY(tb_linear_forward(ctx, &p->mlp[0], &e, &z1));
    TRY(tb_relu_forward(ctx, &z1, &a1));
    TRY(tb_linear_forward(ctx, &p->mlp[1], &a1, &z2));
    TRY(tb_relu_forward(ctx, &z2, &a2));
    return tb_linear_forward(ctx, &p->mlp[2], &a2, out);
}

tb_status tb_ptuning_forward(tb_ctx *ctx, const tb_ptuning *p, tb_mode mode, tb_rng *rng,
                             tb_tensor *out, void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    TRY(check_p(ctx, fn, p));
    const size_t n = p->config.num_virtual_tokens, d = p->config.token_dim;
    TRY(tb_check_matrix(ctx, fn, "out", out, n, d));
    if (mode != TB_MODE_TRAINING && mode != TB_MODE_INFERENCE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown mode %d", (int)mode);
    /* The LSTM's dropout stream is checked here, not by the LSTM: the
     * embedding writes the cache before the LSTM runs. */
    const int drop = mode == TB_MODE_TRAINING && p->config.type == TB_PTUNING_LSTM &&
                     p->config.encoder_dropout > 0.0f && p->config.encoder_num_layers > 1;
    if (drop && !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "rng must not be NULL when dropout is active");
    pt_layout lay;
    if (!layout_of(p, &lay))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    uint64_t fields[PT_FIELDS];
    fill_fields(p, fields);
    TRY(tb_cache_check(ctx, fn, &PT_CACHE, cache, cache_bytes, lay.total, fields, 0));
    {
        /* Every parameter value is read after the cache's first write. */
        pt_params ps;
        collect(p, &ps);
        tb_span ins[PT_MAX_PARAMS];
        for (size_t i = 0; i < ps.n; i++)
            ins[i] = tb_span_floats(ps.value[i], ps.p[i]->value, ps.p[i]->numel);
        const tb_span outs[] = {tb_span_tensor("out", out),
                                tb_span_bytes("cache", cache, cache ? lay.total : 0),
                                tb_span_bytes("rng", drop ? rng : NULL, sizeof *rng)};
        TRY(tb_check_alias(ctx, fn, outs, 3, ins, ps.n));
    }
    void *mem = NULL;
    int32_t *ids;
    TRY(make_ids(ctx, fn, n, &ids));
    tb_status s = TB_OK;
    if (!cache)
        s = tb_alloc(ctx, fn, lay.total, &mem);
    if (s == TB_OK) {
        unsigned char *base = cache ? cache : mem;
        const pt_views v = views_of(p, base, &lay);
        s = run_forward(ctx, p, mode, rng, ids, &v, &lay, out);
        if (s == TB_OK && cache)
            tb_cache_write(cache, &PT_CACHE, fields);
    }
    if (mem)
        tb_free_with(&ctx->allocator, mem);
    tb_free_with(&ctx->allocator, ids);
    return s;
}

static tb_status run_backward(tb_ctx *ctx, tb_ptuning *p, const int32_t *ids, const pt_views *v,
                              const pt_layout *lay, const tb_tensor *dout, float *s0, float *s1)
{
    const tb_ptuning_config *c = &p->config;
    const size_t n = c->num_virtual_tokens, d = c->token_dim, W = head_width(c);
    tb_tensor z1 = tb_tensor_2d(v->z1, n, W), a1 = tb_tensor_2d(v->a1, n, W);
    tb_tensor g0 = tb_tensor_2d(s0, n, W), de = tb_tensor_2d(s1, n, d);
    if (c->type == TB_PTUNING_LSTM) {
        tb_tensor h = tb_tensor_2d(v->h, n, W), dh = tb_tensor_2d(s1 + n * d, n, W);
        TRY(tb_linear_backward(ctx, &p->mlp[1], &a1, dout, &g0)); /* d a1 */
        TRY(tb_relu_backward(ctx, &z1, &g0, &g0));                 /* d z1 */
        TRY(tb_linear_backward(ctx, &p->mlp[0], &h, &g0, &dh));    /* d h */
        tb_tensor x3 = tb_tensor_3d(v->e, 1, n, d), dh3 = tb_tensor_3d(dh.data, 1, n, W);
        tb_tensor de3 = tb_tensor_3d(s1, 1, n, d);
        TRY(tb_lstm_backward(ctx, &p->lstm, &x3, NULL, NULL, NULL, &dh3, NULL, NULL, &de3, NULL,
                             NULL, v->lstm_cache, lay->lstm_bytes));
    } else {
        tb_tensor z2 = tb_tensor_2d(v->z2, n, W), a2 = tb_tensor_2d(v->a2, n, W);
        tb_tensor e = tb_tensor_2d(v->e, n, d), g1 = tb_tensor_2d(s1 + n * d, n, W);
        TRY(tb_linear_backward(ctx, &p->mlp[2], &a2, dout, &g0)); /* d a2 */
        TRY(tb_relu_backward(ctx, &z2, &g0, &g0));                 /* d z2 */
        TRY(tb_linear_backward(ctx, &p->mlp[1], &a1, &g0, &g1));   /* d a1 */
        TRY(tb_relu_backward(ctx, &z1, &g1, &g1));                 /* d z1 */
        TRY(tb_linear_backward(ctx, &p->mlp[0], &e, &g1, &de));    /* d e */
    }
    return tb_embedding_backward(ctx, &p->embedding, ids, n, &de);
}

tb_status tb_ptuning_backward(tb_ctx *ctx, tb_ptuning *p, const tb_tensor *dout,
                              const void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    TRY(check_p(ctx, fn, p));
    const size_t n = p->config.num_virtual_tokens, d = p->config.token_dim;
    const size_t W = head_width(&p->config);
    TRY(tb_check_matrix(ctx, fn, "dout", dout, n, d));
    pt_layout lay;
    if (!layout_of(p, &lay))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    uint64_t fields[PT_FIELDS];
    fill_fields(p, fields);
    TRY(tb_cache_check(ctx, fn, &PT_CACHE, cache, cache_bytes, lay.total, fields, 1));
    TRY(tb_cache_match(ctx, fn, &PT_CACHE, cache, fields));
    {
        /* Gradients are added layer by layer while dout, the cache and the
         * weights are still read. */
        pt_params ps;
        collect(p, &ps);
        tb_span ins[2 + PT_MAX_PARAMS], outs[PT_MAX_PARAMS];
        ins[0] = tb_span_tensor("dout", dout);
        ins[1] = tb_span_bytes("cache", cache, lay.total);
        for (size_t i = 0; i < ps.n; i++) {
            ins[2 + i] = tb_span_floats(ps.value[i], ps.p[i]->value, ps.p[i]->numel);
            outs[i] = tb_span_floats(ps.grad[i],
                                     tb_param_wants_grad(ps.p[i]) ? ps.p[i]->grad : NULL,
                                     ps.p[i]->numel);
        }
        TRY(tb_check_alias(ctx, fn, outs, ps.n, ins, 2 + ps.n));
    }
    /* Scratch: one (n, W) buffer, one (n, d) + (n, W). */
    void *mem;
    TRY(tb_alloc(ctx, fn, n * (2 * W + d) * sizeof(float), &mem));
    int32_t *ids;
    tb_status s = make_ids(ctx, fn, n, &ids);
    if (s == TB_OK) {
        const pt_views v = views_of(p, (unsigned char *)(uintptr_t)cache, &lay);
        float *s0 = mem, *s1 = s0 + n * W;
        s = run_backward(ctx, p, ids, &v, &lay, dout, s0, s1);
        tb_free_with(&ctx->allocator, ids);
    }
    tb_free_with(&ctx->allocator, mem);
    return s;
}
