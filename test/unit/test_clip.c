/*
 * CLIP's dual encoder of the examples (examples/common/clip_model.c)
 * against the real one: transformers' CLIPModel from a random small
 * CLIPConfig (odd widths 20 and 18, a 3 x 3 grid of 3 x 3 patches, 1 and 3
 * layers, padded texts and the eos_token_id == 2 argmax rule), saved with
 * save_pretrained and loaded here by name (test/oracle/gen_clip.py).
 * Checked: text_embeds, image_embeds, logits_per_image, the loss
 * (return_loss=True), every parameter gradient and the pixels' gradient;
 * bitwise equality for 1 and 2 threads; finite differences of the whole
 * model's loss for a sample of parameters; refusals of bad input.
 *
 * ---- Tolerances -----------------------------------------------------------
 * Against float32 PyTorch and against the same model in float64:
 * |got - want| <= atol + rtol |want| with rtol 1e-4 and atol = 1e-4 *
 * max|want64| of that tensor, the tolerance test_gpt.c uses for GPT-2
 * (float32 rounding through the layers and the normalisations is ~1e-6 of
 * the scale here; a wrong wiring changes a tensor by O(1) of its scale, a
 * zero gradient by all of it). The key projection's bias has an exactly
 * zero gradient (a constant added to every key's score cancels in the
 * softmax): there both sides hold rounding noise, so it is checked to be
 * <= 1e-5 of the key weight's gradient scale instead (float64 torch: ~1e-16).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clip_model.h"
#include "ex_png.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const clip_cases[] = {"clip_l1_b3_pad", "clip_l3_b3_argmax", "clip_l3_b1"};

static clip_config config_of(const tbt_ref *ref)
{
    clip_config c = clip_default_config();
#define GET(f) c.f = (size_t)tbt_ref_i32_scalar(ref, #f)
    GET(text_vocab);
    GET(text_positions);
    GET(text_width);
    GET(text_ff);
    GET(text_layers);
    GET(text_heads);
    GET(image_size);
    GET(patch_size);
    GET(channels);
    GET(vision_width);
    GET(vision_ff);
    GET(vision_layers);
    GET(vision_heads);
    GET(projection_dim);
#undef GET
    c.eos_token_id = tbt_ref_i32_scalar(ref, "eos_token_id");
    return c;
}

static void safetensors_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s/model.safetensors", getenv("TB_ORACLE_DIR"), name);
}

/* One case's model (loaded), inputs and activations. */
typedef struct fixture {
    tbt_ref *ref;
    tb_ctx ctx;
    clip_model m;
    clip_acts a;
    size_t B, T, S;
    const int32_t *ids;
    uint8_t *valid;
    float *pixels;
} fixture;

static void fixture_init(fixture *f, const char *name, int threads)
{
    memset(f, 0, sizeof *f);
    f->ref = tbt_ref_load(name);
    tbt_ctx_init(&f->ctx, threads);
    clip_config c = config_of(f->ref);
    tb_rng rng;
    tb_rng_init(&rng, 7);
    CHECK_OK(f->ctx, clip_init(&f->ctx, &f->m, &c, &rng));
    char path[600];
    safetensors_path(path, sizeof path, name);
    CHECK_OK(f->ctx, clip_load(&f->ctx, &f->m, path));
    tbt_reft px = tbt_ref_get(f->ref, "pixels"); /* (B, ch, S, S) */
    f->B = px.shape[0];
    f->S = c.image_size;
    size_t n;
    f->ids = tbt_ref_i32(f->ref, "ids", &n);
    f->T = n / f->B;
    const int32_t *mask = tbt_ref_i32(f->ref, "attention_mask", &n);
    f->valid = tbt_alloc(n);
    for (size_t i = 0; i < n; i++)
        f->valid[i] = (uint8_t)(mask[i] != 0);
    f->pixels = tbt_ref_dup(&px);
    CHECK_OK(f->ctx, clip_acts_init(&f->ctx, &f->a, &f->m, f->B, f->T));
}

