/*
 * BERT's sequence-classification head on the shared stack's output, as
 * transformers' BertForSequenceClassification puts it on BertModel:
 *
 *     pooled (B, C) = tanh(pooler.dense(out[:, 0]))     BertPooler: position 0 only
 *     logits (B, K) = classifier(pooled)
 *     loss          = mean cross-entropy over the B rows' labels (-100 ignored)
 *
 * K = num_labels; single-label classification only (transformers' other
 * problem types, regression and multi-label, are not here).
 *
 * Dropout: BertForSequenceClassification applies nn.Dropout(p) to the pooled
 * output before the classifier, p = classifier_dropout, or
 * hidden_dropout_prob when classifier_dropout is None (bert_cls_dropout_p()).
 * Here p is h->dropout (0 after init; bert_cls_set_dropout()), applied by
 * bert_cls_forward_mode() in TB_MODE_TRAINING with the library's dropout
 * block (inverted dropout, mask drawn from the caller's tb_rng, the same
 * for every thread count). bert_cls_forward() is the inference form (no
 * dropout), as every caller before dropout existed used it.
 *
 * Names as in BertForSequenceClassification's state dict:
 * <model_prefix>pooler.dense.{weight,bias} (the pooler belongs to BertModel,
 * "bert.") and classifier.{weight,bias} (top level). Both Linears are
 * nn.Linear's (out, in).
 *
 * Under PEFT's prompt learning for SEQ_CLS the pooler is frozen with the
 * model and the classifier trains (PEFT adds "classifier" to
 * modules_to_save): bert_cls_freeze_pooler().
 *
 * Backward writes dout (B, T, C), the gradient w.r.t. the stack's output:
 * zero everywhere but position 0 of every row. It ADDS into the gradients
 * of the trainable Linears.
 */
#ifndef EX_BERT_CLS_H
#define EX_BERT_CLS_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

typedef struct bert_cls {
    size_t d, num_labels, max_b;
    tb_linear pooler;     /* C -> C */
    tb_linear classifier; /* C -> K */
    float *first;         /* (max_b, C) out[:, 0] */
    float *pooled;        /* (max_b, C) tanh(pooler(first)) */
    float *dropped;       /* (max_b, C) dropout(pooled), the classifier's input */
    float dropout;        /* p of the dropout on pooled (training only); 0 after init */
    tb_dropout_cache drop;
    float *logits;        /* (max_b, K) */
    float *dlogits;       /* (max_b, K) */
    float *dpooled;       /* (max_b, C), also dL/d pooler's pre-activation */
    float *dfirst;        /* (max_b, C) */
    void *ce_cache;
    size_t ce_cache_bytes;
    size_t b, t;          /* the last forward's rows and positions */
    int has_loss;
    const int32_t *labels; /* the last forward's, not owned */
    void *buffer;
} bert_cls;

/* Both Linears initialised from rng (PyTorch's default), buffers for up to
 * max_b rows. */
tb_status bert_cls_init(tb_ctx *ctx, bert_cls *h, size_t d, size_t num_labels, size_t max_b,
                        tb_rng *rng);
void bert_cls_free(bert_cls *h);

/* Append the four parameters under BertForSequenceClassification's names
 * (model_prefix: "bert." for a checkpoint of that class; NULL as ""). */
tb_status bert_cls_params(tb_ctx *ctx, bert_cls *h, const char *model_prefix,
                          tb_param_list *list);

/* The pooler as PEFT leaves it under prompt learning: frozen
 * (tb_linear_freeze()); the classifier stays trainable. */
void bert_cls_freeze_pooler(bert_cls *h);

/* BertForSequenceClassification's p: classifier_dropout, or
 * hidden_dropout_prob when classifier_dropout is None (pass a negative
 * value or NaN for None). */
float bert_cls_dropout_p(float classifier_dropout, float hidden_dropout_prob);

/* Set the dropout probability on the pooled output, in [0, 1)
 * (TB_ERR_INVALID_ARG otherwise). */
tb_status bert_cls_set_dropout(tb_ctx *ctx, bert_cls *h, float p);

/* The inference forward: bert_cls_forward_mode() in TB_MODE_INFERENCE.
 * h->logits (B, K) from out (B, T, C); with labels (B) (class ids or -100;
 * NULL: no loss) *loss receives the mean cross-entropy. labels must stay
 * valid until bert_cls_backward(). */
tb_status bert_cls_forward(tb_ctx *ctx, bert_cls *h, const float *out, size_t B, size_t T,
                           const int32_t *labels, float *loss);

/* The forward in a mode: in TB_MODE_TRAINING with h->dropout > 0 the
 * pooled output (B, C) goes through dropout drawn from rng (advanced by
 * B*C; rng may be NULL otherwise); the rest as bert_cls_forward(). */
tb_status bert_cls_forward_mode(tb_ctx *ctx, bert_cls *h, tb_mode mode, tb_rng *rng,
                                const float *out, size_t B, size_t T, const int32_t *labels,
                                float *loss);

/* Backward of the last forward with labels for dL/dloss = dloss: dout
 * (B, T, C), the last forward's shape, written (position 0 of each row:
 * the pooler's input gradient; every other position 0), the trainable
 * Linears' gradients added. */
tb_status bert_cls_backward(tb_ctx *ctx, bert_cls *h, float dloss, float *dout);

#endif /* EX_BERT_CLS_H */
