/*
 * Scaled dot-product attention without a T x T matrix.
 *
 * Forward, per (batch row, head, block of 64 queries): stream over the
 * visible keys in tiles of 64 with an online softmax (running max m,
 * running sum l, running output, rescaled when m grows); out = acc / l, and
 * the log-sum-exp m + log l goes to the cache. Backward recomputes the
 * probabilities p_ij = exp(s_ij - lse_i) tile by tile:
 *   D_i  = dy_i . out_i
 *   dP   = dy V^T,  dS = scale * P o (dP - D)
 *   dV_j = sum_i P_ij dy_i,  dK_j = sum_i dS_ij q_i  (pass 1, per key block)
 *   dQ_i = sum_j dS_ij k_j                              (pass 2, per query block)
 * Two passes so that every gradient row has a single owner (no atomics, no
 * per-thread partial sums): results are bitwise identical for any thread
 * count. The tile products (Q K^T, P V, P^T dO, dO V^T, dS^T Q, dS K) run on
 * the GEMM micro-kernels; the exponentials on a vectorised exp
 * (src/kernels/vexp.h). Attention dropout regenerates its mask from a
 * counter-based stream in both passes.
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "../core/internal.h"
#include "../kernels/gemm.h"
#include "../kernels/vexp.h"

#define ATTN_MAGIC 0x7462415433ULL /* "tbAT3": the header records the mode */

/* The cache's header: the magic, then everything the cached log-sum-exp
 * values depend on (except the data and the deterministic masks), which
 * backward matches (tb_cache_match): a cache from a call of another shape
 * or with another dropout draw is refused. */
enum { ATTN_FIELDS = 11, ATTN_MODE_FIELD = 7 };
typedef struct attn_header {
    uint64_t magic;
    uint64_t field[ATTN_FIELDS]; /* as attn_fields names them */
} attn_header;

/* The mode is recorded so that backward follows the forward's arithmetic:
 * after an inference forward the mask's dropout is ignored, as forward
 * ignored it. */
static const char *const attn_fields[ATTN_FIELDS] = {
    "B", "H", "Tq", "Tk", "D", "n_kv_heads", "options (scale, window, causal)",
    "mode (1: training)", "dropout p (bits)", "dropout key", "dropout counter"};
/* The size depends on B, H and Tq. */
static const tb_cache_kind ATTN_CACHE = {ATTN_MAGIC, "tb_attention_forward",
                                         "tb_attention_cache_size", ATTN_FIELDS, 3, attn_fields};

tb_attention_config tb_attention_default_config(size_t n_heads, size_t head_dim)
{
    tb_attention_config c;
    memset(&c, 0, sizeof c);
    c.n_heads = n_heads;
    c.n_kv_heads = n_heads;
    c.head_dim = head_dim;
    return c;
}

tb_status tb_attention_cache_size(const tb_attention_config *cfg, size_t batch, size_t t_q,
                                  size_t *bytes)
{
    size_t n;
    if (!cfg || !bytes)
        return TB_ERR_NULL_ARG;
    if (!tb_mul_size(batch, cfg->n_heads, &n) || !tb_mul_size(n, t_q, &n))
        return TB_ERR_OVERFLOW;
    return tb_cache_bytes(sizeof(attn_header), n, bytes);
}

tb_status tb_attention_dropout_draw(tb_ctx *ctx, const tb_attention_config *cfg,
                                    tb_attention_mask *mask, tb_rng *rng, float p, size_t batch,
                                    size_t t_q, size_t t_k)
{
    const char *fn = __func__;
    if (!cfg || !mask || !rng)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "cfg, mask and rng must not be NULL");
    if (!(p >= 0.0f && p < 1.0f)) /* also rejects NaN */
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "p = %g is outside [0, 1)", (double)p);
    size_t n;
    if (!tb_mul_size(batch, cfg->n_heads, &n) || !tb_mul_size(n, t_q, &n) ||
        !tb_mul_size(n, t_k, &n) || (uint64_t)n != n)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn,
                       "B x H x Tq x Tk = %zu x %zu x %zu x %zu weights overflow", batch,
                       cfg->n_heads, t_q, t_k);
    mask->dropout = p;
    mask->dropout_key = rng->key;
    mask->dropout_counter = rng->counter;
    rng->counter += (uint64_t)n;
    return TB_OK;
}

/* Everything the loops need, validated once. */
typedef struct attn {
    size_t B, H, Hkv, group, D, Tq, Tk;
    size_t wq, wk, wv;       /* row strides */
    const float *q, *k, *v;  /* first element of head 0 */
    float scale;
    int causal;
    size_t window;
    const int32_t *key_lengths;
    const uint8_t *key_valid;
    const float *bias;
    tb_mode mode;             /* inference: no dropout, whatever the mask says */
    float drop_p, drop_scale; /* dropout probability and 1 / (1 - p) */
    uint64_t drop_key, drop_counter;
} attn;

/* Training or inference arithmetic: in inference the mask's dropout (already
 * validated by setup) does not apply. */
static void set_mode(attn *a, tb_mode mode)
{
    a->mode = mode;
    if (mode == TB_MODE_INFERENCE) {
        a->drop_p = 0.0f;
        a->drop_scale = 1.0f;
    }
}

static tb_status check_heads(tb_ctx *ctx, const char *fn, const char *name, const tb_heads *o,
                             size_t heads, size_t D, size_t *B, size_t *T, size_t *W)
{
    if (!o || !o->tensor)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "%s is NULL", name);
    size_t rows, cols;
    tb_status s = tb_check_tensor(ctx, fn, name, o->tensor, &rows, &cols);
    if (s != TB_OK)
        return s;
    if (o->tensor->ndim != 3)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s must be 3-D (B, T, W); it has %zu dimensions",
                       name, o->tensor->ndim);
    size_t need;
    if (!tb_mul_size(heads, D, &need) || !tb_add_size(need, o->offset, &need) || need > cols)
        return tb_fail(ctx, TB_ERR_SHAPE, fn,
                       "%s has %zu columns; offset %zu + %zu heads x %zu do not fit", name, cols,
                       o->offset, heads, D);
    *B = o->tensor->shape[0];
    *T = o->tensor->shape[1];
    *W = cols;
    return TB_OK;
}

