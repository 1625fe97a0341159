/*
 * ptuning: pre-train a small GPT on one corpus, freeze it, and teach it a
 * second one four ways, each through a handful of virtual tokens and each
 * from the same frozen model:
 *
 *   P-tuning, LSTM     n virtual tokens from PEFT's PromptEncoder: an
 *                      (n, d) table through a BiLSTM and an MLP head
 *   P-tuning, MLP      the same table through a three-layer MLP
 *   plain prompts      the (n, d) table itself is the prompt (prompt
 *                      tuning: no reparameterisation)
 *   prefix tuning      n keys and values in every layer's attention
 *                      (PEFT's PrefixEncoder without projection)
 *
 * The first three put their n vectors in front of the input embeddings
 * (examples/common/ptuning_input.h, prefix mode); prefix tuning reaches
 * every layer (examples/common/prefix_tuning.h). Only those parameters
 * train; the model is frozen (tfm_freeze()) and its task-1 loss is checked
 * to be bit for bit what it was after every run.
 *
 * Task 1 is the gpt example's built-in corpus ("The cat sees the red ball
 * in the garden."), task 2 sentences of the same form from a kitchen ("The
 * cook bakes a warm loaf before noon."), as in lora_finetune. Tokens are
 * bytes. Each way runs --seeds times (the virtual tokens' initial values
 * and the batches change with the seed; the model and the corpora do not);
 * the table gives mean and spread. Everything is seeded; the numbers (not
 * the times and the resident memory) are bitwise the same for any
 * --threads. docs/ptuning.md explains the output.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_cli.h"
#include "ex_corpus.h"
#include "ex_finetune.h"
#include "ex_text.h"
#include "gpt.h"
#include "prefix_tuning.h"
#include "ptuning_input.h"
#include "tblocks.h"
#include "ex_try.h"

#define VOCAB 256
#define VAL_PERCENT 10
#define VAL_BATCHES 8
#define CLIP_NORM 1.0f
#define MAX_SEEDS 16
#define IGNORE (-100)

typedef struct opts {
    uint64_t pre_steps, steps, seeds, layers, heads, width, context, batch, seed, threads,
        corpus_kb, n_virtual, hidden, eval_every;
    double lr_pre, lr, lr_plain, target;
} opts;

/* What every phase shares. The adaptation windows are L = context - n
 * bytes (the n virtual positions take the rest of the context); ids and
 * the labels of each way are built from the same window. */
typedef struct world {
    tb_ctx ctx;
    gpt_config cfg;
    size_t B, T, L, n;
    ex_ft_corpus task[2];
    int32_t *x, *y;   /* (B, T): a window and its next bytes */
    int32_t *labels;  /* (B, L) Hugging Face's labels: the window, -100 at t = 0 */
    int32_t *targets; /* (B, L) shifted targets: x[t + 1], -100 at t = L - 1 */
} world;

/* ---- the four ways ------------------------------------------------------------------- */

enum { W_LSTM, W_MLP, W_PLAIN, W_PREFIX, N_WAYS };

static const char *const LABEL[N_WAYS] = {"P-tuning, LSTM", "P-tuning, MLP", "plain prompts",
                                          "prefix tuning"};
static const char *const KEY[N_WAYS] = {"lstm", "mlp", "plain", "prefix"};

typedef struct way {
    int kind;
    tb_ptuning enc;     /* LSTM, MLP */
    tb_embedding plain; /* plain prompts: (n, d), the prompts themselves */
    ptin p;             /* LSTM, MLP, plain: the input with the virtual tokens */
    prefix_tuning pre;  /* prefix tuning */
    tb_param_list list; /* the trainable parameters */
    size_t extra_bytes; /* the way's buffers besides its parameters */
} way;

static void way_free(tb_ctx *ctx, way *wy, gpt *m)
{
    if (wy->kind == W_PREFIX)
        tfm_set_prefix(ctx, &m->t, NULL);
    tb_param_list_free(&wy->list);
    ptin_free(&wy->p);
    tb_ptuning_free(&wy->enc);
    tb_embedding_free(&wy->plain);
    prefix_tuning_free(&wy->pre);
}

