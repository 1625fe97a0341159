/* Gradient norm, clipping and EWC (grad.h). */
#include <math.h>
#include <string.h>

#include "../core/internal.h"

#define NORM_BLOCK 4096

static int uses(const tb_param *p)
{
    return p->trainable && p->grad != NULL;
}

/* Sum of squares of x[0..n) in double: blocks of NORM_BLOCK summed
 * sequentially, block sums added in order (independent of threads). */
static double sum_squares(const tb_ctx *ctx, const float *x, size_t n)
{
    const size_t nb = (n + NORM_BLOCK - 1) / NORM_BLOCK;
    double total = 0.0;
    if (nb <= 1) {
        for (size_t i = 0; i < n; i++)
            total += (double)x[i] * (double)x[i];
        return total;
    }
    double part[64];
    for (size_t b0 = 0; b0 < nb; b0 += 64) {
        const size_t cnt = nb - b0 < 64 ? nb - b0 : 64;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)cnt * NORM_BLOCK)) \
    schedule(static)
        for (size_t b = 0; b < cnt; b++) {
            const size_t lo = (b0 + b) * NORM_BLOCK, hi = lo + NORM_BLOCK < n ? lo + NORM_BLOCK : n;
            double s = 0.0;
            for (size_t i = lo; i < hi; i++)
                s += (double)x[i] * (double)x[i];
            part[b] = s;
        }
        for (size_t b = 0; b < cnt; b++)
            total += part[b];
    }
    return total;
}

/* ---- Aliasing (docs/conventions.md). The gradients are visited once per
 * pass in list order: two entries sharing memory would be scaled or
 * added into twice, so gradients written must not meet each other (not
 * even exactly: a parameter listed twice), the inputs read, or the
 * scalar results. -------------------------------------------------------- */

/* Which buffer of an entry: its value or its gradient. */
enum { VALUES, GRADS };

/* Appends the value or gradient span of every entry `pick` accepts, named
 * "value of 'name'" / "gradient of 'name'". */
static size_t list_spans(const tb_param_list *list, int (*pick)(const tb_param *), int which,
                         tb_span *spans)
{
    size_t n = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (!pick(p))
            continue;
        spans[n] = tb_span_floats(which == GRADS ? "gradient" : "value",
                                  which == GRADS ? p->grad : p->value, p->numel);
        spans[n++].owner = list->items[i].name;
    }
    return n;
}

static int trainable(const tb_param *p)
{
    return p->trainable;
}

/* The gradients `pick` accepts (written) and the result `scalar` (written;
 * absent when NULL), against the values `vpick` accepts (read; none when
 * NULL) and `extra` more inputs. */
static tb_status list_alias(tb_ctx *ctx, const char *fn, const tb_param_list *list,
                            int (*pick)(const tb_param *), const tb_span *scalar,
                            int (*vpick)(const tb_param *), const tb_span *extra, size_t n_extra)
{
    tb_span *spans;
    size_t room;
    if (!tb_add_size(list->count, list->count, &room) || !tb_add_size(room, 1 + n_extra, &room))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "the list is too long");
    tb_status s = tb_spans_alloc(ctx, fn, room, &spans);
    if (s != TB_OK)
        return s;
    size_t n_out = list_spans(list, pick, GRADS, spans);
    spans[n_out++] = *scalar;
    tb_span *in = spans + n_out;
    size_t n_in = vpick ? list_spans(list, vpick, VALUES, in) : 0;
    for (size_t i = 0; i < n_extra; i++)
        in[n_in++] = extra[i];
    s = tb_check_alias(ctx, fn, spans, n_out, in, n_in);
    tb_free_with(&ctx->allocator, spans);
    return s;
}

tb_status tb_grad_norm(tb_ctx *ctx, const tb_param_list *list, double *norm)
{
    if (!ctx || !list || !norm)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "ctx, list and norm must not be NULL");
    const tb_status s = tb_check_param_list(ctx, __func__, list);
    if (s != TB_OK)
        return s;
    double ss = 0.0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (uses(p))
            ss += sum_squares(ctx, p->grad, p->numel);
    }
    *norm = sqrt(ss);
    return TB_OK;
}

