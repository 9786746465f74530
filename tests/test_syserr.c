/*
 * System failures: out of descriptors at each step of a launch (timerfd,
 * pipe, pidfd), out of processes (fork), and one named system call failed
 * through timebox's table of them (lib/os.h, tbx__sys).  Each call returns
 * -errno with nothing left open or running, and the next call, limits or
 * table restored, works.
 */
#define _GNU_SOURCE
#include "helpers.h"
#include "../lib/os.h"

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
 * so always finds that slot free: a descriptor limit cannot make it fail. */
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

static int async_calls, async_status;

static void count_cb(tbx_req *req, tbx_result *r)
{
    (void)req;
    async_calls++;
    async_status = r->status;
    tbx_result_free(r);
}

TBX_TEST(emfile, async_call_at_each_step)
{
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
        cr_assert_eq(async_calls, 0, "%s: the callback of a refused call ran",
                     emfile_cases[i].what);
        cr_assert_eq(count_fds(), before, "%s: descriptors left open", emfile_cases[i].what);
        pid_t kids[4];
        cr_assert_eq(list_call_children(kids, 4), 0, "%s: a child is left",
                     emfile_cases[i].what);

        cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, count_cb), 0);
        uv_run(&loop, UV_RUN_DEFAULT);
        cr_assert_eq(async_calls, 1, "%s, limit restored", emfile_cases[i].what);
        async_calls = 0;
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
        if (rc != 0 || async_calls != 1 || async_status != -EAGAIN)
            return 15;
    } else if (rc != -EAGAIN || async_calls != 0) {
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

/* ----------------------------------------------------- the syscall table
 * Each entry replaced by one that fails with the case's errno (the libc
 * convention: -1 and errno, or the error number for posix_spawn). */
static int fail_errno;

static pid_t fail_fork(void)
{
    errno = fail_errno;
    return -1;
}

static int fail_pipe2(int fds[2], int flags)
{
    (void)fds, (void)flags;
    errno = fail_errno;
    return -1;
}

static int fail_socketpair(int domain, int type, int protocol, int sv[2])
{
    (void)domain, (void)type, (void)protocol, (void)sv;
    errno = fail_errno;
    return -1;
}

static int fail_pidfd_open(pid_t pid, unsigned int flags)
{
    (void)pid, (void)flags;
    errno = fail_errno;
    return -1;
}

static int fail_memfd_create(const char *name, unsigned int flags)
{
    (void)name, (void)flags;
    errno = fail_errno;
    return -1;
}

static int fail_posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                            const posix_spawnattr_t *attr, char *const argv[],
                            char *const envp[])
{
    (void)pid, (void)path, (void)fa, (void)attr, (void)argv, (void)envp;
    return fail_errno;
}

static void arm_fork(void) { tbx__sys.fork = fail_fork; }
static void arm_pipe2(void) { tbx__sys.pipe2 = fail_pipe2; }
static void arm_socketpair(void) { tbx__sys.socketpair = fail_socketpair; }
static void arm_pidfd_open(void) { tbx__sys.pidfd_open = fail_pidfd_open; }
static void arm_memfd_create(void) { tbx__sys.memfd_create = fail_memfd_create; }
static void arm_posix_spawn(void) { tbx__sys.posix_spawn = fail_posix_spawn; }

/* Which methods make the call in this process: the forkserver's children are
 * forked by the server, whose table is its own. */
#define FORK_ONLY (1u << TBX_FORK)
#define SPAWN_ONLY (1u << TBX_SPAWN)
#define ALL_METHODS ((1u << TBX_FORK) | (1u << TBX_SPAWN) | (1u << TBX_FORKSERVER))

static const struct {
    const char *what;
    void (*arm)(void);
    int err;
    unsigned methods;
    int expect; /* what the call returns: -err, or 0 where timebox falls back */
} sys_cases[] = {
    {"fork", arm_fork, EAGAIN, FORK_ONLY, -EAGAIN},
    {"pipe2", arm_pipe2, EMFILE, ALL_METHODS, -EMFILE},
    {"socketpair", arm_socketpair, ENFILE, SPAWN_ONLY | (1u << TBX_FORKSERVER), -ENFILE},
    {"pidfd_open", arm_pidfd_open, EMFILE, FORK_ONLY, -EMFILE},
    {"posix_spawn", arm_posix_spawn, EAGAIN, SPAWN_ONLY, -EAGAIN},
    /* No memfd: a big result comes down the pipe instead. */
    {"memfd_create", arm_memfd_create, ENOSYS, ALL_METHODS, 0},
};

TBX_TEST(syscall, a_failed_call_site_returns_its_errno_and_leaks_nothing)
{
    for (size_t i = 0; i < sizeof sys_cases / sizeof sys_cases[0]; i++) {
        if (!(sys_cases[i].methods & (1u << *method)))
            continue;
        int before = count_fds();
        tbx_result r;
        fail_errno = sys_cases[i].err;
        sys_cases[i].arm();
        int rc = call_echo(*method, 10, &r);
        tbx__sys = tbx__sys_default;
        cr_assert_eq(rc, sys_cases[i].expect, "%s failed: %s (%s)", sys_cases[i].what,
                     tbx_err_name(rc), r.message ? r.message : "-");
        cr_assert_eq(r.status, rc);
        if (rc == 0)
            cr_assert(obj_str_eq(&r.value, "after"), "%s: the value", sys_cases[i].what);
        tbx_result_free(&r);
        cr_assert_eq(count_fds(), before, "%s: descriptors left open", sys_cases[i].what);
        pid_t kids[4];
        cr_assert_eq(list_call_children(kids, 4), 0, "%s: a child is left", sys_cases[i].what);

        rc = call_echo(*method, 10, &r);
        cr_assert_eq(rc, 0, "%s restored: %s", sys_cases[i].what, tbx_err_name(rc));
        cr_assert(obj_str_eq(&r.value, "after"));
        tbx_result_free(&r);
    }
}
