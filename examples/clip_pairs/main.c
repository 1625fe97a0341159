/*
 * clip_pairs: CLIP's dual encoder (examples/common/clip_model.h) trained
 * contrastively on caption/image pairs the program draws itself, with
 * zero-shot retrieval measured before and after.
 *
 * A pair is a 24 x 24 RGB picture of one coloured shape at one place, on a
 * noisy grey background, and its caption, e.g. "a red square at the top
 * left" or "a cyan cross in the centre": 6 colours x 4 shapes x 5 places =
 * 120 combinations, each drawn afresh every time (position jitter, size,
 * brightness, background, noise), over a word-level vocabulary of 22
 * tokens. A fifth of the combinations (those with colour + shape + place
 * divisible by 5) never appear in training.
 *
 * Training: AdamW on batches of distinct training combinations (so no
 * caption in a batch is a false negative of another), warm-up then cosine
 * decay, the logit scale clamped to ln 100 after each step as CLIP does.
 * Retrieval, on pictures drawn from a separate stream (the same for the
 * untrained baseline and the trained model): each caption ranks every
 * picture of the set by cosine similarity (text -> image) and each picture
 * every caption (image -> text); top-1 and top-5 are how often the true
 * partner ranks first or in the first five. Two sets: new pictures of the
 * 96 training combinations, and the 24 combinations never trained on
 * (compositional zero-shot: the words were seen, only in other
 * combinations).
 *
 * With --out DIR a few held-out pictures are written as PNG (4x enlarged)
 * with their true and best captions in DIR/captions.txt.
 * Everything is seeded; the numbers are the same for any --threads.
 * docs/clip_pairs.md explains the output.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "clip_model.h"
#include "ex_cli.h"
#include "ex_file.h"
#include "ex_png.h"
#include "ex_random.h"
#include "tblocks.h"

#define SIDE 24
#define PATCH 6
#define N_COLOURS 6
#define N_SHAPES 4
#define N_PLACES 5
#define N_COMBOS (N_COLOURS * N_SHAPES * N_PLACES)
#define MAX_TOKENS 9 /* <bos> a colour shape at the top left <eos> */
#define N_PNG 6
#define PNG_SCALE 4

/* ---- the vocabulary and the captions ------------------------------------------- */

enum { TOK_PAD = 0, TOK_BOS = 1, TOK_A = 2, TOK_COLOUR0 = 3, TOK_SHAPE0 = TOK_COLOUR0 + N_COLOURS,
       TOK_AT = TOK_SHAPE0 + N_SHAPES, TOK_IN, TOK_THE, TOK_TOP, TOK_BOTTOM, TOK_LEFT, TOK_RIGHT,
       TOK_CENTRE, TOK_EOS, VOCAB };

static const char *const words[VOCAB] = {
    "<pad>", "<bos>", "a", "red", "green", "blue", "yellow", "magenta", "cyan", "square",
    "circle", "triangle", "cross", "at", "in", "the", "top", "bottom", "left", "right",
    "centre", "<eos>"};

static const float colours[N_COLOURS][3] = {
    {1.0f, 0.1f, 0.1f}, {0.1f, 0.9f, 0.1f}, {0.2f, 0.35f, 1.0f},
    {1.0f, 0.95f, 0.1f}, {1.0f, 0.1f, 1.0f}, {0.1f, 0.95f, 0.95f}};

/* Place centres (x, y): top left, top right, bottom left, bottom right, centre. */
static const int places[N_PLACES][2] = {{6, 6}, {17, 6}, {6, 17}, {17, 17}, {12, 12}};

typedef struct combo {
    int colour, shape, place;
} combo;

static combo combo_of(size_t id)
{
    combo c = {(int)(id / (N_SHAPES * N_PLACES)), (int)(id / N_PLACES % N_SHAPES),
               (int)(id % N_PLACES)};
    return c;
}

static int held_out(size_t id)
{
    const combo c = combo_of(id);
    return (c.colour + c.shape + c.place) % 5 == 0;
}

/* The caption's tokens into ids[MAX_TOKENS] (padded with <pad>) and
 * valid[]; returns its length. */
