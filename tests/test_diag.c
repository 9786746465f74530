/*
 * Traces from outside the child, under every start method: at the deadline
 * (a child that blocks every signal and holds a lock still says where it
 * is, with file and line), on a crash (opts.backtrace_on_crash), and the
 * child's own handler where ptrace is refused, the result saying which.
 * What a call cost, its label, the observer and the output callback are in
 * test_observe.c.
 */
#include "helpers.h"

#include "../lib/trace.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

/* Whether this build and machine can trace from outside: the tracer's own
 * suite (test_trace) tests it; here a missing libdw skips. */
static int tracer_built(void)
{
#ifdef TEST_HAVE_LIBDW
    return 1;
#else
    return 0;
#endif
}

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;

/* A function stuck the worst way for a handler: every signal blocked, and
 * waiting forever on a lock it holds itself. */
__attribute__((noinline)) static void tbx_test_wait_on_held_lock(void)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&held);
    pthread_mutex_lock(&held);
    __asm__ volatile("" ::: "memory"); /* not a tail call: keep this frame */
}

static int fn_blocked_on_lock(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    tbx_test_wait_on_held_lock();
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_blocked_on_lock);

/* Calls fn (args nil) with a short deadline and a backtrace asked, and
 * checks it timed out with a backtrace from source. */
static void time_out_traced(tbx_method m, tbx_fn *fn, int source, tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(m);
    o.timeout_s = 0.4;
    o.grace_s = 0.2;
    o.backtrace_on_timeout = 1;
    int rc = tbx_call(fn, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r->message);
    cr_assert_not_null(r->backtrace, "no backtrace came");
    cr_log_info("%s", r->backtrace);
    cr_assert_eq(r->backtrace_source, source, "source %d", r->backtrace_source);
}

TBX_TEST(outside, a_child_blocking_every_signal_on_a_lock_says_where_with_file_and_line)
{
    if (*method == TBX_POOL)
        cr_skip_test("TBX_POOL refuses backtraces (EINVAL, test_pool.c)");
    if (!tracer_built())
        cr_skip_test("built without libdw");
    tbx_result r;
    time_out_traced(*method, fn_blocked_on_lock, TBX_BACKTRACE_OUTSIDE, &r);
    char head[64];
    snprintf(head, sizeof head, "thread %d ", (int)r.pid);
    cr_assert(strncmp(r.backtrace, head, strlen(head)) == 0, "fn's thread is not first:\n%s",
              r.backtrace);
    const char *at = strstr(r.backtrace, " tbx_test_wait_on_held_lock+0x");
    cr_assert_not_null(at, "not where it was:\n%s", r.backtrace);
    const char *eol = strchr(at, '\n'), *file = strstr(at, "test_diag.c:");
    cr_assert(file != NULL && (eol == NULL || file < eol), "no file and line:\n%s", r.backtrace);
    cr_assert_gt(atoi(file + strlen("test_diag.c:")), 0);
    tbx_result_free(&r);
}

/* The rest of the line of text that names fn (its symbol, offset, file and
 * line), into out. */
static void frame_named(const char *text, const char *fn, char *out, size_t cap)
{
    char want[128];
    snprintf(want, sizeof want, " %s+0x", fn);
    const char *at = strstr(text, want);
    cr_assert_not_null(at, "no frame in %s:\n%s", fn, text);
    size_t len = strcspn(at, "\n");
    cr_assert_lt(len, cap);
    memcpy(out, at, len);
    out[len] = '\0';
}

/* The second trace names frames from the files the first read (a spawned
 * worker at other addresses than the first): the same names, files and
 * lines.  Under fork and spawn this process traces, and reads no file
 * again (unless the first trace's time ran out before it read them all). */
TBX_TEST(outside, a_second_trace_names_fns_frames_as_the_first)
{
    if (*method == TBX_POOL)
        cr_skip_test("TBX_POOL refuses backtraces (EINVAL, test_pool.c)");
    if (!tracer_built())
        cr_skip_test("built without libdw");
    char named[2][2][512];
    unsigned long reads[2];
    int late = 0;
    for (int i = 0; i < 2; i++) {
        tbx_result r;
        time_out_traced(*method, fn_blocked_on_lock, TBX_BACKTRACE_OUTSIDE, &r);
        reads[i] = tbx__trace_cache_reads();
        late |= i == 0 && strstr(r.backtrace, "time ran out") != NULL;
        frame_named(r.backtrace, "tbx_test_wait_on_held_lock", named[i][0], sizeof named[i][0]);
        frame_named(r.backtrace, "fn_blocked_on_lock", named[i][1], sizeof named[i][1]);
        tbx_result_free(&r);
    }
    cr_assert(strstr(named[1][0], "test_diag.c:") != NULL, "%s", named[1][0]);
    cr_assert_str_eq(named[1][0], named[0][0]);
    cr_assert_str_eq(named[1][1], named[0][1]);
    if ((*method == TBX_FORK || *method == TBX_SPAWN) && !late)
        cr_assert_eq(reads[1], reads[0], "the second trace read files again");
}

