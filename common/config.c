/* Loads and validates the configuration file and its environment overrides (README.md). */
#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/utf8.h"

static void http_defaults(struct cofi_http_cfg *http);
static void http_free(struct cofi_http_cfg *http);
static int parse_http(json_t *root, struct cofi_http_cfg *http, struct cofi_err *err);
static int check_root_keys(json_t *root, const char *const *known, struct cofi_err *err);

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
    http_defaults(&cfg->http);
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
    http_free(&cfg->http);
    config_defaults(cfg);
}

/* Fails unless every key of obj is in the NULL-terminated list `known`. */
static int check_keys(json_t *obj, const char *where, const char *const *known,
                      struct cofi_err *err)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        bool ok = false;
        for (size_t i = 0; known[i] != NULL; i++) {
            if (strcmp(key, known[i]) == 0) {
                ok = true;
                break;
            }
        }
        if (!ok) {
            return cofi_err_set(err, COFI_E_INVALID, "unknown configuration key \"%s%s\"", where,
                                key);
        }
    }
    return 0;
}

/* Reads an optional integer key into *out, within [lo, hi]. */
static int get_int(json_t *obj, const char *where, const char *key, long long lo, long long hi,
                   long long *out, struct cofi_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return 0;
    }
    if (!json_is_integer(v)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"%s%s\" must be an integer",
                            where, key);
    }
    long long n = json_integer_value(v);
    if (n < lo || n > hi) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"%s%s\" is %lld, must be between %lld and %lld",
                            where, key, n, lo, hi);
    }
    *out = n;
    return 0;
}

static int get_int32(json_t *obj, const char *where, const char *key, int lo, int hi, int *out,
                     struct cofi_err *err)
{
    long long v = *out;
    int rc = get_int(obj, where, key, lo, hi, &v, err);
    if (rc == 0) {
        *out = (int)v;
    }
    return rc;
}

/* Reads an optional boolean key into *out. */
static int get_bool(json_t *obj, const char *where, const char *key, bool *out,
                    struct cofi_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return 0;
    }
    if (!json_is_boolean(v)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"%s%s\" must be a boolean",
                            where, key);
    }
    *out = json_is_true(v);
    return 0;
}

/* Reads an optional string key into *out (a new string replacing the old one). */
static int get_str(json_t *obj, const char *where, const char *key, char **out,
                   struct cofi_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) == 0) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"%s%s\" must be a non-empty string", where, key);
    }
    char *copy = strdup(json_string_value(v));
    if (copy == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    free(*out);
    *out = copy;
    return 0;
}

/* Checks a prompt template: only {transcript}, {language} and (llm2) {llm1} placeholders. */
static int check_template(const char *name, const char *t, bool llm2, struct cofi_err *err)
{
    for (const char *p = strchr(t, '{'); p != NULL; p = strchr(p + 1, '{')) {
        size_t n = strspn(p + 1, "abcdefghijklmnopqrstuvwxyz0123456789_");
        if (n == 0 || p[1 + n] != '}') {
            continue; /* not a placeholder: literal text (a JSON example, say) */
        }
        if ((n == 10 && strncmp(p, "{transcript}", 12) == 0) ||
            (n == 8 && strncmp(p, "{language}", 10) == 0) ||
            (llm2 && n == 4 && strncmp(p, "{llm1}", 6) == 0)) {
            continue;
        }
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"llm.prompts.%s\" has an unknown placeholder "
                            "(use {transcript}, {language}%s)",
                            name, llm2 ? ", {llm1}" : "");
    }
    return 0;
}

