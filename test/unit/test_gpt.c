/*
 * The GPT-style model of the examples (examples/common/gpt.c) against the
 * real GPT-2: transformers' GPT2LMHeadModel with random weights, saved with
 * save_pretrained as safetensors (test/oracle/gen_gpt.py) and loaded here by
 * name. For two small configurations: logits and loss, every parameter
 * gradient (the tied wte gradient included), and every parameter after 3
 * AdamW steps; for the real 124M configuration: logits and loss. Also:
 * incremental decoding with the KV cache equals the full forward pass,
 * beam reordering, and files of another configuration are refused.
 *
 * ---- Tolerances -----------------------------------------------------------
 * Each quantity is compared with float32 PyTorch and with the same model in
 * float64 (the *_f64 / g64 references): |got - want| <= atol + rtol |want|
 * with rtol 1e-4 and atol = 1e-4 * max|want| of that tensor (logits, each
 * gradient); parameters after AdamW: see the comment at that check. A transformer's
 * float32 rounding grows through the layers (LayerNorm divides by the
 * standard deviation, attention exponentiates): float32 PyTorch itself
 * differs from float64 by up to ~1e-5 of the tensor's scale here. A wrong
 * wiring (a missing residual, an untied head, a wrong layout or mask)
 * changes results by O(1) of the scale. Measured maxima are printed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const gpt_cases[] = {"gpt_l2_h3_c24_v37", "gpt_l3_h4_c32_v61", "gpt_124m"};

static double max_abs(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
    return m;
}

/* got vs want (float32 torch) and want64 (float64 torch), scaled tolerance;
 * returns the largest |got - want64| / max|want64|. */
static double compare2(const char *label, const float *got, const float *want,
                       const float *want64, size_t n, double rtol, double atol_rel, double atol_abs)
{
    const double scale = max_abs(want64, n);
    const double atol = atol_abs > 0 ? atol_abs : atol_rel * scale;
    char l2[256];
    tbt_assert_close(label, got, want, n, rtol, atol);
    snprintf(l2, sizeof l2, "%s_vs_f64", label);
    tbt_assert_close(l2, got, want64, n, rtol, atol);
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)got[i] - (double)want64[i]));
    return scale > 0 ? worst / scale : worst;
}

static void model_of(tb_ctx *ctx, const tbt_ref *ref, gpt *m, const char *name)
{
    gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = (size_t)tbt_ref_i32_scalar(ref, "n_layer");
    c.n_head = (size_t)tbt_ref_i32_scalar(ref, "n_head");
    c.n_embd = (size_t)tbt_ref_i32_scalar(ref, "n_embd");
    c.block_size = (size_t)tbt_ref_i32_scalar(ref, "block_size");
    c.vocab_size = (size_t)tbt_ref_i32_scalar(ref, "vocab");
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(*ctx, gpt_init(ctx, m, &c, &rng));
    char path[600];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", getenv("TB_ORACLE_DIR"), name);
    CHECK_OK(*ctx, gpt_load_weights(ctx, m, path));
}

