/* addr: parsing and formatting "host:port" text and resolving it to a
 * socket address; all checks a user's typo could trip live here. */
#include "addr.h"
#include "errbuf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

/* An IPv6 literal, optionally with a "%zone" (fe80::1%eth0). */
static bool addr_is_ipv6(const char *host)
{
    char buf[INET6_ADDRSTRLEN + 1];
    const char *zone = strchr(host, '%');
    size_t len = zone ? (size_t)(zone - host) : strlen(host);
    if (len == 0 || len >= sizeof(buf))
        return false;
    if (zone) {
        if (!zone[1])
            return false;
        for (const char *z = zone + 1; *z; z++) {
            char ch = *z;
            bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.';
            if (!ok)
                return false;
        }
    }
    memcpy(buf, host, len);
    buf[len] = '\0';
    struct in6_addr a6;
    return inet_pton(AF_INET6, buf, &a6) == 1;
}

bool addr_is_ip_literal(const char *host)
{
    if (!host)
        return false;
    struct in_addr a4;
    return inet_pton(AF_INET, host, &a4) == 1 || addr_is_ipv6(host);
}

/* addr_is_ip_literal on the first len bytes of text. */
static bool addr_is_ip_literal_n(const char *text, size_t len)
{
    char buf[ADDR_HOST_MAX + 1];
    if (len > ADDR_HOST_MAX)
        return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    return addr_is_ip_literal(buf);
}

static bool addr_host_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_';
}

/* Port text: digits only, within range. */
static int addr_parse_port(const char *p, bool allow_zero, uint16_t *out, char *err,
                           size_t errlen)
{
    if (!*p) {
        errbuf_setf(err, errlen, "missing port after ':'");
        return -1;
    }
    unsigned long v = 0;
    for (const char *q = p; *q; q++) {
        if (*q < '0' || *q > '9') {
            errbuf_setf(err, errlen, "port \"%.16s%s\" is not a number", p,
                      strlen(p) > 16 ? "..." : "");
            return -1;
        }
        if (v <= 65535)
            v = v * 10 + (unsigned long)(*q - '0');
    }
    if (v > 65535 || (v == 0 && !allow_zero)) {
        errbuf_setf(err, errlen, "port %.16s%s is out of range (%d-65535)", p,
                  strlen(p) > 16 ? "..." : "", allow_zero ? 0 : 1);
        return -1;
    }
    *out = (uint16_t)v;
    return 0;
}

int addr_parse(const char *text, bool allow_zero, struct addr *out, char *err, size_t errlen)
{
    if (!text || !*text) {
        errbuf_setf(err, errlen, "empty address (want host:port)");
        return -1;
    }

    const char *host, *port;
    size_t hlen;
    bool bracketed = text[0] == '[';
    if (bracketed) {
        const char *close = strchr(text, ']');
        if (!close) {
            errbuf_setf(err, errlen, "unterminated '[' (want [ipv6]:port)");
            return -1;
        }
        host = text + 1;
        hlen = (size_t)(close - host);
        if (close[1] == '\0') {
            errbuf_setf(err, errlen, "missing port (want [ipv6]:port)");
            return -1;
        }
        if (close[1] != ':') {
            errbuf_setf(err, errlen, "unexpected text after ']' (want [ipv6]:port)");
            return -1;
        }
        port = close + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon) {
            errbuf_setf(err, errlen, "missing port (want host:port)");
            return -1;
        }
        host = text;
        hlen = (size_t)(colon - text);
        /* "::1:80" could be [::1]:80 or [::]:180; other colons (a URL's
         * "tcp://") fall to the character check below. */
        if (memchr(host, ':', hlen) && (addr_is_ipv6(text) || addr_is_ip_literal_n(host, hlen))) {
            errbuf_setf(err, errlen, "an IPv6 address needs brackets (want [ipv6]:port)");
            return -1;
        }
        port = colon + 1;
    }

    if (hlen == 0) {
        errbuf_setf(err, errlen, "empty host (want host:port)");
        return -1;
    }
    if (hlen > ADDR_HOST_MAX) {
        errbuf_setf(err, errlen, "host is too long (%zu bytes, at most %d)", hlen, ADDR_HOST_MAX);
        return -1;
    }
    char hbuf[ADDR_HOST_MAX + 1];
    memcpy(hbuf, host, hlen);
    hbuf[hlen] = '\0';

    if (bracketed) {
        if (!addr_is_ipv6(hbuf)) {
            errbuf_setf(err, errlen, "\"%s\" in brackets is not an IPv6 address", hbuf);
            return -1;
        }
    } else {
        for (size_t i = 0; i < hlen; i++) {
            if (!addr_host_char_ok(hbuf[i])) {
                unsigned char ch = (unsigned char)hbuf[i];
                if (ch > 0x20 && ch < 0x7f)
                    errbuf_setf(err, errlen, "invalid character '%c' in host", ch);
                else
                    errbuf_setf(err, errlen, "invalid byte 0x%02x in host", ch);
                return -1;
            }
        }
    }

    uint16_t portnum;
    if (addr_parse_port(port, allow_zero, &portnum, err, errlen) != 0)
        return -1;
    memcpy(out->host, hbuf, hlen + 1);
    out->port = portnum;
    return 0;
}

int addr_format(const struct addr *a, char *out, size_t len)
{
    if (strchr(a->host, ':'))
        return snprintf(out, len, "[%s]:%u", a->host, (unsigned)a->port);
    return snprintf(out, len, "%s:%u", a->host, (unsigned)a->port);
}

int addr_resolve(const struct addr *a, int socktype, struct sockaddr_storage *out,
                 socklen_t *outlen, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = socktype;
    /* No AI_ADDRCONFIG: it hides 127.0.0.1/::1 in containers whose only
     * interface is loopback. */
    hints.ai_flags = AI_NUMERICSERV;
    if (addr_is_ip_literal(a->host))
        hints.ai_flags |= AI_NUMERICHOST;

    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)a->port);
    int rc = getaddrinfo(a->host, port, &hints, &res);
    if (rc != 0) {
        errbuf_setf(err, errlen, "cannot resolve %s: %s", a->host,
                  rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return -1;
    }
    if (!res || res->ai_addrlen > sizeof(*out)) {
        errbuf_setf(err, errlen, "cannot resolve %s: no usable address", a->host);
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    memset(out, 0, sizeof(*out));
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *outlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}
