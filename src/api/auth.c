/* auth.c - see auth.h.
 *
 * Constant time: a presented key is compared with every key, each over
 * the whole presented length, and the match is picked without branching on
 * it. How long a check takes then depends on the number of keys and the
 * presented key's length only, never on how much of a real key it shares. */
#include "auth.h"

#include <ctype.h>
#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/lines.h"
#include "../util/vec.h"

#define KEY_MIN 16
#define KEY_MAX 256

typedef struct {
    char key[KEY_MAX + 1];
    size_t len;
    char user[ID_MAX + 1];
} auth_key;

struct auth {
    char *path;
    pthread_rwlock_t lock;
    auth_key *keys;
    size_t n;
};

/* Parses the file into *keys; -1 with err on any problem. */
static int read_keys(const char *path, auth_key **keys, size_t *n, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read %s", path);
        return -1;
    }
    auth_key *k = NULL;
    size_t cnt = 0;
    char buf[1024], *line;
    int lineno = 0, rc = 0;
    while (!rc && (line = lines_next(f, buf, sizeof buf, &lineno))) {
        char key[KEY_MAX + 2], user[ID_MAX + 2], extra[2];
        int got = sscanf(line, "%257s %65s %1s", key, user, extra);
        if (got != 2 || strlen(key) < KEY_MIN || strlen(key) > KEY_MAX || !id_is_valid(user)) {
            /* the line itself is not quoted: it holds a key */
            snprintf(err, errlen,
                     "%s:%d: expected \"KEY USER_ID\" (a key of %d-%d characters, a user id of "
                     "[A-Za-z0-9._-])",
                     path, lineno, KEY_MIN, KEY_MAX);
            rc = -1;
            break;
        }
        for (size_t i = 0; i < cnt; i++)
            if (!strcmp(k[i].key, key)) {
                snprintf(err, errlen, "%s:%d: a key is listed twice", path, lineno);
                rc = -1;
            }
        if (rc) break;
        k = dc_xrealloc(k, (cnt + 1) * sizeof *k);
        /* both lengths were checked above */
        k[cnt].len = strlen(key);
        memcpy(k[cnt].key, key, k[cnt].len + 1);
        memcpy(k[cnt].user, user, strlen(user) + 1);
        cnt++;
    }
    fclose(f);
    if (!rc && cnt == 0) {
        snprintf(err, errlen, "%s holds no key", path);
        rc = -1;
    }
    if (rc) {
        free(k);
        return -1;
    }
    *keys = k;
    *n = cnt;
    return 0;
}

auth *auth_load(const char *path, char *err, size_t errlen) {
    auth *a = calloc(1, sizeof *a);
    if (!a || !(a->path = strdup(path))) {
        free(a);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_rwlock_init(&a->lock, NULL);
    if (read_keys(path, &a->keys, &a->n, err, errlen) != 0) {
        auth_free(a);
        return NULL;
    }
    return a;
}

int auth_reload(auth *a, char *err, size_t errlen) {
    auth_key *keys;
    size_t n;
    if (read_keys(a->path, &keys, &n, err, errlen) != 0) return -1;
    pthread_rwlock_wrlock(&a->lock);
    auth_key *old = a->keys;
    a->keys = keys;
    a->n = n;
    pthread_rwlock_unlock(&a->lock);
    free(old);
    return (int)n;
}

void auth_free(auth *a) {
    if (!a) return;
    pthread_rwlock_destroy(&a->lock);
    free(a->keys);
    free(a->path);
    free(a);
}

/* 1 when a[0..n) equals k, else 0, in time that depends on n only. */
static unsigned equal_ct(const char *a, size_t n, const auth_key *k) {
    unsigned diff = n != k->len;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)a[i] ^ (unsigned char)k->key[i % k->len];
    return (unsigned)((diff - 1) >> (sizeof diff * 8 - 1)) & 1; /* diff == 0 -> 1 */
}

dc_code auth_check(auth *a, const char *header, char user[ID_MAX + 1], dc_error *err) {
    if (!header) return dc_fail(err, DC_E_UNAUTHORIZED, "this node needs an API key: send Authorization: Bearer KEY");
    if (strncasecmp(header, "Bearer ", 7) != 0)
        return dc_fail(err, DC_E_UNAUTHORIZED, "the Authorization header must be \"Bearer KEY\"");
    const char *key = header + 7;
    while (*key == ' ') key++;
    size_t n = strlen(key);
    while (n && isspace((unsigned char)key[n - 1])) n--;
    if (n > KEY_MAX) n = KEY_MAX + 1; /* matches nothing, bounds the work */
    pthread_rwlock_rdlock(&a->lock);
    size_t found = 0, at = 0;
    for (size_t i = 0; i < a->n; i++) {
        size_t match = equal_ct(key, n, &a->keys[i]);
        size_t mask = (size_t)0 - match;
        at = (at & ~mask) | (i & mask);
        found |= match;
    }
    if (found) memcpy(user, a->keys[at].user, ID_MAX + 1);
    pthread_rwlock_unlock(&a->lock);
    return found ? DC_OK : dc_fail(err, DC_E_UNAUTHORIZED, "invalid API key");
}

/* The prefix of owner ids made from an OpenAI `user` that is not a plain
 * id. A plain id with this prefix is hashed too, so that no two `user`
 * strings ever share an owner: a plain id without the prefix maps to
 * itself, anything else to the prefix and 192 bits of BLAKE2b, which no
 * other `user` reaches but by a hash collision. */
#define HASHED "_u_"

void auth_owner_of(const char *user, char out[ID_MAX + 1]) {
    if (id_is_valid(user) && strncmp(user, HASHED, strlen(HASHED)) != 0) {
        memcpy(out, user, strlen(user) + 1);
        return;
    }
    unsigned char h[24];
    crypto_generichash(h, sizeof h, (const unsigned char *)user, strlen(user), NULL, 0);
    memcpy(out, HASHED, strlen(HASHED));
    sodium_bin2hex(out + strlen(HASHED), 2 * sizeof h + 1, h, sizeof h);
}

void auth_limits_key(const char *key_user, const char *owner, const char *addr, char out[AUTH_LIMITS_MAX + 1]) {
    if (key_user && key_user[0]) snprintf(out, AUTH_LIMITS_MAX + 1, "%s", key_user);
    else snprintf(out, AUTH_LIMITS_MAX + 1, "%.*s@%.15s", ID_MAX, owner ? owner : "", addr ? addr : "");
}
