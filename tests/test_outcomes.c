/*
 * Outcomes of tbx_call: every status it can return, with the fields of the
 * result that go with it; argument and option checks; error names; results.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

/* ------------------------------------------------------------------ ok */

/* args [n, s] -> {"n": n + 1, "s": s, "list": [0..n), "nested": {...}} */
static int fn_build(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_ARRAY || args->via.array.size != 2)
        return tbx_fail(pk, 1, "expected [n, s]");
    int64_t n = (int64_t)args->via.array.ptr[0].via.u64;
    const msgpack_object_str *s = &args->via.array.ptr[1].via.str;
    msgpack_pack_map(pk, 4);
    msgpack_pack_str_with_body(pk, "n", 1);
    msgpack_pack_int64(pk, n + 1);
    msgpack_pack_str_with_body(pk, "s", 1);
    msgpack_pack_str_with_body(pk, s->ptr, s->size);
    msgpack_pack_str_with_body(pk, "list", 4);
    msgpack_pack_array(pk, (size_t)n);
    for (int64_t i = 0; i < n; i++)
        msgpack_pack_int64(pk, -i);
    msgpack_pack_str_with_body(pk, "nested", 6);
    msgpack_pack_map(pk, 3);
    msgpack_pack_str_with_body(pk, "nil", 3);
    msgpack_pack_nil(pk);
    msgpack_pack_str_with_body(pk, "half", 4);
    msgpack_pack_double(pk, 0.5);
    msgpack_pack_str_with_body(pk, "yes", 3);
    msgpack_pack_true(pk);
    return 0;
}
TBX_REGISTER(fn_build);

TBX_TEST(ok, map_result)
{
    msgpack_sbuffer sb;
    pack(&sb, "a u s", 2, (uint64_t)100, "héllo wörld");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_build, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_MAP);
    cr_assert_eq(r.value.via.map.size, 4);
    cr_assert_eq(obj_int(map_get(&r.value, "n")), 101);
    cr_assert(obj_str_eq(map_get(&r.value, "s"), "héllo wörld"));
    const msgpack_object *list = map_get(&r.value, "list");
    cr_assert_not_null(list);
    cr_assert_eq(list->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(list->via.array.size, 100);
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(obj_int(&list->via.array.ptr[i]), -(int64_t)i);
    const msgpack_object *nested = map_get(&r.value, "nested");
    cr_assert_eq(map_get(nested, "nil")->type, MSGPACK_OBJECT_NIL);
    cr_assert_eq(map_get(nested, "half")->type, MSGPACK_OBJECT_FLOAT64);
    cr_assert_eq(map_get(nested, "half")->via.f64, 0.5);
    cr_assert_eq(map_get(nested, "yes")->type, MSGPACK_OBJECT_BOOLEAN);
    cr_assert(map_get(nested, "yes")->via.boolean);
    cr_assert_eq(r.exit_code, 0);
    cr_assert_eq(r.term_signal, 0);
    cr_assert_eq(r.kill_signal, 0);
    cr_assert_gt(r.pid, 0);
    cr_assert_neq(r.pid, getpid());
    cr_assert_lt(r.elapsed_s, 60.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* Values of every kind come back equal to what was sent. */
TBX_TEST(ok, echo_round_trip)
{
    static const char bin[] = {0, 1, 2, (char)0xff, 0, 42};
    static const char *fmts[] = {"s", "a i i i", "i", "u", "d", "n", "t", "x",
                                 "m s a n f s m", "a", "s"};
    struct {
        msgpack_sbuffer sb;
    } cases[sizeof fmts / sizeof fmts[0]];
    pack(&cases[0].sb, "s", "a string");
    pack(&cases[1].sb, "a i i i", 3, (int64_t)1, (int64_t)-2, (int64_t)INT64_MIN);
    pack(&cases[2].sb, "i", (int64_t)-123456789);
    pack(&cases[3].sb, "u", (uint64_t)UINT64_MAX);
    pack(&cases[4].sb, "d", -1.25e300);
    pack(&cases[5].sb, "n");
    pack(&cases[6].sb, "t");
    pack(&cases[7].sb, "x", (const void *)bin, sizeof bin);
    pack(&cases[8].sb, "m s a n f s m", 2, "k", 2, "k2", 0);
    pack(&cases[9].sb, "a", 0);
    pack(&cases[10].sb, "s", "");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_zone zone;
        msgpack_object want;
        size_t off = 0;
        msgpack_zone_init(&zone, 256);
        cr_assert_eq(msgpack_unpack(cases[i].sb.data, cases[i].sb.size, &off, &zone, &want),
                     MSGPACK_UNPACK_SUCCESS);
        tbx_opts o = test_opts(*method);
        tbx_result r;
        int rc = tbx_call(fn_echo, cases[i].sb.data, cases[i].sb.size, &o, &r);
        check_common(rc, &r);
        cr_assert_eq(rc, 0, "case %zu: %s: %s", i, tbx_err_name(rc), r.message);
        cr_assert(msgpack_object_equal(r.value, want), "case %zu (%s) differs", i, fmts[i]);
        tbx_result_free(&r);
        msgpack_zone_destroy(&zone);
        msgpack_sbuffer_destroy(&cases[i].sb);
    }
}

/* A result exactly max_result bytes long is accepted. */
TBX_TEST(ok, result_at_max_result)
{
    char text[200];
    memset(text, 'z', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    msgpack_sbuffer sb;
    pack(&sb, "s", text);
    tbx_opts o = test_opts(*method);
    o.max_result = sb.size; /* the echo packs the same bytes */
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, text));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

#define BIG_RESULT ((size_t)32 << 20)

TBX_TEST(ok, result_32mib)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)BIG_RESULT);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    tbx_result r;
    int rc = tbx_call(fn_pattern, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_BIN);
    cr_assert_eq(r.value.via.bin.size, BIG_RESULT);
    const unsigned char *p = (const unsigned char *)r.value.via.bin.ptr;
    for (size_t i = 0; i < BIG_RESULT; i++)
        if (p[i] != pattern(i))
            cr_assert_fail("byte %zu is %u, not %u", i, p[i], pattern(i));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A big result of many small pieces: past 1 MiB it moves into the call's
 * bulk memfd, and the pieces on both sides of the move arrive in order. */
