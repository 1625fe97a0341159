/* Residual connection: y = x + f(x); backward adds dy into dx. */
#include "../core/internal.h"

tb_status tb_residual_forward(tb_ctx *ctx, const tb_tensor *x, const tb_tensor *fx, tb_tensor *y)
{
    size_t n, n2;
    tb_status s = tb_check_same_numel(ctx, __func__, "x", x, "fx", fx, &n);
    if (s == TB_OK)
        s = tb_check_same_numel(ctx, __func__, "x", x, "y", y, &n2);
    if (s == TB_OK) {
        /* y may be x or fx exactly (the residual add in place): element i
         * reads x[i] and fx[i] before writing y[i]. */
        const tb_span in[] = {tb_span_tensor("x", x), tb_span_tensor("fx", fx)};
        const tb_span out[] = {tb_span_in_place(tb_span_tensor("y", y), TB_INPUT(0) | TB_INPUT(1))};
        s = tb_check_alias(ctx, __func__, out, 1, in, 2);
    }
    if (s != TB_OK)
        return s;
    const float *a = x->data, *b = fx->data;
    float *o = y->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++)
        o[i] = a[i] + b[i];
    return TB_OK;
}

tb_status tb_residual_backward(tb_ctx *ctx, const tb_tensor *dy, tb_tensor *dx)
{
    size_t n;
    tb_status s = tb_check_same_numel(ctx, __func__, "dy", dy, "dx", dx, &n);
    if (s == TB_OK) {
        /* dx may be dy exactly (dx = 2 dy): element i reads dy[i] and dx[i]
         * before writing dx[i]. */
        const tb_span in[] = {tb_span_tensor("dy", dy)};
        const tb_span out[] = {tb_span_in_place(tb_span_tensor("dx", dx), TB_INPUT(0))};
        s = tb_check_alias(ctx, __func__, out, 1, in, 1);
    }
    if (s != TB_OK)
        return s;
    const float *g = dy->data;
    float *o = dx->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++)
        o[i] += g[i];
    return TB_OK;
}
