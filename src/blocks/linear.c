/* Linear layer: y = x W^T + b. */
#include <math.h>
#include <string.h>

#include "../core/internal.h"
#include "../kernels/gemm.h"

tb_status tb_linear_init(tb_ctx *ctx, tb_linear *layer, size_t in_features,
                         size_t out_features, int has_bias, tb_rng *rng)
{
    return tb_linear_init_layout(ctx, layer, in_features, out_features, has_bias,
                                 TB_LINEAR_OUT_IN, rng);
}

tb_status tb_linear_init_layout(tb_ctx *ctx, tb_linear *layer, size_t in_features,
                                size_t out_features, int has_bias, tb_linear_layout layout,
                                tb_rng *rng)
{
    const char *fn = "tb_linear_init";
    if (layer)
        memset(layer, 0, sizeof *layer);
    if (!ctx || !layer || !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, layer and rng must not be NULL");
    if (layout != TB_LINEAR_OUT_IN && layout != TB_LINEAR_IN_OUT)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown weight layout %d", (int)layout);
    if (in_features == 0 || out_features == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "in_features (%zu) and out_features (%zu) must be >= 1",
                       in_features, out_features);
    size_t wn, n, bytes;
    if (!tb_mul_size(in_features, out_features, &wn) ||
        !tb_add_size(wn, has_bias ? out_features : 0, &n) ||
        !tb_mul_size(n, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%zu x %zu parameters overflow", out_features,
                       in_features);
    /* Values and gradients in two allocations, so tb_linear_freeze() can
     * release the gradients without moving the values. */
    void *storage, *grad_storage;
    tb_status s = tb_alloc(ctx, fn, bytes, &storage);
    if (s != TB_OK)
        return s;
    if ((s = tb_alloc(ctx, fn, bytes, &grad_storage)) != TB_OK) {
        tb_free_with(&ctx->allocator, storage);
        return s;
    }
    float *mem = storage;
    size_t nb = has_bias ? out_features : 0;
    float *w = mem, *b = mem + wn, *gw = grad_storage, *gb = gw + wn;
    float bound = 1.0f / sqrtf((float)in_features);
    s = tb_rng_fill_uniform(ctx, rng, w, wn, -bound, bound);
    if (s == TB_OK && has_bias)
        s = tb_rng_fill_uniform(ctx, rng, b, nb, -bound, bound);
    if (s != TB_OK) {
        tb_free_with(&ctx->allocator, mem);
        tb_free_with(&ctx->allocator, grad_storage);
        return s;
    }
    memset(gw, 0, (wn + nb) * sizeof(float));
    layer->in_features = in_features;
    layer->out_features = out_features;
    layer->has_bias = has_bias ? 1 : 0;
    layer->layout = layout;
    layer->storage = mem;
    layer->grad_storage = grad_storage;
    layer->allocator = ctx->allocator;
    size_t wshape[2] = {out_features, in_features};
    if (layout == TB_LINEAR_IN_OUT)
        wshape[0] = in_features, wshape[1] = out_features;
    s = tb_param_view(ctx, &layer->weight, w, gw, 2, wshape);
    if (s == TB_OK && has_bias)
        s = tb_param_view(ctx, &layer->bias, b, gb, 1, &out_features);
    if (s != TB_OK)
        tb_linear_free(layer);
    return s;
}

tb_status tb_linear_view(tb_ctx *ctx, tb_linear *layer, const tb_param *weight,
                         const tb_param *bias, tb_linear_layout layout)
{
    const char *fn = __func__;
    if (!layer || !weight)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "layer and weight must not be NULL");
    memset(layer, 0, sizeof *layer);
    if (layout != TB_LINEAR_OUT_IN && layout != TB_LINEAR_IN_OUT)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown weight layout %d", (int)layout);
    if (weight->ndim != 2 || !weight->value)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "weight must be a 2-D parameter with values");
    const size_t out = layout == TB_LINEAR_OUT_IN ? weight->shape[0] : weight->shape[1];
    const size_t in = layout == TB_LINEAR_OUT_IN ? weight->shape[1] : weight->shape[0];
    if (bias && (bias->ndim != 1 || bias->shape[0] != out || !bias->value))
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "bias must be a (%zu) parameter with values", out);
    layer->in_features = in;
    layer->out_features = out;
    layer->layout = layout;
    /* The same value and grad pointers; the copies own nothing, whoever
     * owns the originals (tb_param_free() on them must not free it twice). */
    layer->weight = *weight;
    layer->weight.storage = NULL;
    if (bias) {
        layer->has_bias = 1;
        layer->bias = *bias;
        layer->bias.storage = NULL;
    }
    return TB_OK;
}

