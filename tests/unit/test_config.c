/* Unit tests for shared/config.c: defaults, environment, argv and their
 * precedence; every value type; every error path; help and version text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static const struct config_setting table[] = {
    {"name", CONFIG_STRING, NULL, 0, 0, NULL, "a name"},
    {"listen", CONFIG_STRING, "127.0.0.1:7443", 0, 0, NULL, "listen address"},
    {"fall", CONFIG_INT, "3", 1, 100, NULL, "silent intervals before down"},
    {"offset", CONFIG_INT, "-5", 0, 0, NULL, "unbounded integer"},
    {"interval", CONFIG_DURATION, "250ms", 10, 60000, NULL, "heartbeat interval"},
    {"forget-after", CONFIG_DURATION, "1m", 0, 0, NULL, "forget after"},
    {"max-frame", CONFIG_SIZE, "1MiB", 1024, 256ll << 20, NULL, "largest frame"},
    {"buffer", CONFIG_SIZE, "64KiB", 0, 0, NULL, "buffer size"},
    {"policy", CONFIG_ENUM, "least-loaded", 0, 0, "least-loaded|round-robin", "pick policy"},
    {"insecure", CONFIG_BOOL, "false", 0, 0, NULL, "skip verification"},
    {"debug-hooks", CONFIG_BOOL, NULL, 0, 0, NULL, "test hooks"},
};
#define NTABLE (sizeof(table) / sizeof(table[0]))

static const char *const env_names[] = {
    "BERTH_NAME", "BERTH_LISTEN", "BERTH_FALL", "BERTH_OFFSET", "BERTH_INTERVAL",
    "BERTH_FORGET_AFTER", "BERTH_MAX_FRAME", "BERTH_BUFFER", "BERTH_POLICY",
    "BERTH_INSECURE", "BERTH_DEBUG_HOOKS",
};

static int clear_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
        unsetenv(env_names[i]);
    return 0;
}

static struct config *new_config(void)
{
    struct config *c = config_new("prog", "1.2.3", "a test program", table, NTABLE);
    assert_non_null(c);
    return c;
}

/* Loads argv (NULL-terminated list after argv[0]) and returns the result. */
static enum config_result load(struct config *c, char *err, size_t errlen, ...)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "prog";
    va_list ap;
    va_start(ap, errlen);
    char *a;
    while ((a = va_arg(ap, char *)) != NULL) {
        assert_true(argc < 31);
        argv[argc++] = a;
    }
    va_end(ap);
    argv[argc] = NULL;
    err[0] = '\0';
    return config_load(c, argc, argv, err, errlen);
}

/* Expects CONFIG_ERROR with exactly want as the message. */
static void expect_error(const char *want, ...)
{
    struct config *c = new_config();
    char *argv[32];
    int argc = 0;
    argv[argc++] = "prog";
    va_list ap;
    va_start(ap, want);
    char *a;
    while ((a = va_arg(ap, char *)) != NULL)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    char err[256] = "";
    enum config_result r = config_load(c, argc, argv, err, sizeof(err));
    if (r != CONFIG_ERROR || strcmp(err, want) != 0)
        fail_msg("got %d \"%s\", want error \"%s\"", r, err, want);
    config_free(c);
}

static void test_defaults(void **state)
{
    (void)state;
    struct config *c = new_config();
    char err[256];
    assert_int_equal(load(c, err, sizeof(err), NULL), CONFIG_OK);
    assert_string_equal(config_str(c, "name"), "");
    assert_string_equal(config_str(c, "listen"), "127.0.0.1:7443");
    assert_int_equal(config_int(c, "fall"), 3);
    assert_int_equal(config_int(c, "offset"), -5);
    assert_int_equal(config_int(c, "interval"), 250);
    assert_int_equal(config_int(c, "forget-after"), 60000);
    assert_int_equal(config_int(c, "max-frame"), 1 << 20);
    assert_int_equal(config_int(c, "buffer"), 64 << 10);
    assert_string_equal(config_str(c, "policy"), "least-loaded");
    assert_false(config_bool(c, "insecure"));
    assert_false(config_bool(c, "debug-hooks"));
    assert_int_equal(config_npositional(c), 0);
    config_free(c);
    config_free(NULL);
}

