/*
 * The fault matrix, payloads: big arguments to a child that crashes or dies
 * before reading them; results around 64 KiB (the pipe's size), of 16 and
 * 100 MiB, over max_result, too deep or with counts that lie; arguments
 * nested too deep or with huge counts (refused before a child exists).
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------- functions in the child */

/* args [depth, count]: depth nested arrays of one element around an array
 * header that claims count elements and has none (count 0: an int). */
static int fn_nest(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    uint64_t depth = args->via.array.ptr[0].via.u64, count = args->via.array.ptr[1].via.u64;
    for (uint64_t i = 0; i < depth; i++)
        msgpack_pack_array(pk, 1);
    if (count > 0)
        return msgpack_pack_array(pk, (size_t)count);
    return msgpack_pack_int(pk, 7);
}
TBX_REGISTER(fn_nest);

/* ================================================================ child */

/* 64 MiB of args to a function that crashes: for spawn and the forkserver
 * the request is written as the child (or server) reads it. */
TBX_TEST(child, crash_with_64mib_args)
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    tbx_result r;
    int rc = tbx_call(fn_segv, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGSEGV);
    cr_assert_lt(r.elapsed_s, 60.0);
    tbx_result_free(&r);
    /* And the same args arrive whole when nothing crashes. */
    rc = tbx_call(fn_sum, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.via.array.ptr[0].via.u64, BIG_ARGS);
    cr_assert_eq(r.value.via.array.ptr[1].via.u64, fnv1a(sb.data + 5, BIG_ARGS));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A spawned program that reads 4 KiB of its 64 MiB request and crashes, or
 * reads nothing and exits: an error, no hang, no SIGPIPE in the caller. */
TBX_PLAIN_TEST(child, spawned_program_dies_before_reading_all_args)
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    tbx_opts o = test_opts(TBX_SPAWN);
    o.timeout_s = 100;
    o.executable = "/bin/sh";
    char *crash[] = {"sh", "-c", "head -c 4096 <&3 >/dev/null; kill -SEGV $$", NULL};
    o.argv = crash;
    tbx_result r;
    int rc = tbx_call(fn_sum, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGSEGV);
    cr_assert_lt(r.elapsed_s, 60.0);
    tbx_result_free(&r);

    char *leave[] = {"sh", "-c", "exec 3<&-; exit 3", NULL};
    o.argv = leave;
    rc = tbx_call(fn_sum, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_EEXITED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.exit_code, 3);
    cr_assert_lt(r.elapsed_s, 60.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* ============================================================== results */

/* Calls fn_pattern for len bytes under max_result (0: the default).  want
 * 0: the result arrives whole; TBX_ETOOBIG: refused, the child killed if it
 * was still sending. */
static void check_pattern(tbx_method m, size_t len, size_t max_result, int want)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)len);
    tbx_opts o = test_opts(m);
    o.timeout_s = 200;
    if (max_result != 0)
        o.max_result = max_result;
    tbx_result r;
    int rc = tbx_call(fn_pattern, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, want, "%zu bytes, max %zu: %s: %s", len, o.max_result, tbx_err_name(rc),
                 r.message);
    if (want != 0) {
        cr_assert(r.kill_signal == 0 || r.kill_signal == SIGKILL, "kill_signal %d",
                  r.kill_signal);
    } else {
        cr_assert_eq(r.value.type, MSGPACK_OBJECT_BIN);
        cr_assert_eq(r.value.via.bin.size, len);
        const unsigned char *p = (const unsigned char *)r.value.via.bin.ptr;
        for (size_t i = 0; i < len; i++)
            if (p[i] != pattern(i))
                cr_assert_fail("%zu bytes: byte %zu is %u, not %u", len, i, p[i], pattern(i));
    }
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* Around 64 KiB: the pipe's default size and the engine's first read
 * buffer.  A bin of n bytes packs to n + 5 (bin32) or n + 3 (bin16). */
TBX_TEST(results, around_64kib)
{
    size_t sizes[] = {65536 - 4, 65536 - 3, 65536 - 2, 65536 - 5, 65536, 65536 + 1,
                      2 * 65536 - 5, 2 * 65536 - 4};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        check_pattern(*method, sizes[i], 0, 0);
    /* Exactly at max_result, and one byte over. */
    check_pattern(*method, 65536, 65536 + 5, 0);
    check_pattern(*method, 65536, 65536 + 4, TBX_ETOOBIG);
}

/* Past 1 MiB a fork or spawn child makes a memfd for its result and sends
 * it with the header (the forkserver's caller makes one): the result
 * arrives whole at exactly max_result, and one byte over is refused. */
TBX_TEST(results, past_1mib_at_and_over_max_result)
{
    const size_t len = (size_t)3 << 20;
    check_pattern(*method, len, len + 5, 0);
    check_pattern(*method, len, len + 4, TBX_ETOOBIG);
}

TBX_TEST(results, result_16mib)
{
    check_pattern(*method, (size_t)16 << 20, 0, 0);
}

TBX_TEST_T(results, result_100mib, 300.0)
{
    check_pattern(*method, (size_t)100 << 20, 0, 0);
}

/* 100 MiB against a 64 MiB limit: refused, child killed. */
TBX_TEST_T(results, result_100mib_over_max_result, 300.0)
{
    check_pattern(*method, (size_t)100 << 20, (size_t)64 << 20, TBX_ETOOBIG);
}

