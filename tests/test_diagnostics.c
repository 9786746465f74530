/*
 * Control and diagnostics, under every start method: captured output, the
 * child's resource limits, where a stuck call was, where the time went, and
 * timebox's own log.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <timebox/uv.h>
#include <unistd.h>

/* args: [lines, bytes of stderr]; prints numbered lines to stdout and a
 * block of 'e's to stderr. */
static int fn_chatty(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    uint64_t lines = args->via.array.ptr[0].via.u64, err = args->via.array.ptr[1].via.u64;
    for (uint64_t i = 0; i < lines; i++)
        printf("line %llu\n", (unsigned long long)i);
    fflush(stdout);
    for (uint64_t i = 0; i < err; i++)
        fputc('e', stderr);
    fflush(stderr);
    return msgpack_pack_true(pk);
}
TBX_REGISTER(fn_chatty);

TBX_TEST(capture, stdout_and_stderr_come_back)
{
    msgpack_sbuffer sb;
    pack(&sb, "a u u", 2, (uint64_t)3, (uint64_t)5);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.capture_output = 4096;
    tbx_result r;
    int rc = tbx_call(fn_chatty, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_str_eq(r.stdout_data, "line 0\nline 1\nline 2\n");
    cr_assert_eq(r.stdout_len, 21);
    cr_assert_str_eq(r.stderr_data, "eeeee");
    cr_assert(!r.stdout_truncated && !r.stderr_truncated);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(capture, a_flood_is_bounded_and_never_blocks_the_child)
{
    /* 4 MiB of stdout against a 1 KiB limit: far more than a pipe holds, so
     * a child would block if nobody drained it. */
    msgpack_sbuffer sb;
    pack(&sb, "a u u", 2, (uint64_t)400000, (uint64_t)0);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    o.capture_output = 1024;
    tbx_result r;
    int rc = tbx_call(fn_chatty, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.stdout_len, 1024);
    cr_assert(r.stdout_truncated);
    cr_assert_eq(strncmp(r.stdout_data, "line 0\nline 1\n", 14), 0);
    cr_assert_eq(strlen(r.stdout_data), 1024);
    cr_assert_eq(r.stderr_len, 0);
    cr_assert_str_eq(r.stderr_data, "");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(capture, off_by_default)
{
    msgpack_sbuffer sb;
    pack(&sb, "s", "x");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    tbx_result r;
    cr_assert_eq(tbx_call(fn_echo, sb.data, sb.size, &o, &r), 0);
    cr_assert_null(r.stdout_data);
    cr_assert_null(r.stderr_data);
    cr_assert_null(r.backtrace);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------------------ limits */

/* Packs [RLIMIT_CORE soft, RLIMIT_AS soft, RLIMIT_NOFILE soft]. */
static int fn_limits(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    int which[3] = {RLIMIT_CORE, RLIMIT_AS, RLIMIT_NOFILE};
    msgpack_pack_array(pk, 3);
    for (int i = 0; i < 3; i++) {
        struct rlimit rl;
        getrlimit(which[i], &rl);
        msgpack_pack_uint64(pk, rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : rl.rlim_cur);
    }
    return 0;
}
TBX_REGISTER(fn_limits);

/* A sanitizer reserves terabytes of address space: RLIMIT_AS cannot be
 * tested under one. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SKIP_UNDER_SANITIZER() cr_skip_test("RLIMIT_AS under a sanitizer")
#else
#define SKIP_UNDER_SANITIZER() ((void)0)
#endif

TBX_TEST(limits, set_in_the_child_and_no_core_by_default)
{
    SKIP_UNDER_SANITIZER();
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.limit_memory = (size_t)1 << 34; /* 16 GiB: a limit, not a hindrance */
    o.limit_files = 77;
    tbx_result r;
    int rc = tbx_call(fn_limits, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    const msgpack_object *v = r.value.via.array.ptr;
    cr_assert_eq(v[0].via.u64, 0, "core dumps are on");
    cr_assert_eq(v[1].via.u64, (uint64_t)1 << 34);
    cr_assert_eq(v[2].via.u64, 77);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static int fn_spin(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)pk, (void)ctx;
    for (volatile uint64_t i = 0;; i++)
        ;
    return 0;
}
TBX_REGISTER(fn_spin);

TBX_TEST(limits, cpu_limit_is_sigxcpu)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60; /* far: the CPU limit ends it first */
    o.limit_cpu_s = 0.5;
    tbx_result r;
    int rc = tbx_call(fn_spin, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGXCPU);
    cr_assert_eq(r.kill_signal, 0);
    cr_assert(strstr(r.message, "CPU") != NULL, "%s", r.message);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A 64 MiB allocation under a 32 MiB address-space limit fails, and fn says
 * so its own way. */
static int fn_alloc(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    void *p = malloc((size_t)args->via.u64);
    if (p == NULL)
        return tbx_fail(pk, 12, "out of memory");
    free(p);
    return msgpack_pack_true(pk);
}
TBX_REGISTER(fn_alloc);

TBX_TEST(limits, memory_limit_fails_allocations)
{
    SKIP_UNDER_SANITIZER();
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)1 << 30);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.limit_memory = (size_t)512 << 20; /* the child's mappings fit; 1 GiB more does not */
    tbx_result r;
    int rc = tbx_call(fn_alloc, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_EFAILED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.fail_code, 12);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* --------------------------------------------------------- where it stuck */

__attribute__((noinline)) void tbx_test_deep_wait(void);
__attribute__((noinline)) void tbx_test_deep_wait(void)
{
    for (;;)
        pause();
}

static int fn_stuck(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)pk, (void)ctx;
    tbx_test_deep_wait();
    return 0;
}
TBX_REGISTER(fn_stuck);

TBX_TEST(backtrace, a_stuck_call_says_where)
{
    if (*method == TBX_POOL)
        cr_skip_test("TBX_POOL refuses backtrace_on_timeout: test_pool.c");
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.3;
    o.hard_timeout = 0; /* from fn's start: a slow start takes no time from it */
    o.grace_s = 0.2;
    o.backtrace_on_timeout = 1;
    tbx_result r;
    int rc = tbx_call(fn_stuck, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_not_null(r.backtrace, "no backtrace came");
    cr_assert(strstr(r.backtrace, "tbx_test_deep_wait") != NULL, "not where it was:\n%s",
              r.backtrace);
    cr_assert_eq(r.kill_signal, SIGTERM);
    cr_assert_lt(r.elapsed_s, 10.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(backtrace, a_call_that_finishes_has_none)
{
    if (*method == TBX_POOL)
        cr_skip_test("TBX_POOL refuses backtrace_on_timeout: test_pool.c");
    msgpack_sbuffer sb;
    pack(&sb, "s", "fine");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.backtrace_on_timeout = 1;
    tbx_result r;
    cr_assert_eq(tbx_call(fn_echo, sb.data, sb.size, &o, &r), 0);
    cr_assert_null(r.backtrace);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------------------ timings */

TBX_TEST(timings, add_up_and_say_where_time_went)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)300);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_geq(r.running_s, 0.25, "running %.3f s of a 300 ms sleep", r.running_s);
    cr_assert(r.queued_s >= 0 && r.startup_s >= 0 && r.teardown_s >= 0);
    double sum = r.queued_s + r.startup_s + r.running_s + r.teardown_s;
    cr_assert_lt(sum - r.elapsed_s, 1e-6);
    cr_assert_lt(r.elapsed_s - sum, 1e-6);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* --------------------------------------------------------------------- log */

static int log_lines, log_kills;

static void count_log(tbx_log_level level, const char *msg, void *arg)
{
    (void)arg;
    log_lines++;
    if (level == TBX_LOG_INFO && strstr(msg, "SIGKILL") != NULL)
        log_kills++;
}

TBX_TEST(log, an_escalation_to_sigkill_is_told)
{
    tbx_set_log(count_log, NULL);
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.2;
    o.grace_s = 0.1;
    tbx_result r;
    int rc = tbx_call(fn_ignore_term, sb.data, sb.size, &o, &r);
    tbx_set_log(NULL, NULL);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(log_kills, 1, "%d escalations told (%d lines)", log_kills, log_lines);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* ---------------------------------------------------- the cap on children */

/* args: ms; sleeps, then packs [start, end] on CLOCK_MONOTONIC (the same
 * clock in every process). */
static int fn_timed_nap(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    double start = now_s();
    child_sleep((double)args->via.u64 / 1000.0);
    msgpack_pack_array(pk, 2);
    msgpack_pack_double(pk, start);
    return msgpack_pack_double(pk, now_s());
}
TBX_REGISTER(fn_timed_nap);

struct nap_arg {
    tbx_method method;
    double start, end, queued;
    int rc;
};

static void *nap_thread(void *p)
{
    struct nap_arg *a = p;
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)150);
    tbx_opts o = test_opts(a->method);
    o.timeout_s = 60;
    tbx_result r;
    a->rc = tbx_call(fn_timed_nap, sb.data, sb.size, &o, &r);
    if (a->rc == 0) {
        a->start = r.value.via.array.ptr[0].via.f64;
        a->end = r.value.via.array.ptr[1].via.f64;
        a->queued = r.queued_s;
    }
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    return NULL;
}

TBX_TEST(cap, one_at_a_time_across_threads)
{
    tbx_set_max_children(1);
    pthread_t t[3];
    struct nap_arg a[3];
    for (int i = 0; i < 3; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].method = *method;
        cr_assert_eq(pthread_create(&t[i], NULL, nap_thread, &a[i]), 0);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    tbx_set_max_children(0);
    double queued = 0;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(a[i].rc, 0, "call %d: %s", i, tbx_err_name(a[i].rc));
        queued += a[i].queued;
        for (int j = 0; j < i; j++)
            cr_assert(a[i].end <= a[j].start || a[j].end <= a[i].start,
                      "calls %d and %d ran at once", i, j);
    }
    cr_assert_geq(queued, 0.3, "the calls hardly waited (%.3f s)", queued);
}

static void status_cb(tbx_req *req, tbx_result *r)
{
    *(int *)req->data = r->status;
    tbx_result_free(r);
}

TBX_TEST(cap, waiting_async_calls_can_be_cancelled_or_time_out)
{
    tbx_set_max_children(1);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)300);
    tbx_req req[3];
    int status[3] = {1, 1, 1};
    for (int i = 0; i < 3; i++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = i == 2 ? 0.1 : 60; /* the third times out waiting */
        req[i].data = &status[i];
        cr_assert_eq(tbx_call_async(&loop, &req[i], fn_timed_nap, sb.data, sb.size, &o,
                                    status_cb),
                     0);
    }
    cr_assert_eq(tbx_cancel(&req[1]), 0); /* waiting: never runs */
    uv_run(&loop, UV_RUN_DEFAULT);
    tbx_set_max_children(0);
    cr_assert_eq(status[0], 0, "%s", tbx_err_name(status[0]));
    cr_assert_eq(status[1], TBX_ECANCELED, "%s", tbx_err_name(status[1]));
    cr_assert_eq(status[2], TBX_ETIMEDOUT, "%s", tbx_err_name(status[2]));
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(cap, a_blocking_call_times_out_waiting)
{
    tbx_set_max_children(1);
    pthread_t t;
    struct nap_arg a;
    memset(&a, 0, sizeof a);
    a.method = *method;
    cr_assert_eq(pthread_create(&t, NULL, nap_thread, &a), 0);
    sleep_s(0.05); /* the thread's call holds the one slot for 150 ms */
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)10);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.02;
    tbx_result r;
    int rc = tbx_call(fn_timed_nap, sb.data, sb.size, &o, &r);
    pthread_join(t, NULL);
    tbx_set_max_children(0);
    /* On a slow machine the thread may not have its slot yet: then ours
     * runs, and its own 20 ms deadline meets a 10 ms nap.  Either way it
     * must not wait past its deadline. */
    cr_assert(rc == TBX_ETIMEDOUT || rc == 0, "%s: %s", tbx_err_name(rc), r.message);
    if (rc == TBX_ETIMEDOUT && r.pid == 0)
        cr_assert(strstr(r.message, "slot") != NULL, "%s", r.message);
    cr_assert_lt(r.elapsed_s, 5.0);
    cr_assert_eq(a.rc, 0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}