static tb_status way_init(world *w, gpt *m, const opts *o, int kind, tb_rng *rng, way *wy)
{
    tb_ctx *ctx = &w->ctx;
    const size_t d = w->cfg.n_embd, n = w->n;
    memset(wy, 0, sizeof *wy);
    wy->kind = kind;
    TRY(tb_param_list_init(ctx, &wy->list));
    if (kind == W_PREFIX) {
        const prefix_tuning_config pc = {n, 0, 0};
        TRY(prefix_tuning_init(ctx, &wy->pre, &m->t.cfg, &pc, rng));
        TRY(prefix_tuning_params(ctx, &wy->pre, "prefix.", &wy->list));
        return prefix_tuning_attach(ctx, &wy->pre, &m->t);
    }
    const ptin_template tpl = ptin_prefix(n);
    if (kind == W_PLAIN) {
        TRY(tb_embedding_init(ctx, &wy->plain, n, d, rng));
        TRY(tb_embedding_params(ctx, &wy->plain, "prompt.", &wy->list));
        TRY(ptin_init(ctx, &wy->p, &tpl, d, w->B, w->L, NULL));
    } else {
        tb_ptuning_config pc;
        memset(&pc, 0, sizeof pc);
        pc.num_virtual_tokens = n;
        pc.token_dim = d;
        pc.encoder_hidden_size = o->hidden ? (size_t)o->hidden : d;
        pc.encoder_num_layers = 2; /* PEFT's default */
        pc.type = kind == W_LSTM ? TB_PTUNING_LSTM : TB_PTUNING_MLP;
        TRY(tb_ptuning_init(ctx, &wy->enc, &pc, rng));
        TRY(tb_ptuning_params(ctx, &wy->enc, PTIN_PEFT_PREFIX, &wy->list));
        TRY(ptin_init(ctx, &wy->p, &tpl, d, w->B, w->L, &wy->enc));
    }
    /* ptin's buffers: prompts and their gradient (n, d), the stack's input
     * and its gradient (B, n + L, d), key_valid, targets, slots, the
     * encoder's cache. */
    const size_t R = w->B * (n + w->L);
    wy->extra_bytes = 2 * n * d * sizeof(float) + 2 * R * d * sizeof(float) +
                      R * (2 * sizeof(int32_t) + 1) + wy->p.enc_cache_bytes;
    return TB_OK;
}

/* Forward on the window in w->x: the loss of predicting bytes 1 .. L-1 of
 * it (the same L - 1 targets for every way and for the bare model). */
static tb_status way_forward(world *w, gpt *m, gpt_acts *a, way *wy, tb_mode mode, float *loss)
{
    tb_ctx *ctx = &w->ctx;
    const size_t B = w->B, L = w->L;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < L; t++) {
            w->labels[b * L + t] = t == 0 ? IGNORE : w->x[b * L + t];
            w->targets[b * L + t] = t + 1 < L ? w->x[b * L + t + 1] : IGNORE;
        }
    if (!wy || wy->kind == W_PREFIX) {
        if (wy)
            TRY(prefix_tuning_forward(ctx, &wy->pre));
        return gpt_forward(ctx, m, a, mode, NULL, w->x, w->targets, B, L, loss);
    }
    if (wy->kind == W_PLAIN)
        memcpy(wy->p.prompts, wy->plain.weight.value, wy->plain.weight.numel * sizeof(float));
    return ptin_gpt_forward(ctx, m, a, &wy->p, wy->kind == W_PLAIN ? NULL : &wy->enc, mode,
                            NULL, w->x, NULL, w->labels, NULL, B, L, loss);
}

