/*
 * The SVD of a matrix given as a product of two thin factors, internal:
 * what tb_lora_combine() (src/blocks/lora.c) uses for PEFT's "svd"
 * combination, so that the (out, in) sum of the adapters' B A is never
 * formed.
 *
 *   P (m x n) = X Y^T,   X (m x r), Y (n x r)
 *
 * Method, all in double on the calling thread (no OpenMP: the result is
 * bitwise identical for any thread count and kernel family):
 * 1. thin QR of both factors, X = Qx Rx and Y = Qy Ry, by modified
 *    Gram-Schmidt with one full re-orthogonalisation ("twice is enough");
 *    a column whose remainder after both passes is at most 1e-12 of its
 *    norm (an exactly dependent or zero column, such as B = 0 from PEFT's
 *    default initialisation) gets a zero Q column and a zero diagonal
 *    entry, which drops at most 1e-12 of that column from P;
 * 2. the SVD of the small r x r matrix Rx Ry^T by one-sided (Hestenes)
 *    Jacobi: cyclic sweeps over the column pairs in a fixed order, a pair
 *    rotated unless |<w_p, w_q>| <= 2 r DBL_EPSILON ||w_p|| ||w_q||, done
 *    after a sweep without a rotation or after 64 sweeps (every rotation is
 *    orthogonal, so even then U diag(sigma) V^T equals P to rounding; only
 *    the splitting into singular values would be less sharp);
 * 3. singular values sorted descending (ties keep their column order),
 *    U = Qx U', V = Qy V'.
 *
 * Cost: about 4 (m + n) r^2 flops for the QRs, 2 r^3 per Jacobi sweep and
 * 2 (m + n) r^2 for the last products; scratch 4 r^2 + r doubles and r
 * indices, from the context's allocator.
 */
#ifndef TB_CORE_LOWRANK_SVD_H
#define TB_CORE_LOWRANK_SVD_H

#include <stddef.h>

#include "tblocks/context.h"
#include "tblocks/status.h"

/*
 * x: the r columns of X, column j at x[j * m .. j * m + m); y: the r
 * columns of Y, column j at y[j * n ..). Both are overwritten: on return x
 * holds the columns of U (m x r) and y those of V (n x r), and sigma[0..r)
 * the singular values, descending, >= 0, with P = U diag(sigma) V^T to
 * rounding. Columns j with sigma[j] > 0 are orthonormal (to rounding); a
 * column of U whose sigma is 0 is zero. A NaN or infinite input gives NaN
 * in sigma (it is never taken for a zero column, so it cannot vanish from
 * the result). fn names the public caller in the
 * error detail. Returns TB_OK, TB_ERR_OVERFLOW or TB_ERR_NO_MEMORY (x, y
 * and sigma then unchanged). m, n, r >= 1; not otherwise validated.
 */
tb_status tb_lowrank_svd(tb_ctx *ctx, const char *fn, size_t m, size_t n, size_t r, double *x,
                         double *y, double *sigma);

#endif /* TB_CORE_LOWRANK_SVD_H */
