/* llm_server.c - see llm_server.h.
 *
 * Field names, defaults and reply shapes follow llama-server where the two
 * overlap (e.g. /completion lists the end-of-generation token it stopped at
 * in "tokens", as llama-server does), so remote.c needs no special case for
 * either server. Every request body is untrusted: types are checked, token
 * ids must lie in the vocabulary, and errors are 4xx JSON. */
#include "llm_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "errors.h"
#include "http.h"
#include "json.h"

struct llm_server {
    llm_server_params p;
    llm *m;
    http_server *h;
};

llm_server_params llm_server_default_params(void) {
    return (llm_server_params){.host = "127.0.0.1", .port = 8090, .max_body = 8 << 20, .default_n_predict = 128};
}

/* A JSON array of token ids into out, each checked against the vocabulary. */
static dc_code ids_parse(const llm *m, json_t *arr, const char *what, tokvec *out, dc_error *err) {
    size_t i;
    json_t *v;
    int nv = llm_n_vocab(m);
    json_array_foreach(arr, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= nv)
            return dc_fail(err, DC_E_INVALID, "%s[%zu] is not a token id of this model (0..%d)", what, i, nv - 1);
        tokvec_push(out, (int32_t)json_integer_value(v));
    }
    return DC_OK;
}

static dc_code do_tokenize(llm_server *s, json_t *body, json_t **out, dc_error *err) {
    const char *content = NULL;
    size_t len = 0;
    int add_special = 0, parse_special = 1;
    json_error_t je;
    if (json_unpack_ex(body, &je, 0, "{s:s%, s?b, s?b}", "content", &content, &len, "add_special", &add_special,
                       "parse_special", &parse_special) != 0)
        return dc_fail(err, DC_E_INVALID, "/tokenize: %s", je.text);
    tokvec t = {0};
    if (add_special) llm_add_bos(s->m, &t); /* as llama-server: the BOS the model's metadata asks for */
    if (llm_tokenize(s->m, content, len, parse_special, &t) != 0) {
        tokvec_free(&t);
        return dc_fail(err, DC_E_INVALID, "/tokenize: the content cannot be tokenized");
    }
    *out = json_pack("{s:o}", "tokens", api_ids_json(t.v, t.n));
    tokvec_free(&t);
    return DC_OK;
}

static dc_code do_detokenize(llm_server *s, json_t *body, json_t **out, dc_error *err) {
    json_t *arr = NULL;
    json_error_t je;
    if (json_unpack_ex(body, &je, 0, "{s:o}", "tokens", &arr) != 0 || !json_is_array(arr))
        return dc_fail(err, DC_E_INVALID, "/detokenize: tokens must be an array of token ids");
    tokvec t = {0};
    strbuf text = {0};
    dc_code rc = ids_parse(s->m, arr, "tokens", &t, err);
    if (!rc && llm_detokenize(s->m, t.v, t.n, &text) != 0) rc = dc_fail(err, DC_E_INTERNAL, "cannot detokenize");
    if (!rc) *out = json_pack("{s:o}", "content", api_text_json(&text));
    tokvec_free(&t);
    strbuf_free(&text);
    return rc;
}

static dc_code do_apply_template(llm_server *s, json_t *body, json_t **out, dc_error *err) {
    json_t *arr = NULL;
    int add = 1;
    json_error_t je;
    if (json_unpack_ex(body, &je, 0, "{s:o, s?b}", "messages", &arr, "add_generation_prompt", &add) != 0 ||
        !json_is_array(arr) || json_array_size(arr) == 0)
        return dc_fail(err, DC_E_INVALID, "/apply-template: messages must be a non-empty array");
    size_t n = json_array_size(arr);
    llm_msg *msgs = calloc(n, sizeof *msgs);
    dc_code rc = DC_OK;
    for (size_t i = 0; i < n && !rc; i++)
        if (json_unpack(json_array_get(arr, i), "{s:s, s:s}", "role", &msgs[i].role, "content", &msgs[i].content))
            rc = dc_fail(err, DC_E_INVALID, "/apply-template: messages[%zu] needs string role and content", i);
    strbuf text = {0};
    if (!rc && llm_apply_template(s->m, msgs, n, add, &text) != 0)
        rc = dc_fail(err, DC_E_INVALID, "/apply-template: the model's chat template cannot render these messages");
    if (!rc) *out = json_pack("{s:o}", "prompt", api_text_json(&text));
    strbuf_free(&text);
    free(msgs);
    return rc;
}

