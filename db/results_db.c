/* SQL of GET /batches/{id}/results: one page of a batch's calls with their stages, typed. */
#include "db/results_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"

/* One page of calls from seq $2 on through the (batch_id, seq) index, each joined with its
 * call_stages rows (none to seven): one row per (call, record), ordered by seq then stage.
 * The batch row tells an unknown batch (no row) from an empty page (one row of NULLs). */
#define SQL_RESULTS_PAGE                                                                           \
    "SELECT x.id, x.seq, x.file, x.node, x.status, x.stage, x.attempts, x.last_error, "            \
    "s.stage, s.state, s.attempts, s.last_error, s.result::text "                                  \
    "FROM batches b LEFT JOIN LATERAL (SELECT c.id, c.seq, c.file, c.node, c.status, c.stage, "    \
    "c.attempts, c.last_error FROM calls c WHERE c.batch_id = b.id AND c.seq >= $2::bigint "       \
    "ORDER BY c.seq LIMIT $3::integer) x ON true "                                                 \
    "LEFT JOIN call_stages s ON s.call_id = x.id "                                                 \
    "WHERE b.id = $1::bigint ORDER BY x.seq, s.stage"

enum {
    COL_ID,
    COL_SEQ,
    COL_FILE,
    COL_NODE,
    COL_STATUS,
    COL_STAGE,
    COL_ATTEMPTS,
    COL_LAST_ERROR,
    COL_REC_STAGE,
    COL_REC_STATE,
    COL_REC_ATTEMPTS,
    COL_REC_LAST_ERROR,
    COL_REC_RESULT,
};

