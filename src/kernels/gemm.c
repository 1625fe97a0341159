/* GEMM driver: blocking, packing, threading, kernel dispatch. */
#include "gemm.h"

#include <omp.h>
#include <string.h>

#include "../core/internal.h"
#include "gemm_ukernel.h"

/* Cache blocking, per kernel family, tuned on the GPT-2 shapes
 * (test/bench/bench_gemm.c). kc is the depth of one K block (C is read and
 * written ceil(K / kc) times; every kernel of a family must use the same
 * kc, since the K blocks fix the rounding); mc and nc are the M and N
 * blocks (rounded up to whole tiles); ir_outer picks the order of the two
 * innermost loops.
 *   AVX-512 (12 x 32 tiles): for each MR-row sliver of A (MR x kc, 18 KiB,
 *     in L1) the kernel sweeps the packed kc x nc block of B (768 KiB, in
 *     L2); the mc x kc block of A (~290 KiB) also stays in L2.
 *   AVX2 (6 x 16 tiles): the other way round, as BLIS does for Haswell:
 *     each NR-wide sliver of B (kc x 16, 16 KiB) stays in L1 while the
 *     kernel sweeps the A block (mc x kc, 192 KiB, in L2); kc = 256
 *     measured better than 384 (5 points of peak on NN and TN). The B
 *     block then need not stay in L2 (each sliver is used for a whole
 *     sweep of A before the next is loaded), so for products of at least
 *     nc_tall_m rows it is widened to nc_tall = 2048 (BLIS uses 4080 on
 *     Haswell): A is then packed a quarter as often, which measured 2-6
 *     points of peak on M = 1024 qkv and attention shapes (NT, NN, TN;
 *     interleaved best-of runs, Zen 5 with AVX2 forced). Fewer rows keep
 *     nc = 512: at M = 64 and 256 against the 50257-wide vocabulary
 *     matrix, a 2 MiB packed B block no longer stays in L2 between being
 *     packed and being read, and measured 2-5 points slower.
 * The blocking changes neither what an element of C is computed from nor
 * the order (the K blocks are the same), so it cannot change results. */
typedef struct gemm_blocking {
    size_t kc, mc, nc;
    size_t nc_tall, nc_tall_m; /* nc for M >= nc_tall_m rows (0: none) */
    int ir_outer;
} gemm_blocking;

static gemm_blocking family_blocking(tb_kernel family)
{
    gemm_blocking b = {384, 192, 512, 0, 0, 1};
    if (family == TB_KERNEL_AVX2)
        b.kc = 256, b.nc_tall = 2048, b.nc_tall_m = 768, b.ir_outer = 0;
    return b;
}

/* The N block of a product of M rows (before rounding to whole slivers);
 * it never shrinks as M grows. */
static size_t block_nc(const gemm_blocking *b, size_t M)
{
    return b->nc_tall && M >= b->nc_tall_m ? b->nc_tall : b->nc;
}

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

static size_t round_up(size_t x, size_t m)
{
    return (x + m - 1) / m * m;
}

/* Columns of one row that gemm_one_row takes at once (at most 8 KiB of
 * sums per K block, in L1 beside the rows of B streaming through). */
#define ONE_ROW_COLS 2048

/* Rows of padding when M is cut into tiles of mr rows. */
static size_t row_waste(size_t M, size_t mr)
{
    return round_up(M, mr) - M;
}

/* The micro-kernel a product of M rows runs on. The choice depends on the
 * family and M only, never on the thread count; every kernel of a family
 * computes an element with the same operations, so results do not depend
 * on which of them is picked. Each pick is one of tb_ukernels_of_family(). */
static const tb_ukernel *select_ukernel(tb_kernel family, size_t M)
{
    switch (family) {
    case TB_KERNEL_AVX512:
        /* One row: no padding. */
        if (M == 1)
            return &tb_ukernel_avx512_m1;
        /* The 8-row kernel (measured as fast per tile row) when 12-row
         * tiles would pad a larger share of M, e.g. M = 64 or 1024. */
        if (row_waste(M, 8) * 12 < row_waste(M, 12) * 8)
            return &tb_ukernel_avx512_m8;
        return &tb_ukernel_avx512;
    case TB_KERNEL_AVX2:
        return M == 1 ? &tb_ukernel_avx2_m1 : &tb_ukernel_avx2;
    default:
        return &tb_ukernel_portable;
    }
}

size_t tb_ukernels_of_family(int family, const tb_ukernel **uk)
{
    switch (family) {
    case TB_KERNEL_AVX512:
        uk[0] = &tb_ukernel_avx512, uk[1] = &tb_ukernel_avx512_m8, uk[2] = &tb_ukernel_avx512_m1;
        return 3;
    case TB_KERNEL_AVX2:
        uk[0] = &tb_ukernel_avx2, uk[1] = &tb_ukernel_avx2_m1;
        return 2;
    default:
        uk[0] = &tb_ukernel_portable;
        return 1;
    }
}

