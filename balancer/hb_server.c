/* hb_server: the heartbeat ROUTER socket: reads node messages, applies them
 * to the registry, answers ACK/REREGISTER, and counts what it refuses; in
 * secure mode binds each node id to its CURVE key; takes a node out at once
 * when its connection closes. */
#include "hb_server.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <zmq.h>

#include "hb_msg.h"
#include "log.h"
#include "hash.h"
#include "mono.h"

/* Messages handled per hb_server_drain call: enough to empty any normal
 * backlog, small enough that a flood still lets the HTTP side run. */
#define HB_DRAIN_BATCH 4096
/* At most one warning line per reason per this many ms. */
#define HB_LOG_PERIOD_MS 1000
/* Generous queues: a few thousand nodes may all heartbeat in one interval. */
#define HB_HWM 100000
/* ZMQ_MAXMSGSIZE of the ROUTER: bodies up to this are read, so those over
 * HB_MAX_MESSAGE are counted as oversize. */
#define HB_OVERSIZE_SEEN (2 * HB_MAX_MESSAGE)
/* Bindings of ids the registry forgot are dropped this often. */
#define HB_SWEEP_MS 10000
/* First size of the binding hash (a power of two); it doubles as it fills. */
#define HB_BUCKETS_MIN 64

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
    [HB_REJECT_UNAUTHENTICATED] = "unauthenticated",
    [HB_REJECT_KEY_MISMATCH] = "key_mismatch",
    [HB_REJECT_CONN_LIMIT] = "conn_limit",
};

const char *hb_reject_name(enum hb_reject r)
{
    return (unsigned)r < HB_REJECT_COUNT ? reject_names[r] : "unknown";
}

static void drain_monitor(struct hb_server *s);

/* Rate limit of the warning for one reject reason. */
struct reject_log {
    uint64_t last_ms;    /* when the last line was written; 0 = never */
    uint64_t suppressed; /* rejects not logged since that line */
};

/* What the server knows of one node id: the key it is bound to and the
 * connection its messages arrive on. */
struct binding {
    char id[HB_NODE_ID_MAX + 1];
    char key[KEYS_Z85_LEN + 1]; /* Z85 of the key that registered it; "" in plaintext */
    uint64_t boot_id;           /* of its last accepted message */
    int fd;                     /* connection of its last accepted message; -1 none */
    struct binding *next;                /* hash chain */
    struct binding *fd_prev, *fd_next;   /* the bindings on the same fd */
};

/* A ROUTER routing id: libzmq makes one per connection ([0][uint32 BE
 * counter], 5 bytes) unless the peer sets its own; nodes do not. Longer
 * ids than this are not tracked (no fast detection for such a peer). */
#define HB_CONN_ID_MAX 32
struct conn_id {
    uint8_t len; /* 0 = unknown */
    uint8_t bytes[HB_CONN_ID_MAX];
};

/* Per file descriptor: the connection on it as the monitor last said, and
 * the bindings whose messages came on that connection. A descriptor is
 * reused by a later connection once closed, so the routing id, not the
 * fd, says which connection a message came on. */
struct fd_slot {
    struct binding *head;
    uint32_t accepts;    /* connections accepted on it; 0: never seen, not tracked */
    bool open;           /* last monitor event for the fd was ACCEPTED */
    struct conn_id conn; /* routing id of the open connection, once it spoke */
    bool shut;           /* the balancer shut it down; its close is on the way */
};

/* Routing ids of closed connections: a message still queued from one is
 * stale, never a sign of life. A ring: the oldest is forgotten first. */
#define HB_DEAD_CONNS 1024

