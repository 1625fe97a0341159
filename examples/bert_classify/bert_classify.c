/*
 * bert_classify: sequence classification with a BERT-style encoder on the
 * shared stack (examples/common/tfm.h, configured by bert_config.h) and
 * BERT's head (bert_cls.h: pooler + classifier + cross-entropy), trained
 * three ways:
 *
 *   --method full     every parameter trains
 *   --method lora     LoRA on every layer's query and value projections
 *                     (tfm_lora.h, PEFT's target_modules ["query", "value"]);
 *                     the encoder frozen with tfm_freeze() (gradients
 *                     released), the pooler frozen, the classifier trains
 *                     (PEFT's modules_to_save for SEQ_CLS)
 *   --method ptuning  n virtual tokens from PEFT's PromptEncoder in front of
 *                     the input (ptuning_input.h, prefix mode); encoder and
 *                     pooler frozen, the prompt encoder and the classifier
 *                     train
 *
 * Data: the built-in task (cls_data.h: the label is the sum mod K of a digit
 * left and a digit right of a marked token, read at the mark: a causal model
 * is at chance by construction), --data-dir DIR (one sub-folder per class,
 * one UTF-8 file per example) or --fortunes (Debian's fortune files, one
 * class per file). Texts are tokenised by a word vocabulary built from the
 * training split (cls_vocab). A fixed, seeded, stratified train/eval split;
 * --eval-dir DIR evaluates on another folder instead.
 *
 * Where the head reads: [CLS] (position 0) on texts, as BertForSequence-
 * Classification; the marked token on the built-in task (position m, or
 * n + m behind P-tuning's n virtual tokens). Under P-tuning on texts the
 * head reads position 0, the first virtual token, as PEFT's
 * PeftModelForSequenceClassification does. The head's input is gathered
 * into a (B, 1, C) buffer and its gradient scattered back.
 *
 * --compare prints three tables from real runs (docs/bert_classify.md):
 * (i) full fine-tuning vs LoRA vs P-tuning from one base model, (ii) the
 * bidirectional encoder vs a causal stack of the same size, (iii) LayerNorm
 * vs BatchNorm on variable-length batches in training and eval mode.
 *
 * Everything is seeded; every number but times is bitwise the same for any
 * --threads.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bert_cls.h"
#include "bert_config.h"
#include "cls_data.h"
#include "ex_cli.h"
#include "ex_file.h"
#include "ex_finetune.h"
#include "ex_mpi.h"
#include "ex_random.h"
#include "ex_text.h"
#include "ex_try.h"
#include "ptuning_input.h"
#include "tblocks.h"
#include "tfm.h"
#include "tfm_lora.h"

#include "bert_ckpt.h"
#include "bert_model.h"
#include "tblocks/wordpiece.h"

#define CLIP_NORM 1.0f
#define DEFAULT_FORTUNE_DIR "/usr/share/games/fortunes"

enum { M_FULL, M_LORA, M_PTUNING, N_METHODS };
static const char *const METHOD[N_METHODS] = {"full", "lora", "ptuning"};
static const char *const METHOD_LABEL[N_METHODS] = {"full fine-tuning", "LoRA (query, value)",
                                                    "P-tuning"};

typedef struct opts {
    uint64_t steps, batch, accum, layers, heads, width, ff, positions, seed, threads, rank, n_virtual,
        enc_hidden, classes, examples, min_len, max_len, max_words, max_per_class, eval_percent,
        log_every, base_steps;
    double lr, lr_peft, lr_bn, lr_base, alpha, lora_dropout, dropout, wd;
    const char *method, *init, *model_dir, *data_dir, *eval_dir, *vocab, *fortune_dir,
        *fortune_files, *attention, *norm, *encoder;
    int fortunes, compare;
} opts;

/* One run's set-up. */
typedef struct run_spec {
    int method;
    int causal;
    tfm_norm_kind norm;
    float dropout;
    uint64_t steps;
    float lr;
    int train_mode_eval; /* also evaluate in training mode (BatchNorm's batch statistics) */
    const char *title;
} run_spec;

typedef struct result {
    size_t params, trainable, grad_bytes, adam_bytes, kept_bytes;
    double ms_step, acc, acc_train_mode, acc_train_mode1, macro_f1;
    double loss_first, loss_last;
    cls_metrics met;
    uint64_t base_before, base_after;
    uint64_t trained; /* checksum of the trained parameters' values after training */
} result;

/* The data a run trains and evaluates on. */
typedef struct data {
    cls_set set;      /* training (and, without --eval-dir, evaluation) examples */
    cls_set eval_set; /* --eval-dir's, or empty */
    size_t *train, n_train, *eval, n_eval;
    const cls_set *es; /* the set eval indexes */
} data;

typedef struct world {
    tb_ctx ctx;
    const opts *o;
    const tb_comm *comm; /* the processes (bert_classify_mpi under mpirun; else one) */
    bert_config bc;
    /* The batch buffers (max B x T). */
    size_t max_b, max_t;
    int32_t *ids, *labels;
    uint8_t *valid;
    size_t *read;
    int quiet; /* no progress lines (the compare runs) */
    /* A pre-trained encoder to start from (--init FILE, --model-dir DIR):
     * the values of its tfm_params() entries, in order; NULL: random. */
    float *start;
    size_t start_entries;
    const char *start_name;
} world;

/* ---- the model and its three ways of training -------------------------------------------- */

typedef struct model {
    int method;
    tfm m;
    tfm_acts a;
    bert_cls h;
    tfm_lora lora;
    tb_ptuning enc;
    ptin p;
    size_t n_virtual; /* P-tuning's n, else 0 */
    tb_param_list base;  /* the encoder and the pooler: what a pre-trained BERT holds */
    tb_param_list train; /* what the optimizer updates */
    float *hin, *dh;     /* (max_b, C) the head's input and its gradient */
    size_t kept;         /* gradient bytes the frozen stack still holds */
} model;

static void model_free(model *md)
{
    tfm_lora_free(&md->lora);
    ptin_free(&md->p);
    tb_ptuning_free(&md->enc);
    tb_param_list_free(&md->base);
    tb_param_list_free(&md->train);
    tfm_acts_free(&md->a);
    bert_cls_free(&md->h);
    tfm_free(&md->m);
    free(md->hin), free(md->dh);
    memset(md, 0, sizeof *md);
}

static size_t list_floats(const tb_param_list *l)
{
    size_t n = 0;
    for (size_t i = 0; i < l->count; i++)
        n += l->items[i].param->numel;
    return n;
}

static void list_get(const tb_param_list *l, float *dst)
{
    for (size_t i = 0; i < l->count; i++) {
        memcpy(dst, l->items[i].param->value, l->items[i].param->numel * sizeof(float));
        dst += l->items[i].param->numel;
    }
}

static void list_set(tb_param_list *l, const float *src, size_t entries)
{
    for (size_t i = 0; i < l->count && i < entries; i++) {
        memcpy(l->items[i].param->value, src, l->items[i].param->numel * sizeof(float));
        src += l->items[i].param->numel;
    }
}

/* The stack's configuration for a run: bert_config's BERT with this run's
 * attention, norm and dropout. */
static tfm_config run_tfm_config(const world *w, const run_spec *rs, size_t vocab)
{
    bert_config bc = w->bc;
    bc.vocab_size = vocab;
    bc.hidden_dropout_prob = rs->dropout;
    bc.attention_probs_dropout_prob = rs->dropout;
    tfm_config c = bert_tfm_config(&bc);
    c.causal = rs->causal;
    c.norm_kind = rs->norm;
    c.bn_momentum = 0.1f;
    return c;
}

/* Build the model of a run (base: the encoder's and pooler's values to
 * start from, or NULL: random), freeze what the method freezes, add its
 * trainable parts. T: the longest real input. */
