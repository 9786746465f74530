/*
 * The forkserver process's life: preloads and hooks, the loop, readiness,
 * and shutdown (SIGTERM, or the creator gone).  The server as a whole is
 * described in server.h.
 */
#include "forkserver/server.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------- the server */

/* Removes the socket if it is still the one we bound (same device and
 * inode: our bound socket holds its inode, so the number cannot pass to a
 * new file while we live): a server started on the path since, after ours
 * was removed, keeps its own. */
static void unlink_own_socket(const char *path, const struct stat *own)
{
    struct stat st;
    if (lstat(path, &st) == 0 && st.st_dev == own->st_dev && st.st_ino == own->st_ino)
        (void)unlink(path);
}

/* Removes the key file if it still holds our key.  Its inode says nothing:
 * no one holds a key file open, so once ours is removed by hand the next
 * file made in its directory may get the same number. */
static void unlink_own_key(const char *socket_path, const uint8_t own[TBX__KEY_LEN])
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
    uint8_t key[TBX__KEY_LEN];
    snprintf(path, sizeof path, "%s.key", socket_path);
    if (tbx__key_read(path, key, 1) == 0 && memcmp(key, own, sizeof key) == 0)
        (void)unlink(path);
}

void tbx__fs_server_shutdown(fs_server *srv)
{
    if (srv->cfg->notify != NULL)
        srv->cfg->notify("STOPPING=1");
    for (fs_call *c = srv->calls; c != NULL; c = c->next) {
        if (c->running && !c->reaped)
            tbx__kill_reap(c->pid);
        tbx__cgroup_end(&c->cgroup);
    }
    tbx__cgroup_cleanup();
    if (srv->subreaper)
        tbx__fs_server_reap_orphans(NULL, 0);
    if (srv->have_socket)
        unlink_own_socket(srv->cfg->listen_path, &srv->socket_st);
    if (srv->have_key)
        unlink_own_key(srv->cfg->listen_path, srv->cfg->key);
    _exit(0);
}

static void term_cb(uv_signal_t *h, int signum)
{
    TBX__UNUSED(signum);
    tbx__fs_server_shutdown(h->data);
}

static int load_preloads(const char *preload)
{
    if (preload == NULL)
        return 0;
    char *list = strdup(preload), *save = NULL;
    if (list == NULL)
        return -ENOMEM;
    for (char *p = strtok_r(list, "\n", &save); p != NULL; p = strtok_r(NULL, "\n", &save)) {
        if (dlopen(p, RTLD_NOW | RTLD_GLOBAL) == NULL) {
            fprintf(stderr, "timebox forkserver: %s\n", dlerror());
            free(list);
            return TBX_EFAILED;
        }
    }
    free(list);
    return 0;
}

/* The daemon's key, beside its socket in the directory only we can enter,
 * and mode 0600 from birth.  A passed socket outlives us, and so does its key
 * (a client may have read it before we started): one of ours is kept, and
 * not removed at exit. */
static int write_key(fs_server *srv, char *why, size_t why_len)
{
    const tbx__fs_config *cfg = srv->cfg;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
    snprintf(path, sizeof path, "%s.key", cfg->listen_path);
    if (cfg->listen_fd >= 0 && tbx__key_read(path, srv->cfg->key, 1) == 0)
        return 0;
    (void)unlink(path); /* a dead server's: the socket beside it was ours to take */
    int rc = tbx__key_write(path, cfg->key);
    if (rc == 0)
        srv->have_key = 1;
    else
        snprintf(why, why_len, "cannot write the key %s: %s", path, strerror(-rc));
    return rc;
}

static void report_ready(const tbx__fs_config *cfg, int rc)
{
    if (cfg->conn >= 0) {
        tbx__hello ready = {TBX__HELLO_MAGIC, (uint32_t)rc, 0, 0};
        if (tbx__send_fds(cfg->conn, &ready, sizeof ready, NULL, 0, 0) < 0)
            _exit(1);
    }
    if (cfg->ready_fd >= 0) {
        int32_t code = rc;
        (void)tbx__write_all(cfg->ready_fd, &code, sizeof code);
        tbx__close(cfg->ready_fd);
    }
    if (rc != 0)
        _exit(1);
    if (cfg->notify != NULL)
        cfg->notify("READY=1");
}

