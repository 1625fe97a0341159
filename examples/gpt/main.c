/*
 * gpt: train a small GPT-style language model on bytes, and generate text
 * with every decoding strategy. The model is wired from libtblocks' blocks
 * in examples/common/gpt.c; docs/gpt.md walks through the output.
 *
 *   gpt train      [options]   train (default corpus built in; --data FILE)
 *   gpt generate   [options]   continue a prompt from a checkpoint
 *   gpt repetition [options]   one prompt, every strategy, repetition measured
 *
 * Tokens are bytes (vocabulary 256), so any UTF-8 text works. Training
 * uses AdamW with warm-up and cosine decay, gradient clipping, gradient
 * accumulation, a train/validation split, early stopping on the validation
 * loss and checkpoints that --resume continues exactly. Everything is
 * seeded: the loss curve is the same for any --threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_cli.h"
#include "ex_plot.h"
#include "ex_random.h"
#include "gpt.h"
#include "tblocks.h"

#define VOCAB 256
#define VAL_PERCENT 10
#define VAL_BATCHES 8
#define CLIP_NORM 1.0f

/* ---- the built-in corpus ------------------------------------------------------- */

/* Sentences from a small grammar: easy to recognise when the model has
 * learnt them, varied enough that it must learn spelling, word order and
 * punctuation rather than memorise one string. */
static char *builtin_corpus(uint64_t seed, size_t target, size_t *len)
{
    static const char *const subj[] = {"the cat", "a small dog", "the old man", "my sister",
                                       "the teacher", "a young bird", "the farmer", "our neighbour"};
    static const char *const verb[] = {"sees", "likes", "finds", "follows", "paints", "feeds",
                                       "calls", "watches"};
    static const char *const obj[] = {"the red ball", "a green apple", "the quiet river",
                                      "a tall tree", "the bright moon", "a wooden boat",
                                      "the morning sun", "an open door"};
    static const char *const tail[] = {"in the garden", "after dinner", "every morning",
                                       "near the house", "on sunday", "with great care"};
    char *buf = malloc(target + 256);
    if (!buf)
        return NULL;
    tb_rng rng;
    tb_rng_init(&rng, seed);
    size_t at = 0;
    while (at < target) {
        const char *s = subj[ex_rand_below(&rng, 8)], *v = verb[ex_rand_below(&rng, 8)];
        const char *o = obj[ex_rand_below(&rng, 8)];
        int n;
        if (ex_rand_below(&rng, 3) == 0)
            n = snprintf(buf + at, 256, "%c%s %s %s %s.%s", s[0] - 32, s + 1, v, o,
                         tail[ex_rand_below(&rng, 6)], ex_rand_below(&rng, 4) ? " " : "\n");
        else
            n = snprintf(buf + at, 256, "%c%s %s %s.%s", s[0] - 32, s + 1, v, o,
                         ex_rand_below(&rng, 4) ? " " : "\n");
        at += (size_t)n;
    }
    *len = at;
    return buf;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb, cap *= 2;
    }
    if (ferror(f)) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* ---- checkpoints ------------------------------------------------------------------ */

typedef struct train_state {
    double best_val;
    uint64_t bad_evals;
} train_state;

