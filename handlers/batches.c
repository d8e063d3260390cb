/* The batch resource: POST/GET /batches, GET /batches/{id}, POST /batches/{id}/run|cancel
 * (the other operations on a batch are in handlers/batch_ops.c). */
/* for O_PATH */
#define _GNU_SOURCE

#include "handlers/handlers.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "db/batches_db.h"

#define MAX_FILE_ERRORS 20

static const char *const batch_states[] = {
    "created", "running", "paused", "completed", "completed_with_errors", "cancelled"};

/* True when the relative path climbs above its starting directory ("a/../../b"). */
static bool escapes_lexically(const char *file)
{
    int depth = 0;
    const char *p = file;
    while (*p != '\0') {
        while (*p == '/') {
            p++;
        }
        const char *end = strchr(p, '/');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            depth--;
            if (depth < 0) {
                return true;
            }
        } else if (n > 0 && !(n == 1 && p[0] == '.')) {
            depth++;
        }
        p += n;
    }
    return false;
}

/* The fast check: one resolution of file beneath root_fd, which the kernel refuses to let
 * escape (by "..", an absolute path or a symbolic link). Returns 0 (good), -1 with *reason
 * (bad), or 1 when it can't tell (no openat2, an absolute symbolic link, a race): then the
 * realpath check decides. */
static int check_beneath(int root_fd, const char *file, const char **reason)
{
#ifdef SYS_openat2
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, root_fd, file, &how, sizeof how);
    if (fd < 0) {
        switch (errno) {
        case ENOENT:
        case ENOTDIR:
            *reason = "does not exist";
            return -1;
        case EACCES:
            *reason = "is not readable";
            return -1;
        case ENAMETOOLONG:
            *reason = "is too long";
            return -1;
        default:
            return 1;
        }
    }
    struct stat st;
    int rc = fstat(fd, &st);
    close(fd);
    if (rc != 0) {
        return 1;
    }
    if (!S_ISREG(st.st_mode)) {
        *reason = "is not a regular file";
        return -1;
    }
    /* A file nobody may read counts as unreadable even when cofid runs as root. */
    if ((st.st_mode & (S_IRUSR | S_IRGRP | S_IROTH)) == 0 ||
        faccessat(root_fd, file, R_OK, 0) != 0) {
        *reason = "is not readable";
        return -1;
    }
    return 0;
#else
    (void)root_fd;
    (void)file;
    (void)reason;
    return 1;
#endif
}

int batches_check_file(const char *root, int root_fd, const char *file, size_t file_len,
                       const char **reason)
{
    if (file_len == 0) {
        *reason = "is empty";
        return -1;
    }
    if (strlen(file) != file_len) {
        *reason = "contains a NUL character";
        return -1;
    }
    if (file[0] == '/') {
        *reason = "is absolute (paths are relative to input_root)";
        return -1;
    }
    if (escapes_lexically(file)) {
        *reason = "leaves input_root";
        return -1;
    }
    if (root_fd >= 0) {
        int rc = check_beneath(root_fd, file, reason);
        if (rc <= 0) {
            return rc;
        }
    }
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s", root, file);
    if (n < 0 || (size_t)n >= sizeof path) {
        *reason = "is too long";
        return -1;
    }
    char real[PATH_MAX];
    if (realpath(path, real) == NULL) {
        switch (errno) {
        case EACCES:
            *reason = "is not readable";
            break;
        case ENAMETOOLONG:
            *reason = "is too long";
            break;
        case ELOOP:
            *reason = "has a symbolic link loop";
            break;
        default:
            *reason = "does not exist";
            break;
        }
        return -1;
    }
    size_t root_len = strlen(root);
    bool inside =
        (root_len == 1 && root[0] == '/') ||
        (strncmp(real, root, root_len) == 0 && (real[root_len] == '/' || real[root_len] == '\0'));
    if (!inside) {
        *reason = "leaves input_root";
        return -1;
    }
    struct stat st;
    if (stat(real, &st) != 0) {
        *reason = "does not exist";
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        *reason = "is not a regular file";
        return -1;
    }
    /* A file nobody may read counts as unreadable even when cofid runs as root. */
    if (access(real, R_OK) != 0 || (st.st_mode & (S_IRUSR | S_IRGRP | S_IROTH)) == 0) {
        *reason = "is not readable";
        return -1;
    }
    return 0;
}

