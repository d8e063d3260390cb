/* Strict scanning of big JSON texts: whitespace, punctuation, strings. */
#include "common/json_scan.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

void json_scan_init(struct json_scan *s, const char *text, size_t len)
{
    s->start = text;
    s->p = text;
    s->end = text + len;
}

size_t json_scan_offset(const struct json_scan *s)
{
    return (size_t)(s->p - s->start);
}

int json_scan_peek(struct json_scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) {
        s->p++;
    }
    return s->p < s->end ? (unsigned char)*s->p : -1;
}

int json_scan_expect(struct json_scan *s, char c)
{
    if (json_scan_peek(s) != (unsigned char)c) {
        return -1;
    }
    s->p++;
    return 0;
}

/* The length of the valid UTF-8 sequence at p (at most n bytes), or 0 when it is not one
 * (overlong forms, surrogates and code points past U+10FFFF are not valid). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
        return 0;
    }
    return len;
}

static int hex4(const char *p, const char *end, uint32_t *out)
{
    if (end - p < 4) {
        return -1;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) {
            return -1;
        }
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 0;
}

/* Reads the escape after a backslash at *pp into bytes (1 to 4 of them). Returns how many, or
 * 0 when the escape is not valid. */
static size_t read_escape(const char **pp, const char *end, char bytes[4])
{
    const char *p = *pp;
    if (p >= end) {
        return 0;
    }
    char c = *p++;
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    const char *hit = c != '\0' ? strchr(from, c) : NULL;
    if (hit != NULL && c != 'u') {
        bytes[0] = to[hit - from];
        *pp = p;
        return 1;
    }
    uint32_t cp;
    if (c != 'u' || hex4(p, end, &cp) != 0) {
        return 0;
    }
    p += 4;
    if (cp >= 0xdc00 && cp <= 0xdfff) {
        return 0;
    }
    if (cp >= 0xd800 && cp <= 0xdbff) {
        uint32_t lo;
        if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &lo) != 0 ||
            lo < 0xdc00 || lo > 0xdfff) {
            return 0;
        }
        p += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    *pp = p;
    if (cp < 0x80) {
        bytes[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        bytes[0] = (char)(0xc0 | cp >> 6);
        bytes[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        bytes[0] = (char)(0xe0 | cp >> 12);
        bytes[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        bytes[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    bytes[0] = (char)(0xf0 | cp >> 18);
    bytes[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    bytes[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    bytes[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

int json_scan_string(struct json_scan *s, struct buf *out, size_t *len)
{
    if (json_scan_expect(s, '"') != 0) {
        return -1;
    }
    if (out != NULL) {
        out->len = 0;
        if (buf_append(out, "", 0) != 0) {
            return -2;
        }
    }
    const char *p = s->p;
    const char *run = p;
    size_t n = 0;
    for (;;) {
        if (p >= s->end) {
            return -1;
        }
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            if (out != NULL && buf_append(out, run, (size_t)(p - run)) != 0) {
                return -2;
            }
            n += (size_t)(p - run);
            if (c == '"') {
                break;
            }
            p++;
            char bytes[4];
            size_t k = read_escape(&p, s->end, bytes);
            if (k == 0) {
                return -1;
            }
            if (out != NULL && buf_append(out, bytes, k) != 0) {
                return -2;
            }
            n += k;
            run = p;
            continue;
        }
        if (c < 0x20) {
            return -1;
        }
        size_t k = utf8_seq((const unsigned char *)p, (size_t)(s->end - p));
        if (k == 0) {
            return -1;
        }
        p += k;
    }
    s->p = p + 1;
    if (len != NULL) {
        *len = n;
    }
    return 0;
}

json_t *json_scan_value(struct json_scan *s, json_error_t *je)
{
    (void)json_scan_peek(s);
    json_t *v = json_loadb(
        s->p, (size_t)(s->end - s->p),
        JSON_DECODE_ANY | JSON_DISABLE_EOF_CHECK | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, je);
    if (v != NULL) {
        s->p += je->position;
    }
    return v;
}

int json_scan_dump_string(struct buf *out, const char *s, size_t len)
{
    if (buf_append(out, "\"", 1) != 0) {
        return -2;
    }
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        char esc[8];
        switch (c) {
        case '"':
        case '\\':
            esc[0] = '\\';
            esc[1] = (char)c;
            esc[2] = '\0';
            break;
        case '\b':
            memcpy(esc, "\\b", 3);
            break;
        case '\f':
            memcpy(esc, "\\f", 3);
            break;
        case '\n':
            memcpy(esc, "\\n", 3);
            break;
        case '\r':
            memcpy(esc, "\\r", 3);
            break;
        case '\t':
            memcpy(esc, "\\t", 3);
            break;
        default:
            snprintf(esc, sizeof esc, "\\u%04X", (unsigned)c);
            break;
        }
        if (buf_append(out, s + run, i - run) != 0 || buf_append(out, esc, strlen(esc)) != 0) {
            return -2;
        }
        run = i + 1;
    }
    if (buf_append(out, s + run, len - run) != 0 || buf_append(out, "\"", 1) != 0) {
        return -2;
    }
    return 0;
}