/* Backward of the last training forward: the way's gradients (added). */
static tb_status way_backward(world *w, gpt *m, gpt_acts *a, way *wy)
{
    tb_ctx *ctx = &w->ctx;
    if (wy->kind == W_PREFIX) {
        TRY(gpt_backward(ctx, m, a, w->x, w->targets, 1.0f));
        return prefix_tuning_backward(ctx, &wy->pre);
    }
    if (wy->kind != W_PLAIN)
        return ptin_gpt_backward(ctx, m, a, &wy->p, &wy->enc, 1.0f);
    /* Plain prompts: the gradient at the virtual positions, summed over the
     * batch, is the prompts' gradient. */
    TRY(gpt_backward_embeds(ctx, m, a, wy->p.targets, 1.0f, wy->p.d_embeds));
    TRY(ptin_gather(ctx, &wy->p, wy->p.d_embeds));
    float *g = wy->plain.weight.grad;
    for (size_t i = 0; i < wy->plain.weight.numel; i++)
        g[i] += wy->p.d_prompts[i];
    return TB_OK;
}

/* Mean validation loss over VAL_BATCHES fixed batches of task c (wy NULL:
 * the bare model). */
static tb_status val_loss(world *w, gpt *m, gpt_acts *a, way *wy, int c, double *out)
{
    double sum = 0.0;
    for (size_t i = 0; i < VAL_BATCHES; i++) {
        float l;
        ex_ft_windows(&w->task[c], NULL, 1, i, VAL_BATCHES, w->B, w->L, w->x, w->y);
        TRY(way_forward(w, m, a, wy, TB_MODE_INFERENCE, &l));
        sum += l;
    }
    *out = sum / VAL_BATCHES;
    return TB_OK;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- pre-training ------------------------------------------------------------------------- */

static tb_status pretrain(world *w, gpt *m, const opts *o, double *ms)
{
    tb_ctx *ctx = &w->ctx;
    gpt_acts a;
    tb_adam opt;
    memset(&a, 0, sizeof a), memset(&opt, 0, sizeof opt);
    tb_rng rng;
    tb_rng_init(&rng, o->seed);
    TRY(gpt_init(ctx, m, &w->cfg, &rng));
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = (float)o->lr_pre;
    oc.beta2 = 0.95f;
    oc.weight_decay = 0.1f;
    const tb_lr_schedule sched =
        tb_lr_schedule_make(TB_LR_WARMUP_COSINE, o->pre_steps / 10, o->pre_steps, 0.1f);
    double *t = malloc(o->pre_steps * sizeof(double));
    tb_status s = t ? TB_OK : tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "no memory for times");
    if (s == TB_OK)
        s = gpt_acts_init(ctx, &a, m, w->B, w->T);
    if (s == TB_OK)
        s = tb_adam_init(ctx, &opt, &m->params, &oc);
    if (s == TB_OK)
        s = tb_adam_add_group(ctx, &opt, oc.lr, 0.0f, tb_select_no_decay, NULL, NULL);
    for (uint64_t step = 0; s == TB_OK && step < o->pre_steps; step++) {
        float l;
        double norm;
        const double t0 = ex_seconds();
        tb_param_list_zero_grad(&m->params);
        ex_ft_windows(&w->task[0], &rng, 0, 0, VAL_BATCHES, w->B, w->T, w->x, w->y);
        s = gpt_forward(ctx, m, &a, TB_MODE_TRAINING, &rng, w->x, w->y, w->B, w->T, &l);
        if (s == TB_OK && !isfinite(l))
            s = tb_ctx_set_error(ctx, TB_ERR_NON_FINITE, "step %llu: training loss %g",
                                 (unsigned long long)step + 1, (double)l);
        if (s == TB_OK)
            s = gpt_backward(ctx, m, &a, w->x, w->y, 1.0f);
        if (s == TB_OK)
            s = tb_clip_grad_norm(ctx, &m->params, CLIP_NORM, &norm);
        if (s == TB_OK)
            s = tb_adam_step(ctx, &opt, tb_lr_factor(&sched, opt.step));
        t[step] = ex_seconds() - t0;
    }
    if (s == TB_OK)
        *ms = 1000.0 * median(t, o->pre_steps);
    free(t);
    tb_adam_free(&opt);
    gpt_acts_free(&a);
    return s;
}

