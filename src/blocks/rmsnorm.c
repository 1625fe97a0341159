/*
 * RMSNorm over the last dimension: y = x * rstd * weight, rstd =
 * 1/sqrt(mean(x^2) + eps) (mean of squares in double). Backward per row:
 * dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * weight, xhat =
 * x * rstd; the weight gradient is a column sum over fixed row chunks.
 * Cache: header {magic, rows}, then rstd per row.
 */
#include <math.h>
#include <string.h>

#include "norm_common.h"

#define RMS_MAGIC 0x7462524D31ULL /* "tbRM1" */

tb_status tb_rmsnorm_init(tb_ctx *ctx, tb_rmsnorm *rn, size_t dim, float eps, unsigned flags)
{
    const char *fn = __func__;
    if (rn)
        memset(rn, 0, sizeof *rn);
    if (!ctx || !rn)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and rn must not be NULL");
    if (dim == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dim must be >= 1");
    if (flags & ~TB_NORM_SCALE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "flags 0x%x: RMSNorm takes only TB_NORM_SCALE (it has no shift)", flags);
    tb_status s = tb_norm_check_eps(ctx, fn, eps);
    if (s != TB_OK)
        return s;
    float *mem;
    if ((s = tb_norm_alloc(ctx, fn, dim, 2, &mem)) != TB_OK)
        return s;
    rn->dim = dim;
    rn->eps = eps;
    rn->flags = flags;
    rn->storage = mem;
    rn->allocator = ctx->allocator;
    if (flags & TB_NORM_SCALE) {
        for (size_t i = 0; i < dim; i++)
            mem[i] = 1.0f;
        tb_norm_vector(&rn->weight, mem, mem + dim, dim, 1);
    }
    return TB_OK;
}

void tb_rmsnorm_free(tb_rmsnorm *rn)
{
    if (!rn)
        return;
    tb_free_with(&rn->allocator, rn->storage);
    memset(rn, 0, sizeof *rn);
}

tb_status tb_rmsnorm_params(tb_ctx *ctx, tb_rmsnorm *rn, const char *prefix, tb_param_list *list)
{
    if (!rn)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "rn is NULL");
    if (!rn->storage)
        return tb_fail(ctx, TB_ERR_STATE, __func__, "rn is not initialised");
    if (rn->flags & TB_NORM_SCALE)
        return tb_param_list_add(ctx, list, prefix, "weight", &rn->weight);
    return TB_OK;
}

tb_status tb_rmsnorm_cache_size(size_t rows, size_t *bytes)
{
    return tb_norm_cache_bytes(rows, bytes);
}

static tb_status check_io(tb_ctx *ctx, const char *fn, const tb_rmsnorm *rn, const tb_tensor *x,
                          const char *oname, const tb_tensor *o, size_t *rows)
{
    size_t cols;
    if (!ctx || !rn)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and rn must not be NULL");
    if (!rn->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn, "rn is not initialised");
    tb_status s = tb_check_tensor(ctx, fn, "x", x, rows, &cols);
    if (s != TB_OK)
        return s;
    if (cols != rn->dim)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "x has last dimension %zu, expected %zu", cols,
                       rn->dim);
    return tb_check_matrix(ctx, fn, oname, o, *rows, cols);
}

tb_status tb_rmsnorm_forward(tb_ctx *ctx, const tb_rmsnorm *rn, const tb_tensor *x, tb_tensor *y,
                             void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    size_t rows;
    tb_status s = check_io(ctx, fn, rn, x, "y", y, &rows);
    if (s != TB_OK)
        return s;
    if (cache && (s = tb_norm_check_cache(ctx, fn, cache, cache_bytes, rows)) != TB_OK)
        return s;
    const size_t C = rn->dim;
    const float *w = (rn->flags & TB_NORM_SCALE) ? rn->weight.value : NULL;
    const double eps = rn->eps;
    const float *xd = x->data;
    float *yd = y->data;
    float *stats = cache ? tb_norm_cache_data(cache) : NULL;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = xd + r * C;
        float *yr = yd + r * C;
        double sq = 0.0;
        for (size_t j = 0; j < C; j++)
            sq += (double)xr[j] * xr[j];
        const float rstd = (float)(1.0 / sqrt(sq / (double)C + eps));
        for (size_t j = 0; j < C; j++)
            yr[j] = w ? xr[j] * rstd * w[j] : xr[j] * rstd;
        if (stats)
            stats[r] = rstd;
    }
    if (cache) {
        tb_norm_cache_header h = {RMS_MAGIC, rows, 0, 0};
        memcpy(cache, &h, sizeof h);
    }
    return TB_OK;
}