/* Rows a pack_copy takes at once when its rows are far apart (see there). */
#define PACK_ROWS_AT_ONCE 4

/* Copy rows of a row-major matrix into w-wide slivers (the cheap packing
 * case: op(A) = A^T, op(B) = B). Row k of the block (n contiguous floats at
 * src + k*ld) lands in group k of every sliver: sliver s holds columns
 * [s*w, s*w + w) as dst[s*w*kc + k*w + j]; columns past n are zero. One
 * sliver at a time for rows close together: writing all slivers per source
 * row would touch addresses w*kc*4 bytes apart, which alias in the L1
 * cache. */
static void pack_copy(size_t w, size_t n, size_t kc, const float *src, size_t ld, float *dst)
{
    /* Rows a page or more apart (the vocabulary matrix, a transposed A of
     * thousands of columns): take a few rows at a time across every
     * sliver, so those rows' pages and streams stay hot (one sliver at a
     * time they are revisited once per sliver; the pack took 30% of an
     * M = 64 product against the vocabulary matrix, now ~5 points of peak
     * less). */
    const size_t k_chunk = ld >= 1024 ? PACK_ROWS_AT_ONCE : kc;
    for (size_t k0 = 0; k0 < kc; k0 += k_chunk) {
        const size_t k1 = min_sz(kc, k0 + k_chunk);
        /* ...and ask for the next few rows while these are copied. */
        if (k_chunk < kc)
            for (size_t k = k1; k < min_sz(kc, k1 + k_chunk); k++)
                for (size_t j = 0; j < n; j += 16)
                    __builtin_prefetch(src + k * ld + j);
        for (size_t s0 = 0; s0 < n; s0 += w) {
            const size_t cols = min_sz(w, n - s0);
            float *d = dst + s0 * kc;
            const float *sp = src + s0;
            /* Full slivers of the widths the kernels use: constant-width
             * copies the compiler turns into vector moves (a memcpy call
             * per 32-128 bytes cost ~8% of a whole product). */
#define COPY_FIXED(W)                                   \
    case W:                                             \
        for (size_t k = k0; k < k1; k++)                \
            for (size_t j = 0; j < (W); j++)            \
                d[k * (W) + j] = sp[k * ld + j];        \
        continue;
            if (cols == w) {
                switch (w) {
                    COPY_FIXED(4)
                    COPY_FIXED(6)
                    COPY_FIXED(8)
                    COPY_FIXED(12)
                    COPY_FIXED(16)
                    COPY_FIXED(32)
                    COPY_FIXED(64)
                default:
                    break;
                }
            }
#undef COPY_FIXED
            for (size_t k = k0; k < k1; k++) {
                size_t j = 0;
                for (; j < cols; j++)
                    d[k * w + j] = sp[k * ld + j];
                for (; j < w; j++)
                    d[k * w + j] = 0.0f;
            }
        }
    }
}

/* Transposing pack, plain C: rows (<= w) rows of kc floats (row r at
 * src + r*ld) into dst[k*w + r], rows past `rows` zero. */
static void pack_rows_c(size_t w, size_t rows, size_t kc, const float *src, size_t ld,
                        float *dst)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t k = 0; k < kc; k++)
            dst[k * w + r] = src[r * ld + k];
    for (size_t r = rows; r < w; r++)
        for (size_t k = 0; k < kc; k++)
            dst[k * w + r] = 0.0f;
}

/* Pack op(A)[i0 .. i0+mc) x [k0 .. k0+kc) into MR-tall slivers (sliver s at
 * ap + s*MR*kc, rows past mc zero). */
static void pack_a(const tb_ukernel *uk, size_t mc, size_t kc, const float *A, size_t lda,
                   int trans, size_t i0, size_t k0, float *ap)
{
    const size_t mr = (size_t)uk->mr;
    if (trans) { /* op(A)[i][k] = A[k][i]: rows of A are contiguous in i */
        pack_copy(mr, mc, kc, A + k0 * lda + i0, lda, ap);
        return;
    }
    const tb_pack_rows_fn pack_rows = uk->pack_rows ? uk->pack_rows : pack_rows_c;
    for (size_t is = 0; is < mc; is += mr)
        pack_rows(mr, min_sz(mr, mc - is), kc, A + (i0 + is) * lda + k0, lda, ap + is * kc);
}

/* Pack op(B)[k0 .. k0+kc) x [j0 .. j0+nc) into NR-wide slivers (sliver s at
 * bp + s*NR*kc, columns past nc zero). */
