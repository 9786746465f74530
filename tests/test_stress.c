/*
 * Many calls: hundreds in a row with every outcome, calls from several
 * threads at once, and calls from a caller under a storm of signals.  The
 * fixture then checks that no descriptor and no child (or zombie) is left.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

/* One fn_mixed call; returns NULL or what went wrong. */
static const char *mixed_call(tbx_method m, int kind, int64_t n, int soft)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, kind);
    msgpack_pack_int64(&pk, n);
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = m;
    o.hard_timeout = !soft;
    if (kind == MIX_HANG) {
        o.timeout_s = 0.05;
        o.grace_s = 0.05;
    } else {
        o.timeout_s = 60; /* a deadline that never fires */
    }
    tbx_result r;
    int rc = tbx_call(fn_mixed, sb.data, sb.size, &o, &r);
    const char *bad = mixed_mismatch(kind, n, rc, &r);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    return bad;
}

TBX_TEST_T(stress, sequential_300_mixed, 300.0)
{
    int failures = 0;
    char first[512] = "";
    for (int i = 0; i < 300; i++) {
        int kind = i % MIX_KINDS;
        int64_t n = kind == MIX_EXIT ? 1 + i % 100 : i;
        const char *bad = mixed_call(*method, kind, n, i % 3 == 0);
        if (bad != NULL && failures++ == 0)
            snprintf(first, sizeof first, "call %d: %s", i, bad);
    }
    cr_assert_eq(failures, 0, "%d of 300 calls wrong; first: %s", failures, first);
}

/* Refused calls in between do not leak either. */
TBX_TEST(stress, refused_calls_leave_nothing)
{
    static const unsigned char bad_args[] = {0xc1};
    msgpack_sbuffer sb;
    pack(&sb, "n");
    for (int i = 0; i < 200; i++) {
        tbx_opts o = test_opts(*method);
        tbx_result r;
        int rc;
        if (i % 2) {
            rc = tbx_call(fn_echo, bad_args, sizeof bad_args, &o, &r);
        } else {
            o.grace_s = -1;
            o.timeout_s = 1;
            rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        }
        cr_assert_eq(rc, TBX_EINVAL);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------------- threads */

#define THREADS 8
#define CALLS_PER_THREAD 50

struct worker {
    pthread_t thread;
    tbx_method method;
    int index;
    int failures;
    char first[512];
};

static void *worker_main(void *p)
{
    struct worker *w = p;
    for (int i = 0; i < CALLS_PER_THREAD; i++) {
        int kind = (i + w->index) % MIX_KINDS;
        int64_t n = kind == MIX_EXIT ? 1 + (w->index * 10 + i) % 100 : w->index * 1000 + i;
        const char *bad = mixed_call(w->method, kind, n, i % 4 == 1);
        if (bad != NULL && w->failures++ == 0)
            snprintf(w->first, sizeof w->first, "thread %d call %d: %s", w->index, i, bad);
    }
    return NULL;
}

TBX_TEST_T(stress, threads_8x50, 300.0)
{
    struct worker w[THREADS];
    /* The server up first: a start counts against each call's deadline, and
     * a short one can pass, with no child yet, while a slow (sanitized)
     * server starts; this test is about the calls, not the start. */
    if (*method == TBX_FORKSERVER || *method == TBX_POOL)
        cr_assert_eq(tbx_forkserver_start(NULL), 0);
    for (int t = 0; t < THREADS; t++) {
        memset(&w[t], 0, sizeof w[t]);
        w[t].method = *method;
        w[t].index = t;
        cr_assert_eq(pthread_create(&w[t].thread, NULL, worker_main, &w[t]), 0);
    }
    int failures = 0;
    const char *first = "";
    for (int t = 0; t < THREADS; t++) {
        cr_assert_eq(pthread_join(w[t].thread, NULL), 0);
        if (w[t].failures > 0 && failures == 0)
            first = w[t].first;
        failures += w[t].failures;
    }
    cr_assert_eq(failures, 0, "%d of %d calls wrong; first: %s", failures,
                 THREADS * CALLS_PER_THREAD, first);
    /* Each thread's private loop is closed when it exits: the fixture's
     * descriptor count checks that. */
}

/* ------------------------------------------------------- signal storm */

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

/* SIGALRM every millisecond, with no SA_RESTART: every system call the
 * caller makes keeps failing with EINTR.  Calls still give the right result. */
TBX_TEST_T(stress, caller_interrupted_by_signals, 300.0)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    cr_assert_eq(sigaction(SIGALRM, &sa, &old), 0);
    struct itimerval it = {{0, 1000}, {0, 1000}}, off = {{0, 0}, {0, 0}};
    cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);

    int failures = 0;
    char first[512] = "";
    for (int i = 0; i < 60; i++) {
        int kind = i % MIX_KINDS;
        int64_t n = kind == MIX_EXIT ? 7 : i;
        const char *bad = mixed_call(*method, kind, n, i % 2);
        if (bad != NULL && failures++ == 0)
            snprintf(first, sizeof first, "call %d: %s", i, bad);
    }
    setitimer(ITIMER_REAL, &off, NULL);
    sigaction(SIGALRM, &old, NULL);
    cr_assert_gt(alarms, 10, "only %d alarms", (int)alarms);
    cr_assert_eq(failures, 0, "%d of 60 calls wrong; first: %s", failures, first);
}
