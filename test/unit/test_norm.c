/*
 * Normalization blocks (LayerNorm, RMSNorm, BatchNorm): finite-difference
 * gradient checks, numerical robustness against double-precision
 * references, error paths, BatchNorm's mode / global-statistics / padding
 * semantics, parameter enumeration, and bitwise determinism across thread
 * counts. The PyTorch comparison is in test_norm_oracle.c.
 *
 * Gradient checks: as test_gradcheck.c. L = sum(w .* y) for a fixed random
 * w (dL/dy = w), forward in float, L accumulated in double, central
 * differences with h = 1e-2, rtol 1e-2, atol 1e-3: the float rounding of
 * the y elements a perturbation changes (one row for LN/RMS, one column for
 * BN, <= 33 elements of |y| <~ 3) is <= ~33 * 6e-8 * 3 ~ 6e-6 in L, divided
 * by 2h gives <= 3e-4; the truncation error h^2/6 * |f'''| stays below
 * ~1e-4 because every row / column used here has a spread of order 1 (the
 * inputs are laid out over [-2, 2] plus noise, so 1/std is O(1)). A zero or
 * sign-flipped gradient fails, since every check requires max |numeric| >
 * 10 * atol. Where the exact gradient is (nearly) flat with the default eps
 * (RMSNorm with C = 1: eps / (x^2 + eps)^1.5; BatchNorm with 2 positions:
 * proportional to eps / var) a larger eps is used, so that the formula,
 * which is the same for every eps, is actually exercised.
 *
 * Double-precision references (robustness): the same tolerances as the
 * float64 comparison of test_norm_oracle.c, rtol 2e-6 and atol 1e-6 of the
 * natural unit of each quantity (see there): with double statistics the
 * remaining float work is a few roundings per element.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define H 1e-2f
#define RTOL 1e-2
#define ATOL 1e-3
#define MAX_CHECKS 600

static const double RTOL64 = 2e-6, ATOL64_REL = 1e-6;

#define SENTINEL 12345.0f

/* ---- helpers ------------------------------------------------------------ */

static void fill_sentinel(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = SENTINEL;
}

static void assert_untouched(const float *x, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(x[i] == SENTINEL, "%s element %zu was written on error", what, i);
}

/* Values spread over [-2, 2] along each row (rows = 1) or each column
 * (rows = 0), plus noise in +-0.3 and an offset per row/column, so every
 * row or column has a standard deviation of order 1 whatever its length
 * (>= 2). */
static void fill_spread(float *x, size_t n, size_t c, int along_rows, uint64_t seed)
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

static double max_abs_f(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m)
            m = fabs((double)x[i]);
    return m;
}

static double max_abs_d(const double *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) > m)
            m = fabs(x[i]);
    return m;
}

/* Compare float results with a double reference (rounded to float). */
static void assert_close_d(const char *label, const float *got, const double *want, size_t n,
                           double rtol, double atol)
{
    float *w = tbt_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        w[i] = (float)want[i];
    tbt_assert_close(label, got, w, n, rtol, atol);
    free(w);
}

static void assert_all_finite(const char *what, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(isfinite(x[i]), "%s[%zu] = %g is not finite", what, i, (double)x[i]);
}

/* Double reference of LayerNorm (centred = 1) or RMSNorm (0) over rows, with
 * optional weight / bias (NULL = absent); accumulates dw, db (may be NULL).
 * unit_dx receives max rstd * |dy * w| (the natural unit of dx). */
