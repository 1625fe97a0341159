/*
 * gpt: train a small GPT-style language model on bytes, and generate text
 * with every decoding strategy. The model is wired from libtblocks' blocks
 * in examples/common/gpt.c; docs/gpt.md walks through the output.
 *
 *   gpt train      [options]   train (default corpus built in; --data FILE)
 *   gpt generate   [options]   continue a prompt from a checkpoint
 *   gpt repetition [options]   one prompt, every strategy, repetition measured
 *
 * Run with no command, gpt prints its usage and exits with status 2;
 * `gpt --help` and `gpt COMMAND --help` print the usage to stdout.
 *
 * Tokens are bytes (vocabulary 256), so any UTF-8 text works. Training
 * uses AdamW with warm-up and cosine decay, gradient clipping, gradient
 * accumulation, a train/validation split, early stopping on the validation
 * loss and checkpoints that --resume continues exactly. Everything is
 * seeded: the loss curve is the same for any --threads.
 *
 * Data-parallel (docs/data_parallel.md): build/bin/gpt_mpi is this program
 * built with EX_MPI and libtblocks_mpi (ex_mpi.h); `mpirun -np P gpt_mpi train
 * ...` splits each step's --accum micro-batches over the P processes
 * (tb_dp_split()) and reduces their gradients in micro-batch order
 * (tb_dp_reducer), so the loss curve and the checkpoint are bitwise those
 * of one process (`gpt train`, which runs the same arithmetic with the
 * one-process communicator). Each micro-batch draws its windows and
 * dropout from its own stream (tb_dp_rng() of the checkpoint's stream, the
 * step and the micro-batch index). Every rank holds the whole model and
 * computes the same update; only rank 0 prints and writes files.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_cli.h"
#include "ex_corpus.h"
#include "ex_file.h"
#include "ex_mpi.h"
#include "ex_plot.h"
#include "ex_random.h"
#include "ex_text.h"
#include "gpt.h"
#include "tblocks.h"

/* The processes training runs on: the one-process communicator, or (in
 * gpt_mpi) MPI_COMM_WORLD's, from ex_mpi_main() (set before any command
 * runs; the commands' signature is ex_run_command's). */
static const tb_comm *g_comm;

#define VOCAB 256
#define VAL_PERCENT 10
#define VAL_BATCHES 8
#define CLIP_NORM 1.0f

/* ---- checkpoints ------------------------------------------------------------------ */

/* What early stopping needs to resume: kept in the checkpoint as
 * gpt.best_val (a decimal real, 17 digits: exact) and gpt.bad_evals. */
typedef struct train_state {
    double best_val;
    uint64_t bad_evals;
} train_state;

#define BEST_VAL_KEY "gpt.best_val"
#define BAD_EVALS_KEY "gpt.bad_evals"

static tb_status save_ckpt(tb_ctx *ctx, const char *path, gpt *m, const tb_adam *opt,
                           const tb_rng *rng, const train_state *ts)
{
    enum { N = GPT_CONFIG_N_META + 3 };
    gpt_config_text text;
    tb_st_meta meta[N];
    gpt_config_meta(&m->cfg, &text, meta);
    char bv[48], be[24];
    snprintf(bv, sizeof bv, "%.17g", ts->best_val);
    snprintf(be, sizeof be, "%llu", (unsigned long long)ts->bad_evals);
    meta[GPT_CONFIG_N_META] = (tb_st_meta){BEST_VAL_KEY, bv};
    meta[GPT_CONFIG_N_META + 1] = (tb_st_meta){BAD_EVALS_KEY, be};
    meta[GPT_CONFIG_N_META + 2] = (tb_st_meta){"gpt.tokenizer", "bytes"};
    return tb_checkpoint_save(ctx, path, &m->params, opt, rng, meta, N, TB_CKPT_DEFAULT);
}

static tb_status fail_msg(tb_ctx *ctx, tb_status s, const char *msg, const char *key,
                          const char *value)
{
    return tb_ctx_set_error(ctx, s, "%s = '%.40s' %s", key, value, msg);
}

/* The training state, parsed strictly; absent (a checkpoint another
 * program wrote) it stays as it was. */
static tb_status read_train_state(tb_ctx *ctx, const tb_st_file *f, train_state *ts)
{
    const char *bv = tb_st_meta_get(f, BEST_VAL_KEY), *be = tb_st_meta_get(f, BAD_EVALS_KEY);
    train_state t = *ts;
    if (bv && !ex_parse_real(bv, &t.best_val))
        return fail_msg(ctx, TB_ERR_FORMAT, "is not a decimal number", BEST_VAL_KEY, bv);
    if (be && !ex_parse_u64(be, &t.bad_evals))
        return fail_msg(ctx, TB_ERR_FORMAT, "is not a decimal integer", BAD_EVALS_KEY, be);
    *ts = t;
    return TB_OK;
}

/* "error: checkpoint <path>: ..." for a failed call; 1 if it failed. */
static int ckpt_failed(const tb_ctx *ctx, tb_status s, const char *path)
{
    if (s == TB_OK)
        return 0;
    ex_shown p;
    char what[EX_SHOWN_MAX + 16];
    snprintf(what, sizeof what, "checkpoint %s", ex_show(&p, path));
    return ex_failed(ctx, s, what);
}

/* The model configuration (and, with ts, the training state) of a
 * checkpoint of this program, validated against its tensors before
 * anything is allocated for the model (gpt_config_from_checkpoint()). */
static int read_ckpt_config(tb_ctx *ctx, const char *path, gpt_config *cfg, train_state *ts)
{
    if (!ex_check_regular(path, "checkpoint"))
        return 0;
    tb_st_file f;
    tb_status s = tb_st_open(ctx, path, &f);
    if (s == TB_OK)
        s = gpt_config_from_checkpoint(ctx, &f, cfg);
    if (s == TB_OK && cfg->vocab_size != VOCAB)
        s = tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                             "gpt.vocab_size = %zu; this program is byte-level (vocabulary %d)",
                             cfg->vocab_size, VOCAB);
    if (s == TB_OK && ts)
        s = read_train_state(ctx, &f, ts);
    tb_st_close(&f);
    return !ckpt_failed(ctx, s, path);
}

/* ---- training ----------------------------------------------------------------------- */

typedef struct data {
    const unsigned char *bytes;
    size_t n_train, n_val;
} data;

/* B windows of T+1 bytes: from random training offsets, or (val) from fixed
 * offsets spread over the validation part. */
static void batch_of(const data *d, tb_rng *rng, int val, size_t idx, size_t B, size_t T,
                     int32_t *x, int32_t *y)
{
    for (size_t b = 0; b < B; b++) {
        size_t off;
        if (val) {
            const size_t span = d->n_val - T - 1;
            off = d->n_train + (span * (idx * B + b)) / (VAL_BATCHES * B);
        } else {
            off = ex_rand_below(rng, d->n_train - T - 1);
        }
        for (size_t t = 0; t < T; t++) {
            x[b * T + t] = d->bytes[off + t];
            y[b * T + t] = d->bytes[off + t + 1];
        }
    }
}

static tb_status val_loss(tb_ctx *ctx, gpt *m, gpt_acts *a, const data *d, size_t B, size_t T,
                          int32_t *x, int32_t *y, double *out)
{
    double sum = 0.0;
    for (size_t i = 0; i < VAL_BATCHES; i++) {
        float l;
        batch_of(d, NULL, 1, i, B, T, x, y);
        tb_status s = gpt_forward(ctx, m, a, TB_MODE_INFERENCE, NULL, x, y, B, T, &l);
        if (s != TB_OK)
            return s;
        sum += l;
    }
    *out = sum / VAL_BATCHES;
    return TB_OK;
}

