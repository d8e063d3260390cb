/* HTTP: one libmicrohttpd daemon per port, bodies, routing, and replies turned into HTTP. */
#include "sim/sim.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/clock.h"

#define POST_BUFFER      (64 * 1024)
#define CONNECTION_LIMIT 4096
/* MHD's memory per connection (request line, headers, read buffer); MHD zeroes it after every
 * request, so it is kept small (its default is 32 KiB; cofid found 64 KiB cost a fifth of a
 * cheap request). Bodies are copied out chunk by chunk, so they are not bounded by it. */
#define CONNECTION_MEMORY (16 * 1024)
#define LISTEN_BACKLOG    4096
#ifdef COFI_SANITIZED
#define THREAD_STACK (2 * 1024 * 1024)
#else
#define THREAD_STACK (256 * 1024)
#endif

#define ALLOW_GET   "GET, HEAD"
#define ALLOW_POST  "POST"
#define ALLOW_RULES "POST, DELETE"

void sim_reply_error(struct sim_reply *r, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_decref(r->body);
    free(r->raw);
    r->raw = NULL;
    r->status = status;
    r->body = json_pack("{s:s}", "error", msg);
    if (r->body == NULL) {
        /* The message quoted input that is not UTF-8, or memory ran out. */
        r->body = json_pack("{s:s}", "error", "invalid request");
    }
}

void sim_reply_json(struct sim_reply *r, int status, json_t *body)
{
    json_decref(r->body);
    r->body = NULL;
    free(r->raw);
    r->raw = NULL;
    if (body == NULL) {
        sim_reply_error(r, 500, "out of memory");
        return;
    }
    r->status = status;
    r->body = body;
}

/* ---- routing ------------------------------------------------------------------------------- */

