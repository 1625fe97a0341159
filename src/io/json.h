/*
 * The JSON reader of safetensors headers (not installed, not part of the
 * API): a small recursive-descent reader over the bytes [start, end) of the
 * caller's buffer. Every read is bounds-checked against `end`; numbers are
 * read only as the non-negative integers a header holds (anything else is
 * skipped, not converted). A failure is TB_ERR_FORMAT reported under the
 * name `fn`, as "<what> at header byte <offset>".
 */
#ifndef TB_IO_JSON_H
#define TB_IO_JSON_H

#include <stddef.h>

#include "tblocks.h"

/* Values nested deeper than this are refused (the stack is the limit). */
#define TB_JSON_MAX_DEPTH 64

typedef struct tb_json {
    tb_ctx *ctx;
    const char *fn;                       /* the function failures are reported under */
    const unsigned char *start, *p, *end; /* the text, and the read position in it */
    char *pool;       /* unescaped strings: at least end - start + 1 bytes */
    size_t pool_used; /* bytes of pool in use (reset it to drop strings) */
} tb_json;

/* TB_ERR_FORMAT: "<what> at header byte <at - start>". */
tb_status tb_json_fail_at(tb_json *js, const unsigned char *at, const char *what);

/* Skip JSON white space. */
void tb_json_skip_ws(tb_json *js);

/* Skip white space; if the next byte is c, consume it and return 1, else 0. */
int tb_json_accept(tb_json *js, char c);

/* A JSON string, unescaped into the pool and NUL-terminated; *out points
 * at it. An embedded \u0000 is refused (names are C strings), as are
 * control characters, unpaired surrogates and invalid UTF-8. No unescaped
 * string set is longer than the text, so the pool cannot overflow. */
tb_status tb_json_string(tb_json *js, const char **out);

/* A non-negative JSON integer that fits in size_t (no sign, fraction or
 * exponent; no leading zeros). */
tb_status tb_json_size(tb_json *js, size_t *out);

/* Skip any one JSON value, `depth` levels deep already (strings are
 * checked, then dropped from the pool). */
tb_status tb_json_skip_value(tb_json *js, int depth);

/* Length of the valid UTF-8 sequence at s (< end), or 0: no overlong
 * forms, surrogates or code points past U+10FFFF. The writer checks names
 * with it, so that it never writes what this reader refuses. */
size_t tb_json_utf8_len(const unsigned char *s, const unsigned char *end);

#endif /* TB_IO_JSON_H */
