/*
 * pingpong: why a pooled call (TBX_POOL) is 8 us or 80 us on a small VM.
 *
 *   bench_pingpong [n]
 *
 * Two processes answer each other one byte over two pipes, the answering
 * one spinning for a while before or after its answer: 0, 2,000, 5,000 and
 * 20,000 iterations of an empty loop.  On an idle 2-vCPU VM a round trip
 * with no work stays on one CPU (a few microseconds); with a few
 * microseconds of work on the answering side, the kernel wakes the other
 * side on the other, idle vCPU, which costs a halted vCPU's wake-up.  A
 * pooled process does its checks before it answers, so its round trip is
 * the second kind where nothing else runs.  Each series is measured in
 * blocks of 50 round trips, the series rotating, so that the machine's drift
 * hits every series alike without mixing two kinds of work in one block.
 */
#define _GNU_SOURCE /* pipe2 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define BLOCK 50

static const long work[] = {0, -2000, -20000, 2000, 5000}; /* < 0: before the answer */
#define KINDS (int)(sizeof work / sizeof work[0])

static void spin(long n)
{
    for (volatile long i = 0; i < n; i++)
        ;
}

/* The answering side: the kind's index comes as the byte. */
static void answer(int in, int out)
{
    unsigned char k;
    while (read(in, &k, 1) == 1 && k < KINDS) {
        if (work[k] < 0)
            spin(-work[k]);
        if (write(out, &k, 1) != 1)
            break;
        if (work[k] > 0)
            spin(work[k]);
    }
    _exit(0);
}

int main(int argc, char **argv)
{
    size_t n = bench_arg_count(argc, argv, 1, 3000);
    int req, res;
    pid_t pid = bench_fork_duplex(&req, &res);
    if (pid == 0)
        answer(req, res);
    char names[KINDS][32];
    bench_series s[KINDS];
    for (int k = 0; k < KINDS; k++) {
        snprintf(names[k], sizeof names[k], "%s_%ld", work[k] < 0 ? "before" : "after",
                 work[k] < 0 ? -work[k] : work[k]);
        bench_series_init(&s[k], names[k], n);
    }
    size_t done[KINDS] = {0};
    for (size_t i = 0; i < (n + BLOCK) * KINDS; i++) {
        unsigned char k = (unsigned char)((i / BLOCK) % KINDS), got;
        uint64_t t0 = bench_now_ns();
        if (write(req, &k, 1) != 1 || read(res, &got, 1) != 1 || got != k)
            bench_die("round trip");
        double us = (double)(bench_now_ns() - t0) / 1000.0;
        if (done[k]++ >= BLOCK && done[k] <= n + BLOCK) /* the first block warms up */
            bench_series_add(&s[k], us);
    }
    bench_row rows[KINDS];
    for (int k = 0; k < KINDS; k++) {
        rows[k].name = names[k];
        rows[k].st = bench_summarise(&s[k]);
        rows[k].base = k == 0 ? NULL : &rows[0].st;
    }
    bench_report("pingpong", "pingpong: a one-byte round trip, work on the answering side", rows,
                 KINDS);
    close(req); /* the answering side reads EOF and exits */
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    for (int k = 0; k < KINDS; k++)
        bench_series_free(&s[k]);
    return 0;
}
