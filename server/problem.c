/* Maps the error vocabulary to HTTP statuses and RFC 9457 problem details. */
#include "server/problem.h"

#include <stdbool.h>
#include <string.h>

#include "common/log.h"

struct problem_kind {
    int status;
    const char *type; /* stable: part of the API */
    const char *title;
};

#define TYPE_BASE "https://cofi.dev/problems/"

/* One row per status cofi sends; the type URIs never change. */
static const struct problem_kind kinds[] = {
    {400, TYPE_BASE "bad-request", "Bad Request"},
    {401, TYPE_BASE "unauthorized", "Unauthorized"},
    {403, TYPE_BASE "forbidden", "Forbidden"},
    {404, TYPE_BASE "not-found", "Not Found"},
    {405, TYPE_BASE "method-not-allowed", "Method Not Allowed"},
    {406, TYPE_BASE "not-acceptable", "Not Acceptable"},
    {409, TYPE_BASE "conflict", "Conflict"},
    {413, TYPE_BASE "content-too-large", "Content Too Large"},
    {415, TYPE_BASE "unsupported-media-type", "Unsupported Media Type"},
    {422, TYPE_BASE "validation", "Unprocessable Content"},
    {500, TYPE_BASE "internal", "Internal Server Error"},
    {501, TYPE_BASE "not-implemented", "Not Implemented"},
    {503, TYPE_BASE "unavailable", "Service Unavailable"},
};

#define KIND_COUNT (sizeof kinds / sizeof kinds[0])

static const struct problem_kind *kind_of(int http_status)
{
    for (size_t i = 0; i < KIND_COUNT; i++) {
        if (kinds[i].status == http_status) {
            return &kinds[i];
        }
    }
    return NULL;
}

int problem_http_status(int code)
{
    switch (code) {
    case COFI_OK:
        return 200;
    case COFI_E_BAD_REQUEST:
        return 400;
    case COFI_E_UNAUTHORIZED:
        return 401;
    case COFI_E_FORBIDDEN:
        return 403;
    case COFI_E_NOT_FOUND:
        return 404;
    case COFI_E_METHOD:
        return 405;
    case COFI_E_NOT_ACCEPTABLE:
        return 406;
    case COFI_E_CONFLICT:
        return 409;
    case COFI_E_TOO_LARGE:
        return 413;
    case COFI_E_MEDIA_TYPE:
        return 415;
    case COFI_E_INVALID:
        return 422;
    case COFI_E_NOT_IMPLEMENTED:
        return 501;
    case COFI_E_UNAVAILABLE:
    case COFI_E_BUSY:
        return 503;
    default:
        return 500;
    }
}

const char *problem_type_uri(int http_status)
{
    const struct problem_kind *k = kind_of(http_status);
    return k != NULL ? k->type : TYPE_BASE "internal";
}

const char *problem_title(int http_status)
{
    const struct problem_kind *k = kind_of(http_status);
    return k != NULL ? k->title : "Error";
}

static bool is_standard_member(const char *key)
{
    return strcmp(key, "type") == 0 || strcmp(key, "title") == 0 || strcmp(key, "status") == 0 ||
           strcmp(key, "detail") == 0;
}

json_t *problem_new(const struct cofi_err *err, json_t *ext)
{
    int code = err != NULL ? (int)err->code : COFI_E_INTERNAL;
    int status = problem_http_status(code);
    const char *msg = err != NULL && err->msg[0] != '\0' ? err->msg : problem_title(status);
    const char *detail = msg;

    if (status == 500) {
        log_error("internal error: %s%s%s", msg,
                  err != NULL && err->sqlstate[0] ? " sqlstate " : "",
                  err != NULL ? err->sqlstate : "");
        detail = "An internal error occurred; it has been logged.";
    } else if (status == 503 && code != COFI_E_BUSY) {
        log_warn("unavailable: %s", msg);
        detail = "The database is unavailable; try again later.";
    }

    json_t *p = json_object();
    if (p == NULL) {
        json_decref(ext);
        return NULL;
    }
    int rc = 0;
    rc |= json_object_set_new(p, "type", json_string(problem_type_uri(status)));
    rc |= json_object_set_new(p, "title", json_string(problem_title(status)));
    rc |= json_object_set_new(p, "status", json_integer(status));
    /* err->msg may hold bytes of client input that are not UTF-8: keep what is valid. */
    json_t *d = json_string(detail);
    if (d == NULL) {
        d = json_string(problem_title(status));
    }
    rc |= json_object_set_new(p, "detail", d);
    if (json_is_object(ext)) {
        const char *key;
        json_t *value;
        json_object_foreach(ext, key, value)
        {
            if (!is_standard_member(key)) {
                rc |= json_object_set(p, key, value);
            }
        }
    }
    json_decref(ext);
    if (rc != 0) {
        json_decref(p);
        return NULL;
    }
    return p;
}
