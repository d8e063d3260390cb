/* The HTTP server of cofid: set-up, MHD's options and limits, and teardown (one request's life
 * is server/http_request.c). */
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "handlers/handlers.h"
#include "server/auth.h"
#include "server/conn_guard.h"
#include "server/handler_pool.h"
#include "server/http_internal.h"
#include "server/http_metrics.h"
#include "server/status_cache.h"

/* HTTP_CONNECTION_MEMORY is MHD's memory per connection, for the request line, the headers
 * (up to about 14 KiB pass) and the body's read buffer. MHD zeroes all of it after every
 * request: at 64 KiB that was a fifth of the CPU of a cached GET (about 10 of 46 us). The
 * connection limits and timeouts come from the configuration's "http" object. */
#define HTTP_CONNECTION_MEMORY (16u * 1024u)
#define HTTP_BACKLOG           4096

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
        flags, 0, NULL, NULL, http__on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, srv->listen_fd, MHD_OPTION_THREAD_POOL_SIZE, threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->http.max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)cfg->http.max_connections_per_client,
        MHD_OPTION_CONNECTION_TIMEOUT, idle_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)HTTP_CONNECTION_MEMORY, MHD_OPTION_NOTIFY_COMPLETED, http__on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_ARRAY, tls,
        MHD_OPTION_URI_LOG_CALLBACK, http__on_uri, srv, MHD_OPTION_STRICT_FOR_CLIENT, (int)1,
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

/* Makes the server and everything it owns but its socket and daemon. Returns 0 with *out
 * set, or a negative cofi_status with err filled and nothing left to free. */
static int server_new(struct http_server **out, struct cofi_app *app, struct cofi_err *err)
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
    *out = srv;
    return 0;
}

int http_start(struct http_server **out, struct cofi_app *app, struct cofi_err *err)
{
    *out = NULL;
    const struct cofi_config *cfg = app->cfg;
    struct http_server *srv = NULL;
    int rc = server_new(&srv, app, err);
    if (rc != 0) {
        return rc;
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
