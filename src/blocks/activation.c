/* GELU (exact, tanh and quick forms) and ReLU, forward and backward. */
#include <math.h>

#include "../core/internal.h"

#define TB_SQRT1_2 0.70710678118654752440f  /* 1/sqrt(2) */
#define TB_INV_SQRT_2PI 0.39894228040143267794f /* 1/sqrt(2 pi) */
#define TB_SQRT_2_PI 0.79788456080286535588f    /* sqrt(2/pi) */
#define TB_GELU_C 0.044715f
#define TB_GELU_QUICK_A 1.702f /* CLIP's quick_gelu: x sigmoid(1.702 x) */

/*
 * Written to avoid cancellation for negative x: 0.5 (1 + erf(z)) is computed
 * as 0.5 erfc(-z), and 0.5 (1 + tanh u) as the logistic sigmoid s(2u), whose
 * derivative factor 1 - tanh^2 u = 4 s (1 - s) stays accurate in the tails.
 */
static inline float gelu_exact(float x)
{
    return 0.5f * x * erfcf(-x * TB_SQRT1_2);
}

static inline float gelu_exact_grad(float x)
{
    float cdf = 0.5f * erfcf(-x * TB_SQRT1_2);
    float pdf = TB_INV_SQRT_2PI * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

static inline float sigmoid(float z)
{
    return 1.0f / (1.0f + expf(-z));
}

static inline float gelu_tanh(float x)
{
    float u = TB_SQRT_2_PI * (x + TB_GELU_C * x * x * x);
    return x * sigmoid(2.0f * u);
}

static inline float gelu_tanh_grad(float x)
{
    float u = TB_SQRT_2_PI * (x + TB_GELU_C * x * x * x);
    float s = sigmoid(2.0f * u);
    float du = TB_SQRT_2_PI * (1.0f + 3.0f * TB_GELU_C * x * x);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

static inline float gelu_quick(float x)
{
    return x * sigmoid(TB_GELU_QUICK_A * x);
}

/* d/dx x s(a x) = s + a x s (1 - s); s (1 - s) has no cancellation in
 * either tail (1 - s is exact for s < 0.5 and tiny for x >> 0). */
static inline float gelu_quick_grad(float x)
{
    float s = sigmoid(TB_GELU_QUICK_A * x);
    return s + TB_GELU_QUICK_A * x * s * (1.0f - s);
}

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
    const float *xd = x->data;
    float *yd = y->data;
    if (approx == TB_GELU_EXACT) {
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
        for (size_t i = 0; i < n; i++)
            yd[i] = gelu_exact(xd[i]);
    } else if (approx == TB_GELU_TANH) {
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
        for (size_t i = 0; i < n; i++)
            yd[i] = gelu_tanh(xd[i]);
    } else {
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
        for (size_t i = 0; i < n; i++)
            yd[i] = gelu_quick(xd[i]);
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
    const float *xd = x->data, *g = dy->data;
    float *o = dx->data;
    if (approx == TB_GELU_EXACT) {
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
        for (size_t i = 0; i < n; i++)
            o[i] = g[i] * gelu_exact_grad(xd[i]);
    } else if (approx == TB_GELU_TANH) {
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
        for (size_t i = 0; i < n; i++)
            o[i] = g[i] * gelu_tanh_grad(xd[i]);
    } else {
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n)) schedule(static)
        for (size_t i = 0; i < n; i++)
            o[i] = g[i] * gelu_quick_grad(xd[i]);
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
