/* libFuzzer target: header lines and framing (name, value, Content-Length, Transfer-Encoding). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/auth.h"
#include "server/http_strict.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* "name:value": the first ':' splits the input (none: all name). */
    const uint8_t *colon = memchr(data, ':', size);
    size_t name_len = colon != NULL ? (size_t)(colon - data) : size;
    char *name = malloc(name_len + 1);
    size_t value_len = colon != NULL ? size - name_len - 1 : 0;
    char *value = malloc(value_len + 1);
    if (name == NULL || value == NULL) {
        free(name);
        free(value);
        return 0;
    }
    memcpy(name, data, name_len);
    name[name_len] = '\0';
    if (value_len > 0) {
        memcpy(value, colon + 1, value_len);
    }
    value[value_len] = '\0';
    struct cofi_err err;
    (void)http_strict_header(name, name_len, value, value_len, &err);
    (void)http_strict_framing(1, value, 0, NULL, &err);
    (void)http_strict_framing(0, NULL, 1, value, &err);
    /* The Authorization header against a fixed token set. */
    struct cofi_token_cfg tokens[2] = {{"COFI_TOKEN_A", "secret-a", true},
                                       {"COFI_TOKEN_B", "secret-b", false}};
    struct auth_keys *keys;
    if (auth_keys_new(&keys, tokens, 2) == 0) {
        char who[64];
        (void)auth_keys_check(keys, value, false, true, who, sizeof who, &err);
        auth_keys_free(keys);
    }
    free(name);
    free(value);
    return 0;
}