static void fmt_time(char *buf, size_t cap, double s)
{
    if (s < 0 || !isfinite(s))
        snprintf(buf, cap, "-");
    else if (s < 60)
        snprintf(buf, cap, "%.0fs", s);
    else
        snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}


static int sample_text(tb_ctx *ctx, const gpt *m, const char *prompt, size_t n_new, uint64_t seed,
                       const tb_sampler_config *sc, char *out, size_t *n_out);

typedef struct train_opts {
    uint64_t steps, layers, heads, width, context, batch, accum, warmup, seed, threads;
    uint64_t eval_every, patience, max_seconds, corpus_kb, stop_at, max_skipped, zero;
    double lr, dropout, wd;
    const char *data_path, *ckpt, *resume, *csv, *svg;
} train_opts;

/* -1 to go on, or the exit code (ex_parse_args_ex()). */
static int parse_train(int argc, char **argv, train_opts *o)
{
    *o = (train_opts){.steps = 1000, .layers = 4, .heads = 4, .width = 128, .context = 64,
                      .batch = 16, .accum = 1, .warmup = 100, .seed = 1, .eval_every = 100,
                      .patience = 5, .max_seconds = 100, .corpus_kb = 400, .max_skipped = 10,
                      .lr = 3e-3, .wd = 0.1, .ckpt = "gpt.safetensors"};
    const ex_opt opts[] = {
        {"steps", "N", "optimizer steps (the schedule's length)", 1, 10000000, &o->steps},
        {"layers", "N", "transformer blocks", 1, 48, &o->layers},
        {"heads", "N", "attention heads (must divide --width)", 1, 64, &o->heads},
        {"width", "C", "model width", 8, 4096, &o->width},
        {"context", "T", "context length in bytes", 2, 2048, &o->context},
        {"batch", "B", "sequences per micro-batch", 1, 1024, &o->batch},
        {"accum", "K", "micro-batches accumulated per step", 1, 1024, &o->accum},
        {"warmup", "N", "warm-up steps", 0, 1000000, &o->warmup},
        {"seed", "N", "seed (initial weights, batches, dropout)", 0, UINT64_MAX, &o->seed},
        EX_OPT_THREADS(o->threads),
        {"eval-every", "N", "steps between validation, checkpoint and progress line", 1,
         1000000, &o->eval_every},
        {"patience", "N", "stop after N evaluations without a better validation loss (0: never)",
         0, 1000000, &o->patience},
        {"max-seconds", "S", "stop when the run has taken this long (0: no limit)", 0,
         10000000, &o->max_seconds},
        {"corpus-kb", "N", "size of the built-in corpus", 16, 100000, &o->corpus_kb},
        {"stop-at", "N", "stop after step N (the schedule still spans --steps; 0: off)", 0,
         10000000, &o->stop_at},
        {"zero", "0|1",
         "ZeRO-1: shard AdamW's moments across the processes (same result, ~1/P of the "
         "optimizer memory per process)",
         0, 1, &o->zero},
        {"max-skipped", "N",
         "fail when N steps in a row are skipped for non-finite gradients (no progress)", 1,
         1000000, &o->max_skipped},
    };
    const ex_xopt xopts[] = {
        {"lr", "X", "peak learning rate", &o->lr, NULL, 1e-6, 1.0},
        {"dropout", "P", "dropout (attention, residual, embedding)", &o->dropout, NULL, 0.0, 0.9},
        {"weight-decay", "X", "AdamW weight decay (not on biases and LayerNorm)", &o->wd, NULL,
         0.0, 10.0},
        {"data", "FILE", "train on this text file instead of the built-in corpus", NULL,
         &o->data_path, 0, 0},
        {"ckpt", "FILE", "checkpoint written at every evaluation and at the end", NULL, &o->ckpt,
         0, 0},
        {"resume", "FILE", "continue training from this checkpoint", NULL, &o->resume, 0, 0},
        {"csv", "FILE", "write the loss curve as CSV", NULL, &o->csv, 0, 0},
        {"svg", "FILE", "draw the loss curve as an SVG chart", NULL, &o->svg, 0, 0},
    };
    return ex_parse_args_ex(argc, argv,
                            "Train a byte-level GPT on the built-in corpus (or --data FILE),\n"
                            "writing the checkpoint --ckpt at every evaluation and at the end.",
                            opts, sizeof opts / sizeof opts[0], xopts,
                            sizeof xopts / sizeof xopts[0]);
}

/* The files a run writes. Each is checked before training starts (the
 * CSV and the chart are written under temporary names next to theirs and
 * renamed only at the end, the checkpoint is replaced atomically by the
 * library), and only files actually written are named in the summary. */
typedef struct outputs {
    const char *ckpt;
    int ckpt_written;
    uint64_t ckpt_step; /* the step the written checkpoint holds */
    ex_out csv, svg;
    size_t csv_rows;
} outputs;

static int open_outputs(const train_opts *o, outputs *out)
{
    memset(out, 0, sizeof *out);
    out->ckpt = o->ckpt;
    if (!ex_check_output(o->ckpt, "checkpoint (--ckpt)") ||
        (o->csv && !ex_out_open(&out->csv, o->csv, "loss curve (--csv)")))
        return 0;
    if (o->svg && !ex_out_open(&out->svg, o->svg, "loss chart (--svg)")) {
        ex_out_discard(&out->csv);
        return 0;
    }
    if (out->csv.f)
        fprintf(out->csv.f, "step,train_loss,val_loss,lr\n");
    return 1;
}

/* The loss curve so far, for the chart. */
typedef struct curve {
    double *step, *train, *val;
    size_t n, cap;
} curve;

/* Everything a training run holds; released by trainer_free(). */
typedef struct trainer {
    tb_ctx ctx;
    gpt m;
    gpt_acts a;
    tb_adam opt;
    tb_rng rng;
    data d;
    char *text;
    tb_lr_schedule sched;
    size_t B, T;
    uint64_t accum;
    int32_t *x, *y;
    train_state ts;
    curve c;
    const tb_comm *comm; /* the processes (rank 0 prints and writes) */
    tb_comm counted;     /* more than one process: comm counts what it moves */
    tb_comm_counter counter;
    int zero;            /* --zero 1: the optimizer is z, opt is empty between saves */
    tb_zero z;           /* ZeRO-1: this process's shard of AdamW */
    tb_adam_config oc;   /* the optimizer's configuration (to rebuild opt to save) */
    tb_adam *optp;       /* the optimizer that steps: &opt, or &z.opt */
    size_t full_state;   /* bytes of the unsharded optimizer state */
    tb_dp_reducer red;   /* this rank's micro-batch gradients, reduced in order */
    float *losses;       /* accum micro-batch losses of the last step */
} trainer;

static void trainer_free(trainer *t)
{
    free(t->c.step), free(t->c.train), free(t->c.val), free(t->x), free(t->y), free(t->text);
    free(t->losses);
    tb_dp_reducer_free(&t->red);
    tb_zero_free(&t->z);
    tb_adam_free(&t->opt);
    gpt_acts_free(&t->a);
    gpt_free(&t->m);
}

