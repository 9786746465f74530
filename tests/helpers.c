#define _GNU_SOURCE
#include "helpers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

int count_children_of(pid_t pid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    int count = 0;
    for (char *p = strtok(buf, " \n"); p != NULL; p = strtok(NULL, " \n"))
        count++;
    return count;
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
     * stopping it kills its children and reaps it, before counting.  What
     * it still holds of the test's calls is looked at first: stopping it
     * would hide that. */
    stop_forkserver();
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

/* ---------------------------------------------------------- process state */

int list_fds(pid_t pid, int *fds, int max)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)(pid > 0 ? pid : getpid()));
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    int n = 0, self = pid <= 0 || pid == getpid() ? dirfd(d) : -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == self)
            continue;
        if (n < max)
            fds[n] = fd;
        n++;
    }
    closedir(d);
    return n;
}

int count_fds(void)
{
    int n = list_fds(0, NULL, 0);
    cr_assert_geq(n, 0, "opendir /proc/self/fd: %s", strerror(errno));
    return n;
}

void fd_target(int fd, char *target, size_t len)
{
    proc_fd_target(getpid(), fd, target, len);
}

void proc_fd_target(pid_t pid, int fd, char *target, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
    ssize_t t = readlink(path, target, len - 1);
    target[t < 0 ? 0 : t] = '\0';
}

void describe_fds(char *buf, size_t len)
{
    size_t off = 0;
    int fds[MAX_FDS];
    int n = list_fds(0, fds, MAX_FDS);
    buf[0] = '\0';
    for (int i = 0; i < n && i < MAX_FDS && off + 1 < len; i++) {
        char target[256];
        fd_target(fds[i], target, sizeof target);
        int w = snprintf(buf + off, len - off, "  %d -> %s\n", fds[i], target);
        if (w < 0)
            break;
        off += (size_t)w;
    }
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
    return list_children_of(getpid(), pids, max);
}

int list_children_of(pid_t parent, pid_t *pids, int max)
{
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
        if (read_stat((pid_t)pid, &st, &ppid) && ppid == parent) {
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

bool proc_cgroup(pid_t pid, char *buf, size_t len)
{
    char path[64], line[PATH_MAX + 8];
    snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
    FILE *f = fopen(path, "re");
    bool found = false;
    while (f != NULL && !found && fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(buf, len, "%s", line + 3);
            found = true;
        }
    }
    if (f != NULL)
        fclose(f);
    return found;
}

bool wait_in_leaf_of(pid_t pid, pid_t owner, char *buf, size_t len, double timeout_s)
{
    char want[48];
    snprintf(want, sizeof want, "/timebox-%d/c", (int)owner);
    double end = now_s() + timeout_s;
    for (;;) {
        const char *at = proc_cgroup(pid, buf, len) ? strstr(buf, want) : NULL;
        if (at != NULL && strchr(at + strlen(want), '/') == NULL)
            return true;
        if (now_s() > end)
            return false;
        sleep_s(0.005);
    }
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

void temp_path(char *path, size_t len)
{
    snprintf(path, len, "/tmp/timebox-test-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
    close(fd);
}

pid_t peek_pid(const char *path)
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

pid_t read_pid_file(const char *path, double timeout_s)
{
    double end = now_s() + timeout_s;
    pid_t pid;
    while ((pid = peek_pid(path)) <= 0) {
        cr_assert_lt(now_s(), end, "no pid in %s after %.0f s", path, timeout_s);
        sleep_s(0.005);
    }
    return pid;
}
