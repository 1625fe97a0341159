/*
 * lora_finetune: pre-train a small GPT on one corpus, then adapt it to a
 * second one four ways from the same pre-trained weights, and measure what
 * each costs and what it keeps:
 *
 *   full fine-tuning       every parameter trains
 *   LoRA r=4, LoRA r=16    adapters on c_attn and attn.c_proj, base frozen
 *   DoRA r=4               the same with PEFT's weight decomposition
 *
 *   lora_finetune run     [options]   the whole comparison (writes --dir)
 *   lora_finetune reload  [options]   a fresh process: load the saved base
 *                                     and LoRA r=4 adapter, merge, compare
 *
 * Task 1 is the gpt example's built-in corpus ("The cat sees the red ball
 * in the garden."), task 2 sentences of the same form from a kitchen ("The
 * cook bakes a warm loaf before noon."): other words, the same spelling and
 * punctuation. A model can know both; what task 1 loses while the model
 * learns task 2 is forgetting. Tokens are bytes. Everything is seeded; the numbers (not the
 * times and the resident memory) are bitwise the same for any --threads.
 * docs/lora_finetune.md explains the output.
 *
 * The adapter is saved as PEFT's adapter_model.safetensors and
 * adapter_config.json (tfm_lora_save()); `reload` loads it in a fresh
 * process (tfm_lora_load()), merges it and compares generation.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ex_cli.h"
#include "ex_corpus.h"
#include "ex_file.h"
#include "ex_finetune.h"
#include "ex_random.h"
#include "ex_text.h"
#include "gpt.h"
#include "tblocks.h"
#include "tfm_lora.h"
#include "ex_try.h"

#define VOCAB 256
#define VAL_PERCENT 10
#define VAL_BATCHES 8
#define CLIP_NORM 1.0f
#define PROMPT "The cook "
#define ADAPTER "default"
#define BASE_FILE "base.safetensors"
#define SEED_KEY "lora_finetune.seed"
#define CORPUS_KEY "lora_finetune.corpus_kb"
#define BATCH_KEY "lora_finetune.batch" /* the validation windows depend on it */

/* The attention projections the adapters wrap: c_attn (C -> 3C) and the
 * attention's output projection. "attn.c_proj" matches h.{i}.attn.c_proj
 * but not h.{i}.mlp.c_proj (PEFT's rule: a whole final part of the name). */
static const char *const TARGETS[] = {"c_attn", "attn.c_proj"};
#define N_TARGETS 2

/* ---- data -------------------------------------------------------------------------- */

typedef ex_ft_corpus corpus;

/* B windows of T+1 bytes (ex_ft_windows()): training ones from rng, or
 * validation batch idx of VAL_BATCHES. */
static void windows(const corpus *c, tb_rng *rng, int val, size_t idx, size_t B, size_t T,
                    int32_t *x, int32_t *y)
{
    ex_ft_windows(c, rng, val, idx, VAL_BATCHES, B, T, x, y);
}

/* What every phase shares. */
typedef struct world {
    tb_ctx ctx;
    gpt_config cfg;
    size_t B, T;
    corpus task[2];
    int32_t *x, *y;
} world;

static tb_status val_loss(world *w, gpt *m, gpt_acts *a, const corpus *c, double *out)
{
    double sum = 0.0;
    for (size_t i = 0; i < VAL_BATCHES; i++) {
        float l;
        windows(c, NULL, 1, i, w->B, w->T, w->x, w->y);
        TRY(gpt_forward(&w->ctx, m, a, TB_MODE_INFERENCE, NULL, w->x, w->y, w->B, w->T, &l));
        sum += l;
    }
    *out = sum / VAL_BATCHES;
    return TB_OK;
}

/* ---- generation ------------------------------------------------------------------------- */

/* Greedy continuation of PROMPT: n_new bytes to out (NUL-terminated), and
 * the logits of every step to logits (n_new, VOCAB) when not NULL. Ties go
 * to the lowest byte. */
static tb_status greedy(tb_ctx *ctx, const gpt *m, size_t n_new, char *out, float *logits)
{
    const size_t np = strlen(PROMPT);
    gpt_decoder d;
    int32_t ids[sizeof PROMPT];
    for (size_t i = 0; i < np; i++)
        ids[i] = (unsigned char)PROMPT[i];
    tb_status s = gpt_decoder_init(ctx, &d, m, 1, np + n_new, np);
    if (s == TB_OK)
        s = gpt_decoder_step(ctx, m, &d, ids, np, NULL);
    for (size_t i = 0; s == TB_OK && i < n_new; i++) {
        int32_t best = 0;
        for (int32_t v = 1; v < VOCAB; v++)
            best = d.logits[v] > d.logits[best] ? v : best;
        if (logits)
            memcpy(logits + i * VOCAB, d.logits, VOCAB * sizeof(float));
        out[i] = (char)best;
        if (i + 1 < n_new)
            s = gpt_decoder_step(ctx, m, &d, &best, 1, NULL);
    }
    out[s == TB_OK ? n_new : 0] = '\0';
    gpt_decoder_free(&d);
    return s;
}

