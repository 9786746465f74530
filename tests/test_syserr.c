/*
 * System failures as the kernel makes them: out of descriptors at each step
 * of a launch (timerfd, pipe), out of processes (fork).  Each call returns
 * -errno with nothing left open or running, and the next call, limits
 * restored, works.  Every named call site, failed one at a time through
 * timebox's table of system calls (lib/os.h, tbx__sys), is test_syscalls.c.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <timebox/uv.h>
#include <unistd.h>

/* Fills every free descriptor below the highest open one, so that the next
 * descriptors the process gets are exactly top, top + 1, ...  Returns top;
 * the fillers are listed in fill[] for unfill(). */
static int fill[1024], nfill;

static int fill_holes(void)
{
    int top = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            top = fd + 1;
    nfill = 0;
    for (int fd = 0; fd < top; fd++) {
        if (fcntl(fd, F_GETFD) < 0) {
            int f = open("/dev/null", O_RDONLY | O_CLOEXEC);
            cr_assert_eq(f, fd, "filler landed on %d, not %d", f, fd);
            fill[nfill++] = f;
        }
    }
    return top;
}

static void unfill(void)
{
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    nfill = 0;
}

static struct rlimit saved_nofile;

static void limit_fds(rlim_t n)
{
    struct rlimit rl = saved_nofile;
    rl.rlim_cur = n;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0, "setrlimit %lu: %s", (unsigned long)n,
                 strerror(errno));
}

static void restore_fds(void)
{
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &saved_nofile), 0);
}

static int call_echo(tbx_method m, double timeout, tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "s", "after");
    tbx_opts o = test_opts(m);
    o.timeout_s = timeout;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* The steps a launch takes descriptors for, in order: the loop's timerfd
 * (only with a deadline, and only if none is armed on the loop), the result
 * pipe (two).  `spare` free slots make the step after them fail.  The pidfd
 * comes after the fork, once the parent has closed the pipe's write end, and
 * so always finds that slot free: a descriptor limit cannot make it fail
 * (test_syscalls.c fails it through the table). */
static const struct {
    const char *what;
    double timeout;
    int spare;
} emfile_cases[] = {
    {"pipe, no deadline", 0, 0},
    {"pipe, one slot free", 0, 1},
    {"timerfd", 10, 0},
    {"pipe after timerfd", 10, 1},
};

TBX_TEST(emfile, blocking_call_at_each_step)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled call takes no descriptor when a process is idle: test_pool.c");
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &saved_nofile), 0);
    for (size_t i = 0; i < sizeof emfile_cases / sizeof emfile_cases[0]; i++) {
        int before = count_fds();
        int top = fill_holes();
        limit_fds((rlim_t)(top + emfile_cases[i].spare));
        tbx_result r;
        int rc = call_echo(*method, emfile_cases[i].timeout, &r);
        restore_fds();
        unfill();
        cr_assert_eq(rc, -EMFILE, "%s: %s (%s)", emfile_cases[i].what, tbx_err_name(rc),
                     r.message ? r.message : "-");
        cr_assert_eq(r.status, rc);
        cr_assert_not_null(r.message);
        cr_assert_eq(r.value.type, MSGPACK_OBJECT_NIL);
        tbx_result_free(&r);
        cr_assert_eq(count_fds(), before, "%s: descriptors left open", emfile_cases[i].what);
        pid_t kids[4];
        cr_assert_eq(list_call_children(kids, 4), 0, "%s: a child is left",
                     emfile_cases[i].what);

        rc = call_echo(*method, emfile_cases[i].timeout, &r);
        cr_assert_eq(rc, 0, "%s, limit restored: %s", emfile_cases[i].what, tbx_err_name(rc));
        cr_assert(obj_str_eq(&r.value, "after"));
        tbx_result_free(&r);
    }
}

