/*
 * The forkserver's calls: each arrives as a hello with its fds, then its
 * request on the control socket, read as it comes under a time limit; the
 * answers (LAUNCHED, EXITED, ERROR) go back on the same socket.  Runs in the
 * server process.
 */
#include "forkserver/server.h"
#include "trace.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

void tbx__fs_server_send(fs_call *c, const tbx__control *m, int fd)
{
    /* A client that stopped reading loses the message; the server never
     * waits for it. */
    (void)tbx__send_fds(c->control_fd, m, sizeof *m, &fd, fd >= 0 ? 1 : 0, MSG_DONTWAIT);
}

void tbx__fs_server_send_control(fs_call *c, uint32_t kind, int32_t code, int fd)
{
    tbx__control m = {TBX__CONTROL_MAGIC, kind, (int32_t)c->pid, code, 0, 0, 0};
    tbx__fs_server_send(c, &m, fd);
}

/* TRACE: the child traced from outside, the text and a NUL down its
 * backtrace pipe (the whole trace fits in a pipe's 64 KiB); where ptrace is
 * refused, its handler is asked, unless it crashed (sig: it waits in its
 * crash handler, and nothing more may run in it): it is then sent sig again,
 * to die of it.  TRACED tells the client which. */
static void trace_child(fs_call *c, int sig)
{
    char *text = NULL;
    int source = sig != 0 ? TBX_BACKTRACE_NONE : TBX_BACKTRACE_HANDLER;
    if (c->backtrace_fd >= 0 && tbx__trace(c->pid, c->pid, TBX__TRACE_BUDGET_NS, &text) == 0 &&
        tbx__write_all(c->backtrace_fd, text, strlen(text) + 1) == 0)
        source = TBX_BACKTRACE_OUTSIDE;
    else if (sig == 0 && c->backtrace_fd >= 0)
        (void)kill(c->pid, TBX__BACKTRACE_SIGNAL);
    free(text);
    if (sig != 0)
        (void)kill(c->pid, sig);
    tbx__fs_server_send_control(c, TBX__CTL_TRACED, source, -1);
}

/* Nothing will be launched: the reason goes where the caller reads results,
 * as a worker's would, and the call ends. */
void tbx__fs_server_refuse(fs_call *c, int code, const char *why)
{
    tbx__frame_header h;
    struct iovec iov[2];
    int pieces = tbx__frame_error(&h, iov, code, why);
    ssize_t n;
    /* The descriptor is the client's word: a full pipe, or not a pipe at
     * all, must not stall the server.  No child will ever write to it. */
    int flags = fcntl(c->result_fd, F_GETFL);
    if (flags >= 0)
        (void)fcntl(c->result_fd, F_SETFL, flags | O_NONBLOCK);
    do /* an honest client's fresh pipe takes it at once (< PIPE_BUF) */
        n = writev(c->result_fd, iov, pieces);
    while (n < 0 && errno == EINTR);
    tbx__fs_server_send_control(c, TBX__CTL_ERROR, code, -1);
    tbx__fs_server_call_close(c);
}

/* ------------------------------------------------------------ the request */

/* The request is whole: big args, sent as a memfd, are mapped (the child
 * inherits the mapping).  0, or -1 with the call refused. */
/* Reads what has arrived of the request.  Returns 1 when it is whole, 0 to
 * wait, -1 when the call is over (closed or refused). */
static int read_request(fs_call *c)
{
    char why[TBX__MAX_MESSAGE + 1];
    int rc = tbx__request_read(&c->rq, c->control_fd, MSG_DONTWAIT, "the forkserver", why,
                               sizeof why);
    if (rc == -1)
        tbx__fs_server_call_close(c); /* the client left, or its socket failed */
    else if (rc < 0)
        tbx__fs_server_refuse(c, rc, why);
    return rc == 1 ? 1 : rc == 0 ? 0 : -1;
}

/* KILL messages from the client, and its going away. */
static void read_kills(fs_call *c)
{
    for (;;) {
        ssize_t n = tbx__read(c->control_fd, (char *)&c->in + c->in_got, sizeof c->in - c->in_got);
        if (n == -EAGAIN)
            return;
        if (n <= 0 || (c->in_got + (size_t)n == sizeof c->in &&
                       tbx__control_check(&c->in, 0) != 0)) {
            /* Gone, or talking nonsense: the call is over for it. */
            uv_poll_stop(&c->control_poll);
            if (!c->reaped)
                (void)kill(-c->pid, SIGKILL);
            return;
        }
        c->in_got += (size_t)n;
        if (c->in_got < sizeof c->in)
            continue;
        c->in_got = 0;
        if (!c->reaped && c->in.kind == TBX__CTL_TRACE && c->traces++ < 2)
            trace_child(c, c->in.code);
        else if (c->in.kind == TBX__CTL_TRACE && c->in.code != 0 && !c->reaped)
            (void)kill(c->pid, c->in.code); /* a crashed child still dies of its signal */
        else if (!c->reaped)
            (void)kill(-c->pid, c->in.code);
    }
}

