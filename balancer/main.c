/* berth-balancer: settings, start-up, and the one loop that waits on the
 * heartbeat socket, the HTTP server and signals, and runs the reap pass. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <zmq.h>
#include <openssl/crypto.h>

#include "addr.h"
#include "config.h"
#include "hb_server.h"
#include "history.h"
#include "http_api.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"
#include "picker.h"
#include "registry.h"
#include "zap.h"

#define PROGRAM "berth-balancer"
/* Load history: one sample of every node this often (HISTORY_SAMPLES kept). */
#define HISTORY_PERIOD_MS 2000
/* After a wake-up that found heartbeats, the heartbeat socket rests this
 * long (HTTP and signals are still watched): at 10,000 nodes a second
 * heartbeats would otherwise wake the loop for every two or three of them.
 * The socket's receive HWM (hb_server.c) holds far more than arrives in
 * that time; a heartbeat being 5 ms late changes no liveness decision. */
#define HB_COALESCE_MS 5
/* Shorter admin tokens are refused at start: they could be guessed. */
#define ADMIN_TOKEN_MIN 16
/* Descriptors kept for everything but connections: libzmq's own (mailboxes,
 * its poller, inproc pipes), MHD's epoll and listener, the signalfd, logs,
 * an allowlist file being read. */
#define FD_RESERVE_OTHER 64
/* The smallest share of descriptors HTTP or the heartbeat port may get. */
#define FD_SHARE_MIN 16

