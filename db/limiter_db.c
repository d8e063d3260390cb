/* The cluster's adaptive NLP limit in PostgreSQL (see limiter_db.h). */
#include "db/limiter_db.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"

/* The new history: an entry in front of the old one, cut to LIMITER_HISTORY_MAX. $A is the
 * limit, $R the reason, $I the instance. */
#define HISTORY_PUSH(A, R, I)                                                                      \
    "jsonb_path_query_array(jsonb_build_array(jsonb_build_object("                                 \
    "'at', (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 'limit', " A ", 'reason', " R   \
    "::text, 'instance', " I "::text)) || history, '$[0 to 19]')"

static void parse_history(const char *text, struct limiter_row *out)
{
    json_error_t jerr;
    json_t *h = json_loads(text, 0, &jerr);
    size_t i;
    json_t *e;
    out->nhistory = 0;
    json_array_foreach(h, i, e)
    {
        if (out->nhistory == LIMITER_HISTORY_MAX) {
            break;
        }
        struct limiter_change *ch = &out->history[out->nhistory++];
        ch->at_ms = (int64_t)json_integer_value(json_object_get(e, "at"));
        ch->limit = (int)json_integer_value(json_object_get(e, "limit"));
        const char *why = json_string_value(json_object_get(e, "reason"));
        snprintf(ch->reason, sizeof ch->reason, "%s", why ? why : "");
    }
    json_decref(h);
}

/* 0 when r holds the row of nlp_limiter; else r is cleared and err filled. */
static int one_row(PGresult *r, struct cofi_err *err)
{
    if (r == NULL) {
        return err->code;
    }
    if (PQntuples(r) != 1) {
        PQclear(r);
        return cofi_err_set(err, COFI_E_INTERNAL, "nlp_limiter has no row");
    }
    return 0;
}

int limiter_db_read(PGconn *c, int max, struct limiter_row *out, struct cofi_err *err)
{
    char m[16];
    snprintf(m, sizeof m, "%d", max);
    const char *p[] = {m};
    int rc = db_command(c,
                        "INSERT INTO nlp_limiter (id, lim, max_lim) VALUES (1, $1::int, $1::int) "
                        "ON CONFLICT (id) DO NOTHING",
                        1, p, err);
    if (rc != 0) {
        return rc;
    }
    PGresult *r = db_exec(
        c,
        "SELECT lim, max_lim, ceiling, probes_refused,"
        " coalesce(greatest(0, ceil(extract(epoch FROM pause_until - clock_timestamp()) * 1000)),"
        " 0)::bigint,"
        " coalesce((extract(epoch FROM pause_until) * 1000)::bigint, 0), history::text "
        "FROM nlp_limiter WHERE id = 1",
        0, NULL, err);
    rc = one_row(r, err);
    if (rc != 0) {
        return rc;
    }
    out->limit = atoi(PQgetvalue(r, 0, 0));
    out->max = atoi(PQgetvalue(r, 0, 1));
    out->ceiling = atoi(PQgetvalue(r, 0, 2));
    out->probes_refused = atoi(PQgetvalue(r, 0, 3));
    out->pause_left_ms = strtoll(PQgetvalue(r, 0, 4), NULL, 10);
    out->pause_until_ms = strtoll(PQgetvalue(r, 0, 5), NULL, 10);
    parse_history(PQgetvalue(r, 0, 6), out);
    PQclear(r);
    return 0;
}

int limiter_db_change(PGconn *c, const char *instance, int max, const struct limiter_step *s,
                      bool *applied, struct cofi_err *err)
{
    char f[16];
    char t[16];
    char cl[16];
    char m[16];
    char pr[16];
    char age[16];
    snprintf(f, sizeof f, "%d", s->from);
    snprintf(t, sizeof t, "%d", s->to);
    snprintf(cl, sizeof cl, "%d", s->ceiling);
    snprintf(m, sizeof m, "%d", max);
    snprintf(pr, sizeof pr, "%d", s->probes_refused);
    snprintf(age, sizeof age, "%d",
             s->to < s->from ? (s->refine ? 0 : LIMITER_DECREASE_MS) : s->min_age_ms);
    char win[16];
    snprintf(win, sizeof win, "%d", LIMITER_WINDOW_MS);
    const char *p[] = {f, t, cl, s->reason, instance, m, pr, age, win};
    /* One statement: the compare (lim = $1) and the rate limit are checked and the row
     * changed atomically, whatever other instances do at the same moment. */
    PGresult *r = db_exec(
        c,
        "UPDATE nlp_limiter SET lim = $2::int, ceiling = $3::int, max_lim = $6::int,"
        " probes_refused = $7::int, changed_at = clock_timestamp(),"
        " decreased_at = CASE WHEN $2::int < $1::int THEN clock_timestamp() ELSE decreased_at END,"
        " history = " HISTORY_PUSH(
            "$2::int", "$4",
            "$5") " "
                  "WHERE id = 1 AND lim = $1::int AND CASE WHEN $2::int < $1::int"
                  " THEN decreased_at IS NULL"
                  " OR decreased_at < clock_timestamp() - $8::int * interval '1 millisecond'"
                  " ELSE changed_at < clock_timestamp() - $8::int * interval '1 millisecond'"
                  " AND (decreased_at IS NULL OR decreased_at < clock_timestamp() - $9::int *"
                  " interval '1 millisecond') AND (pause_until IS NULL OR pause_until <"
                  " clock_timestamp() - $9::int * interval '1 millisecond') END "
                  "RETURNING lim",
        9, p, err);
    if (r == NULL) {
        return err->code;
    }
    *applied = PQntuples(r) == 1;
    PQclear(r);
    return 0;
}

