/* hash.h - 64-bit FNV-1a: small, stable across builds and machines, for
 * names and fingerprints that other nodes must compute alike (a model's
 * tokenizer fingerprint, the keygroup its sessions live in). Not for
 * anything an adversary chooses the input of to collide. */
#ifndef DC_HASH_H
#define DC_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_FNV_BASIS 0xcbf29ce484222325ULL

/* Continues h over n bytes; start from HASH_FNV_BASIS. */
static inline uint64_t hash_fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#endif