/* Files checked before the database is touched: a batch whose first files are bad (say,
 * hundreds of thousands of missing ones) is refused without inserting anything. The rest are
 * checked while the calls are inserted (the insert is cancelled when one is bad). */
#define FILES_PRECHECK 1000

/* Checks the first `limit` files of the batch on disk. Returns 0, or COFI_E_INVALID with *ext
 * {"errors": [{"file", "reason"}, ...]} (the first MAX_FILE_ERRORS bad files). */
static int check_files(const char *root, const json_t *files, size_t limit, json_t **ext,
                       struct cofi_err *err)
{
    json_t *errors = NULL;
    size_t bad = 0;
    int root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    size_t i;
    const json_t *f;
    json_array_foreach(files, i, f)
    {
        if (i == limit) {
            break;
        }
        const char *reason;
        if (batches_check_file(root, root_fd, json_string_value(f), json_string_length(f),
                               &reason) == 0) {
            continue;
        }
        if (bad == 0) {
            errors = json_array();
            cofi_err_set(err, COFI_E_INVALID, "file \"%s\" %s", json_string_value(f), reason);
        }
        json_array_append_new(errors, json_pack("{s:O, s:s}", "file", f, "reason", reason));
        bad++;
        if (bad == MAX_FILE_ERRORS) {
            break;
        }
    }
    if (root_fd >= 0) {
        close(root_fd);
    }
    if (bad == 0) {
        return 0;
    }
    if (bad > 1) {
        char first[sizeof err->msg];
        snprintf(first, sizeof first, "%s", err->msg);
        cofi_err_set(err, COFI_E_INVALID, "%zu%s files are invalid, the first: %s", bad,
                     bad == MAX_FILE_ERRORS ? " or more" : "", first);
    }
    *ext = json_pack("{s:o}", "errors", errors);
    return COFI_E_INVALID;
}

struct files_check {
    const char *root;
    const json_t *files;
    json_t **ext;
};

static int check_files_cb(void *ctx, struct cofi_err *err)
{
    const struct files_check *fc = ctx;
    return check_files(fc->root, fc->files, SIZE_MAX, fc->ext, err);
}

/* The request body of POST /batches, checked for shape and types; values borrowed from
 * the parsed body. */
struct create_body {
    const char *name;
    const json_t *files;
    const json_t *metadata; /* an object or NULL */
    const char *mode;
    int priority;
};

static int parse_create_body(const json_t *root, struct create_body *b, struct cofi_err *err)
{
    if (!json_is_object(root)) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "the body must be a JSON object");
    }
    memset(b, 0, sizeof *b);
    b->mode = "pipelined";
    b->priority = 1;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)root, key, v)
    {
        if (strcmp(key, "name") == 0) {
            if (json_is_string(v)) {
                if (req_json_has_nul(v)) {
                    return cofi_err_set(err, COFI_E_INVALID, "name contains a NUL character");
                }
                b->name = json_string_value(v);
            } else if (!json_is_null(v)) {
                return cofi_err_set(err, COFI_E_BAD_REQUEST, "name must be a string or null");
            }
        } else if (strcmp(key, "files") == 0) {
            if (!json_is_array(v)) {
                return cofi_err_set(err, COFI_E_BAD_REQUEST, "files must be an array of strings");
            }
            b->files = v;
        } else if (strcmp(key, "metadata") == 0) {
            if (json_is_object(v)) {
                if (req_json_has_nul(v)) {
                    return cofi_err_set(err, COFI_E_INVALID, "metadata contains a NUL character");
                }
                b->metadata = v;
            } else if (!json_is_null(v)) {
                return cofi_err_set(err, COFI_E_BAD_REQUEST, "metadata must be an object or null");
            }
        } else if (strcmp(key, "mode") == 0) {
            int rc = req_check_mode(v, &b->mode, err);
            if (rc != 0) {
                return rc;
            }
        } else if (strcmp(key, "priority") == 0) {
            int rc = req_check_priority(v, &b->priority, err);
            if (rc != 0) {
                return rc;
            }
        } else {
            return cofi_err_set(err, COFI_E_BAD_REQUEST, "unknown key \"%s\"", key);
        }
    }
    if (b->files == NULL) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "files is required");
    }
    size_t i;
    const json_t *f;
    json_array_foreach(b->files, i, f)
    {
        if (!json_is_string(f)) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST, "files[%zu] must be a string", i);
        }
    }
    if (json_array_size(b->files) == 0) {
        return cofi_err_set(err, COFI_E_INVALID, "files must not be empty");
    }
    if (json_array_size(b->files) > INT32_MAX) {
        return cofi_err_set(err, COFI_E_INVALID, "too many files");
    }
    return 0;
}

