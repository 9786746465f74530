/*
 * The per-call cgroups on their own (lib/cgroup.c, lib/cgroup_pool.c):
 * finding the cgroup v2 mount, lending a leaf, and killing everything in it,
 * setsid and double-fork daemons included.  Where this process can have no
 * cgroups (no cgroup v2, or no right to make one) the tests that need one
 * are skipped with a message.
 */
#define _GNU_SOURCE
#include "helpers.h"
#include "../lib/cgroup_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

static void need_cgroups(void)
{
    if (tbx_containment() != TBX_CONTAIN_CGROUP)
        cr_skip_test("this process cannot make cgroups (no cgroup v2, or not root and no "
                     "delegated subtree): per-call cgroups are not tested here");
}

TBX_PLAIN_TEST(cgroup, finds_the_mount_and_our_cgroup)
{
    char mount[PATH_MAX], own[PATH_MAX], path[2 * PATH_MAX + 32];
    int rc = tbx__cgroup_find(NULL, NULL, mount, sizeof mount, own, sizeof own);
    if (rc == -ENOENT)
        cr_skip_test("no cgroup v2 mount on this machine");
    cr_assert_eq(rc, 0, "tbx__cgroup_find: %s", strerror(-rc));
    struct statfs sf;
    cr_assert_eq(statfs(mount, &sf), 0, "%s: %s", mount, strerror(errno));
    cr_assert_eq(sf.f_type, CGROUP2_SUPER_MAGIC, "%s is not cgroup2", mount);
    cr_assert_eq(own[0], '/', "own cgroup %s", own);
    snprintf(path, sizeof path, "%s%s/cgroup.procs", mount, own);
    cr_assert_eq(access(path, F_OK), 0, "%s: %s", path, strerror(errno));
}

TBX_PLAIN_TEST(cgroup, parses_hybrid_pure_and_namespaced_layouts)
{
    char mount[PATH_MAX], own[PATH_MAX];
    const char *hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
                         "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                         "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 "
                         "cgroup2 rw\n";
    cr_assert_eq(tbx__cgroup_find(hybrid, "4:memory:/x\n0::/user.slice/a b\n", mount,
                                  sizeof mount, own, sizeof own), 0);
    cr_assert_str_eq(mount, "/sys/fs/cgroup/unified");
    cr_assert_str_eq(own, "/user.slice/a b");

    const char *pure = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    cr_assert_eq(tbx__cgroup_find(pure, "0::/\n", mount, sizeof mount, own, sizeof own), 0);
    cr_assert_str_eq(mount, "/sys/fs/cgroup");
    cr_assert_str_eq(own, "/");

    /* A container's bind mount of a subtree, with a space escaped. */
    const char *bound = "50 40 0:26 /machine/c1 /sys/fs/cg\\040v2 rw - cgroup2 cgroup2 rw\n";
    cr_assert_eq(tbx__cgroup_find(bound, "0::/machine/c1/app\n", mount, sizeof mount, own,
                                  sizeof own), 0);
    cr_assert_str_eq(mount, "/sys/fs/cg v2");
    cr_assert_str_eq(own, "/app");
    cr_assert_eq(tbx__cgroup_find(bound, "0::/machine/c10\n", mount, sizeof mount, own,
                                  sizeof own), -ENOENT, "a cgroup outside the mount");

    cr_assert_eq(tbx__cgroup_find("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n", "0::/\n", mount,
                                  sizeof mount, own, sizeof own), -ENOENT, "no cgroup2 mount");
    cr_assert_eq(tbx__cgroup_find(pure, "1:name=systemd:/\n", mount, sizeof mount, own,
                                  sizeof own), -ENOENT, "no 0:: line (cgroup v1 only)");
}

/* The child of the test, in the leaf: a grandchild that calls setsid() and
 * sleeps, and a great-grandchild that daemonizes (setsid, fork, the parent
 * exits); each writes its pid to wfd.  Then it sleeps too. */
