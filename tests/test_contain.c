/*
 * "Nothing of a call outlives it", against processes that leave the call's
 * process group: fn forks a child that calls setsid() and sleeps, and one
 * that daemonizes (setsid, fork, the parent exits) and sleeps; when tbx_call
 * returns, after a result, a timeout or a crash, both are gone.  Under every
 * start method.  Where this process can have no cgroups (no cgroup v2, or
 * no right to make one), fork and spawn calls are contained by their
 * process group only, which setsid escapes: those tests are skipped with a
 * message, and the forkserver's subreaper is tested instead.
 */
#define _GNU_SOURCE
#include "helpers.h"
#include <timebox/uv.h>
#include "../lib/cgroup.h"

#include <limits.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* tests/escapees.c, built in as fn_leave_escapees. */
int fn_leave_escapees(const msgpack_object *args, msgpack_packer *pk, void *ctx);

static int exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static void temp_dir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/tbx-contain-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void remove_dir(const char *dir)
{
    char path[300];
    snprintf(path, sizeof path, "%s/setsid", dir);
    (void)unlink(path);
    snprintf(path, sizeof path, "%s/daemon", dir);
    (void)unlink(path);
    (void)rmdir(dir);
}

/* One call in mode; returns the escapees' pids, the call already back. */
static void call_escapees(tbx_method method, const char *mode, int contain, int want_status,
                          int want_containment, pid_t pids[2])
{
    char dir[64], path[128];
    temp_dir(dir, sizeof dir);
    msgpack_sbuffer sb;
    pack(&sb, "a s s", 2, dir, mode);
    tbx_opts o = test_opts(method);
    o.timeout_s = strcmp(mode, "hang") == 0 ? 1.0 : 60;
    o.grace_s = 0.2;
    o.contain = contain;
    tbx_result r;
    int rc = tbx_call(fn_leave_escapees, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, want_status, "%s call: %s: %s", mode, tbx_err_name(rc), r.message);
    cr_assert_eq(r.containment, want_containment, "%s call had containment %d, not %d", mode,
                 r.containment, want_containment);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    snprintf(path, sizeof path, "%s/setsid", dir);
    pids[0] = read_pid_file(path, 5);
    snprintf(path, sizeof path, "%s/daemon", dir);
    pids[1] = read_pid_file(path, 5);
    remove_dir(dir);
}

/* The containment every call of method gets here, or skips the test where
 * it cannot hold against setsid. */
static int expected_containment(tbx_method method)
{
    if (tbx_containment() == TBX_CONTAIN_CGROUP)
        return TBX_CONTAIN_CGROUP;
    if (method != TBX_FORKSERVER)
        cr_skip_test("no cgroups for this process (no cgroup v2, or not root and no delegated "
                     "subtree): fork and spawn calls have their process group only, which "
                     "setsid escapes");
    return TBX_CONTAIN_SUBREAPER;
}

/* Whether each pid is gone, now: a zombie that is our child (the test is
 * the subreaper of a daemon's children) is reaped first.  A survivor is
 * then killed: it holds Criterion's pipes, and must not outlive a failed
 * test either, or the suite would wait for it. */
static void check_gone(const pid_t pids[2], int gone[2], char state[2])
{
    for (int i = 0; i < 2; i++) {
        int st;
        state[i] = proc_state(pids[i]);
        if (state[i] == 'Z')
            (void)waitpid(pids[i], &st, WNOHANG);
        gone[i] = wait_gone(pids[i], 0);
        if (!gone[i])
            (void)kill(pids[i], SIGKILL);
    }
}

static void assert_gone_as(const int gone[2], const char state[2], const pid_t pids[2],
                           const char *mode)
{
    static const char *what[2] = {"setsid child", "daemon"};
    for (int i = 0; i < 2; i++)
        cr_assert(gone[i], "after a call that ended %s, its %s (pid %d) ran on (state %c)", mode,
                  what[i], (int)pids[i], state[i]);
}

static void assert_gone(const pid_t pids[2], const char *mode)
{
    int gone[2];
    char state[2];
    check_gone(pids, gone, state);
    assert_gone_as(gone, state, pids, mode);
}

TBX_TEST(contain, setsid_and_daemons_end_with_a_call_that_returns)
{
    pid_t pids[2];
    call_escapees(*method, "ok", 1, 0, expected_containment(*method), pids);
    assert_gone(pids, "with a result");
}

