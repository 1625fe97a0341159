/* Regular-file inputs and checked, replace-when-complete outputs; see ex_file.h. */
#define _POSIX_C_SOURCE 200809L
#include "ex_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ex_text.h"

/* What a non-regular file is, for the messages. */
static const char *kind_of(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO (named pipe)";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISSOCK(mode))
        return "a socket";
    return "not a regular file";
}

static void refuse_kind(const char *what, const char *path, mode_t mode)
{
    ex_shown p;
    fprintf(stderr, "error: %s %s is %s, not a regular file\n", what, ex_show(&p, path),
            kind_of(mode));
}

static void refuse_errno(const char *what, const char *path, const char *doing, int err)
{
    ex_shown p;
    fprintf(stderr, "error: %s %s: %s: %s\n", what, ex_show(&p, path), doing, strerror(err));
}

int ex_check_regular(const char *path, const char *what)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        refuse_errno(what, path, "cannot read it", errno);
        return 0;
    }
    if (!S_ISREG(st.st_mode)) {
        refuse_kind(what, path, st.st_mode);
        return 0;
    }
    return 1;
}

/* read() all of fd into a growing buffer with a NUL after the data. */
static char *read_fd(int fd, size_t hint, size_t *len, int *err)
{
    size_t cap = hint + 1 > 4096 ? hint + 1 : 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        *err = ENOMEM;
        return NULL;
    }
    for (;;) {
        if (n + 1 == cap) {
            char *nb = cap <= ((size_t)-1) / 2 ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                *err = ENOMEM;
                return NULL;
            }
            buf = nb, cap *= 2;
        }
        const ssize_t got = read(fd, buf + n, cap - 1 - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            *err = errno;
            free(buf);
            return NULL;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

char *ex_read_regular(const char *path, const char *what, size_t *len)
{
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
     * writer; a regular file reads the same either way. */
    const int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        refuse_errno(what, path, "cannot open it", errno);
        return NULL;
    }
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0) {
        refuse_errno(what, path, "cannot stat it", errno);
    } else if (!S_ISREG(st.st_mode)) {
        refuse_kind(what, path, st.st_mode);
    } else {
        int err = 0;
        buf = read_fd(fd, st.st_size > 0 ? (size_t)st.st_size : 0, len, &err);
        if (!buf)
            refuse_errno(what, path, "cannot read it", err);
    }
    close(fd);
    return buf;
}

/* "<path>.tmp-XXXXXX" created with mkstemp (0644 like the library's
 * writer); returns the descriptor and the name, or -1 after a message. */
static int make_temp(const char *path, const char *what, char **tmp_out)
{
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        refuse_kind(what, path, st.st_mode);
        return -1;
    }
    const size_t n = strlen(path);
    char *tmp = malloc(n + sizeof ".tmp-XXXXXX");
    if (!tmp) {
        refuse_errno(what, path, "cannot name a temporary file", ENOMEM);
        return -1;
    }
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp-XXXXXX", sizeof ".tmp-XXXXXX");
    const int fd = mkstemp(tmp);
    if (fd < 0) {
        refuse_errno(what, path, "cannot create a file in its directory", errno);
        free(tmp);
        return -1;
    }
    (void)fchmod(fd, 0644); /* mkstemp creates 0600 */
    *tmp_out = tmp;
    return fd;
}

int ex_check_output(const char *path, const char *what)
{
    char *tmp;
    const int fd = make_temp(path, what, &tmp);
    if (fd < 0)
        return 0;
    close(fd);
    unlink(tmp);
    free(tmp);
    return 1;
}

int ex_out_open(ex_out *o, const char *path, const char *what)
{
    memset(o, 0, sizeof *o);
    char *tmp;
    const int fd = make_temp(path, what, &tmp);
    if (fd < 0)
        return 0;
    o->f = fdopen(fd, "w");
    o->path = malloc(strlen(path) + 1);
    if (!o->f || !o->path) {
        refuse_errno(what, path, "cannot open the temporary file", o->f ? ENOMEM : errno);
        if (o->f)
            fclose(o->f);
        else
            close(fd);
        unlink(tmp);
        free(tmp);
        free(o->path);
        memset(o, 0, sizeof *o);
        return 0;
    }
    strcpy(o->path, path);
    o->tmp_path = tmp;
    return 1;
}

static void out_clear(ex_out *o)
{
    free(o->path);
    free(o->tmp_path);
    memset(o, 0, sizeof *o);
}

int ex_out_commit(ex_out *o, const char *what)
{
    const int bad_write = ferror(o->f) != 0;
    const int bad_close = fclose(o->f) != 0;
    int ok = !bad_write && !bad_close;
    if (!ok)
        refuse_errno(what, o->path, "cannot write it", bad_write ? EIO : errno);
    else if (rename(o->tmp_path, o->path) != 0) {
        refuse_errno(what, o->path, "cannot rename the temporary file over it", errno);
        ok = 0;
    }
    if (!ok)
        unlink(o->tmp_path);
    out_clear(o);
    return ok;
}

void ex_out_discard(ex_out *o)
{
    if (!o->f)
        return;
    fclose(o->f);
    unlink(o->tmp_path);
    out_clear(o);
}
