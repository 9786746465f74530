/*
 * Every system call site a call goes through, failed in turn, through
 * timebox's table of them (lib/os.h, tbx__sys), as test_alloc does for
 * allocations: for each entry and n = 0, 1, 2, ... the n-th call through
 * that entry fails with the entry's errno, until a call makes fewer than
 * n + 1 of them.  Each time the call returns that -errno (or succeeds, where
 * timebox has another way: a result or args that get no memfd go by the pipe
 * or the socket), with
 * no descriptor left open, no child left, and the next call, table restored,
 * works.  Every site a method must go through is reached at least once.
 */
#define _GNU_SOURCE
#include "helpers.h"
#include "../lib/os.h"

#include <errno.h>
#include <string.h>
#include <timebox/uv.h>

enum { SYS_FORK, SYS_PIPE2, SYS_SOCKETPAIR, SYS_MEMFD, SYS_PIDFD, SYS_TIMERFD, SYS_SPAWN, NSYS };

/* The failing entry, which of its calls fails, and how many were made. */
static int fail_which = -1, fail_nth, fail_err, seen, fired;

static int hit(int which)
{
    if (which != fail_which || seen++ != fail_nth)
        return 0;
    fired = 1;
    errno = fail_err;
    return 1;
}

static pid_t nth_fork(void)
{
    return hit(SYS_FORK) ? -1 : tbx__sys_default.fork();
}

static int nth_pipe2(int fds[2], int flags)
{
    return hit(SYS_PIPE2) ? -1 : tbx__sys_default.pipe2(fds, flags);
}

static int nth_socketpair(int domain, int type, int protocol, int sv[2])
{
    return hit(SYS_SOCKETPAIR) ? -1 : tbx__sys_default.socketpair(domain, type, protocol, sv);
}

static int nth_memfd_create(const char *name, unsigned int flags)
{
    return hit(SYS_MEMFD) ? -1 : tbx__sys_default.memfd_create(name, flags);
}

static int nth_pidfd_open(pid_t pid, unsigned int flags)
{
    return hit(SYS_PIDFD) ? -1 : tbx__sys_default.pidfd_open(pid, flags);
}

static int nth_timerfd_create(int clockid, int flags)
{
    return hit(SYS_TIMERFD) ? -1 : tbx__sys_default.timerfd_create(clockid, flags);
}

static int nth_posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                           const posix_spawnattr_t *attr, char *const argv[],
                           char *const envp[])
{
    if (hit(SYS_SPAWN))
        return fail_err; /* posix_spawn returns its error */
    return tbx__sys_default.posix_spawn(pid, path, fa, attr, argv, envp);
}

/* Arms the table: the n-th call through entry `which` fails with err. */
static void arm(int which, int n, int err)
{
    fail_which = which;
    fail_nth = n;
    fail_err = err;
    seen = fired = 0;
    tbx__sys.fork = nth_fork;
    tbx__sys.pipe2 = nth_pipe2;
    tbx__sys.socketpair = nth_socketpair;
    tbx__sys.memfd_create = nth_memfd_create;
    tbx__sys.pidfd_open = nth_pidfd_open;
    tbx__sys.timerfd_create = nth_timerfd_create;
    tbx__sys.posix_spawn = nth_posix_spawn;
}

static void disarm(void)
{
    tbx__sys = tbx__sys_default;
    fail_which = -1;
}

#define M(m) (1u << (m))
#define ALL (M(TBX_FORK) | M(TBX_SPAWN) | M(TBX_FORKSERVER))

/* Each entry, its errno, the methods whose calls must reach it (in this
 * process: the forkserver's own forks and pidfds are the server's), and
 * whether its failure is absorbed (the call succeeds all the same). */
