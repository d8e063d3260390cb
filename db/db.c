/* PostgreSQL connection pool and parameterised-query helpers. */
#include "db/db.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"

struct db_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *conninfo;
    int size;
    PGconn **conns; /* size slots; NULL = not connected yet */
    bool *busy;
    int wait_ms;              /* longest wait for a free connection; 0: for ever */
    int statement_timeout_ms; /* set on every new connection; 0: none */
};

/* Keeps libpq's notices (e.g. "relation already exists, skipping") out of stderr. */
static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    log_debug("postgres: %s", message);
}

PGconn *db_connect(const char *conninfo, struct cofi_err *err)
{
    PGconn *c = PQconnectdb(conninfo);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        const char *msg = c != NULL ? PQerrorMessage(c) : "out of memory";
        char line[256];
        snprintf(line, sizeof line, "%s", msg);
        line[strcspn(line, "\n")] = '\0';
        cofi_err_set(err, COFI_E_UNAVAILABLE, "database unreachable: %s", line);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    return c;
}

int db_pool_open(struct db_pool **out, const char *conninfo, int size, struct cofi_err *err)
{
    struct db_pool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    p->conninfo = strdup(conninfo);
    p->conns = calloc((size_t)size, sizeof *p->conns);
    p->busy = calloc((size_t)size, sizeof *p->busy);
    if (p->conninfo == NULL || p->conns == NULL || p->busy == NULL) {
        free(p->conninfo);
        free(p->conns);
        free(p->busy);
        free(p);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    p->size = size;
    pthread_mutex_init(&p->mu, NULL);
    clock_cond_init(&p->cv);
    *out = p;
    return 0;
}

void db_pool_set_limits(struct db_pool *p, int wait_ms, int statement_timeout_ms)
{
    pthread_mutex_lock(&p->mu);
    p->wait_ms = wait_ms;
    p->statement_timeout_ms = statement_timeout_ms;
    pthread_mutex_unlock(&p->mu);
}

/* Applies the pool's statement timeout to a new connection. Returns 0 or -1 (c is unusable). */
static int set_statement_timeout(PGconn *c, int ms)
{
    if (ms <= 0) {
        return 0;
    }
    char sql[64];
    snprintf(sql, sizeof sql, "SET statement_timeout = %d", ms);
    PGresult *r = PQexec(c, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    PQclear(r);
    return rc;
}

void db_pool_close(struct db_pool *p)
{
    if (p == NULL) {
        return;
    }
    for (int i = 0; i < p->size; i++) {
        PQfinish(p->conns[i]);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->conns);
    free(p->busy);
    free(p->conninfo);
    free(p);
}

PGconn *db_acquire(struct db_pool *p, struct cofi_err *err)
{
    pthread_mutex_lock(&p->mu);
    int slot = -1;
    struct timespec until = clock_deadline_ms(p->wait_ms);
    int statement_timeout_ms = p->statement_timeout_ms;
    for (;;) {
        for (int i = 0; i < p->size; i++) {
            if (!p->busy[i]) {
                slot = i;
                break;
            }
        }
        if (slot >= 0) {
            break;
        }
        if (p->wait_ms <= 0) {
            pthread_cond_wait(&p->cv, &p->mu);
        } else if (pthread_cond_timedwait(&p->cv, &p->mu, &until) == ETIMEDOUT) {
            int size = p->size;
            int waited = p->wait_ms;
            pthread_mutex_unlock(&p->mu);
            cofi_err_set(err, COFI_E_BUSY, "all %d database connections stayed busy for %d ms",
                         size, waited);
            return NULL;
        }
    }
    p->busy[slot] = true;
    PGconn *c = p->conns[slot];
    p->conns[slot] = NULL;
    pthread_mutex_unlock(&p->mu);

    /* Connecting happens outside the lock. */
    if (c != NULL && PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        c = NULL;
    }
    if (c == NULL) {
        c = db_connect(p->conninfo, err);
        if (c != NULL && set_statement_timeout(c, statement_timeout_ms) != 0) {
            cofi_err_set(err, COFI_E_UNAVAILABLE, "database: can't set statement_timeout");
            PQfinish(c);
            c = NULL;
        }
    }
    if (c == NULL) {
        pthread_mutex_lock(&p->mu);
        p->busy[slot] = false;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
        return NULL;
    }
    pthread_mutex_lock(&p->mu);
    p->conns[slot] = c;
    pthread_mutex_unlock(&p->mu);
    return c;
}

void db_release(struct db_pool *p, PGconn *c)
{
    if (c == NULL) {
        return;
    }
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->size; i++) {
        if (p->conns[i] == c && p->busy[i]) {
            p->busy[i] = false;
            break;
        }
    }
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

bool db_conn_ok(PGconn *c)
{
    return c != NULL && PQstatus(c) == CONNECTION_OK;
}

int db_result_error(PGconn *c, const PGresult *r, struct cofi_err *err)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(c);
    char line[400];
    snprintf(line, sizeof line, "%s", (msg != NULL && msg[0] != '\0') ? msg : "unknown error");
    line[strcspn(line, "\n")] = '\0';
    enum cofi_status code = COFI_E_INTERNAL;
    if (PQstatus(c) != CONNECTION_OK || (state != NULL && strncmp(state, "08", 2) == 0) ||
        (state != NULL && strncmp(state, "57P", 3) == 0)) {
        code = COFI_E_UNAVAILABLE;
    } else if (state != NULL && strcmp(state, "23505") == 0) {
        code = COFI_E_CONFLICT;
    } else if (state != NULL && strcmp(state, "57014") == 0) {
        /* statement_timeout (or a cancel): the database is too slow right now. */
        code = COFI_E_BUSY;
    }
    cofi_err_set(err, code, "database: %s", line);
    if (err != NULL && state != NULL) {
        snprintf(err->sqlstate, sizeof err->sqlstate, "%s", state);
    }
    return code;
}

PGresult *db_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
                  struct cofi_err *err)
{
    PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        return r;
    }
    db_result_error(c, r, err);
    PQclear(r);
    return NULL;
}

