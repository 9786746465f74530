/*
 * Deadlines: one timerfd per loop, shared by every call on that loop.
 *
 * libuv's timers tick in whole milliseconds, which would make every deadline
 * up to a millisecond late.  A timerfd armed with an absolute CLOCK_MONOTONIC
 * time fires within the kernel's own slack.  One descriptor per loop, armed at
 * the earliest deadline of a min-heap, keeps a thousand calls in flight from
 * costing a thousand more descriptors.
 *
 * A loop's timer exists while some deadline on it is armed: each armed
 * deadline holds a reference, and the last one out closes the handle, so a
 * caller's uv_loop_close() never finds a handle of ours.
 */
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

struct tbx__timers {
    uv_loop_t *loop;
    uv_poll_t poll;
    int fd;
    unsigned refs;
    uint64_t armed_ns;      /* what the timerfd is set to; 0: disarmed */
    tbx__deadline **heap;
    size_t n, cap;
    tbx__timers *next;
};

/* The loops that have a timer now.  Loops run on different threads; each
 * loop's own heap is touched only from its thread. */
static pthread_mutex_t timers_lock = PTHREAD_MUTEX_INITIALIZER;
static tbx__timers *timers_list;

static int before(const tbx__deadline *a, const tbx__deadline *b)
{
    return a->when_ns < b->when_ns;
}

static void heap_set(tbx__timers *t, size_t i, tbx__deadline *d)
{
    t->heap[i] = d;
    d->index = i;
}

static void sift_up(tbx__timers *t, size_t i)
{
    tbx__deadline *d = t->heap[i];
    while (i > 0 && before(d, t->heap[(i - 1) / 2])) {
        heap_set(t, i, t->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(t, i, d);
}

static void sift_down(tbx__timers *t, size_t i)
{
    tbx__deadline *d = t->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= t->n)
            break;
        if (c + 1 < t->n && before(t->heap[c + 1], t->heap[c]))
            c++;
        if (!before(t->heap[c], d))
            break;
        heap_set(t, i, t->heap[c]);
        i = c;
    }
    heap_set(t, i, d);
}

static void heap_remove(tbx__timers *t, tbx__deadline *d)
{
    size_t i = d->index;
    tbx__deadline *last = t->heap[--t->n];
    d->index = SIZE_MAX;
    if (i == t->n)
        return;
    heap_set(t, i, last);
    sift_up(t, i);
    sift_down(t, last->index);
}

/* Points the timerfd at the earliest deadline when it is set later than
 * that, or not set.  A timerfd set earlier than needed (the deadline it was
 * set for is gone, or a later one came) is left as it is: it fires early,
 * finds nothing due, and is set again then.  Calls made one after another
 * with the same timeout, whose deadlines only grow, thus set it once per
 * timeout rather than twice per call (set at the start, cleared at the
 * end); no deadline is ever late for it. */
static void rearm(tbx__timers *t)
{
    uint64_t want = t->n > 0 ? t->heap[0]->when_ns : 0;
    if (t->armed_ns != 0 && (want == 0 || t->armed_ns <= want))
        return;
    if (want == t->armed_ns)
        return;
    /* A deadline already past still arms: the kernel fires at once. */
    if (tbx__timerfd_arm(t->fd, want == 0 ? 0 : want) == 0)
        t->armed_ns = want;
}

static void close_cb(uv_handle_t *h)
{
    tbx__timers *t = h->data;
    tbx__close(t->fd);
    free(t->heap);
    free(t);
}

static void unref_timers(tbx__timers *t)
{
    if (--t->refs > 0)
        return;
    pthread_mutex_lock(&timers_lock);
    for (tbx__timers **p = &timers_list; *p != NULL; p = &(*p)->next) {
        if (*p == t) {
            *p = t->next;
            break;
        }
    }
    pthread_mutex_unlock(&timers_lock);
    uv_close((uv_handle_t *)&t->poll, close_cb);
}

static void fire_cb(uv_poll_t *h, int status, int events)
{
    tbx__timers *t = h->data;
    uint64_t ticks;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    (void)tbx__read(t->fd, &ticks, sizeof ticks);
    t->armed_ns = 0;
    t->refs++; /* callbacks may drop every other reference */
    uint64_t now = tbx__now_ns();
    while (t->n > 0 && t->heap[0]->when_ns <= now) {
        tbx__deadline *d = t->heap[0];
        heap_remove(t, d);
        d->timers = NULL;
        t->refs--; /* d's reference: t->refs stays >= 1 here */
        d->cb(d);
    }
    rearm(t);
    unref_timers(t);
}

