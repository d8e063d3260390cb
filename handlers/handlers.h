/* The REST handlers, one file per resource, and the request/reply types they share with
 * server/http_request.c. A handler knows nothing of libmicrohttpd: it reads a struct http_req,
 * fills a struct http_reply on success, or returns a negative cofi_status with err filled
 * (server/problem.c turns that into the HTTP error). */
#ifndef COFI_HANDLERS_H
#define COFI_HANDLERS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/error.h"
#include "server/app.h"

#define HTTP_MAX_PARAMS 2

/* Content type of every JSON success body. */
#define HTTP_JSON_TYPE "application/json; charset=utf-8"
/* Content type of the dashboard page. */
#define HTTP_HTML_TYPE "text/html; charset=utf-8"

/* One request, as the HTTP layer hands it over. Every pointer is borrowed and lives until
 * the handler returns. */
struct http_req {
    const char *method;                  /* "GET", "POST" (HEAD arrives as "GET") */
    const char *path;                    /* the decoded path, without the query */
    const char *params[HTTP_MAX_PARAMS]; /* the path's {…} segments, in order */
    size_t param_count;                  /* how many of params are set */
    const char *body;                    /* NUL-terminated body, or NULL when empty */
    size_t body_len;                     /* 0 when there is no body */
    const char *content_type;            /* the Content-Type header, or NULL */
    const char *idempotency_key;         /* the Idempotency-Key header, or NULL */
    const char *accept;                  /* the Accept header, or NULL */
    const char *caller; /* the environment variable of the token used; NULL when the API is
                           open (names the caller in logs, scopes idempotency keys) */
    /* Returns the value of query parameter `name` (borrowed), or NULL when absent. */
    const char *(*query)(const struct http_req *req, const char *name);
    void *query_ctx; /* for `query` only */
};

/* A body made piece by piece while it is sent (GET /batches/{id}/results), so that it is never
 * held whole. `next` appends the next piece to out (an empty buffer) and returns 1 when more
 * follows (then it appended at least one byte), 0 after the last piece, or a negative
 * cofi_status with err filled (the answer is cut short: the client sees an unfinished body).
 * It runs on a handler thread (it may wait for the database), never twice at once, never
 * after it returned 0 or an error. `free_ctx` releases ctx, once, whether `next` ran or not. */
struct http_stream {
    int (*next)(void *ctx, struct buf *out, struct cofi_err *err);
    void (*free_ctx)(void *ctx);
    void *ctx;
};

/* What a successful handler answers. Start from HTTP_REPLY_INIT; free with http_reply_free. */
struct http_reply {
    int status;               /* 200, 201, 202, or 204 (then the body is empty) */
    json_t *body;             /* owned: the reply holds this reference (NULL with `raw`) */
    const char *raw;          /* static body served as is instead of `body` (never freed) */
    size_t raw_len;           /* length of raw */
    char location[64];        /* Location header when not empty */
    json_t *problem_ext;      /* on error: owned object of extension members for the problem */
    char *text;               /* owned body served as is instead of `body` (freed with the reply) */
    size_t text_len;          /* length of text */
    const char *content_type; /* static Content-Type of raw, text or stream; NULL: JSON */
    struct http_stream stream; /* owned when stream.next is set: the body instead of `body` */
};

#define HTTP_REPLY_INIT                                                                            \
    {                                                                                              \
        0, NULL, NULL, 0, {0}, NULL, NULL, 0, NULL,                                                \
        {                                                                                          \
            NULL, NULL, NULL                                                                       \
        }                                                                                          \
    }

/* Releases what the reply owns and resets it to HTTP_REPLY_INIT. Accepts NULL. */
void http_reply_free(struct http_reply *rep);

/* Every handler: returns 0 with rep filled (status and body), or a negative cofi_status with
 * err filled (and maybe rep->problem_ext); a handler that fails has changed nothing in the
 * database (it validates everything before writing, and writes in one transaction).
 * Handlers are thread-safe: they share only app, whose pool and engine are thread-safe. */
typedef int (*handler_fn)(const struct cofi_app *app, const struct http_req *req,
                          struct http_reply *rep, struct cofi_err *err);

/* handlers/batches.c */
int handle_batches_create(const struct cofi_app *app, const struct http_req *req,
                          struct http_reply *rep, struct cofi_err *err);
int handle_batches_list(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err);
int handle_batch_get(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                     struct cofi_err *err);
int handle_batch_run(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                     struct cofi_err *err);
int handle_batch_cancel(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err);

