/* log: one line per event on stderr, key=value text or a JSON object with
 * the same fields, written with a single write(2) so lines from different
 * threads never interleave. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096 /* longer lines are cut, marked with "..." */
#define LOG_COMPONENT_MAX 32
#define LOG_NODE_MAX 128
/* A JSON line: the text's room plus escapes; JSON_TAIL is kept free for the
 * closing `,"truncated":true}` and the newline. */
#define LOG_JSON_MAX 8192
#define LOG_JSON_TAIL 32

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
static enum log_format log_fmt = LOG_FORMAT_TEXT;

static const char *const log_format_names[] = {
    [LOG_FORMAT_TEXT] = "text",
    [LOG_FORMAT_JSON] = "json",
};

int log_format_parse(const char *text, enum log_format *out)
{
    if (!text)
        return -1;
    for (size_t i = 0; i < sizeof(log_format_names) / sizeof(log_format_names[0]); i++) {
        if (strcmp(text, log_format_names[i]) == 0) {
            *out = (enum log_format)i;
            return 0;
        }
    }
    return -1;
}

const char *log_format_name(enum log_format f)
{
    if ((unsigned)f >= sizeof(log_format_names) / sizeof(log_format_names[0]))
        return "unknown";
    return log_format_names[f];
}

void log_set_format(enum log_format f)
{
    log_fmt = f == LOG_FORMAT_JSON ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
}

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

/* Writes the whole line, retrying short writes and EINTR. */
static void log_write(const char *line, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(STDERR_FILENO, line + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a failing stderr */
        }
        off += (size_t)w;
    }
}

/* ---- JSON lines ---- */

/* A JSON line being built; once something did not fit, `full` stays set
 * and the caller rolls back to the last whole member. */
struct jline {
    char *p;
    size_t cap; /* usable bytes, LOG_JSON_TAIL less than the array */
    size_t pos;
    bool full;
};

static void j_raw(struct jline *j, const char *s, size_t n)
{
    if (j->full || n > j->cap - j->pos) {
        j->full = true;
        return;
    }
    memcpy(j->p + j->pos, s, n);
    j->pos += n;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* bounds of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else
        return 0;
    if (len > n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/* A JSON string of s[0..n): quotes, backslashes and control bytes escaped,
 * bytes that are not UTF-8 replaced by '?' so the line stays valid JSON. */
static void j_str(struct jline *j, const char *s, size_t n)
{
    j_raw(j, "\"", 1);
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n && !j->full;) {
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            j_raw(j, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            j_raw(j, esc, 6);
            i++;
        } else if (c < 0x80) {
            j_raw(j, s + i, 1);
            i++;
        } else {
            size_t len = utf8_len(u + i, n - i);
            if (len == 0) {
                j_raw(j, "?", 1);
                i++;
            } else {
                j_raw(j, s + i, len);
                i += len;
            }
        }
    }
    j_raw(j, "\"", 1);
}

/* True when s[0..n) is a number by JSON's grammar. */
static bool is_json_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n)
        return false;
    if (s[i] == '0')
        i++;
    else if (s[i] >= '1' && s[i] <= '9')
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    else
        return false;
    if (i < n && s[i] == '.') {
        size_t d = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return false;
    }
    return i == n;
}

static bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}

/* Adds ,"key":value as a whole or not at all. Returns false once full. */
static bool j_member(struct jline *j, const char *key, size_t keylen, const char *val,
                     size_t vallen, bool quoted)
{
    size_t mark = j->pos;
    j_raw(j, ",", 1);
    j_str(j, key, keylen);
    j_raw(j, ":", 1);
    if (!quoted && is_json_number(val, vallen))
        j_raw(j, val, vallen);
    else if (quoted) {
        /* Undo the caller's \" and \\ escapes; the string is escaped afresh. */
        char tmp[LOG_LINE_MAX];
        size_t t = 0;
        for (size_t i = 0; i < vallen && t < sizeof tmp; i++) {
            if (val[i] == '\\' && i + 1 < vallen && (val[i + 1] == '"' || val[i + 1] == '\\'))
                i++;
            tmp[t++] = val[i];
        }
        j_str(j, tmp, t);
    } else
        j_str(j, val, vallen);
    if (j->full) {
        j->pos = mark;
        return false;
    }
    return true;
}

