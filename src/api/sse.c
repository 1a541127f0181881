/* sse.c - see sse.h.
 *
 * Three threads touch a stream: the generating thread (runs ctx_complete),
 * the engine's thread (on_token appends the sampled ids), and the
 * connection's thread (the handler, then libmicrohttpd's content reader).
 * They share `toks`, `finished`, `gone` and the reply under `mu`; the
 * reply is the generating thread's until `finished`. Whichever of the
 * generating thread and the response lets go last frees the stream.
 *
 * The connection thread detokenizes all the ids it has so far and sends
 * what is new (whole characters only): a token's text can depend on its
 * neighbours, so the text of the sequence is what counts, not the sum of
 * its pieces. The replies are short; the repeated work is negligible.
 *
 * Whole characters: ids that end inside a character give text that ends in
 * an incomplete sequence (local engine), or, from a remote engine, whose
 * JSON replies are valid UTF-8, in U+FFFD put there for it. Both are held
 * back until more ids (or the end) say what the character is; anything
 * else would send text that the next, longer text does not start with. */
#include "sse.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../util/utf8.h"
#include "http.h"

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* new ids, finished, or gone */
    int refs;
    tokvec toks;
    bool finished, gone;
    dc_code rc;
    ctx_reply rep;
    dc_error err;

    ctx *c;
    llm *m;
    ctx_request req;
    const sse_format *f;
    void *ud;
    struct MHD_Connection *conn;

    /* the connection thread's */
    tokvec seen;   /* ids taken from toks */
    strbuf text;   /* their text */
    size_t sent;   /* bytes of text already sent */
    strbuf out;    /* events not yet handed to libmicrohttpd */
    size_t out_at;
    bool opened, ended;
} sse;

/* Generating threads still running, process-wide: they are detached, and
 * the server must not free the context manager under them (sse_drain). */
static pthread_mutex_t running_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t running_cv = PTHREAD_COND_INITIALIZER;
static int running;

void sse_drain(void) {
    pthread_mutex_lock(&running_mu);
    while (running > 0) pthread_cond_wait(&running_cv, &running_mu);
    pthread_mutex_unlock(&running_mu);
}

