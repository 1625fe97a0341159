/* Tensor views and the shape checks every block uses. */
#include <stdint.h>
#include <string.h>

#include "internal.h"

static tb_tensor make_view(float *data, size_t ndim, const size_t *shape)
{
    tb_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = ndim;
    for (size_t i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    return t;
}

tb_tensor tb_tensor_1d(float *data, size_t d0)
{
    size_t s[1] = {d0};
    return make_view(data, 1, s);
}

tb_tensor tb_tensor_2d(float *data, size_t d0, size_t d1)
{
    size_t s[2] = {d0, d1};
    return make_view(data, 2, s);
}

tb_tensor tb_tensor_3d(float *data, size_t d0, size_t d1, size_t d2)
{
    size_t s[3] = {d0, d1, d2};
    return make_view(data, 3, s);
}

tb_tensor tb_tensor_4d(float *data, size_t d0, size_t d1, size_t d2, size_t d3)
{
    size_t s[4] = {d0, d1, d2, d3};
    return make_view(data, 4, s);
}

/* Product of the sizes with overflow checks; 0 if invalid. */
static size_t view_numel(const tb_tensor *t)
{
    if (!t || t->ndim < 1 || t->ndim > TB_MAX_DIMS)
        return 0;
    size_t n = 1;
    for (size_t i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0 || !tb_mul_size(n, t->shape[i], &n))
            return 0;
    }
    size_t bytes;
    if (!tb_mul_size(n, sizeof(float), &bytes))
        return 0;
    return n;
}

size_t tb_tensor_numel(const tb_tensor *t)
{
    return view_numel(t);
}

size_t tb_tensor_cols(const tb_tensor *t)
{
    return view_numel(t) ? t->shape[t->ndim - 1] : 0;
}

size_t tb_tensor_rows(const tb_tensor *t)
{
    size_t n = view_numel(t);
    return n ? n / t->shape[t->ndim - 1] : 0;
}

tb_status tb_check_tensor(tb_ctx *ctx, const char *fn, const char *what, const tb_tensor *t,
                          size_t *rows, size_t *cols)
{
    if (!ctx)
        return TB_ERR_NULL_ARG; /* every call needs a context */
    if (!t)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "%s is NULL", what);
    if (!t->data)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "%s has NULL data", what);
    if (t->ndim < 1 || t->ndim > TB_MAX_DIMS)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s has %zu dimensions; 1 to %d are allowed",
                       what, t->ndim, TB_MAX_DIMS);
    size_t n = 1;
    for (size_t i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0)
            return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s has size 0 in dimension %zu", what, i);
        if (!tb_mul_size(n, t->shape[i], &n))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%s has more elements than size_t holds",
                           what);
    }
    size_t bytes;
    if (!tb_mul_size(n, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%s is larger than memory can address", what);
    if (cols)
        *cols = t->shape[t->ndim - 1];
    if (rows)
        *rows = n / t->shape[t->ndim - 1];
    return TB_OK;
}

tb_status tb_check_matrix(tb_ctx *ctx, const char *fn, const char *what, const tb_tensor *t,
                          size_t rows, size_t cols)
{
    size_t r, c;
    tb_status s = tb_check_tensor(ctx, fn, what, t, &r, &c);
    if (s != TB_OK)
        return s;
    if (c != cols)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s has last dimension %zu, expected %zu", what, c,
                       cols);
    if (r != rows)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s has %zu rows, expected %zu", what, r, rows);
    return TB_OK;
}

tb_status tb_check_same_numel(tb_ctx *ctx, const char *fn, const char *a_name,
                              const tb_tensor *a, const char *b_name, const tb_tensor *b,
                              size_t *numel)
{
    size_t ar, ac, br, bc;
    tb_status s = tb_check_tensor(ctx, fn, a_name, a, &ar, &ac);
    if (s != TB_OK)
        return s;
    s = tb_check_tensor(ctx, fn, b_name, b, &br, &bc);
    if (s != TB_OK)
        return s;
    if (ar * ac != br * bc)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s has %zu elements but %s has %zu", a_name,
                       ar * ac, b_name, br * bc);
    *numel = ar * ac;
    return TB_OK;
}
