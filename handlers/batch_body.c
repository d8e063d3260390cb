/* The body of POST /batches: scanned in place, files never held as a tree. */
#include "handlers/batch_body.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sha256.h"
#include "handlers/handlers.h"

/* What the scan found wrong with the members (the first one), reported only when the whole
 * text is valid JSON: a malformed body is a malformed body whatever its members say. */
struct verdict {
    int rc;
    struct cofi_err err;
};

static void note(struct verdict *v, int rc, const struct cofi_err *err)
{
    if (v->rc == 0 && rc != 0) {
        v->rc = rc;
        v->err = *err;
    }
}

static int malformed(const struct json_scan *s, const char *what, struct cofi_err *err)
{
    return cofi_err_set(err, COFI_E_BAD_REQUEST, "malformed JSON at byte %zu: %s",
                        json_scan_offset(s), what);
}

/* Scans the value of "files": an array of strings, checked and counted, not decoded. */
static int scan_files(struct json_scan *s, struct batch_body *b, struct verdict *v,
                      struct cofi_err *err)
{
    struct cofi_err e;
    if (json_scan_peek(s) != '[') {
        json_error_t je;
        json_t *other = json_scan_value(s, &je);
        if (other == NULL) {
            return malformed(s, je.text, err);
        }
        json_decref(other);
        note(v, cofi_err_set(&e, COFI_E_BAD_REQUEST, "files must be an array of strings"), &e);
        return 0;
    }
    b->files_text = s->p;
    s->p++;
    size_t n = 0;
    bool bad_type = false;
    while (json_scan_peek(s) != ']' || n > 0) {
        if (n > 0 && json_scan_expect(s, ',') != 0) {
            return malformed(s, "',' or ']' expected in files", err);
        }
        if (json_scan_peek(s) == '"') {
            if (json_scan_string(s, NULL, NULL) != 0) {
                return malformed(s, "invalid string in files", err);
            }
        } else {
            json_error_t je;
            json_t *other = json_scan_value(s, &je);
            if (other == NULL) {
                return malformed(s, je.text, err);
            }
            json_decref(other);
            if (!bad_type) {
                bad_type = true;
                note(v, cofi_err_set(&e, COFI_E_BAD_REQUEST, "files[%zu] must be a string", n), &e);
            }
        }
        n++;
        if (json_scan_peek(s) == ']') {
            break;
        }
    }
    s->p++;
    b->files_len = (size_t)(s->p - b->files_text);
    b->file_count = n;
    return 0;
}

/* Checks one member other than files (value v, borrowed) the way the API defines it. */
static int check_member(const char *key, const json_t *v, struct batch_body *b,
                        struct cofi_err *err)
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
        return 0;
    }
    if (strcmp(key, "metadata") == 0) {
        if (json_is_object(v)) {
            if (req_json_has_nul(v)) {
                return cofi_err_set(err, COFI_E_INVALID, "metadata contains a NUL character");
            }
            b->metadata = v;
        } else if (!json_is_null(v)) {
            return cofi_err_set(err, COFI_E_BAD_REQUEST, "metadata must be an object or null");
        }
        return 0;
    }
    if (strcmp(key, "mode") == 0) {
        return req_check_mode(v, &b->mode, err);
    }
    if (strcmp(key, "priority") == 0) {
        return req_check_priority(v, &b->priority, err);
    }
    if (strcmp(key, "callback_url") == 0) {
        return req_check_callback_url(v, &b->callback_url, err);
    }
    return cofi_err_set(err, COFI_E_BAD_REQUEST, "unknown key \"%s\"", key);
}

/* Scans one "key": value member. */
static int scan_member(struct json_scan *s, struct buf *key, bool *files_seen, struct batch_body *b,
                       struct verdict *v, struct cofi_err *err)
{
    size_t klen;
    int rc = json_scan_string(s, key, &klen);
    if (rc != 0) {
        return rc == -2 ? cofi_err_set(err, COFI_E_NOMEM, "out of memory")
                        : malformed(s, "a string key expected", err);
    }
    if (json_scan_expect(s, ':') != 0) {
        return malformed(s, "':' expected", err);
    }
    bool has_nul = strlen(key->data) != klen;
    bool is_files = !has_nul && strcmp(key->data, "files") == 0;
    if (is_files ? *files_seen : json_object_getn(b->fields, key->data, klen) != NULL) {
        return malformed(s, "duplicate object key", err);
    }
    if (is_files) {
        *files_seen = true;
        return scan_files(s, b, v, err);
    }
    json_error_t je;
    json_t *val = json_scan_value(s, &je);
    if (val == NULL) {
        return malformed(s, je.text, err);
    }
    if (json_object_setn_new(b->fields, key->data, klen, val) != 0) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    struct cofi_err e;
    if (has_nul) {
        note(v, cofi_err_set(&e, COFI_E_BAD_REQUEST, "unknown key with a NUL character"), &e);
    } else {
        note(v, check_member(key->data, val, b, &e), &e);
    }
    return 0;
}

