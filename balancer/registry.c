/* registry: the balancer's node table (hash index by id), the liveness state
 * machine of docs/DESIGN.md "Liveness" with flap damping, client reports and
 * ejection, the panic guard rail, and the rotation of healthy nodes. */
#include "registry.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "mono.h"

/* One node. The public view comes first so a registry_node pointer and its
 * entry are the same address. Entries are allocated one by one, so pointers
 * handed out stay put while the arrays that index them move. */
struct reg_entry {
    struct registry_node pub; /* what callers see */
    uint64_t hash;            /* id_hash(pub.id), kept for the index */
    size_t all_idx;           /* position in registry.all */
    size_t rot_idx;           /* position in registry.rotation, NOT_IN_ROTATION if out */
    bool self_draining;       /* the process said LEAVE or draining: true */
    uint64_t streak_ms;       /* when the last heartbeat counted towards rise */
    uint64_t silence_exit_ms; /* when silence took it out of rotation; 0 = not that */
    /* its connection closed, or the balancer refuses its messages: gone,
     * not silent, so panic never holds it; cleared by an accepted message */
    bool gone;
    /* flap damping: the times of the last flap_count + 1 downs, a ring */
    uint64_t downs[REGISTRY_FLAP_COUNT_MAX + 1];
    uint32_t downs_next; /* ring slot the next down goes into */
    uint32_t ndowns;     /* downs stored, at most flap_count + 1 */
    bool held;                /* a flap hold has been applied */
    uint64_t hold_started_ms; /* when the latest flap hold began */
    uint64_t hold_until_ms;   /* end of the latest flap hold */
    uint32_t holdoff_ms;      /* length of the latest hold; 0 = none since it settled */
    /* client reports: distinct reporters and the time of their latest report */
    struct reg_report {
        uint64_t who; /* reporter hash, never 0; 0 = empty slot */
        uint64_t at_ms;
    } reports[REGISTRY_REPORT_SLOTS];
    enum report_reason last_report; /* reason of the latest report */
    uint64_t eject_until_ms;        /* end of the current ejection */
    uint64_t eject_ended_ms;        /* when the latest ejection ended; 0 = never */
    uint32_t eject_len_ms;          /* length of the latest ejection; 0 = none yet */
};

/* One reporter's rate: reports counted in a one-second window. */
struct reporter_rate {
    uint64_t who;       /* reporter hash; 0 = empty */
    uint64_t second_ms; /* start of the window being counted */
    uint32_t count;     /* reports in that window */
};

#define NOT_IN_ROTATION SIZE_MAX
#define INDEX_MIN_SLOTS 16

struct registry {
    struct registry_config cfg;
    registry_clock_fn clock;
    void *clock_ctx;
    uint64_t born_ms; /* clock time at registry_new, for warmup_ms */
    registry_change_fn on_change;
    void *on_change_ctx;

    struct reg_entry **all; /* every node, dense, order changes on removal */
    size_t nall;
    size_t all_cap;

    struct reg_entry **rotation; /* healthy nodes, dense, order changes on removal */
    size_t nrot;
    size_t rot_cap;

    /* id -> entry: open addressing, linear probing, deletion by backward
     * shift (no tombstones), kept at most half full. */
    struct reg_entry **slots;
    size_t nslots; /* a power of two */

    uint64_t epoch;
    size_t state_count[NODE_STATE_COUNT];

    registry_panic_fn on_panic;
    void *on_panic_ctx;
    bool panic;               /* keeping silent nodes in rotation */
    uint64_t panic_since_ms;  /* clock time panic began */
    size_t panic_held;        /* silent nodes in rotation at the last pass */
    char panic_reason[200];   /* "" when not in panic */
    size_t panic_expired_now; /* nodes the hold bound let go in the current panic */
    struct registry_guard_stats guard;

    /* per-reporter rates, direct-mapped by reporter hash: a colliding
     * reporter takes the slot over, so memory is fixed whatever the clients */
    struct reporter_rate reporters[REGISTRY_REPORTER_TABLE];
    struct registry_report_stats report_stats;
};

static const char *const state_names[NODE_STATE_COUNT] = {
    [NODE_JOINING] = "joining",
    [NODE_HEALTHY] = "healthy",
    [NODE_SUSPECT] = "suspect",
    [NODE_DOWN] = "down",
    [NODE_DRAINING] = "draining",
    [NODE_FLAPPING] = "flapping",
    [NODE_EJECTED] = "ejected",
};

static const char *const report_reason_names[REPORT_REASON_COUNT] = {
    [REPORT_CONNECT] = "connect",
    [REPORT_TLS] = "tls",
    [REPORT_TIMEOUT] = "timeout",
    [REPORT_PROTOCOL] = "protocol",
};

const char *report_reason_name(enum report_reason reason)
{
    if ((unsigned)reason >= REPORT_REASON_COUNT)
        return "unknown";
    return report_reason_names[reason];
}

int report_reason_parse(const char *text, enum report_reason *out)
{
    for (int i = 0; text != NULL && i < REPORT_REASON_COUNT; i++)
        if (strcmp(text, report_reason_names[i]) == 0) {
            *out = (enum report_reason)i;
            return 0;
        }
    return -1;
}

const char *node_state_name(enum node_state s)
{
    if ((unsigned)s >= NODE_STATE_COUNT)
        return "unknown";
    return state_names[s];
}

/* FNV-1a with its finaliser (shared/hash.h): FNV alone clusters similar
 * ids ("n1", "n2") in the low bits that pick the slot. */
static uint64_t id_hash(const char *id) { return hash_str(id); }

/* ---- the id index ---- */

static struct reg_entry *index_find(const struct registry *r, const char *id, uint64_t h)
{
    size_t mask = r->nslots - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        struct reg_entry *e = r->slots[i];
        if (e == NULL)
            return NULL; /* never full, so an empty slot always ends the probe */
        if (e->hash == h && strcmp(e->pub.id, id) == 0)
            return e;
    }
}

