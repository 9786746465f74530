/*
 * Deadline inheritance: a call made inside fn ends, its grace period
 * included, before the call it runs in reaches its deadline, so that fn gets
 * the inner TBX_ETIMEDOUT back in time to return a result of its own.
 * Tested at two depths, under every start method (the nested calls use the
 * outer call's method).
 */
#include "helpers.h"

#include <signal.h>

/* args [method, depth, timeout_s, grace_s].  Depth 0: ignores SIGTERM and
 * hangs, so only the grace's SIGKILL ends it.  Depth d > 0: calls itself at
 * depth d - 1 by method, asking for timeout_s (0: no deadline) and grace_s
 * (0: the default), and checks what came back: at depth 1 a TBX_ETIMEDOUT
 * by SIGKILL with time left to answer; deeper, the inner call's own answer.
 * Packs d, or fails with what was wrong. */
static int fn_nest(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *a = args->via.array.ptr;
    int64_t m = obj_int(&a[0]), depth = obj_int(&a[1]);
    double timeout_s = a[2].via.f64, grace_s = a[3].via.f64;
    if (depth == 0) {
        signal(SIGTERM, SIG_IGN);
        child_sleep(60);
        return msgpack_pack_nil(pk);
    }
    msgpack_sbuffer sb;
    pack(&sb, "a i i d d", 4, m, depth - 1, timeout_s, grace_s);
    tbx_opts o = test_opts((tbx_method)m);
    o.timeout_s = timeout_s;
    if (grace_s > 0)
        o.grace_s = grace_s;
    tbx_result r;
    int rc = tbx_call(fn_nest, sb.data, sb.size, &o, &r);
    msgpack_sbuffer_destroy(&sb);
    int ok = depth == 1 ? rc == TBX_ETIMEDOUT && r.kill_signal == SIGKILL
                        : rc == 0 && r.value.type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                              (int64_t)r.value.via.u64 == depth - 1;
    tbx_result_free(&r);
    if (!ok)
        return tbx_fail(pk, 1, "depth %d: the inner call gave %s", (int)depth, tbx_err_name(rc));
    if (tbx_remaining() <= 0)
        return tbx_fail(pk, 2, "depth %d: no time left to answer", (int)depth);
    return msgpack_pack_int64(pk, depth);
}
TBX_REGISTER(fn_nest);

/* Runs fn_nest at depth under an outer deadline; asserts it answered with
 * depth within `within` seconds of the call (its result whole: the time to
 * reap and clean up after it, longer on a loaded machine, is not the
 * deadline's), and that the call returned soon after. */
static void nest(tbx_method method, int depth, double outer_s, double inner_s, double inner_grace,
                 double within)
{
    msgpack_sbuffer sb;
    pack(&sb, "a i i d d", 4, (int64_t)method, (int64_t)depth, inner_s, inner_grace);
    tbx_opts o = test_opts(method);
    o.timeout_s = outer_s;
    tbx_result r;
    double t0 = now_s();
    int rc = tbx_call(fn_nest, sb.data, sb.size, &o, &r);
    double took = now_s() - t0;
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message ? r.message : "");
    cr_assert_eq(obj_int(&r.value), depth);
    double answered = r.elapsed_s - r.teardown_s;
    cr_assert_lt(answered, within, "answered after %.3f s", answered);
    cr_assert_lt(took, within + 10, "returned after %.3f s", took);
    tbx_result_free(&r);
}

/* The inner call asks for no deadline: it gets the outer one's, less its
 * grace and a margin. */
TBX_TEST(nest, one_level_capped)
{
    nest(*method, 1, 1.0, 0, 0, 1.0);
}

TBX_TEST(nest, two_levels_capped)
{
    nest(*method, 2, 2.0, 0, 0, 2.0);
}

/* An inner call asking for a deadline (and grace) beyond the outer's. */
TBX_TEST(nest, two_levels_asking_more)
{
    nest(*method, 2, 2.0, 30, 5, 2.0);
}

/* An inner call asking for less keeps its own deadline: it ends long before
 * the outer one would have it. */
TBX_TEST(nest, asking_less_is_kept)
{
    nest(*method, 1, 20, 0.1, 0.05, 5.0);
}
