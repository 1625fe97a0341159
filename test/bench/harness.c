/* The shared benchmark harness (see harness.h). Not a program of its own. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include "tblocks.h"

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

void bench_sort(double *v, size_t n)
{
    qsort(v, n, sizeof v[0], cmp_double);
}

double bench_spread(const bench_stats *s)
{
    return s->median > 0 ? (s->max - s->min) / s->median : 0.0;
}

/* The statistics of n sorted-in-place times. */
static bench_stats stats_of(double *t, int n)
{
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    bench_stats s;
    s.reps = n;
    s.min = t[0];
    s.max = t[n - 1];
    s.median = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    return s;
}

/* The BENCH_* repetition settings of bench_time. */
typedef struct rep_plan {
    double min_time;
    int min_reps, max_reps, warmup;
} rep_plan;

static rep_plan rep_plan_get(void)
{
    rep_plan p;
    p.min_time = bench_env_double("BENCH_MIN_TIME", bench_quick() ? 0.1 : 0.3);
    p.min_reps = (int)bench_env_double("BENCH_MIN_REPS", 3);
    p.max_reps = (int)bench_env_double("BENCH_MAX_REPS", 1000);
    p.warmup = (int)bench_env_double("BENCH_WARMUP", 1);
    if (p.min_reps < 1)
        p.min_reps = 1;
    if (p.max_reps < p.min_reps)
        p.max_reps = p.min_reps;
    return p;
}

static double *times_alloc(int n)
{
    double *t = malloc((size_t)n * sizeof *t);
    if (!t) {
        fprintf(stderr, "bench: out of memory\n");
        exit(2);
    }
    return t;
}

bench_stats bench_time(void (*fn)(void *arg), void *arg)
{
    const rep_plan p = rep_plan_get();
    for (int i = 0; i < p.warmup; i++)
        fn(arg);
    double *t = times_alloc(p.max_reps);
    int n = 0;
    double total = 0;
    while (n < p.max_reps && (n < p.min_reps || total < p.min_time)) {
        double t0 = bench_now();
        fn(arg);
        t[n] = bench_now() - t0;
        total += t[n++];
    }
    bench_stats s = stats_of(t, n);
    free(t);
    return s;
}

void bench_time_pair(void (*fa)(void *arg), void *a, void (*fb)(void *arg), void *b,
                     bench_stats *sa, bench_stats *sb)
{
    const rep_plan p = rep_plan_get();
    for (int i = 0; i < p.warmup; i++) {
        fa(a);
        fb(b);
    }
    double *ta = times_alloc(p.max_reps), *tb = times_alloc(p.max_reps);
    int n = 0;
    double total_a = 0, total_b = 0;
    while (n < p.max_reps && (n < p.min_reps || total_a < p.min_time || total_b < p.min_time)) {
        double t0 = bench_now();
        fa(a);
        double t1 = bench_now();
        fb(b);
        ta[n] = t1 - t0;
        tb[n] = bench_now() - t1;
        total_a += ta[n];
        total_b += tb[n++];
    }
    *sa = stats_of(ta, n);
    *sb = stats_of(tb, n);
    free(ta);
    free(tb);
}

