/*
 * CLIP's symmetric contrastive loss (include/tblocks/contrastive.h).
 * Cache layout (floats after a header of 4 words {magic, N, D, bits of s}):
 *   inv_img[N], inv_txt[N]   1 / row norms
 *   lse_row[N], lse_col[N]   log-sum-exp of logits_per_text's rows / columns
 *   lpt[N * N]               logits_per_text = exp(s) t_n i_n^T
 *   i_n[N * D], t_n[N * D]   the normalised embeddings
 * Every loop is over rows (or columns) computed independently by one
 * thread each, and every sum over rows runs serially in row order in
 * double, so the results do not depend on the thread count.
 */
#include <math.h>
#include <string.h>

#include "../core/internal.h"

#define CL_MAGIC 0x7462434c49ULL /* "tbCLI" */

static const char *const cl_fields[2] = {"N", "D"};
static const tb_cache_kind CL_CACHE = {CL_MAGIC, "tb_contrastive_forward",
                                       "tb_contrastive_cache_size", 2, 2, cl_fields};
#define CL_HEADER (4 * sizeof(uint64_t))

tb_contrastive_config tb_contrastive_default_config(void)
{
    tb_contrastive_config c;
    c.init_logit_scale = (float)log(1.0 / 0.07); /* 2.6592600 */
    c.min_logit_scale = 0.0f;
    c.max_logit_scale = (float)log(100.0); /* 4.6051702 */
    return c;
}

/* Floats of the cache after the header: 4N + N^2 + 2ND. */
static int cl_floats(size_t n, size_t d, size_t *floats)
{
    size_t nn, nd, a;
    return tb_mul_size(n, n, &nn) && tb_mul_size(n, d, &nd) && tb_mul_size(nd, 2, &nd) &&
           tb_add_size(nn, nd, &a) && tb_add_size(a, 4 * n, floats) && n <= SIZE_MAX / 8;
}

tb_status tb_contrastive_cache_size(size_t n, size_t d, size_t *bytes)
{
    size_t floats;
    if (!bytes)
        return TB_ERR_NULL_ARG;
    if (!cl_floats(n, d, &floats))
        return TB_ERR_OVERFLOW;
    return tb_cache_bytes(CL_HEADER, floats, bytes);
}

static tb_status check_scale_param(tb_ctx *ctx, const char *fn, const tb_param *p)
{
    if (!p || !p->value)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "logit_scale (and its value) must not be NULL");
    if (p->numel != 1)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "logit_scale has %zu values, expected 1", p->numel);
    return TB_OK;
}

tb_status tb_contrastive_init_scale(tb_ctx *ctx, const tb_contrastive_config *config,
                                    tb_param *logit_scale)
{
    tb_contrastive_config c = config ? *config : tb_contrastive_default_config();
    tb_status s = check_scale_param(ctx, __func__, logit_scale);
    if (s != TB_OK)
        return s;
    logit_scale->value[0] = c.init_logit_scale;
    return TB_OK;
}

tb_status tb_contrastive_clamp_scale(tb_ctx *ctx, const tb_contrastive_config *config,
                                     tb_param *logit_scale)
{
    const char *fn = __func__;
    tb_contrastive_config c = config ? *config : tb_contrastive_default_config();
    tb_status s = check_scale_param(ctx, fn, logit_scale);
    if (s != TB_OK)
        return s;
    if (!(c.min_logit_scale <= c.max_logit_scale))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "clamp range [%g, %g] is empty or NaN",
                       (double)c.min_logit_scale, (double)c.max_logit_scale);
    float v = logit_scale->value[0];
    if (isnan(v))
        return tb_fail(ctx, TB_ERR_NON_FINITE, fn, "logit_scale is NaN");
    if (v > c.max_logit_scale)
        v = c.max_logit_scale;
    if (v < c.min_logit_scale)
        v = c.min_logit_scale;
    logit_scale->value[0] = v;
    return TB_OK;
}

