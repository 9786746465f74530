/*
 * One forkserver shared by many processes, and kept safe from its
 * neighbours: other uids, wrong keys, clients that die mid-call, the daemon.
 */
#define _GNU_SOURCE
#include "helpers.h"
#include "../lib/forkserver/forkserver.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <timebox/uv.h>
#include <unistd.h>

/* A fresh directory for a socket: /tmp/tbx-shared-XXXXXX (mode 0700). */
static void socket_dir(char *dir, size_t len, char *path, size_t plen)
{
    snprintf(dir, len, "/tmp/tbx-shared-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, plen, "%s/fs.sock", dir);
}

static void remove_dir(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static tbx_forkserver_opts shared_opts(const char *path)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.socket_path = path;
    return fo;
}

/* A shared server of this process's, on a socket in a fresh directory. */
static void start_shared(char *dir, size_t len, char *path, size_t plen)
{
    socket_dir(dir, len, path, plen);
    tbx_forkserver_opts fo = shared_opts(path);
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
}

/* Stops it, forgets what it put in the environment, removes the directory. */
static void end_shared(const char *dir)
{
    stop_forkserver();
    unsetenv("TIMEBOX_FORKSERVER_SOCKET");
    unsetenv("TIMEBOX_FORKSERVER_KEY");
    remove_dir(dir);
}

/* One call of fn_echo through the forkserver this process uses. */
static int echo_call(const char *word, double timeout, tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "s", word);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = timeout;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* Runs body in a forked process; returns its exit status (0: good). */
static int in_process(int (*body)(void *), void *arg)
{
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0)
        _exit(body(arg));
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    cr_assert(WIFEXITED(st), "helper process status %#x", st);
    return WEXITSTATUS(st);
}

/* ------------------------------------------------------ sharing it */

static int worker_calls(void *arg)
{
    int n = *(int *)arg;
    /* A process the creator started: the environment names the server.
     * Forget the connection inherited from the fork, so the test is of the
     * path and the key, as for a program the creator exec'd. */
    if (tbx_forkserver_attach(getenv("TIMEBOX_FORKSERVER_SOCKET"), NULL, 0) != 0)
        return 10;
    for (int i = 0; i < n; i++) {
        tbx_result r;
        int rc = echo_call("w", 30, &r);
        int ok = rc == 0 && obj_str_eq(&r.value, "w");
        tbx_result_free(&r);
        if (!ok)
            return 11;
    }
    return 0;
}

TBX_PLAIN_TEST(shared, processes_share_one_server)
{
    char dir[64], path[96];
    start_shared(dir, sizeof dir, path, sizeof path);
    cr_assert_str_eq(getenv("TIMEBOX_FORKSERVER_SOCKET"), path);
    cr_assert_not_null(getenv("TIMEBOX_FORKSERVER_KEY"));
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0600, "socket mode %o", st.st_mode & 0777);
    cr_assert_eq(stat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0700, "directory mode %o", st.st_mode & 0777);

    int n = 20;
    pid_t kids[4];
    for (int i = 0; i < 4; i++) {
        kids[i] = fork();
        cr_assert_geq(kids[i], 0);
        if (kids[i] == 0)
            _exit(worker_calls(&n));
    }
    for (int i = 0; i < 4; i++) {
        int st2;
        cr_assert_eq(waitpid(kids[i], &st2, 0), kids[i]);
        cr_assert(WIFEXITED(st2) && WEXITSTATUS(st2) == 0, "worker %d: status %#x", i, st2);
    }
    /* And a worker forked from the creator may just use what it inherited. */
    pid_t w = fork();
    cr_assert_geq(w, 0);
    if (w == 0) {
        tbx_result r;
        int rc = echo_call("inherited", 30, &r);
        _exit(rc == 0 && obj_str_eq(&r.value, "inherited") ? 0 : 1);
    }
    int st3;
    cr_assert_eq(waitpid(w, &st3, 0), w);
    cr_assert(WIFEXITED(st3) && WEXITSTATUS(st3) == 0);
    stop_forkserver();
    cr_assert_neq(access(path, F_OK), 0, "the socket outlived its server");
    unsetenv("TIMEBOX_FORKSERVER_SOCKET");
    unsetenv("TIMEBOX_FORKSERVER_KEY");
    remove_dir(dir);
}

/* ------------------------------------------------ keeping others out */

