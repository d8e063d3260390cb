/* The HTTP server of cofid: set-up, limits, and each request from headers to answer. */
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "handlers/handlers.h"
#include "server/auth.h"
#include "server/conn_guard.h"
#include "server/handler_pool.h"
#include "server/http_internal.h"
#include "server/http_metrics.h"
#include "server/http_strict.h"
#include "server/problem.h"
#include "server/request_id.h"
#include "server/router.h"
#include "server/status_cache.h"

/* HTTP_CONNECTION_MEMORY is MHD's memory per connection, for the request line, the headers
 * (up to about 14 KiB pass) and the body's read buffer. MHD zeroes all of it after every
 * request: at 64 KiB that was a fifth of the CPU of a cached GET (about 10 of 46 us). The
 * connection limits and timeouts come from the configuration's "http" object. */
#define HTTP_CONNECTION_MEMORY (16u * 1024u)
#define HTTP_BACKLOG           4096

/* After a request body at least this large, free heap pages go back to the system. */
#define TRIM_AFTER_BODY_BYTES ((size_t)1 << 20)

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

/* One request, from its headers to its completion (MHD's per-request context). */
struct request {
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

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* MHD's messages kept per second at most: one line per refused connection would let a
 * flood of connections flood the log too. */
#define MHD_LOG_PER_SECOND 20

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    static _Atomic int64_t window_s;
    static atomic_int in_window;
    static atomic_int suppressed;
    int64_t now_s = clock_mono_ms() / 1000;
    int64_t w = atomic_load(&window_s);
    if (w != now_s && atomic_compare_exchange_strong(&window_s, &w, now_s)) {
        atomic_store(&in_window, 0);
        int lost = atomic_exchange(&suppressed, 0);
        if (lost > 0) {
            log_warn("http: %d more message(s) of the HTTP library were not logged", lost);
        }
    }
    if (atomic_fetch_add(&in_window, 1) >= MHD_LOG_PER_SECOND) {
        atomic_fetch_add(&suppressed, 1);
        return;
    }
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
        line[--n] = '\0';
    }
    log_warn("http: %s", line);
}

/* Answers resp (stolen: the caller's reference is dropped, MHD holds its own until the answer
 * is sent; never a response shared with other requests: the request's X-Request-Id is added
 * to it) with a body of bytes bytes: queued at once, or, for a request handled on a handler
 * thread, kept until an I/O thread queues it. Returns MHD_NO when resp is NULL. */
static enum MHD_Result queue(struct request *rq, int status, struct MHD_Response *resp,
                             size_t bytes)
{
    if (resp == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, REQUEST_ID_HEADER, rq->rid);
    rq->bytes = bytes;
    if (rq->deferred) {
        rq->ready_resp = resp;
        rq->ready_status = status;
        return MHD_YES;
    }
    enum MHD_Result ret = MHD_queue_response(rq->conn, (unsigned int)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Answers with the problem for err; ext (stolen) adds members; allow adds an Allow header. */
static enum MHD_Result answer_problem_ex(struct request *rq, const struct cofi_err *err,
                                         json_t *ext, const char *allow, bool close)
{
    int status = problem_http_status(err->code);
    json_t *p = problem_new(err, ext);
    char *text = p != NULL ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    struct MHD_Response *resp;
    size_t bytes = text != NULL ? strlen(text) : 0;
    if (text != NULL) {
        resp = MHD_create_response_from_buffer(bytes, text, MHD_RESPMEM_MUST_FREE);
        if (resp == NULL) {
            free(text);
        }
    } else {
        static const char oom[] = "{\"type\":\"https://cofi.dev/problems/internal\","
                                  "\"title\":\"Internal Server Error\",\"status\":500}";
        status = 500;
        bytes = sizeof oom - 1;
        resp = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
    }
    if (resp == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, PROBLEM_CONTENT_TYPE);
    if (status == 401) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    }
    if (allow != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    }
    if (status == 503) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, PROBLEM_RETRY_AFTER_S);
    }
    if (close) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    http__final_headers(resp);
    return queue(rq, status, resp, bytes);
}

static enum MHD_Result answer_problem(struct request *rq, const struct cofi_err *err, json_t *ext,
                                      const char *allow)
{
    return answer_problem_ex(rq, err, ext, allow, /* close= */ false);
}

