/* Embedding lookup; backward scatter-adds rows. */
#include <string.h>

#include "../core/internal.h"

tb_status tb_embedding_init(tb_ctx *ctx, tb_embedding *emb, size_t num_embeddings,
                            size_t dim, tb_rng *rng)
{
    const char *fn = __func__;
    if (emb)
        memset(emb, 0, sizeof *emb);
    if (!ctx || !emb || !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, emb and rng must not be NULL");
    if (num_embeddings == 0 || dim == 0 || num_embeddings > INT32_MAX)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "num_embeddings (%zu) must be in [1, INT32_MAX] and dim (%zu) >= 1",
                       num_embeddings, dim);
    size_t n, bytes;
    if (!tb_mul_size(num_embeddings, dim, &n) || !tb_mul_size(n, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%zu x %zu table overflows", num_embeddings,
                       dim);
    /* Values and gradient in two allocations, so that tb_embedding_freeze()
     * can release the gradient without moving the values (views over the
     * table, such as a tied output layer, keep pointing at them). */
    void *storage, *grad_storage;
    tb_status s = tb_alloc(ctx, fn, bytes, &storage);
    if (s != TB_OK)
        return s;
    if ((s = tb_alloc(ctx, fn, bytes, &grad_storage)) != TB_OK) {
        tb_free_with(&ctx->allocator, storage);
        return s;
    }
    float *w = storage, *g = grad_storage;
    if ((s = tb_rng_fill_normal(ctx, rng, w, n, 0.0f, 1.0f)) != TB_OK) {
        tb_free_with(&ctx->allocator, storage);
        tb_free_with(&ctx->allocator, grad_storage);
        return s;
    }
    memset(g, 0, bytes);
    emb->num_embeddings = num_embeddings;
    emb->dim = dim;
    emb->padding_idx = -1;
    emb->storage = storage;
    emb->grad_storage = grad_storage;
    emb->allocator = ctx->allocator;
    const size_t shape[2] = {num_embeddings, dim};
    if ((s = tb_param_view(ctx, &emb->weight, w, g, 2, shape)) != TB_OK)
        tb_embedding_free(emb);
    return s;
}

void tb_embedding_freeze(tb_embedding *emb)
{
    if (!emb)
        return;
    if (emb->grad_storage)
        tb_free_with(&emb->allocator, emb->grad_storage);
    emb->grad_storage = NULL;
    emb->weight.grad = NULL, emb->weight.trainable = 0;
}

void tb_embedding_free(tb_embedding *emb)
{
    if (!emb)
        return;
    tb_free_with(&emb->allocator, emb->storage);
    if (emb->grad_storage)
        tb_free_with(&emb->allocator, emb->grad_storage);
    memset(emb, 0, sizeof *emb);
}

tb_status tb_embedding_params(tb_ctx *ctx, tb_embedding *emb, const char *prefix,
                              tb_param_list *list)
{
    if (!emb)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "emb is NULL");
    if (!emb->storage)
        return tb_fail(ctx, TB_ERR_STATE, __func__, "emb is not initialised");
    return tb_param_list_add(ctx, list, prefix, "weight", &emb->weight);
}

/* Common checks: table, ids in range, tensor (n, dim). */
static tb_status check_args(tb_ctx *ctx, const char *fn, const tb_embedding *emb,
                            const int32_t *ids, size_t n, const tb_tensor *t, const char *tname)
{
    if (!ctx || !emb || !ids)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, emb and ids must not be NULL");
    if (!emb->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn, "emb is not initialised");
    if (n == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "the number of ids must be >= 1");
    tb_status s = tb_check_matrix(ctx, fn, tname, t, n, emb->dim);
    if (s != TB_OK)
        return s;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= emb->num_embeddings)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "ids[%zu] = %ld is outside [0, %zu)", i, (long)ids[i],
                           emb->num_embeddings);
    return TB_OK;
}

/* The table as a span (value or gradient). */
static tb_span table_span(const char *name, const tb_embedding *emb, const float *p)
{
    return tb_span_rows(name, p, emb->num_embeddings, emb->dim, emb->dim);
}

/* Rows are copied into out while ids and the table are read. */
static tb_status check_forward_alias(tb_ctx *ctx, const char *fn, const tb_embedding *emb,
                                     const int32_t *ids, size_t n, const tb_tensor *out)
{
    const tb_span in[] = {tb_span_array("ids", ids, n, sizeof *ids),
                          table_span("weight", emb, emb->weight.value)};
    const tb_span o[] = {tb_span_tensor("out", out)};
    return tb_check_alias(ctx, fn, o, 1, in, 2);
}

/* Rows of dy are added into weight.grad while ids and dy are read. */
static tb_status check_backward_alias(tb_ctx *ctx, const char *fn, const tb_embedding *emb,
                                      const int32_t *ids, size_t n, const tb_tensor *dy)
{
    const tb_span in[] = {tb_span_array("ids", ids, n, sizeof *ids),
                          tb_span_tensor("dy", dy)};
    const tb_span o[] = {table_span("weight.grad", emb, emb->weight.grad)};
    return tb_check_alias(ctx, fn, o, 1, in, 2);
}

tb_status tb_embedding_forward(tb_ctx *ctx, const tb_embedding *emb, const int32_t *ids,
                               size_t n, tb_tensor *out)
{
    tb_status s = check_args(ctx, __func__, emb, ids, n, out, "out");
    if (s == TB_OK)
        s = check_forward_alias(ctx, __func__, emb, ids, n, out);
    if (s != TB_OK)
        return s;
    const size_t d = emb->dim;
    const float *w = emb->weight.value;
    float *o = out->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n * d)) schedule(static)
    for (size_t i = 0; i < n; i++)
        memcpy(o + i * d, w + (size_t)ids[i] * d, d * sizeof(float));
    return TB_OK;
}

tb_status tb_embedding_backward(tb_ctx *ctx, tb_embedding *emb, const int32_t *ids, size_t n,
                                const tb_tensor *dy)
{
    tb_status s = check_args(ctx, __func__, emb, ids, n, dy, "dy");
    if (s != TB_OK || !tb_param_wants_grad(&emb->weight))
        return s;
    if ((s = check_backward_alias(ctx, __func__, emb, ids, n, dy)) != TB_OK)
        return s;
    /*
     * Split columns, not rows, among threads: every thread walks all ids in
     * order over its own column range, so repeated ids never race and each
     * gradient element is summed in the same order for any thread count.
     */
    const size_t d = emb->dim, block = 64;
    const size_t nblocks = (d + block - 1) / block;
    float *g = emb->weight.grad;
    const float *gy = dy->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n * d)) schedule(static)
    for (size_t cb = 0; cb < nblocks; cb++) {
        size_t c0 = cb * block, c1 = c0 + block < d ? c0 + block : d;
        for (size_t i = 0; i < n; i++) {
            if ((int64_t)ids[i] == emb->padding_idx)
                continue;
            float *gr = g + (size_t)ids[i] * d;
            const float *dr = gy + i * d;
            for (size_t c = c0; c < c1; c++)
                gr[c] += dr[c];
        }
    }
    return TB_OK;
}
