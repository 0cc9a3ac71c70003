/* tail: `berth tail`, a consumer of nodes' journal feeds (node/feed.h):
 * subscribes from a sequence number on one or more nodes and prints each
 * record as a line, or writes the records to a file. */
#ifndef BERTH_CLI_TAIL_H
#define BERTH_CLI_TAIL_H

#include <stdio.h>

#include "config.h"
#include "journal_record.h"

/* argv[0] is "tail"; takes its own flags (berth tail --help). Returns the
 * exit status: 0 done, 1 failure, 2 usage. */
int cli_tail_main(int argc, char **argv);

/* One record as a line: seq= node= client= peer= [cert= cert_sha256=] id=
 * ts= bytes= data="..." (data escaped). Both readers print through it. */
void tail_print_record(FILE *out, const char *node, const struct journal_record *r);

/* The JetStream reader (tail_jetstream.c): --jetstream, --stream,
 * --durable, --from, --count, --duration from cfg. Returns the exit status. */
int tail_jetstream_run(struct config *cfg);

#endif
