/*
 * The GPT-style model of the examples (examples/common/gpt.c) against the
 * real GPT-2: transformers' GPT2LMHeadModel with random weights, saved with
 * save_pretrained as safetensors (test/oracle/gen_gpt.py) and loaded here by
 * name. For two small configurations: logits and loss, every parameter
 * gradient (the tied wte gradient included), and every parameter after 3
 * AdamW steps; for the real 124M configuration: logits and loss. Also:
 * incremental decoding with the KV cache equals the full forward pass,
 * beam reordering, and files of another configuration are refused; a
 * checkpoint's configuration is validated (strict metadata, limits, the
 * tensors it implies) before anything is allocated for it.
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
#define _POSIX_C_SOURCE 200809L /* getpid */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpt.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const gpt_cases[] = {"gpt_l2_h3_c24_v37", "gpt_l3_h4_c32_v61", "gpt_124m"};

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
    const double e_logits = tbt_assert_close_f32_f64(lbl, a.logits, tok.data, tbt_ref_get(ref, "logits_f64").data,
                                     B * T * V, 1e-4, 1e-4);
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
            e_grad = fmax(e_grad, tbt_assert_close_f32_f64(lbl, np->param->grad, g32.data, g64.data, g32.n, 1e-4,
                                           1e-4));
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
            const double gscale = tbt_max_abs_f(g64.data, g64.n);
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
    const float w0 = m.t.wte.weight.value[0];
    char path[600];
    snprintf(path, sizeof path, "%s/gpt_l3_h4_c32_v61/model.safetensors", getenv("TB_ORACLE_DIR"));
    ck_assert_int_eq(gpt_load_weights(&ctx, &m, path), TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "h.2.") != NULL, "%s", tb_ctx_error(&ctx));
    ck_assert(m.t.wte.weight.value[0] == w0);
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

/* ---- configurations read from checkpoints ----------------------------------------------- */

/* One tensor of an image built in memory (zeros). */
typedef struct img_tensor {
    char name[TB_PARAM_NAME_MAX + 16];
    const char *dtype;
    size_t ndim, shape[3];
} img_tensor;

static size_t dtype_bytes(const char *d)
{
    return strcmp(d, "F64") == 0 || strcmp(d, "I64") == 0 ? 8
           : strcmp(d, "F16") == 0 || strcmp(d, "BF16") == 0 ? 2
                                                            : 4;
}