tb_status tb_clip_grad_norm(tb_ctx *ctx, tb_param_list *list, float max_norm,
                            double *total_norm)
{
    const char *fn = __func__;
    if (!ctx || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and list must not be NULL");
    if (!(max_norm > 0.0f && isfinite(max_norm)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "max_norm %g must be finite and > 0",
                       (double)max_norm);
    const tb_span result = tb_span_bytes("total_norm", total_norm, sizeof *total_norm);
    tb_status s = list_alias(ctx, fn, list, uses, &result, NULL, NULL, 0);
    if (s != TB_OK)
        return s;
    double n;
    if ((s = tb_grad_norm(ctx, list, &n)) != TB_OK)
        return s;
    if (total_norm)
        *total_norm = n;
    if (!isfinite(n))
        return tb_fail(ctx, TB_ERR_NON_FINITE, fn,
                       "gradient norm is %g; gradients left unchanged", n);
    const double coef = (double)max_norm / (n + 1e-6);
    if (coef >= 1.0)
        return TB_OK;
    const float c = (float)coef;
    for (size_t i = 0; i < list->count; i++) {
        tb_param *p = list->items[i].param;
        if (!uses(p))
            continue;
        float *g = p->grad;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)p->numel)) schedule(static)
        for (size_t k = 0; k < p->numel; k++)
            g[k] *= c;
    }
    return TB_OK;
}

/* Trainable scalars of the list (those tb_ewc covers). */
static size_t trainable_numel(const tb_param_list *list)
{
    size_t n = 0;
    for (size_t i = 0; i < list->count; i++)
        if (list->items[i].param->trainable)
            n += list->items[i].param->numel;
    return n;
}

tb_status tb_ewc_init(tb_ctx *ctx, tb_ewc *ewc, const tb_param_list *list)
{
    const char *fn = __func__;
    if (!ewc)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ewc must not be NULL");
    memset(ewc, 0, sizeof *ewc);
    if (!ctx || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and list must not be NULL");
    tb_status s = tb_check_param_list(ctx, fn, list);
    if (s != TB_OK)
        return s;
    const size_t n = trainable_numel(list);
    size_t bytes;
    if (!tb_mul_size(n ? n : 1, 2 * sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "EWC buffers overflow");
    void *mem;
    if ((s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
        return s;
    ewc->n = n;
    ewc->anchor = mem;
    ewc->fisher = ewc->anchor + n;
    ewc->allocator = ctx->allocator;
    size_t at = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (!p->trainable)
            continue;
        memcpy(ewc->anchor + at, p->value, p->numel * sizeof(float));
        at += p->numel;
    }
    memset(ewc->fisher, 0, n * sizeof(float));
    return TB_OK;
}

void tb_ewc_free(tb_ewc *ewc)
{
    if (!ewc)
        return;
    if (ewc->anchor)
        tb_free_with(&ewc->allocator, ewc->anchor);
    memset(ewc, 0, sizeof *ewc);
}

static tb_status ewc_check(tb_ctx *ctx, const char *fn, const tb_ewc *ewc,
                           const tb_param_list *list, float x, const char *xname)
{
    if (!ctx || !ewc || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, ewc and list must not be NULL");
    if (!ewc->anchor)
        return tb_fail(ctx, TB_ERR_STATE, fn, "ewc is not initialised");
    if (!(x >= 0.0f && isfinite(x)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "%s %g must be finite and >= 0", xname,
                       (double)x);
    const tb_status s = tb_check_param_list(ctx, fn, list);
    if (s != TB_OK)
        return s;
    const size_t n = trainable_numel(list);
    if (n != ewc->n)
        return tb_fail(ctx, TB_ERR_SHAPE, fn,
                       "the list has %zu trainable scalars; the EWC snapshot has %zu", n,
                       ewc->n);
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (p->trainable && !p->grad)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "'%s' has no gradient buffer",
                           list->items[i].name);
    }
    return TB_OK;
}

/* F is added into while the trainable gradients are read. */
static tb_status fisher_alias(tb_ctx *ctx, const char *fn, const tb_ewc *ewc,
                              const tb_param_list *list)
{
    tb_span *spans;
    tb_status s = tb_spans_alloc(ctx, fn, list->count + 1, &spans);
    if (s != TB_OK)
        return s;
    spans[0] = tb_span_floats("ewc->fisher", ewc->fisher, ewc->n);
    const size_t n_in = list_spans(list, trainable, GRADS, spans + 1);
    s = tb_check_alias(ctx, fn, spans, 1, spans + 1, n_in);
    tb_free_with(&ctx->allocator, spans);
    return s;
}

tb_status tb_ewc_accumulate_fisher(tb_ctx *ctx, tb_ewc *ewc, const tb_param_list *list,
                                   float weight)
{
    tb_status s = ewc_check(ctx, __func__, ewc, list, weight, "weight");
    if (s == TB_OK)
        s = fisher_alias(ctx, __func__, ewc, list);
    if (s != TB_OK)
        return s;
    size_t at = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_param *p = list->items[i].param;
        if (!p->trainable)
            continue;
        float *f = ewc->fisher + at;
        const float *g = p->grad;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)p->numel)) schedule(static)
        for (size_t k = 0; k < p->numel; k++)
            f[k] += weight * (g[k] * g[k]);
        at += p->numel;
    }
    return TB_OK;
}

