/*
 * The fault matrix: what a child, its host and its input can do wrong, under
 * every start method where it applies.  Each test states what the call
 * returns and, through the fixture, that nothing of it outlives it.
 *
 *   child      blocks SIGTERM, cleans up longer than the grace period, stops
 *              itself, is killed from outside mid-run, dies while the caller
 *              still writes a large argument
 *   results    64 KiB (around the pipe's size), 16 MiB, 100 MiB; too deep,
 *              counts that lie
 *   frames     bytes the function writes straight to its result descriptor:
 *              garbage, truncated, oversize, zero-length, trailing
 *   deadlines  none (0, < 0), 1 ms, already past, huge
 *   host       reaps children itself with waitpid(-1), runs its own uv_spawn
 *              children on the loop, cancels or frees mid-call, holds 1000
 *              inheritable descriptors
 *   server     a client that dies mid-call, 100 calls at once, exits that
 *              coalesce
 *   args       nested too deep, huge counts (refused before a child exists)
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <timebox/uv.h>
#include <unistd.h>

/* ------------------------------------------------------------- helpers */

static void temp_path(char *path, size_t len)
{
    snprintf(path, len, "/tmp/timebox-faults-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
    close(fd);
}

/* In a child: writes getpid() to the path in args (a str). */
static void child_write_pid(const msgpack_object *path)
{
    char p[256], buf[32];
    snprintf(p, sizeof p, "%.*s", (int)path->via.str.size, path->via.str.ptr);
    int fd = open(p, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0)
        _exit(90);
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (write(fd, buf, (size_t)n) != n)
        _exit(91);
    close(fd);
}

/* The pid in path, 0 if none yet.  No Criterion here: forked helpers use it. */
static pid_t peek_pid(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return (pid_t)atoi(buf);
}

static pid_t read_pid(const char *path, double timeout_s)
{
    double end = now_s() + timeout_s;
    pid_t pid;
    while ((pid = peek_pid(path)) <= 0) {
        cr_assert_lt(now_s(), end, "no pid in %s after %.0f s", path, timeout_s);
        sleep_s(0.005);
    }
    return pid;
}

/* A helper process that waits for a pid to appear in path and SIGKILLs it:
 * "killed from outside", by a process that is not timebox. */
static pid_t start_killer(const char *path, int sig)
{
    pid_t k = fork();
    cr_assert_geq(k, 0, "fork: %s", strerror(errno));
    if (k == 0) {
        double end = now_s() + 60;
        pid_t pid;
        while ((pid = peek_pid(path)) <= 0 && now_s() < end)
            sleep_s(0.002);
        if (pid > 0)
            kill(pid, sig);
        _exit(pid > 0 ? 0 : 1);
    }
    return k;
}

static void reap_helper(pid_t pid, const char *what)
{
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid, "%s: waitpid: %s", what, strerror(errno));
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s ended with status %#x", what, st);
}

static double mono_s(void)
{
    return now_s();
}

static void check_status(int rc, const tbx_result *r)
{
    cr_assert_eq(r->status, rc, "status %d, returned %d", r->status, rc);
    if (rc != 0)
        cr_assert_not_null(r->message);
}

/* Patterned bytes, and a checksum the child and the parent both compute. */
static unsigned char pattern(size_t i)
{
    return (unsigned char)((i * 2654435761u) >> 13);
}

static uint64_t fnv1a(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* ------------------------------------------------- functions in the child */

/* Blocks SIGTERM with sigprocmask (not SIG_IGN), then hangs. */
static int fn_block_term(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, NULL);
    child_sleep(120);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_block_term);

static volatile sig_atomic_t cleanup_exit_code;

static void slow_cleanup(int sig)
{
    (void)sig;
    if (cleanup_exit_code > 0)
        _exit(cleanup_exit_code); /* a quick cleanup */
    child_sleep(120);             /* a cleanup that never ends */
    _exit(1);
}

/* args: exit code of the SIGTERM handler, 0 for one that sleeps 120 s.
 * Writes its pid to nothing; hangs until signalled. */
static int fn_term_handler(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    cleanup_exit_code = (sig_atomic_t)args->via.u64;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = slow_cleanup;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    child_sleep(120);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_term_handler);

/* Stops itself: it never runs again unless someone sends SIGCONT. */
static int fn_stop_self(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    raise(SIGSTOP);
    child_sleep(120);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_stop_self);

/* args: path; writes its pid there and hangs. */
static int fn_pid_hang(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    child_write_pid(args);
    child_sleep(120);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_pid_hang);

/* args: a bin; -> [len, fnv1a]. */
static int fn_sum(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_BIN)
        return tbx_fail(pk, 1, "expected bin");
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint64(pk, args->via.bin.size);
    return msgpack_pack_uint64(pk, fnv1a(args->via.bin.ptr, args->via.bin.size));
}
TBX_REGISTER(fn_sum);

/* args: the size; packs a bin of that many patterned bytes. */
static int fn_pattern(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    size_t len = (size_t)args->via.u64;
    unsigned char chunk[65536];
    msgpack_pack_bin(pk, len);
    for (size_t off = 0; off < len; off += sizeof chunk) {
        size_t n = len - off < sizeof chunk ? len - off : sizeof chunk;
        for (size_t i = 0; i < n; i++)
            chunk[i] = pattern(off + i);
        msgpack_pack_bin_body(pk, chunk, n);
    }
    return 0;
}
TBX_REGISTER(fn_pattern);

/* args [depth, count]: depth nested arrays of one element around an array
 * header that claims count elements and has none (count 0: an int). */
static int fn_nest(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    uint64_t depth = args->via.array.ptr[0].via.u64, count = args->via.array.ptr[1].via.u64;
    for (uint64_t i = 0; i < depth; i++)
        msgpack_pack_array(pk, 1);
    if (count > 0)
        return msgpack_pack_array(pk, (size_t)count);
    return msgpack_pack_int(pk, 7);
}
TBX_REGISTER(fn_nest);

/* -> [descriptors open, descriptors that are the test's inherited memfd] */
static int fn_count_fds(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return tbx_fail(pk, 1, "opendir: %s", strerror(errno));
    int total = 0, inherited = 0, self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == self)
            continue;
        char target[256];
        fd_target(atoi(e->d_name), target, sizeof target);
        total++;
        inherited += strstr(target, "tbx-inherit") != NULL;
    }
    closedir(d);
    msgpack_pack_array(pk, 2);
    msgpack_pack_int(pk, total);
    return msgpack_pack_int(pk, inherited);
}
TBX_REGISTER(fn_count_fds);

/* ---------------------------------------------- raw frames from the child
 *
 * The result descriptor is found without knowing the method: it is the one
 * pipe write end at fd >= 3 that is blocking (libuv's loop pipes are not),
 * whose pipe the caller did not have open before the call (the caller sends
 * the inodes of the pipes it had) and does have open now (the caller sends
 * its pid; its engine holds the read end).  That leaves out the pipes a
 * child has of its own, such as libuv's signal lock, which libuv makes anew
 * in every fork child.  Not exactly one: _exit(77 + how many). */
static unsigned long pipe_inode(const char *target)
{
    unsigned long ino = 0;
    return sscanf(target, "pipe:[%lu]", &ino) == 1 ? ino : 0;
}

