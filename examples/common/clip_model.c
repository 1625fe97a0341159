/*
 * CLIP's dual encoder on the shared stack: see clip_model.h.
 */
#include "clip_model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_try.h"

const tfm_names tfm_names_clip_text = {
    .wte = "embeddings.token_embedding",
    .wpe = "embeddings.position_embedding",
    .layer = "encoder.layers.%zu",
    .norm_attn = "layer_norm1",
    .norm_mlp = "layer_norm2",
    .q = "self_attn.q_proj",
    .k = "self_attn.k_proj",
    .v = "self_attn.v_proj",
    .attn_out = "self_attn.out_proj",
    .fc_in = "mlp.fc1",
    .fc_out = "mlp.fc2",
    .final_norm = "final_layer_norm",
};

/* The placeholder token table is dropped from clip_model.params by this
 * name (VISION_UNUSED below). */
#define VISION_UNUSED "embeddings.unused_token_embedding"

const tfm_names tfm_names_clip_vision = {
    .wte = VISION_UNUSED,
    .wpe = "embeddings.position_embedding",
    .embed_norm = "pre_layrnorm",
    .layer = "encoder.layers.%zu",
    .norm_attn = "layer_norm1",
    .norm_mlp = "layer_norm2",
    .q = "self_attn.q_proj",
    .k = "self_attn.k_proj",
    .v = "self_attn.v_proj",
    .attn_out = "self_attn.out_proj",
    .fc_in = "mlp.fc1",
    .fc_out = "mlp.fc2",
};

#define TEXT_PREFIX "text_model."
#define VISION_PREFIX "vision_model."

static tb_status fail(tb_ctx *ctx, tb_status s, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return tb_ctx_set_error(ctx, s, "clip: %s", msg);
}

/* ---- configuration ---------------------------------------------------------------- */

clip_config clip_default_config(void)
{
    clip_config c;
    memset(&c, 0, sizeof c);
    c.text_vocab = 64;
    c.text_positions = 16;
    c.text_width = 32;
    c.text_ff = 128;
    c.text_layers = 2;
    c.text_heads = 2;
    c.eos_token_id = 63;
    c.image_size = 24;
    c.patch_size = 8;
    c.channels = 3;
    c.vision_width = 32;
    c.vision_ff = 128;
    c.vision_layers = 2;
    c.vision_heads = 2;
    c.projection_dim = 32;
    c.norm_eps = 1e-5f;
    c.logit_scale_init = 2.6592f;
    c.init_std = 0.02f;
    return c;
}

static size_t n_patches(const clip_config *c)
{
    const size_t g = c->image_size / c->patch_size;
    return g * g;
}

tfm_config clip_text_stack_config(const clip_config *cfg)
{
    tfm_config t;
    memset(&t, 0, sizeof t);
    t.n_layer = cfg->text_layers;
    t.n_head = cfg->text_heads;
    t.d_model = cfg->text_width;
    t.d_ff = cfg->text_ff;
    t.vocab_size = cfg->text_vocab;
    t.max_positions = cfg->text_positions;
    t.norm_place = TFM_PRE_NORM;
    t.norm_kind = TFM_LAYERNORM;
    t.final_norm = 1;
    t.norm_eps = cfg->norm_eps;
    t.causal = 1;
    t.qkv = TFM_QKV_SEPARATE;
    t.layout = TB_LINEAR_OUT_IN;
    t.gelu = TB_GELU_QUICK;
    t.init_std = cfg->init_std;
    t.names = &tfm_names_clip_text;
    return t;
}

tfm_config clip_vision_stack_config(const clip_config *cfg)
{
    tfm_config t = clip_text_stack_config(cfg);
    t.n_layer = cfg->vision_layers;
    t.n_head = cfg->vision_heads;
    t.d_model = cfg->vision_width;
    t.d_ff = cfg->vision_ff;
    t.vocab_size = 1; /* the placeholder (never read: the input is embeddings) */
    t.max_positions = cfg->patch_size && cfg->image_size >= cfg->patch_size
                          ? n_patches(cfg) + 1
                          : 1;
    t.embed_norm = 1; /* pre_layrnorm */
    t.final_norm = 0; /* post_layernorm is the class token's only, below */
    t.causal = 0;
    t.names = &tfm_names_clip_vision;
    return t;
}

