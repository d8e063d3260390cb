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
#include "db/batch_create_db.h"
#include "db/batch_ops_db.h"
#include "db/batches_db.h"
#include "handlers/batch_body.h"

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
 * checked one by one as the calls are streamed to the database (the insert is cancelled and
 * rolled back when one is bad). */
#define FILES_PRECHECK 1000

/* Checks the files of a batch as they are read, and collects the bad ones. */
struct files_check {
    const char *root;
    int root_fd;
    struct batch_files it;
    size_t limit;   /* stop after this many files (SIZE_MAX: all) */
    json_t **ext;   /* where the problem's {"errors": [...]} goes */
    json_t *errors; /* the bad files so far */
    size_t bad;
};

static void files_check_open(struct files_check *fc, const char *root, const struct batch_body *b,
                             size_t limit, json_t **ext)
{
    fc->root = root;
    fc->root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    batch_files_open(&fc->it, b);
    fc->limit = limit;
    fc->ext = ext;
    fc->errors = NULL;
    fc->bad = 0;
}

static void files_check_close(struct files_check *fc)
{
    if (fc->root_fd >= 0) {
        close(fc->root_fd);
    }
    batch_files_close(&fc->it);
    json_decref(fc->errors);
}

/* Notes one bad file (the first MAX_FILE_ERRORS of them). Returns 0, or COFI_E_NOMEM. */
static int note_bad(struct files_check *fc, const char *file, size_t len, const char *reason,
                    struct cofi_err *err)
{
    if (fc->bad == 0) {
        fc->errors = json_array();
        cofi_err_set(err, COFI_E_INVALID, "file \"%s\" %s", file, reason);
    }
    json_t *e = json_pack("{s:s%, s:s}", "file", file, len, "reason", reason);
    if (fc->errors == NULL || e == NULL || json_array_append_new(fc->errors, e) != 0) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    fc->bad++;
    return 0;
}

/* After the first bad file: reads on to collect more (up to MAX_FILE_ERRORS), then sets the
 * problem's extension and err. Returns COFI_E_INVALID (or COFI_E_NOMEM). */
static int refuse_files(struct files_check *fc, struct cofi_err *err)
{
    const char *f;
    size_t n;
    int rc;
    while (fc->bad < MAX_FILE_ERRORS && fc->it.index < fc->limit &&
           (rc = batch_files_next(&fc->it, &f, &n, err)) == 1) {
        const char *reason;
        if (batches_check_file(fc->root, fc->root_fd, f, n, &reason) != 0 &&
            note_bad(fc, f, n, reason, err) != 0) {
            return COFI_E_NOMEM;
        }
    }
    if (fc->bad > 1) {
        char first[sizeof err->msg];
        snprintf(first, sizeof first, "%s", err->msg);
        cofi_err_set(err, COFI_E_INVALID, "%zu%s files are invalid, the first: %s", fc->bad,
                     fc->bad == MAX_FILE_ERRORS ? " or more" : "", first);
    }
    *fc->ext = json_pack("{s:o}", "errors", fc->errors);
    fc->errors = NULL;
    return COFI_E_INVALID;
}

/* The next good file (struct batch_new's next_file): 1 with *file; 0 after the last (or the
 * limit); COFI_E_INVALID once a file is bad (with the bad ones collected). */
static int next_checked_file(void *ctx, const char **file, size_t *len, struct cofi_err *err)
{
    struct files_check *fc = ctx;
    if (fc->it.index >= fc->limit) {
        return 0;
    }
    int rc = batch_files_next(&fc->it, file, len, err);
    if (rc != 1) {
        return rc;
    }
    const char *reason;
    if (batches_check_file(fc->root, fc->root_fd, *file, *len, &reason) == 0) {
        return 1;
    }
    if (note_bad(fc, *file, *len, reason, err) != 0) {
        return COFI_E_NOMEM;
    }
    return refuse_files(fc, err);
}

/* Checks the first `limit` files on disk. Returns 0, or COFI_E_INVALID with *ext
 * {"errors": [{"file", "reason"}, ...]} (the first MAX_FILE_ERRORS bad files). */
