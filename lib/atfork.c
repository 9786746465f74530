/*
 * The library's one at-fork child handler.  A fork child shares its parent's
 * memory and descriptors but none of its other threads: what timebox keeps
 * per process (loops, deadline timers, the cap's queue, the forkserver
 * connection) must be forgotten there, and its locks made afresh.  Each module
 * registers what to forget in its fixed place, and they run in that order,
 * whatever order the modules were first used in.  Runs in the fork child,
 * which has one thread: no lock is taken here.
 */
#include "os.h"

#include <pthread.h>
#include <stdatomic.h>

typedef void forget_fn(void);

static _Atomic(forget_fn *) forked[TBX__NFORGET];
static _Atomic(forget_fn *) called[TBX__NFORGET];
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_child(void)
{
    for (int i = 0; i < TBX__NFORGET; i++) {
        forget_fn *f = atomic_load(&forked[i]);
        if (f != NULL)
            f();
    }
}

static void atfork_register(void)
{
    (void)pthread_atfork(NULL, NULL, atfork_child);
}

void tbx__forget_register(int place, void (*on_fork)(void), void (*on_call)(void))
{
    pthread_once(&atfork_once, atfork_register);
    atomic_store(&forked[place], on_fork);
    atomic_store(&called[place], on_call);
}

void tbx__forget_call_parent(void)
{
    for (int i = 0; i < TBX__NFORGET; i++) {
        forget_fn *f = atomic_load(&called[i]);
        if (f != NULL)
            f();
    }
}
