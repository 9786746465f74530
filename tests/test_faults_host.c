/*
 * The fault matrix, the host: it reaps children itself with waitpid(-1), runs
 * its own uv_spawn children on the loop, cancels or frees mid-call, holds
 * 1000 inheritable descriptors; and no descriptor of a call reaches a
 * program the host or the function starts.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------- functions in the child */

/* -> [descriptors open, descriptors that are the test's inherited memfd] */
static int fn_count_fds(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    int fds[MAX_FDS];
    int total = list_fds(0, fds, MAX_FDS), inherited = 0;
    if (total < 0)
        return tbx_fail(pk, 1, "cannot list /proc/self/fd: %s", strerror(errno));
    for (int i = 0; i < total && i < MAX_FDS; i++) {
        char target[256];
        fd_target(fds[i], target, sizeof target);
        inherited += strstr(target, "tbx-inherit") != NULL;
    }
    msgpack_pack_array(pk, 2);
    msgpack_pack_int(pk, total);
    return msgpack_pack_int(pk, inherited);
}
TBX_REGISTER(fn_count_fds);

/* ================================================================= host */

static volatile sig_atomic_t host_reaped;

static void host_reaper(int sig)
{
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        host_reaped++;
    errno = saved;
}

/* A host with its own SIGCHLD handler that reaps every child with
 * waitpid(-1), no SA_RESTART.  Calls still complete.  When the host reaps
 * timebox's child first, its wait status is lost: a crash or an exit then
 * comes back as TBX_EEXITED, exit_code -1, with a message saying so (see
 * engine.c check_exit).  A complete result is still a result, and a timeout
 * still a timeout.  The forkserver's children are the server's, and never
 * reach the host's handler. */
TBX_TEST_T(host, reaps_children_with_waitpid_minus_one, 300.0)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = host_reaper;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGCHLD, &sa, &old), 0);
    int host_won = 0;
    for (int i = 0; i < 60; i++) {
        int kind = i % 4;
        msgpack_sbuffer sb;
        tbx_fn *fn = kind == 0 ? fn_echo : kind == 1 ? fn_segv : kind == 2 ? fn_exit : fn_sleep_ms;
        if (kind == 0)
            pack(&sb, "i", (int64_t)i);
        else if (kind == 2)
            pack(&sb, "u", (uint64_t)9);
        else if (kind == 3)
            pack(&sb, "u", (uint64_t)60000);
        else
            pack(&sb, "n");
        tbx_opts o = test_opts(*method);
        o.timeout_s = kind == 3 ? 0.2 : 60;
        o.grace_s = 0.2;
        tbx_result r;
        int rc = tbx_call(fn, sb.data, sb.size, &o, &r);
        check_status(rc, &r);
        int lost = rc == TBX_EEXITED && r.exit_code == -1 && r.term_signal == 0 &&
                   strstr(r.message, "reaped") != NULL;
        host_won += lost;
        switch (kind) {
        case 0:
            cr_assert_eq(rc, 0, "method %d, call %d: %s: %s", (int)*method, i, tbx_err_name(rc),
                         r.message);
            cr_assert_eq(obj_int(&r.value), i);
            break;
        case 1:
            cr_assert(lost || (rc == TBX_ECRASHED && r.term_signal == SIGSEGV),
                      "call %d: %s: %s (term %d)", i, tbx_err_name(rc), r.message, r.term_signal);
            break;
        case 2:
            cr_assert(lost || (rc == TBX_EEXITED && r.exit_code == 9), "call %d: %s: %s", i,
                      tbx_err_name(rc), r.message);
            break;
        case 3:
            cr_assert_eq(rc, TBX_ETIMEDOUT, "call %d: %s: %s", i, tbx_err_name(rc), r.message);
            break;
        }
        cr_assert_lt(r.elapsed_s, 30.0);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
    cr_assert_eq(sigaction(SIGCHLD, &old, NULL), 0);
    if (*method == TBX_FORKSERVER)
        cr_assert_eq(host_won, 0, "the host reaped a forkserver child");
    cr_log_info("host reaped first in %d of 60 calls (%d reaps)", host_won, (int)host_reaped);
}

struct uvp {
    uv_process_t proc;
    int exited;
    int64_t status;
    int term;
};

static void uvp_exit(uv_process_t *p, int64_t status, int term)
{
    struct uvp *u = p->data;
    u->exited++;
    u->status = status;
    u->term = term;
    uv_close((uv_handle_t *)p, NULL);
}

/* The host's own uv_spawn children on the loop that runs timebox's calls:
 * libuv's SIGCHLD handling and timebox's pidfds do not take each other's
 * children. */
