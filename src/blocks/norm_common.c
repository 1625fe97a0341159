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

void tb_norm_vector(tb_param *p, float *value, float *grad, size_t dim)
{
    /* Cannot fail: dim >= 1 and its vectors were allocated (tb_norm_alloc). */
    (void)tb_param_view(NULL, p, value, grad, 1, &dim);
}

tb_status tb_norm_check_eps(tb_ctx *ctx, const char *fn, float eps)
{
    if (!(eps > 0.0f) || !isfinite(eps))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "eps = %g must be finite and > 0",
                       (double)eps);
    return TB_OK;
}

const char *const tb_norm_rows_field[1] = {"rows"};
const char *const tb_norm_channels_field[1] = {"channels"};

tb_status tb_norm_cache_bytes(size_t count, size_t per, size_t *bytes)
{
    size_t floats;
    if (!tb_mul_size(count, per, &floats))
        return TB_ERR_OVERFLOW;
    return tb_cache_bytes(sizeof(tb_norm_cache_header), floats, bytes);
}

void tb_norm_combine(const double *partial, size_t nchunks, size_t width, double *out)
{
    for (size_t j = 0; j < width; j++)
        out[j] = 0.0;
    for (size_t q = 0; q < nchunks; q++)
        for (size_t j = 0; j < width; j++)
            out[j] += partial[q * width + j];
}

/* sum(x) or, with center != NULL, sum(((x - hi) - lo)^2) over n floats, in
 * double with 8 independent lanes (a fixed split: breaks the add latency
 * chain and vectorises, same result on every run). */
static double row_sum(const float *x, size_t n, const float *center)
{
    double acc[8] = {0};
    const float hi = center ? center[0] : 0.0f, lo = center ? center[1] : 0.0f;
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) {
            const float v = center ? (x[j + l] - hi) - lo : x[j + l];
            acc[l] += center ? (double)v * v : (double)v;
        }
    double tail = 0.0;
    for (; j < n; j++) {
        const float v = center ? (x[j] - hi) - lo : x[j];
        tail += center ? (double)v * v : (double)v;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) +
           tail;
}

