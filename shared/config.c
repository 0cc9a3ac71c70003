/* config: a program's settings table applied in layers (default, then
 * BERTH_* environment, then argv), each value validated by one parser. */
#include "config.h"
#include "errbuf.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CONFIG_ENV_MAX 128 /* "BERTH_" + the longest setting name we allow */

/* config_set_value's failures: the input, or the allocator. */
#define CONFIG_BAD_VALUE (-1)
#define CONFIG_NO_MEMORY (-2)

/* The current value of one setting. */
struct config_value {
    char *text;   /* value as written (owned); "" for a NULL default */
    long long num; /* parsed INT / DURATION / SIZE */
    bool flag;    /* parsed BOOL */
};

struct config {
    const char *program;                 /* borrowed */
    const char *version;                 /* borrowed */
    const char *summary;                 /* borrowed */
    const struct config_setting *table;  /* borrowed, static */
    size_t n;                            /* settings in table */
    struct config_value *values;         /* one per setting, owned */
    char **pos;                          /* positional arguments, owned copies */
    size_t npos;
    size_t pos_cap;
};

/* A value's unit multiplier, for durations and sizes. */
struct config_unit {
    const char *suffix;
    long long mult;
};

static const struct config_unit config_duration_units[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000},
};

/* Sizes are binary whatever the spelling: "1M" and "1MB" are 1 MiB too. */
static const struct config_unit config_size_units[] = {
    {"", 1},
    {"b", 1},
    {"k", 1ll << 10}, {"kb", 1ll << 10}, {"kib", 1ll << 10},
    {"m", 1ll << 20}, {"mb", 1ll << 20}, {"mib", 1ll << 20},
    {"g", 1ll << 30}, {"gb", 1ll << 30}, {"gib", 1ll << 30},
    {"t", 1ll << 40}, {"tb", 1ll << 40}, {"tib", 1ll << 40},
};

static const char *const config_type_names[] = {
    [CONFIG_STRING] = "text",
    [CONFIG_INT] = "integer",
    [CONFIG_BOOL] = "boolean",
    [CONFIG_DURATION] = "duration",
    [CONFIG_SIZE] = "size",
    [CONFIG_ENUM] = "choice",
};

/* "heartbeat-interval" -> "BERTH_HEARTBEAT_INTERVAL". */
static void config_env_name(const char *name, char *out, size_t len)
{
    size_t j = (size_t)snprintf(out, len, "BERTH_");
    for (size_t i = 0; name[i] && j + 1 < len; i++) {
        char ch = name[i];
        out[j++] = ch == '-' ? '_' : (char)toupper((unsigned char)ch);
    }
    out[j < len ? j : len - 1] = '\0';
}

struct config *config_new(const char *program, const char *version, const char *summary,
                          const struct config_setting *table, size_t n)
{
    struct config *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->program = program;
    c->version = version;
    c->summary = summary;
    c->table = table;
    c->n = n;
    c->values = calloc(n ? n : 1, sizeof(*c->values));
    if (!c->values) {
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        assert(table[i].name && strlen(table[i].name) + 7 <= CONFIG_ENV_MAX);
        assert(table[i].type != CONFIG_ENUM || table[i].choices);
    }
    return c;
}

static void config_clear_positionals(struct config *c)
{
    for (size_t i = 0; i < c->npos; i++)
        free(c->pos[i]);
    c->npos = 0;
}

void config_free(struct config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->values[i].text);
    free(c->values);
    config_clear_positionals(c);
    free(c->pos);
    free(c);
}

/* Parses "<digits>[.<digits>]<unit>" into a whole number of base units.
 * Returns 0; -1 when not of that shape or not whole; -2 on overflow. */
static int config_parse_scaled(const char *text, const struct config_unit *units, size_t nunits,
                               long long *out)
{
    const char *p = text;
    if (!isdigit((unsigned char)*p))
        return -1;
    long long whole = 0;
    bool overflow = false;
    for (; isdigit((unsigned char)*p); p++) {
        int d = *p - '0';
        if (whole > (LLONG_MAX - d) / 10)
            overflow = true;
        else
            whole = whole * 10 + d;
    }
    /* Fraction kept as numerator / 10^k, at most 18 digits so it fits. */
    long long frac = 0, scale = 1;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        for (; isdigit((unsigned char)*p); p++) {
            if (scale >= 1000000000000000000ll) {
                if (*p != '0')
                    return -1; /* more precision than any unit can use */
                continue;
            }
            frac = frac * 10 + (*p - '0');
            scale *= 10;
        }
    }
    const struct config_unit *unit = NULL;
    for (size_t i = 0; i < nunits; i++) {
        if (strcasecmp(p, units[i].suffix) == 0) {
            unit = &units[i];
            break;
        }
    }
    if (!unit)
        return -1;
    if (overflow || (whole > 0 && whole > LLONG_MAX / unit->mult))
        return -2;
    long long v = whole * unit->mult;
    if (frac) {
        /* frac/scale * mult must come out whole: 1.5s is 1500 ms, 1.5ms is not. */
        __int128 num = (__int128)frac * unit->mult;
        if (num % scale != 0)
            return -1;
        long long add = (long long)(num / scale);
        if (v > LLONG_MAX - add)
            return -2;
        v += add;
    }
    *out = v;
    return 0;
}

