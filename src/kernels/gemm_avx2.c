/* AVX2 + FMA micro-kernels: 6 x 16 tiles in 12 ymm accumulators, and
 * 1 x 64 for M = 1; a transposing pack through 8 x 8 register transposes.
 * This file is compiled with -mavx2 -mfma and only called after CPU
 * detection. */
#include "gemm_ukernel.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <math.h>

#define MR 6
#define NR 16

/* The 6 x 16 tile (gemm_ukernel.h) with A's row r, element k, at
 * a[r*a_r + k*a_k]: a packed sliver (a_r = 1, a_k = MR) or MR rows read in
 * place (a_r = lda, a_k = 1). Both are one FMA chain per element over k in
 * ascending order, then the rounded multiply by alpha and the add, so the
 * two give the same bits. Inlined with constant strides into each kernel. */
static inline __attribute__((always_inline)) void
tile_6x16(size_t kc, const float *a, size_t a_r, size_t a_k, const float *b, size_t ldb, float *c,
          size_t ldc, float alpha, int add)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    if (add) /* C is read at the end: start fetching it now */
        for (int r = 0; r < MR; r++) {
            _mm_prefetch((const char *)(c + (size_t)r * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + (size_t)r * ldc + 15), _MM_HINT_T0);
        }
    for (size_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        /* B rows are ldb apart (B's own rows when read in place). */
        _mm_prefetch((const char *)(b + 8 * ldb), _MM_HINT_T0);
        /* A packed streams from L2 (the B sliver stays in L1: see gemm.c);
         * rows in place are six sequential streams the hardware follows. */
        if (a_k == MR)
            _mm_prefetch((const char *)(a + 96), _MM_HINT_T0);
        __m256 ar;
#define ROW(r, x0, x1)                                   \
    ar = _mm256_broadcast_ss(a + (size_t)(r) * a_r);     \
    x0 = _mm256_fmadd_ps(ar, b0, x0);                    \
    x1 = _mm256_fmadd_ps(ar, b1, x1);
        ROW(0, c00, c01)
        ROW(1, c10, c11)
        ROW(2, c20, c21)
        ROW(3, c30, c31)
        ROW(4, c40, c41)
        ROW(5, c50, c51)
#undef ROW
        a += a_k;
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

static void ukernel_avx2(size_t kc, const float *a, const float *b, size_t ldb, float *c,
                         size_t ldc, float alpha, int add)
{
    tile_6x16(kc, a, 1, MR, b, ldb, c, ldc, alpha, add);
}

/* MR rows of A read in place, lda apart (gemm_ukernel.h, tb_ukernel_arows_fn). */
static void ukernel_avx2_arows(size_t kc, const float *a, size_t lda, const float *b, size_t ldb,
                               float *c, size_t ldc, float alpha, int add)
{
    tile_6x16(kc, a, lda, 1, b, ldb, c, ldc, alpha, add);
}

/* One row (M = 1: decoding one token), 64 columns in 8 accumulators: enough
 * independent FMA chains to hide their latency, where a 1 x 16 tile would
 * wait on two. Every element gets exactly the operations of the 6 x 16
 * kernel (the same FMA chain over k, then alpha, then the add), so results
 * do not depend on which of the two computed them. */
#define NR1 64
static void ukernel_avx2_1x64(size_t kc, const float *a, const float *b, size_t ldb, float *c,
                              size_t ldc, float alpha, int add)
{
    (void)ldc;
    __m256 acc[8];
    for (int j = 0; j < 8; j++)
        acc[j] = _mm256_setzero_ps();
    for (size_t k = 0; k < kc; k++) {
        const __m256 ar = _mm256_broadcast_ss(a + k);
        /* The 256 bytes of B this k reads, 16 rows ahead. */
        for (int l = 0; l < 4; l++)
            _mm_prefetch((const char *)(b + 16 * ldb + 16 * l), _MM_HINT_T0);
        for (int j = 0; j < 8; j++)
            acc[j] = _mm256_fmadd_ps(ar, _mm256_loadu_ps(b + 8 * j), acc[j]);
        b += ldb;
    }
    const __m256 va = _mm256_set1_ps(alpha);
    for (int j = 0; j < 8; j++) {
        __m256 t = _mm256_mul_ps(va, acc[j]);
        if (add)
            t = _mm256_add_ps(_mm256_loadu_ps(c + 8 * j), t);
        _mm256_storeu_ps(c + 8 * j, t);
    }
}

/* Transpose eight rows of eight floats in registers: on return r[q] holds
 * what was column q. */
static inline __attribute__((always_inline)) void transpose8(__m256 r[8])
{
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    __m256 u[8];
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    /* u[i] of the row quartets 0-3 and 4-7 hold columns i (low lane) and
     * i + 4 (high lane). */
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* Lanes [0, n) set, for masked loads of a row's last k < 8 floats. */
static __m256i lane_mask(size_t n)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), idx);
}

