/* Named prepared statements on pooled connections, prepared on first use. */
#ifndef COFI_PREPARED_H
#define COFI_PREPARED_H

#include <libpq-fe.h>

#include "common/error.h"

/* Runs the read-only statement `sql` as the prepared statement `name` on conn, preparing
 * it first when this connection does not have it yet (a new or reconnected connection), so
 * the server parses and plans it once per connection instead of once per request. `name`
 * must always go with the same sql. Only for single read-only statements outside a
 * transaction: on any other failure the statement is run once more with db_exec, whose
 * error it reports. Returns a new PGresult the caller must PQclear, or NULL with err filled
 * as db_exec does. Thread-safe with distinct connections. */
PGresult *db_exec_prepared(PGconn *conn, const char *name, const char *sql, int nparams,
                           const char *const *params, struct cofi_err *err);

#endif
