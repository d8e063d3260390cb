/* The cluster's adaptive NLP limit in PostgreSQL (migration 010): one row, read every lease
 * beat, changed by single atomic UPDATEs rate-limited on the database's clock. */
#ifndef COFI_LIMITER_DB_H
#define COFI_LIMITER_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"

/* History entries kept in the row (newest first). */
#define LIMITER_HISTORY_MAX 20

/* At most one decrease of the limit per this many ms (the whole cluster), and one increase
 * per LIMITER_INCREASE_MS: two instances that see the same 429 storm decrease it once. */
#define LIMITER_DECREASE_MS 1000
#define LIMITER_INCREASE_MS 500
#define LIMITER_WINDOW_MS   1000 /* a window, as probes count them */

struct limiter_change {
    int64_t at_ms; /* Unix ms, the database's clock */
    int limit;
    char reason[48];
};

struct limiter_row {
    int limit;
    int max;                /* max_lim as last written */
    int ceiling;            /* the limit at the last decrease, 0 = none */
    int probes_refused;     /* probes at the ceiling refused in a row */
    int64_t pause_left_ms;  /* > 0: no NLP request may start for this long (database's clock) */
    int64_t pause_until_ms; /* Unix ms of pause_until, 0 when none */
    struct limiter_change history[LIMITER_HISTORY_MAX];
    int nhistory;
};

/* Reads the row, creating it with limit = max when it is missing. Returns 0 or a negative
 * status with err filled. */
int limiter_db_read(PGconn *c, int max, struct limiter_row *out, struct cofi_err *err);

/* One change of the limit. */
struct limiter_step {
    int from;           /* the limit it was read as */
    int to;             /* the new limit */
    int ceiling;        /* the new ceiling */
    int probes_refused; /* the new count */
    int min_age_ms;     /* an increase lands only when the last change is at least this old */
    bool refine;        /* a decrease that refines the last one (the same refusal, measured):
                           not held back by LIMITER_DECREASE_MS */
    const char *reason; /* for the history */
};

/* Moves the limit as s says, in one UPDATE that takes effect only while the limit is still
 * s->from and the last change of the same kind is old enough: a decrease (to < from) the
 * last decrease LIMITER_DECREASE_MS, an increase the last change s->min_age_ms, and the last
 * decrease and the end of the last pause a window (LIMITER_WINDOW_MS): one instance's clean
 * window is no reason to raise a limit the API refused to another a moment ago. *applied says
 * whether it did; reason and instance go into the history (the oldest entries beyond
 * LIMITER_HISTORY_MAX dropped). Returns 0 or a negative status. */
int limiter_db_change(PGconn *c, const char *instance, int max, const struct limiter_step *s,
                      bool *applied, struct cofi_err *err);

/* An instance that starts alone (no other instance's heartbeat within lease_ms) finds what
 * the cluster learned before stale: the limit goes back to max, the ceiling and the pause
 * are forgotten. *reset says whether it did. Returns 0 or a negative status. */
int limiter_db_restart(PGconn *c, const char *instance, int max, int lease_ms, bool *reset,
                       struct cofi_err *err);

/* The reports of one refusal (migration 011) arrive within this many ms of the first. */
#define LIMITER_EST_WINDOW_MS 500

/* The sum of the reports of a refusal so far. */
struct limiter_est {
    int sum;              /* requests the API held, over the instances that reported */
    int n;                /* instances that reported */
    int live;             /* instances whose heartbeat is younger than lease_ms */
    int limit;            /* the cluster's limit now */
    int probes_refused;   /* as in the row */
    int64_t probe_ago_ms; /* since the last increase in the history, when that was a probe
                             (ms); -1: it was not, or there is none */
};

/* Adds this instance's report of the latest refusal (accepted: its requests the API held at
 * that moment) to the reports of the same refusal, or starts them over when the last began
 * more than LIMITER_EST_WINDOW_MS ago; *out is the sum with this report. Returns 0 or a
 * negative status. */
int limiter_db_report(PGconn *c, int accepted, int lease_ms, struct limiter_est *out,
                      struct cofi_err *err);

/* The channel on which a pause is announced: payload "<ms> <instance>". */
#define LIMITER_PAUSE_CHANNEL "cofi_nlp_pause"

/* Makes pause_until at least now + ms (database's clock), notes it in the history and
 * announces it on LIMITER_PAUSE_CHANNEL (delivered at commit). */
int limiter_db_pause(PGconn *c, const char *instance, int64_t ms, struct cofi_err *err);

/* A pause announced by an instance. */
struct limiter_pause_note {
    int64_t ms;         /* how long from when it was written */
    char instance[160]; /* who wrote it */
};

/* Subscribes c (a connection of its own) to the announcements. Returns 0 or a negative
 * status. */
int limiter_db_listen(PGconn *c, struct cofi_err *err);

/* Waits up to timeout_ms for the next announcement on c; *got says whether one came.
 * Returns 0, or a negative status when the connection failed. */
int limiter_db_wait_pause(PGconn *c, int timeout_ms, struct limiter_pause_note *out, bool *got,
                          struct cofi_err *err);

#endif
