/*
 * GEMM benchmark: the library's tb_gemm (the kernel family TB_KERNEL names,
 * else the best this CPU runs; all threads) on
 * the GPT-2-small shapes, M = B*T in {64, 256, 1024, 4096} and (N, K) in
 * {(2304,768), (768,768), (3072,768), (768,3072), (50257,768)}, plus square
 * 1024 and 2048, each in the three forms the blocks use:
 *
 *   NT  C(M,N) = A(M,K) B^T, B stored (N,K)            linear forward
 *   NN  C(M,N) = A(M,K) B(K,N)                          input gradient
 *   TN  C(M,N) += A^T B, A stored (K,M), B stored (K,N) weight gradient (beta 1)
 *
 * Reported: the best time of the repetitions (with their median and
 * maximum), GFLOP/s and the fraction of the all-thread fp32 FMA peak
 * measured in the same run (harness.h). Rates come from the best time, for
 * every library alike, because the peak is a best-of measurement too and
 * interference on a shared machine only ever adds time: a median there
 * measures the neighbours as much as the code (one case's repetitions
 * were seen to spread 2x). Ours and oneDNN alternate repetition by
 * repetition (bench_time_pair). Where they
 * were found at build time, the same cases through oneDNN's matmul (in this
 * process, primitive created once per case, transposes by strides) and
 * OpenBLAS's cblas_sgemm (in child processes, because OPENBLAS_CORETYPE is
 * read when the library loads: for the AVX-512 family once with
 * OPENBLAS_CORETYPE unset and once with SkylakeX; for the AVX2 family once
 * with Haswell and once with Zen, and oneDNN capped at AVX2, so that a
 * forced AVX2 run on an AVX-512 machine meets the peers an AVX2-only
 * machine would), with ours/theirs ratios
 * (> 1: ours is faster). Every result of ours is checked once per case: on
 * sampled elements against a double-precision dot product, and in full
 * against oneDNN's and OpenBLAS's results (max |diff| / max |theirs|).
 *
 * BENCH_FILTER=substr[,substr] selects cases by id (e.g. qkv_M1024_NT,
 * lm_head, _TN); BENCH_QUICK=1 runs a small subset. Exit status 1 if a
 * result of ours is wrong.
 *
 * Internal mode: bench_gemm --openblas-only <mode> <case-id>
 * <threads> times one case with OpenBLAS and prints one "child\t..." line.
 */
#define _GNU_SOURCE /* environ; OpenBLAS's header wants it for cpu_set_t */
#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif
#ifdef HAVE_DNNL
#include <dnnl.h>
#endif

#include <float.h>
#include <math.h>
#include <omp.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kernels/gemm.h"
#include "tblocks.h"

extern char **environ;

/* Relative differences above these are reported as wrong results. */
#define LIB_TOL 1e-4 /* max|ours - theirs| / max|theirs| */

enum { FORM_NT, FORM_NN, FORM_TN };
static const char *const form_names[] = {"NT", "NN", "TN"};

typedef struct gcase {
    char id[48];       /* unique, what BENCH_FILTER matches: qkv_M1024_NT */
    const char *shape; /* qkv, attn_out, ..., square1024 */
    int form;
    size_t M, N, K;
} gcase;

/* ---- cases ----------------------------------------------------------------- */

#define MAX_CASES 80

static size_t build_cases(gcase *out, int quick)
{
    static const struct {
        const char *name;
        size_t N, K;
    } gpt2[] = {{"qkv", 2304, 768},
                {"attn_out", 768, 768},
                {"mlp_up", 3072, 768},
                {"mlp_down", 768, 3072},
                {"lm_head", 50257, 768}};
    static const size_t Ms[] = {64, 256, 1024, 4096};
    size_t n = 0;
    for (size_t mi = 0; mi < 4; mi++)
        for (size_t s = 0; s < 5; s++)
            for (int f = 0; f < 3; f++) {
                size_t M = Ms[mi];
                if (quick && !((M == 256 && s != 4 && (s == 0 || s == 3)) ||
                               (M == 64 && s == 4 && f == FORM_NT)))
                    continue;
                gcase *c = &out[n++];
                snprintf(c->id, sizeof c->id, "%s_M%zu_%s", gpt2[s].name, M, form_names[f]);
                c->shape = gpt2[s].name;
                c->form = f;
                c->M = M, c->N = gpt2[s].N, c->K = gpt2[s].K;
            }
    static const char *const sq_names[] = {"square1024", "square2048"};
    for (size_t q = 0; q < 2; q++)
        for (int f = 0; f < 3; f++) {
            if (quick && (q == 1 || f != FORM_NT))
                continue;
            gcase *c = &out[n++];
            size_t d = q ? 2048 : 1024;
            snprintf(c->id, sizeof c->id, "%s_%s", sq_names[q], form_names[f]);
            c->shape = sq_names[q];
            c->form = f;
            c->M = c->N = c->K = d;
        }
    return n;
}

/* ---- operands ---------------------------------------------------------------- */

typedef struct operands {
    const gcase *c;
    float *A, *B, *C;
    size_t lda, ldb, ldc;
    int ta, tb;
    float beta;
    tb_ctx *ctx;
} operands;

