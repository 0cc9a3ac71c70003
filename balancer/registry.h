/* registry: the balancer's table of nodes, their liveness state machine
 * (joining, healthy, suspect, down, draining, flapping, ejected), flap
 * damping, client reports and ejection, the panic guard rail and the
 * rotation, the dense
 * array of nodes that may be handed to clients. Driven by an injectable
 * monotonic clock so tests run on a fake one. Single-threaded. */
#ifndef BERTH_REGISTRY_H
#define BERTH_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hb_msg.h"

enum node_state {
    NODE_JOINING,  /* registered, fewer than `rise` heartbeats in a row yet */
    NODE_HEALTHY,  /* in rotation */
    NODE_SUSPECT,  /* missed one interval: out of rotation, back on the next heartbeat */
    NODE_DOWN,     /* missed `fall` intervals, or reports itself unhealthy */
    NODE_DRAINING, /* sent LEAVE or heartbeats with draining: out of rotation */
    NODE_FLAPPING, /* went down more than flap_count times in flap_window: held out */
    NODE_EJECTED,  /* reported unreachable by report_quorum distinct clients: held out */
    NODE_STATE_COUNT
};

/* "joining", "healthy", ... from one table used by logs and JSON. */
const char *node_state_name(enum node_state s);

struct registry_config {
    uint32_t interval_ms; /* expected heartbeat interval */
    uint32_t fall;        /* missed intervals before down */
    uint32_t rise;        /* heartbeats in a row before healthy */
    uint32_t forget_ms;   /* a down or draining node silent this long is dropped */
    /* Flap damping: a node that went down more than flap_count times within
     * flap_window_ms is held out of rotation (state flapping) when it comes
     * back, for flap_holdoff_ms, doubling on each further hold up to
     * flap_holdoff_max_ms. flap_count 0 turns it off (capped at
     * REGISTRY_FLAP_COUNT_MAX). */
    uint32_t flap_count;
    uint32_t flap_window_ms;
    uint32_t flap_holdoff_ms;
    uint32_t flap_holdoff_max_ms;
    /* Flap floor: flap holds never take the rotation below
     * flap_min_rotation_percent (rounded up) of the nodes that are up (those
     * in rotation plus the flapping ones heartbeating normally); when they
     * would, the flapping nodes with the longest run of good heartbeats are
     * released first. 0: no floor. */
    uint32_t flap_min_rotation_percent;
    /* Panic guard rail: when more than panic_percent of the rotation goes
     * silent within one interval, the silent nodes are kept in rotation
     * until heartbeats resume, each for at most panic_hold_max_ms after its
     * last message (0: REGISTRY_PANIC_HOLD_DEFAULT_MS); a node past that
     * goes down as it would outside panic, so panic ends at the latest
     * panic_hold_max_ms after the last held node spoke. A node whose
     * connection closed (registry_disconnected) or that the balancer refused
     * (registry_refuse) is never held. panic_percent 0 turns it off. */
    uint32_t panic_percent;
    uint32_t panic_hold_max_ms;
    /* A registry younger than this (a balancer that just restarted) has no
     * history to judge a node by: a node registering then is admitted at
     * once instead of after `rise` heartbeats, so a restart does not empty
     * the rotation. 0 turns it off; the balancer uses fall x interval. */
    uint32_t warmup_ms;
    /* REGISTER of a new id is refused while the registry holds this many
     * nodes, so a peer inventing ids cannot grow it without bound. 0: no cap. */
    uint32_t max_nodes;
    /* Client reports (registry_report): when report_quorum distinct
     * reporters said within report_window_ms that they cannot reach a
     * healthy node, it is ejected (out of rotation, state ejected) for
     * report_eject_ms, doubling when it is ejected again within
     * report_eject_max_ms of its last ejection ending, up to
     * report_eject_max_ms. At most report_max_eject_percent of the nodes in
     * rotation plus those ejected may be ejected at once. One reporter may
     * send report_rate reports a second (0: no limit). report_quorum 0:
     * reports are counted but never eject. */
    uint32_t report_quorum;
    uint32_t report_window_ms;
    uint32_t report_eject_ms;
    uint32_t report_eject_max_ms;
    uint32_t report_max_eject_percent;
    uint32_t report_rate;
};

#define REGISTRY_FLAP_COUNT_MAX 32
#define REGISTRY_PANIC_HOLD_DEFAULT_MS 10000

/* Returns monotonic milliseconds. */
typedef uint64_t (*registry_clock_fn)(void *ctx);

/* Read-only view of one node; pointers stay valid until the next call that
 * changes the registry (register, heartbeat, leave, reap). */
