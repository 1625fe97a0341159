/* Key/value cache: per batch row, positions 0..len of (max_len, Hkv*D). */
#include <string.h>

#include "../core/internal.h"

tb_status tb_kv_cache_init(tb_ctx *ctx, tb_kv_cache *kv, size_t batch, size_t max_len,
                           size_t n_kv_heads, size_t head_dim)
{
    const char *fn = __func__;
    if (kv)
        memset(kv, 0, sizeof *kv);
    if (!ctx || !kv)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and kv must not be NULL");
    if (!batch || !max_len || !n_kv_heads || !head_dim)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "every size must be >= 1");
    size_t n, bytes;
    if (!tb_mul_size(batch, max_len, &n) || !tb_mul_size(n, n_kv_heads, &n) ||
        !tb_mul_size(n, head_dim, &n) || !tb_mul_size(n, 2 * sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    kv->batch = batch;
    kv->max_len = max_len;
    kv->n_kv_heads = n_kv_heads;
    kv->head_dim = head_dim;
    kv->keys = mem;
    kv->values = kv->keys + n;
    kv->storage = mem;
    kv->allocator = ctx->allocator;
    return TB_OK;
}

void tb_kv_cache_free(tb_kv_cache *kv)
{
    if (!kv)
        return;
    tb_free_with(&kv->allocator, kv->storage);
    memset(kv, 0, sizeof *kv);
}

void tb_kv_cache_reset(tb_kv_cache *kv)
{
    if (kv)
        kv->len = 0;
}

/* Check a (B, T, W) operand holding the cache's heads; returns T. */
static tb_status check_new(tb_ctx *ctx, const char *fn, const char *name, const tb_kv_cache *kv,
                           const tb_heads *o, size_t *T)
{
    if (!o || !o->tensor)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "%s is NULL", name);
    size_t rows, cols;
    tb_status s = tb_check_tensor(ctx, fn, name, o->tensor, &rows, &cols);
    if (s != TB_OK)
        return s;
    if (o->tensor->ndim != 3 || o->tensor->shape[0] != kv->batch ||
        o->offset + kv->n_kv_heads * kv->head_dim > cols)
        return tb_fail(ctx, TB_ERR_SHAPE, fn,
                       "%s must be (%zu, T, W) with W >= offset + %zu", name, kv->batch,
                       kv->n_kv_heads * kv->head_dim);
    *T = o->tensor->shape[1];
    return TB_OK;
}

tb_span tb_kv_positions_span(const char *name, const tb_kv_cache *kv, const float *buf,
                             size_t t0, size_t n)
{
    const size_t W = kv->n_kv_heads * kv->head_dim;
    return tb_span_rows(name, n ? buf + t0 * W : NULL, kv->batch, n * W, kv->max_len * W);
}

/* The new positions are copied from k and v into the cache, row by row. */
static tb_status append_alias(tb_ctx *ctx, const char *fn, const tb_kv_cache *kv,
                              const tb_heads *k, const tb_heads *v, size_t tn)
{
    const tb_span in[] = {tb_span_heads("k", k, kv->n_kv_heads, kv->head_dim),
                          tb_span_heads("v", v, kv->n_kv_heads, kv->head_dim)};
    const tb_span out[] = {tb_kv_positions_span("kv->keys", kv, kv->keys, kv->len, tn),
                           tb_kv_positions_span("kv->values", kv, kv->values, kv->len, tn)};
    return tb_check_alias(ctx, fn, out, 2, in, 2);
}

/* out is written batch row by batch row while q, the stored positions and
 * key_lengths are still read. */
static tb_status attend_alias(tb_ctx *ctx, const char *fn, const tb_kv_cache *kv,
                              size_t n_heads, const int32_t *key_lengths, const tb_heads *q,
                              const tb_tensor *out)
{
    const tb_span in[] = {tb_span_heads("q", q, n_heads, kv->head_dim),
                          tb_kv_positions_span("kv->keys", kv, kv->keys, 0, kv->len),
                          tb_kv_positions_span("kv->values", kv, kv->values, 0, kv->len),
                          tb_span_array("key_lengths", key_lengths, kv->batch, sizeof(int32_t))};
    const tb_span o[] = {tb_span_tensor("out", out)};
    return tb_check_alias(ctx, fn, o, 1, in, 4);
}

