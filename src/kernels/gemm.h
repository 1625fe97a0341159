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
 * Structure (BLIS/GotoBLAS): C is first scaled by beta; then for blocks of
 * N (NC) and K (KC), op(B) is packed into NR-wide slivers and, for blocks
 * of M (MC), op(A) into MR-tall slivers; a register-blocked micro-kernel
 * (gemm_ukernel.h) adds alpha * (sliver product) to each MR x NR tile.
 * A product of at most 64 rows against a transposed B (a linear layer on a
 * few tokens) is computed transposed instead, C^T = B op(A)^T, with B's
 * rows read in place, so the big operand is never packed (tb_gemm_narrow).
 * Threads split the larger of M and N into contiguous ranges of whole
 * tiles. Each element of C is computed by one thread with the same
 * operations in the same order whatever the split, so the result is
 * bitwise identical for any thread count (within one kernel family).
 */
#ifndef TB_KERNELS_GEMM_H
#define TB_KERNELS_GEMM_H

#include <stddef.h>

#include "tblocks/context.h"

/* Returns TB_OK, or TB_ERR_NO_MEMORY if packing buffers could not be
 * allocated (C is then unchanged). Dimensions are not validated here. */
tb_status tb_gemm(tb_ctx *ctx, int trans_a, int trans_b, size_t M, size_t N, size_t K,
                  float alpha, const float *A, size_t lda, const float *B, size_t ldb,
                  float beta, float *C, size_t ldc);

/* The same product on the calling thread only, with no allocation: for
 * blocks that tile their own work and call this from inside their own
 * parallel region (attention). Same kernels and rounding as tb_gemm.
 *
 * Scratch: `work` holds `work_floats` floats (any float alignment), at
 * least tb_gemm_serial_work(ctx, M', N', K') for some M' >= M, N' >= N,
 * K' >= K: the bound is taken over every micro-kernel ctx's family may
 * pick (tile shapes differ: 6 x 8 portable, 6 x 16 and 1 x 64 AVX2,
 * 12/8/1 x 32 AVX-512), so one size covers every smaller product on that
 * family.
 * A smaller `work` returns TB_ERR_BUFFER_TOO_SMALL with C unchanged (a bug
 * in the caller, never user input); nothing is written outside the floats
 * the bound counts. Debug builds (-DTB_DEBUG, the sanitizer pass) also fill
 * every float of `work` the product must not write with a sentinel and
 * check it afterwards: a pack or kernel that wrote past its extent makes the
 * call return TB_ERR_BUFFER_TOO_SMALL (C then holds no valid result). */
/* Whether tb_gemm computes a product of M rows, depth K, against a
 * transposed (trans_b) or untransposed B through its transposed form
 * C^T = B op(A)^T, B read in place (few rows against a big transposed B; see
 * gemm_narrow in gemm.c). Same bits either way; for tests and benchmarks. */
int tb_gemm_narrow(const tb_ctx *ctx, int trans_b, size_t M, size_t K);

size_t tb_gemm_serial_work(const tb_ctx *ctx, size_t M, size_t N, size_t K);
tb_status tb_gemm_serial(const tb_ctx *ctx, int trans_a, int trans_b, size_t M, size_t N,
                         size_t K, float alpha, const float *A, size_t lda, const float *B,
                         size_t ldb, float beta, float *C, size_t ldc, float *work,
                         size_t work_floats);

#endif /* TB_KERNELS_GEMM_H */
