/*
 * Normalization benchmark: LayerNorm, and RMSNorm and BatchNorm (training
 * mode, batch statistics) for comparison, forward, backward and forward +
 * backward on (rows, C) = (4096, 768) (a GPT-2-small activation: 4 x 1024
 * positions) and (64, 4096) (few wide rows), timed by the shared harness
 * (harness.h).
 *
 * These blocks do a few flops per byte, so they are reported as bandwidth:
 * GB/s of the bytes each pass must minimally move, divided by the median
 * time, and that as a percentage of the triad bandwidth measured in the
 * same run. The byte count per pass:
 *   forward:  read x, write y (N*C floats each), write the cache, read the
 *             weight and bias (and, for BatchNorm, read and write the
 *             running statistics);
 *   backward: read x and dy, write dx (N*C floats each), read the cache and
 *             the weight, read and write the weight and bias gradients;
 *   fwd+bwd:  the sum of the two (five N*C-float streams).
 * The per-row cache and the per-channel vectors are small next to the N*C
 * streams. Passes that re-read x (two-pass statistics, BatchNorm's column
 * sums) move more than this in fact; when x fits in cache the re-reads are
 * cheap, and the (64, 4096) case (1 MiB per tensor) may run faster than
 * DRAM, i.e. above 100% of triad.
 *
 * One TSV line per case ("tsv\tnorm\t..."), plus a readable table.
 * BENCH_FILTER selects cases by name (e.g. layernorm, _bwd_, 64x4096),
 * BENCH_QUICK=1 runs only the first shape.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tblocks.h"

typedef enum kind { K_LAYER, K_RMS, K_BATCH, K_COUNT } kind;
typedef enum pass { P_FWD, P_BWD, P_FWDBWD, P_COUNT } pass;

static const char *const kind_names[K_COUNT] = {"layernorm", "rmsnorm", "batchnorm"};
static const char *const pass_names[P_COUNT] = {"fwd", "bwd", "fwdbwd"};

typedef struct norm_run {
    tb_ctx *ctx;
    kind k;
    pass p;
    tb_layernorm *ln;
    tb_rmsnorm *rn;
    tb_batchnorm *bn;
    tb_tensor *x, *y, *dy, *dx;
    void *cache;
    size_t cache_bytes;
} norm_run;

static void check(tb_ctx *ctx, tb_status s, const char *what)
{
    if (s != TB_OK) {
        fprintf(stderr, "bench_norm: %s: %s (%s)\n", what, tb_strerror(s), tb_ctx_error(ctx));
        exit(1);
    }
}

static void forward(norm_run *r)
{
    tb_status s = TB_OK;
    switch (r->k) {
    case K_LAYER:
        s = tb_layernorm_forward(r->ctx, r->ln, r->x, r->y, r->cache, r->cache_bytes);
        break;
    case K_RMS:
        s = tb_rmsnorm_forward(r->ctx, r->rn, r->x, r->y, r->cache, r->cache_bytes);
        break;
    default:
        s = tb_batchnorm_forward(r->ctx, r->bn, TB_MODE_TRAINING, r->x, NULL, r->y, r->cache,
                                 r->cache_bytes);
        break;
    }
    check(r->ctx, s, "forward");
}

static void backward(norm_run *r)
{
    tb_status s = TB_OK;
    switch (r->k) {
    case K_LAYER:
        s = tb_layernorm_backward(r->ctx, r->ln, r->x, r->dy, r->cache, r->cache_bytes, r->dx);
        break;
    case K_RMS:
        s = tb_rmsnorm_backward(r->ctx, r->rn, r->x, r->dy, r->cache, r->cache_bytes, r->dx);
        break;
    default:
        s = tb_batchnorm_backward(r->ctx, r->bn, r->x, NULL, r->dy, r->cache, r->cache_bytes,
                                  r->dx);
        break;
    }
    check(r->ctx, s, "backward");
}

static void run_pass(void *arg)
{
    norm_run *r = arg;
    if (r->p != P_BWD)
        forward(r);
    if (r->p != P_FWD)
        backward(r);
}

/* Minimal bytes of one pass (see the header comment). */
static double pass_bytes(kind k, pass p, size_t n, size_t c, size_t cache_bytes)
{
    const double f = sizeof(float), nc = (double)n * (double)c * f, vec = (double)c * f;
    /* per-channel vectors: parameters read by forward; BatchNorm's running
     * statistics read and written */
    const double nparam = k == K_RMS ? 1 : 2;
    const double fwd = 2 * nc + (double)cache_bytes + nparam * vec + (k == K_BATCH ? 4 * vec : 0);
    /* backward: weight read, gradients read and written */
    const double bwd = 3 * nc + (double)cache_bytes + vec + 2 * nparam * vec;
    return p == P_FWD ? fwd : p == P_BWD ? bwd : fwd + bwd;
}

static void case_name(char *buf, size_t len, kind k, pass p, size_t n, size_t c)
{
    snprintf(buf, len, "%s_%s_%zux%zu", kind_names[k], pass_names[p], n, c);
}

