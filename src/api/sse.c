/* sse.c - see sse.h. */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

#include "http.h"

typedef struct {
    const sse_source *src;
    void *ud;
    struct MHD_Connection *conn;
    strbuf out;    /* events not yet handed to libmicrohttpd */
    size_t out_at;
    bool ended;
} sse;

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    sse *s = cls;
    for (;;) {
        if (s->out_at < s->out.n) {
            size_t n = s->out.n - s->out_at < max ? s->out.n - s->out_at : max;
            memcpy(buf, s->out.s + s->out_at, n);
            if ((s->out_at += n) == s->out.n) s->out_at = s->out.n = 0;
            return (ssize_t)n;
        }
        if (s->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        s->ended = !s->src->next(s->ud, &s->out);
        /* nothing to send for a while: is anyone still there? */
        if (!s->out.n && !s->ended && !http_conn_alive(s->conn)) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

/* The response is done with the stream: sent, or its connection closed. */
static void sse_free(void *cls) {
    sse *s = cls;
    s->src->done(s->ud);
    strbuf_free(&s->out);
    free(s);
}

enum MHD_Result sse_respond(struct MHD_Connection *conn, const sse_source *src, void *ud) {
    sse *s = calloc(1, sizeof *s);
    if (s) *s = (sse){.src = src, .ud = ud, .conn = conn};
    /* DC_FAULT_SSE_NO_RESPONSE: the tests' way to fail the allocation */
    struct MHD_Response *r = !s || getenv("DC_FAULT_SSE_NO_RESPONSE")
        ? NULL
        : MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, s, sse_free);
    if (!r) {
        free(s);
        src->done(ud); /* nobody will read this stream: the source stops (a turn is cancelled) */
        return MHD_NO; /* and the connection closes */
    }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    http_add_cors(r);
    enum MHD_Result ok = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r); /* the reference moved to the response */
    return ok;
}

void sse_event(strbuf *out, const char *name, json_t *data) {
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (name) strbuf_printf(out, "event: %s\n", name);
    strbuf_printf(out, "data: %s\n\n", text ? text : "{}");
    free(text);
}
