/* jetstream: connect (servers, credentials, TLS), check or create the
 * stream, and publish journal records asynchronously; the PubAck handler
 * (a libnats thread) hands each outcome to the forwarder. */
#include "jetstream.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>
#include <openssl/sha.h>

#include "errbuf.h"
#include "hex.h"
#include "log.h"

#define JS_SERVERS_MAX 16
#define JS_SUBJECT_MAX 320
#define JS_HDR_MAX 600
#define JS_START_RETRIES 50      /* x JS_START_RETRY_MS: how long start-up waits for a leader */
#define JS_START_RETRY_MS 200
/* A replica the stream's leader has not heard from this long is gone: the
 * leader hears from live ones at least every raft heartbeat (1 s). */
#define JS_PEER_SILENT_MS 3000

struct jetstream {
    natsConnection *nc;
    jsCtx *js;
    char stream[128];
    char subject[JS_SUBJECT_MAX];     /* <prefix>.<node id> */
    char node_id[JOURNAL_CONSUMER_NAME_MAX + 1];
    pthread_mutex_t mu;               /* the ack callback's target */
    forwarder_ack_fn ack_fn;
    void *ack_arg;
};

/* The seq a message carries in its Berth-Seq header (0 if none). */
static uint64_t js_msg_seq(natsMsg *m)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, "Berth-Seq", &v) != NATS_OK || !v)
        return 0;
    return strtoull(v, NULL, 10);
}

static void js_on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    struct jetstream *e = closure;
    uint64_t seq = js_msg_seq(msg);
    char why[256] = "";
    if (pae)
        snprintf(why, sizeof(why), "publish: %s (%d)",
                 pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err), (int)pae->ErrCode);
    pthread_mutex_lock(&e->mu);
    forwarder_ack_fn fn = e->ack_fn;
    void *arg = e->ack_arg;
    pthread_mutex_unlock(&e->mu);
    natsMsg_Destroy(msg);
    if (fn && seq)
        fn(arg, seq, pae == NULL, pa && pa->Duplicate, pae ? why : NULL);
}

size_t jetstream_msg_id(const struct journal_record *r, const char *node_id, char *out,
                        size_t len)
{
    int n = r->producer_len
                ? snprintf(out, len, "%.*s:%" PRIu64, (int)r->producer_len, r->producer,
                           r->message_id)
                : snprintf(out, len, "%s/%" PRIu64, node_id, r->seq);
    if (n < 0)
        return 0;
    return (size_t)n < len ? (size_t)n : len - 1;
}

/* A header value from untrusted bytes: NATS headers end at CR LF, so
 * control bytes and '%' are percent-encoded (consumers decode %XX). */
static void js_hdr_value(char *out, size_t cap, const void *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const uint8_t *s = p;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f || s[i] == '%') {
            out[o++] = '%';
            out[o++] = hex[s[i] >> 4];
            out[o++] = hex[s[i] & 15];
        } else {
            out[o++] = (char)s[i];
        }
    }
    out[o] = '\0';
}

/* The message for one record: data as the client sent it, metadata in
 * headers (docs/DESIGN.md lists them). */