/* Register-only multiply-add loops, one per instruction set a kernel family
 * uses: 12 independent vector accumulators (enough to cover FMA latency on
 * two ports). Each is compiled for its own target (function attributes),
 * whatever -march the harness is built with, and only called when the CPU
 * runs that family. The portable kernels are built for baseline x86-64:
 * their ceiling is SSE2's separate multiply and add. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PEAK_ITERS 40000000L
#define PEAK_BODY(vec, set1, madd, add, vlen, store)                                        \
    {                                                                                       \
        vec acc[12];                                                                        \
        for (int i = 0; i < 12; i++)                                                        \
            acc[i] = set1((float)i * 1e-3f);                                                \
        const vec m = set1(0.999999f), a = set1(1e-7f);                                     \
        for (long it = 0; it < PEAK_ITERS; it++)                                            \
            for (int i = 0; i < 12; i++)                                                    \
                acc[i] = madd(acc[i], m, a);                                                \
        vec t = acc[0];                                                                     \
        for (int i = 1; i < 12; i++)                                                        \
            t = add(t, acc[i]);                                                             \
        float lanes[16];                                                                    \
        store(lanes, t);                                                                    \
        float sum = 0;                                                                      \
        for (int i = 0; i < (vlen); i++)                                                    \
            sum += lanes[i];                                                                \
        return sum;                                                                         \
    }

__attribute__((target("avx512f"))) static float peak_loop_avx512(void)
PEAK_BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, 16, _mm512_storeu_ps)

__attribute__((target("avx2,fma"))) static float peak_loop_avx2(void)
PEAK_BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, 8, _mm256_storeu_ps)

static __m128 sse_madd(__m128 x, __m128 m, __m128 a)
{
    return _mm_add_ps(_mm_mul_ps(x, m), a);
}
static float peak_loop_sse2(void)
PEAK_BODY(__m128, _mm_set1_ps, sse_madd, _mm_add_ps, 4, _mm_storeu_ps)

#define HAVE_PEAK_LOOPS 1
#endif

/* The vector multiply-add a family's kernels run: loop, floats per vector. */
static int peak_loop_of(int family, float (**loop)(void), int *vlen, const char **isa)
{
#ifdef HAVE_PEAK_LOOPS
    switch (family) {
    case TB_KERNEL_AVX512:
        *loop = peak_loop_avx512, *vlen = 16, *isa = "AVX-512 FMA (zmm)";
        return 1;
    case TB_KERNEL_AVX2:
        *loop = peak_loop_avx2, *vlen = 8, *isa = "AVX2 FMA (ymm)";
        return 1;
    default:
        *loop = peak_loop_sse2, *vlen = 4, *isa = "SSE2 mul+add (xmm)";
        return 1;
    }
#else
    (void)family, (void)loop, (void)vlen;
    *isa = "none";
    return 0;
#endif
}

double bench_fma_peak(int family, int threads)
{
    float (*loop)(void);
    int vlen;
    const char *isa;
    if (!peak_loop_of(family, &loop, &vlen, &isa))
        return 0.0;
    double best = 0;
    if (threads < 1)
        threads = 1;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = bench_now();
        float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += loop();
        double dt = bench_now() - t0;
        double flops = 2.0 * vlen * 12.0 * (double)PEAK_ITERS * threads;
        if (sink == 12345.0f) /* keeps the loop alive */
            printf(" ");
        if (flops / dt > best)
            best = flops / dt;
    }
    return best * 1e-9;
}

void bench_cpu_model(char *buf, size_t size)
{
    snprintf(buf, size, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        const char *v = strchr(line, ':');
        if (!v)
            break;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        snprintf(buf, size, "%s", v);
        buf[strcspn(buf, "\n")] = '\0';
        break;
    }
    fclose(f);
}

void bench_ctx_init(tb_ctx *ctx)
{
    tb_ctx_init(ctx);
    tb_kernel k;
    if (tb_kernel_from_env(ctx, &k) != TB_OK) {
        fprintf(stderr, "bench: %s\n", tb_ctx_error(ctx));
        exit(2);
    }
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

double bench_read_bw(int threads, size_t n)
{
    if (threads < 1)
        threads = 1;
    float *a = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!a)
        return 0.0;
    const long len = (long)n;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < len; i++)
        a[i] = 1.0f;
    double best = 0, spent = 0;
    float sink = 0;
    for (int pass = 0; pass < 20; pass++) {
        double t0 = bench_now();
        float s = 0;
        /* Sixteen running sums per thread, one per lane: vectorises without
         * reassociating (n is a multiple of 16 in every caller; a tail is
         * added once). */
#pragma omp parallel num_threads(threads) reduction(+ : s)
        {
            float acc[16] = {0};
#pragma omp for schedule(static)
            for (long b = 0; b < len / 16; b++)
                for (int j = 0; j < 16; j++)
                    acc[j] += a[b * 16 + j];
            for (int j = 0; j < 16; j++)
                s += acc[j];
        }
        for (long i = len / 16 * 16; i < len; i++)
            s += a[i];
        double dt = bench_now() - t0;
        sink += s;
        spent += dt;
        double gbs = sizeof(float) * (double)n / dt * 1e-9;
        if (gbs > best)
            best = gbs;
        if (pass >= 4 && spent > 1.0)
            break;
    }
    if (sink == 0.0f) /* the sums are used, and nonzero */
        fprintf(stderr, "bench: read bandwidth sum wrong\n");
    free(a);
    return best;
}

