/* request.c - see request.h. */
#include "request.h"

#include <math.h>
#include <string.h>
#include <sys/random.h>

#include "../util/utf8.h"
#include "sse.h"

dc_code api_get_string(json_t *root, const char *key, const char **out, dc_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return DC_OK;
    if (!json_is_string(v)) return dc_fail(err, DC_E_INVALID, "%s must be a string", key);
    *out = json_string_value(v);
    return DC_OK;
}

dc_code api_get_number(json_t *root, const char *key, double lo, double hi, double *out, bool *given,
                          dc_error *err) {
    json_t *v = json_object_get(root, key);
    if (given) *given = false;
    if (!v || json_is_null(v)) return DC_OK;
    if (!json_is_number(v)) return dc_fail(err, DC_E_INVALID, "%s must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi) return dc_fail(err, DC_E_INVALID, "%s must be between %g and %g", key, lo, hi);
    *out = x;
    if (given) *given = true;
    return DC_OK;
}

dc_code api_get_integer(json_t *root, const char *key, long long lo, long long hi, long long *out, bool *given,
                           dc_error *err) {
    json_t *v = json_object_get(root, key);
    *given = false;
    if (!v || json_is_null(v)) return DC_OK;
    if (!json_is_integer(v)) return dc_fail(err, DC_E_INVALID, "%s must be an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return dc_fail(err, DC_E_INVALID, "%s must be between %lld and %lld", key, lo, hi);
    *out = x;
    *given = true;
    return DC_OK;
}

dc_code api_json_object(const char *body, size_t len, json_t **root, dc_error *err) {
    json_error_t je;
    *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!*root) return dc_fail(err, DC_E_JSON, "malformed JSON at line %d column %d: %s", je.line, je.column, je.text);
    if (!json_is_object(*root)) return dc_fail(err, DC_E_JSON, "the body must be a JSON object");
    return DC_OK;
}

dc_code api_completion_parse(const char *body, size_t len, const api_defaults *d, ctx_request *req, bool *stream,
                             json_t **root, dc_error *err) {
    memset(req, 0, sizeof *req);
    dc_code rc = api_json_object(body, len, root, err);
    if (rc) return rc;
    json_t *r = *root;
    const char *mode = NULL;
    if ((rc = api_get_string(r, "prompt", &req->prompt, err))) return rc;
    if (!req->prompt) return dc_fail(err, DC_E_INVALID, "prompt is required (a string)");
    if ((rc = api_get_string(r, "mode", &mode, err))) return rc;
    req->mode = mode ? ctx_mode_parse(mode) : MODE_TOKENIZED;
    if (!req->mode) return dc_fail(err, DC_E_INVALID, "unknown mode \"%.40s\": use tokenized, raw or client-side", mode);
    if ((rc = api_get_string(r, "session_id", &req->session_id, err))) return rc;
    if ((rc = api_get_string(r, "user_id", &req->user_id, err))) return rc;
    if ((rc = api_get_string(r, "system", &req->system, err))) return rc;
    if ((rc = api_get_string(r, "request_id", &req->request_id, err))) return rc;
    const char *consistency = NULL;
    if ((rc = api_get_string(r, "consistency", &consistency, err))) return rc;
    if (consistency && !strcmp(consistency, "available")) req->consistency = CONSISTENCY_AVAILABLE;
    else if (consistency && strcmp(consistency, "strong") != 0)
        return dc_fail(err, DC_E_INVALID, "unknown consistency \"%.40s\": use strong or available", consistency);
    json_t *sv = json_object_get(r, "stream");
    if (sv && !json_is_null(sv) && !json_is_boolean(sv)) return dc_fail(err, DC_E_INVALID, "stream must be a boolean");
    *stream = json_is_true(sv);

    long long x;
    bool given;
    json_t *turn = json_object_get(r, "turn");
    if (turn && !json_is_null(turn) && !json_is_integer(turn)) return dc_fail(err, DC_E_INVALID, "turn must be an integer");
    if (json_is_integer(turn) && json_integer_value(turn) < 1) return dc_fail(err, DC_E_INVALID, "turn must be >= 1");
    if ((rc = api_get_integer(r, "turn", 1, UINT32_MAX - 1, &x, &given, err))) return rc;
    if (given) req->turn = (uint32_t)x;

    req->gen = llm_default_gen_params();
    req->gen.n_predict = d->default_n_predict;
    if ((rc = api_get_integer(r, "n_predict", -1, 1 << 20, &x, &given, err))) return rc;
    if (given && x == 0) return dc_fail(err, DC_E_INVALID, "n_predict must be >= 1, or -1 for the node's default");
    if (given && x > 0) req->gen.n_predict = (int)x;
    return api_sampling_parse(r, &req->gen, err);
}

dc_code api_sampling_parse(json_t *r, llm_gen_params *gen, dc_error *err) {
    dc_code rc;
    double f;
    long long x;
    bool given;
    if ((rc = api_get_number(r, "temperature", 0, 100, &f, &given, err))) return rc;
    if (given) gen->temperature = (float)f;
    if ((rc = api_get_number(r, "top_p", 0, 1, &f, &given, err))) return rc;
    if (given) gen->top_p = (float)f;
    if ((rc = api_get_integer(r, "top_k", 0, 1 << 20, &x, &given, err))) return rc;
    if (given) gen->top_k = (int)x;
    /* llama-server's own fields, on every endpoint as there */
    json_t *cache = json_object_get(r, "cache_prompt");
    if (cache && !json_is_null(cache) && !json_is_boolean(cache))
        return dc_fail(err, DC_E_INVALID, "cache_prompt must be a boolean");
    if (json_is_false(cache)) gen->cache_prompt = false;
    json_t *ieos = json_object_get(r, "ignore_eos");
    if (ieos && !json_is_null(ieos) && !json_is_boolean(ieos)) return dc_fail(err, DC_E_INVALID, "ignore_eos must be a boolean");
    gen->ignore_eos = json_is_true(ieos);
    if ((rc = api_get_integer(r, "seed", -1, UINT32_MAX, &x, &given, err))) return rc;
    if (given && x >= 0) {
        gen->seed = (uint32_t)x;
    } else if (getrandom(&gen->seed, sizeof gen->seed, 0) != sizeof gen->seed) {
        gen->seed = 0; /* llama.cpp's -1 means "random seed" */
    }
    return DC_OK;
}

json_t *api_text_json(const strbuf *b) {
    strbuf clean = {0};
    utf8_sanitize(b->s ? b->s : "", b->n, &clean);
    json_t *s = json_string(clean.s ? clean.s : "");
    strbuf_free(&clean);
    return s;
}

json_t *api_ids_json(const int32_t *toks, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer(toks[i]));
    return a;
}