TBX_TEST(contain, setsid_and_daemons_end_with_a_call_that_times_out)
{
    pid_t pids[2];
    call_escapees(*method, "hang", 1, TBX_ETIMEDOUT, expected_containment(*method), pids);
    assert_gone(pids, "at its deadline");
}

TBX_TEST(contain, setsid_and_daemons_end_with_a_call_that_crashes)
{
    pid_t pids[2];
    call_escapees(*method, "crash", 1, TBX_ECRASHED, expected_containment(*method), pids);
    assert_gone(pids, "in a crash");
}

/* An async call: its callback runs once the escapees are gone. */
typedef struct async_check {
    const char *dir;
    int status, containment, gone[2];
    char state[2];
    pid_t pids[2];
} async_check;

static void escapees_cb(tbx_req *req, tbx_result *r)
{
    async_check *a = req->data;
    char path[128];
    a->status = r->status;
    a->containment = r->containment;
    tbx_result_free(r);
    snprintf(path, sizeof path, "%s/setsid", a->dir);
    a->pids[0] = read_pid_file(path, 5);
    snprintf(path, sizeof path, "%s/daemon", a->dir);
    a->pids[1] = read_pid_file(path, 5);
    check_gone(a->pids, a->gone, a->state);
}

TBX_TEST(contain, setsid_and_daemons_end_before_an_async_callback)
{
    int want = expected_containment(*method);
    char dir[64];
    temp_dir(dir, sizeof dir);
    msgpack_sbuffer sb;
    pack(&sb, "a s s", 2, dir, "ok");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    async_check a = {.dir = dir, .status = 1};
    tbx_req req;
    req.data = &a;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_leave_escapees, sb.data, sb.size, &o,
                                escapees_cb), 0);
    msgpack_sbuffer_destroy(&sb);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    remove_dir(dir);
    cr_assert_eq(a.status, 0, "%s", tbx_err_name(a.status));
    cr_assert_eq(a.containment, want);
    assert_gone_as(a.gone, a.state, a.pids, "with a result, async");
}

/* opts.contain = 0: the process group only, which setsid leaves.  That the
 * escapees then live on shows what the tests above would catch. */
TBX_TEST(contain, contain_0_leaves_setsid_to_the_process_group)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process's containment is fixed when it is forked: opts.contain does not apply");
    if (*method == TBX_FORKSERVER && tbx_containment() != TBX_CONTAIN_CGROUP)
        cr_skip_test("the server is a subreaper here: it contains every call");
    pid_t pids[2];
    call_escapees(*method, "ok", 0, 0, TBX_CONTAIN_PGROUP, pids);
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(kill(pids[i], 0), 0, "pid %d is gone without containment", (int)pids[i]);
        (void)kill(pids[i], SIGKILL);
        cr_assert(wait_gone(pids[i], 5));
    }
}

/* One forkserver call per outcome (a result, a timeout, a crash), each with
 * containment want, each leaving nothing behind. */
static void forkserver_every_outcome(int want)
{
    const char *modes[3] = {"ok", "hang", "crash"};
    const int status[3] = {0, TBX_ETIMEDOUT, TBX_ECRASHED};
    for (int m = 0; m < 3; m++) {
        pid_t pids[2];
        call_escapees(TBX_FORKSERVER, modes[m], 1, status[m], want, pids);
        assert_gone(pids, modes[m]);
    }
}

/* Where no cgroup can be had (here: cgroups turned off), the forkserver
 * is a child subreaper and kills the orphans it inherits. */
TBX_PLAIN_TEST(contain, forkserver_subreaper_ends_orphans_without_cgroups)
{
    cr_assert_eq(tbx_set_cgroup_root("off"), 0);
    cr_assert_eq(tbx_containment(), TBX_CONTAIN_PGROUP);
    forkserver_every_outcome(TBX_CONTAIN_SUBREAPER);
    tbx_forkserver_stop();
    cr_assert_eq(tbx_set_cgroup_root(NULL), 0);
}

/* The cgroups timebox made are gone once it is told it is done. */
TBX_TEST(contain, forkserver_stop_removes_the_cgroups)
{
    if (expected_containment(*method) != TBX_CONTAIN_CGROUP)
        cr_skip_test("no cgroups here");
    pid_t pids[2];
    call_escapees(*method, "ok", 1, 0, TBX_CONTAIN_CGROUP, pids);
    assert_gone(pids, "before the stop");
    tbx_forkserver_stop();
    char mount[PATH_MAX], own[PATH_MAX], base[2 * PATH_MAX + 32];
    cr_assert_eq(tbx__cgroup_find(NULL, NULL, mount, sizeof mount, own, sizeof own), 0);
    snprintf(base, sizeof base, "%s%s/timebox-%d", mount, strcmp(own, "/") == 0 ? "" : own,
             (int)getpid());
    cr_assert(!exists(base), "%s is still there after tbx_forkserver_stop()", base);
}

