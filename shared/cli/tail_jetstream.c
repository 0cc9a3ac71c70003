/* tail_jetstream: `berth tail --jetstream`: reads the stream the nodes'
 * forwarders publish to, through a JetStream pull consumer (durable with
 * --durable: JetStream keeps its position, and each message is acknowledged
 * once printed), and prints each message as the feed reader prints a
 * record, from the headers the forwarder sets (docs/DESIGN.md). */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "hb_msg.h"
#include "mono.h"
#include "tail.h"

#define TJS_EXIT_RUNTIME 1
#define TJS_EXIT_USAGE 2
#define TJS_SERVERS_MAX 16
#define TJS_FETCH 256
#define TJS_FIELD_MAX 1024

static volatile sig_atomic_t tjs_stop;
static void tjs_on_signal(int sig) { (void)sig; tjs_stop = 1; }

/* A header's value, %XX decoded (the forwarder encodes control bytes and
 * '%'), into out; its length, or 0 when the header is missing. */
static size_t tjs_header(natsMsg *m, const char *key, char *out, size_t cap)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || !v)
        return 0;
    size_t o = 0;
    for (size_t i = 0; v[i] && o + 1 < cap; i++) {
        unsigned hi, lo;
        if (v[i] == '%' && v[i + 1] && v[i + 2] && sscanf(v + i + 1, "%1x%1x", &hi, &lo) == 2) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = v[i];
        }
    }
    out[o] = '\0';
    return o;
}

static uint64_t tjs_header_u64(natsMsg *m, const char *key)
{
    char v[32];
    return tjs_header(m, key, v, sizeof(v)) ? strtoull(v, NULL, 10) : 0;
}

/* Prints one message; -1 when it lacks the forwarder's headers. */
static int tjs_print(FILE *out, natsMsg *m)
{
    char node[256], name[256], peer[256], certtext[TJS_FIELD_MAX], certhex[80], producer[80];
    if (!tjs_header(m, "Berth-Node", node, sizeof(node)) || !tjs_header_u64(m, "Berth-Seq"))
        return -1;
    uint8_t cert[JOURNAL_CERT_SHA256_LEN + TJS_FIELD_MAX];
    struct journal_record r = {
        .seq = tjs_header_u64(m, "Berth-Seq"),
        .message_id = tjs_header_u64(m, "Berth-Message-Id"),
        .timestamp_ms = tjs_header_u64(m, "Berth-Time"),
        .name = name,
        .name_len = (uint8_t)tjs_header(m, "Berth-Client", name, sizeof(name)),
        .peer = peer,
        .peer_len = (uint8_t)tjs_header(m, "Berth-Peer", peer, sizeof(peer)),
        .producer = producer,
        .producer_len = (uint8_t)tjs_header(m, "Berth-Producer", producer, sizeof(producer)),
        .data = (const uint8_t *)natsMsg_GetData(m),
        .len = (uint32_t)natsMsg_GetDataLength(m),
        .cert = cert,
    };
    size_t tl = tjs_header(m, "Berth-Cert", certtext, sizeof(certtext));
    if (tjs_header(m, "Berth-Cert-Sha256", certhex, sizeof(certhex)) == 2 * JOURNAL_CERT_SHA256_LEN) {
        for (size_t i = 0; i < JOURNAL_CERT_SHA256_LEN; i++) {
            unsigned b;
            if (sscanf(certhex + 2 * i, "%2x", &b) != 1)
                return -1;
            cert[i] = (uint8_t)b;
        }
        memcpy(cert + JOURNAL_CERT_SHA256_LEN, certtext, tl);
        r.cert_len = (uint16_t)(JOURNAL_CERT_SHA256_LEN + tl);
        r.ident_kind = JOURNAL_IDENT_CERT;
    }
    tail_print_record(out, node, &r);
    return 0;
}

