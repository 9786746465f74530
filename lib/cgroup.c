/*
 * Where per-call cgroups can live: the cgroup v2 mount, this process's own
 * cgroup, the directory the user named, and the base directory timebox makes
 * there ("timebox-<pid>").  The pool of leaves below the base is in
 * cgroup_pool.c.
 *
 * The base is chosen once, on first use, under the pool's lock:
 *   1. a directory named with tbx_set_cgroup_root() or TIMEBOX_CGROUP
 *      ("" or "off": none at all);
 *   2. else our own cgroup, if we may make a directory in it (root, or a
 *      subtree delegated to us: a systemd service with Delegate=yes, a user
 *      session's user@.service);
 *   3. else none: calls are contained by their process group (and the
 *      forkserver's subreaper, for its children).
 * A base that mkdir accepts is then tried for real: a short-lived child
 * moves itself into a first leaf, since moving a process also needs write
 * access to the cgroup.procs of the common ancestor, which mkdir does not
 * prove.
 */
#include "cgroup_impl.h"
#include "os.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

tbx__cgroup_state tbx__cg = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s)
{
    char *out = s;
    for (char *p = s; *p != '\0'; p++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' &&
            p[3] >= '0' && p[3] <= '7') {
            *out++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
            p += 3;
        } else {
            *out++ = *p;
        }
    }
    *out = '\0';
}

/* The whole of a small /proc file, NUL-terminated, in malloc'd memory. */
static char *slurp(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 8192, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        ssize_t n = tbx__read(fd, buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len + 1 == cap) {
            char *bigger = cap < ((size_t)1 << 24) ? realloc(buf, 2 * cap) : NULL;
            if (bigger == NULL)
                free(buf);
            buf = bigger;
            cap *= 2;
        }
    }
    tbx__close(fd);
    if (buf != NULL)
        buf[len] = '\0';
    return buf;
}

/* The first cgroup2 mount of mountinfo: its mount point and the cgroup path
 * its root shows.  0 or -ENOENT. */
static int find_mount(char *text, char *mount, size_t mount_len, char *root, size_t root_len)
{
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char *field[6] = {NULL}, *fsave = NULL, *tok;
        int n = 0, dash = 0;
        const char *fstype = NULL;
        for (tok = strtok_r(line, " ", &fsave); tok != NULL; tok = strtok_r(NULL, " ", &fsave)) {
            if (dash) {
                fstype = tok;
                break;
            }
            if (strcmp(tok, "-") == 0 && n >= 6)
                dash = 1;
            else if (n < 6)
                field[n++] = tok;
        }
        if (fstype == NULL || strcmp(fstype, "cgroup2") != 0)
            continue;
        unescape(field[3]);
        unescape(field[4]);
        if ((size_t)snprintf(mount, mount_len, "%s", field[4]) >= mount_len ||
            (size_t)snprintf(root, root_len, "%s", field[3]) >= root_len)
            return -ENAMETOOLONG;
        return 0;
    }
    return -ENOENT;
}

/* Our cgroup from /proc/self/cgroup's "0::/path" line, made relative to
 * the mount's root.  0 or -ENOENT. */
static int find_own(char *text, const char *root, char *own, size_t own_len)
{
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "0::", 3) != 0)
            continue;
        const char *path = line + 3;
        size_t rlen = strcmp(root, "/") == 0 ? 0 : strlen(root);
        if (rlen > 0 && (strncmp(path, root, rlen) != 0 || (path[rlen] != '/' && path[rlen])))
            return -ENOENT; /* our cgroup is not under what is mounted */
        path += rlen;
        if ((size_t)snprintf(own, own_len, "%s", *path != '\0' ? path : "/") >= own_len)
            return -ENAMETOOLONG;
        return 0;
    }
    return -ENOENT;
}

