/* remote.c - the `remote` LLM service: an engine on another machine that
 * speaks llama.cpp llama-server's HTTP API (`discedge llm-serve` does).
 *
 * The paper keeps the LLM service replaceable: anything that accepts
 * tokenized input. The subset used here is llama-server's own:
 *   GET  /props            n_ctx, chat_template, model name
 *   POST /apply-template   messages -> text (with or without the assistant prefix)
 *   POST /tokenize         text -> ids (add_special false, parse_special as asked)
 *   POST /detokenize       ids -> text
 *   POST /completion       prompt as an array of ids, cache_prompt, return_tokens
 * Token ids cross the link, never the history as text. The remote engine
 * keeps the KV cache (cache_prompt), so a session's next turn prefills only
 * its new tokens there too.
 *
 * Round trips: on those alone a turn costs about six (llm.c renders a
 * message with one /apply-template and a /tokenize per piece of markup and
 * content, then /completion, then /detokenize of the reply). A DisCEdge
 * llm-serve offers more (props "discedge.render"): POST /render renders and
 * tokenizes a list of messages in one call, the way llm.c would, and its
 * /completion "content" is exactly /detokenize of the ids it returns, so the
 * text of a recent reply is kept here (memo) and a detokenize of exactly
 * those ids is answered from it. A turn is then two calls: /render and
 * /completion. A plain llama-server gets the fine-grained calls.
 *
 * The fingerprint (do stored ids mean the same to this engine?) comes from
 * /props "discedge.fingerprint" when the server is a DisCEdge node; a plain
 * llama-server gets one hashed from its chat template, vocabulary size and
 * model file name, which is weaker: say so in the docs, not here.
 *
 * Connections: a small pool of curl easy handles keeps TCP connections to
 * the engine open between calls. A request whose caller went away
 * (llm_gen_params.alive) is aborted from curl's progress callback; the
 * engine sees the connection close and frees its sequence.
 *
 * Trust: the URL may carry credentials (http://user:pass@host), and the
 * engine's error texts are its own: neither reaches a client. Errors say
 * what failed in our words; the detail goes to the log, where the engine
 * is named by scheme, host and port only. At start the engine must show
 * that it keeps special-token text as text when asked (parse_special
 * false), or user text could forge control tokens (check_parse_special).
 * Requests carry their owner ("discedge_owner"); a DisCEdge llm-serve
 * confines KV reuse to it (props "discedge.kv_isolation": "owner"). Any
 * other engine shares its cache between users, so the prefix lengths it
 * reports are not passed on (docs/SECURITY.md).
 *
 * Size: one protocol client, two dialects (llm-serve's /render, and
 * llama-server's fine-grained calls it falls back to); splitting them would
 * export the connection and its checks for nothing. */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "llm_impl.h"

#define POOL_MAX 16
/* Replies whose text is kept: a reply's text is asked for right after it
 * arrives (ctx.c, and sse.c for a stream), so a few cover the replies in
 * flight; a miss only costs the /detokenize call. */
#define MEMO_MAX 8

typedef struct {
    tokvec ids;
    strbuf text;
} memo;

typedef struct {
    char *base; /* "http://host:port", no trailing slash */
    char where[300]; /* base without credentials or path: for logs */
    bool isolates;   /* the engine confines KV reuse to one owner */
    bool renders;    /* the engine offers /render, and /completion's content is its /detokenize */
    pthread_mutex_t mu;
    CURL *pool[POOL_MAX];
    int n_pool;
    memo memo[MEMO_MAX]; /* the latest replies' ids and text (renders only), under mu */
    int memo_next;
    llm_stats stats; /* what this side sees: requests, tokens, refusals */
} remote;

typedef struct {
    const llm_gen_params *gp;
    strbuf body;
} call;

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
    strbuf_append(&((call *)ud)->body, data, size * n);
    return size * n;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
    (void)dt, (void)dn, (void)ut, (void)un;
    const llm_gen_params *gp = ((call *)ud)->gp;
    return gp && gp->alive && !gp->alive(gp->alive_ud); /* non-zero aborts the transfer */
}