static tb_status setup(tb_ctx *ctx, const char *fn, const tb_attention_config *cfg,
                       const tb_attention_mask *mask, const tb_heads *q, const tb_heads *k,
                       const tb_heads *v, attn *a)
{
    if (!ctx || !cfg)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and cfg must not be NULL");
    memset(a, 0, sizeof *a);
    a->mode = TB_MODE_TRAINING;
    a->drop_scale = 1.0f;
    a->H = cfg->n_heads;
    a->Hkv = cfg->n_kv_heads ? cfg->n_kv_heads : cfg->n_heads;
    a->D = cfg->head_dim;
    if (a->H == 0 || a->D == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "n_heads (%zu) and head_dim (%zu) must be >= 1",
                       a->H, a->D);
    if (a->H % a->Hkv != 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "n_kv_heads %zu does not divide n_heads %zu",
                       a->Hkv, a->H);
    a->group = a->H / a->Hkv;
    if (cfg->scale != 0.0f && !(cfg->scale > 0.0f && isfinite(cfg->scale)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "scale %g must be finite and > 0 (or 0)",
                       (double)cfg->scale);
    a->scale = cfg->scale != 0.0f ? cfg->scale : (float)(1.0 / sqrt((double)a->D));
    a->causal = cfg->causal != 0;
    a->window = cfg->window;
    size_t bq = 0, bk = 0, bv = 0, tk2 = 0;
    tb_status s;
    if ((s = check_heads(ctx, fn, "q", q, a->H, a->D, &bq, &a->Tq, &a->wq)) != TB_OK ||
        (s = check_heads(ctx, fn, "k", k, a->Hkv, a->D, &bk, &a->Tk, &a->wk)) != TB_OK ||
        (s = check_heads(ctx, fn, "v", v, a->Hkv, a->D, &bv, &tk2, &a->wv)) != TB_OK)
        return s;
    if (bk != bq || bv != bq)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "batch sizes differ: q %zu, k %zu, v %zu", bq, bk,
                       bv);
    if (tk2 != a->Tk)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "k has %zu positions but v has %zu", a->Tk, tk2);
    a->B = bq;
    a->q = q->tensor->data + q->offset;
    a->k = k->tensor->data + k->offset;
    a->v = v->tensor->data + v->offset;
    if (mask) {
        a->key_lengths = mask->key_lengths;
        a->key_valid = mask->key_valid;
        a->bias = mask->bias;
        if (a->key_lengths)
            for (size_t b = 0; b < a->B; b++)
                if (a->key_lengths[b] < 0 || (size_t)a->key_lengths[b] > a->Tk)
                    return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                                   "key_lengths[%zu] = %ld is outside [0, %zu]", b,
                                   (long)a->key_lengths[b], a->Tk);
        if (!(mask->dropout >= 0.0f && mask->dropout < 1.0f))
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dropout %g must be in [0, 1)",
                           (double)mask->dropout);
        a->drop_p = mask->dropout;
        a->drop_scale = 1.0f / (1.0f - mask->dropout);
        a->drop_key = mask->dropout_key;
        a->drop_counter = mask->dropout_counter;
    }
    return TB_OK;
}

/* Keys [*lo, *hi) that query i of batch row b may see before per-key masks. */
static void key_range(const attn *a, size_t b, size_t i, size_t *lo, size_t *hi)
{
    /* diag = i + Tk - Tq (may be negative): the last key query i may see. */
    const long long diag = (long long)i + (long long)a->Tk - (long long)a->Tq;
    long long l = 0, h = (long long)a->Tk;
    if (a->causal || a->window)
        h = diag + 1 < h ? diag + 1 : h;
    if (a->window)
        l = diag + 1 - (long long)a->window > 0 ? diag + 1 - (long long)a->window : 0;
    if (a->key_lengths && (long long)a->key_lengths[b] < h)
        h = a->key_lengths[b];
    if (h < l)
        h = l;
    *lo = (size_t)(l > 0 ? l : 0);
    *hi = (size_t)(h > 0 ? h : 0);
}

/* Queries [*lo, *hi) of batch row b that may see key j (the inverse of
 * key_range for the causal, window and length limits; per-key masks and the
 * bias are applied by the caller). */
static void query_range(const attn *a, size_t b, size_t j, size_t *lo, size_t *hi)
{
    const long long shift = (long long)a->Tk - (long long)a->Tq; /* diag(i) = i + shift */
    long long l = 0, h = (long long)a->Tq;
    if (a->causal || a->window) /* j <= diag(i)  <=>  i >= j - shift */
        l = (long long)j - shift > 0 ? (long long)j - shift : 0;
    if (a->window) /* j >= diag(i) + 1 - w  <=>  i <= j + w - 1 - shift */
        h = (long long)j + (long long)a->window - shift < h
                ? (long long)j + (long long)a->window - shift
                : h;
    if (a->key_lengths && (long long)j >= (long long)a->key_lengths[b])
        h = l; /* the key is past this row's length: no query sees it */
    if (h < l)
        h = l;
    *lo = (size_t)(l > 0 ? l : 0);
    *hi = (size_t)(h > 0 ? h : 0);
}

