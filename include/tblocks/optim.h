/**
 * @file optim.h
 * @brief Adam and AdamW over a named parameter list, with parameter groups,
 * AMSGrad, and a guard against non-finite gradients.
 *
 * The update is PyTorch's (`torch.optim.Adam` / `torch.optim.AdamW`,
 * single-tensor path), step t = 1, 2, ...:
 *
 *     Adam:   g = g + wd * p                      (L2 penalty in the gradient)
 *     AdamW:  p = p * (1 - lr * wd)               (decoupled decay)
 *     m = m + (1 - beta1) * (g - m)
 *     v = beta2 * v + (1 - beta2) * g * g
 *     vmax = max(vmax, v)                         (AMSGrad only; used in place of v)
 *     p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 *
 * with the scalars (bias corrections, step size) computed in double and the
 * element operations in float, in PyTorch's order. test/oracle/gen_optim.py
 * checks the trajectories against PyTorch over 200 steps.
 *
 * Which parameters: tb_adam_init() takes every entry of the list that is
 * trainable at that moment and allocates state (m, v, and vmax with
 * AMSGrad) for those only: frozen parameters cost nothing. A parameter
 * frozen later is skipped by tb_adam_step() (its state is kept); one made
 * trainable later is not known to the optimizer (make a new one).
 *
 * Parameter groups: every parameter starts in group 0 (the configuration's
 * lr and weight decay); tb_adam_add_group() moves the parameters a
 * predicate selects (tb_param_select_fn, param.h: the same predicates that
 * freeze parameters) into a new group with its own lr and weight decay. The usual "no
 * decay on biases and norm weights" rule is one line:
 *
 *     tb_adam_add_group(ctx, &opt, cfg.lr, 0.0f, tb_select_no_decay, NULL, NULL);
 *
 * Learning-rate schedules (schedule.h) give a factor that tb_adam_step()
 * multiplies into every group's lr.
 *
 * Non-finite values: tb_adam_step() is all or nothing. It first checks
 * that every gradient is finite and that every new value the step would
 * write -- first and second moments (and AMSGrad's maximum), parameters --
 * would be finite; otherwise it changes nothing (parameters, moments, step
 * count), counts the skipped step and returns TB_ERR_NON_FINITE with a
 * message naming the parameter, the element and what would overflow. A
 * finite gradient of 3e38, say, would make v = beta2 v + (1 - beta2) g^2
 * infinite for good and freeze the parameter (m / sqrt(inf) = 0 from then
 * on); PyTorch takes that step. The check costs one pass over the state
 * (about 30% of a step): the largest magnitudes of the gradients, moments
 * and values bound every new value, and only a parameter whose bound comes
 * near FLT_MAX gets the new values computed exactly first. Normal steps
 * are unchanged bit for bit.
 *
 * Threads: the update is element-wise, so results are identical for any
 * thread count.
 */
#ifndef TBLOCKS_OPTIM_H
#define TBLOCKS_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "param.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Hyper-parameters of Adam / AdamW (group 0's lr and weight decay). */
typedef struct tb_adam_config {
    float lr;           /**< Learning rate, finite and >= 0. */
    float beta1;        /**< First-moment decay, in [0, 1). */
    float beta2;        /**< Second-moment decay, in [0, 1). */
    float eps;          /**< Added to the denominator, finite and >= FLT_MIN (the
                             smallest normal float, ~1.2e-38). PyTorch accepts 0,
                             which turns a parameter whose gradient has always been 0
                             into 0/0 = NaN; a subnormal eps is 0 where denormals are
                             flushed. Both are refused. */
    float weight_decay; /**< L2 (Adam) or decoupled (AdamW) decay, finite and >= 0. */
    int decoupled;      /**< 0: Adam; nonzero: AdamW. */
    int amsgrad;        /**< Nonzero: AMSGrad (keeps the running maximum of v). */
} tb_adam_config;

/**
 * @brief PyTorch's Adam defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
 * weight decay 0.
 * @return The configuration.
 */
tb_adam_config tb_adam_default_config(void);

/**
 * @brief PyTorch's AdamW defaults: as Adam, with weight decay 1e-2 and
 * `decoupled` set.
 * @return The configuration.
 */
tb_adam_config tb_adamw_default_config(void);

/** Most parameter groups an optimizer can have (group 0 included). */
#define TB_ADAM_MAX_GROUPS 8

/** @brief A parameter group's learning rate and weight decay. */
typedef struct tb_adam_group {
    float lr;           /**< Learning rate before the schedule's factor. */
    float weight_decay; /**< Weight decay of the group. */
} tb_adam_group;

