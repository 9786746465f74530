/*
 * The pool method (TBX_POOL), the caller's side: pooled processes, each
 * forked by the forkserver (pool_serve.c) and reached through a slot of
 * three descriptors: the control socket the server reports on (LAUNCHED
 * once, EXITED when the process is gone), the request socket the calls go
 * down, and the result pipe they come back on.
 *
 * A call takes an idle slot, or orders a new process when none is idle (so
 * calls never wait for one another).  Its result frame carries the process's
 * word on the call (TBX__POOL_*): DONE, the call is over there (its
 * descendants dead); and whether the process serves on.  A call whose
 * process serves on gives its slot back (engine.c calls
 * the launcher's release as it closes the call); any other call closes the slot,
 * which lets the process go, or it is already gone: killed at a deadline, a
 * cancel or an oversize result, as any server child is (the forkserver
 * launcher's watch and signals serve here too).  At most pool_size slots
 * are kept idle; the rest are closed as their calls end.
 */
#include "forkserver/client.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct pool_slot {
    struct pool_slot *next;
    pid_t pid;  /* 0 until a call has read the server's LAUNCHED */
    int containment; /* what holds it (TBX_CONTAIN_*), from LAUNCHED */
    int control, request, result;
} pool_slot;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pool_slot *idle;
static unsigned nidle;
static atomic_uint pool_size, pool_max_calls;
static atomic_int configured; /* pool_size was set at the start */

static void slot_close(pool_slot *w)
{
    tbx__close(w->control);
    tbx__close(w->request);
    tbx__close(w->result);
    free(w);
}

static unsigned target(void)
{
    unsigned n = atomic_load(&pool_size);
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? (unsigned)cpus : 1;
    }
    return n;
}

void tbx__fs_client_pool_set(unsigned size, unsigned max_calls)
{
    atomic_store(&pool_size, size);
    atomic_store(&pool_max_calls, max_calls);
    atomic_store(&configured, size > 0);
}

static int pool_ready(void)
{
    return atomic_load(&configured);
}

/* Idle slots go with the connection they were made on (the server's stop,
 * or a fork child, which must not use its parent's processes). */
void tbx__fs_client_pool_drop(void)
{
    pthread_mutex_lock(&pool_lock);
    pool_slot *w = idle;
    idle = NULL;
    nidle = 0;
    pthread_mutex_unlock(&pool_lock);
    while (w != NULL) {
        pool_slot *next = w->next;
        slot_close(w);
        w = next;
    }
}

/* A fork child: the idle processes serve the parent's calls.  The lock,
 * which another thread may have held at the fork, starts afresh. */
void tbx__fs_client_pool_forget(void)
{
    pthread_mutex_init(&pool_lock, NULL);
    tbx__fs_client_pool_drop();
}

/* Orders a pooled process from the server: it is forked meanwhile, and
 * reads the first request whenever it comes. */
static pool_slot *order(tbx__call *call, int *rc)
{
    int ctl[2] = {-1, -1}, req[2] = {-1, -1}, res[2] = {-1, -1};
    pool_slot *w = malloc(sizeof *w);
    *rc = w == NULL ? -ENOMEM : 0;
    if (*rc == 0 && (tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0 ||
                     tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, req) != 0))
        *rc = -errno;
    if (*rc == 0)
        *rc = tbx__pipe(res, 0);
    if (*rc == 0) {
        int fds[3] = {ctl[1], res[1], req[1]};
        *rc = tbx__fs_client_hand_over(call, TBX__HELLO_POOL, 0, atomic_load(&pool_max_calls), fds,
                                       3);
    }
    tbx__close(ctl[1]);
    tbx__close(req[1]);
    tbx__close(res[1]);
    if (*rc != 0) {
        tbx__close(ctl[0]);
        tbx__close(req[0]);
        tbx__close(res[0]);
        free(w);
        return NULL;
    }
    *w = (pool_slot){NULL, 0, 0, ctl[0], req[0], res[0]};
    return w;
}

