/* The db tests' fixture: a scratch database with the migrations applied, and small helpers. */
#include "tests/db/support.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "db/migrate.h"

static void conninfo(char *out, size_t len, const char *db)
{
    const char *user = getenv("COFI_TEST_PGUSER");
    snprintf(out, len, "host=%s port=%s user=%s dbname=%s", getenv("COFI_TEST_PGHOST"),
             getenv("COFI_TEST_PGPORT"), user != NULL ? user : "postgres", db);
}

/* Runs "<verb> <the scratch database><rest>" on the postgres database. */
static void admin_command(const struct fixture *f, const char *verb, const char *rest)
{
    char sql[256];
    snprintf(sql, sizeof sql, "%s %s%s", verb, f->name, rest);
    struct cofi_err err;
    PGconn *a = db_connect(f->admin, &err);
    assert_non_null(a);
    int rc = db_command(a, sql, 0, NULL, &err);
    PQfinish(a);
    if (rc != 0) {
        fail_msg("%s: %s", sql, err.msg);
    }
}

int db_test_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    conninfo(f->admin, sizeof f->admin, "postgres");
    snprintf(f->name, sizeof f->name, "cofi_t_db_%ld_%d", (long)getpid(), rand() % 100000);
    admin_command(f, "CREATE DATABASE", "");
    char ci[512];
    conninfo(ci, sizeof ci, f->name);
    struct cofi_err err;
    f->c = db_connect(ci, &err);
    assert_non_null(f->c);
    if (db_migrate(f->c, &err) != 0) {
        fail_msg("migrate: %s", err.msg);
    }
    *state = f;
    return 0;
}

int db_test_teardown(void **state)
{
    struct fixture *f = *state;
    PQfinish(f->c);
    admin_command(f, "DROP DATABASE IF EXISTS", " WITH (FORCE)");
    free(f);
    return 0;
}

/* The first row's first column of sql (no parameters) as a number. */
long db_test_long(PGconn *c, const char *sql)
{
    struct cofi_err err;
    PGresult *r = db_exec(c, sql, 0, NULL, &err);
    if (r == NULL) {
        fail_msg("%s: %s", sql, err.msg);
    }
    assert_int_equal(PQntuples(r), 1);
    long v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

void db_test_exec(PGconn *c, const char *sql)
{
    struct cofi_err err;
    if (db_command(c, sql, 0, NULL, &err) != 0) {
        fail_msg("%s: %s", sql, err.msg);
    }
}

PGconn *db_test_connect(const struct fixture *f)
{
    char ci[512];
    conninfo(ci, sizeof ci, f->name);
    struct cofi_err err;
    PGconn *c = db_connect(ci, &err);
    assert_non_null(c);
    return c;
}
