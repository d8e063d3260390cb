/* The work queue in PostgreSQL: instances, leases, fenced claims, the batched flush, shares. */
#ifndef COFI_WORK_DB_H
#define COFI_WORK_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* Every function here returns 0 or a negative cofi_status with err filled (COFI_E_UNAVAILABLE
 * when the connection was lost: nothing is known of the statement's fate but that it did not
 * commit unless the server said so). Times are the database's clock (clock_timestamp()), never
 * the transaction's start, so a commit that waits never makes a fresh heartbeat look old. */

/* Registers (or re-registers) this instance, drops the shares an earlier life under the same id
 * held and returns to pending every call it still held. */
int work_register(PGconn *c, const char *instance, const char *host, int pid, struct cofi_err *err);

/* Renews this instance's lease. When another instance had expired it (its row was gone), the
 * row comes back, *lost is true, and the calls it held are already someone else's: the caller
 * drops every job of its earlier claims. Its shares were held for it and are its own again. */
int work_heartbeat(PGconn *c, const char *instance, const char *host, int pid, bool *lost,
                   struct cofi_err *err);

/* Expires every other instance whose heartbeat is older than lease_ms: its running calls go back
 * to pending (their claim tokens cleared, so its writes can't land) and its shares are held for
 * hold_ms more (its requests may still be running). Never expires `instance` itself. Costs one
 * index probe when no instance expired. *recovered gets the number of calls taken back. */
int work_recover_expired(PGconn *c, const char *instance, int lease_ms, int hold_ms,
                         long *recovered, struct cofi_err *err);

/* Publishes this instance's requests in flight per stage (a JSON object by stage name). */
int work_publish_in_flight(PGconn *c, const char *instance, const char *json, struct cofi_err *err);

/* What the share negotiation reads, under a lock that it keeps until work_shares_end: the live
 * instances (this one included), this instance's rank among them by id, and for every resource
 * the sum of the shares of every other instance, live or held for a dead one. */
struct work_share_view {
    int live;
    int rank;
    size_t nres;
    char **resource; /* owned by the view */
    int *others;     /* owned by the view */
};

/* Begins a negotiation: a transaction that locks instance_shares, forgets the shares held for
 * dead instances whose time is over, and fills *v. On success the caller must end it with
 * work_shares_end (commit or not). */
int work_shares_begin(PGconn *c, const char *instance, int lease_ms, struct work_share_view *v,
                      struct cofi_err *err);

/* The others' shares of resource in v (0 when none). */
int work_share_others(const struct work_share_view *v, const char *resource);

/* Sets this instance's share of resource, inside the negotiation. */
int work_share_set(PGconn *c, const char *instance, const char *resource, int share,
                   struct cofi_err *err);

/* Ends the negotiation: commits when commit is true and nothing failed, else rolls back.
 * Frees v's contents. Returns 0 or a negative status (the commit failed). */
int work_shares_end(PGconn *c, bool commit, struct work_share_view *v, struct cofi_err *err);

/* One claimed call and its claim. Strings are owned by the list (free with work_claimed_free);
 * a caller may take one by setting the field to NULL. */
struct work_claimed {
    int64_t id;
    int64_t batch_id;
    int stage;
    int attempts;
    int64_t token; /* the claim's fencing token */
    char *file;
    char *node;      /* NULL before distribute */
    char *file_name; /* NULL before distribute */
    char *prev;      /* the earlier results as a JSON object's text, or NULL */
};

/* Frees n claimed rows and the array. Accepts NULL. */
void work_claimed_free(struct work_claimed *v, size_t n);

/* Claims up to limit pending calls for this instance, each with a new fencing token. spec is a
 * JSON array of {"id": batch, "lo": stage, "hi": stage, "lim": at most this many of it};
 * blocked_nodes a JSON array of the node ids this instance may not send to (no share of them):
 * calls held by those nodes at stages 1..4 are left to other instances. *out is a new array of *n
 * rows (NULL when none). */
int work_claim(PGconn *c, const char *instance, const char *spec, int limit,
               const char *blocked_nodes, struct work_claimed **out, size_t *n,
               struct cofi_err *err);

/* A batch that needs the engine: running, or cancelled with work still in flight. */
struct work_batch {
    int64_t id;
    bool staged;
    bool cancelled;
    int priority;        /* >= 1: its weight when calls are claimed */
    int cur_stage;       /* lowest stage with pending or running calls, -1 when none */
    int64_t pending_med; /* calls waiting at stages 0..4 */
    int64_t pending_llm; /* calls waiting at stages 5..6 */
};

/* The active batches in id order: *out is a new array of *n (NULL when none). */
int work_active_batches(PGconn *c, struct work_batch **out, size_t *n, struct cofi_err *err);

/* A batch that ended. */
struct work_finished {
    int64_t id;
    char state[24];
};

/* Ends every batch in ids (an array literal "{1,2}") that has nothing pending or running:
 * completed, completed_with_errors, or (cancelled) sets finished_at, and in the same statement
 * queues the webhook delivery of each that has a callback_url. *out is a new array of the *n
 * ended. */
int work_finish_batches(PGconn *c, const char *ids, struct work_finished **out, size_t *n,
                        struct cofi_err *err);

/* Readies a connection that runs work_flush and work_release only: its prepared statements
 * get generic plans (plan_cache_mode = force_generic_plan), planned once per connection.
 * On failure the connection still works, planning every flush. */
int work_flush_session(PGconn *c, struct cofi_err *err);

/* A call a flush wrote. */
struct work_written {
    int64_t id;
    bool running; /* still claimed by this instance (its next stage may start) */
};

/* Writes a batch of transitions in one statement. calls_json is an array of
 * {"id","token","stage","status","attempts","last_error","node","file_name","started_ms"} and
 * optionally "retry_at_ms" (a call waiting to try again: written as not_before; at most one
 * per call), stages_json an array of
 * {"call_id","stage","state","attempts","last_error","started_ms","finished_ms","result"}
 * (at most one per call and stage); ids the array literal ("{1,2}") of the calls' ids. Only
 * calls this instance still holds under that token are written (the fence); *out is a new
 * array of the *n calls written. On failure nothing was written. */
int work_flush(PGconn *c, const char *instance, const char *calls_json, const char *ids,
               const char *stages_json, struct work_written **out, size_t *n, struct cofi_err *err);

/* Returns to pending the calls of claims (a JSON array of {"id","token"}) this instance still
 * holds under those tokens. */
int work_release(PGconn *c, const char *instance, const char *claims, struct cofi_err *err);

/* Returns to pending every call this instance holds, drops its shares and removes it. For a
 * clean stop, once nothing of this instance is in flight. */
int work_unregister(PGconn *c, const char *instance, struct cofi_err *err);

#endif