/* Renders a bound in the unit a user would write, for error messages. */
static void config_format_amount(enum config_type t, long long v, char *out, size_t len)
{
    if (t == CONFIG_DURATION) {
        if (v != 0 && v % 3600000 == 0)
            snprintf(out, len, "%lldh", v / 3600000);
        else if (v != 0 && v % 60000 == 0)
            snprintf(out, len, "%lldm", v / 60000);
        else if (v != 0 && v % 1000 == 0)
            snprintf(out, len, "%llds", v / 1000);
        else
            snprintf(out, len, "%lldms", v);
    } else if (t == CONFIG_SIZE) {
        if (v != 0 && v % (1ll << 30) == 0)
            snprintf(out, len, "%lldGiB", v >> 30);
        else if (v != 0 && v % (1ll << 20) == 0)
            snprintf(out, len, "%lldMiB", v >> 20);
        else if (v != 0 && v % (1ll << 10) == 0)
            snprintf(out, len, "%lldKiB", v >> 10);
        else
            snprintf(out, len, "%lld bytes", v);
    } else {
        snprintf(out, len, "%lld", v);
    }
}

static bool config_enum_has(const char *choices, const char *text)
{
    size_t tlen = strlen(text);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == tlen && len > 0 && strncmp(p, text, len) == 0)
            return true;
        if (!bar)
            break;
        p = bar + 1;
    }
    return false;
}

static int config_parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Validates text for setting s and stores it in v. where names the source
 * for the error ("--fall", "BERTH_FALL (environment, --fall)"). Returns 0,
 * CONFIG_BAD_VALUE or CONFIG_NO_MEMORY. */
static int config_set_value(const struct config_setting *s, struct config_value *v,
                            const char *text, const char *where, char *err, size_t errlen)
{
    long long num = 0;
    bool flag = false;

    switch (s->type) {
    case CONFIG_STRING:
        break;
    case CONFIG_ENUM:
        if (!config_enum_has(s->choices, text)) {
            errbuf_setf(err, errlen, "%s: \"%s\" is not one of %s", where, text, s->choices);
            return -1;
        }
        break;
    case CONFIG_BOOL:
        if (config_parse_bool(text, &flag) != 0) {
            errbuf_setf(err, errlen, "%s: \"%s\" is not a boolean (true/false, yes/no, 1/0)",
                        where, text);
            return -1;
        }
        break;
    case CONFIG_INT: {
        char *end = NULL;
        errno = 0;
        /* strtoll skips leading blanks; a value with blanks is not ours. */
        if (!text[0] || isspace((unsigned char)text[0])) {
            errbuf_setf(err, errlen, "%s: \"%s\" is not an integer", where, text);
            return -1;
        }
        num = strtoll(text, &end, 10);
        if (*end != '\0') {
            errbuf_setf(err, errlen, "%s: \"%s\" is not an integer", where, text);
            return -1;
        }
        if (errno == ERANGE) {
            errbuf_setf(err, errlen, "%s: %s is out of range", where, text);
            return -1;
        }
        break;
    }
    case CONFIG_DURATION:
    case CONFIG_SIZE: {
        bool dur = s->type == CONFIG_DURATION;
        int r = dur ? config_parse_scaled(text, config_duration_units,
                                          sizeof(config_duration_units) /
                                              sizeof(config_duration_units[0]),
                                          &num)
                    : config_parse_scaled(text, config_size_units,
                                          sizeof(config_size_units) / sizeof(config_size_units[0]),
                                          &num);
        if (r == -2) {
            errbuf_setf(err, errlen, "%s: %s is out of range", where, text);
            return -1;
        }
        if (r != 0) {
            errbuf_setf(err, errlen,
                        dur ? "%s: \"%s\" is not a duration (e.g. 250ms, 2s, 1.5s, 1m, 1h; "
                              "a bare number is milliseconds)"
                            : "%s: \"%s\" is not a size (e.g. 512, 64KiB, 1MiB, 1GiB; "
                              "a bare number is bytes)",
                        where, text);
            return -1;
        }
        break;
    }
    default:
        assert(!"unknown config type");
        return -1;
    }

    if ((s->type == CONFIG_INT || s->type == CONFIG_DURATION || s->type == CONFIG_SIZE) &&
        (s->min != 0 || s->max != 0)) {
        char bound[64];
        if (num < s->min) {
            config_format_amount(s->type, s->min, bound, sizeof(bound));
            errbuf_setf(err, errlen, "%s: %s is below the minimum %s", where, text, bound);
            return -1;
        }
        if (num > s->max) {
            config_format_amount(s->type, s->max, bound, sizeof(bound));
            errbuf_setf(err, errlen, "%s: %s is above the maximum %s", where, text, bound);
            return -1;
        }
    }

    char *copy = strdup(text);
    if (!copy) {
        errbuf_setf(err, errlen, "%s: out of memory", where);
        return CONFIG_NO_MEMORY;
    }
    free(v->text);
    v->text = copy;
    v->num = num;
    v->flag = flag;
    return 0;
}

