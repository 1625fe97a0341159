/* Adam / AdamW (see optim.h for the update and its order of operations). */
#include <float.h>
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
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "beta1 %g must be in [0, 1)",
                       (double)c->beta1);
    if (!(c->beta2 >= 0.0f && c->beta2 < 1.0f))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "beta2 %g must be in [0, 1)",
                       (double)c->beta2);
    /* eps = 0 makes the update 0/0 = NaN wherever the gradient has always
     * been 0; a subnormal eps is 0 where denormals are flushed. */
    if (!(c->eps >= FLT_MIN && isfinite(c->eps)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "eps %g must be finite and at least FLT_MIN (%g, the smallest normal "
                       "float): with eps = 0 a parameter whose gradient is 0 becomes 0/0 = NaN",
                       (double)c->eps, (double)FLT_MIN);
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

/* The new moments of one element and its value after the weight decay
 * (AdamW), in PyTorch's order of operations. The step and the exact check
 * before it both compute them here, so a checked step writes exactly the
 * values that were checked. */
typedef struct adam_moments {
    float x, m, v, vmax; /* vmax: AMSGrad only */
} adam_moments;

static inline adam_moments moments_of(const step_scalars *s, int decoupled, int amsgrad,
                                      float g, float x, float m, float v, float vmax)
{
    const int l2 = s->wd != 0.0f && !decoupled, decay = s->wd != 0.0f && decoupled;
    adam_moments o;
    o.x = decay ? x * s->decay_mul : x;
    g = l2 ? g + s->wd * x : g;
    /* lerp(m, g, w) as ATen computes it on both sides of w = 0.5 */
    o.m = s->one_m_b1 < 0.5f ? m + s->one_m_b1 * (g - m) : g - (g - m) * (1.0f - s->one_m_b1);
    o.v = v * s->b2 + s->one_m_b2 * g * g;
    o.vmax = amsgrad ? (vmax > o.v ? vmax : o.v) : 0.0f;
    return o;
}

/* The parameter's new value from moments_of(). */
static inline float param_of(const step_scalars *s, float eps, int amsgrad,
                             const adam_moments *o)
{
    const float denom = sqrtf(amsgrad ? o->vmax : o->v) / s->bc2_sqrt + eps;
    return o->x + s->neg_step * o->m / denom; /* addcdiv: (value * m) / denom */
}

/* What a step would break at one element (bits). */
enum {
    FAULT_GRAD = 1, /* the gradient is NaN or infinite */
    FAULT_M = 2,    /* the new first moment would not be finite */
    FAULT_V = 4,    /* the new second moment (or its running max) would not be finite */
    FAULT_PARAM = 8 /* the new parameter value would not be finite */
};

/* One slot's state and the step's scalars, as the element loops use them.
 * vm is vmax, or (no AMSGrad) v again, so that it can always be read. */
typedef struct slot_view {
    float *w, *m, *v, *vmax;
    const float *g, *vm;
    size_t n;
    int amsgrad;
    step_scalars s;
} slot_view;

static slot_view view_of(const tb_adam *opt, const tb_adam_slot *sl, const step_scalars *sc)
{
    slot_view sv;
    sv.w = sl->param->value;
    sv.g = sl->param->grad;
    sv.n = sl->param->numel;
    sv.m = opt->m + sl->offset;
    sv.v = opt->v + sl->offset;
    sv.vmax = opt->vmax ? opt->vmax + sl->offset : NULL;
    sv.vm = sv.vmax ? sv.vmax : sv.v;
    sv.amsgrad = sv.vmax != NULL;
    sv.s = sc[sl->group];
    return sv;
}

static inline adam_moments moments_at(const tb_adam *opt, const slot_view *sv, size_t k)
{
    return moments_of(&sv->s, opt->cfg.decoupled, sv->amsgrad, sv->g[k], sv->w[k], sv->m[k],
                      sv->v[k], sv->vm[k]);
}

/* The faults of element k: its new values computed as the step would. */
static unsigned element_faults(const tb_adam *opt, const slot_view *sv, size_t k)
{
    const adam_moments o = moments_at(opt, sv, k);
    unsigned f = 0;
    if (!isfinite(sv->g[k]))
        f |= FAULT_GRAD;
    if (!isfinite(o.m))
        f |= FAULT_M;
    if (!isfinite(o.v) || (sv->amsgrad && !isfinite(o.vmax)))
        f |= FAULT_V;
    if (!f && !isfinite(param_of(&sv->s, opt->cfg.eps, sv->amsgrad, &o)))
        f |= FAULT_PARAM;
    return f;
}

/* |x| as its bit pattern: for magnitudes the integer order is the numeric
 * order, and NaN and +-Inf (>= 0x7f800000) lie above every finite value. */
static inline uint32_t magnitude_bits(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b & 0x7fffffffu;
}

static double magnitude_of(uint32_t b)
{
    float x;
    memcpy(&x, &b, sizeof x);
    return (double)x;
}

/* Whether every new value of the slot is sure to be finite, from the
 * largest magnitudes of its gradients, moments and values (one cheap pass:
 * integer maxima, no division). In exact arithmetic, with g' = g + wd x
 * (Adam's L2 term) and x' the decayed value (AdamW): |m'| <= 2 (|m| + |g'|),
 * v' <= v + g'^2, and |x_new| <= |x'| + |step| |m'| / eps (the denominator
 * is at least eps). Bounds in double below FLT_MAX / 2 leave room for every
 * float rounding of the step's few operations. A slot that fails this (huge
 * or non-finite values) gets the exact check, element by element. (The
 * product step * m' is bounded too: it is formed before the division.) */
/* Elements per chunk of the step and of its guard's pass: the chunks are
 * only the unit of work shared among threads (each element's update is
 * independent of every other's, and a maximum does not depend on the
 * order it is taken in, so how they are shared cannot change a bit). */
#define STEP_CHUNK 8192

/* The largest magnitude bits of g, m, v (and vmax) and x over elements
 * [lo, hi), folded into b[0..3]. As signed integers (a magnitude's bits
 * are below 2^31) the maxima vectorise without SSE4.1's unsigned compare;
 * amsgrad is a literal at every call, so the vmax read folds away. */
static inline void magnitudes_range(const slot_view *sv, int amsgrad, size_t lo, size_t hi,
                                    int32_t b[4])
{
    const float *restrict g = sv->g, *restrict m = sv->m, *restrict v = sv->v;
    const float *restrict vm = sv->vm, *restrict x = sv->w;
    int32_t bg = b[0], bm = b[1], bv = b[2], bx = b[3];
    for (size_t k = lo; k < hi; k++) {
        const int32_t gk = (int32_t)magnitude_bits(g[k]), mk = (int32_t)magnitude_bits(m[k]);
        const int32_t vk = (int32_t)magnitude_bits(v[k]), xk = (int32_t)magnitude_bits(x[k]);
        bg = gk > bg ? gk : bg;
        bm = mk > bm ? mk : bm;
        bv = vk > bv ? vk : bv;
        if (amsgrad) {
            const int32_t vmk = (int32_t)magnitude_bits(vm[k]);
            bv = vmk > bv ? vmk : bv;
        }
        bx = xk > bx ? xk : bx;
    }
    b[0] = bg, b[1] = bm, b[2] = bv, b[3] = bx;
}

static int surely_finite(const tb_ctx *ctx, const tb_adam *opt, const slot_view *sv)
{
    int32_t bg = 0, bm = 0, bv = 0, bx = 0;
    const size_t chunks = (sv->n + STEP_CHUNK - 1) / STEP_CHUNK;
#pragma omp parallel for num_threads(tb_threads_for(ctx, 2.0 * (double)sv->n)) \
    reduction(max : bg, bm, bv, bx) schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        const size_t lo = c * STEP_CHUNK, hi = lo + STEP_CHUNK < sv->n ? lo + STEP_CHUNK : sv->n;
        int32_t b[4] = {bg, bm, bv, bx};
        if (sv->amsgrad)
            magnitudes_range(sv, 1, lo, hi, b);
        else
            magnitudes_range(sv, 0, lo, hi, b);
        bg = b[0], bm = b[1], bv = b[2], bx = b[3];
    }
    const int32_t inf = 0x7f800000;
    if (bg >= inf || bm >= inf || bv >= inf || bx >= inf)
        return 0;
    const step_scalars *s = &sv->s;
    const int decoupled = opt->cfg.decoupled;
    const double G = magnitude_of((uint32_t)bg), M = magnitude_of((uint32_t)bm);
    const double V = magnitude_of((uint32_t)bv), X = magnitude_of((uint32_t)bx), wd = s->wd;
    const double g1 = G + (decoupled ? 0.0 : wd) * X;
    const double decay = decoupled && wd != 0.0 ? fabs((double)s->decay_mul) : 1.0;
    const double m1 = 2.0 * (M + g1), v1 = V + g1 * g1, step_m = fabs((double)s->neg_step) * m1;
    const double x1 = X * (decay > 1.0 ? decay : 1.0) + step_m / (double)opt->cfg.eps;
    const double lim = (double)FLT_MAX / 2.0;
    return m1 <= lim && v1 <= lim && step_m <= lim && x1 <= lim;
}

