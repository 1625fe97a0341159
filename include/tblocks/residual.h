/**
 * @file residual.h
 * @brief Residual (skip) connections: `y = x + f(x)`.
 *
 * Backward of a residual is the one place where an input gradient is
 * accumulated rather than written: the branch's backward writes its input
 * gradient into dx, then tb_residual_backward() adds the gradient that
 * flows through the skip path. No cache and no tb_mode (docs/conventions.md).
 */
#ifndef TBLOCKS_RESIDUAL_H
#define TBLOCKS_RESIDUAL_H

#include "context.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @brief Forward: `y = x + fx`.
 * @param ctx Context.
 * @param x The skip input.
 * @param fx The branch output, same element count.
 * @param y Output, same element count; may be exactly x or fx (the
 *        residual add in place).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG
 *         (an output overlaps an input it still reads, or another output).
 */
tb_status tb_residual_forward(tb_ctx *ctx, const tb_tensor *x, const tb_tensor *fx,
                              tb_tensor *y);

/**
 * @brief Backward of the skip path: `dx += dy`.
 * @param ctx Context.
 * @param dy Gradient w.r.t. y.
 * @param dx Gradient w.r.t. x, same element count, already holding the
 *        branch's contribution; may be exactly dy (then dx = 2 dy).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG
 *         (an output overlaps an input it still reads, or another output).
 */
tb_status tb_residual_backward(tb_ctx *ctx, const tb_tensor *dy, tb_tensor *dx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_RESIDUAL_H */
