/* AVX-512F micro-kernels: MR x 32 tiles, two vectors of B per k and one
 * broadcast of A per row, 2*MR zmm accumulators: 12 x 32 (24 accumulators)
 * for general use and 8 x 32 for M that 12 would pad badly (M = 64).
 * This file is compiled with -mavx512f -mfma and only called after CPU
 * detection. */
#include "gemm_ukernel.h"

#if defined(__x86_64__) && defined(__AVX512F__)
#include <immintrin.h>
#include <math.h>

#define NR 32

#define ACC_DECL(r) __m512 c##r##_0 = _mm512_setzero_ps(), c##r##_1 = _mm512_setzero_ps();
#define ACC_FMA(r)                              \
    ar = _mm512_set1_ps(a[(size_t)(r) * a_r]);  \
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

/* One step of k: two vectors of B, one broadcast of A per row (row r,
 * element k at a[r*a_r + k*a_k]). */
#define UK_STEP(ROWS)                                                     \
    {                                                                     \
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16); \
        _mm_prefetch((const char *)(b + 8 * ldb), _MM_HINT_T0);           \
        __m512 ar;                                                        \
        ROWS(ACC_FMA)                                                     \
        a += a_k;                                                         \
        b += ldb;                                                         \
    }

#define UK_BODY(ROWS)                                                                     \
    ROWS(ACC_DECL)                                                                        \
    if (add) { /* C is read at the end: start fetching it now */                          \
        ROWS(ACC_PREFETCH_C)                                                              \
    }                                                                                     \
    for (size_t k = 0; k < kc; k++)                                                       \
        UK_STEP(ROWS)                                                                     \
    const __m512 va = _mm512_set1_ps(alpha);                                              \
    ROWS(ACC_STORE)

/* C[MR x 32] += alpha * a (kc x MR) b (kc x 32); see gemm_ukernel.h. */
#define DEFINE_UKERNEL(name, mr, ROWS)                                                    \
    static void name(size_t kc, const float *a, const float *b, size_t ldb, float *c,     \
                     size_t ldc, float alpha, int add)                                    \
    {                                                                                     \
        const size_t a_r = 1, a_k = (mr);                                                 \
        UK_BODY(ROWS)                                                                     \
    }

/* The same with A's MR rows read in place, lda apart (tb_ukernel_arows_fn):
 * the same operations on every element, so the same bits. */
#define DEFINE_UKERNEL_AROWS(name, ROWS)                                                  \
    static void name(size_t kc, const float *a, size_t lda, const float *b, size_t ldb,   \
                     float *c, size_t ldc, float alpha, int add)                          \
    {                                                                                     \
        const size_t a_r = lda, a_k = 1;                                                  \
        UK_BODY(ROWS)                                                                     \
    }

DEFINE_UKERNEL(ukernel_12x32, 12, ROWS12)
DEFINE_UKERNEL(ukernel_8x32, 8, ROWS8)
DEFINE_UKERNEL_AROWS(ukernel_12x32_arows, ROWS12)
DEFINE_UKERNEL_AROWS(ukernel_8x32_arows, ROWS8)
/* One row (M = 1: decoding one token): the same per-element arithmetic as
 * the wider kernels, without computing 7 rows of padding. */
DEFINE_UKERNEL(ukernel_1x32, 1, ROWS1)

/* Transpose 16 rows of 16 floats in registers: on return r[q] holds what
 * was column q. Four rounds of in-lane and cross-lane shuffles. */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16])
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

/* One row of A against B's rows in place (gemm_ukernel.h, tb_rows_fn):
 * eight rows of B per pass over acc (fewer passes over acc per byte of B),
 * each lane's FMA chain over k in ascending order from zero, as in the
 * tile kernels. */
static void rows_avx512(size_t kc, const float *a, const float *b, size_t ldb, size_t n,
                        float *acc)
{
    for (size_t j = 0; j < n; j++)
        acc[j] = 0.0f;
    size_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        const float *bk = b + k * ldb;
        __m512 ak[8];
        for (int r = 0; r < 8; r++)
            ak[r] = _mm512_set1_ps(a[k + (size_t)r]);
        size_t j = 0;
        for (; j + 16 <= n; j += 16) {
            __m512 v = _mm512_loadu_ps(acc + j);
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++)
                v = _mm512_fmadd_ps(ak[r], _mm512_loadu_ps(bk + (size_t)r * ldb + j), v);
            _mm512_storeu_ps(acc + j, v);
        }
        for (; j < n; j++) {
            float v = acc[j];
            for (int r = 0; r < 8; r++)
                v = fmaf(a[k + (size_t)r], bk[(size_t)r * ldb + j], v);
            acc[j] = v;
        }
    }
    for (; k < kc; k++) {
        const float *bk = b + k * ldb;
        const __m512 ak = _mm512_set1_ps(a[k]);
        size_t j = 0;
        for (; j + 16 <= n; j += 16)
            _mm512_storeu_ps(acc + j,
                             _mm512_fmadd_ps(ak, _mm512_loadu_ps(bk + j), _mm512_loadu_ps(acc + j)));
        for (; j < n; j++)
            acc[j] = fmaf(a[k], bk[j], acc[j]);
    }
}