static tb_status range(tb_ctx *ctx, const char *field, size_t v, size_t hi)
{
    if (v < 1 || v > hi)
        return fail(ctx, TB_ERR_INVALID_ARG, "%s = %zu is outside 1..%zu", field, v, hi);
    return TB_OK;
}

tb_status clip_config_check(tb_ctx *ctx, const clip_config *c)
{
    if (!c)
        return fail(ctx, TB_ERR_NULL_ARG, "no configuration");
    TRY(range(ctx, "image_size", c->image_size, TFM_MAX_POSITIONS));
    TRY(range(ctx, "patch_size", c->patch_size, c->image_size));
    TRY(range(ctx, "num_channels", c->channels, TFM_MAX_WIDTH));
    if (c->image_size % c->patch_size)
        return fail(ctx, TB_ERR_INVALID_ARG,
                    "image_size %zu is not a multiple of patch_size %zu (the patches must tile "
                    "the image)",
                    c->image_size, c->patch_size);
    const size_t g = c->image_size / c->patch_size;
    if (g > TFM_MAX_POSITIONS / g || g * g + 1 > TFM_MAX_POSITIONS)
        return fail(ctx, TB_ERR_INVALID_ARG, "a %zu x %zu patch grid passes %zu positions", g, g,
                    (size_t)TFM_MAX_POSITIONS);
    if (c->patch_size > TFM_MAX_WIDTH / c->patch_size ||
        c->patch_size * c->patch_size > TFM_MAX_WIDTH / c->channels)
        return fail(ctx, TB_ERR_INVALID_ARG, "a patch of %zu x %zu x %zu values is too large",
                    c->channels, c->patch_size, c->patch_size);
    TRY(range(ctx, "projection_dim", c->projection_dim, TFM_MAX_WIDTH));
    if (c->eos_token_id < 0 || (size_t)c->eos_token_id >= c->text_vocab)
        return fail(ctx, TB_ERR_INVALID_ARG, "eos_token_id %ld is outside the vocabulary 0..%zu",
                    (long)c->eos_token_id, c->text_vocab ? c->text_vocab - 1 : 0);
    if (!isfinite(c->logit_scale_init))
        return fail(ctx, TB_ERR_INVALID_ARG, "logit_scale_init is not finite");
    if (!(c->init_std > 0.0f) || !isfinite(c->init_std))
        return fail(ctx, TB_ERR_INVALID_ARG, "init_std %g is not finite and > 0",
                    (double)c->init_std);
    tfm_config t = clip_text_stack_config(c), v = clip_vision_stack_config(c);
    tb_status s = tfm_config_check(ctx, &t);
    if (s != TB_OK)
        return s; /* tfm names the field (d_model = the text hidden_size, ...) */
    return tfm_config_check(ctx, &v);
}

/* ---- the model --------------------------------------------------------------------- */

/* Every parameter of the stack but the vision placeholder, under prefix. */
static tb_status add_stack(tb_ctx *ctx, tfm *t, const char *prefix, tb_param_list *out)
{
    tb_param_list tmp;
    TRY(tb_param_list_init(ctx, &tmp));
    tb_status s = tfm_params(ctx, t, prefix, &tmp);
    const size_t pl = strlen(prefix);
    for (size_t i = 0; s == TB_OK && i < tmp.count; i++) {
        const char *name = tmp.items[i].name;
        if (strncmp(name + pl, VISION_UNUSED ".", sizeof VISION_UNUSED) == 0)
            continue;
        s = tb_param_list_add(ctx, out, NULL, name, tmp.items[i].param);
    }
    tb_param_list_free(&tmp);
    return s;
}

