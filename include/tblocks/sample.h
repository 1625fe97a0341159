/**
 * @file sample.h
 * @brief Choosing the next token from a language model's logits: greedy,
 * temperature, top-k, top-p (nucleus), repetition penalty and no-repeat
 * n-gram blocking, as Hugging Face's `generate()` applies them.
 *
 * tb_logits_process() rewrites one row of logits in place, in Hugging
 * Face's order:
 *  1. repetition penalty r (CTRL): for each token already in the history,
 *     a positive logit is divided by r, a negative one multiplied by r;
 *  2. no-repeat n-gram: tokens that would complete an n-gram already in
 *     the history get -inf;
 *  3. temperature t: logits divided by t;
 *  4. top-k: logits below the k-th largest get -inf (ties with it stay);
 *  5. top-p: sorting the probabilities in ascending order, the tokens whose
 *     cumulative probability is <= 1 - p get -inf (at least one token
 *     stays).
 * For greedy decoding (t = 0) steps 3-5 are skipped: they never change the
 * argmax.
 * test_sample.c checks the result against transformers'
 * RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor,
 * TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper.
 *
 * tb_sample_token() then takes the argmax (t = 0, greedy: the first of
 * equal maxima) or draws from the softmax of the processed logits with one
 * number of a tb_rng stream (inverse CDF in token order), so a seed
 * reproduces a generation exactly. Beam search needs a model and lives
 * with the GPT example.
 */
#ifndef TBLOCKS_SAMPLE_H
#define TBLOCKS_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "rng.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Decoding options (see the file comment for their order). */
typedef struct tb_sampler_config {
    float temperature;        /**< 0: greedy; > 0: divide the logits (1: none). */
    size_t top_k;             /**< 0: off; else keep the k largest logits. */
    float top_p;              /**< 1: off; in (0, 1]: nucleus sampling. */
    float repetition_penalty; /**< 1: off; > 0 (1.2 is common). */
    size_t no_repeat_ngram;   /**< 0: off; n >= 1: no n-gram occurs twice. */
} tb_sampler_config;

/**
 * @brief Plain sampling: temperature 1, no top-k, top-p 1, no penalty, no
 * n-gram blocking.
 * @return The configuration.
 */
tb_sampler_config tb_sampler_default_config(void);

/**
 * @brief Apply the configured penalties and filters to one row of logits.
 * @param ctx Context (error detail).
 * @param cfg Options.
 * @param history Tokens so far (the prompt and what was generated), or
 *        NULL when n_history is 0.
 * @param n_history Number of tokens in history.
 * @param logits `vocab` logits, rewritten in place; must not overlap
 *        history.
 * @param vocab Vocabulary size, >= 1.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (a negative or non-finite
 *         temperature, top_p outside (0, 1], a penalty <= 0, a history token
 *         outside [0, vocab); an output overlaps an input it still reads, or
 *         another output); TB_ERR_NON_FINITE (a NaN logit when top-k or top-p
 *         must sort); TB_ERR_OVERFLOW; TB_ERR_NO_MEMORY (scratch).
 */
tb_status tb_logits_process(tb_ctx *ctx, const tb_sampler_config *cfg, const int32_t *history,
                            size_t n_history, float *logits, size_t vocab);

/**
 * @brief tb_logits_process(), then pick a token: the argmax for
 * temperature 0, else a draw from the softmax (one number of rng).
 * @param ctx Context.
 * @param cfg Options.
 * @param history Tokens so far, or NULL.
 * @param n_history Number of tokens in history.
 * @param logits `vocab` logits (rewritten in place).
 * @param vocab Vocabulary size.
 * @param rng Stream for the draw (unused and may be NULL when greedy).
 * @param token Receives the token. logits, rng (when drawing) and token
 *        are the outputs: none may overlap another or history.
 * @return As tb_logits_process() (TB_ERR_INVALID_ARG also when an output
 *         overlaps an input it still reads, or another output);
 *         TB_ERR_NON_FINITE if every logit is -inf or one is NaN.
 */
tb_status tb_sample_token(tb_ctx *ctx, const tb_sampler_config *cfg, const int32_t *history,
                          size_t n_history, float *logits, size_t vocab, tb_rng *rng,
                          int32_t *token);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_SAMPLE_H */
