/* Configuration: defaults, every key, environment overrides, errors that name the key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/config.h"

static const char *const base = "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"g1\", "
                                "\"url\": \"http://127.0.0.1:1/\", \"capacity\": 3}],"
                                " \"llm\": {\"url\": \"http://127.0.0.1:2\"}";

static char *with(const char *extra)
{
    size_t n = strlen(base) + strlen(extra) + 4;
    char *s = malloc(n);
    snprintf(s, n, "%s%s}", base, extra);
    return s;
}

static int parse(const char *extra, struct cofi_config *cfg, struct cofi_err *err)
{
    char *text = with(extra);
    int rc = config_parse(text, cfg, err);
    free(text);
    return rc;
}

static void test_defaults_apply(void **state)
{
    (void)state;
    unsetenv("COFI_LISTEN");
    unsetenv("COFI_DATABASE_URL");
    struct cofi_config cfg;
    struct cofi_err err;
    assert_int_equal(parse("", &cfg, &err), 0);
    assert_string_equal(cfg.listen_host, "127.0.0.1");
    assert_int_equal(cfg.listen_port, 8080);
    assert_int_equal(cfg.llm_concurrency, 100);
    assert_int_equal(cfg.mediator.max_attempts, 5);
    assert_int_equal(cfg.max_body_bytes, 67108864);
    assert_string_equal(cfg.nodes[0].url, "http://127.0.0.1:1");
    assert_int_equal(cfg.nodes[0].capacity, 3);
    assert_int_equal(cfg.token_count, 0);
    config_free(&cfg);
}

static void test_unknown_key_is_named(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    assert_int_not_equal(parse(", \"bogus\": 1", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "bogus"));
    assert_int_not_equal(parse(", \"mediator\": {\"timeout\": 5}", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "mediator.timeout"));
}

static void test_bad_values_are_named(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    const char *zero =
        "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"a\", \"url\": \"http://1\"}],"
        " \"llm\": {\"url\": \"http://x\", \"concurrency\": 0}}";
    assert_int_not_equal(config_parse(zero, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "llm.concurrency"));
    assert_int_not_equal(parse(", \"listen\": \"nope\"", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "listen"));
    assert_int_not_equal(parse(", \"input_root\": \"/definitely/not/here\"", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "input_root"));
    assert_int_not_equal(config_parse("{not json", &cfg, &err), 0);
}

static void test_env_overrides(void **state)
{
    (void)state;
    setenv("COFI_LISTEN", "[::1]:9999", 1);
    setenv("COFI_DATABASE_URL", "postgresql://u:secret@h/db", 1);
    struct cofi_config cfg;
    struct cofi_err err;
    assert_int_equal(parse(", \"listen\": \"0.0.0.0:1\"", &cfg, &err), 0);
    assert_string_equal(cfg.listen_host, "::1");
    assert_int_equal(cfg.listen_port, 9999);
    assert_string_equal(cfg.database_url, "postgresql://u:secret@h/db");
    config_free(&cfg);
    unsetenv("COFI_LISTEN");
    unsetenv("COFI_DATABASE_URL");
}

static void test_auth_tokens_from_env(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    const char *auth =
        ", \"auth\": {\"tokens\": [{\"token_env\": \"T_OPS\", \"scope\": \"write\"}]}";
    unsetenv("T_OPS");
    assert_int_not_equal(parse(auth, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "T_OPS"));
    setenv("T_OPS", "s3cret", 1);
    assert_int_equal(parse(auth, &cfg, &err), 0);
    assert_int_equal(cfg.token_count, 1);
    assert_true(cfg.tokens[0].write);
    assert_string_equal(cfg.tokens[0].token, "s3cret");
    config_free(&cfg);
}

static void test_duplicate_node_ids_rejected(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    const char *text =
        "{\"input_root\": \"/tmp\", \"llm\": {\"url\": \"http://x\"}, \"nodes\": ["
        "{\"id\": \"a\", \"url\": \"http://1\"}, {\"id\": \"a\", \"url\": \"http://2\"}]}";
    assert_int_not_equal(config_parse(text, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "nodes[1].id"));
}

static void test_status_cache_ms(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    assert_int_equal(parse("", &cfg, &err), 0);
    assert_int_equal(cfg.status_cache_ms, 100);
    config_free(&cfg);
    assert_int_equal(parse(", \"status_cache_ms\": 0", &cfg, &err), 0);
    assert_int_equal(cfg.status_cache_ms, 0);
    config_free(&cfg);
    assert_int_equal(parse(", \"status_cache_ms\": 10000", &cfg, &err), 0);
    assert_int_equal(cfg.status_cache_ms, 10000);
    config_free(&cfg);
    const char *bad[] = {", \"status_cache_ms\": -1", ", \"status_cache_ms\": 10001",
                         ", \"status_cache_ms\": \"100\"", ", \"status_cache_ms\": 1.5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(parse(bad[i], &cfg, &err), 0);
        assert_non_null(strstr(err.msg, "status_cache_ms"));
    }
}

static void test_retry_after_max_ms(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    assert_int_equal(parse("", &cfg, &err), 0);
    assert_int_equal(cfg.mediator.retry_after_max_ms, 60000);
    assert_int_equal(cfg.llm.retry_after_max_ms, 60000);
    config_free(&cfg);
    assert_int_equal(parse(", \"mediator\": {\"retry_after_max_ms\": 1000}", &cfg, &err), 0);
    assert_int_equal(cfg.mediator.retry_after_max_ms, 1000);
    assert_int_equal(cfg.llm.retry_after_max_ms, 60000);
    config_free(&cfg);
    const char *llm = "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"a\", \"url\": "
                      "\"http://1\"}], \"llm\": {\"url\": \"http://x\", \"retry_after_max_ms\": "
                      "86400000}}";
    assert_int_equal(config_parse(llm, &cfg, &err), 0);
    assert_int_equal(cfg.llm.retry_after_max_ms, 86400000);
    assert_int_equal(cfg.mediator.retry_after_max_ms, 60000);
    config_free(&cfg);
    const char *bad[] = {", \"mediator\": {\"retry_after_max_ms\": 999}",
                         ", \"mediator\": {\"retry_after_max_ms\": 86400001}",
                         ", \"mediator\": {\"retry_after_max_ms\": \"60000\"}",
                         ", \"mediator\": {\"retry_after_max_ms\": -1}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(parse(bad[i], &cfg, &err), 0);
        assert_non_null(strstr(err.msg, "mediator.retry_after_max_ms"));
    }
    const char *bad_llm = "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"a\", \"url\": "
                          "\"http://1\"}], \"llm\": {\"url\": \"http://x\", "
                          "\"retry_after_max_ms\": 0}}";
    assert_int_not_equal(config_parse(bad_llm, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "llm.retry_after_max_ms"));
}

/* Parses a configuration with one node of the given id and url (each a JSON literal). */
static int parse_node(const char *id, const char *url, struct cofi_config *cfg,
                      struct cofi_err *err)
{
    char text[1024];
    snprintf(text, sizeof text,
             "{\"input_root\": \"/tmp\", \"llm\": {\"url\": \"http://x\"}, \"nodes\": ["
             "{\"id\": \"ok-0\", \"url\": \"http://h0\"}, {\"id\": %s, \"url\": %s}]}",
             id, url);
    return config_parse(text, cfg, err);
}