static bool is_get(const char *method)
{
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

static bool is_post(const char *method)
{
    return strcmp(method, "POST") == 0;
}

/* Parses a node index: decimal digits only. Returns it, or -1. */
static int parse_index(const char *s, size_t len)
{
    if (len == 0 || len > 6) {
        return -1;
    }
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Routes /admin/nodes/{i}/{down|up} and /admin/nlp/{down|up}. Returns false when url is neither. */
static bool route_target(struct sim_port *p, const char *url, struct sim_req *req)
{
    struct sim *s = p->sim;
    const char *action = NULL;
    struct sim_port *target = NULL;
    if (strncmp(url, "/admin/nlp/", 11) == 0) {
        action = url + 11;
        target = &s->ports[s->cfg.nodes];
    } else if (strncmp(url, "/admin/nodes/", 13) == 0) {
        const char *num = url + 13;
        const char *slash = strchr(num, '/');
        if (slash == NULL) {
            return false;
        }
        int i = parse_index(num, (size_t)(slash - num));
        if (i < 0 || i >= s->cfg.nodes) {
            return false;
        }
        action = slash + 1;
        target = &s->ports[i];
    } else {
        return false;
    }
    if (strcmp(action, "down") == 0) {
        req->route = SIM_R_ADMIN_DOWN;
    } else if (strcmp(action, "up") == 0) {
        req->route = SIM_R_ADMIN_UP;
    } else {
        return false;
    }
    req->target = target;
    return true;
}

/* Finds the route of (method, url). Returns 0, or the status (404/405) to answer with; for 405,
 * *allow is set. */
static int route(struct sim_port *p, const char *url, const char *method, struct sim_req *req,
                 const char **allow)
{
    enum methods { M_GET, M_POST, M_RULES };
    struct fixed {
        const char *path;
        enum sim_route route;
        enum methods methods;
    };
    static const struct fixed fixed[] = {
        {"/health", SIM_R_HEALTH, M_GET},
        {"/stats", SIM_R_STATS, M_GET},
        {"/stats/all", SIM_R_STATS_ALL, M_GET},
        {"/stats/reset", SIM_R_STATS_RESET, M_POST},
        {"/admin/down", SIM_R_ADMIN_DOWN, M_POST},
        {"/admin/up", SIM_R_ADMIN_UP, M_POST},
        {"/admin/rules", SIM_R_ADMIN_RULES, M_RULES},
    };
    static const char *const allows[] = {ALLOW_GET, ALLOW_POST, ALLOW_RULES};
    enum sim_ep ep;
    bool openai = p->role == SIM_ROLE_NLP && p->sim->cfg.nlp_protocol == SIM_PROTO_OPENAI;
    if (openai && strcmp(url, "/v1/chat/completions") == 0) {
        if (!is_post(method)) {
            *allow = ALLOW_POST;
            return 405;
        }
        req->route = SIM_R_WORKER;
        req->ep = SIM_EP_LLM1; /* until the Idempotency-Key says which stage */
        return 0;
    }
    if (p->role == SIM_ROLE_NLP && strcmp(url, "/admin/capacity") == 0) {
        if (!is_post(method)) {
            *allow = ALLOW_POST;
            return 405;
        }
        req->route = SIM_R_ADMIN_CAPACITY;
        req->target = p;
        return 0;
    }
    if (!openai && url[0] == '/' && sim_ep_parse(url + 1, &ep) == 0 &&
        strcmp(url + 1, "distribute") != 0 && sim_ep_in_role(ep, p->role)) {
        if (!is_post(method)) {
            *allow = ALLOW_POST;
            return 405;
        }
        req->route = SIM_R_WORKER;
        req->ep = ep;
        return 0;
    }
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (strcmp(url, fixed[i].path) != 0) {
            continue;
        }
        bool ok = false;
        if (fixed[i].methods == M_GET) {
            ok = is_get(method);
        } else if (fixed[i].methods == M_RULES) {
            ok = is_post(method) || strcmp(method, "DELETE") == 0;
        } else {
            ok = is_post(method);
        }
        if (!ok) {
            *allow = allows[fixed[i].methods];
            return 405;
        }
        req->route = fixed[i].route;
        req->target = p;
        return 0;
    }
    if (route_target(p, url, req)) {
        if (!is_post(method)) {
            req->route = SIM_R_NONE;
            *allow = ALLOW_POST;
            return 405;
        }
        return 0;
    }
    return 404;
}

/* ---- requests ------------------------------------------------------------------------------ */

/* The request context: the public part plus what only this file needs. */
struct http_req {
    struct sim_req pub;
    int route_status;        /* 404/405 found by route(), 0 otherwise */
    const char *route_allow; /* for 405 */
};

static void req_free(struct http_req *h)
{
    if (h == NULL) {
        return;
    }
    if (h->pub.pp != NULL) {
        MHD_destroy_post_processor(h->pub.pp);
    }
    buf_free(&h->pub.body);
    buf_free(&h->pub.call_id);
    buf_free(&h->pub.filename);
    free(h);
}

static enum MHD_Result on_form_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *filename, const char *content_type,
                                     const char *transfer_encoding, const char *data, uint64_t off,
                                     size_t size)
{
    struct sim_req *req = cls;
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    if (strcmp(key, "file") == 0) {
        if (off == 0 && !req->have_file) {
            req->have_file = true;
            if (filename == NULL || filename[0] == '\0') {
                req->file_unnamed = true;
            } else if (buf_append(&req->filename, filename, strlen(filename)) != 0) {
                return MHD_NO;
            }
        }
        req->file_bytes += size;
    } else if (strcmp(key, "call_id") == 0) {
        /* A second call_id field (which one would count?) starts again at offset 0 after
         * the first had data. libmicrohttpd may also hand over a value's first piece empty
         * and then the data, again at offset 0: that is one field, not two. */
        if (off == 0 && size > 0 && req->call_id.len > 0) {
            return MHD_NO;
        }
        req->have_call_id = true;
        if (size > 0 && buf_append(&req->call_id, data, size) != 0) {
            return MHD_NO;
        }
    }
    return MHD_YES;
}

static void concurrent_leave(struct sim_port *p, struct sim_req *req)
{
    if (req->in_concurrent) {
        req->in_concurrent = false;
        atomic_fetch_sub(&p->stats.concurrent, 1);
    }
}