static void control_cb(uv_poll_t *h, int status, int events)
{
    fs_call *c = h->data;
    TBX__UNUSED(events);
    if (status < 0 && !c->running) {
        tbx__fs_server_call_close(c);
        return;
    }
    if (c->running) {
        read_kills(c);
        return;
    }
    if (read_request(c) == 1)
        tbx__fs_server_launch(c);
}

/* ------------------------------------------------------------------ calls */

static void call_free_cb(uv_handle_t *h)
{
    fs_call *c = h->data;
    if (--c->handles > 0)
        return;
    tbx__close(c->control_fd);
    tbx__fs_server_close_child_ends(c);
    tbx__close(c->pidfd);
    tbx__request_free(&c->rq);
    free(c);
}

void tbx__fs_server_call_close(fs_call *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    tbx__deadline_stop(&c->deadline);
    *c->prevp = c->next;
    if (c->next != NULL)
        c->next->prevp = c->prevp;
    uv_close((uv_handle_t *)&c->control_poll, call_free_cb);
    if (c->pidfd >= 0 && c->handles > 1)
        uv_close((uv_handle_t *)&c->exit_poll, call_free_cb);
}

/* How many fds a hello of this kind and flags brings; -1: no such hello. */
int tbx__fs_server_hello_fds(uint32_t kind, uint32_t flags)
{
    int bulk = flags & TBX__HELLO_BULK ? 1 : 0;
    if (kind == TBX__HELLO_WARM && (flags & ~(uint32_t)TBX__HELLO_BULK) == 0)
        return 3 + bulk;
    if (kind == TBX__HELLO_POOL && flags == 0)
        return 3;
    if (kind != TBX__HELLO_CALL ||
        (flags & ~(uint32_t)(TBX__HELLO_CAPTURE | TBX__HELLO_BACKTRACE | TBX__HELLO_BULK)) != 0)
        return -1;
    return 2 + (flags & TBX__HELLO_CAPTURE ? 2 : 0) + (flags & TBX__HELLO_BACKTRACE ? 1 : 0) + bulk;
}

/* fds: control, result, then for a warm or pool call its request socket; for a
 * call with flags, its stdout and stderr (CAPTURE), its backtrace pipe
 * (BACKTRACE) and its bulk memfd (BULK), in that order. */
void tbx__fs_server_call_new(fs_server *srv, fs_client *client, const tbx__hello *hello,
                     const int fds[TBX__HELLO_MAX_FDS])
{
    uint32_t kind = hello->kind, flags = hello->flags;
    fs_call *c = calloc(1, sizeof *c);
    /* A bulk fd is written by our child: only a fresh memfd is taken, not
     * some other file the client would have us write to. */
    int bulk_ok = !(flags & TBX__HELLO_BULK) ||
                  tbx__bulk_check_fresh(fds[tbx__fs_server_hello_fds(kind, flags) - 1]) == 0;
    if (c == NULL || !bulk_ok || uv_poll_init(&srv->loop, &c->control_poll, fds[0]) != 0) {
        free(c);
        for (int i = 0; i < TBX__HELLO_MAX_FDS; i++)
            tbx__close(fds[i]);
        return;
    }
    int control_fd = fds[0], result_fd = fds[1], at = 2;
    int request_fd = kind != TBX__HELLO_CALL ? fds[at++] : -1;
    c->request_fd = request_fd;
    c->pool = kind == TBX__HELLO_POOL;
    c->pool_calls = hello->max_calls;
    c->out_fd = c->err_fd = c->backtrace_fd = -1;
    if (flags & TBX__HELLO_CAPTURE) {
        c->out_fd = fds[at++];
        c->err_fd = fds[at++];
    }
    if (flags & TBX__HELLO_BACKTRACE)
        c->backtrace_fd = fds[at++];
    c->bulk_fd = flags & TBX__HELLO_BULK ? fds[at++] : -1;
    tbx__request_init(&c->rq);
    c->srv = srv;
    c->client = client;
    c->control_fd = control_fd;
    c->result_fd = result_fd;
    c->pidfd = -1;
    c->cgroup = (tbx__cgroup)TBX__CGROUP_INIT;
    c->handles = 1;
    c->control_poll.data = c;
    c->next = srv->calls;
    c->prevp = &srv->calls;
    if (srv->calls != NULL)
        srv->calls->prevp = &c->next;
    srv->calls = c;
    tbx__deadline_init(&c->deadline, tbx__fs_server_backstop_cb);
    uv_poll_start(&c->control_poll, UV_READABLE, control_cb);
    if (request_fd >= 0) {
        tbx__fs_server_start_child(c); /* warm, pool: its child waits for the caller's requests */
        return;
    }
    /* A client writes its request before the hello: it is usually whole
     * already, and the child is forked without a turn of the loop (nor a
     * timer armed for the rest of it). */
    int got = read_request(c);
    if (got == 1)
        tbx__fs_server_launch(c);
    else if (got == 0)
        (void)tbx__deadline_start(&c->deadline, &srv->loop,
                                  tbx__now_ns() + srv->request_timeout_ns);
}
