/**
 * @file linear.h
 * @brief Linear layer: `y = x W^T + b`, as torch.nn.Linear (or, with the
 * (in, out) layout, `y = x W + b`, as GPT-2's Conv1D).
 *
 * Shapes: x `(N..., in)`, y `(N..., out)` (leading dimensions are flattened
 * into N rows), W `(out, in)` (TB_LINEAR_OUT_IN, PyTorch's nn.Linear) or
 * `(in, out)` (TB_LINEAR_IN_OUT, the layout of GPT-2 checkpoints, so their
 * weights load without a transpose), b `(out)`. Parameters are named
 * `weight` and `bias`. No activation cache is needed: backward takes the
 * forward input. The same in training and inference (no tb_mode:
 * docs/conventions.md).
 *
 * Weight tying: tb_linear_view() makes a layer over parameters owned
 * elsewhere (a language model's output layer over the token embedding);
 * its backward adds into that parameter's gradient.
 */
#ifndef TBLOCKS_LINEAR_H
#define TBLOCKS_LINEAR_H

#include <stddef.h>

#include "context.h"
#include "param.h"
#include "rng.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Memory layout of a linear layer's weight. */
typedef enum tb_linear_layout {
    TB_LINEAR_OUT_IN = 0, /**< `(out, in)`, torch.nn.Linear. */
    TB_LINEAR_IN_OUT = 1  /**< `(in, out)`, GPT-2's Conv1D. */
} tb_linear_layout;

/** @brief A linear layer; initialise with tb_linear_init(), release with
 *  tb_linear_free(). Fields may be read; change them only through the API. */
typedef struct tb_linear {
    size_t in_features;     /**< Input width. */
    size_t out_features;    /**< Output width. */
    int has_bias;           /**< Nonzero if `bias` exists. */
    tb_linear_layout layout; /**< Weight layout. */
    tb_param weight;        /**< `(out, in)` or `(in, out)`, see layout. */
    tb_param bias;          /**< `(out)`; value and grad NULL if !has_bias. */
    void *storage;          /**< Owned memory for the values (NULL for a view). */
    void *grad_storage;     /**< Owned memory for the gradients (NULL for a view
                                 or after tb_linear_freeze()). */
    tb_allocator allocator; /**< Hooks `storage` and `grad_storage` came from. */
} tb_linear;

/**
 * @brief Allocate and initialise a linear layer with PyTorch's default
 * initialisation: W and b uniform in [-1/sqrt(in), 1/sqrt(in)), drawn from
 * `rng` (W first, row-major, then b). Gradients start at zero.
 * @param ctx Context (allocator, threads, error detail).
 * @param layer Layer to initialise; on failure it is left empty (freeing it
 *        is still safe).
 * @param in_features Input width, >= 1.
 * @param out_features Output width, >= 1.
 * @param has_bias Nonzero to include a bias.
 * @param rng Stream the initial values are drawn from.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG, TB_ERR_OVERFLOW or
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_linear_init(tb_ctx *ctx, tb_linear *layer, size_t in_features,
                         size_t out_features, int has_bias, tb_rng *rng);

/**
 * @brief tb_linear_init() with a choice of weight layout (the same initial
 * values, in that layout's order).
 * @param ctx Context.
 * @param layer Layer to initialise; left empty on failure.
 * @param in_features Input width, >= 1.
 * @param out_features Output width, >= 1.
 * @param has_bias Nonzero to include a bias.
 * @param layout TB_LINEAR_OUT_IN or TB_LINEAR_IN_OUT.
 * @param rng Stream the initial values are drawn from.
 * @return As tb_linear_init(); TB_ERR_INVALID_ARG for an unknown layout.
 */
tb_status tb_linear_init_layout(tb_ctx *ctx, tb_linear *layer, size_t in_features,
                                size_t out_features, int has_bias, tb_linear_layout layout,
                                tb_rng *rng);

/**
 * @brief A layer over existing parameters, owning nothing (weight tying).
 * tb_linear_free() on it only clears the struct.
 * @param ctx Context (error detail).
 * @param layer Layer to set up.
 * @param weight A 2-D parameter: `(out, in)` or `(in, out)` per layout.
 * @param bias A `(out)` parameter, or NULL for none.
 * @param layout Layout of weight.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_SHAPE (weight not 2-D, bias not
 *         `(out)`); TB_ERR_INVALID_ARG (unknown layout).
 */
tb_status tb_linear_view(tb_ctx *ctx, tb_linear *layer, const tb_param *weight,
                         const tb_param *bias, tb_linear_layout layout);


/**
 * @brief Freeze the layer: release its gradient buffers (weight.grad and
 * bias.grad become NULL) and mark both parameters not trainable, so no
 * gradient or optimizer state exists for them (LoRA's base layer). The
 * values do not move. On a view only the view's own copies are marked
 * (the owner's gradient memory stays). Idempotent.
 * @param layer Layer (NULL or empty is fine).
 */
void tb_linear_freeze(tb_linear *layer);

/**
 * @brief Release a layer's memory; the struct is left empty.
 * @param layer Layer; NULL or an empty layer is fine.
 */
void tb_linear_free(tb_linear *layer);

/**
 * @brief Append the layer's parameters (`weight`, then `bias` if present)
 * to `list` under `prefix`.
 * @param ctx Context.
 * @param layer Layer.
 * @param prefix Name prefix, e.g. "h.0.mlp.c_fc", or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add(), or TB_ERR_STATE if the layer is not
 *         initialised.
 */
tb_status tb_linear_params(tb_ctx *ctx, tb_linear *layer, const char *prefix,
                           tb_param_list *list);

/**
 * @brief Forward: `y = x W^T + b`.
 * @param ctx Context.
 * @param layer Layer.
 * @param x Input `(N..., in)`.
 * @param y Output `(N..., out)` with the same row count; must not overlap
 *        x, weight or bias (no in-place form).
 * @return TB_OK; on error y is untouched and the status is TB_ERR_NULL_ARG,
 *         TB_ERR_SHAPE, TB_ERR_OVERFLOW (a view too large to address),
 *         TB_ERR_INVALID_ARG (an output overlaps an input it still reads, or
 *         another output) or TB_ERR_STATE (layer not initialised). Also
 *         TB_ERR_NO_MEMORY when the call's short-lived scratch cannot be
 *         allocated (then nothing is written).
 */
tb_status tb_linear_forward(tb_ctx *ctx, const tb_linear *layer, const tb_tensor *x,
                            tb_tensor *y);

/**
 * @brief Backward: writes `dx = dy W`, adds `dy^T x` to weight.grad and
 * the column sums of dy to bias.grad (for trainable parameters with a
 * gradient buffer).
 * @param ctx Context.
 * @param layer Layer.
 * @param x The forward input `(N..., in)`.
 * @param dy Gradient of the loss w.r.t. y, `(N..., out)`.
 * @param dx Output `(N..., in)`, or NULL if the input gradient is not wanted;
 *        must not overlap x, dy, weight, weight.grad or bias.grad (no
 *        in-place form).
 * @return TB_OK; on error nothing is written and the status is
 *         TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_OVERFLOW, TB_ERR_INVALID_ARG
 *         (an output overlaps an input it still reads, or another output) or
 *         TB_ERR_STATE (layer not initialised). Also TB_ERR_NO_MEMORY when the
 *         call's short-lived scratch cannot be allocated (then nothing is
 *         written).
 */
tb_status tb_linear_backward(tb_ctx *ctx, tb_linear *layer, const tb_tensor *x,
                             const tb_tensor *dy, tb_tensor *dx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_LINEAR_H */
