/*
 * Singular values of a small dense matrix by one-sided Jacobi (Hestenes)
 * rotations, in double precision, for the examples that measure ranks
 * (attention_rank). Serial and in a fixed order: the result depends only on
 * the input. O(m n^2) per sweep, a handful of sweeps: meant for n up to a
 * few hundred. (The library's own low-rank SVD is internal to src/.)
 */
#ifndef EX_SVD_H
#define EX_SVD_H

#include <stddef.h>

/* The n singular values of a (m, n) row-major, m >= n >= 1, into sv (n),
 * largest first. Returns the sweeps used (>= 1), 0 if they did not
 * converge within 100 sweeps (sv then holds the last estimate), or -1 for
 * bad arguments or no memory. */
int ex_singular_values(const double *a, size_t m, size_t n, double *sv);

/* Measures of the rank of a matrix from its n singular values (largest
 * first). */
typedef struct ex_rank_stats {
    size_t rank;       /* how many exceed tol * sv[0] */
    double entropy;    /* exp(-sum p log p), p = sv / sum(sv) (Roy & Vetterli's effective rank) */
    double stable;     /* sum sv^2 / sv[0]^2 (stable rank) */
    double smallest;   /* sv[n-1] / sv[0] */
} ex_rank_stats;

ex_rank_stats ex_rank_of(const double *sv, size_t n, double tol);

#endif /* EX_SVD_H */