static void index_put_slot(struct reg_entry **slots, size_t nslots, struct reg_entry *e)
{
    size_t mask = nslots - 1;
    size_t i = (size_t)e->hash & mask;
    while (slots[i] != NULL)
        i = (i + 1) & mask;
    slots[i] = e;
}

/* Makes room for one more entry. Returns 0 or -1 on out of memory. */
static int index_reserve(struct registry *r)
{
    if ((r->nall + 1) * 2 <= r->nslots)
        return 0;
    size_t nslots = r->nslots * 2;
    struct reg_entry **slots = calloc(nslots, sizeof *slots);
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i] != NULL)
            index_put_slot(slots, nslots, r->slots[i]);
    free(r->slots);
    r->slots = slots;
    r->nslots = nslots;
    return 0;
}

static void index_remove(struct registry *r, const struct reg_entry *e)
{
    size_t mask = r->nslots - 1;
    size_t i = (size_t)e->hash & mask;
    while (r->slots[i] != e)
        i = (i + 1) & mask;
    r->slots[i] = NULL;
    /* Backward shift: move later members of the probe run into the hole
     * when their home slot does not lie cyclically in (hole, j]. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; r->slots[j] != NULL; j = (j + 1) & mask) {
        size_t home = (size_t)r->slots[j]->hash & mask;
        bool home_in_range = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!home_in_range) {
            r->slots[hole] = r->slots[j];
            r->slots[j] = NULL;
            hole = j;
        }
    }
}

/* ---- dense arrays ---- */

static int grow(struct reg_entry ***arr, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    while (ncap < need)
        ncap *= 2;
    struct reg_entry **n = realloc(*arr, ncap * sizeof *n);
    if (n == NULL)
        return -1;
    *arr = n;
    *cap = ncap;
    return 0;
}

static void rotation_add(struct registry *r, struct reg_entry *e)
{
    /* rot_cap is kept >= all_cap when a node is added, so this never fails */
    e->rot_idx = r->nrot;
    r->rotation[r->nrot++] = e;
    r->epoch++;
}

static void rotation_remove(struct registry *r, struct reg_entry *e)
{
    size_t i = e->rot_idx;
    struct reg_entry *last = r->rotation[--r->nrot];
    r->rotation[i] = last;
    last->rot_idx = i;
    e->rot_idx = NOT_IN_ROTATION;
    r->epoch++;
}

/* ---- state machine ---- */

static void set_reason(struct reg_entry *e, const char *reason)
{
    snprintf(e->pub.reason, sizeof e->pub.reason, "%s", reason);
}

/* Moves e to state `to` with `reason` (ignored for healthy, which has none),
 * keeps the rotation and the counts in step, and reports the change. */
static void flap_note_down(struct registry *r, struct reg_entry *e, uint64_t now);

static void set_state(struct registry *r, struct reg_entry *e, enum node_state to,
                      const char *reason)
{
    enum node_state from = e->pub.state;
    set_reason(e, to == NODE_HEALTHY ? "" : reason);
    if (from == to)
        return;
    e->silence_exit_ms = 0; /* the reap pass sets it again when silence was the cause */
    if (to == NODE_DOWN && from != NODE_DRAINING)
        flap_note_down(r, e, registry_now(r));
    /* An ejection ends when its time is over, not when silence or an
     * unhealthy heartbeat takes the node down meanwhile (set_risen puts it
     * back to ejected until eject_until_ms); a new process or a drain ends
     * it early. Its end is kept for the doubling of the next ejection. */
    if (from == NODE_EJECTED) {
        uint64_t now = registry_now(r);
        e->eject_ended_ms = to == NODE_DOWN && e->eject_until_ms > now ? e->eject_until_ms : now;
    }
    e->pub.state = to;
    e->pub.state_since_ms = registry_now(r);
    r->state_count[from]--;
    r->state_count[to]++;
    if (from == NODE_HEALTHY) {
        rotation_remove(r, e);
        e->pub.left_rotation_ms = e->pub.state_since_ms;
    }
    else if (to == NODE_HEALTHY)
        rotation_add(r, e);
    if (r->on_change != NULL)
        r->on_change(r->on_change_ctx, &e->pub, from, to);
}

/* rise and fall of 0 would mean "no heartbeat needed"; read them as 1. */
static uint32_t rise_of(const struct registry *r)
{
    return r->cfg.rise ? r->cfg.rise : 1;
}

static uint32_t fall_of(const struct registry *r)
{
    return r->cfg.fall ? r->cfg.fall : 1;
}

/* A message arrived: extend or restart the run of heartbeats in a row.
 * More than 1.5 intervals since the last one breaks the run. Heartbeats
 * closer than half an interval to the one that last counted do not count:
 * after a partition heals, the heartbeats queued in the old TCP connection
 * arrive in one burst, and that says nothing about the node being reachable
 * for `rise` intervals now. */
static void advance_streak(const struct registry *r, struct reg_entry *e, uint64_t now)
{
    uint64_t gap = now >= e->pub.last_seen_ms ? now - e->pub.last_seen_ms : 0;
    uint64_t since_counted = now >= e->streak_ms ? now - e->streak_ms : 0;
    if (gap * 2 > (uint64_t)r->cfg.interval_ms * 3) {
        e->pub.good_streak = 1;
        e->streak_ms = now;
    } else if (since_counted * 2 >= r->cfg.interval_ms && e->pub.good_streak < UINT32_MAX) {
        e->pub.good_streak++;
        e->streak_ms = now;
    }
    e->pub.last_seen_ms = now;
}

/* ---- flap damping ---- */

static uint32_t flap_count_of(const struct registry *r)
{
    return r->cfg.flap_count < REGISTRY_FLAP_COUNT_MAX ? r->cfg.flap_count
                                                       : REGISTRY_FLAP_COUNT_MAX;
}

/* Records one down. A node that stayed up for a whole window since its last
 * down has settled: its back-off starts again from the first step. */
static void flap_note_down(struct registry *r, struct reg_entry *e, uint64_t now)
{
    uint32_t k = flap_count_of(r);
    if (k == 0)
        return;
    uint32_t slots = k + 1;
    if (e->ndowns > 0) {
        uint64_t last = e->downs[(e->downs_next + slots - 1) % slots];
        if (now - last > r->cfg.flap_window_ms)
            e->holdoff_ms = 0;
    }
    e->downs[e->downs_next] = now;
    e->downs_next = (e->downs_next + 1) % slots;
    if (e->ndowns < slots)
        e->ndowns++;
}

/* True when e went down more than flap_count times within the window. The
 * ring holds flap_count + 1 downs, so that is: the ring is full and its
 * oldest down lies within the window. */
static bool flap_too_many(const struct registry *r, const struct reg_entry *e, uint64_t now)
{
    uint32_t k = flap_count_of(r);
    if (k == 0 || e->ndowns < k + 1)
        return false;
    uint64_t oldest = e->downs[e->downs_next]; /* the ring is full: next is oldest */
    return now - oldest <= r->cfg.flap_window_ms;
}

static uint64_t flap_last_down(const struct registry *r, const struct reg_entry *e)
{
    uint32_t slots = flap_count_of(r) + 1;
    return e->ndowns ? e->downs[(e->downs_next + slots - 1) % slots] : 0;
}

/* Decides, as e comes back, whether it is held out. A new hold starts when
 * it went down too often and at least once since the last hold began; each
 * such hold doubles the last one (capped). A node still inside a hold stays
 * held. */
static bool flap_hold(struct registry *r, struct reg_entry *e, uint64_t now)
{
    if (flap_count_of(r) == 0)
        return false;
    if (flap_too_many(r, e, now) && (!e->held || flap_last_down(r, e) > e->hold_started_ms)) {
        uint64_t base = r->cfg.flap_holdoff_ms ? r->cfg.flap_holdoff_ms : 1;
        uint64_t next = e->holdoff_ms ? (uint64_t)e->holdoff_ms * 2 : base;
        uint64_t cap = r->cfg.flap_holdoff_max_ms > base ? r->cfg.flap_holdoff_max_ms : base;
        e->holdoff_ms = (uint32_t)(next < cap ? next : cap);
        e->held = true;
        e->hold_started_ms = now;
        e->hold_until_ms = now + e->holdoff_ms;
    }
    return now < e->hold_until_ms;
}

static void set_flapping(struct registry *r, struct reg_entry *e, uint64_t now)
{
    char why[HB_REASON_MAX + 1];
    snprintf(why, sizeof why,
             "flapping: more than %u downs in %u ms, held out for %u ms (%llu ms left)",
             (unsigned)flap_count_of(r), (unsigned)r->cfg.flap_window_ms, (unsigned)e->holdoff_ms,
             (unsigned long long)(e->hold_until_ms - now));
    set_state(r, e, NODE_FLAPPING, why);
}

static void set_ejected(struct registry *r, struct reg_entry *e, uint64_t now);
static void flap_floor(struct registry *r, uint64_t now);

/* Where a node that has risen goes: the rotation, flapping while a flap hold
 * keeps it out, ejected while client reports keep it out (a down or a
 * blip during an ejection does not end it), or draining while an admin
 * holds it out. */
static void set_risen(struct registry *r, struct reg_entry *e)
{
    uint64_t now = registry_now(r);
    if (e->pub.admin_drained)
        set_state(r, e, NODE_DRAINING, "admin drain");
    else if (now < e->eject_until_ms)
        set_ejected(r, e, now);
    else if (flap_hold(r, e, now)) {
        set_flapping(r, e, now);
        flap_floor(r, now); /* the rotation may need it now, not at the next pass */
    } else
        set_state(r, e, NODE_HEALTHY, "");
}

/* True when e's last message is within 1.5 intervals. */
static bool is_live(const struct registry *r, const struct reg_entry *e, uint64_t now)
{
    uint64_t silent = now >= e->pub.last_seen_ms ? now - e->pub.last_seen_ms : 0;
    return silent * 2 <= (uint64_t)r->cfg.interval_ms * 3;
}

/* A flapping node whose hold is over goes back once it looks well: live,
 * reporting healthy, `rise` good heartbeats in a row. */
static void flap_release(struct registry *r, struct reg_entry *e, uint64_t now)
{
    if (e->pub.state != NODE_FLAPPING || now < e->hold_until_ms || !e->pub.reported_healthy ||
        e->pub.good_streak < rise_of(r) || !is_live(r, e, now))
        return;
    if (e->pub.admin_drained)
        set_state(r, e, NODE_DRAINING, "admin drain");
    else
        set_state(r, e, NODE_HEALTHY, "");
}

/* A flapping node that would be back in rotation but for its hold. */
static bool flap_ready(const struct registry *r, const struct reg_entry *e, uint64_t now)
{
    return e->pub.state == NODE_FLAPPING && e->pub.reported_healthy &&
           e->pub.good_streak >= rise_of(r) && is_live(r, e, now);
}

/* The flap floor (registry_config.flap_min_rotation_percent): holds are
 * for nodes that would hurt clients, and a node that is up now hurts them
 * less than an empty rotation does. While the rotation is below the floor
 * of the nodes that are up, the ready flapper with the longest run of good
 * heartbeats (the one that has been well longest; then the one whose hold
 * ends first) ends its hold now. Its next down starts a longer hold as
 * usual. */
static void flap_floor(struct registry *r, uint64_t now)
{
    uint64_t pct = r->cfg.flap_min_rotation_percent < 100 ? r->cfg.flap_min_rotation_percent : 100;
    if (pct == 0 || r->state_count[NODE_FLAPPING] == 0)
        return;
    size_t ready = 0;
    for (size_t i = 0; i < r->nall; i++)
        if (flap_ready(r, r->all[i], now))
            ready++;
    while (ready > 0) {
        uint64_t up = (uint64_t)r->nrot + ready;
        if ((uint64_t)r->nrot * 100 >= pct * up)
            break;
        struct reg_entry *best = NULL;
        for (size_t i = 0; i < r->nall; i++) {
            struct reg_entry *e = r->all[i];
            if (flap_ready(r, e, now) &&
                (best == NULL || e->pub.good_streak > best->pub.good_streak ||
                 (e->pub.good_streak == best->pub.good_streak &&
                  e->hold_until_ms < best->hold_until_ms)))
                best = e;
        }
        best->hold_until_ms = now;
        r->guard.flap_floor_releases++;
        set_state(r, best, NODE_HEALTHY, "");
        ready--;
    }
}

/* ---- client reports and ejection ---- */

/* Back to ejected: a node that went down during its ejection and rose
 * again before the ejection is over. */
static void set_ejected(struct registry *r, struct reg_entry *e, uint64_t now)
{
    char why[HB_REASON_MAX + 1];
    snprintf(why, sizeof why, "reported unreachable by clients, held out for %llu ms more",
             (unsigned long long)(e->eject_until_ms - now));
    set_state(r, e, NODE_EJECTED, why);
}

/* An ejected node whose time is over takes the normal way back: straight
 * to the rotation (through set_risen, so a flap hold or an admin drain
 * still applies) when it is heartbeating normally, to joining otherwise. */
static void eject_release(struct registry *r, struct reg_entry *e, uint64_t now)
{
    if (e->pub.state != NODE_EJECTED || now < e->eject_until_ms)
        return;
    if (is_live(r, e, now) && e->pub.reported_healthy && e->pub.good_streak >= rise_of(r))
        set_risen(r, e);
    else
        set_state(r, e, NODE_JOINING, "joining");
}

/* An IPv6 client counts by its /64: one host is usually handed a whole
 * /64 and could otherwise vote (and spend the per-address rate, and hold
 * HTTP connections) once per address in it. An IPv4 address counts alone:
 * addresses are scarce, and a wider prefix would merge a NAT'd site with
 * its neighbours. An IPv4-mapped IPv6 address is its IPv4 address. */
void registry_client_net(const char *addr, char *out, size_t outlen)
{
    struct in6_addr a6;
    char net[INET6_ADDRSTRLEN];
    if (outlen == 0)
        return;
    if (addr != NULL && strchr(addr, ':') != NULL && inet_pton(AF_INET6, addr, &a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            if (inet_ntop(AF_INET, &a6.s6_addr[12], net, sizeof net) != NULL) {
                snprintf(out, outlen, "%s", net);
                return;
            }
        } else {
            memset(&a6.s6_addr[8], 0, 8);
            if (inet_ntop(AF_INET6, &a6, net, sizeof net) != NULL) {
                snprintf(out, outlen, "%s/64", net);
                return;
            }
        }
    }
    snprintf(out, outlen, "%s", addr != NULL ? addr : "");
}

/* Never 0, which marks an empty slot. */
static uint64_t reporter_hash(const char *reporter)
{
    char net[REGISTRY_CLIENT_NET_MAX];
    registry_client_net(reporter, net, sizeof net);
    uint64_t h = id_hash(net);
    return h ? h : 1;
}

uint64_t registry_client_key(const char *addr)
{
    return reporter_hash(addr != NULL ? addr : "");
}

/* True when this reporter is over report_rate in the current second; else
 * counts the report. The table is set-associative: a reporter keeps its own
 * way while one of its set's ways is free or stale; when all are taken by
 * reporters active this second, it shares the fullest way, so colliding
 * reporters may be limited early but never escape the limit (a colliding
 * reporter once reset the slot's count, and two of them alternating were
 * never limited). */
static bool reporter_limited(struct registry *r, uint64_t who, uint64_t now)
{
    if (r->cfg.report_rate == 0)
        return false;
    size_t sets = REGISTRY_REPORTER_TABLE / REGISTRY_REPORTER_WAYS;
    struct reporter_rate *set = &r->reporters[(who % sets) * REGISTRY_REPORTER_WAYS];
    struct reporter_rate *slot = NULL, *free_way = NULL, *fullest = NULL;
    for (size_t i = 0; i < REGISTRY_REPORTER_WAYS; i++) {
        struct reporter_rate *w = &set[i];
        bool current = w->who != 0 && now - w->second_ms < 1000;
        if (w->who == who && current) {
            slot = w;
            break;
        }
        if (!current && free_way == NULL)
            free_way = w;
        if (current && (fullest == NULL || w->count > fullest->count))
            fullest = w;
    }
    if (slot == NULL && free_way != NULL) {
        slot = free_way;
        slot->who = who;
        slot->second_ms = now;
        slot->count = 0;
    } else if (slot == NULL) {
        slot = fullest; /* shared: the limit holds for both */
    }
    if (slot->count >= r->cfg.report_rate)
        return true;
    slot->count++;
    return false;
}

static bool report_fresh(const struct registry *r, const struct reg_report *rep, uint64_t now)
{
    return rep->who != 0 && now - rep->at_ms < r->cfg.report_window_ms;
}

static size_t reports_in_window(const struct registry *r, const struct reg_entry *e,
                                uint64_t now)
{
    size_t n = 0;
    for (size_t i = 0; i < REGISTRY_REPORT_SLOTS; i++)
        if (report_fresh(r, &e->reports[i], now))
            n++;
    return n;
}

/* Notes the reporter in e's slots: its own slot if it has one, else an
 * empty or stale one, else the one with the oldest report. */
static void report_note(const struct registry *r, struct reg_entry *e, uint64_t who,
                        uint64_t now)
{
    struct reg_report *pick = NULL;
    for (size_t i = 0; i < REGISTRY_REPORT_SLOTS; i++) {
        struct reg_report *s = &e->reports[i];
        if (s->who == who) {
            pick = s;
            break;
        }
        if (pick == NULL || (!report_fresh(r, s, now) && report_fresh(r, pick, now)) ||
            (report_fresh(r, s, now) == report_fresh(r, pick, now) && s->at_ms < pick->at_ms))
            pick = s;
    }
    pick->who = who;
    pick->at_ms = now;
}

/* Whether one more ejection keeps the ejected share within
 * report_max_eject_percent of the rotation plus the ejected nodes. */
static bool eject_allowed(const struct registry *r)
{
    uint64_t ejected = r->state_count[NODE_EJECTED];
    uint64_t set = r->nrot + ejected;
    return (ejected + 1) * 100 <= (uint64_t)r->cfg.report_max_eject_percent * set;
}

static void eject(struct registry *r, struct reg_entry *e, size_t reporters, uint64_t now)
{
    uint64_t base = r->cfg.report_eject_ms ? r->cfg.report_eject_ms : 1;
    uint64_t cap = r->cfg.report_eject_max_ms > base ? r->cfg.report_eject_max_ms : base;
    uint64_t len = base;
    /* ejected again soon after the last one ended: twice as long (capped) */
    if (e->eject_len_ms != 0 && e->eject_ended_ms != 0 && now >= e->eject_ended_ms &&
        now - e->eject_ended_ms <= cap)
        len = (uint64_t)e->eject_len_ms * 2 < cap ? (uint64_t)e->eject_len_ms * 2 : cap;
    e->eject_len_ms = (uint32_t)len;
    e->eject_until_ms = now + len;
    /* the next ejection needs reports made after this one */
    memset(e->reports, 0, sizeof e->reports);
    r->report_stats.ejections++;
    char why[HB_REASON_MAX + 1];
    snprintf(why, sizeof why,
             "reported unreachable by %zu clients within %u ms (last: %s), held out for %llu ms",
             reporters, (unsigned)r->cfg.report_window_ms, report_reason_name(e->last_report),
             (unsigned long long)len);
    set_state(r, e, NODE_EJECTED, why);
}

static struct reg_entry *lookup(const struct registry *r, const char *id)
{
    if (id == NULL)
        return NULL;
    return index_find(r, id, id_hash(id));
}

/* Returns true if what clients cache about the node changed: its address,
 * or its certificate digest (a renewed certificate they must pin anew). */
static bool copy_register_fields(struct reg_entry *e, const struct hb_msg *m)
{
    bool moved = strcmp(e->pub.addr, m->addr) != 0 ||
                 strcmp(e->pub.cert_sha256, m->cert_sha256) != 0;
    snprintf(e->pub.addr, sizeof e->pub.addr, "%s", m->addr);
    snprintf(e->pub.version, sizeof e->pub.version, "%s", m->version);
    snprintf(e->pub.cert_sha256, sizeof e->pub.cert_sha256, "%s", m->cert_sha256);
    e->pub.capacity = m->capacity;
    return moved;
}

/* A new process behind the id: forget what the old one reported. */
static void reset_process(struct reg_entry *e, const struct hb_msg *m, uint64_t now)
{
    e->pub.boot_id = m->boot_id;
    e->pub.last_seen_ms = now;
    e->pub.good_streak = 1; /* REGISTER counts as the first heartbeat */
    e->streak_ms = now;
    e->pub.heartbeats = 0;
    e->pub.sessions = 0;
    e->pub.accepted = 0;
    e->pub.msgs_per_sec = 0;
    e->pub.reported_healthy = true;
    e->pub.nworkers = 0;
    memset(e->pub.workers, 0, sizeof e->pub.workers);
    e->pub.nbalancers = 0;
    e->self_draining = false;
    memset(e->reports, 0, sizeof e->reports); /* they were about the old process */
    e->eject_until_ms = 0; /* and so was an ejection: the new process starts clean */
}

/* ---- public API ---- */

struct registry *registry_new(const struct registry_config *cfg, registry_clock_fn clock,
                              void *clock_ctx)
{
    struct registry *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->cfg = *cfg;
    r->clock = clock;
    r->clock_ctx = clock_ctx;
    r->born_ms = registry_now(r);
    r->nslots = INDEX_MIN_SLOTS;
    r->slots = calloc(r->nslots, sizeof *r->slots);
    if (r->slots == NULL)
        goto fail;
    return r;
fail:
    registry_free(r);
    return NULL;
}

void registry_free(struct registry *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nall; i++)
        free(r->all[i]);
    free(r->all);
    free(r->rotation);
    free(r->slots);
    free(r);
}

