/* The error vocabulary's helpers. */
#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>

int cofi_err_set(struct cofi_err *err, enum cofi_status code, const char *fmt, ...)
{
    if (err != NULL) {
        err->code = code;
        err->sqlstate[0] = '\0';
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return (int)code;
}

void cofi_err_clear(struct cofi_err *err)
{
    if (err != NULL) {
        err->code = COFI_OK;
        err->sqlstate[0] = '\0';
        err->msg[0] = '\0';
    }
}
