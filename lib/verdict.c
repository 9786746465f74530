/*
 * The verdict on a finished call: what its status is, from what was seen
 * (the frame, the exit, the engine's own reasons), with the value, the
 * message and the fail code that go with it.  Order matters: a system
 * error first, then a reason the engine decided (deadline, cancel, bad
 * frame), then what the child said, then how it ended.
 */
#include "engine.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static void set_message(tbx_result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_message(tbx_result *r, const char *fmt, ...)
{
    char *m = malloc(256);
    if (m == NULL)
        return; /* the static message stays */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, 256, fmt, ap);
    va_end(ap);
    r->priv_[TBX__OWN_MESSAGE] = m;
    r->message = m;
}

/* The complete OK payload becomes the result's value, owned by the result. */
static int take_value(tbx__call *c, tbx_result *r)
{
    size_t len = (size_t)c->hdr.len, off = 0;
    if (tbx__msgpack_check(c->payload, len, TBX__MAX_DEPTH) != 0)
        return TBX_EPROTO;
    msgpack_zone *zone = msgpack_zone_new(256);
    if (zone == NULL)
        return -ENOMEM;
    /* Strings and binaries in the value point into the payload: the result
     * keeps both. */
    if (msgpack_unpack(c->payload, len, &off, zone, &r->value) != MSGPACK_UNPACK_SUCCESS) {
        msgpack_zone_free(zone);
        r->value.type = MSGPACK_OBJECT_NIL;
        return TBX_EPROTO;
    }
    if (c->payload_map != NULL)
        r->priv_[TBX__OWN_MAP] = c->payload_map;
    else
        r->priv_[TBX__OWN_PAYLOAD] = c->payload;
    r->priv_[TBX__OWN_ZONE] = zone;
    c->payload = c->payload_map = NULL;
    return 0;
}

/* The codes a worker may report for a request it could not serve. */
static int worker_error(int code)
{
    if (code == TBX_ENOTREG || code == TBX_EPROTO || (code < 0 && code > -4096))
        return code; /* -errno: the worker's or the server's own failure */
    return TBX_EPROTO;
}

int tbx__verdict(tbx__call *c, tbx_result *r)
{
    if (c->sys_error != 0)
        return c->sys_error;
    if (c->lost && c->verdict == 0) {
        set_message(r, "%s", c->lost_why);
        return -ECONNRESET;
    }
    if (c->verdict == TBX_ETIMEDOUT && c->child.pid == 0 && c->t_launch == c->t_done) {
        set_message(r, "deadline passed while the call waited for a free slot "
                       "(tbx_set_max_children)");
        return c->verdict;
    }
    if (c->verdict == TBX_ETIMEDOUT && c->child.worker && !c->started &&
        c->launcher->not_started != NULL)
        set_message(r, "deadline passed before the child started the function: it was still "
                       "starting, in %s",
                    c->launcher->not_started);
    if (c->verdict != 0)
        return c->verdict;
    if (c->frame_done && (c->hdr.kind == TBX__FRAME_OK || c->hdr.kind == TBX__FRAME_OK_BULK)) {
        int rc = take_value(c, r);
        if (rc == TBX_EPROTO)
            set_message(r, "the result is not exactly one msgpack object");
        return rc;
    }
    if (c->frame_done && (c->hdr.kind == TBX__FRAME_FAIL || c->hdr.kind == TBX__FRAME_ERROR)) {
        char *m = malloc((size_t)c->hdr.len + 1);
        if (m != NULL) {
            memcpy(m, c->payload, (size_t)c->hdr.len);
            m[c->hdr.len] = '\0';
            r->priv_[TBX__OWN_MESSAGE] = m;
            r->message = m;
        }
        if (c->hdr.kind == TBX__FRAME_ERROR)
            return worker_error(c->hdr.fail_code);
        r->fail_code = c->hdr.fail_code;
        return TBX_EFAILED;
    }
    if (c->hdr_got > 0) {
        set_message(r, "the child's result frame was cut short (%llu of %llu bytes)",
                    (unsigned long long)c->payload_got,
                    (unsigned long long)(c->hdr_got == sizeof c->hdr ? c->hdr.len : 0));
        return TBX_EPROTO;
    }
    if (c->child.worker && !c->started && c->wstatus != -1 && WIFEXITED(c->wstatus)) {
        set_message(r, "the spawned program exited with code %d before serving the call: "
                       "does its main() call tbx_init(argc, argv) first?",
                    WEXITSTATUS(c->wstatus));
        return TBX_EEXITED;
    }
    if (c->wstatus != -1 && WIFSIGNALED(c->wstatus) && WTERMSIG(c->wstatus) == SIGXCPU) {
        set_message(r, "child exceeded its CPU time limit (SIGXCPU)");
        return TBX_ECRASHED;
    }
    if (c->wstatus != -1 && WIFSIGNALED(c->wstatus)) {
        int sig = WTERMSIG(c->wstatus);
        set_message(r, "child killed by signal %d (%s)", sig, sigabbrev_np(sig) ? sigabbrev_np(sig) : "?");
        return TBX_ECRASHED;
    }
    if (c->wstatus != -1)
        set_message(r, "child exited with code %d without a result", WEXITSTATUS(c->wstatus));
    else
        set_message(r, "child was reaped by someone else before timebox");
    return TBX_EEXITED;
}

void tbx__result_fill(tbx__call *c, tbx_result *r)
{
    r->pid = c->child.pid;
    r->method = c->opts.method; /* resolved, for a method chosen per call */
    r->kill_signal = c->kill_signal;
    if (c->wstatus != -1 && WIFEXITED(c->wstatus))
        r->exit_code = WEXITSTATUS(c->wstatus);
    if (c->wstatus != -1 && WIFSIGNALED(c->wstatus))
        r->term_signal = WTERMSIG(c->wstatus);
    r->status = tbx__verdict(c, r);
    if (r->status != 0 && r->message == NULL)
        r->message = tbx_strerror(r->status);
    tbx__streams_give(c, r);
    for (int i = 0; i < TBX__NSTREAMS; i++) {
        free(c->capture[i].buf);
        c->capture[i].buf = NULL;
    }
    tbx__payload_free(c->payload, c->payload_map);
    c->payload = c->payload_map = NULL;
}
