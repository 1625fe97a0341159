/**
 * @file arena.h
 * @brief A bump allocator over one caller-provided buffer, for activation
 * caches and scratch space.
 *
 * Blocks never allocate activation memory. They report how much they need
 * (`tb_<block>_cache_size`) and the caller hands it over. An arena makes
 * that convenient: ask every block for its size, add them up with
 * tb_arena_size_add(), provide one buffer, carve it with tb_arena_alloc(),
 * and tb_arena_reset() it when the batch shape changes.
 */
#ifndef TBLOCKS_ARENA_H
#define TBLOCKS_ARENA_H

#include <stddef.h>

#include "context.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Alignment, in bytes, of every chunk the arena hands out. */
#define TB_ARENA_ALIGN 64

/** @brief A bump allocator over a caller-owned buffer. */
typedef struct tb_arena {
    unsigned char *base; /**< Start of the buffer. */
    size_t size;         /**< Bytes in the buffer. */
    size_t used;         /**< Bytes handed out so far (from the aligned start). */
    size_t peak;         /**< Largest `used` seen since init. */
} tb_arena;

/**
 * @brief Bytes an arena chunk of `bytes` occupies (rounded up to
 * TB_ARENA_ALIGN), added to `*total`; use it to size an arena buffer
 * (add TB_ARENA_ALIGN once more for the alignment of the buffer itself).
 * @param total Running total to increase.
 * @param bytes Chunk size.
 * @return TB_OK, TB_ERR_NULL_ARG, or TB_ERR_OVERFLOW (total unchanged).
 */
tb_status tb_arena_size_add(size_t *total, size_t bytes);

/**
 * @brief Make an arena over `buffer[0..size)`.
 * @param arena Arena to initialise.
 * @param buffer Caller-owned memory that outlives the arena's use.
 * @param size Bytes in the buffer.
 * @return TB_OK or TB_ERR_NULL_ARG.
 */
tb_status tb_arena_init(tb_arena *arena, void *buffer, size_t size);

/**
 * @brief Hand out `bytes` bytes aligned to TB_ARENA_ALIGN.
 * @param ctx Context (error detail).
 * @param arena Arena.
 * @param bytes Size wanted (0 gives a valid, unique-enough pointer).
 * @param out Receives the chunk; set to NULL on failure.
 * @return TB_OK, TB_ERR_NULL_ARG, or TB_ERR_BUFFER_TOO_SMALL.
 */
tb_status tb_arena_alloc(tb_ctx *ctx, tb_arena *arena, size_t bytes, void **out);

/**
 * @brief Forget every chunk handed out (the buffer is reused from the start).
 * @param arena Arena; NULL does nothing.
 */
void tb_arena_reset(tb_arena *arena);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_ARENA_H */
