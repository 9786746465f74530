/*
 * Ending a child: the deadline and what follows it.  SIGTERM to the child's
 * process group at the deadline (after a backtrace, when one is asked for),
 * SIGKILL grace_s later, both sent by the call's launcher; a call still
 * waiting for a slot when its deadline comes never gets one.  Runs in the
 * caller, on the call's loop.
 */
#include "engine.h"

#include <signal.h>
#include <stddef.h>

static void signal_child(tbx__call *c, int sig)
{
    c->launcher->signal(c, sig);
}

static void escalate_cb(tbx__deadline *d);

/* Ends the child: SIGTERM, then SIGKILL after grace (or SIGKILL at once).
 * A child that has already exited is left to its exit watcher: it was not
 * the deadline that ended it, and it needs no signal. */
void tbx__engine_escalate(tbx__call *c, int why, int hard)
{
    if (c->queued) {
        /* Still waiting for a slot: it never gets one.  Granted meanwhile
         * (its wake-up on the way), it gives it back. */
        c->queued = 0;
        if (tbx__slot_unqueue(c))
            c->has_slot = 1;
        c->verdict = why;
        c->wstatus = -1;
        tbx__engine_finish(c);
        return;
    }
    if (c->finishing || c->reaped || c->launcher->exited(c))
        return;
    if (c->verdict == 0 && !c->frame_done)
        c->verdict = why;
    /* First, where was it?  Taken at once from outside, or a short wait for
     * the child's own, which ends early when it comes (stream_cb). */
    if (!hard && why == TBX_ETIMEDOUT && c->kill_signal == 0 && !c->frame_done &&
        c->capture[TBX__BACKTRACE].fd >= 0 && !c->backtrace_asked) {
        c->backtrace_asked = 1;
        c->backtrace_pending = c->launcher->backtrace(c) == 0;
        c->deadline.cb = escalate_cb;
        if (c->backtrace_pending &&
            tbx__deadline_start(&c->deadline, c->loop, tbx__now_ns() + TBX__BACKTRACE_WAIT_NS) == 0)
            return;
    }
    c->backtrace_pending = 0;
    if (hard || c->opts.grace_s <= 0 || c->frame_done || c->kill_signal == SIGTERM) {
        /* A forkserver's child may be known to its server only (pid 0). */
        if (c->kill_signal == SIGTERM && c->child.pid > 0)
            tbx__call_log(c, TBX_LOG_INFO, "child %d still alive %.3f s after SIGTERM: sent SIGKILL",
                     (int)c->child.pid, c->opts.grace_s);
        else if (c->kill_signal == SIGTERM)
            tbx__call_log(c, TBX_LOG_INFO, "the child still alive %.3f s after SIGTERM: sent "
                                           "SIGKILL", c->opts.grace_s);
        tbx__deadline_stop(&c->deadline);
        c->kill_signal = SIGKILL;
        signal_child(c, SIGKILL);
        return;
    }
    c->kill_signal = SIGTERM;
    signal_child(c, SIGTERM);
    /* SIGKILL comes grace_s after the deadline itself, so lateness in
     * sending SIGTERM is not added again; a cancel, or a wait for a
     * backtrace, counts from now. */
    uint64_t from = why == TBX_ETIMEDOUT && c->deadline.when_ns != 0 && !c->backtrace_asked
                        ? c->deadline.when_ns
                        : tbx__now_ns();
    c->deadline.cb = escalate_cb;
    uint64_t at = from + tbx__seconds_to_ns(c->opts.grace_s);
    if (tbx__deadline_start(&c->deadline, c->loop, at) != 0) {
        c->kill_signal = SIGKILL; /* no timer for the grace: no grace */
        signal_child(c, SIGKILL);
    }
}

static void escalate_cb(tbx__deadline *d)
{
    tbx__call *c = (tbx__call *)((char *)d - offsetof(tbx__call, deadline));
    tbx__engine_escalate(c, TBX_ETIMEDOUT, 0);
}

int tbx__engine_arm_deadline(tbx__call *c, uint64_t from_ns)
{
    if (c->opts.timeout_s <= 0)
        return 0;
    c->deadline.cb = escalate_cb;
    return tbx__deadline_start(&c->deadline, c->loop,
                               from_ns + tbx__seconds_to_ns(c->opts.timeout_s));
}

int tbx__engine_stop(tbx__call *c, int why)
{
    if (c->finishing || (c->reaped && !c->queued))
        return TBX_EINVAL;
    tbx__engine_escalate(c, why, 0);
    return 0;
}