/* A DisCEdge call: renders and tokenizes messages in one request, as
 * llm_chat_render does here (contents never parsed for special tokens), so
 * that a remote context manager needs one round trip where /apply-template
 * and a /tokenize per piece cost several. With "each", every message is
 * rendered on its own (llm_chat_render_each) and "lengths" gives each one's
 * share of "tokens". */
static dc_code do_render(llm_server *s, json_t *body, json_t **out, dc_error *err) {
    json_t *arr = NULL;
    int add = 1, each = 0;
    json_error_t je;
    if (json_unpack_ex(body, &je, 0, "{s:o, s?b, s?b}", "messages", &arr, "add_generation_prompt", &add, "each",
                       &each) != 0 ||
        !json_is_array(arr) || json_array_size(arr) == 0)
        return dc_fail(err, DC_E_INVALID, "/render: messages must be a non-empty array");
    size_t n = json_array_size(arr);
    llm_msg *msgs = calloc(n, sizeof *msgs);
    tokvec *parts = calloc(n, sizeof *parts), **outs = calloc(n, sizeof *outs);
    dc_code rc = msgs && parts && outs ? DC_OK : dc_fail(err, DC_E_INTERNAL, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        outs[i] = each ? &parts[i] : &parts[0];
        if (json_unpack(json_array_get(arr, i), "{s:s, s:s}", "role", &msgs[i].role, "content", &msgs[i].content))
            rc = dc_fail(err, DC_E_INVALID, "/render: messages[%zu] needs string role and content", i);
    }
    if (!rc && (each ? llm_chat_render_each(s->m, msgs, n, add, outs) : llm_chat_render(s->m, msgs, n, add, outs[0])))
        rc = dc_fail(err, DC_E_INVALID, "/render: the model's chat template cannot render these messages");
    if (!rc) {
        tokvec all = {0};
        json_t *lens = json_array();
        for (size_t i = 0; i < (each ? n : 1); i++) {
            tokvec_append(&all, parts[i].v, parts[i].n);
            json_array_append_new(lens, json_integer((json_int_t)parts[i].n));
        }
        *out = json_pack("{s:o}", "tokens", api_ids_json(all.v, all.n));
        if (each) json_object_set_new(*out, "lengths", lens);
        else json_decref(lens);
        tokvec_free(&all);
    }
    for (size_t i = 0; parts && i < n; i++) tokvec_free(&parts[i]);
    free(parts);
    free(outs);
    free(msgs);
    return rc;
}

