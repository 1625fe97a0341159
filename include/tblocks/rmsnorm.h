/**
 * @file rmsnorm.h
 * @brief RMS normalization over the last dimension, as torch.nn.RMSNorm and
 * the norms of modern decoder-only models.
 *
 * `y = x / sqrt(mean(x^2) + eps) * weight` row by row (no centring, no
 * shift). The mean of squares is accumulated in double. Shapes: x, y, dy, dx
 * `(N..., C)`; weight `(C)` named `weight` (with TB_NORM_SCALE). Forward
 * keeps each row's 1/rms in a caller-provided cache for backward (NULL: no
 * backward follows; no tb_mode, as the arithmetic is the same in training
 * and inference: docs/conventions.md).
 */
#ifndef TBLOCKS_RMSNORM_H
#define TBLOCKS_RMSNORM_H

#include <stddef.h>

#include "context.h"
#include "norm.h"
#include "param.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief An RMSNorm; initialise with tb_rmsnorm_init(). */
typedef struct tb_rmsnorm {
    size_t dim;             /**< C, the normalised (last) dimension. */
    float eps;              /**< Added to the mean of squares. */
    unsigned flags;         /**< 0 or TB_NORM_SCALE. */
    tb_param weight;        /**< `(C)`, initialised to 1; empty without SCALE. */
    void *storage;          /**< Owned memory for the values. */
    void *grad_storage;     /**< Owned memory for the gradients (NULL after
                                 tb_rmsnorm_freeze()). */
    tb_allocator allocator; /**< Hooks `storage` and `grad_storage` came from. */
} tb_rmsnorm;

/**
 * @brief Freeze the block: release its gradient buffers (the parameters'
 * grad become NULL) and mark it not trainable, so no gradient or optimizer
 * state exists for it (a frozen model under an adapter). The values do not
 * move. Idempotent.
 * @param rn Block (NULL or empty is fine).
 */
void tb_rmsnorm_freeze(tb_rmsnorm *rn);

/**
 * @brief Allocate an RMSNorm (weight 1, gradient 0).
 * @param ctx Context.
 * @param rn Block to initialise; left empty on failure.
 * @param dim C, >= 1.
 * @param eps Finite and > 0 (e.g. 1e-6; torch.nn.RMSNorm's default is the
 *        float epsilon 1.19e-7).
 * @param flags 0 or TB_NORM_SCALE (TB_NORM_SHIFT is rejected).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG, TB_ERR_OVERFLOW or
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_rmsnorm_init(tb_ctx *ctx, tb_rmsnorm *rn, size_t dim, float eps, unsigned flags);

/**
 * @brief Release the block's memory; the struct is left empty.
 * @param rn Block; NULL or empty is fine.
 */
void tb_rmsnorm_free(tb_rmsnorm *rn);

/**
 * @brief Append `weight` (if it exists) to `list`.
 * @param ctx Context.
 * @param rn Block.
 * @param prefix Name prefix, or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add(), or TB_ERR_STATE if not initialised.
 */
tb_status tb_rmsnorm_params(tb_ctx *ctx, tb_rmsnorm *rn, const char *prefix,
                            tb_param_list *list);

/**
 * @brief Bytes of cache forward needs for `rows` rows (1/rms per row).
 * @param rows Number of rows N.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_rmsnorm_cache_size(size_t rows, size_t *bytes);

/**
 * @brief Forward over every row.
 * @param ctx Context.
 * @param rn Block.
 * @param x Input `(N..., C)`.
 * @param y Output, same rows and columns; may be exactly x (in place).
 * @param cache tb_rmsnorm_cache_size(N) bytes aligned for float, or NULL
 *        when no backward will follow. Must not overlap x, y or weight.
 * @param cache_bytes Size of cache.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_OVERFLOW, TB_ERR_STATE,
 *         TB_ERR_BUFFER_TOO_SMALL or TB_ERR_INVALID_ARG (misaligned cache;
 *         an output overlaps an input it still reads, or another output).
 */
tb_status tb_rmsnorm_forward(tb_ctx *ctx, const tb_rmsnorm *rn, const tb_tensor *x,
                             tb_tensor *y, void *cache, size_t cache_bytes);

/**
 * @brief Backward: writes dx and adds to weight.grad.
 * @param ctx Context.
 * @param rn Block.
 * @param x The forward input.
 * @param dy Gradient w.r.t. y.
 * @param cache The cache filled by forward on x.
 * @param cache_bytes Size of cache.
 * @param dx Output; may be exactly dy (in place), must not overlap x, the
 *        cache, weight or weight.grad.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_STATE,
 *         TB_ERR_BUFFER_TOO_SMALL or TB_ERR_INVALID_ARG (misaligned cache;
 *         an output overlaps an input it still reads, or another output).
 *         Also TB_ERR_NO_MEMORY when the call's short-lived scratch cannot be
 *         allocated (then nothing is written).
 */
tb_status tb_rmsnorm_backward(tb_ctx *ctx, tb_rmsnorm *rn, const tb_tensor *x,
                              const tb_tensor *dy, const void *cache, size_t cache_bytes,
                              tb_tensor *dx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_RMSNORM_H */
