/*
 * LSTM benchmark: forward + backward through time of a 2-layer
 * bidirectional LSTM, B = 32, T = 64, in = H = 256 (the shape), all
 * lengths T, dropout 0: time, GFLOP/s counting the GEMM work (forward: the
 * input projections 2 B T 4H in_l and the recurrence 2 B T 4H H per layer
 * and direction; backward twice that), and the fraction of the FMA peak
 * measured in the same run; beside it torch.nn.LSTM on the same shapes,
 * timed by test/bench/torch_lstm.py in a child process in the same run
 * (skipped, and said so, without torch); against our AVX2 family, PyTorch
 * capped at AVX2. BENCH_LSTM_TORCH=0 skips PyTorch.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tblocks.h"

enum { B = 32, T = 64, IN = 256, H = 256, LAYERS = 2, BI = 1 };

typedef struct run {
    tb_ctx *ctx;
    tb_lstm *m;
    tb_tensor *x, *y, *dy, *dx;
    void *cache;
    size_t cache_bytes;
} run;

static void step(void *arg)
{
    run *r = arg;
    if (tb_lstm_forward(r->ctx, r->m, TB_MODE_TRAINING, NULL, r->x, NULL, NULL, NULL, r->y, NULL,
                        NULL, r->cache, r->cache_bytes) != TB_OK ||
        tb_lstm_backward(r->ctx, r->m, r->x, NULL, NULL, NULL, r->dy, NULL, NULL, r->dx, NULL,
                         NULL, r->cache, r->cache_bytes) != TB_OK) {
        fprintf(stderr, "bench_lstm: %s\n", tb_ctx_error(r->ctx));
        exit(1);
    }
}

static double torch_ms(int threads, int reps, int avx2, char *ver, size_t cap)
{
    snprintf(ver, cap, "not run");
    if (bench_env_double("BENCH_LSTM_TORCH", 1) == 0)
        return 0.0;
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "python3 test/bench/torch_lstm.py %d %d %d %d %d %d %d %d %s 2>/dev/null", B, T, IN,
             H, LAYERS, BI, threads, reps, avx2 ? "avx2" : "native");
    FILE *p = popen(cmd, "r");
    if (!p)
        return 0.0;
    char line[256];
    double ms = 0.0;
    while (fgets(line, sizeof line, p)) {
        double v;
        if (sscanf(line, "torch_lstm_ms %lf", &v) == 1)
            ms = v;
        else if (strncmp(line, "torch_version ", 14) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(ver, cap, "%.100s", line + 14);
        }
    }
    if (pclose(p) != 0 && ms == 0.0)
        snprintf(ver, cap, "unavailable (torch not importable)");
    return ms;
}

int main(void)
{
    if (!bench_selected("lstm")) {
        printf("lstm: no case matches BENCH_FILTER\n");
        return 0;
    }
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine mach;
    bench_machine_measure(&mach, &ctx);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    const size_t D = BI ? 2 : 1;
    tb_lstm_config cfg = {IN, H, LAYERS, BI, 0.0f};
    tb_lstm m;
    size_t cb;
    if (tb_lstm_init(&ctx, &m, &cfg, &rng) != TB_OK || tb_lstm_cache_size(&m, B, T, &cb) != TB_OK) {
        fprintf(stderr, "bench_lstm: %s\n", tb_ctx_error(&ctx));
        return 1;
    }
    float *x = bench_alloc((size_t)B * T * IN * sizeof(float));
    float *dx = bench_alloc((size_t)B * T * IN * sizeof(float));
    float *y = bench_alloc((size_t)B * T * D * H * sizeof(float));
    float *dy = bench_alloc((size_t)B * T * D * H * sizeof(float));
    void *cache = bench_alloc(cb);
    tb_rng_fill_uniform(&ctx, &rng, x, (size_t)B * T * IN, -1, 1);
    tb_rng_fill_uniform(&ctx, &rng, dy, (size_t)B * T * D * H, -1, 1);
    tb_tensor xt = tb_tensor_3d(x, B, T, IN), yt = tb_tensor_3d(y, B, T, D * H);
    tb_tensor dyt = tb_tensor_3d(dy, B, T, D * H), dxt = tb_tensor_3d(dx, B, T, IN);
    run r = {&ctx, &m, &xt, &yt, &dyt, &dxt, cache, cb};
    double fwd = 0.0;
    for (size_t l = 0; l < LAYERS; l++)
        fwd += (double)D * 2.0 * B * T * 4.0 * H * ((l ? (double)D * H : IN) + H);
    const double flops = 3.0 * fwd;
    const bench_stats s = bench_time(step, &r);
    const double gf = flops / s.median * 1e-9;
    printf("lstm: %d layers, %s, B=%d T=%d in=%d H=%d, fp32, forward + backward; kernel family "
           "%s, %s, %d threads\n",
           LAYERS, BI ? "bidirectional" : "unidirectional", B, T, IN, H,
           tb_kernel_name(mach.family), mach.cpu, mach.threads);
    printf("  %-20s %9.3f ms (%.3f..%.3f, %d reps)  %7.1f GFLOP/s  %5.1f%% of peak\n", "ours",
           s.median * 1e3, s.min * 1e3, s.max * 1e3, s.reps, gf, bench_pct(gf, mach.peak));
    char ver[160];
    const int avx2 = mach.family == TB_KERNEL_AVX2; /* PyTorch capped at AVX2 too */
    const double tm = torch_ms(ctx.num_threads, s.reps < 5 ? 5 : s.reps, avx2, ver, sizeof ver);
    if (tm > 0) {
        printf("  %-20s %9.3f ms                          %7.1f GFLOP/s  (torch %s)\n",
               "torch.nn.LSTM", tm, flops / (tm * 1e-3) * 1e-9, ver);
        printf("  ours / PyTorch: %.2fx faster (target: > 1)\n", tm / (s.median * 1e3));
    } else {
        printf("  torch.nn.LSTM: %s (skipped)\n", ver);
    }
    bench_tsv("#lstm\tB\tT\tin\tH\tlayers\tdirs\tmedian_ms\tgflops\tpct_peak\ttorch_ms");
    bench_tsv("lstm\t%d\t%d\t%d\t%d\t%d\t%zu\t%.3f\t%.2f\t%.2f\t%.3f", B, T, IN, H, LAYERS, D,
              s.median * 1e3, gf, bench_pct(gf, mach.peak), tm);
    free(x), free(dx), free(y), free(dy), free(cache);
    tb_lstm_free(&m);
    return 0;
}
