/* GEMM driver: blocking, packing, threading, kernel dispatch. */
#include "gemm.h"

#include <omp.h>
#include <string.h>

#include "../core/internal.h"
#include "gemm_ukernel.h"

/* Cache blocking. KC x NR floats of B (32 KiB for the AVX-512 kernel) stay
 * in L1 while the MC x KC block of A (~150 KiB) streams from L2. */
#ifndef KC
#define KC 256
#endif
#ifndef MC_TARGET
#define MC_TARGET 144
#endif
#ifndef NC_TARGET
#define NC_TARGET 2048
#endif

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

static size_t round_up(size_t x, size_t m)
{
    return (x + m - 1) / m * m;
}

static const tb_ukernel *select_ukernel(const tb_ctx *ctx)
{
    switch (tb_ctx_kernel(ctx)) {
    case TB_KERNEL_AVX512:
        if (tb_ukernel_avx512.fn)
            return &tb_ukernel_avx512;
        /* fall through */
    case TB_KERNEL_AVX2:
        if (tb_ukernel_avx2.fn && tb_kernel_supported(TB_KERNEL_AVX2))
            return &tb_ukernel_avx2;
        /* fall through */
    default:
        return &tb_ukernel_portable;
    }
}

/* Pack op(A)[i0 .. i0+mc) x [k0 .. k0+kc) into MR-tall slivers; rows past
 * mc are zero. Sliver s starts at ap + s*MR*kc. */
static void pack_a(const tb_ukernel *uk, size_t mc, size_t kc, const float *A, size_t lda,
                   int trans, size_t i0, size_t k0, float *ap)
{
    const size_t mr = (size_t)uk->mr;
    for (size_t is = 0; is < mc; is += mr) {
        size_t rows = min_sz(mr, mc - is);
        float *dst = ap + is * kc;
        if (!trans && uk->pack_rows) {
            uk->pack_rows(mr, rows, kc, A + (i0 + is) * lda + k0, lda, dst);
        } else if (!trans) {
            for (size_t r = 0; r < rows; r++) {
                const float *src = A + (i0 + is + r) * lda + k0;
                for (size_t k = 0; k < kc; k++)
                    dst[k * mr + r] = src[k];
            }
            for (size_t r = rows; r < mr; r++)
                for (size_t k = 0; k < kc; k++)
                    dst[k * mr + r] = 0.0f;
        } else {
            for (size_t k = 0; k < kc; k++) {
                const float *src = A + (k0 + k) * lda + i0 + is;
                float *d = dst + k * mr;
                size_t r = 0;
                for (; r < rows; r++)
                    d[r] = src[r];
                for (; r < mr; r++)
                    d[r] = 0.0f;
            }
        }
    }
}

/* Pack op(B)[k0 .. k0+kc) x [j0 .. j0+nc) into NR-wide slivers; columns
 * past nc are zero. Sliver s starts at bp + s*NR*kc. */
static void pack_b(const tb_ukernel *uk, size_t nc, size_t kc, const float *B, size_t ldb,
                   int trans, size_t k0, size_t j0, float *bp)
{
    const size_t nr = (size_t)uk->nr;
    for (size_t js = 0; js < nc; js += nr) {
        size_t cols = min_sz(nr, nc - js);
        float *dst = bp + js * kc;
        if (trans && uk->pack_rows) {
            uk->pack_rows(nr, cols, kc, B + (j0 + js) * ldb + k0, ldb, dst);
        } else if (!trans) {
            for (size_t k = 0; k < kc; k++) {
                const float *src = B + (k0 + k) * ldb + j0 + js;
                float *d = dst + k * nr;
                size_t c = 0;
                for (; c < cols; c++)
                    d[c] = src[c];
                for (; c < nr; c++)
                    d[c] = 0.0f;
            }
        } else {
            for (size_t c = 0; c < cols; c++) {
                const float *src = B + (j0 + js + c) * ldb + k0;
                for (size_t k = 0; k < kc; k++)
                    dst[k * nr + c] = src[k];
            }
            for (size_t c = cols; c < nr; c++)
                for (size_t k = 0; k < kc; k++)
                    dst[k * nr + c] = 0.0f;
        }
    }
}

typedef struct gemm_args {
    const tb_ukernel *uk;
    int trans_a, trans_b;
    size_t M, N, K, mc, nc;
    float alpha;
    const float *A, *B;
    size_t lda, ldb, ldc;
    float *C;
} gemm_args;