/* The corpus, split 90/10; 0 after a message. */
static int load_data(trainer *t, const train_opts *o)
{
    size_t len = 0;
    t->text = o->data_path ? ex_read_regular(o->data_path, "training data (--data)", &len)
                           : ex_grammar_text(&ex_grammar_garden, o->seed,
                                             o->corpus_kb * 1024, &len);
    if (!t->text) {
        if (!o->data_path)
            fprintf(stderr, "error: out of memory for the built-in corpus\n");
        return 0;
    }
    const size_t T = t->T;
    t->d = (data){(const unsigned char *)t->text, len - len * VAL_PERCENT / 100,
                  len * VAL_PERCENT / 100};
    if (t->d.n_val < T + 2 || t->d.n_train < T + 2) {
        ex_shown p;
        fprintf(stderr,
                "error: %s has %zu bytes: too short for a context of %zu with a %d%% "
                "validation split (needs at least %zu)\n",
                o->data_path ? ex_show(&p, o->data_path) : "the corpus", len, T, VAL_PERCENT,
                (T + 2) * 100 / VAL_PERCENT + 1);
        return 0;
    }
    return 1;
}

/* Model, activations, optimizer (and its state from --resume), buffers;
 * 0 after a message. */
/* The unsharded AdamW over the model (t->opt). */
static tb_status full_opt_init(trainer *t)
{
    tb_status s = tb_adam_init(&t->ctx, &t->opt, &t->m.params, &t->oc);
    if (s == TB_OK)
        s = tb_adam_add_group(&t->ctx, &t->opt, t->oc.lr, 0.0f, tb_select_no_decay, NULL, NULL);
    return s;
}

/* The checkpoint, written by rank 0. With ZeRO-1 every rank first gathers
 * the moments into a temporary unsharded optimizer (a collective), so the
 * file is the one an unsharded run writes. */
static tb_status save_state(trainer *t, const char *path)
{
    tb_ctx *ctx = &t->ctx;
    tb_status s = TB_OK;
    if (t->zero && (s = full_opt_init(t)) == TB_OK)
        s = tb_zero_gather_state(ctx, &t->z, &t->opt);
    if (s == TB_OK && t->comm->rank == 0)
        s = save_ckpt(ctx, path, &t->m, &t->opt, &t->rng, &t->ts);
    if (t->zero)
        tb_adam_free(&t->opt);
    return s;
}

static int build(trainer *t, const train_opts *o, const gpt_config *cfg)
{
    tb_ctx *ctx = &t->ctx;
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = (float)o->lr;
    oc.beta2 = 0.95f;
    oc.weight_decay = (float)o->wd;
    t->oc = oc;
    if (ex_failed(ctx, gpt_init(ctx, &t->m, cfg, &t->rng), "building the model") ||
        ex_failed(ctx, gpt_acts_init(ctx, &t->a, &t->m, t->B, t->T), "activations") ||
        ex_failed(ctx, full_opt_init(t), "optimizer") ||
        ex_failed(ctx, tb_dp_reducer_init(ctx, &t->red, t->comm, &t->m.params, t->accum),
                  "gradient reduction buffers"))
        return 0;
    t->full_state = tb_adam_state_bytes(&t->opt);
    if (o->resume) {
        if (ckpt_failed(ctx,
                        tb_checkpoint_load(ctx, o->resume, &t->m.params, &t->opt, &t->rng,
                                           TB_CKPT_DEFAULT),
                        o->resume))
            return 0;
        ex_shown p;
        printf("resumed from %s at step %llu\n", ex_show(&p, o->resume),
               (unsigned long long)t->optp->step);
    }
    /* ZeRO-1: this rank's shard of the (possibly resumed) state; the
     * unsharded optimizer is released until the next save. */
    if (t->zero) {
        if (ex_failed(ctx, tb_zero_init(ctx, &t->z, t->comm, &t->m.params, &oc), "ZeRO-1") ||
            ex_failed(ctx, tb_zero_add_group(ctx, &t->z, &t->m.params, oc.lr, 0.0f,
                                             tb_select_no_decay, NULL, NULL),
                      "ZeRO-1 groups") ||
            ex_failed(ctx, tb_zero_scatter_state(ctx, &t->z, &t->opt), "ZeRO-1 state"))
            return 0;
        tb_adam_free(&t->opt);
        t->optp = &t->z.opt;
    }
    t->c.cap = o->steps / o->eval_every + 3;
    t->x = malloc(t->B * t->T * sizeof(int32_t)), t->y = malloc(t->B * t->T * sizeof(int32_t));
    t->c.step = malloc(t->c.cap * sizeof(double)), t->c.train = malloc(t->c.cap * sizeof(double));
    t->c.val = malloc(t->c.cap * sizeof(double));
    t->losses = malloc(t->accum * sizeof(float));
    if (!t->x || !t->y || !t->c.step || !t->c.train || !t->c.val || !t->losses) {
        fprintf(stderr, "error: out of memory for the batches\n");
        return 0;
    }
    return 1;
}

typedef enum step_result { STEP_DONE, STEP_SKIPPED, STEP_FAILED } step_result;

/* One optimizer step over accum micro-batches; *loss gets its mean loss.
 * This rank computes its micro-batches (tb_dp_split()), each from zeroed
 * gradients with its own random stream; tb_dp_reducer_reduce() gives every
 * rank the sum over all micro-batches in index order, so the step is the
 * same for any number of processes. A non-finite gradient skips the step
 * (the weights stay as they were; the schedule moves on); a non-finite
 * loss fails the run (on every rank: each sees every loss). */
static step_result train_step(trainer *t, double *loss)
{
    tb_ctx *ctx = &t->ctx;
    *loss = 0.0;
    for (size_t k = t->red.first; k < t->red.first + t->red.count; k++) {
        float l;
        tb_rng rs;
        tb_dp_rng(&rs, &t->rng, t->optp->step, k);
        tb_param_list_zero_grad(&t->m.params);
        batch_of(&t->d, &rs, 0, 0, t->B, t->T, t->x, t->y);
        if (ex_failed(ctx, gpt_forward(ctx, &t->m, &t->a, TB_MODE_TRAINING, &rs, t->x, t->y,
                                       t->B, t->T, &l),
                      "forward") ||
            ex_failed(ctx, gpt_backward(ctx, &t->m, &t->a, t->x, t->y, 1.0f / (float)t->accum),
                      "backward") ||
            ex_failed(ctx, tb_dp_reducer_store(ctx, &t->red, &t->m.params, k, l),
                      "storing the gradient"))
            return STEP_FAILED;
    }
    if (ex_failed(ctx, tb_dp_reducer_reduce(ctx, &t->red, &t->m.params, t->losses),
                  "reducing the gradients"))
        return STEP_FAILED;
    for (uint64_t k = 0; k < t->accum; k++) {
        const float l = t->losses[k];
        if (!isfinite(l)) {
            fprintf(stderr,
                    "error: step %llu: the training loss is %g: the model has diverged (try a "
                    "lower --lr) or its weights hold NaN or infinity\n",
                    (unsigned long long)t->optp->step + 1, (double)l);
            return STEP_FAILED;
        }
        *loss += l / (double)t->accum;
    }
    double gnorm;
    tb_status s = tb_clip_grad_norm(ctx, &t->m.params, CLIP_NORM, &gnorm);
    const float lr_factor = tb_lr_factor(&t->sched, t->optp->step);
    if (s == TB_OK)
        s = t->zero ? tb_zero_step(ctx, &t->z, &t->m.params, lr_factor)
                    : tb_adam_step(ctx, &t->opt, lr_factor);
    if (s == TB_ERR_NON_FINITE) {
        fprintf(stderr, "warning: step %llu: non-finite gradient, step skipped\n",
                (unsigned long long)t->optp->step + 1);
        t->optp->step++; /* keep the schedule moving; the weights are unchanged */
        return STEP_SKIPPED;
    }
    return ex_failed(ctx, s, "optimizer step") ? STEP_FAILED : STEP_DONE;
}

