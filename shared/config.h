/* config: one declarative table of settings per program; flags
 * (--name value, --name=value) and BERTH_NAME environment variables
 * override the defaults; everything is validated once, at start. */
#ifndef BERTH_CONFIG_H
#define BERTH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum config_type {
    CONFIG_STRING,
    CONFIG_INT,      /* decimal integer within [min, max] */
    CONFIG_BOOL,     /* "--flag" alone means true; true/false/1/0/yes/no */
    CONFIG_DURATION, /* "250ms", "2s", "1m", or bare milliseconds; stored as ms */
    CONFIG_SIZE,     /* "1MiB", "64KiB", "512", or bare bytes; stored as bytes */
    CONFIG_ENUM,     /* one of choices, "a|b|c" */
};

struct config_setting {
    const char *name;    /* flag without "--": "heartbeat-interval"; env BERTH_HEARTBEAT_INTERVAL */
    enum config_type type;
    const char *def;     /* default, written as a user would; NULL = empty string / 0 */
    long long min, max;  /* bounds for INT, DURATION, SIZE (both 0: no bounds) */
    const char *choices; /* CONFIG_ENUM only */
    const char *help;
};

struct config;

/* Borrows the table (static storage expected). NULL on out of memory. */
struct config *config_new(const char *program, const char *version, const char *summary,
                          const struct config_setting *table, size_t n);
void config_free(struct config *c);

enum config_result {
    CONFIG_OK,
    CONFIG_HELP,    /* --help seen: caller prints config_usage and exits 0 */
    CONFIG_VERSION, /* --version seen: caller prints config_version_line, exits 0 */
    CONFIG_ERROR,   /* err names the setting and the bad value */
};

/* Reads the environment first, then argv (argv wins). Arguments that are not
 * flags are kept in order as positionals; "--" ends flag parsing. */
enum config_result config_load(struct config *c, int argc, char **argv, char *err, size_t errlen);

void config_usage(const struct config *c, FILE *out);
void config_version_line(const struct config *c, FILE *out);

/* Getters by setting name; asking for a name not in the table is a
 * programming error (assert). Strings are borrowed from c. */
const char *config_str(const struct config *c, const char *name);
long long config_int(const struct config *c, const char *name); /* INT, DURATION, SIZE */
bool config_bool(const struct config *c, const char *name);

size_t config_npositional(const struct config *c);
const char *config_positional(const struct config *c, size_t i);

#endif
