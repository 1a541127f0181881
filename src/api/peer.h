/* peer.h - node-to-node calls: the KV transfer of issue 15 item 3.
 *
 *   GET /v1/peer/kv/{session_id}   the KV state this node holds of the session's stored tokens
 *                                  (llm_kv_export's blob), for a peer presenting the peer key in
 *                                  X-DisCEdge-Peer-Key; never on a client's API key
 *
 * and the other end: the ctx_params.kv_fetch hook, which predicts whether
 * fetching a state beats prefilling it here, and fetches it. */
#ifndef DC_API_PEER_H
#define DC_API_PEER_H

#include <stddef.h>

#include "../llm/llm.h"
#include "../util/error.h"
#include "../util/vec.h"

typedef struct peer peer;

typedef struct {
    const char *key_file;   /* the shared peer key: a file only its owner may read (0600) */
    double link_mbps;       /* assumed throughput of a link to a peer until one is measured (default 100) */
    llm *m;                 /* borrowed: its KV size and measured prefill rate feed the prediction */
} peer_params;

peer_params peer_default_params(void);

/* Reads the key (at least 16 bytes; trailing whitespace dropped). NULL with
 * the reason in err when the file cannot be read, is too short, or can be
 * read by its group or others. */
peer *peer_new(const peer_params *p, char *err, size_t errlen);
void peer_free(peer *pr);

/* Whether presented (the X-DisCEdge-Peer-Key header; NULL when absent) is
 * the peer key, compared in constant time. DC_OK, DC_E_UNAUTHORIZED (none),
 * DC_E_FORBIDDEN (wrong). */
dc_code peer_check(const peer *pr, const char *presented, dc_error *err);

/* ctx_params.kv_fetch (ctx.h); ud is the peer. */
int peer_kv_fetch(void *ud, const char *url, const char *sid, size_t n, size_t n_missing, strbuf *blob);

#define PEER_KEY_HEADER "X-DisCEdge-Peer-Key"

#endif
