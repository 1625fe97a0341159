/*
 * Linear-layer benchmark: forward and backward of tb_linear at a few GPT-2
 * sizes, timed by the shared harness (harness.h) and reported as a fraction
 * of the machine's fp32 FMA peak measured in the same run. One TSV line per
 * case ("tsv\tlinear\t..."), plus a readable table. BENCH_FILTER selects
 * cases by name (e.g. linear_fwd), BENCH_QUICK=1 runs the first two sizes.
 */
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"
#include "tblocks.h"

typedef struct linear_run {
    tb_ctx *ctx;
    tb_linear *lin;
    tb_tensor *x, *y, *dx;
    int backward;
} linear_run;

static void run_linear(void *arg)
{
    linear_run *r = arg;
    tb_status s = r->backward ? tb_linear_backward(r->ctx, r->lin, r->x, r->y, r->dx)
                              : tb_linear_forward(r->ctx, r->lin, r->x, r->y);
    if (s != TB_OK) {
        fprintf(stderr, "bench_linear: %s\n", tb_ctx_error(r->ctx));
        exit(1);
    }
}

static void case_name(char *buf, size_t len, int backward, const size_t *c)
{
    snprintf(buf, len, "linear_%s_%zux%zux%zu", backward ? "bwd" : "fwd", c[0], c[1], c[2]);
}

int main(void)
{
    static const size_t cases[][3] = {/* rows, in, out */
                                      {64, 768, 768},
                                      {256, 768, 2304},
                                      {256, 768, 3072},
                                      {256, 3072, 768},
                                      {1024, 768, 768}};
    size_t ncases = bench_quick() ? 2 : sizeof cases / sizeof cases[0];
    char name[64];
    int any = 0;
    for (size_t c = 0; c < 2 * ncases; c++) {
        case_name(name, sizeof name, (int)(c & 1), cases[c / 2]);
        any |= bench_selected(name);
    }
    if (!any) {
        printf("linear: no case matches BENCH_FILTER\n");
        return 0;
    }
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine m;
    bench_machine_measure(&m, &ctx);
    printf("linear: kernel family %s\n", tb_kernel_name(tb_ctx_kernel(&ctx)));
    bench_tsv("#linear\tcase\tthreads\treps\tmedian_ms\tmin_ms\tmax_ms\tgflops\tfrac_of_peak");
    tb_rng rng;
    tb_rng_init(&rng, 1);
    for (size_t c = 0; c < ncases; c++) {
        size_t n = cases[c][0], in = cases[c][1], out = cases[c][2];
        tb_linear lin;
        if (tb_linear_init(&ctx, &lin, in, out, 1, &rng) != TB_OK) {
            fprintf(stderr, "init failed: %s\n", tb_ctx_error(&ctx));
            return 1;
        }
        float *x = bench_alloc(n * in * sizeof(float)), *y = bench_alloc(n * out * sizeof(float));
        float *dx = bench_alloc(n * in * sizeof(float));
        tb_rng_fill_uniform(&ctx, &rng, x, n * in, -1, 1);
        tb_tensor xt = tb_tensor_2d(x, n, in), yt = tb_tensor_2d(y, n, out),
                  dxt = tb_tensor_2d(dx, n, in);
        for (int pass = 0; pass < 2; pass++) {
            case_name(name, sizeof name, pass, cases[c]);
            if (!bench_selected(name))
                continue;
            if (pass == 1) /* a defined upstream gradient */
                tb_rng_fill_uniform(&ctx, &rng, y, n * out, -1, 1);
            linear_run r = {&ctx, &lin, &xt, &yt, &dxt, pass};
            bench_stats s = bench_time(run_linear, &r);
            double gf = 2.0 * (double)n * (double)in * (double)out * (pass ? 2 : 1) / s.median * 1e-9;
            bench_tsv("linear\t%s\t%d\t%d\t%.3f\t%.3f\t%.3f\t%.2f\t%.4f", name, m.threads, s.reps,
                      s.median * 1e3, s.min * 1e3, s.max * 1e3, gf, bench_pct(gf, m.peak) / 100);
            printf("  %-28s %9.3f ms (%.3f..%.3f) %8.1f GFLOP/s %6.1f%% of peak\n", name,
                   s.median * 1e3, s.min * 1e3, s.max * 1e3, gf, bench_pct(gf, m.peak));
            fflush(stdout);
        }
        free(x), free(y), free(dx);
        tb_linear_free(&lin);
    }
    return 0;
}
