/* sse.h - Server-Sent Events: the transport of a streamed answer.
 *
 * This file only moves bytes: a source (the turn runner, complete.c) makes
 * the events, in the endpoint's wire format, and sse.c hands them to
 * libmicrohttpd as they come, on the connection's thread, and notices a
 * client that went away. What the events say, when the stream starts (its
 * status) and what a departed client cancels are the source's business. */
#ifndef DC_API_SSE_H
#define DC_API_SSE_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>

#include "../util/vec.h"

typedef struct {
    /* On the connection's thread: appends the events ready now to out,
     * after waiting a short while (about 100 ms: how soon a client that left
     * is noticed) when there are none; false once the stream has ended (out
     * holds its last events). */
    bool (*next)(void *ud, strbuf *out);
    /* The transport is done with ud: the stream was sent, or the client
     * left first (then the stream did not end). Called once, in every case. */
    void (*done)(void *ud);
} sse_source;

/* Answers conn 200 text/event-stream with src's events. When the answer
 * cannot be made, src->done(ud) is called at once and the connection is
 * closed (MHD_NO). */
enum MHD_Result sse_respond(struct MHD_Connection *conn, const sse_source *src, void *ud);

/* Appends one event: "event: NAME\n" (when name is not NULL) and
 * "data: JSON\n\n". Consumes data. */
void sse_event(strbuf *out, const char *name, json_t *data);

#endif
