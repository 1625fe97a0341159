/*
 * Scaled dot-product attention without a T x T matrix.
 *
 * Forward, per (batch row, head, query): stream over the visible keys with
 * an online softmax (running max m, running sum l, running output acc,
 * rescaled when m grows); out = acc / l, and log-sum-exp m + log l goes to
 * the cache. Backward recomputes p_ij = exp(s_ij - lse_i):
 *   D_i  = dout_i . out_i
 *   dq_i = scale * sum_j p_ij (dout_i . v_j - D_i) k_j   (parallel over i)
 *   dk_j = scale * sum_i p_ij (dout_i . v_j - D_i) q_i   (parallel over j)
 *   dv_j =         sum_i p_ij dout_i
 * so every output row is owned by one thread and summed in a fixed order
 * (query heads of a key/value group in order, then queries in order).
 * This is the straightforward streaming formulation; a tiled, vectorised
 * kernel can replace the inner loops without changing the interface.
 */
#include <math.h>
#include <string.h>

#include "../core/internal.h"

#define ATTN_MAGIC 0x7462415431ULL /* "tbAT1" */

/* Everything the cached log-sum-exp values depend on (except the data and
 * the masks): backward refuses a cache from a call of another shape. */
typedef struct attn_header {
    uint64_t magic, batch, heads, t_q, t_k, head_dim, kv_heads, options;
} attn_header;

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
    if (!tb_mul_size(batch, cfg->n_heads, &n) || !tb_mul_size(n, t_q, &n) ||
        !tb_mul_size(n, sizeof(float), &n) || !tb_add_size(n, sizeof(attn_header), &n))
        return TB_ERR_OVERFLOW;
    *bytes = n;
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
} attn;

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
    size_t bq, bk, bv, tk2;
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

/* Score of query i (head h) against key j (its kv head), or -inf if masked. */
static float score(const attn *a, size_t b, size_t h, size_t i, size_t j)
{
    if (a->key_valid && !a->key_valid[b * a->Tk + j])
        return -INFINITY;
    const float *qi = a->q + (b * a->Tq + i) * a->wq + h * a->D;
    const float *kj = a->k + (b * a->Tk + j) * a->wk + (h / a->group) * a->D;
    float s = a->scale * dot(qi, kj, a->D);
    if (a->bias)
        s += a->bias[i * a->Tk + j];
    return s;
}

static tb_status check_cache(tb_ctx *ctx, const char *fn, const attn *a, const void *cache,
                             size_t bytes)
{
    tb_attention_config c = tb_attention_default_config(a->H, a->D);
    size_t need;
    if (tb_attention_cache_size(&c, a->B, a->Tq, &need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size overflows");
    if (bytes < need)
        return tb_fail(ctx, TB_ERR_BUFFER_TOO_SMALL, fn, "cache has %zu bytes; %zu needed", bytes,
                       need);
    if ((uintptr_t)cache % sizeof(float) != 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "cache is not aligned for float");
    return TB_OK;
}

static attn_header header_of(const attn *a)
{
    uint32_t scale_bits;
    memcpy(&scale_bits, &a->scale, sizeof scale_bits);
    attn_header h = {ATTN_MAGIC, a->B,   a->H,   a->Tq,
                     a->Tk,      a->D,   a->Hkv, ((uint64_t)scale_bits << 32) ^
                                                    ((uint64_t)a->window << 1) ^ (uint64_t)a->causal};
    return h;
}

/* Memory spanned by an operand's tensor (for overlap checks). */
static size_t span(const tb_tensor *t)
{
    return tb_tensor_numel(t);
}

tb_status tb_attention_forward(tb_ctx *ctx, const tb_attention_config *cfg,
                               const tb_attention_mask *mask, const tb_heads *q,
                               const tb_heads *k, const tb_heads *v, tb_tensor *out, void *cache,
                               size_t cache_bytes)
{
    const char *fn = __func__;
    attn a;
    tb_status s = setup(ctx, fn, cfg, mask, q, k, v, &a);
    if (s != TB_OK)
        return s;
    if ((s = tb_check_tensor(ctx, fn, "out", out, NULL, NULL)) != TB_OK)
        return s;
    if (out->ndim != 3 || out->shape[0] != a.B || out->shape[1] != a.Tq ||
        out->shape[2] != a.H * a.D)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "out must be (%zu, %zu, %zu)", a.B, a.Tq, a.H * a.D);
    const size_t no = span(out);
    if (tb_overlaps(out->data, no, q->tensor->data, span(q->tensor)) ||
        tb_overlaps(out->data, no, k->tensor->data, span(k->tensor)) ||
        tb_overlaps(out->data, no, v->tensor->data, span(v->tensor)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "out overlaps q, k or v");
    if (cache && (s = check_cache(ctx, fn, &a, cache, cache_bytes)) != TB_OK)
        return s;
    float *lse = cache ? (float *)((unsigned char *)cache + sizeof(attn_header)) : NULL;
    const size_t rows = a.B * a.H * a.Tq, D = a.D;
    float *od = out->data;
    /* schedule(static, 1): causal rows grow in cost with i, so interleave
     * them; every row is still computed whole by one thread. */
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * a.Tk * D)) \
    schedule(static, 1)
    for (size_t r = 0; r < rows; r++) {
        const size_t i = r % a.Tq, h = (r / a.Tq) % a.H, b = r / (a.Tq * a.H);
        float *o = od + (b * a.Tq + i) * a.H * D + h * D;
        for (size_t d = 0; d < D; d++)
            o[d] = 0.0f; /* the running output accumulates in place */
        size_t lo, hi;
        key_range(&a, b, i, &lo, &hi);
        float m = -INFINITY, l = 0.0f;
        for (size_t j = lo; j < hi; j++) {
            const float sc = score(&a, b, h, i, j);
            if (sc == -INFINITY)
                continue;
            if (sc > m) { /* new maximum: rescale what was accumulated */
                const float corr = expf(m - sc);
                l *= corr;
                for (size_t d = 0; d < D; d++)
                    o[d] *= corr;
                m = sc;
            }
            const float p = expf(sc - m);
            l += p;
            const float *vj = a.v + (b * a.Tk + j) * a.wv + (h / a.group) * D;
            for (size_t d = 0; d < D; d++)
                o[d] += p * vj[d];
        }
        if (l > 0.0f) {
            const float inv = 1.0f / l;
            for (size_t d = 0; d < D; d++)
                o[d] *= inv;
        }
        if (lse)
            lse[r] = l > 0.0f ? m + logf(l) : -INFINITY; /* -inf: fully masked */
    }
    if (cache) {
        attn_header hd = header_of(&a);
        memcpy(cache, &hd, sizeof hd);
    }
    return TB_OK;
}

