/*
 * The spawn method: the child is a fresh program started with posix_spawn,
 * which in glibc is vfork-like, so its cost does not grow with the caller's
 * memory and it is safe in a threaded caller.  Everything the child needs is
 * prepared here, in the parent: file actions place the request socket on fd 3
 * and the result pipe on fd 4 and close the rest; attributes give the child
 * its own process group and, with reset_signals, default handlers and an
 * empty mask.  Between clone and exec only glibc runs; timebox allocates and
 * locks nothing there.  The worker reads its request from fd 3 (worker.c).
 */
#include "child.h"
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FIRST_FREE_FD 6 /* 3 request, 4 result, then backtrace */

extern char **environ;

/* The process default program, shared by reference so a launch never holds
 * the lock while it spawns. */
typedef struct spawn_config {
    atomic_int refs;
    char *path;
    char **argv;
} spawn_config;

static pthread_mutex_t config_lock = PTHREAD_MUTEX_INITIALIZER;
static spawn_config *config;

static void config_unref(spawn_config *cfg)
{
    if (cfg == NULL || atomic_fetch_sub(&cfg->refs, 1) != 1)
        return;
    for (char **a = cfg->argv; a != NULL && *a != NULL; a++)
        free(*a);
    free(cfg->argv);
    free(cfg->path);
    free(cfg);
}

static spawn_config *config_get(void)
{
    pthread_mutex_lock(&config_lock);
    spawn_config *cfg = config;
    if (cfg != NULL)
        atomic_fetch_add(&cfg->refs, 1);
    pthread_mutex_unlock(&config_lock);
    return cfg;
}

int tbx_set_spawn_executable(const char *executable, char *const *argv)
{
    spawn_config *cfg = NULL;
    if (executable != NULL) {
        size_t n = 0;
        while (argv != NULL && argv[n] != NULL)
            n++;
        cfg = calloc(1, sizeof *cfg);
        if (cfg == NULL)
            return -ENOMEM;
        atomic_init(&cfg->refs, 1);
        cfg->path = strdup(executable);
        cfg->argv = calloc(n + 2, sizeof *cfg->argv);
        int ok = cfg->path != NULL && cfg->argv != NULL;
        if (ok && n == 0)
            ok = (cfg->argv[0] = strdup(executable)) != NULL;
        for (size_t i = 0; ok && i < n; i++)
            ok = (cfg->argv[i] = strdup(argv[i])) != NULL;
        if (!ok) {
            config_unref(cfg);
            return -ENOMEM;
        }
    }
    pthread_mutex_lock(&config_lock);
    spawn_config *old = config;
    config = cfg;
    pthread_mutex_unlock(&config_lock);
    config_unref(old);
    return 0;
}

/* The caller's environment with `extra` (NAME=value strings) set in it. */
static char **env_with(const char *const *extra)
{
    size_t n = 0, k = 0, nx = 0;
    for (char **e = environ; e != NULL && *e != NULL; e++)
        n++;
    while (extra[nx] != NULL)
        nx++;
    char **env = malloc((n + nx + 1) * sizeof *env);
    if (env == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        int replaced = 0;
        for (size_t j = 0; j < nx && !replaced; j++) {
            size_t len = (size_t)(strchr(extra[j], '=') - extra[j]) + 1;
            replaced = strncmp(environ[i], extra[j], len) == 0;
        }
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < nx; j++)
        env[k++] = (char *)extra[j];
    env[k] = NULL;
    return env;
}

/* dup2 onto 3, 4, ... is safe only from descriptors above them all. */
static int lift(int *fd)
{
    if (*fd >= FIRST_FREE_FD)
        return 0;
    int nfd = fcntl(*fd, F_DUPFD_CLOEXEC, FIRST_FREE_FD);
    if (nfd < 0)
        return -errno;
    tbx__close(*fd);
    *fd = nfd;
    return 0;
}

int tbx__lift_fd(int *fd)
{
    return lift(fd);
}

int tbx__spawn(const tbx__spawn_spec *sp, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t set;
    short flags = POSIX_SPAWN_SETPGROUP;
    spawn_config *cfg = NULL;
    const char *path = sp->executable;
    char *const *argv = sp->argv;
    char *self_argv[2] = {NULL, NULL};
    int rc = 0;

    if (sp->nfds < 0 || sp->nfds > FIRST_FREE_FD - 3)
        return -EINVAL;
    for (int i = 0; i < sp->nfds; i++)
        if (sp->fds[i] < FIRST_FREE_FD)
            return -EINVAL; /* lift them first */
    if (path == NULL && (cfg = config_get()) != NULL) {
        path = cfg->path;
        argv = cfg->argv;
    }
    if (path == NULL)
        path = "/proc/self/exe";
    if (argv == NULL) {
        self_argv[0] = (char *)(sp->executable || cfg ? path : program_invocation_name);
        argv = self_argv;
    }
    char **env = env_with(sp->env);
    if (env == NULL) {
        config_unref(cfg);
        return -ENOMEM;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    for (int i = 0; rc == 0 && i < sp->nfds; i++)
        rc = posix_spawn_file_actions_adddup2(&fa, sp->fds[i], 3 + i);
    if (rc == 0 && sp->stdout_fd >= 0)
        rc = posix_spawn_file_actions_adddup2(&fa, sp->stdout_fd, 1);
    if (rc == 0 && sp->stderr_fd >= 0)
        rc = posix_spawn_file_actions_adddup2(&fa, sp->stderr_fd, 2);
    if (rc == 0)
        rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3 + sp->nfds);
    if (rc == 0)
        rc = posix_spawnattr_setpgroup(&attr, 0);
    if (rc == 0 && sp->reset_signals) {
        flags |= POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
        sigfillset(&set);
        rc = posix_spawnattr_setsigdefault(&attr, &set);
        sigemptyset(&set);
        if (rc == 0)
            rc = posix_spawnattr_setsigmask(&attr, &set);
    }
    if (rc == 0)
        rc = posix_spawnattr_setflags(&attr, flags);
    if (rc == 0)
        rc = tbx__sys.posix_spawn(pid, path, &fa, &attr, argv, env);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    config_unref(cfg);
    return -rc;
}