__attribute__((noreturn)) static void escaping_family(int procs_fd, int wfd)
{
    if (tbx__cgroup_join(procs_fd) != 0)
        _exit(3);
    pid_t p = fork();
    if (p == 0) {
        setsid();
        pid_t me = getpid();
        (void)!write(wfd, &me, sizeof me);
        for (;;)
            pause();
    }
    p = fork();
    if (p == 0) {
        setsid();
        if (fork() != 0)
            _exit(0); /* the daemon's parent leaves it to init */
        pid_t me = getpid();
        (void)!write(wfd, &me, sizeof me);
        for (;;)
            pause();
    }
    for (;;)
        pause();
}

static void leaf_dir(const tbx__cgroup *cg, char *path, size_t len)
{
    snprintf(path, len, "%s/c%u", tbx__cg.base, cg->slot);
}

/* Runs escaping_family in a leaf, kills the leaf, and checks that all of
 * them are gone and the leaf empty. */
static void kill_family(void)
{
    need_cgroups();
    tbx__cgroup cg;
    int fds[2];
    cr_assert_eq(tbx__cgroup_take(&cg), 0);
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0)
        escaping_family(cg.procs_fd, fds[1]);
    close(fds[1]);
    pid_t escaped[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(read(fds[0], &escaped[i], sizeof escaped[i]), (ssize_t)sizeof escaped[i],
                     "the family did not start");
    close(fds[0]);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(kill(escaped[i], 0), 0, "pid %d should be running", (int)escaped[i]);
        cr_assert_neq(getsid(escaped[i]), getsid(0), "pid %d left our session", (int)escaped[i]);
    }

    cr_assert_eq(tbx__cgroup_kill(&cg), 0);
    int st;
    cr_assert_eq(waitpid(child, &st, 0), child);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child: status %#x", st);
    for (int i = 0; i < 2; i++)
        cr_assert(wait_gone(escaped[i], 0), "pid %d survived its cgroup's kill (state %c)",
                  (int)escaped[i], proc_state(escaped[i]));
    int dir = tbx__cgroup_open_dir(&cg);
    cr_assert_geq(dir, 0, "the leaf: %s", strerror(-dir));
    cr_assert_eq(tbx__cgroup_is_populated(dir), 0);
    close(dir);

    char path[PATH_MAX + 32];
    leaf_dir(&cg, path, sizeof path);
    tbx__cgroup_give(&cg, 1);
    tbx__cgroup_cleanup();
    cr_assert_eq(access(path, F_OK), -1, "%s is still there", path);
}

TBX_PLAIN_TEST(cgroup, kill_ends_setsid_and_daemonized_descendants)
{
    kill_family();
}

TBX_PLAIN_TEST(cgroup, kill_without_cgroup_kill_freezes_and_kills_each)
{
    tbx__cgroup_no_kill_file = 1;
    kill_family();
    tbx__cgroup_no_kill_file = 0;
}

/* A call that itself makes cgroups (a nested timebox call) leaves
 * directories in its leaf: killing the leaf removes them too. */
TBX_PLAIN_TEST(cgroup, kill_removes_cgroups_made_below_the_leaf)
{
    need_cgroups();
    tbx__cgroup cg;
    cr_assert_eq(tbx__cgroup_take(&cg), 0);
    int dir = tbx__cgroup_open_dir(&cg);
    cr_assert_geq(dir, 0, "the leaf: %s", strerror(-dir));
    cr_assert_eq(mkdirat(dir, "nested", 0755), 0);
    cr_assert_eq(mkdirat(dir, "nested/deeper", 0755), 0);
    int procs = openat(dir, "nested/deeper/cgroup.procs", O_WRONLY | O_CLOEXEC);
    cr_assert_geq(procs, 0);
    pid_t child = fork();
    if (child == 0) {
        if (tbx__cgroup_join(procs) != 0)
            _exit(3);
        for (;;)
            pause();
    }
    close(procs);
    /* The child is in "deeper" once populated says so. */
    for (int i = 0; i < 1000 && tbx__cgroup_is_populated(dir) != 1; i++)
        sleep_s(0.001);
    cr_assert_eq(tbx__cgroup_is_populated(dir), 1);
    cr_assert_eq(tbx__cgroup_kill(&cg), 0);
    int st;
    cr_assert_eq(waitpid(child, &st, 0), child);
    cr_assert(WIFSIGNALED(st), "the nested child was not killed: %#x", st);
    cr_assert_eq(faccessat(dir, "nested", F_OK, 0), -1, "the nested cgroup is still there");
    close(dir);
    tbx__cgroup_give(&cg, 1);
    tbx__cgroup_cleanup();
}

