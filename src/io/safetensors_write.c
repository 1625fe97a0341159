/*
 * safetensors writer (safetensors.h): tb_st_save, tb_st_save_params.
 *
 * A save checks everything the reader would refuse before the old file is
 * touched, writes a temporary next to the target, fsyncs it and renames it
 * over the target (so a failed save keeps the previous file).
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/internal.h"
#include "json.h"
#include "safetensors_fd.h"

/* ---- the header ------------------------------------------------------------ */

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
        const size_t n = tb_json_utf8_len(p, end);
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

/* The element count of an entry tb_st_save() has checked (it fits). */
static size_t entry_numel(const tb_st_entry *e)
{
    size_t numel = 1;
    for (size_t d = 0; d < e->ndim; d++)
        numel *= e->shape[d];
    return numel;
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
        const size_t numel = entry_numel(e);
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
    if (h.status == TB_OK && h.len > TB_ST_MAX_HEADER)
        h.status = tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "the header would be %zu bytes, above the format's %u-byte limit",
                           h.len, TB_ST_MAX_HEADER);
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
    for (size_t i = 0; ok && i < n; i++)
        ok = write_floats(f, entries[i].data, entry_numel(&entries[i]));
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
