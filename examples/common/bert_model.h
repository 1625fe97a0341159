/*
 * A BERT model folder as transformers and sentence-transformers write it,
 * and a sentence embedder on it that computes what
 * SentenceTransformer(folder).encode(sentences) computes.
 *
 * The folder (all-MiniLM-L6-v2's layout):
 *   config.json                 BertConfig (required): bert_config_from_json()
 *   model.safetensors           BertModel's tensors (required), named as
 *                               BertModel names them, with or without the
 *                               "bert." prefix of the task models (detected
 *                               from the word embeddings' name); other tensors
 *                               (pooler.*, cls.*, heads) are ignored. F32, F16,
 *                               BF16 or F64 (converted to float); every
 *                               tensor's shape checked, a missing one named.
 *   vocab.txt                   WordPiece vocabulary (required)
 *   tokenizer_config.json       do_lower_case, strip_accents,
 *                               tokenize_chinese_chars (optional: BertTokenizer's
 *                               defaults true, null, true)
 *   modules.json                sentence-transformers' pipeline (required):
 *                               a Transformer at path "" first, then one
 *                               Pooling, then optionally Normalize; any other
 *                               module (Dense, ...) is refused by name
 *   sentence_bert_config.json   max_seq_length (required; 2..max_position_embeddings)
 *   <pooling path>/config.json  the Pooling module's modes (required):
 *                               exactly one of mean, cls, max; mean_sqrt_len,
 *                               weightedmean and lasttoken are refused;
 *                               word_embedding_dimension must be hidden_size
 *
 * Decisions: hidden_act must be "gelu" (exact erf GELU, what BertModel
 * computes for it); "gelu_new" and other activations are refused rather
 * than mapped, since a model trained with another activation computed with
 * this one would give wrong embeddings without any error.
 * position_embedding_type must be "absolute"; model_type, when present,
 * "bert". Unknown keys are ignored (they do not change BertModel's output).
 *
 * Every error is a tb_status with a message naming the file and the field.
 */
#ifndef EX_BERT_MODEL_H
#define EX_BERT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "bert_config.h"
#include "tblocks.h"
#include "tfm.h"

/* config.json's text -> cfg. Required: vocab_size, hidden_size,
 * num_hidden_layers, num_attention_heads, intermediate_size,
 * max_position_embeddings; optional with BertConfig's defaults:
 * type_vocab_size 2, layer_norm_eps 1e-12, pad_token_id 0, the dropouts
 * 0.1, initializer_range 0.02, hidden_act "gelu", position_embedding_type
 * "absolute". The sizes are checked against the shared stack's limits
 * (tfm_config_check: heads dividing the width, ...), pad_token_id against
 * the vocabulary. TB_ERR_FORMAT for malformed JSON or a field of the wrong
 * type, TB_ERR_UNSUPPORTED for a model this stack does not compute,
 * TB_ERR_INVALID_ARG for sizes out of range. */
tb_status bert_config_from_json(tb_ctx *ctx, const char *text, size_t len, bert_config *cfg);

typedef enum bert_pooling {
    BERT_POOL_MEAN = 0, /* mean of the real tokens' hidden states */
    BERT_POOL_CLS = 1,  /* position 0 ([CLS]) */
    BERT_POOL_MAX = 2   /* element-wise max over the real tokens */
} bert_pooling;

/* strip_accents as tokenizer_config.json says it. */
typedef enum bert_accents {
    BERT_ACCENTS_AUTO = 0, /* null: strip when lowercasing (BertTokenizer) */
    BERT_ACCENTS_KEEP = 1,
    BERT_ACCENTS_STRIP = 2
} bert_accents;

typedef struct bert_model {
    bert_config cfg;
    tfm m;                 /* the encoder (frozen: no gradient buffers) */
    char prefix[8];        /* "" or "bert.": the tensors' prefix in the file */
    size_t max_seq_length; /* tokens per sentence, [CLS] and [SEP] included */
    bert_pooling pooling;
    int normalize;         /* L2-normalise the pooled vector (a Normalize module) */
    int lowercase;         /* do_lower_case */
    bert_accents strip_accents;
    int split_cjk;         /* tokenize_chinese_chars */
    char *vocab_path;      /* <dir>/vocab.txt (malloc'ed) */
} bert_model;

/* Open a model folder (see the file comment). m is left empty on failure. */
tb_status bert_model_open(tb_ctx *ctx, bert_model *m, const char *dir);
void bert_model_close(bert_model *m);

/* How bert_embed_ids() batches. */
typedef struct bert_embed_opts {
    size_t batch;      /* sentences per forward pass, >= 1 */
    size_t max_tokens; /* a forward pass holds at most max(this, one sentence) batch x padded
                          length tokens (0: no limit); the stack keeps every layer's
                          activations (~190 KB per token for MiniLM), so this bounds memory */
} bert_embed_opts;

/* The defaults: batch 32, max_tokens 2048 (~400 MB for MiniLM). */
bert_embed_opts bert_embed_default_opts(void);

/*
 * Embeddings of n tokenized sentences: ids[i] holds lens[i] token ids
 * ([CLS] ... [SEP], already truncated; 1 <= lens[i] <= max_position_embeddings,
 * every id below vocab_size), token type 0. out (n, C) receives the pooled
 * (and, with a Normalize module, L2-normalised: x / max(|x|, 1e-12)) vectors.
 *
 * As sentence-transformers' encode, the sentences are sorted by length
 * (longest first; stable) and cut into batches of opts->batch (fewer where
 * max_tokens says), each padded to its longest with pad_token_id and a
 * key-valid mask, and run through tfm_forward() in inference mode; results
 * go back to the callers' order. A sentence's embedding does not depend on
 * its batch beyond rounding (the test measures it); results are bitwise
 * identical for any thread count.
 */
tb_status bert_embed_ids(tb_ctx *ctx, bert_model *m, const int32_t *const *ids,
                         const size_t *lens, size_t n, const bert_embed_opts *opts, float *out);

/* ---- text: the folder's tokenizer and sentences in ------------------------------ */

/* The folder's WordPiece tokenizer: vocab.txt with tokenizer_config.json's
 * options (do_lower_case, strip_accents, tokenize_chinese_chars). The
 * vocabulary must hold [CLS], [SEP] and [UNK], and have as many entries as
 * config.json's vocab_size or fewer (TB_ERR_SHAPE otherwise). Free with
 * tb_wordpiece_free(). */
tb_status bert_tokenizer_load(tb_ctx *ctx, const bert_model *m, tb_wordpiece *wp);

/*
 * Embeddings of n UTF-8 sentences (texts[i], lens[i] bytes; no NUL needed)
 * into out (n, C), as SentenceTransformer.encode computes them: each is
 * tokenized as [CLS] sentence [SEP], truncated to max_len tokens (0: the
 * folder's max_seq_length; at most max_position_embeddings), then embedded
 * as bert_embed_ids() does. A sentence that is not valid UTF-8 is refused
 * (TB_ERR_FORMAT naming the sentence and the byte), before any work.
 */
tb_status bert_embed(tb_ctx *ctx, bert_model *m, const tb_wordpiece *wp,
                     const char *const *texts, const size_t *lens, size_t n, size_t max_len,
                     const bert_embed_opts *opts, float *out);

#endif /* EX_BERT_MODEL_H */
