/* The examples' classifier MLP (ex_mlp.h). */
#include "ex_mlp.h"

#include "ex_arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ex_try.h"

tb_status ex_mlp_init(tb_ctx *ctx, ex_mlp *m, const ex_mlp_config *cfg, tb_rng *rng)
{
    memset(m, 0, sizeof *m);
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f))
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "mlp: dropout %g is outside [0, 1)",
                                (double)cfg->dropout);
    m->cfg = *cfg;
    TRY(tb_linear_init(ctx, &m->fc1, cfg->in, cfg->hidden, 1, rng));
    TRY(tb_linear_init(ctx, &m->fc2, cfg->hidden, cfg->hidden, 1, rng));
    TRY(tb_linear_init(ctx, &m->fc3, cfg->hidden, cfg->out, 1, rng));
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

typedef struct layout_arg {
    ex_mlp_acts *a;
    const ex_mlp_config *cfg;
} layout_arg;

static tb_status acts_layout(tb_ctx *ctx, tb_arena *ar, void *arg)
{
    ex_mlp_acts *a = ((layout_arg *)arg)->a;
    const ex_mlp_config *c = ((layout_arg *)arg)->cfg;
    size_t nh, nc;
    if (!ex_mul_size(a->max_rows, c->hidden, &nh) || !ex_mul_size(a->max_rows, c->out, &nc))
        return tb_ctx_set_error(ctx, TB_ERR_OVERFLOW, "mlp: activations for %zu rows overflow",
                                a->max_rows);
    float **hidden[] = {&a->h1, &a->a1, &a->h2, &a->a2, &a->ga, &a->gb};
    for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++)
        TRY(ex_take_f32(ctx, ar, nh, hidden[i]));
    if (c->dropout > 0.0f)
        TRY(ex_take_f32(ctx, ar, nh, &a->d1));
    else /* dropout is the identity: in place */
        a->d1 = a->a1;
    TRY(ex_take_f32(ctx, ar, nc, &a->logits));
    TRY(ex_take_f32(ctx, ar, nc, &a->dlogits));
    return tb_arena_alloc(ctx, ar, a->ce_cache_bytes, &a->ce_cache);
}

tb_status ex_mlp_acts_init(tb_ctx *ctx, ex_mlp_acts *a, const ex_mlp *m, size_t max_rows)
{
    memset(a, 0, sizeof *a);
    a->max_rows = max_rows;
    TRY(tb_cross_entropy_cache_size(max_rows, &a->ce_cache_bytes));
    layout_arg arg = {a, &m->cfg};
    return ex_layout_alloc(ctx, acts_layout, &arg, &a->buffer, &a->bytes);
}

void ex_mlp_acts_free(ex_mlp_acts *a)
{
    free(a->buffer);
    memset(a, 0, sizeof *a);
}

tb_status ex_mlp_forward(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, tb_mode mode, tb_rng *rng,
                         const float *x, const int32_t *y, size_t rows, float *loss)
{
    const ex_mlp_config *c = &m->cfg;
    if (rows > a->max_rows)
        return tb_ctx_set_error(ctx, TB_ERR_BUFFER_TOO_SMALL,
                                "mlp: %zu rows; the activations hold %zu", rows, a->max_rows);
    tb_tensor tx = tb_tensor_2d((float *)(uintptr_t)x, rows, c->in);
    tb_tensor h1 = tb_tensor_2d(a->h1, rows, c->hidden), a1 = tb_tensor_2d(a->a1, rows, c->hidden);
    tb_tensor d1 = tb_tensor_2d(a->d1, rows, c->hidden);
    tb_tensor h2 = tb_tensor_2d(a->h2, rows, c->hidden), a2 = tb_tensor_2d(a->a2, rows, c->hidden);
    tb_tensor lo = tb_tensor_2d(a->logits, rows, c->out);
    TRY(tb_linear_forward(ctx, &m->fc1, &tx, &h1));
    TRY(tb_gelu_forward(ctx, c->gelu, &h1, &a1));
    TRY(tb_dropout_forward(ctx, mode, c->dropout, rng, &a1, &d1, &a->drop));
    TRY(tb_linear_forward(ctx, &m->fc2, &d1, &h2));
    TRY(tb_gelu_forward(ctx, c->gelu, &h2, &a2));
    TRY(tb_linear_forward(ctx, &m->fc3, &a2, &lo));
    return tb_cross_entropy_forward(ctx, NULL, &lo, y, rows, loss, a->ce_cache,
                                    a->ce_cache_bytes);
}

/* GELU and dropout may write dx over dy, so two scratch buffers carry the
 * gradient through the hidden layers. */
tb_status ex_mlp_backward(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                          const int32_t *y, size_t rows, float dloss)
{
    const ex_mlp_config *c = &m->cfg;
    tb_tensor tx = tb_tensor_2d((float *)(uintptr_t)x, rows, c->in);
    tb_tensor h1 = tb_tensor_2d(a->h1, rows, c->hidden), d1 = tb_tensor_2d(a->d1, rows, c->hidden);
    tb_tensor h2 = tb_tensor_2d(a->h2, rows, c->hidden), a2 = tb_tensor_2d(a->a2, rows, c->hidden);
    tb_tensor lo = tb_tensor_2d(a->logits, rows, c->out);
    tb_tensor dlo = tb_tensor_2d(a->dlogits, rows, c->out);
    tb_tensor ga = tb_tensor_2d(a->ga, rows, c->hidden), gb = tb_tensor_2d(a->gb, rows, c->hidden);
    TRY(tb_cross_entropy_backward(ctx, NULL, &lo, y, rows, dloss, a->ce_cache, a->ce_cache_bytes,
                                  &dlo));
    TRY(tb_linear_backward(ctx, &m->fc3, &a2, &dlo, &ga));   /* ga = dL/da2 */
    TRY(tb_gelu_backward(ctx, c->gelu, &h2, &ga, &ga));      /* ga = dL/dh2 */
    TRY(tb_linear_backward(ctx, &m->fc2, &d1, &ga, &gb));    /* gb = dL/dd1 */
    TRY(tb_dropout_backward(ctx, &gb, &a->drop, &gb));       /* gb = dL/da1 */
    TRY(tb_gelu_backward(ctx, c->gelu, &h1, &gb, &gb));      /* gb = dL/dh1 */
    return tb_linear_backward(ctx, &m->fc1, &tx, &gb, NULL); /* no dL/dx needed */
}

tb_status ex_mlp_evaluate(tb_ctx *ctx, ex_mlp *m, ex_mlp_acts *a, const float *x,
                          const int32_t *y, size_t n, float *loss, float *accuracy)
{
    double total = 0.0;
    size_t correct = 0;
    for (size_t r0 = 0; r0 < n; r0 += a->max_rows) {
        const size_t rows = n - r0 < a->max_rows ? n - r0 : a->max_rows;
        float l;
        TRY(ex_mlp_forward(ctx, m, a, TB_MODE_INFERENCE, NULL, x + r0 * m->cfg.in, y + r0, rows,
                           &l));
        total += (double)l * (double)rows;
        for (size_t r = 0; r < rows; r++) {
            const float *row = a->logits + r * m->cfg.out;
            size_t best = 0;
            for (size_t c = 1; c < m->cfg.out; c++)
                if (row[c] > row[best])
                    best = c;
            correct += (int32_t)best == y[r0 + r];
        }
    }
    *loss = (float)(total / (double)n);
    *accuracy = (float)correct / (float)n;
    return TB_OK;
}