static void fixture_free(fixture *f)
{
    clip_acts_free(&f->a);
    clip_free(&f->m);
    free(f->valid);
    free(f->pixels);
    tbt_ref_free(f->ref);
}

static float forward(fixture *f)
{
    float loss = NAN;
    CHECK_OK(f->ctx, clip_forward(&f->ctx, &f->m, &f->a, f->pixels, f->S, f->S, f->ids, f->valid,
                                  f->B, f->T, &loss));
    return loss;
}

static int ends_with(const char *s, const char *suffix)
{
    const size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

START_TEST(test_clip_vs_clipmodel)
{
    const char *name = clip_cases[_i];
    fixture f;
    fixture_init(&f, name, 2);
    const size_t B = f.B, P = f.m.cfg.projection_dim;
    ck_assert_uint_eq(f.m.params.count, (size_t)tbt_ref_i32_scalar(f.ref, "n_params"));
    const float loss = forward(&f);
    char lbl[300];
    const tbt_ref *ref = f.ref;
    snprintf(lbl, sizeof lbl, "%s.text_embeds", name);
    double e_fwd = tbt_assert_close_f32_f64(lbl, f.a.txt_n, tbt_ref_get(ref, "text_embeds").data,
                                            tbt_ref_get(ref, "text_embeds_f64").data, B * P,
                                            1e-4, 1e-4);
    snprintf(lbl, sizeof lbl, "%s.image_embeds", name);
    e_fwd = fmax(e_fwd, tbt_assert_close_f32_f64(lbl, f.a.img_n,
                                                 tbt_ref_get(ref, "image_embeds").data,
                                                 tbt_ref_get(ref, "image_embeds_f64").data,
                                                 B * P, 1e-4, 1e-4));
    snprintf(lbl, sizeof lbl, "%s.logits_per_image", name);
    e_fwd = fmax(e_fwd, tbt_assert_close_f32_f64(lbl, f.a.logits,
                                                 tbt_ref_get(ref, "logits_per_image").data,
                                                 tbt_ref_get(ref, "logits_per_image_f64").data,
                                                 B * B, 1e-4, 1e-4));
    const float want = tbt_ref_scalar(ref, "loss_f64");
    ck_assert_msg(fabsf(loss - want) <= 1e-5f * fmaxf(1.0f, fabsf(want)),
                  "%s: loss %.8f, torch (float64) %.8f", name, (double)loss, (double)want);
    double e_grad = 0.0, e_px = 0.0;
    size_t n_grads = 0;
    if (tbt_ref_has(ref, "dpixels")) {
        tb_param_list_zero_grad(&f.m.params);
        const size_t npx = B * f.m.cfg.channels * f.S * f.S;
        float *dpx = tbt_nan_buffer(npx);
        CHECK_OK(f.ctx, clip_backward(&f.ctx, &f.m, &f.a, 1.0f, dpx));
        for (size_t i = 0; i < f.m.params.count; i++) {
            const tb_named_param *np = &f.m.params.items[i];
            char k32[200], k64[200];
            snprintf(k32, sizeof k32, "g:%s", np->name);
            snprintf(k64, sizeof k64, "g64:%s", np->name);
            tbt_reft g32 = tbt_ref_get(ref, k32), g64 = tbt_ref_get(ref, k64);
            ck_assert_uint_eq(g32.n, np->param->numel);
            snprintf(lbl, sizeof lbl, "%s.grad.%s", name, np->name);
            if (ends_with(np->name, "k_proj.bias")) {
                char kw[200];
                snprintf(kw, sizeof kw, "g64:%.*s.weight", (int)(strlen(np->name) - 5),
                         np->name);
                tbt_reft w64 = tbt_ref_get(ref, kw);
                const double scale = tbt_max_abs_f(w64.data, w64.n);
                ck_assert_msg(scale > 0.0, "%s: the key weight's gradient is zero", lbl);
                ck_assert_msg(tbt_max_abs_f(g64.data, g64.n) <= 1e-9 * scale,
                              "%s: torch's float64 key-bias gradient is not ~0", lbl);
                const double got = tbt_max_abs_f(np->param->grad, g64.n);
                ck_assert_msg(got <= 1e-5 * scale, "%s: %g, not ~0 (key weight scale %g)", lbl,
                              got, scale);
            } else {
                e_grad = fmax(e_grad, tbt_assert_close_f32_f64(lbl, np->param->grad, g32.data,
                                                               g64.data, g32.n, 1e-4, 1e-4));
            }
            n_grads++;
        }
        /* Every parameter of CLIPModel has its gradient checked: as many
         * as CLIPModel has, each found under its name above. */
        ck_assert_uint_eq(n_grads, (size_t)tbt_ref_i32_scalar(ref, "n_params"));
        snprintf(lbl, sizeof lbl, "%s.dpixels", name);
        e_px = tbt_assert_close_f32_f64(lbl, dpx, tbt_ref_get(ref, "dpixels").data,
                                        tbt_ref_get(ref, "dpixels_f64").data, npx, 1e-4, 1e-4);
        free(dpx);
    }
    printf("  check   %-20s embeddings/logits %.2e, %zu gradients %.2e, pixels %.2e (of each "
           "tensor's scale, vs float64); loss %.6f\n",
           name, e_fwd, n_grads, e_grad, e_px, (double)loss);
    fixture_free(&f);
}
END_TEST

START_TEST(test_clip_manifest)
{
    const tbt_names l = {clip_cases, ARRAY_LEN(clip_cases)};
    ck_assert_uint_eq(tbt_check_manifest("clip_model_cases.txt", "test_clip.c", tbt_name_listed, &l),
                      ARRAY_LEN(clip_cases));
}
END_TEST

/* Loss, logits, every gradient and the pixels' gradient: bitwise the same
 * with 1 and 2 threads. */
START_TEST(test_clip_threads_bitwise)
{
    fixture f1, f2;
    fixture_init(&f1, "clip_l3_b3_argmax", 1);
    fixture_init(&f2, "clip_l3_b3_argmax", 2);
    const float l1 = forward(&f1), l2 = forward(&f2);
    ck_assert_msg(memcmp(&l1, &l2, sizeof l1) == 0, "loss %.9g vs %.9g", (double)l1, (double)l2);
    ck_assert(memcmp(f1.a.logits, f2.a.logits, f1.B * f1.B * sizeof(float)) == 0);
    const size_t npx = f1.B * f1.m.cfg.channels * f1.S * f1.S;
    float *d1 = tbt_alloc(npx * sizeof(float)), *d2 = tbt_alloc(npx * sizeof(float));
    tb_param_list_zero_grad(&f1.m.params);
    tb_param_list_zero_grad(&f2.m.params);
    CHECK_OK(f1.ctx, clip_backward(&f1.ctx, &f1.m, &f1.a, 1.0f, d1));
    CHECK_OK(f2.ctx, clip_backward(&f2.ctx, &f2.m, &f2.a, 1.0f, d2));
    ck_assert(memcmp(d1, d2, npx * sizeof(float)) == 0);
    ck_assert_uint_eq(f1.m.params.count, f2.m.params.count);
    for (size_t i = 0; i < f1.m.params.count; i++) {
        const tb_param *p = f1.m.params.items[i].param, *q = f2.m.params.items[i].param;
        ck_assert_msg(memcmp(p->grad, q->grad, p->numel * sizeof(float)) == 0,
                      "%s: gradients differ between 1 and 2 threads", f1.m.params.items[i].name);
    }
    free(d1);
    free(d2);
    fixture_free(&f1);
    fixture_free(&f2);
}
END_TEST

static double fd_loss(void *user)
{
    return (double)forward(user);
}

/* Central differences of the whole model's loss for a sample of elements
 * of parameters spread over both towers, the projections and the scale. */
START_TEST(test_clip_finite_differences)
{
    fixture f;
    fixture_init(&f, "clip_l1_b3_pad", 1);
    forward(&f);
    tb_param_list_zero_grad(&f.m.params);
    CHECK_OK(f.ctx, clip_backward(&f.ctx, &f.m, &f.a, 1.0f, NULL));
    static const char *const names[] = {
        "logit_scale",
        "text_projection.weight",
        "visual_projection.weight",
        "vision_model.post_layernorm.weight",
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.pre_layrnorm.bias",
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "vision_model.encoder.layers.0.mlp.fc1.weight",
        "text_model.final_layer_norm.weight",
        "text_model.encoder.layers.0.self_attn.v_proj.weight",
        "text_model.encoder.layers.0.mlp.fc2.bias",
    };
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        tb_param *p = tb_param_list_find(&f.m.params, names[i]);
        ck_assert_msg(p != NULL, "no parameter %s", names[i]);
        float *ana = tbt_alloc(p->numel * sizeof(float));
        memcpy(ana, p->grad, p->numel * sizeof(float));
        tbt_gradcheck(names[i], p->value, p->numel, ana, fd_loss, &f, 1e-2f, 2e-2, 2e-4, 8);
        free(ana);
    }
    fixture_free(&f);
}
END_TEST