/* Validation, progress line, CSV row, curve point, checkpoint; 0 after a
 * message. train_loss is NaN when every step since the last evaluation
 * was skipped. */
static int evaluate(trainer *t, const train_opts *o, outputs *out, double train_loss,
                    double elapsed, uint64_t first)
{
    double vl = 0.0;
    if (ex_failed(&t->ctx, val_loss(&t->ctx, &t->m, &t->a, &t->d, t->B, t->T, t->x, t->y, &vl),
                  "validation"))
        return 0;
    if (!isfinite(vl)) {
        fprintf(stderr, "error: step %llu: the validation loss is %g: the model has diverged\n",
                (unsigned long long)t->optp->step, vl);
        return 0;
    }
    const uint64_t step = t->optp->step;
    const double done = (double)(step - first);
    const double tps = done * (double)(t->accum * t->B * t->T) / elapsed;
    char e1[16], e2[16], tl[16];
    fmt_time(e1, sizeof e1, elapsed);
    fmt_time(e2, sizeof e2, elapsed / done * (double)(o->steps - step));
    if (isfinite(train_loss))
        snprintf(tl, sizeof tl, "%.4f", train_loss);
    else
        snprintf(tl, sizeof tl, "-");
    printf("%8llu %10s %10.4f %10.0f %9s %9s\n", (unsigned long long)step, tl, vl, tps, e1, e2);
    fflush(stdout);
    if (out->csv.f) {
        fprintf(out->csv.f, "%llu,%.6f,%.6f,%.6g\n", (unsigned long long)step, train_loss, vl,
                o->lr * tb_lr_factor(&t->sched, step - 1));
        out->csv_rows++;
    }
    if (t->c.n < t->c.cap) {
        t->c.step[t->c.n] = (double)step, t->c.train[t->c.n] = train_loss;
        t->c.val[t->c.n] = vl, t->c.n++;
    }
    if (vl < t->ts.best_val) {
        t->ts.best_val = vl;
        t->ts.bad_evals = 0;
    } else {
        t->ts.bad_evals++;
    }
    /* Rank 0 writes; every rank learns whether it could. */
    int saved = 1;
    if (t->comm->rank == 0)
        saved = !ckpt_failed(&t->ctx, save_state(t, o->ckpt), o->ckpt);
    else if (t->zero &&
             ex_failed(&t->ctx, save_state(t, o->ckpt), "gathering the optimizer state"))
        return 0;
    if (ex_failed(&t->ctx, tb_comm_broadcast(&t->ctx, t->comm, &saved, sizeof saved, 0),
                  "sharing the checkpoint's status"))
        return 0;
    if (!saved) {
        if (t->comm->rank != 0)
            fprintf(stderr, "error: rank %zu: rank 0 could not write the checkpoint\n",
                    t->comm->rank);
        return 0;
    }
    if (t->comm->rank != 0)
        return 1;
    out->ckpt_written = 1;
    out->ckpt_step = step;
    return 1;
}

/* A run that ended as asked succeeded if at least one of its steps changed
 * the weights; 1, or 0 after a message. */
static int made_progress(const trainer *t, uint64_t first, uint64_t skipped)
{
    if (t->optp->step - first > skipped)
        return 1;
    fprintf(stderr,
            "error: every step of this run (%llu-%llu) was skipped for non-finite gradients: "
            "the weights did not change\n",
            (unsigned long long)first + 1, (unsigned long long)t->optp->step);
    return 0;
}

/* The training loop; returns 1 with *why set when it ended as asked, 0
 * after a message when it failed or made no progress. */
static int train_loop(trainer *t, const train_opts *o, outputs *out, const char **why,
                      uint64_t *skipped_total)
{
    const double t0 = ex_seconds();
    const uint64_t first = t->optp->step;
    double train_acc = 0.0;
    uint64_t train_n = 0, skipped_run = 0;
    *why = "all steps done";
    while (t->optp->step < o->steps) {
        double loss;
        const step_result r = train_step(t, &loss);
        if (r == STEP_FAILED)
            return 0;
        if (r == STEP_SKIPPED) {
            (*skipped_total)++;
            if (++skipped_run >= o->max_skipped) {
                fprintf(stderr,
                        "error: %llu steps in a row skipped for non-finite gradients (steps "
                        "%llu-%llu): training makes no progress (--max-skipped %llu)\n",
                        (unsigned long long)skipped_run,
                        (unsigned long long)(t->optp->step - skipped_run + 1),
                        (unsigned long long)t->optp->step, (unsigned long long)o->max_skipped);
                return 0;
            }
        } else {
            skipped_run = 0;
            train_acc += loss;
            train_n++;
        }
        const double el = ex_seconds() - t0;
        const int last = t->optp->step == o->steps || t->optp->step == o->stop_at ||
                         (o->max_seconds && el > (double)o->max_seconds);
        if (t->optp->step % o->eval_every != 0 && !last)
            continue;
        if (!evaluate(t, o, out, train_n ? train_acc / (double)train_n : NAN, el, first))
            return 0;
        train_acc = 0.0, train_n = 0;
        if (o->patience && t->ts.bad_evals >= o->patience) {
            *why = "early stop: the validation loss stopped improving";
            break;
        }
        if (last && t->optp->step < o->steps) {
            *why = t->optp->step == o->stop_at ? "stopped at --stop-at"
                                                : "time limit (--max-seconds)";
            break;
        }
    }
    return made_progress(t, first, *skipped_total);
}

/* Commit what the run wrote (a CSV or chart with no rows is discarded,
 * leaving any earlier file as it was) and name exactly what was written.
 * Returns 0 if a write failed. */
static int finish_outputs(outputs *out, const curve *c)
{
    int ok = 1;
    ex_shown p;
    if (out->ckpt_written)
        printf("checkpoint: %s (step %llu)\n", ex_show(&p, out->ckpt),
               (unsigned long long)out->ckpt_step);
    else
        printf("checkpoint: none written\n");
    if (out->csv.f && out->csv_rows) {
        const char *path = ex_show(&p, out->csv.path);
        char shown[EX_SHOWN_MAX];
        snprintf(shown, sizeof shown, "%s", path);
        if (ex_out_commit(&out->csv, "loss curve (--csv)"))
            printf("loss curve: %s\n", shown);
        else
            ok = 0;
    }
    ex_out_discard(&out->csv);
    if (out->svg.f && c->n) {
        const ex_series ser[2] = {{"train", "#1f77b4", c->step, c->train, c->n},
                                  {"validation", "#d62728", c->step, c->val, c->n}};
        char shown[EX_SHOWN_MAX];
        snprintf(shown, sizeof shown, "%s", ex_show(&p, out->svg.path));
        if (ex_svg_plot(out->svg.f, "gpt: loss per byte (nats)", "step", "loss", ser, 2) == 0 &&
            ex_out_commit(&out->svg, "loss chart (--svg)"))
            printf("loss chart: %s\n", shown);
        else
            ok = 0;
    }
    ex_out_discard(&out->svg);
    return ok;
}

/* A sample after training, so the learning is visible (one line: newlines
 * shown as spaces, control bytes escaped). */
