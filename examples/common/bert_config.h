/*
 * A BERT model's sizes as transformers' BertConfig names them, and the
 * shared stack's configuration they mean: the one place a BERT-style
 * encoder is described, for every example and test that builds one
 * (the embed tool, MLM pre-training, classification).
 *
 * BERT, as BertModel computes it: post-norm layers, LayerNorm after the
 * embeddings (eps layer_norm_eps), separate query/key/value projections in
 * nn.Linear's (out, in) layout, exact (erf) GELU, bidirectional attention
 * with key-padding masks, token-type embeddings, and [PAD]'s embedding row
 * kept out of the gradient (nn.Embedding's padding_idx).
 */
#ifndef EX_BERT_CONFIG_H
#define EX_BERT_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "tfm.h"

typedef struct bert_config {
    size_t vocab_size;              /* 30522 for bert-base-uncased and MiniLM */
    size_t hidden_size;             /* C */
    size_t num_hidden_layers;
    size_t num_attention_heads;
    size_t intermediate_size;       /* F */
    size_t max_position_embeddings; /* the longest sequence */
    size_t type_vocab_size;         /* 2 */
    float layer_norm_eps;           /* 1e-12 */
    float hidden_dropout_prob;      /* 0.1 */
    float attention_probs_dropout_prob; /* 0.1 */
    float initializer_range;        /* 0.02: N(0, 0.02) weights, as BertPreTrainedModel */
    int32_t pad_token_id;           /* 0 */
} bert_config;

/* bert-base-uncased's sizes (12 layers, width 768, 12 heads, F 3072, 512
 * positions, vocabulary 30522). */
bert_config bert_config_base(void);

/* The shared stack's configuration for cfg: an encoder as described above,
 * with BERT's parameter names (tfm_names_bert; prefixes such as "bert."
 * are the caller's, at tfm_params()). Check it with tfm_config_check(). */
tfm_config bert_tfm_config(const bert_config *cfg);

#endif /* EX_BERT_CONFIG_H */
