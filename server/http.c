/* The HTTP server of cofid: libmicrohttpd, capped request bodies, routing, auth, replies. */
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
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
#include "common/thread.h"
#include "handlers/handlers.h"
#include "server/auth.h"
#include "server/problem.h"
#include "server/router.h"
#include "server/status_cache.h"

/* HTTP_CONNECTION_MEMORY is MHD's memory per connection, for the request line, the headers
 * (up to about 14 KiB pass) and the body's read buffer. MHD zeroes all of it after every
 * request: at 64 KiB that was a fifth of the CPU of a cached GET (about 10 of 46 us). */
#define HTTP_CONNECTION_LIMIT  4096u
#define HTTP_IDLE_TIMEOUT_S    60u
#define HTTP_CONNECTION_MEMORY (16u * 1024u)
#define HTTP_BACKLOG           4096

/* Query arguments a background re-rendering keeps (more: the poll re-renders itself). */
#define REFRESH_QUERY_MAX 4
/* Re-renderings waiting for the refresher thread (more: the entry is dropped instead). */
#define REFRESH_QUEUE 16

/* A cached answer to re-render in the background: the request, copied. */
struct refresh_job {
    struct status_cache_ticket ticket;
    char key[STATUS_CACHE_KEY_MAX];
    size_t key_len;
    char path[ROUTE_PATH_MAX];
    size_t nquery;
    const char *qname[REFRESH_QUERY_MAX]; /* into qbuf */
    const char *qvalue[REFRESH_QUERY_MAX];
    char qbuf[STATUS_CACHE_KEY_MAX];
    size_t qlen;
};

/* One thread that re-renders cached answers that aged out while polls are served the previous
 * answer: a steady poll never waits for the database. */
struct refresher {
    pthread_t thread;
    bool inited; /* mu and cv are */
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    struct refresh_job jobs[REFRESH_QUEUE]; /* a ring: len jobs from head */
    size_t head, len;
};

struct http_server {
    struct MHD_Daemon *daemon;
    struct cofi_app *app;
    MHD_socket listen_fd;
    int port;
    atomic_int active;          /* requests between their headers and their completion */
    struct status_cache *cache; /* owned; NULL when status_cache_ms is 0 */
    struct refresher refresh;   /* started with the cache */
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
    size_t dropped;          /* body bytes of a refused request read and dropped */
    int64_t start_us;
    int status;    /* the status answered, for the access log */
    char line[96]; /* "METHOD /path" (cut), for the access log */
};

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
        line[--n] = '\0';
    }
    log_warn("http: %s", line);
}

/* Adds the header every answer ends with, after the builder's own: nothing we answer may be
 * kept by a client or a proxy. */
static void add_final_headers(struct MHD_Response *resp)
{
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
}

/* Queues resp (stolen: the caller's reference is dropped, MHD holds its own until the answer
 * is sent). Returns MHD_NO when resp is NULL. */
static enum MHD_Result queue(struct MHD_Connection *conn, int status, struct MHD_Response *resp)
{
    if (resp == NULL) {
        return MHD_NO;
    }
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned int)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Answers with the problem for err; ext (stolen) adds members; allow adds an Allow header. */
static enum MHD_Result answer_problem(struct MHD_Connection *conn, const struct cofi_err *err,
                                      json_t *ext, const char *allow)
{
    int status = problem_http_status(err->code);
    json_t *p = problem_new(err, ext);
    char *text = p != NULL ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    struct MHD_Response *resp;
    if (text != NULL) {
        resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        if (resp == NULL) {
            free(text);
        }
    } else {
        static const char oom[] = "{\"type\":\"https://cofi.dev/problems/internal\","
                                  "\"title\":\"Internal Server Error\",\"status\":500}";
        status = 500;
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
    add_final_headers(resp);
    return queue(conn, status, resp);
}

/* A finished response (a new reference) of a JSON success body: text (length len, stolen:
 * freed with the response) with location as the Location header when not empty. Returns
 * NULL when out of memory (text is freed). */
static struct MHD_Response *json_response(char *text, size_t len, const char *location)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(text);
        return NULL;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, HTTP_JSON_TYPE);
    if (location != NULL && location[0] != '\0') {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, location);
    }
    add_final_headers(resp);
    return resp;
}