static void print_sample(trainer *t, uint64_t seed)
{
    char raw[512], shown[EX_ESCAPED_CAP(512)];
    size_t n = 0;
    tb_sampler_config sc = tb_sampler_default_config();
    sc.temperature = 0.8f;
    sc.top_k = 40;
    const size_t T = t->T;
    if (T <= 8 || sample_text(&t->ctx, &t->m, "The ", T - 4 < 160 ? T - 4 : 160, seed, &sc, raw,
                              &n) != 0)
        return;
    for (size_t i = 0; i < n; i++)
        raw[i] = raw[i] == '\n' ? ' ' : raw[i];
    printf("sample (temperature 0.8, top-k 40) after \"The \":\n  The %s\n",
           ex_escape(raw, n, 0, shown, sizeof shown));
}

static int cmd_train(int argc, char **argv)
{
    train_opts o;
    int rc = parse_train(argc, argv, &o);
    if (rc >= 0)
        return rc;
    trainer t;
    memset(&t, 0, sizeof t);
    if ((rc = ex_ctx_init(&t.ctx)) >= 0)
        return rc;
    ex_apply_threads(&t.ctx, o.threads);
    gpt_config cfg = {o.layers, o.heads, o.width, o.context, VOCAB, (float)o.dropout};
    t.ts = (train_state){INFINITY, 0};
    /* Everything that can be refused is refused before training starts:
     * the checkpoint to resume, the data, every output. */
    if (o.resume && !read_ckpt_config(&t.ctx, o.resume, &cfg, &t.ts))
        return EX_EXIT_FAILURE;
    if (gpt_config_check(&t.ctx, &cfg) != TB_OK) {
        ex_shown e;
        fprintf(stderr, "error: %s\n", ex_show(&e, tb_ctx_error(&t.ctx)));
        return EX_EXIT_USAGE;
    }
    t.B = o.batch, t.T = cfg.block_size, t.accum = o.accum;
    t.comm = g_comm;
    if (g_comm->size > 1) {
        if (ex_failed(&t.ctx, tb_comm_counting_init(&t.ctx, &t.counted, &t.counter, g_comm),
                      "communicator"))
            return EX_EXIT_FAILURE;
        t.comm = &t.counted;
    }
    t.zero = o.zero != 0;
    t.optp = &t.opt;
    outputs out;
    memset(&out, 0, sizeof out);
    if (!load_data(&t, &o) || (t.comm->rank == 0 && !open_outputs(&o, &out))) {
        trainer_free(&t);
        return EX_EXIT_FAILURE;
    }
    ex_shown p;
    printf("gpt train: libtblocks %s, seed %llu, threads %d, kernels %s\n", tb_version_string(),
           (unsigned long long)o.seed, t.ctx.num_threads, ex_kernel_name(&t.ctx));
    printf("data: %s, %zu bytes (%zu train, %zu validation)\n",
           o.data_path ? ex_show(&p, o.data_path) : "built-in corpus", t.d.n_train + t.d.n_val,
           t.d.n_train, t.d.n_val);
    tb_rng_init(&t.rng, o.seed);
    int failed = !build(&t, &o, &cfg);
    const uint64_t end = o.stop_at && o.stop_at < o.steps ? o.stop_at : o.steps;
    if (!failed && t.optp->step >= end) {
        fprintf(stderr,
                "error: the checkpoint is at step %llu: nothing to train with --steps %llu%s "
                "(raise --steps to train further)\n",
                (unsigned long long)t.optp->step, (unsigned long long)o.steps,
                o.stop_at ? " and --stop-at" : "");
        ex_out_discard(&out.csv);
        ex_out_discard(&out.svg);
        trainer_free(&t);
        return EX_EXIT_USAGE;
    }
    uint64_t warmup = o.warmup;
    if (warmup > o.steps / 2)
        warmup = o.steps / 2; /* a short run still gets its decay */
    t.sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, warmup, o.steps, 0.1f);
    const char *why = NULL;
    uint64_t skipped = 0;
    const double t0 = ex_seconds();
    const uint64_t first = t.optp->step;
    if (!failed) {
        printf("model: %zu layers, %zu heads, width %zu, context %zu, vocabulary %d (bytes): %zu "
               "parameters\n",
               cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, VOCAB,
               tb_param_list_numel(&t.m.params, 1));
        printf("train: %llu steps of %llu x %zu sequences x %zu tokens, AdamW lr %g (warm-up "
               "%llu, cosine to 10%%), clip %g, dropout %g\n",
               (unsigned long long)o.steps, (unsigned long long)o.accum, t.B, t.T, o.lr,
               (unsigned long long)warmup, (double)CLIP_NORM, o.dropout);
        if (t.zero)
            printf("memory: activations %.1f MiB for %zu x %zu tokens, optimizer state %.3f MiB "
                   "per process (ZeRO-1: 1/%zu of %.3f MiB) + %.3f MiB step buffers\n",
                   (double)t.a.bytes / 1048576.0, t.B, t.T,
                   (double)tb_adam_state_bytes(&t.z.opt) / 1048576.0, t.comm->size,
                   (double)t.full_state / 1048576.0,
                   (double)(tb_zero_state_bytes(&t.z) - tb_adam_state_bytes(&t.z.opt)) /
                       1048576.0);
        else
            printf("memory: activations %.1f MiB for %zu x %zu tokens, optimizer state %.1f MiB\n",
                   (double)t.a.bytes / 1048576.0, t.B, t.T, (double)t.full_state / 1048576.0);
        printf("processes: %zu (rank 0 computes %zu of the %llu micro-batches of a step; "
               "their gradients are summed in micro-batch order)%s\n",
               t.comm->size, t.red.count, (unsigned long long)o.accum,
               o.accum < t.comm->size ? ": fewer micro-batches (--accum) than processes, some "
                                        "are idle"
                                      : "");
        printf("%8s %10s %10s %10s %9s %9s\n", "step", "train", "val", "tokens/s", "elapsed",
               "eta");
        failed = !train_loop(&t, &o, &out, &why, &skipped);
    }
    if (!failed) {
        char note[96] = "";
        if (skipped)
            snprintf(note, sizeof note, " (%llu skipped: non-finite gradients)",
                     (unsigned long long)skipped);
        const uint64_t steps = t.optp->step - first;
        printf("done: %s; %llu steps%s in %.1f s, best validation loss %.4f\n", why,
               (unsigned long long)steps, note, ex_seconds() - t0, t.ts.best_val);
        if (t.comm == &t.counted && steps)
            printf("communication: %.3f MiB sent, %.3f MiB received per step by rank 0 "
                   "(payload of %llu collectives over the run, evaluations and saves "
                   "included)\n",
                   (double)t.counter.counts.sent_bytes / 1048576.0 / (double)steps,
                   (double)t.counter.counts.recv_bytes / 1048576.0 / (double)steps,
                   (unsigned long long)t.counter.counts.calls);
    }
    /* Named only if written, on success and on failure alike. */
    if (!finish_outputs(&out, &t.c))
        failed = 1;
    if (!failed) {
        print_sample(&t, o.seed);
        printf("final: steps=%llu best_val=%.4f\n", (unsigned long long)t.optp->step,
               t.ts.best_val);
    }
    trainer_free(&t);
    return failed ? EX_EXIT_FAILURE : EX_EXIT_OK;
}

/* ---- generation ----------------------------------------------------------------------- */

/* Sample n_new bytes after prompt (incremental decoding) into out (raw
 * bytes, *n_out of them; at most T - strlen(prompt)). Returns 0 or -1. */