static const struct config_setting settings[] = {
    {"http", CONFIG_STRING, "127.0.0.1:8080", 0, 0, NULL,
     "HTTP API address, host:port ([v6]:port); port 0 picks a free one"},
    {"heartbeat-bind", CONFIG_STRING, "tcp://127.0.0.1:7100", 0, 0, NULL,
     "ZeroMQ endpoint the nodes' heartbeats arrive on"},
    {"curve-secret", CONFIG_STRING, NULL, 0, 0, NULL,
     "the balancer's CURVE secret key file (NAME.key from `berth keygen`); nodes need the "
     "public key beside it (NAME.pub)"},
    {"curve-allow", CONFIG_STRING, NULL, 0, 0, NULL,
     "node public keys allowed to heartbeat: a directory of *.pub files or a file of one Z85 "
     "key per line; read again on SIGHUP"},
    {"heartbeat-plaintext", CONFIG_BOOL, "false", 0, 0, NULL,
     "run the heartbeat channel without CURVE: anyone reaching --heartbeat-bind can register "
     "nodes (tests and trusted networks only)"},
    {"interval", CONFIG_DURATION, "250ms", 10, 60000, NULL,
     "heartbeat interval, announced to every node"},
    {"fall", CONFIG_INT, "3", 1, 100, NULL, "silent intervals before a node is down"},
    {"rise", CONFIG_INT, "2", 1, 100, NULL, "heartbeats in a row before a node is healthy"},
    {"forget-after", CONFIG_DURATION, "60s", 100, 86400000, NULL,
     "a down or draining node silent this long is dropped"},
    {"max-nodes", CONFIG_INT, "100000", 1, 10000000, NULL,
     "nodes the registry holds at most; REGISTER of a new id beyond it is refused"},
    {"flap-count", CONFIG_INT, "4", 0, REGISTRY_FLAP_COUNT_MAX, NULL,
     "a node down more than this many times in --flap-window is held out (flapping); 0: off"},
    {"flap-window", CONFIG_DURATION, "60s", 1000, 86400000, NULL,
     "the window --flap-count counts downs in"},
    {"flap-holdoff", CONFIG_DURATION, "5s", 100, 3600000, NULL,
     "first hold of a flapping node; doubles on each further hold"},
    {"flap-holdoff-max", CONFIG_DURATION, "5m", 100, 86400000, NULL,
     "the longest hold of a flapping node"},
    {"flap-min-rotation", CONFIG_INT, "50", 0, 100, NULL,
     "flap holds never take the rotation below this percent (rounded up) of the nodes that "
     "are up; the flapping nodes healthy longest come back first; 0: no floor"},
    {"panic-threshold", CONFIG_INT, "50", 0, 100, NULL,
     "percent of the rotation going silent within one interval above which silent nodes are "
     "kept in rotation (panic); 0: off"},
    {"panic-hold-max", CONFIG_DURATION, "10s", 100, 3600000, NULL,
     "panic keeps a silent node in rotation at most this long after its last heartbeat "
     "(at least --interval x --fall)"},
    {"heartbeat-handshake-timeout", CONFIG_DURATION, "2s", 100, 60000, NULL,
     "a heartbeat connection that has not completed its ZeroMQ/CURVE handshake this long "
     "after accept is closed"},
    {"heartbeat-max-connections", CONFIG_INT, "0", 0, 10000000, NULL,
     "heartbeat TCP connections held at most (more are closed at once); 0: what the "
     "descriptor limit leaves after HTTP's share"},
    {"report-quorum", CONFIG_INT, "3", 0, REGISTRY_REPORT_SLOTS, NULL,
     "distinct clients (by address) reporting a node unreachable within --report-window that "
     "eject it; 0: reports never eject"},
    {"report-window", CONFIG_DURATION, "10s", 1000, 3600000, NULL,
     "the window --report-quorum counts distinct reporters in"},
    {"report-eject", CONFIG_DURATION, "30s", 100, 3600000, NULL,
     "first ejection of a reported node; doubles when it is ejected again soon after"},
    {"report-eject-max", CONFIG_DURATION, "5m", 100, 86400000, NULL,
     "the longest ejection of a reported node"},
    {"report-max-eject-percent", CONFIG_INT, "50", 0, 100, NULL,
     "percent of the rotation (with the ejected nodes) that reports may eject at once"},
    {"report-rate", CONFIG_INT, "10", 0, 100000, NULL,
     "reports a second one client address may send (more get 429); 0: no limit"},
    {"http-per-ip-limit", CONFIG_INT, "64", 0, 1024, NULL,
     "HTTP connections one client may hold at once, an IPv6 client counted by its /64 (of "
     "1024 in all, the last 128 only for clients holding none); 0: no limit"},
    {"http-request-timeout", CONFIG_DURATION, "10s", 1000, 300000, NULL,
     "an HTTP request (headers and body) must be in this long after its connection opened "
     "or its previous request ended, or the connection is closed"},
    {"http-allowed-hosts", CONFIG_STRING, NULL, 0, 0, NULL,
     "comma-separated Host header values (host or host:port) the HTTP API answers, against "
     "DNS rebinding; others get 421; empty: any"},
    {"policy", CONFIG_ENUM, "least-loaded", 0, 0, "least-loaded|round-robin",
     "how /v1/pick chooses without a key"},
    {"https-cert", CONFIG_STRING, NULL, 0, 0, NULL,
     "serve the HTTP API over TLS with this PEM certificate chain (with --https-key)"},
    {"https-key", CONFIG_STRING, NULL, 0, 0, NULL, "the HTTPS certificate's PEM private key"},
    {"admin-token", CONFIG_STRING, NULL, 0, 0, NULL,
     "bearer token for POST /v1/nodes/{id}/drain|undrain (at least 16 printable characters; "
     "prefer BERTH_ADMIN_TOKEN over the flag); empty: admin endpoints answer 403"},
    {"log-level", CONFIG_ENUM, "info", 0, 0, "debug|info|warn|error", "lowest level logged"},
    {"log-format", CONFIG_ENUM, "text", 0, 0, "text|json",
     "log lines as key=value text or one JSON object each"},
};

