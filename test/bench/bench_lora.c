/*
 * LoRA benchmark.
 *
 *   layer  forward + backward of a LoRA layer (r = 8, dropout 0, GPT-2's
 *          (in, out) layout) against the frozen base Linear's forward +
 *          input gradient in the same run, on GPT-2 shapes: in C = 768,
 *          out C, 3C and 4C, 256 and 1024 rows. The extra time is the
 *          rank-8 products (and reading x and dy once more). Target: at
 *          most 15% more than the base.
 *   gpt    one GPT-2 124M training step (B = 4, T = 64, fp32, AdamW,
 *          dropout 0) with LoRA r = 8 on every c_attn and everything else
 *          frozen (tfm_freeze: no gradient buffer left), against full fine-tuning of the same model in the same
 *          run: time per step, and the bytes of gradients + optimizer state
 *          actually allocated; beside it PEFT + PyTorch for the same model
 *          (test/bench/torch_gpt2_step.py in "lora" mode), skipped and said
 *          so when torch, transformers or peft is missing.
 *
 * Environment (besides the harness's): BENCH_GPT_STEPS (timed training
 * steps, default 5; 2 with BENCH_QUICK), BENCH_GPT_TORCH=0 skips PyTorch.
 * BENCH_FILTER=lora_layer or lora_gpt picks one part.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt.h"
#include "harness.h"
#include "tblocks.h"
#include "tfm_lora.h"

enum { RANK = 8 };

static void die(const tb_ctx *ctx, const char *what)
{
    fprintf(stderr, "bench_lora: %s: %s\n", what, tb_ctx_error(ctx));
    exit(1);
}

/* ---- layer ---- */

typedef struct layer_run {
    tb_ctx *ctx;
    tb_linear *lin;
    tb_lora *lora; /* NULL: the frozen base layer alone */
    tb_tensor *x, *y, *dy, *dx;
    void *cache;
    size_t cache_bytes;
} layer_run;

static void run_layer(void *arg)
{
    layer_run *r = arg;
    tb_status s;
    if (!r->lora)
        s = tb_linear_forward(r->ctx, r->lin, r->x, r->y) == TB_OK
                ? tb_linear_backward(r->ctx, r->lin, r->x, r->dy, r->dx)
                : TB_ERR_STATE;
    else
        s = tb_lora_forward(r->ctx, r->lora, TB_MODE_TRAINING, NULL, r->x, r->y, r->cache,
                            r->cache_bytes) == TB_OK
                ? tb_lora_backward(r->ctx, r->lora, r->x, r->dy, r->dx, r->cache,
                                   r->cache_bytes)
                : TB_ERR_STATE;
    if (s != TB_OK)
        die(r->ctx, "layer run");
}

