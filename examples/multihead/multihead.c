/*
 * multihead: one attention head vs several at the same width, on a task
 * that needs several relations at once.
 *
 * Task: a sequence of T = 16 random tokens from 8; at every position t >= 7
 * output the four tokens x[t-1], x[t-3], x[t-5] and x[t-7] (four 8-way
 * classifications from one Linear head). The answer sits in four places,
 * and which token came from which place matters.
 *
 * One head forms one softmax distribution per query: to read four places it
 * must split its weight, and its output is then a weighted average of four
 * value vectors, in which the tokens are mixed (only unequal weights tell
 * them apart, and they must all share the head's D columns). With H heads
 * of width C / H, separate heads can each look at one offset and write
 * their token into their own columns of the output.
 *
 * Model (the shared stack, examples/common/tfm.h): token + position
 * embeddings, 1 causal pre-norm layer (attention with H heads of width
 * 32 / H, MLP 32-128-32), final LayerNorm, Linear(32, 4 x 8), cross-entropy
 * on positions 7..15. Every H has exactly the same parameter count (the
 * heads are a split of the same projections); all runs start from the same
 * seed and see the same batches. Prints, after equal training, the
 * validation loss, how often all four tokens are right, and each offset's
 * accuracy.
 *
 * Every number printed is bitwise identical for any --threads value; only
 * the lines starting with "train:" and "done:" differ.
 * docs/multihead.md explains the output.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_cli.h"
#include "ex_random.h"
#include "ex_try.h"
#include "tblocks.h"
#include "tfm.h"

#define SEQ 16
#define VOCAB 8
#define N_OFF 4
#define FIRST 7 /* the largest offset: positions before it have no target */
#define N_CLASS (N_OFF * VOCAB) /* the head's outputs: one VOCAB-way group per offset */
#define DIM 32
#define FF (4 * DIM)
#define BATCH 32
#define ROWS (BATCH * SEQ)

static const size_t offsets[N_OFF] = {1, 3, 5, 7};
#define N_VAL 512 /* validation sequences (multiple of BATCH) */
#define LR 3e-3f
#define WARMUP 50

static const tfm_names names = {
    .wte = "wte", .wpe = "wpe", .layer = "h.%zu", .norm_attn = "ln_1", .norm_mlp = "ln_2",
    .qkv = "attn.c_attn", .attn_out = "attn.c_proj", .fc_in = "mlp.c_fc",
    .fc_out = "mlp.c_proj", .final_norm = "ln_f",
};

typedef struct run {
    tfm t;
    tfm_acts a;
    tb_linear head;
    tb_param_list params;
    tb_adam opt;
    float *logits, *dlogits, *dout; /* (R, N_CLASS) x 2, (R, C) */
    void *ce_cache;
    size_t ce_bytes;
} run;

static tb_status run_init(tb_ctx *ctx, run *r, size_t heads, uint64_t seed)
{
    tfm_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 1, c.n_head = heads, c.d_model = DIM, c.d_ff = FF;
    c.vocab_size = VOCAB, c.max_positions = SEQ;
    c.norm_place = TFM_PRE_NORM, c.norm_kind = TFM_LAYERNORM, c.final_norm = 1;
    c.norm_eps = 1e-5f, c.causal = 1, c.qkv = TFM_QKV_FUSED, c.layout = TB_LINEAR_OUT_IN;
    c.gelu = TB_GELU_TANH, c.init_std = 0.02f, c.scale_residual_init = 1, c.names = &names;
    tb_rng rng; /* the same initial values for every H */
    tb_rng_init(&rng, seed);
    TRY(tb_param_list_init(ctx, &r->params));
    TRY(tfm_init(ctx, &r->t, &c, &rng));
    TRY(tfm_params(ctx, &r->t, "", &r->params));
    TRY(tb_linear_init(ctx, &r->head, DIM, N_CLASS, 1, &rng));
    TRY(tb_linear_params(ctx, &r->head, "head", &r->params));
    TRY(tfm_acts_init(ctx, &r->a, &r->t, BATCH, SEQ));
    TRY(tb_cross_entropy_cache_size(ROWS * N_OFF, &r->ce_bytes));
    r->logits = malloc(ROWS * N_CLASS * sizeof(float));
    r->dlogits = malloc(ROWS * N_CLASS * sizeof(float));
    r->dout = malloc(ROWS * DIM * sizeof(float));
    r->ce_cache = malloc(r->ce_bytes);
    if (!r->logits || !r->dlogits || !r->dout || !r->ce_cache)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "out of memory");
    tb_adam_config oc = tb_adam_default_config();
    oc.lr = LR;
    return tb_adam_init(ctx, &r->opt, &r->params, &oc);
}

static void run_free(run *r)
{
    tb_adam_free(&r->opt);
    tb_param_list_free(&r->params);
    tfm_acts_free(&r->a);
    tfm_free(&r->t);
    tb_linear_free(&r->head);
    free(r->logits), free(r->dlogits), free(r->dout), free(r->ce_cache);
}

