/* Stride scheduling tags: the fair order of the lanes' queues across batches. */
#include "pipeline/stride.h"

#include <stdlib.h>
#include <string.h>

/* Entries of batches whose pass is this far behind the clock are dropped. */
#define STRIDE_FORGET 1000.0

int stride_init(struct stride *s)
{
    memset(s, 0, sizeof *s);
    return pthread_mutex_init(&s->mu, NULL) == 0 ? 0 : -1;
}

void stride_free(struct stride *s)
{
    free(s->v);
    pthread_mutex_destroy(&s->mu);
}

/* The entry of batch (mu held), a new one at the clock, or NULL when memory runs out. */
static struct stride_batch *entry(struct stride *s, int64_t batch)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].id == batch) {
            return &s->v[i];
        }
    }
    /* Forget the batches left far behind (finished or idle) before growing. */
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].pass > s->now - STRIDE_FORGET) {
            s->v[k++] = s->v[i];
        }
    }
    s->n = k;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        struct stride_batch *p = realloc(s->v, cap * sizeof *p);
        if (p == NULL) {
            return NULL;
        }
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n] = (struct stride_batch){.id = batch, .pass = s->now};
    return &s->v[s->n++];
}

double stride_tag(struct stride *s, int64_t batch, int weight)
{
    pthread_mutex_lock(&s->mu);
    struct stride_batch *b = entry(s, batch);
    double tag = s->now;
    if (b != NULL) {
        tag = b->pass > s->now ? b->pass : s->now;
        b->pass = tag + 1.0 / (weight > 1 ? weight : 1);
    }
    pthread_mutex_unlock(&s->mu);
    return tag;
}

void stride_served(struct stride *s, double tag)
{
    pthread_mutex_lock(&s->mu);
    if (tag > s->now) {
        s->now = tag;
    }
    pthread_mutex_unlock(&s->mu);
}
