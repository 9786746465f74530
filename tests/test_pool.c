/*
 * TBX_POOL's own promises, beyond the per-call ones every parameterized test
 * checks under it: a process serves calls one after another; what a call
 * leaves (descendants, signal handlers) is undone or the process replaced,
 * and the result says so; a deadline kills it and the next call gets a fresh
 * one; options it cannot honour are refused.  And TBX_AUTO's choice, and
 * result.method for every method.
 */
#include "helpers.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const unsigned char nil[1] = {0xc0};

static tbx_opts pool_opts(void)
{
    tbx_opts o = test_opts(TBX_POOL);
    o.timeout_s = 30;
    return o;
}

/* Packs this process's pid. */
static int fn_pid(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_pid);

/* Runs fn with no args by pool; asserts it succeeded and returns its pid
 * after checking the fate. */
static pid_t pool_call(tbx_fn *fn, int want_fate)
{
    tbx_opts o = pool_opts();
    tbx_result r;
    int rc = tbx_call(fn, nil, sizeof nil, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message ? r.message : "");
    cr_assert_eq(r.method, TBX_POOL);
    cr_assert_eq(r.pool_fate, want_fate, "fate %d, expected %d", r.pool_fate, want_fate);
    pid_t pid = r.pid;
    cr_assert_gt(pid, 0);
    tbx_result_free(&r);
    return pid;
}

TBX_PLAIN_TEST(pool, one_process_serves_calls_one_after_another)
{
    start_pool(1, 0);
    pid_t first = pool_call(fn_pid, TBX_POOL_KEPT);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(pool_call(fn_pid, TBX_POOL_KEPT), first);
}

/* A pooled process joined its cgroup when it was made: between calls it
 * is in a leaf of the server's, and its next call runs there, with no move
 * into a cgroup on the call's way (README, "What a join costs"). */
TBX_PLAIN_TEST(pool, a_pooled_process_is_in_its_cgroup_between_calls)
{
    if (tbx_containment() != TBX_CONTAIN_CGROUP)
        cr_skip_test("no cgroups for this process");
    start_pool(1, 0);
    pid_t pid = pool_call(fn_pid, TBX_POOL_KEPT), server = tbx_forkserver_pid();
    char leaf[PATH_MAX];
    cr_assert(wait_in_leaf_of(pid, server, leaf, sizeof leaf, 10),
              "pooled process %d is in %s, not in a leaf of timebox-%d", (int)pid, leaf,
              (int)server);
    tbx_opts o = pool_opts();
    tbx_result r;
    int rc = tbx_call(fn_where, nil, sizeof nil, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message ? r.message : "");
    cr_assert_eq(r.containment, TBX_CONTAIN_CGROUP);
    cr_assert(where_is(&r.value, pid, leaf), "the call did not run in process %d in %s",
              (int)pid, leaf);
    tbx_result_free(&r);
}

/* A descriptor left open is drift: the process says so and is replaced. */
static int fn_leak_fd(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    if (open("/dev/null", O_RDONLY | O_CLOEXEC) < 0)
        return tbx_fail(pk, 1, "open");
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_leak_fd);

/* A process serves a call, then fn (which leaves something behind) and says
 * it drifted; the next call gets another process. */
static void check_drift(tbx_fn *fn)
{
    start_pool(1, 0);
    pid_t before = pool_call(fn_pid, TBX_POOL_KEPT);
    cr_assert_eq(pool_call(fn, TBX_POOL_DRIFTED), before);
    cr_assert_neq(pool_call(fn_pid, TBX_POOL_KEPT), before);
}

TBX_PLAIN_TEST(pool, a_leaked_descriptor_is_drift_and_replaced)
{
    check_drift(fn_leak_fd);
}

/* A descriptor left at a high number, past the table the process started
 * with (which grows to hold it), is drift all the same: at 900 the table
 * grows to 1,024 entries, and at 5,000 (where the descriptor limit allows)
 * past what the process counts in one poll. */
