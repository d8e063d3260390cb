/* cofi's command line: commands, options before and after them, values with '=' or apart,
 * the environment's URL and token, and every mistake a usage error (64) with a message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cli/args.h"

#define ARGV(...) ((char *[]){"cofi", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"cofi", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(a, err, ...)                                                                         \
    cli_args_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), NULL, NULL, (a), (err), sizeof(err))

static void test_submit_with_every_option(void **state)
{
    (void)state;
    struct cli_args a;
    char err[256];
    int rc = PARSE(&a, err, "--json", "submit", "--root", "/data", "--name=nightly", "a.wav",
                   "dir/", "--idempotency-key", "k1", "--priority", "3", "--metadata", "{\"x\":1}",
                   "--run", "--mode", "staged");
    assert_int_equal(rc, 0);
    assert_int_equal(a.cmd, CLI_CMD_SUBMIT);
    assert_true(a.json);
    assert_string_equal(a.root, "/data");
    assert_string_equal(a.name, "nightly");
    assert_int_equal(a.path_count, 2);
    assert_string_equal(a.paths[0], "a.wav");
    assert_string_equal(a.paths[1], "dir/");
    assert_string_equal(a.idempotency_key, "k1");
    assert_int_equal(a.priority, 3);
    assert_string_equal(a.metadata, "{\"x\":1}");
    assert_true(a.run);
    assert_string_equal(a.mode, "staged");
    assert_string_equal(a.url, CLI_DEFAULT_URL);
    assert_null(a.token);
    cli_args_free(&a);
}

static void test_url_and_token_from_the_environment_and_flag(void **state)
{
    (void)state;
    struct cli_args a;
    char err[256];
    char *argv1[] = {"cofi", "ls", NULL};
    assert_int_equal(cli_args_parse(2, argv1, "http://h:1", "tok", &a, err, sizeof err), 0);
    assert_string_equal(a.url, "http://h:1");
    assert_string_equal(a.token, "tok");
    cli_args_free(&a);
    char *argv2[] = {"cofi", "ls", "--url", "https://x:2", NULL};
    assert_int_equal(cli_args_parse(4, argv2, "http://h:1", "", &a, err, sizeof err), 0);
    assert_string_equal(a.url, "https://x:2");
    assert_null(a.token);
    cli_args_free(&a);
}

static void test_batch_commands_take_an_id(void **state)
{
    (void)state;
    struct cli_args a;
    char err[256];
    assert_int_equal(PARSE(&a, err, "show", "12", "345"), 0);
    assert_int_equal(a.cmd, CLI_CMD_SHOW);
    assert_string_equal(a.id, "12");
    assert_string_equal(a.call_id, "345");
    cli_args_free(&a);
    assert_int_equal(PARSE(&a, err, "retry", "7", "--stages", "stt,llm1", "--calls=3,4"), 0);
    assert_string_equal(a.stages, "stt,llm1");
    assert_string_equal(a.calls, "3,4");
    cli_args_free(&a);
    assert_int_equal(PARSE(&a, err, "ls", "--state", "running", "--limit", "5"), 0);
    assert_string_equal(a.state, "running");
    assert_int_equal(a.limit, 5);
    cli_args_free(&a);
    assert_int_equal(PARSE(&a, err, "results", "--csv", "9"), 0);
    assert_true(a.csv);
    cli_args_free(&a);
    assert_int_equal(PARSE(&a, err, "watch", "9", "--interval", "200"), 0);
    assert_int_equal(a.interval_ms, 200);
    cli_args_free(&a);
}

static void test_help_everywhere(void **state)
{
    (void)state;
    struct cli_args a;
    char err[256];
    assert_int_equal(PARSE(&a, err, "--help"), 0);
    assert_true(a.help);
    assert_int_equal(a.cmd, CLI_CMD_NONE);
    assert_non_null(strstr(cli_help(a.cmd), "Commands:"));
    cli_args_free(&a);
    assert_int_equal(PARSE(&a, err, "retry", "-h"), 0);
    assert_true(a.help);
    assert_non_null(strstr(cli_help(a.cmd), "--stages"));
    cli_args_free(&a);
}

/* Each line is a usage error whose message holds the given words. */
static void expect_usage(int argc, char **argv, const char *words)
{
    struct cli_args a;
    char err[256];
    assert_int_equal(cli_args_parse(argc, argv, NULL, NULL, &a, err, sizeof err),
                     CLI_EXIT_BAD_USAGE);
    if (strstr(err, words) == NULL) {
        fail_msg("'%s' does not say '%s'", err, words);
    }
    cli_args_free(&a);
}

#define EXPECT_USAGE(words, ...) expect_usage(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), (words))

static void test_mistakes_are_usage_errors(void **state)
{
    (void)state;
    expect_usage(1, (char *[]){"cofi", NULL}, "a command is required");
    EXPECT_USAGE("unknown command", "frobnicate");
    EXPECT_USAGE("unknown option", "ls", "--bogus");
    EXPECT_USAGE("ls takes no option --run", "ls", "--run");
    EXPECT_USAGE("goes after its command", "--state", "running", "ls");
    EXPECT_USAGE("needs a value", "ls", "--limit");
    EXPECT_USAGE("--limit", "ls", "--limit", "0");
    EXPECT_USAGE("--limit", "ls", "--limit", "5x");
    EXPECT_USAGE("--state", "ls", "--state", "sleeping");
    EXPECT_USAGE("--priority", "submit", "a", "--priority", "0");
    EXPECT_USAGE("--mode", "submit", "a", "--run", "--mode", "fast");
    EXPECT_USAGE("--mode goes with --run", "submit", "a", "--mode", "staged");
    EXPECT_USAGE("at least one file", "submit", "--run");
    EXPECT_USAGE("needs a batch id", "watch");
    EXPECT_USAGE("must be a number", "cancel", "abc");
    EXPECT_USAGE("call id", "show", "1", "x");
    EXPECT_USAGE("unexpected operand", "pause", "1", "2");
    EXPECT_USAGE("takes no value", "results", "--csv=yes", "1");
    EXPECT_USAGE("--url", "ls", "--url", "ftp://x");
    EXPECT_USAGE("takes no operand", "ls", "3");
}

static void test_double_dash_ends_options(void **state)
{
    (void)state;
    struct cli_args a;
    char err[256];
    assert_int_equal(PARSE(&a, err, "submit", "--", "--odd-name.wav"), 0);
    assert_int_equal(a.path_count, 1);
    assert_string_equal(a.paths[0], "--odd-name.wav");
    cli_args_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_submit_with_every_option),
        cmocka_unit_test(test_url_and_token_from_the_environment_and_flag),
        cmocka_unit_test(test_batch_commands_take_an_id),
        cmocka_unit_test(test_help_everywhere),
        cmocka_unit_test(test_mistakes_are_usage_errors),
        cmocka_unit_test(test_double_dash_ends_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
