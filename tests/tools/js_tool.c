/* js_tool: a test tool (never shipped) that drives a NATS JetStream cluster
 * for the forwarder's tests: creates, inspects, dumps and deletes streams,
 * waits for JetStream to answer, and benchmarks async publishing with each
 * message's publish-to-PubAck latency. One subcommand per run; JSON on stdout. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <nats/nats.h>

enum {
    JT_OK = 0,    /* the subcommand did what it was asked */
    JT_FAIL = 1,  /* NATS, JetStream or the system said no */
    JT_USAGE = 2, /* bad command line */
};

#define JT_MSG_ID_HEADER "Nats-Msg-Id" /* JetStream's de-duplication header */
#define JT_DEFAULT_TIMEOUT_MS 5000
#define JT_DEFAULT_MAX_PENDING 4096
#define JT_MAX_SERVERS 64
#define JT_MAX_SUBJECTS 64
#define JT_POLL_MS 100     /* wait-ready's pause between attempts */
#define JT_ATTEMPT_MS 500  /* wait-ready's bound on one connect or request */
/* js_PublishAsyncComplete waits this much longer than one PubAck may take:
 * the library turns an expired PubAck wait into a timeout on its own timer
 * thread, so the last one lands a little after its deadline. */
#define JT_COMPLETE_SLACK_MS 1000

/* The subcommand running, for the one line of error text. */
static const char *jt_cmd = "js_tool";

/* ------------------------------------------------------------ options */

enum jt_opt {
    O_SERVERS = 1 << 0,
    O_STREAM = 1 << 1,
    O_SUBJECTS = 1 << 2,
    O_REPLICAS = 1 << 3,
    O_DUPLICATES = 1 << 4,
    O_STORAGE = 1 << 5,
    O_FROM = 1 << 6,
    O_SUBJECT = 1 << 7,
    O_COUNT = 1 << 8,
    O_SIZE = 1 << 9,
    O_MAX_PENDING = 1 << 10,
    O_MSG_ID_PREFIX = 1 << 11,
    O_TIMEOUT = 1 << 12,
    O_SEND_ASAP = 1 << 13,
};

struct jt_args {
    const char *servers;       /* comma list of nats:// URLs */
    const char *stream;        /* stream name */
    const char *subjects;      /* comma list, create */
    long long replicas;        /* create */
    long long duplicates_ms;   /* create: duplicate window, 0 = server default */
    const char *storage;       /* create: "file" or "memory" */
    long long from;            /* dump: first sequence wanted */
    const char *subject;       /* bench */
    long long count;           /* bench: messages */
    long long size;            /* bench: payload bytes */
    long long max_pending;     /* bench: PublishAsync.MaxPending */
    const char *msg_id_prefix; /* bench: Nats-Msg-Id is PREFIX-i when set */
    long long timeout_ms;      /* one API reply or PubAck; wait-ready: in all */
    long long send_asap;       /* bench: 1 = write each publish at once */
    unsigned seen;             /* enum jt_opt bits given */
};

/* One row per flag: its long name, its bit, and the jt_args field it fills:
 * a string, an integer within [min, max], or a switch (no value; sets 1). */
struct jt_flag {
    const char *name;
    enum jt_opt bit;
    size_t text_off;  /* offsetof the const char * field, strings */
    size_t int_off;   /* offsetof the long long field, integers and switches */
    long long min, max;
    bool is_switch;
};

#define JT_STR(n, b, f) { n, b, offsetof(struct jt_args, f), SIZE_MAX, 0, 0, false }
#define JT_INT(n, b, f, lo, hi) { n, b, SIZE_MAX, offsetof(struct jt_args, f), lo, hi, false }
#define JT_SWITCH(n, b, f) { n, b, SIZE_MAX, offsetof(struct jt_args, f), 0, 1, true }
static const struct jt_flag jt_flags[] = {
    JT_STR("servers", O_SERVERS, servers),
    JT_STR("stream", O_STREAM, stream),
    JT_STR("subjects", O_SUBJECTS, subjects),
    JT_INT("replicas", O_REPLICAS, replicas, 1, 5),
    JT_INT("duplicates", O_DUPLICATES, duplicates_ms, 0, 7LL * 24 * 3600 * 1000),
    JT_STR("storage", O_STORAGE, storage),
    JT_INT("from", O_FROM, from, 1, LLONG_MAX),
    JT_STR("subject", O_SUBJECT, subject),
    JT_INT("count", O_COUNT, count, 1, 100000000),
    JT_INT("size", O_SIZE, size, 0, 64 * 1024 * 1024),
    JT_INT("max-pending", O_MAX_PENDING, max_pending, 1, 1000000),
    JT_STR("msg-id-prefix", O_MSG_ID_PREFIX, msg_id_prefix),
    JT_INT("timeout", O_TIMEOUT, timeout_ms, 1, 3600 * 1000),
    JT_SWITCH("send-asap", O_SEND_ASAP, send_asap),
};
#define JT_NFLAGS (sizeof(jt_flags) / sizeof(jt_flags[0]))

typedef int (*jt_cmd_fn)(const struct jt_args *a);
static int cmd_create(const struct jt_args *a);
static int cmd_info(const struct jt_args *a);
static int cmd_dump(const struct jt_args *a);
static int cmd_delete(const struct jt_args *a);
static int cmd_bench(const struct jt_args *a);
static int cmd_wait_ready(const struct jt_args *a);