static tb_status build(tb_ctx *ctx, clip_model *m, const clip_config *cfg, tb_rng *rng)
{
    const size_t Cv = cfg->vision_width, Ct = cfg->text_width, P = cfg->projection_dim;
    const size_t p = cfg->patch_size, K = cfg->channels * p * p;
    tfm_config tc = clip_text_stack_config(cfg), vc = clip_vision_stack_config(cfg);
    TRY(tfm_init(ctx, &m->text, &tc, rng));
    TRY(tfm_init(ctx, &m->vision, &vc, rng));
    TRY(tb_linear_init_layout(ctx, &m->patch, K, Cv, 0, TB_LINEAR_OUT_IN, rng));
    TRY(tb_rng_fill_normal(ctx, rng, m->patch.weight.value, m->patch.weight.numel, 0.0f,
                           cfg->init_std));
    const size_t shape4[4] = {Cv, cfg->channels, p, p};
    TRY(tb_param_view(ctx, &m->patch_weight, m->patch.weight.value, m->patch.weight.grad, 4,
                      shape4));
    TRY(tb_param_init(ctx, &m->class_embedding, 1, &Cv, 0));
    TRY(tb_rng_fill_normal(ctx, rng, m->class_embedding.value, Cv, 0.0f,
                           1.0f / sqrtf((float)Cv)));
    TRY(tb_layernorm_init(ctx, &m->post_layernorm, Cv, cfg->norm_eps,
                          TB_NORM_SCALE | TB_NORM_SHIFT));
    TRY(tb_linear_init_layout(ctx, &m->visual_projection, Cv, P, 0, TB_LINEAR_OUT_IN, rng));
    TRY(tb_rng_fill_normal(ctx, rng, m->visual_projection.weight.value, P * Cv, 0.0f,
                           1.0f / sqrtf((float)Cv)));
    TRY(tb_linear_init_layout(ctx, &m->text_projection, Ct, P, 0, TB_LINEAR_OUT_IN, rng));
    TRY(tb_rng_fill_normal(ctx, rng, m->text_projection.weight.value, P * Ct, 0.0f,
                           1.0f / sqrtf((float)Ct)));
    const size_t one = 1;
    TRY(tb_param_init(ctx, &m->logit_scale, 1, &one, 0));
    m->contrastive = tb_contrastive_default_config();
    m->contrastive.init_logit_scale = cfg->logit_scale_init;
    TRY(tb_contrastive_init_scale(ctx, &m->contrastive, &m->logit_scale));

    /* The names, in CLIPModel's state_dict order. */
    tb_param_list *L = &m->params;
    TRY(tb_param_list_init(ctx, L));
    TRY(add_stack(ctx, &m->text, TEXT_PREFIX, L));
    TRY(tb_param_list_add(ctx, L, VISION_PREFIX "embeddings", "class_embedding",
                          &m->class_embedding));
    TRY(tb_param_list_add(ctx, L, VISION_PREFIX "embeddings.patch_embedding", "weight",
                          &m->patch_weight));
    TRY(add_stack(ctx, &m->vision, VISION_PREFIX, L));
    TRY(tb_layernorm_params(ctx, &m->post_layernorm, VISION_PREFIX "post_layernorm", L));
    TRY(tb_linear_params(ctx, &m->visual_projection, "visual_projection", L));
    TRY(tb_linear_params(ctx, &m->text_projection, "text_projection", L));
    TRY(tb_param_list_add(ctx, L, NULL, "logit_scale", &m->logit_scale));
    return TB_OK;
}

tb_status clip_init(tb_ctx *ctx, clip_model *m, const clip_config *cfg, tb_rng *rng)
{
    if (!m)
        return fail(ctx, TB_ERR_NULL_ARG, "no model");
    memset(m, 0, sizeof *m);
    if (!rng)
        return fail(ctx, TB_ERR_NULL_ARG, "no random stream");
    TRY(clip_config_check(ctx, cfg));
    m->cfg = *cfg;
    tb_status s = build(ctx, m, cfg, rng);
    if (s != TB_OK)
        clip_free(m);
    return s;
}