/* Returns DC_E_CANCELLED when the caller went away (nothing to answer). */
static dc_code do_completion(llm_server *s, const http_req *hr, json_t *body, json_t **out, dc_error *err) {
    json_t *prompt = NULL;
    const char *owner = NULL;
    json_int_t n_predict = -1, top_k = 40, seed = -1;
    double temperature = 0.8, top_p = 0.95;
    int cache = 1, return_tokens = 0, stream = 0, ignore_eos = 0;
    json_error_t je;
    if (json_unpack_ex(body, &je, 0, "{s:o, s?I, s?F, s?F, s?I, s?I, s?b, s?b, s?b, s?b, s?s}", "prompt", &prompt,
                       "n_predict", &n_predict, "temperature", &temperature, "top_p", &top_p, "top_k", &top_k, "seed",
                       &seed, "cache_prompt", &cache, "return_tokens", &return_tokens, "stream", &stream, "ignore_eos",
                       &ignore_eos, "discedge_owner", &owner) != 0)
        return dc_fail(err, DC_E_INVALID, "/completion: %s", je.text);
    if (stream) return dc_fail(err, DC_E_INVALID, "/completion: stream:true is not supported by llm-serve");
    if (n_predict == 0 || n_predict < -1 || n_predict > 1 << 20)
        return dc_fail(err, DC_E_INVALID, "/completion: n_predict must be -1 or 1..%d", 1 << 20);
    if (!(temperature >= 0 && temperature <= 100) || !(top_p >= 0 && top_p <= 1) || top_k < 0 || top_k > 1 << 20)
        return dc_fail(err, DC_E_INVALID, "/completion: temperature 0..100, top_p 0..1, top_k >= 0");
    tokvec in = {0}, gen = {0};
    dc_code rc = DC_OK;
    if (json_is_array(prompt)) {
        rc = ids_parse(s->m, prompt, "prompt", &in, err);
    } else if (json_is_string(prompt)) {
        llm_add_bos(s->m, &in); /* a text prompt is a whole conversation, as in llama-server */
        if (llm_tokenize(s->m, json_string_value(prompt), json_string_length(prompt), true, &in))
            rc = dc_fail(err, DC_E_INVALID, "/completion: the prompt cannot be tokenized");
    } else {
        rc = dc_fail(err, DC_E_INVALID, "/completion: prompt must be a string or an array of token ids");
    }
    if (!rc && in.n == 0) rc = dc_fail(err, DC_E_INVALID, "/completion: prompt is empty");
    if (!rc && in.n >= (size_t)llm_n_ctx(s->m))
        rc = dc_fail(err, DC_E_CTX_LENGTH, "/completion: %zu prompt tokens do not fit the context of %d", in.n,
                     llm_n_ctx(s->m));
    llm_timings t;
    char why[200];
    if (!rc) {
        llm_gen_params gp = llm_default_gen_params();
        gp.n_predict = n_predict > 0 ? (int)n_predict : s->p.default_n_predict;
        gp.temperature = (float)temperature;
        gp.top_p = (float)top_p;
        gp.top_k = (int)top_k;
        gp.seed = seed >= 0 ? (uint32_t)seed : (uint32_t)(clock_mono_ms() * 1000);
        gp.cache_prompt = cache;
        gp.ignore_eos = ignore_eos;
        gp.owner = owner; /* whose KV this may reuse (remote.c sends it); none: nobody's */
        gp.alive = http_conn_alive;
        gp.alive_ud = hr->conn;
        switch (llm_generate(s->m, in.v, in.n, &gp, &gen, &t, why, sizeof why)) {
        case LLM_OK: break;
        case LLM_BUSY: {
            llm_stats st;
            llm_stats_get(s->m, &st);
            rc = dc_fail(err, DC_E_BUSY, "%s", why);
            err->retry_after_s = st.retry_after_s;
            break;
        }
        case LLM_CANCELLED: rc = dc_fail(err, DC_E_CANCELLED, "%s", why); break;
        default: rc = dc_fail(err, DC_E_INTERNAL, "generation failed: %s", why); break;
        }
    }
    strbuf text = {0};
    if (!rc && llm_detokenize(s->m, gen.v, gen.n, &text) != 0) rc = dc_fail(err, DC_E_INTERNAL, "cannot detokenize");
    if (!rc) {
        json_t *timings = json_pack("{s:i, s:i, s:f, s:f, s:i, s:f}", "prompt_n", t.prompt_n, "cache_n", t.cached_n,
                                    "queue_ms", t.queue_ms, "prompt_ms", t.prompt_ms, "predicted_n", t.predicted_n,
                                    "predicted_ms", t.predicted_ms);
        *out = json_pack("{s:o, s:b, s:s, s:i, s:i, s:i, s:s, s:o}", "content", api_text_json(&text), "stop", 1,
                         "stop_type", t.stopped_eog ? "eos" : "limit", "tokens_predicted", t.predicted_n,
                         "tokens_evaluated", t.prompt_n + t.cached_n, "tokens_cached", t.cached_n, "model",
                         llm_model_name(s->m), "timings", timings);
        if (return_tokens) {
            if (t.stopped_eog) tokvec_push(&gen, t.eog_token);
            json_object_set_new(*out, "tokens", api_ids_json(gen.v, gen.n));
        }
    }
    strbuf_free(&text);
    tokvec_free(&in);
    tokvec_free(&gen);
    return rc;
}