static tb_status model_init(world *w, model *md, const run_spec *rs, const cls_set *set,
                            size_t T, const float *base, size_t base_entries, tb_rng *rng)
{
    tb_ctx *ctx = &w->ctx;
    const opts *o = w->o;
    memset(md, 0, sizeof *md);
    tfm_lora_init(&md->lora);
    md->method = rs->method;
    const tfm_config cfg = run_tfm_config(w, rs, set->vocab_size);
    TRY(tfm_config_check(ctx, &cfg));
    md->n_virtual = rs->method == M_PTUNING ? (size_t)o->n_virtual : 0;
    if (T + md->n_virtual > cfg.max_positions)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "%zu tokens%s do not fit the %zu positions (--positions)", T,
                                md->n_virtual ? " and the virtual tokens" : "",
                                cfg.max_positions);
    const size_t C = cfg.d_model;
    TRY(tfm_init(ctx, &md->m, &cfg, rng));
    TRY(bert_cls_init(ctx, &md->h, C, set->n_classes, w->max_b, rng));
    /* BertForSequenceClassification's dropout on the pooled output:
     * classifier_dropout None, so hidden_dropout_prob (--dropout). */
    TRY(bert_cls_set_dropout(ctx, &md->h, bert_cls_dropout_p(-1.0f, rs->dropout)));
    TRY(tb_param_list_init(ctx, &md->base));
    TRY(tb_param_list_init(ctx, &md->train));
    TRY(tfm_params(ctx, &md->m, "bert.", &md->base));
    TRY(tb_linear_params(ctx, &md->h.pooler, "bert.pooler.dense", &md->base));
    if (base)
        list_set(&md->base, base, base_entries);
    md->hin = malloc(w->max_b * C * sizeof(float));
    md->dh = malloc(w->max_b * C * sizeof(float));
    if (!md->hin || !md->dh)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "no memory for the head's buffers");
    if (rs->method == M_FULL) {
        TRY(tfm_params(ctx, &md->m, "bert.", &md->train));
        TRY(bert_cls_params(ctx, &md->h, "bert.", &md->train));
    } else {
        /* The frozen base: no gradient buffers, no optimizer state. */
        TRY(tfm_freeze(ctx, &md->m, &md->kept));
        bert_cls_freeze_pooler(&md->h);
    }
    if (rs->method == M_LORA) {
        static const char *const targets[] = {"query", "value"};
        tfm_lora_spec spec;
        memset(&spec, 0, sizeof spec);
        spec.targets = targets, spec.n_targets = 2;
        spec.config = tb_lora_config_default((size_t)o->rank);
        spec.config.alpha = (float)o->alpha;
        spec.config.dropout = (float)o->lora_dropout;
        TRY(tfm_lora_add(ctx, &md->lora, &md->m, "default", &spec, rng));
        TRY(tfm_lora_params(ctx, &md->lora, "bert.", &md->train));
        TRY(tb_linear_params(ctx, &md->h.classifier, "classifier", &md->train));
    }
    if (rs->method == M_PTUNING) {
        tb_ptuning_config pc;
        memset(&pc, 0, sizeof pc);
        pc.num_virtual_tokens = md->n_virtual;
        pc.token_dim = C;
        pc.encoder_hidden_size = o->enc_hidden ? (size_t)o->enc_hidden : C;
        pc.encoder_num_layers = 2;
        pc.type = strcmp(o->encoder, "lstm") == 0 ? TB_PTUNING_LSTM : TB_PTUNING_MLP;
        TRY(tb_ptuning_init(ctx, &md->enc, &pc, rng));
        TRY(tb_ptuning_params(ctx, &md->enc, PTIN_PEFT_PREFIX, &md->train));
        TRY(tb_linear_params(ctx, &md->h.classifier, "classifier", &md->train));
        const ptin_template tpl = ptin_prefix(md->n_virtual);
        TRY(ptin_init(ctx, &md->p, &tpl, C, w->max_b, T, &md->enc));
    }
    return tfm_acts_init(ctx, &md->a, &md->m, w->max_b, T + md->n_virtual);
}

/* Forward of the batch in w (B rows of T positions); with labels the mean
 * cross-entropy in *loss. Logits in md->h.logits. */
static tb_status model_forward(world *w, model *md, const cls_set *set, tb_mode mode,
                               tb_rng *rng, size_t B, size_t T, int with_labels, float *loss)
{
    tb_ctx *ctx = &w->ctx;
    const tfm_input *in;
    tfm_input plain = {B, T, w->ids, NULL, NULL, w->valid};
    if (md->method == M_PTUNING) {
        TRY(ptin_encode(ctx, &md->p, &md->enc, mode, rng));
        TRY(ptin_build_encoder(ctx, &md->p, &md->m, md->p.prompts, w->ids, NULL, w->valid, NULL,
                               B, T));
        in = &md->p.in;
    } else
        in = &plain;
    TRY(tfm_forward(ctx, &md->m, &md->a, mode, rng, in));
    const size_t C = md->m.cfg.d_model, Tt = in->seq;
    for (size_t b = 0; b < B; b++) {
        const size_t r = set->read_cls ? 0 : w->read[b] + md->n_virtual;
        memcpy(md->hin + b * C, md->a.out + (b * Tt + r) * C, C * sizeof(float));
    }
    return bert_cls_forward_mode(ctx, &md->h, mode, rng, md->hin, B, 1,
                                 with_labels ? w->labels : NULL, loss);
}

/* Backward of the last forward; dloss scales the loss's gradient (1/K for
 * one of a step's K micro-batches). */
static tb_status model_backward(world *w, model *md, const cls_set *set, size_t B, float dloss)
{
    tb_ctx *ctx = &w->ctx;
    TRY(bert_cls_backward(ctx, &md->h, dloss, md->dh));
    const size_t C = md->m.cfg.d_model, Tt = md->a.t;
    float *dout = md->a.dt1; /* tfm_backward() reads it before using it as scratch */
    memset(dout, 0, B * Tt * C * sizeof(float));
    for (size_t b = 0; b < B; b++) {
        const size_t r = set->read_cls ? 0 : w->read[b] + md->n_virtual;
        memcpy(dout + (b * Tt + r) * C, md->dh + b * C, C * sizeof(float));
    }
    if (md->method != M_PTUNING)
        return tfm_backward(ctx, &md->m, &md->a, dout, NULL);
    TRY(tfm_backward(ctx, &md->m, &md->a, dout, md->p.d_embeds));
    return ptin_backward(ctx, &md->p, &md->enc);
}

/* Copy examples idx[0..B) of set into the batch buffers; returns the
 * batch's positions: its longest example (variable-length batches). */
static size_t load_batch(world *w, const cls_set *set, const size_t *idx, size_t B)
{
    size_t T = 3;
    for (size_t b = 0; b < B; b++)
        T = set->len[idx[b]] > T ? set->len[idx[b]] : T;
    for (size_t b = 0; b < B; b++) {
        const size_t i = idx[b];
        memcpy(w->ids + b * T, set->ids + i * set->T, T * sizeof(int32_t));
        memcpy(w->valid + b * T, set->valid + i * set->T, T);
        w->labels[b] = set->label[i];
        w->read[b] = set->read[i];
    }
    return T;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const cls_set *sort_set;

static int cmp_by_len(const void *a, const void *b)
{
    const size_t x = *(const size_t *)a, y = *(const size_t *)b;
    const size_t lx = sort_set->len[x], ly = sort_set->len[y];
    return lx != ly ? (lx > ly) - (lx < ly) : (x > y) - (x < y);
}

/* Accuracy etc. over the eval indices, in mode. The batches are taken in
 * order of length (length bucketing, as evaluation loops do to save
 * padding): in inference mode every row is computed on its own, so the
 * order changes nothing; in training mode BatchNorm's batch statistics
 * then come from sequences of similar length, unlike training's. */
static tb_status evaluate(world *w, model *md, const cls_set *set, const size_t *idx0, size_t n,
                          size_t eb, tb_mode mode, tb_rng *rng, cls_metrics *met)
{
    cls_metrics_init(met, set->n_classes);
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx)
        return tb_ctx_set_error(&w->ctx, TB_ERR_NO_MEMORY, "no memory for the evaluation order");
    memcpy(idx, idx0, n * sizeof *idx);
    sort_set = set;
    qsort(idx, n, sizeof *idx, cmp_by_len);
    tb_status s = TB_OK;
    const size_t K = set->n_classes;
    for (size_t s0 = 0; s == TB_OK && s0 < n; s0 += eb) {
        const size_t B = n - s0 < eb ? n - s0 : eb;
        const size_t T = load_batch(w, set, idx + s0, B);
        s = model_forward(w, md, set, mode, rng, B, T, 0, NULL);
        for (size_t b = 0; s == TB_OK && b < B; b++) {
            const float *z = md->h.logits + b * K;
            size_t best = 0;
            for (size_t k = 1; k < K; k++)
                best = z[k] > z[best] ? k : best;
            cls_metrics_add(met, w->labels[b], (int32_t)best);
        }
    }
    free(idx);
    return s;
}