void clip_free(clip_model *m)
{
    if (!m)
        return;
    tb_param_list_free(&m->params);
    tfm_free(&m->text);
    tfm_free(&m->vision);
    tb_linear_free(&m->patch);
    tb_param_free(&m->patch_weight);
    tb_param_free(&m->class_embedding);
    tb_layernorm_free(&m->post_layernorm);
    tb_linear_free(&m->visual_projection);
    tb_linear_free(&m->text_projection);
    tb_param_free(&m->logit_scale);
    memset(m, 0, sizeof *m);
}

tb_status clip_load(tb_ctx *ctx, clip_model *m, const char *path)
{
    if (!m || !path)
        return fail(ctx, TB_ERR_NULL_ARG, "no model or path");
    tb_st_file f;
    TRY(tb_st_open(ctx, path, &f));
    tb_param_list rest;
    tb_status s = tb_param_list_init(ctx, &rest);
    for (size_t i = 0; s == TB_OK && i < m->params.count; i++)
        if (m->params.items[i].param != &m->logit_scale)
            s = tb_param_list_add(ctx, &rest, NULL, m->params.items[i].name,
                                  m->params.items[i].param);
    /* logit_scale: a 0-d tensor in transformers' files, one float here.
     * Checked before anything is written. */
    const tb_st_tensor *ls = s == TB_OK ? tb_st_find(&f, "logit_scale") : NULL;
    if (s == TB_OK && !ls)
        s = fail(ctx, TB_ERR_NOT_FOUND, "'%s' has no tensor 'logit_scale'", path);
    if (s == TB_OK && (ls->numel != 1 || ls->ndim > 1))
        s = fail(ctx, TB_ERR_SHAPE, "'%s': logit_scale has %zu dimensions and %zu values, not "
                 "one value", path, ls->ndim, ls->numel);
    float scale = 0.0f;
    if (s == TB_OK)
        s = tb_st_read_f32(ctx, ls, &scale, 1);
    if (s == TB_OK && !isfinite(scale))
        s = fail(ctx, TB_ERR_NON_FINITE, "'%s': logit_scale is not finite", path);
    /* Strict: every other parameter present with its shape, and nothing
     * in the file but them and logit_scale (skipped by prefix: no CLIP
     * tensor name starts with it). */
    if (s == TB_OK)
        s = tb_st_load_params(ctx, &f, &rest, TB_ST_STRICT, "logit_scale", NULL);
    if (s == TB_OK)
        m->logit_scale.value[0] = scale;
    tb_param_list_free(&rest);
    tb_st_close(&f);
    return s;
}

tb_status clip_clamp_scale(tb_ctx *ctx, clip_model *m)
{
    if (!m)
        return fail(ctx, TB_ERR_NULL_ARG, "no model");
    return tb_contrastive_clamp_scale(ctx, &m->contrastive, &m->logit_scale);
}

/* ---- activations -------------------------------------------------------------------- */

typedef struct acts_layout_arg {
    clip_acts *a;
    const clip_config *c;
} acts_layout_arg;

