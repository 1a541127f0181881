/* client.h - a DisCEdge client: the node's HTTP API over libcurl, and the
 * conversation state a client keeps (session id, user id, turn counter; in
 * client-side mode also the formatted history). */
#ifndef DC_CLIENT_H
#define DC_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "../util/vec.h"

typedef struct {
    long status;           /* HTTP status, 0 if the request failed */
    strbuf body;           /* response body */
    double ms;             /* wall time of the request, as the client saw it */
    long request_bytes;    /* bytes sent: request line + headers + body */
    char error[160];       /* transport error, when status is 0 */
} client_response;

void client_response_free(client_response *r);

/* POSTs a JSON body to base_url + path. Returns 0 when a response arrived
 * (any status), -1 on a transport error. */
int client_post_json(const char *base_url, const char *path, const char *json, client_response *r);

/* The client's side of one conversation. */
typedef struct {
    char mode[16];          /* tokenized | raw | client-side */
    char session_id[65];
    char user_id[65];
    uint32_t turn;          /* last turn answered */
    strbuf history;         /* client-side mode: the ChatML history so far */
    int n_predict;          /* <= 0: node default */
    double temperature;     /* < 0: node default */
    long seed;              /* < 0: node default */
    bool no_cache;          /* send cache_prompt:false (every turn prefilled from scratch) */
    bool ignore_eos;        /* send ignore_eos:true (exactly n_predict tokens per turn) */
} client_session;

void client_session_init(client_session *s, const char *mode, const char *user_id);
void client_session_free(client_session *s);

/* The outcome of one turn. */
typedef struct {
    client_response http;
    strbuf content;
    int context_tokens;
    int tokens_predicted;
    char node[65];
    /* the node's own timings for the turn */
    double tokenize_ms, prompt_ms, predicted_ms, store_read_ms, store_commit_ms;
    double wait_ms;         /* the node waited this long for the previous turn to replicate */
    int store_read_core_trips; /* round trips the node's read of the session made to the core */
    int retries;
} client_turn;

void client_turn_free(client_turn *t);

/* Sends message as the session's next turn to base_url. On a 200 the session
 * advances (turn, session_id, history). Returns 0 on 200, -1 otherwise (the
 * status and body are in t->http). */
int client_session_send(client_session *s, const char *base_url, const char *message, client_turn *t);

#endif
