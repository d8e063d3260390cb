/* Applies the embedded numbered migrations at start-up. */
#include "db/migrate.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"
#include "db/db.h"

/* An arbitrary constant: the advisory lock that serialises migrations across instances. */
static const char *const migrate_lock_key = "727274001";

int db_migrate(PGconn *c, struct cofi_err *err)
{
    const char *lock[] = {migrate_lock_key};
    int rc = db_command(c, "SELECT pg_advisory_lock($1::bigint)", 1, lock, err);
    if (rc != 0) {
        return rc;
    }
    rc = db_command(c,
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())",
                    0, NULL, err);
    for (size_t i = 0; rc == 0 && i < cofi_migrations_count; i++) {
        const struct cofi_migration *m = &cofi_migrations[i];
        char ver[16];
        snprintf(ver, sizeof ver, "%d", m->version);
        const char *p[] = {ver, m->name};
        PGresult *r =
            db_exec(c, "SELECT 1 FROM schema_migrations WHERE version = $1::int", 1, p, err);
        if (r == NULL) {
            rc = err->code;
            break;
        }
        bool applied = PQntuples(r) > 0;
        PQclear(r);
        if (applied) {
            continue;
        }
        log_info("applying migration %s", m->name);
        rc = db_command(c, "BEGIN", 0, NULL, err);
        if (rc == 0) {
            /* A script of several statements: the simple-query protocol, no parameters. */
            PGresult *s = PQexec(c, m->sql);
            if (PQresultStatus(s) != PGRES_COMMAND_OK && PQresultStatus(s) != PGRES_TUPLES_OK) {
                const char *msg = PQresultErrorMessage(s);
                rc = cofi_err_set(err, COFI_E_INTERNAL, "migration %s failed: %s", m->name,
                                  msg != NULL ? msg : "unknown error");
            }
            PQclear(s);
        }
        if (rc == 0) {
            rc = db_command(c, "INSERT INTO schema_migrations (version, name) VALUES ($1::int, $2)",
                            2, p, err);
        }
        if (rc == 0) {
            rc = db_command(c, "COMMIT", 0, NULL, err);
        } else {
            PQclear(PQexec(c, "ROLLBACK"));
        }
    }
    struct cofi_err ignore;
    db_command(c, "SELECT pg_advisory_unlock($1::bigint)", 1, lock, &ignore);
    return rc;
}

int db_check_migrated(PGconn *c, struct cofi_err *err)
{
    PGresult *r =
        db_exec(c, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL, err);
    if (r == NULL) {
        return cofi_err_set(err, COFI_E_UNAVAILABLE, "%s", err->msg);
    }
    int have = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    int want = cofi_migrations_count > 0 ? cofi_migrations[cofi_migrations_count - 1].version : 0;
    if (have < want) {
        return cofi_err_set(err, COFI_E_UNAVAILABLE, "schema at version %d, %d expected", have,
                            want);
    }
    return 0;
}
