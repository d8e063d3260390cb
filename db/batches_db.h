/* The SQL that reads the batch resource: one batch, a page of the list. The other batch SQL:
 * db/batch_create_db.h (create, Idempotency-Key) and db/batch_ops_db.h (run, cancel, change,
 * pause/resume, retry, delete). */
#ifndef COFI_BATCHES_DB_H
#define COFI_BATCHES_DB_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* The functions taking a PGconn use it for their statements only and leave it outside any
 * transaction (they roll back what they began on error). A connection serves one thread at
 * a time; the functions keep no state, so they are thread-safe with distinct connections.
 * Database errors come back as db_exec reports them (COFI_E_UNAVAILABLE when the
 * connection is lost, COFI_E_INTERNAL otherwise). */

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

#endif
