/* openai.c - see openai.h. */
#include "openai.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "errors.h"
#include "sse.h"

/* A message's content: a string, or an array of one text part ({"type":
 * "text"|"input_text"|"output_text", "text": ...}); joining several would
 * need a copy that outlives the JSON, and no SDK sends more for plain text. */
static dc_code content_of(json_t *m, const char *where, size_t i, const char **out, dc_error *err) {
    json_t *c = json_object_get(m, "content");
    if (json_is_string(c)) {
        *out = json_string_value(c);
        return DC_OK;
    }
    if (json_is_array(c) && json_array_size(c) == 1) {
        json_t *part = json_array_get(c, 0);
        const char *type = json_string_value(json_object_get(part, "type"));
        json_t *text = json_object_get(part, "text");
        if (type && (!strcmp(type, "text") || !strcmp(type, "input_text") || !strcmp(type, "output_text")) &&
            json_is_string(text)) {
            *out = json_string_value(text);
            return DC_OK;
        }
    }
    return dc_fail(err, DC_E_INVALID, "%s[%zu].content must be a string (or one text part)", where, i);
}

/* Appends the messages of array a (from field `where`) to chat->msgs. */
static dc_code messages_of(json_t *a, const char *where, api_chat *chat, dc_error *err) {
    if (!json_is_array(a) || json_array_size(a) == 0)
        return dc_fail(err, DC_E_INVALID, "%s is required: a non-empty array of {role, content}", where);
    if (json_array_size(a) > 4096) return dc_fail(err, DC_E_INVALID, "at most 4096 messages in %s", where);
    llm_msg *m = realloc(chat->msgs, (chat->n + json_array_size(a)) * sizeof *m);
    if (!m) return dc_fail(err, DC_E_INTERNAL, "out of memory");
    chat->msgs = m;
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *o = json_array_get(a, i), *role = json_object_get(o, "role");
        const char *type = json_string_value(json_object_get(o, "type"));
        if (!json_is_object(o) || !json_is_string(role) || (type && strcmp(type, "message") != 0))
            return dc_fail(err, DC_E_INVALID, "%s[%zu] must be a message: an object with a string role", where, i);
        const char *ro = json_string_value(role);
        /* "developer" is what newer OpenAI models call the system message */
        if (!strcmp(ro, "developer")) ro = "system";
        if (strcmp(ro, "system") && strcmp(ro, "user") && strcmp(ro, "assistant"))
            return dc_fail(err, DC_E_INVALID, "%s[%zu].role \"%.20s\" is not system, developer, user or assistant",
                           where, i, ro);
        llm_msg *msg = &chat->msgs[chat->n];
        msg->role = ro;
        dc_code rc = content_of(o, where, i, &msg->content, err);
        if (rc) return rc;
        chat->n++;
    }
    return DC_OK;
}

static dc_code add_message(api_chat *chat, const char *role, const char *content, dc_error *err) {
    llm_msg *m = realloc(chat->msgs, (chat->n + 1) * sizeof *m);
    if (!m) return dc_fail(err, DC_E_INTERNAL, "out of memory");
    chat->msgs = m;
    chat->msgs[chat->n++] = (llm_msg){.role = role, .content = content};
    return DC_OK;
}

/* With a session the node keeps the history: the request carries only the
 * new user message, after a system message on a session's first turn. */
static dc_code session_turn_of(const api_chat *chat, ctx_request *req, bool first, dc_error *err) {
    size_t n = chat->n;
    const llm_msg *last = &chat->msgs[n - 1];
    if (strcmp(last->role, "user") != 0 || n > 2 || (n == 2 && strcmp(chat->msgs[0].role, "system") != 0))
        return dc_fail(err, DC_E_INVALID,
                       "with a session, send only the new user message (and a system message on its first turn): "
                       "the node keeps the history");
    if (n == 2 && !first)
        return dc_fail(err, DC_E_INVALID, "a system message (or instructions) can only start a session");
    req->prompt = last->content;
    if (n == 2) req->system = chat->msgs[0].content;
    return DC_OK;
}

