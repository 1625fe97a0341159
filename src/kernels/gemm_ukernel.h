/*
 * Register-blocked micro-kernels of the GEMM engine (internal).
 *
 * A micro-kernel multiplies a packed MR x kc sliver of op(A) by a packed
 * kc x NR sliver of op(B) and adds alpha times the product to an MR x NR
 * tile of C:
 *
 *   a: kc groups of MR floats  (a[k*MR + r] = op(A)[i0 + r][k0 + k])
 *   b: kc groups of NR floats, ldb apart (b[k*ldb + j] = op(B)[k0 + k][j0 + j]);
 *      ldb == NR for a packed sliver, or B's own row stride when the driver
 *      reads an untransposed B in place (no packing)
 *   add != 0:  C[r*ldc + j] = C[r*ldc + j] + (alpha * sum_k a[k*MR+r] * b[k*NR+j])
 *   add == 0:  C[r*ldc + j] = alpha * sum_k ...      (C is not read)
 *
 * The sum runs over k in ascending order in every lane, and the update is a
 * rounded multiply followed by a rounded add (never fused), so a tile
 * computed into a zeroed scratch tile and then added to C gives the same
 * bits as one computed in place: edge tiles need no special kernel.
 * None of a, b, C need be aligned (the first A sliver of a block is 64-byte
 * aligned, the others start MR*kc floats apart).
 */
#ifndef TB_KERNELS_GEMM_UKERNEL_H
#define TB_KERNELS_GEMM_UKERNEL_H

#include <stddef.h>

typedef void (*tb_ukernel_fn)(size_t kc, const float *a, const float *b, size_t ldb, float *c,
                              size_t ldc, float alpha, int add);

/*
 * Transposing pack (optional, per instruction set): `rows` (<= w) source
 * rows of kc contiguous floats (row r at src + r*ld) become kc groups of w
 * floats, dst[k*w + r]; rows [rows, w) are zero. This is the expensive
 * packing case: op(A) when A is not transposed (w = MR) and op(B) when B is
 * transposed (w = NR). dst need not be aligned.
 */
typedef void (*tb_pack_rows_fn)(size_t w, size_t rows, size_t kc, const float *src, size_t ld,
                                float *dst);

/*
 * One row of A against rows of an untransposed B read in place (optional,
 * for M = 1: decoding): acc[j] = sum over k < kc of a[k] * b[k*ldb + j] for
 * j < n, each element by the same operations, in the same order, as the
 * family's micro-kernels (so the driver's alpha and add then give the same
 * bits as a tile). B is read row after row, each row's n floats straight
 * through, where a micro-kernel's tile would read NR columns of kc rows far
 * apart; acc lives in L1 between rows. Nothing need be aligned.
 */
typedef void (*tb_rows_fn)(size_t kc, const float *a, const float *b, size_t ldb, size_t n,
                           float *acc);

/*
 * One row of A against a transposed B (optional, for M = 1: decoding's
 * vocabulary product), K blocks of kc at once: for each K block b (k in
 * [b*kc, min(b*kc + kc, K))) and r < rows,
 *   acc[b*ld_acc + r] = sum over the block's k of a[k] * b[r*ldb + k],
 * each by the same operations, in the same order, as the family's
 * micro-kernels compute that block. All of K at once lets each row of B be
 * read end to end; the rows are transposed in registers as they are read,
 * instead of being packed into a sliver and read again.
 */
typedef void (*tb_dots_fn)(size_t K, size_t kc, const float *a, const float *b, size_t ldb,
                           size_t rows, float *acc, size_t ld_acc);

/*
 * The micro-kernel with op(A)'s MR rows read in place (optional): as
 * tb_ukernel_fn, but a[r*lda + k] instead of a packed sliver, each row's kc
 * floats contiguous. Every element gets the same operations in the same
 * order as from fn (the same FMA chain: a*b and b*a round alike), so the
 * bits are fn's. The driver uses it for a product with few rows against a
 * transposed B (gemm.c, gemm_narrow): it computes C^T = B op(A)^T with B's
 * rows in place as this kernel's A and op(A)^T packed as its B, so the big
 * operand is never packed.
 */
typedef void (*tb_ukernel_arows_fn)(size_t kc, const float *a, size_t lda, const float *b,
                                    size_t ldb, float *c, size_t ldc, float alpha, int add);

typedef struct tb_ukernel {
    const char *name;
    int mr, nr;               /* tile shape */
    tb_ukernel_fn fn;         /* NULL if this build has no such kernel */
    tb_pack_rows_fn pack_rows; /* NULL: the driver's plain C loop */
    tb_rows_fn rows;          /* NULL: one-row products go through fn */
    tb_dots_fn dots;          /* NULL: one-row products go through fn */
    tb_ukernel_arows_fn arows; /* NULL: no in-place A (the tile path runs) */
} tb_ukernel;

/* The largest tile any kernel uses (for scratch tiles). */
#define TB_UKERNEL_MAX_MR 16
#define TB_UKERNEL_MAX_NR 64

extern const tb_ukernel tb_ukernel_portable;
extern const tb_ukernel tb_ukernel_avx2;
extern const tb_ukernel tb_ukernel_avx2_m1;   /* 1 x 64, for M = 1 (decoding) */
extern const tb_ukernel tb_ukernel_avx512;
extern const tb_ukernel tb_ukernel_avx512_m8; /* 8 x 32, for small M */
extern const tb_ukernel tb_ukernel_avx512_m1; /* 1 x 32, for M = 1 (decoding) */

/* Every micro-kernel the driver may pick for a family (tb_kernel from
 * tblocks/context.h; TB_KERNEL_AUTO and unknown values mean portable) into
 * uk[0 .. TB_UKERNELS_PER_FAMILY), the general one first; returns how
 * many. Scratch bounds are taken over these, so they hold for whatever M a
 * caller passes; the tests sweep shapes around each one's MR and NR. */
#define TB_UKERNELS_PER_FAMILY 3
size_t tb_ukernels_of_family(int family, const tb_ukernel **uk);

#endif /* TB_KERNELS_GEMM_UKERNEL_H */
