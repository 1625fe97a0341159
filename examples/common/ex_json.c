/* A strict JSON reader for configuration files (ex_json.h). */
#include "ex_json.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_text.h"

/* A node while parsing: children by index (index + 1; 0 is none), turned
 * into pointers once the node array stops moving. */
typedef struct pnode {
    ex_json v;
    size_t first, last, next;
} pnode;

typedef struct parser {
    tb_ctx *ctx;
    const unsigned char *s;
    size_t n, pos;
    pnode *nodes;
    size_t count, cap;
    char *str;       /* unescaped strings, len + 1 bytes: never more than the text */
    size_t str_used;
} parser;

static tb_status fail_at(parser *p, size_t at, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return tb_ctx_set_error(p->ctx, TB_ERR_FORMAT, "json: byte %zu: %s", at, msg);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->n) {
        const unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

static tb_status new_node(parser *p, ex_json_type type, size_t *idx)
{
    if (p->count == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        if (cap > SIZE_MAX / sizeof(pnode))
            return tb_ctx_set_error(p->ctx, TB_ERR_OVERFLOW, "json: too many values");
        pnode *nn = realloc(p->nodes, cap * sizeof(pnode));
        if (!nn)
            return tb_ctx_set_error(p->ctx, TB_ERR_NO_MEMORY, "json: out of memory (%zu values)",
                                    cap);
        p->nodes = nn, p->cap = cap;
    }
    pnode *d = &p->nodes[p->count];
    memset(d, 0, sizeof *d);
    d->v.type = type;
    d->v.offset = p->pos;
    *idx = p->count++;
    return TB_OK;
}

static int hex4(const unsigned char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        const unsigned char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return 0;
        v = v * 16 + d;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6)), o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12)), o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18)), o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The string at p->pos (on its opening quote), unescaped into p->str. */
static tb_status parse_string(parser *p, const char **out, size_t *out_len)
{
    const size_t start = p->pos;
    char *o = p->str + p->str_used, *const o0 = o;
    p->pos++;
    for (;;) {
        if (p->pos >= p->n)
            return fail_at(p, start, "unterminated string");
        const unsigned char c = p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20)
            return fail_at(p, p->pos, "raw control character 0x%02x in a string", c);
        if (c == '\\') {
            if (p->pos + 1 >= p->n)
                return fail_at(p, start, "unterminated string");
            const unsigned char e = p->s[p->pos + 1];
            const char *simple = strchr("\"\\/bfnrt", e);
            if (e && simple) {
                static const char map[] = "\"\\/\b\f\n\r\t";
                *o++ = map[simple - "\"\\/bfnrt"];
                p->pos += 2;
                continue;
            }
            if (e != 'u')
                return fail_at(p, p->pos, "invalid escape \\%c", e >= 0x20 && e < 0x7f ? e : '?');
            unsigned cp, lo;
            if (p->n - p->pos < 6 || !hex4(p->s + p->pos + 2, &cp))
                return fail_at(p, p->pos, "\\u needs four hexadecimal digits");
            const size_t esc = p->pos;
            p->pos += 6;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return fail_at(p, esc, "lone low surrogate \\u%04x", cp);
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (p->n - p->pos < 6 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u' ||
                    !hex4(p->s + p->pos + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return fail_at(p, esc, "high surrogate \\u%04x without a low one", cp);
                p->pos += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (cp == 0)
                return fail_at(p, esc, "\\u0000 in a string");
            o += put_utf8(o, cp);
            continue;
        }
        const size_t k = ex_utf8_seq_len(p->s + p->pos, p->n - p->pos);
        if (!k)
            return fail_at(p, p->pos, "invalid UTF-8 in a string");
        memcpy(o, p->s + p->pos, k);
        o += k, p->pos += k;
    }
    *o++ = '\0';
    *out = o0;
    *out_len = (size_t)(o - o0) - 1;
    p->str_used += (size_t)(o - o0);
    return TB_OK;
}

static tb_status parse_number(parser *p, double *out)
{
    const size_t start = p->pos;
    size_t i = p->pos;
    const unsigned char *s = p->s;
#define DIGIT(j) ((j) < p->n && s[j] >= '0' && s[j] <= '9')
    if (i < p->n && s[i] == '-')
        i++;
    if (!DIGIT(i))
        return fail_at(p, start, "a number needs a digit");
    if (s[i] == '0')
        i++;
    else
        while (DIGIT(i))
            i++;
    if (i < p->n && s[i] == '.') {
        i++;
        if (!DIGIT(i))
            return fail_at(p, i, "a digit must follow the decimal point");
        while (DIGIT(i))
            i++;
    }
    if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < p->n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (!DIGIT(i))
            return fail_at(p, i, "an exponent needs a digit");
        while (DIGIT(i))
            i++;
    }
    if (DIGIT(i))
        return fail_at(p, start, "leading zero in a number");
#undef DIGIT
    const size_t len = i - start;
    if (len > EX_JSON_MAX_NUMBER)
        return fail_at(p, start, "number longer than %d characters", EX_JSON_MAX_NUMBER);
    char buf[EX_JSON_MAX_NUMBER + 1];
    memcpy(buf, s + start, len);
    buf[len] = '\0';
    const double v = strtod(buf, NULL);
    if (!isfinite(v))
        return fail_at(p, start, "number %s out of range", buf);
    *out = v;
    p->pos = i;
    return TB_OK;
}