struct jt_command {
    const char *name;
    jt_cmd_fn run;
    unsigned required; /* enum jt_opt bits that must be given */
    unsigned optional; /* and those that may be */
    const char *usage;
};

static const struct jt_command jt_commands[] = {
    { "create", cmd_create, O_SERVERS | O_STREAM | O_SUBJECTS | O_REPLICAS,
      O_DUPLICATES | O_STORAGE | O_TIMEOUT,
      "create --servers URLS --stream NAME --subjects S1[,S2] --replicas N"
      " [--duplicates MS] [--storage file|memory] [--timeout MS]" },
    { "info", cmd_info, O_SERVERS | O_STREAM, O_TIMEOUT,
      "info --servers URLS --stream NAME [--timeout MS]" },
    { "dump", cmd_dump, O_SERVERS | O_STREAM, O_FROM | O_TIMEOUT,
      "dump --servers URLS --stream NAME [--from SEQ] [--timeout MS]" },
    { "delete", cmd_delete, O_SERVERS | O_STREAM, O_TIMEOUT,
      "delete --servers URLS --stream NAME [--timeout MS]" },
    { "bench", cmd_bench, O_SERVERS | O_SUBJECT | O_COUNT | O_SIZE,
      O_MAX_PENDING | O_MSG_ID_PREFIX | O_TIMEOUT | O_SEND_ASAP,
      "bench --servers URLS --subject S --count N --size BYTES [--max-pending P]"
      " [--msg-id-prefix X] [--timeout MS] [--send-asap]" },
    { "wait-ready", cmd_wait_ready, O_SERVERS, O_TIMEOUT | O_STREAM,
      "wait-ready --servers URLS [--timeout MS] [--stream NAME]" },
};
#define JT_NCOMMANDS (sizeof(jt_commands) / sizeof(jt_commands[0]))

static void usage(FILE *out)
{
    fprintf(out, "usage: js_tool SUBCOMMAND [options]; URLS is nats://127.0.0.1:P1,nats://...\n");
    for (size_t i = 0; i < JT_NCOMMANDS; i++)
        fprintf(out, "  js_tool %s\n", jt_commands[i].usage);
    fprintf(out, "--timeout bounds one JetStream reply or PubAck (default %d ms);"
                 " for wait-ready it bounds the whole wait.\n"
                 "--send-asap writes every publish to the socket at once (libnats otherwise"
                 " waits 1 ms to batch).\n", JT_DEFAULT_TIMEOUT_MS);
}

