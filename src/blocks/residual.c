/* Residual connection: y = x + f(x); backward adds dy into dx. */
#include "../core/internal.h"

tb_status tb_residual_forward(tb_ctx *ctx, const tb_tensor *x, const tb_tensor *fx, tb_tensor *y)
{
    size_t n, n2;
    tb_status s = tb_check_same_numel(ctx, __func__, "x", x, "fx", fx, &n);
    if (s == TB_OK)
        s = tb_check_same_numel(ctx, __func__, "x", x, "y", y, &n2);
    if (s == TB_OK)
        s = tb_check_inplace(ctx, __func__, "x", x->data, "y", y->data, n);
    if (s == TB_OK)
        s = tb_check_inplace(ctx, __func__, "fx", fx->data, "y", y->data, n);
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
    if (s == TB_OK)
        s = tb_check_inplace(ctx, __func__, "dy", dy->data, "dx", dx->data, n);
    if (s != TB_OK)
        return s;
    const float *g = dy->data;
    float *o = dx->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++)
        o[i] += g[i];
    return TB_OK;
}
