/*
 * The engine: one call's life in the caller's process, the launcher
 * interface every start method implements, and the table of methods.  The
 * engine knows no method; the launchers (launch_*.c, forkserver/) know the
 * engine.
 */
#ifndef TBX_ENGINE_H
#define TBX_ENGINE_H

#include "timebox/uv.h"
#include "cgroup.h"
#include "loop.h"
#include "wire.h"

#include <pthread.h>

/* ---------------------------------------------------------------- a call */
typedef struct tbx__call tbx__call;

/* The cap on children alive at once (slots.c). */
typedef struct tbx__waiter tbx__waiter;
struct tbx__waiter {
    tbx__waiter *next;
    void *cond;                /* pthread_cond_t * of a blocking caller */
    tbx__call *call;           /* an async call, woken by call->wake */
    int granted;
    /* An async call: the thread that runs its loop, and its place among
     * the calls holding a slot (a blocking call that only that loop could
     * free fails with -EDEADLK). */
    pthread_t owner;
    tbx__waiter *held_next;
    int held;
};
/* 1 if a cap is set (calls must take a slot). */
int tbx__slots_capped(void);
/* Blocking: waits for a slot until deadline_ns (0: no limit).  0, or
 * TBX_ETIMEDOUT with no slot taken, or -EDEADLK at once when only calls on
 * loops of the calling thread could free one. */
int tbx__slot_wait(uint64_t deadline_ns);
/* Async: 1 if a slot was free (taken); 0 if c now waits for call->wake. */
int tbx__slot_queue(tbx__call *c);
/* Async: takes c out of the queue; 1 if it had been granted a slot (which
 * it then holds), 0 if not. */
int tbx__slot_unqueue(tbx__call *c);
/* Gives back a slot (held: 1) and grants waiters what is free. */
void tbx__slot_release(int held);
/* Gives back the slot call holds, blocking or async. */
void tbx__slot_release_call(tbx__call *c);
typedef void tbx__done_cb(tbx__call *call);

/* What a launcher gives the engine: a running child, leading its own process
 * group (pgid == pid), and the parent's ends of its channels. */
/* A stream from the child: its stdout, its stderr, or its backtrace. */
enum { TBX__STDOUT, TBX__STDERR, TBX__BACKTRACE, TBX__NSTREAMS };
#define TBX__BACKTRACE_WAIT_NS 250000000ull
/* How long after SIGKILL a forkserver may take to report its child's end
 * before the call gives up on it. */
#define TBX__SERVER_SLACK_NS 1000000000ull
/* A server that is still working (runnable, or it used CPU time in the last
 * slack) is slow, not stuck: it may take up to this long after SIGKILL. */
#define TBX__SERVER_BUSY_NS 10000000000ull

typedef struct tbx__capture {
    int fd;                    /* our end; -1: not captured */
    int child_fd;              /* the child's end until launched; -1 after */
    uv_poll_t poll;
    char *buf;
    size_t len, cap, limit;
    int truncated, polling;
    tbx__call *call;
} tbx__capture;

typedef struct tbx__child {
    pid_t pid;
    int pidfd;     /* -1 when the kernel has no pidfd */
    int result_fd; /* read end of the result pipe, CLOEXEC */
    int request_fd; /* -1, or our end of a socket the request goes down */
    int control_fd; /* forkserver: the call's control socket; -1 otherwise */
    int bulk_fd;   /* -1, or a memfd a big result comes back in (bulk.c) */
    int result_sock; /* 1: result_fd is a socket, and a big result's memfd
                        comes from the child with its OK_BULK header */
    int worker;    /* 1: a child that says START before fn (tbx__says_start) */
    int warm;      /* 1: a warm child, taken from the pool */
    int pooled;    /* 1: a pooled process (TBX_POOL), which outlives the call:
                      its result frames carry its word on the call (wire.h),
                      and its request socket stays open */
    void *slot;    /* pooled: its launcher's record of the process */
    uv_poll_t *result_watch; /* NULL, or the launcher's own handle on the
                                result pipe, started before the call and
                                kept after it (a pooled process's, on a
                                thread's private loop): its callback passes
                                the call's events to tbx__engine_result_cb
                                (data = the call), and the engine opens no
                                result_poll of its own */
} tbx__child;

