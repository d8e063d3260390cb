/* cofi-poll: a paced HTTP/1.1 poller for the polled benchmark; latency counts from the due time. */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/cli.h"

#define EXIT_USAGE CLI_EXIT_USAGE

#define MAX_PATHS        256
#define MAX_CONNECTIONS  100000
#define MAX_THREADS      64
#define HEAD_MAX         8192  /* status line and headers of one response */
#define CHUNK_LINE_MAX   1024  /* a chunk-size line or a trailer line */
#define READ_BUF         65536 /* one recv() per readable connection and wake-up */
#define EVENTS_MAX       256
#define NS_PER_S         1000000000LL
#define NS_PER_MS        1000000LL
#define START_DELAY_NS   (10 * NS_PER_MS) /* connections open before the first request is due */
#define DRAIN_MAX_NS     NS_PER_S         /* at the end, answers in flight are awaited this long */
#define BACKOFF_MIN_NS   (10 * NS_PER_MS) /* after a failed connect; doubles up to the max */
#define BACKOFF_MAX_NS   (250 * NS_PER_MS)
#define PROBE_TIMEOUT_MS 5000
#define DEFAULT_TICK_US  1000 /* paced runs: the loop wakes up at most once per tick */

static const char usage[] =
    "usage: cofi-poll [options] URL PATH [PATH...]\n"
    "\n"
    "Polls an HTTP/1.1 server the way dashboards do: each connection (kept alive) sends one\n"
    "GET per interval on a schedule fixed in advance and waits for the answer before its next\n"
    "request. Connection i's k-th request is due at t0 + (i / connections + k) * interval, so\n"
    "the connections are evenly staggered; a request that falls due while the previous answer\n"
    "is still awaited leaves as soon as that answer is in (at the next tick). Each response's\n"
    "latency is recorded from its request's due time (so a slow answer also shows in the\n"
    "requests that waited behind it: no coordinated omission), less the poller's own lateness\n"
    "(the time between the moment the request was due and its connection free, and its send:\n"
    "the poller waiting for a core or its next tick, which a dashboard on another machine\n"
    "would not add); and also from the due time as it is and from the actual send.\n"
    "\n"
    "  URL                  http://HOST:PORT (an IPv4 or [IPv6] literal or a host name; no TLS)\n"
    "  PATH                 /path?query; connection i starts with PATH number i % npaths and\n"
    "                       then takes the paths in turn\n"
    "\n"
    "  --connections N      connections (default 200)\n"
    "  --interval-ms F      each connection sends one request every F ms (default 38.5);\n"
    "                       0: a closed loop, the next request as soon as the answer arrives\n"
    "  --duration-s F       stop after F seconds (default: at SIGINT or SIGTERM)\n"
    "  --timeout-ms F       an answer that takes longer counts as an error and the connection\n"
    "                       is opened again (default 10000; 0: wait for ever)\n"
    "  --tick-us F          the loop wakes up once per tick, reads every answer that came\n"
    "                       and sends every request that fell due (about 40 % less CPU at\n"
    "                       5,000 requests/s); a request leaves at the first tick at or\n"
    "                       after its due time, so up to one tick of the latency from the\n"
    "                       due time is the poller's own (default 1000 us with an interval;\n"
    "                       0: wake for every answer and at every due time, the default of\n"
    "                       the closed loop). Answers are timed by the kernel's receive\n"
    "                       timestamps (SO_TIMESTAMPNS), not by when the loop reads them\n"
    "  --threads N          epoll threads, the connections shared among them (default 1)\n"
    "  --json FILE          write the figures to FILE as one JSON object at the end\n"
    "  --help               print this help and exit\n"
    "\n"
    "On SIGINT, SIGTERM or the end of --duration-s it stops sending, waits up to 1 s for the\n"
    "answers in flight, and prints its figures: responses and responses/s, the offered rate\n"
    "(connections / interval), non-2xx answers, errors by kind (connect, read, write, reset:\n"
    "the server closed or reset a connection with a request in flight, parse, timeout),\n"
    "reconnects (connections opened again after a close or an error), skipped (requests that\n"
    "fell due while a connection could not be opened), p50/p90/p99/p99.9/max latency from the\n"
    "due time less the poller's lateness (JSON pNN_ms), from the due time (pNN_due_ms) and\n"
    "from the send (pNN_sent_ms), the poller's lateness (pNN_late_ms), and its own CPU time.\n"
    "Exit status: 0 when done, 1 when the server cannot be reached at the start, 2 on a bad\n"
    "command line.\n";

/* The command line, immutable once parsed; shared by every thread. */
struct config {
    char url[512];
    char host_header[300];
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int npaths;
    const char *paths[MAX_PATHS];
    char *requests[MAX_PATHS]; /* "GET PATH HTTP/1.1\r\nHost: ...\r\n\r\n", one per path */
    size_t request_len[MAX_PATHS];
    int connections;
    double interval_ms; /* 0: closed loop */
    double duration_s;  /* 0: until a signal */
    double timeout_ms;  /* 0: none */
    double tick_us;     /* 0: wake on every event and due time */
    int threads;
    const char *json_path;
};

/* A log-linear histogram of nanoseconds: exact below 256, then 128 buckets per power of two
 * (each at most 1/128 of its values wide, so a reported value is within 0.4 % of the truth). */
#define HIST_SUB_BITS 7
#define HIST_SUB      (1 << HIST_SUB_BITS)
#define HIST_BUCKETS  ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
    uint64_t count;
    uint64_t min_ns;
    uint64_t max_ns;
    double sum_ns;
    uint64_t buckets[HIST_BUCKETS];
};

enum err_kind { ERR_CONNECT, ERR_READ, ERR_WRITE, ERR_RESET, ERR_PARSE, ERR_TIMEOUT, ERR_COUNT };

static const char *const err_names[ERR_COUNT] = {"connect", "read",  "write",
                                                 "reset",   "parse", "timeout"};

/* What one thread counted. Merged into one after the threads end. */
struct stats {
    uint64_t sent;
    uint64_t responses;
    uint64_t non_2xx;
    uint64_t reconnects;
    uint64_t skipped;
    uint64_t unfinished;
    uint64_t errors[ERR_COUNT];
    struct hist server;   /* from the due time, less the poller's own lateness */
    struct hist due;      /* from the due time */
    struct hist sent_lat; /* from the send */
    struct hist late;     /* the poller's own lateness */
};

enum parse_state {
    PS_HEAD,
    PS_BODY,
    PS_CHUNK_SIZE,
    PS_CHUNK_DATA,
    PS_CHUNK_END,
    PS_TRAILER,
    PS_DONE
};

/* The response being read on one connection. */
struct parser {
    enum parse_state state;
    int status;
    bool close;       /* the server closes the connection after this response */
    bool until_close; /* no length: the body ends when the server closes */
    uint64_t left;    /* bytes of the body or of the current chunk still to come */
    size_t head_len;
    size_t line_len;
    char head[HEAD_MAX];
    char line[CHUNK_LINE_MAX];
};

enum conn_state {
    CONN_DOWN,       /* no socket: waits for its timer to connect again */
    CONN_CONNECTING, /* connect() in progress */
    CONN_IDLE,       /* connected, the next request not due yet */
    CONN_SENDING,    /* part of the request written (rare: the socket buffer was full) */
    CONN_WAITING,    /* request written, reading the answer */
    CONN_CLOSED      /* stopped for good */
};

