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

tb_status tb_softmax_forward(tb_ctx *ctx, const tb_tensor *x, tb_tensor *y)
{
    size_t rows, cols;
    tb_status s = check_like(ctx, __func__, "x", x, "y", y, &rows, &cols);
    if (s == TB_OK)
        s = tb_check_inplace(ctx, __func__, "x", x->data, "y", y->data, rows * cols);
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
        s = tb_check_inplace(ctx, __func__, "dy", dy->data, "dx", dx->data, rows * cols);
    if (s == TB_OK)
        s = tb_check_inplace(ctx, __func__, "y", y->data, "dx", dx->data, rows * cols);
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