/* The faults the step would meet in one slot (0 for none). */
static unsigned slot_faults(const tb_ctx *ctx, const tb_adam *opt, const slot_view *sv)
{
    if (surely_finite(ctx, opt, sv))
        return 0;
    unsigned faults = 0;
#pragma omp parallel for num_threads(tb_threads_for(ctx, 8.0 * (double)sv->n)) \
    reduction(| : faults) schedule(static)
    for (size_t k = 0; k < sv->n; k++)
        faults |= element_faults(opt, sv, k);
    return faults;
}

/* Elements [lo, hi) of one slot stepped. Every call passes decoupled and
 * amsgrad as literals, so once inlined the branches on them fold away and
 * the loop vectorises (the Makefile builds this file at -O3 with
 * -fno-math-errno, which lets sqrtf become one instruction; results are
 * the same: IEEE sqrt and division are correctly rounded in any width, and
 * ISO C mode contracts nothing into FMAs). The pointers do not overlap:
 * step_alias() checked that. */
static inline void step_range(const slot_view *sv, float eps, int decoupled, int amsgrad,
                              size_t lo, size_t hi)
{
    float *restrict w = sv->w, *restrict m = sv->m, *restrict v = sv->v;
    float *restrict vmax = sv->vmax;
    const float *restrict g = sv->g;
    const step_scalars s = sv->s;
    for (size_t k = lo; k < hi; k++) {
        const adam_moments o =
            moments_of(&s, decoupled, amsgrad, g[k], w[k], m[k], v[k], amsgrad ? vmax[k] : 0.0f);
        m[k] = o.m;
        v[k] = o.v;
        if (amsgrad)
            vmax[k] = o.vmax;
        w[k] = param_of(&s, eps, amsgrad, &o);
    }
}

