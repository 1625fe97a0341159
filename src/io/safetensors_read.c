/*
 * safetensors reader and writer (safetensors.h).
 *
 * The reader is a small recursive-descent JSON parser specialised to the
 * header's shape, working on [p, end) of the caller's buffer: every read
 * is bounds-checked against `end`, every size computation overflow-checked.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/internal.h"
#include "safetensors_fd.h"

#define MAX_HEADER (100u * 1000u * 1000u) /* the reference implementation's limit */
#define MAX_DEPTH 64

/* ---- dtypes -------------------------------------------------------------- */

static const struct {
    const char *name;
    tb_st_dtype dtype;
    size_t size;
} dtypes[] = {
    {"BOOL", TB_ST_BOOL, 1}, {"U8", TB_ST_U8, 1},   {"I8", TB_ST_I8, 1},
    {"I16", TB_ST_I16, 2},   {"U16", TB_ST_U16, 2}, {"F16", TB_ST_F16, 2},
    {"BF16", TB_ST_BF16, 2}, {"I32", TB_ST_I32, 4}, {"U32", TB_ST_U32, 4},
    {"F32", TB_ST_F32, 4},   {"I64", TB_ST_I64, 8}, {"U64", TB_ST_U64, 8},
    {"F64", TB_ST_F64, 8},   {"F8_E4M3", TB_ST_F8_E4M3, 1}, {"F8_E5M2", TB_ST_F8_E5M2, 1},
};

static size_t dtype_size(tb_st_dtype d)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].dtype == d)
            return dtypes[i].size;
    return 0;
}

/* ---- parser state -------------------------------------------------------- */

typedef struct parser {
    tb_ctx *ctx;
    const unsigned char *start, *p, *end; /* the JSON header */
    char *pool;                   /* unescaped strings */
    size_t pool_used, pool_cap;
    tb_st_tensor *tensors;
    size_t count, cap;
    tb_st_meta *meta;
    size_t n_meta, meta_cap;
    size_t data_size;
    const unsigned char *data;
} parser;

static tb_status bad_at(parser *ps, const unsigned char *at, const char *what)
{
    return tb_fail(ps->ctx, TB_ERR_FORMAT, "tb_st_parse", "%s at header byte %zu", what,
                   (size_t)(at - ps->start));
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int expect(parser *ps, char c)
{
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == (unsigned char)c) {
        ps->p++;
        return 1;
    }
    return 0;
}

static int hex4(const unsigned char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        const unsigned c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return 0;
    }
    *out = v;
    return 1;
}

