/*
 * Setting up a child, for every start method: the one routine that makes a
 * process fit to run a call, used by fork children (launch_fork.c via
 * tbx__child_main), spawned workers (worker.c) and the forkserver's children
 * (server_child.c), in this order:
 *   1. its own process group, and death with its parent (PR_SET_PDEATHSIG,
 *      then a check that the parent is still the one it was);
 *   2. signals: dispositions back to default, the mask restored;
 *   3. the parent's timebox state forgotten (tbx__forget_call_parent);
 *   4. descriptors: captured output placed on 1 and 2 (dup2), then whatever
 *      the forking process knows the child must not keep closed
 *      (close_inherited: the server's close_range of its clients' and
 *      calls' descriptors);
 *   5. resource limits (setrlimit);
 *   6. containment: the call's cgroup joined (cgroup.c), before any of
 *      the caller's code runs (a child that cannot join says why on its
 *      result pipe and exits: a call must not run outside what will be
 *      killed when it ends);
 *   7. backtraces, when the call asks for one: its owner (the parent) named
 *      as the process that may ptrace it (PR_SET_PTRACER, for Yama), and
 *      the handler, for where ptrace is refused; with backtrace_on_crash, the
 *      crash handler, which only reports the signal and waits for its owner
 *      to trace the child and let it die.
 *
 * ======================== CHILD SIDE ========================
 * This runs in a child after fork (never between vfork and exec: a spawned
 * worker runs it after its exec).  The child has one thread; timebox's part
 * takes no lock and calls no malloc: only system calls and async-signal-safe
 * libc (sigaction, dup2, setrlimit, prctl, backtrace once warmed up).  A step
 * added here keeps to that.
 * =============================================================
 */
#include "cgroup.h"
#include "child.h"

#include <errno.h>
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

static void reset_signals(const tbx__child_spec *spec)
{
    sigset_t empty;
    /* Dispositions the process that forked us set for itself (the server's
     * libuv SIGTERM handler would write to the server's signal pipe). */
    if (spec->default_signals != NULL) {
        for (int sig = 1; sig < NSIG; sig++)
            if (sigismember(spec->default_signals, sig) == 1)
                (void)signal(sig, SIG_DFL);
    }
    if (spec->reset_signals) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; sig++) {
            /* SIGKILL and SIGSTOP cannot change; 32 and 33 are glibc's. */
            if (sig == SIGKILL || sig == SIGSTOP || (sig >= 32 && sig < SIGRTMIN))
                continue;
            (void)sigaction(sig, &sa, NULL);
        }
        sigemptyset(&empty);
        (void)sigprocmask(SIG_SETMASK, &empty, NULL);
    } else if (spec->parent_mask != NULL) {
        (void)sigprocmask(SIG_SETMASK, spec->parent_mask, NULL);
    }
}

/* Captured output: the pipes become fds 1 and 2. */
static void place_output(const tbx__child_spec *spec)
{
    if (spec->stdout_fd >= 0 && spec->stdout_fd != 1) {
        (void)dup2(spec->stdout_fd, 1);
        (void)close(spec->stdout_fd);
    }
    if (spec->stderr_fd >= 0 && spec->stderr_fd != 2) {
        (void)dup2(spec->stderr_fd, 2);
        (void)close(spec->stderr_fd);
    }
}

/* The call's resource limits, before any of the caller's code runs here.
 * CPU: SIGXCPU at the limit, SIGKILL a second later (the hard limit). */
void tbx__child_apply_limits(const tbx__child_spec *spec)
{
    struct rlimit rl;
    if (!spec->allow_core) {
        rl.rlim_cur = rl.rlim_max = 0;
        (void)setrlimit(RLIMIT_CORE, &rl);
    }
    if (spec->limit_memory != 0) {
        rl.rlim_cur = rl.rlim_max = (rlim_t)spec->limit_memory;
        (void)setrlimit(RLIMIT_AS, &rl);
    }
    if (spec->limit_cpu_s != 0) {
        rl.rlim_cur = spec->limit_cpu_s;
        rl.rlim_max = (rlim_t)spec->limit_cpu_s + 1;
        (void)setrlimit(RLIMIT_CPU, &rl);
    }
    if (spec->limit_files != 0) {
        rl.rlim_cur = rl.rlim_max = spec->limit_files;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void join_cgroup(const tbx__child_spec *spec)
{
    tbx__frame_header h;
    struct iovec iov[2];
    if (spec->cgroup_fd < 0)
        return;
    int rc = tbx__cgroup_join(spec->cgroup_fd);
    if (rc == 0)
        return;
    (void)tbx__writev_all(spec->result_fd, iov,
                          tbx__frame_error(&h, iov, rc, "the child could not join its call's "
                                                        "cgroup"));
    _exit(126);
}

/* The backtrace handler: where the thread that runs fn is, then a NUL to
 * say that was all.  backtrace() was called once before, so that it loads
 * what it needs outside a handler. */
static int backtrace_fd = -1;

static void backtrace_handler(int sig)
{
    void *frames[64];
    int saved = errno;
    TBX__UNUSED(sig);
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, backtrace_fd);
    (void)tbx__write_all(backtrace_fd, "", 1);
    errno = saved;
}

static void install_backtrace(const tbx__child_spec *spec)
{
    if (spec->parent_pid != 0 && (spec->backtrace_fd >= 0 || spec->crash_trace))
        tbx__trace_allow(spec->parent_pid);
    if (spec->backtrace_fd < 0)
        return;
    void *warm[1];
    (void)backtrace(warm, 1);
    backtrace_fd = spec->backtrace_fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = backtrace_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    (void)sigaction(TBX__BACKTRACE_SIGNAL, &sa, NULL);
}

/* The crash handler: nothing unsafe runs in a crashed process.  It says
 * which signal on the result pipe (one header, under PIPE_BUF: atomic) and
 * waits with every other signal blocked; its owner traces it from outside,
 * then sends it the signal again.  SA_RESETHAND made the signal's action the
 * default meanwhile, so the child dies of it, as it would have without the
 * handler (a core dump included, where allowed). */
static int crash_fd = -1;
static char crash_stack[64 << 10]; /* a stack overflow has no stack left */

static void crash_handler(int sig)
{
    tbx__frame_header h = {TBX__FRAME_MAGIC, TBX__FRAME_CRASH, sig, 0, 0};
    sigset_t only_sig;
    sigfillset(&only_sig);
    sigdelset(&only_sig, sig);
    if (write(crash_fd, &h, sizeof h) == (ssize_t)sizeof h)
        (void)sigsuspend(&only_sig);
}

static void install_crash_handler(const tbx__child_spec *spec)
{
    static const int fatal[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    if (!spec->crash_trace)
        return;
    crash_fd = spec->result_fd;
    stack_t st = {.ss_sp = crash_stack, .ss_size = sizeof crash_stack};
    (void)sigaltstack(&st, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = crash_handler;
    sa.sa_flags = SA_RESETHAND | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
        (void)sigaction(fatal[i], &sa, NULL);
}

void tbx__child_setup(const tbx__child_spec *spec)
{
    (void)setpgid(0, 0);
    /* If the caller dies, so does the call.  The check after it closes the
     * window where the parent died before the prctl. */
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (spec->parent_pid != 0 && getppid() != spec->parent_pid)
        _exit(127);
    reset_signals(spec);
    tbx__forget_call_parent();
    place_output(spec);
    if (spec->close_inherited != NULL)
        spec->close_inherited(spec->close_arg);
    tbx__child_apply_limits(spec);
    join_cgroup(spec);
    install_backtrace(spec);
    install_crash_handler(spec);
}
