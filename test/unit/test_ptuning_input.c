/*
 * P-tuning on the shared stack (examples/common/ptuning_input.c) against
 * Hugging Face PEFT 0.21 on transformers' GPT2LMHeadModel
 * (test/oracle/gen_peft_ptuning.py: random small GPT-2 configurations
 * saved with save_pretrained, get_peft_model(PromptEncoderConfig(
 * task_type="CAUSAL_LM", ...)) with an LSTM and an MLP encoder, a batch
 * with labels, an ignored label and a padded row):
 *
 *  - prefix mode: the encoder's output, the logits, the loss and every
 *    encoder gradient equal PEFT's (PeftModelForCausalLM's own forward);
 *  - template mode (PEFT has none): the same against the PromptEncoder's
 *    output interleaved by hand in Python as ptuning_input.h documents,
 *    and bitwise against an input built by hand here from the documented
 *    positions (forward and the gathered prompt gradient);
 *  - the frozen model: no gradient reaches any of its parameters, its
 *    parameters hold no gradient buffers (tfm_freeze()'s count of bytes
 *    still held is 0), the optimizer holds
 *    state for the encoder only;
 *  - export: ptin_export_peft() after two training steps loads with
 *    PeftModel.from_pretrained (test/oracle/peft_ptuning_verify.py, run
 *    from here) and gives our logits; our logits from the exported
 *    prompts alone equal those through the encoder bitwise;
 *  - resume: 3 steps, tb_checkpoint_save() of the encoder with its AdamW
 *    state and stream, a fresh encoder loaded from it, 3 more steps: equal
 *    bitwise (parameters, moments, loss) to 6 uninterrupted steps, with
 *    the encoder's LSTM dropout drawing from the stream.
 *
 * ---- Tolerances -----------------------------------------------------------
 * |got - want| <= atol + rtol |want| against float32 PEFT and against the
 * same PEFT model in float64, per tensor:
 *   prompts and logits: rtol 1e-4, atol 1e-4 max|want| (test_gpt.c's, for
 *     the same model: float32 rounding through the layers);
 *   loss: 1e-5 relative;
 *   encoder gradients: the same, rtol 1e-4, atol 1e-4 max|want| of each
 *     tensor: the gradient crosses the whole stack backward, then the
 *     encoder (the BiLSTM's backward through time), and still stays
 *     within ~1e-6 of the scale of float64 PEFT (measured: <= 5.1e-7),
 *     like float32 PEFT; a wiring error (a virtual position missed, a row
 *     not summed, a label shifted) changes whole rows by O(1) of the scale.
 * The tolerance is test_gpt.c's for the same model; it leaves ~200x margin
 * over the measured errors on every kernel family.
 * Measured maxima are printed.
 */
#define _POSIX_C_SOURCE 200809L /* getpid, mkdtemp */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpt.h"
#include "ptuning_input.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const pt_cases[] = {"ptin_lstm_c32", "ptin_mlp_c48", "ptin_tpl_lstm_c32",
                                       "ptin_tpl_mlp_c48"};

#define GRAD_RTOL 1e-4
#define GRAD_ATOL_REL 1e-4
#define OUT_RTOL 1e-4
#define OUT_ATOL_REL 1e-4

/* One case: the base model (frozen), the encoder with PEFT's initial values,
 * the batch and the buffers. */
typedef struct fixture {
    tbt_ref *ref;
    const char *name;
    tb_ctx ctx;
    gpt m;
    size_t kept_grad_bytes;
    tb_ptuning enc;
    tb_ptuning_config ecfg;
    tb_param_list enc_params; /* PEFT's names without a prefix */
    ptin_template tpl;
    ptin p;
    gpt_acts a;
    size_t B, L, n, d, V, T;
    const int32_t *ids, *labels;
    uint8_t *mask;
    size_t *cuts; /* NULL for prefix mode */
} fixture;

