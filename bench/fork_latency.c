/*
 * fork_latency: what a trivial tbx_call costs over the bare system calls.
 *
 *   fork_latency [iterations [floor|tbx_deadline|tbx_nodeadline]]
 *
 * Default 2000 iterations, after 200 of warm-up.  Naming a series runs that
 * one alone, without warm-up, for a profiler (strace -c, perf, valgrind).
 *
 * Three series, measured in one run and interleaved (each iteration runs all
 * three, in an order that rotates), so that machine noise hits them alike:
 *   floor         pipe2 + fork; the child writes a 16-byte result and _exits;
 *                 the parent reads it, waitpids and closes the pipe
 *   tbx_deadline  tbx_call(TBX_FORK) of a function returning an int, with
 *                 timeout_s = 10
 *   tbx_nodeadline  the same without a deadline
 * The target: the median within 1.5x of the floor (later 1.2x).
 */
#define _GNU_SOURCE
#include "common.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <timebox.h>

#define WARMUP 200

int main(int argc, char **argv)
{
    size_t n = bench_arg_count(argc, argv, 1, 2000);
    tbx_init(argc, argv);

    tbx_opts with, without;
    tbx_opts_init(&with);
    with.method = TBX_FORK;
    with.timeout_s = 10;
    tbx_opts_init(&without);
    without.method = TBX_FORK;

    enum { FLOOR, DEADLINE, NODEADLINE, KINDS };
    bench_series s[KINDS];
    bench_series_init(&s[FLOOR], "floor", n);
    bench_series_init(&s[DEADLINE], "tbx_deadline", n);
    bench_series_init(&s[NODEADLINE], "tbx_nodeadline", n);

    int only = -1;
    for (int k = 0; argc > 2 && k < KINDS; k++)
        if (strcmp(argv[2], s[k].name) == 0)
            only = k;
    if (argc > 2 && only < 0) {
        fprintf(stderr, "fork_latency: unknown series %s\n", argv[2]);
        return 2;
    }
    size_t warmup = only < 0 ? WARMUP : 0;

    for (size_t i = 0; i < warmup + n; i++) {
        for (int k = 0; k < KINDS; k++) {
            int kind = (int)((i + (size_t)k) % KINDS);
            if (only >= 0 && kind != only)
                continue;
            double us = kind == FLOOR      ? bench_fork_floor_us()
                        : kind == DEADLINE ? bench_trivial_call_us(&with)
                                           : bench_trivial_call_us(&without);
            if (i >= warmup)
                bench_series_add(&s[kind], us);
        }
    }

    bench_row rows[KINDS];
    for (int k = 0; k < KINDS; k++) {
        rows[k].name = s[k].name;
        rows[k].st = bench_summarise(&s[k]);
        rows[k].base = k == FLOOR || only >= 0 ? NULL : &rows[FLOOR].st;
    }
    if (only >= 0) /* a profiling run: no table, no CSV */
        printf("%s: n=%zu median_us=%.1f p99_us=%.1f\n", rows[only].name, rows[only].st.n,
               rows[only].st.median, rows[only].st.p99);
    else
        bench_report("fork_latency", "fork_latency: trivial call vs fork+pipe+waitpid", rows,
                     KINDS);
    for (int k = DEADLINE; only < 0 && k < KINDS; k++) {
        double x = rows[k].st.median / rows[FLOOR].st.median;
        printf("%-16s median %.2fx the floor: target 1.5x %s, long-term 1.2x %s\n",
               rows[k].name, x, x <= 1.5 ? "met" : "MISSED", x <= 1.2 ? "met" : "missed");
    }
    for (int k = 0; k < KINDS; k++)
        bench_series_free(&s[k]);
    return 0;
}