/* The gradients get lambda F (theta - theta*) added while the values, the
 * anchor and F are read; the penalty is written last. */
static tb_status penalty_alias(tb_ctx *ctx, const char *fn, const tb_ewc *ewc,
                               const tb_param_list *list, const double *penalty)
{
    const tb_span result = tb_span_bytes("penalty", penalty, sizeof *penalty);
    const tb_span state[] = {tb_span_floats("ewc->anchor", ewc->anchor, ewc->n),
                             tb_span_floats("ewc->fisher", ewc->fisher, ewc->n)};
    return list_alias(ctx, fn, list, trainable, &result, trainable, state, 2);
}

tb_status tb_ewc_penalty(tb_ctx *ctx, const tb_ewc *ewc, tb_param_list *list, float lambda,
                         double *penalty)
{
    tb_status s = ewc_check(ctx, __func__, ewc, list, lambda, "lambda");
    if (s == TB_OK)
        s = penalty_alias(ctx, __func__, ewc, list, penalty);
    if (s != TB_OK)
        return s;
    double total = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < list->count; i++) {
        tb_param *p = list->items[i].param;
        if (!p->trainable)
            continue;
        const float *f = ewc->fisher + at, *a = ewc->anchor + at, *w = p->value;
        float *g = p->grad;
        const size_t n = p->numel;
        /* Fixed blocks summed in order: the penalty does not depend on the
         * thread count. */
        const size_t nb = (n + NORM_BLOCK - 1) / NORM_BLOCK;
        for (size_t b0 = 0; b0 < nb; b0 += 64) {
            const size_t cnt = nb - b0 < 64 ? nb - b0 : 64;
            double part[64];
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)cnt * NORM_BLOCK)) \
    schedule(static)
            for (size_t b = 0; b < cnt; b++) {
                const size_t lo = (b0 + b) * NORM_BLOCK;
                const size_t hi = lo + NORM_BLOCK < n ? lo + NORM_BLOCK : n;
                double sum = 0.0;
                for (size_t k = lo; k < hi; k++) {
                    const float d = w[k] - a[k];
                    sum += (double)f[k] * (double)d * (double)d;
                    g[k] += lambda * (f[k] * d);
                }
                part[b] = sum;
            }
            for (size_t b = 0; b < cnt; b++)
                total += part[b];
        }
        at += n;
    }
    if (penalty)
        *penalty = 0.5 * (double)lambda * total;
    return TB_OK;
}
