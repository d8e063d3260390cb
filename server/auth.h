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

/* Compares a (length alen) with b (length blen) in time that depends on blen only.
 * Returns true when equal. Thread-safe; can't fail. */
bool auth_equal_ct(const char *a, size_t alen, const char *b, size_t blen);

#endif
