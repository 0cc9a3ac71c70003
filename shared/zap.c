/* zap: the client key allowlist, the ZAP decision on one request (a pure
 * function, unit-tested with crafted frames) and the inproc handler socket
 * libzmq asks during each CURVE handshake of a ROUTER in its context. */
#include "zap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <zmq.h>

#include "errbuf.h"
#include "hb_msg.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_VERSION "1.0"
#define ZAP_MAX_FRAMES 16      /* a request has 7; more parts are read and dropped */
#define ZAP_LIST_MAX (1 << 20) /* keys in one allowlist file, a sanity bound */

/* A node id only one key may use. */
struct zap_pin {
    char id[HB_NODE_ID_MAX + 1];
    uint8_t key[KEYS_LEN];
};

struct zap_allowlist {
    uint8_t (*keys)[KEYS_LEN]; /* sorted, no duplicates */
    size_t n;
    struct zap_pin *pins; /* in no order: asked once per heartbeat, few ids */
    size_t npins, pins_cap;
};

static int key_cmp(const void *a, const void *b)
{
    return memcmp(a, b, KEYS_LEN);
}

struct zap_allowlist *zap_allowlist_new(const uint8_t (*keys)[KEYS_LEN], size_t n)
{
    struct zap_allowlist *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->keys = malloc((n ? n : 1) * KEYS_LEN);
    if (!a->keys) {
        free(a);
        return NULL;
    }
    if (n)
        memcpy(a->keys, keys, n * KEYS_LEN);
    qsort(a->keys, n, KEYS_LEN, key_cmp);
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        if (w == 0 || memcmp(a->keys[w - 1], a->keys[i], KEYS_LEN) != 0)
            memmove(a->keys[w++], a->keys[i], KEYS_LEN);
    a->n = w;
    return a;
}

void zap_allowlist_free(struct zap_allowlist *a)
{
    if (!a)
        return;
    free(a->keys);
    free(a->pins);
    free(a);
}

size_t zap_allowlist_size(const struct zap_allowlist *a)
{
    return a ? a->n : 0;
}

bool zap_allowlist_contains(const struct zap_allowlist *a, const uint8_t key[KEYS_LEN])
{
    return a && a->n && bsearch(key, a->keys, a->n, KEYS_LEN, key_cmp) != NULL;
}

int zap_allowlist_pin(struct zap_allowlist *a, const char *id, const uint8_t key[KEYS_LEN])
{
    if (!hb_node_id_valid(id))
        return -1;
    struct zap_pin *p = NULL;
    for (size_t i = 0; i < a->npins && !p; i++)
        if (strcmp(a->pins[i].id, id) == 0)
            p = &a->pins[i];
    if (!p) {
        if (a->npins == a->pins_cap) {
            size_t cap = a->pins_cap ? a->pins_cap * 2 : 16;
            struct zap_pin *np = realloc(a->pins, cap * sizeof(*np));
            if (!np)
                return -1;
            a->pins = np;
            a->pins_cap = cap;
        }
        p = &a->pins[a->npins++];
        snprintf(p->id, sizeof(p->id), "%s", id);
    }
    memcpy(p->key, key, KEYS_LEN);
    return 0;
}

const uint8_t *zap_allowlist_pinned(const struct zap_allowlist *a, const char *id)
{
    for (size_t i = 0; a && i < a->npins; i++)
        if (strcmp(a->pins[i].id, id) == 0)
            return a->pins[i].key;
    return NULL;
}

/* A growing array of keys while loading. */
struct key_vec {
    uint8_t (*keys)[KEYS_LEN];
    size_t n, cap;
    struct zap_pin *pins; /* the "<id>.pub" files */
    size_t npins, pins_cap;
};

static int key_vec_push(struct key_vec *v, const uint8_t key[KEYS_LEN])
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        void *p = realloc(v->keys, cap * KEYS_LEN);
        if (!p)
            return -1;
        v->keys = p;
        v->cap = cap;
    }
    memcpy(v->keys[v->n++], key, KEYS_LEN);
    return 0;
}