/* The shared daemon with --cgroup DIR: its children's cgroups are made
 * under DIR, and what a call leaves is gone when the call is back; on
 * SIGTERM it removes them.  A --cgroup that cannot work is refused. */
TBX_PLAIN_TEST(contain, daemon_with_a_cgroup_dir_ends_escapees)
{
    if (tbx_containment() != TBX_CONTAIN_CGROUP)
        cr_skip_test("no cgroups here to name a directory among");
    char mount[PATH_MAX], own[PATH_MAX], cgdir[2 * PATH_MAX + 32], base[3 * PATH_MAX];
    cr_assert_eq(tbx__cgroup_find(NULL, NULL, mount, sizeof mount, own, sizeof own), 0);
    snprintf(cgdir, sizeof cgdir, "%s%s/tbx-test-daemon-%d", mount,
             strcmp(own, "/") == 0 ? "" : own, (int)getpid());
    cr_assert_eq(mkdir(cgdir, 0755), 0, "%s: %s", cgdir, strerror(errno));

    char dir[64], sock[96], cmd[3 * PATH_MAX];
    temp_dir(dir, sizeof dir);
    snprintf(sock, sizeof sock, "%s/fs.sock", dir);
    snprintf(cmd, sizeof cmd, "'%s' --socket '%s' --cgroup /tmp --quiet 2>/dev/null",
             TIMEBOX_FORKSERVER_PATH, sock);
    cr_assert_neq(system(cmd), 0, "--cgroup /tmp was accepted");
    become_subreaper(); /* it detaches once it serves */
    snprintf(cmd, sizeof cmd, "'%s' --socket '%s' --preload '%s' --cgroup '%s' --quiet",
             TIMEBOX_FORKSERVER_PATH, sock, TEST_PLUGIN_PATH, cgdir);
    cr_assert_eq(system(cmd), 0, "the daemon did not start");
    cr_assert_eq(tbx_forkserver_attach(sock, NULL, 0), 0);
    pid_t daemon_pid = tbx_forkserver_pid();
    void *plugin = dlopen(TEST_PLUGIN_PATH, RTLD_NOW);
    cr_assert_not_null(plugin, "%s", dlerror());
    tbx_fn *escapees = (tbx_fn *)dlsym(plugin, "plugin_leave_escapees");
    cr_assert_not_null(escapees);

    msgpack_sbuffer sb;
    pack(&sb, "a s s", 2, dir, "ok");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(escapees, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.containment, TBX_CONTAIN_CGROUP);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    char path[128];
    pid_t pids[2];
    snprintf(path, sizeof path, "%s/setsid", dir);
    pids[0] = read_pid_file(path, 5);
    snprintf(path, sizeof path, "%s/daemon", dir);
    pids[1] = read_pid_file(path, 5);
    int gone[2];
    char state[2];
    check_gone(pids, gone, state);
    snprintf(base, sizeof base, "%s/timebox-%d", cgdir, (int)daemon_pid);
    int made_there = exists(base);

    /* Stopped before any assertion: a daemon left running would hold the
     * suite's pipes. */
    cr_assert_eq(kill(daemon_pid, SIGTERM), 0);
    reap_adopted(10);
    assert_gone_as(gone, state, pids, "under the daemon");
    cr_assert(made_there, "the daemon's cgroups are not under --cgroup (%s)", base);
    cr_assert(wait_gone(daemon_pid, 1), "the daemon ignored SIGTERM");
    tbx_forkserver_stop();
    dlclose(plugin);
    cr_assert_eq(rmdir(cgdir), 0, "%s: %s (the daemon left cgroups in it)", cgdir,
                 strerror(errno));
    remove_dir(dir);
}

/* A warm child (forked before its call, waiting for it) is in a cgroup of
 * its own from birth too. */
TBX_PLAIN_TEST(contain, warm_children_are_contained)
{
    int want = expected_containment(TBX_FORKSERVER);
    if (want != TBX_CONTAIN_CGROUP)
        cr_skip_test("without cgroups a server with warm children always has a call that may "
                     "be running: its subreaper ends live orphans only when it stops");
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.warm_children = 2;
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    forkserver_every_outcome(want);
}
