/**
 * @file mha.h
 * @brief Multi-head attention module, as torch.nn.MultiheadAttention with
 * batch_first=True: fused input projection, heads, the attention core
 * (attention.h), output projection.
 *
 * Parameters (PyTorch's state_dict names): `in_proj_weight` `(3C, C)` (rows
 * 0..C for queries, C..2C keys, 2C..3C values), `in_proj_bias` `(3C)`,
 * `out_proj.weight` `(C, C)`, `out_proj.bias` `(C)`. Weights copied from
 * `nn.MultiheadAttention` give the same outputs.
 *
 * Self-attention projects x once into a packed `(B, T, 3C)` buffer that the
 * core reads in place. Cross-attention projects queries from x and keys and
 * values from a second sequence `mem` with the same in_proj rows.
 * Shapes: x, y `(B, Tq, C)`; mem `(B, Tk, C)`. The masks and the causal /
 * window options of the core apply (set them in `attn`).
 * Attention dropout (training): draw it into the mask with
 * tb_attention_dropout_draw() before each forward in TB_MODE_TRAINING and
 * give backward the same mask; TB_MODE_INFERENCE ignores it (as
 * tb_mha_decode() does, which is inference only). Training and inference
 * follow the library's one rule (docs/conventions.md): `mode` selects the
 * arithmetic, `cache` (NULL: no backward) what is saved.
 *
 * Padding may hold garbage: a row of x or mem that the masks hide entirely
 * (a key no query sees whose own query, in self-attention, sees nothing; a
 * query that sees nothing) can hold NaN or Inf without changing y, dx,
 * dmem or any parameter gradient (attention.h: masked pairs contribute
 * nothing; and a row whose projection gradient is exactly zero adds
 * exactly nothing to in_proj's gradients). dx and dmem are 0 at those rows.
 */
#ifndef TBLOCKS_MHA_H
#define TBLOCKS_MHA_H

#include <stddef.h>

#include "attention.h"
#include "context.h"
#include "kvcache.h"
#include "linear.h"
#include "param.h"
#include "rng.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief A multi-head attention module; initialise with tb_mha_init(). */
typedef struct tb_mha {
    size_t embed_dim;         /**< C. */
    size_t n_heads;           /**< H; C = H * D. */
    int has_bias;             /**< Nonzero: in_proj_bias and out_proj.bias exist. */
    tb_attention_config attn; /**< Core options (heads, D; set causal/window here). */
    tb_param in_proj_weight;  /**< `(3C, C)`. */
    tb_param in_proj_bias;    /**< `(3C)`; empty without bias. */
    tb_linear out_proj;       /**< `(C, C)` output projection. */
    void *storage;            /**< Owned memory for the in_proj values and gradients. */
    tb_allocator allocator;   /**< Hooks `storage` came from. */
} tb_mha;

/**
 * @brief Allocate and initialise as PyTorch does: in_proj_weight
 * Xavier-uniform, biases 0, out_proj.weight uniform in +-1/sqrt(C).
 * @param ctx Context.
 * @param mha Module to initialise; left empty on failure.
 * @param embed_dim C, >= 1.
 * @param n_heads H, >= 1, dividing C.
 * @param has_bias Nonzero for biases.
 * @param rng Stream for the initial values.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG, TB_ERR_OVERFLOW or
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_mha_init(tb_ctx *ctx, tb_mha *mha, size_t embed_dim, size_t n_heads, int has_bias,
                      tb_rng *rng);

/**
 * @brief Release the module's memory; the struct is left empty.
 * @param mha Module; NULL or empty is fine.
 */
void tb_mha_free(tb_mha *mha);

/**
 * @brief Append in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias
 * (those that exist) to `list` under `prefix`.
 * @param ctx Context.
 * @param mha Module.
 * @param prefix Name prefix, or NULL.
 * @param list List to extend.
 * @return As tb_param_list_add(), or TB_ERR_STATE if not initialised.
 */
tb_status tb_mha_params(tb_ctx *ctx, tb_mha *mha, const char *prefix, tb_param_list *list);

/**
 * @brief Bytes of cache forward needs: the projected queries, keys and
 * values, the attention output and the core's statistics.
 * @param mha Module.
 * @param batch B.
 * @param t_q Tq.
 * @param t_k Tk (equal to Tq for self-attention).
 * @param bytes Receives the size.
 * @return TB_OK, TB_ERR_NULL_ARG or TB_ERR_OVERFLOW.
 */
