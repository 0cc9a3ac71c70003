/* berth: the command-line client, a thin front on libberth (berth/berth.h)
 * for ping, info and send: turns flags into berth_options and results into
 * lines on stdout and "berth: ..." messages on stderr. pick and health are
 * single balancer requests (lookup); bench is its own load generator.
 * Exit: 0 ok, 1 failure, 2 usage. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "addr.h"
#include "bench.h"
#include "berth/berth.h"
#include "buf.h"
#include "config.h"
#include "frame.h"
#include "hb_msg.h"
#include "hex.h"
#include "keygen.h"
#include "log.h"
#include "lookup.h"
#include "tail.h"

#define PROGRAM "berth"
#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define CLI_ERR_MAX 1024
/* --whole reads stdin into memory; no node takes a frame near this. */
#define CLI_WHOLE_MAX (64u << 20)
/* Most balancer URLs in one comma-separated --balancer. */
#define CLI_BALANCERS_MAX 16

static const struct config_setting settings[] = {
    {"balancer", CONFIG_STRING, "http://127.0.0.1:8080", 0, 0, NULL,
     "the balancer's HTTP API, asked which node to use (several: comma-separated, "
     "asked in order)"},
    {"node", CONFIG_STRING, NULL, 0, 0, NULL,
     "host:port of a node to use directly, without asking the balancer"},
    {"ca", CONFIG_STRING, NULL, 0, 0, NULL,
     "CA certificate file the node's (and an https:// balancer's) certificate must chain to "
     "(empty: system store)"},
    {"insecure", CONFIG_BOOL, "false", 0, 0, NULL, "do not verify the node's certificate"},
    {"cert", CONFIG_STRING, NULL, 0, 0, NULL,
     "client certificate (PEM) for nodes that require mutual TLS (with --key)"},
    {"key", CONFIG_STRING, NULL, 0, 0, NULL, "the client certificate's private key (PEM)"},
    {"cache-ttl", CONFIG_DURATION, "1s", 0, 86400000, NULL,
     "how long the cached node list stands in when no balancer answers"},
    {"no-reports", CONFIG_BOOL, "false", 0, 0, NULL,
     "do not report nodes that cannot be reached to the balancer (POST /v1/reports)"},
    {"affinity", CONFIG_STRING, NULL, 0, 0, NULL,
     "affinity key: the same key keeps its node while that node is healthy"},
    {"name", CONFIG_STRING, "berth-cli", 0, 0, NULL, "client name sent in HELLO (node logs)"},
    {"producer-id", CONFIG_STRING, NULL, 0, 0, NULL,
     "producer id sent in HELLO, [A-Za-z0-9._-]{1,64}: with the message ids it names each "
     "message across nodes, so a JetStream stream stores a re-send once (default: random)"},
    {"timeout", CONFIG_DURATION, "5s", 1, 3600000, NULL,
     "bound on each wait: balancer request, connect, each reply"},
    {"retries", CONFIG_INT, "3", 0, 100, NULL,
     "other nodes to try when connecting to the picked one fails"},
    {"count", CONFIG_INT, "1", 1, 1000000, NULL, "ping: how many PINGs"},
    {"whole", CONFIG_BOOL, "false", 0, 0, NULL,
     "send: all of stdin is one message (default: one message per line)"},
    {"mode", CONFIG_ENUM, "echo", 0, 0, "handshake|echo|send",
     "bench: handshake (a new full TLS handshake per request), echo or send (persistent sessions)"},
    {"exchange", CONFIG_ENUM, "hello", 0, 0, "hello|http|none",
     "bench --mode handshake: what follows each handshake: berth HELLO, an HTTP GET (any HTTPS "
     "server), or nothing"},
    {"connections", CONFIG_INT, "64", 1, 100000, NULL, "bench: concurrent connections"},
    {"pipeline", CONFIG_INT, "1", 1, 1024, NULL, "bench: requests in flight per connection"},
    {"size", CONFIG_SIZE, "64", 0, 64 << 20, NULL, "bench: payload bytes per ECHO or SEND"},
    {"duration", CONFIG_DURATION, "10s", 1, 86400000, NULL, "bench: how long to measure"},
    {"threads", CONFIG_INT, "1", 1, 64, NULL, "bench: load generator threads (epoll loops)"},
    {"json", CONFIG_BOOL, "false", 0, 0, NULL, "bench: print the result as one JSON object"},
    {"log-level", CONFIG_ENUM, "warn", 0, 0, "debug|info|warn|error",
     "lowest level of the debug trace on stderr"},
};

