/* A stand-in single-head self-attention for the examples; see tiny_attention.h. */
#include "tiny_attention.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Record "tiny_attention_<fn>: detail" in the context, as library calls do,
 * and return status. */
static tb_status fail(tb_ctx *ctx, tb_status status, const char *fn, const char *fmt, ...)
{
    if (ctx) {
        va_list ap;
        int n = snprintf(ctx->error, sizeof ctx->error, "%s: ", fn);
        va_start(ap, fmt);
        if (n > 0 && (size_t)n < sizeof ctx->error)
            vsnprintf(ctx->error + n, sizeof ctx->error - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return status;
}

/*
 * Threads for the loops over sequences: each sequence's outputs (and its
 * rows of the gradients) are computed by one thread in a fixed order, so
 * the results do not depend on the count. One thread for little work.
 */
static int threads_for(const tb_ctx *ctx, size_t batch, size_t t, size_t dim)
{
    int n = ctx->num_threads < 1 ? 1 : ctx->num_threads;
    if ((double)batch * (double)t * (double)t * (double)dim < 65536.0)
        return 1;
    return (size_t)n > batch ? (int)batch : n;
}

tb_status tiny_attention_init(tb_ctx *ctx, tiny_attention *a, size_t dim, tb_rng *rng)
{
    if (!a)
        return fail(ctx, TB_ERR_NULL_ARG, __func__, "a is NULL");
    memset(a, 0, sizeof *a);
    if (dim < 1 || dim > TINY_ATTN_MAX_DIM)
        return fail(ctx, TB_ERR_INVALID_ARG, __func__, "dim %zu is outside 1..%d", dim,
                    TINY_ATTN_MAX_DIM);
    tb_status s = tb_linear_init(ctx, &a->qkv, dim, 3 * dim, 1, rng);
    if (s == TB_OK)
        s = tb_linear_init(ctx, &a->proj, dim, dim, 1, rng);
    if (s != TB_OK) {
        tiny_attention_free(a);
        return s;
    }
    a->dim = dim;
    return TB_OK;
}

void tiny_attention_free(tiny_attention *a)
{
    if (!a)
        return;
    tb_linear_free(&a->qkv);
    tb_linear_free(&a->proj);
    a->dim = 0;
}

tb_status tiny_attention_params(tb_ctx *ctx, tiny_attention *a, const char *prefix,
                                tb_param_list *list)
{
    char name[TB_PARAM_NAME_MAX];
    if (!a || !prefix)
        return fail(ctx, TB_ERR_NULL_ARG, __func__, "a and prefix must not be NULL");
    snprintf(name, sizeof name, "%s.qkv", prefix);
    tb_status s = tb_linear_params(ctx, &a->qkv, name, list);
    if (s != TB_OK)
        return s;
    snprintf(name, sizeof name, "%s.proj", prefix);
    return tb_linear_params(ctx, &a->proj, name, list);
}

/* Floats of each part of the cache, in order. */
typedef struct layout {
    size_t qkv, probs, out;     /* forward:  (BT, 3C), (BT, T), (BT, C) */
    size_t dout, dprobs, dqkv;  /* backward: (BT, C), (BT, T), (BT, 3C) */
    size_t total;
} layout;

static int make_layout(size_t batch, size_t t, size_t dim, layout *l)
{
    if (t > TINY_ATTN_MAX_T || dim > TINY_ATTN_MAX_DIM || batch > SIZE_MAX / 4096 / 64)
        return 0;
    size_t bt = batch * t; /* small factors: no overflow past the check above */
    l->qkv = l->dqkv = bt * 3 * dim;
    l->probs = l->dprobs = bt * t;
    l->out = l->dout = bt * dim;
    l->total = 2 * (l->qkv + l->probs + l->out);
    return 1;
}

tb_status tiny_attention_cache_size(size_t batch, size_t t, size_t dim, size_t *bytes)
{
    layout l;
    if (!bytes)
        return TB_ERR_NULL_ARG;
    if (!make_layout(batch, t, dim, &l))
        return TB_ERR_INVALID_ARG;
    *bytes = l.total * sizeof(float);
    return TB_OK;
}

/* Checks shared by forward and backward; stores B and T and the layout. */
static tb_status check(tb_ctx *ctx, const char *fn, const tiny_attention *a, const tb_tensor *x,
                       const tb_tensor *other, const char *other_name, const void *cache,
                       size_t cache_bytes, size_t *batch, size_t *t, layout *l)
{
    if (!ctx || !a || !x || !other || !cache || !x->data || !other->data)
        return fail(ctx, TB_ERR_NULL_ARG, fn, "a required argument is NULL");
    if (a->dim == 0)
        return fail(ctx, TB_ERR_STATE, fn, "the block is not initialised");
    if (x->ndim != 3 || x->shape[0] < 1 || x->shape[1] < 1 || x->shape[2] != a->dim)
        return fail(ctx, TB_ERR_SHAPE, fn, "x must be (B, T, %zu)", a->dim);
    if (other->ndim != 3 || memcmp(other->shape, x->shape, 3 * sizeof x->shape[0]) != 0)
        return fail(ctx, TB_ERR_SHAPE, fn, "%s must have the shape of x", other_name);
    *batch = x->shape[0];
    *t = x->shape[1];
    if (!make_layout(*batch, *t, a->dim, l))
        return fail(ctx, TB_ERR_INVALID_ARG, fn, "T = %zu exceeds this stand-in's limit %d",
                    *t, TINY_ATTN_MAX_T);
    if (cache_bytes < l->total * sizeof(float))
        return fail(ctx, TB_ERR_BUFFER_TOO_SMALL, fn, "cache has %zu bytes; %zu needed",
                    cache_bytes, l->total * sizeof(float));
    if ((uintptr_t)cache % sizeof(float) != 0)
        return fail(ctx, TB_ERR_INVALID_ARG, fn, "cache is not aligned for float");
    return TB_OK;
}

tb_status tiny_attention_forward(tb_ctx *ctx, const tiny_attention *a, const tb_tensor *x,
                                 const uint8_t *valid, tb_tensor *y, void *cache,
                                 size_t cache_bytes)
{
    size_t B, T;
    layout l;
    tb_status s = check(ctx, __func__, a, x, y, "y", cache, cache_bytes, &B, &T, &l);
    if (s != TB_OK)
        return s;
    const size_t C = a->dim, C3 = 3 * C;
    float *qkv = cache, *probs = qkv + l.qkv, *out = probs + l.probs;
    tb_tensor tqkv = tb_tensor_2d(qkv, B * T, C3);
    tb_tensor tprobs = tb_tensor_2d(probs, B * T, T);
    tb_tensor tout = tb_tensor_3d(out, B, T, C);
    if ((s = tb_linear_forward(ctx, &a->qkv, x, &tqkv)) != TB_OK)
        return s;

    /* Scores, with padded keys at -inf: softmax gives them probability 0. */
    const float scale = 1.0f / sqrtf((float)C);
    const int nt = threads_for(ctx, B, T, C);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t b = 0; b < B; b++) {
        for (size_t i = 0; i < T; i++) {
            const float *q = qkv + (b * T + i) * C3;
            float *srow = probs + (b * T + i) * T;
            for (size_t j = 0; j < T; j++) {
                if (valid && !valid[b * T + j]) {
                    srow[j] = -INFINITY;
                    continue;
                }
                const float *k = qkv + (b * T + j) * C3 + C;
                float dot = 0.0f;
                for (size_t c = 0; c < C; c++)
                    dot += q[c] * k[c];
                srow[j] = dot * scale;
            }
        }
    }
    if ((s = tb_softmax_forward(ctx, &tprobs, &tprobs)) != TB_OK)
        return s;

    /* o[b,i] = sum_j p[b,i,j] v[b,j] (masked keys add exactly 0). */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t b = 0; b < B; b++) {
        for (size_t i = 0; i < T; i++) {
            const float *p = probs + (b * T + i) * T;
            float *o = out + (b * T + i) * C;
            for (size_t c = 0; c < C; c++)
                o[c] = 0.0f;
            for (size_t j = 0; j < T; j++) {
                const float *v = qkv + (b * T + j) * C3 + 2 * C;
                for (size_t c = 0; c < C; c++)
                    o[c] += p[j] * v[c];
            }
        }
    }
    return tb_linear_forward(ctx, &a->proj, &tout, y);
}