/* The bytes a greedy continuation may take: the rest of the context. */
static size_t n_generate(const gpt *m)
{
    const size_t np = strlen(PROMPT), T = m->cfg.block_size;
    return T > np + 40 ? 40 : T - np;
}

static void show_text(const char *label, const char *text)
{
    char buf[256], shown[EX_ESCAPED_CAP(256)];
    size_t n = strlen(text);
    n = n < sizeof buf ? n : sizeof buf;
    for (size_t i = 0; i < n; i++)
        buf[i] = text[i] == '\n' ? '/' : text[i]; /* one line: newlines as '/' */
    printf("%s\"%s%s\"\n", label, PROMPT, ex_escape(buf, n, 0, shown, sizeof shown));
}

/* Greedy decoding with the adapter unmerged, then merged into the base
 * weights (and unmerged again): the tokens, their equality and the largest
 * logit difference over every step. Returns 1 when the tokens are equal. */
typedef struct merge_check {
    int equal;
    double max_diff;
    char unmerged[64], merged[64];
} merge_check;

static tb_status check_merge(tb_ctx *ctx, const gpt *m, tfm_lora *tl, merge_check *mc)
{
    const size_t n = n_generate(m);
    float *a = malloc(n * VOCAB * sizeof(float)), *b = malloc(n * VOCAB * sizeof(float));
    tb_status s = a && b ? TB_OK : TB_ERR_NO_MEMORY;
    if (s == TB_OK)
        s = greedy(ctx, m, n, mc->unmerged, a);
    if (s == TB_OK)
        s = tfm_lora_merge(ctx, tl, ADAPTER, 1);
    if (s == TB_OK) {
        s = greedy(ctx, m, n, mc->merged, b);
        const tb_status u = tfm_lora_unmerge(ctx, tl);
        s = s == TB_OK ? u : s;
    }
    mc->max_diff = 0.0;
    for (size_t i = 0; s == TB_OK && i < n * VOCAB; i++) {
        const double dv = fabs((double)a[i] - (double)b[i]);
        mc->max_diff = dv > mc->max_diff ? dv : mc->max_diff;
    }
    mc->equal = s == TB_OK && strcmp(mc->unmerged, mc->merged) == 0;
    free(a), free(b);
    return s;
}

/* ---- the four ways ----------------------------------------------------------------------- */

typedef struct method {
    const char *label, *key; /* key: the name in the final line */
    int lora, dora;
    size_t rank;
} method;

typedef struct result {
    size_t trainable, grad_bytes, frozen_grad_bytes, adam_bytes, accounted_bytes;
    long rss_kib;
    double ms_per_step, loss[2];
    uint64_t sum;
    char text[64];
} result;

typedef struct run_opts {
    uint64_t pre_steps, steps, layers, heads, width, context, batch, seed, threads, corpus_kb;
    double lr_pre, lr_full, lr_lora;
    const char *dir;
} run_opts;

/* Freeze every projection that is still plain (the MLP's): tb_linear_freeze
 * releases its gradient buffers. */
static tb_status freeze_proj(tb_ctx *ctx, void *user, const char *name, tfm_proj *p)
{
    (void)ctx, (void)user, (void)name;
    tb_linear_freeze(&p->linear);
    return TB_OK;
}

/* A fresh model with the pre-trained values (a new model per method:
 * freezing releases gradient buffers for good). */
