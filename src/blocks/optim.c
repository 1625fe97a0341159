/* Adam / AdamW (see optim.h for the update and its order of operations). */
#include <math.h>
#include <string.h>

#include "../core/internal.h"

tb_adam_config tb_adam_default_config(void)
{
    tb_adam_config c;
    memset(&c, 0, sizeof c);
    c.lr = 1e-3f;
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    return c;
}

tb_adam_config tb_adamw_default_config(void)
{
    tb_adam_config c = tb_adam_default_config();
    c.weight_decay = 1e-2f;
    c.decoupled = 1;
    return c;
}

int tb_select_no_decay(const char *name, const tb_param *param, void *user)
{
    (void)name;
    (void)user;
    return param && param->ndim < 2;
}

static int nonneg_finite(float x)
{
    return x >= 0.0f && isfinite(x);
}

static tb_status check_config(tb_ctx *ctx, const char *fn, const tb_adam_config *c)
{
    if (!nonneg_finite(c->lr))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "lr %g must be finite and >= 0", (double)c->lr);
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "betas (%g, %g) must be in [0, 1)",
                       (double)c->beta1, (double)c->beta2);
    if (!nonneg_finite(c->eps))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "eps %g must be finite and >= 0",
                       (double)c->eps);
    if (!nonneg_finite(c->weight_decay))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "weight_decay %g must be finite and >= 0",
                       (double)c->weight_decay);
    return TB_OK;
}

tb_status tb_adam_init(tb_ctx *ctx, tb_adam *opt, const tb_param_list *list,
                       const tb_adam_config *cfg)
{
    const char *fn = __func__;
    if (!opt)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "opt must not be NULL");
    memset(opt, 0, sizeof *opt);
    if (!ctx || !list || !cfg)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, list and cfg must not be NULL");
    tb_status s = check_config(ctx, fn, cfg);
    if (s == TB_OK)
        s = tb_check_param_list(ctx, fn, list);
    if (s != TB_OK)
        return s;
    size_t n_slots = 0, n_state = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (!p->trainable)
            continue;
        if (!p->grad || !p->value)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "trainable parameter '%s' has no value or gradient buffer",
                           list->items[i].name);
        if (!tb_add_size(n_state, p->numel, &n_state))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "optimizer state size overflows");
        n_slots++;
    }
    const size_t moments = cfg->amsgrad ? 3 : 2;
    size_t bytes_state, bytes_slots;
    if (!tb_mul_size(n_state, moments * sizeof(float), &bytes_state) ||
        !tb_mul_size(n_slots ? n_slots : 1, sizeof(tb_adam_slot), &bytes_slots))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "optimizer state size overflows");
    void *state = NULL, *slots = NULL;
    if ((s = tb_alloc(ctx, fn, bytes_state ? bytes_state : sizeof(float), &state)) != TB_OK)
        return s;
    if ((s = tb_alloc(ctx, fn, bytes_slots, &slots)) != TB_OK) {
        tb_free_with(&ctx->allocator, state);
        return s;
    }
    memset(state, 0, bytes_state);
    opt->cfg = *cfg;
    opt->groups[0].lr = cfg->lr;
    opt->groups[0].weight_decay = cfg->weight_decay;
    opt->n_groups = 1;
    opt->slots = slots;
    opt->n_state = n_state;
    opt->m = state;
    opt->v = opt->m + n_state;
    opt->vmax = cfg->amsgrad ? opt->v + n_state : NULL;
    opt->allocator = ctx->allocator;
    size_t at = 0;
    for (size_t i = 0; i < list->count; i++) {
        tb_param *p = list->items[i].param;
        if (!p->trainable)
            continue;
        tb_adam_slot *sl = &opt->slots[opt->n_slots++];
        memcpy(sl->name, list->items[i].name, sizeof sl->name);
        sl->param = p;
        sl->offset = at;
        sl->group = 0;
        at += p->numel;
    }
    return TB_OK;
}

