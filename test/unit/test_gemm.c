/*
 * The GEMM engine against a naive double-precision reference on many odd
 * shapes, all four transpose forms, alpha/beta variants and padded leading
 * dimensions, for every kernel family this CPU supports; bitwise
 * determinism across thread counts; beta == 0 ignores NaN in C; an
 * allocation failure leaves C untouched.
 *
 * Tolerance (scaled by K): a float dot product of K terms accumulated in any
 * order, plus the alpha/beta updates and one add per K block, is within
 * (K + K/256 + 4) u sum|alpha a b| + 2u |beta c| of the exact value
 * (u = 2^-24). We allow twice that. A dropped or wrong term of average size
 * exceeds it for every K used here (up to 3000).
 */
#define _POSIX_C_SOURCE 200809L /* setenv, strdup */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "kernels/gemm.h"
#include "kernels/gemm_ukernel.h"
#include "suites.h"
#include "testutil.h"

typedef struct gemm_case {
    int ta, tb;
    size_t M, N, K, pad; /* pad: extra elements per row of A, B and C */
    float alpha, beta;
} gemm_case;

static const float U = 5.9604645e-8f; /* 2^-24 */

/* Floats of sentinel after a serial product's scratch (and NaN bits that a
 * stray write of any computed value cannot reproduce). */
#define GUARD_FLOATS 64
static const uint32_t GUARD_BITS = 0x7fc0dead;

/* Fill the GUARD_FLOATS floats at p with the sentinel. */
static void guard_fill(float *p)
{
    for (size_t i = 0; i < GUARD_FLOATS; i++)
        memcpy(&p[i], &GUARD_BITS, sizeof GUARD_BITS);
}

/* How many floats of the guard zone at p are intact before the first
 * overwritten one (GUARD_FLOATS: all). */
static size_t guard_intact(const float *p)
{
    size_t i = 0;
    for (uint32_t bits; i < GUARD_FLOATS; i++) {
        memcpy(&bits, &p[i], sizeof bits);
        if (bits != GUARD_BITS)
            break;
    }
    return i;
}

/* One product through tb_gemm (serial == 0, `threads` threads) or through
 * tb_gemm_serial (serial != 0) in a scratch of exactly
 * tb_gemm_serial_work(M, N, K) floats that starts `misalign` floats past a
 * 64-byte boundary, followed by a guard zone that must stay untouched. */
