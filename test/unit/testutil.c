#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tb_kernel tbt_test_kernel(void)
{
    tb_kernel k;
    ck_assert_int_eq(tb_kernel_from_env(NULL, &k), TB_OK);
    return k == TB_KERNEL_AUTO ? tb_kernel_best() : k;
}

void tbt_ctx_init(tb_ctx *ctx, int threads)
{
    tb_ctx_init(ctx);
    ctx->num_threads = threads;
    ck_assert_int_eq(tb_ctx_kernel(ctx), tbt_test_kernel());
}

void tbt_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed)
{
    tb_rng rng;
    tb_rng_init(&rng, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * tb_rng_uniform(&rng);
}

void tbt_fill_away_from_zero(float *x, size_t n, float lo, float hi, float gap, uint64_t seed)
{
    tbt_fill_uniform(x, n, lo, hi, seed);
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) < gap)
            x[i] = x[i] < 0 ? -gap - fabsf(x[i]) : gap + x[i];
}

void *tbt_alloc(size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    ck_assert_msg(p != NULL, "out of memory allocating %zu bytes", bytes);
    return p;
}

tbt_cmp tbt_compare(const float *got, const float *want, size_t n, double rtol, double atol)
{
    tbt_cmp c;
    memset(&c, 0, sizeof c);
    double worst_excess = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        double err = fabs(g - w);
        if (isnan(g) != isnan(w) || (!isnan(w) && !(err <= atol + rtol * fabs(w))))
            c.n_bad++;
        if (isnan(err))
            err = INFINITY;
        double excess = err - (atol + rtol * fabs(w));
        /* exact comparisons (rtol = atol = 0) use none of it when equal */
        double frac = err == 0.0 ? 0.0 : err / (atol + rtol * fabs(w));
        if (isnan(frac) || frac > c.max_tol_frac)
            c.max_tol_frac = isnan(frac) ? INFINITY : frac;
        if (excess > worst_excess) {
            worst_excess = excess;
            c.worst = i;
        }
        if (err > c.max_abs_err)
            c.max_abs_err = err;
        double rel = err / (fabs(w) > 1e-30 ? fabs(w) : 1e-30);
        if (fabs(w) > atol && rel > c.max_rel_err)
            c.max_rel_err = rel;
        if (fabs(w) > c.max_ref)
            c.max_ref = fabs(w);
    }
    c.degenerate = !(c.max_ref > 10.0 * atol);
    c.ok = c.n_bad == 0 && !c.degenerate;
    return c;
}

void tbt_assert_close_impl(const char *file, int line, const char *label, const float *got,
                           const float *want, size_t n, double rtol, double atol)
{
    tbt_cmp c = tbt_compare(got, want, n, rtol, atol);
    printf("  compare %-40s n=%-7zu max_abs=%.3e max_rel=%.3e (rtol=%.0e atol=%.0e) of_tol=%.3g%s\n",
           label, n, c.max_abs_err, c.max_rel_err, rtol, atol, c.max_tol_frac,
           c.ok ? "" : "  MISMATCH");
    fflush(stdout);
    if (c.degenerate)
        ck_abort_msg("%s:%d %s: reference is degenerate (max |want| = %g <= 10*atol); "
                     "the comparison would not detect a wrong result",
                     file, line, label, c.max_ref);
    if (c.n_bad)
        ck_abort_msg("%s:%d %s: %zu of %zu elements outside |got-want| <= %g + %g*|want|; "
                     "worst at %zu: got %.9g want %.9g",
                     file, line, label, c.n_bad, n, atol, rtol, c.worst,
                     (double)got[c.worst], (double)want[c.worst]);
}

double tbt_dot(const float *w, const float *y, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)w[i] * (double)y[i];
    return s;
}

void tbt_gradcheck_impl(const char *file, int line, const char *label, float *x, size_t n,
                        const float *analytic, tbt_loss_fn loss, void *user, float h,
                        double rtol, double atol, size_t max_checks)
{
    size_t checks = (max_checks && n > max_checks) ? max_checks : n;
    size_t n_bad = 0, worst = 0;
    double max_num = 0.0, max_err = 0.0, worst_excess = -INFINITY, worst_num = 0, max_frac = 0.0;
    for (size_t c = 0; c < checks; c++) {
        size_t i = checks == n ? c : (size_t)((double)c * (double)(n - 1) / (double)(checks - 1 ? checks - 1 : 1));
        float xi = x[i];
        x[i] = xi + h;
        double lp = loss(user);
        x[i] = xi - h;
        double lm = loss(user);
        x[i] = xi;
        /* Divide by the step actually taken in float. */
        double step = (double)(xi + h) - (double)(xi - h);
        double num = (lp - lm) / step;
        double ana = analytic[i];
        double err = fabs(num - ana);
        double excess = err - (atol + rtol * fabs(num));
        double frac = err == 0.0 ? 0.0 : err / (atol + rtol * fabs(num));
        if (isnan(frac) || frac > max_frac)
            max_frac = isnan(frac) ? INFINITY : frac;
        if (!(excess <= 0))
            n_bad++;
        if (excess > worst_excess || isnan(excess)) {
            worst_excess = isnan(excess) ? INFINITY : excess;
            worst = i;
            worst_num = num;
        }
        if (fabs(num) > max_num)
            max_num = fabs(num);
        if (err > max_err)
            max_err = err;
    }
    printf("  gradcheck %-38s checked=%-6zu max|num|=%.3e max_err=%.3e (rtol=%.0e atol=%.0e) "
           "of_tol=%.3g%s\n",
           label, checks, max_num, max_err, rtol, atol, max_frac, n_bad ? "  MISMATCH" : "");
    fflush(stdout);
    if (!(max_num > 10.0 * atol))
        ck_abort_msg("%s:%d %s: numeric gradient is degenerate (max %g <= 10*atol)", file, line,
                     label, max_num);
    if (n_bad)
        ck_abort_msg("%s:%d %s: %zu of %zu gradients differ from finite differences; worst at "
                     "%zu: analytic %.9g numeric %.9g",
                     file, line, label, n_bad, checks, worst, (double)analytic[worst], worst_num);
}

