/*
 * The forkserver method's launcher.  A call hands the server two fds (the
 * server's end of a fresh control socket and the child's end of the result
 * socket; see wire.h), or takes a warm child; the request goes down the
 * control socket as spawn's does, written before the hand-over.  The
 * server forks and reaps: the child's end is learned from its control
 * messages (LAUNCHED with a pidfd, then EXITED or ERROR), and its signals
 * are asked of the server.  A server that dies, or says nothing a while
 * after SIGKILL, is given up on.
 */
#include "forkserver/client.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* forkserver: LAUNCHED, then EXITED or ERROR.  A call that may ask for a
 * trace (and a warm child) hears LAUNCHED at the fork, with the child's
 * pidfd; any other hears it with EXITED, in one wake-up, and holds no pidfd
 * (an older server sends it at the fork all the same).  The server reaps;
 * its EXITED comes after the child's group is gone.  The socket
 * closing before that means the server died.  Either way, no EXITED will
 * come: the call ends with what it has. */
static void give_up_on_server(tbx__call *c)
{
    c->lost = 1;
    c->lost_why = "the forkserver exited during the call";
    tbx__engine_child_ended(c, -1, 0);
}

static void server_gone(tbx__call *c)
{
    if (c->child.pidfd >= 0)
        (void)tbx__pidfd_send_signal(c->child.pidfd, SIGKILL);
    give_up_on_server(c);
}

