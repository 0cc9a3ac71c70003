/* worker: one epoll loop per thread: its own SO_REUSEPORT listener, the
 * sessions it accepted, their timers, and the drain. Level-triggered epoll;
 * every session's interest is recomputed after it runs. */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "mono.h"

#define WORKER_BACKLOG 1024
#define WORKER_EVENTS 128
#define WORKER_ACCEPT_BATCH 64       /* accepts per wake-up, so sessions are served too */
#define WORKER_ACCEPT_PAUSE_MS 100   /* listener rest after running out of descriptors */
#define WORKER_EVICT_MIN (64u << 10) /* sessions holding less are never evicted */
#define WORKER_EVICT_MAX 64          /* evictions per loop iteration, so one scan
                                      * per eviction stays cheap */
#define WORKER_SESSION_BITS 40       /* session id: worker index above, counter below;
                                      * stays below 2^53 so JSON numbers keep it exact */

/* Our bookkeeping around one session. */
struct worker_conn {
    struct session *s;              /* owned */
    struct worker_conn *prev, *next; /* w->conns, or w->dead once retired */
    struct worker_conn *ready_next; /* w->ready */
    struct worker_conn *jwait_next; /* w->jwait */
    struct peer_key key;            /* the client's address, as peer_limit counts it */
    bool in_handshake;              /* counted as a handshake in progress (peer_limit) */
    uint32_t registered;            /* epoll events registered now */
    bool in_ready;                  /* on w->ready */
    bool in_jwait;                  /* on w->jwait */
    bool dead;                      /* out of epoll; freed at the end of the iteration */
};

struct worker {
    unsigned index;
    const struct session_env *env;  /* borrowed */
    SSL_CTX *ssl_ctx;               /* borrowed */
    struct node_worker_stats *st;   /* borrowed */
    struct peer_limit *peers;       /* borrowed; NULL: no per-address limits */
    uint64_t refused_logged[3];     /* rejected, rejected_addr, rejected_addr_hs at the last
                                     * summary line */
    uint64_t first_byte_logged;     /* first_byte_timeouts at the last summary line */
    uint64_t next_refused_log_ms;
    uint64_t budget_rescan_ms;      /* over the memory budget with nothing to evict here:
                                     * no scan again before this */
    int epfd;
    int listen_fd;                  /* -1 once draining */
    int wake_fd;                    /* eventfd: main -> worker */
    int journal_fd;                 /* eventfd: journal -> worker, durable seq advanced */
    int notify_fd;                  /* eventfd: worker -> main when the thread ends; borrowed */
    uint16_t port;
    pthread_t thread;
    bool started;
    atomic_bool drain_req, stop_req, finished;
    atomic_uint_fast64_t stall_ms;  /* debug hook request */
    bool draining;
    bool listen_paused;             /* out of descriptors: listener off for a moment */
    uint64_t listen_resume_ms;
    struct worker_conn *conns;      /* every live session */
    size_t nconns;
    struct worker_conn *ready;      /* sessions to run without waiting for epoll */
    struct worker_conn *jwait;      /* sessions holding replies for the journal */
    struct worker_conn *dead;       /* retired this iteration, freed at its end */
    uint64_t session_counter;
    uint64_t next_sweep_ms;
};

/* epoll data.ptr tags for the two non-session descriptors. */
static char worker_tag_listen, worker_tag_wake, worker_tag_journal;