static void sse_unref(sse *s) {
    pthread_mutex_lock(&s->mu);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (!last) return;
    s->f->release(s->ud);
    ctx_reply_free(&s->rep);
    tokvec_free(&s->toks);
    tokvec_free(&s->seen);
    strbuf_free(&s->text);
    strbuf_free(&s->out);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static bool sse_alive(void *ud) {
    sse *s = ud;
    pthread_mutex_lock(&s->mu);
    bool alive = !s->gone;
    pthread_mutex_unlock(&s->mu);
    return alive;
}

static void sse_on_token(void *ud, int32_t tok) {
    sse *s = ud;
    pthread_mutex_lock(&s->mu);
    tokvec_push(&s->toks, tok);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *sse_generate(void *arg) {
    sse *s = arg;
    dc_error err = {0};
    dc_code rc = ctx_complete(s->c, &s->req, &s->rep, &err);
    s->f->finish(s->ud, rc, &s->rep, &err);
    pthread_mutex_lock(&s->mu);
    s->rc = rc;
    s->err = err;
    s->finished = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    sse_unref(s);
    pthread_mutex_lock(&running_mu);
    if (--running == 0) pthread_cond_broadcast(&running_cv);
    pthread_mutex_unlock(&running_mu);
    return NULL;
}

/* Waits on cv for up to 100 ms: how soon a client that left is noticed. */
static void wait_a_while(sse *s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
}

/* Sends what text adds to the text already sent, up to its last whole
 * character (see the top). */
static void send_text(sse *s, const char *text, size_t n) {
    static const char fffd[] = "\xef\xbf\xbd";
    size_t end = utf8_complete_prefix(text, n);
    while (end >= 3 && !memcmp(text + end - 3, fffd, 3)) end -= 3;
    if (end > s->sent) s->f->delta(s->ud, text + s->sent, end - s->sent, &s->out);
    if (end > s->sent) s->sent = end;
}

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
        if (!s->opened) {
            s->opened = true;
            s->f->open(s->ud, &s->out);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        size_t had = s->seen.n;
        if (s->toks.n == had && !s->finished) wait_a_while(s);
        if (s->toks.n > had) tokvec_append(&s->seen, s->toks.v + had, s->toks.n - had);
        /* finished is read with the last ids: after it, no more come */
        bool finished = s->finished && s->seen.n == s->toks.n;
        pthread_mutex_unlock(&s->mu);
        if (s->seen.n > had) {
            strbuf_clear(&s->text);
            if (llm_detokenize(s->m, s->seen.v, s->seen.n, &s->text) == 0) send_text(s, s->text.s, s->text.n);
        } else if (finished) {
            if (s->rc == DC_OK) {
                /* the reply as committed (a replayed turn streams no ids);
                 * its last bytes may be a character cut at n_predict */
                if (s->rep.content.n > s->sent)
                    s->f->delta(s->ud, s->rep.content.s + s->sent, s->rep.content.n - s->sent, &s->out);
                s->f->close(s->ud, &s->rep, &s->out);
            } else {
                s->f->fail(s->ud, &s->err, &s->out);
            }
            s->ended = true;
        } else if (!http_conn_alive(s->conn)) {
            pthread_mutex_lock(&s->mu);
            s->gone = true;
            pthread_mutex_unlock(&s->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

/* The response is done with the stream: sent, or its connection closed. */
static void sse_response_free(void *cls) {
    sse *s = cls;
    pthread_mutex_lock(&s->mu);
    if (!s->finished) s->gone = true;
    pthread_mutex_unlock(&s->mu);
    sse_unref(s);
}

enum MHD_Result sse_run(struct MHD_Connection *conn, ctx *c, llm *m, const ctx_request *req, const sse_format *f,
                        void *ud) {
    sse *s = calloc(1, sizeof *s);
    if (!s) {
        f->release(ud);
        return MHD_NO;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->refs = 2; /* the generating thread, and this thread (then the response) */
    s->c = c;
    s->m = m;
    s->req = *req;
    s->req.gen.alive = sse_alive;
    s->req.gen.alive_ud = s;
    s->req.gen.on_token = sse_on_token;
    s->req.gen.on_token_ud = s;
    s->f = f;
    s->ud = ud;
    s->conn = conn;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&running_mu);
    int started = pthread_create(&t, &attr, sse_generate, s);
    running += started == 0;
    pthread_mutex_unlock(&running_mu);
    pthread_attr_destroy(&attr);
    if (started != 0) {
        s->refs = 1;
        dc_error err = {0};
        dc_fail(&err, DC_E_INTERNAL, "cannot start a thread for the stream");
        f->finish(ud, err.code, &s->rep, &err);
        enum MHD_Result ok = http_send_error(conn, &err);
        sse_unref(s);
        return ok;
    }

    /* Choose the status: wait for the first id, or the end. */
    pthread_mutex_lock(&s->mu);
    while (!s->finished && s->toks.n == 0 && !s->gone) {
        wait_a_while(s);
        if (s->finished || s->toks.n) break;
        pthread_mutex_unlock(&s->mu);
        bool alive = http_conn_alive(conn);
        pthread_mutex_lock(&s->mu);
        if (!alive) s->gone = true;
    }
    bool gone = s->gone, failed = s->finished && s->rc != DC_OK;
    pthread_mutex_unlock(&s->mu);
    enum MHD_Result ok = MHD_NO;
    if (gone) {
        /* nobody to answer: close the connection */
    } else if (failed) {
        ok = http_send_error(conn, &s->err);
    } else {
        /* DC_FAULT_SSE_NO_RESPONSE: the tests' way to fail the allocation */
        struct MHD_Response *r = getenv("DC_FAULT_SSE_NO_RESPONSE")
                                     ? NULL
                                     : MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, s,
                                                                         sse_response_free);
        if (r) {
            MHD_add_response_header(r, "Content-Type", "text/event-stream");
            MHD_add_response_header(r, "Cache-Control", "no-cache");
            http_add_cors(r);
            ok = MHD_queue_response(conn, 200, r);
            MHD_destroy_response(r); /* the reference moved to the response */
            return ok;
        }
        /* Nobody will read this turn: the generation is cancelled, so it
         * commits nothing (the connection closes; a retry runs it again). */
        pthread_mutex_lock(&s->mu);
        s->gone = true;
        pthread_mutex_unlock(&s->mu);
    }
    sse_unref(s);
    return ok;
}

void sse_event(strbuf *out, const char *name, json_t *data) {
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (name) strbuf_printf(out, "event: %s\n", name);
    strbuf_printf(out, "data: %s\n\n", text ? text : "{}");
    free(text);
}
