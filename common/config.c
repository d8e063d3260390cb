/* Loads and validates the configuration file and its environment overrides (README.md). */
#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/config_parse.h"
#include "common/log.h"

void config_defaults(struct cofi_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->listen_port = 8080;
    cfg->max_body_bytes = 67108864;
    cfg->mediator = (struct cofi_worker_cfg){.timeout_ms = 600000,
                                             .max_attempts = 5,
                                             .backoff_base_ms = 200,
                                             .backoff_max_ms = 30000,
                                             .retry_after_max_ms = 60000};
    cfg->health_interval_ms = 1000;
    cfg->llm_concurrency = 100;
    cfg->llm_adaptive = true;
    cfg->llm_completion_tokens = 256;
    cfg->llm = (struct cofi_worker_cfg){.timeout_ms = 120000,
                                        .max_attempts = 5,
                                        .backoff_base_ms = 200,
                                        .backoff_max_ms = 30000,
                                        .retry_after_max_ms = 60000};
    cfg->http_threads = 4;
    cfg->db_pool_size = 8;
    cfg->shutdown_grace_ms = 30000;
    cfg->lease_ms = 15000;
    cfg->status_cache_ms = 100;
    cfg_http_defaults(&cfg->http);
}

void config_free(struct cofi_config *cfg)
{
    if (cfg == NULL) {
        return;
    }
    free(cfg->listen_host);
    free(cfg->database_url);
    free(cfg->input_root);
    for (size_t i = 0; i < cfg->node_count; i++) {
        free(cfg->nodes[i].id);
        free(cfg->nodes[i].url);
    }
    free(cfg->nodes);
    free(cfg->llm_url);
    free(cfg->nlp_api_key);
    free(cfg->llm_model);
    free(cfg->llm_prompts[0]);
    free(cfg->llm_prompts[1]);
    for (size_t i = 0; i < cfg->token_count; i++) {
        free(cfg->tokens[i].env);
        if (cfg->tokens[i].token != NULL) {
            memset(cfg->tokens[i].token, 0, strlen(cfg->tokens[i].token));
        }
        free(cfg->tokens[i].token);
    }
    free(cfg->tokens);
    free(cfg->log_level);
    if (cfg->webhook_secret != NULL) {
        memset(cfg->webhook_secret, 0, strlen(cfg->webhook_secret));
    }
    free(cfg->webhook_secret);
    free(cfg->webhook_secret_env);
    cfg_http_free(&cfg->http);
    config_defaults(cfg);
}

/* True for a node id cofi accepts: 1 to NODE_ID_MAX characters of A-Z a-z 0-9 . _ : - (it
 * appears in logs, metrics labels, the API and the database). */
static bool is_node_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > NODE_ID_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!isalnum(c) && c != '.' && c != '_' && c != ':' && c != '-') {
            return false;
        }
    }
    return true;
}

