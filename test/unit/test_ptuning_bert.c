/*
 * P-tuning's prefix mode on an ENCODER with a classifier
 * (examples/common/ptuning_input.c's ptin_build_encoder() and
 * ptin_bert_cls_*, examples/common/bert_cls.c) against Hugging Face PEFT
 * 0.21 on transformers' BertForSequenceClassification
 * (test/oracle/gen_peft_ptuning_bert.py: random small BertConfigs, 2
 * layers, width 32 / 48, 4 / 3 heads, vocabulary 60, 3 labels, dropout 0,
 * saved with save_pretrained; get_peft_model(PromptEncoderConfig(
 * task_type="SEQ_CLS", ...)) with an LSTM and an MLP encoder; a batch of
 * two-segment rows with token types, one padded row, class labels):
 *
 *  - the checkpoint loads by BertForSequenceClassification's names (every
 *    tensor of the file is a parameter here and every parameter is in it);
 *  - what the stack receives equals what PEFT hands BertModel (captured by
 *    hooks in the oracle): the token types (0 at the n virtual positions),
 *    the key-valid mask (1 there), the positions 0 .. n+L-1;
 *  - the encoder's output, the logits (B, 3), the loss, every encoder
 *    gradient and the classifier's gradient (PEFT trains it through
 *    modules_to_save) equal PEFT's; nothing else gets a gradient;
 *  - the documented layout: an input built by hand (prompts before [CLS],
 *    types and mask extended) gives the same logits bitwise, the pooler
 *    reads the first virtual token's output, the prompt gradient gathered
 *    by hand from d_embeds equals ptin's bitwise, and no token types is
 *    the same as all-zero ones;
 *  - errors: token types out of range, backward without labels.
 *
 * ---- Tolerances -----------------------------------------------------------
 * |got - want| <= atol + rtol |want| against float32 PEFT and against the
 * same PEFT model in float64, per tensor, as test_ptuning_input.c and
 * test_tfm.c's BERT case for the same kind of model:
 *   prompts, logits: rtol 1e-4, atol 1e-4 max|want|;
 *   loss: 1e-5 relative;
 *   encoder and classifier gradients: rtol 1e-4, atol 1e-4 max|want| of
 *     each tensor: the gradient crosses the head, the whole post-norm stack
 *     backward, then the encoder. A wiring error (the pooler on [CLS]
 *     instead of position 0, a virtual position given type 1 or masked, a
 *     row not summed) moves whole tensors by O(1) of their scale.
 * Measured maxima (vs float64) are printed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bert_cls.h"
#include "ptuning_input.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const pb_cases[] = {"ptbert_lstm_c32", "ptbert_mlp_c48"};

#define RTOL 1e-4
#define ATOL_REL 1e-4

typedef struct fixture {
    tbt_ref *ref;
    const char *name;
    tb_ctx ctx;
    tfm m;
    tfm_acts a;
    bert_cls h;
    tb_param_list model_params; /* "bert.*" and the head's, as in the file */
    tb_ptuning enc;
    tb_ptuning_config ecfg;
    tb_param_list enc_params;   /* PEFT's names without a prefix */
    tb_param_list cls_params;   /* the classifier's: "classifier.{weight,bias}" */
    ptin p;
    size_t B, L, n, d, K, T;
    const int32_t *ids, *types, *labels;
    uint8_t *mask;
} fixture;