/* Answers a JSON success body: text (length len, stolen) with location as the Location
 * header when not empty. */
static enum MHD_Result answer_json(struct request *rq, int status, char *text, size_t len,
                                   const char *location)
{
    return queue(rq, status, http__json_response(text, len, location), len);
}

static enum MHD_Result answer_out_of_memory(struct request *rq)
{
    struct cofi_err err;
    cofi_err_set(&err, COFI_E_NOMEM, "out of memory while encoding a reply");
    return answer_problem(rq, &err, NULL, NULL);
}

static enum MHD_Result answer_reply(struct request *rq, struct http_reply *rep)
{
    int status = rep->status != 0 ? rep->status : 200;
    if (rep->raw != NULL || rep->text != NULL) {
        /* A body served as it is: static (raw), or the reply's own text, which MHD frees. */
        bool own = rep->raw == NULL;
        size_t len = own ? rep->text_len : rep->raw_len;
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(len, own ? rep->text : (void *)rep->raw,
                                            own ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        if (resp == NULL) {
            return MHD_NO;
        }
        if (own) {
            rep->text = NULL;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                rep->content_type != NULL ? rep->content_type : HTTP_JSON_TYPE);
        http__final_headers(resp);
        return queue(rq, status, resp, len);
    }
    if (status == 204) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (resp == NULL) {
            return MHD_NO;
        }
        http__final_headers(resp);
        return queue(rq, status, resp, 0);
    }
    char *text = http__reply_text(rep);
    if (text == NULL) {
        return answer_out_of_memory(rq);
    }
    return answer_json(rq, status, text, strlen(text), rep->location);
}

/* Answers a successful reply of a cached route and gives the ticket back: a 200 is stored
 * in the cache, anything else is not. What is stored is the JSON text of the body, which
 * every hit serves in a response of its own (http__cached_response: its own X-Request-Id,
 * the body shared, not copied). Its size in the cache is the body's. */
static enum MHD_Result answer_and_store(struct status_cache *cache, struct request *rq,
                                        const char *key, size_t key_len,
                                        const struct status_cache_ticket *ticket,
                                        struct http_reply *rep)
{
    bool storable = (rep->status == 0 || rep->status == 200) && rep->raw == NULL &&
                    rep->text == NULL && rep->location[0] == '\0';
    char *text = storable ? http__reply_text(rep) : NULL;
    if (text == NULL) {
        status_cache_drop(cache, key, key_len, ticket);
        return answer_reply(rq, rep);
    }
    size_t len = strlen(text);
    struct status_cache_answer *answer = status_cache_answer_new(text, len, free);
    if (answer == NULL) {
        status_cache_drop(cache, key, key_len, ticket);
        return answer_json(rq, 200, text, len, NULL);
    }
    status_cache_put(cache, key, key_len, ticket, answer);
    /* The response takes our reference to the answer. */
    return queue(rq, 200, http__cached_response(answer), len);
}

static const char *query_value(const struct http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->query_ctx, MHD_GET_ARGUMENT_KIND, name);
}

static const char *header(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

struct key_builder {
    char *out;
    size_t cap;
    size_t len;
    bool full; /* a part did not fit: the request is not cached */
};

static enum MHD_Result add_query_part(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    struct key_builder *kb = cls;
    if (status_cache_key_part(kb->out, kb->cap, &kb->len, key) != 0 ||
        status_cache_key_part(kb->out, kb->cap, &kb->len, value) != 0) {
        kb->full = true;
        return MHD_NO;
    }
    return MHD_YES;
}

/* The status cache key of a GET: its path, then every query argument (name and value, in
 * the order sent), each part with its length first, so that requests the handler could
 * answer differently never share a key. Returns the key's length, or 0 when it is longer
 * than cap (such a request is not cached); *nargs is the number of query arguments. */
static size_t cache_key(struct MHD_Connection *conn, const char *path, char *out, size_t cap,
                        int *nargs)
{
    struct key_builder kb = {out, cap, 0, false};
    *nargs = 0;
    if (status_cache_key_part(out, cap, &kb.len, path) != 0) {
        return 0;
    }
    *nargs = MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_query_part, &kb);
    return kb.full ? 0 : kb.len;
}