static tb_status save_ckpt(tb_ctx *ctx, const char *path, gpt *m, const tb_adam *opt,
                           const tb_rng *rng, const train_state *ts)
{
    char v[8][48];
    snprintf(v[0], 48, "%zu", m->cfg.n_layer);
    snprintf(v[1], 48, "%zu", m->cfg.n_head);
    snprintf(v[2], 48, "%zu", m->cfg.n_embd);
    snprintf(v[3], 48, "%zu", m->cfg.block_size);
    snprintf(v[4], 48, "%zu", m->cfg.vocab_size);
    snprintf(v[5], 48, "%a", (double)m->cfg.dropout);
    snprintf(v[6], 48, "%a", ts->best_val);
    snprintf(v[7], 48, "%llu", (unsigned long long)ts->bad_evals);
    const tb_st_meta meta[9] = {{"gpt.n_layer", v[0]},    {"gpt.n_head", v[1]},
                                {"gpt.n_embd", v[2]},     {"gpt.block_size", v[3]},
                                {"gpt.vocab_size", v[4]}, {"gpt.dropout", v[5]},
                                {"gpt.best_val", v[6]},   {"gpt.bad_evals", v[7]},
                                {"gpt.tokenizer", "bytes"}};
    return tb_checkpoint_save(ctx, path, &m->params, opt, rng, meta, 9, TB_CKPT_DEFAULT);
}

/* The model configuration and training state a checkpoint was saved with. */
static int read_ckpt_config(tb_ctx *ctx, const char *path, gpt_config *cfg, train_state *ts)
{
    tb_st_file f;
    if (ex_failed(ctx, tb_st_open(ctx, path, &f), "reading the checkpoint"))
        return 0;
    const char *keys[6] = {"gpt.n_layer", "gpt.n_head", "gpt.n_embd", "gpt.block_size",
                           "gpt.vocab_size", "gpt.dropout"};
    size_t *dst[5] = {&cfg->n_layer, &cfg->n_head, &cfg->n_embd, &cfg->block_size,
                      &cfg->vocab_size};
    int ok = 1;
    for (int i = 0; i < 6 && ok; i++) {
        const char *v = tb_st_meta_get(&f, keys[i]);
        char *end = NULL;
        if (!v) {
            ok = 0;
            break;
        }
        if (i < 5)
            *dst[i] = (size_t)strtoull(v, &end, 10);
        else
            cfg->dropout = (float)strtod(v, &end);
        ok = end && *end == '\0';
    }
    const char *bv = tb_st_meta_get(&f, "gpt.best_val"), *be = tb_st_meta_get(&f, "gpt.bad_evals");
    if (ts && bv && be) {
        ts->best_val = strtod(bv, NULL);
        ts->bad_evals = strtoull(be, NULL, 10);
    }
    tb_st_close(&f);
    if (!ok || cfg->vocab_size != VOCAB) {
        fprintf(stderr, "error: %s is not a checkpoint of this program (no gpt.* configuration "
                        "or not byte-level)\n",
                path);
        return 0;
    }
    return 1;
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
                       const tb_sampler_config *sc, char *out, size_t cap);

