/*
 * Optimizer benchmark: one tb_adam_step() over the GPT-2 124M parameters
 * (the token and position embeddings and 12 layers' four weight matrices,
 * as separate parameters the way the GPT example lists them), AdamW and
 * AdamW with AMSGrad, timed by the shared harness (harness.h).
 *
 * A step does a few flops per element and moves every element's state, so
 * it is reported as bandwidth: GB/s of the bytes a step must minimally
 * move, over the median time, and that as a percentage of the triad
 * bandwidth measured in the same run. Per element: the overflow guard
 * reads the gradient, value, m and v (and vmax with AMSGrad): 16 (20)
 * bytes; the update reads them again and writes the value, m and v (and
 * vmax): 28 (36) bytes; 44 (56) in all.
 *
 * One TSV line per case ("tsv\tadam\t..."), plus a readable table.
 * BENCH_FILTER selects cases by name (adamw, amsgrad); BENCH_QUICK=1 runs
 * the embedding matrix alone (38.6 M parameters).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tblocks.h"

#define N_LAYER 12
#define N_PARAMS (2 + 4 * N_LAYER)

static void check(tb_ctx *ctx, tb_status s, const char *what)
{
    if (s != TB_OK) {
        fprintf(stderr, "bench_adam: %s: %s (%s)\n", what, tb_strerror(s), tb_ctx_error(ctx));
        exit(1);
    }
}

typedef struct adam_run {
    tb_ctx *ctx;
    tb_adam *opt;
} adam_run;

static void run_step(void *arg)
{
    adam_run *r = arg;
    check(r->ctx, tb_adam_step(r->ctx, r->opt, 1.0f), "step");
}

int main(void)
{
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine m;
    bench_machine_measure(&m, &ctx);
    /* (rows, cols) of each parameter: wte, wpe, then per layer c_attn,
     * c_proj, c_fc, c_fc's projection back. */
    size_t shape[N_PARAMS][2];
    size_t np = 0;
    shape[np][0] = 50257, shape[np++][1] = 768;
    if (!bench_quick()) {
        shape[np][0] = 1024, shape[np++][1] = 768;
        for (int l = 0; l < N_LAYER; l++) {
            shape[np][0] = 768, shape[np++][1] = 2304;
            shape[np][0] = 768, shape[np++][1] = 768;
            shape[np][0] = 768, shape[np++][1] = 3072;
            shape[np][0] = 3072, shape[np++][1] = 768;
        }
    }
    size_t total = 0;
    for (size_t i = 0; i < np; i++)
        total += shape[i][0] * shape[i][1];
    float *value = bench_alloc(total * sizeof(float)), *grad = bench_alloc(total * sizeof(float));
    tb_rng rng;
    tb_rng_init(&rng, 7);
    check(&ctx, tb_rng_fill_normal(&ctx, &rng, value, total, 0.0f, 0.02f), "fill values");
    check(&ctx, tb_rng_fill_normal(&ctx, &rng, grad, total, 0.0f, 1e-3f), "fill gradients");
    static tb_param params[N_PARAMS];
    tb_param_list list;
    check(&ctx, tb_param_list_init(&ctx, &list), "list");
    size_t at = 0;
    for (size_t i = 0; i < np; i++) {
        char name[16];
        snprintf(name, sizeof name, "p%zu", i);
        check(&ctx, tb_param_view(&ctx, &params[i], value + at, grad + at, 2, shape[i]), "view");
        check(&ctx, tb_param_list_add(&ctx, &list, NULL, name, &params[i]), "add");
        at += shape[i][0] * shape[i][1];
    }
    printf("adam: %zu parameters in %zu tensors (GPT-2 124M%s), one tb_adam_step per repetition\n",
           total, np, bench_quick() ? ": the embedding matrix alone, BENCH_QUICK" : "");
    printf("adam: GB/s of the minimal traffic (44 bytes per parameter, 56 with AMSGrad) over "
           "the median; %% of the %.1f GB/s triad\n",
           m.triad);
    printf("  %-28s %9s %21s %9s %8s\n", "case", "median ms", "(min..max)", "GB/s", "% triad");
    bench_tsv("#adam\tcase\tthreads\treps\tmedian_ms\tmin_ms\tmax_ms\tbytes\tgbs\ttriad_frac");
    static const char *const names[2] = {"adamw", "adamw_amsgrad"};
    for (int amsgrad = 0; amsgrad < 2; amsgrad++) {
        if (!bench_selected(names[amsgrad]))
            continue;
        tb_adam_config cfg = tb_adamw_default_config();
        cfg.amsgrad = amsgrad;
        tb_adam opt;
        check(&ctx, tb_adam_init(&ctx, &opt, &list, &cfg), "init");
        adam_run r = {&ctx, &opt};
        const bench_stats st = bench_time(run_step, &r);
        const double bytes = (double)total * (amsgrad ? 56.0 : 44.0);
        const double gbs = bytes / st.median * 1e-9;
        bench_tsv("adam\t%s\t%d\t%d\t%.3f\t%.3f\t%.3f\t%.0f\t%.2f\t%.4f", names[amsgrad],
                  m.threads, st.reps, st.median * 1e3, st.min * 1e3, st.max * 1e3, bytes, gbs,
                  bench_pct(gbs, m.triad) / 100);
        char range[48];
        snprintf(range, sizeof range, "(%.1f..%.1f)", st.min * 1e3, st.max * 1e3);
        printf("  %-28s %9.1f %21s %9.1f %7.1f%%\n", names[amsgrad], st.median * 1e3, range, gbs,
               bench_pct(gbs, m.triad));
        fflush(stdout);
        tb_adam_free(&opt);
    }
    tb_param_list_free(&list);
    for (size_t i = 0; i < np; i++)
        tb_param_free(&params[i]);
    free(value), free(grad);
    return 0;
}
