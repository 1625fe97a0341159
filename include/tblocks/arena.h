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
 *
 * Count, then carve: a layout written once as a sequence of
 * tb_arena_alloc() calls can size its own buffer. Run it first on a
 * counting arena (tb_arena_init_counting(): no buffer, every chunk comes
 * back NULL and only the bytes are added up, with overflow checked), take
 * tb_arena_required() bytes, then run the same layout on a real arena over
 * that buffer. The two runs cannot disagree, so no size is written twice.
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
    int counting;        /**< Nonzero: a counting arena (no buffer). */
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
 * @brief Make a counting arena: it has no buffer, tb_arena_alloc() on it
 * sets `*out` to NULL, returns TB_OK and only adds the chunk's rounded size
 * to `used` (TB_ERR_OVERFLOW if the total would not fit in size_t).
 * @param arena Arena to initialise.
 * @return TB_OK or TB_ERR_NULL_ARG.
 */
tb_status tb_arena_init_counting(tb_arena *arena);

/**
 * @brief Bytes a buffer needs to hold every chunk a counting arena has
 * counted since its init or last reset, at any alignment of the buffer
 * (`used` plus TB_ARENA_ALIGN).
 * @param arena A counting arena after the layout ran on it.
 * @param bytes Receives the size.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_OVERFLOW.
 */
tb_status tb_arena_required(const tb_arena *arena, size_t *bytes);

/**
 * @brief Hand out `bytes` bytes aligned to TB_ARENA_ALIGN.
 * @param ctx Context (error detail).
 * @param arena Arena.
 * @param bytes Size wanted (0 gives a valid, unique-enough pointer).
 * @param out Receives the chunk; set to NULL on failure and on a
 *        counting arena.
 * @return TB_OK, TB_ERR_NULL_ARG, TB_ERR_BUFFER_TOO_SMALL, or (counting
 *         arena) TB_ERR_OVERFLOW.
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
