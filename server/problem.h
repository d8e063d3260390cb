/* The one place where a cofi_status becomes an HTTP status and an RFC 9457 problem body. */
#ifndef COFI_PROBLEM_H
#define COFI_PROBLEM_H

#include <jansson.h>

#include "common/error.h"

/* The media type of every error body. */
#define PROBLEM_CONTENT_TYPE "application/problem+json"

/* The HTTP status for a cofi_status: COFI_OK → 200, COFI_E_BAD_REQUEST → 400, ...,
 * COFI_E_NOT_IMPLEMENTED → 501, COFI_E_UNAVAILABLE and COFI_E_BUSY → 503,
 * COFI_E_INTERNAL/COFI_E_NOMEM and anything unknown → 500. Thread-safe; can't fail. */
int problem_http_status(int code);

/* The stable `type` URI for an HTTP status ("https://cofi.dev/problems/not-found"), or the
 * one of 500 for a status cofi never sends. Returns a static string. Thread-safe; can't fail. */
const char *problem_type_uri(int http_status);

/* The reason phrase of an HTTP status ("Not Found"), "Error" for one cofi never sends.
 * Returns a static string. Thread-safe; can't fail. */
const char *problem_title(int http_status);

/* Builds the problem body {"type", "title", "status", "detail", ...ext} for err (err->code
 * gives the status, err->msg the detail). For 5xx the detail is a fixed short sentence and
 * err->msg is logged instead (error level for 500, warn for 503), so internals never reach
 * the client; except COFI_E_BUSY, whose err->msg (shutting down, too busy) is the detail. ext, when
 * not NULL, is an object whose members are added (it is stolen, also on failure); members named
 * like the standard ones are ignored. Returns a new reference, or NULL when out of memory.
 * Thread-safe. */
json_t *problem_new(const struct cofi_err *err, json_t *ext);

/* Seconds a client should wait before it tries again after a 503 (its Retry-After header). */
#define PROBLEM_RETRY_AFTER_S "5"

#endif