int tbx__cgroup_find(const char *mountinfo, const char *cgroup, char *mount, size_t mount_len,
                     char *own, size_t own_len)
{
    char root[PATH_MAX];
    char *mi = mountinfo != NULL ? strdup(mountinfo) : slurp("/proc/self/mountinfo");
    char *cg = cgroup != NULL ? strdup(cgroup) : slurp("/proc/self/cgroup");
    int rc = mi == NULL || cg == NULL ? (errno != 0 ? -errno : -ENOMEM) : 0;
    if (rc == 0)
        rc = find_mount(mi, mount, mount_len, root, sizeof root);
    if (rc == 0)
        rc = find_own(cg, root, own, own_len);
    free(mi);
    free(cg);
    return rc;
}

/* Removes dirfd's cgroups below it, deepest first (every one must be
 * empty).  Best effort: what cannot go stays. */
void tbx__cgroup_remove_below(int dirfd, int depth)
{
    if (depth > 32)
        return;
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        tbx__close(fd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_type != DT_DIR || strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (sub >= 0) {
            tbx__cgroup_remove_below(sub, depth + 1);
            tbx__close(sub);
        }
        (void)unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
    }
    closedir(d);
}

/* Removes the bases that processes gone without cleaning up left in dir
 * (killed, or ended with _exit): "timebox-<pid>[.<k>]" whose pid no longer
 * exists and in which nothing runs.  Best effort. */
static void remove_stale_bases(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char *end;
        if (e->d_type != DT_DIR || strncmp(e->d_name, "timebox-", 8) != 0)
            continue;
        long pid = strtol(e->d_name + 8, &end, 10);
        if (end == e->d_name + 8 || (*end != '\0' && *end != '.') || pid <= 0 ||
            pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;
        int busy = tbx__cgroup_is_populated(fd);
        if (busy == 0)
            tbx__cgroup_remove_below(fd, 0);
        tbx__close(fd);
        if (busy == 0)
            (void)unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR);
    }
    if (d != NULL)
        closedir(d);
}

/* Makes the base.  A directory of that name left by a dead process that
 * had our pid is reused once nothing runs in it; one in use (a process of
 * another pid namespace sharing this directory) is left alone and a
 * suffixed name tried.  0 or -errno. */
