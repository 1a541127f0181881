/* error.c - see error.h. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

dc_code dc_fail(dc_error *err, dc_code code, const char *fmt, ...) {
    if (!err) return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}
