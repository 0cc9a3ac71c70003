/* crc32c: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum of journal records; SSE4.2 when the CPU has it, a table else. */
#ifndef BERTH_CRC32C_H
#define BERTH_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues crc over len bytes; start with crc 0. crc32c(0, "123456789", 9)
 * is 0xE3069283. Thread-safe. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

/* The portable table version, exported so tests compare both paths. */
uint32_t crc32c_sw(uint32_t crc, const void *data, size_t len);

#endif
