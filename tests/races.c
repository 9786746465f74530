/*
 * races: timebox's thread-safety claims, exercised without Criterion, for
 * ThreadSanitizer (Criterion 2.4 cannot start under TSan: its "inheritable
 * arena" mmap collides with TSan's memory layout, Criterion issue #274).
 * Built in every configuration and run by ctest as "races"; in a
 * -DTIMEBOX_SANITIZE=thread build it is the suite to run.
 *
 *   1. threads making blocking calls at once, every method, every outcome
 *      (the calls that hang traced from outside at their deadline);
 *   2. threads each running a libuv loop of their own with async calls and
 *      cancels;
 *   3. the process-wide set-up changed while calls run: default method,
 *      spawn executable, child hooks, forkserver start/stop;
 *   4. threads sharing a small TBX_POOL (each thread's blocking calls keep
 *      their process watched on its own loop, others take it over), while
 *      another thread stops and restarts the pool.
 *
 * Exit status 0 when every call gave what its kind says; TSan makes it 66
 * when it reports a race.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <timebox.h>
#include <timebox/uv.h>
#include <unistd.h>

enum { K_OK, K_HANG, K_SEGV, K_FAIL, K_EXIT, K_KINDS };

static int fn_race(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    int kind = (int)args->via.array.ptr[0].via.u64;
    int64_t n = (int64_t)args->via.array.ptr[1].via.u64;
    struct timespec ts = {30, 0};
    switch (kind) {
    case K_OK:
        return msgpack_pack_int64(pk, n * 2);
    case K_HANG:
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        return msgpack_pack_nil(pk);
    case K_SEGV:
        raise(SIGSEGV);
        return msgpack_pack_nil(pk);
    case K_FAIL:
        return tbx_fail(pk, (int)n, "failed %d", (int)n);
    default:
        _exit((int)(n % 100) + 1);
    }
}
TBX_REGISTER(fn_race);

static atomic_int failures;
static atomic_int calls_done;

static void bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void bad(const char *fmt, ...)
{
    va_list ap;
    if (atomic_fetch_add(&failures, 1) < 20) {
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
}

/* What a call of fn_race(kind, n) must give; in phase 3 (may_reset),
 * -ECONNRESET is accepted when a forkserver stop may have cut the call, and
 * TBX_EINVAL for a spawn or forkserver call made while the churn thread held
 * a run-time child hook (which such children cannot run: refused). */
static void check(const char *where, tbx_method m, int kind, int64_t n, const tbx_result *r,
                  int may_reset)
{
    int rc = r->status;
    int ok;
    atomic_fetch_add(&calls_done, 1);
    if (may_reset && rc == -ECONNRESET && (m == TBX_FORKSERVER || m == TBX_POOL))
        return;
    if (may_reset && rc == TBX_EINVAL && m != TBX_FORK && r->message != NULL &&
        strstr(r->message, "tbx_add_child_hook") != NULL)
        return;
    switch (kind) {
    case K_OK:
        ok = rc == 0 && r->value.type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
             (int64_t)r->value.via.u64 == 2 * n;
        break;
    case K_HANG:
        ok = rc == TBX_ETIMEDOUT || rc == TBX_ECANCELED;
        break;
    case K_SEGV:
        ok = rc == TBX_ECRASHED && r->term_signal == SIGSEGV;
        break;
    case K_FAIL:
        ok = rc == TBX_EFAILED && r->fail_code == (int)n;
        break;
    default:
        ok = rc == TBX_EEXITED && r->exit_code == (int)(n % 100) + 1;
    }
    if (!ok)
        bad("%s: method %d kind %d n %lld: %s (%s)", where, (int)m, kind, (long long)n,
            tbx_err_name(rc), r->message ? r->message : "-");
}

static void pack_args(msgpack_sbuffer *sb, int kind, int64_t n)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, kind);
    msgpack_pack_int64(&pk, n);
}

static tbx_opts opts_for(tbx_method m, int kind, int soft)
{
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = m;
    o.hard_timeout = !soft;
    o.timeout_s = kind == K_HANG ? 0.1 : 60;
    o.grace_s = 0.1;
    /* Traced from outside, threads at once: the tracer's cache of files
     * read is shared by them. */
    o.backtrace_on_timeout = kind == K_HANG && m != TBX_POOL;
    return o;
}

static const tbx_method methods[] = {TBX_FORK, TBX_SPAWN, TBX_FORKSERVER};

/* ------------------------------------------------- 1: blocking threads */

struct blocking {
    pthread_t t;
    int index, calls, may_reset, pool; /* pool: TBX_POOL only */
};

