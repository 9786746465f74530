/*
 * The launcher parts for a child that is our own (fork, spawn): we reap it.
 * Its end is learned through its pidfd, or by polling waitpid on a kernel
 * without one; signals go to its process group, which it leads, and the
 * backtrace signal to its first thread, the one that runs fn.
 */
#include "engine.h"

#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The child has exited (or may have): reap it, after killing its group. */
static void check_exit(tbx__call *c)
{
    int wstatus;
    if (c->reaped || c->finishing)
        return;
    int state = tbx__child_state(c->child.pid, c->child.pidfd);
    if (state == 0)
        return; /* still running: a spurious wake-up, or the poll timer */
    /* The group may hold grandchildren; nothing of the call outlives it.  The
     * unreaped zombie keeps the group id from being reused meanwhile.  A
     * child someone else reaped (ECHILD) held nothing: its group id may be a
     * stranger's now, and is left alone. */
    if (state == 1)
        (void)kill(-c->child.pid, SIGKILL);
    struct rusage ru;
    int r = state == 1 ? tbx__reap_usage(c->child.pid, &wstatus, 1, &ru) : -ECHILD;
    if (r == 0)
        return; /* not yet: a spurious wake-up */
    if (r < 0) {
        /* ECHILD: someone else reaped our child (a waitpid(-1) in the
         * host).  It is gone; its status is lost. */
        tbx__call_log(c, TBX_LOG_WARN, "child %d was reaped by someone else (a waitpid(-1) in "
                                       "the program?): its exit status is lost",
                      (int)c->child.pid);
        wstatus = -1;
    } else {
        tbx__call_cost(c, &ru);
    }
    tbx__engine_child_ended(c, wstatus, 1);
}

static void exit_cb(uv_poll_t *h, int status, int events)
{
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    check_exit(h->data);
}

static void exit_timer_cb(uv_timer_t *t)
{
    check_exit(t->data);
}

int tbx__own_watch(tbx__call *c, uv_handle_t **h)
{
    int rc;
    if (c->child.pidfd >= 0) {
        rc = tbx__engine_watch_fd(c, &c->exit_poll, c->child.pidfd, h);
        return rc != 0 ? rc : uv_poll_start(&c->exit_poll, UV_READABLE, exit_cb);
    }
    /* No pidfd (an old kernel): waitpid, polled every millisecond. */
    rc = uv_timer_init(c->loop, &c->exit_timer);
    if (rc != 0)
        return rc;
    c->exit_timer.data = c;
    *h = (uv_handle_t *)&c->exit_timer;
    c->open_handles++;
    return uv_timer_start(&c->exit_timer, exit_timer_cb, 1, 1);
}

int tbx__own_exited(tbx__call *c)
{
    if (c->child.pidfd >= 0)
        return tbx__pidfd_exited(c->child.pidfd);
    if (c->child.pid <= 0)
        return 0;
    return tbx__child_state(c->child.pid, -1) != 0;
}

/* Signals the child's whole process group, and the child itself if it has
 * left the group.  Only called before the child is reaped. */
void tbx__own_signal(tbx__call *c, int sig)
{
    pid_t pid = c->child.pid;
    int group_ok = kill(-pid, sig) == 0;
    if (!group_ok || getpgid(pid) != pid) {
        if (c->child.pidfd >= 0)
            (void)tbx__pidfd_send_signal(c->child.pidfd, sig);
        else
            (void)kill(pid, sig);
    }
}

/* From outside if ptrace lets us; else the child's handler is asked, by a
 * signal to the thread that runs fn.  A fresh program has its handler from
 * before its START; one that has not said START yet would only be killed by
 * the signal. */
int tbx__own_backtrace(tbx__call *c)
{
    if (c->child.pid > 0 && tbx__call_trace(c, c->child.pid) == 0)
        return 1;
    if (c->child.worker && !c->started)
        return -1;
    c->backtrace_source = TBX_BACKTRACE_HANDLER;
    if (c->child.pid > 0)
        (void)syscall(SYS_tgkill, c->child.pid, c->child.pid, TBX__BACKTRACE_SIGNAL);
    else if (c->child.pidfd >= 0)
        (void)tbx__pidfd_send_signal(c->child.pidfd, TBX__BACKTRACE_SIGNAL);
    return 0;
}

/* The child waits in its crash handler: traced, then sent its signal
 * again, to die of it. */
void tbx__own_crashed(tbx__call *c, int sig)
{
    if (c->child.pid <= 0)
        return;
    (void)tbx__call_trace(c, c->child.pid);
    if (c->child.pidfd >= 0)
        (void)tbx__pidfd_send_signal(c->child.pidfd, sig);
    else
        (void)kill(c->child.pid, sig);
}

void tbx__own_abandon(tbx__call *c)
{
    tbx__kill_reap(c->child.pid);
}
