/* Unit tests for shared/log.c: line format, node field, level filtering,
 * truncation of huge lines and neutralised control bytes, in text and in
 * JSON format (parsed back with jansson). Output is caught
 * by pointing stderr at a pipe for the length of one call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"

#define CAPTURE_MAX 16384

static int saved_stderr = -1;
static int pipe_fds[2] = {-1, -1};

static void capture_begin(void)
{
    assert_int_equal(pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC), 0);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_int_equal(dup2(pipe_fds[1], STDERR_FILENO), STDERR_FILENO);
}

/* Restores stderr and returns what was written (static buffer). */
static const char *capture_end(size_t *len)
{
    static char out[CAPTURE_MAX + 1];
    assert_int_equal(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
    close(saved_stderr);
    close(pipe_fds[1]);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(pipe_fds[0], out + n, CAPTURE_MAX - n);
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        break; /* EOF (writer closed) or EAGAIN */
    }
    close(pipe_fds[0]);
    out[n] = '\0';
    if (len)
        *len = n;
    return out;
}

static void assert_matches(const char *text, const char *pattern)
{
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int r = regexec(&re, text, 0, NULL, 0);
    regfree(&re);
    if (r != 0)
        fail_msg("\"%s\" does not match /%s/", text, pattern);
}

static void test_format_with_node(void **state)
{
    (void)state;
    log_setup(LOG_LEVEL_INFO, "node", "n1");
    capture_begin();
    log_info("x", "a=%d b=\"%s\"", 1, "two words");
    const char *out = capture_end(NULL);
    assert_matches(out, "^ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                        "level=info component=node event=x node=n1 a=1 b=\"two words\"\n$");
}

static void test_format_without_node(void **state)
{
    (void)state;
    log_setup(LOG_LEVEL_DEBUG, "balancer", NULL);
    capture_begin();
    log_warn("started", "port=%u", 8080u);
    log_error("stopped", NULL);
    log_event(LOG_LEVEL_INFO, "empty", "%s", "");
    const char *out = capture_end(NULL);
    assert_matches(out, "^ts=[^ ]+Z level=warn component=balancer event=started port=8080\n"
                        "ts=[^ ]+Z level=error component=balancer event=stopped\n"
                        "ts=[^ ]+Z level=info component=balancer event=empty\n$");
    assert_null(strstr(out, "node="));
}

static void test_level_filter(void **state)
{
    (void)state;
    log_setup(LOG_LEVEL_WARN, "cli", NULL);
    assert_false(log_enabled(LOG_LEVEL_DEBUG));
    assert_false(log_enabled(LOG_LEVEL_INFO));
    assert_true(log_enabled(LOG_LEVEL_WARN));
    assert_true(log_enabled(LOG_LEVEL_ERROR));
    capture_begin();
    log_debug("d", "k=%d", 1);
    log_info("i", "k=%d", 2);
    log_warn("w", "k=%d", 3);
    log_error("e", "k=%d", 4);
    const char *out = capture_end(NULL);
    assert_null(strstr(out, "event=d"));
    assert_null(strstr(out, "event=i"));
    assert_non_null(strstr(out, "level=warn component=cli event=w k=3\n"));
    assert_non_null(strstr(out, "level=error component=cli event=e k=4\n"));

    log_setup(LOG_LEVEL_DEBUG, "cli", NULL);
    capture_begin();
    log_debug("d", "k=%d", 1);
    out = capture_end(NULL);
    assert_non_null(strstr(out, "level=debug component=cli event=d k=1\n"));
}

static void test_truncation(void **state)
{
    (void)state;
    log_setup(LOG_LEVEL_INFO, "node", "n2");
    size_t big = 10000;
    char *huge = malloc(big + 1);
    assert_non_null(huge);
    memset(huge, 'A', big);
    huge[big] = '\0';
    capture_begin();
    log_info("huge", "v=%s", huge);
    size_t len = 0;
    const char *out = capture_end(&len);
    free(huge);
    assert_true(len > 100 && len <= 4096);
    assert_int_equal(out[len - 1], '\n');
    assert_ptr_equal(strchr(out, '\n'), out + len - 1); /* one line only */
    assert_memory_equal(out + len - 4, "...\n", 4);
    assert_non_null(strstr(out, "event=huge node=n2 v=AAAA"));
}

