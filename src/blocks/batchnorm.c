/*
 * BatchNorm over rows (positions) per channel. Statistics: partial sums of
 * x, then of (x - mean)^2, over chunks of tb_norm_chunk_rows(N) rows in
 * double, combined in chunk order (deterministic for any thread count).
 * Backward through batch statistics:
 *   dx = weight * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))
 * over the counted rows (means over counted rows); with running or global
 * statistics, dx = dy * weight * rstd. Padded rows: y = 0, dx = 0.
 * Cache: header {magic, C, counted rows, used batch stats}, then per
 * channel mean_hi, mean_lo, rstd.
 */
#include <math.h>
#include <string.h>

#include "norm_common.h"

#define BN_MAGIC 0x7462424E31ULL /* "tbBN1" */

tb_status tb_batchnorm_init(tb_ctx *ctx, tb_batchnorm *bn, size_t channels, float eps,
                            float momentum, unsigned flags)
{
    const char *fn = __func__;
    if (bn)
        memset(bn, 0, sizeof *bn);
    if (!ctx || !bn)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and bn must not be NULL");
    if (channels == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "channels must be >= 1");
    if (flags & ~(TB_NORM_SCALE | TB_NORM_SHIFT | TB_NORM_GLOBAL_STATS))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown flags 0x%x", flags);
    if (!(momentum >= 0.0f && momentum <= 1.0f))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "momentum = %g is outside [0, 1]",
                       (double)momentum);
    tb_status s = tb_norm_check_eps(ctx, fn, eps);
    if (s != TB_OK)
        return s;
    float *mem; /* weight, bias, running mean, running var, weight grad, bias grad */
    if ((s = tb_norm_alloc(ctx, fn, channels, 6, &mem)) != TB_OK)
        return s;
    const size_t C = channels;
    bn->channels = C;
    bn->eps = eps;
    bn->momentum = momentum;
    bn->flags = flags;
    bn->storage = mem;
    bn->allocator = ctx->allocator;
    for (size_t i = 0; i < C; i++) {
        mem[i] = 1.0f;         /* weight */
        mem[3 * C + i] = 1.0f; /* running_var */
    }
    if (flags & TB_NORM_SCALE)
        tb_norm_vector(&bn->weight, mem, mem + 4 * C, C);
    if (flags & TB_NORM_SHIFT)
        tb_norm_vector(&bn->bias, mem + C, mem + 5 * C, C);
    tb_norm_vector(&bn->running_mean, mem + 2 * C, NULL, C);
    tb_norm_vector(&bn->running_var, mem + 3 * C, NULL, C);
    return TB_OK;
}

void tb_batchnorm_free(tb_batchnorm *bn)
{
    if (!bn)
        return;
    tb_free_with(&bn->allocator, bn->storage);
    memset(bn, 0, sizeof *bn);
}

tb_status tb_batchnorm_params(tb_ctx *ctx, tb_batchnorm *bn, const char *prefix,
                              tb_param_list *list)
{
    if (!bn || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "bn and list must not be NULL");
    if (!bn->storage)
        return tb_fail(ctx, TB_ERR_STATE, __func__, "bn is not initialised");
    tb_status s = TB_OK;
    if (bn->flags & TB_NORM_SCALE)
        s = tb_param_list_add(ctx, list, prefix, "weight", &bn->weight);
    if (s == TB_OK && (bn->flags & TB_NORM_SHIFT))
        s = tb_param_list_add(ctx, list, prefix, "bias", &bn->bias);
    if (s == TB_OK)
        s = tb_param_list_add(ctx, list, prefix, "running_mean", &bn->running_mean);
    if (s == TB_OK)
        s = tb_param_list_add(ctx, list, prefix, "running_var", &bn->running_var);
    return s;
}

static const tb_cache_kind BN_CACHE = {BN_MAGIC, "tb_batchnorm_forward",
                                       "tb_batchnorm_cache_size", 1, 1, tb_norm_channels_field};

tb_status tb_batchnorm_cache_size(size_t channels, size_t *bytes)
{
    return tb_norm_cache_bytes(channels, 3, bytes);
}

