/*
 * Helpers shared by the benchmarks: a monotonic clock, summary statistics,
 * a table on stdout, one machine-readable RESULT line per series, and an
 * optional CSV row per series.
 *
 * RESULT lines look like
 *   RESULT scenario=fork_latency name=floor n=2000 median_us=... p99_us=...
 * and carry median_x= / p99_x= (the ratio to the scenario's floor) when a
 * baseline is given.  CSV rows are appended to $BENCH_RESULTS_DIR/<scenario>.csv
 * when that variable is set (the directory is created if needed).
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

uint64_t bench_now_ns(void);

typedef struct bench_stats {
    size_t n;
    double min, median, p90, p99, max, mean; /* same unit as the samples */
} bench_stats;

/* A growable series of samples, in microseconds. */
typedef struct bench_series {
    const char *name;
    double *v;
    size_t n, cap;
} bench_series;

void bench_series_init(bench_series *s, const char *name, size_t cap);
void bench_series_add(bench_series *s, double us);
void bench_series_free(bench_series *s);

/* The p-th percentile (0..100, nearest rank) of sorted samples. */
double bench_percentile(const double *sorted, size_t n, double p);

/* Sorts the series' samples in place and summarises them. */
bench_stats bench_summarise(bench_series *s);

/* One row of a report: a series' summary and the floor it is compared with
 * (NULL for none, or for the floor itself). */
typedef struct bench_row {
    const char *name;
    bench_stats st;
    const bench_stats *base;
} bench_row;

/* Prints the rows as a table (values in microseconds), then one RESULT line
 * per row, and appends them to the scenario's CSV file if asked to. */
void bench_report(const char *scenario, const char *title, const bench_row *rows,
                  size_t n);

/* Initialises s[0..kinds) with names, then runs warmup + n rounds, each
 * measuring every kind once (measure(kind, arg), in microseconds) in an
 * order that rotates from round to round, so that the machine's drift hits
 * every series alike; the last n rounds are kept. */
void bench_interleave(bench_series *s, const char *const *names, int kinds, size_t n,
                      size_t warmup, double (*measure)(int kind, void *arg), void *arg);

/* Parses a positive count from argv[i] if present, else returns def. */
size_t bench_arg_count(int argc, char **argv, int i, size_t def);

/* Registered functions: one that returns 42 (answer), one that never
 * returns (hang). */
struct msgpack_object;
struct msgpack_packer;
int bench_answer(const struct msgpack_object *args, struct msgpack_packer *result, void *ctx);
int bench_hang(const struct msgpack_object *args, struct msgpack_packer *result, void *ctx);

/* One trivial call (a registered function returning 42) with opts; dies
 * unless it returns 42.  Returns its time in microseconds. */
struct tbx_opts;
double bench_trivial_call_us(const struct tbx_opts *opts);

/* perror(what) and exit(1). */
__attribute__((noreturn)) void bench_die(const char *what);

/* pipe2 + fork: returns 0 in the child, with the pipe's write end in
 * *write_fd; in the parent the child's pid, with the read end in *read_fd
 * (the other end closed on each side).  Dies on failure. */
pid_t bench_fork_piped(int *read_fd, int *write_fd);

/* Two pipes + fork: a request pipe to the child and an answer pipe back.
 * In the parent (the child's pid returned), *to_child is the request
 * pipe's write end and *from_child the answer pipe's read end; in the child
 * (0 returned), *to_child is the request pipe's read end and *from_child
 * the answer pipe's write end.  The other ends are closed on each side, so
 * the parent's close of *to_child is the child's EOF.  Dies on failure. */
pid_t bench_fork_duplex(int *to_child, int *from_child);

/* pipe2 + fork of a child that writes 16 bytes and _exits: its pid, and
 * the pipe's read end in *read_fd. */
pid_t bench_fork_writer(int *read_fd);

/* The fork floor, in microseconds: pipe2 + fork; the child writes 16 bytes
 * and _exits; the parent reads them, waitpids and closes the pipe. */
double bench_fork_floor_us(void);

/* Reads the 16 bytes a floor child writes to fd, then reaps pid (which
 * must exit 0); dies otherwise. */
void bench_read16_reap(int fd, pid_t pid);

/* floors.c: a server forked before the caller grows, forking a child per
 * request that answers the caller straight (the forkserver's floor), and a
 * persistent process answering 16 bytes over a pipe (the pool's).  Start
 * them before the caller allocates its ballast. */
typedef struct bench_floor_server {
    pid_t pid;
    int fd, fd2; /* the server's socket (fd2 -1); or the request and reply pipes */
} bench_floor_server;
bench_floor_server bench_server_floor_start(void);
double bench_server_floor_us(const bench_floor_server *s);
bench_floor_server bench_persistent_floor_start(void);
double bench_persistent_floor_us(const bench_floor_server *s);
/* A pre-forked child answers one request and is reaped, in microseconds. */
double bench_prefork_floor_us(void);
void bench_floor_stop(bench_floor_server *s);

#endif
