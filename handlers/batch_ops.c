/* Operations on a batch after it was made: PATCH, DELETE, pause, resume and retry. */
#include "handlers/handlers.h"

#include <inttypes.h>
#include <string.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/stages.h"
#include "db/batch_ops_db.h"

/* A retry body's array literals stay below this many bytes (a body is at most
 * max_body_bytes, and each element costs at most its text plus a comma). */
#define RETRY_LITERAL_MAX ((size_t)64 << 20)

/* Checks a PATCH body: an object with "priority" and/or "name" only. */
static int parse_patch_body(const json_t *root, struct batch_change *ch, struct cofi_err *err)
{
    if (!json_is_object(root)) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "the body must be a JSON object");
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)root, key, v)
    {
        if (strcmp(key, "priority") == 0) {
            int rc = req_check_priority(v, &ch->priority, err);
            if (rc != 0) {
                return rc;
            }
        } else if (strcmp(key, "name") == 0) {
            if (!json_is_string(v) && !json_is_null(v)) {
                return cofi_err_set(err, COFI_E_BAD_REQUEST, "name must be a string or null");
            }
            if (req_json_has_nul(v)) {
                return cofi_err_set(err, COFI_E_INVALID, "name contains a NUL character");
            }
            ch->set_name = true;
            ch->name = json_string_value(v);
        } else {
            return cofi_err_set(err, COFI_E_BAD_REQUEST, "unknown key \"%s\"", key);
        }
    }
    return 0;
}

int handle_batch_patch(const struct cofi_app *app, const struct http_req *req,
                       struct http_reply *rep, struct cofi_err *err)
{
    int64_t id;
    int rc = req_batch_id(req, &id, err);
    if (rc != 0) {
        return rc;
    }
    json_t *root;
    rc = req_json_body(req, /* required= */ true, &root, err);
    if (rc != 0) {
        return rc;
    }
    struct batch_change ch = {0, false, NULL};
    rc = parse_patch_body(root, &ch, err);
    PGconn *conn = rc == 0 ? req_db_acquire(app, err) : NULL;
    if (rc == 0 && conn == NULL) {
        rc = err->code;
    }
    if (rc == 0) {
        rc = batches_db_update(conn, id, &ch, &rep->body, err);
        db_release(app->db, conn);
    }
    json_decref(root);
    if (rc != 0) {
        return rc;
    }
    /* A new priority changes the shares at once. */
    engine_wake(app->engine);
    rep->status = 200;
    return 0;
}

int handle_batch_delete(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err)
{
    int64_t id;
    int rc = req_batch_id(req, &id, err);
    if (rc != 0) {
        return rc;
    }
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    rc = batches_db_delete(conn, id, err);
    db_release(app->db, conn);
    if (rc != 0) {
        return rc;
    }
    log_info("batch %" PRId64 " deleted", id);
    rep->status = 204;
    return 0;
}

/* The body of pause and resume: none, or an empty object. */
static int check_empty_body(const struct http_req *req, struct cofi_err *err)
{
    json_t *root;
    int rc = req_json_body(req, /* required= */ false, &root, err);
    if (rc != 0 || root == NULL) {
        return rc;
    }
    if (!json_is_object(root)) {
        rc = cofi_err_set(err, COFI_E_BAD_REQUEST, "the body must be a JSON object");
    } else if (json_object_size(root) > 0) {
        rc = cofi_err_set(err, COFI_E_BAD_REQUEST, "unknown key \"%s\"",
                          json_object_iter_key(json_object_iter(root)));
    }
    json_decref(root);
    return rc;
}

/* pause and resume: state `from` -> `to`, wake the engine, answer 202. */
static int transition(const struct cofi_app *app, const struct http_req *req,
                      struct http_reply *rep, const char *from, const char *to,
                      struct cofi_err *err)
{
    int64_t id;
    int rc = req_batch_id(req, &id, err);
    if (rc == 0) {
        rc = check_empty_body(req, err);
    }
    if (rc != 0) {
        return rc;
    }
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    rc = batches_db_transition(conn, id, from, to, &rep->body, err);
    db_release(app->db, conn);
    if (rc != 0) {
        return rc;
    }
    engine_wake(app->engine);
    log_info("batch %" PRId64 " %s -> %s", id, from, to);
    rep->status = 202;
    return 0;
}

int handle_batch_pause(const struct cofi_app *app, const struct http_req *req,
                       struct http_reply *rep, struct cofi_err *err)
{
    return transition(app, req, rep, "running", "paused", err);
}