void registry_on_change(struct registry *r, registry_change_fn fn, void *ctx)
{
    r->on_change = fn;
    r->on_change_ctx = ctx;
}

void registry_on_panic(struct registry *r, registry_panic_fn fn, void *ctx)
{
    r->on_panic = fn;
    r->on_panic_ctx = ctx;
}

const struct registry_config *registry_config(const struct registry *r)
{
    return &r->cfg;
}

uint64_t registry_now(const struct registry *r)
{
    return r->clock != NULL ? r->clock(r->clock_ctx) : mono_now_ms();
}

int registry_register(struct registry *r, const struct hb_msg *m)
{
    uint64_t now = registry_now(r);
    bool warming_up = now - r->born_ms < r->cfg.warmup_ms;
    enum node_state fresh = rise_of(r) <= 1 || warming_up ? NODE_HEALTHY : NODE_JOINING;
    struct reg_entry *e = lookup(r, m->node_id);

    if (e == NULL) {
        if (r->cfg.max_nodes && r->nall >= r->cfg.max_nodes)
            return REGISTRY_FULL;
        /* Reserve everything first so a failure leaves the registry as it was. */
        if (index_reserve(r) != 0 || grow(&r->all, &r->all_cap, r->nall + 1) != 0 ||
            grow(&r->rotation, &r->rot_cap, r->all_cap) != 0)
            return -1;
        e = calloc(1, sizeof *e);
        if (e == NULL)
            return -1;
        snprintf(e->pub.id, sizeof e->pub.id, "%s", m->node_id);
        e->hash = id_hash(e->pub.id);
        e->rot_idx = NOT_IN_ROTATION;
        e->pub.state = NODE_JOINING;
        e->pub.state_since_ms = now;
        set_reason(e, "joining");
        reset_process(e, m, now);
        (void)copy_register_fields(e, m);
        e->all_idx = r->nall;
        r->all[r->nall++] = e;
        index_put_slot(r->slots, r->nslots, e);
        r->state_count[NODE_JOINING]++;
        /* A new node is not a transition; only rise <= 1 makes one here. */
        if (fresh == NODE_HEALTHY)
            set_risen(r, e);
        return 0;
    }

    e->gone = false; /* it speaks, and the balancer took its message */
    bool moved = copy_register_fields(e, m);
    bool restarted = e->pub.boot_id != m->boot_id;
    /* A node that stays in rotation but now is another process, at another
     * address or with another certificate is a different member for clients
     * caching by epoch
     * (leaving or joining the rotation bumps it in set_state instead). */
    if (e->rot_idx != NOT_IN_ROTATION && (moved || restarted) &&
        (!restarted || fresh == NODE_HEALTHY))
        r->epoch++;
    if (restarted) {
        reset_process(e, m, now);
        if (fresh == NODE_HEALTHY)
            set_risen(r, e);
        else
            set_state(r, e, fresh, "joining");
        return 0;
    }

    /* Same process registering again (it lost us and reconnected): a message
     * like any other, so it extends the streak; the state is kept except
     * that a joining or down node may now have risen. A REGISTER says
     * nothing of health, so a node whose last report said unhealthy gets no
     * credit towards rise until a heartbeat says otherwise. */
    if (!e->pub.reported_healthy) {
        e->pub.last_seen_ms = now;
        return 0;
    }
    advance_streak(r, e, now);
    if ((e->pub.state == NODE_JOINING || e->pub.state == NODE_DOWN) &&
        e->pub.good_streak >= rise_of(r))
        set_risen(r, e);
    return 0;
}

