/* Capped growing buffer. */
#include "common/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t limit)
{
    b->data = NULL;
    b->len = 0;
    b->cap_alloc = 0;
    b->limit = limit;
}

static int buf_reserve(struct buf *b, size_t extra)
{
    if (extra > b->limit || b->len > b->limit - extra) {
        return -1;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap_alloc) {
        return 0;
    }
    size_t cap = b->cap_alloc ? b->cap_alloc : 256;
    while (cap < need) {
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        return -2;
    }
    b->data = p;
    b->cap_alloc = cap;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc != 0) {
        return rc;
    }
    if (n > 0) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return -2;
    }
    int rc = buf_reserve(b, (size_t)n);
    if (rc != 0) {
        return rc;
    }
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

char *buf_steal(struct buf *b)
{
    char *p = b->data;
    b->data = NULL;
    b->len = 0;
    b->cap_alloc = 0;
    return p;
}

void buf_free(struct buf *b)
{
    if (b == NULL) {
        return;
    }
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap_alloc = 0;
}

int buf_json_string(struct buf *b, const char *s)
{
    if (s == NULL) {
        return buf_append(b, "null", 4);
    }
    int rc = buf_append(b, "\"", 1);
    const char *run = s;
    for (const char *p = s; rc == 0 && *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        rc = buf_append(b, run, (size_t)(p - run));
        if (rc == 0) {
            if (c == '"' || c == '\\') {
                char esc[2] = {'\\', (char)c};
                rc = buf_append(b, esc, 2);
            } else {
                rc = buf_printf(b, "\\u%04x", c);
            }
        }
        run = p + 1;
    }
    if (rc == 0) {
        rc = buf_append(b, run, strlen(run));
    }
    if (rc == 0) {
        rc = buf_append(b, "\"", 1);
    }
    return rc;
}
