/*
 * BERT's heads on the shared stack (examples/common/bert_mlm.c, bert_cls.c)
 * and BERT's masking (bert_mask.c), the configuration in checkpoint
 * metadata (bert_ckpt.c).
 *
 * Against transformers (test/oracle/gen_bert_heads.py): BertForMaskedLM
 * and BertForSequenceClassification from small random BertConfigs (2
 * layers, 3 heads, width 51 / 48, vocabulary 97, intermediate 75, rows of
 * 17, 3 and 1 real tokens with padding and token types), saved with
 * save_pretrained and loaded here BY NAME from that file (the stack under
 * "bert."; the file's tensors are exactly the parameters listed): logits,
 * loss and every parameter's gradient against float32 and float64 torch,
 * |got - want| <= 1e-4 |want| + 1e-4 max|want| per tensor (as test_tfm.c).
 * The MLM head runs both ways: on every position (the logits BertForMaskedLM
 * returns) and on the labelled rows only (the training path); the loss and
 * every gradient agree with the reference either way.
 *
 * Finite differences through the head parts (the MLM transform, its
 * LayerNorm, the bias and the tied decoder into wte; the classifier path
 * with dropout active and with p = 0 in training mode). Dropout semantics:
 * kept elements scaled by 1/(1-p), about p dropped, inference and p = 0 the
 * identity, the same seed the same logits, 1 and 2 threads the same bits.
 * Masking: the 15% / 80-10-10 proportions within 5 standard deviations on
 * 300k tokens, specials and padding never selected, reproducible per seed.
 */
#define _POSIX_C_SOURCE 200809L /* getpid */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bert_ckpt.h"
#include "bert_cls.h"
#include "bert_config.h"
#include "bert_mask.h"
#include "bert_mlm.h"
#include "suites.h"
#include "testutil.h"
#include "tfm.h"

static bert_config ref_config(const tbt_ref *ref)
{
    bert_config c = bert_config_base();
    c.vocab_size = (size_t)tbt_ref_i32_scalar(ref, "vocab");
    c.hidden_size = (size_t)tbt_ref_i32_scalar(ref, "d_model");
    c.num_hidden_layers = (size_t)tbt_ref_i32_scalar(ref, "n_layer");
    c.num_attention_heads = (size_t)tbt_ref_i32_scalar(ref, "n_head");
    c.intermediate_size = (size_t)tbt_ref_i32_scalar(ref, "d_ff");
    c.max_position_embeddings = (size_t)tbt_ref_i32_scalar(ref, "positions");
    c.type_vocab_size = (size_t)tbt_ref_i32_scalar(ref, "types");
    c.hidden_dropout_prob = 0.0f, c.attention_probs_dropout_prob = 0.0f;
    return c;
}

/* Load <case>/model.safetensors by name into list (every tensor of the
 * file a parameter, every parameter in the file). */
static void load_case(tb_ctx *ctx, const char *name, tb_param_list *list)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", getenv("TB_ORACLE_DIR"), name);
    tb_st_file f;
    CHECK_OK(*ctx, tb_st_open(ctx, path, &f));
    CHECK_OK(*ctx, tb_st_load_params(ctx, &f, list, 0, NULL, NULL));
    tb_st_close(&f);
}

/* The kinds of tensor the worst errors are reported by. */
enum { K_EMB, K_ATTN, K_FFN, K_NORM, K_HEAD, N_KINDS };
static const char *const KIND_NAMES[N_KINDS] = {"embeddings", "attention", "feed-forward",
                                                "LayerNorms", "head"};

static int kind_of(const char *name)
{
    if (strstr(name, "LayerNorm"))
        return K_NORM;
    if (strncmp(name, "cls.", 4) == 0 || strncmp(name, "classifier", 10) == 0 ||
        strstr(name, "pooler"))
        return K_HEAD;
    if (strstr(name, "embeddings"))
        return K_EMB;
    if (strstr(name, "attention"))
        return K_ATTN;
    return K_FFN;
}

static double worst_kind[N_KINDS]; /* of the last compare_grads() */

static void print_kinds(const char *what)
{
    printf("  check   %-22s  worst gradient error by kind (of scale, vs float64):", what);
    for (int k = 0; k < N_KINDS; k++)
        printf(" %s %.2e%s", KIND_NAMES[k], worst_kind[k], k + 1 < N_KINDS ? "," : "\n");
}

/* Every gradient in list against g:<name> / g64:<name>; the key bias's
 * (exactly zero in exact arithmetic: a constant added to every score of a
 * query cancels in the softmax) must be noise against the query bias's. */