START_TEST(test_gpt_vs_gpt2lmheadmodel)
{
    const char *name = gpt_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    gpt m;
    model_of(&ctx, ref, &m, name);
    tbt_reft tok = tbt_ref_get(ref, "logits");
    const size_t B = tok.shape[0], T = tok.shape[1], V = m.cfg.vocab_size;
    size_t nt;
    const int32_t *tokens = tbt_ref_i32(ref, "tokens", &nt);
    const int32_t *targets = tbt_ref_i32(ref, "targets", &nt);
    ck_assert_uint_eq(nt, B * T);
    gpt_acts a;
    CHECK_OK(ctx, gpt_acts_init(&ctx, &a, &m, B, T));
    float loss;
    CHECK_OK(ctx, gpt_forward(&ctx, &m, &a, TB_MODE_TRAINING, NULL, tokens, targets, B, T, &loss));
    char lbl[256];
    snprintf(lbl, sizeof lbl, "%s.logits", name);
    const double e_logits = compare2(lbl, a.logits, tok.data, tbt_ref_get(ref, "logits_f64").data,
                                     B * T * V, 1e-4, 1e-4, 0);
    const float want_loss = tbt_ref_scalar(ref, "loss_f64");
    ck_assert_msg(fabsf(loss - want_loss) <= 1e-5f * fabsf(want_loss), "%s: loss %.7f, torch %.7f",
                  name, (double)loss, (double)want_loss);
    double e_grad = 0.0, e_after = 0.0;
    size_t n_grads = 0;
    if (tbt_ref_has(ref, "g:wte.weight")) {
        tb_param_list_zero_grad(&m.params);
        CHECK_OK(ctx, gpt_backward(&ctx, &m, &a, tokens, targets, 1.0f));
        for (size_t i = 0; i < m.params.count; i++) {
            const tb_named_param *np = &m.params.items[i];
            char k32[200], k64[200];
            snprintf(k32, sizeof k32, "g:%s", np->name);
            snprintf(k64, sizeof k64, "g64:%s", np->name);
            tbt_reft g32 = tbt_ref_get(ref, k32), g64 = tbt_ref_get(ref, k64);
            ck_assert_uint_eq(g32.n, np->param->numel);
            snprintf(lbl, sizeof lbl, "%s.grad.%s", name, np->name);
            e_grad = fmax(e_grad, compare2(lbl, np->param->grad, g32.data, g64.data, g32.n, 1e-4,
                                           1e-4, 0));
            n_grads++;
        }
        /* 3 AdamW steps as torch.optim.AdamW(lr=1e-3, weight_decay=0.01). */
        tb_adam_config cfg = tb_adamw_default_config();
        cfg.lr = 1e-3f;
        tb_adam opt;
        CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &m.params, &cfg));
        for (int s = 0; s < 3; s++) {
            CHECK_OK(ctx, tb_adam_step(&ctx, &opt, 1.0f));
            tb_param_list_zero_grad(&m.params);
            CHECK_OK(ctx,
                     gpt_forward(&ctx, &m, &a, TB_MODE_TRAINING, NULL, tokens, targets, B, T, &loss));
            CHECK_OK(ctx, gpt_backward(&ctx, &m, &a, tokens, targets, 1.0f));
        }
        /* The key bias's gradient is exactly zero (a constant added to every
         * key's score cancels in the softmax: float64 torch gives <= 1e-9 of
         * the tensor's scale there, checked below); both sides hold only
         * rounding noise, which Adam scales up to steps of up to lr, so
         * those elements (c_attn.bias[C, 2C)) may differ by 3 lr. Every
         * other element: 1e-5 |p| + 3e-3 lr (3 steps, each off by at most
         * 1e-3 of a step: Adam divides by sqrt(v), so an element whose
         * gradient is small against its tensor carries a larger relative
         * rounding error into its step; a wrong update is off by O(lr)). */
        const size_t C = m.cfg.n_embd;
        for (size_t i = 0; i < m.params.count; i++) {
            const tb_named_param *np = &m.params.items[i];
            char k[200], kg[200];
            snprintf(k, sizeof k, "after3:%s", np->name);
            snprintf(kg, sizeof kg, "g64:%s", np->name);
            tbt_reft w = tbt_ref_get(ref, k), g64 = tbt_ref_get(ref, kg);
            const double gscale = max_abs(g64.data, g64.n);
            const size_t nl = strlen(np->name);
            const int is_qkv_bias = nl > 16 && strcmp(np->name + nl - 16, "attn.c_attn.bias") == 0;
            for (size_t j = 0; j < w.n; j++) {
                const double d = fabs((double)np->param->value[j] - (double)w.data[j]);
                const int key_bias = is_qkv_bias && j >= C && j < 2 * C;
                if (key_bias)
                    ck_assert_msg(fabs((double)g64.data[j]) <= 1e-9 * gscale,
                                  "%s: key-bias gradient %g is not ~0", np->name,
                                  (double)g64.data[j]);
                const double lr = 1e-3;
                const double tol = key_bias ? 3.0 * lr : 3e-3 * lr + 1e-5 * fabs((double)w.data[j]);
                ck_assert_msg(d <= tol, "%s.after3.%s[%zu]: %.9g vs torch %.9g", name, np->name,
                              j, (double)np->param->value[j], (double)w.data[j]);
                if (!key_bias)
                    e_after = fmax(e_after, d);
            }
        }
        tb_adam_free(&opt);
    }
    if (n_grads)
        printf("  check   %-24s logits %.2e, %zu gradients %.2e (of each tensor's scale, vs "
               "float64); loss %.6f; after 3 AdamW steps max |diff| %.2e\n",
               name, e_logits, n_grads, e_grad, (double)loss, e_after);
    else
        printf("  check   %-24s logits %.2e (of their scale, vs float64); loss %.6f vs %.6f\n",
               name, e_logits, (double)loss, (double)want_loss);
    gpt_acts_free(&a);
    gpt_free(&m);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_gpt_manifest)
{
    const tbt_names l = {gpt_cases, ARRAY_LEN(gpt_cases)};
    ck_assert_uint_eq(tbt_check_manifest("gpt_cases.txt", "test_gpt.c", tbt_name_listed, &l),
                      ARRAY_LEN(gpt_cases));
}
END_TEST

/* Prefill 5 tokens, then feed one at a time: every position's logits equal
 * the full forward pass's, bitwise. */
