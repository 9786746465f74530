/*
 * fds_in_flight: descriptors a call in flight holds, per method.
 *
 *   fds_in_flight [calls]            default 100
 *
 * Starts `calls` async calls of a function that sleeps 300 ms on one loop,
 * by each method in turn, counts this process's open descriptors while they
 * are all in flight, and prints (count - count before) / calls.  The pool
 * keeps `calls` idle processes (pool_size), so that none is forked for the
 * calls; their descriptors are counted before, as the process's own.
 */
#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <timebox.h>
#include <timebox/uv.h>

static int nap(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    usleep(300000);
    return msgpack_pack_nil(result);
}
TBX_REGISTER(nap);

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    while (d != NULL && readdir(d) != NULL)
        n++;
    if (d != NULL)
        closedir(d);
    return n - 3; /* ".", ".." and the directory's own */
}

static unsigned done, failed;

static void done_cb(tbx_req *req, tbx_result *r)
{
    (void)req;
    done++;
    failed += r->status != 0;
    tbx_result_free(r);
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    size_t n = bench_arg_count(argc, argv, 1, 100);
    static const unsigned char nil[1] = {0xc0};
    static const struct {
        const char *name;
        tbx_method m;
        size_t max_result;
    } runs[] = {{"fork", TBX_FORK, 0},           {"fork_small_max", TBX_FORK, 65536},
                {"spawn", TBX_SPAWN, 0},         {"forkserver", TBX_FORKSERVER, 0},
                {"pool", TBX_POOL, 0}};
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.pool_size = (unsigned)n;
    if (tbx_forkserver_start(&fo) != 0)
        bench_die("tbx_forkserver_start");
    tbx_req *reqs = calloc(n, sizeof *reqs);
    uv_loop_t *loop = uv_default_loop();
    for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
        tbx_opts o;
        tbx_opts_init(&o);
        o.method = runs[k].m;
        o.timeout_s = 10;
        if (runs[k].max_result != 0)
            o.max_result = runs[k].max_result;
        int before = count_fds();
        done = failed = 0;
        for (size_t i = 0; i < n; i++)
            if (tbx_call_async(loop, &reqs[i], nap, nil, 1, &o, done_cb) != 0)
                bench_die("tbx_call_async");
        usleep(100000); /* all launched, none done */
        uv_run(loop, UV_RUN_NOWAIT);
        int during = count_fds();
        uv_run(loop, UV_RUN_DEFAULT);
        double per = (double)(during - before) / (double)n;
        printf("%-16s %zu calls in flight: %d descriptors more than before, %.2f per call%s\n",
               runs[k].name, n, during - before, per, failed ? " (some failed)" : "");
        printf("RESULT scenario=fds_in_flight name=%s calls=%zu fds_per_call=%.2f failed=%u\n",
               runs[k].name, n, per, failed);
    }
    free(reqs);
    tbx_forkserver_stop();
    return 0;
}
