/* json.c - see json.h. */
#include "json.h"

#include <math.h>
#include <string.h>
#include <sys/random.h>

#include "../util/utf8.h"

dc_code api_get_string(json_t *root, const char *key, const char **out, dc_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return DC_OK;
    if (!json_is_string(v)) return dc_fail(err, DC_E_INVALID, "%s must be a string", key);
    *out = json_string_value(v);
    return DC_OK;
}

dc_code api_get_number(json_t *root, const char *key, double lo, double hi, double *out, bool *given, dc_error *err) {
    json_t *v = json_object_get(root, key);
    if (given) *given = false;
    if (!v || json_is_null(v)) return DC_OK;
    if (!json_is_number(v)) return dc_fail(err, DC_E_INVALID, "%s must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return dc_fail(err, DC_E_INVALID, "%s must be between %g and %g", key, lo, hi);
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
    if (ieos && !json_is_null(ieos) && !json_is_boolean(ieos))
        return dc_fail(err, DC_E_INVALID, "ignore_eos must be a boolean");
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

json_t *api_engine_json(llm *m) {
    llm_stats ls;
    llm_stats_get(m, &ls);
    json_t *o = json_pack("{s:s, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "kind",
                          llm_is_remote(m) ? "remote" : "local", "active", ls.active, "queued", ls.queued, "n_parallel",
                          ls.n_parallel, "n_slots", ls.n_slots, "requests", (json_int_t)ls.requests, "kv_hits",
                          (json_int_t)ls.kv_hits, "cached_tokens", (json_int_t)ls.cached_tokens, "prefilled_tokens",
                          (json_int_t)ls.prefilled_tokens, "generated_tokens", (json_int_t)ls.generated_tokens, "busy",
                          (json_int_t)ls.busy, "cancelled", (json_int_t)ls.cancelled, "kv_bytes",
                          (json_int_t)ls.kv_bytes);
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
    json_object_set_new(o, "warm",
                        json_pack("{s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:f, s:f}", "sessions", ls.warm_sessions,
                                  "slots", ls.warm_slots, "pending", ls.warm_pending, "requests",
                                  (json_int_t)ls.warm_requests, "done", (json_int_t)ls.warm_done, "tokens",
                                  (json_int_t)ls.warm_tokens, "used", (json_int_t)ls.warm_used, "unused",
                                  (json_int_t)ls.warm_unused, "ms", ls.warm_ms, "unused_ms", ls.warm_unused_ms));
    json_object_set_new(json_object_get(o, "warm"), "chunks", json_integer((json_int_t)ls.warm_chunks));
    json_object_set_new(json_object_get(o, "warm"), "wait_chunks_max",
                        json_integer((json_int_t)ls.warm_wait_chunks_max));
    return o;
}
