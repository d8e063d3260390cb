/* SQL that reads batches: one batch, a page of the list; every statement is parameterised. */
#include "db/batches_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "db/batch_row.h"
#include "db/db.h"

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
