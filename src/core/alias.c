/*
 * The one aliasing check every public function runs before it writes
 * (docs/conventions.md, "Aliasing"): outputs against the inputs the call
 * still reads, and against each other.
 */
#include <string.h>

#include "internal.h"

/* A span in canonical form: contiguous memory is one run, so two spans over
 * the same bytes compare equal whatever shapes described them. */
typedef struct region {
    uintptr_t base;
    size_t len, stride, rows, extent; /* extent: first byte to one past the last */
} region;

static tb_span make_span(const char *name, const void *p, size_t rows, size_t len,
                         size_t stride)
{
    tb_span s;
    memset(&s, 0, sizeof s);
    s.name = name;
    if (!p || rows == 0 || len == 0)
        return s; /* absent: touches nothing */
    s.base = (uintptr_t)p;
    s.rows = rows;
    s.len = len;
    s.stride = rows > 1 ? stride : len;
    return s;
}

/* Float counts to bytes; a count whose bytes do not fit marks the span. */
static tb_span float_rows(const char *name, const float *p, size_t rows, size_t len,
                          size_t stride)
{
    size_t lb, sb;
    const int ok = tb_mul_size(len, sizeof(float), &lb) && tb_mul_size(stride, sizeof(float), &sb);
    tb_span s = make_span(name, p, rows, ok ? lb : 1, ok ? sb : 1);
    s.overflow = !ok;
    return s;
}

tb_span tb_span_bytes(const char *name, const void *p, size_t bytes)
{
    return make_span(name, p, 1, bytes, bytes);
}

tb_span tb_span_array(const char *name, const void *p, size_t n, size_t elem_bytes)
{
    size_t bytes;
    const int ok = tb_mul_size(n, elem_bytes, &bytes);
    tb_span s = make_span(name, p, 1, ok ? bytes : 1, ok ? bytes : 1);
    s.overflow = !ok;
    return s;
}

tb_span tb_span_floats(const char *name, const float *p, size_t n)
{
    return tb_span_array(name, p, n, sizeof(float));
}

tb_span tb_span_rows(const char *name, const float *p, size_t rows, size_t len, size_t stride)
{
    return float_rows(name, p, rows, len, stride);
}

tb_span tb_span_tensor(const char *name, const tb_tensor *t)
{
    return t ? tb_span_floats(name, t->data, tb_tensor_numel(t)) : make_span(name, NULL, 0, 0, 0);
}

tb_span tb_span_heads(const char *name, const tb_heads *h, size_t heads, size_t head_dim)
{
    if (!h || !h->tensor || h->tensor->ndim != 3 || !h->tensor->data)
        return make_span(name, NULL, 0, 0, 0);
    const tb_tensor *t = h->tensor;
    size_t rows, len;
    if (!tb_mul_size(t->shape[0], t->shape[1], &rows) || !tb_mul_size(heads, head_dim, &len)) {
        tb_span s = make_span(name, t->data, 1, 1, 1);
        s.overflow = 1;
        return s;
    }
    return tb_span_rows(name, t->data + h->offset, rows, len, t->shape[2]);
}

/* Canonical form of a present span; 0 if its extent does not fit in the
 * address space (a span that ends past UINTPTR_MAX). */
static int canonical(const tb_span *s, region *r)
{
    size_t ext;
    if (s->overflow || !tb_mul_size(s->rows - 1, s->stride, &ext) ||
        !tb_add_size(ext, s->len, &ext) || ext - 1 > UINTPTR_MAX - s->base)
        return 0;
    r->base = s->base;
    r->extent = ext;
    if (s->rows == 1 || s->stride <= s->len) { /* runs touch: one run */
        r->rows = 1;
        r->len = r->stride = ext;
    } else {
        r->rows = s->rows;
        r->len = s->len;
        r->stride = s->stride;
    }
    return 1;
}

