#define _GNU_SOURCE
#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define TBX_TEST_LSAN 1
#endif

/* A copy of this program that timebox spawned (a worker or the forkserver)
 * serves here and never reaches Criterion's main.  TBX_REGISTER runs at a
 * higher constructor priority, so every test function is registered. */
__attribute__((constructor)) static void serve_if_started_by_timebox(void)
{
    tbx_init(0, NULL);
}

/* ---------------------------------------------------------------- fixture */

int list_call_children(pid_t *pids, int max)
{
    pid_t server = tbx_forkserver_pid(), all[64];
    int n = list_children(all, 64), k = 0;
    for (int i = 0; i < n && i < 64; i++)
        if (all[i] != server && k < max)
            pids[k++] = all[i];
    return k;
}

void reap_adopted(double timeout_s)
{
    double end = now_s() + timeout_s;
    pid_t kids[16];
    int n;
    while ((n = list_children(kids, 16)) > 0 && now_s() < end) {
        for (int i = 0; i < n && i < 16; i++) {
            int st;
            (void)waitpid(kids[i], &st, WNOHANG); /* each is our child */
        }
        sleep_s(0.01);
    }
}

static int fixture_fds = -1;
static char fixture_fd_list[4096];

void tbx_fixture_init(void)
{
    /* The calling thread's private loop is made on the first tbx_call and
     * kept for the thread's life, with what it holds between calls (a timer
     * for deadlines, say).  One call with a deadline first, so that these
     * count as already open. */
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(TBX_METHOD_DEFAULT);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "fixture warm-up call: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);

    pid_t kids[8];
    int n = list_children(kids, 8);
    cr_assert_eq(n, 0, "the test process starts with %d children", n);
    fixture_fds = count_fds();
    describe_fds(fixture_fd_list, sizeof fixture_fd_list);
}

void tbx_fixture_check(void)
{
    /* The forkserver is timebox's own long-lived child, not a call's:
     * stopping it kills its children and reaps it, before counting. */
    tbx_forkserver_stop();
    pid_t kids[16];
    int n = list_children(kids, 16);
    char states[256] = "";
    for (int i = 0, off = 0; i < n && i < 16 && off < (int)sizeof states - 32; i++)
        off += snprintf(states + off, sizeof states - (size_t)off, " %d(%c)", (int)kids[i],
                        proc_state(kids[i]));
    int fds = count_fds();
    char now[4096];
    describe_fds(now, sizeof now);
    cr_assert_eq(n, 0, "%d child process(es) left after the test:%s", n, states);
    cr_assert_eq(fds, fixture_fds, "descriptors: %d before the test, %d after\nbefore:\n%s\nafter:\n%s",
                 fixture_fds, fds, fixture_fd_list, now);
#ifdef TBX_TEST_LSAN
    /* Criterion ends a passing test's process without exit(), so LeakSanitizer
     * would never look: look now (the report goes to stderr). */
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "memory leaked (LeakSanitizer report above)");
#endif
}

tbx_opts test_opts(tbx_method method)
{
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = method;
    return o;
}

/* -------------------------------------------------------------- arguments */

void pack(msgpack_sbuffer *sb, const char *fmt, ...)
{
    msgpack_packer pk;
    va_list ap;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    va_start(ap, fmt);
    for (const char *f = fmt; *f; f++) {
        switch (*f) {
        case ' ':
            break;
        case 'i':
            msgpack_pack_int64(&pk, va_arg(ap, int64_t));
            break;
        case 'u':
            msgpack_pack_uint64(&pk, va_arg(ap, uint64_t));
            break;
        case 'd':
            msgpack_pack_double(&pk, va_arg(ap, double));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            msgpack_pack_str_with_body(&pk, s, strlen(s));
            break;
        }
        case 'n':
            msgpack_pack_nil(&pk);
            break;
        case 't':
            msgpack_pack_true(&pk);
            break;
        case 'f':
            msgpack_pack_false(&pk);
            break;
        case 'x': {
            const void *p = va_arg(ap, const void *);
            size_t len = va_arg(ap, size_t);
            msgpack_pack_bin_with_body(&pk, p, len);
            break;
        }
        case 'a':
            msgpack_pack_array(&pk, (size_t)va_arg(ap, int));
            break;
        case 'm':
            msgpack_pack_map(&pk, (size_t)va_arg(ap, int));
            break;
        default:
            cr_assert_fail("pack: bad format character '%c'", *f);
        }
    }
    va_end(ap);
}