static void run_case_impl(tb_kernel kernel, const gemm_case *gc, int threads, int serial,
                          size_t misalign)
{
    const size_t M = gc->M, N = gc->N, K = gc->K;
    const size_t ar = gc->ta ? K : M, ac = gc->ta ? M : K; /* stored A shape */
    const size_t br = gc->tb ? N : K, bc = gc->tb ? K : N; /* stored B shape */
    const size_t lda = ac + gc->pad, ldb = bc + gc->pad, ldc = N + gc->pad;
    float *A = tbt_alloc(ar * lda * sizeof(float) + 4);
    float *B = tbt_alloc(br * ldb * sizeof(float) + 4);
    float *C = tbt_alloc(M * ldc * sizeof(float) + 4);
    float *C0 = tbt_alloc(M * ldc * sizeof(float) + 4);
    tbt_fill_uniform(A, ar * lda, -1, 1, M * 7 + K);
    tbt_fill_uniform(B, br * ldb, -1, 1, N * 5 + K);
    tbt_fill_uniform(C0, M * ldc, -1, 1, M + N);
    if (gc->beta == 0.0f) /* beta == 0 must not read C */
        for (size_t i = 0; i < M * ldc; i++)
            C0[i] = NAN;
    memcpy(C, C0, M * ldc * sizeof(float));

    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    ck_assert_int_eq(tb_ctx_set_kernel(&ctx, kernel), TB_OK);
    if (serial) {
        const size_t wf = tb_gemm_serial_work(&ctx, M, N, K);
        float *mem = tbt_alloc((16 + wf + GUARD_FLOATS) * sizeof(float) + 64);
        float *work = (float *)(((uintptr_t)mem + 63) & ~(uintptr_t)63) + misalign;
        guard_fill(work + wf);
        ck_assert_int_eq(tb_gemm_serial(&ctx, gc->ta, gc->tb, M, N, K, gc->alpha, A, lda, B, ldb,
                                        gc->beta, C, ldc, work, wf),
                         TB_OK);
        const size_t intact = guard_intact(work + wf);
        ck_assert_msg(intact == GUARD_FLOATS,
                      "%s serial %c%c M=%zu N=%zu K=%zu: wrote float %zu past the %zu floats "
                      "tb_gemm_serial_work() asked for",
                      tb_kernel_name(kernel), gc->ta ? 'T' : 'N', gc->tb ? 'T' : 'N', M, N, K,
                      intact + 1, wf);
        free(mem);
        /* Same kernels, same order: tb_gemm's bits (a pack that spilled
         * into its neighbour inside the scratch would change them). */
        float *R = tbt_alloc(M * ldc * sizeof(float) + 4);
        memcpy(R, C0, M * ldc * sizeof(float));
        ck_assert_int_eq(tb_gemm(&ctx, gc->ta, gc->tb, M, N, K, gc->alpha, A, lda, B, ldb,
                                 gc->beta, R, ldc),
                         TB_OK);
        for (size_t i = 0; i < M; i++)
            ck_assert_msg(memcmp(C + i * ldc, R + i * ldc, N * sizeof(float)) == 0,
                          "%s serial %c%c M=%zu N=%zu K=%zu: row %zu differs from tb_gemm",
                          tb_kernel_name(kernel), gc->ta ? 'T' : 'N', gc->tb ? 'T' : 'N', M, N, K,
                          i);
        free(R);
    } else {
        ck_assert_int_eq(tb_gemm(&ctx, gc->ta, gc->tb, M, N, K, gc->alpha, A, lda, B, ldb,
                                 gc->beta, C, ldc),
                         TB_OK);
    }
    size_t bad = 0, first_i = 0, first_j = 0;
    double worst = 0, first_got = 0, first_want = 0;
    for (size_t i = 0; i < M; i++) {
        for (size_t j = 0; j < ldc; j++) {
            float got = C[i * ldc + j];
            if (j >= N) { /* padding columns are never written */
                if (memcmp(&got, &C0[i * ldc + j], sizeof got) != 0)
                    bad++;
                continue;
            }
            double s = 0, sabs = 0;
            for (size_t k = 0; k < K; k++) {
                double a = gc->ta ? A[k * lda + i] : A[i * lda + k];
                double b = gc->tb ? B[j * ldb + k] : B[k * ldb + j];
                s += a * b;
                sabs += fabs(a * b);
            }
            double want = gc->alpha * s, bound = fabs(gc->alpha) * sabs;
            if (gc->beta != 0.0f) {
                want += (double)gc->beta * C0[i * ldc + j];
                bound += fabs((double)gc->beta * C0[i * ldc + j]);
            }
            double tol = 2.0 * ((double)K + (double)K / 256 + 4) * U * bound + 1e-30;
            double err = fabs(got - want);
            if (!(err <= tol)) {
                if (!bad)
                    first_i = i, first_j = j, first_got = got, first_want = want;
                bad++;
            }
            if (bound > 0 && err / bound > worst)
                worst = err / bound;
        }
    }
    ck_assert_msg(bad == 0,
                  "%s%s %c%c M=%zu N=%zu K=%zu pad=%zu alpha=%g beta=%g threads=%d: %zu bad, first "
                  "C[%zu][%zu] = %.9g want %.9g",
                  tb_kernel_name(kernel), serial ? " serial" : "", gc->ta ? 'T' : 'N',
                  gc->tb ? 'T' : 'N', M, N, K, gc->pad, (double)gc->alpha, (double)gc->beta, threads, bad, first_i, first_j, first_got,
                  first_want);
    free(A), free(B), free(C), free(C0);
}

static void run_case(tb_kernel kernel, const gemm_case *gc, int threads)
{
    run_case_impl(kernel, gc, threads, 0, 0);
}

START_TEST(gemm_matches_double_reference)
{
    static const size_t dims[] = {1, 3, 17, 33, 64, 100};
    size_t n_cases = 0;
    /* The family of this run (TB_KERNEL): make check runs every family. */
    const tb_kernel families[1] = {tbt_test_kernel()};
    for (size_t f = 0; f < 1; f++) {
        for (int form = 0; form < 4; form++)
            for (size_t mi = 0; mi < 6; mi++)
                for (size_t ni = 0; ni < 6; ni++)
                    for (size_t ki = 0; ki < 6; ki += (mi + ni) % 2 ? 2 : 1) {
                        gemm_case gc = {form >> 1, form & 1, dims[mi], dims[ni], dims[ki],
                                        (mi + ki) % 3, 1.0f, 0.0f};
                        if ((mi + ni + ki) % 3 == 1)
                            gc.alpha = -0.5f, gc.beta = 1.0f;
                        if ((mi + ni + ki) % 3 == 2)
                            gc.beta = 0.3f;
                        run_case(families[f], &gc, 2);
                        n_cases++;
                    }
        /* Bigger and awkward: several K blocks (K > 256), M and N blocks,
         * the vocabulary width, a deep K. */
        static const gemm_case big[] = {
            {0, 1, 300, 257, 513, 0, 1.0f, 0.0f},   {0, 0, 150, 1000, 300, 3, 1.0f, 1.0f},
            {1, 0, 77, 2100, 260, 0, 2.0f, 0.5f},   {1, 1, 290, 45, 700, 1, 1.0f, 0.0f},
            {0, 1, 2, 50257, 64, 0, 1.0f, 0.0f},    {0, 0, 5, 31, 3000, 0, 1.0f, 0.0f},
            {1, 0, 768, 20, 97, 0, 1.0f, 1.0f},
            /* Untransposed B rows more than 8192 floats apart are packed
             * rather than read in place: cover both sides of that rule. */
            {0, 0, 3, 9000, 40, 0, 1.0f, 0.0f},     {1, 0, 13, 8193, 33, 0, -1.0f, 1.0f},
            {0, 0, 9, 8192, 20, 0, 1.0f, 0.5f},
            /* Rows a multiple of 512 floats apart: packed, except for
             * M <= 8 (read in place); M = 1 uses the one-row kernel. */
            {0, 0, 1, 3072, 777, 0, 1.0f, 0.0f},    {0, 0, 8, 1024, 400, 0, 1.0f, 1.0f},
            {0, 0, 9, 1024, 400, 0, 1.0f, 0.0f},    {0, 1, 1, 2048, 385, 0, -1.0f, 0.5f},
            /* Tall enough (M >= 768) for AVX2's wider N block of 2048,
             * with a ragged last block and two K blocks. */
            {0, 1, 770, 2300, 270, 2, -1.0f, 0.5f}, {1, 0, 800, 4500, 40, 0, 1.0f, 1.0f},
        };
        for (size_t b = 0; b < sizeof big / sizeof big[0]; b++) {
            run_case(families[f], &big[b], 2);
            n_cases++;
        }
    }
    printf("  gemm: %zu cases against the double-precision reference (%s)\n", n_cases,
           tb_kernel_name(families[0]));
}
END_TEST