static int worker_listen(struct worker *w, const struct sockaddr *sa, socklen_t len, char *err,
                         size_t errlen)
{
    int one = 1;
    if (w->index == 0) {
        /* SO_REUSEPORT would let us share a port another berth-node (same
         * user) is serving; a plain bind first makes that an error. */
        int probe = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0) {
            snprintf(err, errlen, "socket: %s", strerror(errno));
            return -1;
        }
        if (setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
            bind(probe, sa, len) != 0) {
            snprintf(err, errlen, "bind: %s", strerror(errno));
            close(probe);
            return -1;
        }
        close(probe);
    }
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
        snprintf(err, errlen, "setsockopt: %s", strerror(errno));
        close(fd);
        return -1;
    }
    /* Replies go out at once, not after Nagle waits for an ACK. Set on the
     * listener: Linux copies it to every accepted socket, which saves a
     * syscall per connection. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
        snprintf(err, errlen, "setsockopt(TCP_NODELAY): %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (bind(fd, sa, len) != 0) {
        snprintf(err, errlen, "bind: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, WORKER_BACKLOG) != 0) {
        snprintf(err, errlen, "listen: %s", strerror(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_storage got;
    socklen_t gotlen = sizeof(got);
    if (getsockname(fd, (struct sockaddr *)&got, &gotlen) != 0) {
        snprintf(err, errlen, "getsockname: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (got.ss_family == AF_INET6)
        w->port = ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
    else
        w->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    return fd;
}

static int worker_epoll_add(struct worker *w, int fd, uint32_t events, void *ptr)
{
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    return epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev);
}

struct worker *worker_new(const struct worker_config *cfg, char *err, size_t errlen)
{
    struct worker *w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->index = cfg->index;
    w->env = cfg->env;
    w->ssl_ctx = cfg->ssl_ctx;
    w->st = cfg->stats;
    w->peers = cfg->peers;
    w->notify_fd = cfg->notify_fd;
    w->epfd = w->listen_fd = w->wake_fd = w->journal_fd = -1;
    atomic_init(&w->drain_req, false);
    atomic_init(&w->stop_req, false);
    atomic_init(&w->finished, false);
    atomic_init(&w->stall_ms, 0);

    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0) {
        snprintf(err, errlen, "epoll_create1: %s", strerror(errno));
        goto fail;
    }
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->wake_fd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    /* The journal thread writes it after each fsync (worker_start hands it
     * over): sessions holding ACKs run then; the loop never waits for the disk. */
    w->journal_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->journal_fd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (worker_epoll_add(w, w->journal_fd, EPOLLIN, &worker_tag_journal) != 0) {
        snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
        goto fail;
    }
    w->listen_fd = worker_listen(w, cfg->listen, cfg->listen_len, err, errlen);
    if (w->listen_fd < 0)
        goto fail;
    if (worker_epoll_add(w, w->wake_fd, EPOLLIN, &worker_tag_wake) != 0 ||
        worker_epoll_add(w, w->listen_fd, EPOLLIN, &worker_tag_listen) != 0) {
        snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
        goto fail;
    }
    return w;
fail:
    worker_free(w);
    return NULL;
}

uint16_t worker_port(const struct worker *w) { return w->port; }

static void worker_wake(struct worker *w)
{
    uint64_t one = 1;
    ssize_t r;
    do
        r = write(w->wake_fd, &one, sizeof(one));
    while (r < 0 && errno == EINTR);
    /* EAGAIN means the counter is saturated: the worker is woken anyway. */
}

void worker_drain(struct worker *w)
{
    atomic_store(&w->drain_req, true);
    worker_wake(w);
}

void worker_stop(struct worker *w)
{
    atomic_store(&w->stop_req, true);
    worker_wake(w);
}

void worker_debug_stall(struct worker *w, uint64_t ms)
{
    atomic_store(&w->stall_ms, ms);
    worker_wake(w);
}

bool worker_finished(const struct worker *w) { return atomic_load(&w->finished); }

static void worker_peer_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (!inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)))
            snprintf(host, sizeof(host), "?");
        snprintf(out, len, "[%s]:%u", host, ntohs(a->sin6_port));
    } else if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (!inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)))
            snprintf(host, sizeof(host), "?");
        snprintf(out, len, "%s:%u", host, ntohs(a->sin_port));
    } else {
        snprintf(out, len, "unknown");
    }
}

static void worker_ready_push(struct worker *w, struct worker_conn *c)
{
    if (c->in_ready)
        return;
    c->in_ready = true;
    c->ready_next = w->ready;
    w->ready = c;
}

static void worker_ready_remove(struct worker *w, struct worker_conn *c)
{
    if (!c->in_ready)
        return;
    for (struct worker_conn **p = &w->ready; *p; p = &(*p)->ready_next) {
        if (*p == c) {
            *p = c->ready_next;
            break;
        }
    }
    c->in_ready = false;
    c->ready_next = NULL;
}

/* Takes c out of the live list; the memory and the socket go at the end of
 * the loop iteration, so no pointer from this iteration dangles. No
 * EPOLL_CTL_DEL: the socket is never duplicated, so closing it takes it
 * out of epoll, and no epoll_wait runs before that close (events already
 * fetched for it are skipped through c->dead). One syscall less per
 * connection. */
