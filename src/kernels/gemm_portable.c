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

const tb_ukernel tb_ukernel_portable = {"portable", MR, NR, ukernel_portable, 0};
