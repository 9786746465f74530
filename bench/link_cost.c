/*
 * link_cost: what a library linked into a program costs each spawn of it,
 * the cost every spawned timebox worker pays for what libtimebox links.
 *
 *   link_cost [iterations]        (default 500, after 50 of warm-up)
 *
 * Three empty programs (main returns 0), spawned with posix_spawn and
 * reaped, interleaved in a rotating order:
 *   empty_libc          links libc only
 *   empty_uv_msgpack    links libuv and msgpack-c (what libtimebox links):
 *                       the floor the next one is compared with
 *   empty_uv_msgpack_sodium  the same and libsodium
 * This is why lib/forkserver/auth.c loads libsodium with dlopen where it is used
 * instead of linking it (README, "Dependencies").
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WARMUP 50
#define KINDS 3

extern char **environ;

static double spawn_us(const char *path)
{
    pid_t pid;
    int st;
    char *argv[] = {(char *)path, NULL};
    uint64_t t0 = bench_now_ns();
    int rc = posix_spawn(&pid, path, NULL, NULL, argv, environ);
    if (rc != 0) {
        errno = rc;
        bench_die(path);
    }
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bench_die("waitpid");
    return (double)(bench_now_ns() - t0) / 1e3;
}

int main(int argc, char **argv)
{
    static const char *const names[KINDS] = {"empty_libc", "empty_uv_msgpack",
                                             "empty_uv_msgpack_sodium"};
    char dir[PATH_MAX], paths[KINDS][PATH_MAX + 64];
    ssize_t len = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (len <= 0)
        bench_die("readlink");
    dir[len] = '\0';
    *strrchr(dir, '/') = '\0';
    for (int k = 0; k < KINDS; k++)
        snprintf(paths[k], sizeof paths[k], "%s/bench_%s", dir, names[k]);

    size_t n = bench_arg_count(argc, argv, 1, 500);
    bench_series s[KINDS];
    for (int k = 0; k < KINDS; k++)
        bench_series_init(&s[k], names[k], n);
    for (size_t i = 0; i < n + WARMUP; i++) {
        for (int j = 0; j < KINDS; j++) {
            int k = (int)((i + (size_t)j) % KINDS);
            double us = spawn_us(paths[k]);
            if (i >= WARMUP)
                bench_series_add(&s[k], us);
        }
    }
    bench_row rows[KINDS];
    for (int k = 0; k < KINDS; k++) {
        rows[k].name = names[k];
        rows[k].st = bench_summarise(&s[k]);
    }
    rows[0].base = NULL;
    rows[1].base = NULL; /* the floor */
    rows[2].base = &rows[1].st;
    bench_report("link_cost", "posix_spawn + waitpid of an empty program, by what it links",
                 rows, KINDS);
    for (int k = 0; k < KINDS; k++)
        bench_series_free(&s[k]);
    return 0;
}