static size_t caption(size_t id, int32_t *ids, uint8_t *valid)
{
    const combo c = combo_of(id);
    size_t n = 0;
    ids[n++] = TOK_BOS;
    ids[n++] = TOK_A;
    ids[n++] = TOK_COLOUR0 + c.colour;
    ids[n++] = TOK_SHAPE0 + c.shape;
    if (c.place == 4) {
        ids[n++] = TOK_IN;
        ids[n++] = TOK_THE;
        ids[n++] = TOK_CENTRE;
    } else {
        ids[n++] = TOK_AT;
        ids[n++] = TOK_THE;
        ids[n++] = c.place < 2 ? TOK_TOP : TOK_BOTTOM;
        ids[n++] = c.place % 2 ? TOK_RIGHT : TOK_LEFT;
    }
    ids[n++] = TOK_EOS;
    for (size_t t = 0; t < MAX_TOKENS; t++) {
        valid[t] = t < n;
        if (t >= n)
            ids[t] = TOK_PAD;
    }
    return n;
}

/* The caption as text (without <bos> and <eos>). */
static void caption_text(size_t id, char *buf, size_t size)
{
    int32_t ids[MAX_TOKENS];
    uint8_t valid[MAX_TOKENS];
    const size_t n = caption(id, ids, valid);
    size_t at = 0;
    buf[0] = '\0';
    for (size_t t = 1; t + 1 < n && at < size; t++)
        at += (size_t)snprintf(buf + at, size - at, "%s%s", t > 1 ? " " : "", words[ids[t]]);
}

/* ---- the pictures ------------------------------------------------------------------ */

static int inside(int shape, int dx, int dy, int r)
{
    switch (shape) {
    case 0: /* square */
        return abs(dx) <= r && abs(dy) <= r;
    case 1: /* circle */
        return dx * dx + dy * dy <= r * r + r;
    case 2: /* triangle, pointing up */
        return dy >= -r && dy <= r && 2 * abs(dx) <= dy + r;
    default: /* cross */
        return (abs(dx) <= 1 && abs(dy) <= r) || (abs(dy) <= 1 && abs(dx) <= r);
    }
}

/* Draw combination id into rgb (SIDE x SIDE x 3 in [0, 1], channel-last). */
static void render(tb_rng *rng, size_t id, float *rgb)
{
    const combo c = combo_of(id);
    const float bg = 0.1f + 0.2f * tb_rng_uniform(rng);
    const float bright = 0.75f + 0.25f * tb_rng_uniform(rng);
    const int cx = places[c.place][0] + (int)ex_rand_below(rng, 3) - 1;
    const int cy = places[c.place][1] + (int)ex_rand_below(rng, 3) - 1;
    const int r = 3 + (int)ex_rand_below(rng, 2);
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++) {
            const int in = inside(c.shape, x - cx, y - cy, r);
            for (int k = 0; k < 3; k++) {
                float v = in ? bright * colours[c.colour][k] : bg;
                v += 0.08f * (tb_rng_uniform(rng) - 0.5f);
                rgb[(y * SIDE + x) * 3 + k] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
            }
        }
}

/* A set of pairs: pixels (n, 3, SIDE, SIDE) in [-1, 1] as the model takes
 * them, the pictures (n, SIDE, SIDE, 3) in [0, 1] for PNG, the captions. */
typedef struct pairs {
    size_t n;
    size_t *combo;
    float *pixels, *rgb;
    int32_t *ids;
    uint8_t *valid;
} pairs;

static int pairs_alloc(pairs *p, size_t n)
{
    memset(p, 0, sizeof *p);
    p->n = n;
    p->combo = malloc(n * sizeof *p->combo);
    p->pixels = malloc(n * 3 * SIDE * SIDE * sizeof(float));
    p->rgb = malloc(n * 3 * SIDE * SIDE * sizeof(float));
    p->ids = malloc(n * MAX_TOKENS * sizeof(int32_t));
    p->valid = malloc(n * MAX_TOKENS);
    return p->combo && p->pixels && p->rgb && p->ids && p->valid;
}

