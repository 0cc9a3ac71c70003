/* keygen: `berth keygen`, writing a CurveZMQ key pair for the heartbeat
 * channel (NAME.key, secret, 0600; NAME.pub, public). */
#ifndef BERTH_CLI_KEYGEN_H
#define BERTH_CLI_KEYGEN_H

/* argv[0] is "keygen"; takes its own flags (berth keygen --help). Returns
 * the exit status: 0 written, 1 failure, 2 usage. */
int cli_keygen_main(int argc, char **argv);

#endif
