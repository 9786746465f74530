/*
 * containment: what a cgroup per call costs.
 *
 *   containment [iterations]
 *
 * Default 1000 iterations, after 100 of warm-up, every series interleaved
 * (each iteration runs them all, in an order that rotates) so that machine
 * noise hits them alike:
 *   floor        fork; the child _exits; the parent waitpids
 *   pool         the same, the child joining an existing, empty cgroup
 *                first (timebox's pool: take, the child's write to
 *                cgroup.procs, reap, the end-of-call kill check, give back)
 *   clone3_into  clone3 with CLONE_INTO_CGROUP into an existing empty
 *                cgroup (the child _exits at once); reap.  What joining at
 *                birth costs the kernel, for comparison
 *   fresh        mkdir a cgroup, fork a child that joins it, reap,
 *                cgroup.kill, rmdir: a cgroup made and removed per call
 * and whole calls, each against the same call without containment:
 *   fork_off, fork_on              tbx_call(TBX_FORK) of a trivial function,
 *                                  opts.contain 0 and 1
 *   forkserver_off, forkserver_on  the same with TBX_FORKSERVER
 * The target: a call with containment within 10% of one without.
 *
 *   containment [iterations [sparse_iterations]]
 *
 * Then the same series again, sparse (default 20 iterations, no warm-up):
 * each measurement comes SPARSE_GAP_MS after the last, as calls do in a
 * program that makes one now and then.  A process's move into a cgroup
 * (a write to cgroup.procs) takes the kernel's global threadgroup rwsem
 * for writing, whose RCU sync waits a grace period when no move came
 * within the last one or two; back-to-back moves never wait, so only the
 * sparse series shows it.  A cgroup2 mounted with favordynmods (a switch
 * newer kernels keep on until reboot once set) moves without the wait;
 * clone3_into never moves.
 * Where this process cannot make cgroups it says so and exits 0.
 */
#define _GNU_SOURCE
#include "common.h"
#include "../lib/cgroup_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <timebox.h>

#define WARMUP 100

static void reap(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            bench_die("waitpid");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "containment: child status %#x\n", st);
        exit(1);
    }
}

static double floor_us(void)
{
    uint64_t t0 = bench_now_ns();
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    if (pid < 0)
        bench_die("fork");
    reap(pid);
    return (double)(bench_now_ns() - t0) / 1e3;
}

static double pool_us(void)
{
    tbx__cgroup cg;
    uint64_t t0 = bench_now_ns();
    if (tbx__cgroup_take(&cg) != 0)
        bench_die("tbx__cgroup_take");
    pid_t pid = fork();
    if (pid == 0)
        _exit(tbx__cgroup_join(cg.procs_fd) == 0 ? 0 : 1);
    if (pid < 0)
        bench_die("fork");
    reap(pid);
    if (tbx__cgroup_kill(&cg) != 0)
        bench_die("tbx__cgroup_kill");
    tbx__cgroup_give(&cg, 1);
    return (double)(bench_now_ns() - t0) / 1e3;
}

static double clone3_us(int dirfd)
{
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_INTO_CGROUP;
    ca.exit_signal = SIGCHLD;
    ca.cgroup = (uint64_t)dirfd;
    uint64_t t0 = bench_now_ns();
    /* The child only _exits: no glibc state of its matters. */
    long pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid == 0)
        _exit(0);
    if (pid < 0)
        bench_die("clone3");
    reap((pid_t)pid);
    return (double)(bench_now_ns() - t0) / 1e3;
}

