/* Levelled, thread-safe logging to stderr; never logs secrets (callers must not pass them). */
#ifndef COFI_LOG_H
#define COFI_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* How lines are written: text (default) or one JSON object per line. */
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };

/* One field of a structured line (log_fields): key a static identifier, value borrowed text;
 * number: value is a JSON number's text (written unquoted in JSON). */
struct log_field {
    const char *key;
    const char *value;
    bool number;
};

/* Sets the format of every line from now on. Thread-safe. */
void log_set_format(enum log_format format);

/* Parses "text" or "json". Returns 0, or -1 and leaves *out unchanged. */
int log_parse_format(const char *s, enum log_format *out);

/* Sets the request id that every line the calling thread logs carries from now on (copied,
 * cut at 128 bytes), or none with NULL or "". Thread-local; can't fail. */
void log_set_request_id(const char *id);

/* Sets the lowest level that is printed (default LOG_INFO). Thread-safe. */
void log_set_level(enum log_level level);

/* Parses "debug", "info", "warn" or "error". Returns 0, or -1 and leaves *out unchanged. */
int log_parse_level(const char *s, enum log_level *out);

/* True when a line of level would be printed (for callers that prepare fields first).
 * Thread-safe; can't fail. */
bool log_enabled(enum log_level level);

/* Sets the program name shown on every line (a static string; default "cofi"). */
void log_set_ident(const char *ident);

/* Sends the log (stderr, fd 2) to the file at path from now on, opened for appending (created
 * 0640 when missing): at start-up, and again on SIGHUP after the file was rotated. Returns 0,
 * or a negative errno and the log goes on where it went. Thread-safe (one dup2). */
int log_reopen(const char *path);

/* Prints one line: "2026-11-27T01:02:03.456Z LEVEL ident: message request_id=…", the message
 * cut at about 2 KiB, its control characters escaped (log_escape): a line is always exactly
 * one line. With LOG_FORMAT_JSON: {"ts", "level", "ident", "msg", "request_id"?} on one line,
 * every string escaped as JSON wants (and made valid UTF-8). Thread-safe; can't fail. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* As log_msg, with n fields after the message: " key=value" in text (a value with a space,
 * a quote or '=' in quotes, escaped), members of the object in JSON. Thread-safe; can't
 * fail. */
void log_fields(enum log_level level, const struct log_field *fields, size_t n, const char *fmt,
                ...) __attribute__((format(printf, 4, 5)));

/* Writes one JSON line (with its newline, NUL-terminated) of the parts into out (cap >= 512),
 * cut to fit: the message is shortened first, whole characters at a time. Returns its
 * length. Pure; can't fail. (common/log_json.c) */
size_t log_json_line(char *out, size_t cap, const char *ts, const char *level, const char *ident,
                     const char *msg, const char *request_id, const struct log_field *fields,
                     size_t n);

/* Copies the NUL-terminated in to out (cap bytes, cap > 0), escaping newline, carriage return
 * and tab as \n, \r, \t and every other control character (and DEL) as \xHH; stops before
 * a character that would not fit. Returns the length written (out is NUL-terminated).
 * Thread-safe; can't fail. */
size_t log_escape(const char *in, char *out, size_t cap);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
