/* The flusher: writes queued transitions in one statement, and finds the one at fault when a
 * statement is refused, so a bad record fails its own call and never the others. */
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/utf8.h"
#include "db/db.h"
#include "pipeline/engine_state.h"
#include "pipeline/flush_text.h"
#include "pipeline/metrics.h"

/* Below this many queued records the flusher waits FLUSH_LINGER_MS for more. */
#define FLUSH_LINGER_BELOW 64
#define FLUSH_LINGER_MS    2
/* Tries of one statement refused for a reason that may pass (deadlock, serialization failure,
 * statement timeout, lock not available) before its records are split. */
#define FLUSH_TRANSIENT_TRIES 3

struct flush_stats {
    long flushes;
    long records;
    int64_t us;
    int64_t since_us;
};

/* Counts one flush; every 10 s logs how many records took how many statements. */
static void log_flush_stats(struct flush_stats *st, size_t records, int64_t us)
{
    st->flushes++;
    st->records += (long)records;
    st->us += us;
    int64_t now = clock_mono_us();
    if (now - st->since_us < 10000000) {
        return;
    }
    if (st->records > 0) {
        log_info("flusher: %ld records in %ld statements over %.0f s, %.1f ms each", st->records,
                 st->flushes, (double)(now - st->since_us) / 1e6,
                 (double)st->us / 1000.0 / (double)st->flushes);
    }
    *st = (struct flush_stats){.since_us = now};
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* After a write: every parked job whose call was written and is still claimed goes on to its
 * next stage; the others (cancelled, claim lost) are let go. Frees the records' contents. */
static void continue_jobs(struct engine *e, const struct work_written *w, size_t nw,
                          struct record *recs, size_t n)
{
    int64_t *running = malloc((nw + 1) * sizeof *running);
    size_t nrun = 0;
    for (size_t i = 0; running != NULL && i < nw; i++) {
        if (w[i].running) {
            running[nrun++] = w[i].id;
        }
    }
    if (running != NULL) {
        qsort(running, nrun, sizeof *running, cmp_i64);
    }
    struct jobq go = {0};
    int64_t now = clock_wall_ms();
    uint64_t epoch = atomic_load(&e->epoch);
    for (size_t i = 0; i < n; i++) {
        struct job *j = record_clear(&recs[i]);
        if (j == NULL) {
            continue;
        }
        bool written =
            running != NULL && bsearch(&j->call_id, running, nrun, sizeof *running, cmp_i64);
        if (written && j->epoch == epoch) {
            j->stage_started_wall = now;
            jobq_push(&go, j);
        } else {
            log_debug("call %s: not continued (cancelled or claim lost)", j->call_id_str);
            engine_in_hand(e, j->stage, -1);
            job_free(j);
        }
    }
    free(running);
    engine_submit_all(e, &go);
}

/* Frees the records' contents; their parked jobs are let go (their calls wait in the database
 * as the last written record left them, or are taken back with the claims at stop). */
static void drop_records(struct engine *e, struct record *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct job *j = record_clear(&recs[i]);
        if (j != NULL) {
            engine_in_hand(e, j->stage, -1);
            job_free(j);
        }
    }
}

/* True for refusals that may pass if the same statement is sent again. */
static bool transient_sqlstate(const char *s)
{
    return strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0 || strcmp(s, "57014") == 0 ||
           strcmp(s, "55P03") == 0;
}

/* One statement for n records (sorted by call). Returns 0 (written, continuations started,
 * records freed) or a negative status with nothing written and the records untouched. */
