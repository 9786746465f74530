/*
 * Descriptors per call in flight: README (Async API) and timebox/uv.h say a
 * fork or spawn call holds 2, its result socket and the child's pidfd (a
 * forkserver call: its result socket and its control socket), whatever
 * max_result and with the default containment (a cgroup of the
 * call's own, which the call reopens by its path to kill it rather than
 * hold open).  That a big result, whose memfd the child makes only past
 * 1 MiB, still arrives whole and within max_result: test_faults_payload.c
 * (results::past_1mib_at_and_over_max_result).
 */
#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define IN_FLIGHT 100
/* What a first call may leave open for the calls after it (the loop's
 * deadline timer, a cgroup's set-up), and some room. */
#define FDS_CONSTANT 8

/* args [dir]: marks itself running with dir/ready.<pid>, then waits until
 * dir/go exists (bounded, so that a lost test leaves no child behind). */
static int fn_wait_for_go(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    char dir[256], path[300];
    const msgpack_object_str *s = &args->via.array.ptr[0].via.str;
    if (s->size >= sizeof dir)
        return tbx_fail(pk, 1, "a long directory");
    memcpy(dir, s->ptr, s->size);
    dir[s->size] = '\0';
    snprintf(path, sizeof path, "%s/ready.%d", dir, (int)getpid());
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return tbx_fail(pk, 2, "%s: %s", path, strerror(errno));
    fclose(f);
    snprintf(path, sizeof path, "%s/go", dir);
    for (int i = 0; i < 12000 && access(path, F_OK) != 0; i++)
        usleep(10000);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_wait_for_go);

/* Entries in dir whose name starts with "ready.". */
static int count_ready(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "opendir %s: %s", dir, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, "ready.", 6) == 0;
    closedir(d);
    return n;
}

static int calls_ok, calls_contained;

static void in_flight_cb(tbx_req *req, tbx_result *r)
{
    (void)req;
    calls_ok += r->status == 0;
    calls_contained += r->containment == TBX_CONTAIN_CGROUP;
    tbx_result_free(r);
}

/* Removes dir and its files.  Entries unlinked while the directory is read
 * may hide others from that reading (POSIX leaves it unspecified): read it
 * again until a reading finds none. */
static void remove_dir(const char *dir)
{
    char path[300];
    for (int found = 1, round = 0; found && round < 100; round++) {
        DIR *d = opendir(dir);
        cr_assert_not_null(d, "opendir %s: %s", dir, strerror(errno));
        struct dirent *e;
        found = 0;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            cr_assert_eq(unlink(path), 0, "unlink %s: %s", path, strerror(errno));
            found = 1;
        }
        closedir(d);
    }
    cr_assert_eq(rmdir(dir), 0, "rmdir %s: %s", dir, strerror(errno));
}

TBX_TEST_T(fds, two_per_call_in_flight_with_default_options, 300.0)
{
    if (*method == TBX_POOL)
        cr_skip_test("the figure of 2 is fork's, spawn's and the forkserver's; a pooled "
                     "call's descriptors are its process's (README, Async API)");
    if (*method == TBX_FORKSERVER) /* its connection counted before */
        cr_assert_eq(tbx_forkserver_start(NULL), 0);
    char dir[] = "/tmp/timebox-fds-XXXXXX";
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    msgpack_sbuffer sb;
    pack(&sb, "as", 1, dir);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_req *reqs = calloc(IN_FLIGHT, sizeof *reqs);
    cr_assert_not_null(reqs);
    tbx_opts o = test_opts(*method); /* max_result, contain: the defaults */
    o.timeout_s = 200;
    calls_ok = calls_contained = 0;

    int before = count_fds();
    for (int i = 0; i < IN_FLIGHT; i++) {
        int rc = tbx_call_async(&loop, &reqs[i], fn_wait_for_go, sb.data, sb.size, &o,
                                in_flight_cb);
        cr_assert_eq(rc, 0, "call %d: %s", i, tbx_err_name(rc));
    }
    /* Every child running fn (spawn's requests sent, their sockets closed
     * once the loop hears so), none able to end: the count settles. */
    int limit = before + 2 * IN_FLIGHT + FDS_CONSTANT, during = -1;
    double end = now_s() + 120, settled = 0;
    while (now_s() < end && (settled == 0 || now_s() < settled)) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (settled == 0 && count_ready(dir) == IN_FLIGHT)
            settled = now_s() + 10;
        if (settled != 0 && (during = count_fds()) <= limit)
            break;
        sleep_s(0.01);
    }
    char open_fds[4096];
    describe_fds(open_fds, sizeof open_fds);
    cr_assert_eq(count_ready(dir), IN_FLIGHT, "not every call's child ran");
    cr_assert_leq(during, limit,
                  "%d calls in flight hold %d descriptors, %.2f per call (at most 2 + %d in "
                  "all); open:\n%s",
                  IN_FLIGHT, during - before, (double)(during - before) / IN_FLIGHT,
                  FDS_CONSTANT, open_fds);

    char go[300];
    snprintf(go, sizeof go, "%s/go", dir);
    FILE *f = fopen(go, "w");
    cr_assert_not_null(f);
    fclose(f);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(calls_ok, IN_FLIGHT);
    if (tbx_containment() == TBX_CONTAIN_CGROUP)
        cr_assert_eq(calls_contained, IN_FLIGHT, "the calls ran in cgroups of their own");
    cr_assert_eq(uv_loop_close(&loop), 0);
    free(reqs);
    msgpack_sbuffer_destroy(&sb);
    remove_dir(dir);
}
