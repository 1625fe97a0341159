/* Portable C micro-kernel: a 6 x 8 tile, for whatever the target offers.
 *
 * With GCC or clang the tile lives in the compilers' generic vectors of
 * four floats (vector_size(16)), which every target maps onto its SIMD
 * registers or splits: 12 accumulators, 2 of B and 1 broadcast of A fill
 * 15 of x86-64's 16 baseline SSE registers, so nothing spills. Elsewhere
 * (or with TB_NO_VECTOR_EXTENSIONS defined) the same tile is plain loops.
 * Both compute each element by the same rounded multiply and rounded add,
 * k ascending from zero, so both give the same bits (test_gemm.c checks).
 *
 * Why not plain loops everywhere: GCC 12 turns the obvious 4 x 16 loop nest
 * into shuffles across rows. At this file's flags (-O3 -ffp-contract=off,
 * one core of an AMD EPYC Zen 5, kc = 256) the old kernel ran 6.2 GFLOP/s
 * and this one 43.9; under AddressSanitizer (which `make check` runs every
 * family's whole suite under) 1.5 and 10.1.
 *
 * Never fused: the Makefile builds this file with -ffp-contract=off; clang,
 * whose default contracts a * b + c, is also told so here. */
#include <string.h>

#include "gemm_ukernel.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define MR 6
#define NR 8

#if (defined(__GNUC__) || defined(__clang__)) && !defined(TB_NO_VECTOR_EXTENSIONS)

typedef float tb_v4 __attribute__((vector_size(16)));
#define NV (NR / 4) /* vectors per tile row */

/* Four floats at any alignment (memcpy: no aliasing or alignment rules). */
static inline tb_v4 load4(const float *p)
{
    tb_v4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, tb_v4 v)
{
    memcpy(p, &v, sizeof v);
}

static void ukernel_portable(size_t kc, const float *a, const float *b, size_t ldb, float *c,
                             size_t ldc, float alpha, int add)
{
    tb_v4 acc[MR][NV];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = (tb_v4){0.0f, 0.0f, 0.0f, 0.0f};
    for (size_t k = 0; k < kc; k++) {
        const float *ak = a + k * MR, *bk = b + k * ldb;
        tb_v4 bv[NV];
        for (int v = 0; v < NV; v++)
            bv[v] = load4(bk + 4 * v);
        for (int r = 0; r < MR; r++) {
            const tb_v4 ar = {ak[r], ak[r], ak[r], ak[r]};
            for (int v = 0; v < NV; v++)
                acc[r][v] += ar * bv[v];
        }
    }
    const tb_v4 al = {alpha, alpha, alpha, alpha};
    for (int r = 0; r < MR; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int v = 0; v < NV; v++) {
            const tb_v4 t = al * acc[r][v];
            store4(cr + 4 * v, add ? load4(cr + 4 * v) + t : t);
        }
    }
}

#else

static void ukernel_portable(size_t kc, const float *a, const float *b, size_t ldb, float *c,
                             size_t ldc, float alpha, int add)
{
    float acc[MR][NR] = {{0}};
    for (size_t k = 0; k < kc; k++) {
        const float *ak = a + k * MR, *bk = b + k * ldb;
        for (int r = 0; r < MR; r++) {
            const float ar = ak[r];
            for (int j = 0; j < NR; j++)
                acc[r][j] += ar * bk[j];
        }
    }
    for (int r = 0; r < MR; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int j = 0; j < NR; j++) {
            const float t = alpha * acc[r][j];
            cr[j] = add ? cr[j] + t : t;
        }
    }
}

#endif

/* One row of A against B's rows in place (gemm_ukernel.h): the same
 * rounded product and add per element, k ascending from zero. */
static void rows_portable(size_t kc, const float *a, const float *b, size_t ldb, size_t n,
                          float *acc)
{
    for (size_t j = 0; j < n; j++)
        acc[j] = 0.0f;
    for (size_t k = 0; k < kc; k++) {
        const float ak = a[k], *bk = b + k * ldb;
        for (size_t j = 0; j < n; j++)
            acc[j] += ak * bk[j];
    }
}

/* One row of A against rows of a transposed B (gemm_ukernel.h): per K
 * block, each a dot product, k ascending from zero, as the tile kernel. */
static void dots_portable(size_t K, size_t kc, const float *a, const float *b, size_t ldb,
                          size_t rows, float *acc, size_t ld_acc)
{
    for (size_t r = 0; r < rows; r++) {
        const float *br = b + r * ldb;
        for (size_t pc = 0, blk = 0; pc < K; pc += kc, blk++) {
            const size_t kend = pc + kc < K ? pc + kc : K;
            float s = 0.0f;
            for (size_t k = pc; k < kend; k++)
                s += a[k] * br[k];
            acc[blk * ld_acc + r] = s;
        }
    }
}

const tb_ukernel tb_ukernel_portable = {"portable", MR,           NR, ukernel_portable, 0,
                                        rows_portable, dots_portable, 0};
