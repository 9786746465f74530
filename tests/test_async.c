/*
 * tbx_call_async on a libuv loop: hundreds of calls in flight with mixed
 * deadlines, cancels, callbacks run exactly once and after the child is
 * reaped, refused calls that never call back, requests reused or freed from
 * their callbacks, and a loop that closes cleanly afterwards.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <timebox/uv.h>

struct areq {
    tbx_req req;
    int index;
    int kind;      /* a MIX_* kind, or -1: cancelled */
    int64_t n;
    int calls;     /* callbacks seen */
    int reaped;    /* the child was reaped when the callback ran */
    int gens;      /* reuse: calls still to chain */
    tbx_method method;
    uv_loop_t *loop;
    char bad[512]; /* the first thing wrong */
};

#define KIND_CANCEL (-1)

/* Whether pid has been reaped: it is not a zombie child of ours.  WNOWAIT,
 * so that the probe itself reaps nothing: with 500 children and pid_max
 * 32768, the number may already belong to another call's live child.  A
 * forkserver's child was never ours: the server reaped it. */
static int was_reaped(pid_t pid)
{
    siginfo_t si;
    si.si_pid = 0;
    if (pid <= 0)
        return 0;
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        return errno == ECHILD;
    return si.si_pid == 0; /* alive: a reused number, not our zombie */
}

static void pack_mixed(msgpack_sbuffer *sb, int kind, int64_t n)
{
    pack(sb, "a i i", 2, (int64_t)kind, n);
}

static void check_cb(tbx_req *req, tbx_result *r)
{
    struct areq *a = req->data;
    cr_assert_eq(req, &a->req);
    a->calls++;
    a->reaped = was_reaped(r->pid);
    const char *bad = NULL;
    if (a->kind == KIND_CANCEL) {
        static _Thread_local char why[128];
        snprintf(why, sizeof why, "cancel: kill_signal %d, term_signal %d, exit_code %d",
                 r->kill_signal, r->term_signal, r->exit_code);
        /* SIGKILL may follow SIGTERM here though SIGTERM did the job: see
         * cancel_kill_signal_is_what_was_needed. */
        if (r->status != TBX_ECANCELED ||
            (r->kill_signal != SIGTERM && r->kill_signal != SIGKILL) ||
            (r->term_signal != SIGTERM && r->term_signal != SIGKILL) ||
            (r->kill_signal == SIGTERM && r->term_signal != SIGTERM))
            bad = why;
    } else {
        bad = mixed_mismatch(a->kind, a->n, r->status, r);
    }
    if (bad != NULL && a->bad[0] == '\0')
        snprintf(a->bad, sizeof a->bad, "req %d (kind %d): %s [%s: %s]", a->index, a->kind, bad,
                 tbx_err_name(r->status), r->message ? r->message : "-");
    tbx_result_free(r);
}

static int start_mixed(uv_loop_t *loop, struct areq *a, tbx_cb *cb, double timeout, int soft)
{
    msgpack_sbuffer sb;
    pack_mixed(&sb, a->kind == KIND_CANCEL ? MIX_HANG : a->kind, a->n);
    tbx_opts o = test_opts(a->method);
    o.timeout_s = timeout;
    o.grace_s = 0.2;
    o.hard_timeout = !soft;
    int rc = tbx_call_async(loop, &a->req, fn_mixed, sb.data, sb.size, &o, cb);
    msgpack_sbuffer_destroy(&sb); /* args are borrowed for the call only */
    return rc;
}

#define MANY 500