int tail_jetstream_run(struct config *cfg)
{
    const char *servers_arg = config_str(cfg, "jetstream");
    const char *stream = config_str(cfg, "stream");
    const char *subject = config_str(cfg, "subject");
    const char *durable = config_str(cfg, "durable");
    uint64_t from = (uint64_t)config_int(cfg, "from");
    uint64_t count = (uint64_t)config_int(cfg, "count");
    uint64_t duration = (uint64_t)config_int(cfg, "duration");
    uint64_t timeout = (uint64_t)config_int(cfg, "timeout");
    const char *outpath = config_str(cfg, "out");
    if (outpath && outpath[0]) {
        fprintf(stderr, "berth tail: --out is for --feed (journal records); a JetStream message "
                "is the payload and its headers\n");
        return TJS_EXIT_USAGE;
    }
    if (durable && durable[0] && (!hb_node_id_valid(durable) || strchr(durable, '.'))) {
        fprintf(stderr, "berth tail: --durable \"%s\": a JetStream durable name is "
                "[A-Za-z0-9_-]{1,64}\n", durable);
        return TJS_EXIT_USAGE;
    }
    char list[2048];
    const char *servers[TJS_SERVERS_MAX];
    int ns = 0;
    snprintf(list, sizeof(list), "%s", servers_arg);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && ns < TJS_SERVERS_MAX;
         t = strtok_r(NULL, ",", &save))
        servers[ns++] = t;

    int status = 0;
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetServers(o, servers, ns);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, (int64_t)timeout);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, o);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    if (s != NATS_OK) {
        fprintf(stderr, "berth tail: --jetstream %s: %s\n", servers_arg, natsStatus_GetText(s));
        status = TJS_EXIT_RUNTIME;
        goto done;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Config.AckPolicy = js_AckExplicit;
    if (from) {
        so.Config.DeliverPolicy = js_DeliverByStartSequence;
        so.Config.OptStartSeq = from;
    } else {
        so.Config.DeliverPolicy = js_DeliverAll;
    }
    jsErrCode jerr = 0;
    s = js_PullSubscribe(&sub, js, subject, durable && durable[0] ? durable : NULL, NULL, &so,
                         &jerr);
    if (s != NATS_OK) {
        fprintf(stderr, "berth tail: stream %s: %s (JetStream error %d)\n", stream,
                natsStatus_GetText(s), (int)jerr);
        status = TJS_EXIT_RUNTIME;
        goto done;
    }
    signal(SIGINT, tjs_on_signal);
    signal(SIGTERM, tjs_on_signal);
    signal(SIGPIPE, SIG_IGN);
    uint64_t start = mono_now_ms(), got = 0;
    while (!tjs_stop && (count == 0 || got < count)) {
        if (duration && mono_now_ms() - start >= duration)
            break;
        natsMsgList l = {0};
        uint64_t want = count ? count - got : TJS_FETCH;
        s = natsSubscription_Fetch(&l, sub, (int)(want < TJS_FETCH ? want : TJS_FETCH), 200, &jerr);
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK) {
            fprintf(stderr, "berth tail: fetch from %s: %s\n", stream, natsStatus_GetText(s));
            status = TJS_EXIT_RUNTIME;
            break;
        }
        for (int i = 0; i < l.Count && status == 0; i++) {
            if (tjs_print(stdout, l.Msgs[i]) != 0) {
                fprintf(stderr, "berth tail: stream %s holds a message without berth's headers "
                        "(subject %s)\n", stream, natsMsg_GetSubject(l.Msgs[i]));
                status = TJS_EXIT_RUNTIME;
                break;
            }
            got++;
        }
        /* Acknowledged once written out: a durable consumer resumes after it. */
        bool flushed = fflush(stdout) == 0;
        if (!flushed && errno == EPIPE) {
            natsMsgList_Destroy(&l);
            break;
        }
        for (int i = 0; i < l.Count && flushed; i++)
            if (natsMsg_Ack(l.Msgs[i], NULL) != NATS_OK && status == 0) {
                fprintf(stderr, "berth tail: ack to %s failed\n", stream);
                status = TJS_EXIT_RUNTIME;
            }
        natsMsgList_Destroy(&l);
        if (status)
            break;
    }
done:
    if (sub) {
        /* An ephemeral consumer goes with the subscription; a durable one stays. */
        if (!(durable && durable[0]))
            (void)natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    jsCtx_Destroy(js);
    if (nc) {
        natsConnection_Close(nc);
        natsConnection_Destroy(nc);
    }
    natsOptions_Destroy(o);
    return status;
}
