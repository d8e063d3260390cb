/* Worker exchanges: the reply cap, outcomes and error texts, against an in-process HTTP server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "common/stages.h"
#include "common/utf8.h"
#include "pipeline/worker_http.h"

/* Bodies the server answers with (persistent while it runs). */
static char *over_cap_body;     /* WORKER_REPLY_LIMIT + 5000 bytes */
static char *at_cap_body;       /* a JSON object of exactly WORKER_REPLY_LIMIT bytes */
static char garbage_body[1024]; /* not UTF-8, with controls */
static size_t garbage_len;

static struct MHD_Daemon *daemon_;
static uint16_t port;

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned int status, const char *body,
                              size_t len, const char *retry_after)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        return MHD_NO;
    }
    if (retry_after != NULL) {
        MHD_add_response_header(r, "Retry-After", retry_after);
    }
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    static int started;
    (void)cls;
    (void)method;
    (void)version;
    (void)upload_data;
    if (*req_cls == NULL) {
        *req_cls = &started;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        *upload_data_size = 0; /* the request body is not looked at */
        return MHD_YES;
    }
    if (strcmp(url, "/over") == 0) {
        return answer(conn, 200, over_cap_body, WORKER_REPLY_LIMIT + 5000, NULL);
    }
    if (strcmp(url, "/over503") == 0) {
        return answer(conn, 503, over_cap_body, WORKER_REPLY_LIMIT + 5000, "1");
    }
    if (strcmp(url, "/at") == 0) {
        return answer(conn, 200, at_cap_body, WORKER_REPLY_LIMIT, NULL);
    }
    if (strcmp(url, "/garbage") == 0) {
        return answer(conn, 400, garbage_body, garbage_len, NULL);
    }
    if (strcmp(url, "/busy") == 0) {
        return answer(conn, 503, "busy\n", 5, "2");
    }
    return answer(conn, 200, "{\"ok\":true}", 11, NULL);
}

static int setup(void **state)
{
    (void)state;
    over_cap_body = malloc(WORKER_REPLY_LIMIT + 5000);
    at_cap_body = malloc(WORKER_REPLY_LIMIT);
    if (over_cap_body == NULL || at_cap_body == NULL) {
        return -1;
    }
    memset(over_cap_body, 'a', WORKER_REPLY_LIMIT + 5000);
    memset(at_cap_body, 'b', WORKER_REPLY_LIMIT);
    memcpy(at_cap_body, "{\"b\":\"", 6);
    memcpy(at_cap_body + WORKER_REPLY_LIMIT - 2, "\"}", 2);
    /* bad lead bytes, a line break, a terminal escape, then 2-byte characters past the
     * excerpt's length, so the cut falls among them */
    size_t n = 0;
    const char head[] = "\xFF\xFE oops\r\n\x1b[31m \xE2\x82 ";
    memcpy(garbage_body, head, sizeof head - 1);
    n = sizeof head - 1;
    while (n + 2 < 400) {
        garbage_body[n++] = '\xC3';
        garbage_body[n++] = '\xA9';
    }
    garbage_len = n;

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                               on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                               MHD_OPTION_END);
    if (daemon_ == NULL) {
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    if (info == NULL || info->port == 0) {
        return -1;
    }
    port = info->port;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    MHD_stop_daemon(daemon_);
    free(over_cap_body);
    free(at_cap_body);
    curl_global_cleanup();
    return 0;
}

/* Runs one exchange against the server's path and leaves its outcome in *o. */
static void exchange_with(const char *path, struct job_outcome *o)
{
    CURL *easy = curl_easy_init();
    assert_non_null(easy);
    struct exchange x;
    memset(&x, 0, sizeof x);
    buf_init(&x.reply, WORKER_REPLY_LIMIT);
    struct job j;
    memset(&j, 0, sizeof j);
    snprintf(j.call_id_str, sizeof j.call_id_str, "42");
    j.stage = STAGE_DENOISE;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", (unsigned)port, path);
    char *body = strdup("{}");
    assert_non_null(body);
    assert_int_equal(exchange_prepare(easy, &x, url, &j, "rid-1", body, NULL, 10000), 0);
    CURLcode rc = curl_easy_perform(easy);
    exchange_outcome(easy, rc, &x, o);
    exchange_reset(&x);
    buf_free(&x.reply);
    curl_easy_cleanup(easy);
}

static void assert_error_is_clean(const char *error)
{
    size_t len = strlen(error);
    assert_true(utf8_is_valid(error, len));
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)error[i];
        assert_true(c >= 0x20 && c != 0x7F);
    }
}

static void test_reply_over_the_cap_is_permanent(void **state)
{
    (void)state;
    struct job_outcome o;
    exchange_with("/over", &o);
    assert_int_equal(o.kind, OUTCOME_PERMANENT);
    assert_string_equal(o.error, "reply too large (over 16777216 bytes)");
    assert_null(o.result);
    assert_null(o.result_text);
    /* also when the status alone would have said "retry" */
    exchange_with("/over503", &o);
    assert_int_equal(o.kind, OUTCOME_PERMANENT);
    assert_non_null(strstr(o.error, "too large"));
}

