/*
 * The one check of activation-cache headers (see internal.h): the size and
 * alignment of a cache a call is handed, and whether the header a forward
 * call wrote matches the backward call that reads it.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

tb_status tb_cache_bytes(size_t header_bytes, size_t floats, size_t *bytes)
{
    size_t n;
    if (!bytes)
        return TB_ERR_NULL_ARG;
    if (!tb_mul_size(floats, sizeof(float), &n) || !tb_add_size(n, header_bytes, &n))
        return TB_ERR_OVERFLOW;
    *bytes = n;
    return TB_OK;
}

/* "rows = 3" or "B = 2, H = 4, Tq = 5": the shape words of fields. */
static void describe_shape(const tb_cache_kind *kind, const uint64_t *fields, char *out,
                           size_t cap)
{
    size_t at = 0;
    out[0] = '\0';
    for (size_t i = 0; fields && i < kind->n_shape && at < cap; i++) {
        int n = snprintf(out + at, cap - at, "%s%s = %llu", i ? ", " : "", kind->field[i],
                         (unsigned long long)fields[i]);
        if (n < 0)
            break;
        at += (size_t)n;
    }
}

tb_status tb_cache_check(tb_ctx *ctx, const char *fn, const tb_cache_kind *kind,
                         const void *cache, size_t cache_bytes, size_t need,
                         const uint64_t *fields, int required)
{
    if (!cache) {
        if (!required)
            return TB_OK;
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn,
                       "cache must not be NULL: pass the cache %s filled", kind->forward);
    }
    if (cache_bytes < need) {
        char shape[96];
        describe_shape(kind, fields, shape, sizeof shape);
        return tb_fail(ctx, TB_ERR_BUFFER_TOO_SMALL, fn,
                       "cache has %zu bytes; %zu needed%s%s (%s())", cache_bytes, need,
                       shape[0] ? " for " : "", shape, kind->size_query);
    }
    if ((uintptr_t)cache % sizeof(float) != 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "cache is not aligned for float");
    return TB_OK;
}

tb_status tb_cache_match(tb_ctx *ctx, const char *fn, const tb_cache_kind *kind,
                         const void *cache, const uint64_t *fields)
{
    uint64_t word;
    memcpy(&word, cache, sizeof word);
    if (word != kind->magic)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "cache was not filled by %s (its header is another block's, or none)",
                       kind->forward);
    for (size_t i = 0; i < kind->n_fields; i++) {
        memcpy(&word, (const unsigned char *)cache + (i + 1) * sizeof word, sizeof word);
        if (word != fields[i])
            return tb_fail(ctx, TB_ERR_STATE, fn,
                           "cache was not filled by %s for this call: it was filled with "
                           "%s = %llu, this call has %llu",
                           kind->forward, kind->field[i], (unsigned long long)word,
                           (unsigned long long)fields[i]);
    }
    return TB_OK;
}

void tb_cache_write(void *cache, const tb_cache_kind *kind, const uint64_t *fields)
{
    memcpy(cache, &kind->magic, sizeof kind->magic);
    memcpy((unsigned char *)cache + sizeof kind->magic, fields, kind->n_fields * sizeof *fields);
}
