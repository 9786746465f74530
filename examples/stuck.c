/*
 * stuck: what a timed-out call was doing, what it printed, what it cost.
 *
 *   ./stuck
 *
 * A function that talks to a "device" prints a little, then waits forever
 * for an answer, the worst way for a debugger: every signal blocked, asleep
 * on a lock that will never be free.  At its deadline timebox traces the
 * child from outside (ptrace and libdwfl: every thread, function, file and
 * line) before it sends SIGTERM, and returns the trace, the captured output
 * and the child's CPU time and peak size.  Where ptrace is refused, it asks
 * the child's own handler instead, and r.backtrace_source says so.
 */
#define _DEFAULT_SOURCE
#include <timebox.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static pthread_mutex_t device_lock = PTHREAD_MUTEX_INITIALIZER;

__attribute__((noinline)) void wait_for_device_reply(void);
__attribute__((noinline)) void wait_for_device_reply(void)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL); /* no signal handler will run */
    pthread_mutex_lock(&device_lock);
    pthread_mutex_lock(&device_lock);   /* the reply never comes */
    __asm__ volatile("" ::: "memory");
}

static int query_device(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    printf("[%s] opening /dev/imaginary\n", tbx_label());
    printf("[%s] sending query 0x2a\n", tbx_label());
    fflush(stdout);
    fprintf(stderr, "warning: device slow to answer\n");
    wait_for_device_reply();
    return msgpack_pack_nil(result);
}
TBX_REGISTER(query_device);

static const char *source_name(int source)
{
    return source == TBX_BACKTRACE_OUTSIDE   ? "traced from outside"
           : source == TBX_BACKTRACE_HANDLER ? "from the child's handler"
                                             : "none";
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    tbx_opts opts;
    tbx_opts_init(&opts);
    opts.timeout_s = 0.5;
    opts.grace_s = 0.1;            /* it blocks SIGTERM: SIGKILL soon after */
    opts.backtrace_on_timeout = 1; /* where was it? */
    opts.capture_output = 4096;    /* what did it say? */
    opts.limit_cpu_s = 10;         /* and never more than 10 s of CPU */
    opts.label = "device-query-1"; /* on its log lines, and in fn */

    const char nil = (char)0xc0;   /* the args: one msgpack nil */
    tbx_result r;
    int rc = tbx_call(query_device, &nil, 1, &opts, &r);
    printf("call: %s (%s)\n", tbx_err_name(rc), r.message ? r.message : "ok");
    printf("time: %.1f ms starting, %.1f ms running, %.1f ms ending\n", r.startup_s * 1e3,
           r.running_s * 1e3, r.teardown_s * 1e3);
    printf("cost: %.3f s user, %.3f s system, %ld KiB peak\n", r.cpu_user_s, r.cpu_sys_s,
           r.max_rss_kb);
    printf("--- its stdout ---\n%s", r.stdout_data ? r.stdout_data : "");
    printf("--- its stderr ---\n%s", r.stderr_data ? r.stderr_data : "");
    printf("--- where it was stuck (%s) ---\n%s", source_name(r.backtrace_source),
           r.backtrace ? r.backtrace : "(none)\n");
    tbx_result_free(&r);
    return rc == TBX_ETIMEDOUT ? 0 : 1;
}