static int cmd_train(int argc, char **argv)
{
    uint64_t steps = 1000, layers = 4, heads = 4, width = 128, context = 64, batch = 16;
    uint64_t accum = 1, warmup = 100, seed = 1, threads = 0, eval_every = 100, patience = 5;
    uint64_t max_seconds = 100, corpus_kb = 400, stop_at = 0;
    double lr = 3e-3, dropout = 0.0, wd = 0.1;
    const char *data_path = NULL, *ckpt = "gpt.safetensors", *resume = NULL, *csv = NULL,
               *svg = NULL;
    const ex_opt opts[] = {
        {"steps", "N", "optimizer steps (the schedule's length)", 1, 10000000, &steps},
        {"layers", "N", "transformer blocks", 1, 48, &layers},
        {"heads", "N", "attention heads (must divide --width)", 1, 64, &heads},
        {"width", "C", "model width", 8, 4096, &width},
        {"context", "T", "context length in bytes", 2, 2048, &context},
        {"batch", "B", "sequences per micro-batch", 1, 1024, &batch},
        {"accum", "K", "micro-batches accumulated per step", 1, 1024, &accum},
        {"warmup", "N", "warm-up steps", 0, 1000000, &warmup},
        {"seed", "N", "seed (initial weights, batches, dropout)", 0, UINT64_MAX, &seed},
        {"threads", "N", "threads (0: OpenMP's default)", 0, 256, &threads},
        {"eval-every", "N", "steps between validation, checkpoint and progress line", 1,
         1000000, &eval_every},
        {"patience", "N", "stop after N evaluations without a better validation loss (0: never)",
         0, 1000000, &patience},
        {"max-seconds", "S", "stop when the run has taken this long (0: no limit)", 0,
         10000000, &max_seconds},
        {"corpus-kb", "N", "size of the built-in corpus", 16, 100000, &corpus_kb},
        {"stop-at", "N", "stop after step N (the schedule still spans --steps; 0: off)", 0,
         10000000, &stop_at},
    };
    const ex_xopt xopts[] = {
        {"lr", "X", "peak learning rate", &lr, NULL, 1e-6, 1.0},
        {"dropout", "P", "dropout (attention, residual, embedding)", &dropout, NULL, 0.0, 0.9},
        {"weight-decay", "X", "AdamW weight decay (not on biases and LayerNorm)", &wd, NULL, 0.0,
         10.0},
        {"data", "FILE", "train on this text file instead of the built-in corpus", NULL,
         &data_path, 0, 0},
        {"ckpt", "FILE", "checkpoint written at every evaluation and at the end", NULL, &ckpt, 0,
         0},
        {"resume", "FILE", "continue training from this checkpoint", NULL, &resume, 0, 0},
        {"csv", "FILE", "write the loss curve as CSV", NULL, &csv, 0, 0},
        {"svg", "FILE", "draw the loss curve as an SVG chart", NULL, &svg, 0, 0},
    };
    int rc = ex_parse_args_ex(argc, argv, "Train a byte-level GPT (gpt train [options]).", opts,
                              sizeof opts / sizeof opts[0], xopts, sizeof xopts / sizeof xopts[0]);
    if (rc >= 0)
        return rc;
    tb_ctx ctx;
    if ((rc = ex_ctx_init(&ctx)) >= 0)
        return rc;
    if (threads)
        ctx.num_threads = (int)threads;
    gpt_config cfg = {layers, heads, width, context, VOCAB, (float)dropout};
    train_state ts = {INFINITY, 0};
    if (resume && !read_ckpt_config(&ctx, resume, &cfg, &ts))
        return EX_EXIT_FAILURE;
    if (gpt_config_check(&ctx, &cfg) != TB_OK) {
        fprintf(stderr, "error: %s\n", tb_ctx_error(&ctx));
        return EX_EXIT_USAGE;
    }
    /* Data. */
    size_t len = 0;
    char *text = data_path ? read_file(data_path, &len) : builtin_corpus(seed, corpus_kb * 1024, &len);
    if (!text) {
        fprintf(stderr, "error: cannot read %s\n", data_path ? data_path : "(memory)");
        return EX_EXIT_FAILURE;
    }
    const size_t T = cfg.block_size, B = batch;
    data d = {(const unsigned char *)text, len - len * VAL_PERCENT / 100, len * VAL_PERCENT / 100};
    if (d.n_val < T + 2 || d.n_train < T + 2) {
        fprintf(stderr, "error: %s has %zu bytes: too short for a context of %zu with a %d%% "
                        "validation split (needs at least %zu)\n",
                data_path ? data_path : "the corpus", len, T, VAL_PERCENT,
                (T + 2) * 100 / VAL_PERCENT + 1);
        free(text);
        return EX_EXIT_FAILURE;
    }
    printf("gpt train: libtblocks %s, seed %llu, threads %d, kernels %s\n", tb_version_string(),
           (unsigned long long)seed, ctx.num_threads, ex_kernel_name(&ctx));
    printf("data: %s, %zu bytes (%zu train, %zu validation)\n",
           data_path ? data_path : "built-in corpus", len, d.n_train, d.n_val);
    tb_rng rng;
    tb_rng_init(&rng, seed);
    /* Everything below is released at `done`, whatever fails. */
    gpt m;
    gpt_acts a;
    tb_adam opt;
    memset(&m, 0, sizeof m), memset(&a, 0, sizeof a), memset(&opt, 0, sizeof opt);
    int32_t *x = NULL, *y = NULL;
    double *px = NULL, *ptr = NULL, *pv = NULL;
    FILE *csvf = NULL;
    size_t n_pts = 0, cap_pts = steps / eval_every + 3;
    int failed = 0;
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = (float)lr;
    oc.beta2 = 0.95f;
    oc.weight_decay = (float)wd;
    if (ex_failed(&ctx, gpt_init(&ctx, &m, &cfg, &rng), "building the model") ||
        ex_failed(&ctx, gpt_acts_init(&ctx, &a, &m, B, T), "activations") ||
        ex_failed(&ctx, tb_adam_init(&ctx, &opt, &m.params, &oc), "optimizer") ||
        ex_failed(&ctx, tb_adam_add_group(&ctx, &opt, oc.lr, 0.0f, tb_select_no_decay, NULL, NULL),
                  "optimizer groups")) {
        failed = 1;
        goto done;
    }
    if (resume) {
        if (ex_failed(&ctx,
                      tb_checkpoint_load(&ctx, resume, &m.params, &opt, &rng, TB_CKPT_DEFAULT),
                      "loading the checkpoint")) {
            failed = 1;
            goto done;
        }
        printf("resumed from %s at step %llu\n", resume, (unsigned long long)opt.step);
    }
    if (warmup > steps / 2)
        warmup = steps / 2; /* a short run still gets its decay */
    const tb_lr_schedule sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, warmup, steps, 0.1f);
    printf("model: %zu layers, %zu heads, width %zu, context %zu, vocabulary %d (bytes): %zu "
           "parameters\n",
           cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, VOCAB,
           tb_param_list_numel(&m.params, 1));
    printf("train: %llu steps of %llu x %zu sequences x %zu tokens, AdamW lr %g (warm-up %llu, "
           "cosine to 10%%), clip %g, dropout %g\n",
           (unsigned long long)steps, (unsigned long long)accum, B, T, lr,
           (unsigned long long)warmup, (double)CLIP_NORM, dropout);
    printf("memory: activations %.1f MiB for %zu x %zu tokens, optimizer state %.1f MiB\n",
           (double)a.bytes / 1048576.0, B, T, (double)tb_adam_state_bytes(&opt) / 1048576.0);
    printf("%8s %10s %10s %10s %9s %9s\n", "step", "train", "val", "tokens/s", "elapsed", "eta");
    x = malloc(B * T * sizeof(int32_t)), y = malloc(B * T * sizeof(int32_t));
    px = malloc(cap_pts * sizeof(double)), ptr = malloc(cap_pts * sizeof(double));
    pv = malloc(cap_pts * sizeof(double));
    csvf = csv ? fopen(csv, "w") : NULL;
    if (!x || !y || !px || !ptr || !pv || (csv && !csvf)) {
        fprintf(stderr, "error: out of memory or cannot write %s\n", csv ? csv : "");
        failed = 1;
        goto done;
    }
    if (csvf)
        fprintf(csvf, "step,train_loss,val_loss,lr\n");
    const double t0 = ex_seconds();
    const uint64_t first = opt.step;
    double train_acc = 0.0;
    uint64_t train_n = 0;
    const char *stop = "all steps done";
    while (opt.step < steps) {
        tb_param_list_zero_grad(&m.params);
        double loss = 0.0;
        for (uint64_t k = 0; k < accum && !failed; k++) {
            float l;
            batch_of(&d, &rng, 0, 0, B, T, x, y);
            failed = ex_failed(&ctx, gpt_forward(&ctx, &m, &a, TB_MODE_TRAINING, &rng, x, y, B, T,
                                                 &l),
                               "forward") ||
                     ex_failed(&ctx, gpt_backward(&ctx, &m, &a, x, y, 1.0f / (float)accum),
                               "backward");
            loss += l / (double)accum;
        }
        if (failed)
            break;
        double gnorm;
        tb_status s = tb_clip_grad_norm(&ctx, &m.params, CLIP_NORM, &gnorm);
        if (s == TB_OK)
            s = tb_adam_step(&ctx, &opt, tb_lr_factor(&sched, opt.step));
        if (s == TB_ERR_NON_FINITE) {
            fprintf(stderr, "warning: step %llu: non-finite gradient, step skipped\n",
                    (unsigned long long)opt.step + 1);
            opt.step++; /* keep the schedule moving; the weights are unchanged */
            continue;
        }
        if (ex_failed(&ctx, s, "optimizer step")) {
            failed = 1;
            break;
        }
        train_acc += loss;
        train_n++;
        const double el = ex_seconds() - t0;
        const int last = opt.step == steps || opt.step == stop_at ||
                         (max_seconds && el > (double)max_seconds);
        if (opt.step % eval_every != 0 && !last)
            continue;
        double vl = 0.0;
        if (ex_failed(&ctx, val_loss(&ctx, &m, &a, &d, B, T, x, y, &vl), "validation")) {
            failed = 1;
            break;
        }
        const double tl = train_acc / (double)train_n;
        train_acc = 0.0, train_n = 0;
        const double done = (double)(opt.step - first), tps = done * (double)(accum * B * T) / el;
        char e1[16], e2[16];
        fmt_time(e1, sizeof e1, el);
        fmt_time(e2, sizeof e2, el / done * (double)(steps - opt.step));
        printf("%8llu %10.4f %10.4f %10.0f %9s %9s\n", (unsigned long long)opt.step, tl, vl, tps,
               e1, e2);
        fflush(stdout);
        if (csvf)
            fprintf(csvf, "%llu,%.6f,%.6f,%.6g\n", (unsigned long long)opt.step, tl, vl,
                    lr * tb_lr_factor(&sched, opt.step - 1));
        if (n_pts < cap_pts)
            px[n_pts] = (double)opt.step, ptr[n_pts] = tl, pv[n_pts] = vl, n_pts++;
        if (vl < ts.best_val) {
            ts.best_val = vl;
            ts.bad_evals = 0;
        } else {
            ts.bad_evals++;
        }
        if (ex_failed(&ctx, save_ckpt(&ctx, ckpt, &m, &opt, &rng, &ts), "saving the checkpoint")) {
            failed = 1;
            break;
        }
        if (patience && ts.bad_evals >= patience) {
            stop = "early stop: the validation loss stopped improving";
            break;
        }
        if (last && opt.step < steps) {
            stop = opt.step == stop_at ? "stopped at --stop-at" : "time limit (--max-seconds)";
            break;
        }
    }
    const double el = ex_seconds() - t0;
    if (!failed) {
        printf("done: %s; %llu steps in %.1f s, best validation loss %.4f; checkpoint %s\n", stop,
               (unsigned long long)(opt.step - first), el, ts.best_val, ckpt);
        if (csvf)
            printf("loss curve: %s\n", csv);
        if (svg) {
            const ex_series ser[2] = {{"train", "#1f77b4", px, ptr, n_pts},
                                      {"validation", "#d62728", px, pv, n_pts}};
            if (ex_svg_plot(svg, "gpt: loss per byte (nats)", "step", "loss", ser, 2) != 0)
                fprintf(stderr, "warning: cannot write %s\n", svg);
            else
                printf("loss chart: %s\n", svg);
        }
        /* A sample, so the learning is visible. */
        char out[512];
        tb_sampler_config sc = tb_sampler_default_config();
        sc.temperature = 0.8f;
        sc.top_k = 40;
        if (T > 8 && sample_text(&ctx, &m, "The ", T - 4 < 160 ? T - 4 : 160, seed, &sc, out,
                                 sizeof out) == 0)
            printf("sample (temperature 0.8, top-k 40) after \"The \":\n  The %s\n", out);
        printf("final: steps=%llu best_val=%.4f\n", (unsigned long long)opt.step, ts.best_val);
    }
