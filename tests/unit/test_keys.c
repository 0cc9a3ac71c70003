/* Unit tests for shared/keys.c: Z85 against the RFC 32 test vector and
 * libzmq's own codec, key pairs libzmq agrees with, bad Z85 (length,
 * alphabet, overflow), key files (comments, garbage, several keys, too
 * large), writing pairs: modes 0600/0644, no overwrite without force, and
 * which modes open a private key or an allowlist to others. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "keys.h"

static char err[512];
static char dir[] = "/tmp/berth-test-keys-XXXXXX";

static void path_in_dir(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", dir, name);
}

static void write_text(const char *name, const char *text, mode_t mode)
{
    char p[512];
    path_in_dir(p, sizeof p, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(p, mode), 0);
}

static int setup(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/berth-test-keys-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* RFC 32's test vector is 8 bytes; a key is 32: checked against libzmq. */
static void test_encode_matches_libzmq(void **state)
{
    (void)state;
    for (int round = 0; round < 64; round++) {
        uint8_t key[KEYS_LEN];
        for (int i = 0; i < KEYS_LEN; i++)
            key[i] = (uint8_t)(round * 37 + i * 11 + (round == 1 ? 255 : 0));
        if (round == 2)
            memset(key, 0xff, sizeof key);
        if (round == 3)
            memset(key, 0, sizeof key);
        char ours[KEYS_Z85_LEN + 1], theirs[KEYS_Z85_LEN + 1];
        keys_encode(key, ours);
        assert_non_null(zmq_z85_encode(theirs, key, KEYS_LEN));
        assert_string_equal(ours, theirs);
        uint8_t back[KEYS_LEN];
        assert_int_equal(keys_decode(ours, strlen(ours), back, err, sizeof err), 0);
        assert_memory_equal(back, key, KEYS_LEN);
    }
}

static void test_generate_matches_libzmq(void **state)
{
    (void)state;
    struct keys_pair a, b;
    assert_int_equal(keys_generate(&a, err, sizeof err), 0);
    assert_int_equal(keys_generate(&b, err, sizeof err), 0);
    assert_memory_not_equal(a.secret_key, b.secret_key, KEYS_LEN);
    /* libzmq (libsodium) derives the same public key from our secret */
    char sec[KEYS_Z85_LEN + 1], pub[KEYS_Z85_LEN + 1], ours[KEYS_Z85_LEN + 1];
    keys_encode(a.secret_key, sec);
    keys_encode(a.public_key, ours);
    assert_int_equal(zmq_curve_public(pub, sec), 0);
    assert_string_equal(pub, ours);
    /* and ours from libzmq's */
    char zpub[KEYS_Z85_LEN + 1], zsec[KEYS_Z85_LEN + 1];
    assert_int_equal(zmq_curve_keypair(zpub, zsec), 0);
    struct keys_pair c;
    assert_int_equal(keys_decode(zsec, KEYS_Z85_LEN, c.secret_key, err, sizeof err), 0);
    assert_int_equal(keys_derive_public(&c, err, sizeof err), 0);
    keys_encode(c.public_key, ours);
    assert_string_equal(ours, zpub);
}

static void test_decode_rejects(void **state)
{
    (void)state;
    uint8_t key[KEYS_LEN];
    const char *good = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
    assert_int_equal(keys_decode(good, strlen(good), key, err, sizeof err), 0);

    assert_int_equal(keys_decode(good, 39, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "40"));
    assert_int_equal(keys_decode("", 0, key, err, sizeof err), -1);
    char longer[64];
    snprintf(longer, sizeof longer, "%s12345", good);
    assert_int_equal(keys_decode(longer, strlen(longer), key, err, sizeof err), -1);

    char bad[KEYS_Z85_LEN + 1];
    strcpy(bad, good);
    bad[7] = '"'; /* not in the alphabet */
    assert_int_equal(keys_decode(bad, KEYS_Z85_LEN, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "position 8"));
    bad[7] = ' ';
    assert_int_equal(keys_decode(bad, KEYS_Z85_LEN, key, err, sizeof err), -1);
    bad[7] = '\0'; /* an embedded NUL inside the given length */
    assert_int_equal(keys_decode(bad, KEYS_Z85_LEN, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "0x00"));
    /* "#####" is 85^5 - 1, more than 32 bits */
    strcpy(bad, good);
    memcpy(bad + 5, "#####", 5);
    assert_int_equal(keys_decode(bad, KEYS_Z85_LEN, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "32 bits"));
    /* the largest group that fits: 0xffffffff is "%nSc0" */
    strcpy(bad, good);
    memcpy(bad, "%nSc0", 5);
    assert_int_equal(keys_decode(bad, KEYS_Z85_LEN, key, err, sizeof err), 0);
    assert_int_equal(key[0] & key[1] & key[2] & key[3], 0xff);
}

