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
 *
 * A slot kept by a blocking call stays watched on its thread's private loop
 * (pool_own.c), and that thread's calls take it first.
 */
#include "forkserver/pool.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

typedef tbx__pool_slot pool_slot;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pool_slot *idle;
static unsigned nidle;
static atomic_uint pool_size, pool_max_calls;
static atomic_int configured; /* pool_size was set at the start */

/* Let go while watched on a loop in use (a stop): closed by that loop's
 * thread, at its next TBX_POOL call or as it ends. */
static pool_slot *graveyard;
static pthread_once_t hook_once = PTHREAD_ONCE_INIT;

/* On the thread of the loop watching w, if one does. */
static void slot_close(pool_slot *w)
{
    tbx__pool_own_close(w);
}

/* Moves the slots of list watched on loop (every slot, if all) to *out;
 * under the pool's lock.  Returns how many. */
static unsigned pick(pool_slot **list, uv_loop_t *loop, int all, pool_slot **out)
{
    unsigned n = 0;
    for (pool_slot **p = list; *p != NULL;) {
        pool_slot *w = *p;
        if (all || w->loop == loop) {
            *p = w->next;
            w->next = *out;
            *out = w;
            n++;
        } else {
            p = &w->next;
        }
    }
    return n;
}

static void close_all(pool_slot *w)
{
    while (w != NULL) {
        pool_slot *next = w->next;
        slot_close(w);
        w = next;
    }
}

/* A thread's private loop ends: the slots watched on it close with it. */
static void loop_end(uv_loop_t *loop)
{
    pool_slot *gone = NULL;
    pthread_mutex_lock(&pool_lock);
    nidle -= pick(&idle, loop, 0, &gone);
    (void)pick(&graveyard, loop, 0, &gone);
    pthread_mutex_unlock(&pool_lock);
    close_all(gone);
}

