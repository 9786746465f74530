/*
 * payload: how fast arguments and results cross to and from the child, by
 * each start method, next to a raw pipe copy of the same bytes.
 *
 *   payload [iterations [max_size_mib [series]]]
 *
 * Sizes 1 KiB, 4 KiB, ... 256 MiB (powers of 4; max_size_mib caps them,
 * default 256).  Naming a series runs that one alone, at max_size_mib only,
 * without warm-up, for a profiler (perf, strace -c).  At each size every series runs `iterations` times (default
 * 50), fewer at large sizes (about 512 MiB moved per series and size, at
 * least 3 runs), after warm-up, interleaved in a rotating order:
 *   pipe_floor     pipe2 + fork; the child writes N bytes (from a 64 KiB
 *                  buffer, in a loop) and _exits; the parent reads all N into
 *                  a buffer it has already touched and that the child does
 *                  not share (MADV_DONTFORK: no copy-on-write fault while the
 *                  child lives), and waitpids
 *   pipe1m_floor   the same with the pipe grown to 1 MiB (F_SETPIPE_SZ):
 *                  what a bigger pipe buys
 *   memfd_floor    memfd_create + fork; the child pwrites N bytes (from the
 *                  64 KiB buffer) into the memfd and _exits; the parent
 *                  waitpids and maps the N bytes read-only and populated,
 *                  as timebox hands a big result over (unmapped after the
 *                  clock stops, as a result is freed after the call)
 *   args_<m>       tbx_call of a function given a bin of N bytes, reading a
 *                  byte of every 4 KiB of it and returning its size (an int)
 *   result_<m>     tbx_call of a function given N, returning a bin of N bytes
 *                  (packed from a 64 KiB buffer, in a loop)
 * for m = fork, spawn, forkserver; timeout 60 s, max_result 512 MiB.  The
 * parent keeps the packed args and the floor's sink resident (about 2N), so
 * the floor's fork and tbx_fork copy the same page tables.
 *
 * Per size: a latency table (vs pipe_floor), then at the end one table of
 * throughput, MB/s = N / median time (10^6 bytes per second), and a RESULT
 * line per series and size, x_floor against pipe_floor and x_best against
 * the fastest of the three floors at that size (the "best raw
 * transfer"):
 *   RESULT scenario=payload_mbps name=result_fork size=1048576 mb_s=... x_floor=... x_best=...
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <timebox.h>

#define CHUNK (64u << 10)
#define MAX_SIZES 10
#define BUDGET ((size_t)512 << 20)

static unsigned char chunk[CHUNK];

/* args: a bin; reads a byte of every 4 KiB of it (the bytes are there, not
 * merely mapped), returns its size. */
static int arg_size(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_BIN)
        return tbx_fail(result, 1, "expected a bin");
    const volatile unsigned char *p = (const unsigned char *)args->via.bin.ptr;
    unsigned sum = 0;
    for (size_t i = 0; i < args->via.bin.size; i += 4096)
        sum += p[i];
    (void)sum;
    return msgpack_pack_uint64(result, args->via.bin.size);
}
TBX_REGISTER(arg_size);

/* args: N; returns a bin of N bytes. */
static int make_bin(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tbx_fail(result, 1, "expected a size");
    size_t n = (size_t)args->via.u64;
    if (msgpack_pack_bin(result, n) != 0)
        return tbx_fail(result, 2, "pack");
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t len = n - off < CHUNK ? n - off : CHUNK;
        if (msgpack_pack_bin_body(result, chunk, len) != 0)
            return tbx_fail(result, 2, "pack");
    }
    return 0;
}
TBX_REGISTER(make_bin);

/* In a floor's child: N bytes of chunk into fd, by write, or by pwrite at
 * their offset (a memfd); then _exit. */
__attribute__((noreturn)) static void write_n(int fd, size_t n, int at_offset)
{
    for (size_t off = 0; off < n;) {
        size_t len = n - off < CHUNK ? n - off : CHUNK;
        ssize_t w = at_offset ? pwrite(fd, chunk, len, (off_t)off) : write(fd, chunk, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(1);
        off += (size_t)w;
    }
    _exit(0);
}

static double run_floor(size_t n, unsigned char *sink, int pipe_size)
{
    int fds[2];
    uint64_t t0 = bench_now_ns();
    if (pipe2(fds, O_CLOEXEC) != 0)
        bench_die("pipe2");
    if (pipe_size > 0 && fcntl(fds[1], F_SETPIPE_SZ, pipe_size) < 0)
        bench_die("F_SETPIPE_SZ");
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork");
    if (pid == 0)
        write_n(fds[1], n, 0);
    close(fds[1]);
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fds[0], sink + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            bench_die("read");
        got += (size_t)r;
    }
    int wstatus;
    if (waitpid(pid, &wstatus, 0) != pid || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0)
        bench_die("waitpid");
    close(fds[0]);
    return (double)(bench_now_ns() - t0) / 1e3;
}