static double per_second(int n, double ms) { return ms > 0 ? 1e3 * n / ms : 0; }

json_t *api_completion_json(const ctx_reply *rep, const char *node, const char *model) {
    const llm_timings *t = &rep->llm;
    json_t *timings = json_pack(
        "{s:i, s:i, s:f, s:f, s:f, s:f, s:i, s:f, s:f, s:f, s:f, s:f, s:f}", "prompt_n", t->prompt_n, "cache_n",
        t->cached_n, "queue_ms", t->queue_ms, "prompt_ms", t->prompt_ms,
        "prompt_per_token_ms", t->prompt_n ? t->prompt_ms / t->prompt_n : 0.0, "prompt_per_second",
        per_second(t->prompt_n, t->prompt_ms), "predicted_n", t->predicted_n, "predicted_ms", t->predicted_ms,
        "predicted_per_token_ms", t->predicted_n ? t->predicted_ms / t->predicted_n : 0.0, "predicted_per_second",
        per_second(t->predicted_n, t->predicted_ms), "tokenize_ms", rep->tokenize_ms, "store_read_ms",
        rep->store_read_ms, "store_commit_ms", rep->store_commit_ms);
    /* round trips of the session read (ctx.h): how a handover read is
     * checked to cost one round trip to the core, and measured (bench) */
    json_object_set_new(timings, "store_read_trips", json_integer(rep->store_read_trips));
    json_object_set_new(timings, "store_read_core_trips", json_integer(rep->store_read_core_trips));
    /* KV transfer (issue 15): how the turn started; 0 when it was not moved */
    json_object_set_new(timings, "kv_transfer_ms", json_real(rep->kv_transfer_ms));
    json_object_set_new(timings, "kv_transfer_n", json_integer(rep->kv_transfer_tokens));
    json_t *o = json_pack("{s:o, s:i, s:i, s:b, s:b, s:b, s:s, s:o}", "content", api_text_json(&rep->content),
                          "tokens_predicted", t->predicted_n, "tokens_evaluated", t->prompt_n + t->cached_n, "stop", 1,
                          "stopped_eos", t->stopped_eog, "stopped_limit", t->stopped_limit, "model", model, "timings",
                          timings);
    if (rep->session_id[0]) json_object_set_new(o, "session_id", json_string(rep->session_id));
    json_object_set_new(o, "user_id", json_string(rep->user_id));
    json_object_set_new(o, "mode", json_string(ctx_mode_name(rep->mode)));
    if (rep->turn) json_object_set_new(o, "turn", json_integer(rep->turn));
    json_object_set_new(o, "context_tokens", json_integer(rep->context_tokens));
    json_object_set_new(o, "truncated_turns", json_integer(rep->truncated_turns));
    json_object_set_new(o, "retries", json_integer(rep->retries));
    json_object_set_new(o, "wait_ms", json_real(rep->wait_ms));
    json_object_set_new(o, "stale", json_boolean(rep->stale));
    if (rep->replayed) json_object_set_new(o, "replayed", json_true());
    json_object_set_new(o, "node", json_string(node));
    return o;
}

