/* One log line as a JSON object: escaped strings, valid UTF-8, cut to fit. */
#include "common/log.h"

#include <string.h>

#include "common/utf8.h"

/* A line being written into a fixed buffer. */
struct line {
    char *out;
    size_t len;
    size_t cap;
};

/* Appends n bytes when they fit below limit (else nothing). Returns whether they did. */
static bool put(struct line *l, const char *s, size_t n, size_t limit)
{
    if (l->len + n > limit) {
        return false;
    }
    memcpy(l->out + l->len, s, n);
    l->len += n;
    return true;
}

/* The bytes of the UTF-8 character whose lead byte is c (1 for anything else). */
static size_t char_bytes(unsigned char c)
{
    return c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
}

/* Appends s (valid UTF-8) as a JSON string, stopping before a character that would leave no
 * room for the closing quote below limit. */
static void put_string_valid(struct line *l, const char *s, size_t limit)
{
    static const char hex[] = "0123456789abcdef";
    put(l, "\"", 1, limit);
    const unsigned char *p = (const unsigned char *)s;
    while (*p != '\0') {
        char esc[6];
        size_t n = 0;
        const char *from = esc;
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            n = 2;
        } else if (*p == '\n' || *p == '\r' || *p == '\t') {
            esc[0] = '\\';
            esc[1] = *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
            n = 2;
        } else if (*p < 0x20 || *p == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 0xf];
            n = 6;
        } else {
            from = (const char *)p;
            n = char_bytes(*p);
        }
        if (!put(l, from, n, limit - 1)) {
            break;
        }
        p += from == esc ? 1 : n;
    }
    put(l, "\"", 1, limit);
}

/* As put_string_valid for any bytes: ill-formed UTF-8 is replaced first. */
static void put_string(struct line *l, const char *s, size_t limit)
{
    size_t n = strlen(s);
    if (utf8_is_valid(s, n)) {
        put_string_valid(l, s, limit);
        return;
    }
    char clean[2048];
    utf8_sanitize(clean, sizeof clean, s, n);
    put_string_valid(l, clean, limit);
}

/* Appends ,"key":value (a string, or a number's text as is) whole, or nothing when it does
 * not fit below limit. A value is cut at about 1 KiB. */
static void put_member(struct line *l, const char *key, const char *value, bool number,
                       size_t limit)
{
    char tmp[1024];
    struct line m = {tmp, 0, sizeof tmp};
    put(&m, ",", 1, m.cap);
    put_string(&m, key, m.cap);
    put(&m, ":", 1, m.cap);
    bool plain = number && ((value[0] != '\0' && strspn(value, "0123456789.-") == strlen(value)) ||
                            strcmp(value, "true") == 0 || strcmp(value, "false") == 0);
    if (!plain || !put(&m, value, strlen(value), m.cap)) {
        put_string(&m, value, m.cap);
    }
    put(l, tmp, m.len, limit);
}

size_t log_json_line(char *out, size_t cap, const char *ts, const char *level, const char *ident,
                     const char *msg, const char *request_id, const struct log_field *fields,
                     size_t n)
{
    struct line l = {out, 0, cap - 2}; /* room for "\n" and the NUL */
    size_t end = l.cap - 1;            /* room for "}" */
    /* The fields go after the message, so they get their room first: 600 bytes at most. */
    size_t msg_limit = end > 600 ? end - 600 : end / 2;
    put(&l, "{\"ts\":", 6, end);
    put_string(&l, ts, end);
    put(&l, ",\"level\":", 9, end);
    put_string(&l, level, end);
    put(&l, ",\"ident\":", 9, end);
    put_string(&l, ident, end);
    put(&l, ",\"msg\":", 7, end);
    put_string(&l, msg, msg_limit);
    if (request_id != NULL && request_id[0] != '\0') {
        put_member(&l, "request_id", request_id, false, end);
    }
    for (size_t i = 0; i < n; i++) {
        put_member(&l, fields[i].key, fields[i].value != NULL ? fields[i].value : "",
                   fields[i].number, end);
    }
    out[l.len++] = '}';
    out[l.len++] = '\n';
    out[l.len] = '\0';
    return l.len;
}