void tbx__fs_server_run(tbx__fs_config *cfg)
{
    static fs_server srv;
    int rc;
    srv.cfg = cfg;
    srv.listen_fd = -1;
    srv.max_children = cfg->max_children ? cfg->max_children : DEFAULT_MAX_CHILDREN;
    srv.request_timeout_ns =
        cfg->request_timeout_ns ? cfg->request_timeout_ns : DEFAULT_REQUEST_TIMEOUT_NS;
    signal(SIGPIPE, SIG_IGN);
    /* Where the server can have no cgroups, the orphans its children leave
     * come to it (see server_orphans.c). */
    srv.subreaper = !tbx__cgroup_available() && tbx__fs_server_become_subreaper() == 0;
    rc = load_preloads(cfg->preload);
    if (rc == 0 && tbx__run_preload_hooks() != 0)
        rc = TBX_EFAILED;
    if (rc == 0 && uv_loop_init(&srv.loop) != 0)
        rc = -ENOMEM;
    char why[TBX__MAX_MESSAGE + 1] = "";
    if (rc == 0 && cfg->listen_fd >= 0) {
        srv.listen_fd = cfg->listen_fd; /* passed (systemd): not ours to remove */
    } else if (rc == 0 && cfg->listen_path != NULL) {
        srv.listen_fd = tbx__fs_server_listen(cfg->listen_path, cfg->nallow > 0, &srv.socket_st,
                                              why, sizeof why);
        if (srv.listen_fd < 0)
            rc = srv.listen_fd;
        else
            srv.have_socket = 1;
    }
    if (rc == 0 && cfg->write_key)
        rc = write_key(&srv, why, sizeof why);
    /* The daemon's user hears why it will not serve, or that it does. */
    if (rc != 0 && why[0] != '\0' && cfg->conn < 0)
        fprintf(stderr, "timebox-forkserver: %s\n", why);
    if (rc == 0 && cfg->announce)
        fprintf(stderr, "timebox-forkserver: pid %d serving on %s\n", (int)getpid(),
                cfg->listen_path);
    if (rc != 0 && srv.have_socket) {
        unlink_own_socket(cfg->listen_path, &srv.socket_st);
        srv.have_socket = 0;
    }
    report_ready(cfg, rc);
    if (cfg->conn >= 0 && tbx__fs_server_client_new(&srv, cfg->conn, 1) == NULL)
        _exit(1);
    if (srv.listen_fd >= 0) {
        uv_poll_init(&srv.loop, &srv.listen_poll, srv.listen_fd);
        srv.listen_poll.data = &srv;
        uv_poll_start(&srv.listen_poll, UV_READABLE, tbx__fs_server_listen_cb);
    }
    uv_signal_init(&srv.loop, &srv.term);
    srv.term.data = &srv;
    uv_signal_start(&srv.term, term_cb, SIGTERM);
    /* What the children must put back: the server's dispositions, set by
     * now (libuv's, ours, its preload hooks'), do not change while it
     * serves. */
    sigemptyset(&srv.handled);
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL)
            sigaddset(&srv.handled, sig);
    }
    /* The loop's timer descriptor stays for the server's life: a deadline
     * this far off never fires, and without it every call would make the
     * timerfd again (the last deadline to go closes it). */
    tbx__deadline_init(&srv.keep_timer, NULL);
    (void)tbx__deadline_start(&srv.keep_timer, &srv.loop, UINT64_MAX / 2);
    tbx__fs_server_note_static_fds(&srv);
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    tbx__fs_server_shutdown(&srv);
}

/* A server spawned by tbx_forkserver_start: its options come through the
 * environment (its argv is the program's own), its key as the first message
 * on its connection. */
void tbx__fs_server_maybe_serve(void)
{
    static tbx__fs_config cfg;
    static char listen_path[108];
    const char *v = getenv(TBX__FS_VAR);
    const char *limits = getenv(TBX__FS_LIMITS_VAR);
    const char *allow = getenv(TBX__FS_ALLOW_VAR);
    const char *path = getenv(TBX__FS_LISTEN_VAR);
    unsigned long long timeout_ms = 0;
    char tail;
    if (v == NULL || sscanf(v, "%d%c", &cfg.conn, &tail) != 1)
        return;
    /* Placed by spawn without close-on-exec: a program a preload hook or the
     * server runs (system(), exec) must not inherit the creator's
     * connection. */
    (void)fcntl(cfg.conn, F_SETFD, FD_CLOEXEC);
    if (limits != NULL && sscanf(limits, "%u:%llu:%u", &cfg.max_children, &timeout_ms,
                                 &cfg.max_per_client) != 3)
        cfg.max_children = 0, timeout_ms = 0, cfg.max_per_client = 0;
    cfg.request_timeout_ns = timeout_ms * 1000000ull;
    for (const char *p = allow; p != NULL && *p != '\0' && cfg.nallow < TBX__MAX_ALLOW;) {
        char *end;
        unsigned long uid = strtoul(p, &end, 10);
        if (end == p)
            break;
        cfg.allow[cfg.nallow++] = (uid_t)uid;
        p = *end == ',' ? end + 1 : end;
    }
    if (path != NULL && strlen(path) < sizeof listen_path) {
        strcpy(listen_path, path);
        cfg.listen_path = listen_path;
    }
    const char *preload = getenv(TBX__FS_PRELOAD_VAR);
    cfg.preload = preload != NULL ? strdup(preload) : NULL;
    cfg.ready_fd = -1;
    cfg.listen_fd = -1;
    cfg.verbose = 1;
    tbx__keymsg km;
    int nfds = 0;
    if (tbx__recv_fds(cfg.conn, &km, sizeof km, NULL, &nfds, 0) != (ssize_t)sizeof km ||
        km.magic != TBX__AUTH_MAGIC)
        _exit(1);
    memcpy(cfg.key, km.key, sizeof cfg.key);
    /* Nothing of the server's set-up reaches the functions it runs. */
    unsetenv(TBX__FS_VAR);
    unsetenv(TBX__FS_LIMITS_VAR);
    unsetenv(TBX__FS_ALLOW_VAR);
    unsetenv(TBX__FS_LISTEN_VAR);
    unsetenv(TBX__FS_PRELOAD_VAR);
    tbx__fs_server_run(&cfg);
}