static dc_code get_bool(json_t *r, const char *key, bool dflt, bool *out, dc_error *err) {
    json_t *v = json_object_get(r, key);
    if (v && !json_is_null(v) && !json_is_boolean(v)) return dc_fail(err, DC_E_INVALID, "%s must be a boolean", key);
    *out = v && !json_is_null(v) ? json_is_true(v) : dflt;
    return DC_OK;
}

/* The fields both APIs share: stream, user, sampling, and the reply cap
 * (whose name each API has its own of). */
static dc_code common_of(json_t *r, const api_defaults *d, const char *const *cap_names, ctx_request *req,
                         api_chat *chat, dc_error *err) {
    const char *model = NULL;
    dc_code rc;
    if ((rc = api_get_string(r, "model", &model, err))) return rc;
    if ((rc = get_bool(r, "stream", false, &chat->stream, err))) return rc;
    json_t *so = json_object_get(r, "stream_options");
    if (so && !json_is_null(so) && !json_is_object(so))
        return dc_fail(err, DC_E_INVALID, "stream_options must be an object");
    if (so && (rc = get_bool(so, "include_usage", false, &chat->include_usage, err))) return rc;
    /* what this node does not do is refused, not ignored */
    json_t *v = json_object_get(r, "stop");
    if (v && !json_is_null(v)) return dc_fail(err, DC_E_INVALID, "stop sequences are not supported by this node");
    v = json_object_get(r, "tools");
    if (v && !json_is_null(v) && !json_is_array(v))
        return dc_fail(err, DC_E_INVALID, "tools must be an array (and tools are not supported by this node)");
    if (json_array_size(v) > 0) return dc_fail(err, DC_E_INVALID, "tools are not supported by this node");
    long long x;
    bool given;
    if ((rc = api_get_integer(r, "n", 1, 1, &x, &given, err))) return rc;
    /* OpenAI's `user` is any string (an email, a name): not refused for
     * not being an id, it is mapped to one (injectively, auth.h), which is
     * what owns the sessions it starts. An empty one names no one. */
    const char *user = NULL;
    if ((rc = api_get_string(r, "user", &user, err))) return rc;
    if (user && *user) {
        auth_owner_of(user, chat->owner);
        req->user_id = chat->owner;
    }
    req->gen = llm_default_gen_params();
    req->gen.n_predict = d->default_n_predict;
    for (given = false; *cap_names && !given; cap_names++) {
        if ((rc = api_get_integer(r, *cap_names, 1, 1 << 20, &x, &given, err))) return rc;
        if (given) req->gen.n_predict = (int)x;
    }
    chat->created = (long long)time(NULL);
    return api_sampling_parse(r, &req->gen, err);
}

static void name_reply(api_chat *chat, const ctx_request *req) {
    identity_reply_id(chat->responses, chat->session ? chat->sid : NULL, req->turn, chat->id);
}

/* A new session's id is chosen before the generation, so that a stream's
 * first chunk can already name it (util/identity.h). */
static dc_code new_session(api_chat *chat, ctx_request *req, dc_error *err) {
    dc_code rc = identity_new_session(&req->turn, chat->sid, err);
    if (!rc) req->session_id = chat->sid;
    return rc;
}

/* Both APIs' last step: a session's turn takes the new message (tokenized
 * mode); without one the whole conversation is the input (client-side). */
static dc_code place_messages(api_chat *chat, ctx_request *req, bool first, dc_error *err) {
    if (chat->session) {
        req->mode = MODE_TOKENIZED;
        dc_code rc = session_turn_of(chat, req, first, err);
        if (rc) return rc;
    } else {
        req->mode = MODE_CLIENT_SIDE;
        req->messages = chat->msgs;
        req->n_messages = chat->n;
    }
    name_reply(chat, req);
    return DC_OK;
}

