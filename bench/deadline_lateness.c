/*
 * deadline_lateness: how long after its deadline a hung call returns.
 *
 *   deadline_lateness [calls]     (default 200 per series, after 5 of warm-up)
 *
 * Four series, interleaved in one run (rotating order):
 *   tbx_sigterm    a child that sleeps forever, timeout_s = 0.05: lateness =
 *                  time to tbx_call's return - 50 ms
 *   tbx_sigkill    a child that ignores SIGTERM, timeout_s = 0.05, grace_s =
 *                  0.05: lateness = time to return - 100 ms
 *   floor_sigterm  fork of a sleeping child, a timerfd at the deadline,
 *                  kill(SIGTERM), waitpid: lateness = reaped - deadline
 *   floor_sigkill  the same with a child that ignores SIGTERM: SIGTERM at the
 *                  deadline, SIGKILL 50 ms later, waitpid
 */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <timebox.h>

#define WARMUP 5
#define TIMEOUT_NS 50000000ull
#define GRACE_NS 50000000ull

static int sleep_forever(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)result, (void)ctx;
    for (;;)
        pause();
    return 0;
}

static int ignore_sigterm(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)result, (void)ctx;
    signal(SIGTERM, SIG_IGN);
    for (;;)
        pause();
    return 0;
}

static const unsigned char args_nil[1] = {0xc0};

static double run_tbx(tbx_fn *fn, int expect_signal)
{
    tbx_opts o;
    tbx_result r;
    tbx_opts_init(&o);
    o.method = TBX_FORK;
    o.timeout_s = TIMEOUT_NS / 1e9;
    o.grace_s = expect_signal == SIGKILL ? GRACE_NS / 1e9 : 1.0;
    uint64_t t0 = bench_now_ns();
    int rc = tbx_call(fn, args_nil, sizeof args_nil, &o, &r);
    uint64_t t1 = bench_now_ns();
    if (rc != TBX_ETIMEDOUT || r.kill_signal != expect_signal) {
        fprintf(stderr, "tbx_call: %s, kill_signal %d\n", tbx_err_name(rc), r.kill_signal);
        exit(1);
    }
    tbx_result_free(&r);
    uint64_t due = t0 + TIMEOUT_NS + (expect_signal == SIGKILL ? GRACE_NS : 0);
    return ((double)t1 - (double)due) / 1e3;
}

static void wait_until(int tfd, uint64_t abs_ns)
{
    struct itimerspec its = {{0, 0}, {(time_t)(abs_ns / 1000000000u), (long)(abs_ns % 1000000000u)}};
    uint64_t ticks;
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
        bench_die("timerfd_settime");
    if (read(tfd, &ticks, sizeof ticks) != (ssize_t)sizeof ticks)
        bench_die("read timerfd");
}

static double run_floor(int tfd, int ignore_term)
{
    int wstatus;
    uint64_t t0 = bench_now_ns();
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork");
    if (pid == 0) {
        if (ignore_term)
            signal(SIGTERM, SIG_IGN);
        for (;;)
            pause();
    }
    uint64_t due = t0 + TIMEOUT_NS;
    wait_until(tfd, due);
    kill(pid, SIGTERM);
    if (ignore_term) {
        due += GRACE_NS;
        wait_until(tfd, due);
        kill(pid, SIGKILL);
    }
    if (waitpid(pid, &wstatus, 0) != pid || !WIFSIGNALED(wstatus))
        bench_die("waitpid");
    return ((double)bench_now_ns() - (double)due) / 1e3;
}

int main(int argc, char **argv)
{
    size_t n = bench_arg_count(argc, argv, 1, 200);
    tbx_init(argc, argv);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    if (tfd < 0)
        bench_die("timerfd_create");

    enum { FLOOR_TERM, TBX_TERM, FLOOR_KILL, TBX_KILL, KINDS };
    static const char *names[KINDS] = {"floor_sigterm", "tbx_sigterm", "floor_sigkill",
                                       "tbx_sigkill"};
    bench_series s[KINDS];
    for (int k = 0; k < KINDS; k++)
        bench_series_init(&s[k], names[k], n);

    for (size_t i = 0; i < WARMUP + n; i++) {
        for (int k = 0; k < KINDS; k++) {
            int kind = (int)((i + (size_t)k) % KINDS);
            double us = kind == FLOOR_TERM ? run_floor(tfd, 0)
                        : kind == TBX_TERM ? run_tbx(sleep_forever, SIGTERM)
                        : kind == FLOOR_KILL ? run_floor(tfd, 1)
                                             : run_tbx(ignore_sigterm, SIGKILL);
            if (i >= WARMUP)
                bench_series_add(&s[kind], us);
        }
    }

    bench_row rows[KINDS];
    for (int k = 0; k < KINDS; k++) {
        rows[k].name = names[k];
        rows[k].st = bench_summarise(&s[k]);
        rows[k].base = k == TBX_TERM ? &rows[FLOOR_TERM].st
                       : k == TBX_KILL ? &rows[FLOOR_KILL].st
                                       : NULL;
    }
    bench_report("deadline_lateness",
                 "deadline_lateness: deadline -> reaped (timeout 50 ms, grace 50 ms)", rows,
                 KINDS);
    for (int k = 0; k < KINDS; k++)
        bench_series_free(&s[k]);
    close(tfd);
    return 0;
}