/* ---- adapting ------------------------------------------------------------------------------ */

/* One run of one way with one seed. curve[i]: the task-2 validation loss
 * after (i + 1) * eval_every steps (the last entry after every step). */
typedef struct run {
    size_t trainable, grad_bytes, adam_bytes, accounted_bytes;
    long rss_kib;
    double t1; /* the frozen model's task-1 loss after the run, without prompts */
    double *curve;
    size_t n_curve;
    uint64_t sum; /* checksum of the trained parameters */
} run;

static size_t n_evals(const opts *o)
{
    return (size_t)((o->steps + o->eval_every - 1) / o->eval_every);
}

static tb_status adapt(world *w, gpt *m, gpt_acts *a0, const opts *o, int kind, uint64_t seed,
                       run *r, double *step_ms)
{
    tb_ctx *ctx = &w->ctx;
    way wy;
    gpt_acts a;
    tb_adam opt;
    memset(&a, 0, sizeof a), memset(&opt, 0, sizeof opt);
    tb_rng init_rng, batch_rng;
    tb_rng_init(&init_rng, 1000 + seed); /* the way's initial values */
    tb_rng_init(&batch_rng, 2000 + seed); /* the batches: the same for every way */
    ex_rss_phase_start();
    tb_status s = way_init(w, m, o, kind, &init_rng, &wy);
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = (float)(kind == W_PLAIN ? o->lr_plain : o->lr);
    oc.beta2 = 0.95f;
    oc.weight_decay = 0.0f;
    const tb_lr_schedule sched =
        tb_lr_schedule_make(TB_LR_WARMUP_COSINE, o->steps / 10, o->steps, 0.1f);
    /* The activations: B x (n + L) positions through the input, or B x L
     * tokens with n prefix keys per layer (sized after attaching). */
    if (s == TB_OK)
        s = gpt_acts_init(ctx, &a, m, w->B, kind == W_PREFIX ? w->L : w->T);
    if (s == TB_OK)
        s = tb_adam_init(ctx, &opt, &wy.list, &oc);
    size_t ev = 0;
    for (uint64_t step = 0; s == TB_OK && step < o->steps; step++) {
        float l;
        double norm;
        const double t0 = ex_seconds();
        tb_param_list_zero_grad(&wy.list);
        ex_ft_windows(&w->task[1], &batch_rng, 0, 0, VAL_BATCHES, w->B, w->L, w->x, w->y);
        s = way_forward(w, m, &a, &wy, TB_MODE_TRAINING, &l);
        if (s == TB_OK && !isfinite(l))
            s = tb_ctx_set_error(ctx, TB_ERR_NON_FINITE, "step %llu: training loss %g",
                                 (unsigned long long)step + 1, (double)l);
        if (s == TB_OK)
            s = way_backward(w, m, &a, &wy);
        if (s == TB_OK)
            s = tb_clip_grad_norm(ctx, &wy.list, CLIP_NORM, &norm);
        if (s == TB_OK)
            s = tb_adam_step(ctx, &opt, tb_lr_factor(&sched, opt.step));
        step_ms[step] = 1000.0 * (ex_seconds() - t0);
        if (s == TB_OK && ((step + 1) % o->eval_every == 0 || step + 1 == o->steps))
            s = val_loss(w, m, &a, &wy, 1, &r->curve[ev++]);
    }
    r->n_curve = ev;
    if (s == TB_OK) {
        r->rss_kib = ex_proc_kib("VmHWM");
        r->trainable = tb_param_list_numel(&wy.list, 1);
        size_t values = 0, grads = 0;
        ex_ft_list_bytes(&wy.list, &values, &grads);
        r->grad_bytes = grads;
        r->adam_bytes = tb_adam_state_bytes(&opt);
        r->accounted_bytes = values + grads + r->adam_bytes + a.bytes + wy.extra_bytes;
        r->sum = ex_ft_checksum(&wy.list, EX_FNV_OFFSET);
    }
    tb_adam_free(&opt);
    gpt_acts_free(&a);
    way_free(ctx, &wy, m);
    /* The frozen model alone again: its task-1 loss must not have moved. */
    if (s == TB_OK)
        s = val_loss(w, m, a0, NULL, 0, &r->t1);
    return s;
}