static void rownorm_ref(const float *x, const float *dy, const float *w, const float *b,
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
static void bn_ref(const float *x, const float *dy, const uint8_t *valid, const float *w,
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
static void col_units(const float *dy, const double *y_unaffine, size_t n, size_t c,
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

enum norm_kind { K_LN, K_RMS, K_BN };

typedef struct norm_prob {
    tb_ctx ctx;
    enum norm_kind kind;
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
    case K_LN: return tb_layernorm_forward(&p->ctx, &p->ln, &x, &y, cache, bytes);
    case K_RMS: return tb_rmsnorm_forward(&p->ctx, &p->rn, &x, &y, cache, bytes);
    case K_BN: return tb_batchnorm_forward(&p->ctx, &p->bn, p->mode, &x, p->valid, &y, cache, bytes);
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
    case K_LN: return &p->ln.weight;
    case K_RMS: return &p->rn.weight;
    case K_BN: return &p->bn.weight;
    }
    return NULL;
}

static tb_param *prob_bias(norm_prob *p)
{
    return p->kind == K_LN ? &p->ln.bias : p->kind == K_BN ? &p->bn.bias : NULL;
}

/* Gradient check of one configuration w.r.t. x, weight and bias. */
static void check_norm_grad(enum norm_kind kind, size_t rows, size_t c, unsigned flags,
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
    fill_spread(p.x, rows, c, kind != K_BN, rows * 100 + c);
    if (valid) /* padded positions hold garbage */
        for (size_t r = 0; r < rows; r++)
            if (!valid[r])
                for (size_t j = 0; j < c; j++)
                    p.x[r * c + j] = 40.0f + (float)(r + j);
    tbt_fill_uniform(p.w, n, -1, 1, rows + 7 * c);
    size_t bytes = 0;
    const char *name = kind == K_LN ? "layernorm" : kind == K_RMS ? "rmsnorm" : "batchnorm";
    switch (kind) {
    case K_LN:
        ck_assert_int_eq(tb_layernorm_init(&p.ctx, &p.ln, c, eps, flags), TB_OK);
        ck_assert_int_eq(tb_layernorm_cache_size(rows, &bytes), TB_OK);
        break;
    case K_RMS:
        ck_assert_int_eq(tb_rmsnorm_init(&p.ctx, &p.rn, c, eps, flags), TB_OK);
        ck_assert_int_eq(tb_rmsnorm_cache_size(rows, &bytes), TB_OK);
        break;
    case K_BN:
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
    case K_LN:
        ck_assert_int_eq(tb_layernorm_backward(&p.ctx, &p.ln, &x, &dy, cache, bytes, &dxt), TB_OK);
        break;
    case K_RMS:
        ck_assert_int_eq(tb_rmsnorm_backward(&p.ctx, &p.rn, &x, &dy, cache, bytes, &dxt), TB_OK);
        break;
    case K_BN:
        ck_assert_int_eq(
            tb_batchnorm_backward(&p.ctx, &p.bn, &x, valid, &dy, cache, bytes, &dxt), TB_OK);
        break;
    }
    char label[128];
    snprintf(label, sizeof label, "%s[%zux%zu%s].dx", name, rows, c, tag);
    if (kind == K_LN && c == 1) {
        /* y = bias whatever x and weight: dL/dx = dL/dweight = 0 (to 1e-6
         * of their units rstd * |dy w| and sum |dy|, as in the oracle). */
        const double wmax = (flags & TB_NORM_SCALE) ? max_abs_f(pw->value, c) : 1.0;
        const double unit_dx = max_abs_f(p.w, n) * wmax / sqrt((double)eps);
        double unit_dw = 0.0;
        for (size_t i = 0; i < n; i++)
            unit_dw += fabs((double)p.w[i]);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(fabs((double)dx[i]) <= ATOL64_REL * unit_dx,
                          "%s: dx[%zu] = %g, expected 0", label, i, (double)dx[i]);
        if (flags & TB_NORM_SCALE)
            ck_assert_msg(fabs((double)pw->grad[0]) <= ATOL64_REL * unit_dw,
                          "%s: dweight = %g, expected 0", label, (double)pw->grad[0]);
        printf("  gradcheck %-38s C = 1: dx and dweight are 0 (y is the bias)\n", label);
    } else {
        tbt_gradcheck(label, p.x, n, dx, prob_loss, &p, H, RTOL, ATOL, MAX_CHECKS);
        if (flags & TB_NORM_SCALE) {
            snprintf(label, sizeof label, "%s[%zux%zu%s].dweight", name, rows, c, tag);
            tbt_gradcheck(label, pw->value, c, pw->grad, prob_loss, &p, H, RTOL, ATOL,
                          MAX_CHECKS);
        }
    }
    if ((flags & TB_NORM_SHIFT) && pb) {
        snprintf(label, sizeof label, "%s[%zux%zu%s].dbias", name, rows, c, tag);
        tbt_gradcheck(label, pb->value, c, pb->grad, prob_loss, &p, H, RTOL, ATOL, MAX_CHECKS);
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

static const size_t GRAD_ROWS[] = {2, 3, 17};
static const size_t GRAD_COLS[] = {1, 3, 17, 33};

START_TEST(layernorm_gradients)
{
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 4; b++)
            check_norm_grad(K_LN, GRAD_ROWS[a], GRAD_COLS[b], TB_NORM_SCALE | TB_NORM_SHIFT,
                            1e-5f, TB_MODE_TRAINING, NULL, "");
    check_norm_grad(K_LN, 3, 17, TB_NORM_SCALE, 1e-5f, TB_MODE_TRAINING, NULL, ",nobias");
    check_norm_grad(K_LN, 17, 3, 0, 1e-3f, TB_MODE_TRAINING, NULL, ",noaffine");
    check_norm_grad(K_LN, 2, 33, TB_NORM_SHIFT, 1e-5f, TB_MODE_TRAINING, NULL, ",shiftonly");
}
END_TEST

START_TEST(rmsnorm_gradients)
{
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 4; b++) {
            const size_t c = GRAD_COLS[b];
            /* C = 1: y = x w / sqrt(x^2 + eps) is flat for eps << x^2. */
            check_norm_grad(K_RMS, GRAD_ROWS[a], c, TB_NORM_SCALE, c == 1 ? 0.5f : 1e-6f,
                            TB_MODE_TRAINING, NULL, c == 1 ? ",eps=0.5" : "");
        }
    check_norm_grad(K_RMS, 3, 17, 0, 1e-5f, TB_MODE_TRAINING, NULL, ",noweight");
    check_norm_grad(K_RMS, 17, 1, 0, 0.5f, TB_MODE_TRAINING, NULL, ",noweight,eps=0.5");
}
END_TEST

START_TEST(batchnorm_gradients)
{
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;
    /* Training: through the batch statistics. With 2 positions the
     * gradient is proportional to eps / (var + eps): eps = 1 there. */
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 4; b++) {
            const size_t rows = GRAD_ROWS[a];
            check_norm_grad(K_BN, rows, GRAD_COLS[b], aff, rows == 2 ? 1.0f : 1e-5f,
                            TB_MODE_TRAINING, NULL, rows == 2 ? ",train,eps=1" : ",train");
        }
    check_norm_grad(K_BN, 17, 3, 0, 1e-5f, TB_MODE_TRAINING, NULL, ",train,noaffine");
    check_norm_grad(K_BN, 3, 17, TB_NORM_SCALE, 1e-5f, TB_MODE_TRAINING, NULL, ",train,nobias");
    /* Training with a padding mask. */
    static const uint8_t mask17[17] = {1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0};
    static const uint8_t mask3[3] = {1, 0, 1};
    check_norm_grad(K_BN, 17, 3, aff, 1e-5f, TB_MODE_TRAINING, mask17, ",train,mask");
    check_norm_grad(K_BN, 17, 33, aff, 1e-5f, TB_MODE_TRAINING, mask17, ",train,mask");
    check_norm_grad(K_BN, 3, 17, aff, 1.0f, TB_MODE_TRAINING, mask3, ",train,mask,eps=1");
    /* Inference and global statistics: constants in backward. */
    check_norm_grad(K_BN, 3, 17, aff, 1e-5f, TB_MODE_INFERENCE, NULL, ",eval");
    check_norm_grad(K_BN, 17, 1, aff, 1e-5f, TB_MODE_INFERENCE, mask17, ",eval,mask");
    check_norm_grad(K_BN, 17, 33, aff | TB_NORM_GLOBAL_STATS, 1e-5f, TB_MODE_TRAINING, NULL,
                    ",global,train");
    check_norm_grad(K_BN, 2, 3, aff | TB_NORM_GLOBAL_STATS, 1e-5f, TB_MODE_INFERENCE, NULL,
                    ",global,eval");
}
END_TEST

/* ======================================================================
 * Numerical robustness
 * ==================================================================== */

/* LayerNorm / RMSNorm on x vs the double reference: y, dx, dweight, dbias. */
static void check_rownorm_vs_double(int centred, size_t rows, size_t c, const float *x,
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
    rownorm_ref(x, dy, pw->value, pb ? pb->value : NULL, rows, c, eps, centred, yr, dxr, dwr,
                dbr, &unit_dx);
    rownorm_ref(x, dy, NULL, NULL, rows, c, eps, centred, xh, dummy, NULL, NULL, &unused);
    double u_dw, u_db;
    col_units(dy, xh, rows, c, NULL, &u_dw, &u_db);
    const double u_y = max_abs_d(yr, n);
    char lbl[128];
    const char *name = centred ? "layernorm" : "rmsnorm";
    assert_all_finite("y", y, n);
    assert_all_finite("dx", dx, n);
    snprintf(lbl, sizeof lbl, "%s[%zux%zu,%s].y_vs_double", name, rows, c, tag);
    assert_close_d(lbl, y, yr, n, RTOL64, ATOL64_REL * u_y);
    snprintf(lbl, sizeof lbl, "%s[%zux%zu,%s].dx_vs_double", name, rows, c, tag);
    assert_close_d(lbl, dx, dxr, n, RTOL64, ATOL64_REL * unit_dx);
    snprintf(lbl, sizeof lbl, "%s[%zux%zu,%s].dweight_vs_double", name, rows, c, tag);
    if (u_dw > 0) {
        assert_close_d(lbl, pw->grad, dwr, c, RTOL64, ATOL64_REL * u_dw);
    } else { /* every x_hat is 0 (constant rows): dweight = 0 */
        const double m = max_abs_f(pw->grad, c);
        printf("  compare %-40s n=%-7zu zero at scale: max|got|=%.3e (atol=%.0e)\n", lbl, c, m,
               ATOL64_REL * u_db);
        ck_assert_msg(m <= ATOL64_REL * u_db, "%s: max |dweight| = %g, expected 0", lbl, m);
    }
    if (pb) {
        snprintf(lbl, sizeof lbl, "%s[%zux%zu,%s].dbias_vs_double", name, rows, c, tag);
        assert_close_d(lbl, pb->grad, dbr, c, RTOL64, ATOL64_REL * u_db);
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
static float *offset_rows(size_t rows, size_t c, uint64_t seed)
{
    float *x = tbt_alloc(rows * c * sizeof(float));
    tbt_fill_uniform(x, rows * c, -1, 1, seed);
    for (size_t i = 0; i < rows * c; i++) /* uniform with std 1e-2 */
        x[i] = (float)(1.0e4 + 1e-2 * sqrt(3.0) * (double)x[i]);
    return x;
}

START_TEST(large_offset_vs_double)
{
    float *x = offset_rows(5, 64, 11);
    check_rownorm_vs_double(1, 5, 64, x, 1e-5f, "mean1e4,std1e-2");
    check_rownorm_vs_double(0, 5, 64, x, 1e-6f, "mean1e4,std1e-2");
    free(x);
    x = offset_rows(3, 768, 12);
    check_rownorm_vs_double(1, 3, 768, x, 1e-5f, "mean1e4,std1e-2");
    free(x);
}
END_TEST

START_TEST(long_rows_vs_double)
{
    enum { R = 3, C = 8192 };
    float *x = tbt_alloc(R * C * sizeof(float));
    tbt_fill_uniform(x, R * C, -2, 2, 21);
    for (size_t j = 0; j < C; j++) /* offsets 0, 3, -50 (mean/std ~ 40) */
        x[C + j] += 3.0f, x[2 * C + j] -= 50.0f;
    check_rownorm_vs_double(1, R, C, x, 1e-5f, "long");
    check_rownorm_vs_double(0, R, C, x, 1e-6f, "long");
    free(x);
}
END_TEST

/* Constant rows: x - mean = 0 exactly, so y is the bias exactly and the
 * gradient rstd * (g - mean(g)) is finite (rstd = 1/sqrt(eps)). */
START_TEST(constant_rows)
{
    static const size_t cols[2] = {33, 8192};
    static const float values[4] = {0.0f, 2.5f, -1234.5678f, 1e6f};
    for (int k = 0; k < 2; k++) {
        const size_t c = cols[k], rows = 4, n = rows * c;
        float *x = tbt_alloc(n * sizeof(float));
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < c; j++)
                x[r * c + j] = values[r];
        check_rownorm_vs_double(1, rows, c, x, 1e-5f, "constant");
        /* Exactness: y == bias (affine) and y == 0 (no affine). */
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 2);
        float *y = tbt_alloc(n * sizeof(float));
        tb_tensor xt = tb_tensor_2d(x, rows, c), yt = tb_tensor_2d(y, rows, c);
        for (unsigned flags = 0; flags <= (TB_NORM_SCALE | TB_NORM_SHIFT); flags++) {
            tb_layernorm ln;
            CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, c, 1e-5f, flags));
            if (flags & TB_NORM_SCALE)
                tbt_fill_uniform(ln.weight.value, c, -2, 2, 5);
            if (flags & TB_NORM_SHIFT)
                tbt_fill_uniform(ln.bias.value, c, -2, 2, 6);
            CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, NULL, 0));
            for (size_t i = 0; i < n; i++) {
                const float want = (flags & TB_NORM_SHIFT) ? ln.bias.value[i % c] : 0.0f;
                ck_assert_msg(y[i] == want, "layernorm constant row, flags %u: y[%zu] = %.9g, "
                              "expected %.9g exactly", flags, i, (double)y[i], (double)want);
            }
            tb_layernorm_free(&ln);
        }
        /* RMSNorm: a zero row gives exactly 0 and a finite gradient. */
        tb_rmsnorm rn;
        CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, c, 1e-6f, TB_NORM_SCALE));
        CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, NULL, 0));
        for (size_t j = 0; j < c; j++)
            ck_assert_msg(y[j] == 0.0f, "rmsnorm zero row: y[%zu] = %g", j, (double)y[j]);
        tb_rmsnorm_free(&rn);
        check_rownorm_vs_double(0, rows, c, x, 1e-6f, "constant");
        free(y);
        free(x);
    }
}
END_TEST

