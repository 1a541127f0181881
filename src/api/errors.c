/* errors.c - see errors.h. */
#include "errors.h"

#include <string.h>

#include "../util/utf8.h"

static const struct {
    int status;
    const char *type;
} table[DC_E__COUNT] = {
    [DC_OK] = {200, "ok"},
    [DC_E_INVALID] = {400, "invalid_request"},
    [DC_E_JSON] = {400, "invalid_json"},
    [DC_E_CTX_LENGTH] = {400, "context_length_exceeded"},
    [DC_E_SESSION_FULL] = {400, "session_full"},
    [DC_E_MODE_MISMATCH] = {400, "mode_mismatch"},
    [DC_E_UNAUTHORIZED] = {401, "invalid_api_key"},
    [DC_E_FORBIDDEN] = {403, "forbidden"},
    [DC_E_NOT_FOUND] = {404, "not_found"},
    [DC_E_METHOD] = {405, "method_not_allowed"},
    [DC_E_CONFLICT] = {409, "turn_conflict"},
    [DC_E_INCOMPATIBLE] = {409, "incompatible_context"},
    [DC_E_TOO_LARGE] = {413, "payload_too_large"},
    [DC_E_BUSY] = {429, "server_busy"},
    [DC_E_QUOTA] = {429, "quota_exceeded"},
    [DC_E_CANCELLED] = {499, "client_closed_request"},
    [DC_E_INTERNAL] = {500, "server_error"},
    [DC_E_STORE] = {500, "store_error"},
    [DC_E_STALE] = {503, "stale_context"},
    [DC_E_UNAVAILABLE] = {503, "store_unavailable"},
    [DC_E_LLM_DOWN] = {503, "llm_unavailable"},
};

int api_error_status(dc_code code) {
    return (unsigned)code < DC_E__COUNT && table[code].status ? table[code].status : 500;
}

const char *api_error_type(dc_code code) {
    return (unsigned)code < DC_E__COUNT && table[code].type ? table[code].type : "server_error";
}

json_t *api_error_json(const dc_error *e) {
    /* Messages quote what clients sent (a percent-decoded URL such as /%FF,
     * an id), and dc_fail may cut one inside a multi-byte character: JSON
     * strings must be valid UTF-8, so the message is made so here, where
     * every error body is built, or the body would be lost. */
    strbuf msg = {0};
    utf8_sanitize(e->message, strnlen(e->message, sizeof e->message), &msg);
    json_t *inner = json_pack("{s:i, s:s, s:s}", "code", api_error_status(e->code), "type", api_error_type(e->code),
                              "message", msg.s);
    strbuf_free(&msg);
    if (e->code == DC_E_CONFLICT && e->expected_turn)
        json_object_set_new(inner, "expected_turn", json_integer(e->expected_turn));
    return json_pack("{s:o}", "error", inner);
}
