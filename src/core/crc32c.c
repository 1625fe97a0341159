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

__attribute__((target("sse4.2"))) uint32_t tb_crc32c_hw(uint32_t crc, const void *data,
                                                         size_t n)
{
    const unsigned char *p = data;
    uint64_t c = ~crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, sizeof w); /* x86 is little-endian: the file's byte order */
        c = _mm_crc32_u64(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; n--, p++)
        c32 = _mm_crc32_u8(c32, *p);
    return ~c32;
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