static double compare_grads(const char *what, const tbt_ref *ref, const tb_param_list *list)
{
    double worst = 0.0;
    memset(worst_kind, 0, sizeof worst_kind);
    for (size_t i = 0; i < list->count; i++) {
        const tb_named_param *np = &list->items[i];
        char k32[200], k64[200], lbl[260];
        snprintf(k32, sizeof k32, "g:%s", np->name);
        snprintf(k64, sizeof k64, "g64:%s", np->name);
        tbt_reft g32 = tbt_ref_get(ref, k32), g64 = tbt_ref_get(ref, k64);
        ck_assert_uint_eq(g32.n, np->param->numel);
        snprintf(lbl, sizeof lbl, "%s.grad.%s", what, np->name);
        const size_t nl = strlen(np->name);
        if (nl > 8 && strcmp(np->name + nl - 8, "key.bias") == 0) {
            char qb[200];
            snprintf(qb, sizeof qb, "g64:%.*squery.bias", (int)(nl - 8), np->name);
            const double qscale = tbt_max_abs_f(tbt_ref_get(ref, qb).data, g32.n);
            ck_assert_msg(qscale > 0 && tbt_max_abs_f(np->param->grad, g32.n) <= 1e-5 * qscale &&
                              tbt_max_abs_f(g64.data, g64.n) <= 1e-9 * qscale,
                          "%s: not ~0 against the query bias's %g", np->name, qscale);
            continue;
        }
        const double e = tbt_assert_close_f32_f64(lbl, np->param->grad, g32.data, g64.data, g32.n, 1e-4, 1e-4);
        const int k = kind_of(np->name);
        worst_kind[k] = fmax(worst_kind[k], e);
        worst = fmax(worst, e);
    }
    return worst;
}

/* ---- BertForMaskedLM ------------------------------------------------------------------- */

typedef struct mlm_run {
    tfm m;
    tfm_acts a;
    bert_mlm h;
    tb_param_list params;
    float *dout;
} mlm_run;

static void mlm_setup(tb_ctx *ctx, mlm_run *r, const bert_config *bc, size_t B, size_t T,
                      const char *file_case, uint64_t seed)
{
    const tfm_config c = bert_tfm_config(bc);
    tb_rng rng;
    tb_rng_init(&rng, seed);
    CHECK_OK(*ctx, tfm_init(ctx, &r->m, &c, &rng));
    CHECK_OK(*ctx, bert_mlm_init(ctx, &r->h, &r->m, B * T, bc->layer_norm_eps,
                                 bc->initializer_range, &rng));
    CHECK_OK(*ctx, tb_param_list_init(ctx, &r->params));
    CHECK_OK(*ctx, tfm_params(ctx, &r->m, "bert.", &r->params));
    CHECK_OK(*ctx, bert_mlm_params(ctx, &r->h, "", &r->params));
    if (file_case)
        load_case(ctx, file_case, &r->params);
    CHECK_OK(*ctx, tfm_acts_init(ctx, &r->a, &r->m, B, T));
    r->dout = tbt_alloc(B * T * bc->hidden_size * sizeof(float));
}

static void mlm_free(mlm_run *r)
{
    tfm_acts_free(&r->a);
    bert_mlm_free(&r->h);
    tfm_free(&r->m);
    tb_param_list_free(&r->params);
    free(r->dout);
}

static float mlm_step(tb_ctx *ctx, mlm_run *r, const tfm_input *in, const int32_t *labels,
                      int all_logits, float dloss)
{
    float loss = NAN;
    tb_param_list_zero_grad(&r->params);
    CHECK_OK(*ctx, tfm_forward(ctx, &r->m, &r->a, TB_MODE_TRAINING, NULL, in));
    CHECK_OK(*ctx, bert_mlm_forward(ctx, &r->h, r->a.out, in->batch, in->seq, labels,
                                    all_logits, &loss));
    CHECK_OK(*ctx, bert_mlm_backward(ctx, &r->h, dloss, r->dout));
    CHECK_OK(*ctx, tfm_backward(ctx, &r->m, &r->a, r->dout, NULL));
    return loss;
}

static uint8_t *valid_of(const int32_t *mask, size_t n, size_t *n_pad)
{
    uint8_t *v = tbt_alloc(n);
    *n_pad = 0;
    for (size_t i = 0; i < n; i++)
        v[i] = mask[i] != 0, *n_pad += mask[i] == 0;
    return v;
}

static void check_loss(const char *what, float got, const tbt_ref *ref)
{
    const double w32 = tbt_ref_scalar(ref, "loss"), w64 = tbt_ref_scalar(ref, "loss_f64");
    ck_assert_msg(fabs(got - w32) <= 1e-5 * fabs(w32) + 1e-6 &&
                      fabs(got - w64) <= 1e-5 * fabs(w64) + 1e-6,
                  "%s: loss %.9g, torch %.9g (float64 %.9g)", what, (double)got, w32, w64);
}

