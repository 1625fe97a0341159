/*
 * Training checkpoints (checkpoint.h):
 *   - exact resume: a tiny MLP trained 12 steps (AdamW with groups, a
 *     warm-up + cosine schedule, clipping, batches drawn from a tb_rng) in
 *     one process equals 5 steps, a checkpoint, and 7 more steps in a new
 *     process that starts from other weights and another stream: the final
 *     checkpoints are byte-identical files. A negative control (resuming
 *     without the optimizer state) must differ, so the comparison can fail;
 *   - a checkpoint is a plain safetensors weights file as well;
 *   - refusals: another model configuration (the tensor is named), another
 *     optimizer kind, a truncated file, reserved metadata; nothing changes
 *     on error;
 *   - integrity: every single-bit flip anywhere in a checkpoint file is
 *     refused (a data bit names its tensor), every changed character of
 *     every metadata value is refused, a renamed tensor or a changed shape
 *     too; NaN and infinities written with valid checksums are refused
 *     unless TB_CKPT_ALLOW_NONFINITE (and never saved without it); files
 *     without checksums still load; partial or malformed checksum entries
 *     fail cleanly; the documented canonical header form is recomputed
 *     here independently; nothing changes on any refusal;
 *   - CRC-32C: published check values, every table entry against the
 *     polynomial, portable and SSE4.2 paths equal at every length and
 *     alignment, chaining;
 *   - the fuzz target's seeds (test/fuzz/corpus_checkpoint) replay with the
 *     target's own properties and expected outcomes.
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../fuzz/checkpoint_harness.h"
#include "core/crc32c.h"
#include "io/checkpoint_internal.h"
#include "suites.h"
#include "testutil.h"

enum { IN = 5, OUT = 3, BATCH = 4, TOTAL = 12, SPLIT = 5 };

typedef struct model {
    size_t hidden;
    tb_linear fc1, fc2;
    tb_param_list list;
    tb_adam opt;
    tb_rng data;
} model;

static tb_status model_init(tb_ctx *ctx, model *m, size_t hidden, uint64_t seed, int decoupled)
{
    memset(m, 0, sizeof *m);
    m->hidden = hidden;
    tb_rng init;
    tb_rng_init(&init, seed);
    tb_rng_init(&m->data, seed + 1000);
    tb_status s;
    if ((s = tb_linear_init(ctx, &m->fc1, IN, hidden, 1, &init)) != TB_OK ||
        (s = tb_linear_init(ctx, &m->fc2, hidden, OUT, 1, &init)) != TB_OK ||
        (s = tb_param_list_init(ctx, &m->list)) != TB_OK ||
        (s = tb_linear_params(ctx, &m->fc1, "fc1", &m->list)) != TB_OK ||
        (s = tb_linear_params(ctx, &m->fc2, "fc2", &m->list)) != TB_OK)
        return s;
    tb_param_list_zero_grad(&m->list);
    tb_adam_config cfg = decoupled ? tb_adamw_default_config() : tb_adam_default_config();
    cfg.lr = 0.05f;
    cfg.amsgrad = 1;
    if ((s = tb_adam_init(ctx, &m->opt, &m->list, &cfg)) != TB_OK)
        return s;
    return tb_adam_add_group(ctx, &m->opt, cfg.lr, 0.0f, tb_select_no_decay, NULL, NULL);
}

static void model_free(model *m)
{
    tb_adam_free(&m->opt);
    tb_param_list_free(&m->list);
    tb_linear_free(&m->fc1);
    tb_linear_free(&m->fc2);
}

/* One training step on a batch drawn from m->data. */
static tb_status train_step(tb_ctx *ctx, model *m)
{
    const size_t H = m->hidden;
    float x[BATCH * IN], h[BATCH * 16], g[BATCH * 16], lo[BATCH * OUT], dlo[BATCH * OUT];
    float dg[BATCH * 16], dh[BATCH * 16], dx[BATCH * IN];
    int32_t y[BATCH];
    for (size_t i = 0; i < BATCH * IN; i++)
        x[i] = tb_rng_normal(&m->data);
    for (size_t i = 0; i < BATCH; i++)
        y[i] = (int32_t)(tb_rng_next(&m->data) % OUT);
    unsigned char cache[256];
    size_t cb;
    tb_status s = tb_cross_entropy_cache_size(BATCH, &cb);
    if (s != TB_OK || cb > sizeof cache || H > 16)
        return TB_ERR_INVALID_ARG;
    tb_tensor xt = tb_tensor_2d(x, BATCH, IN), ht = tb_tensor_2d(h, BATCH, H);
    tb_tensor gt = tb_tensor_2d(g, BATCH, H), lt = tb_tensor_2d(lo, BATCH, OUT);
    tb_tensor dlt = tb_tensor_2d(dlo, BATCH, OUT), dgt = tb_tensor_2d(dg, BATCH, H);
    tb_tensor dht = tb_tensor_2d(dh, BATCH, H), dxt = tb_tensor_2d(dx, BATCH, IN);
    tb_cross_entropy_config ce = tb_cross_entropy_default_config();
    float loss;
    tb_param_list_zero_grad(&m->list);
    tb_lr_schedule sched = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, 3, TOTAL, 0.1f);
    double norm;
    if ((s = tb_linear_forward(ctx, &m->fc1, &xt, &ht)) != TB_OK ||
        (s = tb_gelu_forward(ctx, TB_GELU_TANH, &ht, &gt)) != TB_OK ||
        (s = tb_linear_forward(ctx, &m->fc2, &gt, &lt)) != TB_OK ||
        (s = tb_cross_entropy_forward(ctx, &ce, &lt, y, BATCH, &loss, cache, cb)) != TB_OK ||
        (s = tb_cross_entropy_backward(ctx, &ce, &lt, y, BATCH, 1.0f, cache, cb, &dlt)) != TB_OK ||
        (s = tb_linear_backward(ctx, &m->fc2, &gt, &dlt, &dgt)) != TB_OK ||
        (s = tb_gelu_backward(ctx, TB_GELU_TANH, &ht, &dgt, &dht)) != TB_OK ||
        (s = tb_linear_backward(ctx, &m->fc1, &xt, &dht, &dxt)) != TB_OK ||
        (s = tb_clip_grad_norm(ctx, &m->list, 0.5f, &norm)) != TB_OK)
        return s;
    return tb_adam_step(ctx, &m->opt, tb_lr_factor(&sched, m->opt.step));
}

/* What a child process does; its exit status is 0 on success. */
typedef enum part { STRAIGHT, FIRST, RESUME, RESUME_PARAMS_ONLY } part;

static int run_part(part p, const char *ckpt, const char *out)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 2;
    model m;
    /* The resuming process starts from other weights and another stream:
     * everything must come from the checkpoint. */
    if (model_init(&ctx, &m, 8, p >= RESUME ? 99 : 1, 1) != TB_OK)
        return 1;
    int steps = p == STRAIGHT ? TOTAL : p == FIRST ? SPLIT : TOTAL - SPLIT;
    if (p == RESUME &&
        tb_checkpoint_load(&ctx, ckpt, &m.list, &m.opt, &m.data, TB_CKPT_DEFAULT) != TB_OK)
        return 2;
    if (p == RESUME_PARAMS_ONLY &&
        tb_checkpoint_load(&ctx, ckpt, &m.list, NULL, &m.data, TB_CKPT_DEFAULT) != TB_OK)
        return 3;
    for (int t = 0; t < steps; t++)
        if (train_step(&ctx, &m) != TB_OK)
            return 4;
    const tb_st_meta extra[1] = {{"run", "checkpoint test"}};
    if (tb_checkpoint_save(&ctx, p == FIRST ? ckpt : out, &m.list, &m.opt, &m.data, extra, 1,
                           TB_CKPT_DEFAULT) != TB_OK)
        return 5;
    model_free(&m);
    return 0;
}