static tb_status fresh_model(world *w, gpt *m, const float *pre)
{
    tb_rng rng;
    tb_rng_init(&rng, 0);
    TRY(gpt_init(&w->ctx, m, &w->cfg, &rng));
    size_t at = 0;
    for (size_t i = 0; i < m->params.count; i++) {
        tb_param *p = m->params.items[i].param;
        memcpy(p->value, pre + at, p->numel * sizeof(float));
        at += p->numel;
    }
    return TB_OK;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Train m on corpus c for `steps` AdamW steps over `list` (the trainable
 * parameters): warm-up 10%, cosine to 10%, clipping. *ms receives the
 * median time of a step (on a shared machine the median is what a step
 * costs; the mean is what the neighbours cost). */
static tb_status train(world *w, gpt *m, gpt_acts *a, tb_param_list *list, tb_adam *opt,
                       const corpus *c, uint64_t steps, tb_rng *rng, double *ms)
{
    tb_ctx *ctx = &w->ctx;
    const tb_lr_schedule sched =
        tb_lr_schedule_make(TB_LR_WARMUP_COSINE, steps / 10, steps, 0.1f);
    double *t = malloc(steps * sizeof(double));
    if (!t)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "no memory for %llu step times",
                                (unsigned long long)steps);
    tb_status s = TB_OK;
    for (uint64_t step = 0; s == TB_OK && step < steps; step++) {
        float l;
        double norm;
        const double t0 = ex_seconds();
        tb_param_list_zero_grad(list);
        windows(c, rng, 0, 0, w->B, w->T, w->x, w->y);
        s = gpt_forward(ctx, m, a, TB_MODE_TRAINING, rng, w->x, w->y, w->B, w->T, &l);
        if (s == TB_OK && !isfinite(l))
            s = tb_ctx_set_error(ctx, TB_ERR_NON_FINITE, "step %llu: training loss %g",
                                 (unsigned long long)step + 1, (double)l);
        if (s == TB_OK)
            s = gpt_backward(ctx, m, a, w->x, w->y, 1.0f);
        if (s == TB_OK)
            s = tb_clip_grad_norm(ctx, list, CLIP_NORM, &norm);
        if (s == TB_OK)
            s = tb_adam_step(ctx, opt, tb_lr_factor(&sched, opt->step));
        t[step] = ex_seconds() - t0;
    }
    if (s == TB_OK) {
        qsort(t, steps, sizeof(double), cmp_double);
        *ms = 1000.0 * (steps % 2 ? t[steps / 2] : 0.5 * (t[steps / 2 - 1] + t[steps / 2]));
    }
    free(t);
    return s;
}

static tb_status make_adam(tb_ctx *ctx, tb_adam *opt, tb_param_list *list, double lr, float wd)
{
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = (float)lr;
    oc.beta2 = 0.95f;
    oc.weight_decay = wd;
    TRY(tb_adam_init(ctx, opt, list, &oc));
    return tb_adam_add_group(ctx, opt, oc.lr, 0.0f, tb_select_no_decay, NULL, NULL);
}

/* One way of adapting to task 2, from the pre-trained values `pre`. With
 * mc (LoRA r=4), the merge is checked and, with the adapter files, the
 * adapter saved to o->dir. */
