/*
 * Cross-entropy from logits. Cache layout (floats after a fixed header):
 *   header {magic, rows, counted rows}, lse[rows], row_loss[rows].
 * Rows are computed in parallel; the reduction sums row losses serially in
 * double in row order, so the loss is identical for any thread count.
 */
#include <math.h>
#include <string.h>

#include "../core/internal.h"
#include "../kernels/vexp.h"

#define CE_MAGIC 0x7462434531ULL /* "tbCE1" */

typedef struct ce_header {
    uint64_t magic;
    uint64_t rows;    /* matched by backward (tb_cache_match) */
    uint64_t counted; /* read by backward */
    uint64_t reserved;
} ce_header;

static const char *const ce_fields[1] = {"rows"};
static const tb_cache_kind CE_CACHE = {CE_MAGIC, "tb_cross_entropy_forward",
                                       "tb_cross_entropy_cache_size", 1, 1, ce_fields};

tb_cross_entropy_config tb_cross_entropy_default_config(void)
{
    tb_cross_entropy_config c;
    c.ignore_index = TB_IGNORE_INDEX;
    c.reduction = TB_REDUCTION_MEAN;
    return c;
}

tb_status tb_cross_entropy_cache_size(size_t rows, size_t *bytes)
{
    size_t floats;
    if (!tb_mul_size(rows, 2, &floats))
        return TB_ERR_OVERFLOW;
    return tb_cache_bytes(sizeof(ce_header), floats, bytes);
}

/* Shared argument checks of forward (cache optional) and backward (cache
 * required). */
static tb_status check_args(tb_ctx *ctx, const char *fn, const tb_cross_entropy_config *cfg,
                            const tb_tensor *logits, const int32_t *targets, size_t n_targets,
                            const void *cache, size_t cache_bytes, int cache_required,
                            size_t *rows, size_t *cols)
{
    if (!targets)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "targets must not be NULL");
    if (cfg->reduction != TB_REDUCTION_MEAN && cfg->reduction != TB_REDUCTION_SUM)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown reduction %d", (int)cfg->reduction);
    tb_status s = tb_check_tensor(ctx, fn, "logits", logits, rows, cols);
    if (s != TB_OK)
        return s;
    if (n_targets != *rows)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%zu targets for %zu rows of logits", n_targets,
                       *rows);
    if (*cols > INT32_MAX)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%zu classes exceed INT32_MAX", *cols);
    size_t need;
    if (tb_cross_entropy_cache_size(*rows, &need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    const uint64_t fields[1] = {*rows};
    tb_status sc =
        tb_cache_check(ctx, fn, &CE_CACHE, cache, cache_bytes, need, fields, cache_required);
    if (sc != TB_OK)
        return sc;
    for (size_t i = 0; i < n_targets; i++) {
        int32_t t = targets[i];
        if (t != cfg->ignore_index && (t < 0 || (size_t)t >= *cols))
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "targets[%zu] = %ld is outside [0, %zu) and is not the ignore index %ld",
                           i, (long)t, *cols, (long)cfg->ignore_index);
    }
    return TB_OK;
}

/* Forward writes the cache's rows while it reads logits and targets, then
 * the loss. */
static tb_status check_forward_alias(tb_ctx *ctx, const char *fn, const tb_tensor *logits,
                                     const int32_t *targets, size_t rows, const float *loss,
                                     const void *cache)
{
    size_t touched;
    tb_cross_entropy_cache_size(rows, &touched); /* checked by check_args */
    const tb_span in[] = {tb_span_tensor("logits", logits),
                          tb_span_array("targets", targets, rows, sizeof *targets)};
    const tb_span out[] = {tb_span_bytes("cache", cache, touched),
                           tb_span_bytes("loss", loss, sizeof *loss)};
    return tb_check_alias(ctx, fn, out, 2, in, 2);
}

/* dlogits may be logits exactly: element j of a row reads logits[j] before
 * writing dlogits[j]. The cache's header and log-sum-exp row are read. */
static tb_status check_backward_alias(tb_ctx *ctx, const char *fn, const tb_tensor *logits,
                                      const int32_t *targets, size_t rows, const void *cache,
                                      const tb_tensor *dlogits)
{
    const tb_span in[] = {tb_span_tensor("logits", logits),
                          tb_span_array("targets", targets, rows, sizeof *targets),
                          tb_span_bytes("cache", cache, sizeof(ce_header) + rows * sizeof(float))};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("dlogits", dlogits), TB_INPUT(0))};
    return tb_check_alias(ctx, fn, out, 1, in, 3);
}

