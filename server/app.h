/* What every request handler gets: the immutable configuration and the shared services. */
#ifndef COFI_APP_H
#define COFI_APP_H

#include "db/db.h"
#include "pipeline/engine.h"
#include "common/config.h"

#define COFI_VERSION "0.1.0"

struct prom; /* common/prom.h */

struct cofi_app {
    const struct cofi_config *cfg; /* immutable after start-up */
    struct db_pool *db;            /* thread-safe pool for request handlers */
    struct engine *engine;         /* may be NULL (handlers must cope) */
    const char *instance_id;
    double started_at; /* the process's start, in seconds since the epoch (0: unknown) */
    /* Writes the HTTP server's own figures (requests by route and status) into p; set by
     * http_start (server/http_metrics.h), NULL before. Thread-safe. */
    void (*http_metrics)(const void *ctx, struct prom *p);
    const void *http_metrics_ctx;
};

#endif