/* The pipe inodes among pid's descriptors, up to max. */
static int pipes_of(pid_t pid, unsigned long *ino, int max)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < max) {
        if (e->d_name[0] == '.')
            continue;
        char path[64 + sizeof e->d_name], target[64];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ssize_t t = readlink(path, target, sizeof target - 1);
        target[t < 0 ? 0 : t] = '\0';
        unsigned long i = pipe_inode(target);
        if (i != 0)
            ino[n++] = i;
    }
    closedir(d);
    return n;
}

static int find_result_fd(const msgpack_object *known, pid_t caller)
{
    static unsigned long callers[1024];
    int ncallers = pipes_of(caller, callers, 1024);
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        _exit(76);
    int found = -1, n = 0, self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == self || fd < 3)
            continue;
        char target[64];
        fd_target(fd, target, sizeof target);
        unsigned long ino = pipe_inode(target);
        int fl = fcntl(fd, F_GETFL);
        if (ino == 0 || fl < 0 || (fl & O_ACCMODE) != O_WRONLY || (fl & O_NONBLOCK))
            continue;
        int old = 0, theirs = 0;
        for (uint32_t i = 0; i < known->via.array.size; i++)
            old |= known->via.array.ptr[i].via.u64 == ino;
        for (int i = 0; i < ncallers; i++)
            theirs |= callers[i] == ino;
        if (!old && theirs) {
            found = fd;
            n++;
        }
    }
    closedir(d);
    if (n != 1)
        _exit(77 + (n > 20 ? 20 : n));
    return found;
}

enum { RAW_EXIT, RAW_RETURN };

/* args [bytes (bin), known pipe inodes, mode, caller pid]: writes bytes to the result
 * descriptor, then _exit(0) (RAW_EXIT) or returns 5 the usual way
 * (RAW_RETURN: timebox writes its own frame after them). */
static int fn_raw(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *a = args->via.array.ptr;
    int fd = find_result_fd(&a[1], (pid_t)a[3].via.u64);
    const char *p = a[0].via.bin.ptr;
    size_t left = a[0].via.bin.size;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(75);
        p += w;
        left -= (size_t)w;
    }
    if (a[2].via.u64 == RAW_EXIT)
        _exit(0);
    return msgpack_pack_int(pk, 5);
}
TBX_REGISTER(fn_raw);

/* The pipes this process has open, by inode. */
static int my_pipes(unsigned long *ino, int max)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0, self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == self)
            continue;
        char target[64];
        fd_target(atoi(e->d_name), target, sizeof target);
        unsigned long i = pipe_inode(target);
        if (i != 0 && n < max)
            ino[n++] = i;
    }
    closedir(d);
    return n;
}

/* A frame header as the child writes it (see lib/internal.h: host byte
 * order, magic "TBX1"). */
struct frame_hdr {
    uint32_t magic, kind;
    int32_t fail_code;
    uint32_t reserved;
    uint64_t len;
};
#define FRAME_MAGIC 0x31584254u
enum { K_OK = 1, K_FAIL = 2, K_START = 3, K_ERROR = 4, K_OK_BULK = 5 };

struct raw {
    unsigned char buf[512];
    size_t len;
};

static void raw_hdr(struct raw *r, uint32_t magic, uint32_t kind, int32_t code, uint32_t reserved,
                    uint64_t len)
{
    struct frame_hdr h = {magic, kind, code, reserved, len};
    cr_assert_leq(r->len + sizeof h, sizeof r->buf);
    memcpy(r->buf + r->len, &h, sizeof h);
    r->len += sizeof h;
}

static void raw_bytes(struct raw *r, const void *p, size_t len)
{
    cr_assert_leq(r->len + len, sizeof r->buf);
    memcpy(r->buf + r->len, p, len);
    r->len += len;
}

/* Runs fn_raw with these bytes. */
static int raw_call(tbx_method m, const struct raw *bytes, int mode, int soft, tbx_result *r)
{
    unsigned long ino[256];
    int n = my_pipes(ino, 256);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_bin_with_body(&pk, bytes->buf, bytes->len);
    msgpack_pack_array(&pk, (size_t)n);
    for (int i = 0; i < n; i++)
        msgpack_pack_uint64(&pk, ino[i]);
    msgpack_pack_int(&pk, mode);
    msgpack_pack_uint64(&pk, (uint64_t)getpid());
    tbx_opts o = test_opts(m);
    o.timeout_s = 60;
    o.hard_timeout = !soft;
    int rc = tbx_call(fn_raw, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    check_status(rc, r);
    cr_assert(rc == 0 || r->exit_code < 75 || r->exit_code > 97,
              "the function could not find its result descriptor (exit %d)", r->exit_code);
    return rc;
}

/* ================================================================ child */

TBX_TEST(child, sigterm_blocked_with_sigprocmask_gets_sigkill)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 1.0;
    o.grace_s = 0.3;
    o.hard_timeout = 0; /* from fn's start: fn sets up its signals first */
    tbx_result r;
    int rc = tbx_call(fn_block_term, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_eq(r.exit_code, -1);
    cr_assert_geq(r.elapsed_s, 1.3, "elapsed %f", r.elapsed_s);
    cr_assert_lt(r.elapsed_s, 30.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A SIGTERM handler that takes longer than the grace period: SIGKILL at
 * the end of the grace, not at the end of the cleanup. */
TBX_TEST(child, cleanup_longer_than_grace_gets_sigkill)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)0);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 1.0;
    o.grace_s = 0.5;
    o.hard_timeout = 0; /* from fn's start: fn sets up its signals first */
    tbx_result r;
    int rc = tbx_call(fn_term_handler, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_geq(r.elapsed_s, 1.5, "elapsed %f", r.elapsed_s);
    cr_assert_lt(r.elapsed_s, 30.0, "the cleanup (120 s) was waited for");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A quick cleanup that exits by itself inside the grace: no SIGKILL, and its
 * exit code is reported with the timeout. */
TBX_TEST(child, cleanup_within_grace_keeps_its_exit_code)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)7);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 1.0;
    o.grace_s = 20;
    o.hard_timeout = 0; /* from fn's start: fn sets up its signals first */
    tbx_result r;
    int rc = tbx_call(fn_term_handler, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGTERM);
    cr_assert_eq(r.exit_code, 7);
    cr_assert_eq(r.term_signal, 0);
    cr_assert_lt(r.elapsed_s, 20.0, "the grace period was waited out");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A stopped child cannot act on SIGTERM: SIGKILL after the grace. */