static void fixture_init(fixture *f, const char *name)
{
    memset(f, 0, sizeof *f);
    f->name = name;
    f->ref = tbt_ref_load(name);
    tbt_ctx_init(&f->ctx, 2);
    tb_ctx *ctx = &f->ctx;
    const tbt_ref *ref = f->ref;
    tfm_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = (size_t)tbt_ref_i32_scalar(ref, "n_layer");
    c.n_head = (size_t)tbt_ref_i32_scalar(ref, "n_head");
    c.d_model = (size_t)tbt_ref_i32_scalar(ref, "d_model");
    c.d_ff = (size_t)tbt_ref_i32_scalar(ref, "d_ff");
    c.vocab_size = (size_t)tbt_ref_i32_scalar(ref, "vocab");
    c.max_positions = (size_t)tbt_ref_i32_scalar(ref, "positions");
    c.type_vocab_size = (size_t)tbt_ref_i32_scalar(ref, "types");
    c.has_pad_token = 1, c.pad_token_id = 0; /* BertConfig's */
    c.norm_place = TFM_POST_NORM;
    c.norm_kind = TFM_LAYERNORM;
    c.embed_norm = 1;
    c.norm_eps = 1e-12f;
    c.causal = 0;
    c.qkv = TFM_QKV_SEPARATE;
    c.layout = TB_LINEAR_OUT_IN;
    c.gelu = TB_GELU_EXACT;
    c.names = &tfm_names_bert;
    f->d = c.d_model;
    f->K = (size_t)tbt_ref_i32_scalar(ref, "num_labels");
    size_t nl;
    f->ids = tbt_ref_i32(ref, "ids", &nl);
    f->types = tbt_ref_i32(ref, "type_ids", &nl);
    const int32_t *m32 = tbt_ref_i32(ref, "mask", &nl);
    size_t nb;
    f->labels = tbt_ref_i32(ref, "labels", &nb);
    f->B = nb, f->L = nl / nb;
    ck_assert_uint_eq(f->B * f->L, nl);
    f->mask = tbt_alloc(nl);
    for (size_t i = 0; i < nl; i++)
        f->mask[i] = (uint8_t)(m32[i] != 0);
    f->n = (size_t)tbt_ref_i32_scalar(ref, "n_virtual");
    f->T = f->n + f->L;

    tb_rng rng;
    tb_rng_init(&rng, 3);
    CHECK_OK(*ctx, tfm_init(ctx, &f->m, &c, &rng));
    CHECK_OK(*ctx, bert_cls_init(ctx, &f->h, f->d, f->K, f->B, &rng));
    CHECK_OK(*ctx, tb_param_list_init(ctx, &f->model_params));
    CHECK_OK(*ctx, tfm_params(ctx, &f->m, "bert.", &f->model_params));
    CHECK_OK(*ctx, bert_cls_params(ctx, &f->h, "bert.", &f->model_params));
    char path[700];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", getenv("TB_ORACLE_DIR"), name);
    tb_st_file file;
    CHECK_OK(*ctx, tb_st_open(ctx, path, &file));
    size_t loaded = 0;
    CHECK_OK(*ctx, tb_st_load_params(ctx, &file, &f->model_params, 0, NULL, &loaded));
    tb_st_close(&file);
    ck_assert_uint_eq(loaded, f->model_params.count);
    /* PEFT's SEQ_CLS prompt learning: the model and the pooler frozen, the
     * classifier trained. */
    CHECK_OK(*ctx, tfm_freeze(ctx, &f->m, NULL));
    bert_cls_freeze_pooler(&f->h);
    CHECK_OK(*ctx, tb_param_list_init(ctx, &f->cls_params));
    CHECK_OK(*ctx, tb_linear_params(ctx, &f->h.classifier, "classifier", &f->cls_params));

    f->ecfg.num_virtual_tokens = f->n;
    f->ecfg.token_dim = f->d;
    f->ecfg.encoder_hidden_size = (size_t)tbt_ref_i32_scalar(ref, "hidden");
    f->ecfg.encoder_num_layers = (size_t)tbt_ref_i32_scalar(ref, "enc_layers");
    f->ecfg.type = tbt_ref_i32_scalar(ref, "lstm") ? TB_PTUNING_LSTM : TB_PTUNING_MLP;
    CHECK_OK(*ctx, tb_ptuning_init(ctx, &f->enc, &f->ecfg, &rng));
    CHECK_OK(*ctx, tb_param_list_init(ctx, &f->enc_params));
    CHECK_OK(*ctx, tb_ptuning_params(ctx, &f->enc, NULL, &f->enc_params));
    for (size_t i = 0; i < f->enc_params.count; i++) { /* PEFT's initial values */
        const tb_named_param *np = &f->enc_params.items[i];
        char key[200];
        snprintf(key, sizeof key, "p:%s", np->name);
        const tbt_reft w = tbt_ref_get(ref, key);
        ck_assert_msg(w.n == np->param->numel, "%s: %zu values, PEFT %zu", np->name,
                      np->param->numel, w.n);
        memcpy(np->param->value, w.data, w.n * sizeof(float));
    }
    const ptin_template tpl = ptin_prefix(f->n);
    CHECK_OK(*ctx, ptin_init(ctx, &f->p, &tpl, f->d, f->B, f->L, &f->enc));
    CHECK_OK(*ctx, tfm_acts_init(ctx, &f->a, &f->m, f->B, f->T));
}

