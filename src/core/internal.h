/*
 * Internal helpers shared by every source file: error recording, argument
 * and shape checks, overflow-checked sizes, thread count, owned storage.
 * Not installed; not part of the API.
 */
#ifndef TB_INTERNAL_H
#define TB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

#if defined(__GNUC__) || defined(__clang__)
#define TB_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define TB_PRINTF(fmt, args)
#endif

/* Record "fn: detail" in ctx (if any) and return status. */
tb_status tb_fail(tb_ctx *ctx, tb_status status, const char *fn, const char *fmt, ...)
    TB_PRINTF(4, 5);

/* Number of OpenMP threads a call may use (>= 1). */
int tb_threads(const tb_ctx *ctx);

/* Threads for a loop of about `work` scalar operations: 1 below a size where
 * starting a parallel region costs more than it saves. Results never depend
 * on this choice (work is partitioned by data). */
int tb_threads_for(const tb_ctx *ctx, double work);

/* a * b into *out; 0 on overflow. */
static inline int tb_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

/* a + b into *out; 0 on overflow. */
static inline int tb_add_size(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a)
        return 0;
    *out = a + b;
    return 1;
}

/* Whether the n floats at x are all finite: x - x is 0, or NaN for NaN and
 * +-Inf, summed in 8 fixed lanes (vectorisable, no branch per element). */
