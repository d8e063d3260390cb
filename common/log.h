/* Levelled, thread-safe logging to stderr; never logs secrets (callers must not pass them). */
#ifndef COFI_LOG_H
#define COFI_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Sets the lowest level that is printed (default LOG_INFO). Thread-safe. */
void log_set_level(enum log_level level);

/* Parses "debug", "info", "warn" or "error". Returns 0, or -1 and leaves *out unchanged. */
int log_parse_level(const char *s, enum log_level *out);

/* Sets the program name shown on every line (a static string; default "cofi"). */
void log_set_ident(const char *ident);

/* Sends the log (stderr, fd 2) to the file at path from now on, opened for appending (created
 * 0640 when missing): at start-up, and again on SIGHUP after the file was rotated. Returns 0,
 * or a negative errno and the log goes on where it went. Thread-safe (one dup2). */
int log_reopen(const char *path);

/* Prints one line: "2026-11-27T01:02:03.456Z LEVEL ident: message", the message cut at about
 * 2 KiB, its control characters escaped (log_escape): a line is always exactly one line.
 * Thread-safe; can't fail. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

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
