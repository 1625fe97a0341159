/* BERT's pooler and classifier (bert_cls.h). */
#include "bert_cls.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_try.h"

#define fail tb_ctx_set_error

static tb_status layout(tb_ctx *ctx, tb_arena *ar, void *obj)
{
    bert_cls *h = obj;
    size_t BC, BK;
    if (!ex_mul_size(h->max_b, h->d, &BC) || !ex_mul_size(h->max_b, h->num_labels, &BK))
        return fail(ctx, TB_ERR_OVERFLOW, "bert_cls: %zu rows of width %zu overflow", h->max_b,
                    h->d);
    TRY(ex_take_f32(ctx, ar, BC, &h->first));
    TRY(ex_take_f32(ctx, ar, BC, &h->pooled));
    TRY(ex_take_f32(ctx, ar, BC, &h->dropped));
    TRY(ex_take_f32(ctx, ar, BK, &h->logits));
    TRY(ex_take_f32(ctx, ar, BK, &h->dlogits));
    TRY(ex_take_f32(ctx, ar, BC, &h->dpooled));
    TRY(ex_take_f32(ctx, ar, BC, &h->dfirst));
    return tb_arena_alloc(ctx, ar, h->ce_cache_bytes, &h->ce_cache);
}

tb_status bert_cls_init(tb_ctx *ctx, bert_cls *h, size_t d, size_t num_labels, size_t max_b,
                        tb_rng *rng)
{
    if (!h)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_cls: no struct");
    memset(h, 0, sizeof *h);
    if (!ctx || !rng)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_cls: ctx and rng must not be NULL");
    if (!d || !num_labels || !max_b)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "bert_cls: width %zu, %zu labels, %zu rows (each >= 1)", d, num_labels, max_b);
    h->d = d, h->num_labels = num_labels, h->max_b = max_b;
    tb_status s = tb_cross_entropy_cache_size(max_b, &h->ce_cache_bytes);
    if (s == TB_OK)
        s = tb_linear_init(ctx, &h->pooler, d, d, 1, rng);
    if (s == TB_OK)
        s = tb_linear_init(ctx, &h->classifier, d, num_labels, 1, rng);
    size_t bytes;
    if (s == TB_OK)
        s = ex_layout_alloc(ctx, layout, h, &h->buffer, &bytes);
    if (s != TB_OK)
        bert_cls_free(h);
    return s;
}

void bert_cls_free(bert_cls *h)
{
    if (!h)
        return;
    tb_linear_free(&h->pooler);
    tb_linear_free(&h->classifier);
    free(h->buffer);
    memset(h, 0, sizeof *h);
}

tb_status bert_cls_params(tb_ctx *ctx, bert_cls *h, const char *model_prefix,
                          tb_param_list *list)
{
    if (!h || !list)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_cls: no head or list");
    char name[TB_PARAM_NAME_MAX];
    if (snprintf(name, sizeof name, "%spooler.dense", model_prefix ? model_prefix : "") >=
        (int)sizeof name)
        return fail(ctx, TB_ERR_INVALID_ARG, "bert_cls: prefix too long");
    TRY(tb_linear_params(ctx, &h->pooler, name, list));
    return tb_linear_params(ctx, &h->classifier, "classifier", list);
}

void bert_cls_freeze_pooler(bert_cls *h)
{
    if (h)
        tb_linear_freeze(&h->pooler);
}

float bert_cls_dropout_p(float classifier_dropout, float hidden_dropout_prob)
{
    return classifier_dropout >= 0.0f ? classifier_dropout : hidden_dropout_prob;
}

tb_status bert_cls_set_dropout(tb_ctx *ctx, bert_cls *h, float p)
{
    if (!h)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_cls: no head");
    if (!(p >= 0.0f && p < 1.0f))
        return fail(ctx, TB_ERR_INVALID_ARG, "bert_cls: dropout %g outside [0, 1)", (double)p);
    h->dropout = p;
    return TB_OK;
}

tb_status bert_cls_forward(tb_ctx *ctx, bert_cls *h, const float *out, size_t B, size_t T,
                           const int32_t *labels, float *loss)
{
    return bert_cls_forward_mode(ctx, h, TB_MODE_INFERENCE, NULL, out, B, T, labels, loss);
}

