/* identity.h - who a turn runs as and what it and its session are called:
 * decided here, the same for every endpoint (/completion, the OpenAI
 * routes, the sessions routes) and every caller (the API layer names what
 * it must know before the generation; the context manager (ctx.h)
 * what its caller left out). In util/ because both layers use it.
 *
 *  - The user. With API keys, the key's user, whatever the request says
 *    (api/auth.h). Without, the user the request claims (`user_id` on
 *    /completion and the sessions routes, OpenAI's `user` through
 *    auth_owner_of), or, when it names no one, "anonymous": then a session
 *    it starts is continued, read and deleted by whoever knows its id, 128
 *    random bits, and needs no user on any route. (The per-user limits
 *    still tell key-less clients apart by address: api/auth.h
 *    auth_limits_key.)
 *  - A new session's id: 32 random hex digits (ids.h), chosen before the
 *    generation (the OpenAI routes choose it while parsing, so that a
 *    stream's first event can already name it). A turn that names no
 *    session starts one, so it must be turn 1: "turn N needs the session_id
 *    of turn 1" is checked here only. A client may
 *    also name its own new session (the paper's client does), any valid id
 *    (ids.h), at turn 1.
 *  - A fork's id: a new session id, the same way (a Responses call that
 *    continues an older response: api/complete.c, or the context manager when the
 *    turn it continues was taken meanwhile, ctx_request.fork_on_conflict).
 *  - A reply's id: "chatcmpl-" and 32 random hex digits on chat
 *    completions; "resp_<session>_<turn>" for a stored response, which is
 *    what previous_response_id names (identity_response_id_parse); "resp_" and
 *    32 random hex digits for an unstored one, which names no turn and so
 *    cannot be continued. /completion replies have no id of their own:
 *    session_id and turn name them. */
#ifndef DC_UTIL_IDENTITY_H
#define DC_UTIL_IDENTITY_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "ids.h"

#define IDENTITY_ANONYMOUS "anonymous"

/* The user a request runs as: key_user (NULL or "" without keys), else
 * claimed (NULL: none; not checked here), else IDENTITY_ANONYMOUS. Returns
 * one of them. */
const char *identity_user(const char *key_user, const char *claimed);

/* A turn that names no session starts one: *turn must be 0 (not given) or
 * 1, and becomes 1; sid gets the new session's id. */
dc_code identity_new_session(uint32_t *turn, char sid[ID_MAX + 1], dc_error *err);
/* The id of a new fork of a session. */
dc_code identity_fork_id(char sid[ID_MAX + 1], dc_error *err);

#define IDENTITY_REPLY_MAX (ID_MAX + 48) /* a reply's id, with its terminator */
/* A reply's id (see the top): a Responses reply (responses) of session sid
 * at turn, or (sid NULL) one stored nowhere; else a chat completion's. */
void identity_reply_id(bool responses, const char *sid, uint32_t turn, char out[IDENTITY_REPLY_MAX]);
/* Splits "resp_<session>_<turn>"; false when id is not one. */
bool identity_response_id_parse(const char *id, char sid[ID_MAX + 1], uint32_t *turn);

#endif
