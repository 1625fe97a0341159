/*
 * norm_compare: why a transformer normalises with LayerNorm and not with
 * BatchNorm, measured by running both blocks.
 *
 * LayerNorm normalises each position (row) over its own C features, so a
 * position's output depends on nothing but that position. BatchNorm
 * normalises each channel over every position of the batch, so a position's
 * output depends on which other sequences share its batch, on how much
 * padding the batch carries (unless padding is masked out), on the batch
 * size, and on whether the block runs in training mode (batch statistics)
 * or inference mode (running averages of past batch statistics). The program
 * prints three measurements; every number comes from running the blocks:
 *
 *   1. One fixed sequence normalised inside different batches (other
 *      neighbours, padding with and without BatchNorm's `valid` mask,
 *      batch size 1): max |y - y_ref| over its outputs, per norm.
 *      LayerNorm's is exactly 0 in every case.
 *   2. BatchNorm's train-mode vs inference-mode output on one batch after
 *      1, 5, 20 and 100 updates of its running statistics.
 *   3. The same tiny transformer classifier trained twice on variable-length
 *      token sequences, once with LayerNorm and once with BatchNorm (masked),
 *      then evaluated in batches of 32 and one sequence at a time.
 *
 * The model of part 3, per sequence of T <= 24 tokens (padded to the
 * longest sequence of its batch; C = 32):
 *
 *   token embedding + position embedding                       (B, T, C)
 *   2 x [ x = x + Attn(Norm(x));  x = x + MLP(Norm(x)) ]       pre-norm blocks
 *   Norm -> mean over the real positions -> Linear(C, 2) -> cross-entropy
 *
 * with MLP = Linear(C, 4C), GELU (tanh form), Linear(4C, C), Norm =
 * LayerNorm or BatchNorm (given the padding mask), and Attn a single-head
 * self-attention that ignores padded keys (a key-valid mask): the shared
 * transformer stack of every example (examples/common/tfm.h), with the
 * library's Adam and learning-rate schedule (optim.h, schedule.h).
 *
 * Every number printed is bitwise identical for any --threads value; only
 * the lines starting with "train:" (thread count) and "done:" (time) differ.
 * docs/norm_compare.md explains the output.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_cli.h"
#include "ex_random.h"
#include "tblocks.h"
#include "tfm.h"
#include "ex_try.h"

#define DIM 32           /* model width C (also the channels of parts 1 and 2) */
#define HIDDEN (4 * DIM) /* MLP width */
#define N_LAYERS 2
#define N_CLASSES 2
#define MIN_LEN 4
#define MAX_LEN 24
#define BATCH 32
#define MAX_ROWS (BATCH * MAX_LEN)
#define NORM_EPS 1e-5f
#define BN_MOMENTUM 0.1f /* PyTorch's default */
#define NORM_FLAGS (TB_NORM_SCALE | TB_NORM_SHIFT)
#define GELU TB_GELU_TANH
#define ATTN_HEADS 1

/* Part 3 task: tokens PAD (padding only), A, B and three fillers; the label
 * says whether the sequence holds more A than B (ties are never generated). */
#define TOK_PAD 0
#define TOK_A 1
#define TOK_B 2
#define VOCAB 6
#define P_A 0.3
#define P_B 0.3
#define N_TRAIN 4096
#define N_VAL 512

/* Adam with a linear warm-up and a cosine decay to LR/10. */
#define LR 3e-3f
#define WARMUP_STEPS 30

/* Return the status of `call` from the enclosing function if it failed. */

/* ---- small helpers -------------------------------------------------------- */

static void *xcalloc(size_t n, size_t size, int *ok)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        *ok = 0;
    return p;
}

/* max |a - b| over n floats, and (optionally) the sum of |a - b|. */
static double max_abs_diff(const float *a, const float *b, size_t n, double *sum)
{
    double m = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        s += d;
        if (d > m)
            m = d;
    }
    if (sum)
        *sum = s;
    return m;
}

/* ---- the norm under test: LayerNorm or BatchNorm (the stack's norm kinds) -- */

typedef enum norm_kind { NORM_LAYER, NORM_BATCH } norm_kind;

static const char *norm_name(norm_kind kind)
{
    return kind == NORM_LAYER ? "LayerNorm" : "BatchNorm";
}

/* ---- parts 1 and 2: activations of variable-length sequences -------------- */

/*
 * Synthetic activations standing in for what reaches a norm inside a model:
 * x[t, c] = mu_c + o + s * sigma_c * z with per-channel mean mu_c and scale
 * sigma_c (fixed for the run) and a per-sequence offset o ~ N(0, 1) and
 * scale s ~ U(0.5, 2), z ~ N(0, 1). Sequences differ in their statistics,
 * as real ones do, so a batch's statistics depend on which sequences it holds.
 */
typedef struct feature_source {
    float mu[DIM], sigma[DIM];
} feature_source;

static void feature_source_init(feature_source *f, tb_rng *rng)
{
    for (size_t c = 0; c < DIM; c++) {
        f->mu[c] = 2.0f * tb_rng_normal(rng);
        f->sigma[c] = 0.5f + 1.5f * tb_rng_uniform(rng);
    }
}

/* One sequence of `len` positions into x (len, DIM). */
static void feature_sequence(const feature_source *f, tb_rng *rng, float *x, size_t len)
{
    float o = tb_rng_normal(rng), s = 0.5f + 1.5f * tb_rng_uniform(rng);
    for (size_t t = 0; t < len; t++)
        for (size_t c = 0; c < DIM; c++)
            x[t * DIM + c] = f->mu[c] + o + s * f->sigma[c] * tb_rng_normal(rng);
}

