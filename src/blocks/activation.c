/* GELU (exact, tanh and quick forms) and ReLU, forward and backward. */

#include "../core/internal.h"

#include "../kernels/vexp.h"

/* The GELU formulas are the kernel family's (src/kernels/vexp.h: libm in
 * the portable family, vector code in AVX2 and AVX-512). A tensor is cut
 * into chunks of GELU_CHUNK elements, a multiple of every vector width,
 * split over the threads; each element's value does not depend on its
 * chunk, so results are the same for any thread count. */
enum { GELU_CHUNK = 4096 };

/* Forward: y may be x exactly (each element is read before it is written). */
static tb_status check_forward_alias(tb_ctx *ctx, const char *fn, const tb_tensor *x,
                                     const tb_tensor *y)
{
    const tb_span in[] = {tb_span_tensor("x", x)};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("y", y), TB_INPUT(0))};
    return tb_check_alias(ctx, fn, out, 1, in, 1);
}

/* Backward: dx may be dy or x exactly (element i reads x[i] and dy[i]
 * before writing dx[i]). */
static tb_status check_backward_alias(tb_ctx *ctx, const char *fn, const tb_tensor *x,
                                      const tb_tensor *dy, const tb_tensor *dx)
{
    const tb_span in[] = {tb_span_tensor("x", x), tb_span_tensor("dy", dy)};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("dx", dx), TB_INPUT(0) | TB_INPUT(1))};
    return tb_check_alias(ctx, fn, out, 1, in, 2);
}

static tb_status check_approx(tb_ctx *ctx, const char *fn, tb_gelu_approx approx)
{
    if (approx != TB_GELU_EXACT && approx != TB_GELU_TANH && approx != TB_GELU_QUICK)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown GELU approximation %d", (int)approx);
    return TB_OK;
}

tb_status tb_gelu_forward(tb_ctx *ctx, tb_gelu_approx approx, const tb_tensor *x, tb_tensor *y)
{
    size_t n;
    tb_status s = check_approx(ctx, __func__, approx);
    if (s == TB_OK)
        s = tb_check_same_numel(ctx, __func__, "x", x, "y", y, &n);
    if (s == TB_OK)
        s = check_forward_alias(ctx, __func__, x, y);
    if (s != TB_OK)
        return s;
    const tb_vexp_ops *vx = tb_vexp_select(ctx);
    const float *xd = x->data;
    float *yd = y->data;
    const size_t chunks = (n + GELU_CHUNK - 1) / GELU_CHUNK;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t k = 0; k < chunks; k++) {
        const size_t j = k * GELU_CHUNK, m = n - j < GELU_CHUNK ? n - j : GELU_CHUNK;
        vx->gelu((int)approx, xd + j, yd + j, m);
    }
    return TB_OK;
}

tb_status tb_gelu_backward(tb_ctx *ctx, tb_gelu_approx approx, const tb_tensor *x,
                           const tb_tensor *dy, tb_tensor *dx)
{
    size_t n, n2;
    tb_status s = check_approx(ctx, __func__, approx);
    if (s == TB_OK)
        s = tb_check_same_numel(ctx, __func__, "x", x, "dy", dy, &n);
    if (s == TB_OK)
        s = tb_check_same_numel(ctx, __func__, "x", x, "dx", dx, &n2);
    if (s == TB_OK)
        s = check_backward_alias(ctx, __func__, x, dy, dx);
    if (s != TB_OK)
        return s;
    const tb_vexp_ops *vx = tb_vexp_select(ctx);
    const float *xd = x->data, *g = dy->data;
    float *o = dx->data;
    const size_t chunks = (n + GELU_CHUNK - 1) / GELU_CHUNK;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t k = 0; k < chunks; k++) {
        const size_t j = k * GELU_CHUNK, m = n - j < GELU_CHUNK ? n - j : GELU_CHUNK;
        vx->gelu_backward((int)approx, xd + j, g + j, o + j, m);
    }
    return TB_OK;
}

tb_status tb_relu_forward(tb_ctx *ctx, const tb_tensor *x, tb_tensor *y)
{
    size_t n;
    tb_status s = tb_check_same_numel(ctx, __func__, "x", x, "y", y, &n);
    if (s == TB_OK)
        s = check_forward_alias(ctx, __func__, x, y);
    if (s != TB_OK)
        return s;
    const float *xd = x->data;
    float *yd = y->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++)
        yd[i] = xd[i] < 0.0f ? 0.0f : xd[i]; /* NaN < 0 is false: NaN kept */
    return TB_OK;
}

tb_status tb_relu_backward(tb_ctx *ctx, const tb_tensor *x, const tb_tensor *dy, tb_tensor *dx)
{
    size_t n, n2;
    tb_status s = tb_check_same_numel(ctx, __func__, "x", x, "dy", dy, &n);
    if (s == TB_OK)
        s = tb_check_same_numel(ctx, __func__, "x", x, "dx", dx, &n2);
    if (s == TB_OK)
        s = check_backward_alias(ctx, __func__, x, dy, dx);
    if (s != TB_OK)
        return s;
    const float *xd = x->data, *g = dy->data;
    float *o = dx->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
    for (size_t i = 0; i < n; i++)
        o[i] = xd[i] > 0.0f ? g[i] : 0.0f;
    return TB_OK;
}
