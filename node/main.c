/* berth-node: start-up (settings, TLS, listeners, worker threads), the main
 * thread's loop (heartbeats over ZeroMQ, signals, the worker watchdog) and
 * the drain on SIGTERM/SIGINT. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <netinet/in.h>
#include <unistd.h>

#include <zmq.h>

#include "addr.h"
#include "config.h"
#include "feed.h"
#include "forwarder.h"
#include "jetstream.h"
#include "frame.h"
#include "hb_msg.h"
#include "heartbeat.h"
#include "hex.h"
#include "keys.h"
#include "journal.h"
#include "log.h"
#include "mono.h"
#include "node_stats.h"
#include "peer_limit.h"
#include "session.h"
#include "tls_ctx.h"
#include "watchdog.h"
#include "worker.h"

#define NODE_EXIT_USAGE 2
#define NODE_LEAVE_LINGER_MS 200 /* time the final LEAVE gets to reach the balancer */
/* Balancers a node heartbeats to: one DEALER each (a DEALER connected to
 * several endpoints would spread the messages between them, not copy them). */
#define NODE_MAX_BALANCERS 8
#define NODE_ENDPOINT_MAX 256 /* bytes of one --balancer endpoint, with the NUL */

static const struct config_setting node_settings[] = {
    {"id", CONFIG_STRING, NULL, 0, 0, NULL,
     "node id, [A-Za-z0-9._-]{1,64} (default: <hostname>-<port>)"},
    {"listen", CONFIG_STRING, "127.0.0.1:7443", 0, 0, NULL, "TLS listen address, host:port"},
    {"advertise", CONFIG_STRING, NULL, 0, 0, NULL,
     "address clients dial, host:port (default: --listen; required with a wildcard --listen)"},
    {"balancer", CONFIG_STRING, "tcp://127.0.0.1:7100", 0, 0, NULL,
     "balancer heartbeat endpoint (ZeroMQ); a comma-separated list heartbeats to every one "
     "(at most 8), each on its own socket"},
    {"curve-secret", CONFIG_STRING, NULL, 0, 0, NULL,
     "this node's CURVE secret key file (NAME.key from `berth keygen`; the balancer allows "
     "its NAME.pub)"},
    {"balancer-key", CONFIG_STRING, NULL, 0, 0, NULL,
     "the balancer's CURVE public key: a .pub file or Z85 text; one for every --balancer, or a "
     "comma-separated list in --balancer's order"},
    {"heartbeat-plaintext", CONFIG_BOOL, "false", 0, 0, NULL,
     "heartbeat without CURVE (the balancer must run with --heartbeat-plaintext too)"},
    {"cert", CONFIG_STRING, NULL, 0, 0, NULL, "PEM certificate chain file (required)"},
    {"key", CONFIG_STRING, NULL, 0, 0, NULL, "PEM private key file (required)"},
    {"client-ca", CONFIG_STRING, NULL, 0, 0, NULL,
     "mutual TLS: require every client to present a certificate chaining to a CA in this "
     "PEM file (default: no client certificate asked for)"},
    {"workers", CONFIG_INT, "0", 0, HB_MAX_WORKERS, NULL,
     "worker threads (0: one per online CPU)"},
    {"capacity", CONFIG_INT, "10000", 1, 100000000, NULL,
     "sessions this node is sized for, told to the balancer"},
    {"max-connections", CONFIG_INT, "10000", 1, 100000000, NULL,
     "open client connections at most; more are closed at once"},
    {"max-connections-per-addr", CONFIG_INT, "1024", 0, 100000000, NULL,
     "open connections one client address may hold (IPv6: one /64); more are closed at "
     "once (0: no limit)"},
    {"max-handshakes-per-addr", CONFIG_INT, "64", 0, 100000000, NULL,
     "TLS handshakes one client address (IPv6: one /64) may have in progress; more "
     "connections are closed at once (0: no limit)"},
    {"first-byte-timeout", CONFIG_DURATION, "3s", 0, 3600000, NULL,
     "a connection that sends no byte this long after the accept is closed (0: only "
     "--handshake-timeout applies)"},
    {"max-session-memory", CONFIG_SIZE, "1GiB", 0, 1ll << 50, NULL,
     "node-wide budget for session buffers (unsent replies, partial frames, TLS records); "
     "above it the sessions holding the most unread replies are closed first (0: no budget)"},
    {"max-frame", CONFIG_SIZE, "1MiB", 1024, 256ll << 20, NULL, "largest frame payload accepted"},
    {"handshake-timeout", CONFIG_DURATION, "10s", 100, 3600000, NULL,
     "time a client has to finish the TLS handshake"},
    {"idle-timeout", CONFIG_DURATION, "300s", 100, 86400000, NULL,
     "a session silent this long gets ERROR TIMEOUT and is closed"},
    {"drain-timeout", CONFIG_DURATION, "5s", 0, 600000, NULL,
     "on SIGTERM, time sessions get to finish before the node exits"},
    {"heartbeat-interval", CONFIG_DURATION, "250ms", 10, 60000, NULL,
     "heartbeat period until the balancer says otherwise"},
    {"max-output", CONFIG_SIZE, "4MiB", 65536, 1ll << 30, NULL,
     "per-session unsent replies above which the node stops reading"},
    {"max-inflight", CONFIG_INT, "1024", 1, 1000000, NULL,
     "per-session requests read but not yet answered at which the node stops reading"},
    {"log-level", CONFIG_ENUM, "info", 0, 0, "debug|info|warn|error", "log verbosity"},
    {"log-format", CONFIG_ENUM, "text", 0, 0, "text|json", "log lines as key=value text or JSON"},
    {"debug-hooks", CONFIG_BOOL, "false", 0, 0, NULL,
     "test hooks: SIGUSR2 stalls worker 0 for --debug-stall"},
    {"debug-stall", CONFIG_DURATION, "5s", 1, 600000, NULL,
     "how long SIGUSR2 stalls worker 0 (with --debug-hooks)"},
    {"journal", CONFIG_ENUM, "on", 0, 0, "on|off",
     "store every SEND before its ACK (off: ACK seq 0, nothing kept)"},
    {"journal-dir", CONFIG_STRING, NULL, 0, 0, NULL,
     "journal directory (default: journal-<id> in the working directory)"},
    {"fsync", CONFIG_ENUM, "batch", 0, 0, "always|batch|off",
     "when an ACK may go: always (after the record's fsync), batch (group commit, "
     "see --fsync-interval/--fsync-batch), off (after write(); UNSAFE: a power loss "
     "loses ACKed messages)"},
    {"fsync-interval", CONFIG_DURATION, "2ms", 1, 1000, NULL,
     "batch: longest a record waits for its fsync"},
    {"fsync-batch", CONFIG_INT, "1024", 1, 1000000, NULL,
     "batch: this many records waiting fsync at once"},
    {"journal-segment-bytes", CONFIG_SIZE, "64MiB", 4096, 1ll << 40, NULL,
     "a journal segment file rolls before it grows past this"},
    {"journal-retain-bytes", CONFIG_SIZE, "1GiB", 0, 1ll << 50, NULL,
     "oldest segments are deleted above this total (0: no limit)"},
    {"journal-retain-age", CONFIG_DURATION, "168h", 0, 10ll * 365 * 86400000, NULL,
     "segments last written longer ago are deleted (0: no limit)"},
    {"journal-consumers", CONFIG_STRING, NULL, 0, 0, NULL,
     "comma-separated consumer names retention waits for: no segment a consumer has not "
     "confirmed is deleted; over --journal-retain-bytes the node refuses SENDs and leaves "
     "rotation instead (berth tail --durable NAME confirms; default: none, retention "
     "deletes by size and age alone)"},
    {"journal-probe-interval", CONFIG_DURATION, "100ms", 0, 60000, NULL,
     "how often the journal's disk is probed (a 512-byte write+fsync and a free-space "
     "check) so a hung or full disk takes the node out of rotation (0: no probe)"},
    {"journal-probe-timeout", CONFIG_DURATION, "400ms", 0, 600000, NULL,
     "a probe or journal fsync pending longer makes the node unhealthy (0: never)"},
    {"journal-recover", CONFIG_ENUM, "refuse", 0, 0, "refuse|truncate",
     "a corrupt record before the journal's tail: refuse to start, or cut its segment "
     "there (loses what follows in that segment)"},
    {"feed", CONFIG_STRING, NULL, 0, 0, NULL,
     "ZeroMQ endpoint the journal is published on for consumers (berth tail), e.g. "
     "tcp://127.0.0.1:7101 (default: no feed)"},
    {"feed-insecure", CONFIG_BOOL, "false", 0, 0, NULL,
     "with --feed-plaintext (or a node without --curve-secret): allow a --feed endpoint "
     "other hosts can reach, unauthenticated and unencrypted (default: loopback and ipc:// "
     "only)"},
    {"feed-curve-allow", CONFIG_STRING, NULL, 0, 0, NULL,
     "the consumers (berth tail --curve-secret) allowed on the feed: a directory of *.pub "
     "files or a file of Z85 keys; required with --feed on a node with --curve-secret, whose "
     "key is the feed's CURVE server key"},
    {"feed-plaintext", CONFIG_BOOL, "false", 0, 0, NULL,
     "serve --feed without CURVE even though the node has --curve-secret: anyone reaching "
     "it reads every payload (loopback and ipc:// only unless --feed-insecure)"},
    {"jetstream", CONFIG_STRING, NULL, 0, 0, NULL,
     "NATS servers (nats://h1:4222,nats://h2:4222,...): publish every journal record, in "
     "journal order, to a JetStream stream (default: none)"},
    {"jetstream-stream", CONFIG_STRING, "BERTH", 0, 0, NULL, "the JetStream stream"},
    {"jetstream-subject-prefix", CONFIG_STRING, "berth", 0, 0, NULL,
     "records go to subject <prefix>.<node id>; the stream's subjects must cover it"},
    {"jetstream-user", CONFIG_STRING, NULL, 0, 0, NULL, "NATS user (with --jetstream-password)"},
    {"jetstream-password", CONFIG_STRING, NULL, 0, 0, NULL, "NATS password"},
    {"jetstream-token", CONFIG_STRING, NULL, 0, 0, NULL, "NATS authentication token"},
    {"jetstream-creds", CONFIG_STRING, NULL, 0, 0, NULL, "NATS .creds file (JWT and nkey seed)"},
    {"jetstream-nkey", CONFIG_STRING, NULL, 0, 0, NULL,
     "NATS nkey public key (with --jetstream-nkey-seed)"},
    {"jetstream-nkey-seed", CONFIG_STRING, NULL, 0, 0, NULL, "file holding that nkey's seed"},
    {"jetstream-ca", CONFIG_STRING, NULL, 0, 0, NULL,
     "TLS to NATS: verify the servers against this CA file (implies --jetstream-tls)"},
    {"jetstream-tls", CONFIG_BOOL, "false", 0, 0, NULL, "require TLS to NATS"},
    {"jetstream-create", CONFIG_BOOL, "false", 0, 0, NULL,
     "create the stream when it does not exist (with --jetstream-replicas and "
     "--jetstream-duplicate-window)"},
    {"jetstream-replicas", CONFIG_INT, "3", 1, 5, NULL, "replicas of a stream the node creates"},
    {"jetstream-duplicate-window", CONFIG_DURATION, "2m", 1000, 86400000ll * 7, NULL,
     "JetStream drops a re-sent message (same producer and message id) within this window; "
     "a stream with a shorter one is refused"},
    {"jetstream-allow-few-replicas", CONFIG_BOOL, "false", 0, 0, NULL,
     "allow --ack-after replicated on a stream with fewer than 3 replicas"},
    {"jetstream-window", CONFIG_INT, "2048", 1, 65536, NULL,
     "records sent to JetStream and not yet acknowledged, at most"},
    {"jetstream-timeout", CONFIG_DURATION, "2s", 10, 60000, NULL,
     "the oldest record sent waits this long for its PubAck before the forwarder sends "
     "again from it (also the stream probe's wait)"},
    {"jetstream-unhealthy-after", CONFIG_DURATION, "10s", 0, 600000, NULL,
     "JetStream failing this long (no PubAck, no answer) makes the node unhealthy; a "
     "stream that answers without a quorum does at once. Above JetStream's leader election "
     "(4-9 s in nats-server 2.9), so one server's loss is a pause"},
    {"jetstream-replay-from", CONFIG_INT, "0", 0, 9223372036854775807ll, NULL,
     "re-publish the journal from this seq at start (after a JetStream loss; the stream "
     "drops what it still has by message id within its duplicate window)"},
    {"ack-after", CONFIG_ENUM, "local", 0, 0, "local|replicated",
     "when a SEND is acknowledged: local (journal fsync; forwarding is asynchronous) or "
     "replicated (journal fsync AND the JetStream PubAck from a stream of >= 3 replicas)"},
};

