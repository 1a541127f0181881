/* quota.h - per-user limits: how many things (sessions, generations in
 * flight) each user holds on this node, taken before the work starts and
 * given back when it fails or ends, so that concurrent requests can never
 * overshoot a limit.
 *
 * Two users of it:
 *  - sessions per user (ctx.c, serve --max-sessions-per-user). The store has
 *    no index by user, and counting a user's sessions there would cost a
 *    round trip per session on NATS. So each node remembers the sessions
 *    created through it and asks the store about them (the alive callback)
 *    only when a user reaches the limit (that user's sessions deleted or
 *    expired elsewhere are then forgotten), and in quota_sweep, which the
 *    node's periodic loop calls (serve.c), never a request; a session the
 *    store confirmed is not asked about again for a minute. The limit is
 *    per node: a user may hold up to it on each.
 *  - generations at once per user (complete.c, --max-streams-per-key): taken
 *    for the length of a request, never checked against anything. */
#ifndef DC_QUOTA_H
#define DC_QUOTA_H

#include <stdbool.h>

typedef struct quota quota;

/* alive(ud, item): whether an item still exists (NULL: items live until given back). */
typedef bool (*quota_alive_fn)(void *ud, const char *item);

quota *quota_new(quota_alive_fn alive, void *ud);
void quota_free(quota *q);

#define QUOTA_NAME_MAX 127 /* longest name a place is counted under */

/* Takes a place for user's item (an id, at most ID_MAX bytes; user: a name
 * of at most QUOTA_NAME_MAX bytes, whom the limit counts: a user, or what
 * the API counts a key-less client as, auth.h). False when the user
 * already holds max live items. max <= 0: no limit, nothing kept. */
bool quota_take(quota *q, const char *user, const char *item, int max);
/* Gives item back: its work failed or ended, or it was deleted. user: the
 * name it was taken under, or NULL for whatever name holds it (a session
 * deleted by its owner, who need not be the name it was counted under:
 * auth.h counts a key-less client's sessions under its address). */
void quota_give(quota *q, const char *user, const char *item);
/* Items user holds. */
int quota_count(quota *q, const char *user);
/* Upkeep, off the request path: when the table has doubled since the last
 * sweep, asks alive() about every item (not confirmed in the last minute)
 * and forgets those gone, so that the table stays within twice the live
 * items however few users ever reach their limit. Returns the items
 * forgotten. No-op without alive. */
int quota_sweep(quota *q);

#endif
