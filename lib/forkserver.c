/*
 * The forkserver process: a fresh copy of the program, single-threaded and
 * small, that forks the children of TBX_FORKSERVER calls.
 *
 * It listens on its creator's connection (SOCK_SEQPACKET, fd 3).  Each
 * message there brings one call: the server's end of the call's control
 * socket and the write end of its result pipe.  The request (name, args,
 * options) then arrives on the control socket, read as it comes with a time
 * limit, so a stalled client cannot hold the server up.  The server forks the
 * child, which writes its result straight into the caller's pipe; the server
 * never sees those bytes.  It tells the caller LAUNCHED (with a pidfd) and,
 * once it has killed the child's group and reaped it, EXITED.
 *
 * Every byte from a client is untrusted: lengths are checked before anything
 * is allocated, fds are counted, a malformed request gets an error reply, and
 * no fd of a call outlives it here.  The server is the children's parent and
 * enforces each call's deadline itself, as a backstop: a caller that dies or
 * closes its end mid-call has its child killed.  When the connection closes
 * (every process holding it is gone) or SIGTERM comes, the server kills
 * every child and exits.
 */
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define BACKSTOP_SLACK_NS 1000000000ull /* past deadline + grace */
#define DEFAULT_MAX_CHILDREN 1024
#define DEFAULT_REQUEST_TIMEOUT_NS 10000000000ull

typedef struct fs_server fs_server;
typedef struct fs_call fs_call;

struct fs_call {
    fs_call *next, **prevp;
    fs_server *srv;
    int control_fd, result_fd, pidfd;
    pid_t pid;
    uv_poll_t control_poll, exit_poll;
    int handles;
    tbx__deadline deadline;   /* the request's time limit, then the backstop */
    tbx__request rq;
    uint64_t got;             /* request bytes received */
    size_t cap;               /* of rq.args_buf */
    tbx__control in;          /* a KILL arriving */
    size_t in_got;
    unsigned running : 1, reaped : 1, closing : 1;
};

struct fs_server {
    uv_loop_t loop;
    int conn;
    uv_poll_t conn_poll;
    uv_signal_t term;
    fs_call *calls;
    unsigned children, max_children;
    uint64_t request_timeout_ns;
};

static void call_close(fs_call *c);

static void send_control(fs_call *c, uint32_t kind, int32_t code, int fd)
{
    tbx__control m = {TBX__CONTROL_MAGIC, kind, (int32_t)c->pid, code};
    /* A client that stopped reading loses the message; the server never
     * waits for it. */
    (void)tbx__send_fds(c->control_fd, &m, sizeof m, &fd, fd >= 0 ? 1 : 0, MSG_DONTWAIT);
}

/* Nothing will be launched: the reason goes where the caller reads results,
 * as a worker's would, and the call ends. */
static void refuse(fs_call *c, int code, const char *why)
{
    size_t len = strlen(why);
    if (len > TBX__MAX_MESSAGE)
        len = TBX__MAX_MESSAGE;
    tbx__frame_header h = {TBX__FRAME_MAGIC, TBX__FRAME_ERROR, code, 0, len};
    struct iovec iov[2] = {{&h, sizeof h}, {(void *)why, len}};
    ssize_t n;
    do /* a fresh pipe only we write to, and less than PIPE_BUF: no wait */
        n = writev(c->result_fd, iov, 2);
    while (n < 0 && errno == EINTR);
    send_control(c, TBX__CTL_ERROR, code, -1);
    call_close(c);
}

/* ------------------------------------------------------------- the child */

static void exit_cb(uv_poll_t *h, int status, int events)
{
    fs_call *c = h->data;
    int wstatus;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    if (c->reaped)
        return;
    (void)kill(-c->pid, SIGKILL); /* before the reap: the group id is held */
    if (tbx__reap(c->pid, &wstatus, 1) == 0)
        return;
    c->reaped = 1;
    c->srv->children--;
    send_control(c, TBX__CTL_EXITED, wstatus, -1);
    call_close(c);
}

static void backstop_cb(tbx__deadline *d)
{
    fs_call *c = (fs_call *)((char *)d - offsetof(fs_call, deadline));
    if (!c->running) {
        refuse(c, TBX_EPROTO, "the forkserver did not receive the whole request in time");
        return;
    }
    if (!c->reaped)
        (void)kill(-c->pid, SIGKILL);
}

/* The child: it keeps nothing of the server's but its result pipe. */
__attribute__((noreturn)) static void run_child(fs_call *c, const sigset_t *mask)
{
    tbx__child_spec spec;
    fs_server *srv = c->srv;
    /* The server's own dispositions are not the caller's: libuv's SIGTERM
     * handler would write to the server's signal pipe. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    tbx__close(srv->conn);
    for (fs_call *o = srv->calls; o != NULL; o = o->next) {
        tbx__close(o->control_fd);
        if (o != c)
            tbx__close(o->result_fd);
        tbx__close(o->pidfd);
    }
    tbx__request_spec(&c->rq, c->result_fd, &spec);
    spec.parent_mask = mask; /* the server's, not the blocked one */
    tbx__child_main(&spec);
}

