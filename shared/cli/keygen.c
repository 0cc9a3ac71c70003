/* keygen: `berth keygen --out DIR/NAME [--force]`: a new key pair for the
 * heartbeat channel, written with keys_write_pair; prints the public key. */
#include "keygen.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "config.h"
#include "keys.h"

#define KEYGEN_PROGRAM "berth keygen"
#define KEYGEN_EXIT_FAILURE 1
#define KEYGEN_EXIT_USAGE 2

static const struct config_setting keygen_settings[] = {
    {"out", CONFIG_STRING, NULL, 0, 0, NULL,
     "where to write: DIR/NAME makes DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub "
     "(public); required"},
    {"force", CONFIG_BOOL, "false", 0, 0, NULL, "replace existing NAME.key and NAME.pub"},
};

int cli_keygen_main(int argc, char **argv)
{
    char err[512];
    struct config *cfg = config_new(KEYGEN_PROGRAM, BERTH_VERSION,
                                    "writes a CurveZMQ key pair for a balancer or a node "
                                    "(Z85 text, one key per file)",
                                    keygen_settings,
                                    sizeof(keygen_settings) / sizeof(keygen_settings[0]));
    if (!cfg) {
        fprintf(stderr, KEYGEN_PROGRAM ": out of memory\n");
        return KEYGEN_EXIT_FAILURE;
    }
    int status = KEYGEN_EXIT_USAGE;
    switch (config_load(cfg, argc, argv, err, sizeof(err))) {
    case CONFIG_OK:
        break;
    case CONFIG_HELP:
        config_usage(cfg, stdout);
        status = 0;
        goto out;
    case CONFIG_VERSION:
        config_version_line(cfg, stdout);
        status = 0;
        goto out;
    case CONFIG_ERROR:
    default:
        fprintf(stderr, KEYGEN_PROGRAM ": %s\n", err);
        goto out;
    }
    if (config_npositional(cfg) > 0) {
        fprintf(stderr, KEYGEN_PROGRAM ": unexpected argument \"%s\"\n",
                config_positional(cfg, 0));
        goto out;
    }
    const char *base = config_str(cfg, "out");
    if (!base || !*base) {
        fprintf(stderr, KEYGEN_PROGRAM ": --out DIR/NAME is required (writes NAME.key and "
                        "NAME.pub)\n");
        goto out;
    }
    struct keys_pair kp;
    status = KEYGEN_EXIT_FAILURE;
    if (keys_generate(&kp, err, sizeof(err)) != 0 ||
        keys_write_pair(base, &kp, config_bool(cfg, "force"), err, sizeof(err)) != 0) {
        fprintf(stderr, KEYGEN_PROGRAM ": %s\n", err);
    } else {
        char pub[KEYS_Z85_LEN + 1];
        keys_encode(kp.public_key, pub);
        printf("wrote %s.key (secret) and %s.pub (public key %s)\n", base, base, pub);
        status = 0;
    }
    OPENSSL_cleanse(&kp, sizeof(kp));
out:
    config_free(cfg);
    return status;
}