TBX_TEST_T(async, many_calls_mixed_deadlines_and_cancels, 300.0)
{
    /* The server up first, as in cancel_terms_then_kills. */
    if (*method == TBX_FORKSERVER || *method == TBX_POOL)
        cr_assert_eq(tbx_forkserver_start(NULL), 0);
    raise_nofile_limit(); /* each call in flight holds two descriptors */
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct areq *reqs = calloc(MANY, sizeof *reqs);
    cr_assert_not_null(reqs);
    int cancels = 0;
    for (int i = 0; i < MANY; i++) {
        struct areq *a = &reqs[i];
        a->req.data = a;
        a->index = i;
        a->method = *method;
        a->kind = i % 25 == 24 ? KIND_CANCEL : i % MIX_KINDS;
        a->n = a->kind == MIX_EXIT ? 1 + i % 100 : i;
        /* The hanging calls' deadlines are mixed, and all past the time a
         * server takes to start 500 children on a slow machine (a
         * sanitizer build on a loaded VM: seconds).  A shorter one would
         * end a call still queued at a server too busy to answer within a
         * second of SIGKILL, which is the give-up the README promises, not
         * the outcome this test checks. */
        double timeout = a->kind == MIX_HANG ? 3.0 + (i % 10) * 0.1
                         : a->kind == KIND_CANCEL ? 0 : 120;
        int rc = start_mixed(&loop, a, check_cb, timeout, i % 3 == 0);
        cr_assert_eq(rc, 0, "call %d: %s", i, tbx_err_name(rc));
        if (a->kind == KIND_CANCEL) {
            cr_assert_eq(tbx_cancel(&a->req), 0, "cancel %d", i);
            cancels++;
        }
    }
    cr_assert_eq(cancels, MANY / 25);
    double t0 = now_s();
    uv_run(&loop, UV_RUN_DEFAULT);
    double took = now_s() - t0;
    int wrong = 0, not_reaped = 0;
    const char *first = "";
    for (int i = 0; i < MANY; i++) {
        cr_assert_eq(reqs[i].calls, 1, "req %d: %d callbacks", i, reqs[i].calls);
        if (reqs[i].bad[0] != '\0' && wrong++ == 0)
            first = reqs[i].bad;
        not_reaped += !reqs[i].reaped;
        /* Done: not in flight any more. */
        cr_assert_eq(tbx_cancel(&reqs[i].req), TBX_EINVAL);
    }
    cr_assert_eq(wrong, 0, "%d of %d results wrong; first: %s", wrong, MANY, first);
    cr_assert_eq(not_reaped, 0, "%d callbacks ran before their child was reaped", not_reaped);
    cr_assert_eq(uv_loop_close(&loop), 0, "a handle of timebox is left on the loop");
    cr_log_info("%d async calls in %.2f s", MANY, took);
    free(reqs);
}

/* ------------------------------------------------------ refused calls */

static int refused_calls;

static void never_cb(tbx_req *req, tbx_result *r)
{
    (void)req;
    refused_calls++;
    tbx_result_free(r);
}

TBX_TEST(async, refused_call_never_calls_back)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_req req;
    memset(&req, 0, sizeof req);
    static const unsigned char bad_args[] = {0xc1};
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 1;

    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, bad_args, sizeof bad_args, &o, never_cb),
                 TBX_EINVAL);
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, NULL, 0, &o, never_cb), TBX_EINVAL);
    cr_assert_eq(tbx_call_async(&loop, &req, NULL, sb.data, sb.size, &o, never_cb), TBX_EINVAL);
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, NULL), TBX_EINVAL);
    cr_assert_eq(tbx_call_async(NULL, &req, fn_echo, sb.data, sb.size, &o, never_cb), TBX_EINVAL);
    cr_assert_eq(tbx_call_async(&loop, NULL, fn_echo, sb.data, sb.size, &o, never_cb), TBX_EINVAL);
    o.grace_s = -1;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, never_cb), TBX_EINVAL);
    o = test_opts(*method);
    o.method = (tbx_method)77;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, never_cb), TBX_EINVAL);

    /* Not in flight: nothing to cancel. */
    cr_assert_eq(tbx_cancel(&req), TBX_EINVAL);
    cr_assert_eq(tbx_cancel(NULL), TBX_EINVAL);

    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(refused_calls, 0);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* -------------------------------------------------- reuse and freeing */

static void chain_cb(tbx_req *req, tbx_result *r)
{
    struct areq *a = req->data;
    check_cb(req, r);
    if (--a->gens > 0) {
        a->index++;
        a->kind = a->index % MIX_KINDS;
        a->n = a->kind == MIX_EXIT ? 9 : a->index;
        /* req is ours again: start the next call on it from here. */
        int rc = start_mixed(a->loop, a, chain_cb, a->kind == MIX_HANG ? 0.1 : 60, 0);
        if (rc != 0 && a->bad[0] == '\0')
            snprintf(a->bad, sizeof a->bad, "restart %d: %s", a->index, tbx_err_name(rc));
    }
}