enum registry_result registry_heartbeat(struct registry *r, const struct hb_msg *m)
{
    struct reg_entry *e = lookup(r, m->node_id);
    if (e == NULL || e->pub.boot_id != m->boot_id)
        return REGISTRY_UNKNOWN;

    uint64_t now = registry_now(r);
    e->gone = false;
    advance_streak(r, e, now);
    if (e->pub.heartbeats < UINT64_MAX)
        e->pub.heartbeats++;
    e->pub.sessions = m->sessions;
    e->pub.accepted = m->accepted;
    e->pub.msgs_per_sec = m->msgs_per_sec;
    e->pub.reported_healthy = m->healthy;
    e->pub.nworkers = m->nworkers <= HB_MAX_WORKERS ? m->nworkers : HB_MAX_WORKERS;
    memcpy(e->pub.workers, m->workers, e->pub.nworkers * sizeof e->pub.workers[0]);
    e->pub.nbalancers = m->nbalancers <= HB_MAX_BALANCERS ? m->nbalancers : HB_MAX_BALANCERS;
    memcpy(e->pub.balancers, m->balancers, e->pub.nbalancers * sizeof e->pub.balancers[0]);
    e->pub.forward = m->forward;

    if (m->draining) {
        e->self_draining = true;
        set_state(r, e, NODE_DRAINING, "draining");
    } else if (!m->healthy) {
        /* rise counts good heartbeats: an unhealthy one breaks the run */
        e->pub.good_streak = 0;
        set_state(r, e, NODE_DOWN, m->reason[0] ? m->reason : "node reports unhealthy");
    } else {
        switch (e->pub.state) {
        case NODE_SUSPECT:
            set_risen(r, e);
            break;
        case NODE_JOINING:
        case NODE_DOWN:
            if (e->pub.good_streak >= rise_of(r))
                set_risen(r, e);
            break;
        case NODE_FLAPPING:
            flap_release(r, e, now);
            break;
        case NODE_EJECTED:
            eject_release(r, e, now);
            break;
        case NODE_HEALTHY:
        case NODE_DRAINING: /* only a REGISTER from a new process ends draining */
        case NODE_STATE_COUNT:
            break;
        }
    }
    return REGISTRY_OK;
}

