/*
 * Handing calls to the forkserver, and starting it, without holding a call
 * past its deadline or a loop's thread at all.
 *
 * A start (spawn, preload hooks that may load a model, the handshake) runs
 * on a thread of its own.  A blocking call waits for it no longer than its
 * deadline: past it the call ends TBX_ETIMEDOUT and the start goes on for
 * the calls after it.  An async call does not wait: its hand-over is kept
 * (its fds duplicated) and goes out once the server serves, and the call's
 * loop learns of it as of any call, from LAUNCHED on its control socket; a
 * deadline or a cancel meanwhile takes the hand-over back, and the call ends
 * at once.  Sends are bounded by the deadline too (client.c).
 */
#include "forkserver/client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define SEND_TIMEOUT_S 10 /* a server that stops reading: -EAGAIN */

/* Sends one hello with its fds, never past until (0: only the send
 * timeout); the kernel queues a few before the server reads them, which it
 * does at once, so a wait means a server that stopped reading. */
int tbx__fs_client_send_hello(int conn, const tbx__hello *hello, const int *fds, int nfds,
                              uint64_t until)
{
    uint64_t give_up = tbx__now_ns() + (uint64_t)SEND_TIMEOUT_S * 1000000000u;
    int bounded = until != 0 && until < give_up;
    if (bounded)
        give_up = until;
    for (;;) {
        ssize_t n = tbx__send_fds(conn, hello, sizeof *hello, fds, nfds, MSG_DONTWAIT);
        if (n != -EAGAIN)
            return n < 0 ? (int)n : 0;
        uint64_t now = tbx__now_ns();
        if (now >= give_up)
            return bounded ? TBX_ETIMEDOUT : -EAGAIN;
        struct pollfd p = {conn, POLLOUT, 0};
        (void)poll(&p, 1, (int)((give_up - now) / 1000000u) + 1);
    }
}

typedef struct pending {
    tbx__call *call;
    uint32_t kind, flags, arg;
    int fds[TBX__HELLO_MAX_FDS];
    int nfds;
    struct pending *next;
} pending;

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cond;
static pthread_once_t start_once = PTHREAD_ONCE_INIT;
static int starting;         /* a start thread runs */
static unsigned starts_done; /* starts finished, to tell one from the next */
static int start_rc;         /* the last one's result */
static pending *pending_head;

static void cond_init(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&start_cond, &ca);
    pthread_condattr_destroy(&ca);
}

/* Closes a kept hand-over.  Not delivered (undelivered: 1), what the call
 * wrote to its control socket (the request) is read away first: a unix
 * socket closed with unread data resets its peer, and the call would see an
 * error instead of the end (or the ERROR message) it is owed.  Delivered,
 * the server reads it through its own copy. */
static void pending_free(pending *p, int undelivered)
{
    char sink[4096];
    while (undelivered && p->nfds > 0 && recv(p->fds[0], sink, sizeof sink, MSG_DONTWAIT) > 0)
        ;
    for (int i = 0; i < p->nfds; i++)
        tbx__close(p->fds[i]);
    free(p);
}

/* Sends what waited for the start (rc 0), or tells each call, as the
 * server would, that nothing was launched and why: an -errno as it is, a
 * server that would not serve (its reason logged) as -ECONNREFUSED. */