/* ---- .tbref reader ---------------------------------------------------- */

typedef struct tbt_entry {
    char *name;
    uint32_t dtype;
    size_t ndim;
    size_t shape[4];
    size_t numel;
    void *data;
} tbt_entry;

struct tbt_ref {
    char path[512];
    size_t count;
    tbt_entry *entries;
};

static int read_exact(FILE *f, void *buf, size_t n)
{
    return fread(buf, 1, n, f) == n;
}

int tbt_name_listed(const char *name, const void *names)
{
    const tbt_names *l = names;
    for (size_t k = 0; k < l->n; k++)
        if (strcmp(l->names[k], name) == 0)
            return 1;
    return 0;
}

size_t tbt_check_manifest(const char *manifest, const char *test_file, tbt_case_pred is_tested,
                          const void *user)
{
    const char *dir = getenv("TB_ORACLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_ORACLE_DIR is not set");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, manifest);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s (written by the generators in test/oracle)", path);
    char line[256];
    size_t listed = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        listed++;
        if (!is_tested(line, user)) {
            fclose(f);
            ck_abort_msg("reference case '%s' of %s is generated but not tested by %s", line,
                         manifest, test_file);
        }
    }
    fclose(f);
    return listed;
}

tbt_ref *tbt_ref_load(const char *case_name)
{
    const char *dir = getenv("TB_ORACLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_ORACLE_DIR is not set: the PyTorch oracle data was not "
                                 "generated (run the tests through make)");
    tbt_ref *ref = tbt_alloc(sizeof *ref);
    snprintf(ref->path, sizeof ref->path, "%s/%s.tbref", dir, case_name);
    FILE *f = fopen(ref->path, "rb");
    ck_assert_msg(f != NULL, "cannot open PyTorch reference %s", ref->path);
    char magic[8];
    uint32_t count;
    ck_assert_msg(read_exact(f, magic, 8) && memcmp(magic, "TBREF001", 8) == 0,
                  "%s: bad magic", ref->path);
    ck_assert_msg(read_exact(f, &count, 4) && count < 4096, "%s: bad count", ref->path);
    ref->count = count;
    ref->entries = tbt_alloc(count * sizeof(tbt_entry));
    for (uint32_t k = 0; k < count; k++) {
        tbt_entry *e = &ref->entries[k];
        uint32_t len, ndim;
        ck_assert_msg(read_exact(f, &len, 4) && len > 0 && len < 256, "%s: bad name", ref->path);
        e->name = tbt_alloc(len + 1);
        ck_assert(read_exact(f, e->name, len));
        ck_assert(read_exact(f, &e->dtype, 4) && e->dtype <= 1);
        ck_assert(read_exact(f, &ndim, 4) && ndim <= 4);
        e->ndim = ndim;
        e->numel = 1;
        for (uint32_t d = 0; d < ndim; d++) {
            uint64_t dim;
            ck_assert(read_exact(f, &dim, 8) && dim < (1u << 30));
            e->shape[d] = (size_t)dim;
            e->numel *= (size_t)dim;
        }
        e->data = tbt_alloc(e->numel * 4);
        ck_assert_msg(read_exact(f, e->data, e->numel * 4), "%s: truncated tensor %s",
                      ref->path, e->name);
    }
    fclose(f);
    return ref;
}

void tbt_ref_free(tbt_ref *ref)
{
    if (!ref)
        return;
    for (size_t k = 0; k < ref->count; k++) {
        free(ref->entries[k].name);
        free(ref->entries[k].data);
    }
    free(ref->entries);
    free(ref);
}

static const tbt_entry *find_entry(const tbt_ref *ref, const char *name)
{
    for (size_t k = 0; k < ref->count; k++)
        if (strcmp(ref->entries[k].name, name) == 0)
            return &ref->entries[k];
    return NULL;
}

int tbt_ref_has(const tbt_ref *ref, const char *name)
{
    return find_entry(ref, name) != NULL;
}

