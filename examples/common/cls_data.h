/*
 * Sequence-classification data for the examples: labelled texts read from
 * a folder per class or from Debian's fortune files, a built-in task
 * generated from a seed, the tokenised set a model trains on, a fixed
 * stratified train/eval split, and the evaluation (accuracy, per-class
 * precision/recall/F1, confusion matrix).
 *
 * Texts are UTF-8: a file with bytes that are not well-formed UTF-8 is
 * refused (naming the file and the byte offset). Messages go to stderr as
 * "error: ..." (file names through ex_show()); the loaders return 1 on
 * success and 0 after such a message.
 *
 * Token ids: every set uses the same four special ids, 0 [PAD], 1 [UNK],
 * 2 [CLS], 3 [SEP] (own numbering, not BERT's vocab.txt: a WordPiece
 * vocabulary passes its own ids through cls_special). A text becomes
 * "[CLS] tokens... [SEP]", cut to the set's T positions when longer
 * (keeping [SEP] last, as transformers' truncation=True does; the set
 * counts the cut examples), then padded with [PAD] (key_valid 0).
 */
#ifndef EX_CLS_DATA_H
#define EX_CLS_DATA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The most classes a data set may have (a folder with more sub-folders is refused). */
#define CLS_MAX_CLASSES 64

/* ---- texts ---------------------------------------------------------------------- */

typedef struct cls_texts {
    size_t n, cap;
    char **text;     /* n NUL-terminated UTF-8 texts */
    size_t *len;     /* their lengths in bytes */
    int32_t *label;  /* n class indices */
    size_t n_classes;
    char **classes;  /* n_classes names, in label order */
} cls_texts;

void cls_texts_free(cls_texts *t);

/* dir/<class>/<file>: one class per sub-folder (sorted by name; hidden
 * entries skipped), one example per regular file (its whole text). An
 * unreadable folder, a class folder without files, an empty file, a file
 * that is not UTF-8 or more than CLS_MAX_CLASSES classes is an error.
 * With known (n_known >= 1, e.g. the training classes for an evaluation
 * folder) every sub-folder must name one of them and labels are their
 * index there; a sub-folder that does not is an error ("unknown class").
 * n_known 0: the folder's own classes. */
int cls_texts_load_dir(cls_texts *t, const char *dir, char *const *known, size_t n_known);

/* Fortunes of the named files (comma-separated, e.g. "computers,food") in
 * dir (Debian's /usr/share/games/fortunes: apt-get install fortunes), one
 * class per file: every fortune (the text between lines holding only '%')
 * that is not empty, at most max_per_class of each (a seeded choice when
 * a file has more, so the classes stay balanced). A missing or unreadable
 * file, one with no fortune, a name with '/' or fewer than two files is an
 * error; a fortune that is not UTF-8 is skipped and counted in *skipped. */
int cls_texts_load_fortunes(cls_texts *t, const char *dir, const char *files,
                            size_t max_per_class, uint64_t seed, size_t *skipped);

/* ---- tokenised sets ---------------------------------------------------------------- */

/* Special ids of a vocabulary. */
typedef struct cls_special {
    int32_t pad, unk, cls, sep;
} cls_special;

/* The built-in ids (0..3). */
extern const cls_special cls_special_default;

/* A tokeniser: text (len bytes, UTF-8) -> up to cap ids written to ids,
 * *n receiving how many the whole text has (may exceed cap: the caller
 * truncates). No special tokens. Returns 1, or 0 after a message. */
typedef int (*cls_tokenize_fn)(void *user, const char *text, size_t len, int32_t *ids,
                               size_t cap, size_t *n);

typedef struct cls_set {
    size_t n, T;      /* examples, positions each (padded) */
    int32_t *ids;     /* (n, T) token ids, [PAD] after the end */
    uint8_t *valid;   /* (n, T) 1 at a real token, 0 at padding */
    size_t *len;      /* (n) real tokens, [CLS] and [SEP] included */
    int32_t *label;   /* (n) class index */
    size_t *read;     /* (n) the position the classifier reads: 0 ([CLS]) for texts, the
                         marked token for the built-in task */
    int read_cls;     /* 1: every read position is [CLS]'s, 0 */
    size_t n_truncated; /* examples cut to T positions */
    size_t vocab_size;
    size_t n_classes;
    char **classes;   /* owned copies */
} cls_set;

void cls_set_free(cls_set *s);

/* Tokenise every text (tok, user) into a set of T >= 3 positions. 1, or 0
 * after a message (out of memory, a tokeniser error, an id outside
 * vocab_size). */
int cls_set_from_texts(cls_set *s, const cls_texts *t, cls_tokenize_fn tok, void *user,
                       const cls_special *sp, size_t vocab_size, size_t T);

