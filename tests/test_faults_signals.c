/*
 * The fault matrix, signals: a child that blocks SIGTERM, cleans up longer
 * than the grace period or within it, stops itself, or is killed from
 * outside mid-run.  Each test states what the call returns and, through the
 * fixture, that nothing of it outlives it.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------- helpers */

/* A helper process that waits for a pid to appear in path and SIGKILLs it:
 * "killed from outside", by a process that is not timebox. */
static pid_t start_killer(const char *path, int sig)
{
    pid_t k = fork();
    cr_assert_geq(k, 0, "fork: %s", strerror(errno));
    if (k == 0) {
        double end = now_s() + 60;
        pid_t pid;
        while ((pid = peek_pid(path)) <= 0 && now_s() < end)
            sleep_s(0.002);
        if (pid > 0)
            kill(pid, sig);
        _exit(pid > 0 ? 0 : 1);
    }
    return k;
}

static void reap_helper(pid_t pid, const char *what)
{
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid, "%s: waitpid: %s", what, strerror(errno));
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s ended with status %#x", what, st);
}

/* ------------------------------------------------- functions in the child */

/* Blocks SIGTERM with sigprocmask (not SIG_IGN), then hangs. */
static int fn_block_term(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, NULL);
    child_sleep(120);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_block_term);

static volatile sig_atomic_t cleanup_exit_code;

static void slow_cleanup(int sig)
{
    (void)sig;
    if (cleanup_exit_code > 0)
        _exit(cleanup_exit_code); /* a quick cleanup */
    child_sleep(120);             /* a cleanup that never ends */
    _exit(1);
}

/* args: exit code of the SIGTERM handler, 0 for one that sleeps 120 s.
 * Writes its pid to nothing; hangs until signalled. */
static int fn_term_handler(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    cleanup_exit_code = (sig_atomic_t)args->via.u64;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = slow_cleanup;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    child_sleep(120);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_term_handler);

/* Stops itself: it never runs again unless someone sends SIGCONT. */
static int fn_stop_self(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    raise(SIGSTOP);
    child_sleep(120);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_stop_self);

/* ================================================================ child */

/* A call of fn that must time out: its argument (nil if arg < 0), the
 * timeout and the grace, the deadline from fn's start (fn sets up its
 * signals first).  Returns the result, its status checked. */
static void call_timing_out(tbx_method m, tbx_fn *fn, int64_t arg, double timeout_s,
                            double grace_s, tbx_result *r)
{
    msgpack_sbuffer sb;
    if (arg < 0)
        pack(&sb, "n");
    else
        pack(&sb, "u", (uint64_t)arg);
    tbx_opts o = test_opts(m);
    o.timeout_s = timeout_s;
    o.grace_s = grace_s;
    o.hard_timeout = 0;
    int rc = tbx_call(fn, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    check_status(rc, r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r->message);
}

/* A call whose child another process sends sig mid-run (start_killer):
 * returns the result, its status checked, and the child's pid. */
static pid_t call_signalled_from_outside(tbx_method m, int sig, tbx_result *r)
{
    char path[64];
    temp_path(path, sizeof path);
    pid_t killer = start_killer(path, sig);
    msgpack_sbuffer sb;
    pack(&sb, "s", path);
    tbx_opts o = test_opts(m);
    o.timeout_s = 100;
    int rc = tbx_call(fn_pid_then_hang, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    check_status(rc, r);
    reap_helper(killer, "the killer");
    pid_t child = peek_pid(path);
    unlink(path);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r->message);
    return child;
}

TBX_TEST(child, sigterm_blocked_with_sigprocmask_gets_sigkill)
{
    tbx_result r;
    call_timing_out(*method, fn_block_term, -1, 1.0, 0.3, &r);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_eq(r.exit_code, -1);
    cr_assert_geq(r.elapsed_s, 1.3, "elapsed %f", r.elapsed_s);
    cr_assert_lt(r.elapsed_s, 30.0);
    tbx_result_free(&r);
}

/* A SIGTERM handler that takes longer than the grace period: SIGKILL at
 * the end of the grace, not at the end of the cleanup. */
TBX_TEST(child, cleanup_longer_than_grace_gets_sigkill)
{
    tbx_result r;
    call_timing_out(*method, fn_term_handler, 0, 1.0, 0.5, &r);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_geq(r.elapsed_s, 1.5, "elapsed %f", r.elapsed_s);
    cr_assert_lt(r.elapsed_s, 30.0, "the cleanup (120 s) was waited for");
    tbx_result_free(&r);
}

/* A quick cleanup that exits by itself inside the grace: no SIGKILL, and its
 * exit code is reported with the timeout. */
TBX_TEST(child, cleanup_within_grace_keeps_its_exit_code)
{
    tbx_result r;
    call_timing_out(*method, fn_term_handler, 7, 1.0, 20, &r);
    cr_assert_eq(r.kill_signal, SIGTERM);
    cr_assert_eq(r.exit_code, 7);
    cr_assert_eq(r.term_signal, 0);
    cr_assert_lt(r.elapsed_s, 20.0, "the grace period was waited out");
    tbx_result_free(&r);
}

/* A stopped child cannot act on SIGTERM: SIGKILL after the grace. */
TBX_TEST(child, stopped_child_gets_sigkill)
{
    tbx_result r;
    call_timing_out(*method, fn_stop_self, -1, 0.5, 0.3, &r);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_lt(r.elapsed_s, 30.0);
    tbx_result_free(&r);
}

/* kill -9 of the child by another process mid-run: seen at once, not at the
 * deadline. */
TBX_TEST(child, killed_from_outside_is_seen_at_once)
{
    tbx_result r;
    pid_t child = call_signalled_from_outside(*method, SIGKILL, &r);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_eq(r.kill_signal, 0, "timebox did not send it");
    cr_assert_eq(r.exit_code, -1);
    cr_assert_eq(r.pid, child);
    cr_assert_lt(r.elapsed_s, 50.0, "the kill was noticed only at the deadline");
    tbx_result_free(&r);
}

/* The same with SIGTERM from outside, which is not timebox's either. */
TBX_TEST(child, sigterm_from_outside_is_a_crash)
{
    tbx_result r;
    call_signalled_from_outside(*method, SIGTERM, &r);
    cr_assert_eq(r.term_signal, SIGTERM);
    cr_assert_eq(r.kill_signal, 0);
    cr_assert_lt(r.elapsed_s, 50.0);
    tbx_result_free(&r);
}