static const char commands_help[] =
    "commands:\n"
    "  berth pick    ask the balancer for a node: prints \"<id> <host:port>\"\n"
    "  berth ping    PING the node (--count times), print the round trip\n"
    "  berth info    print the node's INFO JSON\n"
    "  berth health  ask the balancer's /healthz: exit 0 when it answers (container checks)\n"
    "  berth send    send stdin to the node, one message per line (or --whole),\n"
    "                print one \"ack id=... bytes=... sha256=... node=... seq=...\" line per message\n"
    "  berth bench   load generator against one node (--node, or one the balancer picks):\n"
    "                --mode handshake|echo|send, --connections, --pipeline, --size,\n"
    "                --duration, --threads; progress each second on stderr, the result\n"
    "                on stdout (--json for machines)\n"
    "  berth keygen  write a CurveZMQ key pair for the heartbeat channel: --out DIR/NAME\n"
    "                makes NAME.key (secret, 0600) and NAME.pub; --force replaces them\n"
    "  berth tail    print the records nodes journal (berth tail --help for its flags):\n"
    "                --feed tcp://node:port[,...], --from SEQ, --count, --duration, --out FILE\n"
    "  berth help    this text\n\n";

/* Everything a command needs, from the settings. */
struct cli {
    struct config *cfg;
    char *balancer_list;       /* --balancer, split in place at its commas */
    const char *balancers[CLI_BALANCERS_MAX];
    size_t nbalancers;         /* 0 with --node */
    struct lookup *lookups[CLI_BALANCERS_MAX]; /* one per balancer, for pick and health */
    struct berth_options bo;   /* ping, info and send go through libberth */
    const char *node_addr;     /* --node, or NULL */
    const char *key;           /* --affinity, or NULL */
    char err[CLI_ERR_MAX];     /* the failure to report */
};

/* snprintf that may truncate on purpose: error texts are cut, not lost. */
static void cli_setf(char *dst, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void cli_setf(char *dst, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, n, fmt, ap);
    va_end(ap);
}

/* A libberth client from the settings; NULL with cli->err set. */
/* The library's notices (running on the cached node list, a report that
 * did not go through) are for the person at the terminal. */
static void cli_notice(void *arg, const char *text)
{
    (void)arg;
    fprintf(stderr, PROGRAM ": notice: %s\n", text);
}

static berth_client *cli_client_new(struct cli *cli)
{
    berth_client *c = NULL;
    berth_err r = berth_client_new(&cli->bo, &c);
    if (r != BERTH_OK) {
        cli_setf(cli->err, sizeof(cli->err), "%s", berth_strerror(r));
        return NULL;
    }
    berth_set_notice_handler(c, cli_notice, NULL);
    return c;
}

/* Takes the library's detailed error, or its code's text when it has none. */
static void cli_take_error(struct cli *cli, const berth_client *c, berth_err r)
{
    const char *detail = berth_error(c);
    cli_setf(cli->err, sizeof(cli->err), "%s", detail[0] ? detail : berth_strerror(r));
}

/* Connects a new client; NULL with cli->err set. */
static berth_client *cli_connect(struct cli *cli)
{
    berth_client *c = cli_client_new(cli);
    if (!c)
        return NULL;
    berth_err r = berth_connect(c);
    if (r != BERTH_OK) {
        cli_take_error(cli, c, r);
        berth_client_free(c);
        return NULL;
    }
    log_debug("connected", "node_id=%s addr=%s max_message=%zu", berth_node_id(c),
              berth_node_addr(c), berth_max_message(c));
    return c;
}

/* One GET on the balancers, in the order given, until one answers: these
 * are single HTTP calls, with nothing to fail over. */
