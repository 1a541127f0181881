/* llamacpp.c - see llamacpp.h. */
#include "llamacpp.h"

#include <string.h>

#include "sse.h"

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
    if (!req->mode)
        return dc_fail(err, DC_E_INVALID, "unknown mode \"%.40s\": use tokenized, raw or client-side", mode);
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
    if (turn && !json_is_null(turn) && !json_is_integer(turn))
        return dc_fail(err, DC_E_INVALID, "turn must be an integer");
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

static double per_second(int n, double ms) { return ms > 0 ? 1e3 * n / ms : 0; }

json_t *api_completion_json(const ctx_reply *rep, const char *node, const char *model) {
    const llm_timings *t = &rep->llm;
    json_t *timings = json_pack("{s:i, s:i, s:f, s:f, s:f, s:f, s:i, s:f, s:f, s:f, s:f, s:f, s:f}", "prompt_n",
                                t->prompt_n, "cache_n", t->cached_n, "queue_ms", t->queue_ms, "prompt_ms", t->prompt_ms,
                                "prompt_per_token_ms", t->prompt_n ? t->prompt_ms / t->prompt_n : 0.0,
                                "prompt_per_second", per_second(t->prompt_n, t->prompt_ms), "predicted_n",
                                t->predicted_n, "predicted_ms", t->predicted_ms, "predicted_per_token_ms",
                                t->predicted_n ? t->predicted_ms / t->predicted_n : 0.0, "predicted_per_second",
                                per_second(t->predicted_n, t->predicted_ms), "tokenize_ms", rep->tokenize_ms,
                                "store_read_ms", rep->store_read_ms, "store_commit_ms", rep->store_commit_ms);
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