const float *tbt_ref_f32(const tbt_ref *ref, const char *name, size_t *numel, size_t *ndim,
                         size_t shape[4])
{
    const tbt_entry *e = find_entry(ref, name);
    ck_assert_msg(e != NULL, "%s has no tensor '%s'", ref->path, name);
    ck_assert_msg(e->dtype == 0, "%s: tensor '%s' is not f32", ref->path, name);
    if (numel)
        *numel = e->numel;
    if (ndim)
        *ndim = e->ndim;
    if (shape)
        for (size_t d = 0; d < 4; d++)
            shape[d] = d < e->ndim ? e->shape[d] : 0;
    return e->data;
}

const int32_t *tbt_ref_i32(const tbt_ref *ref, const char *name, size_t *numel)
{
    const tbt_entry *e = find_entry(ref, name);
    ck_assert_msg(e != NULL, "%s has no tensor '%s'", ref->path, name);
    ck_assert_msg(e->dtype == 1, "%s: tensor '%s' is not i32", ref->path, name);
    if (numel)
        *numel = e->numel;
    return e->data;
}

float tbt_ref_scalar(const tbt_ref *ref, const char *name)
{
    size_t n;
    const float *v = tbt_ref_f32(ref, name, &n, NULL, NULL);
    ck_assert_msg(n == 1, "%s: '%s' is not a scalar", ref->path, name);
    return v[0];
}

/* ---- helpers for tests built on reference files ------------------------- */

tbt_reft tbt_ref_get(const tbt_ref *ref, const char *name)
{
    tbt_reft r;
    r.data = tbt_ref_f32(ref, name, &r.n, &r.ndim, r.shape);
    ck_assert_msg(r.ndim >= 1 && r.ndim <= TB_MAX_DIMS, "tensor '%s' has %zu dims", name, r.ndim);
    return r;
}

int32_t tbt_ref_i32_scalar(const tbt_ref *ref, const char *name)
{
    size_t n;
    const int32_t *v = tbt_ref_i32(ref, name, &n);
    ck_assert_msg(n == 1, "'%s' is not a scalar", name);
    return v[0];
}

tb_tensor tbt_view_like(float *data, const tbt_reft *like)
{
    tb_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = like->ndim;
    for (size_t d = 0; d < like->ndim; d++)
        t.shape[d] = like->shape[d];
    return t;
}

float *tbt_ref_dup(const tbt_reft *r)
{
    float *p = tbt_alloc(r->n * sizeof(float));
    memcpy(p, r->data, r->n * sizeof(float));
    return p;
}

float *tbt_nan_buffer(size_t n)
{
    float *p = tbt_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

void tbt_shape_str(char *buf, size_t size, size_t ndim, const size_t *shape)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t d = 0; d < ndim && used < size; d++) {
        int w = snprintf(buf + used, size - used, d ? "x%zu" : "%zu", shape[d]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

const char *tbt_label(char *buf, size_t size, const char *block, const char *what)
{
    snprintf(buf, size, "%s.%s", block, what);
    return buf;
}

int tbt_attn_visible(const tbt_attn_masks *m, size_t r, size_t i, size_t j)
{
    const long diag = (long)i + (long)m->tk - (long)m->tq;
    if (m->causal && (long)j > diag)
        return 0;
    if (m->window && !((long)j > diag - (long)m->window && (long)j <= diag))
        return 0;
    if (m->lengths && (long)j >= (long)m->lengths[r])
        return 0;
    if (m->valid && !m->valid[r * m->tk + j])
        return 0;
    return !(m->bias && m->bias[i * m->tk + j] == -INFINITY);
}

void tbt_fill_sentinel(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = TBT_SENTINEL;
}

void tbt_assert_untouched(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(x[i] == TBT_SENTINEL, "output element %zu was written on error", i);
}

/* ---- normalization blocks (test_layernorm.c, test_rmsnorm.c,
 * test_batchnorm.c) ------------------------------------------------------ */

void tbt_assert_untouched_what(const float *x, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(x[i] == TBT_SENTINEL, "%s element %zu was written on error", what, i);
}

void tbt_fill_spread(float *x, size_t n, size_t c, int along_rows, uint64_t seed)
{
    tbt_fill_uniform(x, n * c, -0.3f, 0.3f, seed);
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < c; j++) {
            const size_t len = along_rows ? c : n, pos = along_rows ? j : r,
                         other = along_rows ? r : j;
            const size_t k = (pos * 7 + other * 3) % len;
            x[r * c + j] += -2.0f + 4.0f * (float)k / (float)(len > 1 ? len - 1 : 1) +
                            0.25f * (float)(other % 4);
        }
}

double tbt_max_abs_f(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m)
            m = fabs((double)x[i]);
    return m;
}

double tbt_assert_close_f32_f64(const char *label, const float *got, const float *want,
                                const float *want64, size_t n, double rtol, double atol_rel)
{
    const double scale = tbt_max_abs_f(want64, n), atol = atol_rel * scale;
    char l2[320];
    tbt_assert_close(label, got, want, n, rtol, atol);
    snprintf(l2, sizeof l2, "%s_vs_f64", label);
    tbt_assert_close(l2, got, want64, n, rtol, atol);
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)got[i] - (double)want64[i]));
    return scale > 0 ? worst / scale : worst;
}

double tbt_max_abs_d(const double *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) > m)
            m = fabs(x[i]);
    return m;
}