static void in_child(part p, const char *ckpt, const char *out)
{
    fflush(NULL);
    const pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        _exit(run_part(p, ckpt, out));
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "part %d failed: status %d",
                  (int)p, status);
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = tbt_alloc((size_t)len + 1);
    ck_assert(fread(b, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void paths(char *ck, char *a, char *b, char *c, size_t cap)
{
    const char *dir = getenv("TB_ORACLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_ORACLE_DIR is not set");
    const long pid = (long)getpid();
    snprintf(ck, cap, "%s/tmp-ckpt-%ld.safetensors", dir, pid);
    snprintf(a, cap, "%s/tmp-straight-%ld.safetensors", dir, pid);
    snprintf(b, cap, "%s/tmp-resumed-%ld.safetensors", dir, pid);
    snprintf(c, cap, "%s/tmp-noopt-%ld.safetensors", dir, pid);
}

START_TEST(test_exact_resume_in_a_new_process)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    in_child(STRAIGHT, NULL, a);
    in_child(FIRST, ck, NULL);
    in_child(RESUME, ck, b);
    in_child(RESUME_PARAMS_ONLY, ck, c);
    size_t na, nb, nc;
    unsigned char *fa = slurp(a, &na), *fb = slurp(b, &nb), *fc = slurp(c, &nc);
    ck_assert_msg(na == nb && memcmp(fa, fb, na) == 0,
                  "12 steps straight and 5 + checkpoint + 7 in a new process differ");
    ck_assert_msg(nc != na || memcmp(fa, fc, na) != 0,
                  "resuming without the optimizer state gave the same result: the comparison "
                  "cannot tell");
    /* The checkpoint is a weights file like any other, and holds what it says. */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, a, &f));
    ck_assert_str_eq(tb_st_meta_get(&f, "format"), "pt");
    ck_assert_str_eq(tb_st_meta_get(&f, "tblocks.optim.step"), "12");
    ck_assert_str_eq(tb_st_meta_get(&f, "tblocks.optim.kind"), "adamw-amsgrad");
    ck_assert_str_eq(tb_st_meta_get(&f, "run"), "checkpoint test");
    ck_assert_ptr_nonnull(tb_st_find(&f, "fc1.weight"));
    ck_assert_ptr_nonnull(tb_st_find(&f, "optimizer.vmax.fc2.bias"));
    ck_assert_uint_eq(f.count, 4 * 4);
    tb_st_close(&f);
    printf("  check   checkpoint: %d steps straight == %d + save + load in a new process + %d "
           "(files byte-identical, %zu bytes); without optimizer state they differ\n",
           TOTAL, SPLIT, TOTAL - SPLIT, na);
    free(fa), free(fb), free(fc);
    remove(ck), remove(a), remove(b), remove(c);
}
END_TEST

START_TEST(test_checkpoint_refusals_change_nothing)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    model m;
    CHECK_OK(ctx, model_init(&ctx, &m, 8, 1, 1));
    CHECK_OK(ctx, train_step(&ctx, &m));
    CHECK_OK(ctx, tb_checkpoint_save(&ctx, ck, &m.list, &m.opt, &m.data, NULL, 0, TB_CKPT_DEFAULT));
    const tb_st_meta reserved[2] = {{"format", "x"}, {"tblocks.mine", "y"}};
    ck_assert_int_eq(
        tb_checkpoint_save(&ctx, a, &m.list, &m.opt, NULL, reserved, 1, TB_CKPT_DEFAULT),
        TB_ERR_INVALID_ARG);
    ck_assert_int_eq(
        tb_checkpoint_save(&ctx, a, &m.list, &m.opt, NULL, reserved + 1, 1, TB_CKPT_DEFAULT),
        TB_ERR_INVALID_ARG);
    /* A parameter may not take the optimizer's names. */
    tb_param_list odd;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &odd));
    CHECK_OK(ctx, tb_param_list_add(&ctx, &odd, "optimizer", "m", &m.fc1.bias));
    ck_assert_int_eq(tb_checkpoint_save(&ctx, a, &odd, NULL, NULL, NULL, 0, TB_CKPT_DEFAULT),
                     TB_ERR_INVALID_ARG);
    tb_param_list_free(&odd);

    /* Another model configuration: hidden 9 instead of 8. */
    model other;
    CHECK_OK(ctx, model_init(&ctx, &other, 9, 5, 1));
    const float w0 = other.fc1.weight.value[0], m0 = other.opt.m[0];
    const uint64_t c0 = other.data.counter;
    ck_assert_int_eq(
        tb_checkpoint_load(&ctx, ck, &other.list, &other.opt, &other.data, TB_CKPT_DEFAULT),
        TB_ERR_STATE);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, ck, &other.list, NULL, &other.data, TB_CKPT_DEFAULT),
                     TB_ERR_SHAPE);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "fc1.weight") != NULL, "%s", tb_ctx_error(&ctx));
    ck_assert(other.fc1.weight.value[0] == w0 && other.opt.m[0] == m0 &&
              other.data.counter == c0);
    model_free(&other);

    /* Another optimizer kind (Adam, not AdamW). */
    CHECK_OK(ctx, model_init(&ctx, &other, 8, 5, 0));
    ck_assert_int_eq(
        tb_checkpoint_load(&ctx, ck, &other.list, &other.opt, &other.data, TB_CKPT_DEFAULT),
        TB_ERR_STATE);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "adamw-amsgrad") != NULL, "%s", tb_ctx_error(&ctx));
    /* Parameters only: fine. */
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, ck, &other.list, NULL, NULL, TB_CKPT_DEFAULT));
    ck_assert(other.fc1.weight.value[0] == m.fc1.weight.value[0]);
    model_free(&other);

    /* A truncated file. */
    size_t n;
    unsigned char *bytes = slurp(ck, &n);
    FILE *f = fopen(b, "wb");
    ck_assert(f && fwrite(bytes, 1, n - 3, f) == n - 3);
    fclose(f);
    CHECK_OK(ctx, model_init(&ctx, &other, 8, 5, 1));
    ck_assert_int_eq(
        tb_checkpoint_load(&ctx, b, &other.list, &other.opt, &other.data, TB_CKPT_DEFAULT),
        TB_ERR_FORMAT);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, "/nonexistent.safetensors", &other.list, NULL, NULL,
                                        TB_CKPT_DEFAULT),
                     TB_ERR_IO);
    /* A weights-only file has no optimizer state to restore. */
    CHECK_OK(ctx, tb_st_save_params(&ctx, c, &m.list, NULL, 0));
    ck_assert_int_eq(tb_checkpoint_load(&ctx, c, &other.list, &other.opt, NULL, TB_CKPT_DEFAULT),
                     TB_ERR_FORMAT);
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, c, &other.list, NULL, NULL, TB_CKPT_DEFAULT));
    model_free(&other);
    model_free(&m);
    free(bytes);
    remove(ck), remove(b), remove(c);
}
END_TEST

/* ---- integrity: helpers ------------------------------------------------------------ */

/* Everything a load may change, as bytes (NaN-safe comparison). */
static size_t state_size(const model *m)
{
    return sizeof(float) * (m->fc1.weight.numel + m->fc1.bias.numel + m->fc2.weight.numel +
                            m->fc2.bias.numel + 3 * m->opt.n_state) +
           4 * sizeof(uint64_t);
}

static unsigned char *state_take(const model *m)
{
    unsigned char *out = tbt_alloc(state_size(m)), *at = out;
    const float *parts[7] = {m->fc1.weight.value, m->fc1.bias.value, m->fc2.weight.value,
                             m->fc2.bias.value,   m->opt.m,          m->opt.v,
                             m->opt.vmax};
    const size_t sizes[7] = {m->fc1.weight.numel, m->fc1.bias.numel, m->fc2.weight.numel,
                             m->fc2.bias.numel,   m->opt.n_state,    m->opt.n_state,
                             m->opt.n_state};
    for (int i = 0; i < 7; i++) {
        memcpy(at, parts[i], sizes[i] * sizeof(float));
        at += sizes[i] * sizeof(float);
    }
    const uint64_t scalars[4] = {m->opt.step, m->opt.skipped, m->data.key, m->data.counter};
    memcpy(at, scalars, sizeof scalars);
    return out;
}