struct hb_server {
    void *router;             /* the ROUTER nodes' DEALERs connect to */
    void *monitor;            /* PAIR receiving the ROUTER's handshake and close events */
    bool monitoring;          /* zmq_socket_monitor is active on router */
    struct zap_handler *zap;  /* secure mode only; outlives router */
    struct registry *reg;     /* borrowed */
    char endpoint[256];       /* ZMQ_LAST_ENDPOINT after bind */
    struct hb_server_stats stats;
    struct reject_log logs[HB_REJECT_COUNT];
    struct binding **buckets; /* id -> binding */
    size_t nbuckets, nbindings;
    struct fd_slot *fds;      /* indexed by fd */
    size_t nfds;
    struct conn_id dead[HB_DEAD_CONNS]; /* closed connections, a ring */
    size_t dead_next;                   /* ring slot the next one goes into */
    uint64_t next_sweep_ms;
    struct hb_server_limits limits;
    size_t open_conns; /* fd slots open (ACCEPTED seen, no close yet) */
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

/* Counts a refused message or connection and warns about it, at most once
 * a second per reason. */
static void reject_counted(struct hb_server *s, enum hb_reject r, bool message, const char *peer,
                           const char *detail)
{
    s->stats.rejected[r]++;
    if (message)
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

static void reject(struct hb_server *s, enum hb_reject r, const char *peer, const char *detail)
{
    reject_counted(s, r, r != HB_REJECT_HANDSHAKE && r != HB_REJECT_CONN_LIMIT, peer, detail);
}

/* ---- bindings: node id -> key and connection ---- */

/* The buckets are picked by the low bits: the hash with its finaliser. */
static size_t id_hash(const char *id) { return (size_t)hash_str(id); }

static struct binding *binding_find(const struct hb_server *s, const char *id)
{
    if (!s->nbuckets)
        return NULL;
    for (struct binding *b = s->buckets[id_hash(id) & (s->nbuckets - 1)]; b; b = b->next)
        if (strcmp(b->id, id) == 0)
            return b;
    return NULL;
}

/* Doubles the hash when it is full; on out of memory it keeps the old one
 * (longer chains, still correct). */
static void bindings_grow(struct hb_server *s)
{
    size_t n = s->nbuckets ? s->nbuckets * 2 : HB_BUCKETS_MIN;
    struct binding **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct binding *b = s->buckets[i];
        while (b) {
            struct binding *next = b->next;
            size_t h = id_hash(b->id) & (n - 1);
            b->next = nb[h];
            nb[h] = b;
            b = next;
        }
    }
    free(s->buckets);
    s->buckets = nb;
    s->nbuckets = n;
}

/* The slot of fd, grown on demand; NULL for a bad fd or out of memory. */
static struct fd_slot *fd_slot(struct hb_server *s, int fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= s->nfds) {
        size_t n = s->nfds ? s->nfds : 64;
        while (n <= (size_t)fd)
            n *= 2;
        struct fd_slot *p = realloc(s->fds, n * sizeof(*p));
        if (!p)
            return NULL;
        memset(p + s->nfds, 0, (n - s->nfds) * sizeof(*p));
        s->fds = p;
        s->nfds = n;
    }
    return &s->fds[fd];
}

static void binding_unlink_fd(struct hb_server *s, struct binding *b)
{
    if (b->fd < 0)
        return;
    if (b->fd_prev)
        b->fd_prev->fd_next = b->fd_next;
    else if ((size_t)b->fd < s->nfds)
        s->fds[b->fd].head = b->fd_next;
    if (b->fd_next)
        b->fd_next->fd_prev = b->fd_prev;
    b->fd_prev = b->fd_next = NULL;
    b->fd = -1;
}

static void binding_set_fd(struct hb_server *s, struct binding *b, int fd)
{
    if (b->fd == fd)
        return;
    binding_unlink_fd(s, b);
    struct fd_slot *slot = fd_slot(s, fd);
    if (!slot)
        return; /* no fast detection for this one; silence still takes it down */
    b->fd = fd;
    b->fd_next = slot->head;
    if (slot->head)
        slot->head->fd_prev = b;
    slot->head = b;
}

static struct binding *binding_add(struct hb_server *s, const char *id, const char *key)
{
    if (s->nbindings >= s->nbuckets)
        bindings_grow(s);
    struct binding *b = s->nbuckets ? calloc(1, sizeof(*b)) : NULL;
    if (!b)
        return NULL;
    snprintf(b->id, sizeof(b->id), "%s", id);
    snprintf(b->key, sizeof(b->key), "%s", key ? key : "");
    b->fd = -1;
    size_t h = id_hash(id) & (s->nbuckets - 1);
    b->next = s->buckets[h];
    s->buckets[h] = b;
    s->nbindings++;
    return b;
}

