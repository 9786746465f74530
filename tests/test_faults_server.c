/*
 * The fault matrix, the forkserver: it dies while args are written to it, a
 * client of it is killed mid-call, it serves 100 calls at once whose exits
 * coalesce, and it survives args it cannot unpack.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The forkserver dies while 64 MiB of args are still on their way to it. */
TBX_PLAIN_TEST(child, forkserver_dies_while_args_are_written)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    uv_loop_t loop;
    tbx_req req;
    tbx_result r;
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 100;
    start_async(&loop, &req, &r, fn_sum, &sb, &o);
    pid_t server = tbx_forkserver_pid();
    cr_assert_gt(server, 0);
    cr_assert_eq(kill(server, SIGKILL), 0);
    double t0 = now_s();
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(r.status, -ECONNRESET, "%s: %s", tbx_err_name(r.status), r.message);
    cr_assert_lt(now_s() - t0, 30.0);
    tbx_result_free(&r);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* =========================================================== forkserver */

/* A client of a running forkserver (a forked copy of this process that
 * shares its connection) is SIGKILLed mid-call: the server kills its child,
 * and keeps serving. */
TBX_PLAIN_TEST(forkserver, client_killed_mid_call_takes_its_child)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    pid_t server = tbx_forkserver_pid();
    char path[64];
    temp_path(path, sizeof path);
    pid_t client = fork();
    cr_assert_geq(client, 0);
    if (client == 0) {
        /* A fresh loop: the parent's private loop is not the client's. */
        uv_loop_t loop;
        if (uv_loop_init(&loop) != 0)
            _exit(2);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_str_with_body(&pk, path, strlen(path));
        tbx_opts o;
        tbx_opts_init(&o);
        o.method = TBX_FORKSERVER;
        tbx_req req;
        if (tbx_call_async(&loop, &req, fn_pid_then_hang, sb.data, sb.size, &o, ignore_cb) != 0)
            _exit(3);
        uv_run(&loop, UV_RUN_DEFAULT);
        _exit(4);
    }
    pid_t child = read_pid_file(path, 30);
    cr_assert_eq(kill(client, SIGKILL), 0);
    int st;
    cr_assert_eq(waitpid(client, &st, 0), client);
    cr_assert(WIFSIGNALED(st), "the client ended with %#x", st);
    cr_assert(wait_gone(child, 20), "the call's child outlived its client");
    cr_assert_eq(tbx_forkserver_pid(), server);
    cr_assert_eq(kill(server, 0), 0, "the server died with its client");
    msgpack_sbuffer sb;
    pack(&sb, "s", "still here");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "still here"));
    cr_assert_eq(tbx_forkserver_pid(), server, "the server was restarted");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

/* args [when_ns (CLOCK_MONOTONIC), kind, n]: sleeps until when, then ends as
 * fn_mixed's kind says (MIX_HANG excepted). */
static int fn_end_at(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *a = args->via.array.ptr;
    uint64_t when = a[0].via.u64;
    struct timespec ts = {(time_t)(when / 1000000000u), (long)(when % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
    int kind = (int)a[1].via.u64;
    int64_t n = (int64_t)a[2].via.u64;
    switch (kind) {
    case MIX_OK:
        return msgpack_pack_int64(pk, n * 2);
    case MIX_SEGV:
        raise(SIGSEGV);
        break;
    case MIX_FAIL:
        return tbx_fail(pk, (int)n, "failed with %d", (int)n);
    case MIX_EXIT:
        _exit((int)n);
    }
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_end_at);

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* 100 calls started at once whose children all end at the same instant,
 * half by themselves and half at one shared deadline: the exits coalesce
 * (one pidfd wake-up, one SIGCHLD, one server read for many). */
TBX_TEST_T(server, hundred_at_once_with_coalesced_exits, 300.0)
{
    raise_nofile_limit();
    enum { N = 100 };
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct hreq *calls = calloc(N, sizeof *calls);
    cr_assert_not_null(calls);
    uint64_t at = mono_ns() + 2500000000ull;
    double deadline = now_s() + 2.5;
    for (int i = 0; i < N; i++) {
        struct hreq *h = &calls[i];
        h->req.data = h;
        int kinds[] = {MIX_OK, MIX_SEGV, MIX_FAIL, MIX_EXIT};
        msgpack_sbuffer sb;
        tbx_opts o = test_opts(*method);
        o.grace_s = 0.2;
        if (i % 2 == 0) {
            h->kind = kinds[(i / 2) % 4];
            h->n = h->kind == MIX_EXIT ? 1 + i : i;
            pack(&sb, "a u u u", 3, at, (uint64_t)h->kind, (uint64_t)h->n);
            o.timeout_s = 120;
            cr_assert_eq(tbx_call_async(&loop, &h->req, fn_end_at, sb.data, sb.size, &o,
                                        hreq_cb), 0, "call %d", i);
        } else {
            h->kind = MIX_HANG;
            h->n = i;
            pack(&sb, "a i i", 2, (int64_t)MIX_HANG, (int64_t)i);
            o.timeout_s = deadline - now_s(); /* one absolute deadline for all */
            if (o.timeout_s < 0.001)
                o.timeout_s = 0.001;
            cr_assert_eq(tbx_call_async(&loop, &h->req, fn_mixed, sb.data, sb.size, &o,
                                        hreq_cb), 0, "call %d", i);
        }
        msgpack_sbuffer_destroy(&sb);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    int wrong = 0;
    const char *first = "";
    for (int i = 0; i < N; i++) {
        cr_assert_eq(calls[i].calls, 1, "call %d: %d callbacks", i, calls[i].calls);
        if (calls[i].bad[0] != '\0' && wrong++ == 0)
            first = calls[i].bad;
    }
    cr_assert_eq(wrong, 0, "%d of %d wrong; first: %s", wrong, N, first);
    cr_assert_eq(uv_loop_close(&loop), 0);
    free(calls);
}

/* The same args sent to a running forkserver: whatever the caller's check
 * lets through, the server refuses that call and goes on serving the
 * others (it treats every request as untrusted input). */
TBX_PLAIN_TEST(forkserver, unpackable_args_do_not_kill_the_server)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    pid_t server = tbx_forkserver_pid();
    unsigned char args[33];
    memset(args, 0x91, 32);
    args[32] = 0x90;
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_echo, args, sizeof args, &o, &r);
    cr_assert_neq(rc, 0, "args msgpack-c cannot unpack were echoed");
    cr_assert_neq(rc, -ECONNRESET, "the forkserver died of the request: %s", r.message);
    tbx_result_free(&r);
    sleep_s(0.2);
    cr_assert_eq(kill(server, 0), 0, "the forkserver is gone");
    msgpack_sbuffer sb;
    pack(&sb, "s", "next");
    rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(tbx_forkserver_pid(), server, "the forkserver was restarted");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}
