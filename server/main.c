/* cofid: loads the configuration, migrates the database, runs the engine and the HTTP API. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "db/db.h"
#include "db/migrate.h"
#include "pipeline/engine.h"
#include "server/app.h"
#include "common/config.h"
#include "server/http.h"

static void usage(FILE *out)
{
    fputs("Usage: cofid --config FILE [--log-level LEVEL] [--check-config]\n"
          "\n"
          "cofi's control-plane service: drives batches of recorded calls through distribute,\n"
          "denoise, ivr, lid, stt (GPU mediator nodes) and llm1, llm2 (the NLP API), with all\n"
          "progress in PostgreSQL, and serves the HTTP API described at GET /openapi.json.\n"
          "\n"
          "Options:\n"
          "  --config FILE      the JSON configuration (see README.md, 'Configuration')\n"
          "  --log-level LEVEL  debug, info, warn or error (overrides the file's log_level)\n"
          "  --check-config     validate the configuration and exit (0 when valid)\n"
          "  --help             this text\n"
          "  --version          the version\n"
          "\n"
          "Environment:\n"
          "  COFI_DATABASE_URL  libpq conninfo or URI (overrides database_url)\n"
          "  COFI_LISTEN        host:port to listen on (overrides listen)\n"
          "  COFI_NLP_API_KEY   sent to the NLP API as 'Authorization: Bearer'\n"
          "  COFI_INSTANCE_ID   this instance's name in the work queue (default host:port)\n"
          "\n"
          "SIGTERM or SIGINT: stop taking work (writes and GET /readyz answer 503), let\n"
          "in-flight requests finish (up to shutdown_grace_ms), record them, release this\n"
          "instance's claims, exit 0.\n"
          "SIGHUP: read the configuration file's auth.tokens again (and the environment\n"
          "variables they name) and reopen log_file; cofid goes on running.\n",
          out);
}

/* Fails when another process already listens on the configured address, so that two
 * instances never share an instance id (which is host:port). */
static int probe_listen(const struct cofi_config *cfg)
{
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->listen_port);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    if (getaddrinfo(cfg->listen_host, port, &hints, &res) != 0 || res == NULL) {
        log_error("cannot resolve listen address %s:%d", cfg->listen_host, cfg->listen_port);
        return -1;
    }
    int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    int one = 1;
    int rc = -1;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, res->ai_addr, res->ai_addrlen) == 0) {
            rc = 0;
        } else {
            char msg[128];
            log_error("cannot listen on %s:%d: %s", cfg->listen_host, cfg->listen_port,
                      strerror_r(errno, msg, sizeof msg) == 0 ? msg : "error");
        }
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

/* SIGHUP: the API takes the tokens of the configuration file as it is now. A file that is no
 * longer valid changes nothing. */
static void reload_tokens(const char *config_path, struct http_server *http)
{
    struct cofi_config fresh;
    struct cofi_err err;
    cofi_err_clear(&err);
    if (config_load(config_path, &fresh, &err) != 0) {
        log_error("SIGHUP: %s not reloaded, the tokens in use are kept: %s", config_path, err.msg);
        return;
    }
    if (http_replace_tokens(http, fresh.tokens, fresh.token_count) != 0) {
        log_error("SIGHUP: out of memory, the tokens in use are kept");
    } else if (fresh.token_count == 0) {
        log_warn("SIGHUP: tokens reloaded from %s: none, the API is open", config_path);
    } else {
        log_info("SIGHUP: tokens reloaded from %s: %zu token(s)", config_path, fresh.token_count);
    }
    config_free(&fresh);
}

/* SIGHUP: the log file (log_file) is opened again, for a rotation. */
static void reopen_log(const char *path)
{
    if (path == NULL) {
        return;
    }
    int rc = log_reopen(path);
    if (rc != 0) {
        char msg[128];
        log_error("SIGHUP: log %s not reopened: %s", path,
                  strerror_r(-rc, msg, sizeof msg) == 0 ? msg : "error");
    } else {
        log_info("SIGHUP: log reopened at %s", path);
    }
}

/* Connects and applies migrations, retrying with backoff until done or a signal arrives. */
static int migrate_until_done(const struct cofi_config *cfg, sigset_t *sigs)
{
    int64_t backoff = 200;
    for (;;) {
        struct cofi_err err;
        cofi_err_clear(&err);
        PGconn *c = db_connect(cfg->database_url, &err);
        if (c != NULL) {
            int rc = db_migrate(c, &err);
            PQfinish(c);
            if (rc == 0) {
                return 0;
            }
            if (err.code != COFI_E_UNAVAILABLE) {
                log_error("%s", err.msg);
                return -1;
            }
        }
        log_warn("%s; retrying in %lld ms", err.msg, (long long)backoff);
        struct timespec ts = {.tv_sec = (time_t)(backoff / 1000),
                              .tv_nsec = (long)(backoff % 1000) * 1000000L};
        int sig = sigtimedwait(sigs, NULL, &ts);
        if (sig > 0 && sig != SIGHUP) {
            return -1;
        }
        backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
    }
}

