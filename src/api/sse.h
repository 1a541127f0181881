/* sse.h - a turn streamed to its client as Server-Sent Events.
 *
 * The generation runs on a thread of its own while the connection's thread
 * sends each piece of text as the engine samples it. The wire format (the
 * llama.cpp /completion chunks, OpenAI's chat chunks, the Responses API's
 * events) is the caller's, through sse_format; this file only moves text.
 *
 * A turn that fails before its first token is answered as a plain JSON
 * error with its own status (409, 404, 429, ...), like a non-streamed one:
 * the response's status is chosen only once there is something to stream.
 * A client that disconnects mid-stream cancels the generation, and the turn
 * commits nothing (ctx_complete checks alive() before committing). */
#ifndef DC_API_SSE_H
#define DC_API_SSE_H

#include <jansson.h>
#include <microhttpd.h>

#include "../ctx/ctx.h"
#include "../util/vec.h"

typedef struct {
    /* Each appends events to out (connection thread). */
    void (*open)(void *ud, strbuf *out);                                /* before the first text */
    void (*delta)(void *ud, const char *text, size_t n, strbuf *out);   /* text, whole UTF-8 characters */
    void (*close)(void *ud, const ctx_reply *rep, strbuf *out);         /* the turn is done (committed) */
    void (*fail)(void *ud, const dc_error *e, strbuf *out);             /* failed after open */
    /* Once, on the generating thread, when ctx_complete has returned: for
     * logs and metrics. */
    void (*finish)(void *ud, dc_code rc, const ctx_reply *rep, const dc_error *e);
    /* When both threads are done with ud. */
    void (*release)(void *ud);
} sse_format;

/* Runs ctx_complete(c, req) and answers conn with it (see above). req's
 * strings and ud must stay valid until f->release(ud), which is called in
 * every case, also when this fails. */
enum MHD_Result sse_run(struct MHD_Connection *conn, ctx *c, llm *m, const ctx_request *req, const sse_format *f,
                        void *ud);

/* Waits until every generation started by sse_run has returned. The server
 * calls it once its connections are closed (which cancels them), before
 * the context manager goes. */
void sse_drain(void);

/* Appends one event: "event: NAME\n" (when name is not NULL) and
 * "data: JSON\n\n". Consumes data. */
void sse_event(strbuf *out, const char *name, json_t *data);

#endif
