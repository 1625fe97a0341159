/*
 * Multi-head attention module: in_proj (one GEMM into a packed (B, T, 3C)
 * buffer for self-attention; two for cross-attention), the attention core
 * reading that buffer in place, and out_proj (a tb_linear).
 * Cache: header, projections (B*Tq*C + B*Tk*2C floats), attention output
 * (B*Tq*C), then the core's cache.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../core/internal.h"
#include "../kernels/gemm.h"

#define MHA_MAGIC 0x74624D4831ULL /* "tbMH1" */

/* Magic, then the fields backward matches (tb_cache_match), then unused
 * words (the data stays 64-byte aligned after it). */
typedef struct mha_header {
    uint64_t magic, batch, t_q, t_k, cross, reserved[3];
} mha_header;

static const char *const mha_fields[4] = {"B", "Tq", "Tk", "cross (1: mem given)"};
/* The size depends on B, Tq and Tk. */
static const tb_cache_kind MHA_CACHE = {MHA_MAGIC, "tb_mha_forward", "tb_mha_cache_size", 4, 3,
                                        mha_fields};

tb_status tb_mha_init(tb_ctx *ctx, tb_mha *mha, size_t embed_dim, size_t n_heads, int has_bias,
                      tb_rng *rng)
{
    const char *fn = __func__;
    if (mha)
        memset(mha, 0, sizeof *mha);
    if (!ctx || !mha || !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, mha and rng must not be NULL");
    if (embed_dim == 0 || n_heads == 0 || embed_dim % n_heads != 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "embed_dim %zu must be a positive multiple of n_heads %zu", embed_dim,
                       n_heads);
    const size_t C = embed_dim;
    size_t wn, n, bytes;
    if (!tb_mul_size(3 * C, C, &wn) || !tb_add_size(wn, 3 * C, &n) || !tb_mul_size(n, 2, &n) ||
        !tb_mul_size(n, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "embed_dim %zu is too large", C);
    tb_status s = tb_linear_init(ctx, &mha->out_proj, C, C, has_bias, rng);
    if (s != TB_OK)
        return s;
    void *mem;
    if ((s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK) {
        tb_linear_free(&mha->out_proj);
        return s;
    }
    float *w = mem, *b = w + wn, *gw = b + 3 * C, *gb = gw + wn;
    memset(b, 0, (n - wn) * sizeof(float)); /* bias, gradients */
    const float bound = sqrtf(6.0f / (float)(4 * C)); /* Xavier: fan_in C, fan_out 3C */
    if ((s = tb_rng_fill_uniform(ctx, rng, w, wn, -bound, bound)) != TB_OK) {
        tb_free_with(&ctx->allocator, mem);
        tb_linear_free(&mha->out_proj);
        return s;
    }
    if (has_bias)
        memset(mha->out_proj.bias.value, 0, C * sizeof(float)); /* as PyTorch */
    mha->embed_dim = C;
    mha->n_heads = n_heads;
    mha->has_bias = has_bias ? 1 : 0;
    mha->attn = tb_attention_default_config(n_heads, C / n_heads);
    mha->storage = mem;
    mha->allocator = ctx->allocator;
    const size_t wshape[2] = {3 * C, C}, bshape[1] = {3 * C};
    s = tb_param_view(ctx, &mha->in_proj_weight, w, gw, 2, wshape);
    if (s == TB_OK && has_bias)
        s = tb_param_view(ctx, &mha->in_proj_bias, b, gb, 1, bshape);
    if (s != TB_OK)
        tb_mha_free(mha);
    return s;
}

void tb_mha_free(tb_mha *mha)
{
    if (!mha)
        return;
    tb_linear_free(&mha->out_proj);
    tb_free_with(&mha->allocator, mha->storage);
    memset(mha, 0, sizeof *mha);
}

tb_status tb_mha_params(tb_ctx *ctx, tb_mha *mha, const char *prefix, tb_param_list *list)
{
    if (!mha || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "mha and list must not be NULL");
    if (!mha->storage)
        return tb_fail(ctx, TB_ERR_STATE, __func__, "mha is not initialised");
    tb_status s = tb_param_list_add(ctx, list, prefix, "in_proj_weight", &mha->in_proj_weight);
    if (s == TB_OK && mha->has_bias)
        s = tb_param_list_add(ctx, list, prefix, "in_proj_bias", &mha->in_proj_bias);
    if (s == TB_OK) {
        char sub[TB_PARAM_NAME_MAX];
        int w = snprintf(sub, sizeof sub, "%s%sout_proj", prefix ? prefix : "",
                         prefix && prefix[0] ? "." : "");
        if (w < 0 || (size_t)w >= sizeof sub)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, __func__, "prefix is too long");
        s = tb_linear_params(ctx, &mha->out_proj, sub, list);
    }
    return s;
}

/* Floats of each cache part. */
typedef struct mha_sizes {
    size_t proj, att, attn_bytes, total_bytes;
} mha_sizes;

static tb_status sizes(const tb_mha *mha, size_t B, size_t Tq, size_t Tk, mha_sizes *z)
{
    const size_t C = mha->embed_dim;
    size_t a, b, c;
    if (!tb_mul_size(B, Tq, &a) || !tb_mul_size(a, C, &a) || !tb_mul_size(B, Tk, &b) ||
        !tb_mul_size(b, 2 * C, &b) || !tb_add_size(a, b, &z->proj))
        return TB_ERR_OVERFLOW;
    z->att = a;
    if (tb_attention_cache_size(&mha->attn, B, Tq, &z->attn_bytes) != TB_OK)
        return TB_ERR_OVERFLOW;
    if (!tb_add_size(z->proj, z->att, &c) || !tb_mul_size(c, sizeof(float), &c) ||
        !tb_add_size(c, sizeof(mha_header), &c) || !tb_add_size(c, z->attn_bytes, &c))
        return TB_ERR_OVERFLOW;
    z->total_bytes = c;
    return TB_OK;
}

tb_status tb_mha_cache_size(const tb_mha *mha, size_t batch, size_t t_q, size_t t_k,
                            size_t *bytes)
{
    mha_sizes z;
    if (!mha || !bytes)
        return TB_ERR_NULL_ARG;
    tb_status s = sizes(mha, batch, t_q, t_k, &z);
    if (s == TB_OK)
        *bytes = z.total_bytes;
    return s;
}

/* out (rows, n) = in (rows, C) W^T (W: n rows of in_proj from row r0) + b. */
static tb_status project(tb_ctx *ctx, const tb_mha *mha, const float *in, size_t rows,
                         size_t r0, size_t n, float *out)
{
    const size_t C = mha->embed_dim;
    tb_status s = tb_gemm(ctx, 0, 1, rows, n, C, 1.0f, in, C,
                          mha->in_proj_weight.value + r0 * C, C, 0.0f, out, n);
    if (s != TB_OK || !mha->has_bias)
        return s;
    const float *b = mha->in_proj_bias.value + r0;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * n)) schedule(static)
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < n; j++)
            out[r * n + j] += b[j];
    return TB_OK;
}