static void worker_jwait_remove(struct worker *w, struct worker_conn *c)
{
    if (!c->in_jwait)
        return;
    for (struct worker_conn **p = &w->jwait; *p; p = &(*p)->jwait_next) {
        if (*p == c) {
            *p = c->jwait_next;
            break;
        }
    }
    c->in_jwait = false;
    c->jwait_next = NULL;
}

static void worker_retire(struct worker *w, struct worker_conn *c)
{
    if (c->dead)
        return;
    worker_ready_remove(w, c);
    worker_jwait_remove(w, c);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    c->dead = true;
    c->prev = NULL;
    c->next = w->dead;
    w->dead = c;
}

static void worker_conn_free(struct worker *w, struct worker_conn *c)
{
    if (w->peers)
        peer_limit_release(w->peers, &c->key, c->in_handshake);
    session_free(c->s);
    node_stats_sub(&w->st->sessions, 1);
    atomic_fetch_sub(&w->env->stats->connections, 1);
    free(c);
}

static void worker_reap(struct worker *w)
{
    while (w->dead) {
        struct worker_conn *c = w->dead;
        w->dead = c->next;
        worker_conn_free(w, c);
    }
}

/* After a session ran: retire it, or update its epoll interest. */
static void worker_after(struct worker *w, struct worker_conn *c)
{
    if (c->in_handshake && session_state(c->s) != SESSION_HANDSHAKE) {
        /* Done, failed or closed: its per-address handshake slot is free. */
        c->in_handshake = false;
        if (w->peers)
            peer_limit_handshake_done(w->peers, &c->key);
    }
    if (session_state(c->s) == SESSION_CLOSED) {
        worker_retire(w, c);
        return;
    }
    uint32_t ev = session_events(c->s);
    if (ev != c->registered) {
        struct epoll_event e = {.events = ev, .data.ptr = c};
        if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, session_fd(c->s), &e) != 0) {
            log_warn("epoll_ctl_failed", "op=mod session=%" PRIu64 " error=\"%s\"",
                     session_id(c->s), strerror(errno));
            worker_retire(w, c);
            return;
        }
        c->registered = ev;
    }
    if (session_needs_rerun(c->s))
        worker_ready_push(w, c);
    if (!c->in_jwait && session_journal_wait(c->s)) {
        c->in_jwait = true;
        c->jwait_next = w->jwait;
        w->jwait = c;
    }
}

/* The journal made records durable: every session holding ACKs runs. */
static void worker_run_jwait(struct worker *w, uint64_t now)
{
    uint64_t v;
    while (read(w->journal_fd, &v, sizeof(v)) < 0 && errno == EINTR)
        ;
    struct worker_conn *list = w->jwait;
    w->jwait = NULL;
    while (list) {
        struct worker_conn *c = list;
        list = c->jwait_next;
        c->jwait_next = NULL;
        c->in_jwait = false;
        if (c->dead)
            continue;
        session_handle(c->s, 0, now);
        worker_after(w, c);
    }
}