/* Everything the main loop and the heartbeat fill callback share. */
struct node {
    struct config *cfg;
    SSL_CTX *ssl_ctx;
    struct node_stats stats;
    struct session_env env;
    struct worker **workers;
    unsigned nworkers;
    struct watchdog *watchdog;
    struct peer_limit *peers; /* per-address limits; NULL when both are 0 */
    struct journal *journal;  /* NULL with --journal off */
    struct feed *feed;        /* NULL without --feed */
    struct forwarder *forwarder; /* NULL without --jetstream */
    void *zctx;
    struct heartbeat *hb[NODE_MAX_BALANCERS]; /* one per balancer */
    unsigned nhb;
    int sig_fd;
    int notify_fd;
    bool draining;
    uint64_t drain_start_ms;
    uint64_t drain_deadline_ms;
    uint64_t prev_requests;   /* for msgs_per_sec */
    uint64_t prev_sample_ms;
    double last_rate;         /* msgs_per_sec at prev_sample_ms */
    bool curve;                /* CurveZMQ on the heartbeat channels */
    struct keys_pair curve_keys;
    uint8_t balancer_keys[NODE_MAX_BALANCERS][KEYS_LEN];
    char cert_sha256[HB_CERT_SHA256_HEX + 1];
    char id[HB_NODE_ID_MAX + 1];
    char listen[HB_ADDR_MAX + 1];
    char advertise[HB_ADDR_MAX + 1];
};

