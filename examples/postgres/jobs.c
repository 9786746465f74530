/*
 * The jobs of the PostgreSQL example (see jobs.h), registered by name:
 *   job_double  2 * arg
 *   job_sleep   sleeps arg milliseconds, returns arg
 *   job_crash   dies of SIGSEGV
 *   job_spin    ignores SIGTERM and spins until killed
 * They stand for a C function that may hang or crash: a parser on hostile
 * input, a library that ignores cancellation.  This file uses no PostgreSQL
 * and links no timebox: tbx_register comes from whoever loads it (the
 * extension in a backend, timebox-worker, timebox-forkserver).
 */
#define _GNU_SOURCE
#include "jobs.h"

#include <timebox.h>

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <time.h>

int64_t job_double_value(int64_t n)
{
    return 2 * n;
}

void job_crash_now(void)
{
    /* Both volatile: the compiler may neither prove the pointer null (and
     * emit a trap, SIGILL, instead) nor drop the store as dead.  This is a
     * real SIGSEGV. */
    volatile int *volatile p = NULL;
    *p = 1;
}

/* The argument as an int64, or 0 with *ok = 0. */
static int64_t int_arg(const msgpack_object *args, int *ok)
{
    *ok = 1;
    if (args->type == MSGPACK_OBJECT_POSITIVE_INTEGER && args->via.u64 <= INT64_MAX)
        return (int64_t)args->via.u64;
    if (args->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return args->via.i64;
    *ok = 0;
    return 0;
}

int job_double(const msgpack_object *args, msgpack_packer *result, void *ctx);
int job_sleep(const msgpack_object *args, msgpack_packer *result, void *ctx);
int job_crash(const msgpack_object *args, msgpack_packer *result, void *ctx);
int job_spin(const msgpack_object *args, msgpack_packer *result, void *ctx);

int job_double(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    int ok;
    int64_t n = int_arg(args, &ok);
    (void)ctx;
    if (!ok)
        return tbx_fail(result, 1, "expected an integer");
    if (n > INT64_MAX / 2 || n < INT64_MIN / 2)
        return tbx_fail(result, 2, "2 * %lld is out of range for bigint", (long long)n);
    return msgpack_pack_int64(result, job_double_value(n));
}
TBX_REGISTER(job_double);

int job_sleep(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    int ok;
    int64_t ms = int_arg(args, &ok);
    (void)ctx;
    if (!ok || ms < 0)
        return tbx_fail(result, 1, "expected milliseconds >= 0");
    struct timespec left = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR)
        ;
    return msgpack_pack_int64(result, ms);
}
TBX_REGISTER(job_sleep);

int job_crash(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    job_crash_now();
    return msgpack_pack_nil(result);
}
TBX_REGISTER(job_crash);

int job_spin(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    /* Deaf to SIGTERM, as a stuck library call is: only SIGKILL ends it. */
    signal(SIGTERM, SIG_IGN);
    for (volatile unsigned long spins = 0;; spins++)
        ;
    return msgpack_pack_nil(result);
}
TBX_REGISTER(job_spin);