/* ---- the run ------------------------------------------------------------------------------ */

static int parse(int argc, char **argv, opts *o)
{
    *o = (opts){.pre_steps = 800, .steps = 300, .seeds = 3, .layers = 2, .heads = 4,
                .width = 64, .context = 48, .batch = 16, .seed = 1, .corpus_kb = 200,
                .n_virtual = 8, .hidden = 0, .eval_every = 20, .lr_pre = 3e-3, .lr = 1e-2, .lr_plain = 1e-1,
                .target = 0.0};
    const ex_opt op[] = {
        {"pretrain-steps", "N", "AdamW steps on task 1", 1, 1000000, &o->pre_steps},
        {"steps", "N", "AdamW steps on task 2, for each way and seed", 1, 1000000, &o->steps},
        {"seeds", "N", "runs of each way (seeds --seed .. --seed + N - 1)", 1, MAX_SEEDS,
         &o->seeds},
        {"seed", "N", "seed (corpora and pre-training; the first run's seed)", 0,
         UINT64_MAX - MAX_SEEDS - 2000, &o->seed},
        {"virtual", "N", "virtual tokens (and prefix positions)", 1, 256, &o->n_virtual},
        {"encoder-hidden", "H", "the prompt encoder's hidden size (0: the model width)", 0,
         4096, &o->hidden},
        {"eval-every", "N", "steps between task-2 validations", 1, 1000000, &o->eval_every},
        {"layers", "N", "transformer blocks", 1, 48, &o->layers},
        {"heads", "N", "attention heads (must divide --width)", 1, 64, &o->heads},
        {"width", "C", "model width", 8, 4096, &o->width},
        {"context", "T", "context length in bytes (virtual tokens included)", 16, 2048,
         &o->context},
        {"batch", "B", "sequences per step", 1, 1024, &o->batch},
        EX_OPT_THREADS(o->threads),
        {"corpus-kb", "N", "size of each task's corpus", 16, 100000, &o->corpus_kb},
    };
    const ex_xopt xo[] = {
        {"lr-pretrain", "X", "peak learning rate of pre-training", &o->lr_pre, NULL, 1e-6, 1.0},
        {"lr", "X", "peak learning rate of P-tuning and prefix tuning", &o->lr, NULL, 1e-6, 1.0},
        {"lr-plain", "X", "peak learning rate of the plain prompts", &o->lr_plain, NULL, 1e-6,
         10.0},
        {"target", "X",
         "task-2 validation loss to count steps to (0: 90% of the way from the frozen "
         "model's loss to the worst way's mean final loss)",
         &o->target, NULL, 0.0, 100.0},
    };
    return ex_parse_args_ex(argc, argv,
                            "Pre-train a byte-level GPT on task 1, freeze it, and learn task 2\n"
                            "through virtual tokens four ways: P-tuning with an LSTM encoder,\n"
                            "with an MLP encoder, plain trainable prompts, and prefix tuning;\n"
                            "compare what each trains, costs and reaches over several seeds.",
                            op, sizeof op / sizeof op[0], xo, sizeof xo / sizeof xo[0]);
}

static void mean_sd(const double *v, size_t n, double *mean, double *sd)
{
    double s = 0.0, q = 0.0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    *mean = n ? s / (double)n : NAN;
    for (size_t i = 0; i < n; i++)
        q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (double)(n - 1)) : 0.0;
}

