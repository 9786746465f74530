/*
 * A call never outlives its deadline, whatever it is doing when the
 * deadline comes: starting (a slow child hook, a forkserver that is still
 * starting, a server that stopped reading), or running.  Issue 13, items 2,
 * 4 and 8 (negative timeouts).
 */
#define _GNU_SOURCE
#include "promises_util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <timebox/uv.h>
#include <unistd.h>

/* Slack allowed past timeout + grace on this shared, noisy machine: enough
 * for scheduling, far less than any of the waits these tests guard against. */
#define SLACK_S 2.0

/* ------------------------------------------------------- soft deadlines */

/* A soft deadline starts with fn, but start-up is bounded too: a child
 * stuck in a hook ends TBX_ETIMEDOUT at timeout_s from the call. */
TBX_TEST_T(soft, startup_is_bounded_by_the_timeout, 60.0)
{
    set_seconds_var(HOOK_SLEEP_VAR, 30);
    tbx_result r;
    double t0 = now_s();
    int rc = sleep_call(*method, 10, 0.5, 0.2, 0, &r);
    double took = now_s() - t0;
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s (signal %d)", tbx_err_name(rc), r.message,
                 r.term_signal);
    cr_assert_lt(took, 0.5 + 0.2 + SLACK_S, "returned after %.2f s", took);
    tbx_result_free(&r);
    tbx_forkserver_stop();
}

/* A start-up under timeout_s does not count: fn then has its whole
 * timeout_s, and the forkserver's backstop, which cannot see when fn
 * started, must not fire before the caller's own deadline + grace. */
TBX_TEST_T(soft, server_backstop_waits_for_the_callers_deadline, 60.0)
{
    set_seconds_var(HOOK_SLEEP_VAR, 1.5);
    tbx_result r;
    int rc = sleep_call(*method, 30000, 2.0, 0.3, 0, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s (signal %d)", tbx_err_name(rc), r.message,
                 r.term_signal);
    cr_assert_eq(r.kill_signal, SIGTERM, "killed by %d: the backstop fired first?",
                 r.kill_signal);
    cr_assert_geq(r.running_s, 1.9, "fn ran %.2f s of its 2 s", r.running_s);
    tbx_result_free(&r);
    tbx_forkserver_stop();
}

/* The clock of a soft deadline still starts with fn: a start-up and a run
 * each under timeout_s succeed together, where a hard deadline does not. */
