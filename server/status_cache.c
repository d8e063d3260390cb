/* The cache of rendered answers of the polled GETs: a small table under one mutex. */
#include "server/status_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

struct entry {
    char *key; /* owned; NULL: the slot is free */
    size_t key_len;
    uint64_t hash;
    char *body; /* owned; never NULL in a used slot */
    size_t body_len;
    uint64_t generation; /* the generation it was rendered in */
    int64_t rendered_us; /* when the handler that rendered it started */
    int64_t used_us;     /* last served or stored: the least recent one is evicted first */
    bool refreshing;     /* a caller is re-rendering it */
};

struct status_cache {
    pthread_mutex_t lock;
    atomic_uint_fast64_t generation; /* bumped by every write through the API */
    int64_t window_us;
    size_t bytes; /* body_len of every used slot together; at most STATUS_CACHE_BYTES_MAX */
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

/* Empties a slot; its key and body go to *key_out and *body_out for the caller to free once
 * the lock is released. Call with the lock held. */
static void clear_slot(struct status_cache *c, struct entry *e, char **key_out, char **body_out)
{
    c->bytes -= e->body_len;
    *key_out = e->key;
    *body_out = e->body;
    memset(e, 0, sizeof *e);
}

void status_cache_free(struct status_cache *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < STATUS_CACHE_ENTRIES; i++) {
        free(c->entries[i].key);
        free(c->entries[i].body);
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

bool status_cache_get(struct status_cache *c, const char *key, size_t key_len, char **body,
                      size_t *body_len, struct status_cache_ticket *ticket)
{
    uint64_t hash = hash_key(key, key_len);
    size_t len = 0;
    char *copy = NULL;
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
        } else {
            /* Someone re-renders it: the previous answer, if it is not too old. */
            serve = age < 2 * c->window_us;
        }
    } else if (e != NULL && !e->refreshing) {
        e->refreshing = true;
        ticket->refresher = true;
    }
    if (serve) {
        len = e->body_len;
        copy = malloc(len > 0 ? len : 1);
        if (copy != NULL) {
            memcpy(copy, e->body, len);
            e->used_us = now;
        }
    }
    pthread_mutex_unlock(&c->lock);

    if (copy == NULL) {
        return false;
    }
    *body = copy;
    *body_len = len;
    return true;
}

/* Keys and bodies taken out of the table under the lock, freed once it is released. */
struct garbage {
    char *p[2 * STATUS_CACHE_ENTRIES + 4];
    size_t n;
};

/* Empties slot e into g. Call with the lock held. */
static void evict(struct status_cache *c, struct entry *e, struct garbage *g)
{
    clear_slot(c, e, &g->p[g->n], &g->p[g->n + 1]);
    g->n += 2;
}

/* Stores body (taking new_body) in e, the slot of key or an empty one (taking new_key then).
 * Makes room first: the least recently used other entries go while the bodies together
 * would pass STATUS_CACHE_BYTES_MAX. Call with the lock held. */
static void fill(struct status_cache *c, struct entry *e, char **new_key, size_t key_len,
                 uint64_t hash, char **new_body, size_t body_len,
                 const struct status_cache_ticket *ticket, struct garbage *g)
{
    while (c->bytes - e->body_len + body_len > STATUS_CACHE_BYTES_MAX) {
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
    g->p[g->n++] = e->body;
    c->bytes = c->bytes - e->body_len + body_len;
    e->body = *new_body;
    e->body_len = body_len;
    *new_body = NULL;
    e->generation = ticket->generation;
    e->rendered_us = ticket->start_us;
    e->used_us = clock_mono_us();
    e->refreshing = false;
}

void status_cache_put(struct status_cache *c, const char *key, size_t key_len,
                      const struct status_cache_ticket *ticket, const char *body, size_t body_len)
{
    uint64_t hash = hash_key(key, key_len);
    char *new_body = NULL;
    char *new_key = NULL;
    if (body_len <= STATUS_CACHE_BODY_MAX) {
        new_body = malloc(body_len > 0 ? body_len : 1);
        new_key = malloc(key_len > 0 ? key_len : 1);
    }
    if (new_body == NULL || new_key == NULL) {
        free(new_body);
        free(new_key);
        new_body = NULL;
        new_key = NULL;
    } else {
        memcpy(new_body, body, body_len);
        memcpy(new_key, key, key_len);
    }
    struct garbage g;
    g.n = 0;

    pthread_mutex_lock(&c->lock);
    struct entry *e = find(c, key, key_len, hash);
    if (e != NULL && ticket->refresher) {
        e->refreshing = false;
    }
    bool store = new_body != NULL && ticket->generation == atomic_load(&c->generation);
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
        fill(c, e, &new_key, key_len, hash, &new_body, body_len, ticket, &g);
    }
    pthread_mutex_unlock(&c->lock);

    for (size_t i = 0; i < g.n; i++) {
        free(g.p[i]);
    }
    free(new_body);
    free(new_key);
}

void status_cache_drop(struct status_cache *c, const char *key, size_t key_len,
                       const struct status_cache_ticket *ticket)
{
    (void)ticket;
    uint64_t hash = hash_key(key, key_len);
    char *old_key = NULL;
    char *old_body = NULL;
    pthread_mutex_lock(&c->lock);
    struct entry *e = find(c, key, key_len, hash);
    if (e != NULL) {
        clear_slot(c, e, &old_key, &old_body);
    }
    pthread_mutex_unlock(&c->lock);
    free(old_key);
    free(old_body);
}

void status_cache_invalidate(struct status_cache *c)
{
    if (c != NULL) {
        atomic_fetch_add(&c->generation, 1);
    }
}

int status_cache_key_part(char *out, size_t cap, size_t *len, const char *part)
{
    char head[24];
    size_t part_len = part != NULL ? strlen(part) : 0;
    int n = part != NULL ? snprintf(head, sizeof head, "%zu:", part_len)
                         : snprintf(head, sizeof head, "-");
    if (n < 0 || *len + (size_t)n + part_len > cap) {
        return -1;
    }
    memcpy(out + *len, head, (size_t)n);
    if (part_len > 0) {
        memcpy(out + *len + (size_t)n, part, part_len);
    }
    *len += (size_t)n + part_len;
    return 0;
}
