/* The transaction of a batch write: begin and lock, freeze deliveries, read and commit. */
#include "db/batch_tx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/batch_row.h"
#include "db/db.h"

void batch_rollback(PGconn *conn)
{
    struct cofi_err ignored;
    (void)db_command(conn, "ROLLBACK", 0, NULL, &ignored);
}

/* Locks batch id_text's row inside the open transaction and copies its state (and whether
 * finished_at is set) out. Returns 0, COFI_E_NOT_FOUND or a database error. */
static int lock_batch(PGconn *conn, const char *id_text, char state[32], bool *finished,
                      struct cofi_err *err)
{
    const char *params[1] = {id_text};
    PGresult *r = db_exec(conn,
                          "SELECT state, finished_at IS NOT NULL FROM batches "
                          "WHERE id = $1::bigint FOR UPDATE",
                          1, params, err);
    if (r == NULL) {
        return err->code;
    }
    int rc = 0;
    if (PQntuples(r) == 0) {
        rc = cofi_err_set(err, COFI_E_NOT_FOUND, "no batch %s", id_text);
    } else {
        snprintf(state, 32, "%s", PQgetvalue(r, 0, 0));
        *finished = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
    }
    PQclear(r);
    return rc;
}

int batch_begin_locked(PGconn *conn, const char *id_text, char state[32], bool *finished,
                       struct cofi_err *err)
{
    int rc = db_command(conn, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        return rc;
    }
    rc = lock_batch(conn, id_text, state, finished, err);
    if (rc != 0) {
        batch_rollback(conn);
    }
    return rc;
}

int batch_freeze_deliveries(PGconn *conn, const char *id_text, struct cofi_err *err)
{
    const char *params[2] = {id_text, NULL};
    PGresult *r = db_exec(conn,
                          "SELECT 1 FROM webhook_deliveries WHERE batch_id = $1::bigint "
                          "AND body IS NULL LIMIT 1",
                          1, params, err);
    if (r == NULL) {
        return err->code;
    }
    bool any = PQntuples(r) > 0;
    PQclear(r);
    if (!any) {
        return 0;
    }
    json_t *batch = NULL;
    int rc = batch_select(conn, id_text, /* in_tx= */ true, &batch, err);
    if (rc != 0) {
        return rc;
    }
    char *text = json_dumps(batch, JSON_COMPACT);
    json_decref(batch);
    if (text == NULL) {
        return batch_nomem(err);
    }
    params[1] = text;
    rc = db_command(conn,
                    "UPDATE webhook_deliveries SET body = $2 WHERE batch_id = $1::bigint "
                    "AND body IS NULL",
                    2, params, err);
    free(text);
    return rc;
}

int batch_tx_end(PGconn *conn, const char *id_text, int rc, json_t **out, struct cofi_err *err)
{
    if (rc == 0 && out != NULL) {
        rc = batch_select(conn, id_text, /* in_tx= */ true, out, err);
    }
    if (rc == 0) {
        rc = db_command(conn, "COMMIT", 0, NULL, err);
    }
    if (rc == 0) {
        return 0;
    }
    if (out != NULL) {
        json_decref(*out);
        *out = NULL;
    }
    batch_rollback(conn);
    return rc;
}
