/*
 * The forkserver process: a fresh copy of the program, single-threaded and
 * small, that forks the children of TBX_FORKSERVER calls.
 *
 * It serves its creator's connection (SOCK_SEQPACKET) and, when shared, the
 * connections it accepts on a Unix socket.  An accepted connection is
 * checked before any byte of payload is read: the peer's uid (SO_PEERCRED)
 * must be the server's own or allowed, and it must prove it knows the key
 * (auth.c), and it gets the server's proof in return.  Then each message on a
 * connection brings one call: the server's end of the call's control socket
 * and the write end of its result pipe.  The request (name, args,
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
 * closes its end mid-call has its child killed.  When the creator's
 * connection closes (every process holding it is gone) or SIGTERM comes, the
 * server kills every child, removes its socket and exits.
 */
#include "child.h"
#include "forkserver/forkserver.h"
#include "loop.h"

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

#define BACKSTOP_SLACK_NS 1000000000ull /* past deadline + grace */
#define DEFAULT_MAX_CHILDREN 1024
#define DEFAULT_REQUEST_TIMEOUT_NS 10000000000ull

typedef struct fs_server fs_server;
typedef struct fs_call fs_call;
typedef struct fs_client fs_client;

/* A connection: the creator's, or one accepted on the shared socket. */
struct fs_client {
    fs_client *next, **prevp;
    fs_server *srv;
    int fd;
    uv_poll_t poll;
    tbx__deadline deadline;    /* the handshake's time limit */
    uint8_t nonce[TBX__NONCE_LEN];
    uid_t uid;
    unsigned children;         /* its calls' children alive */
    unsigned ready : 1, creator : 1, closing : 1;
};

struct fs_call {
    fs_call *next, **prevp;
    fs_server *srv;
    fs_client *client;        /* NULL once its connection has closed */
    int control_fd, result_fd, pidfd;
    int request_fd;           /* warm: where its child reads the request */
    int out_fd, err_fd;       /* captured: the child's 1 and 2 */
    int backtrace_fd;         /* where the child writes a backtrace */
    int bulk_fd;              /* the call's bulk memfd (bulk.c), or -1 */
    int args_fd;              /* big args: a sealed memfd, with the request */
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

#define MAX_STATIC_FDS 64

struct fs_server {
    uv_loop_t loop;
    /* The descriptors (>= 3) open when it began to serve, sorted: anything
     * else a child finds open is a client's or a call's.  -1: not known. */
    int static_fds[MAX_STATIC_FDS];
    int nstatic;
    sigset_t handled;          /* signals whose disposition is not SIG_DFL */
    tbx__fs_config *cfg;
    int listen_fd;
    uv_poll_t listen_poll;
    uv_signal_t term;
    fs_call *calls;
    fs_client *clients;
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
    /* The descriptor is the client's word: a full pipe, or not a pipe at
     * all, must not stall the server.  No child will ever write to it. */
    int flags = fcntl(c->result_fd, F_GETFL);
    if (flags >= 0)
        (void)fcntl(c->result_fd, F_SETFL, flags | O_NONBLOCK);
    do /* an honest client's fresh pipe takes it at once (< PIPE_BUF) */
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
    if (c->client != NULL)
        c->client->children--;
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

/* Closes the fds a call brought for its child (the child has its copies,
 * or there will be no child). */
static void close_child_ends(fs_call *c)
{
    int *fds[] = {&c->result_fd, &c->request_fd, &c->out_fd,
                  &c->err_fd,    &c->backtrace_fd, &c->bulk_fd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        tbx__close(*fds[i]);
        *fds[i] = -1;
    }
}

/* Notes which descriptors the server has before it serves: its own, its
 * preloads', libuv's.  Not known (-1) without /proc, or with too many. */
static void note_static_fds(fs_server *srv)
{
    DIR *d = opendir("/proc/self/fd");
    srv->nstatic = -1;
    if (d == NULL)
        return;
    int n = 0, self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == self || fd < 3)
            continue;
        if (n == MAX_STATIC_FDS) {
            closedir(d);
            return;
        }
        int at = n++;
        while (at > 0 && srv->static_fds[at - 1] > fd) { /* insertion sort */
            srv->static_fds[at] = srv->static_fds[at - 1];
            at--;
        }
        srv->static_fds[at] = fd;
    }
    closedir(d);
    srv->nstatic = n;
}

