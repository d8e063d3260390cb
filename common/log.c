/* Levelled logging to stderr. */
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int min_level = LOG_INFO;
static const char *log_ident = "cofi";

void log_set_level(enum log_level level)
{
    atomic_store(&min_level, (int)level);
}

int log_parse_level(const char *s, enum log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

int log_reopen(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        return -errno;
    }
    fflush(stderr);
    int rc = dup2(fd, STDERR_FILENO) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

void log_set_ident(const char *ident)
{
    log_ident = ident;
}

size_t log_escape(const char *in, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    if (cap == 0) {
        return 0;
    }
    for (const unsigned char *p = (const unsigned char *)in; *p != '\0'; p++) {
        char esc[4];
        size_t len = 0;
        unsigned char c = *p;
        if (c == '\n') {
            esc[0] = '\\';
            esc[1] = 'n';
            len = 2;
        } else if (c == '\r') {
            esc[0] = '\\';
            esc[1] = 'r';
            len = 2;
        } else if (c == '\t') {
            esc[0] = '\\';
            esc[1] = 't';
            len = 2;
        } else if (c < 0x20 || c == 0x7f) {
            esc[0] = '\\';
            esc[1] = 'x';
            esc[2] = hex[c >> 4];
            esc[3] = hex[c & 0xf];
            len = 4;
        } else {
            esc[0] = (char)c;
            len = 1;
        }
        if (n + len + 1 > cap) {
            break;
        }
        memcpy(out + n, esc, len);
        n += len;
    }
    out[n] = '\0';
    return n;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if ((int)level < atomic_load(&min_level)) {
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);

    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    char line[2048];
    int n = snprintf(line, sizeof line, "%s.%03ldZ %-5s %s: ", stamp, ts.tv_nsec / 1000000L,
                     tags[level], log_ident);
    if (n < 0 || (size_t)n >= sizeof line - 2) {
        return;
    }
    /* Whatever the message holds (a URL, a file name, a worker's reply), it stays on its line:
     * control characters are escaped, so no input can forge a line. */
    size_t len = (size_t)n + log_escape(msg, line + n, sizeof line - 1 - (size_t)n);
    line[len] = '\n';
    line[len + 1] = '\0';
    /* One fputs per line: stdio locks the stream, so lines from threads never interleave. */
    fputs(line, stderr);
}
