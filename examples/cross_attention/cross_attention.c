/*
 * cross_attention: where the text enters Stable Diffusion, measured on a
 * task small enough to train in seconds.
 *
 * Stable Diffusion has three networks:
 *   1. a text encoder (CLIP's text transformer): prompt -> one vector per token
 *   2. a denoiser in latent space (a U-Net with transformer blocks): noisy
 *      latent + noise level + the text vectors -> a less noisy latent,
 *      applied step after step from pure noise
 *   3. a decoder (the VAE's): latent (4, 64, 64) -> image (3, 512, 512)
 * The text reaches the image in one place: the cross-attention layers of the
 * denoiser's transformer blocks, whose queries are the latent positions and
 * whose keys and values are the text encoder's token vectors.
 *
 * Here, at toy size, with the library's blocks:
 *   text encoder:  the shared stack (tfm.h), 1 causal layer as CLIP's,
 *                  prompts [BOS colour pattern EOS] (4 tokens, C = 32);
 *                  the empty prompt is [BOS EOS] with the rest masked
 *   latent:        a 6 x 6 grid of 4-channel vectors (SD: 64 x 64 x 4);
 *                  clean latent = intensity * pattern(cell) * colour vector
 *   denoiser:      in Linear(4, C) + position + noise-level embeddings, then
 *                  2 blocks of [self-attention over the 36 latents,
 *                  CROSS-ATTENTION latents -> text tokens (tb_mha with mem),
 *                  MLP], each pre-LayerNorm with a residual, as SD's
 *                  BasicTransformerBlock; LayerNorm, Linear(C, 4): the
 *                  predicted clean latent (SD predicts the noise; the two
 *                  parametrisations are equivalent for a known noise level)
 *   decoder:       a fixed linear map latent (4) -> RGB (3) per cell
 * trained jointly (SD freezes a pre-trained text encoder) on
 * x_t = x_0 + sigma * noise, sigma in {0.5, 1, 2, 4}, mean squared error
 * against x_0, with 10% of the prompts replaced by the empty one (the
 * classifier-free-guidance training SD uses).
 *
 * It prints (1) the denoising loss per noise level with the right prompt,
 * the empty prompt and a wrong prompt; (2) what changing the text does to
 * the output for the same pure noise; (3) the decoded outputs as grids.
 *
 * Every number printed is bitwise identical for any --threads value; only
 * the lines starting with "train:" and "done:" differ.
 * docs/cross_attention.md explains the output.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_arena.h"
#include "ex_cli.h"
#include "ex_random.h"
#include "ex_try.h"
#include "tblocks.h"
#include "tfm.h"

#define GRID 6
#define NPOS (GRID * GRID) /* latent positions */
#define LCH 4              /* latent channels (SD's 4) */
#define DIM 32             /* model width C */
#define FF (4 * DIM)
#define HEADS 4
#define N_BLOCK 2
#define TXT_LEN 4
#define BATCH 16
#define ROWS (BATCH * NPOS)
#define N_LEVEL 4
#define N_COLOUR 4
#define N_PATTERN 4
#define N_PROMPT (N_COLOUR * N_PATTERN)
#define P_EMPTY 0.1 /* prompt dropout while training (classifier-free guidance) */
#define LR 4e-3f
#define WARMUP 50
#define N_EVAL 128  /* evaluation samples per noise level (multiple of BATCH) */
#define N_EDIT 128  /* pure-noise cases per text edit (multiple of BATCH) */
#define LN_EPS 1e-5f
#define LN_FLAGS (TB_NORM_SCALE | TB_NORM_SHIFT)

static const float level_sigma[N_LEVEL] = {0.5f, 1.0f, 2.0f, 4.0f};

/* Tokens. */
enum { TOK_PAD = 0, TOK_BOS, TOK_EOS, TOK_COLOUR0, TOK_PATTERN0 = TOK_COLOUR0 + N_COLOUR,
       VOCAB = TOK_PATTERN0 + N_PATTERN };
static const char *colour_word[N_COLOUR] = {"red", "green", "blue", "yellow"};
static const char *pattern_word[N_PATTERN] = {"rows", "columns", "checker", "square"};
static const char colour_letter[N_COLOUR] = {'R', 'G', 'B', 'Y'};

/* Colour c's latent vector: row c of the 4 x 4 Hadamard matrix (orthogonal,
 * norm 2), and the colour the decoder should paint for it. */
static const float colour_latent[N_COLOUR][LCH] = {
    {1, 1, 1, 1}, {1, -1, 1, -1}, {1, 1, -1, -1}, {1, -1, -1, 1}};
static const float colour_rgb[N_COLOUR][3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {1, 1, 0}};

/* 1 where the pattern is painted. */
static int pattern_on(int pattern, int r, int c)
{
    switch (pattern) {
    case 0: return r % 2 == 0;                     /* rows */
    case 1: return c % 2 == 0;                     /* columns */
    case 2: return (r + c) % 2 == 0;               /* checker */
    default: return r >= 1 && r <= 4 && c >= 1 && c <= 4; /* a 4 x 4 square */
    }
}

/* The template of prompt p (intensity 1): (NPOS, LCH). */
static void prompt_template(int p, float *x)
{
    const int col = p / N_PATTERN, pat = p % N_PATTERN;
    for (int r = 0; r < GRID; r++)
        for (int c = 0; c < GRID; c++)
            for (int k = 0; k < LCH; k++)
                x[(r * GRID + c) * LCH + k] = pattern_on(pat, r, c) ? colour_latent[col][k] : 0.0f;
}

