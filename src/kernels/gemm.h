/*
 * The one matrix-product interface every block uses (internal).
 *
 *   C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C
 *
 * op(X) is X or X^T as selected by trans_a / trans_b; all matrices are
 * row-major with leading dimensions lda, ldb, ldc (elements between rows).
 * beta == 0 means C is not read (NaN in C does not propagate).
 *
 * Forms used by the blocks (no transposes are materialised):
 *   linear forward  y  = x W^T      NT
 *   input gradient  dx = dy W       NN
 *   weight gradient dW += dy^T x    TN, beta = 1
 *
 * Work is split over rows of C with a fixed partition and every element's
 * sum over K runs in the same order, so the result is bitwise identical for
 * any thread count.
 */
#ifndef TB_KERNELS_GEMM_H
#define TB_KERNELS_GEMM_H

#include <stddef.h>

#include "tblocks/context.h"

void tb_gemm(const tb_ctx *ctx, int trans_a, int trans_b, size_t M, size_t N, size_t K,
             float alpha, const float *A, size_t lda, const float *B, size_t ldb, float beta,
             float *C, size_t ldc);

#endif /* TB_KERNELS_GEMM_H */