/* Length of the valid UTF-8 sequence at s (< end), or 0. */
static size_t utf8_len(const unsigned char *s, const unsigned char *end)
{
    const unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, min = 0x10000;
    else
        return 0;
    if ((size_t)(end - s) < n)
        return 0;
    unsigned cp = c & (0x7F >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static size_t put_utf8(unsigned cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A JSON string into the pool (NUL-terminated; an embedded \u0000 is
 * refused, since names are C strings). *out points at it. The pool holds
 * as many bytes as the header, which no unescaped string set can exceed. */
static tb_status parse_string(parser *ps, const char **out)
{
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"')
        return bad_at(ps, ps->p, "expected a string");
    ps->p++;
    char *dst = ps->pool + ps->pool_used;
    size_t n = 0;
    for (;;) {
        if (ps->p >= ps->end)
            return bad_at(ps, ps->p, "unterminated string");
        const unsigned c = *ps->p;
        if (c == '"') {
            ps->p++;
            break;
        }
        if (c < 0x20)
            return bad_at(ps, ps->p, "control character in a string");
        if (c == '\\') {
            if (ps->end - ps->p < 2)
                return bad_at(ps, ps->p, "unterminated escape");
            const unsigned e = ps->p[1];
            ps->p += 2;
            char ch;
            switch (e) {
            case '"': ch = '"'; break;
            case '\\': ch = '\\'; break;
            case '/': ch = '/'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u': {
                unsigned cp;
                if (ps->end - ps->p < 4 || !hex4(ps->p, &cp))
                    return bad_at(ps, ps->p, "bad \\u escape");
                ps->p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
                    unsigned lo;
                    if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
                        !hex4(ps->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return bad_at(ps, ps->p, "unpaired surrogate in a \\u escape");
                    ps->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return bad_at(ps, ps->p, "unpaired surrogate in a \\u escape");
                }
                if (cp == 0)
                    return bad_at(ps, ps->p, "NUL character in a string");
                n += put_utf8(cp, dst + n);
                continue;
            }
            default:
                return bad_at(ps, ps->p, "unknown escape in a string");
            }
            dst[n++] = ch;
            continue;
        }
        const size_t len = utf8_len(ps->p, ps->end);
        if (!len)
            return bad_at(ps, ps->p, "invalid UTF-8 in a string");
        memcpy(dst + n, ps->p, len);
        n += len;
        ps->p += len;
    }
    dst[n] = '\0';
    ps->pool_used += n + 1;
    *out = dst;
    return TB_OK;
}

/* A non-negative JSON integer that fits in size_t (no sign, fraction or
 * exponent; no leading zeros). */
static tb_status parse_size(parser *ps, size_t *out)
{
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
        return bad_at(ps, ps->p, "expected a non-negative integer");
    if (*ps->p == '0' && ps->end - ps->p > 1 && ps->p[1] >= '0' && ps->p[1] <= '9')
        return bad_at(ps, ps->p, "integer with a leading zero");
    size_t v = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        const size_t d = (size_t)(*ps->p - '0');
        if (v > (SIZE_MAX - d) / 10)
            return bad_at(ps, ps->p, "integer too large");
        v = v * 10 + d;
        ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
        return bad_at(ps, ps->p, "expected an integer, found a fraction or exponent");
    *out = v;
    return TB_OK;
}

/* Skip any JSON value (for keys this reader does not use). */
static tb_status skip_value(parser *ps, int depth)
{
    if (depth > MAX_DEPTH)
        return bad_at(ps, ps->p, "JSON nested too deeply");
    skip_ws(ps);
    if (ps->p >= ps->end)
        return bad_at(ps, ps->p, "unexpected end of header");
    const unsigned c = *ps->p;
    tb_status s;
    if (c == '"') {
        const char *tmp;
        const size_t used = ps->pool_used;
        s = parse_string(ps, &tmp);
        ps->pool_used = used; /* not kept */
        return s;
    }
    if (c == '{' || c == '[') {
        const char close = c == '{' ? '}' : ']';
        ps->p++;
        if (expect(ps, close))
            return TB_OK;
        for (;;) {
            if (c == '{') {
                const char *tmp;
                const size_t used = ps->pool_used;
                if ((s = parse_string(ps, &tmp)) != TB_OK)
                    return s;
                ps->pool_used = used;
                if (!expect(ps, ':'))
                    return bad_at(ps, ps->p, "expected ':'");
            }
            if ((s = skip_value(ps, depth + 1)) != TB_OK)
                return s;
            if (expect(ps, ','))
                continue;
            if (expect(ps, close))
                return TB_OK;
            return bad_at(ps, ps->p, "expected ',' or the end of an object or array");
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        const size_t len = strlen(words[i]);
        if ((size_t)(ps->end - ps->p) >= len && memcmp(ps->p, words[i], len) == 0) {
            ps->p += len;
            return TB_OK;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) { /* a JSON number: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)? */
#define DIGIT(q) ((q) < ps->end && *(q) >= '0' && *(q) <= '9')
        const unsigned char *q = ps->p;
        if (*q == '-')
            q++;
        if (!DIGIT(q))
            return bad_at(ps, q, "bad number");
        if (*q == '0')
            q++;
        else
            while (DIGIT(q))
                q++;
        if (q < ps->end && *q == '.') {
            q++;
            if (!DIGIT(q))
                return bad_at(ps, q, "bad number");
            while (DIGIT(q))
                q++;
        }
        if (q < ps->end && (*q == 'e' || *q == 'E')) {
            q++;
            if (q < ps->end && (*q == '+' || *q == '-'))
                q++;
            if (!DIGIT(q))
                return bad_at(ps, q, "bad number");
            while (DIGIT(q))
                q++;
        }
#undef DIGIT
        ps->p = q;
        return TB_OK;
    }
    return bad_at(ps, ps->p, "unexpected character");
}

/* Grow an array of `elem`-byte items from *cap to at least need. */
static tb_status grow(parser *ps, void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return TB_OK;
    size_t ncap = *cap ? *cap * 2 : 16, bytes;
    if (ncap < need)
        ncap = need;
    if (!tb_mul_size(ncap, elem, &bytes))
        return tb_fail(ps->ctx, TB_ERR_OVERFLOW, "tb_st_parse", "too many entries");
    void *mem;
    tb_status s = tb_alloc(ps->ctx, "tb_st_parse", bytes, &mem);
    if (s != TB_OK)
        return s;
    if (*arr) {
        memcpy(mem, *arr, *cap * elem);
        tb_free_with(&ps->ctx->allocator, *arr);
    }
    *arr = mem;
    *cap = ncap;
    return TB_OK;
}

static tb_status parse_metadata(parser *ps)
{
    skip_ws(ps);
    if ((size_t)(ps->end - ps->p) >= 4 && memcmp(ps->p, "null", 4) == 0) {
        ps->p += 4;
        return TB_OK;
    }
    if (!expect(ps, '{'))
        return bad_at(ps, ps->p, "__metadata__ must be an object of strings");
    if (expect(ps, '}'))
        return TB_OK;
    for (;;) {
        const char *key, *value;
        tb_status s;
        if ((s = parse_string(ps, &key)) != TB_OK)
            return s;
        if (!expect(ps, ':'))
            return bad_at(ps, ps->p, "expected ':'");
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"')
            return tb_fail(ps->ctx, TB_ERR_FORMAT, "tb_st_parse",
                           "metadata value of '%s' is not a string", key);
        if ((s = parse_string(ps, &value)) != TB_OK)
            return s;
        if ((s = grow(ps, (void **)&ps->meta, &ps->meta_cap, ps->n_meta + 1,
                      sizeof(tb_st_meta))) != TB_OK)
            return s;
        ps->meta[ps->n_meta].key = key;
        ps->meta[ps->n_meta].value = value;
        ps->n_meta++;
        if (expect(ps, ','))
            continue;
        if (expect(ps, '}'))
            return TB_OK;
        return bad_at(ps, ps->p, "expected ',' or '}' in __metadata__");
    }
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]} for tensor `name`. */
static tb_status parse_tensor(parser *ps, const char *name, tb_st_tensor *t, size_t off[2])
{
    tb_ctx *ctx = ps->ctx;
    const char *fn = "tb_st_parse";
    if (!expect(ps, '{'))
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "entry '%s' is not an object", name);
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    memset(t, 0, sizeof *t);
    t->name = name;
    if (!expect(ps, '}'))
        for (;;) {
            const char *key;
            const size_t used = ps->pool_used;
            tb_status s = parse_string(ps, &key);
            if (s != TB_OK)
                return s;
            if (!expect(ps, ':'))
                return bad_at(ps, ps->p, "expected ':'");
            if (strcmp(key, "dtype") == 0) {
                const char *d;
                if (have_dtype++)
                    return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': duplicate dtype", name);
                if ((s = parse_string(ps, &d)) != TB_OK)
                    return s;
                size_t k = 0;
                while (k < sizeof dtypes / sizeof dtypes[0] && strcmp(dtypes[k].name, d) != 0)
                    k++;
                if (k == sizeof dtypes / sizeof dtypes[0])
                    return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': unknown dtype '%.32s'", name,
                                   d);
                t->dtype = dtypes[k].dtype;
            } else if (strcmp(key, "shape") == 0) {
                if (have_shape++)
                    return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': duplicate shape", name);
                if (!expect(ps, '['))
                    return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': shape is not an array", name);
                if (!expect(ps, ']'))
                    for (;;) {
                        size_t v;
                        if (t->ndim == TB_ST_MAX_DIMS)
                            return tb_fail(ctx, TB_ERR_FORMAT, fn,
                                           "'%s': more than %d dimensions", name,
                                           TB_ST_MAX_DIMS);
                        if ((s = parse_size(ps, &v)) != TB_OK)
                            return s;
                        t->shape[t->ndim++] = v;
                        if (expect(ps, ','))
                            continue;
                        if (expect(ps, ']'))
                            break;
                        return bad_at(ps, ps->p, "expected ',' or ']' in a shape");
                    }
            } else if (strcmp(key, "data_offsets") == 0) {
                if (have_offsets++)
                    return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': duplicate data_offsets", name);
                if (!expect(ps, '[') || (s = parse_size(ps, &off[0])) != TB_OK ||
                    !expect(ps, ',') || (s = parse_size(ps, &off[1])) != TB_OK ||
                    !expect(ps, ']'))
                    return tb_fail(ctx, TB_ERR_FORMAT, fn,
                                   "'%s': data_offsets must be [begin, end]", name);
            } else if ((s = skip_value(ps, 2)) != TB_OK) {
                return s;
            }
            ps->pool_used = used; /* the key and dtype strings are not kept */
            if (expect(ps, ','))
                continue;
            if (expect(ps, '}'))
                break;
            return bad_at(ps, ps->p, "expected ',' or '}' in a tensor entry");
        }
    if (!have_dtype || !have_shape || !have_offsets)
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s' lacks %s", name,
                       !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
    size_t numel = 1, nbytes;
    for (size_t d = 0; d < t->ndim; d++)
        if (!tb_mul_size(numel, t->shape[d], &numel))
            return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': shape's element count overflows",
                           name);
    if (!tb_mul_size(numel, dtype_size(t->dtype), &nbytes))
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': byte size overflows", name);
    if (off[1] < off[0])
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': data_offsets [%zu, %zu] are reversed",
                       name, off[0], off[1]);
    if (off[1] > ps->data_size)
        return tb_fail(ctx, TB_ERR_FORMAT, fn,
                       "'%s': data_offsets [%zu, %zu] pass the end of the data (%zu bytes)",
                       name, off[0], off[1], ps->data_size);
    if (off[1] - off[0] != nbytes)
        return tb_fail(ctx, TB_ERR_FORMAT, fn,
                       "'%s': %zu bytes at data_offsets, but its shape and dtype need %zu", name,
                       off[1] - off[0], nbytes);
    t->numel = numel;
    t->nbytes = nbytes;
    t->data = ps->data + off[0];
    return TB_OK;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const tb_st_tensor *const *)a)->name, (*(const tb_st_tensor *const *)b)->name);
}

