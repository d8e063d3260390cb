/* The SQL that creates a batch: the Idempotency-Key look-up and the insert of the batch with
 * its calls (streamed with COPY). */
#ifndef COFI_BATCH_CREATE_DB_H
#define COFI_BATCH_CREATE_DB_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "common/error.h"

/* As in db/batches_db.h: the connection is used for these statements only and left outside
 * any transaction; database errors come back as db_exec reports them. */

/* A batch to insert. Every pointer is borrowed. */
struct batch_new {
    const char *name;            /* NULL for none */
    const char *mode;            /* "pipelined" or "staged" */
    int priority;                /* >= 1; 0 means the default, 1 */
    const char *metadata;        /* JSON text of an object, or NULL */
    size_t file_count;           /* how many files next_file gives, at least one */
    const char *idempotency_key; /* NULL for none */
    const char *request_hash;    /* with a key: hex SHA-256 of the canonical request */
    const char *callback_url;    /* NULL for none: POSTed the batch when it ends */
    /* Gives the next file (a relative path, *len bytes; borrowed until the next call) as the
     * calls are streamed to the database, so the files are checked while the database
     * stores the ones before: 1 with *file; 0 after the last; or a negative status with err
     * filled, and then the whole insert is rolled back and that status returned. */
    int (*next_file)(void *ctx, const char **file, size_t *len, struct cofi_err *err);
    void *files_ctx;
};

/* Looks up the batch created with idempotency key `key`, whose request had hash `hash`.
 * Returns 0 with *out NULL when no batch has the key; 0 with *out a new reference to the
 * batch object when one has it and the same hash; COFI_E_CONFLICT when one has it with
 * another hash; or another negative status (*out NULL). */
int batches_db_find_idempotent(PGconn *conn, const char *key, const char *hash, json_t **out,
                               struct cofi_err *err);

/* Inserts the batch and one call per file (seq 0, 1, ... in the order next_file gives them)
 * in one transaction, streamed with COPY: memory does not grow with the number of files. Returns 0
 * with *out a new reference to the batch object and *created true; when another request inserted a
 * batch with the same idempotency key first, 0 with *out that batch and *created false if its
 * request hash is the same, else COFI_E_CONFLICT. On error nothing is written and *out is NULL. */
int batches_db_create(PGconn *conn, const struct batch_new *b, json_t **out, bool *created,
                      struct cofi_err *err);

/* ---- pure helpers, exposed for tests ---- */

/* Appends one line of the COPY (text format) of calls: "<batch id>\t<seq>\t<file>\n", with
 * the backslash and the control characters of file escaped. Returns 0; -2 when out is full
 * or out of memory (out may then hold a partial line). */
int batches_db_copy_line(struct buf *out, const char *batch_id, size_t seq, const char *file,
                         size_t len);

#endif
