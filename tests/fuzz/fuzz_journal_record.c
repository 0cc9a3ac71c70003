/* fuzz_journal_record: libFuzzer target for the journal record codec: parses
 * every record in the input as recovery and berth tail do, and checks that
 * what parses re-encodes to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "be.h"
#include "journal_record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    while (size > 0) {
        uint32_t rl = 0;
        int h = journal_record_length(data, size, &rl);
        struct journal_record r;
        long n = journal_record_parse(data, size, &r);
        if (h < 0 && n >= 0)
            abort(); /* a bad header never parses */
        if (n <= 0)
            return 0;
        if ((size_t)n > size || (uint32_t)n != rl)
            abort();
        /* What parsed is what the writer would have built from it. */
        struct journal_entry e = {.message_id = r.message_id, .name = r.name,
                                  .name_len = r.name_len, .peer = r.peer, .peer_len = r.peer_len,
                                  .cert = r.cert, .cert_len = r.cert_len, .producer = r.producer,
                                  .producer_len = r.producer_len, .data = r.data,
                                  .len = r.len};
        if (journal_record_size(&e) != (size_t)n)
            abort();
        uint8_t hdr[JOURNAL_HEADER_SIZE];
        uint32_t crc = journal_record_header(hdr, r.seq, r.timestamp_ms, &e);
        if (memcmp(hdr, data, sizeof(hdr)) != 0 || crc != be_get32(data + n - 4))
            abort();
        data += n;
        size -= (size_t)n;
    }
    return 0;
}