static tb_status adapt(world *w, const run_opts *o, const method *me, const float *pre,
                       result *r, merge_check *mc)
{
    tb_ctx *ctx = &w->ctx;
    gpt m;
    gpt_acts a;
    tb_adam opt;
    tfm_lora tl;
    tb_param_list lora_list;
    memset(&m, 0, sizeof m), memset(&a, 0, sizeof a), memset(&opt, 0, sizeof opt);
    tfm_lora_init(&tl);
    memset(&lora_list, 0, sizeof lora_list);
    memset(r, 0, sizeof *r);
    tb_rng rng;
    tb_rng_init(&rng, o->seed + 2); /* adapters' initial values, then the batches */
    ex_rss_phase_start();
    tb_status s = fresh_model(w, &m, pre);
    tb_param_list *list = &m.params;
    if (s == TB_OK && me->lora) {
        tfm_lora_spec spec;
        memset(&spec, 0, sizeof spec);
        spec.targets = TARGETS, spec.n_targets = N_TARGETS;
        spec.config = tb_lora_config_default(me->rank);
        spec.config.alpha = 2.0f * (float)me->rank; /* s = alpha / r = 2 for every rank */
        spec.config.use_dora = me->dora;
        s = tfm_lora_add(ctx, &tl, &m.t, ADAPTER, &spec, &rng);
        /* The base stays as it is: embeddings and LayerNorms frozen by
         * flag (their gradient buffers remain allocated: the blocks have no
         * call that releases them), every Linear frozen for real, the tied
         * LM head (a view of wte) too. */
        if (s == TB_OK) {
            tb_param_list_set_trainable(&m.params, NULL, 0);
            s = tfm_visit_projs(ctx, &m.t, "", freeze_proj, NULL);
            tb_linear_freeze(&m.lm_head);
        }
        if (s == TB_OK)
            s = tb_param_list_init(ctx, &lora_list);
        if (s == TB_OK)
            s = tfm_lora_params(ctx, &tl, "", &lora_list);
        list = &lora_list;
    }
    if (s == TB_OK)
        s = gpt_acts_init(ctx, &a, &m, w->B, w->T);
    if (s == TB_OK) /* only the trainable list gets optimizer state */
        s = make_adam(ctx, &opt, list, me->lora ? o->lr_lora : o->lr_full, 0.0f);
    if (s == TB_OK)
        s = train(w, &m, &a, list, &opt, &w->task[1], o->steps, &rng, &r->ms_per_step);
    if (s == TB_OK) {
        r->rss_kib = ex_proc_kib("VmHWM");
        r->trainable = tb_param_list_numel(list, 1);
        size_t values = 0, grads = 0, lv = 0, lg = 0;
        ex_ft_list_bytes(&m.params, &values, &grads);
        r->frozen_grad_bytes = me->lora ? grads : 0;
        if (me->lora)
            ex_ft_list_bytes(&lora_list, &lv, &lg);
        r->grad_bytes = grads + lg;
        r->adam_bytes = tb_adam_state_bytes(&opt);
        size_t caches = 0;
        for (size_t i = 0; i < tl.n_sites; i++)
            caches += tl.sites[i].cache_bytes;
        r->accounted_bytes = values + lv + r->grad_bytes + r->adam_bytes + a.bytes + caches;
        r->sum = ex_ft_checksum(list, ex_ft_checksum(&m.params, EX_FNV_OFFSET));
        s = val_loss(w, &m, &a, &w->task[0], &r->loss[0]);
    }
    if (s == TB_OK)
        s = val_loss(w, &m, &a, &w->task[1], &r->loss[1]);
    if (s == TB_OK)
        s = greedy(ctx, &m, n_generate(&m), r->text, NULL);
    if (s == TB_OK && mc)
        s = check_merge(ctx, &m, &tl, mc);
    if (s == TB_OK && mc) {
        char base[4096];
        snprintf(base, sizeof base, "%s/%s", o->dir, BASE_FILE);
        s = tfm_lora_save(ctx, &tl, o->dir, ADAPTER, "transformer.", base);
    }
    tb_adam_free(&opt);
    gpt_acts_free(&a);
    tb_param_list_free(&lora_list);
    tfm_lora_free(&tl);
    gpt_free(&m);
    return s;
}

/* ---- run ------------------------------------------------------------------------------------ */

static int parse_run(int argc, char **argv, run_opts *o)
{
    *o = (run_opts){.pre_steps = 800, .steps = 300, .layers = 2, .heads = 4, .width = 64,
                    .context = 48, .batch = 16, .seed = 1, .corpus_kb = 200, .lr_pre = 3e-3,
                    .lr_full = 1e-3, .lr_lora = 3e-3, .dir = "lora_finetune_out"};
    const ex_opt opts[] = {
        {"pretrain-steps", "N", "AdamW steps on task 1", 1, 1000000, &o->pre_steps},
        {"steps", "N", "AdamW steps on task 2, for each of the four ways", 1, 1000000, &o->steps},
        {"layers", "N", "transformer blocks", 1, 48, &o->layers},
        {"heads", "N", "attention heads (must divide --width)", 1, 64, &o->heads},
        {"width", "C", "model width", 8, 4096, &o->width},
        {"context", "T", "context length in bytes", 16, 2048, &o->context},
        {"batch", "B", "sequences per step", 1, 1024, &o->batch},
        {"seed", "N", "seed (corpora, initial weights, adapters, batches)", 0, UINT64_MAX,
         &o->seed},
        EX_OPT_THREADS(o->threads),
        {"corpus-kb", "N", "size of each task's corpus", 16, 100000, &o->corpus_kb},
    };
    const ex_xopt xopts[] = {
        {"lr-pretrain", "X", "peak learning rate of pre-training", &o->lr_pre, NULL, 1e-6, 1.0},
        {"lr-full", "X", "peak learning rate of full fine-tuning", &o->lr_full, NULL, 1e-6, 1.0},
        {"lr-lora", "X", "peak learning rate of LoRA and DoRA", &o->lr_lora, NULL, 1e-6, 1.0},
        {"dir", "DIR", "directory for the base checkpoint and the LoRA r=4 adapter", NULL,
         &o->dir, 0, 0},
    };
    return ex_parse_args_ex(argc, argv,
                            "Pre-train a byte-level GPT on task 1, adapt it to task 2 by full\n"
                            "fine-tuning, LoRA r=4, LoRA r=16 and DoRA r=4, and compare what each\n"
                            "costs and keeps; check that the merged LoRA model decodes as the\n"
                            "unmerged one"
                            ", and save the base and the LoRA r=4 adapter to --dir\n"
                            "(lora_finetune reload reads them in a fresh process)"
                            ".",
                            opts, sizeof opts / sizeof opts[0], xopts,
                            sizeof xopts / sizeof xopts[0]);
}

