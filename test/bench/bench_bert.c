/*
 * BERT benchmark (the examples' encoder wiring: examples/common/tfm.c with
 * bert_config.h, and bert_cls.h's classification head):
 *
 *   bert_train  one full training step of the BERT-base shape (L=12, H=12,
 *               C=768, F=3072, V=30522, T=128, B=8; forward, backward,
 *               AdamW) for sequence classification (2 labels), fp32,
 *               dropout 0, full-length sequences: ms/step, GFLOP/s counting
 *               6 N_mm B T (N_mm: the parameters of the matrix products:
 *               every projection, the pooler and the classifier; the
 *               embeddings are lookups) plus attention 12 L C T per token,
 *               the fraction of the FMA peak measured in the same run, and
 *               beside it PyTorch's step for the same model (transformers'
 *               BertForSequenceClassification, AdamW) timed by
 *               test/bench/torch_bert.py in a child process (skipped, and
 *               said so, when torch or transformers is missing).
 *
 * Environment (besides the harness's): BENCH_BERT_STEPS (timed training
 * steps, default 5; 2 with BENCH_QUICK), BENCH_BERT_TORCH=0 skips PyTorch.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bert_cls.h"
#include "bert_config.h"
#include "harness.h"
#include "tblocks.h"
#include "tfm.h"

enum { L = 12, H = 12, C = 768, F = 3072, V = 30522, T = 128, B = 8, K = 2 };

typedef struct trainer {
    tb_ctx *ctx;
    tfm *m;
    tfm_acts *a;
    bert_cls *head;
    tb_param_list *params;
    tb_adam *opt;
    tfm_input in;
    int32_t *labels;
    float *dout;
    int failed;
} trainer;

static void train_step(void *arg)
{
    trainer *t = arg;
    float loss;
    tb_param_list_zero_grad(t->params);
    if (tfm_forward(t->ctx, t->m, t->a, TB_MODE_TRAINING, NULL, &t->in) != TB_OK ||
        bert_cls_forward(t->ctx, t->head, t->a->out, B, T, t->labels, &loss) != TB_OK ||
        bert_cls_backward(t->ctx, t->head, 1.0f, t->dout) != TB_OK ||
        tfm_backward(t->ctx, t->m, t->a, t->dout, NULL) != TB_OK ||
        tb_adam_step(t->ctx, t->opt, 1.0f) != TB_OK)
        t->failed = 1;
}

/* Reads "<key> <value>" lines of test/bench/torch_bert.py; 0 when unavailable. */
static double torch_time(const char *args, const char *key, char *version, size_t cap)
{
    double ms = 0.0;
    snprintf(version, cap, "not run");
    if (bench_env_double("BENCH_BERT_TORCH", 1) == 0)
        return 0.0;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 test/bench/torch_bert.py %s 2>/dev/null", args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return 0.0;
    char line[256];
    const size_t kl = strlen(key);
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ')
            ms = atof(line + kl + 1);
        else if (strncmp(line, "torch_version ", 14) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(version, cap, "%.100s", line + 14);
        }
    }
    if (pclose(p) != 0 && ms == 0.0)
        snprintf(version, cap, "unavailable (torch or transformers not importable)");
    return ms;
}

static double median(double *v, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (v[j] < v[i]) {
                const double tmp = v[i];
                v[i] = v[j], v[j] = tmp;
            }
    return v[n / 2];
}

