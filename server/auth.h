/* Bearer-token authentication of API requests (CONTRACTS §6 "auth"). */
#ifndef COFI_AUTH_H
#define COFI_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"
#include "common/config.h"

/* Decides whether a request may go on. `authorization` is the request's Authorization
 * header or NULL. With cfg->token_count == 0 (auth off) or public_route, returns 0.
 * Otherwise the header must be "Bearer <token>" (scheme case-insensitive) naming one of
 * cfg->tokens: missing, malformed or unknown → COFI_E_UNAUTHORIZED; a read-scope token when
 * needs_write → COFI_E_FORBIDDEN; err says which (never the token). Every configured token is
 * compared, each in constant time, so timing tells nothing about them.
 * Reads only; thread-safe. */
int auth_check(const struct cofi_config *cfg, const char *authorization, bool public_route,
               bool needs_write, struct cofi_err *err);

/* The live token set of a running server: a copy of the configured tokens that SIGHUP may
 * replace while requests are checked against it. Thread-safe (a read-write lock). */
struct auth_keys;

/* A new token set holding copies of tokens[0..n) (n == 0: the API is open). Returns 0 with
 * *out set (the caller frees it with auth_keys_free), or COFI_E_NOMEM with *out NULL. */
int auth_keys_new(struct auth_keys **out, const struct cofi_token_cfg *tokens, size_t n);

/* Frees the set and wipes its tokens. Accepts NULL. */
void auth_keys_free(struct auth_keys *keys);

/* Replaces the set's tokens with copies of tokens[0..n). Returns 0, or COFI_E_NOMEM and the
 * set is unchanged. Thread-safe against auth_keys_check. */
int auth_keys_replace(struct auth_keys *keys, const struct cofi_token_cfg *tokens, size_t n);

/* As auth_check, against the set's current tokens. On success who (cap bytes) names the
 * caller for the audit log: the environment variable of the token used, never the token, or
 * "anonymous" (auth off, or a public route). Thread-safe. */
int auth_keys_check(struct auth_keys *keys, const char *authorization, bool public_route,
                    bool needs_write, char *who, size_t who_cap, struct cofi_err *err);

/* Compares a (length alen) with b (length blen) in time that depends on blen only.
 * Returns true when equal. Thread-safe; can't fail. */
bool auth_equal_ct(const char *a, size_t alen, const char *b, size_t blen);

#endif