/* Turns r into an HTTP response on conn (or drops the connection when r->status is 0). */
static enum MHD_Result send_reply(struct sim_port *p, struct sim_req *req,
                                  struct MHD_Connection *conn, struct sim_reply *r)
{
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (req->route == SIM_R_WORKER) {
        concurrent_leave(p, req);
        if (r->status != 0) {
            sim_stats_response(p, req->ep, r->status);
        }
        log_debug("%s: POST /%s (X-Request-Id %.64s): %d", p->id, sim_ep_name(req->ep),
                  rid ? rid : "-", r->status);
    }
    if (r->status == 0) {
        json_decref(r->body);
        free(r->raw);
        return MHD_NO;
    }
    char *text = NULL;
    size_t text_len = 0;
    if (r->raw != NULL) {
        text = r->raw;
        text_len = r->raw_len;
    } else if (r->body != NULL && r->status != 204 && r->status != 304) {
        text = json_dumps(r->body, JSON_COMPACT | JSON_REAL_PRECISION(15));
        text_len = text != NULL ? strlen(text) : 0;
    }
    r->raw = NULL;
    json_decref(r->body);
    r->body = NULL;
    struct MHD_Response *resp = NULL;
    if (text != NULL) {
        resp = MHD_create_response_from_buffer(text_len, text, MHD_RESPMEM_MUST_FREE);
    } else {
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    }
    if (resp == NULL) {
        free(text);
        return MHD_NO;
    }
    if (text != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    }
    if (r->retry_after[0] != '\0') {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, r->retry_after);
    }
    if (r->allow != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    }
    if (rid != NULL && strlen(rid) <= SIM_KEY_MAX) {
        MHD_add_response_header(resp, "X-Request-Id", rid);
    }
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned int)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void serve_health(struct sim_port *p, struct sim_reply *r)
{
    enum sim_mode mode = sim_worker_wait_hang(p);
    if (mode == SIM_MODE_REFUSE || mode == SIM_MODE_HANG) {
        r->status = 0;
    } else if (mode == SIM_MODE_ERROR) {
        sim_reply_error(r, 503, "%s is down", p->id);
    } else {
        sim_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
    }
}

static void serve_stats_all(struct sim_port *p, struct sim_reply *r)
{
    json_t *list = json_array();
    struct sim *s = p->sim;
    for (int i = 0; list != NULL && i < s->nports; i++) {
        if (json_array_append_new(list, sim_stats_json(&s->ports[i])) != 0) {
            json_decref(list);
            list = NULL;
        }
    }
    sim_reply_json(r, 200, list ? json_pack("{s:o}", "ports", list) : NULL);
}

static void dispatch(struct sim_port *p, struct http_req *h, struct sim_reply *r)
{
    struct sim_req *req = &h->pub;
    if (req->too_big && req->route != SIM_R_WORKER) {
        sim_reply_error(r, 413, "request body over %d bytes", SIM_JSON_BODY_MAX);
        return;
    }
    switch (req->route) {
    case SIM_R_NONE:
        if (h->route_status == 405) {
            sim_reply_error(r, 405, "method %s not allowed here", req->method);
            r->allow = h->route_allow;
        } else {
            sim_reply_error(r, 404, "not found");
        }
        return;
    case SIM_R_WORKER:
        sim_worker_serve(p, req, r);
        return;
    case SIM_R_HEALTH:
        serve_health(p, r);
        return;
    case SIM_R_STATS:
        sim_reply_json(r, 200, sim_stats_json(p));
        return;
    case SIM_R_STATS_ALL:
        serve_stats_all(p, r);
        return;
    case SIM_R_STATS_RESET:
        sim_stats_reset(p);
        if (p->role == SIM_ROLE_NLP) {
            sim_meter_reset(&p->sim->meter);
        }
        r->status = 204;
        return;
    case SIM_R_ADMIN_DOWN:
    case SIM_R_ADMIN_UP:
    case SIM_R_ADMIN_RULES:
    case SIM_R_ADMIN_CAPACITY:
        sim_admin_serve(p, req, r);
        return;
    }
}

/* First call for a request: headers are in, the body is not. */
static enum MHD_Result on_new_request(struct sim_port *p, struct MHD_Connection *conn,
                                      const char *url, const char *method, void **con_cls)
{
    if (atomic_load(&p->mode) == SIM_MODE_REFUSE) {
        return MHD_NO; /* going down: behave like a dead node */
    }
    struct http_req *h = calloc(1, sizeof *h);
    if (h == NULL) {
        return MHD_NO;
    }
    struct sim_req *req = &h->pub;
    buf_init(&req->body, SIM_JSON_BODY_MAX);
    buf_init(&req->call_id, SIM_FIELD_MAX);
    buf_init(&req->filename, SIM_FIELD_MAX);
    req->method = method;
    req->conn = conn;
    req->arrival_us = clock_mono_us();
    h->route_status = route(p, url, method, req, &h->route_allow);
    *con_cls = h;
    if (req->route == SIM_R_WORKER) {
        req->in_concurrent = true;
        sim_stats_max(&p->stats.max_concurrent, atomic_fetch_add(&p->stats.concurrent, 1) + 1);
        if (req->ep == SIM_EP_UPLOAD) {
            req->pp = MHD_create_post_processor(conn, POST_BUFFER, on_form_field, req);
            req->form_unsupported = (req->pp == NULL);
        }
    }
    return MHD_YES;
}

/* Takes a chunk of the body: into the form parser for uploads, else into the capped buffer.
 * Past the cap the rest is read and dropped, and the answer is 413 (MHD 0.9.75 cannot queue a
 * response before the body is read). */