static tb_status acts_layout(tb_ctx *ctx, tb_arena *ar, void *obj)
{
    clip_acts *a = ((acts_layout_arg *)obj)->a;
    const clip_config *c = ((acts_layout_arg *)obj)->c;
    const size_t B = a->max_b, T = a->max_t, N = n_patches(c), K = c->channels *
                                                                  c->patch_size * c->patch_size;
    const size_t Cv = c->vision_width, Ct = c->text_width, P = c->projection_dim;
    const size_t Cm = Cv > Ct ? Cv : Ct;
    size_t BN, BN1, BT;
    if (!ex_mul_size(B, N, &BN) || !ex_mul_size(B, N + 1, &BN1) || !ex_mul_size(B, T, &BT) ||
        !ex_mul_size(BN, K, &(size_t){0}) || !ex_mul_size(BN1, Cv, &(size_t){0}) ||
        !ex_mul_size(BT, Ct, &(size_t){0}) || !ex_mul_size(B, B, &(size_t){0}) ||
        !ex_mul_size(B, Cm > P ? Cm : P, &(size_t){0}))
        return fail(ctx, TB_ERR_OVERFLOW, "activations for %zu x %zu overflow", B, T);
    TRY(ex_take(ctx, ar, B, sizeof(size_t), (void **)&a->eos));
    TRY(ex_take_f32(ctx, ar, BN * K, &a->patches));
    TRY(ex_take_f32(ctx, ar, BN * Cv, &a->pe));
    TRY(ex_take_f32(ctx, ar, BN1 * Cv, &a->vemb));
    TRY(ex_take_f32(ctx, ar, BN1 * Cv, &a->dvemb));
    TRY(ex_take_f32(ctx, ar, BN * K, &a->dpatches));
    TRY(ex_take_f32(ctx, ar, B * Cv, &a->vpool));
    TRY(ex_take_f32(ctx, ar, B * Cv, &a->vpool_n));
    TRY(tb_arena_alloc(ctx, ar, a->ln_cache_bytes, &a->ln_cache));
    TRY(ex_take_f32(ctx, ar, B * Ct, &a->tpool));
    TRY(ex_take_f32(ctx, ar, B * P, &a->img));
    TRY(ex_take_f32(ctx, ar, B * P, &a->txt));
    TRY(ex_take_f32(ctx, ar, B * P, &a->img_n));
    TRY(ex_take_f32(ctx, ar, B * P, &a->txt_n));
    TRY(ex_take_f32(ctx, ar, B * B, &a->logits));
    TRY(ex_take_f32(ctx, ar, B * P, &a->dimg));
    TRY(ex_take_f32(ctx, ar, B * P, &a->dtxt));
    TRY(ex_take_f32(ctx, ar, B * Cm, &a->dv));
    TRY(ex_take_f32(ctx, ar, B * Cm, &a->dt));
    TRY(ex_take_f32(ctx, ar, BN1 * Cv, &a->dvis_out));
    TRY(ex_take_f32(ctx, ar, BT * Ct, &a->dtext_out));
    return tb_arena_alloc(ctx, ar, a->con_cache_bytes, &a->con_cache);
}

tb_status clip_acts_init(tb_ctx *ctx, clip_acts *a, const clip_model *m, size_t max_b,
                         size_t max_t)
{
    if (!a)
        return fail(ctx, TB_ERR_NULL_ARG, "no activations");
    memset(a, 0, sizeof *a);
    if (!m || !m->params.count)
        return fail(ctx, TB_ERR_NULL_ARG, "no model (clip_init() first)");
    if (!max_b || !max_t || max_t > m->cfg.text_positions)
        return fail(ctx, TB_ERR_SHAPE, "activations for %zu pairs of %zu tokens (1..%zu tokens)",
                    max_b, max_t, m->cfg.text_positions);
    a->max_b = max_b;
    a->max_t = max_t;
    TRY(tb_layernorm_cache_size(max_b, &a->ln_cache_bytes));
    TRY(tb_contrastive_cache_size(max_b, m->cfg.projection_dim, &a->con_cache_bytes));
    acts_layout_arg arg = {a, &m->cfg};
    tb_status s = ex_layout_alloc(ctx, acts_layout, &arg, &a->buffer, &a->bytes);
    if (s == TB_OK)
        s = tfm_acts_init(ctx, &a->text, &m->text, max_b, max_t);
    if (s == TB_OK)
        s = tfm_acts_init(ctx, &a->vision, &m->vision, max_b, n_patches(&m->cfg) + 1);
    if (s != TB_OK) {
        clip_acts_free(a);
        return s;
    }
    a->bytes += a->text.bytes + a->vision.bytes;
    return TB_OK;
}

void clip_acts_free(clip_acts *a)
{
    if (!a)
        return;
    tfm_acts_free(&a->text);
    tfm_acts_free(&a->vision);
    free(a->buffer);
    memset(a, 0, sizeof *a);
}

/* ---- forward --------------------------------------------------------------------------- */

/* y (B, P) = x / ||x|| per row. The contrastive block refuses zero rows;
 * here a zero row stays zero (retrieval only reads the result). */
