/*
 * A tiny PNG writer: see ex_png.h. Format: the PNG specification (chunks
 * IHDR, IDAT, IEND), RFC 1950 (zlib) and RFC 1951 section 3.2.4 (stored
 * deflate blocks: a header byte, LEN and its complement NLEN, then LEN raw
 * bytes).
 */
#include "ex_png.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_file.h"

#define STORED_MAX 65535u /* the most bytes one stored block holds */

uint32_t ex_png_crc32(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

uint32_t ex_png_adler32(uint32_t adler, const uint8_t *p, size_t n)
{
    uint32_t a = adler & 0xffffu, b = adler >> 16;
    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521u;
        b = (b + a) % 65521u;
    }
    return (b << 16) | a;
}

/* The filtered image: height rows of 1 + 3 width bytes. */
static size_t raw_size(size_t width, size_t height)
{
    return height * (1 + 3 * width);
}

static size_t idat_size(size_t raw)
{
    const size_t blocks = raw ? (raw + STORED_MAX - 1) / STORED_MAX : 1;
    return 2 + blocks * 5 + raw + 4; /* zlib header, block headers, data, Adler-32 */
}

size_t ex_png_size(size_t width, size_t height)
{
    if (width < 1 || height < 1 || width > EX_PNG_MAX_SIDE || height > EX_PNG_MAX_SIDE)
        return 0;
    /* signature, IHDR (12 + 13), IDAT (12 + data), IEND (12) */
    return 8 + 25 + 12 + idat_size(raw_size(width, height)) + 12;
}

static uint8_t *put32(uint8_t *o, uint32_t v)
{
    o[0] = (uint8_t)(v >> 24), o[1] = (uint8_t)(v >> 16), o[2] = (uint8_t)(v >> 8);
    o[3] = (uint8_t)v;
    return o + 4;
}

/* Length, type, then the data written at o + 8 by the caller (len bytes),
 * then the CRC of type and data. Returns the end. */
static uint8_t *chunk_close(uint8_t *start, size_t len)
{
    put32(start, (uint32_t)len);
    return put32(start + 8 + len, ex_png_crc32(0, start + 4, 4 + len));
}

size_t ex_png_encode(const uint8_t *rgb, size_t width, size_t height, uint8_t *out, size_t cap)
{
    const size_t need = ex_png_size(width, height);
    if (!rgb || !out || !need || cap < need)
        return 0;
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t *o = out;
    memcpy(o, sig, 8);
    o += 8;
    /* IHDR: width, height, bit depth 8, colour type 2 (RGB), compression 0,
     * filter 0, interlace 0. */
    uint8_t *c = o;
    memcpy(c + 4, "IHDR", 4);
    put32(c + 8, (uint32_t)width);
    put32(c + 12, (uint32_t)height);
    c[16] = 8, c[17] = 2, c[18] = 0, c[19] = 0, c[20] = 0;
    o = chunk_close(c, 13);
    /* IDAT: one zlib stream (CMF 0x78: deflate, 32 KiB window; FLG 0x01
     * makes CMF * 256 + FLG a multiple of 31), stored blocks. */
    const size_t raw = raw_size(width, height);
    c = o;
    memcpy(c + 4, "IDAT", 4);
    uint8_t *d = c + 8;
    *d++ = 0x78;
    *d++ = 0x01;
    uint32_t adler = 1;
    size_t done = 0, block_left = 0;
    for (size_t y = 0; y < height; y++)
        for (size_t x = 0; x <= 3 * width; x++) { /* x == 0: the row's filter byte */
            if (!block_left) {
                const size_t len = raw - done < STORED_MAX ? raw - done : STORED_MAX;
                *d++ = (uint8_t)(done + len == raw); /* BFINAL, BTYPE 00 */
                d[0] = (uint8_t)len, d[1] = (uint8_t)(len >> 8);
                d[2] = (uint8_t)~len, d[3] = (uint8_t)(~len >> 8);
                d += 4;
                block_left = len;
            }
            const uint8_t byte = x ? rgb[y * 3 * width + x - 1] : 0;
            *d++ = byte;
            adler = ex_png_adler32(adler, &byte, 1);
            done++;
            block_left--;
        }
    d = put32(d, adler);
    o = chunk_close(c, (size_t)(d - (c + 8)));
    c = o;
    memcpy(c + 4, "IEND", 4);
    o = chunk_close(c, 0);
    return (size_t)(o - out);
}

int ex_png_write(const char *path, const uint8_t *rgb, size_t width, size_t height,
                 const char *what)
{
    const size_t n = ex_png_size(width, height);
    if (!n || !rgb || !path) {
        fprintf(stderr, "error: %s: a %zu x %zu image cannot be written as PNG\n", what, width,
                height);
        return 0;
    }
    uint8_t *buf = malloc(n);
    if (!buf) {
        fprintf(stderr, "error: %s: out of memory for %zu bytes\n", what, n);
        return 0;
    }
    const size_t len = ex_png_encode(rgb, width, height, buf, n);
    ex_out o;
    int ok = len == n && ex_out_open(&o, path, what);
    if (ok) {
        ok = fwrite(buf, 1, len, o.f) == len;
        if (ok)
            ok = ex_out_commit(&o, what);
        else {
            fprintf(stderr, "error: %s: write failed\n", what);
            ex_out_discard(&o);
        }
    }
    free(buf);
    return ok;
}
