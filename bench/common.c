#define _GNU_SOURCE
#include "common.h"

#include <timebox.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_series_init(bench_series *s, const char *name, size_t cap)
{
    s->name = name;
    s->n = 0;
    s->cap = cap ? cap : 16;
    s->v = malloc(s->cap * sizeof *s->v);
    if (s->v == NULL) {
        perror("malloc");
        exit(1);
    }
}

void bench_series_add(bench_series *s, double us)
{
    if (s->n == s->cap) {
        double *v = realloc(s->v, 2 * s->cap * sizeof *v);
        if (v == NULL) {
            perror("realloc");
            exit(1);
        }
        s->v = v;
        s->cap *= 2;
    }
    s->v[s->n++] = us;
}

void bench_interleave(bench_series *s, const char *const *names, int kinds, size_t n,
                      size_t warmup, double (*measure)(int kind, void *arg), void *arg)
{
    for (int k = 0; k < kinds; k++)
        bench_series_init(&s[k], names[k], n);
    for (size_t i = 0; i < warmup + n; i++) {
        for (int k = 0; k < kinds; k++) {
            int kind = (int)((i + (size_t)k) % (size_t)kinds);
            double us = measure(kind, arg);
            if (i >= warmup)
                bench_series_add(&s[kind], us);
        }
    }
}

void bench_series_free(bench_series *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_percentile(const double *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999); /* ceil */
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

bench_stats bench_summarise(bench_series *s)
{
    bench_stats st = {0};
    if (s->n == 0)
        return st;
    qsort(s->v, s->n, sizeof *s->v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < s->n; i++)
        sum += s->v[i];
    st.n = s->n;
    st.min = s->v[0];
    st.max = s->v[s->n - 1];
    st.mean = sum / (double)s->n;
    st.median = s->n % 2 ? s->v[s->n / 2] : (s->v[s->n / 2 - 1] + s->v[s->n / 2]) / 2;
    st.p90 = bench_percentile(s->v, s->n, 90);
    st.p99 = bench_percentile(s->v, s->n, 99);
    return st;
}

static void csv_append(const char *scenario, const char *name, const bench_stats *st,
                       double mx, double px)
{
    const char *dir = getenv("BENCH_RESULTS_DIR");
    if (dir == NULL || *dir == '\0')
        return;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench: cannot create %s: %s\n", dir, strerror(errno));
        return;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.csv", dir, scenario);
    struct stat sb;
    int fresh = stat(path, &sb) != 0 || sb.st_size == 0;
    FILE *f = fopen(path, "a");
    if (f == NULL) {
        fprintf(stderr, "bench: cannot open %s: %s\n", path, strerror(errno));
        return;
    }
    if (fresh)
        fprintf(f, "unix_time,name,n,min_us,median_us,p90_us,p99_us,max_us,mean_us,"
                   "median_x,p99_x\n");
    fprintf(f, "%lld,%s,%zu,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,", (long long)time(NULL), name,
            st->n, st->min, st->median, st->p90, st->p99, st->max, st->mean);
    if (mx > 0)
        fprintf(f, "%.3f,%.3f\n", mx, px);
    else
        fprintf(f, ",\n");
    fclose(f);
}

static void ratios(const bench_row *r, double *mx, double *px)
{
    *mx = *px = 0;
    if (r->base != NULL && r->base->median > 0 && r->base->p99 > 0) {
        *mx = r->st.median / r->base->median;
        *px = r->st.p99 / r->base->p99;
    }
}

void bench_report(const char *scenario, const char *title, const bench_row *rows,
                  size_t n)
{
    double mx, px;
    printf("\n%s (microseconds)\n", title);
    printf("%-24s %6s %9s %9s %9s %9s %9s %8s %8s\n", "series", "n", "min", "median",
           "p90", "p99", "max", "med/flr", "p99/flr");
    for (size_t i = 0; i < n; i++) {
        const bench_stats *st = &rows[i].st;
        ratios(&rows[i], &mx, &px);
        printf("%-24s %6zu %9.1f %9.1f %9.1f %9.1f %9.1f", rows[i].name, st->n, st->min,
               st->median, st->p90, st->p99, st->max);
        if (mx > 0)
            printf(" %7.2fx %7.2fx\n", mx, px);
        else
            printf(" %8s %8s\n", "-", "-");
    }
    printf("\n");
    for (size_t i = 0; i < n; i++) {
        const bench_stats *st = &rows[i].st;
        ratios(&rows[i], &mx, &px);
        printf("RESULT scenario=%s name=%s n=%zu min_us=%.2f median_us=%.2f p90_us=%.2f "
               "p99_us=%.2f max_us=%.2f mean_us=%.2f",
               scenario, rows[i].name, st->n, st->min, st->median, st->p90, st->p99,
               st->max, st->mean);
        if (mx > 0)
            printf(" median_x=%.3f p99_x=%.3f", mx, px);
        printf("\n");
        csv_append(scenario, rows[i].name, st, mx, px);
    }
    fflush(stdout);
}

size_t bench_arg_count(int argc, char **argv, int i, size_t def)
{
    if (i >= argc)
        return def;
    char *end;
    unsigned long long v = strtoull(argv[i], &end, 10);
    if (*end != '\0' || v == 0) {
        fprintf(stderr, "usage: %s [iterations]\n", argv[0]);
        exit(2);
    }
    return (size_t)v;
}

void bench_die(const char *what)
{
    perror(what);
    exit(1);
}

void bench_read16_reap(int fd, pid_t pid)
{
    char buf[16];
    size_t got = 0;
    int st;
    while (got < sizeof buf) {
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n <= 0)
            bench_die("read");
        got += (size_t)n;
    }
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bench_die("waitpid");
}

