/* SQL of the batch resource; every statement is parameterised. */
#include "db/batches_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "db/db.h"

/* RFC 3339 UTC with milliseconds, or NULL. */
#define TS(x) "to_char(" x " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* The columns batch_from_row reads, in this order (BATCH_NCOLS of them). The progress
 * subquery runs in the same statement as the row, so the counts are one snapshot. */
#define BATCH_COLS                                                                                 \
    "b.id, b.name, b.state, b.mode, b.file_count, b.metadata::text, " TS("b.created_at") ", " TS(  \
        "b.started_at") ", " TS("b.finished_at") ", "                                              \
                                                 "extract(epoch FROM clock_timestamp() - "         \
                                                 "b.started_at)::float8, "                         \
                                                 "(SELECT string_agg(p.stage || ' ' || p.status "  \
                                                 "|| ' ' || p.n, ',') "                            \
                                                 "FROM batch_progress p WHERE p.batch_id = b.id "  \
                                                 "AND p.n <> 0), b.priority"
#define BATCH_NCOLS 12

#define ID_TEXT_LEN 24

static void rollback(PGconn *conn)
{
    struct cofi_err ignored;
    (void)db_command(conn, "ROLLBACK", 0, NULL, &ignored);
}

static const char *value_or_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static json_t *text_or_null(const PGresult *r, int row, int col)
{
    const char *v = value_or_null(r, row, col);
    return v != NULL ? json_string(v) : json_null();
}

int batches_db_text_array(struct buf *out, const json_t *files)
{
    if (buf_append(out, "{", 1) != 0) {
        return -2;
    }
    size_t i;
    const json_t *f;
    json_array_foreach(files, i, f)
    {
        if (!json_is_string(f)) {
            return -1;
        }
        const char *s = json_string_value(f);
        size_t n = json_string_length(f);
        if (buf_append(out, i == 0 ? "\"" : ",\"", i == 0 ? 1 : 2) != 0) {
            return -2;
        }
        size_t start = 0;
        for (size_t k = 0; k < n; k++) {
            if (s[k] == '"' || s[k] == '\\') {
                if (buf_append(out, s + start, k - start) != 0 || buf_append(out, "\\", 1) != 0) {
                    return -2;
                }
                start = k;
            }
        }
        if (buf_append(out, s + start, n - start) != 0 || buf_append(out, "\"", 1) != 0) {
            return -2;
        }
    }
    return buf_append(out, "}", 1) != 0 ? -2 : 0;
}

int batches_db_parse_progress(const char *text, struct stage_counts out[STAGE_COUNT])
{
    const char *p = text;
    while (p != NULL && *p != '\0') {
        char *end;
        long stage = strtol(p, &end, 10);
        if (end == p || *end != ' ') {
            return -1;
        }
        p = end + 1;
        const char *sp = strchr(p, ' ');
        if (sp == NULL || sp - p >= 16) {
            return -1;
        }
        char status[16];
        memcpy(status, p, (size_t)(sp - p));
        status[sp - p] = '\0';
        int st = call_status_from_name(status);
        p = sp + 1;
        long long n = strtoll(p, &end, 10);
        if (end == p || st < 0 || stage < 0 || stage > STAGE_COUNT ||
            (*end != ',' && *end != '\0')) {
            return -1;
        }
        stage_counts_add(out, (int)stage, st, (int64_t)n);
        p = *end == ',' ? end + 1 : end;
    }
    return 0;
}

json_t *batches_db_eta(bool running, int64_t file_count, const struct stage_counts *llm2,
                       double elapsed_s)
{
    if (!running) {
        return json_null();
    }
    int64_t finished = file_count - llm2->pending - llm2->running;
    if (finished <= 0 || elapsed_s < 0) {
        return json_null();
    }
    double eta = (double)(file_count - finished) * elapsed_s / (double)finished;
    return json_real(eta);
}

