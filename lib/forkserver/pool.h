/*
 * TBX_POOL's slots, the caller's side, between launch_pool.c (the idle
 * list, ordering a process, the launcher) and pool_own.c (a slot watched on
 * a thread's private loop from one blocking call to the next).
 */
#ifndef TBX_FORKSERVER_POOL_H
#define TBX_FORKSERVER_POOL_H

#include "forkserver/client.h"

/* One pooled process, reached through three descriptors: the control
 * socket the server reports on, the request socket, the result pipe. */
typedef struct tbx__pool_slot tbx__pool_slot;
struct tbx__pool_slot {
    tbx__pool_slot *next;       /* in the idle list */
    pid_t pid;                  /* 0 until a call has read the server's LAUNCHED */
    int containment;            /* what holds it (TBX_CONTAIN_*), from LAUNCHED */
    int control, request, result;
    /* Watched on a thread's private loop (pool_own.c). */
    uv_loop_t *loop;            /* that loop; NULL: none */
    uv_poll_t result_h, control_h;
    tbx__call *call;            /* the call its handles serve now; NULL: idle */
    unsigned opened;            /* 1: result_h, 2: control_h initialised */
    int closes;                 /* handle closes to come before it is reused */
    uint64_t sent_ns;           /* when its last request went (monotonic) */
    uint64_t answered_ns;       /* how long its last answer took; 0: unknown */
};

/* pool_own.c, for the launcher.  A slot's handles are touched only by the
 * thread of its loop in a blocking call (the loop's lock held), or by
 * another thread under the pool's lock with the loop's lock taken by
 * trylock (take_over, close_from).
 * new:       a zeroed slot (its memory recycled: see pool_own.c), or NULL.
 * alive:     a slot watched on this thread's loop can still serve (no news
 *            stopped its handles).
 * lend:      w serves call now: a watched slot's handles become the call's
 *            (child->result_watch, the control socket's callback).
 * reclaim:   the call is over: its handles are the slot's again; 1 if they
 *            can still serve.
 * keep:      after a call kept w, on a thread's private loop, w is watched
 *            there from now on; 0 if it could not be (w is then closed).
 * close:     closes w's descriptors now, its handles (its memory reused
 *            once they have closed), on the thread of its loop.
 * take_over: under the pool's lock, w (watched on another thread's loop, or
 *            nowhere) for a call of this thread: w itself, or the same
 *            process in a slot watched nowhere; NULL if its loop is in use.
 * close_from: under the pool's lock, closes w from any thread unless its
 *            loop is in use (0). */
tbx__pool_slot *tbx__pool_slot_new(void);
int tbx__pool_own_alive(tbx__pool_slot *w);
void tbx__pool_own_lend(tbx__pool_slot *w, tbx__call *call, tbx__child *child);
int tbx__pool_own_reclaim(tbx__pool_slot *w, tbx__call *call);
int tbx__pool_own_keep(tbx__pool_slot *w, tbx__call *call);
void tbx__pool_own_close(tbx__pool_slot *w);
tbx__pool_slot *tbx__pool_own_take_over(tbx__pool_slot *w);
int tbx__pool_own_close_from(tbx__pool_slot *w);
/* The request to w is whole on its way: a blocking call whose process
 * answered its last call within TBX__POOL_AWAIT_NS waits for the answer
 * that long, awake (see pool_own.c); frame_done then records the time. */
#define TBX__POOL_AWAIT_NS 50000ull
void tbx__pool_own_sent(tbx__pool_slot *w, tbx__call *call);
void tbx__pool_own_answered(tbx__pool_slot *w);

#endif /* TBX_FORKSERVER_POOL_H */
