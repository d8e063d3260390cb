/* The SQL that creates a batch: Idempotency-Key look-up, insert, COPY of the calls. */
#include "db/batch_create_db.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "db/batch_row.h"
#include "db/batch_tx.h"
#include "db/db.h"

int batches_db_copy_line(struct buf *out, const char *batch_id, size_t seq, const char *file,
                         size_t len)
{
    if (buf_printf(out, "%s\t%zu\t", batch_id, seq) != 0) {
        return -2;
    }
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)file[i];
        if (c >= 0x20 && c != '\\' && c != 0x7f) {
            continue;
        }
        char esc[8];
        snprintf(esc, sizeof esc, c == '\\' ? "\\\\" : "\\%03o", (unsigned)c);
        if (buf_append(out, file + run, i - run) != 0 || buf_append(out, esc, strlen(esc)) != 0) {
            return -2;
        }
        run = i + 1;
    }
    if (buf_append(out, file + run, len - run) != 0 || buf_append(out, "\n", 1) != 0) {
        return -2;
    }
    return 0;
}

/* Reads a batch's row and whether its request_hash equals the hash in column 0/1 layout of
 * find_idempotent; shared result handling for both idempotency look-ups. Returns 0 with
 * *out NULL (no batch), 0 with *out the batch (same hash) or COFI_E_CONFLICT. */
static int idempotent_result(const PGresult *r, int same_col, int batch_col, json_t **out,
                             struct cofi_err *err)
{
    if (PQntuples(r) == 0 || PQgetisnull(r, 0, batch_col)) {
        return 0;
    }
    if (strcmp(PQgetvalue(r, 0, same_col), "t") != 0) {
        return cofi_err_set(err, COFI_E_CONFLICT,
                            "this Idempotency-Key was used for another request (batch %s)",
                            PQgetvalue(r, 0, batch_col));
    }
    *out = batch_from_row(r, 0, batch_col);
    return *out != NULL ? 0 : batch_nomem(err);
}

/* Reads the batch with idempotency key `key` and answers as idempotent_result. */
static int select_by_key(PGconn *conn, const char *key, const char *hash, json_t **out,
                         struct cofi_err *err)
{
    const char *params[2] = {key, hash};
    PGresult *r = db_exec(conn,
                          "SELECT b.request_hash IS NOT DISTINCT FROM $2, " BATCH_COLS
                          " FROM batches b WHERE b.idempotency_key = $1",
                          2, params, err);
    if (r == NULL) {
        return err->code;
    }
    int rc = idempotent_result(r, 0, 1, out, err);
    PQclear(r);
    return rc;
}

int batches_db_find_idempotent(PGconn *conn, const char *key, const char *hash, json_t **out,
                               struct cofi_err *err)
{
    *out = NULL;
    return select_by_key(conn, key, hash, out, err);
}

static int existing_by_key(PGconn *conn, const struct batch_new *b, json_t **out,
                           struct cofi_err *err)
{
    int rc = select_by_key(conn, b->idempotency_key, b->request_hash, out, err);
    if (rc == 0 && *out == NULL) {
        rc = cofi_err_set(err, COFI_E_INTERNAL, "the batch of an Idempotency-Key vanished");
    }
    return rc;
}

/* How many bytes of COPY lines are sent at a time. */
#define COPY_CHUNK (256 * 1024)

/* Ends the COPY (with an error message to abort it) and reads its result. Returns 0 or the
 * database's error. */
static int copy_end(PGconn *conn, const char *abort_msg, struct cofi_err *err)
{
    int rc = 0;
    if (PQputCopyEnd(conn, abort_msg) != 1) {
        rc = db_result_error(conn, NULL, err);
    }
    PGresult *r;
    while ((r = PQgetResult(conn)) != NULL) {
        if (rc == 0 && abort_msg == NULL && PQresultStatus(r) != PGRES_COMMAND_OK) {
            rc = db_result_error(conn, r, err);
        }
        PQclear(r);
    }
    return rc;
}

/* Streams the calls of batch id_text with COPY, one line per file as b->next_file gives
 * them: the database stores each chunk while the next files are read and checked. Returns
 * 0, next_file's error, or the database's. */