/* Moves the worker into a cgroup of the call's own, where one can be had.
 * posix_spawn gives no way to join one at birth (glibc 2.39's
 * posix_spawnattr_setcgroup_np would), so the parent moves it as soon as
 * posix_spawn returns: the program may have begun starting up, but fn
 * cannot have: it runs on a request not yet sent. */
static void contain(tbx__call *c, pid_t pid)
{
    c->containment = TBX_CONTAIN_PGROUP;
    if (!c->opts.contain || tbx__cgroup_take(&c->cgroup) != 0)
        return;
    int rc = tbx__cgroup_move(&c->cgroup, pid);
    tbx__close(c->cgroup.procs_fd); /* the leaf is reopened by its path to kill it */
    c->cgroup.procs_fd = -1;
    if (rc == 0) {
        c->containment = TBX_CONTAIN_CGROUP;
        return;
    }
    tbx__log(TBX_LOG_WARN, "could not move a spawned child into its cgroup (%s): its "
                           "process group contains the call", strerror(-rc));
    tbx__cgroup_give(&c->cgroup, 1);
}

static int spawn_launch(tbx__call *c, tbx__child *child)
{
    int sv[2] = {-1, -1}, res[2] = {-1, -1}, rc;
    /* The result comes back on a socket, as fork's: the worker makes a big
     * result's memfd itself and sends it with the header. */
    int bulk = c->opts.max_result >= TBX__BIG_PAYLOAD ? TBX__BULK_MAKE : -1;
    pid_t pid;

    if (tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return -errno;
    if (tbx__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, res) != 0)
        rc = -errno;
    else
        rc = 0;
    if (rc == 0)
        rc = lift(&sv[1]);
    if (rc == 0)
        rc = lift(&res[1]);
    /* The captured streams go onto 1 and 2, the backtrace pipe onto 5:
     * lifted above them first. */
    for (int i = 0; rc == 0 && i < TBX__NSTREAMS; i++)
        if (c->capture[i].child_fd >= 0)
            rc = lift(&c->capture[i].child_fd);
    if (rc == 0) {
        int bt = c->capture[TBX__BACKTRACE].child_fd;
        tbx__spawn_spec sp = {c->opts.executable, c->opts.argv, {sv[1], res[1]}, 2, NULL,
                              c->opts.reset_signals, c->capture[TBX__STDOUT].child_fd,
                              c->capture[TBX__STDERR].child_fd};
        int bt_at = bt >= 0 ? 3 + sp.nfds : -1;
        if (bt >= 0)
            sp.fds[sp.nfds++] = bt;
        /* request,result,backtrace,bulk (TBX__BULK_MAKE or none),caller:
         * tbx__worker_maybe_serve reads it (the caller: the parent the
         * worker dies with) */
        char var[80];
        (void)snprintf(var, sizeof var, "TIMEBOX_WORKER=3,4,%d,%d,%d", bt_at, bulk,
                       (int)getpid());
        const char *const env[] = {var, NULL};
        sp.env = env;
        rc = tbx__spawn(&sp, &pid);
    }
    tbx__close(sv[1]);
    tbx__close(res[1]);
    if (rc == 0)
        contain(c, pid);
    if (rc != 0) {
        /* glibc reports a failed exec here and has reaped that child. */
        tbx__close(sv[0]);
        tbx__close(res[0]);
        return rc;
    }
    child->pid = pid;
    child->result_fd = res[0];
    child->result_sock = 1;
    child->request_fd = sv[0];
    child->worker = 1; /* always START: its absence names a missing tbx_init */
    child->pidfd = tbx__pidfd_open(pid);
    if (child->pidfd == -ENOSYS || child->pidfd == -ESRCH) {
        child->pidfd = -1; /* as for fork: the engine polls, and finds it gone */
    } else if (child->pidfd < 0) {
        rc = child->pidfd;
        tbx__kill_reap(pid);
        tbx__cgroup_end(&c->cgroup);
        tbx__close(sv[0]);
        tbx__close(res[0]);
        return rc;
    }
    return 0;
}

/* A fresh program finds fn by name, and a pointer cannot cross an exec. */
const tbx__launcher tbx__launch_spawn = {
    .name = "spawn",
    .accepts = TBX__ACCEPTS_STREAMS,
    .not_started = "a child hook, or main() before tbx_init (does its main() call "
                   "tbx_init(argc, argv) first?)",
    .max_args = TBX__MAX_ARGS,
    .prepare = tbx__request_build,
    .launch = spawn_launch,
    TBX__OWN_CHILD,
};
