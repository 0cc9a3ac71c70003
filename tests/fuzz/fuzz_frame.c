/* fuzz_frame: libFuzzer target for the node protocol's frame codec: decodes
 * every frame in the input and runs every body parser on each one. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

/* The first 4 input bytes pick max_payload (as a session's --max-frame would),
 * the rest is a stream of frames as it would arrive on a connection. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint32_t max_payload = (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 |
                           (uint32_t)data[2] << 8 | data[3];
    data += 4;
    size -= 4;

    while (size > 0) {
        struct frame f;
        enum frame_error err = FRAME_ERR_NONE;
        memset(&f, 0, sizeof(f));
        long n = frame_decode(data, size, max_payload, &f, &err);
        if (n < 0) {
            /* A refusal names a real reason, and the names exist. */
            if (err <= FRAME_ERR_NONE || err >= FRAME_ERR_COUNT)
                abort();
            (void)frame_error_name(err);
            (void)frame_error_text(err);
            return 0;
        }
        if (n == 0)
            return 0;
        if ((size_t)n > size || (size_t)n != FRAME_HEADER_SIZE + f.h.length ||
            f.h.length > max_payload || frame_type_name(f.h.type) == NULL)
            abort();

        struct frame_hello hello;
        struct frame_welcome welcome;
        struct frame_send send;
        struct frame_ack ack;
        struct frame_error_body ebody;
        if (frame_parse_hello(&f, &hello) == 0 && strlen(hello.name) > FRAME_NAME_MAX)
            abort();
        if (frame_parse_welcome(&f, &welcome) == 0 && strlen(welcome.node_id) > FRAME_NODE_ID_MAX)
            abort();
        if (frame_parse_send(&f, &send) == 0 && send.len + 8 != f.h.length)
            abort();
        (void)frame_parse_ack(&f, &ack);
        if (frame_parse_error(&f, &ebody) == 0 && strlen(ebody.text) > 255)
            abort();

        /* What parses re-encodes to the same bytes (requests are exact). */
        if (f.h.type == FRAME_HELLO && frame_parse_hello(&f, &hello) == 0) {
            struct buf b;
            buf_init(&b);
            if (frame_append_hello_producer(&b, f.h.request_id, hello.version, hello.name,
                                            hello.producer[0] ? hello.producer : NULL) != 0 ||
                buf_size(&b) != (size_t)n || memcmp(buf_head(&b), data, (size_t)n) != 0)
                abort();
            buf_release(&b);
        }
        if (f.h.type == FRAME_SEND && frame_parse_send(&f, &send) == 0) {
            struct buf b;
            buf_init(&b);
            if (frame_append_send(&b, f.h.request_id, send.message_id, send.data, send.len) != 0 ||
                buf_size(&b) != (size_t)n || memcmp(buf_head(&b), data, (size_t)n) != 0)
                abort();
            buf_release(&b);
        }
        data += n;
        size -= (size_t)n;
    }
    return 0;
}
