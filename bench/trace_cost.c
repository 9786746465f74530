/*
 * trace_cost: what a trace from outside adds to a call that times out.
 *
 *   trace_cost [iterations]          (default 100)
 *
 * Three series, interleaved, each a fork call of a function that waits on
 * a lock with every signal blocked, ended by its 20 ms deadline (grace 0:
 * SIGKILL at once):
 *   floor         no backtrace asked
 *   first_trace   backtrace_on_timeout, the first trace of a process: made
 *                 in a fork of this one, whose cache of files read is empty
 *                 (libdw is loaded already: its loading, about 1 ms, is
 *                 left out with the warm-up)
 *   later_traces  backtrace_on_timeout, in this process, which has traced
 *                 before: the frames named from the files read then
 * A trace stops the child with ptrace, unwinds every thread and names the
 * frames with libdwfl, then lets the child be killed.  The first trace of a
 * process reads the files to name the frames (libc's debug file, with
 * libc6-dbg, the most), bounded by the tracer's budget; the later ones only
 * stop and unwind.  Also printed: what the cache of files read costs this
 * process in memory (resident, anonymous and file-backed, after the run
 * against before the first trace; libdw's own code included).
 */
#define _GNU_SOURCE
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <timebox.h>

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;

static int stuck(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&held);
    pthread_mutex_lock(&held);
    return msgpack_pack_nil(pk);
}

/* The time of one call, or -1 if a trace was asked and none came from
 * outside (a child caught in uninterruptible sleep at the deadline is not
 * traced: the tracer leaves it, and the call falls back to the child's own
 * handler). */
static double timed_out_call_us(int trace)
{
    static const unsigned char nil = 0xc0;
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = TBX_FORK;
    o.timeout_s = 0.02;
    o.grace_s = 0;
    o.backtrace_on_timeout = trace;
    tbx_result r;
    uint64_t t0 = bench_now_ns();
    int rc = tbx_call(stuck, &nil, 1, &o, &r);
    double us = (double)(bench_now_ns() - t0) / 1e3;
    if (rc != TBX_ETIMEDOUT) {
        fprintf(stderr, "trace_cost: %s: %s\n", tbx_err_name(rc), r.message);
        exit(1);
    }
    int traced = r.backtrace_source == TBX_BACKTRACE_OUTSIDE;
    tbx_result_free(&r);
    return trace && !traced ? -1 : us;
}

/* A traced call's time in a fork of this process: its first trace. */
static double first_trace_us(void)
{
    double us;
    int read_fd, write_fd;
    pid_t pid = bench_fork_piped(&read_fd, &write_fd);
    if (pid == 0) {
        us = timed_out_call_us(1);
        _exit(write(write_fd, &us, sizeof us) == (ssize_t)sizeof us ? 0 : 1);
    }
    int st;
    if (read(read_fd, &us, sizeof us) != (ssize_t)sizeof us)
        bench_die("read");
    close(read_fd);
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bench_die("waitpid");
    return us;
}

/* The value of a "Name:   N kB" line of /proc/self/status, in KiB. */
static long status_kib(const char *name)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kib = -1;
    size_t len = strlen(name);
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, name, len) == 0 && line[len] == ':')
            kib = strtol(line + len + 1, NULL, 10);
    if (f != NULL)
        fclose(f);
    return kib;
}

static size_t untraced;

/* A sample of series which: a call that asked for a trace and got none is
 * made again (and counted). */
static double sample_us(int which)
{
    for (;;) {
        double us = which == 1 ? first_trace_us() : timed_out_call_us(which == 2);
        if (us >= 0)
            return us;
        untraced++;
    }
}

int main(int argc, char **argv)
{
    size_t n = bench_arg_count(argc, argv, 1, 100);
    tbx_init(argc, argv);
    bench_series s[3];
    bench_series_init(&s[0], "floor_no_trace", n);
    bench_series_init(&s[1], "first_trace", n);
    bench_series_init(&s[2], "later_traces", n);
    for (int i = 0; i < 3; i++)
        (void)timed_out_call_us(0);
    long anon0 = status_kib("RssAnon"), file0 = status_kib("RssFile");
    for (int i = 0; i < 3; i++)
        (void)sample_us(2);
    for (size_t i = 0; i < n; i++) {
        /* In turn, so that the machine's load falls on every series alike. */
        for (int k = 0; k < 3; k++) {
            int which = (int)((i + (size_t)k) % 3);
            bench_series_add(&s[which], sample_us(which));
        }
    }
    long anon1 = status_kib("RssAnon"), file1 = status_kib("RssFile");
    bench_stats floor = bench_summarise(&s[0]);
    bench_row rows[3] = {{s[0].name, floor, NULL},
                         {s[1].name, bench_summarise(&s[1]), &floor},
                         {s[2].name, bench_summarise(&s[2]), &floor}};
    bench_report("trace_cost", "a fork call stuck on a lock, ended by its 20 ms deadline", rows, 3);
    printf("the cache of files read: resident +%.1f MiB anonymous, +%.1f MiB file-backed\n",
           (double)(anon1 - anon0) / 1024, (double)(file1 - file0) / 1024);
    printf("RESULT scenario=trace_cost name=cache_memory anon_kib=%ld file_kib=%ld\n",
           anon1 - anon0, file1 - file0);
    if (untraced > 0)
        printf("(%zu traced calls made again: no trace came from outside, the child in "
               "uninterruptible sleep at the deadline)\n",
               untraced);
    for (int i = 0; i < 3; i++)
        bench_series_free(&s[i]);
    return 0;
}