static int copy_calls(PGconn *conn, const char *id_text, const struct batch_new *b,
                      struct cofi_err *err)
{
    PGresult *r = db_exec_copy_in(conn, "COPY calls (batch_id, seq, file) FROM STDIN", err);
    if (r == NULL) {
        return err->code;
    }
    PQclear(r);
    struct buf chunk;
    buf_init(&chunk, SIZE_MAX / 4);
    int rc = 0;
    const char *file;
    size_t len;
    size_t copied = 0;
    for (size_t seq = 0; rc == 0; seq++) {
        int got = b->next_file(b->files_ctx, &file, &len, err);
        if (got != 1) {
            rc = got;
            break;
        }
        copied++;
        if (batches_db_copy_line(&chunk, id_text, seq, file, len) != 0) {
            rc = batch_nomem(err);
        } else if (chunk.len >= COPY_CHUNK) {
            if (PQputCopyData(conn, chunk.data, (int)chunk.len) != 1) {
                rc = db_result_error(conn, NULL, err);
            }
            chunk.len = 0;
        }
    }
    if (rc == 0 && chunk.len > 0 && PQputCopyData(conn, chunk.data, (int)chunk.len) != 1) {
        rc = db_result_error(conn, NULL, err);
    }
    if (rc == 0 && copied != b->file_count) {
        rc = cofi_err_set(err, COFI_E_INTERNAL, "%zu files copied of %zu", copied, b->file_count);
    }
    buf_free(&chunk);
    if (rc != 0) {
        struct cofi_err ignored;
        (void)copy_end(conn, "the batch was refused", &ignored);
        return rc;
    }
    return copy_end(conn, NULL, err);
}

/* Begins the transaction of a create of `count` files. Returns 0 inside it, or an error with
 * no transaction left open. */
static int begin_create(PGconn *conn, const char *count, struct cofi_err *err)
{
    int rc = db_command(conn, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        return rc;
    }
    /* The COPY of a big batch is one statement whose work grows with its files (about 12 s
     * for a million on two busy cores): it gets the statement limit plus 0.1 ms a file. */
    const char *tp[1] = {count};
    rc = db_command(conn,
                    "SELECT set_config('statement_timeout', CASE WHEN "
                    "current_setting('statement_timeout')::interval = interval '0' THEN '0' "
                    "ELSE (extract(epoch FROM current_setting('statement_timeout')::interval) "
                    "* 1000 + $1::bigint / 10)::bigint::text END, true)",
                    1, tp, err);
    if (rc != 0) {
        batch_rollback(conn);
    }
    return rc;
}

int batches_db_create(PGconn *conn, const struct batch_new *b, json_t **out, bool *created,
                      struct cofi_err *err)
{
    *out = NULL;
    *created = false;
    char count[ID_TEXT_LEN];
    snprintf(count, sizeof count, "%zu", b->file_count);
    int rc = begin_create(conn, count, err);
    if (rc != 0) {
        return rc;
    }
    char priority[16];
    snprintf(priority, sizeof priority, "%d", b->priority > 0 ? b->priority : 1);
    const char *bp[8] = {b->name,         b->mode,  count,          b->metadata, b->idempotency_key,
                         b->request_hash, priority, b->callback_url};
    PGresult *r =
        db_exec(conn,
                "INSERT INTO batches (name, mode, file_count, metadata, idempotency_key, "
                "request_hash, priority, callback_url) VALUES ($1, $2, $3::integer, $4::jsonb, "
                "$5, $6, $7::integer, $8) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                8, bp, err);
    if (r == NULL) {
        batch_rollback(conn);
        return err->code;
    }
    if (PQntuples(r) == 0) {
        /* Another request with this key won the race: answer with its batch. */
        PQclear(r);
        batch_rollback(conn);
        return existing_by_key(conn, b, out, err);
    }
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    rc = copy_calls(conn, id_text, b, err);
    rc = batch_tx_end(conn, id_text, rc, out, err);
    *created = rc == 0;
    return rc;
}
