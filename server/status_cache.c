/* The cache of rendered answers of the polled GETs: a small table under one mutex. */
#include "server/status_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

struct status_cache_answer {
    atomic_size_t refs; /* the cache's (one per entry holding it) and the callers' */
    void *value;        /* owned: value_free(value) when refs drops to 0 */
    size_t size;
    status_cache_value_free_fn *value_free;
};

struct entry {
    char *key; /* owned; NULL: the slot is free */
    size_t key_len;
    uint64_t hash;
    struct status_cache_answer *answer; /* a reference of the cache's; never NULL in a used slot */
    uint64_t generation;                /* the generation it was rendered in */
    int64_t rendered_us;                /* when the handler that rendered it started */
    int64_t used_us; /* last served or stored: the least recent one is evicted first */
    bool refreshing; /* a caller is re-rendering it */
};

struct status_cache {
    pthread_mutex_t lock;
    atomic_uint_fast64_t generation; /* bumped by every write through the API */
    int64_t window_us;
    size_t bytes; /* answer sizes of every used slot together; at most STATUS_CACHE_BYTES_MAX */
    struct entry entries[STATUS_CACHE_ENTRIES];
};

/* FNV-1a: only to skip most key comparisons. */
static uint64_t hash_key(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return h;
}

struct status_cache_answer *status_cache_answer_new(void *value, size_t size,
                                                    status_cache_value_free_fn *value_free)
{
    struct status_cache_answer *a = malloc(sizeof *a);
    if (a == NULL) {
        return NULL;
    }
    atomic_init(&a->refs, 1);
    a->value = value;
    a->size = size;
    a->value_free = value_free;
    return a;
}

void *status_cache_answer_value(const struct status_cache_answer *answer)
{
    return answer->value;
}

size_t status_cache_answer_size(const struct status_cache_answer *answer)
{
    return answer->size;
}

/* Takes one more reference to a, which the caller holds already (directly or through an
 * entry, under the lock): the count can't be 0 here. */
static void answer_retain(struct status_cache_answer *a)
{
    atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
}