enum registry_result registry_leave(struct registry *r, const struct hb_msg *m)
{
    struct reg_entry *e = lookup(r, m->node_id);
    if (e == NULL || e->pub.boot_id != m->boot_id)
        return REGISTRY_UNKNOWN;
    e->pub.last_seen_ms = registry_now(r);
    e->self_draining = true;
    set_state(r, e, NODE_DRAINING, "draining");
    return REGISTRY_OK;
}

enum registry_result registry_drain(struct registry *r, const char *id)
{
    struct reg_entry *e = lookup(r, id);
    if (e == NULL)
        return REGISTRY_UNKNOWN;
    e->pub.admin_drained = true;
    /* A down node stays down (that says more) and comes back as draining;
     * a node draining on its own keeps its reason. */
    switch (e->pub.state) {
    case NODE_JOINING:
    case NODE_HEALTHY:
    case NODE_SUSPECT:
    case NODE_FLAPPING:
    case NODE_EJECTED:
        set_state(r, e, NODE_DRAINING, "admin drain");
        break;
    case NODE_DOWN:
    case NODE_DRAINING:
    case NODE_STATE_COUNT:
        break;
    }
    return REGISTRY_OK;
}

enum registry_result registry_undrain(struct registry *r, const char *id)
{
    struct reg_entry *e = lookup(r, id);
    if (e == NULL)
        return REGISTRY_UNKNOWN;
    bool was = e->pub.admin_drained;
    e->pub.admin_drained = false;
    if (!was || e->pub.state != NODE_DRAINING || e->self_draining)
        return REGISTRY_OK;
    uint64_t now = registry_now(r);
    if (is_live(r, e, now) && e->pub.reported_healthy && e->pub.good_streak >= rise_of(r))
        set_risen(r, e); /* a flap hold still applies */
    else
        set_state(r, e, NODE_JOINING, "joining");
    return REGISTRY_OK;
}

