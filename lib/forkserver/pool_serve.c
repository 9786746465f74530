/*
 * A pooled process (TBX_POOL): forked by the forkserver from its clean,
 * preloaded state, it serves calls one after another on the request socket
 * its client handed over, each result going down the client's result pipe.
 *
 * What one call may leave behind is undone before the next, or the process
 * goes:
 *   - the call's descendants are killed and reaped before its result frame
 *     is written (the process is their subreaper, so a grandchild whose
 *     parent died, or one that moved to another session or group, is still
 *     found among its children);
 *   - its fingerprint, taken when it started (open descriptors, threads,
 *     resident size), is checked: a process with more descriptors or threads
 *     than then, or whose resident size grew past the bound, says DRIFT in
 *     the frame and exits, to be replaced;
 *   - signal dispositions the call changed are put back to the defaults
 *     (read from /proc/self/status: only the ones it changed), the mask
 *     emptied: after the frame, off the caller's wait (a status read is
 *     the dearest part of the check), but before the next request is read,
 *     so that the next call finds them reset all the same;
 *   - a call that captures its output (REQ_CAPTURE) has its pipes on 1 and 2
 *     while it runs, the process's own kept aside and put back before the
 *     frame (stdio flushed first), so that once the call's descendants are
 *     dead only the caller holds the pipes;
 *   - resource limits cannot be raised back: a call that set some says
 *     RETIRE and the process exits after it;
 *   - after max_calls calls it says SPENT and exits.
 * Child hooks run once, when the process starts, not per call.
 *
 * Runs in a forkserver child, set up as every server child is
 * (tbx__child_setup: its group, its parent's death, the server's signal
 * dispositions put back, its descriptors closed but its own):
 * single-threaded.
 */
#include "child.h"

#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The largest descriptor table counted by poll (an array of this many
 * pollfds on the stack); a bigger one is counted from /proc/self/fd. */
#define POLL_FDS_MAX 1024

/* How far the resident size may grow past its size at the first call's end
 * before the process counts as drifted: room for the allocator's caches. */
#define RSS_SLACK_KIB (64u << 10)

typedef struct pool_state {
    int req_fd, res_fd;
    int status_fd, fd_dir;  /* /proc/self/status and /proc/self/fd, kept
                               open: read again per call, not reopened */
    int task_dir, statm_fd; /* /proc/self/task and /proc/self/statm, the
                               same, where the kernel counts descriptors */
    int fd_counted;        /* 1: fstat of /proc/self/fd counts them (Linux
                              6.2 and later) */
    long page_kib;         /* a page's size in KiB */
    unsigned max_calls, calls;
    int fds, threads;      /* the fingerprint: when it started */
    long rss_kib;          /* after its first call; -1 until then */
    int limited;           /* this call set resource limits */
    int capturing;         /* a call's captured stdout and stderr are on
                              1 and 2, the process's own kept aside in: */
    int own_out, own_err;  /* (keep_aside) */
    uint32_t word;         /* the last call's pool word */
} pool_state;

typedef struct proc_status {
    int threads;
    int fd_size;            /* the descriptor table's size: every open one is below */
    long rss_kib;
    uint64_t caught, ignored, blocked;
} proc_status;

/* Threads, resident size, signal dispositions and mask from
 * /proc/self/status (read afresh from its start: one system call); -1 if it
 * cannot be read. */
static int read_status(int fd, proc_status *st)
{
    char buf[4096];
    ssize_t n;
    do
        n = pread(fd, buf, sizeof buf - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *p;
    memset(st, 0, sizeof *st);
    st->threads = (p = strstr(buf, "\nThreads:")) != NULL ? atoi(p + 9) : -1;
    st->rss_kib = (p = strstr(buf, "\nVmRSS:")) != NULL ? atol(p + 7) : -1;
    st->fd_size = (p = strstr(buf, "\nFDSize:")) != NULL ? atoi(p + 8) : -1;
    if ((p = strstr(buf, "\nSigIgn:")) != NULL)
        st->ignored = strtoull(p + 8, NULL, 16);
    if ((p = strstr(buf, "\nSigCgt:")) != NULL)
        st->caught = strtoull(p + 8, NULL, 16);
    if ((p = strstr(buf, "\nSigBlk:")) != NULL)
        st->blocked = strtoull(p + 8, NULL, 16);
    return st->threads > 0 && st->rss_kib >= 0 ? 0 : -1;
}

/* Open descriptors, from /proc/self/fd read afresh from its start. */
static int list_fds(int dir)
{
    char buf[8192];
    int n = 0;
    if (lseek(dir, 0, SEEK_SET) != 0)
        return -1;
    for (;;) {
        long got = syscall(SYS_getdents64, dir, buf, sizeof buf);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0)
            return n;
        for (long at = 0; at < got;) {
            struct dirent64 *e = (struct dirent64 *)(buf + at);
            n += e->d_name[0] != '.';
            at += e->d_reclen;
        }
    }
}