struct poller;

/* An entry of the timer heap; the key is kept here so that ordering touches no connection. */
struct timer {
    int64_t at;
    struct conn *c;
};

struct conn {
    struct poller *owner;
    int fd;
    int index; /* 0..connections-1 over all threads: its place in the stagger */
    enum conn_state state;
    bool want_out;   /* EPOLLOUT is in the interest set */
    bool opened;     /* a connection of this slot was established before */
    int failures;    /* connects that failed in a row */
    int64_t k;       /* sequence number of the current (or next) request */
    int64_t due_ns;  /* when request k is due */
    int64_t sent_ns; /* when request k was sent */
    int64_t free_ns; /* when the connection could take request k: the previous answer's
                        arrival, or the connect */
    int64_t late_ns; /* how late the poller itself sent request k: after it was due and the
                        connection free (waiting for a core or the next tick) */
    int heap_pos;    /* -1: not in the heap, whose key is the due time, the time to connect
                        again or the deadline of the answer */
    size_t written;
    struct parser parser;
};

/* One epoll thread and the connections it owns. */
struct poller {
    const struct config *cfg;
    int epfd;
    int stop_fd;
    int nconns;
    struct conn *conns;
    struct timer *heap; /* min-heap by time */
    int heap_len;
    int64_t real_minus_mono; /* CLOCK_REALTIME - CLOCK_MONOTONIC, for the kernel's stamps */
    int in_flight;
    int64_t t0_ns;
    int64_t end_ns; /* 0: no duration */
    bool stopping;
    int64_t stop_ns;
    int64_t drain_end_ns;
    char *rbuf;
    pthread_t thread;
    struct stats st;
};

static int stop_eventfd = -1;

/* ------------------------------------------------------------------------------------------ */
/* Time and the command line */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Splits http://HOST[:PORT][/] into cfg->host_header and the resolved cfg->addr (an IPv4
 * address preferred). Returns 0, EXIT_USAGE for a malformed URL, or 1 when HOST does not
 * resolve. */
static int parse_url(const char *url, struct config *cfg)
{
    static const char scheme[] = "http://";
    if (strncasecmp(url, "https://", 8) == 0) {
        return cli_bad(url, "TLS is not supported: use http://HOST:PORT");
    }
    if (strncasecmp(url, scheme, sizeof scheme - 1) != 0) {
        return cli_bad(url, "expected http://HOST:PORT");
    }
    const char *auth = url + sizeof scheme - 1;
    size_t alen = strcspn(auth, "/");
    if (auth[alen] == '/' && auth[alen + 1] != '\0') {
        return cli_bad(url, "expected http://HOST:PORT without a path (paths are arguments)");
    }
    if (alen == 0 || alen >= sizeof cfg->host_header) {
        return cli_bad(url, "expected http://HOST:PORT");
    }
    char host[300];
    const char *port = "80";
    char portbuf[8];
    const char *colon = NULL;
    if (auth[0] == '[') {
        const char *close = memchr(auth, ']', alen);
        if (close == NULL) {
            return cli_bad(url, "unterminated [IPv6 address]");
        }
        snprintf(host, sizeof host, "%.*s", (int)(close - auth - 1), auth + 1);
        if (close + 1 < auth + alen) {
            if (close[1] != ':') {
                return cli_bad(url, "expected :PORT after ]");
            }
            colon = close + 1;
        }
    } else {
        colon = memchr(auth, ':', alen);
        size_t hlen = colon != NULL ? (size_t)(colon - auth) : alen;
        snprintf(host, sizeof host, "%.*s", (int)hlen, auth);
    }
    if (host[0] == '\0') {
        return cli_bad(url, "no host");
    }
    if (colon != NULL) {
        size_t plen = (size_t)(auth + alen - colon - 1);
        if (plen == 0 || plen >= sizeof portbuf || strspn(colon + 1, "0123456789") < plen) {
            return cli_bad(url, "expected a port from 1 to 65535");
        }
        snprintf(portbuf, sizeof portbuf, "%.*s", (int)plen, colon + 1);
        long p = strtol(portbuf, NULL, 10);
        if (p < 1 || p > 65535) {
            return cli_bad(url, "expected a port from 1 to 65535");
        }
        port = portbuf;
    }
    snprintf(cfg->host_header, sizeof cfg->host_header, "%.*s", (int)alen, auth);
    snprintf(cfg->url, sizeof cfg->url, "http://%.*s", (int)alen, auth);

    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "cofi-poll: cannot resolve %s: %s\n", host, gai_strerror(gai));
        return 1;
    }
    const struct addrinfo *pick = res;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
    }
    memcpy(&cfg->addr, pick->ai_addr, pick->ai_addrlen);
    cfg->addrlen = pick->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* A path is sent as it is: it must start with '/' and hold only visible ASCII. */
static int check_path(const char *path)
{
    if (path[0] != '/') {
        return cli_bad(path, "a PATH starts with '/'");
    }
    for (const char *s = path; *s != '\0'; s++) {
        if (*s <= ' ' || *s >= 0x7f) {
            return cli_bad(path, "a PATH holds only visible ASCII characters (no spaces)");
        }
    }
    return 0;
}

/* Parses the command line into cfg. Returns 0 to run, -1 after --help, EXIT_USAGE, or 1 when
 * the host does not resolve. */
static int parse_args(int argc, char **argv, struct config *cfg)
{
    cli_program("cofi-poll");
    memset(cfg, 0, sizeof *cfg);
    cfg->connections = 200;
    cfg->interval_ms = 38.5;
    cfg->timeout_ms = 10000;
    cfg->threads = 1;
    bool tick_set = false;
    const char *url = NULL;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(usage, stdout);
            return -1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            if (url == NULL) {
                url = arg;
            } else if (cfg->npaths == MAX_PATHS) {
                return cli_bad(arg, "at most %d paths", MAX_PATHS);
            } else if (check_path(arg) != 0) {
                return EXIT_USAGE;
            } else {
                cfg->paths[cfg->npaths++] = arg;
            }
            continue;
        }
        char flag[64];
        const char *value = NULL;
        int rc = cli_flag_value(argc, argv, &i, flag, sizeof flag, &value);
        if (rc != 0) {
            return rc;
        }
        if (strcmp(flag, "--connections") == 0) {
            rc = cli_int(flag, value, 1, MAX_CONNECTIONS, &cfg->connections);
        } else if (strcmp(flag, "--interval-ms") == 0) {
            rc = cli_double(flag, value, 0, 3600000, &cfg->interval_ms);
        } else if (strcmp(flag, "--duration-s") == 0) {
            rc = cli_double(flag, value, 0.001, 1e7, &cfg->duration_s);
        } else if (strcmp(flag, "--timeout-ms") == 0) {
            rc = cli_double(flag, value, 0, 3600000, &cfg->timeout_ms);
        } else if (strcmp(flag, "--tick-us") == 0) {
            rc = cli_double(flag, value, 0, 1000000, &cfg->tick_us);
            tick_set = true;
        } else if (strcmp(flag, "--threads") == 0) {
            rc = cli_int(flag, value, 1, MAX_THREADS, &cfg->threads);
        } else if (strcmp(flag, "--json") == 0) {
            if (value[0] == '\0') {
                return cli_bad(flag, "expected a file name");
            }
            cfg->json_path = value;
        } else {
            return cli_bad(flag, "unknown option");
        }
        if (rc != 0) {
            return EXIT_USAGE;
        }
    }
    if (url == NULL) {
        return cli_bad("URL", "is required (http://HOST:PORT)");
    }
    if (cfg->npaths == 0) {
        return cli_bad("PATH", "at least one is required (e.g. /health)");
    }
    if (!tick_set) {
        cfg->tick_us = cfg->interval_ms > 0 ? DEFAULT_TICK_US : 0;
    }
    if (cfg->threads > cfg->connections) {
        return cli_bad("--threads", "%d threads for %d connections", cfg->threads,
                       cfg->connections);
    }
    return parse_url(url, cfg);
}