/* B sequences of random tokens and their targets: row r, offset k at
 * r * N_OFF + k (TB_IGNORE_INDEX before position FIRST). */
static void make_batch(tb_rng *rng, int32_t *ids, int32_t *targets)
{
    for (size_t b = 0; b < BATCH; b++) {
        int32_t *x = ids + b * SEQ;
        for (size_t t = 0; t < SEQ; t++)
            x[t] = (int32_t)ex_rand_below(rng, VOCAB);
        for (size_t t = 0; t < SEQ; t++)
            for (size_t k = 0; k < N_OFF; k++)
                targets[(b * SEQ + t) * N_OFF + k] =
                    t < FIRST ? TB_IGNORE_INDEX : x[t - offsets[k]];
    }
}

static tb_status forward(tb_ctx *ctx, run *r, const int32_t *ids, const int32_t *targets,
                         float *loss)
{
    const tfm_input in = {BATCH, SEQ, ids, NULL, NULL, NULL};
    TRY(tfm_forward(ctx, &r->t, &r->a, TB_MODE_TRAINING, NULL, &in));
    tb_tensor h = tb_tensor_2d(r->a.out, ROWS, DIM), z = tb_tensor_2d(r->logits, ROWS, N_CLASS);
    TRY(tb_linear_forward(ctx, &r->head, &h, &z));
    /* The same logits as (R * N_OFF, VOCAB): one classification per offset. */
    tb_tensor zk = tb_tensor_2d(r->logits, ROWS * N_OFF, VOCAB);
    return tb_cross_entropy_forward(ctx, NULL, &zk, targets, ROWS * N_OFF, loss, r->ce_cache,
                                    r->ce_bytes);
}

static tb_status train_step(tb_ctx *ctx, run *r, const int32_t *ids, const int32_t *targets,
                            float lr_factor, float *loss)
{
    TRY(forward(ctx, r, ids, targets, loss));
    tb_param_list_zero_grad(&r->params);
    tb_tensor zk = tb_tensor_2d(r->logits, ROWS * N_OFF, VOCAB);
    tb_tensor dzk = tb_tensor_2d(r->dlogits, ROWS * N_OFF, VOCAB);
    tb_tensor dz = tb_tensor_2d(r->dlogits, ROWS, N_CLASS);
    tb_tensor h = tb_tensor_2d(r->a.out, ROWS, DIM), dh = tb_tensor_2d(r->dout, ROWS, DIM);
    TRY(tb_cross_entropy_backward(ctx, NULL, &zk, targets, ROWS * N_OFF, 1.0f, r->ce_cache,
                                  r->ce_bytes, &dzk));
    TRY(tb_linear_backward(ctx, &r->head, &h, &dz, &dh));
    TRY(tfm_backward(ctx, &r->t, &r->a, r->dout, NULL));
    return tb_adam_step(ctx, &r->opt, lr_factor);
}

typedef struct result {
    double loss, all;      /* all: every offset's token right */
    double per[N_OFF];     /* accuracy per offset */
} result;

static tb_status evaluate(tb_ctx *ctx, run *r, uint64_t val_seed, int32_t *ids, int32_t *tg,
                          result *res)
{
    tb_rng rng;
    tb_rng_init(&rng, val_seed);
    size_t n = 0, all = 0, per[N_OFF] = {0};
    double loss_sum = 0.0;
    for (size_t start = 0; start < N_VAL; start += BATCH) {
        make_batch(&rng, ids, tg);
        float loss;
        TRY(forward(ctx, r, ids, tg, &loss));
        loss_sum += loss;
        for (size_t i = 0; i < ROWS; i++) {
            if (tg[i * N_OFF] == TB_IGNORE_INDEX)
                continue;
            n++;
            int right = 1;
            for (size_t k = 0; k < N_OFF; k++) {
                const float *z = r->logits + i * N_CLASS + k * VOCAB;
                int32_t best = 0;
                for (int32_t v = 1; v < VOCAB; v++)
                    if (z[v] > z[best])
                        best = v;
                per[k] += best == tg[i * N_OFF + k];
                right &= best == tg[i * N_OFF + k];
            }
            all += (size_t)right;
        }
    }
    res->loss = loss_sum / (double)(N_VAL / BATCH);
    res->all = (double)all / (double)n;
    for (size_t k = 0; k < N_OFF; k++)
        res->per[k] = (double)per[k] / (double)n;
    return TB_OK;
}

