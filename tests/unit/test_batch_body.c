/* handlers/batch_body.c, common/json_scan.c and common/sha256.c: the POST /batches body read
 * without a tree of its files, checked as strictly as jansson checks it, hashed exactly as the
 * compact sorted dump of the whole body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/json_scan.h"
#include "common/sha256.h"
#include "handlers/batch_body.h"

static int parse(const char *text, struct batch_body *b, struct cofi_err *err)
{
    return batch_body_parse(text, strlen(text), b, err);
}

/* The hash the earlier code computed: SHA-256 of json_dumps(COMPACT | SORT_KEYS). */
static void jansson_hash(const char *text, char hex[65])
{
    json_t *root = json_loads(text, JSON_ALLOW_NUL, NULL);
    assert_non_null(root);
    char *canon = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(canon);
    struct sha256 h;
    sha256_init(&h);
    sha256_update(&h, canon, strlen(canon));
    sha256_hex(&h, hex);
    free(canon);
    json_decref(root);
}

static void test_sha256_known_answers(void **state)
{
    (void)state;
    struct sha256 h;
    char hex[65];
    sha256_init(&h);
    sha256_hex(&h, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_init(&h);
    sha256_update(&h, "ab", 2);
    sha256_update(&h, "c", 1);
    sha256_hex(&h, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* 1,000,000 times "a", fed in uneven pieces. */
    sha256_init(&h);
    char a[1000];
    memset(a, 'a', sizeof a);
    for (int i = 0; i < 1000; i++) {
        sha256_update(&h, a, 7);
        sha256_update(&h, a, 993);
    }
    sha256_hex(&h, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

static void test_files_read_back_decoded(void **state)
{
    (void)state;
    struct batch_body b;
    struct cofi_err err;
    assert_int_equal(
        parse(" {\"name\": \"n\", \"files\": [\"a.wav\", \"d\\/\\u00e9\\ud83d\\ude00\","
              " \"x\\u0000y\"], \"priority\": 3, \"mode\": \"staged\"} ",
              &b, &err),
        0);
    assert_int_equal(b.file_count, 3);
    assert_string_equal(b.name, "n");
    assert_string_equal(b.mode, "staged");
    assert_int_equal(b.priority, 3);
    struct batch_files it;
    batch_files_open(&it, &b);
    const char *f;
    size_t n;
    assert_int_equal(batch_files_next(&it, &f, &n, &err), 1);
    assert_string_equal(f, "a.wav");
    assert_int_equal(batch_files_next(&it, &f, &n, &err), 1);
    assert_string_equal(f, "d/\xc3\xa9\xf0\x9f\x98\x80");
    assert_int_equal(batch_files_next(&it, &f, &n, &err), 1);
    assert_int_equal(n, 3);
    assert_memory_equal(f, "x\0y", 3);
    assert_int_equal(batch_files_next(&it, &f, &n, &err), 0);
    batch_files_close(&it);
    batch_body_free(&b);
}

static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int rc;
    } cases[] = {
        {"", COFI_E_BAD_REQUEST},
        {"[\"a\"]", COFI_E_BAD_REQUEST},
        {"{\"files\": [", COFI_E_BAD_REQUEST},
        {"{files: []}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\"]} trailing", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\",]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\" \"b\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\"], \"files\": [\"b\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\"], \"name\": \"x\", \"name\": \"y\"}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"\xff\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"\xc0\xaf\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"\xed\xa0\x80\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\tb\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"\\ud800\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"\\udc00\\ud800\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"\\x\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"\\u12g4\"]}", COFI_E_BAD_REQUEST},
        {"{\"files\": \"a\"}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\", 3]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [null]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\"], \"colour\": \"red\"}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\"], \"metadata\": [1]}", COFI_E_BAD_REQUEST},
        {"{\"files\": [\"a\"], \"mode\": 1}", COFI_E_BAD_REQUEST},
        {"{\"name\": \"x\"}", COFI_E_BAD_REQUEST},
        {"{}", COFI_E_BAD_REQUEST},
        /* A member's error is told only when the whole text is JSON. */
        {"{\"mode\": \"fast\", \"files\": [", COFI_E_BAD_REQUEST},
        {"{\"files\": []}", COFI_E_INVALID},
        {"{\"files\": [\"a\"], \"mode\": \"fast\"}", COFI_E_INVALID},
        {"{\"files\": [\"a\"], \"name\": \"a\\u0000b\"}", COFI_E_INVALID},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct batch_body b;
        struct cofi_err err;
        int rc = parse(cases[i].text, &b, &err);
        if (rc != cases[i].rc) {
            fail_msg("case %zu (%s): %d, expected %d (%s)", i, cases[i].text, rc, cases[i].rc,
                     err.msg);
        }
        assert_null(b.fields);
    }
}

static void test_hash_is_the_sorted_compact_dump(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "{\"files\": [\"a.wav\"]}",
        "{\"priority\": 2, \"name\": null, \"files\": [\"b\", \"a\\\"q\\\\\\/\\n\\t\\u0001\\u001f"
        "\\u007f\\u00e9\\ud83d\\ude00\"], \"metadata\": {\"z\": 1.5, \"a\": [true, null, \"x\"]}, "
        "\"mode\": \"pipelined\"}",
        "{\"files\": [\"x\\u0000y\", \"\\b\\f\\r\"], \"name\": \"\\u2028\"}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        struct batch_body b;
        struct cofi_err err;
        assert_int_equal(parse(bodies[i], &b, &err), 0);
        char ours[65];
        char theirs[65];
        assert_int_equal(batch_body_hash(&b, ours, &err), 0);
        jansson_hash(bodies[i], theirs);
        assert_string_equal(ours, theirs);
        batch_body_free(&b);
    }
}

static void test_scan_value_stops_after_the_value(void **state)
{
    (void)state;
    const char text[] = " 12 , {\"a\": [1, 2]}]";
    struct json_scan s;
    json_scan_init(&s, text, sizeof text - 1);
    json_error_t je;
    json_t *v = json_scan_value(&s, &je);
    assert_non_null(v);
    assert_int_equal(json_integer_value(v), 12);
    json_decref(v);
    assert_int_equal(json_scan_expect(&s, ','), 0);
    v = json_scan_value(&s, &je);
    assert_non_null(v);
    assert_true(json_is_object(v));
    json_decref(v);
    assert_int_equal(json_scan_peek(&s), ']');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_known_answers),
        cmocka_unit_test(test_files_read_back_decoded),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_hash_is_the_sorted_compact_dump),
        cmocka_unit_test(test_scan_value_stops_after_the_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
