/* send_lines: a libberth program written from berth.h alone, streaming.
 * Each line of stdin (without its newline) becomes one message, ids from 1;
 * each ACK is printed as it is collected; at the end of input it waits for
 * the last ones. Nothing here touches signals: libberth never raises
 * SIGPIPE, so a node that dies mid-stream is a failover, not our death.
 * Build: cc send_lines.c $(pkg-config --cflags --libs berth)
 *   ./send_lines [--balancer URL] [--ca FILE] [--timeout-ms N] < lines */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <berth/berth.h>

static void on_ack(void *arg, const struct berth_ack *a)
{
    (void)arg;
    printf("ack id=%" PRIu64 " bytes=%zu node=%s seq=%" PRIu64 "\n", a->message_id, a->bytes,
           a->node_id, a->seq);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct berth_options o;
    berth_options_init(&o);
    const char *balancer[1];
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--balancer") == 0) {
            balancer[0] = argv[i + 1];
            o.balancers = balancer;
            o.nbalancers = 1;
        } else if (strcmp(argv[i], "--ca") == 0) {
            o.ca_file = argv[i + 1];
        } else if (strcmp(argv[i], "--timeout-ms") == 0) {
            o.timeout_ms = strtol(argv[i + 1], NULL, 10);
        } else {
            fprintf(stderr, "send_lines: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    berth_client *c = NULL;
    berth_err r = berth_client_new(&o, &c);
    if (r != BERTH_OK) {
        fprintf(stderr, "send_lines: %s\n", berth_strerror(r));
        return 1;
    }
    berth_set_ack_handler(c, on_ack, NULL);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    uint64_t id = 1;
    while (r == BERTH_OK && (n = getline(&line, &cap, stdin)) >= 0) {
        if (n > 0 && line[n - 1] == '\n')
            n--;
        /* BERTH_OK means queued: it will be re-sent until acknowledged. */
        r = berth_send(c, id, line, (size_t)n);
        if (r == BERTH_OK)
            id++;
    }
    free(line);
    if (r == BERTH_OK)
        r = berth_flush(c);
    if (r != BERTH_OK)
        fprintf(stderr, "send_lines: message %" PRIu64 ": %s: %s\n", id, berth_strerror(r),
                berth_error(c));
    else
        printf("done sent=%" PRIu64 " failovers=%lu\n", id - 1, berth_failovers(c));
    berth_client_free(c);
    return r == BERTH_OK ? 0 : 1;
}
