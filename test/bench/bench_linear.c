/*
 * Linear-layer benchmark (a first, small benchmark; the GEMM engine issue
 * extends this into the full suite). Prints, per case, the median of several
 * timed repetitions after a warm-up, the spread (min..max), and GFLOP/s as a
 * fraction of this machine's fp32 FMA peak measured in the same run by a
 * register-only FMA loop. One TSV line per case ("tsv\t...") for machines,
 * plus a readable table.
 */
#define _POSIX_C_SOURCE 200809L
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tblocks.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Register-only FMA loop: 12 independent vector accumulators (enough to
 * cover FMA latency on two ports); returns GFLOP/s for `threads`. Uses
 * AVX-512 or AVX2 intrinsics when the compiler targets them. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VLEN 16
typedef __m512 vec;
#define VSET1 _mm512_set1_ps
#define VFMA _mm512_fmadd_ps
#define VADD _mm512_add_ps
static float vsum(vec v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VLEN 8
typedef __m256 vec;
#define VSET1 _mm256_set1_ps
#define VFMA _mm256_fmadd_ps
#define VADD _mm256_add_ps
static float vsum(vec v)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

static double fma_peak(int threads)
{
#ifdef VLEN
    const long iters = 40000000;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            vec acc[12];
            for (int i = 0; i < 12; i++)
                acc[i] = VSET1((float)i * 1e-3f);
            const vec m = VSET1(0.999999f), a = VSET1(1e-7f);
            for (long it = 0; it < iters; it++) {
                acc[0] = VFMA(acc[0], m, a);
                acc[1] = VFMA(acc[1], m, a);
                acc[2] = VFMA(acc[2], m, a);
                acc[3] = VFMA(acc[3], m, a);
                acc[4] = VFMA(acc[4], m, a);
                acc[5] = VFMA(acc[5], m, a);
                acc[6] = VFMA(acc[6], m, a);
                acc[7] = VFMA(acc[7], m, a);
                acc[8] = VFMA(acc[8], m, a);
                acc[9] = VFMA(acc[9], m, a);
                acc[10] = VFMA(acc[10], m, a);
                acc[11] = VFMA(acc[11], m, a);
            }
            vec t = acc[0];
            for (int i = 1; i < 12; i++)
                t = VADD(t, acc[i]);
            sink += vsum(t);
        }
        double dt = now() - t0;
        double flops = 2.0 * VLEN * 12.0 * (double)iters * threads;
        if (sink == 12345.0f)
            printf(" ");
        if (flops / dt > best)
            best = flops / dt;
    }
    return best * 1e-9;
#else
    (void)threads;
    return 0.0; /* no vector FMA target: ratios are not reported */
#endif
}

typedef struct bench_case {
    size_t n, in, out;
} bench_case;

int main(void)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    int threads = ctx.num_threads;
    double peak = fma_peak(threads);
    printf("machine: %d threads, measured fp32 FMA peak %.1f GFLOP/s\n", threads, peak);
    if (peak <= 0)
        peak = 1e300; /* fractions print as 0 when the peak could not be measured */
    printf("tsv\tcase\tthreads\tmedian_ms\tmin_ms\tmax_ms\tgflops\tfrac_of_peak\n");
    static const bench_case cases[] = {{64, 768, 768}, {256, 768, 2304}, {256, 768, 3072},
                                       {256, 3072, 768}, {1024, 768, 768}};
    tb_rng rng;
    tb_rng_init(&rng, 1);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c].n, in = cases[c].in, out = cases[c].out;
        tb_linear lin;
        if (tb_linear_init(&ctx, &lin, in, out, 1, &rng) != TB_OK) {
            fprintf(stderr, "init failed: %s\n", tb_ctx_error(&ctx));
            return 1;
        }
        float *x = malloc(n * in * sizeof(float)), *y = malloc(n * out * sizeof(float));
        float *dx = malloc(n * in * sizeof(float));
        if (!x || !y || !dx)
            return 1;
        tb_rng_fill_uniform(&ctx, &rng, x, n * in, -1, 1);
        tb_tensor xt = tb_tensor_2d(x, n, in), yt = tb_tensor_2d(y, n, out),
                  dxt = tb_tensor_2d(dx, n, in);
        const char *what[2] = {"fwd", "bwd"};
        for (int pass = 0; pass < 2; pass++) {
            enum { REPS = 7 };
            double t[REPS];
            for (int r = -1; r < REPS; r++) { /* r = -1: warm-up */
                double t0 = now();
                tb_status s = pass == 0 ? tb_linear_forward(&ctx, &lin, &xt, &yt)
                                        : tb_linear_backward(&ctx, &lin, &xt, &yt, &dxt);
                if (s != TB_OK) {
                    fprintf(stderr, "%s\n", tb_ctx_error(&ctx));
                    return 1;
                }
                if (r >= 0)
                    t[r] = now() - t0;
            }
            qsort(t, REPS, sizeof t[0], cmp_double);
            double flops = 2.0 * (double)n * in * out * (pass == 0 ? 1 : 2);
            double gf = flops / t[REPS / 2] * 1e-9;
            char name[64];
            snprintf(name, sizeof name, "linear_%s_%zux%zux%zu", what[pass], n, in, out);
            printf("tsv\t%s\t%d\t%.3f\t%.3f\t%.3f\t%.2f\t%.3f\n", name, threads,
                   t[REPS / 2] * 1e3, t[0] * 1e3, t[REPS - 1] * 1e3, gf, gf / peak);
            printf("  %-32s %9.2f ms (%.2f..%.2f)  %7.2f GFLOP/s  %5.1f%% of measured peak\n", name,
                   t[REPS / 2] * 1e3, t[0] * 1e3, t[REPS - 1] * 1e3, gf, 100 * gf / peak);
        }
        free(x), free(y), free(dx);
        tb_linear_free(&lin);
    }
    return 0;
}