static void test_reply_at_the_cap_is_accepted(void **state)
{
    (void)state;
    struct job_outcome o;
    exchange_with("/at", &o);
    assert_int_equal(o.kind, OUTCOME_OK);
    assert_true(json_is_object(o.result));
    assert_non_null(o.result_text);
    assert_int_equal(strlen(o.result_text), WORKER_REPLY_LIMIT);
    json_decref(o.result);
    free(o.result_text);
}

static void test_small_reply_is_ok(void **state)
{
    (void)state;
    struct job_outcome o;
    exchange_with("/ok", &o);
    assert_int_equal(o.kind, OUTCOME_OK);
    assert_string_equal(o.result_text, "{\"ok\":true}");
    json_decref(o.result);
    free(o.result_text);
}

static void test_error_excerpt_is_clean_utf8(void **state)
{
    (void)state;
    struct job_outcome o;
    exchange_with("/garbage", &o);
    assert_int_equal(o.kind, OUTCOME_PERMANENT);
    assert_error_is_clean(o.error);
    assert_memory_equal(
        o.error, "HTTP 400: \xEF\xBF\xBD\xEF\xBF\xBD oops   [31m \xEF\xBF\xBD \xC3\xA9",
        strlen("HTTP 400: \xEF\xBF\xBD\xEF\xBF\xBD oops   [31m \xEF\xBF\xBD \xC3\xA9"));
    /* the excerpt keeps at most 159 bytes of the worker's words */
    assert_true(strlen(o.error) <= strlen("HTTP 400: ") + 159);
}

static void test_retryable_status_keeps_retry_after(void **state)
{
    (void)state;
    struct job_outcome o;
    exchange_with("/busy", &o);
    assert_int_equal(o.kind, OUTCOME_RETRY);
    assert_int_equal(o.retry_after_ms, 2000);
    assert_string_equal(o.error, "HTTP 503: busy ");
}

static void test_write_callback_flags_an_overflow_off_the_cap(void **state)
{
    (void)state;
    /* A chunk that crosses the cap without landing on it: the reply stays below the cap, and
     * only the flag tells the outcome why the transfer stopped. */
    struct exchange x;
    memset(&x, 0, sizeof x);
    buf_init(&x.reply, WORKER_REPLY_LIMIT);
    size_t first = WORKER_REPLY_LIMIT - 10;
    char *chunk = malloc(first);
    assert_non_null(chunk);
    memset(chunk, 'c', first);
    assert_int_equal(exchange_on_body(chunk, 1, first, &x), first);
    assert_false(x.reply_too_large);
    assert_int_equal(exchange_on_body(chunk, 1, 100, &x), 0);
    assert_true(x.reply_too_large);
    assert_false(x.reply_no_memory);
    assert_int_equal(x.reply.len, first);
    struct job_outcome o;
    exchange_outcome(NULL, CURLE_WRITE_ERROR, &x, &o);
    assert_int_equal(o.kind, OUTCOME_PERMANENT);
    assert_non_null(strstr(o.error, "too large"));
    /* reset clears the flag: the next exchange starts clean */
    exchange_reset(&x);
    assert_false(x.reply_too_large);
    assert_int_equal(x.reply.len, 0);
    assert_int_equal(exchange_on_body(chunk, 1, 10, &x), 10);
    exchange_outcome(NULL, CURLE_COULDNT_CONNECT, &x, &o);
    assert_int_equal(o.kind, OUTCOME_RETRY);
    exchange_reset(&x);
    buf_free(&x.reply);
    free(chunk);
}

static void test_transport_error_text_is_clean(void **state)
{
    (void)state;
    struct exchange x;
    memset(&x, 0, sizeof x);
    buf_init(&x.reply, WORKER_REPLY_LIMIT);
    snprintf(x.errbuf, sizeof x.errbuf, "Could not resolve host: \xC3\n\xFFnode");
    struct job_outcome o;
    exchange_outcome(NULL, CURLE_COULDNT_RESOLVE_HOST, &x, &o);
    assert_int_equal(o.kind, OUTCOME_RETRY);
    assert_error_is_clean(o.error);
    assert_string_equal(o.error, "Could not resolve host: \xEF\xBF\xBD \xEF\xBF\xBDnode");
    exchange_reset(&x);
    buf_free(&x.reply);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_over_the_cap_is_permanent),
        cmocka_unit_test(test_reply_at_the_cap_is_accepted),
        cmocka_unit_test(test_small_reply_is_ok),
        cmocka_unit_test(test_error_excerpt_is_clean_utf8),
        cmocka_unit_test(test_retryable_status_keeps_retry_after),
        cmocka_unit_test(test_write_callback_flags_an_overflow_off_the_cap),
        cmocka_unit_test(test_transport_error_text_is_clean),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
