/*
 * memory_scaling: why training runs out of memory as the data grows, and
 * what gradient accumulation and LoRA save, in bytes from real allocations.
 *
 * A GPT-style model (examples/common/gpt.h: the shared stack, 2 layers,
 * width 64, 4 heads, 256-byte vocabulary, context 256) is trained one step
 * at a time on random tokens. Three tables:
 *
 *   1. Activation bytes against batch size B and sequence length T: what
 *      gpt_acts_size() predicts and what gpt_acts_init() really allocated
 *      (the same number), bytes per token, and the loss of one real
 *      training step on that allocation. The attention core keeps no T x T
 *      matrix (attention.h), so the bytes grow as B * T: per token they are
 *      constant.
 *   2. Gradient accumulation: the same global batch of 16 x 128 tokens as
 *      K micro-batches of 16 / K sequences, each backward adding 1/K of its
 *      mean-loss gradient. Activation bytes fall by K; the accumulated
 *      gradient is the full batch's to float rounding (max |difference|
 *      relative to the gradient's largest entry).
 *   3. Full fine-tuning vs LoRA (r = 4 on c_attn and attn.c_proj, the base
 *      frozen, examples/common/tfm_lora.h): trainable parameters, gradient
 *      bytes (every gradient buffer that exists), AdamW state bytes after
 *      one real step, and the activation bytes they share. Both see the
 *      same tokens; LoRA's B starts at zero, so its first loss is the
 *      base model's.
 *
 * Every number printed is bitwise identical for any --threads value; only
 * the lines starting with "train:" and "done:" differ.
 * docs/memory_scaling.md explains the output.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_cli.h"
#include "ex_finetune.h"
#include "ex_random.h"
#include "ex_try.h"
#include "gpt.h"
#include "tblocks.h"
#include "tfm_lora.h"

#define GLOBAL_B 16
#define ACC_T 128
#define LORA_RANK 4
#define MAX_B 16
#define MAX_T 256

static const char *const lora_targets[] = {"c_attn", "attn.c_proj"};

static gpt_config model_config(void)
{
    gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 2, c.n_head = 4, c.n_embd = 64, c.block_size = MAX_T, c.vocab_size = 256;
    return c;
}

/* B sequences of T + 1 random bytes: inputs x and next-token targets y. */
static void random_tokens(tb_rng *rng, size_t B, size_t T, int32_t *x, int32_t *y)
{
    for (size_t b = 0; b < B; b++) {
        int32_t prev = (int32_t)ex_rand_below(rng, 256);
        for (size_t t = 0; t < T; t++) {
            const int32_t next = (int32_t)ex_rand_below(rng, 256);
            x[b * T + t] = prev;
            y[b * T + t] = next;
            prev = next;
        }
    }
}

/* Part 1: one allocation and one step per (B, T). */
static tb_status part1(tb_ctx *ctx, gpt *m, tb_rng *rng, int32_t *x, int32_t *y, size_t max_t,
                       size_t *per_token_min, size_t *per_token_max, int *all_equal)
{
    static const size_t Bs[] = {1, 4, 16};
    printf("\n1. Activation bytes of one training step (gpt_acts_size vs what gpt_acts_init "
           "allocated)\n");
    printf("   %4s %5s %8s %14s %14s %12s %10s\n", "B", "T", "tokens", "predicted",
           "allocated", "per token", "step loss");
    *per_token_min = (size_t)-1, *per_token_max = 0, *all_equal = 1;
    for (size_t bi = 0; bi < sizeof Bs / sizeof Bs[0]; bi++) {
        for (size_t T = 32; T <= max_t; T *= 2) {
            const size_t B = Bs[bi];
            size_t predicted;
            TRY(gpt_acts_size(ctx, &m->cfg, B, T, &predicted));
            gpt_acts a;
            memset(&a, 0, sizeof a);
            TRY(gpt_acts_init(ctx, &a, m, B, T));
            random_tokens(rng, B, T, x, y);
            float loss = 0.0f;
            tb_param_list_zero_grad(&m->params);
            tb_status s = gpt_forward(ctx, m, &a, TB_MODE_TRAINING, NULL, x, y, B, T, &loss);
            if (s == TB_OK)
                s = gpt_backward(ctx, m, &a, x, y, 1.0f);
            const size_t allocated = a.bytes;
            gpt_acts_free(&a);
            TRY(s);
            const size_t per = allocated / (B * T);
            *per_token_min = per < *per_token_min ? per : *per_token_min;
            *per_token_max = per > *per_token_max ? per : *per_token_max;
            *all_equal &= allocated == predicted;
            printf("   %4zu %5zu %8zu %14zu %14zu %12zu %10.4f\n", B, T, B * T, predicted,
                   allocated, per, (double)loss);
        }
    }
    return TB_OK;
}

