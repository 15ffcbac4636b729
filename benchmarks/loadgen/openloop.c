/*
 * openloop.c - a fixed-rate (open-loop) HTTP/1.1 load generator.
 *
 * Why this exists: closed-loop tools (wrk, ab, hey) send the next request only
 * after the previous one returned, so a server that stalls also stalls the
 * client, and the requests that *should* have been sent during the stall are
 * never timed ("coordinated omission"). Here request i is due at
 * t0 + i / rate whatever happens, and its latency is measured from that
 * *intended* time, so time spent waiting behind a stalled request counts.
 *
 * Model: N keep-alive connections, no pipelining. Request i belongs to
 * connection i % N (as in wrk2); each connection keeps a FIFO of its due
 * requests and sends the next one as soon as the previous response is read.
 * Because a connection's requests are i = c, c+N, c+2N, ..., the FIFO is just
 * two counters (scheduled, completed).
 *
 * Timing: CLOCK_MONOTONIC, a timerfd armed at the next due time (absolute,
 * nanosecond resolution) inside one epoll loop, timer slack set to 1 us.
 * Every latency sample is kept (two int64 per request) and sorted at the end,
 * so percentiles are exact, not bucketed.
 *
 * Output (stdout): "window-start" when the first measured request is due,
 * "window-end" when the last request is due (the harness samples /proc
 * between the two), then one line of JSON with the results.
 *
 * Build: gcc -O2 -o openloop openloop.c   (Linux only; no other dependencies)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 4096
#define HDR_MAX 16384
#define READ_BUF 65536
#define MAX_EXTRA_HEADERS 32
#define RECONNECT_BACKOFF_NS 10000000LL /* 10 ms */

enum conn_state { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };
enum body_mode { B_NONE, B_LENGTH, B_CHUNKED, B_UNTIL_CLOSE };
enum chunk_state { CH_SIZE, CH_DATA, CH_DATA_CRLF, CH_TRAILER };
enum err_kind { E_CONNECT, E_READ, E_WRITE, E_STATUS, E_TIMEOUT, E_PARSE, E_KINDS };
static const char *ERR_NAMES[E_KINDS] = {"connect", "read", "write", "status", "timeout", "parse"};

typedef struct {
    int fd;
    int idx;
    enum conn_state state;
    uint64_t k_sched; /* requests due on this connection so far */
    uint64_t k_done;  /* requests finished (ok or error) */
    int64_t sent_at;  /* when the in-flight request was written */
    int64_t retry_at; /* C_DOWN: earliest reconnect */
    size_t wr_off;
    /* response parser */
    char hdr[HDR_MAX];
    size_t hdr_len;
    int in_body;
    int status;
    int close_after;
    enum body_mode body;
    int64_t body_left;
    enum chunk_state chunk;
    char line[64];
    size_t line_len;
} conn_t;

static struct {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char *request;
    size_t request_len;
    double rate;
    double duration_s;
    double warmup_s;
    double drain_s;
    int64_t timeout_ns;
    int64_t spin_ns;
    int nconns;
} cfg;

static conn_t *conns;
static int epfd;
static int64_t t0;
static uint64_t total;       /* requests in the whole schedule */
static uint64_t first_measured;
static uint64_t next_i;      /* next request to become due */
static uint64_t finished;    /* requests finished (ok or error) */
static int64_t *lat;         /* completion - intended, per measured ok request */
static int64_t *svc;         /* completion - actual send */
static int64_t *lag;         /* actual send - intended, when the connection was idle */
static uint64_t nlat, nlag;
static uint64_t errors[E_KINDS];
static uint64_t measured_errors; /* errors[] sum: measured requests only */
static uint64_t warmup_errors;
static uint64_t queued;       /* measured requests that had to wait for their connection */
static uint64_t reconnects;
static int64_t last_completion;
static volatile sig_atomic_t interrupted;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t intended(uint64_t i) { return t0 + (int64_t)((double)i * 1e9 / cfg.rate); }

static void die(const char *msg) {
    fprintf(stderr, "openloop: %s: %s\n", msg, strerror(errno));
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: openloop -r RATE -d SECONDS [-c CONNS] [-w WARMUP_S] [-t TIMEOUT_MS]\n"
            "                [-D DRAIN_S] [-H 'Name: value']... http://HOST:PORT/PATH\n");
    exit(2);
}

