/*
 * trace_cost: what a trace from outside adds to a call that times out.
 *
 *   trace_cost [iterations]          (default 100)
 *
 * Two series, interleaved, each a fork call of a function that waits on a
 * lock with every signal blocked, ended by its 20 ms deadline (grace 0:
 * SIGKILL at once):
 *   floor       no backtrace asked
 *   traced      backtrace_on_timeout: the child stopped with ptrace, every
 *               thread unwound and named with libdwfl, then killed
 * The difference is the trace: a few milliseconds to stop and unwind, the
 * rest naming the frames from debug files (libc's, with libc6-dbg, the
 * most), bounded by the tracer's budget.  The first trace, which loads
 * libdw, is left out with the warm-up.
 */
#define _GNU_SOURCE
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <timebox.h>

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;

static int stuck(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&held);
    pthread_mutex_lock(&held);
    return msgpack_pack_nil(pk);
}

static double timed_out_call_us(int trace)
{
    static const unsigned char nil = 0xc0;
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = TBX_FORK;
    o.timeout_s = 0.02;
    o.grace_s = 0;
    o.backtrace_on_timeout = trace;
    tbx_result r;
    uint64_t t0 = bench_now_ns();
    int rc = tbx_call(stuck, &nil, 1, &o, &r);
    double us = (double)(bench_now_ns() - t0) / 1e3;
    if (rc != TBX_ETIMEDOUT || (trace && r.backtrace_source != TBX_BACKTRACE_OUTSIDE)) {
        fprintf(stderr, "trace_cost: %s, backtrace source %d\n", tbx_err_name(rc),
                r.backtrace_source);
        exit(1);
    }
    tbx_result_free(&r);
    return us;
}

int main(int argc, char **argv)
{
    size_t n = bench_arg_count(argc, argv, 1, 100);
    tbx_init(argc, argv);
    bench_series s[2];
    bench_series_init(&s[0], "floor_no_trace", n);
    bench_series_init(&s[1], "traced_from_outside", n);
    for (int i = 0; i < 5; i++)
        (void)timed_out_call_us(i % 2);
    for (size_t i = 0; i < n; i++) {
        int first = (int)(i % 2);
        bench_series_add(&s[first], timed_out_call_us(first));
        bench_series_add(&s[!first], timed_out_call_us(!first));
    }
    bench_stats floor = bench_summarise(&s[0]);
    bench_row rows[2] = {{s[0].name, floor, NULL}, {s[1].name, bench_summarise(&s[1]), &floor}};
    bench_report("trace_cost", "a fork call stuck on a lock, ended by its 20 ms deadline", rows, 2);
    bench_series_free(&s[0]);
    bench_series_free(&s[1]);
    return 0;
}