static double run_memfd_floor(size_t n)
{
    uint64_t t0 = bench_now_ns();
    int fd = memfd_create("bench-floor", MFD_CLOEXEC);
    if (fd < 0)
        bench_die("memfd_create");
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork");
    if (pid == 0)
        write_n(fd, n, 1);
    int wstatus;
    if (waitpid(pid, &wstatus, 0) != pid || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0)
        bench_die("waitpid");
    void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED)
        bench_die("mmap");
    double us = (double)(bench_now_ns() - t0) / 1e3;
    munmap(p, n);
    close(fd);
    return us;
}

static double run_tbx(tbx_fn *fn, const void *args, size_t args_len, const tbx_opts *opts,
                      size_t n, int want_bin)
{
    tbx_result r;
    uint64_t t0 = bench_now_ns();
    int rc = tbx_call(fn, args, args_len, opts, &r);
    double us = (double)(bench_now_ns() - t0) / 1e3;
    int ok = rc == 0 && (want_bin ? r.value.type == MSGPACK_OBJECT_BIN && r.value.via.bin.size == n
                                  : r.value.type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                                        r.value.via.u64 == n);
    if (!ok) {
        fprintf(stderr, "tbx_call (%zu bytes): %s (%s)\n", n, tbx_err_name(rc),
                r.message ? r.message : "");
        exit(1);
    }
    tbx_result_free(&r);
    return us;
}

static void size_label(size_t n, char *buf, size_t len)
{
    if (n >= (1u << 20))
        snprintf(buf, len, "%zuMiB", n >> 20);
    else
        snprintf(buf, len, "%zuKiB", n >> 10);
}

enum { FLOOR, FLOOR1M, FLOOR_MEMFD, ARGS_FORK, ARGS_SPAWN, ARGS_FS, RES_FORK, RES_SPAWN, RES_FS,
       KINDS };
