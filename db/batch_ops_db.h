/* The SQL of the operations on a batch: run, cancel, change, pause/resume, delete, retry. */
#ifndef COFI_BATCH_OPS_DB_H
#define COFI_BATCH_OPS_DB_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"

/* As in db/batches_db.h: the connection is used for these statements only and left outside
 * any transaction (what they began is rolled back on error); database errors come back as
 * db_exec reports them. */

/* Starts a batch: created → running (mode set when not NULL, started_at now), with one
 * conditional UPDATE. A running batch is left as it is (COFI_E_CONFLICT if mode is given and
 * differs from its mode); cancelled or completed ones → COFI_E_CONFLICT; unknown →
 * COFI_E_NOT_FOUND. Returns 0 with *out a new reference to the batch object (*out NULL on
 * error). */
int batches_db_run(PGconn *conn, int64_t id, const char *mode, json_t **out, struct cofi_err *err);

/* Cancels a created, running or paused batch in one transaction: the batch becomes cancelled, its
 * pending calls cancelled, and finished_at is set when none of its calls is running. An
 * already cancelled batch is left as it is; a completed one → COFI_E_CONFLICT; unknown →
 * COFI_E_NOT_FOUND. Retries a few times on deadlock or serialization failure.
 * Returns 0 with *out a new reference to the batch object (*out NULL on error, and then
 * nothing was changed). */
int batches_db_cancel(PGconn *conn, int64_t id, json_t **out, struct cofi_err *err);

/* What PATCH /batches/{id} changes. */
struct batch_change {
    int priority;     /* >= 1, or 0 to leave it */
    bool set_name;    /* change the name to `name` */
    const char *name; /* borrowed; NULL clears the name */
};

/* Applies ch to the batch with one UPDATE. Returns 0 with *out a new reference to the batch
 * object, COFI_E_NOT_FOUND, or another negative status (*out NULL, nothing changed). */
int batches_db_update(PGconn *conn, int64_t id, const struct batch_change *ch, json_t **out,
                      struct cofi_err *err);

/* Moves the batch from state `from` to state `to` with one conditional UPDATE (pause:
 * running → paused; resume: paused → running). Returns 0 with *out a new reference to the
 * batch object; COFI_E_CONFLICT when the batch is in another state than `from`;
 * COFI_E_NOT_FOUND; *out NULL and nothing changed on error. */
int batches_db_transition(PGconn *conn, int64_t id, const char *from, const char *to, json_t **out,
                          struct cofi_err *err);

/* Deletes a batch that has ended (completed, completed_with_errors or cancelled, with
 * finished_at set) with its call_stages, calls and batch_progress rows, in one transaction;
 * its idempotency key is free again. Returns 0; COFI_E_CONFLICT for a batch that has not
 * ended; COFI_E_NOT_FOUND; on error nothing is deleted. */
int batches_db_delete(PGconn *conn, int64_t id, struct cofi_err *err);

/* Which failed calls POST /batches/{id}/retry takes back. Both borrowed; NULL: no filter. */
struct retry_select {
    const char *stages; /* PostgreSQL array literal of stage numbers, e.g. "{1,4}" */
    const char *calls;  /* PostgreSQL array literal of call ids, e.g. "{17,18}" */
};

/* In one transaction: the batch's failed calls chosen by sel go back to pending at the
 * stage they failed (attempts 0, last_error, not_before and lease cleared, the failed
 * call_stages row of that stage removed, earlier stages' results kept) and the batch
 * becomes running with finished_at NULL. Allowed for a running, completed or
 * completed_with_errors batch (else COFI_E_CONFLICT); COFI_E_INVALID when no failed call
 * matches; COFI_E_NOT_FOUND. Returns 0 with *out a new reference to the batch object and
 * *retried the number of calls; on error *out NULL and nothing changed. */
int batches_db_retry(PGconn *conn, int64_t id, const struct retry_select *sel, json_t **out,
                     int64_t *retried, struct cofi_err *err);

#endif