TBX_TEST(emfile, async_call_at_each_step)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled call takes no descriptor when a process is idle: test_pool.c");
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &saved_nofile), 0);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "after");
    for (size_t i = 0; i < sizeof emfile_cases / sizeof emfile_cases[0]; i++) {
        int before = count_fds();
        tbx_req req;
        memset(&req, 0, sizeof req);
        tbx_opts o = test_opts(*method);
        o.timeout_s = emfile_cases[i].timeout;
        int top = fill_holes();
        limit_fds((rlim_t)(top + emfile_cases[i].spare));
        int rc = tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, count_cb);
        restore_fds();
        unfill();
        cr_assert_eq(rc, -EMFILE, "%s: %s", emfile_cases[i].what, tbx_err_name(rc));
        /* A refused call may still need the loop to close a handle. */
        uv_run(&loop, UV_RUN_DEFAULT);
        cr_assert_eq(count_calls, 0, "%s: the callback of a refused call ran",
                     emfile_cases[i].what);
        cr_assert_eq(count_fds(), before, "%s: descriptors left open", emfile_cases[i].what);
        pid_t kids[4];
        cr_assert_eq(list_call_children(kids, 4), 0, "%s: a child is left",
                     emfile_cases[i].what);

        cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, count_cb), 0);
        uv_run(&loop, UV_RUN_DEFAULT);
        cr_assert_eq(count_calls, 1, "%s, limit restored", emfile_cases[i].what);
        count_calls = 0;
    }
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* ----------------------------------------------------------- processes
 * Root ignores RLIMIT_NPROC, so a helper process drops to nobody first (and
 * marks itself dumpable again, or it could not read its own /proc/self/fd).
 * The helper reports by exit status: 0 all good, 77 cannot drop privileges,
 * anything else the step that failed. */
enum { NPROC_OK = 0, NPROC_SKIP = 77 };

static int nproc_helper(tbx_method m)
{
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
        return NPROC_SKIP;
    if (getuid() == 0 || prctl(PR_SET_DUMPABLE, 1) != 0)
        return NPROC_SKIP;
    /* A call that works first, as the fixture does: what the private loop
     * keeps between calls is open before counting. */
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(m);
    o.timeout_s = 10;
    tbx_result r;
    if (tbx_call(fn_echo, sb.data, sb.size, &o, &r) != 0)
        return 9;
    tbx_result_free(&r);
    struct rlimit rl = {0, 0};
    if (setrlimit(RLIMIT_NPROC, &rl) != 0)
        return 10;
    /* The forkserver was started before the limit and forks for us: it
     * must be held to it too, and then its refusal comes back. */
    if (m == TBX_FORKSERVER && prlimit(tbx_forkserver_pid(), RLIMIT_NPROC, &rl, NULL) != 0)
        return 19;
    if (fork() == 0)
        _exit(0); /* fork must fail now, or the test means nothing */
    if (errno != EAGAIN)
        return NPROC_SKIP;
    int before = count_fds();
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    if (rc != -EAGAIN || r.status != rc || r.message == NULL)
        return 11;
    tbx_result_free(&r);
    pid_t kids[2];
    if (count_fds() != before)
        return 12;
    if (list_call_children(kids, 2) != 0)
        return 13;

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        return 14;
    before = count_fds();
    tbx_req req;
    memset(&req, 0, sizeof req);
    rc = tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, count_cb);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (m == TBX_FORKSERVER) {
        /* The server forks after the call is under way: its refusal comes
         * through the callback. */
        if (rc != 0 || count_calls != 1 || count_status != -EAGAIN)
            return 15;
    } else if (rc != -EAGAIN || count_calls != 0) {
        return 16;
    }
    if (count_fds() != before || list_call_children(kids, 2) != 0)
        return 17;
    if (uv_loop_close(&loop) != 0)
        return 18;
    msgpack_sbuffer_destroy(&sb);
    return NPROC_OK;
}

TBX_TEST(nproc, fork_refused_gives_eagain)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled call forks nothing when a process is idle");
    tbx_method m = *method;
    pid_t helper = fork();
    cr_assert_geq(helper, 0);
    if (helper == 0)
        _exit(nproc_helper(m));
    int st;
    cr_assert_eq(waitpid(helper, &st, 0), helper);
    cr_assert(WIFEXITED(st), "helper status %#x", st);
    if (WEXITSTATUS(st) == NPROC_SKIP)
        cr_skip_test("cannot drop to an unprivileged user with RLIMIT_NPROC = 0 here");
    cr_assert_eq(WEXITSTATUS(st), NPROC_OK, "helper failed at step %d", WEXITSTATUS(st));
}