void tb_adam_free(tb_adam *opt)
{
    if (!opt)
        return;
    if (opt->m)
        tb_free_with(&opt->allocator, opt->m);
    if (opt->slots)
        tb_free_with(&opt->allocator, opt->slots);
    memset(opt, 0, sizeof *opt);
}

tb_status tb_adam_add_group(tb_ctx *ctx, tb_adam *opt, float lr, float weight_decay,
                            tb_param_select_fn select, void *user, size_t *n_selected)
{
    const char *fn = __func__;
    if (!opt || !select)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "opt and select must not be NULL");
    if (!opt->slots)
        return tb_fail(ctx, TB_ERR_STATE, fn, "optimizer is not initialised");
    if (!nonneg_finite(lr) || !nonneg_finite(weight_decay))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "lr %g and weight_decay %g must be finite and >= 0", (double)lr,
                       (double)weight_decay);
    if (opt->n_groups >= TB_ADAM_MAX_GROUPS)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "already %d groups", TB_ADAM_MAX_GROUPS);
    const size_t g = opt->n_groups++;
    opt->groups[g].lr = lr;
    opt->groups[g].weight_decay = weight_decay;
    size_t n = 0;
    for (size_t i = 0; i < opt->n_slots; i++)
        if (select(opt->slots[i].name, opt->slots[i].param, user)) {
            opt->slots[i].group = g;
            n++;
        }
    if (n_selected)
        *n_selected = n;
    return TB_OK;
}

size_t tb_adam_state_bytes(const tb_adam *opt)
{
    if (!opt)
        return 0;
    return opt->n_state * (opt->vmax ? 3 : 2) * sizeof(float) +
           opt->n_slots * sizeof(tb_adam_slot);
}

/* Nonzero if any of the n gradients is NaN or infinite. */
static int any_non_finite(const tb_ctx *ctx, const float *g, size_t n)
{
    int bad = 0;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) reduction(| : bad) \
    schedule(static)
    for (size_t i = 0; i < n; i++)
        bad |= !isfinite(g[i]);
    return bad;
}

/* The scalars of one group at step t, computed in double as PyTorch's
 * Python code does, then used as floats. */
typedef struct step_scalars {
    float decay_mul;   /* AdamW: 1 - lr * wd */
    float wd;          /* Adam: the L2 coefficient */
    float one_m_b1;    /* lerp weight 1 - beta1 */
    float b2, one_m_b2;
    float bc2_sqrt;    /* sqrt(1 - beta2^t) */
    float neg_step;    /* -lr / (1 - beta1^t) */
} step_scalars;

static step_scalars scalars_for(const tb_adam *opt, const tb_adam_group *g, float lr_factor,
                                uint64_t t)
{
    const double lr = (double)g->lr * (double)lr_factor;
    const double b1 = opt->cfg.beta1, b2 = opt->cfg.beta2;
    step_scalars s;
    s.decay_mul = (float)(1.0 - lr * (double)g->weight_decay);
    s.wd = g->weight_decay;
    s.one_m_b1 = (float)(1.0 - b1);
    s.b2 = opt->cfg.beta2;
    s.one_m_b2 = (float)(1.0 - b2);
    s.bc2_sqrt = (float)sqrt(1.0 - pow(b2, (double)t));
    s.neg_step = (float)(-(lr / (1.0 - pow(b1, (double)t))));
    return s;
}

/* Aliasing (docs/conventions.md): a step writes each trainable parameter's
 * value and its slices of m, v (and vmax) while every gradient is still to
 * be read, so those must not meet any gradient or each other (a parameter
 * listed twice would be stepped twice). */