/* Turns the caller's `k=v k="quoted v"` text into JSON members. Returns
 * false when a member did not fit. */
static bool j_fields(struct jline *j, const char *f, size_t n)
{
    char msg[LOG_LINE_MAX];
    size_t mlen = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && f[i] == ' ')
            i++;
        if (i >= n)
            break;
        size_t k = i;
        while (i < n && is_key_char(f[i]))
            i++;
        if (i > k && i < n && f[i] == '=') {
            size_t keylen = i - k;
            i++; /* '=' */
            if (i < n && f[i] == '"') {
                size_t v = ++i;
                while (i < n && f[i] != '"') {
                    if (f[i] == '\\' && i + 1 < n)
                        i++;
                    i++;
                }
                size_t vend = i < n ? i : n; /* unterminated: cut line, keep what is there */
                if (i < n)
                    i++; /* closing quote */
                if (!j_member(j, f + k, keylen, f + v, vend - v, true))
                    return false;
            } else {
                size_t v = i;
                while (i < n && f[i] != ' ')
                    i++;
                if (!j_member(j, f + k, keylen, f + v, i - v, false))
                    return false;
            }
            continue;
        }
        /* Not k=v: the word goes to "msg". */
        i = k;
        while (i < n && f[i] != ' ')
            i++;
        if (mlen && mlen < sizeof msg)
            msg[mlen++] = ' ';
        size_t w = i - k < sizeof msg - mlen ? i - k : sizeof msg - mlen;
        memcpy(msg + mlen, f + k, w);
        mlen += w;
    }
    if (mlen && !j_member(j, "msg", 3, msg, mlen, true))
        return false;
    return true;
}

static void log_event_json(enum log_level l, const char *event, const char *ts,
                           const char *fields, size_t flen, bool cut)
{
    char line[LOG_JSON_MAX];
    struct jline j = {line, LOG_JSON_MAX - LOG_JSON_TAIL, 0, false};
    j_raw(&j, "{\"ts\":", 6);
    j_str(&j, ts, strlen(ts));
    j_raw(&j, ",\"level\":", 9);
    const char *lv = log_level_name(l);
    j_str(&j, lv, strlen(lv));
    j_raw(&j, ",\"component\":", 13);
    j_str(&j, log_component, strlen(log_component));
    j_raw(&j, ",\"event\":", 9);
    const char *ev = event ? event : "-";
    j_str(&j, ev, strlen(ev));
    if (log_node[0]) {
        j_raw(&j, ",\"node\":", 8);
        j_str(&j, log_node, strlen(log_node));
    }
    /* The header always fits: its parts are bounded far below the cap. */
    if (!j_fields(&j, fields, flen))
        cut = true;
    j.full = false;
    j.cap = sizeof line;
    if (cut)
        j_raw(&j, ",\"truncated\":true", 17);
    j_raw(&j, "}\n", 2);
    log_write(line, j.pos);
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
    char stamp[96]; /* room for any int the compiler cannot rule out */
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L);

    if (log_fmt == LOG_FORMAT_JSON) {
        /* The same fields: format them as text first, then convert. */
        size_t flen = 0;
        bool cut = false;
        if (fields && fields[0]) {
            va_list ap;
            va_start(ap, fields);
            int r = vsnprintf(line, sizeof line, fields, ap);
            va_end(ap);
            if (r > 0) {
                cut = (size_t)r >= sizeof line;
                flen = cut ? sizeof line - 1 : (size_t)r;
            }
        }
        log_event_json(l, event, stamp, line, flen, cut);
        return;
    }

    log_append(line, cap, &pos, "ts=%s level=%s component=%s event=%s", stamp,
               log_level_name(l), log_component, event ? event : "-");
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
    log_write(line, pos);
}