static double fresh_us(const char *dir)
{
    uint64_t t0 = bench_now_ns();
    if (mkdir(dir, 0755) != 0)
        bench_die("mkdir");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int procs = openat(dfd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (dfd < 0 || procs < 0)
        bench_die("open");
    pid_t pid = fork();
    if (pid == 0)
        _exit(tbx__cgroup_join(procs) == 0 ? 0 : 1);
    if (pid < 0)
        bench_die("fork");
    close(procs);
    reap(pid);
    int kfd = openat(dfd, "cgroup.kill", O_WRONLY | O_CLOEXEC);
    if (kfd < 0 || write(kfd, "1", 1) != 1)
        bench_die("cgroup.kill");
    close(kfd);
    close(dfd);
    if (rmdir(dir) != 0)
        bench_die("rmdir");
    return (double)(bench_now_ns() - t0) / 1e3;
}

enum { FLOOR, POOL, CLONE3, FRESH, FORK_OFF, FORK_ON, FS_OFF, FS_ON, KINDS };
static const char *const names[KINDS] = {"floor",    "pool",    "clone3_into",    "fresh",
                                         "fork_off", "fork_on", "forkserver_off", "forkserver_on"};

#define SPARSE_GAP_MS 50

typedef struct measure_ctx {
    int dirfd;           /* a pooled cgroup, for clone3 */
    const char *fresh;   /* where fresh cgroups are made */
    tbx_opts opts[4];    /* fork, forkserver; contain 0, 1 */
    int sparse;          /* 1: SPARSE_GAP_MS of nothing before each */
} measure_ctx;

static double measure(int kind, void *arg)
{
    measure_ctx *m = arg;
    if (m->sparse)
        usleep(SPARSE_GAP_MS * 1000);
    return kind == FLOOR    ? floor_us()
           : kind == POOL   ? pool_us()
           : kind == CLONE3 ? clone3_us(m->dirfd)
           : kind == FRESH  ? fresh_us(m->fresh)
                            : bench_trivial_call_us(&m->opts[kind - FORK_OFF]);
}

static void report(bench_series *s, const char *scenario, const char *scenario_calls,
                   const char *what)
{
    bench_row rows[KINDS];
    for (int k = 0; k < KINDS; k++) {
        rows[k].name = s[k].name;
        rows[k].st = bench_summarise(&s[k]);
    }
    for (int k = 0; k < KINDS; k++)
        rows[k].base = k == FLOOR || k == FORK_OFF || k == FS_OFF ? NULL
                       : k < FORK_OFF                          ? &rows[FLOOR].st
                                                               : &rows[k - 1].st;
    char title[160];
    snprintf(title, sizeof title, "containment: fork+exit+reap, bare vs into a cgroup%s", what);
    bench_report(scenario, title, rows, FORK_OFF);
    snprintf(title, sizeof title, "containment: trivial calls, contain = 0 vs 1%s", what);
    bench_report(scenario_calls, title, rows + FORK_OFF, KINDS - FORK_OFF);
    for (int k = FORK_ON; k < KINDS; k += 2) {
        double x = rows[k].st.median / rows[k - 1].st.median;
        char label[64];
        snprintf(label, sizeof label, "%s%s", rows[k].name, what);
        printf("%-28s median %.3fx the call without containment: target 1.10x %s\n", label, x,
               x <= 1.10 ? "met" : "MISSED");
    }
    for (int k = 0; k < KINDS; k++)
        bench_series_free(&s[k]);
}

int main(int argc, char **argv)
{
    size_t n = bench_arg_count(argc, argv, 1, 1000);
    size_t n_sparse = bench_arg_count(argc, argv, 2, 20);
    tbx_init(argc, argv);
    if (tbx_containment() != TBX_CONTAIN_CGROUP) {
        printf("containment: this process cannot make cgroups (no cgroup v2, or not root "
               "and no delegated subtree); nothing measured\n");
        return 0;
    }
    /* A leaf of the pool's own for clone3, and a name for fresh ones. */
    tbx__cgroup held;
    if (tbx__cgroup_take(&held) != 0)
        bench_die("tbx__cgroup_take");
    char fresh[PATH_MAX + 32];
    snprintf(fresh, sizeof fresh, "%s/fresh", tbx__cg.base);

    measure_ctx m;
    m.dirfd = tbx__cgroup_open_dir(&held);
    if (m.dirfd < 0)
        bench_die("tbx__cgroup_open_dir");
    m.fresh = fresh;
    for (int i = 0; i < 4; i++) {
        tbx_opts_init(&m.opts[i]);
        m.opts[i].method = i < 2 ? TBX_FORK : TBX_FORKSERVER;
        m.opts[i].contain = i % 2;
    }
    bench_series s[KINDS];
    m.sparse = 0;
    bench_interleave(s, names, KINDS, n, WARMUP, measure, &m);
    report(s, "containment", "containment_calls", "");
    m.sparse = 1;
    bench_interleave(s, names, KINDS, n_sparse, 0, measure, &m);
    report(s, "containment_sparse", "containment_sparse_calls", ", 50 ms apart");
    close(m.dirfd);
    tbx__cgroup_give(&held, 1);
    return 0;
}
