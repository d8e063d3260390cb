/* A growing byte buffer with a hard cap, so "too big" is an error and never a crash. */
#ifndef COFI_BUF_H
#define COFI_BUF_H

#include <stddef.h>

/* Invariants: `data` is NULL or NUL-terminated; len < cap_alloc; len <= limit. */
struct buf {
    char *data;       /* owned; NULL until the first append */
    size_t len;       /* bytes used, not counting the terminating NUL */
    size_t cap_alloc; /* bytes allocated */
    size_t limit;     /* the largest len allowed */
};

/* Prepares an empty buffer that will refuse to grow past `limit` bytes. Can't fail. */
void buf_init(struct buf *b, size_t limit);

/* Appends n bytes. Returns 0; -1 when the limit would be passed (nothing is appended);
 * -2 when out of memory (nothing is appended). */
int buf_append(struct buf *b, const void *p, size_t n);

/* Appends a formatted string; same returns as buf_append. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends s as a JSON string literal (quoted and escaped), or `null` when s is NULL. Same
 * returns as buf_append. */
int buf_json_string(struct buf *b, const char *s);

/* Hands the data to the caller (who must free() it) and resets the buffer. May return NULL
 * for an empty buffer. */
char *buf_steal(struct buf *b);

/* Frees the data and resets to empty; the limit is kept. Accepts NULL. */
void buf_free(struct buf *b);

#endif