START_TEST(test_mlm_vs_transformers)
{
    tbt_ref *ref = tbt_ref_load("bert_mlm");
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const bert_config bc = ref_config(ref);
    tbt_reft lo = tbt_ref_get(ref, "logits");
    const size_t B = lo.shape[0], T = lo.shape[1], V = lo.shape[2], R = B * T;
    ck_assert_uint_eq(V, bc.vocab_size);
    size_t n, n_pad;
    const int32_t *ids = tbt_ref_i32(ref, "ids", &n);
    ck_assert_uint_eq(n, R);
    const int32_t *types = tbt_ref_i32(ref, "type_ids", &n);
    const int32_t *labels = tbt_ref_i32(ref, "labels", &n);
    uint8_t *valid = valid_of(tbt_ref_i32(ref, "attention_mask", &n), R, &n_pad);
    ck_assert_uint_gt(n_pad, 0);
    size_t n_lab = 0;
    for (size_t i = 0; i < R; i++)
        n_lab += labels[i] != -100;
    ck_assert(n_lab > 0 && n_lab < R);
    const tfm_input in = {B, T, ids, NULL, types, valid};
    mlm_run r;
    mlm_setup(&ctx, &r, &bc, B, T, "bert_mlm", 11);
    /* The tied decoder: the file has no decoder weight, wte is listed once. */
    ck_assert_ptr_nonnull(tb_param_list_find(&r.params, "bert.embeddings.word_embeddings.weight"));
    ck_assert_ptr_null(tb_param_list_find(&r.params, "cls.predictions.decoder.weight"));
    /* All positions: the logits BertForMaskedLM returns. */
    float loss = mlm_step(&ctx, &r, &in, labels, 1, 1.0f);
    ck_assert_uint_eq(r.h.m, R);
    const double e_lo = tbt_assert_close_f32_f64("bert_mlm.logits", r.h.logits, lo.data,
                                 tbt_ref_get(ref, "logits_f64").data, R * V, 1e-4, 1e-4);
    check_loss("bert_mlm (all positions)", loss, ref);
    const double e_g_all = compare_grads("bert_mlm.all", ref, &r.params);
    /* The training path: the labelled rows only, the same loss and gradients. */
    loss = mlm_step(&ctx, &r, &in, labels, 0, 1.0f);
    ck_assert_uint_eq(r.h.m, n_lab);
    check_loss("bert_mlm (masked rows)", loss, ref);
    for (size_t k = 0; k < n_lab; k++)
        ck_assert_int_ne(labels[r.h.rows[k]], -100);
    const double e_g = compare_grads("bert_mlm.rows", ref, &r.params);
    print_kinds("BertForMaskedLM");
    /* One thread: the same bits. */
    tb_ctx ctx1;
    tbt_ctx_init(&ctx1, 1);
    mlm_run one;
    mlm_setup(&ctx1, &one, &bc, B, T, "bert_mlm", 11);
    const float loss1 = mlm_step(&ctx1, &one, &in, labels, 0, 1.0f);
    ck_assert_msg(memcmp(&loss1, &loss, sizeof loss) == 0, "1 vs 2 threads: loss differs");
    for (size_t i = 0; i < r.params.count; i++) {
        const tb_param *p = r.params.items[i].param, *q = one.params.items[i].param;
        ck_assert_msg(memcmp(p->grad, q->grad, p->numel * sizeof(float)) == 0,
                      "1 vs 2 threads: gradient of %s differs", r.params.items[i].name);
    }
    printf("  check   BertForMaskedLM         logits %.2e, loss %.2e, %zu gradients %.2e (all "
           "positions) %.2e (%zu labelled rows of %zu) (of each tensor's scale, vs float64)\n",
           e_lo, fabs(loss - tbt_ref_scalar(ref, "loss_f64")) / fabs(tbt_ref_scalar(ref, "loss_f64")),
           r.params.count, e_g_all, e_g, n_lab, R);
    mlm_free(&one);
    mlm_free(&r);
    free(valid);
    tbt_ref_free(ref);
}
END_TEST

/* ---- BertForSequenceClassification ------------------------------------------------------ */

typedef struct cls_run {
    tfm m;
    tfm_acts a;
    bert_cls h;
    tb_param_list params;
    float *dout;
} cls_run;

static void cls_setup(tb_ctx *ctx, cls_run *r, const bert_config *bc, size_t K, size_t B,
                      size_t T, const char *file_case, uint64_t seed)
{
    const tfm_config c = bert_tfm_config(bc);
    tb_rng rng;
    tb_rng_init(&rng, seed);
    CHECK_OK(*ctx, tfm_init(ctx, &r->m, &c, &rng));
    CHECK_OK(*ctx, bert_cls_init(ctx, &r->h, bc->hidden_size, K, B, &rng));
    CHECK_OK(*ctx, tb_param_list_init(ctx, &r->params));
    CHECK_OK(*ctx, tfm_params(ctx, &r->m, "bert.", &r->params));
    CHECK_OK(*ctx, bert_cls_params(ctx, &r->h, "bert.", &r->params));
    if (file_case)
        load_case(ctx, file_case, &r->params);
    CHECK_OK(*ctx, tfm_acts_init(ctx, &r->a, &r->m, B, T));
    r->dout = tbt_alloc(B * T * bc->hidden_size * sizeof(float));
}

static void cls_free(cls_run *r)
{
    tfm_acts_free(&r->a);
    bert_cls_free(&r->h);
    tfm_free(&r->m);
    tb_param_list_free(&r->params);
    free(r->dout);
}

/* Forward in mode (the head's dropout from rng) and backward. */
static float cls_step(tb_ctx *ctx, cls_run *r, const tfm_input *in, const int32_t *labels,
                      tb_mode mode, tb_rng *rng, float dloss)
{
    float loss = NAN;
    tb_param_list_zero_grad(&r->params);
    CHECK_OK(*ctx, tfm_forward(ctx, &r->m, &r->a, TB_MODE_TRAINING, NULL, in));
    CHECK_OK(*ctx, bert_cls_forward_mode(ctx, &r->h, mode, rng, r->a.out, in->batch, in->seq,
                                         labels, &loss));
    CHECK_OK(*ctx, bert_cls_backward(ctx, &r->h, dloss, r->dout));
    CHECK_OK(*ctx, tfm_backward(ctx, &r->m, &r->a, r->dout, NULL));
    return loss;
}