static bool parse_ll(const char *text, long long min, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Fills *a from argv (after the subcommand) and checks it against cmd's
 * table row. Returns JT_OK or JT_USAGE, having said why. */
static int parse_args(int argc, char **argv, const struct jt_command *cmd, struct jt_args *a)
{
    struct option longopts[JT_NFLAGS + 1];
    for (size_t i = 0; i < JT_NFLAGS; i++)
        longopts[i] = (struct option){ jt_flags[i].name,
                                       jt_flags[i].is_switch ? no_argument : required_argument,
                                       NULL, (int)i };
    longopts[JT_NFLAGS] = (struct option){ 0 };

    memset(a, 0, sizeof(*a));
    a->storage = "file";
    a->from = 1;
    a->max_pending = JT_DEFAULT_MAX_PENDING;
    a->timeout_ms = JT_DEFAULT_TIMEOUT_MS;

    opterr = 0;
    optind = 1;
    for (;;) {
        int idx = -1;
        int c = getopt_long(argc, argv, "", longopts, &idx);
        if (c == -1)
            break;
        if (c < 0 || (size_t)c >= JT_NFLAGS) {
            fprintf(stderr, "js_tool: %s: unknown option or missing value: %s\n", cmd->name,
                    argv[optind - 1]);
            return JT_USAGE;
        }
        const struct jt_flag *f = &jt_flags[c];
        if (!((cmd->required | cmd->optional) & f->bit)) {
            fprintf(stderr, "js_tool: %s: --%s does not apply to %s\n", cmd->name, f->name,
                    cmd->name);
            return JT_USAGE;
        }
        if (f->is_switch) {
            *(long long *)((char *)a + f->int_off) = 1;
        } else if (f->text_off != SIZE_MAX) {
            if (optarg[0] == '\0') {
                fprintf(stderr, "js_tool: %s: --%s: empty value\n", cmd->name, f->name);
                return JT_USAGE;
            }
            *(const char **)((char *)a + f->text_off) = optarg;
        } else if (!parse_ll(optarg, f->min, f->max, (long long *)((char *)a + f->int_off))) {
            fprintf(stderr, "js_tool: %s: --%s: '%s' is not an integer in [%lld, %lld]\n",
                    cmd->name, f->name, optarg, f->min, f->max);
            return JT_USAGE;
        }
        a->seen |= f->bit;
    }
    if (optind < argc) {
        fprintf(stderr, "js_tool: %s: unexpected argument: %s\n", cmd->name, argv[optind]);
        return JT_USAGE;
    }
    for (size_t i = 0; i < JT_NFLAGS; i++) {
        if ((cmd->required & jt_flags[i].bit) && !(a->seen & jt_flags[i].bit)) {
            fprintf(stderr, "js_tool: %s: --%s is required (usage: js_tool %s)\n", cmd->name,
                    jt_flags[i].name, cmd->usage);
            return JT_USAGE;
        }
    }
    if (strcmp(a->storage, "file") != 0 && strcmp(a->storage, "memory") != 0) {
        fprintf(stderr, "js_tool: %s: --storage: '%s' is neither file nor memory\n", cmd->name,
                a->storage);
        return JT_USAGE;
    }
    return JT_OK;
}

/* Splits a comma list into at most max pieces, in place in a copy the
 * caller frees (*buf). Returns the count, or -1 for an empty piece or too
 * many. */
static int split_list(const char *list, char **buf, const char **out, int max)
{
    *buf = strdup(list);
    if (*buf == NULL)
        return -1;
    int n = 0;
    char *save = NULL;
    for (char *p = *buf; ; p = NULL) {
        char *tok = strtok_r(p, ",", &save);
        if (tok == NULL)
            break;
        if (n == max)
            return -1;
        out[n++] = tok;
    }
    /* strtok_r folds ",," and a trailing comma away; refuse them instead. */
    if (n == 0 || list[0] == ',' || list[strlen(list) - 1] == ',' || strstr(list, ",,"))
        return -1;
    return n;
}

/* ------------------------------------------------------------ errors */

/* The library's last error text for this thread, without the "(file.c:N): "
 * it puts in front, when it is about status s and says more than the
 * status's own text; NULL otherwise. */
static const char *nats_detail(natsStatus s)
{
    natsStatus last = NATS_OK;
    const char *d = nats_GetLastError(&last);
    if (last != s || d == NULL)
        return NULL;
    const char *end = d[0] == '(' ? strstr(d, "): ") : NULL;
    if (end != NULL)
        d = end + 3;
    return (d[0] != '\0' && strcmp(d, natsStatus_GetText(s)) != 0) ? d : NULL;
}

/* One line on stderr: "js_tool: CMD: WHAT: <status text> (<library detail>)
 * [jerr N]". The library's thread-local detail is added only when it is
 * about this very status (it carries the server's error description). */
static void report_nats(const char *what, natsStatus s, jsErrCode jerr)
{
    const char *detail = nats_detail(s);
    const char *text = natsStatus_GetText(s);
    fprintf(stderr, "js_tool: %s: %s: %s", jt_cmd, what, text);
    if (detail != NULL)
        fprintf(stderr, " (%s)", detail);
    if (jerr != 0)
        fprintf(stderr, " [jerr %d]", (int)jerr);
    fputc('\n', stderr);
}

static void report_sys(const char *what)
{
    fprintf(stderr, "js_tool: %s: %s: %s\n", jt_cmd, what, strerror(errno));
}

/* Prints one JSON object as one compact line on stdout; takes ownership of
 * obj (NULL means building it failed). Returns JT_OK or JT_FAIL. */
static int print_json(json_t *obj)
{
    if (obj == NULL) {
        fprintf(stderr, "js_tool: %s: cannot build the JSON output\n", jt_cmd);
        return JT_FAIL;
    }
    char *text = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(obj);
    if (text == NULL) {
        fprintf(stderr, "js_tool: %s: cannot encode the JSON output\n", jt_cmd);
        return JT_FAIL;
    }
    int rc = (fputs(text, stdout) == EOF || fputc('\n', stdout) == EOF) ? JT_FAIL : JT_OK;
    free(text);
    if (rc != JT_OK)
        report_sys("writing stdout");
    return rc;
}

/* ------------------------------------------------------------ connection */

struct jt_conn {
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
};

static void conn_close(struct jt_conn *c)
{
    /* The context first: it must not outlive the connection it uses. */
    jsCtx_Destroy(c->js);
    natsConnection_Destroy(c->nc);
    natsOptions_Destroy(c->opts);
    memset(c, 0, sizeof(*c));
}

/* Connects to one of a->servers (each tried once, in random order) and makes
 * a JetStream context with jo (NULL: defaults). connect_ms bounds each TCP
 * connect; a->send_asap turns off libnats's write batching. Returns JT_OK,
 * or JT_FAIL having reported unless quiet. */
static int conn_open(struct jt_conn *c, const struct jt_args *a, jsOptions *jo, int64_t connect_ms,
                     bool quiet)
{
    const char *urls[JT_MAX_SERVERS];
    char *buf = NULL;
    natsStatus s;
    int rc = JT_FAIL;

    memset(c, 0, sizeof(*c));
    int n = split_list(a->servers, &buf, urls, JT_MAX_SERVERS);
    if (n < 0) {
        fprintf(stderr, "js_tool: %s: --servers: '%s' is not a comma list of at most %d URLs\n",
                jt_cmd, a->servers, JT_MAX_SERVERS);
        free(buf);
        return JT_FAIL;
    }
    s = natsOptions_Create(&c->opts);
    if (s == NATS_OK)
        s = natsOptions_SetServers(c->opts, urls, n);
    if (s == NATS_OK)
        s = natsOptions_SetName(c->opts, "berth-js_tool");
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(c->opts, connect_ms);
    /* A server killed under a bench is the point of some tests: come back
     * quickly to a survivor, and give up once every one was tried a few times. */
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(c->opts, 100);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(c->opts, 3 * n);
    /* libnats's flusher thread waits 1 ms for more data before each write:
     * with one publish in flight that is most of its PubAck latency. */
    if (s == NATS_OK && a->send_asap)
        s = natsOptions_SetSendAsap(c->opts, true);
    if (s != NATS_OK) {
        if (!quiet)
            report_nats("connection options", s, 0);
        goto out;
    }
    s = natsConnection_Connect(&c->nc, c->opts);
    if (s != NATS_OK) {
        if (!quiet)
            report_nats(a->servers, s, 0);
        goto out;
    }
    s = natsConnection_JetStream(&c->js, c->nc, jo);
    if (s != NATS_OK) {
        if (!quiet)
            report_nats("JetStream context", s, 0);
        goto out;
    }
    rc = JT_OK;
out:
    free(buf);
    if (rc != JT_OK)
        conn_close(c);
    return rc;
}

static jsOptions api_options(const struct jt_args *a)
{
    jsOptions jo;
    /* jsOptions_Init only refuses NULL. */
    (void)jsOptions_Init(&jo);
    jo.Wait = a->timeout_ms;
    return jo;
}

/* ------------------------------------------------------------ create, delete */

static int cmd_create(const struct jt_args *a)
{
    const char *subjects[JT_MAX_SUBJECTS];
    char *buf = NULL;
    struct jt_conn c;
    jsStreamConfig cfg;
    jsErrCode jerr = 0;
    int rc = JT_FAIL;

    int n = split_list(a->subjects, &buf, subjects, JT_MAX_SUBJECTS);
    if (n < 0) {
        fprintf(stderr, "js_tool: create: --subjects: '%s' is not a comma list of at most %d"
                        " subjects\n", a->subjects, JT_MAX_SUBJECTS);
        free(buf);
        return JT_USAGE;
    }
    jsOptions jo = api_options(a);
    if (conn_open(&c, a, &jo, a->timeout_ms, false) != JT_OK) {
        free(buf);
        return JT_FAIL;
    }
    natsStatus s = jsStreamConfig_Init(&cfg);
    if (s != NATS_OK) {
        report_nats("stream config", s, 0);
        goto out;
    }
    cfg.Name = a->stream;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = n;
    cfg.Replicas = a->replicas;
    cfg.Storage = strcmp(a->storage, "memory") == 0 ? js_MemoryStorage : js_FileStorage;
    cfg.Duplicates = a->duplicates_ms * 1000000; /* the API speaks nanoseconds */
    s = js_AddStream(NULL, c.js, &cfg, NULL, &jerr);
    if (s != NATS_OK) {
        report_nats(a->stream, s, jerr);
        goto out;
    }
    rc = JT_OK;
out:
    conn_close(&c);
    free(buf);
    return rc;
}

static int cmd_delete(const struct jt_args *a)
{
    struct jt_conn c;
    jsErrCode jerr = 0;
    jsOptions jo = api_options(a);
    if (conn_open(&c, a, &jo, a->timeout_ms, false) != JT_OK)
        return JT_FAIL;
    natsStatus s = js_DeleteStream(c.js, a->stream, NULL, &jerr);
    if (s != NATS_OK)
        report_nats(a->stream, s, jerr);
    conn_close(&c);
    return s == NATS_OK ? JT_OK : JT_FAIL;
}

/* ------------------------------------------------------------ info */

/* The peers that are not the leader, as the stream leader sees them. */
static json_t *peers_json(const jsClusterInfo *ci)
{
    json_t *arr = json_array();
    if (arr == NULL)
        return NULL;
    for (int i = 0; ci != NULL && i < ci->ReplicasLen; i++) {
        const jsPeerInfo *p = ci->Replicas[i];
        json_t *o = json_pack("{s:s,s:b,s:b,s:I,s:I}", "name", p->Name ? p->Name : "",
                              "current", (int)p->Current, "offline", (int)p->Offline,
                              "lag", (json_int_t)p->Lag,
                              "active_ms", (json_int_t)(p->Active / 1000000));
        if (o == NULL || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static int cmd_info(const struct jt_args *a)
{
    struct jt_conn c;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    int rc = JT_FAIL;

    jsOptions jo = api_options(a);
    if (conn_open(&c, a, &jo, a->timeout_ms, false) != JT_OK)
        return JT_FAIL;
    natsStatus s = js_GetStreamInfo(&si, c.js, a->stream, NULL, &jerr);
    if (s != NATS_OK) {
        report_nats(a->stream, s, jerr);
        goto out;
    }
    const jsClusterInfo *ci = si->Cluster;
    const char *leader = (ci != NULL && ci->Leader != NULL) ? ci->Leader : "";
    /* cluster_size: the stream's raft group as its leader reports it (the
     * leader itself plus the other peers); 1 without cluster information. */
    int cluster_size = ci == NULL ? 1 : (leader[0] != '\0') + ci->ReplicasLen;
    rc = print_json(json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:i,s:o}",
        "messages", (json_int_t)si->State.Msgs, "bytes", (json_int_t)si->State.Bytes,
        "first_seq", (json_int_t)si->State.FirstSeq, "last_seq", (json_int_t)si->State.LastSeq,
        "replicas", (json_int_t)si->Config->Replicas,
        "duplicate_window_ms", (json_int_t)(si->Config->Duplicates / 1000000),
        "leader", leader, "cluster_size", cluster_size, "peers", peers_json(ci)));
out:
    jsStreamInfo_Destroy(si);
    conn_close(&c);
    return rc;
}

/* ------------------------------------------------------------ dump */

static char *hex_encode(const unsigned char *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    char *out = malloc(2 * n + 1);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 0xf];
    }
    out[2 * n] = '\0';
    return out;
}

