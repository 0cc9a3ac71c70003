/* keys: CurveZMQ key pairs for the heartbeat channel and the feed:
 * generating them (X25519 through OpenSSL, so libberth needs no libzmq),
 * Z85 text (ZeroMQ RFC 32), the key files `berth keygen` writes and the
 * programs read, and whether a key file's mode lets others in. */
#ifndef BERTH_KEYS_H
#define BERTH_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEYS_LEN 32     /* a Curve25519 key, binary */
#define KEYS_Z85_LEN 40 /* the same in Z85 text, without the NUL */

struct keys_pair {
    uint8_t public_key[KEYS_LEN];
    uint8_t secret_key[KEYS_LEN];
};

/* A new random key pair. 0, or -1 with the cause in err. */
int keys_generate(struct keys_pair *kp, char *err, size_t errlen);

/* Fills kp->public_key from kp->secret_key. 0, or -1 with err. */
int keys_derive_public(struct keys_pair *kp, char *err, size_t errlen);

/* Z85 text of a key into out (KEYS_Z85_LEN characters and a NUL). */
void keys_encode(const uint8_t key[KEYS_LEN], char out[KEYS_Z85_LEN + 1]);

/* Parses exactly len bytes of Z85 text into a key: 40 characters of the
 * Z85 alphabet whose groups fit 32 bits. 0, or -1 with err naming the
 * problem (length, the first bad character and its position). */
int keys_decode(const char *text, size_t len, uint8_t out[KEYS_LEN], char *err, size_t errlen);

/* Reads one key from a key file: the first line that is neither blank nor
 * a '#' comment holds the key (surrounding blanks ignored); any further
 * such line is an error. Messages name the file. 0, or -1 with err. */
int keys_read_file(const char *path, uint8_t out[KEYS_LEN], char *err, size_t errlen);

/* Reads a secret key file and derives its public key. *group_readable
 * (may be NULL) tells whether the file is open to group or others, which
 * the caller should warn about. 0, or -1 with err. */
int keys_load_secret(const char *path, struct keys_pair *kp, bool *group_readable, char *err,
                     size_t errlen);

/* What keys_check_mode judges a path as. */
enum keys_file_kind {
    KEYS_FILE_PRIVATE,   /* a private key (TLS or CURVE): no access for group or others */
    KEYS_FILE_ALLOWLIST, /* a key allowlist, file or directory: not writable by group or
                            others, since whoever may write it may let a key in */
};

enum keys_mode {
    KEYS_MODE_UNKNOWN = -1, /* could not be looked at (errno); the reader reports it */
    KEYS_MODE_PRIVATE = 0,  /* closed to group and others as kind requires */
    KEYS_MODE_OPEN = 1,     /* open to group or others: the caller warns */
};

/* Looks at path's permission bits (following links: the target's mode is
 * what protects it) as kind says. For an allowlist directory the *.pub
 * files in it are looked at too. *mode (may be NULL) gets the permission
 * bits of what was judged open, or of path; which (may be NULL) gets that
 * path. Never fails otherwise; does not print. */
enum keys_mode keys_check_mode(const char *path, enum keys_file_kind kind, unsigned *mode,
                               char *which, size_t whichlen);

/* What to do about an open file of kind, for people: "chmod 600 it". */
const char *keys_mode_advice(enum keys_file_kind kind);

/* A key given as text or as a file: a path that exists is read as a key
 * file, anything else must be Z85 text. 0, or -1 with err. */
int keys_load_text_or_file(const char *text, uint8_t out[KEYS_LEN], char *err, size_t errlen);

/* Writes base + ".key" (the secret key, mode 0600, created with O_EXCL
 * unless force) and base + ".pub" (the public key, mode 0644). Without
 * force an existing file of either name is an error and nothing is
 * written. 0, or -1 with err naming the file. */
int keys_write_pair(const char *base, const struct keys_pair *kp, bool force, char *err,
                    size_t errlen);

#endif