int handle_batch_resume(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err)
{
    return transition(app, req, rep, "paused", "running", err);
}

/* Appends one array element (after a comma unless first) to a literal being built. */
static int literal_add(struct buf *lit, bool first, const char *text, struct cofi_err *err)
{
    if (buf_printf(lit, "%s%s", first ? "" : ",", text) != 0) {
        return cofi_err_set(err, COFI_E_TOO_LARGE, "the retry selection is too large");
    }
    return 0;
}

/* "stages": an array of stage names -> "{n,...}" in lit. */
static int parse_retry_stages(const json_t *v, struct buf *lit, struct cofi_err *err)
{
    if (!json_is_array(v)) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "stages must be an array of stage names");
    }
    int rc = literal_add(lit, true, "{", err);
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e)
    {
        if (rc != 0) {
            break;
        }
        if (!json_is_string(e)) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST, "stages[%zu] must be a string", i);
        }
        int s = stage_from_name(json_string_value(e));
        if (s < 0) {
            return cofi_err_set(err, COFI_E_INVALID, "stages[%zu] is not a stage name", i);
        }
        char n[16];
        snprintf(n, sizeof n, "%d", s);
        rc = literal_add(lit, i == 0, n, err);
    }
    return rc != 0 ? rc : literal_add(lit, true, "}", err);
}

/* "calls": an array of call ids (strings of digits) -> "{id,...}" in lit. */
static int parse_retry_calls(const json_t *v, struct buf *lit, struct cofi_err *err)
{
    if (!json_is_array(v)) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "calls must be an array of call ids");
    }
    int rc = literal_add(lit, true, "{", err);
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e)
    {
        if (rc != 0) {
            break;
        }
        if (!json_is_string(e)) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST, "calls[%zu] must be a string", i);
        }
        int64_t id;
        if (req_parse_id(json_string_value(e), &id) != 0) {
            return cofi_err_set(err, COFI_E_INVALID, "calls[%zu] is not a call id", i);
        }
        char n[24];
        snprintf(n, sizeof n, "%" PRId64, id);
        rc = literal_add(lit, i == 0, n, err);
    }
    return rc != 0 ? rc : literal_add(lit, true, "}", err);
}

/* The optional retry body: none, or {"stages"?: [...], "calls"?: [...]}. Fills the literals
 * of the keys given (the others stay empty). */
static int parse_retry_body(const json_t *root, struct buf *stages, struct buf *calls,
                            struct cofi_err *err)
{
    if (root == NULL) {
        return 0;
    }
    if (!json_is_object(root)) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "the body must be a JSON object");
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)root, key, v)
    {
        int rc;
        if (strcmp(key, "stages") == 0) {
            rc = parse_retry_stages(v, stages, err);
        } else if (strcmp(key, "calls") == 0) {
            rc = parse_retry_calls(v, calls, err);
        } else {
            rc = cofi_err_set(err, COFI_E_BAD_REQUEST, "unknown key \"%s\"", key);
        }
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

int handle_batch_retry(const struct cofi_app *app, const struct http_req *req,
                       struct http_reply *rep, struct cofi_err *err)
{
    int64_t id;
    int rc = req_batch_id(req, &id, err);
    if (rc != 0) {
        return rc;
    }
    json_t *root;
    rc = req_json_body(req, /* required= */ false, &root, err);
    if (rc != 0) {
        return rc;
    }
    struct buf stages;
    struct buf calls;
    buf_init(&stages, RETRY_LITERAL_MAX);
    buf_init(&calls, RETRY_LITERAL_MAX);
    rc = parse_retry_body(root, &stages, &calls, err);
    json_decref(root);
    PGconn *conn = rc == 0 ? req_db_acquire(app, err) : NULL;
    if (rc == 0 && conn == NULL) {
        rc = err->code;
    }
    int64_t retried = 0;
    if (rc == 0) {
        struct retry_select sel = {stages.len > 0 ? stages.data : NULL,
                                   calls.len > 0 ? calls.data : NULL};
        rc = batches_db_retry(conn, id, &sel, &rep->body, &retried, err);
        db_release(app->db, conn);
    }
    buf_free(&stages);
    buf_free(&calls);
    if (rc != 0) {
        return rc;
    }
    engine_wake(app->engine);
    log_info("batch %" PRId64 " retry: %" PRId64 " failed calls back to pending", id, retried);
    rep->status = 202;
    return 0;
}