enum registry_result registry_disconnected(struct registry *r, const char *id, uint64_t boot_id)
{
    struct reg_entry *e = lookup(r, id);
    if (e == NULL || e->pub.boot_id != boot_id)
        return REGISTRY_UNKNOWN;
    /* Gone, not silent: a suspect node that silence took out is not put
     * back by panic either (set_state clears silence_exit_ms on a change;
     * a node that stays where it is needs it cleared here). The streak is
     * left alone: see registry.h on why rise does not apply to a blip. */
    e->gone = true;
    e->silence_exit_ms = 0;
    if (e->pub.state != NODE_HEALTHY)
        return REGISTRY_UNCHANGED;
    set_state(r, e, NODE_DOWN, "connection closed");
    return REGISTRY_OK;
}

enum registry_result registry_refuse(struct registry *r, const char *id, const char *reason)
{
    struct reg_entry *e = lookup(r, id);
    if (e == NULL)
        return REGISTRY_UNKNOWN;
    e->gone = true;
    e->silence_exit_ms = 0;
    enum node_state s = e->pub.state;
    if (s == NODE_DOWN || s == NODE_DRAINING)
        return REGISTRY_UNCHANGED;
    /* Its messages are refused from now on, so it could never show it is
     * well: the run of good heartbeats ends too. */
    e->pub.good_streak = 0;
    set_state(r, e, NODE_DOWN, reason != NULL && reason[0] ? reason : "refused by the balancer");
    r->guard.refused++;
    return REGISTRY_OK;
}

