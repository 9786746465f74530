/*
 * A pooled process (TBX_POOL) watched on a thread's private loop.
 *
 * A thread's blocking calls run on its private loop, where watching a
 * slot's result pipe and control socket for one call (libuv's handles
 * made, started, stopped and closed) took 13 system calls, more than the
 * rest of the call.  So a slot a blocking call kept stays watched on that
 * loop, idle, unreferenced (it keeps no loop running), and the thread's
 * next call takes it first: its handles are lent to the call as it starts
 * (the engine's result_watch, the control socket's callback) and taken back
 * as it ends.  No system call is made for them per call.
 *
 * The slot stays in the idle list, which every thread takes from.  Only
 * its loop's thread may touch its handles while that loop is in use; a
 * call on another thread that finds no other idle slot takes the process
 * over (its handles closed on that loop) if the loop is not in use at that
 * moment (tbx__private_loop_trylock), so pool_size still counts every idle
 * process, and no call waits for another thread's.
 *
 * A slot whose handles close can be reused only once they have closed,
 * which happens when their loop next runs: for a blocking call's loop, at
 * that thread's next call, or as it ends.  Its memory is then kept for the
 * next slot rather than freed, so what the pool holds is bounded by the
 * most slots it ever had at once, whichever call's loop run closed them.
 */
#include "forkserver/pool.h"

#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>

static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static tbx__pool_slot *spare; /* closed slots' memory, for the next ones */

tbx__pool_slot *tbx__pool_slot_new(void)
{
    pthread_mutex_lock(&spare_lock);
    tbx__pool_slot *w = spare;
    if (w != NULL)
        spare = w->next;
    pthread_mutex_unlock(&spare_lock);
    if (w == NULL)
        w = malloc(sizeof *w);
    if (w != NULL)
        *w = (tbx__pool_slot){.control = -1, .request = -1, .result = -1};
    return w;
}

static void recycle(tbx__pool_slot *w)
{
    pthread_mutex_lock(&spare_lock);
    w->next = spare;
    spare = w;
    pthread_mutex_unlock(&spare_lock);
}

/* Between calls, news on the handles (the process died, or wrote out of
 * turn) means it cannot serve again: they stop, and the next call that
 * looks at it closes it.  During a call, the news is the call's. */
static void idle_news(tbx__pool_slot *w)
{
    uv_poll_stop(&w->result_h);
    uv_poll_stop(&w->control_h);
}

#define SLOT_OF(h, member) ((tbx__pool_slot *)((char *)(h) - offsetof(tbx__pool_slot, member)))

static void news(tbx__pool_slot *w, uv_poll_cb call_cb, uv_poll_t *h, int status, int events)
{
    if (w->call != NULL)
        call_cb(h, status, events);
    else
        idle_news(w);
}

static void result_cb(uv_poll_t *h, int status, int events)
{
    news(SLOT_OF(h, result_h), tbx__engine_result_cb, h, status, events);
}

static void control_cb(uv_poll_t *h, int status, int events)
{
    news(SLOT_OF(h, control_h), tbx__fs_client_control_cb, h, status, events);
}

static void closed_cb(uv_handle_t *h)
{
    tbx__pool_slot *w = h->data;
    if (--w->closes == 0)
        recycle(w);
}

/* Its handles close (libuv takes a descriptor out of its epoll set as its
 * handle closes, so before the descriptors do), then the slot is reused. */
static void unwatch(tbx__pool_slot *w)
{
    w->loop = NULL;
    w->closes = 1;
    w->result_h.data = w->control_h.data = w;
    if (w->opened & 1u) {
        w->closes++;
        uv_close((uv_handle_t *)&w->result_h, closed_cb);
    }
    if (w->opened & 2u) {
        w->closes++;
        uv_close((uv_handle_t *)&w->control_h, closed_cb);
    }
    w->opened = 0;
}

void tbx__pool_own_close(tbx__pool_slot *w)
{
    unwatch(w);
    tbx__close(w->control);
    tbx__close(w->request);
    tbx__close(w->result);
    if (--w->closes == 0)
        recycle(w);
}

int tbx__pool_own_alive(tbx__pool_slot *w)
{
    return w->loop == NULL || (uv_is_active((uv_handle_t *)&w->result_h) &&
                               uv_is_active((uv_handle_t *)&w->control_h));
}

