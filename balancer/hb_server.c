/* hb_server: the heartbeat ROUTER socket: reads node messages, applies them
 * to the registry, answers ACK/REREGISTER, and counts what it refuses. */
#include "hb_server.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "hb_msg.h"
#include "log.h"
#include "mono.h"

/* Messages handled per hb_server_drain call: enough to empty any normal
 * backlog, small enough that a flood still lets the HTTP side run. */
#define HB_DRAIN_BATCH 4096
/* At most one warning line per reason per this many ms. */
#define HB_LOG_PERIOD_MS 1000
/* Generous queues: a few thousand nodes may all heartbeat in one interval. */
#define HB_HWM 100000

static const char *const reject_names[HB_REJECT_COUNT] = {
    [HB_REJECT_FRAMES] = "frames",
    [HB_REJECT_EMPTY] = "empty",
    [HB_REJECT_OVERSIZE] = "oversize",
    [HB_REJECT_PARSE] = "parse",
    [HB_REJECT_TYPE] = "type",
    [HB_REJECT_FIELD] = "field",
    [HB_REJECT_UNEXPECTED] = "unexpected",
    [HB_REJECT_FULL] = "full",
    [HB_REJECT_HANDSHAKE] = "handshake",
};

const char *hb_reject_name(enum hb_reject r)
{
    return (unsigned)r < HB_REJECT_COUNT ? reject_names[r] : "unknown";
}

/* Rate limit of the warning for one reject reason. */
struct reject_log {
    uint64_t last_ms;    /* when the last line was written; 0 = never */
    uint64_t suppressed; /* rejects not logged since that line */
};

struct hb_server {
    void *router;             /* the ROUTER nodes' DEALERs connect to */
    void *monitor;            /* PAIR receiving the ROUTER's handshake-failure events */
    bool monitoring;          /* zmq_socket_monitor is active on router */
    struct registry *reg;     /* borrowed */
    char endpoint[256];       /* ZMQ_LAST_ENDPOINT after bind */
    struct hb_server_stats stats;
    struct reject_log logs[HB_REJECT_COUNT];
};

static void set_err(char *err, size_t errlen, const char *what)
{
    if (err && errlen)
        snprintf(err, errlen, "%s: %s", what, zmq_strerror(zmq_errno()));
}

/* Copies text into out for a quoted log value: quotes and control bytes
 * from the network would break the key=value line. */
