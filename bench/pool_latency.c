/*
 * pool_latency: a call by TBX_POOL next to its floor, measured in one run.
 *
 *   pool_latency [iterations]          default 2000, after 200 of warm-up
 *
 * Series, interleaved (rotating order):
 *   persistent_floor  a process started once answers each request byte with
 *                     16 bytes over a pipe (floors.c)
 *   tbx_pool          tbx_call, TBX_POOL (pool_size 1), a function returning
 *                     42, timeout 10 s
 *   tbx_pool_nodl     the same with no deadline (no timer to arm)
 * The targets: tbx_pool within 1.5x of the floor, and 100 us median.
 */
#define _GNU_SOURCE
#include "common.h"

#include <stdio.h>
#include <stdlib.h>

#include <timebox.h>

#define WARMUP 200

enum { FLOOR, POOL, POOL_NODL, KINDS };

typedef struct pool_run {
    bench_floor_server *floor;
    const tbx_opts *o, *nodl;
} pool_run;

static double measure(int kind, void *arg)
{
    pool_run *r = arg;
    return kind == FLOOR  ? bench_persistent_floor_us(r->floor)
           : kind == POOL ? bench_trivial_call_us(r->o)
                          : bench_trivial_call_us(r->nodl);
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    size_t n = bench_arg_count(argc, argv, 1, 2000);
    bench_floor_server floor = bench_persistent_floor_start();
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.pool_size = 1;
    if (tbx_forkserver_start(&fo) != 0)
        bench_die("tbx_forkserver_start");
    tbx_opts o, nodl;
    tbx_opts_init(&o);
    o.method = TBX_POOL;
    o.timeout_s = 10;
    nodl = o;
    nodl.timeout_s = 0;

    static const char *names[KINDS] = {"persistent_floor", "tbx_pool", "tbx_pool_nodl"};
    bench_series s[KINDS];
    pool_run run = {&floor, &o, &nodl};
    bench_interleave(s, names, KINDS, n, WARMUP, measure, &run);
    bench_row rows[KINDS];
    for (int k = 0; k < KINDS; k++) {
        rows[k].name = names[k];
        rows[k].st = bench_summarise(&s[k]);
        rows[k].base = k == FLOOR ? NULL : &rows[FLOOR].st;
    }
    bench_report("pool_latency", "pool_latency: a TBX_POOL call vs a persistent process's answer",
                 rows, KINDS);
    double x = rows[POOL].st.median / rows[FLOOR].st.median;
    printf("pool call: median %.1f us (target 100 us: %s), %.2fx the persistent floor "
           "(target 1.5x: %s)\n",
           rows[POOL].st.median, rows[POOL].st.median <= 100 ? "met" : "MISSED", x,
           x <= 1.5 ? "met" : "MISSED");
    for (int k = 0; k < KINDS; k++)
        bench_series_free(&s[k]);
    tbx_forkserver_stop();
    bench_floor_stop(&floor);
    return 0;
}