/* A batch of up to BATCH sequences padded with zeros to T positions. */
typedef struct feature_batch {
    size_t b, t;
    float x[MAX_ROWS * DIM];
    uint8_t valid[MAX_ROWS];
    size_t len[BATCH];
} feature_batch;

/* Put sequence `seq` (len positions) at index `slot` of a batch padded to t. */
static void feature_batch_put(feature_batch *fb, size_t slot, const float *seq, size_t len)
{
    float *dst = fb->x + slot * fb->t * DIM;
    memset(dst, 0, fb->t * DIM * sizeof(float));
    memcpy(dst, seq, len * DIM * sizeof(float));
    for (size_t p = 0; p < fb->t; p++)
        fb->valid[slot * fb->t + p] = p < len;
    fb->len[slot] = len;
}

/* ---- part 1: one sequence in different batches ------------------------------ */

#define P1_LEN 10    /* the sequence under study */
#define P1_BATCH 8   /* reference batch: it and 7 neighbours of the same length */
#define P1_SLOT 3    /* where it sits in the other batches */

/* Outputs of the sequence in slot `slot` under BatchNorm (training mode, batch
 * statistics, with or without the mask) and LayerNorm, into bn_out and
 * ln_out (P1_LEN * DIM each). */
static tb_status normalise_in_batch(tb_ctx *ctx, tb_batchnorm *bn, tb_layernorm *ln,
                                    feature_batch *fb, int use_mask, size_t slot, float *bn_out,
                                    float *ln_out, float *scratch)
{
    tb_tensor x = tb_tensor_3d(fb->x, fb->b, fb->t, DIM);
    tb_tensor y = tb_tensor_3d(scratch, fb->b, fb->t, DIM);
    const float *mine = scratch + slot * fb->t * DIM;
    TRY(tb_batchnorm_forward(ctx, bn, TB_MODE_TRAINING, &x, use_mask ? fb->valid : NULL, &y,
                             NULL, 0));
    memcpy(bn_out, mine, P1_LEN * DIM * sizeof(float));
    TRY(tb_layernorm_forward(ctx, ln, &x, &y, NULL, 0));
    memcpy(ln_out, mine, P1_LEN * DIM * sizeof(float));
    return TB_OK;
}

typedef struct invariance {
    double bn_max, ln_max; /* over every case */
} invariance;