/* Reads llm.protocol, llm.model and llm.prompts. */
static int parse_protocol(json_t *llm, struct cofi_config *cfg, struct cofi_err *err)
{
    json_t *proto = json_object_get(llm, "protocol");
    if (proto != NULL) {
        const char *s = json_string_value(proto);
        if (s == NULL || (strcmp(s, "cofi") != 0 && strcmp(s, "openai") != 0)) {
            return cofi_err_set(err, COFI_E_INVALID,
                                "configuration key \"llm.protocol\" must be \"cofi\" or "
                                "\"openai\"");
        }
        cfg->llm_openai = strcmp(s, "openai") == 0;
    }
    int rc = get_str(llm, "llm.", "model", &cfg->llm_model, err);
    if (rc == 0 && cfg->llm_openai && cfg->llm_model == NULL) {
        rc = cofi_err_set(err, COFI_E_INVALID,
                          "configuration key \"llm.model\" is required with \"llm.protocol\": "
                          "\"openai\"");
    }
    json_t *prompts = json_object_get(llm, "prompts");
    if (rc != 0 || prompts == NULL) {
        return rc;
    }
    static const char *const names[] = {"llm1", "llm2", NULL};
    if (!json_is_object(prompts)) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"llm.prompts\" must be an object");
    }
    rc = check_keys(prompts, "llm.prompts.", names, err);
    for (int i = 0; rc == 0 && i < 2; i++) {
        rc = get_str(prompts, "llm.prompts.", names[i], &cfg->llm_prompts[i], err);
        if (rc == 0 && cfg->llm_prompts[i] != NULL) {
            rc = check_template(names[i], cfg->llm_prompts[i], i == 1, err);
        }
    }
    return rc;
}

/* A character of a host name or IPv4 address (RFC 3986 reg-name, without sub-delims). */
static bool is_host_char(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_' || c == '~' || c == '%';
}

/* True for a base URL cofi can append paths to: http:// or https://, a host (a name, an IPv4
 * address or a bracketed IPv6 address), an optional port 1..65535 and an optional path, in
 * printable ASCII; no user info (it would show in logs and GET /stages/{name}/status), no
 * query and no fragment. */
static bool is_http_url(const char *u)
{
    size_t i;
    if (strncasecmp(u, "http://", 7) == 0) {
        i = 7;
    } else if (strncasecmp(u, "https://", 8) == 0) {
        i = 8;
    } else {
        return false;
    }
    for (size_t k = i; u[k] != '\0'; k++) {
        unsigned char c = (unsigned char)u[k];
        if (c <= 0x20 || c >= 0x7F || c == '?' || c == '#' || c == '\\') {
            return false;
        }
    }
    size_t host = i;
    if (u[i] == '[') {
        i++;
        while (isxdigit((unsigned char)u[i]) || u[i] == ':' || u[i] == '.') {
            i++;
        }
        if (u[i] != ']' || i == host + 1) {
            return false;
        }
        i++;
    } else {
        while (is_host_char(u[i])) {
            i++;
        }
        if (i == host) {
            return false;
        }
    }
    if (u[i] == ':') {
        i++;
        long port = 0;
        size_t digits = 0;
        while (isdigit((unsigned char)u[i]) && digits < 6) {
            port = port * 10 + (u[i] - '0');
            digits++;
            i++;
        }
        if (digits == 0 || port < 1 || port > 65535) {
            return false;
        }
    }
    return u[i] == '\0' || u[i] == '/';
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

/* Writes at most 80 bytes of s into out (81 bytes) as printable UTF-8, for an error message
 * about a value that may hold anything. */
static const char *printable(char out[81], const char *s)
{
    utf8_sanitize(out, 81, s, strlen(s));
    return out;
}

/* Drops trailing slashes from a URL in place. */
static void trim_slashes(char *u)
{
    size_t n = strlen(u);
    while (n > 0 && u[n - 1] == '/') {
        u[--n] = '\0';
    }
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

static int parse_worker(json_t *obj, const char *where, struct cofi_worker_cfg *w,
                        struct cofi_err *err)
{
    int rc = get_int32(obj, where, "timeout_ms", 1, 86400000, &w->timeout_ms, err);
    if (rc == 0) {
        rc = get_int32(obj, where, "max_attempts", 1, 1000, &w->max_attempts, err);
    }
    if (rc == 0) {
        rc = get_int32(obj, where, "backoff_base_ms", 1, 3600000, &w->backoff_base_ms, err);
    }
    if (rc == 0) {
        rc = get_int32(obj, where, "backoff_max_ms", 1, 3600000, &w->backoff_max_ms, err);
    }
    if (rc == 0) {
        rc = get_int32(obj, where, "retry_after_max_ms", 1000, 86400000, &w->retry_after_max_ms,
                       err);
    }
    if (rc == 0 && w->backoff_max_ms < w->backoff_base_ms) {
        rc = cofi_err_set(err, COFI_E_INVALID,
                          "configuration key \"%sbackoff_max_ms\" is below backoff_base_ms", where);
    }
    return rc;
}

static int parse_nodes(json_t *arr, struct cofi_config *cfg, struct cofi_err *err)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"nodes\" must be a non-empty array");
    }
    static const char *const known[] = {"id", "url", "capacity", NULL};
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
        nd->capacity = 8;
        int rc = check_keys(o, where, known, err);
        if (rc == 0) {
            rc = get_str(o, where, "id", &nd->id, err);
        }
        if (rc == 0) {
            rc = get_str(o, where, "url", &nd->url, err);
        }
        if (rc == 0) {
            rc = get_int32(o, where, "capacity", 1, 10000, &nd->capacity, err);
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
                                where, printable(shown, nd->id), NODE_ID_MAX);
        }
        if (!is_http_url(nd->url)) {
            return cofi_err_set(err, COFI_E_INVALID,
                                "configuration key \"%surl\": \"%s\" must be an http(s) URL: "
                                "http[s]://host[:port][/path], without user info, query or "
                                "fragment",
                                where, printable(shown, nd->url));
        }
        trim_slashes(nd->url);
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