static void launch(fs_call *c)
{
    fs_server *srv = c->srv;
    char why[TBX__MAX_MESSAGE + 1];
    sigset_t all, old;
    int rc = tbx__request_resolve(&c->rq, why, sizeof why);
    if (rc != 0)
        return refuse(c, rc, why);
    if (srv->children >= srv->max_children) {
        snprintf(why, sizeof why, "the forkserver already runs its maximum of %u children",
                 srv->max_children);
        return refuse(c, -EAGAIN, why);
    }
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0)
        run_child(c, &old);
    int err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        snprintf(why, sizeof why, "the forkserver could not fork: %s", tbx_strerror(-err));
        return refuse(c, -err, why);
    }
    (void)setpgid(pid, pid);
    c->pid = pid;
    c->running = 1;
    srv->children++;
    tbx__request_free(&c->rq); /* the child has its copy */
    tbx__close(c->result_fd);
    c->result_fd = -1;
    c->pidfd = tbx__pidfd_open(pid);
    rc = c->pidfd < 0 ? c->pidfd : uv_poll_init(&srv->loop, &c->exit_poll, c->pidfd);
    if (rc != 0) {
        int wstatus;
        (void)kill(-pid, SIGKILL);
        (void)tbx__reap(pid, &wstatus, 0);
        c->reaped = 1;
        srv->children--;
        send_control(c, TBX__CTL_ERROR, rc, -1);
        return call_close(c);
    }
    c->exit_poll.data = c;
    c->handles++;
    uv_poll_start(&c->exit_poll, UV_READABLE, exit_cb);
    send_control(c, TBX__CTL_LAUNCHED, 0, c->pidfd);

    /* The backstop: the caller's own engine acts at the deadline; this
     * catches a caller that cannot. */
    uint64_t grace = c->rq.h.grace_ns, at = 0;
    if (c->rq.h.deadline_ns != 0)
        at = c->rq.h.deadline_ns;
    else if (c->rq.h.timeout_ns != 0)
        at = tbx__now_ns() + c->rq.h.timeout_ns;
    if (at != 0)
        (void)tbx__deadline_start(&c->deadline, &srv->loop, at + grace + BACKSTOP_SLACK_NS);
    else
        tbx__deadline_stop(&c->deadline);
}

/* ------------------------------------------------------------ the request */

/* Reads what has arrived of the request.  Returns 1 when it is whole, 0 to
 * wait, -1 when the call is over (closed or refused). */
static int read_request(fs_call *c)
{
    tbx__request *rq = &c->rq;
    for (;;) {
        const uint64_t hsize = sizeof rq->h;
        ssize_t n;
        if (c->got < hsize) {
            n = tbx__read(c->control_fd, (char *)&rq->h + c->got, (size_t)(hsize - c->got));
        } else {
            uint64_t at = c->got - hsize, name_len = rq->h.name_len;
            uint64_t args_at = at > name_len ? at - name_len : 0;
            if (at == name_len + rq->h.args_len)
                return 1;
            /* The buffer grows with what arrives, not with what the header
             * claims. */
            if (c->cap == args_at &&
                tbx__grow_buffer(&rq->args_buf, &c->cap, rq->h.args_len) != 0) {
                refuse(c, -ENOMEM, "the forkserver has no memory for the args");
                return -1;
            }
            struct iovec iov[2];
            int k = 0;
            if (at < name_len)
                iov[k++] = (struct iovec){rq->name + at, (size_t)(name_len - at)};
            iov[k++] = (struct iovec){rq->args_buf + args_at, c->cap - (size_t)args_at};
            do
                n = readv(c->control_fd, iov, k);
            while (n < 0 && errno == EINTR);
            if (n < 0)
                n = -errno;
        }
        if (n == -EAGAIN)
            return 0;
        if (n <= 0) { /* the client left, or its socket failed */
            call_close(c);
            return -1;
        }
        c->got += (uint64_t)n;
        if (c->got == hsize && tbx__request_check(&rq->h) != 0) {
            refuse(c, TBX_EPROTO, "the forkserver got a malformed request");
            return -1;
        }
    }
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
        if (!c->reaped)
            (void)kill(-c->pid, c->in.code);
    }
}

static void control_cb(uv_poll_t *h, int status, int events)
{
    fs_call *c = h->data;
    TBX__UNUSED(events);
    if (status < 0 && !c->running) {
        call_close(c);
        return;
    }
    if (c->running) {
        read_kills(c);
        return;
    }
    if (read_request(c) == 1)
        launch(c);
}

/* ------------------------------------------------------------------ calls */

static void call_free_cb(uv_handle_t *h)
{
    fs_call *c = h->data;
    if (--c->handles > 0)
        return;
    tbx__close(c->control_fd);
    tbx__close(c->result_fd);
    tbx__close(c->pidfd);
    tbx__request_free(&c->rq);
    free(c);
}