static void bench_layers(tb_ctx *ctx, const bench_machine *m)
{
    static const size_t cases[][2] = {{256, 768}, {256, 2304}, {256, 3072},
                                      {1024, 768}, {1024, 2304}, {1024, 3072}};
    const size_t n_cases = bench_quick() ? 3 : sizeof cases / sizeof cases[0];
    const size_t in = 768;
    printf("lora layer: r = %d, in = %zu, (in, out) layout, dropout 0; base = frozen Linear "
           "forward + input gradient, lora = tb_lora forward + backward (dx, dA, dB)\n",
           RANK, in);
    printf("  %-22s %10s %10s %9s\n", "case", "base ms", "lora ms", "overhead");
    bench_tsv("#lora_layer\tcase\trows\tin\tout\tbase_ms\tlora_ms\toverhead_pct");
    double worst = 0.0;
    int ran = 0;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    for (size_t c = 0; c < n_cases; c++) {
        const size_t R = cases[c][0], out = cases[c][1];
        char name[64];
        snprintf(name, sizeof name, "lora_layer_%zux%zux%zu", R, in, out);
        if (!bench_selected(name))
            continue;
        tb_linear lin;
        tb_lora lora;
        tb_lora_config cfg = tb_lora_config_default(RANK);
        cfg.alpha = 16.0f;
        cfg.init = TB_LORA_INIT_RANDOM; /* B != 0: every product does real work */
        if (tb_linear_init_layout(ctx, &lin, in, out, 1, TB_LINEAR_IN_OUT, &rng) != TB_OK ||
            tb_lora_init(ctx, &lora, &lin) != TB_OK ||
            tb_lora_add(ctx, &lora, "default", &cfg, &rng) != TB_OK)
            die(ctx, "setup");
        float *x = bench_alloc(R * in * sizeof(float)), *dx = bench_alloc(R * in * sizeof(float));
        float *y = bench_alloc(R * out * sizeof(float)), *dy = bench_alloc(R * out * sizeof(float));
        tb_rng_fill_uniform(ctx, &rng, x, R * in, -1, 1);
        tb_rng_fill_uniform(ctx, &rng, dy, R * out, -1, 1);
        size_t cb;
        if (tb_lora_cache_size(&lora, R, &cb) != TB_OK)
            die(ctx, "cache size");
        void *cache = bench_alloc(cb);
        tb_tensor xt = tb_tensor_2d(x, R, in), yt = tb_tensor_2d(y, R, out);
        tb_tensor dyt = tb_tensor_2d(dy, R, out), dxt = tb_tensor_2d(dx, R, in);
        layer_run base = {ctx, &lin, NULL, &xt, &yt, &dyt, &dxt, NULL, 0};
        layer_run with = {ctx, &lin, &lora, &xt, &yt, &dyt, &dxt, cache, cb};
        /* Interleaved, twice each, the better of each kept: a shared
         * machine's drift then hits both alike. */
        double tb_ms = 1e30, tl_ms = 1e30;
        for (int rep = 0; rep < 2; rep++) {
            const bench_stats sb = bench_time(run_layer, &base);
            const bench_stats sl = bench_time(run_layer, &with);
            tb_ms = sb.median * 1e3 < tb_ms ? sb.median * 1e3 : tb_ms;
            tl_ms = sl.median * 1e3 < tl_ms ? sl.median * 1e3 : tl_ms;
        }
        const double over = 100.0 * (tl_ms / tb_ms - 1.0);
        ran = 1;
        worst = over > worst ? over : worst;
        printf("  %-22s %10.3f %10.3f %8.1f%%\n", name + 11, tb_ms, tl_ms, over);
        bench_tsv("lora_layer\t%s\t%zu\t%zu\t%zu\t%.4f\t%.4f\t%.2f", name, R, in, out, tb_ms,
                  tl_ms, over);
        fflush(stdout);
        free(x), free(dx), free(y), free(dy), free(cache);
        tb_lora_free(&lora);
        tb_linear_free(&lin);
    }
    if (ran)
        printf("  worst overhead %.1f%% (target: <= 15%%); kernel family %s, %s, %d threads\n",
               worst, tb_kernel_name(m->family), m->cpu, m->threads);
}

/* ---- GPT-2 124M step ---- */

enum { L = 12, H = 12, C = 768, V = 50257, T = 64, B = 4 };

typedef struct trainer {
    tb_ctx *ctx;
    gpt *m;
    gpt_acts *a;
    tb_adam *opt;
    tb_param_list *trainable;
    int32_t *x, *y;
} trainer;

static void train_step(void *arg)
{
    trainer *t = arg;
    float loss;
    tb_param_list_zero_grad(t->trainable);
    if (gpt_forward(t->ctx, t->m, t->a, TB_MODE_TRAINING, NULL, t->x, t->y, B, T, &loss) != TB_OK ||
        gpt_backward(t->ctx, t->m, t->a, t->x, t->y, 1.0f) != TB_OK ||
        tb_adam_step(t->ctx, t->opt, 1.0f) != TB_OK)
        die(t->ctx, "training step");
}

