/*
 * Training checkpoints (checkpoint.h) on top of the safetensors writer:
 * the layout (parameters, optimizer moments, metadata), the checksums
 * (CRC-32C, src/core/crc32c.h) and the refusal of non-finite values.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/crc32c.h"
#include "../core/internal.h"
#include "checkpoint_internal.h"

#define OPT_PREFIX "optimizer."
#define NAME_CAP (TB_PARAM_NAME_MAX + 32)

/* The checksum entries (checkpoint.h, "Integrity"). */
#define CK_PREFIX "tblocks.checksum."
#define CK_ALGO CK_PREFIX "algo"
#define CK_VERSION CK_PREFIX "version"
#define CK_TENSORS CK_PREFIX "tensors"
#define CK_HEADER CK_PREFIX "header"
#define CK_ALGO_NAME "crc32c"
#define CK_VERSION_NAME "1"
#define CK_HEX 8 /* hexadecimal digits of one checksum */

static const char *const load_fn = "tb_checkpoint_load";
static const char *const save_fn = "tb_checkpoint_save";

static const char *kind_name(const tb_adam *opt)
{
    if (opt->cfg.decoupled)
        return opt->cfg.amsgrad ? "adamw-amsgrad" : "adamw";
    return opt->cfg.amsgrad ? "adam-amsgrad" : "adam";
}

/* Moment buffers of a slot: 0 m, 1 v, 2 vmax. */
static const char *const moment_names[3] = {"m", "v", "vmax"};

static float *moment(const tb_adam *opt, int which)
{
    return which == 0 ? opt->m : which == 1 ? opt->v : opt->vmax;
}

/* ---- checksums ------------------------------------------------------------- */

/* A tensor as the checksums see it: its name and shape, and its bytes
 * (the floats about to be written when saving, the file's bytes when
 * loading). */
typedef struct ck_tensor {
    const char *name;
    size_t ndim;
    const size_t *shape;
    const float *values;        /* saving: numel host floats, stored little-endian */
    const unsigned char *bytes; /* loading: nbytes bytes of the data section */
    size_t numel, nbytes;
    uint32_t crc;  /* computed */
    uint32_t want; /* loading: the file's value */
} ck_tensor;

static int ck_cmp_name(const void *a, const void *b)
{
    return strcmp(((const ck_tensor *)a)->name, ((const ck_tensor *)b)->name);
}

static int cmp_meta_key(const void *a, const void *b)
{
    return strcmp((*(const tb_st_meta *const *)a)->key, (*(const tb_st_meta *const *)b)->key);
}

static int host_is_little_endian(void)
{
    const uint32_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* CRC of n floats as the file stores them (little-endian F32). */
static uint32_t crc_f32_le(const float *x, size_t n)
{
    if (host_is_little_endian())
        return tb_crc32c(0, x, n * sizeof(float));
    unsigned char buf[4096];
    uint32_t crc = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        for (int b = 0; b < 4; b++)
            buf[at++] = (unsigned char)(u >> (8 * b));
        if (at == sizeof buf) {
            crc = tb_crc32c(crc, buf, at);
            at = 0;
        }
    }
    return tb_crc32c(crc, buf, at);
}

/* Every tensor's CRC, a tensor per thread at a time (each CRC is computed
 * by one thread, so nothing depends on the thread count). */
static void ck_crc_all(const tb_ctx *ctx, ck_tensor *t, size_t n)
{
    double bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += (double)t[i].nbytes;
#pragma omp parallel for num_threads(tb_threads_for(ctx, bytes / 16)) schedule(dynamic, 1)
    for (size_t i = 0; i < n; i++)
        t[i].crc = t[i].values ? crc_f32_le(t[i].values, t[i].numel)
                               : tb_crc32c(0, t[i].bytes, t[i].nbytes);
}

/* crc of the string and its terminating NUL (the canonical form's separator). */
static uint32_t crc_cstr(uint32_t crc, const char *s)
{
    return tb_crc32c(crc, s, strlen(s) + 1);
}

