/*
 * openloop: an open-loop HTTP/1.1 load generator for serve_bench.py (loopback only).
 *
 *   openloop HOST PORT RATE SECONDS CONNECTIONS BODIES PATH OUT [WARM_PATH]
 *
 * Request i is due at t0 + i / RATE (a fixed schedule, whatever the server does). A due
 * request leaves on a free keep-alive connection at once; when every connection is busy
 * it waits in the generator, and its latency still counts from when it was due, so a
 * slow server cannot hide its queue (no coordinated omission). BODIES holds one JSON
 * body per line (POST PATH); an empty file sends GET PATH. After SECONDS the generator
 * stops sending and waits up to 10 s for the answers still due. WARM_PATH (e.g.
 * /healthz): one GET on every connection, answered, before the schedule starts.
 *
 * OUT gets one line per request: "due_us sent_us done_us status" (microseconds from
 * t0; status 0 and done_us -1 for a request never answered: connection error or still
 * unanswered at the end). A C generator costs the server's cores a few microseconds per
 * request, where an asyncio one costs tens: on a 2-core machine that is the difference
 * between offering twice the server's rate and not. Built by serve_bench.py with the
 * system's C compiler when one is installed (nothing else is needed: Linux epoll).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int64_t due, sent, done;
    int status;
} Record;

typedef struct {
    int fd;
    long req;         /* the request in flight, -1 when free */
    char buf[65536];  /* the answer read so far */
    size_t have;
    const char *out;  /* what is left to write */
    size_t out_left;
} Conn;

static struct sockaddr_in addr;
static char **requests;
static size_t *request_len;
static long n_bodies;
static Record *records;
static int64_t t0;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 - t0;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int dial(int ep, Conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
    c->fd = fd;
    c->req = -1;
    c->have = 0;
    c->out_left = 0;
    return 0;
}

