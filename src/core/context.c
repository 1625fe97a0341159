/* Context: thread count, allocator hooks, error detail. */
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void *default_alloc(void *user, size_t size, size_t alignment)
{
    (void)user;
    /* aligned_alloc requires size to be a multiple of the alignment. */
    size_t rounded = (size + alignment - 1) / alignment * alignment;
    if (rounded < size)
        return NULL;
    return aligned_alloc(alignment, rounded);
}

static void default_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

tb_allocator tb_default_allocator(void)
{
    tb_allocator a;
    a.alloc = default_alloc;
    a.free = default_free;
    a.user = NULL;
    return a;
}

void tb_ctx_init(tb_ctx *ctx)
{
    if (!ctx)
        return;
    memset(ctx, 0, sizeof *ctx);
    ctx->num_threads = omp_get_max_threads();
    if (ctx->num_threads < 1)
        ctx->num_threads = 1;
    ctx->allocator = tb_default_allocator();
    /* TB_KERNEL, when it names a family this CPU runs; else auto. */
    tb_kernel k;
    ctx->kernel = tb_kernel_from_env(NULL, &k) == TB_OK ? k : TB_KERNEL_AUTO;
}

const char *tb_ctx_error(const tb_ctx *ctx)
{
    return ctx ? ctx->error : "";
}

void tb_ctx_clear_error(tb_ctx *ctx)
{
    if (ctx)
        ctx->error[0] = '\0';
}

int tb_threads(const tb_ctx *ctx)
{
    return (ctx && ctx->num_threads > 1) ? ctx->num_threads : 1;
}

int tb_threads_for(const tb_ctx *ctx, double work)
{
    return work < 32768.0 ? 1 : tb_threads(ctx);
}

tb_status tb_fail(tb_ctx *ctx, tb_status status, const char *fn, const char *fmt, ...)
{
    if (ctx) {
        int n = snprintf(ctx->error, sizeof ctx->error, "%s: ", fn);
        if (n < 0 || (size_t)n >= sizeof ctx->error)
            n = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->error + n, sizeof ctx->error - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return status;
}

tb_status tb_ctx_set_error(tb_ctx *ctx, tb_status status, const char *fmt, ...)
{
    if (ctx && fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
        va_end(ap);
    }
    return status;
}

tb_status tb_alloc(tb_ctx *ctx, const char *fn, size_t bytes, void **out)
{
    *out = NULL;
    if (!ctx->allocator.alloc || !ctx->allocator.free)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "the context's allocator has a NULL hook");
    *out = ctx->allocator.alloc(ctx->allocator.user, bytes ? bytes : 1, 64);
    if (!*out)
        return tb_fail(ctx, TB_ERR_NO_MEMORY, fn, "could not allocate %zu bytes", bytes);
    return TB_OK;
}

void tb_free_with(const tb_allocator *allocator, void *ptr)
{
    if (ptr && allocator && allocator->free)
        allocator->free(allocator->user, ptr);
}
