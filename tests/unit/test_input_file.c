/* Submitted files opened for upload: beneath input_root, no symbolic link, regular files only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"
#include "pipeline/input_file.h"

static char top[256]; /* a temporary folder: root/ inside, outside.wav beside it */
static char root[300];

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(top, sizeof top, "/tmp/cofi-input-file-XXXXXX");
    if (mkdtemp(top) == NULL) {
        return -1;
    }
    char p[512];
    snprintf(root, sizeof root, "%s/root", top);
    mkdir(root, 0755);
    snprintf(p, sizeof p, "%s/sub", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/ok.wav", root);
    write_file(p, "RIFF1234");
    snprintf(p, sizeof p, "%s/sub/deep.wav", root);
    write_file(p, "RIFF");
    snprintf(p, sizeof p, "%s/outside.wav", top);
    write_file(p, "secret");
    char q[512];
    snprintf(q, sizeof q, "%s/out-link.wav", root);
    symlink(p, q);
    snprintf(q, sizeof q, "%s/in-link.wav", root);
    symlink("ok.wav", q);
    snprintf(q, sizeof q, "%s/dirlink", root);
    symlink("sub", q);
    snprintf(q, sizeof q, "%s/fifo.wav", root);
    mkfifo(q, 0644);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", top);
    return system(cmd) == 0 ? 0 : -1;
}

static int try_open(const char *rel, char *why, size_t cap)
{
    long long size = -1;
    int fd = input_file_open(root, rel, &size, why, cap);
    if (fd >= 0) {
        close(fd);
        return (int)size;
    }
    return -1;
}

static void test_regular_files_open(void **state)
{
    (void)state;
    char why[256];
    assert_int_equal(try_open("ok.wav", why, sizeof why), 8);
    assert_int_equal(try_open("sub/deep.wav", why, sizeof why), 4);
    assert_int_equal(try_open("./sub//deep.wav", why, sizeof why), 4);
}

static void test_symbolic_links_refused(void **state)
{
    (void)state;
    char why[256];
    assert_int_equal(try_open("out-link.wav", why, sizeof why), -1);
    assert_non_null(strstr(why, "symbolic link"));
    assert_non_null(strstr(why, "out-link.wav"));
    /* Even one that stays inside, and one on a folder of the path. */
    assert_int_equal(try_open("in-link.wav", why, sizeof why), -1);
    assert_int_equal(try_open("dirlink/deep.wav", why, sizeof why), -1);
    assert_non_null(strstr(why, "symbolic link"));
}

static void test_escapes_refused(void **state)
{
    (void)state;
    char why[256];
    assert_int_equal(try_open("../outside.wav", why, sizeof why), -1);
    assert_int_equal(try_open("sub/../../outside.wav", why, sizeof why), -1);
    char abs[512];
    snprintf(abs, sizeof abs, "%s/outside.wav", top);
    assert_int_equal(try_open(abs, why, sizeof why), -1);
    assert_non_null(strstr(why, "absolute"));
    assert_int_equal(try_open("missing.wav", why, sizeof why), -1);
    assert_non_null(strstr(why, "does not exist"));
}

static void test_fifo_and_folder_refused_without_blocking(void **state)
{
    (void)state;
    char why[256];
    int64_t t0 = clock_mono_ms();
    assert_int_equal(try_open("fifo.wav", why, sizeof why), -1);
    assert_true(clock_mono_ms() - t0 < 2000);
    assert_non_null(strstr(why, "not a regular file"));
    assert_int_equal(try_open("sub", why, sizeof why), -1);
    assert_non_null(strstr(why, "not a regular file"));
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d) != NULL) {
        n++;
    }
    closedir(d);
    return n;
}

static void test_attach_closes_with_the_mime(void **state)
{
    (void)state;
    CURL *easy = curl_easy_init();
    assert_non_null(easy);
    int before = open_fds();
    curl_mime *mime = curl_mime_init(easy);
    curl_mimepart *part = curl_mime_addpart(mime);
    char why[256];
    assert_int_equal(input_file_attach(part, root, "ok.wav", why, sizeof why), 0);
    assert_int_equal(open_fds(), before + 1);
    curl_mime_free(mime);
    assert_int_equal(open_fds(), before);
    /* A refused file leaves nothing open. */
    mime = curl_mime_init(easy);
    part = curl_mime_addpart(mime);
    assert_int_equal(input_file_attach(part, root, "fifo.wav", why, sizeof why), -1);
    assert_int_equal(open_fds(), before);
    curl_mime_free(mime);
    curl_easy_cleanup(easy);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regular_files_open),
        cmocka_unit_test(test_symbolic_links_refused),
        cmocka_unit_test(test_escapes_refused),
        cmocka_unit_test(test_fifo_and_folder_refused_without_blocking),
        cmocka_unit_test(test_attach_closes_with_the_mime),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