void tb_rownorm_forward(tb_ctx *ctx, size_t rows, size_t C, int center, float eps,
                        const float *w, const float *b, const float *x, float *y, float *stats)
{
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        float hl[2] = {0.0f, 0.0f};
        if (center)
            tb_norm_split(row_sum(xr, C, NULL) / (double)C, &hl[0], &hl[1]);
        const float hi = hl[0], lo = hl[1];
        const double sq = row_sum(xr, C, hl);
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
    /* Backward is arithmetic-bound, so its sums run in float: each row's
     * sums of g and g * xhat in 8 fixed lanes, and each chunk's (<= 64 rows)
     * column sums of dy * xhat and dy; chunks are then combined in double,
     * in order. Float partials over at most 64 rows or C/8 terms keep the
     * error near 1e-6 relative, far inside the tests' tolerances. */
    const size_t nchunks = tb_norm_chunks(rows);
    float *partial = NULL;
    if (dw || db) { /* per chunk: sum(dy * xhat) then sum(dy), C each */
        size_t n, bytes;
        if (!tb_mul_size(nchunks, 2 * C, &n) || !tb_mul_size(n, sizeof(float), &bytes))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
        void *mem;
        tb_status s = tb_alloc(ctx, fn, bytes, &mem);
        if (s != TB_OK)
            return s;
        partial = mem;
    }
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t q = 0; q < nchunks; q++) {
        float *pw = partial ? partial + q * 2 * C : NULL, *pb = pw ? pw + C : NULL;
        if (pw)
            for (size_t j = 0; j < 2 * C; j++)
                pw[j] = 0.0f;
        const size_t r1 = tb_norm_chunk_end(q, rows);
        for (size_t r = q * tb_norm_chunk_rows(rows); r < r1; r++) {
            const float *xr = x + r * C, *gr = dy + r * C;
            float *orow = dx + r * C;
            const float hi = stats[3 * r], lo = stats[3 * r + 1], rstd = stats[3 * r + 2];
            float sg8[8] = {0}, sgx8[8] = {0};
            size_t j = 0;
            for (; j + 8 <= C; j += 8)
                for (int l = 0; l < 8; l++) {
                    const float xhat = ((xr[j + l] - hi) - lo) * rstd;
                    const float gj = w ? gr[j + l] * w[j + l] : gr[j + l];
                    sg8[l] += gj;
                    sgx8[l] += gj * xhat;
                }
            for (; j < C; j++) {
                const float xhat = ((xr[j] - hi) - lo) * rstd;
                const float gj = w ? gr[j] * w[j] : gr[j];
                sg8[0] += gj;
                sgx8[0] += gj * xhat;
            }
            if (pw)
                for (j = 0; j < C; j++) {
                    const float xhat = ((xr[j] - hi) - lo) * rstd;
                    pw[j] += gr[j] * xhat;
                    pb[j] += gr[j];
                }
            const float sg = ((sg8[0] + sg8[1]) + (sg8[2] + sg8[3])) +
                             ((sg8[4] + sg8[5]) + (sg8[6] + sg8[7]));
            const float sgx = ((sgx8[0] + sgx8[1]) + (sgx8[2] + sgx8[3])) +
                              ((sgx8[4] + sgx8[5]) + (sgx8[6] + sgx8[7]));
            const float mg = center ? sg / (float)C : 0.0f;
            const float mgx = sgx / (float)C;
            for (j = 0; j < C; j++) { /* dy[j] is read before dx[j] is written */
                const float xhat = ((xr[j] - hi) - lo) * rstd;
                const float gj = w ? gr[j] * w[j] : gr[j];
                orow[j] = rstd * ((gj - mg) - xhat * mgx);
            }
        }
    }
    if (partial) {
        for (size_t j = 0; j < C; j++) {
            double sw = 0.0, sb = 0.0;
            for (size_t q = 0; q < nchunks; q++) {
                sw += partial[q * 2 * C + j];
                sb += partial[q * 2 * C + C + j];
            }
            if (dw)
                dw[j] += (float)sw;
            if (db)
                db[j] += (float)sb;
        }
        tb_free_with(&ctx->allocator, partial);
    }
    return TB_OK;
}

/* x valid with sp->dim columns, o with the same rows and columns. */
static tb_status rownorm_check_io(tb_ctx *ctx, const char *fn, const tb_rownorm_spec *sp,
                                  const tb_tensor *x, const char *oname, const tb_tensor *o,
                                  size_t *rows)
{
    size_t cols;
    tb_status s = tb_check_tensor(ctx, fn, "x", x, rows, &cols);
    if (s != TB_OK)
        return s;
    if (cols != sp->dim)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "x has last dimension %zu, expected %zu", cols,
                       sp->dim);
    return tb_check_matrix(ctx, fn, oname, o, *rows, cols);
}

/* Bytes of a row-norm cache's header and per-row statistics for `rows` rows
 * (the memory forward writes and backward reads; sizes checked before). */
static size_t rownorm_cache_touched(size_t rows)
{
    return sizeof(tb_norm_cache_header) + rows * 3 * sizeof(float);
}

/* y may be x exactly: a row's statistics are taken before the row is
 * written, then each element is read before it is overwritten. The
 * statistics go to the cache row by row while x is still being read. */
static tb_status rownorm_forward_alias(tb_ctx *ctx, const char *fn, const tb_rownorm_spec *sp,
                                       const tb_tensor *x, const tb_tensor *y,
                                       const void *cache, size_t rows)
{
    const tb_span in[] = {tb_span_tensor("x", x), tb_span_floats("weight", sp->w, sp->dim),
                          tb_span_floats("bias", sp->b, sp->dim)};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("y", y), TB_INPUT(0)),
                           tb_span_bytes("cache", cache, rownorm_cache_touched(rows))};
    return tb_check_alias(ctx, fn, out, 2, in, 3);
}