static void test_argv_forms(void **state)
{
    (void)state;
    struct config *c = new_config();
    char err[256];
    assert_int_equal(load(c, err, sizeof(err), "--name", "alpha", "--fall=7", "--interval", "2s",
                          "--max-frame=64KiB", "--policy", "round-robin", "--insecure",
                          "--debug-hooks=yes", "--offset", "-42", NULL),
                     CONFIG_OK);
    assert_string_equal(config_str(c, "name"), "alpha");
    assert_int_equal(config_int(c, "fall"), 7);
    assert_int_equal(config_int(c, "interval"), 2000);
    assert_int_equal(config_int(c, "max-frame"), 64 << 10);
    assert_string_equal(config_str(c, "policy"), "round-robin");
    assert_true(config_bool(c, "insecure"));
    assert_true(config_bool(c, "debug-hooks"));
    assert_int_equal(config_int(c, "offset"), -42);

    /* Reloading starts from the defaults again; the last repeat wins. */
    assert_int_equal(load(c, err, sizeof(err), "--fall", "4", "--fall", "5", "--insecure=false",
                          "--name=", NULL),
                     CONFIG_OK);
    assert_int_equal(config_int(c, "fall"), 5);
    assert_false(config_bool(c, "insecure"));
    assert_string_equal(config_str(c, "name"), "");
    assert_int_equal(config_int(c, "interval"), 250);
    config_free(c);
}

static void test_bool_spellings(void **state)
{
    (void)state;
    static const char *const on[] = {"true", "TRUE", "1", "yes", "on"};
    static const char *const off[] = {"false", "False", "0", "no", "off"};
    char arg[64], err[256];
    struct config *c = new_config();
    for (size_t i = 0; i < 5; i++) {
        snprintf(arg, sizeof(arg), "--insecure=%s", on[i]);
        assert_int_equal(load(c, err, sizeof(err), arg, NULL), CONFIG_OK);
        assert_true(config_bool(c, "insecure"));
        snprintf(arg, sizeof(arg), "--insecure=%s", off[i]);
        assert_int_equal(load(c, err, sizeof(err), "--insecure", arg, NULL), CONFIG_OK);
        assert_false(config_bool(c, "insecure"));
    }
    /* A boolean alone does not swallow the next word. */
    assert_int_equal(load(c, err, sizeof(err), "--insecure", "false", NULL), CONFIG_OK);
    assert_true(config_bool(c, "insecure"));
    assert_int_equal(config_npositional(c), 1);
    assert_string_equal(config_positional(c, 0), "false");
    config_free(c);
}

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        long long ms;
    } ok[] = {
        {"250ms", 250}, {"2s", 2000}, {"1.5s", 1500}, {"1m", 60000}, {"1h", 3600000},
        {"100", 100},   {"0.25s", 250}, {"10MS", 10}, {"0", 0}, {"1.5m", 90000},
        {"0.001s", 1}, {"2.50s", 2500},
    };
    struct config *c = new_config();
    char arg[64], err[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(arg, sizeof(arg), "--forget-after=%s", ok[i].text);
        if (load(c, err, sizeof(err), arg, NULL) != CONFIG_OK)
            fail_msg("%s: %s", arg, err);
        assert_int_equal(config_int(c, "forget-after"), ok[i].ms);
        assert_string_equal(config_str(c, "forget-after"), ok[i].text);
    }
    static const char *const bad[] = {"", "s", "1x", "1.5ms", "-1s", "1.s", ".5s", " 1s",
                                      "1s ", "1 s", "0x10", "1e3", "1ss", "1.0001s"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(arg, sizeof(arg), "--forget-after=%s", bad[i]);
        assert_int_equal(load(c, err, sizeof(err), arg, NULL), CONFIG_ERROR);
        assert_non_null(strstr(err, "is not a duration"));
        assert_non_null(strstr(err, "--forget-after"));
    }
    assert_int_equal(load(c, err, sizeof(err), "--forget-after", "99999999999999999999h", NULL),
                     CONFIG_ERROR);
    assert_string_equal(err, "--forget-after: 99999999999999999999h is out of range");
    assert_int_equal(load(c, err, sizeof(err), "--forget-after", "9223372036854775807h", NULL),
                     CONFIG_ERROR);
    assert_non_null(strstr(err, "out of range"));
    config_free(c);
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        long long bytes;
    } ok[] = {
        {"512", 512},           {"64KiB", 64 << 10}, {"1MiB", 1 << 20}, {"1GiB", 1ll << 30},
        {"1M", 1 << 20},        {"1K", 1024},        {"1k", 1024},      {"2MB", 2 << 20},
        {"0.5MiB", 512 << 10},  {"10B", 10},         {"1mib", 1 << 20},
    };
    struct config *c = new_config();
    char arg[64], err[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(arg, sizeof(arg), "--buffer=%s", ok[i].text);
        if (load(c, err, sizeof(err), arg, NULL) != CONFIG_OK)
            fail_msg("%s: %s", arg, err);
        assert_int_equal(config_int(c, "buffer"), ok[i].bytes);
    }
    static const char *const bad[] = {"", "MiB", "12parsecs", "1.5", "-1", "1 MiB", "1Mi",
                                      "1.0000001KiB"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(arg, sizeof(arg), "--buffer=%s", bad[i]);
        assert_int_equal(load(c, err, sizeof(err), arg, NULL), CONFIG_ERROR);
        if (!strstr(err, "is not a size") || !strstr(err, "--buffer"))
            fail_msg("%s: unexpected message %s", arg, err);
    }
    config_free(c);
}