static const struct {
    const char *name;
    int which, err;
    unsigned reached;
    int absorbed;
} entries[] = {
    {"fork", SYS_FORK, EAGAIN, M(TBX_FORK), 0},
    {"pipe2", SYS_PIPE2, EMFILE, ALL, 0},
    {"socketpair", SYS_SOCKETPAIR, ENFILE, M(TBX_FORK) | M(TBX_SPAWN) | M(TBX_FORKSERVER), 0},
    /* A fork or spawn child makes its result's memfd itself, and only for a
     * big result; spawn's caller makes one for big args. */
    {"memfd_create", SYS_MEMFD, ENOMEM, ALL & ~M(TBX_FORK), 1},
    {"pidfd_open", SYS_PIDFD, EMFILE, M(TBX_FORK) | M(TBX_SPAWN), 0},
    /* A blocking call's private loop keeps its timerfd from the calls
     * before: a fresh loop (the async sweep) makes one. */
    {"timerfd_create", SYS_TIMERFD, EMFILE, 0, 0},
    {"posix_spawn", SYS_SPAWN, EAGAIN, M(TBX_SPAWN), 0},
};
#define NENTRIES (sizeof entries / sizeof entries[0])

/* The call every sweep makes: args big enough to cross in a memfd (spawn,
 * forkserver), a deadline (the loop's timerfd), captured output (two pipes)
 * and a result that may use the call's memfd. */
static tbx_opts sweep_opts(tbx_method m)
{
    tbx_opts o = test_opts(m);
    o.timeout_s = 30;
    o.capture_output = 4096;
    return o;
}

/* fn_sum's result: the args arrived whole, whichever way they came. */
static void check_sum(const tbx_result *r, const msgpack_sbuffer *sb)
{
    size_t len = sb->size - 5; /* bin 32: a byte of type, four of length */
    cr_assert_eq(r->value.type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(r->value.via.array.ptr[0].via.u64, len, "the sum's length");
    cr_assert_eq(r->value.via.array.ptr[1].via.u64, fnv1a(sb->data + 5, len), "the sum");
}

/* Nothing of the call is left: its descriptors, its child.  A forkserver
 * the call started (its socket, fds before + 1) serves the next calls. */
static void check_left(int fds, int had_server, const char *name, int n)
{
    char open_fds[2048];
    if (!had_server && tbx_forkserver_pid() > 0)
        fds++;
    describe_fds(open_fds, sizeof open_fds);
    cr_assert_eq(count_fds(), fds, "%s #%d: a descriptor left open; open now:\n%s", name, n,
                 open_fds);
    pid_t kids[4];
    cr_assert_eq(list_call_children(kids, 4), 0, "%s #%d: a child is left", name, n);
}

/* One blocking call with entry i's n-th call failed.  Returns whether it
 * fired. */
static int blocking_once(tbx_method m, size_t i, int n, const msgpack_sbuffer *sb)
{
    tbx_opts o = sweep_opts(m);
    int fds = count_fds(), had_server = tbx_forkserver_pid() > 0;
    tbx_result r;
    arm(entries[i].which, n, entries[i].err);
    int rc = tbx_call(fn_sum, sb->data, sb->size, &o, &r);
    int did = fired;
    disarm();
    cr_assert_eq(r.status, rc);
    if (did && !entries[i].absorbed) {
        cr_assert_eq(rc, -entries[i].err, "%s #%d failed: the call gave %s (%s)",
                     entries[i].name, n, tbx_err_name(rc), r.message ? r.message : "-");
        cr_assert_not_null(r.message);
    } else {
        cr_assert_eq(rc, 0, "%s #%d: %s (%s)", entries[i].name, n, tbx_err_name(rc),
                     r.message ? r.message : "-");
        check_sum(&r, sb);
    }
    tbx_result_free(&r);
    check_left(fds, had_server, entries[i].name, n);
    return did;
}

/* The next call, the table restored, works. */
static void next_call_works(tbx_method m, const msgpack_sbuffer *sb, const char *after)
{
    tbx_opts o = sweep_opts(m);
    tbx_result r;
    int rc = tbx_call(fn_sum, sb->data, sb->size, &o, &r);
    cr_assert_eq(rc, 0, "after %s: %s (%s)", after, tbx_err_name(rc), r.message ? r.message : "-");
    check_sum(&r, sb);
    tbx_result_free(&r);
}

#define MAX_SITES 32

/* Sweeps entry i under method m; before_each runs before every call (to stop
 * the forkserver, so that the call starts one).  Returns the sites tried. */
static int sweep(tbx_method m, size_t i, void (*before_each)(void))
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, (size_t)2 << 20);
    int n;
    for (n = 0; n < MAX_SITES; n++) {
        if (before_each != NULL)
            before_each();
        if (!blocking_once(m, i, n, &sb))
            break;
        next_call_works(m, &sb, entries[i].name);
    }
    cr_assert_lt(n, MAX_SITES, "%s: more than %d calls in one call", entries[i].name, MAX_SITES);
    msgpack_sbuffer_destroy(&sb);
    return n;
}