/* {"Name":"value"} for every header; a name with several values maps to an
 * array of them. Returns NULL (having reported) on failure. */
static json_t *headers_json(natsMsg *m)
{
    const char **keys = NULL;
    int nkeys = 0;
    json_t *obj = json_object();
    if (obj == NULL)
        return NULL;
    natsStatus s = natsMsgHeader_Keys(m, &keys, &nkeys);
    if (s == NATS_NOT_FOUND)
        return obj; /* no headers at all */
    if (s != NATS_OK) {
        report_nats("header names", s, 0);
        json_decref(obj);
        return NULL;
    }
    for (int i = 0; i < nkeys; i++) {
        const char **values = NULL;
        int nvalues = 0;
        json_t *v = NULL;
        s = natsMsgHeader_Values(m, keys[i], &values, &nvalues);
        if (s != NATS_OK) {
            report_nats(keys[i], s, 0);
        } else if (nvalues == 1) {
            v = json_string(values[0]);
        } else {
            v = json_array();
            for (int k = 0; v != NULL && k < nvalues; k++) {
                if (json_array_append_new(v, json_string(values[k])) != 0) {
                    json_decref(v);
                    v = NULL;
                }
            }
        }
        free((void *)values);
        if (v == NULL || json_object_set_new(obj, keys[i], v) != 0) {
            json_decref(obj);
            free((void *)keys);
            return NULL;
        }
    }
    free((void *)keys);
    return obj;
}

