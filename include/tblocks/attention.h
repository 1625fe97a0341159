/**
 * @file attention.h
 * @brief Scaled dot-product attention core: forward and backward, causal,
 * sliding-window, key-padding and additive masks, cross-attention
 * (Tq != Tk) and grouped-query attention, without storing T x T.
 *
 * `out = softmax(scale * Q K^T + mask) V` per batch row and head.
 *
 * Layout: every operand is a tb_heads, a `(B, T, W)` tensor whose columns
 * `[offset, offset + heads * D)` hold the heads side by side (head h at
 * `offset + h*D`). A separate Q of shape `(B, T, C)` is `{q, 0}`; the packed
 * `(B, T, 3C)` output of a fused QKV projection is used in place as
 * `{qkv, 0}`, `{qkv, C}`, `{qkv, 2C}` (no copies), and gradients can be
 * written into a packed `(B, T, 3C)` buffer the same way. The output is a
 * `(B, Tq, H*D)` tensor.
 *
 * Memory: forward streams over the keys in tiles of 64 queries x 64 keys
 * with an online softmax (never materialising the T x T scores) and keeps
 * one log-sum-exp per (batch, head, query) in a caller-provided cache
 * (tb_attention_cache_size()); backward recomputes the scores tile by tile.
 * Activation memory is linear in T; each call also allocates scratch of
 * about 87 KiB per thread for D <= 64 (plus B*H*Tq floats in
 * backward).
 *
 * Masks (all optional, combined): causal (query i of Tq sees keys
 * j <= i + Tk - Tq, i.e. queries are the last Tq positions, as in
 * incremental decoding), a sliding window of width w (query i sees only the
 * w keys ending at its diagonal), key lengths or a key-valid mask per batch
 * row, and an additive `(Tq, Tk)` bias (-inf entries mask). A query whose
 * keys are all masked gets a zero output and zero gradients (older PyTorch
 * releases return NaN there; 2.13's scaled_dot_product_attention also
 * returns 0).
 *
 * Masked pairs contribute nothing, whatever the masked rows hold: padding
 * rows may be garbage (NaN, Inf, huge values). For every mask form and
 * combination, in every call (forward, backward, probabilities, and the
 * KV-cache path), the K and V rows of a key masked for query i cannot reach
 * query i's output, probabilities or dq, and reach no dk or dv through
 * that pair; the Q row of a query whose keys are all masked reaches
 * nothing. Keys no query sees get exactly zero dk and dv. What a query does
 * see is used as it is: a NaN in a visible key's value makes that query's
 * output NaN, as in PyTorch (and through the softmax, the gradients of the
 * keys that query sees).
 *
 * Every output element is computed by one thread in a fixed order: results
 * are bitwise identical for any thread count.
 */
#ifndef TBLOCKS_ATTENTION_H
#define TBLOCKS_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "rng.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Shape and masking options of the attention core. */
typedef struct tb_attention_config {
    size_t n_heads;    /**< H, query heads, >= 1. */
    size_t n_kv_heads; /**< Key/value heads; 0 means H. Must divide H (grouped-query:
                            query head h uses kv head h / (H / n_kv_heads)). */
    size_t head_dim;   /**< D, >= 1. */
    int causal;        /**< Nonzero: causal mask (aligned at the end, see above). */
    size_t window;     /**< 0: none; w >= 1: each query sees at most the w keys
                            ending at its diagonal (use with causal). */
    float scale;       /**< 0 means 1/sqrt(D); else finite and > 0. */
} tb_attention_config;

/**
 * @brief Defaults: n_kv_heads = H, not causal, no window, scale 1/sqrt(D).
 * @param n_heads H.
 * @param head_dim D.
 * @return The configuration.
 */
tb_attention_config tb_attention_default_config(size_t n_heads, size_t head_dim);

/** @brief Heads laid out side by side inside a `(B, T, W)` tensor. */
typedef struct tb_heads {
    tb_tensor *tensor; /**< `(B, T, W)`; W >= offset + heads * D. */
    size_t offset;     /**< First column of head 0. */
} tb_heads;

/**
 * @brief Optional masks (NULL pointers and zeros mean "none"), including
 * the random mask of attention dropout.
 *
 * Dropout (training only) zeroes each attention weight p_bhij with
 * probability `dropout` and scales the others by 1 / (1 - dropout), after
 * the softmax, as `F.scaled_dot_product_attention(dropout_p=...)` does.
 * Weight (b, h, i, j) is kept when u >= dropout, where u is the top 24
 * bits of `tb_rng_bits_at(dropout_key, n)` divided by 2^24 and
 * n = `dropout_counter + ((b*H + h)*Tq + i)*Tk + j` (the same draw as
 * tb_dropout_forward()), so backward regenerates the same mask from
 * the same struct (nothing T x T is stored). tb_attention_dropout_draw()
 * fills the three fields from a tb_rng and advances it. Dropout applies
 * only to a forward call in TB_MODE_TRAINING; in TB_MODE_INFERENCE the
 * same mask struct gives the deterministic result. The cache records the
 * mode and the draw: backward after a training forward with another draw
 * is TB_ERR_STATE.
 */
typedef struct tb_attention_mask {
    const int32_t *key_lengths; /**< B entries: keys j >= key_lengths[b] are masked
                                     (0 <= length <= Tk), or NULL. */
    const uint8_t *key_valid;   /**< `(B, Tk)` bytes, zero = masked key, or NULL. */
    const float *bias;          /**< `(Tq, Tk)` added to every batch row and head's
                                     scores (-inf masks), or NULL. */
    float dropout;              /**< Attention dropout probability in [0, 1); 0: off. */
    uint64_t dropout_key;       /**< Key of the dropout stream (tb_rng::key). */
    uint64_t dropout_counter;   /**< Stream position of weight (0, 0, 0, 0). */
} tb_attention_mask;

