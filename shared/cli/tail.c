/* tail: one DEALER per --feed endpoint (a CURVE client with --curve-secret
 * and --feed-key); subscribes, grants credit as it consumes, checks every
 * record's CRC32C, resubscribes after a node restart from the seq after
 * the last one seen, and stops after --count records or --duration.
 * Record layout: docs/DESIGN.md, "Journal". */
#include "tail.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>
#include <openssl/crypto.h>

#include "config.h"
#include "feed_msg.h"
#include "hb_msg.h"
#include "journal_record.h"
#include "keys.h"
#include "mono.h"

#define TAIL_FEEDS_MAX 16
#define TAIL_KEEPALIVE_MS 1000
#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

static const struct config_setting tail_settings[] = {
    {"feed", CONFIG_STRING, NULL, 0, 0, NULL,
     "node feed endpoint(s), comma-separated: tcp://host:port (the nodes' --feed)"},
    {"jetstream", CONFIG_STRING, NULL, 0, 0, NULL,
     "read the JetStream stream the nodes forward to instead: NATS servers, "
     "nats://h1:4222,... (with --stream; --from is then the stream's sequence)"},
    {"stream", CONFIG_STRING, "BERTH", 0, 0, NULL, "with --jetstream: the stream"},
    {"subject", CONFIG_STRING, "berth.>", 0, 0, NULL,
     "with --jetstream: the subjects to read (the nodes' --jetstream-subject-prefix, then "
     "\".>\" for all nodes or \".<node id>\" for one)"},
    {"from", CONFIG_INT, "0", 0, 9223372036854775807ll, NULL,
     "first seq to replay on every node (0: only records stored from now on)"},
    {"count", CONFIG_INT, "0", 0, 9223372036854775807ll, NULL,
     "stop after this many records in all (0: no limit)"},
    {"duration", CONFIG_DURATION, "0", 0, 86400000ll * 365, NULL,
     "stop after this long (0: no limit)"},
    {"out", CONFIG_STRING, NULL, 0, 0, NULL,
     "append the records, as stored (journal format), to this file instead of printing"},
    {"credit", CONFIG_INT, "1024", 1, 4096, NULL, "records in flight per node"},
    {"durable", CONFIG_STRING, NULL, 0, 0, NULL,
     "consumer name (one of the nodes' --journal-consumers): each node keeps what this "
     "consumer has not confirmed, and a restart with --from 0 goes on after the last "
     "record confirmed; confirmed once written out, every second and at exit"},
    {"timeout", CONFIG_DURATION, "5s", 100, 3600000, NULL,
     "a node that does not answer the subscription this long is an error"},
    {"curve-secret", CONFIG_STRING, NULL, 0, 0, NULL,
     "this consumer's CURVE secret key file (NAME.key from `berth keygen`; the nodes allow "
     "its NAME.pub in --feed-curve-allow): connect with CURVE (with --feed-key)"},
    {"feed-key", CONFIG_STRING, NULL, 0, 0, NULL,
     "the nodes' CURVE public keys (their --curve-secret's .pub): a .pub file or Z85 text; "
     "one for every --feed, or a comma-separated list in --feed's order"},
};

struct tail_feed {
    char endpoint[256];
    uint8_t server_key[KEYS_LEN]; /* the node's public key, with --feed-key */
    void *sock;
    char node[256];        /* from WELCOME */
    bool welcomed;
    uint64_t last_seq;     /* last record seen, 0 none */
    uint64_t unacked;      /* records since the last credit */
    uint64_t last_sent_ms;
    uint64_t subscribed_ms;
    uint64_t confirmed_seq;  /* last seq confirmed to a durable subscription */
};

#define TAIL_CONFIRM_MS 1000
static char tail_durable[FEED_NAME_MAX + 1]; /* --durable, "" none */

static volatile sig_atomic_t tail_stop;
static void tail_on_signal(int sig) { (void)sig; tail_stop = 1; }