/* Fails the test (naming `what`) unless m's state equals snap. */
static void assert_unchanged(const model *m, const unsigned char *snap, const char *what)
{
    unsigned char *now = state_take(m);
    ck_assert_msg(memcmp(now, snap, state_size(m)) == 0, "%s: a refused load changed the model",
                  what);
    free(now);
}

static void put_file(const char *path, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert(fwrite(bytes, 1, n, f) == n);
    ck_assert(fclose(f) == 0);
}

/* One byte of an existing file rewritten in place (no truncation: a file
 * truncated and rewritten is flushed to disk on close by some file
 * systems, which made thousands of edits slow). */
static void patch_byte(const char *path, size_t offset, unsigned char byte)
{
    FILE *f = fopen(path, "r+b");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    ck_assert(fseek(f, (long)offset, SEEK_SET) == 0 && fputc(byte, f) == byte);
    ck_assert(fclose(f) == 0);
}

/* Offset of the first occurrence of pat in img[from, to), or to. */
static size_t find_text(const unsigned char *img, size_t from, size_t to, const char *pat)
{
    const size_t len = strlen(pat);
    for (size_t i = from; i + len <= to; i++)
        if (memcmp(img + i, pat, len) == 0)
            return i;
    return to;
}

static size_t header_end(const unsigned char *img)
{
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | img[i];
    return 8 + (size_t)h;
}

/* Where the value of a metadata key is in the header text ("key":"value",
 * as the writer puts it): its offset, and its length in *len. */
static size_t value_at(const unsigned char *img, const char *key, size_t *len)
{
    char pat[256];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const size_t end = header_end(img), at = find_text(img, 8, end, pat);
    ck_assert_msg(at < end, "metadata key %s not found in the header", key);
    const size_t v = at + strlen(pat);
    *len = find_text(img, v, end, "\"") - v;
    return v;
}

/* Another character of the same kind (a digit for a digit, a lowercase
 * hexadecimal letter for one, a letter for a letter), so the file stays
 * well-formed and only the value changes. */
static unsigned char other_char(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return (unsigned char)('0' + (c - '0' + 1) % 10);
    if (c >= 'a' && c <= 'f')
        return (unsigned char)('a' + (c - 'a' + 1) % 6);
    if (c >= 'a' && c <= 'z')
        return (unsigned char)('a' + (c - 'a' + 1) % 26);
    if (c >= 'A' && c <= 'Z')
        return (unsigned char)('A' + (c - 'A' + 1) % 26);
    return c == '-' ? '_' : '-';
}

/* A trained model (hidden 8, AdamW + AMSGrad) saved to path; its state. */
static void saved_model(tb_ctx *ctx, model *m, const char *path)
{
    CHECK_OK(*ctx, model_init(ctx, m, 8, 1, 1));
    CHECK_OK(*ctx, train_step(ctx, m));
    CHECK_OK(*ctx, train_step(ctx, m));
    const tb_st_meta extra[1] = {{"run", "integrity test"}};
    CHECK_OK(*ctx, tb_checkpoint_save(ctx, path, &m->list, &m->opt, &m->data, extra, 1,
                                      TB_CKPT_DEFAULT));
}

/* A model of the same configuration with other values, to load into. */
static void victim_model(tb_ctx *ctx, model *v)
{
    CHECK_OK(*ctx, model_init(ctx, v, 8, 5, 1));
    CHECK_OK(*ctx, train_step(ctx, v));
}

static int has(const tb_ctx *ctx, const char *text)
{
    return strstr(tb_ctx_error(ctx), text) != NULL;
}

/* A metadata edit for rewrite(): value NULL removes the key. */
typedef struct meta_edit {
    const char *key, *value;
} meta_edit;

static int cmp_cstr_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The header checksum computed from checkpoint.h's description, apart from
 * the library's code: the canonical text built in one buffer. */
static uint32_t spec_header_crc(const tb_st_meta *meta, size_t n_meta, const tb_st_entry *e,
                                size_t n)
{
    size_t cap = 1, len = 0;
    for (size_t i = 0; i < n_meta; i++)
        cap += strlen(meta[i].key) + strlen(meta[i].value) + 2;
    for (size_t i = 0; i < n; i++)
        cap += strlen(e[i].name) + 1 + 21 * (e[i].ndim + 1);
    char *text = tbt_alloc(cap);
    const char **keys = tbt_alloc((n_meta + 1) * sizeof *keys);
    const char **names = tbt_alloc((n + 1) * sizeof *names);
    size_t k = 0;
    for (size_t i = 0; i < n_meta; i++)
        if (strcmp(meta[i].key, "tblocks.checksum.header") != 0)
            keys[k++] = meta[i].key;
    qsort(keys, k, sizeof *keys, cmp_cstr_ptr);
    for (size_t i = 0; i < k; i++) {
        const char *value = NULL;
        for (size_t j = 0; j < n_meta; j++)
            if (strcmp(meta[j].key, keys[i]) == 0)
                value = meta[j].value;
        len += (size_t)sprintf(text + len, "%s", keys[i]) + 1;
        len += (size_t)sprintf(text + len, "%s", value) + 1;
    }
    for (size_t i = 0; i < n; i++)
        names[i] = e[i].name;
    qsort(names, n, sizeof *names, cmp_cstr_ptr);
    for (size_t i = 0; i < n; i++) {
        const tb_st_entry *t = NULL;
        for (size_t j = 0; j < n; j++)
            if (strcmp(e[j].name, names[i]) == 0)
                t = &e[j];
        len += (size_t)sprintf(text + len, "%s", t->name) + 1;
        for (size_t d = 0; d < t->ndim; d++)
            len += (size_t)sprintf(text + len, d ? ",%zu" : "%zu", t->shape[d]);
        text[len++] = '\0';
    }
    const uint32_t crc = tb_crc32c_portable(0, text, len);
    free(text), free(keys), free(names);
    return crc;
}

/* Rewrites the checkpoint at in to out with plain tb_st_save: the same
 * tensors (as floats, value optionally set at tensor `name`, element `at`)
 * and metadata with the edits applied; with fix_header, the header
 * checksum is recomputed (spec_header_crc), so that only a later check
 * can refuse the file. */
static void rewrite(const char *in, const char *out, const meta_edit *edits, size_t n_edits,
                    int fix_header, const char *name, size_t at, float value)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, in, &f));
    size_t total = 0;
    for (size_t i = 0; i < f.count; i++)
        total += f.tensors[i].numel;
    float *vals = tbt_alloc(total * sizeof(float) + 1);
    tb_st_entry *e = tbt_alloc(f.count * sizeof *e + 1);
    tb_st_meta *meta = tbt_alloc((f.n_meta + n_edits) * sizeof *meta + 1);
    size_t off = 0, k = 0;
    for (size_t i = 0; i < f.count; i++) {
        const tb_st_tensor *t = &f.tensors[i];
        CHECK_OK(ctx, tb_st_read_f32(&ctx, t, vals + off, t->numel));
        if (name && strcmp(t->name, name) == 0) {
            ck_assert_uint_lt(at, t->numel);
            vals[off + at] = value;
        }
        e[i] = (tb_st_entry){t->name, vals + off, t->ndim, t->shape};
        off += t->numel;
    }
    for (size_t i = 0; i < f.n_meta; i++)
        meta[k++] = f.meta[i];
    for (size_t j = 0; j < n_edits; j++) {
        size_t i = 0;
        while (i < k && strcmp(meta[i].key, edits[j].key) != 0)
            i++;
        if (i == k) {
            if (edits[j].value)
                meta[k++] = (tb_st_meta){edits[j].key, edits[j].value};
        } else if (edits[j].value) {
            meta[i].value = edits[j].value;
        } else {
            meta[i] = meta[--k];
        }
    }
    char hex[16];
    for (size_t i = 0; fix_header && i < k; i++)
        if (strcmp(meta[i].key, "tblocks.checksum.header") == 0) {
            snprintf(hex, sizeof hex, "%08" PRIx32, spec_header_crc(meta, k, e, f.count));
            meta[i].value = hex;
        }
    CHECK_OK(ctx, tb_st_save(&ctx, out, e, f.count, meta, k));
    free(vals), free(e), free(meta);
    tb_st_close(&f);
}