static void test_control_bytes(void **state)
{
    (void)state;
    log_setup(LOG_LEVEL_INFO, "node", NULL);
    capture_begin();
    log_info("evil", "reason=\"%s\"", "a\nts=forged level=error\r\x1b");
    const char *out = capture_end(NULL);
    assert_non_null(strstr(out, "reason=\"a?ts=forged level=error??\"\n"));
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
}

static void test_level_names(void **state)
{
    (void)state;
    enum log_level l;
    assert_int_equal(log_level_parse("debug", &l), 0);
    assert_int_equal(l, LOG_LEVEL_DEBUG);
    assert_int_equal(log_level_parse("info", &l), 0);
    assert_int_equal(l, LOG_LEVEL_INFO);
    assert_int_equal(log_level_parse("warn", &l), 0);
    assert_int_equal(l, LOG_LEVEL_WARN);
    assert_int_equal(log_level_parse("error", &l), 0);
    assert_int_equal(l, LOG_LEVEL_ERROR);
    assert_int_equal(log_level_parse("verbose", &l), -1);
    assert_int_equal(log_level_parse("", &l), -1);
    assert_int_equal(log_level_parse("INFO ", &l), -1);
    assert_int_equal(log_level_parse(NULL, &l), -1);
    assert_string_equal(log_level_name(LOG_LEVEL_WARN), "warn");
    assert_string_equal(log_level_name((enum log_level)42), "unknown");
}

static void test_long_component_and_node(void **state)
{
    (void)state;
    char id[300];
    memset(id, 'n', sizeof(id) - 1);
    id[sizeof(id) - 1] = '\0';
    log_setup(LOG_LEVEL_INFO, "node", id); /* copied, cut to the internal bound */
    capture_begin();
    log_info("x", "k=1");
    const char *out = capture_end(NULL);
    assert_non_null(strstr(out, " node=nnnn"));
    assert_non_null(strstr(out, " k=1\n"));
}

/* Parses one JSON line (with its newline) and returns the object. */
static json_t *parse_line(const char *out)
{
    size_t len = strlen(out);
    assert_true(len > 2);
    assert_int_equal(out[len - 1], '\n');
    assert_ptr_equal(strchr(out, '\n'), out + len - 1); /* one line */
    json_error_t e;
    json_t *o = json_loadb(out, len - 1, 0, &e);
    if (!o)
        fail_msg("not JSON (%s): %s", e.text, out);
    assert_true(json_is_object(o));
    return o;
}