TBX_TEST(child, stopped_child_gets_sigkill)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.5;
    o.grace_s = 0.3;
    o.hard_timeout = 0; /* from fn's start: fn sets up its signals first */
    tbx_result r;
    int rc = tbx_call(fn_stop_self, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_lt(r.elapsed_s, 30.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* kill -9 of the child by another process mid-run: seen at once, not at the
 * deadline. */
TBX_TEST(child, killed_from_outside_is_seen_at_once)
{
    char path[64];
    temp_path(path, sizeof path);
    pid_t killer = start_killer(path, SIGKILL);
    msgpack_sbuffer sb;
    pack(&sb, "s", path);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    tbx_result r;
    int rc = tbx_call(fn_pid_hang, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    reap_helper(killer, "the killer");
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGKILL);
    cr_assert_eq(r.kill_signal, 0, "timebox did not send it");
    cr_assert_eq(r.exit_code, -1);
    cr_assert_eq(r.pid, peek_pid(path));
    cr_assert_lt(r.elapsed_s, 50.0, "the kill was noticed only at the deadline");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

/* The same with SIGTERM from outside, which is not timebox's either. */
TBX_TEST(child, sigterm_from_outside_is_a_crash)
{
    char path[64];
    temp_path(path, sizeof path);
    pid_t killer = start_killer(path, SIGTERM);
    msgpack_sbuffer sb;
    pack(&sb, "s", path);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    tbx_result r;
    int rc = tbx_call(fn_pid_hang, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    reap_helper(killer, "the killer");
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGTERM);
    cr_assert_eq(r.kill_signal, 0);
    cr_assert_lt(r.elapsed_s, 50.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

#define BIG_ARGS ((size_t)64 << 20)

static void pack_big_bin(msgpack_sbuffer *sb, size_t len)
{
    unsigned char *data = malloc(len);
    cr_assert_not_null(data);
    for (size_t i = 0; i < len; i++)
        data[i] = pattern(i);
    pack(sb, "x", (const void *)data, len);
    free(data);
}

/* 64 MiB of args to a function that crashes: for spawn and the forkserver
 * the request is written as the child (or server) reads it. */
TBX_TEST(child, crash_with_64mib_args)
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    tbx_result r;
    int rc = tbx_call(fn_segv, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGSEGV);
    cr_assert_lt(r.elapsed_s, 60.0);
    tbx_result_free(&r);
    /* And the same args arrive whole when nothing crashes. */
    rc = tbx_call(fn_sum, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.via.array.ptr[0].via.u64, BIG_ARGS);
    cr_assert_eq(r.value.via.array.ptr[1].via.u64, fnv1a(sb.data + 5, BIG_ARGS));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A spawned program that reads 4 KiB of its 64 MiB request and crashes, or
 * reads nothing and exits: an error, no hang, no SIGPIPE in the caller. */
TBX_PLAIN_TEST(child, spawned_program_dies_before_reading_all_args)
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    tbx_opts o = test_opts(TBX_SPAWN);
    o.timeout_s = 100;
    o.executable = "/bin/sh";
    char *crash[] = {"sh", "-c", "head -c 4096 <&3 >/dev/null; kill -SEGV $$", NULL};
    o.argv = crash;
    tbx_result r;
    int rc = tbx_call(fn_sum, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ECRASHED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.term_signal, SIGSEGV);
    cr_assert_lt(r.elapsed_s, 60.0);
    tbx_result_free(&r);

    char *leave[] = {"sh", "-c", "exec 3<&-; exit 3", NULL};
    o.argv = leave;
    rc = tbx_call(fn_sum, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_EEXITED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.exit_code, 3);
    cr_assert_lt(r.elapsed_s, 60.0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static void move_cb(tbx_req *req, tbx_result *r)
{
    tbx_result *out = req->data;
    *out = *r; /* the callback owns it: moved out, freed by the test */
}

/* The forkserver dies while 64 MiB of args are still on their way to it. */
TBX_PLAIN_TEST(child, forkserver_dies_while_args_are_written)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_req req;
    tbx_result r;
    memset(&r, 0, sizeof r);
    req.data = &r;
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 100;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_sum, sb.data, sb.size, &o, move_cb), 0);
    pid_t server = tbx_forkserver_pid();
    cr_assert_gt(server, 0);
    cr_assert_eq(kill(server, SIGKILL), 0);
    double t0 = mono_s();
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(r.status, -ECONNRESET, "%s: %s", tbx_err_name(r.status), r.message);
    cr_assert_lt(mono_s() - t0, 30.0);
    tbx_result_free(&r);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* ============================================================== results */

static void check_pattern_result(tbx_method m, size_t len, size_t max_result)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)len);
    tbx_opts o = test_opts(m);
    o.timeout_s = 200;
    o.max_result = max_result;
    tbx_result r;
    int rc = tbx_call(fn_pattern, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, 0, "%zu bytes: %s: %s", len, tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_BIN);
    cr_assert_eq(r.value.via.bin.size, len);
    const unsigned char *p = (const unsigned char *)r.value.via.bin.ptr;
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern(i))
            cr_assert_fail("%zu bytes: byte %zu is %u, not %u", len, i, p[i], pattern(i));
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* Around 64 KiB: the pipe's default size and the engine's first read
 * buffer.  A bin of n bytes packs to n + 5 (bin32) or n + 3 (bin16). */
TBX_TEST(results, around_64kib)
{
    size_t sizes[] = {65536 - 4, 65536 - 3, 65536 - 2, 65536 - 5, 65536, 65536 + 1,
                      2 * 65536 - 5, 2 * 65536 - 4};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        check_pattern_result(*method, sizes[i], 0);
    /* Exactly at max_result, and one byte over. */
    check_pattern_result(*method, 65536, 65536 + 5);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)65536);
    tbx_opts o = test_opts(*method);
    o.max_result = 65536 + 4;
    tbx_result r;
    int rc = tbx_call(fn_pattern, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ETOOBIG, "%s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(results, result_16mib)
{
    check_pattern_result(*method, (size_t)16 << 20, 0);
}

TBX_TEST_T(results, result_100mib, 300.0)
{
    check_pattern_result(*method, (size_t)100 << 20, 0);
}

/* 100 MiB against a 64 MiB limit: refused, child killed. */
TBX_TEST_T(results, result_100mib_over_max_result, 300.0)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)100 << 20);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 200;
    o.max_result = (size_t)64 << 20;
    tbx_result r;
    int rc = tbx_call(fn_pattern, sb.data, sb.size, &o, &r);
    check_status(rc, &r);
    cr_assert_eq(rc, TBX_ETOOBIG, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(r.kill_signal == 0 || r.kill_signal == SIGKILL, "kill_signal %d", r.kill_signal);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* Results nested deeper than msgpack-c unpacks (32), or with a count that
 * lies: TBX_EPROTO; 31 levels are fine. */
TBX_TEST(results, too_deep_or_lying_counts_are_eproto)
{
    const struct {
        uint64_t depth, count;
        int want;
    } cases[] = {
        {31, 0, 0},
        {33, 0, TBX_EPROTO},
        {1000, 0, TBX_EPROTO},
        {100000, 0, TBX_EPROTO},
        {0, 0xffffffffu, TBX_EPROTO},
        {0, 3, TBX_EPROTO},
        {5, 1000000, TBX_EPROTO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_sbuffer sb;
        pack(&sb, "a u u", 2, cases[i].depth, cases[i].count);
        tbx_opts o = test_opts(*method);
        o.timeout_s = 60;
        tbx_result r;
        int rc = tbx_call(fn_nest, sb.data, sb.size, &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, cases[i].want, "depth %llu, count %llu: %s: %s",
                     (unsigned long long)cases[i].depth, (unsigned long long)cases[i].count,
                     tbx_err_name(rc), r.message);
        if (rc == 0)
            cr_assert_eq(r.value.type, MSGPACK_OBJECT_ARRAY);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* =============================================================== frames */

/* The function's own frame, written raw, is taken as a result: this proves
 * the descriptor finder, so the failures below are about the bytes. */
TBX_TEST(frames, raw_valid_frames_are_results)
{
    struct raw b = {.len = 0};
    unsigned char v[] = {0x92, 0x01, 0xa2, 'o', 'k'}; /* [1, "ok"] */
    raw_hdr(&b, FRAME_MAGIC, K_OK, 0, 0, sizeof v);
    raw_bytes(&b, v, sizeof v);
    tbx_result r;
    int rc = raw_call(*method, &b, RAW_EXIT, 0, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_ARRAY);
    cr_assert(obj_str_eq(&r.value.via.array.ptr[1], "ok"));
    tbx_result_free(&r);

    struct raw f = {.len = 0};
    raw_hdr(&f, FRAME_MAGIC, K_FAIL, 33, 0, 4);
    raw_bytes(&f, "oops", 4);
    rc = raw_call(*method, &f, RAW_EXIT, 0, &r);
    cr_assert_eq(rc, TBX_EFAILED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.fail_code, 33);
    cr_assert_str_eq(r.message, "oops");
    tbx_result_free(&r);
}

TBX_TEST(frames, garbage_and_bad_headers_are_eproto)
{
    struct {
        const char *what;
        struct raw b;
    } cases[14];
    size_t n = 0;
    memset(cases, 0, sizeof cases);

    cases[n].what = "garbage";
    for (int i = 0; i < 100; i++)
        cases[n].b.buf[i] = (unsigned char)(i * 37 + 11);
    cases[n++].b.len = 100;

    cases[n].what = "text";
    raw_bytes(&cases[n++].b, "hello, I am not a frame at all, just text\n", 42);

    cases[n].what = "bad magic";
    raw_hdr(&cases[n].b, 0x31584255u, K_OK, 0, 0, 1);
    raw_bytes(&cases[n++].b, "\xc0", 1);

    cases[n].what = "reserved set";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_OK, 0, 1, 1);
    raw_bytes(&cases[n++].b, "\xc0", 1);

    cases[n].what = "unknown kind";
    raw_hdr(&cases[n].b, FRAME_MAGIC, 99, 0, 0, 1);
    raw_bytes(&cases[n++].b, "\xc0", 1);

    cases[n].what = "kind 0";
    raw_hdr(&cases[n].b, FRAME_MAGIC, 0, 0, 0, 0);
    n++;

    cases[n].what = "fail message over 1023 bytes";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_FAIL, 1, 0, 1024);
    raw_bytes(&cases[n++].b, "xxxx", 4);

    cases[n].what = "START with a payload";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_START, 0, 0, 3);
    raw_bytes(&cases[n++].b, "abc", 3);

    cases[n].what = "zero-length OK";
    raw_hdr(&cases[n++].b, FRAME_MAGIC, K_OK, 0, 0, 0);

    cases[n].what = "OK payload not msgpack";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_OK, 0, 0, 1);
    raw_bytes(&cases[n++].b, "\xc1", 1);

    cases[n].what = "ERROR with a code no worker sends";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_ERROR, 12345, 0, 2);
    raw_bytes(&cases[n++].b, "no", 2);

    /* The result is in the bulk memfd, says the child; but nothing is
     * there, and nothing sealed it. */
    cases[n].what = "bulk result in an unsealed, empty memfd";
    raw_hdr(&cases[n++].b, FRAME_MAGIC, K_OK_BULK, 0, 0, 4096);

    cases[n].what = "zero-length bulk result";
    raw_hdr(&cases[n++].b, FRAME_MAGIC, K_OK_BULK, 0, 0, 0);

    for (size_t i = 0; i < n; i++) {
        tbx_result r;
        int rc = raw_call(*method, &cases[i].b, RAW_EXIT, 0, &r);
        cr_assert_eq(rc, TBX_EPROTO, "%s: %s: %s", cases[i].what, tbx_err_name(rc), r.message);
        cr_assert_eq(r.value.type, MSGPACK_OBJECT_NIL);
        tbx_result_free(&r);
    }
}