/* One product with the given threads; returns C (caller frees). */
static float *product(tb_kernel kernel, int threads, int ta, int tb, size_t M, size_t N, size_t K)
{
    size_t na = M * K, nb = K * N;
    float *A = tbt_alloc(na * sizeof(float)), *B = tbt_alloc(nb * sizeof(float));
    float *C = tbt_alloc(M * N * sizeof(float));
    tbt_fill_uniform(A, na, -1, 1, 1);
    tbt_fill_uniform(B, nb, -1, 1, 2);
    tbt_fill_uniform(C, M * N, -1, 1, 3);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    ck_assert_int_eq(tb_ctx_set_kernel(&ctx, kernel), TB_OK);
    ck_assert_int_eq(tb_gemm(&ctx, ta, tb, M, N, K, 0.75f, A, ta ? M : K, B, tb ? K : N, 1.0f, C,
                             N),
                     TB_OK);
    free(A), free(B);
    return C;
}

START_TEST(gemm_bitwise_identical_across_threads)
{
    /* Shapes where the split falls on different tiles for 2, 3 and 7
     * threads, splitting N (wide) and M (tall), with edge tiles. */
    static const size_t shapes[][3] = {{50, 1000, 300}, {1000, 50, 300}, {129, 131, 257},
                                       {7, 4000, 65},    {1, 3000, 700},  {2, 1500, 513},
                                       {6, 2100, 300},   {770, 2200, 40}};
    const tb_kernel families[1] = {tbt_test_kernel()};
    for (size_t f = 0; f < 1; f++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int form = 0; form < 3; form++) {
                int ta = form == 2, tb = form == 0;
                size_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                float *ref = product(families[f], 1, ta, tb, M, N, K);
                static const int threads[] = {2, 3, 7};
                for (size_t t = 0; t < 3; t++) {
                    float *c = product(families[f], threads[t], ta, tb, M, N, K);
                    ck_assert_msg(memcmp(c, ref, M * N * sizeof(float)) == 0,
                                  "%s %zux%zux%zu form %d: %d threads differ from 1",
                                  tb_kernel_name(families[f]), M, N, K, form, threads[t]);
                    free(c);
                }
                free(ref);
            }
    }
}
END_TEST

/* Row i of an M-row product equals the one-row product of row i, bitwise:
 * every kernel of a family computes an element with the same operations
 * (what lets KV-cache decoding, one row at a time, reproduce the full
 * forward pass). Every form, M across the tile heights, N and K across the
 * blocking, 1 and 2 threads. */
