/* hb_sim: a test tool (never shipped) that plays N berth nodes against one
 * balancer from one process: REGISTER, HEARTBEAT every interval with ±10%
 * jitter, REGISTER again on REREGISTER, as node/heartbeat.c does. Several
 * simulated nodes share one DEALER (the balancer keys nodes by the JSON
 * "node" id and answers the sender's routing id), so 10,000 nodes need
 * tens of sockets, not 10,000. Prints one JSON line of counters every
 * second to stdout; runs until --duration runs out or SIGINT/SIGTERM. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "hb_msg.h"

#define SIM_MAX_NODES 200000
#define SIM_MAX_SOCKETS 4096
#define SIM_SNDHWM 10000
#define SIM_TICK_MS 5 /* the scheduler's resolution */
#define SIM_RECV_BATCH 1024

struct sim_node {
    char id[HB_NODE_ID_MAX + 1];
    uint64_t boot_id;
    uint64_t seq;
    uint64_t next_ms;  /* when the next message is due */
    bool registered;   /* an ACK came since the last REGISTER */
    bool need_register; /* REGISTER is the next message */
};

struct sim {
    const char *endpoint;
    size_t nnodes;
    size_t nsockets;
    uint32_t interval_ms;
    const char *prefix;
    uint32_t base_port; /* advertised addresses: 127.0.0.1:(base_port + i % 20000) */
    void *zctx;
    void **socks;
    struct sim_node *nodes;
    uint64_t rng;
    /* counters */
    uint64_t sent_register, sent_heartbeat, send_dropped;
    uint64_t acks, reregisters, bad_replies;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t sim_random(struct sim *s)
{
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 2685821657736338717ull;
}

/* interval ±10%, like the real node */
static uint64_t jittered(struct sim *s)
{
    uint64_t span = s->interval_ms / 5;
    if (span == 0)
        return s->interval_ms;
    return s->interval_ms - s->interval_ms / 10 + sim_random(s) % (span + 1);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: hb_sim [--balancer tcp://127.0.0.1:7100] [--nodes 10000] [--sockets 50]\n"
               "              [--interval-ms 1000] [--duration-s 0 (forever)] [--prefix sim]\n"
               "              [--base-port 20000]\n");
}

static bool parse_u(const char *v, unsigned long lo, unsigned long hi, unsigned long *out)
{
    if (!v || !*v)
        return false;
    char *end = NULL;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno != 0 || *end != '\0' || n < lo || n > hi)
        return false;
    *out = n;
    return true;
}

/* Sends one message of node i on its socket; a full queue (or, with
 * ZMQ_IMMEDIATE, no connection yet) drops it, as on a real node, counted.
 * Returns true when it went. */
static bool sim_send(struct sim *s, size_t i, enum hb_type type)
{
    struct sim_node *n = &s->nodes[i];
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = type;
    snprintf(m.node_id, sizeof m.node_id, "%s", n->id);
    m.boot_id = n->boot_id;
    m.seq = ++n->seq;
    if (type == HB_REGISTER) {
        snprintf(m.addr, sizeof m.addr, "127.0.0.1:%u",
                 (unsigned)(s->base_port + (uint32_t)(i % 20000)));
        m.capacity = 1000;
        snprintf(m.version, sizeof m.version, "sim");
    } else {
        m.sessions = (uint32_t)(sim_random(s) % 100);
        m.accepted = n->seq * 3;
        m.msgs_per_sec = (double)(sim_random(s) % 1000) / 10.0;
        m.healthy = true;
        m.nworkers = 2; /* the size of a real node's heartbeat */
        for (uint32_t w = 0; w < m.nworkers; w++) {
            m.workers[w].ticks = n->seq * 10;
            m.workers[w].handshakes_ok = n->seq;
        }
    }
    char err[128];
    size_t len = 0;
    char *json = hb_msg_encode(&m, &len, err, sizeof err);
    if (!json) {
        fprintf(stderr, "hb_sim: encode: %s\n", err);
        s->send_dropped++;
        return false;
    }
    void *sock = s->socks[i % s->nsockets];
    int rc;
    do {
        rc = zmq_send(sock, json, len, ZMQ_DONTWAIT);
    } while (rc == -1 && zmq_errno() == EINTR);
    free(json);
    if (rc == -1) {
        s->send_dropped++;
        return false;
    }
    if (type == HB_REGISTER)
        s->sent_register++;
    else
        s->sent_heartbeat++;
    return true;
}

/* Node index from "<prefix>-<index>"; SIZE_MAX when it is not ours. */
static size_t node_index(const struct sim *s, const char *id)
{
    size_t plen = strlen(s->prefix);
    if (strncmp(id, s->prefix, plen) != 0 || id[plen] != '-')
        return SIZE_MAX;
    unsigned long i;
    if (!parse_u(id + plen + 1, 0, SIM_MAX_NODES, &i) || i >= s->nnodes)
        return SIZE_MAX;
    return (size_t)i;
}