tb_status bert_cls_forward_mode(tb_ctx *ctx, bert_cls *h, tb_mode mode, tb_rng *rng,
                                const float *out, size_t B, size_t T, const int32_t *labels,
                                float *loss)
{
    if (!h || !h->buffer || !out)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_cls: forward needs the head and the output");
    if (labels && !loss)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_cls: labels given but nowhere to put the loss");
    const int drop = mode == TB_MODE_TRAINING && h->dropout > 0.0f;
    if (drop && !rng)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_cls: training with dropout %g needs an rng",
                    (double)h->dropout);
    if (!B || !T || B > h->max_b)
        return fail(ctx, TB_ERR_SHAPE, "bert_cls: %zu rows of %zu positions; the head holds %zu",
                    B, T, h->max_b);
    const size_t C = h->d, K = h->num_labels;
    h->b = 0, h->has_loss = 0, h->labels = NULL;
    for (size_t b = 0; b < B; b++)
        memcpy(h->first + b * C, out + b * T * C, C * sizeof(float));
    tb_tensor x = tb_tensor_2d(h->first, B, C), y = tb_tensor_2d(h->pooled, B, C);
    TRY(tb_linear_forward(ctx, &h->pooler, &x, &y));
    for (size_t i = 0; i < B * C; i++)
        h->pooled[i] = tanhf(h->pooled[i]);
    tb_tensor yd = tb_tensor_2d(h->dropped, B, C);
    TRY(tb_dropout_forward(ctx, drop ? TB_MODE_TRAINING : TB_MODE_INFERENCE, h->dropout,
                           drop ? rng : NULL, &y, &yd, &h->drop));
    tb_tensor z = tb_tensor_2d(h->logits, B, K);
    TRY(tb_linear_forward(ctx, &h->classifier, &yd, &z));
    if (labels) {
        const tb_cross_entropy_config ce = tb_cross_entropy_default_config();
        TRY(tb_cross_entropy_forward(ctx, &ce, &z, labels, B, loss, h->ce_cache,
                                     h->ce_cache_bytes));
    }
    h->b = B, h->t = T, h->has_loss = labels != NULL, h->labels = labels;
    return TB_OK;
}

tb_status bert_cls_backward(tb_ctx *ctx, bert_cls *h, float dloss, float *dout)
{
    if (!h || !dout)
        return fail(ctx, TB_ERR_NULL_ARG, "bert_cls: backward needs the head and dout");
    if (!h->has_loss)
        return fail(ctx, TB_ERR_STATE, "bert_cls: backward after a forward without labels");
    const size_t B = h->b, T = h->t, C = h->d, K = h->num_labels;
    const tb_cross_entropy_config ce = tb_cross_entropy_default_config();
    tb_tensor z = tb_tensor_2d(h->logits, B, K), dz = tb_tensor_2d(h->dlogits, B, K);
    TRY(tb_cross_entropy_backward(ctx, &ce, &z, h->labels, B, dloss, h->ce_cache,
                                  h->ce_cache_bytes, &dz));
    tb_tensor yd = tb_tensor_2d(h->dropped, B, C), dy = tb_tensor_2d(h->dpooled, B, C);
    TRY(tb_linear_backward(ctx, &h->classifier, &yd, &dz, &dy));
    TRY(tb_dropout_backward(ctx, &dy, &h->drop, &dy)); /* in place */
    for (size_t i = 0; i < B * C; i++) /* tanh' = 1 - tanh^2 */
        h->dpooled[i] *= 1.0f - h->pooled[i] * h->pooled[i];
    tb_tensor x = tb_tensor_2d(h->first, B, C), dx = tb_tensor_2d(h->dfirst, B, C);
    TRY(tb_linear_backward(ctx, &h->pooler, &x, &dy, &dx));
    memset(dout, 0, B * T * C * sizeof(float));
    for (size_t b = 0; b < B; b++)
        memcpy(dout + b * T * C, h->dfirst + b * C, C * sizeof(float));
    return TB_OK;
}