/* BatchNorm in training on x vs the double reference (also running stats). */
static void check_bn_vs_double(size_t n, size_t c, const float *x, const uint8_t *valid,
                               float eps, float momentum, const char *tag)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const size_t nc = n * c;
    float *y = tbt_alloc(nc * sizeof(float)), *dx = tbt_alloc(nc * sizeof(float));
    float *dy = tbt_alloc(nc * sizeof(float));
    tbt_fill_uniform(dy, nc, -1, 1, 88);
    double *yr = tbt_alloc(nc * sizeof(double)), *dxr = tbt_alloc(nc * sizeof(double));
    double *xh = tbt_alloc(nc * sizeof(double)), *dummy = tbt_alloc(nc * sizeof(double));
    double *dwr = tbt_alloc(c * sizeof(double)), *dbr = tbt_alloc(c * sizeof(double));
    double *mean = tbt_alloc(c * sizeof(double)), *var = tbt_alloc(c * sizeof(double));
    double *rmr = tbt_alloc(c * sizeof(double)), *rvr = tbt_alloc(c * sizeof(double));
    tb_batchnorm bn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, c, eps, momentum, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_away_from_zero(bn.weight.value, c, -1.5f, 1.5f, 0.5f, 89);
    tbt_fill_uniform(bn.bias.value, c, -0.5f, 0.5f, 90);
    size_t bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(c, &bytes));
    void *cache = tbt_alloc(bytes);
    tb_tensor xt = tb_tensor_2d((float *)(uintptr_t)x, n, c), yt = tb_tensor_2d(y, n, c);
    tb_tensor dyt = tb_tensor_2d(dy, n, c), dxt = tb_tensor_2d(dx, n, c);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, valid, &yt, cache, bytes));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &xt, valid, &dyt, cache, bytes, &dxt));
    double unit_dx, unused;
    bn_ref(x, dy, valid, bn.weight.value, bn.bias.value, NULL, NULL, n, c, eps, 1, yr, dxr, dwr,
           dbr, mean, var, &unit_dx);
    bn_ref(x, dy, valid, NULL, NULL, NULL, NULL, n, c, eps, 1, xh, dummy, NULL, NULL, NULL, NULL,
           &unused);
    for (size_t j = 0; j < c; j++) { /* initial running stats 0 and 1 */
        rmr[j] = (double)momentum * mean[j];
        rvr[j] = (1.0 - (double)momentum) + (double)momentum * var[j];
    }
    double u_dw, u_db;
    col_units(dy, xh, n, c, valid, &u_dw, &u_db);
    char lbl[128];
    assert_all_finite("y", y, nc);
    assert_all_finite("dx", dx, nc);
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].y_vs_double", n, c, tag);
    assert_close_d(lbl, y, yr, nc, RTOL64, ATOL64_REL * max_abs_d(yr, nc));
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].dx_vs_double", n, c, tag);
    assert_close_d(lbl, dx, dxr, nc, RTOL64, ATOL64_REL * unit_dx);
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].dweight_vs_double", n, c, tag);
    assert_close_d(lbl, bn.weight.grad, dwr, c, RTOL64, ATOL64_REL * u_dw);
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].dbias_vs_double", n, c, tag);
    assert_close_d(lbl, bn.bias.grad, dbr, c, RTOL64, ATOL64_REL * u_db);
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].running_mean_vs_double", n, c, tag);
    assert_close_d(lbl, bn.running_mean.value, rmr, c, RTOL64, ATOL64_REL * max_abs_d(rmr, c));
    snprintf(lbl, sizeof lbl, "batchnorm[%zux%zu,%s].running_var_vs_double", n, c, tag);
    assert_close_d(lbl, bn.running_var.value, rvr, c, RTOL64, ATOL64_REL * max_abs_d(rvr, c));
    tb_batchnorm_free(&bn);
    free(cache), free(y), free(dx), free(dy), free(yr), free(dxr), free(xh), free(dummy);
    free(dwr), free(dbr), free(mean), free(var), free(rmr), free(rvr);
}

START_TEST(batchnorm_robustness)
{
    /* Channels with mean 1e4 and std 1e-2. */
    float *x = offset_rows(64, 5, 13);
    check_bn_vs_double(64, 5, x, NULL, 1e-5f, 0.1f, "mean1e4,std1e-2");
    free(x);
    /* A constant channel (variance 0) next to ordinary ones: y = bias
     * exactly there, finite gradient. */
    enum { N = 17, C = 4 };
    float xc[N * C];
    fill_spread(xc, N, C, 0, 3);
    for (size_t r = 0; r < N; r++)
        xc[r * C + 1] = -1234.5678f, xc[r * C + 2] = 0.0f;
    check_bn_vs_double(N, C, xc, NULL, 1e-5f, 0.3f, "constant channels");
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_batchnorm bn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_uniform(bn.weight.value, C, -2, 2, 7);
    tbt_fill_uniform(bn.bias.value, C, -2, 2, 8);
    float y[N * C];
    tb_tensor xt = tb_tensor_2d(xc, N, C), yt = tb_tensor_2d(y, N, C);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &yt, NULL, 0));
    for (size_t r = 0; r < N; r++)
        for (size_t j = 1; j <= 2; j++)
            ck_assert_msg(y[r * C + j] == bn.bias.value[j],
                          "batchnorm constant channel %zu: y = %.9g, expected the bias %.9g", j,
                          (double)y[r * C + j], (double)bn.bias.value[j]);
    tb_batchnorm_free(&bn);
    /* Many rows (the chunked reduction), a mask, and an offset. */
    enum { NL = 1000, CL = 7 };
    float *xl = tbt_alloc(NL * CL * sizeof(float));
    uint8_t *valid = tbt_alloc(NL);
    tbt_fill_uniform(xl, NL * CL, -1, 1, 14);
    for (size_t r = 0; r < NL; r++) {
        valid[r] = (uint8_t)(r % 5 != 2);
        for (size_t j = 0; j < CL; j++)
            xl[r * CL + j] = valid[r] ? xl[r * CL + j] + 30.0f * (float)j : 1e3f;
    }
    check_bn_vs_double(NL, CL, xl, valid, 1e-5f, 0.1f, "mask,offset");
    free(xl);
    free(valid);
}
END_TEST

/* A NaN or infinity makes its LayerNorm row NaN and leaves the others alone. */
START_TEST(layernorm_nonfinite_rows)
{
    enum { R = 4, C = 17 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
    float x[R * C], y[R * C], y0[R * C];
    fill_spread(x, R, C, 1, 4);
    tb_tensor xt = tb_tensor_2d(x, R, C), yt = tb_tensor_2d(y, R, C), y0t = tb_tensor_2d(y0, R, C);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &y0t, NULL, 0));
    x[1 * C + 5] = NAN;
    x[2 * C + 0] = INFINITY;
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, NULL, 0));
    for (size_t j = 0; j < C; j++) {
        ck_assert_msg(isnan(y[C + j]) && isnan(y[2 * C + j]), "column %zu of the NaN/inf rows "
                      "is %g / %g, expected NaN", j, (double)y[C + j], (double)y[2 * C + j]);
        ck_assert(memcmp(&y[j], &y0[j], sizeof(float)) == 0);
        ck_assert(memcmp(&y[3 * C + j], &y0[3 * C + j], sizeof(float)) == 0);
    }
    tb_layernorm_free(&ln);
}
END_TEST

/* ======================================================================
 * Error paths
 * ==================================================================== */

