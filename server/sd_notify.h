/* systemd's readiness protocol without libsystemd: state lines ("READY=1", "STOPPING=1",
 * "WATCHDOG=1") sent as one datagram to the unix socket named by $NOTIFY_SOCKET (a path, or
 * an abstract name written with a leading '@'). Without $NOTIFY_SOCKET nothing is sent. */
#ifndef COFI_SD_NOTIFY_H
#define COFI_SD_NOTIFY_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Where to send, read once from the environment (a value, no pointer into environ). */
struct sd_notifier {
    bool enabled;
    struct sockaddr_un addr;
    socklen_t addr_len;
    long watchdog_ms; /* half of $WATCHDOG_USEC when it is meant for this process, else 0 */
};

/* Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID into *n. Returns 0 (enabled or not);
 * -1 with *n disabled when $NOTIFY_SOCKET is set but not a usable address. Not thread-safe
 * against setenv: call it at start-up. */
int sd_notify_init(struct sd_notifier *n);

/* Sends state (e.g. "READY=1\nSTATUS=listening") as one datagram. Returns 1 when sent, 0 when
 * disabled, a negative errno when the send failed. Thread-safe. */
int sd_notify_send(const struct sd_notifier *n, const char *state);

#endif
