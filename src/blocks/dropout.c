/* Inverted dropout with a mask regenerated from the stream position. */
#include <math.h>
#include <string.h>

#include "../core/internal.h"

tb_status tb_dropout_forward(tb_ctx *ctx, tb_mode mode, float p, tb_rng *rng,
                             const tb_tensor *x, tb_tensor *y, tb_dropout_cache *cache)
{
    const char *fn = __func__;
    size_t n;
    if (!(p >= 0.0f && p <= 1.0f)) /* also rejects NaN */
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "p = %g is outside [0, 1]", (double)p);
    if (mode != TB_MODE_TRAINING && mode != TB_MODE_INFERENCE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown mode %d", (int)mode);
    tb_status s = tb_check_same_numel(ctx, fn, "x", x, "y", y, &n);
    if (s != TB_OK)
        return s;
    const int active = mode == TB_MODE_TRAINING && p > 0.0f;
    if (active && !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "rng must not be NULL in training mode");
    /* y may be x exactly (element i is read before it is written); the
     * cache is written first and the stream advanced last, so neither may
     * share memory with x, y or each other. */
    const tb_span in[] = {tb_span_tensor("x", x)};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("y", y), TB_INPUT(0)),
                           tb_span_bytes("cache", cache, sizeof *cache),
                           tb_span_bytes("rng", active ? rng : NULL, sizeof *rng)};
    if ((s = tb_check_alias(ctx, fn, out, 3, in, 1)) != TB_OK)
        return s;
    /* The cache (NULL when no backward follows) records the stream
     * position, from which backward regenerates the mask. */
    if (cache) {
        memset(cache, 0, sizeof *cache);
        cache->numel = n;
        cache->p = p;
    }
    const float *xd = x->data;
    float *yd = y->data;
    if (!active) {
        if (xd != yd)
            memmove(yd, xd, n * sizeof(float));
        return TB_OK;
    }
    if (cache) {
        cache->active = 1;
        cache->key = rng->key;
        cache->counter = rng->counter;
    }
    const uint64_t key = rng->key, base = rng->counter;
    const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++)
        yd[i] = tb_rng_uniform_at(key, base + i) >= p ? xd[i] * scale : 0.0f;
    rng->counter += n;
    return TB_OK;
}

tb_status tb_dropout_backward(tb_ctx *ctx, const tb_tensor *dy, const tb_dropout_cache *cache,
                              tb_tensor *dx)
{
    const char *fn = __func__;
    size_t n;
    if (!cache)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn,
                       "cache must not be NULL: pass the cache tb_dropout_forward filled");
    tb_status s = tb_check_same_numel(ctx, fn, "dy", dy, "dx", dx, &n);
    if (s == TB_OK) {
        /* dx may be dy exactly (element i is read before it is written).
         * The cache is read only before dx is written. */
        const tb_span in[] = {tb_span_tensor("dy", dy)};
        const tb_span out[] = {tb_span_in_place(tb_span_tensor("dx", dx), TB_INPUT(0))};
        s = tb_check_alias(ctx, fn, out, 1, in, 1);
    }
    if (s != TB_OK)
        return s;
    if (n != cache->numel)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "dy has %zu elements; forward saw %llu", n,
                       (unsigned long long)cache->numel);
    const float *g = dy->data;
    float *o = dx->data;
    if (!cache->active) {
        if (g != o)
            memmove(o, g, n * sizeof(float));
        return TB_OK;
    }
    const uint64_t key = cache->key, base = cache->counter;
    const float p = cache->p, scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++)
        o[i] = tb_rng_uniform_at(key, base + i) >= p ? g[i] * scale : 0.0f;
    return TB_OK;
}