/* A header whose length is over max_result: refused as too big, whatever
 * the length (up to 2^64 - 1), before anything is allocated for it. */
TBX_TEST(frames, oversize_length_header_is_etoobig)
{
    uint64_t lens[] = {(uint64_t)1 << 40, UINT64_MAX, ((uint64_t)256 << 20) + 1};
    for (size_t i = 0; i < 3; i++) {
        struct raw b = {.len = 0};
        raw_hdr(&b, FRAME_MAGIC, K_OK, 0, 0, lens[i]);
        raw_bytes(&b, "\x01\x02\x03", 3);
        tbx_result r;
        int rc = raw_call(*method, &b, RAW_EXIT, 0, &r);
        cr_assert_eq(rc, TBX_ETOOBIG, "len %llu: %s: %s", (unsigned long long)lens[i],
                     tbx_err_name(rc), r.message);
        tbx_result_free(&r);
    }
}

TBX_TEST(frames, truncated_frames_are_eproto)
{
    struct raw half_header = {.len = 0};
    raw_hdr(&half_header, FRAME_MAGIC, K_OK, 0, 0, 5);
    half_header.len = 10;

    struct raw short_payload = {.len = 0};
    raw_hdr(&short_payload, FRAME_MAGIC, K_OK, 0, 0, 100);
    raw_bytes(&short_payload, "\x92\x01", 2);

    struct raw short_fail = {.len = 0};
    raw_hdr(&short_fail, FRAME_MAGIC, K_FAIL, 4, 0, 50);
    raw_bytes(&short_fail, "cut", 3);

    struct raw one_byte = {.len = 0};
    raw_bytes(&one_byte, "T", 1);

    const struct raw *cases[] = {&half_header, &short_payload, &short_fail, &one_byte};
    const char *what[] = {"half a header", "short payload", "short fail message", "one byte"};
    for (size_t i = 0; i < 4; i++) {
        tbx_result r;
        int rc = raw_call(*method, cases[i], RAW_EXIT, 0, &r);
        cr_assert_eq(rc, TBX_EPROTO, "%s: %s: %s", what[i], tbx_err_name(rc), r.message);
        cr_assert_eq(r.exit_code, 0, "%s", what[i]);
        tbx_result_free(&r);
    }
}

/* Bytes after a complete frame: the child's output is not one result frame.
 * Here fn writes a whole frame of its own and returns, so timebox's frame
 * follows it: the caller must not take the first for the result. */
TBX_TEST(frames, second_frame_after_a_frame_is_eproto)
{
    unsigned char v[] = {0x2a}; /* 42 */
    struct raw frame = {.len = 0};
    raw_hdr(&frame, FRAME_MAGIC, K_OK, 0, 0, 1);
    raw_bytes(&frame, v, 1);
    tbx_result r;
    int rc = raw_call(*method, &frame, RAW_RETURN, 0, &r);
    cr_assert_eq(rc, TBX_EPROTO, "two frames: %s (value type %d, %s)", tbx_err_name(rc),
                 r.value.type, r.message ? r.message : "-");
    tbx_result_free(&r);
}

/* A whole frame, then junk, then exit. */
TBX_TEST(frames, junk_after_a_frame_is_eproto)
{
    unsigned char v[] = {0x2a};
    struct raw junk = {.len = 0};
    raw_hdr(&junk, FRAME_MAGIC, K_OK, 0, 0, 1);
    raw_bytes(&junk, v, 1);
    raw_bytes(&junk, "junk", 4);
    tbx_result r;
    int rc = raw_call(*method, &junk, RAW_EXIT, 0, &r);
    cr_assert_eq(rc, TBX_EPROTO, "frame + junk: %s (value type %d, %s)", tbx_err_name(rc),
                 r.value.type, r.message ? r.message : "-");
    tbx_result_free(&r);
}

