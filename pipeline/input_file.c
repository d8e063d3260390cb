/* Opens submitted files beneath input_root, no symbolic link on the path; streams them to curl. */
/* for O_PATH */
#define _GNU_SOURCE

#include "pipeline/input_file.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Names the error of opening a submitted file in a sentence for the call's last_error. */
static void explain(int e, const char *rel, char *why, size_t cap)
{
    const char *what;
    switch (e) {
    case ELOOP:
        what = "has a symbolic link on its path (refused: the file must lie beneath "
               "input_root)";
        break;
    case EXDEV:
        what = "leaves input_root";
        break;
    case ENOENT:
    case ENOTDIR:
        what = "does not exist any more";
        break;
    case EACCES:
    case EPERM:
        what = "is not readable";
        break;
    case ENAMETOOLONG:
        what = "has too long a path";
        break;
    default:
        what = "can't be opened";
        break;
    }
    snprintf(why, cap, "file %s %s (errno %d)", rel, what, e);
}

/* openat2 beneath dirfd with no symbolic link; -1 with errno (ENOSYS where it is missing). */
static int open_beneath(int dirfd, const char *rel, int flags)
{
#ifdef SYS_openat2
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)flags;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    return (int)syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
#else
    (void)dirfd;
    (void)rel;
    (void)flags;
    errno = ENOSYS;
    return -1;
#endif
}

/* The same without openat2: one O_NOFOLLOW open per component, ".." refused. */
static int open_walk(int dirfd, const char *rel, int flags)
{
    char comp[256];
    int cur = dup(dirfd);
    if (cur < 0) {
        return -1;
    }
    const char *p = rel;
    for (;;) {
        while (*p == '/') {
            p++;
        }
        const char *end = strchr(p, '/');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n >= sizeof comp) {
            close(cur);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(comp, p, n);
        comp[n] = '\0';
        bool last = end == NULL || end[strspn(end, "/")] == '\0';
        if (n == 2 && comp[0] == '.' && comp[1] == '.') {
            close(cur);
            errno = EXDEV;
            return -1;
        }
        int next;
        if (last) {
            next = openat(cur, n > 0 ? comp : ".", flags | O_NOFOLLOW);
        } else if (n == 0 || (n == 1 && comp[0] == '.')) {
            p += n;
            continue;
        } else {
            next = openat(cur, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        int saved = errno;
        close(cur);
        if (next < 0) {
            /* O_DIRECTORY | O_NOFOLLOW on a symbolic link says ENOTDIR: tell it as a link. */
            struct stat st;
            if (!last && saved == ENOTDIR && fstatat(dirfd, rel, &st, AT_SYMLINK_NOFOLLOW) == 0) {
                saved = ELOOP;
            }
            errno = saved;
            return -1;
        }
        if (last) {
            return next;
        }
        cur = next;
        p = end;
    }
}

static int open_safely(int dirfd, const char *rel, int flags)
{
    int fd = open_beneath(dirfd, rel, flags);
    if (fd < 0 && (errno == ENOSYS || errno == EPERM)) {
        /* EPERM: a seccomp filter that refuses the newer system call. */
        fd = open_walk(dirfd, rel, flags);
    }
    return fd;
}

int input_file_open(const char *root, const char *rel, long long *size, char *why, size_t cap)
{
    if (rel[0] == '/') {
        snprintf(why, cap, "file %s is absolute (paths are relative to input_root)", rel);
        return -1;
    }
    int dirfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        snprintf(why, cap, "input_root can't be opened (errno %d)", errno);
        return -1;
    }
    /* First only look (O_PATH: nothing is opened for reading, a device has no say), then open
     * for reading what was looked at: the same inode, a regular file. */
    struct stat seen;
    int probe = open_safely(dirfd, rel, O_PATH | O_CLOEXEC);
    if (probe < 0) {
        explain(errno, rel, why, cap);
        close(dirfd);
        return -1;
    }
    int rc = fstat(probe, &seen);
    close(probe);
    if (rc != 0 || !S_ISREG(seen.st_mode)) {
        snprintf(why, cap, "file %s is not a regular file", rel);
        close(dirfd);
        return -1;
    }
    int fd = open_safely(dirfd, rel, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    int saved = errno;
    close(dirfd);
    if (fd < 0) {
        explain(saved, rel, why, cap);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_ino != seen.st_ino ||
        st.st_dev != seen.st_dev) {
        snprintf(why, cap, "file %s is not a regular file (it changed while being opened)", rel);
        close(fd);
        return -1;
    }
    *size = (long long)st.st_size;
    return fd;
}

/* The state curl's callbacks share: one open file. */
struct input_stream {
    int fd;
};

static size_t stream_read(char *buffer, size_t size, size_t nitems, void *arg)
{
    struct input_stream *s = arg;
    size_t want = size * nitems;
    for (;;) {
        ssize_t n = read(s->fd, buffer, want);
        if (n >= 0) {
            return (size_t)n;
        }
        if (errno != EINTR) {
            return CURL_READFUNC_ABORT;
        }
    }
}

static int stream_seek(void *arg, curl_off_t offset, int origin)
{
    struct input_stream *s = arg;
    return lseek(s->fd, (off_t)offset, origin) == (off_t)-1 ? CURL_SEEKFUNC_FAIL : CURL_SEEKFUNC_OK;
}

static void stream_free(void *arg)
{
    struct input_stream *s = arg;
    close(s->fd);
    free(s);
}

int input_file_attach(curl_mimepart *part, const char *root, const char *rel, char *why, size_t cap)
{
    long long size = 0;
    int fd = input_file_open(root, rel, &size, why, cap);
    if (fd < 0) {
        return -1;
    }
    struct input_stream *s = malloc(sizeof *s);
    if (s == NULL) {
        close(fd);
        snprintf(why, cap, "out of memory");
        return -2;
    }
    s->fd = fd;
    if (curl_mime_data_cb(part, (curl_off_t)size, stream_read, stream_seek, stream_free, s) !=
        CURLE_OK) {
        stream_free(s);
        snprintf(why, cap, "out of memory");
        return -2;
    }
    return 0;
}