/* The transposing pack (gemm_ukernel.h): `rows` <= w source rows of kc
 * floats into dst[k*w + r], rows past `rows` zero, through 8 x 8 register
 * transposes. Groups narrower than 8 (w = 6 or 1: A slivers) are written
 * with full 8-float stores in ascending k, each spilling into the next
 * groups' first floats, which their own stores then overwrite; the groups
 * whose spill would pass dst[kc*w) get masked stores instead. */
/* How far ahead in each source row the pack fetches, in floats: 48 (three
 * lines) measured best of 32..128 with the k-outermost order (13.5 against
 * 11 GB/s at 128, the vocabulary matrix transposed from memory). */
#define PACK_PF 48
static void pack_rows_avx2(size_t w, size_t rows, size_t kc, const float *src, size_t ld,
                           float *dst)
{
    /* k outermost: all w rows advance together (16 streams for a B sliver,
     * where 8 at a time then the other 8 left the prefetchers half the
     * streams), and each k's group of 16 floats is written whole, not in two
     * halves far apart in time: the pack of the GPT-2 shapes' transposed B
     * measured 14 -> 25 GB/s from L3 and 6-10 -> 11-12 GB/s from memory
     * (AVX2, one thread). */
    for (size_t band = 0; band < w; band += 16) /* 16 streams at a time (w = 64: 4 bands) */
    for (size_t k0 = 0; k0 < kc; k0 += 8) {
        const size_t nk = kc - k0 < 8 ? kc - k0 : 8;
        const __m256i load_mask = lane_mask(nk);
        for (size_t r0 = band; r0 < w && r0 < band + 16; r0 += 8) {
            const size_t nrow = w - r0 < 8 ? w - r0 : 8;                        /* stored */
            const size_t nsrc = rows > r0 ? (rows - r0 < 8 ? rows - r0 : 8) : 0; /* read */
            const __m256i store_mask = lane_mask(nrow);
            __m256 v[8];
            for (size_t i = 0; i < 8; i++) {
                const float *row = src + (r0 + i) * ld + k0;
                /* Rows are separate streams: fetch ahead in each. */
                if (i < nsrc)
                    _mm_prefetch((const char *)(row + PACK_PF), _MM_HINT_T0);
                v[i] = i >= nsrc    ? _mm256_setzero_ps()
                       : nk == 8    ? _mm256_loadu_ps(row)
                                    : _mm256_maskload_ps(row, load_mask);
            }
            transpose8(v);
            for (size_t q = 0; q < nk; q++) {
                float *d = dst + (k0 + q) * w + r0;
                /* w < 8: a full store spills into the next groups, which
                 * are written after it; never past the end, dst[kc*w). */
                if (nrow == 8 || (w < 8 && (k0 + q) * w + 8 <= kc * w))
                    _mm256_storeu_ps(d, v[q]);
                else
                    _mm256_maskstore_ps(d, store_mask, v[q]);
            }
        }
    }
}

/* One row of A against B's rows in place (gemm_ukernel.h, tb_rows_fn):
 * eight rows of B per pass over acc (fewer passes over acc per byte of B),
 * each lane's FMA chain over k in ascending order from zero, as in the
 * tile kernels. */
#define ROWS_AT_ONCE 8
static void rows_avx2(size_t kc, const float *a, const float *b, size_t ldb, size_t n,
                      float *acc)
{
    for (size_t j = 0; j < n; j++)
        acc[j] = 0.0f;
    size_t k = 0;
    for (; k + ROWS_AT_ONCE <= kc; k += ROWS_AT_ONCE) {
        const float *bk = b + k * ldb;
        __m256 ak[ROWS_AT_ONCE];
        for (int r = 0; r < ROWS_AT_ONCE; r++)
            ak[r] = _mm256_broadcast_ss(a + k + r);
        size_t j = 0;
        for (; j + 8 <= n; j += 8) {
            __m256 v = _mm256_loadu_ps(acc + j);
#pragma GCC unroll 8
            for (int r = 0; r < ROWS_AT_ONCE; r++)
                v = _mm256_fmadd_ps(ak[r], _mm256_loadu_ps(bk + (size_t)r * ldb + j), v);
            _mm256_storeu_ps(acc + j, v);
        }
        for (; j < n; j++) {
            float v = acc[j];
            for (int r = 0; r < ROWS_AT_ONCE; r++)
                v = fmaf(a[k + (size_t)r], bk[(size_t)r * ldb + j], v);
            acc[j] = v;
        }
    }
    for (; k < kc; k++) {
        const float *bk = b + k * ldb;
        const __m256 ak = _mm256_broadcast_ss(a + k);
        size_t j = 0;
        for (; j + 8 <= n; j += 8)
            _mm256_storeu_ps(acc + j,
                             _mm256_fmadd_ps(ak, _mm256_loadu_ps(bk + j), _mm256_loadu_ps(acc + j)));
        for (; j < n; j++)
            acc[j] = fmaf(a[k], bk[j], acc[j]);
    }
}

