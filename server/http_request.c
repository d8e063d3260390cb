/* One request of cofid's HTTP server, from its headers to its answer: receiving, dispatch to
 * the handler pool, answering, and the access log at its completion. */
#include <errno.h>
#include <inttypes.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "handlers/handlers.h"
#include "server/auth.h"
#include "server/conn_guard.h"
#include "server/handler_pool.h"
#include "server/http.h"
#include "server/http_internal.h"
#include "server/http_metrics.h"
#include "server/http_strict.h"
#include "server/problem.h"
#include "server/request_id.h"
#include "server/router.h"
#include "server/status_cache.h"

/* After a request body at least this large, free heap pages go back to the system. */
#define TRIM_AFTER_BODY_BYTES ((size_t)1 << 20)

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
static const char *refusal_allow(const struct http_request *rq)
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
                                  struct http_request *rq, const char *url, const char *method)
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
        return http__answer_problem_ex(rq, err, NULL, NULL, /* close= */ true);
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
    return http__answer_problem(rq, err, NULL, refusal_allow(rq));
}

/* Runs the handler of rq (a route found, its whole body read) and answers: on the I/O thread
 * for the routes that never wait (runs_inline), on a handler thread otherwise. */
static enum MHD_Result render(struct http_request *rq)
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
        .accept = header(conn, MHD_HTTP_HEADER_ACCEPT),
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
        ret = http__answer_problem(rq, &err, ext, NULL);
    } else {
        rq->status = rep.status != 0 ? rep.status : 200;
        snprintf(rq->created, sizeof rq->created, "%s", rep.location);
        if (rq->key_len > 0) {
            ret = http__answer_and_store(srv->cache, rq, rq->key, rq->key_len, &rq->ticket, &rep);
        } else {
            ret = http__answer_reply(rq, &rep);
        }
    }
    http_reply_free(&rep);
    return ret;
}

/* A handler thread's job: render the request, then hand the connection back to MHD, which
 * calls on_request again to queue the answer. */
static void render_deferred(void *arg)
{
    struct http_request *rq = arg;
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
    return route->handler == handle_healthz || route->handler == handle_openapi ||
           route->handler == handle_dashboard;
}

/* Queues the answer a handler thread made (on_request, after MHD_resume_connection). */
static enum MHD_Result queue_ready(struct http_request *rq)
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
                                   struct http_request *rq, const char *url, const char *method)
{
    if (rq->refused) {
        rq->status = problem_http_status(rq->refusal.code);
        return http__answer_problem(rq, &rq->refusal, NULL, refusal_allow(rq));
    }
    struct cofi_err err;
    cofi_err_clear(&err);
    if (rq->too_large) {
        cofi_err_set(&err, COFI_E_TOO_LARGE, "the body is larger than %zu bytes",
                     srv->app->cfg->max_body_bytes);
        rq->status = 413;
        return http__answer_problem(rq, &err, NULL, NULL);
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
            return http__queue(rq, 200, http__cached_response(hit), len);
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
        http__answer_problem(rq, &err, NULL, NULL);
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
static struct http_request *request_new(struct http_server *srv)
{
    struct http_request *rq = calloc(1, sizeof *rq);
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
void *http__on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)conn;
    struct http_server *srv = cls;
    struct http_request *rq = request_new(srv);
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

enum MHD_Result http__on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct http_server *srv = cls;
    struct http_request *rq = *con_cls;
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

void http__on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    struct http_server *srv = cls;
    struct http_request *rq = *con_cls;
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