/* Quotes and control bytes from a node would break the key=value line. */
static void sanitize(const char *in, char *out, size_t outlen)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 1 < outlen; i++) {
        unsigned char c = (unsigned char)in[i];
        out[j++] = (c == '"' || c == '\\') ? '\'' : (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    out[j] = '\0';
}

static void on_node_change(void *ctx, const struct registry_node *n, enum node_state from,
                           enum node_state to)
{
    metrics_note_change(ctx, n, from, to);
    char reason[HB_REASON_MAX + 1];
    sanitize(n->reason, reason, sizeof reason);
    log_info("node_state", "node_id=%s from=%s to=%s reason=\"%s\"", n->id, node_state_name(from),
             node_state_name(to), reason);
}

/* Panic is rare and says the balancer's own network is likely at fault:
 * loud, once on entry and once on exit. */
static void on_panic(void *ctx, bool entered, const char *reason)
{
    metrics_note_panic(ctx, entered);
    if (entered)
        log_error("panic_enter", "reason=\"%s\"", reason);
    else
        log_warn("panic_exit", "reason=\"%s\"", reason);
}

/* Everything the loop owns, freed in one place. */
struct balancer {
    struct config *cfg;
    struct registry *reg;
    struct picker *picker;
    struct metrics *metrics;
    struct history *history;
    void *zctx;
    struct hb_server *hb;
    struct http_api *api;
    int sigfd;
    struct hb_server_curve curve; /* secure mode; allow is handed to hb */
    bool secure;
    char *hosts_text;            /* --http-allowed-hosts, split in place */
    const char **allowed_hosts;  /* NULL-terminated, into hosts_text; NULL: any Host */
};

static void balancer_release(struct balancer *b)
{
    http_api_free(b->api);
    hb_server_free(b->hb);
    if (b->zctx) {
        int rc;
        do {
            rc = zmq_ctx_term(b->zctx);
        } while (rc == -1 && zmq_errno() == EINTR);
    }
    picker_free(b->picker);
    history_free(b->history);
    metrics_free(b->metrics);
    registry_free(b->reg);
    if (b->sigfd >= 0)
        close(b->sigfd);
    zap_allowlist_free(b->curve.allow);
    free(b->hosts_text);
    free(b->allowed_hosts);
    OPENSSL_cleanse(&b->curve.keys, sizeof b->curve.keys);
    config_free(b->cfg);
}

/* Reads a PEM file for HTTPS into a malloc'd string (at most 1 MiB). NULL
 * with the cause on stderr. */
static char *balancer_read_pem(const char *flag, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, PROGRAM ": --%s %s: %s\n", flag, path, strerror(errno));
        return NULL;
    }
    enum { PEM_MAX = 1 << 20 };
    char *text = malloc(PEM_MAX + 1);
    size_t n = text ? fread(text, 1, PEM_MAX + 1, f) : 0;
    bool bad = !text || ferror(f) || n > PEM_MAX || n == 0;
    if (bad)
        fprintf(stderr, PROGRAM ": --%s %s: %s\n", flag, path,
                !text ? "out of memory" : ferror(f) ? strerror(errno)
                : n == 0 ? "empty file" : "larger than 1 MiB: not a PEM file");
    fclose(f);
    if (bad) {
        free(text);
        return NULL;
    }
    text[n] = '\0';
    return text;
}

/* --https-cert and --https-key, both or neither. 0 (both NULL for plain
 * HTTP), or -1 with the cause on stderr. */
static int balancer_read_https(struct balancer *b, char **cert, char **key)
{
    const char *cf = config_str(b->cfg, "https-cert"), *kf = config_str(b->cfg, "https-key");
    bool have_cert = cf && *cf, have_key = kf && *kf;
    *cert = *key = NULL;
    if (!have_cert && !have_key)
        return 0;
    if (!have_cert || !have_key) {
        fprintf(stderr, PROGRAM ": HTTPS needs both --https-cert and --https-key\n");
        return -1;
    }
    *cert = balancer_read_pem("https-cert", cf);
    *key = *cert ? balancer_read_pem("https-key", kf) : NULL;
    if (!*key) {
        free(*cert);
        *cert = NULL;
        return -1;
    }
    return 0;
}

/* How the process's descriptors are shared. The heartbeat port and HTTP
 * share one table: without a split, idle TCP connections to the heartbeat
 * port (which libzmq keeps until its handshake timeout) could take every
 * descriptor and leave HTTP's accept failing. */
struct fd_budget {
    unsigned long long nofile; /* RLIMIT_NOFILE's soft limit, raised to the hard one */
    unsigned hb_max;           /* heartbeat connections held at most */
    unsigned http_max;         /* HTTP connections held at most */
};

/* Raises the soft RLIMIT_NOFILE to the hard limit, then gives HTTP up to
 * HTTP_API_CONN_LIMIT of what FD_RESERVE_OTHER leaves (half of it at most)
 * and the heartbeat port the rest, or hb_max when set and it fits. 0, or
 * -1 with the cause on stderr. */
