/*
 * The forkserver's children: forked from the server, each call's, with only
 * the call's descriptors kept; watched through a pidfd, and killed at the
 * call's deadline plus grace as a backstop.  Runs in the server process, and
 * (start_child after fork) in the child, which has one thread.
 */
#include "forkserver/server.h"

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
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------- the child */

/* The call's child is reaped: what it left behind goes before the caller
 * hears EXITED.  With a cgroup, all of it; as a subreaper, the orphans we
 * inherited (the live ones only if no other call runs: an orphan cannot
 * say whose it is). */
static void end_containment(fs_call *c)
{
    tbx__cgroup_end(&c->cgroup);
    if (!c->srv->subreaper)
        return;
    pid_t running[64];
    int n = 0;
    for (fs_call *o = c->srv->calls; o != NULL; o = o->next)
        if (o->running && !o->reaped && n < 64)
            running[n++] = o->pid;
    tbx__fs_server_reap_orphans(running, n);
}

static void exit_cb(uv_poll_t *h, int status, int events)
{
    fs_call *c = h->data;
    int wstatus;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    if (c->reaped)
        return;
    (void)kill(-c->pid, SIGKILL); /* before the reap: the group id is held */
    struct rusage ru;
    if (tbx__reap_usage(c->pid, &wstatus, 1, &ru) == 0)
        return;
    c->reaped = 1;
    c->srv->children--;
    if (c->client != NULL)
        c->client->children--;
    end_containment(c);
    /* LAUNCHED, if not sent at the fork, goes with EXITED: one message,
     * one wake-up of the caller for both. */
    tbx__control m[2] = {
        {TBX__CONTROL_MAGIC, TBX__CTL_LAUNCHED, (int32_t)c->pid, c->contain, 0, 0, 0},
        {TBX__CONTROL_MAGIC, TBX__CTL_EXITED, (int32_t)c->pid, wstatus,
         (uint64_t)ru.ru_utime.tv_sec * 1000000 + (uint64_t)ru.ru_utime.tv_usec,
         (uint64_t)ru.ru_stime.tv_sec * 1000000 + (uint64_t)ru.ru_stime.tv_usec,
         (uint64_t)ru.ru_maxrss}};
    int first = c->announced ? 1 : 0;
    (void)tbx__send_fds(c->control_fd, &m[first], sizeof m - (size_t)first * sizeof m[0], NULL,
                        0, MSG_DONTWAIT);
    tbx__fs_server_call_close(c);
}

void tbx__fs_server_backstop_cb(tbx__deadline *d)
{
    fs_call *c = (fs_call *)((char *)d - offsetof(fs_call, deadline));
    if (!c->running) {
        tbx__fs_server_refuse(c, TBX_EPROTO, "the forkserver did not receive the whole request in time");
        return;
    }
    if (!c->reaped)
        (void)kill(-c->pid, SIGKILL);
}

/* Closes the fds a call brought for its child (the child has its copies,
 * or there will be no child). */
void tbx__fs_server_close_child_ends(fs_call *c)
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
void tbx__fs_server_note_static_fds(fs_server *srv)
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
    /* The listening socket and the creator's connection are not stepped
     * over: the ranges closed them. */
    return tbx__close_range(from, ~0u) != 0 ? -1 : 0;
}

/* In the child (its setup's close_inherited step): every descriptor of the
 * server's clients and other calls, so that it keeps nothing of the
 * server's but its own call's. */
static void close_inherited(void *arg)
{
    fs_call *c = arg;
    fs_server *srv = c->srv;
    int keep[5] = {c->result_fd, c->request_fd, c->backtrace_fd, c->bulk_fd,
                   c->cgroup.procs_fd};
    if (close_dynamic_fds(srv, keep, 5) == 0)
        return;
    tbx__close(srv->listen_fd);
    for (fs_client *k = srv->clients; k != NULL; k = k->next)
        tbx__close(k->fd);
    for (fs_call *o = srv->calls; o != NULL; o = o->next) {
        tbx__close(o->control_fd);
        if (o != c)
            tbx__fs_server_close_child_ends(o);
        tbx__close(o->rq.args_fd);
        tbx__close(o->rq.out_fd); /* a malformed request's, not yet refused */
        tbx__close(o->rq.err_fd);
        tbx__close(o->pidfd);
    }
}

