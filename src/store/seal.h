/* seal.h - authenticated encryption of stored records.
 *
 * With a deployment key (serve --store-key FILE), every record a node writes
 * to the store is sealed with XChaCha20-Poly1305 (libsodium) before it leaves
 * the process, and opened after it is read back. Whoever runs or reads the
 * store (LMDB files, NATS servers, their disks and links) sees ciphertext;
 * a record changed by one bit, or moved to another session or turn, fails
 * to open and is reported as corrupt, never decoded.
 *
 * Sealed record, version 1:
 *   "DX" | u8 version | 24-byte random nonce | ciphertext | 16-byte tag
 * The associated data is the 3-byte header plus the record's place in the
 * store (the caller's `ad`: session id and record kind), so a valid record
 * cannot be replayed under another name. 24-byte nonces are drawn at random
 * per record: at that size collisions are negligible without any counter
 * state to keep across nodes.
 *
 * The key file holds 32 bytes as 64 hex digits (whitespace ignored);
 * `discedge keygen FILE` writes one. */
#ifndef DC_SEAL_H
#define DC_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../util/vec.h"

#define SEAL_KEY_BYTES 32
#define SEAL_OVERHEAD (3 + 24 + 16) /* bytes a sealed record adds */

typedef struct seal seal;

/* A sealer for key[SEAL_KEY_BYTES]; the key is copied into locked memory. */
seal *seal_new(const uint8_t key[SEAL_KEY_BYTES]);
/* Reads a key file. On failure returns NULL with the reason in err. */
seal *seal_load(const char *path, char *err, size_t errlen);
void seal_free(seal *k);

/* Writes a new random key to path (mode 0600; refuses to overwrite). */
int seal_keygen(const char *path, char *err, size_t errlen);

/* True when data starts like a sealed record (it may still be forged). */
bool seal_is_sealed(const void *data, size_t n);

/* Replaces rec's bytes by their sealed form, bound to ad. */
void seal_encrypt(const seal *k, const char *ad, strbuf *rec);

/* Opens a sealed record bound to ad into out (replacing its contents).
 * False when data is not a sealed record, or fails authentication. */
bool seal_decrypt(const seal *k, const char *ad, const void *data, size_t n, strbuf *out);

#endif