/* One slot's update, written (its check passed). */
static void step_slot(const tb_ctx *ctx, const tb_adam *opt, slot_view sv)
{
    const float eps = opt->cfg.eps;
    const int variant = (opt->cfg.decoupled ? 1 : 0) + (sv.amsgrad ? 2 : 0);
    const size_t chunks = (sv.n + STEP_CHUNK - 1) / STEP_CHUNK;
#pragma omp parallel for num_threads(tb_threads_for(ctx, 8.0 * (double)sv.n)) schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        const size_t lo = c * STEP_CHUNK, hi = lo + STEP_CHUNK < sv.n ? lo + STEP_CHUNK : sv.n;
        switch (variant) {
        case 0: step_range(&sv, eps, 0, 0, lo, hi); break;
        case 1: step_range(&sv, eps, 1, 0, lo, hi); break;
        case 2: step_range(&sv, eps, 0, 1, lo, hi); break;
        default: step_range(&sv, eps, 1, 1, lo, hi); break;
        }
    }
}

/* Refuse the step: name the parameter, what would break and the first
 * element at fault. */
static tb_status refuse_step(tb_ctx *ctx, const char *fn, tb_adam *opt, const tb_adam_slot *sl,
                             const slot_view *sv, unsigned faults)
{
    const unsigned long long t = (unsigned long long)(opt->step + 1);
    opt->skipped++;
    if (faults & FAULT_GRAD)
        return tb_fail(ctx, TB_ERR_NON_FINITE, fn,
                       "gradient of '%s' holds NaN or infinity; step %llu skipped, nothing "
                       "changed",
                       sl->name, t);
    size_t k = 0;
    unsigned f = 0;
    for (; k < sv->n && !f; k++)
        f = element_faults(opt, sv, k);
    k--; /* the first element at fault (faults != 0: there is one) */
    const char *what = (f & FAULT_V)   ? "second moment v = beta2 v + (1 - beta2) g^2"
                       : (f & FAULT_M) ? "first moment m"
                                       : "value";
    return tb_fail(ctx, TB_ERR_NON_FINITE, fn,
                   "the %s of '%s' would overflow (element %zu: gradient %g, value %g); step %llu "
                   "skipped, nothing changed",
                   what, sl->name, k, (double)sv->g[k], (double)sv->w[k], t);
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
    const uint64_t t = opt->step + 1;
    step_scalars sc[TB_ADAM_MAX_GROUPS];
    for (size_t g = 0; g < opt->n_groups; g++)
        sc[g] = scalars_for(opt, &opt->groups[g], lr_factor, t);
    /* All or nothing: every new value of every parameter is computed and
     * checked first (a non-finite gradient, or a finite one large enough
     * that g*g overflows v, which would freeze the parameter for good). */
    for (size_t i = 0; i < opt->n_slots; i++) {
        const tb_adam_slot *sl = &opt->slots[i];
        if (!sl->param->trainable)
            continue;
        const slot_view sv = view_of(opt, sl, sc);
        const unsigned faults = slot_faults(ctx, opt, &sv);
        if (faults)
            return refuse_step(ctx, fn, opt, sl, &sv, faults);
    }
    opt->step = t;
    for (size_t i = 0; i < opt->n_slots; i++) {
        const tb_adam_slot *sl = &opt->slots[i];
        if (sl->param->trainable)
            step_slot(ctx, opt, view_of(opt, sl, sc));
    }
    return TB_OK;
}
