/*
 * Traps of the API that must fail loudly or work (issue 13, item 9), and
 * the smaller holes of item 8: the forkserver's creator connection
 * close-on-exec, a spawned worker whose caller died before it started, and
 * a loop's deadline timer that could not be watched.
 */
#define _GNU_SOURCE
#include "promises_util.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <timebox/uv.h>
#include <unistd.h>

/* ------------------------------------------------- one name, two functions */

static int dup_handler(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_int(pk, 1);
}
TBX_REGISTER(dup_handler);

tbx_fn *other_dup_handler(void); /* promises_dup.c */

/* Either function, called by a method that finds it by name, is refused
 * with a message naming both registrations; fork calls by pointer and runs
 * the right one. */
TBX_TEST(traps, one_name_registered_twice_is_refused)
{
    tbx_fn *fns[2] = {dup_handler, other_dup_handler()};
    msgpack_sbuffer sb;
    pack(&sb, "n");
    for (int i = 0; i < 2; i++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = 30;
        tbx_result r;
        int rc = tbx_call(fns[i], sb.data, sb.size, &o, &r);
        if (*method == TBX_FORK) {
            cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
            cr_assert_eq(obj_int(&r.value), i + 1);
        } else {
            cr_assert_eq(rc, TBX_ENOTREG, "%d: %s: %s", i, tbx_err_name(rc), r.message);
            cr_assert_not_null(strstr(r.message, "dup_handler"), "'%s'", r.message);
            cr_assert_not_null(strstr(r.message, "test_traps.c:"), "'%s'", r.message);
            cr_assert_not_null(strstr(r.message, "promises_dup.c:"), "'%s'", r.message);
        }
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
    tbx_forkserver_stop();
}

/* ---------------------------------------------- a hook that cannot reach */

static int late_hook_runs;

static int late_hook(void *arg)
{
    (void)arg;
    late_hook_runs++;
    return 0;
}

/* A hook added at run time lives in this process's memory: fork children
 * run it; a spawn or forkserver call, whose child could not, is refused
 * while it is there, and says so. */
TBX_TEST(traps, run_time_hook_that_cannot_reach_is_refused)
{
    cr_assert_eq(tbx_add_child_hook(late_hook, NULL), 0);
    tbx_result r;
    int rc = echo_once(*method, 30, &r);
    if (*method == TBX_FORK) {
        cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    } else {
        cr_assert_eq(rc, TBX_EINVAL, "%s: %s", tbx_err_name(rc), r.message);
        cr_assert_not_null(strstr(r.message, "tbx_add_child_hook"), "'%s'", r.message);
    }
    tbx_result_free(&r);
    cr_assert_eq(tbx_remove_child_hook(late_hook, NULL), 0);
    rc = echo_once(*method, 30, &r);
    cr_assert_eq(rc, 0, "hook removed: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    cr_assert_eq(late_hook_runs, 0, "the hook ran in the caller");
    tbx_forkserver_stop();
}

/* --------------------------------------- a second start, other options */

TBX_PLAIN_TEST(traps, forkserver_start_with_other_options_is_refused)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    cr_assert_eq(tbx_forkserver_start(&fo), 0, "the same options");
    fo.warm_children = 1;
    cr_assert_eq(tbx_forkserver_start(&fo), -EBUSY, "other warm_children");
    tbx_forkserver_opts_init(&fo);
    fo.max_children = 7;
    cr_assert_eq(tbx_forkserver_start(&fo), -EBUSY, "other max_children");
    tbx_forkserver_stop();
    cr_assert_eq(tbx_forkserver_start(&fo), 0, "after a stop");
    cr_assert_eq(tbx_forkserver_start(&fo), 0, "the same options again");
    cr_assert_eq(tbx_forkserver_start(NULL), -EBUSY, "the defaults, now other");
    tbx_forkserver_stop();
}

/* ----------------------------------- the creator connection, close-on-exec */

#define FD_REPORT_VAR "TBX_TEST_FD_REPORT"

/* In the forkserver, before it serves: lists the descriptors above 2 that a
 * program it ran (system(), exec) would inherit. */
static int report_inheritable(void)
{
    const char *path = getenv(FD_REPORT_VAR);
    if (path == NULL)
        return 0;
    FILE *f = fopen(path, "we");
    if (f == NULL)
        return 0;
    for (int fd = 3; fd < 1024; fd++) {
        int flags = fcntl(fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC) && fileno(f) != fd)
            fprintf(f, "%d ", fd);
    }
    fclose(f);
    return 0;
}
TBX_PRELOAD(report_inheritable);