/* Validate x (B, Tq, C) and mem (B, Tk, C) (or NULL); report B, Tq, Tk. */
static tb_status check_inputs(tb_ctx *ctx, const char *fn, const tb_mha *mha,
                              const tb_tensor *x, const tb_tensor *mem, size_t *B, size_t *Tq,
                              size_t *Tk)
{
    if (!ctx || !mha)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and mha must not be NULL");
    if (!mha->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn, "mha is not initialised");
    const tb_tensor *ts[2] = {x, mem};
    for (int i = 0; i < (mem ? 2 : 1); i++) {
        tb_status s = tb_check_tensor(ctx, fn, i ? "mem" : "x", ts[i], NULL, NULL);
        if (s != TB_OK)
            return s;
        if (ts[i]->ndim != 3 || ts[i]->shape[2] != mha->embed_dim)
            return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s must be (B, T, %zu)", i ? "mem" : "x",
                           mha->embed_dim);
    }
    *B = x->shape[0];
    *Tq = x->shape[1];
    *Tk = mem ? mem->shape[1] : *Tq;
    if (mem && mem->shape[0] != *B)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "mem has batch %zu, x has %zu", mem->shape[0], *B);
    return TB_OK;
}

/* ---- Aliasing (docs/conventions.md): no in-place form. Each call writes
 * its cache or scratch first and reads its inputs, the parameters and the
 * mask arrays to the end, so every output is checked against all of them
 * and against the other outputs. ------------------------------------------ */