static int cli_balancer_get(struct cli *cli, const char *path, char **body)
{
    for (size_t i = 0; i < cli->nbalancers; i++) {
        char err[CLI_ERR_MAX];
        if (lookup_get_json(cli->lookups[i], path, body, err, sizeof(err)) == 0)
            return 0;
        cli_setf(cli->err, sizeof(cli->err), "%s", err);
    }
    return -1;
}

static int cli_balancer_pick(struct cli *cli, struct lookup_node *n)
{
    for (size_t i = 0; i < cli->nbalancers; i++) {
        char err[CLI_ERR_MAX];
        if (lookup_pick(cli->lookups[i], cli->key, NULL, 0, n, err, sizeof(err)) == 0)
            return 0;
        cli_setf(cli->err, sizeof(cli->err), "%s", err);
    }
    return -1;
}

/* Liveness of the balancer itself, for container health checks: the image
 * has no curl, and /v1/pick would fail while no node is healthy yet. */
static int cmd_health(struct cli *cli)
{
    char *body = NULL;
    if (cli_balancer_get(cli, "/healthz", &body) != 0)
        return EXIT_RUNTIME;
    printf("%s\n", body);
    free(body);
    return 0;
}

static int cmd_pick(struct cli *cli)
{
    struct lookup_node n;
    if (cli_balancer_pick(cli, &n) != 0)
        return EXIT_RUNTIME;
    printf("%s %s\n", n.id, n.addr);
    return 0;
}

static int cmd_ping(struct cli *cli)
{
    berth_client *c = cli_connect(cli);
    if (!c)
        return EXIT_RUNTIME;
    long long count = config_int(cli->cfg, "count");
    for (long long i = 0; i < count; i++) {
        double rtt = 0;
        berth_err r = berth_ping(c, &rtt);
        if (r != BERTH_OK) {
            cli_take_error(cli, c, r);
            berth_client_free(c);
            return EXIT_RUNTIME;
        }
        printf("pong from %s (%s): %.2f ms\n", berth_node_id(c), berth_node_addr(c), rtt);
        fflush(stdout);
    }
    berth_client_free(c); /* says BYE */
    return 0;
}