/* In a child: closes, in a few close_range calls, every descriptor the
 * server opened since it began serving (clients', calls', pidfds; a cost
 * that would otherwise grow with the calls in flight, for every child),
 * except keep[]; and the listening socket and the creator's connection.
 * -1 if it could not (no close_range, or no list): the caller closes them
 * one by one. */
static int close_dynamic_fds(const fs_server *srv, const int *keep, int nkeep)
{
    int stop[MAX_STATIC_FDS + 8], n = 0;
    if (srv->nstatic < 0)
        return -1;
    /* The descriptors to step over, sorted: static ones (but those two)
     * merged with keep[]. */
    for (int i = 0; i < srv->nstatic; i++) {
        int fd = srv->static_fds[i];
        if (fd != srv->listen_fd && fd != srv->cfg->conn)
            stop[n++] = fd;
    }
    for (int i = 0; i < nkeep; i++) {
        int at = n++;
        while (at > 0 && stop[at - 1] > keep[i]) {
            stop[at] = stop[at - 1];
            at--;
        }
        stop[at] = keep[i];
    }
    unsigned from = 3;
    for (int i = 0; i < n; i++) {
        if (stop[i] < 0 || (unsigned)stop[i] < from)
            continue;
        if ((unsigned)stop[i] > from && tbx__close_range(from, (unsigned)stop[i] - 1) != 0)
            return -1;
        from = (unsigned)stop[i] + 1;
    }
    if (tbx__close_range(from, ~0u) != 0)
        return -1;
    tbx__close(srv->listen_fd);
    tbx__close(srv->cfg->conn);
    return 0;
}

/* The child: it keeps nothing of the server's but its result pipe. */
__attribute__((noreturn)) static void run_child(fs_call *c, const sigset_t *mask)
{
    tbx__child_spec spec;
    fs_server *srv = c->srv;
    /* The server's own dispositions are not the caller's (libuv's SIGTERM
     * handler would write to the server's signal pipe): back to default,
     * which also makes every reset_signals request already met, at the cost
     * of the few the server changed rather than all 62. */
    for (int sig = 1; sig < NSIG; sig++)
        if (sigismember(&srv->handled, sig) == 1)
            signal(sig, SIG_DFL);
    if (c->out_fd >= 0) {
        (void)dup2(c->out_fd, 1);
        (void)dup2(c->err_fd, 2);
        tbx__close(c->out_fd);
        tbx__close(c->err_fd);
        c->out_fd = c->err_fd = -1;
    }
    int keep[4] = {c->result_fd, c->request_fd, c->backtrace_fd, c->bulk_fd};
    if (close_dynamic_fds(srv, keep, 4) == 0)
        goto closed;
    tbx__close(srv->listen_fd);
    for (fs_client *k = srv->clients; k != NULL; k = k->next)
        tbx__close(k->fd);
    for (fs_call *o = srv->calls; o != NULL; o = o->next) {
        tbx__close(o->control_fd);
        if (o != c) {
            close_child_ends(o);
        }
        tbx__close(o->args_fd);
        tbx__close(o->pidfd);
    }
closed:
    sigprocmask(SIG_SETMASK, mask, NULL); /* the server's, not the blocked one */
    if (c->request_fd >= 0) /* warm: the request comes from the caller */
        tbx__worker_serve(c->request_fd, c->result_fd, -1, c->bulk_fd, 1);
    tbx__request_spec(&c->rq, c->result_fd, &spec);
    spec.reset_signals = 0;
    spec.parent_mask = mask;
    spec.backtrace_fd = c->backtrace_fd;
    spec.bulk_fd = c->bulk_fd;
    tbx__child_main(&spec);
}

/* Forks the call's child (its request resolved, or warm: none yet) and tells
 * the caller LAUNCHED. */