static inline int tb_all_finite(const float *x, size_t n)
{
    float acc[8] = {0};
    size_t d = 0;
    for (; d + 8 <= n; d += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += x[d + l] - x[d + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < n; d++)
        s += x[d] - x[d];
    return s == 0.0f;
}

/*
 * Validate a view: non-NULL, data non-NULL, 1 <= ndim <= TB_MAX_DIMS, every
 * size >= 1, numel * sizeof(float) fits. On success stores rows (product of
 * all but the last size) and cols (last size).
 */
tb_status tb_check_tensor(tb_ctx *ctx, const char *fn, const char *what, const tb_tensor *t,
                          size_t *rows, size_t *cols);

/* Validate a view and require rows x cols exactly. */
tb_status tb_check_matrix(tb_ctx *ctx, const char *fn, const char *what, const tb_tensor *t,
                          size_t rows, size_t cols);

/* Validate two views and require equal element counts; stores it in *numel. */
tb_status tb_check_same_numel(tb_ctx *ctx, const char *fn, const char *a_name,
                              const tb_tensor *a, const char *b_name, const tb_tensor *b,
                              size_t *numel);

/*
 * Aliasing (docs/conventions.md, "Aliasing"): the one check every public
 * function that writes caller memory runs before its first write.
 *
 * A span is the memory one argument touches: `rows` runs of `len` bytes,
 * `stride` bytes apart (a contiguous buffer is one run; the heads of a
 * packed (B, T, W) tensor are B*T runs of heads*D floats, W floats apart).
 * A span with len 0 (a NULL or absent argument) touches nothing.
 */
typedef struct tb_span {
    const char *name;  /* the argument as the function's header names it */
    const char *owner; /* NULL, or the parameter it belongs to: "name of 'owner'" */
    uintptr_t base;    /* first byte */
    size_t len;        /* bytes per run (0: absent) */
    size_t stride;     /* bytes from one run to the next */
    size_t rows;       /* number of runs */
    unsigned same_ok;  /* outputs: bit j set = may be exactly input j (in place) */
    int overflow;      /* the byte count does not fit in size_t */
} tb_span;

/* Constructors (sizes in bytes, floats, or the float geometry of a view).
 * tb_span_tensor and tb_span_heads expect views already validated. */
tb_span tb_span_bytes(const char *name, const void *p, size_t bytes);
tb_span tb_span_array(const char *name, const void *p, size_t n, size_t elem_bytes);
tb_span tb_span_floats(const char *name, const float *p, size_t n);
tb_span tb_span_rows(const char *name, const float *p, size_t rows, size_t len, size_t stride);
tb_span tb_span_tensor(const char *name, const tb_tensor *t);
tb_span tb_span_heads(const char *name, const tb_heads *h, size_t heads, size_t head_dim);

/* Input j of the call's input list, for tb_span_in_place(). */
#define TB_INPUT(j) (1u << (j))

/* An output that may be exactly the inputs in `inputs` (TB_INPUT bits):
 * the same memory, byte for byte, where the function is written for it. */
static inline tb_span tb_span_in_place(tb_span s, unsigned inputs)
{
    s.same_ok = inputs;
    return s;
}

/*
 * Fail fn with TB_ERR_INVALID_ARG, "<output> overlaps <input>", at the
 * first output that shares a byte with an input the call still reads after
 * its first write (unless it is exactly an input it may replace in place),
 * then at the first pair of outputs that share a byte; TB_ERR_OVERFLOW if a
 * span ends past the address space. Pairs are tested in list order
 * (outputs against inputs first), each in O(min(rows)).
 */
tb_status tb_check_alias(tb_ctx *ctx, const char *fn, const tb_span *outs, size_t n_out,
                         const tb_span *ins, size_t n_in);

/* Room for n spans (a parameter list's), from ctx's allocator. */
tb_status tb_spans_alloc(tb_ctx *ctx, const char *fn, size_t n, tb_span **out);

/* The arrays an attention mask points to, as spans (absent when NULL or
 * when mask is NULL): key_lengths (B int32), key_valid (B*Tk bytes), bias
 * (Tq*Tk floats). Defined with the masks, in src/blocks/attention.c. */
#define TB_MASK_SPANS 3
void tb_attention_mask_spans(const tb_attention_mask *mask, size_t B, size_t Tq, size_t Tk,
                             tb_span spans[TB_MASK_SPANS]);

/* Positions [t0, t0 + n) of every batch row of a KV cache's keys or values
 * (buf): B runs, max_len positions apart. Defined in src/blocks/kvcache.c. */
tb_span tb_kv_positions_span(const char *name, const tb_kv_cache *kv, const float *buf,
                             size_t t0, size_t n);

/*
 * Activation caches (src/core/cache_header.c): the one check every block
 * with a `*_cache_size()` query runs. A cache starts with a header of
 * uint64_t words: word 0 is the block's magic (which forward filled it),
 * words 1..n_fields what a backward call must find equal (shapes,
 * options), then any words of the block's own, then the data (aligned for
 * float).
 */
typedef struct tb_cache_kind {
    uint64_t magic;           /* header word 0 */
    const char *forward;      /* the call that fills it ("tb_layernorm_forward") */
    const char *size_query;   /* the call that sizes it ("tb_layernorm_cache_size") */
    size_t n_fields;          /* header words 1..n_fields that backward matches */
    size_t n_shape;           /* the first n_shape of them determine the size */
    const char *const *field; /* their names, for the messages */
} tb_cache_kind;

/* header_bytes + floats * sizeof(float) into *bytes; TB_ERR_NULL_ARG,
 * TB_ERR_OVERFLOW (no context: the size queries take none). */
tb_status tb_cache_bytes(size_t header_bytes, size_t floats, size_t *bytes);

/* A cache a call is handed: NULL is TB_OK unless `required` (then
 * TB_ERR_NULL_ARG); fewer than `need` bytes is TB_ERR_BUFFER_TOO_SMALL (the
 * detail names the shape fields of `fields`, which may be NULL, and the
 * size query); not aligned for float is TB_ERR_INVALID_ARG. */
tb_status tb_cache_check(tb_ctx *ctx, const char *fn, const tb_cache_kind *kind,
                         const void *cache, size_t cache_bytes, size_t need,
                         const uint64_t *fields, int required);

/* Backward's check of a cache that passed tb_cache_check(): written by
 * kind->forward (magic) for this call (words 1..n_fields equal to
 * fields[0..n_fields)); TB_ERR_STATE naming the first word that differs. */
tb_status tb_cache_match(tb_ctx *ctx, const char *fn, const tb_cache_kind *kind,
                         const void *cache, const uint64_t *fields);

/* Write the magic and fields[0..n_fields) at the start of cache. */
void tb_cache_write(void *cache, const tb_cache_kind *kind, const uint64_t *fields);

/* Allocate and free through ctx's allocator (64-byte aligned). */
tb_status tb_alloc(tb_ctx *ctx, const char *fn, size_t bytes, void **out);
void tb_free_with(const tb_allocator *allocator, void *ptr);

/* TB_ERR_STATE naming the first entry of list whose parameter is NULL or
 * has no values: the list still refers to a block that was freed (its
 * tb_param zeroed) or never initialised. Every function that reads or
 * writes the values or gradients of a list's parameters calls this first,
 * so such a list is refused before anything is read or changed. */
tb_status tb_check_param_list(tb_ctx *ctx, const char *fn, const tb_param_list *list);

/* Whether backward should accumulate into this parameter's gradient. */
static inline int tb_param_wants_grad(const tb_param *p)
{
    return p->trainable && p->grad != NULL;
}

/* Uniform float in [0, 1) for position index of stream key (24 bits). */
static inline float tb_rng_uniform_at(uint64_t key, uint64_t index)
{
    return (float)(tb_rng_bits_at(key, index) >> 40) * (1.0f / 16777216.0f);
}

#endif /* TB_INTERNAL_H */
