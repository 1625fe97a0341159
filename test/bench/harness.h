/*
 * The harness shared by every benchmark in test/bench (compiled once by the
 * Makefile and linked into each benchmark program).
 *
 *   - timing: a warm-up, then repetitions chosen adaptively (at least
 *     BENCH_MIN_REPS and at least BENCH_MIN_TIME seconds in total, at most
 *     BENCH_MAX_REPS), reported as median and spread (min..max), or, for
 *     two functions compared, alternating repetition by repetition;
 *   - machine ceilings measured in the same run: the fp32 peak of a
 *     register-only multiply-add loop in the vector instructions of the
 *     kernel family under test (TB_KERNEL; AVX-512 zmm FMA, AVX2 ymm FMA,
 *     SSE2 mul+add) on one thread and on all threads, and memory
 *     bandwidth from a STREAM-like triad on arrays far larger than any cache;
 *   - case selection: BENCH_FILTER=substr[,substr...] keeps the cases whose
 *     name contains one of the substrings; BENCH_QUICK=1 asks a benchmark for
 *     its small subset (and shortens the timing);
 *   - output: one machine-readable line per case, "tsv\t<kind>\t..."
 *     (grep '^tsv'), beside the benchmark's readable table; a line whose
 *     kind starts with '#' ("tsv\t#<kind>\t...") names the columns of the
 *     lines of that kind.
 *
 * Environment: BENCH_MIN_TIME (s, default 0.3; 0.1 with BENCH_QUICK),
 * BENCH_MIN_REPS (3), BENCH_MAX_REPS (1000: a fast case still gets its
 * BENCH_MIN_TIME, long enough to outlast a spell of interference), BENCH_WARMUP (1),
 * BENCH_TRIAD_MFLOATS (64: three arrays of 64 Mi floats = 768 MiB in total).
 */
#ifndef TB_BENCH_HARNESS_H
#define TB_BENCH_HARNESS_H

#include <stddef.h>

#include "tblocks.h"

#if defined(__GNUC__) || defined(__clang__)
#define BENCH_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define BENCH_PRINTF(f, a)
#endif

/* Wall-clock seconds (monotonic). */
double bench_now(void);

/* Timing statistics of one case, in seconds. */
typedef struct bench_stats {
    double median, min, max;
    int reps; /* timed repetitions (warm-ups not counted) */
} bench_stats;

/* Run fn(arg) BENCH_WARMUP times untimed, then time repetitions until both
 * the minimum count and the minimum total time are reached. */
bench_stats bench_time(void (*fn)(void *arg), void *arg);

/* As bench_time for two functions at once, their repetitions alternating
 * (fa, fb, fa, fb, ...) until both have the minimum count and time: on a
 * shared, noisy machine both then meet the same spells of interference,
 * so that their ratio compares the code rather than the moments they ran
 * in. */
void bench_time_pair(void (*fa)(void *arg), void *a, void (*fb)(void *arg), void *b,
                     bench_stats *sa, bench_stats *sb);

/* Sorts v[0..n) ascending in place (NaNs not expected). */
void bench_sort(double *v, size_t n);

/* (max - min) / median, the relative spread; 0 if median is 0. */
double bench_spread(const bench_stats *s);

/* Register-only fp32 multiply-add loop in the vector instructions of kernel
 * family `family` (a tb_kernel: AVX-512 zmm FMA, AVX2 ymm FMA, or SSE2 xmm
 * mul+add for the portable kernels) on `threads` threads: GFLOP/s, or 0 on
 * a non-x86 build (then fractions of peak are not reported). The family
 * must be one the CPU runs. */
double bench_fma_peak(int family, int threads);

/* The CPU's model name ("model name" of /proc/cpuinfo; "unknown CPU"). */
void bench_cpu_model(char *buf, size_t size);

/* tb_ctx_init() (which takes the kernel family from TB_KERNEL), exiting
 * with status 2 and a message when TB_KERNEL names no family or one this
 * CPU lacks: a benchmark never measures another family than asked for. */
void bench_ctx_init(tb_ctx *ctx);

/* STREAM-like triad a[i] = b[i] + s*c[i] over three arrays of `n` floats
 * on `threads` threads; best pass in GB/s (STREAM's convention: 12 bytes
 * per element, write-allocate traffic not counted); 0 on allocation failure. */
double bench_triad(int threads, size_t n);

/* Read-only bandwidth: a sum over an array of `n` floats (far larger than
 * any cache) on `threads` threads, best of several passes, in GB/s (4 bytes
 * per element); 0 on allocation failure. The ceiling of a computation that
 * only reads its data once, such as decoding through all the weights. */
double bench_read_bw(int threads, size_t n);

/* The ceilings every kernel is reported against, for the kernel family the
 * benchmark's context runs. */
typedef struct bench_machine {
    int threads;
    int family;     /* tb_kernel the context runs (never TB_KERNEL_AUTO) */
    const char *isa; /* the vector instructions its peak was measured with */
    char cpu[128];  /* CPU model name */
    double peak1;  /* fp32 peak of the family's ISA, one thread, GFLOP/s */
    double peak;   /* the same on all `threads` threads, GFLOP/s */
    double triad;  /* triad bandwidth, all threads, GB/s */
    size_t triad_n; /* floats per triad array */
} bench_machine;

/* Measure and print the ceilings for ctx (its threads and kernel family),
 * naming the CPU model and the family (readable lines and a
 * "tsv\tmachine" line). Takes a few seconds. */
void bench_machine_measure(bench_machine *m, const tb_ctx *ctx);

/* 100 * value / ref, or 0 when ref <= 0 (unmeasured ceiling). */
double bench_pct(double value, double ref);

/* BENCH_QUICK set to something other than "" or "0". */
int bench_quick(void);

/* Whether a case passes BENCH_FILTER (always, when it is unset or empty). */
int bench_selected(const char *name);

/* Print "tsv\t" + the formatted text + newline. */
void bench_tsv(const char *fmt, ...) BENCH_PRINTF(1, 2);

/* 64-byte-aligned allocation of `bytes` (rounded up); exits on failure.
 * Release with free(). */
void *bench_alloc(size_t bytes);

/* An environment variable as a number, or `def` when unset or empty. */
double bench_env_double(const char *name, double def);

#endif /* TB_BENCH_HARNESS_H */