static int ask_trace(tbx__call *c, int sig)
{
    tbx__control m = {.magic = TBX__CONTROL_MAGIC, .kind = TBX__CTL_TRACE, .code = sig};
    if (c->child.pid <= 0 ||
        send(c->child.control_fd, &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof m)
        return -1;
    return 0;
}

void tbx__fs_client_control_cb(uv_poll_t *h, int status, int events)
{
    tbx__call *c = h->data;
    TBX__UNUSED(events);
    /* An error on the socket (a server that closed its end with our KILL
     * unread resets it) still lets what the server sent before be read
     * first: its last words (LAUNCHED, EXITED) are not lost with it.  The
     * poll has stopped then: nothing left to read means the server is gone. */
    while (!c->reaped) {
        int fd = -1, nfds = 1;
        ssize_t n = tbx__recv_fds(c->child.control_fd, (char *)&c->control + c->control_got,
                                  sizeof c->control - c->control_got, &fd, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN && status >= 0)
            return;
        if (n <= 0)
            break;
        if (nfds == 1) { /* only LAUNCHED brings one, and only once */
            if (c->control_fd_in >= 0)
                tbx__close(c->control_fd_in);
            c->control_fd_in = fd;
        }
        c->control_got += (size_t)n;
        if (c->control_got < sizeof c->control)
            continue;
        c->control_got = 0;
        tbx__control *m = &c->control;
        if (tbx__control_check(m, 1) != 0)
            break;
        if (m->kind == TBX__CTL_LAUNCHED && c->child.pid == 0 && m->pid > 0) {
            c->child.pid = m->pid;
            c->containment = m->code >= TBX_CONTAIN_PGROUP && m->code <= TBX_CONTAIN_CGROUP
                                 ? m->code
                                 : TBX_CONTAIN_PGROUP;
            c->child.pidfd = c->control_fd_in;
            c->control_fd_in = -1;
            if (c->kill_signal != 0 && c->child.pidfd >= 0)
                (void)tbx__pidfd_send_signal(c->child.pidfd, c->kill_signal);
            /* It crashed before we knew it: the server may trace it now. */
            if (c->crash_signal != 0 && ask_trace(c, c->crash_signal) != 0 && c->child.pidfd >= 0)
                (void)tbx__pidfd_send_signal(c->child.pidfd, c->crash_signal);
        } else if (m->kind == TBX__CTL_EXITED && c->child.pid > 0) {
            struct rusage ru = {.ru_utime = {(time_t)(m->user_us / 1000000),
                                             (suseconds_t)(m->user_us % 1000000)},
                                .ru_stime = {(time_t)(m->sys_us / 1000000),
                                             (suseconds_t)(m->sys_us % 1000000)},
                                .ru_maxrss = (long)m->max_rss_kb};
            tbx__call_cost(c, &ru);
            tbx__engine_child_ended(c, m->code, 1);
            return;
        } else if (m->kind == TBX__CTL_TRACED && c->child.pid > 0) {
            c->backtrace_source = m->code == TBX_BACKTRACE_OUTSIDE   ? TBX_BACKTRACE_OUTSIDE
                                  : m->code == TBX_BACKTRACE_HANDLER ? TBX_BACKTRACE_HANDLER
                                                                     : TBX_BACKTRACE_NONE;
        } else if (m->kind == TBX__CTL_ERROR && c->child.pid == 0) {
            /* Nothing launched; a worker-style ERROR frame may explain. */
            if (m->code < 0 && m->code > -4096)
                c->sys_error = m->code;
            tbx__engine_child_ended(c, -1, 0);
            return;
        } else {
            break;
        }
    }
    if (!c->reaped)
        server_gone(c);
}

/* The server's state and CPU ticks (user + system) from /proc/PID/stat,
 * or 0 if it cannot be read. */
static char server_state(uint64_t *ticks)
{
    char buf[512], path[32];
    pid_t pid = tbx_forkserver_pid();
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = pid > 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    ssize_t n = fd >= 0 ? tbx__read(fd, buf, sizeof buf - 1) : -1;
    tbx__close(fd);
    buf[n > 0 ? n : 0] = '\0';
    char *p = n > 0 ? strrchr(buf, ')') : NULL; /* the name may hold anything */
    char state = 0;
    unsigned long long ut = 0, st = 0;
    /* ") S ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime" */
    if (p == NULL || sscanf(p + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                            &state, &ut, &st) != 3)
        return 0;
    *ticks = ut + st;
    return state;
}

/* The forkserver did not report its child's end a second after SIGKILL.  A
 * server that is still working (runnable, or it used CPU time meanwhile:
 * many children to reap, on a loaded machine) gets another second, up to
 * TBX__SERVER_BUSY_NS; one that is stopped, or sleeps without a word, is
 * given up on: the call ends here, with the verdict it had.  Our end of the
 * control socket closes with it, which tells the server, whenever it
 * wakes, to kill the child; the pidfd, if we have one, has already had
 * SIGKILL. */
static void server_silent_cb(tbx__deadline *d)
{
    tbx__call *c = (tbx__call *)((char *)d - offsetof(tbx__call, deadline));
    if (c->reaped || c->finishing)
        return;
    uint64_t now = tbx__now_ns(), ticks = 0;
    char state = server_state(&ticks);
    int busy = state == 'R' || state == 'D' || (state != 0 && ticks != c->server_cpu);
    c->server_cpu = ticks;
    if (busy && now - c->silent_since < TBX__SERVER_BUSY_NS &&
        tbx__deadline_start(&c->deadline, c->loop, now + TBX__SERVER_SLACK_NS) == 0)
        return;
    /* The pid is known only if LAUNCHED came at the fork. */
    if (c->child.pid > 0)
        tbx__log(TBX_LOG_WARN, "the forkserver did not report the end of child %d in time: "
                               "giving up on it", (int)c->child.pid);
    else
        tbx__log(TBX_LOG_WARN, "the forkserver did not report the end of the call's child in "
                               "time: giving up on it");
    give_up_on_server(c);
}

/* Gives the server TBX__SERVER_SLACK_NS to report the end after SIGKILL. */
static void await_server(tbx__call *c)
{
    uint64_t ticks = 0;
    c->silent_since = tbx__now_ns();
    c->server_cpu = server_state(&ticks) != 0 ? ticks : 0;
    c->deadline.cb = server_silent_cb;
    (void)tbx__deadline_start(&c->deadline, c->loop, c->silent_since + TBX__SERVER_SLACK_NS);
}


static int forkserver_launch(tbx__call *c, tbx__child *child)
{
    int ctl[2], res[2] = {-1, -1}, rc;
    int capture = c->capture[TBX__STDOUT].child_fd >= 0;
    int backtrace = c->capture[TBX__BACKTRACE].child_fd >= 0;
    /* A warm child already waits for its request: the engine writes it
     * straight to it, and LAUNCHED, long since sent, is read as usual. */
    if (!capture && !backtrace && tbx__fs_client_take_warm(child)) {
        child->worker = tbx__says_start(c);
        return 0;
    }
    if (tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0)
        return -errno;
    /* The result comes down a socket, as a fork child's does: a result past
     * 1 MiB comes in a memfd the child makes then and sends with its header,
     * so that the call holds none while it runs.  (An older server sends
     * every result down it as bytes.) */
    int whole = 0;
    rc = tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, res) != 0 ? -errno : 0;
    if (rc == 0) {
        /* The request goes into the control socket first: when the server
         * has the hello, the request is there to be read at once, without a
         * wait for it on the server's loop.  Most fit whole; the rest goes
         * out from the engine, on a second descriptor of the socket. */
        child->request_fd = ctl[0];
        whole = tbx__request_send(c);
        child->request_fd = -1;
        rc = whole < 0 ? whole : 0;
    }
    if (rc == 0) {
        /* The request itself goes out from the engine, on the control
         * socket; the captured streams' write ends go to the child. */
        int fds[TBX__HELLO_MAX_FDS] = {ctl[1], res[1]}, n = 2;
        if (capture) {
            fds[n++] = c->capture[TBX__STDOUT].child_fd;
            fds[n++] = c->capture[TBX__STDERR].child_fd;
        }
        if (backtrace)
            fds[n++] = c->capture[TBX__BACKTRACE].child_fd;
        rc = tbx__fs_client_hand_over(c, TBX__HELLO_CALL,
                       (capture ? TBX__HELLO_CAPTURE : 0) | (backtrace ? TBX__HELLO_BACKTRACE : 0),
                       0, fds, n);
    }
    tbx__close(ctl[1]);
    tbx__close(res[1]);
    /* What is left of the request goes out on a second descriptor of the
     * control socket: the engine polls for reading and writing separately. */
    int req = rc == 0 && whole == 0 ? fcntl(ctl[0], F_DUPFD_CLOEXEC, 0) : -1;
    if (rc == 0 && whole == 0 && req < 0)
        rc = -errno;
    if (rc == TBX_ETIMEDOUT)
        c->out->message = "deadline passed before the forkserver took the call (it was "
                          "still starting, or not reading)";
    if (rc != 0) {
        /* Closing our end tells the server, if it has the call, to drop it. */
        tbx__close(ctl[0]);
        tbx__close(res[0]);
        return rc;
    }
    child->pid = 0; /* until LAUNCHED */
    child->pidfd = -1;
    child->result_fd = res[0];
    child->control_fd = ctl[0];
    child->request_fd = req;
    child->bulk_fd = -1; /* until the child sends one */
    child->result_sock = 1;
    child->worker = tbx__says_start(c);
    return 0;
}

