/*
 * What cgroup.c (the base) and cgroup_pool.c (the leaves) share.  Nothing
 * outside those two files includes this.
 */
#ifndef TBX_CGROUP_IMPL_H
#define TBX_CGROUP_IMPL_H

#include "cgroup.h"

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/types.h>

/* A leaf's state; its directory is base/c<slot>. */
enum { TBX__LEAF_NONE = 0, TBX__LEAF_IDLE, TBX__LEAF_BUSY, TBX__LEAF_DIRTY };

typedef struct tbx__cgroup_state {
    pthread_mutex_t lock;  /* guards all below */
    pid_t owner;           /* the process this state was set up in; 0: not
                              set up (a fork child sets itself up anew) */
    int available;         /* 1: base usable; -1: no cgroups here */
    int root_set;          /* tbx_set_cgroup_root was called: root rules */
    char *root;            /* its directory, or NULL (automatic) */
    int atexit_done;
    char base[PATH_MAX];   /* <dir>/timebox-<pid> */
    unsigned char *leaves; /* TBX__LEAF_* per slot */
    size_t nleaves;
    unsigned busy, idle;
    unsigned peak, peak_last; /* most busy at once, this epoch and the last */
    unsigned takes;           /* leaves taken, for the epochs */
} tbx__cgroup_state;

extern tbx__cgroup_state tbx__cg;

/* With the lock held: sets the state up for this process if it is not yet
 * (or was set up by the parent we were forked from). */
void tbx__cgroup_ensure(void);
/* With the lock held: chooses and tries the base (cgroup.c). */
void tbx__cgroup_setup(void);
/* With the lock held: removes idle and dirty leaves and, with no busy one
 * left, the base. */
void tbx__cgroup_cleanup_locked(void);
/* Opens base/c<slot>'s cgroup.procs into cg->procs_fd, making the leaf
 * first when fresh (no directory yet) or when it is not there.  0 or
 * -errno. */
int tbx__cgroup_open_leaf(size_t slot, int fresh, tbx__cgroup *cg);
/* Kills everything in the cgroup dirfd is and waits until it is empty.
 * 0 or -ETIMEDOUT / -errno. */
int tbx__cgroup_kill_dir(int dirfd);
/* 1 if a process is in the cgroup dirfd is or below it, 0 if none, or
 * -errno. */
int tbx__cgroup_is_populated(int dirfd);
/* Removes the (empty) cgroups below dirfd, deepest first. */
void tbx__cgroup_remove_below(int dirfd, int depth);

/* Tests: 1 makes tbx__cgroup_kill_dir freeze and kill each process, as on
 * kernels before cgroup.kill (5.14). */
extern int tbx__cgroup_no_kill_file;

#endif /* TBX_CGROUP_IMPL_H */
