/* AVX-512F micro-kernels: MR x 32 tiles, two vectors of B per k and one
 * broadcast of A per row, 2*MR zmm accumulators: 12 x 32 (24 accumulators)
 * for general use and 8 x 32 for M that 12 would pad badly (M = 64).
 * This file is compiled with -mavx512f -mfma and only called after CPU
 * detection. */
#include "gemm_ukernel.h"

#if defined(__x86_64__) && defined(__AVX512F__)
#include <immintrin.h>

#define NR 32

#define ACC_DECL(r) __m512 c##r##_0 = _mm512_setzero_ps(), c##r##_1 = _mm512_setzero_ps();
#define ACC_FMA(r)                              \
    ar = _mm512_set1_ps(a[r]);                  \
    c##r##_0 = _mm512_fmadd_ps(ar, b0, c##r##_0); \
    c##r##_1 = _mm512_fmadd_ps(ar, b1, c##r##_1);
#define ACC_STORE(r)                                                            \
    {                                                                           \
        float *cr = c + (size_t)(r) * ldc;                                      \
        __m512 t0 = _mm512_mul_ps(va, c##r##_0), t1 = _mm512_mul_ps(va, c##r##_1); \
        if (add) {                                                              \
            t0 = _mm512_add_ps(_mm512_loadu_ps(cr), t0);                        \
            t1 = _mm512_add_ps(_mm512_loadu_ps(cr + 16), t1);                   \
        }                                                                       \
        _mm512_storeu_ps(cr, t0);                                               \
        _mm512_storeu_ps(cr + 16, t1);                                          \
    }
#define ROWS12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ROWS1(X) X(0)

#define ACC_PREFETCH_C(r)                                               \
    _mm_prefetch((const char *)(c + (size_t)(r) * ldc), _MM_HINT_T0);   \
    _mm_prefetch((const char *)(c + (size_t)(r) * ldc + 16), _MM_HINT_T0);

/* One step of k: two vectors of B, one broadcast of A per row. */
#define UK_STEP(ROWS, mr)                                                 \
    {                                                                     \
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16); \
        _mm_prefetch((const char *)(b + 8 * ldb), _MM_HINT_T0);           \
        __m512 ar;                                                        \
        ROWS(ACC_FMA)                                                     \
        a += (mr);                                                        \
        b += ldb;                                                         \
    }

/* C[MR x 32] += alpha * a (kc x MR) b (kc x 32); see gemm_ukernel.h. */
#define DEFINE_UKERNEL(name, mr, ROWS)                                                    \
    static void name(size_t kc, const float *a, const float *b, size_t ldb, float *c,     \
                     size_t ldc, float alpha, int add)                                    \
    {                                                                                     \
        ROWS(ACC_DECL)                                                                    \
        if (add) { /* C is read at the end: start fetching it now */                      \
            ROWS(ACC_PREFETCH_C)                                                          \
        }                                                                                 \
        for (size_t k = 0; k < kc; k++)                                                   \
            UK_STEP(ROWS, mr)                                                             \
        const __m512 va = _mm512_set1_ps(alpha);                                          \
        ROWS(ACC_STORE)                                                                   \
    }

DEFINE_UKERNEL(ukernel_12x32, 12, ROWS12)
DEFINE_UKERNEL(ukernel_8x32, 8, ROWS8)
/* One row (M = 1: decoding one token): the same per-element arithmetic as
 * the wider kernels, without computing 7 rows of padding. */
DEFINE_UKERNEL(ukernel_1x32, 1, ROWS1)

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
            for (size_t i = 0; i < 16; i++) {
                /* Rows are separate streams: fetch ahead in each. */
                if (i < nsrc)
                    _mm_prefetch((const char *)(src + (r0 + i) * ld + k0 + 128), _MM_HINT_T0);
                v[i] = i < nsrc ? _mm512_maskz_loadu_ps(load_mask, src + (r0 + i) * ld + k0)
                                : _mm512_setzero_ps();
            }
            transpose16(v);
            for (size_t q = 0; q < nk; q++)
                _mm512_mask_storeu_ps(dst + (k0 + q) * w + r0, store_mask, v[q]);
        }
    }
}

const tb_ukernel tb_ukernel_avx512 = {"avx512", 12, NR, ukernel_12x32, pack_rows_avx512};
const tb_ukernel tb_ukernel_avx512_m8 = {"avx512_8x32", 8, NR, ukernel_8x32, pack_rows_avx512};
const tb_ukernel tb_ukernel_avx512_m1 = {"avx512_1x32", 1, NR, ukernel_1x32, pack_rows_avx512};
#else
const tb_ukernel tb_ukernel_avx512 = {"avx512", 12, 32, 0, 0};
const tb_ukernel tb_ukernel_avx512_m8 = {"avx512_8x32", 8, 32, 0, 0};
const tb_ukernel tb_ukernel_avx512_m1 = {"avx512_1x32", 1, 32, 0, 0};
#endif
