/*
 * Files for the examples: inputs must be regular files (a FIFO blocks the
 * reader forever, a directory or a device is not data), and outputs are
 * checked before a long run starts and replaced only when complete.
 * POSIX (open, fstat, mkstemp, rename). Messages go to stderr, with the
 * file name shown through ex_show() (no raw control characters).
 */
#ifndef EX_FILE_H
#define EX_FILE_H

#include <stddef.h>
#include <stdio.h>

/* 1 if path names an existing regular file (symbolic links followed);
 * otherwise 0 after "error: <what> <path>: <why>" on stderr. Checks without
 * opening, so a FIFO is refused without blocking. */
int ex_check_regular(const char *path, const char *what);

/* The whole of a regular file, read through one descriptor opened without
 * blocking and checked with fstat (so a FIFO swapped in after a check is
 * still refused), plus a NUL after the last byte. NULL after a message on
 * stderr when it is not a regular file, cannot be read or memory runs out;
 * free() the result. */
char *ex_read_regular(const char *path, const char *what, size_t *len);

/* 1 if a file can be created at path (by renaming a temporary file written
 * next to it, as the library's safetensors writer and ex_out do): the
 * directory exists and takes a new file, and path is not an existing
 * directory, FIFO or device. Proved by creating and removing
 * "<path>.tmp-XXXXXX". Otherwise 0 after a message naming <what>. */
int ex_check_output(const char *path, const char *what);

/* An output written under a temporary name next to its path and renamed
 * over it only by ex_out_commit(), so a run that fails or writes nothing
 * leaves any earlier file at path as it was. */
typedef struct ex_out {
    FILE *f;        /* write here */
    char *path;     /* the final name */
    char *tmp_path; /* "<path>.tmp-XXXXXX" */
} ex_out;

/* Create the temporary file (the check of ex_check_output()); 1, or 0
 * after a message, with o left empty. */
int ex_out_open(ex_out *o, const char *path, const char *what);

/* Flush, close and rename over path: 1, or 0 after a message (the
 * temporary file is removed then). o is left empty either way. */
int ex_out_commit(ex_out *o, const char *what);

/* Close and remove the temporary file; path is untouched. Empty o is fine. */
void ex_out_discard(ex_out *o);

#endif /* EX_FILE_H */
