/* openai.c - see openai.h. */
#include "openai.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../util/ids.h"

/* A message's content: a string, or an array of {"type":"text","text":...}
 * parts, which must then be a single part (joining them would need a copy
 * that outlives the JSON; no SDK sends more for plain text). */
static dc_code content_of(json_t *m, size_t i, const char **out, dc_error *err) {
    json_t *c = json_object_get(m, "content");
    if (json_is_string(c)) {
        *out = json_string_value(c);
        return DC_OK;
    }
    if (json_is_array(c) && json_array_size(c) == 1) {
        json_t *part = json_array_get(c, 0);
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (json_is_string(type) && !strcmp(json_string_value(type), "text") && json_is_string(text)) {
            *out = json_string_value(text);
            return DC_OK;
        }
    }
    return dc_fail(err, DC_E_INVALID, "messages[%zu].content must be a string (or one text part)", i);
}

static dc_code messages_of(json_t *r, api_chat *chat, dc_error *err) {
    json_t *a = json_object_get(r, "messages");
    if (!json_is_array(a) || json_array_size(a) == 0)
        return dc_fail(err, DC_E_INVALID, "messages is required: a non-empty array of {role, content}");
    if (json_array_size(a) > 4096) return dc_fail(err, DC_E_INVALID, "at most 4096 messages");
    chat->n = json_array_size(a);
    if (!(chat->msgs = calloc(chat->n, sizeof *chat->msgs))) return dc_fail(err, DC_E_INTERNAL, "out of memory");
    for (size_t i = 0; i < chat->n; i++) {
        json_t *m = json_array_get(a, i), *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role))
            return dc_fail(err, DC_E_INVALID, "messages[%zu] must be an object with a string role", i);
        const char *ro = json_string_value(role);
        /* "developer" is what newer OpenAI models call the system message */
        if (!strcmp(ro, "developer")) ro = "system";
        if (strcmp(ro, "system") && strcmp(ro, "user") && strcmp(ro, "assistant"))
            return dc_fail(err, DC_E_INVALID, "messages[%zu].role \"%.20s\" is not system, developer, user or assistant",
                           i, ro);
        chat->msgs[i].role = ro;
        dc_code rc = content_of(m, i, &chat->msgs[i].content, err);
        if (rc) return rc;
    }
    return DC_OK;
}

/* With a session the node keeps the history: the request carries only the
 * new user message, after a system message on a session's first turn. */
static dc_code session_turn_of(const api_chat *chat, ctx_request *req, dc_error *err) {
    size_t n = chat->n;
    const llm_msg *last = &chat->msgs[n - 1];
    if (strcmp(last->role, "user") != 0 || n > 2 || (n == 2 && strcmp(chat->msgs[0].role, "system") != 0))
        return dc_fail(err, DC_E_INVALID,
                       "with a session, send only the new user message (and a system message on its first turn): "
                       "the node keeps the history");
    if (n == 2 && req->session_id)
        return dc_fail(err, DC_E_INVALID, "a system message can only start a session (send it without session_id)");
    req->prompt = last->content;
    if (n == 2) req->system = chat->msgs[0].content;
    return DC_OK;
}