static void log_sanitize(const char *in, size_t inlen, char *out, size_t outlen)
{
    size_t j = 0;
    for (size_t i = 0; i < inlen && in[i] && j + 1 < outlen; i++) {
        unsigned char c = (unsigned char)in[i];
        out[j++] = (c == '"' || c == '\\') ? '\'' : (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    out[j] = '\0';
}

/* Counts a reject and warns about it, at most once a second per reason. */
static void reject(struct hb_server *s, enum hb_reject r, const char *peer, const char *detail)
{
    s->stats.rejected[r]++;
    if (r != HB_REJECT_HANDSHAKE)
        s->stats.dropped++;

    struct reject_log *rl = &s->logs[r];
    uint64_t now = mono_now_ms();
    if (rl->last_ms != 0 && now - rl->last_ms < HB_LOG_PERIOD_MS) {
        rl->suppressed++;
        return;
    }
    char clean[200];
    log_sanitize(detail ? detail : "", SIZE_MAX, clean, sizeof clean);
    log_warn("hb_rejected", "reason=%s peer=%s detail=\"%s\" suppressed=%" PRIu64,
             hb_reject_name(r), peer && *peer ? peer : "-", clean, rl->suppressed);
    rl->last_ms = now;
    rl->suppressed = 0;
}

/* Sorts a decode failure into parse / type / field by looking at the JSON
 * ourselves, so the counters do not depend on the codec's error wording. */
static enum hb_reject classify_decode_failure(const void *data, size_t len)
{
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    if (!root)
        return HB_REJECT_PARSE;
    enum hb_reject r = HB_REJECT_FIELD;
    if (!json_is_object(root)) {
        r = HB_REJECT_PARSE;
    } else {
        const char *type = json_string_value(json_object_get(root, "type"));
        bool known = false;
        for (int t = 0; type && t < HB_TYPE_COUNT; t++)
            if (strcmp(type, hb_type_name((enum hb_type)t)) == 0)
                known = true;
        if (!known)
            r = HB_REJECT_TYPE;
    }
    json_decref(root);
    return r;
}

/* Sends [routing id][reply]; a reply the socket will not take is dropped
 * and counted (the node retries on its own schedule). */
static void send_reply(struct hb_server *s, zmq_msg_t *id, enum hb_type type, const char *node_id)
{
    struct hb_msg reply;
    memset(&reply, 0, sizeof reply);
    reply.type = type;
    snprintf(reply.node_id, sizeof reply.node_id, "%s", node_id);
    reply.interval_ms = registry_config(s->reg)->interval_ms;
    reply.epoch = registry_epoch(s->reg);

    char err[128];
    size_t len = 0;
    char *json = hb_msg_encode(&reply, &len, err, sizeof err);
    if (!json) {
        /* Only possible on out of memory: every field came from a valid message. */
        log_error("hb_reply_failed", "node_id=%s detail=\"%s\"", node_id, err);
        s->stats.replies_failed++;
        return;
    }

    zmq_msg_t idcopy;
    if (zmq_msg_init(&idcopy) != 0 || zmq_msg_copy(&idcopy, id) != 0) {
        free(json);
        s->stats.replies_failed++;
        return;
    }
    int rc = zmq_msg_send(&idcopy, s->router, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc == -1) {
        zmq_msg_close(&idcopy);
    } else {
        /* ROUTER accepts the body once the id went through: when the peer's
         * queue is full or the peer is gone it discards silently. */
        rc = zmq_send(s->router, json, len, ZMQ_DONTWAIT);
    }
    free(json);
    if (rc == -1) {
        s->stats.replies_failed++;
        log_debug("hb_reply_dropped", "node_id=%s detail=\"%s\"", node_id,
                  zmq_strerror(zmq_errno()));
        return;
    }
    s->stats.replies_sent++;
}

static void handle_body(struct hb_server *s, zmq_msg_t *id, const void *data, size_t len,
                        const char *peer)
{
    struct hb_msg m;
    char err[160];
    if (hb_msg_decode(data, len, &m, err, sizeof err) != 0) {
        reject(s, classify_decode_failure(data, len), peer, err);
        return;
    }

    log_debug("hb_msg", "type=%s node_id=%s seq=%" PRIu64 " peer=%s", hb_type_name(m.type),
              m.node_id, m.seq, peer && *peer ? peer : "-");

    enum hb_type reply = HB_ACK;
    switch (m.type) {
    case HB_REGISTER:
        switch (registry_register(s->reg, &m)) {
        case 0:
            break;
        case REGISTRY_FULL:
            reject(s, HB_REJECT_FULL, peer, "registry full (--max-nodes)");
            return;
        default:
            /* No answer: the node registers again when it hears nothing. */
            log_error("hb_register_failed", "node_id=%s detail=\"out of memory\"", m.node_id);
            return;
        }
        break;
    case HB_HEARTBEAT:
        if (registry_heartbeat(s->reg, &m) == REGISTRY_UNKNOWN)
            reply = HB_REREGISTER;
        break;
    case HB_LEAVE:
        /* A leaving node is always acknowledged, even when unknown: a
         * REREGISTER would invite it back into the registry. */
        (void)registry_leave(s->reg, &m);
        break;
    case HB_ACK:
    case HB_REREGISTER:
    default: {
        char detail[64];
        snprintf(detail, sizeof detail, "a node sent \"%s\"", hb_type_name(m.type));
        reject(s, HB_REJECT_UNEXPECTED, peer, detail);
        return;
    }
    }
    send_reply(s, id, reply, m.node_id);
}

/* Receives the rest of a multipart message and throws it away. */
static void discard_rest(void *sock)
{
    int more = 1;
    size_t morelen = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &morelen) == 0 && more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        int rc = zmq_msg_recv(&part, sock, ZMQ_DONTWAIT);
        zmq_msg_close(&part);
        /* Parts of one message arrive together, so only EINTR can recur. */
        if (rc == -1 && zmq_errno() != EINTR)
            break;
    }
}

