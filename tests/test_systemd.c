/*
 * timebox-forkserver under systemd: socket activation (sd_listen_fds) and
 * readiness (sd_notify), driven the way systemd drives them by
 * systemd-socket-activate (Debian's systemd package), without systemd
 * running.  Skipped, with a message, where systemd-socket-activate is absent.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct unit {
    char dir[64], sock[96], key[112], notify[96], log[96];
} unit;

static void unit_init(unit *u)
{
    snprintf(u->dir, sizeof u->dir, "/tmp/tbx-systemd-XXXXXX");
    cr_assert_not_null(mkdtemp(u->dir));
    snprintf(u->sock, sizeof u->sock, "%s/fs.sock", u->dir);
    snprintf(u->key, sizeof u->key, "%s/fs.sock.key", u->dir);
    snprintf(u->notify, sizeof u->notify, "%s/notify", u->dir);
    snprintf(u->log, sizeof u->log, "%s/log", u->dir);
}

static void unit_remove(const unit *u)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", u->dir);
    cr_assert_eq(system(cmd), 0);
}

/* systemd-socket-activate's path, or NULL (the test is then skipped). */
static const char *socket_activate(void)
{
    static const char *const where[] = {"/usr/bin/systemd-socket-activate",
                                        "/bin/systemd-socket-activate",
                                        "/lib/systemd/systemd-socket-activate"};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++)
        if (access(where[i], X_OK) == 0)
            return where[i];
    return NULL;
}

/* A datagram socket at path, where sd_notify sends its states. */
static int notify_socket(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "%s", strerror(errno));
    return fd;
}

/* Waits up to timeout_s for a state on the notify socket that holds want. */
static bool notified(int fd, const char *want, double timeout_s)
{
    double until = now_s() + timeout_s;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)((until - now_s()) * 1000);
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return false;
        char msg[256];
        ssize_t n = recv(fd, msg, sizeof msg - 1, 0);
        if (n <= 0)
            continue;
        msg[n] = '\0';
        if (strstr(msg, want) != NULL)
            return true;
    }
}

/* True once a socket listens at path (/proc/net/unix: "Num RefCount
 * Protocol Flags Type St Inode Path", Flags with __SO_ACCEPTCON, 0x10000),
 * found without connecting: a connection would start the daemon. */
static bool listening(const char *path)
{
    FILE *f = fopen("/proc/net/unix", "re");
    cr_assert_not_null(f);
    char line[512], name[256];
    unsigned flags;
    bool found = false;
    while (!found && fgets(line, sizeof line, f) != NULL)
        found = sscanf(line, "%*s %*s %*s %x %*s %*s %*s %255s", &flags, name) == 2 &&
                (flags & 0x10000) != 0 && strcmp(name, path) == 0;
    fclose(f);
    return found;
}

/* Starts systemd-socket-activate on u->sock (seqpacket or stream), which
 * runs the daemon at the first connection with the socket as fd 3 and
 * NOTIFY_SOCKET set, its stderr to u->log.  Returns its pid: it becomes the
 * daemon (it execs, it does not fork). */
static pid_t activate(const unit *u, const char *activator, int seqpacket)
{
    char notify_env[128], asan_env[512];
    snprintf(notify_env, sizeof notify_env, "NOTIFY_SOCKET=%s", u->notify);
    const char *asan = getenv("ASAN_OPTIONS");
    snprintf(asan_env, sizeof asan_env, "ASAN_OPTIONS=%s", asan != NULL ? asan : "");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* A failed assertion ends the test process: the daemon goes with it
         * (the signal survives both execs). */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
            _exit(127);
        int log = open(u->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (log < 0 || dup2(log, 2) < 0)
            _exit(127);
        const char *argv[16];
        int n = 0;
        argv[n++] = activator;
        if (seqpacket)
            argv[n++] = "--seqpacket";
        const char *rest[] = {"-l", u->sock, "-E", notify_env, "-E", asan_env,
                              TIMEBOX_FORKSERVER_PATH, "--socket", u->sock,
                              "--preload", TEST_PLUGIN_PATH, "--quiet", NULL};
        for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++)
            argv[n++] = rest[i];
        execv(activator, (char **)argv);
        _exit(127);
    }
    /* It binds, listens, then waits for a connection. */
    for (double until = now_s() + 10; !listening(u->sock); sleep_s(0.01))
        cr_assert_lt(now_s(), until, "systemd-socket-activate does not listen on %s", u->sock);
    return pid;
}