/* The Allow header of a refusal: only for 405. */
static const char *refusal_allow(const struct request *rq)
{
    return rq->refusal.code == COFI_E_METHOD ? rq->match.allow : NULL;
}

/* How many body bytes a refused request may send before we hang up on it. A refusal is
 * answered after its body is drained: a client that is still sending when the connection
 * closes gets a reset instead of the answer. */
static size_t drain_limit(const struct cofi_config *cfg)
{
    size_t floor = 1024u * 1024u;
    return cfg->max_body_bytes > floor ? 2 * cfg->max_body_bytes : 2 * floor;
}

/* The length the request announces: 0 with no body, SIZE_MAX when unknown (chunked) or
 * past size_t. */
static size_t announced_length(struct MHD_Connection *conn)
{
    const char *cl = header(conn, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL) {
        errno = 0;
        unsigned long long n = strtoull(cl, NULL, 10);
        return errno == ERANGE || n > SIZE_MAX ? SIZE_MAX : (size_t)n;
    }
    return header(conn, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL ? SIZE_MAX : 0;
}

/* True when the client waits for "100 Continue" before it sends its body. */
static bool expects_continue(struct MHD_Connection *conn)
{
    const char *e = header(conn, MHD_HTTP_HEADER_EXPECT);
    return e != NULL && strcasecmp(e, "100-continue") == 0;
}

/* The first call, with the headers: route, authenticate and check the announced length, so
 * that a request that will be refused never has its body stored. The refusal is answered:
 * - at once when the client waits for 100 Continue (it then sends no body) or announces
 *   more than drain_limit (MHD closes the connection);
 * - otherwise after the body was read and dropped, which keeps the connection usable. */
static enum MHD_Result on_headers(struct http_server *srv, struct MHD_Connection *conn,
                                  struct request *rq, const char *url, const char *method)
{
    const struct cofi_config *cfg = srv->app->cfg;
    struct cofi_err *err = &rq->refusal;

    /* A malformed request is answered at once and its connection closed: what follows its
     * headers can't be trusted to be its body. */
    if (rq->malformed || http__check_headers(conn, err) != 0) {
        rq->malformed = true;
        rq->refused = true;
        rq->answered = true;
        rq->status = problem_http_status(err->code);
        return answer_problem_ex(rq, err, NULL, NULL, /* close= */ true);
    }
    rq->result = router_match(method, url, &rq->match);
    bool public_route = rq->result != ROUTE_NOT_FOUND && rq->match.public_path;
    bool needs_write = rq->result == ROUTE_FOUND && strcmp(rq->match.route->method, "GET") != 0;
    int rc = auth_keys_check(srv->keys, header(conn, MHD_HTTP_HEADER_AUTHORIZATION), public_route,
                             needs_write, rq->who, sizeof rq->who, err);
    if (rc == 0 && rq->result == ROUTE_FOUND && atomic_load(&srv->draining) &&
        (strcmp(rq->match.route->method, "GET") != 0 ||
         rq->match.route->handler == handle_readyz)) {
        rc = cofi_err_set(err, COFI_E_BUSY,
                          "cofid is shutting down: it takes no new work; try again later, or "
                          "another instance");
    }
    if (rc == 0 && rq->result == ROUTE_FOUND) {
        rc = http__check_query(conn, rq->match.route, err);
    }
    if (rc == 0 && rq->result == ROUTE_NOT_FOUND) {
        rc = cofi_err_set(err, COFI_E_NOT_FOUND, "no such resource");
    } else if (rc == 0 && rq->result == ROUTE_NO_METHOD) {
        rc = cofi_err_set(err, COFI_E_METHOD, "%s is not allowed here; allowed: %s", method,
                          rq->match.allow);
    }
    size_t announced = announced_length(conn);
    bool chunked = announced == SIZE_MAX && header(conn, MHD_HTTP_HEADER_CONTENT_LENGTH) == NULL;
    if (rc == 0 && !chunked && announced > cfg->max_body_bytes) {
        rc = cofi_err_set(err, COFI_E_TOO_LARGE, "the body is larger than %zu bytes",
                          cfg->max_body_bytes);
    }
    if (rc == 0) {
        return MHD_YES;
    }
    rq->refused = true;
    bool answer_now =
        announced != 0 && (expects_continue(conn) || (!chunked && announced > drain_limit(cfg)));
    if (!answer_now) {
        return MHD_YES;
    }
    rq->answered = true;
    rq->status = problem_http_status(err->code);
    return answer_problem(rq, err, NULL, refusal_allow(rq));
}

/* Runs the handler of rq (a route found, its whole body read) and answers: on the I/O thread
 * for the routes that never wait (runs_inline), on a handler thread otherwise. */
static enum MHD_Result render(struct request *rq)
{
    struct http_server *srv = rq->srv;
    struct MHD_Connection *conn = rq->conn;
    const char *method = rq->method;
    const char *url = rq->url;
    struct cofi_err err;
    cofi_err_clear(&err);
    struct http_req req = {
        .method = strcmp(method, "HEAD") == 0 ? "GET" : method,
        .path = url,
        .param_count = rq->match.param_count,
        .body = rq->body.len > 0 ? rq->body.data : NULL,
        .body_len = rq->body.len,
        .content_type = header(conn, MHD_HTTP_HEADER_CONTENT_TYPE),
        .idempotency_key = header(conn, "Idempotency-Key"),
        .caller = strcmp(rq->who, "anonymous") != 0 ? rq->who : NULL,
        .query = query_value,
        .query_ctx = conn,
    };
    for (size_t i = 0; i < rq->match.param_count; i++) {
        req.params[i] = rq->match.params[i];
    }
    const struct route *route = rq->match.route;
    struct http_reply rep = HTTP_REPLY_INIT;
    log_set_request_id(rq->rid);
    int rc = route->handler(srv->app, &req, &rep, &err);
    log_set_request_id(NULL);
    if (strcmp(route->method, "GET") != 0) {
        /* A write has committed (or nothing changed): no cached answer may predate it once
         * it is answered. */
        status_cache_invalidate(srv->cache);
    }
    enum MHD_Result ret;
    if (rc != 0) {
        if (rq->key_len > 0) {
            status_cache_drop(srv->cache, rq->key, rq->key_len, &rq->ticket);
        }
        if (err.code == COFI_OK) {
            cofi_err_set(&err, COFI_E_INTERNAL, "handler of %s %s failed without a reason", method,
                         url);
        }
        json_t *ext = rep.problem_ext;
        rep.problem_ext = NULL;
        rq->status = problem_http_status(err.code);
        ret = answer_problem(rq, &err, ext, NULL);
    } else {
        rq->status = rep.status != 0 ? rep.status : 200;
        snprintf(rq->created, sizeof rq->created, "%s", rep.location);
        if (rq->key_len > 0) {
            ret = answer_and_store(srv->cache, rq, rq->key, rq->key_len, &rq->ticket, &rep);
        } else {
            ret = answer_reply(rq, &rep);
        }
    }
    http_reply_free(&rep);
    return ret;
}

/* A handler thread's job: render the request, then hand the connection back to MHD, which
 * calls on_request again to queue the answer. */
static void render_deferred(void *arg)
{
    struct request *rq = arg;
    if (render(rq) != MHD_YES && rq->ready_resp == NULL) {
        log_warn("http: no answer could be made for %s", rq->line);
    }
    size_t body_bytes = rq->body.len;
    buf_free(&rq->body);
#if defined(__GLIBC__)
    /* A large body (POST /batches of many files: its text and its parsed tree, 20 MiB for
     * 200,000 files) leaves free pages in the heap that glibc keeps; give them back, so the
     * resident set during the run is what the run holds. Milliseconds, once per such body,
     * here on a handler thread rather than on an I/O thread that serves other connections. */
    if (body_bytes >= TRIM_AFTER_BODY_BYTES) {
        (void)malloc_trim(0);
    }
#else
    (void)body_bytes;
#endif
    MHD_resume_connection(rq->conn);
}

/* True for the routes answered on the I/O thread: they neither read the database nor wait. */
static bool runs_inline(const struct route *route)
{
    return route->handler == handle_healthz || route->handler == handle_openapi;
}

/* Queues the answer a handler thread made (on_request, after MHD_resume_connection). */
static enum MHD_Result queue_ready(struct request *rq)
{
    if (rq->ready_resp == NULL) {
        return MHD_NO; /* nothing could be made: MHD closes the connection */
    }
    enum MHD_Result ret =
        MHD_queue_response(rq->conn, (unsigned int)rq->ready_status, rq->ready_resp);
    MHD_destroy_response(rq->ready_resp);
    rq->ready_resp = NULL;
    return ret;
}

/* The last call, with the whole body: answer refusals and cached answers at once, hand the
 * handler to a handler thread. */
static enum MHD_Result on_complete(struct http_server *srv, struct MHD_Connection *conn,
                                   struct request *rq, const char *url, const char *method)
{
    if (rq->refused) {
        rq->status = problem_http_status(rq->refusal.code);
        return answer_problem(rq, &rq->refusal, NULL, refusal_allow(rq));
    }
    struct cofi_err err;
    cofi_err_clear(&err);
    if (rq->too_large) {
        cofi_err_set(&err, COFI_E_TOO_LARGE, "the body is larger than %zu bytes",
                     srv->app->cfg->max_body_bytes);
        rq->status = 413;
        return answer_problem(rq, &err, NULL, NULL);
    }
    rq->url = url;
    rq->method = method;
    const struct route *route = rq->match.route;
    int nargs = 0;
    if (srv->cache != NULL && route->cached) {
        rq->key_len = cache_key(conn, url, rq->key, sizeof rq->key, &nargs);
    }
    if (rq->key_len > 0) {
        struct status_cache_answer *hit;
        bool background = srv->refresh != NULL && nargs <= REFRESH_QUERY_MAX;
        bool served =
            background ? status_cache_get_stale(srv->cache, rq->key, rq->key_len, &hit, &rq->ticket)
                       : status_cache_get(srv->cache, rq->key, rq->key_len, &hit, &rq->ticket);
        if (served) {
            if (rq->ticket.refresher) {
                refresher_enqueue(srv->refresh, conn, url, rq->key, rq->key_len, &rq->ticket);
            }
            /* Our reference keeps the body alive even if another thread evicts the entry now;
             * the response of this request takes it. */
            rq->status = 200;
            size_t len = status_cache_answer_size(hit);
            return queue(rq, 200, http__cached_response(hit), len);
        }
    }
    if (runs_inline(route) || srv->handlers == NULL) {
        return render(rq);
    }
    /* Suspended before it is queued: the job may resume it at once. */
    rq->deferred = true;
    MHD_suspend_connection(conn);
    if (handler_pool_submit(srv->handlers, render_deferred, rq) != 0) {
        if (rq->key_len > 0) {
            status_cache_drop(srv->cache, rq->key, rq->key_len, &rq->ticket);
        }
        cofi_err_set(&err, COFI_E_BUSY,
                     "every request handler is busy and %d requests wait already; try again",
                     srv->app->cfg->http.handler_queue);
        rq->status = 503;
        answer_problem(rq, &err, NULL, NULL);
        MHD_resume_connection(conn);
    }
    return MHD_YES;
}

/* Writes "METHOD /path", cut to fit cap bytes, into out: the access log's request line. Copies
 * instead of snprintf: it is made for every request, and printed only at debug level. */
static void request_line(char *out, size_t cap, const char *method, const char *url)
{
    const char *parts[] = {method, " ", url};
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        for (const char *p = parts[i]; *p != '\0' && n + 1 < cap; p++) {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

/* A new request's context, or NULL when out of memory. */
static struct request *request_new(struct http_server *srv)
{
    struct request *rq = calloc(1, sizeof *rq);
    if (rq == NULL) {
        return NULL;
    }
    buf_init(&rq->body, srv->app->cfg->max_body_bytes);
    rq->start_us = clock_mono_us();
    rq->srv = srv;
    return rq;
}

/* The request line has arrived (uri as sent, before any decoding): the target is checked
 * here, where its escapes can still be seen. Returns the request's context. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)conn;
    struct http_server *srv = cls;
    struct request *rq = request_new(srv);
    if (rq == NULL) {
        return NULL;
    }
    bool too_many_args = false;
    if (http_strict_target(uri, &too_many_args, &rq->refusal) != 0) {
        rq->malformed = true;
    }
    if (too_many_args) {
        /* MHD stores every query argument in the connection's small memory pool before the
         * request reaches on_request; hundreds of them exhaust it and MHD never answers. The
         * request is refused anyway, so its query is cut here: uri lies in MHD's own writable
         * read buffer, which MHD splits into arguments only after this callback. */
        char *q = strchr((char *)(uintptr_t)uri, '?');
        if (q != NULL) {
            q[1] = '\0';
        }
    }
    return rq;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct http_server *srv = cls;
    struct request *rq = *con_cls;
    if (rq == NULL) {
        rq = request_new(srv);
        if (rq == NULL) {
            return MHD_NO;
        }
        *con_cls = rq;
    }
    rq->conn = conn;
    if (!rq->started) {
        rq->started = true;
        rq->method = method;
        request_id_take(header(conn, REQUEST_ID_HEADER), rq->rid, sizeof rq->rid);
        request_line(rq->line, sizeof rq->line, method, url);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        rq->guarded = ci != NULL ? ci->socket_context : NULL;
        *con_cls = rq;
        atomic_fetch_add(&srv->active, 1);
        enum MHD_Result ret = on_headers(srv, conn, rq, url, method);
        if (rq->answered) {
            conn_guard_request_received(rq->guarded);
        }
        return ret;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (rq->answered || rq->refused || rq->too_large) {
            /* Drop what a refused request sends, but hang up on one that goes on and on. */
            rq->dropped += n;
            return rq->dropped > drain_limit(srv->app->cfg) ? MHD_NO : MHD_YES;
        }
        int rc = buf_append(&rq->body, upload_data, n);
        if (rc == -1) {
            /* A body without Content-Length passed the limit. */
            rq->too_large = true;
            rq->dropped = rq->body.len + n;
            buf_free(&rq->body);
        } else if (rc != 0) {
            log_error("out of memory reading a request body of %zu bytes", rq->body.len + n);
            return MHD_NO;
        }
        return MHD_YES;
    }
    if (rq->answered) {
        return MHD_YES;
    }
    if (rq->deferred) {
        return queue_ready(rq);
    }
    conn_guard_request_received(rq->guarded);
    return on_complete(srv, conn, rq, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_server *srv = cls;
    struct request *rq = *con_cls;
    if (rq == NULL) {
        return;
    }
    int64_t us = clock_mono_us() - rq->start_us;
    if (rq->started) {
        bool completed = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
        bool unauthenticated = rq->refusal.code == COFI_E_UNAUTHORIZED;
        if (rq->status != 0) {
            http_metrics_count(srv->metrics, rq->match.route, rq->status);
        }
        struct http_access a = {
            .method = rq->method,
            .route = rq->match.route != NULL ? rq->match.route->pattern : NULL,
            .status = rq->status,
            .duration_us = us,
            .bytes = rq->bytes,
            .who = rq->who,
            .unauthenticated = unauthenticated,
            .request_id = rq->rid,
            .completed = completed,
        };
        http__access_log(conn, &a);
        log_set_request_id(rq->rid);
        http__audit(conn, rq->line, rq->who, unauthenticated, rq->status, rq->created, completed);
        log_set_request_id(NULL);
    }
    size_t body_bytes = rq->body.len;
    bool started = rq->started;
    if (rq->ready_resp != NULL) {
        MHD_destroy_response(rq->ready_resp);
    }
    conn_guard_request_done(srv->guard, rq->guarded);
    buf_free(&rq->body);
    free(rq);
    *con_cls = NULL;
    if (started) {
        atomic_fetch_sub(&srv->active, 1);
    }
#if defined(__GLIBC__)
    /* A large body answered on this I/O thread (a handler thread trims after its own). */
    if (body_bytes >= TRIM_AFTER_BODY_BYTES) {
        (void)malloc_trim(0);
    }
#endif
}

/* strerror is not thread-safe: the XSI strerror_r is. */
static void errno_text(int e, char *out, size_t outlen)
{
    if (strerror_r(e, out, outlen) != 0) {
        snprintf(out, outlen, "error %d", e);
    }
}

/* Creates, binds and listens on a socket for host:port. Returns the socket or -1 with err
 * filled; *family and *port tell what was bound. */
static int open_listener(const char *host, int port, int *family, int *bound_port,
                         struct cofi_err *err)
{
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai != 0) {
        cofi_err_set(err, COFI_E_INTERNAL, "can't resolve listen host %s: %s", host,
                     gai_strerror(gai));
        return -1;
    }
    /* Prefer IPv4 ("localhost" may list ::1 first). */
    struct addrinfo *ai = res;
    for (struct addrinfo *p = res; p != NULL; p = p->ai_next) {
        if (p->ai_family == AF_INET) {
            ai = p;
            break;
        }
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        char reason[128];
        errno_text(errno, reason, sizeof reason);
        cofi_err_set(err, COFI_E_INTERNAL, "socket: %s", reason);
        freeaddrinfo(res);
        return -1;
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, HTTP_BACKLOG) != 0) {
        char reason[128];
        errno_text(errno, reason, sizeof reason);
        cofi_err_set(err, COFI_E_INTERNAL, "can't listen on %s:%d: %s", host, port, reason);
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    *family = ai->ai_family;
    freeaddrinfo(res);

    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    *bound_port = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            *bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            *bound_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    return fd;
}

/* A connection opens or closes: its request deadline is tracked from its first moment. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http_server *srv = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = ci != NULL ? conn_guard_opened(srv->guard, ci->connect_fd) : NULL;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        conn_guard_closed(srv->guard, *socket_context);
        *socket_context = NULL;
    }
}

static struct MHD_Daemon *start_daemon(struct http_server *srv, unsigned int flags)
{
    const struct cofi_config *cfg = srv->app->cfg;
    /* HTTPS when tls.cert_file and tls.key_file are set (libmicrohttpd with GnuTLS). */
    struct MHD_OptionItem tls[] = {
        {MHD_OPTION_HTTPS_MEM_KEY, 0, srv->tls_key},
        {MHD_OPTION_HTTPS_MEM_CERT, 0, srv->tls_cert},
        {MHD_OPTION_END, 0, NULL},
    };
    if (srv->tls_cert != NULL) {
        flags |= MHD_USE_TLS;
    } else {
        tls[0].option = MHD_OPTION_END;
    }
    unsigned int threads = cfg->http_threads > 0 ? (unsigned)cfg->http_threads : 1u;
    unsigned int idle_s = (unsigned)((cfg->http.idle_timeout_ms + 999) / 1000);
    /* The logger comes first so that MHD's messages about the other options reach it. */
    return MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, srv->listen_fd, MHD_OPTION_THREAD_POOL_SIZE, threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->http.max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)cfg->http.max_connections_per_client,
        MHD_OPTION_CONNECTION_TIMEOUT, idle_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)HTTP_CONNECTION_MEMORY, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_ARRAY, tls,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, srv, MHD_OPTION_STRICT_FOR_CLIENT, (int)1,
        MHD_OPTION_END);
}

