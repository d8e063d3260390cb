/* The configuration's "auth", "http", "tls" and "limits" objects: the HTTP server's defences. */
#include "common/config_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const cfg_http_root_keys[] = {"http", "tls", "limits", "log_file", NULL};

/* Reads auth.tokens[i] (the object o, "where" its key prefix) into t, with its secret from
 * the environment. */
static int parse_token(json_t *o, const char *where, struct cofi_token_cfg *t, struct cofi_err *err)
{
    static const char *const known[] = {"token_env", "scope", NULL};
    char *scope = NULL;
    int rc = cfg_check_keys(o, where, known, err);
    if (rc == 0) {
        rc = cfg_get_str(o, where, "token_env", &t->env, err);
    }
    if (rc == 0) {
        rc = cfg_get_str(o, where, "scope", &scope, err);
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
            rc = cofi_err_set(err, COFI_E_INVALID,
                              "configuration key \"%stoken_env\": environment variable %s is "
                              "not set",
                              where, t->env);
        } else {
            t->token = strdup(val);
            if (t->token == NULL) {
                rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
            }
        }
    }
    free(scope);
    return rc;
}

int cfg_parse_auth(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    static const char *const known[] = {"tokens", NULL};
    json_t *auth = json_object_get(root, "auth");
    if (auth == NULL || json_is_null(auth)) {
        return 0;
    }
    if (!json_is_object(auth)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"auth\" must be an object");
    }
    int rc = cfg_check_keys(auth, "auth.", known, err);
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
        cfg->token_count = i + 1;
        rc = parse_token(o, where, &cfg->tokens[i], err);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

void cfg_http_defaults(struct cofi_http_cfg *http)
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

void cfg_http_free(struct cofi_http_cfg *http)
{
    free(http->log_file);
    http->log_file = NULL;
    free(http->tls_cert_file);
    free(http->tls_key_file);
    http->tls_cert_file = NULL;
    http->tls_key_file = NULL;
}

/* Reads the optional "limits" {metadata_max_bytes, list_max_bytes, db_wait_ms,
 * statement_timeout_ms} object of root. */
static int parse_limits(json_t *root, struct cofi_http_cfg *http, struct cofi_err *err)
{
    static const char *const known[] = {"metadata_max_bytes", "list_max_bytes", "db_wait_ms",
                                        "statement_timeout_ms", NULL};
    const struct cfg_int_key ints[] = {
        {"db_wait_ms", 1, 3600000, &http->db_wait_ms},
        {"statement_timeout_ms", 0, 86400000, &http->statement_timeout_ms},
    };
    json_t *l = json_object_get(root, "limits");
    if (l == NULL) {
        return 0;
    }
    if (!json_is_object(l)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"limits\" must be an object");
    }
    int rc = cfg_check_keys(l, "limits.", known, err);
    if (rc == 0) {
        rc = cfg_get_size(l, "limits.", "metadata_max_bytes", 2, 1LL << 30,
                          &http->metadata_max_bytes, err);
    }
    if (rc == 0) {
        rc = cfg_get_size(l, "limits.", "list_max_bytes", 1024, 1LL << 30, &http->list_max_bytes,
                          err);
    }
    if (rc == 0) {
        rc = cfg_get_int32s(l, "limits.", ints, sizeof ints / sizeof ints[0], err);
    }
    return rc;
}

/* Reads the optional "http" {max_connections, max_connections_per_client, idle_timeout_ms,
 * request_timeout_ms, handler_threads, handler_queue} object of root. */
static int parse_http_object(json_t *root, struct cofi_http_cfg *http, struct cofi_err *err)
{
    static const char *const known[] = {"max_connections",
                                        "max_connections_per_client",
                                        "idle_timeout_ms",
                                        "request_timeout_ms",
                                        "handler_threads",
                                        "handler_queue",
                                        NULL};
    const struct cfg_int_key ints[] = {
        {"max_connections", 1, 65536, &http->max_connections},
        {"max_connections_per_client", 0, 65536, &http->max_connections_per_client},
        {"idle_timeout_ms", 1000, 3600000, &http->idle_timeout_ms},
        {"request_timeout_ms", 100, 3600000, &http->request_timeout_ms},
        {"handler_threads", 1, 1024, &http->handler_threads},
        {"handler_queue", 1, 100000, &http->handler_queue},
    };
    json_t *h = json_object_get(root, "http");
    if (h == NULL) {
        return 0;
    }
    if (!json_is_object(h)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"http\" must be an object");
    }
    int rc = cfg_check_keys(h, "http.", known, err);
    if (rc == 0) {
        rc = cfg_get_int32s(h, "http.", ints, sizeof ints / sizeof ints[0], err);
    }
    return rc;
}

/* Reads the optional "tls" {cert_file, key_file} object of root (null: none). */
static int parse_tls(json_t *root, struct cofi_http_cfg *http, struct cofi_err *err)
{
    static const char *const known[] = {"cert_file", "key_file", NULL};
    json_t *t = json_object_get(root, "tls");
    if (t == NULL || json_is_null(t)) {
        return 0;
    }
    if (!json_is_object(t)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"tls\" must be an object");
    }
    int rc = cfg_check_keys(t, "tls.", known, err);
    if (rc == 0) {
        rc = cfg_get_str(t, "tls.", "cert_file", &http->tls_cert_file, err);
    }
    if (rc == 0) {
        rc = cfg_get_str(t, "tls.", "key_file", &http->tls_key_file, err);
    }
    if (rc == 0 && (http->tls_cert_file == NULL || http->tls_key_file == NULL)) {
        rc = cofi_err_set(err, COFI_E_INVALID,
                          "configuration key \"tls\" needs both \"cert_file\" and \"key_file\"");
    }
    return rc;
}

int cfg_parse_http(json_t *root, struct cofi_http_cfg *http, struct cofi_err *err)
{
    int rc = parse_http_object(root, http, err);
    if (rc == 0) {
        rc = parse_limits(root, http, err);
    }
    if (rc == 0) {
        rc = cfg_get_str(root, "", "log_file", &http->log_file, err);
    }
    if (rc == 0) {
        rc = parse_tls(root, http, err);
    }
    return rc;
}