START_TEST(layernorm_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_layernorm ln;
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;
    /* init */
    ck_assert_int_eq(tb_layernorm_init(NULL, &ln, 4, 1e-5f, aff), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_init(&ctx, NULL, 4, 1e-5f, aff), TB_ERR_NULL_ARG);
    const float bad_eps[] = {0.0f, -0.0f, -1e-5f, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < sizeof bad_eps / sizeof bad_eps[0]; k++) {
        memset(&ln, 0x5A, sizeof ln);
        ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 4, bad_eps[k], aff), TB_ERR_INVALID_ARG);
        ck_assert_msg(ln.storage == NULL && ln.weight.value == NULL && ln.bias.value == NULL,
                      "layernorm not left empty after a failed init");
        tb_layernorm_free(&ln);
    }
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 0, 1e-5f, aff), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 4, 1e-5f, TB_NORM_GLOBAL_STATS),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 4, 1e-5f, 0x80u), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, SIZE_MAX / 2, 1e-5f, aff), TB_ERR_OVERFLOW);
    tb_layernorm_free(NULL);
    /* cache size */
    size_t bytes;
    ck_assert_int_eq(tb_layernorm_cache_size(3, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_cache_size(SIZE_MAX / 2, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_layernorm_cache_size(3, &bytes), TB_OK);
    size_t bytes2;
    ck_assert_int_eq(tb_layernorm_cache_size(2, &bytes2), TB_OK);
    ck_assert_uint_le(bytes2, bytes);

    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, 4, 1e-5f, aff));
    tbt_fill_uniform(ln.weight.value, 4, 0.5f, 1.5f, 1);
    float x[12], y[12], dy[12], dx[12];
    tbt_fill_uniform(x, 12, -1, 1, 2);
    tbt_fill_uniform(dy, 12, -1, 1, 3);
    unsigned char *cbuf = tbt_alloc(bytes + 16);
    float *cache = (float *)(void *)cbuf;
    fill_sentinel(y, 12);
    tb_tensor xt = tb_tensor_2d(x, 3, 4), yt = tb_tensor_2d(y, 3, 4);
    tb_tensor dyt = tb_tensor_2d(dy, 3, 4), dxt = tb_tensor_2d(dx, 3, 4);
    tb_tensor x_cols = tb_tensor_2d(x, 4, 3), y_rows = tb_tensor_2d(y, 2, 4);
    tb_tensor y_cols = tb_tensor_2d(y, 2, 6), x_zero = tb_tensor_2d(x, 0, 4);
    tb_tensor x_null = tb_tensor_2d(NULL, 3, 4), x_5d = xt;
    x_5d.ndim = 5;
    tb_tensor x_0d = xt;
    x_0d.ndim = 0;
    ck_assert_int_eq(tb_layernorm_forward(NULL, &ln, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, NULL, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, NULL, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, NULL, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_null, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_cols, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, &y_rows, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, &y_cols, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_zero, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_5d, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_0d, &yt, cache, bytes), TB_ERR_SHAPE);
    /* element count * sizeof(float) overflowing size_t (tensor.h) */
    tb_tensor x_huge = tb_tensor_3d(x, SIZE_MAX / 8, 16, 4);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_huge, &yt, cache, bytes), TB_ERR_OVERFLOW);
    memset(cbuf, 0x77, bytes + 16);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, bytes - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, &yt, cbuf + 1, bytes + 8),
                     TB_ERR_INVALID_ARG);
    for (size_t i = 0; i < bytes + 16; i++)
        ck_assert_msg(cbuf[i] == 0x77, "cache byte %zu written on error", i);
    tb_layernorm empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &empty, &xt, &yt, cache, bytes), TB_ERR_STATE);
    assert_untouched(y, 12, "layernorm y");
    ck_assert_str_ne(tb_ctx_error(&ctx), "");

    /* Backward: never-filled cache, cache from another row count, shapes,
     * dx overlapping x; nothing written on error. */
    fill_sentinel(dx, 12);
    memset(cbuf, 0, bytes + 16);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt),
                     TB_ERR_STATE);
    tb_tensor x2 = tb_tensor_2d(x, 2, 4), y2 = tb_tensor_2d(y, 2, 4);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &x2, &y2, cache, bytes));
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt),
                     TB_ERR_STATE);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, bytes));
    tb_tensor dy_rows = tb_tensor_2d(dy, 2, 4), dx_cols = tb_tensor_2d(dx, 4, 3);
    tb_tensor dx_on_x = tb_tensor_2d(x, 3, 4);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dy_rows, cache, bytes, &dxt),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dx_cols),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes - 1, &dxt),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, NULL, bytes, &dxt),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, NULL, cache, bytes, &dxt),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, NULL),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dx_on_x),
                     TB_ERR_INVALID_ARG);
    assert_untouched(dx, 12, "layernorm dx");
    for (size_t j = 0; j < 4; j++)
        ck_assert(ln.weight.grad[j] == 0.0f && ln.bias.grad[j] == 0.0f);
    float xcopy[12];
    memcpy(xcopy, x, sizeof x);
    CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt));
    ck_assert(memcmp(xcopy, x, sizeof x) == 0);
    free(cbuf);
    tb_layernorm_free(&ln);
    tb_layernorm_free(&ln); /* freeing twice is fine: left empty */
    ck_assert_ptr_null(ln.storage);
}
END_TEST

START_TEST(rmsnorm_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rmsnorm rn;
    ck_assert_int_eq(tb_rmsnorm_init(NULL, &rn, 4, 1e-6f, TB_NORM_SCALE), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, NULL, 4, 1e-6f, TB_NORM_SCALE), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 0, 1e-6f, TB_NORM_SCALE), TB_ERR_INVALID_ARG);
    const float bad_eps[] = {0.0f, -1e-6f, NAN, INFINITY};
    for (size_t k = 0; k < 4; k++)
        ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 4, bad_eps[k], TB_NORM_SCALE),
                         TB_ERR_INVALID_ARG);
    memset(&rn, 0x5A, sizeof rn);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 4, 1e-6f, TB_NORM_SHIFT), TB_ERR_INVALID_ARG);
    ck_assert_msg(rn.storage == NULL && rn.weight.value == NULL,
                  "rmsnorm not left empty after a failed init");
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 4, 1e-6f, TB_NORM_SCALE | TB_NORM_SHIFT),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, 4, 1e-6f, TB_NORM_GLOBAL_STATS),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rmsnorm_init(&ctx, &rn, SIZE_MAX / 2, 1e-6f, TB_NORM_SCALE),
                     TB_ERR_OVERFLOW);
    size_t bytes;
    ck_assert_int_eq(tb_rmsnorm_cache_size(3, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_cache_size(SIZE_MAX, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_rmsnorm_cache_size(3, &bytes), TB_OK);

    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, 4, 1e-6f, TB_NORM_SCALE));
    float x[12], y[12], dy[12], dx[12];
    tbt_fill_uniform(x, 12, -1, 1, 2);
    tbt_fill_uniform(dy, 12, -1, 1, 3);
    unsigned char *cbuf = tbt_alloc(bytes + 16);
    float *cache = (float *)(void *)cbuf;
    fill_sentinel(y, 12);
    tb_tensor xt = tb_tensor_2d(x, 3, 4), yt = tb_tensor_2d(y, 3, 4);
    tb_tensor dyt = tb_tensor_2d(dy, 3, 4), dxt = tb_tensor_2d(dx, 3, 4);
    tb_tensor x_cols = tb_tensor_2d(x, 4, 3), y_rows = tb_tensor_2d(y, 2, 4);
    tb_tensor x_zero = tb_tensor_2d(x, 3, 0), x_null = tb_tensor_2d(NULL, 3, 4);
    ck_assert_int_eq(tb_rmsnorm_forward(NULL, &rn, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, NULL, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &x_null, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &x_cols, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &xt, &y_rows, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &x_zero, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cache, bytes - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cbuf + 2, bytes + 8),
                     TB_ERR_INVALID_ARG);
    tb_rmsnorm empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_rmsnorm_forward(&ctx, &empty, &xt, &yt, cache, bytes), TB_ERR_STATE);
    assert_untouched(y, 12, "rmsnorm y");

    fill_sentinel(dx, 12);
    memset(cbuf, 0, bytes + 16);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt), TB_ERR_STATE);
    tb_tensor x2 = tb_tensor_2d(x, 2, 4), y2 = tb_tensor_2d(y, 2, 4);
    CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &x2, &y2, cache, bytes));
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt), TB_ERR_STATE);
    CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cache, bytes));
    tb_tensor dy_rows = tb_tensor_2d(dy, 2, 4), dx_on_x = tb_tensor_2d(x, 3, 4);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dy_rows, cache, bytes, &dxt),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes - 1, &dxt),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dx_on_x),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_rmsnorm_backward(&ctx, &rn, NULL, &dyt, cache, bytes, &dxt),
                     TB_ERR_NULL_ARG);
    assert_untouched(dx, 12, "rmsnorm dx");
    for (size_t j = 0; j < 4; j++)
        ck_assert(rn.weight.grad[j] == 0.0f);
    CHECK_OK(ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt));
    free(cbuf);
    tb_rmsnorm_free(&rn);
    tb_rmsnorm_free(&rn);
    tb_rmsnorm_free(NULL);
}
END_TEST

/* Snapshot of a BatchNorm's running statistics. */
typedef struct bn_snap {
    float rm[8], rv[8];
} bn_snap;

static bn_snap bn_snapshot(const tb_batchnorm *bn)
{
    bn_snap s;
    memset(&s, 0, sizeof s);
    ck_assert_uint_le(bn->channels, 8);
    memcpy(s.rm, bn->running_mean.value, bn->channels * sizeof(float));
    memcpy(s.rv, bn->running_var.value, bn->channels * sizeof(float));
    return s;
}

static void assert_same_stats(const tb_batchnorm *bn, const bn_snap *s, const char *what)
{
    ck_assert_msg(memcmp(s->rm, bn->running_mean.value, bn->channels * sizeof(float)) == 0 &&
                      memcmp(s->rv, bn->running_var.value, bn->channels * sizeof(float)) == 0,
                  "%s: the running statistics changed", what);
}

