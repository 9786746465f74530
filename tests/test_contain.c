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
#include "../lib/cgroup.h"

#include <limits.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The pid of the calling process, written to path whole (by rename). */
static void write_pid(const char *path)
{
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return;
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    (void)rename(tmp, path);
}

__attribute__((noreturn)) static void sleep_for_ever(void)
{
    for (;;)
        pause();
}

static int exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* args: [dir, mode]; mode "ok" returns, "hang" sleeps past any deadline,
 * "crash" dies of SIGSEGV, each once dir/setsid and dir/daemon hold the
 * pids of its escaping descendants. */
static int fn_leave_escapees(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    char dir[200], mode[16], setsid_path[256], daemon_path[256];
    const msgpack_object *a = args->via.array.ptr;
    snprintf(dir, sizeof dir, "%.*s", (int)a[0].via.str.size, a[0].via.str.ptr);
    snprintf(mode, sizeof mode, "%.*s", (int)a[1].via.str.size, a[1].via.str.ptr);
    snprintf(setsid_path, sizeof setsid_path, "%s/setsid", dir);
    snprintf(daemon_path, sizeof daemon_path, "%s/daemon", dir);
    if (fork() == 0) {
        setsid();
        write_pid(setsid_path);
        sleep_for_ever();
    }
    if (fork() == 0) {
        setsid();
        if (fork() != 0)
            _exit(0); /* the daemon is orphaned at once */
        write_pid(daemon_path);
        sleep_for_ever();
    }
    for (int i = 0; i < 5000 && !(exists(setsid_path) && exists(daemon_path)); i++)
        usleep(1000);
    if (strcmp(mode, "hang") == 0)
        sleep_for_ever();
    if (strcmp(mode, "crash") == 0)
        raise(SIGSEGV);
    msgpack_pack_nil(pk);
    return 0;
}
TBX_REGISTER(fn_leave_escapees);

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

static void assert_gone(const pid_t pids[2], const char *mode)
{
    static const char *what[2] = {"setsid child", "daemon"};
    int gone[2];
    char state[2];
    for (int i = 0; i < 2; i++) {
        gone[i] = wait_gone(pids[i], 0);
        state[i] = proc_state(pids[i]);
    }
    /* A survivor holds Criterion's pipes: it must not outlive a failed
     * test either, or the suite would wait for it. */
    for (int i = 0; i < 2; i++)
        if (!gone[i])
            (void)kill(pids[i], SIGKILL);
    for (int i = 0; i < 2; i++)
        cr_assert(gone[i], "after a call that ended %s, its %s (pid %d) ran on (state %c)", mode,
                  what[i], (int)pids[i], state[i]);
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

/* opts.contain = 0: the process group only, which setsid leaves.  That the
 * escapees then live on shows what the tests above would catch. */
TBX_TEST(contain, contain_0_leaves_setsid_to_the_process_group)
{
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

/* Where no cgroup can be had (here: cgroups turned off), the forkserver
 * is a child subreaper and kills the orphans it inherits. */
TBX_PLAIN_TEST(contain, forkserver_subreaper_ends_orphans_without_cgroups)
{
    cr_assert_eq(tbx_set_cgroup_root("off"), 0);
    cr_assert_eq(tbx_containment(), TBX_CONTAIN_PGROUP);
    const char *modes[3] = {"ok", "hang", "crash"};
    const int status[3] = {0, TBX_ETIMEDOUT, TBX_ECRASHED};
    for (int m = 0; m < 3; m++) {
        pid_t pids[2];
        call_escapees(TBX_FORKSERVER, modes[m], 1, status[m], TBX_CONTAIN_SUBREAPER, pids);
        assert_gone(pids, modes[m]);
    }
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
    tbx_forkserver_stop();
    char mount[PATH_MAX], own[PATH_MAX], base[2 * PATH_MAX + 32];
    cr_assert_eq(tbx__cgroup_find(NULL, NULL, mount, sizeof mount, own, sizeof own), 0);
    snprintf(base, sizeof base, "%s%s/timebox-%d", mount, strcmp(own, "/") == 0 ? "" : own,
             (int)getpid());
    cr_assert(!exists(base), "%s is still there after tbx_forkserver_stop()", base);
}