/* Train and evaluate one run. base: start values of the encoder and pooler
 * (NULL: random); save_base: receives them after training (NULL: not).
 *
 * A step is --accum K micro-batches of --batch B examples, split over the
 * processes (tb_dp_split(): this rank computes red.count of them). Micro-
 * batch k of step s draws its examples and its dropout from its own stream,
 * tb_dp_rng() of the run's stream, s and k; its gradient is computed from
 * zero and scaled by 1/K; tb_dp_reducer_reduce() sums the K gradients in
 * micro-batch order on every rank. So the run is bitwise the same for any
 * number of processes (docs/data_parallel.md), one included. */
static tb_status run(world *w, const run_spec *rs, const data *d, const float *base,
                     size_t base_entries, float *save_base, result *r)
{
    tb_ctx *ctx = &w->ctx;
    const opts *o = w->o;
    const cls_set *set = &d->set;
    memset(r, 0, sizeof *r);
    model md;
    tb_adam opt;
    memset(&opt, 0, sizeof opt);
    tb_dp_reducer red;
    memset(&red, 0, sizeof red);
    /* run_rng: the micro-batches' streams come from it; eval_rng: the
     * training-mode evaluation's dropout after training. */
    tb_rng init_rng, run_rng, eval_rng;
    tb_rng_init(&init_rng, o->seed);
    tb_rng_init(&run_rng, o->seed + 1);
    tb_rng_init(&eval_rng, o->seed + 2);
    const size_t accum = (size_t)o->accum;
    size_t T = set->T > d->es->T ? set->T : d->es->T;
    double *times = malloc((rs->steps ? rs->steps : 1) * sizeof(double));
    size_t *idx = malloc(w->max_b * sizeof(size_t));
    float *losses = malloc(accum * sizeof(float));
    tb_status s =
        times && idx && losses ? TB_OK : tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "no memory");
    if (s == TB_OK)
        s = model_init(w, &md, rs, set, T, base, base_entries, &init_rng);
    if (s == TB_OK)
        s = tb_dp_reducer_init(ctx, &red, w->comm, &md.train, accum);
    if (s == TB_OK) {
        r->base_before = ex_ft_checksum(&md.base, EX_FNV_OFFSET);
        const size_t head = md.h.classifier.weight.numel + md.h.classifier.bias.numel;
        r->params = list_floats(&md.base) + head +
                    (rs->method == M_FULL ? 0 : list_floats(&md.train) - head);
        tb_adam_config oc = tb_adamw_default_config();
        oc.lr = rs->lr;
        oc.weight_decay = (float)o->wd;
        s = tb_adam_init(ctx, &opt, &md.train, &oc);
        if (s == TB_OK)
            s = tb_adam_add_group(ctx, &opt, oc.lr, 0.0f, tb_select_no_decay, NULL, NULL);
    }
    const tb_lr_schedule sched =
        tb_lr_schedule_make(TB_LR_WARMUP_COSINE, rs->steps / 10, rs->steps, 0.1f);
    const size_t B = w->max_b < d->n_train ? w->max_b : d->n_train;
    double sum = 0.0;
    size_t cnt = 0;
    if (s == TB_OK && !w->quiet)
        printf("   %8s %10s\n", "step", "loss");
    for (uint64_t step = 0; s == TB_OK && step < rs->steps; step++) {
        const double t0 = ex_seconds();
        for (size_t k = red.first; s == TB_OK && k < red.first + red.count; k++) {
            tb_rng mb; /* micro-batch k's examples and dropout */
            tb_dp_rng(&mb, &run_rng, step, k);
            for (size_t b = 0; b < B; b++)
                idx[b] = d->train[ex_rand_below(&mb, d->n_train)];
            const size_t Tb = load_batch(w, set, idx, B);
            float l;
            tb_param_list_zero_grad(&md.train);
            s = model_forward(w, &md, set, TB_MODE_TRAINING, &mb, B, Tb, 1, &l);
            if (s == TB_OK)
                s = model_backward(w, &md, set, B, 1.0f / (float)accum);
            if (s == TB_OK)
                s = tb_dp_reducer_store(ctx, &red, &md.train, k, l);
        }
        if (s == TB_OK)
            s = tb_dp_reducer_reduce(ctx, &red, &md.train, losses);
        double loss = 0.0; /* every rank sees every micro-batch's loss */
        for (size_t k = 0; s == TB_OK && k < accum; k++) {
            if (!isfinite(losses[k]))
                s = tb_ctx_set_error(ctx, TB_ERR_NON_FINITE, "step %llu: loss %g",
                                     (unsigned long long)step + 1, (double)losses[k]);
            loss += losses[k] / (double)accum;
        }
        double norm;
        if (s == TB_OK)
            s = tb_clip_grad_norm(ctx, &md.train, CLIP_NORM, &norm);
        if (s == TB_OK)
            s = tb_adam_step(ctx, &opt, tb_lr_factor(&sched, opt.step));
        times[step] = ex_seconds() - t0;
        if (step == 0)
            r->loss_first = loss;
        sum += loss, cnt++;
        if (s == TB_OK && ((step + 1) % o->log_every == 0 || step + 1 == rs->steps)) {
            if (!w->quiet)
                printf("   %8llu %10.4f\n", (unsigned long long)step + 1, sum / (double)cnt);
            r->loss_last = sum / (double)cnt;
            sum = 0.0, cnt = 0;
        }
    }
    if (s == TB_OK) {
        qsort(times, rs->steps, sizeof(double), cmp_double);
        r->ms_step = 1000.0 * times[rs->steps / 2];
        r->trainable = tb_param_list_numel(&md.train, 1);
        size_t values = 0, grads = 0;
        ex_ft_list_bytes(&md.train, &values, &grads);
        r->kept_bytes = md.kept;
        r->grad_bytes = grads + md.kept;
        r->adam_bytes = tb_adam_state_bytes(&opt);
        s = evaluate(w, &md, d->es, d->eval, d->n_eval, w->max_b, TB_MODE_INFERENCE, NULL,
                     &r->met);
        r->acc = cls_metrics_accuracy(&r->met);
        r->macro_f1 = cls_metrics_macro_f1(&r->met);
    }
    if (s == TB_OK) {
        r->base_after = ex_ft_checksum(&md.base, EX_FNV_OFFSET);
        r->trained = ex_ft_checksum(&md.train, EX_FNV_OFFSET);
    }
    if (s == TB_OK && save_base)
        list_get(&md.base, save_base);
    if (s == TB_OK && rs->train_mode_eval) {
        /* Training mode: BatchNorm normalises with each batch's own statistics (and
         * moves its running ones, which nothing reads after this). */
        cls_metrics tm;
        s = evaluate(w, &md, d->es, d->eval, d->n_eval, w->max_b, TB_MODE_TRAINING, &eval_rng,
                     &tm);
        r->acc_train_mode = cls_metrics_accuracy(&tm);
        /* One sequence per batch, as a server answering one request at a time would
         * see the statistics. */
        if (s == TB_OK)
            s = evaluate(w, &md, d->es, d->eval, d->n_eval, 1, TB_MODE_TRAINING, &eval_rng, &tm);
        r->acc_train_mode1 = cls_metrics_accuracy(&tm);
    }
    tb_dp_reducer_free(&red);
    tb_adam_free(&opt);
    model_free(&md);
    free(times), free(idx), free(losses);
    return s;
}