tb_status tb_mha_cache_size(const tb_mha *mha, size_t batch, size_t t_q, size_t t_k,
                            size_t *bytes);

/**
 * @brief Forward. Self-attention when mem is NULL (keys and values from x),
 * cross-attention otherwise.
 * @param ctx Context.
 * @param mha Module.
 * @param mode TB_MODE_TRAINING applies the mask's attention dropout;
 *        TB_MODE_INFERENCE ignores it.
 * @param mask Core masks, or NULL.
 * @param x Queries' input `(B, Tq, C)`.
 * @param mem Keys' and values' input `(B, Tk, C)`, or NULL.
 * @param y Output `(B, Tq, C)`; must not overlap x, mem, the parameters,
 *        the mask's arrays or the cache (no in-place form).
 * @param cache tb_mha_cache_size() bytes aligned for float, filled for
 *        backward; or NULL when no backward will follow (the projections
 *        then go to scratch allocated for the call).
 * @param cache_bytes Size of cache.
 * @return TB_OK or the errors of tb_attention_forward() and
 *         tb_linear_forward(), TB_ERR_BUFFER_TOO_SMALL for a small cache,
 *         TB_ERR_INVALID_ARG for an unknown mode or when an output overlaps
 *         an input it still reads, or another output; TB_ERR_NO_MEMORY for
 *         the scratch of a call without a cache.
 */
tb_status tb_mha_forward(tb_ctx *ctx, const tb_mha *mha, tb_mode mode,
                         const tb_attention_mask *mask, const tb_tensor *x, const tb_tensor *mem,
                         tb_tensor *y, void *cache, size_t cache_bytes);

/**
 * @brief Backward: writes dx (and dmem for cross-attention), adds to every
 * parameter gradient.
 * @param ctx Context.
 * @param mha Module.
 * @param mask The forward masks, or NULL.
 * @param x The forward x.
 * @param mem The forward mem, or NULL.
 * @param dy Gradient w.r.t. y.
 * @param cache The cache filled by forward.
 * @param cache_bytes Size of cache.
 * @param dx Receives dL/dx `(B, Tq, C)`; must not overlap x, mem, dy, the
 *        cache, in_proj_weight, out_proj.weight, the mask's arrays, dmem or
 *        a gradient written (no in-place form).
 * @param dmem Receives dL/dmem `(B, Tk, C)` (cross-attention), else NULL;
 *        the same rule as dx.
 * @return TB_OK or the errors of the parts; TB_ERR_STATE for a cache not
 *         filled by forward on this shape; TB_ERR_INVALID_ARG when an output
 *         overlaps an input it still reads, or another output (the parameters'
 *         gradients are outputs too).
 */
tb_status tb_mha_backward(tb_ctx *ctx, tb_mha *mha, const tb_attention_mask *mask,
                          const tb_tensor *x, const tb_tensor *mem, const tb_tensor *dy,
                          const void *cache, size_t cache_bytes, tb_tensor *dx, tb_tensor *dmem);

/**
 * @brief Incremental decoding (inference): project Tn new positions,
 * append their keys and values to `kv`, attend from them over everything
 * stored, project the output. With `mha->attn.causal` set, feeding a
 * sequence in pieces gives the same outputs as tb_mha_forward() on the
 * whole sequence.
 * @param ctx Context.
 * @param mha Module.
 * @param kv Cache with n_kv_heads = H and head_dim = C / H.
 * @param x New positions `(B, Tn, C)`.
 * @param y Output `(B, Tn, C)`; must not overlap x, the parameters or kv's
 *        positions (stored or new).
 * @return TB_OK or the errors of the parts (TB_ERR_BUFFER_TOO_SMALL when the
 *         cache is full); TB_ERR_NO_MEMORY for the call's scratch;
 *         TB_ERR_INVALID_ARG when an output overlaps an input it still reads,
 *         or another output (the new positions of kv are outputs).
 */
tb_status tb_mha_decode(tb_ctx *ctx, const tb_mha *mha, tb_kv_cache *kv, const tb_tensor *x,
                        tb_tensor *y);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_MHA_H */