static int leak_fd_at(msgpack_packer *pk, int want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return tbx_fail(pk, 1, "getrlimit");
    int at = rl.rlim_cur != RLIM_INFINITY && (rlim_t)want >= rl.rlim_cur ? (int)rl.rlim_cur - 1
                                                                         : want;
    if (dup3(0, at, O_CLOEXEC) != at)
        return tbx_fail(pk, 1, "dup3");
    return msgpack_pack_int64(pk, getpid());
}

static int fn_leak_fd_900(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return leak_fd_at(pk, 900);
}
TBX_REGISTER(fn_leak_fd_900);

static int fn_leak_fd_5000(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return leak_fd_at(pk, 5000);
}
TBX_REGISTER(fn_leak_fd_5000);

TBX_PLAIN_TEST(pool, a_descriptor_leaked_high_is_drift_and_replaced)
{
    check_drift(fn_leak_fd_900);
    tbx_forkserver_stop();
    check_drift(fn_leak_fd_5000);
}

/* A thread left running is drift too. */
static void *sleeper(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static int fn_leak_thread(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    pthread_t t;
    if (pthread_create(&t, NULL, sleeper, NULL) != 0)
        return tbx_fail(pk, 1, "pthread_create");
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_leak_thread);

TBX_PLAIN_TEST(pool, a_leaked_thread_is_drift_and_replaced)
{
    check_drift(fn_leak_thread);
}

/* Resident memory grown far past its size after the first call is drift. */
static char *volatile leaked; /* kept, so that the compiler keeps the writes */

static int fn_leak_memory(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    size_t len = (size_t)256 << 20;
    char *p = malloc(len);
    if (p == NULL)
        return tbx_fail(pk, 1, "malloc");
    memset(p, 1, len); /* resident, and never freed */
    leaked = p;
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_leak_memory);

TBX_PLAIN_TEST(pool, grown_memory_is_drift_and_replaced)
{
    check_drift(fn_leak_memory);
}

TBX_PLAIN_TEST(pool, max_calls_replaces_the_process)
{
    start_pool(1, 3);
    pid_t first = pool_call(fn_pid, TBX_POOL_KEPT);
    cr_assert_eq(pool_call(fn_pid, TBX_POOL_KEPT), first);
    cr_assert_eq(pool_call(fn_pid, TBX_POOL_SPENT), first);
    cr_assert_neq(pool_call(fn_pid, TBX_POOL_KEPT), first);
}

/* args: path.  Forks a child that leaves for a session of its own and
 * sleeps, writes its pid to path, and returns: the call's end must kill it
 * all the same. */
static int fn_leave_descendant(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    char path[256];
    snprintf(path, sizeof path, "%.*s", (int)args->via.str.size, args->via.str.ptr);
    pid_t g = fork();
    if (g < 0)
        return tbx_fail(pk, 1, "fork");
    if (g == 0) {
        setsid();
        child_sleep(60);
        _exit(0);
    }
    char buf[32];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int n = snprintf(buf, sizeof buf, "%d", (int)g);
    if (fd < 0 || write(fd, buf, (size_t)n) != n)
        return tbx_fail(pk, 2, "write");
    close(fd);
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_leave_descendant);

TBX_PLAIN_TEST(pool, a_calls_descendants_die_at_its_end)
{
    start_pool(1, 0);
    char path[64];
    snprintf(path, sizeof path, "/tmp/tbx-pool-%d", (int)getpid());
    msgpack_sbuffer sb;
    pack(&sb, "s", path);
    tbx_opts o = pool_opts();
    tbx_result r;
    int rc = tbx_call(fn_leave_descendant, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message ? r.message : "");
    cr_assert_eq(r.pool_fate, TBX_POOL_KEPT);
    pid_t g = read_pid_file(path, 1);
    /* Dead and reaped by the pooled process before the result was sent. */
    cr_assert(kill(g, 0) != 0 && errno == ESRCH, "descendant %d outlived its call", (int)g);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

/* A handler a call installs is gone for the next call. */
static void on_usr1(int sig)
{
    (void)sig;
}

static int fn_install_handler(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, SIG_IGN);
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_install_handler);

static int fn_handlers(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    struct sigaction a, b;
    sigaction(SIGUSR1, NULL, &a);
    sigaction(SIGUSR2, NULL, &b);
    return msgpack_pack_int(pk, a.sa_handler == SIG_DFL && b.sa_handler == SIG_DFL);
}
TBX_REGISTER(fn_handlers);

TBX_PLAIN_TEST(pool, signal_handlers_are_reset_between_calls)
{
    start_pool(1, 0);
    pid_t p = pool_call(fn_install_handler, TBX_POOL_KEPT);
    tbx_opts o = pool_opts();
    tbx_result r;
    cr_assert_eq(tbx_call(fn_handlers, nil, sizeof nil, &o, &r), 0);
    cr_assert_eq(r.pid, p, "the same process");
    cr_assert_eq(obj_int(&r.value), 1, "a handler survived the call that set it");
    tbx_result_free(&r);
}

/* A call that overruns is killed with its process; the next call gets a
 * fresh one and succeeds. */
TBX_PLAIN_TEST(pool, a_timeout_kills_and_replaces_the_process)
{
    start_pool(1, 0);
    pid_t before = pool_call(fn_pid, TBX_POOL_KEPT);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_opts o = pool_opts();
    o.timeout_s = 0.2;
    o.grace_s = 0.1;
    tbx_result r;
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s", tbx_err_name(rc));
    cr_assert_eq(r.pool_fate, TBX_POOL_ENDED);
    cr_assert_lt(r.elapsed_s, 2.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert(wait_gone(before, 5), "the overrunning process %d lives on", (int)before);
    cr_assert_neq(pool_call(fn_pid, TBX_POOL_KEPT), before);
}

/* args [text, fork]: text to stdout (left in stdio's buffer) and "!" to
 * stderr; with fork, a grandchild that writes "g" to stdout itself and
 * lives on, until the call's end kills it.  Packs its pid. */
static int fn_say(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *a = args->via.array.ptr;
    printf("%.*s", (int)a[0].via.str.size, a[0].via.str.ptr);
    fputs("!", stderr);
    if (a[1].via.u64 != 0) {
        int p[2];
        fflush(stdout);
        if (pipe(p) != 0)
            return tbx_fail(pk, 1, "pipe");
        pid_t g = fork();
        if (g == 0) {
            if (write(1, "g", 1) == 1 && write(p[1], "", 1) == 1)
                for (;;)
                    pause();
            _exit(1);
        }
        char b;
        int ok = g > 0 && read(p[0], &b, 1) == 1;
        close(p[0]);
        close(p[1]);
        if (!ok)
            return tbx_fail(pk, 1, "no grandchild");
    }
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_say);

/* fn_say by pool, capturing its output if capture; checks what came back
 * and returns the pid that served it. */
static pid_t say(const char *text, int fork_too, size_t capture, const char *want_out)
{
    msgpack_sbuffer sb;
    pack(&sb, "a s u", 2, text, (uint64_t)fork_too);
    tbx_opts o = pool_opts();
    o.capture_output = capture;
    tbx_result r;
    int rc = tbx_call(fn_say, sb.data, sb.size, &o, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message ? r.message : "");
    cr_assert_eq(r.pool_fate, TBX_POOL_KEPT, "fate %d", r.pool_fate);
    cr_assert_lt(r.elapsed_s, 10.0, "the call waited for its pipes' end");
    if (capture == 0) {
        cr_assert_null(r.stdout_data);
    } else {
        cr_assert_str_eq(r.stdout_data, want_out);
        cr_assert_str_eq(r.stderr_data, "!");
    }
    pid_t pid = r.pid;
    tbx_result_free(&r);
    return pid;
}

/* What a pooled process's descriptor fd leads to. */
static void fd_of(pid_t pid, int fd, char *target, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
    ssize_t n = readlink(path, target, len - 1);
    cr_assert_gt(n, 0, "%s", path);
    target[n] = '\0';
}

/* A pooled call's captured output is its own: what it printed, flushed at
 * its end, and nothing of the calls before or after it in the same
 * process, captured or not; between calls the process's stdout and stderr
 * are its own again. */
TBX_PLAIN_TEST(pool, captured_output_is_the_calls_own)
{
    start_pool(1, 0);
    pid_t pid = say("before", 0, 0, NULL);
    char out[256], err[256], now[256];
    fd_of(pid, 1, out, sizeof out);
    fd_of(pid, 2, err, sizeof err);
    cr_assert_eq(say("one", 0, 4096, "one"), pid);
    cr_assert_eq(say("two", 0, 0, NULL), pid);
    cr_assert_eq(say("three", 0, 4096, "three"), pid);
    fd_of(pid, 1, now, sizeof now);
    cr_assert_str_eq(now, out, "its stdout is %s, was %s", now, out);
    fd_of(pid, 2, now, sizeof now);
    cr_assert_str_eq(now, err, "its stderr is %s, was %s", now, err);
}

/* Closes this process's stdout and stderr. */
static int fn_close_std(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    fflush(stdout);
    close(1);
    close(2);
    return msgpack_pack_int64(pk, getpid());
}
TBX_REGISTER(fn_close_std);

/* A process whose own stdout and stderr a call closed still captures the
 * next call's output, and has them closed again after it. */
TBX_PLAIN_TEST(pool, capture_works_after_a_call_closed_stdout)
{
    start_pool(1, 0);
    pid_t pid = pool_call(fn_close_std, TBX_POOL_KEPT);
    cr_assert_eq(say("seen", 0, 4096, "seen"), pid);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/1", (int)pid);
    cr_assert_neq(access(path, F_OK), 0, "its stdout is open after the call");
}

/* A descendant that holds the call's stdout is killed at the call's end:
 * what it wrote is captured, and the call does not wait for it. */
TBX_PLAIN_TEST(pool, a_descendants_output_is_captured_and_it_ends_with_the_call)
{
    start_pool(1, 0);
    pid_t pid = say("x", 1, 4096, "xg");
    cr_assert_eq(say("y", 0, 4096, "y"), pid);
}

TBX_PLAIN_TEST(pool, options_it_cannot_honour_are_einval)
{
    tbx_opts o = pool_opts();
    tbx_result r;
    o.backtrace_on_timeout = 1;
    cr_assert_eq(tbx_call(fn_pid, nil, sizeof nil, &o, &r), TBX_EINVAL);
    tbx_result_free(&r);
    int x;
    o = pool_opts();
    o.ctx = &x;
    cr_assert_eq(tbx_call(fn_pid, nil, sizeof nil, &o, &r), TBX_EINVAL);
    tbx_result_free(&r);
}

/* A frame without the pooled process's word on the call is refused. */

/* 1 if pid holds a descriptor of the pipe target names ("pipe:[N]"). */
static int holds_pipe(pid_t pid, const char *target)
{
    char dir[64], path[128], t[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (d != NULL && !found && (e = readdir(d)) != NULL) {
        snprintf(path, sizeof path, "%s/%.32s", dir, e->d_name);
        ssize_t n = readlink(path, t, sizeof t - 1);
        t[n < 0 ? 0 : n] = '\0';
        found = strcmp(t, target) == 0;
    }
    if (d != NULL)
        closedir(d);
    return found;
}

/* args: the caller's pid.  Writes a valid OK frame with no pool word to the
 * result pipe (the one write end it shares with the caller: not the pipes
 * the pooled process shares with its server), then waits to be killed. */
static int fn_raw_frame(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)pk, (void)ctx;
    struct {
        uint32_t magic, kind;
        int32_t code;
        uint32_t pool;
        uint64_t len;
    } h = {0x31584254u, 1, 0, 0, 1};
    for (int fd = 3; fd < 64; fd++) {
        char target[64];
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || (fl & O_ACCMODE) != O_WRONLY)
            continue;
        fd_target(fd, target, sizeof target);
        if (strncmp(target, "pipe:", 5) != 0 || !holds_pipe((pid_t)args->via.u64, target))
            continue;
        if (write(fd, &h, sizeof h) != sizeof h || write(fd, "\xc0", 1) != 1)
            _exit(2);
        child_sleep(60);
    }
    _exit(77);
}
TBX_REGISTER(fn_raw_frame);

TBX_PLAIN_TEST(pool, a_frame_without_its_word_is_eproto)
{
    start_pool(1, 0);
    tbx_opts o = pool_opts();
    tbx_result r;
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)getpid());
    int rc = tbx_call(fn_raw_frame, sb.data, sb.size, &o, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, TBX_EPROTO, "%s (exit %d)", tbx_err_name(rc), r.exit_code);
    cr_assert_eq(r.pool_fate, TBX_POOL_ENDED);
    tbx_result_free(&r);
}