/* The shapes every call checks: img (N, D), txt (N, D), one-float scale. */
static tb_status check_shapes(tb_ctx *ctx, const char *fn, const tb_tensor *img,
                              const tb_tensor *txt, const tb_param *logit_scale, size_t *n,
                              size_t *d, size_t *need)
{
    tb_status s = check_scale_param(ctx, fn, logit_scale);
    if (s == TB_OK)
        s = tb_check_tensor(ctx, fn, "img", img, n, d);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, "txt", txt, *n, *d);
    if (s != TB_OK)
        return s;
    if (tb_contrastive_cache_size(*n, *d, need) != TB_OK)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "cache size for N = %zu, D = %zu overflows", *n,
                       *d);
    return TB_OK;
}

/* a . b in double, four interleaved partial sums combined in a fixed order
 * (independent chains: about 4x the speed of one, same result for any
 * thread count). */
static double dot_d(const float *a, const float *b, size_t n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    size_t k = 0;
    for (; k + 4 <= n; k += 4) {
        s0 += (double)a[k] * b[k];
        s1 += (double)a[k + 1] * b[k + 1];
        s2 += (double)a[k + 2] * b[k + 2];
        s3 += (double)a[k + 3] * b[k + 3];
    }
    for (; k < n; k++)
        s0 += (double)a[k] * b[k];
    return (s0 + s1) + (s2 + s3);
}

static uint64_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Normalise the rows of x (rows, d) into xn, their inverse norms into inv;
 * a row that cannot be normalised gets inv 0 (zero or underflowing norm) or
 * NaN (NaN/Inf in it). */
static void normalise_rows(tb_ctx *ctx, const float *x, size_t rows, size_t d, float *xn,
                           float *inv)
{
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)rows * d)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        const double ss = dot_d(xr, xr, d);
        if (!isfinite(ss)) {
            inv[r] = NAN;
            continue;
        }
        double iv = ss > 0.0 ? 1.0 / sqrt(ss) : 0.0;
        if (!(iv <= (double)3.0e38f)) {
            inv[r] = 0.0f;
            continue;
        }
        inv[r] = ss > 0.0 ? (float)iv : 0.0f;
        for (size_t k = 0; k < d; k++)
            xn[r * d + k] = (float)(xr[k] * iv);
    }
}

static tb_status check_rows(tb_ctx *ctx, const char *fn, const char *what, const float *inv,
                            size_t rows)
{
    for (size_t r = 0; r < rows; r++) {
        if (isnan(inv[r]))
            return tb_fail(ctx, TB_ERR_NON_FINITE, fn, "%s row %zu holds NaN or Inf", what, r);
        if (inv[r] == 0.0f)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "%s row %zu has norm 0 (or too small to normalise): no direction",
                           what, r);
    }
    return TB_OK;
}

tb_status tb_contrastive_forward(tb_ctx *ctx, const tb_tensor *img, const tb_tensor *txt,
                                 const tb_param *logit_scale, float *loss,
                                 tb_tensor *logits_per_image, void *cache, size_t cache_bytes)
{
    const char *fn = __func__;
    size_t n, d, need;
    if (!loss)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "loss must not be NULL");
    tb_status s = check_shapes(ctx, fn, img, txt, logit_scale, &n, &d, &need);
    if (s == TB_OK && logits_per_image)
        s = tb_check_matrix(ctx, fn, "logits_per_image", logits_per_image, n, n);
    const uint64_t fields[2] = {n, d};
    if (s == TB_OK)
        s = tb_cache_check(ctx, fn, &CL_CACHE, cache, cache_bytes, need, fields, 0);
    if (s != TB_OK)
        return s;
    {
        const tb_span in[] = {tb_span_tensor("img", img), tb_span_tensor("txt", txt),
                              tb_span_floats("logit_scale", logit_scale->value, 1)};
        tb_span out[3];
        size_t n_out = 0;
        out[n_out++] = tb_span_bytes("loss", loss, sizeof *loss);
        if (cache)
            out[n_out++] = tb_span_bytes("cache", cache, need);
        if (logits_per_image)
            out[n_out++] = tb_span_tensor("logits_per_image", logits_per_image);
        if ((s = tb_check_alias(ctx, fn, out, n_out, in, 3)) != TB_OK)
            return s;
    }
    const float sc = logit_scale->value[0];
    const float e = expf(sc);
    if (!isfinite(sc) || !isfinite(e))
        return tb_fail(ctx, TB_ERR_NON_FINITE, fn,
                       "logit_scale %g is not finite or exp() of it overflows", (double)sc);
    void *buf = cache;
    if (!cache && (s = tb_alloc(ctx, fn, need, &buf)) != TB_OK)
        return s;
    float *inv_i = (float *)((unsigned char *)buf + CL_HEADER), *inv_t = inv_i + n;
    float *lse_r = inv_t + n, *lse_c = lse_r + n, *lpt = lse_c + n;
    float *in_ = lpt + n * n, *tn = in_ + n * d;
    normalise_rows(ctx, img->data, n, d, in_, inv_i);
    normalise_rows(ctx, txt->data, n, d, tn, inv_t);
    if ((s = check_rows(ctx, fn, "img", inv_i, n)) == TB_OK)
        s = check_rows(ctx, fn, "txt", inv_t, n);
    if (s != TB_OK) {
        if (!cache)
            tb_free_with(&ctx->allocator, buf);
        return s;
    }
    const double work = (double)n * n * d;
    /* logits_per_text[r][c] = exp(s) * (t_n[r] . i_n[c]); the dot rounded to
     * float first, then scaled, in the order of CLIPModel's forward. */
