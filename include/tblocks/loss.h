/**
 * @file loss.h
 * @brief Cross-entropy from logits with an ignore index, as
 * torch.nn.functional.cross_entropy.
 *
 * Shapes: logits `(N..., V)` (N rows of V classes), targets `(N)` int32.
 * Rows whose target equals `ignore_index` contribute neither loss nor
 * gradient. Forward keeps each row's log-sum-exp in a caller-provided cache
 * (tb_cross_entropy_cache_size()); backward fuses softmax and the loss:
 * `dlogits = (softmax(logits) - onehot(target)) * dloss / divisor`.
 *
 * The loss is the same in training and inference: it takes no tb_mode, and
 * a NULL cache means no backward follows (docs/conventions.md, "Training
 * and inference").
 *
 * If every target is ignored, the mean reduction has no defined value
 * (PyTorch returns NaN); libtblocks returns a loss of 0 and a zero
 * gradient, so an all-padding batch cannot poison training.
 */
#ifndef TBLOCKS_LOSS_H
#define TBLOCKS_LOSS_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** PyTorch's default ignore index. */
#define TB_IGNORE_INDEX (-100)

/** @brief How per-row losses are combined. */
typedef enum tb_reduction {
    TB_REDUCTION_MEAN = 0, /**< Sum over counted rows / number of counted rows. */
    TB_REDUCTION_SUM = 1   /**< Sum over counted rows. */
} tb_reduction;

/** @brief Options of the cross-entropy loss. */
typedef struct tb_cross_entropy_config {
    int32_t ignore_index;   /**< Targets equal to this are skipped. */
    tb_reduction reduction; /**< Mean or sum. */
} tb_cross_entropy_config;

/**
 * @brief The default options: ignore index -100, mean reduction.
 * @return The options.
 */
tb_cross_entropy_config tb_cross_entropy_default_config(void);

/**
 * @brief Bytes of cache forward needs for `rows` rows.
 * @param rows Number of rows N.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_cross_entropy_cache_size(size_t rows, size_t *bytes);

/**
 * @brief Forward: the reduced loss.
 * @param ctx Context.
 * @param config Options (NULL means the defaults).
 * @param logits `(N..., V)`.
 * @param targets N ids in [0, V) or equal to the ignore index.
 * @param n_targets N; must equal the row count of logits.
 * @param loss Receives the loss.
 * @param cache At least tb_cross_entropy_cache_size(N) bytes, aligned for
 *        float; filled for backward (its first tb_cross_entropy_cache_size(N)
 *        bytes must not overlap logits, targets or loss). Or NULL when no
 *        backward will follow (an evaluation loss: the per-row values then
 *        go to scratch allocated for the call).
 * @param cache_bytes Size of cache.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_BUFFER_TOO_SMALL, or
 *         TB_ERR_INVALID_ARG for a target out of range (detail names it), a
 *         misaligned cache, or when an output overlaps an input it still
 *         reads, or another output; TB_ERR_NO_MEMORY for the scratch of a
 *         call without a cache.
 */
tb_status tb_cross_entropy_forward(tb_ctx *ctx, const tb_cross_entropy_config *config,
                                   const tb_tensor *logits, const int32_t *targets,
                                   size_t n_targets, float *loss, void *cache,
                                   size_t cache_bytes);

/**
 * @brief Backward: writes dlogits for an upstream gradient `dloss` of the
 * reduced loss (1 for a plain loss; the accumulation scale when summing
 * micro-batches).
 * @param ctx Context.
 * @param config The options used in forward (NULL means the defaults).
 * @param logits The forward logits.
 * @param targets The forward targets.
 * @param n_targets N.
 * @param dloss Gradient w.r.t. the reduced loss.
 * @param cache The cache filled by forward on these logits.
 * @param cache_bytes Size of cache.
 * @param dlogits Output, same rows and columns as logits; may be exactly
 *        logits (in place), must not overlap targets or the cache.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_BUFFER_TOO_SMALL,
 *         TB_ERR_INVALID_ARG (a bad target or cache alignment; an output
 *         overlaps an input it still reads, or another output), or
 *         TB_ERR_STATE if the cache was not filled by a forward call on N
 *         rows.
 */
tb_status tb_cross_entropy_backward(tb_ctx *ctx, const tb_cross_entropy_config *config,
                                    const tb_tensor *logits, const int32_t *targets,
                                    size_t n_targets, float dloss, const void *cache,
                                    size_t cache_bytes, tb_tensor *dlogits);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_LOSS_H */
