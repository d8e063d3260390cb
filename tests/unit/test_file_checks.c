/* handlers/batches.c: a submitted file must exist inside input_root and be readable. */
/* for O_PATH */
#define _GNU_SOURCE

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "handlers/handlers.h"

static char base[PATH_MAX];
static char root[PATH_MAX + 8];

static void make_file(const char *rel, mode_t mode)
{
    char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s/%s", base, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("x", f);
    fclose(f);
    chmod(p, mode);
}

static int setup(void **state)
{
    (void)state;
    char tmpl[] = "/tmp/cofi-files-XXXXXX";
    char *d = mkdtemp(tmpl);
    if (d == NULL || realpath(d, base) == NULL) {
        return -1;
    }
    char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s/in", base);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/in/sub", base);
    mkdir(p, 0755);
    snprintf(root, sizeof root, "%s/in", base);
    make_file("in/a.wav", 0644);
    make_file("in/sub/b.wav", 0644);
    make_file("in/secret.wav", 0000);
    make_file("outside.wav", 0644);
    snprintf(p, sizeof p, "%s/in/link-out.wav", base);
    char target[PATH_MAX * 2];
    snprintf(target, sizeof target, "%s/outside.wav", base);
    if (symlink(target, p) != 0) {
        return -1;
    }
    snprintf(p, sizeof p, "%s/in/link-in.wav", base);
    if (symlink("sub/b.wav", p) != 0) {
        return -1;
    }
    /* An absolute link that stays inside root is fine. */
    snprintf(p, sizeof p, "%s/in/link-abs.wav", base);
    snprintf(target, sizeof target, "%s/in/a.wav", base);
    if (symlink(target, p) != 0) {
        return -1;
    }
    snprintf(p, sizeof p, "%s/in/link-up.wav", base);
    if (symlink("../outside.wav", p) != 0) {
        return -1;
    }
    snprintf(p, sizeof p, "%s/in/dangling.wav", base);
    if (symlink("nowhere.wav", p) != 0) {
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    return system(cmd) == 0 ? 0 : -1;
}

static int root_fd = -1;

/* Checks with the fast path (openat2 beneath root) and alone with realpath: both must agree. */
static const char *check(const char *file)
{
    const char *fast = NULL;
    const char *slow = NULL;
    if (root_fd < 0) {
        root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        assert_true(root_fd >= 0);
    }
    if (batches_check_file(root, root_fd, file, strlen(file), &fast) == 0) {
        fast = "ok";
    }
    if (batches_check_file(root, -1, file, strlen(file), &slow) == 0) {
        slow = "ok";
    }
    assert_string_equal(fast, slow);
    return fast;
}

static void test_good_files(void **state)
{
    (void)state;
    assert_string_equal(check("a.wav"), "ok");
    assert_string_equal(check("sub/b.wav"), "ok");
    assert_string_equal(check("./sub/../a.wav"), "ok");
    assert_string_equal(check("sub//b.wav"), "ok");
    assert_string_equal(check("link-in.wav"), "ok");
    assert_string_equal(check("link-abs.wav"), "ok");
}

static void test_bad_files(void **state)
{
    (void)state;
    assert_string_equal(check(""), "is empty");
    assert_string_equal(check("/etc/passwd"), "is absolute (paths are relative to input_root)");
    assert_string_equal(check("../outside.wav"), "leaves input_root");
    assert_string_equal(check("sub/../../outside.wav"), "leaves input_root");
    assert_string_equal(check("../in/a.wav"), "leaves input_root");
    assert_string_equal(check("link-out.wav"), "leaves input_root");
    assert_string_equal(check("link-up.wav"), "leaves input_root");
    assert_string_equal(check("dangling.wav"), "does not exist");
    assert_string_equal(check("nope.wav"), "does not exist");
    assert_string_equal(check("a.wav/x"), "does not exist");
    assert_string_equal(check("sub"), "is not a regular file");
    assert_string_equal(check("."), "is not a regular file");
    assert_string_equal(check("secret.wav"), "is not readable");
    const char *reason = NULL;
    assert_int_equal(batches_check_file(root, -1, "a.wav\0x", 7, &reason), -1);
    assert_string_equal(reason, "contains a NUL character");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_files),
        cmocka_unit_test(test_bad_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