static int cmp_meta(const void *a, const void *b)
{
    return strcmp(((const tb_st_meta *)a)->key, ((const tb_st_meta *)b)->key);
}

/* Duplicate metadata keys, found by sorting a copy (O(n log n): a header
 * may hold millions of keys). */
static tb_status check_meta(parser *ps)
{
    if (ps->n_meta < 2)
        return TB_OK;
    void *mem;
    tb_status s = tb_alloc(ps->ctx, "tb_st_parse", ps->n_meta * sizeof(tb_st_meta), &mem);
    if (s != TB_OK)
        return s;
    tb_st_meta *m = mem;
    memcpy(m, ps->meta, ps->n_meta * sizeof(tb_st_meta));
    qsort(m, ps->n_meta, sizeof *m, cmp_meta);
    for (size_t i = 1; i < ps->n_meta && s == TB_OK; i++)
        if (strcmp(m[i - 1].key, m[i].key) == 0)
            s = tb_fail(ps->ctx, TB_ERR_FORMAT, "tb_st_parse", "duplicate metadata key '%s'",
                        m[i].key);
    tb_free_with(&ps->ctx->allocator, mem);
    return s;
}

static int cmp_data(const void *a, const void *b)
{
    const tb_st_tensor *x = *(const tb_st_tensor *const *)a, *y = *(const tb_st_tensor *const *)b;
    if (x->data != y->data)
        return x->data < y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Duplicate names, and the data section covered exactly (no overlap, no
 * hole, nothing left over). */
static tb_status check_layout(parser *ps)
{
    if (ps->count == 0) {
        if (ps->data_size != 0)
            return tb_fail(ps->ctx, TB_ERR_FORMAT, "tb_st_parse",
                           "%zu bytes of data but no tensors", ps->data_size);
        return TB_OK;
    }
    size_t bytes;
    if (!tb_mul_size(ps->count, sizeof(tb_st_tensor *), &bytes))
        return tb_fail(ps->ctx, TB_ERR_OVERFLOW, "tb_st_parse", "too many tensors");
    void *mem;
    tb_status s = tb_alloc(ps->ctx, "tb_st_parse", bytes, &mem);
    if (s != TB_OK)
        return s;
    tb_st_tensor **ord = mem;
    for (size_t i = 0; i < ps->count; i++)
        ord[i] = &ps->tensors[i];
    qsort(ord, ps->count, sizeof *ord, cmp_name);
    for (size_t i = 1; i < ps->count && s == TB_OK; i++)
        if (strcmp(ord[i - 1]->name, ord[i]->name) == 0)
            s = tb_fail(ps->ctx, TB_ERR_FORMAT, "tb_st_parse", "duplicate tensor name '%s'",
                        ord[i]->name);
    if (s == TB_OK) {
        qsort(ord, ps->count, sizeof *ord, cmp_data);
        size_t at = 0;
        for (size_t i = 0; i < ps->count && s == TB_OK; i++) {
            const size_t b = (size_t)(ord[i]->data - ps->data);
            if (b != at)
                s = tb_fail(ps->ctx, TB_ERR_FORMAT, "tb_st_parse",
                            "tensor '%s' starts at data byte %zu; %zu expected (tensors overlap "
                            "or leave a hole)",
                            ord[i]->name, b, at);
            at = b + ord[i]->nbytes;
        }
        if (s == TB_OK && at != ps->data_size)
            s = tb_fail(ps->ctx, TB_ERR_FORMAT, "tb_st_parse",
                        "tensors cover %zu of the %zu data bytes", at, ps->data_size);
    }
    tb_free_with(&ps->ctx->allocator, mem);
    return s;
}

static tb_status parse_header(parser *ps)
{
    tb_status s;
    if (!expect(ps, '{'))
        return bad_at(ps, ps->p, "the header is not a JSON object");
    int have_meta = 0;
    if (!expect(ps, '}'))
        for (;;) {
            const char *key;
            if ((s = parse_string(ps, &key)) != TB_OK)
                return s;
            if (!expect(ps, ':'))
                return bad_at(ps, ps->p, "expected ':'");
            if (strcmp(key, "__metadata__") == 0) {
                if (have_meta++)
                    return bad_at(ps, ps->p, "duplicate __metadata__");
                if ((s = parse_metadata(ps)) != TB_OK)
                    return s;
            } else {
                if (!key[0]) /* the writer's rule: a tensor needs a name */
                    return bad_at(ps, ps->p, "a tensor with an empty name");
                if ((s = grow(ps, (void **)&ps->tensors, &ps->cap, ps->count + 1,
                              sizeof(tb_st_tensor))) != TB_OK)
                    return s;
                size_t off[2] = {0, 0};
                if ((s = parse_tensor(ps, key, &ps->tensors[ps->count], off)) != TB_OK)
                    return s;
                ps->count++;
            }
            if (expect(ps, ','))
                continue;
            if (expect(ps, '}'))
                break;
            return bad_at(ps, ps->p, "expected ',' or '}' in the header");
        }
    skip_ws(ps);
    if (ps->p != ps->end)
        return bad_at(ps, ps->p, "bytes after the header's JSON object");
    if ((s = check_meta(ps)) != TB_OK)
        return s;
    return check_layout(ps);
}

void tb_st_close(tb_st_file *file)
{
    if (!file)
        return;
    if (file->tensors)
        tb_free_with(&file->allocator, file->tensors);
    if (file->meta)
        tb_free_with(&file->allocator, file->meta);
    if (file->storage)
        tb_free_with(&file->allocator, file->storage);
    if (file->owned)
        tb_free_with(&file->allocator, file->owned);
    if (file->map)
        (void)munmap(file->map, file->map_size);
    memset(file, 0, sizeof *file);
}

/* The 8-byte little-endian header length. */
static uint64_t read_u64le(const unsigned char *b)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | b[i];
    return n;
}