/* Open descriptors.  Each one is below the table's size (FDSize, read from
 * status just before, in this process of one thread), so one poll of that
 * many entries, asking for no event, counts them: a closed one answers
 * POLLNVAL.  That costs a fifth of the three system calls listing
 * /proc/self/fd (0.4 us against 2 here), which a table too big for the
 * array, or a poll that fails, falls back to. */
static int count_fds(int dir, int fd_size)
{
    struct pollfd p[POLL_FDS_MAX];
    if (fd_size <= 0 || fd_size > POLL_FDS_MAX)
        return list_fds(dir);
    for (int i = 0; i < fd_size; i++)
        p[i] = (struct pollfd){i, 0, 0};
    int r;
    do
        r = poll(p, (nfds_t)fd_size, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return list_fds(dir);
    int n = 0;
    for (int i = 0; i < fd_size; i++)
        n += !(p[i].revents & POLLNVAL);
    return n;
}

/* Descriptors, threads and resident size: the fingerprint, on the
 * caller's wait.  Where the kernel counts descriptors in the size of
 * /proc/self/fd (6.2 and later), three cheap system calls (about 1 us here,
 * against 4 for status and a poll): that size, the link count of
 * /proc/self/task (two plus a link per thread), the resident pages of
 * /proc/self/statm.  Elsewhere status gives threads, resident size and the
 * table's size for count_fds.  -1 if something cannot be read. */
static int fingerprint(const pool_state *ps, proc_status *st, int *fds)
{
    struct stat fd_st, task_st;
    char buf[128];
    if (!ps->fd_counted)
        return read_status(ps->status_fd, st) != 0 ||
                       (*fds = count_fds(ps->fd_dir, st->fd_size)) < 0
                   ? -1
                   : 0;
    memset(st, 0, sizeof *st);
    ssize_t n;
    do
        n = pread(ps->statm_fd, buf, sizeof buf - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0 || fstat(ps->fd_dir, &fd_st) != 0 || fstat(ps->task_dir, &task_st) != 0)
        return -1;
    buf[n] = '\0';
    char *p = strchr(buf, ' '); /* the second field: resident pages */
    st->rss_kib = p != NULL ? atol(p + 1) * ps->page_kib : -1;
    st->threads = (int)task_st.st_nlink - 2;
    *fds = fd_st.st_size > 0 && fd_st.st_size < INT_MAX ? (int)fd_st.st_size : -1;
    return st->threads > 0 && st->rss_kib >= 0 && *fds > 0 ? 0 : -1;
}

/* This process's children, from every thread's children list; up to max. */
static int list_children(pid_t *pids, int max)
{
    char path[64];
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL && n < max) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%.16s/children", e->d_name);
        FILE *f = fopen(path, "re");
        int pid;
        while (f != NULL && n < max && fscanf(f, "%d", &pid) == 1)
            pids[n++] = pid;
        if (f != NULL)
            fclose(f);
    }
    if (d != NULL)
        closedir(d);
    return n;
}

/* Kills and reaps every descendant of this process.  As a subreaper it
 * inherits the orphans of each child it kills, so it goes round until none
 * is left.  Every pid waited for is a child of ours, the call's. */
static void kill_descendants(void)
{
    siginfo_t si;
    /* Any child at all?  A probe that reaps nothing (WNOWAIT); ECHILD is the
     * common answer and costs one system call.  Every child of this process
     * is one of the call's: none is anyone else's to wait for. */
    si.si_pid = 0;
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 && errno == ECHILD)
        return;
    for (;;) {
        pid_t pids[256];
        int n = list_children(pids, 256);
        if (n == 0)
            return;
        for (int i = 0; i < n; i++) {
            (void)kill(-pids[i], SIGKILL); /* its group, if it leads one */
            (void)kill(pids[i], SIGKILL);
        }
        for (int i = 0; i < n; i++)
            (void)tbx__reap(pids[i], NULL, 0);
    }
}

/* Puts back the default disposition of every signal the call caught or
 * ignored, and empties the mask. */
