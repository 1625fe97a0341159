/**
 * @file batchnorm.h
 * @brief Batch normalization of `(B, T, C)` activations, kept for comparison
 * with LayerNorm, as torch.nn.BatchNorm1d on the channel axis.
 *
 * Each channel is normalised over all B*T positions of the batch:
 * `y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c`.
 * - Training mode: batch statistics (biased variance for normalising); the
 *   running statistics are updated with `momentum` using the unbiased
 *   variance, exactly as PyTorch: `running = (1 - m) running + m stat`.
 *   Fewer than two counted positions is an error (TB_ERR_INVALID_ARG), as
 *   in PyTorch.
 * - Inference mode: the running statistics.
 * - TB_NORM_GLOBAL_STATS: the statistics stored in running_mean/running_var
 *   in every mode, never updated, constants in backward.
 * - An optional padding mask `valid` (N bytes, nonzero = a real position):
 *   padded positions neither contribute to the statistics nor receive
 *   gradient, and their output is 0. (PyTorch has no such option.)
 *
 * Training and inference (docs/conventions.md): the forward takes a tb_mode
 * because its arithmetic differs; a NULL cache means no backward follows;
 * backward takes no mode (the cache records which statistics were used).
 *
 * Its output for one sample depends on the other samples, on padding and on
 * the batch size: the reason transformers use LayerNorm instead
 * (examples/norm_compare measures it).
 *
 * Shapes: x, y, dy, dx `(N..., C)` (N = B*T positions); weight, bias,
 * running_mean, running_var `(C)`. Parameters `weight`, `bias`; buffers
 * `running_mean`, `running_var` are listed too (not trainable, no gradient)
 * so checkpoints carry them, as PyTorch's state_dict does. Statistics are
 * reduced over fixed chunks of rows in a fixed order, in double: the result
 * is the same for any thread count.
 */
#ifndef TBLOCKS_BATCHNORM_H
#define TBLOCKS_BATCHNORM_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "norm.h"
#include "param.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief A BatchNorm; initialise with tb_batchnorm_init(). */
typedef struct tb_batchnorm {
    size_t channels;        /**< C. */
    float eps;              /**< Added to the variance. */
    float momentum;         /**< Running-statistics update factor. */
    unsigned flags;         /**< TB_NORM_SCALE | TB_NORM_SHIFT | TB_NORM_GLOBAL_STATS. */
    tb_param weight;        /**< `(C)`, 1 initially; empty without SCALE. */
    tb_param bias;          /**< `(C)`, 0 initially; empty without SHIFT. */
    tb_param running_mean;  /**< `(C)` buffer, 0 initially; not trainable. */
    tb_param running_var;   /**< `(C)` buffer, 1 initially; not trainable. */
    void *storage;          /**< Owned memory. */
    tb_allocator allocator; /**< Hooks `storage` came from. */
} tb_batchnorm;

/**
 * @brief Allocate a BatchNorm.
 * @param ctx Context.
 * @param bn Block to initialise; left empty on failure.
 * @param channels C, >= 1.
 * @param eps Finite and > 0 (PyTorch: 1e-5).
 * @param momentum In [0, 1] (PyTorch: 0.1).
 * @param flags Any of TB_NORM_SCALE | TB_NORM_SHIFT | TB_NORM_GLOBAL_STATS.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG, TB_ERR_OVERFLOW or
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_batchnorm_init(tb_ctx *ctx, tb_batchnorm *bn, size_t channels, float eps,
                            float momentum, unsigned flags);

/**
 * @brief Release the block's memory; the struct is left empty.
 * @param bn Block; NULL or empty is fine.
 */
void tb_batchnorm_free(tb_batchnorm *bn);

/**
 * @brief Append `weight`, `bias` (those that exist), `running_mean` and
 * `running_var` to `list`.
 * @param ctx Context.
 * @param bn Block.
 * @param prefix Name prefix, or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add(), or TB_ERR_STATE if not initialised.
 */
tb_status tb_batchnorm_params(tb_ctx *ctx, tb_batchnorm *bn, const char *prefix,
                              tb_param_list *list);

/**
 * @brief Bytes of cache forward needs for C channels (per-channel mean and
 * 1/std, and how they were obtained). Independent of the batch size.
 * @param channels C.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_batchnorm_cache_size(size_t channels, size_t *bytes);

/**
 * @brief Forward.
 * @param ctx Context.
 * @param bn Block (its running statistics are updated in training mode
 *        without TB_NORM_GLOBAL_STATS).
 * @param mode Training (batch statistics) or inference (running ones).
 * @param x Input `(N..., C)`.
 * @param valid N bytes, nonzero for real positions, or NULL (all real).
 * @param y Output, same rows and columns; may be exactly x (in place).
 * @param cache tb_batchnorm_cache_size(C) bytes aligned for float, or NULL
 *        when no backward will follow. Must not overlap x, valid, y, the
 *        parameters or (when updated) the running statistics.
 * @param cache_bytes Size of cache.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_SHAPE; TB_ERR_OVERFLOW; TB_ERR_STATE;
 *         TB_ERR_BUFFER_TOO_SMALL; TB_ERR_INVALID_ARG for fewer than two
 *         counted positions in training with batch statistics, a bad mode, a
 *         misaligned cache, or when an output overlaps an input it still
 *         reads, or another output (the running statistics count as outputs
 *         when they are updated). Nothing (y, cache, running statistics) is
 *         changed on error. Also TB_ERR_NO_MEMORY when the call's short-lived
 *         scratch cannot be allocated (then nothing is written).
 */
tb_status tb_batchnorm_forward(tb_ctx *ctx, tb_batchnorm *bn, tb_mode mode, const tb_tensor *x,
                               const uint8_t *valid, tb_tensor *y, void *cache,
                               size_t cache_bytes);

/**
 * @brief Backward through the statistics the forward call used (the batch
 * statistics in training mode: the full gradient through mean and
 * variance; otherwise the statistics are constants). Writes dx (0 at padded
 * positions) and adds to weight.grad and bias.grad.
 * @param ctx Context.
 * @param bn Block.
 * @param x The forward input.
 * @param valid The forward mask, or NULL.
 * @param dy Gradient w.r.t. y.
 * @param cache The cache filled by forward on x.
 * @param cache_bytes Size of cache.
 * @param dx Output; may be exactly dy (in place), must not overlap x, valid,
 *        the cache, weight or the gradients.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_OVERFLOW, TB_ERR_STATE
 *         (cache not from a forward call on this input and mask),
 *         TB_ERR_BUFFER_TOO_SMALL or TB_ERR_INVALID_ARG (misaligned cache; an
 *         output overlaps an input it still reads, or another output). Also
 *         TB_ERR_NO_MEMORY when the call's short-lived scratch cannot be
 *         allocated (then nothing is written).
 */
tb_status tb_batchnorm_backward(tb_ctx *ctx, tb_batchnorm *bn, const tb_tensor *x,
                                const uint8_t *valid, const tb_tensor *dy, const void *cache,
                                size_t cache_bytes, tb_tensor *dx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_BATCHNORM_H */