START_TEST(batchnorm_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_batchnorm bn;
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;
    ck_assert_int_eq(tb_batchnorm_init(NULL, &bn, 3, 1e-5f, 0.1f, aff), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_init(&ctx, NULL, 3, 1e-5f, 0.1f, aff), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 0, 1e-5f, 0.1f, aff), TB_ERR_INVALID_ARG);
    const float bad_eps[] = {0.0f, -1e-5f, NAN, INFINITY};
    for (size_t k = 0; k < 4; k++)
        ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 3, bad_eps[k], 0.1f, aff),
                         TB_ERR_INVALID_ARG);
    const float bad_mom[] = {-0.01f, 1.01f, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 5; k++) {
        memset(&bn, 0x5A, sizeof bn);
        ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, bad_mom[k], aff),
                         TB_ERR_INVALID_ARG);
        ck_assert_msg(bn.storage == NULL && bn.weight.value == NULL &&
                          bn.running_mean.value == NULL && bn.running_var.value == NULL,
                      "batchnorm not left empty after a failed init");
    }
    ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, 0.1f, 0x80u), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, SIZE_MAX / 2, 1e-5f, 0.1f, aff),
                     TB_ERR_OVERFLOW);
    /* momentum 0 and 1 are valid */
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, 0.0f, aff));
    tb_batchnorm_free(&bn);
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, 1.0f, aff));
    tb_batchnorm_free(&bn);
    size_t bytes, bytes3;
    ck_assert_int_eq(tb_batchnorm_cache_size(3, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_cache_size(SIZE_MAX, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_batchnorm_cache_size(3, &bytes3), TB_OK);

    enum { N = 5, C = 3 };
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, aff));
    tbt_fill_uniform(bn.running_mean.value, C, -1, 1, 4);
    tbt_fill_uniform(bn.running_var.value, C, 0.5f, 2, 5);
    const bn_snap s0 = bn_snapshot(&bn);
    bytes = bytes3;
    float x[N * C], y[N * C], dy[N * C], dx[N * C];
    tbt_fill_uniform(x, N * C, -1, 1, 2);
    tbt_fill_uniform(dy, N * C, -1, 1, 3);
    unsigned char *cbuf = tbt_alloc(bytes + 16);
    float *cache = (float *)(void *)cbuf;
    memset(cbuf, 0x77, bytes + 16);
    fill_sentinel(y, N * C);
    tb_tensor xt = tb_tensor_2d(x, N, C), yt = tb_tensor_2d(y, N, C);
    tb_tensor dyt = tb_tensor_2d(dy, N, C), dxt = tb_tensor_2d(dx, N, C);
    tb_tensor x_cols = tb_tensor_2d(x, C, N), y_rows = tb_tensor_2d(y, N - 1, C);
    tb_tensor x_zero = tb_tensor_2d(x, 0, C), x_null = tb_tensor_2d(NULL, N, C);
    const tb_mode T = TB_MODE_TRAINING;
    ck_assert_int_eq(tb_batchnorm_forward(NULL, &bn, T, &xt, NULL, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, NULL, T, &xt, NULL, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, NULL, NULL, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, NULL, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x_null, NULL, &yt, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x_cols, NULL, &yt, cache, bytes),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, &y_rows, cache, bytes),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x_zero, NULL, &yt, cache, bytes),
                     TB_ERR_SHAPE);
    tb_tensor x_huge = tb_tensor_3d(x, SIZE_MAX / 8, 16, C);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x_huge, NULL, &yt, cache, bytes),
                     TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, &yt, cache, bytes - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, &yt, cbuf + 1, bytes + 8),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, (tb_mode)7, &xt, NULL, &yt, cache, bytes),
                     TB_ERR_INVALID_ARG);
    /* Fewer than two counted positions in training with batch statistics. */
    tb_tensor x1 = tb_tensor_2d(x, 1, C), y1 = tb_tensor_2d(y, 1, C);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &x1, NULL, &y1, cache, bytes),
                     TB_ERR_INVALID_ARG);
    const uint8_t one_valid[N] = {0, 0, 1, 0, 0}, none_valid[N] = {0, 0, 0, 0, 0};
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, one_valid, &yt, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, T, &xt, none_valid, &yt, cache, bytes),
                     TB_ERR_INVALID_ARG);
    tb_batchnorm empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &empty, T, &xt, NULL, &yt, cache, bytes),
                     TB_ERR_STATE);
    assert_untouched(y, N * C, "batchnorm y");
    for (size_t i = 0; i < bytes + 16; i++)
        ck_assert_msg(cbuf[i] == 0x77, "batchnorm cache byte %zu written on error", i);
    assert_same_stats(&bn, &s0, "failed forwards");
    /* ... but one position is fine where no batch statistics are needed. */
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_INFERENCE, &x1, NULL, &y1, NULL, 0));
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_INFERENCE, &xt, one_valid, &yt, NULL, 0));
    assert_same_stats(&bn, &s0, "inference forwards");
    tb_batchnorm gbn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &gbn, C, 1e-5f, 0.1f, aff | TB_NORM_GLOBAL_STATS));
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &gbn, T, &x1, NULL, &y1, NULL, 0));
    tb_batchnorm_free(&gbn);

    /* Backward. */
    fill_sentinel(dx, N * C);
    memset(cbuf, 0, bytes + 16);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dxt),
                     TB_ERR_STATE);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, T, &xt, NULL, &yt, cache, bytes));
    tb_tensor dy_rows = tb_tensor_2d(dy, N - 1, C), dx_cols = tb_tensor_2d(dx, C, N);
    tb_tensor dx_on_x = tb_tensor_2d(x, N, C);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dy_rows, cache, bytes, &dxt),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dx_cols),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes - 1, &dxt),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, NULL, bytes, &dxt),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, NULL),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dx_on_x),
                     TB_ERR_INVALID_ARG);
    assert_untouched(dx, N * C, "batchnorm dx");
    for (size_t j = 0; j < C; j++)
        ck_assert(bn.weight.grad[j] == 0.0f && bn.bias.grad[j] == 0.0f);
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dxt));
    free(cbuf);
    tb_batchnorm_free(&bn);
    tb_batchnorm_free(&bn);
    tb_batchnorm_free(NULL);
}
END_TEST

/* ======================================================================
 * BatchNorm semantics
 * ==================================================================== */

START_TEST(batchnorm_modes)
{
    enum { N = 23, C = 5 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float x[N * C], y[N * C], dy[N * C], dx[N * C];
    double yr[N * C], dxr[N * C], mean[C], var[C], unit;
    fill_spread(x, N, C, 0, 9);
    tbt_fill_uniform(dy, N * C, -1, 1, 10);
    tb_tensor xt = tb_tensor_2d(x, N, C), yt = tb_tensor_2d(y, N, C);
    tb_tensor dyt = tb_tensor_2d(dy, N, C), dxt = tb_tensor_2d(dx, N, C);
    size_t bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(C, &bytes));
    void *cache = tbt_alloc(bytes);

    /* Training (default init 0 / 1, momentum 1): running = batch mean and
     * unbiased variance. Momentum 0: running statistics unchanged. */
    tb_batchnorm bn;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 1.0f, TB_NORM_SCALE | TB_NORM_SHIFT));
    for (size_t j = 0; j < C; j++)
        ck_assert(bn.running_mean.value[j] == 0.0f && bn.running_var.value[j] == 1.0f &&
                  bn.weight.value[j] == 1.0f && bn.bias.value[j] == 0.0f);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &yt, cache, bytes));
    bn_ref(x, dy, NULL, NULL, NULL, NULL, NULL, N, C, 1e-5f, 1, yr, dxr, NULL, NULL, mean, var,
           &unit);
    assert_close_d("batchnorm[23x5,m=1].running_mean", bn.running_mean.value, mean, C, RTOL64,
                   ATOL64_REL * max_abs_d(mean, C));
    assert_close_d("batchnorm[23x5,m=1].running_var", bn.running_var.value, var, C, RTOL64,
                   ATOL64_REL * max_abs_d(var, C));
    tb_batchnorm_free(&bn);
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.0f, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_uniform(bn.running_mean.value, C, -1, 1, 11);
    tbt_fill_uniform(bn.running_var.value, C, 0.5f, 2, 12);
    bn_snap s = bn_snapshot(&bn);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &yt, NULL, 0));
    assert_same_stats(&bn, &s, "momentum 0");
    tb_batchnorm_free(&bn);

    /* Inference: normalises with the running statistics, never updates
     * them, and backward treats them as constants (dx = w dy / std). */
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_uniform(bn.running_mean.value, C, -1, 1, 11);
    tbt_fill_uniform(bn.running_var.value, C, 0.5f, 2, 12);
    tbt_fill_away_from_zero(bn.weight.value, C, -1.5f, 1.5f, 0.5f, 13);
    tbt_fill_uniform(bn.bias.value, C, -0.5f, 0.5f, 14);
    s = bn_snapshot(&bn);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_INFERENCE, &xt, NULL, &yt, cache, bytes));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &dyt, cache, bytes, &dxt));
    assert_same_stats(&bn, &s, "inference");
    bn_ref(x, dy, NULL, bn.weight.value, bn.bias.value, s.rm, s.rv, N, C, 1e-5f, 0, yr, dxr,
           NULL, NULL, NULL, NULL, &unit);
    assert_close_d("batchnorm[23x5,eval].y", y, yr, N * C, RTOL64, ATOL64_REL * max_abs_d(yr, N * C));
    assert_close_d("batchnorm[23x5,eval].dx", dx, dxr, N * C, RTOL64, ATOL64_REL * unit);
    /* Training mode afterwards does use the batch statistics. */
    float y_train[N * C];
    tb_tensor ytt = tb_tensor_2d(y_train, N, C);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, NULL, &ytt, NULL, 0));
    ck_assert(memcmp(y, y_train, sizeof y) != 0);
    tb_batchnorm_free(&bn);

    /* TB_NORM_GLOBAL_STATS in training mode: stored statistics, never
     * updated (forward and backward), constants in backward; the same
     * result as inference mode. */
    tb_batchnorm g;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &g, C, 1e-5f, 0.1f,
                                    TB_NORM_SCALE | TB_NORM_SHIFT | TB_NORM_GLOBAL_STATS));
    memcpy(g.running_mean.value, s.rm, C * sizeof(float));
    memcpy(g.running_var.value, s.rv, C * sizeof(float));
    tbt_fill_away_from_zero(g.weight.value, C, -1.5f, 1.5f, 0.5f, 13);
    tbt_fill_uniform(g.bias.value, C, -0.5f, 0.5f, 14);
    float yg[N * C], dxg[N * C];
    tb_tensor ygt = tb_tensor_2d(yg, N, C), dxgt = tb_tensor_2d(dxg, N, C);
    for (int rep = 0; rep < 2; rep++) {
        CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &g, TB_MODE_TRAINING, &xt, NULL, &ygt, cache, bytes));
        CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &g, &xt, NULL, &dyt, cache, bytes, &dxgt));
        assert_same_stats(&g, &s, "TB_NORM_GLOBAL_STATS training");
    }
    assert_close_d("batchnorm[23x5,global,train].y", yg, yr, N * C, RTOL64,
                   ATOL64_REL * max_abs_d(yr, N * C));
    assert_close_d("batchnorm[23x5,global,train].dx", dxg, dxr, N * C, RTOL64, ATOL64_REL * unit);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &g, TB_MODE_INFERENCE, &xt, NULL, &ygt, NULL, 0));
    assert_same_stats(&g, &s, "TB_NORM_GLOBAL_STATS inference");
    assert_close_d("batchnorm[23x5,global,eval].y", yg, yr, N * C, RTOL64,
                   ATOL64_REL * max_abs_d(yr, N * C));
    tb_batchnorm_free(&g);
    free(cache);
}
END_TEST

