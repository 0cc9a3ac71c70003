/* fuzz_config: libFuzzer target for the configuration parser: config_load
 * over an argv (and at most one BERTH_* variable) built from the input,
 * against a table holding every setting type, then every getter. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define FUZZ_MAX_ARGS 64

static const struct config_setting fuzz_table[] = {
    {"name", CONFIG_STRING, NULL, 0, 0, NULL, "a string without default"},
    {"listen", CONFIG_STRING, "127.0.0.1:7443", 0, 0, NULL, "a string with a default"},
    {"count", CONFIG_INT, "3", 1, 100, NULL, "a bounded integer"},
    {"any-int", CONFIG_INT, "0", 0, 0, NULL, "an unbounded integer"},
    {"neg", CONFIG_INT, "-5", -1000000000000ll, 1000000000000ll, NULL, "negative bounds"},
    {"verbose", CONFIG_BOOL, "false", 0, 0, NULL, "a boolean"},
    {"off", CONFIG_BOOL, NULL, 0, 0, NULL, "a boolean without default"},
    {"interval", CONFIG_DURATION, "250ms", 10, 60000, NULL, "a bounded duration"},
    {"forever", CONFIG_DURATION, "1h", 0, 0, NULL, "an unbounded duration"},
    {"max-frame", CONFIG_SIZE, "1MiB", 1024, 256ll << 20, NULL, "a bounded size"},
    {"huge", CONFIG_SIZE, "0", 0, 0, NULL, "an unbounded size"},
    {"policy", CONFIG_ENUM, "least-loaded", 0, 0, "least-loaded|round-robin|x", "a choice"},
    {"level", CONFIG_ENUM, "info", 0, 0, "debug|info||warn|", "a choice list with empty items"},
};
#define FUZZ_NSETTINGS (sizeof(fuzz_table) / sizeof(fuzz_table[0]))

static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* The environment is part of the input: start from none of ours. */
    for (size_t i = 0; i < FUZZ_NSETTINGS; i++) {
        char env[128] = "BERTH_";
        size_t j = 6;
        for (const char *p = fuzz_table[i].name; *p && j + 1 < sizeof env; p++)
            env[j++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
        env[j] = '\0';
        unsetenv(env);
    }
    devnull = fopen("/dev/null", "w");
    return 0;
}

/* Input: words separated by NUL bytes. A first word "BERTH_X=value" is put
 * in the environment for this run; the rest are argv[1..]. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';

    char *argv[FUZZ_MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = "fuzz";
    char *envname = NULL;
    char *p = copy, *end = copy + size;
    bool first = true;
    while (p < end && argc <= FUZZ_MAX_ARGS) {
        size_t n = strlen(p);
        if (first && strncmp(p, "BERTH_", 6) == 0 && strchr(p, '=')) {
            char *eq = strchr(p, '=');
            *eq = '\0';
            if (setenv(p, eq + 1, 1) == 0)
                envname = p;
        } else {
            argv[argc++] = p;
        }
        first = false;
        p += n + 1;
    }
    argv[argc] = NULL;

    struct config *c = config_new("fuzz", "0", "fuzz target", fuzz_table, FUZZ_NSETTINGS);
    if (!c)
        abort();
    char err[256];
    err[0] = '\0';
    enum config_result r = config_load(c, argc, argv, err, sizeof err);
    if (r == CONFIG_ERROR && err[0] == '\0') /* an error always says why */
        abort();
    if (r == CONFIG_OK) {
        for (size_t i = 0; i < FUZZ_NSETTINGS; i++) {
            const struct config_setting *s = &fuzz_table[i];
            (void)config_str(c, s->name);
            switch (s->type) {
            case CONFIG_INT:
            case CONFIG_DURATION:
            case CONFIG_SIZE: {
                long long v = config_int(c, s->name);
                if ((s->min != 0 || s->max != 0) && (v < s->min || v > s->max))
                    abort(); /* a value outside its bounds got through */
                break;
            }
            case CONFIG_BOOL:
                (void)config_bool(c, s->name);
                break;
            case CONFIG_STRING:
            case CONFIG_ENUM:
            default:
                break;
            }
        }
        for (size_t i = 0; i < config_npositional(c); i++)
            if (!config_positional(c, i))
                abort();
    }
    if (devnull) {
        config_usage(c, devnull);
        config_version_line(c, devnull);
    }
    config_free(c);
    if (envname)
        unsetenv(envname);
    free(copy);
    return 0;
}