void status_cache_answer_release(struct status_cache_answer *answer)
{
    if (answer == NULL) {
        return;
    }
    /* acq_rel: every holder's reads of the value happen before it is freed. */
    if (atomic_fetch_sub_explicit(&answer->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    answer->value_free(answer->value);
    free(answer);
}

int status_cache_new(struct status_cache **out, int window_ms)
{
    *out = NULL;
    struct status_cache *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return -1;
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return -1;
    }
    atomic_init(&c->generation, 1);
    c->window_us = (int64_t)(window_ms > 0 ? window_ms : 1) * 1000;
    *out = c;
    return 0;
}

/* Empties a slot; its key and its reference to the answer go to *key_out and *answer_out,
 * for the caller to free and release once the lock is released. Call with the lock held. */
static void clear_slot(struct status_cache *c, struct entry *e, char **key_out,
                       struct status_cache_answer **answer_out)
{
    c->bytes -= e->answer->size;
    *key_out = e->key;
    *answer_out = e->answer;
    memset(e, 0, sizeof *e);
}

void status_cache_free(struct status_cache *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < STATUS_CACHE_ENTRIES; i++) {
        free(c->entries[i].key);
        status_cache_answer_release(c->entries[i].answer);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* The used slot of key, or NULL. Call with the lock held. */
static struct entry *find(struct status_cache *c, const char *key, size_t key_len, uint64_t hash)
{
    for (size_t i = 0; i < STATUS_CACHE_ENTRIES; i++) {
        struct entry *e = &c->entries[i];
        if (e->key != NULL && e->hash == hash && e->key_len == key_len &&
            memcmp(e->key, key, key_len) == 0) {
            return e;
        }
    }
    return NULL;
}

/* A free slot, or NULL when every slot is in use. Call with the lock held. */
static struct entry *free_slot(struct status_cache *c)
{
    for (size_t i = 0; i < STATUS_CACHE_ENTRIES; i++) {
        if (c->entries[i].key == NULL) {
            return &c->entries[i];
        }
    }
    return NULL;
}

/* The least recently used slot in use other than keep, or NULL when there is none. Call with
 * the lock held. */
static struct entry *least_used(struct status_cache *c, const struct entry *keep)
{
    struct entry *best = NULL;
    for (size_t i = 0; i < STATUS_CACHE_ENTRIES; i++) {
        struct entry *e = &c->entries[i];
        if (e != keep && e->key != NULL && (best == NULL || e->used_us < best->used_us)) {
            best = e;
        }
    }
    return best;
}

/* status_cache_get and status_cache_get_stale: background says whether the caller can have an
 * aged-out entry re-rendered elsewhere while it serves the old answer. */
static bool lookup(struct status_cache *c, const char *key, size_t key_len, bool background,
                   struct status_cache_answer **answer, struct status_cache_ticket *ticket)
{
    uint64_t hash = hash_key(key, key_len);
    bool serve = false;

    pthread_mutex_lock(&c->lock);
    int64_t now = clock_mono_us();
    uint64_t generation = atomic_load(&c->generation);
    ticket->generation = generation;
    ticket->start_us = now;
    ticket->refresher = false;
    struct entry *e = find(c, key, key_len, hash);
    if (e != NULL && e->generation == generation) {
        int64_t age = now - e->rendered_us;
        if (age < c->window_us) {
            serve = true;
        } else if (!e->refreshing) {
            e->refreshing = true;
            ticket->refresher = true;
            /* In the background: the old answer now, the new one for the next callers. */
            serve = background && age < 2 * c->window_us;
        } else {
            /* Someone re-renders it: the previous answer, if it is not too old. */
            serve = age < 2 * c->window_us;
        }
    } else if (e != NULL && !e->refreshing) {
        e->refreshing = true;
        ticket->refresher = true;
    }
    if (serve) {
        /* The reference is taken under the lock: no eviction can free the answer first. */
        answer_retain(e->answer);
        *answer = e->answer;
        e->used_us = now;
    }
    pthread_mutex_unlock(&c->lock);
    return serve;
}

bool status_cache_get(struct status_cache *c, const char *key, size_t key_len,
                      struct status_cache_answer **answer, struct status_cache_ticket *ticket)
{
    return lookup(c, key, key_len, false, answer, ticket);
}

bool status_cache_get_stale(struct status_cache *c, const char *key, size_t key_len,
                            struct status_cache_answer **answer, struct status_cache_ticket *ticket)
{
    return lookup(c, key, key_len, true, answer, ticket);
}

/* Keys and answers taken out of the table under the lock, freed and released once it is
 * released (an answer's value_free never runs under the lock). */
struct garbage {
    char *keys[STATUS_CACHE_ENTRIES + 1];
    struct status_cache_answer *answers[STATUS_CACHE_ENTRIES + 2];
    size_t n_keys;
    size_t n_answers;
};

/* Empties slot e into g. Call with the lock held. */
static void evict(struct status_cache *c, struct entry *e, struct garbage *g)
{
    clear_slot(c, e, &g->keys[g->n_keys], &g->answers[g->n_answers]);
    g->n_keys++;
    g->n_answers++;
}

/* Frees and releases what g holds. Call without the lock. */
static void garbage_free(struct garbage *g)
{
    for (size_t i = 0; i < g->n_keys; i++) {
        free(g->keys[i]);
    }
    for (size_t i = 0; i < g->n_answers; i++) {
        status_cache_answer_release(g->answers[i]);
    }
}

/* The size of e's answer; 0 for a free slot. */
static size_t entry_size(const struct entry *e)
{
    return e->answer != NULL ? e->answer->size : 0;
}

/* Stores answer (a new reference of the cache's) in e, the slot of key or an empty one
 * (taking new_key then). Makes room first: the least recently used other entries go while
 * the answers together would pass STATUS_CACHE_BYTES_MAX. Call with the lock held. */
static void fill(struct status_cache *c, struct entry *e, char **new_key, size_t key_len,
                 uint64_t hash, struct status_cache_answer *answer,
                 const struct status_cache_ticket *ticket, struct garbage *g)
{
    size_t size = answer->size;
    while (c->bytes - entry_size(e) + size > STATUS_CACHE_BYTES_MAX) {
        struct entry *v = least_used(c, e);
        if (v == NULL) {
            break;
        }
        evict(c, v, g);
    }
    if (e->key == NULL) {
        e->key = *new_key;
        e->key_len = key_len;
        e->hash = hash;
        *new_key = NULL;
    }
    if (e->answer != NULL) {
        g->answers[g->n_answers++] = e->answer;
    }
    c->bytes = c->bytes - entry_size(e) + size;
    answer_retain(answer);
    e->answer = answer;
    e->generation = ticket->generation;
    e->rendered_us = ticket->start_us;
    e->used_us = clock_mono_us();
    e->refreshing = false;
}

void status_cache_put(struct status_cache *c, const char *key, size_t key_len,
                      const struct status_cache_ticket *ticket, struct status_cache_answer *answer)
{
    uint64_t hash = hash_key(key, key_len);
    char *new_key = NULL;
    if (answer->size <= STATUS_CACHE_BODY_MAX) {
        new_key = malloc(key_len > 0 ? key_len : 1);
    }
    if (new_key != NULL) {
        memcpy(new_key, key, key_len);
    }
    struct garbage g;
    g.n_keys = 0;
    g.n_answers = 0;

    pthread_mutex_lock(&c->lock);
    struct entry *e = find(c, key, key_len, hash);
    if (e != NULL && ticket->refresher) {
        e->refreshing = false;
    }
    bool store = new_key != NULL && ticket->generation == atomic_load(&c->generation);
    if (store && e != NULL && e->generation == ticket->generation &&
        e->rendered_us > ticket->start_us) {
        store = false; /* a newer answer is stored already */
    }
    if (store && e == NULL) {
        e = free_slot(c);
        if (e == NULL) {
            e = least_used(c, NULL);
            evict(c, e, &g);
        }
    }
    if (store) {
        fill(c, e, &new_key, key_len, hash, answer, ticket, &g);
    }
    pthread_mutex_unlock(&c->lock);

    garbage_free(&g);
    free(new_key);
}

void status_cache_drop(struct status_cache *c, const char *key, size_t key_len,
                       const struct status_cache_ticket *ticket)
{
    (void)ticket;
    uint64_t hash = hash_key(key, key_len);
    char *old_key = NULL;
    struct status_cache_answer *old_answer = NULL;
    pthread_mutex_lock(&c->lock);
    struct entry *e = find(c, key, key_len, hash);
    if (e != NULL) {
        clear_slot(c, e, &old_key, &old_answer);
    }
    pthread_mutex_unlock(&c->lock);
    free(old_key);
    status_cache_answer_release(old_answer);
}

void status_cache_invalidate(struct status_cache *c)
{
    if (c != NULL) {
        atomic_fetch_add(&c->generation, 1);
    }
}

/* Writes n in decimal then ':' to head (at least 22 bytes); returns the bytes written. No
 * snprintf: a key is made for every polled GET. */
static size_t length_head(char *head, size_t n)
{
    char digits[20];
    size_t d = 0;
    do {
        digits[d++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    for (size_t i = 0; i < d; i++) {
        head[i] = digits[d - 1 - i];
    }
    head[d] = ':';
    return d + 1;
}

int status_cache_key_part(char *out, size_t cap, size_t *len, const char *part)
{
    char head[24];
    size_t part_len = part != NULL ? strlen(part) : 0;
    size_t n = 1;
    if (part != NULL) {
        n = length_head(head, part_len);
    } else {
        head[0] = '-';
    }
    if (*len + n + part_len > cap) {
        return -1;
    }
    memcpy(out + *len, head, n);
    if (part_len > 0) {
        memcpy(out + *len + n, part, part_len);
    }
    *len += n + part_len;
    return 0;
}
