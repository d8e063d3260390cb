/* systemd's notify protocol ($NOTIFY_SOCKET datagrams) without libsystemd. */
#include "server/sd_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* $WATCHDOG_USEC, when $WATCHDOG_PID is unset or ours: the ping interval (half of it). */
static long watchdog_ms(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    if (usec == NULL || usec[0] == '\0') {
        return 0;
    }
    if (pid != NULL && pid[0] != '\0' && strtol(pid, NULL, 10) != (long)getpid()) {
        return 0;
    }
    char *end = NULL;
    long long us = strtoll(usec, &end, 10);
    if (*end != '\0' || us <= 0) {
        return 0;
    }
    long long ms = us / 2000;
    return ms > 0 ? (long)ms : 1;
}

int sd_notify_init(struct sd_notifier *n)
{
    memset(n, 0, sizeof *n);
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0') {
        return 0;
    }
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len < 2 || len >= sizeof n->addr.sun_path) {
        return -1;
    }
    n->addr.sun_family = AF_UNIX;
    memcpy(n->addr.sun_path, path, len);
    if (path[0] == '@') {
        n->addr.sun_path[0] = '\0'; /* abstract: the name is the bytes after the NUL */
        n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    }
    n->watchdog_ms = watchdog_ms();
    n->enabled = true;
    return 0;
}

int sd_notify_send(const struct sd_notifier *n, const char *state)
{
    if (n == NULL || !n->enabled) {
        return 0;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    ssize_t sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
                          n->addr_len);
    int rc = sent < 0 ? -errno : 1;
    close(fd);
    return rc;
}
