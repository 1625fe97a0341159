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

/* True if [a, a+an) and [b, b+bn) floats overlap. */
int tb_overlaps(const float *a, size_t an, const float *b, size_t bn);

/* An output of n floats may be the input itself (in place) or separate
 * memory, never a partial overlap (elements would be read after being
 * overwritten, by another thread): TB_ERR_INVALID_ARG then. */
tb_status tb_check_inplace(tb_ctx *ctx, const char *fn, const char *in_name, const float *in,
                           const char *out_name, const float *out, size_t n);

/* Allocate and free through ctx's allocator (64-byte aligned). */
tb_status tb_alloc(tb_ctx *ctx, const char *fn, size_t bytes, void **out);
void tb_free_with(const tb_allocator *allocator, void *ptr);

/* Fill a parameter's metadata (value/grad pointers set by the caller). */
void tb_param_set_shape(tb_param *p, size_t ndim, const size_t *shape);

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