static tb_status part1(tb_ctx *ctx, const feature_source *fs, tb_rng *rng, invariance *inv)
{
    enum { N_NEIGH = 2 * BATCH };
    tb_batchnorm bn;
    tb_layernorm ln;
    memset(&bn, 0, sizeof bn);
    memset(&ln, 0, sizeof ln);
    int ok = 1;
    float *seq = xcalloc(P1_LEN * DIM, sizeof(float), &ok);
    float *neigh = xcalloc((size_t)N_NEIGH * MAX_LEN * DIM, sizeof(float), &ok);
    size_t *neigh_len = xcalloc(N_NEIGH, sizeof(size_t), &ok);
    feature_batch *fb = xcalloc(1, sizeof *fb, &ok);
    float *scratch = xcalloc(MAX_ROWS * DIM, sizeof(float), &ok);
    float *ref_bn = xcalloc(P1_LEN * DIM, sizeof(float), &ok);
    float *ref_ln = xcalloc(P1_LEN * DIM, sizeof(float), &ok);
    float *out_bn = xcalloc(P1_LEN * DIM, sizeof(float), &ok);
    float *out_ln = xcalloc(P1_LEN * DIM, sizeof(float), &ok);
    tb_status s = ok ? TB_OK : TB_ERR_NO_MEMORY;
    if (s == TB_OK)
        s = tb_batchnorm_init(ctx, &bn, DIM, NORM_EPS, BN_MOMENTUM, NORM_FLAGS);
    if (s == TB_OK)
        s = tb_layernorm_init(ctx, &ln, DIM, NORM_EPS, NORM_FLAGS);
    if (s != TB_OK)
        goto out;

    /* The sequence, 7 neighbours of its length (reference batch), 7 other
     * neighbours of its length, then neighbours of random length 4..24. */
    feature_sequence(fs, rng, seq, P1_LEN);
    for (size_t i = 0; i < N_NEIGH; i++) {
        neigh_len[i] = i < 2 * (P1_BATCH - 1) ? P1_LEN
                                              : MIN_LEN + ex_rand_below(rng, MAX_LEN - MIN_LEN + 1);
        feature_sequence(fs, rng, neigh + i * MAX_LEN * DIM, neigh_len[i]);
    }
    inv->bn_max = inv->ln_max = 0.0;

    printf("\n1. One sequence (%d positions x %d channels) normalised inside different "
           "batches\n",
           P1_LEN, DIM);
    printf("   max |y - y_ref| over its outputs; y_ref: its batch of %d sequences of length %d\n"
           "   (no padding). BatchNorm in training mode (batch statistics).\n",
           P1_BATCH, P1_LEN);
    printf("   %-58s %11s %11s\n", "case", "BatchNorm", "LayerNorm");

    /* Reference: slot 0 of the batch {seq, neighbours 0..6}, T = 10. */
    fb->b = P1_BATCH;
    fb->t = P1_LEN;
    feature_batch_put(fb, 0, seq, P1_LEN);
    for (size_t i = 1; i < P1_BATCH; i++)
        feature_batch_put(fb, i, neigh + (i - 1) * MAX_LEN * DIM, P1_LEN);
    if ((s = normalise_in_batch(ctx, &bn, &ln, fb, 0, 0, ref_bn, ref_ln, scratch)) != TB_OK)
        goto out;

    /* Each case: batch size, padded length, mask, first neighbour, label. */
    static const struct {
        size_t b, t;
        int mask, first, random_len;
        const char *label;
    } cases[] = {
        {P1_BATCH, P1_LEN, 0, P1_BATCH - 1, 0, "7 other neighbours of the same length"},
        {P1_BATCH, MAX_LEN, 1, 0, 0, "same batch padded to T=24, padding masked"},
        {P1_BATCH, MAX_LEN, 0, 0, 0, "same batch padded to T=24, padded zeros counted"},
        {P1_BATCH, 0, 1, 2 * (P1_BATCH - 1), 1, "neighbours of length 4..24, padding masked"},
        {P1_BATCH, 0, 0, 2 * (P1_BATCH - 1), 1, "neighbours of length 4..24, zeros counted"},
        {BATCH, 0, 1, 2 * (P1_BATCH - 1), 1, "batch of 32, lengths 4..24, padding masked"},
        {1, P1_LEN, 0, 0, 0, "batch size 1"},
        {1, MAX_LEN, 1, 0, 0, "batch size 1, padded to T=24, padding masked"},
        {1, MAX_LEN, 0, 0, 0, "batch size 1, padded to T=24, zeros counted"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const size_t b = cases[k].b;
        const size_t slot = b > 1 ? P1_SLOT : 0;
        size_t t = cases[k].t ? cases[k].t : P1_LEN;
        if (cases[k].random_len)
            for (size_t i = 0; i + 1 < b; i++)
                if (neigh_len[cases[k].first + i] > t)
                    t = neigh_len[cases[k].first + i];
        fb->b = b;
        fb->t = t;
        for (size_t i = 0, n = 0; i < b; i++) {
            if (i == slot) {
                feature_batch_put(fb, i, seq, P1_LEN);
                continue;
            }
            size_t j = cases[k].first + n++;
            feature_batch_put(fb, i, neigh + j * MAX_LEN * DIM, neigh_len[j]);
        }
        s = normalise_in_batch(ctx, &bn, &ln, fb, cases[k].mask, slot, out_bn, out_ln, scratch);
        if (s != TB_OK)
            goto out;
        double dbn = max_abs_diff(out_bn, ref_bn, P1_LEN * DIM, NULL);
        double dln = max_abs_diff(out_ln, ref_ln, P1_LEN * DIM, NULL);
        printf("   %-58s %11.3g %11.3g\n", cases[k].label, dbn, dln);
        if (dbn > inv->bn_max)
            inv->bn_max = dbn;
        if (dln > inv->ln_max)
            inv->ln_max = dln;
    }
    printf("   %-58s %11.3g %11.3g\n", "largest", inv->bn_max, inv->ln_max);

out:
    tb_batchnorm_free(&bn);
    tb_layernorm_free(&ln);
    free(seq);
    free(neigh);
    free(neigh_len);
    free(fb);
    free(scratch);
    free(ref_bn);
    free(ref_ln);
    free(out_bn);
    free(out_ln);
    return s;
}

/* ---- part 2: BatchNorm's train/inference gap -------------------------------- */

/* A batch of BATCH sequences of random length 4..24, padded to the longest. */
static void random_feature_batch(const feature_source *fs, tb_rng *rng, feature_batch *fb,
                                 float *seq)
{
    size_t len[BATCH], t = 0;
    for (size_t i = 0; i < BATCH; i++) {
        len[i] = MIN_LEN + ex_rand_below(rng, MAX_LEN - MIN_LEN + 1);
        if (len[i] > t)
            t = len[i];
    }
    fb->b = BATCH;
    fb->t = t;
    for (size_t i = 0; i < BATCH; i++) {
        feature_sequence(fs, rng, seq, len[i]);
        feature_batch_put(fb, i, seq, len[i]);
    }
}

static tb_status part2(tb_ctx *ctx, const feature_source *fs, tb_rng *rng)
{
    static const int checkpoints[] = {0, 1, 5, 20, 100};
    const size_t n_check = sizeof checkpoints / sizeof checkpoints[0];
    tb_batchnorm bn, bn_probe;
    memset(&bn, 0, sizeof bn);
    memset(&bn_probe, 0, sizeof bn_probe);
    int ok = 1;
    feature_batch *probe = xcalloc(1, sizeof *probe, &ok);
    feature_batch *fb = xcalloc(1, sizeof *fb, &ok);
    float *seq = xcalloc(MAX_LEN * DIM, sizeof(float), &ok);
    float *y_train = xcalloc(MAX_ROWS * DIM, sizeof(float), &ok);
    float *y_eval = xcalloc(MAX_ROWS * DIM, sizeof(float), &ok);
    tb_status s = ok ? TB_OK : TB_ERR_NO_MEMORY;
    if (s == TB_OK)
        s = tb_batchnorm_init(ctx, &bn, DIM, NORM_EPS, BN_MOMENTUM, NORM_FLAGS);
    if (s == TB_OK) /* a second one, only for train-mode outputs */
        s = tb_batchnorm_init(ctx, &bn_probe, DIM, NORM_EPS, BN_MOMENTUM, NORM_FLAGS);
    if (s != TB_OK)
        goto out;

    printf("\n2. BatchNorm (momentum %.1f): training-mode vs inference-mode output on one "
           "batch\n",
           (double)BN_MOMENTUM);
    printf("   of %d sequences of length 4..24 (masked), after k training batches have updated\n"
           "   the running statistics; |y_train - y_eval| over the real positions.\n",
           BATCH);
    printf("   %8s %14s %14s\n", "k", "max", "mean");
    random_feature_batch(fs, rng, probe, seq);
    tb_tensor px = tb_tensor_3d(probe->x, probe->b, probe->t, DIM);
    tb_tensor pyt = tb_tensor_3d(y_train, probe->b, probe->t, DIM);
    tb_tensor pye = tb_tensor_3d(y_eval, probe->b, probe->t, DIM);
    /* Training-mode output uses only this batch's statistics (bn_probe's
     * running statistics change, but nothing reads them). */
    if ((s = tb_batchnorm_forward(ctx, &bn_probe, TB_MODE_TRAINING, &px, probe->valid, &pyt,
                                  NULL, 0)) != TB_OK)
        goto out;
    int done = 0;
    for (size_t c = 0; c < n_check; c++) {
        for (; done < checkpoints[c]; done++) { /* one update of the running statistics */
            random_feature_batch(fs, rng, fb, seq);
            tb_tensor x = tb_tensor_3d(fb->x, fb->b, fb->t, DIM);
            tb_tensor y = tb_tensor_3d(y_eval, fb->b, fb->t, DIM);
            if ((s = tb_batchnorm_forward(ctx, &bn, TB_MODE_TRAINING, &x, fb->valid, &y, NULL,
                                          0)) != TB_OK)
                goto out;
        }
        if ((s = tb_batchnorm_forward(ctx, &bn, TB_MODE_INFERENCE, &px, probe->valid, &pye,
                                      NULL, 0)) != TB_OK)
            goto out;
        double mx = 0.0, sum = 0.0;
        size_t n = 0;
        for (size_t r = 0; r < probe->b * probe->t; r++) {
            if (!probe->valid[r])
                continue;
            double part;
            double m = max_abs_diff(y_train + r * DIM, y_eval + r * DIM, DIM, &part);
            mx = m > mx ? m : mx;
            sum += part;
            n += DIM;
        }
        printf("   %8d %14.4g %14.4g\n", checkpoints[c], mx, sum / (double)n);
    }

out:
    tb_batchnorm_free(&bn);
    tb_batchnorm_free(&bn_probe);
    free(probe);
    free(fb);
    free(seq);
    free(y_train);
    free(y_eval);
    return s;
}

/* ---- part 3 data: token sequences ------------------------------------------- */

typedef struct seqset {
    size_t n;
    int32_t *tok;   /* (n, MAX_LEN); TOK_PAD after each sequence's end */
    size_t *len;    /* (n) */
    int32_t *label; /* (n): 1 if more A than B */
} seqset;

static int seqset_make(seqset *d, size_t n, tb_rng *rng)
{
    int ok = 1;
    d->n = n;
    d->tok = xcalloc(n * MAX_LEN, sizeof(int32_t), &ok);
    d->len = xcalloc(n, sizeof(size_t), &ok);
    d->label = xcalloc(n, sizeof(int32_t), &ok);
    if (!ok)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int32_t *t = d->tok + i * MAX_LEN;
        int diff;
        do { /* redraw ties */
            d->len[i] = MIN_LEN + ex_rand_below(rng, MAX_LEN - MIN_LEN + 1);
            diff = 0;
            for (size_t p = 0; p < MAX_LEN; p++) {
                if (p >= d->len[i]) {
                    t[p] = TOK_PAD;
                    continue;
                }
                double u = tb_rng_uniform(rng);
                t[p] = u < P_A ? TOK_A : u < P_A + P_B ? TOK_B : 3 + (int32_t)ex_rand_below(rng, 3);
                diff += (t[p] == TOK_A) - (t[p] == TOK_B);
            }
        } while (diff == 0);
        d->label[i] = diff > 0;
    }
    return 1;
}