int limiter_db_restart(PGconn *c, const char *instance, int max, int lease_ms, bool *reset,
                       struct cofi_err *err)
{
    char m[16];
    char ms[16];
    snprintf(m, sizeof m, "%d", max);
    snprintf(ms, sizeof ms, "%d", lease_ms);
    const char *p[] = {m, "restart", instance, ms};
    PGresult *r = db_exec(
        c,
        "UPDATE nlp_limiter SET lim = $1::int, max_lim = $1::int, ceiling = 0, probes_refused = 0,"
        " pause_until = NULL, changed_at = clock_timestamp(), decreased_at = NULL,"
        " history = " HISTORY_PUSH(
            "$1::int", "$2",
            "$3") " "
                  "WHERE id = 1 AND NOT EXISTS (SELECT 1 FROM instances WHERE id <> $3"
                  " AND heartbeat_at > clock_timestamp() - make_interval(secs => $4::int / "
                  "1000.0)) "
                  "RETURNING lim",
        4, p, err);
    if (r == NULL) {
        return err->code;
    }
    *reset = PQntuples(r) == 1;
    PQclear(r);
    return 0;
}

int limiter_db_pause(PGconn *c, const char *instance, int64_t ms, struct cofi_err *err)
{
    char v[24];
    char why[64];
    snprintf(v, sizeof v, "%" PRId64, ms);
    snprintf(why, sizeof why, "retry_after %" PRId64 " ms", ms);
    const char *p[] = {v, why, instance};
    /* The row and the word to every listening instance in one statement: the notification
     * is delivered when it commits, so no instance hears of a pause the row does not hold. */
    return db_command(
        c,
        "WITH u AS (UPDATE nlp_limiter SET pause_until = greatest(pause_until,"
        " clock_timestamp() + $1::bigint * interval '1 millisecond'),"
        " history = " HISTORY_PUSH("lim", "$2", "$3") " WHERE id = 1 RETURNING 1)"
                                                      " SELECT pg_notify('" LIMITER_PAUSE_CHANNEL
                                                      "', $1 || ' ' || $3) FROM u",
        3, p, err);
}

int limiter_db_report(PGconn *c, int accepted, int lease_ms, struct limiter_est *out,
                      struct cofi_err *err)
{
    char a[16];
    char w[16];
    char ls[16];
    snprintf(a, sizeof a, "%d", accepted);
    snprintf(w, sizeof w, "%d", LIMITER_EST_WINDOW_MS);
    snprintf(ls, sizeof ls, "%d", lease_ms);
    const char *p[] = {a, w, ls};
    /* The SET expressions read the row as it is once locked: two instances reporting at the
     * same moment add up, neither overwrites the other. now() (this statement's transaction)
     * rather than clock_timestamp(): the three CASEs must see the same time, or one report
     * could start a new sum while counting itself into the old one. */
    PGresult *r =
        db_exec(c,
                "UPDATE nlp_limiter SET"
                " est_sum = CASE WHEN est_at > now() - $2::int * interval '1 millisecond'"
                " THEN est_sum + $1::int ELSE $1::int END,"
                " est_n = CASE WHEN est_at > now() - $2::int * interval '1 millisecond'"
                " THEN est_n + 1 ELSE 1 END,"
                " est_at = CASE WHEN est_at > now() - $2::int * interval '1 millisecond'"
                " THEN est_at ELSE now() END "
                "WHERE id = 1 RETURNING est_sum, est_n, (SELECT count(*) FROM instances WHERE"
                " heartbeat_at > clock_timestamp() - $3::int * interval '1 millisecond'), lim,"
                " probes_refused, coalesce((SELECT CASE WHEN e->>'reason' = 'probe' THEN"
                " (extract(epoch FROM clock_timestamp()) * 1000)::bigint - (e->>'at')::bigint END"
                " FROM jsonb_array_elements(history) WITH ORDINALITY AS h(e, i)"
                " WHERE e->>'reason' IN ('increase', 'probe') ORDER BY i LIMIT 1), -1)",
                3, p, err);
    int rc = one_row(r, err);
    if (rc != 0) {
        return rc;
    }
    out->sum = atoi(PQgetvalue(r, 0, 0));
    out->n = atoi(PQgetvalue(r, 0, 1));
    out->live = atoi(PQgetvalue(r, 0, 2));
    out->limit = atoi(PQgetvalue(r, 0, 3));
    out->probes_refused = atoi(PQgetvalue(r, 0, 4));
    out->probe_ago_ms = strtoll(PQgetvalue(r, 0, 5), NULL, 10);
    PQclear(r);
    return 0;
}

int limiter_db_listen(PGconn *c, struct cofi_err *err)
{
    return db_command(c, "LISTEN " LIMITER_PAUSE_CHANNEL, 0, NULL, err);
}

int limiter_db_wait_pause(PGconn *c, int timeout_ms, struct limiter_pause_note *out, bool *got,
                          struct cofi_err *err)
{
    char payload[256];
    *got = false;
    int rc = db_wait_notify(c, timeout_ms, payload, sizeof payload, got, err);
    if (rc != 0 || !*got) {
        return rc;
    }
    long long ms = 0;
    int used = 0;
    if (sscanf(payload, "%lld %n", &ms, &used) != 1 || ms < 0) {
        *got = false; /* not ours: someone else NOTIFYing on the channel */
        return 0;
    }
    out->ms = (int64_t)ms;
    snprintf(out->instance, sizeof out->instance, "%s", payload + used);
    return 0;
}