/* Says why a required file cannot be used, the way a user can act on. */
static int node_check_file(const char *flag, const char *path)
{
    if (!path || !*path) {
        fprintf(stderr, "berth-node: --%s is required\n", flag);
        return -1;
    }
    FILE *f = fopen(path, "r");
    if (f) {
        /* fopen accepts a directory; reading tells. */
        (void)fgetc(f);
        int e = ferror(f) ? errno : 0;
        fclose(f);
        if (e == 0)
            return 0;
        errno = e;
    }
    fprintf(stderr, "berth-node: --%s: cannot read %s: %s\n", flag, path, strerror(errno));
    return -1;
}

static bool node_is_wildcard(const char *host)
{
    return host[0] == '\0' || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 ||
           strcmp(host, "*") == 0;
}

static void node_set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
}

/* <hostname>-<port>, with characters a node id cannot hold turned into '-'. */
static void node_default_id(char *out, size_t len, uint16_t port)
{
    char host[256];
    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "node");
    host[sizeof(host) - 1] = '\0';
    char *dot = strchr(host, '.');
    if (dot && dot != host)
        *dot = '\0'; /* the short name is enough to tell nodes apart */
    for (char *p = host; *p; p++) {
        bool ok = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                  *p == '.' || *p == '_' || *p == '-';
        if (!ok)
            *p = '-';
    }
    char suffix[8];
    snprintf(suffix, sizeof(suffix), "-%u", port);
    size_t room = len - 1 - strlen(suffix);
    if (strlen(host) > room)
        host[room] = '\0';
    snprintf(out, len, "%s%s", host, suffix);
}

/* The shortest heartbeat interval in force: the watchdog's yardstick. */
static uint32_t node_interval_ms(const struct node *n)
{
    uint32_t ms = UINT32_MAX;
    for (unsigned i = 0; i < n->nhb; i++) {
        uint32_t v = heartbeat_interval_ms(n->hb[i]);
        if (v < ms)
            ms = v;
    }
    return ms;
}

static void node_fill(void *arg, struct hb_msg *m, uint64_t now)
{
    struct node *n = arg;
    uint64_t ticks[HB_MAX_WORKERS];
    m->nworkers = n->nworkers;
    for (unsigned i = 0; i < n->nworkers; i++) {
        struct node_worker_stats *ws = &n->stats.workers[i];
        ticks[i] = node_stats_get(&ws->ticks);
        m->workers[i].ticks = ticks[i];
        m->workers[i].handshakes_ok = node_stats_get(&ws->handshakes_ok);
        m->workers[i].handshakes_failed = node_stats_get(&ws->handshakes_failed);
    }
    uint64_t sessions = node_stats_sessions(&n->stats);
    m->sessions = sessions > UINT32_MAX ? UINT32_MAX : (uint32_t)sessions;
    m->accepted = node_stats_accepted(&n->stats);

    /* With several balancers this runs once per balancer per interval: the
     * rate is measured over at least half an interval and reused in
     * between, so every balancer sees the same figure. */
    uint64_t requests = node_stats_requests(&n->stats);
    uint64_t min_gap = node_interval_ms(n) / 2;
    if (n->prev_sample_ms == 0 || now >= n->prev_sample_ms + (min_gap ? min_gap : 1)) {
        if (n->prev_sample_ms != 0 && now > n->prev_sample_ms)
            n->last_rate = (double)(requests - n->prev_requests) * 1000.0 /
                           (double)(now - n->prev_sample_ms);
        n->prev_requests = requests;
        n->prev_sample_ms = now;
    }
    m->msgs_per_sec = n->last_rate;

    heartbeat_fill_peers(n->hb, n->nhb, m, now);

    m->draining = n->draining;
    if (n->draining) {
        /* Drained workers leave their loops; that is not a stall. */
        m->healthy = true;
        m->reason[0] = '\0';
    } else {
        uint64_t stall = watchdog_stall_ms(node_interval_ms(n));
        m->healthy = watchdog_check(n->watchdog, ticks, now, stall, m->reason, sizeof(m->reason));
        /* A node that cannot store SENDs leaves rotation instead of
         * refusing them one by one. */
        if (m->healthy && n->journal && !journal_healthy(n->journal, m->reason, sizeof(m->reason)))
            m->healthy = false;
        /* --ack-after replicated: no ACK can go while the engine cannot
         * store, so the node leaves rotation. (local: it goes on; the lag
         * shows.) */
        if (m->healthy && n->env.forwarder &&
            !forwarder_healthy(n->env.forwarder, m->reason, sizeof(m->reason)))
            m->healthy = false;
    }
    if (n->forwarder) {
        struct forwarder_stats fs;
        forwarder_get_stats(n->forwarder, &fs);
        m->forward = (struct hb_forward){.present = true, .healthy = fs.healthy,
                                         .forwarded_seq = fs.forwarded_seq,
                                         .lag_records = fs.lag_records, .lag_ms = fs.lag_ms,
                                         .errors = fs.publish_errors,
                                         .duplicates = fs.duplicates};
    }
}