static void flush(pending *list, int rc)
{
    while (list != NULL) {
        pending *p = list;
        list = p->next;
        int conn;
        pid_t server;
        int sent = rc == 0 &&
                   tbx__fs_client_send(p->kind, p->flags, p->arg, p->fds, p->nfds, 0, &conn, &server) == 0;
        if (rc != 0) {
            tbx__control m;
            memset(&m, 0, sizeof m);
            m.magic = TBX__CONTROL_MAGIC;
            m.kind = TBX__CTL_ERROR;
            m.code = rc < 0 && rc > -4096 ? rc : -ECONNREFUSED;
            (void)send(p->fds[0], &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        pending_free(p, !sent);
    }
}

static void *start_main(void *arg)
{
    TBX__UNUSED(arg);
    int rc = tbx__fs_client_ensure();
    if (rc != 0)
        tbx__log(TBX_LOG_WARN, "the forkserver could not be started: %s", tbx_strerror(rc));
    for (;;) {
        pthread_mutex_lock(&start_lock);
        pending *list = pending_head;
        pending_head = NULL;
        if (list == NULL) {
            starting = 0;
            starts_done++;
            start_rc = rc;
            pthread_cond_broadcast(&start_cond);
            pthread_mutex_unlock(&start_lock);
            return NULL;
        }
        pthread_mutex_unlock(&start_lock);
        flush(list, rc);
    }
}

/* Starts the start thread unless one runs.  Under start_lock. */
static int start_locked(void)
{
    pthread_t t;
    pthread_attr_t a;
    if (starting)
        return 0;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    int err = pthread_create(&t, &a, start_main, NULL);
    pthread_attr_destroy(&a);
    if (err != 0)
        return -err;
    starting = 1;
    return 0;
}

/* Waits, under start_lock, until the start running now has ended (or until
 * deadline_ns, 0: no limit).  0, or TBX_ETIMEDOUT. */
static int wait_locked(uint64_t deadline_ns)
{
    unsigned gen = starts_done;
    while (starting && starts_done == gen) {
        if (deadline_ns == 0) {
            pthread_cond_wait(&start_cond, &start_lock);
            continue;
        }
        struct timespec ts = {(time_t)(deadline_ns / 1000000000u),
                              (long)(deadline_ns % 1000000000u)};
        if (pthread_cond_timedwait(&start_cond, &start_lock, &ts) == ETIMEDOUT &&
            starts_done == gen)
            return TBX_ETIMEDOUT;
    }
    return 0;
}

void tbx__fs_client_start_idle(void)
{
    pthread_once(&start_once, cond_init);
    pthread_mutex_lock(&start_lock);
    (void)wait_locked(0);
    pthread_mutex_unlock(&start_lock);
}

int tbx__fs_client_start_wait(void)
{
    pthread_once(&start_once, cond_init);
    pthread_mutex_lock(&start_lock);
    int rc = start_locked();
    if (rc == 0) {
        (void)wait_locked(0);
        rc = start_rc;
    }
    pthread_mutex_unlock(&start_lock);
    return rc;
}

void tbx__fs_client_start_forget(void)
{
    /* A fork child: the start thread is not here, and what waited for it
     * is the parent's calls'. */
    pthread_mutex_init(&start_lock, NULL);
    cond_init();
    starting = 0;
    while (pending_head != NULL) {
        pending *p = pending_head;
        pending_head = p->next;
        pending_free(p, 0); /* the parent's calls: not ours to read */
    }
}

/* Keeps an async call's hand-over for the start under way.  Under
 * start_lock. */
static int keep_locked(tbx__call *call, uint32_t kind, uint32_t flags, uint32_t arg,
                       const int *fds, int nfds)
{
    pending *p = calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->call = call;
    p->kind = kind;
    p->flags = flags;
    p->arg = arg;
    for (; p->nfds < nfds; p->nfds++) {
        /* The launcher closes its copies once it is handed over. */
        p->fds[p->nfds] = fcntl(fds[p->nfds], F_DUPFD_CLOEXEC, 0);
        if (p->fds[p->nfds] < 0) {
            int rc = -errno;
            pending_free(p, 0);
            return rc;
        }
    }
    pending **at = &pending_head;
    while (*at != NULL)
        at = &(*at)->next;
    *at = p;
    return 0;
}

int tbx__fs_client_withdraw(tbx__call *call)
{
    pthread_once(&start_once, cond_init);
    pthread_mutex_lock(&start_lock);
    pending *p = NULL;
    for (pending **at = &pending_head; *at != NULL; at = &(*at)->next) {
        if ((*at)->call == call) {
            p = *at;
            *at = p->next;
            break;
        }
    }
    pthread_mutex_unlock(&start_lock);
    if (p != NULL)
        pending_free(p, 1);
    return p != NULL;
}

/* A start is needed or under way: a blocking call waits for it, until its
 * deadline; an async call's hand-over waits in its stead (1: kept). */
static int await_start(tbx__call *call, uint32_t kind, uint32_t flags, uint32_t arg,
                       const int *fds, int nfds,
                       uint64_t until)
{
    int async = call != NULL && call->req != NULL; /* the async front door */
    pthread_mutex_lock(&start_lock);
    int rc = start_locked();
    if (rc == 0 && async) {
        rc = keep_locked(call, kind, flags, arg, fds, nfds);
        pthread_mutex_unlock(&start_lock);
        return rc == 0 ? 1 : rc;
    }
    if (rc == 0)
        rc = wait_locked(until);
    if (rc == 0)
        rc = start_rc;
    pthread_mutex_unlock(&start_lock);
    return rc;
}

/* Hands a call's fds to the server (see forkserver.h and wire.h for which,
 * by kind and flags), starting it if none runs, and restarting it once if it
 * died; never past call's deadline.  call NULL (a warm child ordered): only
 * to a server that serves now, -ENOTCONN otherwise. */
int tbx__fs_client_hand_over(tbx__call *call, uint32_t kind, uint32_t flags, uint32_t arg,
                             const int *fds, int nfds)
{
    uint64_t until = call != NULL && call->opts.timeout_s > 0 ? call->deadline.when_ns : 0;
    pthread_once(&start_once, cond_init);
    for (int attempt = 0;;) {
        pthread_mutex_lock(&start_lock);
        int busy = starting;
        pthread_mutex_unlock(&start_lock);
        int conn = -1, rc;
        pid_t server = 0;
        rc = busy ? -ENOTCONN
                  : tbx__fs_client_send(kind, flags, arg, fds, nfds, until, &conn, &server);
        /* Without a call (a warm child ordered, maybe on a loop's thread)
         * nothing waits for a server: the pool is topped up again after
         * the next call. */
        if (rc == -ENOTCONN && conn < 0 && call == NULL)
            return rc;
        if (rc == -ENOTCONN && conn < 0) {
            rc = await_start(call, kind, flags, arg, fds, nfds, until);
            if (rc != 0)
                return rc == 1 ? 0 : rc;
            continue;
        }
        if (rc != -EPIPE && rc != -ECONNRESET && rc != -ENOTCONN)
            return rc;
        if (attempt++ == 1)
            return rc;
        /* The server died: reap it (if ours) and start, or find, another. */
        tbx__log(TBX_LOG_WARN, "the forkserver (pid %d) is gone: starting or finding another",
                 (int)server);
        tbx__fs_client_drop(conn);
    }
}
