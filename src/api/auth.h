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

/* Who a request is, for every endpoint, decided here:
 *  - with keys, the key's user (auth_check), whatever the request says;
 *  - without, the user the request claims (user_id on /completion and the
 *    sessions routes, `user` on the OpenAI ones through auth_owner_of), or
 *    none: then it is "anonymous" on every route (util/identity.h: a session's
 *    random id is then what lets a client continue it).
 * The per-user limits (--max-streams-per-key, --max-sessions-per-user)
 * count against auth_limits_key: the key's user; without keys the claimed
 * user at the client's address, or the address alone for a client that
 * names no one. A claim is free to make, so key-less limits are only fair
 * shares, never a protection: what they must not do is let one client
 * exhaust another's (a stranger naming no one, or naming you, from
 * elsewhere). The engine reuses cached KV only within one such client
 * (ctx_request.quota_user). docs/SECURITY.md, "Who a key-less client is". */
#define AUTH_LIMITS_MAX (ID_MAX + 1 + 15) /* an owner, "@", a dotted IPv4 address */
void auth_limits_key(const char *key_user, const char *owner, const char *addr, char out[AUTH_LIMITS_MAX + 1]);

/* The owner id of an OpenAI `user` (any string: OpenAI's is an email, a
 * name, a hash): the string itself when it is a plain id (ids.h) that does
 * not start with "_u_", else "_u_" and 48 hex digits of its hash. Distinct
 * users never get the same owner id; the id is what responses show as
 * "user" and what GET/DELETE /v1/sessions/{id}?user_id= take. */
void auth_owner_of(const char *user, char out[ID_MAX + 1]);

#endif