/* Every gradient of the list, concatenated, into g (numel floats). */
static void copy_grads(const tb_param_list *l, float *g)
{
    size_t at = 0;
    for (size_t i = 0; i < l->count; i++) {
        const tb_param *p = l->items[i].param;
        if (!p->grad || !p->trainable)
            continue;
        memcpy(g + at, p->grad, p->numel * sizeof(float));
        at += p->numel;
    }
}

/* Part 2: the same 16 x 128 batch as K micro-batches. */
static tb_status part2(tb_ctx *ctx, gpt *m, tb_rng *rng, int32_t *x, int32_t *y,
                       double *worst_rel, size_t *bytes_k1, size_t *bytes_kmax)
{
    const size_t n = tb_param_list_numel(&m->params, 1);
    float *g1 = malloc(n * sizeof(float)), *gk = malloc(n * sizeof(float));
    if (!g1 || !gk) {
        free(g1), free(gk);
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "out of memory");
    }
    random_tokens(rng, GLOBAL_B, ACC_T, x, y);
    printf("\n2. Gradient accumulation: one global batch of %d x %d tokens as K micro-batches\n",
           GLOBAL_B, ACC_T);
    printf("   %4s %8s %14s %12s %22s\n", "K", "micro B", "activations", "mean loss",
           "max|g_K - g_1|/max|g_1|");
    tb_status s = TB_OK;
    *worst_rel = 0.0;
    for (size_t K = 1; K <= GLOBAL_B && s == TB_OK; K *= 2) {
        const size_t b = GLOBAL_B / K;
        gpt_acts a;
        memset(&a, 0, sizeof a);
        s = gpt_acts_init(ctx, &a, m, b, ACC_T);
        tb_param_list_zero_grad(&m->params);
        double loss_sum = 0.0;
        for (size_t k = 0; k < K && s == TB_OK; k++) {
            const int32_t *xk = x + k * b * ACC_T, *yk = y + k * b * ACC_T;
            float loss;
            s = gpt_forward(ctx, m, &a, TB_MODE_TRAINING, NULL, xk, yk, b, ACC_T, &loss);
            if (s == TB_OK) /* each micro-batch adds 1/K of its mean-loss gradient */
                s = gpt_backward(ctx, m, &a, xk, yk, 1.0f / (float)K);
            loss_sum += loss;
        }
        const size_t bytes = a.bytes;
        gpt_acts_free(&a);
        if (s != TB_OK)
            break;
        copy_grads(&m->params, K == 1 ? g1 : gk);
        double rel = 0.0;
        if (K > 1) {
            double dmax = 0.0, gmax = 0.0;
            for (size_t i = 0; i < n; i++) {
                dmax = fmax(dmax, fabs((double)gk[i] - (double)g1[i]));
                gmax = fmax(gmax, fabs((double)g1[i]));
            }
            rel = dmax / gmax;
            *worst_rel = fmax(*worst_rel, rel);
            *bytes_kmax = bytes;
        } else {
            *bytes_k1 = bytes;
        }
        printf("   %4zu %8zu %14zu %12.6f %22.2e\n", K, b, bytes, loss_sum / (double)K, rel);
    }
    free(g1), free(gk);
    return s;
}

typedef struct way {
    size_t trainable, grad_bytes, adam_bytes, act_bytes;
    float loss;
} way;

/* Part 3: a fresh model (freezing releases buffers for good), full or LoRA,
 * one AdamW step on B x T random tokens. */