/* 0 sent, 1 not now (the pipe is full or not connected yet: the caller
 * tries again later), -1 the socket is unusable (said on stderr). */
static int tail_send(struct tail_feed *t, const uint8_t *p, size_t len)
{
    t->last_sent_ms = mono_now_ms();
    if (zmq_send(t->sock, p, len, ZMQ_DONTWAIT) >= 0)
        return 0;
    if (zmq_errno() == EAGAIN || zmq_errno() == EINTR)
        return 1;
    fprintf(stderr, "berth tail: %s: send: %s\n", t->endpoint, zmq_strerror(zmq_errno()));
    return -1;
}

/* Encodes m and sends it. 0, 1 or -1 (tail_send). */
static int tail_send_msg(struct tail_feed *t, const struct feed_msg *m)
{
    uint8_t b[FEED_MSG_MAX];
    size_t n = feed_msg_encode(m, b, sizeof(b));
    if (n == 0) {
        fprintf(stderr, "berth tail: %s: cannot encode a '%c' message\n", t->endpoint, m->type);
        return -1;
    }
    return tail_send(t, b, n);
}

static int tail_subscribe(struct tail_feed *t, uint64_t from, uint32_t credit)
{
    struct feed_msg m = {.type = FEED_MSG_SUBSCRIBE, .seq = from, .credit = credit,
                         .name = tail_durable[0] ? tail_durable : NULL,
                         .name_len = strlen(tail_durable)};
    t->welcomed = false;
    t->unacked = 0;
    t->subscribed_ms = mono_now_ms();
    return tail_send_msg(t, &m);
}

/* Durable subscriptions: tells the node that everything up to the last
 * record written out is processed. Called only after that output was
 * flushed. 0 or -1 (tail_send). */
static int tail_confirm(struct tail_feed *t)
{
    if (!tail_durable[0] || !t->welcomed || t->last_seq <= t->confirmed_seq)
        return 0;
    struct feed_msg m = {.type = FEED_MSG_CONFIRM, .seq = t->last_seq};
    int rc = tail_send_msg(t, &m);
    if (rc == 0)
        t->confirmed_seq = t->last_seq;
    return rc < 0 ? -1 : 0;
}

/* Grants the records consumed since the last grant; what could not go
 * now goes with the next one. 0 or -1 (tail_send). */
static int tail_credit(struct tail_feed *t)
{
    struct feed_msg m = {.type = FEED_MSG_CREDIT, .credit = (uint32_t)t->unacked};
    int rc = tail_send_msg(t, &m);
    if (rc == 0)
        t->unacked = 0;
    return rc < 0 ? -1 : 0;
}

/* data as text: printable ASCII stays, the rest is escaped. */
static void tail_print_escaped(FILE *out, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            fputc(c, out);
        else if (c == '\n')
            fputs("\\n", out);
        else
            fprintf(out, "\\x%02x", c);
    }
}

/* One RECORD: checks it (the journal's own codec) and prints or writes it.
 * 0, or -1 (bad record). */
static int tail_record(struct tail_feed *t, const uint8_t *p, size_t len, FILE *out, bool raw)
{
    struct journal_record r;
    if (journal_record_parse(p, len, &r) != (long)len)
        return -1;
    if (t->last_seq && r.seq != t->last_seq + 1)
        fprintf(stderr, "berth tail: %s: seq %" PRIu64 " follows %" PRIu64
                " (records in between are no longer kept)\n", t->node, r.seq, t->last_seq);
    t->last_seq = r.seq;
    if (raw)
        return fwrite(p, 1, len, out) == len ? 0 : -1;
    tail_print_record(out, t->node, &r);
    return 0;
}