/* Answers a JSON success body: text (length len, stolen) with location as the Location
 * header when not empty. */
static enum MHD_Result answer_json(struct MHD_Connection *conn, int status, char *text, size_t len,
                                   const char *location)
{
    return queue(conn, status, json_response(text, len, location));
}

/* The JSON text of a reply's body (not of a raw one): a new string the caller frees, or
 * NULL when out of memory. */
static char *reply_text(const struct http_reply *rep)
{
    /* 15 significant digits print 4.1 as "4.1", not "4.0999999999999996". */
    return json_dumps(rep->body != NULL ? rep->body : json_null(),
                      JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
}

static enum MHD_Result answer_out_of_memory(struct MHD_Connection *conn)
{
    struct cofi_err err;
    cofi_err_set(&err, COFI_E_NOMEM, "out of memory while encoding a reply");
    return answer_problem(conn, &err, NULL, NULL);
}

static enum MHD_Result answer_reply(struct MHD_Connection *conn, struct http_reply *rep)
{
    int status = rep->status != 0 ? rep->status : 200;
    if (rep->raw != NULL) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(rep->raw_len, (void *)rep->raw, MHD_RESPMEM_PERSISTENT);
        if (resp == NULL) {
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, HTTP_JSON_TYPE);
        add_final_headers(resp);
        return queue(conn, status, resp);
    }
    if (status == 204) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (resp == NULL) {
            return MHD_NO;
        }
        add_final_headers(resp);
        return queue(conn, status, resp);
    }
    char *text = reply_text(rep);
    if (text == NULL) {
        return answer_out_of_memory(conn);
    }
    return answer_json(conn, status, text, strlen(text), rep->location);
}

/* The status cache's value_free: a cached answer is a finished MHD response. */
static void cached_response_free(void *value)
{
    MHD_destroy_response(value);
}

/* Answers a successful reply of a cached route and gives the ticket back: a 200 is stored
 * in the cache, anything else is not. What is stored is the finished response itself
 * (body and headers), which hits then queue as is: MHD counts the references of a response
 * under its own mutex, so one response may be queued on several connections, from several
 * threads, at once. Its size in the cache is its body's. */
static enum MHD_Result answer_and_store(struct status_cache *cache, struct MHD_Connection *conn,
                                        const char *key, size_t key_len,
                                        const struct status_cache_ticket *ticket,
                                        struct http_reply *rep)
{
    bool storable = (rep->status == 0 || rep->status == 200) && rep->raw == NULL;
    char *text = storable ? reply_text(rep) : NULL;
    if (text == NULL) {
        status_cache_drop(cache, key, key_len, ticket);
        return answer_reply(conn, rep);
    }
    size_t len = strlen(text);
    struct MHD_Response *resp = json_response(text, len, rep->location);
    struct status_cache_answer *answer =
        resp != NULL ? status_cache_answer_new(resp, len, cached_response_free) : NULL;
    if (answer == NULL) {
        status_cache_drop(cache, key, key_len, ticket);
        return queue(conn, 200, resp);
    }
    status_cache_put(cache, key, key_len, ticket, answer);
    enum MHD_Result ret = MHD_queue_response(conn, 200, resp);
    status_cache_answer_release(answer);
    return ret;
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

/* ---- background re-rendering of cached answers ------------------------------------------ */

static enum MHD_Result add_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    struct refresh_job *job = cls;
    size_t kl = strlen(key) + 1;
    size_t vl = value != NULL ? strlen(value) + 1 : 0;
    if (job->nquery == REFRESH_QUERY_MAX || job->qlen + kl + vl > sizeof job->qbuf) {
        job->nquery = REFRESH_QUERY_MAX + 1; /* does not fit */
        return MHD_NO;
    }
    char *name = job->qbuf + job->qlen;
    memcpy(name, key, kl);
    job->qlen += kl;
    const char *val = NULL;
    if (value != NULL) {
        char *v = job->qbuf + job->qlen;
        memcpy(v, value, vl);
        job->qlen += vl;
        val = v;
    }
    job->qname[job->nquery] = name;
    job->qvalue[job->nquery] = val;
    job->nquery++;
    return MHD_YES;
}

