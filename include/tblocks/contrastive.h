/**
 * @file contrastive.h
 * @brief CLIP's symmetric contrastive (InfoNCE) loss over a batch of
 * image-text pairs, with its learnable temperature.
 *
 * Shapes: image embeddings `img` `(N, D)`, text embeddings `txt` `(N, D)`
 * (the projections' outputs, not yet normalised; row i of each is a matched
 * pair), the temperature `logit_scale` a parameter of one float holding
 * `s = log(scale)` as CLIP stores it.
 *
 *     i_n = img / ||img||_row,   t_n = txt / ||txt||_row
 *     logits_per_text  = exp(s) t_n i_n^T          (N, N)
 *     logits_per_image = logits_per_text^T         (N, N)
 *     loss = (CE(logits_per_text, arange(N)) + CE(logits_per_image, arange(N))) / 2
 *
 * exactly as transformers' `clip_loss` on the embeddings CLIPModel
 * normalises (mean cross-entropy in each direction). Gradients:
 * docs/contrastive.md.
 *
 * A zero row has no direction: transformers divides by its norm (0/0 = NaN
 * for the whole loss); torch.nn.functional.normalize (open_clip) divides by
 * max(norm, 1e-12) instead, which silently makes the row zero. libtblocks
 * refuses it (TB_ERR_INVALID_ARG naming the row) so the result matches
 * transformers wherever transformers' is finite. NaN or infinite embeddings
 * or logit_scale, or a scale whose exp overflows float, are TB_ERR_NON_FINITE.
 *
 * Backward writes the embedding gradients (as tb_linear_backward writes dx)
 * and ADDS into the logit_scale parameter's gradient (every backward adds
 * into parameter gradients). Rows are computed in parallel and sums run in
 * a fixed order, so results are bitwise identical for any thread count.
 * No tb_mode: the loss is the same in training and evaluation; a NULL cache
 * means no backward follows.
 */
#ifndef TBLOCKS_CONTRASTIVE_H
#define TBLOCKS_CONTRASTIVE_H

#include <stddef.h>

#include "context.h"
#include "param.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief The temperature's initial value and the range open_clip keeps it in. */
typedef struct tb_contrastive_config {
    float init_logit_scale; /**< Initial s = log(1/0.07) (CLIP's logit_scale_init_value 2.6592). */
    float min_logit_scale;  /**< Lower clamp bound: 0 (scale 1), as open_clip. */
    float max_logit_scale;  /**< Upper clamp bound: log(100) (scale 100), as open_clip. */
} tb_contrastive_config;

/**
 * @brief The defaults: init log(1/0.07), clamp to [0, log(100)].
 * @return The options.
 */
tb_contrastive_config tb_contrastive_default_config(void);

/**
 * @brief Bytes of cache forward needs for N pairs of D-dimensional embeddings.
 * @param n Number of pairs N.
 * @param d Embedding size D.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_contrastive_cache_size(size_t n, size_t d, size_t *bytes);

/**
 * @brief Set a logit_scale parameter (one float) to config's initial value.
 * @param ctx Context.
 * @param config Options (NULL means the defaults).
 * @param logit_scale The parameter, numel 1.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_SHAPE.
 */
tb_status tb_contrastive_init_scale(tb_ctx *ctx, const tb_contrastive_config *config,
                                    tb_param *logit_scale);

/**
 * @brief Clamp logit_scale to [min_logit_scale, max_logit_scale], as
 * open_clip does after every optimizer step (a NaN value is left alone and
 * reported).
 * @param ctx Context.
 * @param config Options (NULL means the defaults).
 * @param logit_scale The parameter, numel 1.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_INVALID_ARG (min >
 *         max) or TB_ERR_NON_FINITE (the value is NaN).
 */
tb_status tb_contrastive_clamp_scale(tb_ctx *ctx, const tb_contrastive_config *config,
                                     tb_param *logit_scale);

/**
 * @brief Forward: the loss, optionally logits_per_image.
 * @param ctx Context.
 * @param img Image embeddings `(N, D)` (leading sizes are flattened into N).
 * @param txt Text embeddings `(N, D)`.
 * @param logit_scale Parameter of one float, s = log(scale).
 * @param loss Receives the loss.
 * @param logits_per_image NULL, or `(N, N)`: row i holds image i's logits
 *        against every text (CLIPModel's logits_per_image; its transpose is
 *        logits_per_text).
 * @param cache At least tb_contrastive_cache_size(N, D) bytes, aligned for
 *        float, filled for backward; or NULL when no backward follows
 *        (scratch is allocated for the call).
 * @param cache_bytes Size of cache.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_SHAPE (img and txt differ, a zero
 *         size, logits not N x N, logit_scale not one float);
 *         TB_ERR_OVERFLOW; TB_ERR_BUFFER_TOO_SMALL; TB_ERR_INVALID_ARG (a
 *         zero-norm row, a misaligned cache, an output overlapping an input
 *         or another output); TB_ERR_NON_FINITE (NaN/Inf in an embedding or
 *         in s, or exp(s) overflows); TB_ERR_NO_MEMORY.
 */
tb_status tb_contrastive_forward(tb_ctx *ctx, const tb_tensor *img, const tb_tensor *txt,
                                 const tb_param *logit_scale, float *loss,
                                 tb_tensor *logits_per_image, void *cache, size_t cache_bytes);

/**
 * @brief Backward for an upstream gradient `dloss` (1 for a plain loss):
 * writes dimg and dtxt, adds d loss / d s into logit_scale's gradient (if
 * it has one and is trainable).
 * @param ctx Context.
 * @param img The forward image embeddings `(N, D)`.
 * @param txt The forward text embeddings `(N, D)`.
 * @param logit_scale The forward parameter (its value must be unchanged).
 * @param dloss Gradient w.r.t. the loss.
 * @param cache The cache forward filled on these shapes.
 * @param cache_bytes Size of cache.
 * @param dimg Output `(N, D)`; must not overlap any input or dtxt.
 * @param dtxt Output `(N, D)`; must not overlap any input or dimg.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_OVERFLOW,
 *         TB_ERR_BUFFER_TOO_SMALL, TB_ERR_INVALID_ARG (alignment,
 *         overlap), TB_ERR_NON_FINITE (dloss), TB_ERR_STATE (the cache
 *         was not filled by forward on N x D, or logit_scale changed since),
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_contrastive_backward(tb_ctx *ctx, const tb_tensor *img, const tb_tensor *txt,
                                  tb_param *logit_scale, float dloss, const void *cache,
                                  size_t cache_bytes, tb_tensor *dimg, tb_tensor *dtxt);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_CONTRASTIVE_H */