static void test_read_file(void **state)
{
    (void)state;
    char p[512];
    uint8_t key[KEYS_LEN], want[KEYS_LEN];
    const char *z = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
    assert_int_equal(keys_decode(z, KEYS_Z85_LEN, want, err, sizeof err), 0);

    write_text("a.pub", "# node a\n\n  Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID \r\n\n", 0644);
    path_in_dir(p, sizeof p, "a.pub");
    assert_int_equal(keys_read_file(p, key, err, sizeof err), 0);
    assert_memory_equal(key, want, KEYS_LEN);

    write_text("two.pub", "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID\n"
                          "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID\n", 0644);
    path_in_dir(p, sizeof p, "two.pub");
    assert_int_equal(keys_read_file(p, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "two.pub"));
    assert_non_null(strstr(err, "line 2"));

    write_text("empty.pub", "# nothing\n\n", 0644);
    path_in_dir(p, sizeof p, "empty.pub");
    assert_int_equal(keys_read_file(p, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "no key"));

    write_text("short.pub", "Yne@$w-vo<fVvi]a<NY6T1ed\n", 0644);
    path_in_dir(p, sizeof p, "short.pub");
    assert_int_equal(keys_read_file(p, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "short.pub: line 1"));

    /* too large to be a key file */
    char *big = malloc(10000);
    assert_non_null(big);
    memset(big, 'a', 9999);
    big[9999] = '\0';
    write_text("big.pub", big, 0644);
    free(big);
    path_in_dir(p, sizeof p, "big.pub");
    assert_int_equal(keys_read_file(p, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a key file"));

    path_in_dir(p, sizeof p, "missing.pub");
    assert_int_equal(keys_read_file(p, key, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing.pub"));
    assert_int_equal(keys_read_file(dir, key, err, sizeof err), -1); /* a directory */
    assert_non_null(strstr(err, "regular"));

    /* text or file */
    assert_int_equal(keys_load_text_or_file(z, key, err, sizeof err), 0);
    assert_memory_equal(key, want, KEYS_LEN);
    path_in_dir(p, sizeof p, "a.pub");
    assert_int_equal(keys_load_text_or_file(p, key, err, sizeof err), 0);
    assert_memory_equal(key, want, KEYS_LEN);
    assert_int_equal(keys_load_text_or_file("no-such-file", key, err, sizeof err), -1);
    assert_non_null(strstr(err, "neither"));
}

static void test_write_pair(void **state)
{
    (void)state;
    char base[512], kpath[600], ppath[600];
    path_in_dir(base, sizeof base, "node1");
    snprintf(kpath, sizeof kpath, "%s.key", base);
    snprintf(ppath, sizeof ppath, "%s.pub", base);

    mode_t old = umask(0); /* the modes must not depend on the umask */
    struct keys_pair kp, kp2, back;
    assert_int_equal(keys_generate(&kp, err, sizeof err), 0);
    assert_int_equal(keys_write_pair(base, &kp, false, err, sizeof err), 0);
    umask(old);

    struct stat st;
    assert_int_equal(stat(kpath, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(ppath, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);

    bool open_to_others = true;
    assert_int_equal(keys_load_secret(kpath, &back, &open_to_others, err, sizeof err), 0);
    assert_false(open_to_others);
    assert_memory_equal(back.secret_key, kp.secret_key, KEYS_LEN);
    assert_memory_equal(back.public_key, kp.public_key, KEYS_LEN);
    uint8_t pub[KEYS_LEN];
    assert_int_equal(keys_read_file(ppath, pub, err, sizeof err), 0);
    assert_memory_equal(pub, kp.public_key, KEYS_LEN);

    /* no overwrite without force: both files untouched */
    assert_int_equal(keys_generate(&kp2, err, sizeof err), 0);
    assert_int_equal(keys_write_pair(base, &kp2, false, err, sizeof err), -1);
    assert_non_null(strstr(err, "node1.key already exists"));
    assert_int_equal(keys_load_secret(kpath, &back, NULL, err, sizeof err), 0);
    assert_memory_equal(back.secret_key, kp.secret_key, KEYS_LEN);
    /* a lone .pub also blocks, and nothing is written */
    char base2[512], k2[600];
    path_in_dir(base2, sizeof base2, "lonely");
    write_text("lonely.pub", "x\n", 0644);
    assert_int_equal(keys_write_pair(base2, &kp2, false, err, sizeof err), -1);
    assert_non_null(strstr(err, "lonely.pub already exists"));
    snprintf(k2, sizeof k2, "%s.key", base2);
    assert_int_not_equal(access(k2, F_OK), 0);

    /* force replaces, mode still 0600 even if the old file was open */
    assert_int_equal(chmod(kpath, 0644), 0);
    assert_int_equal(keys_load_secret(kpath, &back, &open_to_others, err, sizeof err), 0);
    assert_true(open_to_others);
    assert_int_equal(keys_write_pair(base, &kp2, true, err, sizeof err), 0);
    assert_int_equal(stat(kpath, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(keys_load_secret(kpath, &back, NULL, err, sizeof err), 0);
    assert_memory_equal(back.public_key, kp2.public_key, KEYS_LEN);

    /* an unwritable place is named */
    assert_int_equal(keys_write_pair("/nonexistent-dir/x", &kp, false, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent-dir/x.key"));
    assert_int_equal(keys_write_pair("", &kp, false, err, sizeof err), -1);
}

/* keys_check_mode: private keys closed to group and others, allowlists
 * (a file, a directory and the *.pub files in it) not writable by them. */
static void test_check_mode(void **state)
{
    (void)state;
    char p[512], which[512];
    unsigned mode = 0;
    path_in_dir(p, sizeof p, "tls.key");
    write_text("tls.key", "x\n", 0600);
    assert_int_equal(keys_check_mode(p, KEYS_FILE_PRIVATE, &mode, which, sizeof which),
                     KEYS_MODE_PRIVATE);
    assert_int_equal(mode, 0600);
    static const unsigned open_private[] = {0640, 0604, 0620, 0602, 0644};
    for (size_t i = 0; i < sizeof open_private / sizeof open_private[0]; i++) {
        assert_int_equal(chmod(p, open_private[i]), 0);
        assert_int_equal(keys_check_mode(p, KEYS_FILE_PRIVATE, &mode, which, sizeof which),
                         KEYS_MODE_OPEN);
        assert_int_equal(mode, open_private[i]);
        assert_string_equal(which, p);
    }
    /* a 0644 list of keys is fine: only writing lets a key in */
    assert_int_equal(keys_check_mode(p, KEYS_FILE_ALLOWLIST, NULL, NULL, 0), KEYS_MODE_PRIVATE);
    assert_int_equal(chmod(p, 0664), 0);
    assert_int_equal(keys_check_mode(p, KEYS_FILE_ALLOWLIST, NULL, NULL, 0), KEYS_MODE_OPEN);

    char sub[512], pub[600];
    path_in_dir(sub, sizeof sub, "allow");
    assert_int_equal(mkdir(sub, 0755), 0);
    assert_int_equal(chmod(sub, 0755), 0);
    snprintf(pub, sizeof pub, "%s/n1.pub", sub);
    write_text("allow/n1.pub", "x\n", 0644);
    write_text("allow/notes.txt", "x\n", 0666); /* not a key file: not looked at */
    assert_int_equal(keys_check_mode(sub, KEYS_FILE_ALLOWLIST, &mode, which, sizeof which),
                     KEYS_MODE_PRIVATE);
    assert_int_equal(mode, 0755);
    assert_int_equal(chmod(sub, 0777), 0);
    assert_int_equal(keys_check_mode(sub, KEYS_FILE_ALLOWLIST, &mode, which, sizeof which),
                     KEYS_MODE_OPEN);
    assert_int_equal(mode, 0777);
    assert_string_equal(which, sub);
    assert_int_equal(chmod(sub, 0755), 0);
    assert_int_equal(chmod(pub, 0646), 0);
    assert_int_equal(keys_check_mode(sub, KEYS_FILE_ALLOWLIST, &mode, which, sizeof which),
                     KEYS_MODE_OPEN);
    assert_int_equal(mode, 0646);
    assert_string_equal(which, pub);

    path_in_dir(p, sizeof p, "missing");
    assert_int_equal(keys_check_mode(p, KEYS_FILE_PRIVATE, &mode, which, sizeof which),
                     KEYS_MODE_UNKNOWN);
    assert_int_equal(keys_check_mode(NULL, KEYS_FILE_PRIVATE, NULL, NULL, 0), KEYS_MODE_UNKNOWN);
    assert_int_equal(keys_check_mode("", KEYS_FILE_ALLOWLIST, NULL, NULL, 0), KEYS_MODE_UNKNOWN);
    assert_non_null(strstr(keys_mode_advice(KEYS_FILE_PRIVATE), "chmod 600"));
    assert_non_null(strstr(keys_mode_advice(KEYS_FILE_ALLOWLIST), "chmod go-w"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_matches_libzmq),
        cmocka_unit_test(test_generate_matches_libzmq),
        cmocka_unit_test(test_decode_rejects),
        cmocka_unit_test_setup_teardown(test_read_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_pair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_mode, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
