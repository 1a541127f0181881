/* json.h - the JSON every wire format uses: checked fields of a request
 * body, the sampling fields all endpoints share, text and token ids as
 * JSON, the engine's counters (/health on the node and on llm-serve).
 *
 * Parsing is strict about the types of the fields it knows and ignores the
 * ones it does not (as llama-server does), so clients that send extra
 * llama.cpp options still work. The formats themselves are llamacpp.h
 * (/completion) and openai.h. */
#ifndef DC_API_JSON_H
#define DC_API_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "../llm/llm.h"
#include "../util/error.h"
#include "../util/vec.h"

typedef struct {
    int default_n_predict; /* used when n_predict is absent or negative */
} api_defaults;

/* Parses a request body that must be one JSON object (*root: json_decref
 * it, also on failure). */
dc_code api_json_object(const char *body, size_t len, json_t **root, dc_error *err);
/* Optional members of a JSON object, checked: absent or null leaves *out
 * as it is (and *given false); the wrong type or range is DC_E_INVALID. */
dc_code api_get_string(json_t *root, const char *key, const char **out, dc_error *err);
dc_code api_get_number(json_t *root, const char *key, double lo, double hi, double *out, bool *given, dc_error *err);
dc_code api_get_integer(json_t *root, const char *key, long long lo, long long hi, long long *out, bool *given,
                        dc_error *err);
/* temperature, top_p, top_k, seed (a random seed when none is given), and
 * llama-server's cache_prompt and ignore_eos. */
dc_code api_sampling_parse(json_t *root, llm_gen_params *gen, dc_error *err);

/* Text as a JSON string, invalid UTF-8 replaced (a reply cut mid-character). */
json_t *api_text_json(const strbuf *b);
/* Token ids as a JSON array. */
json_t *api_ids_json(const int32_t *toks, size_t n);

/* The LLM engine's state and counters (llm_stats), for /health. */
json_t *api_engine_json(llm *m);

#endif