/* ---- connections: routing ids, and those of closed connections ---- */

/* The routing id of a message as a conn_id; false when it is too long to
 * track. */
static bool conn_id_of(zmq_msg_t *id, struct conn_id *out)
{
    size_t len = zmq_msg_size(id);
    if (len == 0 || len > HB_CONN_ID_MAX)
        return false;
    out->len = (uint8_t)len;
    memcpy(out->bytes, zmq_msg_data(id), len);
    return true;
}

static bool conn_id_eq(const struct conn_id *a, const struct conn_id *b)
{
    return a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

/* libzmq's own routing ids are [0][uint32 big-endian counter], handed out
 * as connections complete their handshake: of two, the larger counter
 * (serial arithmetic, so a wrap is fine) is the later connection. Returns
 * 1 when a is later than b, -1 when earlier, 0 when either id is one a
 * peer chose (no order known). */
static int conn_id_order(const struct conn_id *a, const struct conn_id *b)
{
    if (a->len != 5 || b->len != 5 || a->bytes[0] != 0 || b->bytes[0] != 0)
        return 0;
    uint32_t x = (uint32_t)a->bytes[1] << 24 | (uint32_t)a->bytes[2] << 16 |
                 (uint32_t)a->bytes[3] << 8 | a->bytes[4];
    uint32_t y = (uint32_t)b->bytes[1] << 24 | (uint32_t)b->bytes[2] << 16 |
                 (uint32_t)b->bytes[3] << 8 | b->bytes[4];
    if (x == y)
        return 0;
    return (int32_t)(x - y) > 0 ? 1 : -1;
}

static void dead_add(struct hb_server *s, const struct conn_id *c)
{
    if (c->len == 0)
        return;
    s->dead[s->dead_next] = *c;
    s->dead_next = (s->dead_next + 1) % HB_DEAD_CONNS;
}

/* Linear: only asked for the first messages of a connection, not for
 * every heartbeat. */
static bool dead_contains(const struct hb_server *s, const struct conn_id *c)
{
    for (size_t i = 0; i < HB_DEAD_CONNS; i++)
        if (conn_id_eq(&s->dead[i], c))
            return true;
    return false;
}

/* Drops the bindings of ids the registry forgot: their key no longer
 * protects anything, and the table stays as large as the registry. */
static void bindings_sweep(struct hb_server *s)
{
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct binding **pp = &s->buckets[i];
        while (*pp) {
            struct binding *b = *pp;
            if (registry_find(s->reg, b->id) == NULL) {
                *pp = b->next;
                binding_unlink_fd(s, b);
                free(b);
                s->nbindings--;
            } else {
                pp = &b->next;
            }
        }
    }
}

static void bindings_free(struct hb_server *s)
{
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct binding *b = s->buckets[i];
        while (b) {
            struct binding *next = b->next;
            free(b);
            b = next;
        }
    }
    free(s->buckets);
    free(s->fds);
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

/* Why the allowlist a refuses the key a binding was made with, or NULL
 * when it still accepts it (or the binding has no key: plaintext). */
static const char *binding_refused(const struct zap_allowlist *a, const struct binding *b)
{
    uint8_t key[KEYS_LEN];
    if (!b->key[0] || keys_decode(b->key, strlen(b->key), key, NULL, 0) != 0)
        return NULL;
    if (!zap_allowlist_contains(a, key))
        return "heartbeat key revoked";
    const uint8_t *pin = zap_allowlist_pinned(a, b->id);
    if (pin && memcmp(pin, key, KEYS_LEN) != 0)
        return "node id pinned to another key";
    return NULL;
}

/* The TCP port of the ROUTER's own endpoint ("tcp://host:port"), 0 when
 * it is not TCP. */
static unsigned endpoint_port(const char *endpoint)
{
    const char *colon = strrchr(endpoint, ':');
    if (strncmp(endpoint, "tcp://", 6) != 0 || !colon)
        return 0;
    char *end;
    unsigned long port = strtoul(colon + 1, &end, 10);
    return *end == '\0' && port > 0 && port <= 65535 ? (unsigned)port : 0;
}