/* The launcher interface: one per start method, each in its own file, each
 * a row of tbx__methods (methods.c), indexed by tbx_method.  The engine
 * (engine.c) names no method: whatever differs between them is here.
 *   accepts    TBX__ACCEPTS_*: what the method takes (a ctx pointer, an
 *              unregistered fn, the output captured, backtraces); the
 *              engine refuses the rest (EINVAL, ENOTREG) before anything is
 *              launched.
 *   not_started where a worker that timed out before its START was (its
 *              hooks, its main()), for the message.
 *   resolve    optional: the launcher that really serves this call (a method
 *              chosen per call returns another row); NULL: itself.
 *   prepare    readies the args for the child: unpacked in the parent
 *              (tbx__engine_unpack_args) or as a request (tbx__request_build).
 *   launch     starts the child and fills *child, or returns -errno / TBX_E*
 *              with nothing left open or running.
 *   watch      opens the one handle that learns of the child's end (counted
 *              in open_handles: tbx__engine_watch_fd) and sets *h to it once
 *              opened; the launcher calls tbx__engine_child_ended when it
 *              knows.
 *   exited     1 if the child has exited, its end not yet handled (the
 *              deadline and the exit can be ready at the same wake-up).
 *   signal     sends sig to the child and its group.
 *   backtrace  where the child is: 1 when the trace is already in the
 *              call's backtrace (taken from outside), 0 when it comes later
 *              down the backtrace pipe (the engine waits for it a while),
 *              -1 when none will come.
 *   crashed    the child caught sig and stopped itself (backtrace_on_crash):
 *              trace it from outside into the call's backtrace, then let it
 *              die of sig.
 *   abandon    the launch worked but watching it did not: the child must
 *              end now, with nothing of it left.
 *   ended      optional: runs once the call is over (its child reaped, its
 *              handles closed), just before the caller hears: work that must
 *              not compete with the call's own child for the CPU (replacing a
 *              warm child) goes there.
 *   frame_done optional: the result frame is whole (a child that outlives
 *              its call ends the call there: tbx__engine_child_ended).
 *   release    optional: as the call closes, before its descriptors do:
 *              takes back those that outlive the call (setting them to -1).
 *   ready      optional: 1 if the method is set up in this process (a
 *              method chosen per call may prefer it then).
 *   sent       optional: the request is whole on its way, before the loop
 *              waits for the answer (a blocking call's launcher may wait a
 *              few microseconds for it here, awake: see pool_own.c). */
enum {
    TBX__ACCEPTS_CTX = 1,
    TBX__ACCEPTS_UNREGISTERED = 2,
    TBX__ACCEPTS_STREAMS = 4, /* capture_output and the backtraces */
    TBX__ACCEPTS_CAPTURE = 8  /* capture_output alone */
};

typedef struct tbx__launcher tbx__launcher;
struct tbx__launcher {
    const char *name;
    unsigned accepts;
    const char *not_started;   /* a worker's: where a child that never said
                                  START may have been, for a timeout's
                                  message; NULL: nothing to say */
    uint64_t max_args;         /* the longest args it takes; 0: no limit */
    const tbx__launcher *(*resolve)(tbx__call *call);
    int (*prepare)(tbx__call *call);
    int (*launch)(tbx__call *call, tbx__child *child);
    int (*watch)(tbx__call *call, uv_handle_t **h);
    int (*exited)(tbx__call *call);
    void (*signal)(tbx__call *call, int sig);
    int (*backtrace)(tbx__call *call);
    void (*crashed)(tbx__call *call, int sig);
    void (*abandon)(tbx__call *call);
    void (*ended)(tbx__call *call);
    void (*frame_done)(tbx__call *call);
    void (*release)(tbx__call *call);
    int (*ready)(void);
    void (*sent)(tbx__call *call);
};

/* The launcher of a method, or NULL for one this build does not provide
 * (TBX_METHOD_DEFAULT included). */
const tbx__launcher *tbx__launcher_of(tbx_method method);
/* The method TBX_METHOD_DEFAULT stands for (tbx_set_default_method). */
tbx_method tbx__default_method(void);

/* own_child.c: the parts of a launcher whose child is our own (we reap it):
 * exit learned through its pidfd, or by polling waitpid without one; signals
 * sent to its group; the backtrace signal to its first thread. */
