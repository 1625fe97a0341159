/* The shared benchmark harness (see harness.h). Not a program of its own. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double bench_env_double(const char *name, double def)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return def;
    char *end;
    double v = strtod(s, &end);
    return end == s ? def : v;
}

int bench_quick(void)
{
    const char *s = getenv("BENCH_QUICK");
    return s && *s && strcmp(s, "0") != 0;
}

int bench_selected(const char *name)
{
    const char *f = getenv("BENCH_FILTER");
    if (!f || !*f)
        return 1;
    /* Comma-separated substrings; a case is kept if it contains any. */
    while (*f) {
        const char *comma = strchr(f, ',');
        size_t len = comma ? (size_t)(comma - f) : strlen(f);
        if (len > 0) {
            for (const char *p = name; *p; p++)
                if (strncmp(p, f, len) == 0)
                    return 1;
        }
        if (!comma)
            break;
        f = comma + 1;
    }
    return 0;
}

void bench_tsv(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tsv\t", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
}

void *bench_alloc(size_t bytes)
{
    size_t size = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, size ? size : 64);
    if (!p) {
        fprintf(stderr, "bench: out of memory allocating %zu bytes\n", bytes);
        exit(2);
    }
    return p;
}

double bench_pct(double value, double ref)
{
    return ref > 0 ? 100.0 * value / ref : 0.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_spread(const bench_stats *s)
{
    return s->median > 0 ? (s->max - s->min) / s->median : 0.0;
}

bench_stats bench_time(void (*fn)(void *arg), void *arg)
{
    int quick = bench_quick();
    double min_time = bench_env_double("BENCH_MIN_TIME", quick ? 0.1 : 0.3);
    int min_reps = (int)bench_env_double("BENCH_MIN_REPS", 3);
    int max_reps = (int)bench_env_double("BENCH_MAX_REPS", 100);
    int warmup = (int)bench_env_double("BENCH_WARMUP", 1);
    if (min_reps < 1)
        min_reps = 1;
    if (max_reps < min_reps)
        max_reps = min_reps;

    for (int i = 0; i < warmup; i++)
        fn(arg);
    double *t = malloc((size_t)max_reps * sizeof *t);
    if (!t) {
        fprintf(stderr, "bench: out of memory\n");
        exit(2);
    }
    int n = 0;
    double total = 0;
    while (n < max_reps && (n < min_reps || total < min_time)) {
        double t0 = bench_now();
        fn(arg);
        t[n] = bench_now() - t0;
        total += t[n++];
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    bench_stats s;
    s.reps = n;
    s.min = t[0];
    s.max = t[n - 1];
    s.median = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return s;
}

/* Register-only FMA loop: 12 independent vector accumulators (enough to
 * cover FMA latency on two ports). AVX-512 or AVX2 intrinsics when the
 * compiler targets them (the Makefile builds benchmarks with -march=native). */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VLEN 16
typedef __m512 vec;
#define VSET1 _mm512_set1_ps
#define VFMA _mm512_fmadd_ps
#define VADD _mm512_add_ps
static float vsum(vec v)
{
    return _mm512_reduce_add_ps(v);
}
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

double bench_fma_peak(int threads)
{
#ifdef VLEN
    const long iters = 40000000;
    double best = 0;
    if (threads < 1)
        threads = 1;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = bench_now();
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
        double dt = bench_now() - t0;
        double flops = 2.0 * VLEN * 12.0 * (double)iters * threads;
        if (sink == 12345.0f) /* keeps the loop alive */
            printf(" ");
        if (flops / dt > best)
            best = flops / dt;
    }
    return best * 1e-9;
#else
    (void)threads;
    return 0.0;
#endif
}

double bench_triad(int threads, size_t n)
{
    if (threads < 1)
        threads = 1;
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float *a = aligned_alloc(64, bytes), *b = aligned_alloc(64, bytes),
          *c = aligned_alloc(64, bytes);
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return 0.0;
    }
    const long len = (long)n;
    /* First touch with the same static schedule as the timed loop. */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < len; i++) {
        a[i] = 0.0f;
        b[i] = 1.0f;
        c[i] = 2.0f;
    }
    const float s = 3.0f;
    double best = 0, spent = 0;
    for (int pass = 0; pass < 30; pass++) {
        double t0 = bench_now();
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long i = 0; i < len; i++)
            a[i] = b[i] + s * c[i];
        double dt = bench_now() - t0;
        spent += dt;
        double gbs = 3.0 * sizeof(float) * (double)n / dt * 1e-9;
        if (gbs > best)
            best = gbs;
        if (pass >= 4 && spent > 1.5)
            break;
    }
    if (a[len / 2] != 7.0f) /* the result is used, and checked */
        fprintf(stderr, "bench: triad result wrong (%g)\n", (double)a[len / 2]);
    free(a), free(b), free(c);
    return best;
}

void bench_machine_measure(bench_machine *m, int threads)
{
    if (threads < 1)
        threads = 1;
    m->threads = threads;
    double t0 = bench_now();
    m->peak1 = bench_fma_peak(1);
    m->peak = threads > 1 ? bench_fma_peak(threads) : m->peak1;
    double mfloats = bench_env_double("BENCH_TRIAD_MFLOATS", 64);
    if (mfloats < 1)
        mfloats = 1;
    size_t n = (size_t)(mfloats * 1024 * 1024);
    m->triad = 0;
    while (n >= ((size_t)1 << 20) && (m->triad = bench_triad(threads, n)) == 0)
        n /= 2; /* allocation failed: try smaller arrays */
    m->triad_n = n;
    double dt = bench_now() - t0;
    printf("machine: %d thread%s; measured fp32 FMA peak %.1f GFLOP/s on 1 thread, "
           "%.1f GFLOP/s on %d (x%.2f)\n",
           threads, threads == 1 ? "" : "s", m->peak1, m->peak, threads,
           m->peak1 > 0 ? m->peak / m->peak1 : 0.0);
    printf("machine: triad bandwidth %.1f GB/s (%d threads, 3 arrays x %zu MiB, best pass; "
           "ceilings measured in %.1f s)\n",
           m->triad, threads, n * sizeof(float) >> 20, dt);
    if (m->peak <= 0)
        printf("machine: no vector FMA target: fractions of peak are not reported\n");
    bench_tsv("#machine\tthreads\tpeak1_gflops\tpeak_gflops\ttriad_gbs\ttriad_mib_per_array");
    bench_tsv("machine\t%d\t%.2f\t%.2f\t%.2f\t%zu", threads, m->peak1, m->peak, m->triad,
              n * sizeof(float) >> 20);
    fflush(stdout);
}