/* Eight rows at k0 .. k0+8 of a transposed B (b points at row 0, k0),
 * dotted into s: the 8 x 8 block is transposed in registers so that lane r
 * holds row r, then one FMA per k, in ascending order; the same place in
 * the rows at pf is fetched meanwhile. The hot path: everything stays in
 * registers. */
static inline __attribute__((always_inline)) __m256
dots_full8(const float *a, const float *b, size_t ldb, const float *pf, __m256 s)
{
    __m256 v[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        _mm_prefetch((const char *)(pf + (size_t)i * ldb), _MM_HINT_T0);
        v[i] = _mm256_loadu_ps(b + (size_t)i * ldb);
    }
    transpose8(v);
#pragma GCC unroll 8
    for (int q = 0; q < 8; q++)
        s = _mm256_fmadd_ps(_mm256_broadcast_ss(a + q), v[q], s);
    return s;
}

/* As dots_full8 for a partial block: n < 8 real rows (the others zero) or
 * nk < 8 values of k. */
static __m256 dots_part8(const float *a, const float *b, size_t ldb, size_t n, size_t nk,
                         __m256 s)
{
    const __m256i load_mask = lane_mask(nk);
    __m256 v[8];
    for (size_t i = 0; i < 8; i++)
        v[i] = i < n ? _mm256_maskload_ps(b + i * ldb, load_mask) : _mm256_setzero_ps();
    transpose8(v);
    for (size_t q = 0; q < nk; q++)
        s = _mm256_fmadd_ps(_mm256_broadcast_ss(a + q), v[q], s);
    return s;
}

/* Rows of a transposed B dotted with a (gemm_ukernel.h, tb_dots_fn),
 * sixteen rows at a time in two chains of eight, each group through the
 * whole of K (its rows read end to end) before the next, with new chains
 * from zero at each K block; each lane's chain runs over k in ascending
 * order, as in the tile kernels. Each row is fetched DOTS_PF floats ahead
 * of where it is read, and near its end the next group's row is (measured
 * 40 -> 44 GB/s on the vocabulary matrix, AVX-512, 2 threads). */
#define DOTS_PF 32
static void dots_avx2(size_t K, size_t kc, const float *a, const float *b, size_t ldb,
                      size_t rows, float *acc, size_t ld_acc)
{
    for (size_t r0 = 0; r0 < rows; r0 += 16) {
        const size_t n = rows - r0 < 16 ? rows - r0 : 16;
        const size_t n0 = n < 8 ? n : 8, n1 = n - n0;
        const float *g0 = b + r0 * ldb, *g1 = g0 + 8 * ldb;
        const int has_next = rows - r0 >= 32 && K >= DOTS_PF + 8; /* a full group follows */
        for (size_t pc = 0, blk = 0; pc < K; pc += kc, blk++) {
            const size_t kend = pc + kc < K ? pc + kc : K;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
            size_t k0 = pc;
            if (n == 16) /* prefetch: further on in the rows, then the next group's */
                for (; k0 + 8 <= kend; k0 += 8) {
                    const size_t kp = k0 + DOTS_PF;
                    const size_t d = kp + 8 <= K          ? kp
                                     : has_next && kp >= K ? 16 * ldb + (kp - K)
                                                           : k0;
                    s0 = dots_full8(a + k0, g0 + k0, ldb, g0 + d, s0);
                    s1 = dots_full8(a + k0, g1 + k0, ldb, g1 + d, s1);
                }
            for (; k0 < kend; k0 += 8) {
                const size_t nk = kend - k0 < 8 ? kend - k0 : 8;
                s0 = dots_part8(a + k0, g0 + k0, ldb, n0, nk, s0);
                if (n1)
                    s1 = dots_part8(a + k0, g1 + k0, ldb, n1, nk, s1);
            }
            float out[16];
            _mm256_storeu_ps(out, s0);
            _mm256_storeu_ps(out + 8, s1);
            for (size_t r = 0; r < n; r++)
                acc[blk * ld_acc + r0 + r] = out[r];
        }
    }
}

const tb_ukernel tb_ukernel_avx2 = {"avx2", MR, NR, ukernel_avx2, pack_rows_avx2, 0, 0,
                                    ukernel_avx2_arows};
const tb_ukernel tb_ukernel_avx2_m1 = {"avx2_1x64", 1, NR1, ukernel_avx2_1x64, pack_rows_avx2,
                                       rows_avx2, dots_avx2, 0};
#else
const tb_ukernel tb_ukernel_avx2 = {"avx2", 6, 16, 0, 0, 0, 0, 0};
const tb_ukernel tb_ukernel_avx2_m1 = {"avx2_1x64", 1, 64, 0, 0, 0, 0, 0};
#endif
