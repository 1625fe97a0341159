/*
 * A tiny PNG writer without dependencies: 8-bit RGB, no interlace, every
 * row with filter 0 (none), the image data in one zlib stream of stored
 * (uncompressed) deflate blocks, with the CRC-32 of every chunk and the
 * Adler-32 of the stream. Any PNG reader decodes it; it is large (3 bytes a
 * pixel plus ~0.1%), which is fine for the examples' small pictures.
 */
#ifndef EX_PNG_H
#define EX_PNG_H

#include <stddef.h>
#include <stdint.h>

/* Largest side accepted (keeps every size computation far from overflow). */
#define EX_PNG_MAX_SIDE 16384

/* Bytes of the PNG ex_png_encode() makes for a width x height image (0 for
 * a size outside 1..EX_PNG_MAX_SIDE). */
size_t ex_png_size(size_t width, size_t height);

/* Encode rgb (height rows of width pixels, 3 bytes each: R, G, B, rows top
 * to bottom) into out, which holds cap bytes (at least ex_png_size()).
 * Returns the bytes written, or 0 for a bad size, NULL pointers or a short
 * buffer. */
size_t ex_png_encode(const uint8_t *rgb, size_t width, size_t height, uint8_t *out, size_t cap);

/* Write the PNG to path (through ex_out: the file appears only when
 * complete). 1, or 0 after a message on stderr naming what. */
int ex_png_write(const char *path, const uint8_t *rgb, size_t width, size_t height,
                 const char *what);

/* CRC-32 (ISO 3309, as PNG and zlib's crc32) and Adler-32 (RFC 1950) of n
 * bytes, continuing from crc / adler (start with 0 / 1). */
uint32_t ex_png_crc32(uint32_t crc, const uint8_t *p, size_t n);
uint32_t ex_png_adler32(uint32_t adler, const uint8_t *p, size_t n);

#endif /* EX_PNG_H */
