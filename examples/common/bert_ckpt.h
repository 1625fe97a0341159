/*
 * A bert_config in a checkpoint's metadata, so that a file written by
 * bert_pretrain (tb_checkpoint_save() with these pairs as `extra`) says
 * which encoder it holds and any program can rebuild it before loading the
 * tensors by name:
 *
 *     bert.vocab_size, bert.hidden_size, bert.num_hidden_layers,
 *     bert.num_attention_heads, bert.intermediate_size,
 *     bert.max_position_embeddings, bert.type_vocab_size,
 *     bert.pad_token_id                                  decimal integers
 *     bert.layer_norm_eps, bert.hidden_dropout_prob,
 *     bert.attention_probs_dropout_prob, bert.initializer_range
 *                                                        "%.9g": a float read back exactly
 *
 * (BertConfig's field names behind "bert."). Reading is strict: every key
 * present, digits only for the integers, a decimal number for the reals,
 * and the result must pass tfm_config_check() of bert_tfm_config().
 */
#ifndef EX_BERT_CKPT_H
#define EX_BERT_CKPT_H

#include "bert_config.h"
#include "tblocks.h"

#define BERT_CONFIG_N_META 12

/* Where the values' text lives; must outlive the tb_st_meta array. */
typedef struct bert_config_text {
    char value[BERT_CONFIG_N_META][32];
} bert_config_text;

/* cfg as BERT_CONFIG_N_META metadata pairs (keys above) in meta. */
void bert_config_to_meta(const bert_config *cfg, bert_config_text *text,
                         tb_st_meta meta[BERT_CONFIG_N_META]);

/* The configuration in f's metadata, checked; *cfg written only on
 * success. TB_ERR_FORMAT naming the key for a missing or malformed value
 * or a configuration out of range. */
tb_status bert_config_from_meta(tb_ctx *ctx, const tb_st_file *f, bert_config *cfg);

#endif /* EX_BERT_CKPT_H */