/* A real fault: a write through a null pointer (volatile, so it happens). */
__attribute__((noinline)) static void tbx_test_fault_here(int *volatile *where)
{
    **where = 42;
    __asm__ volatile("" ::: "memory");
}

/* args: 0 faults, 1 raises SIGSEGV, 2 aborts. */
static int fn_crash(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    int *volatile null = NULL;
    if (args->via.u64 == 0)
        tbx_test_fault_here(&null);
    else if (args->via.u64 == 1)
        raise(SIGSEGV);
    else
        abort();
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_crash);

static void crash_with_trace(tbx_method m, uint64_t how, int sig, const char *where)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", how);
    tbx_opts o = test_opts(m);
    o.timeout_s = 30;
    o.backtrace_on_crash = 1;
    tbx_result r;
    int rc = tbx_call(fn_crash, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, sig, "signal %d", r.term_signal);
    cr_assert_not_null(r.backtrace, "no trace of the crash");
    cr_log_info("%s", r.backtrace);
    cr_assert_eq(r.backtrace_source, TBX_BACKTRACE_OUTSIDE);
    char want[96];
    snprintf(want, sizeof want, " %s", where); /* fn+0x, or a part: fn.cold+0x */
    const char *at = strstr(r.backtrace, want);
    cr_assert_not_null(at, "no frame in %s:\n%s", where, r.backtrace);
    const char *eol = strchr(at, '\n'), *file = strstr(at, "test_diag.c:");
    cr_assert(file != NULL && (eol == NULL || file < eol), "no file and line:\n%s", r.backtrace);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A sanitizer catches a real fault itself (its own SIGSEGV handler, or
 * UBSan's null-store check) before timebox's handler could. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SKIP_REAL_FAULT() cr_skip_test("a sanitizer handles the fault itself")
#else
#define SKIP_REAL_FAULT() ((void)0)
#endif

TBX_TEST(crash, a_fault_comes_back_with_where_it_happened)
{
    if (*method == TBX_POOL)
        cr_skip_test("TBX_POOL refuses backtraces (EINVAL, test_pool.c)");
    SKIP_REAL_FAULT();
    if (!tracer_built())
        cr_skip_test("built without libdw");
    crash_with_trace(*method, 0, SIGSEGV, "tbx_test_fault_here");
}

TBX_TEST(crash, a_raised_signal_and_an_abort_come_back_traced_and_still_kill)
{
    if (*method == TBX_POOL)
        cr_skip_test("TBX_POOL refuses backtraces (EINVAL, test_pool.c)");
    if (!tracer_built())
        cr_skip_test("built without libdw");
    crash_with_trace(*method, 1, SIGSEGV, "fn_crash");
    crash_with_trace(*method, 2, SIGABRT, "fn_crash");
}

TBX_TEST(crash, without_the_option_a_crash_has_no_trace)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)1); /* raised: a sanitizer lets it through */
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    tbx_result r;
    cr_assert_eq(tbx_call(fn_crash, sb.data, sb.size, &o, &r), TBX_ECRASHED);
    cr_assert_eq(r.term_signal, SIGSEGV);
    cr_assert_null(r.backtrace);
    cr_assert_eq(r.backtrace_source, TBX_BACKTRACE_NONE);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* Where ptrace is refused, the child's own handler answers, and the result
 * says so.  Refused here because another tracer holds the child already: a
 * helper fn forks attaches to it (and passes its signals on). */
void tbx_test_wait_while_traced(void);
__attribute__((noinline)) void tbx_test_wait_while_traced(void)
{
    for (;;)
        pause();
}

static void trace_my_parent(pid_t parent, int ready_fd)
{
    if (ptrace(PTRACE_SEIZE, parent, NULL, NULL) != 0)
        _exit(1);
    (void)write(ready_fd, "t", 1);
    for (;;) {
        int st;
        if (waitpid(parent, &st, __WALL) != parent || !WIFSTOPPED(st))
            _exit(0);
        int event = st >> 16, sig = WSTOPSIG(st);
        (void)ptrace(PTRACE_CONT, parent, NULL, (void *)(long)(event != 0 ? 0 : sig));
    }
}

static int fn_traced_by_another(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    int p[2];
    char c;
    if (pipe(p) != 0)
        return tbx_fail(pk, 1, "pipe");
    pid_t parent = getpid();
    pid_t helper = fork();
    if (helper == 0)
        trace_my_parent(parent, p[1]);
    if (helper < 0 || read(p[0], &c, 1) != 1)
        return tbx_fail(pk, 2, "no tracer");
    tbx_test_wait_while_traced();
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_traced_by_another);

TBX_TEST(outside, where_ptrace_is_refused_the_childs_handler_answers_and_says_so)
{
    if (*method == TBX_POOL)
        cr_skip_test("TBX_POOL refuses backtraces (EINVAL, test_pool.c)");
    tbx_result r;
    time_out_traced(*method, fn_traced_by_another, TBX_BACKTRACE_HANDLER, &r);
    cr_assert(strstr(r.backtrace, "tbx_test_wait_while_traced") != NULL, "%s", r.backtrace);
    tbx_result_free(&r);
}
