/*
 * tiny_attention: a minimal single-head self-attention with a key-padding
 * mask, forward and backward, for the example programs.
 *
 * STAND-IN. libtblocks has no attention block yet; a later issue adds a
 * multi-head attention block to the library, and examples should switch to
 * it then and this file should be deleted. It exists only so that an
 * example can build a small but real transformer today. It is written
 * plainly (straight loops, no blocking or vectorisation; sequences are
 * shared among ctx->num_threads threads) for tiny sizes and rejects
 * larger ones: T <= TINY_ATTN_MAX_T positions and
 * C <= TINY_ATTN_MAX_DIM channels. It uses only the public API: two
 * tb_linear layers and tb_softmax_forward()/tb_softmax_backward().
 *
 * For x of shape (B, T, C) and a mask valid[B*T] (nonzero = a real position):
 *
 *   qkv = x Wqkv^T + bqkv                    (B, T, 3C): q | k | v per row
 *   s[b,i,j] = (q[b,i] . k[b,j]) / sqrt(C),  -inf where !valid[b*T + j]
 *   p[b,i,:] = softmax(s[b,i,:])             (B, T, T)
 *   o[b,i]   = sum_j p[b,i,j] v[b,j]         (B, T, C)
 *   y = o Wproj^T + bproj                    (B, T, C)
 *
 * Only keys are masked: a padded query row is computed like a real one (it
 * attends to the real positions of its sequence); a model that pools over
 * real positions never reads it, and its gradient is then zero. Parameters
 * are named `<prefix>.qkv.weight`, `.qkv.bias`, `.proj.weight`, `.proj.bias`.
 * Results do not depend on the thread count.
 */
#ifndef TINY_ATTENTION_H
#define TINY_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

/* The sizes this stand-in accepts. */
#define TINY_ATTN_MAX_T 32
#define TINY_ATTN_MAX_DIM 64

typedef struct tiny_attention {
    size_t dim;      /* C */
    tb_linear qkv;   /* C -> 3C */
    tb_linear proj;  /* C -> C */
} tiny_attention;

/* Make the two linear layers (qkv first, then proj; PyTorch's default
 * initialisation drawn from rng). dim in [1, TINY_ATTN_MAX_DIM]. */
tb_status tiny_attention_init(tb_ctx *ctx, tiny_attention *a, size_t dim, tb_rng *rng);

/* Release the layers; a zeroed or already freed struct is fine. */
void tiny_attention_free(tiny_attention *a);

/* Append the four parameters under `prefix` ("<prefix>.qkv.weight", ...). */
tb_status tiny_attention_params(tb_ctx *ctx, tiny_attention *a, const char *prefix,
                                tb_param_list *list);

/* Bytes of cache for one forward + backward on (B, T, C): the forward's
 * q|k|v, probabilities and attention output, and the backward's scratch. */
tb_status tiny_attention_cache_size(size_t batch, size_t t, size_t dim, size_t *bytes);

/*
 * Forward. x and y are (B, T, C) views (3-D); valid has B*T bytes or is NULL
 * (no padding). cache holds tiny_attention_cache_size(B, T, C) bytes aligned
 * for float; it is filled for backward. y must not overlap x.
 * Returns TB_OK, TB_ERR_NULL_ARG, TB_ERR_SHAPE, TB_ERR_INVALID_ARG (sizes
 * beyond the limits, misaligned cache), TB_ERR_BUFFER_TOO_SMALL, or what the
 * library calls return.
 */
tb_status tiny_attention_forward(tb_ctx *ctx, const tiny_attention *a, const tb_tensor *x,
                                 const uint8_t *valid, tb_tensor *y, void *cache,
                                 size_t cache_bytes);

/*
 * Backward for the last forward on x with this cache: writes dx (B, T, C)
 * and ADDS to the parameter gradients, as every library block does. dx must
 * not overlap x or dy. The cache's scratch part is overwritten.
 */
tb_status tiny_attention_backward(tb_ctx *ctx, tiny_attention *a, const tb_tensor *x,
                                  const uint8_t *valid, const tb_tensor *dy, void *cache,
                                  size_t cache_bytes, tb_tensor *dx);

#endif /* TINY_ATTENTION_H */
