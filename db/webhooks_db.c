/* SQL of the webhook outbox: claim under a lease, keep the body, record an attempt. */
#include "db/webhooks_db.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"

void webhooks_db_delivery_free(struct webhook_delivery *d)
{
    if (d == NULL) {
        return;
    }
    free(d->url);
    free(d->body);
    memset(d, 0, sizeof *d);
}

static char *field_dup(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

int webhooks_db_claim(PGconn *c, const char *instance, int lease_ms, struct webhook_delivery *d,
                      int *found, struct cofi_err *err)
{
    memset(d, 0, sizeof *d);
    *found = 0;
    char lease[16];
    snprintf(lease, sizeof lease, "%d", lease_ms);
    const char *p[] = {instance, lease};
    PGresult *r = db_write_prepared(
        c, "cofi_webhook_claim",
        "UPDATE webhook_deliveries w SET lease_owner = $1, "
        "  lease_until = clock_timestamp() + $2::integer * interval '1 millisecond', "
        "  claim_token = nextval('claim_token_seq') "
        "WHERE w.id = (SELECT d.id FROM webhook_deliveries d "
        "  WHERE d.delivered_at IS NULL AND d.next_at <= clock_timestamp() "
        "    AND (d.lease_until IS NULL OR d.lease_until < clock_timestamp()) "
        "  ORDER BY d.next_at LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "RETURNING w.id, w.batch_id, w.claim_token, w.attempts, w.url, w.body",
        2, p, err);
    if (r == NULL) {
        return err->code;
    }
    int rc = 0;
    if (PQntuples(r) == 1) {
        snprintf(d->id, sizeof d->id, "%s", PQgetvalue(r, 0, 0));
        d->batch_id = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        d->token = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
        d->attempts = atoi(PQgetvalue(r, 0, 3));
        d->url = field_dup(r, 0, 4);
        d->body = field_dup(r, 0, 5);
        *found = 1;
        if (d->url == NULL || (d->body == NULL && !PQgetisnull(r, 0, 5))) {
            webhooks_db_delivery_free(d);
            *found = 0;
            rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
        }
    }
    PQclear(r);
    return rc;
}

int webhooks_db_set_body(PGconn *c, struct webhook_delivery *d, const char *body,
                         struct cofi_err *err)
{
    const char *p[] = {d->id, body};
    PGresult *r = db_exec(c,
                          "UPDATE webhook_deliveries SET body = coalesce(body, $2) "
                          "WHERE id = $1::uuid RETURNING body",
                          2, p, err);
    if (r == NULL) {
        return err->code;
    }
    int rc = 0;
    free(d->body);
    d->body = NULL;
    if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0)) {
        d->body = strdup(PQgetvalue(r, 0, 0));
        if (d->body == NULL) {
            rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
        }
    }
    PQclear(r);
    return rc;
}

int webhooks_db_record(PGconn *c, const struct webhook_delivery *d, long http_status,
                       const char *error, int64_t retry_ms, struct cofi_err *err)
{
    char token[24];
    char status[16];
    char retry[24];
    snprintf(token, sizeof token, "%" PRId64, d->token);
    snprintf(status, sizeof status, "%ld", http_status);
    snprintf(retry, sizeof retry, "%" PRId64, retry_ms);
    bool ok = http_status >= 200 && http_status <= 299;
    const char *p[] = {d->id, token, http_status > 0 ? status : NULL, ok ? "t" : "f", error, retry};
    return db_command(c,
                      "UPDATE webhook_deliveries SET attempts = attempts + 1, "
                      "  last_status = $3::integer, "
                      "  last_error = CASE WHEN $4::boolean THEN NULL ELSE $5 END, "
                      "  delivered_at = CASE WHEN $4::boolean THEN clock_timestamp() END, "
                      "  next_at = CASE WHEN $4::boolean THEN next_at "
                      "    ELSE clock_timestamp() + $6::bigint * interval '1 millisecond' END, "
                      "  lease_owner = NULL, lease_until = NULL, claim_token = NULL "
                      "WHERE id = $1::uuid AND claim_token = $2::bigint",
                      6, p, err);
}

int webhooks_db_release(PGconn *c, const struct webhook_delivery *d, struct cofi_err *err)
{
    char token[24];
    snprintf(token, sizeof token, "%" PRId64, d->token);
    const char *p[] = {d->id, token};
    return db_command(c,
                      "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL, "
                      "  claim_token = NULL WHERE id = $1::uuid AND claim_token = $2::bigint",
                      2, p, err);
}

int webhooks_db_release_mine(PGconn *c, const char *instance, struct cofi_err *err)
{
    const char *p[] = {instance};
    return db_command(c,
                      "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL, "
                      "  claim_token = NULL WHERE lease_owner = $1 AND delivered_at IS NULL",
                      1, p, err);
}
