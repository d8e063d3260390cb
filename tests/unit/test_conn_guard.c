/* The connection guard: a connection past its request deadline is shut down, others are not. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "server/conn_guard.h"

/* True when the peer of fd sees the end of the stream (fd was shut down). */
static bool peer_sees_eof(int peer)
{
    char c;
    return recv(peer, &c, 1, MSG_DONTWAIT) == 0;
}

static void test_deadlines(void **state)
{
    (void)state;
    struct conn_guard *g;
    assert_int_equal(conn_guard_new(&g, 60000), 0); /* the thread never fires within the test */
    int a[2];
    int b[2];
    int c[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, c), 0);
    struct conn_guard_entry *ea = conn_guard_opened(g, a[0]);
    struct conn_guard_entry *eb = conn_guard_opened(g, b[0]);
    struct conn_guard_entry *ec = conn_guard_opened(g, c[0]);
    conn_guard_request_received(eb); /* being handled: no deadline */
    int64_t now = clock_mono_us();
    assert_int_equal(conn_guard_sweep(g, now), 0);
    /* 61 s later: a and c are late, b is being answered. */
    assert_int_equal(conn_guard_sweep(g, now + 61 * 1000000LL), 2);
    assert_true(peer_sees_eof(a[1]));
    assert_false(peer_sees_eof(b[1]));
    assert_true(peer_sees_eof(c[1]));
    /* Once shut down, not counted again; b's next request has a fresh deadline. */
    conn_guard_request_done(g, eb);
    assert_int_equal(conn_guard_sweep(g, clock_mono_us() + 30 * 1000000LL), 0);
    conn_guard_closed(g, ea);
    conn_guard_closed(g, ec);
    conn_guard_closed(g, eb);
    conn_guard_closed(g, NULL);
    conn_guard_free(g);
    for (int i = 0; i < 2; i++) {
        close(a[i]);
        close(b[i]);
        close(c[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deadlines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