static int fn_many_ints(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    uint64_t n = args->via.u64;
    msgpack_pack_array(pk, (size_t)n);
    for (uint64_t i = 0; i < n; i++)
        msgpack_pack_uint64(pk, i * 2654435761u);
    return 0;
}
TBX_REGISTER(fn_many_ints);

static void check_many_ints(const tbx_result *r, uint64_t n)
{
    cr_assert_eq(r->value.type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(r->value.via.array.size, n);
    for (uint64_t i = 0; i < n; i++)
        if (r->value.via.array.ptr[i].via.u64 != i * 2654435761u)
            cr_assert_fail("item %llu is wrong", (unsigned long long)i);
}

TBX_TEST(ok, result_of_small_pieces_past_1mib)
{
    uint64_t n = 600000; /* about 3 MiB of uint32s */
    msgpack_sbuffer sb;
    pack(&sb, "u", n);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    tbx_result r;
    int rc = tbx_call(fn_many_ints, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    check_many_ints(&r, n);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* The bulk memfd of this call, as the child sees it; -1 if none. */
static int find_bulk_fd(void)
{
    int fds[MAX_FDS], found = -1;
    int n = list_fds(0, fds, MAX_FDS);
    for (int i = 0; i < n && i < MAX_FDS; i++) {
        char target[256];
        fd_target(fds[i], target, sizeof target);
        if (strstr(target, "memfd:timebox-result") != NULL)
            found = fds[i];
    }
    return found;
}

/* Maps the call's bulk memfd writable and keeps it mapped, so that it
 * cannot be sealed.  0, or a tbx_fail code. */
static int spoil_bulk(msgpack_packer *pk, int fd)
{
    if (mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED)
        return tbx_fail(pk, 2, "map: %s", strerror(errno));
    return 0;
}

/* args [n, how]: how 0: spoils the call's bulk memfd (spoil_bulk), which is
 * there from the start or, where the child makes it (fork), once the result
 * has grown past 1 MiB; how 1: a file size limit of 64 KiB, which writing
 * past it into the memfd would meet (SIGXFSZ).  Then packs fn_many_ints's
 * result: either way it must come down the pipe instead. */
static int fn_bulk_unusable(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    uint64_t how = args->via.array.ptr[1].via.u64, n = args->via.array.ptr[0].via.u64;
    if (how == 0) {
        int fd = find_bulk_fd(), spoiled = fd >= 0;
        if (spoiled && spoil_bulk(pk, fd) != 0)
            return 0;
        msgpack_pack_array(pk, (size_t)n);
        for (uint64_t i = 0; i < n; i++) {
            msgpack_pack_uint64(pk, i * 2654435761u);
            if (!spoiled && i % 4096 == 0 && (fd = find_bulk_fd()) >= 0) {
                spoiled = 1;
                if (spoil_bulk(pk, fd) != 0)
                    return 0;
            }
        }
        return spoiled ? 0 : tbx_fail(pk, 1, "no bulk memfd");
    } else {
        struct rlimit lim = {65536, 65536};
        if (setrlimit(RLIMIT_FSIZE, &lim) != 0)
            return tbx_fail(pk, 3, "setrlimit: %s", strerror(errno));
    }
    return fn_many_ints(&args->via.array.ptr[0], pk, ctx);
}
TBX_REGISTER(fn_bulk_unusable);

TBX_TEST(ok, result_goes_down_the_pipe_when_the_memfd_cannot_take_it)
{
    uint64_t n = 600000;
    /* A pooled process has no bulk memfd to spoil: its big results always
     * come down the pipe (how 1 still holds). */
    for (uint64_t how = *method == TBX_POOL ? 1 : 0; how < 2; how++) {
        msgpack_sbuffer sb;
        pack(&sb, "a uu", 2, n, how);
        tbx_opts o = test_opts(*method);
        o.timeout_s = 100;
        tbx_result r;
        int rc = tbx_call(fn_bulk_unusable, sb.data, sb.size, &o, &r);
        check_common(rc, &r);
        cr_assert_eq(rc, 0, "how %llu: %s: %s", (unsigned long long)how, tbx_err_name(rc),
                     r.message);
        check_many_ints(&r, n);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Large arguments reach the child intact (echoed back): 768 KiB, more than
 * a socket takes at once and less than the 1 MiB from which they go in a
 * memfd (the rest of the request follows from the caller's loop), and
 * 8 MiB. */
/* len bytes of data, as a bin, echoed back intact by method, the call
 * labelled label (or not, if NULL). */
static void echo_bin(tbx_method method, const unsigned char *data, size_t len, const char *label)
{
    msgpack_sbuffer sb;
    pack(&sb, "x", (const void *)data, len);
    tbx_opts o = test_opts(method);
    o.label = label;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, 0, "%zu bytes: %s: %s", len, tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_BIN);
    cr_assert_eq(r.value.via.bin.size, len);
    cr_assert(len == 0 || memcmp(r.value.via.bin.ptr, data, len) == 0, "%zu bytes", len);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(ok, args_768kib_and_8mib)
{
    size_t sizes[] = {(size_t)768 << 10, (size_t)8 << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t len = sizes[k];
        unsigned char *data = malloc(len);
        cr_assert_not_null(data);
        for (size_t i = 0; i < len; i++)
            data[i] = pattern(i + k);
        echo_bin(*method, data, len, NULL);
        free(data);
    }
}

/* Args of every size around the first read's reach: a worker, warm child or
 * pooled process takes the header and up to 256 bytes after it (name, label,
 * args) in one receive, the rest in the next.  Echoed intact, with no label
 * and with one of TBX_MAX_LABEL bytes, whichever piece the bytes fall in. */
TBX_TEST(ok, args_of_every_size_across_the_first_read)
{
    static char label[TBX_MAX_LABEL + 1];
    memset(label, 'l', TBX_MAX_LABEL);
    unsigned char data[600];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = pattern(i);
    for (size_t len = 200; len <= 300; len++)
        echo_bin(*method, data, len, NULL);
    for (size_t len = 0; len <= 40; len++)
        echo_bin(*method, data, len, label);
}

TBX_TEST(ok, opts_null_uses_defaults)
{
    msgpack_sbuffer sb;
    pack(&sb, "i", (int64_t)-7);
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, NULL, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(obj_int(&r.value), -7);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_PLAIN_TEST(ok, opts_init_defaults)
{
    tbx_opts o;
    memset(&o, 0xa5, sizeof o);
    tbx_opts_init(&o);
    cr_assert_eq(o.timeout_s, 0.0);
    cr_assert_eq(o.grace_s, 1.0);
    cr_assert_eq(o.method, TBX_METHOD_DEFAULT);
    cr_assert_eq(o.hard_timeout, 1);
    cr_assert_eq(o.reset_signals, 1);
    cr_assert_eq(o.max_result, (size_t)256 << 20);
    cr_assert_null(o.ctx);
}

TBX_PLAIN_TEST(ok, default_method)
{
    cr_assert_eq(tbx_set_default_method(TBX_FORK), 0);
    cr_assert_eq(tbx_set_default_method((tbx_method)99), TBX_EINVAL);
    msgpack_sbuffer sb;
    pack(&sb, "s", "default");
    tbx_opts o = test_opts(TBX_METHOD_DEFAULT);
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "default"));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------------ timeouts */

TBX_TEST(timeout, sleeping_child_gets_sigterm)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.2;
    o.grace_s = 5;
    tbx_result r;
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGTERM);
    cr_assert_eq(r.term_signal, SIGTERM);
    cr_assert_eq(r.exit_code, -1);
    cr_assert_gt(r.pid, 0);
    cr_assert_geq(r.elapsed_s, 0.2);
    cr_assert_lt(r.elapsed_s, 30.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(timeout, child_ignoring_sigterm_gets_sigkill)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 1.0; /* time enough for the child to ignore SIGTERM first */
    o.grace_s = 0.3;
    tbx_result r;
    int rc = tbx_call(fn_ignore_term, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_eq(r.exit_code, -1);
    cr_assert_geq(r.elapsed_s, 1.3, "elapsed %f", r.elapsed_s);
    cr_assert_lt(r.elapsed_s, 30.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(timeout, zero_grace_sends_sigkill_at_once)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.2;
    o.grace_s = 0;
    tbx_result r;
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A child that finishes well before its deadline is not signalled. */
TBX_TEST(timeout, fast_child_not_signalled)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)10);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, 0);
    cr_assert_eq(obj_int(&r.value), 10);
    cr_assert_geq(r.elapsed_s, 0.01);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------ crashes and exits */

TBX_TEST(crash, sigsegv)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_segv, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGSEGV);
    cr_assert_eq(r.kill_signal, 0);
    cr_assert_eq(r.exit_code, -1);
    cr_assert_gt(r.pid, 0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(crash, abort_is_sigabrt)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_abort, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGABRT);
    cr_assert_eq(r.kill_signal, 0);
    cr_assert_eq(r.exit_code, -1);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(crash, exit_123)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)123);
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_exit, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_EEXITED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.exit_code, 123);
    cr_assert_eq(r.term_signal, 0);
    cr_assert_eq(r.kill_signal, 0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(crash, exit_0_without_result)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)0);
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_exit, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_EEXITED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.exit_code, 0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* ----------------------------------------------------------------- fail */