/* A lent leaf costs its call no descriptor once the child is in (the
 * launcher closes cgroup.procs): the call's end opens it by its path, which
 * only the process that took it may do; a leaf removed meanwhile from
 * outside was empty, and its kill succeeds. */
TBX_PLAIN_TEST(cgroup, a_lent_leaf_holds_no_descriptor)
{
    need_cgroups();
    int before = count_fds();
    tbx__cgroup cg;
    cr_assert_eq(tbx__cgroup_take(&cg), 0);
    close(cg.procs_fd); /* as a launcher does once its child is in */
    cg.procs_fd = -1;
    cr_assert_eq(count_fds(), before, "a lent leaf holds a descriptor");
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0)
        _exit(tbx__cgroup_open_dir(&cg) == -ESRCH ? 0 : 1);
    int st;
    cr_assert_eq(waitpid(child, &st, 0), child);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a fork child opened its parent's leaf");

    char path[PATH_MAX + 32];
    leaf_dir(&cg, path, sizeof path);
    cr_assert_eq(rmdir(path), 0, "%s: %s", path, strerror(errno));
    cr_assert_eq(tbx__cgroup_kill(&cg), 0);
    tbx__cgroup_give(&cg, 1);
    cr_assert_eq(tbx__cgroup_take(&cg), 0, "the leaf is made again");
    tbx__cgroup_give(&cg, 1);
    tbx__cgroup_cleanup();
    cr_assert_eq(count_fds(), before);
}

static int count_leaves(void)
{
    char path[PATH_MAX + 32];
    int dirs = 0;
    for (unsigned i = 0; i < 64; i++) {
        snprintf(path, sizeof path, "%s/c%u", tbx__cg.base, i);
        dirs += access(path, F_OK) == 0;
    }
    return dirs;
}

/* Leaves are reused: the same one comes back once given back empty; calls in
 * flight each have their own; as many idle ones are kept as were busy at
 * once lately (at least 8), and the pool shrinks back to 8 two epochs of
 * 1,024 takes after its peak; cleanup removes the base. */
TBX_PLAIN_TEST(cgroup, pool_lends_distinct_leaves_and_keeps_a_few)
{
    need_cgroups();
    tbx__cgroup a, b, many[20];
    cr_assert_eq(tbx__cgroup_take(&a), 0);
    unsigned slot = a.slot;
    tbx__cgroup_give(&a, 1);
    cr_assert_eq(tbx__cgroup_take(&a), 0);
    cr_assert_eq(a.slot, slot, "an idle leaf is reused");
    cr_assert_eq(tbx__cgroup_take(&b), 0);
    cr_assert_neq(b.slot, a.slot, "two calls in flight share a leaf");
    tbx__cgroup_give(&a, 1);
    tbx__cgroup_give(&b, 0); /* not clean: removed */
    char path[PATH_MAX + 32];
    leaf_dir(&b, path, sizeof path);
    cr_assert_eq(access(path, F_OK), -1, "a leaf given back dirty is removed");

    for (int i = 0; i < 20; i++)
        cr_assert_eq(tbx__cgroup_take(&many[i]), 0);
    for (int i = 0; i < 20; i++)
        tbx__cgroup_give(&many[i], 1);
    int dirs = count_leaves();
    cr_assert_eq(dirs, 20, "%d idle leaves kept after 20 calls in flight", dirs);
    /* One call at a time from now on: the peak of 20 is forgotten two
     * epochs later, and the leaves beyond 8 go as calls give theirs back. */
    for (int i = 0; i < 2 * 1024 + 32; i++) {
        cr_assert_eq(tbx__cgroup_take(&a), 0);
        tbx__cgroup_give(&a, 1);
    }
    dirs = count_leaves();
    cr_assert_eq(dirs, 8, "%d idle leaves kept long after the peak", dirs);

    char base[PATH_MAX];
    snprintf(base, sizeof base, "%s", tbx__cg.base);
    tbx__cgroup_cleanup();
    cr_assert_eq(access(base, F_OK), -1, "%s is still there after cleanup", base);
    /* And the next call sets the base up again. */
    cr_assert_eq(tbx__cgroup_take(&a), 0);
    tbx__cgroup_give(&a, 1);
    tbx__cgroup_cleanup();
}

