/*
 * The forkserver's containment where it can have no cgroups: it is a child
 * subreaper (PR_SET_CHILD_SUBREAPER), so a descendant of one of its children
 * that is orphaned (its parent exited: a daemon's double fork, or the call's
 * child itself ending) becomes the server's child instead of init's, and
 * the server can end it.  An orphan cannot say which call it came from, so
 * live orphans are killed only when no call is running; dead ones are
 * reaped at once.
 */
#include "forkserver/server.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int tbx__fs_server_become_subreaper(void)
{
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 ? 0 : -errno;
}

/* Our children, from /proc/self/task/<tid>/children (a single-threaded
 * process: the main thread's list is all of them).  Up to max into pids;
 * the count, or -errno. */
static int list_children(pid_t *pids, int max)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t len = tbx__read(fd, buf, sizeof buf - 1);
    tbx__close(fd);
    if (len < 0)
        return (int)len;
    buf[len] = '\0';
    int n = 0;
    for (char *p = buf, *end; n < max; p = end) {
        long pid = strtol(p, &end, 10);
        if (end == p)
            break;
        if (pid > 0)
            pids[n++] = (pid_t)pid;
    }
    return n;
}

static int is_call(pid_t pid, const pid_t *calls, int ncalls)
{
    for (int i = 0; i < ncalls; i++)
        if (calls[i] == pid)
            return 1;
    return 0;
}

void tbx__fs_server_reap_orphans(const pid_t *calls, int ncalls)
{
    pid_t kids[256];
    /* Each round kills the orphans there are; their own children are then
     * orphaned in turn and come to us for the next round. */
    for (int round = 0; round < 16; round++) {
        int n = list_children(kids, 256), found = 0;
        for (int i = 0; i < n; i++) {
            int wstatus;
            if (is_call(kids[i], calls, ncalls))
                continue;
            found++;
            if (ncalls == 0)
                (void)kill(kids[i], SIGKILL);
            (void)tbx__reap(kids[i], &wstatus, ncalls != 0);
        }
        if (found == 0 || ncalls != 0)
            return;
    }
}