static void node_begin_drain(struct node *n, const char *signame, uint64_t now)
{
    if (n->draining) {
        log_info("drain_in_progress", "signal=%s", signame);
        return;
    }
    n->draining = true;
    n->drain_start_ms = now;
    uint64_t timeout = (uint64_t)config_int(n->cfg, "drain-timeout");
    n->drain_deadline_ms = now + timeout;
    log_info("drain_start", "signal=%s sessions=%" PRIu64 " timeout_ms=%" PRIu64, signame,
             node_stats_sessions(&n->stats), timeout);
    for (unsigned i = 0; i < n->nhb; i++)
        heartbeat_leave(n->hb[i], now);
    for (unsigned i = 0; i < n->nworkers; i++)
        worker_drain(n->workers[i]);
}

static void node_on_signal(struct node *n, uint64_t now)
{
    for (;;) {
        struct signalfd_siginfo si;
        ssize_t r = read(n->sig_fd, &si, sizeof(si));
        if (r < 0 && errno == EINTR)
            continue;
        if (r != (ssize_t)sizeof(si))
            return; /* EAGAIN: all read */
        switch (si.ssi_signo) {
        case SIGTERM:
            node_begin_drain(n, "SIGTERM", now);
            break;
        case SIGINT:
            node_begin_drain(n, "SIGINT", now);
            break;
        case SIGUSR2:
            if (config_bool(n->cfg, "debug-hooks")) {
                uint64_t ms = (uint64_t)config_int(n->cfg, "debug-stall");
                log_info("debug_stall_requested", "worker=0 stall_ms=%" PRIu64, ms);
                worker_debug_stall(n->workers[0], ms);
            } else {
                log_info("signal_ignored", "signal=SIGUSR2 reason=\"--debug-hooks is off\"");
            }
            break;
        default:
            break;
        }
    }
}

static unsigned node_finished_workers(const struct node *n)
{
    unsigned done = 0;
    for (unsigned i = 0; i < n->nworkers; i++)
        done += worker_finished(n->workers[i]);
    return done;
}

static bool node_all_finished(const struct node *n)
{
    return node_finished_workers(n) == n->nworkers;
}

/* The main loop: returns when the drain is over (or at a fatal error, -1). */
static int node_run(struct node *n)
{
    for (;;) {
        uint64_t now = mono_now_ms();
        zmq_pollitem_t items[NODE_MAX_BALANCERS + 2];
        int ni = 0, hb_i[NODE_MAX_BALANCERS];
        memset(items, 0, sizeof(items));
        long timeout = -1;
        for (unsigned i = 0; i < n->nhb; i++) {
            void *sock = heartbeat_socket(n->hb[i]);
            hb_i[i] = -1;
            if (sock) {
                hb_i[i] = ni;
                items[ni].socket = sock;
                items[ni++].events = ZMQ_POLLIN;
            }
            long t = heartbeat_timeout_ms(n->hb[i], now);
            if (timeout < 0 || t < timeout)
                timeout = t;
        }
        int sig_i = ni;
        items[ni].fd = n->sig_fd;
        items[ni++].events = ZMQ_POLLIN;
        int notify_i = ni;
        items[ni].fd = n->notify_fd;
        items[ni++].events = ZMQ_POLLIN;

        if (n->draining) {
            long left = n->drain_deadline_ms > now ? (long)(n->drain_deadline_ms - now) : 0;
            if (timeout < 0 || left < timeout)
                timeout = left;
        }
        int rc = zmq_poll(items, ni, timeout);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            log_error("poll_failed", "error=\"%s\"", zmq_strerror(zmq_errno()));
            return -1;
        }
        now = mono_now_ms();
        for (unsigned i = 0; i < n->nhb; i++)
            if (hb_i[i] >= 0 && (items[hb_i[i]].revents & ZMQ_POLLIN))
                heartbeat_on_readable(n->hb[i], now);
        if (items[sig_i].revents & ZMQ_POLLIN)
            node_on_signal(n, now);
        if (items[notify_i].revents & ZMQ_POLLIN) {
            uint64_t v;
            while (read(n->notify_fd, &v, sizeof(v)) < 0 && errno == EINTR)
                ;
        }
        for (unsigned i = 0; i < n->nhb; i++)
            heartbeat_tick(n->hb[i], now);

        if (n->draining) {
            if (node_all_finished(n))
                return 0;
            if (now >= n->drain_deadline_ms) {
                log_warn("drain_timeout", "sessions=%" PRIu64, node_stats_sessions(&n->stats));
                return 0;
            }
        } else if (node_finished_workers(n) > 0) {
            /* A node serving with fewer loops than it reports is worse than
             * one that exits and is restarted (and leaves rotation meanwhile). */
            log_error("worker_exited", "workers=%u reason=\"a worker loop ended unexpectedly\"",
                      node_finished_workers(n));
            return -1;
        }
    }
}

static void node_free(struct node *n)
{
    for (unsigned i = 0; n->workers && i < n->nworkers; i++)
        if (n->workers[i])
            worker_stop(n->workers[i]);
    /* Workers end first (no more appends), then the feed and the journal
     * (which write the workers' eventfds), then the workers' memory. */
    for (unsigned i = 0; n->workers && i < n->nworkers; i++)
        worker_join(n->workers[i]);
    feed_free(n->feed);
    forwarder_free(n->forwarder);
    journal_free(n->journal);
    for (unsigned i = 0; n->workers && i < n->nworkers; i++)
        worker_free(n->workers[i]);
    free(n->workers);
    peer_limit_free(n->peers); /* after the workers: they release into it */
    for (unsigned i = 0; i < n->nhb; i++)
        heartbeat_free(n->hb[i], NODE_LEAVE_LINGER_MS);
    if (n->zctx) {
        int rc;
        do
            rc = zmq_ctx_term(n->zctx);
        while (rc != 0 && zmq_errno() == EINTR);
    }
    watchdog_free(n->watchdog);
    OPENSSL_cleanse(&n->curve_keys, sizeof(n->curve_keys));
    free(n->stats.workers);
    SSL_CTX_free(n->ssl_ctx);
    if (n->sig_fd >= 0)
        close(n->sig_fd);
    if (n->notify_fd >= 0)
        close(n->notify_fd);
    config_free(n->cfg);
}

/* Splits --balancer "a, b,c" into endpoints (spaces around items are
 * trimmed); an empty item, a repeated one, or more than NODE_MAX_BALANCERS
 * is an error, reported on stderr. Returns 0 or -1. */
