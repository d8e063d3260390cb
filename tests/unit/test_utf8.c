/* UTF-8 helpers: sanitising untrusted bytes, well-formedness, boundary-safe cuts. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/utf8.h"

#define FFFD "\xEF\xBF\xBD"

/* Sanitises the n bytes of in into a 256-byte buffer and checks the result is want. */
static void expect_sanitized(const char *in, size_t n, const char *want)
{
    char out[256];
    memset(out, 'x', sizeof out);
    size_t len = utf8_sanitize(out, sizeof out, in, n);
    assert_string_equal(out, want);
    assert_int_equal(len, strlen(want));
}

static void test_sanitize_keeps_valid_text(void **state)
{
    (void)state;
    expect_sanitized("", 0, "");
    expect_sanitized("plain ascii", 11, "plain ascii");
    /* two-, three- and four-byte characters, the last of each range included */
    const char *mixed =
        "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xDF\xBF\xEF\xBF\xBF\xF4\x8F\xBF\xBF";
    expect_sanitized(mixed, strlen(mixed), mixed);
    assert_int_equal(utf8_sanitize(NULL, 0, NULL, 0), 0);
}

static void test_sanitize_turns_controls_into_spaces(void **state)
{
    (void)state;
    expect_sanitized("a\nb\r\tc", 6, "a b  c");
    expect_sanitized("a\0b", 3, "a b"); /* n, not the NUL, ends the input */
    expect_sanitized("\x01\x1f\x7f", 3, "   ");
    expect_sanitized("x\xC2\x85y\xC2\x9B", 6, "x y "); /* C1 controls NEL and CSI */
    expect_sanitized("\xC2\xA0", 2, "\xC2\xA0");       /* U+00A0 is not a control */
    expect_sanitized("\x1b[31mred", 8, " [31mred");
}

static void test_sanitize_replaces_bad_lead_bytes(void **state)
{
    (void)state;
    expect_sanitized("\x80", 1, FFFD);
    expect_sanitized("a\xBF"
                     "b",
                     3, "a" FFFD "b");
    expect_sanitized("\xC0\xAF", 2, FFFD FFFD); /* C0 and C1 can only start overlong forms */
    expect_sanitized("\xC1\xBF", 2, FFFD FFFD);
    expect_sanitized("\xF5\x80\x80\x80", 4, FFFD FFFD FFFD FFFD);
    expect_sanitized("\xFE\xFF", 2, FFFD FFFD);
}

static void test_sanitize_replaces_bad_continuations(void **state)
{
    (void)state;
    expect_sanitized("\xC3(", 2, FFFD "(");
    expect_sanitized("\xE2\x82(", 3, FFFD "("); /* one U+FFFD for the maximal subpart */
    expect_sanitized("\xF0\x9F\x98(", 4, FFFD "(");
    expect_sanitized("\xE2\xE2\x82\xAC", 4, FFFD "\xE2\x82\xAC");
}

