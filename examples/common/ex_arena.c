/* Count-then-carve layouts of activation buffers (ex_arena.h). */
#include "ex_arena.h"

#include <stdint.h>
#include <stdlib.h>

tb_status ex_take(tb_ctx *ctx, tb_arena *ar, size_t n, size_t elem, void **out)
{
    *out = NULL;
    if (elem && n > SIZE_MAX / elem)
        return tb_ctx_set_error(ctx, TB_ERR_OVERFLOW, "activations: %zu x %zu bytes overflow",
                                n, elem);
    return tb_arena_alloc(ctx, ar, n * elem, out);
}

tb_status ex_take_f32(tb_ctx *ctx, tb_arena *ar, size_t n, float **out)
{
    void *p = NULL;
    const tb_status s = ex_take(ctx, ar, n, sizeof(float), &p);
    *out = p;
    return s;
}

tb_status ex_layout_size(tb_ctx *ctx, ex_layout_fn layout, void *obj, size_t *bytes)
{
    tb_arena counter;
    tb_status s = tb_arena_init_counting(&counter);
    if (s == TB_OK)
        s = layout(ctx, &counter, obj);
    if (s == TB_OK && tb_arena_required(&counter, bytes) != TB_OK)
        s = tb_ctx_set_error(ctx, TB_ERR_OVERFLOW, "activations: the total overflows");
    return s;
}

tb_status ex_layout_alloc(tb_ctx *ctx, ex_layout_fn layout, void *obj, void **buffer,
                          size_t *bytes)
{
    *buffer = NULL;
    *bytes = 0;
    size_t need;
    tb_status s = ex_layout_size(ctx, layout, obj, &need);
    if (s != TB_OK)
        return s;
    void *buf = malloc(need);
    if (!buf)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "activations: could not allocate %zu bytes",
                                need);
    tb_arena ar;
    s = tb_arena_init(&ar, buf, need);
    if (s == TB_OK)
        s = layout(ctx, &ar, obj);
    if (s != TB_OK) {
        free(buf);
        return s;
    }
    *buffer = buf;
    *bytes = need;
    return TB_OK;
}