static int node_parse_balancers(const char *list, char (*endpoints)[NODE_ENDPOINT_MAX],
                                unsigned *nend)
{
    *nend = 0;
    for (const char *p = list ? list : ""; *p;) {
        size_t len = strcspn(p, ",");
        const char *start = p;
        size_t tl = len;
        while (tl && (*start == ' ' || *start == '\t')) {
            start++;
            tl--;
        }
        while (tl && (start[tl - 1] == ' ' || start[tl - 1] == '\t'))
            tl--;
        if (tl == 0) {
            fprintf(stderr, "berth-node: --balancer: empty endpoint in \"%s\"\n", list);
            return -1;
        }
        if (*nend == NODE_MAX_BALANCERS) {
            fprintf(stderr, "berth-node: --balancer: more than %d endpoints\n",
                    NODE_MAX_BALANCERS);
            return -1;
        }
        if (tl >= (size_t)NODE_ENDPOINT_MAX) {
            fprintf(stderr, "berth-node: --balancer: endpoint longer than %zu bytes\n",
                    (size_t)NODE_ENDPOINT_MAX - 1);
            return -1;
        }
        memcpy(endpoints[*nend], start, tl);
        endpoints[*nend][tl] = '\0';
        for (unsigned j = 0; j < *nend; j++)
            if (strcmp(endpoints[j], endpoints[*nend]) == 0) {
                fprintf(stderr, "berth-node: --balancer: %s is listed twice\n", endpoints[j]);
                return -1;
            }
        (*nend)++;
        p += len;
        if (*p == ',') {
            p++;
            if (*p == '\0') {
                fprintf(stderr, "berth-node: --balancer: empty endpoint in \"%s\"\n", list);
                return -1;
            }
        }
    }
    if (*nend == 0) {
        fprintf(stderr, "berth-node: --balancer: no endpoint given\n");
        return -1;
    }
    return 0;
}

/* The journal consumer name of the forwarder (not to be used in
 * --journal-consumers). */
#define NODE_FORWARDER_CONSUMER "jetstream"

/* --jetstream*: connects, checks the stream, starts the forwarder. 0 or -1
 * (said on stderr, naming the cause). */
static int node_open_forwarder(struct node *n, const char *servers)
{
    char err[1024];
    bool replicated = strcmp(config_str(n->cfg, "ack-after"), "replicated") == 0;
    struct jetstream_config jc = {
        .servers = servers,
        .stream = config_str(n->cfg, "jetstream-stream"),
        .subject_prefix = config_str(n->cfg, "jetstream-subject-prefix"),
        .node_id = n->id,
        .user = config_str(n->cfg, "jetstream-user"),
        .password = config_str(n->cfg, "jetstream-password"),
        .token = config_str(n->cfg, "jetstream-token"),
        .creds_file = config_str(n->cfg, "jetstream-creds"),
        .nkey = config_str(n->cfg, "jetstream-nkey"),
        .nkey_seed_file = config_str(n->cfg, "jetstream-nkey-seed"),
        .ca_file = config_str(n->cfg, "jetstream-ca"),
        .tls = config_bool(n->cfg, "jetstream-tls"),
        .create = config_bool(n->cfg, "jetstream-create"),
        .replicas = (uint32_t)config_int(n->cfg, "jetstream-replicas"),
        .duplicate_window_ms = (uint64_t)config_int(n->cfg, "jetstream-duplicate-window"),
        .min_replicas = replicated && !config_bool(n->cfg, "jetstream-allow-few-replicas") ? 3 : 0,
        .max_pending = (uint32_t)config_int(n->cfg, "jetstream-window") + 64,
    };
    struct forwarder_config fc = {
        .journal = n->journal,
        .consumer = NODE_FORWARDER_CONSUMER,
        .window = (uint32_t)config_int(n->cfg, "jetstream-window"),
        .timeout_ms = (uint32_t)config_int(n->cfg, "jetstream-timeout"),
        /* Once per heartbeat: a replicated node must leave rotation fast
         * (the balancers' interval is not known yet at start). */
        .probe_ms = (uint32_t)config_int(n->cfg, "heartbeat-interval"),
        .unhealthy_after_ms = (uint32_t)config_int(n->cfg, "jetstream-unhealthy-after"),
        .replay_from = (uint64_t)config_int(n->cfg, "jetstream-replay-from"),
    };
    if (jetstream_engine_new(&jc, &fc.engine, err, sizeof(err)) != 0) {
        fprintf(stderr, "berth-node: %s\n", err);
        return -1;
    }
    n->forwarder = forwarder_new(&fc, err, sizeof(err));
    if (!n->forwarder) {
        fprintf(stderr, "berth-node: %s\n", err);
        return -1;
    }
    n->env.forwarder = replicated ? n->forwarder : NULL;
    return 0;
}

/* The journal (recovered before any client is served) and the feed, from
 * the --journal*, --fsync* and --feed settings. 0 or -1 (said on stderr). */