static void normalise_rows(const float *x, float *y, size_t B, size_t P)
{
    for (size_t b = 0; b < B; b++) {
        double ss = 0.0;
        for (size_t j = 0; j < P; j++)
            ss += (double)x[b * P + j] * x[b * P + j];
        const double inv = ss > 0.0 ? 1.0 / sqrt(ss) : 0.0;
        for (size_t j = 0; j < P; j++)
            y[b * P + j] = (float)(x[b * P + j] * inv);
    }
}

tb_status clip_encode_image(tb_ctx *ctx, clip_model *m, clip_acts *a, const float *pixels,
                            size_t B, size_t height, size_t width)
{
    if (!m || !a || !pixels)
        return fail(ctx, TB_ERR_NULL_ARG, "no model, activations or pixels");
    const clip_config *c = &m->cfg;
    const size_t S = c->image_size, p = c->patch_size, G = S / p, N = G * G, ch = c->channels;
    const size_t K = ch * p * p, Cv = c->vision_width, P = c->projection_dim;
    a->have_image = 0;
    a->have_loss = 0;
    if (height != S || width != S)
        return fail(ctx, TB_ERR_SHAPE,
                    "a %zu x %zu image; the model takes %zu x %zu (image_size), in %zu x %zu "
                    "patches",
                    height, width, S, S, p, p);
    if (!B || B > a->max_b)
        return fail(ctx, TB_ERR_SHAPE, "a batch of %zu images; the activations hold 1..%zu", B,
                    a->max_b);
    const size_t npix = B * ch * S * S;
    for (size_t i = 0; i < npix; i++)
        if (!isfinite(pixels[i]))
            return fail(ctx, TB_ERR_NON_FINITE, "pixel %zu (image %zu) is not finite", i,
                        i / (ch * S * S));
    /* Patch n = gy G + gx of image b, element (ch, ky, kx): the conv
     * weight's (Cv, ch, p, p) order, so the conv is this Linear. */
    for (size_t b = 0; b < B; b++)
        for (size_t gy = 0; gy < G; gy++)
            for (size_t gx = 0; gx < G; gx++) {
                float *row = a->patches + ((b * N) + gy * G + gx) * K;
                for (size_t k = 0; k < ch; k++)
                    for (size_t ky = 0; ky < p; ky++)
                        memcpy(row + (k * p + ky) * p,
                               pixels + ((b * ch + k) * S + gy * p + ky) * S + gx * p,
                               p * sizeof(float));
            }
    tb_tensor X = tb_tensor_2d(a->patches, B * N, K), Y = tb_tensor_2d(a->pe, B * N, Cv);
    TRY(tb_linear_forward(ctx, &m->patch, &X, &Y));
    for (size_t b = 0; b < B; b++) {
        memcpy(a->vemb + b * (N + 1) * Cv, m->class_embedding.value, Cv * sizeof(float));
        memcpy(a->vemb + (b * (N + 1) + 1) * Cv, a->pe + b * N * Cv, N * Cv * sizeof(float));
    }
    tfm_input in = {B, N + 1, NULL, a->vemb, NULL, NULL};
    TRY(tfm_forward(ctx, &m->vision, &a->vision, TB_MODE_TRAINING, NULL, &in));
    for (size_t b = 0; b < B; b++)
        memcpy(a->vpool + b * Cv, a->vision.out + b * (N + 1) * Cv, Cv * sizeof(float));
    tb_tensor V = tb_tensor_2d(a->vpool, B, Cv), Vn = tb_tensor_2d(a->vpool_n, B, Cv);
    TRY(tb_layernorm_forward(ctx, &m->post_layernorm, &V, &Vn, a->ln_cache, a->ln_cache_bytes));
    tb_tensor I = tb_tensor_2d(a->img, B, P);
    TRY(tb_linear_forward(ctx, &m->visual_projection, &Vn, &I));
    normalise_rows(a->img, a->img_n, B, P);
    a->b = B;
    a->have_image = 1;
    return TB_OK;
}