static void seqset_free(seqset *d)
{
    free(d->tok);
    free(d->len);
    free(d->label);
    memset(d, 0, sizeof *d);
}

/* A padded batch: b sequences of length <= t (the longest of them). */
typedef struct batch {
    size_t b, t;
    int32_t ids[MAX_ROWS], pos[MAX_ROWS];
    uint8_t valid[MAX_ROWS];
    size_t len[BATCH];
    int32_t label[BATCH];
} batch;

static void batch_make(batch *bt, const seqset *d, const size_t *idx, size_t b)
{
    bt->b = b;
    bt->t = 0;
    for (size_t i = 0; i < b; i++)
        if (d->len[idx[i]] > bt->t)
            bt->t = d->len[idx[i]];
    for (size_t i = 0; i < b; i++) {
        for (size_t p = 0; p < bt->t; p++) {
            size_t r = i * bt->t + p;
            bt->ids[r] = d->tok[idx[i] * MAX_LEN + p];
            bt->pos[r] = (int32_t)p;
            bt->valid[r] = p < d->len[idx[i]];
        }
        bt->len[i] = d->len[idx[i]];
        bt->label[i] = d->label[idx[i]];
    }
}

/* ---- part 3 model ----------------------------------------------------------- */

/* The stack's module names in this program (it saves no checkpoints; the
 * names only label parameters). */