void bench_machine_measure(bench_machine *m, const tb_ctx *ctx)
{
    int threads = ctx->num_threads < 1 ? 1 : ctx->num_threads;
    m->threads = threads;
    m->family = (int)tb_ctx_kernel(ctx);
    float (*loop)(void);
    int vlen;
    if (!peak_loop_of(m->family, &loop, &vlen, &m->isa))
        m->isa = "none";
    bench_cpu_model(m->cpu, sizeof m->cpu);
    const char *forced = getenv("TB_KERNEL");
    /* TB_KERNEL naming the family the CPU would pick anyway (per_family.sh
     * sets it for every family) is not forcing anything. */
    const tb_kernel best = tb_kernel_best();
    char how[96];
    if (!(forced && *forced))
        snprintf(how, sizeof how, "auto: the best this CPU runs");
    else if (m->family == (int)best)
        snprintf(how, sizeof how, "named by TB_KERNEL; also the best this CPU runs");
    else
        snprintf(how, sizeof how, "forced by TB_KERNEL; this CPU would pick %s",
                 tb_kernel_name(best));
    printf("machine: %s; kernel family %s (%s)\n", m->cpu, tb_kernel_name((tb_kernel)m->family),
           how);
    double t0 = bench_now();
    m->peak1 = bench_fma_peak(m->family, 1);
    m->peak = threads > 1 ? bench_fma_peak(m->family, threads) : m->peak1;
    double mfloats = bench_env_double("BENCH_TRIAD_MFLOATS", 64);
    if (mfloats < 1)
        mfloats = 1;
    size_t n = (size_t)(mfloats * 1024 * 1024);
    m->triad = 0;
    while (n >= ((size_t)1 << 20) && (m->triad = bench_triad(threads, n)) == 0)
        n /= 2; /* allocation failed: try smaller arrays */
    m->triad_n = n;
    double dt = bench_now() - t0;
    printf("machine: %d thread%s; measured fp32 peak of the family's vector ISA, %s: "
           "%.1f GFLOP/s on 1 thread, %.1f GFLOP/s on %d (x%.2f)\n",
           threads, threads == 1 ? "" : "s", m->isa, m->peak1, m->peak, threads,
           m->peak1 > 0 ? m->peak / m->peak1 : 0.0);
    printf("machine: triad bandwidth %.1f GB/s (%d threads, 3 arrays x %zu MiB, best pass; "
           "ceilings measured in %.1f s)\n",
           m->triad, threads, n * sizeof(float) >> 20, dt);
    if (m->peak <= 0)
        printf("machine: no vector FMA target: fractions of peak are not reported\n");
    bench_tsv("#machine\tthreads\tpeak1_gflops\tpeak_gflops\ttriad_gbs\ttriad_mib_per_array\t"
              "family\tisa\tcpu");
    bench_tsv("machine\t%d\t%.2f\t%.2f\t%.2f\t%zu\t%s\t%s\t%s", threads, m->peak1, m->peak,
              m->triad, n * sizeof(float) >> 20, tb_kernel_name((tb_kernel)m->family), m->isa,
              m->cpu);
    fflush(stdout);
}
