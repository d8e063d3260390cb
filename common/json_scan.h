/* A strict scanner for JSON text that is too big to parse into a tree: whitespace,
 * punctuation and strings (decoded one at a time into a reusable buffer). Values of any other
 * kind are left to jansson (json_scan_value). Strings are checked as jansson checks them: UTF-8,
 * no raw control characters, valid escapes, surrogates in pairs; "\u0000" is allowed and
 * decoded (the caller tells it from a NUL terminator by the length). */
#ifndef COFI_JSON_SCAN_H
#define COFI_JSON_SCAN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

struct json_scan {
    const char *start; /* the whole text (for error positions) */
    const char *p;     /* the next byte to read */
    const char *end;   /* one past the last byte */
};

void json_scan_init(struct json_scan *s, const char *text, size_t len);

/* Skips whitespace; returns the next byte, or -1 at the end of the text. */
int json_scan_peek(struct json_scan *s);

/* Skips whitespace and expects byte c. Returns 0 (c consumed) or -1. */
int json_scan_expect(struct json_scan *s, char c);

/* Reads a string at the next non-space byte. With out, its decoded bytes replace out's
 * content (NUL-terminated; *len is their count, which may include NULs). Returns 0, -1 when
 * the text is not a valid string, -2 when out of memory. */
int json_scan_string(struct json_scan *s, struct buf *out, size_t *len);

/* Parses any value at the next non-space byte with jansson (JSON_DECODE_ANY,
 * JSON_REJECT_DUPLICATES, JSON_ALLOW_NUL) and moves past it. Returns a new reference, or NULL
 * with je filled. */
json_t *json_scan_value(struct json_scan *s, json_error_t *je);

/* The byte offset of the scanner's position. */
size_t json_scan_offset(const struct json_scan *s);

/* Appends s (len bytes of valid UTF-8) to out as a JSON string exactly as jansson's compact
 * dump writes it. Returns 0, or -2 when out of memory. */
int json_scan_dump_string(struct buf *out, const char *s, size_t len);

#endif
