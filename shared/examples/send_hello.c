/* send_hello: the smallest libberth program. Sends each argument as one
 * message through the cluster the balancer knows, waits for every ACK and
 * prints it. Build: cc send_hello.c $(pkg-config --cflags --libs berth)
 *   ./send_hello [--balancer URL] [--ca FILE] message... */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <berth/berth.h>

static void on_ack(void *arg, const struct berth_ack *a)
{
    (void)arg;
    printf("ack id=%" PRIu64 " sha256=", a->message_id);
    for (int i = 0; i < 32; i++)
        printf("%02x", a->sha256[i]);
    printf(" node=%s seq=%" PRIu64 "\n", a->node_id, a->seq);
}

int main(int argc, char **argv)
{
    struct berth_options o;
    berth_options_init(&o);
    const char *balancer[1];
    int i = 1;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--balancer") == 0) {
            balancer[0] = argv[i + 1];
            o.balancers = balancer;
            o.nbalancers = 1;
        } else if (strcmp(argv[i], "--ca") == 0) {
            o.ca_file = argv[i + 1];
        }
    }
    o.max_retries = 2;
    o.timeout_ms = 2000;
    berth_client *c = NULL;
    berth_err r = berth_client_new(&o, &c);
    if (r != BERTH_OK) {
        fprintf(stderr, "send_hello: %s\n", berth_strerror(r));
        return 1;
    }
    berth_set_ack_handler(c, on_ack, NULL);
    for (uint64_t id = 1; r == BERTH_OK && i < argc; i++, id++)
        r = berth_send(c, id, argv[i], strlen(argv[i]));
    if (r == BERTH_OK)
        r = berth_flush(c);
    if (r != BERTH_OK)
        fprintf(stderr, "send_hello: %s: %s\n", berth_strerror(r), berth_error(c));
    berth_client_free(c);
    return r == BERTH_OK ? 0 : 1;
}
