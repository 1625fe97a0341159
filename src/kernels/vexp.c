/* Exponentials of score rows: portable version and family selection. */
#include "vexp.h"

#include <math.h>

#include "../core/internal.h"
#include "tblocks/activation.h"

float tb_exp_sub_sum_portable(const float *x, float *y, size_t n, float sub)
{
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        const float e = expf(x[j] - sub);
        if (y)
            y[j] = e;
        sum += e;
    }
    return sum;
}

float tb_max_portable(const float *x, size_t n)
{
    float m = -INFINITY;
    for (size_t j = 0; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

static inline float sigmoid_portable(float v)
{
    return 1.0f / (1.0f + expf(-v));
}

static void lstm_cell_portable(float *g, float *c, float *h, size_t H)
{
    for (size_t j = 0; j < H; j++) {
        const float ig = sigmoid_portable(g[j]), fg = sigmoid_portable(g[H + j]);
        const float gg = tanhf(g[2 * H + j]), og = sigmoid_portable(g[3 * H + j]);
        const float cn = fg * c[j] + ig * gg;
        g[j] = ig, g[H + j] = fg, g[2 * H + j] = gg, g[3 * H + j] = og;
        c[j] = cn;
        h[j] = og * tanhf(cn);
    }
}

static void tanh_portable(const float *x, float *y, size_t n)
{
    for (size_t j = 0; j < n; j++)
        y[j] = tanhf(x[j]);
}

/* GELU with libm (moved here from src/blocks/activation.c unchanged).
 * Written to avoid cancellation for negative x: 0.5 (1 + erf(z)) is
 * computed as 0.5 erfc(-z), and 0.5 (1 + tanh u) as the logistic sigmoid
 * s(2u), whose derivative factor 1 - tanh^2 u = 4 s (1 - s) stays accurate
 * in the tails. */
#define TB_SQRT1_2 0.70710678118654752440f      /* 1/sqrt(2) */
#define TB_INV_SQRT_2PI 0.39894228040143267794f /* 1/sqrt(2 pi) */
#define TB_SQRT_2_PI 0.79788456080286535588f    /* sqrt(2/pi) */
#define TB_GELU_C 0.044715f
#define TB_GELU_QUICK_A 1.702f /* CLIP's quick_gelu: x sigmoid(1.702 x) */

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

static inline float gelu_tanh(float x)
{
    float u = TB_SQRT_2_PI * (x + TB_GELU_C * x * x * x);
    return x * sigmoid_portable(2.0f * u);
}

static inline float gelu_tanh_grad(float x)
{
    float u = TB_SQRT_2_PI * (x + TB_GELU_C * x * x * x);
    float s = sigmoid_portable(2.0f * u);
    float du = TB_SQRT_2_PI * (1.0f + 3.0f * TB_GELU_C * x * x);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

static inline float gelu_quick(float x)
{
    return x * sigmoid_portable(TB_GELU_QUICK_A * x);
}

/* d/dx x s(a x) = s + a x s (1 - s); s (1 - s) has no cancellation in
 * either tail (1 - s is exact for s < 0.5 and tiny for x >> 0). */
static inline float gelu_quick_grad(float x)
{
    float s = sigmoid_portable(TB_GELU_QUICK_A * x);
    return s + TB_GELU_QUICK_A * x * s * (1.0f - s);
}

static void gelu_portable(int approx, const float *x, float *y, size_t n)
{
    if (approx == TB_GELU_EXACT) {
        for (size_t j = 0; j < n; j++)
            y[j] = gelu_exact(x[j]);
    } else if (approx == TB_GELU_TANH) {
        for (size_t j = 0; j < n; j++)
            y[j] = gelu_tanh(x[j]);
    } else {
        for (size_t j = 0; j < n; j++)
            y[j] = gelu_quick(x[j]);
    }
}

static void gelu_backward_portable(int approx, const float *x, const float *dy, float *dx,
                                   size_t n)
{
    if (approx == TB_GELU_EXACT) {
        for (size_t j = 0; j < n; j++)
            dx[j] = dy[j] * gelu_exact_grad(x[j]);
    } else if (approx == TB_GELU_TANH) {
        for (size_t j = 0; j < n; j++)
            dx[j] = dy[j] * gelu_tanh_grad(x[j]);
    } else {
        for (size_t j = 0; j < n; j++)
            dx[j] = dy[j] * gelu_quick_grad(x[j]);
    }
}

const tb_vexp_ops tb_vexp_portable = {tb_exp_sub_sum_portable, tb_max_portable,
                                      lstm_cell_portable,      tanh_portable,
                                      gelu_portable,           gelu_backward_portable};

const tb_vexp_ops *tb_vexp_select(const tb_ctx *ctx)
{
    const tb_kernel k = tb_ctx_kernel(ctx);
    if (k == TB_KERNEL_AVX512 && tb_vexp_avx512.exp_sub_sum)
        return &tb_vexp_avx512;
    if (k == TB_KERNEL_AVX2 && tb_vexp_avx2.lstm_cell)
        return &tb_vexp_avx2;
    return &tb_vexp_portable;
}
