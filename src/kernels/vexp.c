/* Exponentials of score rows: portable version and family selection. */
#include "vexp.h"

#include <math.h>

#include "../core/internal.h"

static float exp_sub_sum_portable(float *x, size_t n, float sub)
{
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        x[j] = expf(x[j] - sub);
        sum += x[j];
    }
    return sum;
}

static float max_portable(const float *x, size_t n)
{
    float m = -INFINITY;
    for (size_t j = 0; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

const tb_vexp_ops tb_vexp_portable = {exp_sub_sum_portable, max_portable};

const tb_vexp_ops *tb_vexp_select(const tb_ctx *ctx)
{
    if (tb_ctx_kernel(ctx) == TB_KERNEL_AVX512 && tb_vexp_avx512.exp_sub_sum)
        return &tb_vexp_avx512;
    return &tb_vexp_portable;
}