static int sample_text(tb_ctx *ctx, const gpt *m, const char *prompt, size_t n_new, uint64_t seed,
                       const tb_sampler_config *sc, char *out, size_t *n_out)
{
    const size_t np = strlen(prompt), T = m->cfg.block_size;
    *n_out = 0;
    if (np == 0 || np > T || n_new > T - np)
        return -1;
    gpt_decoder d;
    memset(&d, 0, sizeof d);
    int32_t *hist = malloc((np + n_new) * sizeof(int32_t));
    if (!hist || gpt_decoder_init(ctx, &d, m, 1, T, np) != TB_OK) {
        gpt_decoder_free(&d);
        free(hist);
        return -1;
    }
    for (size_t i = 0; i < np; i++)
        hist[i] = (unsigned char)prompt[i];
    tb_rng rng;
    tb_rng_init(&rng, seed);
    int rc = gpt_decoder_step(ctx, m, &d, hist, np, NULL) == TB_OK ? 0 : -1;
    size_t n = np;
    for (size_t i = 0; rc == 0 && i < n_new; i++) {
        int32_t tok;
        if (tb_sample_token(ctx, sc, hist, n, d.logits, VOCAB, &rng, &tok) != TB_OK) {
            rc = -1;
            break;
        }
        hist[n++] = tok;
        out[(*n_out)++] = (char)(unsigned char)tok;
        if (i + 1 < n_new && gpt_decoder_step(ctx, m, &d, &tok, 1, NULL) != TB_OK)
            rc = -1;
    }
    gpt_decoder_free(&d);
    free(hist);
    return rc;
}

/* A decoder over the history that slides when the context is full: the
 * last half context of the history is fed again (positions restart). */
typedef struct stream {
    gpt_decoder d;
    size_t T;
} stream;

static tb_status stream_feed(tb_ctx *ctx, const gpt *m, stream *s, const int32_t *hist, size_t n,
                             size_t n_new)
{
    if (tfm_decoder_len(&s->d.t) + n_new > s->T) {
        const size_t keep = s->T / 2;
        gpt_decoder_reset(&s->d);
        return gpt_decoder_step(ctx, m, &s->d, hist + n - keep, keep, NULL);
    }
    return gpt_decoder_step(ctx, m, &s->d, hist + n - n_new, n_new, NULL);
}

/* Generate with sampling or greedy decoding; hist holds the prompt (np
 * tokens) and receives n_new more. */
static tb_status generate_sampled(tb_ctx *ctx, const gpt *m, const tb_sampler_config *sc,
                                  uint64_t seed, int32_t *hist, size_t np, size_t n_new)
{
    stream s;
    s.T = m->cfg.block_size;
    const size_t pre = np < s.T ? np : s.T;
    tb_status st = gpt_decoder_init(ctx, &s.d, m, 1, s.T, s.T / 2 > pre ? s.T / 2 : pre);
    if (st != TB_OK) {
        gpt_decoder_free(&s.d);
        return st;
    }
    tb_rng rng;
    tb_rng_init(&rng, seed);
    st = gpt_decoder_step(ctx, m, &s.d, hist + np - pre, pre, NULL);
    size_t n = np;
    for (size_t i = 0; st == TB_OK && i < n_new; i++) {
        int32_t tok;
        st = tb_sample_token(ctx, sc, hist, n, s.d.logits, VOCAB, &rng, &tok);
        if (st != TB_OK)
            break;
        hist[n++] = tok;
        if (i + 1 < n_new)
            st = stream_feed(ctx, m, &s, hist, n, 1);
    }
    gpt_decoder_free(&s.d);
    return st;
}

/* Beam search as transformers' BeamSearchScorer ranks hypotheses: a
 * hypothesis's score is its sum of log-probabilities divided by its
 * generated length (without the end token) to the power length_penalty; a
 * newline ends a hypothesis (when ranked within the beam width). The repetition penalty and n-gram blocking of sc apply to
 * each beam's own history. The best hypothesis goes to hist. */
static tb_status generate_beam(tb_ctx *ctx, const gpt *m, const tb_sampler_config *sc, size_t W,
                               double length_penalty, int32_t *hist, size_t np, size_t n_new)
{
    const size_t T = m->cfg.block_size, L = np + n_new;
    if (np + n_new > T)
        n_new = T - np; /* beams keep their whole history in the cache */
    gpt_decoder d;
    tb_status st = gpt_decoder_init(ctx, &d, m, W, T, np);
    int32_t *beams = malloc(W * L * sizeof(int32_t)), *nb = malloc(W * L * sizeof(int32_t));
    int32_t *best = malloc(L * sizeof(int32_t)), *feed = malloc(W * np * sizeof(int32_t));
    double *score = calloc(W, sizeof(double)), *ns = calloc(W, sizeof(double));
    float *lp = malloc(VOCAB * W * sizeof(float));
    size_t *src = malloc(W * sizeof(size_t));
    double best_score = -INFINITY;
    size_t best_len = 0;
    if (st == TB_OK && (!beams || !nb || !best || !feed || !score || !ns || !lp || !src))
        st = TB_ERR_NO_MEMORY;
    for (size_t b = 0; st == TB_OK && b < W; b++) {
        memcpy(beams + b * L, hist, np * sizeof(int32_t));
        memcpy(feed + b * np, hist, np * sizeof(int32_t));
    }
    if (st == TB_OK)
        st = gpt_decoder_step(ctx, m, &d, feed, np, NULL);
    tb_sampler_config g = *sc;
    g.temperature = 0.0f; /* penalties and blocking only */
    size_t len = np;
    for (size_t step = 0; st == TB_OK && step < n_new; step++) {
        /* Log-probabilities first, then the penalties on them, as
         * transformers' beam search applies its logits processors. */
        for (size_t b = 0; b < W && st == TB_OK; b++) {
            float *row = lp + b * VOCAB;
            memcpy(row, d.logits + b * VOCAB, VOCAB * sizeof(float));
            double mx = -INFINITY, z = 0.0;
            for (size_t v = 0; v < VOCAB; v++)
                mx = row[v] > mx ? row[v] : mx;
            for (size_t v = 0; v < VOCAB; v++)
                z += exp((double)row[v] - mx);
            for (size_t v = 0; v < VOCAB; v++)
                row[v] = (float)((double)row[v] - mx - log(z));
            st = tb_logits_process(ctx, &g, beams + b * L, len, row, VOCAB);
        }
        if (st != TB_OK)
            break;
        /* The W best continuations that do not end the hypothesis; those
         * that end it (a newline) are ranked as finished. */
        const size_t n_beams = step == 0 ? 1 : W; /* all beams start equal */
        size_t kept = 0;
        for (size_t k = 0; k < W * VOCAB && kept < W; k++) {
            size_t bb = 0, bv = 0;
            double bs = -INFINITY;
            for (size_t b = 0; b < n_beams; b++)
                for (size_t v = 0; v < VOCAB; v++) {
                    const double c = score[b] + (double)lp[b * VOCAB + v];
                    if (c > bs) {
                        bs = c, bb = b, bv = v;
                    }
                }
            if (bs == -INFINITY)
                break;
            lp[bb * VOCAB + bv] = -INFINITY; /* taken */
            /* The generated length, without the newline that ends it. */
            const double norm = bs / pow((double)(len > np ? len - np : 1), length_penalty);
            if (bv == '\n') {
                if (k >= W)
                    continue; /* an end ranked below the beam width is not kept */
                if (norm > best_score) {
                    best_score = norm, best_len = len + 1;
                    memcpy(best, beams + bb * L, len * sizeof(int32_t));
                    best[len] = '\n';
                }
                continue;
            }
            memcpy(nb + kept * L, beams + bb * L, len * sizeof(int32_t));
            nb[kept * L + len] = (int32_t)bv;
            ns[kept] = bs;
            src[kept] = bb;
            kept++;
        }
        if (kept < W) { /* nothing left to extend */
            break;
        }
        memcpy(beams, nb, W * L * sizeof(int32_t));
        memcpy(score, ns, W * sizeof(double));
        len++;
        st = gpt_decoder_reorder(&d, src);
        for (size_t b = 0; st == TB_OK && b < W; b++)
            feed[b] = beams[b * L + len - 1];
        if (st == TB_OK && step + 1 < n_new)
            st = gpt_decoder_step(ctx, m, &d, feed, 1, NULL);
    }
    /* Unfinished beams compete too. */
    for (size_t b = 0; st == TB_OK && b < W; b++) {
        const double norm = score[b] / pow((double)(len - np > 0 ? len - np : 1), length_penalty);
        if (norm > best_score) {
            best_score = norm, best_len = len;
            memcpy(best, beams + b * L, len * sizeof(int32_t));
        }
    }
    if (st == TB_OK) {
        memcpy(hist, best, best_len * sizeof(int32_t));
        for (size_t i = best_len; i < np + n_new; i++)
            hist[i] = -1; /* ended early */
    }
    gpt_decoder_free(&d);
    free(beams), free(nb), free(best), free(feed), free(score), free(ns), free(lp), free(src);
    return st;
}

