/* test_api.c - JSON error mapping, /completion and /v1/chat/completions
 * request parsing: every malformed input becomes the right 4xx, never a
 * crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "api/errors.h"
#include "api/openai.h"
#include "api/request.h"
#include "util/ids.h"
#include "util/utf8.h"

static void error_statuses(void **state) {
    (void)state;
    struct {
        dc_code code;
        int status;
        const char *type;
    } cases[] = {
        {DC_E_INVALID, 400, "invalid_request"},   {DC_E_JSON, 400, "invalid_json"},
        {DC_E_CTX_LENGTH, 400, "context_length_exceeded"}, {DC_E_MODE_MISMATCH, 400, "mode_mismatch"},
        {DC_E_FORBIDDEN, 403, "forbidden"},       {DC_E_NOT_FOUND, 404, "not_found"},
        {DC_E_METHOD, 405, "method_not_allowed"}, {DC_E_CONFLICT, 409, "turn_conflict"},
        {DC_E_INCOMPATIBLE, 409, "incompatible_context"}, {DC_E_TOO_LARGE, 413, "payload_too_large"},
        {DC_E_INTERNAL, 500, "server_error"},     {DC_E_STORE, 500, "store_error"},
        {DC_E_STALE, 503, "stale_context"},       {DC_E_UNAVAILABLE, 503, "store_unavailable"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(api_error_status(cases[i].code), cases[i].status);
        assert_string_equal(api_error_type(cases[i].code), cases[i].type);
    }
    assert_int_equal(api_error_status((dc_code)999), 500);
}

static void error_body_shape(void **state) {
    (void)state;
    dc_error e = {0};
    dc_fail(&e, DC_E_CONFLICT, "turn %d taken", 3);
    e.expected_turn = 4;
    json_t *j = api_error_json(&e);
    json_t *in = json_object_get(j, "error");
    assert_int_equal(json_integer_value(json_object_get(in, "code")), 409);
    assert_string_equal(json_string_value(json_object_get(in, "type")), "turn_conflict");
    assert_string_equal(json_string_value(json_object_get(in, "message")), "turn 3 taken");
    assert_int_equal(json_integer_value(json_object_get(in, "expected_turn")), 4);
    json_decref(j);
    dc_fail(&e, DC_E_FORBIDDEN, "no");
    j = api_error_json(&e);
    assert_null(json_object_get(json_object_get(j, "error"), "expected_turn"));
    json_decref(j);
}

static dc_code parse(const char *body, ctx_request *req, dc_error *err) {
    api_defaults d = {.default_n_predict = 128};
    json_t *root = NULL;
    bool stream;
    dc_code rc = api_completion_parse(body, strlen(body), &d, req, &stream, &root, err);
    json_decref(root);
    return rc;
}

static void paper_client_request(void **state) {
    (void)state;
    ctx_request r;
    dc_error e = {0};
    /* what the paper's Python client posts, plus a field we do not know */
    const char *body = "{\"prompt\":\"hi\",\"mode\":\"raw\",\"session_id\":\"s1\",\"user_id\":\"robotics_dev\","
                       "\"turn\":2,\"temperature\":0,\"seed\":123,\"stream\":false,\"model\":\"Qwen/Qwen1.5-0.5B-Chat\","
                       "\"n_predict\":64,\"cache_prompt\":true}";
    api_defaults d = {.default_n_predict = 128};
    json_t *root = NULL;
    bool stream = true;
    assert_int_equal(api_completion_parse(body, strlen(body), &d, &r, &stream, &root, &e), DC_OK);
    assert_false(stream);
    assert_int_equal(r.mode, MODE_RAW);
    assert_string_equal(r.session_id, "s1");
    assert_string_equal(r.user_id, "robotics_dev");
    assert_int_equal(r.turn, 2);
    assert_int_equal(r.gen.n_predict, 64);
    assert_int_equal(r.gen.seed, 123);
    assert_true(r.gen.temperature == 0.0f);
    json_decref(root);
    assert_int_equal(parse("{\"prompt\":\"x\"}", &r, &e), DC_OK);
    assert_int_equal(r.mode, MODE_TOKENIZED);
    assert_int_equal(r.turn, 0);
    assert_int_equal(r.gen.n_predict, 128);
    assert_int_equal(parse("{\"prompt\":\"x\",\"n_predict\":-1}", &r, &e), DC_OK);
    assert_int_equal(r.gen.n_predict, 128);
}

