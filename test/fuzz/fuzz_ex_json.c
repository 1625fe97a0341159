/*
 * libFuzzer target for the examples' JSON reader (examples/common/ex_json.c):
 * ex_json_parse() on any bytes, then, when it accepts them, a walk of the
 * whole tree checking what the header promises: every string is valid
 * UTF-8 without NUL of the length it claims, every node's offset lies in
 * the text, child counts match the lists, object keys are unique, the
 * nesting is at most EX_JSON_MAX_DEPTH, and every getter answers without
 * crashing. Build and run with `make fuzz-run-ex_json`; the seeds
 * (test/fuzz/corpus_ex_json: the MiniLM folder's configuration files and a
 * few hand-written edge cases) are replayed by test_minilm.c.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_ex_json: %s\n", what);
        abort();
    }
}

static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        const unsigned c = s[i];
        size_t k;
        unsigned cp;
        if (c < 0x80) {
            if (!c)
                return 0;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            k = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            k = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            k = 4, cp = c & 0x07;
        else
            return 0;
        if (n - i < k)
            return 0;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k;
    }
    return 1;
}

static void walk(tb_ctx *ctx, const ex_json *v, size_t depth, size_t size)
{
    check(depth <= EX_JSON_MAX_DEPTH + 1, "nested too deep");
    check(v->offset < size, "offset outside the text");
    if (v->type == EX_JSON_STRING)
        check(strlen(v->str) == v->str_len && valid_utf8((const unsigned char *)v->str, v->str_len),
              "string not valid UTF-8 of its length");
    size_t n = 0;
    for (const ex_json *c = v->child; c; c = c->next, n++) {
        if (v->type == EX_JSON_OBJECT) {
            check(c->key && valid_utf8((const unsigned char *)c->key, strlen(c->key)),
                  "bad key");
            check(ex_json_find(v, c->key) == c, "duplicate key accepted");
        } else
            check(!c->key, "array element with a key");
        walk(ctx, c, depth + 1, size);
    }
    check(n == v->count, "child count");
    check(v->type == EX_JSON_ARRAY || v->type == EX_JSON_OBJECT || !v->child, "scalar children");
    size_t z;
    float f;
    const char *s;
    int b;
    (void)ex_json_size(ctx, v, "v", 0, SIZE_MAX, &z);
    (void)ex_json_size(ctx, v, "v", 3, 1000, &z);
    (void)ex_json_float(ctx, v, "v", &f);
    (void)ex_json_string(ctx, v, "v", &s);
    (void)ex_json_bool(ctx, v, "v", &b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ex_json_doc doc;
    const tb_status s = ex_json_parse(&ctx, (const char *)data, size, &doc);
    if (s == TB_OK) {
        check(doc.root != NULL, "no root");
        walk(&ctx, doc.root, 0, size ? size : 1);
    } else
        check(doc.root == NULL && tb_ctx_error(&ctx)[0], "failure without a message");
    ex_json_free(&doc);
    return 0;
}