void tail_print_record(FILE *out, const char *node, const struct journal_record *r)
{
    fprintf(out, "seq=%" PRIu64 " node=%s client=\"", r->seq, node);
    tail_print_escaped(out, (const uint8_t *)r->name, r->name_len);
    fprintf(out, "\" peer=%.*s", (int)r->peer_len, r->peer);
    /* Identity kind 1 (mTLS): the certificate's SHA-256, then its identity. */
    if (r->ident_kind == JOURNAL_IDENT_CERT) {
        fputs(" cert=\"", out);
        tail_print_escaped(out, r->cert + JOURNAL_CERT_SHA256_LEN,
                           r->cert_len - JOURNAL_CERT_SHA256_LEN);
        fputs("\" cert_sha256=", out);
        for (size_t i = 0; i < JOURNAL_CERT_SHA256_LEN; i++)
            fprintf(out, "%02x", r->cert[i]);
    }
    fprintf(out, " id=%" PRIu64 " ts=%" PRIu64 " bytes=%" PRIu32 " data=\"", r->message_id,
            r->timestamp_ms, r->len);
    tail_print_escaped(out, r->data, r->len);
    fputs("\"\n", out);
}

static int tail_split(const char *list, struct tail_feed *feeds, size_t *n)
{
    *n = 0;
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof(feeds[0].endpoint) || *n == TAIL_FEEDS_MAX)
            return -1;
        memcpy(feeds[*n].endpoint, p, len);
        feeds[*n].endpoint[len] = '\0';
        (*n)++;
        p += len;
        if (*p == ',')
            p++;
    }
    return *n ? 0 : -1;
}

/* --feed-key: one key for all nf feeds, or one per feed in order. 0, or
 * -1 (said on stderr). */
static int tail_feed_keys(const char *list, struct tail_feed *feeds, size_t nf)
{
    size_t nkeys = 0;
    char err[512];
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        const char *start = p;
        while (len && (*start == ' ' || *start == '\t')) {
            start++;
            len--;
        }
        while (len && (start[len - 1] == ' ' || start[len - 1] == '\t'))
            len--;
        char item[4096];
        if (len == 0 || len >= sizeof(item) || nkeys == nf) {
            fprintf(stderr, "berth tail: --feed-key: %s\n",
                    nkeys == nf ? "more keys than --feed endpoints" : "empty or overlong item");
            return -1;
        }
        memcpy(item, start, len);
        item[len] = '\0';
        if (keys_load_text_or_file(item, feeds[nkeys].server_key, err, sizeof(err)) != 0) {
            fprintf(stderr, "berth tail: --feed-key: %s\n", err);
            return -1;
        }
        nkeys++;
        p += strcspn(p, ",");
        if (*p == ',')
            p++;
    }
    if (nkeys == 1) {
        for (size_t i = 1; i < nf; i++)
            memcpy(feeds[i].server_key, feeds[0].server_key, KEYS_LEN);
    } else if (nkeys != nf) {
        fprintf(stderr, "berth tail: --feed-key: %zu keys for %zu --feed endpoints (give one "
                "key for all, or one per endpoint in the same order)\n", nkeys, nf);
        return -1;
    }
    return 0;
}

/* --curve-secret and --feed-key, both or neither. 0 (*curve says which),
 * or -1 (said on stderr). */
static int tail_setup_curve(struct config *cfg, struct tail_feed *feeds, size_t nf,
                            struct keys_pair *kp, bool *curve)
{
    const char *secret = config_str(cfg, "curve-secret");
    const char *fkeys = config_str(cfg, "feed-key");
    bool have_secret = secret && secret[0], have_keys = fkeys && fkeys[0];
    *curve = false;
    if (!have_secret && !have_keys)
        return 0;
    if (!have_secret || !have_keys) {
        fprintf(stderr, "berth tail: CURVE needs both --curve-secret FILE (this consumer's key) "
                "and --feed-key FILE_OR_Z85 (the node's public key); missing: %s\n",
                have_secret ? "--feed-key" : "--curve-secret");
        return -1;
    }
    char err[512];
    bool open_to_others = false;
    if (keys_load_secret(secret, kp, &open_to_others, err, sizeof(err)) != 0) {
        fprintf(stderr, "berth tail: --curve-secret: %s\n", err);
        return -1;
    }
    if (open_to_others)
        fprintf(stderr, "berth tail: warning: --curve-secret %s is readable by group or "
                "others: chmod 600 it\n", secret);
    if (tail_feed_keys(fkeys, feeds, nf) != 0)
        return -1;
    *curve = true;
    return 0;
}

