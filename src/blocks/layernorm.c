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
    float *mem;
    /* weight, bias, their gradients (allocated even if unused: 4 small vectors) */
    if ((s = tb_norm_alloc(ctx, fn, dim, 4, &mem)) != TB_OK)
        return s;
    ln->dim = dim;
    ln->eps = eps;
    ln->flags = flags;
    ln->storage = mem;
    ln->allocator = ctx->allocator;
    if (flags & TB_NORM_SCALE) {
        for (size_t i = 0; i < dim; i++)
            mem[i] = 1.0f;
        tb_norm_vector(&ln->weight, mem, mem + 2 * dim, dim, 1);
    }
    if (flags & TB_NORM_SHIFT)
        tb_norm_vector(&ln->bias, mem + dim, mem + 3 * dim, dim, 1);
    return TB_OK;
}

void tb_layernorm_free(tb_layernorm *ln)
{
    if (!ln)
        return;
    tb_free_with(&ln->allocator, ln->storage);
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

tb_status tb_layernorm_cache_size(size_t rows, size_t *bytes)
{
    size_t floats;
    if (!tb_mul_size(rows, 3, &floats))
        return TB_ERR_OVERFLOW;
    return tb_norm_cache_bytes(floats, bytes);
}

/* Shared checks: block initialised, x valid with C columns, other same shape. */
static tb_status check_io(tb_ctx *ctx, const char *fn, const tb_layernorm *ln,
                          const tb_tensor *x, const char *oname, const tb_tensor *o, size_t *rows)
{
    size_t cols;
    if (!ctx || !ln)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and ln must not be NULL");
    if (!ln->storage)
        return tb_fail(ctx, TB_ERR_STATE, fn, "ln is not initialised");
    tb_status s = tb_check_tensor(ctx, fn, "x", x, rows, &cols);
    if (s != TB_OK)
        return s;
    if (cols != ln->dim)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "x has last dimension %zu, expected %zu", cols,
                       ln->dim);
    return tb_check_matrix(ctx, fn, oname, o, *rows, cols);
}

tb_status tb_layernorm_forward(tb_ctx *ctx, const tb_layernorm *ln, const tb_tensor *x,
                               tb_tensor *y, void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    size_t rows;
    tb_status s = check_io(ctx, fn, ln, x, "y", y, &rows);
    if (s == TB_OK)
        s = tb_check_inplace(ctx, fn, "x", x->data, "y", y->data, tb_tensor_numel(x));
    if (s != TB_OK)
        return s;
    if (cache && (s = tb_norm_check_cache(ctx, fn, cache, cache_bytes, rows * 3)) != TB_OK)
        return s;
    tb_rownorm_forward(ctx, rows, ln->dim, 1, ln->eps,
                       (ln->flags & TB_NORM_SCALE) ? ln->weight.value : NULL,
                       (ln->flags & TB_NORM_SHIFT) ? ln->bias.value : NULL, x->data, y->data,
                       cache ? tb_norm_cache_data(cache) : NULL);
    if (cache) {
        tb_norm_cache_header h = {LN_MAGIC, rows, 0, 0, 0};
        memcpy(cache, &h, sizeof h);
    }
    return TB_OK;
}

tb_status tb_layernorm_backward(tb_ctx *ctx, tb_layernorm *ln, const tb_tensor *x,
                                const tb_tensor *dy, const void *cache, size_t cache_bytes,
                                tb_tensor *dx)
{
    const char *fn = __func__;
    size_t rows;
    tb_status s = check_io(ctx, fn, ln, x, "dy", dy, &rows);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, "dx", dx, rows, ln->dim);
    if (s != TB_OK)
        return s;
    tb_norm_cache_header h;
    if ((s = tb_norm_read_cache(ctx, fn, cache, cache_bytes, rows * 3, LN_MAGIC, rows, &h)) != TB_OK)
        return s;
    const size_t C = ln->dim;
    if (tb_overlaps(dx->data, rows * C, x->data, rows * C))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dx overlaps x");
    if ((s = tb_check_inplace(ctx, fn, "dy", dy->data, "dx", dx->data, rows * C)) != TB_OK)
        return s;
    const int want_w = (ln->flags & TB_NORM_SCALE) && tb_param_wants_grad(&ln->weight);
    const int want_b = (ln->flags & TB_NORM_SHIFT) && tb_param_wants_grad(&ln->bias);
    return tb_rownorm_backward(ctx, fn, rows, C, 1,
                               (ln->flags & TB_NORM_SCALE) ? ln->weight.value : NULL,
                               tb_norm_cache_cdata(cache), x->data,
                               dy->data, dx->data, want_w ? ln->weight.grad : NULL,
                               want_b ? ln->bias.grad : NULL);
}