/* Bytes of gradient buffers the list's trainable entries have, and of the
 * optimizer's state (Adam: two moments per trainable scalar). */
static size_t grad_bytes(const tb_param_list *list)
{
    return tb_param_list_numel(list, 1) * sizeof(float);
}

static double median_step(trainer *tr, int steps)
{
    double ts[64];
    if (steps > 64)
        steps = 64;
    train_step(tr); /* warm-up */
    for (int s = 0; s < steps; s++) {
        const double t0 = bench_now();
        train_step(tr);
        ts[s] = bench_now() - t0;
    }
    for (int i = 0; i < steps; i++)
        for (int j = i + 1; j < steps; j++)
            if (ts[j] < ts[i]) {
                const double tmp = ts[i];
                ts[i] = ts[j], ts[j] = tmp;
            }
    return ts[steps / 2];
}

/* PEFT + PyTorch's LoRA step and full step (ms), 0 when unavailable. */
static void torch_lora_times(int threads, int reps, int avx2, double *lora_ms, double *full_ms,
                             char *version, size_t cap)
{
    *lora_ms = *full_ms = 0.0;
    snprintf(version, cap, "not run");
    if (bench_env_double("BENCH_GPT_TORCH", 1) == 0)
        return;
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "python3 test/bench/torch_gpt2_step.py %d %d %d %d %d %d %d %d %s lora%d 2>/dev/null",
             L, H, C, V, T, B, threads, reps, avx2 ? "avx2" : "native", RANK);
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    char line[256];
    while (fgets(line, sizeof line, p)) {
        double v;
        if (sscanf(line, "torch_lora_ms %lf", &v) == 1)
            *lora_ms = v;
        else if (sscanf(line, "torch_fp32_ms %lf", &v) == 1)
            *full_ms = v;
        else if (strncmp(line, "torch_version ", 14) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(version, cap, "%.120s", line + 14);
        }
    }
    if (pclose(p) != 0 && *lora_ms == 0.0)
        snprintf(version, cap, "unavailable (torch, transformers or peft not importable)");
}