START_TEST(test_cls_vs_transformers)
{
    tbt_ref *ref = tbt_ref_load("bert_cls");
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const bert_config bc = ref_config(ref);
    const size_t K = (size_t)tbt_ref_i32_scalar(ref, "num_labels");
    const size_t B = tbt_ref_get(ref, "logits").shape[0];
    size_t n, n_pad;
    const int32_t *ids = tbt_ref_i32(ref, "ids", &n);
    const size_t T = n / B, R = B * T;
    ck_assert_uint_eq(R, n);
    const int32_t *types = tbt_ref_i32(ref, "type_ids", &n);
    const int32_t *labels = tbt_ref_i32(ref, "labels", &n);
    ck_assert_uint_eq(n, B);
    uint8_t *valid = valid_of(tbt_ref_i32(ref, "attention_mask", &n), R, &n_pad);
    const tfm_input in = {B, T, ids, NULL, types, valid};
    /* p = 0 as the reference (classifier_dropout 0), in training mode:
     * the dropout block runs and is the identity. */
    ck_assert_float_eq(bert_cls_dropout_p(0.0f, 0.1f), 0.0f);
    ck_assert_float_eq(bert_cls_dropout_p(-1.0f, 0.1f), 0.1f); /* None: hidden_dropout_prob */
    ck_assert_float_eq(bert_cls_dropout_p(NAN, 0.25f), 0.25f);
    cls_run r;
    cls_setup(&ctx, &r, &bc, K, B, T, "bert_cls", 5);
    tb_rng rng;
    tb_rng_init(&rng, 9);
    const float loss = cls_step(&ctx, &r, &in, labels, TB_MODE_TRAINING, &rng, 1.0f);
    const double e_lo = tbt_assert_close_f32_f64("bert_cls.logits", r.h.logits, tbt_ref_get(ref, "logits").data,
                                 tbt_ref_get(ref, "logits_f64").data, B * K, 1e-4, 1e-4);
    check_loss("bert_cls", loss, ref);
    const double e_g = compare_grads("bert_cls", ref, &r.params);
    print_kinds("BertForSeqClassif.");
    /* The inference forward (the callers' bert_cls_forward()): the same bits. */
    float loss_inf = NAN;
    CHECK_OK(ctx, bert_cls_forward(&ctx, &r.h, r.a.out, B, T, labels, &loss_inf));
    ck_assert_msg(memcmp(&loss_inf, &loss, sizeof loss) == 0, "inference vs p = 0 training");
    printf("  check   BertForSeqClassif.      logits %.2e, loss %.2e, %zu gradients %.2e (of "
           "each tensor's scale, vs float64)\n",
           e_lo, fabs(loss - tbt_ref_scalar(ref, "loss_f64")) / fabs(tbt_ref_scalar(ref, "loss_f64")),
           r.params.count, e_g);
    cls_free(&r);
    free(valid);
    tbt_ref_free(ref);
}
END_TEST

/* ---- finite differences through the head parts ------------------------------------------- */

static bert_config tiny_config(void)
{
    bert_config c = bert_config_base();
    c.vocab_size = 23, c.hidden_size = 12, c.num_hidden_layers = 1;
    c.num_attention_heads = 3, c.intermediate_size = 19, c.max_position_embeddings = 9;
    c.hidden_dropout_prob = 0.0f, c.attention_probs_dropout_prob = 0.0f;
    c.layer_norm_eps = 1e-5f, c.initializer_range = 0.4f;
    return c;
}

#define FD_SCALE 20.0f /* the loss is scaled so that its gradients are well above atol */

typedef struct fd_mlm {
    tb_ctx *ctx;
    mlm_run *r;
    const tfm_input *in;
    const int32_t *labels;
} fd_mlm;

static double fd_mlm_loss(void *user)
{
    fd_mlm *f = user;
    float loss;
    CHECK_OK(*f->ctx, tfm_forward(f->ctx, &f->r->m, &f->r->a, TB_MODE_INFERENCE, NULL, f->in));
    CHECK_OK(*f->ctx, bert_mlm_forward(f->ctx, &f->r->h, f->r->a.out, f->in->batch, f->in->seq,
                                       f->labels, 0, &loss));
    return FD_SCALE * (double)loss;
}

static void randomise_head(bert_mlm *h, uint64_t seed)
{
    tbt_fill_uniform(h->dense.bias.value, h->d, -0.3f, 0.3f, seed);
    tbt_fill_uniform(h->ln.weight.value, h->d, 0.5f, 1.5f, seed + 1);
    tbt_fill_uniform(h->ln.bias.value, h->d, -0.3f, 0.3f, seed + 2);
    tbt_fill_uniform(h->bias.value, h->vocab, -0.5f, 0.5f, seed + 3);
}

START_TEST(test_mlm_finite_differences)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    const bert_config bc = tiny_config();
    const size_t B = 2, T = 5;
    const int32_t ids[10] = {3, 7, 11, 4, 9, 5, 8, 0, 0, 0};
    const int32_t labels[10] = {-100, 12, -100, 6, -100, 17, -100, -100, -100, -100};
    const uint8_t valid[10] = {1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
    const tfm_input in = {B, T, ids, NULL, NULL, valid};
    mlm_run r;
    mlm_setup(&ctx, &r, &bc, B, T, NULL, 21);
    randomise_head(&r.h, 77);
    mlm_step(&ctx, &r, &in, labels, 0, FD_SCALE);
    fd_mlm f = {&ctx, &r, &in, labels};
    const char *names[] = {"cls.predictions.transform.dense.weight",
                           "cls.predictions.transform.dense.bias",
                           "cls.predictions.transform.LayerNorm.weight",
                           "cls.predictions.transform.LayerNorm.bias", "cls.predictions.bias",
                           "bert.embeddings.word_embeddings.weight"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        tb_param *p = tb_param_list_find(&r.params, names[i]);
        ck_assert_ptr_nonnull(p);
        float *ana = tbt_alloc(p->numel * sizeof(float));
        memcpy(ana, p->grad, p->numel * sizeof(float));
        char lbl[200];
        snprintf(lbl, sizeof lbl, "fd.%s", names[i]);
        tbt_gradcheck(lbl, p->value, p->numel, ana, fd_mlm_loss, &f, 1e-2f, 2e-2, 2e-3, 40);
        free(ana);
    }
    mlm_free(&r);
}
END_TEST