/* The header checksum of checkpoint.h: every metadata pair but CK_HEADER
 * in key order ("key\0value\0"), then every tensor of t (sorted by name)
 * as "name\0" and its sizes in decimal joined by ',' and a NUL. */
static tb_status ck_header_crc(tb_ctx *ctx, const char *fn, const tb_st_meta *meta, size_t n_meta,
                               const ck_tensor *t, size_t n, uint32_t *out)
{
    size_t bytes;
    if (!tb_mul_size(n_meta ? n_meta : 1, sizeof(const tb_st_meta *), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "too many metadata entries");
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    const tb_st_meta **order = mem;
    size_t k = 0;
    for (size_t i = 0; i < n_meta; i++)
        if (strcmp(meta[i].key, CK_HEADER) != 0)
            order[k++] = &meta[i];
    qsort(order, k, sizeof *order, cmp_meta_key);
    uint32_t crc = 0;
    for (size_t i = 0; i < k; i++)
        crc = crc_cstr(crc_cstr(crc, order[i]->key), order[i]->value);
    tb_free_with(&ctx->allocator, mem);
    for (size_t i = 0; i < n; i++) {
        char dims[TB_ST_MAX_DIMS * 21 + 1] = "";
        size_t at = 0;
        for (size_t d = 0; d < t[i].ndim && d < TB_ST_MAX_DIMS; d++)
            at += (size_t)snprintf(dims + at, sizeof dims - at, d ? ",%zu" : "%zu", t[i].shape[d]);
        crc = crc_cstr(crc_cstr(crc, t[i].name), dims);
    }
    *out = crc;
    return TB_OK;
}

static void put_hex(char *out, uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < CK_HEX; i++)
        out[i] = digits[(v >> (4 * (CK_HEX - 1 - i))) & 0xF];
}

/* Exactly CK_HEX lowercase hexadecimal digits at s (no terminator needed). */
static int get_hex(const char *s, uint32_t *v)
{
    uint32_t x = 0;
    for (int i = 0; i < CK_HEX; i++) {
        const char c = s[i];
        if (c >= '0' && c <= '9')
            x = x << 4 | (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            x = x << 4 | (uint32_t)(c - 'a' + 10);
        else
            return 0;
    }
    *v = x;
    return 1;
}

/* The entries as checksum records; checked far enough to be read safely
 * (tb_st_save() checks the rest). */
static tb_status ck_from_entries(tb_ctx *ctx, const tb_st_entry *e, size_t n, ck_tensor *t)
{
    for (size_t i = 0; i < n; i++) {
        if (!e[i].name || e[i].ndim > TB_ST_MAX_DIMS || (e[i].ndim && !e[i].shape))
            return tb_fail(ctx, TB_ERR_INVALID_ARG, save_fn,
                           "entry %zu has no name, more than %d dimensions or no shape", i,
                           TB_ST_MAX_DIMS);
        size_t numel = 1, nbytes;
        for (size_t d = 0; d < e[i].ndim; d++)
            if (!tb_mul_size(numel, e[i].shape[d], &numel))
                return tb_fail(ctx, TB_ERR_OVERFLOW, save_fn, "'%s': size overflows", e[i].name);
        if (!tb_mul_size(numel, sizeof(float), &nbytes))
            return tb_fail(ctx, TB_ERR_OVERFLOW, save_fn, "'%s': size overflows", e[i].name);
        if (numel && !e[i].data)
            return tb_fail(ctx, TB_ERR_NULL_ARG, save_fn, "'%s': data is NULL", e[i].name);
        t[i] = (ck_tensor){e[i].name, e[i].ndim, e[i].shape, e[i].data, NULL, numel, nbytes, 0, 0};
    }
    return TB_OK;
}

tb_status tb_ckpt_write_sealed(tb_ctx *ctx, const char *path, const tb_st_entry *entries,
                               size_t n, const tb_st_meta *meta, size_t n_meta)
{
    const char *fn = save_fn;
    if (!ctx || !path || (!entries && n) || (!meta && n_meta))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, path, entries and meta must not be NULL");
    for (size_t i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value)
            return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "metadata entry %zu has a NULL key or value",
                           i);
        if (strncmp(meta[i].key, CK_PREFIX, strlen(CK_PREFIX)) == 0)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "metadata key '%s' is reserved for the checksums", meta[i].key);
    }
    /* One block: n records, the tensor list ("xxxxxxxx " per tensor), the
     * metadata with the four checksum entries added. */
    size_t rec, list, metab, total;
    if (!tb_mul_size(n, sizeof(ck_tensor), &rec) || !tb_mul_size(n, CK_HEX + 1, &list) ||
        !tb_add_size(n_meta, 4, &metab) || !tb_mul_size(metab, sizeof(tb_st_meta), &metab) ||
        !tb_add_size(rec, metab, &total) || !tb_add_size(total, list + 1, &total))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "checkpoint index overflows");
    void *mem;
    tb_status s = tb_alloc(ctx, fn, total, &mem);
    if (s != TB_OK)
        return s;
    tb_st_meta *all = mem;
    ck_tensor *t = (ck_tensor *)((char *)mem + metab);
    char *tensors = (char *)mem + metab + rec;
    if ((s = ck_from_entries(ctx, entries, n, t)) != TB_OK)
        goto done;
    qsort(t, n, sizeof *t, ck_cmp_name);
    ck_crc_all(ctx, t, n);
    for (size_t i = 0; i < n; i++) {
        put_hex(tensors + i * (CK_HEX + 1), t[i].crc);
        tensors[i * (CK_HEX + 1) + CK_HEX] = ' ';
    }
    tensors[n ? list - 1 : 0] = '\0';
    if (n_meta)
        memcpy(all, meta, n_meta * sizeof *all);
    size_t k = n_meta;
    all[k++] = (tb_st_meta){CK_ALGO, CK_ALGO_NAME};
    all[k++] = (tb_st_meta){CK_VERSION, CK_VERSION_NAME};
    all[k++] = (tb_st_meta){CK_TENSORS, tensors};
    uint32_t header;
    if ((s = ck_header_crc(ctx, fn, all, k, t, n, &header)) != TB_OK)
        goto done;
    char header_hex[CK_HEX + 1] = "";
    put_hex(header_hex, header);
    all[k++] = (tb_st_meta){CK_HEADER, header_hex};
    s = tb_st_save(ctx, path, entries, n, all, k);
