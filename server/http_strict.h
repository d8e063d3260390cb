/* Strict HTTP: what cofid refuses in a request's target, headers and framing before routing. */
#ifndef COFI_HTTP_STRICT_H
#define COFI_HTTP_STRICT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"

/* Query arguments a request may carry at most (no route takes more than three). */
#define HTTP_QUERY_ARGS_MAX 32

/* Checks a request's raw target (as received, before any percent-decoding): the path may not
 * hold an encoded '/' (%2F) or NUL (%00), which decoding would turn into a different route or
 * a cut value; the query may not hold %00 nor more than HTTP_QUERY_ARGS_MAX arguments.
 * Returns 0, or COFI_E_BAD_REQUEST with err saying why; *too_many_args is true when the
 * query has too many arguments (the caller then keeps the server from storing them).
 * Pure; thread-safe. */
int http_strict_target(const char *raw, bool *too_many_args, struct cofi_err *err);

/* Checks one header line: the name is a token (RFC 9110 tchar: letters, digits and
 * !#$%&'*+-.^_`|~), the value holds no control character but horizontal tab (no NUL, no
 * bare CR or LF). value_len counts every byte (a NUL included). Returns 0, or
 * COFI_E_BAD_REQUEST with err naming the header (escaped). Pure; thread-safe. */
int http_strict_header(const char *name, size_t name_len, const char *value, size_t value_len,
                       struct cofi_err *err);

/* The framing a request announced: how many Content-Length headers it had and the first
 * one's value (NULL with none), how many Transfer-Encoding headers and the first one's value.
 * Refuses (COFI_E_BAD_REQUEST) several Content-Length headers, a value that is not digits
 * only, Content-Length together with Transfer-Encoding, several Transfer-Encoding headers;
 * and (COFI_E_NOT_IMPLEMENTED) a Transfer-Encoding other than "chunked". Returns 0 or the
 * code with err filled. Pure; thread-safe. */
int http_strict_framing(int cl_count, const char *cl, int te_count, const char *te,
                        struct cofi_err *err);

#endif