static void bad_requests(void **state) {
    (void)state;
    struct {
        const char *body;
        dc_code code;
        const char *says;
    } cases[] = {
        {"{\"prompt\":", DC_E_JSON, "malformed JSON"},
        {"", DC_E_JSON, "malformed JSON"},
        {"[1,2]", DC_E_JSON, "object"},
        {"{\"prompt\":\"a\",\"prompt\":\"b\"}", DC_E_JSON, "duplicate"},
        {"{}", DC_E_INVALID, "prompt is required"},
        {"{\"prompt\":5}", DC_E_INVALID, "prompt must be a string"},
        {"{\"prompt\":\"x\",\"mode\":\"telepathy\"}", DC_E_INVALID, "unknown mode"},
        {"{\"prompt\":\"x\",\"turn\":0}", DC_E_INVALID, "turn must be >= 1"},
        {"{\"prompt\":\"x\",\"turn\":-3}", DC_E_INVALID, "turn must be >= 1"},
        {"{\"prompt\":\"x\",\"turn\":1.5}", DC_E_INVALID, "turn must be an integer"},
        {"{\"prompt\":\"x\",\"turn\":\"2\"}", DC_E_INVALID, "turn must be an integer"},
        {"{\"prompt\":\"x\",\"turn\":99999999999}", DC_E_INVALID, "turn must be between"},
        {"{\"prompt\":\"x\",\"n_predict\":0}", DC_E_INVALID, "n_predict"},
        {"{\"prompt\":\"x\",\"temperature\":-1}", DC_E_INVALID, "temperature"},
        {"{\"prompt\":\"x\",\"top_p\":2}", DC_E_INVALID, "top_p"},
        {"{\"prompt\":\"x\",\"session_id\":7}", DC_E_INVALID, "session_id must be a string"},
        {"{\"prompt\":\"x\",\"stream\":\"no\"}", DC_E_INVALID, "stream must be a boolean"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ctx_request r;
        dc_error e = {0};
        assert_int_equal(parse(cases[i].body, &r, &e), cases[i].code);
        if (!strstr(e.message, cases[i].says)) fail_msg("%s: message \"%s\" lacks \"%s\"", cases[i].body, e.message, cases[i].says);
    }
}

static void ids(void **state) {
    (void)state;
    char a[33], b[33];
    assert_int_equal(id_random_hex(a), 0);
    assert_int_equal(id_random_hex(b), 0);
    assert_int_equal(strlen(a), 32);
    assert_string_not_equal(a, b);
    assert_true(id_is_valid(a));
    assert_true(id_is_valid("robotics_dev"));
    assert_false(id_is_valid(""));
    assert_false(id_is_valid("a/b"));
    assert_false(id_is_valid("a b"));
    assert_false(id_is_valid("x\n"));
    char long_id[70];
    memset(long_id, 'a', 65);
    long_id[65] = 0;
    assert_false(id_is_valid(long_id));
    long_id[64] = 0;
    assert_true(id_is_valid(long_id));
}

static void utf8(void **state) {
    (void)state;
    strbuf b = {0};
    utf8_sanitize("ok \xc3\xa9 \xe2\x82", 9, &b); /* a cut 3-byte sequence at the end */
    assert_string_equal(b.s, "ok \xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd");
    strbuf_clear(&b);
    utf8_sanitize("\xed\xa0\x80\xc0\xaf", 5, &b); /* a surrogate and an overlong */
    assert_string_equal(b.s, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    strbuf_free(&b);
}

static dc_code chat(const char *body, const char *hdr_sid, const char *hdr_turn, ctx_request *req, api_chat *c,
                    json_t **root, dc_error *e) {
    api_defaults d = {.default_n_predict = 64};
    return api_chat_parse(body, strlen(body), hdr_sid, hdr_turn, &d, req, c, root, e);
}

static void chat_stateless_and_session(void **state) {
    (void)state;
    ctx_request req;
    api_chat c;
    json_t *root;
    dc_error e = {0};
    /* no session: the whole conversation, rendered by the model's template */
    assert_int_equal(chat("{\"model\":\"m\",\"max_tokens\":9,\"messages\":[{\"role\":\"developer\",\"content\":\"s\"},"
                          "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]},"
                          "{\"role\":\"assistant\",\"content\":\"yo\"},{\"role\":\"user\",\"content\":\"q\"}]}",
                          NULL, NULL, &req, &c, &root, &e),
                     DC_OK);
    assert_int_equal(req.mode, MODE_CLIENT_SIDE);
    assert_false(c.session);
    assert_null(req.prompt);
    assert_int_equal(req.n_messages, 4);
    assert_string_equal(req.messages[0].role, "system"); /* developer is the system message */
    assert_string_equal(req.messages[1].content, "hi");
    assert_int_equal(req.gen.n_predict, 9);
    api_chat_free(&c);
    json_decref(root);
    /* store:true starts a session: the system message and the user message */
    assert_int_equal(chat("{\"store\":true,\"max_completion_tokens\":5,\"max_tokens\":7,\"messages\":["
                          "{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u\"}]}",
                          NULL, NULL, &req, &c, &root, &e),
                     DC_OK);
    assert_int_equal(req.mode, MODE_TOKENIZED);
    assert_true(c.session);
    assert_string_equal(req.system, "s");
    assert_string_equal(req.prompt, "u");
    assert_string_equal(req.user_id, "anonymous");
    assert_int_equal(req.gen.n_predict, 5); /* max_completion_tokens wins */
    api_chat_free(&c);
    json_decref(root);
    /* a session named by the headers; the body's fields win over them */
    assert_int_equal(chat("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}]}", "abc", "7", &req, &c, &root, &e),
                     DC_OK);
    assert_string_equal(req.session_id, "abc");
    assert_int_equal(req.turn, 7);
    api_chat_free(&c);
    json_decref(root);
    assert_int_equal(chat("{\"session_id\":\"xyz\",\"turn\":2,\"user\":\"ann\",\"messages\":[{\"role\":\"user\","
                          "\"content\":\"u\"}]}",
                          "abc", "7", &req, &c, &root, &e),
                     DC_OK);
    assert_string_equal(req.session_id, "xyz");
    assert_int_equal(req.turn, 2);
    assert_string_equal(req.user_id, "ann");
    api_chat_free(&c);
    json_decref(root);
}

static void chat_bad_requests(void **state) {
    (void)state;
    static const struct {
        const char *body, *turn_hdr, *why;
    } bad[] = {
        {"[]", NULL, "body must be a JSON object"},
        {"{}", NULL, "messages is required"},
        {"{\"messages\":[]}", NULL, "messages is required"},
        {"{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", NULL, "is not system"},
        {"{\"messages\":[{\"role\":\"user\"}]}", NULL, "content must be a string"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":7}]}", NULL, "content must be a string"},
        {"{\"messages\":[\"user\"]}", NULL, "must be a message"},
        {"{\"stop\":\"\\n\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", NULL, "stop sequences"},
        {"{\"n\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", NULL, "n must be between 1 and 1"},
        {"{\"max_tokens\":0,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", NULL, "max_tokens"},
        {"{\"turn\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", NULL, "turn needs a session"},
        {"{\"store\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", NULL, "store must be a boolean"},
        {"{\"store\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\","
         "\"content\":\"y\"},{\"role\":\"user\",\"content\":\"z\"}]}",
         NULL, "only the new user message"},
        {"{\"store\":true,\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}", NULL, "only the new user message"},
        {"{\"session_id\":\"s\",\"turn\":2,\"messages\":[{\"role\":\"system\",\"content\":\"x\"},"
         "{\"role\":\"user\",\"content\":\"z\"}]}",
         NULL, "can only start a session"},
        {"{\"session_id\":\"s\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "two", "X-Turn"},
        {"{\"session_id\":\"s\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "0", "X-Turn"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ctx_request req;
        api_chat c;
        json_t *root = NULL;
        dc_error e = {0};
        dc_code rc = chat(bad[i].body, NULL, bad[i].turn_hdr, &req, &c, &root, &e);
        if (rc != DC_E_INVALID && rc != DC_E_JSON) fail_msg("case %zu (%s): code %d", i, bad[i].body, rc);
        if (!strstr(e.message, bad[i].why)) fail_msg("case %zu: \"%s\" lacks \"%s\"", i, e.message, bad[i].why);
        api_chat_free(&c);
        json_decref(root);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_statuses), cmocka_unit_test(error_body_shape), cmocka_unit_test(paper_client_request),
        cmocka_unit_test(bad_requests),   cmocka_unit_test(ids),              cmocka_unit_test(utf8),
        cmocka_unit_test(chat_stateless_and_session), cmocka_unit_test(chat_bad_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
