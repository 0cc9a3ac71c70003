/* tail: `berth tail`, a consumer of nodes' journal feeds (node/feed.h):
 * subscribes from a sequence number on one or more nodes and prints each
 * record as a line, or writes the records to a file. */
#ifndef BERTH_CLI_TAIL_H
#define BERTH_CLI_TAIL_H

/* argv[0] is "tail"; takes its own flags (berth tail --help). Returns the
 * exit status: 0 done, 1 failure, 2 usage. */
int cli_tail_main(int argc, char **argv);

#endif