static CURL *handle_take(remote *r) {
    pthread_mutex_lock(&r->mu);
    CURL *h = r->n_pool ? r->pool[--r->n_pool] : NULL;
    pthread_mutex_unlock(&r->mu);
    return h ? h : curl_easy_init();
}

static void handle_give(remote *r, CURL *h) {
    pthread_mutex_lock(&r->mu);
    if (r->n_pool < POOL_MAX) {
        r->pool[r->n_pool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&r->mu);
    if (h) curl_easy_cleanup(h);
}

/* GET (body NULL) or POST a JSON body to path; parses a JSON reply into
 * *out. Returns the HTTP status, 0 when there was no HTTP exchange, or -1
 * when the caller went away (gp->alive). Takes ownership of body. */
static long request(remote *r, const char *path, json_t *body, const llm_gen_params *gp, long timeout_s, json_t **out,
                    char *err, size_t errlen) {
    *out = NULL;
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    char url[512];
    snprintf(url, sizeof url, "%s%s", r->base, path);
    call c = {.gp = gp};
    CURL *h = handle_take(r);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &c);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &c);
    if (text) {
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
    }
    CURLcode cc = curl_easy_perform(h);
    long status = 0;
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        json_error_t je;
        *out = json_loadb(c.body.s ? c.body.s : "", c.body.n, 0, &je);
        if (!*out) snprintf(err, errlen, "%s: the LLM service sent a reply that is not JSON (HTTP %ld)", path, status);
    } else if (cc == CURLE_ABORTED_BY_CALLBACK) {
        status = -1;
        snprintf(err, errlen, "the client went away");
    } else {
        log_warn("remote: %s%s: %s", r->where, path, curl_easy_strerror(cc));
        snprintf(err, errlen, "%s: cannot reach the LLM service", path);
        llm_set_unreachable(err);
    }
    curl_slist_free_all(hdr);
    free(text);
    strbuf_free(&c.body);
    handle_give(r, h);
    if (status > 0 && !*out) status = 0;
    if (status >= 400 && *out) {
        /* the engine's words, which may name its files or hosts: to the log
         * (one line: control characters out), not to the client */
        json_t *msg = json_object_get(json_object_get(*out, "error"), "message");
        char detail[200];
        snprintf(detail, sizeof detail, "%s", json_is_string(msg) ? json_string_value(msg) : "(no message)");
        for (char *q = detail; *q; q++)
            if ((unsigned char)*q < 0x20 || *q == 0x7f) *q = '?';
        log_warn("remote: %s%s answered HTTP %ld: %s", r->where, path, status, detail);
        snprintf(err, errlen, "%s: the LLM service answered HTTP %ld", path, status);
    }
    return status;
}

static int ids_append(json_t *arr, tokvec *out) {
    if (!json_is_array(arr)) return -1;
    size_t i, n0 = out->n;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            out->n = n0;
            return -1;
        }
        tokvec_push(out, (int32_t)json_integer_value(v));
    }
    return 0;
}

static json_t *ids_json(const int32_t *toks, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer(toks[i]));
    return a;
}

static int remote_apply_template(void *impl, const llm_msg *msgs, size_t n, bool add_assistant, strbuf *out) {
    json_t *arr = json_array(), *resp;
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s, s:s}", "role", msgs[i].role, "content", msgs[i].content));
    char err[256];
    long st = request(impl, "/apply-template",
                      json_pack("{s:o, s:b}", "messages", arr, "add_generation_prompt", add_assistant), NULL, 30, &resp,
                      err, sizeof err);
    json_t *p = json_object_get(resp, "prompt");
    int rc = st == 200 && json_is_string(p) ? 0 : -1;
    if (!rc) {
        strbuf_clear(out);
        strbuf_append(out, json_string_value(p), json_string_length(p));
    }
    json_decref(resp);
    return rc;
}

