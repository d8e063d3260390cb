/* The SQL of the call resource: a batch's calls with their per-stage view. */
#ifndef COFI_CALLS_DB_H
#define COFI_CALLS_DB_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"

/* As in db/batches_db.h: the connection is used for these statements only; thread-safe with
 * distinct connections; errors as db_exec reports them. */

/* Lists the calls of batch batch_id in ascending seq (and id) order, from seq `cursor` on
 * (0: from the first; next_cursor is the seq after the page's last), at most limit of them, only
 * those whose status is `state` unless it is NULL. Stages omit "result". One statement. Returns 0
 * with *out a new reference to
 * {"calls": [...], "next_cursor": str|null}; COFI_E_NOT_FOUND when the batch does not
 * exist; on error *out is NULL. */
int calls_db_list(PGconn *conn, int64_t batch_id, int64_t cursor, int limit, const char *state,
                  json_t **out, struct cofi_err *err);

/* Builds the call object of call call_id of batch batch_id, with every stage's result.
 * Returns 0 with *out a new reference; COFI_E_NOT_FOUND unless that call belongs to that
 * batch; on error *out is NULL. */
int calls_db_get(PGconn *conn, int64_t batch_id, int64_t call_id, json_t **out,
                 struct cofi_err *err);

/* ---- pure helpers, exposed for tests ---- */

/* What holds a call that is not final; strings borrowed. */
struct call_wait {
    int status;              /* CALL_PENDING or CALL_RUNNING */
    int stage;               /* calls.stage */
    const char *node;        /* NULL before distribute */
    const char *last_error;  /* NULL for none */
    const char *batch_state; /* the batch's state */
    const char *retry_at;    /* RFC 3339 time of the next attempt while still ahead, or NULL */
    int64_t ahead;           /* pending calls ahead for the same resource, or -1: not counted */
};

/* The "waiting_for" object of a call, first match wins: running → {"reason": "in_flight"};
 * batch paused → "paused", created → "not_started"; a retry ahead → {"reason": "retry",
 * "at", "why"}; at llm1/llm2 → "nlp_limit"; at distribute (or without a node) → "queued";
 * else {"reason": "node", "node"}; the last three with "ahead" when w->ahead >= 0.
 * Returns a new reference, NULL when out of memory. */
json_t *calls_db_waiting_json(const struct call_wait *w);

/* The 7-element "stages" array of a call object. call_stage and status are calls.stage and
 * calls.status (an enum call_status); attempts, last_error and stage_started_at the call's
 * (last_error/stage_started_at may be NULL); records is a borrowed array of the call's
 * call_stages rows, each [stage, state, attempts, last_error, started_at, finished_at] plus
 * result when with_result (NULL or json null for none). Per stage s:
 *   s < call_stage: its record (done);
 *   s == call_stage: pending/running from the call (its attempts, last_error, and
 *     stage_started_at as started_at); failed from its record; cancelled → "skipped" with
 *     the call's attempts and last_error;
 *   s > call_stage: "pending", or "skipped" once the call failed or was cancelled.
 * "result" is present only when with_result. Returns a new reference, NULL when out of
 * memory. */
json_t *calls_db_stages_json(int call_stage, int status, int64_t attempts, const char *last_error,
                             const char *stage_started_at, const json_t *records, bool with_result);

#endif
