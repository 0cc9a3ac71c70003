/* addr: "host:port" text addresses (IPv4, [IPv6], host names) and their
 * resolution to socket addresses. */
#ifndef BERTH_ADDR_H
#define BERTH_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define ADDR_HOST_MAX 253

struct addr {
    char host[ADDR_HOST_MAX + 1]; /* without brackets */
    uint16_t port;
};

/* Parses "1.2.3.4:80", "[::1]:80", "example.org:80". A bare IPv6 without
 * brackets is rejected (ambiguous). Port 1..65535, or 0 when allow_zero.
 * Returns 0, or -1 with the reason in err. */
int addr_parse(const char *text, bool allow_zero, struct addr *out, char *err, size_t errlen);

/* Writes "host:port" with brackets around IPv6; returns snprintf's result. */
int addr_format(const struct addr *a, char *out, size_t len);

/* True for an IPv4 or IPv6 literal (no brackets). */
bool addr_is_ip_literal(const char *host);

/* Resolves with getaddrinfo (blocking: start-up and CLI use only) to the
 * first address; 0 or -1 with the reason in err. */
int addr_resolve(const struct addr *a, int socktype, struct sockaddr_storage *out,
                 socklen_t *outlen, char *err, size_t errlen);

#endif
