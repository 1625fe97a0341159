/*
 * GPT-2 benchmark (the examples' model wiring, examples/common/gpt.c):
 *
 *   train  one full training step of the GPT-2 124M configuration (L=12,
 *          H=12, C=768, V=50257, T=64, B=4; forward, backward, AdamW), fp32,
 *          dropout 0: ms/step, GFLOP/s counting 6*N*B*T (N: parameters, the
 *          tied embedding once) plus attention 12*L*C*T per token, and the
 *          fraction of the FMA peak measured in the same run; beside it, in
 *          the same run, PyTorch's step for the same model (transformers'
 *          GPT2LMHeadModel, AdamW) in fp32 and under bf16 autocast, timed
 *          by test/bench/torch_gpt2_step.py in a child process (skipped,
 *          and said so, when torch or transformers is missing).
 *   decode tokens/s generating with the KV cache at batch 1 (16-token prompt,
 *          64 new tokens, greedy), against the memory-bandwidth bound: every
 *          new token reads all fp32 weights once (the tied embedding as the
 *          output layer), so tokens/s <= read bandwidth / weight bytes, with
 *          the read bandwidth (a sum over 512 MiB) measured right before
 *          the decoding (the triad of the run's start is shown too: on a
 *          shared machine bandwidth drifts between phases); the best of
 *          BENCH_GPT_DECODE_RUNS (5; 2 with BENCH_QUICK) runs from the same
 *          prompt counts, as the bandwidth is the best of its passes.
 *   memory peak resident set size after each phase (getrusage).
 *
 * Environment (besides the harness's): BENCH_GPT_STEPS (timed training
 * steps, default 5; 2 with BENCH_QUICK), BENCH_GPT_DECODE_RUNS (timed
 * generations, default 5; 2 with BENCH_QUICK), BENCH_GPT_TORCH=0 skips
 * PyTorch.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "gpt.h"
#include "harness.h"
#include "tblocks.h"

enum { L = 12, H = 12, C = 768, V = 50257, T = 64, B = 4 };

static double peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

typedef struct trainer {
    tb_ctx *ctx;
    gpt *m;
    gpt_acts *a;
    tb_adam *opt;
    int32_t *x, *y;
    int failed;
} trainer;

static void train_step(void *arg)
{
    trainer *t = arg;
    float loss;
    tb_param_list_zero_grad(&t->m->params);
    if (gpt_forward(t->ctx, t->m, t->a, TB_MODE_TRAINING, NULL, t->x, t->y, B, T, &loss) != TB_OK ||
        gpt_backward(t->ctx, t->m, t->a, t->x, t->y, 1.0f) != TB_OK ||
        tb_adam_step(t->ctx, t->opt, 1.0f) != TB_OK)
        t->failed = 1;
}

/* PyTorch's step times from the helper script; 0 when unavailable. */
static void torch_times(int threads, int reps, int avx2, double *fp32, double *bf16,
                        char *version, size_t cap)
{
    *fp32 = *bf16 = 0.0;
    snprintf(version, cap, "not run");
    if (bench_env_double("BENCH_GPT_TORCH", 1) == 0)
        return;
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "python3 test/bench/torch_gpt2_step.py %d %d %d %d %d %d %d %d %s 2>/dev/null", L, H,
             C, V, T, B, threads, reps, avx2 ? "avx2" : "native");
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    char line[256];
    while (fgets(line, sizeof line, p)) {
        double v;
        if (sscanf(line, "torch_fp32_ms %lf", &v) == 1)
            *fp32 = v;
        else if (sscanf(line, "torch_bf16_ms %lf", &v) == 1)
            *bf16 = v;
        else if (strncmp(line, "torch_version ", 14) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(version, cap, "%.100s", line + 14);
        }
    }
    if (pclose(p) != 0 && *fp32 == 0.0)
        snprintf(version, cap, "unavailable (torch or transformers not importable)");
}