/* Formats the request of every path. Returns 0, or -1 when out of memory. */
static int build_requests(struct config *cfg)
{
    for (int i = 0; i < cfg->npaths; i++) {
        int n = snprintf(NULL, 0, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cofi-poll\r\n\r\n",
                         cfg->paths[i], cfg->host_header);
        cfg->requests[i] = malloc((size_t)n + 1);
        if (cfg->requests[i] == NULL) {
            return -1;
        }
        snprintf(cfg->requests[i], (size_t)n + 1,
                 "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cofi-poll\r\n\r\n", cfg->paths[i],
                 cfg->host_header);
        cfg->request_len[i] = (size_t)n;
    }
    return 0;
}

/* Lets the process hold as many sockets as --connections asks for. */
static void raise_fd_limit(int connections)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    rlim_t want = (rlim_t)connections + 64;
    if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max) {
        want = rl.rlim_max;
    }
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Opens one connection to the server and closes it, waiting at most PROBE_TIMEOUT_MS.
 * Returns 0, or an errno value. */
static int probe(const struct config *cfg)
{
    int fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return errno;
    }
    int err = 0;
    if (connect(fd, (const struct sockaddr *)&cfg->addr, cfg->addrlen) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int n = poll(&pfd, 1, PROBE_TIMEOUT_MS);
            socklen_t len = sizeof err;
            if (n == 0) {
                err = ETIMEDOUT;
            } else if (n < 0) {
                err = errno;
            } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
                err = errno;
            }
        }
    }
    close(fd);
    return err;
}

/* ------------------------------------------------------------------------------------------ */
/* Histogram */

static int hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB) {
        return (int)v;
    }
    int top = 63 - __builtin_clzll(v);
    int shift = top - HIST_SUB_BITS;
    return shift * HIST_SUB + (int)(v >> shift);
}

/* The middle of bucket i's values. */
static uint64_t hist_value(int i)
{
    if (i < 2 * HIST_SUB) {
        return (uint64_t)i;
    }
    int shift = i / HIST_SUB - 1;
    uint64_t low = (uint64_t)(i - shift * HIST_SUB) << shift;
    return low + (((uint64_t)1 << shift) - 1) / 2;
}

static void hist_add(struct hist *h, int64_t ns)
{
    uint64_t v = ns > 0 ? (uint64_t)ns : 0;
    if (h->count == 0 || v < h->min_ns) {
        h->min_ns = v;
    }
    if (v > h->max_ns) {
        h->max_ns = v;
    }
    h->count++;
    h->sum_ns += (double)v;
    h->buckets[hist_index(v)]++;
}

static void hist_merge(struct hist *into, const struct hist *from)
{
    if (from->count == 0) {
        return;
    }
    if (into->count == 0 || from->min_ns < into->min_ns) {
        into->min_ns = from->min_ns;
    }
    if (from->max_ns > into->max_ns) {
        into->max_ns = from->max_ns;
    }
    into->count += from->count;
    into->sum_ns += from->sum_ns;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        into->buckets[i] += from->buckets[i];
    }
}

/* The value at quantile q (0..1) in ms, within [min, max]; 0 when empty. */
static double hist_quantile_ms(const struct hist *h, double q)
{
    if (h->count == 0) {
        return 0;
    }
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1) {
        rank = 1;
    }
    uint64_t seen = 0;
    uint64_t v = h->max_ns;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            v = hist_value(i);
            break;
        }
    }
    if (v < h->min_ns) {
        v = h->min_ns;
    }
    if (v > h->max_ns) {
        v = h->max_ns;
    }
    return (double)v / NS_PER_MS;
}

/* ------------------------------------------------------------------------------------------ */
/* Response parser */

static void parser_reset(struct parser *ps)
{
    ps->state = PS_HEAD;
    ps->status = 0;
    ps->close = false;
    ps->until_close = false;
    ps->left = 0;
    ps->head_len = 0;
    ps->line_len = 0;
}

static bool name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

/* True when the comma-separated list v (len bytes) holds token, ignoring case. */
static bool has_token(const char *v, size_t len, const char *token)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) {
            i++;
        }
        size_t start = i;
        while (i < len && v[i] != ',') {
            i++;
        }
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) {
            end--;
        }
        if (end > start && name_is(v + start, end - start, token)) {
            return true;
        }
    }
    return false;
}

/* Parses the decimal v (len bytes) into *out. Returns 0, or -1 when it is not a number. */
static int parse_length(const char *v, size_t len, uint64_t *out)
{
    if (len == 0 || len > 15) {
        return -1;
    }
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9') {
            return -1;
        }
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    *out = n;
    return 0;
}

/* Reads the status line and headers in ps->head (ending with the blank line) and chooses how
 * the body ends. Returns 0, or -1 when the head is malformed or asks for what is not
 * supported (an upgrade, a transfer coding other than chunked). */
static int parse_head(struct parser *ps)
{
    const char *h = ps->head;
    const char *end = h + ps->head_len;
    if (ps->head_len < 16 || memcmp(h, "HTTP/1.", 7) != 0 || (h[7] != '0' && h[7] != '1') ||
        h[8] != ' ') {
        return -1;
    }
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (h[i] < '0' || h[i] > '9') {
            return -1;
        }
        status = status * 10 + (h[i] - '0');
    }
    if (h[12] != ' ' && h[12] != '\r') {
        return -1;
    }
    bool chunked = false;
    bool have_length = false;
    bool saw_close = false;
    bool saw_keep_alive = false;
    uint64_t length = 0;
    const char *line = memchr(h, '\n', ps->head_len);
    line = line != NULL ? line + 1 : end;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL) {
            return -1;
        }
        size_t len = (size_t)(eol - line);
        if (len > 0 && line[len - 1] == '\r') {
            len--;
        }
        if (len == 0) {
            break;
        }
        const char *colon = memchr(line, ':', len);
        if (colon == NULL) {
            return -1;
        }
        size_t nlen = (size_t)(colon - line);
        const char *v = colon + 1;
        const char *vend = line + len;
        while (v < vend && (*v == ' ' || *v == '\t')) {
            v++;
        }
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t')) {
            vend--;
        }
        size_t vlen = (size_t)(vend - v);
        if (name_is(line, nlen, "content-length")) {
            uint64_t n = 0;
            if (parse_length(v, vlen, &n) != 0 || (have_length && n != length)) {
                return -1;
            }
            have_length = true;
            length = n;
        } else if (name_is(line, nlen, "transfer-encoding")) {
            if (!has_token(v, vlen, "chunked")) {
                return -1;
            }
            chunked = true;
        } else if (name_is(line, nlen, "connection")) {
            saw_close = saw_close || has_token(v, vlen, "close");
            saw_keep_alive = saw_keep_alive || has_token(v, vlen, "keep-alive");
        }
        line = eol + 1;
    }

    ps->status = status;
    if (status >= 100 && status < 200) {
        if (status == 101) {
            return -1;
        }
        ps->head_len = 0; /* an interim answer: the real one follows */
        return 0;
    }
    ps->close = saw_close || (h[7] == '0' && !saw_keep_alive);
    if (status == 204 || status == 304) {
        ps->state = PS_DONE;
    } else if (chunked) {
        ps->state = PS_CHUNK_SIZE;
        ps->line_len = 0;
    } else if (have_length) {
        ps->left = length;
        ps->state = length > 0 ? PS_BODY : PS_DONE;
    } else {
        ps->until_close = true;
        ps->close = true;
        ps->state = PS_BODY;
    }
    return 0;
}