static void fixture_free(fixture *f)
{
    tfm_acts_free(&f->a);
    ptin_free(&f->p);
    tb_param_list_free(&f->enc_params);
    tb_param_list_free(&f->cls_params);
    tb_param_list_free(&f->model_params);
    tb_ptuning_free(&f->enc);
    bert_cls_free(&f->h);
    tfm_free(&f->m);
    free(f->mask);
    tbt_ref_free(f->ref);
}

static void forward(fixture *f, const int32_t *types, float *loss)
{
    CHECK_OK(f->ctx, ptin_bert_cls_forward(&f->ctx, &f->m, &f->a, &f->h, &f->p, &f->enc,
                                           TB_MODE_TRAINING, NULL, f->ids, types, f->mask,
                                           f->labels, NULL, f->B, f->L, loss));
}

static void backward(fixture *f)
{
    tb_param_list_zero_grad(&f->enc_params);
    tb_param_list_zero_grad(&f->cls_params);
    CHECK_OK(f->ctx, ptin_bert_cls_backward(&f->ctx, &f->m, &f->a, &f->h, &f->p, &f->enc, 1.0f));
}

/* The stack and the pooler: not trainable, and no gradient anywhere in them. */
static void assert_frozen_untouched(const fixture *f)
{
    for (size_t i = 0; i < f->model_params.count; i++) {
        const tb_named_param *np = &f->model_params.items[i];
        if (!strncmp(np->name, "classifier.", 11))
            continue;
        ck_assert_msg(!np->param->trainable, "%s is trainable", np->name);
        if (!np->param->grad)
            continue;
        for (size_t j = 0; j < np->param->numel; j++)
            ck_assert_msg(np->param->grad[j] == 0.0f, "%s.grad[%zu] = %g", np->name, j,
                          (double)np->param->grad[j]);
    }
    ck_assert(f->h.pooler.weight.grad == NULL && !f->h.pooler.weight.trainable);
    ck_assert(f->h.classifier.weight.trainable);
}

