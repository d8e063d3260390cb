/* libFuzzer target: request bodies (JSON parsing and the checks the handlers make on them). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/batch_body.h"
#include "handlers/handlers.h"

static const char *no_query(const struct http_req *req, const char *name)
{
    (void)req;
    (void)name;
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = malloc(size + 1);
    if (body == NULL) {
        return 0;
    }
    memcpy(body, data, size);
    body[size] = '\0';
    struct http_req req = {
        .method = "POST",
        .path = "/batches",
        .body = body,
        .body_len = size,
        .content_type = "application/json",
        .query = no_query,
    };
    struct cofi_err err;
    json_t *root = NULL;
    if (req_json_body(&req, /* required= */ true, &root, &err) == 0) {
        (void)req_json_has_nul(root);
        json_t *mode = json_object_get(root, "mode");
        if (mode != NULL) {
            const char *m;
            (void)req_check_mode(mode, &m, &err);
        }
        json_t *page = json_pack("{s:O,s:n}", "calls", json_is_array(root) ? root : json_null(),
                                 "next_cursor");
        if (page != NULL) {
            req_page_cap_bytes(page, "calls", "seq", 1, 64);
            json_decref(page);
        }
        json_decref(root);
    }
    /* POST /batches' own scanner: parse, hash, read every file back. */
    struct batch_body b;
    if (batch_body_parse(body, size, &b, &err) == 0) {
        char hex[65];
        (void)batch_body_hash(&b, hex, &err);
        struct batch_files it;
        batch_files_open(&it, &b);
        const char *f;
        size_t n;
        size_t count = 0;
        while (batch_files_next(&it, &f, &n, &err) == 1) {
            count++;
        }
        if (count != b.file_count) {
            abort();
        }
        batch_files_close(&it);
        batch_body_free(&b);
    }
    const char *mode = NULL;
    (void)req_parse_action_body(&req, &mode, &err);
    (void)req_check_idempotency_key(body, &err);
    free(body);
    return 0;
}
