/* keys: Curve25519 key pairs (OpenSSL X25519, the same keys libsodium's
 * crypto_box makes), Z85 text, and reading and writing key files. */
#include "keys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "errbuf.h"

/* A key file holds one line of 40 characters; anything much larger is not one. */
#define KEYS_FILE_MAX 4096

static const char z85_alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

static int z85_value(char c)
{
    const char *p = c ? strchr(z85_alphabet, c) : NULL;
    return p ? (int)(p - z85_alphabet) : -1;
}

void keys_encode(const uint8_t key[KEYS_LEN], char out[KEYS_Z85_LEN + 1])
{
    size_t o = 0;
    for (size_t i = 0; i < KEYS_LEN; i += 4) {
        uint32_t v = (uint32_t)key[i] << 24 | (uint32_t)key[i + 1] << 16 |
                     (uint32_t)key[i + 2] << 8 | key[i + 3];
        for (int d = 4; d >= 0; d--) {
            out[o + (size_t)d] = z85_alphabet[v % 85];
            v /= 85;
        }
        o += 5;
    }
    out[KEYS_Z85_LEN] = '\0';
}

int keys_decode(const char *text, size_t len, uint8_t out[KEYS_LEN], char *err, size_t errlen)
{
    if (len != KEYS_Z85_LEN) {
        errbuf_setf(err, errlen, "a key is %d Z85 characters, got %zu", KEYS_Z85_LEN, len);
        return -1;
    }
    uint8_t tmp[KEYS_LEN];
    for (size_t i = 0; i < KEYS_Z85_LEN; i += 5) {
        uint64_t v = 0;
        for (size_t j = i; j < i + 5; j++) {
            int d = z85_value(text[j]);
            if (d < 0) {
                unsigned char c = (unsigned char)text[j];
                if (c > 0x20 && c < 0x7f)
                    errbuf_setf(err, errlen, "character '%c' at position %zu is not Z85", c,
                                j + 1);
                else
                    errbuf_setf(err, errlen, "byte 0x%02x at position %zu is not Z85", c, j + 1);
                return -1;
            }
            v = v * 85 + (uint64_t)d;
        }
        if (v > UINT32_MAX) {
            errbuf_setf(err, errlen, "characters %zu-%zu do not encode 32 bits (not a Z85 key)",
                        i + 1, i + 5);
            return -1;
        }
        size_t b = i / 5 * 4;
        tmp[b] = (uint8_t)(v >> 24);
        tmp[b + 1] = (uint8_t)(v >> 16);
        tmp[b + 2] = (uint8_t)(v >> 8);
        tmp[b + 3] = (uint8_t)v;
    }
    memcpy(out, tmp, KEYS_LEN);
    OPENSSL_cleanse(tmp, sizeof tmp);
    return 0;
}

int keys_generate(struct keys_pair *kp, char *err, size_t errlen)
{
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, NULL);
    EVP_PKEY *pkey = NULL;
    size_t slen = KEYS_LEN, plen = KEYS_LEN;
    int rc = -1;
    if (!pctx || EVP_PKEY_keygen_init(pctx) <= 0 || EVP_PKEY_keygen(pctx, &pkey) <= 0 ||
        EVP_PKEY_get_raw_private_key(pkey, kp->secret_key, &slen) <= 0 ||
        EVP_PKEY_get_raw_public_key(pkey, kp->public_key, &plen) <= 0 || slen != KEYS_LEN ||
        plen != KEYS_LEN)
        errbuf_setf(err, errlen, "cannot generate an X25519 key pair (OpenSSL)");
    else
        rc = 0;
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(pctx);
    return rc;
}

int keys_derive_public(struct keys_pair *kp, char *err, size_t errlen)
{
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, kp->secret_key, KEYS_LEN);
    size_t plen = KEYS_LEN;
    int rc = -1;
    if (!pkey || EVP_PKEY_get_raw_public_key(pkey, kp->public_key, &plen) <= 0 ||
        plen != KEYS_LEN)
        errbuf_setf(err, errlen, "cannot derive the public key (OpenSSL)");
    else
        rc = 0;
    EVP_PKEY_free(pkey);
    return rc;
}

/* Reads at most KEYS_FILE_MAX bytes of path into buf (NUL-terminated). */
static int read_small_file(const char *path, char *buf, size_t bufsize, struct stat *st, char *err,
                           size_t errlen)
{
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block us */
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        errbuf_setf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, st) != 0) {
        errbuf_setf(err, errlen, "%s: stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        errbuf_setf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, bufsize - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            errbuf_setf(err, errlen, "%s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
        if (got == bufsize - 1) {
            errbuf_setf(err, errlen, "%s: larger than %zu bytes, not a key file", path,
                        bufsize - 2);
            close(fd);
            return -1;
        }
    }
    close(fd);
    buf[got] = '\0';
    return 0;
}