/* Prompt p's tokens, or the empty prompt (p < 0). */
static void prompt_tokens(int p, int32_t *ids, uint8_t *valid)
{
    if (p < 0) {
        const int32_t e[TXT_LEN] = {TOK_BOS, TOK_EOS, TOK_PAD, TOK_PAD};
        for (int i = 0; i < TXT_LEN; i++)
            ids[i] = e[i], valid[i] = i < 2;
        return;
    }
    ids[0] = TOK_BOS;
    ids[1] = TOK_COLOUR0 + p / N_PATTERN;
    ids[2] = TOK_PATTERN0 + p % N_PATTERN;
    ids[3] = TOK_EOS;
    for (int i = 0; i < TXT_LEN; i++)
        valid[i] = 1;
}

/* ---- the model -------------------------------------------------------------- */

static const tfm_names text_names = {
    .wte = "wte", .wpe = "wpe", .layer = "h.%zu", .norm_attn = "ln_1", .norm_mlp = "ln_2",
    .qkv = "attn.qkv", .attn_out = "attn.proj", .fc_in = "mlp.fc", .fc_out = "mlp.proj",
    .final_norm = "ln_f",
};

static tfm_config text_config(void)
{
    tfm_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 1, c.n_head = 2, c.d_model = DIM, c.d_ff = FF;
    c.vocab_size = VOCAB, c.max_positions = TXT_LEN;
    c.norm_place = TFM_PRE_NORM, c.norm_kind = TFM_LAYERNORM, c.final_norm = 1;
    c.norm_eps = LN_EPS, c.causal = 1, c.qkv = TFM_QKV_FUSED, c.layout = TB_LINEAR_OUT_IN;
    c.gelu = TB_GELU_QUICK; /* CLIP's */
    c.names = &text_names;
    return c;
}

typedef struct block {
    tb_layernorm ln1, ln2, ln3;
    tb_mha self, cross;
    tb_linear fc1, fc2;
} block;

typedef struct model {
    tfm text;
    tb_linear in_proj, out_proj; /* LCH -> C, C -> LCH */
    tb_embedding pos, level;     /* (NPOS, C), (N_LEVEL, C) */
    block blk[N_BLOCK];
    tb_layernorm ln_f;
    tb_param_list params;
    size_t n_text; /* the text encoder's parameters (the first in params) */
} model;

static tb_status model_init(tb_ctx *ctx, model *m, tb_rng *rng)
{
    memset(m, 0, sizeof *m);
    const tfm_config tc = text_config();
    TRY(tb_param_list_init(ctx, &m->params));
    TRY(tfm_init(ctx, &m->text, &tc, rng));
    TRY(tfm_params(ctx, &m->text, "text.", &m->params));
    m->n_text = tb_param_list_numel(&m->params, 1);
    TRY(tb_linear_init(ctx, &m->in_proj, LCH, DIM, 1, rng));
    TRY(tb_linear_params(ctx, &m->in_proj, "unet.in", &m->params));
    TRY(tb_embedding_init(ctx, &m->pos, NPOS, DIM, rng));
    TRY(tb_embedding_params(ctx, &m->pos, "unet.pos", &m->params));
    TRY(tb_embedding_init(ctx, &m->level, N_LEVEL, DIM, rng));
    TRY(tb_embedding_params(ctx, &m->level, "unet.level", &m->params));
    for (int b = 0; b < N_BLOCK; b++) {
        block *k = &m->blk[b];
        char name[64];
#define NAMED(part) (snprintf(name, sizeof name, "unet.blocks.%d.%s", b, part), name)
        TRY(tb_layernorm_init(ctx, &k->ln1, DIM, LN_EPS, LN_FLAGS));
        TRY(tb_layernorm_params(ctx, &k->ln1, NAMED("norm1"), &m->params));
        TRY(tb_mha_init(ctx, &k->self, DIM, HEADS, 1, rng));
        TRY(tb_mha_params(ctx, &k->self, NAMED("attn1."), &m->params));
        TRY(tb_layernorm_init(ctx, &k->ln2, DIM, LN_EPS, LN_FLAGS));
        TRY(tb_layernorm_params(ctx, &k->ln2, NAMED("norm2"), &m->params));
        TRY(tb_mha_init(ctx, &k->cross, DIM, HEADS, 1, rng));
        TRY(tb_mha_params(ctx, &k->cross, NAMED("attn2."), &m->params));
        TRY(tb_layernorm_init(ctx, &k->ln3, DIM, LN_EPS, LN_FLAGS));
        TRY(tb_layernorm_params(ctx, &k->ln3, NAMED("norm3"), &m->params));
        TRY(tb_linear_init(ctx, &k->fc1, DIM, FF, 1, rng));
        TRY(tb_linear_params(ctx, &k->fc1, NAMED("ff.0"), &m->params));
        TRY(tb_linear_init(ctx, &k->fc2, FF, DIM, 1, rng));
        TRY(tb_linear_params(ctx, &k->fc2, NAMED("ff.2"), &m->params));
#undef NAMED
    }
    TRY(tb_layernorm_init(ctx, &m->ln_f, DIM, LN_EPS, LN_FLAGS));
    TRY(tb_layernorm_params(ctx, &m->ln_f, "unet.norm_out", &m->params));
    TRY(tb_linear_init(ctx, &m->out_proj, DIM, LCH, 1, rng));
    return tb_linear_params(ctx, &m->out_proj, "unet.out", &m->params);
}

