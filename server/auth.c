/* Bearer-token checks in constant time; tokens are never logged. */
#include "server/auth.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Checks authorization against tokens[0..n); *found is the index of the token presented (also
 * when it may only read and a write was asked: 403), or -1 when none was needed or none
 * matched. */
static int check_tokens(const struct cofi_token_cfg *tokens, size_t n, const char *authorization,
                        bool public_route, bool needs_write, int *found_out, struct cofi_err *err)
{
    *found_out = -1;
    if (n == 0 || public_route) {
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
    for (size_t i = 0; i < n; i++) {
        const char *t = tokens[i].token;
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
    *found_out = found;
    if (needs_write && !tokens[found].write) {
        return cofi_err_set(err, COFI_E_FORBIDDEN, "this token may only read");
    }
    return 0;
}

int auth_check(const struct cofi_config *cfg, const char *authorization, bool public_route,
               bool needs_write, struct cofi_err *err)
{
    int found;
    return check_tokens(cfg->tokens, cfg->token_count, authorization, public_route, needs_write,
                        &found, err);
}

struct auth_keys {
    pthread_rwlock_t lock;
    struct cofi_token_cfg *tokens;
    size_t count;
};

static void tokens_free(struct cofi_token_cfg *tokens, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(tokens[i].env);
        if (tokens[i].token != NULL) {
            memset(tokens[i].token, 0, strlen(tokens[i].token));
        }
        free(tokens[i].token);
    }
    free(tokens);
}

/* Copies tokens[0..n) into *out (NULL when n is 0). Returns 0 or COFI_E_NOMEM. */
static int tokens_copy(const struct cofi_token_cfg *tokens, size_t n, struct cofi_token_cfg **out)
{
    *out = NULL;
    if (n == 0) {
        return 0;
    }
    struct cofi_token_cfg *copy = calloc(n, sizeof *copy);
    if (copy == NULL) {
        return COFI_E_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        copy[i].write = tokens[i].write;
        copy[i].env = strdup(tokens[i].env != NULL ? tokens[i].env : "");
        copy[i].token = tokens[i].token != NULL ? strdup(tokens[i].token) : NULL;
        if (copy[i].env == NULL || (tokens[i].token != NULL && copy[i].token == NULL)) {
            tokens_free(copy, n);
            return COFI_E_NOMEM;
        }
    }
    *out = copy;
    return 0;
}

int auth_keys_new(struct auth_keys **out, const struct cofi_token_cfg *tokens, size_t n)
{
    *out = NULL;
    struct auth_keys *k = calloc(1, sizeof *k);
    if (k == NULL) {
        return COFI_E_NOMEM;
    }
    if (tokens_copy(tokens, n, &k->tokens) != 0) {
        free(k);
        return COFI_E_NOMEM;
    }
    k->count = n;
    pthread_rwlock_init(&k->lock, NULL);
    *out = k;
    return 0;
}

void auth_keys_free(struct auth_keys *keys)
{
    if (keys == NULL) {
        return;
    }
    tokens_free(keys->tokens, keys->count);
    pthread_rwlock_destroy(&keys->lock);
    free(keys);
}

int auth_keys_replace(struct auth_keys *keys, const struct cofi_token_cfg *tokens, size_t n)
{
    struct cofi_token_cfg *copy;
    if (tokens_copy(tokens, n, &copy) != 0) {
        return COFI_E_NOMEM;
    }
    pthread_rwlock_wrlock(&keys->lock);
    struct cofi_token_cfg *old = keys->tokens;
    size_t old_n = keys->count;
    keys->tokens = copy;
    keys->count = n;
    pthread_rwlock_unlock(&keys->lock);
    tokens_free(old, old_n);
    return 0;
}

int auth_keys_check(struct auth_keys *keys, const char *authorization, bool public_route,
                    bool needs_write, char *who, size_t who_cap, struct cofi_err *err)
{
    int found = -1;
    pthread_rwlock_rdlock(&keys->lock);
    int rc = check_tokens(keys->tokens, keys->count, authorization, public_route, needs_write,
                          &found, err);
    if (who_cap > 0) {
        snprintf(who, who_cap, "%s", found >= 0 ? keys->tokens[found].env : "anonymous");
    }
    pthread_rwlock_unlock(&keys->lock);
    return rc;
}
