/* What the files of cofid's HTTP server share (http*.c, refresher.c, audit.c); not an API. */
#ifndef COFI_HTTP_INTERNAL_H
#define COFI_HTTP_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/error.h"
#include "handlers/handlers.h"
#include "server/request_id.h"
#include "server/router.h"
#include "server/status_cache.h"

/* ---- server/http.c: the server ---- */

struct auth_keys;
struct conn_guard;
struct conn_guard_entry;
struct handler_pool;
struct http_metrics;
struct refresher;

/* The server (server/http.h): made by http_start, read by every request. */
struct http_server {
    struct MHD_Daemon *daemon;
    struct cofi_app *app;
    MHD_socket listen_fd;
    int port;
    atomic_int active;             /* requests between their headers and their completion */
    struct status_cache *cache;    /* owned; NULL when status_cache_ms is 0 */
    struct refresher *refresh;     /* started with the cache; NULL without */
    struct conn_guard *guard;      /* owned: the deadline of every request */
    struct auth_keys *keys;        /* owned: the tokens, replaced on SIGHUP */
    struct handler_pool *handlers; /* owned: where handlers run */
    struct http_metrics *metrics;  /* owned: requests by route and status */
    char *tls_cert, *tls_key;      /* owned: the PEM texts of tls.cert_file and tls.key_file */
    atomic_bool draining;          /* shutting down: writes and /readyz answer 503 */
};

/* One request (server/http_request.c), from its headers to its completion (MHD's per-request
 * context). */
struct http_request {
    struct route_match match;
    enum route_result result;
    struct buf body;
    struct cofi_err refusal; /* why the request is refused, when `refused` */
    bool refused;            /* refused from its headers alone */
    bool answered;           /* an answer was queued before the body was read */
    bool too_large;          /* the body passed the limit: drop the rest and answer 413 */
    bool malformed;          /* refused by the strict checks: answered at once, then closed */
    bool started;            /* its headers have been seen */
    /* Handled on a handler thread (server/handler_pool.h) while the connection is suspended:
     * the answer waits in ready_* until an I/O thread queues it. */
    struct MHD_Connection *conn;
    struct http_server *srv;
    const char *url, *method; /* MHD's, valid until the request completes */
    bool deferred;
    struct MHD_Response *ready_resp; /* owned */
    int ready_status;
    char key[STATUS_CACHE_KEY_MAX]; /* the status cache key of a cached GET, key_len bytes */
    size_t key_len;
    struct status_cache_ticket ticket;
    size_t dropped; /* body bytes of a refused request read and dropped */
    int64_t start_us;
    struct conn_guard_entry *guarded; /* the connection's deadline (borrowed; may be NULL) */
    char created[64];             /* the Location a write answered (the resource it made), or "" */
    char who[64];                 /* the caller: its token's environment variable, or "anonymous" */
    int status;                   /* the status answered, for the access log */
    size_t bytes;                 /* the length of the body answered, for the access log */
    char line[96];                /* "METHOD /path" (cut), for the audit line */
    char rid[REQUEST_ID_MAX + 1]; /* X-Request-Id: the client's when valid, else a new one */
};

/* ---- server/http_answer.c: answering one request ---- */

/* Answers resp (stolen: MHD holds its own reference until the answer is sent; never a
 * response shared with other requests: the request's X-Request-Id is added to it) with a body
 * of bytes bytes: queued at once, or, for a request handled on a handler thread, kept until an
 * I/O thread queues it. Returns MHD_NO when resp is NULL. */
enum MHD_Result http__queue(struct http_request *rq, int status, struct MHD_Response *resp,
                            size_t bytes);

/* Answers with the problem for err; ext (stolen) adds members; allow (may be NULL) adds an
 * Allow header; close asks for the connection to be closed. */
enum MHD_Result http__answer_problem_ex(struct http_request *rq, const struct cofi_err *err,
                                        json_t *ext, const char *allow, bool close);

/* http__answer_problem_ex without closing the connection. */
enum MHD_Result http__answer_problem(struct http_request *rq, const struct cofi_err *err,
                                     json_t *ext, const char *allow);

/* Answers a handler's reply (its owned parts are taken). */
enum MHD_Result http__answer_reply(struct http_request *rq, struct http_reply *rep);

/* Answers a successful reply of a cached route and gives the ticket back: a 200 is stored in
 * cache under key, anything else is not. */
enum MHD_Result http__answer_and_store(struct status_cache *cache, struct http_request *rq,
                                       const char *key, size_t key_len,
                                       const struct status_cache_ticket *ticket,
                                       struct http_reply *rep);

/* ---- server/http_request.c: one request's life, as MHD's callbacks (cls is the server) ---- */

/* MHD_OPTION_URI_LOG_CALLBACK: the request line has arrived; checks the target and returns the
 * request's context (NULL when out of memory). */
void *http__on_uri(void *cls, const char *uri, struct MHD_Connection *conn);

/* MHD_AccessHandlerCallback: the headers, each piece of the body, and its end. */
enum MHD_Result http__on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls);

/* MHD_OPTION_NOTIFY_COMPLETED: logs the request and frees its context. */
void http__on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe);

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

/* ---- server/http_stream.c: streamed answers ---- */

/* A finished response (a new reference) that sends src's pieces as they are made (chunked),
 * with content_type (static; NULL for none), for a request on conn. src is stolen, also on
 * failure (then it is freed and zeroed). The first piece is made at once, on the calling
 * thread; each next one on a thread of pool with conn suspended meanwhile, or on the I/O thread
 * when pool is NULL or refuses the job. A failing piece cuts the answer short. Returns NULL
 * when out of memory. */
struct MHD_Response *http__stream_response(struct MHD_Connection *conn, struct handler_pool *pool,
                                           struct http_stream *src, const char *content_type);

/* Adds the headers of the dashboard page: what it may load (only this server) and that no
 * other site may frame it. Can't fail. */
void http__page_headers(struct MHD_Response *resp);

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
