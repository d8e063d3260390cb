/* Private to db/: the transaction of a batch write (begin and lock the batch row, keep its
 * pending webhook bodies, end with the batch read and a commit or a rollback), shared by
 * db/batch_create_db.c and db/batch_ops_db.c. */
#ifndef COFI_BATCH_TX_H
#define COFI_BATCH_TX_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "common/error.h"

/* Rolls back the open transaction, ignoring any error. */
void batch_rollback(PGconn *conn);

/* Begins a transaction and locks batch id_text's row, copying its state (and whether
 * finished_at is set) out. Returns 0 inside the open transaction; COFI_E_NOT_FOUND or a
 * database error with no transaction left open. */
int batch_begin_locked(PGconn *conn, const char *id_text, char state[32], bool *finished,
                       struct cofi_err *err);

/* Inside the open transaction, before a retry or a delete changes or removes the batch:
 * the webhook deliveries of its end that were not rendered yet keep the batch object as it
 * is now (as it ended), so what they announce is the end they were queued for. */
int batch_freeze_deliveries(PGconn *conn, const char *id_text, struct cofi_err *err);

/* Ends the open transaction of a batch write with the status rc of its steps: when rc is 0,
 * reads batch id_text into *out inside it (unless out is NULL) and commits; otherwise, or
 * when that fails, rolls back and leaves *out NULL (its reference dropped). Returns 0, rc,
 * or the error of the read or the commit. */
int batch_tx_end(PGconn *conn, const char *id_text, int rc, json_t **out, struct cofi_err *err);

#endif
