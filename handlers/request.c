/* Parsing shared by the handlers: ids, paging parameters, JSON bodies, headers. */
#include "handlers/handlers.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void http_reply_free(struct http_reply *rep)
{
    if (rep == NULL) {
        return;
    }
    json_decref(rep->body);
    json_decref(rep->problem_ext);
    free(rep->text);
    struct http_reply empty = HTTP_REPLY_INIT;
    *rep = empty;
}

int req_parse_id(const char *s, int64_t *out)
{
    if (s == NULL || *s == '\0') {
        return -1;
    }
    int64_t v = 0;
    for (const char *p = s; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10) {
            return -1;
        }
        v = v * 10 + d;
    }
    if (v == 0) {
        return -1;
    }
    *out = v;
    return 0;
}

int req_parse_limit(const char *s, int *out, struct cofi_err *err)
{
    if (s == NULL) {
        *out = PAGE_LIMIT_DEFAULT;
        return 0;
    }
    int64_t v;
    if (req_parse_id(s, &v) != 0 || v > PAGE_LIMIT_MAX) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "limit must be an integer from 1 to %d",
                            PAGE_LIMIT_MAX);
    }
    *out = (int)v;
    return 0;
}

int req_parse_cursor(const char *s, int64_t *out, struct cofi_err *err)
{
    if (s == NULL) {
        *out = 0;
        return 0;
    }
    int64_t v;
    if (req_parse_id(s, &v) != 0) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "cursor is not valid");
    }
    *out = v;
    return 0;
}

bool req_is_json_type(const char *ct)
{
    if (ct == NULL) {
        return false;
    }
    while (*ct == ' ' || *ct == '\t') {
        ct++;
    }
    static const char json[] = "application/json";
    size_t n = sizeof json - 1;
    if (strncasecmp(ct, json, n) != 0) {
        return false;
    }
    const char *rest = ct + n;
    while (*rest == ' ' || *rest == '\t') {
        rest++;
    }
    return *rest == '\0' || *rest == ';';
}

int req_json_body(const struct http_req *req, bool required, json_t **out, struct cofi_err *err)
{
    *out = NULL;
    if (req->body == NULL || req->body_len == 0) {
        if (required) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST, "a JSON body is required");
        }
        return 0;
    }
    if (!req_is_json_type(req->content_type)) {
        return cofi_err_set(err, COFI_E_MEDIA_TYPE, "the body must be application/json");
    }
    json_error_t je;
    json_t *root =
        json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (root == NULL) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "malformed JSON at line %d column %d: %s",
                            je.line, je.column, je.text);
    }
    *out = root;
    return 0;
}

int req_check_mode(const json_t *v, const char **mode, struct cofi_err *err)
{
    if (!json_is_string(v)) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "mode must be a string");
    }
    const char *s = json_string_value(v);
    if (json_string_length(v) == strlen(s)) {
        if (strcmp(s, "pipelined") == 0) {
            *mode = "pipelined";
            return 0;
        }
        if (strcmp(s, "staged") == 0) {
            *mode = "staged";
            return 0;
        }
    }
    return cofi_err_set(err, COFI_E_INVALID, "mode must be \"pipelined\" or \"staged\"");
}

int req_parse_action_body(const struct http_req *req, const char **mode, struct cofi_err *err)
{
    *mode = NULL;
    json_t *root;
    int rc = req_json_body(req, /* required= */ false, &root, err);
    if (rc != 0 || root == NULL) {
        return rc;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "the body must be a JSON object");
    }
    const char *key;
    json_t *value;
    const char *found = NULL;
    json_object_foreach(root, key, value)
    {
        if (strcmp(key, "mode") != 0) {
            rc = cofi_err_set(err, COFI_E_BAD_REQUEST, "unknown key \"%s\"", key);
            break;
        }
        rc = req_check_mode(value, &found, err);
        if (rc != 0) {
            break;
        }
    }
    json_decref(root);
    if (rc == 0) {
        *mode = found;
    }
    return rc;
}

