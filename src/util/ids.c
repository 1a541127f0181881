/* ids.c - see ids.h. */
#include "ids.h"

#include <string.h>
#include <sys/random.h>

int id_random_hex(char out[33]) {
    unsigned char raw[16];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n <= 0) return -1;
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[32] = '\0';
    return 0;
}

/* The one check of every id a client supplies, done before anything else
 * happens to the request (ctx.c, api). Besides the characters, dots only
 * between other characters: a session id is a token of a NATS subject
 * (dce.<keygroup>.t.<id>), where "a..b", ".a" and "a." are invalid subjects
 * (empty tokens). Refusing them here, for every store, means an id behaves
 * the same on the embedded store and on NATS: 400 before any generation. */
bool id_is_valid(const char *id) {
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > ID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
            (c == '.' && i > 0 && i + 1 < n && id[i + 1] != '.');
        if (!ok) return false;
    }
    return true;
}
