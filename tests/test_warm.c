/*
 * Warm children (tbx_forkserver_opts.warm_children) and a server that dies
 * or restarts: a stale slot is discarded (its child with it) and the call
 * goes cold on a fresh server; the pool refills after any restart; output
 * capture and backtraces work with warm children.  Issue 13, item 5.  And a
 * warm child is in its cgroup before its call comes (issue 14).
 */
#define _GNU_SOURCE
#include "promises_util.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int fn_say(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    printf("to stdout\n");
    fprintf(stderr, "to stderr\n");
    return msgpack_pack_true(pk);
}
TBX_REGISTER(fn_say);

static int start_warm(unsigned n)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.warm_children = n;
    return tbx_forkserver_start(&fo);
}

/* Waits up to timeout_s for the server to hold at least n children (its
 * warm ones, between calls). */
static bool wait_pool(pid_t server, int n, double timeout_s)
{
    double until = now_s() + timeout_s;
    while (count_children_of(server) < n) {
        if (now_s() > until)
            return false;
        sleep_s(0.01);
    }
    return true;
}

/* The children of pid, into kids[0..max). */
static int children_of(pid_t pid, pid_t *kids, int max)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    FILE *f = fopen(path, "re");
    cr_assert_not_null(f);
    int n = 0, k;
    while (n < max && fscanf(f, "%d", &k) == 1)
        kids[n++] = k;
    fclose(f);
    return n;
}

/* Kills our server outright and waits until it is a zombie (ours to reap,
 * which the next call's restart does). */
static void kill_server(pid_t server)
{
    cr_assert_eq(kill(server, SIGKILL), 0);
    double until = now_s() + 10;
    while (proc_state(server) != 'Z' && proc_state(server) != 0) {
        cr_assert_lt(now_s(), until, "the server did not die");
        sleep_s(0.005);
    }
}

TBX_PLAIN_TEST(warm, dead_server_between_calls_goes_cold_on_a_fresh_one)
{
    cr_assert_eq(start_warm(2), 0);
    for (int round = 0; round < 2; round++) {
        tbx_result r;
        int rc = echo_once(TBX_FORKSERVER, 30, &r);
        cr_assert_eq(rc, 0, "round %d: %s: %s", round, tbx_err_name(rc), r.message);
        tbx_result_free(&r);
        pid_t server = tbx_forkserver_pid();
        cr_assert(wait_pool(server, 2, 10), "round %d: no warm children", round);
        pid_t warm[8];
        int nwarm = children_of(server, warm, 8);
        kill_server(server);
        rc = echo_once(TBX_FORKSERVER, 30, &r);
        cr_assert_eq(rc, 0, "round %d, after the server died: %s: %s", round,
                     tbx_err_name(rc), r.message);
        cr_assert(obj_str_eq(&r.value, "hi"));
        tbx_result_free(&r);
        cr_assert_neq(tbx_forkserver_pid(), server, "round %d: the same server", round);
        for (int i = 0; i < nwarm; i++)
            cr_assert(wait_gone(warm[i], 10), "round %d: warm child %d outlived its server",
                      round, (int)warm[i]);
    }
    tbx_forkserver_stop();
}

TBX_PLAIN_TEST(warm, pool_refills_after_any_restart)
{
    cr_assert_eq(start_warm(1), 0);
    cr_assert(wait_pool(tbx_forkserver_pid(), 1, 10), "no warm child after the start");
    /* Stopped, then started again by a call. */
    tbx_forkserver_stop();
    tbx_result r;
    int rc = echo_once(TBX_FORKSERVER, 30, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    cr_assert(wait_pool(tbx_forkserver_pid(), 1, 10), "no warm child after a stop and a call");
    /* Died, then started again by a call. */
    kill_server(tbx_forkserver_pid());
    rc = echo_once(TBX_FORKSERVER, 30, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    cr_assert(wait_pool(tbx_forkserver_pid(), 1, 10), "no warm child after a restart");
    tbx_forkserver_stop();
}

/* A warm child joins its cgroup when it is made, not when its call comes:
 * the call runs in the leaf the child was in before the call was made, so
 * no move into a cgroup (which may wait for an RCU grace period: README,
 * "What a join costs") lies on the call's way. */
TBX_PLAIN_TEST(warm, a_warm_child_is_in_its_cgroup_before_its_call)
{
    if (tbx_containment() != TBX_CONTAIN_CGROUP)
        cr_skip_test("no cgroups for this process");
    cr_assert_eq(start_warm(1), 0);
    pid_t server = tbx_forkserver_pid(), kid;
    cr_assert(wait_pool(server, 1, 10), "no warm child");
    cr_assert_eq(children_of(server, &kid, 1), 1);
    char leaf[PATH_MAX];
    cr_assert(wait_in_leaf_of(kid, server, leaf, sizeof leaf, 10),
              "warm child %d is in %s, not in a leaf of timebox-%d", (int)kid, leaf, (int)server);
    static const unsigned char nil = 0xc0;
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_where, &nil, 1, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.containment, TBX_CONTAIN_CGROUP);
    cr_assert(where_is(&r.value, kid, leaf), "the call did not run in warm child %d in %s",
              (int)kid, leaf);
    tbx_result_free(&r);
    tbx_forkserver_stop();
}

/* A warm child reads its request alone: the header's receive takes up to
 * 256 bytes of what follows it.  Args of every size across that reach
 * arrive intact, each call served by the warm child waiting for it. */
TBX_PLAIN_TEST(warm, args_of_every_size_across_the_first_read)
{
    cr_assert_eq(start_warm(1), 0);
    pid_t server = tbx_forkserver_pid();
    unsigned char data[300];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = pattern(i);
    for (size_t len = 200; len <= sizeof data; len += 3) {
        pid_t kid;
        cr_assert(wait_pool(server, 1, 10), "no warm child");
        cr_assert_eq(children_of(server, &kid, 1), 1);
        msgpack_sbuffer sb;
        pack(&sb, "x", (const void *)data, len);
        tbx_opts o = test_opts(TBX_FORKSERVER);
        o.timeout_s = 30;
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        msgpack_sbuffer_destroy(&sb);
        cr_assert_eq(rc, 0, "%zu bytes: %s: %s", len, tbx_err_name(rc), r.message);
        cr_assert_eq(r.pid, kid, "%zu bytes: not served by the warm child", len);
        cr_assert_eq(r.value.type, MSGPACK_OBJECT_BIN);
        cr_assert_eq(r.value.via.bin.size, len);
        cr_assert(memcmp(r.value.via.bin.ptr, data, len) == 0, "%zu bytes", len);
        tbx_result_free(&r);
    }
    tbx_forkserver_stop();
}

TBX_PLAIN_TEST(warm, capture_and_backtrace_work_with_warm_children)
{
    cr_assert_eq(start_warm(2), 0);
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    o.capture_output = 1024;
    tbx_result r;
    int rc = tbx_call(fn_say, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_not_null(r.stdout_data);
    cr_assert_str_eq(r.stdout_data, "to stdout\n");
    cr_assert_str_eq(r.stderr_data, "to stderr\n");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);

    pack(&sb, "u", (uint64_t)20000);
    o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 0.5;
    o.grace_s = 0.2;
    o.backtrace_on_timeout = 1;
    rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_not_null(r.backtrace, "no backtrace from a warm-pool caller");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    tbx_forkserver_stop();
}