static void worker_admit(struct worker *w, int fd, const struct sockaddr_storage *ss, uint64_t now)
{
    char peer[SESSION_PEER_MAX + 1];
    worker_peer_text(ss, peer, sizeof(peer));

    uint64_t open = atomic_fetch_add(&w->env->stats->connections, 1);
    if (open >= w->env->max_connections) {
        /* Over the limit: close at once; existing sessions are unaffected. */
        atomic_fetch_sub(&w->env->stats->connections, 1);
        close(fd);
        node_stats_add(&w->st->rejected, 1);
        log_debug("connection_rejected", "peer=%s reason=max_connections limit=%u", peer,
                  w->env->max_connections);
        return;
    }
    /* One address may hold only so many connections and handshakes, so it
     * cannot take every slot (bare TCP connections reopened at each
     * timeout would). Checked after --max-connections: a full node refuses
     * without touching the table. */
    struct peer_key key;
    peer_key_from_sockaddr(ss, &key);
    if (w->peers) {
        enum peer_limit_verdict v = peer_limit_admit(w->peers, &key);
        if (v != PEER_LIMIT_OK) {
            atomic_fetch_sub(&w->env->stats->connections, 1);
            close(fd);
            bool hs = v == PEER_LIMIT_HANDSHAKES;
            node_stats_add(hs ? &w->st->rejected_addr_hs : &w->st->rejected_addr, 1);
            log_debug("connection_rejected", "peer=%s reason=%s limit=%u", peer,
                      hs ? "max_handshakes_per_addr" : "max_connections_per_addr",
                      hs ? w->env->max_handshakes_per_addr : w->env->max_connections_per_addr);
            return;
        }
    }
    /* TCP_NODELAY came with the socket from the listener (worker_listen). */
    struct tls_conn *tls = tls_conn_new_server(w->ssl_ctx, fd); /* owns fd from here */
    struct session *s = NULL;
    struct worker_conn *c = NULL;
    uint64_t id = ((uint64_t)w->index << WORKER_SESSION_BITS) |
                  (++w->session_counter & ((1ull << WORKER_SESSION_BITS) - 1));
    if (tls)
        s = session_new(w->env, w->st, id, peer, tls, now); /* owns tls from here */
    if (s)
        c = calloc(1, sizeof(*c));
    if (!c) {
        session_free(s);
        if (w->peers)
            peer_limit_release(w->peers, &key, true);
        atomic_fetch_sub(&w->env->stats->connections, 1);
        log_warn("session_create_failed", "peer=%s reason=out_of_memory", peer);
        return;
    }
    c->s = s;
    c->key = key;
    c->in_handshake = true;
    c->registered = session_events(s);
    if (worker_epoll_add(w, session_fd(s), c->registered, c) != 0) {
        log_warn("epoll_ctl_failed", "op=add error=\"%s\"", strerror(errno));
        session_free(s);
        free(c);
        if (w->peers)
            peer_limit_release(w->peers, &key, true);
        atomic_fetch_sub(&w->env->stats->connections, 1);
        return;
    }
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    node_stats_add(&w->st->accepted, 1);
    node_stats_add(&w->st->sessions, 1);
    log_debug("session_accept", "session=%" PRIu64 " peer=%s worker=%u", id, peer, w->index);
}

static void worker_listen_pause(struct worker *w, bool pause, uint64_t now)
{
    struct epoll_event ev = {.events = pause ? 0 : EPOLLIN, .data.ptr = &worker_tag_listen};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, w->listen_fd, &ev) != 0) {
        log_warn("epoll_ctl_failed", "op=mod what=listener error=\"%s\"", strerror(errno));
        return;
    }
    w->listen_paused = pause;
    w->listen_resume_ms = now + WORKER_ACCEPT_PAUSE_MS;
}

static void worker_accept(struct worker *w, uint64_t now)
{
    for (int i = 0; i < WORKER_ACCEPT_BATCH && w->listen_fd >= 0; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(w->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            worker_admit(w, fd, &ss, now);
            continue;
        }
        switch (errno) {
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
            continue;
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
            return;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            /* Level-triggered: the pending connection would wake us in a
             * loop; rest the listener and let sessions close meanwhile. */
            log_warn("accept_failed", "worker=%u error=\"%s\" pause_ms=%d", w->index,
                     strerror(errno), WORKER_ACCEPT_PAUSE_MS);
            worker_listen_pause(w, true, now);
            return;
        default:
            log_warn("accept_failed", "worker=%u error=\"%s\"", w->index, strerror(errno));
            return;
        }
    }
}

/* One line per WORKER_REFUSED_LOG_MS at most, when connections were
 * refused or timed out before their first byte since the last: the counts
 * an operator needs, without a line per connection an attacker opens. */
static void worker_log_refused(struct worker *w, uint64_t now)
{
    if (now < w->next_refused_log_ms)
        return;
    uint64_t cur[3] = {node_stats_get(&w->st->rejected), node_stats_get(&w->st->rejected_addr),
                       node_stats_get(&w->st->rejected_addr_hs)};
    uint64_t fb = node_stats_get(&w->st->first_byte_timeouts);
    if (cur[0] == w->refused_logged[0] && cur[1] == w->refused_logged[1] &&
        cur[2] == w->refused_logged[2] && fb == w->first_byte_logged)
        return;
    log_warn("connections_refused",
             "worker=%u max_connections=%" PRIu64 " max_connections_per_addr=%" PRIu64
             " max_handshakes_per_addr=%" PRIu64 " first_byte_timeout=%" PRIu64
             " period_ms=%d total_refused=%" PRIu64,
             w->index, cur[0] - w->refused_logged[0], cur[1] - w->refused_logged[1],
             cur[2] - w->refused_logged[2], fb - w->first_byte_logged, WORKER_REFUSED_LOG_MS,
             cur[0] + cur[1] + cur[2]);
    memcpy(w->refused_logged, cur, sizeof(cur));
    w->first_byte_logged = fb;
    w->next_refused_log_ms = now + WORKER_REFUSED_LOG_MS;
}

