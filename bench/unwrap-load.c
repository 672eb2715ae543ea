/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Load generator for bench/run: N Varlink connections to cmekd, each with one io.cmek.Volume.Unwrap
 * call in flight, for a fixed time; prints one JSON line with throughput and latency percentiles.
 * One thread and epoll, so that the generator itself costs as little CPU as possible.
 * Closed loop by default (each reply sends the next call at once); -R RATE makes it an open loop:
 * RATE calls per second in all, each connection on its own fixed schedule, and a call's latency
 * counted from when it was due, not when it could be sent (no coordinated omission). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef struct Conn {
        int fd;
        uint64_t sent_ns;
        size_t out_off;         /* bytes of the request written */
        char *in;               /* the reply read so far */
        size_t in_len, in_cap;
        uint64_t due_ns;        /* open loop: when the next call is due */
        int busy;               /* a call is in flight */
} Conn;

static const char *request;
static size_t request_len;      /* with the terminating NUL */

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static int conn_open(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
        /* a full accept queue makes a non-blocking connect fail with EAGAIN: retry */
        for (int i = 0; i < 1000; i++) {
                if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0)
                        return fd;
                if (errno != EAGAIN)
                        break;
                usleep(1000);
        }
        int r = -errno;
        close(fd);
        return r;
}

/* Writes what is left of the request; 1 when all is out, 0 when it would block. */
static int conn_send(Conn *c) {
        while (c->out_off < request_len) {
                ssize_t n = write(c->fd, request + c->out_off, request_len - c->out_off);
                if (n < 0)
                        return errno == EAGAIN ? 0 : -errno;
                c->out_off += (size_t) n;
        }
        return 1;
}

