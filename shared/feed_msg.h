/* feed_msg: the one codec of the journal feed's messages (docs/DESIGN.md,
 * "Downstream"), used by the node's feed and by berth tail. Each message
 * is one ZeroMQ frame: a type byte, then its body. */
#ifndef BERTH_FEED_MSG_H
#define BERTH_FEED_MSG_H

#include <stddef.h>
#include <stdint.h>

/* Consumer -> node. */
#define FEED_MSG_SUBSCRIBE 'S' /* u64 from_seq (0: from the next record, or for a durable
                                * consumer from after its confirmed seq), u32 credit,
                                * optionally u8 name_len + a --journal-consumers name */
#define FEED_MSG_CREDIT 'C'    /* u32 more records the consumer can take (0: keepalive) */
#define FEED_MSG_CONFIRM 'K'   /* durable consumers: u64 seq, everything up to it is
                                * processed; retention may delete it (no reply) */
#define FEED_MSG_BYE 'X'       /* the consumer leaves */
/* Node -> consumer. */
#define FEED_MSG_WELCOME 'W'   /* u8 id_len, node id, u64 first_seq kept, u64 next_seq */
#define FEED_MSG_RECORD 'R'    /* one journal record exactly as on disk (journal_record) */
#define FEED_MSG_ERROR 'E'     /* u8 code (enum feed_err), text; the subscription is over */

#define FEED_NAME_MAX 64       /* durable consumer names follow the node-id rule */
#define FEED_NODE_ID_MAX 255
#define FEED_MSG_MAX (1 + 1 + FEED_NODE_ID_MAX + 16) /* the largest message but a RECORD */
#define FEED_ERROR_TEXT_MAX 200

/* Why the node ended a subscription: consumers act on the code, the text
 * is for people. */
enum feed_err {
    FEED_ERR_MALFORMED = 1,      /* a message that does not decode */
    FEED_ERR_NOT_SUBSCRIBED = 2, /* no subscription (the node restarted): subscribe again */
    FEED_ERR_TOO_MANY = 3,       /* FEED_CONSUMERS_MAX reached */
    FEED_ERR_UNKNOWN_NAME = 4,   /* a durable name the node was not configured with */
    FEED_ERR_NOT_DURABLE = 5,    /* CONFIRM on a subscription without a name */
    FEED_ERR_CONFIRM = 6,        /* the position could not be stored or is ahead of the journal */
    FEED_ERR_JOURNAL = 7,        /* the node could not read its journal */
    FEED_ERR_UNKNOWN_TYPE = 8,   /* a message type this node does not know */
    FEED_ERR_INTERNAL = 9,       /* out of memory and the like */
};

/* The stable name of a code ("not_subscribed"), "unknown" for others. */
const char *feed_err_name(unsigned code);

/* A decoded message; pointers borrow from the bytes decoded. */
struct feed_msg {
    uint8_t type;                /* FEED_MSG_* */
    uint64_t seq;                /* SUBSCRIBE: from_seq; CONFIRM: seq; WELCOME: first_seq */
    uint64_t next_seq;           /* WELCOME */
    uint32_t credit;             /* SUBSCRIBE, CREDIT */
    const char *name;            /* SUBSCRIBE: durable name (NULL: none); WELCOME: node id */
    size_t name_len;
    uint8_t code;                /* ERROR */
    const uint8_t *body;         /* RECORD: the record; ERROR: the text */
    size_t body_len;
};

/* Decodes one message. 0, or -1 when it is malformed (unknown type,
 * wrong length, a name with NUL or outside its bounds). */
int feed_msg_decode(const uint8_t *p, size_t len, struct feed_msg *m);

/* Encodes m (any type but RECORD, which is the type byte and the record)
 * into out; returns its length, or 0 when m does not fit cap or breaks a
 * bound. */
size_t feed_msg_encode(const struct feed_msg *m, uint8_t *out, size_t cap);

#endif
