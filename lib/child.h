/*
 * The child side: what runs in the process that runs fn (a fork child, a
 * spawned worker, a forkserver's child), and the registry it finds fn and
 * its hooks in.  No libuv here: a child runs no loop.  Code that runs
 * between fork and exec (tbx__spawn's child) uses async-signal-safe calls
 * only; the rest runs in a child that has one thread, after fork.
 */
#ifndef TBX_CHILD_H
#define TBX_CHILD_H

#include "wire.h"

#include <signal.h>

/* ------------------------------------------------------------- registry */
/* The registered name a fresh program finds fn by: 0 with *name set, or
 * TBX_ENOTREG when fn is not registered, or when another function is
 * registered under its name (then *why, malloc'd, names both places). */
int tbx__name_for_call(tbx_fn *fn, const char **name, char **why);
typedef struct tbx__hook {
    tbx_hook_fn *fn;      /* a child hook, or NULL */
    tbx_preload_fn *pre;  /* a preload hook, or NULL */
    void *arg;
    int late;             /* added after tbx_init returned: a fresh program
                             (spawn, the forkserver) never adds it */
} tbx__hook;

/* tbx_init has returned in this process (which is no worker or server):
 * child hooks added from now on reach fork children only. */
void tbx__init_done(void);
/* 0 if every child hook reaches a fresh program's children too; otherwise
 * TBX_EINVAL, with *why (malloc'd, may be NULL) naming the way out. */
int tbx__hooks_reach_fresh_programs(char **why);

/* Runs every child hook; returns 0 or the first non-zero hook value.  Reads
 * the hook table without a lock: called in a child, which has one thread. */
int tbx__run_child_hooks(void);

/* -------------------------------------------------------- the child side */

/* What the child needs to know about its call, prepared by the parent. */
typedef struct tbx__child_spec {
    tbx_fn *fn;
    const msgpack_object *args;
    void *ctx;
    int result_fd;
    int reset_signals;
    int soft_deadline;         /* the clock starts in the child */
    int send_start;            /* say START before fn (soft, or a worker) */
    double timeout_s;
    uint64_t deadline_ns;      /* absolute, hard deadlines; 0: none */
    size_t max_result;
    const sigset_t *parent_mask; /* restored when !reset_signals */
    pid_t parent_pid;          /* the child dies with it; 0: not checked */
    uint64_t limit_memory;     /* resource limits; 0: inherited */
    uint32_t limit_cpu_s;
    uint32_t limit_files;
    int allow_core;
    int stdout_fd, stderr_fd;  /* placed on 1 and 2 before anything runs; -1:
                                  left as they are */
    int backtrace_fd;          /* where to write a backtrace when asked; -1 */
    const char *label;         /* the call's label (tbx_label), or NULL */
    int crash_trace;           /* a fatal signal stops the child for its
                                  owner to trace (opts.backtrace_on_crash) */
    int bulk_fd;               /* a memfd for a result of TBX__BIG_PAYLOAD
                                  or more; -1: the pipe only */
    int cgroup_fd;             /* the call's cgroup.procs, joined before any
                                  of the caller's code runs; -1: none */
    const sigset_t *default_signals; /* set back to SIG_DFL first; NULL: none */
    void (*close_inherited)(void *arg); /* closes what the child must not
                                  keep (after output placement); NULL */
    void *close_arg;
} tbx__child_spec;

/* child_setup.c: makes this fresh child fit to run a call (its steps, and
 * what may run there, are listed in that file).  tbx__child_main runs it
 * first; a forkserver's warm child runs it before it waits for its request,
 * with only the fields it knows, and again (through tbx__child_main) after. */
void tbx__child_setup(const tbx__child_spec *spec);

/* Runs the call in this (child) process and _exits.  Never returns. */
__attribute__((noreturn)) void tbx__child_main(const tbx__child_spec *spec);
/* The call itself, in a process already set up for it: the child hooks
 * (hooks: 1), fn, then end(end_arg) (if set: its value goes in the frame's
 * pool word), then the frame.  Returns 0, or -1 if the frame could not be
 * written.  A pooled process runs one per call. */
typedef uint32_t tbx__child_end_fn(void *arg);
int tbx__child_run(const tbx__child_spec *spec, int hooks, tbx__child_end_fn *end,
                   void *end_arg);