/* A header length n against the cap and the `after` bytes that follow the
 * length field (the cap first: a huge n is refused for what it is). */
static tb_status check_header_length(tb_ctx *ctx, const char *fn, uint64_t n, uint64_t after)
{
    if (n > MAX_HEADER)
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "header length %llu is above the %u-byte limit",
                       (unsigned long long)n, MAX_HEADER);
    if (n > after)
        return tb_fail(ctx, TB_ERR_FORMAT, fn,
                       "header length %llu is larger than the %llu bytes after it",
                       (unsigned long long)n, (unsigned long long)after);
    return TB_OK;
}

/* Parse the n-byte JSON header with the data section [data, data +
 * data_size) into file (left empty on failure). The two need not be
 * adjacent: tb_st_open() maps the data section on its own. */
static tb_status parse_parts(tb_ctx *ctx, const unsigned char *header, size_t n,
                             const unsigned char *data, size_t data_size, tb_st_file *file)
{
    parser ps;
    memset(&ps, 0, sizeof ps);
    ps.ctx = ctx;
    ps.start = ps.p = header;
    ps.end = header + n;
    ps.data = data;
    ps.data_size = data_size;
    ps.pool_cap = n + 1;
    void *pool;
    tb_status s = tb_alloc(ctx, "tb_st_parse", ps.pool_cap, &pool);
    if (s != TB_OK)
        return s;
    ps.pool = pool;
    file->allocator = ctx->allocator;
    file->storage = pool;
    s = parse_header(&ps);
    file->tensors = ps.tensors;
    file->meta = ps.meta;
    if (s != TB_OK) {
        tb_st_close(file);
        return s;
    }
    file->count = ps.count;
    file->n_meta = ps.n_meta;
    return TB_OK;
}

tb_status tb_st_parse(tb_ctx *ctx, const void *bytes, size_t size, tb_st_file *file)
{
    const char *fn = __func__;
    if (!file)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "file must not be NULL");
    memset(file, 0, sizeof *file);
    if (!ctx || (!bytes && size))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and bytes must not be NULL");
    const unsigned char *b = bytes;
    if (size < 8)
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "%zu bytes: shorter than the 8-byte header length",
                       size);
    const uint64_t n = read_u64le(b);
    tb_status s = check_header_length(ctx, fn, n, size - 8);
    if (s != TB_OK)
        return s;
    return parse_parts(ctx, b + 8, (size_t)n, b + 8 + n, size - 8 - (size_t)n, file);
}

/* ---- reading a file ----------------------------------------------------------- */

/* Exactly n bytes at offset off of fd into buf. Returns 1; 0 on an error
 * (errno set) or when the file ends first (errno 0: it shrank). */
static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *p = buf;
    while (n) {
        const size_t chunk = n < ((size_t)1 << 30) ? n : (size_t)1 << 30;
        const ssize_t got = pread(fd, p, chunk, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = 0;
            return 0;
        }
        p += got;
        off += (uint64_t)got;
        n -= (size_t)got;
    }
    return 1;
}

static tb_status read_failed(tb_ctx *ctx, const char *path, uint64_t size)
{
    if (errno == 0)
        return tb_fail(ctx, TB_ERR_IO, "tb_st_open",
                       "'%s' ended before its %llu bytes: it changed size while being read",
                       path, (unsigned long long)size);
    return tb_fail(ctx, TB_ERR_IO, "tb_st_open", "cannot read '%s': %s", path, strerror(errno));
}

/* Map bytes [off, off + len) of fd read-only and private; the mapping
 * starts at the page holding off. Returns the address of byte off and sets
 * *base, *base_len (what munmap takes), or returns NULL when the system
 * refuses (the caller then reads instead). */
static const unsigned char *map_range(int fd, uint64_t off, size_t len, void **base,
                                      size_t *base_len)
{
    const long page = sysconf(_SC_PAGESIZE);
    if (page <= 0)
        return NULL;
    const uint64_t start = off - off % (uint64_t)page;
    const size_t lead = (size_t)(off - start);
    size_t total;
    if (!tb_add_size(lead, len, &total))
        return NULL;
    void *m = mmap(NULL, total, PROT_READ, MAP_PRIVATE, fd, (off_t)start);
    if (m == MAP_FAILED)
        return NULL;
    *base = m;
    *base_len = total;
    return (const unsigned char *)m + lead;
}

tb_status tb_st_open_fd(tb_ctx *ctx, int fd, const char *path, uint64_t size, int map,
                        tb_st_file *file)
{
    const char *fn = "tb_st_open";
    memset(file, 0, sizeof *file);
    if (size < 8)
        return tb_fail(ctx, TB_ERR_FORMAT, fn,
                       "'%s' is %llu bytes: shorter than the 8-byte header length", path,
                       (unsigned long long)size);
#if SIZE_MAX < UINT64_MAX
    if (size > SIZE_MAX)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "'%s' (%llu bytes) is too large to address",
                       path, (unsigned long long)size);
