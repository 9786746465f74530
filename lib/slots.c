/*
 * The process's cap on children alive at once (tbx_set_max_children).
 * Calls beyond it wait in one queue, in order, whatever their front door: a
 * blocking caller sleeps on its own condition variable, an async call waits
 * on its loop for a uv_async_t that the releasing thread signals.  Free of
 * cost when no cap is set: a call that finds none takes no slot.
 */
#include "engine.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint slots_max; /* 0: no cap */
static unsigned slots_used;
static tbx__waiter *queue_head, **queue_tail = &queue_head;
static tbx__waiter *held_head; /* async calls holding a slot */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* A fork child runs none of its parent's calls. */
static void atfork_child(void)
{
    slots_used = 0;
    queue_head = NULL;
    held_head = NULL;
    queue_tail = &queue_head;
    pthread_mutex_init(&slots_lock, NULL);
}

static void atfork_register(void)
{
    tbx__forget_register(TBX__FORGET_SLOTS, atfork_child, NULL);
}

int tbx_set_max_children(unsigned n)
{
    pthread_once(&atfork_once, atfork_register);
    atomic_store(&slots_max, n);
    tbx__slot_release(0); /* a larger cap lets waiters in at once */
    return 0;
}

int tbx__slots_capped(void)
{
    return atomic_load(&slots_max) != 0;
}

static void enqueue(tbx__waiter *w)
{
    w->next = NULL;
    *queue_tail = w;
    queue_tail = &w->next;
}

/* Removes w if it is still queued (not granted).  Under the lock. */
static void dequeue(tbx__waiter *w)
{
    for (tbx__waiter **p = &queue_head; *p != NULL; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            if (queue_tail == &w->next)
                queue_tail = p;
            return;
        }
    }
}

static int free_slot(void)
{
    unsigned max = atomic_load(&slots_max);
    return max == 0 || slots_used < max;
}

/* Takes a slot at once when one is free and nobody waits before us. */
static int take_now(void)
{
    if (queue_head != NULL || !free_slot())
        return 0;
    slots_used++;
    return 1;
}

/* An async call's slot, held for the thread that runs its loop.  Under the
 * lock. */
static void hold(tbx__waiter *w)
{
    w->held = 1;
    w->held_next = held_head;
    held_head = w;
}

/* Whether every slot a waiter could ever get is in the hands of this
 * thread's own loops, which cannot run while it waits: the slots they hold,
 * and those their queued calls would take first.  Under the lock. */
static int only_own_loops_can_free(void)
{
    pthread_t self = pthread_self();
    unsigned own_held = 0, own_ahead = 0;
    for (tbx__waiter *w = held_head; w != NULL; w = w->held_next)
        own_held += pthread_equal(w->owner, self) != 0;
    for (tbx__waiter *w = queue_head; w != NULL; w = w->next)
        own_ahead += w->cond == NULL && pthread_equal(w->owner, self) != 0;
    return slots_used - own_held <= own_ahead;
}

void tbx__slot_release_call(tbx__call *c)
{
    pthread_mutex_lock(&slots_lock);
    if (c->waiter.held) {
        for (tbx__waiter **p = &held_head; *p != NULL; p = &(*p)->held_next) {
            if (*p == &c->waiter) {
                *p = c->waiter.held_next;
                break;
            }
        }
        c->waiter.held = 0;
    }
    pthread_mutex_unlock(&slots_lock);
    tbx__slot_release(1);
}

void tbx__slot_release(int held)
{
    pthread_mutex_lock(&slots_lock);
    if (held && slots_used > 0)
        slots_used--;
    while (queue_head != NULL && free_slot()) {
        tbx__waiter *w = queue_head;
        queue_head = w->next;
        if (queue_head == NULL)
            queue_tail = &queue_head;
        slots_used++;
        w->granted = 1;
        if (w->cond != NULL) {
            pthread_cond_signal(w->cond);
        } else {
            hold(w);
            uv_async_send(&w->call->wake); /* thread-safe: wakes its loop */
        }
    }
    pthread_mutex_unlock(&slots_lock);
}

int tbx__slot_wait(uint64_t deadline_ns)
{
    pthread_condattr_t ca;
    pthread_cond_t cond;
    tbx__waiter w;
    memset(&w, 0, sizeof w);
    w.cond = &cond;
    int rc = 0;

    pthread_mutex_lock(&slots_lock);
    if (take_now()) {
        pthread_mutex_unlock(&slots_lock);
        return 0;
    }
    if (only_own_loops_can_free()) {
        pthread_mutex_unlock(&slots_lock);
        return -EDEADLK;
    }
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cond, &ca);
    pthread_condattr_destroy(&ca);
    enqueue(&w);
    while (!w.granted && rc == 0) {
        if (deadline_ns == 0) {
            pthread_cond_wait(&cond, &slots_lock);
            continue;
        }
        struct timespec ts = {(time_t)(deadline_ns / 1000000000u),
                              (long)(deadline_ns % 1000000000u)};
        if (pthread_cond_timedwait(&cond, &slots_lock, &ts) == ETIMEDOUT && !w.granted) {
            dequeue(&w);
            rc = TBX_ETIMEDOUT;
        }
    }
    pthread_mutex_unlock(&slots_lock);
    pthread_cond_destroy(&cond);
    return rc;
}

int tbx__slot_queue(tbx__call *c)
{
    pthread_mutex_lock(&slots_lock);
    int now = take_now();
    c->waiter.cond = NULL;
    c->waiter.call = c;
    c->waiter.granted = 0;
    c->waiter.owner = pthread_self(); /* async calls start on their loop's thread */
    if (now)
        hold(&c->waiter);
    else
        enqueue(&c->waiter);
    pthread_mutex_unlock(&slots_lock);
    return now;
}

int tbx__slot_unqueue(tbx__call *c)
{
    pthread_mutex_lock(&slots_lock);
    int granted = c->waiter.granted;
    if (!granted)
        dequeue(&c->waiter);
    pthread_mutex_unlock(&slots_lock);
    return granted;
}