START_TEST(gemm_rows_equal_one_row_products)
{
    static const size_t ms[] = {2, 5, 6, 7, 8, 9, 12, 13, 64};
    static const size_t nks[][2] = {{1, 1}, {17, 300}, {65, 257}, {520, 385}, {1030, 769}};
    tb_ctx ctx;
    size_t checked = 0;
    for (int threads = 1; threads <= 2; threads++) {
        tbt_ctx_init(&ctx, threads);
        for (int form = 0; form < 4; form++)
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                const int ta = form >> 1, tb = form & 1;
                const size_t M = ms[mi], N = nks[(mi + (size_t)form) % 5][0],
                             K = nks[(mi + (size_t)form) % 5][1];
                float *A = tbt_alloc(M * K * sizeof(float)), *B = tbt_alloc(K * N * sizeof(float));
                float *C = tbt_alloc(M * N * sizeof(float)), *r = tbt_alloc(N * sizeof(float));
                float *a1 = tbt_alloc(K * sizeof(float));
                tbt_fill_uniform(A, M * K, -1, 1, 40 + mi);
                tbt_fill_uniform(B, K * N, -1, 1, 41 + mi);
                const size_t lda = ta ? M : K, ldb = tb ? K : N;
                CHECK_OK(ctx, tb_gemm(&ctx, ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 0.0f, C, N));
                for (size_t i = 0; i < M; i++) {
                    for (size_t k = 0; k < K; k++) /* row i of op(A), stored as A would be */
                        a1[k] = ta ? A[k * M + i] : A[i * K + k];
                    CHECK_OK(ctx, tb_gemm(&ctx, ta, tb, 1, N, K, 0.5f, a1, ta ? 1 : K, B, ldb,
                                          0.0f, r, N));
                    ck_assert_msg(memcmp(r, C + i * N, N * sizeof(float)) == 0,
                                  "%s form %d M=%zu N=%zu K=%zu threads=%d: row %zu differs from "
                                  "its one-row product",
                                  tb_kernel_name(tb_ctx_kernel(&ctx)), form, M, N, K, threads, i);
                    checked++;
                }
                free(A), free(B), free(C), free(r), free(a1);
            }
    }
    printf("  gemm (%s): %zu rows equal their one-row products bitwise\n",
           tb_kernel_name(tb_ctx_kernel(&ctx)), checked);
}
END_TEST

/* The transposed path (tb_gemm_narrow: few rows against a transposed B, B
 * read in place) against the tile path of tb_gemm_serial, bitwise, and
 * against the double reference: M on both sides of every multiple of the
 * family's NR up to 65 (which rows take the path is the family's rule), N
 * around the kernel's MR (a ragged last group of B's rows), K across the KC
 * blocks, op(A) both ways, alpha/beta variants, padded rows, 1-3 threads. */
START_TEST(gemm_narrow_matches_tile_path)
{
    const tb_kernel fam = tbt_test_kernel();
    tb_ctx probe;
    tbt_ctx_init(&probe, 1);
    ck_assert_int_eq(tb_ctx_set_kernel(&probe, fam), TB_OK);
    /* The families with an in-place-A kernel take it at GPT-2's M = 64. */
    ck_assert_int_eq(tb_gemm_narrow(&probe, 1, 64, 768), fam != TB_KERNEL_PORTABLE);
    ck_assert_int_eq(tb_gemm_narrow(&probe, 0, 64, 768), 0);
    ck_assert_int_eq(tb_gemm_narrow(&probe, 1, 65, 768), 0);
    static const size_t ns[] = {1, 5, 6, 7, 8, 9, 11, 12, 13, 25, 100};
    static const size_t ks[] = {1, 7, 255, 256, 257, 600};
    size_t n = 0, narrow = 0;
    for (size_t M = 1; M <= 65; M++) {
        if (!tb_gemm_narrow(&probe, 1, M, 256) && M % 16 != 1)
            continue; /* the rows the path takes, and one past each multiple of 16 */
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++, n++) {
            const size_t K = ks[(M + i) % 6];
            gemm_case gc = {(int)((M + i) % 2), 1, M, ns[i], K, (M + i) % 3 == 0 ? 2 : 0,
                            1.0f, 0.0f};
            if ((M + i) % 3 == 1)
                gc.alpha = -0.75f, gc.beta = 1.0f;
            if ((M + i) % 3 == 2)
                gc.beta = 0.3f;
            narrow += tb_gemm_narrow(&probe, 1, M, K) != 0;
            run_case_impl(fam, &gc, 1 + (int)(n % 3), 1, n % 16);
        }
    }
    if (fam != TB_KERNEL_PORTABLE)
        ck_assert_uint_ge(narrow, 80);
    printf("  gemm transposed path (%s): %zu products (%zu through it) equal the tile path "
           "bitwise\n",
           tb_kernel_name(fam), n, narrow);
}
END_TEST

/* ---- tb_gemm_serial in caller-sized scratch ------------------------------
 * The scratch bound must hold for every micro-kernel of the family: M, N
 * and K are swept over each kernel's MR and NR multiples and one either
 * side (and across the MC/NC/KC blocking), with a guard zone right after
 * the exact size tb_gemm_serial_work() returns. */

/* Sorted, duplicate-free list of values around multiples of `steps`. */
typedef struct size_list {
    size_t v[256];
    size_t n;
} size_list;

static void list_add(size_list *l, size_t x)
{
    if (x == 0)
        return;
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i] == x)
            return;
    ck_assert_uint_lt(l->n, 256);
    size_t i = l->n++;
    for (; i > 0 && l->v[i - 1] > x; i--)
        l->v[i] = l->v[i - 1];
    l->v[i] = x;
}

/* q*step - 1, q*step, q*step + 1 for every multiple up to `upto`. */
static void list_add_multiples(size_list *l, size_t step, size_t upto)
{
    for (size_t m = step; m <= upto; m += step) {
        list_add(l, m - 1);
        list_add(l, m);
        list_add(l, m + 1);
    }
}