static int remote_tokenize(void *impl, const char *text, size_t len, bool parse_special, tokvec *out) {
    json_t *resp;
    char err[256];
    long st = request(
        impl, "/tokenize",
        json_pack("{s:s%, s:b, s:b}", "content", text, len, "add_special", 0, "parse_special", parse_special), NULL, 30,
        &resp, err, sizeof err);
    int rc = st == 200 ? ids_append(json_object_get(resp, "tokens"), out) : -1;
    json_decref(resp);
    return rc;
}

/* A reply's ids and text, from /completion. */
static void memo_put(remote *r, const int32_t *toks, size_t n, const char *text, size_t len) {
    pthread_mutex_lock(&r->mu);
    memo *e = &r->memo[r->memo_next];
    r->memo_next = (r->memo_next + 1) % MEMO_MAX;
    tokvec_clear(&e->ids);
    tokvec_append(&e->ids, toks, n);
    strbuf_clear(&e->text);
    strbuf_append(&e->text, text, len);
    pthread_mutex_unlock(&r->mu);
}

/* Appends the text of a kept reply whose ids are exactly toks. */
static bool memo_get(remote *r, const int32_t *toks, size_t n, strbuf *out) {
    bool hit = false;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < MEMO_MAX && !hit; i++) {
        memo *e = &r->memo[i];
        if (e->ids.n == n && n && !memcmp(e->ids.v, toks, n * sizeof *toks)) {
            strbuf_append(out, e->text.s ? e->text.s : "", e->text.n);
            hit = true;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return hit;
}

static int remote_detokenize(void *impl, const int32_t *toks, size_t n, strbuf *out) {
    if (memo_get(impl, toks, n, out)) return 0;
    json_t *resp;
    char err[256];
    long st = request(impl, "/detokenize", json_pack("{s:o}", "tokens", ids_json(toks, n)), NULL, 30, &resp, err,
                      sizeof err);
    json_t *c = json_object_get(resp, "content");
    int rc = st == 200 && json_is_string(c) ? 0 : -1;
    if (!rc) strbuf_append(out, json_string_value(c), json_string_length(c));
    json_decref(resp);
    return rc;
}

/* POST /render (llm-serve): {"messages", "add_generation_prompt", "each"}
 * -> {"tokens"}, with each also "lengths", each message's share of them. */
static int remote_render(void *impl, const llm_msg *msgs, size_t n, bool add_assistant, bool each,
                         tokvec *const *outs) {
    remote *r = impl;
    if (!__atomic_load_n(&r->renders, __ATOMIC_RELAXED)) return 1;
    json_t *arr = json_array(), *resp;
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s, s:s}", "role", msgs[i].role, "content", msgs[i].content));
    char err[256];
    long st = request(
        r, "/render",
        json_pack("{s:o, s:b, s:b}", "messages", arr, "add_generation_prompt", add_assistant, "each", each), NULL, 30,
        &resp, err, sizeof err);
    if (st == 404) { /* the engine was replaced by one without it: the fine-grained calls from now on */
        log_warn("remote: %s no longer offers /render", r->where);
        __atomic_store_n(&r->renders, false, __ATOMIC_RELAXED);
        json_decref(resp);
        return 1;
    }
    tokvec all = {0};
    int rc = st == 200 ? ids_append(json_object_get(resp, "tokens"), &all) : -1;
    json_t *lens = json_object_get(resp, "lengths");
    if (!rc && each) { /* n lengths that add up to the tokens, or nothing is taken */
        size_t sum = 0, i;
        json_t *v;
        rc = json_is_array(lens) && json_array_size(lens) == n ? 0 : -1;
        json_array_foreach(lens, i, v) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || (size_t)json_integer_value(v) > all.n - sum)
                rc = -1;
            else sum += (size_t)json_integer_value(v);
        }
        if (sum != all.n) rc = -1;
        for (size_t k = 0, at = 0; !rc && k < n; k++) {
            size_t len = (size_t)json_integer_value(json_array_get(lens, k));
            tokvec_append(outs[k], all.v + at, len);
            at += len;
        }
    } else if (!rc) {
        tokvec_append(outs[0], all.v, all.n);
    }
    if (rc && st == 200) log_warn("remote: %s/render sent a reply without valid tokens", r->where);
    tokvec_free(&all);
    json_decref(resp);
    return rc;
}