/* "off" (or "") turns cgroups off; a directory that is not cgroup v2 is
 * refused with a warning; NULL goes back to the automatic choice. */
TBX_PLAIN_TEST(cgroup, root_can_be_named_or_turned_off)
{
    need_cgroups();
    cr_assert_eq(tbx_set_cgroup_root("off"), 0);
    cr_assert_eq(tbx_containment(), TBX_CONTAIN_PGROUP);
    tbx__cgroup cg;
    cr_assert_eq(tbx__cgroup_take(&cg), -ENOENT);
    cr_assert_eq(tbx_set_cgroup_root("/tmp"), 0);
    cr_assert_eq(tbx_containment(), TBX_CONTAIN_PGROUP, "/tmp is not a cgroup");

    char mount[PATH_MAX], own[PATH_MAX], dir[2 * PATH_MAX + 64];
    cr_assert_eq(tbx__cgroup_find(NULL, NULL, mount, sizeof mount, own, sizeof own), 0);
    snprintf(dir, sizeof dir, "%s%s/tbx-test-root-%d", mount, strcmp(own, "/") ? own : "",
             (int)getpid());
    cr_assert_eq(mkdir(dir, 0755), 0, "%s: %s", dir, strerror(errno));
    cr_assert_eq(tbx_set_cgroup_root(dir), 0);
    cr_assert_eq(tbx_containment(), TBX_CONTAIN_CGROUP);
    cr_assert_eq(tbx__cgroup_take(&cg), 0);
    cr_assert_eq(strncmp(tbx__cg.base, dir, strlen(dir)), 0, "base %s not under %s",
                 tbx__cg.base, dir);
    cr_assert_eq(tbx_set_cgroup_root(NULL), -EBUSY, "changed while a leaf is lent");
    tbx__cgroup_give(&cg, 1);
    cr_assert_eq(tbx_set_cgroup_root(NULL), 0);
    cr_assert_eq(rmdir(dir), 0, "%s: %s (timebox left something in it)", dir, strerror(errno));
    cr_assert_eq(tbx_containment(), TBX_CONTAIN_CGROUP);
    tbx__cgroup_cleanup();
}

/* A base left by a process that is gone (killed, or ended with _exit) is
 * removed when a process next sets up its own beside it. */
TBX_PLAIN_TEST(cgroup, stale_bases_of_dead_processes_are_removed)
{
    need_cgroups();
    char mount[PATH_MAX], own[PATH_MAX], stale[2 * PATH_MAX + 64], leaf[2 * PATH_MAX + 96];
    cr_assert_eq(tbx__cgroup_find(NULL, NULL, mount, sizeof mount, own, sizeof own), 0);
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    int st;
    cr_assert_eq(waitpid(dead, &st, 0), dead);
    snprintf(stale, sizeof stale, "%s%s/timebox-%d", mount, strcmp(own, "/") ? own : "",
             (int)dead);
    snprintf(leaf, sizeof leaf, "%s/c0", stale);
    cr_assert_eq(mkdir(stale, 0755), 0, "%s: %s", stale, strerror(errno));
    cr_assert_eq(mkdir(leaf, 0755), 0, "%s: %s", leaf, strerror(errno));
    tbx__cgroup_cleanup(); /* our own base goes: the next take sets up anew */
    tbx__cgroup cg;
    cr_assert_eq(tbx__cgroup_take(&cg), 0);
    tbx__cgroup_give(&cg, 1);
    int left = access(stale, F_OK) == 0;
    if (left) { /* not to leave it to the next run */
        (void)rmdir(leaf);
        (void)rmdir(stale);
    }
    cr_assert(!left, "%s was left", stale);
    tbx__cgroup_cleanup();
}