static void serial_case(tb_kernel fam, int ta, int tb, size_t M, size_t N, size_t K, size_t i)
{
    gemm_case gc = {ta, tb, M, N, K, i % 3 == 2 ? 1 : 0, 1.0f, 0.0f};
    if (i % 3 == 1)
        gc.alpha = -0.5f, gc.beta = 1.0f;
    if (i % 3 == 2)
        gc.beta = 0.3f;
    run_case_impl(fam, &gc, 1, 1, i % 16);
}

START_TEST(gemm_serial_stays_in_its_scratch)
{
    const tb_kernel fam = tbt_test_kernel();
    const tb_ukernel *uk[TB_UKERNELS_PER_FAMILY];
    const size_t nk = tb_ukernels_of_family(fam, uk);
    size_list ms = {{0}, 0}, ns = {{0}, 0}, ks = {{0}, 0};
    list_add(&ms, 1), list_add(&ms, 2), list_add(&ns, 1), list_add(&ns, 2);
    for (size_t i = 0; i < nk; i++) {
        list_add_multiples(&ms, (size_t)uk[i]->mr, 72);   /* past one attention tile */
        list_add_multiples(&ns, (size_t)uk[i]->nr, 5 * 32);
        list_add_multiples(&ms, 192, 192);                /* the MC block */
        list_add_multiples(&ns, 512, 512);                /* the NC block */
    }
    list_add_multiples(&ks, 16, 16);
    list_add_multiples(&ks, 64, 128);
    list_add_multiples(&ks, 256, 256);                    /* the KC blocks (AVX2, others) */
    list_add_multiples(&ks, 384, 384);
    list_add(&ks, 1), list_add(&ks, 2), list_add(&ks, 769);
    size_t n = 0;
    for (int form = 0; form < 4; form++) {
        const int ta = form >> 1, tb = form & 1;
        for (size_t i = 0; i < ms.n; i++, n++) /* M, with a tile-sized and a skinny N, K */
            serial_case(fam, ta, tb, ms.v[i], i % 2 ? 64 : 17, i % 2 ? 65 : 7, n);
        /* N and K for every kernel of the family: M = MR picks that kernel
         * (the selection rule of gemm.c prefers the kernel whose tiles pad
         * M least), and one row more or fewer the others. */
        for (size_t u = 0; u < nk; u++) {
            const size_t mr = (size_t)uk[u]->mr;
            for (size_t i = 0; i < ns.n; i++, n++)
                serial_case(fam, ta, tb, i % 3 == 2 && mr > 1 ? mr - 1 : mr, ns.v[i],
                            i % 2 ? 33 : 64, n);
            for (size_t i = 0; i < ks.n; i++, n++)
                serial_case(fam, ta, tb, i % 3 == 2 ? mr + 1 : mr, i % 2 ? 49 : 64, ks.v[i], n);
        }
        for (size_t i = 0; i < ks.n; i++, n += 2) { /* tile-sized rows across K */
            serial_case(fam, ta, tb, 61, 49, ks.v[i], n);
            serial_case(fam, ta, tb, 64, 64, ks.v[i], n + 1);
        }
        /* Both sides of the row count from which AVX2 widens the N block
         * (768), and of that wider block (2048 columns). */
        static const size_t tall_m[] = {767, 768, 769}, tall_n[] = {2047, 2049};
        for (size_t i = 0; i < 3; i++)
            for (size_t j = 0; j < 2; j++, n++)
                serial_case(fam, ta, tb, tall_m[i], tall_n[j], 5, n);
    }
    printf("  gemm serial (%s, MR/NR of %zu kernel%s): %zu products, each in exactly "
           "tb_gemm_serial_work() floats + a guard zone\n",
           tb_kernel_name(fam), nk, nk == 1 ? "" : "s", n);
}
END_TEST

/* One scratch sized for the largest product covers every smaller one on
 * the family (the way attention sizes its per-thread scratch): every M up
 * to one tile past it, N and K around the tile, in a scratch of exactly
 * tb_gemm_serial_work(64, 128, 128) floats followed by a guard zone. */