/* A gradient operand laid out like its input, written at the same columns. */
static tb_status check_grad(tb_ctx *ctx, const char *fn, const char *name, const tb_heads *g,
                            size_t heads, size_t D, size_t B, size_t T)
{
    size_t gb, gt, gw;
    tb_status s = check_heads(ctx, fn, name, g, heads, D, &gb, &gt, &gw);
    if (s != TB_OK)
        return s;
    if (gb != B || gt != T)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "%s has (B, T) = (%zu, %zu), expected (%zu, %zu)",
                       name, gb, gt, B, T);
    return TB_OK;
}

/* Two gradient operands may share a packed buffer only in disjoint columns. */
static int grads_clash(const tb_heads *x, size_t xh, const tb_heads *y, size_t yh, size_t D)
{
    if (x->tensor->data != y->tensor->data)
        return tb_overlaps(x->tensor->data, span(x->tensor), y->tensor->data, span(y->tensor));
    const size_t x1 = x->offset + xh * D, y1 = y->offset + yh * D;
    return x->offset < y1 && y->offset < x1;
}

tb_status tb_attention_backward(tb_ctx *ctx, const tb_attention_config *cfg,
                                const tb_attention_mask *mask, const tb_heads *q,
                                const tb_heads *k, const tb_heads *v, const tb_tensor *out,
                                const tb_tensor *dout, const void *cache, size_t cache_bytes,
                                tb_heads *dq, tb_heads *dk, tb_heads *dv)
{
    const char *fn = __func__;
    attn a;
    tb_status s = setup(ctx, fn, cfg, mask, q, k, v, &a);
    if (s != TB_OK)
        return s;
    const size_t D = a.D, HD = a.H * a.D;
    if ((s = tb_check_tensor(ctx, fn, "out", out, NULL, NULL)) != TB_OK ||
        (s = tb_check_tensor(ctx, fn, "dout", dout, NULL, NULL)) != TB_OK)
        return s;
    if (out->ndim != 3 || out->shape[0] != a.B || out->shape[1] != a.Tq || out->shape[2] != HD ||
        dout->ndim != 3 || dout->shape[0] != a.B || dout->shape[1] != a.Tq ||
        dout->shape[2] != HD)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "out and dout must be (%zu, %zu, %zu)", a.B, a.Tq,
                       HD);
    if ((s = check_grad(ctx, fn, "dq", dq, a.H, D, a.B, a.Tq)) != TB_OK ||
        (s = check_grad(ctx, fn, "dk", dk, a.Hkv, D, a.B, a.Tk)) != TB_OK ||
        (s = check_grad(ctx, fn, "dv", dv, a.Hkv, D, a.B, a.Tk)) != TB_OK)
        return s;
    if (grads_clash(dq, a.H, dk, a.Hkv, D) || grads_clash(dq, a.H, dv, a.Hkv, D) ||
        grads_clash(dk, a.Hkv, dv, a.Hkv, D))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "dq, dk and dv overlap each other");
    const tb_tensor *ins[5] = {q->tensor, k->tensor, v->tensor, out, dout};
    const tb_heads *gs[3] = {dq, dk, dv};
    for (int gi = 0; gi < 3; gi++)
        for (int ii = 0; ii < 5; ii++)
            if (tb_overlaps(gs[gi]->tensor->data, span(gs[gi]->tensor), ins[ii]->data,
                            span(ins[ii])))
                return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                               "dq, dk and dv must not overlap q, k, v, out or dout");
    if (!cache)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "cache must not be NULL");
    if ((s = check_cache(ctx, fn, &a, cache, cache_bytes)) != TB_OK)
        return s;
    attn_header hd, want = header_of(&a);
    memcpy(&hd, cache, sizeof hd);
    if (memcmp(&hd, &want, sizeof hd) != 0)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "cache was not filled by tb_attention_forward with this shape and "
                       "configuration");
    const float *lse = (const float *)((const unsigned char *)cache + sizeof hd);
    const size_t rows = a.B * a.H * a.Tq;
    void *mem;
    if ((s = tb_alloc(ctx, fn, rows * sizeof(float), &mem)) != TB_OK)
        return s;
    float *delta = mem; /* D_i = dout_i . out_i */
    const float *od = out->data, *gd = dout->data;
    const double work = (double)rows * a.Tk * D;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * D)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const size_t i = r % a.Tq, h = (r / a.Tq) % a.H, b = r / (a.Tq * a.H);
        const size_t at = (b * a.Tq + i) * HD + h * D;
        delta[r] = dot(gd + at, od + at, D);
    }
    float *dqd = dq->tensor->data + dq->offset;
    const size_t wdq = dq->tensor->shape[2];
    /* dq, one query row per iteration. */