/* Floats of the base (encoder + pooler) of the configuration a run builds. */
static tb_status base_floats(world *w, const run_spec *rs, const cls_set *set, size_t *n)
{
    const tfm_config cfg = run_tfm_config(w, rs, set->vocab_size);
    TRY(tfm_config_check(&w->ctx, &cfg));
    size_t count = 0, total = 0;
    tfm_param_spec *specs = NULL;
    TRY(tfm_param_specs(&w->ctx, &cfg, "bert.", &specs, &count));
    for (size_t i = 0; i < count; i++)
        total += specs[i].shape[0] * (specs[i].ndim > 1 ? specs[i].shape[1] : 1);
    free(specs);
    *n = total + cfg.d_model * cfg.d_model + cfg.d_model;
    return TB_OK;
}

/* ---- data -------------------------------------------------------------------------------- */

static void data_free(data *d)
{
    cls_set_free(&d->set);
    cls_set_free(&d->eval_set);
    free(d->train), free(d->eval);
    memset(d, 0, sizeof *d);
}

/* Indices of a whole set. */
static int all_indices(size_t n, size_t **idx)
{
    *idx = malloc((n ? n : 1) * sizeof **idx);
    for (size_t i = 0; *idx && i < n; i++)
        (*idx)[i] = i;
    return *idx != NULL;
}

/* How texts become ids: a given tokeniser (bytes for bert_pretrain's
 * checkpoints, WordPiece for --vocab and --model-dir), or (fn NULL) the
 * word vocabulary of the training split. */
typedef struct text_tok {
    cls_tokenize_fn fn;
    void *user;
    cls_special sp;
    size_t vocab_size;
    const char *what;
    tb_wordpiece wp;
    tb_ctx *ctx;
} text_tok;

static int wp_tokenize(void *user, const char *text, size_t len, int32_t *ids, size_t cap,
                       size_t *n)
{
    text_tok *tk = user;
    return !ex_failed(tk->ctx, tb_wordpiece_tokenize(tk->ctx, &tk->wp, text, len, ids, cap, n),
                      "WordPiece");
}

/* tk from a loaded tokenizer: its special ids (every one must exist). */
static int wp_use(text_tok *tk, tb_ctx *ctx, const char *what)
{
    const tb_wordpiece *wp = &tk->wp;
    if (wp->pad_id < 0 || wp->unk_id < 0 || wp->cls_id < 0 || wp->sep_id < 0) {
        fprintf(stderr, "error: the vocabulary of %s lacks [PAD], [UNK], [CLS] or [SEP]\n", what);
        return 0;
    }
    tk->ctx = ctx, tk->fn = wp_tokenize, tk->user = tk;
    tk->sp = (cls_special){wp->pad_id, wp->unk_id, wp->cls_id, wp->sep_id};
    tk->vocab_size = wp->vocab_size;
    tk->what = "WordPiece";
    return 1;
}

/* The texts' data: split (or --eval-dir), the vocabulary (from the
 * training part, unless tk gives a tokeniser), both tokenised to T
 * positions. */
static int text_data(const opts *o, cls_texts *t, cls_texts *et, size_t T, size_t positions,
                     const text_tok *tk, data *d)
{
    /* Split on a throw-away set of labels only (no tokens yet). */
    cls_set lab;
    memset(&lab, 0, sizeof lab);
    lab.n = t->n, lab.n_classes = t->n_classes, lab.label = t->label;
    d->train = malloc(t->n * sizeof(size_t)), d->eval = malloc(t->n * sizeof(size_t));
    if (!d->train || !d->eval) {
        fprintf(stderr, "error: out of memory\n");
        return 0;
    }
    if (et->n) {
        for (size_t i = 0; i < t->n; i++)
            d->train[i] = i;
        d->n_train = t->n, d->n_eval = 0;
    } else if (!cls_split(&lab, (unsigned)o->eval_percent, o->seed + 7, d->train, &d->n_train,
                          d->eval, &d->n_eval)) {
        fprintf(stderr, "error: out of memory\n");
        return 0;
    }
    if (d->n_train == 0 || (!et->n && d->n_eval == 0)) {
        fprintf(stderr, "error: %zu examples leave %zu for training and %zu for evaluation "
                        "(--eval-percent %llu)\n",
                t->n, d->n_train, d->n_eval, (unsigned long long)o->eval_percent);
        return 0;
    }
    cls_vocab v;
    memset(&v, 0, sizeof v);
    cls_tokenize_fn fn = tk->fn;
    void *user = tk->user;
    const cls_special *sp = &tk->sp;
    size_t vocab = tk->vocab_size;
    if (!fn) {
        if (!cls_vocab_build(&v, t, d->train, d->n_train, (size_t)o->max_words))
            return 0;
        fn = cls_vocab_tokenize, user = &v, sp = &cls_special_default;
        vocab = cls_vocab_size(&v);
    }
    int ok = cls_set_from_texts(&d->set, t, fn, user, sp, vocab, T);
    if (ok && et->n) {
        ok = cls_set_from_texts(&d->eval_set, et, fn, user, sp, vocab, T);
        free(d->eval);
        ok = ok && all_indices(et->n, &d->eval);
        d->n_eval = et->n;
        d->es = &d->eval_set;
    } else
        d->es = &d->set;
    if (tk->fn)
        printf("data: %zu classes, %zu training and %zu evaluation examples; %s tokens "
               "(vocabulary %zu)\n",
               t->n_classes, d->n_train, d->n_eval, tk->what, vocab);
    else
        printf("data: %zu classes, %zu training and %zu evaluation examples; word vocabulary of "
               "%zu (the training part's %llu most frequent words + 4 specials)\n",
               t->n_classes, d->n_train, d->n_eval, vocab, (unsigned long long)o->max_words);
    if (ok && (d->set.n_truncated || (et->n && d->eval_set.n_truncated)))
        printf("note: %zu examples longer than %zu tokens ([CLS] and [SEP] included) were cut to "
               "%zu (the position table holds %zu%s)\n",
               d->set.n_truncated + (et->n ? d->eval_set.n_truncated : 0), T, T, positions,
               T < positions ? ", P-tuning's virtual tokens take the rest" : "");
    cls_vocab_free(&v);
    return ok;
}

static int builtin_data(const opts *o, cls_builtin_op op, uint64_t seed, data *d)
{
    memset(d, 0, sizeof *d);
    if (!cls_set_builtin(&d->set, (size_t)o->examples, (size_t)o->classes, (size_t)o->min_len,
                         (size_t)o->max_len, op, seed))
        return 0;
    d->train = malloc(d->set.n * sizeof(size_t)), d->eval = malloc(d->set.n * sizeof(size_t));
    if (!d->train || !d->eval ||
        !cls_split(&d->set, (unsigned)o->eval_percent, seed + 7, d->train, &d->n_train, d->eval,
                   &d->n_eval)) {
        fprintf(stderr, "error: out of memory\n");
        return 0;
    }
    if (!d->n_train || !d->n_eval) {
        fprintf(stderr, "error: --examples %llu with --eval-percent %llu leaves no training or "
                        "no evaluation example\n",
                (unsigned long long)o->examples, (unsigned long long)o->eval_percent);
        return 0;
    }
    d->es = &d->set;
    return 1;
}

/* ---- printing ------------------------------------------------------------------------------ */

static void print_result(const run_spec *rs, const result *r, const cls_set *set)
{
    printf("   parameters %zu, trainable %zu; gradients %zu B + AdamW state %zu B = %.1f KiB%s\n",
           r->params, r->trainable, r->grad_bytes, r->adam_bytes,
           (double)(r->grad_bytes + r->adam_bytes) / 1024.0,
           rs->method != M_FULL ? " (the frozen encoder holds no gradient buffer)" : "");
    printf("   median step %.2f ms; training loss %.4f -> %.4f\n", r->ms_step, r->loss_first,
           r->loss_last);
    printf("   evaluation (inference mode):\n");
    cls_metrics_print(stdout, &r->met, set->classes, "     ");
    printf("   encoder + pooler checksum: %016llx before, %016llx after (%s)\n",
           (unsigned long long)r->base_before, (unsigned long long)r->base_after,
           r->base_before == r->base_after ? "bitwise unchanged" : "changed");
}

