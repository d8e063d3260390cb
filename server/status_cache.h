/* A short-lived cache of the rendered answers of the polled GETs (GET /batches/{id},
 * GET /stages/{name}/status): dashboards ask for them thousands of times a second, and each
 * answer costs a database statement and a JSON rendering.
 *
 * An entry is served again while it is younger than the window (config status_cache_ms) and
 * no write went through this instance's API since it was rendered: every write bumps the
 * cache's generation (status_cache_invalidate), and an entry only counts in the generation
 * it was rendered in. Only successful (200) answers are stored. While one caller re-renders
 * an entry that has just aged out, the others get the previous answer, at most two windows
 * old; never one from an older generation. With status_cache_get_stale the re-rendering
 * caller gets the previous answer too, and re-renders in the background.
 *
 * The cache knows nothing of HTTP: keys are bytes, and what it stores is an answer, an
 * immutable value of the caller's (cofid stores the JSON text of a body) with a count of
 * references: a hit takes a reference instead of a copy, and an answer lives until its last
 * holder (the cache, a caller serving it) lets it go, so an entry replaced or evicted in
 * one thread never frees an answer another thread is still serving. Every function is
 * thread-safe (one mutex, held to look an entry up and take a reference, never across a
 * handler, the database or a value's free function). */
#ifndef COFI_STATUS_CACHE_H
#define COFI_STATUS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STATUS_CACHE_ENTRIES   256                  /* entries at most; the least used goes */
#define STATUS_CACHE_KEY_MAX   640                  /* bytes of a key, its parts included */
#define STATUS_CACHE_BODY_MAX  (256u * 1024u)       /* larger answers are not stored */
#define STATUS_CACHE_BYTES_MAX (8u * 1024u * 1024u) /* sizes of all entries together */

struct status_cache;

/* A stored answer: the caller's value, its size in bytes (what counts against
 * STATUS_CACHE_BODY_MAX and STATUS_CACHE_BYTES_MAX) and a count of references. */
struct status_cache_answer;

/* Frees a value once no one holds its answer; called in whichever thread lets the last
 * reference go, never with the cache's mutex held. */
typedef void status_cache_value_free_fn(void *value);

/* Wraps value (size bytes) in a new answer holding one reference, the caller's (released
 * with status_cache_answer_release). The answer steals value: value_free(value) is called
 * when the last reference goes. value must not change while the answer lives: several
 * threads may read it at once. Returns NULL when out of memory; value is then left to the
 * caller. */
struct status_cache_answer *status_cache_answer_new(void *value, size_t size,
                                                    status_cache_value_free_fn *value_free);

/* The value of answer: borrowed, valid while the caller holds its reference. */
void *status_cache_answer_value(const struct status_cache_answer *answer);

/* The size of answer's value given to status_cache_answer_new. */
size_t status_cache_answer_size(const struct status_cache_answer *answer);

/* Lets go of one reference to answer; the last one frees its value and the answer. Accepts
 * NULL; can't fail. */
void status_cache_answer_release(struct status_cache_answer *answer);

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

/* Frees the cache and every entry; an answer a caller still holds lives on until released.
 * Accepts NULL. No other call on c may be running. */
void status_cache_free(struct status_cache *c);

/* Looks key (key_len bytes) up. Returns true with *answer a new reference to the cached
 * answer (the caller releases it with status_cache_answer_release); or false with *ticket
 * filled: the caller renders the answer itself and gives the ticket back with
 * status_cache_put or status_cache_drop. */
bool status_cache_get(struct status_cache *c, const char *key, size_t key_len,
                      struct status_cache_answer **answer, struct status_cache_ticket *ticket);

/* Like status_cache_get, for a caller that can have an answer re-rendered in the background
 * (cofid's refresher thread): an entry of the current generation that has aged out, but is
 * younger than two windows, is still served, and when no one re-renders it yet, *ticket is
 * filled too with refresher set: the caller then has the answer rendered and gives the ticket
 * back with status_cache_put or status_cache_drop, as after a miss. So a steady poll never
 * waits for a rendering; only the first one after a write or a pause does. Returns true
 * with *answer (check ticket->refresher), or false with *ticket as status_cache_get. */
bool status_cache_get_stale(struct status_cache *c, const char *key, size_t key_len,
                            struct status_cache_answer **answer,
                            struct status_cache_ticket *ticket);

/* Stores a 200 answer rendered after status_cache_get gave ticket (copies key; takes a
 * reference of its own to answer, the caller keeps its own). Nothing is stored when a write
 * was made since the ticket was given (the answer may predate it), when a newer answer is
 * already stored, when the answer's size is over STATUS_CACHE_BODY_MAX or when out of
 * memory. Can't fail. */
void status_cache_put(struct status_cache *c, const char *key, size_t key_len,
                      const struct status_cache_ticket *ticket, struct status_cache_answer *answer);

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
