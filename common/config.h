/* The configuration file (README.md): parsed once at start-up into one immutable struct. */
#ifndef COFI_CONFIG_H
#define COFI_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"

/* The longest node id: ids are 1 to NODE_ID_MAX characters of A-Z a-z 0-9 . _ : - */
#define NODE_ID_MAX 64

struct cofi_node_cfg {
    char *id;  /* unique; see NODE_ID_MAX */
    char *url; /* http(s)://host[:port][/path], without a trailing slash */
    int capacity;
};

struct cofi_token_cfg {
    char *env;   /* the variable the token was read from (for logs) */
    char *token; /* the secret itself: never log it */
    bool write;  /* scope "write" (also allows reads) or "read" */
};

struct cofi_worker_cfg {
    int timeout_ms;
    int max_attempts;
    int backoff_base_ms; /* first retry waits about this long (jittered), doubling */
    int backoff_max_ms;  /* cap on one wait */
    /* Cap on the wait a worker's Retry-After asks for (1000..86400000, default 60000): a
     * longer Retry-After is cut to this (Retry-After counts whole seconds, hence >= 1000). */
    int retry_after_max_ms;
};

/* The HTTP server's defences: the optional "http", "limits" and "tls" objects and "log_file". */
struct cofi_http_cfg {
    int max_connections;            /* 1024: connections open at once, in all */
    int max_connections_per_client; /* 64: connections open at once from one client address */
    int idle_timeout_ms;            /* 30000: a connection with no traffic this long is closed */
    int request_timeout_ms;         /* 30000: a request's line, headers and body must all
                                       arrive within this long of its first byte (or of the
                                       end of the previous request on the connection) */
    int handler_threads;            /* 8: threads running request handlers */
    int handler_queue;              /* 256: requests waiting for one (503 beyond) */
    int db_wait_ms;                 /* limits.db_wait_ms: 5000, wait for a pooled connection
                                       (503 beyond) */
    int statement_timeout_ms;       /* limits.statement_timeout_ms: 30000, an API statement's
                                       longest run (503 beyond; 0: none) */
    char *log_file;      /* log_file: the log goes there (reopened on SIGHUP) instead of stderr */
    char *tls_cert_file; /* tls.cert_file: PEM; with tls_key_file turns HTTPS on */
    char *tls_key_file;  /* tls.key_file: PEM */
    size_t metadata_max_bytes; /* limits.metadata_max_bytes: 65536, a batch's metadata as
                                  compact JSON */
    size_t list_max_bytes;     /* limits.list_max_bytes: 1048576, a list page's items */
};

struct cofi_config {
    char *listen_host;
    int listen_port;
    char *database_url; /* a secret may be inside: never log it whole */
    char *input_root;   /* canonical (realpath) */
    size_t max_body_bytes;

    struct cofi_node_cfg *nodes;
    size_t node_count;
    struct cofi_worker_cfg mediator;
    int health_interval_ms; /* mediator.health_interval_ms: GET /health period */

    char *llm_url;
    int llm_concurrency;
    bool llm_adaptive; /* llm.adaptive (true): the cluster's NLP limit follows the API (AIMD) */
    long long llm_tokens_per_minute; /* llm.tokens_per_minute, 0 = none: the whole cluster's */
    int llm_requests_per_minute;     /* llm.requests_per_minute, 0 = none: the whole cluster's */
    bool llm_openai;                 /* llm.protocol "openai": POST {url}/v1/chat/completions */
    char *llm_model;                 /* llm.model (required with "openai") */
    char *llm_prompts[2];      /* llm.prompts.llm1, .llm2: templates ({transcript}, {language},
                                  {llm1}); defaults when absent */
    int llm_completion_tokens; /* llm.completion_tokens (256): a request's reservation is
                                  its transcript's bytes / 4 plus this */
    struct cofi_worker_cfg llm;
    char *nlp_api_key; /* from COFI_NLP_API_KEY or NULL */

    struct cofi_token_cfg *tokens; /* auth.tokens; token_count == 0 means the API is open */
    size_t token_count;

    /* cofi's own keys (optional in the file) */
    char *log_level;       /* "info" */
    bool log_json;         /* log_format "json": one JSON object per line (default "text") */
    int http_threads;      /* 4 */
    int db_pool_size;      /* 8 */
    int shutdown_grace_ms; /* 30000 */
    int lease_ms;          /* 15000: an instance whose heartbeat is older loses its claims */
    int status_cache_ms;   /* 100: GET /batches/{id} and /stages/{name}/status answers are
                              served again for this long (0: never; writes through this
                              instance's API always show at once) */

    struct cofi_http_cfg http; /* "http", "tls" and "limits" */

    /* webhook_secret_env: the environment variable holding the key that signs webhook
     * deliveries (README "Webhooks"); both NULL when not configured, and then a batch's
     * callback_url is refused. The secret is never logged. */
    char *webhook_secret_env;
    char *webhook_secret;
};

/* Fills cfg with the defaults of every optional key. Can't fail; cfg owns nothing yet. */
void config_defaults(struct cofi_config *cfg);

/* Reads the JSON file at path (path may be NULL: defaults only), applies the environment
 * overrides COFI_DATABASE_URL, COFI_LISTEN, COFI_NLP_API_KEY and validates everything.
 * Returns 0, or a negative cofi_status with err->msg naming the offending key or value;
 * on error cfg is left empty (nothing to free). */
int config_load(const char *path, struct cofi_config *cfg, struct cofi_err *err);

/* Parses a JSON text already in memory (for tests); otherwise as config_load. */
int config_parse(const char *text, struct cofi_config *cfg, struct cofi_err *err);

/* Frees everything cfg owns. Accepts NULL and an empty config. */
void config_free(struct cofi_config *cfg);

#endif