static void pairs_free(pairs *p)
{
    free(p->combo);
    free(p->pixels);
    free(p->rgb);
    free(p->ids);
    free(p->valid);
    memset(p, 0, sizeof *p);
}

/* Pair i := a fresh drawing of combination id. */
static void pairs_set(pairs *p, size_t i, size_t id, tb_rng *rng)
{
    p->combo[i] = id;
    float *rgb = p->rgb + i * 3 * SIDE * SIDE;
    render(rng, id, rgb);
    for (size_t k = 0; k < 3; k++)
        for (size_t y = 0; y < SIDE; y++)
            for (size_t x = 0; x < SIDE; x++)
                p->pixels[((i * 3 + k) * SIDE + y) * SIDE + x] =
                    2.0f * rgb[(y * SIDE + x) * 3 + k] - 1.0f;
    caption(id, p->ids + i * MAX_TOKENS, p->valid + i * MAX_TOKENS);
}

/* ---- retrieval --------------------------------------------------------------------- */

typedef struct retrieval {
    double t2i1, t2i5, i2t1, i2t5; /* fractions */
} retrieval;

/* sim (n, n): sim[i][j] = cos(image i, text j). */
static int embed_set(tb_ctx *ctx, clip_model *m, clip_acts *a, const pairs *p, float *sim)
{
    const size_t n = p->n, P = m->cfg.projection_dim;
    if (ex_failed(ctx, clip_encode_image(ctx, m, a, p->pixels, n, SIDE, SIDE), "image tower"))
        return 0;
    float *img = malloc(n * P * sizeof(float));
    if (!img)
        return 0;
    memcpy(img, a->img_n, n * P * sizeof(float));
    if (ex_failed(ctx, clip_encode_text(ctx, m, a, p->ids, p->valid, n, MAX_TOKENS),
                  "text tower")) {
        free(img);
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (size_t k = 0; k < P; k++)
                s += img[i * P + k] * a->txt_n[j * P + k];
            sim[i * n + j] = s;
        }
    free(img);
    return 1;
}

/* Rank of the true partner: how many candidates score strictly higher
 * (ties count in its favour, which cannot matter for float cosines of
 * distinct drawings but keeps the rule exact). */
static retrieval score(const float *sim, size_t n)
{
    retrieval r = {0, 0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        size_t above_t2i = 0, above_i2t = 0;
        for (size_t j = 0; j < n; j++) {
            above_t2i += sim[j * n + i] > sim[i * n + i]; /* text i: image j */
            above_i2t += sim[i * n + j] > sim[i * n + i]; /* image i: text j */
        }
        r.t2i1 += above_t2i < 1, r.t2i5 += above_t2i < 5;
        r.i2t1 += above_i2t < 1, r.i2t5 += above_i2t < 5;
    }
    r.t2i1 /= (double)n, r.t2i5 /= (double)n, r.i2t1 /= (double)n, r.i2t5 /= (double)n;
    return r;
}

static void print_row(const char *label, retrieval r)
{
    printf("  %-22s %6.1f%% %6.1f%%   %6.1f%% %6.1f%%\n", label, 100 * r.t2i1, 100 * r.t2i5,
           100 * r.i2t1, 100 * r.i2t5);
}

static void print_header(const char *what, size_t n)
{
    const double c5 = n < 5 ? 1.0 : 5.0 / (double)n;
    printf("retrieval, %s (%zu pairs; chance: top-1 %.1f%%, top-5 %.1f%%)\n", what, n,
           100.0 / (double)n, 100.0 * c5);
    printf("  %-22s  text->image      image->text\n", "");
    printf("  %-22s  top-1   top-5     top-1   top-5\n", "");
}

/* ---- PNG ------------------------------------------------------------------------------ */

