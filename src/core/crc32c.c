/* CRC-32C (crc32c.h): slice-by-8 in portable C, SSE4.2 chosen at run time. */
#include "crc32c.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TB_CRC32C_X86 1
#include <nmmintrin.h>
#endif

/* Four bytes as a little-endian word (whatever the host's byte order). */
static inline uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t tb_crc32c_portable(uint32_t crc, const void *data, size_t n)
{
    const uint32_t(*t)[256] = tb_crc32c_table;
    const unsigned char *p = data;
    uint32_t c = ~crc;
    for (; n >= 8; n -= 8, p += 8) {
        const uint32_t lo = load_le32(p) ^ c, hi = load_le32(p + 4);
        c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
            t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
    }
    for (; n; n--, p++)
        c = t[0][(c ^ *p) & 0xFF] ^ (c >> 8);
    return ~c;
}

#ifdef TB_CRC32C_X86
int tb_crc32c_hw_available(void)
{
    return __builtin_cpu_supports("sse4.2");
}

/* Polynomials mod P in the reflected form of the CRC register: bit 31 is
 * the coefficient of x^0, bit 0 that of x^31. a * b mod P. */
static uint32_t gf2_mul(uint32_t a, uint32_t b)
{
    uint32_t p = 0;
    for (int i = 0; i < 32; i++) {
        if (a & (0x80000000u >> i))
            p ^= b;
        b = (b >> 1) ^ ((b & 1) ? 0x82F63B78u : 0); /* b * x: x^32 = P - x^32 */
    }
    return p;
}

/* x^k mod P. */
static uint32_t gf2_xpow(uint64_t k)
{
    uint32_t r = 0x80000000u, base = 0x40000000u; /* x^0, x^1 */
    for (; k; k >>= 1) {
        if (k & 1)
            r = gf2_mul(r, base);
        base = gf2_mul(base, base);
    }
    return r;
}

/* The raw register (no inversions) after n bytes, one crc32 at a time. */
__attribute__((target("sse4.2"))) static uint32_t hw_stream(uint32_t c, const unsigned char *p,
                                                             size_t n)
{
    uint64_t c64 = c;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, sizeof w); /* x86 is little-endian: the file's byte order */
        c64 = _mm_crc32_u64(c64, w);
    }
    c = (uint32_t)c64;
    for (; n; n--, p++)
        c = _mm_crc32_u8(c, *p);
    return c;
}

/* Large inputs run as three streams over consecutive thirds at once (the
 * instruction's latency is three times its throughput), combined at the
 * end: the register is linear, reg(c, A B) = reg(c, A) x^(8|B|) + reg(0, B). */
__attribute__((target("sse4.2"))) uint32_t tb_crc32c_hw(uint32_t crc, const void *data,
                                                         size_t n)
{
    const unsigned char *p = data;
    if (n < 4096)
        return ~hw_stream(~crc, p, n);
    const size_t third = n / 3 / 8 * 8;
    const unsigned char *a = p, *b = p + third, *c = p + 2 * third;
    uint64_t ca = ~crc, cb = 0, cc = 0;
    for (size_t i = 0; i < third; i += 8) {
        uint64_t wa, wb, wc;
        memcpy(&wa, a + i, 8);
        memcpy(&wb, b + i, 8);
        memcpy(&wc, c + i, 8);
        ca = _mm_crc32_u64(ca, wa);
        cb = _mm_crc32_u64(cb, wb);
        cc = _mm_crc32_u64(cc, wc);
    }
    const uint32_t shift = gf2_xpow(8 * (uint64_t)third);
    uint32_t r = gf2_mul((uint32_t)ca, shift) ^ (uint32_t)cb;
    r = gf2_mul(r, shift) ^ (uint32_t)cc;
    return ~hw_stream(r, p + 3 * third, n - 3 * third);
}
#else
int tb_crc32c_hw_available(void)
{
    return 0;
}

uint32_t tb_crc32c_hw(uint32_t crc, const void *data, size_t n)
{
    return tb_crc32c_portable(crc, data, n);
}
#endif

uint32_t tb_crc32c(uint32_t crc, const void *data, size_t n)
{
    return tb_crc32c_hw_available() ? tb_crc32c_hw(crc, data, n) : tb_crc32c_portable(crc, data, n);
}