/* Compare float results with a double reference (rounded to float). */
void tbt_assert_close_d(const char *label, const float *got, const double *want, size_t n,
                           double rtol, double atol)
{
    float *w = tbt_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        w[i] = (float)want[i];
    tbt_assert_close(label, got, w, n, rtol, atol);
    free(w);
}

void tbt_assert_all_finite(const char *what, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(isfinite(x[i]), "%s[%zu] = %g is not finite", what, i, (double)x[i]);
}

/* Double reference of LayerNorm (centred = 1) or RMSNorm (0) over rows, with
 * optional weight / bias (NULL = absent); accumulates dw, db (may be NULL).
 * unit_dx receives max rstd * |dy * w| (the natural unit of dx). */
void tbt_rownorm_ref(const float *x, const float *dy, const float *w, const float *b,
                        size_t rows, size_t c, float eps, int centred, double *y, double *dx,
                        double *dw, double *db, double *unit_dx)
{
    double *xh = tbt_alloc(c * sizeof(double)), *g = tbt_alloc(c * sizeof(double));
    if (dw)
        memset(dw, 0, c * sizeof(double));
    if (db)
        memset(db, 0, c * sizeof(double));
    *unit_dx = 0.0;
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * c, *dyr = dy + r * c;
        double mean = 0.0, var = 0.0, mg = 0.0, mgx = 0.0;
        if (centred) {
            for (size_t j = 0; j < c; j++)
                mean += xr[j];
            mean /= (double)c;
        }
        for (size_t j = 0; j < c; j++)
            var += ((double)xr[j] - mean) * ((double)xr[j] - mean);
        var /= (double)c;
        const double rstd = 1.0 / sqrt(var + (double)eps);
        for (size_t j = 0; j < c; j++) {
            xh[j] = ((double)xr[j] - mean) * rstd;
            y[r * c + j] = xh[j] * (w ? (double)w[j] : 1.0) + (b ? (double)b[j] : 0.0);
            g[j] = (double)dyr[j] * (w ? (double)w[j] : 1.0);
            mg += g[j];
            mgx += g[j] * xh[j];
            if (rstd * fabs(g[j]) > *unit_dx)
                *unit_dx = rstd * fabs(g[j]);
            if (dw)
                dw[j] += (double)dyr[j] * xh[j];
            if (db)
                db[j] += (double)dyr[j];
        }
        mg /= (double)c;
        mgx /= (double)c;
        for (size_t j = 0; j < c; j++)
            dx[r * c + j] = rstd * (g[j] - (centred ? mg : 0.0) - xh[j] * mgx);
    }
    free(xh);
    free(g);
}

/* Double reference of BatchNorm over columns. batch = 1: statistics of the
 * valid rows (and the gradient through them); else rm / rv as constants.
 * Padded rows: y = dx = 0. mean_out / var_unb_out (may be NULL) receive the
 * batch mean and unbiased variance. unit_dx: max |w| rstd * max |dy|. */
void tbt_bn_ref(const float *x, const float *dy, const uint8_t *valid, const float *w,
                   const float *b, const float *rm, const float *rv, size_t n, size_t c,
                   float eps, int batch, double *y, double *dx, double *dw, double *db,
                   double *mean_out, double *var_unb_out, double *unit_dx)
{
    double max_dy = 0.0;
    *unit_dx = 0.0;
    for (size_t i = 0; i < n * c; i++)
        if ((!valid || valid[i / c]) && fabs((double)dy[i]) > max_dy)
            max_dy = fabs((double)dy[i]);
    for (size_t j = 0; j < c; j++) {
        double mean = 0.0, var = 0.0, cnt = 0.0;
        for (size_t r = 0; r < n; r++)
            if (!valid || valid[r]) {
                mean += x[r * c + j];
                cnt += 1.0;
            }
        mean /= cnt;
        for (size_t r = 0; r < n; r++)
            if (!valid || valid[r])
                var += ((double)x[r * c + j] - mean) * ((double)x[r * c + j] - mean);
        if (mean_out)
            mean_out[j] = mean;
        if (var_unb_out)
            var_unb_out[j] = var / (cnt - 1.0);
        var /= cnt;
        if (!batch) {
            mean = rm[j];
            var = rv[j];
        }
        const double rstd = 1.0 / sqrt(var + (double)eps);
        const double wj = w ? (double)w[j] : 1.0, bj = b ? (double)b[j] : 0.0;
        if (fabs(wj) * rstd * max_dy > *unit_dx)
            *unit_dx = fabs(wj) * rstd * max_dy;
        double sg = 0.0, sgx = 0.0, sdw = 0.0, sdb = 0.0;
        for (size_t r = 0; r < n; r++)
            if (!valid || valid[r]) {
                const double xh = ((double)x[r * c + j] - mean) * rstd;
                const double g = (double)dy[r * c + j] * wj;
                sg += g;
                sgx += g * xh;
                sdw += (double)dy[r * c + j] * xh;
                sdb += (double)dy[r * c + j];
            }
        if (dw)
            dw[j] = sdw;
        if (db)
            db[j] = sdb;
        for (size_t r = 0; r < n; r++) {
            if (valid && !valid[r]) {
                y[r * c + j] = 0.0;
                dx[r * c + j] = 0.0;
                continue;
            }
            const double xh = ((double)x[r * c + j] - mean) * rstd;
            const double g = (double)dy[r * c + j] * wj;
            y[r * c + j] = xh * wj + bj;
            dx[r * c + j] = batch ? rstd * (g - sg / cnt - xh * sgx / cnt) : rstd * g;
        }
    }
}