static void model_free(model *m)
{
    tb_param_list_free(&m->params);
    tfm_free(&m->text);
    tb_linear_free(&m->in_proj);
    tb_linear_free(&m->out_proj);
    tb_embedding_free(&m->pos);
    tb_embedding_free(&m->level);
    for (int b = 0; b < N_BLOCK; b++) {
        block *k = &m->blk[b];
        tb_layernorm_free(&k->ln1), tb_layernorm_free(&k->ln2), tb_layernorm_free(&k->ln3);
        tb_mha_free(&k->self), tb_mha_free(&k->cross);
        tb_linear_free(&k->fc1), tb_linear_free(&k->fc2);
    }
    tb_layernorm_free(&m->ln_f);
}

/* One batch: B samples of noisy latent, clean latent, noise level, prompt. */
typedef struct batch {
    size_t b;
    float xt[ROWS * LCH], x0[ROWS * LCH];
    int32_t pos_ids[ROWS], lvl_ids[ROWS];
    int32_t txt[BATCH * TXT_LEN];
    uint8_t txt_valid[BATCH * TXT_LEN];
} batch;

/* What one denoiser block keeps for backward. */
typedef struct block_acts {
    float *x;             /* (R, C) block input */
    float *a1, *s, *h1;   /* norm1(x), self-attention, x + s */
    float *a2, *c, *h2;   /* norm2(h1), cross-attention, h1 + c */
    float *a3, *f, *g, *m; /* norm3(h2), fc1, gelu, fc2; block output h2 + m is next x */
    void *ln1c, *ln2c, *ln3c, *selfc, *crossc;
} block_acts;

typedef struct acts {
    size_t ln_bytes, self_bytes, cross_bytes;
    tfm_acts text;
    float *e;             /* (R, C) level embedding scratch */
    block_acts blk[N_BLOCK];
    float *hN, *af, *out; /* (R, C) last block output, norm_out, (R, LCH) prediction */
    void *lnfc;
    float *dh, *dt, *dt2, *df, *dout, *dmem, *dmem_blk; /* backward scratch */
    tb_attention_mask txt_mask;
    void *buffer;
    size_t bytes;
} acts;

static tb_status acts_layout(tb_ctx *ctx, tb_arena *ar, void *arg)
{
    acts *a = arg;
    TRY(ex_take_f32(ctx, ar, ROWS * DIM, &a->e));
    for (int b = 0; b < N_BLOCK; b++) {
        block_acts *k = &a->blk[b];
        float **f32[] = {&k->x, &k->a1, &k->s, &k->h1, &k->a2, &k->c, &k->h2, &k->a3, &k->m};
        for (size_t i = 0; i < sizeof f32 / sizeof f32[0]; i++)
            TRY(ex_take_f32(ctx, ar, ROWS * DIM, f32[i]));
        TRY(ex_take_f32(ctx, ar, ROWS * FF, &k->f));
        TRY(ex_take_f32(ctx, ar, ROWS * FF, &k->g));
        TRY(tb_arena_alloc(ctx, ar, a->ln_bytes, &k->ln1c));
        TRY(tb_arena_alloc(ctx, ar, a->ln_bytes, &k->ln2c));
        TRY(tb_arena_alloc(ctx, ar, a->ln_bytes, &k->ln3c));
        TRY(tb_arena_alloc(ctx, ar, a->self_bytes, &k->selfc));
        TRY(tb_arena_alloc(ctx, ar, a->cross_bytes, &k->crossc));
    }
    TRY(ex_take_f32(ctx, ar, ROWS * DIM, &a->hN));
    TRY(ex_take_f32(ctx, ar, ROWS * DIM, &a->af));
    TRY(ex_take_f32(ctx, ar, ROWS * LCH, &a->out));
    TRY(tb_arena_alloc(ctx, ar, a->ln_bytes, &a->lnfc));
    TRY(ex_take_f32(ctx, ar, ROWS * DIM, &a->dh));
    TRY(ex_take_f32(ctx, ar, ROWS * DIM, &a->dt));
    TRY(ex_take_f32(ctx, ar, ROWS * DIM, &a->dt2));
    TRY(ex_take_f32(ctx, ar, ROWS * FF, &a->df));
    TRY(ex_take_f32(ctx, ar, ROWS * LCH, &a->dout));
    TRY(ex_take_f32(ctx, ar, BATCH * TXT_LEN * DIM, &a->dmem));
    return ex_take_f32(ctx, ar, BATCH * TXT_LEN * DIM, &a->dmem_blk);
}

static tb_status acts_init(tb_ctx *ctx, acts *a, const model *m)
{
    memset(a, 0, sizeof *a);
    TRY(tb_layernorm_cache_size(ROWS, &a->ln_bytes));
    TRY(tb_mha_cache_size(&m->blk[0].self, BATCH, NPOS, NPOS, &a->self_bytes));
    TRY(tb_mha_cache_size(&m->blk[0].cross, BATCH, NPOS, TXT_LEN, &a->cross_bytes));
    TRY(tfm_acts_init(ctx, &a->text, &m->text, BATCH, TXT_LEN));
    return ex_layout_alloc(ctx, acts_layout, a, &a->buffer, &a->bytes);
}

static void acts_free(acts *a)
{
    tfm_acts_free(&a->text);
    free(a->buffer);
    memset(a, 0, sizeof *a);
}