tb_status tb_kv_cache_append(tb_ctx *ctx, tb_kv_cache *kv, const tb_heads *k, const tb_heads *v)
{
    const char *fn = __func__;
    if (!ctx || !kv)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and kv must not be NULL");
    if (!kv->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn, "kv is not initialised");
    size_t tk, tv;
    tb_status s = check_new(ctx, fn, "k", kv, k, &tk);
    if (s == TB_OK)
        s = check_new(ctx, fn, "v", kv, v, &tv);
    if (s != TB_OK)
        return s;
    if (tk != tv)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "k has %zu positions, v has %zu", tk, tv);
    if (tk > kv->max_len - kv->len)
        return tb_fail(ctx, TB_ERR_BUFFER_TOO_SMALL, fn,
                       "%zu stored + %zu new positions exceed the capacity %zu", kv->len, tk,
                       kv->max_len);
    if ((s = append_alias(ctx, fn, kv, k, v, tk)) != TB_OK)
        return s;
    const size_t W = kv->n_kv_heads * kv->head_dim;
    const size_t wk = k->tensor->shape[2], wv = v->tensor->shape[2];
    for (size_t b = 0; b < kv->batch; b++)
        for (size_t t = 0; t < tk; t++) {
            float *dk = kv->keys + (b * kv->max_len + kv->len + t) * W;
            float *dv = kv->values + (b * kv->max_len + kv->len + t) * W;
            memcpy(dk, k->tensor->data + (b * tk + t) * wk + k->offset, W * sizeof(float));
            memcpy(dv, v->tensor->data + (b * tk + t) * wv + v->offset, W * sizeof(float));
        }
    kv->len += tk;
    return TB_OK;
}

tb_status tb_kv_cache_attend(tb_ctx *ctx, const tb_kv_cache *kv, const tb_attention_config *cfg,
                             const int32_t *key_lengths, const tb_heads *q, tb_tensor *out)
{
    const char *fn = __func__;
    if (!ctx || !kv || !cfg || !q || !q->tensor || !out)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, kv, cfg, q and out must not be NULL");
    if (!kv->storage || kv->len == 0)
        return tb_fail(ctx, TB_ERR_STATE, fn, "kv is not initialised or empty");
    const size_t hkv = cfg->n_kv_heads ? cfg->n_kv_heads : cfg->n_heads;
    if (hkv != kv->n_kv_heads || cfg->head_dim != kv->head_dim)
        return tb_fail(ctx, TB_ERR_SHAPE, fn,
                       "cfg has %zu kv heads of %zu; the cache holds %zu of %zu", hkv,
                       cfg->head_dim, kv->n_kv_heads, kv->head_dim);
    tb_status s = tb_check_tensor(ctx, fn, "q", q->tensor, NULL, NULL);
    if (s == TB_OK)
        s = tb_check_tensor(ctx, fn, "out", out, NULL, NULL);
    if (s != TB_OK)
        return s;
    if (q->tensor->ndim != 3 || q->tensor->shape[0] != kv->batch || out->ndim != 3 ||
        out->shape[0] != kv->batch || out->shape[1] != q->tensor->shape[1])
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "q and out must be (%zu, Tq, ...)", kv->batch);
    size_t hd;
    if (!tb_mul_size(cfg->n_heads, cfg->head_dim, &hd) || q->offset > q->tensor->shape[2] ||
        hd > q->tensor->shape[2] - q->offset || out->shape[2] != hd)
        return tb_fail(ctx, TB_ERR_SHAPE, fn,
                       "q must hold %zu heads x %zu from column %zu, and out that width",
                       cfg->n_heads, cfg->head_dim, q->offset);
    if (key_lengths)
        for (size_t b = 0; b < kv->batch; b++)
            if (key_lengths[b] < 0 || (size_t)key_lengths[b] > kv->len)
                return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                               "key_lengths[%zu] = %ld is outside [0, %zu]", b,
                               (long)key_lengths[b], kv->len);
    if ((s = attend_alias(ctx, fn, kv, cfg->n_heads, key_lengths, q, out)) != TB_OK)
        return s;
    /* One core call per batch row: the cache's rows are max_len apart. */
    const size_t W = kv->n_kv_heads * kv->head_dim, tq = q->tensor->shape[1];
    const size_t wq = q->tensor->shape[2], wo = out->shape[2];
    for (size_t b = 0; b < kv->batch; b++) {
        tb_tensor qb = tb_tensor_3d(q->tensor->data + b * tq * wq, 1, tq, wq);
        tb_tensor ob = tb_tensor_3d(out->data + b * tq * wo, 1, tq, wo);
        tb_tensor kb = tb_tensor_3d(kv->keys + b * kv->max_len * W, 1, kv->len, W);
        tb_tensor vb = tb_tensor_3d(kv->values + b * kv->max_len * W, 1, kv->len, W);
        tb_heads qh = {&qb, q->offset}, kh = {&kb, 0}, vh = {&vb, 0};
        tb_attention_mask m;
        memset(&m, 0, sizeof m);
        m.key_lengths = key_lengths ? key_lengths + b : NULL;
        if ((s = tb_attention_forward(ctx, cfg, TB_MODE_INFERENCE, &m, &qh, &kh, &vh, &ob, NULL,
                                      0)) != TB_OK)
            return s;
    }
    return TB_OK;
}