tb_status tiny_attention_backward(tb_ctx *ctx, tiny_attention *a, const tb_tensor *x,
                                  const uint8_t *valid, const tb_tensor *dy, void *cache,
                                  size_t cache_bytes, tb_tensor *dx)
{
    size_t B, T;
    layout l;
    tb_status s = check(ctx, __func__, a, x, dy, "dy", cache, cache_bytes, &B, &T, &l);
    if (s == TB_OK && (!dx || !dx->data))
        s = fail(ctx, TB_ERR_NULL_ARG, __func__, "dx is NULL");
    if (s == TB_OK && (dx->ndim != 3 || memcmp(dx->shape, x->shape, 3 * sizeof x->shape[0])))
        s = fail(ctx, TB_ERR_SHAPE, __func__, "dx must have the shape of x");
    if (s != TB_OK)
        return s;
    (void)valid; /* masked keys have probability 0, so their gradients are 0 */
    const size_t C = a->dim, C3 = 3 * C;
    float *qkv = cache, *probs = qkv + l.qkv, *out = probs + l.probs;
    float *dout = out + l.out, *dprobs = dout + l.dout, *dqkv = dprobs + l.dprobs;
    tb_tensor tout = tb_tensor_3d(out, B, T, C), tdout = tb_tensor_3d(dout, B, T, C);
    tb_tensor tprobs = tb_tensor_2d(probs, B * T, T), tdprobs = tb_tensor_2d(dprobs, B * T, T);
    tb_tensor tdqkv = tb_tensor_2d(dqkv, B * T, C3);

    if ((s = tb_linear_backward(ctx, &a->proj, &tout, dy, &tdout)) != TB_OK)
        return s;
    memset(dqkv, 0, l.dqkv * sizeof(float));
    const float scale = 1.0f / sqrtf((float)C);
    const int nt = threads_for(ctx, B, T, C);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t b = 0; b < B; b++) {
        /* dp[i,j] = do_i . v_j;  dv_j += p[i,j] do_i */
        for (size_t i = 0; i < T; i++) {
            const float *p = probs + (b * T + i) * T, *g = dout + (b * T + i) * C;
            float *dp = dprobs + (b * T + i) * T;
            for (size_t j = 0; j < T; j++) {
                const float *v = qkv + (b * T + j) * C3 + 2 * C;
                float *dv = dqkv + (b * T + j) * C3 + 2 * C;
                float dot = 0.0f;
                for (size_t c = 0; c < C; c++) {
                    dot += g[c] * v[c];
                    dv[c] += p[j] * g[c];
                }
                dp[j] = dot;
            }
        }
    }
    /* Through the softmax (in place): ds = p * (dp - sum(p * dp)). */
    if ((s = tb_softmax_backward(ctx, &tprobs, &tdprobs, &tdprobs)) != TB_OK)
        return s;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t b = 0; b < B; b++) {
        /* s = scale q_i . k_j:  dq_i += scale ds[i,j] k_j;  dk_j += scale ds[i,j] q_i */
        for (size_t i = 0; i < T; i++) {
            const float *ds = dprobs + (b * T + i) * T, *q = qkv + (b * T + i) * C3;
            float *dq = dqkv + (b * T + i) * C3;
            for (size_t j = 0; j < T; j++) {
                const float w = scale * ds[j];
                const float *k = qkv + (b * T + j) * C3 + C;
                float *dk = dqkv + (b * T + j) * C3 + C;
                for (size_t c = 0; c < C; c++) {
                    dq[c] += w * k[c];
                    dk[c] += w * q[c];
                }
            }
        }
    }
    return tb_linear_backward(ctx, &a->qkv, x, &tdqkv, dx);
}
