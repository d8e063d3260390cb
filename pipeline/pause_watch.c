/* The word of a Retry-After from the other instances (see pause_watch.h). */
#include "pipeline/pause_watch.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "db/db.h"
#include "db/limiter_db.h"

#define WAIT_MS 200 /* how often the thread looks whether it should stop */

struct pause_watch {
    char *conninfo;
    char instance[160];
    void (*heard)(void *ctx, int64_t ms);
    void *ctx;
    atomic_bool stop;
    pthread_t thread;
};

/* A connection that LISTENs, or NULL (logged once per outage by the caller). */
static PGconn *subscribe(struct pause_watch *w, struct cofi_err *err)
{
    PGconn *c = db_connect(w->conninfo, err);
    if (c != NULL && limiter_db_listen(c, err) != 0) {
        PQfinish(c);
        c = NULL;
    }
    return c;
}

/* Holds this instance for each pause another instance announces, until the connection fails
 * or the watch stops. */
static void listen_on(struct pause_watch *w, PGconn *c)
{
    while (!atomic_load(&w->stop)) {
        struct limiter_pause_note note;
        bool got = false;
        struct cofi_err err;
        cofi_err_clear(&err);
        if (limiter_db_wait_pause(c, WAIT_MS, &note, &got, &err) != 0) {
            log_warn("engine: pause watch: %s; reconnecting", err.msg);
            return;
        }
        if (got && strcmp(note.instance, w->instance) != 0) {
            w->heard(w->ctx, note.ms);
        }
    }
}

static void *watch_main(void *arg)
{
    struct pause_watch *w = arg;
    thread_set_name("cofi-pause");
    int64_t backoff = 100;
    bool down_logged = false;
    while (!atomic_load(&w->stop)) {
        struct cofi_err err;
        cofi_err_clear(&err);
        PGconn *c = subscribe(w, &err);
        if (c == NULL) {
            if (!down_logged) {
                log_warn("engine: pause watch: %s; retrying with backoff", err.msg);
                down_logged = true;
            }
            for (int64_t t = 0; t < backoff && !atomic_load(&w->stop); t += 50) {
                clock_sleep_ms(50);
            }
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
            continue;
        }
        backoff = 100;
        down_logged = false;
        listen_on(w, c);
        PQfinish(c);
    }
    return NULL;
}

int pause_watch_start(struct pause_watch **out, const char *conninfo, const char *instance,
                      void (*heard)(void *ctx, int64_t ms), void *ctx, struct cofi_err *err)
{
    struct pause_watch *w = calloc(1, sizeof *w);
    if (w == NULL || (w->conninfo = strdup(conninfo)) == NULL) {
        free(w);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    snprintf(w->instance, sizeof w->instance, "%s", instance);
    w->heard = heard;
    w->ctx = ctx;
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        free(w->conninfo);
        free(w);
        return cofi_err_set(err, COFI_E_INTERNAL, "cannot start the pause watch thread");
    }
    *out = w;
    return 0;
}

void pause_watch_stop(struct pause_watch *w)
{
    if (w == NULL) {
        return;
    }
    atomic_store(&w->stop, true);
    pthread_join(w->thread, NULL);
    free(w->conninfo);
    free(w);
}
