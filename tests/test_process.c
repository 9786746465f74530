/*
 * The child process: grandchildren, signals, deadlines as the child sees
 * them, child hooks, ctx, nested calls, and a caller that dies mid-call.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------- helpers */

/* In a child: writes pid to path. */
static void write_pid(const msgpack_object *path, pid_t pid)
{
    char p[256], buf[32];
    snprintf(p, sizeof p, "%.*s", (int)path->via.str.size, path->via.str.ptr);
    int fd = open(p, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0)
        _exit(90);
    int n = snprintf(buf, sizeof buf, "%d\n", (int)pid);
    if (write(fd, buf, (size_t)n) != n)
        _exit(91);
    close(fd);
}

/* Reaps our child pid within timeout_s; returns its wait status.  A process
 * that is not ours to reap (a forkserver's child, reaped by the server) must
 * be gone within the time instead: then the status is -1. */
static int reap_within(pid_t pid, double timeout_s)
{
    double end = now_s() + timeout_s;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r < 0 && errno == ECHILD) {
            cr_assert(wait_gone(pid, timeout_s), "process %d still alive %.0f s later", (int)pid,
                      timeout_s);
            return -1;
        }
        cr_assert_geq(r, 0, "waitpid(%d): %s", (int)pid, strerror(errno));
        if (r == pid)
            return st;
        if (now_s() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            cr_assert_fail("process %d still alive %.0f s later", (int)pid, timeout_s);
        }
        sleep_s(0.005);
    }
}

/* --------------------------------------------------------- grandchildren */

enum { GC_RETURN, GC_HANG, GC_LEAVE_GROUP_EXIT, GC_LEAVE_GROUP_RETURN };

/* args [path, mode]: forks a grandchild that sleeps 30 s holding the result
 * pipe, writes its pid to path, then does what mode says. */
static int fn_grandchild(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *path = &args->via.array.ptr[0];
    int mode = (int)args->via.array.ptr[1].via.u64;
    int leave = mode == GC_LEAVE_GROUP_EXIT || mode == GC_LEAVE_GROUP_RETURN;
    pid_t g = fork();
    if (g < 0)
        return tbx_fail(pk, 1, "fork: %s", strerror(errno));
    if (g == 0) {
        if (leave)
            setpgid(0, 0);
        child_sleep(30);
        _exit(0);
    }
    if (leave)
        setpgid(g, g); /* both sides: the group exists whichever runs first */
    write_pid(path, g);
    switch (mode) {
    case GC_HANG:
        child_sleep(60);
        break;
    case GC_LEAVE_GROUP_EXIT:
        _exit(5);
    }
    return msgpack_pack_int(pk, g);
}
TBX_REGISTER(fn_grandchild);

TBX_TEST(grandchild, lingering_grandchild_does_not_delay_result)
{
    become_subreaper(); /* the orphaned grandchild becomes ours to reap */
    char path[64];
    temp_path(path, sizeof path);
    msgpack_sbuffer sb;
    pack(&sb, "a s u", 2, path, (uint64_t)GC_RETURN);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_grandchild, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.status, 0);
    cr_assert_lt(r.elapsed_s, 5.0, "the call waited %.1f s for the grandchild", r.elapsed_s);
    pid_t g = read_pid_file(path, 1);
    cr_assert_eq(obj_int(&r.value), g);
    int st = reap_within(g, 10);
    /* A pooled process kills and reaps its call's descendants itself (-1:
     * gone, and not ours to reap). */
    cr_assert((st == -1 && *method == TBX_POOL) || (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL),
              "grandchild status %#x", st);
    cr_assert(kill(g, 0) != 0 && errno == ESRCH);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

