/*
 * Pieces shared by the normalization blocks (internal): parameter storage,
 * argument checks, the cache header, the split mean representation, and
 * deterministic chunked column sums.
 */
#ifndef TB_BLOCKS_NORM_COMMON_H
#define TB_BLOCKS_NORM_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "../core/internal.h"

/* Rows per chunk of a column reduction: a function of N only (never of the
 * thread count), so partial sums and their combination order depend only on
 * the data's shape. Small N still yields several chunks to share out. */
static inline size_t tb_norm_chunk_rows(size_t rows)
{
    size_t c = rows / 32;
    return c < 4 ? 4 : c > 64 ? 64 : c;
}

/* Cache header written by forward, checked by backward (words 0 and 1
 * through tb_cache_check / tb_cache_match, the rest by BatchNorm itself). */
typedef struct tb_norm_cache_header {
    uint64_t magic;
    uint64_t count;  /* rows (LayerNorm/RMSNorm) or channels (BatchNorm) */
    uint64_t extra;  /* BatchNorm: counted rows; otherwise 0 */
    uint64_t flags;  /* BatchNorm: 1 if batch statistics were used */
    uint64_t check;  /* BatchNorm: hash of the padding mask; otherwise 0 */
} tb_norm_cache_header;

/* The names of a norm cache's one matched field: rows, or channels. */
extern const char *const tb_norm_rows_field[1];
extern const char *const tb_norm_channels_field[1];

/* Allocate `nvec` zeroed vectors of dim floats in one block. */
tb_status tb_norm_alloc(tb_ctx *ctx, const char *fn, size_t dim, size_t nvec, float **out);

/* Make p a 1-D parameter view of dim elements (grad NULL: not trainable). */
void tb_norm_vector(tb_param *p, float *value, float *grad, size_t dim);

/* eps finite and > 0. */
tb_status tb_norm_check_eps(tb_ctx *ctx, const char *fn, float eps);

/* Bytes of a norm cache: the header plus `per` floats for each of `count`
 * rows or channels (TB_ERR_NULL_ARG, TB_ERR_OVERFLOW). */
tb_status tb_norm_cache_bytes(size_t count, size_t per, size_t *bytes);
static inline float *tb_norm_cache_data(void *cache)
{
    return (float *)((unsigned char *)cache + sizeof(tb_norm_cache_header));
}
static inline const float *tb_norm_cache_cdata(const void *cache)
{
    return (const float *)((const unsigned char *)cache + sizeof(tb_norm_cache_header));
}

/*
 * A mean held as two floats, hi + lo = the double mean to ~48 bits. Then
 * (x - hi) - lo is an accurate deviation even when the mean is large and
 * the spread small (x - hi is exact for x near hi), without doing the
 * per-element work in double.
 */
static inline void tb_norm_split(double mean, float *hi, float *lo)
{
    *hi = (float)mean;
    *lo = (float)(mean - (double)*hi);
}

/*
 * Column sums over rows, deterministic for any thread count: row chunk q
 * (tb_norm_chunk_rows() rows) adds into partial[q * width ...]; then
 * tb_norm_combine() sums the chunks in order. scratch needs
 * nchunks * width doubles.
 */
static inline size_t tb_norm_chunks(size_t rows)
{
    const size_t c = tb_norm_chunk_rows(rows);
    return (rows + c - 1) / c;
}
/* One past the last row of chunk q. */
static inline size_t tb_norm_chunk_end(size_t q, size_t rows)
{
    const size_t e = (q + 1) * tb_norm_chunk_rows(rows);
    return e < rows ? e : rows;
}
void tb_norm_combine(const double *partial, size_t nchunks, size_t width, double *out);

/*
 * Row normalization shared by LayerNorm (center = 1) and RMSNorm (center =
 * 0, no shift): per row, mean (if centring) and 1/std over the C features
 * in double; y = xhat * w + b with xhat = ((x - hi) - lo) * rstd. stats, if
 * not NULL, receives hi, lo, rstd per row (3 floats; hi = lo = 0 without
 * centring). w and b may be NULL.
 */
void tb_rownorm_forward(tb_ctx *ctx, size_t rows, size_t C, int center, float eps,
                        const float *w, const float *b, const float *x, float *y, float *stats);

/*
 * Backward of tb_rownorm_forward: dx = rstd * (g - mean(g) - xhat *
 * mean(g * xhat)), g = dy * w (mean(g) only when centring). dw and db, if
 * not NULL, receive the added column sums of dy * xhat and dy, reduced over
 * fixed row chunks in order. Returns TB_ERR_NO_MEMORY/OVERFLOW for the
 * scratch; nothing is written then.
 */
tb_status tb_rownorm_backward(tb_ctx *ctx, const char *fn, size_t rows, size_t C, int center,
                              const float *w, const float *stats, const float *x,
                              const float *dy, float *dx, float *dw, float *db);

/* What the LayerNorm and RMSNorm entry points share: a block described by
 * its cache kind, width, centring, eps and parameter pointers (NULL where
 * absent; dw/db NULL where no gradient is wanted). The _op functions do the
 * argument, cache and overlap checks, then run the row kernel. */
typedef struct tb_rownorm_spec {
    const tb_cache_kind *kind;
    size_t dim;
    int center;
    float eps;
    const float *w, *b;
    float *dw, *db;
} tb_rownorm_spec;
tb_status tb_rownorm_forward_op(tb_ctx *ctx, const char *fn, const tb_rownorm_spec *sp,
                                const tb_tensor *x, tb_tensor *y, void *cache,
                                size_t cache_bytes);
tb_status tb_rownorm_backward_op(tb_ctx *ctx, const char *fn, const tb_rownorm_spec *sp,
                                 const tb_tensor *x, const tb_tensor *dy, const void *cache,
                                 size_t cache_bytes, tb_tensor *dx);

#endif /* TB_BLOCKS_NORM_COMMON_H */
