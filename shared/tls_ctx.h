/* tls_ctx: OpenSSL context setup for nodes (server) and clients, with the
 * project's TLS policy in one place. */
#ifndef BERTH_TLS_CTX_H
#define BERTH_TLS_CTX_H

#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>

/* TLS 1.2 minimum (1.3 preferred by the library), AEAD suites only, no
 * compression, no renegotiation. Loads the PEM chain and key and checks they
 * match. Returns a new context (caller frees with SSL_CTX_free) or NULL with
 * the cause in err. */
SSL_CTX *tls_ctx_server_new(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* Client context: verifies the peer against ca_file (NULL: system store).
 * verify=false disables verification (the CLI's --insecure). */
SSL_CTX *tls_ctx_client_new(const char *ca_file, bool verify, char *err, size_t errlen);

/* Mutual TLS, server side: every client must present a certificate that
 * chains to ca_file (PEM, one or more CAs), or the handshake fails. The
 * CA names are sent in the CertificateRequest. 0, or -1 with err. */
int tls_ctx_require_client_cert(SSL_CTX *ctx, const char *ca_file, char *err, size_t errlen);

/* Mutual TLS, client side: presents cert_file (PEM chain) with key_file.
 * 0, or -1 with err (unreadable files, a key that does not match). */
int tls_ctx_use_client_cert(SSL_CTX *ctx, const char *cert_file, const char *key_file, char *err,
                            size_t errlen);

/* Makes ssl check the peer certificate against host (DNS name or IP literal),
 * and sets SNI for names. 0 or -1 with err. */
int tls_ctx_expect_host(SSL *ssl, const char *host, char *err, size_t errlen);

/* Formats "<what>: <OpenSSL error queue>" into err and clears the queue. */
void tls_ctx_error(char *err, size_t errlen, const char *what);

#endif
