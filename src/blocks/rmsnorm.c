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
    float *mem, *grad;
    /* The weight, and its gradient in a second allocation (so that
     * tb_rmsnorm_freeze() can release it alone). */
    if ((s = tb_norm_alloc(ctx, fn, dim, 1, &mem)) != TB_OK)
        return s;
    if ((s = tb_norm_alloc(ctx, fn, dim, 1, &grad)) != TB_OK) {
        tb_free_with(&ctx->allocator, mem);
        return s;
    }
    rn->dim = dim;
    rn->eps = eps;
    rn->flags = flags;
    rn->storage = mem;
    rn->grad_storage = grad;
    rn->allocator = ctx->allocator;
    if (flags & TB_NORM_SCALE) {
        for (size_t i = 0; i < dim; i++)
            mem[i] = 1.0f;
        tb_norm_vector(&rn->weight, mem, grad, dim);
    }
    return TB_OK;
}

void tb_rmsnorm_freeze(tb_rmsnorm *rn)
{
    if (!rn)
        return;
    if (rn->grad_storage)
        tb_free_with(&rn->allocator, rn->grad_storage);
    rn->grad_storage = NULL;
    rn->weight.grad = NULL, rn->weight.trainable = 0;
}

void tb_rmsnorm_free(tb_rmsnorm *rn)
{
    if (!rn)
        return;
    tb_free_with(&rn->allocator, rn->storage);
    if (rn->grad_storage)
        tb_free_with(&rn->allocator, rn->grad_storage);
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

static const tb_cache_kind RMS_CACHE = {RMS_MAGIC, "tb_rmsnorm_forward",
                                        "tb_rmsnorm_cache_size", 1, 1, tb_norm_rows_field};

tb_status tb_rmsnorm_cache_size(size_t rows, size_t *bytes)
{
    return tb_norm_cache_bytes(rows, 3, bytes);
}

/* The block as the shared row-norm entry points see it; NULL if ctx or rn
 * is unusable (the status is then in *s). */
static const tb_rownorm_spec *spec_of(tb_ctx *ctx, const char *fn, const tb_rmsnorm *rn,
                                      int grads, tb_rownorm_spec *sp, tb_status *s)
{
    if (!ctx || !rn) {
        *s = tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and rn must not be NULL");
        return NULL;
    }
    if (!rn->storage) {
        *s = tb_fail(ctx, TB_ERR_STATE, fn, "rn is not initialised");
        return NULL;
    }
    const int scale = (rn->flags & TB_NORM_SCALE) != 0;
    sp->kind = &RMS_CACHE;
    sp->dim = rn->dim;
    sp->center = 0;
    sp->eps = rn->eps;
    sp->w = scale ? rn->weight.value : NULL;
    sp->b = NULL;
    sp->dw = grads && scale && tb_param_wants_grad(&rn->weight) ? rn->weight.grad : NULL;
    sp->db = NULL;
    return sp;
}

tb_status tb_rmsnorm_forward(tb_ctx *ctx, const tb_rmsnorm *rn, const tb_tensor *x, tb_tensor *y,
                             void *cache, size_t cache_bytes)
{
    tb_rownorm_spec sp;
    tb_status s = TB_OK;
    if (!spec_of(ctx, __func__, rn, 0, &sp, &s))
        return s;
    return tb_rownorm_forward_op(ctx, __func__, &sp, x, y, cache, cache_bytes);
}

tb_status tb_rmsnorm_backward(tb_ctx *ctx, tb_rmsnorm *rn, const tb_tensor *x,
                              const tb_tensor *dy, const void *cache, size_t cache_bytes,
                              tb_tensor *dx)
{
    tb_rownorm_spec sp;
    tb_status s = TB_OK;
    if (!spec_of(ctx, __func__, rn, 1, &sp, &s))
        return s;
    return tb_rownorm_backward_op(ctx, __func__, &sp, x, dy, cache, cache_bytes, dx);
}
