/* The one error vocabulary of cofi: a status and a message, mapped to HTTP in server/problem.c. */
#ifndef COFI_ERROR_H
#define COFI_ERROR_H

/* Functions return 0 (COFI_OK) or one of these negative codes, and fill a struct cofi_err. */
enum cofi_status {
    COFI_OK = 0,
    COFI_E_BAD_REQUEST = -1,      /* 400: malformed JSON, wrong types, bad query parameter */
    COFI_E_UNAUTHORIZED = -2,     /* 401 */
    COFI_E_FORBIDDEN = -3,        /* 403 */
    COFI_E_NOT_FOUND = -4,        /* 404 */
    COFI_E_METHOD = -5,           /* 405 */
    COFI_E_CONFLICT = -6,         /* 409 */
    COFI_E_TOO_LARGE = -7,        /* 413 */
    COFI_E_MEDIA_TYPE = -8,       /* 415 */
    COFI_E_INVALID = -9,          /* 422: well-formed but semantically invalid */
    COFI_E_UNAVAILABLE = -10,     /* 503: the database is unreachable */
    COFI_E_INTERNAL = -11,        /* 500 */
    COFI_E_NOMEM = -12,           /* 500 */
    COFI_E_BUSY = -13,            /* 503 with Retry-After: shutting down, or too busy right now */
    COFI_E_NOT_IMPLEMENTED = -14, /* 501: a feature of HTTP cofid does not support */
    COFI_E_NOT_ACCEPTABLE = -15,  /* 406: no representation the Accept header takes */
};

struct cofi_err {
    enum cofi_status code;
    char sqlstate[6]; /* PostgreSQL SQLSTATE of the failure, or "" */
    char msg[512];    /* one sentence for a human; never holds a secret */
};

/* Fills err (when err is not NULL) and returns code, so callers can `return cofi_err_set(...)`. */
int cofi_err_set(struct cofi_err *err, enum cofi_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Resets err to COFI_OK with an empty message. Accepts NULL. */
void cofi_err_clear(struct cofi_err *err);

#endif