static int tail_run(struct config *cfg)
{
    static struct tail_feed feeds[TAIL_FEEDS_MAX];
    size_t nf = 0;
    const char *list = config_str(cfg, "feed");
    const char *js = config_str(cfg, "jetstream");
    if (js && js[0]) {
        if (list && list[0]) {
            fprintf(stderr, "berth tail: give --feed or --jetstream, not both\n");
            return EXIT_USAGE;
        }
        return tail_jetstream_run(cfg);
    }
    if (!list || !list[0]) {
        fprintf(stderr, "berth tail: --feed is required (or --jetstream)\n");
        return EXIT_USAGE;
    }
    if (tail_split(list, feeds, &nf) != 0) {
        fprintf(stderr, "berth tail: --feed \"%s\": give 1..%d comma-separated endpoints\n",
                list, TAIL_FEEDS_MAX);
        return EXIT_USAGE;
    }
    struct keys_pair kp;
    bool curve = false;
    if (tail_setup_curve(cfg, feeds, nf, &kp, &curve) != 0)
        return EXIT_USAGE;
    uint64_t from = (uint64_t)config_int(cfg, "from");
    uint64_t count = (uint64_t)config_int(cfg, "count");
    uint64_t duration = (uint64_t)config_int(cfg, "duration");
    uint64_t timeout = (uint64_t)config_int(cfg, "timeout");
    uint32_t credit = (uint32_t)config_int(cfg, "credit");
    const char *durable = config_str(cfg, "durable");
    tail_durable[0] = '\0';
    if (durable && durable[0]) {
        if (!hb_node_id_valid(durable)) {
            fprintf(stderr, "berth tail: --durable \"%s\": a name is [A-Za-z0-9._-]{1,64}\n",
                    durable);
            return EXIT_USAGE;
        }
        snprintf(tail_durable, sizeof(tail_durable), "%s", durable);
    }
    const char *outpath = config_str(cfg, "out");
    bool raw = outpath && outpath[0];
    FILE *out = stdout;
    if (raw) {
        out = fopen(outpath, "ab");
        if (!out) {
            fprintf(stderr, "berth tail: --out %s: %s\n", outpath, strerror(errno));
            return EXIT_RUNTIME;
        }
    }
    int status = 0;
    void *ctx = zmq_ctx_new();
    if (!ctx) {
        fprintf(stderr, "berth tail: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        status = EXIT_RUNTIME;
        goto done;
    }
    for (size_t i = 0; i < nf; i++) {
        struct tail_feed *t = &feeds[i];
        int linger = 0;
        memcpy(t->node, t->endpoint, sizeof(t->endpoint)); /* NUL-terminated, same size */
        t->sock = zmq_socket(ctx, ZMQ_DEALER);
        if (!t->sock || zmq_setsockopt(t->sock, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
            (curve &&
             (zmq_setsockopt(t->sock, ZMQ_CURVE_SERVERKEY, t->server_key, KEYS_LEN) != 0 ||
              zmq_setsockopt(t->sock, ZMQ_CURVE_PUBLICKEY, kp.public_key, KEYS_LEN) != 0 ||
              zmq_setsockopt(t->sock, ZMQ_CURVE_SECRETKEY, kp.secret_key, KEYS_LEN) != 0)) ||
            zmq_connect(t->sock, t->endpoint) != 0) {
            fprintf(stderr, "berth tail: --feed %s: %s\n", t->endpoint, zmq_strerror(zmq_errno()));
            status = EXIT_USAGE;
            goto done;
        }
        /* Not sent now (1): the subscription timeout asks again. */
        if (tail_subscribe(t, from, credit) < 0) {
            status = EXIT_RUNTIME;
            goto done;
        }
    }
    signal(SIGINT, tail_on_signal);
    signal(SIGTERM, tail_on_signal);
    /* A closed stdout (`berth tail | head`) shows as EPIPE from fflush
     * below, and ends the run quietly. */
    signal(SIGPIPE, SIG_IGN);

    uint64_t start = mono_now_ms(), got = 0, last_confirm = start;
    while (!tail_stop && (count == 0 || got < count)) {
        uint64_t now = mono_now_ms();
        if (duration && now - start >= duration)
            break;
        zmq_pollitem_t items[TAIL_FEEDS_MAX];
        for (size_t i = 0; i < nf; i++)
            items[i] = (zmq_pollitem_t){.socket = feeds[i].sock, .events = ZMQ_POLLIN};
        long wait = 200;
        int rc = zmq_poll(items, (int)nf, wait);
        if (rc < 0 && zmq_errno() != EINTR) {
            fprintf(stderr, "berth tail: poll: %s\n", zmq_strerror(zmq_errno()));
            status = EXIT_RUNTIME;
            break;
        }
        now = mono_now_ms();
        for (size_t i = 0; i < nf && status == 0; i++) {
            struct tail_feed *t = &feeds[i];
            for (int k = 0; k < 4096 && (count == 0 || got < count); k++) {
                zmq_msg_t m;
                if (zmq_msg_init(&m) != 0) {
                    fprintf(stderr, "berth tail: zmq_msg_init: %s\n", zmq_strerror(zmq_errno()));
                    status = EXIT_RUNTIME;
                    break;
                }
                if (zmq_msg_recv(&m, t->sock, ZMQ_DONTWAIT) < 0) {
                    zmq_msg_close(&m);
                    break;
                }
                const uint8_t *p = zmq_msg_data(&m);
                size_t len = zmq_msg_size(&m);
                struct feed_msg fm;
                if (feed_msg_decode(p, len, &fm) != 0) {
                    fprintf(stderr, "berth tail: %s: a malformed message from the node\n",
                            t->node);
                    status = EXIT_RUNTIME;
                } else if (fm.type == FEED_MSG_RECORD) {
                    if (tail_record(t, fm.body, fm.body_len, out, raw) != 0) {
                        fprintf(stderr, "berth tail: %s: a record failed its check (CRC32C or "
                                "length)\n", t->node);
                        status = EXIT_RUNTIME;
                    }
                    got++;
                    if (++t->unacked >= credit / 2 + 1 && tail_credit(t) != 0)
                        status = EXIT_RUNTIME;
                } else if (fm.type == FEED_MSG_WELCOME) {
                    snprintf(t->node, sizeof(t->node), "%.*s", (int)fm.name_len, fm.name);
                    t->welcomed = true;
                    fprintf(stderr, "berth tail: %s: node %s keeps seq %" PRIu64 "..%" PRIu64 "\n",
                            t->endpoint, t->node, fm.seq, fm.next_seq - 1);
                } else if (fm.type == FEED_MSG_ERROR) {
                    if (fm.code == FEED_ERR_NOT_SUBSCRIBED) {
                        /* The node restarted: go on after the last record seen. */
                        if (tail_subscribe(t, t->last_seq ? t->last_seq + 1 : from, credit) < 0)
                            status = EXIT_RUNTIME;
                    } else {
                        fprintf(stderr, "berth tail: %s: %s: %.*s\n", t->node,
                                feed_err_name(fm.code), (int)fm.body_len,
                                (const char *)fm.body);
                        status = EXIT_RUNTIME;
                    }
                }
                zmq_msg_close(&m);
                if (status)
                    break;
            }
            if (status)
                break;
            if (!t->welcomed && now - t->subscribed_ms >= timeout) {
                /* Lost or never answered: ask again, and say so once per timeout. */
                /* A CURVE feed answers a plaintext client nothing at all
                 * (its handshake fails), as it does a key it does not allow. */
                fprintf(stderr, "berth tail: %s: no answer to the subscription in %" PRIu64
                        " ms; asking again (%s)\n", t->endpoint, timeout,
                        curve ? "is the feed CURVE, --feed-key the node's public key, and "
                                "this consumer's public key in its --feed-curve-allow?"
                              : "the node may require CURVE: pass --curve-secret and "
                                "--feed-key");
                if (tail_subscribe(t, t->last_seq ? t->last_seq + 1 : from, credit) < 0)
                    status = EXIT_RUNTIME;
            } else if (now - t->last_sent_ms >= TAIL_KEEPALIVE_MS && tail_credit(t) != 0) {
                status = EXIT_RUNTIME;
            }
        }
        if (fflush(out) != 0 || ferror(out)) {
            if (errno == EPIPE)
                break; /* the reader is gone (`| head`): done, not a failure */
            fprintf(stderr, "berth tail: %s: %s\n", raw ? outpath : "stdout", strerror(errno));
            status = EXIT_RUNTIME;
        }
        if (status)
            break;
        if (tail_durable[0] && mono_now_ms() - last_confirm >= TAIL_CONFIRM_MS &&
            (!raw || fsync(fileno(out)) == 0)) {
            last_confirm = mono_now_ms();
            for (size_t i = 0; i < nf && status == 0; i++)
                if (tail_confirm(&feeds[i]) != 0)
                    status = EXIT_RUNTIME;
        }
    }
    /* What was written out is confirmed once it is flushed (the file is
     * fsynced first: a confirmed record may be deleted from the node). */
    bool flushed = fflush(out) == 0 && (!raw || fsync(fileno(out)) == 0);
    for (size_t i = 0; i < nf; i++) {
        if (feeds[i].sock && flushed && status == 0)
            (void)tail_confirm(&feeds[i]);
        if (feeds[i].sock) {
            /* Best effort: a node forgets a silent consumer after 30 s anyway. */
            struct feed_msg bye = {.type = FEED_MSG_BYE};
            (void)tail_send_msg(&feeds[i], &bye);
        }
    }
done:
    OPENSSL_cleanse(&kp, sizeof(kp));
    for (size_t i = 0; i < nf; i++)
        if (feeds[i].sock)
            zmq_close(feeds[i].sock);
    if (ctx)
        zmq_ctx_term(ctx);
    if (raw && fclose(out) != 0 && status == 0) {
        fprintf(stderr, "berth tail: --out %s: %s\n", outpath, strerror(errno));
        status = EXIT_RUNTIME;
    }
    if (fflush(stdout) != 0 && errno != EPIPE && status == 0) {
        fprintf(stderr, "berth tail: stdout: %s\n", strerror(errno));
        status = EXIT_RUNTIME;
    }
    return status;
}

int cli_tail_main(int argc, char **argv)
{
    char err[512];
    struct config *cfg = config_new("berth tail", BERTH_VERSION,
                                    "print or save the records nodes journal, live or replayed "
                                    "from a seq",
                                    tail_settings, sizeof(tail_settings) / sizeof(tail_settings[0]));
    if (!cfg) {
        fprintf(stderr, "berth tail: out of memory\n");
        return EXIT_RUNTIME;
    }
    int status = EXIT_USAGE;
    switch (config_load(cfg, argc, argv, err, sizeof(err))) {
    case CONFIG_OK:
        if (config_npositional(cfg) > 0) {
            fprintf(stderr, "berth tail: unexpected argument \"%s\"\n", config_positional(cfg, 0));
            break;
        }
        status = tail_run(cfg);
        break;
    case CONFIG_HELP:
        config_usage(cfg, stdout);
        status = 0;
        break;
    case CONFIG_VERSION:
        config_version_line(cfg, stdout);
        status = 0;
        break;
    case CONFIG_ERROR:
    default:
        fprintf(stderr, "berth tail: %s\n", err);
        break;
    }
    config_free(cfg);
    return status;
}
