/* auth.h - API keys (--api-keys FILE).
 *
 * The file holds one "KEY USER_ID" per line ('#' starts a comment). With
 * keys, every request but GET /health and the page at / must carry
 * "Authorization: Bearer KEY"; the key's user then owns the sessions it
 * creates, and another user's key gets 403 on them (ctx checks ownership).
 * Keys are compared in constant time and never logged. */
#ifndef DC_API_AUTH_H
#define DC_API_AUTH_H

#include <stddef.h>

#include "../util/error.h"
#include "../util/ids.h"

typedef struct auth auth;

/* Reads path. NULL on failure (unreadable, a malformed line, a key shorter
 * than 16 characters, a repeated key, no key at all), reason in err. */
auth *auth_load(const char *path, char *err, size_t errlen);
/* Reads the file again (SIGHUP). On failure the keys stay as they were;
 * returns -1 with the reason in err, else the number of keys. */
int auth_reload(auth *a, char *err, size_t errlen);
void auth_free(auth *a);

/* The user whose key the Authorization header's value presents (NULL: no
 * header), copied into user; else DC_E_UNAUTHORIZED. */
dc_code auth_check(auth *a, const char *header, char user[ID_MAX + 1], dc_error *err);

#endif
