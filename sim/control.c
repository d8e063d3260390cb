/* The control channel: only the main thread starts and stops daemons, on request or signal. */
#include "sim/sim.h"

#include "common/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define CTL_WAIT_MS 30000

enum ctl_op { CTL_SET_MODE = 1, CTL_QUIT = 2 };

/* One message on the pipe: small enough (<= PIPE_BUF) to be written atomically. */
struct ctl_msg {
    int op;
    int port;
    int mode;
    int pad;
    uint64_t seq;
};

#define CTL_POLL_MS 100

/* What the signal handler can reach: globals only. */
static volatile sig_atomic_t signal_fd = -1;
static volatile sig_atomic_t quit_requested = 0;

static void set_flags(int fd, int fd_flags, int fl_flags)
{
    fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | fd_flags);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | fl_flags);
}

int sim_control_init(struct sim *s)
{
    s->ctl_pipe[0] = -1;
    s->ctl_pipe[1] = -1;
    s->ctl_next_seq = 0;
    s->ctl_done_seq = 0;
    s->quitting = false;
    if (pthread_mutex_init(&s->ctl_mu, NULL) != 0) {
        return -1;
    }
    if (clock_cond_init(&s->ctl_cv) != 0) {
        pthread_mutex_destroy(&s->ctl_mu);
        return -1;
    }
    if (pipe(s->ctl_pipe) != 0) {
        pthread_cond_destroy(&s->ctl_cv);
        pthread_mutex_destroy(&s->ctl_mu);
        s->ctl_pipe[0] = -1;
        s->ctl_pipe[1] = -1;
        return -1;
    }
    set_flags(s->ctl_pipe[0], FD_CLOEXEC, 0);
    set_flags(s->ctl_pipe[1], FD_CLOEXEC, O_NONBLOCK);
    return 0;
}

void sim_control_free(struct sim *s)
{
    if (s->ctl_pipe[0] < 0) {
        return;
    }
    signal_fd = -1;
    close(s->ctl_pipe[0]);
    close(s->ctl_pipe[1]);
    s->ctl_pipe[0] = -1;
    s->ctl_pipe[1] = -1;
    pthread_cond_destroy(&s->ctl_cv);
    pthread_mutex_destroy(&s->ctl_mu);
}

/* Writes one message, retrying while the pipe is full (a few seconds at most). */
static int ctl_write(int fd, const struct ctl_msg *m)
{
    for (int tries = 0; tries < 5000; tries++) {
        ssize_t n = write(fd, m, sizeof *m);
        if (n == (ssize_t)sizeof *m) {
            return 0;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return -1;
        }
        clock_sleep_ms(1);
    }
    return -1;
}

/* Queues a mode change under ctl_mu (so pipe order is seq order). Returns its seq, or 0. */
static uint64_t post_locked(struct sim *s, struct sim_port *target, enum sim_mode mode)
{
    if (s->quitting) {
        return 0;
    }
    struct ctl_msg m = {.op = CTL_SET_MODE,
                        .port = (int)(target - s->ports),
                        .mode = (int)mode,
                        .seq = s->ctl_next_seq + 1};
    if (ctl_write(s->ctl_pipe[1], &m) != 0) {
        log_error("control channel: cannot queue a mode change for %s", target->id);
        return 0;
    }
    s->ctl_next_seq = m.seq;
    return m.seq;
}

int sim_control_set_mode(struct sim *s, struct sim_port *from, struct sim_port *target,
                         enum sim_mode mode)
{
    pthread_mutex_lock(&s->ctl_mu);
    uint64_t seq = post_locked(s, target, mode);
    bool done = false;
    if (seq != 0) {
        struct timespec deadline = clock_deadline_ms(CTL_WAIT_MS);
        while (s->ctl_done_seq < seq && !s->quitting &&
               atomic_load(&from->mode) != SIM_MODE_REFUSE) {
            if (pthread_cond_timedwait(&s->ctl_cv, &s->ctl_mu, &deadline) == ETIMEDOUT) {
                break;
            }
        }
        done = s->ctl_done_seq >= seq;
    }
    pthread_mutex_unlock(&s->ctl_mu);
    if (!done) {
        return -1;
    }
    if (mode != SIM_MODE_REFUSE && !atomic_load(&target->listening)) {
        return -1;
    }
    return 0;
}

void sim_control_post(struct sim *s, struct sim_port *target, enum sim_mode mode)
{
    pthread_mutex_lock(&s->ctl_mu);
    post_locked(s, target, mode);
    pthread_mutex_unlock(&s->ctl_mu);
}

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    struct ctl_msg m = {.op = CTL_QUIT};
    quit_requested = 1;
    if (signal_fd >= 0) {
        ssize_t n = write(signal_fd, &m, sizeof m);
        (void)n;
    }
    errno = saved;
}

int sim_control_install_signals(struct sim *s)
{
    signal_fd = s->ctl_pipe[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
        return -1;
    }
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    return sigaction(SIGPIPE, &ign, NULL);
}

/* Wakes every thread waiting in sim_control_set_mode, so it can look at its port's mode. */
static void wake_waiters(struct sim *s)
{
    pthread_mutex_lock(&s->ctl_mu);
    pthread_cond_broadcast(&s->ctl_cv);
    pthread_mutex_unlock(&s->ctl_mu);
}

static void apply(struct sim *s, const struct ctl_msg *m)
{
    if (m->port < 0 || m->port >= s->nports) {
        return;
    }
    struct sim_port *p = &s->ports[m->port];
    enum sim_mode mode = (enum sim_mode)m->mode;
    if (mode == SIM_MODE_REFUSE) {
        sim_port_set_mode(p, mode);
        wake_waiters(s); /* waiters on p's own threads must return before p's daemon stops */
        if (p->daemon != NULL) {
            sim_http_stop(p);
            log_info("%s (port %d) is down: connections are refused", p->id, p->port);
        }
        return;
    }
    sim_port_set_mode(p, mode);
    if (p->daemon == NULL && sim_http_start(p) != 0) {
        sim_port_set_mode(p, SIM_MODE_REFUSE);
        return;
    }
    if (mode == SIM_MODE_UP) {
        log_info("%s (port %d) is up", p->id, p->port);
    } else {
        log_info("%s (port %d) is down (%s)", p->id, p->port, sim_mode_name(mode));
    }
}

int sim_control_run(struct sim *s)
{
    /* poll with a timeout, not a blocking read: sanitizer runtimes may defer a signal handler
     * until the thread leaves its system call, and the flag is seen on the next turn anyway. */
    while (!quit_requested) {
        struct pollfd pfd = {.fd = s->ctl_pipe[0], .events = POLLIN};
        int ready = poll(&pfd, 1, CTL_POLL_MS);
        if (ready <= 0) {
            continue;
        }
        struct ctl_msg m;
        ssize_t n = read(s->ctl_pipe[0], &m, sizeof m);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n != (ssize_t)sizeof m) {
            log_error("control channel: short read (%zd bytes)", n);
            break;
        }
        if (m.op == CTL_QUIT) {
            break;
        }
        apply(s, &m);
        pthread_mutex_lock(&s->ctl_mu);
        if (m.seq > s->ctl_done_seq) {
            s->ctl_done_seq = m.seq;
        }
        pthread_cond_broadcast(&s->ctl_cv);
        pthread_mutex_unlock(&s->ctl_mu);
    }
    pthread_mutex_lock(&s->ctl_mu);
    s->quitting = true;
    pthread_cond_broadcast(&s->ctl_cv);
    pthread_mutex_unlock(&s->ctl_mu);
    return 0;
}