void tb_linear_freeze(tb_linear *layer)
{
    if (!layer)
        return;
    if (layer->grad_storage)
        tb_free_with(&layer->allocator, layer->grad_storage);
    layer->grad_storage = NULL;
    layer->weight.grad = NULL, layer->weight.trainable = 0;
    layer->bias.grad = NULL, layer->bias.trainable = 0;
}

void tb_linear_free(tb_linear *layer)
{
    if (!layer)
        return;
    if (layer->storage)
        tb_free_with(&layer->allocator, layer->storage);
    if (layer->grad_storage)
        tb_free_with(&layer->allocator, layer->grad_storage);
    memset(layer, 0, sizeof *layer);
}

tb_status tb_linear_params(tb_ctx *ctx, tb_linear *layer, const char *prefix,
                           tb_param_list *list)
{
    if (!layer)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "layer is NULL");
    if (!layer->weight.value)
        return tb_fail(ctx, TB_ERR_STATE, __func__, "layer is not initialised");
    tb_status s = tb_param_list_add(ctx, list, prefix, "weight", &layer->weight);
    if (s == TB_OK && layer->has_bias)
        s = tb_param_list_add(ctx, list, prefix, "bias", &layer->bias);
    return s;
}

static tb_status check_layer(tb_ctx *ctx, const char *fn, const tb_linear *layer)
{
    if (!ctx || !layer)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and layer must not be NULL");
    if (!layer->weight.value)
        return tb_fail(ctx, TB_ERR_STATE, fn, "layer is not initialised");
    return TB_OK;
}

/* The weight's floats (in * out in either layout; a view's shape fields
 * are not trusted for the count). */
static tb_span weight_span(const char *name, const tb_linear *layer, const float *p)
{
    return tb_span_rows(name, p, layer->out_features, layer->in_features, layer->in_features);
}

/* y against x and the parameters: the product reads them all while it
 * writes y, and the bias is added after it. No in-place form. */
static tb_status check_forward_alias(tb_ctx *ctx, const char *fn, const tb_linear *layer,
                                     const tb_tensor *x, const tb_tensor *y)
{
    const tb_span in[] = {tb_span_tensor("x", x),
                          weight_span("weight", layer, layer->weight.value),
                          tb_span_floats("bias", layer->has_bias ? layer->bias.value : NULL,
                                         layer->out_features)};
    const tb_span out[] = {tb_span_tensor("y", y)};
    return tb_check_alias(ctx, fn, out, 1, in, 3);
}

/* The gradients written (dx, and weight.grad and bias.grad where wanted)
 * against x, dy and the weight, which the later products still read, and
 * against each other. No in-place form. */
static tb_status check_backward_alias(tb_ctx *ctx, const char *fn, const tb_linear *layer,
                                      const tb_tensor *x, const tb_tensor *dy,
                                      const tb_tensor *dx)
{
    const int gw = tb_param_wants_grad(&layer->weight);
    const int gb = layer->has_bias && tb_param_wants_grad(&layer->bias);
    const tb_span in[] = {tb_span_tensor("x", x), tb_span_tensor("dy", dy),
                          weight_span("weight", layer, layer->weight.value)};
    const tb_span out[] = {
        tb_span_tensor("dx", dx),
        weight_span("weight.grad", layer, gw ? layer->weight.grad : NULL),
        tb_span_floats("bias.grad", gb ? layer->bias.grad : NULL, layer->out_features)};
    return tb_check_alias(ctx, fn, out, 3, in, 3);
}