/* child_setup.c: the call's resource limits (spec->limit_*, and no core
 * unless allowed), as tbx__child_setup sets them. */
void tbx__child_apply_limits(const tbx__child_spec *spec);

/* forkserver/pool_serve.c: a pooled process (forked by the forkserver)
 * serves the requests that come on req_fd one after another, each result to
 * res_fd, until req_fd closes, it drifts from its fingerprint, or it has
 * served max_calls (0: no limit).  Never returns. */
__attribute__((noreturn)) void tbx__pool_serve(int req_fd, int res_fd, unsigned max_calls);

/* The worker side of spawn: if this process was started as a worker, serve
 * the request and _exit; otherwise return. */
void tbx__worker_maybe_serve(void);
/* Reads one request from req_fd and runs it, writing to res_fd; _exits.
 * parent_pid: the process it dies with (a server child: the server, taken
 * before the fork; a spawned worker: its caller, from TIMEBOX_WORKER).
 * signals_clean: the dispositions are already the defaults (a forkserver
 * child), so reset_signals has nothing left to do. */
__attribute__((noreturn)) void tbx__worker_serve(pid_t parent_pid, int req_fd, int res_fd,
                                                 int backtrace_fd, int bulk_fd,
                                                 int signals_clean);
/* 1 if this process was started as a worker but never called tbx_init. */
int tbx__worker_unserved(void);

/* Reads one request of h.args_len args and name from fd (blocking), checks
 * and unpacks it.  Returns 0, or a TBX_E* / -errno code with *why set. */
typedef struct tbx__request {
    tbx__request_header h;
    char name[TBX__MAX_NAME + 1 + TBX_MAX_LABEL + 1]; /* the name, then the
                                  label as it arrives */
    char label[TBX_MAX_LABEL + 1]; /* split off by tbx__request_resolve */
    char *args_buf;            /* malloc'd, or mapped (args_mapped) */
    int args_mapped;           /* args_buf maps a bulk memfd (REQ_ARGS_BULK) */
    msgpack_zone zone;
    msgpack_object args;
    tbx_fn *fn;
    int unpacked;              /* zone holds args: free destroys it */
    /* While it is read (tbx__request_read): */
    uint64_t got;              /* bytes received */
    size_t cap;                /* of args_buf */
    int args_fd;               /* big args' sealed memfd, until mapped; -1 */
    int alone;                 /* set by the reader: nothing follows the
                                  request on its socket until it is
                                  answered, so the header's read may take
                                  the body's first bytes too (into spill) */
    int capture_ok;            /* set by the reader: it takes REQ_CAPTURE
                                  (a pooled process); else such a request
                                  is malformed */
    int out_fd, err_fd;        /* REQ_CAPTURE's pipes; -1 */
    char spill[256];
} tbx__request;

/* request_recv.c: the one request parser, for the spawn worker and the
 * forkserver.  init: an empty request (nothing held; not alone, no
 * capture).  read: reads what has
 * arrived on the socket fd (flags: MSG_DONTWAIT for a loop's, 0 to block)
 * and returns 1 once the request is whole (its header checked, big args
 * mapped), 0 when fd has nothing more now, -1 when the peer left or the
 * socket failed, or TBX_EPROTO / -ENOMEM with a message in why (who names
 * the receiver in it: "the worker", "the forkserver"). */
void tbx__request_init(tbx__request *rq);
int tbx__request_read(tbx__request *rq, int fd, int flags, const char *who, char *why,
                      size_t why_len);
/* Checks a complete request whose header, name and args_buf are filled in:
 * looks fn up and unpacks the args.  Returns 0 or TBX_ENOTREG / TBX_EPROTO /
 * -ENOMEM with a message in why. */
int tbx__request_resolve(tbx__request *rq, char *why, size_t why_len);
void tbx__request_free(tbx__request *rq);
/* The child spec that runs a resolved request; parent_pid is left 0 (not
 * checked): the caller knows the process to die with, or that there is none. */
void tbx__request_spec(const tbx__request *rq, int result_fd, tbx__child_spec *spec);

/* Runs every TBX_PRELOAD hook; 0 or the first failure. */
int tbx__run_preload_hooks(void);



#endif /* TBX_CHILD_H */
