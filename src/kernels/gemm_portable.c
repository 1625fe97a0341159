/* Portable C micro-kernel: 4 x 16 tile, plain loops the compiler may
 * vectorise for whatever the target offers. */
#include "gemm_ukernel.h"

#define MR 4
#define NR 16

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
            float t = alpha * acc[r][j];
            cr[j] = add ? cr[j] + t : t;
        }
    }
}

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
                                        rows_portable, dots_portable};