TBX_TEST(grandchild, dies_with_timed_out_call)
{
    become_subreaper();
    char path[64];
    temp_path(path, sizeof path);
    msgpack_sbuffer sb;
    pack(&sb, "a s u", 2, path, (uint64_t)GC_HANG);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.5;
    tbx_result r;
    int rc = tbx_call(fn_grandchild, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.status, rc);
    cr_assert_lt(r.elapsed_s, 30.0);
    pid_t g = read_pid_file(path, 1);
    int st = reap_within(g, 10);
    cr_assert(WIFSIGNALED(st) && (WTERMSIG(st) == SIGKILL || WTERMSIG(st) == SIGTERM),
              "grandchild status %#x", st);
    cr_assert(kill(g, 0) != 0 && errno == ESRCH);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

/* A grandchild in a group of its own holds the result pipe open: the call
 * still ends when the child does (it does not wait for EOF). */
TBX_TEST(grandchild, outside_group_holding_pipe_does_not_delay)
{
    become_subreaper();
    int modes[] = {GC_LEAVE_GROUP_EXIT, GC_LEAVE_GROUP_RETURN};
    for (int i = 0; i < 2; i++) {
        char path[64];
        temp_path(path, sizeof path);
        msgpack_sbuffer sb;
        pack(&sb, "a s u", 2, path, (uint64_t)modes[i]);
        tbx_opts o = test_opts(*method);
        o.timeout_s = 60;
        tbx_result r;
        int rc = tbx_call(fn_grandchild, sb.data, sb.size, &o, &r);
        pid_t g = read_pid_file(path, 1);
        /* It left the call's group: timebox does not reach it; we do. */
        kill(g, SIGKILL);
        reap_within(g, 10);
        if (modes[i] == GC_LEAVE_GROUP_EXIT) {
            cr_assert_eq(rc, TBX_EEXITED, "%s: %s", tbx_err_name(rc), r.message);
            cr_assert_eq(r.exit_code, 5);
        } else {
            cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
            cr_assert_eq(obj_int(&r.value), g);
        }
        cr_assert_lt(r.elapsed_s, 5.0, "mode %d: the call waited %.1f s", modes[i], r.elapsed_s);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
        unlink(path);
    }
}

/* ------------------------------------------------------------- signals */

static void on_usr1(int sig)
{
    (void)sig;
}

static const char *disposition(int sig)
{
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) != 0)
        return "error";
    if (sa.sa_handler == SIG_DFL)
        return "dfl";
    if (sa.sa_handler == SIG_IGN)
        return "ign";
    return "handler";
}

/* -> {"usr1": disposition, "term": disposition, "usr2_blocked": bool} */
static int fn_signals(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    sigset_t mask;
    sigprocmask(SIG_SETMASK, NULL, &mask);
    const char *usr1 = disposition(SIGUSR1), *term = disposition(SIGTERM);
    msgpack_pack_map(pk, 3);
    msgpack_pack_str_with_body(pk, "usr1", 4);
    msgpack_pack_str_with_body(pk, usr1, strlen(usr1));
    msgpack_pack_str_with_body(pk, "term", 4);
    msgpack_pack_str_with_body(pk, term, strlen(term));
    msgpack_pack_str_with_body(pk, "usr2_blocked", 12);
    if (sigismember(&mask, SIGUSR2))
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    return 0;
}
TBX_REGISTER(fn_signals);

TBX_TEST(signals, reset_signals_on_and_off)
{
    struct sigaction sa, old_usr1, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGUSR1, &sa, &old_usr1), 0);
    sa.sa_handler = SIG_IGN;
    cr_assert_eq(sigaction(SIGTERM, &sa, &old_term), 0);
    sigset_t usr2, old_mask;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    cr_assert_eq(sigprocmask(SIG_BLOCK, &usr2, &old_mask), 0);

    msgpack_sbuffer sb;
    pack(&sb, "n");
    for (int reset = 1; reset >= 0; reset--) {
        tbx_opts o = test_opts(*method);
        o.reset_signals = reset;
        o.timeout_s = 60;
        tbx_result r;
        int rc = tbx_call(fn_signals, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, 0, "reset %d: %s: %s", reset, tbx_err_name(rc), r.message);
        const msgpack_object *usr1 = map_get(&r.value, "usr1"), *term = map_get(&r.value, "term");
        const msgpack_object *blocked = map_get(&r.value, "usr2_blocked");
        cr_assert_not_null(blocked);
        if (reset) {
            cr_assert(obj_str_eq(usr1, "dfl"), "reset: SIGUSR1 %.*s", (int)usr1->via.str.size,
                      usr1->via.str.ptr);
            cr_assert(obj_str_eq(term, "dfl"), "reset: SIGTERM %.*s", (int)term->via.str.size,
                      term->via.str.ptr);
            cr_assert(!blocked->via.boolean, "reset: SIGUSR2 still blocked");
        } else if (*method == TBX_FORKSERVER || *method == TBX_POOL) {
            /* The child is the server's: it inherits nothing of ours. */
            cr_assert(obj_str_eq(usr1, "dfl") && obj_str_eq(term, "dfl") && !blocked->via.boolean,
                      "forkserver: the caller's dispositions leaked into the child");
        } else {
            /* An exec turns handlers into SIG_DFL; ignores and the mask
             * survive it. */
            const char *handled = *method == TBX_SPAWN ? "dfl" : "handler";
            cr_assert(obj_str_eq(usr1, handled), "kept: SIGUSR1 %.*s",
                      (int)usr1->via.str.size, usr1->via.str.ptr);
            cr_assert(obj_str_eq(term, "ign"), "kept: SIGTERM %.*s", (int)term->via.str.size,
                      term->via.str.ptr);
            cr_assert(blocked->via.boolean, "kept: SIGUSR2 not blocked");
        }
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    sigaction(SIGTERM, &old_term, NULL);
}