static void test_json_same_fields(void **state)
{
    (void)state;
    log_setup(LOG_LEVEL_INFO, "node", "n1");
    log_set_format(LOG_FORMAT_JSON);
    capture_begin();
    log_info("x", "a=%d b=\"%s\" c=%s f=%.2f neg=-3 e=1e5 notnum=12ab z=0x10 empty=", 1,
             "two words", "plain", 2.5);
    const char *out = capture_end(NULL);
    log_set_format(LOG_FORMAT_TEXT);
    json_t *o = parse_line(out);
    assert_string_equal(json_string_value(json_object_get(o, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(o, "component")), "node");
    assert_string_equal(json_string_value(json_object_get(o, "event")), "x");
    assert_string_equal(json_string_value(json_object_get(o, "node")), "n1");
    assert_non_null(json_string_value(json_object_get(o, "ts")));
    assert_int_equal(json_integer_value(json_object_get(o, "a")), 1);
    assert_string_equal(json_string_value(json_object_get(o, "b")), "two words");
    assert_string_equal(json_string_value(json_object_get(o, "c")), "plain");
    assert_true(json_real_value(json_object_get(o, "f")) == 2.5);
    assert_int_equal(json_integer_value(json_object_get(o, "neg")), -3);
    assert_true(json_is_number(json_object_get(o, "e")));
    assert_string_equal(json_string_value(json_object_get(o, "notnum")), "12ab");
    assert_string_equal(json_string_value(json_object_get(o, "z")), "0x10");
    assert_string_equal(json_string_value(json_object_get(o, "empty")), "");
    assert_int_equal(json_object_size(o), 14);
    json_decref(o);
}

static void test_json_odd_input(void **state)
{
    (void)state;
    log_setup(LOG_LEVEL_INFO, "balancer", NULL);
    log_set_format(LOG_FORMAT_JSON);
    capture_begin();
    /* control bytes, a quote escaped by the caller, bad UTF-8, words that
     * are not k=v, an unterminated quote */
    log_info("odd", "r=\"%s\" q=\"say \\\"hi\\\"\" u=\"\xc3\xa9\xff\" loose words k=\"open",
             "a\nts=forged\x01");
    const char *out = capture_end(NULL);
    log_set_format(LOG_FORMAT_TEXT);
    json_t *o = parse_line(out);
    assert_null(json_object_get(o, "node"));
    assert_string_equal(json_string_value(json_object_get(o, "r")), "a\nts=forged\x01");
    assert_string_equal(json_string_value(json_object_get(o, "q")), "say \"hi\"");
    assert_string_equal(json_string_value(json_object_get(o, "u")), "\xc3\xa9?");
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "loose words");
    assert_string_equal(json_string_value(json_object_get(o, "k")), "open");
    json_decref(o);

    /* no fields, NULL fields */
    log_set_format(LOG_FORMAT_JSON);
    capture_begin();
    log_error("stopped", NULL);
    out = capture_end(NULL);
    log_set_format(LOG_FORMAT_TEXT);
    o = parse_line(out);
    assert_int_equal(json_object_size(o), 4);
    json_decref(o);
}

static void test_json_truncation(void **state)
{
    (void)state;
    log_setup(LOG_LEVEL_INFO, "node", "n2");
    log_set_format(LOG_FORMAT_JSON);
    size_t big = 10000;
    char *huge = malloc(big + 1);
    assert_non_null(huge);
    memset(huge, '"', big); /* worst case: every byte escaped */
    huge[big] = '\0';
    capture_begin();
    log_info("huge", "a=1 v=%s b=2", huge);
    const char *out = capture_end(NULL);
    json_t *o = parse_line(out);
    assert_true(json_is_true(json_object_get(o, "truncated")));
    assert_int_equal(json_integer_value(json_object_get(o, "a")), 1);

    /* many small members: cut at a member boundary, still valid JSON */
    memset(huge, ' ', big);
    huge[big] = '\0';
    for (size_t i = 0; i + 8 < big; i += 8)
        memcpy(huge + i, "k=\"\x01\x01\" ", 7);
    capture_begin();
    log_info("many", "%s", huge);
    out = capture_end(NULL);
    log_set_format(LOG_FORMAT_TEXT);
    free(huge);
    json_decref(o);
    o = parse_line(out);
    assert_true(json_is_true(json_object_get(o, "truncated")));
    json_decref(o);
}

static void test_format_names(void **state)
{
    (void)state;
    enum log_format f;
    assert_int_equal(log_format_parse("text", &f), 0);
    assert_int_equal(f, LOG_FORMAT_TEXT);
    assert_int_equal(log_format_parse("json", &f), 0);
    assert_int_equal(f, LOG_FORMAT_JSON);
    assert_int_equal(log_format_parse("JSON", &f), -1);
    assert_int_equal(log_format_parse("", &f), -1);
    assert_int_equal(log_format_parse(NULL, &f), -1);
    assert_string_equal(log_format_name(LOG_FORMAT_JSON), "json");
    assert_string_equal(log_format_name((enum log_format)9), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_with_node),
        cmocka_unit_test(test_format_without_node),
        cmocka_unit_test(test_level_filter),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_control_bytes),
        cmocka_unit_test(test_level_names),
        cmocka_unit_test(test_long_component_and_node),
        cmocka_unit_test(test_json_same_fields),
        cmocka_unit_test(test_json_odd_input),
        cmocka_unit_test(test_json_truncation),
        cmocka_unit_test(test_format_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
