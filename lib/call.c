/*
 * The two front doors to the engine.  tbx_call runs it on the calling
 * thread's private loop until the call is done; tbx_call_async runs it on the
 * caller's loop and reports through a callback.  There is no second path.
 */
#include "engine.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

static void result_init(tbx_result *r)
{
    memset(r, 0, sizeof *r);
    r->value.type = MSGPACK_OBJECT_NIL;
    r->exit_code = -1;
}

void tbx_result_free(tbx_result *r)
{
    if (r == NULL)
        return;
    tbx__payload_free(r->priv_[TBX__OWN_PAYLOAD], r->priv_[TBX__OWN_MAP]);
    if (r->priv_[TBX__OWN_ZONE] != NULL)
        msgpack_zone_free(r->priv_[TBX__OWN_ZONE]);
    free(r->priv_[TBX__OWN_MESSAGE]);
    free(r->priv_[TBX__OWN_STDOUT]);
    free(r->priv_[TBX__OWN_STDERR]);
    free(r->priv_[TBX__OWN_BACKTRACE]);
    result_init(r);
}

/* A call that never got under way: the result says why. */
static int refuse(tbx_result *out, int rc)
{
    out->status = rc;
    if (out->message == NULL) /* a message saying more may be there */
        out->message = tbx_strerror(rc);
    return rc;
}

/* fn, or else name: a call by name (tbx_call_named). */
static int setup(tbx__call *c, uv_loop_t *loop, tbx_fn *fn, const char *name,
                 const void *args, size_t args_len, const tbx_opts *opts, tbx_result *out)
{
    memset(c, 0, sizeof *c);
    result_init(out);
    c->start_ns = tbx__now_ns();
    c->loop = loop;
    c->fn = fn;
    c->name = name;
    c->out = out;
    return tbx__engine_prepare(c, args, args_len, opts);
}

static void blocking_done_cb(tbx__call *c)
{
    TBX__UNUSED(c); /* the result is already in c->out */
}

static int call_blocking(tbx_fn *fn, const char *name, const void *args, size_t args_len,
                         const tbx_opts *opts, tbx_result *out)
{
    tbx__call c;
    tbx_result scratch;
    if (out == NULL)
        out = &scratch;
    uv_loop_t *loop = tbx__private_loop();
    int rc = setup(&c, loop, fn, name, args, args_len, opts, out);
    if (rc == 0 && loop == NULL)
        rc = -ENOMEM;
    if (rc != 0) {
        rc = refuse(out, rc);
        if (out == &scratch) /* nobody reads it: a message made for it goes */
            tbx_result_free(&scratch);
        return rc;
    }
    c.done_cb = blocking_done_cb;
    if (tbx__slots_capped() && !c.opts.cap_exempt) {
        /* Waiting for a slot counts toward a hard deadline. */
        uint64_t until = c.opts.hard_timeout && c.opts.timeout_s > 0
                             ? c.start_ns + tbx__seconds_to_ns(c.opts.timeout_s)
                             : 0;
        rc = tbx__slot_wait(until);
        if (rc != 0) {
            tbx__engine_refuse(&c, rc,
                               rc == -EDEADLK
                                   ? "every slot (tbx_set_max_children) is held by calls on "
                                     "this thread's own loop, which cannot run while this "
                                     "call waits"
                                   : "deadline passed while the call waited for a free slot "
                                     "(tbx_set_max_children)");
            return rc;
        }
        c.has_slot = 1;
    }
    /* The loop is in use (another thread may not close a handle on it). */
    tbx__private_loop_enter(loop);
    rc = tbx__engine_run(&c);
    if (rc != 0 && c.has_slot) /* no child: finalize never runs */
        tbx__slot_release(1);
    /* On error the loop may still hold closing handles of c: run it dry
     * either way before c leaves the stack. */
    uv_run(loop, UV_RUN_DEFAULT);
    tbx__private_loop_leave(loop);
    if (rc != 0)
        return refuse(out, rc);
    rc = out->status;
    if (out == &scratch)
        tbx_result_free(&scratch);
    return rc;
}

int tbx_call(tbx_fn *fn, const void *args, size_t args_len,
             const tbx_opts *opts, tbx_result *out)
{
    return call_blocking(fn, NULL, args, args_len, opts, out);
}

int tbx_call_named(const char *name, const void *args, size_t args_len,
                   const tbx_opts *opts, tbx_result *out)
{
    /* A NULL name is refused by the engine, as a NULL fn is. */
    return call_blocking(NULL, name, args, args_len, opts, out);
}

static void async_done_cb(tbx__call *c)
{
    tbx_req *req = c->req;
    req->priv_ = NULL;
    /* req is the caller's again from here: the callback may reuse it. */
    c->cb(req, &c->result);
    free(c);
}

static void async_abandoned_cb(tbx__call *c)
{
    free(c);
}

static int call_async(uv_loop_t *loop, tbx_req *req, tbx_fn *fn, const char *name,
                      const void *args, size_t args_len, const tbx_opts *opts, tbx_cb *cb)
{
    if (loop == NULL || req == NULL || cb == NULL)
        return TBX_EINVAL;
    tbx__call *c = malloc(sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    int rc = setup(c, loop, fn, name, args, args_len, opts, &c->result);
    if (rc != 0) {
        tbx_result_free(&c->result); /* a message prepare may have made */
        free(c);
        return rc;
    }
    c->req = req;
    c->cb = cb;
    c->done_cb = async_done_cb;
    c->abandoned_cb = async_abandoned_cb;
    rc = tbx__engine_run_queued(c);
    if (rc != 0) {
        if (!c->abandoned)
            free(c);
        return rc;
    }
    req->priv_ = c;
    return 0;
}

int tbx_call_async(uv_loop_t *loop, tbx_req *req, tbx_fn *fn, const void *args,
                   size_t args_len, const tbx_opts *opts, tbx_cb *cb)
{
    return call_async(loop, req, fn, NULL, args, args_len, opts, cb);
}

int tbx_call_named_async(uv_loop_t *loop, tbx_req *req, const char *name, const void *args,
                         size_t args_len, const tbx_opts *opts, tbx_cb *cb)
{
    return call_async(loop, req, NULL, name, args, args_len, opts, cb);
}

int tbx_cancel(tbx_req *req)
{
    if (req == NULL || req->priv_ == NULL)
        return TBX_EINVAL;
    return tbx__engine_stop(req->priv_, TBX_ECANCELED);
}