/* The pool is topped up now that the call is over: after a warm child was
 * used, and after whatever left it short (a server restarted, a stop and a
 * start, a refill that failed).  Ordered sooner, the server would fork
 * while the call's own child runs, and both the child and the server's news
 * of its exit would wait for the CPU the fork takes.  A full pool costs a
 * comparison. */
static void forkserver_ended(tbx__call *c)
{
    TBX__UNUSED(c);
    tbx__fs_client_warm_fill();
}


int tbx__fs_client_watch(tbx__call *c, uv_handle_t **h)
{
    int rc = tbx__engine_watch_fd(c, &c->control_poll, c->child.control_fd, h);
    return rc != 0 ? rc : uv_poll_start(&c->control_poll, UV_READABLE,
                                             tbx__fs_client_control_cb);
}

/* Dead, as far as can be told without waiting (an escalation asks, so as
 * not to count a signal sent to a child that already died): its pidfd says
 * so, or the server's EXITED already waits on the control socket, behind
 * the LAUNCHED that comes with it when there is no pidfd.  Peeked, not
 * read: the control callback reads it as usual. */
static int forkserver_exited(tbx__call *c)
{
    if (c->child.pidfd >= 0)
        return tbx__pidfd_exited(c->child.pidfd);
    tbx__control m[2];
    size_t at = c->child.pid > 0 ? 0 : 1;
    if (c->control_got != 0 || c->child.control_fd < 0)
        return 0;
    ssize_t n = recv(c->child.control_fd, m, sizeof m, MSG_PEEK | MSG_DONTWAIT);
    return n >= (ssize_t)((at + 1) * sizeof m[0]) && tbx__control_check(&m[at], 1) == 0 &&
           m[at].kind == TBX__CTL_EXITED;
}