pid_t bench_fork_piped(int *read_fd, int *write_fd)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        bench_die("pipe2");
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork");
    close(fds[pid == 0 ? 0 : 1]);
    *read_fd = pid == 0 ? -1 : fds[0];
    *write_fd = pid == 0 ? fds[1] : -1;
    return pid;
}

pid_t bench_fork_duplex(int *to_child, int *from_child)
{
    int q[2], a[2];
    if (pipe2(q, O_CLOEXEC) != 0 || pipe2(a, O_CLOEXEC) != 0)
        bench_die("pipe2");
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork");
    int child = pid == 0;
    close(q[child ? 1 : 0]);
    close(a[child ? 0 : 1]);
    *to_child = q[child ? 0 : 1];
    *from_child = a[child ? 1 : 0];
    return pid;
}

pid_t bench_fork_writer(int *read_fd)
{
    int write_fd;
    pid_t pid = bench_fork_piped(read_fd, &write_fd);
    if (pid == 0)
        _exit(write(write_fd, "0123456789abcdef", 16) == 16 ? 0 : 1);
    return pid;
}

double bench_fork_floor_us(void)
{
    int fd;
    uint64_t t0 = bench_now_ns();
    pid_t pid = bench_fork_writer(&fd);
    bench_read16_reap(fd, pid);
    close(fd);
    return (double)(bench_now_ns() - t0) / 1e3;
}

int bench_answer(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_int(result, 42);
}
TBX_REGISTER(bench_answer);

int bench_hang(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)result, (void)ctx;
    for (;;)
        pause();
    return 0;
}
TBX_REGISTER(bench_hang);

double bench_trivial_call_us(const tbx_opts *opts)
{
    static const unsigned char nil = 0xc0; /* one msgpack nil */
    tbx_result r;
    uint64_t t0 = bench_now_ns();
    int rc = tbx_call(bench_answer, &nil, 1, opts, &r);
    double us = (double)(bench_now_ns() - t0) / 1e3;
    if (rc != 0 || r.value.type != MSGPACK_OBJECT_POSITIVE_INTEGER || r.value.via.u64 != 42) {
        fprintf(stderr, "tbx_call: %s (%s)\n", tbx_err_name(rc), r.message ? r.message : "");
        exit(1);
    }
    tbx_result_free(&r);
    return us;
}