static void world_free(world *w)
{
    free(w->task[0].text), free(w->task[1].text), free(w->x), free(w->y);
}

static int world_init(world *w, uint64_t seed, uint64_t corpus_kb)
{
    w->x = malloc(w->B * w->T * sizeof(int32_t));
    w->y = malloc(w->B * w->T * sizeof(int32_t));
    if (!w->x || !w->y ||
        !ex_ft_corpus_make(&ex_grammar_garden, seed, corpus_kb * 1024, w->T, VAL_PERCENT,
                           &w->task[0]) ||
        !ex_ft_corpus_make(&ex_grammar_kitchen, seed + 1, corpus_kb * 1024, w->T, VAL_PERCENT,
                           &w->task[1])) {
        fprintf(stderr, "error: out of memory for the corpora, or --corpus-kb too small for "
                        "the context\n");
        return 0;
    }
    return 1;
}

/* The output directory exists (made if it does not) and takes the base
 * checkpoint; 0 after a message. */
static int prepare_dir(const char *dir)
{
    ex_shown p;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "error: cannot create the directory %s (--dir): %s\n", ex_show(&p, dir),
                strerror(errno));
        return 0;
    }
    char path[4096];
    const int n = snprintf(path, sizeof path, "%s/%s", dir, BASE_FILE);
    if (n < 0 || (size_t)n >= sizeof path) {
        fprintf(stderr, "error: --dir is too long\n");
        return 0;
    }
    return ex_check_output(path, "base checkpoint (--dir)");
}

static tb_status save_base(tb_ctx *ctx, const run_opts *o, gpt *m)
{
    gpt_config_text text;
    tb_st_meta meta[GPT_CONFIG_N_META + 3];
    gpt_config_meta(&m->cfg, &text, meta);
    char seed[24], kb[24], batch[24], path[4096];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    snprintf(kb, sizeof kb, "%llu", (unsigned long long)o->corpus_kb);
    snprintf(batch, sizeof batch, "%llu", (unsigned long long)o->batch);
    meta[GPT_CONFIG_N_META] = (tb_st_meta){SEED_KEY, seed};
    meta[GPT_CONFIG_N_META + 1] = (tb_st_meta){CORPUS_KEY, kb};
    meta[GPT_CONFIG_N_META + 2] = (tb_st_meta){BATCH_KEY, batch};
    snprintf(path, sizeof path, "%s/%s", o->dir, BASE_FILE);
    return tb_checkpoint_save(ctx, path, &m->params, NULL, NULL, meta, GPT_CONFIG_N_META + 3,
                              TB_CKPT_DEFAULT);
}

