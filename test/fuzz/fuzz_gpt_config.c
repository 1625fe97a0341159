/*
 * libFuzzer target for the gpt examples' configuration-from-checkpoint
 * path: gpt_config_from_checkpoint() (examples/common/gpt.c), which every
 * program runs on a checkpoint before allocating a model for it. Build and
 * run with `make fuzz` (clang -fsanitize=fuzzer,address,undefined).
 *
 * Two kinds of input, chosen by the first byte:
 *  - even: the rest is a whole safetensors image (tb_st_parse() first);
 *  - odd: the rest is lines applied to a valid checkpoint of a small model
 *    (1 layer, width 4, 2 heads, context 3, vocabulary 5, Adam state):
 *    "key=value" sets a metadata pair (any key, any bytes), "!name"
 *    removes a tensor, "+name:d0,d1,..." adds or replaces an F32 tensor of
 *    that shape. This reaches the metadata and tensor checks far more often
 *    than random images do.
 *
 * Checked on every input: no crash, leak or undefined behaviour (the
 * sanitizers); the validation allocates nothing at all (a malloc hook
 * counts its bytes); and a configuration it accepts is consistent with the
 * tensors by an independent route: it passes gpt_config_check(), a model
 * built from it with gpt_init() loads the file's parameters with
 * tb_st_load_params(TB_ST_STRICT) (every parameter present with its shape,
 * nothing else but "optimizer." tensors), and every optimizer tensor is the
 * state of one of those parameters with its shape.
 */
#include <sanitizer/allocator_interface.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt.h"
#include "tblocks.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Bytes malloc'ed while `counting` is set (the validation call only). */
static volatile int counting;
static volatile size_t counted;

static void on_malloc(const volatile void *ptr, size_t size)
{
    (void)ptr;
    if (counting)
        counted += size;
}

static void on_free(const volatile void *ptr)
{
    (void)ptr;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
    return 0;
}

/* ---- building images from lines ------------------------------------------------ */

enum { MAX_TENSORS = 256, MAX_META = 64, MAX_DATA = 1 << 20, NAME_CAP = 160 };

typedef struct tensor {
    char name[NAME_CAP];
    size_t ndim, shape[TB_ST_MAX_DIMS];
} tensor;

typedef struct image {
    tensor t[MAX_TENSORS];
    size_t n;
    char key[MAX_META][NAME_CAP], value[MAX_META][NAME_CAP];
    size_t n_meta;
} image;

static const gpt_config base = {1, 2, 4, 3, 5, 0.0f};

/* The base checkpoint: the model's parameters and their Adam moments. */
static int base_image(image *im)
{
    static const char *const kinds[3] = {"", "optimizer.m.", "optimizer.v."};
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 1;
    gpt m;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    if (gpt_init(&ctx, &m, &base, &rng) != TB_OK)
        abort();
    im->n = 0;
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < m.params.count; i++) {
            tensor *t = &im->t[im->n++];
            const tb_param *p = m.params.items[i].param;
            snprintf(t->name, sizeof t->name, "%s%s", kinds[k], m.params.items[i].name);
            t->ndim = p->ndim;
            memcpy(t->shape, p->shape, p->ndim * sizeof(size_t));
        }
    gpt_free(&m);
    gpt_config_text text;
    tb_st_meta meta[GPT_CONFIG_N_META];
    gpt_config_meta(&base, &text, meta);
    im->n_meta = GPT_CONFIG_N_META;
    for (size_t i = 0; i < GPT_CONFIG_N_META; i++) {
        snprintf(im->key[i], NAME_CAP, "%s", meta[i].key);
        snprintf(im->value[i], NAME_CAP, "%s", meta[i].value);
    }
    return 1;
}

