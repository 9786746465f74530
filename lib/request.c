/*
 * The request to a worker or the forkserver (header, name, args), written as
 * the socket takes it, on the call's loop.  The caller's args are borrowed
 * only for the launch: what the socket did not take at once is copied.
 */
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

int tbx__request_build(tbx__call *c)
{
    memset(&c->request, 0, sizeof c->request);
    c->request.magic = TBX__REQUEST_MAGIC;
    c->request.flags = (c->opts.reset_signals ? TBX__REQ_RESET_SIGNALS : 0) |
                       (c->opts.hard_timeout ? 0 : TBX__REQ_SOFT_DEADLINE) |
                       (c->opts.allow_core ? TBX__REQ_ALLOW_CORE : 0) |
                       (c->opts.backtrace_on_timeout || c->opts.backtrace_on_crash
                            ? TBX__REQ_BACKTRACE
                            : 0) |
                       (c->opts.backtrace_on_crash ? TBX__REQ_CRASH_TRACE : 0) |
                       (c->opts.contain ? 0 : TBX__REQ_NO_CONTAIN);
    c->request.limit_memory = c->opts.limit_memory;
    c->request.limit_cpu_s = tbx__cpu_seconds(c->opts.limit_cpu_s);
    c->request.limit_files = c->opts.limit_files;
    c->request.name_len = (uint32_t)strlen(c->name);
    c->request.label_len = c->opts.label != NULL ? (uint32_t)strlen(c->opts.label) : 0;
    c->request.args_len = c->args_len;
    c->request.timeout_ns = c->opts.timeout_s > 0 ? tbx__seconds_to_ns(c->opts.timeout_s) : 0;
    c->request.grace_ns = tbx__seconds_to_ns(c->opts.grace_s);
    c->request.max_result = c->opts.max_result;
    /* Big args go as a sealed memfd: written once, mapped there. */
    c->args_fd = tbx__bulk_args(c->args_buf, c->args_len);
    if (c->args_fd >= 0)
        c->request.flags |= TBX__REQ_ARGS_BULK;
    return 0;
}

/* The bytes of the request: header, name, and args unless a memfd carries
 * them (then it goes with the first bytes sent). */
static size_t args_inline(const tbx__call *c)
{
    return c->args_fd >= 0 ? 0 : (size_t)c->request.args_len;
}

static size_t request_len(const tbx__call *c)
{
    return sizeof c->request + c->request.name_len + c->request.label_len + args_inline(c);
}

/* The request's pieces, in the order they go. */
enum { NPARTS = 4 };
static void request_parts(const tbx__call *c, const char *part[NPARTS], size_t len[NPARTS])
{
    part[0] = (const char *)&c->request;
    len[0] = sizeof c->request;
    part[1] = c->name;
    len[1] = c->request.name_len;
    part[2] = c->opts.label != NULL ? c->opts.label : "";
    len[2] = c->request.label_len;
    part[3] = c->args_buf;
    len[3] = args_inline(c);
}

static void close_capture_send(tbx__call *c)
{
    tbx__close(c->capture_send[0]);
    tbx__close(c->capture_send[1]);
    c->capture_send[0] = c->capture_send[1] = -1;
}

/* Sends what the socket takes of the request.  Returns 1 when all of it is
 * sent, 0 when the socket is full, or -errno (EPIPE: the child is gone, which
 * its exit will explain).  MSG_NOSIGNAL: a dead child never raises SIGPIPE in
 * the caller. */
int tbx__request_send(tbx__call *c)
{
    size_t total = request_len(c);
    while (c->request_sent < total) {
        struct iovec iov[NPARTS];
        int n = 0;
        if (c->request_copy != NULL) {
            size_t at = total - c->request_copy_len;
            iov[n++] = (struct iovec){c->request_copy + (c->request_sent - at),
                                      total - c->request_sent};
        } else {
            const char *part[NPARTS];
            size_t len[NPARTS];
            request_parts(c, part, len);
            size_t skip = c->request_sent;
            for (int i = 0; i < NPARTS; i++) {
                if (skip >= len[i]) {
                    skip -= len[i];
                    continue;
                }
                iov[n++] = (struct iovec){(char *)part[i] + skip, len[i] - skip};
                skip = 0;
            }
        }
        /* The args' memfd, if any, rides on the header's first byte, and
         * then a pooled call's stdout and stderr pipes (REQ_CAPTURE: its
         * launcher took them into capture_send, which the engine does not
         * close after the launch). */
        int fds[3], nfds = 0;
        if (c->request_sent == 0 && c->args_fd >= 0)
            fds[nfds++] = c->args_fd;
        if (c->request_sent == 0 && c->capture_send[0] >= 0) {
            fds[nfds++] = c->capture_send[0];
            fds[nfds++] = c->capture_send[1];
        }
        ssize_t w = tbx__sendv_fds(c->child.request_fd, iov, n, fds, nfds, MSG_DONTWAIT);
        if (w < 0)
            return w == -EAGAIN ? 0 : (int)w;
        c->request_sent += (size_t)w;
        close_capture_send(c); /* the process has its own now */
    }
    return 1;
}

int tbx__says_start(const tbx__call *c)
{
    return (c->request.flags & (TBX__REQ_SOFT_DEADLINE | TBX__REQ_BACKTRACE)) != 0;
}

int tbx__request_whole(const tbx__call *c)
{
    return c->request_sent == request_len(c);
}

void tbx__request_end(tbx__call *c)
{
    if (c->writing) {
        uv_close((uv_handle_t *)&c->request_poll, c->close_cb);
        c->writing = 0;
    }
    /* A pooled process's request socket serves its next calls: its
     * launcher's release keeps it, or the call's end closes it. */
    if (!c->child.pooled) {
        tbx__close(c->child.request_fd);
        c->child.request_fd = -1;
    }
    free(c->request_copy);
    c->request_copy = NULL;
    close_capture_send(c);
}

static void request_cb(uv_poll_t *h, int status, int events)
{
    tbx__call *c = h->data;
    TBX__UNUSED(events);
    if (status < 0 || tbx__request_send(c) != 0)
        tbx__request_end(c);
}

/* Starts the request on its way.  The caller's args are borrowed only for
 * the launch: what the socket did not take at once is copied. */
int tbx__request_start(tbx__call *c)
{
    if (c->child.request_fd < 0)
        return 0;
    int rc = tbx__request_send(c);
    if (rc != 0) {
        tbx__request_end(c);
        return 0;
    }
    size_t total = request_len(c), left = total - c->request_sent;
    char *copy = malloc(left);
    if (copy == NULL)
        return -ENOMEM;
    const char *part[NPARTS];
    size_t len[NPARTS];
    request_parts(c, part, len);
    size_t skip = c->request_sent, k = 0;
    for (int i = 0; i < NPARTS; i++) {
        size_t from = skip < len[i] ? skip : len[i];
        memcpy(copy + k, part[i] + from, len[i] - from);
        k += len[i] - from;
        skip -= from;
    }
    c->request_copy = copy;
    c->request_copy_len = left;
    rc = uv_poll_init(c->loop, &c->request_poll, c->child.request_fd);
    if (rc != 0)
        return rc;
    c->request_poll.data = c;
    c->open_handles++;
    c->writing = 1;
    return uv_poll_start(&c->request_poll, UV_WRITABLE, request_cb);
}
