/**
 * @file activation.h
 * @brief Elementwise activations: GELU (exact, tanh and CLIP's quick
 * forms) and ReLU.
 *
 * x, y, dy and dx must all have the same number of elements (their shapes
 * may be different views of it). In place (docs/conventions.md, Aliasing):
 * y may be exactly x, and dx exactly dy or x (the same memory; any other
 * overlap is refused). Backward takes the forward input x, so keep it if
 * you run backward. No cache and no tb_mode (docs/conventions.md,
 * "Training and inference").
 */
#ifndef TBLOCKS_ACTIVATION_H
#define TBLOCKS_ACTIVATION_H

#include "context.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Which GELU formula to use (torch's `approximate=` argument). */
typedef enum tb_gelu_approx {
    /** `0.5 x (1 + erf(x / sqrt 2))` (torch: approximate='none'). */
    TB_GELU_EXACT = 0,
    /** `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (GPT-2;
     *  torch: approximate='tanh'). */
    TB_GELU_TANH = 1,
    /** `x sigmoid(1.702 x)` (OpenAI CLIP's `quick_gelu`; transformers'
     *  QuickGELUActivation). Not a torch `approximate=` value. Values are
     *  pinned: new forms are appended. */
    TB_GELU_QUICK = 2
} tb_gelu_approx;

/**
 * @brief GELU forward.
 * @param ctx Context.
 * @param approx Formula.
 * @param x Input.
 * @param y Output, same element count; may be exactly x (in place).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG (an
 *         unknown approx; an output overlaps an input it still reads, or
 *         another output).
 */
tb_status tb_gelu_forward(tb_ctx *ctx, tb_gelu_approx approx, const tb_tensor *x,
                          tb_tensor *y);

/**
 * @brief GELU backward: writes `dx = dy * gelu'(x)`.
 * @param ctx Context.
 * @param approx Formula used in forward.
 * @param x The forward input.
 * @param dy Gradient w.r.t. y.
 * @param dx Output; may be exactly dy or x (in place).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG (an
 *         unknown approx; an output overlaps an input it still reads, or
 *         another output).
 */
tb_status tb_gelu_backward(tb_ctx *ctx, tb_gelu_approx approx, const tb_tensor *x,
                           const tb_tensor *dy, tb_tensor *dx);

/**
 * @brief ReLU forward: `y = max(x, 0)`; NaN stays NaN.
 * @param ctx Context.
 * @param x Input.
 * @param y Output, same element count; may be exactly x (in place).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG
 *         (an output overlaps an input it still reads, or another output).
 */
tb_status tb_relu_forward(tb_ctx *ctx, const tb_tensor *x, tb_tensor *y);

/**
 * @brief ReLU backward: writes `dx = x > 0 ? dy : 0` (gradient 0 at x = 0,
 * as PyTorch).
 * @param ctx Context.
 * @param x The forward input.
 * @param dy Gradient w.r.t. y.
 * @param dx Output; may be exactly dy or x (in place).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG
 *         (an output overlaps an input it still reads, or another output).
 */
tb_status tb_relu_backward(tb_ctx *ctx, const tb_tensor *x, const tb_tensor *dy,
                           tb_tensor *dx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_ACTIVATION_H */