static void fixture_init(fixture *f, const char *name, float enc_dropout)
{
    memset(f, 0, sizeof *f);
    f->name = name;
    f->ref = tbt_ref_load(name);
    tbt_ctx_init(&f->ctx, 2);
    tb_ctx *ctx = &f->ctx;
    const tbt_ref *ref = f->ref;
    gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = (size_t)tbt_ref_i32_scalar(ref, "n_layer");
    c.n_head = (size_t)tbt_ref_i32_scalar(ref, "n_head");
    c.n_embd = (size_t)tbt_ref_i32_scalar(ref, "n_embd");
    c.block_size = (size_t)tbt_ref_i32_scalar(ref, "block_size");
    c.vocab_size = (size_t)tbt_ref_i32_scalar(ref, "vocab");
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(*ctx, gpt_init(ctx, &f->m, &c, &rng));
    char path[700];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", getenv("TB_ORACLE_DIR"), name);
    CHECK_OK(*ctx, gpt_load_weights(ctx, &f->m, path));
    CHECK_OK(*ctx, tfm_freeze(ctx, &f->m.t, &f->kept_grad_bytes));
    f->n = (size_t)tbt_ref_i32_scalar(ref, "n_virtual");
    f->d = c.n_embd, f->V = c.vocab_size;
    f->ecfg.num_virtual_tokens = f->n;
    f->ecfg.token_dim = f->d;
    f->ecfg.encoder_hidden_size = (size_t)tbt_ref_i32_scalar(ref, "hidden");
    f->ecfg.encoder_num_layers = (size_t)tbt_ref_i32_scalar(ref, "enc_layers");
    f->ecfg.type = tbt_ref_i32_scalar(ref, "lstm") ? TB_PTUNING_LSTM : TB_PTUNING_MLP;
    f->ecfg.encoder_dropout = enc_dropout;
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
    size_t nids;
    f->ids = tbt_ref_i32(ref, "ids", &nids);
    f->labels = tbt_ref_i32(ref, "labels", &nids);
    const tbt_reft lg = tbt_ref_get(ref, "logits");
    f->B = lg.shape[0], f->T = lg.shape[1], f->L = f->T - f->n;
    ck_assert_uint_eq(nids, f->B * f->L);
    const int32_t *m32 = tbt_ref_i32(ref, "mask", &nids);
    f->mask = tbt_alloc(nids);
    for (size_t i = 0; i < nids; i++)
        f->mask[i] = (uint8_t)(m32[i] != 0);
    if (tbt_ref_has(ref, "groups")) {
        size_t G;
        const int32_t *g = tbt_ref_i32(ref, "groups", &G);
        ck_assert(G >= 2 && G <= PTIN_MAX_GROUPS);
        f->tpl.n_groups = G;
        for (size_t i = 0; i < G; i++)
            f->tpl.groups[i] = (size_t)g[i];
        if (G > 2) {
            size_t nc;
            const int32_t *c32 = tbt_ref_i32(ref, "cuts", &nc);
            ck_assert_uint_eq(nc, f->B * (G - 2));
            f->cuts = tbt_alloc(nc * sizeof(size_t));
            for (size_t i = 0; i < nc; i++)
                f->cuts[i] = (size_t)c32[i];
        }
    } else {
        f->tpl = ptin_prefix(f->n);
    }
    CHECK_OK(*ctx, ptin_init(ctx, &f->p, &f->tpl, f->d, f->B, f->L, &f->enc));
    CHECK_OK(*ctx, gpt_acts_init(ctx, &f->a, &f->m, f->B, f->T));
}

static void fixture_free(fixture *f)
{
    gpt_acts_free(&f->a);
    ptin_free(&f->p);
    tb_param_list_free(&f->enc_params);
    tb_ptuning_free(&f->enc);
    gpt_free(&f->m);
    free(f->mask);
    free(f->cuts);
    tbt_ref_free(f->ref);
}

static void forward(fixture *f, tb_mode mode, tb_rng *rng, float *loss)
{
    CHECK_OK(f->ctx, ptin_gpt_forward(&f->ctx, &f->m, &f->a, &f->p, &f->enc, mode, rng, f->ids,
                                      f->mask, f->labels, f->cuts, f->B, f->L, loss));
}

/* Every parameter of the frozen model: no gradient buffer (projections) or
 * an untouched all-zero one (embeddings, norms); returns the bytes held. */
