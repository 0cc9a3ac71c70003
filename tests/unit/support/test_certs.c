/* test_certs: generates the unit tests' CA, leaf and unrelated CA with
 * OpenSSL (ECDSA P-256, valid from an hour ago for a day). */
#include "test_certs.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

/* A certificate for key, signed by issuer_key (self-signed when issuer is
 * NULL); ca makes it a CA, otherwise a leaf for localhost. NULL on failure. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       bool ca, long serial)
{
    X509 *cert = X509_new();
    if (!cert)
        return NULL;
    X509_NAME *name = X509_get_subject_name(cert);
    X509 *signer = issuer ? issuer : cert;
    bool ok = X509_set_version(cert, 2) == 1 &&
              ASN1_INTEGER_set(X509_get_serialNumber(cert), serial) == 1 &&
              X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
              X509_gmtime_adj(X509_getm_notAfter(cert), 86400) &&
              X509_set_pubkey(cert, key) == 1 &&
              X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1,
                                         -1, 0) == 1 &&
              X509_set_issuer_name(cert, X509_get_subject_name(signer)) == 1 &&
              add_ext(cert, signer, NID_subject_key_identifier, "hash") == 0 &&
              add_ext(cert, signer, NID_authority_key_identifier, "keyid:always") == 0;
    if (ok && ca)
        ok = add_ext(cert, signer, NID_basic_constraints, "critical,CA:TRUE") == 0 &&
             add_ext(cert, signer, NID_key_usage, "critical,keyCertSign,cRLSign") == 0;
    else if (ok)
        /* Both uses: the same leaf serves as a node and as an mTLS client. */
        ok = add_ext(cert, signer, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
             add_ext(cert, signer, NID_key_usage, "critical,digitalSignature") == 0 &&
             add_ext(cert, signer, NID_ext_key_usage, "serverAuth,clientAuth") == 0 &&
             add_ext(cert, signer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1") == 0;
    if (!ok || X509_sign(cert, issuer_key ? issuer_key : key, EVP_sha256()) <= 0) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

static int write_cert(const char *path, X509 *cert)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int ok = PEM_write_X509(f, cert) == 1;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int write_key(const char *path, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
    return fclose(f) == 0 && ok ? 0 : -1;
}

int test_certs_make(struct test_certs *t, const char *prefix)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "%s-XXXXXX", prefix);
    if (!mkdtemp(t->dir)) {
        perror("test_certs: mkdtemp");
        return -1;
    }
    snprintf(t->ca_pem, sizeof(t->ca_pem), "%s/ca.pem", t->dir);
    snprintf(t->leaf_pem, sizeof(t->leaf_pem), "%s/leaf.pem", t->dir);
    snprintf(t->leaf_key, sizeof(t->leaf_key), "%s/leaf.key", t->dir);
    snprintf(t->other_ca_pem, sizeof(t->other_ca_pem), "%s/other-ca.pem", t->dir);
    snprintf(t->other_key, sizeof(t->other_key), "%s/other.key", t->dir);
    snprintf(t->missing_pem, sizeof(t->missing_pem), "%s/missing.pem", t->dir);

    EVP_PKEY *ca_k = EVP_EC_gen("P-256");
    EVP_PKEY *leaf_k = EVP_EC_gen("P-256");
    EVP_PKEY *other_k = EVP_EC_gen("P-256");
    X509 *ca = ca_k ? make_cert(ca_k, "berth test CA", NULL, NULL, true, 1) : NULL;
    X509 *leaf = ca && leaf_k ? make_cert(leaf_k, "localhost", ca, ca_k, false, 2) : NULL;
    X509 *other = other_k ? make_cert(other_k, "berth other CA", NULL, NULL, true, 3) : NULL;
    int rc = ca && leaf && other && write_cert(t->ca_pem, ca) == 0 &&
                     write_cert(t->leaf_pem, leaf) == 0 && write_key(t->leaf_key, leaf_k) == 0 &&
                     write_cert(t->other_ca_pem, other) == 0 &&
                     write_key(t->other_key, other_k) == 0
                 ? 0
                 : -1;
    if (rc != 0)
        fprintf(stderr, "test_certs: cannot make the test certificates in %s\n", t->dir);
    X509_free(ca);
    X509_free(leaf);
    X509_free(other);
    EVP_PKEY_free(ca_k);
    EVP_PKEY_free(leaf_k);
    EVP_PKEY_free(other_k);
    return rc;
}

void test_certs_remove(struct test_certs *t)
{
    const char *files[] = {t->ca_pem, t->leaf_pem, t->leaf_key, t->other_ca_pem, t->other_key};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (files[i][0])
            unlink(files[i]);
    if (t->dir[0])
        rmdir(t->dir);
}