TBX_TEST(async, reuse_req_from_its_callback)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct areq a;
    memset(&a, 0, sizeof a);
    a.req.data = &a;
    a.loop = &loop;
    a.method = *method;
    a.gens = 20;
    a.kind = MIX_OK;
    a.n = 0;
    cr_assert_eq(start_mixed(&loop, &a, chain_cb, 60, 0), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(a.calls, 20, "%d callbacks for 20 chained calls", a.calls);
    cr_assert_eq(a.bad[0], '\0', "%s", a.bad);
    cr_assert_eq(a.reaped, 1);
    cr_assert_eq(tbx_cancel(&a.req), TBX_EINVAL);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

static int freed;

static void free_cb(tbx_req *req, tbx_result *r)
{
    struct areq *a = req->data;
    check_cb(req, r);
    if (a->bad[0] == '\0' && a->calls == 1)
        freed++;
    free(a); /* the request is the caller's again: freeing it is fine */
}

TBX_TEST(async, free_req_from_its_callback)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    for (int i = 0; i < 40; i++) {
        struct areq *a = calloc(1, sizeof *a);
        cr_assert_not_null(a);
        a->req.data = a;
        a->index = i;
        a->method = *method;
        a->kind = i % MIX_KINDS;
        a->n = a->kind == MIX_EXIT ? 3 : i;
        cr_assert_eq(start_mixed(&loop, a, free_cb, a->kind == MIX_HANG ? 0.1 : 60, i % 2), 0);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(freed, 40, "%d of 40 callbacks ran once and right", freed);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* --------------------------------------------------------------- cancel */

static int cancel_seen;
static tbx_result cancel_result;

static void keep_cb(tbx_req *req, tbx_result *r)
{
    (void)req;
    cancel_seen++;
    cancel_result = *r; /* moved out: freed by the test */
}

static void stop_loop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

TBX_TEST(async, cancel_terms_then_kills)
{
    /* The server up first: a call made while it starts waits for it (the
     * loop is not blocked), and a cancel then finds no child to signal. */
    if (*method == TBX_FORKSERVER || *method == TBX_POOL)
        cr_assert_eq(tbx_forkserver_start(NULL), 0);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "n");

    /* A sleeping child: SIGTERM is enough. */
    tbx_req req;
    memset(&req, 0, sizeof req);
    tbx_opts o = test_opts(*method);
    o.grace_s = 10;
    msgpack_sbuffer sleep_args;
    pack(&sleep_args, "u", (uint64_t)60000);
    cr_assert_eq(tbx_call_async(&loop, &req, fn_sleep_ms, sleep_args.data, sleep_args.size, &o,
                                keep_cb), 0);
    cr_assert_eq(tbx_cancel(&req), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(cancel_seen, 1);
    cr_assert_eq(cancel_result.status, TBX_ECANCELED, "%s", tbx_err_name(cancel_result.status));
    cr_assert_eq(cancel_result.kill_signal, SIGTERM);
    cr_assert_eq(cancel_result.term_signal, SIGTERM);
    cr_assert_not_null(cancel_result.message);
    cr_assert_lt(cancel_result.elapsed_s, 10.0);
    tbx_result_free(&cancel_result);
    cr_assert_eq(tbx_cancel(&req), TBX_EINVAL);

    /* A child that ignores SIGTERM: SIGKILL after the grace period. */
    o.grace_s = 0.2;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_ignore_term, sb.data, sb.size, &o, keep_cb), 0);
    /* Let it ignore SIGTERM first: a run of the loop long enough for a child
     * started on a slow machine (a fresh spawn after a cold build) to get
     * there. */
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, stop_loop, 2000, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(cancel_seen, 1, "the call ended by itself");
    uv_close((uv_handle_t *)&t, NULL);
    cr_assert_eq(tbx_cancel(&req), 0);
    cr_assert_eq(tbx_cancel(&req), 0, "a second cancel while in flight");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(cancel_seen, 2);
    cr_assert_eq(cancel_result.status, TBX_ECANCELED, "%s", tbx_err_name(cancel_result.status));
    cr_assert_eq(cancel_result.kill_signal, SIGKILL);
    cr_assert_eq(cancel_result.term_signal, SIGKILL);
    tbx_result_free(&cancel_result);

    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
    msgpack_sbuffer_destroy(&sleep_args);
}