static const tfm_names part3_names = {
    .wte = "wte",
    .wpe = "wpe",
    .layer = "h.%zu",
    .norm_attn = "norm_1",
    .norm_mlp = "norm_2",
    .qkv = "attn.qkv",
    .attn_out = "attn.proj",
    .fc_in = "mlp.fc",
    .fc_out = "mlp.proj",
    .final_norm = "norm_f",
};

/* The shared transformer stack (examples/common/tfm.h), pre-norm and
 * bidirectional with padded keys masked, its norms LayerNorm or BatchNorm;
 * the blocks' own (PyTorch's) initialisation. */
static tfm_config part3_config(norm_kind kind)
{
    tfm_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = N_LAYERS, c.n_head = ATTN_HEADS, c.d_model = DIM, c.d_ff = HIDDEN;
    c.vocab_size = VOCAB, c.max_positions = MAX_LEN;
    c.norm_place = TFM_PRE_NORM;
    c.norm_kind = kind == NORM_LAYER ? TFM_LAYERNORM : TFM_BATCHNORM;
    c.final_norm = 1;
    c.norm_eps = NORM_EPS;
    c.bn_momentum = BN_MOMENTUM;
    c.qkv = TFM_QKV_FUSED;
    c.layout = TB_LINEAR_OUT_IN;
    c.gelu = GELU;
    c.names = &part3_names;
    return c;
}

/* The stack, then the caller's head: a mean over the real positions and
 * Linear(C, 2). */
typedef struct model {
    norm_kind kind;
    tfm t;
    tb_linear head;
    tb_param_list params;
} model;

static tb_status model_init(tb_ctx *ctx, model *m, norm_kind kind, tb_rng *rng)
{
    m->kind = kind;
    const tfm_config c = part3_config(kind);
    TRY(tb_param_list_init(ctx, &m->params));
    TRY(tfm_init(ctx, &m->t, &c, rng));
    TRY(tfm_params(ctx, &m->t, "", &m->params));
    TRY(tb_linear_init(ctx, &m->head, DIM, N_CLASSES, 1, rng));
    TRY(tb_linear_params(ctx, &m->head, "head", &m->params));
    return TB_OK;
}

static void model_free(model *m)
{
    tb_param_list_free(&m->params);
    tfm_free(&m->t);
    tb_linear_free(&m->head);
}

/* The stack's activations for up to BATCH x MAX_LEN tokens, and the head's. */
typedef struct acts {
    tfm_acts t;
    float *pooled;  /* (B, C) mean of the stack's output over the real positions */
    float *logits;  /* (B, 2) */
    void *ce_cache; /* cross-entropy cache for B rows */
    float *dout;    /* (R, C) gradient w.r.t. the stack's output */
    float *dpooled; /* (B, C) */
    float *dlogits; /* (B, 2) */
    size_t ce_cache_bytes;
    void *buffer;   /* the head's buffers */
    size_t bytes;
} acts;

static tb_status head_layout(tb_ctx *ctx, tb_arena *ar, void *arg)
{
    acts *a = arg;
    TRY(ex_take_f32(ctx, ar, BATCH * DIM, &a->pooled));
    TRY(ex_take_f32(ctx, ar, BATCH * N_CLASSES, &a->logits));
    TRY(tb_arena_alloc(ctx, ar, a->ce_cache_bytes, &a->ce_cache));
    TRY(ex_take_f32(ctx, ar, MAX_ROWS * DIM, &a->dout));
    TRY(ex_take_f32(ctx, ar, BATCH * DIM, &a->dpooled));
    return ex_take_f32(ctx, ar, BATCH * N_CLASSES, &a->dlogits);
}

static tb_status acts_init(tb_ctx *ctx, acts *a, const model *m)
{
    memset(a, 0, sizeof *a);
    TRY(tfm_acts_init(ctx, &a->t, &m->t, BATCH, MAX_LEN));
    TRY(tb_cross_entropy_cache_size(BATCH, &a->ce_cache_bytes));
    return ex_layout_alloc(ctx, head_layout, a, &a->buffer, &a->bytes);
}

static void acts_free(acts *a)
{
    tfm_acts_free(&a->t);
    free(a->buffer);
    memset(a, 0, sizeof *a);
}

/*
 * Forward on a batch; *loss receives the mean cross-entropy, a->logits the
 * logits. In TB_MODE_TRAINING BatchNorm normalises with the batch's
 * statistics (over its real positions) and updates its running statistics;
 * in TB_MODE_INFERENCE it uses the running statistics. LayerNorm does the
 * same in both modes.
 */
static tb_status model_forward(tb_ctx *ctx, model *m, acts *a, tb_mode mode, const batch *bt,
                               float *loss)
{
    const size_t B = bt->b, T = bt->t;
    const tfm_input in = {B, T, bt->ids, NULL, NULL, bt->valid};
    TRY(tfm_forward(ctx, &m->t, &a->t, mode, NULL, &in));
    /* Mean over the real positions of each sequence. */
    for (size_t i = 0; i < B; i++) {
        float *p = a->pooled + i * DIM;
        for (size_t c = 0; c < DIM; c++)
            p[c] = 0.0f;
        for (size_t t = 0; t < bt->len[i]; t++)
            for (size_t c = 0; c < DIM; c++)
                p[c] += a->t.out[(i * T + t) * DIM + c];
        for (size_t c = 0; c < DIM; c++)
            p[c] /= (float)bt->len[i];
    }
    tb_tensor pooled = tb_tensor_2d(a->pooled, B, DIM);
    tb_tensor logits = tb_tensor_2d(a->logits, B, N_CLASSES);
    TRY(tb_linear_forward(ctx, &m->head, &pooled, &logits));
    return tb_cross_entropy_forward(ctx, NULL, &logits, bt->label, B, loss, a->ce_cache,
                                    a->ce_cache_bytes);
}