static int check_first_files(const char *root, const struct batch_body *b, size_t limit,
                             json_t **ext, struct cofi_err *err)
{
    struct files_check fc;
    files_check_open(&fc, root, b, limit, ext);
    const char *f;
    size_t n;
    int rc;
    while ((rc = next_checked_file(&fc, &f, &n, err)) == 1) {
    }
    files_check_close(&fc);
    return rc;
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
static int check_limits(const struct batch_body *b, size_t metadata_max, char **metadata,
                        struct cofi_err *err)
{
    *metadata = NULL;
    if (b->name != NULL && utf8_chars(b->name) > BATCH_NAME_MAX_CHARS) {
        return cofi_err_set(err, COFI_E_INVALID, "name is longer than %d characters",
                            BATCH_NAME_MAX_CHARS);
    }
    if (b->file_count > BATCH_FILES_MAX) {
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
static int find_repeat(const struct cofi_app *app, const char *key, const struct batch_body *b,
                       char hash[65], json_t **batch, struct cofi_err *err)
{
    int rc = batch_body_hash(b, hash, err);
    if (rc != 0) {
        return rc;
    }
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    rc = batches_db_find_idempotent(conn, key, hash, batch, err);
    db_release(app->db, conn);
    return rc;
}

/* The body of POST /batches: present, JSON, and well formed. */
static int read_create_body(const struct http_req *req, struct batch_body *b, struct cofi_err *err)
{
    if (req->body == NULL || req->body_len == 0) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "a JSON body is required");
    }
    if (!req_is_json_type(req->content_type)) {
        return cofi_err_set(err, COFI_E_MEDIA_TYPE, "the body must be application/json");
    }
    return batch_body_parse(req->body, req->body_len, b, err);
}

/* Checks the files and stores the batch with its calls: the files are checked as they are
 * streamed to the database (all rolled back if one is bad). */
static int store_batch(const struct cofi_app *app, const struct batch_body *body,
                       const char *metadata, const char *key, const char *hash,
                       struct http_reply *rep, json_t **batch, bool *created, struct cofi_err *err)
{
    struct files_check fc;
    files_check_open(&fc, app->cfg->input_root, body, SIZE_MAX, &rep->problem_ext);
    struct batch_new nb = {
        .name = body->name,
        .mode = body->mode,
        .priority = body->priority,
        .metadata = metadata,
        .file_count = body->file_count,
        .next_file = next_checked_file,
        .files_ctx = &fc,
        .idempotency_key = key,
        .request_hash = key != NULL ? hash : NULL,
        .callback_url = body->callback_url,
    };
    int rc;
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        rc = err->code;
    } else {
        rc = batches_db_create(conn, &nb, batch, created, err);
        db_release(app->db, conn);
    }
    files_check_close(&fc);
    return rc;
}

/* The Idempotency-Key of the request, scoped to its caller (into scoped), or NULL. */
static int scoped_key(const struct http_req *req, char *scoped, size_t size, const char **key,
                      struct cofi_err *err)
{
    /* With tokens, a key belongs to the token that used it: stored as "<token env>\n<key>"
     * (a key holds no newline), so two callers never share a batch through a key. */
    *key = req->idempotency_key;
    if (*key == NULL) {
        return 0;
    }
    int rc = req_check_idempotency_key(*key, err);
    if (rc != 0) {
        return rc;
    }
    if (req->caller != NULL) {
        int n = snprintf(scoped, size, "%s\n%s", req->caller, *key);
        if (n < 0 || (size_t)n >= size) {
            return cofi_err_set(err, COFI_E_INTERNAL, "idempotency key too long to scope");
        }
        *key = scoped;
    }
    return 0;
}

int handle_batches_create(const struct cofi_app *app, const struct http_req *req,
                          struct http_reply *rep, struct cofi_err *err)
{
    char scoped[512];
    const char *key;
    int rc = scoped_key(req, scoped, sizeof scoped, &key, err);
    if (rc != 0) {
        return rc;
    }
    int64_t t0 = clock_mono_us();
    struct batch_body body;
    rc = read_create_body(req, &body, err);
    if (rc != 0) {
        return rc;
    }
    int64_t t_parsed = clock_mono_us();
    char *metadata = NULL;
    json_t *batch = NULL;
    char hash[65] = {0};
    bool created = false;
    rc = check_limits(&body, app->cfg->http.metadata_max_bytes, &metadata, err);
    if (rc == 0 && body.callback_url != NULL && app->cfg->webhook_secret == NULL) {
        rc = cofi_err_set(err, COFI_E_INVALID,
                          "callback_url needs webhook_secret_env in cofid's configuration "
                          "(deliveries are signed)");
    }
    if (rc == 0 && key != NULL) {
        rc = find_repeat(app, key, &body, hash, &batch, err);
    }
    if (rc == 0 && batch == NULL) {
        rc = check_first_files(app->cfg->input_root, &body, FILES_PRECHECK, &rep->problem_ext, err);
        if (rc == 0) {
            rc = store_batch(app, &body, metadata, key, hash, rep, &batch, &created, err);
        }
        if (rc == 0 && created) {
            log_info("batch %" JSON_INTEGER_FORMAT
                     " created with %zu files (body parsed in %" PRId64
                     " ms, checked and stored in %" PRId64 " ms)",
                     json_integer_value(json_object_get(batch, "id")), body.file_count,
                     (t_parsed - t0) / 1000, (clock_mono_us() - t_parsed) / 1000);
        }
    }
    if (rc == 0 && batch != NULL) {
        rep->status = created ? 201 : 200; /* 200: an idempotent repeat */
        set_location(rep, batch);
        rep->body = batch;
    } else {
        json_decref(batch);
    }
    free(metadata);
    batch_body_free(&body);
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
