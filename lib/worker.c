/*
 * The worker side of spawn: a fresh program that timebox started, reading its
 * one request (request_recv.c) from fd 3 and writing its result to fd 4.  The request comes
 * from our own parent, but it is still bytes from another process: every
 * length is checked before anything is allocated for it.
 */
#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define WORKER_VAR "TIMEBOX_WORKER"


__attribute__((noreturn, format(printf, 3, 4)))
static void refuse(int res_fd, int code, const char *fmt, ...)
{
    char msg[TBX__MAX_MESSAGE + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        msg[0] = '\0';
    tbx__frame_header h;
    struct iovec iov[2];
    (void)tbx__writev_all(res_fd, iov, tbx__frame_error(&h, iov, code, msg));
    _exit(125);
}





/* The parent a spawned worker dies with: its caller.  A caller that died
 * while the worker was still starting, before it could ask for a signal on
 * its parent's death, is gone from the process table, and the worker ends
 * here (its new parent, the reaper, is no caller).  A parent that is not the
 * caller while the caller lives is a wrapper the caller ran (a shell
 * script): the worker dies with it. */
static pid_t worker_parent(pid_t caller)
{
    pid_t parent = getppid();
    if (caller > 0 && parent != caller && kill(caller, 0) != 0 && errno == ESRCH)
        _exit(127);
    return parent;
}

void tbx__worker_serve(pid_t parent_pid, int req_fd, int res_fd, int backtrace_fd, int bulk_fd,
                       int signals_clean)
{
    tbx__request rq;
    tbx__child_spec spec;
    char why[TBX__MAX_MESSAGE + 1];

    tbx__request_init(&rq);
    rq.alone = 1; /* the caller sends nothing more on req_fd */
    int rc = tbx__request_read(&rq, req_fd, 0, "the worker", why, sizeof why);
    if (rc == 0 || rc == -1)
        refuse(res_fd, TBX_EPROTO, "the worker's request was cut short");
    if (rc < 0)
        refuse(res_fd, rc, "%s", why);
    tbx__close(req_fd);
    rc = tbx__request_resolve(&rq, why, sizeof why);
    if (rc != 0)
        refuse(res_fd, rc, "%s", why);
    tbx__request_spec(&rq, res_fd, &spec);
    spec.parent_pid = parent_pid;
    if (signals_clean)
        spec.reset_signals = 0; /* the forkserver already put them back */
    else
        spec.send_start = 1; /* a spawned program: its START says tbx_init ran */
    if (rq.h.flags & TBX__REQ_BACKTRACE)
        spec.backtrace_fd = backtrace_fd;
    spec.bulk_fd = bulk_fd;
    tbx__child_main(&spec);
}

static int unserved;
static pthread_once_t unserved_once = PTHREAD_ONCE_INIT;

static void unserved_init(void)
{
    unserved = getenv(WORKER_VAR) != NULL;
}

int tbx__worker_unserved(void)
{
    pthread_once(&unserved_once, unserved_init);
    return unserved;
}

void tbx__worker_maybe_serve(void)
{
    const char *v = getenv(WORKER_VAR);
    int req_fd, res_fd, backtrace_fd, bulk_fd, caller = 0;
    char tail;
    /* request,result,backtrace,bulk: fds, -1 for one that did not come;
     * then the caller's pid */
    int n = v == NULL ? 0
                      : sscanf(v, "%d,%d,%d,%d,%d%c", &req_fd, &res_fd, &backtrace_fd,
                               &bulk_fd, &caller, &tail);
    if (n != 4 && n != 5)
        return;
    /* Whom to die with, asked first: the caller may already be gone. */
    pid_t parent = worker_parent(caller);
    /* Gone before fn runs: the function's own children are not workers. */
    unsetenv(WORKER_VAR);
    pthread_once(&unserved_once, unserved_init);
    /* Inherited across our exec on purpose, but not across fn's: a program
     * fn runs gets none of them. */
    int fds[4] = {req_fd, res_fd, backtrace_fd, bulk_fd};
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0)
            (void)fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    tbx__worker_serve(parent, req_fd, res_fd, backtrace_fd, bulk_fd, 0);
}