/* Backward for the last model_forward() on bt. Parameter gradients are
 * added to (the caller zeroes them first). */
static tb_status model_backward(tb_ctx *ctx, model *m, acts *a, const batch *bt)
{
    const size_t B = bt->b, T = bt->t;
    tb_tensor logits = tb_tensor_2d(a->logits, B, N_CLASSES);
    tb_tensor dlogits = tb_tensor_2d(a->dlogits, B, N_CLASSES);
    tb_tensor pooled = tb_tensor_2d(a->pooled, B, DIM), dpooled = tb_tensor_2d(a->dpooled, B, DIM);
    TRY(tb_cross_entropy_backward(ctx, NULL, &logits, bt->label, B, 1.0f, a->ce_cache,
                                  a->ce_cache_bytes, &dlogits));
    TRY(tb_linear_backward(ctx, &m->head, &pooled, &dlogits, &dpooled));
    /* Pooling: each real position gets dpooled / len, padded ones 0. */
    for (size_t i = 0; i < B; i++)
        for (size_t t = 0; t < T; t++)
            for (size_t c = 0; c < DIM; c++)
                a->dout[(i * T + t) * DIM + c] =
                    t < bt->len[i] ? a->dpooled[i * DIM + c] / (float)bt->len[i] : 0.0f;
    return tfm_backward(ctx, &m->t, &a->t, a->dout, NULL);
}

/* ---- evaluation ------------------------------------------------------------- */

/*
 * Copy the values of the list's buffers (entries without a gradient:
 * BatchNorm's running statistics) to or from `store`. A training-mode forward
 * updates them, so evaluating in training mode saves and restores them.
 */
static void buffers_copy(tb_param_list *params, float *store, int save)
{
    size_t off = 0;
    for (size_t i = 0; i < params->count; i++) {
        tb_param *p = params->items[i].param;
        if (p->grad)
            continue;
        if (save)
            memcpy(store + off, p->value, p->numel * sizeof(float));
        else
            memcpy(p->value, store + off, p->numel * sizeof(float));
        off += p->numel;
    }
}

typedef struct eval_result {
    double loss, acc;
} eval_result;

/*
 * Loss and accuracy over a data set, `per_batch` sequences at a time (the
 * last batch may be smaller), in `mode`; logits (n, 2) are kept in `logits`.
 * The running statistics are left as they were.
 */
static tb_status evaluate(tb_ctx *ctx, model *m, acts *a, tb_mode mode, const seqset *d,
                          size_t per_batch, batch *bt, float *saved, float *logits,
                          eval_result *res)
{
    size_t idx[BATCH], correct = 0;
    double loss_sum = 0.0;
    buffers_copy(&m->params, saved, 1);
    for (size_t start = 0; start < d->n; start += per_batch) {
        size_t nb = d->n - start < per_batch ? d->n - start : per_batch;
        for (size_t i = 0; i < nb; i++)
            idx[i] = start + i;
        batch_make(bt, d, idx, nb);
        float loss;
        tb_status s = model_forward(ctx, m, a, mode, bt, &loss);
        if (s != TB_OK) {
            buffers_copy(&m->params, saved, 0);
            return s;
        }
        loss_sum += (double)loss * (double)nb;
        for (size_t i = 0; i < nb; i++) {
            const float *z = a->logits + i * N_CLASSES;
            correct += (z[1] > z[0]) == (bt->label[i] == 1);
            memcpy(logits + (start + i) * N_CLASSES, z, N_CLASSES * sizeof(float));
        }
    }
    buffers_copy(&m->params, saved, 0);
    res->loss = loss_sum / (double)d->n;
    res->acc = (double)correct / (double)d->n;
    return TB_OK;
}

/* ---- part 3: training both models ------------------------------------------ */

typedef struct run {
    model m;
    acts a;
    tb_adam opt;
    float *saved;      /* buffer snapshot for evaluate() */
    float *logits[4];  /* validation logits of the four evaluations */
    double loss_sum;   /* training loss since the last report */
} run;

typedef struct part3_result {
    eval_result ev[2][4]; /* [LayerNorm, BatchNorm][evaluation] */
    double train_loss[2];
    double ln_logit_gap, bn_logit_gap;
} part3_result;

/* Adam (the library's, PyTorch's form, no weight decay) over the trainable
 * parameters (not BatchNorm's running statistics). */
static tb_status run_init(tb_ctx *ctx, run *r, norm_kind kind, tb_rng init_rng)
{
    TRY(model_init(ctx, &r->m, kind, &init_rng));
    TRY(acts_init(ctx, &r->a, &r->m));
    tb_adam_config oc = tb_adam_default_config();
    oc.lr = LR;
    TRY(tb_adam_init(ctx, &r->opt, &r->m.params, &oc));
    size_t n = tb_param_list_numel(&r->m.params, 0);
    int ok = 1;
    r->saved = xcalloc(n, sizeof(float), &ok);
    for (int i = 0; i < 4; i++)
        r->logits[i] = xcalloc(N_VAL * N_CLASSES, sizeof(float), &ok);
    return ok ? TB_OK : TB_ERR_NO_MEMORY;
}