static uint64_t request_index(const conn_t *c, uint64_t k) { return (uint64_t)c->idx + k * (uint64_t)cfg.nconns; }

static void epoll_set(conn_t *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) die("epoll_ctl");
}

static void reset_parser(conn_t *c) {
    c->hdr_len = 0;
    c->in_body = 0;
    c->status = 0;
    c->close_after = 0;
    c->body = B_NONE;
    c->body_left = 0;
    c->chunk = CH_SIZE;
    c->line_len = 0;
}

/* Finish the head request of c (ok or with an error kind, -1 = ok). */
static void finish_head(conn_t *c, int64_t now, int err) {
    uint64_t i = request_index(c, c->k_done);
    c->k_done++;
    finished++;
    if (err >= 0) {
        if (i >= first_measured) {
            errors[err]++;
            measured_errors++;
        } else {
            warmup_errors++;
        }
        return;
    }
    if (i >= first_measured) {
        lat[nlat] = now - intended(i);
        svc[nlat] = now - c->sent_at;
        nlat++;
        last_completion = now;
    }
}

static void send_head(conn_t *c, int64_t now);
static void start_connect(conn_t *c, int64_t now);

static void close_conn(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_DOWN;
    reset_parser(c);
}

/* The connection broke: the in-flight request fails with `err`; queued ones
 * are retried on a new connection (or fail as connect errors if that fails). */
static void conn_failed(conn_t *c, int64_t now, int err) {
    int had_inflight = (c->state == C_BUSY);
    close_conn(c);
    if (had_inflight) finish_head(c, now, err);
    c->retry_at = now;
    if (c->k_done < c->k_sched) start_connect(c, now);
}

static void fail_queue(conn_t *c, int64_t now, int err) {
    while (c->k_done < c->k_sched) finish_head(c, now, err);
}