/*
 * The built-in task, "sum across the mark": n sequences of min_len..max_len
 * tokens, [CLS] filler... [SEP], with one marked token ([MASK]) at a
 * position m, one digit token a (0..K-1) somewhere left of it and one
 * digit b somewhere right of it, every other token one of 8 fillers. The
 * label is (a + b) mod K (op CLS_BUILTIN_SUM; (a - b) mod K with
 * CLS_BUILTIN_DIFF), read at the marked position (read = m).
 *
 * Given the left part alone (what a causal model sees at m) every label
 * is equally likely: a causal model is at chance by construction, a
 * bidirectional one can reach 100%. Vocabulary: the four specials,
 * [MASK] 4, digits 5..4+K, fillers 5+K..12+K. Seeded: the same n, K,
 * lengths and seed give the same set. 2 <= K <= 16, 6 <= min_len <=
 * max_len; T = max_len. Returns 1, or 0 after a message.
 */
typedef enum cls_builtin_op {
    CLS_BUILTIN_SUM = 0, /* (a + b) mod K */
    CLS_BUILTIN_DIFF = 1 /* (a - b) mod K: the same sequences, another task (a base model's) */
} cls_builtin_op;
int cls_set_builtin(cls_set *s, size_t n, size_t K, size_t min_len, size_t max_len,
                    cls_builtin_op op, uint64_t seed);
/* The built-in task's vocabulary size for K classes. */
size_t cls_builtin_vocab(size_t K);

/* A fixed split: per class, a seeded shuffle of its examples, the first
 * eval_percent (rounded, at least one when the class has two or more)
 * held out. train and eval (n entries each at most) receive the indices
 * in ascending order; *n_train + *n_eval = s->n. Returns 0 when out of
 * memory. */
int cls_split(const cls_set *s, unsigned eval_percent, uint64_t seed, size_t *train,
              size_t *n_train, size_t *eval, size_t *n_eval);

/* ---- a word-level vocabulary (the fallback tokeniser) -------------------------------- */

/*
 * Words are runs of ASCII letters and digits (lower-cased) or of non-ASCII
 * UTF-8 characters; everything else separates them. The vocabulary holds
 * the max_words most frequent words of the texts it is built from (ties
 * by byte order), ids 4.. in that order; any other word is [UNK]. Build it
 * from the training texts only, so evaluation sees unknown words as a
 * real model would.
 */
typedef struct cls_vocab {
    size_t n_words;  /* ids 4 .. 4 + n_words - 1 */
    char **words;    /* by id - 4 */
    size_t cap;      /* hash slots (a power of two) */
    int32_t *slot;   /* -1 or id - 4 */
} cls_vocab;

/* From the texts t->text[idx[i]] (i < n_idx). Returns 0 when out of memory. */
int cls_vocab_build(cls_vocab *v, const cls_texts *t, const size_t *idx, size_t n_idx,
                    size_t max_words);
void cls_vocab_free(cls_vocab *v);
size_t cls_vocab_size(const cls_vocab *v);
/* A cls_tokenize_fn over a cls_vocab (user). */
int cls_vocab_tokenize(void *user, const char *text, size_t len, int32_t *ids, size_t cap,
                       size_t *n);

/* ---- bytes (bert_pretrain's tokeniser) ------------------------------------------------ */

/* Every byte one token, id CLS_BYTE0 + byte, as examples/bert_pretrain
 * numbers them ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, bytes
 * 5..260): the tokeniser of its checkpoints (metadata
 * bert_pretrain.tokenizer = bytes). user is unused. */
#define CLS_BYTE0 5
#define CLS_BYTE_VOCAB 261
int cls_bytes_tokenize(void *user, const char *text, size_t len, int32_t *ids, size_t cap,
                       size_t *n);

/* ---- evaluation ------------------------------------------------------------------------ */

typedef struct cls_metrics {
    size_t K, n, correct;
    size_t confusion[CLS_MAX_CLASSES * CLS_MAX_CLASSES]; /* [true * K + predicted] */
} cls_metrics;

void cls_metrics_init(cls_metrics *m, size_t K);
void cls_metrics_add(cls_metrics *m, int32_t truth, int32_t predicted);
double cls_metrics_accuracy(const cls_metrics *m);
/* Precision, recall and F1 of class k (0 where undefined: no prediction or no example). */
void cls_metrics_class(const cls_metrics *m, size_t k, double *precision, double *recall,
                       double *f1);
double cls_metrics_macro_f1(const cls_metrics *m);
/* Accuracy, a per-class table (support, precision, recall, F1) and the
 * confusion matrix (rows: true class, columns: predicted), every line
 * starting with indent. Class names are shown through ex_show(), cut to 16
 * bytes. */
void cls_metrics_print(FILE *f, const cls_metrics *m, char *const *classes, const char *indent);

#endif /* EX_CLS_DATA_H */