static natsStatus js_build(struct jetstream *e, const struct journal_record *r, natsMsg **out)
{
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, e->subject, NULL, (const char *)r->data, (int)r->len);
    char v[JS_HDR_MAX];
    if (s == NATS_OK) {
        jetstream_msg_id(r, e->node_id, v, sizeof(v));
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", v);
    }
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Berth-Node", e->node_id);
    if (s == NATS_OK) {
        snprintf(v, sizeof(v), "%" PRIu64, r->seq);
        s = natsMsgHeader_Set(m, "Berth-Seq", v);
    }
    if (s == NATS_OK) {
        snprintf(v, sizeof(v), "%" PRIu64, r->message_id);
        s = natsMsgHeader_Set(m, "Berth-Message-Id", v);
    }
    if (s == NATS_OK) {
        snprintf(v, sizeof(v), "%" PRIu64, r->timestamp_ms);
        s = natsMsgHeader_Set(m, "Berth-Time", v);
    }
    if (s == NATS_OK) {
        js_hdr_value(v, sizeof(v), r->name, r->name_len);
        s = natsMsgHeader_Set(m, "Berth-Client", v);
    }
    if (s == NATS_OK) {
        js_hdr_value(v, sizeof(v), r->peer, r->peer_len);
        s = natsMsgHeader_Set(m, "Berth-Peer", v);
    }
    if (s == NATS_OK && r->producer_len) {
        js_hdr_value(v, sizeof(v), r->producer, r->producer_len);
        s = natsMsgHeader_Set(m, "Berth-Producer", v);
    }
    if (s == NATS_OK && r->ident_kind == JOURNAL_IDENT_CERT) {
        hex_encode(v, r->cert, JOURNAL_CERT_SHA256_LEN);
        s = natsMsgHeader_Set(m, "Berth-Cert-Sha256", v);
        if (s == NATS_OK) {
            js_hdr_value(v, sizeof(v), r->cert + JOURNAL_CERT_SHA256_LEN,
                         r->cert_len - JOURNAL_CERT_SHA256_LEN);
            s = natsMsgHeader_Set(m, "Berth-Cert", v);
        }
    }
    if (s == NATS_OK) {
        uint8_t d[SHA256_DIGEST_LENGTH];
        SHA256(r->data, r->len, d);
        hex_encode(v, d, sizeof(d));
        s = natsMsgHeader_Set(m, "Berth-Sha256", v);
    }
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return s;
    }
    *out = m;
    return NATS_OK;
}

static void js_set_ack(void *impl, forwarder_ack_fn fn, void *arg)
{
    struct jetstream *e = impl;
    pthread_mutex_lock(&e->mu);
    e->ack_fn = fn;
    e->ack_arg = arg;
    pthread_mutex_unlock(&e->mu);
}

static int js_send(void *impl, const struct journal_record *r, char *err, size_t errlen)
{
    struct jetstream *e = impl;
    natsMsg *m = NULL;
    natsStatus s = js_build(e, r, &m);
    if (s == NATS_OK)
        s = js_PublishMsgAsync(e->js, &m, NULL);
    natsMsg_Destroy(m); /* NULL once libnats took it */
    if (s != NATS_OK) {
        errbuf_setf(err, errlen, "publish: %s", natsStatus_GetText(s));
        return -1;
    }
    return 0;
}

static void js_abandon(void *impl)
{
    struct jetstream *e = impl;
    /* Ours again, their PubAcks discarded if they come. */
    natsMsgList pending;
    if (js_PublishAsyncGetPendingList(&pending, e->js) == NATS_OK)
        natsMsgList_Destroy(&pending);
}

static int js_probe(void *impl, uint32_t timeout_ms, char *err, size_t errlen)
{
    struct jetstream *e = impl;
    if (natsConnection_Status(e->nc) != NATS_CONN_STATUS_CONNECTED) {
        errbuf_setf(err, errlen, "not connected to NATS");
        return -1;
    }
    /* A stream info needs the stream's leader: no quorum, no answer. */
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = timeout_ms;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, e->js, e->stream, &o, &jerr);
    if (s != NATS_OK) {
        errbuf_setf(err, errlen, "stream %s does not answer: %s", e->stream,
                    natsStatus_GetText(s));
        return -1;
    }
    /* A leader that lost its followers answers for a while before it
     * steps down: count the replicas it still hears from. A publish now
     * could not reach a quorum. */
    int rc = 0;
    jsClusterInfo *ci = si->Cluster;
    int64_t replicas = si->Config ? si->Config->Replicas : 1;
    if (replicas > 1) {
        int have = ci && ci->Leader && ci->Leader[0] ? 1 : 0;
        for (int i = 0; ci && i < ci->ReplicasLen; i++) {
            jsPeerInfo *p = ci->Replicas[i];
            /* Active: nanoseconds since the leader last heard from it. */
            if (p && p->Current && !p->Offline && p->Active < (int64_t)JS_PEER_SILENT_MS * 1000000)
                have++;
        }
        if (have < replicas / 2 + 1) {
            errbuf_setf(err, errlen, "stream %s has no quorum: %d of %" PRId64
                        " replicas reachable", e->stream, have, replicas);
            rc = FORWARDER_DEFINITE;
        }
    }
    jsStreamInfo_Destroy(si);
    return rc;
}