int tbx__own_watch(tbx__call *call, uv_handle_t **h);
int tbx__own_exited(tbx__call *call);
void tbx__own_signal(tbx__call *call, int sig);
int tbx__own_backtrace(tbx__call *call);
void tbx__own_crashed(tbx__call *call, int sig);
void tbx__own_abandon(tbx__call *call);
/* Those five, as entries of a launcher's row. */
#define TBX__OWN_CHILD                                                                         \
    .watch = tbx__own_watch, .exited = tbx__own_exited, .signal = tbx__own_signal,             \
    .backtrace = tbx__own_backtrace, .crashed = tbx__own_crashed, .abandon = tbx__own_abandon

/* What the engine offers its launchers.
 * child_ended: the child has ended with wstatus (-1: unknown); the rest of
 *   the result is read and the call finishes.  trailing: a byte after the
 *   result frame makes the call TBX_EPROTO (the child is gone, so every byte
 *   it wrote is in the pipe).
 * unpack_args: the args unpacked in the parent (a fork child reads them in
 *   memory).  */
void tbx__engine_child_ended(tbx__call *call, int wstatus, int trailing);
/* The result pipe's callback (data = the call), for a launcher whose handle
 * watches the pipe (tbx__child.result_watch).  On such a handle, an event
 * that comes when the call reads no more stops it: a launcher keeps only a
 * handle still active. */
void tbx__engine_result_cb(uv_poll_t *h, int status, int events);
/* For a launcher's watch: opens poll p on fd for the call (counted in its
 * handles, data = call) and sets *h to it; the caller starts it.  0 or a
 * libuv error (then nothing was opened). */
int tbx__engine_watch_fd(tbx__call *call, uv_poll_t *p, int fd, uv_handle_t **h);

/* Between the engine's own files (prepare.c, engine.c, queue.c).
 * release_args: frees what prepare made for the args.  arm_deadline: the
 *   call's deadline, counted from from_ns (0 or -errno).  finish: the call is
 *   over; its handles close (close_handles), and the last close finalizes. */
void tbx__engine_release_args(tbx__call *call);
int tbx__engine_arm_deadline(tbx__call *call, uint64_t from_ns);
void tbx__engine_finish(tbx__call *call);
void tbx__engine_close_handles(tbx__call *call);
int tbx__engine_unpack_args(tbx__call *call);

/* Starts a fresh program with posix_spawn: fds[i] placed at 3 + i, every
 * other descriptor closed, env (NAME=value, NULL-terminated) added to the
 * caller's environment, its own process group.  executable NULL: the process
 * default, else this program.  Returns 0 or -errno (a failed exec too). */
typedef struct tbx__spawn_spec {
    const char *executable;
    char *const *argv;
    int fds[4];                /* each lifted (tbx__lift_fd) first */
    int nfds;
    const char *const *env;
    int reset_signals;
    int stdout_fd, stderr_fd;  /* placed on 1 and 2; -1: inherited */
} tbx__spawn_spec;
int tbx__spawn(const tbx__spawn_spec *sp, pid_t *pid);
/* Moves *fd above the descriptors tbx__spawn places (CLOEXEC). */
int tbx__lift_fd(int *fd);

struct tbx__call {
    /* Set by the front door before tbx__engine_start. */
    uv_loop_t *loop;
    tbx_fn *fn;
    const char *args_buf;
    size_t args_len;
    tbx_opts opts;
    uint64_t start_ns;
    tbx__done_cb *done_cb;
    tbx__done_cb *abandoned_cb; /* a failed launch whose handles closed late;
                                   NULL: the front door runs the loop dry */
    tbx_req *req;              /* async only */
    tbx_cb *cb;                /* async only */
    tbx_result *out;

    /* Args unpacked in the parent (fork: the child reads them in memory). */
    msgpack_zone args_zone;
    msgpack_object args;
    const char *name;          /* registered name (spawn, forkserver); set
                                  before prepare by tbx_call_named */
    int args_fd;               /* args of a worker's, when big: a sealed
                                  memfd sent with the request; else -1 */

    /* The request to a worker: header, name, args, written as the socket
     * takes them.  What did not fit at launch is copied to request_copy. */
    tbx__request_header request;
    size_t request_sent;
    char *request_copy;        /* the last request_copy_len bytes */
    size_t request_copy_len;
    uv_poll_t request_poll;
    int capture_send[2];       /* a pooled call's stdout and stderr write
                                  ends (REQ_CAPTURE), taken by its launcher:
                                  sent with the request's first bytes, then
                                  closed; else -1 */

