/*
 * The cap on children (tbx_set_max_children), for the engine's calls: an
 * async call that finds no free slot waits for one on its loop, its hard
 * deadline running meanwhile; a blocking call that waited too long is
 * refused.  The slots themselves are counted in slots.c.
 */
#include "engine.h"

/* The launch after the wait: on the call's loop, a slot held. */
static void wake_cb(uv_async_t *h)
{
    tbx__call *c = h->data;
    if (!c->queued)
        return; /* ended while its wake-up was on the way */
    c->queued = 0;
    c->has_slot = 1;
    uv_close((uv_handle_t *)&c->wake, tbx__engine_close_cb); /* counted: closes later */
    c->h_wake = 0;
    int rc = tbx__engine_run(c);
    if (rc != 0) {
        /* Accepted long ago: the failure is the callback's to report, once
         * the handles close (not abandoned: the caller waits for it). */
        c->abandoned = 0;
        c->sys_error = rc;
        c->reaped = 1;
        c->wstatus = -1;
        tbx__engine_finish(c);
    }
}

int tbx__engine_run_queued(tbx__call *c)
{
    c->close_cb = tbx__engine_close_cb;
    if (!tbx__slots_capped() || c->opts.cap_exempt)
        return tbx__engine_run(c);
    if (tbx__slot_queue(c)) {
        c->has_slot = 1;
        int rc = tbx__engine_run(c);
        if (rc != 0) { /* no child: finalize never runs */
            c->has_slot = 0;
            tbx__slot_release_call(c);
        }
        return rc;
    }
    /* Waiting.  Its hard deadline runs meanwhile; a soft one starts with fn. */
    int rc = uv_async_init(c->loop, &c->wake, wake_cb);
    if (rc == 0) {
        c->wake.data = c;
        c->h_wake = 1;
        c->open_handles++;
        if (c->opts.hard_timeout)
            rc = tbx__engine_arm_deadline(c, c->start_ns);
    }
    if (rc != 0) {
        if (tbx__slot_unqueue(c))
            tbx__slot_release_call(c);
        tbx__deadline_stop(&c->deadline);
        tbx__engine_release_args(c);
        /* A handle made must close before c goes: abandoned_cb frees it. */
        c->abandoned = c->open_handles > 0;
        tbx__engine_close_handles(c);
        return rc;
    }
    c->queued = 1;
    return 0;
}

void tbx__engine_refuse(tbx__call *c, int status, const char *message)
{
    tbx_result *r = c->out;
    tbx__engine_release_args(c);
    r->status = status;
    r->message = message;
    r->elapsed_s = r->queued_s = (double)(tbx__now_ns() - c->start_ns) / 1e9;
    tbx__call_report(c, r);
}