static void pack_b(const tb_ukernel *uk, size_t nc, size_t kc, const float *B, size_t ldb,
                   int trans, size_t k0, size_t j0, float *bp)
{
    const size_t nr = (size_t)uk->nr;
    if (!trans) { /* op(B)[k][j] = B[k][j]: rows of B are contiguous in j */
        pack_copy(nr, nc, kc, B + k0 * ldb + j0, ldb, bp);
        return;
    }
    const tb_pack_rows_fn pack_rows = uk->pack_rows ? uk->pack_rows : pack_rows_c;
    for (size_t js = 0; js < nc; js += nr)
        pack_rows(nr, min_sz(nr, nc - js), kc, B + (j0 + js) * ldb + k0, ldb, bp + js * kc);
}

typedef struct gemm_args {
    const tb_ukernel *uk;
    gemm_blocking blk;
    size_t a_cap, b_cap; /* floats of packing space at ap and bp */
    int trans_a, trans_b;
    int direct_b; /* read full slivers of an untransposed B in place */
    size_t M, N, K, mc, nc;
    float alpha, beta;
    const float *A, *B;
    size_t lda, ldb, ldc;
    float *C;
} gemm_args;

/* The product's arguments, its micro-kernel and whether B is read in
 * place; blocking (mc, nc) is the caller's. An untransposed B is read in
 * place: its rows already hold NR contiguous columns per k, and skipping
 * the copy was measured faster on the GPT-2 shapes (most at small M, where
 * each element of B is used only M times). It is packed instead when its
 * rows are a multiple of 2 KiB apart (N = 1024, 2048, 3072: the rows alias
 * in the L1 cache and run ~30% slower; unless M <= 8: each element of B is
 * then used so few times that copying it costs more than the aliasing) or
 * more than 32 KiB apart (the 50257-wide vocabulary matrix: every k would
 * touch a new page). The AVX2 family packs it whenever M > 8: its loop
 * order keeps one B sliver in L1 for a whole sweep of the A block, and
 * read in place, a sliver's kc rows at the GPT-2 strides (768 and 2304
 * floats, multiples of 1 KiB apart) fall into 4 of the 64 L1 sets and
 * cannot stay there; packed measured 1-8 points of peak faster on the
 * M = 64 and 256 qkv, attention and projection shapes (NN, TN;
 * interleaved best-of runs, Zen 5 with AVX2 forced). */
static void gemm_args_init(gemm_args *g, const tb_ctx *ctx, int trans_a, int trans_b, size_t M,
                           size_t N, size_t K, float alpha, const float *A, size_t lda,
                           const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    const tb_kernel family = tb_ctx_kernel(ctx);
    g->uk = select_ukernel(family, M);
    g->blk = family_blocking(family);
    g->trans_a = trans_a, g->trans_b = trans_b;
    g->direct_b = !trans_b && ldb <= 8192 &&
                  (M <= 8 || (ldb % 512 != 0 && family != TB_KERNEL_AVX2));
    g->M = M, g->N = N, g->K = K;
    g->alpha = alpha;
    g->beta = beta;
    g->A = A, g->B = B, g->C = C;
    g->lda = lda, g->ldb = ldb, g->ldc = ldc;
    g->mc = g->nc = 0;
    g->a_cap = g->b_cap = 0;
}

/* Scratch of gemm_one_row for one thread's n_range columns (M = 1 with
 * the kernel's one-row function), far less than the tile path's packing
 * space: a gathered row of op(A), and the sums of up to ONE_ROW_COLS
 * columns (for every K block, against a transposed B): what one_row_fits()
 * then accepts, so gemm_range takes the one-row path. 0 when the tile path
 * runs instead (and keeps its own packing space). */
/* Whether the kernel has the one-row function this product's form needs. */
static int one_row_kernel(const gemm_args *g)
{
    return g->trans_b ? g->uk->dots != NULL : g->uk->rows != NULL;
}

static int one_row_scratch(const gemm_args *g, size_t n_range, size_t *a_floats,
                           size_t *b_floats)
{
    if (g->M != 1 || !one_row_kernel(g))
        return 0;
    const size_t blocks = (g->K + g->blk.kc - 1) / g->blk.kc;
    const size_t cols = min_sz(ONE_ROW_COLS, n_range);
    *a_floats = round_up(g->trans_a ? g->K : 1, 16);
    return tb_mul_size(g->trans_b ? blocks : 1, round_up(cols, 16), b_floats);
}

