/*
 * opts.cancel_fd: a descriptor of the caller's that, once readable, cancels
 * the call as tbx_cancel would.  A host triggers it from a signal handler (a
 * write to a pipe or an eventfd is async-signal-safe) or from another thread,
 * which is how a blocking tbx_call is ended from outside.
 *
 * The descriptor is borrowed: timebox never reads it (the readiness is the
 * message, and it stays readable, so a check is level-triggered) and never
 * closes it.  The engine watches a duplicate of it, not the caller's number:
 * libuv allows one poll handle per descriptor on a loop, and several calls on
 * one loop may share a cancel_fd (one "shut down" eventfd for all).
 */
#include "engine.h"

#include <errno.h>
#include <fcntl.h>

int tbx__cancel_check(const tbx_opts *opts)
{
    if (opts->cancel_fd >= 0 && fcntl(opts->cancel_fd, F_GETFD) < 0)
        return TBX_EINVAL;
    return 0;
}

static void cancel_cb(uv_poll_t *h, int status, int events)
{
    tbx__call *c = h->data;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    /* Once is enough: the descriptor stays readable, and the call is now
     * ending as at a deadline (SIGTERM, SIGKILL after grace). */
    uv_poll_stop(h);
    (void)tbx__engine_stop(c, TBX_ECANCELED);
}

int tbx__cancel_watch(tbx__call *c)
{
    c->cancel_fd = -1;
    if (c->opts.cancel_fd < 0)
        return 0;
    int fd = fcntl(c->opts.cancel_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return errno == EBADF ? TBX_EINVAL : -errno;
    int rc = uv_poll_init(c->loop, &c->cancel_poll, fd);
    if (rc != 0) {
        tbx__close(fd);
        return rc;
    }
    c->cancel_fd = fd;
    c->cancel_poll.data = c;
    c->open_handles++;
    c->h_cancel = 1;
    return uv_poll_start(&c->cancel_poll, UV_READABLE, cancel_cb);
}

void tbx__cancel_close(tbx__call *c)
{
    /* Only a watch that was opened holds a descriptor: a call whose launch
     * or watch failed earlier never set cancel_fd. */
    if (!c->h_cancel)
        return;
    uv_close((uv_handle_t *)&c->cancel_poll, tbx__engine_close_cb);
    c->h_cancel = 0;
    /* libuv has stopped watching the descriptor at uv_close: it may go. */
    tbx__close(c->cancel_fd);
    c->cancel_fd = -1;
}