/* Prints its args' string to stdout and packs it (a pooled call's output
 * through a shared server). */
static int fn_print(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    printf("%.*s", (int)args->via.str.size, args->via.str.ptr);
    return msgpack_pack_object(pk, *args);
}
TBX_REGISTER(fn_print);

/* The parent of pid, from /proc; 0 if it cannot be read. */
static pid_t parent_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    size_t n = f != NULL ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f != NULL)
        fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    int ppid = 0;
    return p != NULL && sscanf(p + 1, " %*c %d", &ppid) == 1 ? (pid_t)ppid : 0;
}

/* A client of a shared server, attached by its path: TBX_POOL calls, each
 * captured, all served by one pooled process the server forked for this
 * client.  Sets *pid to that process; 0 if all went as said. */
static int pool_client(pid_t *pid)
{
    if (tbx_forkserver_attach(getenv("TIMEBOX_FORKSERVER_SOCKET"), NULL, 0) != 0)
        return 10;
    pid_t first = 0;
    for (int i = 0; i < 10; i++) {
        msgpack_sbuffer sb;
        char word[16];
        snprintf(word, sizeof word, "w%d", i);
        pack(&sb, "s", word);
        tbx_opts o = test_opts(TBX_POOL);
        o.timeout_s = 30;
        o.capture_output = 64;
        tbx_result r;
        int rc = tbx_call(fn_print, sb.data, sb.size, &o, &r);
        msgpack_sbuffer_destroy(&sb);
        int ok = rc == 0 && obj_str_eq(&r.value, word) && r.stdout_data != NULL &&
                 strcmp(r.stdout_data, word) == 0 && r.pool_fate == TBX_POOL_KEPT &&
                 (first == 0 || r.pid == first);
        first = first == 0 ? r.pid : first;
        tbx_result_free(&r);
        if (!ok)
            return 11 + i;
    }
    *pid = first;
    return 0;
}

/* TBX_POOL works for a shared server's clients: each client's calls go to
 * pooled processes the server forked (its children), its own, kept
 * between its calls; output capture included. */
TBX_PLAIN_TEST(shared, clients_get_pooled_processes_of_their_own)
{
    char dir[64], path[96];
    start_shared(dir, sizeof dir, path, sizeof path);
    pid_t server = tbx_forkserver_pid();
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        kids[i] = fork();
        cr_assert_geq(kids[i], 0);
        if (kids[i] == 0) {
            /* What it found, then it waits, attached (its pooled process
             * lives as long as it does), until the test has looked. */
            pid_t got[2] = {0, 0};
            got[0] = pool_client(&got[1]);
            if (write(p[1], got, sizeof got) == (ssize_t)sizeof got && got[0] == 0)
                pause();
            _exit(1);
        }
    }
    pid_t pooled[2];
    for (int i = 0; i < 2; i++) {
        pid_t got[2];
        cr_assert_eq(read(p[0], got, sizeof got), (ssize_t)sizeof got);
        cr_assert_eq(got[0], 0, "a client failed: %d (10: attach; 11 + i: call i)", (int)got[0]);
        pooled[i] = got[1];
    }
    cr_assert_neq(pooled[0], pooled[1], "two clients shared one pooled process");
    for (int i = 0; i < 2; i++)
        cr_assert_eq(parent_of(pooled[i]), server, "pooled process %d is not the server's",
                     (int)pooled[i]);
    for (int i = 0; i < 2; i++) {
        int st;
        cr_assert_eq(kill(kids[i], SIGTERM), 0);
        cr_assert_eq(waitpid(kids[i], &st, 0), kids[i]);
    }
    close(p[0]);
    close(p[1]);
    end_shared(dir);
}

TBX_PLAIN_TEST(shared, wrong_key_is_refused)
{
    char dir[64], path[96];
    start_shared(dir, sizeof dir, path, sizeof path);
    unsigned char key[32];
    memset(key, 0x5a, sizeof key);
    /* In another process: this one holds the server it started. */
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0)
        _exit(tbx_forkserver_attach(path, key, sizeof key) == TBX_EPROTO ? 0 : 1);
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a wrong key got in");
    /* A key of the wrong size is not even tried. */
    cr_assert_eq(tbx_forkserver_attach(path, key, 16), TBX_EINVAL);
    end_shared(dir);
}

