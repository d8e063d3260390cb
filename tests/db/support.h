/* The db tests' fixture (tests/db/support.c): each test gets a scratch database of its own on
 * the PostgreSQL named by COFI_TEST_PGHOST/COFI_TEST_PGPORT/COFI_TEST_PGUSER, with the
 * project's migrations applied, dropped at teardown. */
#ifndef COFI_TESTS_DB_SUPPORT_H
#define COFI_TESTS_DB_SUPPORT_H

#include "db/db.h"

struct fixture {
    char admin[512]; /* conninfo of the postgres database */
    char name[64];   /* the scratch database */
    PGconn *c;       /* a connection to it */
};

/* cmocka setup/teardown: *state becomes a struct fixture. */
int db_test_setup(void **state);
int db_test_teardown(void **state);

/* Opens another connection to f's scratch database (the caller PQfinishes it). */
PGconn *db_test_connect(const struct fixture *f);

/* The first row's first column of sql (no parameters) as a number; fails the test on error. */
long db_test_long(PGconn *c, const char *sql);

/* Runs sql (no parameters); fails the test on error. */
void db_test_exec(PGconn *c, const char *sql);

#endif
