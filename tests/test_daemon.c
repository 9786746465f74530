/*
 * timebox-forkserver, the daemon, and one server per socket path: it says
 * "serving" only once it serves, every refusal says what is wrong and exits
 * non-zero, it keeps no stray descriptor, a second server on a live path is
 * refused, and a server removes only its own socket and key.  Issue 13,
 * items 6, 7 and 8 (the daemon's /dev/null).
 */
#define _GNU_SOURCE
#include "promises_util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char out[8192], err[8192];

/* Runs the daemon with args; returns its exit status, its output in out and
 * err. */
static int daemon_run(const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %s", TIMEBOX_FORKSERVER_PATH, args);
    return run_capture(cmd, out, sizeof out, err, sizeof err);
}

/* Starts a detached daemon on path; returns its pid (from its "pid N
 * serving" line).  The test is the subreaper that reaps it. */
static pid_t daemon_start(const char *path)
{
    char args[512];
    snprintf(args, sizeof args, "--socket '%s' --quiet", path);
    int st = daemon_run(args);
    cr_assert_eq(st, 0, "the daemon did not start (%d): %s", st, err);
    const char *p = strstr(err, "pid ");
    cr_assert_not_null(p, "no pid in '%s'", err);
    return (pid_t)atoi(p + 4);
}

static void daemon_stop(pid_t pid)
{
    cr_assert_eq(kill(pid, SIGTERM), 0);
    /* Detached, it is the subreaper's (ours) to reap. */
    double until = now_s() + 10;
    while (waitpid(pid, NULL, WNOHANG) == 0 && now_s() < until)
        sleep_s(0.01);
    cr_assert(wait_gone(pid, 1), "the daemon ignored SIGTERM");
}

/* Runs body(path) in a fresh process, so that this one keeps no
 * connection; returns its exit status (0: body returned 0). */
static int in_fresh_process(int (*body)(const char *), const char *path)
{
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        int rc = body(path);
        tbx_forkserver_stop();
        _exit(rc == 0 ? 0 : 1);
    }
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int attach(const char *path)
{
    return tbx_forkserver_attach(path, NULL, 0);
}

static int attach_elsewhere(const char *path)
{
    return in_fresh_process(attach, path);
}

/* 0 if a start of our own server on path is refused with -EADDRINUSE. */
static int start_is_addrinuse(const char *path)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.socket_path = path;
    return tbx_forkserver_start(&fo) == -EADDRINUSE ? 0 : 1;
}

TBX_PLAIN_TEST(daemon, help_and_bad_arguments)
{
    cr_assert_eq(daemon_run("--help"), 0, "%s", err);
    cr_assert_not_null(strstr(out, "usage: timebox-forkserver --socket PATH"), "'%s'", out);
    cr_assert_not_null(strstr(out, "--preload"), "'%s'", out);
    cr_assert_eq(daemon_run("--bogus"), 2);
    cr_assert_not_null(strstr(err, "unknown argument '--bogus'"), "'%s'", err);
    cr_assert_eq(daemon_run(""), 2);
    cr_assert_not_null(strstr(err, "--socket PATH is required"), "'%s'", err);
}

/* A directory others may enter, or someone else's: refused, and the
 * message names the path, its mode and its owner, in the foreground and
 * detached alike; nothing claims to serve. */