static void test_node_ids_follow_the_rule(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    const char *good[] = {"\"a\"", "\"gpu-1\"", "\"Rack7.gpu_2:slot-3\"",
                          "\"0123456789012345678901234567890123456789012345678901234567890123\""};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(parse_node(good[i], "\"http://h1\"", &cfg, &err), 0);
        assert_int_equal(cfg.node_count, 2);
        config_free(&cfg);
    }
    const char *bad[] = {
        "\"gpu 1\"",      "\"gpu/1\"",
        "\"g\\u00fcpu\"", "\"a\\nb\"",
        "\"a\\\"b\"",     "\"01234567890123456789012345678901234567890123456789012345678901234\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(parse_node(bad[i], "\"http://h1\"", &cfg, &err), 0);
        /* the error names the node's index, the offending id and the rule */
        assert_non_null(strstr(err.msg, "nodes[1].id"));
        assert_non_null(strstr(err.msg, "1 to 64 characters of A-Z a-z 0-9 . _ : -"));
        assert_null(strchr(err.msg, '\n'));
    }
    assert_int_not_equal(parse_node("\"gpu 1\"", "\"http://h1\"", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "\"gpu 1\""));
    assert_int_not_equal(parse_node("\"\"", "\"http://h1\"", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "nodes[1].id"));
    assert_int_not_equal(parse_node("7", "\"http://h1\"", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "nodes[1].id"));
    /* unique, case and all */
    assert_int_not_equal(parse_node("\"ok-0\"", "\"http://h1\"", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "used twice"));
    assert_int_equal(parse_node("\"OK-0\"", "\"http://h1\"", &cfg, &err), 0);
    config_free(&cfg);
}

