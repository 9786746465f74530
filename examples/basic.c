/*
 * basic: wrap a slow, a hanging and a crashing call with a deadline.
 *
 *   ./basic        prints one line per call: its outcome and how long it took
 */
#define _DEFAULT_SOURCE
#include <timebox.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Sleeps for args[0] milliseconds, then returns args[0] * 2. */
static int slow_double(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tbx_fail(result, 1, "expected a non-negative integer");
    usleep((useconds_t)args->via.u64 * 1000);
    return msgpack_pack_uint64(result, args->via.u64 * 2);
}

static int crash(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)result, (void)ctx;
    raise(SIGSEGV);
    return 0;
}

static void run(const char *what, tbx_fn *fn, unsigned ms)
{
    /* Pack the argument: one msgpack object. */
    msgpack_sbuffer buf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_uint32(&pk, ms);

    tbx_opts opts;
    tbx_opts_init(&opts);
    opts.timeout_s = 0.2; /* 200 ms */
    opts.grace_s = 0.1;

    tbx_result r;
    int rc = tbx_call(fn, buf.data, buf.size, &opts, &r);
    if (rc == 0)
        printf("%-8s ok: %llu in %.1f ms\n", what, (unsigned long long)r.value.via.u64,
               r.elapsed_s * 1e3);
    else
        printf("%-8s %s: %s (%.1f ms)\n", what, tbx_err_name(rc), r.message, r.elapsed_s * 1e3);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&buf);
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    run("fast", slow_double, 10);
    run("hanging", slow_double, 5000);
    run("crash", crash, 0);
    return 0;
}
