/* Strict HTTP checks of request targets, header lines and framing. */
#include "server/http_strict.h"

#include <string.h>
#include <strings.h>

#include "common/log.h"

/* True when p (at least 3 bytes left) is "%XY" for the byte hi/lo, case-insensitive. */
static bool is_escape(const char *p, char hi, char lo)
{
    return p[0] == '%' && p[1] == hi && (p[2] == lo || p[2] == (char)(lo - 'a' + 'A'));
}

int http_strict_target(const char *raw, bool *too_many_args, struct cofi_err *err)
{
    *too_many_args = false;
    const char *q = strchr(raw, '?');
    size_t path_len = q != NULL ? (size_t)(q - raw) : strlen(raw);
    for (size_t i = 0; i + 3 <= path_len; i++) {
        if (is_escape(raw + i, '2', 'f')) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST,
                                "an encoded '/' (%%2F) in a path segment is not allowed");
        }
        if (is_escape(raw + i, '0', '0')) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST,
                                "an encoded NUL (%%00) in the path is not allowed");
        }
    }
    if (q == NULL) {
        return 0;
    }
    size_t args = q[1] != '\0' ? 1 : 0;
    for (const char *p = q + 1; *p != '\0'; p++) {
        if (*p == '&' || *p == ';') {
            args++;
        } else if (p[0] == '%' && p[1] == '0' && p[2] == '0') {
            return cofi_err_set(err, COFI_E_BAD_REQUEST,
                                "an encoded NUL (%%00) in the query is not allowed");
        }
    }
    if (args > HTTP_QUERY_ARGS_MAX) {
        *too_many_args = true;
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "more than %d query arguments",
                            HTTP_QUERY_ARGS_MAX);
    }
    return 0;
}

static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return true;
    }
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

int http_strict_header(const char *name, size_t name_len, const char *value, size_t value_len,
                       struct cofi_err *err)
{
    char shown[64];
    bool name_ok = name_len > 0;
    for (size_t i = 0; i < name_len && name_ok; i++) {
        name_ok = is_tchar((unsigned char)name[i]);
    }
    if (!name_ok) {
        log_escape(name, shown, sizeof shown);
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "malformed header name \"%s\"", shown);
    }
    for (size_t i = 0; value != NULL && i < value_len; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            log_escape(name, shown, sizeof shown);
            return cofi_err_set(err, COFI_E_BAD_REQUEST,
                                "the value of header \"%s\" holds a control character", shown);
        }
    }
    return 0;
}

int http_strict_framing(int cl_count, const char *cl, int te_count, const char *te,
                        struct cofi_err *err)
{
    if (cl_count > 1) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "more than one Content-Length header");
    }
    if (te_count > 1) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "more than one Transfer-Encoding header");
    }
    if (cl_count == 1 && te_count == 1) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST,
                            "Content-Length and Transfer-Encoding together are not allowed");
    }
    if (cl_count == 1) {
        bool digits = cl != NULL && cl[0] != '\0';
        for (const char *p = cl; digits && *p != '\0'; p++) {
            digits = *p >= '0' && *p <= '9';
        }
        if (!digits) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST, "Content-Length is not a number");
        }
    }
    if (te_count == 1 && (te == NULL || strcasecmp(te, "chunked") != 0)) {
        return cofi_err_set(err, COFI_E_NOT_IMPLEMENTED,
                            "the only Transfer-Encoding supported is chunked");
    }
    return 0;
}