dc_code api_chat_parse(const char *body, size_t len, const char *hdr_session, const char *hdr_turn,
                       const api_defaults *d, ctx_request *req, api_chat *chat, json_t **root, dc_error *err) {
    memset(req, 0, sizeof *req);
    memset(chat, 0, sizeof *chat);
    dc_code rc = api_json_object(body, len, root, err);
    if (rc) return rc;
    json_t *r = *root;
    if ((rc = messages_of(json_object_get(r, "messages"), "messages", chat, err))) return rc;
    static const char *const caps[] = {"max_completion_tokens", "max_tokens", NULL}; /* new name, old name */
    if ((rc = common_of(r, d, caps, req, chat, err))) return rc;

    /* the session: body fields first, then the headers */
    long long x;
    bool given, store;
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
    if ((rc = get_bool(r, "store", false, &store, err))) return rc;
    chat->session = req->session_id || store;
    if (!chat->session && req->turn)
        return dc_fail(err, DC_E_INVALID, "turn needs a session (session_id or store:true)");
    if (chat->session && !req->session_id) {
        if ((rc = new_session(chat, req, err))) return rc;
    } else if (chat->session) {
        snprintf(chat->sid, sizeof chat->sid, "%s", req->session_id);
    }
    return place_messages(chat, req, req->turn <= 1, err);
}

dc_code api_responses_parse(const char *body, size_t len, const api_defaults *d, ctx_request *req, api_chat *chat,
                            json_t **root, dc_error *err) {
    memset(req, 0, sizeof *req);
    memset(chat, 0, sizeof *chat);
    chat->responses = true;
    dc_code rc = api_json_object(body, len, root, err);
    if (rc) return rc;
    json_t *r = *root;
    static const char *const caps[] = {"max_output_tokens", NULL};
    if ((rc = common_of(r, d, caps, req, chat, err))) return rc;
    const char *instructions = NULL, *prev = NULL;
    bool store;
    if ((rc = api_get_string(r, "instructions", &instructions, err))) return rc;
    if ((rc = api_get_string(r, "previous_response_id", &prev, err))) return rc;
    if ((rc = get_bool(r, "store", true, &store, err))) return rc; /* true by default, as OpenAI's */
    if (instructions && (rc = add_message(chat, "system", instructions, err))) return rc;
    json_t *input = json_object_get(r, "input");
    if (json_is_string(input)) rc = add_message(chat, "user", json_string_value(input), err);
    else if (json_is_array(input)) rc = messages_of(input, "input", chat, err);
    else rc = dc_fail(err, DC_E_INVALID, "input is required: a string, or an array of messages");
    if (rc) return rc;

    chat->session = store || prev;
    if (prev) {
        if (!identity_response_id_parse(prev, chat->prev_sid, &chat->prev_turn))
            return dc_fail(err, DC_E_NOT_FOUND, "no stored response %.80s", prev);
        if (!store) return dc_fail(err, DC_E_INVALID, "continuing a response stores the new one: leave store at true");
        if (instructions)
            return dc_fail(err, DC_E_INVALID, "instructions start a conversation; they cannot change in its middle");
        /* the session's next turn; complete.c forks when it has gone on since,
         * the turn protocol when another request takes the turn meanwhile
         * (ctx_request.fork_on_conflict) */
        memcpy(chat->sid, chat->prev_sid, sizeof chat->sid);
        req->session_id = chat->sid;
        req->turn = chat->prev_turn + 1;
        req->fork_on_conflict = true;
    } else if (store && (rc = new_session(chat, req, err))) {
        return rc;
    }
    return place_messages(chat, req, !prev, err);
}

void api_chat_fork(api_chat *chat, ctx_request *req, const char *sid) {
    snprintf(chat->sid, sizeof chat->sid, "%s", sid);
    req->session_id = chat->sid;
    name_reply(chat, req);
}