#endif
    unsigned char len8[8];
    if (!pread_all(fd, len8, 8, 0))
        return read_failed(ctx, path, size);
    const uint64_t n = read_u64le(len8);
    tb_status s = check_header_length(ctx, fn, n, size - 8);
    if (s != TB_OK)
        return s;
    /* Only now is anything allocated: the header, bounded by the cap, and
     * the data section only when it cannot be mapped. */
    const size_t hlen = (size_t)n, data_size = (size_t)(size - 8 - n);
    void *map_base = NULL;
    size_t map_len = 0;
    const unsigned char *data =
        map && data_size ? map_range(fd, 8 + n, data_size, &map_base, &map_len) : NULL;
    void *mem;
    s = tb_alloc(ctx, fn, hlen + (data ? 0 : data_size) + 1, &mem);
    if (s != TB_OK) {
        if (map_base)
            (void)munmap(map_base, map_len);
        return s;
    }
    unsigned char *buf = mem;
    if (!data)
        data = buf + hlen; /* read below, right after the header */
    struct stat st;
    if (!pread_all(fd, buf, hlen + (map_base ? 0 : data_size), 8))
        s = read_failed(ctx, path, size);
    else if (fstat(fd, &st) != 0)
        s = tb_fail(ctx, TB_ERR_IO, fn, "cannot examine '%s': %s", path, strerror(errno));
    else if ((uint64_t)st.st_size != size)
        s = tb_fail(ctx, TB_ERR_IO, fn,
                    "'%s' changed size while being read (%llu bytes, then %llu)", path,
                    (unsigned long long)size, (unsigned long long)st.st_size);
    else
        s = parse_parts(ctx, buf, hlen, data, data_size, file);
    if (s != TB_OK) {
        tb_free_with(&ctx->allocator, buf);
        if (map_base)
            (void)munmap(map_base, map_len);
        return s;
    }
    file->owned = buf;
    file->map = map_base;
    file->map_size = map_len;
    return TB_OK;
}

/* Open path for reading if it is a regular file; anything else (a
 * directory, FIFO, device, socket) is refused before it is read. A FIFO
 * is opened non-blocking, so even one swapped in after the stat cannot
 * block; fstat then refuses it, and the flag is cleared for the reads. */
static tb_status open_regular(tb_ctx *ctx, const char *path, int *fd_out, uint64_t *size)
{
    const char *fn = "tb_st_open";
    struct stat st;
    if (stat(path, &st) != 0)
        return tb_fail(ctx, TB_ERR_IO, fn, "cannot open '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return tb_fail(ctx, TB_ERR_IO, fn, "'%s' is not a regular file (%s)", path,
                       S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a file");
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return tb_fail(ctx, TB_ERR_IO, fn, "cannot open '%s': %s", path, strerror(errno));
    const int flags = fcntl(fd, F_GETFL);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || flags < 0 ||
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        const int err = errno;
        close(fd);
        return tb_fail(ctx, TB_ERR_IO, fn, "'%s' is not a regular file (it changed after the "
                       "stat, or cannot be examined: %s)", path, strerror(err));
    }
    *fd_out = fd;
    *size = (uint64_t)st.st_size;
    return TB_OK;
}

tb_status tb_st_open(tb_ctx *ctx, const char *path, tb_st_file *file)
{
    const char *fn = __func__;
    if (!file)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "file must not be NULL");
    memset(file, 0, sizeof *file);
    if (!ctx || !path)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and path must not be NULL");
    int fd = -1;
    uint64_t size = 0;
    tb_status s = open_regular(ctx, path, &fd, &size);
    if (s != TB_OK)
        return s;
    s = tb_st_open_fd(ctx, fd, path, size, 1, file);
    close(fd); /* a mapping outlives its descriptor */
    return s;
}

const tb_st_tensor *tb_st_find(const tb_st_file *file, const char *name)
{
    if (!file || !name)
        return NULL;
    for (size_t i = 0; i < file->count; i++)
        if (strcmp(file->tensors[i].name, name) == 0)
            return &file->tensors[i];
    return NULL;
}

const char *tb_st_meta_get(const tb_st_file *file, const char *key)
{
    if (!file || !key)
        return NULL;
    for (size_t i = 0; i < file->n_meta; i++)
        if (strcmp(file->meta[i].key, key) == 0)
            return file->meta[i].value;
    return NULL;
}

/* ---- conversions ---------------------------------------------------------- */

static float half_to_float(unsigned h)
{
    const unsigned sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    float v;
    if (exp == 0)
        v = ldexpf((float)man, -24); /* zero or subnormal: exact */
    else if (exp == 31)
        v = man ? NAN : INFINITY;
    else
        v = ldexpf((float)(man | 0x400), (int)exp - 25);
    return sign ? -v : v;
}

static int is_float_dtype(tb_st_dtype d)
{
    return d == TB_ST_F32 || d == TB_ST_F16 || d == TB_ST_BF16 || d == TB_ST_F64;
}

/* Values of t into out (numel floats); the dtype is a float one. */
static void convert(const tb_st_tensor *t, float *out)
{
    const unsigned char *p = t->data;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (t->dtype == TB_ST_F32) { /* the file's byte order is the host's */
        if (t->numel)
            memcpy(out, p, t->numel * sizeof(float));
        return;
    }
#endif
    for (size_t i = 0; i < t->numel; i++) {
        switch (t->dtype) {
        case TB_ST_F32: {
            const uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                               (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&out[i], &u, sizeof u);
            break;
        }
        case TB_ST_BF16: {
            const uint32_t u = ((uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8) << 16;
            memcpy(&out[i], &u, sizeof u);
            break;
        }
        case TB_ST_F16:
            out[i] = half_to_float((unsigned)p[2 * i] | (unsigned)p[2 * i + 1] << 8);
            break;
        case TB_ST_F64: {
            uint64_t u = 0;
            for (int k = 7; k >= 0; k--)
                u = (u << 8) | p[8 * i + (size_t)k];
            double d;
            memcpy(&d, &u, sizeof d);
            out[i] = (float)d;
            break;
        }
        default:
            out[i] = NAN; /* not reached: callers check the dtype */
            break;
        }
    }
}

tb_status tb_st_read_f32(tb_ctx *ctx, const tb_st_tensor *t, float *out, size_t n)
{
    const char *fn = __func__;
    if (!t || (!out && n))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "t and out must not be NULL");
    if (n != t->numel)
        return tb_fail(ctx, TB_ERR_SHAPE, fn, "'%s' has %zu elements; out has %zu", t->name,
                       t->numel, n);
    if (!is_float_dtype(t->dtype))
        return tb_fail(ctx, TB_ERR_UNSUPPORTED, fn, "'%s': dtype %d is not a float type",
                       t->name, (int)t->dtype);
    convert(t, out);
    return TB_OK;
}