static void test_node_urls_are_http_base_urls(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    const char *good[] = {"\"http://1\"", "\"http://127.0.0.1:1/\"",
                          "\"https://gpu-1.internal:8443/mediator/\"", "\"http://[::1]:8000\"",
                          "\"HTTP://Gpu1:65535\""};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(parse_node("\"n\"", good[i], &cfg, &err), 0);
        config_free(&cfg);
    }
    assert_int_equal(parse_node("\"n\"", "\"https://h:8443/m//\"", &cfg, &err), 0);
    assert_string_equal(cfg.nodes[1].url, "https://h:8443/m");
    config_free(&cfg);
    const char *bad[] = {"\"ftp://h\"",        "\"h:8000\"",          "\"http://\"",
                         "\"http:///x\"",      "\"http://h:\"",       "\"http://h:0\"",
                         "\"http://h:65536\"", "\"http://h:8o\"",     "\"http://h x\"",
                         "\"http://h/?q=1\"",  "\"http://h/#f\"",     "\"http://u:p@h\"",
                         "\"http://[::1\"",    "\"http://h\\u00e9\"", "\"http://h\\n/\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(parse_node("\"n\"", bad[i], &cfg, &err), 0);
        assert_non_null(strstr(err.msg, "nodes[1].url"));
        assert_null(strchr(err.msg, '\n'));
    }
    const char *llm = "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"a\", \"url\": "
                      "\"http://1\"}], \"llm\": {\"url\": \"http://nlp?key=1\"}}";
    assert_int_not_equal(config_parse(llm, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "llm.url"));
}

static void test_many_nodes_are_accepted(void **state)
{
    (void)state;
    /* no hidden limit on the number of nodes (the engine once had arrays of 64) */
    size_t n = 300;
    size_t cap = 256 + n * 64;
    char *text = malloc(cap);
    assert_non_null(text);
    size_t len = (size_t)snprintf(text, cap,
                                  "{\"input_root\": \"/tmp\", \"llm\": {\"url\": "
                                  "\"http://x\"}, \"nodes\": [");
    for (size_t i = 0; i < n; i++) {
        len += (size_t)snprintf(text + len, cap - len,
                                "%s{\"id\": \"gpu-%zu\", \"url\": \"http://10.0.%zu.%zu:8000\"}",
                                i > 0 ? ", " : "", i, i / 250, i % 250);
    }
    snprintf(text + len, cap - len, "]}");
    struct cofi_config cfg;
    struct cofi_err err;
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_int_equal(cfg.node_count, n);
    assert_string_equal(cfg.nodes[n - 1].id, "gpu-299");
    config_free(&cfg);
    free(text);
}