#pragma omp parallel for num_threads(tb_threads_for(ctx, work)) schedule(static)
    for (size_t r = 0; r < n; r++) {
        const float *tr = tn + r * d;
        for (size_t c = 0; c < n; c++) {
            const float *ic = in_ + c * d;
            lpt[r * n + c] = (float)dot_d(tr, ic, d) * e;
        }
        float m = -INFINITY;
        for (size_t c = 0; c < n; c++)
            m = fmaxf(m, lpt[r * n + c]);
        double sum = 0.0;
        for (size_t c = 0; c < n; c++)
            sum += exp((double)lpt[r * n + c] - m);
        lse_r[r] = (float)(m + log(sum));
    }
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)n * n)) schedule(static)
    for (size_t c = 0; c < n; c++) {
        float m = -INFINITY;
        for (size_t r = 0; r < n; r++)
            m = fmaxf(m, lpt[r * n + c]);
        double sum = 0.0;
        for (size_t r = 0; r < n; r++)
            sum += exp((double)lpt[r * n + c] - m);
        lse_c[c] = (float)(m + log(sum));
    }
    double tot_t = 0.0, tot_i = 0.0;
    for (size_t r = 0; r < n; r++) {
        tot_t += (double)lse_r[r] - lpt[r * n + r];
        tot_i += (double)lse_c[r] - lpt[r * n + r];
    }
    *loss = (float)(0.5 * (tot_t / (double)n + tot_i / (double)n));
    if (logits_per_image) {
        float *li = logits_per_image->data;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++)
                li[i * n + j] = lpt[j * n + i];
    }
    if (cache) {
        const uint64_t h[4] = {CL_MAGIC, n, d, float_bits(sc)};
        memcpy(cache, h, sizeof h);
    } else {
        tb_free_with(&ctx->allocator, buf);
    }
    return TB_OK;
}

/* G[r][c] = d loss / d logits_per_text[r][c] for an upstream gradient folded
 * into k = dloss / (2N): the row softmax (text -> image CE) plus the column
 * softmax (image -> text CE), each minus the identity. */
static inline float grad_at(const float *lpt, const float *lse_r, const float *lse_c, size_t n,
                            size_t r, size_t c, float k)
{
    const float l = lpt[r * n + c];
    float g = expf(l - lse_r[r]) + expf(l - lse_c[c]);
    if (r == c)
        g -= 2.0f;
    return k * g;
}

/* dx (d) = (dxn - xn (xn . dxn)) * inv, in place on dx holding dxn. */
static void normalise_backward(float *dx, const float *xn, size_t d, float inv)
{
    const float fd = (float)dot_d(xn, dx, d);
    for (size_t k = 0; k < d; k++)
        dx[k] = (dx[k] - xn[k] * fd) * inv;
}