/* Bad arguments are refused before anything is written; a frozen wte
 * (tfm_freeze) gets nothing from the tied decoder while the head's own
 * parameters still train; a batch without labelled rows has loss 0 and no
 * gradient. */
START_TEST(test_mlm_checks_and_freezing)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const bert_config bc = tiny_config();
    const size_t B = 2, T = 5, R = B * T, C = bc.hidden_size;
    const int32_t ids[10] = {3, 7, 11, 4, 9, 5, 8, 0, 0, 0};
    int32_t labels[10] = {-100, 12, -100, 6, -100, 17, -100, -100, -100, -100};
    const tfm_input in = {B, T, ids, NULL, NULL, NULL};
    mlm_run r;
    mlm_setup(&ctx, &r, &bc, B, T, NULL, 5);
    float loss;
    CHECK_OK(ctx, tfm_forward(&ctx, &r.m, &r.a, TB_MODE_INFERENCE, NULL, &in));
    /* More rows than the head holds, a label outside the vocabulary. */
    ck_assert_int_eq(bert_mlm_forward(&ctx, &r.h, r.a.out, B + 1, T, NULL, 1, NULL),
                     TB_ERR_SHAPE);
    labels[3] = (int32_t)bc.vocab_size;
    ck_assert_int_eq(bert_mlm_forward(&ctx, &r.h, r.a.out, B, T, labels, 0, &loss),
                     TB_ERR_INVALID_ARG);
    labels[3] = -5;
    ck_assert_int_eq(bert_mlm_forward(&ctx, &r.h, r.a.out, B, T, labels, 0, &loss),
                     TB_ERR_INVALID_ARG);
    labels[3] = 6;
    /* No labels: logits of every row, no backward. */
    CHECK_OK(ctx, bert_mlm_forward(&ctx, &r.h, r.a.out, B, T, NULL, 0, NULL));
    ck_assert_uint_eq(r.h.m, R);
    ck_assert_int_eq(bert_mlm_backward(&ctx, &r.h, 1.0f, r.dout), TB_ERR_STATE);
    /* Nothing labelled: loss 0, dout 0, no gradient. */
    int32_t none[10];
    for (size_t i = 0; i < R; i++)
        none[i] = -100;
    tb_param_list_zero_grad(&r.params);
    loss = NAN;
    CHECK_OK(ctx, bert_mlm_forward(&ctx, &r.h, r.a.out, B, T, none, 0, &loss));
    ck_assert_float_eq(loss, 0.0f);
    tbt_fill_uniform(r.dout, R * C, 1.0f, 2.0f, 1);
    CHECK_OK(ctx, bert_mlm_backward(&ctx, &r.h, 1.0f, r.dout));
    ck_assert(tbt_max_abs_f(r.dout, R * C) == 0.0);
    ck_assert(tbt_max_abs_f(r.h.bias.grad, bc.vocab_size) == 0.0);
    /* Frozen stack: the tied decoder adds nothing to wte (it has no
     * gradient buffer any more), the head's bias and transform still get
     * theirs. */
    CHECK_OK(ctx, tfm_freeze(&ctx, &r.m, NULL));
    ck_assert_ptr_null(r.m.wte.weight.grad);
    tb_param_list_zero_grad(&r.params);
    CHECK_OK(ctx, tfm_forward(&ctx, &r.m, &r.a, TB_MODE_INFERENCE, NULL, &in));
    CHECK_OK(ctx, bert_mlm_forward(&ctx, &r.h, r.a.out, B, T, labels, 0, &loss));
    CHECK_OK(ctx, bert_mlm_backward(&ctx, &r.h, 1.0f, r.dout));
    ck_assert(tbt_max_abs_f(r.h.bias.grad, bc.vocab_size) > 0.0);
    ck_assert(tbt_max_abs_f(r.h.dense.weight.grad, C * C) > 0.0);
    ck_assert(tbt_max_abs_f(r.dout, R * C) > 0.0);
    CHECK_OK(ctx, tfm_backward(&ctx, &r.m, &r.a, r.dout, NULL));
    mlm_free(&r);
}
END_TEST

typedef struct fd_cls {
    tb_ctx *ctx;
    cls_run *r;
    const tfm_input *in;
    const int32_t *labels;
    tb_rng rng0; /* the mask's stream, replayed for every evaluation */
} fd_cls;