/* What the server adds to a child's setup.  The server's own dispositions
 * are not the caller's: they go back to default, which also makes every
 * reset_signals request already met, at the cost of the few the server
 * changed rather than all 62. */
static void server_steps(tbx__child_spec *spec, fs_call *c, const sigset_t *mask, pid_t server)
{
    spec->parent_pid = server; /* taken before the fork: it may be gone */
    spec->default_signals = &c->srv->handled;
    spec->reset_signals = 0;
    spec->parent_mask = mask; /* the server's, not the blocked one */
    spec->stdout_fd = c->out_fd;
    spec->stderr_fd = c->out_fd >= 0 ? c->err_fd : -1;
    spec->close_inherited = close_inherited;
    spec->close_arg = c;
    spec->cgroup_fd = c->cgroup.procs_fd;
}

/* The child: it keeps nothing of the server's but its call's descriptors. */
__attribute__((noreturn)) static void run_child(fs_call *c, const sigset_t *mask, pid_t server)
{
    tbx__child_spec spec;
    if (c->request_fd >= 0) { /* warm, pool: the requests come from the caller */
        memset(&spec, 0, sizeof spec);
        server_steps(&spec, c, mask, server);
        spec.backtrace_fd = spec.bulk_fd = -1;
        tbx__child_setup(&spec);
        if (c->pool)
            tbx__pool_serve(c->request_fd, c->result_fd, c->pool_calls);
        tbx__worker_serve(server, c->request_fd, c->result_fd, -1, c->bulk_fd, 1);
    }
    tbx__request_spec(&c->rq, c->result_fd, &spec);
    server_steps(&spec, c, mask, server);
    spec.backtrace_fd = c->backtrace_fd;
    spec.bulk_fd = c->make_bulk ? TBX__BULK_MAKE : c->bulk_fd;
    tbx__child_main(&spec);
}

/* The backstop: the caller's own engine acts at the deadline; this catches
 * a caller that cannot.  (A warm child's deadline is not known here: its
 * caller's engine alone enforces it, and its going away.) */
static void arm_backstop(fs_call *c)
{
    uint64_t grace = c->rq.h.grace_ns, at = 0;
    if (c->rq.h.deadline_ns != 0)
        at = c->rq.h.deadline_ns;
    else if (c->rq.h.timeout_ns != 0)
        /* A soft deadline counts from fn's start, which the server does not
         * see; the start itself is bounded by the same timeout from the
         * call, which came before this fork.  So the caller's deadline is
         * at most two timeouts from now: the backstop never comes first. */
        at = tbx__now_ns() + 2 * c->rq.h.timeout_ns;
    if (at != 0)
        (void)tbx__deadline_start(&c->deadline, &c->srv->loop, at + grace + BACKSTOP_SLACK_NS);
    else
        tbx__deadline_stop(&c->deadline);
}

/* 1 (and why) if the server, or the call's client, runs as many children
 * as it may. */
static int at_limit(const fs_call *c, char *why, size_t why_len)
{
    const fs_server *srv = c->srv;
    unsigned per_client = srv->cfg->max_per_client;
    if (srv->children >= srv->max_children)
        snprintf(why, why_len, "the forkserver already runs its maximum of %u children",
                 srv->max_children);
    else if (per_client != 0 && c->client != NULL && c->client->children >= per_client)
        snprintf(why, why_len, "this client already runs its maximum of %u children",
                 per_client);
    else
        return 0;
    return 1;
}

/* Forks the call's child (its request resolved, or warm: none yet); the
 * caller hears LAUNCHED now or with EXITED. */