static size_t assert_model_untouched(const fixture *f)
{
    size_t held = 0, released = 0;
    for (size_t i = 0; i < f->m.params.count; i++) {
        const tb_named_param *np = &f->m.params.items[i];
        const tb_param *q = np->param;
        ck_assert_msg(!q->trainable, "%s is trainable", np->name);
        if (!q->grad) {
            released++;
            continue;
        }
        held += q->numel * sizeof(float);
        for (size_t j = 0; j < q->numel; j++)
            ck_assert_msg(q->grad[j] == 0.0f, "%s.grad[%zu] = %g: the frozen model got a gradient",
                          np->name, j, (double)q->grad[j]);
    }
    /* Every parameter released its gradient: per layer the four Linears'
     * weight and bias and the two LayerNorms' weight and bias, the two
     * embeddings (wte, wpe) and ln_f's weight and bias. */
    ck_assert_uint_eq(released, 12 * f->m.cfg.n_layer + 4);
    return held;
}

START_TEST(test_ptuning_input_vs_peft)
{
    fixture f;
    fixture_init(&f, pt_cases[_i], 0.0f);
    const char *name = f.name;
    float loss;
    forward(&f, TB_MODE_TRAINING, NULL, &loss);
    char lbl[300];
    snprintf(lbl, sizeof lbl, "%s.prompts", name);
    const double e_pr = tbt_assert_close_f32_f64(lbl, f.p.prompts, tbt_ref_get(f.ref, "prompts").data,
                                 tbt_ref_get(f.ref, "prompts_f64").data, f.n * f.d, OUT_RTOL,
                                 OUT_ATOL_REL);
    snprintf(lbl, sizeof lbl, "%s.logits", name);
    const double e_lo = tbt_assert_close_f32_f64(lbl, f.a.logits, tbt_ref_get(f.ref, "logits").data,
                                 tbt_ref_get(f.ref, "logits_f64").data, f.B * f.T * f.V, OUT_RTOL,
                                 OUT_ATOL_REL);
    const float want32 = tbt_ref_scalar(f.ref, "loss"), want64 = tbt_ref_scalar(f.ref, "loss_f64");
    ck_assert_msg(fabsf(loss - want64) <= 1e-5f * fabsf(want64) &&
                      fabsf(loss - want32) <= 1e-5f * fabsf(want32),
                  "%s: loss %.8f, PEFT %.8f (float64 %.8f)", name, (double)loss, (double)want32,
                  (double)want64);
    tb_param_list_zero_grad(&f.enc_params);
    CHECK_OK(f.ctx, ptin_gpt_backward(&f.ctx, &f.m, &f.a, &f.p, &f.enc, 1.0f));
    double e_g = 0.0;
    for (size_t i = 0; i < f.enc_params.count; i++) {
        const tb_named_param *np = &f.enc_params.items[i];
        char k32[200], k64[200];
        snprintf(k32, sizeof k32, "g:%s", np->name);
        snprintf(k64, sizeof k64, "g64:%s", np->name);
        const tbt_reft g32 = tbt_ref_get(f.ref, k32), g64 = tbt_ref_get(f.ref, k64);
        ck_assert_uint_eq(g32.n, np->param->numel);
        snprintf(lbl, sizeof lbl, "%s.grad.%s", name, np->name);
        e_g = fmax(e_g, tbt_assert_close_f32_f64(lbl, np->param->grad, g32.data, g64.data, g32.n, GRAD_RTOL,
                                 GRAD_ATOL_REL));
    }
    /* Nothing reached the model, and it holds no gradient buffer at all
     * (projections, embeddings and LayerNorms released theirs). */
    const size_t held = assert_model_untouched(&f);
    ck_assert_uint_eq(held, f.kept_grad_bytes);
    ck_assert_uint_eq(held, 0);
    ck_assert_ptr_null(f.m.t.wte.weight.grad);
    ck_assert_ptr_null(f.m.t.wpe.weight.grad);
    /* An optimizer on the encoder's list: state for the encoder only. */
    tb_adam opt;
    const tb_adam_config acfg = tb_adamw_default_config();
    CHECK_OK(f.ctx, tb_adam_init(&f.ctx, &opt, &f.enc_params, &acfg));
    ck_assert_uint_eq(opt.n_slots, f.enc_params.count);
    ck_assert_uint_eq(opt.n_state, tb_param_list_numel(&f.enc_params, 1));
    ck_assert_uint_eq(tb_adam_state_bytes(&opt), 2 * opt.n_state * sizeof(float) +
                                                     opt.n_slots * sizeof(tb_adam_slot));
    tb_adam_free(&opt);
    printf("  check   %-18s %s %s: prompts %.2e, logits %.2e, %zu encoder gradients %.2e (of "
           "each tensor's scale, vs float64); loss %.6f vs PEFT %.6f (|diff| %.1e); frozen model holds %zu "
           "gradient bytes (embeddings, norms), none of it touched\n",
           name, f.ecfg.type == TB_PTUNING_LSTM ? "LSTM" : "MLP",
           f.cuts || f.tpl.groups[1] ? "template" : "prefix", e_pr, e_lo, f.enc_params.count,
           e_g, (double)loss, (double)want64, fabs((double)loss - (double)want64), held);
    fixture_free(&f);
}
END_TEST