static void reset_signals(const proc_status *st)
{
    uint64_t changed = st->caught | st->ignored;
    sigset_t empty;
    for (int sig = 1; sig < NSIG && sig <= 64; sig++)
        if ((changed >> (sig - 1)) & 1)
            (void)signal(sig, SIG_DFL);
    sigemptyset(&empty);
    if (st->blocked != 0)
        (void)sigprocmask(SIG_SETMASK, &empty, NULL);
}

static int dup_onto(int from, int to)
{
    int r;
    do
        r = dup2(from, to);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -1 : 0;
}

/* What capture_begin keeps of descriptor fd (1 or 2): a copy of it, or
 * NOT_OPEN if the process had none there; -1 on failure. */
#define NOT_OPEN (-2)
static int keep_aside(int fd)
{
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    return copy >= 0 ? copy : errno == EBADF ? NOT_OPEN : -1;
}

/* Puts back on fd what keep_aside kept (closing fd if nothing was open
 * there). */
static int put_back(int kept, int fd)
{
    if (kept == NOT_OPEN)
        return tbx__close(fd);
    int rc = kept >= 0 ? dup_onto(kept, fd) : -1;
    tbx__close(kept);
    return rc;
}

/* A received descriptor that landed on 0, 1 or 2 (a call closed the
 * process's own) moves above them, leaving that number closed again. */
static int lift(int *fd)
{
    if (*fd > 2)
        return 0;
    int moved = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
    tbx__close(*fd);
    *fd = moved;
    return moved >= 0 ? 0 : -1;
}

/* A call that captures its output (REQ_CAPTURE): its pipes go on 1 and 2
 * for the call, the process's own kept aside (stdio was flushed at the last
 * call's end; the pipes' descriptors came CLOEXEC, 1 and 2 are not).  0, or
 * -1 if they could not be placed (the process then retires after the call:
 * what is on 1 and 2 is not known). */
static int capture_begin(pool_state *ps, tbx__request *rq)
{
    if (rq->out_fd < 0)
        return 0;
    ps->capturing = 1;
    int lifted = lift(&rq->out_fd) == 0 && lift(&rq->err_fd) == 0;
    ps->own_out = keep_aside(1);
    ps->own_err = keep_aside(2);
    int rc = lifted && ps->own_out != -1 && ps->own_err != -1 && dup_onto(rq->out_fd, 1) == 0 &&
                     dup_onto(rq->err_fd, 2) == 0
                 ? 0
                 : -1;
    tbx__close(rq->out_fd);
    tbx__close(rq->err_fd);
    rq->out_fd = rq->err_fd = -1;
    return rc;
}

/* The call's end (stdio flushed): the process's own stdout and stderr back
 * on 1 and 2, so that once the call's descendants are dead no one holds
 * the call's pipes but the caller. */
static int capture_end(pool_state *ps)
{
    if (!ps->capturing)
        return 0;
    int out = put_back(ps->own_out, 1), err = put_back(ps->own_err, 2);
    ps->capturing = 0;
    ps->own_out = ps->own_err = -1;
    return out == 0 && err == 0 ? 0 : -1;
}

/* After fn, before its frame: what the frame tells (the call's descendants
 * dead, its captured output ended, the fingerprint checked).  The frame's
 * pool word. */
static uint32_t call_end(void *arg)
{
    pool_state *ps = arg;
    proc_status st;
    uint32_t word = TBX__POOL_DONE;
    if (capture_end(ps) != 0)
        word |= TBX__POOL_DRIFT;
    kill_descendants();
    int fds = -1;
    if (fingerprint(ps, &st, &fds) != 0)
        return ps->word = word | TBX__POOL_DRIFT;
    if (ps->rss_kib < 0)
        ps->rss_kib = st.rss_kib; /* the first call sets the bar */
    if (fds > ps->fds || st.threads > ps->threads || st.rss_kib > ps->rss_kib + RSS_SLACK_KIB)
        word |= TBX__POOL_DRIFT;
    if (ps->limited)
        word |= TBX__POOL_RETIRE;
    if (ps->max_calls != 0 && ++ps->calls >= ps->max_calls)
        word |= TBX__POOL_SPENT;
    ps->word = word;
    return word;
}

/* An ERROR frame.  done: a request that names no registered function, or
 * args that do not unpack, is the caller's mistake, not the process's: it
 * answers (DONE) and serves on.  Otherwise (a malformed request) it exits
 * after the frame. */
static void answer_error(int res_fd, int code, const char *why, int done)
{
    tbx__frame_header h;
    struct iovec iov[2];
    int n = tbx__frame_error(&h, iov, code, why);
    h.pool = done ? TBX__POOL_DONE : 0;
    if (tbx__writev_all(res_fd, iov, n) != 0 || !done)
        _exit(126);
}