START_TEST(test_gpt_kv_cache_equals_full_forward)
{
    tbt_ref *ref = tbt_ref_load("gpt_l3_h4_c32_v61");
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    gpt m;
    model_of(&ctx, ref, &m, "gpt_l3_h4_c32_v61");
    size_t nt;
    const int32_t *tokens = tbt_ref_i32(ref, "tokens", &nt);
    const size_t B = 2, T = nt / 2, V = m.cfg.vocab_size;
    gpt_acts a;
    CHECK_OK(ctx, gpt_acts_init(&ctx, &a, &m, B, T));
    CHECK_OK(ctx, gpt_forward(&ctx, &m, &a, TB_MODE_INFERENCE, NULL, tokens, NULL, B, T, NULL));
    gpt_decoder d;
    CHECK_OK(ctx, gpt_decoder_init(&ctx, &d, &m, B, T, 5));
    float *all = tbt_alloc(B * 5 * V * sizeof(float));
    int32_t in[2 * 5];
    for (size_t b = 0; b < B; b++)
        memcpy(in + b * 5, tokens + b * T, 5 * sizeof(int32_t));
    CHECK_OK(ctx, gpt_decoder_step(&ctx, &m, &d, in, 5, all));
    size_t mism = 0;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < 5; t++)
            mism += memcmp(all + (b * 5 + t) * V, a.logits + (b * T + t) * V, V * sizeof(float)) != 0;
    for (size_t t = 5; t < T; t++) {
        for (size_t b = 0; b < B; b++)
            in[b] = tokens[b * T + t];
        CHECK_OK(ctx, gpt_decoder_step(&ctx, &m, &d, in, 1, NULL));
        for (size_t b = 0; b < B; b++)
            mism += memcmp(d.logits + b * V, a.logits + (b * T + t) * V, V * sizeof(float)) != 0;
    }
    ck_assert_msg(mism == 0, "%zu positions differ from the full forward pass", mism);
    /* Past the cache's capacity: refused. */
    ck_assert_int_eq(gpt_decoder_step(&ctx, &m, &d, in, 1, NULL), TB_ERR_BUFFER_TOO_SMALL);
    /* Beam reordering: sequence 0 becomes a copy of sequence 1, so feeding
     * both the same token gives the same logits. */
    gpt_decoder_reset(&d);
    for (size_t b = 0; b < B; b++)
        memcpy(in + b * 5, tokens + b * T, 5 * sizeof(int32_t));
    CHECK_OK(ctx, gpt_decoder_step(&ctx, &m, &d, in, 5, NULL));
    const size_t src[2] = {1, 1};
    CHECK_OK(ctx, gpt_decoder_reorder(&d, src));
    in[0] = in[1] = 7;
    CHECK_OK(ctx, gpt_decoder_step(&ctx, &m, &d, in, 1, NULL));
    ck_assert(memcmp(d.logits, d.logits + V, V * sizeof(float)) == 0);
    printf("  check   KV-cache decoding: %zu positions of 2 sequences equal the full forward "
           "pass bitwise\n",
           B * T);
    free(all);
    gpt_decoder_free(&d);
    gpt_acts_free(&a);
    gpt_free(&m);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_gpt_refuses_other_configurations)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    gpt m;
    gpt_config c = {2, 3, 24, 16, 37, 0.0f};
    tb_rng rng;
    tb_rng_init(&rng, 3);
    CHECK_OK(ctx, gpt_init(&ctx, &m, &c, &rng));
    const float w0 = m.wte.weight.value[0];
    char path[600];
    snprintf(path, sizeof path, "%s/gpt_l3_h4_c32_v61/model.safetensors", getenv("TB_ORACLE_DIR"));
    ck_assert_int_eq(gpt_load_weights(&ctx, &m, path), TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "h.2.") != NULL, "%s", tb_ctx_error(&ctx));
    ck_assert(m.wte.weight.value[0] == w0);
    gpt_free(&m);
    /* Same depth, other width: a shape error naming the tensor. */
    gpt_config c3 = {3, 4, 16, 32, 61, 0.0f};
    CHECK_OK(ctx, gpt_init(&ctx, &m, &c3, &rng));
    ck_assert_int_eq(gpt_load_weights(&ctx, &m, path), TB_ERR_SHAPE);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "wte.weight") != NULL, "%s", tb_ctx_error(&ctx));
    ck_assert_int_eq(gpt_load_weights(&ctx, &m, "/nonexistent"), TB_ERR_IO);
    gpt_free(&m);
    gpt_config bad = {2, 3, 25, 16, 37, 0.0f};
    ck_assert_int_eq(gpt_init(&ctx, &m, &bad, &rng), TB_ERR_INVALID_ARG);
    gpt_free(&m);
}
END_TEST

Suite *suite_gpt(void)
{
    Suite *s = suite_create("gpt");
    TCase *tc = tcase_create("gpt2");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_gpt_vs_gpt2lmheadmodel, 0, (int)ARRAY_LEN(gpt_cases));
    tcase_add_test(tc, test_gpt_manifest);
    tcase_add_test(tc, test_gpt_kv_cache_equals_full_forward);
    tcase_add_test(tc, test_gpt_refuses_other_configurations);
    suite_add_tcase(s, tc);
    return s;
}
