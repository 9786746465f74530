/*
 * TBX_POOL and threads: a process a blocking call kept stays watched on its
 * thread's private loop (lib/forkserver/pool_own.c).  Every thread's calls
 * are served; an idle process serves any thread; when a thread ends, or the
 * pool is stopped from another thread, nothing of it is left (the fixture
 * counts descriptors and children).
 */
#include "helpers.h"

#include <pthread.h>
#include <semaphore.h>
#include <unistd.h>

static const unsigned char nil[1] = {0xc0};

static int fn_pid(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_pid);

/* One call by pool; its process's pid, or -1 if it failed or was not kept. */
static pid_t pool_call(void)
{
    tbx_opts o = test_opts(TBX_POOL);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_pid, nil, sizeof nil, &o, &r);
    pid_t pid = rc == 0 && r.pool_fate == TBX_POOL_KEPT && r.value.type ==
                MSGPACK_OBJECT_POSITIVE_INTEGER ? (pid_t)r.value.via.u64 : -1;
    tbx_result_free(&r);
    return pid;
}

#define CALLS 20

/* A thread's calls, each kept. */
static void *caller(void *arg)
{
    int *ok = arg;
    *ok = 1;
    for (int i = 0; i < CALLS; i++)
        if (pool_call() <= 0)
            *ok = 0;
    return NULL;
}

TBX_PLAIN_TEST(pool_own, threads_calls_are_served_and_nothing_outlives_a_thread)
{
    start_pool(1, 0);
    pthread_t t[3];
    int ok[3];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, caller, &ok[i]), 0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < 3; i++)
        cr_assert(ok[i], "thread %d: a call failed, or its process was not kept", i);
    cr_assert_gt(pool_call(), 0);
}

/* A thread makes a call and waits while the main thread does something
 * (between), then calls again, and ends. */
typedef struct {
    sem_t called, go;
    pid_t first, second;
} turns;

static void *call_wait_call(void *arg)
{
    turns *tu = arg;
    tu->first = pool_call();
    sem_post(&tu->called);
    while (sem_wait(&tu->go) != 0)
        ;
    tu->second = pool_call();
    return NULL;
}

static void take_turns(turns *tu, void (*between)(void))
{
    sem_init(&tu->called, 0, 0);
    sem_init(&tu->go, 0, 0);
    start_pool(1, 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, call_wait_call, tu), 0);
    while (sem_wait(&tu->called) != 0)
        ;
    between();
    sem_post(&tu->go);
    cr_assert_eq(pthread_join(t, NULL), 0);
    sem_destroy(&tu->called);
    sem_destroy(&tu->go);
    cr_assert_gt(tu->first, 0);
    cr_assert_gt(tu->second, 0);
}

static pid_t main_pid; /* the main thread's call, between the thread's two */

static void call_between(void)
{
    main_pid = pool_call();
}

/* The idle process a thread's call kept (watched on that thread's loop)
 * serves the next call of any thread: pool_size counts it, and another
 * thread does not start a process of its own. */
TBX_PLAIN_TEST(pool_own, a_threads_idle_process_serves_another_thread)
{
    turns tu;
    take_turns(&tu, call_between);
    cr_assert_eq(main_pid, tu.first, "another thread's idle process was not used");
    cr_assert_eq(tu.second, tu.first, "the process did not go back to the thread");
}

static void restart(void)
{
    tbx_forkserver_stop();
    start_pool(1, 0);
}

/* A stop lets go of a process watched on another thread's loop; that
 * thread's next call gets a process of the new pool. */
TBX_PLAIN_TEST(pool_own, a_stop_on_another_thread_lets_a_threads_process_go)
{
    turns tu;
    take_turns(&tu, restart);
    cr_assert_neq(tu.second, tu.first, "a process of the stopped pool served a call");
}

/* ---------------------------------------------- waiting awake, then not */

static int fn_sleep_us(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    if (args->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        usleep((useconds_t)args->via.u64);
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_sleep_us);

static pid_t sleep_call(unsigned us)
{
    unsigned char args[5] = {0xce, (unsigned char)(us >> 24), (unsigned char)(us >> 16),
                             (unsigned char)(us >> 8), (unsigned char)us};
    tbx_opts o = test_opts(TBX_POOL);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_sleep_us, args, sizeof args, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message ? r.message : "-");
    pid_t pid = r.value.type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (pid_t)r.value.via.u64 : -1;
    tbx_result_free(&r);
    return pid;
}

/* Both sides wait awake for a while when calls come back to back (the
 * caller for its answer, the pooled process for its next request), then
 * sleep: an answer slower than that wait, and a request that comes after
 * it, are served all the same, by the same process. */
TBX_PLAIN_TEST(pool_own, answers_and_requests_past_the_awake_wait_are_served)
{
    start_pool(1, 0);
    pid_t first = sleep_call(0);
    cr_assert_gt(first, 0);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(sleep_call(0), first); /* back to back: waited for awake */
    cr_assert_eq(sleep_call(20000), first);  /* an answer 20 ms away */
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(sleep_call(0), first);
        usleep(5000); /* the next request 5 ms after the answer */
    }
    cr_assert_eq(sleep_call(0), first);
    tbx_forkserver_stop();
}
