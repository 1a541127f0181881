/* ids.h - session and user identifiers.
 *
 * Ids the node assigns are 128 bits from the kernel CSPRNG, as 32 lowercase
 * hex digits: unguessable, so knowing one session id does not reveal another.
 * Ids a client supplies (the paper's client names its own user) are accepted
 * when they are 1..64 bytes of [A-Za-z0-9._-], a dot only between two other
 * characters: safe as store keys and NATS subject tokens, and printable in
 * logs. */
#ifndef DC_IDS_H
#define DC_IDS_H

#include <stdbool.h>

#define ID_MAX 64 /* longest accepted id, without the terminator */

/* Writes 32 hex digits and a NUL into out. Returns 0, or -1 if the kernel
 * would not give random bytes. */
int id_random_hex(char out[33]);
bool id_is_valid(const char *id);

#endif