static void js_free(void *impl)
{
    struct jetstream *e = impl;
    if (!e)
        return;
    jsCtx_Destroy(e->js);
    if (e->nc) {
        natsConnection_Close(e->nc);
        natsConnection_Destroy(e->nc);
    }
    pthread_mutex_destroy(&e->mu);
    free(e);
}

/* Does the subject filter f (NATS wildcards) cover subject? */
static bool js_subject_covered(const char *f, const char *subject)
{
    while (*f && *subject) {
        if (f[0] == '>' && f[1] == '\0')
            return true;
        size_t fl = strcspn(f, "."), sl = strcspn(subject, ".");
        if (!(fl == 1 && f[0] == '*') && (fl != sl || strncmp(f, subject, fl) != 0))
            return false;
        f += fl;
        subject += sl;
        if (*f == '.')
            f++;
        if (*subject == '.')
            subject++;
        else if (*f && !*subject)
            return false;
    }
    return *f == '\0' && *subject == '\0';
}

static int js_check_stream(struct jetstream *e, const struct jetstream_config *cfg, char *err,
                           size_t errlen)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    /* A cluster that just formed (or is electing the stream's leader)
     * times out for a few seconds: wait for it, within a bound. */
    natsStatus s;
    for (int tries = 0;; tries++) {
        s = js_GetStreamInfo(&si, e->js, e->stream, NULL, &jerr);
        if ((s != NATS_TIMEOUT && s != NATS_NO_RESPONDERS) || tries >= JS_START_RETRIES)
            break;
        nats_Sleep(JS_START_RETRY_MS);
    }
    if (s == NATS_NOT_FOUND && cfg->create) {
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        char filter[JS_SUBJECT_MAX];
        snprintf(filter, sizeof(filter), "%s.>", cfg->subject_prefix);
        const char *subjects[1] = {filter};
        sc.Name = e->stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        sc.Replicas = cfg->replicas ? cfg->replicas : 1;
        sc.Duplicates = (int64_t)cfg->duplicate_window_ms * 1000000;
        s = js_AddStream(&si, e->js, &sc, NULL, &jerr);
        if (s != NATS_OK && jerr == JSStreamNameExistErr) /* another node was first */
            s = js_GetStreamInfo(&si, e->js, e->stream, NULL, &jerr);
        if (s != NATS_OK) {
            errbuf_setf(err, errlen, "jetstream: create stream %s with %" PRIu32 " replicas: %s "
                        "(JetStream error %d)", e->stream, cfg->replicas, natsStatus_GetText(s),
                        (int)jerr);
            return -1;
        }
        log_info("jetstream_stream_created", "stream=%s subjects=%s replicas=%" PRIu32, e->stream,
                 filter, cfg->replicas);
    } else if (s == NATS_NOT_FOUND) {
        errbuf_setf(err, errlen, "jetstream: stream %s does not exist (create it with subjects "
                    "%s.>, or pass --jetstream-create)", e->stream, cfg->subject_prefix);
        return -1;
    } else if (s != NATS_OK) {
        errbuf_setf(err, errlen, "jetstream: stream %s: %s (JetStream error %d)", e->stream,
                    natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    int rc = 0;
    jsStreamConfig *c = si->Config;
    bool covered = false;
    for (int i = 0; c && i < c->SubjectsLen && !covered; i++)
        covered = js_subject_covered(c->Subjects[i], e->subject);
    if (!covered) {
        errbuf_setf(err, errlen, "jetstream: stream %s does not take subject %s (its subjects "
                    "must cover %s.>)", e->stream, e->subject, cfg->subject_prefix);
        rc = -1;
    } else if (cfg->min_replicas && c->Replicas < (int64_t)cfg->min_replicas) {
        errbuf_setf(err, errlen, "jetstream: stream %s has %" PRId64 " replica(s); --ack-after "
                    "replicated needs at least %" PRIu32 " (or --jetstream-allow-few-replicas)",
                    e->stream, c->Replicas, cfg->min_replicas);
        rc = -1;
    } else if (c->Duplicates < (int64_t)cfg->duplicate_window_ms * 1000000) {
        errbuf_setf(err, errlen, "jetstream: stream %s drops duplicates within %" PRId64 " ms, "
                    "less than --jetstream-duplicate-window %" PRIu64 " ms", e->stream,
                    c->Duplicates / 1000000, cfg->duplicate_window_ms);
        rc = -1;
    } else {
        log_info("jetstream_stream", "stream=%s replicas=%" PRId64 " duplicate_window_ms=%" PRId64
                 " subject=%s", e->stream, c->Replicas, c->Duplicates / 1000000, e->subject);
    }
    jsStreamInfo_Destroy(si);
    return rc;
}

int jetstream_engine_new(const struct jetstream_config *cfg, struct forwarder_engine *out,
                         char *err, size_t errlen)
{
    struct jetstream *e = calloc(1, sizeof(*e));
    natsOptions *o = NULL;
    if (!e) {
        errbuf_setf(err, errlen, "out of memory");
        return -1;
    }
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        free(e);
        errbuf_setf(err, errlen, "pthread_mutex_init failed");
        return -1;
    }
    snprintf(e->stream, sizeof(e->stream), "%s", cfg->stream);
    snprintf(e->node_id, sizeof(e->node_id), "%s", cfg->node_id);
    snprintf(e->subject, sizeof(e->subject), "%s.%s", cfg->subject_prefix, cfg->node_id);

    char list[2048];
    const char *servers[JS_SERVERS_MAX];
    int ns = 0;
    snprintf(list, sizeof(list), "%s", cfg->servers);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && ns < JS_SERVERS_MAX;
         t = strtok_r(NULL, ",", &save))
        servers[ns++] = t;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetServers(o, servers, ns);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 2000);
    /* Keep trying for ever once connected: the forwarder's lag and the
     * node's health say what that costs. */
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 250);
    if (s == NATS_OK && cfg->user && cfg->user[0])
        s = natsOptions_SetUserInfo(o, cfg->user, cfg->password ? cfg->password : "");
    if (s == NATS_OK && cfg->token && cfg->token[0])
        s = natsOptions_SetToken(o, cfg->token);
    if (s == NATS_OK && cfg->creds_file && cfg->creds_file[0])
        s = natsOptions_SetUserCredentialsFromFiles(o, cfg->creds_file, NULL);
    if (s == NATS_OK && cfg->nkey && cfg->nkey[0])
        s = natsOptions_SetNKeyFromSeed(o, cfg->nkey, cfg->nkey_seed_file);
    if (s == NATS_OK && (cfg->tls || (cfg->ca_file && cfg->ca_file[0])))
        s = natsOptions_SetSecure(o, true);
    if (s == NATS_OK && cfg->ca_file && cfg->ca_file[0])
        s = natsOptions_LoadCATrustedCertificates(o, cfg->ca_file);
    if (s != NATS_OK) {
        errbuf_setf(err, errlen, "jetstream: options: %s (%s)", natsStatus_GetText(s),
                    nats_GetLastError(NULL));
        goto fail;
    }
    s = natsConnection_Connect(&e->nc, o);
    if (s != NATS_OK) {
        const char *last = nats_GetLastError(NULL);
        errbuf_setf(err, errlen, "jetstream: cannot connect to %s: %s%s%s", cfg->servers,
                    natsStatus_GetText(s), last && last[0] ? ": " : "", last ? last : "");
        goto fail;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = cfg->max_pending ? cfg->max_pending : 4096;
    jo.PublishAsync.AckHandler = js_on_ack;
    jo.PublishAsync.AckHandlerClosure = e;
    s = natsConnection_JetStream(&e->js, e->nc, &jo);
    if (s != NATS_OK) {
        errbuf_setf(err, errlen, "jetstream: context: %s", natsStatus_GetText(s));
        goto fail;
    }
    if (js_check_stream(e, cfg, err, errlen) != 0)
        goto fail;
    natsOptions_Destroy(o);
    *out = (struct forwarder_engine){.name = "jetstream", .impl = e, .set_ack = js_set_ack,
                                     .send = js_send, .abandon = js_abandon, .probe = js_probe,
                                     .free = js_free};
    return 0;
fail:
    natsOptions_Destroy(o);
    js_free(e);
    return -1;
}
