/* Prepared statements for the hot read paths (one parse and plan per connection). */
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

PGresult *db_exec_prepared(PGconn *conn, const char *name, const char *sql, int nparams,
                           const char *const *params, struct cofi_err *err)
{
    PGresult *r = PQexecPrepared(conn, name, nparams, params, NULL, NULL, 0);
    if (result_ok(r)) {
        return r;
    }
    bool prepare = missing_statement(r) && PQtransactionStatus(conn) == PQTRANS_IDLE;
    PQclear(r);
    if (prepare) {
        PGresult *p = PQprepare(conn, name, sql, nparams, NULL);
        bool prepared = result_ok(p);
        PQclear(p);
        if (prepared) {
            r = PQexecPrepared(conn, name, nparams, params, NULL, NULL, 0);
            if (result_ok(r)) {
                return r;
            }
            PQclear(r);
        }
    }
    /* Report the failure exactly as every other statement does. */
    return db_exec(conn, sql, nparams, params, err);
}