/* Bad input is refused with a status and a message; nothing crashes. */
START_TEST(test_clip_bad_input)
{
    fixture f;
    fixture_init(&f, "clip_l1_b3_pad", 1);
    tb_ctx *ctx = &f.ctx;
    const size_t B = f.B, T = f.T;
    float loss;
    /* an image of another size */
    ck_assert_int_eq(clip_forward(ctx, &f.m, &f.a, f.pixels, f.S - 1, f.S - 1, f.ids, f.valid, B,
                                  T, &loss),
                     TB_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "image_size"));
    /* a batch larger than the activations */
    ck_assert_int_eq(clip_encode_image(ctx, &f.m, &f.a, f.pixels, B + 1, f.S, f.S), TB_ERR_SHAPE);
    /* a non-finite pixel */
    f.pixels[5] = NAN;
    ck_assert_int_eq(clip_encode_image(ctx, &f.m, &f.a, f.pixels, B, f.S, f.S),
                     TB_ERR_NON_FINITE);
    f.pixels[5] = 0.5f;
    /* ids out of range, no end-of-text token, pooled at padding */
    int32_t *ids = tbt_alloc(B * T * sizeof(int32_t));
    memcpy(ids, f.ids, B * T * sizeof(int32_t));
    ids[1] = (int32_t)f.m.cfg.text_vocab;
    ck_assert_int_eq(clip_encode_text(ctx, &f.m, &f.a, ids, f.valid, B, T), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "vocabulary"));
    ids[1] = -1;
    ck_assert_int_eq(clip_encode_text(ctx, &f.m, &f.a, ids, f.valid, B, T), TB_ERR_INVALID_ARG);
    memcpy(ids, f.ids, B * T * sizeof(int32_t));
    for (size_t t = 0; t < T; t++)
        if (ids[t] == f.m.cfg.eos_token_id)
            ids[t] = 5;
    ck_assert_int_eq(clip_encode_text(ctx, &f.m, &f.a, ids, f.valid, B, T), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "end-of-text"));
    memcpy(ids, f.ids, B * T * sizeof(int32_t));
    uint8_t *valid = tbt_alloc(B * T);
    memcpy(valid, f.valid, B * T);
    memset(valid + T, 0, T); /* text 1: its eos is now padding */
    ck_assert_int_eq(clip_encode_text(ctx, &f.m, &f.a, ids, valid, B, T), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "padding"));
    ck_assert_int_eq(clip_encode_text(ctx, &f.m, &f.a, ids, f.valid, B, T + 1), TB_ERR_SHAPE);
    /* backward without a forward */
    clip_acts fresh;
    CHECK_OK(*ctx, clip_acts_init(ctx, &fresh, &f.m, B, T));
    ck_assert_int_eq(clip_backward(ctx, &f.m, &fresh, 1.0f, NULL), TB_ERR_STATE);
    clip_acts_free(&fresh);
    /* one backward per forward; an encode call in between also voids it */
    forward(&f);
    CHECK_OK(*ctx, clip_backward(ctx, &f.m, &f.a, 1.0f, NULL));
    ck_assert_int_eq(clip_backward(ctx, &f.m, &f.a, 1.0f, NULL), TB_ERR_STATE);
    forward(&f);
    CHECK_OK(*ctx, clip_encode_text(ctx, &f.m, &f.a, f.ids, f.valid, B, T));
    ck_assert_int_eq(clip_backward(ctx, &f.m, &f.a, 1.0f, NULL), TB_ERR_STATE);
    ck_assert_int_eq(clip_acts_init(ctx, &fresh, &f.m, B, f.m.cfg.text_positions + 1),
                     TB_ERR_SHAPE);
    clip_acts_free(&fresh);
    /* NULL arguments */
    ck_assert_int_eq(clip_encode_image(ctx, &f.m, &f.a, NULL, B, f.S, f.S), TB_ERR_NULL_ARG);
    ck_assert_int_eq(clip_encode_text(ctx, &f.m, NULL, ids, NULL, B, T), TB_ERR_NULL_ARG);
    ck_assert_int_eq(clip_load(ctx, &f.m, NULL), TB_ERR_NULL_ARG);
    free(ids);
    free(valid);

    /* configurations */
    clip_config c = clip_default_config();
    CHECK_OK(*ctx, clip_config_check(ctx, &c));
    c.image_size = 10, c.patch_size = 3;
    ck_assert_int_eq(clip_config_check(ctx, &c), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "multiple of patch_size"));
    c = clip_default_config();
    c.patch_size = 0;
    ck_assert_int_eq(clip_config_check(ctx, &c), TB_ERR_INVALID_ARG);
    c = clip_default_config();
    c.eos_token_id = (int32_t)c.text_vocab;
    ck_assert_int_eq(clip_config_check(ctx, &c), TB_ERR_INVALID_ARG);
    c = clip_default_config();
    c.text_width = 30; /* not a multiple of 4 heads */
    c.text_heads = 4;
    ck_assert_int_eq(clip_config_check(ctx, &c), TB_ERR_INVALID_ARG);
    c = clip_default_config();
    c.norm_eps = 0.0f;
    ck_assert_int_eq(clip_config_check(ctx, &c), TB_ERR_INVALID_ARG);
    c = clip_default_config();
    c.logit_scale_init = INFINITY;
    ck_assert_int_eq(clip_config_check(ctx, &c), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(clip_config_check(ctx, NULL), TB_ERR_NULL_ARG);
    clip_model bad;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    ck_assert_int_eq(clip_init(ctx, &bad, &c, &rng), TB_ERR_INVALID_ARG);
    clip_free(&bad);

    /* files: another configuration's (3 layers: unexpected tensors), one
     * tensor missing, a logit_scale of two values */
    char path[600];
    safetensors_path(path, sizeof path, "clip_l3_b3_argmax");
    const float before = f.m.logit_scale.value[0];
    ck_assert_int_eq(clip_load(ctx, &f.m, path), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "layers.1"));
    ck_assert(f.m.logit_scale.value[0] == before);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s/clip_test_%ld.safetensors", getenv("TB_ORACLE_DIR"),
             (long)getpid());
    const size_t n = f.m.params.count;
    tb_st_entry *e = tbt_alloc(n * sizeof *e);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const tb_named_param *np = &f.m.params.items[i];
        if (strcmp(np->name, "vision_model.embeddings.class_embedding") == 0)
            continue;
        e[k++] = (tb_st_entry){np->name, np->param->value, np->param->ndim, np->param->shape};
    }
    CHECK_OK(*ctx, tb_st_save(ctx, tmp, e, k, NULL, 0));
    ck_assert_int_eq(clip_load(ctx, &f.m, tmp), TB_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "class_embedding"));
    /* the full set loads back; then a two-valued logit_scale is refused */
    k = 0;
    static const size_t two[1] = {2};
    for (size_t i = 0; i < n; i++) {
        const tb_named_param *np = &f.m.params.items[i];
        if (strcmp(np->name, "logit_scale") == 0)
            e[k++] = (tb_st_entry){np->name, f.pixels, 1, two};
        else
            e[k++] = (tb_st_entry){np->name, np->param->value, np->param->ndim, np->param->shape};
    }
    CHECK_OK(*ctx, tb_st_save(ctx, tmp, e, k, NULL, 0));
    ck_assert_int_eq(clip_load(ctx, &f.m, tmp), TB_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(ctx), "logit_scale"));
    e[n - 1] = (tb_st_entry){"logit_scale", f.m.logit_scale.value, 1, f.m.logit_scale.shape};
    CHECK_OK(*ctx, tb_st_save(ctx, tmp, e, k, NULL, 0));
    CHECK_OK(*ctx, clip_load(ctx, &f.m, tmp));
    remove(tmp);
    free(e);
    fixture_free(&f);
}
END_TEST

