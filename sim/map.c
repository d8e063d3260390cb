/* A string -> uint64 hash map with separate chaining; callers do the locking. */
#include "sim/sim.h"

#include <stdlib.h>
#include <string.h>

struct sim_map_entry {
    struct sim_map_entry *next;
    uint64_t hash;
    uint64_t value;
    char key[]; /* NUL-terminated */
};

static uint64_t hash_key(const char *key)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    return h ^ (h >> 29);
}

void sim_map_init(struct sim_map *m)
{
    m->buckets = NULL;
    m->nbuckets = 0;
    m->count = 0;
}

static struct sim_map_entry *find(const struct sim_map *m, const char *key, uint64_t h)
{
    if (m->nbuckets == 0) {
        return NULL;
    }
    for (struct sim_map_entry *e = m->buckets[h & (m->nbuckets - 1)]; e != NULL; e = e->next) {
        if (e->hash == h && strcmp(e->key, key) == 0) {
            return e;
        }
    }
    return NULL;
}

/* Doubles the bucket array (or creates it). Returns 0, or -1 when out of memory (the map is
 * unchanged then). */
static int grow(struct sim_map *m)
{
    size_t n = m->nbuckets ? m->nbuckets * 2 : 16;
    struct sim_map_entry **b = calloc(n, sizeof *b);
    if (b == NULL) {
        return -1;
    }
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct sim_map_entry *e = m->buckets[i];
        while (e != NULL) {
            struct sim_map_entry *next = e->next;
            size_t slot = e->hash & (n - 1);
            e->next = b[slot];
            b[slot] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
    return 0;
}

uint64_t *sim_map_get(struct sim_map *m, const char *key)
{
    struct sim_map_entry *e = find(m, key, hash_key(key));
    return e ? &e->value : NULL;
}

uint64_t *sim_map_upsert(struct sim_map *m, const char *key, bool *created)
{
    uint64_t h = hash_key(key);
    struct sim_map_entry *e = find(m, key, h);
    if (e != NULL) {
        *created = false;
        return &e->value;
    }
    if (m->count >= m->nbuckets && grow(m) != 0) {
        return NULL;
    }
    size_t len = strlen(key);
    e = malloc(sizeof *e + len + 1);
    if (e == NULL) {
        return NULL;
    }
    memcpy(e->key, key, len + 1);
    e->hash = h;
    e->value = 0;
    size_t slot = h & (m->nbuckets - 1);
    e->next = m->buckets[slot];
    m->buckets[slot] = e;
    m->count++;
    *created = true;
    return &e->value;
}

void sim_map_clear(struct sim_map *m)
{
    if (m == NULL) {
        return;
    }
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct sim_map_entry *e = m->buckets[i];
        while (e != NULL) {
            struct sim_map_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    sim_map_init(m);
}