static int cmd_dump(const struct jt_args *a)
{
    struct jt_conn c;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    int rc = JT_FAIL;

    jsOptions jo = api_options(a);
    if (conn_open(&c, a, &jo, a->timeout_ms, false) != JT_OK)
        return JT_FAIL;
    natsStatus s = js_GetStreamInfo(&si, c.js, a->stream, NULL, &jerr);
    if (s != NATS_OK) {
        report_nats(a->stream, s, jerr);
        goto out;
    }
    /* What the stream holds now; later messages are not waited for. */
    uint64_t seq = si->State.FirstSeq > (uint64_t)a->from ? si->State.FirstSeq : (uint64_t)a->from;
    uint64_t last = si->State.LastSeq;
    for (; si->State.Msgs > 0 && seq <= last; seq++) {
        natsMsg *m = NULL;
        s = js_GetMsg(&m, c.js, a->stream, seq, NULL, &jerr);
        if (s == NATS_NOT_FOUND && jerr == JSNoMessageFoundErr)
            continue; /* a deleted sequence inside the range */
        if (s != NATS_OK) {
            char what[96];
            snprintf(what, sizeof(what), "message %" PRIu64, seq);
            report_nats(what, s, jerr);
            goto out;
        }
        char *hex = hex_encode((const unsigned char *)natsMsg_GetData(m),
                               (size_t)natsMsg_GetDataLength(m));
        json_t *hdrs = headers_json(m);
        json_t *line = NULL;
        if (hex != NULL && hdrs != NULL) {
            line = json_pack("{s:I,s:s,s:o,s:s}", "stream_seq", (json_int_t)seq, "subject",
                             natsMsg_GetSubject(m), "headers", hdrs, "data_hex", hex);
            hdrs = NULL; /* json_pack took it, or freed it on failure */
        }
        json_decref(hdrs);
        free(hex);
        natsMsg_Destroy(m);
        if (print_json(line) != JT_OK)
            goto out;
    }
    rc = JT_OK;
out:
    jsStreamInfo_Destroy(si);
    conn_close(&c);
    return rc;
}

/* ------------------------------------------------------------ wait-ready */