/* Rewrites in to out with one value changed and every checksum recomputed
 * by the library's sealing writer. */
static void reseal_with(const char *in, const char *out, const char *name, size_t at, float value)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, in, &f));
    size_t total = 0, off = 0, k = 0;
    for (size_t i = 0; i < f.count; i++)
        total += f.tensors[i].numel;
    float *vals = tbt_alloc(total * sizeof(float) + 1);
    tb_st_entry *e = tbt_alloc(f.count * sizeof *e + 1);
    tb_st_meta *meta = tbt_alloc(f.n_meta * sizeof *meta + 1);
    int hit = 0;
    for (size_t i = 0; i < f.count; i++) {
        const tb_st_tensor *t = &f.tensors[i];
        CHECK_OK(ctx, tb_st_read_f32(&ctx, t, vals + off, t->numel));
        if (strcmp(t->name, name) == 0) {
            ck_assert_uint_lt(at, t->numel);
            vals[off + at] = value;
            hit = 1;
        }
        e[i] = (tb_st_entry){t->name, vals + off, t->ndim, t->shape};
        off += t->numel;
    }
    ck_assert_msg(hit, "no tensor %s", name);
    for (size_t i = 0; i < f.n_meta; i++)
        if (strncmp(f.meta[i].key, "tblocks.checksum.", 17) != 0)
            meta[k++] = f.meta[i];
    CHECK_OK(ctx, tb_ckpt_write_sealed(&ctx, out, e, f.count, meta, k));
    free(vals), free(e), free(meta);
    tb_st_close(&f);
}

/* ---- integrity: tests -------------------------------------------------------------- */

START_TEST(test_every_bit_flip_is_refused)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    model m, v;
    saved_model(&ctx, &m, ck);
    victim_model(&ctx, &v);
    unsigned char *snap = state_take(&v);
    size_t n;
    unsigned char *good = slurp(ck, &n);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_parse(&ctx, good, n, &f));
    const size_t data0 = header_end(good);
    size_t header_bits = 0, data_bits = 0;
    put_file(a, good, n);
    for (size_t bit = 0; bit < 8 * n; bit++) {
        patch_byte(a, bit / 8, (unsigned char)(good[bit / 8] ^ (1u << (bit % 8))));
        /* Odd bits load the parameters only: the whole file is verified. */
        const int full = bit % 2 == 0;
        const tb_status s = tb_checkpoint_load(&ctx, a, &v.list, full ? &v.opt : NULL,
                                               full ? &v.data : NULL, TB_CKPT_DEFAULT);
        if (bit / 8 >= data0) {
            const tb_st_tensor *t = NULL;
            for (size_t i = 0; i < f.count; i++)
                if (good + bit / 8 >= f.tensors[i].data &&
                    good + bit / 8 < f.tensors[i].data + f.tensors[i].nbytes)
                    t = &f.tensors[i];
            ck_assert_ptr_nonnull(t);
            char want[200];
            snprintf(want, sizeof want, "tensor '%s' does not match its checksum", t->name);
            ck_assert_msg(s == TB_ERR_FORMAT && has(&ctx, want),
                          "data bit %zu (of %s) flipped: %s (%s)", bit, t->name, tb_strerror(s),
                          tb_ctx_error(&ctx));
            data_bits++;
        } else {
            ck_assert_msg(s == TB_ERR_FORMAT || s == TB_ERR_UNSUPPORTED,
                          "header bit %zu (byte %zu, '%c') flipped: %s (%s)", bit, bit / 8,
                          good[bit / 8], tb_strerror(s), tb_ctx_error(&ctx));
            header_bits++;
        }
        assert_unchanged(&v, snap, "a flipped bit");
        patch_byte(a, bit / 8, good[bit / 8]);
    }
    printf("  check   checkpoint: all %zu single-bit flips of a %zu-byte file refused (%zu in "
           "the header, %zu in the data naming their tensor); the model unchanged\n",
           8 * n, n, header_bits, data_bits);
    tb_st_close(&f);
    free(good), free(snap);
    model_free(&m), model_free(&v);
    remove(ck), remove(a);
}
END_TEST

/* Every character of key's value replaced, one at a time: each file must be
 * refused with want ("metadata" named for TB_ERR_FORMAT). */
static size_t edit_each_char(tb_ctx *ctx, const unsigned char *good, size_t n, const char *key,
                             const char *path, model *v, const unsigned char *snap,
                             tb_status want)
{
    size_t len;
    const size_t at = value_at(good, key, &len);
    put_file(path, good, n);
    for (size_t i = 0; i < len; i++) {
        const unsigned char c = other_char(good[at + i]);
        patch_byte(path, at + i, c);
        const tb_status s =
            tb_checkpoint_load(ctx, path, &v->list, &v->opt, &v->data, TB_CKPT_DEFAULT);
        ck_assert_msg(s == want && (want != TB_ERR_FORMAT || has(ctx, "metadata")),
                      "%s: character %zu '%c' -> '%c': %s (%s)", key, i, good[at + i], c,
                      tb_strerror(s), tb_ctx_error(ctx));
        assert_unchanged(v, snap, key);
        patch_byte(path, at + i, good[at + i]);
    }
    return len;
}

START_TEST(test_every_metadata_change_is_refused)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    model m, v;
    saved_model(&ctx, &m, ck);
    victim_model(&ctx, &v);
    unsigned char *snap = state_take(&v);
    size_t n;
    unsigned char *good = slurp(ck, &n);
    static const char *const covered[] = {
        "format",          "tblocks.optim.kind",  "tblocks.optim.step",
        "tblocks.optim.skipped", "tblocks.rng.key", "tblocks.rng.counter",
        "run",             "tblocks.checksum.tensors", "tblocks.checksum.header"};
    size_t edits = 0;
    for (size_t k = 0; k < sizeof covered / sizeof covered[0]; k++)
        edits += edit_each_char(&ctx, good, n, covered[k], a, &v, snap, TB_ERR_FORMAT);
    edits += edit_each_char(&ctx, good, n, "tblocks.checksum.algo", a, &v, snap,
                            TB_ERR_UNSUPPORTED);
    edits += edit_each_char(&ctx, good, n, "tblocks.checksum.version", a, &v, snap,
                            TB_ERR_UNSUPPORTED);
    /* The tensor index: a renamed tensor, a transposed shape (same size). */
    unsigned char *bad = tbt_alloc(n);
    memcpy(bad, good, n);
    size_t at = find_text(bad, 8, header_end(bad), "\"fc2.bias\"");
    bad[at + 8] = 't';
    put_file(a, bad, n);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                     TB_ERR_FORMAT);
    ck_assert_msg(has(&ctx, "metadata"), "%s", tb_ctx_error(&ctx));
    memcpy(bad, good, n);
    at = find_text(bad, 8, header_end(bad), "\"fc1.weight\":{\"dtype\":\"F32\",\"shape\":[8,5]");
    ck_assert_uint_lt(at, header_end(bad));
    memcpy(bad + at + strlen("\"fc1.weight\":{\"dtype\":\"F32\",\"shape\":["), "5,8", 3);
    put_file(a, bad, n);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, NULL, NULL, TB_CKPT_DEFAULT),
                     TB_ERR_FORMAT);
    ck_assert_msg(has(&ctx, "metadata"), "%s", tb_ctx_error(&ctx));
    assert_unchanged(&v, snap, "tensor index");
    printf("  check   checkpoint: %zu one-character metadata edits (step, skipped, kind, "
           "stream, caller's pairs, checksums), a renamed tensor and a transposed shape "
           "refused\n",
           edits);
    free(good), free(bad), free(snap);
    model_free(&m), model_free(&v);
    remove(ck), remove(a);
}
END_TEST

