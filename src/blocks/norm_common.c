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

tb_status tb_norm_read_cache(tb_ctx *ctx, const char *fn, const void *cache, size_t bytes,
                             size_t floats, uint64_t magic, size_t count,
                             tb_norm_cache_header *h)
{
    if (!cache)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "cache must not be NULL");
    tb_status s = tb_norm_check_cache(ctx, fn, cache, bytes, floats);
    if (s != TB_OK)
        return s;
    memcpy(h, cache, sizeof *h);
    if (h->magic != magic || h->count != count)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "cache was not filled by the matching forward call on this input "
                       "(%zu rows or channels)",
                       count);
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

void tb_rownorm_forward(tb_ctx *ctx, size_t rows, size_t C, int center, float eps,
                        const float *w, const float *b, const float *x, float *y, float *stats)
{
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        float hi = 0.0f, lo = 0.0f;
        if (center) {
            double sum = 0.0;
            for (size_t j = 0; j < C; j++)
                sum += xr[j];
            tb_norm_split(sum / (double)C, &hi, &lo);
        }
        double sq = 0.0;
        for (size_t j = 0; j < C; j++) {
            float d = (xr[j] - hi) - lo;
            sq += (double)d * d;
        }
        const float rstd = (float)(1.0 / sqrt(sq / (double)C + (double)eps));
        for (size_t j = 0; j < C; j++) {
            float v = ((xr[j] - hi) - lo) * rstd; /* reads x[j] before y[j]: alias-safe */
            if (w)
                v *= w[j];
            if (b)
                v += b[j];
            yr[j] = v;
        }
        if (stats) {
            stats[3 * r] = hi;
            stats[3 * r + 1] = lo;
            stats[3 * r + 2] = rstd;
        }
    }
}

tb_status tb_rownorm_backward(tb_ctx *ctx, const char *fn, size_t rows, size_t C, int center,
                              const float *w, const float *stats, const float *x,
                              const float *dy, float *dx, float *dw, float *db)
{
    const size_t nchunks = tb_norm_chunks(rows);
    double *partial = NULL;
    if (dw || db) { /* per chunk: sum(dy * xhat) then sum(dy), C each */
        size_t n, bytes;
        if (!tb_mul_size(nchunks, 2 * C, &n) || !tb_mul_size(n, sizeof(double), &bytes))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
        void *mem;
        tb_status s = tb_alloc(ctx, fn, bytes, &mem);
        if (s != TB_OK)
            return s;
        partial = mem;
    }
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t q = 0; q < nchunks; q++) {
        double *pw = partial ? partial + q * 2 * C : NULL, *pb = pw ? pw + C : NULL;
        if (pw)
            for (size_t j = 0; j < 2 * C; j++)
                pw[j] = 0.0;
        const size_t r1 = (q + 1) * TB_NORM_CHUNK < rows ? (q + 1) * TB_NORM_CHUNK : rows;
        for (size_t r = q * TB_NORM_CHUNK; r < r1; r++) {
            const float *xr = x + r * C, *gr = dy + r * C;
            float *orow = dx + r * C;
            const float hi = stats[3 * r], lo = stats[3 * r + 1], rstd = stats[3 * r + 2];
            double sg = 0.0, sgx = 0.0;
            for (size_t j = 0; j < C; j++) {
                const float xhat = ((xr[j] - hi) - lo) * rstd;
                const float gj = w ? gr[j] * w[j] : gr[j];
                sg += gj;
                sgx += (double)gj * xhat;
                if (pw) {
                    pw[j] += (double)gr[j] * xhat;
                    pb[j] += gr[j];
                }
            }
            const float mg = center ? (float)(sg / (double)C) : 0.0f;
            const float mgx = (float)(sgx / (double)C);
            for (size_t j = 0; j < C; j++) { /* dy[j] is read before dx[j] is written */
                const float xhat = ((xr[j] - hi) - lo) * rstd;
                const float gj = w ? gr[j] * w[j] : gr[j];
                orow[j] = rstd * ((gj - mg) - xhat * mgx);
            }
        }
    }
    if (partial) {
        double *tot = partial; /* chunk 0 accumulates the others, in order */
        for (size_t q = 1; q < nchunks; q++)
            for (size_t j = 0; j < 2 * C; j++)
                tot[j] += partial[q * 2 * C + j];
        for (size_t j = 0; j < C; j++) {
            if (dw)
                dw[j] += (float)tot[j];
            if (db)
                db[j] += (float)tot[C + j];
        }
        tb_free_with(&ctx->allocator, partial);
    }
    return TB_OK;
}