/* Sixteen rows at k0 .. k0+16 of a transposed B (b points at row 0, k0),
 * dotted into s: the 16 x 16 block is transposed in registers so that lane
 * r holds row r, then one FMA per k, in ascending order; the same place in
 * the rows at pf is fetched meanwhile. The hot path: everything stays in
 * registers. */
static inline __attribute__((always_inline)) __m512
dots_full16(const float *a, const float *b, size_t ldb, const float *pf, __m512 s)
{
    __m512 v[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
        _mm_prefetch((const char *)(pf + (size_t)i * ldb), _MM_HINT_T0);
        v[i] = _mm512_loadu_ps(b + (size_t)i * ldb);
    }
    transpose16(v);
#pragma GCC unroll 16
    for (int q = 0; q < 16; q++)
        s = _mm512_fmadd_ps(_mm512_set1_ps(a[q]), v[q], s);
    return s;
}

/* As dots_full16 for a partial block: n < 16 real rows (the others zero)
 * or nk < 16 values of k. */
static __m512 dots_part16(const float *a, const float *b, size_t ldb, size_t n, size_t nk,
                          __m512 s)
{
    const __mmask16 load_mask = (__mmask16)((1u << nk) - 1u);
    __m512 v[16];
    for (size_t i = 0; i < 16; i++)
        v[i] = i < n ? _mm512_maskz_loadu_ps(load_mask, b + i * ldb) : _mm512_setzero_ps();
    transpose16(v);
    for (size_t q = 0; q < nk; q++)
        s = _mm512_fmadd_ps(_mm512_set1_ps(a[q]), v[q], s);
    return s;
}

/* Rows of a transposed B dotted with a (gemm_ukernel.h, tb_dots_fn),
 * sixteen rows at a time, each group through the whole of K (its rows read
 * end to end) before the next, with a new chain from zero at each K block;
 * each lane's chain runs over k in ascending order, as in the tile kernels.
 * Each row is fetched DOTS_PF floats ahead of where it is read, and near
 * its end the next group's row is (measured 40 -> 44 GB/s on the
 * vocabulary matrix, 2 threads). */
#define DOTS_PF 32
static void dots_avx512(size_t K, size_t kc, const float *a, const float *b, size_t ldb,
                        size_t rows, float *acc, size_t ld_acc)
{
    for (size_t r0 = 0; r0 < rows; r0 += 16) {
        const size_t n = rows - r0 < 16 ? rows - r0 : 16;
        const float *g = b + r0 * ldb;
        const int has_next = rows - r0 >= 32 && K >= DOTS_PF + 16; /* a full group follows */
        for (size_t pc = 0, blk = 0; pc < K; pc += kc, blk++) {
            const size_t kend = pc + kc < K ? pc + kc : K;
            __m512 s = _mm512_setzero_ps();
            size_t k0 = pc;
            if (n == 16) /* prefetch: further on in the rows, then the next group's */
                for (; k0 + 16 <= kend; k0 += 16) {
                    const size_t kp = k0 + DOTS_PF;
                    const float *pf = kp + 16 <= K          ? g + kp
                                      : has_next && kp >= K ? g + 16 * ldb + (kp - K)
                                                            : g + k0;
                    s = dots_full16(a + k0, g + k0, ldb, pf, s);
                }
            for (; k0 < kend; k0 += 16)
                s = dots_part16(a + k0, g + k0, ldb, n, kend - k0 < 16 ? kend - k0 : 16, s);
            _mm512_mask_storeu_ps(acc + blk * ld_acc + r0, (__mmask16)((1u << n) - 1u), s);
        }
    }
}

const tb_ukernel tb_ukernel_avx512 = {"avx512", 12, NR, ukernel_12x32, pack_rows_avx512, 0, 0,
                                      ukernel_12x32_arows};
const tb_ukernel tb_ukernel_avx512_m8 = {"avx512_8x32", 8, NR, ukernel_8x32, pack_rows_avx512, 0, 0,
                                         ukernel_8x32_arows};
const tb_ukernel tb_ukernel_avx512_m1 = {"avx512_1x32", 1, NR, ukernel_1x32, pack_rows_avx512,
                                         rows_avx512, dots_avx512, 0};
#else
const tb_ukernel tb_ukernel_avx512 = {"avx512", 12, 32, 0, 0, 0, 0, 0};
const tb_ukernel tb_ukernel_avx512_m8 = {"avx512_8x32", 8, 32, 0, 0, 0, 0, 0};
const tb_ukernel tb_ukernel_avx512_m1 = {"avx512_1x32", 1, 32, 0, 0, 0, 0, 0};
#endif