static tb_status step_alias(tb_ctx *ctx, const char *fn, const tb_adam *opt)
{
    tb_span *spans;
    size_t room;
    if (!tb_mul_size(opt->n_slots, 5, &room))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "too many parameters");
    tb_status s = tb_spans_alloc(ctx, fn, room, &spans);
    if (s != TB_OK)
        return s;
    size_t n_out = 0, n_in = 0;
    tb_span *in = spans + 4 * opt->n_slots;
    for (size_t i = 0; i < opt->n_slots; i++) {
        const tb_adam_slot *sl = &opt->slots[i];
        const tb_param *p = sl->param;
        if (!p->trainable)
            continue;
        const size_t at = sl->offset, n = p->numel;
        spans[n_out++] = tb_span_floats("value", p->value, n);
        spans[n_out++] = tb_span_floats("m", opt->m + at, n);
        spans[n_out++] = tb_span_floats("v", opt->v + at, n);
        spans[n_out++] = tb_span_floats("vmax", opt->vmax ? opt->vmax + at : NULL, n);
        in[n_in++] = tb_span_floats("gradient", p->grad, n);
        for (size_t k = 1; k <= 4; k++)
            spans[n_out - k].owner = sl->name;
        in[n_in - 1].owner = sl->name;
    }
    s = tb_check_alias(ctx, fn, spans, n_out, in, n_in);
    tb_free_with(&ctx->allocator, spans);
    return s;
}

tb_status tb_adam_step(tb_ctx *ctx, tb_adam *opt, float lr_factor)
{
    const char *fn = __func__;
    if (!ctx || !opt)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and opt must not be NULL");
    if (!opt->slots)
        return tb_fail(ctx, TB_ERR_STATE, fn, "optimizer is not initialised");
    if (!nonneg_finite(lr_factor))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "lr_factor %g must be finite and >= 0",
                       (double)lr_factor);
    const tb_status aliasing = step_alias(ctx, fn, opt);
    if (aliasing != TB_OK)
        return aliasing;
    for (size_t i = 0; i < opt->n_slots; i++) {
        const tb_param *p = opt->slots[i].param;
        if (p->trainable && any_non_finite(ctx, p->grad, p->numel)) {
            opt->skipped++;
            return tb_fail(ctx, TB_ERR_NON_FINITE, fn,
                           "gradient of '%s' holds NaN or infinity; step %llu skipped, nothing "
                           "changed",
                           opt->slots[i].name, (unsigned long long)(opt->step + 1));
        }
    }
    const uint64_t t = ++opt->step;
    step_scalars sc[TB_ADAM_MAX_GROUPS];
    for (size_t g = 0; g < opt->n_groups; g++)
        sc[g] = scalars_for(opt, &opt->groups[g], lr_factor, t);
    const float eps = opt->cfg.eps;
    const int decoupled = opt->cfg.decoupled;
    for (size_t i = 0; i < opt->n_slots; i++) {
        const tb_adam_slot *sl = &opt->slots[i];
        tb_param *p = sl->param;
        if (!p->trainable)
            continue;
        const step_scalars s = sc[sl->group];
        float *w = p->value;
        const float *gr = p->grad;
        float *m = opt->m + sl->offset, *v = opt->v + sl->offset;
        float *vmax = opt->vmax ? opt->vmax + sl->offset : NULL;
        const size_t n = p->numel;
#pragma omp parallel for num_threads(tb_threads_for(ctx, 8.0 * (double)n)) schedule(static)
        for (size_t k = 0; k < n; k++) {
            float g = gr[k];
            float x = w[k];
            if (s.wd != 0.0f) {
                if (decoupled)
                    x = x * s.decay_mul;
                else
                    g = g + s.wd * x;
            }
            /* lerp(m, g, w) as ATen computes it on both sides of w = 0.5 */
            m[k] = s.one_m_b1 < 0.5f ? m[k] + s.one_m_b1 * (g - m[k])
                                     : g - (g - m[k]) * (1.0f - s.one_m_b1);
            v[k] = v[k] * s.b2 + s.one_m_b2 * g * g;
            float vv = v[k];
            if (vmax) {
                vmax[k] = vmax[k] > vv ? vmax[k] : vv;
                vv = vmax[k];
            }
            const float denom = sqrtf(vv) / s.bc2_sqrt + eps;
            w[k] = x + s.neg_step * m[k] / denom; /* addcdiv: (value * m) / denom */
        }
    }
    return TB_OK;
}