enum { SEED_A = 1, SEED_B = 2, SEED_C = 3 };

/* Deterministic values in [-1, 1) from (seed, index): the parent and the
 * OpenBLAS children build identical operands without sharing memory. */
static float hval(uint64_t seed, size_t i)
{
    uint64_t z = (uint64_t)i + seed * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((double)(z >> 40) * (1.0 / 8388608.0) - 1.0);
}

static void fill(float *x, size_t n, uint64_t seed)
{
    const long len = (long)n;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < len; i++)
        x[i] = hval(seed, (size_t)i);
}

static void fill_const(float *x, size_t n, float v)
{
    const long len = (long)n;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < len; i++)
        x[i] = v;
}

/* C's contents before a verified call: the beta = 1 form reads them; the
 * beta = 0 forms must not (NaN would propagate). */
static void prepare_c(const operands *o, float *C, float fill_for_beta0)
{
    size_t n = o->c->M * o->c->N;
    if (o->beta != 0.0f)
        fill(C, n, SEED_C);
    else
        fill_const(C, n, fill_for_beta0);
}

static void operands_init(operands *o, const gcase *c, tb_ctx *ctx)
{
    o->c = c;
    o->ctx = ctx;
    o->ta = c->form == FORM_TN;
    o->tb = c->form == FORM_NT;
    o->lda = o->ta ? c->M : c->K;
    o->ldb = o->tb ? c->K : c->N;
    o->ldc = c->N;
    o->beta = c->form == FORM_TN ? 1.0f : 0.0f;
    o->A = bench_alloc(c->M * c->K * sizeof(float));
    o->B = bench_alloc(c->K * c->N * sizeof(float));
    o->C = bench_alloc(c->M * c->N * sizeof(float));
    fill(o->A, c->M * c->K, SEED_A);
    fill(o->B, c->K * c->N, SEED_B);
}

static void operands_free(operands *o)
{
    free(o->A), free(o->B), free(o->C);
    o->A = o->B = o->C = NULL;
}

static void run_ours(void *arg)
{
    const operands *o = arg;
    tb_status s = tb_gemm(o->ctx, o->ta, o->tb, o->c->M, o->c->N, o->c->K, 1.0f, o->A, o->lda,
                          o->B, o->ldb, o->beta, o->C, o->ldc);
    if (s != TB_OK) {
        fprintf(stderr, "bench_gemm: tb_gemm failed (%d) on %s\n", (int)s, o->c->id);
        exit(2);
    }
}

/* ---- checks -------------------------------------------------------------------- */

#if defined(HAVE_DNNL) || defined(HAVE_OPENBLAS)
/* max |x - ref| / max |ref| over the whole matrix; infinity on NaN. */
static double max_rel_diff(const float *x, const float *ref, size_t n)
{
    const long len = (long)n;
    double maxd = 0, maxr = 0;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(max : maxd, maxr) reduction(| : bad)
    for (long i = 0; i < len; i++) {
        double d = fabs((double)x[i] - (double)ref[i]);
        if (isnan(d))
            bad = 1;
        else if (d > maxd)
            maxd = d;
        double r = fabs((double)ref[i]);
        if (r > maxr)
            maxr = r;
    }
    if (bad)
        return INFINITY;
    return maxr > 0 ? maxd / maxr : maxd;
}
#endif

/* Sampled elements against a double-precision dot product, the error
 * relative to sum_k |a_ik b_kj| + |beta c0_ij| (the scale of fp32 rounding
 * error); a correct fp32 product stays below about K * FLT_EPSILON / 2. */
static double sample_check(const operands *o)
{
    const gcase *c = o->c;
    double worst = 0;
    for (int s = 0; s < 68; s++) {
        size_t i, j;
        if (s < 4) { /* the corners */
            i = (s & 1) ? c->M - 1 : 0;
            j = (s & 2) ? c->N - 1 : 0;
        } else {
            i = (size_t)((hval(7, (size_t)s) + 1.0f) * 0.5f * (float)c->M) % c->M;
            j = (size_t)((hval(8, (size_t)s) + 1.0f) * 0.5f * (float)c->N) % c->N;
        }
        double ref = 0, scale = 0;
        for (size_t k = 0; k < c->K; k++) {
            double a = o->ta ? o->A[k * o->lda + i] : o->A[i * o->lda + k];
            double b = o->tb ? o->B[j * o->ldb + k] : o->B[k * o->ldb + j];
            ref += a * b;
            scale += fabs(a * b);
        }
        if (o->beta != 0.0f) {
            double c0 = hval(SEED_C, i * c->N + j);
            ref += o->beta * c0;
            scale += fabs(o->beta * c0);
        }
        double err = fabs((double)o->C[i * o->ldc + j] - ref) / (scale > 0 ? scale : 1.0);
        if (isnan(err))
            return INFINITY;
        if (err > worst)
            worst = err;
    }
    return worst;
}

static double sample_tol(const gcase *c)
{
    return (double)c->K * FLT_EPSILON;
}

/* ---- oneDNN ---------------------------------------------------------------------- */

#ifdef HAVE_DNNL
static dnnl_engine_t dnnl_eng;
static dnnl_stream_t dnnl_strm;

