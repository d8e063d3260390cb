/* Validation of a batch's callback_url: an absolute http(s) URL cofid can POST to. */
#include "handlers/handlers.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The scheme's length ("http://" or "https://", any case), or 0. */
static size_t scheme_len(const char *s)
{
    if (strncasecmp(s, "http://", 7) == 0) {
        return 7;
    }
    if (strncasecmp(s, "https://", 8) == 0) {
        return 8;
    }
    return 0;
}

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

/* Checks the authority [p, end): host (name, IPv4 or [IPv6]) and an optional port. Returns
 * NULL when good, else why not. */
static const char *check_authority(const char *p, const char *end)
{
    if (p == end) {
        return "has no host";
    }
    if (memchr(p, '@', (size_t)(end - p)) != NULL) {
        return "must not hold user info";
    }
    const char *h = p;
    if (*h == '[') {
        while (h < end && *h != ']') {
            bool ok = (*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'f') ||
                      (*h >= 'A' && *h <= 'F') || *h == ':' || *h == '.' || *h == '[';
            if (!ok) {
                return "has an invalid IPv6 host";
            }
            h++;
        }
        if (h == end || h - p < 3) {
            return "has an invalid IPv6 host";
        }
        h++;
    } else {
        while (h < end && host_char(*h)) {
            h++;
        }
        if (h == p) {
            return "has no host";
        }
    }
    if (h == end) {
        return NULL;
    }
    if (*h != ':' || h + 1 == end || end - h > 6) {
        return "has an invalid host or port";
    }
    long port = 0;
    for (const char *q = h + 1; q < end; q++) {
        if (*q < '0' || *q > '9') {
            return "has an invalid port";
        }
        port = port * 10 + (*q - '0');
    }
    return port >= 1 && port <= 65535 ? NULL : "has an invalid port";
}

/* NULL when s (len bytes) is an acceptable callback URL, else why not. */
static const char *check_url(const char *s, size_t len)
{
    if (len > CALLBACK_URL_MAX) {
        return "is longer than 2048 bytes";
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f) {
            return "must be printable ASCII without spaces (percent-encode the rest)";
        }
    }
    size_t sl = scheme_len(s);
    if (sl == 0) {
        return "must be an absolute http:// or https:// URL";
    }
    if (strchr(s, '#') != NULL) {
        return "must not have a fragment";
    }
    const char *auth = s + sl;
    const char *end = auth + strcspn(auth, "/?");
    return check_authority(auth, end);
}

int req_check_callback_url(const json_t *v, const char **url, struct cofi_err *err)
{
    if (json_is_null(v)) {
        *url = NULL;
        return 0;
    }
    if (!json_is_string(v)) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "callback_url must be a string or null");
    }
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    const char *why = strlen(s) != len ? "contains a NUL character" : check_url(s, len);
    if (why != NULL) {
        return cofi_err_set(err, COFI_E_INVALID, "callback_url %s", why);
    }
    *url = s;
    return 0;
}