/* Masked positions: y = 0, dx = 0, and everything else as if the batch
 * held the valid rows only (statistics, running statistics, gradients).
 * The two runs reduce in different chunks, so compare with the float64
 * tolerance rather than bitwise. */
START_TEST(batchnorm_mask_equals_valid_rows)
{
    enum { N = 40, C = 7 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    uint8_t valid[N];
    size_t nv = 0;
    for (size_t r = 0; r < N; r++)
        valid[r] = (uint8_t)(r % 3 != 1 && r != 38), nv += valid[r];
    float x[N * C], dy[N * C], y[N * C], dx[N * C];
    fill_spread(x, N, C, 0, 15);
    tbt_fill_uniform(dy, N * C, -1, 1, 16);
    for (size_t r = 0; r < N; r++)
        if (!valid[r])
            for (size_t j = 0; j < C; j++)
                x[r * C + j] = 1e3f * (float)(j + 1), dy[r * C + j] = 5.0f;
    float *xv = tbt_alloc(nv * C * sizeof(float)), *dyv = tbt_alloc(nv * C * sizeof(float));
    float *yv = tbt_alloc(nv * C * sizeof(float)), *dxv = tbt_alloc(nv * C * sizeof(float));
    for (size_t r = 0, k = 0; r < N; r++)
        if (valid[r]) {
            memcpy(xv + k * C, x + r * C, C * sizeof(float));
            memcpy(dyv + k * C, dy + r * C, C * sizeof(float));
            k++;
        }
    size_t bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(C, &bytes));
    void *cache = tbt_alloc(bytes), *cache_v = tbt_alloc(bytes);
    tb_batchnorm a, b;
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &a, C, 1e-5f, 0.3f, aff));
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &b, C, 1e-5f, 0.3f, aff));
    tbt_fill_away_from_zero(a.weight.value, C, -1.5f, 1.5f, 0.5f, 17);
    tbt_fill_uniform(a.bias.value, C, -0.5f, 0.5f, 18);
    memcpy(b.weight.value, a.weight.value, C * sizeof(float));
    memcpy(b.bias.value, a.bias.value, C * sizeof(float));
    tb_tensor xt = tb_tensor_2d(x, N, C), yt = tb_tensor_2d(y, N, C);
    tb_tensor dyt = tb_tensor_2d(dy, N, C), dxt = tb_tensor_2d(dx, N, C);
    tb_tensor xvt = tb_tensor_2d(xv, nv, C), yvt = tb_tensor_2d(yv, nv, C);
    tb_tensor dyvt = tb_tensor_2d(dyv, nv, C), dxvt = tb_tensor_2d(dxv, nv, C);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &a, TB_MODE_TRAINING, &xt, valid, &yt, cache, bytes));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &a, &xt, valid, &dyt, cache, bytes, &dxt));
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &b, TB_MODE_TRAINING, &xvt, NULL, &yvt, cache_v, bytes));
    CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &b, &xvt, NULL, &dyvt, cache_v, bytes, &dxvt));
    float *yc = tbt_alloc(nv * C * sizeof(float)), *dxc = tbt_alloc(nv * C * sizeof(float));
    for (size_t r = 0, k = 0; r < N; r++) {
        if (!valid[r]) {
            for (size_t j = 0; j < C; j++)
                ck_assert_msg(y[r * C + j] == 0.0f && dx[r * C + j] == 0.0f,
                              "padded row %zu: y=%g dx=%g", r, (double)y[r * C + j],
                              (double)dx[r * C + j]);
            continue;
        }
        memcpy(yc + k * C, y + r * C, C * sizeof(float));
        memcpy(dxc + k * C, dx + r * C, C * sizeof(float));
        k++;
    }
    /* units from the valid-rows run */
    double *yr = tbt_alloc(nv * C * sizeof(double)), *dxr = tbt_alloc(nv * C * sizeof(double));
    double *xh = tbt_alloc(nv * C * sizeof(double)), unit_dx, unused, u_dw, u_db;
    bn_ref(xv, dyv, NULL, a.weight.value, a.bias.value, NULL, NULL, nv, C, 1e-5f, 1, yr, dxr,
           NULL, NULL, NULL, NULL, &unit_dx);
    bn_ref(xv, dyv, NULL, NULL, NULL, NULL, NULL, nv, C, 1e-5f, 1, xh, dxr, NULL, NULL, NULL,
           NULL, &unused);
    col_units(dyv, xh, nv, C, NULL, &u_dw, &u_db);
    tbt_assert_close("batchnorm[40x7,mask].y_vs_valid_rows", yc, yv, nv * C, RTOL64,
                     ATOL64_REL * max_abs_f(yv, nv * C));
    tbt_assert_close("batchnorm[40x7,mask].dx_vs_valid_rows", dxc, dxv, nv * C, RTOL64,
                     ATOL64_REL * unit_dx);
    tbt_assert_close("batchnorm[40x7,mask].dweight_vs_valid_rows", a.weight.grad, b.weight.grad,
                     C, RTOL64, ATOL64_REL * u_dw);
    tbt_assert_close("batchnorm[40x7,mask].dbias_vs_valid_rows", a.bias.grad, b.bias.grad, C,
                     RTOL64, ATOL64_REL * u_db);
    tbt_assert_close("batchnorm[40x7,mask].running_mean_vs_valid_rows", a.running_mean.value,
                     b.running_mean.value, C, RTOL64,
                     ATOL64_REL * max_abs_f(b.running_mean.value, C));
    tbt_assert_close("batchnorm[40x7,mask].running_var_vs_valid_rows", a.running_var.value,
                     b.running_var.value, C, RTOL64,
                     ATOL64_REL * max_abs_f(b.running_var.value, C));
    /* Inference with a mask: padded outputs 0, the rest as without it. */
    float y_all[N * C];
    tb_tensor yat = tb_tensor_2d(y_all, N, C);
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &a, TB_MODE_INFERENCE, &xt, valid, &yt, NULL, 0));
    CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &a, TB_MODE_INFERENCE, &xt, NULL, &yat, NULL, 0));
    for (size_t i = 0; i < N * C; i++)
        ck_assert_msg(valid[i / C] ? memcmp(&y[i], &y_all[i], sizeof(float)) == 0 : y[i] == 0.0f,
                      "inference with mask: element %zu is %g (without mask %g)", i,
                      (double)y[i], (double)y_all[i]);
    tb_batchnorm_free(&a);
    tb_batchnorm_free(&b);
    free(cache), free(cache_v), free(xv), free(dyv), free(yv), free(dxv), free(yc), free(dxc);
    free(yr), free(dxr), free(xh);
}
END_TEST

