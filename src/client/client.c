/* client.c - see client.h. */
#include "client.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "../util/clock.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

void client_response_free(client_response *r) { strbuf_free(&r->body); }

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
    strbuf_append(ud, p, size * n);
    return size * n;
}

/* Counts the bytes libcurl writes for the request: its line and headers,
 * and its body. (CURLINFO_REQUEST_SIZE is no measure of this: when a small
 * body goes out in the same write as the headers, curl 7.88 counts it in
 * there too, and adding the body to it counted the body twice.) */
static int on_debug(CURL *h, curl_infotype type, char *data, size_t size, void *ud) {
    (void)h, (void)data;
    if (type == CURLINFO_HEADER_OUT || type == CURLINFO_DATA_OUT) *(long *)ud += (long)size;
    return 0;
}

int client_post_json(const char *base_url, const char *path, const char *json, client_response *r) {
    pthread_once(&curl_once, curl_init);
    memset(r, 0, sizeof *r);
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(r->error, sizeof r->error, "curl_easy_init failed");
        return -1;
    }
    strbuf url = {0};
    strbuf_printf(&url, "%s%s", base_url, path);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    /* no "Expect: 100-continue" round trip on larger bodies */
    hdr = curl_slist_append(hdr, "Expect:");
    curl_easy_setopt(h, CURLOPT_URL, url.s);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(json));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, on_debug);
    curl_easy_setopt(h, CURLOPT_DEBUGDATA, &r->request_bytes);
    curl_easy_setopt(h, CURLOPT_VERBOSE, 1L); /* the debug callback runs only when verbose */
    double t0 = clock_mono_ms();
    CURLcode rc = curl_easy_perform(h);
    r->ms = clock_mono_ms() - t0;
    int out = 0;
    if (rc != CURLE_OK) {
        snprintf(r->error, sizeof r->error, "%s", curl_easy_strerror(rc));
        out = -1;
    } else {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    }
    if (!r->body.s) strbuf_append(&r->body, "", 0);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    strbuf_free(&url);
    return out;
}

void client_session_init(client_session *s, const char *mode, const char *user_id) {
    memset(s, 0, sizeof *s);
    snprintf(s->mode, sizeof s->mode, "%s", mode);
    if (user_id) snprintf(s->user_id, sizeof s->user_id, "%s", user_id);
    s->temperature = -1;
    s->seed = -1;
}

void client_session_free(client_session *s) { strbuf_free(&s->history); }

void client_turn_free(client_turn *t) {
    client_response_free(&t->http);
    strbuf_free(&t->content);
}

/* Client-side mode keeps the history formatted the way the model expects.
 * The client has no tokenizer, so it writes ChatML (the template of SmolLM2,
 * Qwen and many more); a client for another template formats its own. */
static void chatml_append(strbuf *h, const char *role, const char *content) {
    strbuf_printf(h, "<|im_start|>%s\n", role);
    strbuf_puts(h, content);
    strbuf_puts(h, "<|im_end|>\n");
}

int client_session_send(client_session *s, const char *base_url, const char *message, client_turn *t) {
    memset(t, 0, sizeof *t);
    bool client_side = !strcmp(s->mode, "client-side");
    json_t *req = json_object();
    strbuf prompt = {0};
    if (client_side) {
        strbuf_append(&prompt, s->history.s ? s->history.s : "", s->history.n);
        chatml_append(&prompt, "user", message);
        strbuf_puts(&prompt, "<|im_start|>assistant\n");
        json_object_set_new(req, "prompt", json_string(prompt.s));
    } else {
        json_object_set_new(req, "prompt", json_string(message));
        if (s->session_id[0]) json_object_set_new(req, "session_id", json_string(s->session_id));
    }
    json_object_set_new(req, "mode", json_string(s->mode));
    if (s->user_id[0]) json_object_set_new(req, "user_id", json_string(s->user_id));
    json_object_set_new(req, "turn", json_integer(s->turn + 1));
    json_object_set_new(req, "stream", json_false());
    if (s->n_predict > 0) json_object_set_new(req, "n_predict", json_integer(s->n_predict));
    if (s->temperature >= 0) json_object_set_new(req, "temperature", json_real(s->temperature));
    if (s->seed >= 0) json_object_set_new(req, "seed", json_integer(s->seed));
    if (s->no_cache) json_object_set_new(req, "cache_prompt", json_false());
    if (s->ignore_eos) json_object_set_new(req, "ignore_eos", json_true());
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    int rc = client_post_json(base_url, "/completion", body, &t->http);
    free(body);
    if (rc != 0 || t->http.status != 200) {
        strbuf_free(&prompt);
        return -1;
    }
    json_t *resp = json_loadb(t->http.body.s, t->http.body.n, 0, NULL);
    const char *content = json_string_value(json_object_get(resp, "content"));
    if (!content) {
        snprintf(t->http.error, sizeof t->http.error, "200 without a content field");
        json_decref(resp);
        strbuf_free(&prompt);
        return -1;
    }
    strbuf_puts(&t->content, content);
    t->context_tokens = (int)json_integer_value(json_object_get(resp, "context_tokens"));
    t->tokens_predicted = (int)json_integer_value(json_object_get(resp, "tokens_predicted"));
    snprintf(t->node, sizeof t->node, "%s",
             json_string_value(json_object_get(resp, "node")) ? json_string_value(json_object_get(resp, "node")) : "");
    json_t *tm = json_object_get(resp, "timings");
    t->tokenize_ms = json_number_value(json_object_get(tm, "tokenize_ms"));
    t->prompt_ms = json_number_value(json_object_get(tm, "prompt_ms"));
    t->predicted_ms = json_number_value(json_object_get(tm, "predicted_ms"));
    t->store_read_ms = json_number_value(json_object_get(tm, "store_read_ms"));
    t->store_commit_ms = json_number_value(json_object_get(tm, "store_commit_ms"));
    t->store_read_core_trips = (int)json_integer_value(json_object_get(tm, "store_read_core_trips"));
    t->wait_ms = json_number_value(json_object_get(resp, "wait_ms"));
    t->retries = (int)json_integer_value(json_object_get(resp, "retries"));
    const char *sid = json_string_value(json_object_get(resp, "session_id"));
    const char *uid = json_string_value(json_object_get(resp, "user_id"));
    if (sid) snprintf(s->session_id, sizeof s->session_id, "%s", sid);
    if (uid) snprintf(s->user_id, sizeof s->user_id, "%s", uid);
    if (client_side) {
        strbuf_clear(&s->history);
        strbuf_append(&s->history, prompt.s, prompt.n);
        strbuf_puts(&s->history, content);
        strbuf_puts(&s->history, "<|im_end|>\n");
    }
    s->turn++;
    json_decref(resp);
    strbuf_free(&prompt);
    return 0;
}