static double fd_cls_loss(void *user)
{
    fd_cls *f = user;
    float loss;
    tb_rng rng = f->rng0;
    CHECK_OK(*f->ctx, tfm_forward(f->ctx, &f->r->m, &f->r->a, TB_MODE_INFERENCE, NULL, f->in));
    CHECK_OK(*f->ctx, bert_cls_forward_mode(f->ctx, &f->r->h, TB_MODE_TRAINING, &rng,
                                            f->r->a.out, f->in->batch, f->in->seq, f->labels,
                                            &loss));
    return FD_SCALE * (double)loss;
}

START_TEST(test_cls_finite_differences)
{
    const float ps[] = {0.0f, 0.4f};
    for (size_t k = 0; k < 2; k++) {
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 2);
        const bert_config bc = tiny_config();
        const size_t B = 3, T = 4;
        const int32_t ids[12] = {3, 7, 11, 4, 9, 5, 8, 0, 2, 6, 0, 0};
        const uint8_t valid[12] = {1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0};
        const int32_t labels[3] = {2, 0, 1};
        const tfm_input in = {B, T, ids, NULL, NULL, valid};
        cls_run r;
        cls_setup(&ctx, &r, &bc, 3, B, T, NULL, 31);
        CHECK_OK(ctx, bert_cls_set_dropout(&ctx, &r.h, ps[k]));
        fd_cls f = {&ctx, &r, &in, labels, {0, 0}};
        tb_rng_init(&f.rng0, 1234);
        tb_rng rng = f.rng0;
        cls_step(&ctx, &r, &in, labels, TB_MODE_TRAINING, &rng, FD_SCALE);
        const char *names[] = {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight",
                               "bert.pooler.dense.bias"};
        for (size_t i = 0; i < 4; i++) {
            tb_param *p = tb_param_list_find(&r.params, names[i]);
            ck_assert_ptr_nonnull(p);
            float *ana = tbt_alloc(p->numel * sizeof(float));
            memcpy(ana, p->grad, p->numel * sizeof(float));
            char lbl[200];
            snprintf(lbl, sizeof lbl, "fd.p%.1f.%s", (double)ps[k], names[i]);
            tbt_gradcheck(lbl, p->value, p->numel, ana, fd_cls_loss, &f, 1e-2f, 2e-2, 2e-3, 30);
            free(ana);
        }
        cls_free(&r);
    }
}
END_TEST

/* ---- dropout on the pooled output ------------------------------------------------------- */