/* Results nested deeper than msgpack-c unpacks (32), or with a count that
 * lies: TBX_EPROTO; 31 levels are fine. */
TBX_TEST(results, too_deep_or_lying_counts_are_eproto)
{
    const struct {
        uint64_t depth, count;
        int want;
    } cases[] = {
        {31, 0, 0},
        {33, 0, TBX_EPROTO},
        {1000, 0, TBX_EPROTO},
        {100000, 0, TBX_EPROTO},
        {0, 0xffffffffu, TBX_EPROTO},
        {0, 3, TBX_EPROTO},
        {5, 1000000, TBX_EPROTO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_sbuffer sb;
        pack(&sb, "a u u", 2, cases[i].depth, cases[i].count);
        tbx_opts o = test_opts(*method);
        o.timeout_s = 60;
        tbx_result r;
        int rc = tbx_call(fn_nest, sb.data, sb.size, &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, cases[i].want, "depth %llu, count %llu: %s: %s",
                     (unsigned long long)cases[i].depth, (unsigned long long)cases[i].count,
                     tbx_err_name(rc), r.message);
        if (rc == 0)
            cr_assert_eq(r.value.type, MSGPACK_OBJECT_ARRAY);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* ================================================================= args */

static void pack_nested_args(msgpack_sbuffer *sb, int depth)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    for (int i = 0; i < depth; i++)
        msgpack_pack_array(&pk, 1);
    msgpack_pack_int(&pk, 1);
}

/* Args nested deeper than 32, or claiming more elements than they hold:
 * TBX_EINVAL before any child is made.  31 levels are echoed. */
TBX_TEST(args, too_deep_or_huge_counts_refused_before_launch)
{
    int depths[] = {33, 64, 1000, 100000};
    for (size_t i = 0; i < 4; i++) {
        msgpack_sbuffer sb;
        pack_nested_args(&sb, depths[i]);
        tbx_opts o = test_opts(*method);
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, TBX_EINVAL, "depth %d: %s: %s", depths[i], tbx_err_name(rc), r.message);
        cr_assert_eq(r.pid, 0, "depth %d: a child was made", depths[i]);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
    static const unsigned char counts[][12] = {
        {0xdd, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x02},            /* array32 */
        {0xdc, 0xff, 0xff, 0x01},                              /* array16 */
        {0xdf, 0x00, 0x01, 0x00, 0x00, 0xc0, 0xc0},            /* map32 */
        {0x91, 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0},            /* nested */
        {0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b'},              /* str32 */
        {0xc9, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x00},            /* ext32 */
    };
    static const size_t count_len[] = {7, 4, 7, 7, 7, 7};
    for (size_t i = 0; i < 6; i++) {
        tbx_opts o = test_opts(*method);
        tbx_result r;
        int rc = tbx_call(fn_echo, counts[i], count_len[i], &o, &r);
        cr_assert_eq(rc, TBX_EINVAL, "count case %zu: %s", i, tbx_err_name(rc));
        cr_assert_eq(r.pid, 0);
        tbx_result_free(&r);
    }
    /* The deepest accepted nesting goes and comes back. */
    msgpack_sbuffer sb;
    pack_nested_args(&sb, 31);
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "depth 31: %s: %s", tbx_err_name(rc), r.message);
    const msgpack_object *v = &r.value;
    for (int i = 0; i < 31; i++) {
        cr_assert_eq(v->type, MSGPACK_OBJECT_ARRAY, "level %d", i);
        v = &v->via.array.ptr[0];
    }
    cr_assert_eq(obj_int(v), 1);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* The same refusals through the async door: no callback, nothing started. */
TBX_TEST(args, async_refuses_the_same)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_req req;
    msgpack_sbuffer sb;
    pack_nested_args(&sb, 40);
    tbx_opts o = test_opts(*method);
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, ignore_cb),
                 TBX_EINVAL);
    static const unsigned char two[] = {0x01, 0x02};
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, two, sizeof two, &o, ignore_cb), TBX_EINVAL);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* 32 one-element arrays around an empty array (or map): 33 bytes that
 * tbx__msgpack_check accepts (an empty container opens no level) but that
 * msgpack-c cannot unpack (its 32-entry stack is full before it sees the
 * container is empty; MSGPACK_UNPACK_NOMEM_ERROR).  Found by fuzz_frames.
 * Args the library cannot unpack must be refused before launch, with
 * TBX_EINVAL, under every method. */
TBX_TEST(args, empty_container_inside_32_levels_is_einval)
{
    unsigned char args[2][33];
    memset(args[0], 0x91, 32);
    args[0][32] = 0x90; /* [] */
    memset(args[1], 0x91, 32);
    args[1][32] = 0x80; /* {} */
    for (int i = 0; i < 2; i++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = 30;
        tbx_result r;
        int rc = tbx_call(fn_echo, args[i], sizeof args[i], &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, TBX_EINVAL, "%s at depth 33: %s: %s", i ? "{}" : "[]", tbx_err_name(rc),
                     r.message);
        cr_assert_eq(r.pid, 0, "a child was made for args that cannot be unpacked");
        tbx_result_free(&r);
    }
}
