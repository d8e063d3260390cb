/* Prepared statements for the hot paths (one parse per connection). */
#include "db/db.h"

#include <string.h>

static bool result_ok(const PGresult *r)
{
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

/* True when r failed because the connection has no statement of that name (26000). */
static bool missing_statement(const PGresult *r)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return state != NULL && strcmp(state, "26000") == 0;
}

/* Runs name on conn, preparing it first when conn does not have it (a new or reconnected
 * connection: the server answers 26000 and nothing ran). Returns the result when it
 * succeeded; else NULL with *failed set to the failed result (NULL when the connection
 * itself failed), which the caller must PQclear. */
static PGresult *exec_prepared(PGconn *conn, const char *name, const char *sql, int nparams,
                               const char *const *params, PGresult **failed)
{
    PGresult *r = PQexecPrepared(conn, name, nparams, params, NULL, NULL, 0);
    if (result_ok(r)) {
        return r;
    }
    if (missing_statement(r) && PQtransactionStatus(conn) == PQTRANS_IDLE) {
        PQclear(r);
        r = PQprepare(conn, name, sql, nparams, NULL);
        if (result_ok(r)) {
            PQclear(r);
            r = PQexecPrepared(conn, name, nparams, params, NULL, NULL, 0);
            if (result_ok(r)) {
                return r;
            }
        }
    }
    *failed = r;
    return NULL;
}

PGresult *db_exec_prepared(PGconn *conn, const char *name, const char *sql, int nparams,
                           const char *const *params, struct cofi_err *err)
{
    PGresult *failed = NULL;
    PGresult *r = exec_prepared(conn, name, sql, nparams, params, &failed);
    if (r != NULL) {
        return r;
    }
    PQclear(failed);
    /* Report the failure exactly as every other statement does. */
    return db_exec(conn, sql, nparams, params, err);
}

PGresult *db_write_prepared(PGconn *conn, const char *name, const char *sql, int nparams,
                            const char *const *params, struct cofi_err *err)
{
    PGresult *failed = NULL;
    PGresult *r = exec_prepared(conn, name, sql, nparams, params, &failed);
    if (r == NULL) {
        db_result_error(conn, failed, err);
        PQclear(failed);
    }
    return r;
}