static void add_into(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

/* Forward; *loss: mean squared error of the prediction against x0. The
 * model has no dropout, so training and inference mode compute the same:
 * every forward fills the caches (evaluation simply never calls backward). */
static tb_status model_forward(tb_ctx *ctx, model *m, acts *a, const batch *bt, double *loss)
{
    const size_t B = bt->b, R = B * NPOS;
    const tfm_input in = {B, TXT_LEN, bt->txt, NULL, NULL, bt->txt_valid};
    /* 1. text encoder: (B, TXT_LEN, C) token vectors, the denoiser's memory. */
    TRY(tfm_forward(ctx, &m->text, &a->text, TB_MODE_TRAINING, NULL, &in));
    tb_tensor mem = tb_tensor_3d(a->text.out, B, TXT_LEN, DIM);
    memset(&a->txt_mask, 0, sizeof a->txt_mask);
    a->txt_mask.key_valid = bt->txt_valid; /* latents never attend to padding tokens */

    /* 2. denoiser: embed the noisy latent, its position and the noise level. */
    tb_tensor xt = tb_tensor_2d((float *)bt->xt, R, LCH);
    tb_tensor x = tb_tensor_2d(a->blk[0].x, R, DIM), e = tb_tensor_2d(a->e, R, DIM);
    TRY(tb_linear_forward(ctx, &m->in_proj, &xt, &x));
    TRY(tb_embedding_forward(ctx, &m->pos, bt->pos_ids, R, &e));
    add_into(a->blk[0].x, a->e, R * DIM);
    TRY(tb_embedding_forward(ctx, &m->level, bt->lvl_ids, R, &e));
    add_into(a->blk[0].x, a->e, R * DIM);
    for (int b = 0; b < N_BLOCK; b++) {
        block *k = &m->blk[b];
        block_acts *ka = &a->blk[b];
        float *next = b + 1 < N_BLOCK ? a->blk[b + 1].x : a->hN;
        tb_tensor bx = tb_tensor_3d(ka->x, B, NPOS, DIM);
        tb_tensor a1 = tb_tensor_3d(ka->a1, B, NPOS, DIM), s = tb_tensor_3d(ka->s, B, NPOS, DIM);
        tb_tensor h1 = tb_tensor_3d(ka->h1, B, NPOS, DIM), a2 = tb_tensor_3d(ka->a2, B, NPOS, DIM);
        tb_tensor c = tb_tensor_3d(ka->c, B, NPOS, DIM), h2 = tb_tensor_3d(ka->h2, B, NPOS, DIM);
        tb_tensor a3 = tb_tensor_2d(ka->a3, R, DIM), f = tb_tensor_2d(ka->f, R, FF);
        tb_tensor g = tb_tensor_2d(ka->g, R, FF), mo = tb_tensor_2d(ka->m, R, DIM);
        TRY(tb_layernorm_forward(ctx, &k->ln1, &bx, &a1, ka->ln1c, a->ln_bytes));
        TRY(tb_mha_forward(ctx, &k->self, TB_MODE_TRAINING, NULL, &a1, NULL, &s, ka->selfc,
                           a->self_bytes));
        for (size_t i = 0; i < R * DIM; i++)
            ka->h1[i] = ka->x[i] + ka->s[i];
        TRY(tb_layernorm_forward(ctx, &k->ln2, &h1, &a2, ka->ln2c, a->ln_bytes));
        /* Where the text enters: queries from the latents, keys and values from the text. */
        TRY(tb_mha_forward(ctx, &k->cross, TB_MODE_TRAINING, &a->txt_mask, &a2, &mem, &c,
                           ka->crossc, a->cross_bytes));
        for (size_t i = 0; i < R * DIM; i++)
            ka->h2[i] = ka->h1[i] + ka->c[i];
        TRY(tb_layernorm_forward(ctx, &k->ln3, &h2, &a3, ka->ln3c, a->ln_bytes));
        TRY(tb_linear_forward(ctx, &k->fc1, &a3, &f));
        TRY(tb_gelu_forward(ctx, TB_GELU_TANH, &f, &g));
        TRY(tb_linear_forward(ctx, &k->fc2, &g, &mo));
        for (size_t i = 0; i < R * DIM; i++)
            next[i] = ka->h2[i] + ka->m[i];
    }
    tb_tensor hN = tb_tensor_2d(a->hN, R, DIM), af = tb_tensor_2d(a->af, R, DIM);
    tb_tensor out = tb_tensor_2d(a->out, R, LCH);
    TRY(tb_layernorm_forward(ctx, &m->ln_f, &hN, &af, a->lnfc, a->ln_bytes));
    TRY(tb_linear_forward(ctx, &m->out_proj, &af, &out));
    double sum = 0.0;
    for (size_t i = 0; i < R * LCH; i++) {
        const double d = (double)a->out[i] - (double)bt->x0[i];
        sum += d * d;
    }
    *loss = sum / (double)(R * LCH);
    return TB_OK;
}

/* Backward of the last forward; adds every parameter gradient. */
static tb_status model_backward(tb_ctx *ctx, model *m, acts *a, const batch *bt)
{
    const size_t B = bt->b, R = B * NPOS;
    const float scale = 2.0f / (float)(R * LCH);
    for (size_t i = 0; i < R * LCH; i++)
        a->dout[i] = scale * (a->out[i] - bt->x0[i]);
    tb_tensor af = tb_tensor_2d(a->af, R, DIM), hN = tb_tensor_2d(a->hN, R, DIM);
    tb_tensor dout = tb_tensor_2d(a->dout, R, LCH);
    tb_tensor dh = tb_tensor_2d(a->dh, R, DIM), dt = tb_tensor_2d(a->dt, R, DIM);
    TRY(tb_linear_backward(ctx, &m->out_proj, &af, &dout, &dt));
    TRY(tb_layernorm_backward(ctx, &m->ln_f, &hN, &dt, a->lnfc, a->ln_bytes, &dh));
    tb_tensor mem = tb_tensor_3d(a->text.out, B, TXT_LEN, DIM);
    memset(a->dmem, 0, B * TXT_LEN * DIM * sizeof(float));
    for (int b = N_BLOCK - 1; b >= 0; b--) {
        block *k = &m->blk[b];
        block_acts *ka = &a->blk[b];
        /* dh: gradient w.r.t. the block output h2 + m. */
        tb_tensor g = tb_tensor_2d(ka->g, R, FF), f = tb_tensor_2d(ka->f, R, FF);
        tb_tensor df = tb_tensor_2d(a->df, R, FF), a3 = tb_tensor_2d(ka->a3, R, DIM);
        tb_tensor h2 = tb_tensor_2d(ka->h2, R, DIM), dt2 = tb_tensor_2d(a->dt2, R, DIM);
        TRY(tb_linear_backward(ctx, &k->fc2, &g, &dh, &df));
        TRY(tb_gelu_backward(ctx, TB_GELU_TANH, &f, &df, &df));
        TRY(tb_linear_backward(ctx, &k->fc1, &a3, &df, &dt));
        TRY(tb_layernorm_backward(ctx, &k->ln3, &h2, &dt, ka->ln3c, a->ln_bytes, &dt2));
        add_into(a->dh, a->dt2, R * DIM); /* dh: now w.r.t. h2 */
        tb_tensor a2 = tb_tensor_3d(ka->a2, B, NPOS, DIM), h1 = tb_tensor_3d(ka->h1, B, NPOS, DIM);
        tb_tensor dh3 = tb_tensor_3d(a->dh, B, NPOS, DIM), dt3 = tb_tensor_3d(a->dt, B, NPOS, DIM);
        tb_tensor dt23 = tb_tensor_3d(a->dt2, B, NPOS, DIM);
        tb_tensor dmem = tb_tensor_3d(a->dmem_blk, B, TXT_LEN, DIM);
        TRY(tb_mha_backward(ctx, &k->cross, &a->txt_mask, &a2, &mem, &dh3, ka->crossc,
                            a->cross_bytes, &dt3, &dmem));
        add_into(a->dmem, a->dmem_blk, B * TXT_LEN * DIM);
        TRY(tb_layernorm_backward(ctx, &k->ln2, &h1, &dt3, ka->ln2c, a->ln_bytes, &dt23));
        add_into(a->dh, a->dt2, R * DIM); /* w.r.t. h1 */
        tb_tensor a1 = tb_tensor_3d(ka->a1, B, NPOS, DIM), bx = tb_tensor_3d(ka->x, B, NPOS, DIM);
        TRY(tb_mha_backward(ctx, &k->self, NULL, &a1, NULL, &dh3, ka->selfc, a->self_bytes, &dt3,
                            NULL));
        TRY(tb_layernorm_backward(ctx, &k->ln1, &bx, &dt3, ka->ln1c, a->ln_bytes, &dt23));
        add_into(a->dh, a->dt2, R * DIM); /* w.r.t. x */
    }
    tb_tensor xt = tb_tensor_2d((float *)bt->xt, R, LCH);
    TRY(tb_linear_backward(ctx, &m->in_proj, &xt, &dh, NULL));
    TRY(tb_embedding_backward(ctx, &m->pos, bt->pos_ids, R, &dh));
    TRY(tb_embedding_backward(ctx, &m->level, bt->lvl_ids, R, &dh));
    /* The text encoder learns only through the cross-attention's dmem. */
    return tfm_backward(ctx, &m->text, &a->text, a->dmem, NULL);
}

/* ---- data --------------------------------------------------------------------- */

/* Sample i of a batch: prompt p (clean latent), text prompt tp (p, another
 * prompt, or -1 for the empty one), noise level lvl; noise from rng. With
 * pure_noise the clean latent is not added (generation's first step). */
static void batch_put(batch *bt, size_t i, int p, int tp, int lvl, float intensity,
                      int pure_noise, tb_rng *rng)
{
    float tmpl[NPOS * LCH];
    prompt_template(p, tmpl);
    for (size_t j = 0; j < NPOS; j++) {
        const size_t r = i * NPOS + j;
        bt->pos_ids[r] = (int32_t)j;
        bt->lvl_ids[r] = lvl;
        for (size_t k = 0; k < LCH; k++) {
            const float x0 = intensity * tmpl[j * LCH + k];
            bt->x0[r * LCH + k] = x0;
            bt->xt[r * LCH + k] =
                (pure_noise ? 0.0f : x0) + level_sigma[lvl] * tb_rng_normal(rng);
        }
    }
    prompt_tokens(tp, bt->txt + i * TXT_LEN, bt->txt_valid + i * TXT_LEN);
}

static float draw_intensity(tb_rng *rng)
{
    return 0.6f + 0.8f * tb_rng_uniform(rng);
}

/* A training batch: random prompts, intensities and levels, 10% empty text. */
static void train_batch(batch *bt, tb_rng *rng)
{
    bt->b = BATCH;
    for (size_t i = 0; i < BATCH; i++) {
        const int p = (int)ex_rand_below(rng, N_PROMPT);
        const int lvl = (int)ex_rand_below(rng, N_LEVEL);
        const float a = draw_intensity(rng);
        const int tp = tb_rng_uniform(rng) < P_EMPTY ? -1 : p;
        batch_put(bt, i, p, tp, lvl, a, 0, rng);
    }
}

/* A prompt that differs from p in colour, pattern or both (kind 0, 1, 2). */
static int edited_prompt(int p, int kind, tb_rng *rng)
{
    int col = p / N_PATTERN, pat = p % N_PATTERN;
    if (kind != 1)
        col = (col + 1 + (int)ex_rand_below(rng, N_COLOUR - 1)) % N_COLOUR;
    if (kind != 0)
        pat = (pat + 1 + (int)ex_rand_below(rng, N_PATTERN - 1)) % N_PATTERN;
    return col * N_PATTERN + pat;
}

/* ---- measurements ------------------------------------------------------------------ */

static float templates[N_PROMPT][NPOS * LCH];

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return s;
}

