// The latency floor of a QD1 4 KiB read over loopback TCP on this machine:
// a "target" that does no work at all answers each 48-byte request with
// 48 + 4096 bytes (a Data-In carrying status), server and client pinned to
// the CPUs the benchmarks use. No iSCSI target can answer faster than this;
// benches/compare.py prints it beside the QD1 figures.
//
// With a fifth argument "poll" the server polls its socket
// (recv(MSG_DONTWAIT) in a loop) instead of sleeping in read(2): the floor
// for a target that busy-polls (gentgt's busy_poll_us), which saves the
// wake-up of its CPU.
//
// Usage: loopback_floor PORT ROUNDS SERVER_CPU CLIENT_CPU [poll]
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static int polling;

static int read_full(int fd, char *buf, int n) {
    for (int got = 0; got < n;) {
        int r = polling ? recv(fd, buf + got, n - got, MSG_DONTWAIT)
                        : read(fd, buf + got, n - got);
        if (r < 0 && polling && (errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (r <= 0)
            return -1;
        got += r;
    }
    return n;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s PORT ROUNDS SERVER_CPU CLIENT_CPU [poll]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), rounds = atoi(argv[2]), warmup = 1000, one = 1;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port),
                               .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(ls, (void *)&addr, sizeof addr) || listen(ls, 1)) {
        perror("bind/listen");
        return 1;
    }
    static char buf[8192];
    pid_t server = fork();
    if (server == 0) {
        pin(atoi(argv[3]));
        polling = argc == 6 && strcmp(argv[5], "poll") == 0;
        int c = accept(ls, 0, 0);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        while (read_full(c, buf, 48) > 0)
            if (write(c, buf, 48 + 4096) < 0)
                break;
        return 0;
    }
    pin(atoi(argv[4]));
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (void *)&addr, sizeof addr)) {
        perror("connect");
        return 1;
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double *us = malloc(sizeof(double) * rounds);
    for (int i = 0; i < rounds + warmup; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (write(s, buf, 48) != 48 || read_full(s, buf, 48 + 4096) < 0)
            return 1;
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (i >= warmup)
            us[i - warmup] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
    }
    close(s);
    waitpid(server, 0, 0);
    qsort(us, rounds, sizeof(double), by_value);
    printf("p50 %.1f p99 %.1f\n", us[rounds / 2], us[rounds * 99 / 100]);
    return 0;
}
