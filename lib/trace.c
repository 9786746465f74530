/*
 * The ptrace side of the tracer (trace.h): attach to every thread of a
 * process, stop each one, hand them to the unwinder, let them go.
 *
 * PTRACE_SEIZE then PTRACE_INTERRUPT stops a thread without a signal, so a
 * process that blocks every signal stops all the same, and one already
 * stopped by SIGSTOP reports its group stop and stays stopped after the
 * detach.  Every wait is a poll (waitid with WNOHANG) against one deadline
 * for the whole trace: a thread that never stops costs the budget, never a
 * hang.  The process's leader is only ever waited on for stops (WSTOPPED
 * without WEXITED), so the trace never reaps the owner's child.
 *
 * All ptrace requests for a tracee must come from the thread that attached
 * it: a trace runs start to end on the calling thread.
 */
#include "os.h"
#include "trace.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

/* One thread of the traced process, as the trace goes. */
typedef struct thread_slot {
    tbx__trace_thread t;
    int attached;   /* we hold it with ptrace */
    int stopped;    /* its stop has been waited for */
    int resume_sig; /* a signal it was about to receive, delivered at detach */
} thread_slot;

typedef struct trace_run {
    pid_t pid;
    uint64_t deadline_ns;
    thread_slot threads[TBX__TRACE_MAX_THREADS];
    size_t n;
    int refused;    /* ptrace said EPERM */
} trace_run;

/* Reads the state letter and the name of one thread from its stat file:
 * "tid (name) S ...", the name itself possibly holding parentheses. */
static int read_thread_stat(pid_t pid, pid_t tid, tbx__trace_thread *t)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = tbx__read(fd, buf, sizeof buf - 1);
    tbx__close(fd);
    if (n <= 0)
        return -ESRCH;
    buf[n] = '\0';
    char *open_paren = strchr(buf, '(');
    char *close_paren = strrchr(buf, ')');
    if (open_paren == NULL || close_paren == NULL || close_paren < open_paren ||
        close_paren[1] == '\0' || close_paren[2] == '\0')
        return -ESRCH;
    size_t len = (size_t)(close_paren - open_paren - 1);
    if (len >= sizeof t->name)
        len = sizeof t->name - 1;
    memcpy(t->name, open_paren + 1, len);
    t->name[len] = '\0';
    t->state = close_paren[2];
    return 0;
}

static thread_slot *find_thread(trace_run *run, pid_t tid)
{
    for (size_t i = 0; i < run->n; i++)
        if (run->threads[i].t.tid == tid)
            return &run->threads[i];
    return NULL;
}

/* Seizes and interrupts one thread not seen before.  A thread in
 * uninterruptible sleep is listed but not seized: it could not stop before
 * it leaves the kernel, and a tracee that never stopped cannot be detached. */
static void attach_thread(trace_run *run, pid_t tid)
{
    if (run->n == TBX__TRACE_MAX_THREADS || find_thread(run, tid) != NULL)
        return;
    thread_slot *s = &run->threads[run->n];
    memset(s, 0, sizeof *s);
    s->t.tid = tid;
    if (read_thread_stat(run->pid, tid, &s->t) < 0)
        return; /* gone already */
    run->n++;
    if (s->t.state == 'D' || s->t.state == 'Z' || s->t.state == 'X') {
        s->t.state = 'D';
        return;
    }
    if (ptrace(PTRACE_SEIZE, tid, NULL, NULL) < 0) {
        if (errno == EPERM)
            run->refused = 1;
        s->t.state = 'X';
        return;
    }
    s->attached = 1;
    s->t.state = 'X'; /* until its stop comes */
    (void)ptrace(PTRACE_INTERRUPT, tid, NULL, NULL);
}

/* Attaches to every thread listed in /proc/PID/task now; returns how many
 * were new, or -errno if the process is gone. */
static int attach_listed(trace_run *run)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)run->pid);
    DIR *dir = opendir(path);
    if (dir == NULL)
        return errno == ENOENT ? -ESRCH : -errno;
    size_t before = run->n;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        char *end;
        long tid = strtol(e->d_name, &end, 10);
        if (*end == '\0' && tid > 0)
            attach_thread(run, (pid_t)tid);
    }
    closedir(dir);
    return (int)(run->n - before);
}

/* Takes the stop of one attached thread if it has come: 1 if stopped, 0
 * if not yet, -1 if the thread has exited.  Only other threads than the
 * leader are waited on for their exit: the leader's is the owner's to reap. */