static void test_http_defences(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    assert_int_equal(parse("", &cfg, &err), 0);
    assert_int_equal(cfg.http.max_connections, 1024);
    assert_int_equal(cfg.http.max_connections_per_client, 64);
    assert_int_equal(cfg.http.idle_timeout_ms, 30000);
    assert_int_equal(cfg.http.request_timeout_ms, 30000);
    assert_int_equal(cfg.http.metadata_max_bytes, 65536);
    assert_int_equal(cfg.http.list_max_bytes, 1048576);
    assert_int_equal(cfg.http.handler_threads, 8);
    assert_int_equal(cfg.http.handler_queue, 256);
    assert_int_equal(cfg.http.db_wait_ms, 5000);
    assert_int_equal(cfg.http.statement_timeout_ms, 30000);
    assert_null(cfg.http.tls_cert_file);
    config_free(&cfg);
    assert_int_equal(parse(", \"http\": {\"max_connections\": 10, \"max_connections_per_client\": "
                           "0, \"idle_timeout_ms\": 5000, \"request_timeout_ms\": 2000}, "
                           "\"limits\": {\"metadata_max_bytes\": 100, \"list_max_bytes\": 4096}, "
                           "\"tls\": {\"cert_file\": \"/c.pem\", \"key_file\": \"/k.pem\"}",
                           &cfg, &err),
                     0);
    assert_int_equal(cfg.http.max_connections, 10);
    assert_int_equal(cfg.http.max_connections_per_client, 0);
    assert_int_equal(cfg.http.idle_timeout_ms, 5000);
    assert_int_equal(cfg.http.request_timeout_ms, 2000);
    assert_int_equal(cfg.http.metadata_max_bytes, 100);
    assert_int_equal(cfg.http.list_max_bytes, 4096);
    assert_string_equal(cfg.http.tls_cert_file, "/c.pem");
    assert_string_equal(cfg.http.tls_key_file, "/k.pem");
    config_free(&cfg);
    assert_int_not_equal(parse(", \"http\": {\"max_conns\": 1}", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "http.max_conns"));
    assert_int_not_equal(parse(", \"http\": {\"max_connections\": 0}", &cfg, &err), 0);
    assert_int_not_equal(parse(", \"tls\": {\"cert_file\": \"/c.pem\"}", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "key_file"));
    assert_int_not_equal(parse(", \"limits\": {\"list_max_bytes\": 1}", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "limits.list_max_bytes"));
    assert_int_not_equal(parse(", \"bogus\": 1", &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "bogus"));
}

static void test_log_format(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    assert_int_equal(parse("", &cfg, &err), 0);
    assert_false(cfg.log_json);
    config_free(&cfg);
    assert_int_equal(parse(", \"log_format\": \"json\"", &cfg, &err), 0);
    assert_true(cfg.log_json);
    config_free(&cfg);
    assert_int_equal(parse(", \"log_format\": \"text\"", &cfg, &err), 0);
    assert_false(cfg.log_json);
    config_free(&cfg);
    const char *bad[] = {", \"log_format\": \"JSON\"", ", \"log_format\": \"xml\"",
                         ", \"log_format\": 1", ", \"log_format\": true"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(parse(bad[i], &cfg, &err), 0);
        assert_non_null(strstr(err.msg, "log_format"));
    }
}

static void test_llm_adaptive(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    const char *head = "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"a\", \"url\": "
                       "\"http://1\"}], \"llm\": {\"url\": \"http://x\"";
    char text[512];
    snprintf(text, sizeof text, "%s}}", head);
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_true(cfg.llm_adaptive); /* on unless said otherwise */
    config_free(&cfg);
    snprintf(text, sizeof text, "%s, \"adaptive\": false}}", head);
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_false(cfg.llm_adaptive);
    config_free(&cfg);
    snprintf(text, sizeof text, "%s, \"adaptive\": 1}}", head);
    assert_int_not_equal(config_parse(text, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "llm.adaptive"));
}

