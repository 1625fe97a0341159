/* Strict numbers and terminal-safe text; see ex_text.h. */
#include "ex_text.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int ex_parse_u64(const char *s, uint64_t *out)
{
    if (!s || !is_digit(s[0]))
        return 0;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (!is_digit(*p))
            return 0;
        const uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 0; /* overflow */
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* Length of the decimal real at s (the grammar of ex_parse_real), or 0. */
static size_t real_syntax(const char *s)
{
    size_t i = 0, digits = 0;
    if (s[i] == '-')
        i++;
    for (; is_digit(s[i]); i++)
        digits++;
    if (s[i] == '.')
        for (i++; is_digit(s[i]); i++)
            digits++;
    if (!digits)
        return 0;
    if (s[i] == 'e' || s[i] == 'E') {
        i++;
        if (s[i] == '+' || s[i] == '-')
            i++;
        if (!is_digit(s[i]))
            return 0;
        while (is_digit(s[i]))
            i++;
    }
    return i;
}

int ex_parse_real(const char *s, double *out)
{
    if (!s)
        return 0;
    const size_t n = real_syntax(s);
    if (n == 0 || s[n] != '\0')
        return 0;
    char *end;
    errno = 0;
    const double v = strtod(s, &end);
    /* ERANGE also flags underflow to a subnormal or zero, which is a fine
     * value; only an overflow (infinite result) is refused. */
    if (end != s + n || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

size_t ex_utf8_seq_len(const unsigned char *s, size_t avail)
{
    const unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf; /* overlong; surrogates */
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf; /* overlong; > U+10FFFF */
    else
        return 0;
    if (avail < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

size_t ex_utf8_valid_prefix(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        const size_t k = ex_utf8_seq_len(u + i, len - i);
        if (k == 0)
            return i;
        i += k;
    }
    return len;
}

/* Length of the well-formed UTF-8 sequence of a printable character at
 * s[0..n), or 0 (a control, C1 control, malformed or cut-off sequence). */
static size_t printable_utf8(const unsigned char *s, size_t n)
{
    const unsigned char c = s[0];
    if (c < 0x80)
        return c >= 0x20 && c < 0x7f;
    if (c == 0xc2 && n >= 2 && s[1] <= 0x9f)
        return 0; /* U+0080-U+009F: C1 controls (0x9b is a CSI) */
    return ex_utf8_seq_len(s, n);
}

/* Bytes the escaped form of s[0..n) takes: len bytes for a kept
 * character, 4 for an escaped byte. */
static size_t escaped_len(const unsigned char *u, size_t n, unsigned flags, size_t i,
                          size_t *len)
{
    const int line = (u[i] == '\n' || u[i] == '\t') && (flags & EX_ESC_KEEP_LINES);
    *len = line ? 1 : printable_utf8(u + i, n - i);
    return *len ? *len : 4;
}

const char *ex_escape(const char *s, size_t n, unsigned flags, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    if (cap < 4) { /* too small for anything but an empty result */
        if (cap)
            out[0] = '\0';
        return out;
    }
    size_t total = 0, len;
    for (size_t i = 0; i < n && total < cap; i += len ? len : 1)
        total += escaped_len(u, n, flags, i, &len);
    /* When it does not all fit, keep room for "..." after each character. */
    const size_t spare = total > cap - 1 ? 3 : 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i += len ? len : 1) {
        const size_t need = escaped_len(u, n, flags, i, &len);
        if (k + need + spare > cap - 1) {
            memcpy(out + k, "...", 3);
            k += 3;
            break;
        }
        if (len) {
            memcpy(out + k, s + i, len);
            k += len;
        } else {
            out[k++] = '\\', out[k++] = 'x';
            out[k++] = hex[u[i] >> 4], out[k++] = hex[u[i] & 15];
        }
    }
    out[k] = '\0';
    return out;
}

const char *ex_show(ex_shown *buf, const char *s)
{
    return ex_escape(s ? s : "(null)", s ? strlen(s) : 6, 0, buf->text, sizeof buf->text);
}