static const char *value_or_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static int64_t int_at(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* A copy of s, or NULL for NULL. Sets *failed when out of memory. */
static char *dup_or_null(const char *s, bool *failed)
{
    if (s == NULL) {
        return NULL;
    }
    char *d = strdup(s);
    if (d == NULL) {
        *failed = true;
    }
    return d;
}

void results_stage_view(int s, int call_stage, int status, int64_t attempts, const char *last_error,
                        const struct results_record *rec, struct results_record *out)
{
    bool ended = status == CALL_FAILED || status == CALL_CANCELLED;
    memset(out, 0, sizeof *out);
    if (s < call_stage || (s == call_stage && status == CALL_FAILED && rec->present)) {
        if (rec->present) {
            *out = *rec;
            out->state = strcmp(rec->state, "failed") == 0 ? "failed" : "done";
        } else {
            out->state = "done";
        }
        return;
    }
    if (s > call_stage) {
        out->state = ended ? "skipped" : "pending";
        return;
    }
    const char *name = status == CALL_CANCELLED ? "skipped" : call_status_name(status);
    out->state = name != NULL ? name : "pending";
    out->attempts = attempts;
    out->last_error = last_error;
}

/* Fills c from the rows first..end-1 of r (one call and its records). Returns 0, or -1 when
 * out of memory (what was copied stays in c, for results_page_free). */
static int call_from_rows(const PGresult *r, int first, int end, struct results_call *c)
{
    struct results_record recs[STAGE_COUNT];
    memset(recs, 0, sizeof recs);
    for (int row = first; row < end; row++) {
        if (PQgetisnull(r, row, COL_REC_STAGE)) {
            continue;
        }
        int64_t s = int_at(r, row, COL_REC_STAGE);
        if (s >= 0 && s < STAGE_COUNT) {
            recs[s] = (struct results_record){
                .present = true,
                .state = PQgetvalue(r, row, COL_REC_STATE),
                .attempts = int_at(r, row, COL_REC_ATTEMPTS),
                .last_error = value_or_null(r, row, COL_REC_LAST_ERROR),
                .result = value_or_null(r, row, COL_REC_RESULT),
            };
        }
    }
    bool failed = false;
    int call_stage = (int)int_at(r, first, COL_STAGE);
    c->id = int_at(r, first, COL_ID);
    c->seq = int_at(r, first, COL_SEQ);
    c->status = call_status_from_name(PQgetvalue(r, first, COL_STATUS));
    c->file = dup_or_null(PQgetvalue(r, first, COL_FILE), &failed);
    c->node = dup_or_null(value_or_null(r, first, COL_NODE), &failed);
    for (int s = 0; s < STAGE_COUNT; s++) {
        struct results_record v;
        results_stage_view(s, call_stage, c->status, int_at(r, first, COL_ATTEMPTS),
                           value_or_null(r, first, COL_LAST_ERROR), &recs[s], &v);
        c->stages[s].state = v.state;
        c->stages[s].attempts = v.attempts;
        c->stages[s].last_error = dup_or_null(v.last_error, &failed);
        c->stages[s].result = dup_or_null(v.result, &failed);
    }
    return failed ? -1 : 0;
}

/* Counts the distinct calls of r (rows of one call are adjacent). */
static size_t count_calls(const PGresult *r, int rows)
{
    size_t n = 0;
    for (int row = 0; row < rows; row++) {
        if (row == 0 || strcmp(PQgetvalue(r, row, COL_ID), PQgetvalue(r, row - 1, COL_ID)) != 0) {
            n++;
        }
    }
    return n;
}

/* Fills page from the rows of r (at least one call). Returns 0 or COFI_E_NOMEM. */
static int page_from_rows(const PGresult *r, int rows, struct results_page *page,
                          struct cofi_err *err)
{
    size_t n = count_calls(r, rows);
    page->calls = calloc(n, sizeof *page->calls);
    if (page->calls == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory reading %zu results", n);
    }
    int first = 0;
    while (first < rows) {
        int end = first + 1;
        while (end < rows &&
               strcmp(PQgetvalue(r, end, COL_ID), PQgetvalue(r, first, COL_ID)) == 0) {
            end++;
        }
        struct results_call *c = &page->calls[page->count++];
        if (call_from_rows(r, first, end, c) != 0) {
            return cofi_err_set(err, COFI_E_NOMEM, "out of memory reading results");
        }
        first = end;
    }
    page->next_seq = page->calls[page->count - 1].seq + 1;
    return 0;
}

int results_db_page(PGconn *conn, int64_t batch_id, int64_t from_seq, int limit,
                    struct results_page *out, struct cofi_err *err)
{
    struct results_page empty = RESULTS_PAGE_INIT;
    *out = empty;
    out->next_seq = from_seq;
    char id[24];
    char from[24];
    char lim[16];
    snprintf(id, sizeof id, "%" PRId64, batch_id);
    snprintf(from, sizeof from, "%" PRId64, from_seq);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[3] = {id, from, lim};
    PGresult *r = db_exec_prepared(conn, "cofi_results_page", SQL_RESULTS_PAGE, 3, params, err);
    if (r == NULL) {
        return err->code;
    }
    int rows = PQntuples(r);
    int rc = 0;
    if (rows == 0) {
        rc = cofi_err_set(err, COFI_E_NOT_FOUND, "no batch %s", id);
    } else if (!PQgetisnull(r, 0, COL_ID)) {
        rc = page_from_rows(r, rows, out, err);
        out->more = rc == 0 && out->count == (size_t)limit;
    }
    PQclear(r);
    if (rc != 0) {
        results_page_free(out);
    }
    return rc;
}

void results_page_free(struct results_page *page)
{
    if (page == NULL) {
        return;
    }
    for (size_t i = 0; i < page->count; i++) {
        struct results_call *c = &page->calls[i];
        free(c->file);
        free(c->node);
        for (int s = 0; s < STAGE_COUNT; s++) {
            free(c->stages[s].last_error);
            free(c->stages[s].result);
        }
    }
    free(page->calls);
    struct results_page empty = RESULTS_PAGE_INIT;
    *page = empty;
}