int main(int argc, char **argv)
{
    opts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0)
        return rc;
    world w;
    memset(&w, 0, sizeof w);
    if ((rc = ex_ctx_init(&w.ctx)) >= 0)
        return rc;
    ex_apply_threads(&w.ctx, o.threads);
    tb_ctx *ctx = &w.ctx;
    w.cfg = (gpt_config){o.layers, o.heads, o.width, o.context, VOCAB, 0.0f};
    if (gpt_config_check(ctx, &w.cfg) != TB_OK) {
        ex_shown e;
        fprintf(stderr, "error: %s\n", ex_show(&e, tb_ctx_error(ctx)));
        return EX_EXIT_USAGE;
    }
    if (o.n_virtual + 8 > o.context) {
        fprintf(stderr, "error: --virtual %llu leaves fewer than 8 of the %llu context positions "
                        "for text\n",
                (unsigned long long)o.n_virtual, (unsigned long long)o.context);
        return EX_EXIT_USAGE;
    }
    w.B = o.batch, w.T = o.context, w.n = o.n_virtual, w.L = w.T - w.n;
    w.x = malloc(w.B * w.T * sizeof(int32_t)), w.y = malloc(w.B * w.T * sizeof(int32_t));
    w.labels = malloc(w.B * w.L * sizeof(int32_t)), w.targets = malloc(w.B * w.L * sizeof(int32_t));
    const size_t ne = n_evals(&o), nruns = N_WAYS * o.seeds;
    run *runs = calloc(nruns, sizeof(run));
    double *curves = malloc(nruns * ne * sizeof(double));
    double *step_ms = malloc(o.seeds * o.steps * sizeof(double));
    if (!w.x || !w.y || !w.labels || !w.targets || !runs || !curves || !step_ms ||
        !ex_ft_corpus_make(&ex_grammar_garden, o.seed, o.corpus_kb * 1024, w.T, VAL_PERCENT,
                           &w.task[0]) ||
        !ex_ft_corpus_make(&ex_grammar_kitchen, o.seed + 1, o.corpus_kb * 1024, w.T,
                           VAL_PERCENT, &w.task[1])) {
        fprintf(stderr, "error: out of memory, or --corpus-kb too small for the context\n");
        return EX_EXIT_FAILURE;
    }
    const double t_start = ex_seconds();
    printf("ptuning: libtblocks %s, seed %llu, seeds %llu, threads %d, kernels %s\n",
           tb_version_string(), (unsigned long long)o.seed, (unsigned long long)o.seeds,
           ctx->num_threads, ex_kernel_name(ctx));
    printf("task 1: \"The cat sees the red ball in the garden.\" (the gpt example's corpus)\n"
           "task 2: \"The cook bakes a warm loaf before noon.\" (the same form, other words)\n");
    printf("%llu KiB of each, %d%% held out for validation; tokens are bytes\n\n",
           (unsigned long long)o.corpus_kb, VAL_PERCENT);

    gpt m;
    gpt_acts a0;
    memset(&m, 0, sizeof m), memset(&a0, 0, sizeof a0);
    double ms = 0, pre[2] = {0, 0};
    size_t kept = 0;
    printf("1. pre-training on task 1: %llu AdamW steps of %zu x %zu bytes, lr %g\n",
           (unsigned long long)o.pre_steps, w.B, w.T, o.lr_pre);
    fflush(stdout);
    int failed = ex_failed(ctx, pretrain(&w, &m, &o, &ms), "pre-training") ||
                 ex_failed(ctx, tfm_freeze(ctx, &m.t, &kept), "freezing") ||
                 ex_failed(ctx, gpt_acts_init(ctx, &a0, &m, w.B, w.L), "activations") ||
                 ex_failed(ctx, val_loss(&w, &m, &a0, NULL, 0, &pre[0]), "validation") ||
                 ex_failed(ctx, val_loss(&w, &m, &a0, NULL, 1, &pre[1]), "validation");
    const uint64_t model_sum = failed ? 0 : ex_ft_checksum(&m.params, EX_FNV_OFFSET);
    if (!failed) {
        printf("   model: %zu layers, %zu heads, width %zu, context %zu: %zu parameters, "
               "%.1f ms/step\n",
               w.cfg.n_layer, w.cfg.n_head, w.cfg.n_embd, w.cfg.block_size,
               tb_param_list_numel(&m.params, 0), ms);
        printf("   frozen (tfm_freeze): trainable %zu; %.1f KiB of values, %.1f KiB of gradient "
               "buffers kept\n",
               tb_param_list_numel(&m.params, 1),
               (double)(tb_param_list_numel(&m.params, 0) * sizeof(float)) / 1024.0,
               (double)kept / 1024.0);
        printf("   validation loss of the frozen model on %zu-byte windows (nats/byte): task 1 "
               "%.4f, task 2 %.4f\n",
               w.L, pre[0], pre[1]);
        printf("\n2. learning task 2 through %zu virtual tokens, four ways, from the frozen "
               "model:\n   %llu AdamW steps each, lr %g (plain prompts %g), %llu seeds; task-2 "
               "validation every %llu steps\n",
               w.n, (unsigned long long)o.steps, o.lr, o.lr_plain, (unsigned long long)o.seeds,
               (unsigned long long)o.eval_every);
        ex_rss_phase_start();
        printf("   resident before each: %ld KiB (code, corpora, the frozen model)\n",
               ex_proc_kib("VmRSS"));
        fflush(stdout);
    }
    double way_ms[N_WAYS] = {0};
    for (int k = 0; k < N_WAYS && !failed; k++) {
        for (size_t j = 0; j < o.seeds && !failed; j++) {
            run *r = &runs[k * o.seeds + j];
            r->curve = curves + (k * o.seeds + j) * ne;
            failed = ex_failed(ctx,
                               adapt(&w, &m, &a0, &o, k, o.seed + j, r, step_ms + j * o.steps),
                               LABEL[k]);
        }
        if (!failed)
            way_ms[k] = median(step_ms, o.seeds * o.steps);
    }
    /* The frozen model is untouched: the same weights, the same task-1 loss bit for bit. */
    int frozen_ok = !failed && ex_ft_checksum(&m.params, EX_FNV_OFFSET) == model_sum;
    for (size_t i = 0; !failed && i < nruns; i++)
        frozen_ok = frozen_ok && memcmp(&runs[i].t1, &pre[0], sizeof(double)) == 0;
    if (!failed) {
        double final_mean[N_WAYS], final_sd[N_WAYS], target = o.target;
        double worst = -INFINITY;
        for (int k = 0; k < N_WAYS; k++) {
            double v[MAX_SEEDS];
            for (size_t j = 0; j < o.seeds; j++)
                v[j] = runs[k * o.seeds + j].curve[ne - 1];
            mean_sd(v, o.seeds, &final_mean[k], &final_sd[k]);
            worst = final_mean[k] > worst ? final_mean[k] : worst;
        }
        if (target == 0.0)
            target = pre[1] - 0.9 * (pre[1] - worst);
        printf("   target task-2 loss %.4f (%s)\n\n", target,
               o.target == 0.0 ? "90% of the way from the frozen model's to the worst way's "
                                 "mean final loss"
                               : "--target");
        printf("   %-15s %9s %10s %10s %10s %8s %16s %16s %8s\n", "", "trainable",
               "grad+Adam", "memory KiB", "peak RSS", "ms/step", "steps to target",
               "task 2 final", "task 1");
        double steps_mean[N_WAYS];
        size_t reached[N_WAYS];
        for (int k = 0; k < N_WAYS; k++) {
            const run *r0 = &runs[k * o.seeds];
            double v[MAX_SEEDS];
            size_t nr = 0;
            long rss = -1;
            for (size_t j = 0; j < o.seeds; j++) {
                const run *r = &runs[k * o.seeds + j];
                rss = r->rss_kib > rss ? r->rss_kib : rss;
                for (size_t e = 0; e < r->n_curve; e++)
                    if (r->curve[e] <= target) {
                        const uint64_t at = (e + 1) * o.eval_every;
                        v[nr++] = (double)(at < o.steps ? at : o.steps);
                        break;
                    }
            }
            double sm, ss;
            mean_sd(v, nr, &sm, &ss);
            steps_mean[k] = nr ? sm : NAN;
            reached[k] = nr;
            char steps[400], fin[80], rs[24] = "-";
            if (nr == 0)
                snprintf(steps, sizeof steps, "not reached");
            else if (nr < o.seeds)
                snprintf(steps, sizeof steps, "%.0f (%zu of %llu)", sm, nr,
                         (unsigned long long)o.seeds);
            else
                snprintf(steps, sizeof steps, "%.0f +- %.0f", sm, ss);
            snprintf(fin, sizeof fin, "%.4f +- %.4f", final_mean[k], final_sd[k]);
            if (rss >= 0)
                snprintf(rs, sizeof rs, "%ld", rss);
            printf("   %-15s %9zu %10.1f %10.1f %10s %8.2f %16s %16s %8.4f\n", LABEL[k],
                   r0->trainable, (double)(r0->grad_bytes + r0->adam_bytes) / 1024.0,
                   (double)r0->accounted_bytes / 1024.0, rs, way_ms[k], steps, fin, r0->t1);
        }
        printf("   (the frozen model: task 1 %.4f, task 2 %.4f; mean +- standard deviation over "
               "%llu seeds)\n",
               pre[0], pre[1], (unsigned long long)o.seeds);
        printf("   grad+Adam: KiB of the trainable parameters' gradients and AdamW's state "
               "(the frozen model\n   keeps %.1f KiB of gradient buffers, the same for "
               "every way and not counted)\n",
               (double)kept / 1024.0);
        printf("   memory: the way's values + grad + Adam + activations + its input buffers, as "
               "allocated\n   (the frozen model's values not counted); peak RSS: the phase's "
               "peak resident KiB (VmHWM)\n");
        printf("   task 1: the frozen model's task-1 loss after the runs, without virtual "
               "tokens: %s\n",
               frozen_ok ? "bitwise unchanged in every run, weights' checksum unchanged"
                         : "CHANGED");
        printf("\ndone: %.1f s\n", ex_seconds() - t_start);
        printf("final: pre_t1=%.9g pre_t2=%.9g target=%.9g frozen_ok=%d", pre[0], pre[1], target,
               frozen_ok);
        for (int k = 0; k < N_WAYS; k++) {
            const run *r0 = &runs[k * o.seeds];
            printf(" %s_n=%zu %s_grad=%zu %s_adam=%zu %s_t2=%.9g %s_sd=%.9g %s_steps=%.9g "
                   "%s_reached=%zu",
                   KEY[k], r0->trainable, KEY[k], r0->grad_bytes, KEY[k], r0->adam_bytes,
                   KEY[k], final_mean[k], KEY[k], final_sd[k], KEY[k], steps_mean[k], KEY[k],
                   reached[k]);
            double tmax = -INFINITY;
            for (size_t j = 0; j < o.seeds; j++)
                tmax = runs[k * o.seeds + j].curve[ne - 1] > tmax
                           ? runs[k * o.seeds + j].curve[ne - 1]
                           : tmax;
            printf(" %s_t2max=%.9g", KEY[k], tmax);
        }
        printf("\nchecksums: model=%016llx", (unsigned long long)model_sum);
        for (int k = 0; k < N_WAYS; k++) {
            uint64_t h = EX_FNV_OFFSET;
            for (size_t j = 0; j < o.seeds; j++)
                h = (h ^ runs[k * o.seeds + j].sum) * 1099511628211ull;
            printf(" %s=%016llx", KEY[k], (unsigned long long)h);
        }
        printf("\n");
    }
    gpt_acts_free(&a0);
    gpt_free(&m);
    free(runs), free(curves), free(step_ms);
    free(w.task[0].text), free(w.task[1].text);
    free(w.x), free(w.y), free(w.labels), free(w.targets);
    return failed || !frozen_ok ? EX_EXIT_FAILURE : EX_EXIT_OK;
}
