/**
 * @file layernorm.h
 * @brief Layer normalization over the last dimension, as torch.nn.LayerNorm.
 *
 * Each row (position) is normalised over its own C features:
 * `y = (x - mean) / sqrt(var + eps) * weight + bias`, with the biased
 * variance. The statistics are computed in two passes with double
 * accumulation (never as E[x^2] - E[x]^2), so constant rows, large offsets
 * and long rows stay accurate. Because a row depends on nothing but itself,
 * the output is the same at batch size 1, with any padding and with any
 * sequence length: the property that makes it the transformer's norm.
 *
 * Shapes: x, y, dy, dx `(N..., C)`; weight and bias `(C)`, named `weight`
 * and `bias` (present per the TB_NORM_SCALE / TB_NORM_SHIFT flags).
 * Forward keeps each row's mean and 1/std in a caller-provided cache
 * (tb_layernorm_cache_size()) for backward. Training and inference
 * (docs/conventions.md): the same arithmetic, so no tb_mode; a NULL cache
 * means no backward follows.
 */
#ifndef TBLOCKS_LAYERNORM_H
#define TBLOCKS_LAYERNORM_H

#include <stddef.h>

#include "context.h"
#include "norm.h"
#include "param.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief A LayerNorm; initialise with tb_layernorm_init(). */
typedef struct tb_layernorm {
    size_t dim;             /**< C, the normalised (last) dimension. */
    float eps;              /**< Added to the variance. */
    unsigned flags;         /**< TB_NORM_SCALE and/or TB_NORM_SHIFT. */
    tb_param weight;        /**< `(C)`, initialised to 1; empty without SCALE. */
    tb_param bias;          /**< `(C)`, initialised to 0; empty without SHIFT. */
    void *storage;          /**< Owned memory for the values. */
    void *grad_storage;     /**< Owned memory for the gradients (NULL after
                                 tb_layernorm_freeze()). */
    tb_allocator allocator; /**< Hooks `storage` and `grad_storage` came from. */
} tb_layernorm;

/**
 * @brief Freeze the block: release its gradient buffers (the parameters'
 * grad become NULL) and mark it not trainable, so no gradient or optimizer
 * state exists for it (a frozen model under an adapter). The values do not
 * move. Idempotent.
 * @param ln Block (NULL or empty is fine).
 */
void tb_layernorm_freeze(tb_layernorm *ln);

/**
 * @brief Allocate a LayerNorm (weight 1, bias 0, gradients 0).
 * @param ctx Context.
 * @param ln Block to initialise; left empty on failure.
 * @param dim C, >= 1.
 * @param eps Added to the variance; finite and > 0 (PyTorch's default is
 *        1e-5).
 * @param flags Any of TB_NORM_SCALE | TB_NORM_SHIFT (0: no parameters).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG, TB_ERR_OVERFLOW or
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_layernorm_init(tb_ctx *ctx, tb_layernorm *ln, size_t dim, float eps,
                            unsigned flags);

/**
 * @brief Release the block's memory; the struct is left empty.
 * @param ln Block; NULL or empty is fine.
 */
void tb_layernorm_free(tb_layernorm *ln);

/**
 * @brief Append `weight` and/or `bias` (those that exist) to `list`.
 * @param ctx Context.
 * @param ln Block.
 * @param prefix Name prefix, e.g. "h.0.ln_1", or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add(), or TB_ERR_STATE if not initialised.
 */
tb_status tb_layernorm_params(tb_ctx *ctx, tb_layernorm *ln, const char *prefix,
                              tb_param_list *list);

/**
 * @brief Bytes of cache forward needs for `rows` rows (mean and 1/std).
 * @param rows Number of rows N.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_layernorm_cache_size(size_t rows, size_t *bytes);

/**
 * @brief Forward over every row.
 * @param ctx Context.
 * @param ln Block.
 * @param x Input `(N..., C)`; NaN or infinity makes its row NaN.
 * @param y Output, same rows and columns; may be exactly x (in place).
 * @param cache tb_layernorm_cache_size(N) bytes, aligned for float, filled
 *        for backward; or NULL when no backward will follow. Must not
 *        overlap x, y, weight or bias.
 * @param cache_bytes Size of cache (ignored when cache is NULL).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_OVERFLOW, TB_ERR_STATE,
 *         TB_ERR_BUFFER_TOO_SMALL or TB_ERR_INVALID_ARG (misaligned cache;
 *         an output overlaps an input it still reads, or another output).
 */
tb_status tb_layernorm_forward(tb_ctx *ctx, const tb_layernorm *ln, const tb_tensor *x,
                               tb_tensor *y, void *cache, size_t cache_bytes);

/**
 * @brief Backward: writes dx; adds to weight.grad and bias.grad (when they
 * exist and are trainable).
 * @param ctx Context.
 * @param ln Block.
 * @param x The forward input.
 * @param dy Gradient w.r.t. y, same rows and columns.
 * @param cache The cache filled by forward on x.
 * @param cache_bytes Size of cache.
 * @param dx Output, same rows and columns; may be exactly dy (in place),
 *        must not overlap x, the cache, weight or the gradients.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_STATE (cache not from a
 *         forward on N rows), TB_ERR_BUFFER_TOO_SMALL or TB_ERR_INVALID_ARG
 *         (misaligned cache; an output overlaps an input it still reads, or
 *         another output). Also TB_ERR_NO_MEMORY when the call's short-lived
 *         scratch cannot be allocated (then nothing is written).
 */
tb_status tb_layernorm_backward(tb_ctx *ctx, tb_layernorm *ln, const tb_tensor *x,
                                const tb_tensor *dy, const void *cache, size_t cache_bytes,
                                tb_tensor *dx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_LAYERNORM_H */
