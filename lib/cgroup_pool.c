/*
 * The pool of per-call leaves under the base (cgroup.c): lent to one call at
 * a time, killed whole when the call ends, kept for the next call while the
 * pool holds few, removed otherwise.
 *
 * A leaf is killed with cgroup.kill (kernel 5.14+), which signals every
 * process in it and below it at once, atomically with respect to forks; on
 * older kernels the leaf is frozen first (no process in it can fork then)
 * and each process killed.  "Empty" is cgroup.events' "populated 0", polled
 * for its change (kernfs wakes POLLPRI on every change), not a sleep loop.
 */
#include "cgroup_impl.h"
#include "os.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Empty leaves kept for the calls to come: as many as were busy at once
 * lately (at least KEEP_IDLE_MIN, at most KEEP_IDLE_MAX); more are removed
 * when given back.  "Lately" is this epoch of takes and the last: a pool
 * sized to a load that calls in flight come and go under makes no mkdir
 * and no rmdir (a host whose calls in flight swing between 10 and 32 made
 * and removed leaves all the time with a fixed 8), and one sized by a
 * burst shrinks two epochs after it.  A leaf costs the kernel a few KiB,
 * no descriptor of ours. */
#define KEEP_IDLE_MIN 8u
#define KEEP_IDLE_MAX 1024u
#define PEAK_EPOCH 1024u

int tbx__cgroup_no_kill_file;

/* A fork child starts with no leaf of its parent's: it may not give back
 * or remove them, and its own calls make a base of their own (below the
 * leaf it runs in, which its parent's kill then takes whole). */
static void forget_cgroups(void)
{
    pthread_mutex_init(&tbx__cg.lock, NULL);
    tbx__cg.owner = 0;
    tbx__cg.nleaves = 0;
    tbx__cg.busy = tbx__cg.idle = 0;
    tbx__cg.peak = tbx__cg.peak_last = tbx__cg.takes = 0;
}

void tbx__cgroup_ensure(void)
{
    if (tbx__cg.owner == getpid())
        return;
    tbx__forget_register(TBX__FORGET_CGROUPS, forget_cgroups, NULL);
    tbx__cg.nleaves = 0;
    tbx__cg.busy = tbx__cg.idle = 0;
    tbx__cg.peak = tbx__cg.peak_last = tbx__cg.takes = 0;
    tbx__cgroup_setup();
}