START_TEST(test_nonfinite_values_refused_unless_allowed)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    model m, v;
    saved_model(&ctx, &m, ck);
    victim_model(&ctx, &v);
    unsigned char *snap = state_take(&v);
    static const struct {
        const char *tensor;
        size_t at;
        float value;
        const char *what;
    } cases[] = {
        {"fc1.weight", 13, NAN, "NaN"},
        {"fc2.bias", 2, INFINITY, "+inf"},
        {"optimizer.v.fc1.bias", 5, -INFINITY, "-inf"},
        {"optimizer.vmax.fc2.weight", 0, NAN, "NaN"},
        {"optimizer.m.fc1.weight", 39, INFINITY, "+inf"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        reseal_with(ck, a, cases[k].tensor, cases[k].at, cases[k].value);
        char want[200];
        snprintf(want, sizeof want, "tensor '%s' holds %s at element %zu", cases[k].tensor,
                 cases[k].what, cases[k].at);
        ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                         TB_ERR_NON_FINITE);
        ck_assert_msg(has(&ctx, want), "want '%s' in: %s", want, tb_ctx_error(&ctx));
        assert_unchanged(&v, snap, cases[k].tensor);
        /* Asked for: loaded as it is. */
        model w;
        CHECK_OK(ctx, model_init(&ctx, &w, 8, 9, 1));
        CHECK_OK(ctx, tb_checkpoint_load(&ctx, a, &w.list, &w.opt, &w.data,
                                         TB_CKPT_ALLOW_NONFINITE));
        const float *got = NULL;
        if (strncmp(cases[k].tensor, "optimizer.", 10) == 0) {
            const char *rest = cases[k].tensor + 10;
            const float *buf = rest[0] == 'm' ? w.opt.m : rest[1] == 'm' ? w.opt.vmax : w.opt.v;
            const char *pname = strchr(rest, '.') + 1;
            for (size_t i = 0; i < w.opt.n_slots; i++)
                if (strcmp(w.opt.slots[i].name, pname) == 0)
                    got = buf + w.opt.slots[i].offset + cases[k].at;
        } else {
            got = tb_param_list_find(&w.list, cases[k].tensor)->value + cases[k].at;
        }
        ck_assert_ptr_nonnull(got);
        ck_assert_msg(memcmp(got, &cases[k].value, sizeof(float)) == 0 ||
                          (isnan(*got) && isnan(cases[k].value)),
                      "%s[%zu] loaded as %g", cases[k].tensor, cases[k].at, (double)*got);
        model_free(&w);
    }
    /* A NaN in a moment that a parameters-only load does not read. */
    reseal_with(ck, a, "optimizer.m.fc2.bias", 1, NAN);
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, a, &v.list, NULL, NULL, TB_CKPT_DEFAULT));
    ck_assert(v.fc1.weight.value[0] == m.fc1.weight.value[0]);
    /* Without checksums the values are refused all the same. */
    m.fc1.bias.value[3] = NAN;
    CHECK_OK(ctx, tb_st_save_params(&ctx, b, &m.list, NULL, 0));
    ck_assert_int_eq(tb_checkpoint_load(&ctx, b, &v.list, NULL, NULL, TB_CKPT_DEFAULT),
                     TB_ERR_NON_FINITE);
    ck_assert_msg(has(&ctx, "tensor 'fc1.bias' holds NaN at element 3"), "%s",
                  tb_ctx_error(&ctx));
    printf("  check   checkpoint: NaN/+inf/-inf in parameters and each moment refused with "
           "valid checksums (tensor and index named), loaded with TB_CKPT_ALLOW_NONFINITE\n");
    free(snap);
    model_free(&m), model_free(&v);
    remove(ck), remove(a), remove(b);
}
END_TEST

/* A safetensors image holding one tensor "x" of numel elements with the
 * given dtype and raw little-endian element bytes. */
static void one_param_file_n(const char *path, const char *dtype, size_t numel, const void *data,
                             size_t nbytes)
{
    char header[256];
    int h = snprintf(header, sizeof header,
                     "{\"x\":{\"dtype\":\"%s\",\"shape\":[%zu],\"data_offsets\":[0,%zu]}}",
                     dtype, numel, nbytes);
    while (h % 8)
        header[h++] = ' ';
    unsigned char *img = tbt_alloc(8 + (size_t)h + nbytes);
    for (int i = 0; i < 8; i++)
        img[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(img + 8, header, (size_t)h);
    memcpy(img + 8 + h, data, nbytes);
    put_file(path, img, 8 + (size_t)h + nbytes);
    free(img);
}

static void one_param_file(const char *path, const char *dtype, const void *data, size_t nbytes)
{
    one_param_file_n(path, dtype, 4, data, nbytes);
}

START_TEST(test_nonfinite_detected_in_every_float_dtype)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    float xv[4] = {1, 2, 3, 4};
    tb_param x;
    CHECK_OK(ctx, tb_param_view(&ctx, &x, xv, NULL, 1, (const size_t[]){4}));
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_param_list_add(&ctx, &list, NULL, "x", &x));
    const uint16_t f16_inf[4] = {0x3C00, 0x3C00, 0x7C00, 0x3C00}; /* 1, 1, +inf, 1 */
    const uint16_t f16_max[4] = {0x7BFF, 0xFBFF, 0x0001, 0x0000}; /* +-65504, tiny, 0 */
    const uint16_t bf16_nan[4] = {0x3F80, 0x7FC0, 0x3F80, 0x3F80};
    const uint16_t bf16_ninf[4] = {0x3F80, 0x3F80, 0x3F80, 0xFF80};
    /* F64: 0x1.ffffffp+127 rounds to +inf as a float (halfway, to even);
     * just below it rounds to FLT_MAX. */
    const double f64_inf[4] = {1.0, 2.0, 3.0, 0x1.ffffffp+127};
    const double f64_fin[4] = {-0x1.fffffefffffffp+127, 0x1.fffffep+127, 1e-300, 0.0};
    const double f64_nan[4] = {NAN, 1.0, 1.0, 1.0};
    const struct {
        const char *dtype;
        const void *data;
        size_t nbytes;
        const char *want; /* NULL: loads */
    } cases[] = {
        {"F16", f16_inf, sizeof f16_inf, "holds +inf at element 2"},
        {"F16", f16_max, sizeof f16_max, NULL},
        {"BF16", bf16_nan, sizeof bf16_nan, "holds NaN at element 1"},
        {"BF16", bf16_ninf, sizeof bf16_ninf, "holds -inf at element 3"},
        {"F64", f64_inf, sizeof f64_inf, "holds +inf at element 3"},
        {"F64", f64_fin, sizeof f64_fin, NULL},
        {"F64", f64_nan, sizeof f64_nan, "holds NaN at element 0"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        one_param_file(a, cases[k].dtype, cases[k].data, cases[k].nbytes);
        xv[0] = 7;
        const tb_status s = tb_checkpoint_load(&ctx, a, &list, NULL, NULL, TB_CKPT_DEFAULT);
        if (cases[k].want) {
            ck_assert_msg(s == TB_ERR_NON_FINITE && has(&ctx, cases[k].want),
                          "%s case %zu: %s (%s)", cases[k].dtype, k, tb_strerror(s),
                          tb_ctx_error(&ctx));
            ck_assert(xv[0] == 7);
            CHECK_OK(ctx, tb_checkpoint_load(&ctx, a, &list, NULL, NULL,
                                             TB_CKPT_ALLOW_NONFINITE));
        } else {
            ck_assert_msg(s == TB_OK, "%s case %zu: %s (%s)", cases[k].dtype, k, tb_strerror(s),
                          tb_ctx_error(&ctx));
            for (int i = 0; i < 4; i++)
                ck_assert(isfinite(xv[i]));
        }
    }
    tb_param_list_free(&list);
    remove(a);
}
END_TEST

