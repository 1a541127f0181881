/* seal.c - see seal.h. */
#include "seal.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG crypto_aead_xchacha20poly1305_ietf_ABYTES
#define HEADER 3

_Static_assert(SEAL_KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES, "key size");
_Static_assert(SEAL_OVERHEAD == HEADER + NONCE + TAG, "overhead");

static const unsigned char header[HEADER] = {'D', 'X', 1};

struct seal {
    unsigned char *key; /* sodium_malloc'd: guard pages, locked, wiped on free */
};

seal *seal_new(const uint8_t key[SEAL_KEY_BYTES]) {
    if (sodium_init() < 0) return NULL;
    seal *k = calloc(1, sizeof *k);
    if (!k || !(k->key = sodium_malloc(SEAL_KEY_BYTES))) {
        free(k);
        return NULL;
    }
    memcpy(k->key, key, SEAL_KEY_BYTES);
    return k;
}

void seal_free(seal *k) {
    if (!k) return;
    sodium_free(k->key);
    free(k);
}

seal *seal_load(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        fprintf(stderr, "warning: key file %s is readable by other users (chmod 600 it)\n", path);
    char hex[256];
    size_t n = fread(hex, 1, sizeof hex - 1, f);
    fclose(f);
    hex[n] = '\0';
    uint8_t key[SEAL_KEY_BYTES];
    size_t got = 0;
    const char *end = NULL;
    seal *k = NULL;
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
    } else if (sodium_hex2bin(key, sizeof key, hex, n, " \t\r\n", &got, &end) != 0 || got != sizeof key ||
               end[strspn(end, " \t\r\n")] != '\0') {
        snprintf(err, errlen, "%s: expected 64 hex digits (a 32-byte key; `discedge keygen FILE` writes one)", path);
    } else if (!(k = seal_new(key))) {
        snprintf(err, errlen, "out of memory");
    }
    sodium_memzero(key, sizeof key);
    sodium_memzero(hex, sizeof hex);
    return k;
}

int seal_keygen(const char *path, char *err, size_t errlen) {
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    uint8_t key[SEAL_KEY_BYTES];
    char hex[2 * SEAL_KEY_BYTES + 2];
    randombytes_buf(key, sizeof key);
    sodium_bin2hex(hex, sizeof hex, key, sizeof key);
    size_t len = strlen(hex);
    hex[len++] = '\n';
    bool ok = write(fd, hex, len) == (ssize_t)len;
    ok = (fsync(fd) == 0) && ok;
    ok = (close(fd) == 0) && ok;
    sodium_memzero(key, sizeof key);
    sodium_memzero(hex, sizeof hex);
    if (!ok) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        unlink(path);
        return -1;
    }
    return 0;
}

bool seal_is_sealed(const void *data, size_t n) { return n >= SEAL_OVERHEAD && memcmp(data, header, HEADER) == 0; }

/* The associated data: the header, then the caller's name for the record. */
static void ad_of(const char *ad, strbuf *out) {
    strbuf_append(out, header, HEADER);
    strbuf_puts(out, ad);
}

void seal_encrypt(const seal *k, const char *ad, strbuf *rec) {
    strbuf out = {0}, a = {0};
    strbuf_reserve(&out, rec->n + SEAL_OVERHEAD);
    ad_of(ad, &a);
    unsigned char *p = (unsigned char *)out.s;
    memcpy(p, header, HEADER);
    randombytes_buf(p + HEADER, NONCE);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(p + HEADER + NONCE, &clen, (const unsigned char *)rec->s, rec->n,
                                               (const unsigned char *)a.s, a.n, NULL, p + HEADER, k->key);
    out.n = HEADER + NONCE + (size_t)clen;
    strbuf_free(&a);
    strbuf_free(rec);
    *rec = out;
}

bool seal_decrypt(const seal *k, const char *ad, const void *data, size_t n, strbuf *out) {
    strbuf_clear(out);
    if (!seal_is_sealed(data, n)) return false;
    const unsigned char *p = data;
    strbuf a = {0};
    ad_of(ad, &a);
    strbuf_reserve(out, n - SEAL_OVERHEAD + 1);
    unsigned long long mlen = 0;
    int rc = crypto_aead_xchacha20poly1305_ietf_decrypt((unsigned char *)out->s, &mlen, NULL, p + HEADER + NONCE,
                                                        n - HEADER - NONCE, (const unsigned char *)a.s, a.n, p + HEADER,
                                                        k->key);
    strbuf_free(&a);
    out->n = rc == 0 ? (size_t)mlen : 0;
    out->s[out->n] = '\0';
    return rc == 0;
}
