/* Row softmax, forward and backward. */
#include <math.h>

#include "../core/internal.h"

/* Check that b has the same rows and columns as a. */
static tb_status check_like(tb_ctx *ctx, const char *fn, const char *aname, const tb_tensor *a,
                            const char *bname, const tb_tensor *b, size_t *rows, size_t *cols)
{
    tb_status s = tb_check_tensor(ctx, fn, aname, a, rows, cols);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, bname, b, *rows, *cols);
    return s;
}

/* y may be x exactly: a row's maximum is taken before the row is written,
 * then each element is read before it is overwritten. */
static tb_status check_forward_alias(tb_ctx *ctx, const char *fn, const tb_tensor *x,
                                     const tb_tensor *y)
{
    const tb_span in[] = {tb_span_tensor("x", x)};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("y", y), TB_INPUT(0))};
    return tb_check_alias(ctx, fn, out, 1, in, 1);
}

/* dx may be y or dy exactly: a row's sum(y * dy) is taken before the row is
 * written, then element j reads y[j] and dy[j] before writing dx[j]. */
static tb_status check_backward_alias(tb_ctx *ctx, const char *fn, const tb_tensor *y,
                                      const tb_tensor *dy, const tb_tensor *dx)
{
    const tb_span in[] = {tb_span_tensor("y", y), tb_span_tensor("dy", dy)};
    const tb_span out[] = {tb_span_in_place(tb_span_tensor("dx", dx), TB_INPUT(0) | TB_INPUT(1))};
    return tb_check_alias(ctx, fn, out, 1, in, 2);
}

tb_status tb_softmax_forward(tb_ctx *ctx, const tb_tensor *x, tb_tensor *y)
{
    size_t rows, cols;
    tb_status s = check_like(ctx, __func__, "x", x, "y", y, &rows, &cols);
    if (s == TB_OK)
        s = check_forward_alias(ctx, __func__, x, y);
    if (s != TB_OK)
        return s;
    const float *xd = x->data;
    float *yd = y->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * cols)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = xd + r * cols;
        float *yr = yd + r * cols;
        float m = -INFINITY;
        int has_nan = 0;
        for (size_t j = 0; j < cols; j++) {
            if (xr[j] > m)
                m = xr[j];
            has_nan |= isnan(xr[j]);
        }
        if (m == -INFINITY && !has_nan) { /* every entry masked: zeros */
            for (size_t j = 0; j < cols; j++)
                yr[j] = 0.0f;
            continue;
        }
        float sum = 0.0f;
        for (size_t j = 0; j < cols; j++) {
            float e = expf(xr[j] - m);
            yr[j] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
        for (size_t j = 0; j < cols; j++)
            yr[j] *= inv;
    }
    return TB_OK;
}

tb_status tb_softmax_backward(tb_ctx *ctx, const tb_tensor *y, const tb_tensor *dy,
                              tb_tensor *dx)
{
    size_t rows, cols;
    tb_status s = check_like(ctx, __func__, "y", y, "dy", dy, &rows, &cols);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, __func__, "dx", dx, rows, cols);
    if (s == TB_OK)
        s = check_backward_alias(ctx, __func__, y, dy, dx);
    if (s != TB_OK)
        return s;
    const float *yd = y->data, *g = dy->data;
    float *o = dx->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * cols)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *yr = yd + r * cols, *gr = g + r * cols;
        float *orow = o + r * cols;
        float dot = 0.0f;
        for (size_t j = 0; j < cols; j++)
            dot += yr[j] * gr[j];
        for (size_t j = 0; j < cols; j++)
            orow[j] = yr[j] * (gr[j] - dot);
    }
    return TB_OK;
}
