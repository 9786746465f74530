/*
 * The OS layer: thin wrappers over Linux system calls, each retrying on EINTR
 * where that is meaningful, each returning -errno on failure; and the log.
 * Runs in every process timebox makes (caller, child, worker, server); what
 * may run between fork and exec is said in child.h.  No timebox dependency
 * but the public header.
 */
#ifndef TBX_OS_H
#define TBX_OS_H

#include "timebox.h"

#include <spawn.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define TBX__UNUSED(x) ((void)(x))

/* Reports a diagnostic to the host's log callback (log.c). */
void tbx__log(tbx_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------- os layer
 * Thin wrappers over Linux system calls, each retrying on EINTR where that is
 * meaningful, each returning -errno on failure.  A kernel without pidfd makes
 * tbx__pidfd_open return -ENOSYS, and the engine falls back to polling. */
uint64_t tbx__now_ns(void); /* CLOCK_MONOTONIC */
/* seconds as nanoseconds, clamped so that now + the result cannot wrap: a
 * timeout of 1e12 s is "never", not a deadline in the past. */
uint64_t tbx__seconds_to_ns(double s);
/* A CPU limit in whole seconds, rounded up; 0 for none. */
uint32_t tbx__cpu_seconds(double s);
int tbx__pidfd_open(pid_t pid);
int tbx__pidfd_send_signal(int pidfd, int sig);
/* 1 if the pidfd's process has exited (it polls readable), else 0. */
int tbx__pidfd_exited(int pidfd);
int tbx__pipe(int fds[2], int flags); /* pipe2(O_CLOEXEC | flags) */
int tbx__close(int fd);               /* close, EINTR treated as closed */
int tbx__close_range(unsigned first, unsigned last); /* 0, or -errno (ENOSYS) */
ssize_t tbx__read(int fd, void *buf, size_t len);  /* retries EINTR */
int tbx__write_all(int fd, const void *buf, size_t len); /* blocking fd */
/* All n pieces of iov to a blocking fd, through partial writes (iov is
 * consumed).  0, or -errno. */
int tbx__writev_all(int fd, struct iovec *iov, int n);
int tbx__timerfd_create(void);        /* CLOCK_MONOTONIC, CLOEXEC|NONBLOCK */
int tbx__timerfd_arm(int fd, uint64_t abs_ns); /* 0 disarms */
int tbx__reap(pid_t pid, int *wstatus, int nohang); /* waitpid, our pid only */
/* In a child, early: lets tracer (its owner) ptrace this process where
 * Yama's ptrace_scope asks for it (PR_SET_PTRACER; the tracer is in trace.h).
 * Without Yama it does nothing.  Async-signal-safe; errors are ignored. */
void tbx__trace_allow(pid_t tracer);
struct rusage;
/* The same, and what the child cost into *ru (wait4), if ru is not NULL. */
int tbx__reap_usage(pid_t pid, int *wstatus, int nohang, struct rusage *ru);
/* Whether our child has exited: 1 (a zombie, still ours to reap), 0 (still
 * running), or -ECHILD (someone else reaped it).  Asked through the pidfd
 * when there is one (kernel 5.4+), so the answer is about our child. */
int tbx__child_state(pid_t pid, int pidfd);
/* Ends our unreaped child now: SIGKILL to its group and to it (it may have
 * left the group), then reaps it.  Its exit status is dropped. */
void tbx__kill_reap(pid_t pid);


/* SCM_RIGHTS.  send: one message with len bytes and nfds fds.  recv: up to
 * *nfds fds into fds (CLOEXEC); a message with more, or truncated control
 * data, closes every fd it brought and fails with -EBADMSG.  Both retry EINTR
 * and never raise SIGPIPE.  Return bytes, or -errno. */
ssize_t tbx__send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds,
                      int flags);
ssize_t tbx__sendv_fds(int sock, const struct iovec *iov, int iovcnt, const int *fds, int nfds,
                       int flags); /* the same, gathering iovcnt pieces */
ssize_t tbx__recv_fds(int sock, void *buf, size_t len, int *fds, int *nfds, int flags);
ssize_t tbx__recvv_fds(int sock, struct iovec *iov, int iovcnt, int *fds, int *nfds,
                       int flags); /* the same, scattering into iovcnt pieces */

/* The system calls timebox makes that create a process or a descriptor, as
 * one table of pointers (as SQLite's os_unix.c keeps aSyscall[]): each entry
 * has the libc convention (-1 and errno), and every call site goes through
 * it, so that a test can replace one entry to make a named call fail and
 * check what the library does then (tests/test_syserr.c).  Replaced only
 * while no call runs; read, never written, by the library. */
typedef struct tbx__syscalls {
    pid_t (*fork)(void);
    int (*pipe2)(int fds[2], int flags);
    int (*socketpair)(int domain, int type, int protocol, int sv[2]);
    int (*memfd_create)(const char *name, unsigned int flags);
    int (*pidfd_open)(pid_t pid, unsigned int flags);
    int (*timerfd_create)(int clockid, int flags);
    int (*close_range)(unsigned int first, unsigned int last, int flags);
    int (*posix_spawn)(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[]);
} tbx__syscalls;
extern tbx__syscalls tbx__sys;
/* The table as the library starts with it: a test restores entries from it. */
extern const tbx__syscalls tbx__sys_default;

/* atfork.c: a fork child forgets its parent's state.  A module that keeps
 * state a child must not share registers, once, in its fixed place:
 *   on_fork: runs in every fork child of the process (the library's one
 *            pthread_atfork child handler runs the places in this order);
 *   on_call: runs also in a child that runs a call (tbx__child_main), which
 *            drops more (a connection a pre-forked worker would keep).
 * Either may be NULL. */
enum {
    TBX__FORGET_FORKSERVER, /* forkserver/client.c: its connection, warm pool */
    TBX__FORGET_SLOTS,      /* slots.c: the cap's queue and count */
    TBX__FORGET_DEADLINES,  /* deadline.c: the loops' timerfds */
    TBX__FORGET_LOOPS,      /* loop.c: the threads' private loops */
    TBX__FORGET_CGROUPS,    /* cgroup_pool.c: the parent's cgroup leaves */
    TBX__FORGET_TRACES,     /* trace_cache.c: the files traces have read */
    TBX__NFORGET
};
void tbx__forget_register(int place, void (*on_fork)(void), void (*on_call)(void));
void tbx__forget_call_parent(void);

#endif /* TBX_OS_H */
