/* SQL of the call resource and the per-stage view of a call; every statement is
 * parameterised. */
#include "db/calls_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"
#include "common/stages.h"

#define TS(x) "to_char(" x " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* The columns call_from_row reads, in this order; RESULT is ", s.result" or "". */
#define CALL_COLS(RESULT)                                                                          \
    "c.id, c.batch_id, c.seq, c.file, c.node, c.status, c.stage, c.attempts, c.last_error, " TS(   \
        "c.stage_started_at") ", "                                                                 \
                              "(SELECT json_agg(json_build_array(s.stage, s.state, s.attempts, "   \
                              "s.last_error, " TS("s.started_at") ", " TS("s.finished_at") RESULT  \
        ") ORDER BY s.stage) "                                                                     \
        "FROM call_stages s WHERE s.call_id = c.id)"

/* What a call that is not final waits for (calls_db_waiting_json reads them after CALL_COLS):
 * its batch's state, and its retry time when that is still ahead. */
#define WAIT_COLS                                                                                  \
    ", (SELECT wb.state FROM batches wb WHERE wb.id = c.batch_id), "                               \
    "CASE WHEN c.not_before > now() THEN " TS("c.not_before") " END"

/* How many pending calls of running batches are ahead of a pending call (smaller id) for the
 * same resource: stage 0 (no node yet), the same node at stages 1..4, or the NLP API at 5..6.
 * Counting stops at 10000, so one call's read stays bounded; GET of one call only. */
#define AHEAD_COL                                                                                  \
    ", CASE WHEN c.status = 'pending' THEN (SELECT count(*) FROM (SELECT 1 FROM calls o "          \
    "JOIN batches ob ON ob.id = o.batch_id WHERE ob.state = 'running' "                            \
    "AND o.status = 'pending' AND o.id < c.id AND CASE WHEN c.stage >= 5 THEN o.stage >= 5 "       \
    "WHEN c.stage = 0 OR c.node IS NULL THEN o.stage = 0 "                                         \
    "ELSE o.stage BETWEEN 1 AND 4 AND o.node = c.node END LIMIT 10000) t) END"

/* One page of a batch's calls, from seq $2 on, through the (batch_id, seq) index. A batch's
 * calls are inserted by one statement in seq order, so seq order is also id order. The batch
 * row makes an unknown batch (no row) differ from an empty page (one row of NULLs), in the
 * same statement. */
#define SQL_CALL_LIST(FILTER)                                                                      \
    "SELECT b.id, x.* FROM batches b LEFT JOIN LATERAL (SELECT " CALL_COLS("") WAIT_COLS           \
        ", NULL::bigint FROM calls c WHERE c.batch_id = b.id AND c.seq >= $2::bigint " FILTER      \
        "ORDER BY c.seq LIMIT $3::integer) x ON true WHERE b.id = $1::bigint"

#define SQL_CALL_GET                                                                               \
    "SELECT " CALL_COLS(", s.result") WAIT_COLS AHEAD_COL                                          \
        " FROM calls c WHERE c.id = $1::bigint AND c.batch_id = $2::bigint"

#define ID_TEXT_LEN 24

static const char *value_or_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static json_t *string_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