static void shape_str(char *buf, size_t cap, size_t ndim, const size_t *shape)
{
    size_t at = 0;
    at += (size_t)snprintf(buf, cap, "(");
    for (size_t d = 0; d < ndim && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, d ? ", %zu" : "%zu", shape[d]);
    if (at < cap)
        snprintf(buf + at, cap - at, ")");
}

tb_status tb_st_load_params(tb_ctx *ctx, const tb_st_file *file, tb_param_list *list,
                            unsigned flags, const char *skip_prefix, size_t *n_loaded)
{
    const char *fn = __func__;
    if (!ctx || !file || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, file and list must not be NULL");
    if (flags & ~(unsigned)(TB_ST_ALLOW_MISSING | TB_ST_ALLOW_UNEXPECTED))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown flags 0x%x", flags);
    tb_status s = tb_check_param_list(ctx, fn, list);
    if (s != TB_OK)
        return s;
    const size_t skip_len = skip_prefix ? strlen(skip_prefix) : 0;
    /* Check everything first: on error no parameter is touched. */
    for (size_t i = 0; i < list->count; i++) {
        const tb_named_param *np = &list->items[i];
        const tb_st_tensor *t = tb_st_find(file, np->name);
        if (!t) {
            if (flags & TB_ST_ALLOW_MISSING)
                continue;
            return tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "parameter '%s' is not in the file",
                           np->name);
        }
        const tb_param *p = np->param;
        int same = t->ndim == p->ndim;
        for (size_t d = 0; same && d < p->ndim; d++)
            same = t->shape[d] == p->shape[d];
        if (!same) {
            char a[160], b[160];
            shape_str(a, sizeof a, t->ndim, t->shape);
            shape_str(b, sizeof b, p->ndim, p->shape);
            return tb_fail(ctx, TB_ERR_SHAPE, fn, "'%s' has shape %s in the file, %s here",
                           np->name, a, b);
        }
        if (!is_float_dtype(t->dtype))
            return tb_fail(ctx, TB_ERR_UNSUPPORTED, fn, "'%s': dtype %d is not a float type",
                           np->name, (int)t->dtype);
    }
    if (!(flags & TB_ST_ALLOW_UNEXPECTED))
        for (size_t k = 0; k < file->count; k++) {
            const char *name = file->tensors[k].name;
            if (skip_len && strncmp(name, skip_prefix, skip_len) == 0)
                continue;
            if (!tb_param_list_find(list, name))
                return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                               "the file has tensor '%s', which is not a parameter here", name);
        }
    size_t loaded = 0;
    for (size_t i = 0; i < list->count; i++) {
        const tb_st_tensor *t = tb_st_find(file, list->items[i].name);
        if (!t)
            continue;
        convert(t, list->items[i].param->value);
        loaded++;
    }
    if (n_loaded)
        *n_loaded = loaded;
    return TB_OK;
}

/* ---- writer ---------------------------------------------------------------- */

typedef struct sbuf {
    tb_ctx *ctx;
    char *p;
    size_t len, cap;
    tb_status status;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->status != TB_OK)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 1024;
        while (ncap < b->len + n + 1) {
            if (!tb_mul_size(ncap, 2, &ncap)) {
                b->status = tb_fail(b->ctx, TB_ERR_OVERFLOW, "tb_st_save", "header too large");
                return;
            }
        }
        void *mem;
        if ((b->status = tb_alloc(b->ctx, "tb_st_save", ncap, &mem)) != TB_OK)
            return;
        if (b->p) {
            memcpy(mem, b->p, b->len);
            tb_free_with(&b->ctx->allocator, b->p);
        }
        b->p = mem;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            const char esc[2] = {'\\', (char)c};
            sb_put(b, esc, 2);
        } else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static void sb_size(sbuf *b, size_t v)
{
    char num[32];
    snprintf(num, sizeof num, "%zu", v);
    sb_str(b, num);
}

/* Whether s is valid UTF-8 (the reader refuses anything else). */
static int valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    while (p < end) {
        const size_t n = utf8_len(p, end);
        if (!n)
            return 0;
        p += n;
    }
    return 1;
}

/* Write all of buf or fail. */
static int write_all(FILE *f, const void *buf, size_t n)
{
    return fwrite(buf, 1, n, f) == n;
}

/* floats as little-endian bytes, through a small buffer. */
static int write_floats(FILE *f, const float *x, size_t n)
{
    unsigned char buf[4096];
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        buf[at++] = (unsigned char)u;
        buf[at++] = (unsigned char)(u >> 8);
        buf[at++] = (unsigned char)(u >> 16);
        buf[at++] = (unsigned char)(u >> 24);
        if (at == sizeof buf) {
            if (!write_all(f, buf, at))
                return 0;
            at = 0;
        }
    }
    return at == 0 || write_all(f, buf, at);
}

/* ---- crash-safe replacement ------------------------------------------------- */

#define PATH_CAP 4096 /* longest path handled, with its NUL (Linux's PATH_MAX) */
#define MAX_LINKS 40  /* symbolic links followed, as Linux's path lookup allows */
#define TMP_SUFFIX ".tmp-XXXXXX" /* mkstemp's template after the target's name */

/* The last component of path. */
static const char *base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* The directory part of path into dir ("." when it has none); 0 if it does
 * not fit. */
static int dir_of(const char *path, char *dir, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash) {
        if (cap < 2)
            return 0;
        strcpy(dir, ".");
        return 1;
    }
    size_t n = (size_t)(slash - path);
    if (n == 0)
        n = 1; /* "/name" lives in "/" */
    if (n >= cap)
        return 0;
    memcpy(dir, path, n);
    dir[n] = '\0';
    return 1;
}