enum { PARAM_SPANS = 4 };
/* in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias (values) as
 * forward and decoding read them (the biases absent without bias). */
static void param_spans(const tb_mha *mha, tb_span spans[PARAM_SPANS])
{
    const size_t C = mha->embed_dim;
    spans[0] = tb_span_rows("in_proj_weight", mha->in_proj_weight.value, 3 * C, C, C);
    spans[1] = tb_span_floats("in_proj_bias", mha->has_bias ? mha->in_proj_bias.value : NULL,
                              3 * C);
    spans[2] = tb_span_rows("out_proj.weight", mha->out_proj.weight.value, C, C, C);
    spans[3] = tb_span_floats("out_proj.bias",
                              mha->has_bias ? mha->out_proj.bias.value : NULL, C);
}

static tb_status forward_alias(tb_ctx *ctx, const char *fn, const tb_mha *mha,
                               const tb_attention_mask *mask, const tb_tensor *x,
                               const tb_tensor *mem, const tb_tensor *y, const void *cache,
                               size_t cache_bytes)
{
    enum { N_IN = 2 + PARAM_SPANS + TB_MASK_SPANS };
    tb_span in[N_IN];
    in[0] = tb_span_tensor("x", x);
    in[1] = tb_span_tensor("mem", mem);
    param_spans(mha, in + 2);
    tb_attention_mask_spans(mask, x->shape[0], x->shape[1], mem ? mem->shape[1] : x->shape[1],
                            in + 2 + PARAM_SPANS);
    const tb_span out[] = {tb_span_tensor("y", y), tb_span_bytes("cache", cache, cache_bytes)};
    return tb_check_alias(ctx, fn, out, 2, in, N_IN);
}

/* Backward reads the weights (not the biases) and writes dx, dmem and the
 * gradients of the parameters that want one. */
static tb_status backward_alias(tb_ctx *ctx, const char *fn, const tb_mha *mha,
                                const tb_attention_mask *mask, const tb_tensor *x,
                                const tb_tensor *mem, const tb_tensor *dy, const void *cache,
                                size_t cache_bytes, const tb_tensor *dx, const tb_tensor *dmem)
{
    enum { N_IN = 6 + TB_MASK_SPANS };
    const size_t C = mha->embed_dim;
    tb_span in[N_IN];
    in[0] = tb_span_tensor("x", x);
    in[1] = tb_span_tensor("mem", mem);
    in[2] = tb_span_tensor("dy", dy);
    in[3] = tb_span_bytes("cache", cache, cache_bytes);
    in[4] = tb_span_rows("in_proj_weight", mha->in_proj_weight.value, 3 * C, C, C);
    in[5] = tb_span_rows("out_proj.weight", mha->out_proj.weight.value, C, C, C);
    tb_attention_mask_spans(mask, x->shape[0], x->shape[1], mem ? mem->shape[1] : x->shape[1],
                            in + 6);
    const tb_linear *op = &mha->out_proj;
    const int gw = tb_param_wants_grad(&mha->in_proj_weight);
    const int gb = mha->has_bias && tb_param_wants_grad(&mha->in_proj_bias);
    const int ow = tb_param_wants_grad(&op->weight);
    const int ob = mha->has_bias && tb_param_wants_grad(&op->bias);
    const tb_span out[] = {
        tb_span_tensor("dx", dx),
        tb_span_tensor("dmem", mem ? dmem : NULL),
        tb_span_rows("in_proj_weight.grad", gw ? mha->in_proj_weight.grad : NULL, 3 * C, C, C),
        tb_span_floats("in_proj_bias.grad", gb ? mha->in_proj_bias.grad : NULL, 3 * C),
        tb_span_rows("out_proj.weight.grad", ow ? op->weight.grad : NULL, C, C, C),
        tb_span_floats("out_proj.bias.grad", ob ? op->bias.grad : NULL, C)};
    return tb_check_alias(ctx, fn, out, 6, in, N_IN);
}

