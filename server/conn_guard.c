/* Per-connection request deadlines: shuts down connections whose request arrives too late. */
#include "server/conn_guard.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"

struct conn_guard_entry {
    int fd;
    _Atomic int64_t deadline_us; /* 0: disarmed */
    struct conn_guard_entry *prev, *next;
};

struct conn_guard {
    pthread_mutex_t mu; /* the list, and every shutdown (so fd is never closed meanwhile) */
    pthread_cond_t cv;
    struct conn_guard_entry *head;
    int64_t timeout_us;
    int64_t period_ms;
    bool stop;
    pthread_t thread;
};

static void *guard_main(void *arg)
{
    struct conn_guard *g = arg;
    thread_set_name("cofi-connguard");
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        struct timespec until = clock_deadline_ms(g->period_ms);
        pthread_cond_timedwait(&g->cv, &g->mu, &until);
        if (g->stop) {
            break;
        }
        pthread_mutex_unlock(&g->mu);
        int n = conn_guard_sweep(g, clock_mono_us());
        if (n > 0) {
            log_info("http: closed %d connection(s) that did not send a whole request within "
                     "%lld ms",
                     n, (long long)(g->timeout_us / 1000));
        }
        pthread_mutex_lock(&g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

int conn_guard_new(struct conn_guard **out, int request_timeout_ms)
{
    *out = NULL;
    struct conn_guard *g = calloc(1, sizeof *g);
    if (g == NULL) {
        return -1;
    }
    g->timeout_us = (int64_t)request_timeout_ms * 1000;
    g->period_ms = request_timeout_ms / 4;
    if (g->period_ms > 250) {
        g->period_ms = 250;
    }
    if (g->period_ms < 10) {
        g->period_ms = 10;
    }
    pthread_mutex_init(&g->mu, NULL);
    clock_cond_init(&g->cv);
    if (pthread_create(&g->thread, NULL, guard_main, g) != 0) {
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
        free(g);
        return -1;
    }
    *out = g;
    return 0;
}

void conn_guard_free(struct conn_guard *g)
{
    if (g == NULL) {
        return;
    }
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->thread, NULL);
    struct conn_guard_entry *e = g->head;
    while (e != NULL) {
        struct conn_guard_entry *next = e->next;
        free(e);
        e = next;
    }
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

struct conn_guard_entry *conn_guard_opened(struct conn_guard *g, int fd)
{
    struct conn_guard_entry *e = calloc(1, sizeof *e);
    if (e == NULL) {
        return NULL;
    }
    e->fd = fd;
    atomic_init(&e->deadline_us, clock_mono_us() + g->timeout_us);
    pthread_mutex_lock(&g->mu);
    e->next = g->head;
    if (g->head != NULL) {
        g->head->prev = e;
    }
    g->head = e;
    pthread_mutex_unlock(&g->mu);
    return e;
}

void conn_guard_closed(struct conn_guard *g, struct conn_guard_entry *e)
{
    if (e == NULL) {
        return;
    }
    pthread_mutex_lock(&g->mu);
    if (e->prev != NULL) {
        e->prev->next = e->next;
    } else {
        g->head = e->next;
    }
    if (e->next != NULL) {
        e->next->prev = e->prev;
    }
    pthread_mutex_unlock(&g->mu);
    free(e);
}

void conn_guard_request_received(struct conn_guard_entry *e)
{
    if (e != NULL) {
        atomic_store(&e->deadline_us, 0);
    }
}

void conn_guard_request_done(struct conn_guard *g, struct conn_guard_entry *e)
{
    if (e != NULL) {
        atomic_store(&e->deadline_us, clock_mono_us() + g->timeout_us);
    }
}

int conn_guard_sweep(struct conn_guard *g, int64_t now_us)
{
    int n = 0;
    pthread_mutex_lock(&g->mu);
    for (struct conn_guard_entry *e = g->head; e != NULL; e = e->next) {
        int64_t d = atomic_load(&e->deadline_us);
        if (d != 0 && d < now_us) {
            /* Only shut down, never close: the server still owns fd, and closes it after
             * conn_guard_closed, which waits for this mutex. */
            (void)shutdown(e->fd, SHUT_RDWR);
            atomic_store(&e->deadline_us, 0);
            n++;
        }
    }
    pthread_mutex_unlock(&g->mu);
    return n;
}
