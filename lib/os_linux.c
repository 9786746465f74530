/*
 * The system calls timebox makes, on Linux, and their table (tbx__sys).  Each returns -errno on failure and
 * retries EINTR where a retry is what the caller wants.  pidfd calls go through
 * syscall(2) so that an older glibc (or a kernel without them, -ENOSYS) still
 * builds and runs: the engine falls back to polling waitpid on our own pid.
 */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static int sys_pidfd_open(pid_t pid, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

static int sys_close_range(unsigned int first, unsigned int last, int flags)
{
    return (int)syscall(SYS_close_range, first, last, flags);
}

#define TBX__SYSCALLS                                                                          \
    {                                                                                          \
        .fork = fork, .pipe2 = pipe2, .socketpair = socketpair, .memfd_create = memfd_create,  \
        .pidfd_open = sys_pidfd_open, .timerfd_create = timerfd_create,                        \
        .close_range = sys_close_range, .posix_spawn = posix_spawn,                            \
    }
tbx__syscalls tbx__sys = TBX__SYSCALLS;
const tbx__syscalls tbx__sys_default = TBX__SYSCALLS;

int tbx__close_range(unsigned first, unsigned last)
{
    return tbx__sys.close_range(first, last, 0) == 0 ? 0 : -errno;
}

uint64_t tbx__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t tbx__seconds_to_ns(double s)
{
    const double max_s = 1e9; /* 31 years: well inside 2^63 ns from now */
    if (!(s > 0))
        return 0;
    return s >= max_s ? (uint64_t)(max_s * 1e9) : (uint64_t)(s * 1e9);
}

uint32_t tbx__cpu_seconds(double s)
{
    if (!(s > 0))
        return 0;
    return s >= 4e9 ? UINT32_MAX : (uint32_t)s + ((double)(uint32_t)s < s);
}

int tbx__pidfd_open(pid_t pid)
{
    /* pidfds are always close-on-exec. */
    long fd = tbx__sys.pidfd_open(pid, 0);
    return fd < 0 ? -errno : (int)fd;
}

int tbx__pidfd_send_signal(int pidfd, int sig)
{
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

int tbx__pidfd_exited(int pidfd)
{
    struct pollfd p = {pidfd, POLLIN, 0};
    return poll(&p, 1, 0) == 1;
}

int tbx__pipe(int fds[2], int flags)
{
    return tbx__sys.pipe2(fds, O_CLOEXEC | flags) < 0 ? -errno : 0;
}

int tbx__close(int fd)
{
    /* On Linux the descriptor is released even when close reports EINTR;
     * retrying could close a descriptor another thread just opened. */
    if (fd < 0)
        return 0;
    return close(fd) < 0 && errno != EINTR ? -errno : 0;
}

ssize_t tbx__read(int fd, void *buf, size_t len)
{
    ssize_t n;
    do
        n = read(fd, buf, len);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

int tbx__write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int tbx__timerfd_create(void)
{
    int fd = tbx__sys.timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int tbx__timerfd_arm(int fd, uint64_t abs_ns)
{
    struct itimerspec its = {{0, 0}, {0, 0}};
    its.it_value.tv_sec = (time_t)(abs_ns / 1000000000u);
    its.it_value.tv_nsec = (long)(abs_ns % 1000000000u);
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) < 0 ? -errno : 0;
}

int tbx__child_state(pid_t pid, int pidfd)
{
    const idtype_t by_pidfd = (idtype_t)3; /* P_PIDFD, not in older headers */
    siginfo_t si;
    int r;
    si.si_pid = 0;
    do {
        r = pidfd >= 0 ? waitid(by_pidfd, (id_t)pidfd, &si, WEXITED | WNOHANG | WNOWAIT) : -1;
        if (pidfd < 0 || (r < 0 && errno == EINVAL)) /* no pidfd, or no P_PIDFD */
            r = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    return si.si_pid != 0;
}

void tbx__kill_reap(pid_t pid)
{
    int wstatus;
    /* The group first, while the unreaped child still holds its id. */
    (void)kill(-pid, SIGKILL);
    (void)kill(pid, SIGKILL);
    (void)tbx__reap(pid, &wstatus, 0);
}

void tbx__trace_allow(pid_t tracer)
{
    /* EINVAL without Yama: nothing to allow. */
    (void)prctl(PR_SET_PTRACER, (unsigned long)tracer, 0, 0, 0);
}

int tbx__reap(pid_t pid, int *wstatus, int nohang)
{
    return tbx__reap_usage(pid, wstatus, nohang, NULL);
}

int tbx__reap_usage(pid_t pid, int *wstatus, int nohang, struct rusage *ru)
{
    pid_t r;
    do
        r = wait4(pid, wstatus, nohang ? WNOHANG : 0, ru);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    return r == pid ? 1 : 0;
}

int tbx__writev_all(int fd, struct iovec *iov, int n)
{
    int i = 0;
    while (i < n) {
        ssize_t w = writev(fd, iov + i, n - i);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        while (i < n && (size_t)w >= iov[i].iov_len)
            w -= (ssize_t)iov[i++].iov_len;
        if (i < n) {
            iov[i].iov_base = (char *)iov[i].iov_base + w;
            iov[i].iov_len -= (size_t)w;
        }
    }
    return 0;
}
