/* The examples' classifier MLP (ex_mlp.h). */
#include "ex_mlp.h"

#include <stdlib.h>
#include <string.h>

#define TRY(call)                       \
    do {                                \
        tb_status try_status_ = (call); \
        if (try_status_ != TB_OK)       \
            return try_status_;         \
    } while (0)

tb_status ex_mlp_init(tb_ctx *ctx, ex_mlp *m, size_t in, size_t hidden, size_t out, tb_rng *rng)
{
    memset(m, 0, sizeof *m);
    m->in = in, m->hidden = hidden, m->out = out;
    TRY(tb_linear_init(ctx, &m->fc1, in, hidden, 1, rng));
    TRY(tb_linear_init(ctx, &m->fc2, hidden, hidden, 1, rng));
    TRY(tb_linear_init(ctx, &m->fc3, hidden, out, 1, rng));
    TRY(tb_param_list_init(ctx, &m->params));
    TRY(tb_linear_params(ctx, &m->fc1, "fc1", &m->params));
    TRY(tb_linear_params(ctx, &m->fc2, "fc2", &m->params));
    TRY(tb_linear_params(ctx, &m->fc3, "fc3", &m->params));
    tb_param_list_zero_grad(&m->params);
    return TB_OK;
}

void ex_mlp_free(ex_mlp *m)
{
    tb_param_list_free(&m->params);
    tb_linear_free(&m->fc1);
    tb_linear_free(&m->fc2);
    tb_linear_free(&m->fc3);
}

static tb_status carve(tb_ctx *ctx, tb_arena *arena, size_t n, float **out)
{
    void *p = NULL;
    tb_status s = tb_arena_alloc(ctx, arena, n * sizeof(float), &p);
    *out = p;
    return s;
}

tb_status ex_mlp_acts_init(tb_ctx *ctx, ex_mlp_acts *a, const ex_mlp *m, size_t max_rows)
{
    memset(a, 0, sizeof *a);
    a->max_rows = max_rows;
    const size_t hid = max_rows * m->hidden * sizeof(float);
    const size_t cls = max_rows * m->out * sizeof(float);
    size_t total = 0;
    TRY(tb_cross_entropy_cache_size(max_rows, &a->ce_cache_bytes));
    for (int i = 0; i < 6; i++) /* h1 a1 h2 a2 ga gb */
        TRY(tb_arena_size_add(&total, hid));
    for (int i = 0; i < 2; i++) /* logits dlogits */
        TRY(tb_arena_size_add(&total, cls));
    TRY(tb_arena_size_add(&total, a->ce_cache_bytes));
    total += TB_ARENA_ALIGN;
    a->buffer = malloc(total);
    if (!a->buffer)
        return TB_ERR_NO_MEMORY;
    a->bytes = total;
    tb_arena arena;
    TRY(tb_arena_init(&arena, a->buffer, total));
    const size_t nh = max_rows * m->hidden, nc = max_rows * m->out;
    TRY(carve(ctx, &arena, nh, &a->h1));
    TRY(carve(ctx, &arena, nh, &a->a1));
    TRY(carve(ctx, &arena, nh, &a->h2));
    TRY(carve(ctx, &arena, nh, &a->a2));
    TRY(carve(ctx, &arena, nh, &a->ga));
    TRY(carve(ctx, &arena, nh, &a->gb));
    TRY(carve(ctx, &arena, nc, &a->logits));
    TRY(carve(ctx, &arena, nc, &a->dlogits));
    TRY(tb_arena_alloc(ctx, &arena, a->ce_cache_bytes, &a->ce_cache));
    return TB_OK;
}

void ex_mlp_acts_free(ex_mlp_acts *a)
{
    free(a->buffer);
    memset(a, 0, sizeof *a);
}

tb_status ex_mlp_forward(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                         const int32_t *y, size_t rows, float *loss)
{
    if (rows > a->max_rows)
        return TB_ERR_BUFFER_TOO_SMALL;
    tb_tensor tx = tb_tensor_2d((float *)x, rows, m->in);
    tb_tensor h1 = tb_tensor_2d(a->h1, rows, m->hidden), a1 = tb_tensor_2d(a->a1, rows, m->hidden);
    tb_tensor h2 = tb_tensor_2d(a->h2, rows, m->hidden), a2 = tb_tensor_2d(a->a2, rows, m->hidden);
    tb_tensor lo = tb_tensor_2d(a->logits, rows, m->out);
    TRY(tb_linear_forward(ctx, &m->fc1, &tx, &h1));
    TRY(tb_gelu_forward(ctx, TB_GELU_TANH, &h1, &a1));
    TRY(tb_linear_forward(ctx, &m->fc2, &a1, &h2));
    TRY(tb_gelu_forward(ctx, TB_GELU_TANH, &h2, &a2));
    TRY(tb_linear_forward(ctx, &m->fc3, &a2, &lo));
    return tb_cross_entropy_forward(ctx, NULL, &lo, y, rows, loss, a->ce_cache,
                                    a->ce_cache_bytes);
}

tb_status ex_mlp_backward(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                          const int32_t *y, size_t rows, float dloss)
{
    tb_tensor tx = tb_tensor_2d((float *)x, rows, m->in);
    tb_tensor h1 = tb_tensor_2d(a->h1, rows, m->hidden), a1 = tb_tensor_2d(a->a1, rows, m->hidden);
    tb_tensor h2 = tb_tensor_2d(a->h2, rows, m->hidden), a2 = tb_tensor_2d(a->a2, rows, m->hidden);
    tb_tensor lo = tb_tensor_2d(a->logits, rows, m->out);
    tb_tensor dlo = tb_tensor_2d(a->dlogits, rows, m->out);
    tb_tensor ga = tb_tensor_2d(a->ga, rows, m->hidden), gb = tb_tensor_2d(a->gb, rows, m->hidden);
    TRY(tb_cross_entropy_backward(ctx, NULL, &lo, y, rows, dloss, a->ce_cache, a->ce_cache_bytes,
                                  &dlo));
    TRY(tb_linear_backward(ctx, &m->fc3, &a2, &dlo, &ga));
    TRY(tb_gelu_backward(ctx, TB_GELU_TANH, &h2, &ga, &ga));
    TRY(tb_linear_backward(ctx, &m->fc2, &a1, &ga, &gb));
    TRY(tb_gelu_backward(ctx, TB_GELU_TANH, &h1, &gb, &gb));
    return tb_linear_backward(ctx, &m->fc1, &tx, &gb, NULL);
}

tb_status ex_mlp_evaluate(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                          const int32_t *y, size_t n, float *loss, float *accuracy)
{
    double total = 0.0;
    size_t correct = 0;
    for (size_t r0 = 0; r0 < n; r0 += a->max_rows) {
        const size_t rows = n - r0 < a->max_rows ? n - r0 : a->max_rows;
        float l;
        TRY(ex_mlp_forward(ctx, m, a, x + r0 * m->in, y + r0, rows, &l));
        total += (double)l * (double)rows;
        for (size_t r = 0; r < rows; r++) {
            const float *row = a->logits + r * m->out;
            size_t best = 0;
            for (size_t c = 1; c < m->out; c++)
                if (row[c] > row[best])
                    best = c;
            correct += (int32_t)best == y[r0 + r];
        }
    }
    *loss = (float)(total / (double)n);
    *accuracy = (float)correct / (float)n;
    return TB_OK;
}