int main(int argc, char **argv)
{
    tb_ctx ctx;
    int rc = ex_ctx_init(&ctx);
    if (rc >= 0)
        return rc;
    uint64_t steps = 1500, seed = 1, max_heads = 8, threads = 0;
    const ex_opt opts[] = {
        {"steps", "N", "training steps of each model (batches of 32)", 20, 1000000, &steps},
        {"max-heads", "H", "largest head count: H = 1, 2, 4, ... up to this", 1, 32,
         &max_heads},
        {"seed", "S", "seed for the weights and the data", 0, UINT64_MAX, &seed},
        EX_OPT_THREADS(threads),
    };
    rc = ex_parse_args(argc, argv,
                       "One attention head vs several at the same width: a one-layer causal\n"
                       "transformer learns to output x[t-1], x[t-3], x[t-5] and x[t-7] at once\n"
                       "with H = 1, 2, 4, 8 heads of width 32 / H, the same parameters, data\n"
                       "and steps.\n"
                       "Writes no files.",
                       opts, sizeof opts / sizeof opts[0]);
    if (rc >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);

    tb_rng master;
    tb_rng_init(&master, seed);
    const uint64_t init_seed = tb_rng_next(&master), data_seed = tb_rng_next(&master);
    const uint64_t val_seed = tb_rng_next(&master);
    /* Linear warm-up (WARMUP steps, at most half the run), cosine decay to LR / 10. */
    const uint64_t warmup = steps / 2 < WARMUP ? steps / 2 : WARMUP;
    const tb_lr_schedule sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, warmup, steps, 0.1f);
    printf("multihead: libtblocks %s, seed %llu\n", tb_version_string(),
           (unsigned long long)seed);
    printf("task: %d random tokens of %d; at t >= %d output x[t-1], x[t-3], x[t-5], x[t-7] "
           "(%d-way each)\n",
           SEQ, VOCAB, FIRST, VOCAB);
    printf("model: 1 causal pre-norm layer, width %d, MLP %d, Linear(%d, %d x %d); chance: one "
           "token %.4f, all four %.6f\n",
           DIM, FF, DIM, N_OFF, VOCAB, 1.0 / VOCAB, pow(1.0 / VOCAB, N_OFF));
    printf("train: %llu steps of %d sequences each, Adam lr %.0e (warm-up %d, cosine), "
           "threads %d, kernels %s\n",
           (unsigned long long)steps, BATCH, (double)LR, (int)warmup, ctx.num_threads,
           ex_kernel_name(&ctx));
    const double t0 = ex_seconds();
    int32_t *ids = malloc(ROWS * sizeof(int32_t)), *tg = malloc(ROWS * N_OFF * sizeof(int32_t));
    if (!ids || !tg) {
        fprintf(stderr, "error: out of memory\n");
        free(ids), free(tg);
        return EX_EXIT_FAILURE;
    }
    printf("\n   %5s %9s %10s | %9s %9s %8s %8s %8s %8s\n", "heads", "head dim", "parameters",
           "val_loss", "all four", "x[t-1]", "x[t-3]", "x[t-5]", "x[t-7]");
    result res[6];
    size_t n_runs = 0;
    rc = EX_EXIT_OK;
    for (size_t H = 1; H <= max_heads && H <= DIM; H *= 2, n_runs++) {
        run r;
        memset(&r, 0, sizeof r);
        tb_status s = run_init(&ctx, &r, H, init_seed);
        tb_rng data;
        tb_rng_init(&data, data_seed); /* the same batches for every H */
        for (uint64_t step = 0; s == TB_OK && step < steps; step++) {
            float loss;
            make_batch(&data, ids, tg);
            s = train_step(&ctx, &r, ids, tg, tb_lr_factor(&sched, step), &loss);
            if (s == TB_OK && !isfinite(loss))
                s = tb_ctx_set_error(&ctx, TB_ERR_NON_FINITE, "H=%zu: loss %g at step %llu", H,
                                     (double)loss, (unsigned long long)step);
        }
        if (s == TB_OK)
            s = evaluate(&ctx, &r, val_seed, ids, tg, &res[n_runs]);
        const size_t n_params = tb_param_list_numel(&r.params, 1);
        run_free(&r);
        if (ex_failed(&ctx, s, "training")) {
            rc = EX_EXIT_FAILURE;
            break;
        }
        printf("   %5zu %9zu %10zu | %9.4f %9.4f %8.4f %8.4f %8.4f %8.4f\n", H, DIM / H,
               n_params, res[n_runs].loss, res[n_runs].all, res[n_runs].per[0],
               res[n_runs].per[1], res[n_runs].per[2], res[n_runs].per[3]);
        fflush(stdout);
    }
    if (rc == EX_EXIT_OK) {
        printf("done: %.2f s, threads %d\n", ex_seconds() - t0, ctx.num_threads);
        printf("final:");
        for (size_t i = 0; i < n_runs; i++)
            printf(" h%zu_all=%.4f h%zu_loss=%.4f", (size_t)1 << i, res[i].all,
                   (size_t)1 << i, res[i].loss);
        printf("\n");
    }
    free(ids), free(tg);
    return rc;
}