/* Column sums of |dy * x_hat| and |dy| (units of dweight and dbias). */
void tbt_col_units(const float *dy, const double *y_unaffine, size_t n, size_t c,
                      const uint8_t *valid, double *u_dw, double *u_db)
{
    *u_dw = *u_db = 0.0;
    for (size_t j = 0; j < c; j++) {
        double a = 0.0, s = 0.0;
        for (size_t r = 0; r < n; r++)
            if (!valid || valid[r]) {
                a += fabs((double)dy[r * c + j] * y_unaffine[r * c + j]);
                s += fabs((double)dy[r * c + j]);
            }
        if (a > *u_dw)
            *u_dw = a;
        if (s > *u_db)
            *u_db = s;
    }
}

/* ======================================================================
 * Finite-difference gradient checks
 * ==================================================================== */

typedef struct norm_prob {
    tb_ctx ctx;
    enum tbt_norm_kind kind;
    tb_layernorm ln;
    tb_rmsnorm rn;
    tb_batchnorm bn;
    tb_mode mode;
    const uint8_t *valid;
    float *x, *y, *w;
    size_t rows, c;
} norm_prob;

static tb_status prob_forward(norm_prob *p, void *cache, size_t bytes)
{
    tb_tensor x = tb_tensor_2d(p->x, p->rows, p->c), y = tb_tensor_2d(p->y, p->rows, p->c);
    switch (p->kind) {
    case TBT_K_LN: return tb_layernorm_forward(&p->ctx, &p->ln, &x, &y, cache, bytes);
    case TBT_K_RMS: return tb_rmsnorm_forward(&p->ctx, &p->rn, &x, &y, cache, bytes);
    case TBT_K_BN: return tb_batchnorm_forward(&p->ctx, &p->bn, p->mode, &x, p->valid, &y, cache, bytes);
    }
    return TB_ERR_INVALID_ARG;
}

static double prob_loss(void *user)
{
    norm_prob *p = user;
    ck_assert_int_eq(prob_forward(p, NULL, 0), TB_OK);
    return tbt_dot(p->w, p->y, p->rows * p->c);
}

static tb_param *prob_weight(norm_prob *p)
{
    switch (p->kind) {
    case TBT_K_LN: return &p->ln.weight;
    case TBT_K_RMS: return &p->rn.weight;
    case TBT_K_BN: return &p->bn.weight;
    }
    return NULL;
}

static tb_param *prob_bias(norm_prob *p)
{
    return p->kind == TBT_K_LN ? &p->ln.bias : p->kind == TBT_K_BN ? &p->bn.bias : NULL;
}