static double num(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : 0;
}

static llm_status remote_generate(void *impl, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out,
                                  llm_timings *t, char *err, size_t errlen) {
    remote *r = impl;
    if (p->on_logits) { /* llama-server's API returns probabilities, not logits */
        snprintf(err, errlen, "a remote engine does not report logits");
        return LLM_FAIL;
    }
    json_t *body = json_pack("{s:o, s:i, s:f, s:f, s:i, s:I, s:b, s:b, s:b, s:b}", "prompt", ids_json(input, n),
                             "n_predict", p->n_predict, "temperature", (double)p->temperature, "top_p",
                             (double)p->top_p, "top_k", p->top_k, "seed", (json_int_t)p->seed, "cache_prompt",
                             p->cache_prompt, "ignore_eos", p->ignore_eos, "return_tokens", 1, "stream", 0);
    if (p->owner && *p->owner) json_object_set_new(body, "discedge_owner", json_string(p->owner));
    json_t *resp;
    double t0 = clock_mono_ms();
    long st = request(r, "/completion", body, p, 3600, &resp, err, errlen);
    llm_status rc = LLM_FAIL;
    if (st == -1) {
        rc = LLM_CANCELLED;
    } else if (st == 429) {
        rc = LLM_BUSY;
    } else if (st == 200) {
        size_t n0 = out->n;
        const char *stop = json_string_value(json_object_get(resp, "stop_type"));
        if (ids_append(json_object_get(resp, "tokens"), out) != 0) {
            snprintf(err, errlen, "/completion: the LLM service sent no token ids (return_tokens unsupported?)");
        } else {
            /* llama-server lists the end-of-generation token it stopped at */
            t->stopped_eog = stop && !strcmp(stop, "eos");
            t->stopped_limit = !t->stopped_eog;
            if (t->stopped_eog && out->n > n0) t->eog_token = out->v[--out->n];
            json_t *content = json_object_get(resp, "content");
            if (__atomic_load_n(&r->renders, __ATOMIC_RELAXED) && json_is_string(content))
                memo_put(r, out->v + n0, out->n - n0, json_string_value(content), json_string_length(content));
            /* the reply came whole (stream:false above): a stream gets it at once */
            for (size_t i = n0; p->on_token && i < out->n; i++) p->on_token(p->on_token_ud, out->v[i]);
            json_t *tm = json_object_get(resp, "timings");
            t->prompt_n = (int)num(tm, "prompt_n");
            t->cached_n = (int)num(tm, "cache_n");
            if (!r->isolates) { /* maybe another user's prefix: the client learns nothing of it */
                t->prompt_n += t->cached_n;
                t->cached_n = 0;
            }
            t->queue_ms = num(tm, "queue_ms");
            t->prompt_ms = num(tm, "prompt_ms");
            t->predicted_n = (int)(out->n - n0);
            t->predicted_ms = num(tm, "predicted_ms");
            if (!t->prompt_ms && !t->predicted_ms) t->predicted_ms = clock_mono_ms() - t0;
            rc = LLM_OK;
        }
    }
    pthread_mutex_lock(&r->mu);
    r->stats.requests++;
    if (rc == LLM_OK) {
        r->stats.kv_hits += t->cached_n > 0;
        r->stats.cached_tokens += (uint64_t)t->cached_n;
        r->stats.prefilled_tokens += (uint64_t)t->prompt_n;
        r->stats.generated_tokens += (uint64_t)t->predicted_n;
    }
    r->stats.busy += rc == LLM_BUSY;
    r->stats.cancelled += rc == LLM_CANCELLED;
    pthread_mutex_unlock(&r->mu);
    json_decref(resp);
    return rc;
}

static void remote_stats(void *impl, llm_stats *out) {
    remote *r = impl;
    pthread_mutex_lock(&r->mu);
    *out = r->stats;
    pthread_mutex_unlock(&r->mu);
}

