/*
 * LayerNorm over the last dimension: the centred case of the row
 * normalization in norm_common.c (two passes in double for the statistics,
 * a split mean for the deviations, column sums over fixed row chunks).
 * Cache: header {magic, rows}, then per row mean_hi, mean_lo, rstd.
 */
#include <math.h>
#include <string.h>

#include "norm_common.h"

#define LN_MAGIC 0x74624C4E31ULL /* "tbLN1" */

tb_status tb_layernorm_init(tb_ctx *ctx, tb_layernorm *ln, size_t dim, float eps,
                            unsigned flags)
{
    const char *fn = __func__;
    if (ln)
        memset(ln, 0, sizeof *ln);
    if (!ctx || !ln)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and ln must not be NULL");
    if (dim == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dim must be >= 1");
    if (flags & ~(TB_NORM_SCALE | TB_NORM_SHIFT))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "flags 0x%x: only TB_NORM_SCALE and "
                       "TB_NORM_SHIFT apply to LayerNorm", flags);
    tb_status s = tb_norm_check_eps(ctx, fn, eps);
    if (s != TB_OK)
        return s;
    float *mem, *grad;
    /* weight and bias, then their gradients in a second allocation (so that
     * tb_layernorm_freeze() can release them alone); allocated even if
     * unused: 2 + 2 small vectors */
    if ((s = tb_norm_alloc(ctx, fn, dim, 2, &mem)) != TB_OK)
        return s;
    if ((s = tb_norm_alloc(ctx, fn, dim, 2, &grad)) != TB_OK) {
        tb_free_with(&ctx->allocator, mem);
        return s;
    }
    ln->dim = dim;
    ln->eps = eps;
    ln->flags = flags;
    ln->storage = mem;
    ln->grad_storage = grad;
    ln->allocator = ctx->allocator;
    if (flags & TB_NORM_SCALE) {
        for (size_t i = 0; i < dim; i++)
            mem[i] = 1.0f;
        tb_norm_vector(&ln->weight, mem, grad, dim);
    }
    if (flags & TB_NORM_SHIFT)
        tb_norm_vector(&ln->bias, mem + dim, grad + dim, dim);
    return TB_OK;
}

void tb_layernorm_freeze(tb_layernorm *ln)
{
    if (!ln)
        return;
    if (ln->grad_storage)
        tb_free_with(&ln->allocator, ln->grad_storage);
    ln->grad_storage = NULL;
    ln->weight.grad = NULL, ln->weight.trainable = 0;
    ln->bias.grad = NULL, ln->bias.trainable = 0;
}

void tb_layernorm_free(tb_layernorm *ln)
{
    if (!ln)
        return;
    tb_free_with(&ln->allocator, ln->storage);
    if (ln->grad_storage)
        tb_free_with(&ln->allocator, ln->grad_storage);
    memset(ln, 0, sizeof *ln);
}

tb_status tb_layernorm_params(tb_ctx *ctx, tb_layernorm *ln, const char *prefix,
                              tb_param_list *list)
{
    if (!ln || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "ln and list must not be NULL");
    if (!ln->storage)
        return tb_fail(ctx, TB_ERR_STATE, __func__, "ln is not initialised");
    tb_status s = TB_OK;
    if (ln->flags & TB_NORM_SCALE)
        s = tb_param_list_add(ctx, list, prefix, "weight", &ln->weight);
    if (s == TB_OK && (ln->flags & TB_NORM_SHIFT))
        s = tb_param_list_add(ctx, list, prefix, "bias", &ln->bias);
    return s;
}

static const tb_cache_kind LN_CACHE = {LN_MAGIC, "tb_layernorm_forward",
                                       "tb_layernorm_cache_size", 1, 1, tb_norm_rows_field};

tb_status tb_layernorm_cache_size(size_t rows, size_t *bytes)
{
    return tb_norm_cache_bytes(rows, 3, bytes);
}

/* The block as the shared row-norm entry points see it; NULL if ctx or ln
 * is unusable (the status is then in *s). */
static const tb_rownorm_spec *spec_of(tb_ctx *ctx, const char *fn, const tb_layernorm *ln,
                                      int grads, tb_rownorm_spec *sp, tb_status *s)
{
    if (!ctx || !ln) {
        *s = tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and ln must not be NULL");
        return NULL;
    }
    if (!ln->storage) {
        *s = tb_fail(ctx, TB_ERR_STATE, fn, "ln is not initialised");
        return NULL;
    }
    const int scale = (ln->flags & TB_NORM_SCALE) != 0, shift = (ln->flags & TB_NORM_SHIFT) != 0;
    sp->kind = &LN_CACHE;
    sp->dim = ln->dim;
    sp->center = 1;
    sp->eps = ln->eps;
    sp->w = scale ? ln->weight.value : NULL;
    sp->b = shift ? ln->bias.value : NULL;
    sp->dw = grads && scale && tb_param_wants_grad(&ln->weight) ? ln->weight.grad : NULL;
    sp->db = grads && shift && tb_param_wants_grad(&ln->bias) ? ln->bias.grad : NULL;
    return sp;
}

tb_status tb_layernorm_forward(tb_ctx *ctx, const tb_layernorm *ln, const tb_tensor *x,
                               tb_tensor *y, void *cache, size_t cache_bytes)
{
    tb_rownorm_spec sp;
    tb_status s = TB_OK;
    if (!spec_of(ctx, __func__, ln, 0, &sp, &s))
        return s;
    return tb_rownorm_forward_op(ctx, __func__, &sp, x, y, cache, cache_bytes);
}

tb_status tb_layernorm_backward(tb_ctx *ctx, tb_layernorm *ln, const tb_tensor *x,
                                const tb_tensor *dy, const void *cache, size_t cache_bytes,
                                tb_tensor *dx)
{
    tb_rownorm_spec sp;
    tb_status s = TB_OK;
    if (!spec_of(ctx, __func__, ln, 1, &sp, &s))
        return s;
    return tb_rownorm_backward_op(ctx, __func__, &sp, x, dy, cache, cache_bytes, dx);
}
