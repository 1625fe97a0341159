/*
 * A small, strict JSON reader for the examples' configuration files
 * (config.json, tokenizer_config.json, modules.json, ...).
 *
 * Why here: the library's own JSON reader is internal to the safetensors
 * header parser (src/io) and reads only what that format holds; the
 * examples need a general one, and the project takes no run-time
 * dependency for it. It is not part of the library.
 *
 * What it accepts is RFC 8259 JSON and nothing more:
 *  - one value (any type) with optional whitespace (space, tab, LF, CR)
 *    around it; no byte-order mark, comments, trailing commas, single
 *    quotes, NaN/Infinity or bytes after the value;
 *  - strings: valid UTF-8 only (no overlong forms, surrogates or code
 *    points above U+10FFFF), no raw control characters (< 0x20), the
 *    escapes \" \\ \/ \b \f \n \r \t \uXXXX (surrogate pairs combined; a
 *    lone surrogate is refused); \u0000 is refused, so every string is a
 *    C string without embedded NUL;
 *  - numbers: the JSON grammar exactly (-?(0|[1-9][0-9]*)(.[0-9]+)?
 *    ([eE][+-]?[0-9]+)?), at most EX_JSON_MAX_NUMBER characters, read as
 *    double (strtod, in the "C" locale the examples run in) and refused if
 *    that overflows to infinity;
 *  - objects: duplicate keys are refused (they mean different things to
 *    different readers).
 * Limits: at most EX_JSON_MAX_BYTES of text and EX_JSON_MAX_DEPTH nested
 * arrays/objects. It never reads outside [text, text + len) (no NUL
 * terminator is needed) and a fuzz target (test/fuzz/fuzz_ex_json.c) runs
 * it under ASan and UBSan. Errors are TB_ERR_FORMAT with the byte offset
 * and what was wrong, e.g. "json: byte 17: expected ':' after an object key".
 *
 * The parsed tree lives in one ex_json_doc: every node and every unescaped
 * string is owned by it and valid until ex_json_free().
 */
#ifndef EX_JSON_H
#define EX_JSON_H

#include <stddef.h>

#include "tblocks.h"

#define EX_JSON_MAX_BYTES ((size_t)16 << 20) /* 16 MiB */
#define EX_JSON_MAX_DEPTH 64
#define EX_JSON_MAX_NUMBER 64

typedef enum ex_json_type {
    EX_JSON_NULL = 0,
    EX_JSON_FALSE,
    EX_JSON_TRUE,
    EX_JSON_NUMBER,
    EX_JSON_STRING,
    EX_JSON_ARRAY,
    EX_JSON_OBJECT
} ex_json_type;

/* One value. Children of an array or object are a list through `child`
 * and `next`, in file order; an object's children carry their key. */
typedef struct ex_json ex_json;
struct ex_json {
    ex_json_type type;
    size_t offset;       /* byte offset of the value in the text */
    double number;       /* EX_JSON_NUMBER */
    const char *str;     /* EX_JSON_STRING: the unescaped text, NUL-terminated */
    size_t str_len;      /* its length in bytes */
    const char *key;     /* a member of an object: its key (NUL-terminated); else NULL */
    size_t count;        /* EX_JSON_ARRAY / EX_JSON_OBJECT: number of children */
    const ex_json *child; /* first child, or NULL */
    const ex_json *next;  /* next sibling, or NULL */
};

typedef struct ex_json_doc {
    const ex_json *root;
    void *nodes;   /* owned */
    char *strings; /* owned */
} ex_json_doc;

/* Parse text[0..len). On success doc->root is the value; on failure doc is
 * left empty and the context holds the message (TB_ERR_FORMAT: malformed,
 * with the byte offset; TB_ERR_INVALID_ARG: longer than EX_JSON_MAX_BYTES;
 * TB_ERR_NO_MEMORY; TB_ERR_NULL_ARG). */
tb_status ex_json_parse(tb_ctx *ctx, const char *text, size_t len, ex_json_doc *doc);
void ex_json_free(ex_json_doc *doc);

/* The member `key` of an object, or NULL (absent, or obj not an object or
 * NULL). */
const ex_json *ex_json_find(const ex_json *obj, const char *key);

/* Typed reads of a value (v may be NULL: "missing"). `what` names it in
 * the message (e.g. "config.json: hidden_size"). TB_ERR_FORMAT when v is
 * missing or of another type, or out of range. */
/* A number that is an integer in [min, max]. */
tb_status ex_json_size(tb_ctx *ctx, const ex_json *v, const char *what, size_t min, size_t max,
                       size_t *out);
/* A number that is finite as a float. */
tb_status ex_json_float(tb_ctx *ctx, const ex_json *v, const char *what, float *out);
/* A string (borrowed from the document). */
tb_status ex_json_string(tb_ctx *ctx, const ex_json *v, const char *what, const char **out);
/* true or false. */
tb_status ex_json_bool(tb_ctx *ctx, const ex_json *v, const char *what, int *out);

#endif /* EX_JSON_H */
