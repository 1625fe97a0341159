/* Bump allocator over a caller-provided buffer. */
#include <stdint.h>

#include "internal.h"

static size_t round_up(size_t n, size_t *out)
{
    size_t r;
    if (!tb_add_size(n, TB_ARENA_ALIGN - 1, &r))
        return 0;
    *out = r / TB_ARENA_ALIGN * TB_ARENA_ALIGN;
    return 1;
}

tb_status tb_arena_size_add(size_t *total, size_t bytes)
{
    size_t r, t;
    if (!total)
        return TB_ERR_NULL_ARG;
    if (!round_up(bytes, &r) || !tb_add_size(*total, r, &t))
        return TB_ERR_OVERFLOW;
    *total = t;
    return TB_OK;
}

tb_status tb_arena_init(tb_arena *arena, void *buffer, size_t size)
{
    if (!arena || !buffer)
        return TB_ERR_NULL_ARG;
    arena->base = buffer;
    arena->size = size;
    arena->used = 0;
    arena->peak = 0;
    arena->counting = 0;
    return TB_OK;
}

tb_status tb_arena_init_counting(tb_arena *arena)
{
    if (!arena)
        return TB_ERR_NULL_ARG;
    arena->base = NULL;
    arena->size = 0;
    arena->used = 0;
    arena->peak = 0;
    arena->counting = 1;
    return TB_OK;
}

tb_status tb_arena_required(const tb_arena *arena, size_t *bytes)
{
    if (!arena || !bytes)
        return TB_ERR_NULL_ARG;
    if (!tb_add_size(arena->used, TB_ARENA_ALIGN, bytes))
        return TB_ERR_OVERFLOW;
    return TB_OK;
}

tb_status tb_arena_alloc(tb_ctx *ctx, tb_arena *arena, size_t bytes, void **out)
{
    if (out)
        *out = NULL;
    if (arena && out && arena->counting) {
        size_t r, end;
        if (!round_up(bytes, &r) || !tb_add_size(arena->used, r, &end))
            return tb_fail(ctx, TB_ERR_OVERFLOW, __func__,
                           "counting arena: %zu bytes after %zu overflow", bytes, arena->used);
        arena->used = end;
        if (end > arena->peak)
            arena->peak = end;
        return TB_OK;
    }
    if (!arena || !out || !arena->base)
        return tb_fail(ctx, TB_ERR_NULL_ARG, __func__, "arena and out must not be NULL");
    /* Offset of the first aligned byte of the buffer. */
    size_t lead = (size_t)((TB_ARENA_ALIGN - ((uintptr_t)arena->base % TB_ARENA_ALIGN)) %
                           TB_ARENA_ALIGN);
    size_t r, end;
    if (!round_up(bytes, &r) || !tb_add_size(lead, arena->used, &end) ||
        !tb_add_size(end, r, &end) || end > arena->size)
        return tb_fail(ctx, TB_ERR_BUFFER_TOO_SMALL, __func__,
                       "arena of %zu bytes has %zu used; %zu more do not fit", arena->size,
                       arena->used, bytes);
    *out = arena->base + lead + arena->used;
    arena->used += r;
    if (arena->used > arena->peak)
        arena->peak = arena->used;
    return TB_OK;
}

void tb_arena_reset(tb_arena *arena)
{
    if (arena)
        arena->used = 0;
}
