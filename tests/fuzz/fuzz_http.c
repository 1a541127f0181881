/* fuzz_http.c - libFuzzer harness: what a client sends a node.
 *
 * The input is split at its first two NUL bytes into header values and a
 * body (NUL cannot occur in an HTTP header or a JSON text, so every
 * real request is representable):
 *   header NUL header2 NUL body
 * and each goes through every parser that would see it: the bodies of
 * /completion, /v1/chat/completions (with X-Session-Id and X-Turn) and
 * /v1/responses; the Authorization header against a key file; a
 * response id (previous_response_id); a session id from a URL path. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/openai.h"
#include "api/llamacpp.h"
#include "util/ids.h"

static auth *keys;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char path[] = "/tmp/dc-fuzz-keys-XXXXXX", err[256];
    int fd = mkstemp(path);
    if (fd < 0) abort();
    static const char file[] = "# key user\nsk-0123456789abcdef ann\nsk-fedcba9876543210 bob\n";
    if (write(fd, file, sizeof file - 1) != (ssize_t)(sizeof file - 1)) abort();
    close(fd);
    keys = auth_load(path, err, sizeof err);
    unlink(path);
    if (!keys) abort();
    return 0;
}

/* The next NUL-terminated piece of [*p, end), as a fresh string. */
static char *piece(const uint8_t **p, const uint8_t *end) {
    const uint8_t *z = memchr(*p, 0, (size_t)(end - *p));
    size_t n = z ? (size_t)(z - *p) : (size_t)(end - *p);
    char *s = malloc(n + 1);
    memcpy(s, *p, n);
    s[n] = '\0';
    *p += z ? n + 1 : n;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    const uint8_t *p = data, *end = data + n;
    char *h1 = piece(&p, end), *h2 = piece(&p, end);
    const char *body = (const char *)p;
    size_t len = (size_t)(end - p);
    api_defaults d = {.default_n_predict = 128};
    dc_error err = {0};
    json_t *root = NULL;
    ctx_request req;
    api_chat chat;
    bool stream;

    memset(&req, 0, sizeof req);
    api_completion_parse(body, len, &d, &req, &stream, &root, &err);
    json_decref(root);
    root = NULL;

    memset(&req, 0, sizeof req);
    memset(&chat, 0, sizeof chat);
    api_chat_parse(body, len, h1[0] ? h1 : NULL, h2[0] ? h2 : NULL, &d, &req, &chat, &root, &err);
    json_decref(root);
    api_chat_free(&chat);
    root = NULL;

    memset(&req, 0, sizeof req);
    memset(&chat, 0, sizeof chat);
    api_responses_parse(body, len, &d, &req, &chat, &root, &err);
    json_decref(root);
    api_chat_free(&chat);

    char user[ID_MAX + 1] = "", sid[ID_MAX + 1];
    uint32_t turn;
    if (auth_check(keys, h1, user, &err) == DC_OK && strcmp(user, "ann") && strcmp(user, "bob")) abort();
    if (api_response_id_parse(h2, sid, &turn) && !id_is_valid(sid)) abort();
    (void)id_is_valid(h1);
    free(h1);
    free(h2);
    return 0;
}
