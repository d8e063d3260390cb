/* The work queue in PostgreSQL: instances, claims, the batched flush of results, batch ends. */
#ifndef COFI_WORK_DB_H
#define COFI_WORK_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* Registers (or re-registers) this instance and returns to pending every call it still
 * held from an earlier life under the same id. Returns 0 or a negative status. */
int work_register(PGconn *c, const char *instance, const char *host, int pid, struct cofi_err *err);

/* Renews this instance's lease, re-creating its row if another instance had removed it as
 * expired (then *recreated is true and it holds no shares any more). Returns 0 or a negative
 * status. */
int work_heartbeat(PGconn *c, const char *instance, const char *host, int pid, bool *recreated,
                   struct cofi_err *err);

/* Publishes this instance's requests in flight per stage (a JSON object by stage name).
 * Returns 0 or a negative status. */
int work_publish_in_flight(PGconn *c, const char *instance, const char *json, struct cofi_err *err);

/* One resource whose limit of requests in flight the instances share. */
struct work_share {
    const char *resource; /* "nlp" or "node:<id>" */
    int total;            /* the resource's limit (llm.concurrency, a node's capacity) */
    int in_flight;        /* this instance's requests in flight to it now */
    int share;            /* in: this instance's granted share; out: the new one */
    int target;           /* out: the fair share (total / live instances) */
};

/* Negotiates this instance's share of every resource in res (at most 64). A share above the
 * fair target is lowered only as far as this instance's requests in flight allow (the rest
 * on a later beat); a share below it grows, under a table lock, by at most what the other
 * instances leave free. So the shares of a resource never add up to more than its total.
 * Returns 0 or a negative status (then the shares may be partly lowered, never raised). */
int work_negotiate_shares(PGconn *c, const char *instance, int lease_ms, struct work_share *res,
                          size_t n, struct cofi_err *err);

/* Returns to pending every call claimed by an instance whose heartbeat is older than
 * lease_ms, and forgets those instances. *recovered gets the number of calls. */
int work_recover_expired(PGconn *c, int lease_ms, long *recovered, struct cofi_err *err);

/* Returns to pending the calls in ids (an array literal "{1,2}") that this instance holds.
 * Returns 0 or a negative status. */
int work_release(PGconn *c, const char *instance, const char *ids, struct cofi_err *err);

/* Returns to pending every call this instance holds and removes the instance. */
int work_unregister(PGconn *c, const char *instance, struct cofi_err *err);

/* The batches that need the engine: running, or cancelled with work still in flight.
 * Returns a new PGresult with columns id, mode, state, current stage (min stage with
 * pending or running calls; NULL when none), calls pending at stages 0..4, calls pending at
 * stages 5..6; or NULL with err. */
PGresult *work_active_batches(PGconn *c, struct cofi_err *err);

/* Ends every batch in ids (a PostgreSQL array literal "{1,2}") that has nothing pending or
 * running: completed, completed_with_errors, or (cancelled) sets finished_at. Returns a new
 * PGresult (id, state) of the batches ended, or NULL with err. */
PGresult *work_finish_batches(PGconn *c, const char *ids, struct cofi_err *err);

/* Claims up to limit pending calls for this instance. spec is a JSON array of
 * {"id": batch, "lo": stage, "hi": stage}; blocked_nodes an array literal ("{a,b}") of the
 * nodes this instance may not send to (no share of them): calls held by those nodes at
 * stages 1..4 are left to other instances. Returns a new PGresult with columns
 * id, batch_id, stage, file, node, file_name, attempts, prev (jsonb of earlier results),
 * or NULL with err. */
PGresult *work_claim(PGconn *c, const char *instance, const char *spec, int limit,
                     const char *blocked_nodes, struct cofi_err *err);

/* Readies a connection that runs work_flush and work_release only: its prepared statements
 * get generic plans (plan_cache_mode = force_generic_plan), planned once per connection.
 * Both find their calls through the primary key whatever the parameters. Returns 0 or a
 * negative status; on failure the connection still works, planning every flush. */
int work_flush_session(PGconn *c, struct cofi_err *err);

/* Writes a batch of transitions in one statement. calls_json is an array of
 * {"id","stage","status","attempts","last_error","node","file_name","started_ms"} (at most
 * one per call), ids the array literal ("{1,2}") of those calls' ids, stages_json an array of
 * {"call_id","stage","state","attempts","last_error","started_ms","finished_ms","result"}
 * (at most one per call and stage). Only calls still claimed by this instance are written.
 * Returns a new PGresult (id, batch_id, status) of the calls written, or NULL with err. */
PGresult *work_flush(PGconn *c, const char *instance, const char *calls_json, const char *ids,
                     const char *stages_json, struct cofi_err *err);

#endif