/* ---- the command line ------------------------------------------------------------------------ */

static int method_of(const char *s)
{
    for (int k = 0; k < N_METHODS; k++)
        if (strcmp(s, METHOD[k]) == 0)
            return k;
    return -1;
}

static const char SUMMARY[] =
    "Sequence classification with a BERT-style encoder and BERT's head (pooler +\n"
    "classifier), trained by full fine-tuning, LoRA (query, value) or P-tuning; accuracy,\n"
    "per-class precision/recall/F1 and the confusion matrix on a fixed evaluation split.\n"
    "\n"
    "data (default: the built-in task, 'sum across the mark', which needs both sides):\n"
    "  --data-dir DIR      one sub-folder per class, one UTF-8 file per example\n"
    "  --eval-dir DIR      evaluate on this folder (its classes must be training's)\n"
    "  --fortunes          Debian's fortunes, one class per --fortune-files file\n"
    "                      (apt-get install fortunes)\n"
    "flags:\n"
    "  --fortunes          as above\n"
    "  --compare           the three comparison tables from real runs (full vs LoRA vs\n"
    "                      P-tuning; bidirectional vs causal; LayerNorm vs BatchNorm)\n"
    "Texts longer than the position table are cut (with a note), keeping [SEP] last.";

static int parse(int argc, char **argv, opts *o)
{
    *o = (opts){.steps = 300, .batch = 32, .accum = 1, .layers = 2, .heads = 4, .width = 64, .ff = 128,
                .positions = 64, .seed = 1, .threads = 0, .rank = 8, .n_virtual = 8,
                .enc_hidden = 0, .classes = 3, .examples = 3000, .min_len = 8, .max_len = 16,
                .max_words = 2000, .max_per_class = 300, .eval_percent = 20, .log_every = 50,
                .base_steps = 600, .lr = 5e-3, .lr_peft = 1e-2, .lr_bn = 2e-3, .lr_base = 2e-3, .alpha = 16, .lora_dropout = 0.0,
                .dropout = 0.0, .wd = 0.01, .method = "full", .init = "random",
                .model_dir = NULL, .data_dir = NULL, .eval_dir = NULL, .vocab = NULL,
                .fortune_dir = DEFAULT_FORTUNE_DIR, .fortune_files = "computers,food,startrek",
                .attention = "bidirectional", .norm = "layer", .encoder = "mlp"};
    /* The two flags take no value: taken out before the options are parsed. */
    char **args = malloc((size_t)(argc + 1) * sizeof *args);
    if (!args)
        return EX_EXIT_FAILURE;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "--fortunes") == 0)
            o->fortunes = 1;
        else if (i > 0 && strcmp(argv[i], "--compare") == 0)
            o->compare = 1;
        else
            args[n++] = argv[i];
    }
    args[n] = NULL;
    const ex_opt op[] = {
        {"steps", "N", "AdamW steps", 1, 1000000, &o->steps},
        {"batch", "B", "examples per micro-batch (and per evaluation batch)", 1, 4096,
         &o->batch},
        {"accum", "K", "micro-batches per step (a step sees K x B examples; split over the "
                       "processes of an MPI job)",
         1, 4096, &o->accum},
        {"layers", "N", "encoder layers", 1, 24, &o->layers},
        {"heads", "N", "attention heads (must divide --width)", 1, 64, &o->heads},
        {"width", "C", "hidden size", 8, 1024, &o->width},
        {"ff", "F", "intermediate size", 8, 4096, &o->ff},
        {"positions", "N", "position table (max_position_embeddings)", 8, 4096, &o->positions},
        {"seed", "N", "seed of the data, the split, the weights and the batches", 0,
         UINT64_MAX - 16, &o->seed},
        EX_OPT_THREADS(o->threads),
        {"lora-rank", "R", "LoRA rank", 1, 256, &o->rank},
        {"virtual", "N", "P-tuning's virtual tokens", 1, 256, &o->n_virtual},
        {"encoder-hidden", "H", "P-tuning's encoder hidden size (0: the width)", 0, 4096,
         &o->enc_hidden},
        {"classes", "K", "built-in task: classes", 2, 16, &o->classes},
        {"examples", "N", "built-in task: examples", 10, 10000000, &o->examples},
        {"min-len", "N", "built-in task: shortest sequence", 6, 4096, &o->min_len},
        {"max-len", "N", "built-in task: longest sequence", 6, 4096, &o->max_len},
        {"max-words", "N", "texts: words in the vocabulary", 1, 1000000, &o->max_words},
        {"max-per-class", "N", "fortunes: examples per class (0: all)", 0, 1000000,
         &o->max_per_class},
        {"eval-percent", "P", "held out for evaluation, per class", 1, 90, &o->eval_percent},
        {"log-every", "N", "steps between loss lines", 1, 1000000, &o->log_every},
        {"base-steps", "N", "--compare: steps of the base model LoRA and P-tuning start from",
         1, 1000000, &o->base_steps},
    };
    const ex_xopt xo[] = {
        {"method", "M", "full, lora or ptuning", NULL, &o->method, 0, 0},
        {"init", "I", "random, or a pre-trained checkpoint FILE", NULL, &o->init, 0, 0},
        {"model-dir", "DIR", "a BERT model folder (config.json, model.safetensors, vocab.txt)",
         NULL, &o->model_dir, 0, 0},
        {"data-dir", "DIR", "one sub-folder per class, one file per example", NULL,
         &o->data_dir, 0, 0},
        {"eval-dir", "DIR", "evaluation folder of the same form", NULL, &o->eval_dir, 0, 0},
        {"vocab", "FILE", "a WordPiece vocab.txt for the texts", NULL, &o->vocab, 0, 0},
        {"fortune-dir", "DIR", "where the fortune files are", NULL, &o->fortune_dir, 0, 0},
        {"fortune-files", "LIST", "fortune files, one class each", NULL, &o->fortune_files, 0,
         0},
        {"attention", "A", "bidirectional or causal", NULL, &o->attention, 0, 0},
        {"norm", "N", "layer (LayerNorm) or batch (BatchNorm)", NULL, &o->norm, 0, 0},
        {"encoder", "E", "P-tuning's prompt encoder: mlp or lstm", NULL, &o->encoder, 0, 0},
        {"lr", "X", "peak learning rate of full fine-tuning", &o->lr, NULL, 1e-6, 1.0},
        {"lr-peft", "X", "peak learning rate of LoRA and P-tuning", &o->lr_peft, NULL, 1e-6,
         1.0},
        {"lr-bn", "X", "--compare: peak learning rate of table (iii)'s two runs", &o->lr_bn, NULL,
         1e-6, 1.0},
        {"lr-base", "X", "--compare: peak learning rate of the base model's training", &o->lr_base,
         NULL, 1e-6, 1.0},
        {"lora-alpha", "X", "LoRA alpha", &o->alpha, NULL, 1e-3, 1e4},
        {"lora-dropout", "X", "LoRA dropout", &o->lora_dropout, NULL, 0.0, 0.9},
        {"dropout", "X", "hidden and attention dropout", &o->dropout, NULL, 0.0, 0.9},
        {"weight-decay", "X", "AdamW weight decay (not on biases and norms)", &o->wd, NULL, 0.0,
         1.0},
    };
    int rc = ex_parse_args_ex(n, args, SUMMARY, op, sizeof op / sizeof op[0], xo,
                              sizeof xo / sizeof xo[0]);
    free(args);
    if (rc >= 0)
        return rc;
    const char *prog = "bert_classify";
    ex_shown sv;
    if (method_of(o->method) < 0) {
        fprintf(stderr, "%s: --method: '%s' is not full, lora or ptuning\n", prog,
                ex_show(&sv, o->method));
        return EX_EXIT_USAGE;
    }
    if (strcmp(o->attention, "bidirectional") && strcmp(o->attention, "causal")) {
        fprintf(stderr, "%s: --attention: '%s' is not bidirectional or causal\n", prog,
                ex_show(&sv, o->attention));
        return EX_EXIT_USAGE;
    }
    if (strcmp(o->norm, "layer") && strcmp(o->norm, "batch")) {
        fprintf(stderr, "%s: --norm: '%s' is not layer or batch\n", prog, ex_show(&sv, o->norm));
        return EX_EXIT_USAGE;
    }
    if (strcmp(o->encoder, "mlp") && strcmp(o->encoder, "lstm")) {
        fprintf(stderr, "%s: --encoder: '%s' is not mlp or lstm\n", prog,
                ex_show(&sv, o->encoder));
        return EX_EXIT_USAGE;
    }
    if ((o->data_dir != NULL) + o->fortunes > 1) {
        fprintf(stderr, "%s: --data-dir and --fortunes exclude each other\n", prog);
        return EX_EXIT_USAGE;
    }
    if (o->eval_dir && !o->data_dir) {
        fprintf(stderr, "%s: --eval-dir needs --data-dir\n", prog);
        return EX_EXIT_USAGE;
    }
    if (o->min_len > o->max_len) {
        fprintf(stderr, "%s: --min-len %llu is above --max-len %llu\n", prog,
                (unsigned long long)o->min_len, (unsigned long long)o->max_len);
        return EX_EXIT_USAGE;
    }
    const int init_file = strcmp(o->init, "random") != 0;
    if (init_file && o->model_dir) {
        fprintf(stderr, "%s: --init FILE and --model-dir exclude each other\n", prog);
        return EX_EXIT_USAGE;
    }
    if ((init_file || o->model_dir) && !o->data_dir && !o->fortunes) {
        fprintf(stderr, "%s: a pre-trained encoder (--init FILE, --model-dir) needs texts "
                        "(--data-dir or --fortunes): the built-in task has its own vocabulary\n",
                prog);
        return EX_EXIT_USAGE;
    }
    if (o->model_dir && o->vocab) {
        fprintf(stderr, "%s: --model-dir brings its own vocab.txt; --vocab is for the other "
                        "starts\n",
                prog);
        return EX_EXIT_USAGE;
    }
    return -1;
}