static void give_back(pool_slot *w)
{
    pthread_mutex_lock(&pool_lock);
    int keep = nidle < target();
    if (keep) {
        w->next = idle;
        idle = w;
        nidle++;
    }
    pthread_mutex_unlock(&pool_lock);
    if (!keep)
        slot_close(w);
}

void tbx__fs_client_pool_fill(void)
{
    if (!atomic_load(&configured))
        return; /* pool_size unset: the pool fills as TBX_POOL calls come */
    for (;;) {
        pthread_mutex_lock(&pool_lock);
        int short_of = nidle < target();
        pthread_mutex_unlock(&pool_lock);
        int rc;
        pool_slot *w = short_of ? order(NULL, &rc) : NULL;
        if (w == NULL)
            return;
        give_back(w);
    }
}

/* An idle slot whose process is alive, or NULL.  One that died while idle
 * (its server's news of it waiting on the control socket) is closed. */
static pool_slot *take(void)
{
    for (;;) {
        pthread_mutex_lock(&pool_lock);
        pool_slot *w = idle;
        if (w != NULL) {
            idle = w->next;
            nidle--;
        }
        pthread_mutex_unlock(&pool_lock);
        if (w == NULL)
            return NULL;
        struct pollfd p = {w->control, POLLIN, 0};
        if (w->pid == 0 || poll(&p, 1, 0) == 0)
            return w; /* a fresh one has its LAUNCHED waiting: it is read by the call */
        slot_close(w);
    }
}

static int pool_launch(tbx__call *c, tbx__child *child)
{
    int rc = 0;
    pool_slot *w = take();
    if (w == NULL && (w = order(c, &rc)) == NULL)
        return rc;
    /* No pidfd: the server, the process's parent, signals it when asked on
     * the control socket and reports its end there, as for every server
     * child; an idle process costs its three descriptors. */
    child->pid = w->pid;
    child->pidfd = -1;
    c->containment = w->containment; /* a fresh one's comes with LAUNCHED */
    child->control_fd = w->control;
    child->request_fd = w->request;
    child->result_fd = w->result;
    child->bulk_fd = -1;
    child->worker = tbx__says_start(c);
    child->pooled = 1;
    child->slot = w;
    return 0;
}

/* A fresh process can answer its first call before the server's LAUNCHED
 * (sent once it has forked it) has reached us: the call waits for it, a
 * matter of microseconds, so that its result names the process (pid) and
 * the slot knows it.  0, or -1 if it did not come in time (the slot is then
 * not kept: control_got or pid say so). */
