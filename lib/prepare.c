/*
 * Preparing a call, in the caller before anything is launched: the options
 * checked and completed with their defaults, the method's launcher chosen
 * from the table (and resolved, for a method chosen per call), what the
 * launcher accepts checked, and the args readied as it takes them.
 */
#include "child.h"
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TBX__DEFAULT_MAX_RESULT ((size_t)256 << 20)

void tbx_opts_init(tbx_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->timeout_s = 0;
    opts->grace_s = 1.0;
    opts->method = TBX_METHOD_DEFAULT;
    opts->hard_timeout = 1;
    opts->reset_signals = 1;
    opts->max_result = TBX__DEFAULT_MAX_RESULT;
    opts->ctx = NULL;
    opts->cancel_fd = -1;
    opts->contain = 1;
}

/* What every method needs checked: 0 or TBX_EINVAL. */
static int check_common(tbx__call *c, const void *args, size_t args_len, const tbx_opts *opts)
{
    c->cgroup = (tbx__cgroup)TBX__CGROUP_INIT; /* a call refused or queued has none */
    if (opts != NULL)
        c->opts = *opts;
    else
        tbx_opts_init(&c->opts);
    if ((c->fn == NULL && c->name == NULL) || (args == NULL && args_len != 0) ||
        c->opts.grace_s < 0 || tbx__cancel_check(&c->opts) != 0 ||
        c->opts.grace_s != c->opts.grace_s || c->opts.timeout_s != c->opts.timeout_s ||
        (c->opts.on_output != NULL && c->opts.capture_output == 0))
        return TBX_EINVAL;
    /* A deadline already past (a caller computing "deadline - now") is one
     * that has come, not none: the smallest timeout there is. */
    if (c->opts.timeout_s < 0)
        c->opts.timeout_s = 1e-9;
    if (c->opts.max_result == 0)
        c->opts.max_result = TBX__DEFAULT_MAX_RESULT;
    tbx__nest_cap(&c->opts);
    if (c->opts.method == TBX_METHOD_DEFAULT)
        c->opts.method = tbx__default_method();
    return tbx__label_take(c);
}

/* What the call's launcher accepts: a ctx, an unregistered fn, args this
 * big.  0, TBX_EINVAL or TBX_ENOTREG, before anything is launched. */
static int check_accepted(tbx__call *c, size_t args_len)
{
    const tbx__launcher *l = c->launcher;
    int traces = c->opts.backtrace_on_timeout || c->opts.backtrace_on_crash;
    if ((c->opts.ctx != NULL && !(l->accepts & TBX__ACCEPTS_CTX)) ||
        (traces && !(l->accepts & TBX__ACCEPTS_STREAMS)) ||
        (c->opts.capture_output != 0 &&
         !(l->accepts & (TBX__ACCEPTS_STREAMS | TBX__ACCEPTS_CAPTURE))) ||
        (l->max_args != 0 && args_len > l->max_args))
        return TBX_EINVAL;
    if (l->accepts & TBX__ACCEPTS_UNREGISTERED) {
        /* A method that calls fn by pointer: a call by name runs what this
         * process registered under it (tbx_call_named). */
        if (c->fn == NULL && (c->fn = tbx_lookup(c->name)) == NULL)
            return TBX_ENOTREG;
        return 0;
    }
    /* A fresh program finds fn by name, and adds only the hooks added
     * before its tbx_init. */
    char *why;
    int rc = tbx__hooks_reach_fresh_programs(&why);
    if (rc == 0 && c->name == NULL)
        rc = tbx__name_for_call(c->fn, &c->name, &why);
    if (why != NULL) {
        c->out->priv_[2] = why; /* freed with the result */
        c->out->message = why;
    }
    if (rc != 0)
        return rc;
    size_t name_len = strlen(c->name);
    if (name_len == 0 || name_len > TBX__MAX_NAME)
        return TBX_ENOTREG;
    return 0;
}

static void reset_child(tbx__call *c)
{
    c->child.pid = 0;
    c->child.pidfd = -1;
    c->child.result_fd = -1;
    c->child.request_fd = -1;
    c->child.control_fd = -1;
    c->child.bulk_fd = -1;
    c->child.result_sock = 0;
    c->control_fd_in = -1;
    c->cancel_fd = -1;
    for (int i = 0; i < TBX__NSTREAMS; i++)
        c->capture[i].fd = c->capture[i].child_fd = -1;
    c->child.worker = 0;
    c->child.warm = 0;
    c->child.pooled = 0;
    c->child.slot = NULL;
    c->capture_send[0] = c->capture_send[1] = -1;
}

int tbx__engine_prepare(tbx__call *c, const void *args, size_t args_len,
                        const tbx_opts *opts)
{
    c->args_fd = -1;
    int rc = check_common(c, args, args_len, opts);
    if (rc != 0)
        return rc;
    c->launcher = tbx__launcher_of(c->opts.method);
    if (c->launcher == NULL)
        return TBX_EINVAL;
    /* A program spawned as a worker that skipped tbx_init would otherwise
     * spawn itself again, and again. */
    if (tbx__worker_unserved())
        return TBX_EINVAL;
    if (tbx__msgpack_check(args, args_len, TBX__MAX_DEPTH) != 0)
        return TBX_EINVAL;
    if (c->launcher->resolve != NULL)
        c->launcher = c->launcher->resolve(c);
    c->args_buf = args;
    c->args_len = args_len;
    reset_child(c);
    tbx__deadline_init(&c->deadline, NULL);
    rc = check_accepted(c, args_len);
    return rc != 0 ? rc : c->launcher->prepare(c);
}

int tbx__engine_unpack_args(tbx__call *c)
{
    /* The child allocates nothing on timebox's side. */
    if (!msgpack_zone_init(&c->args_zone, 256))
        return -ENOMEM;
    size_t off = 0;
    msgpack_unpack_return u =
        msgpack_unpack(c->args_buf, c->args_len, &off, &c->args_zone, &c->args);
    if (u != MSGPACK_UNPACK_SUCCESS) {
        msgpack_zone_destroy(&c->args_zone);
        return u == MSGPACK_UNPACK_NOMEM_ERROR ? -ENOMEM : TBX_EINVAL;
    }
    c->args_unpacked = 1;
    return 0;
}

void tbx__engine_release_args(tbx__call *c)
{
    tbx__close(c->args_fd);
    c->args_fd = -1;
    if (c->args_unpacked) {
        msgpack_zone_destroy(&c->args_zone);
        c->args_unpacked = 0;
    }
}
