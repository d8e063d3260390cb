/* Bearer-token checks in constant time; tokens are never logged. */
#include "server/auth.h"

#include <strings.h>
#include <string.h>

bool auth_equal_ct(const char *a, size_t alen, const char *b, size_t blen)
{
    volatile unsigned char diff = (unsigned char)(alen != blen);
    for (size_t i = 0; i < blen; i++) {
        unsigned char ca = i < alen ? (unsigned char)a[i] : 0;
        diff |= (unsigned char)(ca ^ (unsigned char)b[i]);
    }
    return diff == 0;
}

int auth_check(const struct cofi_config *cfg, const char *authorization, bool public_route,
               bool needs_write, struct cofi_err *err)
{
    if (cfg->token_count == 0 || public_route) {
        return 0;
    }
    if (authorization == NULL) {
        return cofi_err_set(err, COFI_E_UNAUTHORIZED, "an Authorization: Bearer token is required");
    }
    const char *p = authorization;
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t')) {
        return cofi_err_set(err, COFI_E_UNAUTHORIZED, "the Authorization scheme must be Bearer");
    }
    p += 6;
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    size_t len = strlen(p);
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
        len--;
    }
    if (len == 0) {
        return cofi_err_set(err, COFI_E_UNAUTHORIZED, "the bearer token is empty");
    }

    /* Look at every token, without stopping at a match. */
    int found = -1;
    for (size_t i = 0; i < cfg->token_count; i++) {
        const char *t = cfg->tokens[i].token;
        if (t == NULL) {
            continue;
        }
        bool eq = auth_equal_ct(p, len, t, strlen(t));
        if (eq && found < 0) {
            found = (int)i;
        }
    }
    if (found < 0) {
        return cofi_err_set(err, COFI_E_UNAUTHORIZED, "the bearer token is not valid");
    }
    if (needs_write && !cfg->tokens[found].write) {
        return cofi_err_set(err, COFI_E_FORBIDDEN, "this token may only read");
    }
    return 0;
}