static int balancer_fd_budget(unsigned hb_max, struct fd_budget *out)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        fprintf(stderr, PROGRAM ": getrlimit(RLIMIT_NOFILE): %s\n", strerror(errno));
        return -1;
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rl.rlim_max == RLIM_INFINITY || rl.rlim_cur < rl.rlim_max)) {
        struct rlimit want = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            rl = want;
        else /* kept the soft limit: the split below follows it */
            fprintf(stderr, PROGRAM ": warning: cannot raise RLIMIT_NOFILE from %llu to %llu: %s\n",
                    (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
                    strerror(errno));
    }
    unsigned long long nofile = rl.rlim_cur == RLIM_INFINITY ? 1ull << 24 : rl.rlim_cur;
    if (nofile > 1ull << 24)
        nofile = 1ull << 24; /* more than any split here needs */
    if (nofile < FD_RESERVE_OTHER + 2 * FD_SHARE_MIN) {
        fprintf(stderr, PROGRAM ": RLIMIT_NOFILE is %llu: the balancer needs at least %d "
                        "descriptors\n", nofile, FD_RESERVE_OTHER + 2 * FD_SHARE_MIN);
        return -1;
    }
    unsigned long long usable = nofile - FD_RESERVE_OTHER;
    unsigned long long http = usable / 2 < HTTP_API_CONN_LIMIT ? usable / 2 : HTTP_API_CONN_LIMIT;
    unsigned long long hb = usable - http;
    if (hb_max != 0) {
        if (hb_max > usable - FD_SHARE_MIN) {
            fprintf(stderr,
                    PROGRAM ": --heartbeat-max-connections: %u leaves HTTP fewer than %d of the "
                            "%llu descriptors (RLIMIT_NOFILE %llu, %d kept for the rest)\n",
                    hb_max, FD_SHARE_MIN, usable, nofile, FD_RESERVE_OTHER);
            return -1;
        }
        hb = hb_max;
        http = usable - hb < HTTP_API_CONN_LIMIT ? usable - hb : HTTP_API_CONN_LIMIT;
    }
    out->nofile = nofile;
    out->hb_max = hb > 10000000ull ? 10000000u : (unsigned)hb;
    out->http_max = (unsigned)http;
    return 0;
}

/* Splits the comma-separated --http-allowed-hosts into a NULL-terminated
 * array pointing into *text (both caller frees). Empty items are skipped;
 * NULL or "" gives NULL (any Host). 0, or -1 on out of memory. */
static int balancer_split_hosts(const char *list, char **text, const char ***hosts)
{
    *text = NULL;
    *hosts = NULL;
    if (!list || !*list)
        return 0;
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    *text = strdup(list);
    *hosts = calloc(n + 1, sizeof **hosts);
    if (!*text || !*hosts) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        free(*text);
        free(*hosts);
        *text = NULL;
        *hosts = NULL;
        return -1;
    }
    size_t k = 0;
    for (char *save = NULL, *tok = strtok_r(*text, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save))
        (*hosts)[k++] = tok;
    return 0;
}

/* A warning, not a refusal, when path is open to group or others (kind:
 * shared/keys.h). An unset or unreadable path says nothing here. */
static void balancer_warn_open_key(const char *setting, const char *path,
                                   enum keys_file_kind kind)
{
    unsigned mode = 0;
    char which[4096];
    if (keys_check_mode(path, kind, &mode, which, sizeof which) == KEYS_MODE_OPEN)
        log_warn("key_file_open", "setting=%s path=\"%s\" mode=%04o detail=\"%s\"", setting,
                 which, mode, keys_mode_advice(kind));
}

/* SIGHUP: reads --curve-allow again; a list that does not load leaves the
 * old one in force. */
static void balancer_reload_allowlist(struct balancer *b)
{
    if (!b->secure) {
        log_info("reload_skipped", "reason=\"plaintext heartbeats: no allowlist\"");
        return;
    }
    char err[512];
    const char *path = config_str(b->cfg, "curve-allow");
    struct zap_allowlist *a = zap_allowlist_load(path, err, sizeof err);
    if (!a) {
        log_error("allowlist_reload_failed", "path=\"%s\" detail=\"%s\" action=\"kept the old list\"",
                  path, err);
        return;
    }
    size_t n = zap_allowlist_size(a);
    balancer_warn_open_key("--curve-allow", path, KEYS_FILE_ALLOWLIST);
    hb_server_set_allowlist(b->hb, a);
    log_info("allowlist_reloaded", "path=\"%s\" keys=%zu", path, n);
}

/* Waits on the heartbeat socket, HTTP and signals until SIGTERM/SIGINT.
 * Returns the exit status. */