START_TEST(test_ptuning_input_manifest)
{
    const tbt_names l = {pt_cases, ARRAY_LEN(pt_cases)};
    ck_assert_uint_eq(
        tbt_check_manifest("ptuning_input_cases.txt", "test_ptuning_input.c", tbt_name_listed, &l),
        ARRAY_LEN(pt_cases));
}
END_TEST

/* The documented positions, written out here independently of
 * ptin_build(): virtual token V_i + k at V_i + c_i + k, real token t of
 * segment i at t + V_{i+1}. pos_of_virtual (n) and pos_of_real (L) for row b. */
static void documented_positions(const fixture *f, size_t b, size_t *pos_v, size_t *pos_r)
{
    const size_t G = f->tpl.n_groups;
    size_t V = 0;
    for (size_t i = 0; i < G; i++) {
        const size_t ci = i == 0 ? 0 : (i + 1 < G ? f->cuts[b * (G - 2) + i - 1] : f->L);
        for (size_t k = 0; k < f->tpl.groups[i]; k++)
            pos_v[V + k] = V + ci + k;
        V += f->tpl.groups[i];
        if (i + 1 < G) {
            const size_t c1 = i + 2 < G ? f->cuts[b * (G - 2) + i] : f->L;
            for (size_t t = ci; t < c1; t++)
                pos_r[t] = t + V;
        }
    }
}

/* Template and prefix mode against an input built by hand: the same logits
 * bitwise, and the prompt gradient gathered by hand from d_embeds equals
 * ptin's bitwise; the virtual rows hold the encoder's output exactly. */