void tbx__fs_client_kill(tbx__call *c, int sig)
{
    /* Still waiting for the server's start: taken back, the call's control
     * socket closes, and the call ends now, as a call whose server is gone
     * (its verdict, the deadline or the cancel, already set). */
    if (tbx__fs_client_withdraw(c))
        return;
    /* The server signals the group (it alone may, since it reaps); the
     * pidfd, where we have one, reaches the child at once. */
    tbx__control m = {.magic = TBX__CONTROL_MAGIC, .kind = TBX__CTL_KILL, .code = sig};
    (void)send(c->child.control_fd, &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (c->child.pidfd >= 0)
        (void)tbx__pidfd_send_signal(c->child.pidfd, sig);
    /* The child ends when the server says so.  A server that is alive but
     * stuck must not hang the call: a little after SIGKILL it is given up on
     * (server_silent_cb). */
    if (sig == SIGKILL)
        await_server(c);
}

static void forkserver_signal(tbx__call *c, int sig)
{
    if (c->child.request_fd < 0)
        return tbx__fs_client_kill(c, sig); /* which takes back a kept one */
    if (tbx__fs_client_withdraw(c))
        return;
    /* The request is still on its way, and a KILL would land in the middle
     * of it: the server hears our end close instead, drops the call, and
     * closes its end (server_silent_cb as for a KILL). */
    tbx__request_end(c);
    (void)shutdown(c->child.control_fd, SHUT_WR);
    if (sig == SIGKILL)
        await_server(c);
}

/* The server, the child's parent, traces it into the backtrace pipe (from
 * outside if it can, else by the child's handler) and says which (TRACED). */
static int forkserver_backtrace(tbx__call *c)
{
    return ask_trace(c, 0);
}

/* The server traces its crashed child, then lets it die of sig.  A crash
 * can be read before LAUNCHED (the result pipe and the control socket race):
 * then LAUNCHED asks. */
static void forkserver_crashed(tbx__call *c, int sig)
{
    if (c->child.pid > 0 && ask_trace(c, sig) != 0 && c->child.pidfd >= 0)
        (void)tbx__pidfd_send_signal(c->child.pidfd, sig);
}

/* A server's child is the server's to end: closing the control socket, as
 * the engine does next, tells it to. */
static void forkserver_abandon(tbx__call *c)
{
    TBX__UNUSED(c);
}

/* A fresh program (a child of the server's) finds fn by name, and a pointer
 * cannot cross into another process. */
const tbx__launcher tbx__launch_forkserver = {
    .name = "forkserver",
    .accepts = TBX__ACCEPTS_STREAMS,
    .not_started = "a child hook, or the server's fork (the server itself serves)",
    .max_args = TBX__MAX_ARGS,
    .prepare = tbx__request_build,
    .launch = forkserver_launch,
    .watch = tbx__fs_client_watch,
    .exited = forkserver_exited,
    .signal = forkserver_signal,
    .backtrace = forkserver_backtrace,
    .crashed = forkserver_crashed,
    .abandon = forkserver_abandon,
    .ended = forkserver_ended,
};
