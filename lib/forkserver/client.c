/*
 * The forkserver's client side: start the server (or attach to a shared
 * one), hand it each call, restart it when it has died, keep warm children.
 * The launcher that uses it is launch_forkserver.c.
 *
 * The process holds one connection to its server (SOCK_SEQPACKET: one
 * message per call, so threads and loops share it without a lock around the
 * send).  A call sends one message carrying two fds: the server's end of a
 * fresh control socket and the write end of the result pipe.  The request
 * then goes down the control socket like spawn's, and the launcher watches the
 * control socket for LAUNCHED and EXITED (launch_forkserver.c).
 *
 * A read-write lock guards the connection: calls hold it shared while they
 * send, so a restart or stop (exclusive) never closes the descriptor under a
 * sender, nor lets its number be reused by another open meanwhile.
 */
#include "forkserver/client.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define START_TIMEOUT_MS 120000 /* preload hooks may load a model */
#define STOP_TIMEOUT_MS 5000

static pthread_rwlock_t fs_lock = PTHREAD_RWLOCK_INITIALIZER;
static int fs_conn = -1;
static pid_t fs_pid;   /* the server, once known */
static pid_t fs_owner; /* the process that started it: only it stops or reaps
                          it (a forked worker inherits the connection) */
static uint8_t fs_key[TBX__KEY_LEN];
static int fs_have_key;

#define SOCKET_ENV "TIMEBOX_FORKSERVER_SOCKET"
#define KEY_ENV "TIMEBOX_FORKSERVER_KEY"
#define CONNECT_TIMEOUT_S 10.0

void tbx_forkserver_opts_init(tbx_forkserver_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->request_timeout_s = 10;
}

/* A process forked by the program (a pre-forked worker) keeps the
 * connection it inherits, but not the warm slots: their children wait for
 * the parent's calls.  The locks, which another thread may have held at the
 * fork, start afresh. */
