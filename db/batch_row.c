/* The batch object from a batch row: progress counts, stages, eta, callback. */
#include "db/batch_row.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"

static const char *value_or_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static json_t *text_or_null(const PGresult *r, int row, int col)
{
    const char *v = value_or_null(r, row, col);
    return v != NULL ? json_string(v) : json_null();
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

/* The batch object's "callback": null without a callback_url; else the url, the state of
 * its latest delivery ("waiting": the batch has not ended yet, "pending", "delivered") and
 * that delivery's figures. Returns a new reference, or NULL when out of memory. */
static json_t *callback_from_row(const PGresult *r, int row, int col)
{
    const char *url = value_or_null(r, row, col);
    if (url == NULL) {
        return json_null();
    }
    const char *last = value_or_null(r, row, col + 1);
    json_t *o = last != NULL ? json_loads(last, 0, NULL) : NULL;
    if (o == NULL) {
        o = json_pack("{s:n, s:i, s:n, s:n, s:n, s:n}", "id", "attempts", 0, "last_status",
                      "last_error", "delivered_at", "next_attempt_at");
    }
    if (o == NULL) {
        return NULL;
    }
    const char *state = last == NULL                                       ? "waiting"
                        : json_is_null(json_object_get(o, "delivered_at")) ? "pending"
                                                                           : "delivered";
    if (json_object_set_new(o, "url", json_string(url)) != 0 ||
        json_object_set_new(o, "state", json_string(state)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Builds the batch object from the BATCH_COLS starting at column `col` of row `row`.
 * Returns a new reference, or NULL when out of memory. */
json_t *batch_from_row(const PGresult *r, int row, int col)
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
    rc |= json_object_set_new(o, "callback", callback_from_row(r, row, col + 12));
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int batch_nomem(struct cofi_err *err)
{
    return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
}

#define SQL_BATCH_GET "SELECT " BATCH_COLS " FROM batches b WHERE b.id = $1::bigint"

/* Reads one batch. in_tx: inside a transaction, where a statement not prepared yet must not
 * fail and abort it, so it is sent unprepared. */
int batch_select(PGconn *conn, const char *id_text, bool in_tx, json_t **out, struct cofi_err *err)
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
            rc = batch_nomem(err);
        }
    }
    PQclear(r);
    return rc;
}

/* Answers an UPDATE ... RETURNING BATCH_COLS: one row gives *out; none gives NOT_FOUND. */
int batch_returned(PGresult *r, const char *id_text, json_t **out, struct cofi_err *err)
{
    int rc = 0;
    if (PQntuples(r) == 0) {
        rc = cofi_err_set(err, COFI_E_NOT_FOUND, "no batch %s", id_text);
    } else {
        *out = batch_from_row(r, 0, 0);
        rc = *out != NULL ? 0 : batch_nomem(err);
    }
    PQclear(r);
    return rc;
}