static int cmd_run(int argc, char **argv)
{
    run_opts o;
    int rc = parse_run(argc, argv, &o);
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
    if (!prepare_dir(o.dir))
        return EX_EXIT_FAILURE;
    w.B = o.batch, w.T = o.context;
    if (!world_init(&w, o.seed, o.corpus_kb)) {
        world_free(&w);
        return EX_EXIT_FAILURE;
    }
    const double t_start = ex_seconds();
    printf("lora_finetune run: libtblocks %s, seed %llu, threads %d, kernels %s\n",
           tb_version_string(), (unsigned long long)o.seed, ctx->num_threads,
           ex_kernel_name(ctx));
    printf("task 1: \"The cat sees the red ball in the garden.\" (the gpt example's corpus)\n"
           "task 2: \"The cook bakes a warm loaf before noon.\" (the same form, other "
           "words)\n");
    printf("%llu KiB of each, %d%% held out for validation; tokens are bytes\n\n",
           (unsigned long long)o.corpus_kb, VAL_PERCENT);

    /* ---- 1. pre-training on task 1 ---------------------------------------------------- */
    gpt m;
    gpt_acts a;
    tb_adam opt;
    memset(&m, 0, sizeof m), memset(&a, 0, sizeof a), memset(&opt, 0, sizeof opt);
    tb_rng rng;
    tb_rng_init(&rng, o.seed);
    double ms, pre_loss[2] = {0, 0};
    char pre_text[64];
    int failed =
        ex_failed(ctx, gpt_init(ctx, &m, &w.cfg, &rng), "building the model") ||
        ex_failed(ctx, gpt_acts_init(ctx, &a, &m, w.B, w.T), "activations") ||
        ex_failed(ctx, make_adam(ctx, &opt, &m.params, o.lr_pre, 0.1f), "optimizer");
    if (!failed) {
        printf("model: %zu layers, %zu heads, width %zu, context %zu: %zu parameters\n",
               w.cfg.n_layer, w.cfg.n_head, w.cfg.n_embd, w.cfg.block_size,
               tb_param_list_numel(&m.params, 0));
        printf("1. pre-training on task 1: %llu AdamW steps of %zu x %zu bytes, lr %g\n",
               (unsigned long long)o.pre_steps, w.B, w.T, o.lr_pre);
        fflush(stdout);
        failed = ex_failed(ctx, train(&w, &m, &a, &m.params, &opt, &w.task[0], o.pre_steps, &rng,
                                      &ms),
                           "pre-training") ||
                 ex_failed(ctx, val_loss(&w, &m, &a, &w.task[0], &pre_loss[0]), "validation") ||
                 ex_failed(ctx, val_loss(&w, &m, &a, &w.task[1], &pre_loss[1]), "validation") ||
                 ex_failed(ctx, greedy(ctx, &m, n_generate(&m), pre_text, NULL), "generation");
    }
    if (!failed)
        failed = ex_failed(ctx, save_base(ctx, &o, &m), "saving the base checkpoint");
    float *pre = NULL;
    if (!failed) {
        printf("   %.1f ms/step; validation loss (nats/byte): task 1 %.4f, task 2 %.4f\n", ms,
               pre_loss[0], pre_loss[1]);
        show_text("   greedy: ", pre_text);
        /* The pre-trained values, the start of every way. */
        pre = malloc(tb_param_list_numel(&m.params, 0) * sizeof(float));
        size_t at = 0;
        for (size_t i = 0; pre && i < m.params.count; i++) {
            const tb_param *p = m.params.items[i].param;
            memcpy(pre + at, p->value, p->numel * sizeof(float));
            at += p->numel;
        }
        if (!pre) {
            fprintf(stderr, "error: out of memory\n");
            failed = 1;
        }
    }
    tb_adam_free(&opt);
    gpt_acts_free(&a);
    gpt_free(&m);

    /* ---- 2. four ways to adapt to task 2 ------------------------------------------------ */
    const method methods[4] = {{"full fine-tuning", "full", 0, 0, 0},
                               {"LoRA r=4", "lora4", 1, 0, 4},
                               {"LoRA r=16", "lora16", 1, 0, 16},
                               {"DoRA r=4", "dora4", 1, 1, 4}};
    result res[4];
    merge_check mc;
    memset(&mc, 0, sizeof mc);
    if (!failed) {
        printf("\n2. adapting to task 2 from the same pre-trained weights: %llu AdamW steps "
               "each, lr %g (full) / %g (LoRA, DoRA)\n",
               (unsigned long long)o.steps, o.lr_full, o.lr_lora);
        printf("   adapters on c_attn and attn.c_proj of every layer, alpha = 2r (scale 2); "
               "MLP, embeddings, LayerNorms frozen\n");
        ex_rss_phase_start();
        printf("   resident before each: %ld KiB (code, corpora, the pre-trained copy)\n\n",
               ex_proc_kib("VmRSS"));
        printf("   %-17s %9s %10s %10s %11s %10s %8s %8s %8s\n", "", "trainable", "grads KiB",
               "Adam KiB", "memory KiB", "peak RSS", "ms/step", "task 1", "task 2");
        fflush(stdout);
    }
    for (int k = 0; k < 4 && !failed; k++) {
        result *r = &res[k];
        if (ex_failed(ctx, adapt(&w, &o, &methods[k], pre, r, k == 1 ? &mc : NULL),
                      methods[k].label)) {
            failed = 1;
            break;
        }
        char rss[24] = "-";
        if (r->rss_kib >= 0)
            snprintf(rss, sizeof rss, "%ld", r->rss_kib);
        printf("   %-17s %9zu %10.1f %10.1f %11.1f %10s %8.2f %8.4f %8.4f\n", methods[k].label,
               r->trainable, (double)r->grad_bytes / 1024.0, (double)r->adam_bytes / 1024.0,
               (double)r->accounted_bytes / 1024.0, rss, r->ms_per_step, r->loss[0],
               r->loss[1]);
        fflush(stdout);
    }
    if (!failed) {
        printf("   (before adapting: task 1 %.4f, task 2 %.4f; validation losses in nats per "
               "byte)\n",
               pre_loss[0], pre_loss[1]);
        printf("   grads: every gradient buffer that exists; with LoRA and DoRA %.1f KiB of it are "
               "the frozen\n   embeddings' and LayerNorms' (frozen by flag, not released)\n",
               (double)res[1].frozen_grad_bytes / 1024.0);
        printf("   memory: values + grads + Adam + activations + adapter caches, as allocated; "
               "peak RSS: the process's\n   peak resident KiB during the phase (VmHWM reset "
               "at its start)\n\n");
        printf("3. greedy continuations after adapting:\n");
        for (int k = 0; k < 4; k++) {
            char label[40];
            snprintf(label, sizeof label, "   %-17s ", methods[k].label);
            show_text(label, res[k].text);
        }
        printf("\n4. LoRA r=4 merged into the base weights (W += s B A) decodes as the unmerged "
               "adapter:\n");
        show_text("   unmerged: ", mc.unmerged);
        show_text("   merged:   ", mc.merged);
        printf("   %s token for token; largest logit difference %.3g\n",
               mc.equal ? "equal" : "DIFFERENT", mc.max_diff);
        ex_shown p;
        printf("   adapter saved: %s/adapter_model.safetensors, adapter_config.json; base "
               "%s/%s\n",
               ex_show(&p, o.dir), p.text, BASE_FILE);
        printf("   next, in a fresh process: lora_finetune reload --dir %s\n", p.text);
        printf("\ndone: %.1f s\n", ex_seconds() - t_start);
        printf("final: pre_t1=%.9g pre_t2=%.9g", pre_loss[0], pre_loss[1]);
        for (int k = 0; k < 4; k++)
            printf(" %s_n=%zu %s_t1=%.9g %s_t2=%.9g %s_grad=%zu %s_adam=%zu", methods[k].key,
                   res[k].trainable, methods[k].key, res[k].loss[0], methods[k].key,
                   res[k].loss[1], methods[k].key, res[k].grad_bytes, methods[k].key,
                   res[k].adam_bytes);
        printf(" merged_equal=%d max_logit_diff=%.9g\n", mc.equal, mc.max_diff);
        printf("checksums:");
        for (int k = 0; k < 4; k++)
            printf(" %s=%016llx", methods[k].key, (unsigned long long)res[k].sum);
        printf("\n");
    }
    free(pre);
    world_free(&w);
    return failed ? EX_EXIT_FAILURE : mc.equal ? EX_EXIT_OK : EX_EXIT_FAILURE;
}