static void test_sanitize_replaces_overlongs_surrogates_and_beyond_max(void **state)
{
    (void)state;
    expect_sanitized("\xE0\x80\xAF", 3, FFFD FFFD FFFD);          /* overlong '/' */
    expect_sanitized("\xF0\x8F\xBF\xBF", 4, FFFD FFFD FFFD FFFD); /* overlong U+FFFF */
    expect_sanitized("\xED\xA0\x80", 3, FFFD FFFD FFFD);          /* U+D800 */
    expect_sanitized("\xED\xBF\xBF", 3, FFFD FFFD FFFD);          /* U+DFFF */
    expect_sanitized("\xED\x9F\xBF", 3, "\xED\x9F\xBF");          /* U+D7FF is fine */
    expect_sanitized("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD); /* U+110000 */
}

static void test_sanitize_replaces_truncated_end(void **state)
{
    (void)state;
    expect_sanitized("ab\xE2\x82", 4, "ab" FFFD);
    expect_sanitized("\xF0\x9F\x98", 3, FFFD);
    expect_sanitized("\xC3", 1, FFFD);
    /* the input ends at n even if more bytes follow in memory */
    expect_sanitized("\xE2\x82\xAC", 2, FFFD);
}

static void test_sanitize_cuts_on_a_character_boundary(void **state)
{
    (void)state;
    char out[8];
    /* "a€": 1 + 3 bytes; with the NUL it needs 5 */
    assert_int_equal(utf8_sanitize(out, 5, "a\xE2\x82\xAC", 4), 4);
    assert_string_equal(out, "a\xE2\x82\xAC");
    assert_int_equal(utf8_sanitize(out, 4, "a\xE2\x82\xAC", 4), 1);
    assert_string_equal(out, "a");
    assert_int_equal(utf8_sanitize(out, 3, "a\xFF", 2), 1); /* no room for U+FFFD */
    assert_string_equal(out, "a");
    assert_int_equal(utf8_sanitize(out, 1, "abc", 3), 0);
    assert_string_equal(out, "");
    out[0] = 'z';
    assert_int_equal(utf8_sanitize(out, 0, "abc", 3), 0);
    assert_int_equal(out[0], 'z'); /* dstlen 0: nothing written */
    /* the output is a prefix: a later, smaller character is not squeezed in */
    assert_int_equal(utf8_sanitize(out, 4,
                                   "ab\xE2\x82\xAC"
                                   "c",
                                   6),
                     2);
    assert_string_equal(out, "ab");
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* True when the n bytes of valid UTF-8 at s hold a C0 or C1 control or DEL. */
static bool has_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F) {
            return true;
        }
        if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] <= 0x9F) {
            return true;
        }
    }
    return false;
}

static void test_sanitize_output_is_always_valid_and_fits(void **state)
{
    (void)state;
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    /* bytes biased towards the interesting ones: leads, continuations, controls */
    static const unsigned char pool[] = {'a',  0x00, 0x0A, 0x1B, 0x7F, 0x80, 0x9F, 0xBF,
                                         0xC0, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4,
                                         0xF5, 0xFF, 0xA0, 0x90, 0x8F, 0xC3, 0xE2, 0x82};
    for (int round = 0; round < 20000; round++) {
        char in[40];
        size_t n = (size_t)(next_rand(&seed) % sizeof in);
        for (size_t i = 0; i < n; i++) {
            in[i] = (char)pool[next_rand(&seed) % sizeof pool];
        }
        size_t dstlen = 1 + (size_t)(next_rand(&seed) % 48);
        char out[64];
        memset(out, 'x', sizeof out);
        size_t len = utf8_sanitize(out, dstlen, in, n);
        assert_true(len < dstlen);
        assert_int_equal(strlen(out), len);
        assert_true(utf8_is_valid(out, len));
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)out[i];
            assert_true(c >= 0x20 && c != 0x7F);
        }
        /* valid input without controls comes out unchanged when it fits */
        if (utf8_is_valid(in, n) && !has_control(in, n) && len == n) {
            assert_memory_equal(out, in, n);
        }
    }
}

static void test_is_valid(void **state)
{
    (void)state;
    assert_true(utf8_is_valid(NULL, 0));
    assert_true(utf8_is_valid("a\0b", 3));
    assert_true(utf8_is_valid("\xF0\x9F\x98\x80", 4));
    assert_false(utf8_is_valid("\xF0\x9F\x98", 3));
    assert_false(utf8_is_valid("\xED\xA0\x80", 3));
    assert_false(utf8_is_valid("\xC0\x80", 2));
    assert_false(utf8_is_valid("\xF4\x90\x80\x80", 4));
    assert_false(utf8_is_valid("\x80", 1));
}

