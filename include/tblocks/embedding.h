/**
 * @file embedding.h
 * @brief Token embedding lookup, as torch.nn.Embedding.
 *
 * Shapes: ids `(N)` int32, out `(N..., dim)` with N rows, weight
 * `(num_embeddings, dim)` named `weight`. No cache and no tb_mode: backward
 * takes the forward ids (docs/conventions.md, "Training and inference").
 */
#ifndef TBLOCKS_EMBEDDING_H
#define TBLOCKS_EMBEDDING_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "param.h"
#include "rng.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief An embedding table; initialise with tb_embedding_init(). */
typedef struct tb_embedding {
    size_t num_embeddings;  /**< Rows of the table (vocabulary size). */
    size_t dim;             /**< Width of one embedding. */
    tb_param weight;        /**< `(num_embeddings, dim)`. */
    int64_t padding_idx;    /**< Row that receives no gradient (PyTorch's
                                 `padding_idx`, e.g. BERT's [PAD] row), or -1
                                 (tb_embedding_init()'s default) for none. Set
                                 it after init; forward still reads the row. */
    void *storage;          /**< Owned memory for the values. */
    void *grad_storage;     /**< Owned memory for the gradient (NULL after
                                 tb_embedding_freeze()). */
    tb_allocator allocator; /**< Hooks `storage` and `grad_storage` came from. */
} tb_embedding;

/**
 * @brief Allocate a table initialised N(0, 1) from `rng` (PyTorch's
 * default), gradient zero.
 * @param ctx Context.
 * @param emb Table to initialise; left empty on failure.
 * @param num_embeddings Number of rows, >= 1 and <= INT32_MAX.
 * @param dim Width, >= 1.
 * @param rng Stream for the initial values.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG, TB_ERR_OVERFLOW or
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_embedding_init(tb_ctx *ctx, tb_embedding *emb, size_t num_embeddings,
                            size_t dim, tb_rng *rng);

/**
 * @brief Freeze the table: release its gradient buffer (weight.grad
 * becomes NULL) and mark it not trainable, so neither a gradient nor
 * optimizer state exists for it (a frozen model under P-tuning or LoRA).
 * The values do not move, so views over them stay valid. Idempotent.
 * @param emb Table (NULL or empty is fine).
 */
void tb_embedding_freeze(tb_embedding *emb);

/**
 * @brief Release the table's memory; the struct is left empty.
 * @param emb Table; NULL or empty is fine.
 */
void tb_embedding_free(tb_embedding *emb);

/**
 * @brief Append `weight` to `list` under `prefix`.
 * @param ctx Context.
 * @param emb Table.
 * @param prefix Name prefix, e.g. "wte", or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add(), or TB_ERR_STATE if the table is not
 *         initialised.
 */
tb_status tb_embedding_params(tb_ctx *ctx, tb_embedding *emb, const char *prefix,
                              tb_param_list *list);

/**
 * @brief Forward: row i of out is row ids[i] of the table.
 * @param ctx Context.
 * @param emb Table.
 * @param ids `n` token ids, each in [0, num_embeddings).
 * @param n Number of ids, >= 1; must equal the row count of out.
 * @param out Output `(n..., dim)`; must not overlap ids or weight.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, or TB_ERR_INVALID_ARG for an
 *         out-of-range id (out untouched; the detail names the position) or
 *         when an output overlaps an input it still reads, or another output.
 */
tb_status tb_embedding_forward(tb_ctx *ctx, const tb_embedding *emb, const int32_t *ids,
                               size_t n, tb_tensor *out);

/**
 * @brief Backward: adds row i of dy into row ids[i] of weight.grad
 * (repeated ids accumulate), except for ids equal to `padding_idx`.
 * Deterministic for any thread count.
 * @param ctx Context.
 * @param emb Table.
 * @param ids The forward ids.
 * @param n Number of ids.
 * @param dy Gradient w.r.t. the forward output, `(n..., dim)`; weight.grad
 *        must not overlap it or ids.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG (an id
 *         out of range; an output overlaps an input it still reads, or another
 *         output), nothing written then.
 */
tb_status tb_embedding_backward(tb_ctx *ctx, tb_embedding *emb, const int32_t *ids,
                                size_t n, const tb_tensor *dy);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_EMBEDDING_H */