static int fn_fail(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    /* Half a result first: an array of 3 with one element.  tbx_fail drops it. */
    msgpack_pack_array(pk, 3);
    msgpack_pack_int(pk, 1);
    return tbx_fail(pk, 42, "bad input %d (%s)", 7, obj_str_eq(args, "x") ? "x" : "?");
}
TBX_REGISTER(fn_fail);

TBX_TEST(fail, tbx_fail_code_and_message)
{
    msgpack_sbuffer sb;
    pack(&sb, "s", "x");
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_fail, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_EFAILED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.fail_code, 42);
    cr_assert_str_eq(r.message, "bad input 7 (x)");
    cr_assert_eq(r.exit_code, 0);
    cr_assert_eq(r.term_signal, 0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static int fn_fail_long(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    static char text[5000];
    memset(text, 'm', sizeof text - 1);
    return tbx_fail(pk, -3, "%s", text);
}
TBX_REGISTER(fn_fail_long);

TBX_TEST(fail, long_message_truncated_at_1023)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_fail_long, sb.data, sb.size, &o, &r);
    check_common(rc, &r);
    cr_assert_eq(rc, TBX_EFAILED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.fail_code, -3);
    cr_assert_eq(strlen(r.message), 1023);
    cr_assert_eq(strspn(r.message, "m"), 1023);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* args: the value to return, having packed a valid result first. */