static const char *names[KINDS] = {"pipe_floor",   "pipe1m_floor",    "memfd_floor",
                                   "args_fork",    "args_spawn",      "args_forkserver",
                                   "result_fork",  "result_spawn",    "result_forkserver"};

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    size_t iters = bench_arg_count(argc, argv, 1, 50);
    size_t max_mib = bench_arg_count(argc, argv, 2, 256);
    for (size_t i = 0; i < CHUNK; i++)
        chunk[i] = (unsigned char)(i * 131u + 7u);
    if (tbx_forkserver_start(NULL) != 0)
        bench_die("tbx_forkserver_start");

    static const tbx_method methods[KINDS] = {0,         0,        0,
                                              TBX_FORK,  TBX_SPAWN, TBX_FORKSERVER,
                                              TBX_FORK,  TBX_SPAWN, TBX_FORKSERVER};
    int only = -1;
    if (argc > 3) {
        for (int k = 0; k < KINDS; k++)
            if (strcmp(argv[3], names[k]) == 0)
                only = k;
        if (only < 0) {
            fprintf(stderr, "payload: no series %s\n", argv[3]);
            return 2;
        }
    }
    tbx_opts opts[KINDS];
    for (int k = 0; k < KINDS; k++) {
        tbx_opts_init(&opts[k]);
        opts[k].method = methods[k];
        opts[k].timeout_s = 60;
        opts[k].max_result = (size_t)512 << 20;
    }

    size_t sizes[MAX_SIZES];
    double mbps[MAX_SIZES][KINDS];
    double med_us[MAX_SIZES][KINDS];
    size_t nsizes = 0;
    for (size_t n = 1024; n <= ((size_t)max_mib << 20) && nsizes < MAX_SIZES; n *= 4)
        sizes[nsizes++] = n;
    if (only >= 0) { /* one series at one size */
        sizes[0] = (size_t)max_mib << 20;
        nsizes = 1;
    }

    for (size_t si = 0; si < nsizes; si++) {
        size_t n = sizes[si];
        size_t runs = BUDGET / n;
        if (runs > iters)
            runs = iters;
        if (runs < 3)
            runs = 3;
        size_t warmup = only >= 0 ? 0 : n >= ((size_t)64 << 20) ? 1 : 2;
        if (only >= 0)
            runs = iters;

        /* The args (a bin of n bytes) and the floor's sink, both resident. */
        msgpack_sbuffer abuf;
        msgpack_packer pk;
        msgpack_sbuffer_init(&abuf);
        msgpack_packer_init(&pk, &abuf, msgpack_sbuffer_write);
        msgpack_pack_bin(&pk, n);
        for (size_t off = 0; off < n; off += CHUNK)
            msgpack_pack_bin_body(&pk, chunk, n - off < CHUNK ? n - off : CHUNK);
        unsigned char nbuf[9];
        msgpack_sbuffer nb = {0, (char *)nbuf, sizeof nbuf};
        msgpack_packer npk;
        msgpack_packer_init(&npk, &nb, msgpack_sbuffer_write);
        msgpack_pack_uint64(&npk, n);
        unsigned char *sink = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                   -1, 0);
        if (sink == MAP_FAILED || abuf.data == NULL)
            bench_die("mmap");
        if (madvise(sink, n, MADV_DONTFORK) != 0)
            bench_die("madvise");
        memset(sink, 0, n);

        bench_series s[KINDS];
        char label[32], sname[KINDS][48];
        size_label(n, label, sizeof label);
        for (int k = 0; k < KINDS; k++) {
            snprintf(sname[k], sizeof sname[k], "%s_%s", names[k], label);
            bench_series_init(&s[k], sname[k], runs);
        }
        for (size_t i = 0; i < warmup + runs; i++) {
            for (int j = 0; j < KINDS; j++) {
                int k = (int)((i + (size_t)j) % KINDS);
                if (only >= 0 && k != only)
                    continue;
                double us = k == FLOOR     ? run_floor(n, sink, 0)
                            : k == FLOOR1M ? run_floor(n, sink, 1 << 20)
                            : k == FLOOR_MEMFD ? run_memfd_floor(n)
                            : k <= ARGS_FS
                                ? run_tbx(arg_size, abuf.data, abuf.size, &opts[k], n, 0)
                                : run_tbx(make_bin, nb.data, nb.size, &opts[k], n, 1);
                if (i >= warmup)
                    bench_series_add(&s[k], us);
            }
        }
        bench_row rows[KINDS];
        for (int k = 0; k < KINDS; k++) {
            rows[k].name = sname[k];
            rows[k].st = bench_summarise(&s[k]);
        }
        for (int k = 0; k < KINDS; k++) {
            rows[k].base = k == FLOOR ? NULL : &rows[FLOOR].st;
            med_us[si][k] = rows[k].st.median;
            mbps[si][k] = (double)n / rows[k].st.median; /* bytes/us = MB/s */
        }
        char title[96];
        snprintf(title, sizeof title, "payload: %s of args or result per method", label);
        if (only >= 0) {
            rows[only].base = NULL;
            bench_report("payload_single", title, &rows[only], 1);
        } else {
            bench_report("payload", title, rows, KINDS);
        }
        for (int k = 0; k < KINDS; k++)
            bench_series_free(&s[k]);
        munmap(sink, n);
        msgpack_sbuffer_destroy(&abuf);
    }
    if (only >= 0) {
        tbx_forkserver_stop();
        return 0;
    }

    printf("\npayload throughput, MB/s (10^6 bytes / median time; x = vs pipe_floor)\n");
    printf("%-8s", "size");
    for (int k = 0; k < KINDS; k++)
        printf(" %17s", names[k]);
    printf("\n");
    for (size_t si = 0; si < nsizes; si++) {
        char label[32];
        size_label(sizes[si], label, sizeof label);
        printf("%-8s", label);
        for (int k = 0; k < KINDS; k++) {
            if (k == FLOOR)
                printf(" %17.1f", mbps[si][k]);
            else
                printf(" %10.1f %5.2fx", mbps[si][k], mbps[si][k] / mbps[si][FLOOR]);
        }
        printf("\n");
    }
    printf("\n");
    for (size_t si = 0; si < nsizes; si++) {
        double best = mbps[si][FLOOR];
        for (int k = FLOOR1M; k <= FLOOR_MEMFD; k++)
            best = mbps[si][k] > best ? mbps[si][k] : best;
        for (int k = 0; k < KINDS; k++)
            printf("RESULT scenario=payload_mbps name=%s size=%zu median_time_us=%.2f mb_s=%.2f "
                   "x_floor=%.3f x_best=%.3f\n",
                   names[k], sizes[si], med_us[si][k], mbps[si][k],
                   mbps[si][k] / mbps[si][FLOOR], mbps[si][k] / best);
    }
    tbx_forkserver_stop();
    return 0;
}