static void copy_field(char *dst, const uint8_t *src, size_t n)
{
    n = n < NAME_CAP - 1 ? n : NAME_CAP - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* One line: "key=value", "!name" or "+name:d0,d1,...". */
static void apply_line(image *im, const uint8_t *s, size_t n)
{
    if (n && s[0] == '!') {
        char name[NAME_CAP];
        copy_field(name, s + 1, n - 1);
        for (size_t i = 0; i < im->n; i++)
            if (strcmp(im->t[i].name, name) == 0)
                im->t[i] = im->t[--im->n];
        return;
    }
    if (n && s[0] == '+') {
        const uint8_t *colon = memchr(s, ':', n);
        if (!colon)
            return;
        tensor t;
        memset(&t, 0, sizeof t);
        copy_field(t.name, s + 1, (size_t)(colon - s - 1));
        size_t d = 0, v = 0, digits = 0;
        for (const uint8_t *p = colon + 1; p <= s + n; p++) {
            if (p < s + n && *p >= '0' && *p <= '9') {
                v = v * 10 + (size_t)(*p - '0');
                if (v > MAX_DATA)
                    return;
                digits++;
            } else {
                if (digits && d < TB_ST_MAX_DIMS)
                    t.shape[d++] = v;
                v = 0, digits = 0;
            }
        }
        t.ndim = d;
        size_t i = 0;
        while (i < im->n && strcmp(im->t[i].name, t.name) != 0)
            i++;
        if (i == im->n && im->n == MAX_TENSORS)
            return;
        im->t[i] = t;
        im->n += i == im->n;
        return;
    }
    const uint8_t *eq = memchr(s, '=', n);
    if (!eq)
        return;
    char key[NAME_CAP];
    copy_field(key, s, (size_t)(eq - s));
    size_t i = 0;
    while (i < im->n_meta && strcmp(im->key[i], key) != 0)
        i++;
    if (i == im->n_meta && im->n_meta == MAX_META)
        return;
    memcpy(im->key[i], key, NAME_CAP);
    copy_field(im->value[i], eq + 1, (size_t)(s + n - eq - 1));
    im->n_meta += i == im->n_meta;
}

/* JSON string (the bytes as they are, with '"', '\\' and controls escaped). */
static size_t put_str(char *out, size_t at, size_t cap, const char *s)
{
    at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\\%c", *p);
        else if (*p < 0x20)
            at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\\u%04x", *p);
        else if (at < cap)
            out[at++] = (char)*p;
    }
    return at + (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\"");
}

/* The image as safetensors bytes (F32 zeros), or NULL if its data would
 * exceed MAX_DATA bytes. */
static unsigned char *serialize(const image *im, size_t *size)
{
    size_t data = 0;
    size_t numel[MAX_TENSORS];
    for (size_t i = 0; i < im->n; i++) {
        numel[i] = 1;
        for (size_t d = 0; d < im->t[i].ndim; d++) {
            if (im->t[i].shape[d] && numel[i] > MAX_DATA / im->t[i].shape[d])
                return NULL;
            numel[i] *= im->t[i].shape[d];
        }
        data += numel[i] * 4;
        if (data > MAX_DATA)
            return NULL;
    }
    const size_t cap = 64 + (MAX_META * 2 + MAX_TENSORS) * (6 * NAME_CAP + 256);
    char *json = malloc(cap);
    if (!json)
        return NULL;
    size_t at = (size_t)snprintf(json, cap, "{\"__metadata__\":{");
    for (size_t i = 0; i < im->n_meta; i++) {
        at += (size_t)snprintf(json + at, cap - at, "%s", i ? "," : "");
        at = put_str(json, at, cap, im->key[i]);
        at += (size_t)snprintf(json + at, cap - at, ":");
        at = put_str(json, at, cap, im->value[i]);
    }
    at += (size_t)snprintf(json + at, cap - at, "}");
    size_t off = 0;
    for (size_t i = 0; i < im->n; i++) {
        at += (size_t)snprintf(json + at, cap - at, ",");
        at = put_str(json, at, cap, im->t[i].name);
        at += (size_t)snprintf(json + at, cap - at, ":{\"dtype\":\"F32\",\"shape\":[");
        for (size_t d = 0; d < im->t[i].ndim; d++)
            at += (size_t)snprintf(json + at, cap - at, "%s%zu", d ? "," : "", im->t[i].shape[d]);
        at += (size_t)snprintf(json + at, cap - at, "],\"data_offsets\":[%zu,%zu]}", off,
                               off + numel[i] * 4);
        off += numel[i] * 4;
    }
    at += (size_t)snprintf(json + at, cap - at, "}");
    if (at >= cap)
        abort(); /* the bound above is wrong */
    unsigned char *img = calloc(8 + at + data, 1);
    if (img) {
        for (int b = 0; b < 8; b++)
            img[b] = (unsigned char)((uint64_t)at >> (8 * b));
        memcpy(img + 8, json, at);
        *size = 8 + at + data;
    }
    free(json);
    return img;
}