static void test_cut_never_splits_a_character(void **state)
{
    (void)state;
    const char *s = "a\xE2\x82\xAC"
                    "b"; /* a, € at 1..3, b at 4 */
    assert_int_equal(utf8_cut(s, 0), 0);
    assert_int_equal(utf8_cut(s, 1), 1);
    assert_int_equal(utf8_cut(s, 2), 1);
    assert_int_equal(utf8_cut(s, 3), 1);
    assert_int_equal(utf8_cut(s, 4), 4);
    assert_int_equal(utf8_cut(s, 5), 5);
    assert_int_equal(utf8_cut(s, 1000), 5);
    const char *emoji = "\xF0\x9F\x98\x80\xF0\x9F\x98\x80";
    assert_int_equal(utf8_cut(emoji, 4), 4);
    assert_int_equal(utf8_cut(emoji, 5), 4);
    assert_int_equal(utf8_cut(emoji, 7), 4);
    assert_int_equal(utf8_cut(emoji, 8), 8);
    assert_int_equal(utf8_cut("\xC3\xA9", 1), 0);
    assert_int_equal(utf8_cut("abc", 3), 3);
}

static void test_snprintf_cuts_on_a_character_boundary(void **state)
{
    (void)state;
    char out[10];
    /* fits */
    assert_int_equal(utf8_snprintf(out, sizeof out, "%d:%s", 7, "\xE2\x82\xAC"), 5);
    assert_string_equal(out, "7:\xE2\x82\xAC");
    /* 12 bytes of euros into 9 usable bytes: three whole euros */
    assert_int_equal(
        utf8_snprintf(out, 10, "%s", "\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC"), 9);
    assert_string_equal(out, "\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC");
    /* 8 usable bytes: the third euro would be split, so two */
    assert_int_equal(
        utf8_snprintf(out, 9, "%s", "\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC"), 6);
    assert_string_equal(out, "\xE2\x82\xAC\xE2\x82\xAC");
    out[0] = 'z';
    assert_int_equal(utf8_snprintf(out, 0, "%s", "abc"), 0);
    assert_int_equal(out[0], 'z');
}

static void test_snprintf_gave_up_message_stays_valid(void **state)
{
    (void)state;
    /* The engine's "gave up after %d attempts: %s" with an error made of 2-byte characters,
     * cut at every buffer size: always valid UTF-8, always a prefix of the full text. */
    char err[256];
    size_t n = 0;
    while (n + 2 < sizeof err) {
        err[n++] = '\xC3';
        err[n++] = '\xA9';
    }
    err[n] = '\0';
    char full[400];
    size_t fulllen = utf8_snprintf(full, sizeof full, "gave up after %d attempts: %s", 12, err);
    assert_true(utf8_is_valid(full, fulllen));
    for (size_t size = 1; size <= sizeof full; size++) {
        char out[400];
        size_t len = utf8_snprintf(out, size, "gave up after %d attempts: %s", 12, err);
        assert_true(len < size);
        assert_true(utf8_is_valid(out, len));
        assert_memory_equal(out, full, len);
        assert_true(len + 2 >= (size - 1 < fulllen ? size - 1 : fulllen));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sanitize_keeps_valid_text),
        cmocka_unit_test(test_sanitize_turns_controls_into_spaces),
        cmocka_unit_test(test_sanitize_replaces_bad_lead_bytes),
        cmocka_unit_test(test_sanitize_replaces_bad_continuations),
        cmocka_unit_test(test_sanitize_replaces_overlongs_surrogates_and_beyond_max),
        cmocka_unit_test(test_sanitize_replaces_truncated_end),
        cmocka_unit_test(test_sanitize_cuts_on_a_character_boundary),
        cmocka_unit_test(test_sanitize_output_is_always_valid_and_fits),
        cmocka_unit_test(test_is_valid),
        cmocka_unit_test(test_cut_never_splits_a_character),
        cmocka_unit_test(test_snprintf_cuts_on_a_character_boundary),
        cmocka_unit_test(test_snprintf_gave_up_message_stays_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
