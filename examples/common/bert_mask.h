/*
 * BERT's masking for masked-LM pre-training, as Devlin et al. describe it
 * and transformers' DataCollatorForLanguageModeling implements it: each
 * ordinary token (not a special such as [CLS], [SEP], [PAD]) is selected
 * with probability 0.15 (a Bernoulli draw per token, as the collator does,
 * not an exact 15% per sequence); a selected token becomes the label of
 * its position and its input is replaced by [MASK] with probability 0.8,
 * by a random token with 0.1 (uniform over [rand_lo, rand_hi): the
 * ordinary ids, so the random token is never a special) and kept with 0.1.
 * Every other position's label is -100.
 *
 * Reproducible: position i draws its three numbers at stream positions
 * counter + 3i, 3i + 1, 3i + 2 (tb_rng_bits_at), whatever it needs, and
 * the stream advances by 3n: the same seed gives the same masks, and a
 * resumed run continues the stream exactly.
 */
#ifndef EX_BERT_MASK_H
#define EX_BERT_MASK_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

typedef struct bert_mask_config {
    float select_p;   /* 0.15 */
    float mask_p;     /* of the selected: 0.8 -> [MASK] */
    float random_p;   /* 0.1 -> a random token; the rest (0.1) unchanged */
    int32_t mask_id;
    int32_t rand_lo, rand_hi; /* random tokens are drawn from [rand_lo, rand_hi) */
    const uint8_t *special;   /* (vocab) nonzero: never selected ([PAD], [CLS], ...) */
    size_t vocab;
} bert_mask_config;

/* BERT's proportions (0.15, 0.8, 0.1); the ids and the special table are
 * the caller's to fill. */
bert_mask_config bert_mask_default_config(void);

/* ids (n) in place: the masked input; labels (n): the original token at
 * the selected positions, -100 elsewhere. *n_selected (may be NULL)
 * receives the count. TB_ERR_INVALID_ARG for an id outside the vocabulary
 * or a bad configuration. */
tb_status bert_mask_tokens(tb_ctx *ctx, const bert_mask_config *cfg, tb_rng *rng, int32_t *ids,
                           int32_t *labels, size_t n, size_t *n_selected);

#endif /* EX_BERT_MASK_H */