/* Reads a PEM file (at most 1 MiB) into a new string. Returns it, or NULL with err filled. */
static char *read_pem(const char *path, const char *key, struct cofi_err *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        char reason[128];
        errno_text(errno, reason, sizeof reason);
        cofi_err_set(err, COFI_E_INVALID, "tls.%s %s: %s", key, path, reason);
        return NULL;
    }
    size_t cap = 1u << 20;
    char *text = malloc(cap + 1);
    size_t n = text != NULL ? fread(text, 1, cap + 1, f) : 0;
    fclose(f);
    if (text == NULL || n == 0 || n > cap) {
        free(text);
        cofi_err_set(err, COFI_E_INVALID, "tls.%s %s is empty or larger than 1 MiB", key, path);
        return NULL;
    }
    text[n] = '\0';
    return text;
}

/* Frees what http_start made, the daemon excepted (stopped already, or never started). */
static void server_free(struct http_server *srv)
{
    if (srv->tls_key != NULL) {
        memset(srv->tls_key, 0, strlen(srv->tls_key));
    }
    free(srv->tls_key);
    free(srv->tls_cert);
    handler_pool_free(srv->handlers);
    if (srv->app->http_metrics_ctx == srv->metrics) {
        srv->app->http_metrics = NULL;
        srv->app->http_metrics_ctx = NULL;
    }
    http_metrics_free(srv->metrics);
    conn_guard_free(srv->guard);
    refresher_stop(srv->refresh);
    status_cache_free(srv->cache);
    auth_keys_free(srv->keys);
    free(srv);
}