static int node_open_journal(struct node *n)
{
    char err[1024];
    if (strcmp(config_str(n->cfg, "journal"), "off") == 0) {
        if (config_str(n->cfg, "feed")[0])
            log_warn("feed_off", "reason=\"--feed needs the journal; --journal is off\"");
        return 0;
    }
    char dir[4096];
    const char *d = config_str(n->cfg, "journal-dir");
    if (d && d[0])
        snprintf(dir, sizeof(dir), "%s", d);
    else
        snprintf(dir, sizeof(dir), "journal-%s", n->id);
    const char *fs = config_str(n->cfg, "fsync");
    /* --journal-consumers: split in place of a copy; the journal copies the names. */
    char names[JOURNAL_CONSUMERS_MAX * (JOURNAL_CONSUMER_NAME_MAX + 1) + 1];
    const char *consumers[JOURNAL_CONSUMERS_MAX];
    size_t nconsumers = 0;
    const char *cl = config_str(n->cfg, "journal-consumers");
    if (cl && cl[0]) {
        if (strlen(cl) >= sizeof(names)) {
            fprintf(stderr, "berth-node: --journal-consumers: too long (at most %d names)\n",
                    JOURNAL_CONSUMERS_MAX);
            return -1;
        }
        snprintf(names, sizeof(names), "%s", cl);
        for (char *save = NULL, *t = strtok_r(names, ",", &save); t;
             t = strtok_r(NULL, ",", &save)) {
            if (nconsumers == JOURNAL_CONSUMERS_MAX) {
                fprintf(stderr, "berth-node: --journal-consumers: at most %d names\n",
                        JOURNAL_CONSUMERS_MAX);
                return -1;
            }
            consumers[nconsumers++] = t;
        }
    }
    /* The forwarder is one more consumer: retention keeps what it has not
     * delivered. */
    const char *js = config_str(n->cfg, "jetstream");
    if (js && js[0]) {
        if (nconsumers == JOURNAL_CONSUMERS_MAX) {
            fprintf(stderr, "berth-node: --journal-consumers: at most %d names with --jetstream\n",
                    JOURNAL_CONSUMERS_MAX - 1);
            return -1;
        }
        consumers[nconsumers++] = NODE_FORWARDER_CONSUMER;
    }
    struct journal_config jc = {
        .dir = dir,
        .fsync = strcmp(fs, "always") == 0 ? JOURNAL_FSYNC_ALWAYS
                 : strcmp(fs, "off") == 0  ? JOURNAL_FSYNC_OFF
                                           : JOURNAL_FSYNC_BATCH,
        .fsync_interval_ms = (uint32_t)config_int(n->cfg, "fsync-interval"),
        .fsync_batch = (uint32_t)config_int(n->cfg, "fsync-batch"),
        .segment_bytes = (uint64_t)config_int(n->cfg, "journal-segment-bytes"),
        .retain_bytes = (uint64_t)config_int(n->cfg, "journal-retain-bytes"),
        .retain_age_ms = (uint64_t)config_int(n->cfg, "journal-retain-age"),
        .probe_interval_ms = (uint32_t)config_int(n->cfg, "journal-probe-interval"),
        .probe_timeout_ms = (uint32_t)config_int(n->cfg, "journal-probe-timeout"),
        .consumers = consumers,
        .nconsumers = nconsumers,
        .recover = strcmp(config_str(n->cfg, "journal-recover"), "truncate") == 0
                       ? JOURNAL_RECOVER_TRUNCATE
                       : JOURNAL_RECOVER_REFUSE,
    };
    n->journal = journal_open(&jc, err, sizeof(err));
    if (!n->journal) {
        fprintf(stderr, "berth-node: %s\n", err);
        return -1;
    }
    if (jc.fsync == JOURNAL_FSYNC_OFF)
        log_warn("fsync_off", "dir=%s reason=\"--fsync off: a power loss can lose acknowledged "
                 "messages\"", dir);
    n->env.journal = n->journal;
    const char *feed = config_str(n->cfg, "feed");
    if (feed && feed[0]) {
        struct feed_config fc = {.endpoint = feed, .node_id = n->id, .journal = n->journal,
                                 .curve_keys = n->curve ? &n->curve_keys : NULL,
                                 .curve_allow = config_str(n->cfg, "feed-curve-allow"),
                                 .plaintext = config_bool(n->cfg, "feed-plaintext"),
                                 .insecure = config_bool(n->cfg, "feed-insecure")};
        n->feed = feed_new(&fc, err, sizeof(err));
        if (!n->feed) {
            fprintf(stderr, "berth-node: --feed %s: %s\n", feed, err);
            return -1;
        }
    }
    return js && js[0] ? node_open_forwarder(n, js) : 0;
}

/* The heartbeat channel's security from --curve-secret, --balancer-key and
 * --heartbeat-plaintext: CURVE unless plaintext is asked for by name.
 * --balancer-key holds one key for all nend balancers or one per balancer.
 * Errors go to stderr; returns 0 or -1. */
static int node_setup_curve(struct node *n, unsigned nend)
{
    const char *secret = config_str(n->cfg, "curve-secret");
    const char *bkeys = config_str(n->cfg, "balancer-key");
    bool have_secret = secret && *secret, have_bkeys = bkeys && *bkeys;
    char err[512];
    if (config_bool(n->cfg, "heartbeat-plaintext")) {
        if (have_secret || have_bkeys) {
            fprintf(stderr, "berth-node: --heartbeat-plaintext contradicts --curve-secret/"
                            "--balancer-key: pass one or the other\n");
            return -1;
        }
        return 0;
    }
    if (!have_secret || !have_bkeys) {
        fprintf(stderr, "berth-node: the heartbeat channel needs --curve-secret FILE (this node's "
                        "key, from `berth keygen`) and --balancer-key FILE_OR_Z85 (the balancer's "
                        "public key), or --heartbeat-plaintext to run it without authentication "
                        "(missing: %s)\n",
                !have_secret && !have_bkeys ? "both" : !have_secret ? "--curve-secret"
                                                                    : "--balancer-key");
        return -1;
    }
    bool open_to_others = false;
    if (keys_load_secret(secret, &n->curve_keys, &open_to_others, err, sizeof(err)) != 0) {
        fprintf(stderr, "berth-node: --curve-secret: %s\n", err);
        return -1;
    }
    if (open_to_others)
        fprintf(stderr, "berth-node: warning: --curve-secret %s is readable by group or others: "
                        "chmod 600 it\n", secret);
    unsigned nkeys = 0;
    for (const char *p = bkeys; *p && nkeys <= NODE_MAX_BALANCERS;) {
        size_t len = strcspn(p, ",");
        char item[4096];
        const char *start = p;
        while (len && (*start == ' ' || *start == '\t')) {
            start++;
            len--;
        }
        while (len && (start[len - 1] == ' ' || start[len - 1] == '\t'))
            len--;
        if (len == 0 || len >= sizeof(item)) {
            fprintf(stderr, "berth-node: --balancer-key: empty or overlong item\n");
            return -1;
        }
        if (nkeys == NODE_MAX_BALANCERS) {
            fprintf(stderr, "berth-node: --balancer-key: more than %d keys\n", NODE_MAX_BALANCERS);
            return -1;
        }
        memcpy(item, start, len);
        item[len] = '\0';
        if (keys_load_text_or_file(item, n->balancer_keys[nkeys], err, sizeof(err)) != 0) {
            fprintf(stderr, "berth-node: --balancer-key: %s\n", err);
            return -1;
        }
        nkeys++;
        p = start + len;
        while (*p && *p != ',')
            p++;
        if (*p == ',')
            p++;
    }
    if (nkeys == 1) {
        for (unsigned i = 1; i < nend; i++)
            memcpy(n->balancer_keys[i], n->balancer_keys[0], KEYS_LEN);
    } else if (nkeys != nend) {
        fprintf(stderr, "berth-node: --balancer-key: %u keys for %u --balancer endpoints (give "
                        "one key for all, or one per endpoint in the same order)\n", nkeys, nend);
        return -1;
    }
    n->curve = true;
    return 0;
}

/* A warning, not a refusal, when path is open to group or others (kind:
 * shared/keys.h); --feed-curve-allow is looked at by the feed. */
static void node_warn_open_key(const char *setting, const char *path, enum keys_file_kind kind)
{
    unsigned mode = 0;
    char which[4096];
    if (keys_check_mode(path, kind, &mode, which, sizeof(which)) == KEYS_MODE_OPEN)
        log_warn("key_file_open", "setting=%s path=\"%s\" mode=%04o detail=\"%s\"", setting,
                 which, mode, keys_mode_advice(kind));
}