/* The job's copy of the request's query, for http_req.query. */
static const char *job_query(const struct http_req *req, const char *name)
{
    const struct refresh_job *job = req->query_ctx;
    for (size_t i = 0; i < job->nquery; i++) {
        if (strcmp(job->qname[i], name) == 0) {
            return job->qvalue[i];
        }
    }
    return NULL;
}

/* Hands the re-rendering of key (a poll of url on conn was just served the previous answer)
 * to the refresher thread; when it can't take it, the entry goes, and the next poll renders
 * its own answer. */
static void refresh_enqueue(struct http_server *srv, struct MHD_Connection *conn, const char *url,
                            const char *key, size_t key_len,
                            const struct status_cache_ticket *ticket)
{
    struct refresher *r = &srv->refresh;
    size_t path_len = strlen(url);
    bool queued = false;
    pthread_mutex_lock(&r->mu);
    if (!r->stop && r->len < REFRESH_QUEUE && path_len < sizeof r->jobs[0].path &&
        key_len <= sizeof r->jobs[0].key) {
        struct refresh_job *job = &r->jobs[(r->head + r->len) % REFRESH_QUEUE];
        job->ticket = *ticket;
        memcpy(job->key, key, key_len);
        job->key_len = key_len;
        memcpy(job->path, url, path_len + 1);
        job->nquery = 0;
        job->qlen = 0;
        MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_query_arg, job);
        if (job->nquery <= REFRESH_QUERY_MAX) {
            r->len++;
            queued = true;
            pthread_cond_signal(&r->cv);
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (!queued) {
        status_cache_drop(srv->cache, key, key_len, ticket);
    }
}

/* Runs the handler of job's request and stores its answer when it is a 200 (as a poll that
 * rendered it would); anything else removes the entry, so the next poll gets the error. */
static void refresh_one(struct http_server *srv, struct refresh_job *job)
{
    struct route_match m;
    if (router_match("GET", job->path, &m) != ROUTE_FOUND || !m.route->cached) {
        status_cache_drop(srv->cache, job->key, job->key_len, &job->ticket);
        return;
    }
    struct http_req req = {
        .method = "GET",
        .path = job->path,
        .param_count = m.param_count,
        .query = job_query,
        .query_ctx = job,
    };
    for (size_t i = 0; i < m.param_count; i++) {
        req.params[i] = m.params[i];
    }
    struct http_reply rep = HTTP_REPLY_INIT;
    struct cofi_err err;
    cofi_err_clear(&err);
    /* The answer is as old as the moment its handler starts (the generation stays the one of
     * the lookup: a write since then keeps this answer out of the cache). */
    job->ticket.start_us = clock_mono_us();
    int rc = m.route->handler(srv->app, &req, &rep, &err);
    char *text = NULL;
    if (rc == 0 && (rep.status == 0 || rep.status == 200) && rep.raw == NULL) {
        text = reply_text(&rep);
    }
    struct MHD_Response *resp = NULL;
    struct status_cache_answer *answer = NULL;
    if (text != NULL) {
        size_t len = strlen(text);
        resp = json_response(text, len, rep.location);
        answer = resp != NULL ? status_cache_answer_new(resp, len, cached_response_free) : NULL;
        if (answer == NULL && resp != NULL) {
            MHD_destroy_response(resp);
        }
    }
    if (answer != NULL) {
        status_cache_put(srv->cache, job->key, job->key_len, &job->ticket, answer);
        status_cache_answer_release(answer);
    } else {
        if (rc != 0) {
            log_debug("status cache: re-rendering %s failed: %s", job->path, err.msg);
        }
        status_cache_drop(srv->cache, job->key, job->key_len, &job->ticket);
    }
    http_reply_free(&rep);
}

static void *refresher_main(void *arg)
{
    struct http_server *srv = arg;
    struct refresher *r = &srv->refresh;
    thread_set_name("cofi-refresh");
    struct refresh_job *job = malloc(sizeof *job);
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (r->len == 0 && !r->stop) {
            pthread_cond_wait(&r->cv, &r->mu);
        }
        if (r->stop) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        bool have = job != NULL;
        if (have) {
            *job = r->jobs[r->head];
        }
        r->head = (r->head + 1) % REFRESH_QUEUE;
        r->len--;
        pthread_mutex_unlock(&r->mu);
        if (have) {
            refresh_one(srv, job);
        }
    }
    free(job);
    return NULL;
}

