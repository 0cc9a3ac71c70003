/* fuzz_feed_msg: libFuzzer target for the feed's message codec: decodes the
 * input as one message, and re-encodes what decodes to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "feed_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct feed_msg m;
    if (feed_msg_decode(data, size, &m) != 0)
        return 0;
    if (m.name && m.name_len > FEED_NODE_ID_MAX)
        abort();
    (void)feed_err_name(m.code);
    if (m.type == FEED_MSG_RECORD)
        return 0; /* its body is journal_record's (fuzz_journal_record) */
    uint8_t out[FEED_MSG_MAX + FEED_ERROR_TEXT_MAX];
    size_t n = feed_msg_encode(&m, out, sizeof(out));
    /* ERROR texts past the limit are refused by the encoder, never sent. */
    if (m.type == FEED_MSG_ERROR && m.body_len > FEED_ERROR_TEXT_MAX) {
        if (n != 0)
            abort();
        return 0;
    }
    if (n != size || memcmp(out, data, size) != 0)
        abort();
    return 0;
}