/* One MR x NR tile of C (mre x nre of it valid) += alpha * sliver product. */
static void tile_update(const gemm_args *g, size_t kc, const float *as, const float *bs,
                        size_t ldb, float *c, size_t mre, size_t nre, int add)
{
    const size_t mr = (size_t)g->uk->mr, nr = (size_t)g->uk->nr;
    if (mre == mr && nre == nr) {
        g->uk->fn(kc, as, bs, ldb, c, g->ldc, g->alpha, add);
        return;
    }
    /* Edge tile: the kernel stores alpha * product into scratch, then the
     * valid part is added to (or stored into) C: the same operations, so
     * the same bits, as a full tile computed in place. */
    float tile[TB_UKERNEL_MAX_MR * TB_UKERNEL_MAX_NR];
    g->uk->fn(kc, as, bs, ldb, tile, nr, g->alpha, 0);
    for (size_t r = 0; r < mre; r++)
        for (size_t j = 0; j < nre; j++)
            c[r * g->ldc + j] = add ? c[r * g->ldc + j] + tile[r * nr + j] : tile[r * nr + j];
}

/* The tile of C at rows ic + ir, columns jc + jr of a packed block: the
 * A sliver at ap + ir*kc, the B sliver packed at bp + jr*kc or read in
 * place (the first full_nc columns of a direct B). */
static void block_tile(const gemm_args *g, size_t ic, size_t jc, size_t pc, size_t mc, size_t nc,
                       size_t kc, size_t full_nc, const float *ap, const float *bp, size_t ir,
                       size_t jr)
{
    const size_t mr = (size_t)g->uk->mr, nr = (size_t)g->uk->nr;
    const int in_place = jr < full_nc;
    const float *bs = in_place ? g->B + pc * g->ldb + jc + jr : bp + jr * kc;
    tile_update(g, kc, ap + ir * kc, bs, in_place ? g->ldb : nr,
                g->C + (ic + ir) * g->ldc + jc + jr, min_sz(mr, mc - ir), min_sz(nr, nc - jr),
                pc > 0 || g->beta != 0.0f);
}

/* One row of tiles against a transposed B (M <= MR, e.g. decoding's
 * M = 1 against the vocabulary matrix): each NR-wide sliver of B is packed
 * for the whole of K at once when it fits (its rows, contiguous in K, are
 * then read straight through; measured 27 -> 31 GB/s on the vocabulary
 * matrix) and gets all of its K blocks before the next sliver. Each element
 * gets the same K blocks in the same order as in gemm_range's usual loops,
 * so the same bits. */
static void gemm_row_of_tiles(const gemm_args *g, size_t m0, size_t mc, size_t n0, size_t n1,
                              float *ap, float *bp)
{
    const size_t nr = (size_t)g->uk->nr;
    const int whole_k = nr * g->K <= g->b_cap;
    for (size_t jr = n0; jr < n1; jr += nr) {
        const size_t nre = min_sz(nr, n1 - jr);
        if (whole_k) /* K groups of NR: the K blocks' slivers back to back */
            pack_b(g->uk, nre, g->K, g->B, g->ldb, g->trans_b, 0, jr, bp);
        for (size_t pc = 0; pc < g->K; pc += g->blk.kc) {
            const size_t kc = min_sz(g->blk.kc, g->K - pc);
            pack_a(g->uk, mc, kc, g->A, g->lda, g->trans_a, m0, pc, ap);
            if (!whole_k)
                pack_b(g->uk, nre, kc, g->B, g->ldb, g->trans_b, pc, jr, bp);
            tile_update(g, kc, ap, whole_k ? bp + pc * nr : bp, nr, g->C + m0 * g->ldc + jr, mc,
                        nre, pc > 0 || g->beta != 0.0f);
        }
    }
}

/* op(A)[m0][k0 .. k0+n): A's own row, or gathered from its column into ap. */
static const float *a_row(const gemm_args *g, size_t m0, size_t k0, size_t n, float *ap)
{
    if (!g->trans_a)
        return g->A + m0 * g->lda + k0;
    for (size_t k = 0; k < n; k++)
        ap[k] = g->A[(k0 + k) * g->lda + m0];
    return ap;
}

/* c[0 .. n) gets alpha * sums and the add exactly as a tile's store does. */
static void one_row_update(const gemm_args *g, float *c, const float *sums, size_t n, int add)
{
    for (size_t j = 0; j < n; j++) {
        const float t = g->alpha * sums[j];
        c[j] = add ? c[j] + t : t;
    }
}

/* Whether gemm_one_row can take row products of this shape: the kernel
 * has the function, and (against a transposed B) the sums of every K block
 * for at least one column fit B's scratch and op(A)'s whole row, if it
 * must be gathered, fits A's. Otherwise the tile path runs. */
static int one_row_fits(const gemm_args *g)
{
    if (!one_row_kernel(g))
        return 0;
    if (!g->trans_b)
        return 1;
    const size_t blocks = (g->K + g->blk.kc - 1) / g->blk.kc;
    return g->b_cap >= blocks && (!g->trans_a || g->a_cap >= g->K);
}