/* Gradient check of one configuration w.r.t. x, weight and bias. */
void tbt_check_norm_grad(enum tbt_norm_kind kind, size_t rows, size_t c, unsigned flags,
                            float eps, tb_mode mode, const uint8_t *valid, const char *tag)
{
    norm_prob p;
    memset(&p, 0, sizeof p);
    tbt_ctx_init(&p.ctx, 1);
    p.kind = kind, p.rows = rows, p.c = c, p.mode = mode, p.valid = valid;
    const size_t n = rows * c;
    p.x = tbt_alloc(n * sizeof(float));
    p.y = tbt_alloc(n * sizeof(float));
    p.w = tbt_alloc(n * sizeof(float));
    float *dx = tbt_alloc(n * sizeof(float));
    tbt_fill_spread(p.x, rows, c, kind != TBT_K_BN, rows * 100 + c);
    if (valid) /* padded positions hold garbage */
        for (size_t r = 0; r < rows; r++)
            if (!valid[r])
                for (size_t j = 0; j < c; j++)
                    p.x[r * c + j] = 40.0f + (float)(r + j);
    tbt_fill_uniform(p.w, n, -1, 1, rows + 7 * c);
    size_t bytes = 0;
    const char *name = kind == TBT_K_LN ? "layernorm" : kind == TBT_K_RMS ? "rmsnorm" : "batchnorm";
    switch (kind) {
    case TBT_K_LN:
        ck_assert_int_eq(tb_layernorm_init(&p.ctx, &p.ln, c, eps, flags), TB_OK);
        ck_assert_int_eq(tb_layernorm_cache_size(rows, &bytes), TB_OK);
        break;
    case TBT_K_RMS:
        ck_assert_int_eq(tb_rmsnorm_init(&p.ctx, &p.rn, c, eps, flags), TB_OK);
        ck_assert_int_eq(tb_rmsnorm_cache_size(rows, &bytes), TB_OK);
        break;
    case TBT_K_BN:
        ck_assert_int_eq(tb_batchnorm_init(&p.ctx, &p.bn, c, eps, 0.1f, flags), TB_OK);
        ck_assert_int_eq(tb_batchnorm_cache_size(c, &bytes), TB_OK);
        /* Non-trivial running statistics (used in inference / global mode). */
        tbt_fill_uniform(p.bn.running_mean.value, c, -1, 1, 31);
        tbt_fill_uniform(p.bn.running_var.value, c, 0.5f, 2.0f, 32);
        break;
    }
    tb_param *pw = prob_weight(&p), *pb = prob_bias(&p);
    if (flags & TB_NORM_SCALE)
        tbt_fill_away_from_zero(pw->value, c, -1.5f, 1.5f, 0.5f, 41);
    if ((flags & TB_NORM_SHIFT) && pb)
        tbt_fill_uniform(pb->value, c, -0.5f, 0.5f, 42);
    void *cache = tbt_alloc(bytes);
    ck_assert_int_eq(prob_forward(&p, cache, bytes), TB_OK);
    tb_tensor x = tb_tensor_2d(p.x, rows, c), dy = tb_tensor_2d(p.w, rows, c),
              dxt = tb_tensor_2d(dx, rows, c);
    switch (kind) {
    case TBT_K_LN:
        ck_assert_int_eq(tb_layernorm_backward(&p.ctx, &p.ln, &x, &dy, cache, bytes, &dxt), TB_OK);
        break;
    case TBT_K_RMS:
        ck_assert_int_eq(tb_rmsnorm_backward(&p.ctx, &p.rn, &x, &dy, cache, bytes, &dxt), TB_OK);
        break;
    case TBT_K_BN:
        ck_assert_int_eq(
            tb_batchnorm_backward(&p.ctx, &p.bn, &x, valid, &dy, cache, bytes, &dxt), TB_OK);
        break;
    }
    char label[128];
    snprintf(label, sizeof label, "%s[%zux%zu%s].dx", name, rows, c, tag);
    if (kind == TBT_K_LN && c == 1) {
        /* y = bias whatever x and weight: dL/dx = dL/dweight = 0 (to 1e-6
         * of their units rstd * |dy w| and sum |dy|, as in the oracle). */
        const double wmax = (flags & TB_NORM_SCALE) ? tbt_max_abs_f(pw->value, c) : 1.0;
        const double unit_dx = tbt_max_abs_f(p.w, n) * wmax / sqrt((double)eps);
        double unit_dw = 0.0;
        for (size_t i = 0; i < n; i++)
            unit_dw += fabs((double)p.w[i]);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(fabs((double)dx[i]) <= TBT_NORM_ATOL64_REL * unit_dx,
                          "%s: dx[%zu] = %g, expected 0", label, i, (double)dx[i]);
        if (flags & TB_NORM_SCALE)
            ck_assert_msg(fabs((double)pw->grad[0]) <= TBT_NORM_ATOL64_REL * unit_dw,
                          "%s: dweight = %g, expected 0", label, (double)pw->grad[0]);
        printf("  gradcheck %-38s C = 1: dx and dweight are 0 (y is the bias)\n", label);
    } else {
        tbt_gradcheck(label, p.x, n, dx, prob_loss, &p, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
        if (flags & TB_NORM_SCALE) {
            snprintf(label, sizeof label, "%s[%zux%zu%s].dweight", name, rows, c, tag);
            tbt_gradcheck(label, pw->value, c, pw->grad, prob_loss, &p, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL,
                          TBT_FD_MAX_CHECKS);
        }
    }
    if ((flags & TB_NORM_SHIFT) && pb) {
        snprintf(label, sizeof label, "%s[%zux%zu%s].dbias", name, rows, c, tag);
        tbt_gradcheck(label, pb->value, c, pb->grad, prob_loss, &p, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    }
    if (valid)
        for (size_t r = 0; r < rows; r++)
            if (!valid[r])
                for (size_t j = 0; j < c; j++)
                    ck_assert_msg(dx[r * c + j] == 0.0f, "%s: padded dx[%zu][%zu] = %g", label,
                                  r, j, (double)dx[r * c + j]);
    tb_layernorm_free(&p.ln);
    tb_rmsnorm_free(&p.rn);
    tb_batchnorm_free(&p.bn);
    free(cache);
    free(p.x), free(p.y), free(p.w), free(dx);
}
const size_t TBT_GRAD_ROWS[3] = {2, 3, 17};
const size_t TBT_GRAD_COLS[4] = {1, 3, 17, 33};
void tbt_check_rownorm_vs_double(int centred, size_t rows, size_t c, const float *x,
                                    float eps, const char *tag)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const size_t n = rows * c;
    float *y = tbt_alloc(n * sizeof(float)), *dx = tbt_alloc(n * sizeof(float));
    float *dy = tbt_alloc(n * sizeof(float));
    tbt_fill_uniform(dy, n, -1, 1, 77);
    double *yr = tbt_alloc(n * sizeof(double)), *dxr = tbt_alloc(n * sizeof(double));
    double *dwr = tbt_alloc(c * sizeof(double)), *dbr = tbt_alloc(c * sizeof(double));
    double *xh = tbt_alloc(n * sizeof(double)), *dummy = tbt_alloc(n * sizeof(double));
    tb_layernorm ln;
    tb_rmsnorm rn;
    tb_param *pw, *pb = NULL;
    size_t bytes;
    if (centred) {
        CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, c, eps, TB_NORM_SCALE | TB_NORM_SHIFT));
        CHECK_OK(ctx, tb_layernorm_cache_size(rows, &bytes));
        pw = &ln.weight, pb = &ln.bias;
    } else {
        CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, c, eps, TB_NORM_SCALE));
        CHECK_OK(ctx, tb_rmsnorm_cache_size(rows, &bytes));
        pw = &rn.weight;
    }
    tbt_fill_away_from_zero(pw->value, c, -1.5f, 1.5f, 0.5f, 78);
    if (pb)
        tbt_fill_uniform(pb->value, c, -0.5f, 0.5f, 79);
    void *cache = tbt_alloc(bytes);
    tb_tensor xt = tb_tensor_2d((float *)(uintptr_t)x, rows, c), yt = tb_tensor_2d(y, rows, c);
    tb_tensor dyt = tb_tensor_2d(dy, rows, c), dxt = tb_tensor_2d(dx, rows, c);
    if (centred) {
        CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, bytes));
        CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt));
    } else {
        CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cache, bytes));
        CHECK_OK(ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt));
    }
    double unit_dx, unused;
    tbt_rownorm_ref(x, dy, pw->value, pb ? pb->value : NULL, rows, c, eps, centred, yr, dxr, dwr,
                dbr, &unit_dx);
    tbt_rownorm_ref(x, dy, NULL, NULL, rows, c, eps, centred, xh, dummy, NULL, NULL, &unused);
    double u_dw, u_db;
    tbt_col_units(dy, xh, rows, c, NULL, &u_dw, &u_db);
    const double u_y = tbt_max_abs_d(yr, n);
    char lbl[128];
    const char *name = centred ? "layernorm" : "rmsnorm";
    tbt_assert_all_finite("y", y, n);
    tbt_assert_all_finite("dx", dx, n);
    snprintf(lbl, sizeof lbl, "%s[%zux%zu,%s].y_vs_double", name, rows, c, tag);
    tbt_assert_close_d(lbl, y, yr, n, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * u_y);
    snprintf(lbl, sizeof lbl, "%s[%zux%zu,%s].dx_vs_double", name, rows, c, tag);
    tbt_assert_close_d(lbl, dx, dxr, n, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * unit_dx);
    snprintf(lbl, sizeof lbl, "%s[%zux%zu,%s].dweight_vs_double", name, rows, c, tag);
    if (u_dw > 0) {
        tbt_assert_close_d(lbl, pw->grad, dwr, c, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * u_dw);
    } else { /* every x_hat is 0 (constant rows): dweight = 0 */
        const double m = tbt_max_abs_f(pw->grad, c);
        printf("  compare %-40s n=%-7zu zero at scale: max|got|=%.3e (atol=%.0e)\n", lbl, c, m,
               TBT_NORM_ATOL64_REL * u_db);
        ck_assert_msg(m <= TBT_NORM_ATOL64_REL * u_db, "%s: max |dweight| = %g, expected 0", lbl, m);
    }
    if (pb) {
        snprintf(lbl, sizeof lbl, "%s[%zux%zu,%s].dbias_vs_double", name, rows, c, tag);
        tbt_assert_close_d(lbl, pb->grad, dbr, c, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * u_db);
    }
    if (centred)
        tb_layernorm_free(&ln);
    else
        tb_rmsnorm_free(&rn);
    free(cache), free(y), free(dx), free(dy), free(yr), free(dxr), free(dwr), free(dbr);
    free(xh), free(dummy);
}