START_TEST(test_ptuning_bert_vs_peft)
{
    fixture f;
    fixture_init(&f, pb_cases[_i]);
    const char *name = f.name;
    const size_t B = f.B, T = f.T;
    float loss;
    forward(&f, f.types, &loss);
    /* What the stack saw is what PEFT handed BertModel. */
    size_t ne;
    const int32_t *ext_types = tbt_ref_i32(f.ref, "ext_types", &ne);
    ck_assert_uint_eq(ne, B * T);
    const int32_t *ext_mask = tbt_ref_i32(f.ref, "ext_mask", &ne);
    const int32_t *ext_pos = tbt_ref_i32(f.ref, "ext_positions", &ne);
    ck_assert_uint_eq(ne, T);
    ck_assert(f.p.in.type_ids == f.p.type_ids && f.p.in.seq == T && f.p.in.embeds);
    for (size_t b = 0; b < B; b++)
        for (size_t j = 0; j < T; j++) {
            ck_assert_msg(f.p.in.type_ids[b * T + j] == ext_types[b * T + j],
                          "%s: row %zu, position %zu: type %d, PEFT's %d", name, b, j,
                          (int)f.p.in.type_ids[b * T + j], (int)ext_types[b * T + j]);
            ck_assert_msg((f.p.in.key_valid[b * T + j] != 0) == (ext_mask[b * T + j] != 0),
                          "%s: row %zu, position %zu: key_valid %d, PEFT's mask %d", name, b, j,
                          (int)f.p.in.key_valid[b * T + j], (int)ext_mask[b * T + j]);
            ck_assert_int_eq(f.a.pos[b * T + j], ext_pos[j]);
        }
    char lbl[300];
    snprintf(lbl, sizeof lbl, "%s.prompts", name);
    const double e_pr = tbt_assert_close_f32_f64(lbl, f.p.prompts, tbt_ref_get(f.ref, "prompts").data,
                                 tbt_ref_get(f.ref, "prompts_f64").data, f.n * f.d, RTOL, ATOL_REL);
    snprintf(lbl, sizeof lbl, "%s.logits", name);
    const double e_lo = tbt_assert_close_f32_f64(lbl, f.h.logits, tbt_ref_get(f.ref, "logits").data,
                                 tbt_ref_get(f.ref, "logits_f64").data, B * f.K, RTOL, ATOL_REL);
    const float want32 = tbt_ref_scalar(f.ref, "loss"), want64 = tbt_ref_scalar(f.ref, "loss_f64");
    ck_assert_msg(fabsf(loss - want64) <= 1e-5f * fabsf(want64) &&
                      fabsf(loss - want32) <= 1e-5f * fabsf(want32),
                  "%s: loss %.8f, PEFT %.8f (float64 %.8f)", name, (double)loss, (double)want32,
                  (double)want64);
    backward(&f);
    double e_g = 0.0, e_c = 0.0;
    for (size_t i = 0; i < f.enc_params.count; i++) {
        const tb_named_param *np = &f.enc_params.items[i];
        char k32[200], k64[200];
        snprintf(k32, sizeof k32, "g:%s", np->name);
        snprintf(k64, sizeof k64, "g64:%s", np->name);
        const tbt_reft g32 = tbt_ref_get(f.ref, k32), g64 = tbt_ref_get(f.ref, k64);
        ck_assert_uint_eq(g32.n, np->param->numel);
        ck_assert(tbt_max_abs_f(g64.data, g64.n) > 0.0);
        snprintf(lbl, sizeof lbl, "%s.grad.%s", name, np->name);
        e_g = fmax(e_g, tbt_assert_close_f32_f64(lbl, np->param->grad, g32.data, g64.data, g32.n, RTOL, ATOL_REL));
    }
    for (size_t i = 0; i < f.cls_params.count; i++) {
        const tb_named_param *np = &f.cls_params.items[i];
        const char *leaf = np->name + strlen("classifier.");
        char k32[200], k64[200];
        snprintf(k32, sizeof k32, "gc:%s", leaf);
        snprintf(k64, sizeof k64, "gc64:%s", leaf);
        const tbt_reft g32 = tbt_ref_get(f.ref, k32), g64 = tbt_ref_get(f.ref, k64);
        ck_assert_uint_eq(g32.n, np->param->numel);
        snprintf(lbl, sizeof lbl, "%s.grad.%s", name, np->name);
        e_c = fmax(e_c, tbt_assert_close_f32_f64(lbl, np->param->grad, g32.data, g64.data, g32.n, RTOL, ATOL_REL));
    }
    assert_frozen_untouched(&f);
    printf("  check   %-16s %s prefix on BERT: prompts %.2e, logits %.2e, %zu encoder gradients "
           "%.2e, classifier gradients %.2e (of each tensor's scale, vs float64); loss %.6f vs "
           "PEFT %.6f (|diff| %.1e); types, mask, positions as PEFT hands BertModel\n",
           name, f.ecfg.type == TB_PTUNING_LSTM ? "LSTM" : "MLP", e_pr, e_lo,
           f.enc_params.count, e_g, e_c, (double)loss, (double)want64,
           fabs((double)loss - (double)want64));
    fixture_free(&f);
}
END_TEST

