/* errors.h - the one place where a dc_error becomes HTTP: status code, error
 * type and the JSON body {"error": {"code", "type", "message"[, "expected_turn"]}}. */
#ifndef DC_API_ERRORS_H
#define DC_API_ERRORS_H

#include <jansson.h>

#include "../util/error.h"

int api_error_status(dc_code code);
const char *api_error_type(dc_code code);
/* New reference; never NULL. */
json_t *api_error_json(const dc_error *e);

#endif
