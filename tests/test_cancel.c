/*
 * opts.cancel_fd: a descriptor that cancels the call once readable, written
 * from another thread or from a signal handler, ending blocking and async
 * calls under every method; borrowed (never read, never closed).
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <timebox/uv.h>
#include <unistd.h>

/* Whether fd is readable right now. */
static bool readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* A call of fn_sleep_ms(60 s) under a 30 s deadline: only a cancel can end
 * it within the test's bounds. */
static int long_call(tbx_method method, int cancel_fd, tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_opts o = test_opts(method);
    o.timeout_s = 30;
    o.cancel_fd = cancel_fd;
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

TBX_PLAIN_TEST(cancel_fd, defaults_to_none)
{
    tbx_opts o;
    memset(&o, 0x5a, sizeof o);
    tbx_opts_init(&o);
    cr_assert_eq(o.cancel_fd, -1);
}

/* ------------------------------------------------ from another thread */

struct writer {
    int fd;
    double after_s;
};

static void *write_later(void *arg)
{
    struct writer *w = arg;
    sleep_s(w->after_s);
    uint64_t one = 1;
    cr_assert_eq(write(w->fd, &one, sizeof one), (ssize_t)sizeof one);
    return NULL;
}

TBX_TEST(cancel_fd, eventfd_written_by_another_thread)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    cr_assert_geq(efd, 0);
    struct writer w = {efd, 0.3};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, write_later, &w), 0);
    double t0 = now_s();
    tbx_result r;
    int rc = long_call(*method, efd, &r);
    double took = now_s() - t0;
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(rc, TBX_ECANCELED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.status, TBX_ECANCELED);
    cr_assert_eq(r.kill_signal, SIGTERM);
    cr_assert_lt(took, 10.0, "the cancel took %.3f s", took);
    cr_assert_geq(took, 0.3);
    tbx_result_free(&r);
    /* Not consumed: the value the thread wrote is still there. */
    uint64_t v = 0;
    cr_assert_eq(read(efd, &v, sizeof v), (ssize_t)sizeof v);
    cr_assert_eq(v, 1);
    cr_assert_eq(close(efd), 0);
}

/* ------------------------------------------------ from a signal handler */

static int alarm_pipe = -1;

static void alarm_handler(int sig)
{
    (void)sig;
    int saved = errno;
    char b = 'c';
    (void)!write(alarm_pipe, &b, 1);
    errno = saved;
}

TBX_TEST(cancel_fd, pipe_written_from_a_signal_handler)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    alarm_pipe = p[1];
    /* No SA_RESTART: the signal interrupts whatever the call is blocked in,
     * as a host's handler would. */
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = alarm_handler;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGALRM, &sa, &old), 0);
    struct itimerval it = {{0, 0}, {0, 300000}};
    cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);

    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.grace_s = 0.2;
    o.cancel_fd = p[0];
    tbx_result r;
    double t0 = now_s();
    int rc = tbx_call(fn_ignore_term, sb.data, sb.size, &o, &r);
    double took = now_s() - t0;
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(sigaction(SIGALRM, &old, NULL), 0);
    cr_assert_eq(rc, TBX_ECANCELED, "%s: %s", tbx_err_name(rc), r.message);
    /* It ignores SIGTERM: SIGKILL after the grace period. */
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_lt(took, 10.0, "the cancel took %.3f s", took);
    tbx_result_free(&r);
    cr_assert(readable(p[0]), "timebox read the caller's pipe");
    cr_assert_eq(close(p[0]), 0);
    cr_assert_eq(close(p[1]), 0);
    alarm_pipe = -1;
}

/* --------------------------------------------------- already readable */

TBX_TEST(cancel_fd, readable_before_the_call_cancels_it_at_once)
{
    int efd = eventfd(1, EFD_CLOEXEC);
    cr_assert_geq(efd, 0);
    tbx_result r;
    double t0 = now_s();
    int rc = long_call(*method, efd, &r);
    cr_assert_eq(rc, TBX_ECANCELED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_lt(now_s() - t0, 10.0);
    tbx_result_free(&r);
    /* The same descriptor, still readable, cancels the next call too. */
    rc = long_call(*method, efd, &r);
    cr_assert_eq(rc, TBX_ECANCELED, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    cr_assert_eq(close(efd), 0);
}

TBX_TEST(cancel_fd, never_readable_leaves_the_call_alone)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    cr_assert_geq(efd, 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "kept");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.cancel_fd = efd;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "kept"));
    tbx_result_free(&r);
    /* Borrowed: still open, and ours. */
    cr_assert_neq(fcntl(efd, F_GETFD), -1);
    cr_assert_eq(close(efd), 0);
}

TBX_PLAIN_TEST(cancel_fd, a_closed_descriptor_is_einval)
{
    int fd = eventfd(0, EFD_CLOEXEC);
    cr_assert_geq(fd, 0);
    cr_assert_eq(close(fd), 0);
    tbx_result r;
    int rc = long_call(TBX_FORK, fd, &r);
    cr_assert_eq(rc, TBX_EINVAL, "%s", tbx_err_name(rc));
    cr_assert_eq(r.pid, 0, "a child was started");
    tbx_result_free(&r);
}

/* ------------------------------------------------------------- async */

struct seen {
    int status[3];
    int calls;
};

static void seen_cb(tbx_req *req, tbx_result *r)
{
    struct seen *s = req->data;
    s->status[s->calls++] = r->status;
    tbx_result_free(r);
}

static void write_cb(uv_timer_t *t)
{
    uint64_t one = 1;
    cr_assert_eq(write(*(int *)t->data, &one, sizeof one), (ssize_t)sizeof one);
    uv_close((uv_handle_t *)t, NULL);
}

/* Three calls on one loop share one eventfd, written by a timer on the loop:
 * every call ends cancelled, and the loop closes clean. */
TBX_TEST(cancel_fd, async_calls_sharing_one_descriptor)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    cr_assert_geq(efd, 0);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.cancel_fd = efd;
    struct seen s = {{0}, 0};
    tbx_req reqs[3];
    for (int i = 0; i < 3; i++) {
        reqs[i].data = &s;
        int rc = tbx_call_async(&loop, &reqs[i], fn_sleep_ms, sb.data, sb.size, &o, seen_cb);
        cr_assert_eq(rc, 0, "%s", tbx_err_name(rc));
    }
    msgpack_sbuffer_destroy(&sb);
    uv_timer_t timer;
    cr_assert_eq(uv_timer_init(&loop, &timer), 0);
    timer.data = &efd;
    cr_assert_eq(uv_timer_start(&timer, write_cb, 300, 0), 0);
    double t0 = now_s();
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_lt(now_s() - t0, 10.0);
    cr_assert_eq(s.calls, 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(s.status[i], TBX_ECANCELED, "call %d: %s", i, tbx_err_name(s.status[i]));
    cr_assert_eq(uv_loop_close(&loop), 0);
    cr_assert_eq(close(efd), 0);
}
