/* Deadlines per HTTP connection: a whole request must arrive in time, however slowly it drips. */
#ifndef COFI_CONN_GUARD_H
#define COFI_CONN_GUARD_H

#include <stdbool.h>
#include <stdint.h>

/* libmicrohttpd resets its idle timeout on every byte, so a client sending one byte every few
 * seconds (slowloris) holds a connection for ever. The guard gives each request a deadline
 * instead: from a connection's first moment (or the end of its previous request) its next
 * request line, headers and body must all have arrived within request_timeout_ms. A
 * connection past its deadline is shut down (shutdown(2), the server then closes it as if the
 * client had gone). The deadline is disarmed while the request is handled and answered.
 *
 * One background thread checks the deadlines (every request_timeout_ms / 4, at most every
 * 250 ms). Every function is thread-safe. */
struct conn_guard;

/* One guarded connection: the server's socket context for it (never NULL once opened). */
struct conn_guard_entry;

/* Starts a guard. Returns 0 with *out a new guard the caller ends with conn_guard_free, or -1
 * (out of memory, no thread) with *out NULL. */
int conn_guard_new(struct conn_guard **out, int request_timeout_ms);

/* Stops the thread and frees the guard and every entry still held. Call it once no connection
 * can be opened or closed any more. Accepts NULL. */
void conn_guard_free(struct conn_guard *g);

/* A connection on socket fd was accepted: its first request's deadline starts now. Returns its
 * new entry, or NULL when out of memory (the connection is then not guarded). */
struct conn_guard_entry *conn_guard_opened(struct conn_guard *g, int fd);

/* The connection is closing: its entry is freed, and the guard never touches fd again (the
 * caller closes fd only after this returns). Accepts NULL. */
void conn_guard_closed(struct conn_guard *g, struct conn_guard_entry *e);

/* The request has fully arrived: no deadline while it is handled and answered. Accepts NULL. */
void conn_guard_request_received(struct conn_guard_entry *e);

/* The request has ended: the next request on the connection has its deadline from now.
 * Accepts NULL. */
void conn_guard_request_done(struct conn_guard *g, struct conn_guard_entry *e);

/* Checks every deadline once against now_us (clock_mono_us) and shuts down the connections
 * past theirs. Returns how many were shut down. For tests; the thread calls it too. */
int conn_guard_sweep(struct conn_guard *g, int64_t now_us);

#endif
