/* A short-lived cache of the rendered answers of the polled GETs (GET /batches/{id},
 * GET /stages/{name}/status): dashboards ask for them thousands of times a second, and each
 * answer costs a database statement and a JSON rendering.
 *
 * An entry is served again while it is younger than the window (config status_cache_ms) and
 * no write went through this instance's API since it was rendered: every write bumps the
 * cache's generation (status_cache_invalidate), and an entry only counts in the generation
 * it was rendered in. Only successful (200) answers are stored. While one caller re-renders
 * an entry that has just aged out, the others get the previous answer, at most two windows
 * old; never one from an older generation.
 *
 * The cache knows nothing of HTTP: keys and bodies are bytes. Every function is thread-safe
 * (one mutex, held to look an entry up and copy its body out, never across a handler or the
 * database). */
#ifndef COFI_STATUS_CACHE_H
#define COFI_STATUS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STATUS_CACHE_ENTRIES   256                  /* entries at most; the least used goes */
#define STATUS_CACHE_KEY_MAX   640                  /* bytes of a key, its parts included */
#define STATUS_CACHE_BODY_MAX  (256u * 1024u)       /* larger answers are not stored */
#define STATUS_CACHE_BYTES_MAX (8u * 1024u * 1024u) /* bodies of all entries together */

struct status_cache;

/* What a lookup that found nothing to serve gives the caller, who runs the handler and then
 * hands the ticket back to status_cache_put (a 200 answer) or status_cache_drop (anything
 * else). */
struct status_cache_ticket {
    uint64_t generation; /* the generation before the handler ran */
    int64_t start_us;    /* when the handler was about to run (monotonic) */
    bool refresher;      /* this caller re-renders the entry; the others serve the old one */
};

/* Creates a cache whose entries are served for window_ms (1 or more). Returns 0 with *out a
 * new cache (the caller ends it with status_cache_free), or -1 when out of memory (*out
 * NULL). */
int status_cache_new(struct status_cache **out, int window_ms);

/* Frees the cache and every entry. Accepts NULL. No other call may be running. */
void status_cache_free(struct status_cache *c);

/* Looks key (key_len bytes) up. Returns true with *body a new copy of the cached body (the
 * caller frees it) and *body_len; or false with *ticket filled: the caller renders the
 * answer itself and gives the ticket back with status_cache_put or status_cache_drop. Out of
 * memory for the copy counts as not found. */
bool status_cache_get(struct status_cache *c, const char *key, size_t key_len, char **body,
                      size_t *body_len, struct status_cache_ticket *ticket);

/* Stores a 200 answer rendered after status_cache_get gave ticket (copies key and body; the
 * caller keeps its own). Nothing is stored when a write was made since the ticket was given
 * (the answer may predate it), when a newer answer is already stored, when body_len is over
 * STATUS_CACHE_BODY_MAX or when out of memory. Can't fail. */
void status_cache_put(struct status_cache *c, const char *key, size_t key_len,
                      const struct status_cache_ticket *ticket, const char *body, size_t body_len);

/* Gives back a ticket whose answer is not to be stored (an error, a 4xx): the entry of key,
 * if any, is removed, so that the error is not hidden behind an older answer. Can't fail. */
void status_cache_drop(struct status_cache *c, const char *key, size_t key_len,
                       const struct status_cache_ticket *ticket);

/* Makes every entry stale at once. Call it after a write has committed and before it is
 * answered: a request that starts after the answer never sees an older entry. Accepts NULL;
 * can't fail. */
void status_cache_invalidate(struct status_cache *c);

/* Appends one part of a key to out (*len bytes used, cap bytes in all): its length in
 * decimal, ':', then its bytes; NULL is "-". Keys made of different lists of parts are
 * therefore always different. Returns 0, or -1 when it does not fit (out and *len are then
 * unchanged). Pure; can't fail otherwise. */
int status_cache_key_part(char *out, size_t cap, size_t *len, const char *part);

#endif