static void *blocking_main(void *p)
{
    struct blocking *b = p;
    for (int i = 0; i < b->calls; i++) {
        int kind = (i + b->index) % K_KINDS;
        tbx_method m = b->pool ? TBX_POOL : methods[(i / K_KINDS + b->index) % 3];
        int64_t n = b->index * 1000 + i;
        msgpack_sbuffer sb;
        pack_args(&sb, kind, n);
        tbx_opts o = opts_for(m, kind, i % 3 == 1);
        tbx_result r;
        tbx_call(fn_race, sb.data, sb.size, &o, &r);
        check("blocking", m, kind, n, &r, b->may_reset);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
    return NULL;
}

static void run_blocking(int threads, int calls, int may_reset, int pool)
{
    struct blocking b[16];
    for (int i = 0; i < threads; i++) {
        b[i].index = i;
        b[i].calls = calls;
        b[i].may_reset = may_reset;
        b[i].pool = pool;
        pthread_create(&b[i].t, NULL, blocking_main, &b[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(b[i].t, NULL);
}

/* ---------------------------------------------------- 2: loop threads */

struct areq {
    tbx_req req;
    tbx_method m;
    int kind, cancelled, seen;
    int64_t n;
};

static void areq_cb(tbx_req *req, tbx_result *r)
{
    struct areq *a = req->data;
    a->seen++;
    if (a->cancelled)
        check("async cancel", a->m, K_HANG, a->n, r, 0);
    else
        check("async", a->m, a->kind, a->n, r, 0);
    tbx_result_free(r);
}

static void *loop_main(void *p)
{
    int index = (int)(intptr_t)p;
    enum { N = 40 };
    uv_loop_t loop;
    struct areq a[N];
    if (uv_loop_init(&loop) != 0) {
        bad("uv_loop_init");
        return NULL;
    }
    memset(a, 0, sizeof a);
    for (int i = 0; i < N; i++) {
        a[i].req.data = &a[i];
        a[i].m = methods[(i + index) % 3];
        a[i].kind = i % 8 == 7 ? K_HANG : (i + index) % K_KINDS;
        a[i].cancelled = i % 8 == 7;
        a[i].n = index * 1000 + i;
        msgpack_sbuffer sb;
        pack_args(&sb, a[i].kind, a[i].n);
        tbx_opts o = opts_for(a[i].m, a[i].kind, i % 2);
        if (a[i].cancelled)
            o.timeout_s = 0;
        int rc = tbx_call_async(&loop, &a[i].req, fn_race, sb.data, sb.size, &o, areq_cb);
        msgpack_sbuffer_destroy(&sb);
        if (rc != 0) {
            bad("loop %d call %d: %s", index, i, tbx_err_name(rc));
            a[i].seen = 1;
            continue;
        }
        if (a[i].cancelled && tbx_cancel(&a[i].req) != 0)
            bad("loop %d: cancel %d refused", index, i);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < N; i++)
        if (a[i].seen != 1)
            bad("loop %d call %d: %d callbacks", index, i, a[i].seen);
    if (uv_loop_close(&loop) != 0)
        bad("loop %d: handles left", index);
    return NULL;
}

static void run_loops(int threads)
{
    pthread_t t[16];
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, loop_main, (void *)(intptr_t)i);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
}

/* ------------------------------------------- 3: set-up changed meanwhile */

static atomic_int churn_stop;

static int noop_hook(void *arg)
{
    (void)arg;
    return 0;
}

static void *churn_main(void *p)
{
    (void)p;
    int i = 0;
    while (!atomic_load(&churn_stop)) {
        tbx_set_default_method(methods[i % 3]);
        tbx_set_spawn_executable(i % 2 ? "/proc/self/exe" : NULL, NULL);
        if (tbx_add_child_hook(noop_hook, (void *)(intptr_t)(i % 4)) == 0)
            tbx_remove_child_hook(noop_hook, (void *)(intptr_t)(i % 4));
        if (i % 16 == 0) {
            tbx_forkserver_stop();
            tbx_forkserver_start(NULL);
        }
        (void)tbx_forkserver_pid();
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
        i++;
    }
    tbx_set_spawn_executable(NULL, NULL);
    tbx_set_default_method(TBX_FORK);
    return NULL;
}

/* ----------------------------------------------------- 4: the pool */

static atomic_int pool_stop;

static void start_pool(void)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.pool_size = 2;
    if (tbx_forkserver_start(&fo) != 0)
        bad("pool: tbx_forkserver_start failed");
}

static void *pool_churn_main(void *p)
{
    (void)p;
    while (!atomic_load(&pool_stop)) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
        tbx_forkserver_stop();
        start_pool();
    }
    return NULL;
}

static void run_pool(int threads, int calls, int churn)
{
    pthread_t stopper;
    start_pool();
    atomic_store(&pool_stop, 0);
    if (churn)
        pthread_create(&stopper, NULL, pool_churn_main, NULL);
    run_blocking(threads, calls, churn, 1);
    atomic_store(&pool_stop, 1);
    if (churn)
        pthread_join(stopper, NULL);
    tbx_forkserver_stop();
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1)
        scale = 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    run_blocking(6, 20 * scale, 0, 0);
    printf("races: blocking threads done (%d calls)\n", atomic_load(&calls_done));
    run_loops(4);
    printf("races: loop threads done (%d calls)\n", atomic_load(&calls_done));

    pthread_t churn;
    pthread_create(&churn, NULL, churn_main, NULL);
    run_blocking(4, 10 * scale, 1, 0);
    atomic_store(&churn_stop, 1);
    pthread_join(churn, NULL);
    tbx_forkserver_stop();

    run_pool(4, 10 * scale, 0);
    run_pool(4, 10 * scale, 1);
    printf("races: pool threads done (%d calls)\n", atomic_load(&calls_done));

    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("races: %d calls, %d wrong, %.1f s\n", atomic_load(&calls_done),
           atomic_load(&failures),
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return atomic_load(&failures) == 0 ? 0 : 1;
}
