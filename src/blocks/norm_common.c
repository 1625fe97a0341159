/* Shared pieces of the normalization blocks. */
#include "norm_common.h"

#include <math.h>
#include <string.h>

tb_status tb_norm_alloc(tb_ctx *ctx, const char *fn, size_t dim, size_t nvec, float **out)
{
    size_t n, bytes;
    *out = NULL;
    if (!tb_mul_size(dim, nvec, &n) || !tb_mul_size(n, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%zu vectors of %zu floats overflow", nvec, dim);
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    memset(mem, 0, bytes);
    *out = mem;
    return TB_OK;
}

void tb_norm_vector(tb_param *p, float *value, float *grad, size_t dim, int trainable)
{
    size_t shape[1] = {dim};
    tb_param_set_shape(p, 1, shape);
    p->value = value;
    p->grad = grad;
    p->trainable = trainable;
}

tb_status tb_norm_check_eps(tb_ctx *ctx, const char *fn, float eps)
{
    if (!(eps > 0.0f) || !isfinite(eps))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "eps = %g must be finite and > 0",
                       (double)eps);
    return TB_OK;
}

tb_status tb_norm_cache_bytes(size_t floats, size_t *bytes)
{
    size_t n;
    if (!bytes)
        return TB_ERR_NULL_ARG;
    if (!tb_mul_size(floats, sizeof(float), &n) ||
        !tb_add_size(n, sizeof(tb_norm_cache_header), &n))
        return TB_ERR_OVERFLOW;
    *bytes = n;
    return TB_OK;
}

tb_status tb_norm_check_cache(tb_ctx *ctx, const char *fn, const void *cache, size_t bytes,
                              size_t floats)
{
    size_t need;
    if (tb_norm_cache_bytes(floats, &need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    if (bytes < need)
        return tb_fail(ctx, TB_ERR_BUFFER_TOO_SMALL, fn, "cache has %zu bytes; %zu needed", bytes,
                       need);
    if ((uintptr_t)cache % sizeof(float) != 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "cache is not aligned for float");
    return TB_OK;
}

void tb_norm_combine(const double *partial, size_t nchunks, size_t width, double *out)
{
    for (size_t j = 0; j < width; j++)
        out[j] = 0.0;
    for (size_t q = 0; q < nchunks; q++)
        for (size_t j = 0; j < width; j++)
            out[j] += partial[q * width + j];
}