static int64_t mono_ms(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC cannot fail on Linux with a valid pointer. */
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Succeeds once the JetStream API answers: in a cluster only the meta
 * leader answers account info (a leaderless server says "JetStream system
 * temporarily unavailable"), so an answer means the meta group has a leader.
 * It does not prove a quorum: a meta leader whose peers all died goes on
 * answering (and its /healthz says 200) until it notices, 15 s or more on
 * nats-server 2.9.10. With --stream, also waits until that stream's leader
 * answers its info. */
static int cmd_wait_ready(const struct jt_args *a)
{
    const int64_t deadline = mono_ms() + a->timeout_ms;
    struct jt_conn c = { 0 };
    char last[256] = "no attempt finished";
    jsOptions jo;

    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            break;
        int64_t bound = left < JT_ATTEMPT_MS ? left : JT_ATTEMPT_MS;
        natsStatus s = NATS_OK;
        jsErrCode jerr = 0;
        if (c.nc == NULL) {
            if (conn_open(&c, a, NULL, bound, true) != JT_OK) {
                natsStatus ls = NATS_OK;
                (void)nats_GetLastError(&ls);
                const char *d = nats_detail(ls);
                snprintf(last, sizeof(last), "connect: %s%s%s", natsStatus_GetText(ls),
                         d != NULL ? ": " : "", d != NULL ? d : "");
            }
        }
        if (c.nc != NULL) {
            jsAccountInfo *ai = NULL;
            jsStreamInfo *si = NULL;
            bool leaderless = false;
            (void)jsOptions_Init(&jo);
            jo.Wait = bound;
            s = js_GetAccountInfo(&ai, c.js, &jo, &jerr);
            jsAccountInfo_Destroy(ai);
            const char *step = "account info";
            if (s == NATS_OK && a->stream != NULL) {
                step = a->stream;
                s = js_GetStreamInfo(&si, c.js, a->stream, &jo, &jerr);
                leaderless = s == NATS_OK && si->Cluster != NULL
                             && (si->Cluster->Leader == NULL || si->Cluster->Leader[0] == '\0');
                jsStreamInfo_Destroy(si);
            }
            if (s == NATS_OK && !leaderless) {
                conn_close(&c);
                return JT_OK;
            }
            if (leaderless) {
                snprintf(last, sizeof(last), "%s: no stream leader yet", a->stream);
            } else {
                const char *d = nats_detail(s);
                snprintf(last, sizeof(last), "%s: %s%s%s [jerr %d]", step, natsStatus_GetText(s),
                         d != NULL ? ": " : "", d != NULL ? d : "", (int)jerr);
            }
            if (natsConnection_IsClosed(c.nc))
                conn_close(&c);
        }
        left = deadline - mono_ms();
        if (left <= 0)
            break;
        nats_Sleep(left < JT_POLL_MS ? left : JT_POLL_MS);
    }
    conn_close(&c);
    fprintf(stderr, "js_tool: wait-ready: JetStream not ready after %lld ms; last: %s\n",
            a->timeout_ms, last);
    return JT_FAIL;
}

/* ------------------------------------------------------------ bench */

/* Send times of the messages waiting for their PubAck, keyed by the natsMsg
 * pointer the AckHandler hands back (open addressing, linear probing,
 * backward-shift deletion). The library owns each message between publish
 * and ack, so its address is a stable key for exactly that time. */
struct pend_slot {
    const natsMsg *msg; /* NULL: free */
    int64_t sent_ns;
};

struct bench {
    pthread_mutex_t mu;      /* the AckHandler runs on the library's thread */
    bool mu_ready;           /* mu was initialised */
    struct pend_slot *slots; /* capacity mask + 1, a power of two */
    size_t mask;
    size_t used;
    int64_t *lat_ns;         /* one per positive PubAck, in arrival order */
    size_t nlat;
    uint64_t errors;
    uint64_t duplicates;     /* PubAcks with duplicate:true */
    natsStatus first_err;    /* the first failure, for the stderr line */
    jsErrCode first_jerr;
    char first_text[256];
};

static size_t pend_home(const struct bench *b, const natsMsg *m)
{
    uint64_t h = (uint64_t)(uintptr_t)m;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL; /* murmur3's finaliser: spreads aligned addresses */
    h ^= h >> 33;
    return (size_t)h & b->mask;
}

/* Caller holds b->mu. Returns false when full (cannot happen when the
 * capacity exceeds max pending + 1, which bench_init ensures). */
static bool pend_put(struct bench *b, const natsMsg *m, int64_t sent_ns)
{
    if (b->used + 1 > b->mask)
        return false;
    size_t i = pend_home(b, m);
    while (b->slots[i].msg != NULL)
        i = (i + 1) & b->mask;
    b->slots[i] = (struct pend_slot){ m, sent_ns };
    b->used++;
    return true;
}

/* Caller holds b->mu. Restamps m's send time if m is still waiting. */
static void pend_restamp(struct bench *b, const natsMsg *m, int64_t sent_ns)
{
    for (size_t i = pend_home(b, m); b->slots[i].msg != NULL; i = (i + 1) & b->mask) {
        if (b->slots[i].msg == m) {
            b->slots[i].sent_ns = sent_ns;
            return;
        }
    }
}

/* Caller holds b->mu. Removes m; returns its send time or -1 if absent. */
static int64_t pend_take(struct bench *b, const natsMsg *m)
{
    size_t i = pend_home(b, m);
    while (b->slots[i].msg != m) {
        if (b->slots[i].msg == NULL)
            return -1;
        i = (i + 1) & b->mask;
    }
    int64_t sent = b->slots[i].sent_ns;
    /* Close the gap so later probes still find their entries. */
    for (size_t j = (i + 1) & b->mask; b->slots[j].msg != NULL; j = (j + 1) & b->mask) {
        size_t home = pend_home(b, b->slots[j].msg);
        bool movable = (i <= j) ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            b->slots[i] = b->slots[j];
            i = j;
        }
    }
    b->slots[i].msg = NULL;
    b->used--;
    return sent;
}

/* A default mutex fails only on misuse, which is a bug here: stop loudly. */
static void bench_lock(struct bench *b)
{
    int err = pthread_mutex_lock(&b->mu);
    if (err != 0) {
        fprintf(stderr, "js_tool: bench: pthread_mutex_lock: %s\n", strerror(err));
        abort();
    }
}

static void bench_unlock(struct bench *b)
{
    int err = pthread_mutex_unlock(&b->mu);
    if (err != 0) {
        fprintf(stderr, "js_tool: bench: pthread_mutex_unlock: %s\n", strerror(err));
        abort();
    }
}