static void call_close(fs_call *c)
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

static void call_new(fs_server *srv, int control_fd, int result_fd)
{
    fs_call *c = calloc(1, sizeof *c);
    if (c == NULL || uv_poll_init(&srv->loop, &c->control_poll, control_fd) != 0) {
        free(c);
        tbx__close(control_fd);
        tbx__close(result_fd);
        return;
    }
    c->srv = srv;
    c->control_fd = control_fd;
    c->result_fd = result_fd;
    c->pidfd = -1;
    c->handles = 1;
    c->control_poll.data = c;
    c->next = srv->calls;
    c->prevp = &srv->calls;
    if (srv->calls != NULL)
        srv->calls->prevp = &c->next;
    srv->calls = c;
    tbx__deadline_init(&c->deadline, backstop_cb);
    (void)tbx__deadline_start(&c->deadline, &srv->loop, tbx__now_ns() + srv->request_timeout_ns);
    uv_poll_start(&c->control_poll, UV_READABLE, control_cb);
}

/* ------------------------------------------------------------- the server */

__attribute__((noreturn)) static void shutdown_now(fs_server *srv)
{
    for (fs_call *c = srv->calls; c != NULL; c = c->next) {
        if (c->running && !c->reaped) {
            int wstatus;
            (void)kill(-c->pid, SIGKILL);
            (void)tbx__reap(c->pid, &wstatus, 0);
        }
    }
    _exit(0);
}

static void conn_cb(uv_poll_t *h, int status, int events)
{
    fs_server *srv = h->data;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    for (;;) {
        tbx__hello hello;
        int fds[2], nfds = 2;
        ssize_t n = tbx__recv_fds(srv->conn, &hello, sizeof hello, fds, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            return;
        if (n == -EBADMSG)
            continue; /* its fds are already closed */
        if (n <= 0)
            shutdown_now(srv); /* every holder of the connection is gone */
        if ((size_t)n != sizeof hello || hello.magic != TBX__HELLO_MAGIC || nfds != 2) {
            while (nfds > 0)
                tbx__close(fds[--nfds]);
            continue;
        }
        call_new(srv, fds[0], fds[1]);
    }
}

static void term_cb(uv_signal_t *h, int signum)
{
    TBX__UNUSED(signum);
    shutdown_now(h->data);
}

/* Options come from the creator through the environment: the server is a
 * fresh program, and its argv is the program's own. */
static int configure(fs_server *srv)
{
    const char *limits = getenv(TBX__FS_LIMITS_VAR);
    const char *preload = getenv(TBX__FS_PRELOAD_VAR);
    unsigned max = 0;
    unsigned long long timeout_ms = 0;
    if (limits != NULL && sscanf(limits, "%u:%llu", &max, &timeout_ms) != 2)
        max = 0, timeout_ms = 0;
    srv->max_children = max ? max : DEFAULT_MAX_CHILDREN;
    srv->request_timeout_ns = timeout_ms ? timeout_ms * 1000000ull : DEFAULT_REQUEST_TIMEOUT_NS;
    if (preload != NULL) {
        char *list = strdup(preload), *save = NULL;
        for (char *p = list ? strtok_r(list, "\n", &save) : NULL; p != NULL;
             p = strtok_r(NULL, "\n", &save)) {
            if (dlopen(p, RTLD_NOW | RTLD_GLOBAL) == NULL) {
                fprintf(stderr, "timebox forkserver: %s\n", dlerror());
                free(list);
                return TBX_EFAILED;
            }
        }
        free(list);
    }
    unsetenv(TBX__FS_LIMITS_VAR);
    unsetenv(TBX__FS_PRELOAD_VAR);
    return tbx__run_preload_hooks() != 0 ? TBX_EFAILED : 0;
}

void tbx__forkserver_main(int conn)
{
    static fs_server srv;
    srv.conn = conn;
    signal(SIGPIPE, SIG_IGN);
    int rc = configure(&srv);
    if (rc == 0 && uv_loop_init(&srv.loop) != 0)
        rc = -ENOMEM;
    tbx__hello ready = {TBX__HELLO_MAGIC, (uint32_t)rc};
    if (tbx__send_fds(conn, &ready, sizeof ready, NULL, 0, 0) < 0 || rc != 0)
        _exit(1);
    uv_poll_init(&srv.loop, &srv.conn_poll, conn);
    srv.conn_poll.data = &srv;
    uv_poll_start(&srv.conn_poll, UV_READABLE, conn_cb);
    uv_signal_init(&srv.loop, &srv.term);
    srv.term.data = &srv;
    uv_signal_start(&srv.term, term_cb, SIGTERM);
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    shutdown_now(&srv);
}

void tbx__forkserver_maybe_serve(void)
{
    const char *v = getenv(TBX__FS_VAR);
    int fd;
    char tail;
    if (v == NULL || sscanf(v, "%d%c", &fd, &tail) != 1)
        return;
    unsetenv(TBX__FS_VAR);
    tbx__forkserver_main(fd);
}