tb_status clip_encode_text(tb_ctx *ctx, clip_model *m, clip_acts *a, const int32_t *ids,
                           const uint8_t *key_valid, size_t B, size_t T)
{
    if (!m || !a || !ids)
        return fail(ctx, TB_ERR_NULL_ARG, "no model, activations or token ids");
    const clip_config *c = &m->cfg;
    const size_t Ct = c->text_width, P = c->projection_dim;
    a->have_text = 0;
    a->have_loss = 0;
    if (!B || B > a->max_b || !T || T > a->max_t)
        return fail(ctx, TB_ERR_SHAPE,
                    "%zu texts of %zu tokens; the activations hold 1..%zu of 1..%zu", B, T,
                    a->max_b, a->max_t);
    for (size_t i = 0; i < B * T; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= c->text_vocab)
            return fail(ctx, TB_ERR_INVALID_ARG,
                        "token id %ld (text %zu, position %zu) is outside the vocabulary 0..%zu",
                        (long)ids[i], i / T, i % T, c->text_vocab - 1);
    /* The pooled position: CLIPTextTransformer's rule (clip_model.h). */
    for (size_t b = 0; b < B; b++) {
        const int32_t *row = ids + b * T;
        size_t at = 0;
        if (c->eos_token_id == 2) {
            for (size_t t = 1; t < T; t++)
                if (row[t] > row[at])
                    at = t;
        } else {
            while (at < T && row[at] != c->eos_token_id)
                at++;
            if (at == T)
                return fail(ctx, TB_ERR_INVALID_ARG,
                            "text %zu has no end-of-text token (eos_token_id %ld) to pool at", b,
                            (long)c->eos_token_id);
        }
        if (key_valid && !key_valid[b * T + at])
            return fail(ctx, TB_ERR_INVALID_ARG,
                        "text %zu pools at position %zu, which key_valid marks as padding", b, at);
        a->eos[b] = at;
    }
    tfm_input in = {B, T, ids, NULL, NULL, key_valid};
    TRY(tfm_forward(ctx, &m->text, &a->text, TB_MODE_TRAINING, NULL, &in));
    for (size_t b = 0; b < B; b++)
        memcpy(a->tpool + b * Ct, a->text.out + (b * T + a->eos[b]) * Ct, Ct * sizeof(float));
    tb_tensor X = tb_tensor_2d(a->tpool, B, Ct), Y = tb_tensor_2d(a->txt, B, P);
    TRY(tb_linear_forward(ctx, &m->text_projection, &X, &Y));
    normalise_rows(a->txt, a->txt_n, B, P);
    a->ids = ids;
    a->t = T;
    a->b = B;
    a->have_text = 1;
    return TB_OK;
}

tb_status clip_forward(tb_ctx *ctx, clip_model *m, clip_acts *a, const float *pixels,
                       size_t height, size_t width, const int32_t *ids,
                       const uint8_t *key_valid, size_t B, size_t T, float *loss)
{
    TRY(clip_encode_image(ctx, m, a, pixels, B, height, width));
    TRY(clip_encode_text(ctx, m, a, ids, key_valid, B, T));
    const size_t P = m->cfg.projection_dim;
    tb_tensor I = tb_tensor_2d(a->img, B, P), X = tb_tensor_2d(a->txt, B, P);
    tb_tensor Lg = tb_tensor_2d(a->logits, B, B);
    float l = 0.0f;
    TRY(tb_contrastive_forward(ctx, &I, &X, &m->logit_scale, &l, &Lg, a->con_cache,
                               a->con_cache_bytes));
    a->have_loss = 1;
    if (loss)
        *loss = l;
    return TB_OK;
}

/* ---- backward ------------------------------------------------------------------------------ */