/* SHA-256 of the certificate the node serves (DER), lower-case hex: sent in
 * REGISTER so clients can check they reached the node the balancer named. */
static int node_cert_sha256(SSL_CTX *ctx, char out[HB_CERT_SHA256_HEX + 1])
{
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!cert || X509_digest(cert, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32)
        return -1;
    hex_encode(out, md, mdlen);
    return 0;
}

/* Settings, TLS, listeners, heartbeat channel; 0, or the exit code. */
static int node_setup(struct node *n, int argc, char **argv)
{
    char err[512];
    n->cfg = config_new("berth-node", BERTH_VERSION,
                        "a TLS listener node that heartbeats to a berth balancer",
                        node_settings, sizeof(node_settings) / sizeof(node_settings[0]));
    if (!n->cfg) {
        fprintf(stderr, "berth-node: out of memory\n");
        return 1;
    }
    switch (config_load(n->cfg, argc, argv, err, sizeof(err))) {
    case CONFIG_OK:
        break;
    case CONFIG_HELP:
        config_usage(n->cfg, stdout);
        return -1;
    case CONFIG_VERSION:
        config_version_line(n->cfg, stdout);
        return -1;
    case CONFIG_ERROR:
    default:
        fprintf(stderr, "berth-node: %s\n", err);
        return NODE_EXIT_USAGE;
    }
    if (config_npositional(n->cfg) > 0) {
        fprintf(stderr, "berth-node: unexpected argument \"%s\" (see --help)\n",
                config_positional(n->cfg, 0));
        return NODE_EXIT_USAGE;
    }
    enum log_level level;
    if (log_level_parse(config_str(n->cfg, "log-level"), &level) != 0) {
        fprintf(stderr, "berth-node: --log-level: bad value \"%s\"\n",
                config_str(n->cfg, "log-level"));
        return NODE_EXIT_USAGE;
    }

    /* Addresses first: every usage error before anything is bound. */
    struct addr listen_addr, adv_addr;
    /* --balancer a,b,c: one heartbeat channel per endpoint */
    const char *list = config_str(n->cfg, "balancer");
    char endpoints[NODE_MAX_BALANCERS][NODE_ENDPOINT_MAX];
    unsigned nend = 0;
    if (node_parse_balancers(list, endpoints, &nend) != 0)
        return NODE_EXIT_USAGE;
    const char *listen_text = config_str(n->cfg, "listen");
    if (addr_parse(listen_text, true, &listen_addr, err, sizeof(err)) != 0) {
        fprintf(stderr, "berth-node: --listen %s: %s\n", listen_text, err);
        return NODE_EXIT_USAGE;
    }
    const char *adv_text = config_str(n->cfg, "advertise");
    bool have_adv = adv_text && *adv_text;
    if (have_adv) {
        if (addr_parse(adv_text, false, &adv_addr, err, sizeof(err)) != 0) {
            fprintf(stderr, "berth-node: --advertise %s: %s\n", adv_text, err);
            return NODE_EXIT_USAGE;
        }
        if (node_is_wildcard(adv_addr.host)) {
            fprintf(stderr, "berth-node: --advertise %s: a wildcard address cannot be dialled\n",
                    adv_text);
            return NODE_EXIT_USAGE;
        }
    } else if (node_is_wildcard(listen_addr.host)) {
        fprintf(stderr, "berth-node: --listen %s is a wildcard address: set --advertise to the "
                        "host:port clients should dial\n", listen_text);
        return NODE_EXIT_USAGE;
    }
    const char *id_text = config_str(n->cfg, "id");
    if (id_text && *id_text && !hb_node_id_valid(id_text)) {
        fprintf(stderr, "berth-node: --id \"%s\": must match [A-Za-z0-9._-]{1,64}\n", id_text);
        return NODE_EXIT_USAGE;
    }
    const char *cert = config_str(n->cfg, "cert"), *key = config_str(n->cfg, "key");
    if (node_check_file("cert", cert) != 0 || node_check_file("key", key) != 0)
        return NODE_EXIT_USAGE;
    n->ssl_ctx = tls_ctx_server_new(cert, key, err, sizeof(err));
    if (!n->ssl_ctx) {
        fprintf(stderr, "berth-node: %s\n", err);
        return NODE_EXIT_USAGE;
    }
    if (node_cert_sha256(n->ssl_ctx, n->cert_sha256) != 0) {
        fprintf(stderr, "berth-node: --cert %s: cannot compute its SHA-256 digest\n", cert);
        return NODE_EXIT_USAGE;
    }
    const char *client_ca = config_str(n->cfg, "client-ca");
    if (client_ca && *client_ca) {
        if (node_check_file("client-ca", client_ca) != 0)
            return NODE_EXIT_USAGE;
        if (tls_ctx_require_client_cert(n->ssl_ctx, client_ca, err, sizeof(err)) != 0) {
            fprintf(stderr, "berth-node: --client-ca: %s\n", err);
            return NODE_EXIT_USAGE;
        }
    }
    if (node_setup_curve(n, nend) != 0)
        return NODE_EXIT_USAGE;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    if (addr_resolve(&listen_addr, SOCK_STREAM, &ss, &sslen, err, sizeof(err)) != 0) {
        fprintf(stderr, "berth-node: --listen %s: %s\n", listen_text, err);
        return NODE_EXIT_USAGE;
    }

    /* Workers inherit this mask: signals reach only the signalfd. SIGPIPE
     * is ignored so a write to a closed socket is just an error. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR2);
    if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, "berth-node: cannot set the signal mask\n");
        return 1;
    }
    n->sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    n->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (n->sig_fd < 0 || n->notify_fd < 0) {
        fprintf(stderr, "berth-node: signalfd/eventfd: %s\n", strerror(errno));
        return 1;
    }

    long nw = config_int(n->cfg, "workers");
    if (nw == 0) {
        nw = sysconf(_SC_NPROCESSORS_ONLN);
        if (nw < 1)
            nw = 1;
        if (nw > HB_MAX_WORKERS)
            nw = HB_MAX_WORKERS;
    }
    n->nworkers = (unsigned)nw;
    n->stats.nworkers = n->nworkers;
    size_t stats_size = n->nworkers * sizeof(struct node_worker_stats);
    n->stats.workers = aligned_alloc(alignof(struct node_worker_stats), stats_size);
    n->workers = calloc(n->nworkers, sizeof(*n->workers));
    n->watchdog = watchdog_new(n->nworkers, mono_now_ms());
    if (!n->stats.workers || !n->workers || !n->watchdog) {
        fprintf(stderr, "berth-node: out of memory\n");
        return 1;
    }
    memset(n->stats.workers, 0, stats_size);
    atomic_init(&n->stats.connections, 0);
    atomic_init(&n->stats.session_memory, 0);

    n->env.start_ms = mono_now_ms();
    n->env.max_frame = (uint32_t)config_int(n->cfg, "max-frame");
    n->env.idle_timeout_ms = (uint32_t)config_int(n->cfg, "idle-timeout");
    n->env.handshake_timeout_ms = (uint32_t)config_int(n->cfg, "handshake-timeout");
    n->env.first_byte_timeout_ms = (uint32_t)config_int(n->cfg, "first-byte-timeout");
    n->env.max_connections = (uint32_t)config_int(n->cfg, "max-connections");
    n->env.max_connections_per_addr = (uint32_t)config_int(n->cfg, "max-connections-per-addr");
    n->env.max_handshakes_per_addr = (uint32_t)config_int(n->cfg, "max-handshakes-per-addr");
    n->env.max_session_memory = (size_t)config_int(n->cfg, "max-session-memory");
    if (n->env.max_connections_per_addr || n->env.max_handshakes_per_addr) {
        n->peers = peer_limit_new(n->env.max_connections_per_addr,
                                  n->env.max_handshakes_per_addr);
        if (!n->peers) {
            fprintf(stderr, "berth-node: out of memory\n");
            return 1;
        }
    }
    n->env.max_output = (size_t)config_int(n->cfg, "max-output");
    n->env.max_inflight = (uint32_t)config_int(n->cfg, "max-inflight");
    n->env.stats = &n->stats;
    n->env.node_id = n->id;
    n->env.advertise = n->advertise;

    for (unsigned i = 0; i < n->nworkers; i++) {
        struct worker_config wc = {
            .index = i,
            .listen = (const struct sockaddr *)&ss,
            .listen_len = sslen,
            .ssl_ctx = n->ssl_ctx,
            .env = &n->env,
            .stats = &n->stats.workers[i],
            .notify_fd = n->notify_fd,
            .peers = n->peers,
        };
        n->workers[i] = worker_new(&wc, err, sizeof(err));
        if (!n->workers[i]) {
            fprintf(stderr, "berth-node: --listen %s: %s\n", listen_text, err);
            return 1;
        }
        if (i == 0 && listen_addr.port == 0) {
            /* Port 0: the kernel chose for worker 0; the others join it. */
            listen_addr.port = worker_port(n->workers[0]);
            node_set_port(&ss, listen_addr.port);
        }
    }
    addr_format(&listen_addr, n->listen, sizeof(n->listen));
    addr_format(have_adv ? &adv_addr : &listen_addr, n->advertise, sizeof(n->advertise));
    if (id_text && *id_text)
        snprintf(n->id, sizeof(n->id), "%s", id_text);
    else
        node_default_id(n->id, sizeof(n->id), listen_addr.port);

    log_set_format(strcmp(config_str(n->cfg, "log-format"), "json") == 0 ? LOG_FORMAT_JSON
                                                                         : LOG_FORMAT_TEXT);
    log_setup(level, "node", n->id);
    node_warn_open_key("--key", key, KEYS_FILE_PRIVATE);
    if (node_open_journal(n) != 0)
        return 1;

    uint64_t boot = 0;
    ssize_t got;
    do
        got = getrandom(&boot, sizeof(boot), 0);
    while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof(boot)) {
        fprintf(stderr, "berth-node: getrandom: %s\n", got < 0 ? strerror(errno) : "short read");
        return 1;
    }

    n->zctx = zmq_ctx_new();
    if (!n->zctx) {
        fprintf(stderr, "berth-node: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    struct heartbeat_config hc = {
        .endpoint = NULL,
        .node_id = n->id,
        .addr = n->advertise,
        .capacity = (uint32_t)config_int(n->cfg, "capacity"),
        .interval_ms = (uint32_t)config_int(n->cfg, "heartbeat-interval"),
        .boot_id = boot,
        .cert_sha256 = n->cert_sha256,
        .curve_keys = n->curve ? &n->curve_keys : NULL,
    };
    if (!n->curve)
        log_warn("heartbeat_plaintext", "detail=\"heartbeats are not authenticated or encrypted; "
                 "use --curve-secret and --balancer-key\"");
    for (unsigned i = 0; i < nend; i++) {
        hc.endpoint = endpoints[i];
        hc.curve_server_key = n->curve ? n->balancer_keys[i] : NULL;
        n->hb[i] = heartbeat_new(n->zctx, &hc, node_fill, n, mono_now_ms(), err, sizeof(err));
        if (!n->hb[i]) {
            fprintf(stderr, "berth-node: --balancer %s: %s\n", endpoints[i], err);
            return NODE_EXIT_USAGE;
        }
        n->nhb++;
    }
    for (unsigned i = 0; i < n->nworkers; i++) {
        if (worker_start(n->workers[i], err, sizeof(err)) != 0) {
            fprintf(stderr, "berth-node: %s\n", err);
            return 1;
        }
    }
    log_info("start", "listen=%s advertise=%s workers=%u balancer=%s version=%s boot=%016" PRIx64
             " max_connections=%u max_connections_per_addr=%u max_handshakes_per_addr=%u"
             " max_frame=%u max_session_memory=%zu",
             n->listen, n->advertise, n->nworkers, list, BERTH_VERSION, boot,
             n->env.max_connections, n->env.max_connections_per_addr,
             n->env.max_handshakes_per_addr, n->env.max_frame, n->env.max_session_memory);
    if (client_ca && *client_ca)
        log_info("client_cert_required", "client_ca=%s", client_ca);
    return 0;
}

int main(int argc, char **argv)
{
    struct node n;
    memset(&n, 0, sizeof(n));
    n.sig_fd = n.notify_fd = -1;

    int rc = node_setup(&n, argc, argv);
    if (rc != 0) {
        node_free(&n);
        return rc < 0 ? 0 : rc;
    }
    rc = node_run(&n);
    /* Sessions still open here are cut by the workers' stop. */
    uint64_t left = node_stats_sessions(&n.stats);
    bool drained = n.draining;
    uint64_t drain_start = n.drain_start_ms;
    node_free(&n);
    if (drained)
        log_info("drain_done", "elapsed_ms=%" PRIu64 " sessions_cut=%" PRIu64,
                 mono_now_ms() - drain_start, left);
    return rc == 0 ? 0 : 1;
}