static tb_status one_way(tb_ctx *ctx, int lora, uint64_t seed, size_t B, size_t T, way *w)
{
    const gpt_config cfg = model_config();
    gpt m;
    gpt_acts a;
    tb_adam opt;
    tfm_lora tl;
    tb_param_list lora_list;
    memset(&m, 0, sizeof m), memset(&a, 0, sizeof a), memset(&opt, 0, sizeof opt);
    memset(&lora_list, 0, sizeof lora_list);
    tfm_lora_init(&tl);
    tb_rng rng;
    tb_rng_init(&rng, seed);
    int32_t *x = malloc(B * T * sizeof(int32_t)), *y = malloc(B * T * sizeof(int32_t));
    tb_status s = x && y ? TB_OK : TB_ERR_NO_MEMORY;
    if (s == TB_OK)
        s = gpt_init(ctx, &m, &cfg, &rng);
    tb_param_list *list = &m.params;
    if (s == TB_OK && lora) {
        tfm_lora_spec spec;
        memset(&spec, 0, sizeof spec);
        spec.targets = lora_targets, spec.n_targets = 2;
        spec.config = tb_lora_config_default(LORA_RANK);
        s = tfm_lora_add(ctx, &tl, &m.t, "default", &spec, &rng);
        /* The base frozen for real: every gradient buffer of the stack
         * released (tfm_freeze), the tied LM head (a view of wte) too. */
        if (s == TB_OK) {
            tb_linear_freeze(&m.lm_head);
            s = tfm_freeze(ctx, &m.t, NULL);
        }
        if (s == TB_OK)
            s = tb_param_list_init(ctx, &lora_list);
        if (s == TB_OK)
            s = tfm_lora_params(ctx, &tl, "", &lora_list);
        list = &lora_list;
    }
    if (s == TB_OK)
        s = gpt_acts_init(ctx, &a, &m, B, T);
    tb_adam_config oc = tb_adamw_default_config();
    if (s == TB_OK)
        s = tb_adam_init(ctx, &opt, list, &oc);
    if (s == TB_OK) {
        tb_rng data; /* the same tokens for both ways */
        tb_rng_init(&data, seed ^ 0x9e3779b97f4a7c15ull);
        random_tokens(&data, B, T, x, y);
        tb_param_list_zero_grad(list);
        s = gpt_forward(ctx, &m, &a, TB_MODE_TRAINING, NULL, x, y, B, T, &w->loss);
    }
    if (s == TB_OK)
        s = gpt_backward(ctx, &m, &a, x, y, 1.0f);
    if (s == TB_OK)
        s = tb_adam_step(ctx, &opt, 1.0f);
    if (s == TB_OK) {
        size_t values = 0, grads = 0, lv = 0, lg = 0;
        ex_ft_list_bytes(&m.params, &values, &grads);
        if (lora)
            ex_ft_list_bytes(&lora_list, &lv, &lg);
        w->trainable = tb_param_list_numel(list, 1);
        w->grad_bytes = grads + lg;
        w->adam_bytes = tb_adam_state_bytes(&opt);
        w->act_bytes = a.bytes;
        for (size_t i = 0; i < tl.n_sites; i++) /* the adapters' caches are activations too */
            w->act_bytes += tl.sites[i].cache_bytes;
    }
    tb_adam_free(&opt);
    gpt_acts_free(&a);
    tb_param_list_free(&lora_list);
    tfm_lora_free(&tl);
    gpt_free(&m);
    free(x), free(y);
    return s;
}