/* Ends the connection a refused node speaks on: libzmq owns the socket, so
 * it is shut down, not closed; libzmq then reads the end of the stream,
 * closes it and reports DISCONNECTED like any close. Only a connection the
 * monitor still reports open, on a TCP socket bound to our own port: the
 * descriptor may have been closed and reused since (a later HTTP
 * connection must never be hit). Returns true when it shut one down. */
static bool conn_shutdown_now(struct hb_server *s, int fd)
{
    if (fd < 0 || (size_t)fd >= s->nfds || !s->fds[fd].open || s->fds[fd].shut)
        return false;
    unsigned port = endpoint_port(s->endpoint);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int type = 0;
    socklen_t tlen = sizeof type;
    if (port == 0 || getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 || type != SOCK_STREAM)
        return false;
    unsigned local = ss.ss_family == AF_INET
                         ? ntohs(((const struct sockaddr_in *)(const void *)&ss)->sin_port)
                     : ss.ss_family == AF_INET6
                         ? ntohs(((const struct sockaddr_in6 *)(const void *)&ss)->sin6_port)
                         : 0;
    if (local != port)
        return false;
    if (shutdown(fd, SHUT_RDWR) != 0) {
        log_warn("hb_shutdown_failed", "fd=%d detail=\"%s\"", fd, strerror(errno));
        return false;
    }
    s->fds[fd].shut = true;
    return true;
}

static bool conn_shutdown(struct hb_server *s, int fd)
{
    drain_monitor(s); /* a close queued since is seen first */
    return conn_shutdown_now(s, fd);
}

/* The balancer refuses node b from now on (reason from binding_refused):
 * it leaves the rotation at once, panic never holds it, and a connection
 * whose key is off the allowlist is ended (its reconnect meets the ZAP
 * handler, which refuses it). */
static void refuse_node(struct hb_server *s, struct binding *b, const char *why, bool revoked)
{
    if (registry_refuse(s->reg, b->id, why) == REGISTRY_OK)
        log_warn("hb_node_refused", "node_id=%s reason=\"%s\"", b->id, why);
    if (revoked && b->fd >= 0) {
        int fd = b->fd;
        if (conn_shutdown(s, fd)) {
            s->stats.refused_closed++;
            log_info("hb_conn_shutdown", "node_id=%s fd=%d reason=\"%s\"", b->id, fd, why);
        }
    }
}

/* Secure mode: the sender's key (libzmq's User-Id, which our ZAP handler
 * set to the key's Z85 text) must still be allowed, and the node id must be
 * bound to it. Returns true when the message may be applied. */
static bool check_key(struct hb_server *s, const struct hb_msg *m, const char *user,
                      struct binding *b, const char *peer)
{
    char detail[200];
    uint8_t key[KEYS_LEN];
    if (!user || keys_decode(user, strlen(user), key, NULL, 0) != 0 ||
        !zap_allowlist_contains(zap_handler_allowlist(s->zap), key)) {
        snprintf(detail, sizeof detail, "%s for node %s from key %.8s... not in the allowlist",
                 hb_type_name(m->type), m->node_id, user ? user : "(none)");
        reject(s, HB_REJECT_UNAUTHENTICATED, peer, detail);
        /* the node bound to this key: refused now, whatever the reload did */
        if (b && user && strcmp(b->key, user) == 0)
            refuse_node(s, b, "heartbeat key revoked", true);
        return false;
    }
    /* An id pinned by the allowlist (allow/<id>.pub) belongs to that key
     * alone, from the first message and whatever was bound before. */
    const uint8_t *pin = zap_allowlist_pinned(zap_handler_allowlist(s->zap), m->node_id);
    if (pin && memcmp(pin, key, KEYS_LEN) != 0) {
        char pinned[KEYS_Z85_LEN + 1];
        keys_encode(pin, pinned);
        snprintf(detail, sizeof detail,
                 "%s for node %s from key %.8s..., pinned to key %.8s... by the allowlist",
                 hb_type_name(m->type), m->node_id, user, pinned);
        reject(s, HB_REJECT_KEY_MISMATCH, peer, detail);
        /* The node registered with this key and the pin moved away from it
         * (SIGHUP): the registered node is refused. A forger's message for
         * an id bound to another key changes nothing. */
        if (b && strcmp(b->key, user) == 0)
            refuse_node(s, b, "node id pinned to another key", false);
        return false;
    }
    if (!b || strcmp(b->key, user) == 0)
        return true;
    if (pin) {
        snprintf(b->key, sizeof b->key, "%s", user); /* the pin changed (SIGHUP): follow it */
        return true;
    }
    /* An id the registry forgot is free again, and so is one bound to a key
     * the allowlist no longer holds: such a key protects nothing. */
    if (m->type == HB_REGISTER && (registry_find(s->reg, m->node_id) == NULL ||
                                   binding_refused(zap_handler_allowlist(s->zap), b) != NULL)) {
        snprintf(b->key, sizeof b->key, "%s", user);
        return true;
    }
    snprintf(detail, sizeof detail, "%s for node %s from key %.8s..., bound to key %.8s...",
             hb_type_name(m->type), m->node_id, user, b->key);
    reject(s, HB_REJECT_KEY_MISMATCH, peer, detail);
    return false;
}

