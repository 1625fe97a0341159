/*
 * Vectorised exponentials for softmax-like row operations (internal).
 *
 * exp_sub_sum(x, y, n, sub): y[j] = exp(x[j] - sub) for j < n (y may be x,
 * in place; y = NULL stores nothing), x[j] = -inf giving exactly 0 and NaN
 * staying NaN, and returns the sum of those values. The sum is accumulated
 * in a fixed order that depends on n only (for the AVX-512 version: 16
 * lanes, lane = j % 16, then a fixed tree), so results do not depend on
 * threads or on what else is in memory.
 *
 * lstm_cell and tanh (the LSTM's activations): the portable version calls
 * expf and tanhf; the AVX2 and AVX-512 versions build sigmoid(x) =
 * 1 / (1 + exp(-x)) and tanh on the same exponential (tanh(x) = 1 - 2 /
 * (1 + exp(2x)) for |x| >= 0.25, an odd Taylor polynomial of degree 11
 * below, where the former would cancel): a few ulp, checked against double
 * precision in test_attention.c (vexp_lstm_accuracy).
 *
 * gelu and gelu_backward: the portable version is the libm formula
 * (erfcf for the exact form, expf for the others); the AVX2 and AVX-512
 * versions compute the exact form as
 *   Phi(-a) = 0.5 erfc(a / sqrt 2) = exp(-a^2 / 2) t S(t - 1/2),
 *   a = |x|, t = 1 / (1 + 0.35 a), S a degree-8 polynomial
 * (least squares for the relative error of exp(a^2/2) Phi(-a) / t over
 * a in [0, 13.5], coefficients refitted one by one after rounding to
 * float: 1.4e-7 relative in float), exp(-a^2/2) with a^2 split into an
 * exact high part and a small low part so that the tail keeps its
 * relative accuracy (x Phi(x) for x < 0 is Phi(-a) itself, never 1 - a
 * value near 1), and gelu'(x) = Phi(x) + x phi(x) from the same two
 * factors. The tanh and quick forms are the portable formulas on the
 * vector exponential. Accuracy against double precision: test_activation.c
 * (gelu_vector_accuracy).
 *
 * Families: the portable version calls the C library's expf; the AVX2
 * version (8 lanes, lane = j % 8, then a fixed tree) and the AVX-512
 * version use a degree-6 polynomial on [-ln2/2, ln2/2] after the usual
 * reduction x = n ln2 + r (relative error below 2.5e-7 where the result is
 * a normal float, 0 below, +inf above; checked against double-precision exp
 * in test_attention.c: measured 8e-8).
 */
#ifndef TB_KERNELS_VEXP_H
#define TB_KERNELS_VEXP_H

#include <stddef.h>

#include "tblocks/context.h"

typedef struct tb_vexp_ops {
    float (*exp_sub_sum)(const float *x, float *y, size_t n, float sub);
    /* Largest of x[0..n), -inf for n = 0 (NaN lanes are ignored unless
     * all are NaN). */
    float (*max)(const float *x, size_t n);
    /* One LSTM cell row: g[0..4H) holds the gate pre-activations [i f g o]
     * and becomes sigmoid(i), sigmoid(f), tanh(g), sigmoid(o); c[0..H)
     * holds the previous cell state and becomes f c + i g; h[j] = o tanh(c). */
    void (*lstm_cell)(float *g, float *c, float *h, size_t H);
    /* y[j] = tanh(x[j]) for j < n (y may be x). */
    void (*tanh)(const float *x, float *y, size_t n);
    /* GELU of the form approx (a tb_gelu_approx: exact, tanh or quick):
     * y[j] = gelu(x[j]) for j < n (y may be x), and its backward
     * dx[j] = dy[j] gelu'(x[j]) (dx may be x or dy). Each element's value
     * depends on x[j] (and dy[j]) only, not on j or n, so any split of a
     * tensor into calls gives the same result. */
    void (*gelu)(int approx, const float *x, float *y, size_t n);
    void (*gelu_backward)(int approx, const float *x, const float *dy, float *dx, size_t n);
} tb_vexp_ops;

/* The functions of the context's kernel family. */
const tb_vexp_ops *tb_vexp_select(const tb_ctx *ctx);

extern const tb_vexp_ops tb_vexp_portable;
/* Its members are NULL in builds without AVX-512 support. */
extern const tb_vexp_ops tb_vexp_avx512;
/* Its members are NULL in builds without AVX2 support. */
extern const tb_vexp_ops tb_vexp_avx2;
float tb_exp_sub_sum_portable(const float *x, float *y, size_t n, float sub);
float tb_max_portable(const float *x, size_t n);

/* The fixed tree the vector families close a lane sum with: halves, then
 * quarters, ... (lanes a power of two; l is overwritten). */
static inline float tb_lane_tree_sum(float *l, int lanes)
{
    for (int w = lanes / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            l[i] += l[i + w];
    return l[0];
}

#endif /* TB_KERNELS_VEXP_H */