/* Reads one message. Returns 1 when one was handled, 0 when none waits. */
static int read_one(struct hb_server *s)
{
    zmq_msg_t id;
    zmq_msg_init(&id);
    int rc;
    do {
        rc = zmq_msg_recv(&id, s->router, ZMQ_DONTWAIT);
    } while (rc == -1 && zmq_errno() == EINTR);
    if (rc == -1) {
        if (zmq_errno() != EAGAIN)
            log_error("hb_recv_failed", "detail=\"%s\"", zmq_strerror(zmq_errno()));
        zmq_msg_close(&id);
        return 0;
    }
    s->stats.received++;

    if (!zmq_msg_more(&id)) {
        /* A ROUTER always prefixes the routing id; a lone frame cannot be a message. */
        reject(s, HB_REJECT_FRAMES, NULL, "no body frame");
        zmq_msg_close(&id);
        return 1;
    }

    zmq_msg_t body;
    zmq_msg_init(&body);
    do {
        rc = zmq_msg_recv(&body, s->router, ZMQ_DONTWAIT);
    } while (rc == -1 && zmq_errno() == EINTR);
    if (rc == -1) {
        log_error("hb_recv_failed", "detail=\"%s\"", zmq_strerror(zmq_errno()));
        zmq_msg_close(&body);
        zmq_msg_close(&id);
        return 1;
    }

    /* libzmq fills Peer-Address for TCP peers; it is only for the logs. */
    char peer[64] = "";
    const char *pa = zmq_msg_gets(&body, "Peer-Address");
    if (pa)
        log_sanitize(pa, SIZE_MAX, peer, sizeof peer);

    size_t len = zmq_msg_size(&body);
    if (zmq_msg_more(&body)) {
        discard_rest(s->router);
        reject(s, HB_REJECT_FRAMES, peer, "more than one body frame");
    } else if (len == 0) {
        reject(s, HB_REJECT_EMPTY, peer, "empty body");
    } else if (len > HB_MAX_MESSAGE) {
        /* ZMQ_MAXMSGSIZE already refuses these; kept as the codec's guard. */
        reject(s, HB_REJECT_OVERSIZE, peer, "body larger than 16 KiB");
    } else {
        handle_body(s, &id, zmq_msg_data(&body), len, peer);
    }
    zmq_msg_close(&body);
    zmq_msg_close(&id);
    return 1;
}

/* Reads one monitor event: [uint16 event, uint32 value][endpoint]. Returns
 * 1 when one was handled, 0 when none waits. */
static int read_monitor_event(struct hb_server *s)
{
    zmq_msg_t head;
    zmq_msg_init(&head);
    int rc;
    do {
        rc = zmq_msg_recv(&head, s->monitor, ZMQ_DONTWAIT);
    } while (rc == -1 && zmq_errno() == EINTR);
    if (rc == -1) {
        zmq_msg_close(&head);
        return 0;
    }
    uint16_t event = 0;
    uint32_t value = 0;
    if (zmq_msg_size(&head) >= 6) {
        memcpy(&event, zmq_msg_data(&head), sizeof event);
        memcpy(&value, (const char *)zmq_msg_data(&head) + 2, sizeof value);
    }
    bool more = zmq_msg_more(&head);
    zmq_msg_close(&head);

    char endpoint[128] = "";
    if (more) {
        zmq_msg_t ep;
        zmq_msg_init(&ep);
        if (zmq_msg_recv(&ep, s->monitor, ZMQ_DONTWAIT) >= 0)
            log_sanitize(zmq_msg_data(&ep), zmq_msg_size(&ep), endpoint, sizeof endpoint);
        bool epmore = zmq_msg_more(&ep);
        zmq_msg_close(&ep);
        if (epmore)
            discard_rest(s->monitor);
    }

    if (event & (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)) {
        /* The monitor names our endpoint, not the peer. */
        char detail[192];
        snprintf(detail, sizeof detail,
                 "ZeroMQ handshake failed on %s (event 0x%x, code 0x%" PRIx32 ")", endpoint,
                 (unsigned)event, value);
        reject(s, HB_REJECT_HANDSHAKE, NULL, detail);
    }
    return 1;
}