done:
    if (csvf)
        fclose(csvf);
    free(px), free(ptr), free(pv), free(x), free(y), free(text);
    tb_adam_free(&opt);
    gpt_acts_free(&a);
    gpt_free(&m);
    return failed ? EX_EXIT_FAILURE : EX_EXIT_OK;
}

/* ---- generation ----------------------------------------------------------------------- */

/* Sample n_new bytes after prompt (incremental decoding); out gets them,
 * NUL-terminated (non-printable bytes shown as '?'). Returns 0 or -1. */
static int sample_text(tb_ctx *ctx, const gpt *m, const char *prompt, size_t n_new, uint64_t seed,
                       const tb_sampler_config *sc, char *out, size_t cap)
{
    const size_t np = strlen(prompt), T = m->cfg.block_size;
    if (cap)
        out[0] = '\0';
    if (np == 0 || np > T || n_new > T - np || n_new >= cap)
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
        out[i] = tok >= 32 && tok < 127 ? (char)tok : tok == '\n' ? ' ' : '?';
        out[i + 1] = '\0';
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
    if (s->d.kv[0].len + n_new > s->T) {
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

/* On the words (split at spaces and newlines) of text: distinct-1 and
 * distinct-2 (unique words / words, unique word pairs / pairs) and the
 * repeated-4-gram rate (share of word 4-grams seen earlier in the text). */
static rep_stats measure(const char *text)
{
    enum { MAXW = 512 };
    const char *w[MAXW];
    size_t wl[MAXW], n = 0;
    for (const char *p = text; *p && n < MAXW;) {
        while (*p == ' ' || *p == '\n')
            p++;
        if (!*p)
            break;
        const char *q = p;
        while (*q && *q != ' ' && *q != '\n')
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

/* hist[np..np+n) as printable text. */
static void to_text(const int32_t *hist, size_t np, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = np; i < np + n && k + 1 < cap; i++) {
        if (hist[i] < 0)
            break;
        out[k++] = hist[i] >= 32 && hist[i] < 127 ? (char)hist[i] : hist[i] == '\n' ? '\n' : '?';
    }
    out[k] = '\0';
}

/* ---- generate / repetition commands ------------------------------------------------------- */

typedef struct gen_opts {
    uint64_t max_new, top_k, ngram, beams, seed, threads;
    double temperature, top_p, penalty, length_penalty;
    const char *ckpt, *prompt, *strategy;
} gen_opts;

static int load_model(tb_ctx *ctx, const char *ckpt, gpt *m)
{
    gpt_config cfg;
    if (!read_ckpt_config(ctx, ckpt, &cfg, NULL))
        return 0;
    cfg.dropout = 0.0f;
    tb_rng rng;
    tb_rng_init(&rng, 0);
    if (!ex_failed(ctx, gpt_init(ctx, m, &cfg, &rng), "building the model") &&
        !ex_failed(ctx, tb_checkpoint_load(ctx, ckpt, &m->params, NULL, NULL, TB_CKPT_DEFAULT),
                   "loading the checkpoint"))
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
        {"threads", "N", "threads (0: OpenMP's default)", 0, 256, &g->threads},
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

/* Run one strategy; the text generated goes to out. */
static int run_strategy(tb_ctx *ctx, const gpt *m, const char *strategy,
                        const tb_sampler_config *sc, const gen_opts *g, char *out, size_t cap)
{
    const size_t np = strlen(g->prompt);
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
    to_text(hist, np, n, out, cap);
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
    int rc = parse_gen(argc, argv, &g, "Continue a prompt (gpt generate [options]).");
    if (rc >= 0)
        return rc;
    if (strcmp(g.strategy, "greedy") && strcmp(g.strategy, "sample") && strcmp(g.strategy, "beam")) {
        fprintf(stderr, "error: --strategy must be greedy, sample or beam\n");
        return EX_EXIT_USAGE;
    }
    tb_ctx ctx;
    if ((rc = ex_ctx_init(&ctx)) >= 0)
        return rc;
    if (g.threads)
        ctx.num_threads = (int)g.threads;
    gpt m;
    if (!load_model(&ctx, g.ckpt, &m))
        return EX_EXIT_FAILURE;
    const tb_sampler_config sc = sampler_of(&g, g.strategy);
    char *out = malloc(g.max_new + 1);
    rc = out ? run_strategy(&ctx, &m, g.strategy, &sc, &g, out, g.max_new + 1) : -1;
    if (rc == 0)
        printf("%s%s\n", g.prompt, out);
    free(out);
    gpt_free(&m);
    return rc == 0 ? EX_EXIT_OK : rc == -2 ? EX_EXIT_USAGE : EX_EXIT_FAILURE;
}

static int cmd_repetition(int argc, char **argv)
{
    gen_opts g;
    int rc = parse_gen(argc, argv, &g,
                       "One prompt, every decoding strategy, repetition measured "
                       "(gpt repetition [options]).");
    if (rc >= 0)
        return rc;
    tb_ctx ctx;
    if ((rc = ex_ctx_init(&ctx)) >= 0)
        return rc;
    if (g.threads)
        ctx.num_threads = (int)g.threads;
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
    printf("gpt repetition: %s, prompt \"%s\", %llu bytes each, seed %llu\n", g.ckpt, g.prompt,
           (unsigned long long)g.max_new, (unsigned long long)g.seed);
    printf("measures on the generated words: distinct-1 = unique words / words, distinct-2 = "
           "unique word pairs / pairs,\nrep-4 = share of word 4-grams that already occurred "
           "(higher distinct, lower rep-4: less repetition)\n\n");
    printf("%-34s %6s %10s %10s %7s\n", "strategy", "words", "distinct-1", "distinct-2", "rep-4");
    char *out = malloc(g.max_new + 1);
    for (size_t i = 0; out && i < sizeof rows / sizeof rows[0]; i++) {
        gen_opts gi = g;
        gi.temperature = rows[i].temperature, gi.top_p = rows[i].top_p;
        gi.penalty = rows[i].penalty, gi.top_k = rows[i].top_k, gi.ngram = rows[i].ngram;
        gi.beams = rows[i].beams;
        const tb_sampler_config sc = sampler_of(&gi, rows[i].strategy);
        if ((rc = run_strategy(&ctx, &m, rows[i].strategy, &sc, &gi, out, g.max_new + 1)) != 0)
            break;
        const rep_stats r = measure(out);
        printf("%-34s %6zu %10.3f %10.3f %7.3f\n", rows[i].label, r.words, r.distinct1,
               r.distinct2, r.rep4);
        char shown[90];
        size_t k = 0;
        for (const char *p = out; *p && k < 80; p++)
            shown[k++] = *p == '\n' ? '/' : *p;
        shown[k] = '\0';
        printf("    %s%s\n", shown, strlen(out) > 80 ? "..." : "");
    }
    free(out);
    gpt_free(&m);
    return rc == 0 ? EX_EXIT_OK : rc == -2 ? EX_EXIT_USAGE : EX_EXIT_FAILURE;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "generate") == 0)
        return cmd_generate(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "repetition") == 0)
        return cmd_repetition(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "train") == 0)
        return cmd_train(argc - 1, argv + 1);
    if (argc > 1 && argv[1][0] != '-') {
        fprintf(stderr, "usage: gpt [train|generate|repetition] [options] (try gpt train --help)\n");
        return EX_EXIT_USAGE;
    }
    return cmd_train(argc, argv);
}