/* Index just past the first "\r\n\r\n" of h[0..len) at or after from, or 0. */
static size_t head_end(const char *h, size_t from, size_t len)
{
    for (size_t i = from; i + 4 <= len; i++) {
        if (h[i] == '\r' && h[i + 1] == '\n' && h[i + 2] == '\r' && h[i + 3] == '\n') {
            return i + 4;
        }
    }
    return 0;
}

/* Collects one line of data[*i..n) into ps->line, without its CRLF. Returns 1 when the line is
 * complete, 0 when it needs more bytes (all taken), -1 when it is too long. */
static int take_line(struct parser *ps, const char *data, size_t n, size_t *i)
{
    const char *start = data + *i;
    const char *nl = memchr(start, '\n', n - *i);
    size_t len = nl != NULL ? (size_t)(nl - start) : n - *i;
    if (ps->line_len + len >= sizeof ps->line) {
        return -1;
    }
    memcpy(ps->line + ps->line_len, start, len);
    ps->line_len += len;
    *i += len;
    if (nl == NULL) {
        return 0;
    }
    *i += 1;
    if (ps->line_len > 0 && ps->line[ps->line_len - 1] == '\r') {
        ps->line_len--;
    }
    return 1;
}

/* Acts on a complete line in a chunked body. Returns 0, or -1 when it is malformed. */
static int chunk_line(struct parser *ps)
{
    if (ps->state == PS_CHUNK_SIZE) {
        uint64_t size = 0;
        size_t i = 0;
        for (; i < ps->line_len; i++) {
            char c = ps->line[i];
            int d = -1;
            if (c >= '0' && c <= '9') {
                d = c - '0';
            } else if (c >= 'a' && c <= 'f') {
                d = c - 'a' + 10;
            } else if (c >= 'A' && c <= 'F') {
                d = c - 'A' + 10;
            }
            if (d < 0) {
                break;
            }
            if (size >> 56 != 0) {
                return -1;
            }
            size = size * 16 + (uint64_t)d;
        }
        if (i == 0 ||
            (i < ps->line_len && ps->line[i] != ';' && ps->line[i] != ' ' && ps->line[i] != '\t')) {
            return -1;
        }
        ps->left = size;
        ps->state = size > 0 ? PS_CHUNK_DATA : PS_TRAILER;
    } else if (ps->state == PS_CHUNK_END) {
        if (ps->line_len != 0) {
            return -1;
        }
        ps->state = PS_CHUNK_SIZE;
    } else if (ps->line_len == 0) {
        ps->state = PS_DONE; /* the blank line after the trailers */
    }
    ps->line_len = 0;
    return 0;
}

/* Feeds n bytes of a response to the parser. Returns 1 once the response is complete (*used:
 * the bytes it took), 0 when it needs more, -1 when the response is malformed. */