/* Whether the bytes [x, x + n) meet a run of b. The first run of b that
 * ends after x is the only candidate: later runs start later. */
static int run_meets(uintptr_t x, size_t n, const region *b)
{
    size_t j = 0;
    if (x >= b->base) {
        const size_t d = x - b->base;
        j = d < b->len ? 0 : (d - b->len) / b->stride + 1;
    }
    if (j >= b->rows)
        return 0;
    const uintptr_t start = b->base + j * b->stride; /* inside b's extent: no wrap */
    return start < x || start - x < n; /* b's run holds x, or starts inside [x, x + n) */
}

/* Whether two canonical regions share a byte. Runs of the one with fewer
 * runs are tested against the other, each in O(1). */
static int regions_meet(const region *a, const region *b)
{
    const int apart = a->base >= b->base ? a->base - b->base >= b->extent
                                         : b->base - a->base >= a->extent;
    if (apart)
        return 0;
    const region *few = a->rows <= b->rows ? a : b, *many = few == a ? b : a;
    for (size_t i = 0; i < few->rows; i++)
        if (run_meets(few->base + i * few->stride, few->len, many))
            return 1;
    return 0;
}

static int same_region(const region *a, const region *b)
{
    return a->base == b->base && a->len == b->len && a->stride == b->stride &&
           a->rows == b->rows;
}

/* "name" or "name of 'owner'", as two printf pieces. */
#define SPAN_FMT "%s%s%s%s"
#define SPAN_ARGS(s) (s)->name, (s)->owner ? " of '" : "", (s)->owner ? (s)->owner : "", \
                     (s)->owner ? "'" : ""

static tb_status check_extents(tb_ctx *ctx, const char *fn, const tb_span *s, size_t n)
{
    region r;
    for (size_t i = 0; i < n; i++)
        if (s[i].len && !canonical(&s[i], &r))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn,
                           SPAN_FMT " extends past the end of the address space",
                           SPAN_ARGS(&s[i]));
    return TB_OK;
}

tb_status tb_check_alias(tb_ctx *ctx, const char *fn, const tb_span *outs, size_t n_out,
                         const tb_span *ins, size_t n_in)
{
    tb_status s = check_extents(ctx, fn, outs, n_out);
    if (s == TB_OK)
        s = check_extents(ctx, fn, ins, n_in);
    if (s != TB_OK)
        return s;
    region o, x;
    for (size_t i = 0; i < n_out; i++) {
        if (!outs[i].len)
            continue;
        canonical(&outs[i], &o);
        for (size_t j = 0; j < n_in; j++) {
            if (!ins[j].len || !canonical(&ins[j], &x) || !regions_meet(&o, &x))
                continue;
            const int may_be_same = j < 32 && (outs[i].same_ok >> j & 1u);
            if (may_be_same && same_region(&o, &x))
                continue; /* exact in place, where the function allows it */
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, SPAN_FMT " overlaps " SPAN_FMT "%s",
                           SPAN_ARGS(&outs[i]), SPAN_ARGS(&ins[j]),
                           may_be_same ? " (only exactly the same memory is allowed)" : "");
        }
    }
    for (size_t i = 0; i < n_out; i++) {
        if (!outs[i].len)
            continue;
        canonical(&outs[i], &o);
        for (size_t k = i + 1; k < n_out; k++)
            if (outs[k].len && canonical(&outs[k], &x) && regions_meet(&o, &x))
                return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, SPAN_FMT " overlaps " SPAN_FMT,
                               SPAN_ARGS(&outs[i]), SPAN_ARGS(&outs[k]));
    }
    return TB_OK;
}

tb_status tb_spans_alloc(tb_ctx *ctx, const char *fn, size_t n, tb_span **out)
{
    size_t bytes;
    *out = NULL;
    if (!tb_mul_size(n, sizeof(tb_span), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%zu spans overflow", n);
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s == TB_OK)
        *out = mem;
    return s;
}