void api_chat_free(api_chat *chat) {
    free(chat->msgs);
    chat->msgs = NULL;
}

/* --- replies ----------------------------------------------------------- */

static json_t *usage_json(const api_chat *chat, const ctx_reply *rep) {
    const llm_timings *t = &rep->llm;
    if (chat->responses)
        return json_pack("{s:i, s:{s:i}, s:i, s:{s:i}, s:i}", "input_tokens", rep->context_tokens,
                         "input_tokens_details", "cached_tokens", t->cached_n, "output_tokens", t->predicted_n,
                         "output_tokens_details", "reasoning_tokens", 0, "total_tokens",
                         rep->context_tokens + t->predicted_n);
    return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", rep->context_tokens, "completion_tokens",
                     t->predicted_n, "total_tokens", rep->context_tokens + t->predicted_n, "prompt_tokens_details",
                     "cached_tokens", t->cached_n);
}

/* What DisCEdge adds to OpenAI's objects: where the conversation lives. */
static void add_session(json_t *o, const api_chat *chat, const ctx_reply *rep) {
    json_object_set_new(o, "node", json_string(chat->node));
    if (!chat->session) return;
    json_object_set_new(o, "session_id", json_string(chat->sid));
    if (rep) json_object_set_new(o, "turn", json_integer(rep->turn));
    if (rep) json_object_set_new(o, "user", json_string(rep->user_id));
}

static json_t *text_part(const strbuf *text) {
    return json_pack("{s:s, s:o, s:[]}", "type", "output_text", "text", api_text_json(text), "annotations");
}

/* The message item of a response: "msg_" and the response's own suffix. */
static json_t *message_item(const api_chat *chat, const char *status, json_t *content) {
    return json_pack("{s:s, s:s+, s:s, s:s, s:o}", "type", "message", "id", "msg_", chat->id + 5, "status", status,
                     "role", "assistant", "content", content);
}

static json_t *response_json(const api_chat *chat, const ctx_reply *rep) {
    bool done = rep != NULL, cut = rep && rep->llm.stopped_limit;
    json_t *output = json_array();
    if (done)
        json_array_append_new(output, message_item(chat, "completed", json_pack("[o]", text_part(&rep->content))));
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s, s:o, s:o, s:n, s:o, s:{}, s:b, s:s, s:[], s:{s:{s:s}}, s:b}", "id",
                          chat->id, "object", "response", "created_at", (json_int_t)chat->created, "status",
                          !done     ? "in_progress"
                              : cut ? "incomplete"
                                    : "completed",
                          "model", chat->model, "output", output, "usage", done ? usage_json(chat, rep) : json_null(),
                          "error", "incomplete_details",
                          cut ? json_pack("{s:s}", "reason", "max_output_tokens") : json_null(), "metadata",
                          "parallel_tool_calls", 0, "tool_choice", "auto", "tools", "text", "format", "type", "text",
                          "store", chat->session);
    char prev[IDENTITY_REPLY_MAX];
    identity_reply_id(true, chat->prev_sid, chat->prev_turn, prev);
    json_object_set_new(o, "previous_response_id", chat->prev_turn ? json_string(prev) : json_null());
    add_session(o, chat, rep);
    return o;
}

json_t *api_chat_json(const ctx_reply *rep, const api_chat *chat) {
    if (chat->responses) return response_json(chat, rep);
    json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content", api_text_json(&rep->content));
    json_t *choice = json_pack("{s:i, s:o, s:s, s:n}", "index", 0, "message", msg, "finish_reason",
                               rep->llm.stopped_limit ? "length" : "stop", "logprobs");
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", chat->id, "object", "chat.completion", "created",
                          (json_int_t)chat->created, "model", chat->model, "choices", choice, "usage",
                          usage_json(chat, rep));
    add_session(o, chat, rep);
    return o;
}

/* --- streams ----------------------------------------------------------- */