/* A safetensors image: the metadata, then the tensors in order. */
static unsigned char *st_image(const img_tensor *t, size_t n, const tb_st_meta *meta,
                               size_t n_meta, size_t *size)
{
    size_t cap = 256 + n * 256 + n_meta * 128, len = 0, off = 0;
    char *json = tbt_alloc(cap);
#define PUT(...) (len += (size_t)snprintf(json + len, cap - len, __VA_ARGS__))
    PUT("{\"__metadata__\":{");
    for (size_t i = 0; i < n_meta; i++)
        PUT("%s\"%s\":\"%s\"", i ? "," : "", meta[i].key, meta[i].value);
    PUT("}");
    for (size_t i = 0; i < n; i++) {
        size_t numel = 1;
        PUT(",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name, t[i].dtype);
        for (size_t d = 0; d < t[i].ndim; d++) {
            PUT("%s%zu", d ? "," : "", t[i].shape[d]);
            numel *= t[i].shape[d];
        }
        const size_t bytes = numel * dtype_bytes(t[i].dtype);
        PUT("],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    PUT("}");
#undef PUT
    ck_assert_uint_lt(len, cap);
    unsigned char *img = tbt_alloc(8 + len + off + 1);
    for (int b = 0; b < 8; b++)
        img[b] = (unsigned char)((uint64_t)len >> (8 * b));
    memcpy(img + 8, json, len);
    free(json);
    *size = 8 + len + off;
    return img;
}

/* The tensors of a real model of cfg (gpt_init()'s parameter list), with
 * the Adam state of `moments` kinds (0, 2: m and v, 3: with vmax). */
static size_t model_tensors(const gpt_config *cfg, int moments, img_tensor *out, size_t cap)
{
    static const char *const prefix[4] = {"", "optimizer.m.", "optimizer.v.", "optimizer.vmax."};
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    gpt m;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    CHECK_OK(ctx, gpt_init(&ctx, &m, cfg, &rng));
    size_t n = 0;
    for (int k = 0; k <= moments; k++)
        for (size_t i = 0; i < m.params.count && (k == 0 || k <= moments); i++) {
            ck_assert_uint_lt(n, cap);
            const tb_param *p = m.params.items[i].param;
            snprintf(out[n].name, sizeof out[n].name, "%s%s", prefix[k], m.params.items[i].name);
            out[n].dtype = "F32";
            out[n].ndim = p->ndim;
            for (size_t d = 0; d < p->ndim; d++)
                out[n].shape[d] = p->shape[d];
            n++;
        }
    gpt_free(&m);
    return n;
}

enum { MAX_IMG_TENSORS = 4 * (4 + 12 * 3) + 4 };

/* Tensor changes of a case. */
typedef enum img_edit {
    E_NONE, E_EXTRA, E_DROP_LAST, E_DTYPE, E_SHAPE, E_NDIM, E_DROP_NAMED
} img_edit;

typedef struct cfg_case {
    const char *label;
    const char *key[5], *value[5]; /* metadata overrides (value NULL: key removed) */
    int moments;                   /* Adam state written: 0, 2 or 3 kinds */
    img_edit edit;
    const char *edit_name, *edit_arg; /* E_EXTRA: name; E_DTYPE: tensor, dtype; E_DROP_NAMED */
    tb_status want;
    const char *msg; /* in the message */
} cfg_case;

static const gpt_config base_cfg = {2, 2, 8, 4, 5, 0.25f};

static const cfg_case cfg_cases[] = {
    {"valid", {NULL}, {NULL}, 0, E_NONE, NULL, NULL, TB_OK, ""},
    {"valid with Adam state", {NULL}, {NULL}, 2, E_NONE, NULL, NULL, TB_OK, ""},
    {"valid with AMSGrad state", {NULL}, {NULL}, 3, E_NONE, NULL, NULL, TB_OK, ""},
    {"dropout with an exponent", {"gpt.dropout"}, {"2.5e-1"}, 0, E_NONE, NULL, NULL, TB_OK, ""},
    {"F16, BF16 and F64 tensors", {NULL}, {NULL}, 0, E_DTYPE, "ln_f.bias", "F16", TB_OK, ""},
    {"a million layers", {"gpt.n_layer"}, {"1000000"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.n_layer = 1000000 is outside 1..256"},
    {"257 layers", {"gpt.n_layer"}, {"257"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.n_layer = 257 is outside 1..256"},
    {"0 layers", {"gpt.n_layer"}, {"0"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.n_layer = 0 is outside 1..256"},
    {"negative", {"gpt.n_layer"}, {"-1"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.n_layer = '-1' is not a decimal integer"},
    {"hexadecimal", {"gpt.n_embd"}, {"0x8"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.n_embd = '0x8' is not a decimal integer"},
    {"plus sign", {"gpt.n_head"}, {"+2"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT, "gpt.n_head"},
    {"leading space", {"gpt.n_layer"}, {" 2"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT, "gpt.n_layer"},
    {"trailing space", {"gpt.n_layer"}, {"2 "}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT, "gpt.n_layer"},
    {"fraction", {"gpt.block_size"}, {"4.0"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.block_size"},
    {"empty", {"gpt.vocab_size"}, {""}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT, "gpt.vocab_size"},
    {"2^64 overflows", {"gpt.n_layer"}, {"18446744073709551616"}, 0, E_NONE, NULL, NULL,
     TB_ERR_FORMAT, "is not a decimal integer"},
    {"2^64 - 1", {"gpt.n_layer"}, {"18446744073709551615"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "is outside 1..256"},
    {"width not divisible by heads", {"gpt.n_head"}, {"3"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.n_embd = 8 is not a multiple of gpt.n_head = 3"},
    {"width over the limit", {"gpt.n_embd"}, {"16385"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.n_embd = 16385 is outside 1..16384"},
    {"vocabulary over the limit", {"gpt.vocab_size"}, {"1048577"}, 0, E_NONE, NULL, NULL,
     TB_ERR_FORMAT, "gpt.vocab_size"},
    {"context over the limit", {"gpt.block_size"}, {"65537"}, 0, E_NONE, NULL, NULL,
     TB_ERR_FORMAT, "gpt.block_size"},
    {"every size at its limit: too many parameters",
     {"gpt.n_layer", "gpt.n_embd", "gpt.n_head", "gpt.block_size", "gpt.vocab_size"},
     {"256", "16384", "1", "65536", "1048576"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "parameters, more than 2147483648"},
    {"few parameters, too many activations",
     {"gpt.n_layer", "gpt.n_embd", "gpt.n_head", "gpt.block_size", "gpt.vocab_size"},
     {"1", "4096", "1", "65536", "256"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "bytes of activations"},
    {"dropout hexadecimal", {"gpt.dropout"}, {"0x1p-2"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.dropout = '0x1p-2' is not a decimal number"},
    {"dropout nan", {"gpt.dropout"}, {"nan"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT, "gpt.dropout"},
    {"dropout inf", {"gpt.dropout"}, {"inf"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT, "gpt.dropout"},
    {"dropout overflowing", {"gpt.dropout"}, {"1e999"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.dropout"},
    {"dropout 1", {"gpt.dropout"}, {"1"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.dropout = 1 is outside [0, 1)"},
    {"dropout negative", {"gpt.dropout"}, {"-0.5"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "outside [0, 1)"},
    {"dropout cut exponent", {"gpt.dropout"}, {"0.5e"}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "gpt.dropout"},
    {"no n_head", {"gpt.n_head"}, {NULL}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "no 'gpt.n_head' metadata"},
    {"no dropout", {"gpt.dropout"}, {NULL}, 0, E_NONE, NULL, NULL, TB_ERR_FORMAT,
     "no 'gpt.dropout' metadata"},
    {"more layers than tensors", {"gpt.n_layer"}, {"3"}, 0, E_NONE, NULL, NULL, TB_ERR_NOT_FOUND,
     "implies tensor 'h.2.ln_1.weight'"},
    {"fewer layers than tensors", {"gpt.n_layer"}, {"1"}, 0, E_NONE, NULL, NULL,
     TB_ERR_INVALID_ARG, "unexpected tensor 'h.1."},
    {"another width", {"gpt.n_embd"}, {"16"}, 0, E_NONE, NULL, NULL, TB_ERR_SHAPE,
     "'wte.weight' has shape (5, 8); the configuration implies (5, 16)"},
    {"another context", {"gpt.block_size"}, {"5"}, 0, E_NONE, NULL, NULL, TB_ERR_SHAPE,
     "'wpe.weight' has shape (4, 8); the configuration implies (5, 8)"},
    {"another vocabulary", {"gpt.vocab_size"}, {"6"}, 0, E_NONE, NULL, NULL, TB_ERR_SHAPE,
     "'wte.weight'"},
    {"another head count (same shapes)", {"gpt.n_head"}, {"4"}, 0, E_NONE, NULL, NULL, TB_OK, ""},
    {"an unknown tensor", {NULL}, {NULL}, 0, E_EXTRA, "h.0.ln_1.scale", NULL, TB_ERR_INVALID_ARG,
     "unexpected tensor 'h.0.ln_1.scale'"},
    {"a layer index with a leading zero", {NULL}, {NULL}, 0, E_EXTRA, "h.01.ln_1.weight", NULL,
     TB_ERR_INVALID_ARG, "'h.01.ln_1.weight'"},
    {"a layer past n_layer", {NULL}, {NULL}, 0, E_EXTRA, "h.2.ln_1.weight", NULL,
     TB_ERR_INVALID_ARG, "'h.2.ln_1.weight'"},
    {"a prefixed name", {NULL}, {NULL}, 0, E_EXTRA, "transformer.wte.weight", NULL,
     TB_ERR_INVALID_ARG, "'transformer.wte.weight'"},
    {"optimizer state of nothing", {NULL}, {NULL}, 2, E_EXTRA, "optimizer.m.bogus", NULL,
     TB_ERR_INVALID_ARG, "'optimizer.m.bogus'"},
    {"a parameter missing", {NULL}, {NULL}, 0, E_DROP_LAST, NULL, NULL, TB_ERR_NOT_FOUND,
     "'ln_f.bias'"},
    {"one moment missing", {NULL}, {NULL}, 2, E_DROP_NAMED, "optimizer.v.h.1.ln_2.bias", NULL,
     TB_ERR_NOT_FOUND, "'optimizer.v.h.1.ln_2.bias'"},
    {"first moments only", {NULL}, {NULL}, 2, E_DROP_NAMED, "optimizer.v.*", NULL,
     TB_ERR_NOT_FOUND, "'optimizer.v.wte.weight'"},
    {"an integer tensor", {NULL}, {NULL}, 0, E_DTYPE, "h.0.ln_2.bias", "I32", TB_ERR_UNSUPPORTED,
     "'h.0.ln_2.bias' is not F32"},
    {"a transposed weight", {NULL}, {NULL}, 0, E_SHAPE, "h.1.mlp.c_fc.weight", NULL, TB_ERR_SHAPE,
     "'h.1.mlp.c_fc.weight' has shape (32, 8); the configuration implies (8, 32)"},
    {"an extra dimension", {NULL}, {NULL}, 0, E_NDIM, "ln_f.weight", NULL, TB_ERR_SHAPE,
     "'ln_f.weight' has shape (8, 1)"},
};

static tb_status run_cfg_case(const cfg_case *c, gpt_config *got, char *msg, size_t cap)
{
    img_tensor *t = tbt_alloc((MAX_IMG_TENSORS + 1) * sizeof *t);
    size_t n = model_tensors(&base_cfg, c->moments, t, MAX_IMG_TENSORS);
    switch (c->edit) {
    case E_NONE:
        break;
    case E_EXTRA:
        snprintf(t[n].name, sizeof t[n].name, "%s", c->edit_name);
        t[n].dtype = "F32", t[n].ndim = 1, t[n].shape[0] = 8;
        n++;
        break;
    case E_DROP_LAST:
        ck_assert_str_eq(t[n - 1].name, "ln_f.bias");
        n--;
        break;
    case E_DROP_NAMED: {
        const size_t len = strlen(c->edit_name);
        const int wild = c->edit_name[len - 1] == '*';
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (wild ? strncmp(t[i].name, c->edit_name, len - 1) != 0
                     : strcmp(t[i].name, c->edit_name) != 0)
                t[k++] = t[i];
        ck_assert_uint_lt(k, n);
        n = k;
        break;
    }
    case E_DTYPE:
    case E_SHAPE:
    case E_NDIM: {
        size_t i = 0;
        while (i < n && strcmp(t[i].name, c->edit_name) != 0)
            i++;
        ck_assert_uint_lt(i, n);
        if (c->edit == E_DTYPE) {
            t[i].dtype = c->edit_arg;
            if (strcmp(c->edit_arg, "F16") == 0) /* the other float types too */
                t[0].dtype = "BF16", t[1].dtype = "F64";
        } else if (c->edit == E_SHAPE) {
            const size_t s0 = t[i].shape[0];
            t[i].shape[0] = t[i].shape[1], t[i].shape[1] = s0;
        } else {
            t[i].ndim = 2, t[i].shape[1] = 1;
        }
        break;
    }
    }
    gpt_config_text text;
    tb_st_meta meta[GPT_CONFIG_N_META];
    gpt_config_meta(&base_cfg, &text, meta);
    size_t n_meta = GPT_CONFIG_N_META;
    for (size_t k = 0; k < 5 && c->key[k]; k++) {
        size_t i = 0;
        while (i < n_meta && strcmp(meta[i].key, c->key[k]) != 0)
            i++;
        ck_assert_uint_lt(i, n_meta);
        if (c->value[k])
            meta[i].value = c->value[k];
        else
            meta[i] = meta[--n_meta];
    }
    size_t size;
    unsigned char *img = st_image(t, n, meta, n_meta, &size);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_parse(&ctx, img, size, &f));
    const tb_status s = gpt_config_from_checkpoint(&ctx, &f, got);
    snprintf(msg, cap, "%s", tb_ctx_error(&ctx));
    tb_st_close(&f);
    free(img);
    free(t);
    return s;
}

/* gpt_config_from_checkpoint() on in-memory files made from a real
 * model's tensors: each bad metadata value or tensor is refused with the
 * expected status and a message naming it, *cfg untouched; valid files
 * give back the configuration they were written with. */
START_TEST(test_gpt_config_from_checkpoint_cases)
{
    size_t refused = 0;
    for (size_t i = 0; i < ARRAY_LEN(cfg_cases); i++) {
        const cfg_case *c = &cfg_cases[i];
        gpt_config got;
        memset(&got, 0xA5, sizeof got);
        gpt_config sentinel = got;
        char msg[TB_ERROR_DETAIL_MAX];
        const tb_status s = run_cfg_case(c, &got, msg, sizeof msg);
        ck_assert_msg(s == c->want, "%s: %s (%s), want %s", c->label, tb_strerror(s), msg,
                      tb_strerror(c->want));
        if (s == TB_OK) {
            ck_assert_uint_eq(got.n_layer, base_cfg.n_layer);
            ck_assert_uint_eq(got.n_embd, base_cfg.n_embd);
            ck_assert_uint_eq(got.block_size, base_cfg.block_size);
            ck_assert_uint_eq(got.vocab_size, base_cfg.vocab_size);
            ck_assert(got.dropout == base_cfg.dropout);
            ck_assert_uint_eq(got.n_head, c->key[0] && strcmp(c->key[0], "gpt.n_head") == 0
                                              ? 4
                                              : base_cfg.n_head);
        } else {
            refused++;
            ck_assert_msg(strstr(msg, c->msg) != NULL, "%s: message \"%s\" lacks \"%s\"",
                          c->label, msg, c->msg);
            ck_assert_msg(memcmp(&got, &sentinel, sizeof got) == 0, "%s: cfg written on error",
                          c->label);
        }
    }
    printf("  check   gpt configurations from checkpoints: %zu cases, %zu refused with the "
           "expected status and message\n",
           ARRAY_LEN(cfg_cases), refused);
}
END_TEST

/* Checkpoints the library writes (parameters only, AdamW, AMSGrad) give
 * back their configuration exactly (dropout included); the parameter
 * count and activation size functions agree with what gpt_init and
 * gpt_acts_init allocate; configurations past the limits are refused by
 * gpt_init itself. */
START_TEST(test_gpt_config_round_trips_and_limits)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const gpt_config cfg = {3, 2, 16, 12, 7, 0.1f};
    tb_rng rng;
    tb_rng_init(&rng, 2);
    gpt m;
    CHECK_OK(ctx, gpt_init(&ctx, &m, &cfg, &rng));
    size_t count;
    CHECK_OK(ctx, gpt_param_count(&cfg, &count));
    ck_assert_uint_eq(count, tb_param_list_numel(&m.params, 0));
    gpt_acts a;
    CHECK_OK(ctx, gpt_acts_init(&ctx, &a, &m, 3, 10));
    size_t bytes;
    CHECK_OK(ctx, gpt_acts_size(&ctx, &cfg, 3, 10, &bytes));
    ck_assert_uint_eq(bytes, a.bytes);
    gpt_acts_free(&a);
    ck_assert_int_eq(gpt_acts_size(&ctx, &cfg, SIZE_MAX / 4, 12, &bytes), TB_ERR_OVERFLOW);
    char path[600];
    snprintf(path, sizeof path, "%s/tmp-gpt-cfg-%ld.st", getenv("TB_ORACLE_DIR"), (long)getpid());
    for (int kind = 0; kind < 3; kind++) {
        tb_adam_config oc = tb_adamw_default_config();
        oc.amsgrad = kind == 2;
        tb_adam opt;
        memset(&opt, 0, sizeof opt);
        if (kind)
            CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &m.params, &oc));
        gpt_config_text text;
        tb_st_meta meta[GPT_CONFIG_N_META];
        gpt_config_meta(&cfg, &text, meta);
        CHECK_OK(ctx, tb_checkpoint_save(&ctx, path, &m.params, kind ? &opt : NULL, &rng, meta,
                                         GPT_CONFIG_N_META, TB_CKPT_DEFAULT));
        tb_st_file f;
        CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
        gpt_config got;
        CHECK_OK(ctx, gpt_config_from_checkpoint(&ctx, &f, &got));
        ck_assert(got.n_layer == cfg.n_layer && got.n_head == cfg.n_head &&
                  got.n_embd == cfg.n_embd && got.block_size == cfg.block_size &&
                  got.vocab_size == cfg.vocab_size);
        ck_assert_msg(got.dropout == cfg.dropout, "dropout %.9g read back as %.9g",
                      (double)cfg.dropout, (double)got.dropout);
        tb_st_close(&f);
        if (kind)
            tb_adam_free(&opt);
    }
    remove(path);
    gpt_free(&m);
    /* Past the limits: refused before any allocation, naming the value. */
    const gpt_config too_deep = {GPT_MAX_LAYER + 1, 1, 8, 4, 5, 0.0f};
    ck_assert_int_eq(gpt_init(&ctx, &m, &too_deep, &rng), TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "gpt.n_layer = 257") != NULL, "%s",
                  tb_ctx_error(&ctx));
    gpt_free(&m);
    const gpt_config too_big = {GPT_MAX_LAYER, 1, GPT_MAX_EMBD, GPT_MAX_CONTEXT, GPT_MAX_VOCAB, 0};
    ck_assert_int_eq(gpt_init(&ctx, &m, &too_big, &rng), TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "parameters") != NULL, "%s", tb_ctx_error(&ctx));
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
    tcase_add_test(tc, test_gpt_config_from_checkpoint_cases);
    tcase_add_test(tc, test_gpt_config_round_trips_and_limits);
    suite_add_tcase(s, tc);
    return s;
}
