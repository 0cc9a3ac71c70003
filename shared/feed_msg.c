/* feed_msg: encode and decode the feed's messages; every field read is
 * bounds-checked and every failure leaves through one malformed exit. */
#include "feed_msg.h"

#include <string.h>

#include "be.h"

static const char *const feed_err_names[] = {
    [FEED_ERR_MALFORMED] = "malformed",
    [FEED_ERR_NOT_SUBSCRIBED] = "not_subscribed",
    [FEED_ERR_TOO_MANY] = "too_many_consumers",
    [FEED_ERR_UNKNOWN_NAME] = "unknown_consumer",
    [FEED_ERR_NOT_DURABLE] = "not_durable",
    [FEED_ERR_CONFIRM] = "confirm_failed",
    [FEED_ERR_JOURNAL] = "journal",
    [FEED_ERR_UNKNOWN_TYPE] = "unknown_type",
    [FEED_ERR_INTERNAL] = "internal",
};

const char *feed_err_name(unsigned code)
{
    if (code < sizeof(feed_err_names) / sizeof(feed_err_names[0]) && feed_err_names[code])
        return feed_err_names[code];
    return "unknown";
}

int feed_msg_decode(const uint8_t *p, size_t len, struct feed_msg *m)
{
    memset(m, 0, sizeof(*m));
    if (len < 1)
        goto malformed;
    m->type = p[0];
    const uint8_t *b = p + 1;
    size_t n = len - 1;
    switch (m->type) {
    case FEED_MSG_SUBSCRIBE:
        if (n != 12 && (n < 14 || n != 13 + (size_t)b[12]))
            goto malformed;
        m->seq = be_get64(b);
        m->credit = be_get32(b + 8);
        if (n > 12) {
            m->name = (const char *)b + 13;
            m->name_len = b[12];
            if (m->name_len > FEED_NAME_MAX || memchr(m->name, '\0', m->name_len))
                goto malformed;
        }
        return 0;
    case FEED_MSG_CREDIT:
        if (n != 4)
            goto malformed;
        m->credit = be_get32(b);
        return 0;
    case FEED_MSG_CONFIRM:
        if (n != 8)
            goto malformed;
        m->seq = be_get64(b);
        return 0;
    case FEED_MSG_BYE:
        if (n != 0)
            goto malformed;
        return 0;
    case FEED_MSG_WELCOME:
        if (n < 1 + 16 || n != 1 + (size_t)b[0] + 16 || b[0] == 0 ||
            memchr(b + 1, '\0', b[0]))
            goto malformed;
        m->name = (const char *)b + 1;
        m->name_len = b[0];
        m->seq = be_get64(b + 1 + b[0]);
        m->next_seq = be_get64(b + 9 + b[0]);
        return 0;
    case FEED_MSG_RECORD:
        m->body = b;
        m->body_len = n;
        return 0;
    case FEED_MSG_ERROR:
        if (n < 1)
            goto malformed;
        m->code = b[0];
        m->body = b + 1;
        m->body_len = n - 1;
        return 0;
    default:
        goto malformed;
    }
malformed:
    return -1;
}

size_t feed_msg_encode(const struct feed_msg *m, uint8_t *out, size_t cap)
{
    size_t need;
    switch (m->type) {
    case FEED_MSG_SUBSCRIBE:
        if (m->name_len > FEED_NAME_MAX || (m->name_len && !m->name))
            return 0;
        need = 1 + 12 + (m->name_len ? 1 + m->name_len : 0);
        if (need > cap)
            return 0;
        be_put64(out + 1, m->seq);
        be_put32(out + 9, m->credit);
        if (m->name_len) {
            out[13] = (uint8_t)m->name_len;
            memcpy(out + 14, m->name, m->name_len);
        }
        break;
    case FEED_MSG_CREDIT:
        if ((need = 5) > cap)
            return 0;
        be_put32(out + 1, m->credit);
        break;
    case FEED_MSG_CONFIRM:
        if ((need = 9) > cap)
            return 0;
        be_put64(out + 1, m->seq);
        break;
    case FEED_MSG_BYE:
        if ((need = 1) > cap)
            return 0;
        break;
    case FEED_MSG_WELCOME:
        if (m->name_len == 0 || m->name_len > FEED_NODE_ID_MAX)
            return 0;
        if ((need = 1 + 1 + m->name_len + 16) > cap)
            return 0;
        out[1] = (uint8_t)m->name_len;
        memcpy(out + 2, m->name, m->name_len);
        be_put64(out + 2 + m->name_len, m->seq);
        be_put64(out + 10 + m->name_len, m->next_seq);
        break;
    case FEED_MSG_ERROR:
        if (m->body_len > FEED_ERROR_TEXT_MAX || (need = 2 + m->body_len) > cap)
            return 0;
        out[1] = m->code;
        if (m->body_len)
            memcpy(out + 2, m->body, m->body_len);
        break;
    default:
        return 0;
    }
    out[0] = m->type;
    return need;
}