static void bench_gpt_lora(tb_ctx *ctx, const bench_machine *mach)
{
    const int steps = (int)bench_env_double("BENCH_GPT_STEPS", bench_quick() ? 2 : 5);
    const gpt_config cfg = {L, H, C, 1024, V, 0.0f};
    int32_t *x = bench_alloc(B * T * sizeof(int32_t)), *y = bench_alloc(B * T * sizeof(int32_t));
    for (int i = 0; i < B * T; i++)
        x[i] = (int32_t)((i * 7919) % V), y[i] = (int32_t)((i * 104729 + 1) % V);
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = 1e-4f;
    oc.weight_decay = 0.1f;
    printf("lora gpt: GPT-2 124M (L=%d H=%d C=%d V=%d), batch %d x %d, fp32, AdamW, dropout 0; "
           "LoRA r = %d, alpha 16 on every attn.c_attn, everything else frozen\n",
           L, H, C, V, B, T, RANK);
    double ms[2] = {0, 0};
    size_t gbytes[2] = {0, 0}, obytes[2] = {0, 0}, trainable[2] = {0, 0};
    for (int lora_on = 0; lora_on < 2; lora_on++) {
        tb_rng rng;
        tb_rng_init(&rng, 1);
        gpt m;
        gpt_acts a;
        tb_adam opt;
        tfm_lora tl;
        tfm_lora_init(&tl);
        tb_param_list list;
        if (gpt_init(ctx, &m, &cfg, &rng) != TB_OK || tb_param_list_init(ctx, &list) != TB_OK)
            die(ctx, "gpt setup");
        if (lora_on) {
            static const char *const targets[] = {"c_attn"};
            tfm_lora_spec spec = {targets, 1, tb_lora_config_default(RANK), NULL, NULL, 0,
                                  NULL, NULL, 0};
            spec.config.alpha = 16.0f;
            /* The whole model frozen with its gradient buffers released
             * (tfm_freeze), then the adapters on c_attn. */
            if (tfm_freeze(ctx, &m.t, NULL) != TB_OK ||
                tfm_lora_add(ctx, &tl, &m.t, "default", &spec, &rng) != TB_OK ||
                tfm_lora_params(ctx, &tl, "", &list) != TB_OK)
                die(ctx, "lora setup");
        } else {
            for (size_t i = 0; i < m.params.count; i++)
                if (tb_param_list_add(ctx, &list, NULL, m.params.items[i].name,
                                      m.params.items[i].param) != TB_OK)
                    die(ctx, "list");
        }
        if (gpt_acts_init(ctx, &a, &m, B, T) != TB_OK ||
            tb_adam_init(ctx, &opt, &list, &oc) != TB_OK)
            die(ctx, "trainer setup");
        trainer tr = {ctx, &m, &a, &opt, &list, x, y};
        ms[lora_on] = 1e3 * median_step(&tr, steps);
        trainable[lora_on] = tb_param_list_numel(&list, 1);
        /* Gradient buffers allocated: the trainable ones, plus for LoRA any
         * frozen parameter's still allocated (none after tfm_freeze). */
        gbytes[lora_on] = lora_on ? 0 : grad_bytes(&list);
        if (lora_on) {
            for (size_t i = 0; i < m.params.count; i++)
                if (m.params.items[i].param->grad)
                    gbytes[1] += m.params.items[i].param->numel * sizeof(float);
            gbytes[1] += grad_bytes(&list);
        }
        obytes[lora_on] = 2 * trainable[lora_on] * sizeof(float);
        printf("  %-14s %9.1f ms/step  trainable %10zu  gradient buffers %7.1f MB  AdamW state "
               "%7.1f MB%s\n",
               lora_on ? "LoRA r=8" : "full", ms[lora_on], trainable[lora_on],
               gbytes[lora_on] / 1e6, obytes[lora_on] / 1e6,
               lora_on ? "  (the frozen model's gradients released)" : "");
        if (lora_on)
            printf("  %-14s released for the wrapped c_attn weights alone (tb_lora_frozen_bytes): "
                   "%.1f MB\n", "",
                   tfm_lora_frozen_bytes(&tl) / 1e6);
        bench_tsv("lora_gpt\t%s\t%.3f\t%zu\t%zu\t%zu", lora_on ? "lora8" : "full", ms[lora_on],
                  trainable[lora_on], gbytes[lora_on], obytes[lora_on]);
        fflush(stdout);
        tb_adam_free(&opt);
        gpt_acts_free(&a);
        tfm_lora_free(&tl);
        tb_param_list_free(&list);
        gpt_free(&m);
    }
    printf("  LoRA / full: %.2fx the step time, %.3fx the gradient + optimizer bytes\n",
           ms[1] / ms[0], (double)(gbytes[1] + obytes[1]) / (double)(gbytes[0] + obytes[0]));
    double tl, tf;
    char ver[160];
    torch_lora_times(ctx->num_threads, steps, mach->family == TB_KERNEL_AVX2, &tl, &tf, ver,
                     sizeof ver);
    if (tl > 0) {
        printf("  PEFT + PyTorch (%s): LoRA r=8 %.1f ms/step, full %.1f ms/step; ours / theirs: "
               "LoRA %.2fx faster, full %.2fx faster\n",
               ver, tl, tf, tl / ms[1], tf > 0 ? tf / ms[0] : 0.0);
        bench_tsv("lora_gpt\ttorch\t%.3f\t%.3f", tl, tf);
    } else {
        printf("  PEFT + PyTorch: %s (skipped)\n", ver);
    }
    free(x), free(y);
}

int main(void)
{
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine m;
    bench_machine_measure(&m, &ctx);
    bench_layers(&ctx, &m); /* each case checks BENCH_FILTER */
    if (bench_selected("lora_gpt"))
        bench_gpt_lora(&ctx, &m);
    return 0;
}