/* Tensors longer than the scan's blocks (1024 values): a NaN or an
 * infinity at a block's first or last element or in the partial last block
 * is found, with its exact index, on load and on save; the largest finite
 * values are not refused. */
START_TEST(test_nonfinite_found_across_scan_blocks)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    enum { N = 3000 };
    float *xv = tbt_alloc(N * sizeof(float)), *bits = tbt_alloc(N * sizeof(float));
    tb_param x;
    CHECK_OK(ctx, tb_param_view(&ctx, &x, xv, NULL, 1, (const size_t[]){N}));
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_param_list_add(&ctx, &list, NULL, "x", &x));
    const uint32_t edge[4] = {0x7F7FFFFFu, 0xFF7FFFFFu, 0x00000001u, 0x80000000u};
    static const struct {
        size_t at;
        uint32_t bad;
        const char *what;
    } cases[] = {{1024, 0x7FC00000u, "NaN"}, {2047, 0xFF800000u, "-inf"},
                 {2999, 0x7F800001u, "NaN"}, {1023, 0x7F800000u, "+inf"},
                 {0, 0xFFFFFFFFu, "NaN"},    {N, 0, NULL}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        for (size_t i = 0; i < N; i++) { /* finite, the largest magnitudes among them */
            const uint32_t u = i % 7 == 0 ? edge[i / 7 % 4] : 0x3F800000u + (uint32_t)i;
            memcpy(&bits[i], &u, 4);
        }
        if (cases[k].what)
            memcpy(&bits[cases[k].at], &cases[k].bad, 4);
        /* load (the file's bytes are these floats, little-endian) */
        unsigned char *le = tbt_alloc(4 * N);
        for (size_t i = 0; i < N; i++) {
            uint32_t u;
            memcpy(&u, &bits[i], 4);
            for (int j = 0; j < 4; j++)
                le[4 * i + (size_t)j] = (unsigned char)(u >> (8 * j));
        }
        one_param_file_n(a, "F32", N, le, 4 * N);
        free(le);
        xv[0] = 7;
        tb_status s = tb_checkpoint_load(&ctx, a, &list, NULL, NULL, TB_CKPT_DEFAULT);
        char want[96];
        snprintf(want, sizeof want, "holds %s at element %zu", cases[k].what ? cases[k].what : "",
                 cases[k].at);
        if (cases[k].what) {
            ck_assert_msg(s == TB_ERR_NON_FINITE && has(&ctx, want) && xv[0] == 7,
                          "load, case %zu: %s (%s)", k, tb_strerror(s), tb_ctx_error(&ctx));
        } else {
            ck_assert_msg(s == TB_OK, "load of finite edge values: %s (%s)", tb_strerror(s),
                          tb_ctx_error(&ctx));
            ck_assert(memcmp(xv, bits, N * sizeof(float)) == 0);
        }
        /* save */
        memcpy(xv, bits, N * sizeof(float));
        s = tb_checkpoint_save(&ctx, b, &list, NULL, NULL, NULL, 0, TB_CKPT_DEFAULT);
        if (cases[k].what)
            ck_assert_msg(s == TB_ERR_NON_FINITE && has(&ctx, want), "save, case %zu: %s (%s)",
                          k, tb_strerror(s), tb_ctx_error(&ctx));
        else
            ck_assert_msg(s == TB_OK, "save of finite edge values: %s (%s)", tb_strerror(s),
                          tb_ctx_error(&ctx));
    }
    tb_param_list_free(&list);
    free(xv), free(bits);
    remove(a), remove(b);
}
END_TEST

START_TEST(test_save_refuses_nonfinite_unless_allowed)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    model m, v;
    saved_model(&ctx, &m, ck);
    size_t n0, n1;
    unsigned char *before = slurp(ck, &n0);
    const float w7 = m.fc2.weight.value[7];
    m.fc2.weight.value[7] = NAN;
    ck_assert_int_eq(tb_checkpoint_save(&ctx, ck, &m.list, &m.opt, &m.data, NULL, 0,
                                        TB_CKPT_DEFAULT),
                     TB_ERR_NON_FINITE);
    ck_assert_msg(has(&ctx, "'fc2.weight' holds NaN at element 7"), "%s", tb_ctx_error(&ctx));
    m.fc2.weight.value[7] = w7;
    m.opt.v[m.opt.slots[1].offset + 4] = -INFINITY; /* fc1.bias */
    ck_assert_int_eq(tb_checkpoint_save(&ctx, ck, &m.list, &m.opt, &m.data, NULL, 0,
                                        TB_CKPT_DEFAULT),
                     TB_ERR_NON_FINITE);
    ck_assert_msg(has(&ctx, "'optimizer.v.fc1.bias' holds -inf at element 4"), "%s",
                  tb_ctx_error(&ctx));
    unsigned char *after = slurp(ck, &n1);
    ck_assert_msg(n0 == n1 && memcmp(before, after, n0) == 0,
                  "a refused save changed the previous checkpoint");
    /* Asked for: saved, and then refused by a default load. */
    CHECK_OK(ctx, tb_checkpoint_save(&ctx, a, &m.list, &m.opt, &m.data, NULL, 0,
                                     TB_CKPT_ALLOW_NONFINITE));
    victim_model(&ctx, &v);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                     TB_ERR_NON_FINITE);
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_ALLOW_NONFINITE));
    ck_assert(isinf(v.opt.v[v.opt.slots[1].offset + 4]));
    /* Unknown flags. */
    remove(b);
    ck_assert_int_eq(tb_checkpoint_save(&ctx, b, &m.list, NULL, NULL, NULL, 0, 1u << 3),
                     TB_ERR_INVALID_ARG);
    ck_assert_msg(access(b, F_OK) != 0, "a refused save created a file");
    unsigned char *snap = state_take(&v);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, ck, &v.list, &v.opt, &v.data, 2u), TB_ERR_INVALID_ARG);
    assert_unchanged(&v, snap, "unknown flag");
    free(before), free(after), free(snap);
    model_free(&m), model_free(&v);
    remove(ck), remove(a);
}
END_TEST

START_TEST(test_files_without_checksums_load)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    model m, v;
    saved_model(&ctx, &m, ck);
    /* As libtblocks 0.1.0 wrote it: the same file without the four entries. */
    const meta_edit strip[4] = {{"tblocks.checksum.algo", NULL},
                                {"tblocks.checksum.version", NULL},
                                {"tblocks.checksum.tensors", NULL},
                                {"tblocks.checksum.header", NULL}};
    rewrite(ck, a, strip, 4, 0, NULL, 0, 0);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, a, &f));
    ck_assert_ptr_null(tb_st_meta_get(&f, "tblocks.checksum.algo"));
    tb_st_close(&f);
    victim_model(&ctx, &v);
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT));
    unsigned char *want = state_take(&m);
    assert_unchanged(&v, want, "the unsealed file's state"); /* v now equals m */
    /* A plain weights file. */
    model w;
    CHECK_OK(ctx, model_init(&ctx, &w, 8, 3, 1));
    CHECK_OK(ctx, tb_st_save_params(&ctx, b, &m.list, NULL, 0));
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, b, &w.list, NULL, NULL, TB_CKPT_DEFAULT));
    ck_assert(memcmp(w.fc2.weight.value, m.fc2.weight.value, 24 * sizeof(float)) == 0);
    free(want);
    model_free(&m), model_free(&v), model_free(&w);
    remove(ck), remove(a), remove(b);
}
END_TEST

