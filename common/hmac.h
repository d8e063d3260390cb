/* HMAC-SHA256 (RFC 2104 with SHA-256, OpenSSL's libcrypto): the signature of webhook
 * deliveries. */
#ifndef COFI_HMAC_H
#define COFI_HMAC_H

#include <stddef.h>

/* The length of a hex HMAC-SHA256 with its NUL. */
#define HMAC_SHA256_HEX_LEN 65

/* Computes HMAC-SHA256 with key over the concatenation of the n parts (part[i] of len[i]
 * bytes; a part may be empty) and writes it as 64 lowercase hex digits and a NUL into hex.
 * Returns 0, or -1 when libcrypto failed (hex is then ""). Thread-safe. */
int hmac_sha256_hex(const void *key, size_t key_len, const void *const *part, const size_t *len,
                    size_t n, char hex[HMAC_SHA256_HEX_LEN]);

#endif