START_TEST(gemm_serial_bound_covers_smaller_products)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const size_t MM = 64, NN = 128, KK = 128;
    const size_t wf = tb_gemm_serial_work(&ctx, MM, NN, KK);
    float *mem = tbt_alloc((wf + GUARD_FLOATS) * sizeof(float) + 64);
    float *work = (float *)(((uintptr_t)mem + 63) & ~(uintptr_t)63) + 1; /* worst alignment */
    guard_fill(work + wf);
    float *A = tbt_alloc(MM * KK * sizeof(float)), *B = tbt_alloc(KK * NN * sizeof(float));
    float *C = tbt_alloc(MM * NN * sizeof(float)), *R = tbt_alloc(MM * NN * sizeof(float));
    tbt_fill_uniform(A, MM * KK, -1, 1, 5);
    tbt_fill_uniform(B, KK * NN, -1, 1, 6);
    static const size_t nks[] = {1, 17, 63, 64, 65, 128};
    enum { NNK = sizeof nks / sizeof nks[0] };
    size_t count = 0;
    for (size_t M = 1; M <= MM; M++)
        for (size_t t = 0; t < NNK * NNK; t++)
            for (int form = 0; form < 4; form++) {
                const size_t N = nks[t % NNK], K = nks[t / NNK];
                const int ta = form >> 1, tb = form & 1;
                ck_assert_int_eq(tb_gemm_serial(&ctx, ta, tb, M, N, K, 1.0f, A, ta ? M : K, B,
                                                tb ? K : N, 0.0f, C, N, work, wf),
                                 TB_OK);
                count++;
                /* Same kernels, same order: the bits of tb_gemm's product
                 * (a pack overwritten by a neighbour would change them). */
                CHECK_OK(ctx, tb_gemm(&ctx, ta, tb, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N,
                                      0.0f, R, N));
                ck_assert_msg(memcmp(C, R, M * N * sizeof(float)) == 0,
                              "%s: M=%zu N=%zu K=%zu form %d: serial product differs from tb_gemm",
                              tb_kernel_name(tb_ctx_kernel(&ctx)), M, N, K, form);
                ck_assert_msg(guard_intact(work + wf) == GUARD_FLOATS,
                              "%s: M=%zu N=%zu K=%zu form %d wrote past the scratch sized for "
                              "%zux%zux%zu",
                              tb_kernel_name(tb_ctx_kernel(&ctx)), M, N, K, form, MM, NN, KK);
            }
    printf("  gemm serial (%s): %zu products up to %zux%zux%zu in one scratch of %zu floats\n",
           tb_kernel_name(tb_ctx_kernel(&ctx)), count, MM, NN, KK, wf);
    free(A), free(B), free(C), free(R), free(mem);
}
END_TEST

/* A scratch one float short is refused with C untouched (in every build:
 * the check costs a few comparisons per product). */
START_TEST(gemm_serial_refuses_short_scratch)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    enum { M = 61, N = 50, K = 40 };
    const size_t wf = tb_gemm_serial_work(&ctx, M, N, K);
    float *mem = tbt_alloc(wf * sizeof(float) + 64);
    float *work = (float *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    float *A = tbt_alloc(M * K * sizeof(float)), *B = tbt_alloc(K * N * sizeof(float));
    float *C = tbt_alloc(M * N * sizeof(float)), *C0 = tbt_alloc(M * N * sizeof(float));
    tbt_fill_uniform(A, M * K, -1, 1, 1);
    tbt_fill_uniform(B, K * N, -1, 1, 2);
    tbt_fill_uniform(C0, M * N, -1, 1, 3);
    memcpy(C, C0, M * N * sizeof(float));
    /* 64-byte aligned work needs no alignment slack. Walk down from the
     * bound to the first size refused (the exact need of the kernel this
     * product runs on, at most the bound minus the slack). */
    size_t w = wf;
    tb_status st;
    while ((st = tb_gemm_serial(&ctx, 0, 1, M, N, K, 1.0f, A, K, B, K, 0.5f, C, N, work, w)) ==
           TB_OK) {
        ck_assert_uint_gt(w, 0);
        memcpy(C, C0, M * N * sizeof(float));
        w--;
    }
    ck_assert_int_eq(st, TB_ERR_BUFFER_TOO_SMALL);
    ck_assert(memcmp(C, C0, M * N * sizeof(float)) == 0);
    ck_assert_uint_lt(w, wf - 15);
    printf("  gemm serial (%s): %zu floats refused, %zu accepted (bound %zu)\n",
           tb_kernel_name(tb_ctx_kernel(&ctx)), w, w + 1, wf);
    free(mem), free(A), free(B), free(C), free(C0);
}
END_TEST

static void *failing_alloc(void *user, size_t size, size_t alignment)
{
    (void)user, (void)size, (void)alignment;
    return NULL;
}

