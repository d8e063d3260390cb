/* systemd's notify protocol: a datagram to $NOTIFY_SOCKET, a path or an '@' abstract name;
 * nothing without it; $WATCHDOG_USEC halved when it is meant for this process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/sd_notify.h"

/* A datagram socket bound to name ("@x" abstract, else a path). Returns the fd. */
static int bind_dgram(const char *name)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(sa.sun_path, name, len);
    socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    if (name[0] == '@') {
        sa.sun_path[0] = '\0';
        sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sl), 0);
    return fd;
}

static void expect_datagram(int fd, const char *want)
{
    char got[256];
    ssize_t n = recv(fd, got, sizeof got - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    got[n] = '\0';
    assert_string_equal(got, want);
}

static void test_abstract_name_gets_the_state(void **state)
{
    (void)state;
    char name[64];
    snprintf(name, sizeof name, "@cofi-test-notify-%ld", (long)getpid());
    int fd = bind_dgram(name);
    setenv("NOTIFY_SOCKET", name, 1);
    struct sd_notifier n;
    assert_int_equal(sd_notify_init(&n), 0);
    assert_true(n.enabled);
    assert_int_equal(sd_notify_send(&n, "READY=1"), 1);
    expect_datagram(fd, "READY=1");
    close(fd);
    unsetenv("NOTIFY_SOCKET");
}

static void test_path_gets_the_state(void **state)
{
    (void)state;
    char path[108];
    snprintf(path, sizeof path, "/tmp/cofi-test-notify-%ld.sock", (long)getpid());
    unlink(path);
    int fd = bind_dgram(path);
    setenv("NOTIFY_SOCKET", path, 1);
    struct sd_notifier n;
    assert_int_equal(sd_notify_init(&n), 0);
    assert_int_equal(sd_notify_send(&n, "STOPPING=1"), 1);
    expect_datagram(fd, "STOPPING=1");
    close(fd);
    unlink(path);
    unsetenv("NOTIFY_SOCKET");
}

static void test_without_socket_nothing_is_sent(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    struct sd_notifier n;
    assert_int_equal(sd_notify_init(&n), 0);
    assert_false(n.enabled);
    assert_int_equal(sd_notify_send(&n, "READY=1"), 0);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(sd_notify_init(&n), -1);
    assert_false(n.enabled);
    unsetenv("NOTIFY_SOCKET");
}

static void test_nobody_listening_is_an_error_not_a_crash(void **state)
{
    (void)state;
    setenv("NOTIFY_SOCKET", "@cofi-test-notify-nobody-here", 1);
    struct sd_notifier n;
    assert_int_equal(sd_notify_init(&n), 0);
    assert_true(sd_notify_send(&n, "READY=1") < 0);
    unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_interval_is_half_when_meant_for_us(void **state)
{
    (void)state;
    char pid[32];
    setenv("NOTIFY_SOCKET", "@cofi-test-notify-wd", 1);
    setenv("WATCHDOG_USEC", "30000000", 1);
    unsetenv("WATCHDOG_PID");
    struct sd_notifier n;
    assert_int_equal(sd_notify_init(&n), 0);
    assert_int_equal(n.watchdog_ms, 15000);
    snprintf(pid, sizeof pid, "%ld", (long)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(sd_notify_init(&n), 0);
    assert_int_equal(n.watchdog_ms, 0);
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(sd_notify_init(&n), 0);
    assert_int_equal(n.watchdog_ms, 15000);
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    unsetenv("NOTIFY_SOCKET");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abstract_name_gets_the_state),
        cmocka_unit_test(test_path_gets_the_state),
        cmocka_unit_test(test_without_socket_nothing_is_sent),
        cmocka_unit_test(test_nobody_listening_is_an_error_not_a_crash),
        cmocka_unit_test(test_watchdog_interval_is_half_when_meant_for_us),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