static void hook(void)
{
    tbx__private_loop_on_end(loop_end);
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
 * or a fork child, which must not use its parent's processes).  One
 * watched on a loop in use (a blocking call of another thread's) is closed
 * by that loop's thread. */
void tbx__fs_client_pool_drop(void)
{
    pool_slot *gone = NULL, *w = NULL;
    pthread_mutex_lock(&pool_lock);
    (void)pick(&idle, NULL, 1, &w);
    nidle = 0;
    while (w != NULL) {
        pool_slot *next = w->next;
        if (w->loop == NULL) {
            w->next = gone;
            gone = w;
        } else if (!tbx__pool_own_close_from(w)) { /* else closed: w is no more */
            w->next = graveyard;
            graveyard = w;
        }
        w = next;
    }
    pthread_mutex_unlock(&pool_lock);
    close_all(gone);
}

/* A fork child: the idle processes serve the parent's calls; the loops
 * that watched some are forgotten (loop.c), their handles with them.  The
 * lock, which another thread may have held at the fork, starts afresh. */
void tbx__fs_client_pool_forget(void)
{
    pthread_mutex_init(&pool_lock, NULL);
    pool_slot *w = NULL;
    (void)pick(&idle, NULL, 1, &w);
    (void)pick(&graveyard, NULL, 1, &w);
    nidle = 0;
    while (w != NULL) { /* their memory is left: their handles with it */
        pool_slot *next = w->next;
        tbx__close(w->control);
        tbx__close(w->request);
        tbx__close(w->result);
        w = next;
    }
}

/* Orders a pooled process from the server: it is forked meanwhile, and
 * reads the first request whenever it comes. */
static pool_slot *order(tbx__call *call, int *rc)
{
    int ctl[2] = {-1, -1}, req[2] = {-1, -1}, res[2] = {-1, -1};
    pool_slot *w = tbx__pool_slot_new();
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
        if (w != NULL)
            slot_close(w);
        return NULL;
    }
    w->control = ctl[0];
    w->request = req[0];
    w->result = res[0];
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

/* The idle slot to take for a call on loop: one watched there already,
 * else one watched nowhere, else one taken over from another thread's loop
 * (out of the list meanwhile: its memory may be reused as it is); under
 * the pool's lock. */
static pool_slot *choose(uv_loop_t *loop)
{
    pool_slot **at = NULL;
    for (pool_slot **p = &idle; *p != NULL && at == NULL; p = &(*p)->next)
        if ((*p)->loop == loop)
            at = p;
    for (pool_slot **p = &idle; *p != NULL && at == NULL; p = &(*p)->next)
        if ((*p)->loop == NULL)
            at = p;
    if (at != NULL) {
        pool_slot *w = *at;
        *at = w->next;
        nidle--;
        return w;
    }
    for (pool_slot **p = &idle; *p != NULL; p = &(*p)->next) {
        pool_slot *w = *p, *got;
        *p = w->next;
        if ((got = tbx__pool_own_take_over(w)) != NULL) {
            nidle--;
            return got;
        }
        *p = w; /* its loop is in use */
    }
    return NULL;
}

/* An idle slot whose process is alive, or NULL.  One that died while idle
 * (its server's news of it waiting on the control socket, or seen by its
 * loop) is closed, as are the ones a stop left to this loop. */
static pool_slot *take(uv_loop_t *loop)
{
    for (;;) {
        pool_slot *gone = NULL;
        pthread_mutex_lock(&pool_lock);
        if (graveyard != NULL)
            (void)pick(&graveyard, loop, 0, &gone);
        pool_slot *w = choose(loop);
        pthread_mutex_unlock(&pool_lock);
        close_all(gone);
        if (w == NULL)
            return NULL;
        struct pollfd p = {w->control, POLLIN, 0};
        if (w->pid == 0 || (tbx__pool_own_alive(w) && poll(&p, 1, 0) == 0))
            return w; /* a fresh one has its LAUNCHED waiting: it is read by the call */
        slot_close(w);
    }
}

static int pool_launch(tbx__call *c, tbx__child *child)
{
    int rc = 0;
    pool_slot *w = take(c->loop);
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
    /* The captured streams' write ends go to the process with the request
     * (the engine closes the call's child ends once the launch returns). */
    for (int i = 0; i < 2 && (c->request.flags & TBX__REQ_CAPTURE); i++) {
        c->capture_send[i] = c->capture[TBX__STDOUT + i].child_fd;
        c->capture[TBX__STDOUT + i].child_fd = -1;
    }
    tbx__pool_own_lend(w, c, child);
    return 0;
}

/* A slot of the thread's own is watched already: the call holds a stand-in
 * handle (a timer never started, which costs no system call), closed with
 * the call's, so that the call ends through its handles' closes as every
 * call does.  Any other: the control socket watched for this call. */
static int pool_watch(tbx__call *c, uv_handle_t **h)
{
    if (c->child.result_watch == NULL)
        return tbx__fs_client_watch(c, h);
    int rc = uv_timer_init(c->loop, &c->exit_timer);
    if (rc != 0)
        return rc;
    c->exit_timer.data = c;
    c->open_handles++;
    *h = (uv_handle_t *)&c->exit_timer;
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
     * came as the result did), which may die under the next call; one whose
     * handles stopped (news came that the call did not read). */
    int kept = (word & TBX__POOL_DONE) && c->child.pid > 0 && c->kill_signal == 0 &&
               !(word & (TBX__POOL_DRIFT | TBX__POOL_SPENT | TBX__POOL_RETIRE)) &&
               tbx__request_whole(c) &&
               c->control_got == 0 && c->control_fd_in < 0 && !c->writing;
    kept = tbx__pool_own_reclaim(w, c) && kept;
    if (!kept) {
        /* The engine closes its descriptors with the call's, which lets the
         * process go, if it has not gone already.  Its replacement is
         * ordered now that the call is over (not while it ran, competing
         * with it for a CPU), if the idle ones are short. */
        w->control = w->request = w->result = -1; /* the call's to close */
        slot_close(w);
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
    pthread_once(&hook_once, hook);
    if (tbx__pool_own_keep(w, c))
        give_back(w);
}

/* The result frame is whole: with the process's word on the call (DONE),
 * the call is over there, its descendants dead; it ends here too. */
static void pool_frame_done(tbx__call *c)
{
    if (c->child.slot != NULL)
        tbx__pool_own_answered(c->child.slot);
    if (!(c->hdr.pool & TBX__POOL_DONE))
        return; /* a refusal before it exits: its EXITED ends the call */
    c->pool_word = c->hdr.pool;
    if (c->child.pid == 0)
        (void)await_launched(c);
    tbx__engine_child_ended(c, 0, 0); /* "exited 0": it served the call */
}

/* The request is whole: a blocking call may wait for the answer awake. */
static void pool_sent(tbx__call *c)
{
    if (c->child.slot != NULL)
        tbx__pool_own_sent(c->child.slot, c);
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

/* The request, as for a worker; a call that captures its output sends its
 * pipes with it, for the process's stdout and stderr (pool_serve.c). */
static int pool_prepare(tbx__call *c)
{
    int rc = tbx__request_build(c);
    if (rc == 0 && c->opts.capture_output != 0)
        c->request.flags |= TBX__REQ_CAPTURE;
    return rc;
}

/* A fresh process of the server's, which finds fn by name; its stdout and
 * stderr are its own but for a call that captures them (no backtrace
 * pipe). */
const tbx__launcher tbx__launch_pool = {
    .name = "pool",
    .accepts = TBX__ACCEPTS_CAPTURE,
    .max_args = TBX__MAX_ARGS,
    .prepare = pool_prepare,
    .launch = pool_launch,
    .watch = pool_watch,
    .exited = pool_exited,
    .signal = tbx__fs_client_kill,
    .backtrace = pool_backtrace,
    .crashed = pool_crashed,
    .abandon = pool_abandon,
    .ended = pool_ended,
    .frame_done = pool_frame_done,
    .sent = pool_sent,
    .release = pool_release,
    .ready = pool_ready,
};