static json_t *props_json(llm_server *s) {
    llm_stats ls;
    llm_stats_get(s->m, &ls);
    char fp[24];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)llm_fingerprint(s->m));
    /* discedge.render: /render is offered, and /completion's content is
     * /detokenize of its tokens (remote.c relies on both) */
    return json_pack("{s:{s:i}, s:i, s:s, s:s, s:s, s:{s:s, s:s, s:i, s:i, s:s, s:s, s:b}}",
                     "default_generation_settings", "n_ctx", llm_n_ctx(s->m), "total_slots", ls.n_parallel,
                     "model_path", s->p.model_path ? s->p.model_path : "", "bos_token", llm_bos_text(s->m), "eos_token",
                     llm_eos_text(s->m), "discedge", "model", llm_model_name(s->m), "fingerprint", fp, "n_vocab",
                     llm_n_vocab(s->m), "n_threads", llm_n_threads(s->m), "backend", llm_backend(s->m), "kv_isolation",
                     "owner", "render", 1);
}

static enum MHD_Result on_request(void *ud, const http_req *hr) {
    llm_server *s = ud;
    dc_error err = {0};
    json_t *out = NULL, *body = NULL;
    dc_code rc = DC_OK;
    bool post = !strcmp(hr->method, "POST");
    static const char *const posts[] = {"/tokenize", "/detokenize", "/apply-template", "/render", "/completion", NULL};
    bool known_post = false;
    for (int i = 0; posts[i]; i++) known_post |= !strcmp(hr->url, posts[i]);
    if (!strcmp(hr->url, "/props") || !strcmp(hr->url, "/health")) {
        if (strcmp(hr->method, "GET") != 0) rc = dc_fail(&err, DC_E_METHOD, "use GET on %s", hr->url);
        else
            out = !strcmp(hr->url, "/props") ? props_json(s)
                                             : json_pack("{s:s, s:o}", "status", "ok", "engine", api_engine_json(s->m));
    } else if (known_post && !post) {
        rc = dc_fail(&err, DC_E_METHOD, "use POST on %s", hr->url);
    } else if (known_post) {
        rc = api_json_object(hr->body, hr->body_n, &body, &err);
        if (!rc)
            rc = !strcmp(hr->url, "/tokenize")        ? do_tokenize(s, body, &out, &err)
                : !strcmp(hr->url, "/detokenize")     ? do_detokenize(s, body, &out, &err)
                : !strcmp(hr->url, "/apply-template") ? do_apply_template(s, body, &out, &err)
                : !strcmp(hr->url, "/render")         ? do_render(s, body, &out, &err)
                                                      : do_completion(s, hr, body, &out, &err);
    } else {
        rc = dc_fail(&err, DC_E_NOT_FOUND, "no route %s %s", hr->method, hr->url);
    }
    json_decref(body);
    int status = rc ? api_error_status(rc) : 200;
    /* the tokenizer calls are many and cheap; completions are what an operator follows */
    log_msg(known_post && strcmp(hr->url, "/completion") != 0 ? LOG_DEBUG : LOG_INFO, "%s %s %d %.1fms", hr->method,
            hr->url, status, clock_mono_ms() - hr->t0);
    if (rc == DC_E_CANCELLED) return MHD_NO; /* the caller is gone */
    return rc ? http_send_error(hr->conn, &err) : http_send_json(hr->conn, 200, out, NULL);
}

llm_server *llm_server_start(const llm_server_params *p, llm *m, char *err, size_t errlen) {
    llm_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->m = m;
    /* its clients are context managers (remote.c), on a private link:
     * several requests at once from each node's address, so no limit per
     * address, and their kept-alive connections may idle as long as an
     * answer may take (a short timeout would only make curl reconnect) */
    http_params hp = http_default_params();
    hp.host = p->host;
    hp.port = p->port;
    hp.max_body = p->max_body;
    hp.max_per_address = 0;
    hp.request_timeout_s = hp.answer_timeout_s;
    if (!(s->h = http_start(&hp, NULL, on_request, s, err, errlen))) {
        free(s);
        return NULL;
    }
    return s;
}

int llm_server_port(const llm_server *s) { return http_port(s->h); }

void llm_server_stop(llm_server *s) {
    if (!s) return;
    http_stop(s->h);
    free(s);
}