struct as_nobody {
    const char *path;
    int want;
};

/* Attaches as nobody, with the right key in hand (from the environment). */
static int attach_as_nobody(void *p)
{
    struct as_nobody *a = p;
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
        return 77;
    int rc = tbx_forkserver_attach(a->path, NULL, 0);
    if (rc != a->want) {
        fprintf(stderr, "as nobody: %s, wanted %s\n", tbx_err_name(rc), tbx_err_name(a->want));
        return 1;
    }
    if (rc == 0) {
        tbx_result r;
        rc = echo_call("nobody", 30, &r);
        int ok = rc == 0 && obj_str_eq(&r.value, "nobody");
        tbx_result_free(&r);
        return ok ? 0 : 2;
    }
    return 0;
}

TBX_PLAIN_TEST(shared, another_uid_is_refused)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to become another user");
    char dir[64], path[96];
    socket_dir(dir, sizeof dir, path, sizeof path);

    /* By default the directory alone keeps other users out. */
    tbx_forkserver_opts fo = shared_opts(path);
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    struct as_nobody a = {path, -EACCES};
    int st = in_process(attach_as_nobody, &a);
    if (st == 77)
        cr_skip_test("cannot become nobody here");
    cr_assert_eq(st, 0);
    stop_forkserver();

    /* Let another uid in: the socket opens up, the peer check stays. */
    cr_assert_eq(chmod(dir, 0711), 0);
    uid_t other = 12345;
    fo.allow_uids = &other;
    fo.nallow_uids = 1;
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    cr_assert_eq(in_process(attach_as_nobody, &a), 0, "nobody got past the peer check");
    stop_forkserver();

    /* Allowed, and holding the key: in. */
    uid_t nobody = 65534;
    fo.allow_uids = &nobody;
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    a.want = 0;
    cr_assert_eq(in_process(attach_as_nobody, &a), 0, "an allowed uid with the key was refused");
    end_shared(dir);
}

TBX_PLAIN_TEST(shared, unsafe_socket_paths_are_refused)
{
    char dir[64], path[96];
    socket_dir(dir, sizeof dir, path, sizeof path);
    cr_assert_eq(chmod(dir, 0777), 0);
    tbx_forkserver_opts fo = shared_opts(path);
    cr_assert_eq(tbx_forkserver_start(&fo), -EPERM, "a directory open to all was accepted");
    cr_assert_eq(tbx_forkserver_pid(), 0);

    char longpath[200];
    memset(longpath, 'a', sizeof longpath);
    memcpy(longpath, "/tmp/", 5);
    longpath[sizeof longpath - 1] = '\0';
    fo.socket_path = longpath;
    cr_assert_eq(tbx_forkserver_start(&fo), -ENAMETOOLONG);
    cr_assert_eq(tbx_forkserver_attach(longpath, NULL, 0), -ENAMETOOLONG);
    unsetenv("TIMEBOX_FORKSERVER_SOCKET");
    unsetenv("TIMEBOX_FORKSERVER_KEY");
    remove_dir(dir);
}

/* ------------------------------------------------ clients that go away */


TBX_PLAIN_TEST(shared, client_killed_mid_call_leaves_no_child)
{
    char dir[64], path[96], pidfile[128];
    socket_dir(dir, sizeof dir, path, sizeof path);
    snprintf(pidfile, sizeof pidfile, "%s/child.pid", dir);
    tbx_forkserver_opts fo = shared_opts(path);
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    pid_t client = fork();
    cr_assert_geq(client, 0);
    if (client == 0) {
        if (tbx_forkserver_attach(path, NULL, 0) != 0)
            _exit(1);
        msgpack_sbuffer sb;
        pack(&sb, "s", pidfile);
        tbx_opts o = test_opts(TBX_FORKSERVER);
        tbx_result r;
        tbx_call(fn_pid_then_hang, sb.data, sb.size, &o, &r); /* no deadline */
        _exit(2);
    }
    pid_t child = read_pid_file(pidfile, 30);
    cr_assert_eq(kill(client, SIGKILL), 0);
    int st;
    cr_assert_eq(waitpid(client, &st, 0), client);
    cr_assert(wait_gone(child, 10), "the dead client's child is still running");
    end_shared(dir);
}