static int write_pngs(const char *dir, const pairs *p, const float *sim)
{
    char path[4096], best_text[96], true_text[96];
    snprintf(path, sizeof path, "%s/captions.txt", dir);
    ex_out cap;
    if (!ex_out_open(&cap, path, "captions file"))
        return 0;
    const size_t n = p->n, W = SIDE * PNG_SCALE;
    uint8_t *img = malloc(W * W * 3);
    if (!img) {
        ex_out_discard(&cap);
        return 0;
    }
    printf("\npictures with their best caption (image->text, trained model):\n");
    int ok = 1;
    for (size_t i = 0; ok && i < N_PNG && i < n; i++) {
        size_t best = 0;
        for (size_t j = 1; j < n; j++)
            if (sim[i * n + j] > sim[i * n + best])
                best = j;
        const float *rgb = p->rgb + i * 3 * SIDE * SIDE;
        for (size_t y = 0; y < W; y++)
            for (size_t x = 0; x < W; x++)
                for (size_t k = 0; k < 3; k++)
                    img[(y * W + x) * 3 + k] = (uint8_t)lrintf(
                        255.0f * rgb[((y / PNG_SCALE) * SIDE + x / PNG_SCALE) * 3 + k]);
        char name[64];
        snprintf(name, sizeof name, "pair_%02zu.png", i);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        ok = ex_png_write(path, img, W, W, "picture");
        caption_text(p->combo[i], true_text, sizeof true_text);
        caption_text(p->combo[best], best_text, sizeof best_text);
        fprintf(cap.f, "%s\ttrue: %s\tbest: %s\tcos %.3f\n", name, true_text, best_text,
                (double)sim[i * n + best]);
        printf("  %s  true: %-32s best: %-32s %s\n", name, true_text, best_text,
               best == i ? "(right)" : "(wrong)");
    }
    free(img);
    if (ok)
        ok = ex_out_commit(&cap, "captions file");
    else
        ex_out_discard(&cap);
    if (ok)
        printf("  written to %s/ (pair_*.png, captions.txt)\n", dir);
    return ok;
}