/* In place (y over x, dx over dy) gives the same bits; backward adds into
 * the parameter gradients and skips frozen ones. */
START_TEST(aliasing_accumulation_and_frozen)
{
    enum { N = 9, C = 13 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float x[N * C], dy[N * C], y[N * C], dx[N * C], xi[N * C], dyi[N * C];
    fill_spread(x, N, C, 1, 19);
    tbt_fill_uniform(dy, N * C, -1, 1, 20);
    tb_tensor xt = tb_tensor_2d(x, N, C), yt = tb_tensor_2d(y, N, C);
    tb_tensor dyt = tb_tensor_2d(dy, N, C), dxt = tb_tensor_2d(dx, N, C);
    tb_tensor xit = tb_tensor_3d(xi, 3, 3, C), dyit = tb_tensor_3d(dyi, 3, 3, C);
    size_t bytes = 0, b1;
    CHECK_OK(ctx, tb_layernorm_cache_size(N, &b1));
    bytes = b1;
    CHECK_OK(ctx, tb_rmsnorm_cache_size(N, &b1));
    bytes = b1 > bytes ? b1 : bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(C, &b1));
    bytes = b1 > bytes ? b1 : bytes;
    void *cache = tbt_alloc(bytes);
    for (int k = 0; k < 3; k++) {
        const char *name = k == 0 ? "layernorm" : k == 1 ? "rmsnorm" : "batchnorm";
        tb_layernorm ln;
        tb_rmsnorm rn;
        tb_batchnorm bn;
        tb_param *w, *b = NULL;
        if (k == 0) {
            CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
            w = &ln.weight, b = &ln.bias;
        } else if (k == 1) {
            CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-6f, TB_NORM_SCALE));
            w = &rn.weight;
        } else {
            CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f,
                                            TB_NORM_SCALE | TB_NORM_SHIFT));
            w = &bn.weight, b = &bn.bias;
        }
        tbt_fill_away_from_zero(w->value, C, -1.5f, 1.5f, 0.5f, 21);
        if (b)
            tbt_fill_uniform(b->value, C, -0.5f, 0.5f, 22);
        /* out of place, then in place on a 3-D view of a copy */
        memcpy(xi, x, sizeof x);
        memcpy(dyi, dy, sizeof dy);
#define FWD(X, Y) (k == 0   ? tb_layernorm_forward(&ctx, &ln, (X), (Y), cache, bytes) \
                   : k == 1 ? tb_rmsnorm_forward(&ctx, &rn, (X), (Y), cache, bytes)  \
                            : tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, (X), NULL, (Y), cache, bytes))
#define BWD(X, DY, DX) (k == 0   ? tb_layernorm_backward(&ctx, &ln, (X), (DY), cache, bytes, (DX)) \
                        : k == 1 ? tb_rmsnorm_backward(&ctx, &rn, (X), (DY), cache, bytes, (DX))  \
                                 : tb_batchnorm_backward(&ctx, &bn, (X), NULL, (DY), cache, bytes, (DX)))
        CHECK_OK(ctx, FWD(&xt, &yt));
        CHECK_OK(ctx, BWD(&xt, &dyt, &dxt));
        float *g1 = tbt_alloc(C * sizeof(float)), *gb1 = tbt_alloc(C * sizeof(float));
        memcpy(g1, w->grad, C * sizeof(float));
        if (b)
            memcpy(gb1, b->grad, C * sizeof(float));
        /* second backward (same cache, same x): gradients add up */
        CHECK_OK(ctx, BWD(&xt, &dyt, &dyit));
        for (size_t j = 0; j < C; j++) {
            ck_assert_msg(w->grad[j] == g1[j] + g1[j], "%s: weight.grad does not accumulate",
                          name);
            if (b)
                ck_assert_msg(b->grad[j] == gb1[j] + gb1[j], "%s: bias.grad does not accumulate",
                              name);
        }
        ck_assert_msg(memcmp(dyi, dx, sizeof dx) == 0, "%s: dx differs between calls", name);
        /* in place: dx over dy (x intact), then y over x */
        memcpy(dyi, dy, sizeof dy);
        CHECK_OK(ctx, FWD(&xt, &yt));
        CHECK_OK(ctx, BWD(&xt, &dyit, &dyit));
        ck_assert_msg(memcmp(dyi, dx, sizeof dx) == 0, "%s: in-place backward differs", name);
        CHECK_OK(ctx, FWD(&xit, &xit));
        ck_assert_msg(memcmp(xi, y, sizeof y) == 0, "%s: in-place forward differs", name);
        /* frozen weight: no gradient; the bias still gets one */
        memset(w->grad, 0, C * sizeof(float));
        if (b)
            memset(b->grad, 0, C * sizeof(float));
        w->trainable = 0;
        CHECK_OK(ctx, FWD(&xt, &yt));
        CHECK_OK(ctx, BWD(&xt, &dyt, &dxt));
        for (size_t j = 0; j < C; j++) {
            ck_assert_msg(w->grad[j] == 0.0f, "%s: frozen weight got a gradient", name);
            if (b)
                ck_assert_msg(b->grad[j] == gb1[j], "%s: bias gradient %g, expected %g", name,
                              (double)b->grad[j], (double)gb1[j]);
        }
        ck_assert_msg(memcmp(dyi, dx, sizeof dx) == 0, "%s: dx depends on the weight's flag",
                      name);
#undef FWD
#undef BWD
        free(g1);
        free(gb1);
        if (k == 0)
            tb_layernorm_free(&ln);
        else if (k == 1)
            tb_rmsnorm_free(&rn);
        else
            tb_batchnorm_free(&bn);
    }
    free(cache);
}
END_TEST

/* ======================================================================
 * Parameter enumeration
 * ==================================================================== */

static void expect_param(const tb_param_list *list, size_t idx, const char *name, size_t c,
                         int trainable, int has_grad, float init)
{
    ck_assert_uint_gt(list->count, idx);
    const tb_named_param *e = &list->items[idx];
    ck_assert_str_eq(e->name, name);
    ck_assert_ptr_nonnull(e->param);
    ck_assert_int_eq(e->param->trainable != 0, trainable);
    ck_assert_msg((e->param->grad != NULL) == has_grad, "%s: grad is %s", name,
                  e->param->grad ? "non-NULL" : "NULL");
    ck_assert_uint_eq(e->param->ndim, 1);
    ck_assert_uint_eq(e->param->shape[0], c);
    ck_assert_uint_eq(e->param->numel, c);
    for (size_t j = 0; j < c; j++) {
        ck_assert_msg(e->param->value[j] == init, "%s[%zu] = %g, expected %g", name, j,
                      (double)e->param->value[j], (double)init);
        if (has_grad)
            ck_assert(e->param->grad[j] == 0.0f);
    }
}