/* ---- repetition measures --------------------------------------------------------------- */

typedef struct rep_stats {
    size_t words;
    double distinct1, distinct2, rep4;
} rep_stats;

/* On the words (split at spaces and newlines) of text[0..n): distinct-1
 * and distinct-2 (unique words / words, unique word pairs / pairs) and the
 * repeated-4-gram rate (share of word 4-grams seen earlier in the text). */
static rep_stats measure(const char *text, size_t len)
{
    enum { MAXW = 512 };
    const char *w[MAXW];
    size_t wl[MAXW], n = 0;
    const char *p = text, *end = text + len;
    while (p < end && n < MAXW) {
        while (p < end && (*p == ' ' || *p == '\n'))
            p++;
        if (p == end)
            break;
        const char *q = p;
        while (q < end && *q != ' ' && *q != '\n')
            q++;
        w[n] = p, wl[n] = (size_t)(q - p), n++;
        p = q;
    }
#define SAME(i, j) (wl[i] == wl[j] && memcmp(w[i], w[j], wl[i]) == 0)
    rep_stats r = {n, 0, 0, 0};
    size_t u1 = 0, u2 = 0, r4 = 0;
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = SAME(i, j);
        u1 += !seen;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = SAME(i, j) && SAME(i + 1, j + 1);
        u2 += !seen;
    }
    for (size_t i = 0; i + 3 < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = SAME(i, j) && SAME(i + 1, j + 1) && SAME(i + 2, j + 2) && SAME(i + 3, j + 3);
        r4 += (size_t)seen;
    }
#undef SAME
    r.distinct1 = n ? (double)u1 / (double)n : 0;
    r.distinct2 = n > 1 ? (double)u2 / (double)(n - 1) : 0;
    r.rep4 = n > 3 ? (double)r4 / (double)(n - 3) : 0;
    return r;
}

/* hist[np..np+n) as bytes (up to an early end, -1); returns their count. */
static size_t to_bytes(const int32_t *hist, size_t np, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = np; i < np + n && hist[i] >= 0; i++)
        out[k++] = (char)(unsigned char)hist[i];
    return k;
}

/* ---- generate / repetition commands ------------------------------------------------------- */

typedef struct gen_opts {
    uint64_t max_new, top_k, ngram, beams, seed, threads;
    double temperature, top_p, penalty, length_penalty;
    const char *ckpt, *prompt, *strategy;
} gen_opts;

/* The model of a checkpoint, its configuration validated first. */
static int load_model(tb_ctx *ctx, const char *ckpt, gpt *m)
{
    gpt_config cfg;
    if (!read_ckpt_config(ctx, ckpt, &cfg, NULL))
        return 0;
    cfg.dropout = 0.0f;
    tb_rng rng;
    tb_rng_init(&rng, 0);
    if (!ex_failed(ctx, gpt_init(ctx, m, &cfg, &rng), "building the model") &&
        !ckpt_failed(ctx, tb_checkpoint_load(ctx, ckpt, &m->params, NULL, NULL, TB_CKPT_DEFAULT),
                    ckpt))
        return 1;
    gpt_free(m);
    return 0;
}

static int parse_gen(int argc, char **argv, gen_opts *g, const char *summary)
{
    g->max_new = 200, g->top_k = 0, g->ngram = 0, g->beams = 4, g->seed = 1, g->threads = 0;
    g->temperature = 1.0, g->top_p = 1.0, g->penalty = 1.0, g->length_penalty = 1.0;
    g->ckpt = "gpt.safetensors", g->prompt = "The ", g->strategy = "sample";
    const ex_opt opts[] = {
        {"max-new", "N", "bytes to generate", 1, 100000, &g->max_new},
        {"top-k", "K", "keep the K most likely bytes (0: off)", 0, 256, &g->top_k},
        {"no-repeat-ngram", "N", "never repeat a byte N-gram (0: off)", 0, 1000, &g->ngram},
        {"beams", "W", "beam width for --strategy beam", 1, 64, &g->beams},
        {"seed", "N", "sampling seed", 0, UINT64_MAX, &g->seed},
        EX_OPT_THREADS(g->threads),
    };
    const ex_xopt xopts[] = {
        {"ckpt", "FILE", "checkpoint from gpt train", NULL, &g->ckpt, 0, 0},
        {"prompt", "TEXT", "text to continue", NULL, &g->prompt, 0, 0},
        {"strategy", "S", "greedy, sample or beam", NULL, &g->strategy, 0, 0},
        {"temperature", "T", "sampling temperature", &g->temperature, NULL, 0.01, 100.0},
        {"top-p", "P", "nucleus: keep the most likely bytes up to mass P", &g->top_p, NULL, 0.001,
         1.0},
        {"rep-penalty", "R", "divide positive / multiply negative logits of seen bytes by R",
         &g->penalty, NULL, 0.01, 100.0},
        {"length-penalty", "A", "beam scores are divided by length^A", &g->length_penalty, NULL,
         -10.0, 10.0},
    };
    return ex_parse_args_ex(argc, argv, summary, opts, sizeof opts / sizeof opts[0], xopts,
                            sizeof xopts / sizeof xopts[0]);
}

/* Run one strategy; the bytes generated go to out (cap >= max_new),
 * their count to *n_out. Returns 0, -1 (failed) or -2 (bad prompt). */
static int run_strategy(tb_ctx *ctx, const gpt *m, const char *strategy,
                        const tb_sampler_config *sc, const gen_opts *g, char *out, size_t *n_out)
{
    const size_t np = strlen(g->prompt);
    *n_out = 0;
    if (np == 0 || np >= m->cfg.block_size) {
        fprintf(stderr, "error: the prompt has %zu bytes; it must have 1 to %zu (the context)\n",
                np, m->cfg.block_size - 1);
        return -2;
    }
    int32_t *hist = malloc((np + g->max_new) * sizeof(int32_t));
    if (!hist)
        return -1;
    for (size_t i = 0; i < np; i++)
        hist[i] = (unsigned char)g->prompt[i];
    tb_status s;
    size_t n = g->max_new;
    if (strcmp(strategy, "beam") == 0) {
        if (np + n > m->cfg.block_size) {
            n = m->cfg.block_size - np;
            fprintf(stderr, "note: beam search keeps every beam's history in the context: %zu "
                            "bytes at most here\n",
                    n);
        }
        s = generate_beam(ctx, m, sc, g->beams, g->length_penalty, hist, np, n);
    } else {
        s = generate_sampled(ctx, m, sc, g->seed, hist, np, n);
    }
    if (ex_failed(ctx, s, "generating")) {
        free(hist);
        return -1;
    }
    *n_out = to_bytes(hist, np, n, out);
    free(hist);
    return 0;
}