static int write_once(struct engine *e, PGconn *c, struct record *recs, size_t n,
                      struct cofi_err *err)
{
    struct flush_text t;
    if (flush_text_build(e->cfg, recs, n, &t) != 0) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory building a flush");
    }
    struct work_written *w = NULL;
    size_t nw = 0;
    int rc = work_flush(c, e->instance, t.calls, t.ids, t.stages, &w, &nw, err);
    flush_text_free(&t);
    if (rc != 0 && err->code == COFI_E_NOMEM && w == NULL) {
        /* The statement committed but its answer could not be kept: nothing continues. */
        drop_records(e, recs, n);
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    if (nw < n) {
        log_debug("flush: %zu records, %zu calls written", n, nw);
    }
    continue_jobs(e, w, nw, recs, n);
    free(w);
    return 0;
}

/* The number of distinct calls among n records sorted by call. */
static size_t count_calls(const struct record *recs, size_t n)
{
    size_t calls = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 == n || recs[i + 1].call_id != recs[i].call_id) {
            calls++;
        }
    }
    return calls;
}

/* The records of one call whose records can't be written: it fails at the stage it was at,
 * with the database's reason as last_error and no result. If even that is refused, its claim
 * is given back (it will be tried again from its last written stage). */
static int fail_unwritable(struct engine *e, PGconn *c, struct record *recs, size_t n,
                           const struct cofi_err *why, struct cofi_err *err)
{
    const struct record *last = &recs[n - 1];
    int stage = last->has_row ? last->row_stage : last->stage;
    /* The database's words, made valid UTF-8 and cut on a character boundary (they may quote
     * the text at fault). */
    char words[200];
    utf8_sanitize(words, sizeof words, why->msg, strlen(why->msg));
    char msg[320];
    utf8_snprintf(msg, sizeof msg,
                  "could not record this call's outcome at %s: the database refused it "
                  "(%s)",
                  stage_name(stage), words);
    log_error("call %lld: %s", (long long)last->call_id, msg);
    struct record f;
    memset(&f, 0, sizeof f);
    f.call_id = last->call_id;
    f.token = last->token;
    f.stage = stage;
    f.status = CALL_FAILED;
    f.attempts = last->has_row ? last->row_attempts : last->attempts;
    f.last_error = msg;
    f.node = last->node;
    f.file_name = last->file_name;
    f.started_ms = -1;
    f.has_row = true;
    f.row_stage = stage;
    f.row_failed = true;
    f.row_attempts = f.attempts;
    f.row_error = msg;
    f.row_started_ms = last->has_row ? last->row_started_ms : last->started_ms;
    f.row_finished_ms = clock_wall_ms();
    if (f.row_started_ms < 0) {
        f.row_started_ms = f.row_finished_ms;
    }
    struct flush_text t;
    int rc = flush_text_build(e->cfg, &f, 1, &t);
    if (rc != 0) {
        rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    } else {
        struct work_written *w = NULL;
        size_t nw = 0;
        rc = work_flush(c, e->instance, t.calls, t.ids, t.stages, &w, &nw, err);
        free(w);
        flush_text_free(&t);
    }
    if (rc != 0 && err->code != COFI_E_UNAVAILABLE) {
        char *claims = flush_text_claims(recs, n);
        struct cofi_err e2;
        if (claims == NULL || work_release(c, e->instance, claims, &e2) != 0) {
            log_error("call %lld: could not be failed nor given back; it stays claimed until "
                      "this instance stops",
                      (long long)last->call_id);
        }
        free(claims);
        rc = 0;
    }
    if (rc == 0) {
        drop_records(e, recs, n);
    }
    return rc;
}

/* Writes n records sorted by call: on a refusal that is not a lost connection, tries a few
 * times if it may pass, then splits them in two (on a call boundary) and writes each half the
 * same way, down to the one call at fault, which fails alone. Returns 0 (all handled, records
 * freed) or COFI_E_UNAVAILABLE with the records not yet written left untouched (*done gets how
 * many leading records were handled). */
