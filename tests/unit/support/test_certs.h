/* test_certs: a throw-away PKI for the unit tests that run TLS: a CA, a leaf
 * it signs (CN and SAN localhost, 127.0.0.1; server and client use), and
 * an unrelated self-signed CA with its key, as PEM files in a temp dir. */
#ifndef BERTH_TEST_CERTS_H
#define BERTH_TEST_CERTS_H

#define TEST_CERTS_PATH_MAX 128

struct test_certs {
    char dir[64];
    char ca_pem[TEST_CERTS_PATH_MAX];
    char leaf_pem[TEST_CERTS_PATH_MAX], leaf_key[TEST_CERTS_PATH_MAX];
    char other_ca_pem[TEST_CERTS_PATH_MAX], other_key[TEST_CERTS_PATH_MAX];
    char missing_pem[TEST_CERTS_PATH_MAX]; /* a path in dir that never exists */
};

/* Creates the directory (prefix like "/tmp/berth-x-test") and the files.
 * 0, or -1 (with what failed on stderr) for a cmocka group set-up to return. */
int test_certs_make(struct test_certs *t, const char *prefix);
/* Removes the files and the directory. */
void test_certs_remove(struct test_certs *t);

#endif