/* ---- reload ------------------------------------------------------------------------------- */

static int cmd_reload(int argc, char **argv)
{
    uint64_t threads = 0;
    const char *dir = "lora_finetune_out";
    const ex_opt opts[] = {EX_OPT_THREADS(threads)};
    const ex_xopt xopts[] = {
        {"dir", "DIR", "the directory lora_finetune run wrote", NULL, &dir, 0, 0}};
    int rc = ex_parse_args_ex(argc, argv,
                              "In a fresh process: load the base checkpoint and the LoRA r=4\n"
                              "adapter that lora_finetune run saved in --dir, measure task 2,\n"
                              "merge the adapter and check that greedy decoding is unchanged.",
                              opts, 1, xopts, 1);
    if (rc >= 0)
        return rc;
    world w;
    memset(&w, 0, sizeof w);
    if ((rc = ex_ctx_init(&w.ctx)) >= 0)
        return rc;
    ex_apply_threads(&w.ctx, threads);
    tb_ctx *ctx = &w.ctx;
    char path[4096];
    const int pn = snprintf(path, sizeof path, "%s/%s", dir, BASE_FILE);
    if (pn < 0 || (size_t)pn >= sizeof path) {
        fprintf(stderr, "error: --dir is too long\n");
        return EX_EXIT_USAGE;
    }
    if (!ex_check_regular(path, "base checkpoint"))
        return EX_EXIT_FAILURE;
    /* The configuration and the corpora's seed, validated before anything
     * is allocated for them. */
    uint64_t seed = 0, kb = 0, batch = 0;
    tb_st_file f;
    tb_status s = tb_st_open(ctx, path, &f);
    if (s == TB_OK) {
        s = gpt_config_from_checkpoint(ctx, &f, &w.cfg);
        const char *sv = tb_st_meta_get(&f, SEED_KEY), *kv = tb_st_meta_get(&f, CORPUS_KEY);
        const char *bv = tb_st_meta_get(&f, BATCH_KEY);
        if (s == TB_OK &&
            (!sv || !kv || !bv || !ex_parse_u64(sv, &seed) || !ex_parse_u64(kv, &kb) ||
             !ex_parse_u64(bv, &batch) || kb < 16 || kb > 100000 || batch < 1 || batch > 1024 ||
             w.cfg.vocab_size != VOCAB || w.cfg.block_size < 16))
            s = tb_ctx_set_error(ctx, TB_ERR_FORMAT,
                                 "not a base checkpoint of lora_finetune run (%s, %s, %s, "
                                 "vocabulary, context)",
                                 SEED_KEY, CORPUS_KEY, BATCH_KEY);
        tb_st_close(&f);
    }
    ex_shown p;
    if (ex_failed(ctx, s, ex_show(&p, path)))
        return EX_EXIT_FAILURE;
    w.B = (size_t)batch, w.T = w.cfg.block_size;
    if (!world_init(&w, seed, kb)) {
        world_free(&w);
        return EX_EXIT_FAILURE;
    }
    gpt m;
    gpt_acts a;
    tfm_lora tl;
    memset(&m, 0, sizeof m), memset(&a, 0, sizeof a);
    tfm_lora_init(&tl);
    tb_rng rng;
    tb_rng_init(&rng, 0);
    double loss[2] = {0, 0}, merged_loss = 0;
    merge_check mc;
    memset(&mc, 0, sizeof mc);
    int failed =
        ex_failed(ctx, gpt_init(ctx, &m, &w.cfg, &rng), "building the model") ||
        ex_failed(ctx, tb_checkpoint_load(ctx, path, &m.params, NULL, NULL, TB_CKPT_DEFAULT),
                  p.text) ||
        ex_failed(ctx, tfm_lora_load(ctx, &tl, &m.t, dir, ADAPTER, "transformer."),
                  "loading the adapter") ||
        ex_failed(ctx, gpt_acts_init(ctx, &a, &m, w.B, w.T), "activations") ||
        ex_failed(ctx, val_loss(&w, &m, &a, &w.task[0], &loss[0]), "validation") ||
        ex_failed(ctx, val_loss(&w, &m, &a, &w.task[1], &loss[1]), "validation") ||
        ex_failed(ctx, check_merge(ctx, &m, &tl, &mc), "merging") ||
        ex_failed(ctx, tfm_lora_merge(ctx, &tl, ADAPTER, 1), "merging") ||
        ex_failed(ctx, val_loss(&w, &m, &a, &w.task[1], &merged_loss), "validation");
    if (!failed) {
        size_t n = 0;
        for (size_t i = 0; i < tl.n_sites; i++) {
            tb_lora *l = &tl.sites[i].lora;
            for (size_t j = 0; j < l->n_adapters; j++)
                n += l->adapter[j].A.numel + l->adapter[j].B.numel + l->adapter[j].magnitude.numel;
        }
        printf("lora_finetune reload: libtblocks %s, threads %d, kernels %s\n",
               tb_version_string(), ctx->num_threads, ex_kernel_name(ctx));
        printf("base %s: %zu layers, width %zu, context %zu; adapter '%s': %zu sites, %zu "
               "parameters\n",
               p.text, w.cfg.n_layer, w.cfg.n_embd, w.cfg.block_size, ADAPTER, tl.n_sites, n);
        printf("validation loss, adapter unmerged: task 1 %.4f, task 2 %.4f; merged: task 2 "
               "%.4f\n",
               loss[0], loss[1], merged_loss);
        show_text("unmerged: ", mc.unmerged);
        show_text("merged:   ", mc.merged);
        printf("%s token for token; largest logit difference %.3g\n",
               mc.equal ? "equal" : "DIFFERENT", mc.max_diff);
        printf("final: reload_t1=%.9g reload_t2=%.9g merged_t2=%.9g merged_equal=%d "
               "max_logit_diff=%.9g\n",
               loss[0], loss[1], merged_loss, mc.equal, mc.max_diff);
    }
    gpt_acts_free(&a);
    tfm_lora_free(&tl);
    gpt_free(&m);
    world_free(&w);
    return failed ? EX_EXIT_FAILURE : mc.equal ? EX_EXIT_OK : EX_EXIT_FAILURE;
}

int main(int argc, char **argv)
{
    static const ex_command cmds[] = {
        {"run", "pre-train, adapt four ways, compare, check the merge", cmd_run},
        {"reload", "in a fresh process: load the saved adapter, merge, compare", cmd_reload},
    };
    return ex_run_command(argc, argv,
                          "Full fine-tuning, LoRA and DoRA on a small byte-level GPT, compared.",
                          cmds, sizeof cmds / sizeof cmds[0]);
}