    /* The cap on children (slots.c): waiting for a slot, or holding one. */
    tbx__waiter waiter;
    uv_async_t wake;           /* an async call's slot came */
    unsigned queued : 1, has_slot : 1, h_wake : 1;

    /* opts.capture_output: stdout, stderr; opts.backtrace_on_timeout. */
    tbx__capture capture[TBX__NSTREAMS];
    unsigned backtrace_asked : 1, backtrace_pending : 1;
    int backtrace_source;      /* TBX_BACKTRACE_*: who took or was asked */
    int crash_signal;          /* the signal a CRASH frame said (only one
                                  may come); 0: none */

    /* diagnose.c: opts.label's copy, and what the reaped child cost. */
    char label[TBX_MAX_LABEL + 1];
    double cost_user_s, cost_sys_s;
    long cost_rss_kb;
    int cost_known;

    /* forkserver: what arrives on the control socket. */
    uv_poll_t control_poll;
    tbx__control control;
    size_t control_got;
    int control_fd_in;         /* a pidfd that came with a partial message */
    uint64_t silent_since;     /* when the server was asked for SIGKILL */
    uint64_t server_cpu;       /* the server's CPU ticks at the last look */

    /* The running child, who launched it, and its watchers. */
    const tbx__launcher *launcher;
    tbx__child child;
    tbx__cgroup cgroup;        /* fork, spawn: the call's cgroup, or none */
    int containment;           /* TBX_CONTAIN_* the child had; 0: none ran */
    uv_poll_t result_poll;
    uv_poll_t exit_poll;       /* on the pidfd */
    uv_timer_t exit_timer;     /* polls waitpid when there is no pidfd */
    uv_poll_t cancel_poll;     /* on cancel_fd (cancel.c) */
    int cancel_fd;             /* our duplicate of opts.cancel_fd; -1: none */
    uv_handle_t *exit_h;       /* the launcher's watch: one of these */
    tbx__deadline deadline;
    int open_handles;          /* closes still to come before done */
    uv_close_cb close_cb;      /* the engine's, for every handle of the
                                  call's: the last close finalizes */

    /* Reading the result frame. */
    tbx__frame_header hdr;
    size_t hdr_got;
    char *payload;             /* the frame's payload */
    char *payload_map;         /* its mapping, for a big one; else NULL */
    size_t payload_cap;
    uint64_t payload_got;

    /* When (CLOCK_MONOTONIC ns): the launch began, fn started (START, or the
     * launch returned), the result was whole or the child ended. */
    uint64_t t_launch, t_started, t_done;

    /* What happened. */
    unsigned frame_done : 1;
    unsigned reading : 1;
    unsigned started : 1;      /* soft deadline: START seen */
    unsigned reaped : 1;
    unsigned finishing : 1;
    unsigned args_unpacked : 1;
    unsigned abandoned : 1;
    unsigned writing : 1;       /* request_poll is open */
    unsigned lost : 1;         /* the launcher lost the child: lost_why */
    unsigned h_result : 1;      /* result_poll is open */
    unsigned h_exit : 1;        /* the exit handle (exit_handle()) is open */
    unsigned h_cancel : 1;      /* cancel_poll is open */
    const char *lost_why;      /* static text: how it was lost */
    int verdict;               /* first reason decided: 0, ETIMEDOUT, ... */
    int kill_signal;
    int wstatus;
    int sys_error;             /* a -errno met while watching */
    uint32_t pool_word;        /* pooled: the result frame's TBX__POOL_* */
    tbx_result result;         /* async: handed to the callback */
};

/* What a tbx_result owns, by the index of its slot in priv_ (the public
 * struct keeps its layout): freed by tbx_result_free. */
enum {
    TBX__OWN_PAYLOAD,   /* the result's bytes (malloc'd), or NULL */
    TBX__OWN_ZONE,      /* the msgpack zone value points into */
    TBX__OWN_MESSAGE,   /* a message copied from the child */
    TBX__OWN_STDOUT,    /* captured stdout; stderr follows it */
    TBX__OWN_STDERR,    /* captured stderr */
    TBX__OWN_BACKTRACE, /* the backtrace */
    TBX__OWN_MAP,       /* the payload's mapping, for a big one */
    TBX__NOWN
};
_Static_assert(TBX__NOWN == sizeof ((tbx_result *)0)->priv_ / sizeof(void *),
               "every slot of tbx_result.priv_ is named");

