/*
 * What belongs to one start method: spawn's exec and its worker program, the
 * forkserver's life (preload, restarts, a server killed mid-call), and the
 * big threaded caller those methods exist for.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <timebox/uv.h>
#include <unistd.h>

/* ------------------------------------------------------------- preload */

/* Computed once, in the forkserver, before it serves. */
static int preload_runs;
static pid_t preload_pid;
static int64_t preload_value;

static int compute_table(void)
{
    preload_runs++;
    preload_pid = getpid();
    preload_value = 0;
    for (int64_t i = 1; i <= 1000; i++)
        preload_value += i * i;
    return 0;
}
TBX_PRELOAD(compute_table);

/* Packs [runs, pid that ran the preload, value, own pid]. */
static int fn_preloaded(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    msgpack_pack_array(pk, 4);
    msgpack_pack_int(pk, preload_runs);
    msgpack_pack_int(pk, preload_pid);
    msgpack_pack_int64(pk, preload_value);
    return msgpack_pack_int(pk, getpid());
}
TBX_REGISTER(fn_preloaded);

TBX_PLAIN_TEST(forkserver, preload_runs_once_in_the_server)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    pid_t server = tbx_forkserver_pid();
    cr_assert_gt(server, 0);
    cr_assert_eq(preload_runs, 0, "a preload hook ran in the caller");
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    for (int i = 0; i < 3; i++) {
        tbx_result r;
        int rc = tbx_call(fn_preloaded, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
        const msgpack_object *v = r.value.via.array.ptr;
        cr_assert_eq(obj_int(&v[0]), 1, "the preload ran %d times", (int)obj_int(&v[0]));
        cr_assert_eq(obj_int(&v[1]), server, "the preload ran in %d, not the server %d",
                     (int)obj_int(&v[1]), (int)server);
        cr_assert_eq(obj_int(&v[2]), 333833500);
        cr_assert_neq(obj_int(&v[3]), server, "fn ran in the server itself");
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* -------------------------------------------------- the server's life */

TBX_PLAIN_TEST(forkserver, killed_between_calls_is_restarted)
{
    msgpack_sbuffer sb;
    pack(&sb, "s", "again");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_result r;
    cr_assert_eq(tbx_call(fn_echo, sb.data, sb.size, &o, &r), 0);
    tbx_result_free(&r);
    pid_t first = tbx_forkserver_pid();
    cr_assert_gt(first, 0);
    cr_assert_eq(kill(first, SIGKILL), 0);
    sleep_s(0.05);
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "after the kill: %s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "again"));
    tbx_result_free(&r);
    pid_t second = tbx_forkserver_pid();
    cr_assert(second > 0 && second != first, "no new server: %d then %d", (int)first,
              (int)second);
    msgpack_sbuffer_destroy(&sb);
}

TBX_PLAIN_TEST(forkserver, killed_during_a_call_fails_it_at_once)
{
    char path[64];
    temp_path(path, sizeof path);
    msgpack_sbuffer sb;
    pack(&sb, "s", path);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 60; /* far away: the failure must not wait for it */
    uv_loop_t loop;
    tbx_req req;
    tbx_result r;
    start_async(&loop, &req, &r, fn_pid_then_hang, &sb, &o);
    /* The request went out at launch; the child runs without the loop. */
    pid_t child = read_pid_file(path, 30);
    double t0 = now_s();
    cr_assert_eq(kill(tbx_forkserver_pid(), SIGKILL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    double took = now_s() - t0;
    cr_assert_eq(r.status, -ECONNRESET, "%s: %s", tbx_err_name(r.status), r.message);
    cr_assert_lt(took, 10.0, "the failure took %.1f s", took);
    cr_assert(wait_gone(child, 10), "the call's child outlived its server");
    tbx_result_free(&r);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

/* ------------------------------------------------------------ spawn */

TBX_PLAIN_TEST(spawn, exec_failures_are_errno)
{
    char path[64];
    temp_path(path, sizeof path); /* a file without execute permission */
    const struct {
        const char *exe;
        int want;
    } cases[] = {{"/nonexistent/program", -ENOENT}, {path, -EACCES}};
    msgpack_sbuffer sb;
    pack(&sb, "n");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tbx_opts o = test_opts(TBX_SPAWN);
        o.executable = cases[i].exe;
        o.timeout_s = 30;
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, cases[i].want, "%s: %s", cases[i].exe, tbx_err_name(rc));
        cr_assert_eq(r.status, rc);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

TBX_PLAIN_TEST(spawn, program_without_tbx_init_is_named)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(TBX_SPAWN);
    o.executable = "/bin/true";
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_EEXITED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(strstr(r.message, "tbx_init") != NULL, "the message does not name the fix: %s",
              r.message);
    tbx_result_free(&r);

    /* One that never exits meets its deadline, with the same hint. */
    o.executable = "/bin/sleep";
    char *argv[] = {"sleep", "30", NULL};
    o.argv = argv;
    o.timeout_s = 0.3;
    o.grace_s = 0.1;
    rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(strstr(r.message, "tbx_init") != NULL, "no hint: %s", r.message);
    cr_assert_lt(r.elapsed_s, 10.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_PLAIN_TEST(spawn, plugin_through_timebox_worker)
{
    /* The host loads the plugin, as a program that embeds one would; the
     * worker loads it again with --preload. */
    void *plugin = dlopen(TEST_PLUGIN_PATH, RTLD_NOW);
    cr_assert_not_null(plugin, "%s", dlerror());
    tbx_fn *triple = (tbx_fn *)dlsym(plugin, "plugin_triple");
    cr_assert_not_null(triple);
    cr_assert_str_eq(tbx_name_of(triple), "plugin_triple");

    msgpack_sbuffer sb;
    pack(&sb, "i", (int64_t)14);
    tbx_opts o = test_opts(TBX_SPAWN);
    o.executable = TIMEBOX_WORKER_PATH;
    char *argv[] = {"timebox-worker", "--preload", TEST_PLUGIN_PATH, NULL};
    o.argv = argv;
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(triple, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(obj_int(&r.value), 42);
    tbx_result_free(&r);

    /* Without --preload the worker does not know the function. */
    char *bare[] = {"timebox-worker", NULL};
    o.argv = bare;
    rc = tbx_call(triple, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ENOTREG, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    /* The plugin stays loaded: its registration must outlive the calls. */
}

/* Never registered: spawn and the forkserver cannot find it by name. */
static int fn_not_registered(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_nil(pk);
}

TBX_PLAIN_TEST(spawn, unregistered_function_is_refused_before_launch)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    for (int m = TBX_FORKSERVER; m <= TBX_SPAWN; m++) {
        tbx_opts o = test_opts((tbx_method)m);
        tbx_result r;
        int rc = tbx_call(fn_not_registered, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, TBX_ENOTREG, "%s", tbx_err_name(rc));
        cr_assert_eq(r.pid, 0, "a child was made");
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------- a big, threaded caller */

#define BIG_THREADS 8
#define BIG_CALLS 10

struct big_arg {
    tbx_method method;
    int failures;
    char first[256];
};

static void *big_thread(void *p)
{
    struct big_arg *a = p;
    msgpack_sbuffer sb;
    pack(&sb, "s", "big");
    for (int i = 0; i < BIG_CALLS; i++) {
        tbx_opts o = test_opts(a->method);
        o.timeout_s = 60;
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        if ((rc != 0 || !obj_str_eq(&r.value, "big")) && a->failures++ == 0)
            snprintf(a->first, sizeof a->first, "%s: %s", tbx_err_name(rc),
                     r.message ? r.message : "-");
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
    return NULL;
}

/* The callers spawn and the forkserver exist for: 2 GiB resident, eight
 * threads calling at once. */
TBX_TEST_T(big, two_gib_caller_with_eight_threads, 300.0)
{
    if (*method == TBX_FORK)
        cr_skip_test("fork from a threaded 2 GiB caller is what the other methods avoid");
    size_t size = (size_t)2 << 30;
    char *ballast = malloc(size);
    cr_assert_not_null(ballast);
    memset(ballast, 7, size);
    pthread_t t[BIG_THREADS];
    struct big_arg a[BIG_THREADS];
    for (int i = 0; i < BIG_THREADS; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].method = *method;
        cr_assert_eq(pthread_create(&t[i], NULL, big_thread, &a[i]), 0);
    }
    for (int i = 0; i < BIG_THREADS; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(a[i].failures, 0, "thread %d: %d failures; first: %s", i, a[i].failures,
                     a[i].first);
    }
    free(ballast);
}

/* ----------------------------------------- a server child's descriptors */

/* -> how many descriptors this process has open. */
static int fn_open_fds(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_int(pk, count_fds());
}
TBX_REGISTER(fn_open_fds);

static int fds_in_a_server_child(void)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_open_fds, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    int n = (int)obj_int(&r.value);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    return n;
}

/* How many children the forkserver has. */
static int server_children(void)
{
    int n = count_children_of(tbx_forkserver_pid());
    return n < 0 ? 0 : n;
}

/* A child of the server holds nothing of the server's other calls: as many
 * descriptors with 40 calls in flight as with none. */
TBX_PLAIN_TEST(server, a_child_holds_no_other_calls_descriptors)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    int alone = fds_in_a_server_child();
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    enum { N = 40 };
    static tbx_req reqs[N];
    count_calls = 0;
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 60;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(tbx_call_async(&loop, &reqs[i], fn_sleep_ms, sb.data, sb.size, &o, count_cb),
                     0);
    }
    /* Until the server has forked them all. */
    for (int i = 0; i < 500 && server_children() < N; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        sleep_s(0.02);
    }
    cr_assert_eq(server_children(), N, "the server did not fork all %d children in 10 s", N);
    int busy = fds_in_a_server_child();
    for (int i = 0; i < N; i++)
        tbx_cancel(&reqs[i]);
    while (count_calls < N)
        uv_run(&loop, UV_RUN_ONCE);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(busy, alone, "%d descriptors with %d calls in flight, %d with none", busy, N,
                 alone);
}

/* ------------------------------------------------------- warm children */

static tbx_forkserver_opts warm_opts(unsigned n)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.warm_children = n;
    return fo;
}

TBX_PLAIN_TEST(warm, calls_take_warm_children_and_they_are_replaced)
{
    tbx_forkserver_opts fo = warm_opts(2);
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    msgpack_sbuffer sb;
    pack(&sb, "a i i", 2, (int64_t)MIX_OK, (int64_t)21);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    pid_t seen[10];
    for (int i = 0; i < 10; i++) { /* more calls than slots: each refilled */
        tbx_result r;
        int rc = tbx_call(fn_mixed, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, 0, "call %d: %s: %s", i, tbx_err_name(rc), r.message);
        cr_assert_eq(obj_int(&r.value), 42);
        seen[i] = r.pid;
        for (int j = 0; j < i; j++)
            cr_assert_neq(seen[j], r.pid, "a warm child served two calls");
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* 4 MiB of args and the same back: both cross in memfds (the args' sent
 * with the request, straight to the waiting child; the result's made with
 * the slot), byte for byte. */
TBX_PLAIN_TEST(warm, big_args_and_result_cross_a_warm_child)
{
    tbx_forkserver_opts fo = warm_opts(1);
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    size_t len = (size_t)4 << 20;
    char *bytes = malloc(len);
    cr_assert_not_null(bytes);
    for (size_t i = 0; i < len; i++)
        bytes[i] = (char)(i * 7 + (i >> 12));
    msgpack_sbuffer sb;
    pack(&sb, "x", bytes, len);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    for (int i = 0; i < 3; i++) {
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, 0, "call %d: %s: %s", i, tbx_err_name(rc), r.message);
        cr_assert_eq(r.value.type, MSGPACK_OBJECT_BIN);
        cr_assert_eq(r.value.via.bin.size, len);
        cr_assert_eq(memcmp(r.value.via.bin.ptr, bytes, len), 0, "call %d: the bytes differ", i);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
    free(bytes);
}

TBX_PLAIN_TEST(warm, a_hanging_warm_call_meets_its_deadline)
{
    tbx_forkserver_opts fo = warm_opts(1);
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    msgpack_sbuffer sb;
    pack(&sb, "a i i", 2, (int64_t)MIX_HANG, (int64_t)0);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 0.2;
    o.grace_s = 0.1;
    tbx_result r;
    int rc = tbx_call(fn_mixed, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(r.term_signal == SIGTERM || r.term_signal == SIGKILL);
    cr_assert_lt(r.elapsed_s, 10.0);
    tbx_result_free(&r);
    /* The next warm call is served as usual. */
    msgpack_sbuffer_destroy(&sb);
    pack(&sb, "s", "after");
    o.timeout_s = 30;
    rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s", tbx_err_name(rc));
    cr_assert(obj_str_eq(&r.value, "after"));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_PLAIN_TEST(warm, a_forked_process_does_not_take_our_warm_children)
{
    tbx_forkserver_opts fo = warm_opts(2);
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "worker");
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        /* A pre-forked worker: the inherited connection serves it, cold. */
        tbx_opts o = test_opts(TBX_FORKSERVER);
        o.timeout_s = 30;
        int ok = 1;
        for (int i = 0; i < 5 && ok; i++) {
            tbx_result r;
            ok = tbx_call(fn_echo, sb.data, sb.size, &o, &r) == 0 && obj_str_eq(&r.value, "worker");
            tbx_result_free(&r);
        }
        _exit(ok ? 0 : 1);
    }
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the forked worker's calls failed");
    /* Ours still work, warm. */
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    for (int i = 0; i < 3; i++) {
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}