/* fsync the directory holding path, so the rename itself is durable
 * (best effort: some file systems refuse). */
static void sync_dir(const char *path)
{
    char dir[PATH_CAP];
    if (!dir_of(path, dir, sizeof dir))
        return;
    const int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* The file a save to path replaces, into target: path itself, or, when
 * path is a symbolic link, the end of its chain of links (a relative link
 * resolved against the directory of the link), so the save writes through
 * the link and leaves it a link. A target that does not exist yet (a new
 * file, or a dangling link's target) is fine: the save creates it. A
 * target that exists but is not a regular file, a chain longer than
 * MAX_LINKS (a loop) or a path that names no file is refused. */
static tb_status resolve_target(tb_ctx *ctx, const char *path, char *target)
{
    const char *fn = "tb_st_save";
    const size_t room = PATH_CAP - (sizeof TMP_SUFFIX - 1); /* the temporary's name must fit */
    if (strlen(path) >= room)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "path is too long");
    strcpy(target, path);
    for (int links = 0;; links++) {
        if (!base_of(target)[0])
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "'%s' names no file (empty, or ends in '/')",
                           target);
        struct stat st;
        if (lstat(target, &st) != 0) {
            if (errno == ENOENT)
                return TB_OK; /* created by the rename */
            return tb_fail(ctx, TB_ERR_IO, fn, "cannot examine '%s': %s", target,
                           strerror(errno));
        }
        if (!S_ISLNK(st.st_mode)) {
            if (!S_ISREG(st.st_mode))
                return tb_fail(ctx, TB_ERR_IO, fn,
                               "'%s' exists and is not a regular file; it is not replaced", target);
            return TB_OK;
        }
        if (links == MAX_LINKS)
            return tb_fail(ctx, TB_ERR_IO, fn,
                           "more than %d symbolic links from '%s' (a loop?); nothing written",
                           MAX_LINKS, path);
        char link[PATH_CAP];
        const ssize_t len = readlink(target, link, sizeof link);
        if (len < 0)
            return tb_fail(ctx, TB_ERR_IO, fn, "cannot read the link '%s': %s", target,
                           strerror(errno));
        if ((size_t)len >= sizeof link)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "the link '%s' is too long", target);
        link[len] = '\0';
        /* A relative link is relative to the link's directory: keep that
         * prefix of target (up to its last '/'), replace the rest. */
        const size_t keep = link[0] == '/' ? 0 : (size_t)(base_of(target) - target);
        if (keep + (size_t)len >= room)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "the path '%s' leads to is too long",
                           path);
        memcpy(target + keep, link, (size_t)len + 1);
    }
}

/* Whether name is exactly base + ".tmp-" + 6 letters or digits (what
 * mkstemp makes of TMP_SUFFIX). */