tb_status tb_contrastive_backward(tb_ctx *ctx, const tb_tensor *img, const tb_tensor *txt,
                                  tb_param *logit_scale, float dloss, const void *cache,
                                  size_t cache_bytes, tb_tensor *dimg, tb_tensor *dtxt)
{
    const char *fn = __func__;
    size_t n, d, need;
    tb_status s = check_shapes(ctx, fn, img, txt, logit_scale, &n, &d, &need);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, "dimg", dimg, n, d);
    if (s == TB_OK)
        s = tb_check_matrix(ctx, fn, "dtxt", dtxt, n, d);
    const uint64_t fields[2] = {n, d};
    if (s == TB_OK)
        s = tb_cache_check(ctx, fn, &CL_CACHE, cache, cache_bytes, need, fields, 1);
    if (s != TB_OK)
        return s;
    const int add_scale = logit_scale->trainable && logit_scale->grad;
    {
        const tb_span in[] = {tb_span_tensor("img", img), tb_span_tensor("txt", txt),
                              tb_span_bytes("cache", cache, need),
                              tb_span_floats("logit_scale", logit_scale->value, 1)};
        tb_span out[3];
        size_t n_out = 0;
        out[n_out++] = tb_span_tensor("dimg", dimg);
        out[n_out++] = tb_span_tensor("dtxt", dtxt);
        if (add_scale)
            out[n_out++] = tb_span_floats("logit_scale.grad", logit_scale->grad, 1);
        if ((s = tb_check_alias(ctx, fn, out, n_out, in, 4)) != TB_OK)
            return s;
    }
    if ((s = tb_cache_match(ctx, fn, &CL_CACHE, cache, fields)) != TB_OK)
        return s;
    uint64_t h[4];
    memcpy(h, cache, sizeof h);
    if (h[3] != float_bits(logit_scale->value[0]))
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "logit_scale changed since forward (the cache holds logits of another "
                       "scale)");
    if (!isfinite(dloss))
        return tb_fail(ctx, TB_ERR_NON_FINITE, fn, "dloss %g is not finite", (double)dloss);
    double *part = NULL;
    if ((s = tb_alloc(ctx, fn, n * sizeof(double), (void **)&part)) != TB_OK)
        return s;
    const float *inv_i = (const float *)((const unsigned char *)cache + CL_HEADER),
                *inv_t = inv_i + n;
    const float *lse_r = inv_t + n, *lse_c = lse_r + n, *lpt = lse_c + n;
    const float *in_ = lpt + n * n, *tn = in_ + n * d;
    const float e = expf(logit_scale->value[0]);
    const float k = (float)(0.5 * (double)dloss / (double)n);
    float *di = dimg->data, *dt = dtxt->data;
    const double work = (double)n * n * d;
    /* Text rows: dt_n[r] = exp(s) sum_c G[r][c] i_n[c]; and the row's part of
     * d s = sum G o logits. */
#pragma omp parallel for num_threads(tb_threads_for(ctx, work)) schedule(static)
    for (size_t r = 0; r < n; r++) {
        float *o = dt + r * d;
        memset(o, 0, d * sizeof(float));
        double ds = 0.0;
        for (size_t c = 0; c < n; c++) {
            const float g = grad_at(lpt, lse_r, lse_c, n, r, c, k);
            ds += (double)g * lpt[r * n + c];
            const float ge = g * e;
            const float *ic = in_ + c * d;
            for (size_t j = 0; j < d; j++)
                o[j] += ge * ic[j];
        }
        part[r] = ds;
        normalise_backward(o, tn + r * d, d, inv_t[r]);
    }
    /* Image rows: di_n[c] = exp(s) sum_r G[r][c] t_n[r]. */
#pragma omp parallel for num_threads(tb_threads_for(ctx, work)) schedule(static)
    for (size_t c = 0; c < n; c++) {
        float *o = di + c * d;
        memset(o, 0, d * sizeof(float));
        for (size_t r = 0; r < n; r++) {
            const float ge = grad_at(lpt, lse_r, lse_c, n, r, c, k) * e;
            const float *tr = tn + r * d;
            for (size_t j = 0; j < d; j++)
                o[j] += ge * tr[j];
        }
        normalise_backward(o, in_ + c * d, d, inv_i[c]);
    }
    if (add_scale) {
        double ds = 0.0;
        for (size_t r = 0; r < n; r++)
            ds += part[r];
        logit_scale->grad[0] += (float)ds;
    }
    tb_free_with(&ctx->allocator, part);
    return TB_OK;
}