/* --------------------------------------------------------- reading values */

bool obj_str_eq(const msgpack_object *o, const char *s)
{
    return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (obj_str_eq(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    return NULL;
}

int64_t obj_int(const msgpack_object *o)
{
    cr_assert_not_null(o);
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return (int64_t)o->via.u64;
    cr_assert_eq(o->type, MSGPACK_OBJECT_NEGATIVE_INTEGER, "not an integer: type %d", o->type);
    return o->via.i64;
}

/* ---------------------------------------------------------- process state */

int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d, "opendir /proc/self/fd: %s", strerror(errno));
    int n = 0, self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (atoi(e->d_name) != self)
            n++;
    }
    closedir(d);
    return n;
}

void fd_target(int fd, char *target, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t t = readlink(path, target, len - 1);
    target[t < 0 ? 0 : t] = '\0';
}

void describe_fds(char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return;
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL && off + 1 < len) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == self)
            continue;
        char target[256];
        fd_target(atoi(e->d_name), target, sizeof target);
        int w = snprintf(buf + off, len - off, "  %s -> %s\n", e->d_name, target);
        if (w < 0)
            break;
        off += (size_t)w;
    }
    closedir(d);
}

/* Reads /proc/<pid>/stat: state and ppid.  Returns false if it is gone. */
static bool read_stat(pid_t pid, char *state, pid_t *ppid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold anything */
    if (p == NULL)
        return false;
    char st;
    int pp;
    if (sscanf(p + 1, " %c %d", &st, &pp) != 2)
        return false;
    *state = st;
    *ppid = (pid_t)pp;
    return true;
}

int list_children(pid_t *pids, int max)
{
    pid_t me = getpid();
    int n = 0;
    DIR *d = opendir("/proc");
    cr_assert_not_null(d, "opendir /proc: %s", strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end != '\0' || pid <= 0)
            continue;
        char st;
        pid_t ppid;
        if (read_stat((pid_t)pid, &st, &ppid) && ppid == me) {
            if (n < max)
                pids[n] = (pid_t)pid;
            n++;
        }
    }
    closedir(d);
    return n;
}

char proc_state(pid_t pid)
{
    char st;
    pid_t ppid;
    return read_stat(pid, &st, &ppid) ? st : 0;
}

bool wait_gone(pid_t pid, double timeout_s)
{
    double end = now_s() + timeout_s;
    for (;;) {
        char st;
        pid_t ppid;
        if (kill(pid, 0) != 0 && errno == ESRCH)
            return true;
        if (read_stat(pid, &st, &ppid) && st == 'Z' && ppid != getpid())
            return true;
        if (now_s() > end)
            return false;
        sleep_s(0.005);
    }
}

void become_subreaper(void)
{
    cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0, "PR_SET_CHILD_SUBREAPER: %s",
                 strerror(errno));
}

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void child_sleep(double s)
{
    sleep_s(s);
}

void raise_nofile_limit(void)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0, "setrlimit: %s", strerror(errno));
    }
}

/* ---------------------------------------------------- child-side functions */

int fn_echo(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    return msgpack_pack_object(result, *args);
}
TBX_REGISTER(fn_echo);

int fn_sleep_ms(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tbx_fail(result, 1, "expected milliseconds");
    child_sleep((double)args->via.u64 / 1e3);
    return msgpack_pack_object(result, *args);
}
TBX_REGISTER(fn_sleep_ms);

int fn_ignore_term(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    signal(SIGTERM, SIG_IGN);
    child_sleep(60);
    return msgpack_pack_nil(result);
}
TBX_REGISTER(fn_ignore_term);

int fn_segv(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    raise(SIGSEGV);
    return msgpack_pack_nil(result);
}
TBX_REGISTER(fn_segv);

int fn_abort(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)result, (void)ctx;
    abort();
}
TBX_REGISTER(fn_abort);

int fn_exit(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)result, (void)ctx;
    _exit(args->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int)args->via.u64 : 99);
}
TBX_REGISTER(fn_exit);