static int bench_train(tb_ctx *ctx, const bench_machine *mach)
{
    const int steps = (int)bench_env_double("BENCH_BERT_STEPS", bench_quick() ? 2 : 5);
    bert_config bc = bert_config_base();
    bc.hidden_dropout_prob = bc.attention_probs_dropout_prob = 0.0f;
    const tfm_config cfg = bert_tfm_config(&bc);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    tfm m;
    tfm_acts a;
    bert_cls head;
    tb_param_list params;
    tb_adam opt;
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = 1e-4f;
    oc.weight_decay = 0.01f;
    if (tb_param_list_init(ctx, &params) != TB_OK || tfm_init(ctx, &m, &cfg, &rng) != TB_OK || tfm_acts_init(ctx, &a, &m, B, T) != TB_OK ||
        bert_cls_init(ctx, &head, C, K, B, &rng) != TB_OK ||
        tfm_params(ctx, &m, "bert.", &params) != TB_OK ||
        bert_cls_params(ctx, &head, "bert.", &params) != TB_OK ||
        tb_adam_init(ctx, &opt, &params, &oc) != TB_OK) {
        fprintf(stderr, "bert bench: setup failed: %s\n", tb_ctx_error(ctx));
        return 1;
    }
    int32_t *ids = bench_alloc(B * T * sizeof(int32_t)), *labels = bench_alloc(B * sizeof(int32_t));
    for (int i = 0; i < B * T; i++)
        ids[i] = (int32_t)(1 + (i * 7919) % (V - 1));
    for (int i = 0; i < B; i++)
        labels[i] = i % K;
    float *dout = bench_alloc((size_t)B * T * C * sizeof(float));
    /* The matrix products' parameters: per layer q, k, v, attn_out (C x C
     * each, + bias), fc_in and fc_out (C x F, + biases); pooler, classifier. */
    const double n_mm = (double)L * (4.0 * (C * C + C) + 2.0 * C * F + F + C) +
                        (C * C + C) + (C * K + K);
    const double flops = 6.0 * n_mm * B * T + 12.0 * L * C * (double)T * B * T;
    printf("bert: BERT-base shape (L=%d H=%d C=%d F=%d V=%d), %.1f M parameters, batch %d x %d "
           "tokens, sequence classification (%d labels), fp32, dropout 0\n",
           L, H, C, F, V, (double)tb_param_list_numel(&params, 1) / 1e6, B, T, K);
    printf("bert: %.1f GFLOP per training step (6 N_mm B T + attention 12 L C T per token)\n",
           flops / 1e9);
    trainer tr = {ctx, &m, &a, &head, &params, &opt, {B, T, ids, NULL, NULL, NULL}, labels, dout, 0};
    train_step(&tr); /* warm-up */
    double *ts = bench_alloc((size_t)steps * sizeof(double));
    for (int s = 0; s < steps; s++) {
        const double t0 = bench_now();
        train_step(&tr);
        ts[s] = bench_now() - t0;
    }
    if (tr.failed) {
        fprintf(stderr, "bert bench: training step failed: %s\n", tb_ctx_error(ctx));
        return 1;
    }
    const double ours = median(ts, steps);
    printf("  %-28s %9.1f ms/step (min %.1f, max %.1f, %d steps)  %7.1f GFLOP/s  %5.1f%% of peak\n",
           "ours fp32", 1e3 * ours, 1e3 * ts[0], 1e3 * ts[steps - 1], steps, flops / ours / 1e9,
           bench_pct(flops / ours / 1e9, mach->peak));
    bench_tsv("bert_train\tours_fp32\t%.3f\t%.2f\t%.2f", 1e3 * ours, flops / ours / 1e9,
              bench_pct(flops / ours / 1e9, mach->peak));
    const int avx2 = mach->family == TB_KERNEL_AVX2;
    char args[256], ver[160];
    snprintf(args, sizeof args, "train %d %d %d %d %d %d %d %d %d %s", L, H, C, F, V, T, B,
             ctx->num_threads, steps, avx2 ? "avx2" : "native");
    const double tf = torch_time(args, "torch_train_ms", ver, sizeof ver);
    if (tf > 0) {
        printf("  %-28s %9.1f ms/step                                 %7.1f GFLOP/s  (torch %s%s)\n",
               "PyTorch fp32", tf, flops / (tf * 1e-3) / 1e9, ver, avx2 ? ", capped at AVX2" : "");
        printf("  ours / PyTorch fp32: %.2fx faster\n", tf / (1e3 * ours));
        bench_tsv("bert_train\ttorch_fp32\t%.3f", tf);
    } else {
        printf("  PyTorch: %s (skipped)\n", ver);
    }
    printf("  target: >= 1.5x faster than PyTorch fp32 in the same run (the AVX2 family: PyTorch "
           "capped at AVX2)\n");
    free(ts), free(ids), free(labels), free(dout);
    tb_adam_free(&opt);
    tb_param_list_free(&params);
    bert_cls_free(&head);
    tfm_acts_free(&a);
    tfm_free(&m);
    return 0;
}

int main(void)
{
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine mach;
    bench_machine_measure(&mach, &ctx);
    int rc = 0;
    if (bench_selected("bert_train"))
        rc |= bench_train(&ctx, &mach);
    return rc;
}
