/* Singular values by one-sided Jacobi rotations (ex_svd.h). */
#include "ex_svd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int by_descending(const void *pa, const void *pb)
{
    const double a = *(const double *)pa, b = *(const double *)pb;
    return (a < b) - (a > b);
}

/*
 * Rotate pairs of columns of U = A until every pair is orthogonal to
 * working precision; the column norms are then the singular values
 * (A = U V^T with V the product of the rotations). Columns are stored
 * contiguously (U transposed) so a rotation touches two rows of memory.
 */
int ex_singular_values(const double *a, size_t m, size_t n, double *sv)
{
    if (!a || !sv || n == 0 || m < n || m > ((size_t)-1 / sizeof(double)) / n)
        return -1;
    double *u = malloc(m * n * sizeof(double));
    if (!u)
        return -1;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            u[j * m + i] = a[i * n + j];
    int sweeps = 0, converged = n == 1;
    while (!converged && sweeps < 100) {
        sweeps++;
        converged = 1;
        for (size_t p = 0; p + 1 < n; p++) {
            double *up = u + p * m;
            for (size_t q = p + 1; q < n; q++) {
                double *uq = u + q * m;
                double alpha = 0.0, beta = 0.0, gamma = 0.0;
                for (size_t i = 0; i < m; i++) {
                    alpha += up[i] * up[i];
                    beta += uq[i] * uq[i];
                    gamma += up[i] * uq[i];
                }
                if (gamma == 0.0 || fabs(gamma) <= 1e-15 * sqrt(alpha * beta))
                    continue;
                converged = 0;
                const double zeta = (beta - alpha) / (2.0 * gamma);
                const double t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
                const double c = 1.0 / sqrt(1.0 + t * t), s = c * t;
                for (size_t i = 0; i < m; i++) {
                    const double x = up[i], y = uq[i];
                    up[i] = c * x - s * y;
                    uq[i] = s * x + c * y;
                }
            }
        }
    }
    for (size_t j = 0; j < n; j++) {
        double s2 = 0.0;
        for (size_t i = 0; i < m; i++)
            s2 += u[j * m + i] * u[j * m + i];
        sv[j] = sqrt(s2);
    }
    free(u);
    qsort(sv, n, sizeof *sv, by_descending);
    return converged ? sweeps : 0;
}

ex_rank_stats ex_rank_of(const double *sv, size_t n, double tol)
{
    ex_rank_stats r;
    memset(&r, 0, sizeof r);
    if (n == 0 || !(sv[0] > 0.0))
        return r;
    double sum = 0.0, sq = 0.0, h = 0.0;
    for (size_t i = 0; i < n; i++) {
        r.rank += sv[i] > tol * sv[0];
        sum += sv[i];
        sq += sv[i] * sv[i];
    }
    for (size_t i = 0; i < n; i++)
        if (sv[i] > 0.0) {
            const double p = sv[i] / sum;
            h -= p * log(p);
        }
    r.entropy = exp(h);
    r.stable = sq / (sv[0] * sv[0]);
    r.smallest = sv[n - 1] / sv[0];
    return r;
}