static json_t *chunk(const api_chat *chat, json_t *delta, const char *finish) {
    json_t *choices = json_array();
    if (delta)
        json_array_append_new(choices,
                              json_pack("{s:i, s:o, s:o, s:n}", "index", 0, "delta", delta, "finish_reason",
                                        finish ? json_string(finish) : json_null(), "logprobs"));
    return json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", chat->id, "object", "chat.completion.chunk", "created",
                     (json_int_t)chat->created, "model", chat->model, "choices", choices);
}

/* A Responses event: its type, its place in the stream, and fields. */
static void event(api_chat *chat, strbuf *out, const char *type, json_t *fields) {
    json_object_set_new(fields, "type", json_string(type));
    json_object_set_new(fields, "sequence_number", json_integer(chat->seq++));
    sse_event(out, type, fields);
}

static json_t *at_text(const api_chat *chat, json_t *fields) {
    json_object_set_new(fields, "item_id", json_pack("s+", "msg_", chat->id + 5));
    json_object_set_new(fields, "output_index", json_integer(0));
    json_object_set_new(fields, "content_index", json_integer(0));
    return fields;
}

void api_chat_stream_open(api_chat *chat, strbuf *out) {
    if (!chat->responses) {
        json_t *c = chunk(chat, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL);
        add_session(c, chat, NULL);
        sse_event(out, NULL, c);
        return;
    }
    strbuf empty = {0};
    event(chat, out, "response.created", json_pack("{s:o}", "response", response_json(chat, NULL)));
    event(chat, out, "response.output_item.added",
          json_pack("{s:i, s:o}", "output_index", 0, "item", message_item(chat, "in_progress", json_array())));
    event(chat, out, "response.content_part.added", at_text(chat, json_pack("{s:o}", "part", text_part(&empty))));
}

void api_chat_stream_delta(api_chat *chat, const char *text, size_t n, strbuf *out) {
    strbuf b = {.s = (char *)text, .n = n};
    if (!chat->responses) sse_event(out, NULL, chunk(chat, json_pack("{s:o}", "content", api_text_json(&b)), NULL));
    else
        event(chat, out, "response.output_text.delta",
              at_text(chat, json_pack("{s:o, s:[]}", "delta", api_text_json(&b), "logprobs")));
}

void api_chat_stream_close(api_chat *chat, const ctx_reply *rep, strbuf *out) {
    if (!chat->responses) {
        json_t *c = chunk(chat, json_object(), rep->llm.stopped_limit ? "length" : "stop");
        add_session(c, chat, rep);
        sse_event(out, NULL, c);
        if (chat->include_usage) {
            json_t *u = chunk(chat, NULL, NULL);
            json_object_set_new(u, "usage", usage_json(chat, rep));
            sse_event(out, NULL, u);
        }
        strbuf_puts(out, "data: [DONE]\n\n");
        return;
    }
    event(chat, out, "response.output_text.done",
          at_text(chat, json_pack("{s:o, s:[]}", "text", api_text_json(&rep->content), "logprobs")));
    event(chat, out, "response.content_part.done", at_text(chat, json_pack("{s:o}", "part", text_part(&rep->content))));
    event(chat, out, "response.output_item.done",
          json_pack("{s:i, s:o}", "output_index", 0, "item",
                    message_item(chat, "completed", json_pack("[o]", text_part(&rep->content)))));
    event(chat, out, "response.completed", json_pack("{s:o}", "response", response_json(chat, rep)));
}

void api_chat_stream_fail(api_chat *chat, const dc_error *e, strbuf *out) {
    /* {"error": {...}}: what the SDKs raise as APIError mid-stream */
    if (chat->responses) event(chat, out, "error", api_error_json(e));
    else sse_event(out, NULL, api_error_json(e));
}

json_t *api_models_json(const char *model) {
    return json_pack("{s:s, s:[{s:s, s:s, s:i, s:s}]}", "object", "list", "data", "id", model, "object", "model",
                     "created", 0, "owned_by", "discedge");
}
