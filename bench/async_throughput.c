/*
 * async_throughput: calls per second and per-call latency with 1, 10, 100
 * and 1000 calls in flight on one libuv loop.
 *
 *   async_throughput [calls [spawn_calls]]
 *
 * Each series keeps C calls in flight (every callback starts the next call
 * until the series' total is done): a trivial call returning 42, timeout
 * 10 s.  Series, per concurrency C in 1, 10, 100, 1000:
 *   floor       no timebox, no libuv: C children in flight from a plain epoll
 *               loop; each child is pipe2 + fork, writes 16 bytes and _exits;
 *               the parent reads them, waitpids and forks the next
 *   fork        tbx_call_async, TBX_FORK
 *   forkserver  tbx_call_async, TBX_FORKSERVER (server started before)
 *   spawn       tbx_call_async, TBX_SPAWN, fewer calls (spawn_calls)
 * Totals: max(calls, 3 C) per series (default calls 2000), and
 * max(spawn_calls, 2 C) for spawn (default 400).  Every series runs in 3
 * rounds of a third of its calls, the rounds interleaved across all series
 * in a rotating order.  Latency = from the start of a call (tbx_call_async,
 * or pipe2 for the floor) to its callback (or reap); it includes the wait
 * for a CPU behind the other C - 1 calls.  calls/s = calls / wall time of
 * the rounds.  RLIMIT_NOFILE's soft limit is raised to the hard limit first.
 */
#define _GNU_SOURCE /* and <uv.h> needs POSIX types */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <timebox/uv.h>

#define ROUNDS 3
#define NCONC 4
static const size_t conc[NCONC] = {1, 10, 100, 1000};

enum { FLOOR, FORK, FORKSERVER, SPAWN, KINDS };
static const char *names[KINDS] = {"floor", "fork", "forkserver", "spawn"};
static const tbx_method methods[KINDS] = {0, TBX_FORK, TBX_FORKSERVER, TBX_SPAWN};

static int answer(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_int(result, 42);
}
TBX_REGISTER(answer);

static const unsigned char args_nil[1] = {0xc0};

/* ---- the floor: C raw fork children in flight on epoll ---- */

typedef struct slot {
    int fd;
    pid_t pid;
    uint64_t t0;
} slot;

static void floor_start(int ep, slot *sl)
{
    sl->t0 = bench_now_ns();
    sl->pid = bench_fork_writer(&sl->fd);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = sl};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, sl->fd, &ev) != 0)
        bench_die("epoll_ctl");
}

static void floor_round(size_t c, size_t total, bench_series *s)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        bench_die("epoll_create1");
    slot *sl = calloc(c, sizeof *sl);
    struct epoll_event *evs = calloc(c, sizeof *evs);
    if (sl == NULL || evs == NULL)
        bench_die("calloc");
    size_t started = 0, done = 0;
    for (size_t i = 0; i < c && started < total; i++, started++)
        floor_start(ep, &sl[i]);
    while (done < total) {
        int k = epoll_wait(ep, evs, (int)c, -1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            bench_die("epoll_wait");
        for (int i = 0; i < k; i++) {
            slot *x = evs[i].data.ptr;
            char buf[16];
            size_t got = 0;
            while (got < sizeof buf) {
                ssize_t r = read(x->fd, buf + got, sizeof buf - got);
                if (r <= 0)
                    bench_die("read");
                got += (size_t)r;
            }
            int wstatus;
            if (waitpid(x->pid, &wstatus, 0) != x->pid || !WIFEXITED(wstatus))
                bench_die("waitpid");
            /* Other children hold copies of this pipe until they exit: take
             * it out of the epoll set first, closing it would not. */
            if (epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL) != 0)
                bench_die("epoll_ctl");
            close(x->fd);
            bench_series_add(s, (double)(bench_now_ns() - x->t0) / 1e3);
            done++;
            if (started < total) {
                floor_start(ep, x);
                started++;
            }
        }
    }
    free(sl);
    free(evs);
    close(ep);
}

/* ---- timebox on one libuv loop ---- */

typedef struct run {
    uv_loop_t *loop;
    const tbx_opts *opts;
    bench_series *s;
    size_t total, started, done, failed;
} run;

typedef struct req_slot {
    tbx_req req;
    run *r;
    uint64_t t0;
} req_slot;

static void on_done(tbx_req *req, tbx_result *result);

static int start_one(req_slot *x)
{
    run *r = x->r;
    x->t0 = bench_now_ns();
    int rc = tbx_call_async(r->loop, &x->req, answer, args_nil, sizeof args_nil, r->opts,
                            on_done);
    if (rc != 0) {
        if (r->failed++ == 0)
            fprintf(stderr, "tbx_call_async: %s\n", tbx_err_name(rc));
        r->done++; /* counted, never started */
        return rc;
    }
    return 0;
}

static void on_done(tbx_req *req, tbx_result *result)
{
    req_slot *x = req->data;
    run *r = x->r;
    double us = (double)(bench_now_ns() - x->t0) / 1e3;
    if (result->status != 0 || result->value.type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        result->value.via.u64 != 42) {
        if (r->failed++ == 0)
            fprintf(stderr, "call failed: %s (%s)\n", tbx_err_name(result->status),
                    result->message ? result->message : "");
    } else {
        bench_series_add(r->s, us);
    }
    tbx_result_free(result);
    r->done++;
    while (r->started < r->total) {
        r->started++;
        if (start_one(x) == 0)
            break;
    }
}

