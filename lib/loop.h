/*
 * Loops and their deadlines, for the processes that run a libuv loop: the
 * caller (its own loops, or a thread's private loop for blocking calls) and
 * the forkserver.  With engine.h, the only internal header that includes
 * <uv.h>.
 */
#ifndef TBX_LOOP_H
#define TBX_LOOP_H

#include "os.h"

#include <uv.h>

/* ------------------------------------------------------------- deadlines
 * One timerfd per loop, shared by every call on it, armed at the earliest
 * deadline of a min-heap.  libuv's own timers tick in whole milliseconds;
 * this keeps a deadline's lateness near the kernel's floor. */
typedef struct tbx__timers tbx__timers;
typedef struct tbx__deadline tbx__deadline;
typedef void tbx__deadline_cb(tbx__deadline *d);

struct tbx__deadline {
    uint64_t when_ns;
    size_t index;          /* position in the heap; SIZE_MAX when not armed */
    tbx__deadline_cb *cb;
    tbx__timers *timers;   /* non-NULL while the deadline holds a reference */
};

void tbx__deadline_init(tbx__deadline *d, tbx__deadline_cb *cb);
/* Arms (or re-arms) d at when_ns on loop.  Returns 0 or -errno. */
int tbx__deadline_start(tbx__deadline *d, uv_loop_t *loop, uint64_t when_ns);
/* Disarms d and drops its reference to the loop's timer.  Idempotent. */
void tbx__deadline_stop(tbx__deadline *d);
/* Makes the private loop's timer now and keeps it until unpinned. */
int tbx__deadline_pin(uv_loop_t *loop);
/* Drops the private loop's pinned timer (the thread is ending). */
void tbx__deadline_unpin(uv_loop_t *loop);

/* The calling thread's private loop for blocking calls, made on first use;
 * NULL if it cannot be made. */
uv_loop_t *tbx__private_loop(void);
/* 1 if loop is the calling thread's private loop. */
int tbx__private_loop_is(uv_loop_t *loop);
/* fn runs on a thread's private loop as the thread ends (its lock held),
 * before the loop runs its last closes: handles that outlive the calls on
 * it (one user per process: the pool's) are closed there. */
void tbx__private_loop_on_end(void (*fn)(uv_loop_t *loop));
/* A private loop's lock (recursive): held by its thread while a blocking
 * call runs on it (enter, leave), so that another thread may close a
 * handle that outlives the calls on it when the loop is not in use, and
 * only then (trylock: 1 if it got the lock; then leave).  A loop whose
 * thread has ended is gone: a handle on it is found under a lock that its
 * on_end takes too. */
void tbx__private_loop_enter(uv_loop_t *loop);
void tbx__private_loop_leave(uv_loop_t *loop);
int tbx__private_loop_trylock(uv_loop_t *loop);

#endif /* TBX_LOOP_H */