static int make_base(const char *dir)
{
    remove_stale_bases(dir);
    for (int k = 0; k < 8; k++) {
        int n = k == 0 ? snprintf(tbx__cg.base, sizeof tbx__cg.base, "%s/timebox-%d", dir,
                                  (int)getpid())
                       : snprintf(tbx__cg.base, sizeof tbx__cg.base, "%s/timebox-%d.%d", dir,
                                  (int)getpid(), k);
        if (n < 0 || (size_t)n >= sizeof tbx__cg.base)
            return -ENAMETOOLONG;
        if (mkdir(tbx__cg.base, 0755) == 0)
            return 0;
        if (errno != EEXIST)
            return -errno;
        int fd = open(tbx__cg.base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        int busy = tbx__cgroup_is_populated(fd);
        if (busy == 0)
            tbx__cgroup_remove_below(fd, 0);
        tbx__close(fd);
        if (busy == 0)
            return 0;
    }
    return -EEXIST;
}

/* A vfork child writes itself into procs; 0 if it could, else -errno. */
static int child_joins(int procs)
{
    int wstatus = 0;
    pid_t pid = vfork();
    if (pid == 0)
        _exit(tbx__cgroup_join(procs) == 0 ? 0 : 1);
    if (pid < 0)
        return -errno;
    if (tbx__reap(pid, &wstatus, 0) != 1 || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0)
        return -EACCES;
    return 0;
}

/* A child moves itself into leaf 0 and says whether it could; the leaf
 * is then the pool's first.  vfork: the child only writes and exits, so the
 * caller's size does not matter.  0 or -errno, with base and leaf removed. */
static int try_join(void)
{
    tbx__cgroup cg = TBX__CGROUP_INIT;
    if (tbx__cg.leaves == NULL && (tbx__cg.leaves = malloc(1)) == NULL)
        return -ENOMEM;
    int rc = tbx__cgroup_open_leaf(0, 1, &cg);
    if (rc == 0)
        rc = child_joins(cg.procs_fd);
    tbx__close(cg.procs_fd);
    if (rc != 0) {
        char leaf[PATH_MAX + 8];
        snprintf(leaf, sizeof leaf, "%s/c0", tbx__cg.base);
        (void)rmdir(leaf);
        (void)rmdir(tbx__cg.base);
        return rc;
    }
    tbx__cg.leaves[0] = TBX__LEAF_IDLE;
    tbx__cg.nleaves = 1;
    tbx__cg.idle = 1;
    return 0;
}

static const char *chosen_root(void)
{
    if (tbx__cg.root_set)
        return tbx__cg.root;
    return getenv("TIMEBOX_CGROUP");
}

static void cleanup_at_exit(void)
{
    tbx__cgroup_cleanup();
}

/* Chooses the base and tries it; with tbx__cg.lock held.  Sets
 * tbx__cg.available to 1 or -1. */
void tbx__cgroup_setup(void)
{
    char mount[PATH_MAX], own[PATH_MAX], dir[PATH_MAX];
    const char *root = chosen_root();
    int rc;

    tbx__cg.owner = getpid();
    tbx__cg.available = -1;
    if (root != NULL && (root[0] == '\0' || strcmp(root, "off") == 0))
        return;
    if (root != NULL) {
        struct statfs sf;
        if (statfs(root, &sf) != 0 || sf.f_type != CGROUP2_SUPER_MAGIC) {
            tbx__log(TBX_LOG_WARN, "cgroup root %s is not a cgroup v2 directory: "
                                   "calls are contained by their process group", root);
            return;
        }
        rc = snprintf(dir, sizeof dir, "%s", root) < (int)sizeof dir ? 0 : -ENAMETOOLONG;
    } else {
        rc = tbx__cgroup_find(NULL, NULL, mount, sizeof mount, own, sizeof own);
        if (rc == 0 && (size_t)snprintf(dir, sizeof dir, "%s%s", mount,
                                        strcmp(own, "/") == 0 ? "" : own) >= sizeof dir)
            rc = -ENAMETOOLONG;
    }
    if (rc == 0)
        rc = make_base(dir);
    if (rc == 0 && (rc = try_join()) != 0) {
        if (root != NULL)
            tbx__log(TBX_LOG_WARN, "cannot move processes into cgroups under %s (%s): "
                                   "calls are contained by their process group",
                     root, strerror(-rc));
        return;
    }
    if (rc != 0) {
        if (root != NULL)
            tbx__log(TBX_LOG_WARN, "cannot make cgroups under %s (%s): calls are "
                                   "contained by their process group", root, strerror(-rc));
        return;
    }
    tbx__cg.available = 1;
    if (!tbx__cg.atexit_done)
        tbx__cg.atexit_done = atexit(cleanup_at_exit) == 0;
}

int tbx__cgroup_available(void)
{
    pthread_mutex_lock(&tbx__cg.lock);
    tbx__cgroup_ensure();
    int ok = tbx__cg.available == 1;
    pthread_mutex_unlock(&tbx__cg.lock);
    return ok;
}

int tbx_set_cgroup_root(const char *dir)
{
    char *copy = dir != NULL ? strdup(dir) : NULL;
    if (dir != NULL && copy == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&tbx__cg.lock);
    int rc = 0;
    if (tbx__cg.owner == getpid() && tbx__cg.busy > 0) {
        rc = -EBUSY; /* calls in flight hold leaves of the present base */
        free(copy);
    } else {
        tbx__cgroup_cleanup_locked();
        free(tbx__cg.root);
        tbx__cg.root = copy;
        tbx__cg.root_set = dir != NULL;
        tbx__cg.owner = 0; /* chosen again on next use */
    }
    pthread_mutex_unlock(&tbx__cg.lock);
    return rc;
}

int tbx__cgroup_root_env(char *buf, size_t len)
{
    pthread_mutex_lock(&tbx__cg.lock);
    int n = tbx__cg.root_set ? snprintf(buf, len, "TIMEBOX_CGROUP=%s",
                                        tbx__cg.root[0] != '\0' ? tbx__cg.root : "off")
                             : -1;
    pthread_mutex_unlock(&tbx__cg.lock);
    return n > 0 && (size_t)n < len;
}

int tbx_containment(void)
{
    return tbx__cgroup_available() ? TBX_CONTAIN_CGROUP : TBX_CONTAIN_PGROUP;
}
