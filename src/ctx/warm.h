/* warm.h - warm handover: a node prefills the conversations served
 * elsewhere before their clients arrive here.
 *
 * Each committed turn reaches every edge host's store replica seconds
 * before the client moves (if it moves). Warm-up follows the commits of the
 * node's store (store_watch), and for each turn committed by another node
 * reads the session from the local replica and hands its context, laid out
 * as the next turn will lay it out (window.h), to llm_warm: the engine
 * prefills it in the background, on free capacity only, so the session's
 * next turn here prefills only its new message. A session ended anywhere
 * (delete, expiry) has its KV dropped here (llm_forget). A client or an
 * orchestrator that knows where the user goes next can ask the same for one
 * session (POST /v1/sessions/{id}/warm: warm_session). */
#ifndef DC_WARM_H
#define DC_WARM_H

#include <stdbool.h>
#include <stdint.h>

#include "../llm/llm.h"
#include "../store/store.h"

typedef struct warm warm;

typedef struct {
    const char *node_id; /* this node: the turns it committed are warm here already */
    int window_s;        /* a turn older than this is not worth warming (--warm-window) */
    const char *peers;   /* "edge-1,edge-3": warm only turns committed by these nodes; NULL: by any */
    int reserve;         /* tokens left free in the window for the next message and its reply */
} warm_params;

warm_params warm_default_params(void);

/* Starts following s's commits (borrows m and s: both outlive the warm).
 * NULL when the engine does no warm-up (llm_warm refuses). */
warm *warm_new(const warm_params *p, llm *m, store *s);
/* Stops following (no watch call runs after it returns) and frees. */
void warm_free(warm *w);

/* Queues a warm-up of sid up to its turn `turn` (the hint route; the
 * caller has read the session and checked it is the asker's, so the read
 * that follows is satisfied by this node's replica). Returns at once. */
void warm_session(warm *w, const char *sid, uint32_t turn);

/* The KV owner of a session's turns (llm_gen_params.owner): KV is reused
 * only within one session. ':' is in no id, so it is no user's name. */
#define WARM_OWNER_MAX (ID_MAX + 9)
void warm_kv_owner(const char *sid, char out[WARM_OWNER_MAX]);

#endif