static double cosine(const float *a, const float *b, size_t n)
{
    const double na = sqrt(dot(a, a, n)), nb = sqrt(dot(b, b, n));
    return na > 0 && nb > 0 ? dot(a, b, n) / (na * nb) : 0.0;
}

/* The prompt whose template is most similar (cosine) to one predicted latent. */
static int nearest_prompt(const float *x)
{
    int best = 0;
    double bc = -2.0;
    for (int p = 0; p < N_PROMPT; p++) {
        const double c = cosine(x, templates[p], NPOS * LCH);
        if (c > bc)
            bc = c, best = p;
    }
    return best;
}

typedef struct level_losses {
    double right, empty, wrong, noisy; /* noisy: the loss of returning x_t itself */
} level_losses;

/* Denoising loss per level with the right, the empty and a wrong prompt, on
 * the same N_EVAL clean latents and noise (eval_seed fixes them). */
static tb_status eval_levels(tb_ctx *ctx, model *m, acts *a, batch *bt, uint64_t eval_seed,
                             level_losses *res)
{
    for (int lvl = 0; lvl < N_LEVEL; lvl++) {
        double sum[3] = {0, 0, 0}, noisy = 0.0;
        for (int which = 0; which < 3; which++) {
            tb_rng rng;
            tb_rng_init(&rng, eval_seed + (uint64_t)lvl); /* same data for every prompt kind */
            for (size_t start = 0; start < N_EVAL; start += BATCH) {
                bt->b = BATCH;
                for (size_t i = 0; i < BATCH; i++) {
                    const int p = (int)ex_rand_below(&rng, N_PROMPT);
                    const float in = draw_intensity(&rng);
                    const int wrong = edited_prompt(p, 2, &rng);
                    const int tp = which == 0 ? p : which == 1 ? -1 : wrong;
                    batch_put(bt, i, p, tp, lvl, in, 0, &rng);
                }
                double loss;
                TRY(model_forward(ctx, m, a, bt, &loss));
                sum[which] += loss;
                if (which == 0)
                    for (size_t i = 0; i < BATCH * NPOS * LCH; i++) {
                        const double d = (double)bt->xt[i] - (double)bt->x0[i];
                        noisy += d * d / (double)(BATCH * NPOS * LCH);
                    }
            }
        }
        const double nb = (double)(N_EVAL / BATCH);
        res[lvl].right = sum[0] / nb, res[lvl].empty = sum[1] / nb, res[lvl].wrong = sum[2] / nb;
        res[lvl].noisy = noisy / nb;
    }
    return TB_OK;
}

