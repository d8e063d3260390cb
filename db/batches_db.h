/* The SQL of the batch resource: create, read, list, run, cancel, change, pause/resume,
 * retry, delete. */
#ifndef COFI_BATCHES_DB_H
#define COFI_BATCHES_DB_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/stages.h"

/* The functions taking a PGconn use it for their statements only and leave it outside any
 * transaction (they roll back what they began on error). A connection serves one thread at
 * a time; the functions keep no state, so they are thread-safe with distinct connections.
 * Database errors come back as db_exec reports them (COFI_E_UNAVAILABLE when the
 * connection is lost, COFI_E_INTERNAL otherwise). */

/* A batch to insert. Every pointer is borrowed. */
struct batch_new {
    const char *name;            /* NULL for none */
    const char *mode;            /* "pipelined" or "staged" */
    int priority;                /* >= 1; 0 means the default, 1 */
    const char *metadata;        /* JSON text of an object, or NULL */
    const json_t *files;         /* array of strings (relative paths), at least one */
    const char *idempotency_key; /* NULL for none */
    const char *request_hash;    /* with a key: hex SHA-256 of the canonical request */
    /* The last validation, run while the database inserts the calls so the two overlap
     * (may be NULL): returns 0, or a negative status with err filled, and then the whole
     * insert is rolled back and that status returned. */
    int (*check)(void *check_ctx, struct cofi_err *err);
    void *check_ctx;
};

/* Builds a batch object (the API's JSON) for the batch with this id. Returns 0 with *out a
 * new reference, COFI_E_NOT_FOUND when there is no such batch, or another negative status;
 * *out is NULL on error. One statement: the batch row and its progress are one snapshot. */
int batches_db_get(PGconn *conn, int64_t id, json_t **out, struct cofi_err *err);

/* What one page of the batch list asks for. */
struct batch_page_ask {
    int64_t cursor;    /* ids below it; 0: from the newest */
    int limit;         /* at most this many batches */
    const char *state; /* only batches in this state, unless NULL */
    size_t max_bytes;  /* rows stop once their name and metadata reach past this */
};

/* Lists batches newest first as `ask` says; the rows read stop at the one that reaches past
 * ask->max_bytes, so a page of large metadata is never read whole. Returns 0 with *out a new
 * reference to {"batches": [...], "next_cursor": str|null}; on error *out is NULL. */
int batches_db_list(PGconn *conn, const struct batch_page_ask *ask, json_t **out,
                    struct cofi_err *err);

/* Looks up the batch created with idempotency key `key` and computes in the database the
 * hash of `canonical` (hex SHA-256 of its UTF-8 bytes) into hash (65 bytes).
 * Returns 0 with *out NULL when no batch has the key; 0 with *out a new reference to the
 * batch object when one has it and the same hash; COFI_E_CONFLICT when one has it with
 * another hash; or another negative status (*out NULL). */
int batches_db_find_idempotent(PGconn *conn, const char *key, const char *canonical, char hash[65],
                               json_t **out, struct cofi_err *err);

/* Inserts the batch and one call per file (seq 0, 1, ... in array order) in one
 * transaction, running b->check meanwhile. Returns 0 with *out a new reference to the batch object
 * and *created true; when another request inserted a batch with the same idempotency key first, 0
 * with *out that batch and *created false if its request hash is the same, else COFI_E_CONFLICT. On
 * error nothing is written and *out is NULL. */
int batches_db_create(PGconn *conn, const struct batch_new *b, json_t **out, bool *created,
                      struct cofi_err *err);

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

/* ---- pure helpers, exposed for tests ---- */

/* Appends the PostgreSQL text-array literal of the strings in files ({"a","b\"c"}; every
 * element quoted, '"' and '\' escaped) to out. Returns 0; -1 when an element is not a
 * string; -2 when out is full or out of memory (out may hold a partial literal). */
int batches_db_text_array(struct buf *out, const json_t *files);

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