static void on_body(struct http_req *h, const char *data, size_t size)
{
    struct sim_req *req = &h->pub;
    if (req->route == SIM_R_WORKER && req->ep == SIM_EP_UPLOAD) {
        if (req->pp != NULL && !req->form_bad && MHD_post_process(req->pp, data, size) != MHD_YES) {
            req->form_bad = true;
        }
        return;
    }
    if (!req->too_big && buf_append(&req->body, data, size) != 0) {
        req->too_big = true;
        buf_free(&req->body);
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct sim_port *p = cls;
    struct http_req *h = *con_cls;
    (void)version;
    if (h == NULL) {
        return on_new_request(p, conn, url, method, con_cls);
    }
    struct sim_req *req = &h->pub;
    req->conn = conn;
    if (*upload_data_size > 0) {
        on_body(h, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (req->pp != NULL) {
        if (MHD_destroy_post_processor(req->pp) != MHD_YES) {
            req->form_bad = true;
        }
        req->pp = NULL;
    }
    struct sim_reply r = {0};
    dispatch(p, h, &r);
    return send_reply(p, req, conn, &r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct sim_port *p = cls;
    struct http_req *h = *con_cls;
    (void)conn;
    (void)toe;
    if (h == NULL) {
        return;
    }
    concurrent_leave(p, &h->pub);
    if (h->pub.stop_after) {
        sim_control_post(p->sim, p, SIM_MODE_REFUSE);
    }
    req_free(h);
    *con_cls = NULL;
}

__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    const struct sim_port *p = cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
        line[--len] = '\0';
    }
    log_warn("%s (port %d): %s", p->id, p->port, line);
}

/* ---- daemons ------------------------------------------------------------------------------- */

int sim_http_start(struct sim_port *p)
{
    const struct sim_config *cfg = &p->sim->cfg;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                         MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)p->port);
    } else if (inet_pton(AF_INET6, cfg->host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p->port);
        flags |= MHD_USE_IPv6;
    } else {
        log_error("%s: --host %s is not an IPv4 or IPv6 address", p->id, cfg->host);
        return -1;
    }
    /* Threads of the daemon inherit this mask: SIGTERM and SIGINT go to the main thread only. */
    sigset_t block;
    sigset_t saved;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &saved);
    /* MHD sets SO_REUSEADDR on its listening socket by default (and not SO_REUSEPORT, so two
     * simulators can never share a port by mistake). */
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)p->port, NULL, NULL, on_request, p, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log,
        p, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)0,
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)THREAD_STACK, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)CONNECTION_MEMORY, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int)LISTEN_BACKLOG,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, p, MHD_OPTION_END);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    /* Under mu: a request may already run on d and look at p->daemon (sim_http_quiesce). */
    pthread_mutex_lock(&p->mu);
    p->daemon = d;
    pthread_mutex_unlock(&p->mu);
    if (d == NULL) {
        log_error("%s: cannot listen on %s:%d", p->id, cfg->host, p->port);
        return -1;
    }
    atomic_store(&p->listening, true);
    return 0;
}

void sim_http_stop(struct sim_port *p)
{
    if (p->daemon == NULL) {
        return;
    }
    atomic_store(&p->listening, false);
    MHD_stop_daemon(p->daemon);
    pthread_mutex_lock(&p->mu);
    p->daemon = NULL;
    pthread_mutex_unlock(&p->mu);
    /* MHD leaves a quiesced listening socket to its owner. */
    int fd = atomic_exchange(&p->quiesced_fd, -1);
    if (fd >= 0) {
        close(fd);
    }
}

void sim_http_quiesce(struct sim_port *p)
{
    pthread_mutex_lock(&p->mu);
    if (atomic_load(&p->mode) != SIM_MODE_REFUSE) {
        atomic_store(&p->mode, (int)SIM_MODE_REFUSE);
        pthread_cond_broadcast(&p->slot_cv);
        pthread_cond_broadcast(&p->state_cv);
        /* The main thread sets "refuse" under mu before it stops a daemon, so the daemon is
         * still whole here. After quiescing, MHD no longer polls the socket; shutting it makes
         * the kernel refuse new connections while the fd stays open until the stop. */
        MHD_socket fd = p->daemon ? MHD_quiesce_daemon(p->daemon) : MHD_INVALID_SOCKET;
        if (fd != MHD_INVALID_SOCKET) {
            shutdown(fd, SHUT_RDWR);
            atomic_store(&p->quiesced_fd, fd);
        }
    }
    pthread_mutex_unlock(&p->mu);
}
