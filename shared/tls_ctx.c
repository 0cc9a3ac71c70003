/* tls_ctx: the project's TLS policy (versions, suites, options) applied to
 * OpenSSL server and client contexts, and peer-name checks for clients. */
#include "tls_ctx.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "addr.h"

/* TLS 1.2 suites: forward secret and AEAD only. */
#define TLS_CTX_CIPHERS_12 "ECDHE+AESGCM:ECDHE+CHACHA20"
/* TLS 1.3: OpenSSL's default suites (all AEAD), but the server prefers
 * AES-128-GCM-SHA256: its key schedule runs on SHA-256, which CPUs
 * accelerate (SHA-NI, ARMv8 SHA2) and SHA-384 is not, and AES-128 takes
 * fewer rounds per record; 128-bit strength matches P-256 and X25519. */
#define TLS_CTX_SUITES_13_SERVER \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

void tls_ctx_error(char *err, size_t errlen, const char *what)
{
    if (!err || errlen == 0) {
        ERR_clear_error();
        return;
    }
    int w = snprintf(err, errlen, "%s", what);
    size_t pos = w < 0 ? 0 : (size_t)w;
    bool any = false;
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        if (pos + 3 < errlen) {
            memcpy(err + pos, any ? "; " : ": ", 2);
            pos += 2;
            ERR_error_string_n(e, err + pos, errlen - pos);
            pos += strlen(err + pos);
        }
        any = true;
    }
    if (!any && pos + 1 < errlen)
        snprintf(err + pos, errlen - pos, ": no detail from OpenSSL");
}

/* What server and client share: versions, suites, options, modes. */
static int tls_ctx_apply_policy(SSL_CTX *ctx, char *err, size_t errlen)
{
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        tls_ctx_error(err, errlen, "cannot set the minimum TLS version");
        return -1;
    }
    if (SSL_CTX_set_cipher_list(ctx, TLS_CTX_CIPHERS_12) != 1) {
        tls_ctx_error(err, errlen, "cannot set the TLS 1.2 cipher list");
        return -1;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* Partial writes let a non-blocking writer keep its own buffer; moving
     * buffers let it retry from a buffer that was reallocated meanwhile. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    return 0;
}

SSL_CTX *tls_ctx_server_new(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    char what[512];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_ctx_error(err, errlen, "cannot create a TLS server context");
        return NULL;
    }
    if (tls_ctx_apply_policy(ctx, err, errlen) != 0)
        goto fail;
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_ciphersuites(ctx, TLS_CTX_SUITES_13_SERVER) != 1) {
        tls_ctx_error(err, errlen, "cannot set the TLS 1.3 cipher suites");
        goto fail;
    }
    /* Read ahead: one read() takes a record's header and body, and any
     * records behind it, instead of two reads per record. What it reads
     * ahead is invisible to epoll; tls_conn_has_pending reports it. */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* No berth client resumes a session, so the two TLS 1.3 tickets
     * OpenSSL would mint per handshake (encode, encrypt, MAC, send) are
     * work for nothing; no tickets and no server cache also mean nothing
     * to store or flush. */
    if (SSL_CTX_set_num_tickets(ctx, 0) != 1) {
        tls_ctx_error(err, errlen, "cannot turn off TLS session tickets");
        goto fail;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* set_num_tickets covers TLS 1.3 only; a TLS 1.2 client would still get
     * a ticket (testssl.sh reported one). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);

    if (!cert_file || !*cert_file) {
        snprintf(err, errlen, "no certificate file given");
        goto fail;
    }
    if (!key_file || !*key_file) {
        snprintf(err, errlen, "no private key file given");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(what, sizeof(what), "cannot load certificate chain %s", cert_file);
        tls_ctx_error(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        /* Loading already compares the key with the certificate; say that
         * in the user's terms rather than as a load failure. */
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
                                               ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH))
            snprintf(what, sizeof(what), "private key %s does not match certificate %s",
                     key_file, cert_file);
        else
            snprintf(what, sizeof(what), "cannot load private key %s", key_file);
        tls_ctx_error(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(what, sizeof(what), "private key %s does not match certificate %s", key_file,
                 cert_file);
        tls_ctx_error(err, errlen, what);
        goto fail;
    }
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *tls_ctx_client_new(const char *ca_file, bool verify, char *err, size_t errlen)
{
    char what[512];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_ctx_error(err, errlen, "cannot create a TLS client context");
        return NULL;
    }
    if (tls_ctx_apply_policy(ctx, err, errlen) != 0)
        goto fail;

    if (!verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file && *ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            snprintf(what, sizeof(what), "cannot load CA file %s", ca_file);
            tls_ctx_error(err, errlen, what);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        tls_ctx_error(err, errlen, "cannot load the system CA store");
        goto fail;
    }
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int tls_ctx_require_client_cert(SSL_CTX *ctx, const char *ca_file, char *err, size_t errlen)
{
    char what[512];
    ERR_clear_error();
    if (!ca_file || !*ca_file) {
        snprintf(err, errlen, "no client CA file given");
        return -1;
    }
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        snprintf(what, sizeof(what), "cannot load client CA file %s", ca_file);
        tls_ctx_error(err, errlen, what);
        return -1;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
    if (!names) {
        snprintf(what, sizeof(what), "no CA certificate in client CA file %s", ca_file);
        tls_ctx_error(err, errlen, what);
        return -1;
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* takes names */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

int tls_ctx_use_client_cert(SSL_CTX *ctx, const char *cert_file, const char *key_file, char *err,
                            size_t errlen)
{
    char what[512];
    ERR_clear_error();
    if (!cert_file || !*cert_file || !key_file || !*key_file) {
        snprintf(err, errlen, "a client certificate needs both a certificate and a key file");
        return -1;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(what, sizeof(what), "cannot load client certificate %s", cert_file);
        tls_ctx_error(err, errlen, what);
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(what, sizeof(what), "cannot load client key %s", key_file);
        tls_ctx_error(err, errlen, what);
        return -1;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(what, sizeof(what), "client key %s does not match certificate %s", key_file,
                 cert_file);
        tls_ctx_error(err, errlen, what);
        return -1;
    }
    return 0;
}

int tls_ctx_expect_host(SSL *ssl, const char *host, char *err, size_t errlen)
{
    char what[300];
    ERR_clear_error();
    if (!host || !*host) {
        snprintf(err, errlen, "no host name to verify the peer against");
        return -1;
    }
    if (addr_is_ip_literal(host)) {
        /* IP literals are matched against iPAddress SANs, and get no SNI
         * (RFC 6066 forbids literals in server_name). */
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1) {
            snprintf(what, sizeof(what), "cannot expect IP address %.200s", host);
            tls_ctx_error(err, errlen, what);
            return -1;
        }
        return 0;
    }
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set1_host(ssl, host) != 1) {
        snprintf(what, sizeof(what), "cannot expect host name %.200s", host);
        tls_ctx_error(err, errlen, what);
        return -1;
    }
    if (SSL_set_tlsext_host_name(ssl, host) != 1) {
        snprintf(what, sizeof(what), "cannot set SNI %.200s", host);
        tls_ctx_error(err, errlen, what);
        return -1;
    }
    return 0;
}
