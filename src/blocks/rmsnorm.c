/*
 * RMSNorm over the last dimension: y = x * rstd * weight, rstd =
 * 1/sqrt(mean(x^2) + eps): the uncentred case of the row normalization in
 * norm_common.c. Cache: header {magic, rows}, then per row 0, 0, rstd (the
 * layout LayerNorm uses, with a zero mean).
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
    if (!rn || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "rn and list must not be NULL");
    if (!rn->storage)
        return tb_fail(ctx, TB_ERR_STATE, __func__, "rn is not initialised");
    if (rn->flags & TB_NORM_SCALE)
        return tb_param_list_add(ctx, list, prefix, "weight", &rn->weight);
    return TB_OK;
}

tb_status tb_rmsnorm_cache_size(size_t rows, size_t *bytes)
{
    size_t floats;
    if (!tb_mul_size(rows, 3, &floats))
        return TB_ERR_OVERFLOW;
    return tb_norm_cache_bytes(floats, bytes);
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
    if (s == TB_OK)
        s = tb_check_inplace(ctx, fn, "x", x->data, "y", y->data, tb_tensor_numel(x));
    if (s != TB_OK)
        return s;
    if (cache && (s = tb_norm_check_cache(ctx, fn, cache, cache_bytes, rows * 3)) != TB_OK)
        return s;
    tb_rownorm_forward(ctx, rows, rn->dim, 0, rn->eps,
                       (rn->flags & TB_NORM_SCALE) ? rn->weight.value : NULL, NULL, x->data,
                       y->data, cache ? tb_norm_cache_data(cache) : NULL);
    if (cache) {
        tb_norm_cache_header h = {RMS_MAGIC, rows, 0, 0, 0};
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
    tb_norm_cache_header h;
    if ((s = tb_norm_read_cache(ctx, fn, cache, cache_bytes, rows * 3, RMS_MAGIC, rows, &h)) != TB_OK)
        return s;
    const size_t C = rn->dim;
    if (tb_overlaps(dx->data, rows * C, x->data, rows * C))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dx overlaps x");
    if ((s = tb_check_inplace(ctx, fn, "dy", dy->data, "dx", dx->data, rows * C)) != TB_OK)
        return s;
    const int want_w = (rn->flags & TB_NORM_SCALE) && tb_param_wants_grad(&rn->weight);
    return tb_rownorm_backward(ctx, fn, rows, C, 0,
                               (rn->flags & TB_NORM_SCALE) ? rn->weight.value : NULL,
                               tb_norm_cache_cdata(cache), x->data,
                               dy->data, dx->data, want_w ? rn->weight.grad : NULL, NULL);
}
