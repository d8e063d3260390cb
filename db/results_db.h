/* The SQL of GET /batches/{id}/results: a batch's calls with every stage's result, a page at
 * a time, as typed rows. */
#ifndef COFI_RESULTS_DB_H
#define COFI_RESULTS_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/stages.h"

/* One stage of a call as the API shows it (docs/ARCHITECTURE.md, "State model"). */
struct results_stage {
    const char *state; /* static: "pending", "running", "done", "failed" or "skipped" */
    int64_t attempts;
    char *last_error; /* owned; NULL for none */
    char *result;     /* owned: the stage's result as JSON text; NULL for none */
};

/* One call with its seven stages. */
struct results_call {
    int64_t id;
    int64_t seq;
    char *file; /* owned: the path as submitted */
    char *node; /* owned; NULL before distribute */
    int status; /* enum call_status */
    struct results_stage stages[STAGE_COUNT];
};

/* One page of a batch's calls, in seq order. Start from RESULTS_PAGE_INIT; free with
 * results_page_free. */
struct results_page {
    struct results_call *calls; /* owned, `count` of them */
    size_t count;
    int64_t next_seq; /* the seq the next page starts at */
    bool more;        /* the page was full: a next page may hold calls */
};

#define RESULTS_PAGE_INIT                                                                          \
    {                                                                                              \
        NULL, 0, 0, false                                                                          \
    }

/* Reads the calls of batch batch_id whose seq is from_seq or more, at most limit (>= 1) of
 * them, each with its stages, in one statement (keyset pagination over (batch_id, seq)).
 * Returns 0 with *out filled (an empty page once past the last call); COFI_E_NOT_FOUND when
 * the batch does not exist; COFI_E_NOMEM or a database error as db_exec reports it. On error
 * *out is empty. The connection is used for this statement only. Thread-safe with distinct
 * connections. */
int results_db_page(PGconn *conn, int64_t batch_id, int64_t from_seq, int limit,
                    struct results_page *out, struct cofi_err *err);

/* Frees what the page owns and resets it to RESULTS_PAGE_INIT. Accepts NULL. */
void results_page_free(struct results_page *page);

/* ---- pure, exposed for tests ---- */

/* A call_stages row of a call, borrowed strings; present is false when the call has none for
 * that stage. */
struct results_record {
    bool present;
    const char *state; /* "done" or "failed" */
    int64_t attempts;
    const char *last_error;
    const char *result;
};

/* The API's view of stage s of a call at calls.stage call_stage with calls.status status,
 * calls.attempts attempts and calls.last_error last_error, given its record of s (the same
 * rules as calls_db_stages_json in db/calls_db.h): s < call_stage: the record (done);
 * s > call_stage: pending, or skipped once the call failed or was cancelled; s == call_stage:
 * failed from its record, cancelled as skipped, otherwise the call's status, with the call's
 * attempts and last_error. Fills *out with borrowed strings (out->state static); can't fail. */
void results_stage_view(int s, int call_stage, int status, int64_t attempts, const char *last_error,
                        const struct results_record *rec, struct results_record *out);

#endif