static int key_vec_pin(struct key_vec *v, const char *id, const uint8_t key[KEYS_LEN])
{
    if (v->npins == v->pins_cap) {
        size_t cap = v->pins_cap ? v->pins_cap * 2 : 16;
        struct zap_pin *p = realloc(v->pins, cap * sizeof(*p));
        if (!p)
            return -1;
        v->pins = p;
        v->pins_cap = cap;
    }
    /* The caller checked id with hb_node_id_valid: it fits. */
    size_t n = strnlen(id, HB_NODE_ID_MAX);
    memcpy(v->pins[v->npins].id, id, n);
    v->pins[v->npins].id[n] = '\0';
    memcpy(v->pins[v->npins++].key, key, KEYS_LEN);
    return 0;
}

static int load_dir(const char *path, struct key_vec *v, char *err, size_t errlen)
{
    DIR *d = opendir(path);
    if (!d) {
        errbuf_setf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len <= 4 || strcmp(de->d_name + len - 4, ".pub") != 0 || de->d_name[0] == '.')
            continue;
        char file[4096];
        if (snprintf(file, sizeof(file), "%s/%s", path, de->d_name) >= (int)sizeof(file)) {
            errbuf_setf(err, errlen, "%s/%s: path too long", path, de->d_name);
            rc = -1;
            break;
        }
        /* Looked at before it is opened, without following a link: a FIFO
         * (or a link to one, or to a device) named *.pub would block the
         * balancer's only thread in open() on SIGHUP. keys_read_file then
         * opens it non-blocking and reads a bounded regular file. */
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            errbuf_setf(err, errlen, "%s: %s", file, strerror(errno));
            rc = -1;
            break;
        }
        if (S_ISLNK(st.st_mode) || !S_ISREG(st.st_mode)) {
            errbuf_setf(err, errlen, "%s: %s", file,
                        S_ISLNK(st.st_mode) ? "a symbolic link (links are not followed)"
                                            : "not a regular file");
            rc = -1;
            break;
        }
        uint8_t key[KEYS_LEN];
        char id[HB_NODE_ID_MAX + 2];
        snprintf(id, sizeof(id), "%.*s", (int)(len - 4 < sizeof(id) - 1 ? len - 4 : sizeof(id) - 1),
                 de->d_name);
        if (keys_read_file(file, key, err, errlen) != 0) {
            rc = -1;
        } else if (key_vec_push(v, key) != 0 ||
                   (hb_node_id_valid(id) && key_vec_pin(v, id, key) != 0)) {
            errbuf_setf(err, errlen, "out of memory");
            rc = -1;
        }
    }
    closedir(d);
    return rc;
}

static int load_list(const char *path, struct key_vec *v, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        errbuf_setf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[256];
    unsigned lineno = 0;
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
            errbuf_setf(err, errlen, "%s: line %u: too long for a key", path, lineno);
            rc = -1;
            break;
        }
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        len = strlen(p);
        while (len && (p[len - 1] == '\n' || p[len - 1] == '\r' || p[len - 1] == ' ' ||
                       p[len - 1] == '\t'))
            len--;
        if (len == 0 || *p == '#')
            continue;
        uint8_t key[KEYS_LEN];
        char why[128];
        if (keys_decode(p, len, key, why, sizeof(why)) != 0) {
            errbuf_setf(err, errlen, "%s: line %u: %s", path, lineno, why);
            rc = -1;
        } else if (v->n >= ZAP_LIST_MAX || key_vec_push(v, key) != 0) {
            errbuf_setf(err, errlen, "%s: too many keys", path);
            rc = -1;
        }
    }
    if (rc == 0 && ferror(f)) {
        errbuf_setf(err, errlen, "%s: read error", path);
        rc = -1;
    }
    fclose(f);
    return rc;
}

struct zap_allowlist *zap_allowlist_load(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (!path || !*path || stat(path, &st) != 0) {
        errbuf_setf(err, errlen, "%s: %s", path && *path ? path : "(empty path)",
                    path && *path ? strerror(errno) : "no allowlist given");
        return NULL;
    }
    struct key_vec v = {0};
    int rc = S_ISDIR(st.st_mode) ? load_dir(path, &v, err, errlen) : load_list(path, &v, err, errlen);
    struct zap_allowlist *a = NULL;
    if (rc == 0 && v.n == 0)
        errbuf_setf(err, errlen,
                    S_ISDIR(st.st_mode) ? "%s: no *.pub key file in the directory"
                                        : "%s: no key in the file",
                    path);
    else if (rc == 0 && !(a = zap_allowlist_new((const uint8_t(*)[KEYS_LEN])v.keys, v.n)))
        errbuf_setf(err, errlen, "out of memory");
    if (a) {
        /* Ids are unique in one directory: the loader's array is the pin table. */
        a->pins = v.pins;
        a->npins = a->pins_cap = v.npins;
        v.pins = NULL;
    }
    free(v.pins);
    free(v.keys);
    return a;
}