/* Dot product of two D-vectors with 8 fixed lanes (vectorisable). */
static float dot(const float *x, const float *y, size_t n)
{
    float acc[8] = {0};
    size_t d = 0;
    for (; d + 8 <= n; d += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += x[d + l] * y[d + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < n; d++)
        s += x[d] * y[d];
    return s;
}

/* Score of query i (head h) against key j (its kv head), or -inf if masked
 * (then without reading q or k: a masked key's NaN or Inf plus a -inf bias
 * would be NaN, not -inf). */
static float score(const attn *a, size_t b, size_t h, size_t i, size_t j)
{
    if (a->key_valid && !a->key_valid[b * a->Tk + j])
        return -INFINITY;
    if (a->bias && a->bias[i * a->Tk + j] == -INFINITY)
        return -INFINITY;
    const float *qi = a->q + (b * a->Tq + i) * a->wq + h * a->D;
    const float *kj = a->k + (b * a->Tk + j) * a->wk + (h / a->group) * a->D;
    float s = a->scale * dot(qi, kj, a->D);
    if (a->bias)
        s += a->bias[i * a->Tk + j];
    return s;
}

static attn_header header_of(const attn *a)
{
    uint32_t scale_bits, p_bits;
    memcpy(&scale_bits, &a->scale, sizeof scale_bits);
    memcpy(&p_bits, &a->drop_p, sizeof p_bits);
    const int dropout = a->drop_p > 0.0f; /* the draw matters only when dropout is on */
    attn_header h = {ATTN_MAGIC,
                     {a->B, a->H, a->Tq, a->Tk, a->D, a->Hkv,
                      ((uint64_t)scale_bits << 32) ^ ((uint64_t)a->window << 1) ^
                          (uint64_t)a->causal,
                      a->mode == TB_MODE_TRAINING, p_bits, dropout ? a->drop_key : 0,
                      dropout ? a->drop_counter : 0}};
    return h;
}

/* The cache a call is handed (NULL allowed unless required). */
static tb_status check_cache(tb_ctx *ctx, const char *fn, const attn *a, const void *cache,
                             size_t bytes, int required)
{
    tb_attention_config c = tb_attention_default_config(a->H, a->D);
    size_t need;
    if (tb_attention_cache_size(&c, a->B, a->Tq, &need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    const attn_header h = header_of(a);
    return tb_cache_check(ctx, fn, &ATTN_CACHE, cache, bytes, need, h.field, required);
}

/* ---- Aliasing (docs/conventions.md): no in-place form; every output is
 * checked against every operand and mask array, which the tiles read to
 * the end, and against the other outputs. ---------------------------------- */

void tb_attention_mask_spans(const tb_attention_mask *mask, size_t B, size_t Tq, size_t Tk,
                             tb_span spans[TB_MASK_SPANS])
{
    const tb_attention_mask none = {NULL, NULL, NULL, 0.0f, 0, 0};
    const tb_attention_mask *m = mask ? mask : &none;
    spans[0] = tb_span_array("key_lengths", m->key_lengths, B, sizeof(int32_t));
    spans[1] = tb_span_bytes("key_valid", m->key_valid, B * Tk);
    spans[2] = tb_span_rows("bias", m->bias, Tq, Tk, Tk);
}

/* The cache's header and log-sum-exp rows (its size was checked before). */
static tb_span cache_span(const attn *a, const void *cache)
{
    const size_t rows = a->B * a->H * a->Tq;
    return tb_span_bytes("cache", cache, sizeof(attn_header) + rows * sizeof(float));
}

/* Operands q, k, v (v may be NULL: tb_attention_probs), then the masks. */
enum { OPERAND_SPANS = 3 + TB_MASK_SPANS };
static void operand_spans(const attn *a, const tb_attention_mask *mask, const tb_heads *q,
                          const tb_heads *k, const tb_heads *v, tb_span spans[OPERAND_SPANS])
{
    spans[0] = tb_span_heads("q", q, a->H, a->D);
    spans[1] = tb_span_heads("k", k, a->Hkv, a->D);
    spans[2] = tb_span_heads("v", v, a->Hkv, a->D);
    tb_attention_mask_spans(mask, a->B, a->Tq, a->Tk, spans + 3);
}

/* ---- Tiles ---------------------------------------------------------------
 * Work is cut into tiles of BQ queries x BK keys, aligned to multiples of
 * BQ and BK from position 0, so a query meets the same key tiles whatever
 * other queries share its block: incremental decoding (Tq = 1) gives the
 * same bits as the full pass. Tile products run on the GEMM micro-kernels
 * (tb_gemm_serial) on the calling thread. A task (a block of queries, or of
 * keys in the dK/dV pass) is computed whole by one thread in a fixed order,
 * so the dynamic schedule that balances causal work cannot change a bit. */
#define BQ 64
#define BK 64

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* One thread's scratch: the score tile, a second tile (dP), packing space
 * for tb_gemm_serial, per-row running statistics, a copy of one operand
 * tile (max(BQ, BK) rows of D, for products that must skip masked rows;
 * see masked_product) and the tile's mask (see tile_mask). */
typedef struct tile_ws {
    float *s, *dp, *gemm, *m, *l, *rows;
    size_t gemm_floats;       /* packing space at gemm */
    unsigned char *vis;       /* BQ x BK: 1 where query r sees key c */
    unsigned char *key_hid;   /* BK: queries of the tile key c is masked for */
    unsigned char *query_hid; /* BQ: keys of the tile query r is masked for */
    int *failed;              /* set (shared by all threads) if a tile product failed */
} tile_ws;

_Static_assert(BQ <= 255 && BK <= 255, "the masked counts of a tile are kept in bytes");

/* Every tile product has M <= max(BQ, BK) rows and N, K <= max(D, BQ, BK)
 * (K is a query count in the dV and dK products); the packing bound comes
 * from the kernels ctx's family runs. */
static size_t gemm_ws_floats(const tb_ctx *ctx, size_t D)
{
    const size_t m = BQ > BK ? BQ : BK, big = D > m ? D : m;
    return (tb_gemm_serial_work(ctx, m, big, big) + 15) / 16 * 16;
}

/* Floats of the operand copy and of the mask bytes (rounded up). */
static size_t rows_floats(size_t D)
{
    return (BQ > BK ? BQ : BK) * D;
}

#define MASK_FLOATS ((BQ * BK + BQ + BK + sizeof(float) - 1) / sizeof(float))

/* Whole multiples of 16 floats, so that every thread's scratch starts on its
 * own cache line. */
static size_t ws_floats(const tb_ctx *ctx, size_t D)
{
    const size_t n = 2 * BQ * BK + 2 * BQ + rows_floats(D) + MASK_FLOATS + gemm_ws_floats(ctx, D);
    return (n + 15) / 16 * 16;
}

static tile_ws ws_at(const tb_ctx *ctx, float *base, size_t D, size_t t, int *failed)
{
    tile_ws w;
    w.s = base + t * ws_floats(ctx, D);
    w.dp = w.s + BQ * BK;
    w.m = w.dp + BQ * BK;
    w.l = w.m + BQ;
    w.rows = w.l + BQ;
    w.vis = (unsigned char *)(w.rows + rows_floats(D));
    w.key_hid = w.vis + BQ * BK;
    w.query_hid = w.key_hid + BK;
    w.gemm = w.rows + rows_floats(D) + MASK_FLOATS;
    w.gemm_floats = gemm_ws_floats(ctx, D);
    w.failed = failed;
    return w;
}

/* Scratch for `threads` threads (the call's only allocation). */
static tb_status ws_alloc(tb_ctx *ctx, const char *fn, size_t D, int threads, float **ws)
{
    size_t bytes;
    void *mem = NULL;
    if (!tb_mul_size(ws_floats(ctx, D), (size_t)threads, &bytes) ||
        !tb_mul_size(bytes, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "attention scratch size overflows");
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    *ws = mem;
    return s;
}

/* C = alpha op(A) op(B) + beta C on the calling thread, in its scratch. A
 * failure means the scratch bound above is wrong (a library bug, caught
 * and by the debug build's sentinel check): it is recorded and the call
 * reports it. */
static void tile_gemm(const tb_ctx *ctx, const tile_ws *w, int ta, int tb, size_t M, size_t N,
                      size_t K, float alpha, const float *A, size_t lda, const float *B,
                      size_t ldb, float beta, float *C, size_t ldc)
{
    if (tb_gemm_serial(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, w->gemm,
                       w->gemm_floats) != TB_OK) {
#pragma omp atomic write
        *w->failed = 1;
    }
}

static tb_status tiles_failed(tb_ctx *ctx, const char *fn)
{
    return tb_fail(ctx, TB_ERR_BUFFER_TOO_SMALL, fn,
                   "internal error: a tile product did not fit its scratch (a libtblocks bug; "
                   "outputs are not valid)");
}

/* Threads for `tasks` tasks of about `work_per_task` multiply-adds each. */
static int threads_for_tasks(const tb_ctx *ctx, size_t tasks, double work_per_task)
{
    int t = tb_threads_for(ctx, (double)tasks * work_per_task);
    return (size_t)t > tasks ? (int)tasks : t;
}

/* ---- Masked pairs ----------------------------------------------------------
 * A masked (query, key) pair must contribute nothing: not 0 x value, since
 * padding rows often hold garbage and a GEMM computes 0 * NaN = NaN. The
 * scores of masked pairs are overwritten with -inf (never computed from
 * them), their probabilities and score gradients are then exactly 0, and
 * the four products that multiply those zeros into operand rows (P V,
 * dS K, dS^T Q, P^T dO) go through masked_product, which keeps a
 * non-finite row out of the outputs it is masked for. A zero times a finite
 * value adds exactly nothing to a GEMM sum (the kernels' sums start at +0,
 * which adding +-0 leaves unchanged), so finite rows need no care: the
 * usual tile products run unless a masked row holds NaN or Inf. */

/* Which pairs of a tile (mq queries x jn keys) are masked. When `partial`
 * is 0 every pair is visible and the byte arrays are not filled. */
typedef struct tile_mask {
    size_t mq, jn;
    int partial;     /* some pair is masked */
    int any_visible; /* some pair is visible */
    const unsigned char *vis;       /* mq x jn, row stride BK: 1 = visible */
    const unsigned char *key_hid;   /* jn: how many of the mq queries key c is masked for */
    const unsigned char *query_hid; /* mq: how many of the jn keys query r is masked for */
} tile_mask;

/* Mask the score tile S (mq x jn, row stride BK) of queries i0.. and keys
 * j0.. of batch row b: -inf outside each query's key range, on invalid
 * keys and where the bias is -inf (whatever the score was: a garbage key's
 * NaN or +Inf plus -inf would be NaN), plus the additive bias elsewhere.
 * Interior tiles of an unmasked call are left alone. Returns which pairs
 * are masked (kept in w). */
static tile_mask mask_tile(const attn *a, size_t b, size_t i0, size_t mq, size_t j0, size_t jn,
                           float *S, const tile_ws *w)
{
    tile_mask tm = {mq, jn, 0, 1, w->vis, w->key_hid, w->query_hid};
    size_t lo_first, hi_first, lo_last, hi_last;
    key_range(a, b, i0, &lo_first, &hi_first);
    key_range(a, b, i0 + mq - 1, &lo_last, &hi_last);
    if (!a->bias && !a->key_valid && lo_last <= j0 && hi_first >= j0 + jn)
        return tm; /* every query of the tile sees every key of it */
    const uint8_t *valid = a->key_valid ? a->key_valid + b * a->Tk + j0 : NULL;
    memset(w->key_hid, 0, jn);
    size_t hidden = 0;
    for (size_t r = 0; r < mq; r++) {
        float *row = S + r * BK;
        unsigned char *vis = w->vis + r * BK;
        size_t lo, hi;
        key_range(a, b, i0 + r, &lo, &hi);
        /* The row's key range within the tile: [c0, c1). */
        const size_t c0 = lo > j0 ? min_sz(lo - j0, jn) : 0;
        const size_t c1 = hi > j0 + c0 ? min_sz(hi - j0, jn) : c0;
        size_t row_hidden = jn - (c1 - c0);
        for (size_t c = 0; c < c0; c++)
            row[c] = -INFINITY, w->key_hid[c]++;
        for (size_t c = c1; c < jn; c++)
            row[c] = -INFINITY, w->key_hid[c]++;
        memset(vis, 0, jn);
        memset(vis + c0, 1, c1 - c0);
        if (valid || a->bias) {
            const float *bias = a->bias ? a->bias + (i0 + r) * a->Tk + j0 : NULL;
            for (size_t c = c0; c < c1; c++) {
                if ((valid && !valid[c]) || (bias && bias[c] == -INFINITY)) {
                    row[c] = -INFINITY;
                    w->key_hid[c]++;
                    vis[c] = 0;
                    row_hidden++;
                } else if (bias) {
                    row[c] += bias[c];
                }
            }
        }
        w->query_hid[r] = (unsigned char)row_hidden;
        hidden += row_hidden;
    }
    tm.partial = hidden > 0;
    tm.any_visible = hidden < mq * jn;
    return tm;
}

/* C (n_out x D, ldc) += op(A) X: one of the products of a tile's
 * coefficients (P or dS: zero at masked pairs) and operand rows X (n_in
 * rows of D floats, ldx apart). keys_out = 0: the outputs are the tile's
 * queries and X its keys' rows (P V, dS K), op(A) = A (mq x jn, row stride
 * BK); keys_out = 1: the outputs are its keys and X its queries' rows
 * (dS^T Q, P^T dO), op(A) = A^T.
 * The tile product runs as it is unless a row of X that is masked for some
 * output holds NaN or Inf. Then X is copied with those rows zeroed: one
 * product when every output is masked from every such row (padding: the
 * common case), else one one-row product per output with a copy that keeps
 * the rows that output sees. The GEMM gives a row of a product the bits of
 * its one-row product and a zero row adds exactly what 0 x finite adds, so
 * every path gives the bits of the plain product on finite data. */
static void masked_product(const tb_ctx *ctx, const tile_ws *w, const tile_mask *tm,
                           int keys_out, size_t D, const float *A, const float *X, size_t ldx,
                           float *C, size_t ldc)
{
    const size_t n_out = keys_out ? tm->jn : tm->mq, n_in = keys_out ? tm->mq : tm->jn;
    if (!tm->partial) {
        tile_gemm(ctx, w, keys_out, 0, n_out, D, n_in, 1.0f, A, BK, X, ldx, 1.0f, C, ldc);
        return;
    }
    /* Masked counts of the input rows; a row masked for all outputs is dead. */
    const unsigned char *hid = keys_out ? tm->query_hid : tm->key_hid;
    unsigned char bad[BQ > BK ? BQ : BK];
    size_t n_bad = 0;
    int all_dead = 1;
    for (size_t k = 0; k < n_in; k++)
        if (hid[k] && !tb_all_finite(X + k * ldx, D)) {
            bad[n_bad++] = (unsigned char)k;
            all_dead &= hid[k] == n_out;
        }
    if (n_bad == 0) {
        tile_gemm(ctx, w, keys_out, 0, n_out, D, n_in, 1.0f, A, BK, X, ldx, 1.0f, C, ldc);
        return;
    }
    for (size_t k = 0; k < n_in; k++)
        memcpy(w->rows + k * D, X + k * ldx, D * sizeof(float));
    for (size_t e = 0; e < n_bad; e++)
        memset(w->rows + bad[e] * D, 0, D * sizeof(float));
    if (all_dead) {
        tile_gemm(ctx, w, keys_out, 0, n_out, D, n_in, 1.0f, A, BK, w->rows, D, 1.0f, C, ldc);
        return;
    }
    for (size_t o = 0; o < n_out; o++) {
        for (size_t e = 0; e < n_bad; e++) {
            const size_t k = bad[e];
            const int seen = keys_out ? tm->vis[k * BK + o] : tm->vis[o * BK + k];
            if (seen) /* garbage this output sees is its own */
                memcpy(w->rows + k * D, X + k * ldx, D * sizeof(float));
            else
                memset(w->rows + k * D, 0, D * sizeof(float));
        }
        /* Row o of op(A): row o of A, or its column o. */
        const float *ao = keys_out ? A + o : A + o * BK;
        tile_gemm(ctx, w, keys_out, 0, 1, D, n_in, 1.0f, ao, BK, w->rows, D, 1.0f, C + o * ldc,
                  ldc);
    }
}

/* Attention dropout on a probability tile: P[r][c] *= keep(b, h, i0+r, j0+c)
 * / (1 - p), where keep is 0 with probability p, drawn from the counter
 * stream at position counter + ((b*H + h)*Tq + i)*Tk + j. */
static void dropout_tile(const attn *a, size_t b, size_t h, size_t i0, size_t mq, size_t j0,
                         size_t jn, float *P)
{
    for (size_t r = 0; r < mq; r++) {
        const uint64_t base =
            a->drop_counter + ((b * a->H + h) * a->Tq + i0 + r) * (uint64_t)a->Tk + j0;
        float *row = P + r * BK;
        for (size_t c = 0; c < jn; c++)
            row[c] = tb_rng_uniform_at(a->drop_key, base + c) >= a->drop_p
                         ? row[c] * a->drop_scale
                         : 0.0f;
    }
}

/* Forward for queries [i0, i0+BQ) of batch row b, head h: writes their
 * output rows and log-sum-exps. */
static void forward_block(const tb_ctx *ctx, const attn *a, const tb_vexp_ops *vx, size_t b,
                          size_t h, size_t i0, float *out, float *lse, const tile_ws *w)
{
    const size_t D = a->D, HD = a->H * a->D, kvh = h / a->group;
    const size_t mq = min_sz(BQ, a->Tq - i0);
    const float *q = a->q + (b * a->Tq + i0) * a->wq + h * D;
    float *o = out + (b * a->Tq + i0) * HD + h * D;
    for (size_t r = 0; r < mq; r++) {
        memset(o + r * HD, 0, D * sizeof(float));
        w->m[r] = -INFINITY;
        w->l[r] = 0.0f;
    }
    size_t lo, hi, lo_last, hi_last;
    key_range(a, b, i0, &lo, &hi);
    key_range(a, b, i0 + mq - 1, &lo_last, &hi_last);
    for (size_t j0 = lo / BK * BK; j0 < hi_last; j0 += BK) {
        const size_t jn = min_sz(BK, hi_last - j0);
        tile_gemm(ctx, w, 0, 1, mq, jn, D, a->scale, q, a->wq,
                       a->k + (b * a->Tk + j0) * a->wk + kvh * D, a->wk, 0.0f, w->s, BK);
        const tile_mask tm = mask_tile(a, b, i0, mq, j0, jn, w->s, w);
        /* A tile with nothing visible would change nothing (its maximum is
         * -inf, its sum 0, its products add zeros): skip it. */
        if (!tm.any_visible)
            continue;
        /* Online softmax: rescale what was accumulated when the row's
         * maximum grows. */
        for (size_t r = 0; r < mq; r++) {
            float *row = w->s + r * BK;
            const float tmax = vx->max(row, jn);
            const float m_new = tmax > w->m[r] ? tmax : w->m[r];
            if (m_new == -INFINITY) { /* nothing visible yet */
                memset(row, 0, jn * sizeof(float));
                continue;
            }
            float corr = w->m[r];
            vx->exp_sub_sum(&corr, &corr, 1, m_new); /* exp(m_old - m_new); 0 at the start */
            const float sum = vx->exp_sub_sum(row, row, jn, m_new);
            w->l[r] = w->l[r] * corr + sum;
            w->m[r] = m_new;
            if (corr != 1.0f) {
                float *orow = o + r * HD;
                for (size_t d = 0; d < D; d++)
                    orow[d] *= corr;
            }
        }
        if (a->drop_p > 0.0f)
            dropout_tile(a, b, h, i0, mq, j0, jn, w->s);
        masked_product(ctx, w, &tm, 0, D, w->s, a->v + (b * a->Tk + j0) * a->wv + kvh * D, a->wv,
                       o, HD);
    }
    for (size_t r = 0; r < mq; r++) {
        const float l = w->l[r];
        if (l > 0.0f) {
            float *orow = o + r * HD;
            const float inv = 1.0f / l;
            for (size_t d = 0; d < D; d++)
                orow[d] *= inv;
        }
        if (lse)
            lse[r] = l > 0.0f ? w->m[r] + logf(l) : -INFINITY; /* -inf: fully masked */
    }
}

/* Probabilities of a score tile in place: P = exp(S - lse) per row (0 for
 * fully masked queries). lse points at the block's first query. */
static void probs_tile(const tb_vexp_ops *vx, size_t mq, size_t jn, const float *lse, float *S)
{
    for (size_t r = 0; r < mq; r++) {
        float *row = S + r * BK;
        if (lse[r] == -INFINITY)
            memset(row, 0, jn * sizeof(float));
        else
            vx->exp_sub_sum(row, row, jn, lse[r]);
    }
}

/* One row of dS = scale * P o (dP - delta), and the same with zeros where
 * vis (0 or 1) is 0 (restrict: the stores cannot change P or vis, so both
 * loops vectorise). */
static void dscores_row(float scale, size_t jn, const float *restrict p, float dr,
                        float *restrict g)
{
    for (size_t c = 0; c < jn; c++)
        g[c] = scale * (p[c] * (g[c] - dr));
}

static void dscores_row_masked(float scale, size_t jn, const float *restrict p, float dr,
                               const unsigned char *restrict vis, float *restrict g)
{
    for (size_t c = 0; c < jn; c++) {
        const float x = scale * (p[c] * (g[c] - dr));
        uint32_t bits; /* x, or +0 where vis is 0 (a bit mask: no branch) */
        memcpy(&bits, &x, sizeof bits);
        bits &= 0u - (uint32_t)vis[c];
        memcpy(&g[c], &bits, sizeof bits);
    }
}

/* dS = scale * P o (dP' - delta) in place of dP, where dP' is dP with the
 * dropout mask applied (the gradient flows only through kept weights);
 * exactly 0 at masked pairs (dP = dO V^T there may be 0 x garbage). */
static void dscores_tile(const attn *a, size_t b, size_t h, size_t i0, const tile_mask *tm,
                         size_t j0, const float *P, const float *delta, float *dP)
{
    const size_t mq = tm->mq, jn = tm->jn;
    if (a->drop_p > 0.0f)
        dropout_tile(a, b, h, i0, mq, j0, jn, dP);
    if (!tm->partial)
        for (size_t r = 0; r < mq; r++)
            dscores_row(a->scale, jn, P + r * BK, delta[r], dP + r * BK);
    else
        for (size_t r = 0; r < mq; r++)
            dscores_row_masked(a->scale, jn, P + r * BK, delta[r], tm->vis + r * BK,
                               dP + r * BK);
}

/* Scores and probabilities of queries [i0, i0+mq) against keys
 * [j0, j0+jn) into w->s; returns the tile's mask (nothing computed past
 * the scores when no pair is visible). */
static tile_mask recompute_probs(const tb_ctx *ctx, const attn *a, const tb_vexp_ops *vx,
                                 size_t b, size_t h, size_t i0, size_t mq, size_t j0, size_t jn,
                                 const float *lse, const tile_ws *w)
{
    const size_t D = a->D, kvh = h / a->group;
    tile_gemm(ctx, w, 0, 1, mq, jn, D, a->scale, a->q + (b * a->Tq + i0) * a->wq + h * D, a->wq,
                   a->k + (b * a->Tk + j0) * a->wk + kvh * D, a->wk, 0.0f, w->s, BK);
    const tile_mask tm = mask_tile(a, b, i0, mq, j0, jn, w->s, w);
    if (tm.any_visible)
        probs_tile(vx, mq, jn, lse, w->s);
    return tm;
}

/* Gradient operands of the backward passes. */
typedef struct attn_grads {
    const float *dy, *lse, *delta; /* dy (B, Tq, H*D); lse, delta per (b, h, i) */
    float *dq, *dk, *dv;             /* first element of head 0 */
    size_t wdq, wdk, wdv;            /* row strides */
} attn_grads;

/* dK and dV of keys [j0, j0+BK) of batch row b, kv head g: over the query
 * heads of the group in order, each over its query tiles in order. */
static void backward_kv_block(const tb_ctx *ctx, const attn *a, const tb_vexp_ops *vx,
                              const attn_grads *gr, size_t b, size_t g, size_t j0,
                              const tile_ws *w)
{
    const size_t D = a->D, HD = a->H * a->D;
    const size_t kn = min_sz(BK, a->Tk - j0);
    float *dk = gr->dk + (b * a->Tk + j0) * gr->wdk + g * D;
    float *dv = gr->dv + (b * a->Tk + j0) * gr->wdv + g * D;
    for (size_t c = 0; c < kn; c++) {
        memset(dk + c * gr->wdk, 0, D * sizeof(float));
        memset(dv + c * gr->wdv, 0, D * sizeof(float));
    }
    /* Queries that may see some key of the block (key lengths make the
     * per-key range non-monotone, so take the union), and the keys [0, jn)
     * of the block some query may see: keys past a row's length or after
     * every query's diagonal stay out of the products (their gradients
     * stay 0). */
    size_t ilo = a->Tq, ihi = 0, jn = 0;
    for (size_t c = 0; c < kn; c++) {
        size_t lo, hi;
        query_range(a, b, j0 + c, &lo, &hi);
        if (lo < hi) {
            ilo = lo < ilo ? lo : ilo;
            ihi = hi > ihi ? hi : ihi;
            jn = c + 1;
        }
    }
    if (ilo >= ihi)
        return;
    const float *vj = a->v + (b * a->Tk + j0) * a->wv + g * D;
    for (size_t h = g * a->group; h < (g + 1) * a->group; h++)
        for (size_t i0 = ilo / BQ * BQ; i0 < ihi; i0 += BQ) {
            const size_t mq = min_sz(BQ, a->Tq - i0), row0 = (b * a->H + h) * a->Tq + i0;
            const float *qi = a->q + (b * a->Tq + i0) * a->wq + h * D;
            const float *go = gr->dy + (b * a->Tq + i0) * HD + h * D;
            const tile_mask tm =
                recompute_probs(ctx, a, vx, b, h, i0, mq, j0, jn, gr->lse + row0, w);
            if (!tm.any_visible) /* adds nothing */
                continue;
            /* dV += P'^T dO, with P' the dropped-out probabilities. */
            const float *pd = w->s;
            if (a->drop_p > 0.0f) {
                for (size_t r = 0; r < mq; r++)
                    memcpy(w->dp + r * BK, w->s + r * BK, jn * sizeof(float));
                dropout_tile(a, b, h, i0, mq, j0, jn, w->dp);
                pd = w->dp;
            }
            masked_product(ctx, w, &tm, 1, D, pd, go, HD, dv, gr->wdv);
            /* dP = dO V^T, then dS, then dK += dS^T Q. */
            tile_gemm(ctx, w, 0, 1, mq, jn, D, 1.0f, go, HD, vj, a->wv, 0.0f, w->dp, BK);
            dscores_tile(a, b, h, i0, &tm, j0, w->s, gr->delta + row0, w->dp);
            masked_product(ctx, w, &tm, 1, D, w->dp, qi, a->wq, dk, gr->wdk);
        }
}

/* dQ of queries [i0, i0+BQ) of batch row b, head h: over their key tiles in
 * order. */
static void backward_q_block(const tb_ctx *ctx, const attn *a, const tb_vexp_ops *vx,
                             const attn_grads *gr, size_t b, size_t h, size_t i0,
                             const tile_ws *w)
{
    const size_t D = a->D, HD = a->H * a->D, kvh = h / a->group;
    const size_t mq = min_sz(BQ, a->Tq - i0), row0 = (b * a->H + h) * a->Tq + i0;
    float *dq = gr->dq + (b * a->Tq + i0) * gr->wdq + h * D;
    for (size_t r = 0; r < mq; r++)
        memset(dq + r * gr->wdq, 0, D * sizeof(float));
    const float *go = gr->dy + (b * a->Tq + i0) * HD + h * D;
    size_t lo, hi, lo_last, hi_last;
    key_range(a, b, i0, &lo, &hi);
    key_range(a, b, i0 + mq - 1, &lo_last, &hi_last);
    for (size_t j0 = lo / BK * BK; j0 < hi_last; j0 += BK) {
        const size_t jn = min_sz(BK, hi_last - j0);
        const tile_mask tm = recompute_probs(ctx, a, vx, b, h, i0, mq, j0, jn, gr->lse + row0, w);
        if (!tm.any_visible) /* adds nothing */
            continue;
        tile_gemm(ctx, w, 0, 1, mq, jn, D, 1.0f, go, HD,
                       a->v + (b * a->Tk + j0) * a->wv + kvh * D, a->wv, 0.0f, w->dp, BK);
        dscores_tile(a, b, h, i0, &tm, j0, w->s, gr->delta + row0, w->dp);
        masked_product(ctx, w, &tm, 0, D, w->dp, a->k + (b * a->Tk + j0) * a->wk + kvh * D, a->wk,
                       dq, gr->wdq);
    }
}

tb_status tb_attention_forward(tb_ctx *ctx, const tb_attention_config *cfg, tb_mode mode,
                               const tb_attention_mask *mask, const tb_heads *q,
                               const tb_heads *k, const tb_heads *v, tb_tensor *out, void *cache,
                               size_t cache_bytes)
{
    const char *fn = __func__;
    attn a;
    tb_status s = setup(ctx, fn, cfg, mask, q, k, v, &a);
    if (s != TB_OK)
        return s;
    if (mode != TB_MODE_TRAINING && mode != TB_MODE_INFERENCE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown mode %d", (int)mode);
    set_mode(&a, mode);
    if ((s = tb_check_tensor(ctx, fn, "out", out, NULL, NULL)) != TB_OK)
        return s;
    if (out->ndim != 3 || out->shape[0] != a.B || out->shape[1] != a.Tq ||
        out->shape[2] != a.H * a.D)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "out must be (%zu, %zu, %zu)", a.B, a.Tq, a.H * a.D);
    if ((s = check_cache(ctx, fn, &a, cache, cache_bytes, 0)) != TB_OK)
        return s;
    tb_span in[OPERAND_SPANS];
    operand_spans(&a, mask, q, k, v, in);
    const tb_span outs[] = {tb_span_tensor("out", out), cache_span(&a, cache)};
    if ((s = tb_check_alias(ctx, fn, outs, 2, in, OPERAND_SPANS)) != TB_OK)
        return s;
    float *lse = cache ? (float *)((unsigned char *)cache + sizeof(attn_header)) : NULL;
    const size_t qblocks = (a.Tq + BQ - 1) / BQ, tasks = a.B * a.H * qblocks;
    const int threads = threads_for_tasks(ctx, tasks, (double)BQ * a.Tk * a.D);
    float *ws;
    if ((s = ws_alloc(ctx, fn, a.D, threads, &ws)) != TB_OK)
        return s;
    const tb_vexp_ops *vx = tb_vexp_select(ctx);
    float *od = out->data;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        const tile_ws w = ws_at(ctx, ws, a.D, (size_t)omp_get_thread_num(), &failed);
#pragma omp for schedule(dynamic, 1)
        for (size_t t = 0; t < tasks; t++) {
            /* Blocks of the same (b, h) in reverse order: under a causal
             * mask the last blocks cost the most, so they start first. */
            const size_t qb = qblocks - 1 - t % qblocks, bh = t / qblocks;
            const size_t h = bh % a.H, b = bh / a.H;
            forward_block(ctx, &a, vx, b, h, qb * BQ, od, lse ? lse + bh * a.Tq + qb * BQ : NULL,
                          &w);
        }
    }
    tb_free_with(&ctx->allocator, ws);
    if (failed)
        return tiles_failed(ctx, fn);
    if (cache) {
        const attn_header hd = header_of(&a);
        tb_cache_write(cache, &ATTN_CACHE, hd.field);
    }
    return TB_OK;
}

/* A gradient operand laid out like its input, written at the same columns. */
static tb_status check_grad(tb_ctx *ctx, const char *fn, const char *name, const tb_heads *g,
                            size_t heads, size_t D, size_t B, size_t T)
{
    size_t gb = 0, gt = 0, gw = 0;
    tb_status s = check_heads(ctx, fn, name, g, heads, D, &gb, &gt, &gw);
    if (s != TB_OK)
        return s;
    if (gb != B || gt != T)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s has (B, T) = (%zu, %zu), expected (%zu, %zu)",
                       name, gb, gt, B, T);
    return TB_OK;
}

tb_status tb_attention_backward(tb_ctx *ctx, const tb_attention_config *cfg,
                                const tb_attention_mask *mask, const tb_heads *q,
                                const tb_heads *k, const tb_heads *v, const tb_tensor *out,
                                const tb_tensor *dy, const void *cache, size_t cache_bytes,
                                tb_heads *dq, tb_heads *dk, tb_heads *dv)
{
    const char *fn = __func__;
    attn a;
    tb_status s = setup(ctx, fn, cfg, mask, q, k, v, &a);
    if (s != TB_OK)
        return s;
    const size_t D = a.D, HD = a.H * a.D;
    if ((s = tb_check_tensor(ctx, fn, "out", out, NULL, NULL)) != TB_OK ||
        (s = tb_check_tensor(ctx, fn, "dy", dy, NULL, NULL)) != TB_OK)
        return s;
    if (out->ndim != 3 || out->shape[0] != a.B || out->shape[1] != a.Tq || out->shape[2] != HD ||
        dy->ndim != 3 || dy->shape[0] != a.B || dy->shape[1] != a.Tq ||
        dy->shape[2] != HD)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "out and dy must be (%zu, %zu, %zu)", a.B, a.Tq,
                       HD);
    if ((s = check_grad(ctx, fn, "dq", dq, a.H, D, a.B, a.Tq)) != TB_OK ||
        (s = check_grad(ctx, fn, "dk", dk, a.Hkv, D, a.B, a.Tk)) != TB_OK ||
        (s = check_grad(ctx, fn, "dv", dv, a.Hkv, D, a.B, a.Tk)) != TB_OK)
        return s;
    if ((s = check_cache(ctx, fn, &a, cache, cache_bytes, 1)) != TB_OK)
        return s;
    /* dq, dk and dv may share a packed buffer in disjoint columns: their
     * spans are the columns they write. */
    tb_span in[OPERAND_SPANS + 3];
    operand_spans(&a, mask, q, k, v, in);
    in[OPERAND_SPANS] = tb_span_tensor("out", out);
    in[OPERAND_SPANS + 1] = tb_span_tensor("dy", dy);
    in[OPERAND_SPANS + 2] = cache_span(&a, cache);
    const tb_span outs[] = {tb_span_heads("dq", dq, a.H, D), tb_span_heads("dk", dk, a.Hkv, D),
                            tb_span_heads("dv", dv, a.Hkv, D)};
    if ((s = tb_check_alias(ctx, fn, outs, 3, in, OPERAND_SPANS + 3)) != TB_OK)
        return s;
    /* Backward follows the mode the forward recorded (an unknown value
     * is left to the match below, which refuses it). */
    uint64_t cached_mode;
    memcpy(&cached_mode, (const unsigned char *)cache + (1 + ATTN_MODE_FIELD) * sizeof cached_mode,
           sizeof cached_mode);
    if (cached_mode == 0)
        set_mode(&a, TB_MODE_INFERENCE);
    const attn_header want = header_of(&a);
    if ((s = tb_cache_match(ctx, fn, &ATTN_CACHE, cache, want.field)) != TB_OK)
        return s;
    const float *lse = (const float *)((const unsigned char *)cache + sizeof(attn_header));
    const size_t rows = a.B * a.H * a.Tq;
    const size_t qblocks = (a.Tq + BQ - 1) / BQ, kblocks = (a.Tk + BK - 1) / BK;
    const size_t q_tasks = a.B * a.H * qblocks, kv_tasks = a.B * a.Hkv * kblocks;
    const size_t max_tasks = q_tasks > kv_tasks ? q_tasks : kv_tasks;
    const int threads = threads_for_tasks(ctx, max_tasks, (double)BQ * a.Tk * a.D);
    size_t delta_bytes;
    if (!tb_mul_size(rows, sizeof(float), &delta_bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "attention scratch size overflows");
    void *mem;
    if ((s = tb_alloc(ctx, fn, delta_bytes, &mem)) != TB_OK)
        return s;
    float *ws;
    if ((s = ws_alloc(ctx, fn, D, threads, &ws)) != TB_OK) {
        tb_free_with(&ctx->allocator, mem);
        return s;
    }
    float *delta = mem; /* D_i = dy_i . out_i */
    const float *od = out->data, *gd = dy->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * D)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const size_t i = r % a.Tq, h = (r / a.Tq) % a.H, b = r / (a.Tq * a.H);
        const size_t at = (b * a.Tq + i) * HD + h * D;
        delta[r] = dot(gd + at, od + at, D);
    }
    attn_grads gr;
    gr.dy = gd, gr.lse = lse, gr.delta = delta;
    gr.dq = dq->tensor->data + dq->offset, gr.wdq = dq->tensor->shape[2];
    gr.dk = dk->tensor->data + dk->offset, gr.wdk = dk->tensor->shape[2];
    gr.dv = dv->tensor->data + dv->offset, gr.wdv = dv->tensor->shape[2];
    const tb_vexp_ops *vx = tb_vexp_select(ctx);
    int failed = 0;
    /* Two passes, so that every gradient row has one owner: dK and dV per
     * key block, then dQ per query block (recomputing the probabilities
     * once more instead of summing dQ across threads). */
#pragma omp parallel num_threads(threads)
    {
        const tile_ws w = ws_at(ctx, ws, D, (size_t)omp_get_thread_num(), &failed);
#pragma omp for schedule(dynamic, 1)
        for (size_t t = 0; t < kv_tasks; t++) {
            /* Under a causal mask the first key blocks cost the most. */
            const size_t kb = t % kblocks, bg = t / kblocks;
            backward_kv_block(ctx, &a, vx, &gr, bg / a.Hkv, bg % a.Hkv, kb * BK, &w);
        }
#pragma omp for schedule(dynamic, 1)
        for (size_t t = 0; t < q_tasks; t++) {
            const size_t qb = qblocks - 1 - t % qblocks, bh = t / qblocks;
            backward_q_block(ctx, &a, vx, &gr, bh / a.H, bh % a.H, qb * BQ, &w);
        }
    }
    tb_free_with(&ctx->allocator, ws);
    tb_free_with(&ctx->allocator, mem);
    return failed ? tiles_failed(ctx, fn) : TB_OK;
}

