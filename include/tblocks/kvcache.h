/**
 * @file kvcache.h
 * @brief Key/value cache for incremental decoding: keys and values of the
 * positions seen so far are kept, new positions are appended, and new
 * queries attend to everything stored without recomputing the prefix.
 *
 * Storage per cache: keys and values `(B, max_len, Hkv * D)` each. With the
 * attention core's causal alignment (queries are the last positions), the
 * result of attending from the new positions equals the corresponding rows
 * of a full forward pass over the whole sequence.
 */
#ifndef TBLOCKS_KVCACHE_H
#define TBLOCKS_KVCACHE_H

#include <stddef.h>

#include "attention.h"
#include "context.h"
#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief A key/value cache; initialise with tb_kv_cache_init(). */
typedef struct tb_kv_cache {
    size_t batch;           /**< B. */
    size_t max_len;         /**< Positions it can hold. */
    size_t n_kv_heads;      /**< Key/value heads. */
    size_t head_dim;        /**< D. */
    size_t len;             /**< Positions stored so far. */
    float *keys;            /**< `(B, max_len, Hkv * D)`. */
    float *values;          /**< `(B, max_len, Hkv * D)`. */
    void *storage;          /**< Owned memory. */
    tb_allocator allocator; /**< Hooks `storage` came from. */
} tb_kv_cache;

/**
 * @brief Allocate an empty cache.
 * @param ctx Context.
 * @param kv Cache to initialise; left empty on failure.
 * @param batch B, >= 1.
 * @param max_len Capacity in positions, >= 1.
 * @param n_kv_heads Key/value heads, >= 1.
 * @param head_dim D, >= 1.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_INVALID_ARG, TB_ERR_OVERFLOW or
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_kv_cache_init(tb_ctx *ctx, tb_kv_cache *kv, size_t batch, size_t max_len,
                           size_t n_kv_heads, size_t head_dim);

/**
 * @brief Release the cache's memory; the struct is left empty.
 * @param kv Cache; NULL or empty is fine.
 */
void tb_kv_cache_free(tb_kv_cache *kv);

/**
 * @brief Forget every stored position (the memory is kept).
 * @param kv Cache; NULL does nothing.
 */
void tb_kv_cache_reset(tb_kv_cache *kv);

/**
 * @brief Append the keys and values of Tn new positions.
 * @param ctx Context.
 * @param kv Cache.
 * @param k New keys `(B, Tn, W)` with n_kv_heads heads from `offset`.
 * @param v New values, same B and Tn. The positions written, [len, len + Tn)
 *        of each batch row of kv->keys and kv->values, must not overlap the
 *        heads of k or v.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_SHAPE; TB_ERR_STATE (not
 *         initialised); TB_ERR_BUFFER_TOO_SMALL if len + Tn > max_len;
 *         TB_ERR_INVALID_ARG when an output overlaps an input it still reads,
 *         or another output (nothing appended on error).
 */
tb_status tb_kv_cache_append(tb_ctx *ctx, tb_kv_cache *kv, const tb_heads *k, const tb_heads *v);

/**
 * @brief Attention of Tq new queries over every stored position (inference:
 * no backward). With cfg->causal the queries are taken as the last Tq
 * stored positions.
 * @param ctx Context.
 * @param kv Cache (its n_kv_heads and head_dim must match cfg).
 * @param cfg Core configuration.
 * @param key_lengths B entries limiting the keys per batch row, or NULL.
 * @param q Queries `(B, Tq, W)` with H heads from `offset`.
 * @param out Output `(B, Tq, H * D)`; must not overlap q's heads, the
 *        stored positions or key_lengths.
 * @return As tb_attention_forward() (TB_ERR_INVALID_ARG also when an output
 *         overlaps an input it still reads, or another output); TB_ERR_STATE
 *         if the cache is empty or not initialised; TB_ERR_SHAPE if cfg does
 *         not match the cache or q and out.
 */
tb_status tb_kv_cache_attend(tb_ctx *ctx, const tb_kv_cache *kv, const tb_attention_config *cfg,
                             const int32_t *key_lengths, const tb_heads *q, tb_tensor *out);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_KVCACHE_H */