static void start_connect(conn_t *c, int64_t now) {
    if (now < c->retry_at) {
        fail_queue(c, now, E_CONNECT);
        return;
    }
    reconnects++;
    c->fd = socket(cfg.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(c->fd, (struct sockaddr *)&cfg.addr, cfg.addr_len);
    if (rc < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        c->state = C_DOWN;
        c->retry_at = now + RECONNECT_BACKOFF_NS;
        fail_queue(c, now, E_CONNECT);
        return;
    }
    c->state = C_CONNECTING;
    c->sent_at = now; /* connect timeout runs from here */
    epoll_set(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void on_connected(conn_t *c, int64_t now) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
        close_conn(c);
        c->retry_at = now + RECONNECT_BACKOFF_NS;
        fail_queue(c, now, E_CONNECT);
        return;
    }
    c->state = C_IDLE;
    epoll_set(c, EPOLLIN, EPOLL_CTL_MOD);
    if (c->k_done < c->k_sched) send_head(c, now);
}

static void try_write(conn_t *c, int64_t now) {
    while (c->wr_off < cfg.request_len) {
        ssize_t n = write(c->fd, cfg.request + c->wr_off, cfg.request_len - c->wr_off);
        if (n < 0) {
            if (errno == EAGAIN) {
                epoll_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
                return;
            }
            if (errno == EINTR) continue;
            conn_failed(c, now, E_WRITE);
            return;
        }
        c->wr_off += (size_t)n;
    }
}

/* Write the head request of c; c must be idle with a non-empty queue. */
static void send_head(conn_t *c, int64_t now) {
    uint64_t i = request_index(c, c->k_done);
    int64_t due = intended(i);
    if (i >= first_measured) {
        /* How late the generator itself is: only meaningful when the request
         * did not have to wait for its connection. */
        if (c->sent_at <= due) lag[nlag++] = now - due;
        else queued++;
    }
    c->state = C_BUSY;
    c->sent_at = now;
    c->wr_off = 0;
    reset_parser(c);
    try_write(c, now);
}

static void response_done(conn_t *c, int64_t now) {
    int ok = c->status >= 200 && c->status < 400;
    int must_close = c->close_after;
    finish_head(c, now, ok ? -1 : E_STATUS);
    c->state = C_IDLE;
    c->sent_at = now;
    reset_parser(c);
    if (must_close) {
        close_conn(c);
        c->retry_at = now;
        if (c->k_done < c->k_sched) start_connect(c, now);
        return;
    }
    if (c->k_done < c->k_sched) send_head(c, now);
}

static const char *find_header(const char *hdr, const char *name) {
    size_t n = strlen(name);
    const char *p = strstr(hdr, "\r\n");
    while (p && p[2] != '\r') {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            p += n + 1;
            while (*p == ' ' || *p == '\t') p++;
            return p;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

/* Parse the header block in c->hdr (NUL-terminated, ends with CRLFCRLF). */
static int parse_headers(conn_t *c) {
    if (strncmp(c->hdr, "HTTP/1.", 7) != 0 || strlen(c->hdr) < 12) return -1;
    c->status = atoi(c->hdr + 9);
    const char *v;
    if ((v = find_header(c->hdr, "connection")) && strncasecmp(v, "close", 5) == 0) c->close_after = 1;
    if (strncmp(c->hdr, "HTTP/1.0", 8) == 0 &&
        !((v = find_header(c->hdr, "connection")) && strncasecmp(v, "keep-alive", 10) == 0))
        c->close_after = 1;
    if (c->status == 204 || c->status == 304 || (c->status >= 100 && c->status < 200)) {
        c->body = B_NONE;
    } else if ((v = find_header(c->hdr, "transfer-encoding")) && strncasecmp(v, "chunked", 7) == 0) {
        c->body = B_CHUNKED;
        c->chunk = CH_SIZE;
    } else if ((v = find_header(c->hdr, "content-length"))) {
        c->body = B_LENGTH;
        c->body_left = strtoll(v, NULL, 10);
    } else {
        c->body = B_UNTIL_CLOSE;
        c->close_after = 1;
    }
    return 0;
}

/* Consume body bytes; returns bytes used, sets *done when the body ended. */
static size_t consume_body(conn_t *c, const char *p, size_t n, int *done) {
    size_t used = 0;
    *done = 0;
    switch (c->body) {
    case B_NONE:
        *done = 1;
        return 0;
    case B_UNTIL_CLOSE:
        return n;
    case B_LENGTH: {
        size_t take = (int64_t)n < c->body_left ? n : (size_t)c->body_left;
        c->body_left -= (int64_t)take;
        if (c->body_left == 0) *done = 1;
        return take;
    }
    case B_CHUNKED:
        while (used < n && !*done) {
            if (c->chunk == CH_DATA) {
                size_t take = (int64_t)(n - used) < c->body_left ? n - used : (size_t)c->body_left;
                used += take;
                c->body_left -= (int64_t)take;
                if (c->body_left == 0) c->chunk = CH_DATA_CRLF;
                continue;
            }
            /* line-oriented states: size line, CRLF after data, trailer */
            char ch = p[used++];
            if (c->line_len < sizeof c->line - 1) c->line[c->line_len++] = ch;
            if (ch != '\n') continue;
            c->line[c->line_len] = 0;
            if (c->chunk == CH_SIZE) {
                c->body_left = strtoll(c->line, NULL, 16);
                c->chunk = c->body_left == 0 ? CH_TRAILER : CH_DATA;
            } else if (c->chunk == CH_DATA_CRLF) {
                c->chunk = CH_SIZE;
            } else if (c->chunk == CH_TRAILER && c->line_len <= 2) {
                *done = 1;
            }
            c->line_len = 0;
        }
        return used;
    }
    return n;
}

static void on_readable(conn_t *c, int64_t now) {
    static char buf[READ_BUF];
    const int fd0 = c->fd;
    for (;;) {
        if (c->fd != fd0) return; /* the connection was replaced while handling */
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EAGAIN) return;
            if (errno == EINTR) continue;
            conn_failed(c, now, E_READ);
            return;
        }
        if (n == 0) {
            if (c->state == C_BUSY && c->in_body && c->body == B_UNTIL_CLOSE) {
                response_done(c, now); /* close_after is set: closes, reconnects if needed */
                return;
            }
            /* Server closed an idle keep-alive connection, or mid-response. */
            if (c->state == C_BUSY) conn_failed(c, now, E_READ);
            else {
                close_conn(c);
                c->retry_at = now;
            }
            return;
        }
        if (c->state != C_BUSY) continue; /* unsolicited bytes: ignore */
        size_t off = 0;
        while (off < (size_t)n && c->state == C_BUSY) {
            if (!c->in_body) {
                /* append to header buffer until CRLFCRLF */
                while (off < (size_t)n && c->hdr_len < HDR_MAX - 1) {
                    c->hdr[c->hdr_len++] = buf[off++];
                    if (c->hdr_len >= 4 && memcmp(c->hdr + c->hdr_len - 4, "\r\n\r\n", 4) == 0) break;
                }
                c->hdr[c->hdr_len] = 0;
                if (c->hdr_len >= HDR_MAX - 1) {
                    conn_failed(c, now, E_PARSE);
                    return;
                }
                if (c->hdr_len < 4 || memcmp(c->hdr + c->hdr_len - 4, "\r\n\r\n", 4) != 0) break;
                if (parse_headers(c) < 0) {
                    conn_failed(c, now, E_PARSE);
                    return;
                }
                if (c->status >= 100 && c->status < 200) { /* interim response */
                    c->hdr_len = 0;
                    continue;
                }
                c->in_body = 1;
            }
            int done = 0;
            off += consume_body(c, buf + off, (size_t)n - off, &done);
            if (done) {
                response_done(c, now);
                if (c->fd != fd0) return; /* reconnected: rest of buf is stale */
            }
        }
        if (n < (ssize_t)sizeof buf) return;
    }
}

static void check_timeouts(int64_t now) {
    for (int j = 0; j < cfg.nconns; j++) {
        conn_t *c = &conns[j];
        if ((c->state == C_BUSY || c->state == C_CONNECTING) && now - c->sent_at > cfg.timeout_ns) {
            if (c->state == C_BUSY) conn_failed(c, now, E_TIMEOUT);
            else {
                close_conn(c);
                c->retry_at = now + RECONNECT_BACKOFF_NS;
                fail_queue(c, now, E_CONNECT);
            }
        }
    }
}

static void arm_timer(int tfd, int64_t at) {
    struct itimerspec its = {0};
    its.it_value.tv_sec = at / 1000000000LL;
    its.it_value.tv_nsec = at % 1000000000LL;
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array, in milliseconds. */
static double pct_ms(const int64_t *v, uint64_t n, double p) {
    if (n == 0) return 0.0;
    uint64_t permille = (uint64_t)(p * 10.0 + 0.5); /* 99.9 -> 999: integer maths, no FP rounding */
    uint64_t rank = (permille * n + 999) / 1000;      /* ceil(p/100 * n) */
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return (double)v[rank - 1] / 1e6;
}

static void print_dist(const char *name, int64_t *v, uint64_t n) {
    qsort(v, n, sizeof *v, cmp_i64);
    double sum = 0;
    for (uint64_t j = 0; j < n; j++) sum += (double)v[j];
    printf("\"%s\":{\"count\":%llu,\"mean\":%.4f,\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,\"p99.9\":%.4f,"
           "\"max\":%.4f,\"min\":%.4f}",
           name, (unsigned long long)n, n ? sum / (double)n / 1e6 : 0.0, pct_ms(v, n, 50), pct_ms(v, n, 90),
           pct_ms(v, n, 99), pct_ms(v, n, 99.9), n ? (double)v[n - 1] / 1e6 : 0.0, n ? (double)v[0] / 1e6 : 0.0);
}

static uint64_t count_over(const int64_t *sorted, uint64_t n, double ms) {
    int64_t lim = (int64_t)(ms * 1e6);
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        if (sorted[mid] <= lim) lo = mid + 1;
        else hi = mid;
    }
    return n - lo;
}

static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

static void parse_url(const char *url, char **host, char **port, char **path) {
    if (strncmp(url, "http://", 7) != 0) usage();
    const char *h = url + 7;
    const char *slash = strchr(h, '/');
    size_t hostport_len = slash ? (size_t)(slash - h) : strlen(h);
    char *hp = strndup(h, hostport_len);
    *path = strdup(slash ? slash : "/");
    char *colon = strrchr(hp, ':');
    if (hp[0] == '[') { /* [v6]:port */
        char *end = strchr(hp, ']');
        if (!end) usage();
        *end = 0;
        *host = strdup(hp + 1);
        *port = strdup(end[1] == ':' ? end + 2 : "80");
    } else if (colon) {
        *colon = 0;
        *host = strdup(hp);
        *port = strdup(colon + 1);
    } else {
        *host = strdup(hp);
        *port = strdup("80");
    }
    free(hp);
}

int main(int argc, char **argv) {
    const char *extra[MAX_EXTRA_HEADERS];
    int nextra = 0;
    cfg.nconns = 16;
    cfg.warmup_s = 0;
    cfg.drain_s = 5;
    cfg.timeout_ns = 10000000000LL;
    int opt;
    while ((opt = getopt(argc, argv, "r:d:c:w:t:D:H:s:")) != -1) {
        switch (opt) {
        case 'r': cfg.rate = atof(optarg); break;
        case 'd': cfg.duration_s = atof(optarg); break;
        case 'c': cfg.nconns = atoi(optarg); break;
        case 'w': cfg.warmup_s = atof(optarg); break;
        case 't': cfg.timeout_ns = (int64_t)(atof(optarg) * 1e6); break;
        case 'D': cfg.drain_s = atof(optarg); break;
        case 's': cfg.spin_ns = (int64_t)(atof(optarg) * 1e3); break;
        case 'H':
            if (nextra < MAX_EXTRA_HEADERS) extra[nextra++] = optarg;
            break;
        default: usage();
        }
    }
    if (optind != argc - 1 || cfg.rate <= 0 || cfg.duration_s <= 0 || cfg.nconns < 1 || cfg.nconns > MAX_CONNS ||
        cfg.warmup_s < 0 || cfg.warmup_s >= cfg.duration_s)
        usage();

    char *host, *port, *path;
    parse_url(argv[optind], &host, &port, &path);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "openloop: resolve %s:%s: %s\n", host, port, gai_strerror(gai));
        return 2;
    }
    memcpy(&cfg.addr, ai->ai_addr, ai->ai_addrlen);
    cfg.addr_len = ai->ai_addrlen;
    freeaddrinfo(ai);

    size_t cap = 512 + strlen(path) + strlen(host) + strlen(port);
    for (int j = 0; j < nextra; j++) cap += strlen(extra[j]) + 2;
    cfg.request = malloc(cap);
    int len = snprintf(cfg.request, cap, "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: meshline-openloop\r\n", path,
                       host, port);
    for (int j = 0; j < nextra; j++) len += snprintf(cfg.request + len, cap - (size_t)len, "%s\r\n", extra[j]);
    len += snprintf(cfg.request + len, cap - (size_t)len, "\r\n");
    cfg.request_len = (size_t)len;

    double total_d = cfg.rate * cfg.duration_s;
    if (total_d > 200e6) {
        fprintf(stderr, "openloop: rate * duration too large\n");
        return 2;
    }
    total = (uint64_t)total_d;
    first_measured = (uint64_t)(cfg.rate * cfg.warmup_s);
    lat = malloc(sizeof *lat * (total + 1));
    svc = malloc(sizeof *svc * (total + 1));
    lag = malloc(sizeof *lag * (total + 1));
    conns = calloc((size_t)cfg.nconns, sizeof *conns);
    if (!lat || !svc || !lag || !conns) die("malloc");

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0); /* stop (and report) if the harness dies */

    epfd = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0) die("epoll/timerfd");
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    /* Open every connection before the clock starts (blocking connect). */
    for (int j = 0; j < cfg.nconns; j++) {
        conn_t *c = &conns[j];
        c->idx = j;
        c->fd = socket(cfg.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) die("socket");
        if (connect(c->fd, (struct sockaddr *)&cfg.addr, cfg.addr_len) < 0) {
            fprintf(stderr, "openloop: connect %s:%s: %s\n", host, port, strerror(errno));
            return 3;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        c->state = C_IDLE;
        epoll_set(c, EPOLLIN, EPOLL_CTL_ADD);
    }

    struct epoll_event events[256];
    t0 = now_ns() + 1000000; /* 1 ms from now */
    int64_t sched_end = intended(total);
    int64_t drain_deadline = sched_end + (int64_t)(cfg.drain_s * 1e9);
    int window_started = 0, window_ended = 0;
    arm_timer(tfd, t0 - cfg.spin_ns);

    while (!interrupted) {
        int64_t now = now_ns();
        uint64_t before = next_i;
        while (next_i < total && intended(next_i) <= now) {
            conn_t *c = &conns[next_i % (uint64_t)cfg.nconns];
            c->k_sched++;
            next_i++;
            if (c->state == C_IDLE && c->k_done + 1 == c->k_sched) send_head(c, now);
            else if (c->state == C_DOWN) start_connect(c, now);
        }
        if (!window_started && next_i > first_measured) {
            window_started = 1;
            printf("window-start\n");
            fflush(stdout);
        }
        if (!window_ended && next_i >= total) {
            window_ended = 1;
            printf("window-end\n");
            fflush(stdout);
        }
        if (next_i != before && next_i < total) arm_timer(tfd, intended(next_i) - cfg.spin_ns);
        check_timeouts(now);
        if (next_i >= total && (finished >= total || now >= drain_deadline)) break;

        int wait_ms = -1;
        if (next_i >= total) {
            int64_t left = drain_deadline - now;
            wait_ms = (int)(left / 1000000) + 1;
            if (wait_ms > 100) wait_ms = 100; /* keep checking per-request timeouts */
        } else if (intended(next_i) - now <= cfg.spin_ns) {
            wait_ms = 0; /* due very soon: poll instead of sleeping (no wake-up latency) */
        }
        int n = epoll_wait(epfd, events, 256, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        now = now_ns();
        for (int j = 0; j < n; j++) {
            conn_t *c = events[j].data.ptr;
            if (!c) {
                uint64_t exp;
                ssize_t r = read(tfd, &exp, sizeof exp);
                (void)r;
                continue;
            }
            if (c->fd < 0) continue;
            if (c->state == C_CONNECTING) {
                on_connected(c, now);
                continue;
            }
            if (events[j].events & (EPOLLERR | EPOLLHUP)) {
                if (!(events[j].events & EPOLLIN)) {
                    if (c->state == C_BUSY) conn_failed(c, now, E_READ);
                    else close_conn(c);
                    continue;
                }
            }
            if (events[j].events & EPOLLIN) on_readable(c, now);
            if (c->fd >= 0 && c->state == C_BUSY && (events[j].events & EPOLLOUT)) {
                try_write(c, now);
                if (c->fd >= 0 && c->wr_off >= cfg.request_len) epoll_set(c, EPOLLIN, EPOLL_CTL_MOD);
            }
        }
    }
    int64_t end = now_ns();
    if (!window_ended) {
        printf("window-end\n");
        fflush(stdout);
    }

    /* Whatever is still queued or in flight did not complete in time. */
    uint64_t unfinished = 0;
    for (int j = 0; j < cfg.nconns; j++) {
        conn_t *c = &conns[j];
        while (c->k_done < c->k_sched) {
            if (request_index(c, c->k_done) >= first_measured) unfinished++;
            finish_head(c, end, E_TIMEOUT);
        }
    }
    uint64_t never_sent = total - next_i;

    int64_t window_start = intended(first_measured);
    int64_t window_len = (last_completion > sched_end ? last_completion : sched_end) - window_start;
    if (interrupted) window_len = end - window_start;
    double achieved = window_len > 0 ? (double)nlat / ((double)window_len / 1e9) : 0.0;

    printf("{\"target_rate\":%.3f,\"duration_s\":%.3f,\"warmup_s\":%.3f,\"connections\":%d,"
           "\"scheduled\":%llu,\"measured\":%llu,\"ok\":%llu,\"errors\":%llu,\"unfinished\":%llu,"
           "\"never_sent\":%llu,\"warmup_errors\":%llu,\"interrupted\":%s,\"achieved_rate\":%.3f,\"queued\":%llu,\"reconnects\":%llu,",
           cfg.rate, cfg.duration_s, cfg.warmup_s, cfg.nconns, (unsigned long long)total,
           (unsigned long long)(total - first_measured), (unsigned long long)nlat,
           (unsigned long long)measured_errors, (unsigned long long)unfinished, (unsigned long long)never_sent,
           (unsigned long long)warmup_errors, interrupted ? "true" : "false", achieved, (unsigned long long)queued, (unsigned long long)reconnects);
    printf("\"error_kinds\":{");
    for (int k = 0; k < E_KINDS; k++) printf("%s\"%s\":%llu", k ? "," : "", ERR_NAMES[k], (unsigned long long)errors[k]);
    printf("},");
    print_dist("latency_ms", lat, nlat);
    printf(",");
    /* lat is sorted now */
    printf("\"over_ms\":{\"1\":%llu,\"10\":%llu,\"100\":%llu},", (unsigned long long)count_over(lat, nlat, 1),
           (unsigned long long)count_over(lat, nlat, 10), (unsigned long long)count_over(lat, nlat, 100));
    print_dist("service_ms", svc, nlat);
    printf(",");
    print_dist("send_lag_ms", lag, nlag);
    printf("}\n");
    return interrupted ? 130 : 0;
}