/* Row m0 of C, columns [n0, n1), for M = 1 (decoding), without packing B.
 * An untransposed B (a layer stored (in, out)) goes through the kernel's
 * rows function, which reads each row of B straight through, one K block
 * at a time, where tiles would read NR columns of kc rows lying a whole row
 * of B apart. A transposed one (the vocabulary matrix) goes through its
 * dots function, which reads each row of B end to end over all K blocks,
 * transposing in registers instead of packing and reading again. Per K
 * block the sums then get alpha and the add as a tile's do, in the same
 * order of blocks, so the bits are those of the tile path. Measured on the
 * GPT-2 decoding shapes: see docs/gpt.md. */
static void gemm_one_row(const gemm_args *g, size_t m0, size_t n0, size_t n1, float *ap,
                         float *bp)
{
    const size_t kc_max = g->blk.kc, blocks = (g->K + kc_max - 1) / kc_max;
    const size_t cols = min_sz(ONE_ROW_COLS, g->trans_b ? g->b_cap / blocks : g->b_cap);
    const float *a_all = g->trans_b ? a_row(g, m0, 0, g->K, ap) : NULL;
    for (size_t j0 = n0; j0 < n1; j0 += cols) {
        const size_t n = min_sz(cols, n1 - j0);
        float *c = g->C + m0 * g->ldc + j0;
        if (g->trans_b)
            g->uk->dots(g->K, kc_max, a_all, g->B + j0 * g->ldb, g->ldb, n, bp, n);
        for (size_t pc = 0, blk = 0; pc < g->K; pc += kc_max, blk++) {
            const size_t kc = min_sz(kc_max, g->K - pc);
            if (!g->trans_b)
                g->uk->rows(kc, a_row(g, m0, pc, kc, ap), g->B + pc * g->ldb + j0, g->ldb, n,
                            bp);
            one_row_update(g, c, g->trans_b ? bp + blk * n : bp, n, pc > 0 || g->beta != 0.0f);
        }
    }
}

/* C[m0..m1) x [n0..n1) += alpha * op(A) op(B), with private pack buffers. */
static void gemm_range(const gemm_args *g, size_t m0, size_t m1, size_t n0, size_t n1,
                       float *ap, float *bp)
{
    const size_t mr = (size_t)g->uk->mr, nr = (size_t)g->uk->nr;
    if (m1 - m0 == 1 && one_row_fits(g)) {
        gemm_one_row(g, m0, n0, n1, ap, bp);
        return;
    }
    if (g->trans_b && m1 - m0 <= mr) {
        gemm_row_of_tiles(g, m0, m1 - m0, n0, n1, ap, bp);
        return;
    }
    for (size_t jc = n0; jc < n1; jc += g->nc) {
        const size_t nc = min_sz(g->nc, n1 - jc);
        for (size_t pc = 0; pc < g->K; pc += g->blk.kc) {
            const size_t kc = min_sz(g->blk.kc, g->K - pc);
            /* Direct B: only a ragged last sliver is packed. */
            const size_t full_nc = g->direct_b ? nc / nr * nr : 0;
            /* pack_b writes [bp + full_nc*kc, bp + round_up(nc, nr)*kc). */
            if (full_nc < nc)
                pack_b(g->uk, nc - full_nc, kc, g->B, g->ldb, g->trans_b, pc, jc + full_nc,
                       bp + full_nc * kc);
            for (size_t ic = m0; ic < m1; ic += g->mc) {
                const size_t mc = min_sz(g->mc, m1 - ic);
                /* pack_a writes [ap, ap + round_up(mc, mr)*kc). */
                pack_a(g->uk, mc, kc, g->A, g->lda, g->trans_a, ic, pc, ap);
                /* Each tile is the same computation in either order. */
                if (g->blk.ir_outer) {
                    for (size_t ir = 0; ir < mc; ir += mr)
                        for (size_t jr = 0; jr < nc; jr += nr)
                            block_tile(g, ic, jc, pc, mc, nc, kc, full_nc, ap, bp, ir, jr);
                } else {
                    for (size_t jr = 0; jr < nc; jr += nr)
                        for (size_t ir = 0; ir < mc; ir += mr)
                            block_tile(g, ic, jc, pc, mc, nc, kc, full_nc, ap, bp, ir, jr);
                }
            }
        }
    }
}

/* One row of C = beta * C (beta == 0: zeros, C not read). */
static void scale_row(float *c, size_t N, float beta)
{
    if (beta == 0.0f)
        memset(c, 0, N * sizeof(float));
    else
        for (size_t j = 0; j < N; j++)
            c[j] *= beta;
}

/* C = beta * C (beta == 0: C = 0 without reading it). */
static void scale_c(tb_ctx *ctx, size_t M, size_t N, float beta, float *C, size_t ldc)
{
    if (beta == 1.0f)
        return;
#pragma omp parallel for num_threads(tb_threads_for(ctx, (double)M * N)) schedule(static)
    for (size_t i = 0; i < M; i++)
        scale_row(C + i * ldc, N, beta);
}