static void refresher_start(struct http_server *srv)
{
    struct refresher *r = &srv->refresh;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->inited = true;
    r->started = pthread_create(&r->thread, NULL, refresher_main, srv) == 0;
    if (!r->started) {
        log_warn("http: no refresher thread: polls re-render cached answers themselves");
    }
}

/* Stops the refresher thread (jobs still queued are dropped with the cache). Call once no
 * request can be in progress any more. */
static void refresher_stop(struct http_server *srv)
{
    struct refresher *r = &srv->refresh;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->stop = true;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
        r->started = false;
    }
    if (r->inited) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        r->inited = false;
    }
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

    rq->result = router_match(method, url, &rq->match);
    bool public_route = rq->result != ROUTE_NOT_FOUND && rq->match.public_path;
    bool needs_write = rq->result == ROUTE_FOUND && strcmp(rq->match.route->method, "GET") != 0;
    int rc = auth_check(cfg, header(conn, MHD_HTTP_HEADER_AUTHORIZATION), public_route, needs_write,
                        err);
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
    return answer_problem(conn, err, NULL, refusal_allow(rq));
}

/* The last call, with the whole body: run the handler and answer. */
static enum MHD_Result on_complete(struct http_server *srv, struct MHD_Connection *conn,
                                   struct request *rq, const char *url, const char *method)
{
    if (rq->refused) {
        rq->status = problem_http_status(rq->refusal.code);
        return answer_problem(conn, &rq->refusal, NULL, refusal_allow(rq));
    }
    struct cofi_err err;
    cofi_err_clear(&err);
    if (rq->too_large) {
        cofi_err_set(&err, COFI_E_TOO_LARGE, "the body is larger than %zu bytes",
                     srv->app->cfg->max_body_bytes);
        rq->status = 413;
        return answer_problem(conn, &err, NULL, NULL);
    }
    struct http_req req = {
        .method = strcmp(method, "HEAD") == 0 ? "GET" : method,
        .path = url,
        .param_count = rq->match.param_count,
        .body = rq->body.len > 0 ? rq->body.data : NULL,
        .body_len = rq->body.len,
        .content_type = header(conn, MHD_HTTP_HEADER_CONTENT_TYPE),
        .idempotency_key = header(conn, "Idempotency-Key"),
        .query = query_value,
        .query_ctx = conn,
    };
    for (size_t i = 0; i < rq->match.param_count; i++) {
        req.params[i] = rq->match.params[i];
    }
    const struct route *route = rq->match.route;
    char key[STATUS_CACHE_KEY_MAX];
    size_t key_len = 0;
    int nargs = 0;
    struct status_cache_ticket ticket;
    if (srv->cache != NULL && route->cached) {
        key_len = cache_key(conn, url, key, sizeof key, &nargs);
    }
    if (key_len > 0) {
        struct status_cache_answer *hit;
        bool background = srv->refresh.started && nargs <= REFRESH_QUERY_MAX;
        bool served = background ? status_cache_get_stale(srv->cache, key, key_len, &hit, &ticket)
                                 : status_cache_get(srv->cache, key, key_len, &hit, &ticket);
        if (served) {
            if (ticket.refresher) {
                refresh_enqueue(srv, conn, url, key, key_len, &ticket);
            }
            /* Our own reference keeps the response alive even if another thread evicts the
             * entry now; MHD takes its own while queueing. */
            rq->status = 200;
            enum MHD_Result ret = MHD_queue_response(conn, 200, status_cache_answer_value(hit));
            status_cache_answer_release(hit);
            return ret;
        }
    }
    struct http_reply rep = HTTP_REPLY_INIT;
    int rc = route->handler(srv->app, &req, &rep, &err);
    if (strcmp(route->method, "GET") != 0) {
        /* A write has committed (or nothing changed): no cached answer may predate it once
         * it is answered. */
        status_cache_invalidate(srv->cache);
    }
    enum MHD_Result ret;
    if (rc != 0) {
        if (key_len > 0) {
            status_cache_drop(srv->cache, key, key_len, &ticket);
        }
        if (err.code == COFI_OK) {
            cofi_err_set(&err, COFI_E_INTERNAL, "handler of %s %s failed without a reason", method,
                         url);
        }
        json_t *ext = rep.problem_ext;
        rep.problem_ext = NULL;
        rq->status = problem_http_status(err.code);
        ret = answer_problem(conn, &err, ext, NULL);
    } else {
        rq->status = rep.status != 0 ? rep.status : 200;
        if (key_len > 0) {
            ret = answer_and_store(srv->cache, conn, key, key_len, &ticket, &rep);
        } else {
            ret = answer_reply(conn, &rep);
        }
    }
    http_reply_free(&rep);
    return ret;
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

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct http_server *srv = cls;
    struct request *rq = *con_cls;
    if (rq == NULL) {
        rq = calloc(1, sizeof *rq);
        if (rq == NULL) {
            return MHD_NO;
        }
        buf_init(&rq->body, srv->app->cfg->max_body_bytes);
        rq->start_us = clock_mono_us();
        request_line(rq->line, sizeof rq->line, method, url);
        *con_cls = rq;
        atomic_fetch_add(&srv->active, 1);
        return on_headers(srv, conn, rq, url, method);
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
    return on_complete(srv, conn, rq, url, method);
}

/* After a request body at least this large, free heap pages go back to the system. */
#define TRIM_AFTER_BODY_BYTES ((size_t)1 << 20)

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    struct http_server *srv = cls;
    struct request *rq = *con_cls;
    if (rq == NULL) {
        return;
    }
    int64_t us = clock_mono_us() - rq->start_us;
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        log_debug("%s %d %" PRId64 ".%03d ms", rq->line, rq->status, us / 1000, (int)(us % 1000));
    } else {
        log_debug("%s ended early (%d) after %" PRId64 " us", rq->line, (int)toe, us);
    }
    size_t body_bytes = rq->body.len;
    buf_free(&rq->body);
    free(rq);
    *con_cls = NULL;
    atomic_fetch_sub(&srv->active, 1);
