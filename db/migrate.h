/* Numbered schema migrations (db/migrations/NNN_name.sql, embedded at build time). */
#ifndef COFI_MIGRATE_H
#define COFI_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

#include "common/error.h"

struct cofi_migration {
    int version;
    const char *name;
    const char *sql;
};

/* Generated from db/migrations by cmake/embed_migrations.cmake, in version order. */
extern const struct cofi_migration cofi_migrations[];
extern const size_t cofi_migrations_count;

/* Applies every migration not yet recorded in schema_migrations, each in its own
 * transaction, under an advisory lock so concurrent instances don't race. Returns 0 or a
 * negative cofi_status; a failed migration is rolled back whole. */
int db_migrate(PGconn *conn, struct cofi_err *err);

/* 0 when every embedded migration is applied, COFI_E_UNAVAILABLE otherwise (err says why). */
int db_check_migrated(PGconn *conn, struct cofi_err *err);

#endif