tb_status clip_backward(tb_ctx *ctx, clip_model *m, clip_acts *a, float dloss, float *dpixels)
{
    if (!m || !a)
        return fail(ctx, TB_ERR_NULL_ARG, "no model or activations");
    if (!a->have_loss || !a->have_image || !a->have_text)
        return fail(ctx, TB_ERR_STATE,
                    "backward without a clip_forward() before it (or a second backward of one)");
    const clip_config *c = &m->cfg;
    const size_t B = a->b, T = a->t, P = c->projection_dim, Ct = c->text_width;
    const size_t Cv = c->vision_width, S = c->image_size, p = c->patch_size, G = S / p;
    const size_t N = G * G, ch = c->channels, K = ch * p * p;
    tb_tensor I = tb_tensor_2d(a->img, B, P), X = tb_tensor_2d(a->txt, B, P);
    tb_tensor dI = tb_tensor_2d(a->dimg, B, P), dX = tb_tensor_2d(a->dtxt, B, P);
    TRY(tb_contrastive_backward(ctx, &I, &X, &m->logit_scale, dloss, a->con_cache,
                                a->con_cache_bytes, &dI, &dX));

    /* Text: projection, then the pooled rows back into the stack's output. */
    tb_tensor Tp = tb_tensor_2d(a->tpool, B, Ct), dTp = tb_tensor_2d(a->dt, B, Ct);
    TRY(tb_linear_backward(ctx, &m->text_projection, &Tp, &dX, &dTp));
    memset(a->dtext_out, 0, B * T * Ct * sizeof(float));
    for (size_t b = 0; b < B; b++)
        memcpy(a->dtext_out + (b * T + a->eos[b]) * Ct, a->dt + b * Ct, Ct * sizeof(float));
    TRY(tfm_backward(ctx, &m->text, &a->text, a->dtext_out, NULL));

    /* Vision: projection, post_layernorm, the class token's row. */
    tb_tensor Vn = tb_tensor_2d(a->vpool_n, B, Cv), V = tb_tensor_2d(a->vpool, B, Cv);
    tb_tensor dVn = tb_tensor_2d(a->dv, B, Cv), dV = tb_tensor_2d(a->dt, B, Cv);
    TRY(tb_linear_backward(ctx, &m->visual_projection, &Vn, &dI, &dVn));
    TRY(tb_layernorm_backward(ctx, &m->post_layernorm, &V, &dVn, a->ln_cache, a->ln_cache_bytes,
                              &dV));
    memset(a->dvis_out, 0, B * (N + 1) * Cv * sizeof(float));
    for (size_t b = 0; b < B; b++)
        memcpy(a->dvis_out + b * (N + 1) * Cv, a->dt + b * Cv, Cv * sizeof(float));
    TRY(tfm_backward(ctx, &m->vision, &a->vision, a->dvis_out, a->dvemb));
    /* The class embedding is every image's row 0 (summed in batch order);
     * the patch rows go back through the patch Linear. */
    if (m->class_embedding.trainable && m->class_embedding.grad)
        for (size_t b = 0; b < B; b++)
            for (size_t j = 0; j < Cv; j++)
                m->class_embedding.grad[j] += a->dvemb[b * (N + 1) * Cv + j];
    for (size_t b = 0; b < B; b++)
        memcpy(a->pe + b * N * Cv, a->dvemb + (b * (N + 1) + 1) * Cv, N * Cv * sizeof(float));
    tb_tensor Pt = tb_tensor_2d(a->patches, B * N, K), dPe = tb_tensor_2d(a->pe, B * N, Cv);
    tb_tensor dPt = tb_tensor_2d(a->dpatches, B * N, K);
    TRY(tb_linear_backward(ctx, &m->patch, &Pt, &dPe, dpixels ? &dPt : NULL));
    if (dpixels)
        for (size_t b = 0; b < B; b++)
            for (size_t gy = 0; gy < G; gy++)
                for (size_t gx = 0; gx < G; gx++) {
                    const float *row = a->dpatches + ((b * N) + gy * G + gx) * K;
                    for (size_t k = 0; k < ch; k++)
                        for (size_t ky = 0; ky < p; ky++)
                            memcpy(dpixels + ((b * ch + k) * S + gy * p + ky) * S + gx * p,
                                   row + (k * p + ky) * p, p * sizeof(float));
                }
    /* a->pe now holds the patch embeddings' gradient: the next forward
     * rewrites it. */
    a->have_loss = 0; /* one backward per forward */
    return TB_OK;
}