static int poll_stop(trace_run *run, thread_slot *s)
{
    siginfo_t si;
    int flags = WSTOPPED | __WALL | WNOHANG | (s->t.tid != run->pid ? WEXITED : 0);
    memset(&si, 0, sizeof si);
    int r;
    do {
        r = waitid(P_PID, (id_t)s->t.tid, &si, flags);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -1;
    if (si.si_pid == 0)
        return 0;
    if (si.si_code == CLD_EXITED || si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED)
        return -1;
    /* An event stop (our interrupt, or a group stop reported as one) is
     * resumed with nothing; a signal that was on its way is handed back. */
    int event = si.si_status >> 8, sig = si.si_status & 0x7f;
    s->resume_sig = event == 0 && sig != SIGTRAP ? sig : 0;
    return 1;
}

/* Waits, until the deadline, for every attached thread to stop.  Returns
 * how many have. */
static size_t wait_stops(trace_run *run)
{
    for (;;) {
        size_t stopped = 0, pending = 0;
        for (size_t i = 0; i < run->n; i++) {
            thread_slot *s = &run->threads[i];
            if (s->attached && !s->stopped) {
                int r = poll_stop(run, s);
                if (r > 0) {
                    s->stopped = 1;
                    s->t.state = 'T';
                } else if (r < 0) {
                    s->attached = 0; /* exited: nothing to detach */
                } else {
                    pending++;
                }
            }
            stopped += s->stopped;
        }
        if (pending == 0 || tbx__now_ns() >= run->deadline_ns)
            return stopped;
        struct timespec ts = {0, 100 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void detach_all(trace_run *run)
{
    for (size_t i = 0; i < run->n; i++) {
        thread_slot *s = &run->threads[i];
        if (!s->attached)
            continue;
        /* A thread that never stopped cannot be detached; it stays traced
         * by this thread until it stops or dies (the owner is about to kill
         * it).  In practice the D-state check above keeps this away. */
        (void)ptrace(PTRACE_DETACH, s->t.tid, NULL, (void *)(long)s->resume_sig);
        s->attached = 0;
    }
}

/* Attaches to every thread, then lists again: threads that were running
 * may have made new ones before they stopped.  Until the list stands still,
 * a few rounds at most. */
static int attach_all(trace_run *run)
{
    int r = attach_listed(run);
    if (r < 0)
        return r;
    for (int round = 0; round < 4; round++) {
        wait_stops(run);
        r = attach_listed(run);
        if (r <= 0)
            break;
    }
    return 0;
}

static void order_fn_first(trace_run *run, pid_t fn_tid, tbx__trace_thread *out)
{
    size_t k = 0;
    for (size_t i = 0; i < run->n; i++)
        if (run->threads[i].t.tid == fn_tid)
            out[k++] = run->threads[i].t;
    for (size_t i = 0; i < run->n; i++)
        if (run->threads[i].t.tid != fn_tid)
            out[k++] = run->threads[i].t;
}

int tbx__trace(pid_t pid, pid_t fn_tid, uint64_t budget_ns, char **out)
{
    *out = NULL;
    if (!tbx__trace_available(NULL))
        return -ENOSYS;
    trace_run *run = calloc(1, sizeof *run);
    char *text = malloc(TBX__TRACE_MAX);
    tbx__trace_thread *ordered = malloc(sizeof(tbx__trace_thread) * TBX__TRACE_MAX_THREADS);
    int rc = run == NULL || text == NULL || ordered == NULL ? -ENOMEM : 0;
    if (rc == 0) {
        run->pid = pid;
        run->deadline_ns = tbx__now_ns() + budget_ns;
        rc = attach_all(run);
    }
    size_t stopped = rc == 0 ? wait_stops(run) : 0;
    if (rc == 0 && stopped == 0)
        rc = run->refused ? -EPERM : run->n == 0 ? -ESRCH : -ETIMEDOUT;
    tbx__trace_stacks *stacks = NULL;
    if (rc == 0) {
        order_fn_first(run, fn_tid, ordered);
        stacks = tbx__trace_stacks_take(pid, ordered, run->n, run->deadline_ns);
        if (stacks == NULL)
            rc = -ENOMEM;
    }
    if (run != NULL)
        detach_all(run);
    if (rc == 0) {
        tbx__trace_stacks_format(stacks, fn_tid, tbx__now_ns() + budget_ns, text,
                                 TBX__TRACE_MAX);
        *out = text;
        text = NULL;
    }
    tbx__trace_stacks_free(stacks);
    free(ordered);
    free(text);
    free(run);
    return rc;
}