/* handlers/batch_ops.c: PATCH and DELETE /batches/{id}, POST /batches/{id}/pause|resume|retry */
int handle_batch_patch(const struct cofi_app *app, const struct http_req *req,
                       struct http_reply *rep, struct cofi_err *err);
int handle_batch_delete(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err);
int handle_batch_pause(const struct cofi_app *app, const struct http_req *req,
                       struct http_reply *rep, struct cofi_err *err);
int handle_batch_resume(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err);
int handle_batch_retry(const struct cofi_app *app, const struct http_req *req,
                       struct http_reply *rep, struct cofi_err *err);

/* handlers/calls.c */
int handle_calls_list(const struct cofi_app *app, const struct http_req *req,
                      struct http_reply *rep, struct cofi_err *err);
int handle_call_get(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                    struct cofi_err *err);

/* handlers/stages.c */
int handle_stage_status(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err);

/* handlers/health.c */
int handle_healthz(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                   struct cofi_err *err);
int handle_readyz(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                  struct cofi_err *err);

/* handlers/metrics_prom.c: GET /metrics, the Prometheus text format */
int handle_metrics(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                   struct cofi_err *err);

/* handlers/results.c: GET /batches/{id}/results, streamed as NDJSON or CSV */
int handle_batch_results(const struct cofi_app *app, const struct http_req *req,
                         struct http_reply *rep, struct cofi_err *err);

/* handlers/dashboard.c: GET / and /ui, the live dashboard (a static page) */
int handle_dashboard(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                     struct cofi_err *err);

/* handlers/openapi.c */
int handle_openapi(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                   struct cofi_err *err);

/* ---- handlers/request.c: parsing shared by the handlers; pure, thread-safe ---- */

#define PAGE_LIMIT_DEFAULT 50
#define PAGE_LIMIT_MAX     1000

/* Limits per field of POST /batches (openapi/openapi.json, CreateBatch). */
#define BATCH_NAME_MAX_CHARS 256
#define BATCH_FILES_MAX      1000000

/* Bounds a list page in bytes as well as rows: page is {"<key>": [items...], "next_cursor"}.
 * When the items, as compact JSON, pass max_bytes, the page stops after the last one that
 * fits (the first always stays) and next_cursor becomes that item's integer member
 * cursor_field plus step, as text (batches: "id", 0; calls: "seq", 1). Out of memory leaves
 * the page whole. Can't fail. */
void req_page_cap_bytes(json_t *page, const char *key, const char *cursor_field, int64_t step,
                        size_t max_bytes);

/* Parses a resource id: decimal digits only, 1 ≤ id ≤ 2^63-1. Returns 0 with *out set, or
 * -1 (NULL, empty, sign, space, other characters, 0, overflow) leaving *out unchanged. */
int req_parse_id(const char *s, int64_t *out);

/* Parses ?limit=: NULL gives PAGE_LIMIT_DEFAULT; otherwise an integer 1..PAGE_LIMIT_MAX.
 * Returns 0, or COFI_E_BAD_REQUEST with err filled and *out unchanged. */
int req_parse_limit(const char *s, int *out, struct cofi_err *err);

/* Parses ?cursor= (the decimal id of the last row of the previous page): NULL gives 0 (from
 * the start). Returns 0, or COFI_E_BAD_REQUEST with err filled and *out unchanged. */
int req_parse_cursor(const char *s, int64_t *out, struct cofi_err *err);

/* Reads the `limit` and `cursor` query parameters of a list request (req_parse_limit,
 * req_parse_cursor). Returns 0 or COFI_E_BAD_REQUEST; on error the outputs are unchanged. */
int req_parse_page(const struct http_req *req, int *limit, int64_t *cursor, struct cofi_err *err);

/* True when content_type is application/json, case-insensitive, optionally followed by
 * parameters (";charset=utf-8"). False for NULL. */
bool req_is_json_type(const char *content_type);

/* Parses the request body as JSON. An empty body gives *out NULL and 0 when !required, and
 * COFI_E_BAD_REQUEST when required. A body whose Content-Type is not JSON →
 * COFI_E_MEDIA_TYPE; malformed JSON or duplicate keys → COFI_E_BAD_REQUEST. On success *out
 * is a new reference (or NULL for no body); on error *out is NULL. */
int req_json_body(const struct http_req *req, bool required, json_t **out, struct cofi_err *err);

/* Checks a "mode" value: not a string → COFI_E_BAD_REQUEST; a string other than
 * "pipelined"/"staged" → COFI_E_INVALID. Returns 0 with *mode the static name. */