static void serve_one(pool_state *ps, tbx__request *rq)
{
    tbx__child_spec spec;
    char why[TBX__MAX_MESSAGE + 1];
    int rc = tbx__request_resolve(rq, why, sizeof why);
    if (rc != 0) {
        answer_error(ps->res_fd, rc, why, 1);
        return;
    }
    tbx__request_spec(rq, ps->res_fd, &spec);
    spec.parent_pid = 0; /* the server's death kills us (PDEATHSIG) */
    ps->limited = rq->h.limit_memory != 0 || rq->h.limit_cpu_s != 0 || rq->h.limit_files != 0;
    if (ps->limited)
        tbx__child_apply_limits(&spec);
    if (capture_begin(ps, rq) != 0)
        ps->limited = 1; /* it serves this call, and retires after it */
    if (tbx__child_run(&spec, 0, call_end, ps) != 0)
        _exit(126);
}

/* After the frame, before the next request: the process goes as its frame
 * said, or its signals are put back for the next call. */
static void after_frame(pool_state *ps)
{
    proc_status st;
    if (ps->word & (TBX__POOL_DRIFT | TBX__POOL_SPENT | TBX__POOL_RETIRE))
        _exit(0);
    if (read_status(ps->status_fd, &st) != 0)
        _exit(125); /* its dispositions unknown, it cannot serve on clean */
    reset_signals(&st);
}

/* The next request, awake.  A process that sleeps between calls is woken
 * on an idle CPU of its own, tens of microseconds late on a virtual
 * machine (pool_own.c says the same of the caller): so while requests come
 * within AWAIT_NS of the last answer, the process polls that long before it
 * sleeps.  Calls that come further apart cost one such wait, then none:
 * gap_ns, the last wait, decides. */
#define AWAIT_NS 200000ull

static void await_request(int req_fd, uint64_t gap_ns)
{
    if (gap_ns == 0 || gap_ns > AWAIT_NS)
        return;
    uint64_t from = tbx__now_ns();
    char b;
    while (recv(req_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && errno == EAGAIN &&
           tbx__now_ns() - from < AWAIT_NS)
        ;
}

void tbx__pool_serve(int req_fd, int res_fd, unsigned max_calls)
{
    pool_state ps = {.req_fd = req_fd, .res_fd = res_fd, .status_fd = -1, .fd_dir = -1,
                     .task_dir = -1, .statm_fd = -1, .max_calls = max_calls, .rss_kib = -1,
                     .own_out = -1, .own_err = -1, .capturing = 0};
    proc_status st;
    char why[TBX__MAX_MESSAGE + 1];
    /* The call's orphans come to us, to be killed at its end. */
    (void)prctl(PR_SET_CHILD_SUBREAPER, 1);
    if (tbx__run_child_hooks() != 0)
        _exit(125); /* the calls will see it exit before it served */
    ps.status_fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    ps.fd_dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ps.task_dir = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ps.statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (ps.status_fd < 0 || ps.fd_dir < 0 || ps.task_dir < 0 || ps.statm_fd < 0)
        _exit(125);
    long page = sysconf(_SC_PAGESIZE);
    ps.page_kib = page >= 1024 ? page / 1024 : 4;
    /* The kernel counts them if the size agrees with the count. */
    struct stat fd_st;
    int counted = -1;
    if (read_status(ps.status_fd, &st) != 0 || (ps.fds = count_fds(ps.fd_dir, st.fd_size)) < 0)
        _exit(125);
    ps.fd_counted = fstat(ps.fd_dir, &fd_st) == 0 && fd_st.st_size == ps.fds;
    if (fingerprint(&ps, &st, &counted) != 0 || counted != ps.fds)
        _exit(125);
    ps.threads = st.threads;
    for (uint64_t gap_ns = 0;;) {
        tbx__request rq;
        tbx__request_init(&rq);
        rq.alone = 1; /* the caller sends nothing more before the answer */
        rq.capture_ok = 1;
        uint64_t idle_from = tbx__now_ns();
        await_request(req_fd, gap_ns);
        int rc = tbx__request_read(&rq, req_fd, 0, "the pooled process", why, sizeof why);
        gap_ns = tbx__now_ns() - idle_from;
        if (rc == -1 && rq.got == 0)
            _exit(0); /* the client let it go */
        if (rc != 1)
            answer_error(res_fd, rc < -1 ? rc : TBX_EPROTO,
                         rc < -1 ? why : "the pooled process's request was cut short", 0);
        ps.word = 0;
        serve_one(&ps, &rq);
        tbx__request_free(&rq);
        after_frame(&ps);
    }
}