/* Rows with mean 1e4 and std 1e-2 (ulp(1e4) = 1e-3 is 10% of the std:
 * centring with a float mean would be off by up to 5% of the std). */
float *tbt_offset_rows(size_t rows, size_t c, uint64_t seed)
{
    float *x = tbt_alloc(rows * c * sizeof(float));
    tbt_fill_uniform(x, rows * c, -1, 1, seed);
    for (size_t i = 0; i < rows * c; i++) /* uniform with std 1e-2 */
        x[i] = (float)(1.0e4 + 1e-2 * sqrt(3.0) * (double)x[i]);
    return x;
}

/* A mask of a reference file (i32 0/1) as the library's bytes. */
uint8_t *tbt_ref_mask(const tbt_ref *ref, const char *name, size_t n)
{
    size_t m;
    const int32_t *v = tbt_ref_i32(ref, name, &m);
    ck_assert_uint_eq(m, n);
    uint8_t *out = tbt_alloc(n);
    for (size_t i = 0; i < n; i++) {
        ck_assert(v[i] == 0 || v[i] == 1);
        out[i] = (uint8_t)v[i];
    }
    return out;
}
/* Compare `got` with the reference `name` (float32 PyTorch, if f32_ok) and
 * with `name`_f64 (float64 PyTorch), atol relative to `unit`. */
