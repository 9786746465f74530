/*
 * timebox-forkserver: one forkserver shared by the programs of one user (or
 * of the uids it allows), as a daemon.  It serves the functions that the
 * shared objects it preloads register with TBX_REGISTER.
 */
#include "cgroup.h"
#include "forkserver/forkserver.h"
#include "forkserver/sd_daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static const char usage[] =
    "usage: timebox-forkserver --socket PATH [options]\n"
    "\n"
    "Runs a timebox forkserver that several processes share: it forks the\n"
    "children of their TBX_FORKSERVER calls from one small, clean process, so\n"
    "that no caller forks itself, whatever its size or threads.\n"
    "\n"
    "  --socket PATH          listen on this Unix socket (required).  Its directory\n"
    "                         is made with mode 0700 if missing, and must otherwise\n"
    "                         belong to you and be closed to others.  The secret key\n"
    "                         clients must prove they know is written to PATH.key\n"
    "                         (mode 0600); a client reads it there, or takes it from\n"
    "                         TIMEBOX_FORKSERVER_KEY.\n"
    "  --preload LIB.so       load a shared object before serving (repeatable): the\n"
    "                         functions it registers are what the server can run,\n"
    "                         and its TBX_PRELOAD hooks run once, here\n"
    "  --max-children N       children alive at once, over all clients (default 1024)\n"
    "  --max-per-client N     children alive at once per connection (default: no\n"
    "                         limit beyond --max-children)\n"
    "  --allow-uid UID        also let this user in (repeatable; default: only your\n"
    "                         own uid)\n"
    "  --request-timeout S    seconds a client has to send a request or finish its\n"
    "                         handshake (default 10)\n"
    "  --cgroup DIR           make each child's cgroup under this cgroup v2\n"
    "                         directory (delegated to you), so that nothing a call\n"
    "                         starts outlives it, setsid or not (default: the\n"
    "                         server's own cgroup when it may write there, as root\n"
    "                         or under systemd's Delegate=yes; TIMEBOX_CGROUP too)\n"
    "  --make-key             only write PATH.key (a new key, mode 0600, owned by the\n"
    "                         socket's owner when run as root) if it is missing,\n"
    "                         and exit: a socket unit does this so that clients\n"
    "                         find the key before the first of them starts the\n"
    "                         daemon\n"
    "  --foreground           stay in the foreground (default: detach once serving)\n"
    "  --quiet                do not log refused clients\n"
    "  --help                 this text\n"
    "\n"
    "Clients attach with tbx_forkserver_attach(PATH, NULL, 0), or by setting\n"
    "TIMEBOX_FORKSERVER_SOCKET=PATH before their first TBX_FORKSERVER call.\n"
    "SIGTERM stops it: its children are killed, its socket and key removed.\n"
    "It logs to stderr.\n"
    "\n"
    "Socket activation (timebox-forkserver@.socket): it serves the listening\n"
    "SOCK_SEQPACKET socket systemd passes; --socket may then be left out, and\n"
    "--foreground is implied.  Such a socket, and its PATH.key, belong to the\n"
    "service manager and outlive the daemon: an existing key of ours is reused,\n"
    "neither is removed.  It tells systemd READY=1 once serving (Type=notify)\n"
    "and STOPPING=1 when it stops.\n";

static unsigned parse_count(const char *opt, const char *v)
{
    char *end;
    unsigned long n = strtoul(v, &end, 10);
    if (*v == '\0' || *end != '\0' || n == 0 || n > 1u << 20) {
        fprintf(stderr, "timebox-forkserver: %s wants a positive number, not '%s'\n", opt, v);
        exit(2);
    }
    return (unsigned)n;
}

static char preload[8192];
static size_t preload_len;

static int key_only; /* --make-key */

/* The socket systemd passed, if any, and its path (its key file is beside
 * it).  0, or 1 after saying why it cannot be served. */