static void worker_sweep(struct worker *w, uint64_t now)
{
    struct worker_conn *c = w->conns, *next;
    for (; c; c = next) {
        next = c->next;
        session_sweep(c->s, now);
        worker_after(w, c);
    }
    worker_log_refused(w, now);
    if (w->listen_paused && w->listen_fd >= 0 && now >= w->listen_resume_ms)
        worker_listen_pause(w, false, now);
    w->next_sweep_ms = now + WORKER_SWEEP_MS;
}

/* Stops accepting; closing the socket also drops its backlog, so the kernel
 * sends new connections to the other workers' listeners. */
static void worker_close_listener(struct worker *w)
{
    if (w->listen_fd < 0)
        return;
    if (epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->listen_fd, NULL) != 0)
        log_warn("epoll_ctl_failed", "op=del what=listener error=\"%s\"", strerror(errno));
    close(w->listen_fd);
    w->listen_fd = -1;
}

static void worker_begin_drain(struct worker *w, uint64_t now)
{
    w->draining = true;
    worker_close_listener(w);
    log_debug("worker_drain", "worker=%u sessions=%zu", w->index, w->nconns);
    struct worker_conn *c = w->conns, *next;
    for (; c; c = next) {
        next = c->next;
        session_drain(c->s, now);
        worker_after(w, c);
    }
}

/* A session's rank for eviction: slow readers (replies queued for a client
 * that does not read them) above all others, then by memory held. */
static uint64_t worker_evict_rank(const struct session *s)
{
    size_t m = session_memory(s);
    if (session_state(s) == SESSION_CLOSED || m < WORKER_EVICT_MIN)
        return 0;
    return (session_slow_reader(s) ? 1ull << 63 : 0) | (uint64_t)m;
}

/* Over --max-session-memory: evicts this worker's highest-ranked session
 * while no other worker reported a higher one, until the node is under
 * its budget. A worker sees only its own sessions; each publishes the rank
 * of its top one (at most a loop tick old), so across the node the biggest
 * slow readers go first. The memory is counted as returned when the
 * session is freed, at the end of this iteration; until then what was
 * evicted here is subtracted by hand. */
static void worker_enforce_budget(struct worker *w, uint64_t now)
{
    size_t budget = w->env->max_session_memory;
    struct node_stats *ns = w->env->stats;
    if (budget == 0)
        return;
    uint64_t freed = 0;
    for (int round = 0; round < WORKER_EVICT_MAX; round++) {
        uint64_t used = node_stats_get(&ns->session_memory);
        used = used > freed ? used - freed : 0;
        if (used <= budget)
            break;
        if (now < w->budget_rescan_ms)
            return;
        struct worker_conn *best = NULL;
        uint64_t best_rank = 0;
        for (struct worker_conn *c = w->conns; c; c = c->next) {
            uint64_t r = worker_evict_rank(c->s);
            if (r > best_rank) {
                best = c;
                best_rank = r;
            }
        }
        atomic_store_explicit(&w->st->biggest_session, best_rank, memory_order_relaxed);
        if (!best) {
            /* Many small sessions (or another worker's) hold the memory: a
             * scan per loop iteration would only burn CPU. */
            w->budget_rescan_ms = now + WORKER_TICK_MS;
            return;
        }
        for (unsigned i = 0; i < ns->nworkers; i++)
            if (i != w->index && node_stats_get(&ns->workers[i].biggest_session) > best_rank)
                return; /* theirs goes first */
        freed += session_memory(best->s);
        session_evict(best->s, used, now);
        worker_retire(w, best);
    }
    atomic_store_explicit(&w->st->biggest_session, 0, memory_order_relaxed);
}

static void worker_run_ready(struct worker *w, uint64_t now)
{
    struct worker_conn *list = w->ready;
    w->ready = NULL;
    while (list) {
        struct worker_conn *c = list;
        list = c->ready_next;
        c->ready_next = NULL;
        c->in_ready = false;
        if (c->dead)
            continue;
        session_handle(c->s, 0, now);
        worker_after(w, c);
    }
}

