/* Prepared statements for the hot paths (one parse per connection). */
#include "db/db.h"

#include <stdio.h>
#include <string.h>

static bool result_ok(const PGresult *r)
{
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

static bool sqlstate_is(const PGresult *r, const char *code)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return state != NULL && strcmp(state, code) == 0;
}

/* True when r failed because the connection has no statement of that name (26000). */
static bool missing_statement(const PGresult *r)
{
    return sqlstate_is(r, "26000");
}

/* True when r failed because the statement's result columns changed since it was prepared
 * (0A000 "cached plan must not change result type", after a schema change such as a newer
 * instance's migration): checked before the statement runs, so preparing it again is safe. */
static bool stale_statement(const PGresult *r)
{
    return sqlstate_is(r, "0A000") && strstr(PQresultErrorMessage(r), "cached plan") != NULL;
}

/* Runs name on conn, preparing it first when conn does not have it (a new or reconnected
 * connection: the server answers 26000 and nothing ran) or again when its result columns
 * changed (0A000, nothing ran either). Returns the result when it succeeded; else NULL with
 * *failed set to the failed result (NULL when the connection itself failed), which the caller
 * must PQclear. */
static PGresult *exec_prepared(PGconn *conn, const char *name, const char *sql, int nparams,
                               const char *const *params, PGresult **failed)
{
    PGresult *r = PQexecPrepared(conn, name, nparams, params, NULL, NULL, 0);
    if (result_ok(r)) {
        return r;
    }
    bool stale = stale_statement(r);
    if ((missing_statement(r) || stale) && PQtransactionStatus(conn) == PQTRANS_IDLE) {
        PQclear(r);
        if (stale) {
            /* name is one of the code's constants, never input: no parameter can carry it. */
            char dealloc[160];
            snprintf(dealloc, sizeof dealloc, "DEALLOCATE %s", name);
            PQclear(PQexec(conn, dealloc));
        }
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
    if (r != NULL) {
        return r;
    }
    if (missing_statement(failed) && PQtransactionStatus(conn) == PQTRANS_IDLE) {
        /* Still not there right after preparing it (a pooler that does not keep a session's
         * statements, which cofid does not support; README). Nothing ran: send it
         * unprepared rather than fail every time. */
        PQclear(failed);
        return db_exec(conn, sql, nparams, params, err);
    }
    db_result_error(conn, failed, err);
    PQclear(failed);
    return NULL;
}