static int cmd_info(struct cli *cli)
{
    berth_client *c = cli_connect(cli);
    if (!c)
        return EXIT_RUNTIME;
    char *text = NULL;
    berth_err r = berth_info(c, &text);
    if (r != BERTH_OK) {
        cli_take_error(cli, c, r);
        berth_client_free(c);
        return EXIT_RUNTIME;
    }
    json_error_t jerr;
    json_t *info = json_loads(text, 0, &jerr);
    int rc = 0;
    if (!info) {
        cli_setf(cli->err, sizeof(cli->err), "node %s: INFO_REPLY is not JSON: %s",
                 berth_node_id(c), jerr.text);
        rc = EXIT_RUNTIME;
    } else {
        char *pretty = json_dumps(info, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (!pretty) {
            cli_setf(cli->err, sizeof(cli->err), "out of memory");
            rc = EXIT_RUNTIME;
        } else {
            printf("%s\n", pretty);
            free(pretty);
        }
        json_decref(info);
    }
    free(text);
    berth_client_free(c);
    return rc;
}

/* --- send: numbering, stdin and output; the window, the ACK checks and
 * the failover with re-sends are libberth's. */

struct cli_sender {
    struct cli *cli;
    berth_client *c;
    uint64_t next_id;  /* message ids from 1 */
    uint64_t acked;
    char last_node[65]; /* the node of the previous ACK, for the debug trace */
};

static void sender_on_ack(void *arg, const struct berth_ack *a)
{
    struct cli_sender *s = arg;
    char hex[65];
    hex_encode(hex, a->sha256, 32);
    printf("ack id=%" PRIu64 " bytes=%zu sha256=%s node=%s seq=%" PRIu64 "\n", a->message_id,
           a->bytes, hex, a->node_id, a->seq);
    if (strcmp(s->last_node, a->node_id) != 0) {
        if (s->last_node[0])
            log_debug("node_changed", "from=%s to=%s addr=%s first_id=%" PRIu64, s->last_node,
                      a->node_id, a->node_addr, a->message_id);
        snprintf(s->last_node, sizeof(s->last_node), "%s", a->node_id);
    }
    s->acked++;
}

static int sender_collect_all(struct cli_sender *s)
{
    berth_err r = berth_flush(s->c);
    fflush(stdout);
    if (r != BERTH_OK) {
        cli_take_error(s->cli, s->c, r);
        return -1;
    }
    return 0;
}

/* Queues one message (libberth copies data). 0 or -1. */
static int sender_send(struct cli_sender *s, const void *data, size_t len)
{
    berth_err r = berth_send(s->c, s->next_id, data, len);
    if (r == BERTH_OK) {
        s->next_id++;
        return 0;
    }
    cli_take_error(s->cli, s->c, r);
    return -1;
}

/* Reads more of stdin into in. Before blocking, collects the ACKs already
 * due (so an interactive user sees them) and keeps the session alive with
 * PING while the user is quiet. 1 read, 0 end of input, -1 failure. */
static int sender_read_stdin(struct cli_sender *s, struct buf *in)
{
    struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
    int r;
    while ((r = poll(&p, 1, 0)) == 0) {
        if (berth_unacked(s->c) && sender_collect_all(s) != 0)
            return -1;
        fflush(stdout);
        long idle = berth_idle_timeout_ms(s->c);
        int wait_ms = idle >= 2 ? (int)(idle / 2 > 600000 ? 600000 : idle / 2) : 1000;
        r = poll(&p, 1, wait_ms);
        if (r > 0)
            break;
        if (r == 0) {
            double rtt;
            berth_err pr = berth_ping(s->c, &rtt);
            if (pr != BERTH_OK) {
                cli_take_error(s->cli, s->c, pr);
                return -1;
            }
        } else if (errno != EINTR) {
            break;
        }
    }
    if (buf_reserve(in, 65536) != 0) {
        cli_setf(s->cli->err, sizeof(s->cli->err), "out of memory");
        return -1;
    }
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf_tail(in), 65536);
        if (n > 0) {
            buf_commit(in, (size_t)n);
            return 1;
        }
        if (n == 0)
            return 0;
        if (errno == EINTR)
            continue;
        cli_setf(s->cli->err, sizeof(s->cli->err), "reading stdin: %s", strerror(errno));
        return -1;
    }
}

static int send_lines(struct cli_sender *s)
{
    struct buf in;
    buf_init(&in);
    size_t scanned = 0; /* bytes of in already known to hold no newline */
    bool eof = false;
    int rc = -1;
    for (;;) {
        const uint8_t *head = buf_head(&in);
        size_t size = buf_size(&in);
        const uint8_t *nl = size > scanned ? memchr(head + scanned, '\n', size - scanned) : NULL;
        if (nl || (eof && size > 0)) {
            size_t len = nl ? (size_t)(nl - head) : size;
            if (sender_send(s, head, len) != 0)
                goto out;
            buf_consume(&in, nl ? len + 1 : len);
            scanned = 0;
            continue;
        }
        if (eof)
            break;
        scanned = size;
        /* The limit is the current node's: it may change with a failover. */
        size_t limit = berth_max_message(s->c);
        if (size > limit) {
            cli_setf(s->cli->err, sizeof(s->cli->err),
                     "line %" PRIu64 " is longer than the node's limit of %zu bytes per message",
                     s->next_id, limit);
            goto out;
        }
        int r = sender_read_stdin(s, &in);
        if (r < 0)
            goto out;
        if (r == 0)
            eof = true;
    }
    rc = sender_collect_all(s);
out:
    buf_release(&in);
    return rc;
}

/* Reads all of stdin (before connecting, so a slow writer cannot run into
 * the node's idle timeout). 0 or -1 with err. */