/* ------------------------------------------------------------- TBX_AUTO */

/* In a process of one thread (Criterion's test process has more): the
 * method that ran, as the exit status. */
TBX_PLAIN_TEST(auto_method, small_single_threaded_caller_forks)
{
    pid_t helper = fork();
    cr_assert_geq(helper, 0);
    if (helper == 0) {
        long pages = 0, resident = 0;
        FILE *f = fopen("/proc/self/statm", "re");
        if (f == NULL || fscanf(f, "%ld %ld", &pages, &resident) != 2)
            _exit(101);
        fclose(f);
        if ((size_t)resident * (size_t)sysconf(_SC_PAGESIZE) >= TBX_AUTO_FORK_MAX_RSS)
            _exit(102); /* not small here (a sanitizer's shadow memory) */
        tbx_opts o = test_opts(TBX_AUTO);
        tbx_result r;
        int rc = tbx_call(fn_pid, nil, sizeof nil, &o, &r);
        _exit(rc != 0 ? 100 : (int)r.method);
    }
    int st;
    cr_assert_eq(waitpid(helper, &st, 0), helper);
    cr_assert(WIFEXITED(st), "helper status %#x", st);
    if (WEXITSTATUS(st) == 102)
        cr_skip_test("this test process is not small (a sanitizer build)");
    cr_assert_eq(WEXITSTATUS(st), TBX_FORK, "method %d", WEXITSTATUS(st));
}

