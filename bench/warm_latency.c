/*
 * warm_latency: a call served by a warm child (TBX_FORKSERVER with
 * warm_children) next to its floor, measured in one run.
 *
 *   warm_latency [iterations]          default 1000, after 100 of warm-up
 *
 * Series, interleaved:
 *   prefork_floor  a child forked before the clock starts waits on a pipe;
 *                  the parent writes one byte, the child answers 16 bytes
 *                  and exits; the parent reads them and waitpids
 *   fork_floor     pipe2 + fork + 16 bytes back + waitpid, for scale
 *   tbx_warm       tbx_call, TBX_FORKSERVER, warm_children = 2, a function
 *                  returning 42, timeout 10 s
 * The target: a warm call within 100 us.
 */
#define _GNU_SOURCE
#include "common.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <timebox.h>

#define WARMUP 100

enum { PREFORK, FORK, WARM, KINDS };

/* A floor, or a call followed by time for its warm child's replacement to
 * be forked, as between real calls. */
static double measure(int kind, void *arg)
{
    if (kind == PREFORK)
        return bench_prefork_floor_us();
    if (kind == FORK)
        return bench_fork_floor_us();
    double us = bench_trivial_call_us(arg);
    usleep(200);
    return us;
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    size_t n = bench_arg_count(argc, argv, 1, 1000);
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.warm_children = 2;
    if (tbx_forkserver_start(&fo) != 0)
        bench_die("tbx_forkserver_start");
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = TBX_FORKSERVER;
    o.timeout_s = 10;

    static const char *names[KINDS] = {"prefork_floor", "fork_floor", "tbx_warm"};
    bench_series s[KINDS];
    bench_interleave(s, names, KINDS, n, WARMUP, measure, &o);
    bench_row rows[KINDS];
    for (int k = 0; k < KINDS; k++) {
        rows[k].name = names[k];
        rows[k].st = bench_summarise(&s[k]);
    }
    rows[PREFORK].base = NULL;
    rows[FORK].base = NULL;
    rows[WARM].base = &rows[PREFORK].st;
    bench_report("warm_latency", "warm_latency: a warm child's call vs a pre-forked child's answer",
                 rows, KINDS);
    printf("warm call: median %.0f us (target 100 us: %s), %.2fx the pre-forked floor\n",
           rows[WARM].st.median, rows[WARM].st.median <= 100 ? "met" : "MISSED",
           rows[WARM].st.median / rows[PREFORK].st.median);
    for (int k = 0; k < KINDS; k++)
        bench_series_free(&s[k]);
    tbx_forkserver_stop();
    return 0;
}