#if defined(__GLIBC__)
    /* A large body (POST /batches of many files: its text and its parsed tree, 20 MiB for
     * 200,000 files) leaves free pages in the heap that glibc keeps; give them back, so the
     * resident set during the run is what the run holds. Milliseconds, once per such body. */
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

static struct MHD_Daemon *start_daemon(struct http_server *srv, unsigned int flags)
{
    unsigned int threads =
        srv->app->cfg->http_threads > 0 ? (unsigned)srv->app->cfg->http_threads : 1u;
    /* The logger comes first so that MHD's messages about the other options reach it. */
    return MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, srv->listen_fd, MHD_OPTION_THREAD_POOL_SIZE, threads,
        MHD_OPTION_CONNECTION_LIMIT, HTTP_CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
        HTTP_IDLE_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONNECTION_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_END);
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
    if (cfg->status_cache_ms > 0 && status_cache_new(&srv->cache, cfg->status_cache_ms) != 0) {
        free(srv);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    if (srv->cache != NULL) {
        refresher_start(srv);
    }
    int family = AF_INET;
    int fd = open_listener(cfg->listen_host, cfg->listen_port, &family, &srv->port, err);
    if (fd < 0) {
        refresher_stop(srv);
        status_cache_free(srv->cache);
        free(srv);
        return err->code;
    }
    srv->listen_fd = fd;
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
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
        refresher_stop(srv);
        status_cache_free(srv->cache);
        free(srv);
        return cofi_err_set(err, COFI_E_INTERNAL, "can't start the HTTP server on %s:%d",
                            cfg->listen_host, cfg->listen_port);
    }
    log_info("listening on %s%s%s:%d", family == AF_INET6 ? "[" : "", cfg->listen_host,
             family == AF_INET6 ? "]" : "", srv->port);
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
    MHD_stop_daemon(srv->daemon);
    if (fd != MHD_INVALID_SOCKET) {
        close(fd);
    }
    refresher_stop(srv);
    status_cache_free(srv->cache);
    free(srv);
}