START_TEST(params_enumeration)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_param_list list;
    enum { C = 6 };
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;

    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, aff));
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_layernorm_params(&ctx, &ln, "h.0.ln_1", &list));
    ck_assert_uint_eq(list.count, 2);
    expect_param(&list, 0, "h.0.ln_1.weight", C, 1, 1, 1.0f);
    expect_param(&list, 1, "h.0.ln_1.bias", C, 1, 1, 0.0f);
    ck_assert_ptr_eq(list.items[0].param, &ln.weight);
    ck_assert_int_eq(tb_layernorm_params(&ctx, &ln, "h.0.ln_1", &list), TB_ERR_DUPLICATE);
    ck_assert_int_eq(tb_layernorm_params(&ctx, &ln, "x", NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_params(NULL, &ln, "x", &list), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_params(&ctx, NULL, "x", &list), TB_ERR_NULL_ARG);
    tb_layernorm_free(&ln);
    /* weight only; no parameters; uninitialised */
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE));
    CHECK_OK(ctx, tb_layernorm_params(&ctx, &ln, NULL, &list));
    ck_assert_uint_eq(list.count, 3);
    expect_param(&list, 2, "weight", C, 1, 1, 1.0f);
    ck_assert_ptr_null(ln.bias.value);
    tb_layernorm_free(&ln);
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, 0));
    CHECK_OK(ctx, tb_layernorm_params(&ctx, &ln, "none", &list));
    ck_assert_uint_eq(list.count, 3);
    tb_layernorm_free(&ln);
    ck_assert_int_eq(tb_layernorm_params(&ctx, &ln, "freed", &list), TB_ERR_STATE);
    tb_param_list_free(&list);

    tb_rmsnorm rn;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-6f, TB_NORM_SCALE));
    CHECK_OK(ctx, tb_rmsnorm_params(&ctx, &rn, "h.1.rms", &list));
    ck_assert_uint_eq(list.count, 1);
    expect_param(&list, 0, "h.1.rms.weight", C, 1, 1, 1.0f);
    tb_rmsnorm_free(&rn);
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-6f, 0));
    CHECK_OK(ctx, tb_rmsnorm_params(&ctx, &rn, "plain", &list));
    ck_assert_uint_eq(list.count, 1);
    tb_rmsnorm_free(&rn);
    ck_assert_int_eq(tb_rmsnorm_params(&ctx, &rn, "freed", &list), TB_ERR_STATE);
    tb_param_list_free(&list);

    tb_batchnorm bn;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, aff));
    CHECK_OK(ctx, tb_batchnorm_params(&ctx, &bn, "bn", &list));
    ck_assert_uint_eq(list.count, 4);
    expect_param(&list, 0, "bn.weight", C, 1, 1, 1.0f);
    expect_param(&list, 1, "bn.bias", C, 1, 1, 0.0f);
    expect_param(&list, 2, "bn.running_mean", C, 0, 0, 0.0f);
    expect_param(&list, 3, "bn.running_var", C, 0, 0, 1.0f);
    ck_assert_ptr_eq(tb_param_list_find(&list, "bn.running_var"), &bn.running_var);
    ck_assert_uint_eq(tb_param_list_numel(&list, 1), 2 * C);
    ck_assert_uint_eq(tb_param_list_numel(&list, 0), 4 * C);
    tb_param_list_zero_grad(&list); /* skips the buffers without gradient */
    tb_batchnorm_free(&bn);
    tb_param_list_free(&list);
    /* Without affine parameters the buffers are still listed. */
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, TB_NORM_GLOBAL_STATS));
    CHECK_OK(ctx, tb_batchnorm_params(&ctx, &bn, NULL, &list));
    ck_assert_uint_eq(list.count, 2);
    expect_param(&list, 0, "running_mean", C, 0, 0, 0.0f);
    expect_param(&list, 1, "running_var", C, 0, 0, 1.0f);
    ck_assert_ptr_null(bn.weight.value);
    ck_assert_ptr_null(bn.bias.value);
    tb_batchnorm_free(&bn);
    ck_assert_int_eq(tb_batchnorm_params(&ctx, &bn, "freed", &list), TB_ERR_STATE);
    tb_param_list_free(&list);
}
END_TEST

/* ======================================================================
 * Bitwise determinism across thread counts
 * ==================================================================== */

typedef struct run_out {
    float *buf;
    size_t n;
} run_out;

static void append(run_out *r, const float *x, size_t n)
{
    r->buf = realloc(r->buf, (r->n + n) * sizeof(float));
    ck_assert_ptr_nonnull(r->buf);
    memcpy(r->buf + r->n, x, n * sizeof(float));
    r->n += n;
}

static run_out run_norms(int threads)
{
    run_out out = {NULL, 0};
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    enum { R = 4096, C = 768, BN_N = 1000, BN_C = 64 };
    float *x = tbt_alloc((size_t)R * C * sizeof(float)), *y = tbt_alloc((size_t)R * C * sizeof(float));
    float *dy = tbt_alloc((size_t)R * C * sizeof(float)), *dx = tbt_alloc((size_t)R * C * sizeof(float));
    tbt_fill_uniform(x, (size_t)R * C, -2, 3, 1);
    tbt_fill_uniform(dy, (size_t)R * C, -1, 1, 2);
    tb_tensor xt = tb_tensor_3d(x, 8, R / 8, C), yt = tb_tensor_3d(y, 8, R / 8, C);
    tb_tensor dyt = tb_tensor_3d(dy, 8, R / 8, C), dxt = tb_tensor_3d(dx, 8, R / 8, C);
    size_t bytes, b2;
    CHECK_OK(ctx, tb_layernorm_cache_size(R, &bytes));
    CHECK_OK(ctx, tb_rmsnorm_cache_size(R, &b2));
    bytes = b2 > bytes ? b2 : bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(BN_C, &b2));
    bytes = b2 > bytes ? b2 : bytes;
    void *cache = tbt_alloc(bytes);

    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_uniform(ln.weight.value, C, -1.5f, 1.5f, 3);
    tbt_fill_uniform(ln.bias.value, C, -0.5f, 0.5f, 4);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, bytes));
    CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt));
    append(&out, y, (size_t)R * C);
    append(&out, dx, (size_t)R * C);
    append(&out, ln.weight.grad, C);
    append(&out, ln.bias.grad, C);
    tb_layernorm_free(&ln);

    tb_rmsnorm rn;
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-6f, TB_NORM_SCALE));
    tbt_fill_uniform(rn.weight.value, C, -1.5f, 1.5f, 5);
    CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cache, bytes));
    CHECK_OK(ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt));
    append(&out, y, (size_t)R * C);
    append(&out, dx, (size_t)R * C);
    append(&out, rn.weight.grad, C);
    tb_rmsnorm_free(&rn);

    /* BatchNorm: 1000 positions x 64 channels, without and with a mask. */
    tb_tensor bx = tb_tensor_2d(x, BN_N, BN_C), by = tb_tensor_2d(y, BN_N, BN_C);
    tb_tensor bdy = tb_tensor_2d(dy, BN_N, BN_C), bdx = tb_tensor_2d(dx, BN_N, BN_C);
    uint8_t *valid = tbt_alloc(BN_N);
    for (size_t r = 0; r < BN_N; r++)
        valid[r] = (uint8_t)((r * 7) % 11 != 3);
    for (int m = 0; m < 2; m++) {
        tb_batchnorm bn;
        CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, BN_C, 1e-5f, 0.1f,
                                        TB_NORM_SCALE | TB_NORM_SHIFT));
        tbt_fill_uniform(bn.weight.value, BN_C, -1.5f, 1.5f, 6);
        tbt_fill_uniform(bn.bias.value, BN_C, -0.5f, 0.5f, 7);
        const uint8_t *v = m ? valid : NULL;
        CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &bx, v, &by, cache, bytes));
        CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &bx, v, &bdy, cache, bytes, &bdx));
        append(&out, y, (size_t)BN_N * BN_C);
        append(&out, dx, (size_t)BN_N * BN_C);
        append(&out, bn.weight.grad, BN_C);
        append(&out, bn.bias.grad, BN_C);
        append(&out, bn.running_mean.value, BN_C);
        append(&out, bn.running_var.value, BN_C);
        CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_INFERENCE, &bx, v, &by, cache, bytes));
        CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &bx, v, &bdy, cache, bytes, &bdx));
        append(&out, y, (size_t)BN_N * BN_C);
        append(&out, dx, (size_t)BN_N * BN_C);
        append(&out, bn.weight.grad, BN_C);
        tb_batchnorm_free(&bn);
    }
    free(valid);
    free(cache), free(x), free(y), free(dy), free(dx);
    return out;
}

START_TEST(bitwise_identical_for_1_2_3_threads)
{
    run_out ref = run_norms(1);
    for (int t = 2; t <= 3; t++) {
        run_out r = run_norms(t);
        ck_assert_uint_eq(r.n, ref.n);
        size_t first = r.n;
        for (size_t i = 0; i < r.n && first == r.n; i++)
            if (memcmp(&r.buf[i], &ref.buf[i], sizeof(float)) != 0)
                first = i;
        ck_assert_msg(first == r.n, "%d threads differ from 1 thread at element %zu of %zu", t,
                      first, r.n);
        free(r.buf);
    }
    free(ref.buf);
}
END_TEST

Suite *suite_norm(void)
{
    Suite *s = suite_create("norm");
    TCase *tg = tcase_create("finite_differences");
    tcase_set_timeout(tg, 120);
    tcase_add_test(tg, layernorm_gradients);
    tcase_add_test(tg, rmsnorm_gradients);
    tcase_add_test(tg, batchnorm_gradients);
    suite_add_tcase(s, tg);
    TCase *tr = tcase_create("robustness");
    tcase_set_timeout(tr, 60);
    tcase_add_test(tr, large_offset_vs_double);
    tcase_add_test(tr, long_rows_vs_double);
    tcase_add_test(tr, constant_rows);
    tcase_add_test(tr, batchnorm_robustness);
    tcase_add_test(tr, layernorm_nonfinite_rows);
    suite_add_tcase(s, tr);
    TCase *te = tcase_create("errors");
    tcase_add_test(te, layernorm_errors);
    tcase_add_test(te, rmsnorm_errors);
    tcase_add_test(te, batchnorm_errors);
    suite_add_tcase(s, te);
    TCase *tb = tcase_create("semantics");
    tcase_set_timeout(tb, 60);
    tcase_add_test(tb, batchnorm_modes);
    tcase_add_test(tb, batchnorm_mask_equals_valid_rows);
    tcase_add_test(tb, aliasing_accumulation_and_frozen);
    tcase_add_test(tb, params_enumeration);
    suite_add_tcase(s, tb);
    TCase *tt = tcase_create("threads");
    tcase_set_timeout(tt, 180);
    tcase_add_test(tt, bitwise_identical_for_1_2_3_threads);
    suite_add_tcase(s, tt);
    return s;
}