/* Characters (UTF-8 code points) of a valid UTF-8 string. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        n += (*p & 0xc0) != 0x80;
    }
    return n;
}

/* The limits per field of a new batch (openapi/openapi.json, CreateBatch): a name of at most
 * BATCH_NAME_MAX_CHARS characters and at most BATCH_FILES_MAX files (422), metadata of at most
 * metadata_max bytes as compact JSON (413). *metadata is set to that JSON text (a new string
 * the caller frees) when the body has metadata. */
static int check_limits(const struct create_body *b, size_t metadata_max, char **metadata,
                        struct cofi_err *err)
{
    *metadata = NULL;
    if (b->name != NULL && utf8_chars(b->name) > BATCH_NAME_MAX_CHARS) {
        return cofi_err_set(err, COFI_E_INVALID, "name is longer than %d characters",
                            BATCH_NAME_MAX_CHARS);
    }
    if (json_array_size(b->files) > BATCH_FILES_MAX) {
        return cofi_err_set(err, COFI_E_INVALID, "more than %d files in one batch",
                            BATCH_FILES_MAX);
    }
    if (b->metadata == NULL) {
        return 0;
    }
    char *text = json_dumps(b->metadata, JSON_COMPACT);
    if (text == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    if (strlen(text) > metadata_max) {
        free(text);
        return cofi_err_set(err, COFI_E_TOO_LARGE, "metadata is larger than %zu bytes as JSON",
                            metadata_max);
    }
    *metadata = text;
    return 0;
}

static void set_location(struct http_reply *rep, const json_t *batch)
{
    snprintf(rep->location, sizeof rep->location, "/batches/%" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(batch, "id")));
}

/* The idempotent repeat: looks the key up. Returns 0 with *batch NULL (go on and create) or
 * the existing batch; or an error. Fills hash on success. */
static int find_repeat(const struct cofi_app *app, const char *key, const json_t *root,
                       char hash[65], json_t **batch, struct cofi_err *err)
{
    char *canonical = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    if (canonical == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        free(canonical);
        return err->code;
    }
    int rc = batches_db_find_idempotent(conn, key, canonical, hash, batch, err);
    db_release(app->db, conn);
    free(canonical);
    return rc;
}

int handle_batches_create(const struct cofi_app *app, const struct http_req *req,
                          struct http_reply *rep, struct cofi_err *err)
{
    /* With tokens, a key belongs to the token that used it: stored as "<token env>\n<key>"
     * (a key holds no newline), so two callers never share a batch through a key. */
    char scoped[512];
    const char *key = req->idempotency_key;
    if (key != NULL) {
        int rc = req_check_idempotency_key(key, err);
        if (rc != 0) {
            return rc;
        }
        if (req->caller != NULL) {
            int n = snprintf(scoped, sizeof scoped, "%s\n%s", req->caller, key);
            if (n < 0 || (size_t)n >= sizeof scoped) {
                return cofi_err_set(err, COFI_E_INTERNAL, "idempotency key too long to scope");
            }
            key = scoped;
        }
    }
    int64_t t0 = clock_mono_us();
    json_t *root;
    int rc = req_json_body(req, /* required= */ true, &root, err);
    if (rc != 0) {
        return rc;
    }
    int64_t t_parsed = clock_mono_us();
    struct create_body body;
    char *metadata = NULL;
    json_t *batch = NULL;
    char hash[65] = {0};
    rc = parse_create_body(root, &body, err);
    if (rc == 0) {
        rc = check_limits(&body, app->cfg->http.metadata_max_bytes, &metadata, err);
    }
    if (rc != 0) {
        goto done;
    }
    if (key != NULL) {
        rc = find_repeat(app, key, root, hash, &batch, err);
        if (rc != 0 || batch != NULL) {
            goto done;
        }
    }
    rc = check_files(app->cfg->input_root, body.files, FILES_PRECHECK, &rep->problem_ext, err);
    if (rc != 0) {
        goto done;
    }
    /* The files are checked while the database inserts the calls (all rolled back if one is
     * bad): for a big batch the two take about as long. */
    struct files_check fc = {app->cfg->input_root, body.files, &rep->problem_ext};
    struct batch_new nb = {
        .name = body.name,
        .mode = body.mode,
        .priority = body.priority,
        .metadata = metadata,
        .files = body.files,
        .idempotency_key = key,
        .request_hash = key != NULL ? hash : NULL,
        .check = check_files_cb,
        .check_ctx = &fc,
    };
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        rc = err->code;
        goto done;
    }
    bool created = false;
    rc = batches_db_create(conn, &nb, &batch, &created, err);
    db_release(app->db, conn);
    if (rc == 0 && created) {
        int64_t t_end = clock_mono_us();
        log_info("batch %" JSON_INTEGER_FORMAT " created with %zu files (body parsed in %" PRId64
                 " ms, checked and stored in %" PRId64 " ms)",
                 json_integer_value(json_object_get(batch, "id")), json_array_size(body.files),
                 (t_parsed - t0) / 1000, (t_end - t_parsed) / 1000);
    }
    if (rc == 0) {
        rep->status = created ? 201 : 200;
    }

