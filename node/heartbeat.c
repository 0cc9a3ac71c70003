/* heartbeat: the DEALER side of the heartbeat channel: REGISTER, periodic
 * HEARTBEAT with jitter, LEAVE, ack/reregister handling, and Paranoid
 * Pirate reconnection when the balancer stays silent for HEARTBEAT_FALL
 * intervals. */
#include "heartbeat.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <zmq.h>

#include "log.h"

#define HEARTBEAT_RECV_BATCH 64      /* replies handled per call */
#define HEARTBEAT_RETRY_MS 50        /* REGISTER retry while the connection comes up */
#define HEARTBEAT_MIN_INTERVAL 10    /* bounds on an adopted interval_ms */
#define HEARTBEAT_MAX_INTERVAL 60000

struct heartbeat {
    void *zctx;  /* borrowed */
    void *sock;  /* the DEALER; replaced on reconnect; NULL if re-creating failed */
    char endpoint[512];
    char node_id[HB_NODE_ID_MAX + 1];
    char addr[HB_ADDR_MAX + 1];
    uint32_t capacity;
    uint32_t interval_ms;
    uint64_t boot_id;
    char cert_sha256[HB_CERT_SHA256_HEX + 1]; /* "" when not told */
    bool curve;                               /* CurveZMQ on the DEALER */
    struct keys_pair curve_keys;              /* the node's own */
    uint8_t curve_server_key[KEYS_LEN];       /* the balancer's public key */
    heartbeat_fill_fn fill;
    void *fill_arg;
    uint64_t seq;          /* last message number used */
    uint64_t next_send_ms; /* the next REGISTER or HEARTBEAT */
    uint64_t heard_ms;     /* last reply, or the last (re)connect */
    uint64_t replied_ms;   /* last reply; 0 = never */
    bool registered;       /* the balancer answered since our last REGISTER was due */
    bool connected;        /* the balancer answers; for the connected/lost logs */
    bool lost_logged;      /* balancer_lost logged for this silence */
    bool leaving;          /* LEAVE sent: repeat it after any REGISTER */
    uint64_t rng;          /* xorshift state for the jitter */
    uint64_t sent, dropped;
};

static uint64_t heartbeat_random(struct heartbeat *hb)
{
    /* xorshift64*: jitter only needs to spread nodes apart. */
    hb->rng ^= hb->rng >> 12;
    hb->rng ^= hb->rng << 25;
    hb->rng ^= hb->rng >> 27;
    return hb->rng * 2685821657736338717ull;
}

/* interval ±10%, so nodes started together do not heartbeat in lockstep. */
static uint64_t heartbeat_jittered(struct heartbeat *hb)
{
    uint64_t span = hb->interval_ms / 5; /* 20% */
    if (span == 0)
        return hb->interval_ms;
    return hb->interval_ms - hb->interval_ms / 10 + heartbeat_random(hb) % (span + 1);
}

