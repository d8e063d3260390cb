/* PostgreSQL connections: a fixed-size pool and parameterised-query helpers. */
#ifndef COFI_DB_H
#define COFI_DB_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "common/error.h"

struct db_pool;

/* Creates a pool of `size` connections to conninfo (connected lazily). Returns 0 or a
 * negative cofi_status; *out is a new pool the caller closes with db_pool_close. */
int db_pool_open(struct db_pool **out, const char *conninfo, int size, struct cofi_err *err);

/* Closes every connection and frees the pool. Accepts NULL. Every connection must have
 * been released. */
void db_pool_close(struct db_pool *pool);

/* Limits the pool's waits: db_acquire waits at most wait_ms for a free connection (0: for
 * ever), and every connection the pool opens from now on gets statement_timeout_ms (0: none).
 * Thread-safe. */
void db_pool_set_limits(struct db_pool *pool, int wait_ms, int statement_timeout_ms);

/* Borrows a healthy connection, waiting while all are in use, (re)connecting when needed.
 * Returns NULL with err COFI_E_UNAVAILABLE when the database can't be reached, or
 * COFI_E_BUSY when no connection came free within the pool's wait_ms. The caller
 * must give it back with db_release. Thread-safe. */
PGconn *db_acquire(struct db_pool *pool, struct cofi_err *err);

/* Gives a connection back. A connection whose status is bad is reset on the next acquire.
 * Accepts NULL. Thread-safe. */
void db_release(struct db_pool *pool, PGconn *conn);

/* Opens one connection outside any pool (for the engine's own threads). Returns NULL with
 * err COFI_E_UNAVAILABLE on failure. */
PGconn *db_connect(const char *conninfo, struct cofi_err *err);

/* Runs one parameterised statement (text parameters, NULL for SQL NULL; text results).
 * Returns a new PGresult (PGRES_TUPLES_OK or PGRES_COMMAND_OK) the caller must PQclear, or
 * NULL with err filled: COFI_E_UNAVAILABLE when the connection is lost, COFI_E_CONFLICT
 * for a unique violation (sqlstate 23505), COFI_E_BUSY for a statement cancelled by
 * statement_timeout (57014), COFI_E_INTERNAL otherwise; err->sqlstate holds
 * the server's code. */
PGresult *db_exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                  struct cofi_err *err);

/* Starts `sql`, a COPY ... FROM STDIN without parameters. Returns its PGresult
 * (PGRES_COPY_IN; the caller PQclears it, then sends the data with PQputCopyData and ends
 * with PQputCopyEnd and PQgetResult), or NULL with err filled as db_exec does. */
PGresult *db_exec_copy_in(PGconn *conn, const char *sql, struct cofi_err *err);

/* Runs the read-only statement `sql` as the prepared statement `name` on conn, preparing
 * it first when this connection does not have it yet (a new or reconnected connection), so
 * the server parses and plans it once per connection instead of once per request. `name`
 * must always go with the same sql. Only for single read-only statements outside a
 * transaction: on any other failure the statement is run once more with db_exec, whose
 * error it reports. Returns a new PGresult the caller must PQclear, or NULL with err filled
 * as db_exec does. Thread-safe with distinct connections. (db/prepared.c) */
PGresult *db_exec_prepared(PGconn *conn, const char *name, const char *sql, int nparams,
                           const char *const *params, struct cofi_err *err);

/* As db_exec_prepared for any single statement outside a transaction, writes included: it
 * runs at most once. Only "not prepared on this connection" and "cached plan must not change
 * result type" (after a schema change), where nothing ran, are answered by preparing it again
 * and running it then (unprepared, if it is still missing: a pooler that does not keep
 * statements); any other failure is reported as db_exec reports it. (db/prepared.c) */
PGresult *db_write_prepared(PGconn *conn, const char *name, const char *sql, int nparams,
                            const char *const *params, struct cofi_err *err);

/* Fills err from a failed result r (NULL: the connection's own error) with the mapping of
 * db_exec, and returns err->code. For callers of libpq's asynchronous functions. */
int db_result_error(PGconn *conn, const PGresult *r, struct cofi_err *err);

/* As db_exec for statements whose result is not needed. Returns 0 or a negative status. */
int db_command(PGconn *conn, const char *sql, int nparams, const char *const *params,
               struct cofi_err *err);

/* True when the connection is usable (CONNECTION_OK). Accepts NULL (false). */
bool db_conn_ok(PGconn *conn);

/* Waits up to timeout_ms for a notification of a channel conn LISTENs on; when one came,
 * *got is true and its payload is copied into payload (cut to n - 1 bytes). Returns 0, or a
 * negative status with err when the connection failed. */
int db_wait_notify(PGconn *conn, int timeout_ms, char *payload, size_t n, bool *got,
                   struct cofi_err *err);

/* Builds a list page {key: items, "next_cursor": next} into *out (a new reference). Steals
 * items and next (either may be NULL after an allocation failure); items_rc is the result of
 * filling items (non-zero: something failed). Returns 0, or COFI_E_NOMEM with *out unchanged
 * and both stolen references released. */
int db_json_page(const char *key, json_t *items, int items_rc, json_t *next, json_t **out,
                 struct cofi_err *err);

/* Writes a redacted form of conninfo (password removed) for logs into out. */
void db_redact(const char *conninfo, char *out, size_t outlen);

#endif