/* The cache a call is handed (NULL allowed unless required). */
static tb_status check_cache(tb_ctx *ctx, const char *fn, size_t C, const void *cache,
                             size_t cache_bytes, int required)
{
    size_t need;
    if (tb_batchnorm_cache_size(C, &need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    const uint64_t fields[1] = {C};
    return tb_cache_check(ctx, fn, &BN_CACHE, cache, cache_bytes, need, fields, required);
}

static tb_status check_io(tb_ctx *ctx, const char *fn, const tb_batchnorm *bn,
                          const tb_tensor *x, const char *oname, const tb_tensor *o, size_t *rows)
{
    size_t cols;
    if (!ctx || !bn)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and bn must not be NULL");
    if (!bn->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn, "bn is not initialised");
    tb_status s = tb_check_tensor(ctx, fn, "x", x, rows, &cols);
    if (s != TB_OK)
        return s;
    if (cols != bn->channels)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "x has last dimension %zu, expected %zu channels",
                       cols, bn->channels);
    return tb_check_matrix(ctx, fn, oname, o, *rows, cols);
}

static size_t count_valid(const uint8_t *valid, size_t rows)
{
    if (!valid)
        return rows;
    size_t n = 0;
    for (size_t r = 0; r < rows; r++)
        n += valid[r] != 0;
    return n;
}

/* FNV-1a over the mask (as 0/1), so backward can tell it was given the
 * forward's mask; 0 for no mask. */
static uint64_t mask_hash(const uint8_t *valid, size_t rows)
{
    if (!valid)
        return 0;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t r = 0; r < rows; r++)
        h = (h ^ (uint64_t)(valid[r] != 0)) * 0x100000001b3ULL;
    return h;
}

/* Per-chunk column sums of x (pass 1) or of the squared deviation (pass 2,
 * hi/lo given) over counted rows; result[C] = sum over chunks in order. */
static void column_sums(tb_ctx *ctx, const float *x, const uint8_t *valid, size_t rows,
                        size_t C, const float *hi, const float *lo, double *partial,
                        double *result)
{
    const size_t nchunks = tb_norm_chunks(rows);
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t q = 0; q < nchunks; q++) {
        double *p = partial + q * C;
        for (size_t j = 0; j < C; j++)
            p[j] = 0.0;
        for (size_t r = q * tb_norm_chunk_rows(rows); r < tb_norm_chunk_end(q, rows); r++) {
            if (valid && !valid[r])
                continue;
            const float *xr = x + r * C;
            if (!hi) {
                for (size_t j = 0; j < C; j++)
                    p[j] += xr[j];
            } else {
                for (size_t j = 0; j < C; j++) {
                    float d = (xr[j] - hi[j]) - lo[j];
                    p[j] += (double)d * d;
                }
            }
        }
    }
    tb_norm_combine(partial, nchunks, C, result);
}

/* The cache's header and per-channel statistics (written by forward, read
 * by backward; its size was checked before). */
static tb_span cache_span(const void *cache, size_t C)
{
    return tb_span_bytes("cache", cache, sizeof(tb_norm_cache_header) + 3 * C * sizeof(float));
}

static tb_span param_span(const char *name, const tb_batchnorm *bn, unsigned flag,
                          const float *p)
{
    return tb_span_floats(name, (bn->flags & flag) ? p : NULL, bn->channels);
}

/* y may be x exactly: x is read column-wise for the statistics before y is
 * written, then element by element before it is overwritten. With batch
 * statistics the running statistics are written between the two passes,
 * so they too must not meet x, y or the cache. */
static tb_status forward_alias(tb_ctx *ctx, const char *fn, const tb_batchnorm *bn,
                               const tb_tensor *x, const uint8_t *valid, size_t rows,
                               const tb_tensor *y, const void *cache, int batch_stats)
{
    const size_t C = bn->channels;
    const tb_span in[] = {tb_span_tensor("x", x), tb_span_bytes("valid", valid, rows),
                          param_span("weight", bn, TB_NORM_SCALE, bn->weight.value),
                          param_span("bias", bn, TB_NORM_SHIFT, bn->bias.value)};
    const tb_span out[] = {
        tb_span_in_place(tb_span_tensor("y", y), TB_INPUT(0)), cache_span(cache, C),
        tb_span_floats("running_mean", batch_stats ? bn->running_mean.value : NULL, C),
        tb_span_floats("running_var", batch_stats ? bn->running_var.value : NULL, C)};
    return tb_check_alias(ctx, fn, out, 4, in, 4);
}

/* dx may be dy exactly: every column sum of dy is taken before dx is
 * written, then element j reads dy[j] before writing dx[j]. x, the mask,
 * the cache and the weight are read to the end. */
