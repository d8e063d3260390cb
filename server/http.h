/* The HTTP server of cofid (libmicrohttpd): bodies, routing, auth and replies. */
#ifndef COFI_HTTP_H
#define COFI_HTTP_H

#include "common/error.h"
#include "server/app.h"

struct http_server;

/* Listens on app->cfg->listen_host:listen_port (port 0 picks a free one) and serves the
 * API on cfg->http_threads threads (epoll, or poll where epoll is missing), at most
 * cfg->http.max_connections connections in all and cfg->http.max_connections_per_client from
 * one client address (the excess is closed at once), each closed after
 * cfg->http.idle_timeout_ms without traffic or when a request has not fully arrived within
 * cfg->http.request_timeout_ms (server/conn_guard.h). Request bodies are held up to
 * cfg->max_body_bytes (413 beyond, without reading the rest when Content-Length tells).
 * app must outlive the server; handlers get it as const. Logs "listening on host:port".
 * Returns 0 with *out a new server the caller ends with http_stop, or a negative
 * cofi_status with err saying why (e.g. the address is in use); then *out is NULL and
 * nothing is left open. */
int http_start(struct http_server **out, struct cofi_app *app, struct cofi_err *err);

/* The port the server listens on (useful after asking for port 0). Can't fail. */
int http_port(const struct http_server *srv);

/* The drain has begun: from now on writes (every method but GET and HEAD) and GET /readyz
 * answer 503 with Retry-After, while the other reads go on. Accepts NULL. Thread-safe. */
void http_begin_drain(struct http_server *srv);

/* Replaces the bearer tokens requests are checked against (SIGHUP) with copies of
 * tokens[0..n); n == 0 opens the API. Returns 0, or COFI_E_NOMEM with the old tokens kept.
 * Thread-safe. */
int http_replace_tokens(struct http_server *srv, const struct cofi_token_cfg *tokens, size_t n);

/* Stops accepting connections, lets the requests in progress finish (waiting up to
 * cfg->shutdown_grace_ms), closes every connection and frees the server. Accepts NULL.
 * Call it once, from one thread. */
void http_stop(struct http_server *srv);

#endif