/* The logit scale is clamped to at most ln(100) (and at least 0). */
START_TEST(test_clip_clamp_scale)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    clip_config c = clip_default_config();
    clip_model m;
    tb_rng rng;
    tb_rng_init(&rng, 3);
    CHECK_OK(ctx, clip_init(&ctx, &m, &c, &rng));
    ck_assert(fabsf(m.logit_scale.value[0] - 2.6592f) < 1e-6f);
    m.logit_scale.value[0] = 7.0f;
    CHECK_OK(ctx, clip_clamp_scale(&ctx, &m));
    ck_assert(fabsf(m.logit_scale.value[0] - logf(100.0f)) < 1e-6f);
    /* names: exactly CLIPModel's, the placeholder token table left out */
    ck_assert_ptr_null(tb_param_list_find(&m.params, "vision_model.embeddings.unused_token_embedding.weight"));
    ck_assert_ptr_nonnull(tb_param_list_find(&m.params, "vision_model.pre_layrnorm.weight"));
    ck_assert_uint_eq(tb_param_list_find(&m.params, "vision_model.embeddings.patch_embedding.weight")->ndim, 4);
    clip_free(&m);
}
END_TEST

/* The PNG writer of clip_pairs (examples/common/ex_png.h): the check
 * values of CRC-32 ("123456789" -> 0xCBF43926) and Adler-32 ("Wikipedia"
 * -> 0x11E60398), and an image large enough for two stored deflate blocks
 * (150 x 150: 67650 filtered bytes > 65535) parsed back: signature, chunk
 * lengths and CRCs, IHDR, the zlib header, each block's LEN/NLEN, the
 * pixels with their filter bytes, the Adler-32, IEND. */
