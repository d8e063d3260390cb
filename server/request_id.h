/* X-Request-Id: the one a client sent when it is valid, else a new random one. */
#ifndef COFI_REQUEST_ID_H
#define COFI_REQUEST_ID_H

#include <stdbool.h>
#include <stddef.h>

/* The longest request id taken from a client, in bytes. */
#define REQUEST_ID_MAX 128

/* The header's name. */
#define REQUEST_ID_HEADER "X-Request-Id"

/* True when s is 1 to REQUEST_ID_MAX visible ASCII characters (0x21..0x7e): safe to echo in a
 * header and to write in a log line as it is. s may be NULL (false). Pure; can't fail. */
bool request_id_valid(const char *s);

/* Writes 32 random lower-case hex digits (16 bytes) and a NUL into out (cap >= 33; else
 * out gets as many as fit). From a per-thread generator seeded from getrandom(2) (or the
 * clock, when that fails). Thread-safe; can't fail. */
void request_id_make(char *out, size_t cap);

/* Fills out (cap >= REQUEST_ID_MAX + 1) with sent when request_id_valid(sent), else with
 * request_id_make. Thread-safe; can't fail. */
void request_id_take(const char *sent, char *out, size_t cap);

#endif