/* Decoding writes the new positions into kv and y; it reads x, the
 * parameters and the positions already stored. */
static tb_status decode_alias(tb_ctx *ctx, const char *fn, const tb_mha *mha,
                              const tb_kv_cache *kv, const tb_tensor *x, const tb_tensor *y,
                              size_t tn)
{
    enum { N_IN = 3 + PARAM_SPANS };
    tb_span in[N_IN];
    in[0] = tb_span_tensor("x", x);
    param_spans(mha, in + 1);
    in[1 + PARAM_SPANS] = tb_kv_positions_span("kv->keys", kv, kv->keys, 0, kv->len);
    in[2 + PARAM_SPANS] = tb_kv_positions_span("kv->values", kv, kv->values, 0, kv->len);
    const tb_span out[] = {tb_span_tensor("y", y),
                           tb_kv_positions_span("kv->keys", kv, kv->keys, kv->len, tn),
                           tb_kv_positions_span("kv->values", kv, kv->values, kv->len, tn)};
    return tb_check_alias(ctx, fn, out, 3, in, N_IN);
}

/* The core's operands over the cached projections. */
typedef struct mha_views {
    tb_tensor qt, kvt; /* self: qt is the packed (B, T, 3C) buffer, kvt unused */
    tb_heads q, k, v;
} mha_views;

static void views(float *proj, size_t B, size_t Tq, size_t Tk, size_t C, int cross,
                  mha_views *w)
{
    if (!cross) {
        w->qt = tb_tensor_3d(proj, B, Tq, 3 * C);
        w->q = (tb_heads){&w->qt, 0};
        w->k = (tb_heads){&w->qt, C};
        w->v = (tb_heads){&w->qt, 2 * C};
    } else {
        w->qt = tb_tensor_3d(proj, B, Tq, C);
        w->kvt = tb_tensor_3d(proj + B * Tq * C, B, Tk, 2 * C);
        w->q = (tb_heads){&w->qt, 0};
        w->k = (tb_heads){&w->kvt, 0};
        w->v = (tb_heads){&w->kvt, C};
    }
}