enum registry_report_result registry_report(struct registry *r, const char *id,
                                            const char *reporter, enum report_reason reason,
                                            struct registry_report_outcome *out)
{
    uint64_t now = registry_now(r);
    uint64_t who = registry_client_key(reporter);
    if (reporter_limited(r, who, now)) {
        r->report_stats.rate_limited++;
        return REGISTRY_REPORT_LIMITED;
    }
    struct reg_entry *e = lookup(r, id);
    if (e == NULL) {
        r->report_stats.unknown++;
        return REGISTRY_REPORT_UNKNOWN;
    }
    r->report_stats.received++;
    e->last_report = reason;
    report_note(r, e, who, now);
    size_t n = reports_in_window(r, e, now);
    if (r->cfg.report_quorum != 0 && n >= r->cfg.report_quorum &&
        e->pub.state == NODE_HEALTHY) {
        if (eject_allowed(r))
            eject(r, e, n, now); /* clears the slots: n is what ejected it */
        else
            r->report_stats.capped++;
    }
    if (out != NULL) {
        out->reporters = n;
        out->ejected = e->pub.state == NODE_EJECTED;
    }
    return REGISTRY_REPORT_OK;
}

size_t registry_reporters(const struct registry *r, const struct registry_node *n)
{
    /* pub is the entry's first member: the pointer is the registry's own. */
    const struct reg_entry *e = (const struct reg_entry *)(const void *)n;
    return reports_in_window(r, e, registry_now(r));
}

void registry_report_stats(const struct registry *r, struct registry_report_stats *out)
{
    *out = r->report_stats;
}

void registry_note_pick(struct registry *r, const struct registry_node *n)
{
    (void)r;
    /* pub is the entry's first member: the pointer is the registry's own. */
    struct reg_entry *e = (struct reg_entry *)(uintptr_t)n;
    if (e->pub.picks < UINT64_MAX)
        e->pub.picks++;
}

/* Drops e from every structure and frees it. */
static void forget(struct registry *r, struct reg_entry *e)
{
    if (e->rot_idx != NOT_IN_ROTATION)
        rotation_remove(r, e); /* not reached: only down/draining are forgotten */
    index_remove(r, e);
    r->state_count[e->pub.state]--;
    struct reg_entry *last = r->all[--r->nall];
    r->all[e->all_idx] = last;
    last->all_idx = e->all_idx;
    free(e);
}

/* ---- panic ---- */

/* Looks at the whole table before the reap pass moves anyone. Silence
 * reaches nodes spread over one interval (each has its own phase), so the
 * share counts the nodes that silence took out of rotation within the last
 * interval as well as those it would take now. Entering panic puts the
 * former back; while in panic the pass leaves silent healthy nodes alone.
 * Panic ends when the silent share is back at or under the threshold. */
static void panic_check(struct registry *r, uint64_t now)
{
    uint64_t interval = r->cfg.interval_ms;
    size_t silent_in = 0, recent_out = 0;
    for (size_t i = 0; i < r->nall; i++) {
        const struct reg_entry *e = r->all[i];
        enum node_state s = e->pub.state;
        if (e->gone)
            continue; /* not in rotation (closed or refused), and never to be held */
        if (s == NODE_HEALTHY && !is_live(r, e, now))
            silent_in++;
        else if ((s == NODE_SUSPECT || s == NODE_DOWN) && e->silence_exit_ms != 0 &&
                 now - e->silence_exit_ms <= interval)
            recent_out++;
    }
    uint64_t pct = r->cfg.panic_percent;
    if (!r->panic) {
        size_t set = r->nrot + recent_out;
        size_t leaving = silent_in + recent_out;
        if (set == 0 || (uint64_t)leaving * 100 <= pct * set)
            return;
        r->panic = true;
        r->panic_since_ms = now;
        snprintf(r->panic_reason, sizeof r->panic_reason,
                 "%zu of %zu nodes in rotation went silent within one interval (threshold "
                 "%u%%): keeping them in rotation",
                 leaving, set, (unsigned)pct);
        /* Put back the ones silence already took: they are the last healthy
         * set as much as those still in. */
        for (size_t i = 0; i < r->nall; i++) {
            struct reg_entry *e = r->all[i];
            if ((e->pub.state == NODE_SUSPECT || e->pub.state == NODE_DOWN) && !e->gone &&
                e->silence_exit_ms != 0 && now - e->silence_exit_ms <= interval)
                set_state(r, e, NODE_HEALTHY, "");
        }
        r->panic_held = leaving;
        r->panic_expired_now = 0;
        if (r->on_panic != NULL)
            r->on_panic(r->on_panic_ctx, true, r->panic_reason);
        return;
    }
    r->panic_held = silent_in;
    if ((uint64_t)silent_in * 100 > pct * r->nrot)
        return;
    char why[sizeof r->panic_reason];
    if (r->panic_expired_now == 0)
        snprintf(why, sizeof why,
                 "heartbeats resumed: %zu of %zu nodes in rotation silent (threshold %u%%) "
                 "after %llu ms in panic",
                 silent_in, r->nrot, (unsigned)pct, (unsigned long long)(now - r->panic_since_ms));
    else
        snprintf(why, sizeof why,
                 "%zu of %zu nodes in rotation silent (threshold %u%%) after %llu ms in panic; "
                 "%zu nodes left the rotation silent for longer than the %u ms panic hold bound",
                 silent_in, r->nrot, (unsigned)pct, (unsigned long long)(now - r->panic_since_ms),
                 r->panic_expired_now, (unsigned)registry_panic_hold_max(r));
    r->panic = false;
    r->panic_since_ms = 0;
    r->panic_held = 0;
    r->panic_reason[0] = '\0';
    if (r->on_panic != NULL)
        r->on_panic(r->on_panic_ctx, false, why);
}

