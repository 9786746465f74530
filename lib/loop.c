/*
 * Each thread's private loop, on which its blocking calls run the engine.
 * Made on first use and kept with its deadline timer (two descriptors: an
 * epoll instance and a timerfd), so a blocking call does not pay for their
 * set-up; closed when the thread exits.
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

static pthread_key_t loop_key;
static pthread_once_t loop_once = PTHREAD_ONCE_INIT;
static _Thread_local uv_loop_t *thread_loop;

static void loop_destroy(void *p)
{
    uv_loop_t *loop = p;
    /* Blocking calls leave nothing on it but the pinned timer, closed here. */
    tbx__deadline_unpin(loop);
    uv_run(loop, UV_RUN_DEFAULT);
    if (uv_loop_close(loop) == 0)
        free(loop);
}

int tbx__loop_is_private(const uv_loop_t *loop)
{
    return loop != NULL && loop == thread_loop;
}

static void loop_key_init(void)
{
    (void)pthread_key_create(&loop_key, loop_destroy);
}

uv_loop_t *tbx__private_loop(void)
{
    if (thread_loop != NULL)
        return thread_loop;
    pthread_once(&loop_once, loop_key_init);
    uv_loop_t *loop = malloc(sizeof *loop);
    if (loop == NULL)
        return NULL;
    if (uv_loop_init(loop) != 0) {
        free(loop);
        return NULL;
    }
    thread_loop = loop;
    (void)pthread_setspecific(loop_key, loop);
    /* Its deadline timer is made now and kept with it, so a thread's
     * descriptors are all made by its first call.  Without one, calls make
     * their own. */
    (void)tbx__deadline_pin(loop);
    return loop;
}

void tbx__loop_forget_parent(void)
{
    /* The parent's loop shares its epoll instance with the parent: a nested
     * call in this child makes a loop of its own. */
    if (thread_loop != NULL)
        (void)pthread_setspecific(loop_key, NULL);
    thread_loop = NULL;
}
