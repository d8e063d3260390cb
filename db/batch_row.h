/* Private to db/: the batch object as the batch SQL reads it (the columns, a row → the API's
 * JSON, reading one batch). The pure helpers are exposed for tests. */
#ifndef COFI_BATCH_ROW_H
#define COFI_BATCH_ROW_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "common/stages.h"

/* RFC 3339 UTC with milliseconds, or NULL. */
#define TS(x) "to_char(" x " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* The batch's callback_url and its latest webhook delivery as JSON text (NULL when none;
 * looked up only for a batch with a callback_url; migration 009). */
#define CALLBACK_COLS                                                                              \
    "b.callback_url, CASE WHEN b.callback_url IS NOT NULL THEN webhook_last_delivery(b.id) END"

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
                                                 "AND p.n <> 0), b.priority, " CALLBACK_COLS
#define BATCH_NCOLS 14

/* Room for a batch id as decimal text. */
#define ID_TEXT_LEN 24

/* Sets err to COFI_E_NOMEM ("out of memory") and returns it. */
int batch_nomem(struct cofi_err *err);

/* Builds the batch object from the BATCH_COLS starting at column `col` of row `row`.
 * Returns a new reference, or NULL when out of memory. */
json_t *batch_from_row(const PGresult *r, int row, int col);

/* Reads one batch into *out (a new reference): 0, COFI_E_NOT_FOUND or another error. in_tx:
 * inside a transaction, where a statement not prepared yet must not fail and abort it, so it
 * is sent unprepared. */
int batch_select(PGconn *conn, const char *id_text, bool in_tx, json_t **out, struct cofi_err *err);

/* Answers an UPDATE ... RETURNING BATCH_COLS: one row gives *out; none gives NOT_FOUND.
 * Clears r. */
int batch_returned(PGresult *r, const char *id_text, json_t **out, struct cofi_err *err);

/* ---- pure helpers, exposed for tests ---- */

/* Parses the progress text the batch queries produce ("stage status n" triples separated
 * by ',', e.g. "0 pending 5,1 running 2"; NULL or "" for none) and adds every triple to
 * out with stage_counts_add. Returns 0, or -1 on a malformed triple (those before it are
 * added). */
int batches_db_parse_progress(const char *text, struct stage_counts out[STAGE_COUNT]);

/* eta_seconds of a batch: NULL unless running; with f = calls finished at llm2
 * (file_count - pending - running of stage llm2) and elapsed_s since started_at,
 * (file_count - f) * elapsed_s / f when f > 0, else NULL. Returns a new reference (json null
 * or real). */
json_t *batches_db_eta(bool running, int64_t file_count, const struct stage_counts *llm2,
                       double elapsed_s);

/* The "stages" array of a batch object from counts. Returns a new reference or NULL when
 * out of memory. */
json_t *batches_db_stages_json(const struct stage_counts counts[STAGE_COUNT]);

#endif