/**
 * @brief Turn on attention dropout for one forward/backward pair: sets
 * `mask->dropout = p` and the stream fields from `rng`, then advances `rng`
 * past the `B*H*Tq*Tk` numbers the call uses (so the next call draws a new
 * mask). Nothing is changed on error.
 * @param ctx Context (error detail).
 * @param cfg Configuration (n_heads is used).
 * @param mask Mask struct to update (its other fields are kept).
 * @param rng Stream to draw from.
 * @param p Probability in [0, 1).
 * @param batch B.
 * @param t_q Tq.
 * @param t_k Tk.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG for p outside [0, 1)
 *         or NaN; TB_ERR_OVERFLOW if B*H*Tq*Tk does not fit in 64 bits.
 */
tb_status tb_attention_dropout_draw(tb_ctx *ctx, const tb_attention_config *cfg,
                                    tb_attention_mask *mask, tb_rng *rng, float p, size_t batch,
                                    size_t t_q, size_t t_k);

/**
 * @brief Bytes of cache forward needs (one float per batch row, head and
 * query, plus a small header).
 * @param cfg Configuration (n_heads is used).
 * @param batch B.
 * @param t_q Tq.
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_attention_cache_size(const tb_attention_config *cfg, size_t batch, size_t t_q,
                                  size_t *bytes);

/**
 * @brief Forward: `out = softmax(scale Q K^T + masks) V`.
 *
 * Training and inference (docs/conventions.md): `mode` selects the
 * arithmetic (attention dropout, set in the mask, applies in training
 * only); `cache` selects whether backward can follow.
 * @param ctx Context.
 * @param cfg Configuration.
 * @param mode TB_MODE_TRAINING applies the mask's dropout;
 *        TB_MODE_INFERENCE ignores it (the other masks apply in both).
 * @param mask Masks, or NULL.
 * @param q Queries: `(B, Tq, W)` with H heads.
 * @param k Keys: `(B, Tk, W)` with n_kv_heads heads.
 * @param v Values: same B and Tk as k.
 * @param out Output `(B, Tq, H*D)`; must not overlap the columns of q, k
 *        or v that hold their heads, the mask's arrays, or the cache (no
 *        in-place form).
 * @param cache tb_attention_cache_size() bytes aligned for float, or NULL if
 *        no backward will follow. It records the mode and the dropout draw.
 * @param cache_bytes Size of cache.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_SHAPE; TB_ERR_OVERFLOW;
 *         TB_ERR_INVALID_ARG (bad configuration, unknown mode, key length
 *         out of range, dropout outside [0, 1), misaligned cache; an output
 *         overlaps an input it still reads, or another output);
 *         TB_ERR_BUFFER_TOO_SMALL. Nothing is written on error.
 */
tb_status tb_attention_forward(tb_ctx *ctx, const tb_attention_config *cfg, tb_mode mode,
                               const tb_attention_mask *mask, const tb_heads *q,
                               const tb_heads *k, const tb_heads *v, tb_tensor *out, void *cache,
                               size_t cache_bytes);

/**
 * @brief Backward: writes dq, dk, dv (overwriting) from the forward inputs,
 * output and cache and the output gradient. It takes no mode: it follows
 * the one the cache recorded (after an inference forward the mask's
 * dropout is ignored, as forward ignored it).
 * @param ctx Context.
 * @param cfg The forward configuration.
 * @param mask The forward masks, or NULL; after a training forward with
 *        dropout, the same draw.
 * @param q Forward queries.
 * @param k Forward keys.
 * @param v Forward values.
 * @param out Forward output `(B, Tq, H*D)`.
 * @param dy Gradient w.r.t. out, same shape.
 * @param cache The cache filled by forward.
 * @param cache_bytes Size of cache.
 * @param dq Receives dL/dq, laid out like q (may share a packed buffer with
 *        dk and dv in disjoint columns); must not overlap q, k, v (their
 *        heads' columns), out, dy, the cache or the mask's arrays.
 * @param dk Receives dL/dk, laid out like k.
 * @param dv Receives dL/dv, laid out like v.
 * @return As forward (TB_ERR_INVALID_ARG also when an output overlaps an input
 *         it still reads, or another output), plus TB_ERR_STATE if the cache
 *         was not filled by a forward call with this shape and configuration
 *         (B, H, Tq, Tk, D, key/value heads, causal, window, scale) or, after
 *         a training forward, with this dropout draw.
 */
tb_status tb_attention_backward(tb_ctx *ctx, const tb_attention_config *cfg,
                                const tb_attention_mask *mask, const tb_heads *q,
                                const tb_heads *k, const tb_heads *v, const tb_tensor *out,
                                const tb_tensor *dy, const void *cache, size_t cache_bytes,
                                tb_heads *dq, tb_heads *dk, tb_heads *dv);

/**
 * @brief The attention probabilities themselves, for teaching and
 * visualisation (this does materialise B*H*Tq*Tk floats). Attention
 * dropout, if set in the mask, is not applied: these are the weights
 * before dropout.
 * @param ctx Context.
 * @param cfg Configuration.
 * @param mask Masks, or NULL.
 * @param q Queries.
 * @param k Keys.
 * @param probs Output `(B, H, Tq, Tk)`: rows sum to 1 (0 for fully masked
 *        queries); must not overlap q, k or the mask's arrays.
 * @return As forward (TB_ERR_INVALID_ARG when an output overlaps an input it
 *         still reads, or another output).
 */
tb_status tb_attention_probs(tb_ctx *ctx, const tb_attention_config *cfg,
                             const tb_attention_mask *mask, const tb_heads *q, const tb_heads *k,
                             tb_tensor *probs);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_ATTENTION_H */
