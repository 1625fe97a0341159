/*
 * Count, then carve: an activation struct's buffers are laid out by ONE
 * function, run first on a counting arena (which only adds up the bytes)
 * and then on a buffer of exactly that size (tblocks/arena.h). Every
 * example's activations are sized this way, so no size is written twice.
 */
#ifndef EX_ARENA_H
#define EX_ARENA_H

#include <stddef.h>

#include "tblocks.h"

/* *out = a * b or a + b; 0 (and *out unchanged) if it does not fit in size_t. */
static inline int ex_mul_size(size_t a, size_t b, size_t *out)
{
    if (b && a > (size_t)-1 / b)
        return 0;
    *out = a * b;
    return 1;
}

static inline int ex_add_size(size_t a, size_t b, size_t *out)
{
    if (a > (size_t)-1 - b)
        return 0;
    *out = a + b;
    return 1;
}

/* n elements of elem bytes from ar (NULL on a counting arena);
 * TB_ERR_OVERFLOW if n * elem does not fit in size_t. */
tb_status ex_take(tb_ctx *ctx, tb_arena *ar, size_t n, size_t elem, void **out);
/* n floats. */
tb_status ex_take_f32(tb_ctx *ctx, tb_arena *ar, size_t n, float **out);

/* Lays out obj's buffers in ar with ex_take()/tb_arena_alloc() calls only
 * (ar may be a counting arena: the pointers are NULL then, so the layout
 * must not touch the memory). */
typedef tb_status (*ex_layout_fn)(tb_ctx *ctx, tb_arena *ar, void *obj);

/* The bytes layout needs (one counting run, alignment slack included). */
tb_status ex_layout_size(tb_ctx *ctx, ex_layout_fn layout, void *obj, size_t *bytes);

/* Count, allocate one buffer with malloc() (*buffer, *bytes; free() it),
 * then carve it with the same layout. On error *buffer is NULL. */
tb_status ex_layout_alloc(tb_ctx *ctx, ex_layout_fn layout, void *obj, void **buffer,
                          size_t *bytes);

#endif /* EX_ARENA_H */