static void start_child(fs_call *c)
{
    fs_server *srv = c->srv;
    char why[TBX__MAX_MESSAGE + 1];
    sigset_t all, old;
    int rc;
    if (srv->children >= srv->max_children) {
        snprintf(why, sizeof why, "the forkserver already runs its maximum of %u children",
                 srv->max_children);
        return refuse(c, -EAGAIN, why);
    }
    unsigned per_client = srv->cfg->max_per_client;
    if (per_client != 0 && c->client != NULL && c->client->children >= per_client) {
        snprintf(why, sizeof why, "this client already runs its maximum of %u children",
                 per_client);
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
    if (c->client != NULL)
        c->client->children++;
    tbx__request_free(&c->rq); /* the child has its copy */
    close_child_ends(c);
    c->pidfd = tbx__pidfd_open(pid);
    rc = c->pidfd < 0 ? c->pidfd : uv_poll_init(&srv->loop, &c->exit_poll, c->pidfd);
    if (rc != 0) {
        tbx__kill_reap(pid);
        c->reaped = 1;
        srv->children--;
        if (c->client != NULL)
            c->client->children--;
        send_control(c, TBX__CTL_ERROR, rc, -1);
        return call_close(c);
    }
    c->exit_poll.data = c;
    c->handles++;
    uv_poll_start(&c->exit_poll, UV_READABLE, exit_cb);
    send_control(c, TBX__CTL_LAUNCHED, 0, c->pidfd);

    /* The backstop: the caller's own engine acts at the deadline; this
     * catches a caller that cannot.  (A warm child's deadline is not known
     * here: its caller's engine alone enforces it, and its going away.) */
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

static void launch(fs_call *c)
{
    char why[TBX__MAX_MESSAGE + 1];
    int rc = tbx__request_resolve(&c->rq, why, sizeof why);
    if (rc != 0)
        return refuse(c, rc, why);
    start_child(c);
}

/* ------------------------------------------------------------ the request */

/* The request is whole: big args, sent as a memfd, are mapped (the child
 * inherits the mapping).  0, or -1 with the call refused. */
static int take_bulk_args(fs_call *c)
{
    tbx__request *rq = &c->rq;
    if (!(rq->h.flags & TBX__REQ_ARGS_BULK))
        return 0;
    rq->args_buf = tbx__bulk_map_args(c->args_fd, rq->h.args_len);
    rq->args_mapped = rq->args_buf != NULL;
    tbx__close(c->args_fd);
    c->args_fd = -1;
    if (rq->args_buf != NULL)
        return 0;
    refuse(c, TBX_EPROTO, "the forkserver got an args memfd that is not sealed, or of another size");
    return -1;
}

/* Reads what has arrived of the request.  Returns 1 when it is whole, 0 to
 * wait, -1 when the call is over (closed or refused). */
static int read_request(fs_call *c)
{
    tbx__request *rq = &c->rq;
    for (;;) {
        const uint64_t hsize = sizeof rq->h;
        ssize_t n;
        if (c->got < hsize) {
            /* Big args' memfd comes with the header's first bytes. */
            int fd = -1, nfds = 1;
            n = tbx__recv_fds(c->control_fd, (char *)&rq->h + c->got, (size_t)(hsize - c->got),
                              &fd, &nfds, MSG_DONTWAIT);
            if (nfds > 0 && c->args_fd >= 0) {
                tbx__close(fd);
                refuse(c, TBX_EPROTO, "the forkserver got a malformed request");
                return -1;
            }
            if (nfds > 0)
                c->args_fd = fd;
        } else {
            uint64_t at = c->got - hsize, name_len = rq->h.name_len;
            uint64_t args_at = at > name_len ? at - name_len : 0;
            uint64_t args_len = rq->h.flags & TBX__REQ_ARGS_BULK ? 0 : rq->h.args_len;
            if (at == name_len + args_len)
                return take_bulk_args(c) == 0 ? 1 : -1;
            /* The buffer grows with what arrives, not with what the header
             * claims. */
            if (args_len > 0 && c->cap == args_at &&
                tbx__grow_buffer(&rq->args_buf, &c->cap, rq->h.args_len) != 0) {
                refuse(c, -ENOMEM, "the forkserver has no memory for the args");
                return -1;
            }
            struct iovec iov[2];
            int k = 0;
            if (at < name_len)
                iov[k++] = (struct iovec){rq->name + at, (size_t)(name_len - at)};
            if (args_len > 0)
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
        if (c->got == hsize && (tbx__request_check(&rq->h) != 0 ||
                                !(rq->h.flags & TBX__REQ_ARGS_BULK) != (c->args_fd < 0))) {
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
    close_child_ends(c);
    tbx__close(c->args_fd);
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

/* How many fds a hello of this kind and flags brings; -1: no such hello. */
static int hello_fds(uint32_t kind, uint32_t flags)
{
    int bulk = flags & TBX__HELLO_BULK ? 1 : 0;
    if (kind == TBX__HELLO_WARM && (flags & ~(uint32_t)TBX__HELLO_BULK) == 0)
        return 3 + bulk;
    if (kind != TBX__HELLO_CALL ||
        (flags & ~(uint32_t)(TBX__HELLO_CAPTURE | TBX__HELLO_BACKTRACE | TBX__HELLO_BULK)) != 0)
        return -1;
    return 2 + (flags & TBX__HELLO_CAPTURE ? 2 : 0) + (flags & TBX__HELLO_BACKTRACE ? 1 : 0) + bulk;
}

/* fds: control, result, then for a warm call its request socket; for a
 * call with flags, its stdout and stderr (CAPTURE), its backtrace pipe
 * (BACKTRACE) and its bulk memfd (BULK), in that order. */
static void call_new(fs_server *srv, fs_client *client, uint32_t kind, uint32_t flags,
                     const int fds[TBX__HELLO_MAX_FDS])
{
    fs_call *c = calloc(1, sizeof *c);
    /* A bulk fd is written by our child: only a fresh memfd is taken, not
     * some other file the client would have us write to. */
    int bulk_ok = !(flags & TBX__HELLO_BULK) ||
                  tbx__bulk_check_fresh(fds[hello_fds(kind, flags) - 1]) == 0;
    if (c == NULL || !bulk_ok || uv_poll_init(&srv->loop, &c->control_poll, fds[0]) != 0) {
        free(c);
        for (int i = 0; i < TBX__HELLO_MAX_FDS; i++)
            tbx__close(fds[i]);
        return;
    }
    int control_fd = fds[0], result_fd = fds[1], at = 2;
    int request_fd = kind == TBX__HELLO_WARM ? fds[at++] : -1;
    c->request_fd = request_fd;
    c->out_fd = c->err_fd = c->backtrace_fd = -1;
    if (flags & TBX__HELLO_CAPTURE) {
        c->out_fd = fds[at++];
        c->err_fd = fds[at++];
    }
    if (flags & TBX__HELLO_BACKTRACE)
        c->backtrace_fd = fds[at++];
    c->bulk_fd = flags & TBX__HELLO_BULK ? fds[at++] : -1;
    c->args_fd = -1;
    c->srv = srv;
    c->client = client;
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
    uv_poll_start(&c->control_poll, UV_READABLE, control_cb);
    if (request_fd >= 0) {
        start_child(c); /* warm: its child waits for the caller's request */
        return;
    }
    (void)tbx__deadline_start(&c->deadline, &srv->loop, tbx__now_ns() + srv->request_timeout_ns);
}

/* ------------------------------------------------------------ connections */

static void log_refusal(fs_server *srv, const char *what, uid_t uid)
{
    if (srv->cfg->verbose)
        fprintf(stderr, "timebox forkserver: refused a client (uid %u): %s\n", (unsigned)uid,
                what);
}

static void client_free_cb(uv_handle_t *h)
{
    fs_client *k = h->data;
    tbx__close(k->fd);
    free(k);
}

static void client_close(fs_client *k)
{
    if (k->closing)
        return;
    k->closing = 1;
    tbx__deadline_stop(&k->deadline);
    *k->prevp = k->next;
    if (k->next != NULL)
        k->next->prevp = k->prevp;
    /* Its calls go on: each ends with its own control socket. */
    for (fs_call *c = k->srv->calls; c != NULL; c = c->next)
        if (c->client == k)
            c->client = NULL;
    uv_close((uv_handle_t *)&k->poll, client_free_cb);
}

__attribute__((noreturn)) static void shutdown_now(fs_server *srv)
{
    for (fs_call *c = srv->calls; c != NULL; c = c->next) {
        if (c->running && !c->reaped)
            tbx__kill_reap(c->pid);
    }
    if (srv->cfg->listen_path != NULL) {
        (void)unlink(srv->cfg->listen_path);
        if (srv->cfg->write_key) {
            char key_path[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
            snprintf(key_path, sizeof key_path, "%s.key", srv->cfg->listen_path);
            (void)unlink(key_path);
        }
    }
    _exit(0);
}

/* The client's answer to our challenge: if right, our proof in return. */
static void handshake(fs_client *k)
{
    tbx__response resp;
    tbx__proof proof;
    int nfds = 0;
    ssize_t n = tbx__recv_fds(k->fd, &resp, sizeof resp, NULL, &nfds, MSG_DONTWAIT);
    if (n == -EAGAIN)
        return;
    if (n != (ssize_t)sizeof resp || resp.magic != TBX__AUTH_MAGIC ||
        tbx__auth_check(k->srv->cfg->key, "timebox client", k->nonce, resp.proof) != 0) {
        log_refusal(k->srv, "wrong key or malformed handshake", k->uid);
        client_close(k);
        return;
    }
    proof.magic = TBX__AUTH_MAGIC;
    tbx__auth_prove(k->srv->cfg->key, "timebox server", resp.nonce, proof.proof);
    if (tbx__send_fds(k->fd, &proof, sizeof proof, NULL, 0, MSG_DONTWAIT) != (ssize_t)sizeof proof) {
        client_close(k);
        return;
    }
    tbx__deadline_stop(&k->deadline);
    k->ready = 1;
}

static void client_cb(uv_poll_t *h, int status, int events)
{
    fs_client *k = h->data;
    fs_server *srv = k->srv;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    if (!k->ready) {
        handshake(k);
        return;
    }
    for (;;) {
        tbx__hello hello;
        int fds[TBX__HELLO_MAX_FDS] = {-1, -1, -1, -1, -1, -1}, nfds = TBX__HELLO_MAX_FDS;
        ssize_t n = tbx__recv_fds(k->fd, &hello, sizeof hello, fds, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            return;
        if (n == -EBADMSG)
            continue; /* its fds are already closed */
        if (n <= 0) {
            /* The creator's connection closes when every process that held
             * it is gone: so is the reason to serve. */
            if (k->creator)
                shutdown_now(srv);
            client_close(k);
            return;
        }
        int want = hello_fds(hello.kind, hello.flags);
        if ((size_t)n != sizeof hello || hello.magic != TBX__HELLO_MAGIC ||
            hello.reserved != 0 || nfds != want) {
            while (nfds > 0)
                tbx__close(fds[--nfds]);
            continue;
        }
        call_new(srv, k, hello.kind, hello.flags, fds);
        if (k->closing)
            return;
    }
}

static void handshake_timeout_cb(tbx__deadline *d)
{
    fs_client *k = (fs_client *)((char *)d - offsetof(fs_client, deadline));
    log_refusal(k->srv, "no handshake in time", k->uid);
    client_close(k);
}

static fs_client *client_new(fs_server *srv, int fd, int creator)
{
    fs_client *k = calloc(1, sizeof *k);
    if (k == NULL || uv_poll_init(&srv->loop, &k->poll, fd) != 0) {
        free(k);
        tbx__close(fd);
        return NULL;
    }
    k->srv = srv;
    k->fd = fd;
    k->creator = creator;
    k->uid = geteuid();
    k->ready = creator; /* the creator made the key: it needs no proof */
    k->poll.data = k;
    k->next = srv->clients;
    k->prevp = &srv->clients;
    if (srv->clients != NULL)
        srv->clients->prevp = &k->next;
    srv->clients = k;
    tbx__deadline_init(&k->deadline, handshake_timeout_cb);
    uv_poll_start(&k->poll, UV_READABLE, client_cb);
    return k;
}

static int uid_allowed(const fs_server *srv, uid_t uid)
{
    if (uid == geteuid())
        return 1;
    for (size_t i = 0; i < srv->cfg->nallow; i++)
        if (srv->cfg->allow[i] == uid)
            return 1;
    return 0;
}

static void listen_cb(uv_poll_t *h, int status, int events)
{
    fs_server *srv = h->data;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    for (;;) {
        int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or out of fds: the next connection retries */
        }
        /* Who it is, before a single byte of payload is read. */
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
            !uid_allowed(srv, cred.uid)) {
            log_refusal(srv, "uid not allowed", len == sizeof cred ? cred.uid : (uid_t)-1);
            tbx__close(fd);
            continue;
        }
        fs_client *k = client_new(srv, fd, 0);
        if (k == NULL)
            continue;
        k->uid = cred.uid;
        tbx__challenge ch = {TBX__AUTH_MAGIC, {0}};
        if (tbx__random(k->nonce, sizeof k->nonce) != 0 ||
            tbx__deadline_start(&k->deadline, &srv->loop,
                                tbx__now_ns() + srv->request_timeout_ns) != 0) {
            client_close(k);
            continue;
        }
        memcpy(ch.nonce, k->nonce, sizeof ch.nonce);
        if (tbx__send_fds(fd, &ch, sizeof ch, NULL, 0, MSG_DONTWAIT) != (ssize_t)sizeof ch)
            client_close(k);
    }
}

/* ------------------------------------------------------------- the server */

static void term_cb(uv_signal_t *h, int signum)
{
    TBX__UNUSED(signum);
    shutdown_now(h->data);
}

static int load_preloads(const char *preload)
{
    if (preload == NULL)
        return 0;
    char *list = strdup(preload), *save = NULL;
    if (list == NULL)
        return -ENOMEM;
    for (char *p = strtok_r(list, "\n", &save); p != NULL; p = strtok_r(NULL, "\n", &save)) {
        if (dlopen(p, RTLD_NOW | RTLD_GLOBAL) == NULL) {
            fprintf(stderr, "timebox forkserver: %s\n", dlerror());
            free(list);
            return TBX_EFAILED;
        }
    }
    free(list);
    return 0;
}

/* The daemon's key, beside its socket in the directory only we can enter,
 * and mode 0600 from birth. */
static int write_key(const tbx__fs_config *cfg)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 8], hex[2 * TBX__KEY_LEN + 2];
    snprintf(path, sizeof path, "%s.key", cfg->listen_path);
    (void)unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    tbx__key_format(cfg->key, hex);
    hex[2 * TBX__KEY_LEN] = '\n';
    int rc = tbx__write_all(fd, hex, 2 * TBX__KEY_LEN + 1);
    tbx__close(fd);
    return rc;
}

static void report_ready(const tbx__fs_config *cfg, int rc)
{
    if (cfg->conn >= 0) {
        tbx__hello ready = {TBX__HELLO_MAGIC, (uint32_t)rc, 0, 0};
        if (tbx__send_fds(cfg->conn, &ready, sizeof ready, NULL, 0, 0) < 0)
            _exit(1);
    }
    if (cfg->ready_fd >= 0) {
        int32_t code = rc;
        (void)tbx__write_all(cfg->ready_fd, &code, sizeof code);
        tbx__close(cfg->ready_fd);
    }
    if (rc != 0)
        _exit(1);
}

void tbx__forkserver_run(tbx__fs_config *cfg)
{
    static fs_server srv;
    int rc;
    srv.cfg = cfg;
    srv.listen_fd = -1;
    srv.max_children = cfg->max_children ? cfg->max_children : DEFAULT_MAX_CHILDREN;
    srv.request_timeout_ns =
        cfg->request_timeout_ns ? cfg->request_timeout_ns : DEFAULT_REQUEST_TIMEOUT_NS;
    signal(SIGPIPE, SIG_IGN);
    rc = load_preloads(cfg->preload);
    if (rc == 0 && tbx__run_preload_hooks() != 0)
        rc = TBX_EFAILED;
    if (rc == 0 && uv_loop_init(&srv.loop) != 0)
        rc = -ENOMEM;
    if (rc == 0 && cfg->listen_path != NULL) {
        srv.listen_fd = tbx__listen_unix(cfg->listen_path, cfg->nallow > 0);
        if (srv.listen_fd < 0)
            rc = srv.listen_fd;
    }
    if (rc == 0 && cfg->write_key)
        rc = write_key(cfg);
    report_ready(cfg, rc);
    if (cfg->conn >= 0 && client_new(&srv, cfg->conn, 1) == NULL)
        _exit(1);
    if (srv.listen_fd >= 0) {
        uv_poll_init(&srv.loop, &srv.listen_poll, srv.listen_fd);
        srv.listen_poll.data = &srv;
        uv_poll_start(&srv.listen_poll, UV_READABLE, listen_cb);
    }
    uv_signal_init(&srv.loop, &srv.term);
    srv.term.data = &srv;
    uv_signal_start(&srv.term, term_cb, SIGTERM);
    /* What the children must put back: the server's dispositions, set by
     * now (libuv's, ours, its preload hooks'), do not change while it
     * serves. */
    sigemptyset(&srv.handled);
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL)
            sigaddset(&srv.handled, sig);
    }
    note_static_fds(&srv);
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    shutdown_now(&srv);
}

/* A server spawned by tbx_forkserver_start: its options come through the
 * environment (its argv is the program's own), its key as the first message
 * on its connection. */
void tbx__forkserver_maybe_serve(void)
{
    static tbx__fs_config cfg;
    static char listen_path[108];
    const char *v = getenv(TBX__FS_VAR);
    const char *limits = getenv(TBX__FS_LIMITS_VAR);
    const char *allow = getenv(TBX__FS_ALLOW_VAR);
    const char *path = getenv(TBX__FS_LISTEN_VAR);
    unsigned long long timeout_ms = 0;
    char tail;
    if (v == NULL || sscanf(v, "%d%c", &cfg.conn, &tail) != 1)
        return;
    if (limits != NULL && sscanf(limits, "%u:%llu:%u", &cfg.max_children, &timeout_ms,
                                 &cfg.max_per_client) != 3)
        cfg.max_children = 0, timeout_ms = 0, cfg.max_per_client = 0;
    cfg.request_timeout_ns = timeout_ms * 1000000ull;
    for (const char *p = allow; p != NULL && *p != '\0' && cfg.nallow < TBX__MAX_ALLOW;) {
        char *end;
        unsigned long uid = strtoul(p, &end, 10);
        if (end == p)
            break;
        cfg.allow[cfg.nallow++] = (uid_t)uid;
        p = *end == ',' ? end + 1 : end;
    }
    if (path != NULL && strlen(path) < sizeof listen_path) {
        strcpy(listen_path, path);
        cfg.listen_path = listen_path;
    }
    const char *preload = getenv(TBX__FS_PRELOAD_VAR);
    cfg.preload = preload != NULL ? strdup(preload) : NULL;
    cfg.ready_fd = -1;
    cfg.verbose = 1;
    tbx__keymsg km;
    int nfds = 0;
    if (tbx__recv_fds(cfg.conn, &km, sizeof km, NULL, &nfds, 0) != (ssize_t)sizeof km ||
        km.magic != TBX__AUTH_MAGIC)
        _exit(1);
    memcpy(cfg.key, km.key, sizeof cfg.key);
    /* Nothing of the server's set-up reaches the functions it runs. */
    unsetenv(TBX__FS_VAR);
    unsetenv(TBX__FS_LIMITS_VAR);
    unsetenv(TBX__FS_ALLOW_VAR);
    unsetenv(TBX__FS_LISTEN_VAR);
    unsetenv(TBX__FS_PRELOAD_VAR);
    tbx__forkserver_run(&cfg);
}
