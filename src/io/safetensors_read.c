/*
 * safetensors reader (safetensors.h): tb_st_parse, tb_st_open, tb_st_close,
 * tb_st_find, tb_st_meta_get, tb_st_read_f32, tb_st_load_params.
 *
 * The header is read with the JSON reader of json.h, working on [p, end)
 * of the caller's buffer: every read is bounds-checked against `end`,
 * every size computation overflow-checked, and the tensors must cover the
 * data section exactly.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/internal.h"
#include "json.h"
#include "safetensors_fd.h"

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
    tb_json js; /* the JSON header and the pool of its unescaped strings */
    tb_st_tensor *tensors;
    size_t count, cap;
    tb_st_meta *meta;
    size_t n_meta, meta_cap;
    size_t data_size;
    const unsigned char *data;
} parser;

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
    tb_json *js = &ps->js;
    tb_json_skip_ws(js);
    if ((size_t)(js->end - js->p) >= 4 && memcmp(js->p, "null", 4) == 0) {
        js->p += 4;
        return TB_OK;
    }
    if (!tb_json_accept(js, '{'))
        return tb_json_fail_at(js, js->p, "__metadata__ must be an object of strings");
    if (tb_json_accept(js, '}'))
        return TB_OK;
    for (;;) {
        const char *key, *value;
        tb_status s;
        if ((s = tb_json_string(js, &key)) != TB_OK)
            return s;
        if (!tb_json_accept(js, ':'))
            return tb_json_fail_at(js, js->p, "expected ':'");
        tb_json_skip_ws(js);
        if (js->p >= js->end || *js->p != '"')
            return tb_fail(ps->ctx, TB_ERR_FORMAT, "tb_st_parse",
                           "metadata value of '%s' is not a string", key);
        if ((s = tb_json_string(js, &value)) != TB_OK)
            return s;
        if ((s = grow(ps, (void **)&ps->meta, &ps->meta_cap, ps->n_meta + 1,
                      sizeof(tb_st_meta))) != TB_OK)
            return s;
        ps->meta[ps->n_meta].key = key;
        ps->meta[ps->n_meta].value = value;
        ps->n_meta++;
        if (tb_json_accept(js, ','))
            continue;
        if (tb_json_accept(js, '}'))
            return TB_OK;
        return tb_json_fail_at(js, js->p, "expected ',' or '}' in __metadata__");
    }
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]} for tensor `name`. */
static tb_status parse_tensor(parser *ps, const char *name, tb_st_tensor *t, size_t off[2])
{
    tb_json *js = &ps->js;
    tb_ctx *ctx = ps->ctx;
    const char *fn = "tb_st_parse";
    if (!tb_json_accept(js, '{'))
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "entry '%s' is not an object", name);
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    memset(t, 0, sizeof *t);
    t->name = name;
    if (!tb_json_accept(js, '}'))
        for (;;) {
            const char *key;
            const size_t used = js->pool_used;
            tb_status s = tb_json_string(js, &key);
            if (s != TB_OK)
                return s;
            if (!tb_json_accept(js, ':'))
                return tb_json_fail_at(js, js->p, "expected ':'");
            if (strcmp(key, "dtype") == 0) {
                const char *d;
                if (have_dtype++)
                    return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': duplicate dtype", name);
                if ((s = tb_json_string(js, &d)) != TB_OK)
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
                if (!tb_json_accept(js, '['))
                    return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': shape is not an array", name);
                if (!tb_json_accept(js, ']'))
                    for (;;) {
                        size_t v;
                        if (t->ndim == TB_ST_MAX_DIMS)
                            return tb_fail(ctx, TB_ERR_FORMAT, fn,
                                           "'%s': more than %d dimensions", name,
                                           TB_ST_MAX_DIMS);
                        if ((s = tb_json_size(js, &v)) != TB_OK)
                            return s;
                        t->shape[t->ndim++] = v;
                        if (tb_json_accept(js, ','))
                            continue;
                        if (tb_json_accept(js, ']'))
                            break;
                        return tb_json_fail_at(js, js->p, "expected ',' or ']' in a shape");
                    }
            } else if (strcmp(key, "data_offsets") == 0) {
                if (have_offsets++)
                    return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s': duplicate data_offsets", name);
                if (!tb_json_accept(js, '[') || (s = tb_json_size(js, &off[0])) != TB_OK ||
                    !tb_json_accept(js, ',') || (s = tb_json_size(js, &off[1])) != TB_OK ||
                    !tb_json_accept(js, ']'))
                    return tb_fail(ctx, TB_ERR_FORMAT, fn,
                                   "'%s': data_offsets must be [begin, end]", name);
            } else if ((s = tb_json_skip_value(js, 2)) != TB_OK) {
                return s;
            }
            js->pool_used = used; /* the key and dtype strings are not kept */
            if (tb_json_accept(js, ','))
                continue;
            if (tb_json_accept(js, '}'))
                break;
            return tb_json_fail_at(js, js->p, "expected ',' or '}' in a tensor entry");
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
    tb_json *js = &ps->js;
    tb_status s;
    if (!tb_json_accept(js, '{'))
        return tb_json_fail_at(js, js->p, "the header is not a JSON object");
    int have_meta = 0;
    if (!tb_json_accept(js, '}'))
        for (;;) {
            const char *key;
            if ((s = tb_json_string(js, &key)) != TB_OK)
                return s;
            if (!tb_json_accept(js, ':'))
                return tb_json_fail_at(js, js->p, "expected ':'");
            if (strcmp(key, "__metadata__") == 0) {
                if (have_meta++)
                    return tb_json_fail_at(js, js->p, "duplicate __metadata__");
                if ((s = parse_metadata(ps)) != TB_OK)
                    return s;
            } else {
                if (!key[0]) /* the writer's rule: a tensor needs a name */
                    return tb_json_fail_at(js, js->p, "a tensor with an empty name");
                if ((s = grow(ps, (void **)&ps->tensors, &ps->cap, ps->count + 1,
                              sizeof(tb_st_tensor))) != TB_OK)
                    return s;
                size_t off[2] = {0, 0};
                if ((s = parse_tensor(ps, key, &ps->tensors[ps->count], off)) != TB_OK)
                    return s;
                ps->count++;
            }
            if (tb_json_accept(js, ','))
                continue;
            if (tb_json_accept(js, '}'))
                break;
            return tb_json_fail_at(js, js->p, "expected ',' or '}' in the header");
        }
    tb_json_skip_ws(js);
    if (js->p != js->end)
        return tb_json_fail_at(js, js->p, "bytes after the header's JSON object");
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
    if (n > TB_ST_MAX_HEADER)
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "header length %llu is above the %u-byte limit",
                       (unsigned long long)n, TB_ST_MAX_HEADER);
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
    ps.js.ctx = ctx;
    ps.js.fn = "tb_st_parse";
    ps.js.start = ps.js.p = header;
    ps.js.end = header + n;
    ps.data = data;
    ps.data_size = data_size;
    void *pool;
    tb_status s = tb_alloc(ctx, "tb_st_parse", n + 1, &pool);
    if (s != TB_OK)
        return s;
    ps.js.pool = pool;
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