int main(int argc, char *argv[]) {
        const char *sock = NULL, *req_file = NULL;
        unsigned clients = 1;
        double duration = 2.0, warmup = 0.5, rate = 0;
        int opt;

        while ((opt = getopt(argc, argv, "s:r:c:d:w:R:")) >= 0)
                switch (opt) {
                case 's': sock = optarg; break;
                case 'r': req_file = optarg; break;
                case 'c': clients = (unsigned) atoi(optarg); break;
                case 'd': duration = atof(optarg); break;
                case 'w': warmup = atof(optarg); break;
                case 'R': rate = atof(optarg); break;
                default:
                        fprintf(stderr, "usage: %s -s SOCKET -r REQUEST.json -c CLIENTS -d SECONDS [-w WARMUP] [-R RATE]\n", argv[0]);
                        return 2;
                }
        if (!sock || !req_file || clients == 0) {
                fprintf(stderr, "-s, -r and -c are required\n");
                return 2;
        }

        FILE *f = fopen(req_file, "re");
        static char buf[65536];
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
        if (!f || n == 0) {
                fprintf(stderr, "cannot read %s\n", req_file);
                return 1;
        }
        fclose(f);
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\0'))
                n--;
        buf[n] = 0;
        request = buf;
        request_len = n + 1;

        int ep = epoll_create1(EPOLL_CLOEXEC);
        Conn *conns = calloc(clients, sizeof(Conn));
        size_t lat_cap = 1 << 20, n_lat = 0;
        uint64_t *lat = malloc(lat_cap * sizeof(uint64_t));
        uint64_t errors = 0, ops = 0;
        if (ep < 0 || !conns || !lat)
                return 1;

        for (unsigned i = 0; i < clients; i++) {
                Conn *c = &conns[i];
                c->fd = conn_open(sock);
                if (c->fd < 0) {
                        fprintf(stderr, "connect %s: %s\n", sock, strerror(-c->fd));
                        return 1;
                }
                struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c };
                if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
                        return 1;
        }

        uint64_t start = now_ns(), measure_from = start + (uint64_t) (warmup * 1e9),
                 end = measure_from + (uint64_t) (duration * 1e9);
        /* open loop: connection i's calls are due every `interval`, the connections staggered */
        uint64_t interval = rate > 0 ? (uint64_t) ((double) clients * 1e9 / rate) : 0;
        for (unsigned i = 0; i < clients; i++) {
                conns[i].due_ns = start + interval * i / clients;
                if (interval)
                        continue;
                conns[i].sent_ns = now_ns();
                conns[i].busy = 1;
                if (conn_send(&conns[i]) < 0)
                        return 1;
        }

        struct epoll_event evs[256];
        for (;;) {
                uint64_t t = now_ns(), wake = end;
                if (t >= end)
                        break;
                if (interval)
                        for (unsigned i = 0; i < clients; i++) {
                                Conn *c = &conns[i];
                                if (c->busy)
                                        continue;
                                if (c->due_ns <= t) {
                                        c->sent_ns = c->due_ns;
                                        c->due_ns += interval;
                                        c->busy = 1;
                                        c->out_off = 0;
                                        if (conn_send(c) < 0)
                                                return 1;
                                } else if (c->due_ns < wake)
                                        wake = c->due_ns;
                        }
                /* sub-millisecond waits: epoll_wait's timeout is in ms, so spin on 0 then */
                int k = epoll_wait(ep, evs, 256, wake <= t ? 0 : (int) ((wake - t) / 1000000));
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return 1;
                }
                for (int e = 0; e < k; e++) {
                        Conn *c = evs[e].data.ptr;
                        if (c->out_off < request_len) {
                                int r = conn_send(c);
                                if (r < 0) {
                                        fprintf(stderr, "write: %s\n", strerror(-r));
                                        return 1;
                                }
                        }
                        for (;;) {
                                if (c->in_cap - c->in_len < 4096) {
                                        c->in_cap = c->in_cap ? c->in_cap * 2 : 8192;
                                        c->in = realloc(c->in, c->in_cap);
                                        if (!c->in)
                                                return 1;
                                }
                                ssize_t m = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
                                if (m < 0 && errno == EAGAIN)
                                        break;
                                if (m <= 0) {
                                        fprintf(stderr, "cmekd closed a connection (%s)\n", m < 0 ? strerror(errno) : "EOF");
                                        return 1;
                                }
                                c->in_len += (size_t) m;
                                char *nul = memchr(c->in, 0, c->in_len);
                                if (!nul)
                                        continue;
                                /* one reply complete: record it, send the next call */
                                uint64_t done = now_ns();
                                int is_error = strncmp(c->in, "{\"error\"", 8) == 0 || strstr(c->in, "\"error\":\"") != NULL;
                                if (done >= measure_from) {
                                        if (is_error)
                                                errors++;
                                        ops++;
                                        if (n_lat == lat_cap) {
                                                lat_cap *= 2;
                                                lat = realloc(lat, lat_cap * sizeof(uint64_t));
                                                if (!lat)
                                                        return 1;
                                        }
                                        lat[n_lat++] = done - c->sent_ns;
                                }
                                if (is_error && errors == 1 && done >= measure_from)
                                        fprintf(stderr, "first error reply: %.300s\n", c->in);
                                size_t rest = c->in_len - (size_t) (nul + 1 - c->in);
                                memmove(c->in, nul + 1, rest);
                                c->in_len = rest;
                                c->busy = 0;
                                if (interval)
                                        break;  /* the next call goes out when it is due */
                                c->busy = 1;
                                c->out_off = 0;
                                c->sent_ns = now_ns();
                                if (conn_send(c) < 0)
                                        return 1;
                        }
                }
        }
        double secs = (double) (now_ns() - measure_from) / 1e9;
        qsort(lat, n_lat, sizeof(uint64_t), cmp_u64);
#define PCT(p) (n_lat ? (double) lat[(size_t) ((double) (n_lat - 1) * (p))] / 1000.0 : 0.0)
        printf("{\"clients\":%u,\"rate\":%.0f,\"ops\":%llu,\"errors\":%llu,\"seconds\":%.3f,\"ops_per_s\":%.1f,"
               "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f}\n",
               clients, rate, (unsigned long long) ops, (unsigned long long) errors, secs, (double) ops / secs,
               PCT(0.50), PCT(0.90), PCT(0.99), PCT(0.999), n_lat ? (double) lat[n_lat - 1] / 1000.0 : 0.0);
        for (unsigned i = 0; i < clients; i++) {
                close(conns[i].fd);
                free(conns[i].in);
        }
        free(conns);
        free(lat);
        return 0;
}