int req_check_mode(const json_t *v, const char **mode, struct cofi_err *err);

/* Checks a "priority" value: not an integer → COFI_E_BAD_REQUEST; outside 1..INT32_MAX →
 * COFI_E_INVALID. Returns 0 with *priority set (unchanged on error). */
int req_check_priority(const json_t *v, int *priority, struct cofi_err *err);

/* ---- handlers/callback_url.c ---- */

/* The longest callback_url, in bytes. */
#define CALLBACK_URL_MAX 2048

/* Checks a "callback_url" value (openapi/openapi.json, CreateBatch): null gives *url NULL;
 * not a string → COFI_E_BAD_REQUEST; a string that is not an absolute http(s) URL
 * (http[s]://host[:port][/path][?query]: a host of letters, digits, '.', '-', '_' or an
 * [IPv6] literal, a port 1..65535, no user info, no fragment, only printable ASCII, at most
 * CALLBACK_URL_MAX bytes) → COFI_E_INVALID. Returns 0 with *url borrowed from v. Pure. */
int req_check_callback_url(const json_t *v, const char **url, struct cofi_err *err);

/* Reads the {id} path segment of a batch route: a segment that can't name a batch names an
 * unknown one (COFI_E_NOT_FOUND). Returns 0 with *id set. */
int req_batch_id(const struct http_req *req, int64_t *id, struct cofi_err *err);

/* The optional body of POST /batches/{id}/run and /cancel: empty, or a JSON object whose
 * only allowed key is "mode" (see req_check_mode). Returns 0 with *mode the static mode name
 * or NULL when none was given; or 400/415/422 with err filled. */
int req_parse_action_body(const struct http_req *req, const char **mode, struct cofi_err *err);

/* Checks an Idempotency-Key header value: 1 to 255 characters, visible ASCII or spaces,
 * neither starting nor ending with a space (so "k" and "k " never name two batches).
 * Returns 0 or COFI_E_BAD_REQUEST with err filled. */
int req_check_idempotency_key(const char *key, struct cofi_err *err);

/* Borrows a database connection from app->db for one request. Returns it, or NULL with err
 * COFI_E_UNAVAILABLE. The caller gives it back with db_release. Thread-safe. */
PGconn *req_db_acquire(const struct cofi_app *app, struct cofi_err *err);

/* True when a JSON value holds a NUL character in any string or object key, at any depth
 * (PostgreSQL can store neither). */
bool req_json_has_nul(const json_t *v);

/* ---- handlers/batches.c, exposed for tests ---- */

/* Checks one submitted file against input_root `root` (canonical, no trailing slash unless
 * it is "/"): a relative path with no NUL, that exists, stays inside root once every
 * symbolic link is resolved, is a regular file and is readable (a file with no read bit at
 * all counts as unreadable even for root). root_fd is an O_PATH descriptor of root for the
 * fast check (one openat2 beneath it), or -1 to use realpath alone. Returns 0, or -1 with
 * *reason a static phrase ("does not exist", "leaves input_root", "is not a regular file",
 * "is not readable", ...). Thread-safe (reads only the filesystem). */
int batches_check_file(const char *root, int root_fd, const char *file, size_t file_len,
                       const char **reason);

/* ---- handlers/results.c, exposed for tests ---- */

enum results_format {
    RESULTS_NDJSON = 0, /* application/x-ndjson: one JSON object per call */
    RESULTS_CSV,        /* text/csv: a header line, then one row per call */
    RESULTS_NONE,       /* the Accept header takes neither: 406 */
};

/* The format an Accept header asks for (RFC 9110 section 12.5.1): the acceptable type with the
 * highest weight, a range's weight coming from the most specific range that matches it;
 * NDJSON on a tie and when accept is NULL or empty. A malformed range is skipped. Can't fail. */
enum results_format results_pick_format(const char *accept);

/* Appends s to out as one CSV field (RFC 4180): as is, or in double quotes (inner quotes
 * doubled) when it holds a comma, a quote, CR or LF. NULL appends nothing. Same returns as
 * buf_append. */
int results_csv_field(struct buf *out, const char *s);

/* ---- handlers/stages.c, exposed for tests ---- */

/* Splits the calls at a stage for GET /stages/{name}/status: of `running` claimed calls,
 * those with a request in flight (`requests`, as the instances count them, at most
 * `running`) are in_flight; the others wait for a free slot and count as queued with the
 * `pending` ones. Can't fail. */
void stages_split_running(int64_t pending, int64_t running, int64_t requests, int64_t *in_flight,
                          int64_t *queued);

#endif
