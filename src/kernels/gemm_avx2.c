/* AVX2 + FMA micro-kernel: 6 x 16 tile in 12 ymm accumulators. This file
 * is compiled with -mavx2 -mfma and only called after CPU detection. */
#include "gemm_ukernel.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define MR 6
#define NR 16

static void ukernel_avx2(size_t kc, const float *a, const float *b, size_t ldb, float *c,
                         size_t ldc, float alpha, int add)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    for (size_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        __m256 ar;
#define ROW(r, x0, x1)                        \
    ar = _mm256_broadcast_ss(a + (r));        \
    x0 = _mm256_fmadd_ps(ar, b0, x0);         \
    x1 = _mm256_fmadd_ps(ar, b1, x1);
        ROW(0, c00, c01)
        ROW(1, c10, c11)
        ROW(2, c20, c21)
        ROW(3, c30, c31)
        ROW(4, c40, c41)
        ROW(5, c50, c51)
#undef ROW
        a += MR;
        b += ldb;
    }
    const __m256 va = _mm256_set1_ps(alpha);
#define STORE(r, x0, x1)                                                                 \
    {                                                                                    \
        float *cr = c + (size_t)(r) * ldc;                                               \
        __m256 t0 = _mm256_mul_ps(va, x0), t1 = _mm256_mul_ps(va, x1);                   \
        if (add) {                                                                       \
            t0 = _mm256_add_ps(_mm256_loadu_ps(cr), t0);                                 \
            t1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), t1);                             \
        }                                                                                \
        _mm256_storeu_ps(cr, t0);                                                        \
        _mm256_storeu_ps(cr + 8, t1);                                                    \
    }
    STORE(0, c00, c01)
    STORE(1, c10, c11)
    STORE(2, c20, c21)
    STORE(3, c30, c31)
    STORE(4, c40, c41)
    STORE(5, c50, c51)
#undef STORE
}

const tb_ukernel tb_ukernel_avx2 = {"avx2", MR, NR, ukernel_avx2, 0};
#else
const tb_ukernel tb_ukernel_avx2 = {"avx2", 6, 16, 0, 0};
#endif