static int await_launched(tbx__call *c)
{
    uint64_t until = tbx__now_ns() + TBX__SERVER_SLACK_NS;
    while (c->child.pid == 0) {
        uint64_t now = tbx__now_ns();
        struct pollfd p = {c->child.control_fd, POLLIN, 0};
        int r = now >= until ? 0 : poll(&p, 1, (int)((until - now) / 1000000u) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        int fd = -1, nfds = 1;
        ssize_t n = tbx__recv_fds(c->child.control_fd, (char *)&c->control + c->control_got,
                                  sizeof c->control - c->control_got, &fd, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            continue;
        if (n <= 0) {
            tbx__close(fd);
            return -1;
        }
        c->control_got += (size_t)n;
        if (nfds == 1) {
            tbx__close(c->control_fd_in);
            c->control_fd_in = fd;
        }
        if (c->control_got < sizeof c->control)
            continue;
        c->control_got = 0;
        if (tbx__control_check(&c->control, 1) != 0 || c->control.kind != TBX__CTL_LAUNCHED ||
            c->control.pid <= 0)
            return -1;
        c->child.pid = c->control.pid;
        c->containment = c->control.code >= TBX_CONTAIN_PGROUP &&
                                 c->control.code <= TBX_CONTAIN_CGROUP
                             ? c->control.code
                             : TBX_CONTAIN_PGROUP;
        c->child.pidfd = c->control_fd_in;
        c->control_fd_in = -1;
    }
    return 0;
}

static void pool_release(tbx__call *c)
{
    pool_slot *w = c->child.slot;
    c->child.slot = NULL;
    if (w == NULL)
        return;
    uint32_t word = c->pool_word;
    /* Not kept: a process the call asked the server to signal (its deadline
     * came as the result did), which may die under the next call. */
    int kept = (word & TBX__POOL_DONE) && c->child.pid > 0 && c->kill_signal == 0 &&
               !(word & (TBX__POOL_DRIFT | TBX__POOL_SPENT | TBX__POOL_RETIRE)) &&
               tbx__request_whole(c) &&
               c->control_got == 0 && c->control_fd_in < 0 && !c->writing;
    if (!kept) {
        /* The engine closes its descriptors with the call's, which lets the
         * process go, if it has not gone already.  Its replacement is
         * ordered now that the call is over (not while it ran, competing
         * with it for a CPU), if the idle ones are short. */
        free(w);
        tbx__close(c->child.request_fd); /* tbx__request_end left it open */
        c->child.request_fd = -1;
        pthread_mutex_lock(&pool_lock);
        int short_of = nidle < target();
        pthread_mutex_unlock(&pool_lock);
        int rc;
        if (short_of && (w = order(NULL, &rc)) != NULL)
            give_back(w);
        return;
    }
    w->pid = c->child.pid;
    w->containment = c->containment;
    c->child.control_fd = c->child.request_fd = c->child.result_fd = -1;
    give_back(w);
}

/* The result frame is whole: with the process's word on the call (DONE),
 * the call is over there, its descendants dead; it ends here too. */
static void pool_frame_done(tbx__call *c)
{
    if (!(c->hdr.pool & TBX__POOL_DONE))
        return; /* a refusal before it exits: its EXITED ends the call */
    c->pool_word = c->hdr.pool;
    if (c->child.pid == 0)
        (void)await_launched(c);
    tbx__engine_child_ended(c, 0, 0); /* "exited 0": it served the call */
}

/* What became of the process, from its last word on the call (none: it was
 * killed, or died). */
static void pool_ended(tbx__call *c)
{
    uint32_t w = c->pool_word;
    c->out->pool_fate = !(w & TBX__POOL_DONE)    ? TBX_POOL_ENDED
                        : (w & TBX__POOL_DRIFT)  ? TBX_POOL_DRIFTED
                        : (w & TBX__POOL_RETIRE) ? TBX_POOL_RETIRED
                        : (w & TBX__POOL_SPENT)  ? TBX_POOL_SPENT
                                                 : TBX_POOL_KEPT;
}

static int pool_exited(tbx__call *c)
{
    return c->child.pidfd >= 0 && tbx__pidfd_exited(c->child.pidfd);
}

/* Backtraces are refused for a pooled call (no backtrace pipe): none
 * will come. */
static int pool_backtrace(tbx__call *c)
{
    TBX__UNUSED(c);
    return -1;
}

/* backtrace_on_crash is refused too: a crash ends the process, whose
 * server lets it die of its signal. */
static void pool_crashed(tbx__call *c, int sig)
{
    tbx__fs_client_kill(c, sig);
}

static void pool_abandon(tbx__call *c)
{
    TBX__UNUSED(c); /* the engine closes the slot's descriptors: it goes */
}

/* A fresh process of the server's, which finds fn by name; its stdout and
 * stderr are its own, for every call it serves (no capture, no backtrace
 * pipe). */
const tbx__launcher tbx__launch_pool = {
    .name = "pool",
    .max_args = TBX__MAX_ARGS,
    .prepare = tbx__request_build,
    .launch = pool_launch,
    .watch = tbx__fs_client_watch,
    .exited = pool_exited,
    .signal = tbx__fs_client_kill,
    .backtrace = pool_backtrace,
    .crashed = pool_crashed,
    .abandon = pool_abandon,
    .ended = pool_ended,
    .frame_done = pool_frame_done,
    .release = pool_release,
    .ready = pool_ready,
};
