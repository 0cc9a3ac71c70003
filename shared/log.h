/* log: one line per event on stderr with the same key=value fields
 * everywhere: ts, level, component, event, node, then the event's own;
 * written as key=value text or as one JSON object per line. */
#ifndef BERTH_LOG_H
#define BERTH_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* Parses "debug|info|warn|error"; 0 or -1. */
int log_level_parse(const char *text, enum log_level *out);
const char *log_level_name(enum log_level l);

/* How lines are written: key=value text (the default) or one JSON object
 * per line with the same fields. */
enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

/* Parses "text|json"; 0 or -1. */
int log_format_parse(const char *text, enum log_format *out);
const char *log_format_name(enum log_format f);
/* Process-wide, like log_setup: call before threads start. */
void log_set_format(enum log_format f);

/* Process-wide setup, call once before threads start. component is "node",
 * "balancer" or "cli"; node_id may be NULL. Strings are copied. */
void log_setup(enum log_level min, const char *component, const char *node_id);

/* Cheap check so callers can skip building expensive fields. */
bool log_enabled(enum log_level l);

/* Writes one line with a single write(2), so lines from threads never mix:
 *   ts=2026-11-25T20:40:12.345Z level=info component=node event=<event> node=n1 <fields>
 * fields is a printf format for the event's own key=value pairs; a value
 * that may hold spaces is quoted by the caller: "reason=\"%s\"". May be NULL.
 * In JSON format the same line is
 *   {"ts":"...","level":"info","component":"node","event":"<event>","node":"n1",<fields>}
 * where each k=v becomes a member: a quoted value a string, an unquoted one
 * a number when it reads as a JSON number, else a string; text that is not
 * k=v goes into a "msg" member. A line cut for length gets "truncated":true. */
void log_event(enum log_level l, const char *event, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(ev, ...) \
    do { if (log_enabled(LOG_LEVEL_DEBUG)) log_event(LOG_LEVEL_DEBUG, ev, __VA_ARGS__); } while (0)
#define log_info(ev, ...) log_event(LOG_LEVEL_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...) log_event(LOG_LEVEL_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_event(LOG_LEVEL_ERROR, ev, __VA_ARGS__)

#endif
