/* What every request handler gets: the immutable configuration and the shared services. */
#ifndef COFI_APP_H
#define COFI_APP_H

#include "db/db.h"
#include "pipeline/engine.h"
#include "common/config.h"

struct cofi_app {
    const struct cofi_config *cfg; /* immutable after start-up */
    struct db_pool *db;            /* thread-safe pool for request handlers */
    struct engine *engine;         /* may be NULL (handlers must cope) */
    const char *instance_id;
};

#endif