typedef struct edit_result {
    double dist;      /* mean ||out_B - out_A|| */
    double norm;      /* mean ||out_A|| */
    double nearer_b;  /* fraction: out_B more similar to B's template than to A's */
    double nearest_b; /* fraction: B's template the most similar of all 16 */
    double nearest_a; /* fraction: out_A's most similar template is A's */
} edit_result;

/* The same pure noise (sigma 4) denoised with prompt A and with an edited
 * prompt B. */
static tb_status eval_edit(tb_ctx *ctx, model *m, acts *a, batch *bt, uint64_t seed, int kind,
                           edit_result *res)
{
    static float out_a[ROWS * LCH];
    int pa[BATCH], pb[BATCH];
    tb_rng rng, noise;
    tb_rng_init(&rng, seed + 100 + (uint64_t)kind);
    memset(res, 0, sizeof *res);
    for (size_t start = 0; start < N_EDIT; start += BATCH) {
        const tb_rng noise0 = rng; /* both prompts see this noise */
        for (int pass = 0; pass < 2; pass++) {
            noise = noise0;
            bt->b = BATCH;
            for (size_t i = 0; i < BATCH; i++) {
                if (pass == 0) {
                    pa[i] = (int)ex_rand_below(&noise, N_PROMPT);
                    pb[i] = edited_prompt(pa[i], kind, &noise);
                } else {
                    ex_rand_below(&noise, N_PROMPT);
                    edited_prompt(pa[i], kind, &noise);
                }
                const int p = pass == 0 ? pa[i] : pb[i];
                batch_put(bt, i, p, p, N_LEVEL - 1, 1.0f, 1, &noise);
            }
            double loss;
            TRY(model_forward(ctx, m, a, bt, &loss));
            if (pass == 0) {
                memcpy(out_a, a->out, sizeof out_a);
                continue;
            }
            for (size_t i = 0; i < BATCH; i++) {
                const float *ya = out_a + i * NPOS * LCH, *yb = a->out + i * NPOS * LCH;
                double d = 0.0;
                for (size_t j = 0; j < NPOS * LCH; j++)
                    d += ((double)yb[j] - ya[j]) * ((double)yb[j] - ya[j]);
                res->dist += sqrt(d);
                res->norm += sqrt(dot(ya, ya, NPOS * LCH));
                res->nearer_b += cosine(yb, templates[pb[i]], NPOS * LCH) >
                                 cosine(yb, templates[pa[i]], NPOS * LCH);
                res->nearest_b += nearest_prompt(yb) == pb[i];
                res->nearest_a += nearest_prompt(ya) == pa[i];
            }
        }
        rng = noise;
    }
    res->dist /= N_EDIT, res->norm /= N_EDIT;
    res->nearer_b /= N_EDIT, res->nearest_b /= N_EDIT, res->nearest_a /= N_EDIT;
    return TB_OK;
}

/* The decoder: latent (LCH) -> RGB per cell, D = sum_c rgb_c h_c^T / 4 (the
 * colour vectors are orthogonal with squared norm 4, so D h_c = rgb_c);
 * then the nearest of black and the four colours, as a letter. */