START_TEST(gemm_reports_allocation_failure_and_leaves_c)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    ctx.allocator.alloc = failing_alloc;
    float A[12], B[12], C[9], C0[9];
    tbt_fill_uniform(A, 12, -1, 1, 1);
    tbt_fill_uniform(B, 12, -1, 1, 2);
    tbt_fill_uniform(C0, 9, -1, 1, 3);
    memcpy(C, C0, sizeof C);
    ck_assert_int_eq(tb_gemm(&ctx, 0, 0, 3, 3, 4, 1.0f, A, 4, B, 3, 0.5f, C, 3), TB_ERR_NO_MEMORY);
    ck_assert(memcmp(C, C0, sizeof C) == 0);
    /* The transposed path (64 rows against a transposed B) too, with the
     * family's kernels. */
    ck_assert_int_eq(tb_ctx_set_kernel(&ctx, tbt_test_kernel()), TB_OK);
    float *A64 = tbt_alloc(64 * 20 * sizeof(float)), *B64 = tbt_alloc(30 * 20 * sizeof(float));
    float *C64 = tbt_alloc(64 * 30 * sizeof(float)), *R64 = tbt_alloc(64 * 30 * sizeof(float));
    tbt_fill_uniform(A64, 64 * 20, -1, 1, 4);
    tbt_fill_uniform(B64, 30 * 20, -1, 1, 5);
    tbt_fill_uniform(R64, 64 * 30, -1, 1, 6);
    memcpy(C64, R64, 64 * 30 * sizeof(float));
    ck_assert_int_eq(tb_gemm(&ctx, 0, 1, 64, 30, 20, 1.0f, A64, 20, B64, 20, 0.5f, C64, 30),
                     TB_ERR_NO_MEMORY);
    ck_assert(memcmp(C64, R64, 64 * 30 * sizeof(float)) == 0);
    free(A64), free(B64), free(C64), free(R64);
    /* And through a block: the linear layer reports it too. */
    tb_ctx ok;
    tbt_ctx_init(&ok, 1);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tb_linear lin;
    ck_assert_int_eq(tb_linear_init(&ok, &lin, 4, 3, 1, &rng), TB_OK);
    tb_tensor x = tb_tensor_2d(A, 3, 4), y = tb_tensor_2d(C, 3, 3);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &y), TB_ERR_NO_MEMORY);
    tb_linear_free(&lin);
}
END_TEST

/* The portable kernel's plain-loop variant (gemm_portable_plain.c). */
extern const tb_ukernel tbt_ukernel_portable_plain;

/* The two builds of the portable micro-kernel (vector extensions and plain
 * loops) give the same bits on every tile: K depths around and past the
 * unrolling, a packed and an in-place B, both update forms, alpha 1 and
 * not; and both are right (against a double sum, to the K-scaled bound). */
START_TEST(portable_kernel_builds_agree)
{
    const tb_ukernel *vec = &tb_ukernel_portable, *plain = &tbt_ukernel_portable_plain;
    ck_assert_int_eq(vec->mr, plain->mr);
    ck_assert_int_eq(vec->nr, plain->nr);
    const size_t mr = (size_t)vec->mr, nr = (size_t)vec->nr, ldc = nr + 3;
    const size_t depths[] = {1, 2, 3, 17, 64, 301};
    for (size_t di = 0; di < sizeof depths / sizeof depths[0]; di++)
        for (int inplace = 0; inplace < 2; inplace++)
            for (int add = 0; add < 2; add++) {
                const size_t kc = depths[di], ldb = inplace ? nr + 5 : nr;
                const float alpha = add ? -0.37f : 1.0f;
                float *a = tbt_alloc(kc * mr * sizeof *a), *b = tbt_alloc(kc * ldb * sizeof *b);
                float *c0 = tbt_alloc(mr * ldc * sizeof *c0), *c1 = tbt_alloc(mr * ldc * sizeof *c1);
                const uint64_t seed = 1000 * di + 10 * (uint64_t)inplace + (uint64_t)add;
                tbt_fill_uniform(a, kc * mr, -1.0f, 1.0f, seed);
                tbt_fill_uniform(b, kc * ldb, -1.0f, 1.0f, seed + 7);
                tbt_fill_uniform(c0, mr * ldc, -1.0f, 1.0f, seed + 9);
                memcpy(c1, c0, mr * ldc * sizeof *c0);
                float *before = tbt_alloc(mr * ldc * sizeof *before);
                memcpy(before, c0, mr * ldc * sizeof *c0);
                vec->fn(kc, a, b, ldb, c0, ldc, alpha, add);
                plain->fn(kc, a, b, ldb, c1, ldc, alpha, add);
                ck_assert_msg(memcmp(c0, c1, mr * ldc * sizeof *c0) == 0,
                              "portable builds differ (kc %zu, ldb %zu, add %d)", kc, ldb, add);
                for (size_t r = 0; r < mr; r++)
                    for (size_t j = 0; j < ldc; j++) {
                        double want = before[r * ldc + j], bound = 0.0;
                        if (j < nr) {
                            double sum = 0.0, mag = 0.0;
                            for (size_t k = 0; k < kc; k++) {
                                sum += (double)a[k * mr + r] * b[k * ldb + j];
                                mag += fabs((double)a[k * mr + r] * b[k * ldb + j]);
                            }
                            want = alpha * sum + (add ? want : 0.0);
                            bound = 2.0 * ((double)kc + 4.0) * U * (fabs(alpha) * mag + fabs(want));
                        }
                        ck_assert_msg(fabs(c0[r * ldc + j] - want) <= bound,
                                      "kc %zu row %zu col %zu: %.9g, want %.9g", kc, r, j,
                                      (double)c0[r * ldc + j], want);
                    }
                free(a), free(b), free(c0), free(c1), free(before);
            }
}
END_TEST