/* The caller ignores SIGTERM and keeps its handlers: a hanging child that
 * inherited SIG_IGN still ends, with SIGKILL after the grace period. */
TBX_TEST(signals, inherited_sigterm_ignore_escalates_to_sigkill)
{
    if (*method == TBX_FORKSERVER || *method == TBX_POOL)
        cr_skip_test("a forkserver child inherits the server's dispositions, not ours");
    struct sigaction sa, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    cr_assert_eq(sigaction(SIGTERM, &sa, &old_term), 0);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_opts o = test_opts(*method);
    o.reset_signals = 0;
    o.timeout_s = 0.2;
    o.grace_s = 0.2;
    tbx_result r;
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_geq(r.elapsed_s, 0.4);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    sigaction(SIGTERM, &old_term, NULL);
}

/* ------------------------------------------------------------ deadlines */

TBX_TEST(deadline, soft_timeout_still_times_out)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_opts o = test_opts(*method);
    o.hard_timeout = 0;
    o.timeout_s = 0.3;
    tbx_result r;
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.status, rc);
    cr_assert_eq(r.kill_signal, SIGTERM);
    cr_assert_geq(r.elapsed_s, 0.3);
    cr_assert_lt(r.elapsed_s, 30.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static int fn_remaining(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_double(pk, tbx_remaining());
}
TBX_REGISTER(fn_remaining);

TBX_TEST(deadline, remaining_inside_and_outside)
{
    cr_assert_eq(tbx_remaining(), HUGE_VAL, "outside a child");
    msgpack_sbuffer sb;
    pack(&sb, "n");
    for (int hard = 1; hard >= 0; hard--) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = 30;
        o.hard_timeout = hard;
        tbx_result r;
        int rc = tbx_call(fn_remaining, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
        cr_assert_eq(r.value.type, MSGPACK_OBJECT_FLOAT64);
        cr_assert_gt(r.value.via.f64, 0.0, "hard %d: remaining %f", hard, r.value.via.f64);
        cr_assert_leq(r.value.via.f64, 30.0, "hard %d: remaining %f", hard, r.value.via.f64);
        tbx_result_free(&r);
    }
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_remaining, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.via.f64, HUGE_VAL, "no deadline: remaining %f", r.value.via.f64);
    tbx_result_free(&r);
    cr_assert_eq(tbx_remaining(), HUGE_VAL, "outside a child, after calls");
    msgpack_sbuffer_destroy(&sb);
}

/* --------------------------------------------------------------- hooks */

/* A file-scope hook: runs in every child of this program, whatever the
 * method.  The parent never runs it. */
static int file_hook_ran;
static int file_hook(void *arg)
{
    (void)arg;
    file_hook_ran = 1;
    return 0;
}
TBX_CHILD_HOOK(file_hook);

static int hook_value;
static double hook_sleep;
static char hook_order[8];

static int hook_set(void *arg)
{
    hook_value = (int)(intptr_t)arg;
    return 0;
}

static int hook_append(void *arg)
{
    size_t n = strlen(hook_order);
    hook_order[n] = (char)(intptr_t)arg;
    hook_order[n + 1] = '\0';
    return 0;
}