typedef struct dnnl_case {
    dnnl_primitive_t prim;
    dnnl_memory_t mem[3];
    dnnl_exec_arg_t args[3];
    char impl[64];
} dnnl_case;

#define DNNL_TRY(call)                                                                          \
    do {                                                                                        \
        dnnl_status_t st_ = (call);                                                             \
        if (st_ != dnnl_success) {                                                              \
            fprintf(stderr, "bench_gemm: oneDNN: %s failed (status %d)\n", #call, (int)st_);     \
            return -1;                                                                          \
        }                                                                                       \
    } while (0)

static int dnnl_global_init(void)
{
    DNNL_TRY(dnnl_engine_create(&dnnl_eng, dnnl_cpu, 0));
    DNNL_TRY(dnnl_stream_create(&dnnl_strm, dnnl_eng, dnnl_stream_default_flags));
    return 0;
}

/* The primitive for C = op(A) op(B) (+ C for the beta = 1 form, as a sum
 * post-op) on the caller's buffers; transposed operands described by
 * strides, nothing copied. */
static int dnnl_case_create(dnnl_case *d, const operands *o, float *C)
{
    const gcase *c = o->c;
    const int64_t M = (int64_t)c->M, N = (int64_t)c->N, K = (int64_t)c->K;
    dnnl_dims_t a_dims = {M, K}, b_dims = {K, N}, c_dims = {M, N};
    dnnl_dims_t a_str = {0}, b_str = {0}, c_str = {N, 1};
    a_str[0] = o->ta ? 1 : (int64_t)o->lda;
    a_str[1] = o->ta ? (int64_t)o->lda : 1;
    b_str[0] = o->tb ? 1 : (int64_t)o->ldb;
    b_str[1] = o->tb ? (int64_t)o->ldb : 1;
    dnnl_memory_desc_t a_md, b_md, c_md;
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&a_md, 2, a_dims, dnnl_f32, a_str));
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&b_md, 2, b_dims, dnnl_f32, b_str));
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&c_md, 2, c_dims, dnnl_f32, c_str));
    dnnl_matmul_desc_t desc;
    DNNL_TRY(dnnl_matmul_desc_init(&desc, &a_md, &b_md, NULL, &c_md));
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if (o->beta != 0.0f) {
        DNNL_TRY(dnnl_primitive_attr_create(&attr));
        DNNL_TRY(dnnl_post_ops_create(&po));
        DNNL_TRY(dnnl_post_ops_append_sum(po, o->beta));
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, po));
    }
    dnnl_primitive_desc_t pd;
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &desc, attr, dnnl_eng, NULL));
    const char *impl = "?";
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success)
        impl = "?";
    snprintf(d->impl, sizeof d->impl, "%s", impl);
    DNNL_TRY(dnnl_primitive_create(&d->prim, pd));
    dnnl_primitive_desc_destroy(pd);
    if (po)
        dnnl_post_ops_destroy(po);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    DNNL_TRY(dnnl_memory_create(&d->mem[0], &a_md, dnnl_eng, o->A));
    DNNL_TRY(dnnl_memory_create(&d->mem[1], &b_md, dnnl_eng, o->B));
    DNNL_TRY(dnnl_memory_create(&d->mem[2], &c_md, dnnl_eng, C));
    d->args[0].arg = DNNL_ARG_SRC, d->args[0].memory = d->mem[0];
    d->args[1].arg = DNNL_ARG_WEIGHTS, d->args[1].memory = d->mem[1];
    d->args[2].arg = DNNL_ARG_DST, d->args[2].memory = d->mem[2];
    return 0;
}

static void dnnl_case_destroy(dnnl_case *d)
{
    for (int i = 0; i < 3; i++)
        dnnl_memory_destroy(d->mem[i]);
    dnnl_primitive_destroy(d->prim);
}

static void run_dnnl(void *arg)
{
    const dnnl_case *d = arg;
    if (dnnl_primitive_execute(d->prim, dnnl_strm, 3, d->args) != dnnl_success ||
        dnnl_stream_wait(dnnl_strm) != dnnl_success) {
        fprintf(stderr, "bench_gemm: oneDNN matmul failed\n");
        exit(2);
    }
}
#endif /* HAVE_DNNL */

/* ---- OpenBLAS (child processes) -------------------------------------------------- */

/* Two OpenBLAS runs per case, each with the best kernels OpenBLAS has for
 * the instruction set of the family under test (set by obl_modes_for()):
 * for AVX-512, its own choice (OPENBLAS_CORETYPE unset) and SkylakeX; for
 * AVX2 (an AVX2-only machine, or the AVX2 family forced on an AVX-512 one),
 * its Haswell and Zen kernels. mode names are passed to the child. */
#define OBL_MODES 2
static const char *obl_mode_names[OBL_MODES] = {"default", "SkylakeX"};

static void obl_modes_for(int family)
{
    if (family == TB_KERNEL_AVX2)
        obl_mode_names[0] = "Haswell", obl_mode_names[1] = "Zen";
}

typedef struct obl_result {
    int ok;
    bench_stats t;
    double rel; /* vs ours; < 0 when not checked */
    char core[32];
    char config[160];
} obl_result;