/* Parses "host:port" or "[v6]:port" into the config. */
static int parse_listen(const char *s, const char *what, struct cofi_config *cfg,
                        struct cofi_err *err)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s || colon[1] == '\0') {
        return cofi_err_set(err, COFI_E_INVALID, "%s \"%s\" must be host:port", what, s);
    }
    char *end = NULL;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || port < 1 || port > 65535) {
        return cofi_err_set(err, COFI_E_INVALID, "%s \"%s\" has an invalid port", what, s);
    }
    const char *host = s;
    size_t hlen = (size_t)(colon - s);
    if (host[0] == '[' && hlen >= 2 && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    char *h = strndup(host, hlen);
    if (h == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    free(cfg->listen_host);
    cfg->listen_host = h;
    cfg->listen_port = (int)port;
    return 0;
}

/* Reads nodes[i] (the object o, "where" its key prefix) into nd. */
static int parse_node(json_t *o, const char *where, struct cofi_node_cfg *nd, struct cofi_err *err)
{
    static const char *const known[] = {"id", "url", "capacity", NULL};
    nd->capacity = 8;
    int rc = cfg_check_keys(o, where, known, err);
    if (rc == 0) {
        rc = cfg_get_str(o, where, "id", &nd->id, err);
    }
    if (rc == 0) {
        rc = cfg_get_str(o, where, "url", &nd->url, err);
    }
    if (rc == 0) {
        rc = cfg_get_int32(o, where, "capacity", 1, 10000, &nd->capacity, err);
    }
    if (rc != 0) {
        return rc;
    }
    if (nd->id == NULL || nd->url == NULL) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"%s\" needs \"id\" and \"url\"", where);
    }
    char shown[81];
    if (!is_node_id(nd->id)) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"%sid\": node id \"%s\" must be 1 to %d "
                            "characters of A-Z a-z 0-9 . _ : -",
                            where, cfg_printable(shown, nd->id), NODE_ID_MAX);
    }
    if (!cfg_is_http_url(nd->url)) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"%surl\": \"%s\" must be an http(s) URL: "
                            "http[s]://host[:port][/path], without user info, query or "
                            "fragment",
                            where, cfg_printable(shown, nd->url));
    }
    cfg_trim_slashes(nd->url);
    return 0;
}

static int parse_nodes(json_t *arr, struct cofi_config *cfg, struct cofi_err *err)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"nodes\" must be a non-empty array");
    }
    size_t n = json_array_size(arr);
    cfg->nodes = calloc(n, sizeof *cfg->nodes);
    if (cfg->nodes == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        char where[48];
        snprintf(where, sizeof where, "nodes[%zu].", i);
        if (!json_is_object(o)) {
            return cofi_err_set(err, COFI_E_INVALID,
                                "configuration key \"nodes[%zu]\" must be an object", i);
        }
        struct cofi_node_cfg *nd = &cfg->nodes[i];
        cfg->node_count = i + 1;
        int rc = parse_node(o, where, nd, err);
        if (rc != 0) {
            return rc;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->nodes[j].id, nd->id) == 0) {
                return cofi_err_set(err, COFI_E_INVALID,
                                    "configuration key \"%sid\": node id \"%s\" is used twice",
                                    where, nd->id);
            }
        }
    }
    return 0;
}

/* "log_format": "text" (default) or "json". */
static int parse_log_format(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    json_t *v = json_object_get(root, "log_format");
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    enum log_format f;
    if (!json_is_string(v) || log_parse_format(json_string_value(v), &f) != 0) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"log_format\" must be \"text\" or \"json\"");
    }
    cfg->log_json = f == LOG_FORMAT_JSON;
    return 0;
}

/* webhook_secret_env: the name of a variable that must be set and not empty. */
static int parse_webhook_secret(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    int rc = cfg_get_str(root, "", "webhook_secret_env", &cfg->webhook_secret_env, err);
    if (rc != 0 || cfg->webhook_secret_env == NULL) {
        return rc;
    }
    const char *val = getenv(cfg->webhook_secret_env);
    if (val == NULL || val[0] == '\0') {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"webhook_secret_env\": environment variable %s "
                            "is not set",
                            cfg->webhook_secret_env);
    }
    cfg->webhook_secret = strdup(val);
    return cfg->webhook_secret != NULL ? 0 : cofi_err_set(err, COFI_E_NOMEM, "out of memory");
}

/* check_keys for the top level: the keys in known, and the objects read by cfg_parse_http. */
static int check_root_keys(json_t *root, const char *const *known, struct cofi_err *err)
{
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        bool ok = false;
        for (size_t i = 0; !ok && known[i] != NULL; i++) {
            ok = strcmp(key, known[i]) == 0;
        }
        for (size_t i = 0; !ok && cfg_http_root_keys[i] != NULL; i++) {
            ok = strcmp(key, cfg_http_root_keys[i]) == 0;
        }
        if (!ok) {
            return cofi_err_set(err, COFI_E_INVALID, "unknown configuration key \"%s\"", key);
        }
    }
    return 0;
}

