/*
 * prefork: one forkserver shared by the workers of a pre-forking server.
 *
 *   ./prefork [workers [calls]]        default 4 workers, 1000 calls each
 *
 * The master starts a forkserver listening on a Unix socket before it forks
 * its workers, as a pre-forking web server would in its "preload" phase.
 * Each worker attaches to it by path and makes deadlined calls through it:
 * the children come from the small server, never from the workers, however
 * big or threaded they grow.  One call in fifty hangs and meets its deadline.
 */
#define _DEFAULT_SOURCE
#include <timebox.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* args: [n, hang]; returns n * n, or never returns when hang is true. */
static int square(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_ARRAY || args->via.array.size != 2)
        return tbx_fail(result, 1, "expected [n, hang]");
    uint64_t n = args->via.array.ptr[0].via.u64;
    if (args->via.array.ptr[1].via.boolean)
        for (;;)
            pause();
    return msgpack_pack_uint64(result, n * n);
}
TBX_REGISTER(square); /* found by name in the server's children */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A worker: attach, call, report through its exit status. */
static int worker(int id, int calls)
{
    /* The master's environment names the server and its key.  (A worker
     * forked from the master could also just use the connection it
     * inherited; attaching by path is what an exec'd worker must do.) */
    int rc = tbx_forkserver_attach(getenv("TIMEBOX_FORKSERVER_SOCKET"), NULL, 0);
    if (rc != 0) {
        fprintf(stderr, "worker %d: attach: %s\n", id, tbx_strerror(rc));
        return 1;
    }
    int ok = 0, timed_out = 0, other = 0;
    double t0 = now();
    for (int i = 0; i < calls; i++) {
        int hang = i % 50 == 49;
        msgpack_sbuffer buf;
        msgpack_packer pk;
        msgpack_sbuffer_init(&buf);
        msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint32(&pk, (uint32_t)i);
        hang ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);

        tbx_opts opts;
        tbx_opts_init(&opts);
        opts.method = TBX_FORKSERVER;
        opts.timeout_s = hang ? 0.02 : 2.0;
        opts.grace_s = 0.05;
        tbx_result r;
        rc = tbx_call(square, buf.data, buf.size, &opts, &r);
        if (rc == 0 && r.value.via.u64 == (uint64_t)i * (uint64_t)i)
            ok++;
        else if (rc == TBX_ETIMEDOUT && hang)
            timed_out++;
        else
            other++;
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&buf);
    }
    printf("worker %d (pid %d): %d ok, %d timed out as meant, %d wrong, %.0f ms\n", id,
           (int)getpid(), ok, timed_out, other, (now() - t0) * 1e3);
    fflush(stdout);
    return other == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv); /* the server's children start here too */
    int workers = argc > 1 ? atoi(argv[1]) : 4;
    int calls = argc > 2 ? atoi(argv[2]) : 1000;

    char dir[] = "/tmp/timebox-prefork-XXXXXX", path[64];
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/forkserver.sock", dir);
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.socket_path = path;
    fo.max_per_client = 8;
    int rc = tbx_forkserver_start(&fo);
    if (rc != 0) {
        fprintf(stderr, "tbx_forkserver_start: %s\n", tbx_strerror(rc));
        return 1;
    }
    printf("master %d: forkserver %d on %s\n", (int)getpid(), (int)tbx_forkserver_pid(), path);
    fflush(stdout);

    double t0 = now();
    pid_t pids[64];
    if (workers < 1 || workers > 64)
        workers = 4;
    for (int i = 0; i < workers; i++)
        if ((pids[i] = fork()) == 0)
            _exit(worker(i, calls));
    int failed = 0;
    for (int i = 0; i < workers; i++) {
        int st; /* our workers only: the forkserver is our child too */
        if (pids[i] < 0 || waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed++;
    }
    double took = now() - t0;
    printf("master: %d workers x %d calls in %.2f s (%.0f calls/s), %d worker(s) failed\n",
           workers, calls, took, workers * calls / took, failed);
    tbx_forkserver_stop(); /* kills what is left, removes the socket */
    rmdir(dir);
    return failed == 0 ? 0 : 1;
}
