/* Private to common/config*.c: reading typed keys of the configuration's JSON objects, and the
 * parsers of its sections. Every function returns 0, or a negative cofi_status with err->msg
 * naming the key ("where" is the key's prefix, "" or "llm." say). An absent key leaves *out
 * unchanged. */
#ifndef COFI_CONFIG_PARSE_H
#define COFI_CONFIG_PARSE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/config.h"
#include "common/error.h"

/* Fails unless every key of obj is in the NULL-terminated list `known`. */
int cfg_check_keys(json_t *obj, const char *where, const char *const *known, struct cofi_err *err);

/* Reads an optional integer key into *out, within [lo, hi]. */
int cfg_get_int(json_t *obj, const char *where, const char *key, long long lo, long long hi,
                long long *out, struct cofi_err *err);

/* cfg_get_int for an int or a size_t destination. */
int cfg_get_int32(json_t *obj, const char *where, const char *key, int lo, int hi, int *out,
                  struct cofi_err *err);
int cfg_get_size(json_t *obj, const char *where, const char *key, long long lo, long long hi,
                 size_t *out, struct cofi_err *err);

/* One optional int key of an object, within [lo, hi], for cfg_get_int32s. */
struct cfg_int_key {
    const char *key;
    int lo;
    int hi;
    int *out;
};

/* cfg_get_int32 for each of the n keys in order; stops at the first error. */
int cfg_get_int32s(json_t *obj, const char *where, const struct cfg_int_key *keys, size_t n,
                   struct cofi_err *err);

/* Reads an optional boolean key into *out. */
int cfg_get_bool(json_t *obj, const char *where, const char *key, bool *out, struct cofi_err *err);

/* Reads an optional non-empty string key into *out (a new string replacing the old one). */
int cfg_get_str(json_t *obj, const char *where, const char *key, char **out, struct cofi_err *err);

/* Reads timeout_ms, max_attempts, backoff_base_ms, backoff_max_ms and retry_after_max_ms. */
int cfg_parse_worker(json_t *obj, const char *where, struct cofi_worker_cfg *w,
                     struct cofi_err *err);

/* True for a base URL cofi can append paths to: http:// or https://, a host (a name, an IPv4
 * address or a bracketed IPv6 address), an optional port 1..65535 and an optional path, in
 * printable ASCII; no user info (it would show in logs and GET /stages/{name}/status), no
 * query and no fragment. */
bool cfg_is_http_url(const char *u);

/* Writes at most 80 bytes of s into out (81 bytes) as printable UTF-8, for an error message
 * about a value that may hold anything. Returns out. */
const char *cfg_printable(char out[81], const char *s);

/* Drops trailing slashes from a URL in place. */
void cfg_trim_slashes(char *u);

/* The sections (config_llm.c, config_http.c). */

/* The optional "llm" object of root. */
int cfg_parse_llm(json_t *root, struct cofi_config *cfg, struct cofi_err *err);

/* The optional "auth" object of root. */
int cfg_parse_auth(json_t *root, struct cofi_config *cfg, struct cofi_err *err);

/* The optional "http", "tls" and "limits" objects and "log_file" key of root. */
int cfg_parse_http(json_t *root, struct cofi_http_cfg *http, struct cofi_err *err);

/* The top-level keys cfg_parse_http reads (NULL-terminated). */
extern const char *const cfg_http_root_keys[];

/* Fills http with its defaults; frees what it owns (and clears it). Can't fail. */
void cfg_http_defaults(struct cofi_http_cfg *http);
void cfg_http_free(struct cofi_http_cfg *http);

#endif
