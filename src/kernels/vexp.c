/* Exponentials of score rows: portable version and family selection. */
#include "vexp.h"

#include <math.h>

#include "../core/internal.h"

float tb_exp_sub_sum_portable(float *x, size_t n, float sub)
{
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        x[j] = expf(x[j] - sub);
        sum += x[j];
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

const tb_vexp_ops tb_vexp_portable = {tb_exp_sub_sum_portable, tb_max_portable,
                                      lstm_cell_portable, tanh_portable};

const tb_vexp_ops *tb_vexp_select(const tb_ctx *ctx)
{
    const tb_kernel k = tb_ctx_kernel(ctx);
    if (k == TB_KERNEL_AVX512 && tb_vexp_avx512.exp_sub_sum)
        return &tb_vexp_avx512;
    if (k == TB_KERNEL_AVX2 && tb_vexp_avx2.lstm_cell)
        return &tb_vexp_avx2;
    return &tb_vexp_portable;
}