START_TEST(test_ptuning_input_documented_positions)
{
    fixture f;
    fixture_init(&f, pt_cases[_i], 0.0f);
    const size_t B = f.B, T = f.T, C = f.d, n = f.n, L = f.L, V = f.V;
    float loss;
    forward(&f, TB_MODE_TRAINING, NULL, &loss);
    float *logits = tbt_alloc(B * T * V * sizeof(float));
    memcpy(logits, f.a.logits, B * T * V * sizeof(float));
    CHECK_OK(f.ctx, ptin_gpt_backward(&f.ctx, &f.m, &f.a, &f.p, &f.enc, 1.0f));
    float *dp = tbt_alloc(n * C * sizeof(float));
    memcpy(dp, f.p.d_prompts, n * C * sizeof(float));
    /* By hand. */
    float *emb = tbt_alloc(B * T * C * sizeof(float)), *demb = tbt_alloc(B * T * C * sizeof(float));
    uint8_t *kv = tbt_alloc(B * T);
    int32_t *tg = tbt_alloc(B * T * sizeof(int32_t)), *ext = tbt_alloc(B * T * sizeof(int32_t));
    size_t *pv = tbt_alloc(B * n * sizeof(size_t)), *pr = tbt_alloc(B * L * sizeof(size_t));
    size_t virt_rows = 0;
    for (size_t b = 0; b < B; b++) {
        documented_positions(&f, b, pv + b * n, pr + b * L);
        for (size_t v = 0; v < n; v++) {
            const size_t j = pv[b * n + v];
            ck_assert_uint_lt(j, T);
            memcpy(emb + (b * T + j) * C, f.p.prompts + v * C, C * sizeof(float));
            kv[b * T + j] = 1;
            ext[b * T + j] = -100;
            /* ptin's input holds the encoder's output there, exactly. */
            ck_assert(memcmp(f.p.embeds + (b * T + j) * C, f.p.prompts + v * C,
                             C * sizeof(float)) == 0);
            virt_rows++;
        }
        for (size_t t = 0; t < L; t++) {
            const size_t j = pr[b * L + t];
            memcpy(emb + (b * T + j) * C,
                   f.m.t.wte.weight.value + (size_t)f.ids[b * L + t] * C, C * sizeof(float));
            kv[b * T + j] = f.mask[b * L + t];
            ext[b * T + j] = f.labels[b * L + t];
        }
        for (size_t j = 0; j + 1 < T; j++)
            tg[b * T + j] = ext[b * T + j + 1];
        tg[b * T + T - 1] = -100;
    }
    const tfm_input in = {B, T, NULL, emb, NULL, kv};
    float loss2;
    CHECK_OK(f.ctx, gpt_forward_input(&f.ctx, &f.m, &f.a, TB_MODE_TRAINING, NULL, &in, tg, &loss2));
    ck_assert_msg(memcmp(logits, f.a.logits, B * T * V * sizeof(float)) == 0,
                  "%s: logits differ from the hand-built input's", f.name);
    ck_assert(loss == loss2);
    CHECK_OK(f.ctx, gpt_backward_embeds(&f.ctx, &f.m, &f.a, tg, 1.0f, demb));
    float *dp2 = tbt_alloc(n * C * sizeof(float));
    for (size_t b = 0; b < B; b++)
        for (size_t v = 0; v < n; v++)
            for (size_t c = 0; c < C; c++)
                dp2[v * C + c] += demb[(b * T + pv[b * n + v]) * C + c];
    ck_assert_msg(memcmp(dp, dp2, n * C * sizeof(float)) == 0,
                  "%s: the prompt gradient differs from the hand-gathered one", f.name);
    ck_assert(tbt_max_abs_f(dp, n * C) > 0.0);
    assert_model_untouched(&f);
    printf("  check   %-18s %zu virtual rows at the documented positions; logits and the prompt "
           "gradient equal the hand-built input's bitwise\n",
           f.name, virt_rows);
    free(logits), free(dp), free(dp2), free(emb), free(demb), free(kv), free(tg), free(ext);
    free(pv), free(pr);
    fixture_free(&f);
}
END_TEST

/* Two AdamW steps, export, PEFT loads it and gives our logits; our logits
 * from the exported prompts alone equal those through the encoder. */