static int take_passed_socket(tbx__fs_config *cfg)
{
    static char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    struct sockaddr_un sa;
    socklen_t len = sizeof sa;
    const size_t off = offsetof(struct sockaddr_un, sun_path);
    int fd;
    if (tbx__sd_listen_fd(&fd) != 0)
        return 1;
    cfg->listen_fd = fd;
    if (fd < 0)
        return 0;
    memset(&sa, 0, sizeof sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0 || len <= off + 1 ||
        sa.sun_path[0] == '\0') {
        fprintf(stderr, "timebox-forkserver: the passed socket has no path, so no place "
                        "for its key\n");
        return 1;
    }
    memcpy(path, sa.sun_path, len - off);
    if (cfg->listen_path != NULL && strcmp(cfg->listen_path, path) != 0) {
        fprintf(stderr, "timebox-forkserver: --socket %s, but the passed socket is %s\n",
                cfg->listen_path, path);
        return 1;
    }
    cfg->listen_path = path;
    return 0;
}

/* --make-key.  An existing key is kept: clients may hold it. */
static int make_key(const char *socket_path)
{
    char file[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
    uint8_t key[TBX__KEY_LEN];
    struct stat st;
    snprintf(file, sizeof file, "%s.key", socket_path);
    int rc = tbx__random(key, sizeof key);
    if (rc == 0)
        rc = tbx__key_write(file, key);
    if (rc == -EEXIST)
        return 0;
    if (rc == 0 && geteuid() == 0 && stat(socket_path, &st) == 0 &&
        chown(file, st.st_uid, st.st_gid) != 0)
        rc = -errno;
    if (rc != 0)
        fprintf(stderr, "timebox-forkserver: %s: %s\n", file, tbx_strerror(rc));
    return rc == 0 ? 0 : 1;
}

static int add_preload(tbx__fs_config *cfg, const char *v)
{
    size_t n = strlen(v);
    if (preload_len + n + 2 > sizeof preload || strchr(v, '\n') != NULL) {
        fprintf(stderr, "timebox-forkserver: too many or odd --preload names\n");
        return 2;
    }
    memcpy(preload + preload_len, v, n);
    preload_len += n;
    preload[preload_len++] = '\n';
    cfg->preload = preload;
    return -1;
}

static int add_uid(tbx__fs_config *cfg, const char *v)
{
    if (cfg->nallow == TBX__MAX_ALLOW) {
        fprintf(stderr, "timebox-forkserver: at most %d --allow-uid\n", TBX__MAX_ALLOW);
        return 2;
    }
    char *end;
    unsigned long uid = strtoul(v, &end, 10);
    if (*v == '\0' || *end != '\0') {
        fprintf(stderr, "timebox-forkserver: --allow-uid wants a number, not '%s'\n", v);
        return 2;
    }
    cfg->allow[cfg->nallow++] = (uid_t)uid;
    return -1;
}

/* --cgroup, tried now, so that a directory that cannot work is refused
 * with its reason (logged) rather than served without. */
static int set_cgroup(const char *v)
{
    if (tbx_set_cgroup_root(v) != 0 || tbx_containment() != TBX_CONTAIN_CGROUP) {
        fprintf(stderr, "timebox-forkserver: --cgroup %s: cannot make cgroups there and move "
                        "processes into them\n", v);
        return 1;
    }
    tbx__cgroup_cleanup(); /* made again by the serving process */
    return -1;
}

/* One option a, with its value v if it takes one.  -1 to go on, or the exit
 * code. */
static int option(tbx__fs_config *cfg, int *foreground, const char *a, const char *v)
{
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
        printf("%s\n%s.\n", usage, tbx__sd_support);
        return 0;
    } else if (strcmp(a, "--socket") == 0) {
        cfg->listen_path = v;
    } else if (strcmp(a, "--preload") == 0) {
        return add_preload(cfg, v);
    } else if (strcmp(a, "--max-children") == 0) {
        cfg->max_children = parse_count(a, v);
    } else if (strcmp(a, "--max-per-client") == 0) {
        cfg->max_per_client = parse_count(a, v);
    } else if (strcmp(a, "--allow-uid") == 0) {
        return add_uid(cfg, v);
    } else if (strcmp(a, "--request-timeout") == 0) {
        double s = strtod(v, NULL);
        if (!(s > 0 && s < 86400)) {
            fprintf(stderr, "timebox-forkserver: --request-timeout wants seconds\n");
            return 2;
        }
        cfg->request_timeout_ns = (uint64_t)(s * 1e9);
    } else if (strcmp(a, "--cgroup") == 0) {
        return set_cgroup(v);
    } else if (strcmp(a, "--make-key") == 0) {
        key_only = 1;
    } else if (strcmp(a, "--foreground") == 0) {
        *foreground = 1;
    } else if (strcmp(a, "--quiet") == 0) {
        cfg->verbose = 0;
    } else {
        fprintf(stderr, "timebox-forkserver: unknown argument '%s'\n\n%s", a, usage);
        return 2;
    }
    return -1;
}