/* ---- the checks ------------------------------------------------------------------- */

/* An accepted configuration, checked against the file another way. */
static void check_accepted(tb_ctx *ctx, const tb_st_file *f, const gpt_config *cfg)
{
    if (gpt_config_check(ctx, cfg) != TB_OK)
        abort();
    size_t params;
    if (gpt_param_count(cfg, &params) != TB_OK)
        abort();
    if (params > (1u << 18))
        return; /* cannot be: the file would be larger than any input */
    gpt m;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    if (gpt_init(ctx, &m, cfg, &rng) != TB_OK)
        abort();
    if (tb_st_load_params(ctx, f, &m.params, TB_ST_STRICT, "optimizer.", NULL) != TB_OK)
        abort(); /* accepted, but the model does not load */
    for (size_t i = 0; i < f->count; i++) {
        const tb_st_tensor *t = &f->tensors[i];
        if (strncmp(t->name, "optimizer.", 10) != 0)
            continue;
        const char *rest = t->name + 10, *dot = strchr(rest, '.');
        if (!dot)
            abort();
        const size_t kind = (size_t)(dot - rest);
        if (!((kind == 1 && (rest[0] == 'm' || rest[0] == 'v')) ||
              (kind == 4 && strncmp(rest, "vmax", 4) == 0)))
            abort();
        const tb_named_param *np = NULL;
        for (size_t k = 0; k < m.params.count && !np; k++)
            if (strcmp(m.params.items[k].name, dot + 1) == 0)
                np = &m.params.items[k];
        if (!np || np->param->ndim != t->ndim ||
            memcmp(np->param->shape, t->shape, t->ndim * sizeof(size_t)) != 0)
            abort(); /* state of no parameter, or of another shape */
    }
    gpt_free(&m);
}

static void validate(const tb_st_file *f)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 1;
    gpt_config cfg;
    memset(&cfg, 0, sizeof cfg);
    counted = 0;
    counting = 1;
    const tb_status s = gpt_config_from_checkpoint(&ctx, f, &cfg);
    counting = 0;
    if (counted != 0)
        abort(); /* the validation must not allocate */
    if (s == TB_OK)
        check_accepted(&ctx, f, &cfg);
    else if (!tb_ctx_error(&ctx)[0])
        abort(); /* every refusal says why */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 1;
    unsigned char *img = NULL;
    const uint8_t *bytes = data + 1;
    size_t n = size - 1;
    if (data[0] & 1) {
        static image im; /* large: not on the stack */
        base_image(&im);
        for (size_t at = 0; at < n;) {
            const uint8_t *nl = memchr(bytes + at, '\n', n - at);
            const size_t len = nl ? (size_t)(nl - (bytes + at)) : n - at;
            apply_line(&im, bytes + at, len);
            at += len + 1;
        }
        img = serialize(&im, &n);
        if (!img)
            return 0;
        bytes = img;
    }
    tb_st_file f;
    if (tb_st_parse(&ctx, bytes, n, &f) == TB_OK) {
        validate(&f);
        tb_st_close(&f);
    }
    free(img);
    return 0;
}
