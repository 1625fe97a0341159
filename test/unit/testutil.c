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
    printf("  compare %-40s n=%-7zu max_abs=%.3e max_rel=%.3e (rtol=%.0e atol=%.0e)%s\n", label,
           n, c.max_abs_err, c.max_rel_err, rtol, atol, c.ok ? "" : "  MISMATCH");
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
    double max_num = 0.0, max_err = 0.0, worst_excess = -INFINITY, worst_num = 0;
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
    printf("  gradcheck %-38s checked=%-6zu max|num|=%.3e max_err=%.3e (rtol=%.0e atol=%.0e)%s\n",
           label, checks, max_num, max_err, rtol, atol, n_bad ? "  MISMATCH" : "");
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