START_TEST(kernel_selection)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    tb_kernel env;
    ck_assert_int_eq(tb_kernel_from_env(NULL, &env), TB_OK);
    ck_assert_int_eq(ctx.kernel, env); /* tb_ctx_init() takes TB_KERNEL */
    ck_assert(tb_kernel_supported(TB_KERNEL_PORTABLE));
    ck_assert(tb_kernel_supported(TB_KERNEL_AUTO));
    ck_assert(!tb_kernel_supported((tb_kernel)42));
    ck_assert(tb_kernel_supported(tb_kernel_best()));
    ck_assert_int_eq(tb_ctx_set_kernel(&ctx, (tb_kernel)42), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_ctx_set_kernel(NULL, TB_KERNEL_AUTO), TB_ERR_NULL_ARG);
    static const tb_kernel families[] = {TB_KERNEL_PORTABLE, TB_KERNEL_AVX2, TB_KERNEL_AVX512};
    for (size_t f = 0; f < 3; f++) {
        tb_status s = tb_ctx_set_kernel(&ctx, families[f]);
        ck_assert_int_eq(s, tb_kernel_supported(families[f]) ? TB_OK : TB_ERR_UNSUPPORTED);
        ck_assert_int_eq(tb_ctx_kernel(&ctx), s == TB_OK ? families[f] : tb_kernel_best());
    }
    ck_assert_str_eq(tb_kernel_name(TB_KERNEL_AVX512), "avx512");
    ck_assert_str_eq(tb_kernel_name((tb_kernel)42), "unknown");
    printf("  kernels: best on this CPU is %s\n", tb_kernel_name(tb_kernel_best()));
}
END_TEST

/* TB_KERNEL, the one switch: parsed exactly, applied by tb_ctx_init(),
 * unknown or unsupported values reported (and ignored by tb_ctx_init()). */
START_TEST(kernel_from_environment)
{
    const char *saved = getenv("TB_KERNEL");
    char *keep = saved ? strdup(saved) : NULL;
    tb_ctx ctx;
    tb_kernel k;
    ck_assert_int_eq(tb_kernel_from_env(NULL, NULL), TB_ERR_NULL_ARG);
    static const struct {
        const char *value;
        tb_status status;
        tb_kernel kernel;
    } cases[] = {{"", TB_OK, TB_KERNEL_AUTO},           {"auto", TB_OK, TB_KERNEL_AUTO},
                 {"portable", TB_OK, TB_KERNEL_PORTABLE}, {"avx2", TB_OK, TB_KERNEL_AVX2},
                 {"avx512", TB_OK, TB_KERNEL_AVX512},     {"AVX2", TB_ERR_INVALID_ARG, 0},
                 {"avx2 ", TB_ERR_INVALID_ARG, 0},         {"avx", TB_ERR_INVALID_ARG, 0},
                 {"3", TB_ERR_INVALID_ARG, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ck_assert_int_eq(setenv("TB_KERNEL", cases[i].value, 1), 0);
        tb_status want = cases[i].status;
        if (want == TB_OK && !tb_kernel_supported(cases[i].kernel))
            want = TB_ERR_UNSUPPORTED;
        tb_ctx_init(&ctx);
        const tb_status got = tb_kernel_from_env(&ctx, &k);
        ck_assert_msg(got == want, "TB_KERNEL='%s': %s, expected %s", cases[i].value,
                      tb_strerror(got), tb_strerror(want));
        ck_assert_int_eq(k, cases[i].kernel); /* the named family, even if unsupported */
        if (got != TB_OK)
            ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "TB_KERNEL"));
        /* tb_ctx_init() applies a usable value, else auto. */
        ck_assert_int_eq(ctx.kernel, got == TB_OK ? cases[i].kernel : TB_KERNEL_AUTO);
        ck_assert_int_eq(tb_ctx_kernel(&ctx),
                         got == TB_OK && cases[i].kernel != TB_KERNEL_AUTO ? cases[i].kernel
                                                                           : tb_kernel_best());
    }
    ck_assert_int_eq(unsetenv("TB_KERNEL"), 0);
    ck_assert_int_eq(tb_kernel_from_env(NULL, &k), TB_OK);
    ck_assert_int_eq(k, TB_KERNEL_AUTO);
    ck_assert_int_eq(tb_ctx_kernel(NULL), tb_kernel_best());
    if (keep)
        setenv("TB_KERNEL", keep, 1);
    free(keep);
}
END_TEST

Suite *suite_gemm(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("gemm");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, kernel_selection);
    tcase_add_test(tc, portable_kernel_builds_agree);
    tcase_add_test(tc, kernel_from_environment);
    tcase_add_test(tc, gemm_matches_double_reference);
    tcase_add_test(tc, gemm_bitwise_identical_across_threads);
    tcase_add_test(tc, gemm_reports_allocation_failure_and_leaves_c);
    tcase_add_test(tc, gemm_rows_equal_one_row_products);
    tcase_add_test(tc, gemm_serial_stays_in_its_scratch);
    tcase_add_test(tc, gemm_narrow_matches_tile_path);
    tcase_add_test(tc, gemm_serial_bound_covers_smaller_products);
    tcase_add_test(tc, gemm_serial_refuses_short_scratch);
    suite_add_tcase(s, tc);
    return s;
}