struct registry_node {
    char id[HB_NODE_ID_MAX + 1];
    char addr[HB_ADDR_MAX + 1];
    char version[HB_VERSION_MAX + 1];
    char cert_sha256[HB_CERT_SHA256_HEX + 1]; /* from REGISTER; "" if not given */
    uint64_t boot_id;
    uint32_t capacity;
    enum node_state state;
    uint64_t state_since_ms; /* clock time the state began */
    uint64_t last_seen_ms;   /* clock time of the last message from the node */
    uint32_t good_streak;    /* heartbeats in a row, for rise */
    uint64_t heartbeats;     /* heartbeats received */
    /* last load report */
    uint32_t sessions;
    uint64_t accepted;
    double msgs_per_sec;
    bool reported_healthy;
    char reason[HB_REASON_MAX + 1]; /* why it is out of rotation, "" if in */
    uint32_t nworkers;
    struct hb_worker workers[HB_MAX_WORKERS];
    uint32_t nbalancers; /* the balancers the node heartbeats to, as it last said */
    struct hb_peer balancers[HB_MAX_BALANCERS];
    struct hb_forward forward; /* its forwarder into JetStream, as it last said */
    bool admin_drained;        /* put in maintenance by registry_drain */
    uint64_t left_rotation_ms; /* clock time it last left the rotation; 0 = never */
    uint64_t picks;            /* times handed to a client (registry_note_pick) */
};

/* Called on every state change, after the change is applied (for logging). */
typedef void (*registry_change_fn)(void *ctx, const struct registry_node *n,
                                   enum node_state from, enum node_state to);

struct registry;

/* Called once on entering (entered = true) and once on leaving panic, with
 * a borrowed one-line reason. */
typedef void (*registry_panic_fn)(void *ctx, bool entered, const char *reason);

/* NULL clock means mono_now_ms. Returns NULL on out of memory. */
struct registry *registry_new(const struct registry_config *cfg, registry_clock_fn clock,
                              void *clock_ctx);
void registry_free(struct registry *r);
void registry_on_change(struct registry *r, registry_change_fn fn, void *ctx);
void registry_on_panic(struct registry *r, registry_panic_fn fn, void *ctx);
const struct registry_config *registry_config(const struct registry *r);
uint64_t registry_now(const struct registry *r);

/* REGISTER: adds the node, or resets it when boot_id changed (a restart).
 * A node registering again with the same boot_id keeps its state.
 * Returns 0, -1 on out of memory, or REGISTRY_FULL for a new id while the
 * registry holds max_nodes nodes. */
#define REGISTRY_FULL (-2)
int registry_register(struct registry *r, const struct hb_msg *m);

enum registry_result {
    REGISTRY_OK,
    REGISTRY_UNKNOWN,   /* not registered (or another boot_id): send HB_REREGISTER */
    REGISTRY_UNCHANGED, /* registry_disconnected: known, but nothing changed */
};
/* HEARTBEAT: refreshes last_seen and load, advances rise, applies the
 * node's own healthy/draining flags. */
enum registry_result registry_heartbeat(struct registry *r, const struct hb_msg *m);
/* LEAVE: the node goes to draining at once. */
enum registry_result registry_leave(struct registry *r, const struct hb_msg *m);

/* Admin drain (maintenance): the node leaves the rotation and shows as
 * draining with reason "admin drain" while it keeps heartbeating; silence
 * still takes it down, and once it is back it shows as draining again. The
 * mark survives a restart of the node's process, not its being forgotten.
 * Returns REGISTRY_UNKNOWN when no node has that id. */
enum registry_result registry_drain(struct registry *r, const char *id);
/* Ends an admin drain. A node that is heartbeating normally (last message
 * within 1.5 intervals, `rise` good ones in a row, reporting healthy) is
 * back in rotation at once; any other goes to joining and needs `rise`
 * heartbeats. A node draining on its own (LEAVE, draining: true) stays
 * draining. REGISTRY_UNKNOWN when no node has that id. */
enum registry_result registry_undrain(struct registry *r, const char *id);

/* The node's heartbeat connection closed (fast kill detection). A node in
 * rotation leaves it now, in panic too: state down, reason "connection
 * closed" (REGISTRY_OK); a node already out of rotation is left as it is
 * (REGISTRY_UNCHANGED). REGISTRY_UNKNOWN when the id is not registered or
 * the boot_id is another process's.
 *
 * rise does not apply to a reconnect blip: the run of good heartbeats is
 * not broken by the close, so a node that was healthy and heartbeats again
 * within 1.5 intervals of its last message (its streak intact) is back in
 * rotation at that heartbeat (or same-boot REGISTER); after a longer gap it
 * needs `rise` heartbeats as after any down. The down counts for flap
 * damping: a node whose connection keeps closing is flapping.
 *
 * Panic: a closed node is gone, not silent. It never counts towards
 * entering panic, panic never puts it back or keeps it, until a message
 * from it is accepted again. */
enum registry_result registry_disconnected(struct registry *r, const char *id, uint64_t boot_id);

/* The balancer refuses the node's messages from now on (its key was taken
 * off the allowlist, or its id pinned to another key). Whatever its boot
 * id, a node not down or draining goes down now with reason (borrowed,
 * copied), and panic never holds it, as after registry_disconnected, until
 * a message from it is accepted again (registry_register or
 * registry_heartbeat). REGISTRY_OK when it left the rotation or joining,
 * REGISTRY_UNCHANGED when it was out already, REGISTRY_UNKNOWN for no
 * such id. */
enum registry_result registry_refuse(struct registry *r, const char *id, const char *reason);