static int mixed_client(void *arg)
{
    int id = *(int *)arg;
    if (tbx_forkserver_attach(getenv("TIMEBOX_FORKSERVER_SOCKET"), NULL, 0) != 0)
        return 10;
    for (int i = 0; i < 10; i++) {
        int kind = (id + i) % 3 == 0 ? MIX_HANG : (id + i) % 3 == 1 ? MIX_OK : MIX_SEGV;
        msgpack_sbuffer sb;
        pack(&sb, "a i i", 2, (int64_t)kind, (int64_t)i);
        tbx_opts o = test_opts(TBX_FORKSERVER);
        o.timeout_s = kind == MIX_HANG ? 0.1 + 0.05 * (id % 4) : 30;
        o.grace_s = 0.1;
        tbx_result r;
        int rc = tbx_call(fn_mixed, sb.data, sb.size, &o, &r);
        const char *bad = mixed_mismatch(kind, i, rc, &r);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
        if (bad != NULL) {
            fprintf(stderr, "client %d call %d: %s\n", id, i, bad);
            return 11;
        }
    }
    return 0;
}

TBX_PLAIN_TEST(shared, sixteen_clients_at_once)
{
    char dir[64], path[96];
    start_shared(dir, sizeof dir, path, sizeof path);
    pid_t kids[16];
    int ids[16];
    for (int i = 0; i < 16; i++) {
        ids[i] = i;
        kids[i] = fork();
        cr_assert_geq(kids[i], 0);
        if (kids[i] == 0)
            _exit(mixed_client(&ids[i]));
    }
    for (int i = 0; i < 16; i++) {
        int st;
        cr_assert_eq(waitpid(kids[i], &st, 0), kids[i]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client %d: status %#x", i, st);
    }
    end_shared(dir);
}

/* ------------------------------------------------------------ the daemon */

static void count_done_cb(tbx_req *req, tbx_result *r)
{
    *(int *)req->data = r->status;
    tbx_result_free(r);
}

TBX_PLAIN_TEST(daemon, serves_and_shuts_down_clean)
{
    char dir[64], path[96], keyfile[128], pidfile[128], cmd[512];
    socket_dir(dir, sizeof dir, path, sizeof path);
    snprintf(keyfile, sizeof keyfile, "%s.key", path);
    snprintf(pidfile, sizeof pidfile, "%s/child.pid", dir);
    /* It detaches once it serves (and the test is its subreaper). */
    become_subreaper();
    snprintf(cmd, sizeof cmd, "'%s' --socket '%s' --preload '%s' --max-per-client 4 --quiet",
             TIMEBOX_FORKSERVER_PATH, path, TEST_PLUGIN_PATH);
    cr_assert_eq(system(cmd), 0, "the daemon did not start");
    struct stat st;
    cr_assert_eq(stat(keyfile, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);

    void *plugin = dlopen(TEST_PLUGIN_PATH, RTLD_NOW);
    cr_assert_not_null(plugin, "%s", dlerror());
    tbx_fn *triple = (tbx_fn *)dlsym(plugin, "plugin_triple");
    cr_assert_not_null(triple);
    cr_assert_eq(tbx_forkserver_attach(path, NULL, 0), 0); /* key from the file */
    pid_t daemon_pid = tbx_forkserver_pid();
    cr_assert_gt(daemon_pid, 0);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    assert_triples(triple, &o);

    /* A call in flight when the daemon is told to stop. */
    msgpack_sbuffer sb;
    tbx_fn *hang = (tbx_fn *)dlsym(plugin, "plugin_pid_then_hang");
    cr_assert_not_null(hang);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_req req;
    int done = 0;
    req.data = &done;
    pack(&sb, "s", pidfile);
    cr_assert_eq(tbx_call_async(&loop, &req, hang, sb.data, sb.size, &o, count_done_cb), 0);
    msgpack_sbuffer_destroy(&sb);
    pid_t child = read_pid_file(pidfile, 30);

    /* SIGTERM: children killed, socket and key removed, the daemon gone. */
    cr_assert_eq(kill(daemon_pid, SIGTERM), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(done, -ECONNRESET, "the call in flight: %s", tbx_err_name(done));
    cr_assert_eq(uv_loop_close(&loop), 0);
    cr_assert(wait_gone(child, 10), "the daemon's child outlived it");
    /* The daemon detached from its starter: as subreaper, we reap it. */
    reap_adopted(10);
    cr_assert(wait_gone(daemon_pid, 1), "the daemon ignored SIGTERM");
    cr_assert_neq(access(path, F_OK), 0, "the socket is left");
    cr_assert_neq(access(keyfile, F_OK), 0, "the key is left");
    stop_forkserver(); /* drops our connection; the server was not ours */
    remove_dir(dir);
}

/* ------------------------------------------------ a server that stalls */

TBX_PLAIN_TEST(stall, a_stopped_server_cannot_hang_a_call)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    pid_t server = tbx_forkserver_pid();
    cr_assert_eq(kill(server, SIGSTOP), 0);
    msgpack_sbuffer sb;
    pack(&sb, "s", "stuck");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 0.3;
    o.grace_s = 0.1;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    kill(server, SIGCONT);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_lt(r.elapsed_s, 10.0, "the call waited %.1f s on a stopped server", r.elapsed_s);
    tbx_result_free(&r);
    /* Awake again, the server serves the next call. */
    o.timeout_s = 30;
    rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A server stopped mid-call: the call, which holds no pidfd of the child,
 * gives up on the server a little after SIGKILL; the server, running again,
 * finds the call's socket closed and kills the child (README, "No hang past
 * the deadline"). */
TBX_PLAIN_TEST(stall, a_server_stopped_mid_call_kills_the_child_when_it_runs_again)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    pid_t server = tbx_forkserver_pid();
    char path[64];
    temp_path(path, sizeof path);
    msgpack_sbuffer sb;
    pack(&sb, "s", path);
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 0.5;
    o.grace_s = 0.1;
    uv_loop_t loop;
    tbx_req req;
    tbx_result r;
    start_async(&loop, &req, &r, fn_pid_then_hang, &sb, &o);
    pid_t child = read_pid_file(path, 30);
    cr_assert_eq(kill(server, SIGSTOP), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(r.status, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(r.status), r.message);
    cr_assert_lt(r.elapsed_s, 10.0, "the call waited %.1f s on a stopped server", r.elapsed_s);
    cr_assert_eq(kill(server, SIGCONT), 0);
    cr_assert(wait_gone(child, 30), "the child outlived its call once the server ran again");
    tbx_result_free(&r);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

/* A shared server of our own, and a raw connection to it (handshake done):
 * for tests that speak its protocol by hand.  raw_client_end undoes both. */
static int raw_client(char *dir, size_t dir_len)
{
    char path[96];
    socket_dir(dir, dir_len, path, sizeof path);
    tbx_forkserver_opts fo = shared_opts(path);
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    uint8_t key[TBX__KEY_LEN];
    cr_assert_eq(tbx__key_parse(getenv("TIMEBOX_FORKSERVER_KEY"), key), 0);
    int conn = tbx__fs_client_connect(path, key, 10);
    cr_assert_geq(conn, 0, "%s", tbx_err_name(conn));
    return conn;
}

static void raw_client_end(int conn, const char *dir)
{
    close(conn);
    end_shared(dir);
}

/* A hostile client gives the server, as its "result pipe", one that is full
 * and blocking, then a request the server must refuse: writing the refusal
 * must not stall the server for everyone else. */
TBX_PLAIN_TEST(stall, a_full_result_pipe_cannot_stall_the_server)
{
    char dir[64];
    int conn = raw_client(dir, sizeof dir);

    int ctl[2], res[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl), 0);
    cr_assert_eq(pipe2(res, O_CLOEXEC | O_NONBLOCK), 0);
    char junk[4096];
    memset(junk, 'x', sizeof junk);
    while (write(res[1], junk, sizeof junk) > 0)
        ; /* full */
    cr_assert_eq(fcntl(res[1], F_SETFL, 0), 0); /* and blocking again */
    tbx__hello hello = {TBX__HELLO_MAGIC, TBX__HELLO_CALL, 0, 0};
    int fds[2] = {ctl[1], res[1]};
    cr_assert_eq(tbx__send_fds(conn, &hello, sizeof hello, fds, 2, 0), (ssize_t)sizeof hello);
    close(ctl[1]);
    close(res[1]);
    /* A request for a function nobody registered: refused, in writing. */
    tbx__request_header h;
    memset(&h, 0, sizeof h);
    h.magic = TBX__REQUEST_MAGIC;
    h.name_len = 7;
    h.args_len = 1;
    h.max_result = 1024;
    cr_assert_eq(write(ctl[0], &h, sizeof h), (ssize_t)sizeof h);
    cr_assert_eq(write(ctl[0], "nothing\xc0", 8), 8);

    /* Meanwhile, an honest call through the same server. */
    msgpack_sbuffer sb;
    pack(&sb, "s", "served");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 10;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "the server stalled: %s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "served"));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    close(ctl[0]);
    close(res[0]);
    raw_client_end(conn, dir);
}

/* ------------------------------------ a hostile client's memfds, checked */

/* The next frame from the server's child on fd, skipping START: its header
 * and up to cap bytes of payload.  Fails the test after 10 s. */
static tbx__frame_header next_frame(int fd, char *payload, size_t cap)
{
    tbx__frame_header h;
    for (;;) {
        size_t got = 0;
        while (got < sizeof h) {
            struct pollfd p = {fd, POLLIN, 0};
            cr_assert_eq(poll(&p, 1, 10000), 1, "no frame from the server within 10 s");
            ssize_t n = read(fd, (char *)&h + got, sizeof h - got);
            cr_assert_gt(n, 0, "the result pipe closed without a frame");
            got += (size_t)n;
        }
        if (h.kind != TBX__FRAME_START)
            break;
    }
    cr_assert_leq(h.len, cap, "kind %u code %d len %llu", h.kind, h.fail_code,
                  (unsigned long long)h.len);
    for (size_t got = 0; got < h.len;) {
        ssize_t n = read(fd, payload + got, (size_t)h.len - got);
        cr_assert_gt(n, 0);
        got += (size_t)n;
    }
    return h;
}

/* A call's control socket and result pipe, handed to the server with hello
 * flags and, if extra >= 0, that fd as the call's bulk memfd. */
static void raw_call_open(int conn, uint32_t flags, int extra, int ctl[2], int res[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl), 0);
    cr_assert_eq(pipe2(res, O_CLOEXEC), 0);
    tbx__hello hello = {TBX__HELLO_MAGIC, TBX__HELLO_CALL, flags, 0};
    int fds[3] = {ctl[1], res[1], extra};
    int n = extra >= 0 ? 3 : 2;
    cr_assert_eq(tbx__send_fds(conn, &hello, sizeof hello, fds, n, 0), (ssize_t)sizeof hello);
    close(ctl[1]);
    close(res[1]);
}

/* fn_echo's request with its args ("served", 7 bytes of msgpack) in a
 * memfd, sealed or not, sent with the header. */
static void send_args_in_memfd(int ctl, int sealed)
{
    static const char args[] = "\xa6served";
    int m = memfd_create("hostile-args", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    cr_assert_geq(m, 0);
    cr_assert_eq(write(m, args, 7), 7);
    if (sealed)
        cr_assert_eq(fcntl(m, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK), 0);
    tbx__request_header h;
    memset(&h, 0, sizeof h);
    h.magic = TBX__REQUEST_MAGIC;
    h.flags = TBX__REQ_ARGS_BULK;
    h.name_len = 7;
    h.args_len = 7;
    h.max_result = 1024;
    cr_assert_eq(tbx__send_fds(ctl, &h, sizeof h, &m, 1, 0), (ssize_t)sizeof h);
    cr_assert_eq(write(ctl, "fn_echo", 7), 7);
    close(m);
}

TBX_PLAIN_TEST(hostile, bulk_and_args_memfds_are_checked)
{
    char dir[64], payload[256];
    int conn = raw_client(dir, sizeof dir);
    int ctl[2], res[2];

    /* A "bulk memfd" that is a pipe, which the child would write into: the
     * call is dropped, its control socket closed. */
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    raw_call_open(conn, TBX__HELLO_BULK, p[1], ctl, res);
    struct pollfd pf = {ctl[0], POLLIN, 0};
    cr_assert_eq(poll(&pf, 1, 10000), 1, "the server kept a call with a pipe for a memfd");
    char b;
    cr_assert_eq(read(ctl[0], &b, 1), 0, "the call was not dropped");
    close(ctl[0]);
    close(res[0]);
    close(p[0]);
    close(p[1]);

    /* Args in a memfd nobody sealed (the client could change them while the
     * server checks them): refused in writing. */
    raw_call_open(conn, 0, -1, ctl, res);
    send_args_in_memfd(ctl[0], 0);
    tbx__frame_header h = next_frame(res[0], payload, sizeof payload);
    cr_assert_eq(h.kind, TBX__FRAME_ERROR);
    cr_assert_eq(h.fail_code, TBX_EPROTO);
    close(ctl[0]);
    close(res[0]);

    /* Sealed: served, the args read from the memfd. */
    raw_call_open(conn, 0, -1, ctl, res);
    send_args_in_memfd(ctl[0], 1);
    h = next_frame(res[0], payload, sizeof payload);
    cr_assert_eq(h.kind, TBX__FRAME_OK, "kind %u code %d: %.*s", h.kind, h.fail_code,
                 (int)h.len, payload);
    cr_assert_eq(h.len, 7);
    cr_assert_eq(memcmp(payload, "\xa6served", 7), 0);
    close(ctl[0]);
    close(res[0]);
    raw_client_end(conn, dir);
}

/* ------------------------------------------- the handshake's HMAC-SHA256 */

static void hex_of(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
}

/* RFC 4231 test cases 1, 2 and 6 (a key longer than a block), then message
 * lengths around SHA-256's padding boundaries (values from Python's hmac). */
TBX_PLAIN_TEST(auth, hmac_sha256_matches_its_reference_values)
{
    static const struct {
        const char *key, *msg;
        size_t key_len, msg_len;
        const char *want;
    } rfc[] = {
        {"\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b",
         "Hi There", 20, 8, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"Jefe", "what do ya want for nothing?", 4, 28,
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
    };
    uint8_t mac[32];
    char hex[65];
    for (size_t i = 0; i < sizeof rfc / sizeof rfc[0]; i++) {
        cr_assert_eq(tbx__hmac_sha256((const uint8_t *)rfc[i].key, rfc[i].key_len,
                                      (const uint8_t *)rfc[i].msg, rfc[i].msg_len, mac),
                     0);
        hex_of(mac, 32, hex);
        cr_assert_str_eq(hex, rfc[i].want, "RFC 4231 case %zu", i);
    }
    uint8_t long_key[131];
    memset(long_key, 0xaa, sizeof long_key);
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    cr_assert_eq(tbx__hmac_sha256(long_key, sizeof long_key, (const uint8_t *)m6, strlen(m6), mac),
                 0);
    hex_of(mac, 32, hex);
    cr_assert_str_eq(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");

    static const struct {
        size_t len;
        const char *want;
    } sizes[] = {
        {0, "d38b42096d80f45f826b44a9d5607de72496a415d3f4a1a8c88e3bb9da8dc1cb"},
        {55, "ef3cd5285b72cc9a950e0031eedfca28c93cffdb14ca948f2932fb4d31fd0b7e"},
        {56, "4a0342cdc5a480d2d487b4c69b9611a2b796e8dd9acf8295f92123473098ebdc"},
        {63, "20617142df4ce5c8433f79829f78d9e945ffbbdcb49c9fc822f0840cbc019574"},
        {64, "014883ee52a054030c349a728526f93606a65fddcdc3b48a78c09bd021ba4996"},
        {65, "bc77a01a7e5fbe9fec7062882071ff5d7350a667948b9eea40abb8dcb0b73743"},
        {200, "492713ada335cb48ad37b7788030fcb3f5b979d669cae480eb75f2eb64063c1d"},
    };
    uint8_t key[32], msg[200];
    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        cr_assert_eq(tbx__hmac_sha256(key, sizeof key, msg, sizes[i].len, mac), 0);
        hex_of(mac, 32, hex);
        cr_assert_str_eq(hex, sizes[i].want, "a %zu-byte message", sizes[i].len);
    }
    /* A proof checks under its own key, role and nonce, and under no other. */
    uint8_t nonce[TBX__NONCE_LEN], proof[TBX__PROOF_LEN];
    cr_assert_eq(tbx__auth_nonce(nonce), 0);
    cr_assert_eq(tbx__auth_prove(key, "timebox client", nonce, proof), 0);
    cr_assert_eq(tbx__auth_check(key, "timebox client", nonce, proof), 0);
    cr_assert_eq(tbx__auth_check(key, "timebox server", nonce, proof), TBX_EPROTO);
    proof[TBX__PROOF_LEN - 1] ^= 1;
    cr_assert_eq(tbx__auth_check(key, "timebox client", nonce, proof), TBX_EPROTO);
}