int fn_mixed(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_ARRAY || args->via.array.size != 2)
        return tbx_fail(result, 1, "expected [kind, n]");
    int kind = (int)args->via.array.ptr[0].via.u64;
    int64_t n = (int64_t)args->via.array.ptr[1].via.u64;
    switch (kind) {
    case MIX_OK:
        return msgpack_pack_int64(result, n * 2);
    case MIX_HANG:
        child_sleep(60);
        return msgpack_pack_nil(result);
    case MIX_SEGV:
        raise(SIGSEGV);
        return msgpack_pack_nil(result);
    case MIX_FAIL:
        return tbx_fail(result, (int)n, "failed with %d", (int)n);
    case MIX_EXIT:
        _exit((int)n);
    default:
        return tbx_fail(result, 2, "bad kind");
    }
}
TBX_REGISTER(fn_mixed);

static _Thread_local char mismatch[512];

#define MISMATCH(...) (snprintf(mismatch, sizeof mismatch, __VA_ARGS__), mismatch)

const char *mixed_mismatch(int kind, int64_t n, int rc, const tbx_result *r)
{
    if (rc != r->status)
        return MISMATCH("kind %d: returned %d, status %d", kind, rc, r->status);
    if (r->pid <= 0)
        return MISMATCH("kind %d: pid %d", kind, (int)r->pid);
    switch (kind) {
    case MIX_OK:
        if (rc != 0 || r->value.type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            (int64_t)r->value.via.u64 != 2 * n || r->message != NULL || r->exit_code != 0)
            return MISMATCH("ok %lld: %s (%s), value type %d, exit %d", (long long)n,
                            tbx_err_name(rc), r->message ? r->message : "-", r->value.type,
                            r->exit_code);
        break;
    case MIX_HANG:
        /* A loop slower than the grace period may follow a SIGTERM that
         * worked with a SIGKILL (see async::cancel_kill_signal_is_what_was_needed). */
        if (rc != TBX_ETIMEDOUT || (r->kill_signal != SIGTERM && r->kill_signal != SIGKILL) ||
            (r->term_signal != SIGTERM && r->term_signal != SIGKILL) ||
            (r->kill_signal == SIGTERM && r->term_signal != SIGTERM) || r->exit_code != -1)
            return MISMATCH("hang: %s (%s), kill %d, term %d, exit %d", tbx_err_name(rc),
                            r->message ? r->message : "-", r->kill_signal, r->term_signal,
                            r->exit_code);
        break;
    case MIX_SEGV:
        if (rc != TBX_ECRASHED || r->term_signal != SIGSEGV || r->kill_signal != 0)
            return MISMATCH("segv: %s (%s), term %d, kill %d", tbx_err_name(rc),
                            r->message ? r->message : "-", r->term_signal, r->kill_signal);
        break;
    case MIX_FAIL:
        if (rc != TBX_EFAILED || r->fail_code != (int)n || r->message == NULL ||
            strstr(r->message, "failed with") == NULL)
            return MISMATCH("fail %lld: %s (%s), fail_code %d", (long long)n, tbx_err_name(rc),
                            r->message ? r->message : "-", r->fail_code);
        break;
    case MIX_EXIT:
        if (rc != TBX_EEXITED || r->exit_code != (int)n || r->term_signal != 0)
            return MISMATCH("exit %lld: %s (%s), exit %d", (long long)n, tbx_err_name(rc),
                            r->message ? r->message : "-", r->exit_code);
        break;
    default:
        return MISMATCH("bad kind %d", kind);
    }
    return NULL;
}

pid_t read_pid_file(const char *path, double timeout_s)
{
    double end = now_s() + timeout_s;
    for (;;) {
        FILE *f = fopen(path, "r");
        int pid = 0;
        if (f != NULL) {
            if (fscanf(f, "%d", &pid) != 1)
                pid = 0;
            fclose(f);
        }
        if (pid > 0)
            return (pid_t)pid;
        cr_assert_lt(now_s(), end, "no pid in %s after %.0f s", path, timeout_s);
        sleep_s(0.01);
    }
}

int fn_pid_then_hang(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    char path[256];
    snprintf(path, sizeof path, "%.*s", (int)args->via.str.size, args->via.str.ptr);
    FILE *f = fopen(path, "w");
    if (f != NULL) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    child_sleep(60);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_pid_then_hang);