void tbx__pool_own_lend(tbx__pool_slot *w, tbx__call *c, tbx__child *child)
{
    if (w->loop == NULL)
        return;
    w->call = c;
    w->result_h.data = w->control_h.data = c;
    uv_ref((uv_handle_t *)&w->result_h);
    uv_ref((uv_handle_t *)&w->control_h);
    child->result_watch = &w->result_h;
}

int tbx__pool_own_reclaim(tbx__pool_slot *w, tbx__call *c)
{
    if (w->loop == NULL)
        return 1;
    w->call = NULL;
    c->child.result_watch = NULL;
    uv_unref((uv_handle_t *)&w->result_h);
    uv_unref((uv_handle_t *)&w->control_h);
    return tbx__pool_own_alive(w);
}

int tbx__pool_own_keep(tbx__pool_slot *w, tbx__call *c)
{
    if (w->loop != NULL || !tbx__private_loop_is(c->loop))
        return 1;
    w->loop = c->loop;
    int rc = uv_poll_init(c->loop, &w->result_h, w->result);
    w->opened |= rc == 0 ? 1u : 0u;
    if (rc == 0 && (rc = uv_poll_init(c->loop, &w->control_h, w->control)) == 0)
        w->opened |= 2u;
    if (rc == 0 && (rc = uv_poll_start(&w->result_h, UV_READABLE, result_cb)) == 0)
        rc = uv_poll_start(&w->control_h, UV_READABLE, control_cb);
    if (rc != 0) {
        tbx__pool_own_close(w);
        return 0;
    }
    uv_unref((uv_handle_t *)&w->result_h);
    uv_unref((uv_handle_t *)&w->control_h);
    return 1;
}

tbx__pool_slot *tbx__pool_own_take_over(tbx__pool_slot *w)
{
    uv_loop_t *loop = w->loop;
    if (loop == NULL)
        return w;
    tbx__pool_slot *copy = tbx__pool_slot_new();
    if (copy == NULL)
        return NULL;
    if (!tbx__private_loop_trylock(loop)) {
        recycle(copy);
        return NULL;
    }
    *copy = (tbx__pool_slot){.pid = w->pid, .containment = w->containment,
                             .control = w->control, .request = w->request, .result = w->result};
    unwatch(w);
    if (--w->closes == 0) /* none was open */
        recycle(w);
    tbx__private_loop_leave(loop); /* its thread may run the closes now */
    return copy;
}

int tbx__pool_own_close_from(tbx__pool_slot *w)
{
    uv_loop_t *loop = w->loop;
    if (loop != NULL && !tbx__private_loop_trylock(loop))
        return 0;
    tbx__pool_own_close(w);
    if (loop != NULL)
        tbx__private_loop_leave(loop);
    return 1;
}

/* Waiting awake.  A pooled call is a round trip between two processes, and
 * on an idle machine a process that sleeps while the other works is woken
 * on a CPU of its own, which a halted virtual CPU makes tens of microseconds
 * slower than the round trip itself (README, Performance; bench/pingpong.c).
 * So a blocking call whose process answered its last call within
 * TBX__POOL_AWAIT_NS polls for the answer that long before its loop sleeps:
 * its CPU stays awake for the answer, and a slow answer costs that much
 * CPU time at most once (the time is taken again at each answer).  An
 * async call never waits here: its loop has other work.  The pooled
 * process does the same for its next request (pool_serve.c). */
void tbx__pool_own_sent(tbx__pool_slot *w, tbx__call *call)
{
    w->sent_ns = tbx__now_ns();
    if (!tbx__private_loop_is(call->loop) || w->answered_ns == 0 ||
        w->answered_ns > TBX__POOL_AWAIT_NS)
        return;
    struct pollfd p = {.fd = w->result, .events = POLLIN};
    /* poll with no timeout never sleeps; an interrupted one ends the wait. */
    while (poll(&p, 1, 0) == 0 && tbx__now_ns() - w->sent_ns < TBX__POOL_AWAIT_NS)
        ;
}

void tbx__pool_own_answered(tbx__pool_slot *w)
{
    if (w->sent_ns != 0)
        w->answered_ns = tbx__now_ns() - w->sent_ns;
}