done:
    tb_free_with(&ctx->allocator, mem);
    return s;
}

/* The file's checksums, verified (checkpoint.h): TB_OK for a file without
 * any, TB_ERR_FORMAT naming what does not match, TB_ERR_UNSUPPORTED for an
 * algorithm or version this build does not know. */
static tb_status ck_verify(tb_ctx *ctx, const char *path, const tb_st_file *f)
{
    const char *fn = load_fn;
    static const char *const keys[4] = {CK_ALGO, CK_VERSION, CK_TENSORS, CK_HEADER};
    const char *v[4];
    int present = 0;
    for (int i = 0; i < 4; i++)
        present += (v[i] = tb_st_meta_get(f, keys[i])) != NULL;
    if (present == 0)
        return TB_OK; /* another tool's file, or one of libtblocks 0.1.0 */
    for (int i = 0; i < 4; i++)
        if (!v[i])
            return tb_fail(ctx, TB_ERR_FORMAT, fn,
                           "'%s' has checksum entries but not '%s' (tb_checkpoint_save writes "
                           "all four): the file was damaged or edited",
                           path, keys[i]);
    if (strcmp(v[0], CK_ALGO_NAME) != 0 || strcmp(v[1], CK_VERSION_NAME) != 0)
        return tb_fail(ctx, TB_ERR_UNSUPPORTED, fn,
                       "'%s' has checksums '%.32s' version '%.32s'; this build knows " CK_ALGO_NAME
                       " version " CK_VERSION_NAME " only (a newer libtblocks wrote it, or it "
                       "is damaged)",
                       path, v[0], v[1]);
    uint32_t want_header;
    if (strlen(v[3]) != CK_HEX || !get_hex(v[3], &want_header))
        return tb_fail(ctx, TB_ERR_FORMAT, fn,
                       "'%s': " CK_HEADER " = '%.40s' is not %d lowercase hexadecimal digits",
                       path, v[3], CK_HEX);
    size_t bytes;
    if (!tb_mul_size(f->count ? f->count : 1, sizeof(ck_tensor), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "too many tensors");
    void *mem;
    tb_status s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    ck_tensor *t = mem;
    for (size_t i = 0; i < f->count; i++) {
        const tb_st_tensor *x = &f->tensors[i];
        t[i] = (ck_tensor){x->name, x->ndim, x->shape, NULL, x->data, x->numel, x->nbytes, 0, 0};
    }
    qsort(t, f->count, sizeof *t, ck_cmp_name);
    uint32_t header;
    if ((s = ck_header_crc(ctx, fn, f->meta, f->n_meta, t, f->count, &header)) != TB_OK)
        goto done;
    if (header != want_header) {
        s = tb_fail(ctx, TB_ERR_FORMAT, fn,
                    "'%s': the metadata or the tensor index (names, shapes) does not match its "
                    "checksum (crc32c %08" PRIx32 " in the file, %08" PRIx32 " computed): the "
                    "file is damaged or was edited",
                    path, want_header, header);
        goto done;
    }
    const char *list = v[2];
    const size_t want_len = f->count ? f->count * (CK_HEX + 1) - 1 : 0;
    int list_ok = strlen(list) == want_len;
    for (size_t i = 0; list_ok && i < f->count; i++) {
        const char *at = list + i * (CK_HEX + 1);
        list_ok = get_hex(at, &t[i].want) && (i + 1 == f->count || at[CK_HEX] == ' ');
    }
    if (!list_ok) {
        s = tb_fail(ctx, TB_ERR_FORMAT, fn,
                    "'%s': " CK_TENSORS " is not %zu checksums of %d lowercase hexadecimal "
                    "digits separated by spaces",
                    path, f->count, CK_HEX);
        goto done;
    }
    ck_crc_all(ctx, t, f->count);
    for (size_t i = 0; i < f->count; i++)
        if (t[i].crc != t[i].want) {
            s = tb_fail(ctx, TB_ERR_FORMAT, fn,
                        "'%s': tensor '%s' does not match its checksum (crc32c %08" PRIx32
                        " in the file, %08" PRIx32 " computed): the file is damaged",
                        path, t[i].name, t[i].want, t[i].crc);
            break;
        }
done:
    tb_free_with(&ctx->allocator, mem);
    return s;
}

/* ---- non-finite values ---------------------------------------------------------- */

enum { SCAN_BLOCK = 1024 };

/* Start of the first block of SCAN_BLOCK native float32 bit patterns at
 * words (any alignment) holding one with all exponent bits set (a NaN or an
 * infinity), or n: a branch-free pass the compiler vectorises, so finite
 * data costs a read. */
static size_t first_suspect_block(const void *words, size_t n)
{
    const unsigned char *p = words;
    for (size_t b = 0; b < n; b += SCAN_BLOCK) {
        const size_t e = n - b < SCAN_BLOCK ? n : b + SCAN_BLOCK;
        uint32_t hit = 0;
        for (size_t i = b; i < e; i++) {
            uint32_t u;
            memcpy(&u, p + 4 * i, sizeof u);
            hit |= (u & 0x7F800000u) + 0x00800000u; /* carries into bit 31 iff all set */
        }
        if (hit & 0x80000000u)
            return b;
    }
    return n;
}

/* Index of the first NaN or infinity of x[0..n), or n. */
static size_t first_nonfinite_f32(const float *x, size_t n)
{
    for (size_t i = first_suspect_block(x, n); i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return n;
}

/* Index of the first element of a float tensor of the file that
 * tb_st_read_f32() would turn into a NaN or an infinity, or numel; *what
 * names it. Non-float dtypes have none (tb_st_load_params refuses them). */
static size_t first_nonfinite_in_file(const tb_st_tensor *t, const char **what)
{
    const unsigned char *p = t->data;
    /* On a little-endian host the file's F32 bytes are native floats. */
    const size_t from = t->dtype == TB_ST_F32 && host_is_little_endian()
                            ? first_suspect_block(t->data, t->numel)
                            : 0;
    for (size_t i = from; i < t->numel; i++) {
        int bad = 0, nan = 0, neg = 0;
        switch (t->dtype) {
        case TB_ST_F32: {
            const uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                               (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            bad = (u & 0x7F800000u) == 0x7F800000u;
            nan = (u & 0x007FFFFFu) != 0;
            neg = (int)(u >> 31);
            break;
        }
        case TB_ST_BF16: {
            const unsigned h = (unsigned)p[2 * i] | (unsigned)p[2 * i + 1] << 8;
            bad = (h & 0x7F80u) == 0x7F80u;
            nan = (h & 0x007Fu) != 0;
            neg = (int)(h >> 15);
            break;
        }
        case TB_ST_F16: {
            const unsigned h = (unsigned)p[2 * i] | (unsigned)p[2 * i + 1] << 8;
            bad = (h & 0x7C00u) == 0x7C00u;
            nan = (h & 0x03FFu) != 0;
            neg = (int)(h >> 15);
            break;
        }
        case TB_ST_F64: {
            uint64_t u = 0;
            for (int k = 7; k >= 0; k--)
                u = (u << 8) | p[8 * i + (size_t)k];
            double d;
            memcpy(&d, &u, sizeof d);
            /* (float)d is infinite from halfway between FLT_MAX and 2^128 up */
            bad = !(fabs(d) < 0x1.ffffffp+127);
            nan = isnan(d);
            neg = (int)(u >> 63);
            break;
        }
        default:
            return t->numel;
        }
        if (bad) {
            *what = nan ? "NaN" : neg ? "-inf" : "+inf";
            return i;
        }
    }
    return t->numel;
}

/* TB_ERR_NON_FINITE for the first of the file's tensors t[0..n) holding a
 * NaN or an infinity (tensors checked in parallel, reported in order). */
static tb_status refuse_nonfinite_in_file(tb_ctx *ctx, const char *path,
                                          const tb_st_tensor *const *t, size_t n)
{
    size_t bytes;
    if (!tb_mul_size(n ? n : 1, sizeof(size_t) + sizeof(const char *), &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, load_fn, "too many tensors");
    void *mem;
    tb_status s = tb_alloc(ctx, load_fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    size_t *bad = mem;
    const char **what = (const char **)(bad + (n ? n : 1));
    double work = 0;
    for (size_t i = 0; i < n; i++)
        work += (double)t[i]->numel;
#pragma omp parallel for num_threads(tb_threads_for(ctx, work)) schedule(dynamic, 1)
    for (size_t i = 0; i < n; i++)
        bad[i] = first_nonfinite_in_file(t[i], &what[i]);
    for (size_t i = 0; i < n && s == TB_OK; i++)
        if (bad[i] < t[i]->numel)
            s = tb_fail(ctx, TB_ERR_NON_FINITE, load_fn,
                        "'%s': tensor '%s' holds %s at element %zu (TB_CKPT_ALLOW_NONFINITE "
                        "loads it anyway)",
                        path, t[i]->name, what[i], bad[i]);
    tb_free_with(&ctx->allocator, mem);
    return s;
}

static const char *nonfinite_name(float x)
{
    return isnan(x) ? "NaN" : x < 0 ? "-inf" : "+inf";
}

/* TB_ERR_NON_FINITE for the first entry holding a NaN or an infinity. */
static tb_status refuse_nonfinite_entries(tb_ctx *ctx, const tb_st_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t numel = 1;
        for (size_t d = 0; d < e[i].ndim; d++)
            numel *= e[i].shape[d];
        const size_t at = first_nonfinite_f32(e[i].data, numel);
        if (at < numel)
            return tb_fail(ctx, TB_ERR_NON_FINITE, save_fn,
                           "'%s' holds %s at element %zu; nothing was written "
                           "(TB_CKPT_ALLOW_NONFINITE saves it anyway)",
                           e[i].name, nonfinite_name(e[i].data[at]), at);
    }
    return TB_OK;
}

/* ---- saving -------------------------------------------------------------------- */

tb_status tb_checkpoint_save(tb_ctx *ctx, const char *path, const tb_param_list *params,
                             const tb_adam *opt, const tb_rng *rng, const tb_st_meta *extra,
                             size_t n_extra, unsigned flags)
{
    const char *fn = __func__;
    if (!ctx || !path || !params || (!extra && n_extra))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, path, params and extra must not be NULL");
    if (flags & ~(unsigned)TB_CKPT_ALLOW_NONFINITE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown flags 0x%x", flags);
    tb_status s = tb_check_param_list(ctx, fn, params);
    if (s != TB_OK)
        return s;
    for (size_t i = 0; opt && i < opt->n_slots; i++)
        if (!opt->slots[i].param || !opt->slots[i].param->value)
            return tb_fail(ctx, TB_ERR_STATE, fn,
                           "the optimizer's parameter '%s' has no values: its block was freed",
                           opt->slots[i].name);
    for (size_t i = 0; i < params->count; i++)
        if (strncmp(params->items[i].name, OPT_PREFIX, strlen(OPT_PREFIX)) == 0)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "parameter '%s': names starting with '" OPT_PREFIX
                           "' are reserved for the optimizer's state",
                           params->items[i].name);
    for (size_t i = 0; i < n_extra; i++)
        if (!extra[i].key || !extra[i].value || strncmp(extra[i].key, "tblocks.", 8) == 0 ||
            strcmp(extra[i].key, "format") == 0)
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "metadata key %zu is NULL or reserved ('format', 'tblocks.*')", i);
    const int moments = opt ? (opt->vmax ? 3 : 2) : 0;
    const size_t n_opt = opt ? opt->n_slots * (size_t)moments : 0;
    size_t n_entries, bytes, name_bytes;
    if (!tb_add_size(params->count, n_opt, &n_entries) ||
        !tb_mul_size(n_entries ? n_entries : 1, sizeof(tb_st_entry), &bytes) ||
        !tb_mul_size(n_opt ? n_opt : 1, NAME_CAP, &name_bytes) ||
        !tb_add_size(bytes, name_bytes, &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "checkpoint index overflows");
    void *mem;
    s = tb_alloc(ctx, fn, bytes, &mem);
    if (s != TB_OK)
        return s;
    tb_st_entry *e = mem;
    char *names = (char *)(e + (n_entries ? n_entries : 1));
    size_t k = 0;
    for (size_t i = 0; i < params->count; i++, k++) {
        const tb_param *p = params->items[i].param;
        e[k].name = params->items[i].name;
        e[k].data = p->value;
        e[k].ndim = p->ndim;
        e[k].shape = p->shape;
    }
    for (int w = 0; w < moments; w++)
        for (size_t i = 0; i < opt->n_slots; i++, k++) {
            const tb_adam_slot *sl = &opt->slots[i];
            char *nm = names + (k - params->count) * NAME_CAP;
            snprintf(nm, NAME_CAP, OPT_PREFIX "%s.%s", moment_names[w], sl->name);
            e[k].name = nm;
            e[k].data = moment(opt, w) + sl->offset;
            e[k].ndim = sl->param->ndim;
            e[k].shape = sl->param->shape;
        }
    /* A run that blew up must not replace the last good checkpoint. */
    if (!(flags & TB_CKPT_ALLOW_NONFINITE) && (s = refuse_nonfinite_entries(ctx, e, k)) != TB_OK) {
        tb_free_with(&ctx->allocator, mem);
        return s;
    }
    /* Metadata: ours, then the caller's; the checksums are added last. */
    char step[32], skipped[32], key[32], counter[32];
    tb_st_meta meta_fixed[6];
    size_t nm = 0;
    meta_fixed[nm++] = (tb_st_meta){"format", "pt"};
    if (opt) {
        snprintf(step, sizeof step, "%" PRIu64, opt->step);
        snprintf(skipped, sizeof skipped, "%" PRIu64, opt->skipped);
        meta_fixed[nm++] = (tb_st_meta){"tblocks.optim.kind", kind_name(opt)};
        meta_fixed[nm++] = (tb_st_meta){"tblocks.optim.step", step};
        meta_fixed[nm++] = (tb_st_meta){"tblocks.optim.skipped", skipped};
    }
    if (rng) {
        snprintf(key, sizeof key, "%" PRIu64, rng->key);
        snprintf(counter, sizeof counter, "%" PRIu64, rng->counter);
        meta_fixed[nm++] = (tb_st_meta){"tblocks.rng.key", key};
        meta_fixed[nm++] = (tb_st_meta){"tblocks.rng.counter", counter};
    }
    void *mmem = NULL;
    if ((s = tb_alloc(ctx, fn, (nm + n_extra) * sizeof(tb_st_meta), &mmem)) == TB_OK) {
        tb_st_meta *meta = mmem;
        memcpy(meta, meta_fixed, nm * sizeof(tb_st_meta));
        if (n_extra)
            memcpy(meta + nm, extra, n_extra * sizeof(tb_st_meta));
        s = tb_ckpt_write_sealed(ctx, path, e, n_entries, meta, nm + n_extra);
        tb_free_with(&ctx->allocator, mmem);
    }
    tb_free_with(&ctx->allocator, mem);
    return s;
}

/* ---- loading ------------------------------------------------------------------- */

/* A decimal uint64 metadata value. */
static tb_status meta_u64(tb_ctx *ctx, const tb_st_file *f, const char *key, uint64_t *out)
{
    const char *v = tb_st_meta_get(f, key);
    if (!v || !v[0])
        return tb_fail(ctx, TB_ERR_FORMAT, load_fn, "metadata '%s' is missing", key);
    uint64_t x = 0;
    for (const char *c = v; *c; c++) {
        if (*c < '0' || *c > '9' || x > (UINT64_MAX - (uint64_t)(*c - '0')) / 10)
            return tb_fail(ctx, TB_ERR_FORMAT, load_fn,
                           "metadata '%s' = '%.40s' is not a 64-bit decimal", key, v);
        x = x * 10 + (uint64_t)(*c - '0');
    }
    *out = x;
    return TB_OK;
}

/* The optimizer's part of the file, checked against opt: its metadata into
 * *step and *skipped, its moment tensors into found (moment-major, slot
 * order). */
static tb_status find_optimizer_state(tb_ctx *ctx, const char *path, const tb_st_file *f,
                                      const tb_adam *opt, uint64_t *step, uint64_t *skipped,
                                      const tb_st_tensor **found)
{
    const char *fn = load_fn;
    const int moments = opt->vmax ? 3 : 2;
    const char *kind = tb_st_meta_get(f, "tblocks.optim.kind");
    if (!kind)
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "'%s' has no optimizer state", path);
    if (strcmp(kind, kind_name(opt)) != 0)
        return tb_fail(ctx, TB_ERR_STATE, fn, "'%s' holds %.20s state; this optimizer is %s",
                       path, kind, kind_name(opt));
    tb_status s;
    if ((s = meta_u64(ctx, f, "tblocks.optim.step", step)) != TB_OK ||
        (s = meta_u64(ctx, f, "tblocks.optim.skipped", skipped)) != TB_OK)
        return s;
    size_t n_opt_file = 0;
    for (size_t i = 0; i < f->count; i++)
        n_opt_file += strncmp(f->tensors[i].name, OPT_PREFIX, strlen(OPT_PREFIX)) == 0;
    if (n_opt_file != opt->n_slots * (size_t)moments)
        return tb_fail(ctx, TB_ERR_STATE, fn,
                       "'%s' holds optimizer state for %zu tensors; this optimizer has %zu "
                       "trainable parameters x %d moments",
                       path, n_opt_file, opt->n_slots, moments);
    for (int w = 0; w < moments; w++)
        for (size_t i = 0; i < opt->n_slots; i++) {
            char nm[NAME_CAP];
            const tb_adam_slot *sl = &opt->slots[i];
            snprintf(nm, sizeof nm, OPT_PREFIX "%s.%s", moment_names[w], sl->name);
            const tb_st_tensor *t = tb_st_find(f, nm);
            if (!t || t->dtype != TB_ST_F32 || t->numel != sl->param->numel)
                return tb_fail(ctx, TB_ERR_STATE, fn,
                               "'%s': optimizer tensor '%s' is missing or does not match the "
                               "parameter",
                               path, nm);
            found[(size_t)w * opt->n_slots + i] = t;
        }
    return TB_OK;
}

tb_status tb_checkpoint_load(tb_ctx *ctx, const char *path, tb_param_list *params, tb_adam *opt,
                             tb_rng *rng, unsigned flags)
{
    const char *fn = __func__;
    if (!ctx || !path || !params)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, path and params must not be NULL");
    if (flags & ~(unsigned)TB_CKPT_ALLOW_NONFINITE)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "unknown flags 0x%x", flags);
    if (opt && !opt->slots)
        return tb_fail(ctx, TB_ERR_STATE, fn, "the optimizer is not initialised");
    tb_status s = tb_check_param_list(ctx, fn, params);
    if (s != TB_OK)
        return s;
    tb_st_file f;
    if ((s = tb_st_open(ctx, path, &f)) != TB_OK)
        return s;
    uint64_t step = 0, skipped = 0, key = 0, counter = 0;
    const int moments = opt ? (opt->vmax ? 3 : 2) : 0;
    const size_t n_moments = opt ? opt->n_slots * (size_t)moments : 0;
    /* The file's tensors to be read: the parameters found, then the moments. */
    const tb_st_tensor **loaded = NULL, **found = NULL;
    size_t n_params = 0, bytes;
    void *mem = NULL;
    /* 1. The checksums: a damaged file is reported as such before anything
     *    it says (kind, shapes, values) is believed. */
    if ((s = ck_verify(ctx, path, &f)) != TB_OK)
        goto done;
    if (!tb_add_size(n_moments, params->count, &bytes) ||
        !tb_mul_size(bytes ? bytes : 1, sizeof(*loaded), &bytes)) {
        s = tb_fail(ctx, TB_ERR_OVERFLOW, fn, "too many tensors");
        goto done;
    }
    if ((s = tb_alloc(ctx, fn, bytes, &mem)) != TB_OK)
        goto done;
    loaded = mem;
    for (size_t i = 0; i < params->count; i++) {
        const tb_st_tensor *t = tb_st_find(&f, params->items[i].name);
        if (t)
            loaded[n_params++] = t;
    }
    found = loaded + n_params;
    /* 2. The optimizer's part and the stream (nothing written yet). */
    if (opt && (s = find_optimizer_state(ctx, path, &f, opt, &step, &skipped, found)) != TB_OK)
        goto done;
    if (rng && ((s = meta_u64(ctx, &f, "tblocks.rng.key", &key)) != TB_OK ||
                (s = meta_u64(ctx, &f, "tblocks.rng.counter", &counter)) != TB_OK))
        goto done;
    /* 3. No NaN or infinity among the values to be loaded. */
    if (!(flags & TB_CKPT_ALLOW_NONFINITE) &&
        (s = refuse_nonfinite_in_file(ctx, path, loaded, n_params + n_moments)) != TB_OK)
        goto done;
    /* 4. The parameters: checked, then written, by tb_st_load_params. */
    if ((s = tb_st_load_params(ctx, &f, params, TB_ST_STRICT, OPT_PREFIX, NULL)) != TB_OK)
        goto done;
    /* 5. Nothing below can fail. */
    if (opt) {
        for (int w = 0; w < moments; w++)
            for (size_t i = 0; i < opt->n_slots; i++) {
                const tb_adam_slot *sl = &opt->slots[i];
                const tb_st_tensor *t = found[(size_t)w * opt->n_slots + i];
                tb_st_read_f32(ctx, t, moment(opt, w) + sl->offset, t->numel);
            }
        opt->step = step;
        opt->skipped = skipped;
    }
    if (rng) {
        rng->key = key;
        rng->counter = counter;
    }
done:
    if (mem)
        tb_free_with(&ctx->allocator, mem);
    tb_st_close(&f);
    return s;
}