/* The --debug-hooks stall: the loop stops turning (ticks freeze), as a
 * wedged worker would; only a stop request cuts it short. */
static void worker_do_stall(struct worker *w, uint64_t ms)
{
    log_warn("debug_stall", "worker=%u stall_ms=%" PRIu64, w->index, ms);
    uint64_t until = mono_now_ms() + ms;
    while (!atomic_load(&w->stop_req)) {
        uint64_t now = mono_now_ms();
        if (now >= until)
            break;
        uint64_t left = until - now < 50 ? until - now : 50;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000L};
        nanosleep(&ts, NULL); /* EINTR only shortens one slice */
    }
    log_info("debug_stall_end", "worker=%u", w->index);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[WORKER_EVENTS];
    w->next_sweep_ms = mono_now_ms() + WORKER_SWEEP_MS;

    while (!atomic_load(&w->stop_req)) {
        node_stats_add(&w->st->ticks, 1);
        uint64_t stall = atomic_exchange(&w->stall_ms, 0);
        if (stall)
            worker_do_stall(w, stall);
        uint64_t now = mono_now_ms();
        if (!w->draining && atomic_load(&w->drain_req))
            worker_begin_drain(w, now);
        worker_reap(w);
        if (w->draining && w->nconns == 0)
            break;

        int timeout = WORKER_TICK_MS;
        if (w->ready)
            timeout = 0;
        else if (w->next_sweep_ms <= now)
            timeout = 0;
        else if (w->next_sweep_ms - now < (uint64_t)timeout)
            timeout = (int)(w->next_sweep_ms - now);
        int n = epoll_wait(w->epfd, evs, WORKER_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            log_error("epoll_wait_failed", "worker=%u error=\"%s\"", w->index, strerror(errno));
            break;
        }
        now = mono_now_ms();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &worker_tag_listen) {
                worker_accept(w, now);
            } else if (p == &worker_tag_journal) {
                worker_run_jwait(w, now);
            } else if (p == &worker_tag_wake) {
                uint64_t v;
                while (read(w->wake_fd, &v, sizeof(v)) < 0 && errno == EINTR)
                    ;
            } else {
                struct worker_conn *c = p;
                if (c->dead)
                    continue;
                session_handle(c->s, evs[i].events, now);
                worker_after(w, c);
            }
        }
        worker_run_ready(w, now);
        if (now >= w->next_sweep_ms)
            worker_sweep(w, now);
        worker_enforce_budget(w, now);
        worker_reap(w);
    }

    /* Stopped (drain timeout), drained, or the loop failed: whatever is left
     * closes now, the listener first so no connection waits in its backlog. */
    worker_close_listener(w);
    size_t forced = w->nconns;
    while (w->conns)
        worker_retire(w, w->conns);
    worker_reap(w);
    if (forced > 0)
        log_info("worker_forced_close", "worker=%u sessions=%zu", w->index, forced);
    atomic_store(&w->finished, true);
    uint64_t one = 1;
    if (w->notify_fd >= 0 && write(w->notify_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_warn("notify_failed", "worker=%u error=\"%s\"", w->index, strerror(errno));
    return NULL;
}

int worker_start(struct worker *w, char *err, size_t errlen)
{
    if (w->env->journal && journal_add_waiter(w->env->journal, w->journal_fd) != 0) {
        snprintf(err, errlen, "journal: too many waiters");
        return -1;
    }
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0) {
        snprintf(err, errlen, "pthread_create: %s", strerror(rc));
        return -1;
    }
    w->started = true;
    return 0;
}

void worker_join(struct worker *w)
{
    if (!w || !w->started)
        return;
    worker_stop(w);
    int rc = pthread_join(w->thread, NULL);
    if (rc != 0)
        log_error("pthread_join_failed", "worker=%u error=\"%s\"", w->index, strerror(rc));
    w->started = false;
}

void worker_free(struct worker *w)
{
    if (!w)
        return;
    worker_join(w);
    /* A thread that never ran leaves no sessions; one that ran freed its own. */
    while (w->conns)
        worker_retire(w, w->conns);
    worker_reap(w);
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    if (w->journal_fd >= 0)
        close(w->journal_fd);
    if (w->epfd >= 0)
        close(w->epfd);
    free(w);
}