static char decode_cell(const float *z)
{
    float rgb[3];
    for (int o = 0; o < 3; o++) {
        rgb[o] = 0.0f;
        for (int c = 0; c < N_COLOUR; c++)
            rgb[o] += colour_rgb[c][o] * (float)dot(colour_latent[c], z, LCH) / 4.0f;
    }
    char best = '.';
    double bd = rgb[0] * rgb[0] + rgb[1] * rgb[1] + rgb[2] * rgb[2];
    for (int c = 0; c < N_COLOUR; c++) {
        double d = 0.0;
        for (int o = 0; o < 3; o++)
            d += (rgb[o] - colour_rgb[c][o]) * (rgb[o] - colour_rgb[c][o]);
        if (d < bd)
            bd = d, best = colour_letter[c];
    }
    return best;
}

/* One pure noise denoised with several prompts, decoded side by side. */
static tb_status show_grids(tb_ctx *ctx, model *m, acts *a, batch *bt, uint64_t seed)
{
    static const int shown[] = {0 * N_PATTERN + 0, 2 * N_PATTERN + 0, 2 * N_PATTERN + 2,
                                3 * N_PATTERN + 3, -1};
    enum { N_SHOWN = sizeof shown / sizeof shown[0] };
    tb_rng rng;
    tb_rng_init(&rng, seed + 200);
    bt->b = N_SHOWN;
    for (size_t i = 0; i < N_SHOWN; i++) {
        tb_rng noise = rng; /* the same noise in every column */
        batch_put(bt, i, 0, shown[i], N_LEVEL - 1, 1.0f, 1, &noise);
    }
    double loss;
    TRY(model_forward(ctx, m, a, bt, &loss));
    printf("\n3. One pure-noise latent (sigma 4) denoised with each prompt, then decoded\n"
           "   (letter: nearest of R G B Y and black '.', per latent cell)\n   ");
    for (size_t i = 0; i < N_SHOWN; i++) {
        char label[32];
        if (shown[i] < 0)
            snprintf(label, sizeof label, "\"\" (empty)");
        else
            snprintf(label, sizeof label, "%s %s", colour_word[shown[i] / N_PATTERN],
                     pattern_word[shown[i] % N_PATTERN]);
        printf("%-16s", label);
    }
    printf("\n");
    for (int r = 0; r < GRID; r++) {
        printf("   ");
        for (size_t i = 0; i < N_SHOWN; i++) {
            char row[2 * GRID + 1];
            for (int c = 0; c < GRID; c++) {
                row[2 * c] = decode_cell(a->out + (i * NPOS + (size_t)(r * GRID + c)) * LCH);
                row[2 * c + 1] = ' ';
            }
            row[2 * GRID] = '\0';
            printf("%-16s", row);
        }
        printf("\n");
    }
    return TB_OK;
}

/* ---- main ---------------------------------------------------------------------------- */

static void print_framing(void)
{
    printf("\nStable Diffusion's three parts, and this program's version of each:\n");
    printf("   %-14s %-40s %s\n", "part", "Stable Diffusion", "here");
    printf("   %-14s %-40s %s\n", "text encoder", "CLIP text transformer, 77 x 768",
           "shared stack, 1 causal layer, 4 x 32");
    printf("   %-14s %-40s %s\n", "denoiser", "U-Net on a 4 x 64 x 64 latent, ~50 steps",
           "2 transformer blocks on 4 x 6 x 6, 1 step");
    printf("   %-14s %-40s %s\n", "decoder", "VAE decoder -> 3 x 512 x 512 image",
           "fixed linear map latent -> RGB per cell");
    printf("   the text enters the denoiser only through cross-attention (tb_mha with mem):\n"
           "   queries = the %d latent positions, keys/values = the %d text-token vectors,\n"
           "   in every block: x += SelfAttn(LN(x)); x += CrossAttn(LN(x), text); "
           "x += MLP(LN(x))\n",
           NPOS, TXT_LEN);
}

