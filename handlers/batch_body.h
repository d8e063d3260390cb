/* The body of POST /batches, read without building a tree of its files: a body of a million
 * paths (~40 MB of JSON) is scanned in place, its `files` array checked and counted, and the
 * files read back one at a time (decoded into one reusable buffer) when the calls are stored.
 * The other members are small and parsed by jansson. */
#ifndef COFI_BATCH_BODY_H
#define COFI_BATCH_BODY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/json_scan.h"

/* A parsed body. The strings and values are borrowed from `fields` and the request body. */
struct batch_body {
    json_t *fields;           /* owned: every member but files, as parsed */
    const char *name;         /* NULL when absent or null */
    const json_t *metadata;   /* an object, or NULL */
    const char *mode;         /* "pipelined" (default) or "staged" */
    int priority;             /* >= 1 (default 1) */
    const char *callback_url; /* NULL when absent or null: POSTed the batch when it ends */
    const char *files_text;   /* the files array's JSON text, "[" to "]" */
    size_t files_len;         /* its length in bytes */
    size_t file_count;        /* how many files */
};

/* Parses and checks text (len bytes) as a POST /batches body: a JSON object with the members
 * of openapi/openapi.json's CreateBatch. Returns 0 with *b filled (free with batch_body_free);
 * COFI_E_BAD_REQUEST for malformed JSON, a wrong type or an unknown member, COFI_E_INVALID for
 * a value out of its range; *b is then freed. */
int batch_body_parse(const char *text, size_t len, struct batch_body *b, struct cofi_err *err);

void batch_body_free(struct batch_body *b);

/* The hex SHA-256 of the body's canonical form: jansson's compact dump with sorted keys
 * (json_dumps(JSON_COMPACT | JSON_SORT_KEYS) of the whole body, written piece by piece).
 * Returns 0, or COFI_E_NOMEM. */
int batch_body_hash(const struct batch_body *b, char hex[65], struct cofi_err *err);

/* Reads the files of a parsed body one by one. */
struct batch_files {
    struct json_scan scan;
    struct buf cur; /* the current file, decoded */
    size_t index;   /* how many were read */
};

void batch_files_open(struct batch_files *it, const struct batch_body *b);
/* Gives the next file (*file borrowed until the next call, *len its length, which may count
 * NULs): 1; 0 after the last; COFI_E_NOMEM. */
int batch_files_next(struct batch_files *it, const char **file, size_t *len, struct cofi_err *err);
void batch_files_close(struct batch_files *it);

#endif
