/* Request ids: validation of the client's, and random new ones. */
#include "server/request_id.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "common/clock.h"

bool request_id_valid(const char *s)
{
    if (s == NULL || s[0] == '\0') {
        return false;
    }
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p < 0x21 || *p > 0x7e || ++n > REQUEST_ID_MAX) {
            return false;
        }
    }
    return true;
}

/* splitmix64: a fast generator, seeded once per thread. */
static uint64_t next_random(void)
{
    static _Thread_local uint64_t state;
    static _Thread_local int seeded;
    if (!seeded) {
        if (getrandom(&state, sizeof state, GRND_NONBLOCK) != (ssize_t)sizeof state) {
            state = (uint64_t)clock_mono_us() ^ ((uint64_t)(uintptr_t)&state << 16);
        }
        seeded = 1;
    }
    state += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void request_id_make(char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    if (cap == 0) {
        return;
    }
    uint64_t words[2] = {next_random(), next_random()};
    size_t n = 0;
    for (int w = 0; w < 2; w++) {
        for (int k = 0; k < 16 && n + 1 < cap; k++) {
            out[n++] = hex[(words[w] >> (60 - 4 * k)) & 0xf];
        }
    }
    out[n] = '\0';
}

void request_id_take(const char *sent, char *out, size_t cap)
{
    if (request_id_valid(sent) && strlen(sent) < cap) {
        memcpy(out, sent, strlen(sent) + 1);
        return;
    }
    request_id_make(out, cap);
}