/* The calling thread's private loop's timer, kept between blocking calls so
 * each does not make and close a timerfd. */
static _Thread_local tbx__timers *pinned;

/* A fork child: the parent's timers are not ours.  A timerfd is shared
 * across a fork, so arming our copy would move the parent's deadlines: every
 * copy is closed, and the memory left.  The lock may have been held by a
 * thread that does not exist here. */
static void atfork_child(void)
{
    for (tbx__timers *t = timers_list; t != NULL; t = t->next)
        tbx__close(t->fd);
    timers_list = NULL;
    pinned = NULL;
    pthread_mutex_init(&timers_lock, NULL);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_register(void)
{
    tbx__forget_register(TBX__FORGET_DEADLINES, atfork_child, NULL);
}

/* The loop's timer, made if it has none.  pin: made for the thread's
 * private loop, and kept with it (tbx__deadline_pin). */
static int timers_get(uv_loop_t *loop, tbx__timers **out, int pin)
{
    tbx__timers *t;
    if (pinned != NULL && pinned->loop == loop) {
        *out = pinned;
        return 0;
    }
    pthread_once(&atfork_once, atfork_register);
    pthread_mutex_lock(&timers_lock);
    for (t = timers_list; t != NULL && t->loop != loop; t = t->next)
        ;
    pthread_mutex_unlock(&timers_lock);
    if (t != NULL) {
        *out = t;
        return 0;
    }
    t = calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    t->fd = tbx__timerfd_create();
    if (t->fd < 0) {
        int rc = t->fd;
        free(t);
        return rc;
    }
    int rc = uv_poll_init(loop, &t->poll, t->fd);
    if (rc != 0) {
        /* uv_poll_init failing leaves no handle to close. */
        tbx__close(t->fd);
        free(t);
        return rc;
    }
    t->loop = loop;
    t->poll.data = t;
    rc = uv_poll_start(&t->poll, UV_READABLE, fire_cb);
    if (rc != 0) {
        /* The handle is in the loop's list now: only its close callback
         * may free it, once the loop has let go of it. */
        uv_close((uv_handle_t *)&t->poll, close_cb);
        return rc;
    }
    uv_unref((uv_handle_t *)&t->poll); /* calls keep the loop alive, not us */
    pthread_mutex_lock(&timers_lock);
    t->next = timers_list;
    timers_list = t;
    pthread_mutex_unlock(&timers_lock);
    if (pin) {
        t->refs++; /* the pin's reference, dropped by tbx__deadline_unpin */
        pinned = t;
    }
    *out = t;
    return 0;
}

int tbx__deadline_pin(uv_loop_t *loop)
{
    tbx__timers *t;
    return timers_get(loop, &t, 1);
}

void tbx__deadline_unpin(uv_loop_t *loop)
{
    if (pinned != NULL && pinned->loop == loop) {
        tbx__timers *t = pinned;
        pinned = NULL;
        unref_timers(t);
    }
}

void tbx__deadline_init(tbx__deadline *d, tbx__deadline_cb *cb)
{
    d->when_ns = 0;
    d->index = SIZE_MAX;
    d->cb = cb;
    d->timers = NULL;
}

int tbx__deadline_start(tbx__deadline *d, uv_loop_t *loop, uint64_t when_ns)
{
    tbx__timers *t = d->timers;
    if (t == NULL) {
        int rc = timers_get(loop, &t, 0);
        if (rc != 0)
            return rc;
        if (t->n == t->cap) {
            size_t cap = t->cap ? 2 * t->cap : 16;
            tbx__deadline **h = realloc(t->heap, cap * sizeof *h);
            if (h == NULL) {
                if (t->refs == 0)
                    t->refs = 1, unref_timers(t);
                return -ENOMEM;
            }
            t->heap = h;
            t->cap = cap;
        }
        t->refs++;
        d->timers = t;
        d->when_ns = when_ns;
        t->heap[t->n++] = d;
        d->index = t->n - 1;
        sift_up(t, d->index);
    } else {
        d->when_ns = when_ns;
        sift_up(t, d->index);
        sift_down(t, d->index);
    }
    rearm(t);
    return 0;
}

void tbx__deadline_stop(tbx__deadline *d)
{
    tbx__timers *t = d->timers;
    if (t == NULL)
        return;
    heap_remove(t, d);
    d->timers = NULL;
    rearm(t);
    unref_timers(t);
}
