/*
 * finetune_forgetting: catastrophic forgetting, measured.
 *
 * A small MLP (2 -> 64 -> 64 -> 2, GELU) is pre-trained on task A, then
 * fine-tuned on task B in three ways, each starting from the same
 * pre-trained weights, and every run reports its accuracy on both tasks:
 *
 *   (a) large learning rate, no regularisation;
 *   (b) small learning rate + weight decay + early stopping on task B's
 *       validation loss (the model kept is the best one seen);
 *   (c) the small learning rate plus EWC (elastic weight consolidation): a
 *       penalty lambda/2 sum F (theta - theta_A)^2 that anchors the weights
 *       task A's diagonal Fisher information F marks as important, at three
 *       strengths lambda (the trade-off between the tasks).
 *
 * The tasks: points in the square [-1, 1]^2. Task A lives in the left half
 * (x < -0.05) and asks whether a point lies above the curve
 * y = 0.5 sin(3x); task B lives in the right half (x > 0.05) and asks the
 * opposite question (below the curve). A model trained on A extends A's
 * rule to the right half, which is exactly wrong for B, so learning B
 * invites the network to flip the rule everywhere and forget A.
 *
 * Pre-training also shows gradient accumulation: each optimizer step sums
 * the gradients of --micro-batches micro-batches, so the activation memory
 * is that of one micro-batch while the update is that of the whole batch.
 *
 * Everything is seeded; the numbers are the same for any --threads.
 * docs/finetune_forgetting.md explains the output.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_cli.h"
#include "ex_mlp.h"
#include "ex_random.h"
#include "tblocks.h"
#include "ex_try.h"

#define HIDDEN 64
#define N_TRAIN 2000
#define N_VAL 500
#define BATCH 64
#define EVAL_EVERY 25
#define PATIENCE 4
#define LR_PRETRAIN 3e-3f
#define LR_LARGE 1e-2f
#define LR_SMALL 1e-3f
#define WD_SMALL 1e-2f
#define N_RUNS 5

/* ---- data ------------------------------------------------------------------ */

typedef struct dataset {
    size_t n;
    float *x; /* (n, 2) */
    int32_t *y;
} dataset;

/* n points of task A (left half) or B (right half). */
static int make_task(tb_rng *rng, int task_b, size_t n, dataset *d)
{
    d->n = n;
    d->x = malloc(n * 2 * sizeof(float));
    d->y = malloc(n * sizeof(int32_t));
    if (!d->x || !d->y)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const float u = 0.05f + 0.95f * tb_rng_uniform(rng);
        const float x = task_b ? u : -u, y = 2.0f * tb_rng_uniform(rng) - 1.0f;
        const int above = y > 0.5f * sinf(3.0f * x);
        d->x[2 * i] = x;
        d->x[2 * i + 1] = y;
        d->y[i] = task_b ? !above : above;
    }
    return 1;
}

static void dataset_free(dataset *d)
{
    free(d->x);
    free(d->y);
}

/* The next `rows` examples of a shuffled pass over d (reshuffled per pass). */
typedef struct sampler {
    size_t *order, next;
    float x[BATCH * 2];
    int32_t y[BATCH];
} sampler;

static void sample(tb_rng *rng, sampler *s, const dataset *d, size_t rows)
{
    for (size_t b = 0; b < rows; b++) {
        if (s->next == d->n) {
            for (size_t i = 0; i < d->n; i++)
                s->order[i] = i;
            ex_shuffle(rng, s->order, d->n);
            s->next = 0;
        }
        const size_t i = s->order[s->next++];
        s->x[2 * b] = d->x[2 * i];
        s->x[2 * b + 1] = d->x[2 * i + 1];
        s->y[b] = d->y[i];
    }
}

/* ---- training ---------------------------------------------------------------- */

typedef struct run_cfg {
    const char *label;
    float lr, weight_decay, ewc_lambda;
    int early_stop;
    uint64_t steps;
} run_cfg;

typedef struct run_out {
    float acc_a, acc_b, loss_b;
    uint64_t steps_taken, best_step;
    double penalty;
} run_out;

typedef struct world {
    tb_ctx *ctx;
    ex_mlp *m;
    ex_mlp_acts *acts; /* rows <= BATCH */
    dataset a_train, a_val, b_train, b_val;
    tb_rng *rng;
    sampler *s;
} world;

/* One optimizer step's gradient on `k` micro-batches of `rows` rows of d
 * (zeroed first; each micro-batch's mean loss scaled by 1/k). */
static tb_status accumulate(world *w, const dataset *d, size_t k, size_t rows)
{
    tb_param_list_zero_grad(&w->m->params);
    for (size_t j = 0; j < k; j++) {
        float loss;
        sample(w->rng, w->s, d, rows);
        TRY(ex_mlp_forward(w->ctx, w->m, w->acts, TB_MODE_TRAINING, NULL, w->s->x, w->s->y, rows,
                           &loss));
        TRY(ex_mlp_backward(w->ctx, w->m, w->acts, w->s->x, w->s->y, rows, 1.0f / (float)k));
    }
    return TB_OK;
}

