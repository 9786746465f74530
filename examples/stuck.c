/*
 * stuck: what a timed-out call was doing, and what it printed.
 *
 *   ./stuck
 *
 * A function that talks to a "device" prints a little, then waits forever
 * for an answer.  At its deadline timebox asks the child where it is before
 * it sends SIGTERM, and returns the backtrace and the captured output.  Link
 * with -rdynamic (the CMake target does) so the program's own function names
 * show in the backtrace.
 */
#define _DEFAULT_SOURCE
#include <timebox.h>

#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) void wait_for_device_reply(void);
__attribute__((noinline)) void wait_for_device_reply(void)
{
    for (;;)
        pause(); /* the reply never comes */
}

static int query_device(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    printf("opening /dev/imaginary\n");
    printf("sending query 0x2a\n");
    fflush(stdout);
    fprintf(stderr, "warning: device slow to answer\n");
    wait_for_device_reply();
    return msgpack_pack_nil(result);
}
TBX_REGISTER(query_device);

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    tbx_opts opts;
    tbx_opts_init(&opts);
    opts.timeout_s = 0.5;
    opts.backtrace_on_timeout = 1; /* where was it? */
    opts.capture_output = 4096;    /* what did it say? */
    opts.limit_cpu_s = 10;         /* and never more than 10 s of CPU */

    const char nil = (char)0xc0;   /* the args: one msgpack nil */
    tbx_result r;
    int rc = tbx_call(query_device, &nil, 1, &opts, &r);
    printf("call: %s (%s)\n", tbx_err_name(rc), r.message ? r.message : "ok");
    printf("time: %.1f ms starting, %.1f ms running, %.1f ms ending\n", r.startup_s * 1e3,
           r.running_s * 1e3, r.teardown_s * 1e3);
    printf("--- its stdout ---\n%s", r.stdout_data ? r.stdout_data : "");
    printf("--- its stderr ---\n%s", r.stderr_data ? r.stderr_data : "");
    printf("--- where it was stuck ---\n%s", r.backtrace ? r.backtrace : "(none)\n");
    tbx_result_free(&r);
    return rc == TBX_ETIMEDOUT ? 0 : 1;
}