/* The close callback of every handle of a call's: the last one finalizes. */
void tbx__engine_close_cb(uv_handle_t *h);

/* cancel.c: watches opts.cancel_fd, if any, for the call's life; a
 * readable descriptor stops the call with TBX_ECANCELED.  check: 0, or
 * TBX_EINVAL when it is not an open descriptor.  watch: 0, TBX_EINVAL or
 * -errno; close: closes what watch opened (idempotent). */
int tbx__cancel_check(const tbx_opts *opts);
int tbx__cancel_watch(tbx__call *call);
void tbx__cancel_close(tbx__call *call);

/* request.c: builds the request for a fresh program (a launcher's prepare),
 * writes it down child.request_fd (0 or -errno), and ends the writing
 * (closes the fd, the poll, the copy). */
int tbx__request_build(tbx__call *call);
int tbx__request_start(tbx__call *call);
void tbx__request_end(tbx__call *call);
/* Sends what child.request_fd takes of the request now, without waiting:
 * 1 when all of it is sent, 0 when the socket is full, or -errno.  A
 * launcher may send before the engine's request_start, which goes on from
 * where this stopped. */
int tbx__request_send(tbx__call *call);
/* 1 if the whole request has been sent. */
int tbx__request_whole(const tbx__call *call);
/* 1 if a worker, server or pooled child says START before fn for this call:
 * with a soft deadline (it starts then) or a backtrace asked for (the
 * handler is in by then). */
int tbx__says_start(const tbx__call *call);

/* nest.c: inside a call with a deadline, caps a nested call's options so
 * that it ends, grace included, before the outer deadline. */
void tbx__nest_cap(tbx_opts *opts);

/* streams.c: the pipes for the child's stdout, stderr and backtrace. */
int tbx__streams_open(tbx__call *call);
void tbx__streams_close_child_ends(tbx__call *call);
int tbx__stream_read(tbx__capture *k); /* 1 if a NUL came */
void tbx__streams_give(tbx__call *call, tbx_result *r);

/* diagnose.c.  label_take: checks opts.label and copies it into the call
 *   (0 or TBX_EINVAL).  call_log: tbx__log, the call's label appended.
 *   call_trace: a trace of the child pid from outside into the call's
 *   backtrace (0), or -errno with nothing taken (the launcher asks the
 *   child instead).  call_cost: the reaped child's rusage.  call_report:
 *   the backtrace's source and the cost into r, then the observer. */
struct rusage;
int tbx__label_take(tbx__call *call);
void tbx__call_log(const tbx__call *call, tbx_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int tbx__call_trace(tbx__call *call, pid_t pid);
void tbx__call_cost(tbx__call *call, const struct rusage *ru);
void tbx__call_report(tbx__call *call, tbx_result *r);

/* verdict.c: the status of a finished call, with its value or message. */
int tbx__verdict(tbx__call *call, tbx_result *r);
/* The finished call into r: its child's pid and end, the status with its
 * value or message, the captured output; what r does not take is freed. */
void tbx__result_fill(tbx__call *call, tbx_result *r);

/* Validates call's options and arguments and prepares them for launch:
 * TBX_EINVAL, -ENOMEM or 0.  On error nothing is held. */
int tbx__engine_prepare(tbx__call *call, const void *args, size_t args_len,
                        const tbx_opts *opts);
/* Launches the child and starts watching it on call->loop.  Returns 0, after
 * which call->done_cb runs exactly once with call->out filled; or an error,
 * with nothing left open or running and done_cb never run. */
int tbx__engine_run(tbx__call *call);
/* Ends the call as its deadline would, with `why` as the verdict. */
int tbx__engine_stop(tbx__call *call, int why);
/* escalate.c: ends the child for why: SIGTERM, then SIGKILL after grace
 * (hard: SIGKILL at once).  A child already gone is left to its exit
 * watcher; a call still queued for a slot is finished without one. */
void tbx__engine_escalate(tbx__call *call, int why, int hard);
/* Async front door: like tbx__engine_run, but when the cap on children is
 * reached the call waits its turn (and may meet its deadline or a cancel
 * while it waits); done_cb then reports whatever becomes of it. */
int tbx__engine_run_queued(tbx__call *call);
/* Blocking front door, for a call that will not run (its deadline passed
 * while it waited for a slot): fills call->out, frees what it holds. */
void tbx__engine_refuse(tbx__call *call, int status, const char *message);

#endif /* TBX_ENGINE_H */
