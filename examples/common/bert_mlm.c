/* BERT's masked-LM head (bert_mlm.h). */
#include "bert_mlm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_try.h"

#define fail tb_ctx_set_error

static tb_status layout(tb_ctx *ctx, tb_arena *ar, void *obj)
{
    bert_mlm *h = obj;
    size_t RC, RV;
    if (!ex_mul_size(h->max_rows, h->d, &RC) || !ex_mul_size(h->max_rows, h->vocab, &RV))
        return fail(ctx, TB_ERR_OVERFLOW, "bert_mlm: %zu rows of %zu x %zu overflow",
                    h->max_rows, h->d, h->vocab);
    TRY(ex_take(ctx, ar, h->max_rows, sizeof(size_t), (void **)&h->rows));
    TRY(ex_take(ctx, ar, h->max_rows, sizeof(int32_t), (void **)&h->targets));
    float **bufs[] = {&h->x, &h->f, &h->g, &h->hn, &h->dh, &h->dg, &h->dx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        TRY(ex_take_f32(ctx, ar, RC, bufs[i]));
    TRY(ex_take_f32(ctx, ar, RV, &h->logits));
    TRY(ex_take_f32(ctx, ar, RV, &h->dlogits));
    TRY(tb_arena_alloc(ctx, ar, h->ln_cache_bytes, &h->ln_cache));
    return tb_arena_alloc(ctx, ar, h->ce_cache_bytes, &h->ce_cache);
}

tb_status bert_mlm_init(tb_ctx *ctx, bert_mlm *h, const tfm *m, size_t max_rows, float eps,
                        float init_std, tb_rng *rng)
{
    if (!h)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_mlm: no struct");
    memset(h, 0, sizeof *h);
    if (!ctx || !m || !rng)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_mlm: ctx, model and rng must not be NULL");
    if (!max_rows || !m->wte.weight.value)
        return fail(ctx, TB_ERR_INVALID_ARG, "bert_mlm: %zu rows, or a model without wte",
                    max_rows);
    if (!(init_std >= 0.0f))
        return fail(ctx, TB_ERR_INVALID_ARG, "bert_mlm: init_std %g", (double)init_std);
    h->d = m->cfg.d_model, h->vocab = m->cfg.vocab_size, h->max_rows = max_rows, h->eps = eps;
    h->wte = &m->wte.weight;
    tb_status s = tb_layernorm_cache_size(max_rows, &h->ln_cache_bytes);
    if (s == TB_OK)
        s = tb_cross_entropy_cache_size(max_rows, &h->ce_cache_bytes);
    if (s == TB_OK)
        s = tb_linear_init(ctx, &h->dense, h->d, h->d, 1, rng);
    if (s == TB_OK && init_std > 0.0f) {
        s = tb_rng_fill_normal(ctx, rng, h->dense.weight.value, h->dense.weight.numel, 0.0f,
                               init_std);
        memset(h->dense.bias.value, 0, h->d * sizeof(float));
    }
    if (s == TB_OK)
        s = tb_layernorm_init(ctx, &h->ln, h->d, eps, TB_NORM_SCALE | TB_NORM_SHIFT);
    if (s == TB_OK)
        s = tb_param_init(ctx, &h->bias, 1, &h->vocab, 0); /* zero, as BertLMPredictionHead */
    if (s == TB_OK)
        s = tb_linear_view(ctx, &h->decoder, h->wte, &h->bias, TB_LINEAR_OUT_IN);
    size_t bytes;
    if (s == TB_OK)
        s = ex_layout_alloc(ctx, layout, h, &h->buffer, &bytes);
    if (s != TB_OK)
        bert_mlm_free(h);
    return s;
}

void bert_mlm_free(bert_mlm *h)
{
    if (!h)
        return;
    tb_linear_free(&h->dense);
    tb_layernorm_free(&h->ln);
    tb_linear_free(&h->decoder);
    tb_param_free(&h->bias);
    free(h->buffer);
    memset(h, 0, sizeof *h);
}

tb_status bert_mlm_params(tb_ctx *ctx, bert_mlm *h, const char *prefix, tb_param_list *list)
{
    if (!h || !list)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_mlm: no head or list");
    char name[TB_PARAM_NAME_MAX];
    const char *p = prefix ? prefix : "";
    if (snprintf(name, sizeof name, "%scls.predictions.transform.dense", p) >= (int)sizeof name)
        return fail(ctx, TB_ERR_INVALID_ARG, "bert_mlm: prefix too long");
    TRY(tb_linear_params(ctx, &h->dense, name, list));
    snprintf(name, sizeof name, "%scls.predictions.transform.LayerNorm", p);
    TRY(tb_layernorm_params(ctx, &h->ln, name, list));
    snprintf(name, sizeof name, "%scls.predictions", p);
    return tb_param_list_add(ctx, list, name, "bias", &h->bias);
}

tb_status bert_mlm_forward(tb_ctx *ctx, bert_mlm *h, const float *out, size_t B, size_t T,
                           const int32_t *labels, int all_logits, float *loss)
{
    if (!h || !h->buffer || !out)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_mlm: forward needs the head and the output");
    size_t R;
    if (!B || !T || !ex_mul_size(B, T, &R) || R > h->max_rows)
        return fail(ctx, TB_ERR_SHAPE, "bert_mlm: %zu rows of %zu positions; the head holds %zu",
                    B, T, h->max_rows);
    const size_t C = h->d, V = h->vocab;
    h->m = 0, h->has_loss = 0;
    if (labels)
        for (size_t i = 0; i < R; i++)
            if (labels[i] != TB_IGNORE_INDEX && (labels[i] < 0 || (size_t)labels[i] >= V))
                return fail(ctx, TB_ERR_INVALID_ARG,
                            "bert_mlm: label %ld at position %zu is neither -100 nor in [0, %zu)",
                            (long)labels[i], i, V);
    size_t M = 0;
    for (size_t i = 0; i < R; i++) {
        const int32_t y = labels ? labels[i] : TB_IGNORE_INDEX;
        if (all_logits || !labels || y != TB_IGNORE_INDEX) {
            h->rows[M] = i, h->targets[M] = y;
            M++;
        }
    }
    if (loss)
        *loss = 0.0f;
    h->b = B, h->t = T;
    if (M == 0) { /* nothing labelled: no loss, no gradient (as tb_cross_entropy) */
        h->has_loss = labels != NULL;
        return TB_OK;
    }
    for (size_t r = 0; r < M; r++)
        memcpy(h->x + r * C, out + h->rows[r] * C, C * sizeof(float));
    tb_tensor x = tb_tensor_2d(h->x, M, C), f = tb_tensor_2d(h->f, M, C);
    tb_tensor g = tb_tensor_2d(h->g, M, C), hn = tb_tensor_2d(h->hn, M, C);
    tb_tensor lo = tb_tensor_2d(h->logits, M, V);
    TRY(tb_linear_forward(ctx, &h->dense, &x, &f));
    TRY(tb_gelu_forward(ctx, TB_GELU_EXACT, &f, &g));
    TRY(tb_layernorm_forward(ctx, &h->ln, &g, &hn, h->ln_cache, h->ln_cache_bytes));
    TRY(tb_linear_forward(ctx, &h->decoder, &hn, &lo));
    if (labels) {
        float l = 0.0f;
        TRY(tb_cross_entropy_forward(ctx, NULL, &lo, h->targets, M, &l, h->ce_cache,
                                     h->ce_cache_bytes));
        if (loss)
            *loss = l;
    }
    h->m = M, h->has_loss = labels != NULL;
    return TB_OK;
}

tb_status bert_mlm_backward(tb_ctx *ctx, bert_mlm *h, float dloss, float *dout)
{
    if (!h || !dout)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_mlm: backward needs the head and dout");
    if (!h->has_loss)
        return fail(ctx, TB_ERR_STATE, "bert_mlm: backward after a forward without labels");
    const size_t M = h->m, C = h->d, V = h->vocab, R = h->b * h->t;
    memset(dout, 0, R * C * sizeof(float));
    if (M == 0)
        return TB_OK;
    tb_tensor lo = tb_tensor_2d(h->logits, M, V), dlo = tb_tensor_2d(h->dlogits, M, V);
    TRY(tb_cross_entropy_backward(ctx, NULL, &lo, h->targets, M, dloss, h->ce_cache,
                                  h->ce_cache_bytes, &dlo));
    /* The decoder is a view of wte: one parameter, trained exactly when wte
     * is (the view holds copies of the flag and the gradient pointer taken
     * when it was made; a freeze since then cleared wte's). */
    h->decoder.weight.trainable = h->wte->trainable;
    h->decoder.weight.grad = h->wte->grad;
    h->decoder.bias.trainable = h->bias.trainable;
    h->decoder.bias.grad = h->bias.grad;
    tb_tensor hn = tb_tensor_2d(h->hn, M, C), dh = tb_tensor_2d(h->dh, M, C);
    TRY(tb_linear_backward(ctx, &h->decoder, &hn, &dlo, &dh)); /* into wte's gradient */
    tb_tensor g = tb_tensor_2d(h->g, M, C), dg = tb_tensor_2d(h->dg, M, C);
    TRY(tb_layernorm_backward(ctx, &h->ln, &g, &dh, h->ln_cache, h->ln_cache_bytes, &dg));
    tb_tensor f = tb_tensor_2d(h->f, M, C);
    TRY(tb_gelu_backward(ctx, TB_GELU_EXACT, &f, &dg, &dg)); /* in place */
    tb_tensor x = tb_tensor_2d(h->x, M, C), dx = tb_tensor_2d(h->dx, M, C);
    TRY(tb_linear_backward(ctx, &h->dense, &x, &dg, &dx));
    for (size_t r = 0; r < M; r++)
        memcpy(dout + h->rows[r] * C, h->dx + r * C, C * sizeof(float));
    return TB_OK;
}

size_t bert_mlm_correct(const bert_mlm *h)
{
    size_t n = 0;
    if (!h)
        return 0;
    for (size_t r = 0; r < h->m; r++) {
        if (h->targets[r] == TB_IGNORE_INDEX)
            continue;
        const float *z = h->logits + r * h->vocab;
        size_t best = 0;
        for (size_t v = 1; v < h->vocab; v++)
            if (z[v] > z[best])
                best = v;
        n += best == (size_t)h->targets[r];
    }
    return n;
}
