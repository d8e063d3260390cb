/* The outbox of completion webhooks (migration 009): deliveries queued when a batch ends,
 * claimed under a lease by one instance at a time, and their attempts recorded. */
#ifndef COFI_WEBHOOKS_DB_H
#define COFI_WEBHOOKS_DB_H

#include <libpq-fe.h>
#include <stdint.h>

#include "common/error.h"

/* The SQL that queues one delivery per batch with a callback_url among the rows of `cte`, a
 * CTE of the statement that ends those batches (it must return id and callback_url): used by
 * that statement itself, so a batch never ends without its delivery (db/work_db.c and
 * db/batch_ops_db.c). */
#define WEBHOOKS_DB_QUEUE_FROM(cte)                                                                \
    "INSERT INTO webhook_deliveries (batch_id, url) SELECT id, callback_url FROM " cte             \
    " WHERE callback_url IS NOT NULL"

/* Every function here returns 0 or a negative cofi_status with err filled (as db_exec reports
 * it). They use the connection for their statements only, outside any transaction. */

/* A delivery claimed by this instance. Strings are owned by it (webhooks_db_delivery_free). */
struct webhook_delivery {
    char id[40]; /* the uuid: X-Cofi-Delivery */
    int64_t batch_id;
    int64_t token; /* the claim's fencing token */
    int attempts;  /* attempts made before this one */
    char *url;
    char *body; /* the batch object to send, or NULL when not rendered yet */
};

/* Frees what d owns and clears it. Accepts NULL. */
void webhooks_db_delivery_free(struct webhook_delivery *d);

/* Claims the delivery that is due first (not delivered, next_at passed, no live lease) for
 * `instance` until lease_ms from now, with a new fencing token; FOR UPDATE SKIP LOCKED, so
 * two instances never claim the same one at once. Returns 0 with *found 1 and *d filled, or
 * 0 with *found 0 when none is due. */
int webhooks_db_claim(PGconn *c, const char *instance, int lease_ms, struct webhook_delivery *d,
                      int *found, struct cofi_err *err);

/* Keeps body as the delivery's body unless it has one already (a retry or a DELETE of the
 * batch froze it first), and replaces d->body with the body kept: a new string (NULL when
 * the row has none and body was NULL). */
int webhooks_db_set_body(PGconn *c, struct webhook_delivery *d, const char *body,
                         struct cofi_err *err);

/* Records an attempt of a claimed delivery (fenced by its token) and ends the claim:
 * http_status 2xx: delivered; otherwise (0: no answer) attempts + 1, last_error `error`, due
 * again retry_ms from now. */
int webhooks_db_record(PGconn *c, const struct webhook_delivery *d, long http_status,
                       const char *error, int64_t retry_ms, struct cofi_err *err);

/* Ends every claim `instance` holds: for a sender that starts under the id of an earlier life
 * (killed mid-attempt), so its deliveries need not wait for their leases to run out. */
int webhooks_db_release_mine(PGconn *c, const char *instance, struct cofi_err *err);

/* Ends the claim of a delivery that was not attempted (a stop): it is due again at once. */
int webhooks_db_release(PGconn *c, const struct webhook_delivery *d, struct cofi_err *err);

#endif
