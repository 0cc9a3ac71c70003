/* log: one key=value line per event on stderr, written with a single
 * write(2) so lines from different threads never interleave. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096 /* longer lines are cut, marked with "..." */
#define LOG_COMPONENT_MAX 32
#define LOG_NODE_MAX 128

static const char *const log_level_names[] = {
    [LOG_LEVEL_DEBUG] = "debug",
    [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_WARN] = "warn",
    [LOG_LEVEL_ERROR] = "error",
};

/* Written once by log_setup before any thread starts, read-only after. */
static enum log_level log_min = LOG_LEVEL_INFO;
static char log_component[LOG_COMPONENT_MAX] = "berth";
static char log_node[LOG_NODE_MAX]; /* empty: no node= field */

int log_level_parse(const char *text, enum log_level *out)
{
    if (!text)
        return -1;
    for (size_t i = 0; i < sizeof(log_level_names) / sizeof(log_level_names[0]); i++) {
        if (strcmp(text, log_level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

const char *log_level_name(enum log_level l)
{
    if ((unsigned)l >= sizeof(log_level_names) / sizeof(log_level_names[0]))
        return "unknown";
    return log_level_names[l];
}

void log_setup(enum log_level min, const char *component, const char *node_id)
{
    log_min = min;
    snprintf(log_component, sizeof(log_component), "%s", component ? component : "berth");
    snprintf(log_node, sizeof(log_node), "%s", node_id ? node_id : "");
}

bool log_enabled(enum log_level l)
{
    return l >= log_min;
}

/* Appends to line at *pos; the position saturates at the buffer's end so
 * later appends are no-ops and the caller sees the cut. */
static void log_append(char *line, size_t cap, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void log_append(char *line, size_t cap, size_t *pos, const char *fmt, ...)
{
    if (*pos >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(line + *pos, cap - *pos, fmt, ap);
    va_end(ap);
    if (r < 0)
        return;
    *pos = (size_t)r >= cap - *pos ? cap : *pos + (size_t)r;
}

void log_event(enum log_level l, const char *event, const char *fields, ...)
{
    if (!log_enabled(l))
        return;

    /* One spare byte past the text for the '\n'. */
    char line[LOG_LINE_MAX + 1];
    const size_t cap = LOG_LINE_MAX; /* room for text plus vsnprintf's NUL */
    size_t pos = 0;

    struct timespec ts;
    struct tm tm;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || !gmtime_r(&ts.tv_sec, &tm)) {
        memset(&tm, 0, sizeof(tm));
        ts.tv_nsec = 0;
    }
    log_append(line, cap, &pos, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s component=%s event=%s",
               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
               ts.tv_nsec / 1000000L, log_level_name(l), log_component, event ? event : "-");
    if (log_node[0])
        log_append(line, cap, &pos, " node=%s", log_node);

    if (fields && fields[0] && pos < cap) {
        line[pos++] = ' ';
        size_t start = pos;
        if (pos < cap) {
            va_list ap;
            va_start(ap, fields);
            int r = vsnprintf(line + pos, cap - pos, fields, ap);
            va_end(ap);
            if (r > 0)
                pos = (size_t)r >= cap - pos ? cap : pos + (size_t)r;
            else
                pos = start - 1; /* nothing formatted: drop the separator */
        }
        /* A value from the network may hold a newline or other control byte:
         * it must not be able to start a forged line. */
        for (size_t i = start; i < pos && i < cap; i++) {
            unsigned char ch = (unsigned char)line[i];
            if (ch < 0x20 || ch == 0x7f)
                line[i] = '?';
        }
    }

    if (pos >= cap) {
        /* Cut: the last bytes say so. vsnprintf left a NUL at cap - 1. */
        pos = cap - 1;
        memcpy(line + pos - 3, "...", 3);
    }
    line[pos++] = '\n';

    size_t off = 0;
    while (off < pos) {
        ssize_t w = write(STDERR_FILENO, line + off, pos - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a failing stderr */
        }
        off += (size_t)w;
    }
}