static int parser_feed(struct parser *ps, const char *data, size_t n, size_t *used)
{
    size_t i = 0;
    while (i < n && ps->state != PS_DONE) {
        switch (ps->state) {
        case PS_HEAD: {
            size_t take = n - i;
            size_t room = sizeof ps->head - ps->head_len;
            if (take > room) {
                take = room;
            }
            size_t from = ps->head_len >= 3 ? ps->head_len - 3 : 0;
            memcpy(ps->head + ps->head_len, data + i, take);
            ps->head_len += take;
            size_t end = head_end(ps->head, from, ps->head_len);
            if (end == 0) {
                if (ps->head_len == sizeof ps->head) {
                    return -1;
                }
                i += take;
                break;
            }
            i += take - (ps->head_len - end);
            ps->head_len = end;
            if (parse_head(ps) != 0) {
                return -1;
            }
            break;
        }
        case PS_BODY:
        case PS_CHUNK_DATA: {
            uint64_t take = n - i;
            if (!ps->until_close) {
                if (take > ps->left) {
                    take = ps->left;
                }
                ps->left -= take;
                if (ps->left == 0) {
                    ps->state = ps->state == PS_BODY ? PS_DONE : PS_CHUNK_END;
                }
            }
            i += (size_t)take;
            break;
        }
        case PS_CHUNK_SIZE:
        case PS_CHUNK_END:
        case PS_TRAILER: {
            int r = take_line(ps, data, n, &i);
            if (r < 0 || (r == 1 && chunk_line(ps) != 0)) {
                return -1;
            }
            break;
        }
        case PS_DONE:
            break;
        }
    }
    *used = i;
    return ps->state == PS_DONE ? 1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The timer heap: every connection waiting for a time (due, reconnect, deadline) is in it. */

static void heap_place(struct poller *p, int pos, struct timer t)
{
    p->heap[pos] = t;
    t.c->heap_pos = pos;
}

static void heap_up(struct poller *p, int pos)
{
    struct timer t = p->heap[pos];
    while (pos > 0) {
        int parent = (pos - 1) / 2;
        if (p->heap[parent].at <= t.at) {
            break;
        }
        heap_place(p, pos, p->heap[parent]);
        pos = parent;
    }
    heap_place(p, pos, t);
}

static void heap_down(struct poller *p, int pos)
{
    struct timer t = p->heap[pos];
    for (;;) {
        int child = 2 * pos + 1;
        if (child >= p->heap_len) {
            break;
        }
        if (child + 1 < p->heap_len && p->heap[child + 1].at < p->heap[child].at) {
            child++;
        }
        if (t.at <= p->heap[child].at) {
            break;
        }
        heap_place(p, pos, p->heap[child]);
        pos = child;
    }
    heap_place(p, pos, t);
}

static void heap_remove(struct poller *p, struct conn *c)
{
    int pos = c->heap_pos;
    if (pos < 0) {
        return;
    }
    c->heap_pos = -1;
    p->heap_len--;
    if (pos == p->heap_len) {
        return;
    }
    struct timer last = p->heap[p->heap_len];
    heap_place(p, pos, last);
    heap_up(p, pos);
    heap_down(p, last.c->heap_pos);
}

/* Puts c in the heap with key at, or moves it there. */
static void heap_set(struct poller *p, struct conn *c, int64_t at)
{
    if (c->heap_pos >= 0) {
        int pos = c->heap_pos;
        p->heap[pos].at = at;
        heap_up(p, pos);
        heap_down(p, c->heap_pos);
        return;
    }
    struct timer t = {.at = at, .c = c};
    heap_place(p, p->heap_len, t);
    p->heap_len++;
    heap_up(p, c->heap_pos);
}

/* ------------------------------------------------------------------------------------------ */
/* Connections */

static bool is_in_flight(enum conn_state s)
{
    return s == CONN_SENDING || s == CONN_WAITING;
}

static void set_state(struct conn *c, enum conn_state s)
{
    c->owner->in_flight += (int)is_in_flight(s) - (int)is_in_flight(c->state);
    c->state = s;
}

/* Makes request k the connection's next one, with its due time. */
static void set_request(struct conn *c, int64_t k, int64_t now)
{
    const struct poller *p = c->owner;
    const struct config *cfg = p->cfg;
    c->k = k;
    if (cfg->interval_ms > 0) {
        double slot = (double)c->index / cfg->connections + (double)k;
        c->due_ns = p->t0_ns + (int64_t)(slot * cfg->interval_ms * NS_PER_MS);
    } else {
        c->due_ns = now > p->t0_ns ? now : p->t0_ns; /* closed loop: due when it can leave */
    }
}

static int64_t timeout_ns(const struct config *cfg)
{
    return (int64_t)(cfg->timeout_ms * NS_PER_MS);
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    heap_remove(c->owner, c);
    c->want_out = false;
}

static void set_interest(struct conn *c, bool out)
{
    if (c->want_out == out) {
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0u), .data.ptr = c};
    (void)epoll_ctl(c->owner->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static void conn_connect(struct conn *c, int64_t now);
static void conn_fail(struct conn *c, enum err_kind kind, int64_t now);

/* Writes what is left of request k; waits for EPOLLOUT when the socket is full. */
static void conn_write(struct conn *c, int64_t now)
{
    const struct config *cfg = c->owner->cfg;
    int path = (int)((c->index + c->k) % cfg->npaths);
    const char *req = cfg->requests[path];
    size_t len = cfg->request_len[path];
    ssize_t w = send(c->fd, req + c->written, len - c->written, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            set_state(c, CONN_SENDING);
            set_interest(c, true);
            return;
        }
        conn_fail(c, errno == EPIPE || errno == ECONNRESET ? ERR_RESET : ERR_WRITE, now);
        return;
    }
    c->written += (size_t)w;
    if (c->written < len) {
        set_state(c, CONN_SENDING);
        set_interest(c, true);
        return;
    }
    set_state(c, CONN_WAITING);
    set_interest(c, false);
}

/* Sends request k now. */
static void conn_send(struct conn *c, int64_t now)
{
    struct poller *p = c->owner;
    c->sent_ns = now_ns(); /* now may be the wake-up's, a few answers ago */
    int64_t ready = c->due_ns > c->free_ns ? c->due_ns : c->free_ns;
    c->late_ns = c->sent_ns > ready ? c->sent_ns - ready : 0;
    c->written = 0;
    parser_reset(&c->parser);
    p->st.sent++;
    if (p->cfg->timeout_ms > 0) {
        heap_set(p, c, now + timeout_ns(p->cfg));
    } else {
        heap_remove(p, c);
    }
    conn_write(c, now);
}

/* The connection is ready for request k: sends it if it is due, else waits for its time. */
static void conn_ready(struct conn *c, int64_t now)
{
    if (c->due_ns <= now) {
        conn_send(c, now);
        return;
    }
    set_state(c, CONN_IDLE);
    heap_set(c->owner, c, c->due_ns);
}

static void conn_connected(struct conn *c, int64_t now)
{
    struct poller *p = c->owner;
    if (c->opened) {
        p->st.reconnects++;
    }
    c->opened = true;
    c->failures = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    (void)epoll_ctl(p->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = false;
    c->free_ns = now;
    conn_ready(c, now);
}

/* Gives up the socket after a failed connect and waits (longer after each failure). */
static void conn_down(struct conn *c, int64_t now)
{
    conn_close(c);
    set_state(c, CONN_DOWN);
    if (c->owner->stopping) {
        set_state(c, CONN_CLOSED);
        return;
    }
    int shift = c->failures < 8 ? c->failures : 8;
    int64_t backoff = BACKOFF_MIN_NS << shift;
    if (backoff > BACKOFF_MAX_NS) {
        backoff = BACKOFF_MAX_NS;
    }
    c->failures++;
    heap_set(c->owner, c, now + backoff);
}

/* Opens the connection's socket and starts connecting. */
static void conn_connect(struct conn *c, int64_t now)
{
    struct poller *p = c->owner;
    const struct config *cfg = p->cfg;
    if (c->state == CONN_DOWN && cfg->interval_ms > 0) {
        /* Requests that fell due while no connection could be made are not sent late. */
        while (c->due_ns < now) {
            p->st.skipped++;
            set_request(c, c->k + 1, now);
        }
    } else if (c->state == CONN_DOWN) {
        set_request(c, c->k, now);
    }
    int fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        p->st.errors[ERR_CONNECT]++;
        conn_down(c, now);
        return;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* The kernel stamps each answer with its arrival: latency does not depend on when the
     * loop gets round to reading it. */
    (void)setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    c->fd = fd;
    set_state(c, CONN_CONNECTING);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        p->st.errors[ERR_CONNECT]++;
        conn_down(c, now);
        return;
    }
    c->want_out = true;
    if (connect(fd, (const struct sockaddr *)&cfg->addr, cfg->addrlen) == 0) {
        conn_connected(c, now);
        return;
    }
    if (errno != EINPROGRESS) {
        p->st.errors[ERR_CONNECT]++;
        conn_down(c, now);
        return;
    }
    if (cfg->timeout_ms > 0) {
        heap_set(p, c, now + timeout_ns(cfg));
    } else {
        heap_remove(p, c);
    }
}

/* Counts an error; a request in flight is lost. Connects again at once, or after a back-off
 * when the connect itself failed. */
static void conn_fail(struct conn *c, enum err_kind kind, int64_t now)
{
    struct poller *p = c->owner;
    p->st.errors[kind]++;
    bool connecting = c->state == CONN_CONNECTING;
    if (is_in_flight(c->state)) {
        set_request(c, c->k + 1, now);
    }
    if (connecting) {
        conn_down(c, now);
        return;
    }
    conn_close(c);
    if (p->stopping) {
        set_state(c, CONN_CLOSED);
        return;
    }
    conn_connect(c, now);
}

/* Records the answer to request k, which arrived at `at`, and moves on to request k + 1. */
static void conn_answered(struct conn *c, int64_t at, int64_t now)
{
    struct poller *p = c->owner;
    p->st.responses++;
    if (c->parser.status < 200 || c->parser.status > 299) {
        p->st.non_2xx++;
    }
    hist_add(&p->st.server, at - c->due_ns - c->late_ns);
    hist_add(&p->st.due, at - c->due_ns);
    hist_add(&p->st.sent_lat, at - c->sent_ns);
    hist_add(&p->st.late, c->late_ns);
    c->free_ns = at;
    bool reopen = c->parser.close || c->state == CONN_SENDING;
    set_request(c, c->k + 1, now);
    if (p->stopping) {
        conn_close(c);
        set_state(c, CONN_CLOSED);
        return;
    }
    if (reopen) {
        conn_close(c);
        set_state(c, CONN_IDLE);
        conn_connect(c, now);
        return;
    }
    conn_ready(c, now);
}

/* When the bytes just read arrived, from the kernel's stamp of the last segment in msg, on the
 * monotonic clock; now when there is none. */
static int64_t arrival_ns(const struct conn *c, struct msghdr *msg, int64_t now)
{
    int64_t at = now;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm != NULL; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            at = (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec - c->owner->real_minus_mono;
        }
    }
    if (at > now) {
        at = now;
    }
    if (at < c->sent_ns) {
        at = c->sent_ns;
    }
    return at;
}