static void remote_free(void *impl) {
    remote *r = impl;
    if (!r) return;
    for (int i = 0; i < r->n_pool; i++) curl_easy_cleanup(r->pool[i]);
    for (int i = 0; i < MEMO_MAX; i++) {
        tokvec_free(&r->memo[i].ids);
        strbuf_free(&r->memo[i].text);
    }
    pthread_mutex_destroy(&r->mu);
    free(r->base);
    free(r);
}

/* scheme://host[:port] of url, without user, password or path. */
static void url_where(const char *url, char *out, size_t n) {
    snprintf(out, n, "the --llm URL");
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        curl_url_get(u, CURLUPART_PORT, &port, 0);
        snprintf(out, n, "%s://%s%s%s", scheme, host, port ? ":" : "", port ? port : "");
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
}

/* Does the engine keep special-token text as text when asked? Each probe
 * (its EOS and BOS texts, e.g. "<|im_end|>", and the markup its template
 * ends a turn with) is tokenized with parse_special true and false: an
 * engine that honours the flag gives two different answers for any text
 * that holds a special token. One that answers the same for all of them
 * turns user text into control tokens (older llama-servers ignore the
 * flag), or gives us nothing to tell by: refuse either way. 0 or -1. */
static int check_parse_special(remote *r, const char *eos, const char *bos, char *err, size_t errlen) {
    strbuf end = {0};
    llm_msg cm[2] = {{"user", "u"},
                     {"assistant",
                      "\x1e"
                      "dcend"
                      "\x1f"}};
    if (remote_apply_template(r, cm, 2, false, &end) == 0 && end.s && strstr(end.s, cm[1].content)) {
        const char *at = strstr(end.s, cm[1].content) + strlen(cm[1].content);
        memmove(end.s, at, strlen(at) + 1);
        end.n = strlen(end.s);
    }
    const char *probes[] = {eos, bos, end.s};
    int rc = -1, probed = -1;
    for (size_t i = 0; rc && i < sizeof probes / sizeof *probes; i++) {
        if (!probes[i] || !*probes[i]) continue;
        tokvec sp = {0}, plain = {0};
        if (remote_tokenize(r, probes[i], strlen(probes[i]), true, &sp) != 0 ||
            remote_tokenize(r, probes[i], strlen(probes[i]), false, &plain) != 0) {
            snprintf(err, errlen, "%s/tokenize does not work", r->where);
            tokvec_free(&sp);
            tokvec_free(&plain);
            strbuf_free(&end);
            return -1;
        }
        if (sp.n != plain.n || memcmp(sp.v, plain.v, sp.n * sizeof *sp.v) != 0) rc = 0;
        else if (probed < 0 && sp.n) probed = (int)i;
        if (rc && probed == (int)i)
            snprintf(err, errlen,
                     "the LLM service at %s ignores parse_special:false: it tokenizes \"%.40s\" as control "
                     "token %d, so user text could forge control tokens; use one that honours the flag (a recent "
                     "llama-server, or `discedge llm-serve`)",
                     r->where, probes[i], sp.v[0]);
        tokvec_free(&sp);
        tokvec_free(&plain);
    }
    if (rc && probed < 0)
        snprintf(err, errlen, "the LLM service at %s gives no special-token text to check parse_special with",
                 r->where);
    strbuf_free(&end);
    return rc;
}

/* The BOS the engine would add (llama-server's /tokenize with add_special):
 * what "a" gains in front with it. -1 when none (or no add_special). */
static int32_t probe_bos(remote *r) {
    json_t *resp;
    char err[256];
    tokvec with = {0}, without = {0};
    long st = request(r, "/tokenize",
                      json_pack("{s:s, s:b, s:b}", "content", "a", "add_special", 1, "parse_special", 0), NULL, 30,
                      &resp, err, sizeof err);
    if (st == 200) ids_append(json_object_get(resp, "tokens"), &with);
    json_decref(resp);
    int32_t bos = -1;
    if (with.n && remote_tokenize(r, "a", 1, false, &without) == 0 && with.n > without.n &&
        memcmp(with.v + 1, without.v, without.n * sizeof *without.v) == 0)
        bos = with.v[0];
    tokvec_free(&with);
    tokvec_free(&without);
    return bos;
}

