/*
 * tbx_call_named and tbx_call_named_async: a function found by its
 * registered name wherever the method resolves it (this process for fork;
 * the worker, the forkserver, a shared daemon), including a function only
 * the worker's or the server's preloaded library has; an unknown name is
 * TBX_ENOTREG from wherever it was resolved.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <timebox/uv.h>
#include <unistd.h>

TBX_TEST(named, calls_the_registered_function)
{
    msgpack_sbuffer sb;
    pack(&sb, "s", "by name");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call_named("fn_echo", sb.data, sb.size, &o, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "by name"));
    cr_assert_gt(r.pid, 0);
    tbx_result_free(&r);
}

TBX_TEST(named, an_unknown_name_is_enotreg)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call_named("fn_nobody_registered", sb.data, sb.size, &o, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, TBX_ENOTREG, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.status, TBX_ENOTREG);
    cr_assert_not_null(r.message);
    /* Resolved here under fork: nothing was started. */
    if (*method == TBX_FORK)
        cr_assert_eq(r.pid, 0);
    tbx_result_free(&r);
}

TBX_PLAIN_TEST(named, the_default_method_is_fork_and_looks_up_here)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)5);
    tbx_opts o;
    tbx_opts_init(&o);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call_named("fn_sleep_ms", sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(obj_int(&r.value), 5);
    tbx_result_free(&r);
    rc = tbx_call_named("fn_nobody_registered", sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ENOTREG, "%s", tbx_err_name(rc));
    cr_assert_eq(r.pid, 0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_PLAIN_TEST(named, a_null_or_overlong_name_is_refused)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_result r;
    int rc = tbx_call_named(NULL, sb.data, sb.size, NULL, &r);
    cr_assert_eq(rc, TBX_EINVAL, "%s", tbx_err_name(rc));
    tbx_result_free(&r);
    char name[300];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    tbx_opts o = test_opts(TBX_SPAWN);
    rc = tbx_call_named(name, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ENOTREG, "%s", tbx_err_name(rc));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------------- async */

struct got {
    int status;
    int64_t value;
    int calls;
};

static void got_cb(tbx_req *req, tbx_result *r)
{
    struct got *g = req->data;
    g->calls++;
    g->status = r->status;
    if (r->status == 0)
        g->value = obj_int(&r->value);
    tbx_result_free(r);
}

TBX_TEST(named, async_by_name_and_unknown)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)7);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    struct got ok = {1, 0, 0}, unknown = {1, 0, 0};
    tbx_req a, b;
    a.data = &ok;
    b.data = &unknown;
    int rc = tbx_call_named_async(&loop, &a, "fn_sleep_ms", sb.data, sb.size, &o, got_cb);
    cr_assert_eq(rc, 0, "%s", tbx_err_name(rc));
    rc = tbx_call_named_async(&loop, &b, "fn_nobody_registered", sb.data, sb.size, &o, got_cb);
    if (*method == TBX_FORK) {
        /* Looked up here: refused, no callback. */
        cr_assert_eq(rc, TBX_ENOTREG, "%s", tbx_err_name(rc));
    } else {
        cr_assert_eq(rc, 0, "%s", tbx_err_name(rc));
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(ok.calls, 1);
    cr_assert_eq(ok.status, 0, "%s", tbx_err_name(ok.status));
    cr_assert_eq(ok.value, 7);
    if (*method == TBX_FORK) {
        cr_assert_eq(unknown.calls, 0);
    } else {
        cr_assert_eq(unknown.calls, 1);
        cr_assert_eq(unknown.status, TBX_ENOTREG, "%s", tbx_err_name(unknown.status));
    }
    cr_assert_eq(tbx_call_named_async(&loop, &a, NULL, sb.data, 0, &o, got_cb), TBX_EINVAL);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* ------------------------------- a function only the other side has */

static int triple_named(const tbx_opts *o, uint64_t n, tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", n);
    int rc = tbx_call_named("plugin_triple", sb.data, sb.size, o, r);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* plugin_triple(n), called by name, gives 3n. */
static void expect_triple(const tbx_opts *o, uint64_t n)
{
    tbx_result r;
    int rc = triple_named(o, n, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(obj_int(&r.value), (int64_t)(3 * n));
    tbx_result_free(&r);
}

TBX_PLAIN_TEST(named, a_spawned_worker_serves_what_its_preload_registers)
{
    /* This process never loaded the plugin. */
    cr_assert_null(tbx_lookup("plugin_triple"));
    char *argv[] = {"timebox-worker", "--preload", TEST_PLUGIN_PATH, NULL};
    tbx_opts o = test_opts(TBX_SPAWN);
    o.timeout_s = 30;
    o.executable = TIMEBOX_WORKER_PATH;
    o.argv = argv;
    expect_triple(&o, 14);
    /* Fork has no other program to ask. */
    o = test_opts(TBX_FORK);
    tbx_result r;
    int rc = triple_named(&o, 14, &r);
    cr_assert_eq(rc, TBX_ENOTREG, "%s", tbx_err_name(rc));
    tbx_result_free(&r);
}

TBX_PLAIN_TEST(named, the_forkserver_serves_what_it_preloaded)
{
    cr_assert_null(tbx_lookup("plugin_triple"));
    const char *preload[] = {TEST_PLUGIN_PATH, NULL};
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.preload = preload;
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    expect_triple(&o, 5);
    tbx_forkserver_stop();
}

TBX_PLAIN_TEST(named, a_shared_daemon_serves_what_the_client_lacks)
{
    cr_assert_null(tbx_lookup("plugin_triple"));
    char dir[64], path[96], cmd[512];
    snprintf(dir, sizeof dir, "/tmp/tbx-named-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/fs.sock", dir);
    become_subreaper(); /* the daemon detaches: we reap it */
    snprintf(cmd, sizeof cmd, "'%s' --socket '%s' --preload '%s' --quiet",
             TIMEBOX_FORKSERVER_PATH, path, TEST_PLUGIN_PATH);
    cr_assert_eq(system(cmd), 0, "the daemon did not start");
    cr_assert_eq(tbx_forkserver_attach(path, NULL, 0), 0);
    pid_t daemon = tbx_forkserver_pid();
    cr_assert_gt(daemon, 0);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    expect_triple(&o, 11);
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_result r;
    int rc = tbx_call_named("fn_nobody_registered", sb.data, sb.size, &o, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, TBX_ENOTREG, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    cr_assert_eq(kill(daemon, SIGTERM), 0);
    reap_adopted(10);
    cr_assert(wait_gone(daemon, 1), "the daemon ignored SIGTERM");
    tbx_forkserver_stop(); /* drops our connection */
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