START_TEST(test_ptuning_input_export_loads_in_peft)
{
    fixture f;
    fixture_init(&f, pt_cases[_i], 0.0f);
    const size_t B = f.B, T = f.T, C = f.d, n = f.n, V = f.V;
    tb_adam opt;
    tb_adam_config acfg = tb_adamw_default_config();
    acfg.lr = 1e-2f;
    CHECK_OK(f.ctx, tb_adam_init(&f.ctx, &opt, &f.enc_params, &acfg));
    float loss;
    for (int s = 0; s < 2; s++) {
        tb_param_list_zero_grad(&f.enc_params);
        forward(&f, TB_MODE_TRAINING, NULL, &loss);
        CHECK_OK(f.ctx, ptin_gpt_backward(&f.ctx, &f.m, &f.a, &f.p, &f.enc, 1.0f));
        CHECK_OK(f.ctx, tb_adam_step(&f.ctx, &opt, 1.0f));
    }
    tb_adam_free(&opt);
    forward(&f, TB_MODE_INFERENCE, NULL, &loss);
    float *logits = tbt_alloc(B * T * V * sizeof(float)), *prompts = tbt_alloc(n * C * sizeof(float));
    memcpy(logits, f.a.logits, B * T * V * sizeof(float));
    memcpy(prompts, f.p.prompts, n * C * sizeof(float));
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "/tmp/tb_ptin_%d_%s", (int)getpid(), f.name);
    const ptin_peft_info info = {f.m.cfg.n_head, f.m.cfg.n_layer, "CAUSAL_LM", NULL};
    CHECK_OK(f.ctx, ptin_export_peft(&f.ctx, dir, prompts, &f.ecfg, &info));
    /* Inference without the encoder: a ptin made without one, its prompts
     * loaded from the file. */
    ptin q;
    CHECK_OK(f.ctx, ptin_init(&f.ctx, &q, &f.tpl, C, B, f.L, NULL));
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK_OK(f.ctx, ptin_load_prompts(&f.ctx, path, q.prompts, n, C));
    ck_assert(memcmp(q.prompts, prompts, n * C * sizeof(float)) == 0);
    ck_assert_int_eq(ptin_load_prompts(&f.ctx, path, q.prompts, n + 1, C), TB_ERR_SHAPE);
    CHECK_OK(f.ctx, ptin_gpt_forward(&f.ctx, &f.m, &f.a, &q, NULL, TB_MODE_INFERENCE, NULL, f.ids,
                                     f.mask, NULL, f.cuts, B, f.L, NULL));
    ck_assert_msg(memcmp(logits, f.a.logits, B * T * V * sizeof(float)) == 0,
                  "logits from the exported prompts differ from those through the encoder");
    /* The trained prompts differ from the initial ones (the check below is
     * not of PEFT's own initial adapter). */
    ck_assert(memcmp(prompts, tbt_ref_get(f.ref, "prompts").data, n * C * sizeof(float)) != 0);
    /* The file's fields, as PEFT writes them. */
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *fp = fopen(path, "r");
    ck_assert(fp != NULL);
    char text[4096];
    const size_t len = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[len] = 0;
    char want[128];
    snprintf(want, sizeof want, "\"num_virtual_tokens\": %zu,", n);
    ck_assert_msg(strstr(text, "\"peft_type\": \"P_TUNING\"") && strstr(text, want) &&
                      strstr(text, "\"inference_mode\": true") &&
                      strstr(text, "\"task_type\": \"CAUSAL_LM\""),
                  "%s", text);
    /* PEFT's own check, from the exported files and our logits. */
    float *ids = tbt_alloc(B * f.L * sizeof(float)), *mask = tbt_alloc(B * f.L * sizeof(float));
    for (size_t i = 0; i < B * f.L; i++)
        ids[i] = (float)f.ids[i], mask[i] = (float)f.mask[i];
    const size_t sh_in[2] = {B, f.L}, sh_lo[3] = {B, T, V};
    const tb_st_entry e[3] = {
        {"ids", ids, 2, sh_in}, {"mask", mask, 2, sh_in}, {"logits", logits, 3, sh_lo}};
    char io[512];
    snprintf(io, sizeof io, "%s/io.safetensors", dir);
    CHECK_OK(f.ctx, tb_st_save(&f.ctx, io, e, 3, NULL, 0));
    ck_assert_msg(access("test/oracle/peft_ptuning_verify.py", R_OK) == 0,
                  "run the tests from the source tree (make check)");
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "python3 test/oracle/peft_ptuning_verify.py '%s/%s' '%s' '%s'",
             getenv("TB_ORACLE_DIR"), f.name, dir, io);
    fflush(stdout);
    const int rc = system(cmd);
    ck_assert_msg(rc == 0, "PEFT rejected the export in %s or gave other logits (status %d)", dir,
                  rc);
    remove(io);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    remove(path);
    rmdir(dir);
    free(ids), free(mask), free(logits), free(prompts);
    ptin_free(&q);
    fixture_free(&f);
}
END_TEST

/* One training step: zero, forward, backward, AdamW. */
static void train_step(fixture *f, tb_adam *opt, tb_rng *rng, float *loss)
{
    tb_param_list_zero_grad(&f->enc_params);
    forward(f, TB_MODE_TRAINING, rng, loss);
    CHECK_OK(f->ctx, ptin_gpt_backward(&f->ctx, &f->m, &f->a, &f->p, &f->enc, 1.0f));
    CHECK_OK(f->ctx, tb_adam_step(&f->ctx, opt, 1.0f));
}

