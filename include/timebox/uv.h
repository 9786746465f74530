/*
 * timebox on a libuv loop: many deadlined calls in flight on one loop.
 *
 * The one timebox header that includes <uv.h>.  Everything here must be used
 * from the thread that runs the loop, as with libuv itself.  Under a strict
 * -std=c11, define _DEFAULT_SOURCE (or _POSIX_C_SOURCE=200809L) before
 * including it: <uv.h> needs POSIX types such as pthread_rwlock_t.
 */
#ifndef TIMEBOX_UV_H
#define TIMEBOX_UV_H

#include <timebox.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An asynchronous call: the caller's storage, defined below. */
typedef struct tbx_req tbx_req;

/* Runs exactly once per accepted call, on the loop's thread, after the child
 * has been reaped and its process group killed.  result is valid only for the
 * callback's duration, and the callback owns what it holds: call
 * tbx_result_free(result) (or move its contents out and then free it).  Once
 * the callback runs, req is the caller's again: it may be freed or reused for
 * another call from inside the callback. */
typedef void tbx_cb(tbx_req *req, tbx_result *result);

/* A request, allocated by the caller (like uv_fs_t).  Only `data` is public;
 * the rest is private.  It must stay valid and unmoved until the callback. */
struct tbx_req {
    void *data;             /* the caller's */
    struct tbx__call *priv_; /* private */
};

/* Starts fn in a child; cb runs when it is done.  Same arguments and options
 * as tbx_call.  The deadline runs from this call (hard_timeout = 1) or from
 * the moment the child starts fn (hard_timeout = 0).
 *
 * Returns 0 when the call is under way: cb then runs exactly once.  Returns an
 * error (TBX_EINVAL, -EAGAIN, -EMFILE, ...) when nothing was started: cb
 * never runs and req is the caller's at once.
 *
 * The loop stays alive while calls are in flight.  Not thread-safe: call it
 * on the loop's thread.  Thousands of calls may be in flight on one loop.  A
 * fork or spawn call holds 2 file descriptors, its result socket and a
 * pidfd, whatever max_result and contained or not: a big result's memfd is
 * made by the child, when the result grows past 1 MiB, and sent with it,
 * and the call's cgroup (opts.contain) is opened by its path when the call
 * ends, not held; spawn adds the socket its request goes down (until it is
 * sent).  A forkserver call holds 2 as well: its result socket and its
 * control socket to the server (the child's pidfd too when the call may ask
 * for a trace).  Captured output, a backtrace pipe and big args (a sealed
 * memfd) add one each.  A loop with deadlines
 * shares one timer descriptor among all its calls.  A pooled call
 * (TBX_POOL) holds its process's three (control, request, result).  For
 * 1,000 calls in flight, raise the soft RLIMIT_NOFILE to its hard limit
 * (README, Async API): timebox leaves the limit alone.
 */
TBX_EXTERN int tbx_call_async(uv_loop_t *loop, tbx_req *req, tbx_fn *fn,
                              const void *args, size_t args_len,
                              const tbx_opts *opts, tbx_cb *cb);

/* tbx_call_named on the loop: the function registered under name, found
 * where the method finds it (see tbx_call_named).  Returns and reports as
 * tbx_call_async; an unknown name is either this call's TBX_ENOTREG (fork:
 * looked up here, nothing started, cb never runs) or the callback's (spawn,
 * forkserver: the worker or the server did not know it).  name is borrowed
 * until the callback, like args.  Loop thread only. */
TBX_EXTERN int tbx_call_named_async(uv_loop_t *loop, tbx_req *req, const char *name,
                                    const void *args, size_t args_len,
                                    const tbx_opts *opts, tbx_cb *cb);

/* Ends a call in flight as its deadline would: SIGTERM to the child's group,
 * SIGKILL after grace_s.  cb still runs, once, with TBX_ECANCELED, after the
 * child is reaped (unless the result was already complete, in which case the
 * call finishes normally).  Returns 0, or TBX_EINVAL if req is not in flight.
 * Loop thread only. */
TBX_EXTERN int tbx_cancel(tbx_req *req);

#ifdef __cplusplus
}
#endif
#endif /* TIMEBOX_UV_H */