tb_status tb_mha_forward(tb_ctx *ctx, const tb_mha *mha, tb_mode mode,
                         const tb_attention_mask *mask, const tb_tensor *x, const tb_tensor *mem,
                         tb_tensor *y, void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    size_t B, Tq, Tk;
    tb_status s = check_inputs(ctx, fn, mha, x, mem, &B, &Tq, &Tk);
    if (s != TB_OK)
        return s;
    if (mode != TB_MODE_TRAINING && mode != TB_MODE_INFERENCE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown mode %d", (int)mode);
    const size_t C = mha->embed_dim;
    if ((s = tb_check_tensor(ctx, fn, "y", y, NULL, NULL)) != TB_OK)
        return s;
    if (y->ndim != 3 || y->shape[0] != B || y->shape[1] != Tq || y->shape[2] != C)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "y must be (%zu, %zu, %zu)", B, Tq, C);
    mha_sizes z;
    if (sizes(mha, B, Tq, Tk, &z) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    const uint64_t fields[4] = {B, Tq, Tk, mem != NULL};
    if ((s = tb_cache_check(ctx, fn, &MHA_CACHE, cache, cache_bytes, z.total_bytes, fields, 0)) !=
        TB_OK)
        return s;
    if ((s = forward_alias(ctx, fn, mha, mask, x, mem, y, cache, z.total_bytes)) != TB_OK)
        return s;
    /* The projections and the attention output go to the cache for
     * backward; without one (no backward follows), to scratch for the
     * call, and the core keeps no statistics. */
    void *buf = NULL;
    float *proj;
    if (cache) {
        proj = (float *)((unsigned char *)cache + sizeof(mha_header));
    } else {
        size_t scratch;
        if (!tb_add_size(z.proj, z.att, &scratch) ||
            !tb_mul_size(scratch, sizeof(float), &scratch))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
        if ((s = tb_alloc(ctx, fn, scratch, &buf)) != TB_OK)
            return s;
        proj = buf;
    }
    float *att = proj + z.proj;
    void *acache = cache ? (void *)(att + z.att) : NULL;
    if (!mem)
        s = project(ctx, mha, x->data, B * Tq, 0, 3 * C, proj);
    else if ((s = project(ctx, mha, x->data, B * Tq, 0, C, proj)) == TB_OK)
        s = project(ctx, mha, mem->data, B * Tk, C, 2 * C, proj + B * Tq * C);
    mha_views w;
    views(proj, B, Tq, Tk, C, mem != NULL, &w);
    tb_tensor att_t = tb_tensor_3d(att, B, Tq, C);
    if (s == TB_OK)
        s = tb_attention_forward(ctx, &mha->attn, mode, mask, &w.q, &w.k, &w.v, &att_t, acache,
                                 acache ? z.attn_bytes : 0);
    if (s == TB_OK)
        s = tb_linear_forward(ctx, &mha->out_proj, &att_t, y);
    tb_free_with(&ctx->allocator, buf);
    if (s != TB_OK || !cache)
        return s;
    memset(cache, 0, sizeof(mha_header));
    tb_cache_write(cache, &MHA_CACHE, fields);
    return TB_OK;
}

/* Column sums of g (rows, n) added to out (deterministic: one thread per
 * column, rows in order). */
static void add_colsums(tb_ctx *ctx, const float *g, size_t rows, size_t n, float *out)
{
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * n)) schedule(static)
    for (size_t j = 0; j < n; j++) {
        float acc = 0.0f;
        for (size_t r = 0; r < rows; r++)
            acc += g[r * n + j];
        out[j] += acc;
    }
}

/* Whether the n floats at x are all zero / all finite. */
static int all_zero(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f)
            return 0;
    return 1;
}

/* Whether input row r (of C floats) adds nothing to the weight gradient
 * although it is not finite: its gradient row (of n) is exactly zero. */
static int dead_garbage_row(const float *in, size_t C, const float *dy, size_t n, size_t r)
{
    return all_zero(dy + r * n, n) && !tb_all_finite(in + r * C, C);
}

/* dW (n, C) += dy^T in for in (rows, C), dy (rows, n), where a row of
 * `in` whose gradient row is exactly zero adds exactly nothing, even when it
 * holds NaN or Inf (0 x NaN would poison the whole gradient). Those rows
 * are the positions the attention masks out entirely (a key no query sees,
 * whose own query, if any, sees nothing: padding), and padding rows often
 * hold garbage. They are zeroed in a copy of `in`, made only when one of
 * them is not finite; 0 x finite adds nothing to a GEMM sum, so the result
 * has the bits of the plain product. */