tb_status tb_rmsnorm_backward(tb_ctx *ctx, tb_rmsnorm *rn, const tb_tensor *x,
                              const tb_tensor *dy, const void *cache, size_t cache_bytes,
                              tb_tensor *dx)
{
    const char *fn = __func__;
    size_t rows;
    tb_status s = check_io(ctx, fn, rn, x, "dy", dy, &rows);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, "dx", dx, rows, rn->dim);
    if (s != TB_OK)
        return s;
    if (!cache)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "cache must not be NULL");
    if ((s = tb_norm_check_cache(ctx, fn, cache, cache_bytes, rows)) != TB_OK)
        return s;
    tb_norm_cache_header h;
    memcpy(&h, cache, sizeof h);
    if (h.magic != RMS_MAGIC || h.count != rows)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "cache was not filled by tb_rmsnorm_forward on %zu rows", rows);
    const size_t C = rn->dim;
    if (tb_overlaps(dx->data, rows * C, x->data, rows * C))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dx overlaps x");
    const int want_w = (rn->flags & TB_NORM_SCALE) && tb_param_wants_grad(&rn->weight);
    const size_t nchunks = tb_norm_chunks(rows);
    double *partial = NULL;
    if (want_w) {
        size_t n, bytes;
        if (!tb_mul_size(nchunks, C, &n) || !tb_mul_size(n, sizeof(double), &bytes))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
        void *mem;
        if ((s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
            return s;
        partial = mem;
    }
    const float *w = (rn->flags & TB_NORM_SCALE) ? rn->weight.value : NULL;
    const float *stats = (const float *)((const unsigned char *)cache + sizeof h);
    const float *xd = x->data, *g = dy->data;
    float *o = dx->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t q = 0; q < nchunks; q++) {
        double *pw = partial ? partial + q * C : NULL;
        if (pw)
            for (size_t j = 0; j < C; j++)
                pw[j] = 0.0;
        const size_t r1 = (q + 1) * TB_NORM_CHUNK < rows ? (q + 1) * TB_NORM_CHUNK : rows;
        for (size_t r = q * TB_NORM_CHUNK; r < r1; r++) {
            const float *xr = xd + r * C, *gr = g + r * C;
            float *orow = o + r * C;
            const float rstd = stats[r];
            double sgx = 0.0;
            for (size_t j = 0; j < C; j++) {
                const float xhat = xr[j] * rstd;
                const float gj = w ? gr[j] * w[j] : gr[j];
                sgx += (double)gj * xhat;
                if (pw)
                    pw[j] += (double)gr[j] * xhat;
            }
            const float mgx = (float)(sgx / (double)C);
            for (size_t j = 0; j < C; j++) {
                const float xhat = xr[j] * rstd;
                const float gj = w ? gr[j] * w[j] : gr[j];
                orow[j] = rstd * (gj - xhat * mgx);
            }
        }
    }
    if (partial) {
        double *sum = partial; /* reduce in place into the first chunk, in order */
        for (size_t q = 1; q < nchunks; q++)
            for (size_t j = 0; j < C; j++)
                sum[j] += partial[q * C + j];
        for (size_t j = 0; j < C; j++)
            rn->weight.grad[j] += (float)sum[j];
        tb_free_with(&ctx->allocator, partial);
    }
    return TB_OK;
}