json_t *batches_db_stages_json(const struct stage_counts counts[STAGE_COUNT])
{
    json_t *arr = json_array();
    if (arr == NULL) {
        return NULL;
    }
    for (int s = 0; s < STAGE_COUNT; s++) {
        const struct stage_counts *c = &counts[s];
        json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "name", stage_name(s), "pending",
                              (json_int_t)c->pending, "running", (json_int_t)c->running, "done",
                              (json_int_t)c->done, "failed", (json_int_t)c->failed, "skipped",
                              (json_int_t)c->skipped);
        if (o == NULL || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* jsonb prints big numbers in full; jansson refuses integers past 64 bits, so read those
 * as reals. */
static json_t *load_jsonb(const char *text)
{
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
    if (v == NULL) {
        v = json_loads(text, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
    }
    return v != NULL ? v : json_null();
}

/* Builds the batch object from the BATCH_COLS starting at column `col` of row `row`.
 * Returns a new reference, or NULL when out of memory. */
static json_t *batch_from_row(const PGresult *r, int row, int col)
{
    struct stage_counts counts[STAGE_COUNT];
    memset(counts, 0, sizeof counts);
    (void)batches_db_parse_progress(value_or_null(r, row, col + 10), counts);

    int64_t file_count = strtoll(PQgetvalue(r, row, col + 4), NULL, 10);
    const char *state = PQgetvalue(r, row, col + 2);
    const char *elapsed = value_or_null(r, row, col + 9);
    bool running = strcmp(state, "running") == 0 && elapsed != NULL;
    const char *meta = value_or_null(r, row, col + 5);

    json_t *o = json_object();
    if (o == NULL) {
        return NULL;
    }
    int rc = 0;
    rc |= json_object_set_new(o, "id", json_integer(strtoll(PQgetvalue(r, row, col), NULL, 10)));
    rc |= json_object_set_new(o, "name", text_or_null(r, row, col + 1));
    rc |= json_object_set_new(o, "state", json_string(state));
    rc |= json_object_set_new(o, "mode", json_string(PQgetvalue(r, row, col + 3)));
    rc |= json_object_set_new(o, "priority",
                              json_integer(strtoll(PQgetvalue(r, row, col + 11), NULL, 10)));
    rc |= json_object_set_new(o, "file_count", json_integer(file_count));
    rc |= json_object_set_new(o, "metadata", meta != NULL ? load_jsonb(meta) : json_null());
    rc |= json_object_set_new(o, "created_at", text_or_null(r, row, col + 6));
    rc |= json_object_set_new(o, "started_at", text_or_null(r, row, col + 7));
    rc |= json_object_set_new(o, "finished_at", text_or_null(r, row, col + 8));
    rc |= json_object_set_new(o, "stages", batches_db_stages_json(counts));
    rc |= json_object_set_new(o, "eta_seconds",
                              batches_db_eta(running, file_count, &counts[STAGE_LLM2],
                                             running ? strtod(elapsed, NULL) : 0.0));
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int nomem(struct cofi_err *err)
{
    return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
}

#define SQL_BATCH_GET "SELECT " BATCH_COLS " FROM batches b WHERE b.id = $1::bigint"

/* Reads one batch. in_tx: inside a transaction, where a statement not prepared yet must not
 * fail and abort it, so it is sent unprepared. */
static int batch_select(PGconn *conn, const char *id_text, bool in_tx, json_t **out,
                        struct cofi_err *err)
{
    const char *params[1] = {id_text};
    PGresult *r = in_tx ? db_exec(conn, SQL_BATCH_GET, 1, params, err)
                        : db_exec_prepared(conn, "cofi_batch_get", SQL_BATCH_GET, 1, params, err);
    if (r == NULL) {
        return err->code;
    }
    int rc = 0;
    if (PQntuples(r) == 0) {
        rc = cofi_err_set(err, COFI_E_NOT_FOUND, "no batch %s", id_text);
    } else {
        *out = batch_from_row(r, 0, 0);
        if (*out == NULL) {
            rc = nomem(err);
        }
    }
    PQclear(r);
    return rc;
}

int batches_db_get(PGconn *conn, int64_t id, json_t **out, struct cofi_err *err)
{
    *out = NULL;
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    return batch_select(conn, id_text, /* in_tx= */ false, out, err);
}

/* The rows of one list page, newest first: at most $2 of them, and none past the first that
 * reaches beyond the byte budget (the running size of name and metadata, plus an allowance
 * for the rest of each object) but one, read only to tell that more follow: the page is
 * bounded in bytes before it is read, not after. The last column is the running size of the
 * rows before each one. WINDOW_FILTER is the optional state condition. */
#define LIST_SIZE                                                                                  \
    "coalesce(octet_length(x.name), 0) + coalesce(octet_length(x.metadata::text), 0) + 512"
#define LIST_SQL(WINDOW_FILTER, BUDGET)                                                            \
    "SELECT " BATCH_COLS ", w.run - w.own FROM (SELECT v.*, lag(v.own, 1, 0) OVER ("               \
    "ORDER BY v.id DESC) AS prev_own FROM (SELECT x.id, " LIST_SIZE " AS own, sum(" LIST_SIZE      \
    ") OVER (ORDER BY x.id DESC) AS run FROM batches x WHERE x.id < $1::bigint" WINDOW_FILTER      \
    " ORDER BY x.id DESC LIMIT $2::integer) v) w JOIN batches b ON b.id = w.id "                   \
    "WHERE w.run - w.own - w.prev_own < " BUDGET " ORDER BY b.id DESC"

int batches_db_list(PGconn *conn, const struct batch_page_ask *ask, json_t **out,
                    struct cofi_err *err)
{
    *out = NULL;
    char cur[ID_TEXT_LEN];
    char lim[16];
    char budget[24];
    snprintf(cur, sizeof cur, "%" PRId64, ask->cursor > 0 ? ask->cursor : INT64_MAX);
    snprintf(lim, sizeof lim, "%d", ask->limit + 1);
    snprintf(budget, sizeof budget, "%zu", ask->max_bytes);
    PGresult *r;
    if (ask->state == NULL) {
        const char *params[3] = {cur, lim, budget};
        r = db_exec_prepared(conn, "cofi_batch_list", LIST_SQL("", "$3::bigint"), 3, params, err);
    } else {
        const char *params[4] = {cur, lim, ask->state, budget};
        r = db_exec_prepared(conn, "cofi_batch_list_state",
                             LIST_SQL(" AND x.state = $3", "$4::bigint"), 4, params, err);
    }
    if (r == NULL) {
        return err->code;
    }
    int rows = PQntuples(r);
    /* A last row that starts past the budget was read only to tell that more follow. */
    bool peek = rows > 0 && strtoull(PQgetvalue(r, rows - 1, BATCH_NCOLS), NULL, 10) >=
                                (unsigned long long)ask->max_bytes;
    int shown = peek ? rows - 1 : rows;
    shown = shown > ask->limit ? ask->limit : shown;
    bool more = peek || rows > ask->limit;
    json_t *arr = json_array();
    int rc = arr != NULL ? 0 : -1;
    for (int i = 0; i < shown && rc == 0; i++) {
        rc = json_array_append_new(arr, batch_from_row(r, i, 0));
    }
    json_t *next = more ? json_string(PQgetvalue(r, shown - 1, 0)) : json_null();
    PQclear(r);
    return db_json_page("batches", arr, rc, next, out, err);
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
    return *out != NULL ? 0 : nomem(err);
}

int batches_db_find_idempotent(PGconn *conn, const char *key, const char *canonical, char hash[65],
                               json_t **out, struct cofi_err *err)
{
    *out = NULL;
    const char *params[2] = {canonical, key};
    PGresult *r = db_exec(conn,
                          "WITH h AS (SELECT encode(sha256(convert_to($1::text, 'UTF8')), 'hex') "
                          "AS hash) "
                          "SELECT h.hash, b.request_hash IS NOT DISTINCT FROM h.hash, " BATCH_COLS
                          " FROM h LEFT JOIN batches b ON b.idempotency_key = $2",
                          2, params, err);
    if (r == NULL) {
        return err->code;
    }
    int rc;
    if (PQntuples(r) != 1 || PQgetlength(r, 0, 0) != 64) {
        rc = cofi_err_set(err, COFI_E_INTERNAL, "unexpected result of the idempotency look-up");
    } else {
        memcpy(hash, PQgetvalue(r, 0, 0), 65);
        rc = idempotent_result(r, 1, 2, out, err);
    }
    PQclear(r);
    return rc;
}

static int existing_by_key(PGconn *conn, const struct batch_new *b, json_t **out,
                           struct cofi_err *err)
{
    const char *params[2] = {b->idempotency_key, b->request_hash};
    PGresult *r = db_exec(conn,
                          "SELECT b.request_hash IS NOT DISTINCT FROM $2, " BATCH_COLS
                          " FROM batches b WHERE b.idempotency_key = $1",
                          2, params, err);
    if (r == NULL) {
        return err->code;
    }
    int rc = idempotent_result(r, 0, 1, out, err);
    if (rc == 0 && *out == NULL) {
        rc = cofi_err_set(err, COFI_E_INTERNAL, "the batch of an Idempotency-Key vanished");
    }
    PQclear(r);
    return rc;
}

/* Inserts the calls of batch id_text from the array literal `files`, and runs b->check while
 * the server works on it. Returns 0, the check's error, or the insert's. */
static int insert_calls_checking(PGconn *conn, const char *id_text, const char *files,
                                 const struct batch_new *b, struct cofi_err *err)
{
    const char *params[2] = {id_text, files};
    if (!PQsendQueryParams(conn,
                           "INSERT INTO calls (batch_id, seq, file) SELECT $1::bigint, ord - 1, f "
                           "FROM unnest($2::text[]) WITH ORDINALITY AS t(f, ord)",
                           2, NULL, params, NULL, NULL, 0)) {
        return db_result_error(conn, NULL, err);
    }
    int64_t t0 = clock_mono_us();
    int check_rc = b->check != NULL ? b->check(b->check_ctx, err) : 0;
    int64_t t_checked = clock_mono_us();
    if (check_rc != 0) {
        /* The batch is refused: stop the insert now rather than let it run to its end. */
        PGcancel *cancel = PQgetCancel(conn);
        if (cancel != NULL) {
            char why[256];
            (void)PQcancel(cancel, why, (int)sizeof why);
            PQfreeCancel(cancel);
        }
    }
    struct cofi_err db_err;
    cofi_err_clear(&db_err);
    int db_rc = 0;
    PGresult *r;
    while ((r = PQgetResult(conn)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (db_rc == 0 && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            db_rc = db_result_error(conn, r, &db_err);
        }
        PQclear(r);
    }
    log_debug("batch %s: files checked in %" PRId64 " ms, calls stored %" PRId64 " ms later",
              id_text, (t_checked - t0) / 1000, (clock_mono_us() - t_checked) / 1000);
    if (check_rc != 0) {
        return check_rc;
    }
    if (db_rc != 0) {
        *err = db_err;
    }
    return db_rc;
}

int batches_db_create(PGconn *conn, const struct batch_new *b, json_t **out, bool *created,
                      struct cofi_err *err)
{
    *out = NULL;
    *created = false;
    struct buf arr;
    buf_init(&arr, SIZE_MAX / 4);
    int rc = batches_db_text_array(&arr, b->files);
    if (rc != 0) {
        buf_free(&arr);
        return rc == -1 ? cofi_err_set(err, COFI_E_BAD_REQUEST, "files must be strings")
                        : nomem(err);
    }
    char count[ID_TEXT_LEN];
    snprintf(count, sizeof count, "%zu", json_array_size(b->files));

    PGresult *r = NULL;
    rc = db_command(conn, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        buf_free(&arr);
        return rc;
    }
    char priority[16];
    snprintf(priority, sizeof priority, "%d", b->priority > 0 ? b->priority : 1);
    const char *bp[7] = {b->name,         b->mode, count, b->metadata, b->idempotency_key,
                         b->request_hash, priority};
    r = db_exec(conn,
                "INSERT INTO batches (name, mode, file_count, metadata, idempotency_key, "
                "request_hash, priority) VALUES ($1, $2, $3::integer, $4::jsonb, $5, $6, "
                "$7::integer) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                7, bp, err);
    if (r == NULL) {
        rc = err->code;
        goto fail;
    }
    if (PQntuples(r) == 0) {
        /* Another request with this key won the race: answer with its batch. */
        PQclear(r);
        r = NULL;
        rollback(conn);
        buf_free(&arr);
        return existing_by_key(conn, b, out, err);
    }
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    r = NULL;

    rc = insert_calls_checking(conn, id_text, arr.data, b, err);
    buf_free(&arr);
    if (rc != 0) {
        goto fail;
    }
    rc = batch_select(conn, id_text, /* in_tx= */ true, out, err);
    if (rc != 0) {
        goto fail;
    }
    rc = db_command(conn, "COMMIT", 0, NULL, err);
    if (rc != 0) {
        goto fail;
    }
    *created = true;
    return 0;

fail:
    PQclear(r);
    buf_free(&arr);
    json_decref(*out);
    *out = NULL;
    rollback(conn);
    return rc;
}

int batches_db_run(PGconn *conn, int64_t id, const char *mode, json_t **out, struct cofi_err *err)
{
    *out = NULL;
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    const char *params[2] = {id_text, mode};
    PGresult *r = db_exec(conn,
                          "UPDATE batches AS b SET state = 'running', mode = coalesce($2, b.mode), "
                          "started_at = coalesce(b.started_at, now()) "
                          "WHERE b.id = $1::bigint AND b.state = 'created' RETURNING " BATCH_COLS,
                          2, params, err);
    if (r == NULL) {
        return err->code;
    }
    if (PQntuples(r) == 1) {
        *out = batch_from_row(r, 0, 0);
        PQclear(r);
        return *out != NULL ? 0 : nomem(err);
    }
    PQclear(r);

    /* Not created (any more): answer from its current state. */
    json_t *batch;
    int rc = batch_select(conn, id_text, /* in_tx= */ false, &batch, err);
    if (rc != 0) {
        return rc;
    }
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
        rc = err->code;
        goto fail;
    }
    int changed = PQntuples(r);
    PQclear(r);
    if (changed == 0) {
        rollback(conn);
        json_t *batch;
        rc = batch_select(conn, id_text, /* in_tx= */ false, &batch, err);
        if (rc != 0) {
            return rc;
        }
        const char *state = json_string_value(json_object_get(batch, "state"));
        if (strcmp(state, "cancelled") != 0) {
            /* The message first: state points into batch. */
            cofi_err_set(err, COFI_E_CONFLICT, "batch %s is %s and can't be cancelled", id_text,
                         state);
            json_decref(batch);
            return err->code;
        }
        *out = batch;
        return 0;
    }
    rc = db_command(conn,
                    "UPDATE calls SET status = 'cancelled' "
                    "WHERE batch_id = $1::bigint AND status = 'pending'",
                    1, params, err);
    if (rc != 0) {
        goto fail;
    }
    /* A new statement, so calls claimed meanwhile are seen as running. */
    rc = db_command(conn,
                    "UPDATE batches SET finished_at = now() WHERE id = $1::bigint "
                    "AND finished_at IS NULL AND NOT EXISTS (SELECT 1 FROM batch_progress p "
                    "WHERE p.batch_id = $1::bigint AND p.status = 'running' AND p.n > 0)",
                    1, params, err);
    if (rc != 0) {
        goto fail;
    }
    rc = batch_select(conn, id_text, /* in_tx= */ true, out, err);
    if (rc != 0) {
        goto fail;
    }
    rc = db_command(conn, "COMMIT", 0, NULL, err);
    if (rc != 0) {
        goto fail;
    }
    return 0;

fail:
    json_decref(*out);
    *out = NULL;
    rollback(conn);
    return rc;
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

/* Answers an UPDATE ... RETURNING BATCH_COLS: one row gives *out; none gives NOT_FOUND. */
static int batch_returned(PGresult *r, const char *id_text, json_t **out, struct cofi_err *err)
{
    int rc = 0;
    if (PQntuples(r) == 0) {
        rc = cofi_err_set(err, COFI_E_NOT_FOUND, "no batch %s", id_text);
    } else {
        *out = batch_from_row(r, 0, 0);
        rc = *out != NULL ? 0 : nomem(err);
    }
    PQclear(r);
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
    PGresult *r = db_exec(conn,
                          "UPDATE batches AS b SET state = $3 "
                          "WHERE b.id = $1::bigint AND b.state = $2 RETURNING " BATCH_COLS,
                          3, params, err);
    if (r == NULL) {
        return err->code;
    }
    if (PQntuples(r) == 1) {
        return batch_returned(r, id_text, out, err);
    }
    PQclear(r);
    json_t *batch;
    int rc = batch_select(conn, id_text, /* in_tx= */ false, &batch, err);
    if (rc != 0) {
        return rc;
    }
    cofi_err_set(err, COFI_E_CONFLICT, "batch %s is %s, not %s", id_text,
                 json_string_value(json_object_get(batch, "state")), from);
    json_decref(batch);
    return err->code;
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

int batches_db_delete(PGconn *conn, int64_t id, struct cofi_err *err)
{
    char id_text[ID_TEXT_LEN];
    snprintf(id_text, sizeof id_text, "%" PRId64, id);
    const char *params[1] = {id_text};
    int rc = db_command(conn, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        return rc;
    }
    char state[32];
    bool finished = false;
    rc = lock_batch(conn, id_text, state, &finished, err);
    if (rc != 0) {
        goto fail;
    }
    bool final = strcmp(state, "completed") == 0 || strcmp(state, "completed_with_errors") == 0 ||
                 strcmp(state, "cancelled") == 0;
    if (!final || !finished) {
        rc = cofi_err_set(err, COFI_E_CONFLICT,
                          "batch %s is %s%s: only a batch that has ended can be deleted", id_text,
                          state, final ? " with work still in flight" : "");
        goto fail;
    }
    static const char *const steps[] = {
        ("DELETE FROM call_stages s USING calls c "
         "WHERE c.batch_id = $1::bigint AND s.call_id = c.id"),
        "DELETE FROM calls WHERE batch_id = $1::bigint",
        "DELETE FROM batch_progress WHERE batch_id = $1::bigint",
        "DELETE FROM batches WHERE id = $1::bigint",
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0] && rc == 0; i++) {
        rc = db_command(conn, steps[i], 1, params, err);
    }
    if (rc == 0) {
        rc = db_command(conn, "COMMIT", 0, NULL, err);
    }
    if (rc == 0) {
        return 0;
    }

fail:
    rollback(conn);
    return rc;
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
    int rc = db_command(conn, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        return rc;
    }
    char state[32];
    bool finished = false;
    rc = lock_batch(conn, id_text, state, &finished, err);
    if (rc != 0) {
        goto fail;
    }
    if (strcmp(state, "running") != 0 && strcmp(state, "completed_with_errors") != 0 &&
        strcmp(state, "completed") != 0) {
        rc = cofi_err_set(err, COFI_E_CONFLICT,
                          "batch %s is %s: only a running or completed batch can be retried",
                          id_text, state);
        goto fail;
    }
    rc = retry_calls(conn, id_text, sel, retried, err);
    if (rc == 0 && *retried == 0) {
        rc = cofi_err_set(err, COFI_E_INVALID, "batch %s has no failed call that matches", id_text);
    }
    if (rc == 0) {
        rc = db_command(conn,
                        "UPDATE batches SET state = 'running', finished_at = NULL, "
                        "started_at = coalesce(started_at, now()) WHERE id = $1::bigint",
                        1, params, err);
    }
    if (rc == 0) {
        rc = batch_select(conn, id_text, /* in_tx= */ true, out, err);
    }
    if (rc == 0) {
        rc = db_command(conn, "COMMIT", 0, NULL, err);
    }
    if (rc == 0) {
        return 0;
    }

fail:
    json_decref(*out);
    *out = NULL;
    rollback(conn);
    return rc;
}