START_TEST(test_partial_or_malformed_checksums_fail_cleanly)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    model m, v;
    saved_model(&ctx, &m, ck);
    victim_model(&ctx, &v);
    unsigned char *snap = state_take(&v);
    /* The documented form, recomputed here, is what the file holds. */
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, ck, &f));
    ck_assert_str_eq(tb_st_meta_get(&f, "tblocks.checksum.algo"), "crc32c");
    ck_assert_str_eq(tb_st_meta_get(&f, "tblocks.checksum.version"), "1");
    tb_st_entry e[16];
    const tb_st_tensor *sorted[16];
    ck_assert_uint_eq(f.count, 16);
    for (size_t i = 0; i < f.count; i++) {
        e[i] = (tb_st_entry){f.tensors[i].name, NULL, f.tensors[i].ndim, f.tensors[i].shape};
        sorted[i] = &f.tensors[i];
    }
    for (size_t i = 1; i < f.count; i++) /* insertion sort by name */
        for (size_t j = i; j > 0 && strcmp(sorted[j - 1]->name, sorted[j]->name) > 0; j--) {
            const tb_st_tensor *t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    char joined[16 * 9 + 1], hex[16];
    size_t at = 0;
    for (size_t i = 0; i < f.count; i++)
        at += (size_t)snprintf(joined + at, sizeof joined - at, i ? " %08" PRIx32 : "%08" PRIx32,
                               tb_crc32c_portable(0, sorted[i]->data, sorted[i]->nbytes));
    ck_assert_str_eq(tb_st_meta_get(&f, "tblocks.checksum.tensors"), joined);
    snprintf(hex, sizeof hex, "%08" PRIx32, spec_header_crc(f.meta, f.n_meta, e, f.count));
    ck_assert_str_eq(tb_st_meta_get(&f, "tblocks.checksum.header"), hex);
    const char *const good_list = tb_st_meta_get(&f, "tblocks.checksum.tensors");
    size_t cases = 0;
    /* Some entries missing. */
    static const char *const keys[4] = {"tblocks.checksum.algo", "tblocks.checksum.version",
                                        "tblocks.checksum.tensors", "tblocks.checksum.header"};
    for (int k = 0; k < 4; k++) {
        const meta_edit drop = {keys[k], NULL};
        rewrite(ck, a, &drop, 1, 0, NULL, 0, 0);
        ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                         TB_ERR_FORMAT);
        ck_assert_msg(has(&ctx, keys[k]), "%s", tb_ctx_error(&ctx));
        assert_unchanged(&v, snap, keys[k]);
        cases++;
    }
    /* A truncated or garbled header checksum. */
    static const char *const bad_header[] = {"", "1234567", "123456789", "ABCDEF01", "12345g78",
                                             " 1234567", "0x123456"};
    for (size_t k = 0; k < sizeof bad_header / sizeof bad_header[0]; k++) {
        const meta_edit ed = {"tblocks.checksum.header", bad_header[k]};
        rewrite(ck, a, &ed, 1, 0, NULL, 0, 0);
        ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                         TB_ERR_FORMAT);
        ck_assert_msg(has(&ctx, "tblocks.checksum.header"), "'%s': %s", bad_header[k],
                      tb_ctx_error(&ctx));
        assert_unchanged(&v, snap, bad_header[k]);
        cases++;
    }
    /* A truncated or garbled tensor list, with the header checksum made to
     * match (only the list's own check can refuse it). */
    char shorter[16 * 9 + 1], longer[16 * 9 + 4], upper[16 * 9 + 1], garbled[16 * 9 + 1],
        doubled[16 * 9 + 2];
    snprintf(shorter, sizeof shorter, "%.*s", (int)(strlen(good_list) - 9), good_list);
    snprintf(longer, sizeof longer, "%s ", good_list);
    snprintf(upper, sizeof upper, "%s", good_list);
    for (char *p = upper; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    snprintf(garbled, sizeof garbled, "%s", good_list);
    garbled[20] = 'x';
    snprintf(doubled, sizeof doubled, "%.9s %s", good_list, good_list + 9);
    const char *const bad_lists[] = {"", shorter, longer, upper, garbled, doubled};
    for (size_t k = 0; k < sizeof bad_lists / sizeof bad_lists[0]; k++) {
        const meta_edit ed = {"tblocks.checksum.tensors", bad_lists[k]};
        rewrite(ck, a, &ed, 1, 1, NULL, 0, 0);
        ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                         TB_ERR_FORMAT);
        ck_assert_msg(has(&ctx, "tblocks.checksum.tensors is not 16 checksums"), "'%s': %s",
                      bad_lists[k], tb_ctx_error(&ctx));
        assert_unchanged(&v, snap, "tensor list");
        cases++;
    }
    /* An algorithm or version this build does not know. */
    const meta_edit algo = {"tblocks.checksum.algo", "xxh64"}, ver = {"tblocks.checksum.version",
                                                                      "2"};
    rewrite(ck, a, &algo, 1, 1, NULL, 0, 0);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                     TB_ERR_UNSUPPORTED);
    ck_assert_msg(has(&ctx, "xxh64"), "%s", tb_ctx_error(&ctx));
    rewrite(ck, a, &ver, 1, 1, NULL, 0, 0);
    ck_assert_int_eq(tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                     TB_ERR_UNSUPPORTED);
    assert_unchanged(&v, snap, "algorithm or version");
    cases += 2;
    /* The rewriting itself keeps a good file good (the test can fail). */
    rewrite(ck, a, NULL, 0, 1, NULL, 0, 0);
    CHECK_OK(ctx, tb_checkpoint_load(&ctx, a, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT));
    printf("  check   checkpoint: the documented checksum form recomputed independently; %zu "
           "partial or malformed checksum sets refused\n",
           cases);
    tb_st_close(&f);
    free(snap);
    model_free(&m), model_free(&v);
    remove(ck), remove(a);
}
END_TEST

START_TEST(test_checksums_independent_of_threads)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    tb_ctx one, two;
    tbt_ctx_init(&one, 1);
    tbt_ctx_init(&two, 2);
    model m;
    saved_model(&one, &m, ck);
    CHECK_OK(two, tb_checkpoint_save(&two, a, &m.list, &m.opt, &m.data, NULL, 0,
                                     TB_CKPT_DEFAULT));
    CHECK_OK(one, tb_checkpoint_save(&one, b, &m.list, &m.opt, &m.data, NULL, 0,
                                     TB_CKPT_DEFAULT));
    size_t na, nb;
    unsigned char *fa = slurp(a, &na), *fb = slurp(b, &nb);
    ck_assert_msg(na == nb && memcmp(fa, fb, na) == 0, "1 and 2 threads saved different files");
    /* Two damaged tensors: the first in name order is named, whatever the
     * thread count. */
    tb_st_file f;
    CHECK_OK(one, tb_st_parse(&one, fa, na, &f));
    fa[tb_st_find(&f, "optimizer.v.fc2.bias")->data - fa] ^= 1;
    fa[tb_st_find(&f, "fc2.weight")->data - fa + 5] ^= 0x10;
    tb_st_close(&f);
    put_file(c, fa, na);
    model v;
    victim_model(&one, &v);
    for (int t = 0; t < 2; t++) {
        tb_ctx *ctx = t ? &two : &one;
        ck_assert_int_eq(tb_checkpoint_load(ctx, c, &v.list, &v.opt, &v.data, TB_CKPT_DEFAULT),
                         TB_ERR_FORMAT);
        ck_assert_msg(has(ctx, "tensor 'fc2.weight'"), "%s", tb_ctx_error(ctx));
    }
    free(fa), free(fb);
    model_free(&m), model_free(&v);
    remove(ck), remove(a), remove(b), remove(c);
}
END_TEST