static int parse_auth(json_t *auth, struct cofi_config *cfg, struct cofi_err *err)
{
    static const char *const known[] = {"tokens", NULL};
    static const char *const tknown[] = {"token_env", "scope", NULL};
    if (!json_is_object(auth)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"auth\" must be an object");
    }
    int rc = check_keys(auth, "auth.", known, err);
    if (rc != 0) {
        return rc;
    }
    json_t *arr = json_object_get(auth, "tokens");
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"auth.tokens\" must be a non-empty array");
    }
    size_t n = json_array_size(arr);
    cfg->tokens = calloc(n, sizeof *cfg->tokens);
    if (cfg->tokens == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        char where[48];
        snprintf(where, sizeof where, "auth.tokens[%zu].", i);
        if (!json_is_object(o)) {
            return cofi_err_set(err, COFI_E_INVALID,
                                "configuration key \"auth.tokens[%zu]\" must be an object", i);
        }
        struct cofi_token_cfg *t = &cfg->tokens[i];
        cfg->token_count = i + 1;
        char *scope = NULL;
        rc = check_keys(o, where, tknown, err);
        if (rc == 0) {
            rc = get_str(o, where, "token_env", &t->env, err);
        }
        if (rc == 0) {
            rc = get_str(o, where, "scope", &scope, err);
        }
        if (rc == 0 && (t->env == NULL || scope == NULL)) {
            rc = cofi_err_set(err, COFI_E_INVALID,
                              "configuration key \"%s\" needs \"token_env\" and \"scope\"", where);
        }
        if (rc == 0 && strcmp(scope, "write") != 0 && strcmp(scope, "read") != 0) {
            rc = cofi_err_set(err, COFI_E_INVALID,
                              "configuration key \"%sscope\" must be \"read\" or \"write\"", where);
        }
        if (rc == 0) {
            t->write = strcmp(scope, "write") == 0;
            const char *val = getenv(t->env);
            if (val == NULL || val[0] == '\0') {
                rc = cofi_err_set(
                    err, COFI_E_INVALID,
                    "configuration key \"%stoken_env\": environment variable %s is not set", where,
                    t->env);
            } else {
                t->token = strdup(val);
                if (t->token == NULL) {
                    rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
                }
            }
        }
        free(scope);
        if (rc != 0) {
            return rc;
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
    int rc = get_str(root, "", "webhook_secret_env", &cfg->webhook_secret_env, err);
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
    static const char *const med_known[] = {"timeout_ms",
                                            "max_attempts",
                                            "backoff_base_ms",
                                            "backoff_max_ms",
                                            "retry_after_max_ms",
                                            "health_interval_ms",
                                            NULL};
    static const char *const llm_known[] = {"url",
                                            "concurrency",
                                            "timeout_ms",
                                            "max_attempts",
                                            "backoff_base_ms",
                                            "backoff_max_ms",
                                            "retry_after_max_ms",
                                            "adaptive",
                                            "tokens_per_minute",
                                            "requests_per_minute",
                                            "completion_tokens",
                                            "protocol",
                                            "model",
                                            "prompts",
                                            NULL};
    if (!json_is_object(root)) {
        return cofi_err_set(err, COFI_E_INVALID, "the configuration must be a JSON object");
    }
    int rc = check_root_keys(root, known, err);
    if (rc != 0) {
        return rc;
    }
    char *listen = NULL;
    rc = get_str(root, "", "listen", &listen, err);
    if (rc == 0 && listen != NULL) {
        rc = parse_listen(listen, "configuration key \"listen\"", cfg, err);
    }
    free(listen);
    if (rc == 0) {
        rc = get_str(root, "", "database_url", &cfg->database_url, err);
    }
    if (rc == 0) {
        rc = get_str(root, "", "input_root", &cfg->input_root, err);
    }
    long long body = (long long)cfg->max_body_bytes;
    if (rc == 0) {
        rc = get_int(root, "", "max_body_bytes", 1024, 1LL << 34, &body, err);
    }
    cfg->max_body_bytes = (size_t)body;
    if (rc == 0 && json_object_get(root, "nodes") != NULL) {
        rc = parse_nodes(json_object_get(root, "nodes"), cfg, err);
    }
    json_t *med = json_object_get(root, "mediator");
    if (rc == 0 && med != NULL) {
        if (!json_is_object(med)) {
            return cofi_err_set(err, COFI_E_INVALID,
                                "configuration key \"mediator\" must be an object");
        }
        rc = check_keys(med, "mediator.", med_known, err);
        if (rc == 0) {
            rc = parse_worker(med, "mediator.", &cfg->mediator, err);
        }
        if (rc == 0) {
            rc = get_int32(med, "mediator.", "health_interval_ms", 10, 3600000,
                           &cfg->health_interval_ms, err);
        }
    }
    json_t *llm = json_object_get(root, "llm");
    if (rc == 0 && llm != NULL) {
        if (!json_is_object(llm)) {
            return cofi_err_set(err, COFI_E_INVALID, "configuration key \"llm\" must be an object");
        }
        rc = check_keys(llm, "llm.", llm_known, err);
        if (rc == 0) {
            rc = get_str(llm, "llm.", "url", &cfg->llm_url, err);
        }
        if (rc == 0) {
            rc = get_int32(llm, "llm.", "concurrency", 1, 10000, &cfg->llm_concurrency, err);
        }
        if (rc == 0) {
            rc = get_bool(llm, "llm.", "adaptive", &cfg->llm_adaptive, err);
        }
        if (rc == 0) {
            rc = parse_worker(llm, "llm.", &cfg->llm, err);
        }
        if (rc == 0) {
            rc = get_int(llm, "llm.", "tokens_per_minute", 1, 1000000000000LL,
                         &cfg->llm_tokens_per_minute, err);
        }
        if (rc == 0) {
            rc = get_int32(llm, "llm.", "requests_per_minute", 1, 100000000,
                           &cfg->llm_requests_per_minute, err);
        }
        if (rc == 0) {
            rc = get_int32(llm, "llm.", "completion_tokens", 0, 10000000,
                           &cfg->llm_completion_tokens, err);
        }
        if (rc == 0) {
            rc = parse_protocol(llm, cfg, err);
        }
    }
    json_t *auth = json_object_get(root, "auth");
    if (rc == 0 && auth != NULL && !json_is_null(auth)) {
        rc = parse_auth(auth, cfg, err);
    }
    if (rc == 0) {
        rc = get_str(root, "", "log_level", &cfg->log_level, err);
    }
    if (rc == 0) {
        rc = parse_log_format(root, cfg, err);
    }
    if (rc == 0) {
        rc = get_int32(root, "", "http_threads", 1, 256, &cfg->http_threads, err);
    }
    if (rc == 0) {
        rc = get_int32(root, "", "db_pool_size", 1, 256, &cfg->db_pool_size, err);
    }
    if (rc == 0) {
        rc = get_int32(root, "", "shutdown_grace_ms", 0, 3600000, &cfg->shutdown_grace_ms, err);
    }
    if (rc == 0) {
        rc = get_int32(root, "", "lease_ms", 1000, 3600000, &cfg->lease_ms, err);
    }
    if (rc == 0) {
        rc = get_int32(root, "", "status_cache_ms", 0, 10000, &cfg->status_cache_ms, err);
    }
    if (rc == 0) {
        rc = parse_http(root, &cfg->http, err);
    }
    if (rc == 0) {
        rc = parse_webhook_secret(root, cfg, err);
    }
    return rc;
}

/* Applies the environment overrides and checks what must hold whatever the source. */
static int finish(struct cofi_config *cfg, struct cofi_err *err)
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
    if (!is_http_url(cfg->llm_url)) {
        char shown[81];
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"llm.url\": \"%s\" must be an http(s) URL: "
                            "http[s]://host[:port][/path], without user info, query or fragment",
                            printable(shown, cfg->llm_url));
    }
    trim_slashes(cfg->llm_url);
    return 0;
}