/* Caller holds b->mu. */
static void bench_fail(struct bench *b, natsStatus s, jsErrCode jerr, const char *text)
{
    if (b->errors++ == 0) {
        b->first_err = s;
        b->first_jerr = jerr;
        snprintf(b->first_text, sizeof(b->first_text), "%s", text ? text : natsStatus_GetText(s));
    }
}

/* The library calls this once per message, with a PubAck or an error (a
 * server error, no responders, or the per-message wait running out); the
 * message is ours to destroy. */
static void bench_on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    struct bench *b = closure;
    int64_t now = mono_ns();
    (void)js;
    bench_lock(b);
    int64_t sent = pend_take(b, msg);
    if (pae != NULL) {
        bench_fail(b, pae->Err, pae->ErrCode, pae->ErrText);
    } else if (pa != NULL) {
        if (sent >= 0)
            b->lat_ns[b->nlat++] = now - sent;
        if (pa->Duplicate)
            b->duplicates++;
    }
    bench_unlock(b);
    natsMsg_Destroy(msg);
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

/* Nearest-rank percentile of sorted v[n], in ms; n > 0. */
static double pct_ms(const int64_t *v, size_t n, double p)
{
    size_t rank = (size_t)(p * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)v[rank - 1] / 1e6;
}

static int bench_init(struct bench *b, const struct jt_args *a)
{
    memset(b, 0, sizeof(*b));
    size_t want = 2 * ((size_t)(a->max_pending < a->count ? a->max_pending : a->count) + 2);
    size_t cap = 16;
    while (cap < want)
        cap <<= 1;
    int err = pthread_mutex_init(&b->mu, NULL);
    if (err != 0) {
        errno = err;
        report_sys("mutex");
        return JT_FAIL;
    }
    b->mu_ready = true;
    b->slots = calloc(cap, sizeof(*b->slots));
    b->lat_ns = calloc((size_t)a->count, sizeof(*b->lat_ns));
    if (b->slots == NULL || b->lat_ns == NULL) {
        report_sys("allocating the bench tables");
        return JT_FAIL;
    }
    b->mask = cap - 1;
    return JT_OK;
}

static void bench_free(struct bench *b)
{
    if (b->mu_ready)
        pthread_mutex_destroy(&b->mu);
    free(b->slots);
    free(b->lat_ns);
}

/* Waits up to wait_ms for every outstanding PubAck (or its timeout), then
 * takes back and counts as failed what is still unanswered, so that the
 * AckHandler is not called again. Returns JT_OK or JT_FAIL (reported). */
static int bench_drain(struct bench *b, jsCtx *js, int64_t wait_ms)
{
    jsPubOptions pc;
    natsStatus s = jsPubOptions_Init(&pc);
    if (s == NATS_OK) {
        pc.MaxWait = wait_ms;
        s = js_PublishAsyncComplete(js, &pc);
    }
    if (s == NATS_OK)
        return JT_OK;
    if (s != NATS_TIMEOUT) {
        report_nats("waiting for PubAcks", s, 0);
        return JT_FAIL;
    }
    natsMsgList pending = { 0 };
    s = js_PublishAsyncGetPendingList(&pending, js);
    if (s == NATS_NOT_FOUND) /* the last ones came in meanwhile */
        return JT_OK;
    if (s != NATS_OK) {
        report_nats("reclaiming unanswered messages", s, 0);
        return JT_FAIL;
    }
    bench_lock(b);
    for (int i = 0; i < pending.Count; i++)
        bench_fail(b, NATS_TIMEOUT, 0, "neither a PubAck nor the library's own timeout came");
    bench_unlock(b);
    natsMsgList_Destroy(&pending);
    return JT_OK;
}

