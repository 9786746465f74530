/*
 * fds_in_flight: descriptors a call in flight holds, per method.
 *
 *   fds_in_flight [calls]            default 100
 *
 * Starts `calls` async calls on one loop, by each method in turn, with the
 * default options (max_result, containment), waits until every call's child
 * runs fn (each marks itself in a directory; fn then waits for a "go" file),
 * counts this process's open descriptors, and prints (count - count before)
 * / calls.  The pool keeps `calls` idle processes (pool_size), so that none
 * is forked for the calls; their descriptors are counted before, as the
 * process's own.
 */
#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <timebox.h>
#include <timebox/uv.h>

/* args [dir]: marks itself running with dir/ready.<pid>, then waits until
 * dir/go exists (at most 60 s). */
static int nap(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    const msgpack_object_str *s = &args->via.array.ptr[0].via.str;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%.*s/ready.%d", (int)s->size, s->ptr, (int)getpid());
    FILE *f = fopen(path, "w");
    if (f != NULL)
        fclose(f);
    snprintf(path, sizeof path, "%.*s/go", (int)s->size, s->ptr);
    for (int i = 0; i < 6000 && access(path, F_OK) != 0; i++)
        usleep(10000);
    return msgpack_pack_nil(result);
}
TBX_REGISTER(nap);

/* Entries of dir named prefix*, removed if unlink is set. */
static size_t entries(const char *dir, const char *prefix, int unlink_them)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    struct dirent *e;
    char path[PATH_MAX];
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || e->d_name[0] == '.')
            continue;
        n++;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink_them)
            (void)unlink(path);
    }
    if (d != NULL)
        closedir(d);
    return n;
}

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
    char dir[] = "/tmp/timebox-bench-fds-XXXXXX", go[64];
    if (mkdtemp(dir) == NULL)
        bench_die("mkdtemp");
    snprintf(go, sizeof go, "%s/go", dir);
    msgpack_sbuffer args;
    msgpack_sbuffer_init(&args);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &args, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, dir, strlen(dir));
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
            if (tbx_call_async(loop, &reqs[i], nap, args.data, args.size, &o, done_cb) != 0)
                bench_die("tbx_call_async");
        /* Every child running fn, and then the loop's work for them done
         * (spawn's requests sent): none can end before the go. */
        uint64_t end = bench_now_ns() + 60000000000ull;
        while (entries(dir, "ready.", 0) < n && bench_now_ns() < end) {
            uv_run(loop, UV_RUN_NOWAIT);
            usleep(10000);
        }
        for (int i = 0; i < 10; i++) {
            uv_run(loop, UV_RUN_NOWAIT);
            usleep(10000);
        }
        int during = count_fds();
        FILE *f = fopen(go, "w");
        if (f == NULL)
            bench_die("fopen go");
        fclose(f);
        uv_run(loop, UV_RUN_DEFAULT);
        /* A reading that unlinks may miss entries: again until none. */
        for (int i = 0; i < 100 && entries(dir, "", 1) > 0; i++)
            continue;
        double per = (double)(during - before) / (double)n;
        printf("%-16s %zu calls in flight: %d descriptors more than before, %.2f per call%s\n",
               runs[k].name, n, during - before, per, failed ? " (some failed)" : "");
        printf("RESULT scenario=fds_in_flight name=%s calls=%zu fds_per_call=%.2f failed=%u\n",
               runs[k].name, n, per, failed);
    }
    free(reqs);
    msgpack_sbuffer_destroy(&args);
    (void)rmdir(dir);
    tbx_forkserver_stop();
    return 0;
}
