/* The call resource: GET /batches/{id}/calls and GET /batches/{id}/calls/{call_id}. */
#include "handlers/handlers.h"

#include "db/calls_db.h"
#include "common/stages.h"

int handle_calls_list(const struct cofi_app *app, const struct http_req *req,
                      struct http_reply *rep, struct cofi_err *err)
{
    int64_t batch_id;
    if (req->param_count < 1 || req_parse_id(req->params[0], &batch_id) != 0) {
        return cofi_err_set(err, COFI_E_NOT_FOUND, "no such batch");
    }
    int limit;
    int64_t cursor;
    int rc = req_parse_page(req, &limit, &cursor, err);
    if (rc != 0) {
        return rc;
    }
    const char *state = req->query(req, "state");
    if (state != NULL) {
        int st = call_status_from_name(state);
        if (st < 0) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST,
                                "state must be one of pending, running, done, failed, cancelled");
        }
        state = call_status_name(st);
    }
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    rc = calls_db_list(conn, batch_id, cursor, limit, state, &rep->body, err);
    db_release(app->db, conn);
    if (rc == 0) {
        req_page_cap_bytes(rep->body, "calls", "seq", 1, app->cfg->http.list_max_bytes);
        rep->status = 200;
    }
    return rc;
}

int handle_call_get(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                    struct cofi_err *err)
{
    int64_t batch_id;
    int64_t call_id;
    if (req->param_count < 2 || req_parse_id(req->params[0], &batch_id) != 0 ||
        req_parse_id(req->params[1], &call_id) != 0) {
        return cofi_err_set(err, COFI_E_NOT_FOUND, "no such call");
    }
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    int rc = calls_db_get(conn, batch_id, call_id, &rep->body, err);
    db_release(app->db, conn);
    if (rc == 0) {
        rep->status = 200;
    }
    return rc;
}