static int leaf_path(size_t slot, char *path, size_t len)
{
    int n = snprintf(path, len, "%s/c%zu", tbx__cg.base, slot);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int tbx__cgroup_open_leaf(size_t slot, int fresh, tbx__cgroup *cg)
{
    char path[PATH_MAX + 48];
    int rc = leaf_path(slot, path, sizeof path - 16);
    if (rc != 0)
        return rc;
    size_t dir_len = strlen(path);
    strcat(path, "/cgroup.procs");
    /* An idle leaf is there: one open, no mkdir (a failed mkdir walks the
     * path too).  One removed from outside meanwhile is made again. */
    cg->procs_fd = fresh ? -1 : open(path, O_WRONLY | O_CLOEXEC);
    if (cg->procs_fd < 0) {
        path[dir_len] = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return -errno;
        path[dir_len] = '/';
        cg->procs_fd = open(path, O_WRONLY | O_CLOEXEC);
        if (cg->procs_fd < 0)
            return -errno;
    }
    cg->slot = (unsigned)slot;
    return 0;
}

int tbx__cgroup_open_dir(const tbx__cgroup *cg)
{
    char path[PATH_MAX + 32];
    int rc = -ESRCH;
    if (!cg->held)
        return rc;
    /* The base is this process's: a leaf taken in the process we were
     * forked from is not ours to open (its path names our base's). */
    pthread_mutex_lock(&tbx__cg.lock);
    if (tbx__cg.owner == getpid() && cg->slot < tbx__cg.nleaves &&
        tbx__cg.leaves[cg->slot] == TBX__LEAF_BUSY)
        rc = leaf_path(cg->slot, path, sizeof path);
    pthread_mutex_unlock(&tbx__cg.lock);
    if (rc != 0)
        return rc;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

/* A free slot, marked busy: an idle leaf first (*fresh = 0), else a slot
 * with no directory yet.  -ENOMEM if the table cannot grow. */
static long slot_claim(int *fresh)
{
    size_t i, none = SIZE_MAX;
    for (i = 0; i < tbx__cg.nleaves; i++) {
        if (tbx__cg.leaves[i] == TBX__LEAF_IDLE)
            break;
        if (tbx__cg.leaves[i] == TBX__LEAF_NONE && none == SIZE_MAX)
            none = i;
    }
    *fresh = i == tbx__cg.nleaves;
    if (*fresh && none != SIZE_MAX) {
        i = none;
    } else if (*fresh) {
        unsigned char *l = realloc(tbx__cg.leaves, tbx__cg.nleaves + 1);
        if (l == NULL)
            return -ENOMEM;
        tbx__cg.leaves = l;
        i = tbx__cg.nleaves++;
    } else {
        tbx__cg.idle--;
    }
    tbx__cg.leaves[i] = TBX__LEAF_BUSY;
    tbx__cg.busy++;
    if (tbx__cg.busy > tbx__cg.peak)
        tbx__cg.peak = tbx__cg.busy;
    if (++tbx__cg.takes % PEAK_EPOCH == 0) {
        tbx__cg.peak_last = tbx__cg.peak;
        tbx__cg.peak = tbx__cg.busy;
    }
    return (long)i;
}

int tbx__cgroup_take(tbx__cgroup *cg)
{
    int fresh;
    cg->procs_fd = -1;
    cg->held = 0;
    pthread_mutex_lock(&tbx__cg.lock);
    tbx__cgroup_ensure();
    long slot = tbx__cg.available == 1 ? slot_claim(&fresh) : -ENOENT;
    pthread_mutex_unlock(&tbx__cg.lock);
    if (slot < 0)
        return (int)slot;
    /* Outside the lock: a mkdir is tens of microseconds. */
    int rc = tbx__cgroup_open_leaf((size_t)slot, fresh, cg);
    cg->held = rc == 0;
    if (rc != 0) {
        pthread_mutex_lock(&tbx__cg.lock);
        tbx__cg.leaves[slot] = TBX__LEAF_DIRTY;
        tbx__cg.busy--;
        pthread_mutex_unlock(&tbx__cg.lock);
    }
    return rc;
}

int tbx__cgroup_join(int procs_fd)
{
    ssize_t n;
    do
        n = write(procs_fd, "0", 1); /* "0": the writing process */
    while (n < 0 && errno == EINTR);
    int rc = n == 1 ? 0 : n < 0 ? -errno : -EIO;
    (void)close(procs_fd);
    return rc;
}

int tbx__cgroup_move(const tbx__cgroup *cg, pid_t pid)
{
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%d", (int)pid);
    return tbx__write_all(cg->procs_fd, buf, (size_t)n);
}

/* 1 if the cgroup whose cgroup.events fd is has a process in it or below,
 * 0 if not; -errno. */
static int populated(int events_fd)
{
    char buf[256];
    ssize_t n;
    do
        n = pread(events_fd, buf, sizeof buf - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    const char *p = strstr(buf, "populated ");
    return p == NULL ? -EPROTO : p[10] == '1';
}

int tbx__cgroup_is_populated(int dirfd)
{
    int fd = openat(dirfd, "cgroup.events", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = populated(fd);
    tbx__close(fd);
    return rc;
}

static int write_file(int dirfd, const char *name, const char *text)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = tbx__write_all(fd, text, strlen(text));
    tbx__close(fd);
    return rc;
}

/* Before cgroup.kill: SIGKILL to each process listed in the cgroup and in
 * every cgroup below it.  The cgroup is frozen, so none forks meanwhile. */
static void kill_each(int dirfd, int depth)
{
    char buf[4096];
    int fd = openat(dirfd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? tbx__read(fd, buf, sizeof buf - 1) : -1;
    while (n > 0) {
        buf[n] = '\0';
        for (char *p = buf, *end; *p != '\0'; p = end) {
            long pid = strtol(p, &end, 10);
            if (end == p)
                break;
            if (pid > 0)
                (void)kill((pid_t)pid, SIGKILL);
        }
        n = tbx__read(fd, buf, sizeof buf - 1); /* a long list: in pieces */
    }
    tbx__close(fd);
    struct stat st;
    if (depth < 32 && fstat(dirfd, &st) == 0 && st.st_nlink > 2) {
        int dfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
            if (e->d_type != DT_DIR || e->d_name[0] == '.')
                continue;
            int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub >= 0) {
                kill_each(sub, depth + 1);
                tbx__close(sub);
            }
        }
        if (d != NULL)
            closedir(d);
        else
            tbx__close(dfd);
    }
}

/* Waits until the cgroup is empty, killing again each round where there is
 * no cgroup.kill.  0, -ETIMEDOUT or -errno. */
static int wait_empty(int dirfd, int events_fd, int each)
{
    uint64_t end = tbx__now_ns() + TBX__CGROUP_EMPTY_WAIT_NS;
    for (;;) {
        int p = populated(events_fd);
        if (p <= 0)
            return p;
        uint64_t now = tbx__now_ns();
        if (now >= end)
            return -ETIMEDOUT;
        if (each)
            kill_each(dirfd, 0);
        int ms = (int)((end - now) / 1000000u) + 1;
        struct pollfd pfd = {events_fd, POLLPRI, 0};
        (void)poll(&pfd, 1, each && ms > 10 ? 10 : ms);
    }
}

int tbx__cgroup_kill_dir(int dirfd)
{
    int events = openat(dirfd, "cgroup.events", O_RDONLY | O_CLOEXEC);
    if (events < 0)
        return -errno;
    int rc = populated(events), each = 0;
    if (rc == 1) {
        rc = tbx__cgroup_no_kill_file ? -ENOENT : write_file(dirfd, "cgroup.kill", "1");
        if (rc == -ENOENT) {
            each = 1;
            rc = write_file(dirfd, "cgroup.freeze", "1");
        }
        if (rc == 0)
            rc = wait_empty(dirfd, events, each);
        if (each)
            (void)write_file(dirfd, "cgroup.freeze", "0");
    }
    tbx__close(events);
    struct stat st;
    /* A call that made cgroups of its own (a nested timebox call) left
     * directories here: a kernfs directory counts its subdirectories in
     * its link count. */
    if (rc == 0 && fstat(dirfd, &st) == 0 && st.st_nlink > 2)
        tbx__cgroup_remove_below(dirfd, 0);
    return rc;
}

int tbx__cgroup_kill(tbx__cgroup *cg)
{
    if (!cg->held)
        return 0;
    int dirfd = tbx__cgroup_open_dir(cg);
    int rc = dirfd >= 0 ? tbx__cgroup_kill_dir(dirfd) : dirfd;
    tbx__close(dirfd);
    /* A leaf removed from outside held no process: cgroup v2 removes only
     * an empty cgroup.  The next take makes it again. */
    if (rc == -ENOENT)
        rc = 0;
    if (rc != 0)
        tbx__log(TBX_LOG_WARN, "a call's cgroup %s/c%u could not be emptied: %s",
                 tbx__cg.base, cg->slot, strerror(-rc));
    return rc;
}

/* With the lock held: removes the leaf in slot; 0 or -errno. */
static int leaf_remove(size_t slot)
{
    char path[PATH_MAX + 32];
    int rc = leaf_path(slot, path, sizeof path);
    if (rc == 0 && rmdir(path) != 0 && errno != ENOENT)
        rc = -errno;
    tbx__cg.leaves[slot] = rc == 0 ? TBX__LEAF_NONE : TBX__LEAF_DIRTY;
    return rc;
}

/* With the lock held: how many idle leaves to keep now. */
static unsigned keep_idle(void)
{
    unsigned k = tbx__cg.peak > tbx__cg.peak_last ? tbx__cg.peak : tbx__cg.peak_last;
    return k < KEEP_IDLE_MIN ? KEEP_IDLE_MIN : k > KEEP_IDLE_MAX ? KEEP_IDLE_MAX : k;
}

void tbx__cgroup_give(tbx__cgroup *cg, int clean)
{
    if (!cg->held)
        return;
    tbx__close(cg->procs_fd);
    pthread_mutex_lock(&tbx__cg.lock);
    if (tbx__cg.owner == getpid() && cg->slot < tbx__cg.nleaves &&
        tbx__cg.leaves[cg->slot] == TBX__LEAF_BUSY) {
        tbx__cg.busy--;
        unsigned keep = keep_idle();
        if (clean && tbx__cg.idle < keep) {
            tbx__cg.leaves[cg->slot] = TBX__LEAF_IDLE;
            tbx__cg.idle++;
        } else {
            (void)leaf_remove(cg->slot);
            /* The peak fell: one more idle leaf goes, the last. */
            for (size_t i = tbx__cg.nleaves; i-- > 0 && tbx__cg.idle > keep;) {
                if (tbx__cg.leaves[i] == TBX__LEAF_IDLE) {
                    tbx__cg.idle--;
                    (void)leaf_remove(i);
                    break;
                }
            }
        }
    }
    pthread_mutex_unlock(&tbx__cg.lock);
    cg->procs_fd = -1;
    cg->held = 0;
}

void tbx__cgroup_end(tbx__cgroup *cg)
{
    if (cg->held)
        tbx__cgroup_give(cg, tbx__cgroup_kill(cg) == 0);
}

void tbx__cgroup_cleanup_locked(void)
{
    if (tbx__cg.owner != getpid() || tbx__cg.available != 1)
        return;
    for (size_t i = 0; i < tbx__cg.nleaves; i++) {
        if (tbx__cg.leaves[i] == TBX__LEAF_IDLE || tbx__cg.leaves[i] == TBX__LEAF_DIRTY)
            (void)leaf_remove(i);
    }
    tbx__cg.idle = 0;
    if (tbx__cg.busy == 0 && rmdir(tbx__cg.base) == 0) {
        tbx__cg.nleaves = 0;
        tbx__cg.owner = 0; /* set up again on next use */
    }
}

void tbx__cgroup_cleanup(void)
{
    pthread_mutex_lock(&tbx__cg.lock);
    tbx__cgroup_cleanup_locked();
    pthread_mutex_unlock(&tbx__cg.lock);
}