static void test_env_and_precedence(void **state)
{
    (void)state;
    struct config *c = new_config();
    char err[256];
    setenv("BERTH_FALL", "9", 1);
    setenv("BERTH_FORGET_AFTER", "2m", 1);
    setenv("BERTH_INSECURE", "yes", 1);
    setenv("BERTH_POLICY", "round-robin", 1);
    setenv("BERTH_NAME", "", 1); /* empty counts as unset */
    assert_int_equal(load(c, err, sizeof(err), NULL), CONFIG_OK);
    assert_int_equal(config_int(c, "fall"), 9);
    assert_int_equal(config_int(c, "forget-after"), 120000);
    assert_true(config_bool(c, "insecure"));
    assert_string_equal(config_str(c, "policy"), "round-robin");
    assert_string_equal(config_str(c, "name"), "");
    assert_int_equal(config_int(c, "interval"), 250); /* untouched default */

    /* argv wins over the environment. */
    assert_int_equal(load(c, err, sizeof(err), "--fall", "2", "--insecure=false", NULL), CONFIG_OK);
    assert_int_equal(config_int(c, "fall"), 2);
    assert_false(config_bool(c, "insecure"));
    assert_int_equal(config_int(c, "forget-after"), 120000);
    config_free(c);
    clear_env(NULL);
}

static void test_env_errors(void **state)
{
    (void)state;
    struct config *c = new_config();
    char err[256];
    setenv("BERTH_FALL", "0", 1);
    assert_int_equal(load(c, err, sizeof(err), NULL), CONFIG_ERROR);
    assert_string_equal(err, "BERTH_FALL (environment, --fall): 0 is below the minimum 1");
    /* A bad environment value fails even when argv would override it:
     * the environment is validated as the layer it is. */
    assert_int_equal(load(c, err, sizeof(err), "--fall", "3", NULL), CONFIG_ERROR);
    unsetenv("BERTH_FALL");
    setenv("BERTH_INTERVAL", "soon", 1);
    assert_int_equal(load(c, err, sizeof(err), NULL), CONFIG_ERROR);
    assert_non_null(strstr(err, "BERTH_INTERVAL (environment, --interval): \"soon\" is not a "
                                "duration"));
    unsetenv("BERTH_INTERVAL");
    setenv("BERTH_POLICY", "random", 1);
    assert_int_equal(load(c, err, sizeof(err), NULL), CONFIG_ERROR);
    assert_string_equal(err, "BERTH_POLICY (environment, --policy): \"random\" is not one of "
                             "least-loaded|round-robin");
    unsetenv("BERTH_POLICY");
    setenv("BERTH_DEBUG_HOOKS", "maybe", 1);
    assert_int_equal(load(c, err, sizeof(err), NULL), CONFIG_ERROR);
    assert_non_null(strstr(err, "BERTH_DEBUG_HOOKS (environment, --debug-hooks): \"maybe\" is "
                                "not a boolean"));
    config_free(c);
    clear_env(NULL);
}

static void test_argv_errors(void **state)
{
    (void)state;
    expect_error("--fall: \"abc\" is not an integer", "--fall", "abc", NULL);
    expect_error("--fall: \"\" is not an integer", "--fall=", NULL);
    expect_error("--fall: \" 5\" is not an integer", "--fall", " 5", NULL);
    expect_error("--fall: \"5 \" is not an integer", "--fall", "5 ", NULL);
    expect_error("--fall: \"0x10\" is not an integer", "--fall", "0x10", NULL);
    expect_error("--fall: -3 is below the minimum 1", "--fall", "-3", NULL);
    expect_error("--fall: 101 is above the maximum 100", "--fall", "101", NULL);
    expect_error("--offset: 99999999999999999999 is out of range", "--offset",
                 "99999999999999999999", NULL);
    expect_error("--interval: 5ms is below the minimum 10ms", "--interval", "5ms", NULL);
    expect_error("--interval: 2m is above the maximum 1m", "--interval", "2m", NULL);
    expect_error("--max-frame: 512 is below the minimum 1KiB", "--max-frame", "512", NULL);
    expect_error("--max-frame: 1GiB is above the maximum 256MiB", "--max-frame", "1GiB", NULL);
    expect_error("--policy: \"nonsense\" is not one of least-loaded|round-robin", "--policy",
                 "nonsense", NULL);
    expect_error("--policy: \"least\" is not one of least-loaded|round-robin", "--policy",
                 "least", NULL);
    expect_error("--policy: \"\" is not one of least-loaded|round-robin", "--policy=", NULL);
    expect_error("--insecure: \"maybe\" is not a boolean (true/false, yes/no, 1/0)",
                 "--insecure=maybe", NULL);
    expect_error("unknown option --foo (see --help)", "--foo", NULL);
    expect_error("unknown option --foo (see --help)", "--foo=1", NULL);
    expect_error("unknown option --no-such-flag (see --help)", "--no-such-flag", "1", NULL);
    expect_error("unknown option -x (see --help)", "-x", NULL);
    expect_error("unknown option --fal (see --help)", "--fal", "3", NULL);
    expect_error("--fall needs a value (see --help)", "--fall", NULL);
    expect_error("--name needs a value (see --help)", "pick", "--name", NULL);
}

