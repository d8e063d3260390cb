/* The mediator lane's event loop plumbing: curl's sockets and timer driven through epoll. */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "pipeline/mediator_state.h"

/* curl's socket callback: keeps the epoll set in step with what curl waits for. */
int med__on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct mediator_lane *m = userp;
    if (what == CURL_POLL_REMOVE) {
        /* curl forgets socketp with it: the next call for fd (a reused connection) adds. */
        epoll_ctl(m->epfd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.data.fd = fd;
    ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
    /* socketp (set below) says whether fd is in the epoll set: one system call per change, not
     * a failing MOD before every ADD. The fallbacks keep it right if the two ever disagree. */
    int op = socketp != NULL ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    int rc = epoll_ctl(m->epfd, op, fd, &ev);
    if (rc != 0 && op == EPOLL_CTL_MOD && errno == ENOENT) {
        rc = epoll_ctl(m->epfd, EPOLL_CTL_ADD, fd, &ev);
    } else if (rc != 0 && op == EPOLL_CTL_ADD && errno == EEXIST) {
        rc = epoll_ctl(m->epfd, EPOLL_CTL_MOD, fd, &ev);
    }
    if (rc != 0) {
        log_error("mediator: epoll_ctl: %s", strerror(errno));
        return -1;
    }
    if (socketp == NULL) {
        curl_multi_assign(m->multi, fd, m);
    }
    return 0;
}

/* curl's timer callback: when to call curl_multi_socket_action(CURL_SOCKET_TIMEOUT). */
int med__on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct mediator_lane *m = userp;
    m->timer_due_us = timeout_ms < 0 ? -1 : clock_mono_us() + (int64_t)timeout_ms * 1000;
    return 0;
}

/* Lets curl act on every transfer whose time has come (new ones included). */
void med__kick(struct mediator_lane *m)
{
    int running = 0;
    m->timer_due_us = -1;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

int64_t med__timer_wait(const struct mediator_lane *m, int64_t max_ms)
{
    int64_t wait_ms = max_ms;
    if (m->timer_due_us >= 0) {
        int64_t t = (m->timer_due_us - clock_mono_us() + 999) / 1000;
        wait_ms = t < 0 ? 0 : (t < wait_ms ? t : wait_ms);
    }
    return wait_ms;
}

void med__poll(struct mediator_lane *m, int64_t wait_ms)
{
    struct epoll_event evs[64];
    int n = epoll_wait(m->epfd, evs, 64, (int)wait_ms);
    atomic_store(&m->sleeping, false);
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == m->wakefd) {
            uint64_t v;
            ssize_t r = read(m->wakefd, &v, sizeof v);
            (void)r;
            continue;
        }
        int flags = 0;
        flags |= (evs[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0;
        flags |= (evs[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0;
        flags |= (evs[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0;
        int running = 0;
        curl_multi_socket_action(m->multi, fd, flags, &running);
    }
    if (m->timer_due_us >= 0 && clock_mono_us() >= m->timer_due_us) {
        med__kick(m);
    }
}