/* ---- Few rows against a transposed B: the product transposed --------------
 * C (M x N) = alpha op(A) B^T + beta C for M <= NARROW_MAX_M: a linear
 * layer's forward on a few tokens, e.g. M = 64 against GPT-2's 50257 x 768
 * vocabulary matrix. The tile path packs every element of B (transposing
 * it) to use it only M times: at M = 64 that packing took 22-27% of the
 * product (AVX2, measured with perf). Here the product is computed as
 * C^T = B op(A)^T instead: B's rows, contiguous in K, are read in place as
 * the kernel's MR rows of A (tb_ukernel_arows_fn), so B is never packed and
 * is read once, front to back; op(A)^T, M columns, is packed once (shared
 * by the threads) into NR-wide slivers covering all of K. Each group of MR
 * rows of B gets its MR x M block of C^T, accumulated over the K blocks in
 * a small buffer, then stored transposed into C.
 *
 * Same bits as the tile path: every element of C gets the same K blocks in
 * the same order, each the same FMA chain (a*b and b*a round alike), alpha
 * and the add, and the same beta handling (C scaled first; the first block
 * adds to it, or stores when beta == 0). test_gemm compares the two. */
#define NARROW_MAX_M 64
#define NARROW_MAX_PACK (1u << 18) /* floats of op(A)^T (1 MiB: in L2 beside B's rows) */

/* Whether the product goes through gemm_narrow: the kernel has arows, B is
 * transposed, and op(A)^T's NR-wide slivers pad M by at most an eighth
 * (M = 64, 48, 32 and a little under; otherwise the padding costs more
 * than packing B), all of it fitting NARROW_MAX_PACK. M and K decide, never
 * the thread count. */
static int narrow_fits(const gemm_args *g)
{
    const size_t nr = (size_t)g->uk->nr, mp = round_up(g->M, nr);
    return g->uk->arows && g->trans_b && g->M >= nr && g->M <= NARROW_MAX_M &&
           (mp - g->M) * 8 <= g->M && mp * g->K <= NARROW_MAX_PACK;
}

/* Rows [g0, g1) of MR-row groups of B: their C^T blocks, stored into C.
 * s: MR x mp floats (the block), w: MR x K floats (a ragged last group's
 * rows, zero-padded). */
static void narrow_groups(const gemm_args *g, const float *xp, size_t mp, size_t g0, size_t g1,
                          float *s, float *w)
{
    const size_t mr = (size_t)g->uk->mr, nr = (size_t)g->uk->nr, K = g->K, kc_max = g->blk.kc;
    for (size_t grp = g0; grp < g1; grp++) {
        const size_t n0 = grp * mr, rows = min_sz(mr, g->N - n0);
        const float *b = g->B + n0 * g->ldb;
        size_t ldw = g->ldb;
        if (rows < mr) { /* never read past B's last row */
            for (size_t r = 0; r < mr; r++)
                for (size_t k = 0; k < K; k++)
                    w[r * K + k] = r < rows ? b[r * g->ldb + k] : 0.0f;
            b = w, ldw = K;
        }
        if (g->beta != 0.0f) /* C (already scaled by beta), transposed */
            for (size_t r = 0; r < mr; r++)
                for (size_t m = 0; m < mp; m++)
                    s[r * mp + m] = r < rows && m < g->M ? g->C[m * g->ldc + n0 + r] : 0.0f;
        for (size_t pc = 0; pc < K; pc += kc_max) {
            const size_t kc = min_sz(kc_max, K - pc);
            const int add = pc > 0 || g->beta != 0.0f;
            for (size_t ms = 0; ms < mp; ms += nr)
                g->uk->arows(kc, b + pc, ldw, xp + pc * mp + ms * kc, nr, s + ms, mp, g->alpha,
                             add);
        }
        for (size_t m = 0; m < g->M; m++)
            for (size_t r = 0; r < rows; r++)
                g->C[m * g->ldc + n0 + r] = s[r * mp + m];
    }
}

int tb_gemm_narrow(const tb_ctx *ctx, int trans_b, size_t M, size_t K)
{
    gemm_args g;
    gemm_args_init(&g, ctx, 0, trans_b, M, 1, K, 1.0f, NULL, 1, NULL, 1, 0.0f, NULL, 1);
    return M > 0 && K > 0 && narrow_fits(&g);
}

/* The product through the transposed form (narrow_fits() holds, K > 0,
 * alpha != 0). */