int main(int argc, char **argv)
{
    const char *config_path = NULL;
    const char *level_arg = NULL;
    bool check_only = false;
    log_set_ident("cofid");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("cofid %s\n", COFI_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
            level_arg = argv[++i];
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check_only = true;
        } else {
            fprintf(stderr, "cofid: unknown or incomplete option '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (config_path == NULL) {
        fprintf(stderr, "cofid: --config FILE is required\n\n");
        usage(stderr);
        return 2;
    }

    struct cofi_config cfg;
    struct cofi_err err;
    cofi_err_clear(&err);
    if (config_load(config_path, &cfg, &err) != 0) {
        fprintf(stderr, "cofid: %s: %s\n", config_path, err.msg);
        return 2;
    }
    enum log_level level = LOG_INFO;
    log_parse_level(cfg.log_level, &level);
    if (level_arg != NULL && log_parse_level(level_arg, &level) != 0) {
        fprintf(stderr, "cofid: --log-level must be debug, info, warn or error\n");
        config_free(&cfg);
        return 2;
    }
    log_set_level(level);
    log_set_format(cfg.log_json ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
    if (cfg.http.log_file != NULL && !check_only) {
        int lrc = log_reopen(cfg.http.log_file);
        if (lrc != 0) {
            char msg[128];
            fprintf(stderr, "cofid: log_file %s: %s\n", cfg.http.log_file,
                    strerror_r(-lrc, msg, sizeof msg) == 0 ? msg : "error");
            config_free(&cfg);
            return 2;
        }
    }
    if (check_only) {
        printf("%s: configuration is valid\n", config_path);
        config_free(&cfg);
        return 0;
    }

#ifdef __GLIBC__
    /* Without a cap glibc gives many of the ~100 NLP threads an arena of their own, which
     * multiplies resident memory for no gain: the threads mostly wait on sockets. */
    mallopt(M_ARENA_MAX, 4);
#endif
    /* Signals are taken by sigwait in this thread only; every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);

    char dburl[512];
    db_redact(cfg.database_url, dburl, sizeof dburl);
    log_info("cofid " COFI_VERSION
             " starting: database %s, %zu node(s), NLP API %s (concurrency %d)",
             dburl, cfg.node_count, cfg.llm_url, cfg.llm_concurrency);

    int exit_code = 1;
    struct db_pool *pool = NULL;
    struct engine *engine = NULL;
    struct http_server *http = NULL;
    struct cofi_app app = {.cfg = &cfg, .started_at = clock_wall_ms() / 1000.0};

    if (probe_listen(&cfg) != 0) {
        goto out;
    }
    if (migrate_until_done(&cfg, &sigs) != 0) {
        goto out;
    }
    if (db_pool_open(&pool, cfg.database_url, cfg.db_pool_size, &err) != 0) {
        log_error("%s", err.msg);
        goto out;
    }
    db_pool_set_limits(pool, cfg.http.db_wait_ms, cfg.http.statement_timeout_ms);
    char instance[200];
    const char *env_id = getenv("COFI_INSTANCE_ID");
    if (env_id != NULL && env_id[0] != '\0') {
        snprintf(instance, sizeof instance, "%s", env_id);
    } else {
        char host[128] = "localhost";
        gethostname(host, sizeof host);
        host[sizeof host - 1] = '\0';
        snprintf(instance, sizeof instance, "%s:%d", host, cfg.listen_port);
    }
    if (engine_start(&engine, &cfg, instance, &err) != 0) {
        log_error("cannot start the engine: %s", err.msg);
        goto out;
    }
    app.db = pool;
    app.engine = engine;
    app.instance_id = instance;
    if (http_start(&http, &app, &err) != 0) {
        log_error("cannot start the HTTP server: %s", err.msg);
        goto out;
    }
    log_info("ready: instance %s", instance);

    int sig = 0;
    for (;;) {
        if (sigwait(&sigs, &sig) != 0) {
            continue;
        }
        if (sig != SIGHUP) {
            break;
        }
        reload_tokens(config_path, http);
        reopen_log(cfg.http.log_file);
    }
    log_info("received %s: shutting down (writes and GET /readyz now answer 503)",
             sig == SIGTERM ? "SIGTERM" : "SIGINT");
    http_begin_drain(http);
    exit_code = 0;

out:
    /* The engine drains first while the API still answers status requests; it is freed only
     * once the API's threads (workers and the background re-rendering) have stopped, since
     * the status handlers read it. */
    engine_stop(engine, cfg.shutdown_grace_ms);
    http_stop(http);
    engine_free(engine);
    db_pool_close(pool);
    curl_global_cleanup();
    config_free(&cfg);
    log_info("stopped");
    return exit_code;
}