/* ---- --compare ------------------------------------------------------------------------------ */

static int compare(world *w, const opts *o, data *d)
{
    tb_ctx *ctx = &w->ctx;
    const float lr = (float)o->lr, lrp = (float)o->lr_peft;
    result r[N_METHODS], causal, bi, ln, bn;
    w->quiet = 1;
    const int builtin = !o->data_dir && !o->fortunes;
    /* The base table (i)'s three methods start from: a pre-trained encoder
     * when one is given (--init, --model-dir); else on the built-in task
     * the encoder and pooler of a full fine-tuning run on another labelling
     * of the same kind of sequences ((a - b) mod K); else (texts) the
     * random encoder (said in the table). Tables (ii) and (iii) compare
     * architectures and always start from random weights. */
    /* The base trains at its own learning rate, for longer: the difference
     * task's position-dependent rule is harder than the sum's, and at full
     * fine-tuning's 5e-3 for 300 steps the base reached 0.9 on 1 of 8 seeds
     * (most stalled near chance); at 2e-3 for 600 steps 5 of 6 reached
     * >= 0.998 and the sixth 0.85. */
    const run_spec base_rs = {M_FULL, 0, TFM_LAYERNORM, (float)o->dropout, o->base_steps,
                              (float)o->lr_base, 0, "base"};
    size_t nb = 0, base_entries = 0;
    float *base = NULL;
    if (ex_failed(ctx, base_floats(w, &base_rs, &d->set, &nb), "the base model"))
        return EX_EXIT_FAILURE;
    if (builtin && !w->start) {
        base = malloc(nb * sizeof(float));
        data bd;
        if (!base || !builtin_data(o, CLS_BUILTIN_DIFF, o->seed + 100, &bd)) {
            free(base);
            return EX_EXIT_FAILURE;
        }
        result br;
        printf("base model: full fine-tuning on 'difference across the mark' ((a - b) mod %llu, "
               "other sequences), %llu steps at lr %g ...\n",
               (unsigned long long)o->classes, (unsigned long long)o->base_steps, o->lr_base);
        fflush(stdout);
        const int bad =
            ex_failed(ctx, run(w, &base_rs, &bd, NULL, 0, base, &br), "the base model");
        data_free(&bd);
        if (bad) {
            free(base);
            return EX_EXIT_FAILURE;
        }
        printf("   its accuracy on its own task: %.4f\n\n", br.acc);
        base_entries = (size_t)-1;
    }
    const float *b0 = w->start ? w->start : base;
    if (w->start)
        base_entries = w->start_entries;
    for (int k = 0; k < N_METHODS; k++) {
        const run_spec rs = {k, 0, TFM_LAYERNORM, (float)o->dropout, o->steps,
                             k == M_FULL ? lr : lrp, 0, METHOD_LABEL[k]};
        printf("(i) %s ...\n", METHOD_LABEL[k]);
        fflush(stdout);
        if (ex_failed(ctx, run(w, &rs, d, b0, base_entries, NULL, &r[k]), METHOD_LABEL[k])) {
            free(base);
            return EX_EXIT_FAILURE;
        }
    }
    free(base);
    const run_spec bi_rs = {M_FULL, 0, TFM_LAYERNORM, 0.0f, o->steps, lr, 1, "bidirectional"};
    const run_spec ca_rs = {M_FULL, 1, TFM_LAYERNORM, 0.0f, o->steps, lr, 1, "causal"};
    /* Table (iii) at its own learning rate: the post-norm BatchNorm encoder
     * does not train at full fine-tuning's default (5e-3) here. */
    const float lrb = (float)o->lr_bn;
    const run_spec ln_rs = {M_FULL, 0, TFM_LAYERNORM, 0.0f, o->steps, lrb, 1, "layernorm"};
    const run_spec bn_rs = {M_FULL, 0, TFM_BATCHNORM, 0.0f, o->steps, lrb, 1, "batchnorm"};
    printf("(ii) bidirectional, causal ...\n");
    fflush(stdout);
    if (ex_failed(ctx, run(w, &bi_rs, d, NULL, 0, NULL, &bi), "bidirectional") ||
        ex_failed(ctx, run(w, &ca_rs, d, NULL, 0, NULL, &causal), "causal"))
        return EX_EXIT_FAILURE;
    printf("(iii) LayerNorm, BatchNorm ...\n");
    fflush(stdout);
    if (ex_failed(ctx, run(w, &ln_rs, d, NULL, 0, NULL, &ln), "layernorm") ||
        ex_failed(ctx, run(w, &bn_rs, d, NULL, 0, NULL, &bn), "batchnorm"))
        return EX_EXIT_FAILURE;
    const double chance = 1.0 / (double)d->set.n_classes;

    printf("\n(i) full fine-tuning vs LoRA vs P-tuning, %llu steps each, from %s\n",
           (unsigned long long)o->steps,
           w->start ? w->start_name
           : builtin ? "the base model (encoder + pooler; a new classifier)"
                     : "the same random encoder (texts have no base model here)");
    printf("   %-22s %10s %10s %12s %12s %9s %9s %9s\n", "method", "params", "trainable",
           "grad bytes", "Adam bytes", "ms/step", "accuracy", "macro F1");
    for (int k = 0; k < N_METHODS; k++)
        printf("   %-22s %10zu %10zu %12zu %12zu %9.2f %9.4f %9.4f\n", METHOD_LABEL[k],
               r[k].params, r[k].trainable, r[k].grad_bytes, r[k].adam_bytes, r[k].ms_step,
               r[k].acc, r[k].macro_f1);
    printf("   LoRA: rank %llu, alpha %g on every query and value; P-tuning: %llu virtual "
           "tokens, %s encoder;\n   frozen encoder + pooler bitwise unchanged: LoRA %s, "
           "P-tuning %s\n",
           (unsigned long long)o->rank, o->alpha, (unsigned long long)o->n_virtual, o->encoder,
           r[M_LORA].base_before == r[M_LORA].base_after ? "yes" : "NO",
           r[M_PTUNING].base_before == r[M_PTUNING].base_after ? "yes" : "NO");

    printf("\n(ii) bidirectional encoder vs causal stack of the same size, full fine-tuning from "
           "random, %llu steps\n",
           (unsigned long long)o->steps);
    printf("   %-22s %10s %12s %12s\n", "attention", "params", "accuracy", "vs chance");
    printf("   %-22s %10zu %12.4f %+12.4f\n", "bidirectional", bi.params, bi.acc, bi.acc - chance);
    printf("   %-22s %10zu %12.4f %+12.4f\n", "causal", causal.params, causal.acc,
           causal.acc - chance);
    printf("   chance %.4f; %s\n", chance,
           builtin ? "the label needs the digit right of the mark, which a causal model cannot "
                     "see there"
                   : "on texts the head reads [CLS] at position 0, which a causal model sees "
                     "alone");

    printf("\n(iii) LayerNorm vs BatchNorm encoder on variable-length batches (padding masked), "
           "%llu steps, lr %g\n",
           (unsigned long long)o->steps, o->lr_bn);
    printf("   %-14s %12s %16s %12s %14s %14s\n", "norm", "eval mode", "training mode",
           "gap", "train, B = 1", "gap, B = 1");
    const result *nr[2] = {&ln, &bn};
    for (int k = 0; k < 2; k++)
        printf("   %-14s %12.4f %16.4f %+12.4f %14.4f %+14.4f\n", k ? "BatchNorm" : "LayerNorm",
               nr[k]->acc, nr[k]->acc_train_mode, nr[k]->acc - nr[k]->acc_train_mode,
               nr[k]->acc_train_mode1, nr[k]->acc - nr[k]->acc_train_mode1);
    printf("   accuracy on the evaluation split, batches of %llu in order of length: eval mode "
           "normalises with\n   the running statistics, training mode with each batch's own "
           "(B = 1: one sequence's);\n   gap = eval mode - training mode. LayerNorm has no batch "
           "statistics (dropout 0 here)\n",
           (unsigned long long)o->batch);
    printf("\nfinal: compare=1");
    for (int k = 0; k < N_METHODS; k++)
        printf(" %s_trainable=%zu %s_grad=%zu %s_adam=%zu %s_acc=%.6f %s_frozen=%d", METHOD[k],
               r[k].trainable, METHOD[k], r[k].grad_bytes, METHOD[k], r[k].adam_bytes, METHOD[k],
               r[k].acc, METHOD[k], r[k].base_before == r[k].base_after);
    printf(" bi_acc=%.6f causal_acc=%.6f chance=%.6f ln_train=%.6f ln_train1=%.6f ln_eval=%.6f "
           "bn_train=%.6f bn_train1=%.6f bn_eval=%.6f\n",
           bi.acc, causal.acc, chance, ln.acc_train_mode, ln.acc_train_mode1, ln.acc,
           bn.acc_train_mode, bn.acc_train_mode1, bn.acc);
    return EX_EXIT_OK;
}

