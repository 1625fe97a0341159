/*
 * The JSON reader of safetensors headers (json.h): bounds-checked against
 * `end` at every read.
 */
#include <stdint.h>
#include <string.h>

#include "../core/internal.h"
#include "json.h"

tb_status tb_json_fail_at(tb_json *js, const unsigned char *at, const char *what)
{
    return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "%s at header byte %zu", what,
                   (size_t)(at - js->start));
}

void tb_json_skip_ws(tb_json *js)
{
    while (js->p < js->end &&
           (*js->p == ' ' || *js->p == '\t' || *js->p == '\n' || *js->p == '\r'))
        js->p++;
}

int tb_json_accept(tb_json *js, char c)
{
    tb_json_skip_ws(js);
    if (js->p < js->end && *js->p == (unsigned char)c) {
        js->p++;
        return 1;
    }
    return 0;
}

static int hex4(const unsigned char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        const unsigned c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return 0;
    }
    *out = v;
    return 1;
}

size_t tb_json_utf8_len(const unsigned char *s, const unsigned char *end)
{
    const unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, min = 0x10000;
    else
        return 0;
    if ((size_t)(end - s) < n)
        return 0;
    unsigned cp = c & (0x7F >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static size_t put_utf8(unsigned cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

tb_status tb_json_string(tb_json *js, const char **out)
{
    tb_json_skip_ws(js);
    if (js->p >= js->end || *js->p != '"')
        return tb_json_fail_at(js, js->p, "expected a string");
    js->p++;
    char *dst = js->pool + js->pool_used;
    size_t n = 0;
    for (;;) {
        if (js->p >= js->end)
            return tb_json_fail_at(js, js->p, "unterminated string");
        const unsigned c = *js->p;
        if (c == '"') {
            js->p++;
            break;
        }
        if (c < 0x20)
            return tb_json_fail_at(js, js->p, "control character in a string");
        if (c == '\\') {
            if (js->end - js->p < 2)
                return tb_json_fail_at(js, js->p, "unterminated escape");
            const unsigned e = js->p[1];
            js->p += 2;
            char ch;
            switch (e) {
            case '"': ch = '"'; break;
            case '\\': ch = '\\'; break;
            case '/': ch = '/'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u': {
                unsigned cp;
                if (js->end - js->p < 4 || !hex4(js->p, &cp))
                    return tb_json_fail_at(js, js->p, "bad \\u escape");
                js->p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
                    unsigned lo;
                    if (js->end - js->p < 6 || js->p[0] != '\\' || js->p[1] != 'u' ||
                        !hex4(js->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return tb_json_fail_at(js, js->p, "unpaired surrogate in a \\u escape");
                    js->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return tb_json_fail_at(js, js->p, "unpaired surrogate in a \\u escape");
                }
                if (cp == 0)
                    return tb_json_fail_at(js, js->p, "NUL character in a string");
                n += put_utf8(cp, dst + n);
                continue;
            }
            default:
                return tb_json_fail_at(js, js->p, "unknown escape in a string");
            }
            dst[n++] = ch;
            continue;
        }
        const size_t len = tb_json_utf8_len(js->p, js->end);
        if (!len)
            return tb_json_fail_at(js, js->p, "invalid UTF-8 in a string");
        memcpy(dst + n, js->p, len);
        n += len;
        js->p += len;
    }
    dst[n] = '\0';
    js->pool_used += n + 1;
    *out = dst;
    return TB_OK;
}

tb_status tb_json_size(tb_json *js, size_t *out)
{
    tb_json_skip_ws(js);
    if (js->p >= js->end || *js->p < '0' || *js->p > '9')
        return tb_json_fail_at(js, js->p, "expected a non-negative integer");
    if (*js->p == '0' && js->end - js->p > 1 && js->p[1] >= '0' && js->p[1] <= '9')
        return tb_json_fail_at(js, js->p, "integer with a leading zero");
    size_t v = 0;
    while (js->p < js->end && *js->p >= '0' && *js->p <= '9') {
        const size_t d = (size_t)(*js->p - '0');
        if (v > (SIZE_MAX - d) / 10)
            return tb_json_fail_at(js, js->p, "integer too large");
        v = v * 10 + d;
        js->p++;
    }
    if (js->p < js->end && (*js->p == '.' || *js->p == 'e' || *js->p == 'E'))
        return tb_json_fail_at(js, js->p, "expected an integer, found a fraction or exponent");
    *out = v;
    return TB_OK;
}

tb_status tb_json_skip_value(tb_json *js, int depth)
{
    if (depth > TB_JSON_MAX_DEPTH)
        return tb_json_fail_at(js, js->p, "JSON nested too deeply");
    tb_json_skip_ws(js);
    if (js->p >= js->end)
        return tb_json_fail_at(js, js->p, "unexpected end of header");
    const unsigned c = *js->p;
    tb_status s;
    if (c == '"') {
        const char *tmp;
        const size_t used = js->pool_used;
        s = tb_json_string(js, &tmp);
        js->pool_used = used; /* not kept */
        return s;
    }
    if (c == '{' || c == '[') {
        const char close = c == '{' ? '}' : ']';
        js->p++;
        if (tb_json_accept(js, close))
            return TB_OK;
        for (;;) {
            if (c == '{') {
                const char *tmp;
                const size_t used = js->pool_used;
                if ((s = tb_json_string(js, &tmp)) != TB_OK)
                    return s;
                js->pool_used = used;
                if (!tb_json_accept(js, ':'))
                    return tb_json_fail_at(js, js->p, "expected ':'");
            }
            if ((s = tb_json_skip_value(js, depth + 1)) != TB_OK)
                return s;
            if (tb_json_accept(js, ','))
                continue;
            if (tb_json_accept(js, close))
                return TB_OK;
            return tb_json_fail_at(js, js->p, "expected ',' or the end of an object or array");
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        const size_t len = strlen(words[i]);
        if ((size_t)(js->end - js->p) >= len && memcmp(js->p, words[i], len) == 0) {
            js->p += len;
            return TB_OK;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) { /* a JSON number: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)? */
#define DIGIT(q) ((q) < js->end && *(q) >= '0' && *(q) <= '9')
        const unsigned char *q = js->p;
        if (*q == '-')
            q++;
        if (!DIGIT(q))
            return tb_json_fail_at(js, q, "bad number");
        if (*q == '0')
            q++;
        else
            while (DIGIT(q))
                q++;
        if (q < js->end && *q == '.') {
            q++;
            if (!DIGIT(q))
                return tb_json_fail_at(js, q, "bad number");
            while (DIGIT(q))
                q++;
        }
        if (q < js->end && (*q == 'e' || *q == 'E')) {
            q++;
            if (q < js->end && (*q == '+' || *q == '-'))
                q++;
            if (!DIGIT(q))
                return tb_json_fail_at(js, q, "bad number");
            while (DIGIT(q))
                q++;
        }
#undef DIGIT
        js->p = q;
        return TB_OK;
    }
    return tb_json_fail_at(js, js->p, "unexpected character");
}
