/**
 * @file wordpiece.h
 * @brief WordPiece tokenizer equal to Hugging Face's BertTokenizerFast.
 *
 * Text to token ids the way BERT-family models (bert-base-uncased,
 * all-MiniLM-L6-v2, ...) were trained: tokenizers' BertNormalizer,
 * BertPreTokenizer and WordPiece model, in that order (docs/wordpiece.md):
 *
 * 1. **UTF-8 decoding**: every maximal invalid subsequence (a lone
 *    continuation byte, a truncated or overlong sequence, a surrogate, a
 *    value above U+10FFFF) decodes to U+FFFD, as Python's
 *    `bytes.decode("utf-8", "replace")` does; cleaning then removes it, so
 *    invalid bytes vanish without splitting the word around them.
 * 2. **Cleaning**: NUL, U+FFFD and control, format and private-use
 *    characters are dropped (tab, LF and CR are whitespace); every whitespace
 *    character becomes a space.
 * 3. **CJK** ideographs get a space on each side (`split_cjk`).
 * 4. **Accent stripping** (when on): NFD, then every non-spacing mark (Mn)
 *    is removed.
 * 5. **Lower-casing** (when on): the full Unicode lower-case mapping of each
 *    character (U+0130 becomes "i" + U+0307, two characters).
 * 6. **Words**: split on spaces; every punctuation character (all printable
 *    ASCII that is not a letter or digit, and Unicode P*) is a word.
 * 7. **WordPiece**: greedy longest match first from the word's start, the
 *    pieces after the first looked up with a "##" prefix; a word with no
 *    complete match, or of more than `max_chars_per_word` characters (after
 *    normalization), is one [UNK].
 *
 * The character properties are those of tokenizers 0.23.3 (which mixes
 * Unicode versions; see test/tools/gen_unicode_tables.py). Special tokens
 * written in the text ("[CLS]") are text, never the special token: the
 * oracle calls BertTokenizerFast with `split_special_tokens=True`.
 *
 * Every call takes time linear in its input: a 1 MB word or 1 MB of
 * punctuation costs what 1 MB of prose does; nothing reads past `len`. A
 * tokenizer is read-only after init: any number of threads may tokenize
 * with it at once (each with its own context).
 */
#ifndef TBLOCKS_WORDPIECE_H
#define TBLOCKS_WORDPIECE_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief When accents are stripped (transformers' `strip_accents`). */
typedef enum tb_wordpiece_accents {
    TB_WP_ACCENTS_AUTO = 0, /**< Strip iff lower-casing (transformers' None). */
    TB_WP_ACCENTS_KEEP = 1, /**< Never strip (False). */
    TB_WP_ACCENTS_STRIP = 2 /**< Always strip (True). */
} tb_wordpiece_accents;

/** @brief Options of a tokenizer (BertTokenizerFast's arguments). */
typedef struct tb_wordpiece_config {
    int lowercase;                       /**< BertTokenizer's do_lower_case (non-zero: on). */
    tb_wordpiece_accents strip_accents;  /**< When accents are stripped. */
    int split_cjk;                       /**< tokenize_chinese_chars (non-zero: on). */
    size_t max_chars_per_word;           /**< Longer words become [UNK] (100; 0 makes every word [UNK]). */
} tb_wordpiece_config;

/**
 * @brief The configuration of bert-base-uncased and all-MiniLM-L6-v2.
 * @return lowercase 1, strip_accents AUTO, split_cjk 1, max_chars_per_word 100.
 */
tb_wordpiece_config tb_wordpiece_default_config(void);

/**
 * @brief A loaded vocabulary and its options. Fill it with
 * tb_wordpiece_init() or tb_wordpiece_load(), release it with
 * tb_wordpiece_free(). The fields are read-only for the caller.
 */
typedef struct tb_wordpiece {
    tb_wordpiece_config cfg; /**< The options (a copy). */
    size_t vocab_size;       /**< Lines of the vocabulary: ids are 0 .. vocab_size - 1. */
    int32_t unk_id;          /**< Id of "[UNK]", -1 if the vocabulary lacks it. */
    int32_t cls_id;          /**< Id of "[CLS]", or -1. */
    int32_t sep_id;          /**< Id of "[SEP]", or -1. */
    int32_t pad_id;          /**< Id of "[PAD]", or -1. */
    int32_t mask_id;         /**< Id of "[MASK]", or -1. */
    /* Internal. */
    tb_allocator allocator_; /**< The hooks everything below came from. */
    char *strings_;          /**< Every token, NUL-terminated, in line order. */
    uint32_t *offsets_;      /**< vocab_size offsets into strings_. */
    /** Trie of the tokens over their bytes: edge (parent << 8 | byte) -> child,
     *  in an open-addressing hash of edge_mask_ + 1 slots of two words each,
     *  the key (0: empty) and the child, side by side (one cache line per probe). */
    uint64_t *edges_;
    size_t edge_mask_;       /**< Slots - 1 (a power of two minus one). */
    int32_t *node_id_;       /**< Token id ending at each node, -1 if none (node 0: root). */
    size_t n_nodes_;         /**< Nodes of the trie. */
    uint32_t cont_root_;     /**< Node of "##" (continuation pieces), UINT32_MAX if absent. */
} tb_wordpiece;