START_TEST(test_ptuning_bert_manifest)
{
    const tbt_names l = {pb_cases, ARRAY_LEN(pb_cases)};
    ck_assert_uint_eq(
        tbt_check_manifest("ptuning_bert_cases.txt", "test_ptuning_bert.c", tbt_name_listed, &l),
        ARRAY_LEN(pb_cases));
}
END_TEST

/* The documented layout by hand: prompts at positions 0..n-1, then [CLS]
 * and the rest; types 0 and key_valid 1 at the virtual positions. */
START_TEST(test_ptuning_bert_documented_layout)
{
    fixture f;
    fixture_init(&f, pb_cases[_i]);
    const size_t B = f.B, T = f.T, C = f.d, n = f.n, L = f.L, K = f.K;
    float loss;
    forward(&f, f.types, &loss);
    float *logits = tbt_alloc(B * K * sizeof(float));
    memcpy(logits, f.h.logits, B * K * sizeof(float));
    /* The pooler's input is position 0: the first virtual token's output. */
    for (size_t b = 0; b < B; b++) {
        ck_assert_int_eq(f.p.slot[b * T], -1);
        ck_assert(memcmp(f.h.first + b * C, f.a.out + b * T * C, C * sizeof(float)) == 0);
    }
    backward(&f);
    float *dp = tbt_alloc(n * C * sizeof(float));
    memcpy(dp, f.p.d_prompts, n * C * sizeof(float));

    /* By hand. */
    float *emb = tbt_alloc(B * T * C * sizeof(float));
    int32_t *ty = tbt_alloc(B * T * sizeof(int32_t));
    uint8_t *kv = tbt_alloc(B * T);
    for (size_t b = 0; b < B; b++) {
        for (size_t v = 0; v < n; v++) {
            memcpy(emb + (b * T + v) * C, f.p.prompts + v * C, C * sizeof(float));
            ty[b * T + v] = 0;
            kv[b * T + v] = 1;
        }
        for (size_t t = 0; t < L; t++) {
            memcpy(emb + (b * T + n + t) * C,
                   f.m.wte.weight.value + (size_t)f.ids[b * L + t] * C, C * sizeof(float));
            ty[b * T + n + t] = f.types[b * L + t];
            kv[b * T + n + t] = f.mask[b * L + t];
        }
    }
    ck_assert(memcmp(emb, f.p.embeds, B * T * C * sizeof(float)) == 0);
    const tfm_input in = {B, T, NULL, emb, ty, kv};
    CHECK_OK(f.ctx, tfm_forward(&f.ctx, &f.m, &f.a, TB_MODE_TRAINING, NULL, &in));
    float loss2;
    CHECK_OK(f.ctx, bert_cls_forward(&f.ctx, &f.h, f.a.out, B, T, f.labels, &loss2));
    ck_assert_msg(memcmp(logits, f.h.logits, B * K * sizeof(float)) == 0,
                  "%s: logits differ from the hand-built input's", f.name);
    ck_assert(loss == loss2);
    float *dout = tbt_alloc(B * T * C * sizeof(float));
    float *demb = tbt_alloc(B * T * C * sizeof(float));
    CHECK_OK(f.ctx, bert_cls_backward(&f.ctx, &f.h, 1.0f, dout));
    CHECK_OK(f.ctx, tfm_backward(&f.ctx, &f.m, &f.a, dout, demb));
    float *dp2 = tbt_alloc(n * C * sizeof(float));
    for (size_t b = 0; b < B; b++)
        for (size_t v = 0; v < n; v++)
            for (size_t c = 0; c < C; c++)
                dp2[v * C + c] += demb[(b * T + v) * C + c];
    ck_assert_msg(memcmp(dp, dp2, n * C * sizeof(float)) == 0,
                  "%s: the prompt gradient differs from the hand-gathered one", f.name);
    ck_assert(tbt_max_abs_f(dp, n * C) > 0.0);

    /* No token types is all-zero token types. */
    int32_t *zeros = tbt_alloc(B * L * sizeof(int32_t));
    forward(&f, zeros, &loss);
    memcpy(logits, f.h.logits, B * K * sizeof(float));
    forward(&f, NULL, &loss2);
    ck_assert(f.p.in.type_ids == NULL);
    ck_assert(memcmp(logits, f.h.logits, B * K * sizeof(float)) == 0 && loss == loss2);
    printf("  check   %-16s prompts before [CLS] at positions 0..%zu, types 0, mask 1; the pooler "
           "reads virtual token 0; logits and the prompt gradient equal the hand-built input's "
           "bitwise\n",
           f.name, n - 1);
    free(logits), free(dp), free(dp2), free(emb), free(ty), free(kv), free(dout), free(demb);
    free(zeros);
    fixture_free(&f);
}
END_TEST