/* Reads listen, database_url, input_root, max_body_bytes and nodes. */
static int parse_sources(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    char *listen = NULL;
    int rc = cfg_get_str(root, "", "listen", &listen, err);
    if (rc == 0 && listen != NULL) {
        rc = parse_listen(listen, "configuration key \"listen\"", cfg, err);
    }
    free(listen);
    if (rc == 0) {
        rc = cfg_get_str(root, "", "database_url", &cfg->database_url, err);
    }
    if (rc == 0) {
        rc = cfg_get_str(root, "", "input_root", &cfg->input_root, err);
    }
    if (rc == 0) {
        rc = cfg_get_size(root, "", "max_body_bytes", 1024, 1LL << 34, &cfg->max_body_bytes, err);
    }
    if (rc == 0 && json_object_get(root, "nodes") != NULL) {
        rc = parse_nodes(json_object_get(root, "nodes"), cfg, err);
    }
    return rc;
}

/* Reads the optional "mediator" object. */
static int parse_mediator(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    static const char *const known[] = {"timeout_ms",
                                        "max_attempts",
                                        "backoff_base_ms",
                                        "backoff_max_ms",
                                        "retry_after_max_ms",
                                        "health_interval_ms",
                                        NULL};
    json_t *med = json_object_get(root, "mediator");
    if (med == NULL) {
        return 0;
    }
    if (!json_is_object(med)) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"mediator\" must be an object");
    }
    int rc = cfg_check_keys(med, "mediator.", known, err);
    if (rc == 0) {
        rc = cfg_parse_worker(med, "mediator.", &cfg->mediator, err);
    }
    if (rc == 0) {
        rc = cfg_get_int32(med, "mediator.", "health_interval_ms", 10, 3600000,
                           &cfg->health_interval_ms, err);
    }
    return rc;
}

/* Reads cofi's own top-level keys: log_level, log_format and the integers. */
static int parse_service(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    const struct cfg_int_key ints[] = {
        {"http_threads", 1, 256, &cfg->http_threads},
        {"db_pool_size", 1, 256, &cfg->db_pool_size},
        {"shutdown_grace_ms", 0, 3600000, &cfg->shutdown_grace_ms},
        {"lease_ms", 1000, 3600000, &cfg->lease_ms},
        {"status_cache_ms", 0, 10000, &cfg->status_cache_ms},
    };
    int rc = cfg_get_str(root, "", "log_level", &cfg->log_level, err);
    if (rc == 0) {
        rc = parse_log_format(root, cfg, err);
    }
    if (rc == 0) {
        rc = cfg_get_int32s(root, "", ints, sizeof ints / sizeof ints[0], err);
    }
    return rc;
}

static int parse_root(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    static const char *const known[] = {"listen",
                                        "database_url",
                                        "input_root",
                                        "max_body_bytes",
                                        "nodes",
                                        "mediator",
                                        "llm",
                                        "auth",
                                        "log_level",
                                        "log_format",
                                        "http_threads",
                                        "db_pool_size",
                                        "shutdown_grace_ms",
                                        "lease_ms",
                                        "status_cache_ms",
                                        "webhook_secret_env",
                                        NULL};
    if (!json_is_object(root)) {
        return cofi_err_set(err, COFI_E_INVALID, "the configuration must be a JSON object");
    }
    int rc = check_root_keys(root, known, err);
    if (rc == 0) {
        rc = parse_sources(root, cfg, err);
    }
    if (rc == 0) {
        rc = parse_mediator(root, cfg, err);
    }
    if (rc == 0) {
        rc = cfg_parse_llm(root, cfg, err);
    }
    if (rc == 0) {
        rc = cfg_parse_auth(root, cfg, err);
    }
    if (rc == 0) {
        rc = parse_service(root, cfg, err);
    }
    if (rc == 0) {
        rc = cfg_parse_http(root, &cfg->http, err);
    }
    if (rc == 0) {
        rc = parse_webhook_secret(root, cfg, err);
    }
    return rc;
}