static void conn_readable(struct conn *c, int64_t now)
{
    struct poller *p = c->owner;
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = p->rbuf, .iov_len = READ_BUF};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n = recvmsg(c->fd, &msg, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return;
        }
        conn_fail(c, errno == ECONNRESET ? ERR_RESET : ERR_READ, now);
        return;
    }
    if (n == 0) {
        if (is_in_flight(c->state) && c->parser.state == PS_BODY && c->parser.until_close) {
            conn_answered(c, now, now);
        } else if (is_in_flight(c->state)) {
            conn_fail(c, ERR_RESET, now);
        } else if (p->stopping) {
            conn_close(c);
            set_state(c, CONN_CLOSED);
        } else {
            /* The server closed an idle keep-alive connection: not an error. */
            conn_close(c);
            conn_connect(c, now);
        }
        return;
    }
    if (!is_in_flight(c->state)) {
        conn_fail(c, ERR_PARSE, now); /* bytes nobody asked for */
        return;
    }
    size_t used = 0;
    int r = parser_feed(&c->parser, p->rbuf, (size_t)n, &used);
    if (r < 0 || (r == 1 && used < (size_t)n)) {
        conn_fail(c, ERR_PARSE, now);
        return;
    }
    if (r == 1) {
        conn_answered(c, arrival_ns(c, &msg, now), now);
    }
}

static void conn_event(struct conn *c, uint32_t events, int64_t now)
{
    if (c->state == CONN_CLOSED || c->state == CONN_DOWN) {
        return;
    }
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0 ||
            (events & (EPOLLERR | EPOLLHUP)) != 0) {
            conn_fail(c, ERR_CONNECT, now);
            return;
        }
        if ((events & EPOLLOUT) != 0) {
            conn_connected(c, now);
        }
        return;
    }
    if ((events & EPOLLOUT) != 0 && c->state == CONN_SENDING) {
        conn_write(c, now);
        if (!is_in_flight(c->state)) {
            return; /* the write failed: the connection was closed (and maybe opened again) */
        }
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
        conn_readable(c, now);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* One thread's loop */

/* Stops sending: connections without a request in flight are closed, the others get until
 * drain_end_ns to finish. */
static void poller_begin_stop(struct poller *p, int64_t now)
{
    if (p->stopping) {
        return;
    }
    p->stopping = true;
    p->stop_ns = now;
    int64_t drain = DRAIN_MAX_NS;
    if (p->cfg->timeout_ms > 0 && timeout_ns(p->cfg) < drain) {
        drain = timeout_ns(p->cfg);
    }
    p->drain_end_ns = now + drain;
    (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, p->stop_fd, NULL);
    for (int i = 0; i < p->nconns; i++) {
        struct conn *c = &p->conns[i];
        if (!is_in_flight(c->state)) {
            conn_close(c);
            set_state(c, CONN_CLOSED);
        }
    }
}

/* Acts on every timer that is due: sends, connects again, or times out. */
static void poller_timers(struct poller *p)
{
    int64_t now = now_ns();
    while (p->heap_len > 0 && p->heap[0].at <= now) {
        struct conn *c = p->heap[0].c;
        heap_remove(p, c);
        if (c->state == CONN_IDLE) {
            conn_send(c, now);
        } else if (c->state == CONN_DOWN) {
            conn_connect(c, now);
        } else if (c->state == CONN_CONNECTING || is_in_flight(c->state)) {
            conn_fail(c, ERR_TIMEOUT, now);
        }
        now = now_ns();
    }
}

/* The next time the loop must wake up, or INT64_MAX. */
static int64_t poller_next_wake(const struct poller *p)
{
    int64_t wake = INT64_MAX;
    if (p->heap_len > 0) {
        wake = p->heap[0].at;
    }
    if (p->stopping) {
        if (p->drain_end_ns < wake) {
            wake = p->drain_end_ns;
        }
    } else if (p->end_ns > 0 && p->end_ns < wake) {
        wake = p->end_ns;
    }
    return wake;
}

/* Without a tick, waits for what comes first: an event, the next timer, the end. With a tick,
 * sleeps until the next tick whatever happens and then takes every event that came
 * meanwhile, so that one wake-up serves many requests (the kernel's arrival stamps keep the
 * latencies exact). more: the last wait filled the event array, take the rest at once.
 * Returns epoll's count, or -1 with errno. */
static int poller_wait(struct poller *p, struct epoll_event *events, bool more, int64_t now)
{
    int64_t wake = poller_next_wake(p);
    int64_t tick = (int64_t)(p->cfg->tick_us * 1000);
    if (more) {
        wake = now;
    } else if (tick > 0) {
        int64_t next = now + tick - ((now - p->t0_ns) % tick + tick) % tick;
        struct timespec until = {.tv_sec = (time_t)(next / NS_PER_S),
                                 .tv_nsec = (long)(next % NS_PER_S)};
        (void)clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
        wake = now;
    }
    struct timespec ts = {0, 0};
    const struct timespec *timeout = NULL;
    if (wake != INT64_MAX) {
        int64_t wait = wake > now ? wake - now : 0;
        ts.tv_sec = (time_t)(wait / NS_PER_S);
        ts.tv_nsec = (long)(wait % NS_PER_S);
        timeout = &ts;
    }
    return epoll_pwait2(p->epfd, events, EVENTS_MAX, timeout, NULL);
}

static void poller_run(struct poller *p)
{
    int64_t now = now_ns();
    for (int i = 0; i < p->nconns; i++) {
        struct conn *c = &p->conns[i];
        set_request(c, 0, now);
        conn_connect(c, now);
    }
    struct epoll_event events[EVENTS_MAX];
    bool more = false;
    for (;;) {
        now = now_ns();
        if (!p->stopping && p->end_ns > 0 && now >= p->end_ns) {
            poller_begin_stop(p, now);
        }
        if (p->stopping && (p->in_flight == 0 || now >= p->drain_end_ns)) {
            break;
        }
        int n = poller_wait(p, events, more, now);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "cofi-poll: epoll_pwait2 failed (errno %d): stopping\n", errno);
            poller_begin_stop(p, now_ns());
            break;
        }
        more = n == EVENTS_MAX;
        now = now_ns();
        struct timespec real;
        clock_gettime(CLOCK_REALTIME, &real);
        p->real_minus_mono = (int64_t)real.tv_sec * NS_PER_S + real.tv_nsec - now;
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {
                poller_begin_stop(p, now);
            } else {
                conn_event(events[i].data.ptr, events[i].events, now);
            }
        }
        poller_timers(p);
    }
    for (int i = 0; i < p->nconns; i++) {
        struct conn *c = &p->conns[i];
        if (is_in_flight(c->state)) {
            p->st.unfinished++;
        }
        conn_close(c);
        set_state(c, CONN_CLOSED);
    }
}