/* ---- main ------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    uint64_t seed = 1, threads = 0, steps = 1000, batch = 32, width = 48, layers = 2;
    double lr = 2e-3, init_std = 0.1;
    const char *out_dir = NULL;
    const ex_opt opts[] = {
        {"seed", "N", "random seed (weights, training pictures; the test sets use seed + 1)", 0,
         UINT64_MAX, &seed},
        EX_OPT_THREADS(threads),
        {"steps", "N", "AdamW steps (0: only the untrained baseline)", 0, 1000000, &steps},
        {"batch", "N", "pairs per step (distinct training combinations)", 2, 96, &batch},
        {"width", "N", "width of both towers (a multiple of 4: 4 heads)", 4, 1024, &width},
        {"layers", "N", "layers of each tower", 1, 24, &layers},
    };
    const ex_xopt xopts[] = {
        {"lr", "X", "peak learning rate", &lr, NULL, 1e-6, 1.0},
        {"init-std", "X", "initial weights N(0, X) (transformers' initializer_range)", &init_std,
         NULL, 1e-4, 1.0},
        {"out", "DIR", "write a few held-out pictures as PNG with their best captions into DIR "
                       "(created if missing)", NULL, &out_dir, 0, 0},
    };
    int rc = ex_parse_args_ex(argc, argv,
                              "Train CLIP's dual encoder contrastively on generated caption/image\n"
                              "pairs and print zero-shot retrieval before and after training.",
                              opts, sizeof opts / sizeof opts[0], xopts,
                              sizeof xopts / sizeof xopts[0]);
    if (rc >= 0)
        return rc;
    if (width % 4) {
        fprintf(stderr, "error: --width %llu is not a multiple of the 4 heads\n",
                (unsigned long long)width);
        return EX_EXIT_USAGE;
    }
    if (out_dir) {
        if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
            fprintf(stderr, "error: cannot create the output directory %s: %s\n", out_dir,
                    strerror(errno));
            return EX_EXIT_FAILURE;
        }
        char probe[4096];
        snprintf(probe, sizeof probe, "%s/captions.txt", out_dir);
        if (!ex_check_output(probe, "captions file"))
            return EX_EXIT_FAILURE;
    }
    tb_ctx ctx;
    if ((rc = ex_ctx_init(&ctx)) >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);
    const double t0 = ex_seconds();
    printf("clip_pairs: libtblocks %s, seed %llu, kernels %s\n\n", tb_version_string(),
           (unsigned long long)seed, ex_kernel_name(&ctx));

    clip_config cfg = clip_default_config();
    cfg.text_vocab = VOCAB;
    cfg.text_positions = MAX_TOKENS;
    cfg.eos_token_id = TOK_EOS;
    cfg.text_width = cfg.vision_width = (size_t)width;
    cfg.text_ff = cfg.vision_ff = 4 * (size_t)width;
    cfg.text_layers = cfg.vision_layers = (size_t)layers;
    cfg.text_heads = cfg.vision_heads = 4;
    cfg.image_size = SIDE;
    cfg.patch_size = PATCH;
    cfg.projection_dim = 32;
    cfg.init_std = (float)init_std;

    size_t train_ids[N_COMBOS], n_train = 0, n_unseen = 0;
    for (size_t id = 0; id < N_COMBOS; id++)
        if (!held_out(id))
            train_ids[n_train++] = id;
    n_unseen = N_COMBOS - n_train;
    if (batch > n_train)
        batch = n_train;

    tb_rng rng, test_rng;
    tb_rng_init(&rng, seed);
    tb_rng_init(&test_rng, seed + 1);
    clip_model m;
    clip_acts a;
    pairs train, seen, unseen;
    const size_t max_b = n_train > batch ? n_train : (size_t)batch;
    if (ex_failed(&ctx, clip_init(&ctx, &m, &cfg, &rng), "model") ||
        ex_failed(&ctx, clip_acts_init(&ctx, &a, &m, max_b, MAX_TOKENS), "activations"))
        return EX_EXIT_FAILURE;
    if (!pairs_alloc(&train, (size_t)batch) || !pairs_alloc(&seen, n_train) ||
        !pairs_alloc(&unseen, n_unseen)) {
        fprintf(stderr, "error: out of memory\n");
        return EX_EXIT_FAILURE;
    }
    for (size_t i = 0, u = 0; i < N_COMBOS; i++)
        if (held_out(i))
            pairs_set(&unseen, u++, i, &test_rng);
    for (size_t i = 0; i < n_train; i++)
        pairs_set(&seen, i, train_ids[i], &test_rng);

    printf("data: %dx%d RGB pictures of %d colours x %d shapes x %d places = %d combinations, "
           "drawn afresh each time;\n      %zu combinations train, %zu are never trained on; "
           "vocabulary of %d words\n",
           SIDE, SIDE, N_COLOURS, N_SHAPES, N_PLACES, N_COMBOS, n_train, n_unseen, VOCAB);
    printf("model: CLIP, text and vision towers of %llu layers, width %llu, 4 heads, quick GELU; "
           "%dx%d patches (%d per picture + class token); projection %zu; %zu parameters\n\n",
           (unsigned long long)layers, (unsigned long long)width, PATCH, PATCH,
           (SIDE / PATCH) * (SIDE / PATCH), cfg.projection_dim,
           tb_param_list_numel(&m.params, 1));

    float *sim_seen = malloc(n_train * n_train * sizeof(float));
    float *sim_unseen = malloc(n_unseen * n_unseen * sizeof(float));
    if (!sim_seen || !sim_unseen)
        return EX_EXIT_FAILURE;
    if (!embed_set(&ctx, &m, &a, &seen, sim_seen) ||
        !embed_set(&ctx, &m, &a, &unseen, sim_unseen))
        return EX_EXIT_FAILURE;
    const retrieval base_seen = score(sim_seen, n_train);
    const retrieval base_unseen = score(sim_unseen, n_unseen);

    /* ---- training ------------------------------------------------------------------ */
    tb_adam_config ac = tb_adamw_default_config();
    ac.lr = (float)lr;
    ac.weight_decay = 0.1f;
    ac.beta2 = 0.98f; /* CLIP's */
    ac.eps = 1e-6f;
    tb_adam opt;
    if (ex_failed(&ctx, tb_adam_init(&ctx, &opt, &m.params, &ac), "optimizer") ||
        ex_failed(&ctx, tb_adam_add_group(&ctx, &opt, (float)lr, 0.0f, tb_select_no_decay, NULL,
                                          NULL),
                  "optimizer group"))
        return EX_EXIT_FAILURE;
    const uint64_t warmup = steps / 20 + 1;
    if (steps)
        printf("training: %llu AdamW steps, batches of %llu, lr %g (warm-up %llu steps, cosine "
               "decay), weight decay 0.1 on matrices\n",
               (unsigned long long)steps, (unsigned long long)batch, lr,
               (unsigned long long)warmup);
    size_t order[N_COMBOS];
    double window = 0.0;
    size_t in_window = 0;
    const uint64_t report = steps >= 10 ? steps / 10 : 1;
    for (uint64_t s = 0; s < steps; s++) {
        for (size_t i = 0; i < n_train; i++)
            order[i] = train_ids[i];
        ex_shuffle(&rng, order, n_train);
        for (size_t i = 0; i < batch; i++)
            pairs_set(&train, i, order[i], &rng);
        float loss;
        tb_param_list_zero_grad(&m.params);
        if (ex_failed(&ctx, clip_forward(&ctx, &m, &a, train.pixels, SIDE, SIDE, train.ids,
                                         train.valid, (size_t)batch, MAX_TOKENS, &loss),
                      "forward") ||
            ex_failed(&ctx, clip_backward(&ctx, &m, &a, 1.0f, NULL), "backward"))
            return EX_EXIT_FAILURE;
        const double f = s < warmup ? (double)(s + 1) / (double)warmup
                                    : 0.5 * (1.0 + cos(3.14159265358979323846 * (double)(s - warmup) /
                                                       (double)(steps - warmup)));
        if (ex_failed(&ctx, tb_adam_step(&ctx, &opt, (float)f), "optimizer step") ||
            ex_failed(&ctx, clip_clamp_scale(&ctx, &m), "logit scale clamp"))
            return EX_EXIT_FAILURE;
        window += loss;
        in_window++;
        if ((s + 1) % report == 0 || s + 1 == steps) {
            printf("  step %6llu  loss %.4f (mean of the last %zu; chance ln %llu = %.4f)  "
                   "scale %.2f\n",
                   (unsigned long long)(s + 1), window / (double)in_window, in_window,
                   (unsigned long long)batch, log((double)batch),
                   exp((double)m.logit_scale.value[0]));
            window = 0.0;
            in_window = 0;
        }
    }
    if (!embed_set(&ctx, &m, &a, &seen, sim_seen) ||
        !embed_set(&ctx, &m, &a, &unseen, sim_unseen))
        return EX_EXIT_FAILURE;
    const retrieval tr_seen = score(sim_seen, n_train);
    const retrieval tr_unseen = score(sim_unseen, n_unseen);

    printf("\n");
    print_header("new pictures of the training combinations", n_train);
    print_row("untrained (baseline)", base_seen);
    print_row("trained", tr_seen);
    printf("\n");
    print_header("combinations never trained on", n_unseen);
    print_row("untrained (baseline)", base_unseen);
    print_row("trained", tr_unseen);
    if (out_dir && !write_pngs(out_dir, &seen, sim_seen))
        return EX_EXIT_FAILURE;
    printf("\nfinal: base_t2i1=%.4f base_t2i5=%.4f base_i2t1=%.4f base_i2t5=%.4f "
           "t2i1=%.4f t2i5=%.4f i2t1=%.4f i2t5=%.4f unseen_base_t2i1=%.4f unseen_t2i1=%.4f "
           "unseen_i2t1=%.4f\n",
           base_seen.t2i1, base_seen.t2i5, base_seen.i2t1, base_seen.i2t5, tr_seen.t2i1,
           tr_seen.t2i5, tr_seen.i2t1, tr_seen.i2t5, base_unseen.t2i1, tr_unseen.t2i1,
           tr_unseen.i2t1);
    printf("done: %.1f s\n", ex_seconds() - t0);
    tb_adam_free(&opt);
    free(sim_seen);
    free(sim_unseen);
    pairs_free(&train);
    pairs_free(&seen);
    pairs_free(&unseen);
    clip_acts_free(&a);
    clip_free(&m);
    return EX_EXIT_OK;
}
