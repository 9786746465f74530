/*
 * Per-call cgroups (cgroup v2): the kill domain that setsid cannot escape.
 *
 * Where this process may make cgroups (a directory named with
 * tbx_set_cgroup_root or TIMEBOX_CGROUP; else our own cgroup, if we may
 * write to it: root, or a delegated subtree), timebox makes one directory of
 * its own, "timebox-<pid>", and under it one leaf per call in flight.  The
 * base holds no process, so cgroup v2's "no internal processes" rule never
 * bites, and timebox enables no controller anywhere.  Leaves are kept empty
 * in a small pool and lent to one call at a time: a fork into an existing
 * empty cgroup costs nothing over a bare fork, a fresh mkdir and rmdir per
 * call would (bench_containment measures both).
 *
 * A call's life: take a leaf in the parent; the child joins it first thing
 * (tbx__cgroup_join: one write on a descriptor opened before the fork, safe
 * between fork and exec); at the end of the call, kill whatever is in it and
 * wait until it is empty (tbx__cgroup_kill), then give it back.
 */
#ifndef TBX_CGROUP_H
#define TBX_CGROUP_H

#include <stdint.h>
#include <sys/types.h>

/* A leaf lent to one call.  It holds no descriptor while the call runs:
 * base/c<slot> is the call's own from take to give (no other call is lent
 * that slot meanwhile, and the base stays while a leaf is busy), so the
 * leaf is opened by that path when it is killed, and a call in flight
 * costs no descriptor for its containment. */
typedef struct tbx__cgroup {
    int procs_fd;  /* its cgroup.procs, opened for writing (CLOEXEC) by
                      take; the launcher closes it once the child is in */
    int held;      /* 1 from take to give */
    unsigned slot; /* its place in the pool */
} tbx__cgroup;

#define TBX__CGROUP_INIT {-1, 0, 0}

/* How long tbx__cgroup_kill waits for a killed cgroup to empty: processes
 * killed with SIGKILL exit in microseconds, unless stuck in the kernel. */
#define TBX__CGROUP_EMPTY_WAIT_NS 2000000000ull

/* The cgroup2 mount point and this process's own cgroup below it, as
 * /proc/self/mountinfo and /proc/self/cgroup say (mountinfo and cgroup are
 * the files' text, for tests; NULL: read /proc/self).  0, -ENOENT (no
 * cgroup2 mount, or no "0::" line), or -errno. */
int tbx__cgroup_find(const char *mountinfo, const char *cgroup, char *mount, size_t mount_len,
                     char *own, size_t own_len);

/* 1 if this process can give calls a cgroup of their own (the base made
 * and tried once, on first use), 0 if not. */
int tbx__cgroup_available(void);

/* Lends an empty leaf to a call.  0, or -ENOENT when this process can have
 * no cgroups, or -errno (the call then runs without one). */
int tbx__cgroup_take(tbx__cgroup *cg);

/* Child side, async-signal-safe: moves the calling process into the leaf
 * whose cgroup.procs procs_fd is, and closes procs_fd.  0 or -errno. */
int tbx__cgroup_join(int procs_fd);

/* Opens the leaf's directory (O_RDONLY | O_DIRECTORY, CLOEXEC) by its
 * path, in the process that took it.  The descriptor, or -ESRCH on a leaf
 * not held (or taken in the process we were forked from), or -errno. */
int tbx__cgroup_open_dir(const tbx__cgroup *cg);

/* Parent side: moves pid into the leaf (a child that could not join itself,
 * such as a spawned program).  0 or -errno. */
int tbx__cgroup_move(const tbx__cgroup *cg, pid_t pid);

/* Kills every process in the leaf and its descendants (cgroup.kill, or
 * freezing it and killing each one where the kernel has no cgroup.kill),
 * then waits up to TBX__CGROUP_EMPTY_WAIT_NS until none is left and removes
 * any cgroup made below it.  0 once empty, -ETIMEDOUT or -errno otherwise.
 * The leaf is opened by its path (tbx__cgroup_open_dir); an empty one
 * costs two opens and one read. */
int tbx__cgroup_kill(tbx__cgroup *cg);

/* Gives the leaf back: reused if it is empty (clean), removed otherwise or
 * when the pool holds enough.  Closes procs_fd if still open.  No-op on a leaf
 * never taken. */
void tbx__cgroup_give(tbx__cgroup *cg, int clean);

/* Writes "TIMEBOX_CGROUP=<dir>" into buf when tbx_set_cgroup_root named a
 * directory (or "off"), for a forkserver this process starts; returns 1,
 * or 0 (the server inherits our environment as it is). */
int tbx__cgroup_root_env(char *buf, size_t len);

/* The end of a call's leaf: tbx__cgroup_kill, then tbx__cgroup_give (kept
 * for reuse if it emptied).  No-op on a leaf never taken. */
void tbx__cgroup_end(tbx__cgroup *cg);

/* Removes every idle leaf and the base (tbx_forkserver_stop, exit). */
void tbx__cgroup_cleanup(void);

#endif /* TBX_CGROUP_H */
