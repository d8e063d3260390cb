/* Reads typed keys of the configuration's JSON objects, for common/config*.c. */
#include "common/config_parse.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/utf8.h"

int cfg_check_keys(json_t *obj, const char *where, const char *const *known, struct cofi_err *err)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        bool ok = false;
        for (size_t i = 0; known[i] != NULL; i++) {
            if (strcmp(key, known[i]) == 0) {
                ok = true;
                break;
            }
        }
        if (!ok) {
            return cofi_err_set(err, COFI_E_INVALID, "unknown configuration key \"%s%s\"", where,
                                key);
        }
    }
    return 0;
}

/* Reads an optional integer key into *out, within [lo, hi]. */
int cfg_get_int(json_t *obj, const char *where, const char *key, long long lo, long long hi,
                long long *out, struct cofi_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return 0;
    }
    if (!json_is_integer(v)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"%s%s\" must be an integer",
                            where, key);
    }
    long long n = json_integer_value(v);
    if (n < lo || n > hi) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"%s%s\" is %lld, must be between %lld and %lld",
                            where, key, n, lo, hi);
    }
    *out = n;
    return 0;
}

int cfg_get_int32(json_t *obj, const char *where, const char *key, int lo, int hi, int *out,
                  struct cofi_err *err)
{
    long long v = *out;
    int rc = cfg_get_int(obj, where, key, lo, hi, &v, err);
    if (rc == 0) {
        *out = (int)v;
    }
    return rc;
}

int cfg_get_size(json_t *obj, const char *where, const char *key, long long lo, long long hi,
                 size_t *out, struct cofi_err *err)
{
    long long v = (long long)*out;
    int rc = cfg_get_int(obj, where, key, lo, hi, &v, err);
    if (rc == 0) {
        *out = (size_t)v;
    }
    return rc;
}

int cfg_get_int32s(json_t *obj, const char *where, const struct cfg_int_key *keys, size_t n,
                   struct cofi_err *err)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = cfg_get_int32(obj, where, keys[i].key, keys[i].lo, keys[i].hi, keys[i].out, err);
    }
    return rc;
}

/* Reads an optional boolean key into *out. */
int cfg_get_bool(json_t *obj, const char *where, const char *key, bool *out, struct cofi_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return 0;
    }
    if (!json_is_boolean(v)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"%s%s\" must be a boolean",
                            where, key);
    }
    *out = json_is_true(v);
    return 0;
}

/* Reads an optional string key into *out (a new string replacing the old one). */
int cfg_get_str(json_t *obj, const char *where, const char *key, char **out, struct cofi_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) == 0) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"%s%s\" must be a non-empty string", where, key);
    }
    char *copy = strdup(json_string_value(v));
    if (copy == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    free(*out);
    *out = copy;
    return 0;
}

int cfg_parse_worker(json_t *obj, const char *where, struct cofi_worker_cfg *w,
                     struct cofi_err *err)
{
    const struct cfg_int_key keys[] = {
        {"timeout_ms", 1, 86400000, &w->timeout_ms},
        {"max_attempts", 1, 1000, &w->max_attempts},
        {"backoff_base_ms", 1, 3600000, &w->backoff_base_ms},
        {"backoff_max_ms", 1, 3600000, &w->backoff_max_ms},
        {"retry_after_max_ms", 1000, 86400000, &w->retry_after_max_ms},
    };
    int rc = cfg_get_int32s(obj, where, keys, sizeof keys / sizeof keys[0], err);
    if (rc == 0 && w->backoff_max_ms < w->backoff_base_ms) {
        rc = cofi_err_set(err, COFI_E_INVALID,
                          "configuration key \"%sbackoff_max_ms\" is below backoff_base_ms", where);
    }
    return rc;
}

/* A character of a host name or IPv4 address (RFC 3986 reg-name, without sub-delims). */
static bool is_host_char(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_' || c == '~' || c == '%';
}

bool cfg_is_http_url(const char *u)
{
    size_t i;
    if (strncasecmp(u, "http://", 7) == 0) {
        i = 7;
    } else if (strncasecmp(u, "https://", 8) == 0) {
        i = 8;
    } else {
        return false;
    }
    for (size_t k = i; u[k] != '\0'; k++) {
        unsigned char c = (unsigned char)u[k];
        if (c <= 0x20 || c >= 0x7F || c == '?' || c == '#' || c == '\\') {
            return false;
        }
    }
    size_t host = i;
    if (u[i] == '[') {
        i++;
        while (isxdigit((unsigned char)u[i]) || u[i] == ':' || u[i] == '.') {
            i++;
        }
        if (u[i] != ']' || i == host + 1) {
            return false;
        }
        i++;
    } else {
        while (is_host_char(u[i])) {
            i++;
        }
        if (i == host) {
            return false;
        }
    }
    if (u[i] == ':') {
        i++;
        long port = 0;
        size_t digits = 0;
        while (isdigit((unsigned char)u[i]) && digits < 6) {
            port = port * 10 + (u[i] - '0');
            digits++;
            i++;
        }
        if (digits == 0 || port < 1 || port > 65535) {
            return false;
        }
    }
    return u[i] == '\0' || u[i] == '/';
}

const char *cfg_printable(char out[81], const char *s)
{
    utf8_sanitize(out, 81, s, strlen(s));
    return out;
}

void cfg_trim_slashes(char *u)
{
    size_t n = strlen(u);
    while (n > 0 && u[n - 1] == '/') {
        u[--n] = '\0';
    }
}
