/* HMAC-SHA256 over a message given in parts, through libcrypto's EVP_MAC. */
#include "common/hmac.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

/* The MAC of the parts into out (32 bytes). Returns 0 or -1. */
static int mac(EVP_MAC_CTX *ctx, const void *key, size_t key_len, const void *const *part,
               const size_t *len, size_t n, unsigned char out[32])
{
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_init(ctx, key, key_len, params) != 1) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (len[i] > 0 && EVP_MAC_update(ctx, part[i], len[i]) != 1) {
            return -1;
        }
    }
    size_t out_len = 0;
    if (EVP_MAC_final(ctx, out, &out_len, 32) != 1 || out_len != 32) {
        return -1;
    }
    return 0;
}

int hmac_sha256_hex(const void *key, size_t key_len, const void *const *part, const size_t *len,
                    size_t n, char hex[HMAC_SHA256_HEX_LEN])
{
    static const char digits[] = "0123456789abcdef";
    hex[0] = '\0';
    /* An empty key is a valid HMAC key, but EVP_MAC_init takes a NULL key as "keep the
     * previous one": give it a real pointer. */
    static const unsigned char empty = 0;
    if (key_len == 0) {
        key = &empty;
    }
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = m != NULL ? EVP_MAC_CTX_new(m) : NULL;
    unsigned char out[32];
    int rc = ctx != NULL ? mac(ctx, key, key_len, part, len, n, out) : -1;
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(m);
    if (rc != 0) {
        return -1;
    }
    for (size_t i = 0; i < 32; i++) {
        hex[2 * i] = digits[out[i] >> 4];
        hex[2 * i + 1] = digits[out[i] & 0xf];
    }
    hex[64] = '\0';
    return 0;
}