tb_status tb_cross_entropy_forward(tb_ctx *ctx, const tb_cross_entropy_config *config,
                                   const tb_tensor *logits, const int32_t *targets,
                                   size_t n_targets, float *loss, void *cache,
                                   size_t cache_bytes)
{
    const char *fn = __func__;
    tb_cross_entropy_config cfg = config ? *config : tb_cross_entropy_default_config();
    size_t rows, cols;
    if (!loss)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "loss must not be NULL");
    tb_status s = check_args(ctx, fn, &cfg, logits, targets, n_targets, cache, cache_bytes, 0,
                             &rows, &cols);
    if (s == TB_OK)
        s = check_forward_alias(ctx, fn, logits, targets, rows, loss, cache);
    if (s != TB_OK)
        return s;
    /* Without a cache (no backward follows), the per-row values go to
     * scratch for the call. */
    void *buf = NULL;
    float *lse;
    if (cache) {
        lse = (float *)((unsigned char *)cache + sizeof(ce_header));
    } else {
        if ((s = tb_alloc(ctx, fn, rows * 2 * sizeof(float), &buf)) != TB_OK)
            return s;
        lse = buf;
    }
    float *row_loss = lse + rows;
    const float *x = logits->data;
    const int32_t ignore = cfg.ignore_index;
    /* The family's vector exponential (src/kernels/vexp.h): the order of
     * each row's sum depends on cols only, never on the threads. */
    const tb_vexp_ops *vx = tb_vexp_select(ctx);
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * cols)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        const float m = vx->max(xr, cols); /* NaN entries ignored, as by `>` */
        const float sum = vx->exp_sub_sum(xr, NULL, cols, m);
        lse[r] = m + logf(sum);
        row_loss[r] = targets[r] == ignore ? 0.0f : lse[r] - xr[targets[r]];
    }
    double total = 0.0;
    size_t counted = 0;
    for (size_t r = 0; r < rows; r++) {
        if (targets[r] == ignore)
            continue;
        total += row_loss[r];
        counted++;
    }
    tb_free_with(&ctx->allocator, buf);
    if (cache) {
        ce_header h = {CE_MAGIC, rows, counted, 0};
        memcpy(cache, &h, sizeof h);
    }
    if (counted == 0)
        *loss = 0.0f; /* documented: all-ignored batch gives 0, not NaN */
    else
        *loss = (float)(cfg.reduction == TB_REDUCTION_MEAN ? total / (double)counted : total);
    return TB_OK;
}

tb_status tb_cross_entropy_backward(tb_ctx *ctx, const tb_cross_entropy_config *config,
                                    const tb_tensor *logits, const int32_t *targets,
                                    size_t n_targets, float dloss, const void *cache,
                                    size_t cache_bytes, tb_tensor *dlogits)
{
    const char *fn = __func__;
    tb_cross_entropy_config cfg = config ? *config : tb_cross_entropy_default_config();
    size_t rows, cols;
    tb_status s = check_args(ctx, fn, &cfg, logits, targets, n_targets, cache, cache_bytes, 1,
                             &rows, &cols);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, "dlogits", dlogits, rows, cols);
    if (s == TB_OK)
        s = check_backward_alias(ctx, fn, logits, targets, rows, cache, dlogits);
    if (s != TB_OK)
        return s;
    const uint64_t fields[1] = {rows};
    if ((s = tb_cache_match(ctx, fn, &CE_CACHE, cache, fields)) != TB_OK)
        return s;
    ce_header h;
    memcpy(&h, cache, sizeof h);
    const float *lse = (const float *)((const unsigned char *)cache + sizeof(ce_header));
    float scale = 0.0f;
    if (h.counted > 0)
        scale = cfg.reduction == TB_REDUCTION_MEAN ? dloss / (float)h.counted : dloss;
    const float *x = logits->data;
    float *d = dlogits->data;
    const int32_t ignore = cfg.ignore_index;
    const tb_vexp_ops *vx = tb_vexp_select(ctx);
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * cols)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *dr = d + r * cols;
        if (targets[r] == ignore || h.counted == 0) {
            for (size_t j = 0; j < cols; j++)
                dr[j] = 0.0f;
            continue;
        }
        const float l = lse[r];
        vx->exp_sub_sum(xr, dr, cols, l); /* dr may be xr: elementwise, alias-safe */
        for (size_t j = 0; j < cols; j++)
            dr[j] *= scale;
        dr[targets[r]] -= scale;
    }
    return TB_OK;
}