TBX_PLAIN_TEST(auto_method, threaded_caller_takes_the_pool_or_the_forkserver)
{
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, sleeper, NULL), 0);
    tbx_opts o = test_opts(TBX_AUTO);
    tbx_result r;
    cr_assert_eq(tbx_call(fn_pid, nil, sizeof nil, &o, &r), 0);
    cr_assert_eq(r.method, TBX_FORKSERVER, "method %d", r.method);
    tbx_result_free(&r);
    start_pool(2, 0);
    cr_assert_eq(tbx_call(fn_pid, nil, sizeof nil, &o, &r), 0);
    cr_assert_eq(r.method, TBX_POOL, "method %d", r.method);
    tbx_result_free(&r);
    pthread_cancel(t);
    pthread_join(t, NULL);
}

TBX_PLAIN_TEST(auto_method, big_caller_does_not_fork)
{
    size_t len = TBX_AUTO_FORK_MAX_RSS + ((size_t)16 << 20);
    char *p = malloc(len);
    cr_assert_not_null(p);
    memset(p, 1, len);
    tbx_opts o = test_opts(TBX_AUTO);
    tbx_result r;
    cr_assert_eq(tbx_call(fn_pid, nil, sizeof nil, &o, &r), 0);
    cr_assert_eq(r.method, TBX_FORKSERVER, "method %d", r.method);
    tbx_result_free(&r);
    free(p);
}

/* result.method names the method that ran, for each. */
TBX_TEST(method, result_says_which_method_ran)
{
    tbx_opts o = test_opts(*method);
    tbx_result r;
    cr_assert_eq(tbx_call(fn_pid, nil, sizeof nil, &o, &r), 0);
    cr_assert_eq(r.method, *method);
    cr_assert_eq(r.pool_fate, TBX_POOL_KEPT);
    tbx_result_free(&r);
}
