/*
 * CRC-32C (Castagnoli; iSCSI, RFC 3720), internal: the checksum of
 * checkpoint files (checkpoint.h). Reflected polynomial 0x82F63B78,
 * register preset to all ones and inverted at the end, so "123456789"
 * gives 0xE3069283. It detects every single-bit error, every burst of up
 * to 32 bits, and every error of 2 or 3 bits in up to 2^31 - 33 bits
 * (256 MiB; Koopman's tables: Hamming distance 4 up to that length).
 *
 * Chaining: tb_crc32c(tb_crc32c(0, a, na), b, nb) equals tb_crc32c(0, a||b),
 * so a checksum may be taken piece by piece; 0 is the CRC of no bytes.
 * Any length and alignment.
 *
 * Two implementations give the same value: slice-by-8 tables in portable C,
 * and the SSE4.2 crc32 instruction on x86-64 CPUs that have it, chosen at
 * run time by tb_crc32c() (test_checkpoint.c compares them).
 */
#ifndef TB_CORE_CRC32C_H
#define TB_CORE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC of `crc`'s bytes followed by data[0..n), on the best path. */
uint32_t tb_crc32c(uint32_t crc, const void *data, size_t n);

/* The same in portable C (slice-by-8). */
uint32_t tb_crc32c_portable(uint32_t crc, const void *data, size_t n);

/* Whether this CPU and build have the hardware path. */
int tb_crc32c_hw_available(void);

/* The same with the SSE4.2 crc32 instruction; call only when
 * tb_crc32c_hw_available(). */
uint32_t tb_crc32c_hw(uint32_t crc, const void *data, size_t n);

/* Slice-by-8 tables (crc32c_table.c, generated): table k maps a byte to the
 * register after that byte and k zero bytes. */
extern const uint32_t tb_crc32c_table[8][256];

#endif /* TB_CORE_CRC32C_H */