static void sim_on_reply(struct sim *s, const void *data, size_t len, uint64_t now)
{
    struct hb_msg m;
    char err[128];
    if (hb_msg_decode(data, len, &m, err, sizeof err) != 0) {
        s->bad_replies++;
        return;
    }
    size_t i = node_index(s, m.node_id);
    if (i == SIZE_MAX || (m.type != HB_ACK && m.type != HB_REREGISTER)) {
        s->bad_replies++;
        return;
    }
    if (m.interval_ms >= 10 && m.interval_ms <= 60000)
        s->interval_ms = m.interval_ms; /* every node adopts the balancer's interval */
    struct sim_node *n = &s->nodes[i];
    if (m.type == HB_ACK) {
        s->acks++;
        n->registered = true;
    } else {
        /* like the real node: REGISTER at once; the heartbeats that drew
         * the REREGISTERs were already spread over an interval */
        s->reregisters++;
        n->registered = false;
        n->need_register = !sim_send(s, i, HB_REGISTER);
        n->next_ms = now + jittered(s);
    }
}

static void sim_drain(struct sim *s, uint64_t now)
{
    for (size_t k = 0; k < s->nsockets; k++) {
        for (int b = 0; b < SIM_RECV_BATCH; b++) {
            zmq_msg_t msg;
            if (zmq_msg_init(&msg) != 0)
                return;
            int rc = zmq_msg_recv(&msg, s->socks[k], ZMQ_DONTWAIT);
            if (rc < 0) {
                zmq_msg_close(&msg);
                if (zmq_errno() == EINTR)
                    continue;
                break; /* EAGAIN: this socket is empty */
            }
            sim_on_reply(s, zmq_msg_data(&msg), zmq_msg_size(&msg), now);
            zmq_msg_close(&msg);
        }
    }
}

static size_t count_registered(const struct sim *s)
{
    size_t c = 0;
    for (size_t i = 0; i < s->nnodes; i++)
        c += s->nodes[i].registered;
    return c;
}

static void print_stats(const struct sim *s, uint64_t t_ms)
{
    printf("{\"t_ms\":%" PRIu64 ",\"nodes\":%zu,\"registered\":%zu,\"interval_ms\":%u,"
           "\"sent_register\":%" PRIu64 ",\"sent_heartbeat\":%" PRIu64
           ",\"send_dropped\":%" PRIu64 ",\"acks\":%" PRIu64 ",\"reregisters\":%" PRIu64
           ",\"bad_replies\":%" PRIu64 "}\n",
           t_ms, s->nnodes, count_registered(s), (unsigned)s->interval_ms, s->sent_register,
           s->sent_heartbeat, s->send_dropped, s->acks, s->reregisters, s->bad_replies);
    fflush(stdout);
}