/* Fine-tune on task B from the current weights. */
static tb_status finetune(world *w, const run_cfg *rc, const tb_ewc *ewc, run_out *out)
{
    tb_ctx *ctx = w->ctx;
    tb_adam_config cfg = tb_adamw_default_config();
    cfg.lr = rc->lr;
    cfg.weight_decay = rc->weight_decay;
    tb_adam opt;
    TRY(tb_adam_init(ctx, &opt, &w->m->params, &cfg));
    /* The usual rule: no decay on biases. */
    tb_status s = tb_adam_add_group(ctx, &opt, cfg.lr, 0.0f, tb_select_no_decay, NULL, NULL);
    const size_t n = tb_param_list_numel(&w->m->params, 1);
    float *best = malloc(n * sizeof(float));
    float best_loss = INFINITY;
    int bad_evals = 0;
    memset(out, 0, sizeof *out);
    if (!best)
        s = TB_ERR_NO_MEMORY;
    for (uint64_t step = 0; s == TB_OK && step < rc->steps; step++) {
        if ((s = accumulate(w, &w->b_train, 1, BATCH)) != TB_OK)
            break;
        if (ewc && (s = tb_ewc_penalty(ctx, ewc, &w->m->params, rc->ewc_lambda,
                                       &out->penalty)) != TB_OK)
            break;
        if ((s = tb_adam_step(ctx, &opt, 1.0f)) != TB_OK)
            break;
        out->steps_taken = step + 1;
        if (!rc->early_stop || (step + 1) % EVAL_EVERY != 0)
            continue;
        float vl, va;
        if ((s = ex_mlp_evaluate(ctx, w->m, w->acts, w->b_val.x, w->b_val.y, w->b_val.n, &vl,
                                 &va)) != TB_OK)
            break;
        if (vl < best_loss) {
            best_loss = vl;
            out->best_step = step + 1;
            bad_evals = 0;
            size_t at = 0;
            for (size_t i = 0; i < w->m->params.count; i++) {
                const tb_param *p = w->m->params.items[i].param;
                memcpy(best + at, p->value, p->numel * sizeof(float));
                at += p->numel;
            }
        } else if (++bad_evals >= PATIENCE) {
            break; /* stop: task B's validation loss stopped improving */
        }
    }
    if (s == TB_OK && rc->early_stop && out->best_step) { /* keep the best model */
        size_t at = 0;
        for (size_t i = 0; i < w->m->params.count; i++) {
            tb_param *p = w->m->params.items[i].param;
            memcpy(p->value, best + at, p->numel * sizeof(float));
            at += p->numel;
        }
    }
    float la;
    if (s == TB_OK)
        s = ex_mlp_evaluate(ctx, w->m, w->acts, w->a_val.x, w->a_val.y, w->a_val.n, &la,
                            &out->acc_a);
    if (s == TB_OK)
        s = ex_mlp_evaluate(ctx, w->m, w->acts, w->b_val.x, w->b_val.y, w->b_val.n,
                            &out->loss_b, &out->acc_b);
    free(best);
    tb_adam_free(&opt);
    return s;
}

static void copy_params(const tb_param_list *l, float *dst, int to_model)
{
    size_t at = 0;
    for (size_t i = 0; i < l->count; i++) {
        tb_param *p = l->items[i].param;
        if (to_model)
            memcpy(p->value, dst + at, p->numel * sizeof(float));
        else
            memcpy(dst + at, p->value, p->numel * sizeof(float));
        at += p->numel;
    }
}