static int read_all_stdin(struct buf *in, char *err, size_t errlen)
{
    for (;;) {
        if (buf_size(in) > CLI_WHOLE_MAX) {
            snprintf(err, errlen, "stdin is larger than %u bytes", CLI_WHOLE_MAX);
            return -1;
        }
        if (buf_reserve(in, 65536) != 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        ssize_t n = read(STDIN_FILENO, buf_tail(in), 65536);
        if (n > 0) {
            buf_commit(in, (size_t)n);
        } else if (n == 0) {
            return 0;
        } else if (errno != EINTR) {
            snprintf(err, errlen, "reading stdin: %s", strerror(errno));
            return -1;
        }
    }
}

static int cmd_send(struct cli *cli)
{
    bool whole = config_bool(cli->cfg, "whole");
    struct buf all;
    buf_init(&all);
    if (whole && read_all_stdin(&all, cli->err, sizeof(cli->err)) != 0) {
        buf_release(&all);
        return EXIT_RUNTIME;
    }

    struct cli_sender s = {.cli = cli, .next_id = 1};
    s.c = cli_connect(cli);
    if (!s.c) {
        buf_release(&all);
        return EXIT_RUNTIME;
    }
    berth_set_ack_handler(s.c, sender_on_ack, &s);
    int rc;
    if (whole) {
        /* buf_head is NULL for an empty stdin: send an empty message. */
        static const uint8_t empty[1];
        rc = sender_send(&s, buf_size(&all) ? buf_head(&all) : empty, buf_size(&all));
        if (rc == 0)
            rc = sender_collect_all(&s);
    } else {
        rc = send_lines(&s);
    }
    fflush(stdout);
    buf_release(&all);
    if (rc != 0) {
        char tail[128];
        size_t unacked = berth_unacked(s.c);
        snprintf(tail, sizeof(tail), "; %" PRIu64 " message%s acked, %zu sent without an ACK",
                 s.acked, s.acked == 1 ? "" : "s", unacked);
        size_t used = strlen(cli->err);
        if (used + 1 < sizeof(cli->err))
            snprintf(cli->err + used, sizeof(cli->err) - used, "%s", tail);
    }
    /* Says BYE when nothing is left in flight; the messages left unacked
     * are counted above, and the client frees them. */
    berth_client_free(s.c);
    fflush(stdout);
    return rc != 0 ? EXIT_RUNTIME : 0;
}

/* --- bench */

static void bench_progress_line(void *arg, const struct bench_progress *p)
{
    (void)arg;
    fprintf(stderr, PROGRAM " bench: %5.1f s  %10" PRIu64 " requests  %9.0f/s  %u open  %" PRIu64
            " errors\n", p->elapsed_s, p->requests, p->rate, p->connections, p->errors);
}

static int cmd_bench(struct cli *cli)
{
    char target[LOOKUP_ADDR_MAX + 1];
    if (cli->node_addr) {
        snprintf(target, sizeof(target), "%s", cli->node_addr);
    } else {
        struct lookup_node n;
        if (cli_balancer_pick(cli, &n) != 0)
            return EXIT_RUNTIME;
        snprintf(target, sizeof(target), "%s", n.addr);
    }
    struct bench_options o = {
        .addr = target,
        .ca_file = cli->bo.ca_file,
        .verify = !cli->bo.insecure,
        .name = cli->bo.name,
        .connections = (unsigned)config_int(cli->cfg, "connections"),
        .pipeline = (unsigned)config_int(cli->cfg, "pipeline"),
        .size = (size_t)config_int(cli->cfg, "size"),
        .duration_ms = (long)config_int(cli->cfg, "duration"),
        .timeout_ms = cli->bo.timeout_ms,
        .threads = (unsigned)config_int(cli->cfg, "threads"),
        .progress = bench_progress_line,
    };
    if (bench_mode_parse(config_str(cli->cfg, "mode"), &o.mode) != 0 ||
        bench_exchange_parse(config_str(cli->cfg, "exchange"), &o.exchange) != 0) {
        cli_setf(cli->err, sizeof(cli->err), "bad --mode or --exchange");
        return EXIT_USAGE;
    }
    struct bench_result r;
    if (bench_run(&o, &r, cli->err, sizeof(cli->err)) != 0)
        return EXIT_RUNTIME;
    char *text = config_bool(cli->cfg, "json") ? bench_result_json(&r) : bench_result_text(&r);
    bench_result_release(&r);
    if (!text) {
        cli_setf(cli->err, sizeof(cli->err), "out of memory");
        return EXIT_RUNTIME;
    }
    fputs(text, stdout);
    if (text[0] && text[strlen(text) - 1] != '\n')
        fputc('\n', stdout);
    free(text);
    return 0;
}

/* Splits a comma-separated --balancer into cli->balancers (spaces around
 * each URL are dropped). 0, or -1 with the reason in err. */
static int cli_split_balancers(struct cli *cli, const char *text, char *err, size_t errlen)
{
    cli->balancer_list = strdup(text);
    if (!cli->balancer_list) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char *p = cli->balancer_list;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        while (*p == ' ' || *p == '\t')
            p++;
        size_t len = strlen(p);
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            p[--len] = '\0';
        if (len == 0) {
            snprintf(err, errlen, "empty URL in \"%s\"", text);
            return -1;
        }
        if (cli->nbalancers == CLI_BALANCERS_MAX) {
            snprintf(err, errlen, "more than %d URLs in \"%.200s\"", CLI_BALANCERS_MAX, text);
            return -1;
        }
        cli->balancers[cli->nbalancers++] = p;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

static void usage_hint(void)
{
    fprintf(stderr, "run '" PROGRAM " --help' for usage\n");
}

int main(int argc, char **argv)
{
    char err[CLI_ERR_MAX];
    /* libberth never raises SIGPIPE (it sends with MSG_NOSIGNAL); this is
     * for the CLI's own writes (the feed's sockets in tail, stdout): a
     * reader that goes away must become an error, not a silent death. */
    signal(SIGPIPE, SIG_IGN);
    /* keygen has flags of its own and needs neither libcurl nor a balancer. */
    if (argc > 1 && strcmp(argv[1], "keygen") == 0)
        return cli_keygen_main(argc - 1, argv + 1);
    /* tail too: it speaks to nodes' feeds, not to a balancer. */
    if (argc > 1 && strcmp(argv[1], "tail") == 0)
        return cli_tail_main(argc - 1, argv + 1);
    /* libcurl's global setup, before anything else could start a thread. */
    if (lookup_global_init(err, sizeof(err)) != 0) {
        fprintf(stderr, PROGRAM ": %s\n", err);
        return EXIT_RUNTIME;
    }

    struct cli *cli = calloc(1, sizeof(*cli));
    if (!cli) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        return EXIT_RUNTIME;
    }
    int status = EXIT_USAGE;
    cli->cfg = config_new(PROGRAM, BERTH_VERSION,
                          "the berth client: pick a node, ping it, read its info, send messages",
                          settings, sizeof(settings) / sizeof(settings[0]));
    if (!cli->cfg) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        free(cli);
        return EXIT_RUNTIME;
    }
    switch (config_load(cli->cfg, argc, argv, err, sizeof(err))) {
    case CONFIG_OK:
        break;
    case CONFIG_HELP:
        fputs(commands_help, stdout);
        config_usage(cli->cfg, stdout);
        status = 0;
        goto out;
    case CONFIG_VERSION:
        config_version_line(cli->cfg, stdout);
        status = 0;
        goto out;
    case CONFIG_ERROR:
    default:
        fprintf(stderr, PROGRAM ": %s\n", err);
        usage_hint();
        goto out;
    }

    if (config_npositional(cli->cfg) == 0) {
        fprintf(stderr, PROGRAM ": no command given (pick, ping, info, send, bench or health)\n");
        usage_hint();
        goto out;
    }
    const char *cmd = config_positional(cli->cfg, 0);
    if (strcmp(cmd, "help") == 0) {
        fputs(commands_help, stdout);
        config_usage(cli->cfg, stdout);
        status = 0;
        goto out;
    }
    static const struct {
        const char *name;
        int (*run)(struct cli *);
    } commands[] = {
        {"pick", cmd_pick},   {"ping", cmd_ping}, {"info", cmd_info},
        {"send", cmd_send},   {"bench", cmd_bench}, {"health", cmd_health},
    };
    int (*run)(struct cli *) = NULL;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            run = commands[i].run;
    if (!run) {
        fprintf(stderr, PROGRAM ": unknown command \"%s\" (pick, ping, info, send, bench or health)\n", cmd);
        usage_hint();
        goto out;
    }
    if (config_npositional(cli->cfg) > 1) {
        fprintf(stderr, PROGRAM ": unexpected argument \"%s\"\n", config_positional(cli->cfg, 1));
        usage_hint();
        goto out;
    }

    enum log_level level;
    if (log_level_parse(config_str(cli->cfg, "log-level"), &level) != 0) {
        fprintf(stderr, PROGRAM ": --log-level: bad value \"%s\"\n",
                config_str(cli->cfg, "log-level"));
        goto out;
    }
    log_setup(level, "cli", NULL);

    const char *node = config_str(cli->cfg, "node");
    cli->node_addr = node[0] ? node : NULL;
    if (cli->node_addr) {
        struct addr a;
        if (addr_parse(cli->node_addr, false, &a, err, sizeof(err)) != 0) {
            fprintf(stderr, PROGRAM ": --node: %s\n", err);
            goto out;
        }
        if (run == cmd_pick || run == cmd_health) {
            fprintf(stderr, PROGRAM ": %s asks the balancer; it takes no --node\n", cmd);
            goto out;
        }
    }
    const char *key = config_str(cli->cfg, "affinity");
    cli->key = key[0] ? key : NULL;
    long timeout_ms = (long)config_int(cli->cfg, "timeout");
    const char *name = config_str(cli->cfg, "name");
    if (name[0] == '\0' || strlen(name) > FRAME_NAME_MAX) {
        fprintf(stderr, PROGRAM ": --name: must be 1..%d bytes\n", FRAME_NAME_MAX);
        goto out;
    }
    bool insecure = config_bool(cli->cfg, "insecure");
    berth_options_init(&cli->bo);
    cli->bo.ca_file = config_str(cli->cfg, "ca");
    cli->bo.insecure = insecure;
    cli->bo.name = name;
    cli->bo.timeout_ms = timeout_ms;
    cli->bo.max_retries = (unsigned)config_int(cli->cfg, "retries");
    cli->bo.key = cli->key;
    cli->bo.node = cli->node_addr;
    cli->bo.no_reports = config_bool(cli->cfg, "no-reports");
    cli->bo.cert_file = config_str(cli->cfg, "cert");
    cli->bo.key_file = config_str(cli->cfg, "key");
    cli->bo.cache_ttl_ms = (long)config_int(cli->cfg, "cache-ttl");
    const char *producer = config_str(cli->cfg, "producer-id");
    if (producer && producer[0]) {
        if (!hb_node_id_valid(producer)) {
            fprintf(stderr, PROGRAM ": --producer-id \"%s\": must match [A-Za-z0-9._-]{1,64}\n",
                    producer);
            goto out;
        }
        cli->bo.producer_id = producer;
    }
    if (!cli->node_addr) {
        if (cli_split_balancers(cli, config_str(cli->cfg, "balancer"), err, sizeof(err)) != 0) {
            fprintf(stderr, PROGRAM ": --balancer: %s\n", err);
            goto out;
        }
        for (size_t i = 0; i < cli->nbalancers; i++) {
            cli->lookups[i] = lookup_new(cli->balancers[i], timeout_ms, err, sizeof(err));
            if (!cli->lookups[i]) {
                fprintf(stderr, PROGRAM ": --balancer: %s\n", err);
                goto out;
            }
            if (lookup_set_ca_file(cli->lookups[i], config_str(cli->cfg, "ca")) != 0) {
                fprintf(stderr, PROGRAM ": out of memory\n");
                goto out;
            }
        }
        cli->bo.balancers = cli->balancers;
        cli->bo.nbalancers = cli->nbalancers;
    }
    if (insecure && run != cmd_pick && run != cmd_health)
        fprintf(stderr, PROGRAM ": warning: --insecure: the node's certificate is not verified\n");

    status = run(cli);
    if (status != 0)
        fprintf(stderr, PROGRAM ": %s\n", cli->err);

out:
    fflush(stdout);
    for (size_t i = 0; i < cli->nbalancers; i++)
        lookup_free(cli->lookups[i]);
    free(cli->balancer_list);
    config_free(cli->cfg);
    free(cli);
    return status;
}
