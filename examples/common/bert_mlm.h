/*
 * BERT's masked-LM head on the shared stack's output, as transformers'
 * BertForMaskedLM puts `cls.predictions` (BertLMPredictionHead) on BertModel:
 *
 *     h (M, C)      = LayerNorm(gelu(transform.dense(out[rows])))   exact (erf) GELU,
 *                                                                    eps layer_norm_eps
 *     logits (M, V) = h wte^T + bias                                decoder, TIED to the
 *                                                                    stack's word embeddings
 *     loss          = mean cross-entropy over the rows whose label != -100
 *
 * The decoder's weight is the stack's wte (V, C) itself, as
 * tie_word_embeddings makes it in transformers: one parameter, listed once
 * (as bert.embeddings.word_embeddings.weight), and backward adds the
 * decoder's weight gradient into wte's gradient. Only the bias (V) is the
 * head's own.
 *
 * Rows. BERT's loss only reads the positions whose label is not -100 (the
 * ~15% that were selected for masking), so by default the head gathers
 * those rows of out (B, T, C) and runs the transform and the (M, C) x (C, V)
 * vocabulary projection on M rows only: the projection is most of the
 * head's cost (V = 30522 against C = 384 for MiniLM), and this divides it
 * by about 7 with an identical loss and identical gradients (every other
 * row's logits get no gradient anyway). With all_logits the head runs on
 * every position (M = B*T, in order), so h->logits holds the logits of all
 * positions (B, T, V) as BertForMaskedLM returns them; the loss and the
 * gradients are the same either way (to rounding: the matrix products see
 * other row counts).
 *
 * Names as in BertForMaskedLM's state dict and what save_pretrained writes
 * (transformers 5.24.0): cls.predictions.transform.dense.{weight,bias},
 * cls.predictions.transform.LayerNorm.{weight,bias}, cls.predictions.bias.
 * The module also answers to cls.predictions.decoder.bias (the same tensor)
 * and cls.predictions.decoder.weight (the tied wte), but save_pretrained
 * writes neither, so the head lists neither. The stack goes under "bert.";
 * BertForMaskedLM has no pooler (add_pooling_layer=False).
 *
 * Backward writes dout (B, T, C), the gradient w.r.t. the stack's output
 * (zero at every row the head did not run on) and ADDS into the gradients
 * of the transform, the LayerNorm, the bias and wte.
 */
#ifndef EX_BERT_MLM_H
#define EX_BERT_MLM_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"
#include "tfm.h"

typedef struct bert_mlm {
    size_t d, vocab, max_rows;
    float eps;
    tb_linear dense;      /* transform.dense, C -> C, nn.Linear's (out, in) */
    tb_layernorm ln;      /* transform.LayerNorm */
    tb_param bias;        /* cls.predictions.bias (V) */
    tb_linear decoder;    /* a view of the tied wte (V, C) and bias; see bert_mlm_backward() */
    const tb_param *wte;  /* the stack's word embeddings (not owned) */
    size_t *rows;         /* (max_rows) indices into the B*T positions of the last forward */
    int32_t *targets;     /* (max_rows) their labels */
    float *x;             /* (max_rows, C) the gathered rows of out */
    float *f;             /* (max_rows, C) dense(x) */
    float *g;             /* (max_rows, C) gelu(f) */
    float *hn;            /* (max_rows, C) LayerNorm(g) */
    float *logits;        /* (max_rows, V) */
    float *dlogits;       /* (max_rows, V) */
    float *dh, *dg, *dx;  /* (max_rows, C) */
    void *ln_cache, *ce_cache;
    size_t ln_cache_bytes, ce_cache_bytes;
    size_t m, b, t;       /* the last forward's rows, batch and positions */
    int has_loss;
    void *buffer;
} bert_mlm;

/* A head for width d over the stack m's word embeddings (vocab = its rows),
 * with buffers for up to max_rows rows (B*T of the largest batch: the
 * head never runs on more). dense from rng with init_std (> 0: N(0,
 * init_std) weights and zero bias, as BertPreTrainedModel; 0: PyTorch's
 * default), LayerNorm 1 and 0, bias 0. eps: layer_norm_eps. */
tb_status bert_mlm_init(tb_ctx *ctx, bert_mlm *h, const tfm *m, size_t max_rows, float eps,
                        float init_std, tb_rng *rng);
void bert_mlm_free(bert_mlm *h);

/* Append the head's own parameters (the tied decoder weight is wte's, not
 * listed again) under BertForMaskedLM's names, with prefix (NULL as "";
 * the top level of BertForMaskedLM: ""). */
tb_status bert_mlm_params(tb_ctx *ctx, bert_mlm *h, const char *prefix, tb_param_list *list);

/* From out (B, T, C) and labels (B, T) (a token id in [0, V) to predict,
 * or -100): h->logits (M, V) for the M rows the head runs on (labelled
 * rows in position order, or every row with all_logits; h->rows lists
 * them), *loss the mean cross-entropy over the labelled rows (0 when no
 * row is labelled; loss may be NULL). labels NULL: all_logits is implied
 * and there is no loss (no backward). */
tb_status bert_mlm_forward(tb_ctx *ctx, bert_mlm *h, const float *out, size_t B, size_t T,
                           const int32_t *labels, int all_logits, float *loss);

/* Backward of the last forward with labels for dL/dloss = dloss: dout
 * (B, T, C) written (zero at rows the head did not run on), gradients
 * added to dense, LayerNorm, bias and the tied wte (when wte is
 * trainable: the decoder trains exactly when wte does). */
tb_status bert_mlm_backward(tb_ctx *ctx, bert_mlm *h, float dloss, float *dout);

/* Of the last forward's labelled rows, how many have their label as the
 * arg-max of the logits (first maximum on ties). */
size_t bert_mlm_correct(const bert_mlm *h);

#endif /* EX_BERT_MLM_H */