dc_code api_chat_parse(const char *body, size_t len, const char *hdr_session, const char *hdr_turn,
                       const api_defaults *d, ctx_request *req, api_chat *chat, json_t **root, dc_error *err) {
    memset(req, 0, sizeof *req);
    memset(chat, 0, sizeof *chat);
    dc_code rc = api_json_object(body, len, root, err);
    if (rc) return rc;
    json_t *r = *root;
    if ((rc = messages_of(r, chat, err))) return rc;
    const char *model = NULL;
    if ((rc = api_get_string(r, "model", &model, err))) return rc;

    /* what this node does not do (yet) is refused, not ignored */
    json_t *v = json_object_get(r, "stream");
    if (v && !json_is_null(v) && !json_is_boolean(v)) return dc_fail(err, DC_E_INVALID, "stream must be a boolean");
    if (json_is_true(v)) return dc_fail(err, DC_E_INVALID, "stream:true is not supported by this node yet");
    v = json_object_get(r, "stop");
    if (v && !json_is_null(v)) return dc_fail(err, DC_E_INVALID, "stop sequences are not supported by this node yet");
    long long x;
    bool given;
    if ((rc = api_get_integer(r, "n", 1, 1, &x, &given, err))) return rc;

    /* the session: body fields first, then the headers */
    if ((rc = api_get_string(r, "session_id", &req->session_id, err))) return rc;
    if (!req->session_id && hdr_session && *hdr_session) req->session_id = hdr_session;
    if ((rc = api_get_integer(r, "turn", 1, UINT32_MAX - 1, &x, &given, err))) return rc;
    if (given) {
        req->turn = (uint32_t)x;
    } else if (hdr_turn) {
        char *end;
        unsigned long t = strtoul(hdr_turn, &end, 10);
        if (!*hdr_turn || *end || t < 1 || t > UINT32_MAX - 1)
            return dc_fail(err, DC_E_INVALID, "the X-Turn header must be an integer >= 1");
        req->turn = (uint32_t)t;
    }
    v = json_object_get(r, "store");
    if (v && !json_is_null(v) && !json_is_boolean(v)) return dc_fail(err, DC_E_INVALID, "store must be a boolean");
    chat->session = req->session_id || json_is_true(v);
    if (!chat->session && req->turn) return dc_fail(err, DC_E_INVALID, "turn needs a session (session_id or store:true)");
    if ((rc = api_get_string(r, "user", &req->user_id, err))) return rc;
    /* Without a user, sessions belong to "anonymous": the session id (128
     * random bits) is then what lets a client continue one. */
    if (chat->session && !req->user_id) req->user_id = "anonymous";
    if (chat->session) {
        req->mode = MODE_TOKENIZED;
        if ((rc = session_turn_of(chat, req, err))) return rc;
    } else {
        req->mode = MODE_CLIENT_SIDE;
        req->messages = chat->msgs;
        req->n_messages = chat->n;
    }

    req->gen = llm_default_gen_params();
    req->gen.n_predict = d->default_n_predict;
    /* max_completion_tokens is the current name, max_tokens the older one */
    if ((rc = api_get_integer(r, "max_completion_tokens", 1, 1 << 20, &x, &given, err))) return rc;
    if (!given && (rc = api_get_integer(r, "max_tokens", 1, 1 << 20, &x, &given, err))) return rc;
    if (given) req->gen.n_predict = (int)x;
    return api_sampling_parse(r, &req->gen, err);
}

void api_chat_free(api_chat *chat) {
    free(chat->msgs);
    chat->msgs = NULL;
}

json_t *api_chat_json(const ctx_reply *rep, const api_chat *chat, const char *model, const char *node) {
    char id[ID_MAX + 1], cid[ID_MAX + 16];
    if (id_random_hex(id) != 0) strcpy(id, "0");
    snprintf(cid, sizeof cid, "chatcmpl-%s", id);
    const llm_timings *t = &rep->llm;
    json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content", api_text_json(&rep->content));
    json_t *choice = json_pack("{s:i, s:o, s:s, s:n}", "index", 0, "message", msg, "finish_reason",
                               t->stopped_limit ? "length" : "stop", "logprobs");
    json_t *usage = json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", rep->context_tokens, "completion_tokens",
                              t->predicted_n, "total_tokens", rep->context_tokens + t->predicted_n,
                              "prompt_tokens_details", "cached_tokens", t->cached_n);
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o, s:s}", "id", cid, "object", "chat.completion", "created",
                          (json_int_t)time(NULL), "model", model, "choices", choice, "usage", usage, "node", node);
    if (chat->session) {
        json_object_set_new(o, "session_id", json_string(rep->session_id));
        json_object_set_new(o, "turn", json_integer(rep->turn));
        json_object_set_new(o, "user", json_string(rep->user_id));
    }
    return o;
}

json_t *api_models_json(const char *model) {
    return json_pack("{s:s, s:[{s:s, s:s, s:i, s:s}]}", "object", "list", "data", "id", model, "object", "model",
                     "created", 0, "owned_by", "discedge");
}
