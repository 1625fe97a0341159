/**
 * @file dropout.h
 * @brief Inverted dropout with a seeded, thread-count-independent mask.
 *
 * In training, element i is kept with probability 1-p and scaled by
 * 1/(1-p); otherwise it is zeroed. The keep decision of element i depends
 * only on the stream key and the stream position at the forward call plus i,
 * so the mask is the same for every thread count. The cache holds just that
 * position (O(1) memory): backward regenerates the mask instead of storing
 * it. In inference, or with p = 0, dropout is the identity; with p = 1 every
 * element is zeroed.
 *
 * Training and inference follow the library's one rule (docs/conventions.md):
 * `mode` selects the arithmetic, `cache` (NULL: no backward) what is saved;
 * backward takes no mode (the cache records whether forward dropped).
 */
#ifndef TBLOCKS_DROPOUT_H
#define TBLOCKS_DROPOUT_H

#include <stdint.h>

#include "context.h"
#include "rng.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief What dropout backward needs: the mask's stream position. */
typedef struct tb_dropout_cache {
    uint64_t key;     /**< Stream key used by forward. */
    uint64_t counter; /**< Stream position of element 0. */
    uint64_t numel;   /**< Elements the mask covers. */
    float p;          /**< Drop probability used by forward. */
    int active;       /**< 0 if forward was the identity (inference, p = 0). */
} tb_dropout_cache;

/**
 * @brief Dropout forward. In training with p > 0 the stream advances by
 * the element count.
 * @param ctx Context.
 * @param mode TB_MODE_TRAINING applies dropout; TB_MODE_INFERENCE copies.
 * @param p Drop probability in [0, 1].
 * @param rng Stream for the mask (may be NULL in inference); advanced last,
 *        so it must not overlap y or cache.
 * @param x Input.
 * @param y Output, same element count; may be exactly x (in place).
 * @param cache Receives what backward needs (written first: it must not
 *        overlap x), or NULL when no backward will follow.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG (p
 *         outside [0, 1] or NaN; an output overlaps an input it still reads,
 *         or another output).
 */
tb_status tb_dropout_forward(tb_ctx *ctx, tb_mode mode, float p, tb_rng *rng,
                             const tb_tensor *x, tb_tensor *y, tb_dropout_cache *cache);

/**
 * @brief Dropout backward: writes `dx = dy * mask / (1 - p)` (`dx = dy`
 * after an inference forward).
 * @param ctx Context.
 * @param dy Gradient w.r.t. y, same element count as the forward input.
 * @param cache Filled by the matching forward call (read before dx is
 *        written).
 * @param dx Output; may be exactly dy (in place).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG
 *         (an output overlaps an input it still reads, or another output).
 */
tb_status tb_dropout_backward(tb_ctx *ctx, const tb_tensor *dy, const tb_dropout_cache *cache,
                              tb_tensor *dx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_DROPOUT_H */