TBX_PLAIN_TEST(holes, forkserver_descriptors_are_close_on_exec)
{
    char dir[64], path[96], report[128], got[256] = "";
    make_socket_dir(dir, sizeof dir, path, sizeof path);
    snprintf(report, sizeof report, "%s/fds", dir);
    cr_assert_eq(setenv(FD_REPORT_VAR, report, 1), 0);
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    FILE *f = fopen(report, "re");
    cr_assert_not_null(f, "the preload hook did not run");
    size_t n = fread(got, 1, sizeof got - 1, f);
    got[n] = '\0';
    fclose(f);
    cr_assert_eq(n, 0, "the forkserver's descriptors %s are inherited across exec", got);
    tbx_forkserver_stop();
    remove_tree(dir);
}

/* ------------------------------ a worker whose caller died before it ran */

#define SLOW_START_VAR "TBX_TEST_SLOW_START"
#define HOOK_MARK_VAR "TBX_TEST_HOOK_MARK"

/* Creates the file the environment names: the child's set-up (its hooks)
 * ran. */
static int mark_hook(void *arg)
{
    (void)arg;
    const char *path = getenv(HOOK_MARK_VAR);
    if (path != NULL)
        close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
    return 0;
}
TBX_CHILD_HOOK(mark_hook);

/* Before tbx_init (helpers.c's constructor runs later): a program slow to
 * start, in which the caller dies before the worker reaches its prctl. */
__attribute__((constructor(102))) static void slow_start(void)
{
    const char *v = getenv(SLOW_START_VAR);
    if (v != NULL)
        child_sleep(atof(v));
}

/* The worker's caller dies while the worker is still starting (before its
 * parent-death signal is set): the worker must notice, and run neither
 * hooks nor fn. */
TBX_PLAIN_TEST(holes, spawned_worker_of_a_dead_caller_never_runs_fn)
{
    char dir[64], sock[96], pidfile[128], mark[128];
    make_socket_dir(dir, sizeof dir, sock, sizeof sock);
    snprintf(pidfile, sizeof pidfile, "%s/pid", dir);
    snprintf(mark, sizeof mark, "%s/hooked", dir);
    become_subreaper();
    pid_t caller = fork();
    cr_assert_geq(caller, 0);
    if (caller == 0) {
        setenv(SLOW_START_VAR, "1.0", 1);
        setenv(HOOK_MARK_VAR, mark, 1);
        uv_loop_t loop;
        uv_loop_init(&loop);
        msgpack_sbuffer sb;
        pack(&sb, "s", pidfile);
        tbx_opts o = test_opts(TBX_SPAWN);
        o.timeout_s = 60;
        tbx_req req;
        int rc = tbx_call_async(&loop, &req, fn_pid_then_hang, sb.data, sb.size, &o, ignore_cb);
        _exit(rc == 0 ? 0 : 1); /* dies with the request sent, the worker starting */
    }
    int st;
    cr_assert_eq(waitpid(caller, &st, 0), caller);
    cr_assert_eq(st, 0, "the caller could not start its call");
    sleep_s(3.0); /* the worker's start (1 s) and then some */
    bool ran = access(pidfile, F_OK) == 0;
    if (ran)
        (void)kill(read_pid_file(pidfile, 1), SIGKILL);
    reap_adopted(10);
    cr_assert(!ran, "fn ran in a worker whose caller had died");
    cr_assert_neq(access(mark, F_OK), 0, "a worker whose caller had died ran its hooks");
    remove_tree(dir);
}

/* ---------------------------------- a deadline timer that cannot be watched */

/* uv_poll_start, made to fail for a timerfd while fail_timer_poll is set:
 * the executable's definition comes before libuv's. */
static int fail_timer_poll;

int uv_poll_start(uv_poll_t *handle, int events, uv_poll_cb cb)
{
    static int (*real)(uv_poll_t *, int, uv_poll_cb);
    if (real == NULL)
        *(void **)&real = dlsym(RTLD_NEXT, "uv_poll_start");
    uv_os_fd_t fd;
    char target[64] = "";
    if (fail_timer_poll && uv_fileno((uv_handle_t *)handle, &fd) == 0)
        fd_target(fd, target, sizeof target);
    if (strstr(target, "timerfd") != NULL)
        return UV_ENOMEM;
    return real(handle, events, cb);
}

TBX_PLAIN_TEST(holes, deadline_timer_failure_leaves_the_loop_clean)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "hi");
    tbx_opts o = test_opts(TBX_FORK);
    o.timeout_s = 30;
    tbx_req req;
    fail_timer_poll = 1;
    int rc = tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, ignore_cb);
    fail_timer_poll = 0;
    cr_assert_eq(rc, UV_ENOMEM, "%s", tbx_err_name(rc));
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "the loop still holds a handle of timebox's");
    /* And the next call on a fresh loop gets a working timer. */
    cr_assert_eq(uv_loop_init(&loop), 0);
    int done = 0;
    req.data = &done;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, ignore_cb), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}
