/* tls_conn: one TLS connection over a non-blocking socket. The handshake,
 * the WANT_READ/WANT_WRITE crossover and bytes buffered inside OpenSSL live
 * here; session and client code never call SSL_* directly. */
#ifndef BERTH_TLS_CONN_H
#define BERTH_TLS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/ssl.h>

struct tls_conn;

enum tls_status {
    TLS_DONE = 0,     /* handshake complete / bytes transferred (see out param) */
    TLS_AGAIN = 1,    /* wait for tls_conn_events() and call again */
    TLS_CLOSED = 2,   /* peer closed (close_notify or EOF) */
    TLS_ERROR = 3,    /* fatal; tls_conn_error() says why */
};

/* Takes ownership of fd (non-blocking) in every case, also on failure.
 * Bytes go through send(MSG_NOSIGNAL)/recv: a peer that has gone gives
 * EPIPE (TLS_CLOSED), never SIGPIPE, whatever the process's disposition.
 * host: for a client, the name or IP to verify (NULL with an insecure ctx). */
struct tls_conn *tls_conn_new_server(SSL_CTX *ctx, int fd);
struct tls_conn *tls_conn_new_client(SSL_CTX *ctx, int fd, const char *host, char *err,
                                     size_t errlen);
/* Closes the socket. NULL is a no-op. */
void tls_conn_free(struct tls_conn *c);

enum tls_status tls_conn_handshake(struct tls_conn *c);
/* Reads up to len bytes; *n gets the count on TLS_DONE (n > 0). */
enum tls_status tls_conn_read(struct tls_conn *c, void *p, size_t len, size_t *n);
/* Writes up to len bytes; *n gets the count on TLS_DONE. Partial writes are
 * enabled, and a retried write may pass a moved buffer. */
enum tls_status tls_conn_write(struct tls_conn *c, const void *p, size_t len, size_t *n);
/* Sends close_notify without waiting for the peer's. */
void tls_conn_shutdown(struct tls_conn *c);

/* OpenSSL's 16 KiB record buffers: a context with SSL_MODE_RELEASE_BUFFERS
 * frees them after every read and write, which keeps an idle connection
 * small but costs a busy one two allocations per record each way. keep true
 * holds them between calls; false frees them now (unless they hold bytes,
 * then after their next use) and after every use from then on. */
void tls_conn_keep_buffers(struct tls_conn *c, bool keep);

/* EPOLLIN and/or EPOLLOUT that the last TLS_AGAIN is waiting for. */
uint32_t tls_conn_events(const struct tls_conn *c);
/* Bytes OpenSSL already holds, decrypted or read ahead as whole records:
 * epoll will not signal them again. */
bool tls_conn_has_pending(const struct tls_conn *c);
int tls_conn_fd(const struct tls_conn *c);
/* Negotiated protocol ("TLSv1.3") and cipher, after the handshake. */
const char *tls_conn_protocol(const struct tls_conn *c);
const char *tls_conn_cipher(const struct tls_conn *c);
/* SHA-256 of the peer's certificate (DER) as 64 lower-case hex digits and
 * a NUL, after the handshake. 0, or -1 when the peer sent no certificate. */
int tls_conn_peer_sha256(const struct tls_conn *c, char hex[65]);
/* The verified peer certificate's identity for logs and INFO: its subject
 * common name, else the whole subject in RFC 2253 form, control
 * characters replaced. 0, or -1 (and "") without a peer certificate. */
int tls_conn_peer_identity(const struct tls_conn *c, char *out, size_t outlen);
/* Last error text; borrowed, valid until the next call on c. It is for
 * people: decisions use the codes below. */
const char *tls_conn_error(const struct tls_conn *c);
/* The TLS alert description (SSL_AD_*, RFC 8446 section 6) the peer sent
 * with the last TLS_ERROR, e.g. SSL_AD_CERTIFICATE_REQUIRED; -1 when the
 * failure was not a received alert. */
int tls_conn_peer_alert(const struct tls_conn *c);
/* OpenSSL's packed code (ERR_GET_LIB, ERR_GET_REASON) of the last TLS_ERROR,
 * 0 when OpenSSL recorded none (a socket error, an EOF). */
unsigned long tls_conn_error_code(const struct tls_conn *c);

#endif
