/* Logging: every line is one line, whatever the message holds (no forged log lines). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/log.h"

static void test_escape_control_characters(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(log_escape("plain text/ok", out, sizeof out), 13);
    assert_string_equal(out, "plain text/ok");
    log_escape("a\nb\rc\td", out, sizeof out);
    assert_string_equal(out, "a\\nb\\rc\\td");
    log_escape("nul\x01\x1b[31m\x7f", out, sizeof out);
    assert_string_equal(out, "nul\\x01\\x1b[31m\\x7f");
    /* UTF-8 bytes pass as they are. */
    log_escape("caf\xc3\xa9", out, sizeof out);
    assert_string_equal(out, "caf\xc3\xa9");
}

static void test_escape_never_overflows(void **state)
{
    (void)state;
    char out[6];
    /* "\x01" needs 4 bytes: "ab" fits, the escape does not. */
    assert_int_equal(log_escape("ab\x01zz", out, sizeof out), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(log_escape("abcdefgh", out, sizeof out), 5);
    assert_string_equal(out, "abcde");
}

/* Runs log_msg with stderr sent to a temporary file; returns what was written (freed by the
 * caller). */
static char *captured(const char *fmt_arg)
{
    fflush(stderr);
    int saved = dup(2);
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    dup2(fileno(tmp), 2);
    log_msg(LOG_WARN, "GET %s failed", fmt_arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fseek(tmp, 0, SEEK_END);
    long n = ftell(tmp);
    rewind(tmp);
    char *text = calloc(1, (size_t)n + 1);
    assert_int_equal(fread(text, 1, (size_t)n, tmp), (size_t)n);
    fclose(tmp);
    return text;
}

static void test_forged_line_stays_one_line(void **state)
{
    (void)state;
    char *text = captured("/batches\n2026-01-01T00:00:00.000Z INFO  cofid: forged\r\x1b[2K");
    char *nl = strchr(text, '\n');
    assert_non_null(nl);
    assert_string_equal(nl + 1, ""); /* exactly one line, ending with its newline */
    assert_non_null(strstr(text, "/batches\\n2026-01-01T00:00:00.000Z INFO  cofid: forged\\r"
                                 "\\x1b[2K failed"));
    assert_non_null(strstr(text, " WARN  "));
    free(text);
}

static void test_long_message_is_cut_to_one_line(void **state)
{
    (void)state;
    size_t n = 10000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        big[i] = i % 50 == 0 ? '\n' : 'x';
    }
    big[n] = '\0';
    char *text = captured(big);
    char *nl = strchr(text, '\n');
    assert_non_null(nl);
    assert_string_equal(nl + 1, "");
    assert_true(strlen(text) < 2100);
    free(text);
    free(big);
}

static void test_json_line_escapes_and_types(void **state)
{
    (void)state;
    char out[1024];
    struct log_field f[] = {{"route", "/batches/{}", false},
                            {"status", "200", true},
                            {"completed", "true", true},
                            {"bogus_number", "1;drop", true},
                            {"who", "a\"b\\c\n", false}};
    size_t n = log_json_line(out, sizeof out, "2026-01-01T00:00:00.000Z", "info", "cofid",
                             "line\nbreak \x01 \"q\" caf\xc3\xa9", "rid-1", f, 5);
    assert_int_equal(n, strlen(out));
    assert_string_equal(out, "{\"ts\":\"2026-01-01T00:00:00.000Z\",\"level\":\"info\","
                             "\"ident\":\"cofid\",\"msg\":\"line\\nbreak \\u0001 \\\"q\\\" "
                             "caf\xc3\xa9\",\"request_id\":\"rid-1\",\"route\":\"/batches/{}\","
                             "\"status\":200,\"completed\":true,\"bogus_number\":\"1;drop\","
                             "\"who\":\"a\\\"b\\\\c\\n\"}\n");
}

static void test_json_line_makes_invalid_utf8_valid(void **state)
{
    (void)state;
    char out[512];
    log_json_line(out, sizeof out, "t", "warn", "cofid", "bad \xff\xfe end", NULL, NULL, 0);
    assert_non_null(strstr(out, "\"msg\":\"bad \xef\xbf\xbd\xef\xbf\xbd end\"}"));
}

static void test_json_line_is_cut_whole(void **state)
{
    (void)state;
    char out[600];
    char big[3000];
    for (size_t i = 0; i < sizeof big - 1; i++) {
        big[i] = i % 3 == 0 ? '"' : (i % 3 == 1 ? 'x' : '\xc3');
    }
    big[sizeof big - 1] = '\0';
    /* Some 0xc3 lead bytes without their continuation: sanitised; quotes escaped; cut. */
    struct log_field f[] = {{"request", "kept", false}};
    size_t n = log_json_line(out, sizeof out, "t", "info", "cofid", big, "r", f, 1);
    assert_true(n < sizeof out);
    assert_int_equal(out[n - 1], '\n');
    assert_int_equal(out[n - 2], '}');
    assert_non_null(strstr(out, "\"request\":\"kept\"}"));
    json_error_t jerr;
    json_t *parsed = json_loads(out, 0, &jerr);
    assert_non_null(parsed);
    json_decref(parsed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_control_characters),
        cmocka_unit_test(test_escape_never_overflows),
        cmocka_unit_test(test_forged_line_stays_one_line),
        cmocka_unit_test(test_long_message_is_cut_to_one_line),
        cmocka_unit_test(test_json_line_escapes_and_types),
        cmocka_unit_test(test_json_line_makes_invalid_utf8_valid),
        cmocka_unit_test(test_json_line_is_cut_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
