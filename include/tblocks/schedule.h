/**
 * @file schedule.h
 * @brief Learning-rate schedules: a factor for tb_adam_step() as a pure
 * function of the step, so resuming from a checkpoint needs only the step.
 *
 * `step` counts optimizer steps already taken (0 for the first update), as
 * the `last_epoch` of a PyTorch LambdaLR stepped after each optimizer step
 * does. With W = warmup_steps, N = total_steps, f = min_factor and
 * progress = (step - W) / max(1, N - W) clamped to [0, 1]:
 *
 *   TB_LR_CONSTANT          1 (warm-up still applies if W > 0)
 *   warm-up (step < W)      step / W             (0 at the first step, as in
 *                                                 Hugging Face's schedules)
 *   TB_LR_WARMUP_COSINE     f + (1 - f) * (1 + cos(pi * progress)) / 2
 *   TB_LR_WARMUP_LINEAR     f + (1 - f) * (1 - progress)
 *   TB_LR_CALLBACK          fn(step, user)
 *
 * These equal transformers' get_constant_schedule_with_warmup,
 * get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=f) and
 * get_polynomial_decay_schedule_with_warmup(power=1, lr_end=f*lr) for
 * step <= N (checked in test_optim.c against values the real functions
 * computed). One deliberate difference: past N the factor stays at f,
 * where Hugging Face's cosine rises again.
 */
#ifndef TBLOCKS_SCHEDULE_H
#define TBLOCKS_SCHEDULE_H

#include <stdint.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Kinds of schedule. */
typedef enum tb_lr_kind {
    TB_LR_CONSTANT = 0,      /**< Constant after the warm-up. */
    TB_LR_WARMUP_COSINE = 1, /**< Cosine decay to min_factor. */
    TB_LR_WARMUP_LINEAR = 2, /**< Linear decay to min_factor. */
    TB_LR_CALLBACK = 3       /**< The user's function. */
} tb_lr_kind;

/**
 * @brief A user schedule.
 * @param step Steps already taken.
 * @param user The schedule's user pointer.
 * @return The factor (finite, >= 0).
 */
typedef float (*tb_lr_fn)(uint64_t step, void *user);

/** @brief A schedule (plain data; fill it or use tb_lr_schedule_make()). */
typedef struct tb_lr_schedule {
    tb_lr_kind kind;       /**< Shape of the decay. */
    uint64_t warmup_steps; /**< W: linear warm-up from 0 (0: none). */
    uint64_t total_steps;  /**< N: end of the decay (>= W for the decays). */
    float min_factor;      /**< f: the floor of the decays, in [0, 1]. */
    tb_lr_fn fn;           /**< TB_LR_CALLBACK only. */
    void *user;            /**< Passed to fn. */
} tb_lr_schedule;

/**
 * @brief A schedule of a built-in kind.
 * @param kind TB_LR_CONSTANT, TB_LR_WARMUP_COSINE or TB_LR_WARMUP_LINEAR.
 * @param warmup_steps W.
 * @param total_steps N.
 * @param min_factor f.
 * @return The schedule (check it with tb_lr_schedule_check()).
 */
tb_lr_schedule tb_lr_schedule_make(tb_lr_kind kind, uint64_t warmup_steps, uint64_t total_steps,
                                   float min_factor);

/**
 * @brief Validate a schedule.
 * @param s Schedule.
 * @return TB_OK; TB_ERR_NULL_ARG (s, or fn for TB_LR_CALLBACK);
 *         TB_ERR_INVALID_ARG (unknown kind, min_factor outside [0, 1],
 *         total_steps < warmup_steps for a decay).
 */
tb_status tb_lr_schedule_check(const tb_lr_schedule *s);

/**
 * @brief The factor at `step`.
 * @param s A valid schedule (an invalid one gives 0).
 * @param step Steps already taken.
 * @return The factor.
 */
float tb_lr_factor(const tb_lr_schedule *s, uint64_t step);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_SCHEDULE_H */
