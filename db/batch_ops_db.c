/* The SQL of the operations on a batch; every statement is parameterised. */
#include "db/batch_ops_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "db/batch_row.h"
#include "db/batch_tx.h"
#include "db/db.h"
#include "db/webhooks_db.h"

/* Runs `sql`, a conditional UPDATE ... RETURNING BATCH_COLS of batch params[0]: 0 with *out
 * the batch when it changed it; else 0 with *current the batch as it is now (read outside
 * any transaction); or an error with both NULL. */
static int update_or_current(PGconn *conn, const char *sql, int nparams, const char *const *params,
                             json_t **out, json_t **current, struct cofi_err *err)
{
    *current = NULL;
    PGresult *r = db_exec(conn, sql, nparams, params, err);
    if (r == NULL) {
        return err->code;
    }
    if (PQntuples(r) == 1) {
        return batch_returned(r, params[0], out, err);
    }
    PQclear(r);
    return batch_select(conn, params[0], /* in_tx= */ false, current, err);
}

int batches_db_run(PGconn *conn, int64_t id, const char *mode, json_t **out, struct cofi_err *err)
{
    *out = NULL;
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    const char *params[2] = {id_text, mode};
    json_t *batch;
    int rc =
        update_or_current(conn,
                          "UPDATE batches AS b SET state = 'running', mode = coalesce($2, b.mode), "
                          "started_at = coalesce(b.started_at, now()) "
                          "WHERE b.id = $1::bigint AND b.state = 'created' RETURNING " BATCH_COLS,
                          2, params, out, &batch, err);
    if (rc != 0 || batch == NULL) {
        return rc;
    }
    /* Not created (any more): answer from its current state. */
    const char *state = json_string_value(json_object_get(batch, "state"));
    const char *cur_mode = json_string_value(json_object_get(batch, "mode"));
    if (strcmp(state, "running") != 0) {
        rc = cofi_err_set(err, COFI_E_CONFLICT, "batch %s is %s and can't be run", id_text, state);
    } else if (mode != NULL && strcmp(mode, cur_mode) != 0) {
        rc = cofi_err_set(err, COFI_E_CONFLICT, "batch %s is already running in %s mode", id_text,
                          cur_mode);
    }
    if (rc != 0) {
        json_decref(batch);
        return rc;
    }
    *out = batch;
    return 0;
}

static bool retryable(const struct cofi_err *err)
{
    return strcmp(err->sqlstate, "40P01") == 0 || strcmp(err->sqlstate, "40001") == 0;
}

/* Answers a cancel of batch id_text that changed nothing (outside any transaction): an
 * already cancelled batch as it is, else COFI_E_CONFLICT. */
static int cancel_unchanged(PGconn *conn, const char *id_text, json_t **out, struct cofi_err *err)
{
    json_t *batch;
    int rc = batch_select(conn, id_text, /* in_tx= */ false, &batch, err);
    if (rc != 0) {
        return rc;
    }
    const char *state = json_string_value(json_object_get(batch, "state"));
    if (strcmp(state, "cancelled") != 0) {
        /* The message first: state points into batch. */
        cofi_err_set(err, COFI_E_CONFLICT, "batch %s is %s and can't be cancelled", id_text, state);
        json_decref(batch);
        return err->code;
    }
    *out = batch;
    return 0;
}

/* One attempt of batches_db_cancel. */
static int cancel_once(PGconn *conn, const char *id_text, json_t **out, struct cofi_err *err)
{
    const char *params[1] = {id_text};
    int rc = db_command(conn, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        return rc;
    }
    PGresult *r = db_exec(conn,
                          "UPDATE batches SET state = 'cancelled' WHERE id = $1::bigint "
                          "AND state IN ('created', 'running', 'paused') RETURNING id",
                          1, params, err);
    if (r == NULL) {
        return batch_tx_end(conn, id_text, err->code, out, err);
    }
    int changed = PQntuples(r);
    PQclear(r);
    if (changed == 0) {
        batch_rollback(conn);
        return cancel_unchanged(conn, id_text, out, err);
    }
    rc = db_command(conn,
                    "UPDATE calls SET status = 'cancelled' "
                    "WHERE batch_id = $1::bigint AND status = 'pending'",
                    1, params, err);
    if (rc == 0) {
        /* A new statement, so calls claimed meanwhile are seen as running. A batch that ends
         * here queues its webhook delivery in the same statement. */
        rc = db_command(conn,
                        "WITH f AS (UPDATE batches SET finished_at = now() WHERE id = $1::bigint "
                        "AND finished_at IS NULL AND NOT EXISTS (SELECT 1 FROM batch_progress p "
                        "WHERE p.batch_id = $1::bigint AND p.status = 'running' AND p.n > 0) "
                        "RETURNING id, callback_url) " WEBHOOKS_DB_QUEUE_FROM("f"),
                        1, params, err);
    }
    return batch_tx_end(conn, id_text, rc, out, err);
}

int batches_db_cancel(PGconn *conn, int64_t id, json_t **out, struct cofi_err *err)
{
    *out = NULL;
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    int rc = 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        rc = cancel_once(conn, id_text, out, err);
        if (rc == 0 || !retryable(err)) {
            break;
        }
    }
    return rc;
}