#ifdef HAVE_OPENBLAS
static void run_openblas(void *arg)
{
    const operands *o = arg;
    cblas_sgemm(CblasRowMajor, o->ta ? CblasTrans : CblasNoTrans, o->tb ? CblasTrans : CblasNoTrans,
                (blasint)o->c->M, (blasint)o->c->N, (blasint)o->c->K, 1.0f, o->A, (blasint)o->lda,
                o->B, (blasint)o->ldb, o->beta, o->C, (blasint)o->ldc);
}

/* Child mode: one case with OpenBLAS (loaded with the environment the parent
 * chose). The default-mode child also checks ours against OpenBLAS. */
static int openblas_child(const char *mode, const char *id, int threads)
{
    static gcase cases[MAX_CASES];
    size_t n = build_cases(cases, 0);
    const gcase *c = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(cases[i].id, id) == 0)
            c = &cases[i];
    if (!c) {
        fprintf(stderr, "bench_gemm: no case %s\n", id);
        return 2;
    }
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    ctx.num_threads = threads;
    omp_set_num_threads(threads);
    operands o;
    operands_init(&o, c, &ctx);
    double rel = -1;
    float *ours = NULL;
    if (strcmp(mode, obl_mode_names[0]) == 0) {
        /* Ours first, so that idle OpenMP threads have stopped spinning by
         * the time OpenBLAS is timed (after its warm-up). */
        prepare_c(&o, o.C, NAN);
        run_ours(&o);
        ours = o.C;
        o.C = bench_alloc(c->M * c->N * sizeof(float));
    }
    prepare_c(&o, o.C, 0.0f);
    run_openblas(&o);
    if (ours) {
        rel = max_rel_diff(ours, o.C, c->M * c->N);
        free(ours);
    }
    bench_stats t = bench_time(run_openblas, &o);
    const char *core = openblas_get_corename();
    const char *config = openblas_get_config();
    printf("child\t%s\t%s\t%.9f\t%.9f\t%.9f\t%d\t%.6g\t%s\t%s\n", id, mode, t.median, t.min, t.max,
           t.reps, rel, core ? core : "?", config ? config : "?");
    operands_free(&o);
    return 0;
}
#endif

static char self_path[4096];

/* Run `self --openblas-only <mode> <id> <threads>` with the OpenBLAS
 * environment of that mode and parse its result line. */
