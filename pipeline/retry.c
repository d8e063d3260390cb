/* Retry policy: classification of answers, Retry-After parsing, back-off and jitter. */
#include "pipeline/retry.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum outcome_kind retry_classify(bool transport_error, long http_status, bool body_is_object)
{
    if (transport_error) {
        return OUTCOME_RETRY;
    }
    switch (http_status) {
    case 408:
    case 425:
    case 429:
    case 500:
    case 502:
    case 503:
    case 504:
        return OUTCOME_RETRY;
    default:
        break;
    }
    if (http_status >= 200 && http_status < 300) {
        return body_is_object ? OUTCOME_OK : OUTCOME_PERMANENT;
    }
    /* Any other 4xx is permanent; other 5xx and odd codes are treated as permanent too, since
     * the contract names every transient one. */
    return OUTCOME_PERMANENT;
}

int retry_parse_after(const char *value, int64_t now_wall_ms, int64_t *out_ms)
{
    if (value == NULL) {
        return -1;
    }
    while (isspace((unsigned char)*value)) {
        value++;
    }
    if (*value == '\0') {
        return -1;
    }
    if (isdigit((unsigned char)*value)) {
        char *end = NULL;
        errno = 0;
        long long secs = strtoll(value, &end, 10);
        while (end != NULL && isspace((unsigned char)*end)) {
            end++;
        }
        if (errno != 0 || end == NULL || *end != '\0' || secs < 0) {
            return -1;
        }
        if (secs > 86400) {
            secs = 86400;
        }
        *out_ms = (int64_t)secs * 1000;
        return 0;
    }
    time_t when = curl_getdate(value, NULL);
    if (when == (time_t)-1) {
        return -1;
    }
    int64_t delta = (int64_t)when * 1000 - now_wall_ms;
    if (delta < 0) {
        delta = 0;
    }
    if (delta > 86400000) {
        delta = 86400000;
    }
    *out_ms = delta;
    return 0;
}

uint64_t retry_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

int64_t retry_backoff_ms(const struct cofi_worker_cfg *w, int attempt, uint64_t *seed)
{
    int64_t d = w->backoff_base_ms;
    for (int i = 1; i < attempt && d < w->backoff_max_ms; i++) {
        d *= 2;
    }
    if (d > w->backoff_max_ms) {
        d = w->backoff_max_ms;
    }
    int64_t half = d / 2;
    return half + (int64_t)(retry_rand(seed) % (uint64_t)(d - half + 1));
}

int64_t retry_delay_ms(const struct cofi_worker_cfg *w, int attempt, int64_t retry_after_ms,
                       uint64_t *seed)
{
    if (retry_after_ms < 0) {
        return retry_backoff_ms(w, attempt, seed);
    }
    int64_t r = retry_after_ms;
    if (r > w->retry_after_max_ms) {
        r = w->retry_after_max_ms;
    }
    if (r < 0) {
        r = 0;
    }
    int64_t spread = r / 10;
    if (spread < w->backoff_base_ms) {
        spread = w->backoff_base_ms;
    }
    if (spread < 0) {
        spread = 0;
    }
    return r + (int64_t)(retry_rand(seed) % ((uint64_t)spread + 1));
}