/* The one key line of a key file's text. */
static int parse_key_text(const char *path, const char *text, uint8_t out[KEYS_LEN], char *err,
                          size_t errlen)
{
    bool found = false;
    unsigned lineno = 0;
    for (const char *p = text; *p;) {
        size_t len = strcspn(p, "\n");
        const char *next = p[len] ? p + len + 1 : p + len;
        lineno++;
        while (len && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '\r'))
            len--;
        if (len == 0 || *p == '#') {
            p = next;
            continue;
        }
        if (found) {
            errbuf_setf(err, errlen, "%s: line %u: a key file holds one key", path, lineno);
            return -1;
        }
        char why[128];
        if (keys_decode(p, len, out, why, sizeof why) != 0) {
            errbuf_setf(err, errlen, "%s: line %u: %s", path, lineno, why);
            return -1;
        }
        found = true;
        p = next;
    }
    if (!found) {
        errbuf_setf(err, errlen, "%s: no key in the file (expected one line of %d Z85 characters)",
                    path, KEYS_Z85_LEN);
        return -1;
    }
    return 0;
}

/* The rule, once: the permission bits kind must not have. */
static bool mode_open(enum keys_file_kind kind, mode_t mode)
{
    return (mode & (kind == KEYS_FILE_PRIVATE ? (mode_t)077 : (mode_t)022)) != 0;
}

int keys_read_file(const char *path, uint8_t out[KEYS_LEN], char *err, size_t errlen)
{
    char buf[KEYS_FILE_MAX + 2];
    struct stat st;
    if (read_small_file(path, buf, sizeof buf, &st, err, errlen) != 0)
        return -1;
    int rc = parse_key_text(path, buf, out, err, errlen);
    OPENSSL_cleanse(buf, sizeof buf);
    return rc;
}