/* Write what is pending on c; returns -1 on a broken connection. */
static int flush_out(int ep, Conn *c) {
    while (c->out_left > 0) {
        ssize_t w = write(c->fd, c->out, c->out_left);
        if (w < 0) {
            if (errno == EAGAIN) break;
            return -1;
        }
        c->out += w;
        c->out_left -= (size_t)w;
    }
    struct epoll_event ev = {.events = EPOLLIN | (c->out_left ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static int send_request(int ep, Conn *c, long i) {
    long k = i % n_bodies;
    c->req = i;
    c->have = 0;
    c->out = requests[k];
    c->out_left = request_len[k];
    records[i].sent = now_us();
    return flush_out(ep, c);
}

/* Length of a complete answer in c->buf (head + body), 0 while incomplete, -1 when bad. */
static long complete(Conn *c, int *status) {
    char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
    if (end == NULL) return c->have >= sizeof c->buf ? -1 : 0;
    size_t head = (size_t)(end - c->buf) + 4;
    if (c->have < 12 || strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    long length = 0;
    for (char *line = memchr(c->buf, '\n', head); line && line < end; line = memchr(line + 1, '\n', (size_t)(end - line))) {
        if (strncasecmp(line + 1, "content-length:", 15) == 0) length = atol(line + 16);
    }
    if (head + (size_t)length > sizeof c->buf) return -1;
    return c->have >= head + (size_t)length ? (long)(head + (size_t)length) : 0;
}

/* One GET of `path` on every connection, every answer read, before the schedule starts:
 * a connection the server's kernel has not accepted yet (its accept queue overflowed
 * while thousands were dialled at once) would otherwise hold its first request for
 * seconds of TCP retransmissions, which is no latency of the server's. */
static void warm_up(int ep, Conn *conns, int n_conns, const char *path) {
    char get[512];
    int len = snprintf(get, sizeof get, "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", path);
    for (int j = 0; j < n_conns; j++) {
        conns[j].req = 0;
        conns[j].out = get;
        conns[j].out_left = (size_t)len;
        if (flush_out(ep, &conns[j]) != 0) die("warm-up write");
    }
    int pending = n_conns;
    struct epoll_event events[256];
    int64_t until = now_us() + 60000000;
    while (pending > 0) {
        if (now_us() > until) {
            fprintf(stderr, "openloop: %d of %d connections unanswered after 60 s of warm-up\n",
                    pending, n_conns);
            exit(3);
        }
        int n = epoll_wait(ep, events, 256, 1000);
        for (int e = 0; e < n; e++) {
            Conn *c = events[e].data.ptr;
            if (c == NULL || c->req != 0) continue;
            if ((events[e].events & EPOLLOUT) && flush_out(ep, c) != 0) die("warm-up write");
            if (!(events[e].events & EPOLLIN)) continue;
            ssize_t r = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
            if (r <= 0) die("warm-up read");
            c->have += (size_t)r;
            int status = 0;
            long used = complete(c, &status);
            if (used < 0) die("warm-up answer");
            if (used > 0) {
                c->req = -1;
                c->have = 0;
                pending--;
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 9 && argc != 10) {
        fprintf(stderr, "usage: openloop HOST PORT RATE SECONDS CONNECTIONS BODIES PATH OUT [WARM_PATH]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int n_conns = atoi(argv[5]);
    const char *path = argv[7];
    if (strcmp(host, "127.0.0.1") != 0) {
        fprintf(stderr, "openloop only targets 127.0.0.1, not %s\n", host);
        return 2;
    }
    if (rate <= 0 || seconds <= 0 || n_conns <= 0) {
        fprintf(stderr, "RATE, SECONDS and CONNECTIONS must be positive\n");
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &addr.sin_addr);

    /* requests, prebuilt */
    FILE *f = fopen(argv[6], "r");
    if (f == NULL) die(argv[6]);
    size_t cap = 1024;
    requests = malloc(cap * sizeof *requests);
    request_len = malloc(cap * sizeof *request_len);
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    while ((got = getline(&line, &line_cap, f)) > 0) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (got == 0) continue;
        if ((size_t)n_bodies == cap) {
            cap *= 2;
            requests = realloc(requests, cap * sizeof *requests);
            request_len = realloc(request_len, cap * sizeof *request_len);
        }
        size_t n = (size_t)got + strlen(path) + 160;
        requests[n_bodies] = malloc(n);
        request_len[n_bodies] = (size_t)snprintf(
            requests[n_bodies], n,
            "POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            "Content-Length: %zd\r\n\r\n%s", path, got, line);
        n_bodies++;
    }
    fclose(f);
    if (n_bodies == 0) {
        requests[0] = malloc(strlen(path) + 64);
        request_len[0] = (size_t)sprintf(requests[0], "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", path);
        n_bodies = 1;
    }

    long total = (long)(rate * seconds);
    records = calloc((size_t)total, sizeof *records);
    Conn *conns = calloc((size_t)n_conns, sizeof *conns);
    long *free_list = malloc((size_t)n_conns * sizeof *free_list);
    int n_free = 0;
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t0 = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    for (int j = 0; j < n_conns; j++) {
        if (dial(ep, &conns[j]) != 0) die("connect");
        free_list[n_free++] = j;
    }
    if (argc == 10) warm_up(ep, conns, n_conns, argv[9]);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

    int64_t start = now_us() + 20000; /* every connection open before the first is due */
    for (long i = 0; i < total; i++) records[i].due = start + (int64_t)((double)i * 1e6 / rate);
    long next = 0;      /* the next request to send (requests leave in schedule order) */
    long answered = 0, broken = 0;
    int64_t give_up = start + (int64_t)(seconds * 1e6) + 10000000;
    struct epoll_event events[256];
    while (answered + broken < total && now_us() < give_up) {
        int64_t t = now_us();
        while (next < total && records[next].due <= t && n_free > 0) {
            Conn *c = &conns[free_list[--n_free]];
            if (c->fd < 0 && dial(ep, c) != 0) continue; /* a dead connection: dropped */
            if (send_request(ep, c, next) != 0) {
                records[next].done = -1;
                broken++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                c->req = -1;
                free_list[n_free++] = c - conns;
            }
            next++;
        }
        int timeout_ms = 1000;
        if (next < total && n_free > 0) {
            int64_t wait = records[next].due - now_us();
            struct itimerspec its = {0};
            if (wait < 1) wait = 1;
            its.it_value.tv_sec = wait / 1000000;
            its.it_value.tv_nsec = (wait % 1000000) * 1000;
            timerfd_settime(tfd, 0, &its, NULL);
        }
        int n = epoll_wait(ep, events, 256, timeout_ms);
        for (int e = 0; e < n; e++) {
            Conn *c = events[e].data.ptr;
            if (c == NULL) {
                uint64_t ticks;
                if (read(tfd, &ticks, sizeof ticks) < 0 && errno != EAGAIN) die("timerfd");
                continue;
            }
            int bad = 0;
            if ((events[e].events & EPOLLOUT) && flush_out(ep, c) != 0) bad = 1;
            if (!bad && (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                ssize_t r = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
                if (r > 0) {
                    c->have += (size_t)r;
                    int status = 0;
                    long used = complete(c, &status);
                    if (used < 0) {
                        bad = 1;
                    } else if (used > 0 && c->req >= 0) {
                        records[c->req].done = now_us();
                        records[c->req].status = status;
                        answered++;
                        c->req = -1;
                        c->have = 0;
                        free_list[n_free++] = c - conns;
                    }
                } else if (r == 0 || errno != EAGAIN) {
                    bad = 1;
                }
            }
            if (bad) { /* a busy one goes back to the free list; a free one is on it */
                int busy = c->req >= 0;
                if (busy) {
                    records[c->req].done = -1;
                    broken++;
                }
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                c->req = -1;
                if (busy) free_list[n_free++] = c - conns; /* redialled when next used */
            }
        }
    }
    FILE *out = fopen(argv[8], "w");
    if (out == NULL) die(argv[8]);
    for (long i = 0; i < total; i++) {
        Record *r = &records[i];
        int64_t done = r->done > 0 ? r->done : -1;
        fprintf(out, "%lld %lld %lld %d\n", (long long)r->due, (long long)(i < next ? r->sent : -1),
                (long long)done, done > 0 ? r->status : 0);
    }
    fclose(out);
    return 0;
}