/* ------------------------------------------------ blocking inside async */

static int nested_ok;

static void blocking_inside_cb(tbx_req *req, tbx_result *r)
{
    struct areq *a = req->data;
    tbx_result_free(r);
    msgpack_sbuffer sb;
    pack(&sb, "s", "inner");
    tbx_opts o = test_opts(a->method);
    o.timeout_s = 60;
    tbx_result in;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &in);
    if (rc == 0 && obj_str_eq(&in.value, "inner"))
        nested_ok++;
    tbx_result_free(&in);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(async, blocking_call_from_a_callback)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct areq a[3];
    memset(a, 0, sizeof a);
    for (int i = 0; i < 3; i++) {
        a[i].req.data = &a[i];
        a[i].method = *method;
        a[i].kind = MIX_OK;
        cr_assert_eq(start_mixed(&loop, &a[i], blocking_inside_cb, 60, 0), 0);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(nested_ok, 3);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* Two loops on one thread, each with deadlines: each loop's calls end on
 * that loop's run. */
TBX_TEST(async, two_loops_one_thread)
{
    uv_loop_t l1, l2;
    cr_assert_eq(uv_loop_init(&l1), 0);
    cr_assert_eq(uv_loop_init(&l2), 0);
    struct areq a[8];
    memset(a, 0, sizeof a);
    for (int i = 0; i < 8; i++) {
        a[i].req.data = &a[i];
        a[i].index = i;
        a[i].method = *method;
        a[i].kind = i % 2 ? MIX_HANG : MIX_OK;
        a[i].n = i;
        cr_assert_eq(start_mixed(i < 4 ? &l1 : &l2, &a[i], check_cb,
                                 a[i].kind == MIX_HANG ? 0.2 : 60, 0), 0);
    }
    uv_run(&l1, UV_RUN_DEFAULT);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(a[i].calls, 1, "loop 1, req %d", i);
    uv_run(&l2, UV_RUN_DEFAULT);
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(a[i].calls, 1, "req %d", i);
        cr_assert_eq(a[i].bad[0], '\0', "%s", a[i].bad);
    }
    cr_assert_eq(uv_loop_close(&l1), 0);
    cr_assert_eq(uv_loop_close(&l2), 0);
}

/* Blocks SIGTERM for 0.3 s, then lets it in: the pending SIGTERM ends it. */
static int fn_term_late(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, NULL);
    child_sleep(0.3);
    sigprocmask(SIG_UNBLOCK, &term, NULL);
    child_sleep(60);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_term_late);

/* kill_signal is SIGKILL only when SIGTERM was not enough.  Here the child
 * dies of the SIGTERM the cancel sent, about 0.2 s later, while the loop's
 * thread is busy elsewhere for 2 s (grace 0.1 s): when the loop runs again,
 * the grace deadline (ready first) and the child's exit are both pending, and
 * the grace deadline must not count a SIGKILL sent to a child already dead. */
TBX_TEST(async, cancel_kill_signal_is_what_was_needed)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_req req;
    memset(&req, 0, sizeof req);
    tbx_opts o = test_opts(*method);
    o.grace_s = 0.1;
    o.timeout_s = 60; /* a deadline that never fires: the loop's timer exists */
    cr_assert_eq(tbx_call_async(&loop, &req, fn_term_late, sb.data, sb.size, &o, keep_cb), 0);
    /* Let the child block SIGTERM first. */
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, stop_loop, 100, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    cr_assert_eq(tbx_cancel(&req), 0);
    sleep_s(2.0); /* the loop's thread is busy, long enough for the child to die */
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(cancel_seen, 1);
    cr_assert_eq(cancel_result.status, TBX_ECANCELED, "%s", tbx_err_name(cancel_result.status));
    cr_assert_eq(cancel_result.term_signal, SIGTERM, "the child died of signal %d",
                 cancel_result.term_signal);
    cr_assert_eq(cancel_result.kill_signal, SIGTERM,
                 "kill_signal %d, but SIGTERM was enough: the child died of it",
                 cancel_result.kill_signal);
    tbx_result_free(&cancel_result);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}