static int exit_status(pid_t pid, double timeout_s)
{
    int st;
    for (double until = now_s() + timeout_s;; sleep_s(0.01)) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        cr_assert_geq(r, 0);
        if (r == pid)
            break;
        if (now_s() > until) {
            kill(pid, SIGKILL);
            cr_assert_eq(waitpid(pid, &st, 0), pid);
            cr_assert_fail("pid %d did not exit", (int)pid);
        }
    }
    cr_assert(WIFEXITED(st), "status %#x", st);
    return WEXITSTATUS(st);
}

static bool log_says(const unit *u, const char *what)
{
    char buf[4096];
    int fd = open(u->log, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return strstr(buf, what) != NULL;
}

/* A daemon given a socket it cannot serve: started by the first connection,
 * it exits 1 saying why, and never says READY=1. */
static void expect_refusal(int seqpacket, const char *why)
{
    const char *activator = socket_activate();
    if (activator == NULL)
        cr_skip_test("systemd-socket-activate not found (Debian's systemd): not tested");
    unit u;
    unit_init(&u);
    int notify = notify_socket(u.notify);
    pid_t daemon = activate(&u, activator, seqpacket);
    int fd = socket(AF_UNIX, (seqpacket ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", u.sock);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "%s", strerror(errno));
    cr_assert_eq(exit_status(daemon, 10), 1);
    cr_assert(log_says(&u, why), "the daemon did not say: %s", why);
    cr_assert_not(notified(notify, "READY=1", 0.1), "READY=1 without serving");
    close(fd);
    close(notify);
    unit_remove(&u);
}

/* ------------------------------------------------------------------ tests */

#if TIMEBOX_HAVE_LIBSYSTEMD

TBX_PLAIN_TEST(socket_activation, serves_the_passed_socket_and_notifies)
{
    const char *activator = socket_activate();
    if (activator == NULL)
        cr_skip_test("systemd-socket-activate not found (Debian's systemd): not tested");
    unit u;
    unit_init(&u);
    int notify = notify_socket(u.notify);
    pid_t daemon = activate(&u, activator, 1);

    /* What the socket unit's ExecStartPost does: the key exists before the
     * first client reads it, and the daemon that client starts reuses it. */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' --socket '%s' --make-key", TIMEBOX_FORKSERVER_PATH, u.sock);
    cr_assert_eq(system(cmd), 0);
    struct stat st;
    cr_assert_eq(stat(u.key, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);

    void *plugin = dlopen(TEST_PLUGIN_PATH, RTLD_NOW);
    cr_assert_not_null(plugin, "%s", dlerror());
    tbx_fn *triple = (tbx_fn *)dlsym(plugin, "plugin_triple");
    cr_assert_not_null(triple);
    cr_assert_eq(tbx_forkserver_attach(u.sock, NULL, 0), 0, "the first connection");
    cr_assert_eq(tbx_forkserver_pid(), daemon, "not served by the activated daemon");
    cr_assert(notified(notify, "READY=1", 10), "no READY=1");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    assert_triples(triple, &o);

    /* SIGTERM: STOPPING=1, exit 0; the socket and its key are systemd's and
     * stay for the next start. */
    cr_assert_eq(kill(daemon, SIGTERM), 0);
    cr_assert(notified(notify, "STOPPING=1", 10), "no STOPPING=1");
    cr_assert_eq(exit_status(daemon, 10), 0);
    cr_assert_eq(access(u.sock, F_OK), 0, "the passed socket was removed");
    cr_assert_eq(access(u.key, F_OK), 0, "the key was removed");
    tbx_forkserver_stop(); /* drops our connection; the server was not ours */
    close(notify);
    dlclose(plugin);
    unit_remove(&u);
}

TBX_PLAIN_TEST(socket_activation, refuses_a_socket_of_the_wrong_kind)
{
    expect_refusal(0, "not a listening AF_UNIX SOCK_SEQPACKET socket"); /* a stream socket */
}

#else

TBX_PLAIN_TEST(socket_activation, says_it_is_unavailable)
{
    expect_refusal(1, "socket activation is unavailable");
}

#endif

/* --help says which of the two builds this is. */
TBX_PLAIN_TEST(socket_activation, help_says_whether_it_is_available)
{
    char cmd[512], out[8192];
    snprintf(cmd, sizeof cmd, "'%s' --help", TIMEBOX_FORKSERVER_PATH);
    FILE *p = popen(cmd, "re");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0);
    cr_assert_not_null(strstr(out, TIMEBOX_HAVE_LIBSYSTEMD
                                       ? "socket activation: available (libsystemd)"
                                       : "socket activation: unavailable (built without "
                                         "libsystemd)"),
                       "%s", out);
}