START_TEST(test_ptuning_bert_errors)
{
    fixture f;
    fixture_init(&f, pb_cases[0]);
    tb_ctx *ctx = &f.ctx;
    int32_t *ty = tbt_alloc(f.B * f.L * sizeof(int32_t));
    memcpy(ty, f.types, f.B * f.L * sizeof(int32_t));
    ty[f.L + 2] = 2; /* 2 token types: 0, 1 */
    ck_assert_int_eq(ptin_build_encoder(ctx, &f.p, &f.m, f.p.prompts, f.ids, ty, f.mask, NULL,
                                        f.B, f.L),
                     TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(ctx), "row 1, token 2") != NULL, "%s", tb_ctx_error(ctx));
    ty[f.L + 2] = -1;
    ck_assert_int_eq(ptin_build_encoder(ctx, &f.p, &f.m, f.p.prompts, f.ids, ty, f.mask, NULL,
                                        f.B, f.L),
                     TB_ERR_INVALID_ARG);
    ck_assert_uint_eq(f.p.b, 0); /* nothing built */
    ck_assert_int_eq(ptin_build_encoder(ctx, &f.p, &f.m, f.p.prompts, f.ids, f.types, f.mask,
                                        NULL, f.B + 1, f.L),
                     TB_ERR_SHAPE);
    /* Backward after a forward without labels. */
    CHECK_OK(*ctx, ptin_bert_cls_forward(ctx, &f.m, &f.a, &f.h, &f.p, &f.enc, TB_MODE_TRAINING,
                                         NULL, f.ids, f.types, f.mask, NULL, NULL, f.B, f.L,
                                         NULL));
    ck_assert_int_eq(ptin_bert_cls_backward(ctx, &f.m, &f.a, &f.h, &f.p, &f.enc, 1.0f),
                     TB_ERR_STATE);
    free(ty);
    fixture_free(&f);
}
END_TEST

Suite *suite_ptuning_bert(void)
{
    Suite *s = suite_create("ptuning_bert");
    TCase *tc = tcase_create("peft");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_ptuning_bert_vs_peft, 0, (int)ARRAY_LEN(pb_cases));
    tcase_add_test(tc, test_ptuning_bert_manifest);
    tcase_add_loop_test(tc, test_ptuning_bert_documented_layout, 0, (int)ARRAY_LEN(pb_cases));
    tcase_add_test(tc, test_ptuning_bert_errors);
    suite_add_tcase(s, tc);
    return s;
}
