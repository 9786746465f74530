/*
 * async: 100 deadlined calls in flight at once on one libuv loop.
 *
 *   ./async        starts the calls, cancels one, prints a summary
 *
 * Every fifth call sleeps past its deadline and is killed; one more is
 * cancelled by a timer; the rest finish.  All of them overlap, so the whole
 * run takes about one deadline, not the sum of the calls.
 */
#define _DEFAULT_SOURCE /* usleep; and <uv.h> needs POSIX types under -std=c11 */
#include <timebox/uv.h>

#include <stdio.h>
#include <unistd.h>

#define NCALLS 100
#define CANCELLED 1 /* the call that the timer cancels */

/* Sleeps for args[0] milliseconds, then returns it. */
static int nap(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tbx_fail(result, 1, "expected a non-negative integer");
    usleep((useconds_t)args->via.u64 * 1000);
    return msgpack_pack_uint64(result, args->via.u64);
}

static tbx_req reqs[NCALLS]; /* caller-owned, unmoved until each callback */
static int finished, timed_out, cancelled, other;

static void done_cb(tbx_req *req, tbx_result *result)
{
    switch (result->status) {
    case 0:
        finished++;
        break;
    case TBX_ETIMEDOUT:
        timed_out++;
        break;
    case TBX_ECANCELED:
        cancelled++;
        printf("call %d cancelled after %.1f ms\n", (int)(req - reqs), result->elapsed_s * 1e3);
        break;
    default:
        other++;
        printf("call %d: %s\n", (int)(req - reqs), tbx_strerror(result->status));
    }
    tbx_result_free(result); /* the callback owns the result */
}

static void cancel_cb(uv_timer_t *timer)
{
    int rc = tbx_cancel(&reqs[CANCELLED]);
    if (rc != 0)
        printf("tbx_cancel: %s\n", tbx_strerror(rc));
    uv_close((uv_handle_t *)timer, NULL);
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    uv_loop_t *loop = uv_default_loop();

    tbx_opts opts;
    tbx_opts_init(&opts);
    opts.timeout_s = 0.3;
    opts.grace_s = 0.1;

    uint64_t start = uv_hrtime();
    for (int i = 0; i < NCALLS; i++) {
        /* 10..109 ms, but 1 s for every fifth call and for the one we cancel. */
        unsigned ms = (i % 5 == 0 || i == CANCELLED) ? 1000 : 10 + (unsigned)i;

        msgpack_sbuffer buf;
        msgpack_packer pk;
        msgpack_sbuffer_init(&buf);
        msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
        msgpack_pack_unsigned_int(&pk, ms);

        /* The arguments are only borrowed for the call to tbx_call_async. */
        int rc = tbx_call_async(loop, &reqs[i], nap, buf.data, buf.size, &opts, done_cb);
        msgpack_sbuffer_destroy(&buf);
        if (rc != 0) {
            /* Nothing started, and done_cb will not run for this request. */
            printf("call %d not started: %s\n", i, tbx_strerror(rc));
            other++;
        }
    }

    /* Cancel one call after 50 ms, as a client that went away would. */
    uv_timer_t timer;
    uv_timer_init(loop, &timer);
    uv_timer_start(&timer, cancel_cb, 50, 0);

    uv_run(loop, UV_RUN_DEFAULT); /* returns when every call is done */

    printf("%d calls in %.0f ms: %d finished, %d timed out, %d cancelled, %d other\n", NCALLS,
           (double)(uv_hrtime() - start) / 1e6, finished, timed_out, cancelled, other);
    uv_loop_close(loop);
    return other == 0 ? 0 : 1;
}