TBX_TEST(host, own_uv_spawn_children_on_the_same_loop)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    enum { NPROC = 12, NCALL = 40 };
    struct uvp procs[NPROC];
    struct hreq calls[NCALL];
    memset(procs, 0, sizeof procs);
    memset(calls, 0, sizeof calls);
    for (int i = 0; i < NCALL; i++) {
        struct hreq *h = &calls[i];
        h->req.data = h;
        h->kind = i % MIX_KINDS;
        h->n = h->kind == MIX_EXIT ? 1 + i : i;
        msgpack_sbuffer sb;
        pack(&sb, "a i i", 2, (int64_t)h->kind, h->n);
        tbx_opts o = test_opts(*method);
        o.timeout_s = h->kind == MIX_HANG ? 0.3 : 60;
        o.grace_s = 0.2;
        cr_assert_eq(tbx_call_async(&loop, &h->req, fn_mixed, sb.data, sb.size, &o, hreq_cb), 0);
        msgpack_sbuffer_destroy(&sb);
        if (i % 3 == 0 && i / 3 < NPROC) {
            struct uvp *u = &procs[i / 3];
            char code[8];
            snprintf(code, sizeof code, "%d", 10 + i / 3);
            char script[64];
            snprintf(script, sizeof script, "sleep 0.%d; exit %s", i % 5, code);
            char *args[] = {"sh", "-c", script, NULL};
            uv_process_options_t po;
            memset(&po, 0, sizeof po);
            po.file = "/bin/sh";
            po.args = args;
            po.exit_cb = uvp_exit;
            u->proc.data = u;
            cr_assert_eq(uv_spawn(&loop, &u->proc, &po), 0);
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < NCALL; i++) {
        cr_assert_eq(calls[i].calls, 1, "call %d: %d callbacks", i, calls[i].calls);
        cr_assert_eq(calls[i].bad[0], '\0', "call %d: %s", i, calls[i].bad);
    }
    for (int i = 0; i < NPROC; i++) {
        cr_assert_eq(procs[i].exited, 1, "uv process %d: %d exits", i, procs[i].exited);
        cr_assert_eq(procs[i].status, 10 + i, "uv process %d: status %lld, signal %d", i,
                     (long long)procs[i].status, procs[i].term);
    }
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* The caller frees (and scribbles over) its 64 MiB of args as soon as
 * tbx_call_async returns, while they are still being written to the child:
 * the child gets them whole. */
TBX_TEST(host, frees_args_mid_call)
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    uint64_t want = fnv1a(sb.data + 5, BIG_ARGS);
    uv_loop_t loop;
    tbx_req req;
    tbx_result r;
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    start_async(&loop, &req, &r, fn_sum, &sb, &o);
    memset(sb.data, 0xee, sb.size);
    msgpack_sbuffer_destroy(&sb);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(r.status, 0, "%s: %s", tbx_err_name(r.status), r.message);
    cr_assert_eq(r.value.via.array.ptr[0].via.u64, BIG_ARGS);
    cr_assert_eq(r.value.via.array.ptr[1].via.u64, want, "the args arrived changed");
    tbx_result_free(&r);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* A cancel while 64 MiB of args are still on their way. */
TBX_TEST(host, cancels_while_args_are_written)
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    uv_loop_t loop;
    tbx_req req;
    tbx_result r;
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    o.grace_s = 0.5;
    start_async(&loop, &req, &r, fn_sum, &sb, &o);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(tbx_cancel(&req), 0);
    double t0 = now_s();
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(r.status, TBX_ECANCELED, "%s: %s", tbx_err_name(r.status), r.message);
    cr_assert(r.kill_signal == SIGTERM || r.kill_signal == SIGKILL, "kill_signal %d",
              r.kill_signal);
    cr_assert_lt(now_s() - t0, 30.0);
    cr_assert_eq(tbx_cancel(&req), TBX_EINVAL);
    tbx_result_free(&r);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* Cancels of calls at every stage, on one loop, some twice. */
TBX_TEST(host, cancels_at_every_stage)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    enum { N = 30 };
    tbx_req reqs[N];
    tbx_result res[N];
    memset(res, 0, sizeof res);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    for (int i = 0; i < N; i++) {
        reqs[i].data = &res[i];
        tbx_opts o = test_opts(*method);
        o.grace_s = 0.2;
        o.hard_timeout = i % 2;
        cr_assert_eq(tbx_call_async(&loop, &reqs[i], fn_sleep_ms, sb.data, sb.size, &o, move_cb),
                     0);
        if (i % 3 == 0) {
            cr_assert_eq(tbx_cancel(&reqs[i]), 0); /* at once */
            if (i % 2 == 0)
                cr_assert_eq(tbx_cancel(&reqs[i]), 0, "a second cancel");
        }
    }
    /* Then the rest, a little later, one at a time on the loop. */
    for (int i = 0; i < N; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (i % 3 != 0) {
            cr_assert_eq(tbx_cancel(&reqs[i]), 0, "call %d", i);
            if (i % 5 == 0)
                cr_assert_eq(tbx_cancel(&reqs[i]), 0, "a second cancel");
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(res[i].status, TBX_ECANCELED, "call %d: %s: %s", i,
                     tbx_err_name(res[i].status), res[i].message);
        tbx_result_free(&res[i]);
    }
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* 1000 descriptors without FD_CLOEXEC in the host.  spawn and forkserver
 * children see none of them; a fork child is a copy of the caller and holds
 * them all (fork copies every descriptor, and no exec closes any). */
TBX_TEST(host, thousand_inheritable_fds)
{
    raise_nofile_limit();
    int base = memfd_create("tbx-inherit", 0);
    cr_assert_geq(base, 0, "memfd_create: %s", strerror(errno));
    int fds[1000];
    fds[0] = base;
    for (int i = 1; i < 1000; i++) {
        fds[i] = fcntl(base, F_DUPFD, 100);
        cr_assert_geq(fds[i], 0, "dup %d: %s", i, strerror(errno));
    }
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_count_fds, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    int64_t total = obj_int(&r.value.via.array.ptr[0]);
    int64_t inherited = obj_int(&r.value.via.array.ptr[1]);
    if (*method == TBX_FORK) {
        cr_assert_eq(inherited, 1000, "a fork child holds the caller's descriptors");
    } else {
        cr_assert_eq(inherited, 0, "%lld of the host's descriptors reached the child",
                     (long long)inherited);
        cr_assert_lt(total, 24, "the child has %lld descriptors", (long long)total);
    }
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    for (int i = 0; i < 1000; i++)
        close(fds[i]);
}

/* -> the descriptors (>= 3) of this process that are not close-on-exec,
 * as "fd:target" strings. */
static int fn_inheritable_fds(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    char list[32][160];
    int n = 0, fds[MAX_FDS];
    int nfds = list_fds(0, fds, MAX_FDS);
    if (nfds < 0)
        return tbx_fail(pk, 1, "cannot list /proc/self/fd: %s", strerror(errno));
    for (int i = 0; i < nfds && i < MAX_FDS && n < 32; i++) {
        int fd = fds[i];
        int fl = fcntl(fd, F_GETFD);
        if (fd < 3 || fl < 0 || (fl & FD_CLOEXEC))
            continue;
        char target[128];
        fd_target(fd, target, sizeof target);
        snprintf(list[n++], sizeof list[0], "%d:%s", fd, target);
    }
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++) {
        msgpack_pack_str(pk, strlen(list[i]));
        msgpack_pack_str_body(pk, list[i], strlen(list[i]));
    }
    return 0;
}
TBX_REGISTER(fn_inheritable_fds);

/* A spawned worker or a forkserver child holds its call's descriptors
 * close-on-exec: a program the function runs inherits none of them (a fork
 * child is a copy of the caller, whose own descriptors are the caller's
 * business). */
TBX_TEST(child, a_program_fn_runs_inherits_no_call_descriptor)
{
    if (*method == TBX_FORK)
        return;
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    /* With the stdout, stderr and backtrace pipes (a pooled call has no
     * backtrace pipe). */
    o.capture_output = 1;
    o.backtrace_on_timeout = *method != TBX_POOL;
    tbx_result r;
    int rc = tbx_call(fn_inheritable_fds, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_ARRAY);
    for (uint32_t i = 0; i < r.value.via.array.size; i++) {
        const msgpack_object_str *f = &r.value.via.array.ptr[i].via.str;
        cr_assert_fail("fd %.*s is inherited across exec", (int)f->size, f->ptr);
    }
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* Every descriptor timebox opens in the caller is close-on-exec: a program
 * the host starts meanwhile inherits none of them. */
TBX_TEST(host, every_descriptor_is_cloexec)
{
    int before[4096], fds[MAX_FDS];
    memset(before, 0, sizeof before);
    int nfds = list_fds(0, fds, MAX_FDS);
    for (int i = 0; i < nfds && i < MAX_FDS; i++)
        if (fds[i] < 4096)
            before[fds[i]] = 1;

    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_req reqs[6];
    for (int i = 0; i < 6; i++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = i < 3 ? 30 : 0;
        o.hard_timeout = i % 2;
        o.grace_s = 0.1;
        cr_assert_eq(tbx_call_async(&loop, &reqs[i], fn_sleep_ms, sb.data, sb.size, &o, ignore_cb),
                     0);
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    int checked = 0;
    nfds = list_fds(0, fds, MAX_FDS);
    cr_assert_geq(nfds, 0);
    for (int i = 0; i < nfds && i < MAX_FDS; i++) {
        int fd = fds[i];
        if (fd < 4096 && before[fd])
            continue;
        int fl = fcntl(fd, F_GETFD);
        /* Gone since it was listed: a descriptor the server's start (on a
         * thread of its own) held for a moment.  It can be inherited by no
         * one now. */
        if (fl < 0 && errno == EBADF)
            continue;
        char target[128];
        fd_target(fd, target, sizeof target);
        cr_assert(fl >= 0 && (fl & FD_CLOEXEC), "fd %d (%s) is not close-on-exec", fd, target);
        checked++;
    }
    cr_assert_geq(checked, 6, "only %d new descriptors", checked);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(tbx_cancel(&reqs[i]), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}
