/*
 * Each thread's private loop, on which its blocking calls run the engine.
 * Made on first use and kept with its deadline timer, so a blocking call does
 * not pay for their set-up; closed when the thread exits.
 *
 * A process forked from this one (a pre-forked worker, or a fork child of
 * timebox's own) must not use them: an epoll instance is shared across a
 * fork, so the two processes would steal each other's events.  A fork child
 * handler closes the child's copies of every private loop's descriptors and
 * forgets them; the child makes new ones on its first call.
 */
#include "loop.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct private_loop {
    uv_loop_t loop;            /* first: a loop's address is its record's */
    pthread_mutex_t busy;      /* held while the loop is used: by its thread
                                  through a blocking call, as it ends, or by
                                  another thread that closes a handle on it
                                  (tbx__private_loop_trylock); recursive */
    struct private_loop *next;
} private_loop;

static pthread_key_t loop_key;
static pthread_once_t loop_once = PTHREAD_ONCE_INIT;
static _Thread_local uv_loop_t *thread_loop;
static pthread_mutex_t loops_lock = PTHREAD_MUTEX_INITIALIZER;
static private_loop *loops;
static void (*_Atomic on_end)(uv_loop_t *loop);

static void loop_destroy(void *p)
{
    private_loop *pl = p;
    pthread_mutex_lock(&loops_lock);
    for (private_loop **q = &loops; *q != NULL; q = &(*q)->next) {
        if (*q == pl) {
            *q = pl->next;
            break;
        }
    }
    pthread_mutex_unlock(&loops_lock);
    /* Blocking calls leave nothing on it but the pinned timer and what
     * on_end closes (a pooled process kept watched), closed here. */
    void (*end)(uv_loop_t *) = on_end;
    pthread_mutex_lock(&pl->busy);
    if (end != NULL)
        end(&pl->loop);
    tbx__deadline_unpin(&pl->loop);
    uv_run(&pl->loop, UV_RUN_DEFAULT);
    int closed = uv_loop_close(&pl->loop) == 0;
    pthread_mutex_unlock(&pl->busy);
    if (closed) {
        pthread_mutex_destroy(&pl->busy);
        free(pl);
    }
}

static void atfork_child(void)
{
    /* One thread here, and the loops' memory is ours to leave: only their
     * descriptors, copies of the parent's, are closed. */
    for (private_loop *pl = loops; pl != NULL; pl = pl->next) {
        tbx__close(uv_backend_fd(&pl->loop));
        tbx__close(pl->loop.signal_pipefd[0]);
        tbx__close(pl->loop.signal_pipefd[1]);
    }
    loops = NULL;
    if (thread_loop != NULL)
        (void)pthread_setspecific(loop_key, NULL);
    thread_loop = NULL;
    pthread_mutex_init(&loops_lock, NULL);
}

static void loop_init_once(void)
{
    (void)pthread_key_create(&loop_key, loop_destroy);
    tbx__forget_register(TBX__FORGET_LOOPS, atfork_child, NULL);
}

int tbx__private_loop_is(uv_loop_t *loop)
{
    return loop != NULL && loop == thread_loop;
}

void tbx__private_loop_on_end(void (*fn)(uv_loop_t *loop))
{
    on_end = fn;
}

void tbx__private_loop_enter(uv_loop_t *loop)
{
    pthread_mutex_lock(&((private_loop *)loop)->busy);
}

void tbx__private_loop_leave(uv_loop_t *loop)
{
    pthread_mutex_unlock(&((private_loop *)loop)->busy);
}

int tbx__private_loop_trylock(uv_loop_t *loop)
{
    return pthread_mutex_trylock(&((private_loop *)loop)->busy) == 0;
}

uv_loop_t *tbx__private_loop(void)
{
    if (thread_loop != NULL)
        return thread_loop;
    pthread_once(&loop_once, loop_init_once);
    private_loop *pl = malloc(sizeof *pl);
    if (pl == NULL)
        return NULL;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    int rc = pthread_mutex_init(&pl->busy, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0 || uv_loop_init(&pl->loop) != 0) {
        if (rc == 0)
            pthread_mutex_destroy(&pl->busy);
        free(pl);
        return NULL;
    }
    pthread_mutex_lock(&loops_lock);
    pl->next = loops;
    loops = pl;
    pthread_mutex_unlock(&loops_lock);
    thread_loop = &pl->loop;
    (void)pthread_setspecific(loop_key, pl);
    /* Its deadline timer is made now and kept with it, so a thread's
     * descriptors are all made by its first call.  Without one, calls make
     * their own. */
    (void)tbx__deadline_pin(&pl->loop);
    return thread_loop;
}