size_t hb_server_drain(struct hb_server *s)
{
    size_t n = 0;
    while (n < HB_DRAIN_BATCH && read_one(s))
        n++;
    for (size_t e = 0; e < HB_DRAIN_BATCH && s->monitor && read_monitor_event(s); e++)
        ;
    return n;
}

static int set_int(void *sock, int opt, int value)
{
    return zmq_setsockopt(sock, opt, &value, sizeof value);
}

struct hb_server *hb_server_new(void *zmq_ctx, const char *endpoint, struct registry *reg,
                                char *err, size_t errlen)
{
    struct hb_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->reg = reg;

    s->router = zmq_socket(zmq_ctx, ZMQ_ROUTER);
    if (!s->router) {
        set_err(err, errlen, "zmq_socket(ROUTER)");
        goto fail;
    }
    int64_t maxmsg = HB_MAX_MESSAGE;
    if (zmq_setsockopt(s->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
        set_int(s->router, ZMQ_LINGER, 0) != 0 || set_int(s->router, ZMQ_SNDHWM, HB_HWM) != 0 ||
        set_int(s->router, ZMQ_RCVHWM, HB_HWM) != 0 ||
        set_int(s->router, ZMQ_ROUTER_MANDATORY, 0) != 0) {
        set_err(err, errlen, "zmq_setsockopt");
        goto fail;
    }

    /* The monitor must exist before bind so no early failure goes unseen. */
    char monitor_ep[64];
    snprintf(monitor_ep, sizeof monitor_ep, "inproc://berth-hb-monitor-%p", (void *)s);
    if (zmq_socket_monitor(s->router, monitor_ep,
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0) {
        set_err(err, errlen, "zmq_socket_monitor");
        goto fail;
    }
    s->monitoring = true;
    s->monitor = zmq_socket(zmq_ctx, ZMQ_PAIR);
    if (!s->monitor) {
        set_err(err, errlen, "zmq_socket(PAIR)");
        goto fail;
    }
    if (set_int(s->monitor, ZMQ_LINGER, 0) != 0 || zmq_connect(s->monitor, monitor_ep) != 0) {
        set_err(err, errlen, "monitor connect");
        goto fail;
    }

    if (zmq_bind(s->router, endpoint) != 0) {
        if (err && errlen)
            snprintf(err, errlen, "cannot bind heartbeat endpoint %s: %s", endpoint,
                     zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t eplen = sizeof s->endpoint;
    if (zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, s->endpoint, &eplen) != 0)
        snprintf(s->endpoint, sizeof s->endpoint, "%s", endpoint);
    return s;

fail:
    hb_server_free(s);
    return NULL;
}

void hb_server_free(struct hb_server *s)
{
    if (!s)
        return;
    if (s->monitoring)
        (void)zmq_socket_monitor(s->router, NULL, 0); /* stops and closes the inproc end */
    if (s->monitor)
        zmq_close(s->monitor);
    if (s->router)
        zmq_close(s->router);
    free(s);
}

const char *hb_server_endpoint(const struct hb_server *s)
{
    return s->endpoint;
}

void *hb_server_socket(const struct hb_server *s)
{
    return s->router;
}

void *hb_server_monitor_socket(const struct hb_server *s)
{
    return s->monitor;
}

void hb_server_stats(const struct hb_server *s, struct hb_server_stats *out)
{
    *out = s->stats;
}