static void run_free(run *r)
{
    model_free(&r->m);
    acts_free(&r->a);
    tb_adam_free(&r->opt);
    free(r->saved);
    for (int i = 0; i < 4; i++)
        free(r->logits[i]);
}

/* One optimisation step on bt at the schedule's factor lr_factor. */
static tb_status train_step(tb_ctx *ctx, run *r, const batch *bt, float lr_factor, uint64_t step)
{
    float loss;
    TRY(model_forward(ctx, &r->m, &r->a, TB_MODE_TRAINING, bt, &loss));
    if (!isfinite(loss)) {
        return tb_ctx_set_error(ctx, TB_ERR_NON_FINITE, "the %s model's loss became %g at step %llu",
                                norm_name(r->m.kind), (double)loss, (unsigned long long)step);
    }
    r->loss_sum += loss;
    tb_param_list_zero_grad(&r->m.params);
    TRY(model_backward(ctx, &r->m, &r->a, bt));
    return tb_adam_step(ctx, &r->opt, lr_factor);
}

static tb_status part3(tb_ctx *ctx, uint64_t steps, tb_rng *data_rng, tb_rng *init_rng,
                       tb_rng *batch_rng, part3_result *res)
{
    seqset train_set, val_set;
    run runs[2];
    memset(&train_set, 0, sizeof train_set);
    memset(&val_set, 0, sizeof val_set);
    memset(runs, 0, sizeof runs);
    int ok = 1;
    batch *bt = xcalloc(1, sizeof *bt, &ok), *ebt = xcalloc(1, sizeof *ebt, &ok);
    size_t *order = xcalloc(N_TRAIN, sizeof(size_t), &ok);
    tb_status s = ok ? TB_OK : TB_ERR_NO_MEMORY;
    if (s == TB_OK && (!seqset_make(&train_set, N_TRAIN, data_rng) ||
                       !seqset_make(&val_set, N_VAL, data_rng)))
        s = TB_ERR_NO_MEMORY;
    /* Both models start from the same weights: the norms are the only
     * difference (their own parameters start at weight 1, bias 0). */
    for (int k = 0; k < 2 && s == TB_OK; k++)
        s = run_init(ctx, &runs[k], k == 0 ? NORM_LAYER : NORM_BATCH, *init_rng);
    if (s != TB_OK)
        goto out;
    size_t n_params = tb_param_list_numel(&runs[0].m.params, 1);
    size_t n_a = 0;
    for (size_t i = 0; i < N_VAL; i++)
        n_a += val_set.label[i] == 1;

    printf("\n3. A tiny transformer classifier trained with each norm\n");
    printf("   task: does a sequence of %d..%d tokens hold more A than B? %d train / %d "
           "validation\n",
           MIN_LEN, MAX_LEN, N_TRAIN, N_VAL);
    printf("   sequences (%.1f%% of validation labels are 'more A'); batches of %d padded to "
           "their longest\n",
           100.0 * (double)n_a / N_VAL, BATCH);
    printf("   model: the shared stack (tfm.h): embeddings + %d pre-norm blocks (one-head "
           "attention, MLP %d-%d-%d),\n",
           N_LAYERS, DIM, HIDDEN, DIM);
    printf("   final norm, masked mean pool, Linear(%d,%d); %zu trainable parameters each\n", DIM,
           N_CLASSES, n_params);
    printf("train: %llu steps, Adam lr %.0e (warm-up %d, cosine), threads %d, kernels %s\n",
           (unsigned long long)steps, (double)LR, WARMUP_STEPS, ctx->num_threads,
           ex_kernel_name(ctx));
    printf("   validation in batches of %d, training-mode forward (as the models train)\n",
           BATCH);
    printf("   %6s | %-27s | %s\n", "", "          LayerNorm", "          BatchNorm");
    printf("   %6s | %8s %9s %8s | %8s %9s %8s\n", "step", "train", "val_loss", "val_acc",
           "train", "val_loss", "val_acc");

    /* Linear warm-up, then a cosine decay to LR/10 (schedule.h). */
    const tb_lr_schedule sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, WARMUP_STEPS, steps, 0.1f);
    if ((s = tb_lr_schedule_check(&sched)) != TB_OK)
        goto out;
    const uint64_t log_every = steps >= 5 ? steps / 5 : 1;
    size_t next = N_TRAIN;
    for (uint64_t step = 0; step <= steps; step++) {
        if (step % log_every == 0 || step == steps) {
            printf("   %6llu |", (unsigned long long)step);
            for (int k = 0; k < 2; k++) {
                eval_result ev;
                s = evaluate(ctx, &runs[k].m, &runs[k].a, TB_MODE_TRAINING, &val_set, BATCH,
                             ebt, runs[k].saved, runs[k].logits[0], &ev);
                if (s != TB_OK)
                    goto out;
                uint64_t n = step % log_every ? step % log_every : log_every;
                if (step == 0)
                    printf(" %8s", "-");
                else
                    printf(" %8.4f", runs[k].loss_sum / (double)n);
                printf(" %9.4f %8.4f%s", ev.loss, ev.acc, k == 0 ? " |" : "\n");
                res->train_loss[k] = step ? runs[k].loss_sum / (double)n : 0.0;
                runs[k].loss_sum = 0.0;
            }
            fflush(stdout);
        }
        if (step == steps)
            break;
        /* Next BATCH sequences of a shuffled pass over the training set. */
        size_t idx[BATCH];
        for (size_t i = 0; i < BATCH; i++) {
            if (next == N_TRAIN) {
                for (size_t j = 0; j < N_TRAIN; j++)
                    order[j] = j;
                ex_shuffle(batch_rng, order, N_TRAIN);
                next = 0;
            }
            idx[i] = order[next++];
        }
        batch_make(bt, &train_set, idx, BATCH);
        const float lr = tb_lr_factor(&sched, step);
        for (int k = 0; k < 2; k++)
            if ((s = train_step(ctx, &runs[k], bt, lr, step)) != TB_OK)
                goto out;
    }

    /* The four ways to run the trained models on the validation set. */
    static const struct {
        tb_mode mode;
        size_t per_batch;
        const char *label;
    } evals[4] = {
        {TB_MODE_TRAINING, BATCH, "(a) batches of 32, training mode (batch statistics)"},
        {TB_MODE_INFERENCE, BATCH, "(b) batches of 32, inference mode (running statistics)"},
        {TB_MODE_INFERENCE, 1, "(c) one at a time, inference mode (running statistics)"},
        {TB_MODE_TRAINING, 1, "(d) one at a time, training mode (its own statistics)"},
    };
    printf("\n   trained models on the validation set; BatchNorm's mode decides which statistics\n"
           "   it uses, LayerNorm's output does not depend on the mode or the batch\n");
    printf("   %-55s | %-16s | %s\n", "", "   LayerNorm", "   BatchNorm");
    printf("   %-55s | %7s %8s | %7s %8s\n", "evaluation", "loss", "acc", "loss", "acc");
    for (int e = 0; e < 4; e++) {
        for (int k = 0; k < 2; k++) {
            s = evaluate(ctx, &runs[k].m, &runs[k].a, evals[e].mode, &val_set,
                         evals[e].per_batch, ebt, runs[k].saved, runs[k].logits[e],
                         &res->ev[k][e]);
            if (s != TB_OK)
                goto out;
        }
        printf("   %-55s | %7.4f %8.4f | %7.4f %8.4f\n", evals[e].label, res->ev[0][e].loss,
               res->ev[0][e].acc, res->ev[1][e].loss, res->ev[1][e].acc);
    }
    /* How far one-at-a-time inference is from what training saw. */
    res->ln_logit_gap = max_abs_diff(runs[0].logits[2], runs[0].logits[0], N_VAL * N_CLASSES,
                                     NULL);
    res->bn_logit_gap = max_abs_diff(runs[1].logits[2], runs[1].logits[0], N_VAL * N_CLASSES,
                                     NULL);
    printf("   %-55s | %16.3g | %16.3g\n", "max |logit (c) - logit (a)| over the validation set",
           res->ln_logit_gap, res->bn_logit_gap);