static size_t tbx_round(uv_loop_t *loop, const tbx_opts *opts, size_t c, size_t total,
                        bench_series *s)
{
    run r = {loop, opts, s, total, 0, 0, 0};
    req_slot *sl = calloc(c, sizeof *sl);
    if (sl == NULL)
        bench_die("calloc");
    for (size_t i = 0; i < c && r.started < total; i++) {
        sl[i].req.data = &sl[i];
        sl[i].r = &r;
        r.started++;
        (void)start_one(&sl[i]);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    if (r.done != total) {
        fprintf(stderr, "async_throughput: %zu of %zu calls done\n", r.done, total);
        exit(1);
    }
    free(sl);
    return r.failed;
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    size_t calls = bench_arg_count(argc, argv, 1, 2000);
    size_t spawn_calls = bench_arg_count(argc, argv, 2, 400);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            bench_die("setrlimit");
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    printf("RLIMIT_NOFILE soft %llu\n", (unsigned long long)rl.rlim_cur);

    if (tbx_forkserver_start(NULL) != 0)
        bench_die("tbx_forkserver_start");
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        bench_die("uv_loop_init");
    tbx_opts opts[KINDS];
    for (int k = 0; k < KINDS; k++) {
        tbx_opts_init(&opts[k]);
        opts[k].method = methods[k];
        opts[k].timeout_s = 10;
    }

    /* warm-up: a few calls of each kind */
    {
        bench_series w;
        bench_series_init(&w, "warmup", 64);
        floor_round(4, 20, &w);
        for (int k = FORK; k < KINDS; k++)
            tbx_round(&loop, &opts[k], 4, 20, &w);
        bench_series_free(&w);
    }

    bench_series s[NCONC][KINDS];
    char sname[NCONC][KINDS][32];
    size_t total[NCONC][KINDS], failed[NCONC][KINDS];
    double wall_s[NCONC][KINDS];
    for (int ci = 0; ci < NCONC; ci++)
        for (int k = 0; k < KINDS; k++) {
            size_t c = conc[ci];
            size_t t = k == SPAWN ? (spawn_calls > 2 * c ? spawn_calls : 2 * c)
                                  : (calls > 3 * c ? calls : 3 * c);
            total[ci][k] = (t + ROUNDS - 1) / ROUNDS * ROUNDS;
            snprintf(sname[ci][k], sizeof sname[ci][k], "%s_c%zu", names[k], c);
            bench_series_init(&s[ci][k], sname[ci][k], total[ci][k]);
            failed[ci][k] = 0;
            wall_s[ci][k] = 0;
        }

    const int nser = NCONC * KINDS;
    for (int round = 0; round < ROUNDS; round++) {
        for (int j = 0; j < nser; j++) {
            int id = (round * 5 + j) % nser;
            int ci = id / KINDS, k = id % KINDS;
            size_t c = conc[ci], t = total[ci][k] / ROUNDS;
            uint64_t t0 = bench_now_ns();
            if (k == FLOOR)
                floor_round(c, t, &s[ci][k]);
            else
                failed[ci][k] += tbx_round(&loop, &opts[k], c, t, &s[ci][k]);
            wall_s[ci][k] += (double)(bench_now_ns() - t0) / 1e9;
        }
    }

    for (int ci = 0; ci < NCONC; ci++) {
        bench_row rows[KINDS];
        for (int k = 0; k < KINDS; k++) {
            rows[k].name = sname[ci][k];
            rows[k].st = bench_summarise(&s[ci][k]);
        }
        for (int k = 0; k < KINDS; k++)
            rows[k].base = k == FLOOR ? NULL : &rows[FLOOR].st;
        char title[96];
        snprintf(title, sizeof title, "async_throughput: latency per call, %zu in flight",
                 conc[ci]);
        bench_report("async_throughput", title, rows, KINDS);
    }

    printf("\nasync_throughput: calls per second (x = vs floor at the same concurrency)\n");
    printf("%-10s", "in flight");
    for (int k = 0; k < KINDS; k++)
        printf(" %18s", names[k]);
    printf("\n");
    for (int ci = 0; ci < NCONC; ci++) {
        printf("%-10zu", conc[ci]);
        double fl = (double)total[ci][FLOOR] / wall_s[ci][FLOOR];
        for (int k = 0; k < KINDS; k++) {
            double rate = (double)total[ci][k] / wall_s[ci][k];
            if (k == FLOOR)
                printf(" %18.0f", rate);
            else
                printf(" %11.0f %5.2fx", rate, rate / fl);
        }
        printf("\n");
    }
    printf("\n");
    for (int ci = 0; ci < NCONC; ci++) {
        double fl = (double)total[ci][FLOOR] / wall_s[ci][FLOOR];
        for (int k = 0; k < KINDS; k++) {
            double rate = (double)total[ci][k] / wall_s[ci][k];
            printf("RESULT scenario=async_throughput_rate name=%s in_flight=%zu calls=%zu "
                   "failed=%zu calls_per_s=%.1f x_floor=%.3f\n",
                   names[k], conc[ci], total[ci][k], failed[ci][k], rate, rate / fl);
            bench_series_free(&s[ci][k]);
        }
    }
    uv_loop_close(&loop);
    tbx_forkserver_stop();
    return 0;
}