done:
    if (rc == 0 && batch != NULL) {
        if (rep->status == 0) {
            rep->status = 200; /* an idempotent repeat */
        }
        set_location(rep, batch);
        rep->body = batch;
    } else {
        json_decref(batch);
    }
    free(metadata);
    json_decref(root);
    return rc;
}

int handle_batches_list(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err)
{
    int limit;
    int64_t cursor;
    int rc = req_parse_page(req, &limit, &cursor, err);
    if (rc != 0) {
        return rc;
    }
    const char *state = req->query(req, "state");
    if (state != NULL) {
        const char *found = NULL;
        for (size_t i = 0; i < sizeof batch_states / sizeof batch_states[0]; i++) {
            if (strcmp(state, batch_states[i]) == 0) {
                found = batch_states[i];
            }
        }
        if (found == NULL) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST,
                                "state must be one of created, running, paused, completed, "
                                "completed_with_errors, cancelled");
        }
        state = found;
    }
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    const struct batch_page_ask ask = {cursor, limit, state, app->cfg->http.list_max_bytes};
    rc = batches_db_list(conn, &ask, &rep->body, err);
    db_release(app->db, conn);
    if (rc == 0) {
        req_page_cap_bytes(rep->body, "batches", "id", 0, app->cfg->http.list_max_bytes);
        rep->status = 200;
    }
    return rc;
}

int handle_batch_get(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                     struct cofi_err *err)
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
    rc = batches_db_get(conn, id, &rep->body, err);
    db_release(app->db, conn);
    if (rc == 0) {
        rep->status = 200;
    }
    return rc;
}

typedef int (*batch_action_fn)(PGconn *conn, int64_t id, const char *mode, json_t **out,
                               struct cofi_err *err);

static int cancel_action(PGconn *conn, int64_t id, const char *mode, json_t **out,
                         struct cofi_err *err)
{
    (void)mode; /* accepted for symmetry with run, and ignored */
    return batches_db_cancel(conn, id, out, err);
}

/* run and cancel: check the id and the optional body, act, wake the engine, answer 202. */
static int batch_action(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, batch_action_fn act, const char *what,
                        struct cofi_err *err)
{
    int64_t id;
    int rc = req_batch_id(req, &id, err);
    if (rc != 0) {
        return rc;
    }
    const char *mode;
    rc = req_parse_action_body(req, &mode, err);
    if (rc != 0) {
        return rc;
    }
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    rc = act(conn, id, mode, &rep->body, err);
    db_release(app->db, conn);
    if (rc != 0) {
        return rc;
    }
    engine_wake(app->engine);
    log_info("batch %" PRId64 " %s: now %s", id, what,
             json_string_value(json_object_get(rep->body, "state")));
    rep->status = 202;
    return 0;
}

int handle_batch_run(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                     struct cofi_err *err)
{
    return batch_action(app, req, rep, batches_db_run, "run", err);
}

int handle_batch_cancel(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err)
{
    return batch_action(app, req, rep, cancel_action, "cancel", err);
}