int batches_db_update(PGconn *conn, int64_t id, const struct batch_change *ch, json_t **out,
                      struct cofi_err *err)
{
    *out = NULL;
    char id_text[ID_TEXT_LEN];
    char prio[16];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    snprintf(prio, sizeof prio, "%d", ch->priority);
    const char *params[4] = {id_text, ch->priority > 0 ? prio : NULL, ch->set_name ? "t" : "f",
                             ch->name};
    PGresult *r = db_exec(conn,
                          "UPDATE batches AS b SET priority = coalesce($2::integer, b.priority), "
                          "name = CASE WHEN $3::boolean THEN $4 ELSE b.name END "
                          "WHERE b.id = $1::bigint RETURNING " BATCH_COLS,
                          4, params, err);
    if (r == NULL) {
        return err->code;
    }
    return batch_returned(r, id_text, out, err);
}

int batches_db_transition(PGconn *conn, int64_t id, const char *from, const char *to, json_t **out,
                          struct cofi_err *err)
{
    *out = NULL;
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    const char *params[3] = {id_text, from, to};
    json_t *batch;
    int rc = update_or_current(conn,
                               "UPDATE batches AS b SET state = $3 "
                               "WHERE b.id = $1::bigint AND b.state = $2 RETURNING " BATCH_COLS,
                               3, params, out, &batch, err);
    if (rc != 0 || batch == NULL) {
        return rc;
    }
    cofi_err_set(err, COFI_E_CONFLICT, "batch %s is %s, not %s", id_text,
                 json_string_value(json_object_get(batch, "state")), from);
    json_decref(batch);
    return err->code;
}

/* Removes the rows of batch id_text inside the open transaction. */
static int delete_rows(PGconn *conn, const char *id_text, struct cofi_err *err)
{
    const char *params[1] = {id_text};
    static const char *const steps[] = {
        ("DELETE FROM call_stages s USING calls c "
         "WHERE c.batch_id = $1::bigint AND s.call_id = c.id"),
        "DELETE FROM calls WHERE batch_id = $1::bigint",
        "DELETE FROM batch_progress WHERE batch_id = $1::bigint",
        "DELETE FROM batches WHERE id = $1::bigint",
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0] && rc == 0; i++) {
        rc = db_command(conn, steps[i], 1, params, err);
    }
    return rc;
}

int batches_db_delete(PGconn *conn, int64_t id, struct cofi_err *err)
{
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    char state[32];
    bool finished = false;
    int rc = batch_begin_locked(conn, id_text, state, &finished, err);
    if (rc != 0) {
        return rc;
    }
    bool final = strcmp(state, "completed") == 0 || strcmp(state, "completed_with_errors") == 0 ||
                 strcmp(state, "cancelled") == 0;
    if (!final || !finished) {
        rc = cofi_err_set(err, COFI_E_CONFLICT,
                          "batch %s is %s%s: only a batch that has ended can be deleted", id_text,
                          state, final ? " with work still in flight" : "");
    }
    if (rc == 0) {
        rc = batch_freeze_deliveries(conn, id_text, err);
    }
    if (rc == 0) {
        rc = delete_rows(conn, id_text, err);
    }
    return batch_tx_end(conn, id_text, rc, NULL, err);
}

/* The failed calls of batch id_text chosen by sel go back to pending at the stage they
 * failed (inside the open transaction). Returns 0 with *n the number of calls, or an error. */
static int retry_calls(PGconn *conn, const char *id_text, const struct retry_select *sel,
                       int64_t *n, struct cofi_err *err)
{
    const char *params[3] = {id_text, sel->stages, sel->calls};
    PGresult *r = db_exec(
        conn,
        "WITH f AS (SELECT c.id, c.stage FROM calls c WHERE c.batch_id = $1::bigint "
        "  AND c.status = 'failed' AND ($2::smallint[] IS NULL OR c.stage = ANY($2::smallint[])) "
        "  AND ($3::bigint[] IS NULL OR c.id = ANY($3::bigint[])) FOR UPDATE), "
        "d AS (DELETE FROM call_stages s USING f WHERE s.call_id = f.id AND s.stage = f.stage "
        "  AND s.state = 'failed') "
        "UPDATE calls c SET status = 'pending', attempts = 0, last_error = NULL, "
        "  not_before = NULL, lease_owner = NULL, claim_token = NULL, stage_started_at = NULL "
        "FROM f WHERE c.id = f.id RETURNING c.id",
        3, params, err);
    if (r == NULL) {
        return err->code;
    }
    *n = PQntuples(r);
    PQclear(r);
    return 0;
}

int batches_db_retry(PGconn *conn, int64_t id, const struct retry_select *sel, json_t **out,
                     int64_t *retried, struct cofi_err *err)
{
    *out = NULL;
    *retried = 0;
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    const char *params[1] = {id_text};
    char state[32];
    bool finished = false;
    int rc = batch_begin_locked(conn, id_text, state, &finished, err);
    if (rc != 0) {
        return rc;
    }
    if (strcmp(state, "running") != 0 && strcmp(state, "completed_with_errors") != 0 &&
        strcmp(state, "completed") != 0) {
        rc = cofi_err_set(err, COFI_E_CONFLICT,
                          "batch %s is %s: only a running or completed batch can be retried",
                          id_text, state);
    }
    if (rc == 0) {
        rc = batch_freeze_deliveries(conn, id_text, err);
    }
    if (rc == 0) {
        rc = retry_calls(conn, id_text, sel, retried, err);
    }
    if (rc == 0 && *retried == 0) {
        rc = cofi_err_set(err, COFI_E_INVALID, "batch %s has no failed call that matches", id_text);
    }
    if (rc == 0) {
        rc = db_command(conn,
                        "UPDATE batches SET state = 'running', finished_at = NULL, "
                        "started_at = coalesce(started_at, now()) WHERE id = $1::bigint",
                        1, params, err);
    }
    return batch_tx_end(conn, id_text, rc, out, err);
}