/* One stage object; takes borrowed values and copies them. */
static json_t *stage_object(int s, const char *state, json_int_t attempts, const json_t *last_error,
                            const json_t *started, const json_t *finished, const json_t *result,
                            bool with_result)
{
    json_t *o = json_object();
    if (o == NULL) {
        return NULL;
    }
    int rc = 0;
    rc |= json_object_set_new(o, "name", json_string(stage_name(s)));
    rc |= json_object_set_new(o, "state", json_string(state));
    rc |= json_object_set_new(o, "attempts", json_integer(attempts));
    rc |= json_object_set(o, "last_error", last_error != NULL ? (json_t *)last_error : json_null());
    rc |= json_object_set(o, "started_at", started != NULL ? (json_t *)started : json_null());
    rc |= json_object_set(o, "finished_at", finished != NULL ? (json_t *)finished : json_null());
    if (with_result) {
        rc |= json_object_set(o, "result", result != NULL ? (json_t *)result : json_null());
    }
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* A stage object from a call_stages record [stage, state, attempts, last_error, started,
 * finished, result?]. */
static json_t *stage_from_record(int s, const json_t *rec, bool with_result)
{
    const char *state = json_string_value(json_array_get(rec, 1));
    return stage_object(s, state != NULL ? state : "done",
                        json_integer_value(json_array_get(rec, 2)), json_array_get(rec, 3),
                        json_array_get(rec, 4), json_array_get(rec, 5), json_array_get(rec, 6),
                        with_result);
}

json_t *calls_db_stages_json(int call_stage, int status, int64_t attempts, const char *last_error,
                             const char *stage_started_at, const json_t *records, bool with_result)
{
    const json_t *rec[STAGE_COUNT] = {NULL};
    size_t i;
    const json_t *r;
    json_array_foreach(records, i, r)
    {
        json_int_t s = json_integer_value(json_array_get(r, 0));
        if (s >= 0 && s < STAGE_COUNT) {
            rec[s] = r;
        }
    }
    json_t *err_j = string_or_null(last_error);
    json_t *started_j = string_or_null(stage_started_at);
    json_t *arr = json_array();
    bool ended = status == CALL_FAILED || status == CALL_CANCELLED;
    int rc = err_j != NULL && started_j != NULL && arr != NULL ? 0 : -1;
    for (int s = 0; s < STAGE_COUNT && rc == 0; s++) {
        json_t *o;
        if (s < call_stage) {
            o = rec[s] != NULL ? stage_from_record(s, rec[s], with_result)
                               : stage_object(s, "done", 0, NULL, NULL, NULL, NULL, with_result);
        } else if (s > call_stage) {
            o = stage_object(s, ended ? "skipped" : "pending", 0, NULL, NULL, NULL, NULL,
                             with_result);
        } else if (status == CALL_FAILED && rec[s] != NULL) {
            o = stage_from_record(s, rec[s], with_result);
        } else {
            const char *state = status == CALL_CANCELLED ? "skipped" : call_status_name(status);
            o = stage_object(s, state != NULL ? state : "pending", (json_int_t)attempts, err_j,
                             started_j, NULL, NULL, with_result);
        }
        rc = json_array_append_new(arr, o);
    }
    json_decref(err_j);
    json_decref(started_j);
    if (rc != 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* Adds "ahead" to a waiting_for object when it is known. */
static int set_ahead(json_t *o, int64_t ahead)
{
    return ahead >= 0 ? json_object_set_new(o, "ahead", json_integer(ahead)) : 0;
}

json_t *calls_db_waiting_json(const struct call_wait *w)
{
    const char *batch = w->batch_state != NULL ? w->batch_state : "";
    if (w->status == CALL_RUNNING) {
        /* Held by an instance: in flight, or waiting to try again (the engine writes when). */
        if (w->retry_at != NULL) {
            return json_pack("{s:s, s:s, s:s?}", "reason", "retry", "at", w->retry_at, "why",
                             w->last_error);
        }
        return json_pack("{s:s}", "reason", "in_flight");
    }
    if (strcmp(batch, "paused") == 0 || strcmp(batch, "created") == 0) {
        return json_pack("{s:s}", "reason",
                         strcmp(batch, "paused") == 0 ? "paused" : "not_started");
    }
    if (w->retry_at != NULL) {
        return json_pack("{s:s, s:s, s:s?}", "reason", "retry", "at", w->retry_at, "why",
                         w->last_error);
    }
    json_t *o;
    if (stage_is_llm(w->stage)) {
        o = json_pack("{s:s}", "reason", "nlp_limit");
    } else if (w->stage == STAGE_DISTRIBUTE || w->node == NULL) {
        o = json_pack("{s:s}", "reason", "queued");
    } else {
        o = json_pack("{s:s, s:s}", "reason", "node", "node", w->node);
    }
    if (o != NULL && set_ahead(o, w->ahead) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Builds a call object from the CALL_COLS starting at column col. Returns a new reference,
 * NULL when out of memory. */
static json_t *call_from_row(const PGresult *r, int row, int col, bool with_result)
{
    int stage = atoi(PQgetvalue(r, row, col + 6));
    const char *status_text = PQgetvalue(r, row, col + 5);
    int status = call_status_from_name(status_text);
    const char *recs_text = value_or_null(r, row, col + 10);
    json_t *recs = NULL;
    if (recs_text != NULL) {
        /* Results may hold integers past 64 bits: read those as reals. */
        recs = json_loads(recs_text, 0, NULL);
        if (recs == NULL) {
            recs = json_loads(recs_text, JSON_DECODE_INT_AS_REAL, NULL);
        }
    }

    json_t *o = json_object();
    json_t *stages = calls_db_stages_json(
        stage, status, strtoll(PQgetvalue(r, row, col + 7), NULL, 10),
        value_or_null(r, row, col + 8), value_or_null(r, row, col + 9), recs, with_result);
    json_decref(recs);
    if (o == NULL || stages == NULL) {
        json_decref(o);
        json_decref(stages);
        return NULL;
    }
    int rc = 0;
    rc |= json_object_set_new(o, "id", json_string(PQgetvalue(r, row, col)));
    rc |= json_object_set_new(o, "batch_id",
                              json_integer(strtoll(PQgetvalue(r, row, col + 1), NULL, 10)));
    rc |=
        json_object_set_new(o, "seq", json_integer(strtoll(PQgetvalue(r, row, col + 2), NULL, 10)));
    rc |= json_object_set_new(o, "file", json_string(PQgetvalue(r, row, col + 3)));
    rc |= json_object_set_new(o, "node", string_or_null(value_or_null(r, row, col + 4)));
    rc |= json_object_set_new(o, "state", json_string(status_text));
    rc |= json_object_set_new(o, "stage", string_or_null(stage_name(stage)));
    rc |= json_object_set_new(o, "stages", stages);
    if (status == CALL_PENDING || status == CALL_RUNNING) {
        struct call_wait w = {
            .status = status,
            .stage = stage,
            .node = value_or_null(r, row, col + 4),
            .last_error = value_or_null(r, row, col + 8),
            .batch_state = value_or_null(r, row, col + 11),
            .retry_at = value_or_null(r, row, col + 12),
            .ahead = PQgetisnull(r, row, col + 13)
                         ? -1
                         : strtoll(PQgetvalue(r, row, col + 13), NULL, 10),
        };
        rc |= json_object_set_new(o, "waiting_for", calls_db_waiting_json(&w));
    }
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

int calls_db_list(PGconn *conn, int64_t batch_id, int64_t cursor, int limit, const char *state,
                  json_t **out, struct cofi_err *err)
{
    *out = NULL;
    char id[ID_TEXT_LEN];
    char cur[ID_TEXT_LEN];
    char lim[16];
    snprintf(id, sizeof id, "%" PRId64, batch_id);
    snprintf(cur, sizeof cur, "%" PRId64, cursor);
    snprintf(lim, sizeof lim, "%d", limit + 1);
    const char *params[4] = {id, cur, lim, state};
    PGresult *r;
    if (state == NULL) {
        r = db_exec_prepared(conn, "cofi_call_list", SQL_CALL_LIST(""), 3, params, err);
    } else if (strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0) {
        /* The literal list lets even a generic plan use calls_ended_idx (migration 008):
         * a page of a batch's failed calls reads that page, not the batch. */
        r = db_exec_prepared(conn, "cofi_call_list_ended",
                             SQL_CALL_LIST("AND c.status = $4 AND c.status IN ('failed', "
                                           "'cancelled') "),
                             4, params, err);
    } else {
        r = db_exec_prepared(conn, "cofi_call_list_state", SQL_CALL_LIST("AND c.status = $4 "), 4,
                             params, err);
    }
    if (r == NULL) {
        return err->code;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        return cofi_err_set(err, COFI_E_NOT_FOUND, "no batch %s", id);
    }
    int rows = PQgetisnull(r, 0, 1) ? 0 : PQntuples(r);
    int shown = rows > limit ? limit : rows;
    json_t *arr = json_array();
    int rc = arr != NULL ? 0 : -1;
    for (int i = 0; i < shown && rc == 0; i++) {
        rc = json_array_append_new(arr, call_from_row(r, i, 1, /* with_result= */ false));
    }
    /* The cursor is the seq the next page starts at. */
    char next_seq[ID_TEXT_LEN];
    if (rows > limit) {
        snprintf(next_seq, sizeof next_seq, "%lld", atoll(PQgetvalue(r, shown - 1, 3)) + 1);
    }
    json_t *next = rows > limit ? json_string(next_seq) : json_null();
    PQclear(r);
    return db_json_page("calls", arr, rc, next, out, err);
}

int calls_db_get(PGconn *conn, int64_t batch_id, int64_t call_id, json_t **out,
                 struct cofi_err *err)
{
    *out = NULL;
    char bid[ID_TEXT_LEN];
    char cid[ID_TEXT_LEN];
    snprintf(bid, sizeof bid, "%" PRId64, batch_id);
    snprintf(cid, sizeof cid, "%" PRId64, call_id);
    const char *params[2] = {cid, bid};
    PGresult *r = db_exec_prepared(conn, "cofi_call_get", SQL_CALL_GET, 2, params, err);
    if (r == NULL) {
        return err->code;
    }
    int rc = 0;
    if (PQntuples(r) == 0) {
        rc = cofi_err_set(err, COFI_E_NOT_FOUND, "batch %s has no call %s", bid, cid);
    } else {
        *out = call_from_row(r, 0, 0, /* with_result= */ true);
        if (*out == NULL) {
            rc = nomem(err);
        }
    }
    PQclear(r);
    return rc;
}