void api_completion_stream_delta(const char *text, size_t n, strbuf *out) {
    strbuf b = {.s = (char *)text, .n = n};
    sse_event(out, NULL, json_pack("{s:o, s:b}", "content", api_text_json(&b), "stop", 0));
}

void api_completion_stream_close(const ctx_reply *rep, const char *node, const char *model, strbuf *out) {
    json_t *o = api_completion_json(rep, node, model);
    json_object_set_new(o, "content", json_string("")); /* the text went out in the chunks */
    sse_event(out, NULL, o);
}

json_t *api_turns_json(const turn_rec *turns, uint32_t n) {
    static const char *names[SEG_COUNT] = {"system", "user", "reply", "end"};
    json_t *arr = json_array();
    for (uint32_t i = 0; i < n; i++) {
        json_t *t = json_pack("{s:i}", "turn", (int)turns[i].turn);
        for (int k = 0; k < SEG_COUNT; k++) {
            json_object_set_new(t, names[k], turns[i].kind == TURN_TOKENS
                                                 ? api_ids_json(turns[i].tok[k].v, turns[i].tok[k].n)
                                                 : api_text_json(&turns[i].text[k]));
        }
        json_array_append_new(arr, t);
    }
    return arr;
}

json_t *api_engine_json(llm *m) {
    llm_stats ls;
    llm_stats_get(m, &ls);
    json_t *o = json_pack("{s:s, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "kind",
                          llm_is_remote(m) ? "remote" : "local", "active", ls.active, "queued", ls.queued,
                          "n_parallel", ls.n_parallel, "n_slots", ls.n_slots, "requests", (json_int_t)ls.requests,
                          "kv_hits", (json_int_t)ls.kv_hits, "cached_tokens", (json_int_t)ls.cached_tokens,
                          "prefilled_tokens", (json_int_t)ls.prefilled_tokens, "generated_tokens",
                          (json_int_t)ls.generated_tokens, "busy", (json_int_t)ls.busy, "cancelled",
                          (json_int_t)ls.cancelled, "kv_bytes", (json_int_t)ls.kv_bytes);
    json_object_set_new(o, "backend", json_string(llm_backend(m)));
    json_object_set_new(o, "spill_saves", json_integer((json_int_t)ls.spill_saves));
    json_object_set_new(o, "spill_restores", json_integer((json_int_t)ls.spill_restores));
    json_object_set_new(o, "spill_bytes", json_integer((json_int_t)ls.spill_bytes));
    json_object_set_new(o, "kv_slot_tokens", json_integer((json_int_t)ls.kv_slot_tokens));
    json_object_set_new(o, "kv_parked", json_integer(ls.kv_parked));
    json_object_set_new(o, "kv_parked_tokens", json_integer((json_int_t)ls.kv_parked_tokens));
    json_object_set_new(o, "kv_parked_bytes", json_integer((json_int_t)ls.kv_parked_bytes));
    json_object_set_new(o, "kv_transfers", json_integer((json_int_t)ls.kv_imports));
    json_object_set_new(o, "kv_transfer_refused", json_integer((json_int_t)ls.kv_import_refused));
    json_object_set_new(o, "kv_exports", json_integer((json_int_t)ls.kv_exports));
    json_object_set_new(o, "warm", json_pack("{s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:f, s:f}", "sessions",
                                             ls.warm_sessions, "slots", ls.warm_slots, "pending", ls.warm_pending,
                                             "requests", (json_int_t)ls.warm_requests, "done",
                                             (json_int_t)ls.warm_done, "tokens", (json_int_t)ls.warm_tokens, "used",
                                             (json_int_t)ls.warm_used, "unused", (json_int_t)ls.warm_unused, "ms",
                                             ls.warm_ms, "unused_ms", ls.warm_unused_ms));
    json_object_set_new(json_object_get(o, "warm"), "chunks", json_integer((json_int_t)ls.warm_chunks));
    json_object_set_new(json_object_get(o, "warm"), "wait_chunks_max",
                        json_integer((json_int_t)ls.warm_wait_chunks_max));
    return o;
}