PGresult *db_exec_copy_in(PGconn *c, const char *sql, struct cofi_err *err)
{
    PGresult *r = PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0);
    if (r != NULL && PQresultStatus(r) == PGRES_COPY_IN) {
        return r;
    }
    db_result_error(c, r, err);
    PQclear(r);
    return NULL;
}

int db_wait_notify(PGconn *c, int timeout_ms, char *payload, size_t n, bool *got,
                   struct cofi_err *err)
{
    *got = false;
    PGnotify *note = PQnotifies(c);
    if (note == NULL) {
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        if (pfd.fd < 0) {
            return cofi_err_set(err, COFI_E_UNAVAILABLE, "database: no connection");
        }
        int ready = poll(&pfd, 1, timeout_ms);
        if (ready < 0 && errno != EINTR) {
            return cofi_err_set(err, COFI_E_UNAVAILABLE, "database: poll: %s", strerror(errno));
        }
        if (ready > 0 && PQconsumeInput(c) == 0) {
            return db_result_error(c, NULL, err);
        }
        note = PQnotifies(c);
    }
    if (note != NULL) {
        snprintf(payload, n, "%s", note->extra);
        *got = true;
        PQfreemem(note);
    }
    return 0;
}

int db_command(PGconn *c, const char *sql, int nparams, const char *const *params,
               struct cofi_err *err)
{
    PGresult *r = db_exec(c, sql, nparams, params, err);
    if (r == NULL) {
        return err != NULL ? (int)err->code : COFI_E_INTERNAL;
    }
    PQclear(r);
    return 0;
}

void db_redact(const char *conninfo, char *out, size_t outlen)
{
    /* postgresql://user:secret@host/db -> postgresql://user:***@host/db; key=value form:
     * password=... -> password=*** */
    snprintf(out, outlen, "%s", conninfo);
    char *scheme = strstr(out, "://");
    if (scheme != NULL) {
        char *at = strchr(scheme + 3, '@');
        char *colon = strchr(scheme + 3, ':');
        if (at != NULL && colon != NULL && colon < at) {
            size_t tail = strlen(at);
            if ((size_t)(colon + 1 - out) + 3 + tail < outlen) {
                memmove(colon + 4, at, tail + 1);
                memcpy(colon + 1, "***", 3);
            }
        }
    }
    char *pw = strstr(out, "password=");
    if (pw != NULL) {
        char *end = pw + 9;
        while (*end != '\0' && *end != ' ' && *end != '&') {
            end++;
        }
        size_t tail = strlen(end);
        if ((size_t)(pw + 9 - out) + 3 + tail < outlen) {
            memmove(pw + 12, end, tail + 1);
            memcpy(pw + 9, "***", 3);
        }
    }
}

int db_json_page(const char *key, json_t *items, int items_rc, json_t *next, json_t **out,
                 struct cofi_err *err)
{
    json_t *page = json_object();
    int rc = (page != NULL && items != NULL && next != NULL && items_rc == 0) ? 0 : -1;
    if (rc == 0) {
        rc = json_object_set_new(page, key, items);
        items = NULL;
    }
    if (rc == 0) {
        rc = json_object_set_new(page, "next_cursor", next);
        next = NULL;
    }
    json_decref(items);
    json_decref(next);
    if (rc != 0) {
        json_decref(page);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    *out = page;
    return 0;
}
