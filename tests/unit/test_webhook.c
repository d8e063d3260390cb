/* Completion webhooks, the pure parts: the signature scheme, the back-off, the checks of a
 * callback_url and the webhook_secret_env configuration key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/config.h"
#include "handlers/handlers.h"
#include "pipeline/webhook.h"

/* The receiver's side of README "Webhooks", in Python:
 * hmac.new(b"whsec", b"1700000000." + b'{"id":1}', hashlib.sha256).hexdigest() */
static void test_signature_is_hmac_of_timestamp_dot_body(void **state)
{
    (void)state;
    char sig[WEBHOOK_SIGNATURE_LEN];
    const char *body = "{\"id\":1}";
    assert_int_equal(webhook_sign("whsec", "1700000000", body, strlen(body), sig), 0);
    assert_string_equal(sig,
                        "sha256=e79220cb981f992adbc8b93ac6d46028b0217ea19327d27dc9d18bf334403bde");
    /* Another timestamp, another signature: a replayed body can't carry a new time. */
    char other[WEBHOOK_SIGNATURE_LEN];
    assert_int_equal(webhook_sign("whsec", "1700000001", body, strlen(body), other), 0);
    assert_string_not_equal(sig, other);
}

static void test_backoff_doubles_with_jitter_up_to_the_cap(void **state)
{
    (void)state;
    uint64_t seed = 12345;
    for (int i = 0; i < 200; i++) {
        int64_t first = webhook_retry_ms(1, &seed);
        assert_true(first >= WEBHOOK_BACKOFF_BASE_MS / 2 && first <= WEBHOOK_BACKOFF_BASE_MS);
        int64_t third = webhook_retry_ms(3, &seed);
        assert_true(third >= 2 * WEBHOOK_BACKOFF_BASE_MS && third <= 4 * WEBHOOK_BACKOFF_BASE_MS);
        int64_t late = webhook_retry_ms(1000, &seed);
        assert_true(late >= WEBHOOK_BACKOFF_MAX_MS / 2 && late <= WEBHOOK_BACKOFF_MAX_MS);
    }
}

/* req_check_callback_url on a JSON string; returns its status. */
static int check(const char *url)
{
    json_t *v = json_string(url);
    const char *out = NULL;
    struct cofi_err err;
    int rc = req_check_callback_url(v, &out, &err);
    if (rc == 0) {
        assert_string_equal(out, url);
    }
    json_decref(v);
    return rc;
}

static void test_callback_url_accepts_absolute_http_urls(void **state)
{
    (void)state;
    const char *good[] = {"http://127.0.0.1/",   "https://hooks.example.com/cofi?team=a&x=%20",
                          "http://[::1]:8080/h", "HTTPS://Example.COM",
                          "http://a:65535",      "http://host_name.local/p/a/t/h"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(check(good[i]), 0);
    }
    json_t *null = json_null();
    const char *out = "x";
    struct cofi_err err;
    assert_int_equal(req_check_callback_url(null, &out, &err), 0);
    assert_null(out);
    json_decref(null);
}

static void test_callback_url_refuses_the_rest(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         "ftp://127.0.0.1/",
                         "//127.0.0.1/",
                         "http:/127.0.0.1/",
                         "http://",
                         "http:///p",
                         "http://u:p@127.0.0.1/",
                         "http://127.0.0.1/#f",
                         "http://a b/",
                         "http://a/\x7f",
                         "http://h\xc3\xa9/",
                         "http://a:0/",
                         "http://a:65536/",
                         "http://a:/",
                         "http://a:8x/",
                         "http://[::1/",
                         "http://[]/",
                         "http://a!b/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (check(bad[i]) != COFI_E_INVALID) {
            fail_msg("\"%s\" was not refused with COFI_E_INVALID", bad[i]);
        }
    }
    char longer[CALLBACK_URL_MAX + 2];
    memset(longer, 'a', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    memcpy(longer, "http://h/", 9);
    assert_int_equal(check(longer), COFI_E_INVALID);
    longer[CALLBACK_URL_MAX] = '\0';
    assert_int_equal(check(longer), 0);

    json_t *n = json_integer(1);
    const char *out = NULL;
    struct cofi_err err;
    assert_int_equal(req_check_callback_url(n, &out, &err), COFI_E_BAD_REQUEST);
    json_decref(n);
    json_t *nul = json_stringn("http://a/\0x", 11);
    assert_int_equal(req_check_callback_url(nul, &out, &err), COFI_E_INVALID);
    json_decref(nul);
}

static void test_webhook_secret_env_is_read_at_start(void **state)
{
    (void)state;
    const char *base = "{\"input_root\": \"/tmp\", \"nodes\": [{\"id\": \"g1\", \"url\": "
                       "\"http://127.0.0.1:1\"}], \"llm\": {\"url\": \"http://127.0.0.1:2\"}";
    char text[512];
    struct cofi_config cfg;
    struct cofi_err err;
    snprintf(text, sizeof text, "%s}", base);
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_null(cfg.webhook_secret);
    config_free(&cfg);

    snprintf(text, sizeof text, "%s, \"webhook_secret_env\": \"T_WEBHOOK\"}", base);
    unsetenv("T_WEBHOOK");
    assert_int_not_equal(config_parse(text, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "T_WEBHOOK"));
    setenv("T_WEBHOOK", "", 1);
    assert_int_not_equal(config_parse(text, &cfg, &err), 0);
    setenv("T_WEBHOOK", "k3y", 1);
    assert_int_equal(config_parse(text, &cfg, &err), 0);
    assert_string_equal(cfg.webhook_secret, "k3y");
    assert_string_equal(cfg.webhook_secret_env, "T_WEBHOOK");
    config_free(&cfg);

    snprintf(text, sizeof text, "%s, \"webhook_secret_env\": 5}", base);
    assert_int_not_equal(config_parse(text, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "webhook_secret_env"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signature_is_hmac_of_timestamp_dot_body),
        cmocka_unit_test(test_backoff_doubles_with_jitter_up_to_the_cap),
        cmocka_unit_test(test_callback_url_accepts_absolute_http_urls),
        cmocka_unit_test(test_callback_url_refuses_the_rest),
        cmocka_unit_test(test_webhook_secret_env_is_read_at_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