/**
 * @brief Build a tokenizer from the bytes of a vocab.txt.
 *
 * One token per line, id = line index (0-based); lines end with "\n" or
 * "\r\n" (the "\r" is not part of the token; a last line without "\n"
 * counts, a final "\n" starts no further line). Nothing else is trimmed.
 * A token written on several lines: id() gives the LAST line, as Hugging
 * Face's loaders (a dict filled in line order) do, and the earlier ids keep
 * their text for token() (tokenizers' vocab_r would forget them).
 *
 * @param ctx   Context (errors, allocator).
 * @param wp    Filled on success; on failure zeroed (tb_wordpiece_free() is safe).
 * @param vocab The file's bytes (need not be NUL-terminated).
 * @param len   Bytes of vocab.
 * @param cfg   Options; NULL means tb_wordpiece_default_config().
 * @return TB_OK; TB_ERR_NULL_ARG (ctx, wp, or vocab with len > 0);
 *   TB_ERR_INVALID_ARG (empty vocabulary, strip_accents not a
 *   tb_wordpiece_accents value); TB_ERR_FORMAT (a line that is not valid
 *   UTF-8 or holds a NUL byte; the detail names the line, 1-based);
 *   TB_ERR_OVERFLOW (more than INT32_MAX lines, or 4 GiB or more of
 *   vocabulary); TB_ERR_NO_MEMORY.
 */
tb_status tb_wordpiece_init(tb_ctx *ctx, tb_wordpiece *wp, const char *vocab, size_t len,
                            const tb_wordpiece_config *cfg);

/**
 * @brief tb_wordpiece_init() on the contents of the file `vocab_path`.
 * @param ctx        Context (errors, allocator).
 * @param wp         Filled on success; zeroed on failure.
 * @param vocab_path Path of a vocab.txt.
 * @param cfg        Options; NULL means tb_wordpiece_default_config().
 * @return as tb_wordpiece_init(); TB_ERR_IO when the file cannot be opened or read.
 */
tb_status tb_wordpiece_load(tb_ctx *ctx, tb_wordpiece *wp, const char *vocab_path,
                            const tb_wordpiece_config *cfg);

/**
 * @brief Release a tokenizer; zeroes it.
 * @param wp NULL, zeroed or already freed: no-op.
 */
void tb_wordpiece_free(tb_wordpiece *wp);

/**
 * @brief Token ids of `len` bytes of UTF-8 text, without special tokens.
 *
 * ids[0 .. min(total, cap)) are written (nothing beyond) and *n = total,
 * the number of pieces of the whole text: call with cap 0 (ids may then be
 * NULL) to size the buffer. Linear time; memory: a word buffer of
 * min(max_chars_per_word + 1, 3 len + 1) characters, on the stack up to 256.
 *
 * @param ctx  Context (errors, allocator of a large word buffer).
 * @param wp   An initialised tokenizer (only read).
 * @param text `len` bytes of UTF-8 (invalid sequences are removed); may be NULL when len is 0.
 * @param len  Bytes of text.
 * @param ids  Room for cap ids, or NULL with cap 0.
 * @param cap  Ids that fit in ids.
 * @param n    The number of pieces of the whole text.
 *
 * @return TB_OK; TB_ERR_NULL_ARG (ctx, wp, n, text with len > 0, ids with
 *   cap > 0); TB_ERR_STATE (wp not initialised); TB_ERR_NOT_FOUND (a word
 *   needs [UNK] and the vocabulary has none: *n is 0, ids may hold pieces);
 *   TB_ERR_NO_MEMORY.
 */
tb_status tb_wordpiece_tokenize(tb_ctx *ctx, const tb_wordpiece *wp, const char *text,
                                size_t len, int32_t *ids, size_t cap, size_t *n);

/**
 * @brief A model input: [CLS] a [SEP], or [CLS] a [SEP] b [SEP] when b is
 * not NULL, truncated to at most max_len tokens as transformers'
 * `truncation="longest_first"` does.
 *
 * With M = max_len - 3 (pair) and la, lb the pieces of a and b: when
 * la + lb > M, the shorter keeps min(its length, M - ...) exactly as
 * tokenizers' truncate_encodings: if the shorter has at most M / 2 pieces
 * it stays whole and the longer keeps M minus it; otherwise the first
 * keeps M / 2 and the second M / 2 + M % 2 when a is the shorter or they
 * are equal, the other way round when b is shorter. A single sentence
 * keeps its first max_len - 2 pieces. No padding.
 *
 * @param ctx      Context (errors).
 * @param wp       An initialised tokenizer (only read).
 * @param a        The first sentence (UTF-8; may be NULL when alen is 0).
 * @param alen     Bytes of a.
 * @param b        The second sentence, or NULL for a single sentence.
 * @param blen     Bytes of b.
 * @param max_len  At most this many tokens (>= 2; >= 3 with b).
 * @param ids      Room for max_len ids; ids[0 .. *n) written.
 * @param type_ids NULL, or room for max_len: 0 for [CLS] a [SEP], 1 for b [SEP].
 * @param n        Tokens written.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (max_len too small);
 *   TB_ERR_NOT_FOUND (the vocabulary lacks [CLS] or [SEP], or [UNK] when
 *   needed); TB_ERR_STATE; TB_ERR_NO_MEMORY.
 */
tb_status tb_wordpiece_encode(tb_ctx *ctx, const tb_wordpiece *wp, const char *a, size_t alen,
                              const char *b, size_t blen, size_t max_len, int32_t *ids,
                              int32_t *type_ids, size_t *n);

/**
 * @brief The text of token `id` (the vocabulary's line, without its line end).
 * @param wp An initialised tokenizer.
 * @param id A token id.
 * @return NULL if wp is NULL or id is outside 0 .. vocab_size - 1.
 */
const char *tb_wordpiece_token(const tb_wordpiece *wp, int32_t id);

/**
 * @brief The id of a token given exactly (no normalization): "##ing", "[CLS]".
 * @param wp    An initialised tokenizer.
 * @param token A NUL-terminated token.
 * @return the id (the last line holding it), -1 if absent or an argument is NULL.
 */
int32_t tb_wordpiece_id(const tb_wordpiece *wp, const char *token);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_WORDPIECE_H */
