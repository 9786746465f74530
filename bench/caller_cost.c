/*
 * caller_cost: what a call's child costs the caller that keeps working while
 * the child lives.
 *
 *   caller_cost [iterations [caller_rss_mib]]     (default 5, 1024)
 *
 * The caller holds rss_mib MiB resident (4 KiB pages; THP is "madvise" on
 * the test machine and the bench does not ask for it).  Four series,
 * interleaved in a rotating order, each timing one memset of all of it:
 *   no_child     no call in flight (the floor)
 *   fork         while a TBX_FORK call's child is alive
 *   spawn        while a TBX_SPAWN call's child is alive
 *   forkserver   while a TBX_FORKSERVER call's child is alive
 * The call (tbx_call_async on a libuv loop, timeout 30 s) runs a function
 * that sends SIGUSR2 to the caller, then sleeps; the caller waits for that
 * signal (so the child surely exists), times the memset, then cancels the
 * call with tbx_cancel and runs the loop until its callback.
 * A fork child shares every page copy-on-write, so each write faults and
 * copies a page; spawn and forkserver children share nothing with the
 * caller.  A second table gives the time tbx_call_async itself took (the
 * loop is blocked for that long), per method.
 */
#define _GNU_SOURCE /* and <uv.h> needs POSIX types */
#include "common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <timebox/uv.h>

enum { NO_CHILD, FORK, SPAWN, FORKSERVER, KINDS };
static const char *names[KINDS] = {"no_child", "fork", "spawn", "forkserver"};
static const tbx_method methods[KINDS] = {0, TBX_FORK, TBX_SPAWN, TBX_FORKSERVER};

/* args: the caller's pid.  Tells it we run, then sleeps until killed. */
static int signal_then_sleep(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tbx_fail(result, 1, "expected a pid");
    kill((pid_t)args->via.u64, SIGUSR2);
    for (;;)
        pause();
    return 0;
}
TBX_REGISTER(signal_then_sleep);

static int cb_status;
static int cb_ran;

static void on_done(tbx_req *req, tbx_result *result)
{
    (void)req;
    cb_status = result->status;
    cb_ran = 1;
    tbx_result_free(result);
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    size_t n = bench_arg_count(argc, argv, 1, 5);
    size_t rss_mib = bench_arg_count(argc, argv, 2, 1024);
    size_t bytes = rss_mib << 20;

    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &usr2, NULL) != 0)
        bench_die("sigprocmask");

    char *mem = malloc(bytes);
    if (mem == NULL)
        bench_die("malloc");
    memset(mem, 1, bytes);
    if (tbx_forkserver_start(NULL) != 0)
        bench_die("tbx_forkserver_start");
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        bench_die("uv_loop_init");

    unsigned char args[9];
    msgpack_sbuffer ab = {0, (char *)args, sizeof args};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ab, msgpack_sbuffer_write);
    msgpack_pack_uint64(&pk, (uint64_t)getpid());

    tbx_opts opts[KINDS];
    bench_series s[KINDS], launch[KINDS];
    static char lname[KINDS][32];
    for (int k = 0; k < KINDS; k++) {
        tbx_opts_init(&opts[k]);
        opts[k].method = methods[k];
        opts[k].timeout_s = 30;
        opts[k].grace_s = 0;
        bench_series_init(&s[k], names[k], n);
        snprintf(lname[k], sizeof lname[k], "launch_%s", names[k]);
        bench_series_init(&launch[k], lname[k], n);
    }

    const size_t warmup = 1;
    for (size_t i = 0; i < warmup + n; i++) {
        for (int j = 0; j < KINDS; j++) {
            int k = (int)((i + (size_t)j) % KINDS);
            tbx_req req;
            uint64_t t0 = bench_now_ns();
            if (k != NO_CHILD) {
                int rc = tbx_call_async(&loop, &req, signal_then_sleep, ab.data, ab.size,
                                        &opts[k], on_done);
                if (rc != 0) {
                    fprintf(stderr, "tbx_call_async: %s\n", tbx_err_name(rc));
                    exit(1);
                }
                double launch_us = (double)(bench_now_ns() - t0) / 1e3;
                /* Wait for the child's signal, turning the loop meanwhile. */
                struct timespec tick = {0, 1000000};
                for (int waited = 0;; waited++) {
                    uv_run(&loop, UV_RUN_NOWAIT);
                    if (sigtimedwait(&usr2, NULL, &tick) == SIGUSR2)
                        break;
                    if (cb_ran || waited > 10000) {
                        fprintf(stderr, "%s: the child never signalled\n", names[k]);
                        exit(1);
                    }
                }
                if (i >= warmup)
                    bench_series_add(&launch[k], launch_us);
            }
            uint64_t m0 = bench_now_ns();
            memset(mem, (int)(i + (size_t)j) & 0xff, bytes);
            double us = (double)(bench_now_ns() - m0) / 1e3;
            if (k != NO_CHILD) {
                if (cb_ran) {
                    fprintf(stderr, "%s: the call ended before the memset did\n", names[k]);
                    exit(1);
                }
                tbx_cancel(&req);
                while (!cb_ran)
                    uv_run(&loop, UV_RUN_ONCE);
                if (cb_status != TBX_ECANCELED) {
                    fprintf(stderr, "%s: %s, expected TBX_ECANCELED\n", names[k],
                            tbx_err_name(cb_status));
                    exit(1);
                }
                cb_ran = 0;
            }
            if (i >= warmup)
                bench_series_add(&s[k], us);
        }
    }

    bench_row rows[KINDS];
    for (int k = 0; k < KINDS; k++) {
        rows[k].name = names[k];
        rows[k].st = bench_summarise(&s[k]);
    }
    for (int k = 0; k < KINDS; k++)
        rows[k].base = k == NO_CHILD ? NULL : &rows[NO_CHILD].st;
    char title[128];
    snprintf(title, sizeof title,
             "caller_cost: memset of the caller's %zu MiB while a call's child lives", rss_mib);
    char scenario[64];
    snprintf(scenario, sizeof scenario, "caller_cost_rss%zu", rss_mib);
    bench_report(scenario, title, rows, KINDS);

    bench_row lrows[KINDS - 1];
    for (int k = FORK; k < KINDS; k++) {
        lrows[k - 1].name = lname[k];
        lrows[k - 1].st = bench_summarise(&launch[k]);
        lrows[k - 1].base = NULL;
    }
    snprintf(title, sizeof title,
             "caller_cost: time inside tbx_call_async (loop blocked), caller %zu MiB", rss_mib);
    bench_report(scenario, title, lrows, KINDS - 1);
    for (int k = 0; k < KINDS; k++) {
        bench_series_free(&s[k]);
        bench_series_free(&launch[k]);
    }
    uv_loop_close(&loop);
    tbx_forkserver_stop();
    free(mem);
    return 0;
}