static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

START_TEST(test_clip_png_writer)
{
    ck_assert_uint_eq(ex_png_crc32(0, (const uint8_t *)"123456789", 9), 0xCBF43926u);
    ck_assert_uint_eq(ex_png_adler32(1, (const uint8_t *)"Wikipedia", 9), 0x11E60398u);
    const size_t W = 150, H = 150, raw = H * (1 + 3 * W);
    uint8_t *rgb = tbt_alloc(W * H * 3);
    for (size_t i = 0; i < W * H * 3; i++)
        rgb[i] = (uint8_t)(i * 7 + i / 3);
    const size_t n = ex_png_size(W, H);
    ck_assert_uint_eq(n, 8 + 25 + 12 + (2 + 2 * 5 + raw + 4) + 12);
    uint8_t *png = tbt_alloc(n);
    ck_assert_uint_eq(ex_png_encode(rgb, W, H, png, n - 1), 0); /* short buffer */
    ck_assert_uint_eq(ex_png_encode(rgb, 0, H, png, n), 0);
    ck_assert_uint_eq(ex_png_encode(NULL, W, H, png, n), 0);
    ck_assert_uint_eq(ex_png_size(EX_PNG_MAX_SIDE + 1, 1), 0);
    ck_assert_uint_eq(ex_png_encode(rgb, W, H, png, n), n);
    ck_assert(memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0);
    const uint8_t *c = png + 8;
    const char *const types[3] = {"IHDR", "IDAT", "IEND"};
    const uint8_t *idat = NULL;
    size_t idat_len = 0;
    for (int k = 0; k < 3; k++) {
        const size_t len = be32(c);
        ck_assert(memcmp(c + 4, types[k], 4) == 0);
        ck_assert_uint_eq(be32(c + 8 + len), ex_png_crc32(0, c + 4, 4 + len));
        if (k == 0) {
            ck_assert_uint_eq(len, 13);
            ck_assert_uint_eq(be32(c + 8), W);
            ck_assert_uint_eq(be32(c + 12), H);
            ck_assert(memcmp(c + 16, "\x08\x02\0\0\0", 5) == 0);
        }
        if (k == 1)
            idat = c + 8, idat_len = len;
        c += 12 + len;
    }
    ck_assert_ptr_eq(c, png + n);
    ck_assert(idat[0] == 0x78 && idat[1] == 0x01 && (idat[0] * 256 + idat[1]) % 31 == 0);
    uint8_t *got = tbt_alloc(raw);
    size_t at = 2, have = 0, blocks = 0;
    for (int final = 0; !final;) {
        final = idat[at] & 1;
        ck_assert_uint_eq(idat[at] >> 1, 0); /* BTYPE 00: stored */
        const size_t len = idat[at + 1] | (size_t)idat[at + 2] << 8;
        const size_t nlen = idat[at + 3] | (size_t)idat[at + 4] << 8;
        ck_assert_uint_eq(len ^ nlen, 0xffff);
        ck_assert_uint_le(have + len, raw);
        memcpy(got + have, idat + at + 5, len);
        have += len;
        at += 5 + len;
        blocks++;
    }
    ck_assert_uint_eq(blocks, 2);
    ck_assert_uint_eq(have, raw);
    ck_assert_uint_eq(at + 4, idat_len);
    ck_assert_uint_eq(be32(idat + at), ex_png_adler32(1, got, raw));
    for (size_t y = 0; y < H; y++) {
        ck_assert_uint_eq(got[y * (1 + 3 * W)], 0); /* filter: none */
        ck_assert(memcmp(got + y * (1 + 3 * W) + 1, rgb + y * 3 * W, 3 * W) == 0);
    }
    free(got);
    free(png);
    free(rgb);
}
END_TEST

Suite *suite_clip(void)
{
    Suite *s = suite_create("clip");
    TCase *tc = tcase_create("clipmodel");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_clip_vs_clipmodel, 0, (int)ARRAY_LEN(clip_cases));
    tcase_add_test(tc, test_clip_manifest);
    tcase_add_test(tc, test_clip_threads_bitwise);
    tcase_add_test(tc, test_clip_finite_differences);
    tcase_add_test(tc, test_clip_bad_input);
    tcase_add_test(tc, test_clip_clamp_scale);
    tcase_add_test(tc, test_clip_png_writer);
    suite_add_tcase(s, tc);
    return s;
}