tb_status tb_linear_forward(tb_ctx *ctx, const tb_linear *layer, const tb_tensor *x,
                            tb_tensor *y)
{
    const char *fn = __func__;
    tb_status s = check_layer(ctx, fn, layer);
    size_t n, cin, cout;
    if (s != TB_OK)
        return s;
    if ((s = tb_check_tensor(ctx, fn, "x", x, &n, &cin)) != TB_OK)
        return s;
    if (cin != layer->in_features)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "x has last dimension %zu, expected in_features %zu",
                       cin, layer->in_features);
    if ((s = tb_check_matrix(ctx, fn, "y", y, n, layer->out_features)) != TB_OK)
        return s;
    cout = layer->out_features;
    if ((s = check_forward_alias(ctx, fn, layer, x, y)) != TB_OK)
        return s;
    if (layer->layout == TB_LINEAR_IN_OUT) /* y = x W, W (in, out) */
        s = tb_gemm(ctx, 0, 0, n, cout, cin, 1.0f, x->data, cin, layer->weight.value, cout, 0.0f,
                    y->data, cout);
    else /* y = x W^T, W (out, in) */
        s = tb_gemm(ctx, 0, 1, n, cout, cin, 1.0f, x->data, cin, layer->weight.value, cin, 0.0f,
                    y->data, cout);
    if (s != TB_OK)
        return s;
    if (layer->has_bias) {
        const float *b = layer->bias.value;
        float *yd = y->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n * cout)) schedule(static)
        for (size_t r = 0; r < n; r++)
            for (size_t j = 0; j < cout; j++)
                yd[r * cout + j] += b[j];
    }
    return TB_OK;
}

/* Columns per block of the bias gradient's column sums. */
#define BIAS_COLS 64

tb_status tb_linear_backward(tb_ctx *ctx, tb_linear *layer, const tb_tensor *x,
                             const tb_tensor *dy, tb_tensor *dx)
{
    const char *fn = __func__;
    tb_status s = check_layer(ctx, fn, layer);
    size_t n, cin, cout = layer ? layer->out_features : 0;
    if (s != TB_OK)
        return s;
    if ((s = tb_check_tensor(ctx, fn, "x", x, &n, &cin)) != TB_OK)
        return s;
    if (cin != layer->in_features)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "x has last dimension %zu, expected in_features %zu",
                       cin, layer->in_features);
    if ((s = tb_check_matrix(ctx, fn, "dy", dy, n, cout)) != TB_OK)
        return s;
    if (dx) {
        if ((s = tb_check_matrix(ctx, fn, "dx", dx, n, cin)) != TB_OK)
            return s;
    }
    if ((s = check_backward_alias(ctx, fn, layer, x, dy, dx)) != TB_OK)
        return s;
    /* The weight gradient first: if it fails (out of memory for packing),
     * nothing has been written yet. */
    const int in_out = layer->layout == TB_LINEAR_IN_OUT;
    if (tb_param_wants_grad(&layer->weight)) {
        if (in_out) /* dW (in, out) += x^T dy */
            s = tb_gemm(ctx, 1, 0, cin, cout, n, 1.0f, x->data, cin, dy->data, cout, 1.0f,
                        layer->weight.grad, cout);
        else /* dW (out, in) += dy^T x */
            s = tb_gemm(ctx, 1, 0, cout, cin, n, 1.0f, dy->data, cout, x->data, cin, 1.0f,
                        layer->weight.grad, cin);
        if (s != TB_OK)
            return s;
    }
    if (dx) {
        if (in_out) /* dx (n, in) = dy (n, out) W^T, W (in, out) */
            s = tb_gemm(ctx, 0, 1, n, cin, cout, 1.0f, dy->data, cout, layer->weight.value, cout,
                        0.0f, dx->data, cin);
        else /* dx (n, in) = dy (n, out) W (out, in) */
            s = tb_gemm(ctx, 0, 0, n, cin, cout, 1.0f, dy->data, cout, layer->weight.value, cin,
                        0.0f, dx->data, cin);
        if (s != TB_OK)
            return s;
    }
    if (layer->has_bias && tb_param_wants_grad(&layer->bias)) {
        /* Column sums, each column summed over rows in order (from 0, then
         * added to the gradient) by one thread. A thread takes a block of
         * BIAS_COLS columns and reads the block's rows one after another,
         * each a contiguous run (walking one column down its rows instead
         * reads a cache line per element); the order of every column's
         * sum is the same either way. */
        float *gb = layer->bias.grad;
        const float *d = dy->data;
        const size_t blocks = (cout + BIAS_COLS - 1) / BIAS_COLS;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n * cout)) schedule(static)
        for (size_t bl = 0; bl < blocks; bl++) {
            const size_t j0 = bl * BIAS_COLS, w = cout - j0 < BIAS_COLS ? cout - j0 : BIAS_COLS;
            float acc[BIAS_COLS] = {0};
            for (size_t r = 0; r < n; r++) {
                const float *row = d + r * cout + j0;
                for (size_t j = 0; j < w; j++)
                    acc[j] += row[j];
            }
            for (size_t j = 0; j < w; j++)
                gb[j0 + j] += acc[j];
        }
    }
    return TB_OK;
}