static int config_add_positional(struct config *c, const char *arg, char *err, size_t errlen)
{
    if (c->npos == c->pos_cap) {
        size_t cap = c->pos_cap ? c->pos_cap * 2 : 4;
        char **p = realloc(c->pos, cap * sizeof(*p));
        if (!p) {
            errbuf_setf(err, errlen, "out of memory");
            return -1;
        }
        c->pos = p;
        c->pos_cap = cap;
    }
    char *copy = strdup(arg);
    if (!copy) {
        errbuf_setf(err, errlen, "out of memory");
        return -1;
    }
    c->pos[c->npos++] = copy;
    return 0;
}

static long config_find(const struct config *c, const char *name, size_t len)
{
    for (size_t i = 0; i < c->n; i++) {
        if (strlen(c->table[i].name) == len && strncmp(c->table[i].name, name, len) == 0)
            return (long)i;
    }
    return -1;
}

enum config_result config_load(struct config *c, int argc, char **argv, char *err, size_t errlen)
{
    config_clear_positionals(c);

    /* Layer 1: defaults, through the same parser as user input. */
    for (size_t i = 0; i < c->n; i++) {
        const struct config_setting *s = &c->table[i];
        char where[CONFIG_ENV_MAX + 32];
        snprintf(where, sizeof(where), "default of --%s", s->name);
        const char *def = s->def ? s->def : (s->type == CONFIG_STRING ? "" : NULL);
        if (!def) {
            /* NULL default for a typed setting: 0 / false, and no bound check. */
            free(c->values[i].text);
            c->values[i].text = strdup("");
            c->values[i].num = 0;
            c->values[i].flag = false;
            if (!c->values[i].text) {
                errbuf_setf(err, errlen, "out of memory");
                return CONFIG_ERROR;
            }
            continue;
        }
        int r = config_set_value(s, &c->values[i], def, where, err, errlen);
        /* A bad default is a bug in the table, not user input; without
         * asserts it still comes out as a clear error. */
        assert(r != CONFIG_BAD_VALUE);
        if (r != 0)
            return CONFIG_ERROR;
    }

    /* Layer 2: the environment. An empty variable counts as unset, so that
     * compose files can pass "${X:-}" through without changing anything. */
    for (size_t i = 0; i < c->n; i++) {
        const struct config_setting *s = &c->table[i];
        char env[CONFIG_ENV_MAX];
        config_env_name(s->name, env, sizeof(env));
        const char *val = getenv(env);
        if (!val || !val[0])
            continue;
        char where[2 * CONFIG_ENV_MAX + 32];
        snprintf(where, sizeof(where), "%s (environment, --%s)", env, s->name);
        if (config_set_value(s, &c->values[i], val, where, err, errlen) != 0)
            return CONFIG_ERROR;
    }

    /* Layer 3: argv, in order, so a repeated flag's last value wins. */
    bool flags_done = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (flags_done || arg[0] != '-' || strcmp(arg, "-") == 0) {
            if (config_add_positional(c, arg, err, errlen) != 0)
                return CONFIG_ERROR;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return CONFIG_HELP;
        if (strcmp(arg, "--version") == 0)
            return CONFIG_VERSION;
        if (arg[1] != '-') {
            errbuf_setf(err, errlen, "unknown option %s (see --help)", arg);
            return CONFIG_ERROR;
        }

        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        long idx = config_find(c, name, nlen);
        if (idx < 0) {
            errbuf_setf(err, errlen, "unknown option --%.*s (see --help)", (int)nlen, name);
            return CONFIG_ERROR;
        }
        const struct config_setting *s = &c->table[idx];
        const char *val;
        if (eq) {
            val = eq + 1;
        } else if (s->type == CONFIG_BOOL) {
            val = "true"; /* a boolean flag alone switches it on */
        } else if (i + 1 < argc) {
            /* The next word is the value even if it starts with '-': "--fall -3"
             * should say -3 is out of range, not that -3 is an unknown option. */
            val = argv[++i];
        } else {
            errbuf_setf(err, errlen, "--%s needs a value (see --help)", s->name);
            return CONFIG_ERROR;
        }
        char where[CONFIG_ENV_MAX + 8];
        snprintf(where, sizeof(where), "--%s", s->name);
        if (config_set_value(s, &c->values[idx], val, where, err, errlen) != 0)
            return CONFIG_ERROR;
    }
    return CONFIG_OK;
}