static int write_records(struct engine *e, PGconn *c, struct record *recs, size_t n, size_t *done,
                         struct cofi_err *err)
{
    *done = 0;
    int rc = 0;
    for (int tries = 0; tries < FLUSH_TRANSIENT_TRIES; tries++) {
        cofi_err_clear(err);
        rc = write_once(e, c, recs, n, err);
        if (rc == 0) {
            *done = n;
            return 0;
        }
        if (err->code == COFI_E_UNAVAILABLE || !transient_sqlstate(err->sqlstate)) {
            break;
        }
        clock_sleep_ms(20 << tries);
    }
    if (err->code == COFI_E_UNAVAILABLE) {
        return rc;
    }
    if (count_calls(recs, n) <= 1) {
        struct cofi_err why = *err;
        rc = fail_unwritable(e, c, recs, n, &why, err);
        if (rc == 0) {
            *done = n;
        }
        return rc;
    }
    log_warn("flush of %zu records refused (%s: %s); splitting it to find the record at fault", n,
             err->sqlstate, err->msg);
    /* Split on a call boundary near the middle. */
    size_t mid = n / 2;
    while (mid < n && mid > 0 && recs[mid].call_id == recs[mid - 1].call_id) {
        mid++;
    }
    if (mid == n) {
        mid = n / 2;
        while (mid > 0 && recs[mid].call_id == recs[mid - 1].call_id) {
            mid--;
        }
    }
    size_t d1 = 0;
    rc = write_records(e, c, recs, mid, &d1, err);
    *done = d1;
    if (rc != 0) {
        return rc;
    }
    size_t d2 = 0;
    rc = write_records(e, c, recs + mid, n - mid, &d2, err);
    *done = mid + d2;
    return rc;
}

/* (Re)connects the flusher's connection when needed. Returns it, or NULL. */
static PGconn *flusher_conn(struct engine *e, PGconn *c, struct cofi_err *err)
{
    if (db_conn_ok(c)) {
        return c;
    }
    PQfinish(c);
    c = db_connect(e->cfg->database_url, err);
    if (c != NULL && work_flush_session(c, err) != 0) {
        log_warn("flush: %s; every flush is planned anew", err->msg);
        cofi_err_clear(err);
    }
    return c;
}

/* Tells the dispatcher that records were written (progress may have moved). */
static void flushed(struct engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->flushed = true;
    e->wake_claim = true;
    if (e->dispatcher_waiting) {
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
}

void *engine_flusher_main(void *arg)
{
    struct engine *e = arg;
    thread_set_name("cofi-flusher");
    PGconn *c = NULL;
    struct flush_stats stats = {.since_us = clock_mono_us()};
    struct record *batch = NULL;
    size_t nbatch = 0;
    bool stopping = false;
    while (record_queue_take(&e->rq, FLUSH_LINGER_BELOW, FLUSH_LINGER_MS, &batch, &nbatch,
                             &stopping)) {
        size_t off = 0;
        int64_t backoff = 50;
        while (off < nbatch) {
            struct cofi_err err;
            cofi_err_clear(&err);
            c = flusher_conn(e, c, &err);
            int rc = COFI_E_UNAVAILABLE;
            size_t done = 0;
            int64_t t0 = clock_mono_us();
            if (c != NULL) {
                rc = write_records(e, c, batch + off, nbatch - off, &done, &err);
            }
            int64_t took = clock_mono_us() - t0;
            log_flush_stats(&stats, done, took);
            if (rc == 0) {
                metrics_observe_flush(e->metrics, took);
            }
            off += done;
            if (rc == 0) {
                break;
            }
            log_warn("flush: %s; retrying in %lld ms", err.msg, (long long)backoff);
            if (stopping && backoff >= 2000) {
                log_error("database still unreachable at shutdown: %zu records not written (their "
                          "calls will be taken up again)",
                          nbatch - off);
                drop_records(e, batch + off, nbatch - off);
                break;
            }
            clock_sleep_ms(backoff);
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
        }
        free(batch);
        batch = NULL;
        nbatch = 0;
        flushed(e);
    }
    PQfinish(c);
    return NULL;
}