/* ---- client reports ---- */

#define REGISTRY_REPORT_SLOTS 8      /* distinct reporters kept per node; the oldest is replaced */
#define REGISTRY_REPORTER_TABLE 1024 /* reporters whose rate is tracked; colliding ones share */
#define REGISTRY_REPORTER_WAYS 4     /* the table is 4-way set-associative */
#define REGISTRY_CLIENT_NET_MAX 52   /* an IPv6 /64 as text, "/64" and the NUL */

/* The client an address counts as, for reports and for HTTP connections:
 * an IPv6 address by its /64 ("2001:db8:1:2::/64"), an IPv4 address (also
 * one mapped into IPv6) alone; other text is copied. out holds at least
 * REGISTRY_CLIENT_NET_MAX bytes. */
void registry_client_net(const char *addr, char *out, size_t outlen);
/* The 64-bit key (never 0) the report rate table files a client under. */
uint64_t registry_client_key(const char *addr);

enum report_reason {
    REPORT_CONNECT,  /* TCP connect failed or was refused */
    REPORT_TLS,      /* TLS handshake failed (certificate, protocol) */
    REPORT_TIMEOUT,  /* connect or handshake timed out */
    REPORT_PROTOCOL, /* the node answered, but not in the berth protocol */
    REPORT_REASON_COUNT
};

/* "connect", "tls", "timeout", "protocol" from one table; "unknown" beyond. */
const char *report_reason_name(enum report_reason reason);
/* 0, or -1 when text names no reason. */
int report_reason_parse(const char *text, enum report_reason *out);

enum registry_report_result {
    REGISTRY_REPORT_OK,
    REGISTRY_REPORT_UNKNOWN, /* no node has that id */
    REGISTRY_REPORT_LIMITED, /* the reporter sent more than report_rate this second */
};

struct registry_report_outcome {
    size_t reporters; /* distinct reporters about the node within the window, this one included */
    bool ejected;     /* the node is ejected now (by this report or before) */
};

/* A client says it cannot reach node id. reporter identifies the client
 * (its address as text, from the connection, never from the request body;
 * an IPv6 address counts by its /64, for the quorum and for report_rate)
 * and is not kept, only a 64-bit hash of it: a reporter counts once per
 * node however often it reports. Ejects the node when that makes
 * report_quorum reporters within the window, the node is in rotation, and
 * the max-eject share allows it. Reports still eject in panic: they are
 * evidence from the clients' side, and the share bounds them. out may be
 * NULL. */
enum registry_report_result registry_report(struct registry *r, const char *id,
                                            const char *reporter, enum report_reason reason,
                                            struct registry_report_outcome *out);
/* Distinct reporters about n (a pointer from this registry) within the window now. */
size_t registry_reporters(const struct registry *r, const struct registry_node *n);

struct registry_report_stats {
    uint64_t received;     /* reports about a known node */
    uint64_t unknown;      /* reports about no known node */
    uint64_t rate_limited; /* refused by report_rate */
    uint64_t ejections;    /* nodes ejected */
    uint64_t capped;       /* quorum reached but the max-eject share refused the ejection */
};
void registry_report_stats(const struct registry *r, struct registry_report_stats *out);

/* Counts one pick of n (a pointer from this registry). */
void registry_note_pick(struct registry *r, const struct registry_node *n);

/* The reap pass: looks at every node, moves silent ones to suspect and down,
 * forgets long-silent down/draining ones. Call at least every interval/4. */
void registry_reap(struct registry *r);

/* Panic (see registry_config.panic_percent): whether the registry is in it,
 * since when (clock ms; 0 when not), why (borrowed, "" when not), and how
 * many nodes in rotation it keeps there although they are silent. */
bool registry_panic(const struct registry *r);
uint64_t registry_panic_since(const struct registry *r);
const char *registry_panic_reason(const struct registry *r);
size_t registry_panic_held(const struct registry *r);

/* The guard rails' own counters, since registry_new. */
struct registry_guard_stats {
    uint64_t panic_expired;     /* silent nodes panic let go after panic_hold_max_ms */
    uint64_t flap_floor_releases; /* flapping nodes released early by the flap floor */
    uint64_t refused;           /* nodes taken out of rotation by registry_refuse */
};
void registry_guard_stats(const struct registry *r, struct registry_guard_stats *out);
/* The panic hold bound in force (panic_hold_max_ms, or its default). */
uint32_t registry_panic_hold_max(const struct registry *r);

/* Grows by one on every change of the set of nodes in rotation. */
uint64_t registry_epoch(const struct registry *r);
size_t registry_count_state(const struct registry *r, enum node_state s);

/* All nodes, in no particular order: 0 <= i < registry_size. */
size_t registry_size(const struct registry *r);
const struct registry_node *registry_at(const struct registry *r, size_t i);
const struct registry_node *registry_find(const struct registry *r, const char *id);

/* The rotation (healthy nodes), O(1) access for pickers. */
size_t registry_rotation_size(const struct registry *r);
const struct registry_node *registry_rotation_at(const struct registry *r, size_t i);

#endif