/* C[m0..m1) x [n0..n1) += alpha * op(A) op(B), with private pack buffers. */
static void gemm_range(const gemm_args *g, size_t m0, size_t m1, size_t n0, size_t n1,
                       float *ap, float *bp)
{
    const size_t mr = (size_t)g->uk->mr, nr = (size_t)g->uk->nr;
    const tb_ukernel_fn fn = g->uk->fn;
    float tile[TB_UKERNEL_MAX_MR * TB_UKERNEL_MAX_NR];
    for (size_t jc = n0; jc < n1; jc += g->nc) {
        const size_t nc = min_sz(g->nc, n1 - jc);
        for (size_t pc = 0; pc < g->K; pc += KC) {
            const size_t kc = min_sz(KC, g->K - pc);
            pack_b(g->uk, nc, kc, g->B, g->ldb, g->trans_b, pc, jc, bp);
            for (size_t ic = m0; ic < m1; ic += g->mc) {
                const size_t mc = min_sz(g->mc, m1 - ic);
                pack_a(g->uk, mc, kc, g->A, g->lda, g->trans_a, ic, pc, ap);
                for (size_t jr = 0; jr < nc; jr += nr) {
                    const size_t nre = min_sz(nr, nc - jr);
                    const float *bs = bp + jr * kc;
                    for (size_t ir = 0; ir < mc; ir += mr) {
                        const size_t mre = min_sz(mr, mc - ir);
                        float *c = g->C + (ic + ir) * g->ldc + jc + jr;
                        if (mre == mr && nre == nr) {
                            fn(kc, ap + ir * kc, bs, c, g->ldc, g->alpha);
                            continue;
                        }
                        /* Edge tile: compute into scratch, then add the
                         * valid part (-0.0 + x == x for every x, so the
                         * bits equal an in-place full tile). */
                        for (size_t t = 0; t < mr * nr; t++)
                            tile[t] = -0.0f;
                        fn(kc, ap + ir * kc, bs, tile, nr, g->alpha);
                        for (size_t r = 0; r < mre; r++)
                            for (size_t j = 0; j < nre; j++)
                                c[r * g->ldc + j] = c[r * g->ldc + j] + tile[r * nr + j];
                    }
                }
            }
        }
    }
}

/* C = beta * C (beta == 0: C = 0 without reading it). */
static void scale_c(tb_ctx *ctx, size_t M, size_t N, float beta, float *C, size_t ldc)
{
    if (beta == 1.0f)
        return;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)M * N)) schedule(static)
    for (size_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (beta == 0.0f)
            memset(c, 0, N * sizeof(float));
        else
            for (size_t j = 0; j < N; j++)
                c[j] *= beta;
    }
}

tb_status tb_gemm(tb_ctx *ctx, int trans_a, int trans_b, size_t M, size_t N, size_t K,
                  float alpha, const float *A, size_t lda, const float *B, size_t ldb,
                  float beta, float *C, size_t ldc)
{
    if (M == 0 || N == 0)
        return TB_OK;
    gemm_args g;
    g.uk = select_ukernel(ctx);
    const size_t mr = (size_t)g.uk->mr, nr = (size_t)g.uk->nr;

    /* Split the larger dimension (counted in tiles) among threads; the
     * other operand is packed by every thread, so keep that one small. */
    const size_t m_tiles = (M + mr - 1) / mr, n_tiles = (N + nr - 1) / nr;
    const int split_n = n_tiles * nr >= m_tiles * mr;
    const size_t units = split_n ? n_tiles : m_tiles;
    int threads = tb_threads_for(ctx, (double)M * (double)N * (double)K);
    if ((size_t)threads > units)
        threads = (int)units;

    g.trans_a = trans_a, g.trans_b = trans_b;
    g.M = M, g.N = N, g.K = K;
    g.alpha = alpha;
    g.A = A, g.B = B, g.C = C;
    g.lda = lda, g.ldb = ldb, g.ldc = ldc;
    g.mc = round_up(MC_TARGET, mr);
    /* Widest N range one thread handles, rounded to whole slivers. */
    size_t n_range = split_n ? ((units + (size_t)threads - 1) / (size_t)threads) * nr : N;
    g.nc = min_sz(round_up(NC_TARGET, nr), round_up(n_range, nr));
    const size_t kc = min_sz(KC, K ? K : 1);
    const size_t a_floats = round_up(g.mc * kc, 16), b_floats = round_up(g.nc * kc, 16);

    /* K == 0 or alpha == 0: only the beta scaling remains. */
    if (K == 0 || alpha == 0.0f) {
        scale_c(ctx, M, N, beta, C, ldc);
        return TB_OK;
    }
    void *mem;
    size_t per_thread = a_floats + b_floats, bytes;
    if (!tb_mul_size(per_thread, (size_t)threads * sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, "tb_gemm", "packing buffers overflow");
    tb_status s = tb_alloc(ctx, "tb_gemm", bytes, &mem);
    if (s != TB_OK)
        return s;
    scale_c(ctx, M, N, beta, C, ldc);
    float *buf = mem;
#pragma omp parallel num_threads(threads)
    {
        const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        const size_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
        float *ap = buf + t * per_thread, *bp = ap + a_floats;
        if (u0 < u1) {
            if (split_n)
                gemm_range(&g, 0, M, u0 * nr, min_sz(u1 * nr, N), ap, bp);
            else
                gemm_range(&g, u0 * mr, min_sz(u1 * mr, M), 0, N, ap, bp);
        }
    }
    tb_free_with(&ctx->allocator, mem);
    return TB_OK;
}

tb_status tb_gemm_batched(tb_ctx *ctx, int trans_a, int trans_b, size_t M, size_t N, size_t K,
                          float alpha, const float *A, size_t lda, size_t stride_a,
                          const float *B, size_t ldb, size_t stride_b, float beta, float *C,
                          size_t ldc, size_t stride_c, size_t batch)
{
    for (size_t i = 0; i < batch; i++) {
        tb_status s = tb_gemm(ctx, trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda,
                              B + i * stride_b, ldb, beta, C + i * stride_c, ldc);
        if (s != TB_OK)
            return s;
    }
    return TB_OK;
}
