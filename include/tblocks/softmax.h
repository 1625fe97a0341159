/**
 * @file softmax.h
 * @brief Numerically stable softmax over the last dimension.
 *
 * Rows may have any length and may contain `-inf` entries (masked
 * positions), which get probability 0. A row whose entries are all `-inf`
 * has no defined softmax (PyTorch returns NaN); libtblocks returns a row of
 * zeros so that a fully masked row cannot poison a model with NaN. A NaN or
 * `+inf` entry makes its row NaN, as in PyTorch. No cache and no tb_mode:
 * backward takes the forward output (docs/conventions.md, "Training and
 * inference").
 */
#ifndef TBLOCKS_SOFTMAX_H
#define TBLOCKS_SOFTMAX_H

#include "context.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @brief Softmax forward over rows: `y[r] = exp(x[r] - max) / sum`.
 * @param ctx Context.
 * @param x Input `(N..., C)`.
 * @param y Output with the same rows and columns; may be exactly x (in
 *        place).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG
 *         (an output overlaps an input it still reads, or another output).
 */
tb_status tb_softmax_forward(tb_ctx *ctx, const tb_tensor *x, tb_tensor *y);

/**
 * @brief Softmax backward from the forward output: writes
 * `dx = y * (dy - sum(y * dy))` row by row.
 * @param ctx Context.
 * @param y The forward output `(N..., C)`.
 * @param dy Gradient w.r.t. y, same rows and columns.
 * @param dx Output, same rows and columns; may be exactly dy or y (in
 *        place).
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE or TB_ERR_INVALID_ARG
 *         (an output overlaps an input it still reads, or another output).
 */
tb_status tb_softmax_backward(tb_ctx *ctx, const tb_tensor *y, const tb_tensor *dy,
                              tb_tensor *dx);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_SOFTMAX_H */