int main(int argc, char **argv)
{
    uint64_t seed = 1, threads = 0, pre_steps = 600, ft_steps = 400, micro = 4, lambda = 1000;
    const ex_opt opts[] = {
        {"seed", "N", "random seed (data, initial weights, batches)", 0, UINT64_MAX, &seed},
        EX_OPT_THREADS(threads),
        {"pretrain-steps", "N", "optimizer steps on task A", 1, 100000, &pre_steps},
        {"finetune-steps", "N", "optimizer steps on task B (at most, with early stopping)", 1,
         100000, &ft_steps},
        {"micro-batches", "K", "pre-training accumulates K micro-batches per step (divides 64)",
         1, 64, &micro},
        {"lambda", "L", "EWC strength (runs at L/10, L and 10 L)", 0, 100000000, &lambda},
    };
    int rc = ex_parse_args(argc, argv,
                           "Pre-train an MLP on task A, fine-tune on task B three ways, and\n"
                           "measure how much of task A each keeps. It prints its measurements\n"
                           "and writes no files.",
                           opts, sizeof opts / sizeof opts[0]);
    if (rc >= 0)
        return rc;
    if (BATCH % micro != 0) {
        fprintf(stderr, "error: --micro-batches %llu does not divide the batch of %d\n",
                (unsigned long long)micro, BATCH);
        return EX_EXIT_USAGE;
    }
    tb_ctx ctx;
    if ((rc = ex_ctx_init(&ctx)) >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);
    const double t0 = ex_seconds();
    printf("finetune_forgetting: libtblocks %s, seed %llu, kernels %s\n\n", tb_version_string(),
           (unsigned long long)seed, ex_kernel_name(&ctx));

    tb_rng rng;
    tb_rng_init(&rng, seed);
    world w;
    memset(&w, 0, sizeof w);
    w.ctx = &ctx;
    w.rng = &rng;
    if (!make_task(&rng, 0, N_TRAIN, &w.a_train) || !make_task(&rng, 0, N_VAL, &w.a_val) ||
        !make_task(&rng, 1, N_TRAIN, &w.b_train) || !make_task(&rng, 1, N_VAL, &w.b_val)) {
        fprintf(stderr, "error: out of memory\n");
        return EX_EXIT_FAILURE;
    }
    ex_mlp m;
    const ex_mlp_config mlp_cfg = {2, HIDDEN, 2, TB_GELU_TANH, 0.0f}; /* no dropout */
    ex_mlp_acts acts, big_acts;
    sampler smp;
    memset(&smp, 0, sizeof smp);
    smp.order = malloc(N_TRAIN * sizeof(size_t));
    smp.next = N_TRAIN;
    const size_t micro_rows = BATCH / micro;
    if (!smp.order || ex_failed(&ctx, ex_mlp_init(&ctx, &m, &mlp_cfg, &rng), "model") ||
        ex_failed(&ctx, ex_mlp_acts_init(&ctx, &acts, &m, BATCH), "activations") ||
        ex_failed(&ctx, ex_mlp_acts_init(&ctx, &big_acts, &m, micro_rows), "activations"))
        return EX_EXIT_FAILURE;
    w.m = &m;
    w.s = &smp;

    /* ---- pre-training on A, with gradient accumulation ---------------------- */
    printf("task A: left half, label = above y = 0.5 sin(3x); task B: right half, label = "
           "below it\n");
    printf("%d training / %d validation points per task; MLP 2-%d-%d-2 (GELU), %zu parameters\n\n",
           N_TRAIN, N_VAL, HIDDEN, HIDDEN, tb_param_list_numel(&m.params, 1));
    printf("1. pre-training on task A: %llu AdamW steps (lr %g), batches of %d as %llu "
           "micro-batches of %zu\n",
           (unsigned long long)pre_steps, (double)LR_PRETRAIN, BATCH, (unsigned long long)micro,
           micro_rows);
    printf("   activation memory: %zu bytes for a micro-batch of %zu, %zu for a whole batch of "
           "%d\n",
           big_acts.bytes, micro_rows, acts.bytes, BATCH);
    tb_adam_config pcfg = tb_adamw_default_config();
    pcfg.lr = LR_PRETRAIN;
    tb_adam popt;
    if (ex_failed(&ctx, tb_adam_init(&ctx, &popt, &m.params, &pcfg), "optimizer"))
        return EX_EXIT_FAILURE;
    w.acts = &big_acts; /* only micro-batch-sized buffers during pre-training */
    for (uint64_t step = 0; step < pre_steps; step++)
        if (ex_failed(&ctx, accumulate(&w, &w.a_train, micro, micro_rows), "pre-training") ||
            ex_failed(&ctx, tb_adam_step(&ctx, &popt, 1.0f), "optimizer step"))
            return EX_EXIT_FAILURE;
    tb_adam_free(&popt);
    w.acts = &acts;
    float la, aa, lb, ab;
    if (ex_failed(&ctx, ex_mlp_evaluate(&ctx, &m, &acts, w.a_val.x, w.a_val.y, N_VAL, &la, &aa),
                  "evaluation") ||
        ex_failed(&ctx, ex_mlp_evaluate(&ctx, &m, &acts, w.b_val.x, w.b_val.y, N_VAL, &lb, &ab),
                  "evaluation"))
        return EX_EXIT_FAILURE;
    printf("   after pre-training: task A accuracy %.3f, task B accuracy %.3f (A's rule "
           "applied to B's half)\n\n",
           (double)aa, (double)ab);

    /* ---- EWC's Fisher estimate on A ---------------------------------------------- */
    /* The empirical Fisher is the mean of squared per-example gradients:
     * one example per backward pass (a batch-mean gradient would let the
     * examples' gradients cancel and underestimate it). */
    tb_ewc ewc;
    enum { FISHER_SAMPLES = 1000 };
    if (ex_failed(&ctx, tb_ewc_init(&ctx, &ewc, &m.params), "EWC"))
        return EX_EXIT_FAILURE;
    for (int b = 0; b < FISHER_SAMPLES; b++)
        if (ex_failed(&ctx, accumulate(&w, &w.a_train, 1, 1), "Fisher estimate") ||
            ex_failed(&ctx,
                      tb_ewc_accumulate_fisher(&ctx, &ewc, &m.params, 1.0f / FISHER_SAMPLES),
                      "Fisher estimate"))
            return EX_EXIT_FAILURE;
    double fsum = 0.0;
    float fmax = 0.0f;
    for (size_t i = 0; i < ewc.n; i++) {
        fsum += ewc.fisher[i];
        fmax = ewc.fisher[i] > fmax ? ewc.fisher[i] : fmax;
    }
    printf("2. EWC: diagonal Fisher of task A, the mean squared gradient of %d single "
           "examples: mean %.3g, max %.3g\n\n",
           FISHER_SAMPLES, fsum / (double)ewc.n, (double)fmax);

    /* ---- three ways to fine-tune on B --------------------------------------------- */
    const size_t n = tb_param_list_numel(&m.params, 1);
    float *pre = malloc(n * sizeof(float));
    if (!pre)
        return EX_EXIT_FAILURE;
    copy_params(&m.params, pre, 0);
    /* (c) runs at lambda / 10, lambda and 10 lambda: the trade-off. */
    char lab[3][48];
    for (int k = 0; k < 3; k++)
        snprintf(lab[k], sizeof lab[k], "(c) small lr + EWC, lambda %g",
                 (double)lambda * (k == 0 ? 0.1 : k == 1 ? 1.0 : 10.0));
    const run_cfg runs[N_RUNS] = {
        {"(a) large lr", LR_LARGE, 0.0f, 0.0f, 0, ft_steps},
        {"(b) small lr + wd + early stop", LR_SMALL, WD_SMALL, 0.0f, 1, ft_steps},
        {lab[0], LR_SMALL, 0.0f, 0.1f * (float)lambda, 0, ft_steps},
        {lab[1], LR_SMALL, 0.0f, (float)lambda, 0, ft_steps},
        {lab[2], LR_SMALL, 0.0f, 10.0f * (float)lambda, 0, ft_steps},
    };
    run_out res[N_RUNS];
    printf("3. fine-tuning on task B from the same pre-trained weights (AdamW, batches of %d)\n",
           BATCH);
    printf("   %-36s %7s %7s %6s %10s %10s\n", "", "lr", "wd", "steps", "task A acc",
           "task B acc");
    for (int r = 0; r < N_RUNS; r++) {
        copy_params(&m.params, pre, 1);
        if (ex_failed(&ctx, finetune(&w, &runs[r], r >= 2 ? &ewc : NULL, &res[r]), runs[r].label))
            return EX_EXIT_FAILURE;
        char steps[32];
        if (runs[r].early_stop)
            snprintf(steps, sizeof steps, "%llu*", (unsigned long long)res[r].best_step);
        else
            snprintf(steps, sizeof steps, "%llu", (unsigned long long)res[r].steps_taken);
        printf("   %-36s %7.0e %7.0e %6s %10.3f %10.3f\n", runs[r].label, (double)runs[r].lr,
               (double)runs[r].weight_decay, steps, (double)res[r].acc_a, (double)res[r].acc_b);
    }
    printf("   * early stopping: best task-B validation loss at that step (checked every %d "
           "steps, patience %d)\n",
           EVAL_EVERY, PATIENCE);
    printf("   EWC penalty at the end: %.3f, %.3f, %.3f (lambda / 10, lambda, 10 lambda)\n\n",
           res[2].penalty, res[3].penalty, res[4].penalty);
    printf("done: %.2f s, threads %d\n", ex_seconds() - t0, ctx.num_threads);
    printf("final: pre_acc_a=%.4f a_large=%.4f b_large=%.4f a_small=%.4f b_small=%.4f "
           "a_ewc=%.4f b_ewc=%.4f a_ewc_strong=%.4f b_ewc_strong=%.4f\n",
           (double)aa, (double)res[0].acc_a, (double)res[0].acc_b, (double)res[1].acc_a,
           (double)res[1].acc_b, (double)res[3].acc_a, (double)res[3].acc_b,
           (double)res[4].acc_a, (double)res[4].acc_b);
    free(pre);
    free(smp.order);
    tb_ewc_free(&ewc);
    ex_mlp_acts_free(&acts);
    ex_mlp_acts_free(&big_acts);
    ex_mlp_free(&m);
    dataset_free(&w.a_train), dataset_free(&w.a_val), dataset_free(&w.b_train),
        dataset_free(&w.b_val);
    return EX_EXIT_OK;
}