/** @brief One parameter the optimizer updates. */
typedef struct tb_adam_slot {
    char name[TB_PARAM_NAME_MAX]; /**< Its name in the list. */
    tb_param *param;              /**< The parameter (not owned). */
    size_t offset;                /**< First element of its state in m, v, vmax. */
    size_t group;                 /**< Its group. */
} tb_adam_slot;

/**
 * @brief The usual no-decay rule: selects parameters with fewer than two
 * dimensions (biases, LayerNorm/RMSNorm/BatchNorm weights and biases).
 * @param name Unused.
 * @param param The parameter.
 * @param user Unused.
 * @return Nonzero for one-dimensional parameters.
 */
int tb_select_no_decay(const char *name, const tb_param *param, void *user);

/** @brief Adam/AdamW state; initialise with tb_adam_init(). */
typedef struct tb_adam {
    tb_adam_config cfg;                        /**< Configuration at init. */
    tb_adam_group groups[TB_ADAM_MAX_GROUPS]; /**< Groups; [0] from cfg. */
    size_t n_groups;                           /**< Groups in use, >= 1. */
    tb_adam_slot *slots;                       /**< The parameters updated. */
    size_t n_slots;                            /**< Number of slots. */
    size_t n_state;                            /**< Floats per moment buffer. */
    float *m;                                  /**< First moments. */
    float *v;                                  /**< Second moments. */
    float *vmax;                               /**< Running max of v (AMSGrad), else NULL. */
    uint64_t step;                             /**< Steps taken. */
    uint64_t skipped;                          /**< Steps refused (non-finite gradients or
                                                    values that would overflow). */
    tb_allocator allocator;                    /**< Hooks the state came from. */
} tb_adam;

/**
 * @brief Set up the optimizer for the list's trainable parameters (state
 * zeroed, step 0).
 * @param ctx Context (allocator, error detail).
 * @param opt Optimizer to initialise; left empty on failure.
 * @param list Parameters; the optimizer keeps pointers to them (not to the
 *        list).
 * @param cfg Configuration.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG for a bad
 *         hyper-parameter (lr not finite or < 0; beta1 or beta2 outside
 *         [0, 1) or NaN; eps not finite or below FLT_MIN, 0 included;
 *         weight_decay not finite or < 0) or a trainable parameter without a
 *         gradient buffer; TB_ERR_STATE (a stale list, see param.h);
 *         TB_ERR_OVERFLOW; TB_ERR_NO_MEMORY.
 */
tb_status tb_adam_init(tb_ctx *ctx, tb_adam *opt, const tb_param_list *list,
                       const tb_adam_config *cfg);

/**
 * @brief Release the state; the struct is left empty.
 * @param opt Optimizer; NULL or empty is fine.
 */
void tb_adam_free(tb_adam *opt);

/**
 * @brief Move the parameters `select` picks into a new group.
 * @param ctx Context.
 * @param opt Optimizer.
 * @param lr The group's learning rate (finite, >= 0).
 * @param weight_decay The group's weight decay (finite, >= 0).
 * @param select Predicate (param.h): tb_select_prefix(), tb_select_direct(),
 *        tb_select_no_decay() or your own.
 * @param user Passed to select.
 * @param n_selected Receives how many parameters moved, or NULL.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (bad values, or
 *         TB_ADAM_MAX_GROUPS groups already).
 */
tb_status tb_adam_add_group(tb_ctx *ctx, tb_adam *opt, float lr, float weight_decay,
                            tb_param_select_fn select, void *user, size_t *n_selected);

/**
 * @brief One update of every (still trainable) parameter from its gradient.
 * Gradients are read, not zeroed.
 * @param ctx Context (threads).
 * @param opt Optimizer.
 * @param lr_factor Multiplies every group's lr (a schedule's factor; 1 for
 *        none), finite and >= 0.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG for a bad factor, or when
 *         an output overlaps an input it still reads, or another output: each
 *         trainable parameter's value and its slices of m, v and vmax are
 *         outputs, every gradient an input (so a parameter listed twice is
 *         refused); TB_ERR_NON_FINITE if a gradient holds NaN or infinity, or
 *         a moment or parameter would overflow (nothing is changed; `skipped`
 *         counts it); TB_ERR_NO_MEMORY or TB_ERR_OVERFLOW for the check's
 *         scratch. Nothing is changed on error.
 */
tb_status tb_adam_step(tb_ctx *ctx, tb_adam *opt, float lr_factor);

/**
 * @brief Bytes of optimizer state (moments, slots).
 * @param opt Optimizer.
 * @return The size; 0 for NULL.
 */
size_t tb_adam_state_bytes(const tb_adam *opt);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_OPTIM_H */