/* What lives for the process comes first, outside the count: the
 * forkserver, and for the pool one idle pooled process (each call takes it
 * and gives it back, or has it replaced when the call failed). */
static void start_up(tbx_method m)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.pool_size = 1;
    if (m == TBX_FORKSERVER || m == TBX_POOL)
        cr_assert_eq(tbx_forkserver_start(m == TBX_POOL ? &fo : NULL), 0);
}

TBX_TEST_T(syscall, every_site_of_every_entry_fails_cleanly, 600.0)
{
    start_up(*method);
    for (size_t i = 0; i < NENTRIES; i++) {
        int n = sweep(*method, i, NULL);
        if (entries[i].reached & M(*method))
            cr_assert_gt(n, 0, "%s: the call never went through it", entries[i].name);
        cr_log_info("%s: %d site(s)", entries[i].name, n);
    }
}

/* The forkserver's start, made by the hand-over of a call when none runs:
 * its socket pair, its spawn, and the call's own sites after them. */
static void no_server(void)
{
    stop_forkserver();
}

TBX_TEST_T(syscall, forkserver_start_sites_fail_cleanly, 600.0)
{
    if (*method != TBX_FORKSERVER)
        return; /* only the forkserver's calls start something first */
    static const int start_entries[] = {SYS_SOCKETPAIR, SYS_SPAWN, SYS_PIPE2};
    for (size_t k = 0; k < sizeof start_entries / sizeof start_entries[0]; k++) {
        size_t i = 0;
        while (entries[i].which != start_entries[k])
            i++;
        int n = sweep(TBX_FORKSERVER, i, no_server);
        cr_assert_gt(n, 0, "%s: the start never went through it", entries[i].name);
        cr_log_info("%s with the server's start: %d site(s)", entries[i].name, n);
    }
    stop_forkserver();
}

/* The async call: refused at once with the errno (no callback), or
 * accepted, its callback called once with it. */
static int async_once(uv_loop_t *loop, tbx_method m, size_t i, int n, const msgpack_sbuffer *sb)
{
    tbx_opts o = sweep_opts(m);
    int fds = count_fds(), had_server = tbx_forkserver_pid() > 0;
    tbx_req req;
    memset(&req, 0, sizeof req);
    count_calls = 0;
    count_status = 1;
    arm(entries[i].which, n, entries[i].err);
    int rc = tbx_call_async(loop, &req, fn_sum, sb->data, sb->size, &o, count_cb);
    uv_run(loop, UV_RUN_DEFAULT);
    int did = fired;
    disarm();
    int status = rc != 0 ? rc : count_status;
    cr_assert_eq(count_calls, rc != 0 ? 0 : 1, "%s #%d: %d callbacks", entries[i].name, n,
                 count_calls);
    if (did && !entries[i].absorbed)
        cr_assert_eq(status, -entries[i].err, "%s #%d failed: the call gave %s",
                     entries[i].name, n, tbx_err_name(status));
    else
        cr_assert_eq(status, 0, "%s #%d: %s", entries[i].name, n, tbx_err_name(status));
    check_left(fds, had_server, entries[i].name, n);
    return did;
}

TBX_TEST_T(syscall, every_async_site_fails_cleanly, 600.0)
{
    start_up(*method);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack_big_bin(&sb, (size_t)2 << 20);
    for (size_t i = 0; i < NENTRIES; i++) {
        int n;
        for (n = 0; n < MAX_SITES && async_once(&loop, *method, i, n, &sb); n++)
            next_call_works(*method, &sb, entries[i].name);
        cr_assert_lt(n, MAX_SITES);
        if ((entries[i].reached & M(*method)) || entries[i].which == SYS_TIMERFD)
            cr_assert_gt(n, 0, "%s: the call never went through it", entries[i].name);
    }
    cr_assert_eq(uv_loop_close(&loop), 0, "a handle is left on the loop");
    msgpack_sbuffer_destroy(&sb);
}