/* A START frame written by fn: a second START (soft deadlines, where the
 * child or worker says START before fn) or one the caller did not expect. */
TBX_TEST(frames, second_start_is_eproto)
{
    struct raw start = {.len = 0};
    raw_hdr(&start, FRAME_MAGIC, K_START, 0, 0, 0);
    tbx_result r;
    /* Soft deadline: every method has said START already. */
    int rc = raw_call(*method, &start, RAW_RETURN, 1, &r);
    cr_assert_eq(rc, TBX_EPROTO, "soft: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    /* Twice, whatever came before. */
    struct raw twice = start;
    raw_hdr(&twice, FRAME_MAGIC, K_START, 0, 0, 0);
    rc = raw_call(*method, &twice, RAW_RETURN, 0, &r);
    cr_assert_eq(rc, TBX_EPROTO, "hard, two STARTs: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
}

/* ============================================================ deadlines */

TBX_TEST(deadlines, zero_or_negative_is_no_deadline)
{
    double timeouts[] = {0.0, -1.0, -INFINITY};
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)300);
    for (size_t i = 0; i < 3; i++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = timeouts[i];
        tbx_result r;
        int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, 0, "timeout %f: %s: %s", timeouts[i], tbx_err_name(rc), r.message);
        cr_assert_eq(r.kill_signal, 0);
        cr_assert_geq(r.elapsed_s, 0.3);
        tbx_result_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(deadlines, one_millisecond)
{
    msgpack_sbuffer hang, quick;
    pack(&hang, "u", (uint64_t)60000);
    pack(&quick, "s", "quick");
    for (int soft = 0; soft <= 1; soft++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = 0.001;
        o.grace_s = 0.2;
        o.hard_timeout = !soft;
        tbx_result r;
        int rc = tbx_call(fn_sleep_ms, hang.data, hang.size, &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, TBX_ETIMEDOUT, "soft %d: %s: %s", soft, tbx_err_name(rc), r.message);
        cr_assert(r.kill_signal == SIGTERM || r.kill_signal == SIGKILL);
        cr_assert_lt(r.elapsed_s, 30.0);
        tbx_result_free(&r);
        /* A child quicker than that may win or lose: either way the result
         * says which, and nothing is left. */
        for (int i = 0; i < 10; i++) {
            rc = tbx_call(fn_echo, quick.data, quick.size, &o, &r);
            check_status(rc, &r);
            cr_assert(rc == 0 || rc == TBX_ETIMEDOUT, "soft %d: %s: %s", soft, tbx_err_name(rc),
                      r.message);
            if (rc == 0)
                cr_assert(obj_str_eq(&r.value, "quick"));
            tbx_result_free(&r);
        }
    }
    msgpack_sbuffer_destroy(&hang);
    msgpack_sbuffer_destroy(&quick);
}

/* A deadline so near it has passed before the child exists. */
TBX_TEST(deadlines, already_past)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    double timeouts[] = {1e-9, 1e-300, 5e-324};
    for (size_t i = 0; i < 3; i++) {
        for (int soft = 0; soft <= 1; soft++) {
            tbx_opts o = test_opts(*method);
            o.timeout_s = timeouts[i];
            o.grace_s = 0.2;
            o.hard_timeout = !soft;
            tbx_result r;
            int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, &o, &r);
            check_status(rc, &r);
            cr_assert_eq(rc, TBX_ETIMEDOUT, "timeout %g soft %d: %s: %s", timeouts[i], soft,
                         tbx_err_name(rc), r.message);
            cr_assert_lt(r.elapsed_s, 30.0);
            tbx_result_free(&r);
        }
    }
    msgpack_sbuffer_destroy(&sb);
}

static int fn_left(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_double(pk, tbx_remaining());
}
TBX_REGISTER(fn_left);

/* Deadlines too far to be represented behave as no deadline soon, and the
 * function sees plenty of time left. */
TBX_TEST(deadlines, huge_timeouts)
{
    double timeouts[] = {1e12, 1e300, INFINITY, 18e9};
    msgpack_sbuffer sb;
    pack(&sb, "s", "far");
    for (size_t i = 0; i < 4; i++) {
        for (int soft = 0; soft <= 1; soft++) {
            tbx_opts o = test_opts(*method);
            o.timeout_s = timeouts[i];
            o.hard_timeout = !soft;
            tbx_result r;
            int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
            check_status(rc, &r);
            cr_assert_eq(rc, 0, "timeout %g soft %d: %s: %s", timeouts[i], soft,
                         tbx_err_name(rc), r.message);
            cr_assert_eq(r.kill_signal, 0);
            tbx_result_free(&r);
            rc = tbx_call(fn_left, sb.data, sb.size, &o, &r);
            cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
            cr_assert_gt(r.value.via.f64, 1e6, "timeout %g soft %d: tbx_remaining() is %g",
                         timeouts[i], soft, r.value.via.f64);
            tbx_result_free(&r);
        }
    }
    msgpack_sbuffer_destroy(&sb);
}

/* ================================================================= host */

static volatile sig_atomic_t host_reaped;

static void host_reaper(int sig)
{
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        host_reaped++;
    errno = saved;
}

/* A host with its own SIGCHLD handler that reaps every child with
 * waitpid(-1), no SA_RESTART.  Calls still complete.  When the host reaps
 * timebox's child first, its wait status is lost: a crash or an exit then
 * comes back as TBX_EEXITED, exit_code -1, with a message saying so (see
 * engine.c check_exit).  A complete result is still a result, and a timeout
 * still a timeout.  The forkserver's children are the server's, and never
 * reach the host's handler. */
TBX_TEST_T(host, reaps_children_with_waitpid_minus_one, 300.0)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = host_reaper;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGCHLD, &sa, &old), 0);
    int host_won = 0;
    for (int i = 0; i < 60; i++) {
        int kind = i % 4;
        msgpack_sbuffer sb;
        tbx_fn *fn = kind == 0 ? fn_echo : kind == 1 ? fn_segv : kind == 2 ? fn_exit : fn_sleep_ms;
        if (kind == 0)
            pack(&sb, "i", (int64_t)i);
        else if (kind == 2)
            pack(&sb, "u", (uint64_t)9);
        else if (kind == 3)
            pack(&sb, "u", (uint64_t)60000);
        else
            pack(&sb, "n");
        tbx_opts o = test_opts(*method);
        o.timeout_s = kind == 3 ? 0.2 : 60;
        o.grace_s = 0.2;
        tbx_result r;
        int rc = tbx_call(fn, sb.data, sb.size, &o, &r);
        check_status(rc, &r);
        int lost = rc == TBX_EEXITED && r.exit_code == -1 && r.term_signal == 0 &&
                   strstr(r.message, "reaped") != NULL;
        host_won += lost;
        switch (kind) {
        case 0:
            cr_assert_eq(rc, 0, "method %d, call %d: %s: %s", (int)*method, i, tbx_err_name(rc),
                         r.message);
            cr_assert_eq(obj_int(&r.value), i);
            break;
        case 1:
            cr_assert(lost || (rc == TBX_ECRASHED && r.term_signal == SIGSEGV),
                      "call %d: %s: %s (term %d)", i, tbx_err_name(rc), r.message, r.term_signal);
            break;
        case 2:
            cr_assert(lost || (rc == TBX_EEXITED && r.exit_code == 9), "call %d: %s: %s", i,
                      tbx_err_name(rc), r.message);
            break;
        case 3:
            cr_assert_eq(rc, TBX_ETIMEDOUT, "call %d: %s: %s", i, tbx_err_name(rc), r.message);
            break;
        }
        cr_assert_lt(r.elapsed_s, 30.0);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
    cr_assert_eq(sigaction(SIGCHLD, &old, NULL), 0);
    if (*method == TBX_FORKSERVER)
        cr_assert_eq(host_won, 0, "the host reaped a forkserver child");
    cr_log_info("host reaped first in %d of 60 calls (%d reaps)", host_won, (int)host_reaped);
}

