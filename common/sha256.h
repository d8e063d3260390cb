/* SHA-256 (FIPS 180-4), fed in pieces: hashes a text too big to build in one piece. */
#ifndef COFI_SHA256_H
#define COFI_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
    uint32_t h[8];
    uint64_t bytes;        /* bytes fed so far */
    unsigned char blk[64]; /* the partial block */
    size_t used;           /* bytes in blk */
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t n);
/* Writes the digest as 64 lowercase hex digits and a NUL into hex. */
void sha256_hex(struct sha256 *s, char hex[65]);

#endif
