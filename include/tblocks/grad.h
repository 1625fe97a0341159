/**
 * @file grad.h
 * @brief Gradient utilities over a parameter list: the global norm,
 * global-norm clipping (as `torch.nn.utils.clip_grad_norm_`), and the EWC
 * penalty with its diagonal Fisher estimate.
 *
 * All of them visit the trainable parameters that have a gradient buffer,
 * in list order. Norms are accumulated in double over fixed blocks of 4096
 * elements combined in order, so they are bitwise identical for any thread
 * count.
 *
 * Gradient accumulation needs nothing here: backward passes add into the
 * gradients, so k micro-batches whose losses are each scaled by 1/k leave
 * the gradient of the mean loss over the k*b examples (test_optim.c checks
 * it against one batch of k*b).
 */
#ifndef TBLOCKS_GRAD_H
#define TBLOCKS_GRAD_H

#include <stddef.h>

#include "context.h"
#include "param.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @brief The L2 norm of all gradients taken together.
 * @param ctx Context.
 * @param list Parameters.
 * @param norm Receives the norm (NaN or infinity if a gradient is); written
 *        after the last gradient is read, so no aliasing rule applies.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_STATE (a stale list, see param.h).
 */
tb_status tb_grad_norm(tb_ctx *ctx, const tb_param_list *list, double *norm);

/**
 * @brief Scale all gradients so that their global L2 norm is at most
 * `max_norm`: with n the norm, every gradient is multiplied by
 * max_norm / (n + 1e-6) when that is below 1 (PyTorch's rule).
 * @param ctx Context.
 * @param list Parameters.
 * @param max_norm Finite and > 0.
 * @param total_norm Receives the norm before clipping, or NULL; it is
 *        written before the gradients are scaled, so it must not overlap
 *        one.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG for a bad max_norm, or
 *         when an output overlaps an input it still reads, or another output
 *         (the gradients are outputs, and must not overlap each other: a
 *         parameter listed twice is refused); TB_ERR_STATE (a stale list, see
 *         param.h); TB_ERR_NON_FINITE if the norm is NaN or infinite (the
 *         gradients are left unchanged and *total_norm holds the norm);
 *         TB_ERR_NO_MEMORY or TB_ERR_OVERFLOW for the check's scratch.
 */
tb_status tb_clip_grad_norm(tb_ctx *ctx, tb_param_list *list, float max_norm,
                            double *total_norm);

/**
 * @brief Elastic weight consolidation (Kirkpatrick et al., 2017): a
 * snapshot theta* of the parameters after task A and a diagonal Fisher
 * estimate F, both flat over the list's trainable parameters in list order.
 */
typedef struct tb_ewc {
    size_t n;               /**< Scalars covered (trainable ones at init). */
    float *anchor;          /**< theta*, n floats. */
    float *fisher;          /**< F, n floats (0 after init). */
    tb_allocator allocator; /**< Hooks the buffers came from. */
} tb_ewc;

/**
 * @brief Snapshot the list's trainable parameters as theta*; F = 0.
 * @param ctx Context.
 * @param ewc State to initialise; left empty on failure.
 * @param list Parameters.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_STATE (a stale list, see
 *         param.h); TB_ERR_OVERFLOW; TB_ERR_NO_MEMORY.
 */
tb_status tb_ewc_init(tb_ctx *ctx, tb_ewc *ewc, const tb_param_list *list);

/**
 * @brief Release the buffers; the struct is left empty.
 * @param ewc State; NULL or empty is fine.
 */
void tb_ewc_free(tb_ewc *ewc);

/**
 * @brief Add `weight * grad^2` to F: call after the backward pass of each
 * of n batches of task A with weight 1/n (the empirical Fisher of the
 * batch-mean loss).
 * @param ctx Context.
 * @param ewc State.
 * @param list The same parameters as at init (same trainable set).
 * @param weight Finite and >= 0.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (bad weight; an
 *         output overlaps an input it still reads, or another output: F is
 *         the output, the gradients the inputs); TB_ERR_STATE (a stale list,
 *         see param.h, or an uninitialised state); TB_ERR_SHAPE if the list's
 *         trainable scalars differ from init; TB_ERR_NO_MEMORY or
 *         TB_ERR_OVERFLOW for the check's scratch.
 */
tb_status tb_ewc_accumulate_fisher(tb_ctx *ctx, tb_ewc *ewc, const tb_param_list *list,
                                   float weight);

/**
 * @brief The penalty `lambda/2 * sum F (theta - theta*)^2`; adds its
 * gradient `lambda * F * (theta - theta*)` to the parameters' gradients.
 * @param ctx Context.
 * @param ewc State.
 * @param list The same parameters as at init.
 * @param lambda Finite and >= 0.
 * @param penalty Receives the penalty (to add to the reported loss), or NULL.
 * @return As tb_ewc_accumulate_fisher(), with TB_ERR_INVALID_ARG when an
 *         output overlaps an input it still reads, or another output (the
 *         gradients and penalty are the outputs; the values, the anchor and F
 *         the inputs).
 */
tb_status tb_ewc_penalty(tb_ctx *ctx, const tb_ewc *ewc, tb_param_list *list, float lambda,
                         double *penalty);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_GRAD_H */
