/*
 * Vectorised exponentials for softmax-like row operations (internal).
 *
 * exp_sub_sum(x, n, sub): x[j] = exp(x[j] - sub) for j < n, in place
 * (x[j] = -inf gives exactly 0, NaN stays NaN), and returns the sum of the
 * new values. The sum is accumulated in a fixed order that depends on n
 * only (for the AVX-512 version: 16 lanes, lane = j % 16, then a fixed
 * tree), so results do not depend on threads or on what else is in memory.
 *
 * lstm_cell and tanh (the LSTM's activations): the portable version calls
 * expf and tanhf; the AVX2 and AVX-512 versions build sigmoid(x) =
 * 1 / (1 + exp(-x)) and tanh on the same exponential (tanh(x) = 1 - 2 /
 * (1 + exp(2x)) for |x| >= 0.25, an odd Taylor polynomial of degree 11
 * below, where the former would cancel): a few ulp, checked against double
 * precision in test_attention.c (vexp_lstm_accuracy).
 *
 * Families: the portable version calls the C library's expf; the AVX-512
 * version uses a degree-6 polynomial on [-ln2/2, ln2/2] after the usual
 * reduction x = n ln2 + r (relative error below 2.5e-7 where the result is
 * a normal float, 0 below, +inf above; checked against double-precision exp
 * in test_attention.c: measured 8e-8).
 */
#ifndef TB_KERNELS_VEXP_H
#define TB_KERNELS_VEXP_H

#include <stddef.h>

#include "tblocks/context.h"

typedef struct tb_vexp_ops {
    float (*exp_sub_sum)(float *x, size_t n, float sub);
    /* Largest of x[0..n), -inf for n = 0 (NaN lanes are ignored unless
     * all are NaN). */
    float (*max)(const float *x, size_t n);
    /* One LSTM cell row: g[0..4H) holds the gate pre-activations [i f g o]
     * and becomes sigmoid(i), sigmoid(f), tanh(g), sigmoid(o); c[0..H)
     * holds the previous cell state and becomes f c + i g; h[j] = o tanh(c). */
    void (*lstm_cell)(float *g, float *c, float *h, size_t H);
    /* y[j] = tanh(x[j]) for j < n (y may be x). */
    void (*tanh)(const float *x, float *y, size_t n);
} tb_vexp_ops;

/* The functions of the context's kernel family. */
const tb_vexp_ops *tb_vexp_select(const tb_ctx *ctx);

extern const tb_vexp_ops tb_vexp_portable;
/* Its members are NULL in builds without AVX-512 support. */
extern const tb_vexp_ops tb_vexp_avx512;
/* The AVX2 family's: its own lstm_cell and tanh, the portable exp_sub_sum
 * and max (all NULL in builds without AVX2 support). */
extern const tb_vexp_ops tb_vexp_avx2;
float tb_exp_sub_sum_portable(float *x, size_t n, float sub);
float tb_max_portable(const float *x, size_t n);

#endif /* TB_KERNELS_VEXP_H */
