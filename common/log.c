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
static atomic_int log_format_now = LOG_FORMAT_TEXT;
static _Thread_local char thread_request_id[129];

void log_set_level(enum log_level level)
{
    atomic_store(&min_level, (int)level);
}

bool log_enabled(enum log_level level)
{
    return (int)level >= atomic_load(&min_level);
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

void log_set_format(enum log_format format)
{
    atomic_store(&log_format_now, (int)format);
}

int log_parse_format(const char *s, enum log_format *out)
{
    if (strcmp(s, "text") == 0) {
        *out = LOG_FORMAT_TEXT;
    } else if (strcmp(s, "json") == 0) {
        *out = LOG_FORMAT_JSON;
    } else {
        return -1;
    }
    return 0;
}

void log_set_request_id(const char *id)
{
    size_t n = id != NULL ? strlen(id) : 0;
    if (n >= sizeof thread_request_id) {
        n = sizeof thread_request_id - 1;
    }
    memcpy(thread_request_id, id != NULL ? id : "", n);
    thread_request_id[n] = '\0';
}

/* Appends " key=value" to line (len bytes used of cap): the value escaped, in quotes when it
 * holds a space, a quote or '=' (or is empty). Returns the new length. */
static size_t text_field(char *line, size_t len, size_t cap, const char *key, const char *value)
{
    char esc[512];
    log_escape(value != NULL ? value : "", esc, sizeof esc);
    bool quote = esc[0] == '\0' || strpbrk(esc, " \"=") != NULL;
    char q[600];
    if (quote) {
        size_t k = 0;
        q[k++] = '"';
        for (const char *p = esc; *p != '\0' && k + 3 < sizeof q; p++) {
            if (*p == '"') {
                q[k++] = '\\';
            }
            q[k++] = *p;
        }
        q[k++] = '"';
        q[k] = '\0';
    }
    int n = snprintf(line + len, cap - len, " %s=%s", key, quote ? q : esc);
    if (n < 0 || (size_t)n >= cap - len) {
        line[len] = '\0';
        return len;
    }
    return len + (size_t)n;
}

/* The text line: "stamp LEVEL ident: message key=value..." and its newline. */
static size_t text_line(char *line, size_t cap, const char *stamp, enum log_level level,
                        const char *msg, const struct log_field *fields, size_t nfields)
{
    static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    int n = snprintf(line, cap, "%s %-5s %s: ", stamp, tags[level], log_ident);
    if (n < 0 || (size_t)n >= cap - 2) {
        return 0;
    }
    /* Whatever the message holds (a URL, a file name, a worker's reply), it stays on its line:
     * control characters are escaped, so no input can forge a line. The fields get the last
     * 600 bytes at most. */
    bool has_fields = nfields > 0 || thread_request_id[0] != '\0';
    size_t room = cap - (has_fields ? 600 : 1) - (size_t)n;
    size_t len = (size_t)n + log_escape(msg, line + n, room);
    if (thread_request_id[0] != '\0') {
        len = text_field(line, len, cap - 1, "request_id", thread_request_id);
    }
    for (size_t i = 0; i < nfields; i++) {
        len = text_field(line, len, cap - 1, fields[i].key, fields[i].value);
    }
    line[len] = '\n';
    line[len + 1] = '\0';
    return len + 1;
}

static void log_vfields(enum log_level level, const struct log_field *fields, size_t nfields,
                        const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));

static void log_vfields(enum log_level level, const struct log_field *fields, size_t nfields,
                        const char *fmt, va_list ap)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if ((int)level < atomic_load(&min_level)) {
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char secs[24];
    strftime(secs, sizeof secs, "%Y-%m-%dT%H:%M:%S", &tm);
    char stamp[48];
    snprintf(stamp, sizeof stamp, "%s.%03ldZ", secs, ts.tv_nsec / 1000000L);

    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);

    char line[4096];
    if (atomic_load(&log_format_now) == LOG_FORMAT_JSON) {
        log_json_line(line, sizeof line, stamp, names[level], log_ident, msg, thread_request_id,
                      fields, nfields);
    } else if (text_line(line, 2048, stamp, level, msg, fields, nfields) == 0) {
        return;
    }
    /* One fputs per line: stdio locks the stream, so lines from threads never interleave. */
    fputs(line, stderr);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vfields(level, NULL, 0, fmt, ap);
    va_end(ap);
}

void log_fields(enum log_level level, const struct log_field *fields, size_t n, const char *fmt,
                ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vfields(level, fields, n, fmt, ap);
    va_end(ap);
}
