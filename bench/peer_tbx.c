/*
 * peer_tbx: timebox's side of bench/peers.sh, the same calls the Python
 * tools make there.
 *
 *   peer_tbx [calls [deadline_calls]]      (default 200, 5)
 *   peer_tbx serve
 *
 * serve: one trivial call per line on stdin ("fork", "forkserver", "spawn"
 * or "pool"), its time in microseconds as a line on stdout, until EOF or
 * "quit" (the Python side's fork children share the pipe: EOF may never
 * come); so that
 * peer_bench.py can put timebox's calls in the same rotation as the Python
 * tools' (the VM's speed drifts within a run; ratios of interleaved samples
 * do not).
 *
 * Series, per method (fork, forkserver, spawn, pool with one pooled
 * process), interleaved (rotating order):
 *   <m>_trivial  a function returning 42, timeout 10 s (after 10 of warm-up)
 *   <m>_hang     a function that sleeps forever, timeout 0.1 s (grace 1 s,
 *                the default): the time until tbx_call returns
 *   <m>_ignore   a function that ignores SIGTERM, then sleeps forever,
 *                timeout 0.1 s, default grace 1 s: SIGKILL at 1.1 s
 * Every call returns with its child reaped and its process group killed;
 * a call that does not end as expected stops the run.
 */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <timebox.h>

static int ignore_term(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)result, (void)ctx;
    signal(SIGTERM, SIG_IGN);
    for (;;)
        pause();
    return 0;
}
TBX_REGISTER(ignore_term);

enum { FORK, FORKSERVER, SPAWN, POOL, METHODS };
static const char *mnames[METHODS] = {"fork", "forkserver", "spawn", "pool"};
static const tbx_method methods[METHODS] = {TBX_FORK, TBX_FORKSERVER, TBX_SPAWN, TBX_POOL};

/* The forkserver, with one pooled process (a worker kept for all calls, as
 * pebble's reused pool keeps one). */
static int start_server(void)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.pool_size = 1;
    if (tbx_forkserver_start(&fo) == 0)
        return 0;
    perror("tbx_forkserver_start");
    return 1;
}
static const unsigned char args_nil[1] = {0xc0};

static double call(tbx_fn *fn, double timeout_s, tbx_method m, int want)
{
    tbx_opts o;
    tbx_result r;
    tbx_opts_init(&o);
    o.method = m;
    o.timeout_s = timeout_s;
    uint64_t t0 = bench_now_ns();
    int rc = tbx_call(fn, args_nil, sizeof args_nil, &o, &r);
    double us = (double)(bench_now_ns() - t0) / 1e3;
    if (rc != want) {
        fprintf(stderr, "peer_tbx: %s, expected %s\n", tbx_err_name(rc), tbx_err_name(want));
        exit(1);
    }
    tbx_result_free(&r);
    return us;
}

static int serve(void)
{
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (strcmp(line, "quit") == 0)
            break;
        int k = 0;
        while (k < METHODS && strcmp(line, mnames[k]) != 0)
            k++;
        if (k == METHODS) {
            fprintf(stderr, "peer_tbx serve: no method %s\n", line);
            return 2;
        }
        printf("%.2f\n", call(bench_answer, 10, methods[k], 0));
        fflush(stdout);
    }
    tbx_forkserver_stop();
    return 0;
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    if (argc > 1 && strcmp(argv[1], "serve") == 0)
        return start_server() != 0 ? 1 : serve();
    size_t n = bench_arg_count(argc, argv, 1, 200);
    size_t nd = bench_arg_count(argc, argv, 2, 5);
    if (start_server() != 0)
        return 1;

    bench_series triv[METHODS], hg[METHODS], ig[METHODS];
    char tn[METHODS][32], hn[METHODS][32], in[METHODS][32];
    for (int k = 0; k < METHODS; k++) {
        snprintf(tn[k], sizeof tn[k], "%s_trivial", mnames[k]);
        snprintf(hn[k], sizeof hn[k], "%s_hang", mnames[k]);
        snprintf(in[k], sizeof in[k], "%s_ignore", mnames[k]);
        bench_series_init(&triv[k], tn[k], n);
        bench_series_init(&hg[k], hn[k], nd);
        bench_series_init(&ig[k], in[k], nd);
    }
    for (size_t i = 0; i < 10 + n; i++)
        for (int j = 0; j < METHODS; j++) {
            int k = (int)((i + (size_t)j) % METHODS);
            double us = call(bench_answer, 10, methods[k], 0);
            if (i >= 10)
                bench_series_add(&triv[k], us);
        }
    for (size_t i = 0; i < nd; i++)
        for (int j = 0; j < 2 * METHODS; j++) {
            int x = (int)((i + (size_t)j) % (2 * METHODS)), k = x / 2;
            if (x % 2 == 0)
                bench_series_add(&hg[k], call(bench_hang, 0.1, methods[k], TBX_ETIMEDOUT));
            else
                bench_series_add(&ig[k], call(ignore_term, 0.1, methods[k], TBX_ETIMEDOUT));
        }

    bench_row rows[3 * METHODS];
    for (int k = 0; k < METHODS; k++) {
        rows[k] = (bench_row){tn[k], bench_summarise(&triv[k]), NULL};
        rows[METHODS + k] = (bench_row){hn[k], bench_summarise(&hg[k]), NULL};
        rows[2 * METHODS + k] = (bench_row){in[k], bench_summarise(&ig[k]), NULL};
    }
    bench_report("peers_timebox",
                 "peers, timebox side: trivial call (timeout 10 s); hang and ignore-SIGTERM "
                 "with timeout 0.1 s, grace 1 s",
                 rows, 3 * METHODS);
    for (int k = 0; k < METHODS; k++) {
        bench_series_free(&triv[k]);
        bench_series_free(&hg[k]);
        bench_series_free(&ig[k]);
    }
    tbx_forkserver_stop();
    return 0;
}