/* ---- the starting point ------------------------------------------------------------------ */

/* Keep the values of a loaded encoder's parameters (tfm_params() order) as
 * the start of every run; w->bc becomes its configuration. */
static int keep_start(world *w, tfm *m, const bert_config *cfg, const char *name)
{
    tb_param_list l;
    tb_status s = tb_param_list_init(&w->ctx, &l);
    if (s == TB_OK)
        s = tfm_params(&w->ctx, m, "bert.", &l);
    if (s == TB_OK) {
        w->start = malloc((list_floats(&l) ? list_floats(&l) : 1) * sizeof(float));
        if (!w->start)
            s = tb_ctx_set_error(&w->ctx, TB_ERR_NO_MEMORY, "no memory for the encoder");
        else
            list_get(&l, w->start), w->start_entries = l.count;
    }
    tb_param_list_free(&l);
    if (ex_failed(&w->ctx, s, "the pre-trained encoder"))
        return 0;
    w->bc = *cfg;
    w->start_name = name;
    return 1;
}

/* --init FILE or --model-dir DIR: the encoder (w->start, w->bc) and the
 * tokeniser its vocabulary needs (tk). Returns 0 after a message. */
static int load_start(world *w, const opts *o, text_tok *tk)
{
    tb_ctx *ctx = &w->ctx;
    (void)ctx, (void)tk, (void)o;
    if (o->vocab) {
        if (ex_failed(ctx, tb_wordpiece_load(ctx, &tk->wp, o->vocab, NULL), "--vocab") ||
            !wp_use(tk, ctx, o->vocab))
            return 0;
    }
    if (strcmp(o->init, "random") != 0) {
        tfm m;
        bert_config cfg;
        tb_rng rng;
        tb_rng_init(&rng, o->seed);
        if (!ex_check_regular(o->init, "checkpoint (--init)") ||
            ex_failed(ctx, bert_encoder_load(ctx, o->init, &cfg, &m, &rng), "--init"))
            return 0;
        /* Its tokeniser: bert_pretrain writes bert_pretrain.tokenizer = bytes. */
        tb_st_file f;
        const char *kind = NULL;
        char kbuf[32] = "";
        if (tb_st_open(ctx, o->init, &f) == TB_OK) {
            kind = tb_st_meta_get(&f, "bert_pretrain.tokenizer");
            if (kind)
                snprintf(kbuf, sizeof kbuf, "%s", kind);
            tb_st_close(&f);
        }
        int ok = keep_start(w, &m, &cfg, "the --init checkpoint's encoder (a new pooler and "
                                         "classifier)");
        tfm_free(&m);
        if (!ok)
            return 0;
        if (tk->fn && strcmp(kbuf, "bytes") == 0) {
            fprintf(stderr, "error: --init: the checkpoint was trained on byte tokens; --vocab "
                            "would give it other ids\n");
            return 0;
        }
        if (!tk->fn) {
            if (strcmp(kbuf, "bytes") != 0 || cfg.vocab_size < CLS_BYTE_VOCAB) {
                ex_shown sk;
                fprintf(stderr, "error: --init: the checkpoint's tokenizer is '%s', not bytes "
                                "with %d ids; give its vocabulary with --vocab\n",
                        ex_show(&sk, kbuf), CLS_BYTE_VOCAB);
                return 0;
            }
            tk->fn = cls_bytes_tokenize, tk->user = NULL, tk->sp = cls_special_default;
            tk->vocab_size = cfg.vocab_size, tk->what = "byte";
        }
    }
    if (o->model_dir) {
        bert_model bm;
        if (ex_failed(ctx, bert_model_open(ctx, &bm, o->model_dir), "--model-dir"))
            return 0;
        int ok = keep_start(w, &bm.m, &bm.cfg, "the --model-dir encoder (its pooler not loaded: "
                                               "a new pooler and classifier)");
        ok = ok && !ex_failed(ctx, bert_tokenizer_load(ctx, &bm, &tk->wp), "--model-dir") &&
             wp_use(tk, ctx, o->model_dir);
        bert_model_close(&bm);
        if (!ok)
            return 0;
    }
    if (tk->fn && tk->vocab_size > w->bc.vocab_size && w->start) {
        fprintf(stderr, "error: the tokenizer has %zu ids, the encoder's vocabulary %zu\n",
                tk->vocab_size, w->bc.vocab_size);
        return 0;
    }
    if (w->start)
        tk->vocab_size = w->bc.vocab_size; /* the embedding table's rows */
    return 1;
}

/* ---- main ---------------------------------------------------------------------------------------- */