void tbx__fs_server_start_child(fs_call *c)
{
    fs_server *srv = c->srv;
    char why[TBX__MAX_MESSAGE + 1];
    sigset_t all, old;
    int rc;
    if (at_limit(c, why, sizeof why))
        return tbx__fs_server_refuse(c, -EAGAIN, why);
    /* A warm child's request is not known yet: it is contained. */
    int kind = srv->subreaper ? TBX_CONTAIN_SUBREAPER : TBX_CONTAIN_PGROUP;
    if ((c->request_fd >= 0 || !(c->rq.h.flags & TBX__REQ_NO_CONTAIN)) &&
        tbx__cgroup_take(&c->cgroup) == 0)
        kind = TBX_CONTAIN_CGROUP;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t server = getpid(), pid = tbx__sys.fork();
    if (pid == 0)
        run_child(c, &old, server);
    int err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    tbx__close(c->cgroup.procs_fd); /* the child's to write to */
    c->cgroup.procs_fd = -1;
    if (pid < 0) {
        tbx__cgroup_give(&c->cgroup, 1);
        snprintf(why, sizeof why, "the forkserver could not fork: %s", tbx_strerror(-err));
        return tbx__fs_server_refuse(c, -err, why);
    }
    (void)setpgid(pid, pid);
    c->pid = pid;
    c->running = 1;
    srv->children++;
    if (c->client != NULL)
        c->client->children++;
    /* LAUNCHED now, with a pidfd, only where the caller needs the child
     * while it runs: a warm or pooled child (its calls come later), or a
     * call that may ask for a trace (older clients ask only once they know
     * the pid).  For the others it goes with EXITED: the caller is not
     * woken for it, and holds no pidfd while the call runs; its signals
     * go through us (KILL), and if we are gone, PDEATHSIG ends the child. */
    int announce = c->request_fd >= 0 ||
                   (c->rq.h.flags & (TBX__REQ_BACKTRACE | TBX__REQ_CRASH_TRACE)) != 0;
    tbx__request_free(&c->rq); /* the child has its copy */
    /* The backtrace pipe stays: a trace the server takes goes down it. */
    int backtrace_fd = c->backtrace_fd;
    c->backtrace_fd = -1;
    tbx__fs_server_close_child_ends(c);
    c->backtrace_fd = backtrace_fd;
    c->pidfd = tbx__pidfd_open(pid);
    rc = c->pidfd < 0 ? c->pidfd : uv_poll_init(&srv->loop, &c->exit_poll, c->pidfd);
    if (rc != 0) {
        tbx__kill_reap(pid);
        c->reaped = 1;
        srv->children--;
        if (c->client != NULL)
            c->client->children--;
        end_containment(c);
        tbx__fs_server_send_control(c, TBX__CTL_ERROR, rc, -1);
        return tbx__fs_server_call_close(c);
    }
    c->exit_poll.data = c;
    c->handles++;
    uv_poll_start(&c->exit_poll, UV_READABLE, exit_cb);
    c->contain = kind;
    if (announce) {
        tbx__fs_server_send_control(c, TBX__CTL_LAUNCHED, kind, c->pidfd);
        c->announced = 1;
    }

    arm_backstop(c);
}

void tbx__fs_server_launch(fs_call *c)
{
    char why[TBX__MAX_MESSAGE + 1];
    int rc = tbx__request_resolve(&c->rq, why, sizeof why);
    if (rc != 0)
        return tbx__fs_server_refuse(c, rc, why);
    /* A client that sent no memfd for a big result gets one from the child,
     * with the result's header, if its result descriptor is a socket (an
     * older client's pipe carries a result as bytes, whatever its size). */
    struct stat st;
    c->make_bulk = c->bulk_fd < 0 && c->rq.h.max_result >= TBX__BIG_PAYLOAD &&
                   fstat(c->result_fd, &st) == 0 && S_ISSOCK(st.st_mode);
    tbx__fs_server_start_child(c);
}