int main(int argc, char **argv)
{
    tb_ctx ctx;
    int rc = ex_ctx_init(&ctx);
    if (rc >= 0)
        return rc;
    uint64_t steps = 1500, seed = 1, threads = 0;
    const ex_opt opts[] = {
        {"steps", "N", "training steps (batches of 16)", 20, 1000000, &steps},
        {"seed", "S", "seed for the weights, the data and the noise", 0, UINT64_MAX, &seed},
        EX_OPT_THREADS(threads),
    };
    rc = ex_parse_args(argc, argv,
                       "Stable Diffusion's text conditioning at toy size: a denoiser whose\n"
                       "latents cross-attend to a prompt's token vectors, trained to predict\n"
                       "the clean latent; prints the loss with the right, empty and wrong\n"
                       "prompt and how the output follows the text. Writes no files.",
                       opts, sizeof opts / sizeof opts[0]);
    if (rc >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);

    tb_rng master, init_rng, data_rng;
    tb_rng_init(&master, seed);
    tb_rng_init(&init_rng, tb_rng_next(&master));
    tb_rng_init(&data_rng, tb_rng_next(&master));
    const uint64_t eval_seed = tb_rng_next(&master);
    for (int p = 0; p < N_PROMPT; p++)
        prompt_template(p, templates[p]);

    /* Linear warm-up (WARMUP steps, at most half the run), cosine decay to LR / 10. */
    const uint64_t warmup = steps / 2 < WARMUP ? steps / 2 : WARMUP;
    const tb_lr_schedule sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, warmup, steps, 0.1f);
    printf("cross_attention: libtblocks %s, seed %llu\n", tb_version_string(),
           (unsigned long long)seed);
    print_framing();
    const double t0 = ex_seconds();
    model m;
    memset(&m, 0, sizeof m);
    acts a;
    tb_adam opt;
    memset(&a, 0, sizeof a);
    memset(&opt, 0, sizeof opt);
    batch *bt = calloc(1, sizeof *bt);
    tb_status s = bt ? TB_OK : TB_ERR_NO_MEMORY;
    if (s == TB_OK)
        s = model_init(&ctx, &m, &init_rng);
    if (s == TB_OK)
        s = acts_init(&ctx, &a, &m);
    tb_adam_config oc = tb_adam_default_config();
    oc.lr = LR;
    if (s == TB_OK)
        s = tb_adam_init(&ctx, &opt, &m.params, &oc);
    if (s == TB_OK)
        s = tb_lr_schedule_check(&sched);
    if (ex_failed(&ctx, s, "setting up the model")) {
        rc = EX_EXIT_FAILURE;
        goto out;
    }
    printf("\nmodel: %zu parameters (text encoder %zu); prompts: %d colours x %d patterns, "
           "10%% empty while training\n",
           tb_param_list_numel(&m.params, 1), m.n_text, N_COLOUR, N_PATTERN);
    printf("train: %llu steps of %d samples, Adam lr %.0e (warm-up %d, cosine), threads %d, "
           "kernels %s\n",
           (unsigned long long)steps, BATCH, (double)LR, (int)warmup, ctx.num_threads,
           ex_kernel_name(&ctx));
    printf("   %6s %12s\n", "step", "train_mse");
    double run = 0.0;
    const uint64_t log_every = steps >= 5 ? steps / 5 : 1;
    for (uint64_t step = 0; step < steps; step++) {
        train_batch(bt, &data_rng);
        double loss;
        tb_param_list_zero_grad(&m.params);
        s = model_forward(&ctx, &m, &a, bt, &loss);
        if (s == TB_OK && !isfinite(loss))
            s = tb_ctx_set_error(&ctx, TB_ERR_NON_FINITE, "loss %g at step %llu", loss,
                                 (unsigned long long)step);
        if (s == TB_OK)
            s = model_backward(&ctx, &m, &a, bt);
        if (s == TB_OK)
            s = tb_adam_step(&ctx, &opt, tb_lr_factor(&sched, step));
        if (ex_failed(&ctx, s, "training")) {
            rc = EX_EXIT_FAILURE;
            goto out;
        }
        run += loss;
        if ((step + 1) % log_every == 0 || step + 1 == steps) {
            const uint64_t n = (step + 1) % log_every ? (step + 1) % log_every : log_every;
            printf("   %6llu %12.4f\n", (unsigned long long)(step + 1), run / (double)n);
            run = 0.0;
        }
    }

    level_losses lv[N_LEVEL];
    s = eval_levels(&ctx, &m, &a, bt, eval_seed, lv);
    if (ex_failed(&ctx, s, "evaluation")) {
        rc = EX_EXIT_FAILURE;
        goto out;
    }
    printf("\n1. Denoising loss (MSE against the clean latent) on %d held-out samples per level;\n"
           "   the same latents and noise with each text\n",
           N_EVAL);
    printf("   %6s %12s %12s %12s %12s %12s\n", "sigma", "input x_t", "right", "empty \"\"",
           "wrong", "empty/right");
    for (int l = 0; l < N_LEVEL; l++)
        printf("   %6.1f %12.4f %12.4f %12.4f %12.4f %12.2f\n", (double)level_sigma[l],
               lv[l].noisy, lv[l].right, lv[l].empty, lv[l].wrong, lv[l].empty / lv[l].right);

    static const char *edit_label[3] = {"colour only", "pattern only", "colour and pattern"};
    edit_result er[3];
    printf("\n2. Change the text, keep the noise: %d pure-noise latents (sigma 4) denoised\n"
           "   with prompt A and with prompt B (A edited); similarity = cosine to a template\n",
           N_EDIT);
    printf("   %-20s %11s %11s %14s %14s %14s\n", "edit A -> B", "|out_A|", "|out_B-out_A|",
           "B nearer B", "B nearest=B", "A nearest=A");
    for (int k = 0; k < 3; k++) {
        s = eval_edit(&ctx, &m, &a, bt, eval_seed, k, &er[k]);
        if (ex_failed(&ctx, s, "text edits")) {
            rc = EX_EXIT_FAILURE;
            goto out;
        }
        printf("   %-20s %11.3f %13.3f %14.3f %14.3f %14.3f\n", edit_label[k], er[k].norm,
               er[k].dist, er[k].nearer_b, er[k].nearest_b, er[k].nearest_a);
    }
    s = show_grids(&ctx, &m, &a, bt, eval_seed);
    if (ex_failed(&ctx, s, "grids")) {
        rc = EX_EXIT_FAILURE;
        goto out;
    }
    printf("done: %.2f s, threads %d\n", ex_seconds() - t0, ctx.num_threads);
    printf("final: right_s4=%.4f empty_s4=%.4f wrong_s4=%.4f right_s05=%.4f empty_s05=%.4f "
           "noisy_s05=%.4f colour_hit=%.3f pattern_hit=%.3f both_hit=%.3f edit_dist=%.3f\n",
           lv[3].right, lv[3].empty, lv[3].wrong, lv[0].right, lv[0].empty, lv[0].noisy,
           er[0].nearest_b, er[1].nearest_b, er[2].nearest_b, er[2].dist);
    rc = EX_EXIT_OK;
out:
    tb_adam_free(&opt);
    acts_free(&a);
    model_free(&m);
    free(bt);
    return rc;
}