START_TEST(test_ptuning_input_resume_is_bitwise)
{
    /* LSTM dropout 0.25 between its two layers: every step draws from rng. */
    fixture a, b;
    fixture_init(&a, "ptin_lstm_c32", 0.25f);
    fixture_init(&b, "ptin_lstm_c32", 0.25f);
    tb_adam_config acfg = tb_adamw_default_config();
    acfg.lr = 3e-3f;
    tb_adam oa, ob;
    CHECK_OK(a.ctx, tb_adam_init(&a.ctx, &oa, &a.enc_params, &acfg));
    CHECK_OK(b.ctx, tb_adam_init(&b.ctx, &ob, &b.enc_params, &acfg));
    tb_rng ra, rb;
    tb_rng_init(&ra, 77);
    tb_rng_init(&rb, 77);
    float la = 0, lb = 0;
    for (int s = 0; s < 6; s++)
        train_step(&a, &oa, &ra, &la);
    for (int s = 0; s < 3; s++)
        train_step(&b, &ob, &rb, &lb);
    /* Save under PEFT's state-dict names; resume into a fresh encoder with
     * other values, a fresh optimizer and another stream. */
    tb_param_list named;
    CHECK_OK(b.ctx, tb_param_list_init(&b.ctx, &named));
    CHECK_OK(b.ctx, tb_ptuning_params(&b.ctx, &b.enc, PTIN_PEFT_PREFIX, &named));
    char path[256];
    snprintf(path, sizeof path, "/tmp/tb_ptin_resume_%d.safetensors", (int)getpid());
    CHECK_OK(b.ctx, tb_checkpoint_save(&b.ctx, path, &named, &ob, &rb, NULL, 0, TB_CKPT_DEFAULT));
    ck_assert_msg(tb_param_list_find(&named, PTIN_PEFT_PREFIX ".lstm_head.weight_hh_l1_reverse") !=
                      NULL,
                  "PEFT's names");
    tb_param_list_free(&named);
    tb_adam_free(&ob);
    tb_param_list_free(&b.enc_params);
    tb_ptuning_free(&b.enc);
    tb_rng other;
    tb_rng_init(&other, 999);
    CHECK_OK(b.ctx, tb_ptuning_init(&b.ctx, &b.enc, &b.ecfg, &other));
    CHECK_OK(b.ctx, tb_param_list_init(&b.ctx, &b.enc_params));
    CHECK_OK(b.ctx, tb_ptuning_params(&b.ctx, &b.enc, NULL, &b.enc_params));
    CHECK_OK(b.ctx, tb_param_list_init(&b.ctx, &named));
    CHECK_OK(b.ctx, tb_ptuning_params(&b.ctx, &b.enc, PTIN_PEFT_PREFIX, &named));
    CHECK_OK(b.ctx, tb_adam_init(&b.ctx, &ob, &b.enc_params, &acfg));
    tb_rng_init(&rb, 12345);
    CHECK_OK(b.ctx, tb_checkpoint_load(&b.ctx, path, &named, &ob, &rb, TB_CKPT_DEFAULT));
    tb_param_list_free(&named);
    remove(path);
    for (int s = 0; s < 3; s++)
        train_step(&b, &ob, &rb, &lb);
    ck_assert_msg(memcmp(&la, &lb, sizeof la) == 0, "last loss %.9g vs resumed %.9g", (double)la,
                  (double)lb);
    size_t floats = 0;
    for (size_t i = 0; i < a.enc_params.count; i++) {
        const tb_param *pa = a.enc_params.items[i].param, *pb = b.enc_params.items[i].param;
        ck_assert_msg(memcmp(pa->value, pb->value, pa->numel * sizeof(float)) == 0,
                      "%s differs after resuming", a.enc_params.items[i].name);
        floats += pa->numel;
    }
    ck_assert_uint_eq(oa.n_state, ob.n_state);
    ck_assert(oa.step == 6 && ob.step == 6);
    ck_assert(memcmp(oa.m, ob.m, oa.n_state * sizeof(float)) == 0);
    ck_assert(memcmp(oa.v, ob.v, oa.n_state * sizeof(float)) == 0);
    ck_assert(ra.key == rb.key && ra.counter == rb.counter);
    printf("  check   resume: 3 + 3 AdamW steps through a checkpoint (LSTM dropout 0.25) equal 6 "
           "uninterrupted bitwise: %zu encoder values, both moments, the stream, loss %.6f\n",
           floats, (double)la);
    tb_adam_free(&oa);
    tb_adam_free(&ob);
    fixture_free(&a);
    fixture_free(&b);
}
END_TEST

