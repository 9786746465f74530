/*
 * The fault matrix, deadlines: none (0, < 0), 1 ms, already past, and too
 * far to be represented, with hard and soft deadlines.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ============================================================ deadlines */

/* A negative timeout is a deadline already past (test_deadlines.c). */
TBX_TEST(deadlines, zero_is_no_deadline)
{
    double timeouts[] = {0.0};
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)300);
    for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = timeouts[i];
        tbx_result r;
        int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, 0, "timeout %f: %s: %s", timeouts[i], tbx_err_name(rc), r.message);
        cr_assert_eq(r.kill_signal, 0);
        cr_assert_geq(r.elapsed_s, 0.3);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(deadlines, one_millisecond)
{
    /* The server up first: a call made while it starts may meet its
     * deadline before it has a child, with no signal to send. */
    if (*method == TBX_FORKSERVER || *method == TBX_POOL)
        cr_assert_eq(tbx_forkserver_start(NULL), 0);
    msgpack_sbuffer hang, quick;
    pack(&hang, "u", (uint64_t)60000);
    pack(&quick, "s", "quick");
    for (int soft = 0; soft <= 1; soft++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = 0.001;
        o.grace_s = 0.2;
        o.hard_timeout = !soft;
        tbx_result r;
        int rc = tbx_call(fn_sleep_ms, hang.data, hang.size, &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, TBX_ETIMEDOUT, "soft %d: %s: %s", soft, tbx_err_name(rc), r.message);
        cr_assert(r.kill_signal == SIGTERM || r.kill_signal == SIGKILL);
        cr_assert_lt(r.elapsed_s, 30.0);
        tbx_result_free(&r);
        /* A child quicker than that may win or lose: either way the result
         * says which, and nothing is left. */
        for (int i = 0; i < 10; i++) {
            rc = tbx_call(fn_echo, quick.data, quick.size, &o, &r);
            check_status(rc, &r);
            cr_assert(rc == 0 || rc == TBX_ETIMEDOUT, "soft %d: %s: %s", soft, tbx_err_name(rc),
                      r.message);
            if (rc == 0)
                cr_assert(obj_str_eq(&r.value, "quick"));
            tbx_result_free(&r);
        }
    }
    msgpack_sbuffer_destroy(&hang);
    msgpack_sbuffer_destroy(&quick);
}

/* A deadline so near it has passed before the child exists. */
TBX_TEST(deadlines, already_past)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    double timeouts[] = {1e-9, 1e-300, 5e-324};
    for (size_t i = 0; i < 3; i++) {
        for (int soft = 0; soft <= 1; soft++) {
            tbx_opts o = test_opts(*method);
            o.timeout_s = timeouts[i];
            o.grace_s = 0.2;
            o.hard_timeout = !soft;
            tbx_result r;
            int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
            check_status(rc, &r);
            cr_assert_eq(rc, TBX_ETIMEDOUT, "timeout %g soft %d: %s: %s", timeouts[i], soft,
                         tbx_err_name(rc), r.message);
            cr_assert_lt(r.elapsed_s, 30.0);
            tbx_result_free(&r);
        }
    }
    msgpack_sbuffer_destroy(&sb);
}

static int fn_left(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_double(pk, tbx_remaining());
}
TBX_REGISTER(fn_left);

/* Deadlines too far to be represented behave as no deadline soon, and the
 * function sees plenty of time left. */
TBX_TEST(deadlines, huge_timeouts)
{
    double timeouts[] = {1e12, 1e300, INFINITY, 18e9};
    msgpack_sbuffer sb;
    pack(&sb, "s", "far");
    for (size_t i = 0; i < 4; i++) {
        for (int soft = 0; soft <= 1; soft++) {
            tbx_opts o = test_opts(*method);
            o.timeout_s = timeouts[i];
            o.hard_timeout = !soft;
            tbx_result r;
            int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
            check_status(rc, &r);
            cr_assert_eq(rc, 0, "timeout %g soft %d: %s: %s", timeouts[i], soft,
                         tbx_err_name(rc), r.message);
            cr_assert_eq(r.kill_signal, 0);
            tbx_result_free(&r);
            rc = tbx_call(fn_left, sb.data, sb.size, &o, &r);
            cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
            cr_assert_gt(r.value.via.f64, 1e6, "timeout %g soft %d: tbx_remaining() is %g",
                         timeouts[i], soft, r.value.via.f64);
            tbx_result_free(&r);
        }
    }
    msgpack_sbuffer_destroy(&sb);
}