static void *poller_main(void *arg)
{
    poller_run(arg);
    return NULL;
}

/* Sets up thread `id` of cfg->threads with connections id, id + threads, ... Returns 0, or -1
 * (what was set up is freed by poller_free). */
static int poller_init(struct poller *p, const struct config *cfg, int id, int64_t t0)
{
    p->cfg = cfg;
    p->epfd = -1;
    p->stop_fd = stop_eventfd;
    p->t0_ns = t0;
    p->end_ns = cfg->duration_s > 0 ? t0 + (int64_t)(cfg->duration_s * NS_PER_S) : 0;
    p->nconns = (cfg->connections - id + cfg->threads - 1) / cfg->threads;
    p->conns = calloc((size_t)p->nconns, sizeof *p->conns);
    p->heap = calloc((size_t)p->nconns, sizeof *p->heap);
    p->rbuf = malloc(READ_BUF);
    if (p->conns == NULL || p->heap == NULL || p->rbuf == NULL) {
        return -1;
    }
    for (int i = 0; i < p->nconns; i++) {
        struct conn *c = &p->conns[i];
        c->owner = p;
        c->fd = -1;
        c->index = id + i * cfg->threads;
        c->state = CONN_DOWN;
        c->heap_pos = -1;
    }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    return epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->stop_fd, &ev);
}

static void poller_free(struct poller *p)
{
    if (p->epfd >= 0) {
        close(p->epfd);
    }
    free(p->conns);
    free(p->heap);
    free(p->rbuf);
}

/* ------------------------------------------------------------------------------------------ */
/* Figures */

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    uint64_t one = 1;
    ssize_t rc = write(stop_eventfd, &one, sizeof one);
    (void)rc;
    errno = saved;
}

static int install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) {
        return -1;
    }
    sa.sa_handler = SIG_IGN;
    return sigaction(SIGPIPE, &sa, NULL);
}

/* Everything printed and written at the end. */
struct figures {
    double duration_s;
    double responses_per_s;
    double offered_per_s; /* 0: closed loop */
    uint64_t errors;
    double cpu_s;
    double q_server[5]; /* p50, p90, p99, p99.9, max */
    double q_due[5];
    double q_sent[5];
    double q_late[5];
    double mean_server_ms;
    double mean_due_ms;
    double mean_sent_ms;
};

static const double quantiles[4] = {0.5, 0.9, 0.99, 0.999};
static const char *const quantile_names[5] = {"p50", "p90", "p99", "p999", "max"};

static void figures_compute(struct figures *f, const struct config *cfg, const struct stats *st,
                            int64_t duration_ns)
{
    memset(f, 0, sizeof *f);
    f->duration_s = duration_ns > 0 ? (double)duration_ns / NS_PER_S : 0;
    f->responses_per_s = f->duration_s > 0 ? (double)st->responses / f->duration_s : 0;
    f->offered_per_s = cfg->interval_ms > 0 ? cfg->connections * 1000.0 / cfg->interval_ms : 0;
    for (int i = 0; i < ERR_COUNT; i++) {
        f->errors += st->errors[i];
    }
    for (int i = 0; i < 4; i++) {
        f->q_server[i] = hist_quantile_ms(&st->server, quantiles[i]);
        f->q_due[i] = hist_quantile_ms(&st->due, quantiles[i]);
        f->q_sent[i] = hist_quantile_ms(&st->sent_lat, quantiles[i]);
        f->q_late[i] = hist_quantile_ms(&st->late, quantiles[i]);
    }
    f->q_server[4] = (double)st->server.max_ns / NS_PER_MS;
    f->q_due[4] = (double)st->due.max_ns / NS_PER_MS;
    f->q_sent[4] = (double)st->sent_lat.max_ns / NS_PER_MS;
    f->q_late[4] = (double)st->late.max_ns / NS_PER_MS;
    if (st->due.count > 0) {
        f->mean_server_ms = st->server.sum_ns / (double)st->server.count / NS_PER_MS;
        f->mean_due_ms = st->due.sum_ns / (double)st->due.count / NS_PER_MS;
        f->mean_sent_ms = st->sent_lat.sum_ns / (double)st->sent_lat.count / NS_PER_MS;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        f->cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    }
}

static void print_figures(const struct figures *f, const struct config *cfg, const struct stats *st)
{
    printf("cofi-poll: %.2f s, %llu responses (%.1f/s", f->duration_s,
           (unsigned long long)st->responses, f->responses_per_s);
    if (f->offered_per_s > 0) {
        printf(", %.1f/s offered)", f->offered_per_s);
    } else {
        printf(", closed loop)");
    }
    printf(", %llu non-2xx, %llu errors (", (unsigned long long)st->non_2xx,
           (unsigned long long)f->errors);
    for (int i = 0; i < ERR_COUNT; i++) {
        printf("%s%s %llu", i > 0 ? ", " : "", err_names[i], (unsigned long long)st->errors[i]);
    }
    printf("), %llu reconnects, %llu skipped, %llu unfinished\n",
           (unsigned long long)st->reconnects, (unsigned long long)st->skipped,
           (unsigned long long)st->unfinished);
    printf("cofi-poll: latency from due time, the poller's own lateness left out: p50 %.3f, "
           "p90 %.3f, p99 %.3f, p99.9 %.3f, max %.3f, mean %.3f ms\n",
           f->q_server[0], f->q_server[1], f->q_server[2], f->q_server[3], f->q_server[4],
           f->mean_server_ms);
    printf("cofi-poll: latency from due time: p50 %.3f, p90 %.3f, p99 %.3f, p99.9 %.3f, "
           "max %.3f, mean %.3f ms\n",
           f->q_due[0], f->q_due[1], f->q_due[2], f->q_due[3], f->q_due[4], f->mean_due_ms);
    printf("cofi-poll: the poller's own lateness: p50 %.3f, p90 %.3f, p99 %.3f, p99.9 %.3f, "
           "max %.3f ms\n",
           f->q_late[0], f->q_late[1], f->q_late[2], f->q_late[3], f->q_late[4]);
    printf("cofi-poll: latency from send:     p50 %.3f, p90 %.3f, p99 %.3f, p99.9 %.3f, "
           "max %.3f, mean %.3f ms\n",
           f->q_sent[0], f->q_sent[1], f->q_sent[2], f->q_sent[3], f->q_sent[4], f->mean_sent_ms);
    printf("cofi-poll: cpu %.3f s (%.2f us per response), %d connections, %d thread%s\n", f->cpu_s,
           st->responses > 0 ? f->cpu_s * 1e6 / (double)st->responses : 0.0, cfg->connections,
           cfg->threads, cfg->threads > 1 ? "s" : "");
    fflush(stdout);
}

/* Writes s as a JSON string (the paths and the URL hold visible ASCII only). */
static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\') {
            fputc('\\', out);
        }
        fputc(*s, out);
    }
    fputc('"', out);
}

