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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm.h"
#include "suites.h"
#include "testutil.h"

typedef struct gemm_case {
    int ta, tb;
    size_t M, N, K, pad; /* pad: extra elements per row of A, B and C */
    float alpha, beta;
} gemm_case;

static const float U = 5.9604645e-8f; /* 2^-24 */

static void run_case(tb_kernel kernel, const gemm_case *gc, int threads)
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
    ck_assert_int_eq(tb_gemm(&ctx, gc->ta, gc->tb, M, N, K, gc->alpha, A, lda, B, ldb, gc->beta,
                             C, ldc),
                     TB_OK);
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
                  "%s %c%c M=%zu N=%zu K=%zu pad=%zu alpha=%g beta=%g threads=%d: %zu bad, first "
                  "C[%zu][%zu] = %.9g want %.9g",
                  tb_kernel_name(kernel), gc->ta ? 'T' : 'N', gc->tb ? 'T' : 'N', M, N, K, gc->pad,
                  (double)gc->alpha, (double)gc->beta, threads, bad, first_i, first_j, first_got,
                  first_want);
    free(A), free(B), free(C), free(C0);
}

static const tb_kernel families[] = {TB_KERNEL_PORTABLE, TB_KERNEL_AVX2, TB_KERNEL_AVX512};

START_TEST(gemm_matches_double_reference)
{
    static const size_t dims[] = {1, 3, 17, 33, 64, 100};
    size_t n_cases = 0;
    for (size_t f = 0; f < 3; f++) {
        if (!tb_kernel_supported(families[f])) {
            printf("  gemm: %s kernels not supported on this CPU: not tested here\n",
                   tb_kernel_name(families[f]));
            continue;
        }
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
        };
        for (size_t b = 0; b < sizeof big / sizeof big[0]; b++) {
            run_case(families[f], &big[b], 2);
            n_cases++;
        }
    }
    printf("  gemm: %zu cases against the double-precision reference\n", n_cases);
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
                                       {7, 4000, 65}};
    for (size_t f = 0; f < 3; f++) {
        if (!tb_kernel_supported(families[f]))
            continue;
        for (size_t s = 0; s < 4; s++)
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

START_TEST(kernel_selection)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ck_assert_int_eq(ctx.kernel, TB_KERNEL_AUTO);
    ck_assert(tb_kernel_supported(TB_KERNEL_PORTABLE));
    ck_assert(tb_kernel_supported(TB_KERNEL_AUTO));
    ck_assert(!tb_kernel_supported((tb_kernel)42));
    ck_assert(tb_kernel_supported(tb_kernel_best()));
    ck_assert_int_eq(tb_ctx_set_kernel(&ctx, (tb_kernel)42), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_ctx_set_kernel(NULL, TB_KERNEL_AUTO), TB_ERR_NULL_ARG);
    for (size_t f = 0; f < 3; f++) {
        tb_status s = tb_ctx_set_kernel(&ctx, families[f]);
        ck_assert_int_eq(s, tb_kernel_supported(families[f]) ? TB_OK : TB_ERR_UNSUPPORTED);
    }
    ck_assert_str_eq(tb_kernel_name(TB_KERNEL_AVX512), "avx512");
    ck_assert_str_eq(tb_kernel_name((tb_kernel)42), "unknown");
    printf("  kernels: best on this CPU is %s\n", tb_kernel_name(tb_kernel_best()));
}
END_TEST

Suite *suite_gemm(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("gemm");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, kernel_selection);
    tcase_add_test(tc, gemm_matches_double_reference);
    tcase_add_test(tc, gemm_bitwise_identical_across_threads);
    tcase_add_test(tc, gemm_reports_allocation_failure_and_leaves_c);
    suite_add_tcase(s, tc);
    return s;
}
