/*
 * Text in and out for the examples: strict decimal numbers (command-line
 * options and file metadata are parsed the same way) and text made safe to
 * print on a terminal.
 */
#ifndef EX_TEXT_H
#define EX_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed UTF-8 sequence at s[0..avail) (avail >= 1):
 * 1 to 4, or 0 for a malformed or cut-off one (RFC 3629: no overlong
 * forms, surrogates or code points above U+10FFFF). The one UTF-8 check of
 * the examples. */
size_t ex_utf8_seq_len(const unsigned char *s, size_t avail);

/* The offset of the first byte of s[0..len) that is not part of
 * well-formed UTF-8, or len when all of it is. */
size_t ex_utf8_valid_prefix(const char *s, size_t len);

/* An unsigned decimal integer: digits only (no sign, spaces, "0x" or other
 * prefix), no overflow. Returns 1 and sets *out, or 0 (and leaves *out). */
int ex_parse_u64(const char *s, uint64_t *out);

/* A finite decimal real: an optional '-', digits with at most one '.'
 * (at least one digit), an optional exponent (e or E, an optional sign,
 * digits). No spaces, '+' sign, hexadecimal, inf or nan. Returns 1 and sets
 * *out, or 0 (and leaves *out). */
int ex_parse_real(const char *s, double *out);

/*
 * Text made safe to print: a terminal acts on control characters (ESC
 * starts sequences that move the cursor, clear the screen, set the window
 * title or worse), so every C0 control (bytes 0x00-0x1f), DEL (0x7f), C1
 * control (U+0080-U+009F) and every byte that is not part of well-formed
 * UTF-8 is written as \xHH (two lower-case hex digits). Well-formed UTF-8
 * of printable characters is kept as it is, and so is the backslash (the
 * result is for reading, not for parsing back). With EX_ESC_KEEP_LINES,
 * newline and tab are kept (generated or quoted text); without it they are
 * escaped too (file names and other one-line fields).
 *
 * Writes at most cap - 1 bytes and a NUL (cap >= 4); a result that does
 * not fit ends in "..." after the last whole character that does, and
 * EX_ESCAPED_CAP(n) always fits. Returns out.
 */
#define EX_ESC_KEEP_LINES 1u
#define EX_ESCAPED_CAP(n) (4 * (n) + 1)
const char *ex_escape(const char *s, size_t n, unsigned flags, char *out, size_t cap);

/* Bytes a one-line display of a file name or option value keeps (longer
 * ones end in "..."). */
#define EX_SHOWN_MAX 512

/* One-line display of a NUL-terminated string: ex_escape() without
 * EX_ESC_KEEP_LINES into a buffer of EX_SHOWN_MAX bytes. */
typedef struct ex_shown {
    char text[EX_SHOWN_MAX];
} ex_shown;
const char *ex_show(ex_shown *buf, const char *s);

#endif /* EX_TEXT_H */
