/* fuzz_session: libFuzzer target for the node's session protocol: client
 * bytes go in through session_feed (no socket, no TLS) in chunks, with a
 * fake clock, timer sweeps and optionally a drain; every byte the session
 * answers must decode as well-formed frames. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "node_stats.h"
#include "session.h"

static struct node_worker_stats fuzz_ws;
static struct node_stats fuzz_stats = {.nworkers = 1, .workers = &fuzz_ws};

/* Checks and drops everything the session wrote so far; returns the
 * number of frames, and whether a closing frame (ERROR, BYE) was seen. */
static void check_output(struct session *s, bool *final_seen)
{
    struct buf *out = session_output(s);
    while (buf_size(out) > 0) {
        struct frame f;
        enum frame_error err = FRAME_ERR_NONE;
        memset(&f, 0, sizeof f);
        long n = frame_decode(buf_head(out), buf_size(out), UINT32_MAX, &f, &err);
        if (n <= 0)
            abort(); /* the node wrote a partial or malformed frame */
        if (*final_seen)
            abort(); /* nothing may follow the frame that closes the session */
        switch (f.h.type) {
        case FRAME_WELCOME: {
            struct frame_welcome w;
            if (frame_parse_welcome(&f, &w) != 0)
                abort();
            break;
        }
        case FRAME_ACK: {
            struct frame_ack a;
            if (frame_parse_ack(&f, &a) != 0)
                abort();
            break;
        }
        case FRAME_ERROR: {
            struct frame_error_body e;
            if (frame_parse_error(&f, &e) != 0 || e.code == 0 || e.code >= FRAME_ERR_COUNT)
                abort();
            *final_seen = true;
            break;
        }
        case FRAME_BYE:
            *final_seen = true;
            break;
        case FRAME_PONG:
        case FRAME_ECHO_REPLY:
        case FRAME_INFO_REPLY:
            break;
        default:
            abort(); /* the node answers with replies only */
        }
        session_output_consume(s, (size_t)n);
    }
}

/* Input: 3 control bytes (chunk size, settings, clock step), then the
 * client's byte stream. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t max_frames[4] = {1024, 4096, 65536, FRAME_DEFAULT_MAX_PAYLOAD};
    if (size < 3)
        return 0;
    size_t chunk = (size_t)data[0] + 1;
    uint8_t settings = data[1];
    uint64_t step = data[2]; /* ms the clock moves per chunk */
    data += 3;
    size -= 3;

    struct session_env env = {
        .node_id = "fuzz-node",
        .advertise = "127.0.0.1:7443",
        .start_ms = 1000,
        .max_frame = max_frames[settings & 3],
        .idle_timeout_ms = 2000,
        .handshake_timeout_ms = 1000,
        .max_connections = 10,
        .max_output = (settings & 4) ? 65536 : 4u << 20,
        .max_inflight = (settings & 8) ? 4 : 1024,
        .stats = &fuzz_stats,
    };
    uint64_t now = 1000;
    struct session *s = session_new(&env, &fuzz_ws, 42, "127.0.0.1:40000", NULL, now);
    if (!s)
        return 0;
    bool final_seen = false;
    while (size > 0) {
        size_t n = size < chunk ? size : chunk;
        if (session_feed(s, data, n, now) != 0)
            break;
        data += n;
        size -= n;
        check_output(s, &final_seen);
        /* The output was consumed: let the session go on with what it held back. */
        session_feed(s, NULL, 0, now);
        check_output(s, &final_seen);
        now += step;
        session_sweep(s, now);
        check_output(s, &final_seen);
    }
    if (settings & 8) {
        session_drain(s, now);
        check_output(s, &final_seen);
    }
    if (settings & 16) {
        session_sweep(s, now + 10000);
        check_output(s, &final_seen);
    }
    enum session_state st = session_state(s);
    if (final_seen && st == SESSION_OPEN)
        abort(); /* an ERROR or BYE went out but the session stays open */
    session_free(s);
    return 0;
}