out:
    for (int k = 0; k < 2; k++)
        run_free(&runs[k]);
    seqset_free(&train_set);
    seqset_free(&val_set);
    free(bt);
    free(ebt);
    free(order);
    return s;
}

/* ---- main ------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    tb_ctx ctx;
    int rc = ex_ctx_init(&ctx);
    if (rc >= 0)
        return rc;
    uint64_t steps = 400, seed = 1, threads = 0;
    const ex_opt opts[] = {
        {"steps", "N", "training steps of each model in part 3", 50, 1000000, &steps},
        {"seed", "S", "seed for the data, the initial weights and the batches", 0, UINT64_MAX,
         &seed},
        EX_OPT_THREADS(threads),
    };
    rc = ex_parse_args(argc, argv,
                           "Compare LayerNorm and BatchNorm: batch-composition, padding and\n"
                           "batch-size invariance, BatchNorm's train/inference gap, and a tiny\n"
                           "transformer classifier trained with each. It prints its\n"
                           "measurements and writes no files.",
                           opts, sizeof opts / sizeof opts[0]);
    if (rc >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);

    /* Independent streams for each use, all derived from --seed. */
    tb_rng master, feat_rng, data_rng, init_rng, batch_rng;
    tb_rng_init(&master, seed);
    tb_rng_init(&feat_rng, tb_rng_next(&master));
    tb_rng_init(&data_rng, tb_rng_next(&master));
    tb_rng_init(&init_rng, tb_rng_next(&master));
    tb_rng_init(&batch_rng, tb_rng_next(&master));

    printf("norm_compare: libtblocks %s, seed %llu\n", tb_version_string(),
           (unsigned long long)seed);
    const double t0 = ex_seconds();
    feature_source fs;
    feature_source_init(&fs, &feat_rng);
    invariance inv = {0.0, 0.0};
    part3_result res;
    memset(&res, 0, sizeof res);
    if (ex_failed(&ctx, part1(&ctx, &fs, &feat_rng, &inv), "part 1 (invariance)") ||
        ex_failed(&ctx, part2(&ctx, &fs, &feat_rng), "part 2 (train/inference gap)") ||
        ex_failed(&ctx, part3(&ctx, steps, &data_rng, &init_rng, &batch_rng, &res),
                  "part 3 (training)"))
        return EX_EXIT_FAILURE;
    printf("done: %.2f s, threads %d\n", ex_seconds() - t0, ctx.num_threads);
    printf("final: ln_val_acc=%.4f bn_val_acc=%.4f ln_bs1_acc=%.4f bn_bs1_acc=%.4f "
           "invariance_ln_max=%.3g invariance_bn_max=%.3g\n",
           res.ev[0][0].acc, res.ev[1][0].acc, res.ev[0][2].acc, res.ev[1][2].acc, inv.ln_max,
           inv.bn_max);
    return EX_EXIT_OK;
}