static tb_status weight_grad(tb_ctx *ctx, const char *fn, const float *in, size_t rows, size_t C,
                             const float *dy, size_t n, float *dw)
{
    int garbage = 0;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * n)) \
    reduction(| : garbage) schedule(static)
    for (size_t r = 0; r < rows; r++)
        garbage |= dead_garbage_row(in, C, dy, n, r);
    if (!garbage)
        return tb_gemm(ctx, 1, 0, n, C, rows, 1.0f, dy, n, in, C, 1.0f, dw, C);
    size_t bytes;
    void *buf;
    if (!tb_mul_size(rows, C * sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
    tb_status s = tb_alloc(ctx, fn, bytes, &buf);
    if (s != TB_OK)
        return s;
    float *clean = buf;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        if (dead_garbage_row(in, C, dy, n, r))
            memset(clean + r * C, 0, C * sizeof(float));
        else
            memcpy(clean + r * C, in + r * C, C * sizeof(float));
    }
    s = tb_gemm(ctx, 1, 0, n, C, rows, 1.0f, dy, n, clean, C, 1.0f, dw, C);
    tb_free_with(&ctx->allocator, buf);
    return s;
}

/* Gradients of one projection: in (rows, C) -> out (rows, n) with in_proj
 * rows r0 .. r0+n: dW += dy^T in, db += colsum(dy), din = dy W. */
static tb_status project_backward(tb_ctx *ctx, const char *fn, tb_mha *mha, const float *in,
                                  size_t rows, size_t r0, size_t n, const float *dy,
                                  float *din)
{
    const size_t C = mha->embed_dim;
    tb_status s = TB_OK;
    if (tb_param_wants_grad(&mha->in_proj_weight))
        s = weight_grad(ctx, fn, in, rows, C, dy, n, mha->in_proj_weight.grad + r0 * C);
    if (s != TB_OK)
        return s;
    if (mha->has_bias && tb_param_wants_grad(&mha->in_proj_bias))
        add_colsums(ctx, dy, rows, n, mha->in_proj_bias.grad + r0);
    return tb_gemm(ctx, 0, 0, rows, C, n, 1.0f, dy, n, mha->in_proj_weight.value + r0 * C, C,
                   0.0f, din, C);
}