/* ---- the "http", "tls" and "limits" objects: the HTTP server's defences ------------------ */

/* check_keys for the top level: the keys in known, and the objects read by parse_http. */
static int check_root_keys(json_t *root, const char *const *known, struct cofi_err *err)
{
    static const char *const http_keys[] = {"http", "tls", "limits", "log_file", NULL};
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        bool ok = false;
        for (size_t i = 0; !ok && known[i] != NULL; i++) {
            ok = strcmp(key, known[i]) == 0;
        }
        for (size_t i = 0; !ok && http_keys[i] != NULL; i++) {
            ok = strcmp(key, http_keys[i]) == 0;
        }
        if (!ok) {
            return cofi_err_set(err, COFI_E_INVALID, "unknown configuration key \"%s\"", key);
        }
    }
    return 0;
}

static void http_defaults(struct cofi_http_cfg *http)
{
    http->max_connections = 1024;
    http->max_connections_per_client = 64;
    http->idle_timeout_ms = 30000;
    http->request_timeout_ms = 30000;
    http->handler_threads = 8;
    http->handler_queue = 256;
    http->db_wait_ms = 5000;
    http->statement_timeout_ms = 30000;
    http->tls_cert_file = NULL;
    http->tls_key_file = NULL;
    http->metadata_max_bytes = 65536;
    http->list_max_bytes = 1048576;
}