static tb_status gemm_narrow(tb_ctx *ctx, gemm_args *g)
{
    const size_t mr = (size_t)g->uk->mr, nr = (size_t)g->uk->nr, K = g->K;
    const size_t mp = round_up(g->M, nr), groups = (g->N + mr - 1) / mr;
    int threads = tb_threads_for(ctx, (double)g->M * (double)g->N * (double)K);
    if ((size_t)threads > groups)
        threads = (int)groups;
    /* op(A)^T (shared), then per thread the C^T block and a ragged group's rows. */
    const size_t xp_floats = mp * K, per_thread = round_up(mr * mp, 16) + round_up(mr * K, 16);
    size_t bytes, thread_floats;
    if (!tb_mul_size(per_thread, (size_t)threads, &thread_floats) ||
        !tb_mul_size(round_up(xp_floats, 16) + thread_floats, sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, "tb_gemm", "packing buffers overflow");
    void *mem;
    tb_status st = tb_alloc(ctx, "tb_gemm", bytes, &mem);
    if (st != TB_OK)
        return st;
    if (g->beta != 0.0f)
        scale_c(ctx, g->M, g->N, g->beta, g->C, g->ldc);
    float *xp = mem;
    const size_t blocks = (K + g->blk.kc - 1) / g->blk.kc;
#pragma omp parallel num_threads(threads)
    {
        /* op(A)^T[k][m] = op(A)[m][k]: a transposed B's pack of A itself
         * when A is not transposed, an untransposed one's when it is. */
#pragma omp for schedule(static)
        for (size_t blk = 0; blk < blocks; blk++) {
            const size_t pc = blk * g->blk.kc, kc = min_sz(g->blk.kc, K - pc);
            pack_b(g->uk, g->M, kc, g->A, g->lda, !g->trans_a, pc, 0, xp + pc * mp);
        }
        const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        float *s = xp + round_up(xp_floats, 16) + t * per_thread;
        narrow_groups(g, xp, mp, groups * t / nt, groups * (t + 1) / nt, s,
                      s + round_up(mr * mp, 16));
    }
    tb_free_with(&ctx->allocator, mem);
    return TB_OK;
}

tb_status tb_gemm(tb_ctx *ctx, int trans_a, int trans_b, size_t M, size_t N, size_t K,
                  float alpha, const float *A, size_t lda, const float *B, size_t ldb,
                  float beta, float *C, size_t ldc)
{
    if (M == 0 || N == 0)
        return TB_OK;
    gemm_args g;
    gemm_args_init(&g, ctx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    const size_t mr = (size_t)g.uk->mr, nr = (size_t)g.uk->nr;

    /* Threads split M or N into ranges of whole tiles. Whatever is not split
     * is packed by every thread, so split the larger dimension; but an
     * in-place B costs nothing to share, so then split M whenever it has a
     * few tiles per thread. */
    const size_t m_tiles = (M + mr - 1) / mr, n_tiles = (N + nr - 1) / nr;
    int threads = tb_threads_for(ctx, (double)M * (double)N * (double)K);
    const int split_n = (g.direct_b && m_tiles >= 2 * (size_t)threads)
                            ? 0
                            : n_tiles * nr >= m_tiles * mr;
    const size_t units = split_n ? n_tiles : m_tiles;
    if ((size_t)threads > units)
        threads = (int)units;

    g.mc = round_up(g.blk.mc, mr);
    /* Widest N range one thread handles, rounded to whole slivers. */
    size_t n_range = split_n ? ((units + (size_t)threads - 1) / (size_t)threads) * nr : N;
    g.nc = min_sz(round_up(block_nc(&g.blk, M), nr), round_up(n_range, nr));
    const size_t kc = min_sz(g.blk.kc, K ? K : 1);
    size_t a_floats = round_up(g.mc * kc, 16), b_floats = round_up(g.nc * kc, 16);
    size_t one_a, one_b; /* M = 1 without packing needs far less */
    if (one_row_scratch(&g, n_range, &one_a, &one_b))
        a_floats = one_a, b_floats = one_b;

    /* K == 0 or alpha == 0: only the beta scaling remains. */
    if (K == 0 || alpha == 0.0f) {
        scale_c(ctx, M, N, beta, C, ldc);
        return TB_OK;
    }
    if (narrow_fits(&g))
        return gemm_narrow(ctx, &g);
    void *mem;
    size_t per_thread = a_floats + b_floats, bytes;
    if (!tb_mul_size(per_thread, (size_t)threads * sizeof(float), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, "tb_gemm", "packing buffers overflow");
    tb_status s = tb_alloc(ctx, "tb_gemm", bytes, &mem);
    if (s != TB_OK)
        return s;
    /* beta == 0: the first K block stores instead of adding (C is not
     * read); beta == 1: nothing to do; otherwise scale C first. */
    if (beta != 0.0f)
        scale_c(ctx, M, N, beta, C, ldc);
    float *buf = mem;
    g.a_cap = a_floats, g.b_cap = b_floats;
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

/* Blocking and packing space of a serial product on kernel uk: A's
 * MR-tall slivers for min(M, MC) rows and B's NR-wide slivers for
 * min(N, NC) columns (NC = block_nc(M), which never shrinks as M grows),
 * both kc = min(K, KC) deep (the family's blocking).
 * Every term grows with M, N and K, so the space for (M, N, K) covers every
 * smaller product. */
typedef struct serial_plan {
    size_t mc, nc, kc, a_floats, b_floats;
} serial_plan;

static serial_plan plan_serial(const tb_ukernel *uk, const gemm_blocking *blk, size_t M,
                               size_t N, size_t K)
{
    const size_t mr = (size_t)uk->mr, nr = (size_t)uk->nr;
    serial_plan p;
    p.mc = min_sz(round_up(blk->mc, mr), round_up(M ? M : 1, mr));
    p.nc = min_sz(round_up(block_nc(blk, M), nr), round_up(N ? N : 1, nr));
    p.kc = min_sz(blk->kc, K ? K : 1);
    p.a_floats = round_up(p.mc * p.kc, 16); /* keeps B's buffer 64-byte aligned */
    p.b_floats = p.nc * p.kc;
    return p;
}

#ifdef TB_DEBUG
/* The sentinel of tb_gemm_serial's debug check: a NaN no product stores. */
static const uint32_t DEBUG_BITS = 0x7fc0beef;

static void debug_fill(float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        memcpy(&p[i], &DEBUG_BITS, sizeof DEBUG_BITS);
}

static int debug_intact(const float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&p[i], &DEBUG_BITS, sizeof DEBUG_BITS) != 0)
            return 0;
    return 1;
}
#endif

/* `work` is aligned up to 64 bytes first: at most this many floats. */
#define SERIAL_ALIGN_FLOATS 15

size_t tb_gemm_serial_work(const tb_ctx *ctx, size_t M, size_t N, size_t K)
{
    const tb_kernel family = tb_ctx_kernel(ctx);
    const gemm_blocking blk = family_blocking(family);
    const tb_ukernel *uk[TB_UKERNELS_PER_FAMILY];
    const size_t n = tb_ukernels_of_family(family, uk);
    size_t most = 0;
    for (size_t i = 0; i < n; i++) {
        const serial_plan p = plan_serial(uk[i], &blk, M, N, K);
        if (p.a_floats + p.b_floats > most)
            most = p.a_floats + p.b_floats;
    }
    return most + SERIAL_ALIGN_FLOATS;
}

tb_status tb_gemm_serial(const tb_ctx *ctx, int trans_a, int trans_b, size_t M, size_t N,
                         size_t K, float alpha, const float *A, size_t lda, const float *B,
                         size_t ldb, float beta, float *C, size_t ldc, float *work,
                         size_t work_floats)
{
    if (M == 0 || N == 0)
        return TB_OK;
    gemm_args g;
    gemm_args_init(&g, ctx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    const serial_plan p = plan_serial(g.uk, &g.blk, M, N, K);
    float *ap = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    const size_t skip = (size_t)(ap - work);
    /* The caller sized work with tb_gemm_serial_work() for at least this
     * product on this family: anything else is a bug in the caller. */
    const int fits = skip <= SERIAL_ALIGN_FLOATS && work_floats >= skip &&
                     work_floats - skip >= p.a_floats + p.b_floats;
    if (!fits)
        return TB_ERR_BUFFER_TOO_SMALL;
#ifdef TB_DEBUG
    /* Debug build: every float of the scratch no pack may write (the
     * rounding gap after A's slivers and everything after B's) is set to a
     * sentinel and checked afterwards, so a pack or kernel writing past the
     * extent it was given is reported, never silent. */
    const size_t a_used = round_up(p.mc, (size_t)g.uk->mr) * p.kc;
    const size_t tail0 = skip + p.a_floats + p.b_floats;
    debug_fill(ap + a_used, p.a_floats - a_used);
    debug_fill(work + tail0, work_floats - tail0);
#endif
    /* As tb_gemm: beta applied first unless the first K block stores. */
    if ((K == 0 || alpha == 0.0f || beta != 0.0f) && beta != 1.0f)
        for (size_t i = 0; i < M; i++)
            scale_row(C + i * ldc, N, beta);
    if (K == 0 || alpha == 0.0f)
        return TB_OK;
    g.mc = p.mc, g.nc = p.nc;
    /* A's space ends where its slivers do (the rest is the debug build's). */
    g.a_cap = round_up(p.mc, (size_t)g.uk->mr) * p.kc, g.b_cap = p.b_floats;
    gemm_range(&g, 0, M, 0, N, ap, ap + p.a_floats);
#ifdef TB_DEBUG
    if (!debug_intact(ap + a_used, p.a_floats - a_used) ||
        !debug_intact(work + tail0, work_floats - tail0))
        return TB_ERR_BUFFER_TOO_SMALL; /* C is not valid: a library bug */
#endif
    return TB_OK;
}
