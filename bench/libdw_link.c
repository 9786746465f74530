/*
 * libdw_link: what linking libdw would cost every exec, the reason timebox
 * loads it with dlopen on the first trace instead.
 *
 *   libdw_link [iterations]          (default 2000)
 *
 * Two series, interleaved: posix_spawn and waitpid of an empty program
 * (bench_empty, the floor), and of the same program linked with libdw and
 * its dependencies (bench_empty_dw, which calls nothing of it).  A spawned
 * worker is an exec of the caller's program, so what linking adds to this
 * exec it would add to every spawned call.
 */
#define _GNU_SOURCE
#include "common.h"

#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static double spawn_wait_us(const char *path)
{
    char *argv[] = {(char *)path, NULL};
    pid_t pid;
    int st;
    uint64_t t0 = bench_now_ns();
    if (posix_spawn(&pid, path, NULL, NULL, argv, environ) != 0)
        bench_die(path);
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bench_die("waitpid");
    return (double)(bench_now_ns() - t0) / 1e3;
}

int main(int argc, char **argv)
{
    size_t n = bench_arg_count(argc, argv, 1, 2000);
    char self[4096], plain[4200], dw[4200];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        bench_die("readlink");
    self[len] = '\0';
    *strrchr(self, '/') = '\0';
    snprintf(plain, sizeof plain, "%s/bench_empty", self);
    snprintf(dw, sizeof dw, "%s/bench_empty_dw", self);

    bench_series s[2];
    bench_series_init(&s[0], "floor_empty", n);
    bench_series_init(&s[1], "empty_with_libdw", n);
    for (size_t i = 0; i < 100; i++) /* warm-up: page cache, loader */
        (void)spawn_wait_us(i % 2 ? plain : dw);
    for (size_t i = 0; i < n; i++) {
        int first = (int)(i % 2);
        bench_series_add(&s[first], spawn_wait_us(first ? dw : plain));
        bench_series_add(&s[!first], spawn_wait_us(!first ? dw : plain));
    }
    bench_stats floor = bench_summarise(&s[0]);
    bench_row rows[2] = {{s[0].name, floor, NULL}, {s[1].name, bench_summarise(&s[1]), &floor}};
    bench_report("libdw_link", "spawn + waitpid of an empty program, without and with libdw linked",
                 rows, 2);
    bench_series_free(&s[0]);
    bench_series_free(&s[1]);
    return 0;
}