struct uvp {
    uv_process_t proc;
    int exited;
    int64_t status;
    int term;
};

static void uvp_exit(uv_process_t *p, int64_t status, int term)
{
    struct uvp *u = p->data;
    u->exited++;
    u->status = status;
    u->term = term;
    uv_close((uv_handle_t *)p, NULL);
}

struct hreq {
    tbx_req req;
    int kind, calls;
    int64_t n;
    char bad[256];
};

static void hreq_cb(tbx_req *req, tbx_result *r)
{
    struct hreq *h = req->data;
    h->calls++;
    const char *bad = mixed_mismatch(h->kind, h->n, r->status, r);
    if (bad != NULL)
        snprintf(h->bad, sizeof h->bad, "%s", bad);
    tbx_result_free(r);
}

/* The host's own uv_spawn children on the loop that runs timebox's calls:
 * libuv's SIGCHLD handling and timebox's pidfds do not take each other's
 * children. */
TBX_TEST(host, own_uv_spawn_children_on_the_same_loop)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    enum { NPROC = 12, NCALL = 40 };
    struct uvp procs[NPROC];
    struct hreq calls[NCALL];
    memset(procs, 0, sizeof procs);
    memset(calls, 0, sizeof calls);
    for (int i = 0; i < NCALL; i++) {
        struct hreq *h = &calls[i];
        h->req.data = h;
        h->kind = i % MIX_KINDS;
        h->n = h->kind == MIX_EXIT ? 1 + i : i;
        msgpack_sbuffer sb;
        pack(&sb, "a i i", 2, (int64_t)h->kind, h->n);
        tbx_opts o = test_opts(*method);
        o.timeout_s = h->kind == MIX_HANG ? 0.3 : 60;
        o.grace_s = 0.2;
        cr_assert_eq(tbx_call_async(&loop, &h->req, fn_mixed, sb.data, sb.size, &o, hreq_cb), 0);
        msgpack_sbuffer_destroy(&sb);
        if (i % 3 == 0 && i / 3 < NPROC) {
            struct uvp *u = &procs[i / 3];
            char code[8];
            snprintf(code, sizeof code, "%d", 10 + i / 3);
            char script[64];
            snprintf(script, sizeof script, "sleep 0.%d; exit %s", i % 5, code);
            char *args[] = {"sh", "-c", script, NULL};
            uv_process_options_t po;
            memset(&po, 0, sizeof po);
            po.file = "/bin/sh";
            po.args = args;
            po.exit_cb = uvp_exit;
            u->proc.data = u;
            cr_assert_eq(uv_spawn(&loop, &u->proc, &po), 0);
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < NCALL; i++) {
        cr_assert_eq(calls[i].calls, 1, "call %d: %d callbacks", i, calls[i].calls);
        cr_assert_eq(calls[i].bad[0], '\0', "call %d: %s", i, calls[i].bad);
    }
    for (int i = 0; i < NPROC; i++) {
        cr_assert_eq(procs[i].exited, 1, "uv process %d: %d exits", i, procs[i].exited);
        cr_assert_eq(procs[i].status, 10 + i, "uv process %d: status %lld, signal %d", i,
                     (long long)procs[i].status, procs[i].term);
    }
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* The caller frees (and scribbles over) its 64 MiB of args as soon as
 * tbx_call_async returns, while they are still being written to the child:
 * the child gets them whole. */
TBX_TEST(host, frees_args_mid_call)
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    uint64_t want = fnv1a(sb.data + 5, BIG_ARGS);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_req req;
    tbx_result r;
    memset(&r, 0, sizeof r);
    req.data = &r;
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_sum, sb.data, sb.size, &o, move_cb), 0);
    memset(sb.data, 0xee, sb.size);
    msgpack_sbuffer_destroy(&sb);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(r.status, 0, "%s: %s", tbx_err_name(r.status), r.message);
    cr_assert_eq(r.value.via.array.ptr[0].via.u64, BIG_ARGS);
    cr_assert_eq(r.value.via.array.ptr[1].via.u64, want, "the args arrived changed");
    tbx_result_free(&r);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* A cancel while 64 MiB of args are still on their way. */
TBX_TEST(host, cancels_while_args_are_written)
{
    msgpack_sbuffer sb;
    pack_big_bin(&sb, BIG_ARGS);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_req req;
    tbx_result r;
    memset(&r, 0, sizeof r);
    req.data = &r;
    tbx_opts o = test_opts(*method);
    o.timeout_s = 100;
    o.grace_s = 0.5;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_sum, sb.data, sb.size, &o, move_cb), 0);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(tbx_cancel(&req), 0);
    double t0 = mono_s();
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(r.status, TBX_ECANCELED, "%s: %s", tbx_err_name(r.status), r.message);
    cr_assert(r.kill_signal == SIGTERM || r.kill_signal == SIGKILL, "kill_signal %d",
              r.kill_signal);
    cr_assert_lt(mono_s() - t0, 30.0);
    cr_assert_eq(tbx_cancel(&req), TBX_EINVAL);
    tbx_result_free(&r);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* Cancels of calls at every stage, on one loop, some twice. */
