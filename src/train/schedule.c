/* Learning-rate schedules (schedule.h). */
#include <math.h>
#include <string.h>

#include "../core/internal.h"

tb_lr_schedule tb_lr_schedule_make(tb_lr_kind kind, uint64_t warmup_steps, uint64_t total_steps,
                                   float min_factor)
{
    tb_lr_schedule s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.warmup_steps = warmup_steps;
    s.total_steps = total_steps;
    s.min_factor = min_factor;
    return s;
}

tb_status tb_lr_schedule_check(const tb_lr_schedule *s)
{
    if (!s)
        return TB_ERR_NULL_ARG;
    switch (s->kind) {
    case TB_LR_CONSTANT:
        return TB_OK;
    case TB_LR_WARMUP_COSINE:
    case TB_LR_WARMUP_LINEAR:
        if (!(s->min_factor >= 0.0f && s->min_factor <= 1.0f) ||
            s->total_steps < s->warmup_steps)
            return TB_ERR_INVALID_ARG;
        return TB_OK;
    case TB_LR_CALLBACK:
        return s->fn ? TB_OK : TB_ERR_NULL_ARG;
    }
    return TB_ERR_INVALID_ARG;
}

float tb_lr_factor(const tb_lr_schedule *s, uint64_t step)
{
    if (tb_lr_schedule_check(s) != TB_OK)
        return 0.0f;
    if (s->kind == TB_LR_CALLBACK)
        return s->fn(step, s->user);
    /* Doubles, as the Python reference computes them. */
    if (step < s->warmup_steps)
        return (float)((double)step / (double)s->warmup_steps);
    if (s->kind == TB_LR_CONSTANT)
        return 1.0f;
    const uint64_t span = s->total_steps - s->warmup_steps;
    double progress = (double)(step - s->warmup_steps) / (double)(span ? span : 1);
    if (progress > 1.0)
        progress = 1.0;
    const double f = s->min_factor;
    if (s->kind == TB_LR_WARMUP_COSINE)
        return (float)(0.5 * (1.0 + cos(3.14159265358979323846 * progress)) * (1.0 - f) + f);
    return (float)(f + (1.0 - f) * (1.0 - progress));
}