tb_status tb_mha_backward(tb_ctx *ctx, tb_mha *mha, const tb_attention_mask *mask,
                          const tb_tensor *x, const tb_tensor *mem, const tb_tensor *dy,
                          const void *cache, size_t cache_bytes, tb_tensor *dx, tb_tensor *dmem)
{
    const char *fn = __func__;
    size_t B, Tq, Tk;
    tb_status s = check_inputs(ctx, fn, mha, x, mem, &B, &Tq, &Tk);
    if (s != TB_OK)
        return s;
    const size_t C = mha->embed_dim;
    if ((s = tb_check_matrix(ctx, fn, "dy", dy, B * Tq, C)) != TB_OK ||
        (s = tb_check_matrix(ctx, fn, "dx", dx, B * Tq, C)) != TB_OK)
        return s;
    if (mem && (s = tb_check_matrix(ctx, fn, "dmem", dmem, B * Tk, C)) != TB_OK)
        return s;
    mha_sizes z;
    if (sizes(mha, B, Tq, Tk, &z) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    const uint64_t fields[4] = {B, Tq, Tk, mem != NULL};
    if ((s = tb_cache_check(ctx, fn, &MHA_CACHE, cache, cache_bytes, z.total_bytes, fields, 1)) !=
            TB_OK ||
        (s = tb_cache_match(ctx, fn, &MHA_CACHE, cache, fields)) != TB_OK)
        return s;
    if ((s = backward_alias(ctx, fn, mha, mask, x, mem, dy, cache, z.total_bytes, dx, dmem)) !=
        TB_OK)
        return s;
    float *proj = (float *)((unsigned char *)(uintptr_t)cache + sizeof(mha_header));
    float *att = proj + z.proj;
    const void *acache = att + z.att;
    /* Scratch: d(att) (B*Tq*C) and d(projections) (z.proj). */
    void *buf;
    size_t scratch;
    if (!tb_add_size(z.att, z.proj, &scratch) || !tb_mul_size(scratch, sizeof(float), &scratch))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
    if ((s = tb_alloc(ctx, fn, scratch, &buf)) != TB_OK)
        return s;
    float *datt = buf, *dproj = datt + z.att;
    tb_tensor att_t = tb_tensor_3d(att, B, Tq, C), datt_t = tb_tensor_3d(datt, B, Tq, C);
    s = tb_linear_backward(ctx, &mha->out_proj, &att_t, dy, &datt_t);
    mha_views w, dw;
    views(proj, B, Tq, Tk, C, mem != NULL, &w);
    views(dproj, B, Tq, Tk, C, mem != NULL, &dw);
    if (s == TB_OK)
        s = tb_attention_backward(ctx, &mha->attn, mask, &w.q, &w.k, &w.v, &att_t, &datt_t,
                                  acache, z.attn_bytes, &dw.q, &dw.k, &dw.v);
    if (s == TB_OK && !mem)
        s = project_backward(ctx, fn, mha, x->data, B * Tq, 0, 3 * C, dproj, dx->data);
    else if (s == TB_OK) {
        s = project_backward(ctx, fn, mha, x->data, B * Tq, 0, C, dproj, dx->data);
        if (s == TB_OK)
            s = project_backward(ctx, fn, mha, mem->data, B * Tk, C, 2 * C, dproj + B * Tq * C,
                                 dmem->data);
    }
    tb_free_with(&ctx->allocator, buf);
    return s;
}

tb_status tb_mha_decode(tb_ctx *ctx, const tb_mha *mha, tb_kv_cache *kv, const tb_tensor *x,
                        tb_tensor *y)
{
    const char *fn = __func__;
    size_t B, Tn, Tk;
    tb_status s = check_inputs(ctx, fn, mha, x, NULL, &B, &Tn, &Tk);
    if (s != TB_OK)
        return s;
    const size_t C = mha->embed_dim;
    if (!kv)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "kv must not be NULL");
    if (!kv->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn, "kv is not initialised");
    if ((s = tb_check_tensor(ctx, fn, "y", y, NULL, NULL)) != TB_OK)
        return s;
    if (y->ndim != 3 || y->shape[0] != B || y->shape[1] != Tn || y->shape[2] != C)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "y must be (%zu, %zu, %zu)", B, Tn, C);
    if (kv->batch != B || kv->n_kv_heads != mha->n_heads || kv->head_dim != C / mha->n_heads)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "kv must hold %zu rows of %zu heads x %zu", B,
                       mha->n_heads, C / mha->n_heads);
    if (Tn > kv->max_len - kv->len)
        return tb_fail(ctx, TB_ERR_BUFFER_TOO_SMALL, fn,
                       "%zu stored + %zu new positions exceed the cache's %zu", kv->len, Tn,
                       kv->max_len);
    if ((s = decode_alias(ctx, fn, mha, kv, x, y, Tn)) != TB_OK)
        return s;
    size_t n, bytes;
    if (!tb_mul_size(B * Tn, 4 * C, &n) || !tb_mul_size(n, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
    void *buf;
    if ((s = tb_alloc(ctx, fn, bytes, &buf)) != TB_OK)
        return s;
    float *qkv = buf, *att = qkv + B * Tn * 3 * C;
    tb_tensor qkv_t = tb_tensor_3d(qkv, B, Tn, 3 * C), att_t = tb_tensor_3d(att, B, Tn, C);
    tb_heads q = {&qkv_t, 0}, k = {&qkv_t, C}, v = {&qkv_t, 2 * C};
    s = project(ctx, mha, x->data, B * Tn, 0, 3 * C, qkv);
    if (s == TB_OK)
        s = tb_kv_cache_append(ctx, kv, &k, &v);
    if (s == TB_OK)
        s = tb_kv_cache_attend(ctx, kv, &mha->attn, NULL, &q, &att_t);
    if (s == TB_OK)
        s = tb_linear_forward(ctx, &mha->out_proj, &att_t, y);
    tb_free_with(&ctx->allocator, buf);
    return s;
}