tb_status tb_attention_probs(tb_ctx *ctx, const tb_attention_config *cfg,
                             const tb_attention_mask *mask, const tb_heads *q, const tb_heads *k,
                             tb_tensor *probs)
{
    const char *fn = __func__;
    attn a;
    /* v is not needed: validate k twice in its place. */
    tb_status s = setup(ctx, fn, cfg, mask, q, k, k, &a);
    if (s != TB_OK)
        return s;
    if ((s = tb_check_tensor(ctx, fn, "probs", probs, NULL, NULL)) != TB_OK)
        return s;
    if (probs->ndim != 4 || probs->shape[0] != a.B || probs->shape[1] != a.H ||
        probs->shape[2] != a.Tq || probs->shape[3] != a.Tk)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "probs must be (%zu, %zu, %zu, %zu)", a.B, a.H,
                       a.Tq, a.Tk);
    tb_span in[OPERAND_SPANS];
    operand_spans(&a, mask, q, k, NULL, in);
    const tb_span outs[] = {tb_span_tensor("probs", probs)};
    if ((s = tb_check_alias(ctx, fn, outs, 1, in, OPERAND_SPANS)) != TB_OK)
        return s;
    const size_t rows = a.B * a.H * a.Tq;
    float *pd = probs->data;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * a.Tk * a.D)) \
    schedule(static)
    for (size_t r = 0; r < rows; r++) {
        /* probs rows are ordered (b, h, i), as r is. */
        const size_t i = r % a.Tq, h = (r / a.Tq) % a.H, b = r / (a.Tq * a.H);
        float *p = pd + r * a.Tk;
        size_t lo, hi;
        key_range(&a, b, i, &lo, &hi);
        float m = -INFINITY;
        for (size_t j = 0; j < a.Tk; j++) {
            p[j] = (j >= lo && j < hi) ? score(&a, b, h, i, j) : -INFINITY;
            if (p[j] > m)
                m = p[j];
        }
        float l = 0.0f;
        for (size_t j = 0; j < a.Tk; j++) {
            p[j] = p[j] == -INFINITY ? 0.0f : expf(p[j] - m);
            l += p[j];
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (size_t j = 0; j < a.Tk; j++)
            p[j] *= inv;
    }
    return TB_OK;
}