/* ---- the decision ---- */

static bool frame_is(const struct zap_frame *f, const char *text)
{
    size_t n = strlen(text);
    return f->size == n && (n == 0 || memcmp(f->data, text, n) == 0);
}

/* Copies a frame as printable text for the logs. */
static void frame_text(const struct zap_frame *f, char *out, size_t outlen)
{
    size_t j = 0;
    const unsigned char *d = f->data;
    for (size_t i = 0; i < f->size && j + 1 < outlen; i++)
        out[j++] = (d[i] >= 0x20 && d[i] < 0x7f && d[i] != '"' && d[i] != '\\') ? (char)d[i] : '?';
    out[j] = '\0';
}

static void decide(struct zap_decision *out, enum zap_verdict v, const char *reason)
{
    static const char *const codes[] = {
        [ZAP_ALLOW] = "200", [ZAP_DENY] = "400", [ZAP_MALFORMED] = "500", [ZAP_DROP] = "",
    };
    out->verdict = v;
    out->status_code = codes[v];
    snprintf(out->reason, sizeof(out->reason), "%s", reason);
}

void zap_decide(const struct zap_allowlist *a, const struct zap_frame *frames, size_t nframes,
                bool truncated, struct zap_decision *out)
{
    memset(out, 0, sizeof(*out));
    if (nframes < 2 || !frame_is(&frames[0], ZAP_VERSION)) {
        decide(out, ZAP_DROP, "not a ZAP 1.0 request");
        return;
    }
    if (nframes < 6) {
        decide(out, ZAP_MALFORMED, "ZAP request with too few frames");
        return;
    }
    frame_text(&frames[3], out->address, sizeof(out->address));
    if (!frame_is(&frames[2], ZAP_DOMAIN)) {
        decide(out, ZAP_DENY, "wrong ZAP domain");
        return;
    }
    if (!frame_is(&frames[5], "CURVE")) {
        /* NULL and PLAIN carry no proof of a key. */
        decide(out, ZAP_DENY, "mechanism is not CURVE");
        return;
    }
    if (truncated || nframes != 7 || frames[6].size != KEYS_LEN) {
        decide(out, ZAP_MALFORMED, "CURVE request without one 32-byte key");
        return;
    }
    keys_encode(frames[6].data, out->key_z85);
    if (!zap_allowlist_contains(a, frames[6].data)) {
        decide(out, ZAP_DENY, "key not in the allowlist");
        return;
    }
    decide(out, ZAP_ALLOW, "OK");
}

/* ---- the handler socket ---- */

struct zap_handler {
    void *sock;                  /* ROUTER bound to ZAP_ENDPOINT */
    struct zap_allowlist *allow; /* owned */
};

struct zap_handler *zap_handler_new(void *zctx, struct zap_allowlist *a, char *err,
                                    size_t errlen)
{
    struct zap_handler *z = calloc(1, sizeof(*z));
    if (!z) {
        zap_allowlist_free(a);
        errbuf_setf(err, errlen, "out of memory");
        return NULL;
    }
    z->allow = a;
    /* A ROUTER, not a REP: a request we cannot answer is dropped without
     * wedging the socket's send/receive alternation. */
    z->sock = zmq_socket(zctx, ZMQ_ROUTER);
    int linger = 0;
    if (!z->sock || zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof(linger)) != 0) {
        errbuf_setf(err, errlen, "ZAP handler socket: %s", zmq_strerror(zmq_errno()));
        zap_handler_free(z);
        return NULL;
    }
    if (zmq_bind(z->sock, ZAP_ENDPOINT) != 0) {
        errbuf_setf(err, errlen, "cannot install the ZAP handler (%s): %s", ZAP_ENDPOINT,
                    zmq_strerror(zmq_errno()));
        zap_handler_free(z);
        return NULL;
    }
    return z;
}