static int cmd_bench(const struct jt_args *a)
{
    struct bench b;
    struct jt_conn c = { 0 };
    unsigned char *payload = NULL;
    int rc = JT_FAIL;
    natsStatus s;

    if (bench_init(&b, a) != JT_OK) {
        bench_free(&b);
        return JT_FAIL;
    }
    payload = malloc(a->size > 0 ? (size_t)a->size : 1);
    if (payload == NULL) {
        report_sys("allocating the payload");
        goto out;
    }
    for (long long i = 0; i < a->size; i++)
        payload[i] = (unsigned char)('a' + i % 26);

    jsOptions jo = api_options(a);
    jo.PublishAsync.MaxPending = a->max_pending;
    jo.PublishAsync.AckHandler = bench_on_ack;
    jo.PublishAsync.AckHandlerClosure = &b;
    /* A publish stalled at MaxPending waits as long as one PubAck may take
     * (the library's default, 200 ms, fails publishes a slow disk delays). */
    jo.PublishAsync.StallWait = a->timeout_ms;
    if (conn_open(&c, a, &jo, a->timeout_ms, false) != JT_OK)
        goto out;

    jsPubOptions po;
    if ((s = jsPubOptions_Init(&po)) != NATS_OK) {
        report_nats("publish options", s, 0);
        goto out;
    }
    /* Without it a PubAck that never comes (no stream leader, a lost
     * connection) would leave js_PublishAsyncComplete waiting forever. */
    po.MaxWait = a->timeout_ms;

    char id[256];
    bool aborted = false; /* a local failure stopped the loop (reported) */
    int64_t t0 = mono_ns();
    for (long long i = 0; i < a->count && !aborted; i++) {
        natsMsg *m = NULL;
        s = natsMsg_Create(&m, a->subject, NULL, (const char *)payload, (int)a->size);
        if (s == NATS_OK && a->msg_id_prefix != NULL) {
            snprintf(id, sizeof(id), "%s-%lld", a->msg_id_prefix, i);
            s = natsMsgHeader_Set(m, JT_MSG_ID_HEADER, id);
        }
        if (s != NATS_OK) {
            natsMsg_Destroy(m);
            report_nats("building a message", s, 0);
            aborted = true;
            break;
        }
        natsMsg *key = m; /* js_PublishMsgAsync clears m when it takes it */
        bench_lock(&b);
        bool put = pend_put(&b, key, mono_ns());
        bench_unlock(&b);
        if (!put) {
            natsMsg_Destroy(m);
            fprintf(stderr, "js_tool: bench: more messages in flight than --max-pending allows\n");
            aborted = true;
            break;
        }
        s = js_PublishMsgAsync(c.js, &m, &po);
        if (s == NATS_OK) {
            /* Latency counts from here, once the message is on its way: time
             * blocked at MaxPending is the publisher's queue, not the
             * cluster's. A PubAck that came before the return has already
             * been measured from before the call, and its entry is gone (only
             * this thread adds entries, so a hit is this very message). */
            int64_t now = mono_ns();
            bench_lock(&b);
            pend_restamp(&b, key, now);
            bench_unlock(&b);
        } else {
            /* Not taken: no AckHandler call will come for it. */
            const char *d = nats_detail(s);
            bench_lock(&b);
            (void)pend_take(&b, key);
            bench_fail(&b, s, 0, d);
            bench_unlock(&b);
            natsMsg_Destroy(m);
        }
    }
    /* Also after an abort: no AckHandler may run once b is freed. */
    if (bench_drain(&b, c.js, a->timeout_ms + JT_COMPLETE_SLACK_MS) != JT_OK || aborted)
        goto out;
    double secs = (double)(mono_ns() - t0) / 1e9;

    bench_lock(&b);
    uint64_t errors = b.errors, dups = b.duplicates;
    size_t nlat = b.nlat;
    bench_unlock(&b);
    qsort(b.lat_ns, nlat, sizeof(*b.lat_ns), cmp_i64);
    uint64_t ok = (uint64_t)a->count - errors;
    json_t *p50 = nlat ? json_real(pct_ms(b.lat_ns, nlat, 0.50)) : json_null();
    json_t *p99 = nlat ? json_real(pct_ms(b.lat_ns, nlat, 0.99)) : json_null();
    json_t *pmax = nlat ? json_real((double)b.lat_ns[nlat - 1] / 1e6) : json_null();
    rc = print_json(json_pack("{s:I,s:I,s:I,s:f,s:f,s:o,s:o,s:o}", "msgs", (json_int_t)a->count,
                              "errors", (json_int_t)errors, "duplicates", (json_int_t)dups,
                              "seconds", secs, "rate", secs > 0 ? (double)ok / secs : 0.0,
                              "p50_ms", p50, "p99_ms", p99, "max_ms", pmax));
    if (rc == JT_OK && errors > 0) {
        const char *status_text = natsStatus_GetText(b.first_err);
        fprintf(stderr, "js_tool: bench: %" PRIu64 " of %lld publishes failed; first: %s",
                errors, a->count, b.first_text);
        if (strcmp(status_text, b.first_text) != 0)
            fprintf(stderr, " (%s)", status_text);
        if (b.first_jerr != 0)
            fprintf(stderr, " [jerr %d]", (int)b.first_jerr);
        fputc('\n', stderr);
        rc = JT_FAIL;
    }
out:
    conn_close(&c);
    free(payload);
    bench_free(&b);
    return rc;
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? JT_USAGE : JT_OK;
    }
    const struct jt_command *cmd = NULL;
    for (size_t i = 0; i < JT_NCOMMANDS; i++)
        if (strcmp(argv[1], jt_commands[i].name) == 0)
            cmd = &jt_commands[i];
    if (cmd == NULL) {
        fprintf(stderr, "js_tool: unknown subcommand '%s'\n", argv[1]);
        usage(stderr);
        return JT_USAGE;
    }
    jt_cmd = cmd->name;
    struct jt_args a;
    int rc = parse_args(argc - 1, argv + 1, cmd, &a);
    if (rc != JT_OK)
        return rc;

    /* Explicitly, so that nats_CloseAndWait below has something to close
     * whatever the subcommand did (-1: the library's default lock spin). */
    natsStatus s = nats_Open(-1);
    if (s != NATS_OK) {
        report_nats("initialising the NATS library", s, 0);
        return JT_FAIL;
    }
    rc = cmd->run(&a);
    if (fflush(stdout) == EOF) {
        report_sys("flushing stdout");
        rc = JT_FAIL;
    }
    /* Wait for the library's threads, so nothing calls back into freed state
     * and leak checkers see a clean exit. */
    s = nats_CloseAndWait(2000);
    if (s != NATS_OK)
        report_nats("closing the NATS library", s, 0);
    return rc;
}