TBX_TEST_T(soft, clock_starts_with_fn, 60.0)
{
    set_seconds_var(HOOK_SLEEP_VAR, 0.6);
    tbx_result r;
    int rc = sleep_call(*method, 600, 1.0, 0.2, 1, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "hard: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    rc = sleep_call(*method, 600, 1.0, 0.2, 0, &r);
    cr_assert_eq(rc, 0, "soft: %s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(obj_int(&r.value), 600);
    tbx_result_free(&r);
    tbx_forkserver_stop();
}

/* A child that times out in a slow hook, started by a program that serves
 * (a worker or the forkserver said so), is not blamed on a missing
 * tbx_init: the message names the start-up, hooks included. */
TBX_TEST_T(soft, slow_hook_is_not_blamed_on_tbx_init, 60.0)
{
    if (*method == TBX_FORK)
        cr_skip_test("a fork child says nothing before fn: no start-up to tell apart");
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process runs the child hooks once, as it starts, not per call: "
                     "no per-call start-up to tell apart");
    set_seconds_var(HOOK_SLEEP_VAR, 30);
    for (int hard = 1; hard >= 0; hard--) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = 0.5;
        o.grace_s = 0.1;
        o.hard_timeout = hard;
        msgpack_sbuffer sb;
        pack(&sb, "s", "never");
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
        cr_assert_not_null(r.message);
        /* A spawned worker always says START before fn, and a server's child
         * does under a soft deadline: there the message names the start-up.
         * Under a hard deadline a server's child says nothing before fn (one
         * wake-up less per call), and the message is the plain deadline's. */
        if (*method == TBX_SPAWN || !hard)
            cr_assert_not_null(strstr(r.message, "hook"), "hard %d: '%s'", hard, r.message);
        if (*method == TBX_FORKSERVER)
            cr_assert_null(strstr(r.message, "tbx_init"), "hard %d: '%s'", hard, r.message);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
    tbx_forkserver_stop();
}

/* ----------------------------------------------------- negative timeouts */

/* A caller computing "deadline - now" gets an immediate timeout when the
 * deadline is past, not a call without one; 0 still means none. */
TBX_TEST_T(deadline, negative_timeout_is_already_past, 60.0)
{
    for (int hard = 1; hard >= 0; hard--) {
        tbx_result r;
        double t0 = now_s();
        int rc = sleep_call(*method, 20000, -0.5, 0.1, hard, &r);
        double took = now_s() - t0;
        cr_assert_eq(rc, TBX_ETIMEDOUT, "hard %d: %s: %s", hard, tbx_err_name(rc), r.message);
        cr_assert_lt(took, 0.1 + SLACK_S, "hard %d: returned after %.2f s", hard, took);
        tbx_result_free(&r);
    }
    tbx_result r;
    int rc = sleep_call(*method, 300, 0, 1.0, 1, &r);
    cr_assert_eq(rc, 0, "no deadline: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    tbx_forkserver_stop();
}

/* A loop's timer is left set at a deadline that went away (its call ended
 * first).  A sooner deadline must set it anew, and a later one must still
 * come on time after the timer fires early, for nothing.  One call that
 * ends at once with a deadline of left_s, then one that hangs past its
 * timeout_s. */
static void deadline_after(tbx_method method, double left_s, double timeout_s)
{
    tbx_result r;
    int rc = sleep_call(method, 0, left_s, 0.1, 1, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    double t0 = now_s();
    rc = sleep_call(method, 20000, timeout_s, 0.1, 1, &r);
    double took = now_s() - t0;
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%.1f s: %s: %s", timeout_s, tbx_err_name(rc), r.message);
    cr_assert_geq(took, timeout_s, "timed out after %.2f s of its %.1f s", took, timeout_s);
    cr_assert_lt(took, timeout_s + 0.1 + SLACK_S, "returned after %.2f s of its %.1f s", took,
                 timeout_s);
    tbx_result_free(&r);
}

TBX_TEST_T(deadline, a_deadline_after_an_ended_calls_comes_on_time, 60.0)
{
    deadline_after(*method, 10.0, 0.3); /* sooner than the timer is set */
    deadline_after(*method, 0.2, 1.0);  /* later: the timer fires early first */
    tbx_forkserver_stop();
}

/* ------------------------------------- the forkserver's launch, bounded */

/* A server still running its preload hooks holds a call no longer than its
 * hard deadline; the start goes on, and a later call gets the server. */
TBX_PLAIN_TEST(launch, server_start_counts_against_the_deadline)
{
    set_seconds_var(PRELOAD_SLEEP_VAR, 3.0);
    tbx_result r;
    double t0 = now_s();
    int rc = echo_once(TBX_FORKSERVER, 0.3, &r);
    double took = now_s() - t0;
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_lt(took, 0.3 + 1.0 + SLACK_S, "returned after %.2f s", took);
    cr_assert_not_null(strstr(r.message, "forkserver"), "'%s'", r.message);
    tbx_result_free(&r);
    rc = echo_once(TBX_FORKSERVER, 30, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "hi"));
    tbx_result_free(&r);
    tbx_forkserver_stop();
}

struct tick {
    double at, t0;
    int fired;
};

static void tick_cb(uv_timer_t *t)
{
    struct tick *k = t->data;
    k->at = now_s() - k->t0;
    k->fired = 1;
    uv_close((uv_handle_t *)t, NULL);
}

static void note_status_cb(tbx_req *req, tbx_result *r)
{
    *(int *)req->data = r->status;
    tbx_result_free(r);
}

/* The first forkserver call of an async caller starts the server off the
 * loop's thread: the loop's other work goes on meanwhile. */
TBX_PLAIN_TEST(launch, async_call_never_blocks_the_loop_on_a_server_start)
{
    set_seconds_var(PRELOAD_SLEEP_VAR, 2.0);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_timer_t timer;
    struct tick k = {0, now_s(), 0};
    cr_assert_eq(uv_timer_init(&loop, &timer), 0);
    timer.data = &k;
    cr_assert_eq(uv_timer_start(&timer, tick_cb, 20, 0), 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "hi");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_req req;
    int status = 1;
    req.data = &status;
    double t0 = now_s();
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, note_status_cb), 0);
    double inside = now_s() - t0;
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(status, 0, "%s", tbx_err_name(status));
    cr_assert(k.fired);
    cr_assert_lt(inside, 1.0, "tbx_call_async took %.2f s", inside);
    cr_assert_lt(k.at, 1.0, "the loop's 20 ms timer fired at %.2f s", k.at);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
    tbx_forkserver_stop();
}

/* A server that stopped reading (SIGSTOP) until its connection is full
 * cannot hold a call past its hard deadline in the send. */
TBX_PLAIN_TEST(launch, sends_count_against_the_deadline)
{
    raise_nofile_limit();
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    pid_t server = tbx_forkserver_pid();
    cr_assert_eq(kill(server, SIGSTOP), 0);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "hi");
    static tbx_req reqs[4000];
    static int status[4000];
    int n = 0;
    /* Calls without a deadline until one waits on the full connection. */
    for (; n < 4000; n++) {
        tbx_opts o = test_opts(TBX_FORKSERVER);
        reqs[n].data = &status[n];
        double t0 = now_s();
        int rc = tbx_call_async(&loop, &reqs[n], fn_echo, sb.data, sb.size, &o, note_status_cb);
        if (rc != 0 || now_s() - t0 > 0.5) {
            if (rc == 0)
                n++;
            break;
        }
    }
    cr_assert_lt(n, 4000, "the connection never filled");
    tbx_result r;
    double t0 = now_s();
    int rc = echo_once(TBX_FORKSERVER, 0.3, &r);
    double took = now_s() - t0;
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_lt(took, 0.3 + 1.0 + SLACK_S, "returned after %.2f s", took);
    tbx_result_free(&r);
    cr_assert_eq(kill(server, SIGKILL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
    tbx_forkserver_stop();
}

/* A server that cannot start: a blocking call hears why (the start's own
 * error), and an async call, which did not wait for the start, hears that
 * nothing was launched, not that a server died under it. */
TBX_PLAIN_TEST(launch, a_server_that_cannot_start_is_reported)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.executable = "/bin/true"; /* exits without serving */
    cr_assert_eq(tbx_forkserver_start(&fo), TBX_EEXITED);
    tbx_result r;
    int rc = echo_once(TBX_FORKSERVER, 30, &r);
    cr_assert_eq(rc, TBX_EEXITED, "blocking: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "hi");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_req req;
    int status = 1;
    req.data = &status;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, note_status_cb), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(status, -ECONNREFUSED, "async: %s", tbx_err_name(status));
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}