#pragma omp parallel for num_threads(tb_threads_for(ctx, work)) schedule(static, 1)
    for (size_t r = 0; r < rows; r++) {
        const size_t i = r % a.Tq, h = (r / a.Tq) % a.H, b = r / (a.Tq * a.H);
        float *g = dqd + (b * a.Tq + i) * wdq + h * D;
        for (size_t d = 0; d < D; d++)
            g[d] = 0.0f;
        if (lse[r] == -INFINITY)
            continue;
        const float *go = gd + (b * a.Tq + i) * HD + h * D;
        size_t lo, hi;
        key_range(&a, b, i, &lo, &hi);
        for (size_t j = lo; j < hi; j++) {
            const float sc = score(&a, b, h, i, j);
            if (sc == -INFINITY)
                continue;
            const float p = expf(sc - lse[r]);
            const float *vj = a.v + (b * a.Tk + j) * a.wv + (h / a.group) * D;
            const float *kj = a.k + (b * a.Tk + j) * a.wk + (h / a.group) * D;
            const float ds = a.scale * p * (dot(go, vj, D) - delta[r]);
            for (size_t d = 0; d < D; d++)
                g[d] += ds * kj[d];
        }
    }
    /* dk and dv, one key row (of one kv head) per iteration: its query
     * heads in order, each over its queries in order. */
    float *dkd = dk->tensor->data + dk->offset, *dvd = dv->tensor->data + dv->offset;
    const size_t wdk = dk->tensor->shape[2], wdv = dv->tensor->shape[2];
    const size_t krows = a.B * a.Hkv * a.Tk;
#pragma omp parallel for num_threads(tb_threads_for(ctx, work)) schedule(static, 1)
    for (size_t r = 0; r < krows; r++) {
        const size_t j = r % a.Tk, g = (r / a.Tk) % a.Hkv, b = r / (a.Tk * a.Hkv);
        float *gk = dkd + (b * a.Tk + j) * wdk + g * D;
        float *gv = dvd + (b * a.Tk + j) * wdv + g * D;
        for (size_t d = 0; d < D; d++)
            gk[d] = gv[d] = 0.0f;
        const float *vj = a.v + (b * a.Tk + j) * a.wv + g * D;
        size_t ilo, ihi;
        query_range(&a, b, j, &ilo, &ihi);
        for (size_t h = g * a.group; h < (g + 1) * a.group; h++)
            for (size_t i = ilo; i < ihi; i++) {
                size_t lo, hi;
                key_range(&a, b, i, &lo, &hi);
                const size_t qr = (b * a.H + h) * a.Tq + i;
                if (j < lo || j >= hi || lse[qr] == -INFINITY)
                    continue;
                const float sc = score(&a, b, h, i, j);
                if (sc == -INFINITY)
                    continue;
                const float p = expf(sc - lse[qr]);
                const float *go = gd + (b * a.Tq + i) * HD + h * D;
                const float *qi = a.q + (b * a.Tq + i) * a.wq + h * D;
                const float ds = a.scale * p * (dot(go, vj, D) - delta[qr]);
                for (size_t d = 0; d < D; d++) {
                    gv[d] += p * go[d];
                    gk[d] += ds * qi[d];
                }
            }
    }
    tb_free_with(&ctx->allocator, mem);
    return TB_OK;
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
    if (tb_overlaps(probs->data, span(probs), q->tensor->data, span(q->tensor)) ||
        tb_overlaps(probs->data, span(probs), k->tensor->data, span(k->tensor)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "probs overlaps q or k");
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