int req_check_idempotency_key(const char *key, struct cofi_err *err)
{
    size_t n = strlen(key);
    bool ok = n >= 1 && n <= 255 && key[0] != ' ' && key[n - 1] != ' ';
    for (size_t i = 0; i < n && ok; i++) {
        unsigned char c = (unsigned char)key[i];
        ok = c >= 0x20 && c <= 0x7e;
    }
    if (!ok) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST,
                            "Idempotency-Key must be 1 to 255 visible ASCII characters, spaces "
                            "only between them");
    }
    return 0;
}

bool req_json_has_nul(const json_t *v)
{
    if (json_is_string(v)) {
        return json_string_length(v) != strlen(json_string_value(v));
    }
    if (json_is_array(v)) {
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e)
        {
            if (req_json_has_nul(e)) {
                return true;
            }
        }
        return false;
    }
    if (json_is_object(v)) {
        const char *key;
        size_t klen;
        const json_t *e;
        void *it = json_object_iter((json_t *)v);
        while (it != NULL) {
            key = json_object_iter_key(it);
            klen = json_object_iter_key_len(it);
            e = json_object_iter_value(it);
            if (klen != strlen(key) || req_json_has_nul(e)) {
                return true;
            }
            it = json_object_iter_next((json_t *)v, it);
        }
        return false;
    }
    return false;
}

PGconn *req_db_acquire(const struct cofi_app *app, struct cofi_err *err)
{
    PGconn *conn = db_acquire(app->db, err);
    if (conn == NULL && err->code != COFI_E_UNAVAILABLE && err->code != COFI_E_BUSY) {
        cofi_err_set(err, COFI_E_UNAVAILABLE, "no database connection");
    }
    return conn;
}

int req_parse_page(const struct http_req *req, int *limit, int64_t *cursor, struct cofi_err *err)
{
    int l = 0;
    int64_t c = 0;
    int rc = req_parse_limit(req->query(req, "limit"), &l, err);
    if (rc == 0) {
        rc = req_parse_cursor(req->query(req, "cursor"), &c, err);
    }
    if (rc == 0) {
        *limit = l;
        *cursor = c;
    }
    return rc;
}

/* jansson's dump callback that only counts. */
static int count_bytes(const char *buffer, size_t size, void *data)
{
    (void)buffer;
    *(size_t *)data += size;
    return 0;
}

void req_page_cap_bytes(json_t *page, const char *key, const char *cursor_field, int64_t step,
                        size_t max_bytes)
{
    json_t *items = json_object_get(page, key);
    size_t n = json_array_size(items);
    size_t total = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        if (json_dump_callback(json_array_get(items, i), count_bytes, &len, JSON_COMPACT) != 0) {
            return;
        }
        total += len + 1;
        if (total > max_bytes && i > 0) {
            keep = i;
            break;
        }
    }
    if (keep == n) {
        return;
    }
    json_t *last = json_object_get(json_array_get(items, keep - 1), cursor_field);
    if (!json_is_integer(last)) {
        return;
    }
    char text[32];
    snprintf(text, sizeof text, "%" JSON_INTEGER_FORMAT, json_integer_value(last) + step);
    json_t *next = json_string(text);
    if (next == NULL) {
        return;
    }
    while (json_array_size(items) > keep) {
        json_array_remove(items, json_array_size(items) - 1);
    }
    json_object_set_new(page, "next_cursor", next);
}

int req_check_priority(const json_t *v, int *priority, struct cofi_err *err)
{
    if (!json_is_integer(v)) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "priority must be an integer");
    }
    json_int_t p = json_integer_value(v);
    if (p < 1 || p > INT32_MAX) {
        return cofi_err_set(err, COFI_E_INVALID, "priority must be between 1 and %d", INT32_MAX);
    }
    *priority = (int)p;
    return 0;
}

int req_batch_id(const struct http_req *req, int64_t *id, struct cofi_err *err)
{
    if (req->param_count < 1 || req_parse_id(req->params[0], id) != 0) {
        return cofi_err_set(err, COFI_E_NOT_FOUND, "no such batch");
    }
    return 0;
}