static int hook_fail(void *arg)
{
    return (int)(intptr_t)arg;
}

static int hook_sleep_fn(void *arg)
{
    (void)arg;
    child_sleep(hook_sleep);
    return 0;
}

/* -> {"value": hook_value, "order": hook_order, "file": file_hook_ran} */
static int fn_hook_state(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    msgpack_pack_map(pk, 3);
    msgpack_pack_str_with_body(pk, "value", 5);
    msgpack_pack_int(pk, hook_value);
    msgpack_pack_str_with_body(pk, "order", 5);
    msgpack_pack_str_with_body(pk, hook_order, strlen(hook_order));
    msgpack_pack_str_with_body(pk, "file", 4);
    msgpack_pack_int(pk, file_hook_ran);
    return 0;
}
TBX_REGISTER(fn_hook_state);

static int fn_must_not_run(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)pk, (void)ctx;
    _exit(55);
}
TBX_REGISTER(fn_must_not_run);

static void call_hook_state(tbx_method m, tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(m);
    o.timeout_s = 60;
    int rc = tbx_call(fn_hook_state, sb.data, sb.size, &o, r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r->message);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(hooks, file_scope_hook_runs_in_child)
{
    tbx_result r;
    call_hook_state(*method, &r);
    cr_assert_eq(obj_int(map_get(&r.value, "file")), 1);
    cr_assert_eq(file_hook_ran, 0, "the hook ran in the parent");
    tbx_result_free(&r);
}

/* Hooks added at run time reach fork children only (they live in memory). */
TBX_TEST(hooks, added_hooks_run_in_order_and_are_removed)
{
    if (*method != TBX_FORK)
        cr_skip_test("run-time hooks reach fork children only");
    cr_assert_eq(tbx_add_child_hook(hook_set, (void *)(intptr_t)41), 0);
    cr_assert_eq(tbx_add_child_hook(hook_append, (void *)(intptr_t)'1'), 0);
    cr_assert_eq(tbx_add_child_hook(hook_append, (void *)(intptr_t)'2'), 0);
    cr_assert_eq(tbx_add_child_hook(hook_append, (void *)(intptr_t)'3'), 0);
    tbx_result r;
    call_hook_state(*method, &r);
    cr_assert_eq(obj_int(map_get(&r.value, "value")), 41);
    cr_assert(obj_str_eq(map_get(&r.value, "order"), "123"));
    cr_assert_eq(obj_int(map_get(&r.value, "file")), 1);
    tbx_result_free(&r);
    cr_assert_eq(hook_value, 0, "a hook ran in the parent");

    cr_assert_eq(tbx_remove_child_hook(hook_append, (void *)(intptr_t)'2'), 0);
    cr_assert_eq(tbx_remove_child_hook(hook_set, (void *)(intptr_t)41), 0);
    cr_assert_eq(tbx_remove_child_hook(hook_set, (void *)(intptr_t)41), -ENOENT);
    cr_assert_eq(tbx_remove_child_hook(hook_append, (void *)(intptr_t)'9'), -ENOENT);
    call_hook_state(*method, &r);
    cr_assert_eq(obj_int(map_get(&r.value, "value")), 0);
    cr_assert(obj_str_eq(map_get(&r.value, "order"), "13"));
    tbx_result_free(&r);
    cr_assert_eq(tbx_remove_child_hook(hook_append, (void *)(intptr_t)'1'), 0);
    cr_assert_eq(tbx_remove_child_hook(hook_append, (void *)(intptr_t)'3'), 0);
}

TBX_TEST(hooks, failing_hook_stops_the_call)
{
    if (*method != TBX_FORK)
        cr_skip_test("run-time hooks reach fork children only");
    cr_assert_eq(tbx_add_child_hook(hook_append, (void *)(intptr_t)'a'), 0);
    cr_assert_eq(tbx_add_child_hook(hook_fail, (void *)(intptr_t)7), 0);
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_must_not_run, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_EFAILED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.status, rc);
    cr_assert_eq(r.fail_code, 7);
    cr_assert_not_null(r.message);
    cr_assert_eq(r.exit_code, 0);
    tbx_result_free(&r);

    /* Soft deadlines too: no START, no fn. */
    o.hard_timeout = 0;
    rc = tbx_call(fn_must_not_run, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_EFAILED, "soft: %s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.fail_code, 7);
    tbx_result_free(&r);

    cr_assert_eq(tbx_remove_child_hook(hook_fail, (void *)(intptr_t)7), 0);
    rc = tbx_call(fn_must_not_run, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_EEXITED, "hook removed: %s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.exit_code, 55);
    tbx_result_free(&r);
    cr_assert_eq(tbx_remove_child_hook(hook_append, (void *)(intptr_t)'a'), 0);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(hooks, table_is_bounded)
{
    if (*method != TBX_FORK)
        cr_skip_test("run-time hooks reach fork children only");
    int added = 0, rc;
    while ((rc = tbx_add_child_hook(hook_set, (void *)(intptr_t)added)) == 0)
        cr_assert_lt(++added, 1000);
    cr_assert_eq(rc, -ENOSPC);
    /* file_hook holds one slot. */
    cr_assert_eq(added, TBX_MAX_CHILD_HOOKS - 1);
    for (int i = 0; i < added; i++)
        cr_assert_eq(tbx_remove_child_hook(hook_set, (void *)(intptr_t)i), 0);
    cr_assert_eq(tbx_add_child_hook(hook_set, (void *)(intptr_t)5), 0);
    tbx_result r;
    call_hook_state(*method, &r);
    cr_assert_eq(obj_int(map_get(&r.value, "value")), 5);
    tbx_result_free(&r);
    cr_assert_eq(tbx_remove_child_hook(hook_set, (void *)(intptr_t)5), 0);
}

/* The hard deadline counts the start-up (hooks included); the soft one starts
 * when fn does. */
TBX_TEST(deadline, hard_counts_startup_soft_does_not)
{
    if (*method != TBX_FORK)
        cr_skip_test("run-time hooks reach fork children only");
    hook_sleep = 1.0;
    cr_assert_eq(tbx_add_child_hook(hook_sleep_fn, NULL), 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "quick");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.5;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "hard: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);

    /* Soft: fn's clock starts with fn.  The start-up is bounded by the same
     * timeout (from the call), which the 1 s hook stays under. */
    o.hard_timeout = 0;
    o.timeout_s = 1.5;
    rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "soft: %s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "quick"));
    cr_assert_geq(r.elapsed_s, 1.0);
    tbx_result_free(&r);

    /* What the function sees: the hard deadline less the start-up. */
    o = test_opts(*method);
    o.timeout_s = 30;
    rc = tbx_call(fn_remaining, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_leq(r.value.via.f64, 29.0, "remaining %f after a 1 s hook", r.value.via.f64);
    cr_assert_gt(r.value.via.f64, 0.0);
    tbx_result_free(&r);
    cr_assert_eq(tbx_remove_child_hook(hook_sleep_fn, NULL), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* ----------------------------------------------------------------- ctx */

static int fn_ctx(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args;
    return ctx == NULL ? msgpack_pack_nil(pk) : msgpack_pack_int(pk, *(int *)ctx);
}
TBX_REGISTER(fn_ctx);

TBX_TEST(ctx, passed_through_with_fork)
{
    if (*method != TBX_FORK)
        cr_skip_test("ctx is for fork only");
    int x = 1234;
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.ctx = &x;
    tbx_result r;
    int rc = tbx_call(fn_ctx, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(obj_int(&r.value), 1234);
    tbx_result_free(&r);
    o.ctx = NULL;
    rc = tbx_call(fn_ctx, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_NIL);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* -------------------------------------------------------------- nesting */

/* args [method, inner fn name, inner args..., inner timeout]
 * -> [rc, value or nil, elapsed] of the nested call. */
static int fn_nested(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *a = args->via.array.ptr;
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)a[1].via.str.size, a[1].via.str.ptr);
    tbx_fn *inner = tbx_lookup(name);
    if (inner == NULL)
        return tbx_fail(pk, 1, "no function %s", name);
    msgpack_sbuffer sb;
    msgpack_packer ipk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&ipk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&ipk, a[2]);
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = (tbx_method)a[0].via.u64;
    o.timeout_s = a[3].via.f64;
    o.grace_s = 0.2;
    tbx_result r;
    int rc = tbx_call(inner, sb.data, sb.size, &o, &r);
    msgpack_pack_array(pk, 3);
    msgpack_pack_int(pk, rc);
    msgpack_pack_object(pk, r.value);
    msgpack_pack_double(pk, r.elapsed_s);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
TBX_REGISTER(fn_nested);

TBX_TEST(nested, call_inside_fn)
{
    msgpack_sbuffer sb;
    pack(&sb, "a u s s d", 4, (uint64_t)*method, "fn_echo", "inner", 30.0);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_nested, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(obj_int(&r.value.via.array.ptr[0]), 0, "inner: %s",
                 tbx_err_name((int)obj_int(&r.value.via.array.ptr[0])));
    cr_assert(obj_str_eq(&r.value.via.array.ptr[1], "inner"));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(nested, inner_deadline)
{
    msgpack_sbuffer sb;
    pack(&sb, "a u s u d", 4, (uint64_t)*method, "fn_sleep_ms", (uint64_t)60000, 0.3);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_nested, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(obj_int(&r.value.via.array.ptr[0]), TBX_ETIMEDOUT, "inner: %s",
                 tbx_err_name((int)obj_int(&r.value.via.array.ptr[0])));
    cr_assert_geq(r.value.via.array.ptr[2].via.f64, 0.3);
    cr_assert_lt(r.elapsed_s, 30.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* args: path; writes its own pid there and sleeps 60 s. */
static int fn_pid_and_hang(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    write_pid(args, getpid());
    child_sleep(60);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_pid_and_hang);

/* args: path; writes its own pid there, kills the call it is nested in (its
 * child's pid in TBX_TEST_OUTER_PID) and sleeps 60 s. */
static int fn_kill_outer_and_hang(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    write_pid(args, getpid());
    const char *outer = getenv("TBX_TEST_OUTER_PID");
    if (outer != NULL)
        (void)kill((pid_t)atoi(outer), SIGKILL);
    child_sleep(60);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_kill_outer_and_hang);

/* args [method, path]: calls fn_kill_outer_and_hang(path) by method, with no
 * deadline, having told it its own pid. */
static int fn_outer_killed(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *a = args->via.array.ptr;
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("TBX_TEST_OUTER_PID", pid, 1);
    msgpack_sbuffer sb;
    msgpack_packer ipk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&ipk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&ipk, a[1]);
    tbx_opts o = test_opts((tbx_method)a[0].via.u64);
    tbx_result r;
    (void)tbx_call(fn_kill_outer_and_hang, sb.data, sb.size, &o, &r);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_outer_killed);

/* The outer call's child dies while its fn waits on a nested call (a nested
 * call cannot outlast the outer deadline: it inherits it, test_nest.c): the
 * inner child (in a group of its own) must not outlive it. */
TBX_TEST(nested, inner_child_dies_with_outer_call)
{
    become_subreaper();
    char path[64];
    temp_path(path, sizeof path);
    msgpack_sbuffer sb;
    pack(&sb, "a u s", 2, (uint64_t)*method, path);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_outer_killed, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGKILL);
    pid_t inner = read_pid_file(path, 1);
    int st = reap_within(inner, 10);
    cr_assert(st == -1 || WIFSIGNALED(st), "inner child status %#x", st);
    reap_adopted(10); /* the outer child's forkserver, orphaned */
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

/* -------------------------------------------------- the caller dies */

TBX_TEST(lifetime, child_dies_with_its_caller)
{
    become_subreaper();
    char path[64];
    temp_path(path, sizeof path);
    tbx_method m = *method;
    pid_t caller = fork();
    cr_assert_geq(caller, 0);
    if (caller == 0) {
        msgpack_sbuffer sb;
        pack(&sb, "s", path);
        tbx_opts o = test_opts(m);
        tbx_result r;
        tbx_call(fn_pid_and_hang, sb.data, sb.size, &o, &r);
        _exit(3);
    }
    pid_t child = read_pid_file(path, 30);
    kill(caller, SIGKILL);
    int st = reap_within(caller, 10);
    cr_assert(WIFSIGNALED(st));
    st = reap_within(child, 10);
    cr_assert(st == -1 || (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL),
              "the call's child: status %#x", st);
    reap_adopted(10); /* the dead caller's forkserver, orphaned */
    unlink(path);
}