int http_start(struct http_server **out, struct cofi_app *app, struct cofi_err *err)
{
    *out = NULL;
    const struct cofi_config *cfg = app->cfg;
    struct http_server *srv = calloc(1, sizeof *srv);
    if (srv == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    srv->app = app;
    atomic_init(&srv->active, 0);
    atomic_init(&srv->draining, false);
    srv->metrics = http_metrics_new();
    if (srv->metrics == NULL || auth_keys_new(&srv->keys, cfg->tokens, cfg->token_count) != 0) {
        http_metrics_free(srv->metrics);
        free(srv);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    app->http_metrics = http_metrics_render;
    app->http_metrics_ctx = srv->metrics;
    if (cfg->http.tls_cert_file != NULL) {
        srv->tls_cert = read_pem(cfg->http.tls_cert_file, "cert_file", err);
        srv->tls_key =
            srv->tls_cert != NULL ? read_pem(cfg->http.tls_key_file, "key_file", err) : NULL;
        if (srv->tls_key == NULL) {
            server_free(srv);
            return err->code;
        }
    }
    if (cfg->status_cache_ms > 0 && status_cache_new(&srv->cache, cfg->status_cache_ms) != 0) {
        server_free(srv);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    if (conn_guard_new(&srv->guard, cfg->http.request_timeout_ms) != 0) {
        server_free(srv);
        return cofi_err_set(err, COFI_E_NOMEM, "can't start the connection guard");
    }
    if (handler_pool_new(&srv->handlers, cfg->http.handler_threads, cfg->http.handler_queue) != 0) {
        log_warn("http: no handler threads: handlers run on the I/O threads");
    }
    if (srv->cache != NULL && refresher_start(&srv->refresh, app, srv->cache) != 0) {
        log_warn("http: no refresher thread: polls re-render cached answers themselves");
    }
    int family = AF_INET;
    int fd = open_listener(cfg->listen_host, cfg->listen_port, &family, &srv->port, err);
    if (fd < 0) {
        server_free(srv);
        return err->code;
    }
    srv->listen_fd = fd;
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG |
                         MHD_ALLOW_SUSPEND_RESUME;
    if (family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    srv->daemon = start_daemon(srv, flags | MHD_USE_EPOLL);
    if (srv->daemon == NULL) {
        log_warn("http: epoll is not available, using poll");
        srv->daemon = start_daemon(srv, flags | MHD_USE_POLL);
    }
    if (srv->daemon == NULL) {
        close(fd);
        server_free(srv);
        return cofi_err_set(err, COFI_E_INTERNAL, "can't start the HTTP server on %s:%d",
                            cfg->listen_host, cfg->listen_port);
    }
    log_info("listening on %s%s%s:%d%s", family == AF_INET6 ? "[" : "", cfg->listen_host,
             family == AF_INET6 ? "]" : "", srv->port, srv->tls_cert != NULL ? " (HTTPS)" : "");
    *out = srv;
    return 0;
}

int http_port(const struct http_server *srv)
{
    return srv->port;
}

void http_stop(struct http_server *srv)
{
    if (srv == NULL) {
        return;
    }
    MHD_socket fd = MHD_quiesce_daemon(srv->daemon);
    int64_t deadline = clock_mono_ms() + srv->app->cfg->shutdown_grace_ms;
    while (atomic_load(&srv->active) > 0 && clock_mono_ms() < deadline) {
        clock_sleep_ms(10);
    }
    int left = atomic_load(&srv->active);
    if (left > 0) {
        log_warn("http: stopping with %d requests still in progress", left);
    }
    /* Every handler job runs to its end and resumes its connection: MHD stops only with no
     * connection suspended. */
    handler_pool_stop(srv->handlers);
    MHD_stop_daemon(srv->daemon);
    if (fd != MHD_INVALID_SOCKET) {
        close(fd);
    }
    server_free(srv);
}

void http_begin_drain(struct http_server *srv)
{
    if (srv != NULL) {
        atomic_store(&srv->draining, true);
    }
}

int http_replace_tokens(struct http_server *srv, const struct cofi_token_cfg *tokens, size_t n)
{
    return auth_keys_replace(srv->keys, tokens, n);
}
