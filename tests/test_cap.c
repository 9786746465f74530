/*
 * The cap on children (tbx_set_max_children) and its two escapes: a
 * blocking call that could only wait for a slot its own thread's loop holds
 * fails at once with -EDEADLK instead of waiting for ever, and a call with
 * opts.cap_exempt neither waits for a slot nor takes one.  Issue 13, item 3.
 */
#define _GNU_SOURCE
#include "promises_util.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <timebox/uv.h>

static void status_cb(tbx_req *req, tbx_result *r)
{
    *(int *)req->data = r->status;
    tbx_result_free(r);
}

/* Starts an async call of fn_sleep_ms(ms) on loop; it holds a slot. */
static void start_sleeper(uv_loop_t *loop, tbx_req *req, int *status, tbx_method method,
                          unsigned ms, int exempt)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)ms);
    tbx_opts o = test_opts(method);
    o.timeout_s = 60;
    o.cap_exempt = exempt;
    req->data = status;
    *status = 1;
    cr_assert_eq(tbx_call_async(loop, req, fn_sleep_ms, sb.data, sb.size, &o, status_cb), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* Caps children at cap and starts, on a fresh loop, a long async call that
 * holds a slot; end_holder cancels it and closes the loop. */
static void cap_with_holder(unsigned cap, uv_loop_t *loop, tbx_req *req, int *status,
                            tbx_method method)
{
    tbx_set_max_children(cap);
    cr_assert_eq(uv_loop_init(loop), 0);
    start_sleeper(loop, req, status, method, 20000, 0);
}

static void end_holder(uv_loop_t *loop, tbx_req *req)
{
    cr_assert_eq(tbx_cancel(req), 0);
    uv_run(loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(loop), 0);
    tbx_set_max_children(0);
    tbx_forkserver_stop();
}

/* The only slot is held by this thread's own loop, which cannot run while
 * the thread waits: the blocking call fails at once, with or without a
 * deadline, and says why. */
TBX_TEST_T(cap, waiting_on_its_own_loops_slot_is_edeadlk, 60.0)
{
    uv_loop_t loop;
    tbx_req req;
    int status;
    cap_with_holder(1, &loop, &req, &status, *method);
    tbx_result r;
    int rc = sleep_call_exempt(*method, 10, 0, 0, &r);
    cr_assert_eq(rc, -EDEADLK, "no deadline: %s: %s", tbx_err_name(rc), r.message);
    cr_assert_not_null(strstr(r.message, "tbx_set_max_children"), "'%s'", r.message);
    tbx_result_free(&r);
    double t0 = now_s();
    rc = sleep_call_exempt(*method, 10, 20, 0, &r);
    cr_assert_eq(rc, -EDEADLK, "deadline: %s: %s", tbx_err_name(rc), r.message);
    cr_assert_lt(now_s() - t0, 10.0, "it waited for its deadline");
    tbx_result_free(&r);
    end_holder(&loop, &req);
    cr_assert_eq(status, TBX_ECANCELED, "%s", tbx_err_name(status));
}

/* With a slot still free, or one held by another thread (which releases
 * it on its own), the blocking call runs: -EDEADLK is for a wait that can
 * never end, not for any wait. */
struct holder {
    tbx_method method;
    int rc;
};

static void *hold_slot(void *p)
{
    struct holder *h = p;
    tbx_result r;
    h->rc = sleep_call_exempt(h->method, 800, 60, 0, &r);
    tbx_result_free(&r);
    return NULL;
}

TBX_TEST_T(cap, a_wait_that_can_end_is_not_edeadlk, 60.0)
{
    uv_loop_t loop;
    tbx_req req;
    int status;
    cap_with_holder(2, &loop, &req, &status, *method);
    tbx_result r;
    int rc = sleep_call_exempt(*method, 10, 30, 0, &r);
    cr_assert_eq(rc, 0, "a free slot: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);

    /* Now the second slot goes to another thread's call: ours waits for
     * it, and runs once that call is over. */
    struct holder h = {*method, 1};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, hold_slot, &h), 0);
    sleep_s(0.3);
    rc = sleep_call_exempt(*method, 10, 30, 0, &r);
    pthread_join(t, NULL);
    cr_assert_eq(h.rc, 0, "%s", tbx_err_name(h.rc));
    cr_assert_eq(rc, 0, "another thread's slot: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    end_holder(&loop, &req);
}

/* opts.cap_exempt: the call neither waits for a slot nor takes one. */
TBX_TEST_T(cap, exempt_calls_bypass_the_cap, 60.0)
{
    uv_loop_t loop;
    tbx_req req;
    int status;
    cap_with_holder(1, &loop, &req, &status, *method);
    tbx_result r;
    int rc = sleep_call_exempt(*method, 10, 30, 1, &r);
    cr_assert_eq(rc, 0, "exempt, slot taken: %s: %s", tbx_err_name(rc), r.message);
    cr_assert_lt(r.queued_s, 1.0, "it queued %.2f s", r.queued_s);
    tbx_result_free(&r);
    cr_assert_eq(tbx_cancel(&req), 0);
    uv_run(&loop, UV_RUN_DEFAULT);

    /* An exempt call in flight holds no slot: a capped call still runs. */
    start_sleeper(&loop, &req, &status, *method, 20000, 1);
    rc = sleep_call_exempt(*method, 10, 30, 0, &r);
    cr_assert_eq(rc, 0, "capped, exempt in flight: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    end_holder(&loop, &req);
}