void config_usage(const struct config *c, FILE *out)
{
    fprintf(out, "%s %s: %s\n\n", c->program, c->version, c->summary ? c->summary : "");
    fprintf(out, "usage: %s [options]\n\n", c->program);
    fprintf(out, "Every option can also be set with its environment variable; an option on\n"
                 "the command line wins over the environment. Durations take ms, s, m, h\n"
                 "(a bare number is ms); sizes take KiB, MiB, GiB (a bare number is bytes).\n\n");

    /* Column widths from the table itself. */
    int wflag = (int)strlen("--version"), wenv = (int)strlen("environment"),
        wdef = (int)strlen("default");
    for (size_t i = 0; i < c->n; i++) {
        const struct config_setting *s = &c->table[i];
        char env[CONFIG_ENV_MAX];
        config_env_name(s->name, env, sizeof(env));
        int f = (int)strlen(s->name) + 2 + (int)strlen(config_type_names[s->type]) + 3;
        if (s->type == CONFIG_BOOL)
            f = (int)strlen(s->name) + 2;
        int d = s->def && s->def[0] ? (int)strlen(s->def) : 1;
        if (f > wflag)
            wflag = f;
        if ((int)strlen(env) > wenv)
            wenv = (int)strlen(env);
        if (d > wdef)
            wdef = d;
    }

    fprintf(out, "  %-*s  %-*s  %-*s  %s\n", wflag, "option", wenv, "environment", wdef,
            "default", "meaning");
    for (size_t i = 0; i < c->n; i++) {
        const struct config_setting *s = &c->table[i];
        char env[CONFIG_ENV_MAX], flag[CONFIG_ENV_MAX + 32];
        config_env_name(s->name, env, sizeof(env));
        if (s->type == CONFIG_BOOL)
            snprintf(flag, sizeof(flag), "--%s", s->name);
        else
            snprintf(flag, sizeof(flag), "--%s <%s>", s->name, config_type_names[s->type]);
        fprintf(out, "  %-*s  %-*s  %-*s  %s", wflag, flag, wenv, env, wdef,
                s->def && s->def[0] ? s->def : "-", s->help ? s->help : "");
        if (s->type == CONFIG_ENUM)
            fprintf(out, " (%s)", s->choices);
        else if ((s->type == CONFIG_INT || s->type == CONFIG_DURATION || s->type == CONFIG_SIZE) &&
                 (s->min != 0 || s->max != 0)) {
            char lo[64], hi[64];
            config_format_amount(s->type, s->min, lo, sizeof(lo));
            config_format_amount(s->type, s->max, hi, sizeof(hi));
            fprintf(out, " [%s..%s]", lo, hi);
        }
        fputc('\n', out);
    }
    fprintf(out, "  %-*s  %-*s  %-*s  %s\n", wflag, "--help", wenv, "", wdef, "",
            "print this help and exit");
    fprintf(out, "  %-*s  %-*s  %-*s  %s\n", wflag, "--version", wenv, "", wdef, "",
            "print the version and exit");
}

void config_version_line(const struct config *c, FILE *out)
{
    fprintf(out, "%s %s\n", c->program, c->version);
}

static const struct config_value *config_get(const struct config *c, const char *name,
                                             enum config_type *type)
{
    long idx = config_find(c, name, strlen(name));
    assert(idx >= 0 && "config: no such setting in the table");
    if (idx < 0)
        abort();
    *type = c->table[idx].type;
    return &c->values[idx];
}

const char *config_str(const struct config *c, const char *name)
{
    enum config_type t;
    const struct config_value *v = config_get(c, name, &t);
    return v->text ? v->text : "";
}

long long config_int(const struct config *c, const char *name)
{
    enum config_type t;
    const struct config_value *v = config_get(c, name, &t);
    assert(t == CONFIG_INT || t == CONFIG_DURATION || t == CONFIG_SIZE);
    return v->num;
}

bool config_bool(const struct config *c, const char *name)
{
    enum config_type t;
    const struct config_value *v = config_get(c, name, &t);
    assert(t == CONFIG_BOOL);
    return v->flag;
}

size_t config_npositional(const struct config *c)
{
    return c->npos;
}

const char *config_positional(const struct config *c, size_t i)
{
    assert(i < c->npos);
    return i < c->npos ? c->pos[i] : NULL;
}