static int key_cmp(const void *a, const void *b)
{
    const pnode *const *x = a, *const *y = b;
    return strcmp((*x)->v.key, (*y)->v.key);
}

static void add_child(parser *p, size_t parent, size_t child)
{
    pnode *d = &p->nodes[parent];
    if (d->last)
        p->nodes[d->last - 1].next = child + 1;
    else
        d->first = child + 1;
    d->last = child + 1;
    d->v.count++;
}

/* Object keys sorted once the object is complete: a duplicate is a
 * neighbour (O(n log n) even for a hostile object of a million keys). */
static tb_status check_keys(parser *p, size_t obj)
{
    const size_t n = p->nodes[obj].v.count;
    if (n < 2)
        return TB_OK;
    const pnode **v = malloc(n * sizeof *v);
    if (!v)
        return tb_ctx_set_error(p->ctx, TB_ERR_NO_MEMORY, "json: out of memory");
    size_t k = 0;
    for (size_t c = p->nodes[obj].first; c; c = p->nodes[c - 1].next)
        v[k++] = &p->nodes[c - 1];
    qsort(v, n, sizeof *v, key_cmp);
    tb_status s = TB_OK;
    for (size_t i = 1; i < n && s == TB_OK; i++)
        if (strcmp(v[i - 1]->v.key, v[i]->v.key) == 0) {
            const pnode *later = v[i - 1]->v.offset > v[i]->v.offset ? v[i - 1] : v[i];
            s = fail_at(p, later->v.offset, "duplicate key \"%.60s\"", later->v.key);
        }
    free(v);
    return s;
}

static tb_status parse_value(parser *p, size_t depth, size_t *idx);

static tb_status parse_container(parser *p, size_t depth, int object, size_t me)
{
    const size_t open = p->pos;
    p->pos++;
    skip_ws(p);
    const char close = object ? '}' : ']';
    if (p->pos < p->n && p->s[p->pos] == close) {
        p->pos++;
        return TB_OK;
    }
    for (;;) {
        const char *key = NULL;
        if (object) {
            size_t klen;
            if (p->pos >= p->n || p->s[p->pos] != '"')
                return fail_at(p, p->pos, "expected a string key in the object opened at byte %zu",
                               open);
            if (parse_string(p, &key, &klen) != TB_OK)
                return TB_ERR_FORMAT;
            skip_ws(p);
            if (p->pos >= p->n || p->s[p->pos] != ':')
                return fail_at(p, p->pos, "expected ':' after an object key");
            p->pos++;
            skip_ws(p);
        }
        size_t child;
        tb_status s = parse_value(p, depth + 1, &child);
        if (s != TB_OK)
            return s;
        p->nodes[child].v.key = key;
        add_child(p, me, child);
        skip_ws(p);
        if (p->pos >= p->n)
            return fail_at(p, open, "unterminated %s", object ? "object" : "array");
        const unsigned char c = p->s[p->pos];
        if (c == close) {
            p->pos++;
            break;
        }
        if (c != ',')
            return fail_at(p, p->pos, "expected ',' or '%c'", close);
        p->pos++;
        skip_ws(p);
        if (p->pos < p->n && p->s[p->pos] == close)
            return fail_at(p, p->pos, "trailing comma");
    }
    return object ? check_keys(p, me) : TB_OK;
}

