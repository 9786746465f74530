/*
 * The fork method: the child is a copy of the caller, and runs fn by pointer
 * on arguments the parent already unpacked.
 *
 * All signals are blocked across the fork so that no handler of the caller's
 * runs in the child before the child has reset them (as libuv does).  Both
 * sides call setpgid, so the group exists whichever runs first, and the
 * deadline can kill it as soon as launch returns.
 */
#include "child.h"
#include "engine.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Output the caller buffered but did not write would be written twice, once
 * by each process: flush it first, as CPython's multiprocessing does. */
static void flush_caller_stdio(void)
{
    if (__fpending(stdout) != 0)
        fflush(stdout);
    if (__fpending(stderr) != 0)
        fflush(stderr);
}

/* What the child needs of the call, prepared here: the child allocates
 * nothing and reads only this. */
static void fill_spec(const tbx__call *c, tbx__child_spec *spec, int result_fd, int bulk,
                      const sigset_t *old)
{
    memset(spec, 0, sizeof *spec);
    spec->fn = c->fn;
    spec->args = &c->args;
    spec->ctx = c->opts.ctx;
    spec->result_fd = result_fd;
    spec->reset_signals = c->opts.reset_signals;
    spec->soft_deadline = !c->opts.hard_timeout;
    spec->send_start = spec->soft_deadline;
    spec->timeout_s = c->opts.timeout_s;
    spec->deadline_ns = c->opts.hard_timeout && c->opts.timeout_s > 0
                           ? c->deadline.when_ns
                           : 0;
    spec->max_result = c->opts.max_result;
    spec->parent_mask = old;
    spec->parent_pid = getpid();
    spec->limit_memory = c->opts.limit_memory;
    spec->limit_cpu_s = tbx__cpu_seconds(c->opts.limit_cpu_s);
    spec->limit_files = c->opts.limit_files;
    spec->allow_core = c->opts.allow_core;
    spec->stdout_fd = c->capture[0].child_fd;
    spec->stderr_fd = c->capture[1].child_fd;
    spec->backtrace_fd = c->capture[TBX__BACKTRACE].child_fd;
    spec->label = c->opts.label;
    spec->crash_trace = c->opts.backtrace_on_crash;
    spec->bulk_fd = bulk;
}

static int fork_launch(tbx__call *c, tbx__child *child)
{
    int fds[2], rc;
    sigset_t all, old;
    tbx__child_spec spec;

    /* A socket, not a pipe, for the result: it costs the same two
     * descriptors, and the child can send a big result's memfd with its
     * header, so that no call holds a memfd it may never need. */
    if (tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
        return -errno;
    int bulk = c->opts.max_result >= TBX__BIG_PAYLOAD ? TBX__BULK_MAKE : -1;
    fill_spec(c, &spec, fds[1], bulk, &old);
    /* A cgroup of the call's own, where one can be had: the child joins it
     * first thing.  clone3(CLONE_INTO_CGROUP) would join at birth, but a raw
     * clone3 skips glibc's fork handling (its malloc locks, the atfork
     * handlers of libuv, timebox and the host), which a fork child that runs
     * the caller's code needs. */
    c->containment = TBX_CONTAIN_PGROUP;
    if (c->opts.contain && tbx__cgroup_take(&c->cgroup) == 0)
        c->containment = TBX_CONTAIN_CGROUP;
    spec.cgroup_fd = c->cgroup.procs_fd;

    flush_caller_stdio();
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = tbx__sys.fork();
    if (pid == 0)
        tbx__child_main(&spec);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    tbx__close(fds[1]);
    tbx__close(c->cgroup.procs_fd); /* the child's to write to */
    c->cgroup.procs_fd = -1;
    if (pid < 0) {
        tbx__close(fds[0]);
        tbx__cgroup_give(&c->cgroup, 1);
        return -err;
    }
    (void)setpgid(pid, pid);

    child->pid = pid;
    child->result_fd = fds[0];
    child->result_sock = 1;
    child->pidfd = tbx__pidfd_open(pid);
    if (child->pidfd == -ENOSYS || child->pidfd == -ESRCH) {
        /* An old kernel; or a host's waitpid(-1) reaped a quick child
         * already, whose result is in the pipe all the same: the engine
         * polls instead, and finds it gone. */
        child->pidfd = -1;
    } else if (child->pidfd < 0) {
        /* EMFILE and friends: nothing may be left half-open or running. */
        rc = child->pidfd;
        tbx__kill_reap(pid);
        tbx__cgroup_end(&c->cgroup);
        tbx__close(fds[0]);
        return rc;
    }
    return 0;
}

const tbx__launcher tbx__launch_fork = {
    .name = "fork",
    .accepts = TBX__ACCEPTS_CTX | TBX__ACCEPTS_UNREGISTERED | TBX__ACCEPTS_STREAMS,
    .prepare = tbx__engine_unpack_args, /* the child reads them in memory */
    .launch = fork_launch,
    TBX__OWN_CHILD,
};