int main(void)
{
    static const size_t shapes[][2] = {{4096, 768}, {64, 4096}}; /* rows, C */
    const size_t nshapes = bench_quick() ? 1 : sizeof shapes / sizeof shapes[0];
    char name[64];
    int any = 0;
    for (size_t s = 0; s < nshapes; s++)
        for (int k = 0; k < K_COUNT; k++)
            for (int p = 0; p < P_COUNT; p++) {
                case_name(name, sizeof name, (kind)k, (pass)p, shapes[s][0], shapes[s][1]);
                any |= bench_selected(name);
            }
    if (!any) {
        printf("norm: no case matches BENCH_FILTER\n");
        return 0;
    }
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine m;
    bench_machine_measure(&m, &ctx);
    printf("norm: GB/s of the minimal traffic (x, y / x, dy, dx, caches, vectors); "
           "%% of the %.1f GB/s triad\n",
           m.triad);
    bench_tsv("#norm\tcase\tthreads\treps\tmedian_ms\tmin_ms\tmax_ms\tbytes\tgbs\tfrac_of_triad");
    printf("  %-28s %9s %21s %9s %8s\n", "case", "median ms", "(min..max)", "GB/s",
           "% triad");
    tb_rng rng;
    tb_rng_init(&rng, 1);
    for (size_t s = 0; s < nshapes; s++) {
        const size_t n = shapes[s][0], c = shapes[s][1];
        float *x = bench_alloc(n * c * sizeof(float)), *y = bench_alloc(n * c * sizeof(float));
        float *dy = bench_alloc(n * c * sizeof(float)), *dx = bench_alloc(n * c * sizeof(float));
        check(&ctx, tb_rng_fill_normal(&ctx, &rng, x, n * c, 0.5f, 2.0f), "fill x");
        check(&ctx, tb_rng_fill_uniform(&ctx, &rng, dy, n * c, -1.0f, 1.0f), "fill dy");
        memset(y, 0, n * c * sizeof(float));
        memset(dx, 0, n * c * sizeof(float));
        tb_tensor xt = tb_tensor_2d(x, n, c), yt = tb_tensor_2d(y, n, c);
        tb_tensor dyt = tb_tensor_2d(dy, n, c), dxt = tb_tensor_2d(dx, n, c);
        for (int k = 0; k < K_COUNT; k++) {
            tb_layernorm ln;
            tb_rmsnorm rn;
            tb_batchnorm bn;
            memset(&ln, 0, sizeof ln);
            memset(&rn, 0, sizeof rn);
            memset(&bn, 0, sizeof bn);
            size_t cache_bytes = 0;
            if (k == K_LAYER) {
                check(&ctx, tb_layernorm_init(&ctx, &ln, c, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT),
                      "layernorm init");
                check(&ctx, tb_layernorm_cache_size(n, &cache_bytes), "cache size");
            } else if (k == K_RMS) {
                check(&ctx, tb_rmsnorm_init(&ctx, &rn, c, 1e-6f, TB_NORM_SCALE), "rmsnorm init");
                check(&ctx, tb_rmsnorm_cache_size(n, &cache_bytes), "cache size");
            } else {
                check(&ctx, tb_batchnorm_init(&ctx, &bn, c, 1e-5f, 0.1f,
                                              TB_NORM_SCALE | TB_NORM_SHIFT),
                      "batchnorm init");
                check(&ctx, tb_batchnorm_cache_size(c, &cache_bytes), "cache size");
            }
            void *cache = bench_alloc(cache_bytes);
            norm_run r = {&ctx, (kind)k, P_FWD, &ln, &rn, &bn, &xt, &yt, &dyt, &dxt, cache,
                          cache_bytes};
            forward(&r); /* fills the cache the backward-only case reads */
            for (int p = 0; p < P_COUNT; p++) {
                case_name(name, sizeof name, (kind)k, (pass)p, n, c);
                if (!bench_selected(name))
                    continue;
                r.p = (pass)p;
                bench_stats st = bench_time(run_pass, &r);
                const double bytes = pass_bytes((kind)k, (pass)p, n, c, cache_bytes);
                const double gbs = bytes / st.median * 1e-9;
                bench_tsv("norm\t%s\t%d\t%d\t%.4f\t%.4f\t%.4f\t%.0f\t%.2f\t%.4f", name, m.threads,
                          st.reps, st.median * 1e3, st.min * 1e3, st.max * 1e3, bytes, gbs,
                          bench_pct(gbs, m.triad) / 100);
                char range[48];
                snprintf(range, sizeof range, "(%.4f..%.4f)", st.min * 1e3, st.max * 1e3);
                printf("  %-28s %9.4f %21s %9.1f %7.1f%%\n", name, st.median * 1e3, range, gbs,
                       bench_pct(gbs, m.triad));
                fflush(stdout);
            }
            free(cache);
            tb_layernorm_free(&ln);
            tb_rmsnorm_free(&rn);
            tb_batchnorm_free(&bn);
        }
        free(x), free(y), free(dy), free(dx);
    }
    return 0;
}