static int spawn_openblas(int mode, const gcase *c, int threads, obl_result *r)
{
    memset(r, 0, sizeof *r);
    r->rel = -1;
    char thr[16], nthr[48];
    snprintf(thr, sizeof thr, "%d", threads);
    snprintf(nthr, sizeof nthr, "OPENBLAS_NUM_THREADS=%d", threads);
    char *argv[] = {self_path, (char *)"--openblas-only", (char *)obl_mode_names[mode],
                    (char *)c->id, thr, NULL};
    size_t nenv = 0;
    while (environ[nenv])
        nenv++;
    char **envp = malloc((nenv + 4) * sizeof *envp);
    if (!envp)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++) {
        const char *e = environ[i];
        if (strncmp(e, "OPENBLAS_CORETYPE=", 18) == 0 || strncmp(e, "OPENBLAS_L2_SIZE=", 17) == 0 ||
            strncmp(e, "OPENBLAS_NUM_THREADS=", 21) == 0 || strncmp(e, "GOTO_NUM_THREADS=", 17) == 0 ||
            strncmp(e, "OMP_WAIT_POLICY=", 16) == 0)
            continue;
        envp[k++] = environ[i];
    }
    envp[k++] = nthr;
    /* The child's own OpenMP threads (operand set-up, the check of ours)
     * must not spin beside OpenBLAS's threads while it is timed; LLVM's
     * runtime spins for 200 ms by default. */
    envp[k++] = (char *)"OMP_WAIT_POLICY=PASSIVE";
    char coretype[64];
    if (strcmp(obl_mode_names[mode], "default") != 0) {
        snprintf(coretype, sizeof coretype, "OPENBLAS_CORETYPE=%s", obl_mode_names[mode]);
        envp[k++] = coretype;
    }
    envp[k] = NULL;

    int fd[2];
    if (pipe(fd) != 0) {
        free(envp);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    posix_spawn_file_actions_addclose(&fa, fd[1]);
    fflush(stdout);
    pid_t pid;
    int err = posix_spawn(&pid, self_path, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    close(fd[1]);
    if (err != 0) {
        close(fd[0]);
        fprintf(stderr, "bench_gemm: could not start %s (%s)\n", self_path, strerror(err));
        return -1;
    }
    char buf[8192];
    size_t len = 0;
    ssize_t got;
    while ((got = read(fd[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)got;
    buf[len] = '\0';
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    char *line = strstr(buf, "child\t");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !line) {
        fprintf(stderr, "bench_gemm: OpenBLAS child for %s (%s) failed\n", c->id,
                obl_mode_names[mode]);
        return -1;
    }
    /* child id mode median min max reps rel core config */
    char *save = NULL, *f[10];
    int nf = 0;
    line[strcspn(line, "\n")] = '\0';
    for (char *t = strtok_r(line, "\t", &save); t && nf < 10; t = strtok_r(NULL, "\t", &save))
        f[nf++] = t;
    if (nf < 10)
        return -1;
    r->t.median = atof(f[3]);
    r->t.min = atof(f[4]);
    r->t.max = atof(f[5]);
    r->t.reps = atoi(f[6]);
    r->rel = atof(f[7]);
    snprintf(r->core, sizeof r->core, "%s", f[8]);
    snprintf(r->config, sizeof r->config, "%s", f[9]);
    r->ok = r->t.median > 0;
    return r->ok ? 0 : -1;
}

/* ---- the run -------------------------------------------------------------------- */

typedef struct gres {
    const gcase *c;
    bench_stats ours;
    double gf, pct;
    int has_dnnl;
    bench_stats dnnl;
    double dnnl_gf, rel_dnnl;
    char dnnl_impl[64];
    obl_result obl[OBL_MODES];
    double obl_gf[OBL_MODES];
    double rel_sample;
    int wrong;
} gres;

static double gflops(const gcase *c, double seconds)
{
    return seconds > 0 ? 2.0 * (double)c->M * (double)c->N * (double)c->K / seconds * 1e-9 : 0.0;
}

/* Optional numbers: "NA" when absent. */
static const char *opt(char *buf, size_t n, int has, const char *fmt, double v)
{
    if (!has)
        snprintf(buf, n, "NA");
    else
        snprintf(buf, n, fmt, v);
    return buf;
}

static double median_of(double *v, size_t n)
{
    if (n == 0)
        return 0;
    bench_sort(v, n);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Table columns: case | ours | oneDNN | OpenBLAS mode 0 | OpenBLAS mode 1 |
 * checks. "x" columns are ours/theirs (> 1: ours faster). */
#define ROW_HEAD "%-10s %-2s %5s %5s %5s"
#define ROW_OURS "%8s %19s %6s %6s"
#define ROW_LIB "%6s %5s"
#define ROW_CHK "%7s %7s %7s"

/* A column label for an OpenBLAS mode (at most 6 characters). */
static const char *obl_short(int mode)
{
    static char b[OBL_MODES][8];
    snprintf(b[mode], sizeof b[mode], "%.6s", obl_mode_names[mode]);
    return b[mode];
}

static void print_table_header(void)
{
    printf("\n" ROW_HEAD " | " ROW_OURS " | " ROW_LIB " | " ROW_LIB " | " ROW_LIB " | " ROW_CHK "\n",
           "", "", "", "", "", "ours ms", "(median..max)", "", "", "oneDNN", "", "OBL", "", "OBL", "",
           "max", "rel", "diff");
    printf(ROW_HEAD " | " ROW_OURS " | " ROW_LIB " | " ROW_LIB " | " ROW_LIB " | " ROW_CHK "\n",
           "case", "fm", "M", "N", "K", "best", "", "GF/s", "%peak", "GF/s", "x", obl_short(0), "x",
           obl_short(1), "x", "oneDNN", "OBL", "sample");
}

static void print_row(const gres *r)
{
    const gcase *c = r->c;
    char dims[3][16], ours[4][32], lib[6][16], chk[3][16];
    snprintf(dims[0], 16, "%zu", c->M);
    snprintf(dims[1], 16, "%zu", c->N);
    snprintf(dims[2], 16, "%zu", c->K);
    snprintf(ours[0], 32, "%.3f", r->ours.min * 1e3);
    snprintf(ours[1], 32, "(%.3f..%.3f)", r->ours.median * 1e3, r->ours.max * 1e3);
    snprintf(ours[2], 32, "%.1f", r->gf);
    snprintf(ours[3], 32, "%.1f%%", r->pct);
    opt(lib[0], 16, r->has_dnnl, "%.1f", r->dnnl_gf);
    opt(lib[1], 16, r->has_dnnl, "%.2f", r->has_dnnl ? r->gf / r->dnnl_gf : 0);
    for (int mode = 0; mode < OBL_MODES; mode++) {
        int ok = r->obl[mode].ok;
        opt(lib[2 + 2 * mode], 16, ok, "%.1f", r->obl_gf[mode]);
        opt(lib[3 + 2 * mode], 16, ok, "%.2f", ok ? r->gf / r->obl_gf[mode] : 0);
    }
    opt(chk[0], 16, r->has_dnnl, "%.1e", r->rel_dnnl);
    opt(chk[1], 16, r->obl[0].rel >= 0, "%.1e", r->obl[0].rel);
    opt(chk[2], 16, 1, "%.1e", r->rel_sample);
    printf(ROW_HEAD " | " ROW_OURS " | " ROW_LIB " | " ROW_LIB " | " ROW_LIB " | " ROW_CHK "%s\n",
           c->shape, form_names[c->form], dims[0], dims[1], dims[2], ours[0], ours[1], ours[2],
           ours[3], lib[0], lib[1], lib[2], lib[3], lib[4], lib[5], chk[0], chk[1], chk[2],
           r->wrong ? "  WRONG" : "");
    fflush(stdout);
}

static void print_tsv(const gres *r, int threads, double peak)
{
    const gcase *c = r->c;
    char b[20][32];
    int hd = r->has_dnnl, h0 = r->obl[0].ok, h1 = r->obl[1].ok;
    bench_tsv("gemm\t%s\t%s\t%s\t%zu\t%zu\t%zu\t%d\t%d\t%.4f\t%.4f\t%.4f\t%.2f\t%.4f\t"
              "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.3g\t%d",
              c->id, c->shape, form_names[c->form], c->M, c->N, c->K, threads, r->ours.reps,
              r->ours.median * 1e3, r->ours.min * 1e3, r->ours.max * 1e3, r->gf,
              bench_pct(r->gf, peak) / 100, opt(b[0], 32, hd, "%.4f", r->dnnl.median * 1e3),
              opt(b[1], 32, hd, "%.2f", r->dnnl_gf), opt(b[2], 32, hd, "%.4f", hd ? r->gf / r->dnnl_gf : 0),
              hd ? r->dnnl_impl : "NA", opt(b[3], 32, h0, "%.4f", r->obl[0].t.median * 1e3),
              opt(b[4], 32, h0, "%.2f", r->obl_gf[0]),
              opt(b[5], 32, h0, "%.4f", h0 ? r->gf / r->obl_gf[0] : 0), h0 ? r->obl[0].core : "NA",
              opt(b[6], 32, h1, "%.4f", r->obl[1].t.median * 1e3),
              opt(b[7], 32, h1, "%.2f", r->obl_gf[1]),
              opt(b[8], 32, h1, "%.4f", h1 ? r->gf / r->obl_gf[1] : 0), h1 ? r->obl[1].core : "NA",
              opt(b[9], 32, hd, "%.3g", r->rel_dnnl), opt(b[10], 32, r->obl[0].rel >= 0, "%.3g", r->obl[0].rel),
              r->rel_sample, !r->wrong);
}

static void run_case(const gcase *c, tb_ctx *ctx, const bench_machine *m, int use_obl, gres *r)
{
    memset(r, 0, sizeof *r);
    r->c = c;
    for (int mode = 0; mode < OBL_MODES; mode++)
        r->obl[mode].rel = -1;
    operands o;
    operands_init(&o, c, ctx);

    /* Ours, once, checked. */
    prepare_c(&o, o.C, NAN);
    run_ours(&o);
    r->rel_sample = sample_check(&o);
    if (!(r->rel_sample <= sample_tol(c)))
        r->wrong = 1;

#ifdef HAVE_DNNL
    {
        float *Cd = bench_alloc(c->M * c->N * sizeof(float));
        dnnl_case d;
        memset(&d, 0, sizeof d);
        if (dnnl_case_create(&d, &o, Cd) == 0) {
            prepare_c(&o, Cd, 0.0f);
            run_dnnl(&d);
            r->rel_dnnl = max_rel_diff(o.C, Cd, c->M * c->N);
            if (!(r->rel_dnnl <= LIB_TOL))
                r->wrong = 1;
            /* Ours and oneDNN alternate, meeting the same interference. */
            bench_time_pair(run_ours, &o, run_dnnl, &d, &r->ours, &r->dnnl);
            r->dnnl_gf = gflops(c, r->dnnl.min);
            snprintf(r->dnnl_impl, sizeof r->dnnl_impl, "%s", d.impl);
            r->has_dnnl = 1;
            dnnl_case_destroy(&d);
        }
        free(Cd);
    }
#endif
    if (!r->has_dnnl)
        r->ours = bench_time(run_ours, &o);
    r->gf = gflops(c, r->ours.min);
    r->pct = bench_pct(r->gf, m->peak);
    operands_free(&o);

    for (int mode = 0; use_obl && mode < OBL_MODES; mode++) {
        if (spawn_openblas(mode, c, m->threads, &r->obl[mode]) == 0) {
            r->obl_gf[mode] = gflops(c, r->obl[mode].t.min);
            if (r->obl[mode].rel >= 0 && !(r->obl[mode].rel <= LIB_TOL))
                r->wrong = 1;
        }
    }
}

/* Summary over the selected cases. */
static void print_summary(const gres *res, size_t n, const bench_machine *m)
{
    double *v = malloc((n + 1) * sizeof *v);
    if (!v)
        return;
    printf("\nsummary (%zu cases; kernel family %s; all-thread %s peak %.1f GFLOP/s, 1-thread "
           "%.1f, triad %.1f GB/s)\n",
           n, tb_kernel_name((tb_kernel)m->family), m->isa, m->peak, m->peak1, m->triad);
    printf("  rates from the best of each case's repetitions, for every library (as the peak)\n");
    printf("  targets: median >= 85%% of peak in every form, >= 1.0x each peer on the median and "
           ">= 0.9x on every case with M >= 256; M = 64 >= 70%%\n");

    /* The issue-level figures: over the GPT-2 shapes (lm_head included,
     * the squares not) with M >= 256, the median % of peak overall and per
     * form, and per peer the median and the minimum of ours/theirs. */
    size_t k = 0;
    double form_med[3];
    for (int f = -1; f < 3; f++) {
        k = 0;
        for (size_t i = 0; i < n; i++) {
            const gcase *c = res[i].c;
            if (c->M >= 256 && strncmp(c->shape, "square", 6) != 0 && (f < 0 || c->form == f))
                v[k++] = res[i].pct;
        }
        double med = median_of(v, k);
        if (f < 0)
            printf("  median %% of peak, GPT-2 shapes with M >= 256 (%zu cases): %.1f%%\n", k, med);
        else
            form_med[f] = k ? med : NAN;
    }
    printf("    by form:");
    for (int f = 0; f < 3; f++)
        if (!isnan(form_med[f]))
            printf(" %s %.1f%%", form_names[f], form_med[f]);
    printf("\n");

    /* Ratios against each comparison: over those cases, and over all. */
    char obl0[64], obl1[64];
    snprintf(obl0, sizeof obl0, "OpenBLAS %s", obl_mode_names[0]);
    snprintf(obl1, sizeof obl1, "OpenBLAS %s", obl_mode_names[1]);
    const char *names[3] = {"oneDNN", obl0, obl1};
    for (int lib = 0; lib < 3; lib++)
        for (int all = 0; all < 2; all++) {
            double lo = INFINITY;
            const gcase *at = NULL;
            k = 0;
            for (size_t i = 0; i < n; i++) {
                const gres *r = &res[i];
                int has = lib == 0 ? r->has_dnnl : r->obl[lib - 1].ok;
                if (!has || (!all && (r->c->M < 256 || strncmp(r->c->shape, "square", 6) == 0)))
                    continue;
                double ratio = r->gf / (lib == 0 ? r->dnnl_gf : r->obl_gf[lib - 1]);
                v[k++] = ratio;
                if (ratio < lo)
                    lo = ratio, at = r->c;
            }
            if (!at)
                printf("  ours/%s: not measured\n", names[lib]);
            else
                printf("  ours/%s, %s: median %.2f, min %.2f (%s) over %zu cases\n", names[lib],
                       all ? "all cases" : "GPT-2 shapes with M >= 256", median_of(v, k), lo,
                       at->id, k);
        }

    /* The small-M and vocabulary-projection cases, % of peak. */
    for (int grp = 0; grp < 2; grp++) {
        int any = 0;
        for (size_t i = 0; i < n; i++) {
            const gcase *c = res[i].c;
            if (!(grp == 0 ? c->M == 64 : c->N == 50257))
                continue;
            if (!any)
                printf("  %s, %% of peak (NT / NN / TN):\n", grp == 0 ? "M=64" : "N=50257");
            any = 1;
            /* One line per (shape, M): the three forms. */
            if (i > 0 && strcmp(res[i - 1].c->shape, c->shape) == 0 && res[i - 1].c->M == c->M)
                continue;
            char cells[3][16];
            for (int f = 0; f < 3; f++)
                snprintf(cells[f], sizeof cells[f], "-");
            for (size_t j = i; j < n && strcmp(res[j].c->shape, c->shape) == 0 && res[j].c->M == c->M;
                 j++)
                snprintf(cells[res[j].c->form], sizeof cells[0], "%.1f%%", res[j].pct);
            printf("    %-9s M=%-5zu %7s / %7s / %7s\n", c->shape, c->M, cells[0], cells[1], cells[2]);
        }
    }

    /* Correctness. */
    double w_d = -1, w_o = -1, w_s = 0;
    int wrong = 0;
    for (size_t i = 0; i < n; i++) {
        if (res[i].has_dnnl && !(res[i].rel_dnnl <= w_d))
            w_d = res[i].rel_dnnl;
        if (res[i].obl[0].rel >= 0 && !(res[i].obl[0].rel <= w_o))
            w_o = res[i].obl[0].rel;
        if (!(res[i].rel_sample <= w_s))
            w_s = res[i].rel_sample;
        wrong += res[i].wrong;
    }
    char wd[24], wo[24];
    printf("  correctness: worst max|ours-theirs|/max|theirs| vs oneDNN %s, vs OpenBLAS %s; worst "
           "sampled error vs double %.2g (of sum|a*b|); %d wrong case%s\n",
           opt(wd, sizeof wd, w_d >= 0, "%.2g", w_d), opt(wo, sizeof wo, w_o >= 0, "%.2g", w_o), w_s,
           wrong, wrong == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++)
        if (res[i].wrong)
            printf("    WRONG: %s\n", res[i].c->id);
    free(v);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--openblas-only") == 0) {
#ifdef HAVE_OPENBLAS
        if (argc != 5) {
            fprintf(stderr, "usage: %s --openblas-only <mode> <case> <threads>\n", argv[0]);
            return 2;
        }
        tb_ctx fam;
        bench_ctx_init(&fam);
        obl_modes_for((int)tb_ctx_kernel(&fam));
        return openblas_child(argv[2], argv[3], atoi(argv[4]));
#else
        fprintf(stderr, "bench_gemm: built without OpenBLAS\n");
        return 2;
#endif
    }
    ssize_t pl = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (pl > 0)
        self_path[pl] = '\0';
    else
        snprintf(self_path, sizeof self_path, "%s", argv[0]);

    tb_ctx ctx;
    bench_ctx_init(&ctx);
    int threads = ctx.num_threads < 1 ? 1 : ctx.num_threads;
    omp_set_num_threads(threads); /* oneDNN's OpenMP threads: as many as ours */
    const int family = (int)tb_ctx_kernel(&ctx);
    obl_modes_for(family);
#ifdef HAVE_DNNL
    /* The AVX2 family is compared with oneDNN's best AVX2 code (as on an
     * AVX2-only machine), set before any primitive exists. */
    if (family == TB_KERNEL_AVX2 && dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx2) != dnnl_success)
        printf("gemm: note: oneDNN refused to cap its ISA at AVX2\n");
#endif

    static gcase cases[MAX_CASES];
    size_t ncases = build_cases(cases, bench_quick());
    size_t nsel = 0;
    for (size_t i = 0; i < ncases; i++)
        if (bench_selected(cases[i].id))
            cases[nsel++] = cases[i];
    if (nsel == 0) {
        printf("gemm: no case matches BENCH_FILTER=%s\n", getenv("BENCH_FILTER"));
        return 0;
    }

    bench_machine m;
    bench_machine_measure(&m, &ctx);
    printf("gemm: ours = tb_gemm, kernel family %s, %d threads; %zu case%s%s\n",
           tb_kernel_name(tb_ctx_kernel(&ctx)), threads, nsel, nsel == 1 ? "" : "s",
           bench_quick() ? " (BENCH_QUICK subset)" : "");
#ifdef HAVE_DNNL
    const dnnl_version_t *dv = dnnl_version();
    if (dnnl_global_init() != 0)
        return 2;
    printf("gemm: oneDNN %d.%d.%d matmul, OpenMP, %d threads, ISA %s (implementation per case "
           "in TSV)\n",
           dv->major, dv->minor, dv->patch, omp_get_max_threads(),
           family == TB_KERNEL_AVX2 ? "capped at AVX2 (dnnl_set_max_cpu_isa)" : "its own choice");
#if defined(__clang__)
    printf("gemm: note: clang build: ours runs on LLVM's OpenMP runtime, oneDNN on its own (GNU)\n"
           "      one; two thread pools share the cores, so prefer a gcc build for the ratios\n");
#endif
#else
    printf("gemm: oneDNN skipped (dnnl.h not found when built)\n");
#endif
    int use_obl = 0;
#ifdef HAVE_OPENBLAS
    use_obl = 1;
    {
        const char *ct = getenv("OPENBLAS_CORETYPE"), *l2 = getenv("OPENBLAS_L2_SIZE");
        printf("gemm: OpenBLAS cblas_sgemm in child processes, OPENBLAS_NUM_THREADS=%d, "
               "OPENBLAS_L2_SIZE unset, twice: OPENBLAS_CORETYPE=%s and =%s ('default': unset, "
               "its own choice)\n",
               threads, obl_mode_names[0], obl_mode_names[1]);
        if ((ct && *ct) || (l2 && *l2))
            printf("gemm: note: this environment presets OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s "
                   "(not passed to the children)\n",
                   ct ? ct : "(unset)", l2 ? l2 : "(unset)");
    }
#else
    printf("gemm: OpenBLAS skipped (its cblas.h / libopenblas not found when built)\n");
#endif
    printf("gemm: x = ours/theirs GFLOP/s (> 1: ours faster); %%peak = of the all-thread FMA peak;\n"
           "gemm: max rel diff = max|ours-theirs|/max|theirs| over C; sample = sampled elements vs "
           "double, |error| / sum|a*b|\n");
    print_table_header();

    gres *res = calloc(nsel, sizeof *res);
    if (!res)
        return 2;
    double t0 = bench_now();
    for (size_t i = 0; i < nsel; i++) {
        run_case(&cases[i], &ctx, &m, use_obl, &res[i]);
        print_row(&res[i]);
    }
    printf("\n");
    bench_tsv("#gemm\tcase\tshape\tform\tM\tN\tK\tthreads\treps\tmedian_ms\tmin_ms\tmax_ms\tgflops\t"
              "frac_peak\tdnnl_ms\tdnnl_gflops\tours_over_dnnl\tdnnl_impl\tobl_ms\tobl_gflops\t"
              "ours_over_obl\tobl_core\tskx_ms\tskx_gflops\tours_over_skx\tskx_core\t"
              "maxrel_dnnl\tmaxrel_obl\tsample_err\tok");
    for (size_t i = 0; i < nsel; i++)
        print_tsv(&res[i], threads, m.peak);
    if (use_obl) {
        for (int mode = 0; mode < OBL_MODES; mode++)
            for (size_t i = 0; i < nsel; i++)
                if (res[i].obl[mode].ok) {
                    printf("%sOpenBLAS OPENBLAS_CORETYPE=%s run: core %s (%s)\n",
                           mode ? "" : "\n", obl_mode_names[mode], res[i].obl[mode].core,
                           res[i].obl[mode].config);
                    break;
                }
    }
    print_summary(res, nsel, &m);
    printf("gemm: cases took %.0f s\n", bench_now() - t0);
    int wrong = 0;
    for (size_t i = 0; i < nsel; i++)
        wrong += res[i].wrong;
    free(res);
    return wrong ? 1 : 0;
}