static int fn_return(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    msgpack_pack_int(pk, 5);
    return (int)obj_int(args);
}
TBX_REGISTER(fn_return);

TBX_TEST(fail, nonzero_return_without_tbx_fail)
{
    int64_t codes[] = {17, -5, 1};
    for (size_t i = 0; i < 3; i++) {
        msgpack_sbuffer sb;
        pack(&sb, "i", codes[i]);
        tbx_opts o = test_opts(*method);
        tbx_result r;
        int rc = tbx_call(fn_return, sb.data, sb.size, &o, &r);
        check_common(rc, &r);
        cr_assert_eq(rc, TBX_EFAILED, "%lld: %s: %s", (long long)codes[i], tbx_err_name(rc),
                     r.message);
        cr_assert_eq(r.fail_code, (int)codes[i]);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
}

TBX_PLAIN_TEST(fail, tbx_fail_outside_a_child)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_int(&pk, 1);
    cr_assert_eq(tbx_fail(&pk, 3, "outside %d", 1), TBX_EFAILED);
    cr_assert_eq(tbx_fail(NULL, 3, "outside"), TBX_EFAILED);
    cr_assert_eq(sb.size, 1, "tbx_fail touched a packer outside a child");
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------- too big, proto */

TBX_TEST(toobig, result_over_max_result)
{
    char text[1000];
    memset(text, 'q', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    msgpack_sbuffer sb;
    pack(&sb, "s", text);
    size_t sizes[] = {100, sb.size - 1};
    for (size_t i = 0; i < 2; i++) {
        tbx_opts o = test_opts(*method);
        o.max_result = sizes[i];
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        check_common(rc, &r);
        cr_assert_eq(rc, TBX_ETOOBIG, "max %zu: %s: %s", sizes[i], tbx_err_name(rc), r.message);
        /* The child may have exited before timebox read the header: then it
         * sent nothing; otherwise SIGKILL. */
        cr_assert(r.kill_signal == 0 || r.kill_signal == SIGKILL, "kill_signal %d",
                  r.kill_signal);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* A big result over a small limit: the child is stopped, the parent's memory
 * stays bounded (nothing to check from here but the status). */
TBX_TEST(toobig, big_result_over_small_limit)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)BIG_RESULT);
    /* Below the 1 MiB where a result moves to the bulk memfd, and above. */
    size_t limits[] = {4096, (size_t)3 << 20};
    for (size_t i = 0; i < 2; i++) {
        tbx_opts o = test_opts(*method);
        o.max_result = limits[i];
        o.timeout_s = 100;
        tbx_result r;
        int rc = tbx_call(fn_pattern, sb.data, sb.size, &o, &r);
        check_common(rc, &r);
        cr_assert_eq(rc, TBX_ETOOBIG, "limit %zu: %s: %s", limits[i], tbx_err_name(rc), r.message);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

static int fn_two_objects(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    msgpack_pack_int(pk, 1);
    msgpack_pack_int(pk, 2);
    return 0;
}
TBX_REGISTER(fn_two_objects);

static int fn_no_object(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)pk, (void)ctx;
    return 0;
}
TBX_REGISTER(fn_no_object);

static int fn_half_object(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    msgpack_pack_array(pk, 2);
    msgpack_pack_int(pk, 1);
    return 0;
}
TBX_REGISTER(fn_half_object);

TBX_TEST(proto, result_not_one_object)
{
    tbx_fn *fns[] = {fn_two_objects, fn_no_object, fn_half_object};
    const char *names[] = {"two objects", "no object", "half an object"};
    msgpack_sbuffer sb;
    pack(&sb, "n");
    for (size_t i = 0; i < 3; i++) {
        tbx_opts o = test_opts(*method);
        tbx_result r;
        int rc = tbx_call(fns[i], sb.data, sb.size, &o, &r);
        check_common(rc, &r);
        cr_assert_eq(rc, TBX_EPROTO, "%s: %s: %s", names[i], tbx_err_name(rc), r.message);
        cr_assert_eq(r.exit_code, 0);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* -------------------------------------------------------------- invalid */

static void expect_einval(tbx_fn *fn, const void *args, size_t len, const tbx_opts *o,
                          const char *what)
{
    tbx_result r;
    memset(&r, 0x5a, sizeof r);
    int rc = tbx_call(fn, args, len, o, &r);
    cr_assert_eq(rc, TBX_EINVAL, "%s: %s", what, tbx_err_name(rc));
    check_common(rc, &r);
    cr_assert_eq(r.pid, 0, "%s: a child was made", what);
    cr_assert_eq(r.exit_code, -1, "%s", what);
    cr_assert_eq(r.term_signal, 0, "%s", what);
    cr_assert_eq(r.kill_signal, 0, "%s", what);
    tbx_result_free(&r);
}

TBX_TEST(invalid, args_not_one_object)
{
    tbx_opts o = test_opts(*method);
    static const unsigned char nil[] = {0xc0};
    static const unsigned char truncated_str[] = {0xa5, 'a', 'b'};
    static const unsigned char truncated_arr[] = {0x93, 0x01, 0x02};
    static const unsigned char truncated_u32[] = {0xce, 0x00, 0x01};
    static const unsigned char trailing[] = {0x01, 0x02};
    static const unsigned char trailing_garbage[] = {0x91, 0xc0, 0xff, 0xff};
    static const unsigned char never_used[] = {0xc1};
    static const unsigned char array_in_never_used[] = {0x91, 0xc1};
    static const unsigned char huge_count[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0};
    static const unsigned char huge_map[] = {0xdf, 0x7f, 0xff, 0xff, 0xff};
    static const unsigned char huge_bin[] = {0xc6, 0xff, 0xff, 0xff, 0xf0, 0x00};

    expect_einval(fn_echo, NULL, 0, &o, "NULL, 0");
    expect_einval(fn_echo, nil, 0, &o, "empty");
    expect_einval(fn_echo, NULL, 1, &o, "NULL, 1");
    expect_einval(fn_echo, truncated_str, sizeof truncated_str, &o, "truncated str");
    expect_einval(fn_echo, truncated_arr, sizeof truncated_arr, &o, "truncated array");
    expect_einval(fn_echo, truncated_u32, sizeof truncated_u32, &o, "truncated uint32");
    expect_einval(fn_echo, trailing, sizeof trailing, &o, "trailing byte");
    expect_einval(fn_echo, trailing_garbage, sizeof trailing_garbage, &o, "trailing garbage");
    expect_einval(fn_echo, never_used, sizeof never_used, &o, "0xc1");
    expect_einval(fn_echo, array_in_never_used, sizeof array_in_never_used, &o, "[0xc1]");
    expect_einval(fn_echo, huge_count, sizeof huge_count, &o, "array32 count lies");
    expect_einval(fn_echo, huge_map, sizeof huge_map, &o, "map32 count lies");
    expect_einval(fn_echo, huge_bin, sizeof huge_bin, &o, "bin32 length lies");

    /* The same bytes, well formed, are accepted. */
    tbx_result r;
    int rc = tbx_call(fn_echo, nil, sizeof nil, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
}

TBX_TEST(invalid, bad_options)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    expect_einval(NULL, sb.data, sb.size, &o, "NULL fn");

    o = test_opts(*method);
    o.grace_s = -0.5;
    expect_einval(fn_echo, sb.data, sb.size, &o, "negative grace");

    o = test_opts(*method);
    o.grace_s = -1e-9;
    expect_einval(fn_echo, sb.data, sb.size, &o, "tiny negative grace");

    o = test_opts(*method);
    o.method = (tbx_method)77;
    expect_einval(fn_echo, sb.data, sb.size, &o, "unknown method");
    msgpack_sbuffer_destroy(&sb);
}

/* ctx is for fork only: other methods refuse it. */
TBX_TEST(invalid, ctx_with_other_methods)
{
    if (*method == TBX_FORK)
        cr_skip_test("fork accepts ctx");
    msgpack_sbuffer sb;
    pack(&sb, "n");
    int x = 1;
    tbx_opts o = test_opts(*method);
    o.ctx = &x;
    expect_einval(fn_echo, sb.data, sb.size, &o, "ctx with a method that execs");
    msgpack_sbuffer_destroy(&sb);
}

/* --------------------------------------------------- results and errors */

TBX_TEST(result, free_is_null_safe_and_idempotent)
{
    tbx_result_free(NULL);
    msgpack_sbuffer sb;
    pack(&sb, "s", "free me");
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    cr_assert_eq(r.status, 0);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_NIL);
    cr_assert_null(r.message);
    tbx_result_free(&r);
    tbx_result_free(&r);

    /* An error result with an allocated message, freed twice. */
    rc = tbx_call(fn_fail, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_EFAILED);
    tbx_result_free(&r);
    cr_assert_null(r.message);
    tbx_result_free(&r);

    /* A zeroed result never used. */
    tbx_result z;
    memset(&z, 0, sizeof z);
    tbx_result_free(&z);
    tbx_result_free(&z);
    msgpack_sbuffer_destroy(&sb);
}

TBX_PLAIN_TEST(errors, names_and_messages)
{
    int n = 0;
#define CHECK_CODE(name, value, msg)                                            \
    cr_assert_eq(TBX_##name, value);                                            \
    cr_assert_str_eq(tbx_err_name(TBX_##name), "TBX_" #name);                   \
    cr_assert_str_eq(tbx_strerror(TBX_##name), msg);                            \
    cr_assert_lt(TBX_##name, -4095, #name " overlaps errno");                   \
    n++;
    TBX_ERRNO_MAP(CHECK_CODE)
#undef CHECK_CODE
    cr_assert_eq(n, 9);

    cr_assert_str_eq(tbx_err_name(0), "OK");
    cr_assert_not_null(tbx_strerror(0));
    cr_assert_str_eq(tbx_err_name(-EAGAIN), "EAGAIN");
    cr_assert_str_eq(tbx_strerror(-EAGAIN), "Resource temporarily unavailable");
    cr_assert_str_eq(tbx_err_name(-EMFILE), "EMFILE");
    cr_assert_str_eq(tbx_strerror(-EMFILE), "Too many open files");
    cr_assert_str_eq(tbx_err_name(-ENOMEM), "ENOMEM");
    cr_assert_str_eq(tbx_err_name(12345), "UNKNOWN");
    cr_assert_str_eq(tbx_err_name(-29999), "UNKNOWN");
    cr_assert_str_eq(tbx_err_name(-4000), "UNKNOWN");
    cr_assert_not_null(tbx_strerror(12345));
    cr_assert_not_null(tbx_strerror(-4000));
    cr_assert_not_null(tbx_strerror(-30010));
    cr_assert_not_null(tbx_strerror(INT32_MIN));
    cr_assert_str_eq(tbx_err_name(INT32_MIN), "UNKNOWN");
}

static int fn_unregistered(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)pk, (void)ctx;
    return 0;
}

TBX_PLAIN_TEST(registry, lookup_and_name)
{
    cr_assert_eq(tbx_lookup("fn_echo"), fn_echo);
    cr_assert_eq(tbx_lookup("fn_build"), fn_build);
    cr_assert_str_eq(tbx_name_of(fn_echo), "fn_echo");
    cr_assert_str_eq(tbx_name_of(fn_pattern), "fn_pattern");
    cr_assert_null(tbx_lookup("no_such_function"));
    cr_assert_null(tbx_lookup(NULL));
    cr_assert_null(tbx_name_of(fn_unregistered));
}