static tb_status backward_alias(tb_ctx *ctx, const char *fn, const tb_batchnorm *bn,
                                const tb_tensor *x, const uint8_t *valid, size_t rows,
                                const tb_tensor *dy, const void *cache, const tb_tensor *dx)
{
    const size_t C = bn->channels;
    const int gw = (bn->flags & TB_NORM_SCALE) && tb_param_wants_grad(&bn->weight);
    const int gb = (bn->flags & TB_NORM_SHIFT) && tb_param_wants_grad(&bn->bias);
    const tb_span in[] = {tb_span_tensor("x", x), tb_span_bytes("valid", valid, rows),
                          tb_span_tensor("dy", dy), cache_span(cache, C),
                          param_span("weight", bn, TB_NORM_SCALE, bn->weight.value)};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("dx", dx), TB_INPUT(2)),
                           tb_span_floats("weight.grad", gw ? bn->weight.grad : NULL, C),
                           tb_span_floats("bias.grad", gb ? bn->bias.grad : NULL, C)};
    return tb_check_alias(ctx, fn, out, 3, in, 5);
}

tb_status tb_batchnorm_forward(tb_ctx *ctx, tb_batchnorm *bn, tb_mode mode, const tb_tensor *x,
                               const uint8_t *valid, tb_tensor *y, void *cache,
                               size_t cache_bytes)
{
    const char *fn = __func__;
    size_t rows;
    tb_status s = check_io(ctx, fn, bn, x, "y", y, &rows);
    if (s != TB_OK)
        return s;
    if (mode != TB_MODE_TRAINING && mode != TB_MODE_INFERENCE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown mode %d", (int)mode);
    const size_t C = bn->channels;
    if ((s = check_cache(ctx, fn, C, cache, cache_bytes, 0)) != TB_OK)
        return s;
    const int batch_stats = mode == TB_MODE_TRAINING && !(bn->flags & TB_NORM_GLOBAL_STATS);
    if ((s = forward_alias(ctx, fn, bn, x, valid, rows, y, cache, batch_stats)) != TB_OK)
        return s;
    const size_t n = count_valid(valid, rows);
    if (batch_stats && n < 2)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "training with batch statistics needs at least 2 counted positions per "
                       "channel; got %zu",
                       n);
    /* Scratch: per-channel hi, lo, rstd (floats) and, for batch statistics,
     * chunk partials plus two result vectors (doubles). */
    const size_t nchunks = tb_norm_chunks(rows);
    size_t dbl = batch_stats ? (nchunks + 2) * C : 0, bytes;
    if (!tb_mul_size(dbl, sizeof(double), &bytes) || !tb_add_size(bytes, 3 * C * sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
    void *mem;
    if ((s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
        return s;
    float *hi = (float *)((double *)mem + dbl), *lo = hi + C, *rstd = lo + C;
    const float *xd = x->data;
    if (batch_stats) {
        double *partial = mem, *mean = partial + nchunks * C, *var = mean + C;
        column_sums(ctx, xd, valid, rows, C, NULL, NULL, partial, mean);
        for (size_t j = 0; j < C; j++) {
            mean[j] /= (double)n;
            tb_norm_split(mean[j], &hi[j], &lo[j]);
        }
        column_sums(ctx, xd, valid, rows, C, hi, lo, partial, var);
        const double m = bn->momentum;
        for (size_t j = 0; j < C; j++) {
            var[j] /= (double)n; /* biased: used to normalise */
            rstd[j] = (float)(1.0 / sqrt(var[j] + (double)bn->eps));
            /* Running statistics use the unbiased variance, as PyTorch. */
            bn->running_mean.value[j] =
                (float)((1.0 - m) * bn->running_mean.value[j] + m * mean[j]);
            bn->running_var.value[j] = (float)((1.0 - m) * bn->running_var.value[j] +
                                               m * var[j] * (double)n / (double)(n - 1));
        }
    } else {
        for (size_t j = 0; j < C; j++) {
            hi[j] = bn->running_mean.value[j];
            lo[j] = 0.0f;
            rstd[j] = (float)(1.0 / sqrt((double)bn->running_var.value[j] + (double)bn->eps));
        }
    }
    const float *w = (bn->flags & TB_NORM_SCALE) ? bn->weight.value : NULL;
    const float *b = (bn->flags & TB_NORM_SHIFT) ? bn->bias.value : NULL;
    float *yd = y->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = xd + r * C;
        float *yr = yd + r * C;
        if (valid && !valid[r]) {
            for (size_t j = 0; j < C; j++)
                yr[j] = 0.0f;
            continue;
        }
        for (size_t j = 0; j < C; j++) {
            float v = ((xr[j] - hi[j]) - lo[j]) * rstd[j];
            if (w)
                v *= w[j];
            if (b)
                v += b[j];
            yr[j] = v;
        }
    }
    if (cache) {
        tb_norm_cache_header h = {BN_MAGIC, C, n, (uint64_t)batch_stats,
                                  mask_hash(valid, rows)};
        memcpy(cache, &h, sizeof h);
        float *cd = tb_norm_cache_data(cache);
        memcpy(cd, hi, 3 * C * sizeof(float)); /* hi, lo, rstd are contiguous */
    }
    tb_free_with(&ctx->allocator, mem);
    return TB_OK;
}

tb_status tb_batchnorm_backward(tb_ctx *ctx, tb_batchnorm *bn, const tb_tensor *x,
                                const uint8_t *valid, const tb_tensor *dy, const void *cache,
                                size_t cache_bytes, tb_tensor *dx)
{
    const char *fn = __func__;
    size_t rows;
    tb_status s = check_io(ctx, fn, bn, x, "dy", dy, &rows);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, "dx", dx, rows, bn->channels);
    if (s != TB_OK)
        return s;
    const size_t C = bn->channels;
    const uint64_t fields[1] = {C};
    if ((s = check_cache(ctx, fn, C, cache, cache_bytes, 1)) != TB_OK ||
        (s = tb_cache_match(ctx, fn, &BN_CACHE, cache, fields)) != TB_OK)
        return s;
    tb_norm_cache_header h;
    memcpy(&h, cache, sizeof h);
    const size_t n = count_valid(valid, rows);
    if (h.extra != n || h.check != mask_hash(valid, rows))
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "the padding mask differs from the one forward used (%zu counted "
                       "positions now, %llu then)",
                       n, (unsigned long long)h.extra);
    if ((s = backward_alias(ctx, fn, bn, x, valid, rows, dy, cache, dx)) != TB_OK)
        return s;
    const int batch_stats = h.flags != 0;
    const float *hi = tb_norm_cache_cdata(cache), *lo = hi + C,
                *rstd = lo + C;
    const size_t nchunks = tb_norm_chunks(rows);
    size_t bytes;
    if (!tb_mul_size(nchunks + 1, 4 * C * sizeof(double), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "scratch size overflows");
    void *mem;
    if ((s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
        return s;
    /* Per chunk: sum(dy) then sum(dy * xhat), C each; then the totals. */
    double *partial = mem, *tot = partial + nchunks * 2 * C;
    const float *xd = x->data, *g = dy->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t q = 0; q < nchunks; q++) {
        double *pd = partial + q * 2 * C, *px = pd + C;
        for (size_t j = 0; j < 2 * C; j++)
            pd[j] = 0.0;
        for (size_t r = q * tb_norm_chunk_rows(rows); r < tb_norm_chunk_end(q, rows); r++) {
            if (valid && !valid[r])
                continue;
            const float *xr = xd + r * C, *gr = g + r * C;
            for (size_t j = 0; j < C; j++) {
                const float xhat = ((xr[j] - hi[j]) - lo[j]) * rstd[j];
                pd[j] += gr[j];
                px[j] += (double)gr[j] * xhat;
            }
        }
    }
    tb_norm_combine(partial, nchunks, 2 * C, tot);
    const double *sum_dy = tot, *sum_dyx = tot + C;
    const float *w = (bn->flags & TB_NORM_SCALE) ? bn->weight.value : NULL;
    float *o = dx->data;
    float *mdy = (float *)(tot + 2 * C), *mdyx = mdy + C;
    for (size_t j = 0; j < C; j++) {
        mdy[j] = batch_stats ? (float)(sum_dy[j] / (double)n) : 0.0f;
        mdyx[j] = batch_stats ? (float)(sum_dyx[j] / (double)n) : 0.0f;
    }
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * C)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = xd + r * C, *gr = g + r * C;
        float *orow = o + r * C;
        if (valid && !valid[r]) {
            for (size_t j = 0; j < C; j++)
                orow[j] = 0.0f;
            continue;
        }
        for (size_t j = 0; j < C; j++) {
            const float k = w ? w[j] * rstd[j] : rstd[j];
            if (batch_stats) {
                const float xhat = ((xr[j] - hi[j]) - lo[j]) * rstd[j];
                orow[j] = k * ((gr[j] - mdy[j]) - xhat * mdyx[j]);
            } else {
                orow[j] = k * gr[j];
            }
        }
    }
    if ((bn->flags & TB_NORM_SCALE) && tb_param_wants_grad(&bn->weight))
        for (size_t j = 0; j < C; j++)
            bn->weight.grad[j] += (float)sum_dyx[j];
    if ((bn->flags & TB_NORM_SHIFT) && tb_param_wants_grad(&bn->bias))
        for (size_t j = 0; j < C; j++)
            bn->bias.grad[j] += (float)sum_dy[j];
    tb_free_with(&ctx->allocator, mem);
    return TB_OK;
}