/* dx may be dy exactly: a row's sums are taken before the row is written,
 * then element j reads dy[j] before writing dx[j]. x is the forward input
 * the caller keeps: dx may not replace it, not even exactly. */
static tb_status rownorm_backward_alias(tb_ctx *ctx, const char *fn, const tb_rownorm_spec *sp,
                                        const tb_tensor *x, const tb_tensor *dy,
                                        const void *cache, size_t rows, const tb_tensor *dx)
{
    const tb_span in[] = {tb_span_tensor("x", x), tb_span_tensor("dy", dy),
                          tb_span_bytes("cache", cache, rownorm_cache_touched(rows)),
                          tb_span_floats("weight", sp->w, sp->dim)};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("dx", dx), TB_INPUT(1)),
                           tb_span_floats("weight.grad", sp->dw, sp->dim),
                           tb_span_floats("bias.grad", sp->db, sp->dim)};
    return tb_check_alias(ctx, fn, out, 3, in, 4);
}

/* The cache a row-norm call on `rows` rows is handed (NULL allowed unless
 * required); its size was not checked before. */
static tb_status rownorm_check_cache(tb_ctx *ctx, const char *fn, const tb_rownorm_spec *sp,
                                     const void *cache, size_t cache_bytes, size_t rows,
                                     int required)
{
    size_t need;
    if (tb_norm_cache_bytes(rows, 3, &need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    const uint64_t fields[1] = {rows};
    return tb_cache_check(ctx, fn, sp->kind, cache, cache_bytes, need, fields, required);
}

tb_status tb_rownorm_forward_op(tb_ctx *ctx, const char *fn, const tb_rownorm_spec *sp,
                                const tb_tensor *x, tb_tensor *y, void *cache,
                                size_t cache_bytes)
{
    size_t rows;
    tb_status s = rownorm_check_io(ctx, fn, sp, x, "y", y, &rows);
    if (s != TB_OK)
        return s;
    if ((s = rownorm_check_cache(ctx, fn, sp, cache, cache_bytes, rows, 0)) != TB_OK)
        return s;
    if ((s = rownorm_forward_alias(ctx, fn, sp, x, y, cache, rows)) != TB_OK)
        return s;
    tb_rownorm_forward(ctx, rows, sp->dim, sp->center, sp->eps, sp->w, sp->b, x->data, y->data,
                       cache ? tb_norm_cache_data(cache) : NULL);
    if (cache) {
        tb_norm_cache_header h = {sp->kind->magic, rows, 0, 0, 0};
        memcpy(cache, &h, sizeof h);
    }
    return TB_OK;
}

tb_status tb_rownorm_backward_op(tb_ctx *ctx, const char *fn, const tb_rownorm_spec *sp,
                                 const tb_tensor *x, const tb_tensor *dy, const void *cache,
                                 size_t cache_bytes, tb_tensor *dx)
{
    size_t rows;
    tb_status s = rownorm_check_io(ctx, fn, sp, x, "dy", dy, &rows);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, "dx", dx, rows, sp->dim);
    if (s != TB_OK)
        return s;
    const uint64_t fields[1] = {rows};
    if ((s = rownorm_check_cache(ctx, fn, sp, cache, cache_bytes, rows, 1)) != TB_OK ||
        (s = tb_cache_match(ctx, fn, sp->kind, cache, fields)) != TB_OK)
        return s;
    const size_t C = sp->dim;
    if ((s = rownorm_backward_alias(ctx, fn, sp, x, dy, cache, rows, dx)) != TB_OK)
        return s;
    return tb_rownorm_backward(ctx, fn, rows, C, sp->center, sp->w, tb_norm_cache_cdata(cache),
                               x->data, dy->data, dx->data, sp->dw, sp->db);
}