static int scan_object(struct json_scan *s, struct batch_body *b, struct verdict *v,
                       struct cofi_err *err)
{
    struct buf key;
    buf_init(&key, SIZE_MAX / 2);
    bool files_seen = false;
    int rc = 0;
    s->p++; /* the '{' */
    for (size_t n = 0; rc == 0; n++) {
        int c = json_scan_peek(s);
        if (c == '}' && n == 0) {
            break;
        }
        if (n > 0) {
            if (c == '}') {
                break;
            }
            if (json_scan_expect(s, ',') != 0) {
                rc = malformed(s, "',' or '}' expected", err);
                break;
            }
        }
        rc = scan_member(s, &key, &files_seen, b, v, err);
    }
    buf_free(&key);
    if (rc != 0) {
        return rc;
    }
    s->p++; /* the '}' */
    if (json_scan_peek(s) != -1) {
        return malformed(s, "end of text expected", err);
    }
    if (!files_seen) {
        struct cofi_err e;
        note(v, cofi_err_set(&e, COFI_E_BAD_REQUEST, "files is required"), &e);
    }
    return 0;
}

int batch_body_parse(const char *text, size_t len, struct batch_body *b, struct cofi_err *err)
{
    memset(b, 0, sizeof *b);
    b->mode = "pipelined";
    b->priority = 1;
    struct json_scan s;
    json_scan_init(&s, text, len);
    if (json_scan_peek(&s) != '{') {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "the body must be a JSON object");
    }
    b->fields = json_object();
    if (b->fields == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    struct verdict v = {0};
    int rc = scan_object(&s, b, &v, err);
    if (rc == 0 && v.rc != 0) {
        rc = v.rc;
        *err = v.err;
    }
    if (rc == 0 && b->file_count == 0) {
        rc = cofi_err_set(err, COFI_E_INVALID, "files must not be empty");
    }
    if (rc == 0 && b->file_count > INT32_MAX) {
        rc = cofi_err_set(err, COFI_E_INVALID, "too many files");
    }
    if (rc != 0) {
        batch_body_free(b);
    }
    return rc;
}

void batch_body_free(struct batch_body *b)
{
    json_decref(b->fields);
    memset(b, 0, sizeof *b);
}

/* Hashes the files array as jansson dumps it: ["a","b",...]. Each file is written into one
 * small buffer and hashed, so nothing the size of the array is built. */
static int hash_files(const struct batch_body *b, struct sha256 *h, struct cofi_err *err)
{
    struct batch_files it;
    batch_files_open(&it, b);
    struct buf out;
    buf_init(&out, SIZE_MAX / 2);
    sha256_update(h, "[", 1);
    const char *f;
    size_t n;
    int rc;
    while ((rc = batch_files_next(&it, &f, &n, err)) == 1) {
        out.len = 0;
        if ((it.index > 1 && buf_append(&out, ",", 1) != 0) ||
            json_scan_dump_string(&out, f, n) != 0) {
            rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
            break;
        }
        sha256_update(h, out.data, out.len);
    }
    sha256_update(h, "]", 1);
    buf_free(&out);
    batch_files_close(&it);
    return rc;
}

/* Compares member names as json_dumps(JSON_SORT_KEYS) orders them. */
static int key_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int batch_body_hash(const struct batch_body *b, char hex[65], struct cofi_err *err)
{
    const char *keys[16];
    size_t nk = 0;
    keys[nk++] = "files";
    const char *k;
    const json_t *val;
    json_object_foreach(b->fields, k, val)
    {
        if (nk == sizeof keys / sizeof keys[0]) {
            return cofi_err_set(err, COFI_E_INTERNAL, "too many members to hash");
        }
        keys[nk++] = k;
    }
    qsort(keys, nk, sizeof keys[0], key_cmp);
    struct sha256 h;
    sha256_init(&h);
    struct buf piece;
    buf_init(&piece, SIZE_MAX / 2);
    int rc = 0;
    for (size_t i = 0; i < nk && rc == 0; i++) {
        piece.len = 0;
        if (buf_append(&piece, i == 0 ? "{" : ",", 1) != 0 ||
            json_scan_dump_string(&piece, keys[i], strlen(keys[i])) != 0 ||
            buf_append(&piece, ":", 1) != 0) {
            rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
            break;
        }
        sha256_update(&h, piece.data, piece.len);
        if (strcmp(keys[i], "files") == 0) {
            rc = hash_files(b, &h, err);
            continue;
        }
        char *text = json_dumps(json_object_get(b->fields, keys[i]),
                                JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        if (text == NULL) {
            rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
            break;
        }
        sha256_update(&h, text, strlen(text));
        free(text);
    }
    buf_free(&piece);
    if (rc != 0) {
        return rc;
    }
    sha256_update(&h, "}", 1);
    sha256_hex(&h, hex);
    return 0;
}

void batch_files_open(struct batch_files *it, const struct batch_body *b)
{
    json_scan_init(&it->scan, b->files_text, b->files_len);
    it->scan.p++; /* the '[' */
    buf_init(&it->cur, SIZE_MAX / 2);
    it->index = 0;
}

int batch_files_next(struct batch_files *it, const char **file, size_t *len, struct cofi_err *err)
{
    if (it->index > 0 && json_scan_expect(&it->scan, ',') != 0) {
        return 0; /* the ']' */
    }
    if (json_scan_peek(&it->scan) != '"') {
        return 0;
    }
    int rc = json_scan_string(&it->scan, &it->cur, len);
    if (rc != 0) {
        /* The text was checked by batch_body_parse: only memory can run out. */
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory reading files");
    }
    it->index++;
    *file = it->cur.data;
    return 1;
}

void batch_files_close(struct batch_files *it)
{
    buf_free(&it->cur);
}