TBX_TEST(host, cancels_at_every_stage)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    enum { N = 30 };
    tbx_req reqs[N];
    tbx_result res[N];
    memset(res, 0, sizeof res);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    for (int i = 0; i < N; i++) {
        reqs[i].data = &res[i];
        tbx_opts o = test_opts(*method);
        o.grace_s = 0.2;
        o.hard_timeout = i % 2;
        cr_assert_eq(tbx_call_async(&loop, &reqs[i], fn_sleep_ms, sb.data, sb.size, &o, move_cb),
                     0);
        if (i % 3 == 0) {
            cr_assert_eq(tbx_cancel(&reqs[i]), 0); /* at once */
            if (i % 2 == 0)
                cr_assert_eq(tbx_cancel(&reqs[i]), 0, "a second cancel");
        }
    }
    /* Then the rest, a little later, one at a time on the loop. */
    for (int i = 0; i < N; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (i % 3 != 0) {
            cr_assert_eq(tbx_cancel(&reqs[i]), 0, "call %d", i);
            if (i % 5 == 0)
                cr_assert_eq(tbx_cancel(&reqs[i]), 0, "a second cancel");
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(res[i].status, TBX_ECANCELED, "call %d: %s: %s", i,
                     tbx_err_name(res[i].status), res[i].message);
        tbx_result_free(&res[i]);
    }
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* 1000 descriptors without FD_CLOEXEC in the host.  spawn and forkserver
 * children see none of them; a fork child is a copy of the caller and holds
 * them all (fork copies every descriptor, and no exec closes any). */
TBX_TEST(host, thousand_inheritable_fds)
{
    raise_nofile_limit();
    int base = memfd_create("tbx-inherit", 0);
    cr_assert_geq(base, 0, "memfd_create: %s", strerror(errno));
    int fds[1000];
    fds[0] = base;
    for (int i = 1; i < 1000; i++) {
        fds[i] = fcntl(base, F_DUPFD, 100);
        cr_assert_geq(fds[i], 0, "dup %d: %s", i, strerror(errno));
    }
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_count_fds, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    int64_t total = obj_int(&r.value.via.array.ptr[0]);
    int64_t inherited = obj_int(&r.value.via.array.ptr[1]);
    if (*method == TBX_FORK) {
        cr_assert_eq(inherited, 1000, "a fork child holds the caller's descriptors");
    } else {
        cr_assert_eq(inherited, 0, "%lld of the host's descriptors reached the child",
                     (long long)inherited);
        cr_assert_lt(total, 24, "the child has %lld descriptors", (long long)total);
    }
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    for (int i = 0; i < 1000; i++)
        close(fds[i]);
}

static void ignore_cb(tbx_req *req, tbx_result *r)
{
    (void)req;
    tbx_result_free(r);
}

/* -> the descriptors (>= 3) of this process that are not close-on-exec,
 * as "fd:target" strings. */
static int fn_inheritable_fds(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    char list[32][160];
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return tbx_fail(pk, 1, "opendir: %s", strerror(errno));
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 32) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == self || fd < 3)
            continue;
        int fl = fcntl(fd, F_GETFD);
        if (fl < 0 || (fl & FD_CLOEXEC))
            continue;
        char target[128];
        fd_target(atoi(e->d_name), target, sizeof target);
        snprintf(list[n++], sizeof list[0], "%d:%s", fd, target);
    }
    closedir(d);
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++) {
        msgpack_pack_str(pk, strlen(list[i]));
        msgpack_pack_str_body(pk, list[i], strlen(list[i]));
    }
    return 0;
}
TBX_REGISTER(fn_inheritable_fds);

/* A spawned worker or a forkserver child holds its call's descriptors
 * close-on-exec: a program the function runs inherits none of them (a fork
 * child is a copy of the caller, whose own descriptors are the caller's
 * business). */
TBX_TEST(child, a_program_fn_runs_inherits_no_call_descriptor)
{
    if (*method == TBX_FORK)
        return;
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    o.capture_output = 1;          /* with the stdout, stderr pipes */
    o.backtrace_on_timeout = 1;    /* and the backtrace pipe */
    tbx_result r;
    int rc = tbx_call(fn_inheritable_fds, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_ARRAY);
    for (uint32_t i = 0; i < r.value.via.array.size; i++) {
        const msgpack_object_str *f = &r.value.via.array.ptr[i].via.str;
        cr_assert_fail("fd %.*s is inherited across exec", (int)f->size, f->ptr);
    }
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* Every descriptor timebox opens in the caller is close-on-exec: a program
 * the host starts meanwhile inherits none of them. */
TBX_TEST(host, every_descriptor_is_cloexec)
{
    int before[4096];
    memset(before, 0, sizeof before);
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.' && atoi(e->d_name) < 4096)
            before[atoi(e->d_name)] = 1;
    closedir(d);

    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)60000);
    tbx_req reqs[6];
    for (int i = 0; i < 6; i++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = i < 3 ? 30 : 0;
        o.hard_timeout = i % 2;
        o.grace_s = 0.1;
        cr_assert_eq(tbx_call_async(&loop, &reqs[i], fn_sleep_ms, sb.data, sb.size, &o, ignore_cb),
                     0);
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    int checked = 0;
    d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int self = dirfd(d);
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == self || (fd < 4096 && before[fd]))
            continue;
        int fl = fcntl(fd, F_GETFD);
        char target[128];
        fd_target(fd, target, sizeof target);
        cr_assert(fl >= 0 && (fl & FD_CLOEXEC), "fd %d (%s) is not close-on-exec", fd, target);
        checked++;
    }
    closedir(d);
    cr_assert_geq(checked, 6, "only %d new descriptors", checked);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(tbx_cancel(&reqs[i]), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* =========================================================== forkserver */

/* A client of a running forkserver (a forked copy of this process that
 * shares its connection) is SIGKILLed mid-call: the server kills its child,
 * and keeps serving. */
TBX_PLAIN_TEST(forkserver, client_killed_mid_call_takes_its_child)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    pid_t server = tbx_forkserver_pid();
    char path[64];
    temp_path(path, sizeof path);
    pid_t client = fork();
    cr_assert_geq(client, 0);
    if (client == 0) {
        /* A fresh loop: the parent's private loop is not the client's. */
        uv_loop_t loop;
        if (uv_loop_init(&loop) != 0)
            _exit(2);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_str_with_body(&pk, path, strlen(path));
        tbx_opts o;
        tbx_opts_init(&o);
        o.method = TBX_FORKSERVER;
        tbx_req req;
        if (tbx_call_async(&loop, &req, fn_pid_hang, sb.data, sb.size, &o, ignore_cb) != 0)
            _exit(3);
        uv_run(&loop, UV_RUN_DEFAULT);
        _exit(4);
    }
    pid_t child = read_pid(path, 30);
    cr_assert_eq(kill(client, SIGKILL), 0);
    int st;
    cr_assert_eq(waitpid(client, &st, 0), client);
    cr_assert(WIFSIGNALED(st), "the client ended with %#x", st);
    cr_assert(wait_gone(child, 20), "the call's child outlived its client");
    cr_assert_eq(tbx_forkserver_pid(), server);
    cr_assert_eq(kill(server, 0), 0, "the server died with its client");
    msgpack_sbuffer sb;
    pack(&sb, "s", "still here");
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, "still here"));
    cr_assert_eq(tbx_forkserver_pid(), server, "the server was restarted");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
}

/* args [when_ns (CLOCK_MONOTONIC), kind, n]: sleeps until when, then ends as
 * fn_mixed's kind says (MIX_HANG excepted). */
