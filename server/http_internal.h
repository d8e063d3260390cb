/* What the files of cofid's HTTP server share (http*.c, refresher.c, audit.c); not an API. */
#ifndef COFI_HTTP_INTERNAL_H
#define COFI_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "handlers/handlers.h"
#include "server/router.h"
#include "server/status_cache.h"

/* ---- server/http_reply.c: building answers ---- */

/* Adds the headers every answer ends with (Cache-Control: no-store). Can't fail. */
void http__final_headers(struct MHD_Response *resp);

/* A finished response (a new reference) of a JSON success body: text (length len, stolen:
 * freed with the response) with location as the Location header when not empty. Returns
 * NULL when out of memory (text is freed). */
struct MHD_Response *http__json_response(char *text, size_t len, const char *location);

/* The JSON text of a reply's body (not of a raw one): a new string the caller frees, or NULL
 * when out of memory. */
char *http__reply_text(const struct http_reply *rep);

/* A new response (a new reference) serving answer's value, the JSON text of a cached body
 * (status_cache_answer_size bytes), with the headers of a JSON success. It takes the caller's
 * reference to answer, released when MHD frees the response (or at once, when out of
 * memory: then NULL is returned). */
struct MHD_Response *http__cached_response(struct status_cache_answer *answer);

/* ---- server/http_checks.c: the strict checks on a libmicrohttpd request ---- */

/* Every header line (server/http_strict.h http_strict_header) and the framing
 * (http_strict_framing). Returns 0 or a negative cofi_status with err filled. */
int http__check_headers(struct MHD_Connection *conn, struct cofi_err *err);

/* Every query parameter must be one route takes: else COFI_E_BAD_REQUEST naming it. */
int http__check_query(struct MHD_Connection *conn, const struct route *route, struct cofi_err *err);

/* ---- server/refresher.c: background re-rendering of cached answers ---- */

/* Query arguments a background re-rendering keeps (more: the poll re-renders itself). */
#define REFRESH_QUERY_MAX 4

/* One thread that re-renders the cached answers (of cache, with app's handlers) that aged out
 * while polls are served the previous answer. */
struct refresher;

/* Starts it. Returns 0 with *out set, or -1 (no thread) with *out NULL. */
int refresher_start(struct refresher **out, const struct cofi_app *app, struct status_cache *cache);

/* Hands the re-rendering of key (a poll of url on conn, whose query it copies, was just served
 * the previous answer) to the thread; when it can't take it, the entry goes, and the next poll
 * renders its own answer. Thread-safe. */
void refresher_enqueue(struct refresher *r, struct MHD_Connection *conn, const char *url,
                       const char *key, size_t key_len, const struct status_cache_ticket *ticket);

/* Stops the thread (queued jobs are dropped) and frees it. Call once no request can be in
 * progress any more. Accepts NULL. */
void refresher_stop(struct refresher *r);

/* ---- server/audit.c: the access log and the audit trail ---- */

/* What the access log says of one finished request. */
struct http_access {
    const char *method;     /* as sent */
    const char *route;      /* the route's pattern, or NULL when none matched */
    int status;             /* 0: no answer was sent */
    int64_t duration_us;    /* from its headers to its completion */
    size_t bytes;           /* the length of the body answered */
    const char *who;        /* the token's environment variable, "anonymous", or "" */
    bool unauthenticated;   /* refused for want of a valid token */
    const char *request_id; /* X-Request-Id */
    bool completed;         /* the answer was sent whole */
};

/* Logs the access line of a finished request at info level (never the token, never the raw
 * path: the route pattern). Can't fail. */
void http__access_log(struct MHD_Connection *conn, const struct http_access *a);

/* Logs the audit line of a finished request when it was a write (line "METHOD /path"; GET and
 * HEAD are not logged): who (the token's environment variable, "anonymous" with the API open,
 * "unauthenticated" when unauthenticated or who is empty), what (line, status, created: the
 * resource it made, or "") and from where (conn's client address). Can't fail. */
void http__audit(struct MHD_Connection *conn, const char *line, const char *who,
                 bool unauthenticated, int status, const char *created, bool completed);

#endif