static tb_sampler_config sampler_of(const gen_opts *g, const char *strategy)
{
    tb_sampler_config sc = tb_sampler_default_config();
    sc.temperature = strcmp(strategy, "sample") == 0 ? (float)g->temperature : 0.0f;
    sc.top_k = g->top_k;
    sc.top_p = (float)g->top_p;
    sc.repetition_penalty = (float)g->penalty;
    sc.no_repeat_ngram = g->ngram;
    return sc;
}

static int cmd_generate(int argc, char **argv)
{
    gen_opts g;
    int rc = parse_gen(argc, argv, &g, "Continue a prompt from a checkpoint of gpt train.");
    if (rc >= 0)
        return rc;
    if (strcmp(g.strategy, "greedy") && strcmp(g.strategy, "sample") && strcmp(g.strategy, "beam")) {
        fprintf(stderr, "error: --strategy must be greedy, sample or beam\n");
        return EX_EXIT_USAGE;
    }
    tb_ctx ctx;
    if ((rc = ex_ctx_init(&ctx)) >= 0)
        return rc;
    ex_apply_threads(&ctx, g.threads);
    gpt m;
    if (!load_model(&ctx, g.ckpt, &m))
        return EX_EXIT_FAILURE;
    const tb_sampler_config sc = sampler_of(&g, g.strategy);
    /* The prompt and the continuation as text: newlines and tabs kept,
     * other control bytes and malformed UTF-8 escaped (ex_escape()). */
    const size_t np = strlen(g.prompt);
    char *out = malloc(g.max_new);
    char *shown = malloc(EX_ESCAPED_CAP(np > g.max_new ? np : g.max_new));
    size_t n = 0;
    rc = out && shown ? run_strategy(&ctx, &m, g.strategy, &sc, &g, out, &n) : -1;
    if (rc == 0) {
        fputs(ex_escape(g.prompt, np, EX_ESC_KEEP_LINES, shown, EX_ESCAPED_CAP(np)), stdout);
        printf("%s\n", ex_escape(out, n, EX_ESC_KEEP_LINES, shown, EX_ESCAPED_CAP(n)));
    }
    free(out);
    free(shown);
    gpt_free(&m);
    return rc == 0 ? EX_EXIT_OK : rc == -2 ? EX_EXIT_USAGE : EX_EXIT_FAILURE;
}

static int cmd_repetition(int argc, char **argv)
{
    gen_opts g;
    int rc = parse_gen(argc, argv, &g,
                       "One prompt from a checkpoint of gpt train, every decoding strategy,\n"
                       "repetition measured.");
    if (rc >= 0)
        return rc;
    tb_ctx ctx;
    if ((rc = ex_ctx_init(&ctx)) >= 0)
        return rc;
    ex_apply_threads(&ctx, g.threads);
    gpt m;
    if (!load_model(&ctx, g.ckpt, &m))
        return EX_EXIT_FAILURE;
    typedef struct row {
        const char *label, *strategy;
        double temperature, top_p, penalty;
        uint64_t top_k, ngram, beams;
    } row;
    const row rows[] = {
        {"greedy", "greedy", 1, 1, 1, 0, 0, 1},
        {"greedy + repetition penalty 1.3", "greedy", 1, 1, 1.3, 0, 0, 1},
        {"greedy + no-repeat 12-gram", "greedy", 1, 1, 1, 0, 12, 1},
        {"beam search, 4 beams", "beam", 1, 1, 1, 0, 0, 4},
        {"sample, temperature 1.0", "sample", 1.0, 1, 1, 0, 0, 1},
        {"sample, temperature 0.7", "sample", 0.7, 1, 1, 0, 0, 1},
        {"sample, top-k 10", "sample", 1.0, 1, 1, 10, 0, 1},
        {"sample, top-p 0.9", "sample", 1.0, 0.9, 1, 0, 0, 1},
        {"sample, top-p 0.9 + penalty 1.3", "sample", 1.0, 0.9, 1.3, 0, 0, 1},
    };
    ex_shown sc_path, sc_prompt;
    printf("gpt repetition: %s, prompt \"%s\", %llu bytes each, seed %llu\n",
           ex_show(&sc_path, g.ckpt), ex_show(&sc_prompt, g.prompt),
           (unsigned long long)g.max_new, (unsigned long long)g.seed);
    printf("measures on the generated words: distinct-1 = unique words / words, distinct-2 = "
           "unique word pairs / pairs,\nrep-4 = share of word 4-grams that already occurred "
           "(higher distinct, lower rep-4: less repetition)\n\n");
    printf("%-34s %6s %10s %10s %7s\n", "strategy", "words", "distinct-1", "distinct-2", "rep-4");
    enum { PREVIEW = 80 };
    char *out = malloc(g.max_new);
    for (size_t i = 0; out && i < sizeof rows / sizeof rows[0]; i++) {
        gen_opts gi = g;
        gi.temperature = rows[i].temperature, gi.top_p = rows[i].top_p;
        gi.penalty = rows[i].penalty, gi.top_k = rows[i].top_k, gi.ngram = rows[i].ngram;
        gi.beams = rows[i].beams;
        const tb_sampler_config sc = sampler_of(&gi, rows[i].strategy);
        size_t n = 0;
        if ((rc = run_strategy(&ctx, &m, rows[i].strategy, &sc, &gi, out, &n)) != 0)
            break;
        const rep_stats r = measure(out, n);
        printf("%-34s %6zu %10.3f %10.3f %7.3f\n", rows[i].label, r.words, r.distinct1,
               r.distinct2, r.rep4);
        /* One line: newlines shown as '/', control bytes escaped. */
        char head[PREVIEW], shown[EX_ESCAPED_CAP(PREVIEW)];
        const size_t k = n < PREVIEW ? n : PREVIEW;
        for (size_t j = 0; j < k; j++)
            head[j] = out[j] == '\n' ? '/' : out[j];
        printf("    %s%s\n", ex_escape(head, k, 0, shown, sizeof shown), n > PREVIEW ? "..." : "");
    }
    free(out);
    gpt_free(&m);
    return rc == 0 ? EX_EXIT_OK : rc == -2 ? EX_EXIT_USAGE : EX_EXIT_FAILURE;
}

static int run_commands(int argc, char **argv)
{
    static const ex_command cmds[] = {
        {"train", "train a model (writes the checkpoint --ckpt, default gpt.safetensors)",
         cmd_train},
        {"generate", "continue a prompt from a checkpoint", cmd_generate},
        {"repetition", "one prompt, every decoding strategy, repetition measured",
         cmd_repetition},
    };
    return ex_run_command(argc, argv,
                          "Train a small byte-level GPT and generate text with every decoding "
                          "strategy.",
                          cmds, sizeof cmds / sizeof cmds[0]);
}

static int gpt_main(int argc, char **argv, const tb_comm *comm)
{
    g_comm = comm;
    return run_commands(argc, argv);
}

int main(int argc, char **argv)
{
    return ex_mpi_main(argc, argv, gpt_main);
}
