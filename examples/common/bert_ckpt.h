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

/* A pre-trained encoder from a checkpoint with a bert_config in its
 * metadata (bert_pretrain's, or any file so written): the configuration
 * read and checked, the stack built (*m, from rng, then every one of its
 * tensors overwritten) and loaded by name under "bert." (the file's other
 * tensors, a head's cls.* and the optimizer's state, are ignored; every
 * encoder tensor must be there, with its shape). A pooler is not part of
 * it (BertForMaskedLM has none): a classifier starts its own, as
 * transformers does when it loads BertForSequenceClassification from a
 * masked-LM checkpoint. *cfg is written only on success; *m is built in
 * place (do not copy it: lists point into it) and left empty on failure;
 * free it with tfm_free(). Dropout as the file says (set m->cfg's to change it
 * before the first forward). */
tb_status bert_encoder_load(tb_ctx *ctx, const char *path, bert_config *cfg, tfm *m,
                            tb_rng *rng);

#endif /* EX_BERT_CKPT_H */