static tb_status parse_value(parser *p, size_t depth, size_t *idx)
{
    if (p->pos >= p->n)
        return fail_at(p, p->pos, "expected a value, found the end");
    const unsigned char c = p->s[p->pos];
    tb_status s;
    if (c == '{' || c == '[') {
        if (depth >= EX_JSON_MAX_DEPTH) /* depth counts the containers around this one */
            return fail_at(p, p->pos, "nested deeper than %d levels", EX_JSON_MAX_DEPTH);
        s = new_node(p, c == '{' ? EX_JSON_OBJECT : EX_JSON_ARRAY, idx);
        return s != TB_OK ? s : parse_container(p, depth, c == '{', *idx);
    }
    if (c == '"') {
        if ((s = new_node(p, EX_JSON_STRING, idx)) != TB_OK)
            return s;
        const char *str;
        size_t len;
        if ((s = parse_string(p, &str, &len)) != TB_OK)
            return s;
        p->nodes[*idx].v.str = str, p->nodes[*idx].v.str_len = len;
        return TB_OK;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        if ((s = new_node(p, EX_JSON_NUMBER, idx)) != TB_OK)
            return s;
        double v = 0;
        if ((s = parse_number(p, &v)) != TB_OK)
            return s;
        p->nodes[*idx].v.number = v;
        return TB_OK;
    }
    static const struct {
        const char *word;
        ex_json_type type;
    } lit[] = {{"true", EX_JSON_TRUE}, {"false", EX_JSON_FALSE}, {"null", EX_JSON_NULL}};
    for (size_t i = 0; i < 3; i++) {
        const size_t len = strlen(lit[i].word);
        if (p->n - p->pos >= len && memcmp(p->s + p->pos, lit[i].word, len) == 0) {
            if ((s = new_node(p, lit[i].type, idx)) != TB_OK)
                return s;
            p->pos += len;
            return TB_OK;
        }
    }
    if (c >= 0x20 && c < 0x7f)
        return fail_at(p, p->pos, "unexpected character '%c'", c);
    return fail_at(p, p->pos, "unexpected byte 0x%02x", c);
}

tb_status ex_json_parse(tb_ctx *ctx, const char *text, size_t len, ex_json_doc *doc)
{
    if (!doc)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "json: no document");
    memset(doc, 0, sizeof *doc);
    if (!text && len)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "json: no text");
    if (len > EX_JSON_MAX_BYTES)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "json: %zu bytes, more than the %zu allowed",
                                len, EX_JSON_MAX_BYTES);
    parser p;
    memset(&p, 0, sizeof p);
    p.ctx = ctx, p.s = (const unsigned char *)text, p.n = len;
    p.str = malloc(len + 1);
    if (!p.str)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "json: out of memory");
    size_t root;
    skip_ws(&p);
    tb_status s = parse_value(&p, 0, &root);
    if (s == TB_OK) {
        skip_ws(&p);
        if (p.pos < p.n)
            s = fail_at(&p, p.pos, "bytes after the value");
    }
    if (s != TB_OK) {
        free(p.nodes), free(p.str);
        return s;
    }
    for (size_t i = 0; i < p.count; i++) {
        pnode *d = &p.nodes[i];
        d->v.child = d->first ? &p.nodes[d->first - 1].v : NULL;
        d->v.next = d->next ? &p.nodes[d->next - 1].v : NULL;
    }
    doc->root = &p.nodes[root].v;
    doc->nodes = p.nodes, doc->strings = p.str;
    return TB_OK;
}

void ex_json_free(ex_json_doc *doc)
{
    if (!doc)
        return;
    free(doc->nodes);
    free(doc->strings);
    memset(doc, 0, sizeof *doc);
}

const ex_json *ex_json_find(const ex_json *obj, const char *key)
{
    if (!obj || obj->type != EX_JSON_OBJECT || !key)
        return NULL;
    for (const ex_json *c = obj->child; c; c = c->next)
        if (strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

static const char *type_name(const ex_json *v)
{
    static const char *const names[] = {"null", "false", "true", "a number", "a string",
                                        "an array", "an object"};
    return names[v->type];
}

tb_status ex_json_size(tb_ctx *ctx, const ex_json *v, const char *what, size_t min, size_t max,
                       size_t *out)
{
    if (!v)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: missing", what);
    if (v->type != EX_JSON_NUMBER)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: %s, expected an integer", what,
                                type_name(v));
    const double x = v->number;
    if (x != floor(x) || x < 0 || x >= 0x1p64 || x < (double)min || x > (double)max ||
        (size_t)x < min || (size_t)x > max)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: %.17g, expected an integer in %zu..%zu",
                                what, x, min, max);
    *out = (size_t)x;
    return TB_OK;
}

tb_status ex_json_float(tb_ctx *ctx, const ex_json *v, const char *what, float *out)
{
    if (!v)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: missing", what);
    if (v->type != EX_JSON_NUMBER)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: %s, expected a number", what,
                                type_name(v));
    const float f = (float)v->number;
    if (!isfinite(f))
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: %.17g does not fit a float", what,
                                v->number);
    *out = f;
    return TB_OK;
}

tb_status ex_json_string(tb_ctx *ctx, const ex_json *v, const char *what, const char **out)
{
    if (!v)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: missing", what);
    if (v->type != EX_JSON_STRING)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: %s, expected a string", what,
                                type_name(v));
    *out = v->str;
    return TB_OK;
}

tb_status ex_json_bool(tb_ctx *ctx, const ex_json *v, const char *what, int *out)
{
    if (!v)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: missing", what);
    if (v->type != EX_JSON_TRUE && v->type != EX_JSON_FALSE)
        return tb_ctx_set_error(ctx, TB_ERR_FORMAT, "%s: %s, expected true or false", what,
                                type_name(v));
    *out = v->type == EX_JSON_TRUE;
    return TB_OK;
}