int main(int argc, char **argv)
{
    tb_ctx ctx;
    int rc = ex_ctx_init(&ctx);
    if (rc >= 0)
        return rc;
    uint64_t max_len = MAX_T, seed = 1, threads = 0;
    const ex_opt opts[] = {
        {"max-len", "T", "longest sequence of table 1: T = 32, 64, ... up to this", 32, MAX_T,
         &max_len},
        {"seed", "S", "seed for the weights and the tokens", 0, UINT64_MAX, &seed},
        EX_OPT_THREADS(threads),
    };
    rc = ex_parse_args(argc, argv,
                       "Activation memory of a small GPT against batch size and sequence length,\n"
                       "with and without gradient accumulation, and the gradient and optimizer\n"
                       "bytes LoRA saves over full fine-tuning, each from a real allocation and\n"
                       "training step. Writes no files.",
                       opts, sizeof opts / sizeof opts[0]);
    if (rc >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);
    const gpt_config cfg = model_config();
    size_t n_params = 0;
    gpt_param_count(&cfg, &n_params);
    printf("memory_scaling: libtblocks %s, seed %llu\n", tb_version_string(),
           (unsigned long long)seed);
    printf("model: GPT, %zu layers, width %zu, %zu heads, vocabulary %zu, context %zu: %zu "
           "parameters (%zu bytes)\n",
           cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.block_size, n_params,
           n_params * sizeof(float));
    printf("train: one real step per configuration, random tokens, threads %d, kernels %s\n",
           ctx.num_threads, ex_kernel_name(&ctx));
    const double t0 = ex_seconds();
    gpt m;
    memset(&m, 0, sizeof m);
    tb_rng rng;
    tb_rng_init(&rng, seed);
    int32_t *x = malloc(MAX_B * MAX_T * sizeof(int32_t));
    int32_t *y = malloc(MAX_B * MAX_T * sizeof(int32_t));
    size_t pt_min = 0, pt_max = 0, k1 = 0, kmax = 0;
    int equal = 0;
    double worst = 0.0;
    way full, lora;
    memset(&full, 0, sizeof full), memset(&lora, 0, sizeof lora);
    tb_status s = x && y ? TB_OK : tb_ctx_set_error(&ctx, TB_ERR_NO_MEMORY, "out of memory");
    if (s == TB_OK)
        s = gpt_init(&ctx, &m, &cfg, &rng);
    if (s == TB_OK)
        s = part1(&ctx, &m, &rng, x, y, (size_t)max_len, &pt_min, &pt_max, &equal);
    if (s == TB_OK)
        s = part2(&ctx, &m, &rng, x, y, &worst, &k1, &kmax);
    if (s == TB_OK)
        s = one_way(&ctx, 0, seed + 1, 4, ACC_T, &full);
    if (s == TB_OK)
        s = one_way(&ctx, 1, seed + 1, 4, ACC_T, &lora);
    gpt_free(&m);
    free(x), free(y);
    if (ex_failed(&ctx, s, "measuring"))
        return EX_EXIT_FAILURE;
    printf("\n3. Full fine-tuning vs LoRA r=%d (c_attn, attn.c_proj; base frozen), one AdamW "
           "step on 4 x %d tokens\n",
           LORA_RANK, ACC_T);
    printf("   %-8s %10s %14s %14s %14s %12s\n", "", "trainable", "gradients", "AdamW state",
           "activations", "step loss");
    printf("   %-8s %10zu %14zu %14zu %14zu %12.4f\n", "full", full.trainable, full.grad_bytes,
           full.adam_bytes, full.act_bytes, (double)full.loss);
    printf("   %-8s %10zu %14zu %14zu %14zu %12.4f\n", "LoRA", lora.trainable, lora.grad_bytes,
           lora.adam_bytes, lora.act_bytes, (double)lora.loss);
    printf("   LoRA keeps %.1f%% of the gradient bytes and %.1f%% of the optimizer state\n",
           100.0 * (double)lora.grad_bytes / (double)full.grad_bytes,
           100.0 * (double)lora.adam_bytes / (double)full.adam_bytes);
    printf("done: %.2f s, threads %d\n", ex_seconds() - t0, ctx.num_threads);
    printf("final: acts_equal=%d per_token_min=%zu per_token_max=%zu acc_worst_rel=%.3e "
           "acc_bytes_k1=%zu acc_bytes_k%d=%zu full_grad=%zu full_adam=%zu full_n=%zu "
           "lora_grad=%zu lora_adam=%zu lora_n=%zu full_loss=%.9g lora_loss=%.9g\n",
           equal, pt_min, pt_max, worst, k1, GLOBAL_B, kmax, full.grad_bytes, full.adam_bytes,
           full.trainable, lora.grad_bytes, lora.adam_bytes, lora.trainable, (double)full.loss,
           (double)lora.loss);
    return EX_EXIT_OK;
}
