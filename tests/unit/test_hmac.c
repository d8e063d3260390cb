/* HMAC-SHA256: the test cases of RFC 4231 (section 4), and a message given in parts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/hmac.h"

struct vector {
    unsigned char key[131];
    size_t key_len;
    const char *data;
    size_t data_len;
    const char *hex; /* the HMAC, or its first 32 digits (test case 5 truncates to 128 bits) */
};

static void fill(unsigned char *p, unsigned char v, size_t n)
{
    memset(p, v, n);
}

static void check(const struct vector *v)
{
    char hex[HMAC_SHA256_HEX_LEN];
    const void *part[1] = {v->data};
    size_t len[1] = {v->data_len};
    assert_int_equal(hmac_sha256_hex(v->key, v->key_len, part, len, 1, hex), 0);
    assert_int_equal(strlen(hex), 64);
    assert_memory_equal(hex, v->hex, strlen(v->hex));
}

static void test_rfc4231_cases_1_to_4(void **state)
{
    (void)state;
    struct vector v;
    memset(&v, 0, sizeof v);
    fill(v.key, 0x0b, 20);
    v.key_len = 20;
    v.data = "Hi There";
    v.data_len = 8;
    v.hex = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7";
    check(&v);

    memcpy(v.key, "Jefe", 4);
    v.key_len = 4;
    v.data = "what do ya want for nothing?";
    v.data_len = strlen(v.data);
    v.hex = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    check(&v);

    char dd[50];
    memset(dd, 0xdd, sizeof dd);
    fill(v.key, 0xaa, 20);
    v.key_len = 20;
    v.data = dd;
    v.data_len = sizeof dd;
    v.hex = "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe";
    check(&v);

    char cd[50];
    memset(cd, 0xcd, sizeof cd);
    for (size_t i = 0; i < 25; i++) {
        v.key[i] = (unsigned char)(i + 1);
    }
    v.key_len = 25;
    v.data = cd;
    v.data_len = sizeof cd;
    v.hex = "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b";
    check(&v);
}

static void test_rfc4231_cases_5_to_7(void **state)
{
    (void)state;
    struct vector v;
    memset(&v, 0, sizeof v);
    fill(v.key, 0x0c, 20);
    v.key_len = 20;
    v.data = "Test With Truncation";
    v.data_len = strlen(v.data);
    v.hex = "a3b6167473100ee06e0c796c2955552b";
    check(&v);

    fill(v.key, 0xaa, 131);
    v.key_len = 131;
    v.data = "Test Using Larger Than Block-Size Key - Hash Key First";
    v.data_len = strlen(v.data);
    v.hex = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54";
    check(&v);

    v.data = "This is a test using a larger than block-size key and a larger than block-size "
             "data. The key needs to be hashed before being used by the HMAC algorithm.";
    v.data_len = strlen(v.data);
    v.hex = "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2";
    check(&v);
}

/* The webhook signs "<timestamp>.<body>" given as three parts: the same as one message. */
static void test_parts_are_concatenated(void **state)
{
    (void)state;
    const char *key = "Jefe";
    const void *one[1] = {"what do ya want for nothing?"};
    size_t one_len[1] = {28};
    const void *three[4] = {"what do", "", " ya want", " for nothing?"};
    size_t three_len[4] = {7, 0, 8, 13};
    char a[HMAC_SHA256_HEX_LEN];
    char b[HMAC_SHA256_HEX_LEN];
    assert_int_equal(hmac_sha256_hex(key, 4, one, one_len, 1, a), 0);
    assert_int_equal(hmac_sha256_hex(key, 4, three, three_len, 4, b), 0);
    assert_string_equal(a, b);
    assert_string_equal(a, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

/* An empty key is a key like any other (HMAC pads it with zeros). */
static void test_empty_key(void **state)
{
    (void)state;
    const void *part[1] = {""};
    size_t len[1] = {0};
    char hex[HMAC_SHA256_HEX_LEN];
    assert_int_equal(hmac_sha256_hex("", 0, part, len, 1, hex), 0);
    /* python3 -c 'import hmac,hashlib; print(hmac.new(b"",b"",hashlib.sha256).hexdigest())' */
    assert_string_equal(hex, "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc4231_cases_1_to_4),
        cmocka_unit_test(test_rfc4231_cases_5_to_7),
        cmocka_unit_test(test_parts_are_concatenated),
        cmocka_unit_test(test_empty_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