/* The program on the processes comm names (ex_mpi.h: one, or an MPI job's). */
static int bc_main(int argc, char **argv, const tb_comm *comm)
{
    opts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0)
        return rc;
    /* What would make the processes disagree, or the result depend on
     * their number, is refused (on every rank alike). */
    if (comm->size > 1 && strcmp(o.norm, "batch") == 0) {
        fprintf(stderr, "bert_classify: --norm batch on %zu processes: BatchNorm's running "
                        "statistics would move with each process's own micro-batches only, so "
                        "they would depend on the process count; data-parallel runs take "
                        "--norm layer\n",
                comm->size);
        return EX_EXIT_USAGE;
    }
    if (comm->size > 1 && o.compare) {
        fprintf(stderr, "bert_classify: --compare runs on one process (its BatchNorm table "
                        "cannot run data-parallel); run it without mpirun\n");
        return EX_EXIT_USAGE;
    }
    world w;
    memset(&w, 0, sizeof w);
    w.o = &o;
    w.comm = comm;
    if ((rc = ex_ctx_init(&w.ctx)) >= 0)
        return rc;
    ex_apply_threads(&w.ctx, o.threads);
    tb_ctx *ctx = &w.ctx;
    bert_config bc = bert_config_base();
    bc.hidden_size = (size_t)o.width, bc.num_hidden_layers = (size_t)o.layers;
    bc.num_attention_heads = (size_t)o.heads, bc.intermediate_size = (size_t)o.ff;
    bc.max_position_embeddings = (size_t)o.positions;
    w.bc = bc;
    const double t_start = ex_seconds();
    printf("bert_classify: libtblocks %s, seed %llu, threads %d, kernels %s\n",
           tb_version_string(), (unsigned long long)o.seed, ctx->num_threads,
           ex_kernel_name(ctx));
    text_tok tk;
    memset(&tk, 0, sizeof tk);
    if (!load_start(&w, &o, &tk)) {
        tb_wordpiece_free(&tk.wp);
        free(w.start);
        return EX_EXIT_FAILURE;
    }
    const size_t positions = w.bc.max_position_embeddings;

    data d;
    memset(&d, 0, sizeof d);
    cls_texts t, et;
    memset(&t, 0, sizeof t), memset(&et, 0, sizeof et);
    int ok = 1;
    /* P-tuning's virtual tokens take n positions of the table: texts are cut to the rest
     * whenever P-tuning runs, so --compare's methods see the same tokens. */
    const int uses_pt = o.compare || method_of(o.method) == M_PTUNING;
    if (uses_pt && o.n_virtual + 3 > positions) {
        fprintf(stderr, "error: --virtual %llu leaves fewer than 3 of the %zu positions\n",
                (unsigned long long)o.n_virtual, positions);
        free(w.start);
        return EX_EXIT_USAGE;
    }
    const size_t T_text = positions - (uses_pt ? (size_t)o.n_virtual : 0);
    if (o.data_dir || o.fortunes) {
        size_t skipped = 0;
        if (o.data_dir)
            ok = cls_texts_load_dir(&t, o.data_dir, NULL, 0) &&
                 (!o.eval_dir || cls_texts_load_dir(&et, o.eval_dir, t.classes, t.n_classes));
        else {
            ok = cls_texts_load_fortunes(&t, o.fortune_dir, o.fortune_files,
                                         (size_t)o.max_per_class, o.seed + 3, &skipped);
            if (ok && skipped)
                printf("note: %zu fortunes that are not UTF-8 were skipped\n", skipped);
        }
        ok = ok && text_data(&o, &t, &et, T_text, positions, &tk, &d);
        cls_texts_free(&t), cls_texts_free(&et);
    } else {
        if (o.max_len + (uses_pt ? o.n_virtual : 0) > o.positions) {
            fprintf(stderr, "error: --max-len %llu%s exceeds the %llu positions (--positions)\n",
                    (unsigned long long)o.max_len, uses_pt ? " plus the virtual tokens" : "",
                    (unsigned long long)o.positions);
            return EX_EXIT_USAGE;
        }
        ok = builtin_data(&o, CLS_BUILTIN_SUM, o.seed, &d);
        if (ok)
            printf("data: built-in 'sum across the mark': %zu classes, %zu training and %zu "
                   "evaluation sequences of %llu..%llu tokens\n",
                   d.set.n_classes, d.n_train, d.n_eval, (unsigned long long)o.min_len,
                   (unsigned long long)o.max_len);
    }
    if (!ok) {
        data_free(&d);
        tb_wordpiece_free(&tk.wp);
        free(w.start);
        return EX_EXIT_FAILURE;
    }
    w.max_b = (size_t)o.batch;
    w.max_t = d.set.T > d.es->T ? d.set.T : d.es->T;
    w.ids = malloc(w.max_b * w.max_t * sizeof(int32_t));
    w.valid = malloc(w.max_b * w.max_t);
    w.labels = malloc(w.max_b * sizeof(int32_t));
    w.read = malloc(w.max_b * sizeof(size_t));
    if (!w.ids || !w.valid || !w.labels || !w.read) {
        fprintf(stderr, "error: out of memory\n");
        rc = EX_EXIT_FAILURE;
    } else if (o.compare) {
        printf("model: BERT encoder, %zu layers, width %zu, %zu heads, intermediate %zu, "
               "%zu positions; batch %llu\n\n",
               w.bc.num_hidden_layers, w.bc.hidden_size, w.bc.num_attention_heads,
               w.bc.intermediate_size, w.bc.max_position_embeddings,
               (unsigned long long)o.batch);
        rc = compare(&w, &o, &d);
    } else {
        const int method = method_of(o.method);
        const run_spec rs = {method,
                             strcmp(o.attention, "causal") == 0,
                             strcmp(o.norm, "batch") == 0 ? TFM_BATCHNORM : TFM_LAYERNORM,
                             (float)o.dropout,
                             o.steps,
                             (float)(method == M_FULL ? o.lr : o.lr_peft),
                             strcmp(o.norm, "batch") == 0,
                             METHOD_LABEL[method]};
        printf("model: BERT encoder (%s attention, %s), %zu layers, width %zu, %zu heads, "
               "intermediate %zu, %zu positions, from %s\n",
               o.attention, rs.norm == TFM_BATCHNORM ? "BatchNorm" : "LayerNorm",
               w.bc.num_hidden_layers, w.bc.hidden_size, w.bc.num_attention_heads,
               w.bc.intermediate_size, w.bc.max_position_embeddings,
               w.start ? w.start_name : "random weights");
        printf("%s: %llu AdamW steps of %llu x %llu examples (--accum x --batch), lr %g\n",
               METHOD_LABEL[method], (unsigned long long)o.steps, (unsigned long long)o.accum,
               (unsigned long long)o.batch, (double)rs.lr);
        size_t first = 0, count = 0;
        (void)tb_dp_split((size_t)o.accum, comm->size, 0, &first, &count);
        printf("processes: %zu (rank 0 computes %zu of the %llu micro-batches of a step; their "
               "gradients are summed in micro-batch order)\n",
               comm->size, count, (unsigned long long)o.accum);
        fflush(stdout);
        result r;
        if (ex_failed(ctx, run(&w, &rs, &d, w.start, w.start_entries, NULL, &r), METHOD_LABEL[method]))
            rc = EX_EXIT_FAILURE;
        else {
            print_result(&rs, &r, d.es);
            if (rs.train_mode_eval)
                printf("   accuracy in training mode (batch statistics): %.4f with batches of "
                       "%zu, %.4f with one sequence per batch\n",
                       r.acc_train_mode, w.max_b, r.acc_train_mode1);
            printf("final: method=%s acc=%.6f macro_f1=%.6f loss_first=%.6f loss_last=%.6f "
                   "trainable=%zu grad_bytes=%zu adam_bytes=%zu base_before=%016llx "
                   "base_after=%016llx trained=%016llx\n",
                   METHOD[method], r.acc, r.macro_f1, r.loss_first, r.loss_last, r.trainable,
                   r.grad_bytes, r.adam_bytes, (unsigned long long)r.base_before,
                   (unsigned long long)r.base_after, (unsigned long long)r.trained);
            rc = EX_EXIT_OK;
        }
    }
    if (rc == EX_EXIT_OK)
        printf("done: %.1f s\n", ex_seconds() - t_start);
    free(w.ids), free(w.valid), free(w.labels), free(w.read);
    data_free(&d);
    tb_wordpiece_free(&tk.wp);
    free(w.start);
    return rc;
}

int main(int argc, char **argv)
{
    return ex_mpi_main(argc, argv, bc_main);
}
