/* AVX-512F micro-kernel: 12 x 32 tile in 24 zmm accumulators (two vectors
 * of B per k, one broadcast of A per row). This file is compiled with
 * -mavx512f -mfma and only called after CPU detection. */
#include "gemm_ukernel.h"

#if defined(__x86_64__) && defined(__AVX512F__)
#include <immintrin.h>

#define MR 12
#define NR 32

static void ukernel_avx512(size_t kc, const float *a, const float *b, float *c, size_t ldc,
                           float alpha)
{
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
    __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
    __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
    __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
    __m512 c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps();
    __m512 c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps();
    __m512 ca0 = _mm512_setzero_ps(), ca1 = _mm512_setzero_ps();
    __m512 cb0 = _mm512_setzero_ps(), cb1 = _mm512_setzero_ps();
    for (size_t k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);
        __m512 ar;
#define ROW(r, x0, x1)                    \
    ar = _mm512_set1_ps(a[r]);            \
    x0 = _mm512_fmadd_ps(ar, b0, x0);     \
    x1 = _mm512_fmadd_ps(ar, b1, x1);
        ROW(0, c00, c01)
        ROW(1, c10, c11)
        ROW(2, c20, c21)
        ROW(3, c30, c31)
        ROW(4, c40, c41)
        ROW(5, c50, c51)
        ROW(6, c60, c61)
        ROW(7, c70, c71)
        ROW(8, c80, c81)
        ROW(9, c90, c91)
        ROW(10, ca0, ca1)
        ROW(11, cb0, cb1)
#undef ROW
        a += MR;
        b += NR;
    }
    const __m512 va = _mm512_set1_ps(alpha);
#define STORE(r, x0, x1)                                                                 \
    {                                                                                    \
        float *cr = c + (size_t)(r) * ldc;                                               \
        _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), _mm512_mul_ps(va, x0))); \
        _mm512_storeu_ps(cr + 16,                                                        \
                         _mm512_add_ps(_mm512_loadu_ps(cr + 16), _mm512_mul_ps(va, x1))); \
    }
    STORE(0, c00, c01)
    STORE(1, c10, c11)
    STORE(2, c20, c21)
    STORE(3, c30, c31)
    STORE(4, c40, c41)
    STORE(5, c50, c51)
    STORE(6, c60, c61)
    STORE(7, c70, c71)
    STORE(8, c80, c81)
    STORE(9, c90, c91)
    STORE(10, ca0, ca1)
    STORE(11, cb0, cb1)
#undef STORE
}

/* Transpose 16 rows of 16 floats in registers: on return r[q] holds what
 * was column q. Four rounds of in-lane and cross-lane shuffles. */
static void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(
            _mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(
            _mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(
            _mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(
            _mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    /* r[4b + j] now holds, in each 128-bit lane L, elements of column
     * 4L + j from rows 4b .. 4b+3. Gather lanes across the four blocks. */
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);      /* lanes 0,2 of b0, b1 */
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);  /* lanes 1,3 of b0, b1 */
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);        /* column j      */
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);    /* column 8 + j  */
        r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88); /* column 4 + j */
        r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd); /* column 12 + j */
    }
}

static void pack_rows_avx512(size_t w, size_t rows, size_t kc, const float *src, size_t ld,
                             float *dst)
{
    for (size_t r0 = 0; r0 < w; r0 += 16) {
        const size_t nrow = w - r0 < 16 ? w - r0 : 16;            /* rows stored */
        const size_t nsrc = rows > r0 ? (rows - r0 < 16 ? rows - r0 : 16) : 0; /* read */
        const __mmask16 store_mask = (__mmask16)((1u << nrow) - 1u);
        for (size_t k0 = 0; k0 < kc; k0 += 16) {
            const size_t nk = kc - k0 < 16 ? kc - k0 : 16;
            const __mmask16 load_mask = (__mmask16)((1u << nk) - 1u);
            __m512 v[16];
            for (size_t i = 0; i < 16; i++)
                v[i] = i < nsrc ? _mm512_maskz_loadu_ps(load_mask, src + (r0 + i) * ld + k0)
                                : _mm512_setzero_ps();
            transpose16(v);
            for (size_t q = 0; q < nk; q++)
                _mm512_mask_storeu_ps(dst + (k0 + q) * w + r0, store_mask, v[q]);
        }
    }
}

const tb_ukernel tb_ukernel_avx512 = {"avx512", MR, NR, ukernel_avx512, pack_rows_avx512};
#else
const tb_ukernel tb_ukernel_avx512 = {"avx512", 12, 32, 0, 0};
#endif