static int sim_open(struct sim *s)
{
    s->zctx = zmq_ctx_new();
    if (!s->zctx) {
        fprintf(stderr, "hb_sim: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        return -1;
    }
    if (zmq_ctx_set(s->zctx, ZMQ_MAX_SOCKETS, (int)s->nsockets + 16) != 0) {
        fprintf(stderr, "hb_sim: ZMQ_MAX_SOCKETS: %s\n", zmq_strerror(zmq_errno()));
        return -1;
    }
    s->socks = calloc(s->nsockets, sizeof *s->socks);
    if (!s->socks)
        return -1;
    for (size_t k = 0; k < s->nsockets; k++) {
        void *z = zmq_socket(s->zctx, ZMQ_DEALER);
        int linger = 0, hwm = SIM_SNDHWM, immediate = 1;
        int64_t maxmsg = HB_MAX_MESSAGE;
        if (!z || zmq_setsockopt(z, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
            zmq_setsockopt(z, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
            zmq_setsockopt(z, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0 ||
            zmq_setsockopt(z, ZMQ_IMMEDIATE, &immediate, sizeof immediate) != 0 ||
            zmq_setsockopt(z, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
            zmq_connect(z, s->endpoint) != 0) {
            fprintf(stderr, "hb_sim: socket %zu on %s: %s\n", k, s->endpoint,
                    zmq_strerror(zmq_errno()));
            if (z)
                zmq_close(z);
            return -1;
        }
        s->socks[k] = z;
    }
    return 0;
}

static void sim_close(struct sim *s)
{
    for (size_t k = 0; s->socks && k < s->nsockets; k++)
        if (s->socks[k])
            zmq_close(s->socks[k]);
    free(s->socks);
    if (s->zctx) {
        int rc;
        do {
            rc = zmq_ctx_term(s->zctx);
        } while (rc == -1 && zmq_errno() == EINTR);
    }
    free(s->nodes);
}

int main(int argc, char **argv)
{
    struct sim s = {.endpoint = "tcp://127.0.0.1:7100",
                    .nnodes = 10000,
                    .nsockets = 50,
                    .interval_ms = 1000,
                    .prefix = "sim",
                    .base_port = 20000};
    unsigned long duration_s = 0, v;
    for (int a = 1; a < argc; a++) {
        const char *opt = argv[a];
        const char *val = a + 1 < argc ? argv[a + 1] : NULL;
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        bool ok = val != NULL;
        if (ok && strcmp(opt, "--balancer") == 0)
            s.endpoint = val;
        else if (ok && strcmp(opt, "--nodes") == 0 && (ok = parse_u(val, 1, SIM_MAX_NODES, &v)))
            s.nnodes = v;
        else if (ok && strcmp(opt, "--sockets") == 0 &&
                 (ok = parse_u(val, 1, SIM_MAX_SOCKETS, &v)))
            s.nsockets = v;
        else if (ok && strcmp(opt, "--interval-ms") == 0 && (ok = parse_u(val, 10, 60000, &v)))
            s.interval_ms = (uint32_t)v;
        else if (ok && strcmp(opt, "--duration-s") == 0 && (ok = parse_u(val, 0, 86400, &v)))
            duration_s = v;
        else if (ok && strcmp(opt, "--prefix") == 0 && val[0] && strlen(val) <= 40 &&
                 hb_node_id_valid(val))
            s.prefix = val;
        else if (ok && strcmp(opt, "--base-port") == 0 && (ok = parse_u(val, 1, 45535, &v)))
            s.base_port = (uint32_t)v;
        else
            ok = false;
        if (!ok) {
            fprintf(stderr, "hb_sim: bad option or value: %s %s\n", opt, val ? val : "");
            usage(stderr);
            return 2;
        }
        a++;
    }
    if (s.nsockets > s.nnodes)
        s.nsockets = s.nnodes;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) {
        perror("hb_sim: sigaction");
        return 1;
    }

    int status = 1;
    s.rng = (uint64_t)now_ms() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    if (s.rng == 0)
        s.rng = 1;
    s.nodes = calloc(s.nnodes, sizeof *s.nodes);
    if (!s.nodes) {
        fprintf(stderr, "hb_sim: out of memory\n");
        goto out;
    }
    if (sim_open(&s) != 0)
        goto out;

    uint64_t start = now_ms();
    for (size_t i = 0; i < s.nnodes; i++) {
        struct sim_node *n = &s.nodes[i];
        snprintf(n->id, sizeof n->id, "%s-%zu", s.prefix, i);
        n->boot_id = sim_random(&s) | 1;
        n->need_register = true;
        /* first REGISTERs spread over one interval, as nodes started apart */
        n->next_ms = start + sim_random(&s) % s.interval_ms;
    }

    zmq_pollitem_t *items = calloc(s.nsockets, sizeof *items);
    if (!items) {
        fprintf(stderr, "hb_sim: out of memory\n");
        goto out;
    }
    for (size_t k = 0; k < s.nsockets; k++) {
        items[k].socket = s.socks[k];
        items[k].events = ZMQ_POLLIN;
    }
    uint64_t next_stats = start + 1000;
    uint64_t end = duration_s ? start + duration_s * 1000 : UINT64_MAX;
    while (!stop_requested) {
        uint64_t now = now_ms();
        if (now >= end)
            break;
        /* A linear scan per tick: 10,000 compares every 5 ms is well under
         * a millisecond, and keeps the tool simple. */
        for (size_t i = 0; i < s.nnodes; i++) {
            struct sim_node *n = &s.nodes[i];
            if (n->next_ms > now)
                continue;
            /* a REGISTER that could not go is tried again next time */
            if (sim_send(&s, i, n->need_register ? HB_REGISTER : HB_HEARTBEAT))
                n->need_register = false;
            n->next_ms = now + jittered(&s);
        }
        if (now >= next_stats) {
            print_stats(&s, now - start);
            next_stats += 1000;
        }
        int rc = zmq_poll(items, (int)s.nsockets, SIM_TICK_MS);
        if (rc == -1 && zmq_errno() != EINTR) {
            fprintf(stderr, "hb_sim: zmq_poll: %s\n", zmq_strerror(zmq_errno()));
            free(items);
            goto out;
        }
        if (rc > 0)
            sim_drain(&s, now_ms());
    }
    free(items);
    print_stats(&s, now_ms() - start);
    status = 0;
out:
    sim_close(&s);
    return status;
}