void tbt_norm_check_vs(const tbt_ref *ref, const char *blk, const char *name, const float *got,
                     size_t n, double unit, int f32_ok)
{
    char lbl[192], nm64[64];
    ck_assert_msg(unit > 0 && isfinite(unit), "%s.%s: unit %g", blk, name, unit);
    if (f32_ok) {
        tbt_reft w = tbt_ref_get(ref, name);
        ck_assert_uint_eq(w.n, n);
        snprintf(lbl, sizeof lbl, "%s.%s", blk, name);
        tbt_assert_close(lbl, got, w.data, n, TBT_NORM_RTOL32, TBT_NORM_ATOL32_REL * unit);
    }
    snprintf(nm64, sizeof nm64, "%s_f64", name);
    tbt_reft w64 = tbt_ref_get(ref, nm64);
    ck_assert_uint_eq(w64.n, n);
    snprintf(lbl, sizeof lbl, "%s.%s_vs_f64", blk, name);
    tbt_assert_close(lbl, got, w64.data, n, TBT_NORM_RTOL64, TBT_NORM_ATOL64_REL * unit);
}

/* For results that are exactly 0 in exact arithmetic: the float64
 * reference and the library must both be 0 to TBT_NORM_ATOL64_REL of the unit. */
void tbt_norm_check_zero_at_scale(const tbt_ref *ref, const char *blk, const char *name,
                                const float *got, size_t n, double unit)
{
    char lbl[192], nm64[64];
    snprintf(nm64, sizeof nm64, "%s_f64", name);
    tbt_reft w64 = tbt_ref_get(ref, nm64);
    ck_assert_uint_eq(w64.n, n);
    const double atol = TBT_NORM_ATOL64_REL * unit;
    ck_assert_msg(unit > 0 && isfinite(unit), "%s.%s: unit %g", blk, name, unit);
    ck_assert_msg(tbt_max_abs_f(w64.data, n) <= atol, "%s.%s: float64 reference is not ~0 (%g)", blk,
                  name, tbt_max_abs_f(w64.data, n));
    const double m = tbt_max_abs_f(got, n);
    snprintf(lbl, sizeof lbl, "%s.%s", blk, name);
    printf("  compare %-40s n=%-7zu zero at scale: max|got|=%.3e (atol=%.0e)%s\n", lbl, n, m,
           atol, m <= atol ? "" : "  MISMATCH");
    fflush(stdout);
    ck_assert_msg(m <= atol, "%s: max |got| = %g, expected 0 (within %g)", lbl, m, atol);
}

/* Natural units of a row-wise norm (LayerNorm: centred, RMSNorm: not),
 * from the float inputs, in double. w may be NULL (1). */

tbt_norm_units tbt_norm_row_units(const float *x, const float *dy, const float *w, size_t rows, size_t c,
                       float eps, int centred)
{
    tbt_norm_units u = {0, 0, 0};
    double *sdw = tbt_alloc(c * sizeof(double)), *sdb = tbt_alloc(c * sizeof(double));
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * c, *dyr = dy + r * c;
        double mean = 0.0, var = 0.0;
        if (centred) {
            for (size_t j = 0; j < c; j++)
                mean += xr[j];
            mean /= (double)c;
        }
        for (size_t j = 0; j < c; j++)
            var += ((double)xr[j] - mean) * ((double)xr[j] - mean);
        var /= (double)c;
        const double rstd = 1.0 / sqrt(var + (double)eps);
        for (size_t j = 0; j < c; j++) {
            const double g = fabs((double)dyr[j] * (w ? (double)w[j] : 1.0));
            if (rstd * g > u.dx)
                u.dx = rstd * g;
            sdw[j] += fabs((double)dyr[j] * ((double)xr[j] - mean) * rstd);
            sdb[j] += fabs((double)dyr[j]);
        }
    }
    for (size_t j = 0; j < c; j++) {
        if (sdw[j] > u.dw)
            u.dw = sdw[j];
        if (sdb[j] > u.db)
            u.db = sdb[j];
    }
    free(sdw);
    free(sdb);
    return u;
}

/* ---- LayerNorm ------------------------------------------------------------ */

/* ---- four parameters (testutil.h) ---- */

void tbt_four_init(tb_ctx *ctx, tbt_four *f)
{
    static const size_t shapes[4][2] = {{17, 3}, {17, 0}, {1, 17}, {4, 0}};
    static const size_t ndims[4] = {2, 1, 2, 1};
    static const char *const names[4] = {"p0", "p1", "p2", "p3"};
    memset(f, 0, sizeof *f);
    f->mem = tbt_alloc(2 * (51 + 17 + 17 + 4) * sizeof(float));
    memset(f->mem, 0, 2 * (51 + 17 + 17 + 4) * sizeof(float));
    float *at = f->mem;
    CHECK_OK(*ctx, tb_param_list_init(ctx, &f->list));
    for (int i = 0; i < 4; i++) {
        tb_param *p = &f->p[i];
        const size_t n = ndims[i] == 2 ? shapes[i][0] * shapes[i][1] : shapes[i][0];
        CHECK_OK(*ctx, tb_param_view(ctx, p, at, at + n, ndims[i], shapes[i]));
        at += 2 * n;
        p->trainable = i < 3;
        CHECK_OK(*ctx, tb_param_list_add(ctx, &f->list, NULL, names[i], p));
    }
}

void tbt_four_free(tbt_four *f)
{
    tb_param_list_free(&f->list);
    free(f->mem);
}
