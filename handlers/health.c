/* Liveness and readiness: GET /healthz and GET /readyz. */
#include "handlers/handlers.h"

#include <stdio.h>

#include "db/migrate.h"

int handle_healthz(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                   struct cofi_err *err)
{
    (void)app;
    (void)req;
    rep->body = json_pack("{s:s}", "status", "ok");
    if (rep->body == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    rep->status = 200;
    return 0;
}

int handle_readyz(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                  struct cofi_err *err)
{
    (void)req;
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    int rc = db_check_migrated(conn, err);
    db_release(app->db, conn);
    if (rc != 0) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        return cofi_err_set(err, COFI_E_UNAVAILABLE, "not ready: %s", why);
    }
    rep->body = json_pack("{s:s}", "status", "ready");
    if (rep->body == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    rep->status = 200;
    return 0;
}
