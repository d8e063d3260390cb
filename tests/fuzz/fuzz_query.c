/* libFuzzer target: request targets and query values (strict target checks, ids, paging). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/handlers.h"
#include "server/http_strict.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL) {
        return 0;
    }
    memcpy(s, data, size);
    s[size] = '\0';
    struct cofi_err err;
    bool many = false;
    (void)http_strict_target(s, &many, &err);
    int64_t id = 0;
    (void)req_parse_id(s, &id);
    int limit = 0;
    (void)req_parse_limit(s, &limit, &err);
    (void)req_parse_cursor(s, &id, &err);
    (void)req_is_json_type(s);
    free(s);
    return 0;
}