/* ---- the fuzz target's seeds --------------------------------------------------------- */

static size_t replay_checkpoint_dir(const char *dir, const char *tmp, int need_dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        ck_assert_msg(!need_dir, "cannot open %s", dir);
        return 0;
    }
    size_t n = 0;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        size_t len;
        unsigned char *bytes = slurp(path, &len);
        tb_status s;
        const int verdict = fzc_run(bytes, len, tmp, &s);
        ck_assert_msg(verdict == FZC_FINE, "%s: fuzz property %d violated", path, verdict);
        if (need_dir)
            ck_assert_msg((s == TB_OK) == (strncmp(ent->d_name, "ok-", 3) == 0),
                          "seed %s: %s, against what its name says", path, tb_strerror(s));
        free(bytes);
        n++;
    }
    closedir(d);
    return n;
}

START_TEST(test_fuzz_seeds_replay)
{
    char ck[600], a[600], b[600], c[600];
    paths(ck, a, b, c, sizeof ck);
    const size_t seeds = replay_checkpoint_dir("test/fuzz/corpus_checkpoint", a, 1);
    const size_t regressions = replay_checkpoint_dir("test/fuzz/regressions_checkpoint", a, 0);
    ck_assert_uint_ge(seeds, 10);
    printf("  check   checkpoint fuzz seeds replayed: %zu (outcomes as named), %zu regressions\n",
           seeds, regressions);
    remove(a);
}
END_TEST

/* ---- CRC-32C ---------------------------------------------------------------------------- */

/* The definition: one bit at a time, reflected polynomial 0x82F63B78. */
static uint32_t crc_bitwise(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0);
    }
    return ~crc;
}

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

START_TEST(test_crc32c_check_values)
{
    unsigned char zeros[32] = {0}, ones[32], inc[32], dec[32];
    for (int i = 0; i < 32; i++) {
        ones[i] = 0xFF;
        inc[i] = (unsigned char)i;
        dec[i] = (unsigned char)(31 - i);
    }
    /* "123456789" (the CRC catalogue's check value), and RFC 3720 B.4. */
    const struct {
        const void *data;
        size_t n;
        uint32_t want;
    } cases[] = {{"123456789", 9, 0xE3069283u}, {zeros, 32, 0x8A9136AAu}, {ones, 32, 0x62A8AB43u},
                 {inc, 32, 0x46DD794Eu},         {dec, 32, 0x113FDB5Cu},   {"", 0, 0u}};
    const crc_fn fns[2] = {tb_crc32c_portable, tb_crc32c};
    for (int f = 0; f < 2; f++)
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
            ck_assert_msg(fns[f](0, cases[k].data, cases[k].n) == cases[k].want,
                          "%s case %zu: %08x, want %08x", f ? "dispatched" : "portable", k,
                          fns[f](0, cases[k].data, cases[k].n), cases[k].want);
    if (tb_crc32c_hw_available())
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
            ck_assert_uint_eq(tb_crc32c_hw(0, cases[k].data, cases[k].n), cases[k].want);
}
END_TEST

START_TEST(test_crc32c_table_matches_polynomial)
{
    for (int k = 0; k < 8; k++)
        for (unsigned i = 0; i < 256; i++) {
            /* table k: byte i followed by k zero bytes, register preset 0,
             * no final inversion */
            unsigned char msg[8] = {(unsigned char)i};
            const uint32_t want = ~crc_bitwise(~0u, msg, (size_t)k + 1);
            ck_assert_msg(tb_crc32c_table[k][i] == want, "table %d entry %u: %08x, want %08x", k,
                          i, tb_crc32c_table[k][i], want);
        }
}
END_TEST

START_TEST(test_crc32c_paths_agree_at_every_length_and_alignment)
{
    /* Every length to 600 at 16 alignments; then lengths around the SSE4.2
     * path's three-stream threshold (4096) and its thirds' rounding, up to
     * 1 MiB, at three alignments. */
    static const size_t longer[] = {1023,  1024,  1025,  4095,  4096,  4097,  4098,
                                    4103,  4104,  4111,  8191,  8192,  12288, 12289,
                                    12295, 65543, 99999, (1u << 20) + 5};
    enum { CAP = (1 << 20) + 32 };
    unsigned char *buf = tbt_alloc(CAP + 16);
    tb_rng rng;
    tb_rng_init(&rng, 2024);
    for (size_t i = 0; i < CAP + 16; i++)
        buf[i] = (unsigned char)(tb_rng_next(&rng) >> 56);
    const int hw = tb_crc32c_hw_available() != 0;
    size_t checked = 0;
    const size_t n_short = 601, n_all = n_short + sizeof longer / sizeof longer[0];
    for (size_t k = 0; k < n_all; k++) {
        const size_t n = k < n_short ? k : longer[k - n_short];
        for (size_t align = 0; align < 16; align += k < n_short ? 1 : 7) {
            const unsigned char *p = buf + align;
            const uint32_t want = crc_bitwise(0, p, n);
            ck_assert_msg(tb_crc32c_portable(0, p, n) == want, "portable: length %zu align %zu",
                          n, align);
            ck_assert_msg(tb_crc32c(0, p, n) == want, "dispatched: length %zu align %zu", n,
                          align);
            if (hw)
                ck_assert_msg(tb_crc32c_hw(0, p, n) == want, "SSE4.2: length %zu align %zu", n,
                              align);
            checked++;
        }
    }
    /* Chaining: split anywhere, the same CRC (short and long pieces). */
    const uint32_t whole = crc_bitwise(0, buf, 300), big = crc_bitwise(0, buf, 20000);
    for (size_t cut = 0; cut <= 300; cut++) {
        ck_assert_uint_eq(tb_crc32c_portable(tb_crc32c_portable(0, buf, cut), buf + cut, 300 - cut),
                          whole);
        ck_assert_uint_eq(tb_crc32c(tb_crc32c(0, buf, cut), buf + cut, 300 - cut), whole);
    }
    for (size_t cut = 0; cut <= 20000; cut += 997)
        ck_assert_uint_eq(tb_crc32c(tb_crc32c(0, buf, cut), buf + cut, 20000 - cut), big);
    printf("  check   crc32c: %zu lengths x alignments (to 1 MiB) agree with the bitwise "
           "definition (portable, dispatched%s)\n",
           checked, hw ? ", SSE4.2" : "; SSE4.2 NOT RUN: this CPU lacks it");
    free(buf);
}
END_TEST

Suite *suite_checkpoint(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("resume");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_exact_resume_in_a_new_process);
    tcase_add_test(tc, test_checkpoint_refusals_change_nothing);
    suite_add_tcase(s, tc);
    TCase *ti = tcase_create("integrity");
    tcase_set_timeout(ti, 300);
    tcase_add_test(ti, test_every_bit_flip_is_refused);
    tcase_add_test(ti, test_every_metadata_change_is_refused);
    tcase_add_test(ti, test_nonfinite_values_refused_unless_allowed);
    tcase_add_test(ti, test_nonfinite_detected_in_every_float_dtype);
    tcase_add_test(ti, test_nonfinite_found_across_scan_blocks);
    tcase_add_test(ti, test_save_refuses_nonfinite_unless_allowed);
    tcase_add_test(ti, test_files_without_checksums_load);
    tcase_add_test(ti, test_partial_or_malformed_checksums_fail_cleanly);
    tcase_add_test(ti, test_checksums_independent_of_threads);
    tcase_add_test(ti, test_fuzz_seeds_replay);
    suite_add_tcase(s, ti);
    TCase *tcrc = tcase_create("crc32c");
    tcase_add_test(tcrc, test_crc32c_check_values);
    tcase_add_test(tcrc, test_crc32c_table_matches_polynomial);
    tcase_add_test(tcrc, test_crc32c_paths_agree_at_every_length_and_alignment);
    suite_add_tcase(s, tcrc);
    return s;
}