/* Writes the figures to cfg->json_path. Returns 0, or -1 (reported on stderr). */
static int write_json(const struct figures *f, const struct config *cfg, const struct stats *st)
{
    FILE *out = fopen(cfg->json_path, "w");
    if (out == NULL) {
        fprintf(stderr, "cofi-poll: cannot write %s (errno %d)\n", cfg->json_path, errno);
        return -1;
    }
    fprintf(out, "{\"tool\": \"cofi-poll\", \"url\": ");
    json_string(out, cfg->url);
    fprintf(out, ", \"paths\": [");
    for (int i = 0; i < cfg->npaths; i++) {
        fprintf(out, "%s", i > 0 ? ", " : "");
        json_string(out, cfg->paths[i]);
    }
    fprintf(out, "], \"connections\": %d, \"threads\": %d, \"interval_ms\": %g, ", cfg->connections,
            cfg->threads, cfg->interval_ms);
    fprintf(out, "\"timeout_ms\": %g, \"tick_us\": %g, \"duration_s\": %.3f, \"sent\": %llu, ",
            cfg->timeout_ms, cfg->tick_us, f->duration_s, (unsigned long long)st->sent);
    fprintf(out, "\"requests\": %llu, ", (unsigned long long)st->responses);
    fprintf(out, "\"responses_per_s\": %.1f, ", f->responses_per_s);
    if (f->offered_per_s > 0) {
        fprintf(out, "\"offered_per_s\": %.1f, ", f->offered_per_s);
    } else {
        fprintf(out, "\"offered_per_s\": null, ");
    }
    fprintf(out, "\"non_2xx\": %llu, \"errors\": %llu, \"errors_by_kind\": {",
            (unsigned long long)st->non_2xx, (unsigned long long)f->errors);
    for (int i = 0; i < ERR_COUNT; i++) {
        fprintf(out, "%s\"%s\": %llu", i > 0 ? ", " : "", err_names[i],
                (unsigned long long)st->errors[i]);
    }
    fprintf(out, "}, \"reconnects\": %llu, \"skipped\": %llu, \"unfinished\": %llu, ",
            (unsigned long long)st->reconnects, (unsigned long long)st->skipped,
            (unsigned long long)st->unfinished);
    for (int i = 0; i < 5; i++) {
        fprintf(out, "\"%s_ms\": %.3f, ", quantile_names[i], f->q_server[i]);
    }
    fprintf(out, "\"mean_ms\": %.3f, ", f->mean_server_ms);
    for (int i = 0; i < 5; i++) {
        fprintf(out, "\"%s_due_ms\": %.3f, ", quantile_names[i], f->q_due[i]);
    }
    fprintf(out, "\"mean_due_ms\": %.3f, ", f->mean_due_ms);
    for (int i = 0; i < 5; i++) {
        fprintf(out, "\"%s_late_ms\": %.3f, ", quantile_names[i], f->q_late[i]);
    }
    for (int i = 0; i < 5; i++) {
        fprintf(out, "\"%s_sent_ms\": %.3f, ", quantile_names[i], f->q_sent[i]);
    }
    fprintf(out, "\"mean_sent_ms\": %.3f, \"cpu_s\": %.3f, \"cpu_us_per_response\": %.2f}\n",
            f->mean_sent_ms, f->cpu_s,
            st->responses > 0 ? f->cpu_s * 1e6 / (double)st->responses : 0.0);
    if (fclose(out) != 0) {
        fprintf(stderr, "cofi-poll: cannot write %s (errno %d)\n", cfg->json_path, errno);
        return -1;
    }
    return 0;
}

static void stats_merge(struct stats *into, const struct stats *from)
{
    into->sent += from->sent;
    into->responses += from->responses;
    into->non_2xx += from->non_2xx;
    into->reconnects += from->reconnects;
    into->skipped += from->skipped;
    into->unfinished += from->unfinished;
    for (int i = 0; i < ERR_COUNT; i++) {
        into->errors[i] += from->errors[i];
    }
    hist_merge(&into->server, &from->server);
    hist_merge(&into->due, &from->due);
    hist_merge(&into->sent_lat, &from->sent_lat);
    hist_merge(&into->late, &from->late);
}

/* ------------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    static struct config cfg;
    int rc = parse_args(argc, argv, &cfg);
    if (rc == -1) {
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    int status = 1;
    struct poller *pollers = NULL;
    struct stats *total = NULL;
    int started = 0;

    stop_eventfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_eventfd < 0 || install_signals() != 0 || build_requests(&cfg) != 0) {
        fprintf(stderr, "cofi-poll: cannot set up (errno %d)\n", errno);
        goto out;
    }
    raise_fd_limit(cfg.connections);
    int err = probe(&cfg);
    if (err != 0) {
        char msg[128];
        if (strerror_r(err, msg, sizeof msg) != 0) {
            snprintf(msg, sizeof msg, "errno %d", err);
        }
        fprintf(stderr, "cofi-poll: cannot connect to %s: %s\n", cfg.url, msg);
        goto out;
    }

    pollers = calloc((size_t)cfg.threads, sizeof *pollers);
    total = calloc(1, sizeof *total);
    if (pollers == NULL || total == NULL) {
        fprintf(stderr, "cofi-poll: out of memory\n");
        goto out;
    }
    for (int i = 0; i < cfg.threads; i++) {
        pollers[i].epfd = -1;
    }
    int64_t t0 = now_ns() + START_DELAY_NS;
    for (int i = 0; i < cfg.threads; i++) {
        if (poller_init(&pollers[i], &cfg, i, t0) != 0) {
            fprintf(stderr, "cofi-poll: cannot set up thread %d (errno %d)\n", i, errno);
            goto out;
        }
    }
    printf("cofi-poll: %s, %d path%s, %d connections, ", cfg.url, cfg.npaths,
           cfg.npaths > 1 ? "s" : "", cfg.connections);
    if (cfg.interval_ms > 0) {
        printf("one request per %g ms each (%.1f/s offered)", cfg.interval_ms,
               cfg.connections * 1000.0 / cfg.interval_ms);
    } else {
        printf("closed loop");
    }
    printf(", %d thread%s, ", cfg.threads, cfg.threads > 1 ? "s" : "");
    if (cfg.tick_us > 0) {
        printf("a tick of %g us\n", cfg.tick_us);
    } else {
        printf("no tick\n");
    }
    fflush(stdout);

    bool all_started = true;
    for (started = 1; started < cfg.threads; started++) {
        if (pthread_create(&pollers[started].thread, NULL, poller_main, &pollers[started]) != 0) {
            fprintf(stderr, "cofi-poll: cannot start thread %d: stopping\n", started);
            all_started = false;
            on_signal(0);
            break;
        }
    }
    poller_run(&pollers[0]);
    for (int i = 1; i < started; i++) {
        pthread_join(pollers[i].thread, NULL);
    }
    int64_t stop = 0;
    for (int i = 0; i < started; i++) {
        stats_merge(total, &pollers[i].st);
        if (pollers[i].stop_ns > stop) {
            stop = pollers[i].stop_ns;
        }
    }
    struct figures f;
    figures_compute(&f, &cfg, total, stop - t0);
    print_figures(&f, &cfg, total);
    status = all_started ? 0 : 1;
    if (cfg.json_path != NULL && write_json(&f, &cfg, total) != 0) {
        status = 1;
    }

out:
    if (pollers != NULL) {
        for (int i = 0; i < cfg.threads; i++) {
            poller_free(&pollers[i]);
        }
    }
    free(pollers);
    free(total);
    for (int i = 0; i < cfg.npaths; i++) {
        free(cfg.requests[i]);
    }
    if (stop_eventfd >= 0) {
        close(stop_eventfd);
    }
    return status;
}