static int balancer_run(struct balancer *b, uint32_t interval_ms)
{
    /* The registry wants a pass at least every interval/4; interval/5 leaves room. */
    uint64_t reap_period = interval_ms / 5 ? interval_ms / 5 : 1;
    uint64_t next_reap = mono_now_ms() + reap_period;
    uint64_t next_sample = mono_now_ms(); /* a first sample at once */
    bool sample_failed = false;           /* log a failing sample once, not every period */
    uint64_t hb_rest_until = 0;           /* heartbeat socket left out of the poll until then */

    zmq_pollitem_t items[] = {
        {hb_server_socket(b->hb), 0, ZMQ_POLLIN, 0},
        {hb_server_monitor_socket(b->hb), 0, ZMQ_POLLIN, 0},
        {NULL, http_api_fd(b->api), ZMQ_POLLIN, 0},
        {NULL, b->sigfd, ZMQ_POLLIN, 0},
        {hb_server_zap_socket(b->hb), 0, ZMQ_POLLIN, 0}, /* secure mode only */
    };
    const int nitems = (int)(sizeof items / sizeof items[0]) - (b->secure ? 0 : 1);

    for (;;) {
        uint64_t now = mono_now_ms();
        uint64_t next_timer = next_reap < next_sample ? next_reap : next_sample;
        long timeout = next_timer > now ? (long)(next_timer - now) : 0;
        long http_timeout = http_api_timeout_ms(b->api);
        if (http_timeout >= 0 && http_timeout < timeout)
            timeout = http_timeout;
        /* when MHD wants to run even without I/O (a timeout, or work it
         * already has in hand: then its timeout is 0) */
        uint64_t http_due = http_timeout >= 0 ? now + (uint64_t)http_timeout : UINT64_MAX;
        bool hb_resting = now < hb_rest_until;
        items[0].events = hb_resting ? 0 : ZMQ_POLLIN;
        /* drained with the ROUTER: polled while resting they would spin */
        items[1].events = items[0].events;
        items[4].events = items[0].events;
        if (hb_resting && (long)(hb_rest_until - now) < timeout)
            timeout = (long)(hb_rest_until - now);

        if (zmq_poll(items, nitems, timeout) == -1) {
            if (zmq_errno() == EINTR)
                continue;
            log_error("poll_failed", "detail=\"%s\"", zmq_strerror(zmq_errno()));
            return 1;
        }

        if (items[3].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            ssize_t n = read(b->sigfd, &si, sizeof si);
            if (n == (ssize_t)sizeof si && si.ssi_signo == SIGHUP) {
                balancer_reload_allowlist(b);
            } else if (n == (ssize_t)sizeof si) {
                log_info("stop", "signal=%s", si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
                return 0;
            }
            if (n == -1 && errno != EAGAIN && errno != EINTR) {
                log_error("signalfd_failed", "detail=\"%s\"", strerror(errno));
                return 1;
            }
        }

        /* The heartbeat socket is drained on every wake-up outside its rest
         * (ZMQ_FD is edge triggered, so a reading of "nothing" is not to be
         * trusted). MHD
         * runs when its epoll descriptor is readable or it asked for a
         * run by now: at 10,000 nodes the loop wakes thousands of times a
         * second for heartbeats alone, and an idle MHD_run costs an
         * epoll_wait and epoll_ctl calls each time. */
        if (!hb_resting && hb_server_drain(b->hb) > 0)
            hb_rest_until = mono_now_ms() + HB_COALESCE_MS;
        now = mono_now_ms();
        if ((items[2].revents & ZMQ_POLLIN) || now >= http_due) {
            if (http_api_run(b->api) != 0)
                log_warn("http_run_failed", NULL);
            now = mono_now_ms();
        }

        if (now >= next_reap) {
            registry_reap(b->reg);
            next_reap = now + reap_period;
        }
        if (now >= next_sample) {
            int rc = history_sample(b->history, b->reg);
            if (rc != 0 && !sample_failed)
                log_warn("history_sample_failed", "detail=\"out of memory\"");
            sample_failed = rc != 0;
            next_sample = now + HISTORY_PERIOD_MS;
        }
    }
}

int main(int argc, char **argv)
{
    struct balancer b = {.sigfd = -1};
    int status = 1;
    char err[256];

    b.cfg = config_new(PROGRAM, BERTH_VERSION,
                       "the berth balancer: node heartbeats in, HTTP/JSON lookups out", settings,
                       sizeof settings / sizeof settings[0]);
    if (!b.cfg) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        return 1;
    }
    switch (config_load(b.cfg, argc, argv, err, sizeof err)) {
    case CONFIG_OK:
        break;
    case CONFIG_HELP:
        config_usage(b.cfg, stdout);
        config_free(b.cfg);
        return 0;
    case CONFIG_VERSION:
        config_version_line(b.cfg, stdout);
        config_free(b.cfg);
        return 0;
    case CONFIG_ERROR:
    default:
        fprintf(stderr, PROGRAM ": %s\n", err);
        config_free(b.cfg);
        return 2;
    }

    /* Validate everything before any side effect. */
    status = 2;
    if (config_npositional(b.cfg) > 0) {
        fprintf(stderr, PROGRAM ": unexpected argument \"%s\"\n", config_positional(b.cfg, 0));
        goto out;
    }
    enum log_level level;
    if (log_level_parse(config_str(b.cfg, "log-level"), &level) != 0) {
        fprintf(stderr, PROGRAM ": --log-level: bad value \"%s\"\n",
                config_str(b.cfg, "log-level"));
        goto out;
    }
    enum log_format log_fmt;
    if (log_format_parse(config_str(b.cfg, "log-format"), &log_fmt) != 0) {
        fprintf(stderr, PROGRAM ": --log-format: bad value \"%s\"\n",
                config_str(b.cfg, "log-format"));
        goto out;
    }
    const char *admin_token = config_str(b.cfg, "admin-token");
    if (admin_token && admin_token[0]) {
        size_t tlen = strlen(admin_token);
        bool printable = true;
        for (size_t i = 0; i < tlen; i++)
            if (admin_token[i] <= ' ' || admin_token[i] >= 0x7f)
                printable = false;
        if (tlen < ADMIN_TOKEN_MIN || !printable) {
            /* The value itself is a secret: never echo it. */
            fprintf(stderr,
                    PROGRAM ": --admin-token: must be at least %d printable ASCII characters "
                            "without spaces (got %zu characters)\n",
                    ADMIN_TOKEN_MIN, tlen);
            goto out;
        }
    }
    enum picker_policy policy;
    if (picker_policy_parse(config_str(b.cfg, "policy"), &policy) != 0) {
        fprintf(stderr, PROGRAM ": --policy: bad value \"%s\"\n", config_str(b.cfg, "policy"));
        goto out;
    }
    struct addr http_addr;
    char aerr[200];
    if (addr_parse(config_str(b.cfg, "http"), true, &http_addr, aerr, sizeof aerr) != 0) {
        fprintf(stderr, PROGRAM ": --http: %s\n", aerr);
        goto out;
    }
    struct registry_config rcfg = {
        .interval_ms = (uint32_t)config_int(b.cfg, "interval"),
        .fall = (uint32_t)config_int(b.cfg, "fall"),
        .rise = (uint32_t)config_int(b.cfg, "rise"),
        .forget_ms = (uint32_t)config_int(b.cfg, "forget-after"),
        .max_nodes = (uint32_t)config_int(b.cfg, "max-nodes"),
        .flap_count = (uint32_t)config_int(b.cfg, "flap-count"),
        .flap_window_ms = (uint32_t)config_int(b.cfg, "flap-window"),
        .flap_holdoff_ms = (uint32_t)config_int(b.cfg, "flap-holdoff"),
        .flap_holdoff_max_ms = (uint32_t)config_int(b.cfg, "flap-holdoff-max"),
        .panic_percent = (uint32_t)config_int(b.cfg, "panic-threshold"),
        .panic_hold_max_ms = (uint32_t)config_int(b.cfg, "panic-hold-max"),
        .flap_min_rotation_percent = (uint32_t)config_int(b.cfg, "flap-min-rotation"),
        .report_quorum = (uint32_t)config_int(b.cfg, "report-quorum"),
        .report_window_ms = (uint32_t)config_int(b.cfg, "report-window"),
        .report_eject_ms = (uint32_t)config_int(b.cfg, "report-eject"),
        .report_eject_max_ms = (uint32_t)config_int(b.cfg, "report-eject-max"),
        .report_max_eject_percent = (uint32_t)config_int(b.cfg, "report-max-eject-percent"),
        .report_rate = (uint32_t)config_int(b.cfg, "report-rate"),
    };
    rcfg.warmup_ms = rcfg.fall * rcfg.interval_ms;
    if (rcfg.flap_holdoff_max_ms < rcfg.flap_holdoff_ms) {
        fprintf(stderr, PROGRAM ": --flap-holdoff-max: must not be below --flap-holdoff\n");
        goto out;
    }
    if (rcfg.report_eject_max_ms < rcfg.report_eject_ms) {
        fprintf(stderr, PROGRAM ": --report-eject-max: must not be below --report-eject\n");
        goto out;
    }
    if ((uint64_t)rcfg.panic_hold_max_ms < (uint64_t)rcfg.interval_ms * rcfg.fall) {
        fprintf(stderr,
                PROGRAM ": --panic-hold-max: %" PRIu32 " ms is below --interval x --fall (%" PRIu64
                        " ms): panic could not keep even the nodes it puts back\n",
                rcfg.panic_hold_max_ms, (uint64_t)rcfg.interval_ms * rcfg.fall);
        goto out;
    }
    struct fd_budget fds;
    if (balancer_fd_budget((unsigned)config_int(b.cfg, "heartbeat-max-connections"), &fds) != 0)
        goto out;
    if (balancer_split_hosts(config_str(b.cfg, "http-allowed-hosts"), &b.hosts_text,
                             &b.allowed_hosts) != 0)
        goto out;

    /* The heartbeat channel: CURVE with an allowlist, or plaintext only
     * when asked for by name. */
    const char *curve_secret = config_str(b.cfg, "curve-secret");
    const char *curve_allow = config_str(b.cfg, "curve-allow");
    bool plaintext = config_bool(b.cfg, "heartbeat-plaintext");
    bool have_secret = curve_secret && curve_secret[0], have_allow = curve_allow && curve_allow[0];
    bool secret_open = false;
    if (plaintext && (have_secret || have_allow)) {
        fprintf(stderr, PROGRAM ": --heartbeat-plaintext contradicts --curve-secret/--curve-allow: "
                        "pass one or the other\n");
        goto out;
    }
    if (!plaintext && (!have_secret || !have_allow)) {
        fprintf(stderr,
                PROGRAM ": the heartbeat channel needs --curve-secret FILE (the balancer's key, "
                        "from `berth keygen --out DIR/balancer`) and --curve-allow DIR_OR_FILE "
                        "(the node public keys), or --heartbeat-plaintext to run it without "
                        "authentication (missing: %s)\n",
                !have_secret && !have_allow ? "both" : !have_secret ? "--curve-secret"
                                                                    : "--curve-allow");
        goto out;
    }
    if (!plaintext) {
        if (keys_load_secret(curve_secret, &b.curve.keys, &secret_open, err, sizeof err) != 0) {
            fprintf(stderr, PROGRAM ": --curve-secret: %s\n", err);
            goto out;
        }
        b.curve.allow = zap_allowlist_load(curve_allow, err, sizeof err);
        if (!b.curve.allow) {
            fprintf(stderr, PROGRAM ": --curve-allow: %s\n", err);
            goto out;
        }
        b.secure = true;
    }

    log_set_format(log_fmt);
    log_setup(level, "balancer", NULL);
    if (plaintext)
        log_warn("heartbeat_plaintext",
                 "detail=\"heartbeats are not authenticated: anyone reaching %s can register "
                 "nodes; use --curve-secret and --curve-allow\"",
                 config_str(b.cfg, "heartbeat-bind"));
    if (secret_open)
        log_warn("key_file_open", "path=\"%s\" detail=\"the secret key file is readable by "
                 "group or others: chmod 600 it\"", curve_secret);
    balancer_warn_open_key("--https-key", config_str(b.cfg, "https-key"), KEYS_FILE_PRIVATE);
    if (b.secure)
        balancer_warn_open_key("--curve-allow", curve_allow, KEYS_FILE_ALLOWLIST);
    status = 1;

    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    if (addr_resolve(&http_addr, SOCK_STREAM, &ss, &sslen, aerr, sizeof aerr) != 0) {
        fprintf(stderr, PROGRAM ": --http: %s\n", aerr);
        status = 2;
        goto out;
    }

    /* Signals arrive through signalfd; blocked before libzmq starts its
     * threads so none of them takes SIGTERM instead. A peer that closes
     * mid-response must not kill the process. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, PROGRAM ": cannot set up signals: %s\n", strerror(errno));
        goto out;
    }
    b.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (b.sigfd < 0) {
        fprintf(stderr, PROGRAM ": signalfd: %s\n", strerror(errno));
        goto out;
    }

    b.reg = registry_new(&rcfg, NULL, NULL);
    b.picker = picker_new(policy, 0);
    b.metrics = metrics_new();
    b.history = history_new(HISTORY_PERIOD_MS);
    b.zctx = zmq_ctx_new();
    if (!b.reg || !b.picker || !b.metrics || !b.history || !b.zctx) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        goto out;
    }
    registry_on_change(b.reg, on_node_change, b.metrics);
    registry_on_panic(b.reg, on_panic, b.metrics);

    size_t allowed_keys = zap_allowlist_size(b.curve.allow);
    struct hb_server_limits hlim = {
        .handshake_ms = (uint32_t)config_int(b.cfg, "heartbeat-handshake-timeout"),
        .max_conns = fds.hb_max,
    };
    b.hb = hb_server_new_limited(b.zctx, config_str(b.cfg, "heartbeat-bind"), b.reg,
                                 b.secure ? &b.curve : NULL, &hlim, err, sizeof err);
    if (!b.hb) {
        fprintf(stderr, PROGRAM ": %s\n", err);
        goto out;
    }
    char *https_cert = NULL, *https_key = NULL;
    if (balancer_read_https(&b, &https_cert, &https_key) != 0)
        goto out;
    struct http_api_config hcfg = {
        .addr = (const struct sockaddr *)&ss,
        .policy = policy,
        .version = BERTH_VERSION,
        .admin_token = admin_token,
        .metrics = b.metrics,
        .history = b.history,
        .tls_cert_pem = https_cert,
        .tls_key_pem = https_key,
        .per_ip_limit = (unsigned)config_int(b.cfg, "http-per-ip-limit"),
        .conn_limit = fds.http_max,
        .request_timeout_ms = (uint32_t)config_int(b.cfg, "http-request-timeout"),
        .allowed_hosts = (const char *const *)b.allowed_hosts,
    };
    b.api = http_api_new(&hcfg, b.reg, b.picker, b.hb, err, sizeof err);
    free(https_cert);
    if (https_key) {
        OPENSSL_cleanse(https_key, strlen(https_key));
        free(https_key);
    }
    if (!b.api) {
        fprintf(stderr, PROGRAM ": --http %s: %s\n", config_str(b.cfg, "http"), err);
        goto out;
    }

    struct addr bound = http_addr;
    bound.port = http_api_port(b.api);
    char http_text[ADDR_HOST_MAX + 16];
    addr_format(&bound, http_text, sizeof http_text);
    log_info("start",
             "http=%s heartbeat=%s interval_ms=%" PRIu32 " fall=%" PRIu32 " rise=%" PRIu32
             " forget_ms=%" PRIu32 " flap_count=%" PRIu32 " flap_window_ms=%" PRIu32
             " flap_holdoff_ms=%" PRIu32 " flap_holdoff_max_ms=%" PRIu32
             " panic_threshold=%" PRIu32 " panic_hold_max_ms=%" PRIu32
             " flap_min_rotation=%" PRIu32 " report_quorum=%" PRIu32 " policy=%s admin=%s"
             " nofile=%llu hb_max_conns=%u http_max_conns=%u version=%s",
             http_text, hb_server_endpoint(b.hb), rcfg.interval_ms, rcfg.fall, rcfg.rise,
             rcfg.forget_ms, rcfg.flap_count, rcfg.flap_window_ms, rcfg.flap_holdoff_ms,
             rcfg.flap_holdoff_max_ms, rcfg.panic_percent, rcfg.panic_hold_max_ms,
             rcfg.flap_min_rotation_percent, rcfg.report_quorum, picker_policy_name(policy),
             admin_token && admin_token[0] ? "on" : "off", (unsigned long long)fds.nofile,
             fds.hb_max, fds.http_max, BERTH_VERSION);

    if (b.secure) {
        char pub[KEYS_Z85_LEN + 1];
        keys_encode(b.curve.keys.public_key, pub);
        log_info("heartbeat_security", "mode=curve public_key=%s allowed_keys=%zu", pub,
                 allowed_keys);
    }

    status = balancer_run(&b, rcfg.interval_ms);
    log_info("exit", "status=%d", status);

out:
    balancer_release(&b);
    return status;
}