static void *heartbeat_open(struct heartbeat *hb, char *err, size_t errlen)
{
    void *s = zmq_socket(hb->zctx, ZMQ_DEALER);
    if (!s) {
        snprintf(err, errlen, "zmq_socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int linger = 0, hwm = HEARTBEAT_SNDHWM, immediate = 1;
    int64_t maxmsg = HB_MAX_MESSAGE;
    /* A connect to a balancer that is restarting (no address yet) or cut
     * off would otherwise hang far longer than the liveness bound; and a
     * connection whose unacknowledged bytes sit for fall intervals is dead
     * (TCP_USER_TIMEOUT), so its stale queue is never delivered later. */
    int connect_timeout = (int)hb->interval_ms;
    int tcp_maxrt = (int)(HEARTBEAT_FALL * hb->interval_ms);
    /* Linger 0: a reconnect must not wait for a dead peer. Small HWM and
     * IMMEDIATE: a heartbeat is dropped rather than queued for a balancer
     * that is not there; a stale one is worthless anyway. */
    if (zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm)) != 0 ||
        zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof(hwm)) != 0 ||
        zmq_setsockopt(s, ZMQ_IMMEDIATE, &immediate, sizeof(immediate)) != 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg)) != 0 ||
        zmq_setsockopt(s, ZMQ_CONNECT_TIMEOUT, &connect_timeout, sizeof(connect_timeout)) != 0 ||
        zmq_setsockopt(s, ZMQ_TCP_MAXRT, &tcp_maxrt, sizeof(tcp_maxrt)) != 0) {
        snprintf(err, errlen, "zmq_setsockopt: %s", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    if (hb->curve &&
        (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, hb->curve_server_key, KEYS_LEN) != 0 ||
         zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, hb->curve_keys.public_key, KEYS_LEN) != 0 ||
         zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, hb->curve_keys.secret_key, KEYS_LEN) != 0)) {
        snprintf(err, errlen, "CURVE client set-up (libzmq built without CURVE?): %s",
                 zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    if (zmq_connect(s, hb->endpoint) != 0) {
        snprintf(err, errlen, "--balancer %s: %s", hb->endpoint, zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* Sends m stamped with our identity. 0 sent, 1 dropped (would block), -1 failed. */
static int heartbeat_send(struct heartbeat *hb, struct hb_msg *m)
{
    char err[256];
    size_t len = 0;
    snprintf(m->node_id, sizeof(m->node_id), "%s", hb->node_id);
    m->boot_id = hb->boot_id;
    m->seq = ++hb->seq;
    if (!hb->sock) {
        hb->dropped++;
        return 1;
    }
    char *data = hb_msg_encode(m, &len, err, sizeof(err));
    if (!data) {
        log_error("heartbeat_encode_failed", "type=%s reason=\"%s\"", hb_type_name(m->type), err);
        return -1;
    }
    int rc;
    do
        rc = zmq_send(hb->sock, data, len, ZMQ_DONTWAIT);
    while (rc < 0 && zmq_errno() == EINTR);
    free(data);
    if (rc < 0) {
        hb->dropped++;
        if (zmq_errno() == EAGAIN)
            return 1;
        log_warn("heartbeat_send_failed", "type=%s error=\"%s\"", hb_type_name(m->type),
                 zmq_strerror(zmq_errno()));
        return -1;
    }
    hb->sent++;
    return 0;
}

static int heartbeat_send_simple(struct heartbeat *hb, enum hb_type type)
{
    struct hb_msg m;
    memset(&m, 0, sizeof(m));
    m.type = type;
    if (type == HB_REGISTER) {
        snprintf(m.addr, sizeof(m.addr), "%s", hb->addr);
        m.capacity = hb->capacity;
        snprintf(m.version, sizeof(m.version), "%s", BERTH_VERSION);
        snprintf(m.cert_sha256, sizeof(m.cert_sha256), "%s", hb->cert_sha256);
    }
    return heartbeat_send(hb, &m);
}

/* REGISTER (and LEAVE again when leaving); schedules the next send. */
static void heartbeat_register(struct heartbeat *hb, uint64_t now)
{
    int rc = heartbeat_send_simple(hb, HB_REGISTER);
    if (rc == 0 && hb->leaving)
        heartbeat_send_simple(hb, HB_LEAVE);
    /* With ZMQ_IMMEDIATE a fresh connection refuses messages until it is up:
     * retry soon rather than an interval later. */
    uint64_t wait = heartbeat_jittered(hb);
    if (rc == 1 && wait > HEARTBEAT_RETRY_MS)
        wait = HEARTBEAT_RETRY_MS;
    hb->next_send_ms = now + wait;
}

struct heartbeat *heartbeat_new(void *zctx, const struct heartbeat_config *cfg,
                                heartbeat_fill_fn fill, void *fill_arg, uint64_t now_ms,
                                char *err, size_t errlen)
{
    if (!hb_node_id_valid(cfg->node_id)) {
        snprintf(err, errlen, "node id \"%s\" is not [A-Za-z0-9._-]{1,64}", cfg->node_id);
        return NULL;
    }
    if (strlen(cfg->endpoint) >= sizeof(((struct heartbeat *)0)->endpoint) ||
        strlen(cfg->addr) > HB_ADDR_MAX) {
        snprintf(err, errlen, "balancer endpoint or address too long");
        return NULL;
    }
    if (cfg->cert_sha256 && cfg->cert_sha256[0] && strlen(cfg->cert_sha256) != HB_CERT_SHA256_HEX) {
        snprintf(err, errlen, "certificate digest is not %d hex digits", HB_CERT_SHA256_HEX);
        return NULL;
    }
    if (!cfg->curve_keys != !cfg->curve_server_key) {
        snprintf(err, errlen, "CURVE needs both the node's key pair and the balancer's key");
        return NULL;
    }
    struct heartbeat *hb = calloc(1, sizeof(*hb));
    if (!hb) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    hb->zctx = zctx;
    snprintf(hb->endpoint, sizeof(hb->endpoint), "%s", cfg->endpoint);
    snprintf(hb->node_id, sizeof(hb->node_id), "%s", cfg->node_id);
    snprintf(hb->addr, sizeof(hb->addr), "%s", cfg->addr);
    hb->capacity = cfg->capacity;
    hb->interval_ms = cfg->interval_ms ? cfg->interval_ms : 250;
    hb->boot_id = cfg->boot_id;
    snprintf(hb->cert_sha256, sizeof(hb->cert_sha256), "%s", cfg->cert_sha256 ? cfg->cert_sha256 : "");
    if (cfg->curve_keys) {
        hb->curve = true;
        hb->curve_keys = *cfg->curve_keys;
        memcpy(hb->curve_server_key, cfg->curve_server_key, KEYS_LEN);
    }
    hb->fill = fill;
    hb->fill_arg = fill_arg;
    hb->rng = cfg->boot_id ? cfg->boot_id : 0x9e3779b97f4a7c15ull;
    hb->sock = heartbeat_open(hb, err, errlen);
    if (!hb->sock) {
        heartbeat_free(hb, 0);
        return NULL;
    }
    hb->heard_ms = now_ms;
    heartbeat_register(hb, now_ms);
    return hb;
}

void heartbeat_free(struct heartbeat *hb, int linger_ms)
{
    if (!hb)
        return;
    if (hb->sock) {
        /* Best effort: a failure only means the LEAVE may be lost. */
        (void)zmq_setsockopt(hb->sock, ZMQ_LINGER, &linger_ms, sizeof(linger_ms));
        zmq_close(hb->sock);
    }
    OPENSSL_cleanse(&hb->curve_keys, sizeof(hb->curve_keys));
    free(hb);
}

void *heartbeat_socket(const struct heartbeat *hb) { return hb->sock; }
uint32_t heartbeat_interval_ms(const struct heartbeat *hb) { return hb->interval_ms; }
bool heartbeat_connected(const struct heartbeat *hb) { return hb->connected; }
uint64_t heartbeat_sent(const struct heartbeat *hb) { return hb->sent; }
uint64_t heartbeat_dropped(const struct heartbeat *hb) { return hb->dropped; }

bool heartbeat_reached(const struct heartbeat *hb, uint64_t now_ms)
{
    return hb->replied_ms != 0 &&
           now_ms - hb->replied_ms <= (uint64_t)HEARTBEAT_FALL * hb->interval_ms;
}

void heartbeat_fill_peers(struct heartbeat *const *hbs, unsigned n, struct hb_msg *m,
                          uint64_t now_ms)
{
    m->nbalancers = 0;
    for (unsigned i = 0; i < n && i < HB_MAX_BALANCERS; i++) {
        struct hb_peer *p = &m->balancers[m->nbalancers++];
        /* node/main.c keeps endpoints within HB_ENDPOINT_MAX; cut, never overrun */
        size_t len = strnlen(hbs[i]->endpoint, HB_ENDPOINT_MAX);
        memcpy(p->endpoint, hbs[i]->endpoint, len);
        p->endpoint[len] = '\0';
        p->reached = heartbeat_reached(hbs[i], now_ms);
    }
}

static uint64_t heartbeat_lost_at(const struct heartbeat *hb)
{
    return hb->heard_ms + (uint64_t)HEARTBEAT_FALL * hb->interval_ms;
}

long heartbeat_timeout_ms(const struct heartbeat *hb, uint64_t now_ms)
{
    uint64_t due = hb->next_send_ms;
    if (heartbeat_lost_at(hb) < due)
        due = heartbeat_lost_at(hb);
    return due > now_ms ? (long)(due - now_ms) : 0;
}

static void heartbeat_on_reply(struct heartbeat *hb, const struct hb_msg *m, uint64_t now)
{
    if (m->type != HB_ACK && m->type != HB_REREGISTER) {
        log_warn("heartbeat_bad_reply", "reason=\"unexpected type %s\"", hb_type_name(m->type));
        return;
    }
    if (strcmp(m->node_id, hb->node_id) != 0) {
        log_warn("heartbeat_bad_reply", "reason=\"reply for node %s\"", m->node_id);
        return;
    }
    hb->heard_ms = now;
    hb->replied_ms = now;
    hb->lost_logged = false;
    if (!hb->connected) {
        hb->connected = true;
        log_info("balancer_connected", "balancer=%s epoch=%" PRIu64 " interval_ms=%u",
                 hb->endpoint, m->epoch, m->interval_ms);
    }
    if (m->interval_ms >= HEARTBEAT_MIN_INTERVAL && m->interval_ms <= HEARTBEAT_MAX_INTERVAL &&
        m->interval_ms != hb->interval_ms) {
        log_info("heartbeat_interval", "from_ms=%u to_ms=%u", hb->interval_ms, m->interval_ms);
        uint64_t old = hb->interval_ms;
        hb->interval_ms = m->interval_ms;
        /* A shorter interval takes effect now, not after the old one. */
        if (m->interval_ms < old && hb->next_send_ms > now + m->interval_ms)
            hb->next_send_ms = now + m->interval_ms;
    }
    if (m->type == HB_ACK) {
        hb->registered = true;
    } else {
        log_info("balancer_reregister", "balancer=%s", hb->endpoint);
        hb->registered = false;
        heartbeat_register(hb, now);
    }
}

void heartbeat_on_readable(struct heartbeat *hb, uint64_t now_ms)
{
    for (int i = 0; hb->sock && i < HEARTBEAT_RECV_BATCH; i++) {
        zmq_msg_t msg;
        if (zmq_msg_init(&msg) != 0)
            return;
        int rc = zmq_msg_recv(&msg, hb->sock, ZMQ_DONTWAIT);
        if (rc < 0) {
            int e = zmq_errno();
            zmq_msg_close(&msg);
            if (e == EINTR)
                continue;
            if (e != EAGAIN)
                log_warn("heartbeat_recv_failed", "error=\"%s\"", zmq_strerror(e));
            return;
        }
        bool multipart = zmq_msg_more(&msg);
        if (multipart) {
            /* One JSON frame per message: drop every part of this one. */
            log_warn("heartbeat_bad_reply", "reason=\"multipart message\"");
            zmq_msg_close(&msg);
            while (multipart) {
                if (zmq_msg_init(&msg) != 0 || zmq_msg_recv(&msg, hb->sock, ZMQ_DONTWAIT) < 0) {
                    zmq_msg_close(&msg);
                    break;
                }
                multipart = zmq_msg_more(&msg);
                zmq_msg_close(&msg);
            }
            continue;
        }
        struct hb_msg m;
        char err[256];
        if (hb_msg_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), &m, err, sizeof(err)) != 0)
            log_warn("heartbeat_bad_reply", "reason=\"%s\"", err);
        else
            heartbeat_on_reply(hb, &m, now_ms);
        zmq_msg_close(&msg);
    }
}

/* Paranoid Pirate: a new socket drops whatever state the old connection
 * was stuck in; then REGISTER again. */
static void heartbeat_reconnect(struct heartbeat *hb, uint64_t now)
{
    if (!hb->lost_logged) {
        log_warn("balancer_lost", "balancer=%s silent_ms=%" PRIu64, hb->endpoint,
                 now - hb->heard_ms);
        hb->lost_logged = true;
    }
    hb->connected = false;
    hb->registered = false;
    if (hb->sock)
        zmq_close(hb->sock);
    char err[256];
    hb->sock = heartbeat_open(hb, err, sizeof(err));
    if (!hb->sock)
        log_error("balancer_reconnect_failed", "reason=\"%s\"", err);
    hb->heard_ms = now;
    heartbeat_register(hb, now);
}

void heartbeat_tick(struct heartbeat *hb, uint64_t now_ms)
{
    if (now_ms >= heartbeat_lost_at(hb)) {
        heartbeat_reconnect(hb, now_ms);
        return;
    }
    if (now_ms < hb->next_send_ms)
        return;
    if (!hb->registered) {
        heartbeat_register(hb, now_ms);
        return;
    }
    struct hb_msg m;
    memset(&m, 0, sizeof(m));
    m.type = HB_HEARTBEAT;
    m.healthy = true;
    if (hb->fill)
        hb->fill(hb->fill_arg, &m, now_ms);
    /* Not taken (the connection is re-establishing after a blip, with
     * ZMQ_IMMEDIATE): try again soon, so the balancer, which took the node
     * out when the connection closed, hears from it within its 1.5-interval
     * grace and puts it back at once instead of after `rise` heartbeats. */
    if (heartbeat_send(hb, &m) == 1)
        hb->next_send_ms = now_ms + HEARTBEAT_RETRY_MS;
    else
        hb->next_send_ms = now_ms + heartbeat_jittered(hb);
}

void heartbeat_leave(struct heartbeat *hb, uint64_t now_ms)
{
    (void)now_ms;
    hb->leaving = true;
    heartbeat_send_simple(hb, HB_LEAVE);
}