START_TEST(test_ptuning_input_errors)
{
    fixture f;
    fixture_init(&f, "ptin_tpl_mlp_c48", 0.0f);
    tb_ctx *ctx = &f.ctx;
    /* Cuts out of order, past L, missing; an id outside the vocabulary;
     * a batch beyond the buffers: refused with nothing built. */
    size_t bad[4] = {5, 2, 4, 4};
    ck_assert_int_eq(ptin_build(ctx, &f.p, &f.m.t.wte, f.p.prompts, f.ids, f.mask, f.labels, bad,
                                f.B, f.L),
                     TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(ctx), "row 0") != NULL, "%s", tb_ctx_error(ctx));
    size_t past[4] = {2, 5, 4, 10};
    ck_assert_int_eq(ptin_build(ctx, &f.p, &f.m.t.wte, f.p.prompts, f.ids, f.mask, f.labels, past,
                                f.B, f.L),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(ptin_build(ctx, &f.p, &f.m.t.wte, f.p.prompts, f.ids, f.mask, f.labels, NULL,
                                f.B, f.L),
                     TB_ERR_NULL_ARG);
    int32_t *ids = tbt_alloc(f.B * f.L * sizeof(int32_t));
    memcpy(ids, f.ids, f.B * f.L * sizeof(int32_t));
    ids[f.L + 3] = (int32_t)f.V;
    ck_assert_int_eq(ptin_build(ctx, &f.p, &f.m.t.wte, f.p.prompts, ids, f.mask, f.labels, f.cuts,
                                f.B, f.L),
                     TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(ctx), "row 1, token 3") != NULL, "%s", tb_ctx_error(ctx));
    ck_assert_int_eq(ptin_build(ctx, &f.p, &f.m.t.wte, f.p.prompts, f.ids, f.mask, f.labels,
                                f.cuts, f.B + 1, f.L),
                     TB_ERR_SHAPE);
    ck_assert_uint_eq(f.p.b, 0); /* nothing built */
    ck_assert_int_eq(ptin_gather(ctx, &f.p, f.p.d_embeds), TB_ERR_STATE);
    /* Templates: fewer than 2 groups, or an encoder of another size. */
    ptin q;
    ptin_template one = {1, {f.n}};
    ck_assert_int_eq(ptin_init(ctx, &q, &one, f.d, 1, 1, NULL), TB_ERR_INVALID_ARG);
    ptin_template other = ptin_prefix(f.n + 1);
    ck_assert_int_eq(ptin_init(ctx, &q, &other, f.d, 1, 1, &f.enc), TB_ERR_SHAPE);
    /* Backward after a forward without labels. */
    CHECK_OK(*ctx, ptin_gpt_forward(ctx, &f.m, &f.a, &f.p, &f.enc, TB_MODE_TRAINING, NULL, f.ids,
                                    f.mask, NULL, f.cuts, f.B, f.L, NULL));
    ck_assert_int_eq(ptin_gpt_backward(ctx, &f.m, &f.a, &f.p, &f.enc, 1.0f), TB_ERR_STATE);
    free(ids);
    fixture_free(&f);
}
END_TEST

Suite *suite_ptuning_input(void)
{
    Suite *s = suite_create("ptuning_input");
    TCase *tc = tcase_create("peft");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_ptuning_input_vs_peft, 0, (int)ARRAY_LEN(pt_cases));
    tcase_add_test(tc, test_ptuning_input_manifest);
    tcase_add_loop_test(tc, test_ptuning_input_documented_positions, 0, (int)ARRAY_LEN(pt_cases));
    tcase_add_loop_test(tc, test_ptuning_input_export_loads_in_peft, 0, 2); /* prefix cases: PEFT has no templates */
    tcase_add_test(tc, test_ptuning_input_resume_is_bitwise);
    tcase_add_test(tc, test_ptuning_input_errors);
    suite_add_tcase(s, tc);
    return s;
}