/* Applies the environment overrides COFI_DATABASE_URL, COFI_LISTEN and COFI_NLP_API_KEY. */
static int apply_env(struct cofi_config *cfg, struct cofi_err *err)
{
    const char *env = getenv("COFI_DATABASE_URL");
    if (env != NULL && env[0] != '\0') {
        free(cfg->database_url);
        cfg->database_url = strdup(env);
        if (cfg->database_url == NULL) {
            return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
        }
    }
    env = getenv("COFI_LISTEN");
    if (env != NULL && env[0] != '\0') {
        int rc = parse_listen(env, "COFI_LISTEN", cfg, err);
        if (rc != 0) {
            return rc;
        }
    }
    env = getenv("COFI_NLP_API_KEY");
    if (env != NULL && env[0] != '\0') {
        cfg->nlp_api_key = strdup(env);
        if (cfg->nlp_api_key == NULL) {
            return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
        }
    }
    return 0;
}

/* Fills the defaults of the keys with a default string and checks what must hold whatever
 * the source. */
static int finish(struct cofi_config *cfg, struct cofi_err *err)
{
    int rc = apply_env(cfg, err);
    if (rc != 0) {
        return rc;
    }
    if (cfg->listen_host == NULL) {
        cfg->listen_host = strdup("127.0.0.1");
    }
    if (cfg->database_url == NULL) {
        cfg->database_url = strdup("postgresql:///cofi?host=/tmp");
    }
    if (cfg->log_level == NULL) {
        cfg->log_level = strdup("info");
    }
    if (cfg->listen_host == NULL || cfg->database_url == NULL || cfg->log_level == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    enum log_level lvl;
    if (log_parse_level(cfg->log_level, &lvl) != 0) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"log_level\" must be debug, info, warn or error");
    }
    if (cfg->input_root == NULL) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"input_root\" is required");
    }
    char real[PATH_MAX];
    struct stat st;
    if (realpath(cfg->input_root, real) == NULL || stat(real, &st) != 0 || !S_ISDIR(st.st_mode)) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"input_root\": \"%s\" is not an existing directory",
                            cfg->input_root);
    }
    free(cfg->input_root);
    cfg->input_root = strdup(real);
    if (cfg->input_root == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    if (cfg->node_count == 0) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"nodes\" is required");
    }
    if (cfg->llm_url == NULL) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"llm.url\" is required");
    }
    if (!cfg_is_http_url(cfg->llm_url)) {
        char shown[81];
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"llm.url\": \"%s\" must be an http(s) URL: "
                            "http[s]://host[:port][/path], without user info, query or fragment",
                            cfg_printable(shown, cfg->llm_url));
    }
    cfg_trim_slashes(cfg->llm_url);
    return 0;
}

/* Parses root into cfg and finishes it; on error cfg is left empty. Does not take root. */
static int parse_and_finish(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    int rc = parse_root(root, cfg, err);
    if (rc == 0) {
        rc = finish(cfg, err);
    }
    if (rc != 0) {
        config_free(cfg);
    }
    return rc;
}

int config_parse(const char *text, struct cofi_config *cfg, struct cofi_err *err)
{
    config_defaults(cfg);
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration is not valid JSON: %s (line %d)",
                            jerr.text, jerr.line);
    }
    int rc = parse_and_finish(root, cfg, err);
    json_decref(root);
    return rc;
}

int config_load(const char *path, struct cofi_config *cfg, struct cofi_err *err)
{
    config_defaults(cfg);
    if (path == NULL) {
        int rc = finish(cfg, err);
        if (rc != 0) {
            config_free(cfg);
        }
        return rc;
    }
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        return cofi_err_set(err, COFI_E_INVALID, "cannot read configuration %s: %s (line %d)", path,
                            jerr.text, jerr.line);
    }
    int rc = parse_and_finish(root, cfg, err);
    json_decref(root);
    return rc;
}
