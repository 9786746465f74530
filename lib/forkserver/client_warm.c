/*
 * Warm children, in the caller: calls' slots ordered from the forkserver
 * ahead of time, each with a child of the server's already waiting for its
 * request.  A call takes one (launch_forkserver.c), and orders its
 * replacement once it has returned.  The pool belongs to the connection
 * (client.c): it is dropped with it.
 */
#include "forkserver/client.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>

typedef struct warm_slot {
    int control, request, result, bulk;
    struct warm_slot *next;
} warm_slot;

static pthread_mutex_t warm_lock = PTHREAD_MUTEX_INITIALIZER;
static warm_slot *warm_pool;
static unsigned warm_count;
static atomic_uint warm_target; /* read by every launch, set by a start */

static void warm_free(warm_slot *w)
{
    tbx__close(w->control);
    tbx__close(w->request);
    tbx__close(w->result);
    tbx__close(w->bulk);
    free(w);
}

static void warm_drop(void)
{
    while (warm_pool != NULL) {
        warm_slot *w = warm_pool;
        warm_pool = w->next;
        warm_free(w);
    }
    warm_count = 0;
}

void tbx__fs_client_warm_drop(void)
{
    pthread_mutex_lock(&warm_lock);
    warm_drop();
    pthread_mutex_unlock(&warm_lock);
}

void tbx__fs_client_warm_forget(void)
{
    /* Another thread may have held the lock at the fork. */
    pthread_mutex_init(&warm_lock, NULL);
    warm_drop();
}

void tbx__fs_client_warm_set(unsigned target)
{
    atomic_store(&warm_target, target);
}

/* Orders one warm slot: its child is forked by the server meanwhile. */
static int warm_add(void)
{
    int ctl[2] = {-1, -1}, req[2] = {-1, -1}, res[2] = {-1, -1}, rc = 0;
    warm_slot *w = malloc(sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    /* The call that takes it is not known yet: its memfd is made anyway. */
    int bulk = tbx__bulk_create(UINT64_MAX);
    if (tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0 ||
        tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, req) != 0)
        rc = -errno;
    if (rc == 0)
        rc = tbx__pipe(res, 0);
    if (rc == 0) {
        int fds[4] = {ctl[1], res[1], req[1], bulk};
        rc = tbx__fs_client_hand_over(NULL, TBX__HELLO_WARM, bulk >= 0 ? TBX__HELLO_BULK : 0, 0,
                                      fds, bulk >= 0 ? 4 : 3);
    }
    tbx__close(ctl[1]);
    tbx__close(req[1]);
    tbx__close(res[1]);
    if (rc != 0) {
        tbx__close(ctl[0]);
        tbx__close(req[0]);
        tbx__close(res[0]);
        tbx__close(bulk);
        free(w);
        return rc;
    }
    w->control = ctl[0];
    w->bulk = bulk;
    w->request = req[0];
    w->result = res[0];
    pthread_mutex_lock(&warm_lock);
    w->next = warm_pool;
    warm_pool = w;
    warm_count++;
    pthread_mutex_unlock(&warm_lock);
    return 0;
}

/* Tops the pool up to its target; a failure leaves it short, and the calls
 * go the ordinary way. */
void tbx__fs_client_warm_fill(void)
{
    for (;;) {
        pthread_mutex_lock(&warm_lock);
        int short_of = warm_count < atomic_load(&warm_target);
        pthread_mutex_unlock(&warm_lock);
        if (!short_of || warm_add() != 0)
            return;
    }
}

/* Whether the server that made w has let go of its control socket: it
 * died (or was stopped) since.  The request has not gone out, so a call
 * that finds its slot stale can go cold instead, fn run at most once. */
static int warm_stale(const warm_slot *w, int server_alive)
{
    if (!server_alive)
        return 1;
    struct pollfd p = {w->control, POLLRDHUP, 0};
    int r;
    do
        r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    return r != 0 && (r < 0 || (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0);
}

/* A live slot, or NULL; stale ones are discarded on the way (closing our
 * ends makes an orphaned warm child read EOF and exit). */
static warm_slot *warm_take(void)
{
    /* The server's end of the connection closes as it dies; what it held
     * of a slot's sockets (a hand-over not yet read) may close later. */
    int alive = tbx__fs_client_alive();
    for (;;) {
        pthread_mutex_lock(&warm_lock);
        warm_slot *w = warm_pool;
        if (w != NULL) {
            warm_pool = w->next;
            warm_count--;
        }
        pthread_mutex_unlock(&warm_lock);
        if (w == NULL || !warm_stale(w, alive))
            return w;
        tbx__log(TBX_LOG_INFO, "a warm child's forkserver is gone: the slot is discarded");
        warm_free(w);
    }
}

int tbx__fs_client_take_warm(tbx__child *child)
{
    warm_slot *w = atomic_load(&warm_target) > 0 ? warm_take() : NULL;
    if (w == NULL)
        return 0;
    child->pid = 0;
    child->pidfd = -1;
    child->result_fd = w->result;
    child->control_fd = w->control;
    child->request_fd = w->request;
    child->bulk_fd = w->bulk;
    child->worker = 1;
    child->warm = 1;
    free(w);
    return 1;
}

