/* SVD of X Y^T from its thin factors (lowrank_svd.h): QR of both, Jacobi SVD of the core. */
#include "lowrank_svd.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "internal.h"

/* A remainder at most this fraction of its column's norm is a dependent column. */
#define DEPENDENT_TOL 1e-12
/* Jacobi sweeps before giving up on sharper convergence (quadratic: ~6-10 needed). */
#define MAX_SWEEPS 64

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* In place: the r columns of c (length m each) become Q, R (r x r, row-major)
 * receives the upper triangle with c = Q R. Zero columns of Q where the
 * column was dependent on the previous ones. */
static void qr_mgs(size_t m, size_t r, double *c, double *R)
{
    memset(R, 0, r * r * sizeof(double));
    for (size_t j = 0; j < r; j++) {
        double *v = c + j * m;
        const double norm0 = sqrt(dot(v, v, m));
        if (norm0 == 0.0)
            continue; /* a zero column: Q's column and R[j][j] stay 0 */
        for (int pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < j; i++) {
                if (R[i * r + i] == 0.0) /* a zero column of Q */
                    continue;
                const double *q = c + i * m;
                const double h = dot(q, v, m);
                for (size_t e = 0; e < m; e++)
                    v[e] -= h * q[e];
                R[i * r + j] += h;
            }
        /* Written so that a NaN (from a NaN or infinite input) is not taken
         * for a dependent column: it goes on into Q, R and the result. */
        const double nrm = sqrt(dot(v, v, m));
        if (nrm <= DEPENDENT_TOL * norm0) {
            memset(v, 0, m * sizeof(double));
            continue; /* R[j][j] stays 0 */
        }
        for (size_t e = 0; e < m; e++)
            v[e] /= nrm;
        R[j * r + j] = nrm;
    }
}

/* One-sided Jacobi on the r columns of w (column j at w + j * r), with the
 * rotations accumulated into the columns of v (identity on entry): on
 * return the columns of w are mutually orthogonal and w_in = w v^T. */
static void jacobi(size_t r, double *w, double *v)
{
    const double tol = 2.0 * DBL_EPSILON * (double)r;
    for (int sweep = 0; sweep < MAX_SWEEPS; sweep++) {
        int rotated = 0;
        for (size_t p = 0; p + 1 < r; p++)
            for (size_t q = p + 1; q < r; q++) {
                double *wp = w + p * r, *wq = w + q * r;
                const double alpha = dot(wp, wp, r), beta = dot(wq, wq, r);
                const double gamma = dot(wp, wq, r);
                if (fabs(gamma) <= tol * sqrt(alpha) * sqrt(beta))
                    continue;
                /* The rotation that makes columns p and q orthogonal, the
                 * smaller of the two angles (|t| <= 1). */
                const double zeta = (beta - alpha) / (2.0 * gamma);
                const double t = zeta > 1e150 || zeta < -1e150
                                     ? 0.5 / zeta
                                     : (zeta >= 0.0 ? 1.0 : -1.0) /
                                           (fabs(zeta) + sqrt(1.0 + zeta * zeta));
                const double c = 1.0 / sqrt(1.0 + t * t), s = c * t;
                double *vp = v + p * r, *vq = v + q * r;
                for (size_t e = 0; e < r; e++) {
                    const double a = wp[e], b = wq[e];
                    wp[e] = c * a - s * b;
                    wq[e] = s * a + c * b;
                    const double va = vp[e], vb = vq[e];
                    vp[e] = c * va - s * vb;
                    vq[e] = s * va + c * vb;
                }
                rotated = 1;
            }
        if (!rotated)
            break;
    }
}

/* In place: the r columns of c (length m) become c * T, T (r x r) given by
 * its columns (column j at t + j * r); tmp holds r doubles. */
static void times_small(size_t m, size_t r, double *c, const double *t, double *tmp)
{
    for (size_t e = 0; e < m; e++) {
        for (size_t l = 0; l < r; l++)
            tmp[l] = c[l * m + e];
        for (size_t j = 0; j < r; j++) {
            const double *tj = t + j * r;
            double s = 0.0;
            for (size_t l = 0; l < r; l++)
                s += tmp[l] * tj[l];
            c[j * m + e] = s;
        }
    }
}

tb_status tb_lowrank_svd(tb_ctx *ctx, const char *fn, size_t m, size_t n, size_t r, double *x,
                         double *y, double *sigma)
{
    size_t rr, doubles, bytes;
    if (!tb_mul_size(r, r, &rr) || !tb_mul_size(rr, 4, &doubles) ||
        !tb_add_size(doubles, r, &doubles) || !tb_mul_size(doubles, sizeof(double), &bytes) ||
        !tb_add_size(bytes, r * sizeof(size_t), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "SVD scratch for rank %zu overflows", r);
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    double *rx = mem, *ry = rx + rr, *w = ry + rr, *v = w + rr, *tmp = v + rr;
    size_t *order = (size_t *)(tmp + r);

    qr_mgs(m, r, x, rx);
    qr_mgs(n, r, y, ry);
    /* w = Rx Ry^T by columns: w[j][i] = sum_l Rx[i][l] Ry[j][l], l >= max(i, j). */
    for (size_t j = 0; j < r; j++)
        for (size_t i = 0; i < r; i++) {
            double acc = 0.0;
            for (size_t l = i > j ? i : j; l < r; l++)
                acc += rx[i * r + l] * ry[j * r + l];
            w[j * r + i] = acc;
        }
    memset(v, 0, rr * sizeof(double));
    for (size_t j = 0; j < r; j++)
        v[j * r + j] = 1.0;
    jacobi(r, w, v);

    /* Singular values and a stable descending order (insertion sort). */
    for (size_t j = 0; j < r; j++) {
        tmp[j] = sqrt(dot(w + j * r, w + j * r, r));
        size_t at = j;
        while (at > 0 && tmp[order[at - 1]] < tmp[j]) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = j;
    }
    /* U' = w / sigma and V' in the sorted order, into rx and ry (the R
     * factors are no longer needed). */
    for (size_t j = 0; j < r; j++) {
        const size_t from = order[j];
        const double sg = tmp[from];
        sigma[j] = sg;
        for (size_t e = 0; e < r; e++) {
            rx[j * r + e] = sg > 0.0 ? w[from * r + e] / sg : 0.0;
            ry[j * r + e] = v[from * r + e];
        }
    }
    times_small(m, r, x, rx, tmp);
    times_small(n, r, y, ry, tmp);
    tb_free_with(&ctx->allocator, mem);
    return TB_OK;
}