static void test_positionals(void **state)
{
    (void)state;
    struct config *c = new_config();
    char err[256];
    assert_int_equal(load(c, err, sizeof(err), "send", "--fall", "4", "hello", "-", "--",
                          "--fall", "-x", NULL),
                     CONFIG_OK);
    assert_int_equal(config_int(c, "fall"), 4);
    assert_int_equal(config_npositional(c), 5);
    assert_string_equal(config_positional(c, 0), "send");
    assert_string_equal(config_positional(c, 1), "hello");
    assert_string_equal(config_positional(c, 2), "-");
    assert_string_equal(config_positional(c, 3), "--fall");
    assert_string_equal(config_positional(c, 4), "-x");
    /* Reloading drops the old positionals. */
    assert_int_equal(load(c, err, sizeof(err), "one", NULL), CONFIG_OK);
    assert_int_equal(config_npositional(c), 1);
    assert_string_equal(config_positional(c, 0), "one");
    config_free(c);
}

static void test_help_version(void **state)
{
    (void)state;
    struct config *c = new_config();
    char err[256];
    assert_int_equal(load(c, err, sizeof(err), "--help", NULL), CONFIG_HELP);
    assert_int_equal(load(c, err, sizeof(err), "-h", NULL), CONFIG_HELP);
    assert_int_equal(load(c, err, sizeof(err), "--fall", "2", "--help", NULL), CONFIG_HELP);
    assert_int_equal(load(c, err, sizeof(err), "--version", NULL), CONFIG_VERSION);
    /* After "--" they are plain words. */
    assert_int_equal(load(c, err, sizeof(err), "--", "--help", NULL), CONFIG_OK);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    config_usage(c, f);
    assert_int_equal(fclose(f), 0);
    assert_non_null(strstr(text, "prog 1.2.3: a test program"));
    assert_non_null(strstr(text, "usage: prog"));
    assert_non_null(strstr(text, "--help"));
    assert_non_null(strstr(text, "--version"));
    for (size_t i = 0; i < NTABLE; i++) {
        char flag[64];
        snprintf(flag, sizeof(flag), "--%s", table[i].name);
        if (!strstr(text, flag) || !strstr(text, env_names[i]) || !strstr(text, table[i].help))
            fail_msg("help lacks %s / %s / %s:\n%s", flag, env_names[i], table[i].help, text);
        if (table[i].def && !strstr(text, table[i].def))
            fail_msg("help lacks default %s", table[i].def);
    }
    assert_non_null(strstr(text, "least-loaded|round-robin"));
    assert_non_null(strstr(text, "[10ms..1m]"));
    free(text);

    text = NULL;
    f = open_memstream(&text, &len);
    assert_non_null(f);
    config_version_line(c, f);
    assert_int_equal(fclose(f), 0);
    assert_string_equal(text, "prog 1.2.3\n");
    free(text);
    config_free(c);
}

static void test_small_err_buffer(void **state)
{
    (void)state;
    struct config *c = new_config();
    char err[8];
    char *argv[] = {"prog", "--fall", "abcdefghijklmnop", NULL};
    assert_int_equal(config_load(c, 3, argv, err, sizeof(err)), CONFIG_ERROR);
    assert_int_equal(strlen(err), 7);
    assert_int_equal(config_load(c, 3, argv, NULL, 0), CONFIG_ERROR);
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clear_env),
        cmocka_unit_test_setup(test_argv_forms, clear_env),
        cmocka_unit_test_setup(test_bool_spellings, clear_env),
        cmocka_unit_test_setup(test_durations, clear_env),
        cmocka_unit_test_setup(test_sizes, clear_env),
        cmocka_unit_test_setup(test_env_and_precedence, clear_env),
        cmocka_unit_test_setup(test_env_errors, clear_env),
        cmocka_unit_test_setup(test_argv_errors, clear_env),
        cmocka_unit_test_setup(test_positionals, clear_env),
        cmocka_unit_test_setup(test_help_version, clear_env),
        cmocka_unit_test_setup(test_small_err_buffer, clear_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