TBX_PLAIN_TEST(daemon, a_refusal_says_what_is_wrong)
{
    char dir[64], path[96], args[256], mode[16], owner[32];
    become_subreaper();
    for (int foreground = 0; foreground < 2; foreground++) {
        for (int kind = 0; kind < 2; kind++) {
            make_socket_dir(dir, sizeof dir, path, sizeof path);
            if (kind == 0) {
                cr_assert_eq(chmod(dir, 0777), 0);
            } else {
                cr_assert_eq(chown(dir, 65534, 65534), 0);
            }
            snprintf(args, sizeof args, "--socket '%s' --quiet%s", path,
                     foreground ? " --foreground" : "");
            int st = daemon_run(args);
            cr_assert_neq(st, 0, "started on an unsafe directory: %s", err);
            cr_assert_null(strstr(err, "serving"), "'%s'", err);
            cr_assert_not_null(strstr(err, dir), "no path in '%s'", err);
            snprintf(mode, sizeof mode, "%04o", kind == 0 ? 0777 : 0700);
            cr_assert_not_null(strstr(err, mode), "no mode %s in '%s'", mode, err);
            snprintf(owner, sizeof owner, "uid %d", kind == 0 ? (int)getuid() : 65534);
            cr_assert_not_null(strstr(err, owner), "no '%s' in '%s'", owner, err);
            reap_adopted(5);
            remove_tree(dir);
        }
    }
}

/* "serving" is printed once the socket answers, and the detached daemon
 * holds no descriptor but its own: /dev/null only on 0. */
TBX_PLAIN_TEST(daemon, serving_means_serving_and_no_stray_descriptor)
{
    char dir[64], path[96];
    become_subreaper();
    make_socket_dir(dir, sizeof dir, path, sizeof path);
    pid_t pid = daemon_start(path);
    cr_assert_not_null(strstr(err, "serving on "), "'%s'", err);
    cr_assert_eq(attach_elsewhere(path), 0, "serving, but no answer");
    char fddir[64], link[128], target[256];
    snprintf(fddir, sizeof fddir, "/proc/%d/fd", (int)pid);
    for (int fd = 3; fd < 64; fd++) {
        snprintf(link, sizeof link, "%s/%d", fddir, fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        cr_assert_neq(strcmp(target, "/dev/null"), 0, "the daemon keeps /dev/null on fd %d",
                      fd);
    }
    daemon_stop(pid);
    remove_tree(dir);
}

/* A second server on a path where one serves: refused with -EADDRINUSE (a
 * library start) or a message saying so (the daemon), and the first one is
 * still reachable with its key. */
TBX_PLAIN_TEST(server, second_server_on_a_live_path_is_refused)
{
    char dir[64], path[96], args[256];
    become_subreaper();
    make_socket_dir(dir, sizeof dir, path, sizeof path);
    pid_t first = daemon_start(path);
    snprintf(args, sizeof args, "--socket '%s' --quiet", path);
    cr_assert_neq(daemon_run(args), 0, "a second daemon started on a live path");
    cr_assert_not_null(strstr(err, path), "'%s'", err);
    cr_assert_not_null(strstr(err, "in use"), "'%s'", err);
    cr_assert_eq(in_fresh_process(start_is_addrinuse, path), 0,
                 "tbx_forkserver_start on a live path was not -EADDRINUSE");
    cr_assert_eq(attach_elsewhere(path), 0, "the first server is not reachable any more");
    daemon_stop(first);
    remove_tree(dir);
}

/* A server whose socket and key were replaced (removed by hand, a new
 * server started on the path) removes nothing of the new one's. */
TBX_PLAIN_TEST(server, removes_only_its_own_socket_and_key)
{
    char dir[64], path[96], key[128];
    become_subreaper();
    make_socket_dir(dir, sizeof dir, path, sizeof path);
    snprintf(key, sizeof key, "%s.key", path);
    pid_t first = daemon_start(path);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(unlink(key), 0);
    pid_t second = daemon_start(path);
    daemon_stop(first);
    cr_assert_eq(access(path, F_OK), 0, "the first server removed the second's socket");
    cr_assert_eq(access(key, F_OK), 0, "the first server removed the second's key");
    cr_assert_eq(attach_elsewhere(path), 0, "the second server is not reachable");
    daemon_stop(second);
    cr_assert_neq(access(path, F_OK), 0, "the second server left its socket");
    cr_assert_neq(access(key, F_OK), 0, "the second server left its key");
    remove_tree(dir);
}