int main(void)
{
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine mach;
    bench_machine_measure(&mach, &ctx);
    const int quick = bench_quick();
    const int steps = (int)bench_env_double("BENCH_GPT_STEPS", quick ? 2 : 5);
    gpt_config cfg = {L, H, C, 1024, V, 0.0f};
    tb_rng rng;
    tb_rng_init(&rng, 1);
    gpt m;
    gpt_acts a;
    tb_adam opt;
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = 1e-4f;
    oc.weight_decay = 0.1f;
    if (gpt_init(&ctx, &m, &cfg, &rng) != TB_OK || gpt_acts_init(&ctx, &a, &m, B, T) != TB_OK ||
        tb_adam_init(&ctx, &opt, &m.params, &oc) != TB_OK) {
        fprintf(stderr, "gpt bench: setup failed: %s\n", tb_ctx_error(&ctx));
        return 1;
    }
    const double n_params = (double)tb_param_list_numel(&m.params, 1);
    const double mem_setup = peak_rss_mib();
    int32_t *x = bench_alloc(B * T * sizeof(int32_t)), *y = bench_alloc(B * T * sizeof(int32_t));
    for (int i = 0; i < B * T; i++)
        x[i] = (int32_t)((i * 7919) % V), y[i] = (int32_t)((i * 104729 + 1) % V);
    const double flops = 6.0 * n_params * B * T + 12.0 * L * C * (double)T * B * T;
    printf("gpt: GPT-2 124M configuration (L=%d H=%d C=%d V=%d), %.1f M parameters, batch %d x "
           "%d tokens, fp32, dropout 0\n",
           L, H, C, V, n_params / 1e6, B, T);
    printf("gpt: %.1f GFLOP per training step (6 N B T + attention 12 L C T per token)\n",
           flops / 1e9);

    /* ---- training step ---- */
    trainer tr = {&ctx, &m, &a, &opt, x, y, 0};
    train_step(&tr); /* warm-up: first touches of every buffer */
    double ours = 0.0;
    if (bench_selected("gpt_train")) {
        double *ts = bench_alloc((size_t)steps * sizeof(double));
        for (int s = 0; s < steps; s++) {
            const double t0 = bench_now();
            train_step(&tr);
            ts[s] = bench_now() - t0;
        }
        for (int i = 0; i < steps; i++) /* median */
            for (int j = i + 1; j < steps; j++)
                if (ts[j] < ts[i]) {
                    const double tmp = ts[i];
                    ts[i] = ts[j], ts[j] = tmp;
                }
        ours = ts[steps / 2];
        if (tr.failed) {
            fprintf(stderr, "gpt bench: training step failed: %s\n", tb_ctx_error(&ctx));
            return 1;
        }
        printf("  %-28s %9.1f ms/step (min %.1f, max %.1f, %d steps)  %7.1f GFLOP/s  %5.1f%% of "
               "peak\n",
               "ours fp32", 1e3 * ours, 1e3 * ts[0], 1e3 * ts[steps - 1], steps, flops / ours / 1e9,
               bench_pct(flops / ours / 1e9, mach.peak));
        bench_tsv("gpt_train\tours_fp32\t%.3f\t%.2f\t%.2f", 1e3 * ours, flops / ours / 1e9,
                  bench_pct(flops / ours / 1e9, mach.peak));
        free(ts);
    }
    const double mem_train = peak_rss_mib();
    if (bench_selected("gpt_train")) {
        double tf, tb;
        char ver[160];
        /* Our AVX2 family meets PyTorch capped at AVX2: what it runs on an
         * AVX2-only CPU (torch_gpt2_step.py). */
        const int avx2 = mach.family == TB_KERNEL_AVX2;
        torch_times(ctx.num_threads, steps, avx2, &tf, &tb, ver, sizeof ver);
        if (tf > 0) {
            printf("  %-28s %9.1f ms/step                                 %7.1f GFLOP/s  (torch "
                   "%s%s)\n",
                   "PyTorch fp32", tf, flops / (tf * 1e-3) / 1e9, ver,
                   avx2 ? ", capped at AVX2" : "");
            if (tb > 0)
                printf("  %-28s %9.1f ms/step                                 %7.1f GFLOP/s\n",
                       "PyTorch bf16 autocast", tb, flops / (tb * 1e-3) / 1e9);
            else
                printf("  PyTorch bf16 autocast: not timed (AVX2: no bf16 hardware)\n");
            printf("  ours / PyTorch fp32: %.2fx faster", tf / (1e3 * ours));
            if (tb > 0)
                printf("; ours / PyTorch bf16 autocast: %.2fx", tb / (1e3 * ours));
            printf("\n");
            bench_tsv("gpt_train\ttorch_fp32\t%.3f\ttorch_bf16\t%.3f", tf, tb);
        } else {
            printf("  PyTorch: %s (skipped)\n", ver);
        }
        printf("  target: >= 1.5x faster than PyTorch fp32 in the same run (the AVX2 family: PyTorch "
               "capped at AVX2)\n");
    }

    /* ---- decoding with the KV cache ---- */
    gpt_acts_free(&a);
    if (bench_selected("gpt_decode")) {
        enum { PROMPT = 16, NEW = 64 };
        gpt_decoder d;
        if (gpt_decoder_init(&ctx, &d, &m, 1, PROMPT + NEW, PROMPT) != TB_OK) {
            fprintf(stderr, "gpt bench: decoder: %s\n", tb_ctx_error(&ctx));
            return 1;
        }
        int32_t tok[PROMPT];
        for (int i = 0; i < PROMPT; i++)
            tok[i] = (int32_t)((i * 31) % V);
        /* The ceiling of a pass that only reads the weights (the best of
         * its passes), measured right before (this machine's bandwidth
         * drifts between phases); the generation, like it, is timed
         * several times and its best run counts, each run from the same
         * prompt (every run must generate the same tokens). */
        const double read_bw = bench_read_bw(ctx.num_threads, (size_t)128 << 20);
        int runs = (int)bench_env_double("BENCH_GPT_DECODE_RUNS", bench_quick() ? 2 : 5);
        if (runs < 1)
            runs = 1;
        double el = INFINITY, run_s[64];
        if (runs > 64)
            runs = 64;
        int32_t first[NEW], got[NEW];
        for (int run = 0; run < runs; run++) {
            gpt_decoder_reset(&d);
            if (gpt_decoder_step(&ctx, &m, &d, tok, PROMPT, NULL) != TB_OK)
                return 1;
            const double t0 = bench_now();
            for (int i = 0; i < NEW; i++) {
                int32_t next = 0;
                for (int v = 1; v < V; v++)
                    if (d.logits[v] > d.logits[next])
                        next = v;
                got[i] = next;
                if (gpt_decoder_step(&ctx, &m, &d, &next, 1, NULL) != TB_OK)
                    return 1;
            }
            run_s[run] = bench_now() - t0;
            if (run_s[run] < el)
                el = run_s[run];
            if (run == 0)
                memcpy(first, got, sizeof first);
            else if (memcmp(first, got, sizeof first) != 0) {
                fprintf(stderr, "gpt bench: decoding run %d generated other tokens than run 0\n",
                        run);
                return 1;
            }
        }
        bench_sort(run_s, (size_t)runs);
        const double tps = NEW / el, tps_median = NEW / run_s[runs / 2];
        const double wbytes = n_params * 4.0, bound = read_bw * 1e9 / wbytes;
        const double tbound = mach.triad * 1e9 / wbytes;
        printf("  %-28s %9.1f tokens/s (%.1f ms/token); bandwidth bound %.1f tokens/s (%.0f MB "
               "of weights at the %.1f GB/s read bandwidth measured just before): %.0f%% of it\n",
               "decode, batch 1, KV cache", tps, 1e3 / tps, bound, wbytes / 1e6, read_bw,
               bench_pct(tps, bound));
        printf("  (best of %d runs of %d tokens, all generating the same tokens; median run "
               "%.1f tokens/s; against the triad bandwidth of the run's start, %.1f GB/s: "
               "%.0f%%)\n",
               runs, (int)NEW, tps_median, mach.triad, bench_pct(tps, tbound));
        printf("  target: >= 80%% of the bandwidth bound\n");
        bench_tsv("#gpt_decode\ttokens_per_s\tbound\tpct\tread_gbs\ttriad_bound\ttriad_pct");
        bench_tsv("gpt_decode\t%.2f\t%.2f\t%.1f\t%.2f\t%.2f\t%.1f", tps, bound,
                  bench_pct(tps, bound), read_bw, tbound, bench_pct(tps, tbound));
        gpt_decoder_free(&d);
    }
    printf("  peak resident memory: %.0f MiB after setup (weights, gradients, AdamW state, "
           "activations), %.0f MiB after training steps, %.0f MiB at the end (with the 512 MiB "
           "array of the read-bandwidth measurement)\n",
           mem_setup, mem_train, peak_rss_mib());
    tb_adam_free(&opt);
    gpt_free(&m);
    free(x), free(y);
    return 0;
}