/* Remembers who the node is and which connection it speaks on, after the
 * registry accepted its message. */
static void note_sender(struct hb_server *s, struct binding *b, const struct hb_msg *m,
                        const char *user, int fd)
{
    if (!b)
        b = binding_add(s, m->node_id, user);
    if (!b)
        return; /* out of memory: no key binding; the next REGISTER tries again */
    b->boot_id = m->boot_id;
    if (fd >= 0)
        binding_set_fd(s, b, fd);
    else
        binding_unlink_fd(s, b); /* an untracked connection: its old one says nothing */
}

/* Applies one message body. fd is the connection to file the node under
 * (-1: not tracked); stale marks a message from a closed connection. */
static void handle_body(struct hb_server *s, zmq_msg_t *id, const void *data, size_t len,
                        const char *peer, const char *user, int fd, bool stale)
{
    struct hb_msg m;
    char err[160];
    if (hb_msg_decode(data, len, &m, err, sizeof err) != 0) {
        reject(s, classify_decode_failure(data, len), peer, err);
        return;
    }

    log_debug("hb_msg", "type=%s node_id=%s seq=%" PRIu64 " peer=%s", hb_type_name(m.type),
              m.node_id, m.seq, peer && *peer ? peer : "-");

    struct binding *b = binding_find(s, m.node_id);
    if (s->zap && !check_key(s, &m, user, b, peer))
        return;
    if (stale) {
        /* Queued before its connection closed: the node is gone, and this
         * must not bring it back. Its connection is gone too: no reply. */
        s->stats.stale++;
        log_debug("hb_stale", "type=%s node_id=%s fd=%d", hb_type_name(m.type), m.node_id, fd);
        return;
    }

    enum hb_type reply = HB_ACK;
    switch (m.type) {
    case HB_REGISTER:
        switch (registry_register(s->reg, &m)) {
        case 0:
            note_sender(s, b, &m, user, fd);
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
        else
            note_sender(s, b, &m, user, fd);
        break;
    case HB_LEAVE:
        /* A leaving node is always acknowledged, even when unknown: a
         * REREGISTER would invite it back into the registry. */
        if (registry_leave(s->reg, &m) == REGISTRY_OK)
            note_sender(s, b, &m, user, fd);
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

static void conn_closed(struct hb_server *s, int fd);

/* Which connection a message came on, told by its routing id (fds are
 * reused, routing ids are not). *fd stays the descriptor to file the node
 * under, or becomes -1 when the connection is not tracked (no fast
 * detection, silence still works). Returns true when the message came on a
 * connection already closed: stale. */
static bool conn_check(struct hb_server *s, zmq_msg_t *id, int *fd)
{
    struct conn_id c;
    struct fd_slot *slot = conn_id_of(id, &c) ? fd_slot(s, *fd) : NULL;
    if (!slot) {
        *fd = -1;
        return false;
    }
    if (slot->open && conn_id_eq(&slot->conn, &c))
        return false; /* the connection this fd carries: every heartbeat after the first */
    /* A connection not seen speaking on this fd yet. Its ACCEPTED, and the
     * DISCONNECTED of whatever had the fd before, were queued on the
     * monitor before this message existed (libzmq reports a close before
     * it closes the fd): handle them first, so the old close cannot take
     * this connection's nodes with it. */
    drain_monitor(s);
    slot = &s->fds[*fd]; /* the monitor may have grown the table */
    if (slot->accepts == 0) {
        *fd = -1; /* its ACCEPTED was never seen (out of memory then) */
        return false;
    }
    if (dead_contains(s, &c))
        return true;
    if (!slot->open || (slot->conn.len != 0 && conn_id_order(&c, &slot->conn) < 0)) {
        /* Closed before it was read: its own fd is closed, or a later
         * connection has it now. */
        dead_add(s, &c);
        return true;
    }
    if (slot->conn.len != 0 && !conn_id_eq(&slot->conn, &c)) {
        if (conn_id_order(&c, &slot->conn) == 0) {
            *fd = -1; /* peer-chosen routing ids: no telling which is current */
            return false;
        }
        /* A later connection on the fd: the earlier one is gone (its close
         * was filed under the fd before we knew it spoke). */
        conn_closed(s, *fd);
        slot = &s->fds[*fd];
        slot->open = true;
        s->open_conns++; /* the later connection is open: conn_closed counted the earlier */
    }
    slot->conn = c;
    return false;
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

    /* Secure mode: the key our ZAP handler admitted the connection with. */
    const char *user = s->zap ? zmq_msg_gets(&body, "User-Id") : NULL;
    /* The connection it came on, to take the node out when that closes
     * (ZMQ_SRCFD is deprecated but answered by libzmq 4.3). */
    int fd = zmq_msg_get(&body, ZMQ_SRCFD);

    size_t len = zmq_msg_size(&body);
    if (zmq_msg_more(&body)) {
        discard_rest(s->router);
        reject(s, HB_REJECT_FRAMES, peer, "more than one body frame");
    } else if (len == 0) {
        reject(s, HB_REJECT_EMPTY, peer, "empty body");
    } else if (len > HB_MAX_MESSAGE) {
        /* up to HB_OVERSIZE_SEEN bytes; libzmq drops larger ones' connection */
        reject(s, HB_REJECT_OVERSIZE, peer, "body larger than 16 KiB");
    } else {
        bool stale = conn_check(s, &id, &fd);
        handle_body(s, &id, zmq_msg_data(&body), len, peer, user, fd, stale);
    }
    zmq_msg_close(&body);
    zmq_msg_close(&id);
    return 1;
}

/* A connection closed: the nodes whose last messages came on it (a killed
 * process's socket closes at once) leave the rotation now, not after fall
 * intervals of silence. A live node whose connection merely blipped
 * (ZeroMQ reconnects it) is back at its next heartbeat: see
 * registry_disconnected. Its routing id is remembered as dead: a message
 * from it read later is stale. */
static void conn_closed(struct hb_server *s, int fd)
{
    if (fd < 0 || (size_t)fd >= s->nfds)
        return;
    struct fd_slot *slot = &s->fds[fd];
    dead_add(s, &slot->conn);
    slot->conn.len = 0;
    if (slot->open && s->open_conns > 0)
        s->open_conns--;
    slot->open = false;
    while (slot->head) {
        struct binding *b = slot->head;
        binding_unlink_fd(s, b);
        if (registry_disconnected(s->reg, b->id, b->boot_id) == REGISTRY_OK) {
            /* only closes that took a node out of rotation */
            s->stats.disconnects++;
            log_info("hb_disconnected", "node_id=%s fd=%d", b->id, fd);
        }
    }
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
        do {
            rc = zmq_msg_recv(&ep, s->monitor, ZMQ_DONTWAIT);
        } while (rc == -1 && zmq_errno() == EINTR);
        if (rc >= 0)
            log_sanitize(zmq_msg_data(&ep), zmq_msg_size(&ep), endpoint, sizeof endpoint);
        bool epmore = zmq_msg_more(&ep);
        zmq_msg_close(&ep);
        if (epmore)
            discard_rest(s->monitor);
    }

    if (event == ZMQ_EVENT_ACCEPTED) {
        struct fd_slot *slot = fd_slot(s, (int)value);
        if (slot && (slot->open || slot->head))
            conn_closed(s, (int)value); /* its close went unseen; the fd is another's now */
        if (slot) {
            slot = &s->fds[value];
            slot->accepts++;
            slot->open = true;
            slot->shut = false;
            slot->conn.len = 0;
            s->open_conns++;
            /* Over the cap: ended before it can hold its descriptor through
             * a handshake. A node's DEALER retries on its own. */
            if (s->limits.max_conns && s->open_conns > s->limits.max_conns &&
                conn_shutdown_now(s, (int)value)) {
                char detail[96];
                snprintf(detail, sizeof detail, "more than %zu heartbeat connections",
                         s->limits.max_conns);
                reject(s, HB_REJECT_CONN_LIMIT, NULL, detail);
            }
        }
    } else if (event == ZMQ_EVENT_DISCONNECTED) {
        conn_closed(s, (int)value);
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        /* The ZAP handler refused it and counted it already. */
        log_debug("hb_auth_failed", "status=%" PRIu32, value);
    } else if (s->zap && event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
               (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH ||
                value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC ||
                value == ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE)) {
        /* A plaintext peer, or one that does not hold the balancer's public
         * key: it cannot prove a key. */
        char detail[256];
        snprintf(detail, sizeof detail,
                 "a peer without CURVE or with the wrong balancer key on %s (code 0x%" PRIx32 ")",
                 endpoint, value);
        reject_counted(s, HB_REJECT_UNAUTHENTICATED, false, NULL, detail);
    } else if (event & (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                        ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)) {
        /* The monitor names our endpoint, not the peer. */
        char detail[192];
        snprintf(detail, sizeof detail,
                 "ZeroMQ handshake failed on %s (event 0x%x, code 0x%" PRIx32 ")", endpoint,
                 (unsigned)event, value);
        reject(s, HB_REJECT_HANDSHAKE, NULL, detail);
    }
    return 1;
}

static void drain_monitor(struct hb_server *s)
{
    for (size_t e = 0; e < HB_DRAIN_BATCH && s->monitor && read_monitor_event(s); e++)
        ;
}

/* The ZAP handler refused a connection. */
static void on_zap_refused(void *arg, const struct zap_decision *d)
{
    struct hb_server *s = arg;
    char detail[200];
    snprintf(detail, sizeof detail, "connection refused: %s (key %s)", d->reason,
             d->key_z85[0] ? d->key_z85 : "none");
    reject_counted(s, HB_REJECT_UNAUTHENTICATED, false, d->address, detail);
}

size_t hb_server_drain(struct hb_server *s)
{
    /* Messages first (those queued before a close are applied before the
     * close takes their node out), then the monitor, then ZAP. Telling a
     * closed connection from a new one on the same fd does not rest on
     * this order: a message from a connection not yet seen on its fd first
     * handles the monitor events queued before it (conn_check). */
    size_t n = 0;
    while (n < HB_DRAIN_BATCH && read_one(s))
        n++;
    drain_monitor(s);
    if (s->zap && zap_handler_drain(s->zap, HB_DRAIN_BATCH, on_zap_refused, s) > 0)
        drain_monitor(s);
    uint64_t now = mono_now_ms();
    if (now >= s->next_sweep_ms) {
        bindings_sweep(s);
        s->next_sweep_ms = now + HB_SWEEP_MS;
    }
    return n;
}

static int set_int(void *sock, int opt, int value)
{
    return zmq_setsockopt(sock, opt, &value, sizeof value);
}

struct hb_server *hb_server_new(void *zmq_ctx, const char *endpoint, struct registry *reg,
                                char *err, size_t errlen)
{
    return hb_server_new_curve(zmq_ctx, endpoint, reg, NULL, err, errlen);
}

struct hb_server *hb_server_new_curve(void *zmq_ctx, const char *endpoint, struct registry *reg,
                                      struct hb_server_curve *curve, char *err, size_t errlen)
{
    return hb_server_new_limited(zmq_ctx, endpoint, reg, curve, NULL, err, errlen);
}

struct hb_server *hb_server_new_limited(void *zmq_ctx, const char *endpoint, struct registry *reg,
                                        struct hb_server_curve *curve,
                                        const struct hb_server_limits *limits, char *err,
                                        size_t errlen)
{
    struct hb_server *s = calloc(1, sizeof *s);
    if (!s) {
        zap_allowlist_free(curve ? curve->allow : NULL);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->reg = reg;
    s->next_sweep_ms = mono_now_ms() + HB_SWEEP_MS;
    if (limits)
        s->limits = *limits;
    if (s->limits.handshake_ms == 0)
        s->limits.handshake_ms = HB_HANDSHAKE_DEFAULT_MS;
    if (curve) {
        /* Before the ROUTER exists: libzmq admits every CURVE client when no
         * handler is bound in its context. */
        s->zap = zap_handler_new(zmq_ctx, curve->allow, err, errlen);
        curve->allow = NULL;
        if (!s->zap)
            goto fail;
    }

    s->router = zmq_socket(zmq_ctx, ZMQ_ROUTER);
    if (!s->router) {
        set_err(err, errlen, "zmq_socket(ROUTER)");
        goto fail;
    }
    /* Twice the codec's bound: a body up to that is read and counted as
     * "oversize" (with the limit at the bound itself libzmq dropped the
     * connection and nothing was ever counted); beyond it libzmq still
     * drops the connection, so a peer cannot make us buffer more. */
    int64_t maxmsg = HB_OVERSIZE_SEEN;
    if (zmq_setsockopt(s->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
        set_int(s->router, ZMQ_LINGER, 0) != 0 || set_int(s->router, ZMQ_SNDHWM, HB_HWM) != 0 ||
        set_int(s->router, ZMQ_RCVHWM, HB_HWM) != 0 ||
        set_int(s->router, ZMQ_ROUTER_MANDATORY, 0) != 0 ||
        /* libzmq's default is 30 s, and a peer that never sends a ZMTP
         * greeting is kept all that time, holding a descriptor */
        set_int(s->router, ZMQ_HANDSHAKE_IVL, (int)s->limits.handshake_ms) != 0) {
        set_err(err, errlen, "zmq_setsockopt");
        goto fail;
    }
    if (s->zap) {
        int server = 1;
        if (set_int(s->router, ZMQ_CURVE_SERVER, server) != 0 ||
            zmq_setsockopt(s->router, ZMQ_CURVE_SECRETKEY, curve->keys.secret_key, KEYS_LEN) != 0 ||
            zmq_setsockopt(s->router, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN)) != 0) {
            set_err(err, errlen, "CURVE server set-up (libzmq built without CURVE?)");
            goto fail;
        }
    }

    /* The monitor must exist before bind so no early failure goes unseen. */
    char monitor_ep[64];
    snprintf(monitor_ep, sizeof monitor_ep, "inproc://berth-hb-monitor-%p", (void *)s);
    if (zmq_socket_monitor(s->router, monitor_ep,
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_ACCEPTED |
                               ZMQ_EVENT_DISCONNECTED) != 0) {
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
    zap_handler_free(s->zap); /* after the ROUTER it guards */
    bindings_free(s);
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

void *hb_server_zap_socket(const struct hb_server *s)
{
    return s->zap ? zap_handler_socket(s->zap) : NULL;
}

bool hb_server_secure(const struct hb_server *s)
{
    return s->zap != NULL;
}

void hb_server_set_allowlist(struct hb_server *s, struct zap_allowlist *a)
{
    if (!s->zap) {
        zap_allowlist_free(a);
        return;
    }
    zap_handler_set_allowlist(s->zap, a);
    /* The nodes of keys the new list refuses leave the rotation now, not
     * when their silence would take them (which panic might prevent). */
    const struct zap_allowlist *allow = zap_handler_allowlist(s->zap);
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct binding *b = s->buckets[i]; b; b = b->next) {
            const char *why = binding_refused(allow, b);
            if (why)
                refuse_node(s, b, why, false);
        }
    /* Then the connections: their closes must find the nodes refused
     * already (one connection may carry many ids). */
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct binding *b = s->buckets[i]; b; b = b->next) {
            const char *why = binding_refused(allow, b);
            if (why && strcmp(why, "heartbeat key revoked") == 0)
                refuse_node(s, b, why, true);
        }
}

void hb_server_stats(const struct hb_server *s, struct hb_server_stats *out)
{
    *out = s->stats;
    out->conns_open = s->open_conns;
    out->conns_max = s->limits.max_conns;
}