static int is_temp_name(const char *name, const char *base, size_t base_len)
{
    const size_t sfx = sizeof TMP_SUFFIX - 1, rnd = 6;
    if (strlen(name) != base_len + sfx || memcmp(name, base, base_len) != 0 ||
        memcmp(name + base_len, TMP_SUFFIX, sfx - rnd) != 0)
        return 0;
    for (const char *c = name + base_len + sfx - rnd; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')))
            return 0;
    return 1;
}

/* Remove the temporaries of target that no save is writing: regular files
 * named target + ".tmp-XXXXXX" that are not locked (a save holds an
 * exclusive flock on its temporary until it is renamed, and the kernel
 * drops it when the process dies, so an unlocked one is a killed save's
 * leftover). The name is checked to still be the file that was locked
 * before it is unlinked. Best effort: anything that cannot be opened,
 * locked or removed is left alone, as is everything on a file system
 * without flock. */
static void remove_stale_temps(const char *target)
{
    char dir[PATH_CAP];
    if (!dir_of(target, dir, sizeof dir))
        return;
    const char *base = base_of(target);
    const size_t base_len = strlen(base);
    DIR *d = opendir(dir);
    if (!d)
        return;
    const int dfd = dirfd(d);
    const struct dirent *e;
    while (dfd >= 0 && (e = readdir(d)) != NULL) {
        if (!is_temp_name(e->d_name, base, base_len))
            continue;
        const int fd =
            openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat held, named;
        if (fstat(fd, &held) == 0 && S_ISREG(held.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
            fstatat(dfd, e->d_name, &named, AT_SYMLINK_NOFOLLOW) == 0 &&
            named.st_dev == held.st_dev && named.st_ino == held.st_ino)
            (void)unlinkat(dfd, e->d_name, 0);
        close(fd); /* drops the lock */
    }
    closedir(d);
}

/* A fresh temporary next to target (mkstemp: created exclusively, so
 * concurrent saves never share one), mode 0644, locked (flock, exclusive)
 * through *lock_fd for as long as the save runs; the stream writes it.
 * Between mkstemp and flock another save's cleanup could take the new file
 * for a leftover and remove it; the name is checked to still be the file
 * once locked, and a new one made if not. */
static tb_status create_temp(tb_ctx *ctx, const char *target, char *tmp, FILE **out,
                             int *lock_fd)
{
    const char *fn = "tb_st_save";
    for (int attempt = 0; attempt < 16; attempt++) {
        snprintf(tmp, PATH_CAP, "%s" TMP_SUFFIX, target); /* fits: resolve_target checked */
        const int fd = mkstemp(tmp);
        if (fd < 0)
            break;
        int locked;
        while ((locked = flock(fd, LOCK_EX)) != 0 && errno == EINTR)
            ;
        (void)locked; /* no flock on this file system: cleanups leave it alone too */
        struct stat held, named;
        if (fstat(fd, &held) != 0 || lstat(tmp, &named) != 0 || named.st_dev != held.st_dev ||
            named.st_ino != held.st_ino) {
            close(fd); /* removed under us: not ours any more */
            errno = EAGAIN;
            continue;
        }
        (void)fchmod(fd, 0644); /* mkstemp creates 0600 */
        const int keep = dup(fd);
        FILE *f = keep >= 0 ? fdopen(fd, "wb") : NULL;
        if (!f) {
            const int err = errno;
            if (keep >= 0)
                close(keep);
            close(fd);
            remove(tmp);
            errno = err;
            break;
        }
        *out = f;
        *lock_fd = keep;
        return TB_OK;
    }
    return tb_fail(ctx, TB_ERR_IO, fn, "cannot create a temporary file next to '%s': %s", target,
                   strerror(errno));
}

tb_status tb_st_save(tb_ctx *ctx, const char *path, const tb_st_entry *entries, size_t n,
                     const tb_st_meta *meta, size_t n_meta)
{
    const char *fn = __func__;
    if (!ctx || !path || (!entries && n) || (!meta && n_meta))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, path, entries and meta must not be NULL");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const tb_st_entry *e = &entries[i];
        if (!e->name || !e->name[0] || strcmp(e->name, "__metadata__") == 0)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "entry %zu has an empty or reserved name",
                           i);
        if (e->ndim > TB_ST_MAX_DIMS || (e->ndim && !e->shape))
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "'%s': bad ndim %zu or NULL shape",
                           e->name, e->ndim);
        size_t numel = 1, bytes;
        for (size_t d = 0; d < e->ndim; d++)
            if (!tb_mul_size(numel, e->shape[d], &numel))
                return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "'%s': size overflows", e->name);
        if (numel && !e->data)
            return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "'%s': data is NULL", e->name);
        if (!tb_mul_size(numel, 4, &bytes) || !tb_add_size(total, bytes, &total))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "data size overflows");
        for (size_t j = 0; j < i; j++)
            if (strcmp(entries[j].name, e->name) == 0)
                return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "duplicate tensor name '%s'",
                               e->name);
        if (!valid_utf8(e->name))
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "tensor name %zu is not valid UTF-8", i);
    }
    /* Everything the reader would refuse is refused here, before the old
     * file is touched: a save never replaces a good file with one that
     * cannot be loaded. */
    for (size_t i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value)
            return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "metadata entry %zu has a NULL key or value",
                           i);
        if (!valid_utf8(meta[i].key) || !valid_utf8(meta[i].value))
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "metadata entry %zu is not valid UTF-8",
                           i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(meta[j].key, meta[i].key) == 0)
                return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "duplicate metadata key '%s'",
                               meta[i].key);
    }
    sbuf h = {ctx, NULL, 0, 0, TB_OK};
    sb_str(&h, "{");
    if (n_meta) {
        sb_str(&h, "\"__metadata__\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i)
                sb_str(&h, ",");
            sb_json_string(&h, meta[i].key);
            sb_str(&h, ":");
            sb_json_string(&h, meta[i].value);
        }
        sb_str(&h, "}");
    }
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const tb_st_entry *e = &entries[i];
        size_t numel = 1;
        for (size_t d = 0; d < e->ndim; d++)
            numel *= e->shape[d];
        if (i || n_meta)
            sb_str(&h, ",");
        sb_json_string(&h, e->name);
        sb_str(&h, ":{\"dtype\":\"F32\",\"shape\":[");
        for (size_t d = 0; d < e->ndim; d++) {
            if (d)
                sb_str(&h, ",");
            sb_size(&h, e->shape[d]);
        }
        sb_str(&h, "],\"data_offsets\":[");
        sb_size(&h, at);
        sb_str(&h, ",");
        sb_size(&h, at + 4 * numel);
        sb_str(&h, "]}");
        at += 4 * numel;
    }
    sb_str(&h, "}");
    while (h.status == TB_OK && (8 + h.len) % 8 != 0)
        sb_str(&h, " ");
    if (h.status == TB_OK && h.len > MAX_HEADER)
        h.status = tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "the header would be %zu bytes, above the format's %u-byte limit",
                           h.len, MAX_HEADER);
    if (h.status != TB_OK) {
        if (h.p)
            tb_free_with(&ctx->allocator, h.p);
        return h.status;
    }
    char target[PATH_CAP], tmp[PATH_CAP];
    FILE *f = NULL;
    int lock_fd = -1;
    tb_status s = resolve_target(ctx, path, target);
    if (s == TB_OK) {
        /* Before writing, so their space is free for this save. Through a
         * link, also those next to the link itself (left there by saves of
         * earlier versions, which did not write through). */
        remove_stale_temps(target);
        if (strcmp(target, path) != 0)
            remove_stale_temps(path);
        s = create_temp(ctx, target, tmp, &f, &lock_fd);
    }
    if (s != TB_OK) {
        tb_free_with(&ctx->allocator, h.p);
        return s;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    int ok = write_all(f, len8, 8) && write_all(f, h.p, h.len);
    for (size_t i = 0; ok && i < n; i++) {
        size_t numel = 1;
        for (size_t d = 0; d < entries[i].ndim; d++)
            numel *= entries[i].shape[d];
        ok = write_floats(f, entries[i].data, numel);
    }
    tb_free_with(&ctx->allocator, h.p);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0) {
        if (ok)
            err = errno;
        ok = 0;
    }
    if (!ok) {
        remove(tmp);
        close(lock_fd);
        return tb_fail(ctx, TB_ERR_IO, fn, "cannot write '%s': %s (any previous '%s' is intact)",
                       tmp, strerror(err), target);
    }
    /* Renamed while still locked: a cleanup never sees it unlocked. */
    if (rename(tmp, target) != 0) {
        err = errno;
        remove(tmp);
        close(lock_fd);
        return tb_fail(ctx, TB_ERR_IO, fn, "cannot rename '%s' to '%s': %s", tmp, target,
                       strerror(err));
    }
    close(lock_fd);
    sync_dir(target);
    return TB_OK;
}

tb_status tb_st_save_params(tb_ctx *ctx, const char *path, const tb_param_list *list,
                            const tb_st_meta *meta, size_t n_meta)
{
    const char *fn = __func__;
    if (!ctx || !list)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx and list must not be NULL");
    tb_status s = tb_check_param_list(ctx, fn, list);
    if (s != TB_OK)
        return s;
    size_t bytes;
    if (!tb_mul_size(list->count ? list->count : 1, sizeof(tb_st_entry), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "too many parameters");
    void *mem;
    s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    tb_st_entry *e = mem;
    for (size_t i = 0; i < list->count; i++) {
        e[i].name = list->items[i].name;
        e[i].data = list->items[i].param->value;
        e[i].ndim = list->items[i].param->ndim;
        e[i].shape = list->items[i].param->shape;
    }
    s = tb_st_save(ctx, path, e, list->count, meta, n_meta);
    tb_free_with(&ctx->allocator, mem);
    return s;
}