static void http_free(struct cofi_http_cfg *http)
{
    free(http->log_file);
    http->log_file = NULL;
    free(http->tls_cert_file);
    free(http->tls_key_file);
    http->tls_cert_file = NULL;
    http->tls_key_file = NULL;
}

/* Reads the optional "limits" {metadata_max_bytes, list_max_bytes} object of root. */
static int parse_limits(json_t *root, struct cofi_http_cfg *http, struct cofi_err *err)
{
    static const char *const known[] = {"metadata_max_bytes", "list_max_bytes", "db_wait_ms",
                                        "statement_timeout_ms", NULL};
    json_t *l = json_object_get(root, "limits");
    if (l == NULL) {
        return 0;
    }
    if (!json_is_object(l)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"limits\" must be an object");
    }
    long long meta = (long long)http->metadata_max_bytes;
    long long list = (long long)http->list_max_bytes;
    int rc = check_keys(l, "limits.", known, err);
    if (rc == 0) {
        rc = get_int(l, "limits.", "metadata_max_bytes", 2, 1LL << 30, &meta, err);
    }
    if (rc == 0) {
        rc = get_int(l, "limits.", "list_max_bytes", 1024, 1LL << 30, &list, err);
    }
    http->metadata_max_bytes = (size_t)meta;
    http->list_max_bytes = (size_t)list;
    if (rc == 0) {
        rc = get_int32(l, "limits.", "db_wait_ms", 1, 3600000, &http->db_wait_ms, err);
    }
    if (rc == 0) {
        rc = get_int32(l, "limits.", "statement_timeout_ms", 0, 86400000,
                       &http->statement_timeout_ms, err);
    }
    return rc;
}