/* The command line into cfg: -1 to go on, or the exit code. */
static int parse(tbx__fs_config *cfg, int *foreground, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = strcmp(a, "--socket") == 0 || strcmp(a, "--preload") == 0 ||
                    strcmp(a, "--max-children") == 0 || strcmp(a, "--max-per-client") == 0 ||
                    strcmp(a, "--allow-uid") == 0 || strcmp(a, "--request-timeout") == 0 ||
                    strcmp(a, "--cgroup") == 0;
        if (takes && v == NULL) {
            fprintf(stderr, "timebox-forkserver: %s wants a value\n\n%s", a, usage);
            return 2;
        }
        int rc = option(cfg, foreground, a, v);
        if (rc >= 0)
            return rc;
        i += takes;
    }
    if (key_only && cfg->listen_path != NULL)
        return make_key(cfg->listen_path);
    if (!key_only && take_passed_socket(cfg) != 0)
        return 1;
    *foreground |= cfg->listen_fd >= 0; /* its supervisor waits on this pid */
    if (cfg->listen_path == NULL) {
        fprintf(stderr, "timebox-forkserver: --socket PATH is required\n\n%s", usage);
        return 2;
    }
    return -1;
}

int main(int argc, char **argv)
{
    static tbx__fs_config cfg;
    int foreground = 0;

    cfg.conn = -1;
    cfg.ready_fd = -1;
    cfg.listen_fd = -1;
    cfg.notify = tbx__sd_notify;
    cfg.verbose = 1;
    int rc = parse(&cfg, &foreground, argc, argv);
    if (rc >= 0)
        return rc;
    if (tbx__random(cfg.key, sizeof cfg.key) != 0) {
        perror("timebox-forkserver: getrandom");
        return 1;
    }
    cfg.write_key = 1;

    /* Either way, the caller hears only once the server serves, or why not. */
    int ready[2];
    if (tbx__sys.pipe2(ready, O_CLOEXEC) != 0) {
        perror("timebox-forkserver: pipe");
        return 1;
    }
    pid_t pid = foreground ? 0 : tbx__sys.fork();
    if (pid < 0) {
        perror("timebox-forkserver: fork");
        return 1;
    }
    if (pid == 0) {
        tbx__close(ready[0]);
        if (!foreground) {
            (void)setsid();
            int null = open("/dev/null", O_RDWR | O_CLOEXEC);
            if (null > 0) {
                (void)dup2(null, 0);
                tbx__close(null);
            }
        }
        cfg.ready_fd = foreground ? -1 : ready[1];
        if (foreground)
            tbx__close(ready[1]);
        cfg.announce = 1; /* "serving" once it does, not before */
        tbx__fs_server_run(&cfg); /* never returns */
    }
    tbx__close(ready[1]);
    int32_t code = TBX_EEXITED;
    ssize_t n = tbx__read(ready[0], &code, sizeof code);
    if (n != (ssize_t)sizeof code || code != 0) {
        /* It exits once it has said why: reaped here, not left to whoever
         * adopts it. */
        int wstatus;
        (void)tbx__reap(pid, &wstatus, 0);
        fprintf(stderr, "timebox-forkserver: could not start on %s: %s\n", cfg.listen_path,
                n != (ssize_t)sizeof code ? "it exited"
                : code == TBX_EFAILED     ? "a --preload or a preload hook failed (see above)"
                                          : tbx_strerror(code));
        return 1;
    }
    return 0;
}