int keys_load_secret(const char *path, struct keys_pair *kp, bool *group_readable, char *err,
                     size_t errlen)
{
    char buf[KEYS_FILE_MAX + 2];
    struct stat st;
    if (read_small_file(path, buf, sizeof buf, &st, err, errlen) != 0)
        return -1;
    int rc = parse_key_text(path, buf, kp->secret_key, err, errlen);
    OPENSSL_cleanse(buf, sizeof buf);
    if (rc != 0)
        return -1;
    if (group_readable)
        *group_readable = mode_open(KEYS_FILE_PRIVATE, st.st_mode);
    char why[128];
    if (keys_derive_public(kp, why, sizeof why) != 0) {
        errbuf_setf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    return 0;
}

static void set_which(char *which, size_t whichlen, const char *path)
{
    if (which && whichlen)
        snprintf(which, whichlen, "%s", path);
}

enum keys_mode keys_check_mode(const char *path, enum keys_file_kind kind, unsigned *mode,
                               char *which, size_t whichlen)
{
    struct stat st;
    if (!path || !*path || stat(path, &st) != 0)
        return KEYS_MODE_UNKNOWN;
    if (mode)
        *mode = (unsigned)(st.st_mode & 07777);
    set_which(which, whichlen, path);
    if (mode_open(kind, st.st_mode))
        return KEYS_MODE_OPEN;
    if (kind != KEYS_FILE_ALLOWLIST || !S_ISDIR(st.st_mode))
        return KEYS_MODE_PRIVATE;
    /* A key file in a closed directory may still be rewritten in place. */
    DIR *d = opendir(path);
    if (!d)
        return KEYS_MODE_PRIVATE; /* the loader reports it */
    enum keys_mode verdict = KEYS_MODE_PRIVATE;
    struct dirent *de;
    while (verdict == KEYS_MODE_PRIVATE && (de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        struct stat fst;
        /* The loader's rule: "*.pub", not hidden; links are refused there. */
        if (len <= 4 || strcmp(de->d_name + len - 4, ".pub") != 0 || de->d_name[0] == '.' ||
            fstatat(dirfd(d), de->d_name, &fst, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(fst.st_mode) || !mode_open(kind, fst.st_mode))
            continue;
        verdict = KEYS_MODE_OPEN;
        if (mode)
            *mode = (unsigned)(fst.st_mode & 07777);
        if (which && whichlen)
            snprintf(which, whichlen, "%s/%s", path, de->d_name);
    }
    closedir(d);
    return verdict;
}

const char *keys_mode_advice(enum keys_file_kind kind)
{
    return kind == KEYS_FILE_PRIVATE
               ? "a private key readable or writable by group or others: chmod 600 it"
               : "an allowlist writable by group or others, who could add a key: chmod go-w it";
}

int keys_load_text_or_file(const char *text, uint8_t out[KEYS_LEN], char *err, size_t errlen)
{
    struct stat st;
    if (stat(text, &st) == 0)
        return keys_read_file(text, out, err, errlen);
    char why[128];
    if (keys_decode(text, strlen(text), out, why, sizeof why) != 0) {
        errbuf_setf(err, errlen, "\"%.60s\" is neither a key file nor a Z85 key (%s)", text, why);
        return -1;
    }
    return 0;
}

/* fsyncs the directory holding path, so a new or renamed name survives a
 * crash as well as the file's content does. 0 or -1 (errno). */
static int fsync_parent_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd;
    do
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* Writes line into a new temporary file beside final, with mode, then puts
 * it in place: link() refuses an existing file atomically, rename()
 * replaces one; then the directory is fsynced. */
static int write_key_file(const char *final, const char *line, mode_t mode, bool force, char *err,
                          size_t errlen)
{
    char tmp[4096 + 16];
    if (snprintf(tmp, sizeof tmp, "%s.tmpXXXXXX", final) >= (int)sizeof tmp) {
        errbuf_setf(err, errlen, "%s: path too long", final);
        return -1;
    }
    int fd = mkstemp(tmp); /* mode 0600, O_EXCL */
    if (fd < 0) {
        errbuf_setf(err, errlen, "%s: cannot create a file beside it: %s", final, strerror(errno));
        return -1;
    }
    size_t len = strlen(line), off = 0;
    int rc = fchmod(fd, mode);
    while (rc == 0 && off < len) {
        ssize_t n = write(fd, line + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = -1;
        else
            off += (size_t)n;
    }
    if (rc == 0)
        rc = fsync(fd);
    int saved = errno;
    if (close(fd) != 0 && rc == 0) {
        rc = -1;
        saved = errno;
    }
    if (rc != 0) {
        errbuf_setf(err, errlen, "%s: %s", final, strerror(saved));
        unlink(tmp);
        return -1;
    }
    if (force) {
        rc = rename(tmp, final);
    } else {
        rc = link(tmp, final);
        saved = errno;
        unlink(tmp);
        errno = saved;
    }
    if (rc != 0) {
        if (errno == EEXIST)
            errbuf_setf(err, errlen, "%s already exists (--force replaces it)", final);
        else
            errbuf_setf(err, errlen, "%s: %s", final, strerror(errno));
        if (force)
            unlink(tmp);
        return -1;
    }
    if (fsync_parent_dir(final) != 0) {
        errbuf_setf(err, errlen, "%s: fsync of its directory: %s", final, strerror(errno));
        return -1;
    }
    return 0;
}

int keys_write_pair(const char *base, const struct keys_pair *kp, bool force, char *err,
                    size_t errlen)
{
    char key_path[4096], pub_path[4096];
    if (!base || !*base || snprintf(key_path, sizeof key_path, "%s.key", base) >= (int)sizeof key_path ||
        snprintf(pub_path, sizeof pub_path, "%s.pub", base) >= (int)sizeof pub_path) {
        errbuf_setf(err, errlen, "key file name empty or too long");
        return -1;
    }
    struct stat st;
    if (!force) {
        /* Both checked first so a refusal writes nothing. */
        if (lstat(key_path, &st) == 0 || lstat(pub_path, &st) == 0) {
            errbuf_setf(err, errlen, "%s already exists (--force replaces it)",
                        lstat(key_path, &st) == 0 ? key_path : pub_path);
            return -1;
        }
    }
    char z85[KEYS_Z85_LEN + 1], line[KEYS_Z85_LEN + 2];
    keys_encode(kp->secret_key, z85);
    snprintf(line, sizeof line, "%s\n", z85);
    int rc = write_key_file(key_path, line, 0600, force, err, errlen);
    OPENSSL_cleanse(z85, sizeof z85);
    OPENSSL_cleanse(line, sizeof line);
    if (rc != 0)
        return -1;
    keys_encode(kp->public_key, z85);
    snprintf(line, sizeof line, "%s\n", z85);
    if (write_key_file(pub_path, line, 0644, force, err, errlen) != 0) {
        if (!force)
            unlink(key_path); /* ours: the check above found no file there */
        return -1;
    }
    return 0;
}