static void test_llm_budgets(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    const char *head = "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"a\", \"url\": "
                       "\"http://1\"}], \"llm\": {\"url\": \"http://x\"";
    char text[512];
    snprintf(text, sizeof text, "%s}}", head);
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_int_equal(cfg.llm_tokens_per_minute, 0); /* no budget unless set */
    assert_int_equal(cfg.llm_requests_per_minute, 0);
    assert_int_equal(cfg.llm_completion_tokens, 256);
    config_free(&cfg);
    snprintf(text, sizeof text,
             "%s, \"tokens_per_minute\": 90000, \"requests_per_minute\": 500, "
             "\"completion_tokens\": 40}}",
             head);
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_int_equal(cfg.llm_tokens_per_minute, 90000);
    assert_int_equal(cfg.llm_requests_per_minute, 500);
    assert_int_equal(cfg.llm_completion_tokens, 40);
    config_free(&cfg);
    static const char *const bad[] = {"\"tokens_per_minute\": 0", "\"requests_per_minute\": -1",
                                      "\"tokens_per_minute\": \"1000\"",
                                      "\"completion_tokens\": -5"};
    static const char *const named[] = {"llm.tokens_per_minute", "llm.requests_per_minute",
                                        "llm.tokens_per_minute", "llm.completion_tokens"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "%s, %s}}", head, bad[i]);
        assert_int_not_equal(config_parse(text, &cfg, &err), 0);
        assert_non_null(strstr(err.msg, named[i]));
    }
}

static void test_llm_openai_protocol(void **state)
{
    (void)state;
    struct cofi_config cfg;
    struct cofi_err err;
    const char *head = "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"a\", \"url\": "
                       "\"http://1\"}], \"llm\": {\"url\": \"http://x\"";
    char text[1024];
    snprintf(text, sizeof text, "%s}}", head);
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_false(cfg.llm_openai); /* the cofi protocol unless said otherwise */
    assert_null(cfg.llm_prompts[0]);
    config_free(&cfg);
    snprintf(text, sizeof text,
             "%s, \"protocol\": \"openai\", \"model\": \"m-1\", \"prompts\": {\"llm1\": "
             "\"Sum up {transcript} ({language}) as {\\\"summary\\\": ...}\", \"llm2\": "
             "\"{llm1} {transcript}\"}}}",
             head);
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_true(cfg.llm_openai);
    assert_string_equal(cfg.llm_model, "m-1");
    assert_non_null(strstr(cfg.llm_prompts[0], "{transcript}"));
    assert_string_equal(cfg.llm_prompts[1], "{llm1} {transcript}");
    config_free(&cfg);
    static const char *const bad[] = {
        "\"protocol\": \"grpc\"",
        "\"protocol\": \"openai\"",
        "\"protocol\": \"openai\", \"model\": \"\"",
        "\"model\": \"m\", \"prompts\": []",
        "\"model\": \"m\", \"prompts\": {\"llm3\": \"x\"}",
        "\"model\": \"m\", \"prompts\": {\"llm1\": \"{llm1}\"}",
        "\"model\": \"m\", \"prompts\": {\"llm2\": \"{transcrpt}\"}",
        "\"model\": \"m\", \"prompts\": {\"llm1\": 5}",
    };
    static const char *const named[] = {"llm.protocol",     "llm.model",        "llm.model",
                                        "llm.prompts",      "llm.prompts.llm3", "llm.prompts.llm1",
                                        "llm.prompts.llm2", "llm.prompts.llm1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "%s, %s}}", head, bad[i]);
        assert_int_not_equal(config_parse(text, &cfg, &err), 0);
        if (strstr(err.msg, named[i]) == NULL) {
            fail_msg("case %zu: \"%s\" does not name %s", i, err.msg, named[i]);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_apply),
        cmocka_unit_test(test_unknown_key_is_named),
        cmocka_unit_test(test_bad_values_are_named),
        cmocka_unit_test(test_env_overrides),
        cmocka_unit_test(test_auth_tokens_from_env),
        cmocka_unit_test(test_duplicate_node_ids_rejected),
        cmocka_unit_test(test_status_cache_ms),
        cmocka_unit_test(test_retry_after_max_ms),
        cmocka_unit_test(test_node_ids_follow_the_rule),
        cmocka_unit_test(test_node_urls_are_http_base_urls),
        cmocka_unit_test(test_many_nodes_are_accepted),
        cmocka_unit_test(test_http_defences),
        cmocka_unit_test(test_log_format),
        cmocka_unit_test(test_llm_adaptive),
        cmocka_unit_test(test_llm_budgets),
        cmocka_unit_test(test_llm_openai_protocol),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