START_TEST(test_cls_dropout_semantics)
{
    const size_t B = 64, T = 2, C = 48, K = 3;
    tb_ctx ctx2, ctx1;
    tbt_ctx_init(&ctx2, 2);
    tbt_ctx_init(&ctx1, 1);
    float *out = tbt_alloc(B * T * C * sizeof(float));
    tbt_fill_uniform(out, B * T * C, -2.0f, 2.0f, 3);
    bert_cls h, h1;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(ctx2, bert_cls_init(&ctx2, &h, C, K, B, &rng));
    tb_rng_init(&rng, 1);
    CHECK_OK(ctx1, bert_cls_init(&ctx1, &h1, C, K, B, &rng));
    ck_assert_float_eq(h.dropout, 0.0f);
    ck_assert_int_eq(bert_cls_set_dropout(&ctx2, &h, 1.0f), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(bert_cls_set_dropout(&ctx2, &h, -0.1f), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(bert_cls_set_dropout(&ctx2, &h, NAN), TB_ERR_INVALID_ARG);
    const float p = 0.3f;
    CHECK_OK(ctx2, bert_cls_set_dropout(&ctx2, &h, p));
    CHECK_OK(ctx1, bert_cls_set_dropout(&ctx1, &h1, p));
    /* Training needs a stream. */
    ck_assert_int_eq(bert_cls_forward_mode(&ctx2, &h, TB_MODE_TRAINING, NULL, out, B, T, NULL,
                                           NULL),
                     TB_ERR_NULL_ARG);
    /* Inference: the identity, and the same logits as p = 0. */
    CHECK_OK(ctx2, bert_cls_forward_mode(&ctx2, &h, TB_MODE_INFERENCE, NULL, out, B, T, NULL,
                                         NULL));
    ck_assert(memcmp(h.dropped, h.pooled, B * C * sizeof(float)) == 0);
    float *inf_logits = tbt_alloc(B * K * sizeof(float));
    memcpy(inf_logits, h.logits, B * K * sizeof(float));
    /* Training: every element 0 or pooled / (1 - p), about p dropped. */
    tb_rng_init(&rng, 42);
    const tb_rng start = rng;
    CHECK_OK(ctx2, bert_cls_forward_mode(&ctx2, &h, TB_MODE_TRAINING, &rng, out, B, T, NULL,
                                         NULL));
    ck_assert_uint_eq(rng.counter, start.counter + B * C); /* the stream advanced */
    size_t dropped = 0;
    for (size_t i = 0; i < B * C; i++) {
        if (h.dropped[i] == 0.0f) {
            dropped++;
            continue;
        }
        const float want = h.pooled[i] / (1.0f - p);
        ck_assert_msg(fabsf(h.dropped[i] - want) <= 1e-6f * fabsf(want), "element %zu: %g vs %g",
                      i, (double)h.dropped[i], (double)want);
    }
    const double n = (double)(B * C), sd = sqrt(n * p * (1.0 - p));
    ck_assert_msg(fabs((double)dropped - n * p) <= 5.0 * sd, "%zu of %.0f dropped, p = %g",
                  dropped, n, (double)p);
    ck_assert(memcmp(h.logits, inf_logits, B * K * sizeof(float)) != 0);
    /* The same seed: the same logits; 1 thread: the same bits. */
    float *first = tbt_alloc(B * K * sizeof(float));
    memcpy(first, h.logits, B * K * sizeof(float));
    rng = start;
    CHECK_OK(ctx2, bert_cls_forward_mode(&ctx2, &h, TB_MODE_TRAINING, &rng, out, B, T, NULL,
                                         NULL));
    ck_assert(memcmp(first, h.logits, B * K * sizeof(float)) == 0);
    rng = start;
    CHECK_OK(ctx1, bert_cls_forward_mode(&ctx1, &h1, TB_MODE_TRAINING, &rng, out, B, T, NULL,
                                         NULL));
    ck_assert(memcmp(first, h1.logits, B * K * sizeof(float)) == 0);
    /* Another seed: another mask. */
    tb_rng_init(&rng, 43);
    CHECK_OK(ctx2, bert_cls_forward_mode(&ctx2, &h, TB_MODE_TRAINING, &rng, out, B, T, NULL,
                                         NULL));
    ck_assert(memcmp(first, h.logits, B * K * sizeof(float)) != 0);
    /* Backward: the classifier input's gradient is zero where dropped. */
    int32_t labels[64];
    for (size_t b = 0; b < B; b++)
        labels[b] = (int32_t)(b % K);
    float loss, *dout = tbt_alloc(B * T * C * sizeof(float));
    rng = start;
    CHECK_OK(ctx2, bert_cls_forward_mode(&ctx2, &h, TB_MODE_TRAINING, &rng, out, B, T, labels,
                                         &loss));
    CHECK_OK(ctx2, bert_cls_backward(&ctx2, &h, 1.0f, dout));
    for (size_t i = 0; i < B * C; i++)
        if (h.dropped[i] == 0.0f && h.pooled[i] != 0.0f)
            ck_assert_float_eq(h.dpooled[i], 0.0f);
    free(dout), free(first), free(inf_logits), free(out);
    bert_cls_free(&h);
    bert_cls_free(&h1);
}
END_TEST

/* ---- masking ---------------------------------------------------------------------------- */

START_TEST(test_mask_proportions)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
#ifdef TBT_ASAN
    const size_t n = 60000;
#else
    const size_t n = 300000;
#endif
    const size_t V = 50;
    uint8_t special[50] = {0};
    special[0] = special[1] = special[2] = special[3] = 1; /* pad, cls, sep, mask */
    bert_mask_config c = bert_mask_default_config();
    c.mask_id = 3, c.rand_lo = 4, c.rand_hi = (int32_t)V, c.special = special, c.vocab = V;
    int32_t *ids = tbt_alloc(n * sizeof(int32_t)), *orig = tbt_alloc(n * sizeof(int32_t));
    int32_t *labels = tbt_alloc(n * sizeof(int32_t));
    size_t n_special = 0;
    for (size_t i = 0; i < n; i++) {
        /* A sixth of the positions special or padding. */
        orig[i] = (i % 6 == 0) ? (int32_t)(i / 6 % 3) : (int32_t)(4 + (i * 7919) % (V - 4));
        n_special += special[orig[i]];
    }
    memcpy(ids, orig, n * sizeof(int32_t));
    tb_rng rng;
    tb_rng_init(&rng, 2026);
    size_t sel;
    CHECK_OK(ctx, bert_mask_tokens(&ctx, &c, &rng, ids, labels, n, &sel));
    ck_assert_uint_eq(rng.counter, 3 * n);
    size_t n_mask = 0, n_rand = 0, n_keep = 0, count = 0;
    for (size_t i = 0; i < n; i++) {
        if (special[orig[i]]) {
            ck_assert_int_eq(labels[i], -100);
            ck_assert_int_eq(ids[i], orig[i]);
            continue;
        }
        if (labels[i] == -100) {
            ck_assert_int_eq(ids[i], orig[i]);
            continue;
        }
        count++;
        ck_assert_int_eq(labels[i], orig[i]);
        if (ids[i] == c.mask_id)
            n_mask++;
        else if (ids[i] == orig[i])
            n_keep++; /* a random draw of the same token counts here: 1/46 of 10% */
        else {
            ck_assert(ids[i] >= c.rand_lo && ids[i] < c.rand_hi);
            n_rand++;
        }
    }
    ck_assert_uint_eq(count, sel);
    const double N = (double)(n - n_special), S = (double)sel;
    ck_assert_msg(fabs(S - 0.15 * N) <= 5.0 * sqrt(N * 0.15 * 0.85), "%zu of %.0f selected", sel,
                  N);
    const double p_same = 0.1 / (double)(V - 4); /* a random token equal to the original */
    const double pm = 0.8, pr = 0.1 - p_same, pk = 0.1 + p_same;
    ck_assert_msg(fabs(n_mask - pm * S) <= 5.0 * sqrt(S * pm * (1 - pm)), "%zu [MASK]", n_mask);
    ck_assert_msg(fabs(n_rand - pr * S) <= 5.0 * sqrt(S * pr * (1 - pr)), "%zu random", n_rand);
    ck_assert_msg(fabs(n_keep - pk * S) <= 5.0 * sqrt(S * pk * (1 - pk)), "%zu kept", n_keep);
    /* The same seed: the same masks; another: others. */
    int32_t *ids2 = tbt_alloc(n * sizeof(int32_t)), *labels2 = tbt_alloc(n * sizeof(int32_t));
    memcpy(ids2, orig, n * sizeof(int32_t));
    tb_rng_init(&rng, 2026);
    CHECK_OK(ctx, bert_mask_tokens(&ctx, &c, &rng, ids2, labels2, n, NULL));
    ck_assert(memcmp(ids, ids2, n * sizeof(int32_t)) == 0);
    ck_assert(memcmp(labels, labels2, n * sizeof(int32_t)) == 0);
    memcpy(ids2, orig, n * sizeof(int32_t));
    tb_rng_init(&rng, 2027);
    CHECK_OK(ctx, bert_mask_tokens(&ctx, &c, &rng, ids2, labels2, n, NULL));
    ck_assert(memcmp(labels, labels2, n * sizeof(int32_t)) != 0);
    /* Bad input. */
    ids2[5] = (int32_t)V;
    ck_assert_int_eq(bert_mask_tokens(&ctx, &c, &rng, ids2, labels2, n, NULL),
                     TB_ERR_INVALID_ARG);
    c.rand_hi = c.rand_lo;
    ck_assert_int_eq(bert_mask_tokens(&ctx, &c, &rng, ids, labels, n, NULL), TB_ERR_INVALID_ARG);
    printf("  check   BERT masking            %.4f selected, of them %.4f [MASK], %.4f random, "
           "%.4f kept (%zu tokens)\n",
           S / N, n_mask / S, n_rand / S, n_keep / S, n);
    free(ids), free(orig), free(labels), free(ids2), free(labels2);
}
END_TEST

/* ---- the configuration in checkpoint metadata ------------------------------------------- */

START_TEST(test_config_meta_roundtrip)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    bert_config c = tiny_config();
    c.hidden_dropout_prob = 0.1f, c.layer_norm_eps = 1e-12f, c.initializer_range = 0.02f;
    c.pad_token_id = 0;
    const tfm_config t = bert_tfm_config(&c);
    tfm m;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(ctx, tfm_init(&ctx, &m, &t, &rng));
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tfm_params(&ctx, &m, "bert.", &list));
    bert_config_text text;
    tb_st_meta meta[BERT_CONFIG_N_META];
    bert_config_to_meta(&c, &text, meta);
    char path[600];
    snprintf(path, sizeof path, "%s/bert_ckpt_meta_%d.safetensors",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    CHECK_OK(ctx, tb_checkpoint_save(&ctx, path, &list, NULL, NULL, meta, BERT_CONFIG_N_META,
                                     TB_CKPT_DEFAULT));
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    bert_config back;
    CHECK_OK(ctx, bert_config_from_meta(&ctx, &f, &back));
    tb_st_close(&f);
    ck_assert((back.vocab_size == c.vocab_size && back.hidden_size == c.hidden_size &&
               back.num_hidden_layers == c.num_hidden_layers &&
               back.num_attention_heads == c.num_attention_heads &&
               back.intermediate_size == c.intermediate_size &&
               back.max_position_embeddings == c.max_position_embeddings &&
               back.type_vocab_size == c.type_vocab_size && back.pad_token_id == c.pad_token_id &&
               back.layer_norm_eps == c.layer_norm_eps &&
               back.hidden_dropout_prob == c.hidden_dropout_prob &&
               back.attention_probs_dropout_prob == c.attention_probs_dropout_prob &&
               back.initializer_range == c.initializer_range));
    /* A file without the keys, and one with a bad value. */
    CHECK_OK(ctx, tb_checkpoint_save(&ctx, path, &list, NULL, NULL, meta, 3, TB_CKPT_DEFAULT));
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    ck_assert_int_eq(bert_config_from_meta(&ctx, &f, &back), TB_ERR_FORMAT);
    tb_st_close(&f);
    strcpy(text.value[3], "5"); /* 5 heads do not divide width 12 */
    CHECK_OK(ctx, tb_checkpoint_save(&ctx, path, &list, NULL, NULL, meta, BERT_CONFIG_N_META,
                                     TB_CKPT_DEFAULT));
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    ck_assert_int_eq(bert_config_from_meta(&ctx, &f, &back), TB_ERR_FORMAT);
    tb_st_close(&f);
    strcpy(text.value[3], "3x");
    CHECK_OK(ctx, tb_checkpoint_save(&ctx, path, &list, NULL, NULL, meta, BERT_CONFIG_N_META,
                                     TB_CKPT_DEFAULT));
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    ck_assert_int_eq(bert_config_from_meta(&ctx, &f, &back), TB_ERR_FORMAT);
    tb_st_close(&f);
    remove(path);
    tb_param_list_free(&list);
    tfm_free(&m);
}
END_TEST

Suite *suite_bert_heads(void)
{
    Suite *s = suite_create("bert_heads");
    TCase *tc = tcase_create("bert_heads");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_mlm_vs_transformers);
    tcase_add_test(tc, test_cls_vs_transformers);
    tcase_add_test(tc, test_mlm_finite_differences);
    tcase_add_test(tc, test_cls_finite_differences);
    tcase_add_test(tc, test_mlm_checks_and_freezing);
    tcase_add_test(tc, test_cls_dropout_semantics);
    tcase_add_test(tc, test_mask_proportions);
    tcase_add_test(tc, test_config_meta_roundtrip);
    suite_add_tcase(s, tc);
    return s;
}