/* Reads the optional "http" {max_connections, max_connections_per_client, idle_timeout_ms,
 * request_timeout_ms}, "tls" {cert_file, key_file} and "limits" objects of root. */
static int parse_http(json_t *root, struct cofi_http_cfg *http, struct cofi_err *err)
{
    static const char *const known[] = {"max_connections",
                                        "max_connections_per_client",
                                        "idle_timeout_ms",
                                        "request_timeout_ms",
                                        "handler_threads",
                                        "handler_queue",
                                        NULL};
    static const char *const tls_known[] = {"cert_file", "key_file", NULL};
    int rc = 0;
    json_t *h = json_object_get(root, "http");
    if (h != NULL) {
        if (!json_is_object(h)) {
            return cofi_err_set(err, COFI_E_INVALID,
                                "configuration key \"http\" must be an object");
        }
        rc = check_keys(h, "http.", known, err);
        if (rc == 0) {
            rc = get_int32(h, "http.", "max_connections", 1, 65536, &http->max_connections, err);
        }
        if (rc == 0) {
            rc = get_int32(h, "http.", "max_connections_per_client", 0, 65536,
                           &http->max_connections_per_client, err);
        }
        if (rc == 0) {
            rc = get_int32(h, "http.", "idle_timeout_ms", 1000, 3600000, &http->idle_timeout_ms,
                           err);
        }
        if (rc == 0) {
            rc = get_int32(h, "http.", "request_timeout_ms", 100, 3600000,
                           &http->request_timeout_ms, err);
        }
        if (rc == 0) {
            rc = get_int32(h, "http.", "handler_threads", 1, 1024, &http->handler_threads, err);
        }
        if (rc == 0) {
            rc = get_int32(h, "http.", "handler_queue", 1, 100000, &http->handler_queue, err);
        }
    }
    if (rc == 0) {
        rc = parse_limits(root, http, err);
    }
    if (rc == 0) {
        rc = get_str(root, "", "log_file", &http->log_file, err);
    }
    json_t *t = json_object_get(root, "tls");
    if (rc == 0 && t != NULL && !json_is_null(t)) {
        if (!json_is_object(t)) {
            return cofi_err_set(err, COFI_E_INVALID, "configuration key \"tls\" must be an object");
        }
        rc = check_keys(t, "tls.", tls_known, err);
        if (rc == 0) {
            rc = get_str(t, "tls.", "cert_file", &http->tls_cert_file, err);
        }
        if (rc == 0) {
            rc = get_str(t, "tls.", "key_file", &http->tls_key_file, err);
        }
        if (rc == 0 && (http->tls_cert_file == NULL || http->tls_key_file == NULL)) {
            rc =
                cofi_err_set(err, COFI_E_INVALID,
                             "configuration key \"tls\" needs both \"cert_file\" and \"key_file\"");
        }
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
    int rc = parse_root(root, cfg, err);
    json_decref(root);
    if (rc == 0) {
        rc = finish(cfg, err);
    }
    if (rc != 0) {
        config_free(cfg);
    }
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
    int rc = parse_root(root, cfg, err);
    json_decref(root);
    if (rc == 0) {
        rc = finish(cfg, err);
    }
    if (rc != 0) {
        config_free(cfg);
    }
    return rc;
}
