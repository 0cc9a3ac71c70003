/* fuzz_hb_msg: libFuzzer target for the heartbeat codec: hb_msg_decode on
 * arbitrary bytes, and for what decodes, encode and decode again: the
 * second decode must give the same message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hb_msg.h"

static void same_or_abort(const struct hb_msg *a, const struct hb_msg *b)
{
    if (a->type != b->type || strcmp(a->node_id, b->node_id) != 0)
        abort();
    switch (a->type) {
    case HB_REGISTER:
        if (a->boot_id != b->boot_id || a->seq != b->seq || strcmp(a->addr, b->addr) != 0 ||
            a->capacity != b->capacity || strcmp(a->version, b->version) != 0)
            abort();
        break;
    case HB_HEARTBEAT:
        if (a->boot_id != b->boot_id || a->seq != b->seq || a->sessions != b->sessions ||
            a->accepted != b->accepted || a->msgs_per_sec != b->msgs_per_sec ||
            a->healthy != b->healthy || a->draining != b->draining ||
            strcmp(a->reason, b->reason) != 0 || a->nworkers != b->nworkers)
            abort();
        for (uint32_t i = 0; i < a->nworkers; i++)
            if (a->workers[i].ticks != b->workers[i].ticks ||
                a->workers[i].handshakes_ok != b->workers[i].handshakes_ok ||
                a->workers[i].handshakes_failed != b->workers[i].handshakes_failed)
                abort();
        break;
    case HB_LEAVE:
        if (a->boot_id != b->boot_id || a->seq != b->seq)
            abort();
        break;
    case HB_ACK:
    case HB_REREGISTER:
        if (a->interval_ms != b->interval_ms || a->epoch != b->epoch)
            abort();
        break;
    case HB_TYPE_COUNT:
    default:
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct hb_msg m, again; /* ~2 KiB each: off the fuzzer's stack */
    char err[256];
    err[0] = '\0';
    if (hb_msg_decode(data, size, &m, err, sizeof err) != 0) {
        if (err[0] == '\0') /* a refusal always says why */
            abort();
        return 0;
    }
    if (!hb_node_id_valid(m.node_id))
        abort();
    size_t len = 0;
    char *text = hb_msg_encode(&m, &len, err, sizeof err);
    /* What the decoder accepts, the encoder must be able to write. */
    if (!text)
        abort();
    if (hb_msg_decode(text, len, &again, err, sizeof err) != 0)
        abort();
    same_or_abort(&m, &again);
    free(text);
    return 0;
}