static int fn_end_at(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *a = args->via.array.ptr;
    uint64_t when = a[0].via.u64;
    struct timespec ts = {(time_t)(when / 1000000000u), (long)(when % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
    int kind = (int)a[1].via.u64;
    int64_t n = (int64_t)a[2].via.u64;
    switch (kind) {
    case MIX_OK:
        return msgpack_pack_int64(pk, n * 2);
    case MIX_SEGV:
        raise(SIGSEGV);
        break;
    case MIX_FAIL:
        return tbx_fail(pk, (int)n, "failed with %d", (int)n);
    case MIX_EXIT:
        _exit((int)n);
    }
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_end_at);

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* 100 calls started at once whose children all end at the same instant,
 * half by themselves and half at one shared deadline: the exits coalesce
 * (one pidfd wake-up, one SIGCHLD, one server read for many). */
TBX_TEST_T(server, hundred_at_once_with_coalesced_exits, 300.0)
{
    raise_nofile_limit();
    enum { N = 100 };
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct hreq *calls = calloc(N, sizeof *calls);
    cr_assert_not_null(calls);
    uint64_t at = mono_ns() + 2500000000ull;
    double deadline = now_s() + 2.5;
    for (int i = 0; i < N; i++) {
        struct hreq *h = &calls[i];
        h->req.data = h;
        int kinds[] = {MIX_OK, MIX_SEGV, MIX_FAIL, MIX_EXIT};
        msgpack_sbuffer sb;
        tbx_opts o = test_opts(*method);
        o.grace_s = 0.2;
        if (i % 2 == 0) {
            h->kind = kinds[(i / 2) % 4];
            h->n = h->kind == MIX_EXIT ? 1 + i : i;
            pack(&sb, "a u u u", 3, at, (uint64_t)h->kind, (uint64_t)h->n);
            o.timeout_s = 120;
            cr_assert_eq(tbx_call_async(&loop, &h->req, fn_end_at, sb.data, sb.size, &o,
                                        hreq_cb), 0, "call %d", i);
        } else {
            h->kind = MIX_HANG;
            h->n = i;
            pack(&sb, "a i i", 2, (int64_t)MIX_HANG, (int64_t)i);
            o.timeout_s = deadline - now_s(); /* one absolute deadline for all */
            if (o.timeout_s < 0.001)
                o.timeout_s = 0.001;
            cr_assert_eq(tbx_call_async(&loop, &h->req, fn_mixed, sb.data, sb.size, &o,
                                        hreq_cb), 0, "call %d", i);
        }
        msgpack_sbuffer_destroy(&sb);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    int wrong = 0;
    const char *first = "";
    for (int i = 0; i < N; i++) {
        cr_assert_eq(calls[i].calls, 1, "call %d: %d callbacks", i, calls[i].calls);
        if (calls[i].bad[0] != '\0' && wrong++ == 0)
            first = calls[i].bad;
    }
    cr_assert_eq(wrong, 0, "%d of %d wrong; first: %s", wrong, N, first);
    cr_assert_eq(uv_loop_close(&loop), 0);
    free(calls);
}

/* ================================================================= args */

static void pack_nested_args(msgpack_sbuffer *sb, int depth)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    for (int i = 0; i < depth; i++)
        msgpack_pack_array(&pk, 1);
    msgpack_pack_int(&pk, 1);
}

/* Args nested deeper than 32, or claiming more elements than they hold:
 * TBX_EINVAL before any child is made.  31 levels are echoed. */
TBX_TEST(args, too_deep_or_huge_counts_refused_before_launch)
{
    int depths[] = {33, 64, 1000, 100000};
    for (size_t i = 0; i < 4; i++) {
        msgpack_sbuffer sb;
        pack_nested_args(&sb, depths[i]);
        tbx_opts o = test_opts(*method);
        tbx_result r;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, TBX_EINVAL, "depth %d: %s: %s", depths[i], tbx_err_name(rc), r.message);
        cr_assert_eq(r.pid, 0, "depth %d: a child was made", depths[i]);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
    static const unsigned char counts[][12] = {
        {0xdd, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x02},            /* array32 */
        {0xdc, 0xff, 0xff, 0x01},                              /* array16 */
        {0xdf, 0x00, 0x01, 0x00, 0x00, 0xc0, 0xc0},            /* map32 */
        {0x91, 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0},            /* nested */
        {0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b'},              /* str32 */
        {0xc9, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x00},            /* ext32 */
    };
    static const size_t count_len[] = {7, 4, 7, 7, 7, 7};
    for (size_t i = 0; i < 6; i++) {
        tbx_opts o = test_opts(*method);
        tbx_result r;
        int rc = tbx_call(fn_echo, counts[i], count_len[i], &o, &r);
        cr_assert_eq(rc, TBX_EINVAL, "count case %zu: %s", i, tbx_err_name(rc));
        cr_assert_eq(r.pid, 0);
        tbx_result_free(&r);
    }
    /* The deepest accepted nesting goes and comes back. */
    msgpack_sbuffer sb;
    pack_nested_args(&sb, 31);
    tbx_opts o = test_opts(*method);
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "depth 31: %s: %s", tbx_err_name(rc), r.message);
    const msgpack_object *v = &r.value;
    for (int i = 0; i < 31; i++) {
        cr_assert_eq(v->type, MSGPACK_OBJECT_ARRAY, "level %d", i);
        v = &v->via.array.ptr[0];
    }
    cr_assert_eq(obj_int(v), 1);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* The same refusals through the async door: no callback, nothing started. */
TBX_TEST(args, async_refuses_the_same)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_req req;
    msgpack_sbuffer sb;
    pack_nested_args(&sb, 40);
    tbx_opts o = test_opts(*method);
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, ignore_cb),
                 TBX_EINVAL);
    static const unsigned char two[] = {0x01, 0x02};
    cr_assert_eq(tbx_call_async(&loop, &req, fn_echo, two, sizeof two, &o, ignore_cb), TBX_EINVAL);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}

/* 32 one-element arrays around an empty array (or map): 33 bytes that
 * tbx__msgpack_check accepts (an empty container opens no level) but that
 * msgpack-c cannot unpack (its 32-entry stack is full before it sees the
 * container is empty; MSGPACK_UNPACK_NOMEM_ERROR).  Found by fuzz_frames.
 * Args the library cannot unpack must be refused before launch, with
 * TBX_EINVAL, under every method. */
TBX_TEST(args, empty_container_inside_32_levels_is_einval)
{
    unsigned char args[2][33];
    memset(args[0], 0x91, 32);
    args[0][32] = 0x90; /* [] */
    memset(args[1], 0x91, 32);
    args[1][32] = 0x80; /* {} */
    for (int i = 0; i < 2; i++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = 30;
        tbx_result r;
        int rc = tbx_call(fn_echo, args[i], sizeof args[i], &o, &r);
        check_status(rc, &r);
        cr_assert_eq(rc, TBX_EINVAL, "%s at depth 33: %s: %s", i ? "{}" : "[]", tbx_err_name(rc),
                     r.message);
        cr_assert_eq(r.pid, 0, "a child was made for args that cannot be unpacked");
        tbx_result_free(&r);
    }
}

/* The same args sent to a running forkserver: whatever the caller's check
 * lets through, the server refuses that call and goes on serving the
 * others (it treats every request as untrusted input). */
TBX_PLAIN_TEST(forkserver, unpackable_args_do_not_kill_the_server)
{
    cr_assert_eq(tbx_forkserver_start(NULL), 0);
    pid_t server = tbx_forkserver_pid();
    unsigned char args[33];
    memset(args, 0x91, 32);
    args[32] = 0x90;
    tbx_opts o = test_opts(TBX_FORKSERVER);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_echo, args, sizeof args, &o, &r);
    cr_assert_neq(rc, 0, "args msgpack-c cannot unpack were echoed");
    cr_assert_neq(rc, -ECONNRESET, "the forkserver died of the request: %s", r.message);
    tbx_result_free(&r);
    sleep_s(0.2);
    cr_assert_eq(kill(server, 0), 0, "the forkserver is gone");
    msgpack_sbuffer sb;
    pack(&sb, "s", "next");
    rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(tbx_forkserver_pid(), server, "the forkserver was restarted");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}