void zap_handler_free(struct zap_handler *z)
{
    if (!z)
        return;
    if (z->sock)
        zmq_close(z->sock);
    zap_allowlist_free(z->allow);
    free(z);
}

void *zap_handler_socket(const struct zap_handler *z)
{
    return z->sock;
}

void zap_handler_set_allowlist(struct zap_handler *z, struct zap_allowlist *a)
{
    zap_allowlist_free(z->allow);
    z->allow = a;
}

const struct zap_allowlist *zap_handler_allowlist(const struct zap_handler *z)
{
    return z->allow;
}

static int send_frame(void *sock, const void *data, size_t len, bool more)
{
    int rc;
    do
        rc = zmq_send(sock, data, len, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    while (rc < 0 && zmq_errno() == EINTR);
    return rc < 0 ? -1 : 0;
}

/* Reads one whole request ([routing id][empty][frames...]) and answers it.
 * Returns 1 allowed, 0 refused or dropped, -1 nothing waiting. */
static int serve_one(struct zap_handler *z, zap_refused_fn refused, void *arg)
{
    zmq_msg_t parts[ZAP_MAX_FRAMES + 2];
    size_t n = 0;
    bool more = true, truncated = false;
    while (more) {
        zmq_msg_t m;
        if (zmq_msg_init(&m) != 0) {
            /* Cannot fail in libzmq 4.3; a part left unread is never allowed. */
            if (n == 0)
                return -1;
            truncated = true;
            break;
        }
        int rc;
        do
            rc = zmq_msg_recv(&m, z->sock, ZMQ_DONTWAIT);
        while (rc < 0 && zmq_errno() == EINTR);
        if (rc < 0) {
            zmq_msg_close(&m);
            if (n == 0)
                return -1;
            break; /* parts of one message arrive together; cannot happen */
        }
        more = zmq_msg_more(&m);
        if (n < sizeof(parts) / sizeof(parts[0]))
            parts[n++] = m;
        else {
            truncated = true;
            zmq_msg_close(&m);
        }
    }

    struct zap_frame frames[ZAP_MAX_FRAMES] = {{0}};
    size_t nf = 0;
    bool envelope = n >= 2 && zmq_msg_size(&parts[1]) == 0;
    for (size_t i = 2; envelope && i < n; i++, nf++) {
        frames[nf].data = zmq_msg_data(&parts[i]);
        frames[nf].size = zmq_msg_size(&parts[i]);
    }
    struct zap_decision d;
    zap_decide(z->allow, frames, nf, truncated, &d);

    if (envelope && d.verdict != ZAP_DROP) {
        const char *user = d.verdict == ZAP_ALLOW ? d.key_z85 : "";
        /* [routing id][empty][version][request id][status][text][user id][metadata] */
        if (send_frame(z->sock, zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), true) != 0 ||
            send_frame(z->sock, "", 0, true) != 0 ||
            send_frame(z->sock, ZAP_VERSION, strlen(ZAP_VERSION), true) != 0 ||
            send_frame(z->sock, frames[1].data, frames[1].size, true) != 0 ||
            send_frame(z->sock, d.status_code, strlen(d.status_code), true) != 0 ||
            send_frame(z->sock, d.reason, strlen(d.reason), true) != 0 ||
            send_frame(z->sock, user, strlen(user), true) != 0 ||
            send_frame(z->sock, "", 0, false) != 0) {
            /* The handshake then times out on libzmq's side; never an admission. */
            if (d.verdict == ZAP_ALLOW)
                decide(&d, ZAP_DROP, "ZAP reply could not be sent");
        }
    }
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
    if (d.verdict == ZAP_ALLOW)
        return 1;
    if (refused)
        refused(arg, &d);
    return 0;
}

size_t zap_handler_drain(struct zap_handler *z, size_t max, zap_refused_fn refused, void *arg)
{
    size_t allowed = 0;
    for (size_t i = 0; i < max; i++) {
        int rc = serve_one(z, refused, arg);
        if (rc < 0)
            break;
        allowed += (size_t)rc;
    }
    return allowed;
}