void registry_reap(struct registry *r)
{
    uint64_t now = registry_now(r);
    uint64_t suspect_after2 = (uint64_t)r->cfg.interval_ms * 3; /* compared with silent*2 */
    uint64_t down_after = (uint64_t)r->cfg.interval_ms * fall_of(r);

    if (r->cfg.panic_percent != 0)
        panic_check(r, now);

    /* Every node, every pass: a live node early in the table must not hide
     * silent ones after it. forget() moves the last node into slot i, so i
     * only advances when nothing was removed. */
    size_t i = 0;
    while (i < r->nall) {
        struct reg_entry *e = r->all[i];
        uint64_t silent = now >= e->pub.last_seen_ms ? now - e->pub.last_seen_ms : 0;
        enum node_state s = e->pub.state;

        if ((s == NODE_DOWN || s == NODE_DRAINING) && silent >= r->cfg.forget_ms) {
            forget(r, e);
            continue;
        }
        if (s == NODE_HEALTHY && r->panic && silent < registry_panic_hold_max(r)) {
            i++; /* kept in rotation, silent or not, up to the bound */
            continue;
        }
        if (s == NODE_HEALTHY && r->panic) {
            /* The bound: panic bets on the balancer's own network, and a
             * bet this old has lost (or is an allowed key's ids gone
             * quiet on purpose). Not a silence exit: panic must not take
             * it back at its next check. */
            char why[HB_REASON_MAX + 1];
            snprintf(why, sizeof why,
                     "no heartbeat for %llu ms (panic holds a silent node at most %u ms)",
                     (unsigned long long)silent, (unsigned)registry_panic_hold_max(r));
            e->pub.good_streak = 0;
            set_state(r, e, NODE_DOWN, why);
            r->guard.panic_expired++;
            r->panic_expired_now++;
            i++;
            continue;
        }
        /* down is checked first so a long gap goes straight there, with one
         * change reported instead of healthy -> suspect -> down. A node an
         * admin drained is still watched: if it dies it shows as down. */
        bool watched = s == NODE_HEALTHY || s == NODE_SUSPECT || s == NODE_JOINING ||
                       s == NODE_FLAPPING || s == NODE_EJECTED ||
                       (s == NODE_DRAINING && e->pub.admin_drained && !e->self_draining);
        if (watched && silent >= down_after) {
            char why[HB_REASON_MAX + 1];
            snprintf(why, sizeof why, "no heartbeat for %llu ms", (unsigned long long)silent);
            uint64_t exit_ms = s == NODE_HEALTHY ? now : e->silence_exit_ms;
            e->pub.good_streak = 0;
            set_state(r, e, NODE_DOWN, why);
            e->silence_exit_ms = exit_ms;
        } else if (s == NODE_HEALTHY && silent * 2 > suspect_after2) {
            set_state(r, e, NODE_SUSPECT, "missed heartbeat");
            e->silence_exit_ms = now;
        } else if (s == NODE_FLAPPING) {
            flap_release(r, e, now);
        } else if (s == NODE_EJECTED) {
            eject_release(r, e, now);
        }
        i++;
    }
    flap_floor(r, now);
}

bool registry_panic(const struct registry *r)
{
    return r->panic;
}

uint64_t registry_panic_since(const struct registry *r)
{
    return r->panic_since_ms;
}

const char *registry_panic_reason(const struct registry *r)
{
    return r->panic_reason;
}

uint32_t registry_panic_hold_max(const struct registry *r)
{
    return r->cfg.panic_hold_max_ms ? r->cfg.panic_hold_max_ms : REGISTRY_PANIC_HOLD_DEFAULT_MS;
}

void registry_guard_stats(const struct registry *r, struct registry_guard_stats *out)
{
    *out = r->guard;
}

size_t registry_panic_held(const struct registry *r)
{
    return r->panic ? r->panic_held : 0;
}

uint64_t registry_epoch(const struct registry *r)
{
    return r->epoch;
}

size_t registry_count_state(const struct registry *r, enum node_state s)
{
    if ((unsigned)s >= NODE_STATE_COUNT)
        return 0;
    return r->state_count[s];
}

size_t registry_size(const struct registry *r)
{
    return r->nall;
}

const struct registry_node *registry_at(const struct registry *r, size_t i)
{
    return i < r->nall ? &r->all[i]->pub : NULL;
}

const struct registry_node *registry_find(const struct registry *r, const char *id)
{
    struct reg_entry *e = lookup(r, id);
    return e != NULL ? &e->pub : NULL;
}

size_t registry_rotation_size(const struct registry *r)
{
    return r->nrot;
}

const struct registry_node *registry_rotation_at(const struct registry *r, size_t i)
{
    return i < r->nrot ? &r->rotation[i]->pub : NULL;
}