static void atfork_child(void)
{
    pthread_rwlock_init(&fs_lock, NULL);
    tbx__fs_client_start_forget();
    tbx__fs_client_warm_forget();
    tbx__fs_client_pool_forget();
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void forget_for_call(void);

static void atfork_register(void)
{
    tbx__forget_register(TBX__FORGET_FORKSERVER, atfork_child, forget_for_call);
}

static void free_argv(char **argv)
{
    for (char **a = argv; a != NULL && *a != NULL; a++)
        free(*a);
    free(argv);
}

/* What a start needs, made from its options and kept across restarts. */
typedef struct fs_settings {
    char *limits, *preload, *listen, *allow, *exe, **argv;
    unsigned warm;
} fs_settings;

static fs_settings fs_set; /* the last explicit start's, kept for restarts */

static void settings_free(fs_settings *st)
{
    free(st->limits);
    free(st->preload);
    free(st->listen);
    free(st->allow);
    free(st->exe);
    free_argv(st->argv);
    memset(st, 0, sizeof *st);
}

static int same_string(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static int settings_same(const fs_settings *a, const fs_settings *b)
{
    size_t i = 0;
    if (!same_string(a->limits, b->limits) || !same_string(a->preload, b->preload) ||
        !same_string(a->listen, b->listen) || !same_string(a->allow, b->allow) ||
        !same_string(a->exe, b->exe) || a->warm != b->warm ||
        (a->argv == NULL) != (b->argv == NULL))
        return 0;
    for (; a->argv != NULL && a->argv[i] != NULL; i++)
        if (!same_string(a->argv[i], b->argv[i]))
            return 0;
    return a->argv == NULL || b->argv[i] == NULL;
}

/* Turns opts into settings (st zeroed first).  0, TBX_EINVAL, -ENOMEM or
 * -ENAMETOOLONG, with nothing held on error. */
static int settings_make(const tbx_forkserver_opts *o, fs_settings *st)
{
    char limits[96], allow[16 * 12 + 32];
    size_t len = 1, n = 0;
    memset(st, 0, sizeof *st);
    st->warm = o->warm_children;
    snprintf(limits, sizeof limits, "%s=%u:%llu:%u", TBX__FS_LIMITS_VAR, o->max_children,
             (unsigned long long)(o->request_timeout_s > 0 ? o->request_timeout_s * 1000 : 0),
             o->max_per_client);
    if (o->nallow_uids > TBX__MAX_ALLOW)
        return TBX_EINVAL;
    size_t at = (size_t)snprintf(allow, sizeof allow, "%s=", TBX__FS_ALLOW_VAR);
    for (size_t i = 0; i < o->nallow_uids; i++)
        at += (size_t)snprintf(allow + at, sizeof allow - at, "%s%u", i ? "," : "",
                               (unsigned)o->allow_uids[i]);
    if (o->socket_path != NULL &&
        strlen(o->socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return -ENAMETOOLONG;
    for (const char *const *p = o->preload; p != NULL && *p != NULL; p++) {
        if (strchr(*p, '\n') != NULL)
            return TBX_EINVAL;
        len += strlen(*p) + 1;
    }
    int ok = (st->preload = malloc(sizeof TBX__FS_PRELOAD_VAR + len)) != NULL;
    if (ok) {
        strcpy(st->preload, TBX__FS_PRELOAD_VAR "=");
        for (const char *const *p = o->preload; p != NULL && *p != NULL; p++)
            strcat(strcat(st->preload, *p), "\n");
    }
    if (ok && o->socket_path != NULL &&
        (ok = (st->listen = malloc(sizeof TBX__FS_LISTEN_VAR + strlen(o->socket_path) + 1)) !=
              NULL))
        sprintf(st->listen, "%s=%s", TBX__FS_LISTEN_VAR, o->socket_path);
    if (ok && o->executable != NULL)
        ok = (st->exe = strdup(o->executable)) != NULL;
    while (ok && o->argv != NULL && o->argv[n] != NULL)
        n++;
    if (ok && o->argv != NULL) {
        ok = (st->argv = calloc(n + 1, sizeof *st->argv)) != NULL;
        for (size_t i = 0; ok && i < n; i++)
            ok = (st->argv[i] = strdup(o->argv[i])) != NULL;
    }
    if (ok)
        ok = (st->limits = strdup(limits)) != NULL && (st->allow = strdup(allow)) != NULL;
    if (!ok) {
        settings_free(st);
        return -ENOMEM;
    }
    return 0;
}

/* Keeps opts' settings for this start and the restarts after it. */
static int remember(const tbx_forkserver_opts *o)
{
    fs_settings st;
    int rc = settings_make(o, &st);
    if (rc != 0)
        return rc;
    settings_free(&fs_set);
    fs_set = st;
    tbx__fs_client_warm_set(st.warm);
    tbx__fs_client_pool_set(o->pool_size, o->pool_max_calls);
    return 0;
}

/* A start asked of a running server: the same options (NULL: the
 * defaults) are what it already has, 0; others cannot be applied to it,
 * -EBUSY. */
static int running_matches(const tbx_forkserver_opts *o)
{
    tbx_forkserver_opts defaults;
    fs_settings want, have = fs_set;
    tbx_forkserver_opts_init(&defaults);
    int rc = settings_make(o != NULL ? o : &defaults, &want);
    if (rc != 0)
        return rc;
    int made = have.limits == NULL; /* attached, never started: the defaults */
    if (made && (rc = settings_make(&defaults, &have)) != 0) {
        settings_free(&want);
        return rc;
    }
    rc = settings_same(&want, &have) ? 0 : -EBUSY;
    settings_free(&want);
    if (made)
        settings_free(&have);
    return rc;
}

/* Waits for the server's first word: it serves, or why it will not. */
static int await_ready(int conn, pid_t pid)
{
    struct pollfd p = {conn, POLLIN, 0};
    uint64_t until = tbx__now_ns() + (uint64_t)START_TIMEOUT_MS * 1000000u;
    for (;;) {
        uint64_t now = tbx__now_ns();
        int r = now >= until ? 0 : poll(&p, 1, (int)((until - now) / 1000000u) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            (void)kill(pid, SIGKILL);
            return -ETIMEDOUT;
        }
        tbx__hello ready;
        int nfds = 0;
        ssize_t n = tbx__recv_fds(conn, &ready, sizeof ready, NULL, &nfds, 0);
        if (n == (ssize_t)sizeof ready && ready.magic == TBX__HELLO_MAGIC)
            return (int)ready.kind; /* 0, or the reason it refused */
        return TBX_EEXITED; /* it exited first: no tbx_init in main()? */
    }
}

/* Ends the server we started: the connection closes, SIGTERM asks, SIGKILL
 * insists.  Our own child: we reap it. */
static void stop_locked(void)
{
    int wstatus;
    if (fs_conn < 0)
        return;
    tbx__fs_client_warm_drop(); /* their children die with the connection's server */
    tbx__fs_client_pool_drop();
    tbx__close(fs_conn);
    fs_conn = -1;
    if (fs_owner != getpid()) {
        /* Attached, or inherited: the server is not ours to end. */
        fs_pid = 0;
        return;
    }
    (void)kill(fs_pid, SIGTERM);
    for (int waited = 0; tbx__reap(fs_pid, &wstatus, 1) == 0; waited++) {
        if (waited == STOP_TIMEOUT_MS) {
            (void)kill(fs_pid, SIGKILL);
            (void)tbx__reap(fs_pid, &wstatus, 0);
            break;
        }
        usleep(1000);
    }
    fs_pid = 0;
}

static int start_locked(void)
{
    int sv[2], rc;
    pid_t pid;
    if (fs_conn >= 0)
        return 0;
    if (fs_set.limits == NULL) {
        tbx_forkserver_opts o;
        tbx_forkserver_opts_init(&o);
        if ((rc = remember(&o)) != 0)
            return rc;
    }
    if (!fs_have_key) {
        if ((rc = tbx__random(fs_key, sizeof fs_key)) != 0)
            return rc;
        fs_have_key = 1;
    }
    if (tbx__sys.socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return -errno;
    rc = tbx__lift_fd(&sv[1]);
    if (rc == 0) {
        /* tbx_set_cgroup_root's choice goes to the server, which makes the
         * cgroups of its children. */
        char cg_env[PATH_MAX + 32];
        const char *vars[] = {fs_set.limits, fs_set.preload, fs_set.allow, fs_set.listen,
                              tbx__cgroup_root_env(cg_env, sizeof cg_env) ? cg_env : NULL};
        const char *env[7] = {TBX__FS_VAR "=3"};
        for (size_t i = 0, k = 1; i < sizeof vars / sizeof vars[0]; i++)
            if (vars[i] != NULL)
                env[k++] = vars[i];
        tbx__spawn_spec sp = {fs_set.exe, fs_set.argv, {sv[1]}, 1, env, 1, -1, -1};
        rc = tbx__spawn(&sp, &pid);
    }
    tbx__close(sv[1]);
    if (rc != 0) {
        tbx__close(sv[0]);
        return rc;
    }
    /* The key goes down the private connection, never through argv or the
     * environment of the server. */
    tbx__keymsg km = {TBX__AUTH_MAGIC, {0}};
    memcpy(km.key, fs_key, sizeof km.key);
    ssize_t sent = tbx__send_fds(sv[0], &km, sizeof km, NULL, 0, 0);
    memset(&km, 0, sizeof km);
    /* A server gone before it took its key exited before serving, as one
     * gone before its first word. */
    if (sent == -EPIPE || sent == -ECONNRESET)
        sent = TBX_EEXITED;
    rc = sent == (ssize_t)sizeof km ? await_ready(sv[0], pid) : (int)sent;
    if (rc != 0) {
        tbx__close(sv[0]);
        tbx__kill_reap(pid);
        return rc;
    }
    fs_conn = sv[0];
    fs_pid = pid;
    fs_owner = getpid();
    if (fs_set.listen != NULL) {
        /* Processes this one starts find the shared server without code. */
        char hex[2 * TBX__KEY_LEN + 1];
        tbx__key_format(fs_key, hex);
        setenv(SOCKET_ENV, strchr(fs_set.listen, '=') + 1, 1);
        setenv(KEY_ENV, hex, 1);
    }
    return 0;
}

/* Reads a shared server's key: given, or $TIMEBOX_FORKSERVER_KEY, or the
 * file PATH.key that timebox-forkserver writes beside its socket. */
static int load_key(const char *path, const void *key, size_t key_len, uint8_t out[TBX__KEY_LEN])
{
    if (key != NULL) {
        if (key_len != TBX__KEY_LEN)
            return TBX_EINVAL;
        memcpy(out, key, TBX__KEY_LEN);
        return 0;
    }
    const char *hex = getenv(KEY_ENV);
    if (hex != NULL)
        return tbx__key_parse(hex, out);
    char file[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
    snprintf(file, sizeof file, "%s.key", path);
    return tbx__key_read(file, out, 0);
}

static int attach_locked(const char *path, const void *key, size_t key_len)
{
    uint8_t k[TBX__KEY_LEN];
    int rc = load_key(path, key, key_len, k);
    if (rc != 0)
        return rc;
    int fd = tbx__fs_client_connect(path, k, CONNECT_TIMEOUT_S);
    memset(k, 0, sizeof k);
    if (fd < 0)
        return fd;
    stop_locked(); /* a connection we had (inherited, say) is dropped */
    struct ucred cred;
    socklen_t len = sizeof cred;
    fs_conn = fd;
    fs_pid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? cred.pid : 0;
    fs_owner = 0;
    return 0;
}

int tbx_forkserver_attach(const char *path, const void *key, size_t key_len)
{
    if (path == NULL || path[0] == '\0')
        return TBX_EINVAL;
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return -ENAMETOOLONG; /* never truncated to someone else's socket */
    pthread_once(&atfork_once, atfork_register);
    pthread_rwlock_wrlock(&fs_lock);
    int rc = attach_locked(path, key, key_len);
    pthread_rwlock_unlock(&fs_lock);
    return rc;
}

/* A connection for the next call: the shared server named in the
 * environment, if this process did not start one; else our own. */
static int connect_locked(void)
{
    const char *path = getenv(SOCKET_ENV);
    if (fs_conn >= 0)
        return 0;
    if (path != NULL && fs_owner != getpid())
        return attach_locked(path, NULL, 0);
    return start_locked();
}

int tbx_forkserver_start(const tbx_forkserver_opts *opts)
{
    int rc = 0, running;
    pthread_once(&atfork_once, atfork_register);
    tbx__fs_client_start_idle(); /* a start under way keeps its settings */
    pthread_rwlock_wrlock(&fs_lock);
    running = fs_conn >= 0;
    if (!running && opts != NULL)
        rc = remember(opts);
    else if (running)
        rc = running_matches(opts);
    /* The pool is this process's, not the server's: its options apply to a
     * running server too (running_matches does not compare them). */
    if (rc == 0 && running && opts != NULL)
        tbx__fs_client_pool_set(opts->pool_size, opts->pool_max_calls);
    pthread_rwlock_unlock(&fs_lock);
    if (rc == 0 && !running)
        rc = tbx__fs_client_start_wait();
    if (rc == 0)
        tbx__fs_client_warm_fill();
    if (rc == 0)
        tbx__fs_client_pool_fill();
    return rc;
}

void tbx_forkserver_stop(void)
{
    tbx__fs_client_start_idle(); /* else the start would bring it back */
    pthread_rwlock_wrlock(&fs_lock);
    stop_locked();
    pthread_rwlock_unlock(&fs_lock);
    /* The end of timebox's use, as far as the caller says: its idle
     * cgroups go too (made again by the next call). */
    tbx__cgroup_cleanup();
}

pid_t tbx_forkserver_pid(void)
{
    pthread_rwlock_rdlock(&fs_lock);
    pid_t pid = fs_conn >= 0 ? fs_pid : 0;
    pthread_rwlock_unlock(&fs_lock);
    return pid;
}

/* The connection's side of a hand-over, for client_start.c. */
int tbx__fs_client_ensure(void)
{
    pthread_once(&atfork_once, atfork_register);
    pthread_rwlock_wrlock(&fs_lock);
    int rc = connect_locked();
    pthread_rwlock_unlock(&fs_lock);
    return rc;
}

int tbx__fs_client_send(uint32_t kind, uint32_t flags, uint32_t arg, const int *fds, int nfds,
                        uint64_t until, int *ret_conn, pid_t *ret_server)
{
    tbx__hello hello = {TBX__HELLO_MAGIC, kind, flags, arg};
    pthread_rwlock_rdlock(&fs_lock);
    *ret_conn = fs_conn;
    *ret_server = fs_pid;
    int rc = fs_conn >= 0 ? tbx__fs_client_send_hello(fs_conn, &hello, fds, nfds, until)
                          : -ENOTCONN;
    pthread_rwlock_unlock(&fs_lock);
    return rc;
}

int tbx__fs_client_alive(void)
{
    pthread_rwlock_rdlock(&fs_lock);
    struct pollfd p = {fs_conn, POLLRDHUP, 0};
    int alive = fs_conn >= 0 && poll(&p, 1, 0) >= 0 &&
                !(p.revents & (POLLRDHUP | POLLHUP | POLLERR));
    pthread_rwlock_unlock(&fs_lock);
    return alive;
}

void tbx__fs_client_drop(int conn)
{
    pthread_rwlock_wrlock(&fs_lock);
    if (fs_conn == conn)
        stop_locked();
    pthread_rwlock_unlock(&fs_lock);
}

/* A call's child: the parent's server is not its own, in any sense. */
static void forget_for_call(void)
{
    /* A fork child: the parent's server is not our child to reap, and its
     * lock may have been held by a thread that does not exist here. */
    if (fs_conn >= 0)
        tbx__close(fs_conn);
    fs_conn = -1;
    fs_pid = 0;
    fs_owner = 0;
    pthread_rwlock_init(&fs_lock, NULL);
    tbx__fs_client_start_forget();
    tbx__fs_client_warm_forget();
    tbx__fs_client_warm_set(0); /* a child's calls are cold, unless it asks */
    tbx__fs_client_pool_forget();
    tbx__fs_client_pool_set(0, 0);
}