void *llm_remote_open(const llm_params *p, llm_info *info, char *err, size_t errlen) {
    if (strncmp(p->url, "http://", 7) != 0 && strncmp(p->url, "https://", 8) != 0) {
        snprintf(err, errlen, "--llm: expected http://HOST:PORT");
        return NULL;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    remote *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->base = dc_xstrdup(p->url);
    size_t len = strlen(r->base);
    while (len && r->base[len - 1] == '/') r->base[--len] = '\0';
    url_where(r->base, r->where, sizeof r->where);
    pthread_mutex_init(&r->mu, NULL);

    json_t *props;
    long st = request(r, "/props", NULL, NULL, 30, &props, err, errlen);
    if (st != 200) {
        if (st > 0)
            snprintf(err, errlen, "%s/props answered HTTP %ld: not a llama-server compatible engine?", r->where, st);
        else snprintf(err, errlen, "cannot reach the LLM service at %s (/props)", r->where);
        json_decref(props);
        remote_free(r);
        return NULL;
    }
    json_t *dgs = json_object_get(props, "default_generation_settings"), *dc = json_object_get(props, "discedge");
    info->n_ctx = (int)(num(dgs, "n_ctx") ? num(dgs, "n_ctx") : num(props, "n_ctx"));
    const char *tmpl = json_string_value(json_object_get(props, "chat_template"));
    const char *path = json_string_value(json_object_get(props, "model_path"));
    const char *name = json_string_value(json_object_get(dc, "model"));
    const char *fp = json_string_value(json_object_get(dc, "fingerprint"));
    const char *iso = json_string_value(json_object_get(dc, "kv_isolation"));
    if (info->n_ctx < 16) {
        snprintf(err, errlen, "%s/props gives no usable n_ctx", r->where);
        json_decref(props);
        remote_free(r);
        return NULL;
    }
    if (!name && path) name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    snprintf(info->name, sizeof info->name, "%s", name ? name : "remote");
    if (fp) {
        info->fingerprint = strtoull(fp, NULL, 16);
    } else {
        uint64_t h = hash_fnv1a(HASH_FNV_BASIS, tmpl ? tmpl : "", tmpl ? strlen(tmpl) : 0);
        double nv = num(props, "n_vocab");
        h = hash_fnv1a(h, &nv, sizeof nv);
        info->fingerprint = hash_fnv1a(h, info->name, strlen(info->name));
    }
    info->n_threads = (int)num(dc, "n_threads");
    info->n_vocab = (int)num(dc, "n_vocab");
    const char *backend = json_string_value(json_object_get(dc, "backend"));
    snprintf(info->backend, sizeof info->backend, "remote%s%.200s", backend ? ", " : "", backend ? backend : "");
    const char *bos = json_string_value(json_object_get(props, "bos_token"));
    const char *eos = json_string_value(json_object_get(props, "eos_token"));
    snprintf(info->bos_text, sizeof info->bos_text, "%s", bos ? bos : "");
    snprintf(info->eos_text, sizeof info->eos_text, "%s", eos ? eos : "");
    r->isolates = iso && !strcmp(iso, "owner");
    r->renders = json_is_true(json_object_get(dc, "render"));
    json_decref(props);
    if (check_parse_special(r, info->eos_text, info->bos_text, err, errlen) != 0) {
        remote_free(r);
        return NULL;
    }
    info->bos = probe_bos(r);
    if (!r->isolates)
        log_warn("remote: the LLM service at %s shares its KV cache between users (not a DisCEdge llm-serve): "
                 "cached-token counts are not passed on to clients, and prompt timings may still show a shared "
                 "prefix (docs/SECURITY.md)",
                 r->where);
    return r;
}

const llm_ops llm_remote_ops = {
    .apply_template = remote_apply_template,
    .tokenize = remote_tokenize,
    .detokenize = remote_detokenize,
    .render = remote_render,
    .generate = remote_generate,
    .stats = remote_stats,
    .free = remote_free,
};
