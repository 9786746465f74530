/*
 * timebox: run a C function in a child process under a deadline.
 *
 * The caller packs the arguments with msgpack; the function runs in a child
 * made by the call's start method (tbx_method: fork, a forkserver, or
 * posix_spawn); the result, or the error, comes back over a pipe.  At the deadline the child's process group gets SIGTERM,
 * and SIGKILL after a grace period.  Nothing of a call outlives it: when a call
 * returns, its child has been reaped and its process group killed.
 *
 * Conventions, as in libuv:
 *   - Functions that can fail return 0 or a negative code: -errno for system
 *     failures (-EAGAIN, -EMFILE, ...) or one of the TBX_E* codes below, which
 *     sit far away from errno and libuv's ranges.
 *   - Inputs are borrowed for the duration of the call.  Results are owned by
 *     the tbx_result until tbx_result_free(), which is NULL-safe and idempotent.
 *   - The async API lives in <timebox/uv.h>, the one header that includes uv.h.
 */
#ifndef TIMEBOX_H
#define TIMEBOX_H

#include <stddef.h>
#include <sys/types.h>

#include <msgpack.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TBX_EXTERN __attribute__((visibility("default")))
#define TBX_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define TBX_EXTERN
#define TBX_PRINTF(f, a)
#endif

/* The version of this header.  The library a program runs with may be newer
 * (never older: see the SOVERSION policy in the README); tbx_version() tells
 * which it is. */
#define TBX_VERSION_MAJOR 0 /* changes when the ABI breaks (the soname's number) */
#define TBX_VERSION_MINOR 1 /* changes when names or fields are added */
#define TBX_VERSION_PATCH 0 /* changes for fixes only */
#define TBX_VERSION_STRING "0.1.0" /* "major.minor.patch" */
/* The header's version as one number, 0xMMmmpp: compare it with
 * tbx_version(). */
#define TBX_VERSION_HEX                                                         \
    ((TBX_VERSION_MAJOR << 16) | (TBX_VERSION_MINOR << 8) | TBX_VERSION_PATCH)

/* The version of the library this program runs with, as TBX_VERSION_HEX
 * spells it: ((major << 16) | (minor << 8) | patch).  A program built against
 * 0.1 and run against a 0.2 library sees 0x000200.  Thread-safe. */
TBX_EXTERN unsigned tbx_version(void);

/* The same version as a string, "major.minor.patch"; static storage. */
TBX_EXTERN const char *tbx_version_string(void);

/* ------------------------------------------------------------------------
 * Error codes
 *
 * XX(name, value, message).  TBX_ERRNO_MAP generates the enum, tbx_strerror()
 * and tbx_err_name(); code outside the library may use it the same way.
 */
#define TBX_ERRNO_MAP(XX)                                                       \
    XX(ETIMEDOUT, -30001, "deadline passed, child killed")                      \
    XX(ECRASHED, -30002, "child died from a signal timebox did not send")       \
    XX(EEXITED, -30003, "child exited without a result")                        \
    XX(EFAILED, -30004, "function reported a failure with tbx_fail")            \
    XX(ETOOBIG, -30005, "result larger than max_result, child killed")          \
    XX(EPROTO, -30006, "malformed data from the child")                         \
    XX(ENOTREG, -30007, "function not registered")                              \
    XX(ECANCELED, -30008, "call cancelled by the caller")                       \
    XX(EINVAL, -30009, "invalid argument")

/* timebox's own error codes, TBX_ETIMEDOUT to TBX_EINVAL, as TBX_ERRNO_MAP
 * lists them. */
typedef enum {
#define TBX__ERR_ENUM(name, value, msg) TBX_##name = (value),
    TBX_ERRNO_MAP(TBX__ERR_ENUM)
#undef TBX__ERR_ENUM
} tbx_errno;

/* A static, human-readable message for any code this library returns:
 * a TBX_E* code, a negative errno, or 0.  Never NULL.  Thread-safe. */
TBX_EXTERN const char *tbx_strerror(int code);

/* The code's name ("TBX_ETIMEDOUT", "EAGAIN", "OK"; "UNKNOWN" for a code
 * that is neither).  Static, never NULL.  Thread-safe. */
TBX_EXTERN const char *tbx_err_name(int code);

/* ------------------------------------------------------------------------
 * The function run in the child
 *
 * args: the unpacked msgpack object the caller sent (valid for the call).
 * Pack exactly one object into `result` and return 0, or report a failure
 * with tbx_fail() and return its value.  Returning another non-zero value
 * without tbx_fail() is reported as TBX_EFAILED with that value as fail_code.
 * ctx: opts.ctx (fork only; NULL with other methods).
 *
 * The function runs in a child process: whatever it changes in memory is
 * lost when it returns, and only the packed result comes back.
 */
typedef int tbx_fn(const msgpack_object *args, msgpack_packer *result, void *ctx);

/* ------------------------------------------------------------------------
 * Registry: functions callable by name
 *
 * The fork method calls a function by pointer and needs no registration.
 * Methods that start a fresh program (spawn, the forkserver) find the
 * function by its registered name, so it must be registered at file scope:
 *
 *     static int add(const msgpack_object *args, msgpack_packer *r, void *c);
 *     TBX_REGISTER(add);
 *
 * Registration runs as a constructor when the executable or the shared
 * library that holds the macro is loaded (at priority 101, before ordinary
 * constructors, so a tbx_init() called from a constructor sees every
 * function), and is undone when a shared library is unloaded; it allocates
 * nothing.  Names must be unique within a process: two functions registered
 * under one name (two `static handler`s in two files) cannot be told apart
 * by a fresh program, so a spawn or forkserver call of either is refused
 * with TBX_ENOTREG and a message naming both places (file:line).  One
 * TBX_REGISTER line compiled into both the program and a library it loads
 * is one function, not two.  Fork calls by pointer and is not affected.
 */
typedef struct tbx_registration {
    const char *name; /* the name it is called by: fn's, as TBX_REGISTER spells it */
    tbx_fn *fn;       /* the function */
    struct tbx_registration *next; /* private */
    const char *file;              /* where TBX_REGISTER is, for messages */
    int line;                      /* and its line */
} tbx_registration;

/* Called by TBX_REGISTER's constructor and destructor.  Thread-safe. */
TBX_EXTERN void tbx_register(tbx_registration *reg);
/* Undoes tbx_register(reg): TBX_REGISTER's destructor calls it. */
TBX_EXTERN void tbx_unregister(tbx_registration *reg);

/* The registered function of that name, or NULL.  Thread-safe. */
TBX_EXTERN tbx_fn *tbx_lookup(const char *name);

/* The registered name of fn, or NULL if fn is not registered.  Thread-safe. */
TBX_EXTERN const char *tbx_name_of(tbx_fn *fn);

/* Makes fn callable by name, as described above; at file scope. */
#define TBX_REGISTER(fn)                                                        \
    static tbx_registration tbx__registration_##fn = {#fn, fn, NULL, __FILE__, __LINE__}; \
    __attribute__((constructor(101))) static void tbx__register_##fn(void)     \
    {                                                                           \
        tbx_register(&tbx__registration_##fn);                                 \
    }                                                                           \
    __attribute__((destructor)) static void tbx__unregister_##fn(void)         \
    {                                                                           \
        tbx_unregister(&tbx__registration_##fn);                               \
    }                                                                           \
    typedef int tbx__registered_##fn

/* ------------------------------------------------------------------------
 * Per-child hooks
 *
 * A hook runs in every child, after the signal reset and before the
 * function: reseed a random generator, drop a connection pool inherited from
 * the parent, close a listening socket.  Hooks run in the order they were
 * added.  A hook that returns non-zero stops the call: the function does not
 * run and the call ends with TBX_EFAILED, fail_code = the hook's value.
 *
 * Hooks added with tbx_add_child_hook() reach children made by fork (they are
 * inherited in memory).  A child that is a fresh program (spawn, and the
 * forkserver's children) runs the hooks that program adds before it calls
 * tbx_init(), which includes every TBX_CHILD_HOOK in it.  A hook added after
 * tbx_init() has returned cannot reach such a child: while one is there,
 * spawn and forkserver calls are refused with TBX_EINVAL and a message
 * saying so, rather than run without it.
 */
typedef int tbx_hook_fn(void *arg);

#define TBX_MAX_CHILD_HOOKS 32 /* hooks of each kind a process may add */

/* Adds a hook.  Returns 0, or -ENOSPC past TBX_MAX_CHILD_HOOKS.  Thread-safe;
 * a call already launched does not see a hook added after its launch. */
TBX_EXTERN int tbx_add_child_hook(tbx_hook_fn *hook, void *arg);

/* Removes the first hook added with this (hook, arg).  Returns 0 or -ENOENT. */
TBX_EXTERN int tbx_remove_child_hook(tbx_hook_fn *hook, void *arg);

/* File-scope form: adds hook(NULL) when the program or library loads. */
#define TBX_CHILD_HOOK(hook)                                                    \
    __attribute__((constructor(101))) static void tbx__child_hook_##hook(void) \
    {                                                                           \
        (void)tbx_add_child_hook(hook, NULL);                                   \
    }                                                                           \
    typedef int tbx__child_hooked_##hook

/* ------------------------------------------------------------------------
 * Preload hooks (forkserver)
 *
 * A preload hook runs once in the forkserver, before it serves: load a model,
 * parse a config, warm a cache.  Every child the server forks inherits the
 * work copy-on-write and does not pay for it again.  A hook returning
 * non-zero makes the server refuse to start (tbx_forkserver_start returns
 * TBX_EFAILED).
 */
typedef int tbx_preload_fn(void);

/* File scope, like TBX_REGISTER: every TBX_PRELOAD in the program (and in the
 * libraries the server preloads) runs in the server, in load order. */
#define TBX_PRELOAD(hook)                                                       \
    __attribute__((constructor(101))) static void tbx__preload_##hook(void)    \
    {                                                                           \
        (void)tbx_add_preload_hook(hook);                                       \
    }                                                                           \
    typedef int tbx__preloaded_##hook

/* Adds a preload hook; in the caller it only records it.  Returns 0 or
 * -ENOSPC past TBX_MAX_CHILD_HOOKS hooks.  Thread-safe. */
TBX_EXTERN int tbx_add_preload_hook(tbx_preload_fn *hook);

/* ------------------------------------------------------------------------
 * Options
 */
typedef enum {
    TBX_METHOD_DEFAULT = 0, /* the process default: fork unless changed */
    TBX_FORK,               /* fork the caller: fastest for a small caller */
    TBX_FORKSERVER,         /* fork from a small, clean, single-threaded server
                               process (tbx_forkserver_start): cost flat in
                               the caller's size and threads; fn must be
                               registered, and the program must call
                               tbx_init() first in main(). */
    TBX_SPAWN,              /* posix_spawn a fresh program: this one (via
                               /proc/self/exe) or opts.executable.  Its cost
                               does not grow with the caller's memory, and it
                               is safe in a multi-threaded caller.  The program
                               must call tbx_init() first in main(), and fn
                               must be registered (TBX_REGISTER). */
    TBX_POOL,               /* run in a pooled process: forked by the
                               forkserver from its clean, preloaded state, it
                               serves calls one after another (sized by
                               tbx_forkserver_opts.pool_size, replaced after
                               pool_max_calls).  A call costs about a pipe
                               round trip.  The per-call promises hold (the
                               deadline: an overrunning process is killed and
                               replaced; cancel; max_result; signal
                               dispositions back to the defaults; the call's
                               descendants killed at its end), but calls share
                               the process: what fn leaves in memory, the
                               next call in that process sees.  After each
                               call the process checks itself against a
                               fingerprint taken when it started (open
                               descriptors, threads, resident size) and is
                               replaced when it drifted: result.pool_fate says
                               so.  Child hooks run once per process, not per
                               call.  capture_output is the call's own: its
                               pipes are the process's stdout and stderr for
                               that call alone.  fn must be registered;
                               backtrace_on_timeout, backtrace_on_crash and
                               ctx are TBX_EINVAL; opts.contain does not apply
                               (a process is contained when it is forked); no
                               per-call cost (cost_known 0). */
    TBX_AUTO                /* chosen per call: TBX_FORK for a caller with one
                               thread and a resident size under
                               TBX_AUTO_FORK_MAX_RSS; otherwise TBX_POOL when
                               the forkserver was started with pool_size > 0,
                               else TBX_FORKSERVER.  result.method says which
                               ran.  fn must be registered (any of the three
                               may run it), unless the caller qualifies for
                               fork. */
} tbx_method;

/* opts.on_output: a chunk of the child's stdout (stream 1) or stderr (2). */
typedef void tbx_output_fn(void *arg, int stream, const char *data, size_t len);
/* TBX_AUTO's threshold: a single-threaded caller with a resident size under
 * this forks.  Measured by bench/method_latency: a fork's cost grows by about
 * 19 us per MiB of the caller's resident size, and crosses a forkserver
 * call's (0.23 ms on the development VM) at about 4-5 MiB; a small C program
 * linked with timebox is 3 MiB. */
#define TBX_AUTO_FORK_MAX_RSS ((size_t)6 << 20)

/* The options of one call: tbx_opts_init() fills in the defaults, then set
 * what differs. */
typedef struct tbx_opts {
    double timeout_s;     /* 0 (default): no deadline.  < 0: a deadline
                             already past, so the call times out at once
                             (a caller computing "deadline - now" gets a
                             timeout, never a call without a deadline). */
    double grace_s;       /* SIGTERM -> SIGKILL delay.  Default 1 s; < 0 is
                             TBX_EINVAL, 0 sends SIGKILL at the deadline. */
    tbx_method method;    /* Default TBX_METHOD_DEFAULT. */
    int hard_timeout;     /* 1 (default): the deadline counts from the call,
                             start-up included; 0: the clock starts when the
                             child starts running fn, and the start-up (child
                             hooks, a spawned main() before tbx_init, the
                             forkserver's hand-over) is bounded by the same
                             timeout_s, from the call (or from the launch
                             after a wait for a slot): a soft-deadline call
                             that hangs anywhere ends TBX_ETIMEDOUT.  The
                             forkserver's backstop never fires before the
                             caller's own deadline + grace. */
    int reset_signals;    /* 1 (default): in the child every handler goes
                             back to SIG_DFL and the mask is emptied, so an
                             inherited handler cannot act on the caller's
                             resources.  0 keeps what the child inherits:
                             with fork, the caller's handlers and mask; with
                             spawn, what survives an exec (ignored signals
                             and the mask; handlers become SIG_DFL); with
                             the forkserver, the server's (all SIG_DFL). */
    size_t max_result;    /* Largest result accepted, in bytes of msgpack.
                             Default 256 MiB (also when 0); larger ->
                             TBX_ETOOBIG, child killed, parent memory
                             bounded by it.  A result of 1 MiB or more
                             comes back in a memfd the child makes once
                             the result passes 1 MiB (packed into it
                             once, sealed, sent with the result's header,
                             then mapped read-only into the result: never
                             copied through the socket); under 1 MiB,
                             none is made. */
    void *ctx;            /* Passed to fn.  Fork only: TBX_EINVAL with other
                             methods, since a pointer cannot cross an exec. */
    int backtrace_on_crash; /* 1: a child that dies of SIGSEGV, SIGBUS,
                             SIGFPE, SIGILL or SIGABRT comes back with its
                             threads' stacks in backtrace, the faulting
                             thread's among them (its top frames timebox's
                             crash_handler and libc's __restore_rt, then
                             where it faulted), the call still TBX_ECRASHED
                             with that term_signal.
                             Nothing unsafe runs in the crashed child: the
                             handler timebox installs (on an alternate stack,
                             so a stack overflow is caught too) only says
                             which signal on the result pipe and waits; its
                             owner traces it from outside (as for
                             backtrace_on_timeout) and sends it the signal
                             again, of which it dies.  Needs ptrace: where it is refused the
                             child dies untraced (backtrace NULL).  fn may
                             install its own handlers for these signals,
                             which then win.  Not with warm children. */
    const char *label;    /* NULL (default), or a name for this call (at
                             most TBX_MAX_LABEL bytes, no control characters;
                             TBX_EINVAL otherwise): every line timebox logs
                             about the call ends with " [label]", the
                             observer sees it, and fn reads it with
                             tbx_label(), under every method, so that a
                             host's per-call logger can tag what fn logs. */
    /* Resource limits in the child (setrlimit before any hook or fn runs;
     * 0: inherited).  A child killed by its CPU limit ends TBX_ECRASHED with
     * term_signal SIGXCPU (SIGKILL one second later if it ignores that); a
     * memory limit shows as allocation failures inside fn, which reports
     * them as it sees fit. */
    size_t limit_memory;  /* RLIMIT_AS, bytes */
    double limit_cpu_s;   /* RLIMIT_CPU, seconds of CPU, rounded up */
    unsigned limit_files; /* RLIMIT_NOFILE */
    int allow_core;       /* 0 (default): RLIMIT_CORE 0, no core dumps;
                             1: inherited */
    size_t capture_output; /* > 0: the child's stdout and stderr go to pipes
                             that timebox drains as they fill (the child never
                             blocks on them), keeping up to this many bytes
                             of each in the result (stdout_data, ...), the
                             rest counted as truncated.  0 (default): the
                             child shares the caller's stdout and stderr
                             (a pooled process, its server's).  Not with
                             warm children (a call that asks for it starts a
                             fresh one).  TBX_POOL: the pipes are the
                             process's stdout and stderr for that call alone. */
    tbx_output_fn *on_output; /* NULL (default), or called with each chunk
                             of the child's output as it arrives, while the
                             call runs: stream 1 (stdout) or 2 (stderr), the
                             bytes (not NUL-terminated, valid for the
                             callback only).  Needs capture_output
                             (TBX_EINVAL without it): it sees
                             exactly the bytes kept in the result, and none
                             past that bound.  Runs on the thread that runs
                             the call (a blocking caller's; the loop's for
                             an async call), so it must be quick, and must
                             not call back into timebox. */
    void *on_output_arg;  /* passed to on_output */
    int backtrace_on_timeout; /* 1: at the deadline, before SIGTERM, where
                             the child was goes into the result (backtrace).
                             Taken from outside (backtrace_source
                             TBX_BACKTRACE_OUTSIDE): the process that owns the
                             child (the caller for fork and spawn, the
                             server for its children) stops every thread of
                             it with ptrace and unwinds it with elfutils'
                             libdwfl, loaded on first use: every thread, the
                             one running fn marked and first, function, file
                             and line where debug information exists.  It
                             works when the child blocks every signal, is
                             stopped, or is deadlocked in malloc, and holds
                             the child at most 200 ms (400 ms in all with
                             naming the frames; a few ms to stop and unwind
                             in practice, naming reads debug files).  The
                             tracer is blocking: it runs on the thread that
                             runs the call (an async call's loop, whose other
                             calls wait meanwhile; the forkserver's loop for
                             its children, two traces per call at most).  Where ptrace is refused
                             (Yama's ptrace_scope 2 or 3, a container
                             without it) or libdw is missing, the child is
                             asked instead (TBX_BACKTRACE_HANDLER): a handler
                             timebox installs writes backtrace_symbols_fd
                             output of fn's thread, waited for at most
                             250 ms; its function names need -rdynamic, and
                             it uses signal SIGRTMAX-3 in the child.  Not
                             with warm children. */
    const char *executable; /* spawn: the program to run as the worker;
                             NULL: the process default (tbx_set_spawn_
                             executable), else this program itself.  It must
                             call tbx_init() first in main(), or be
                             timebox-worker. */
    char *const *argv;    /* spawn: argv for executable (argv[0] first,
                             NULL-terminated); NULL: { executable, NULL }.
                             With timebox-worker: { "timebox-worker",
                             "--preload", "libplugin.so", NULL }. */
    int cancel_fd;        /* A descriptor that cancels the call once it is
                             readable: an eventfd, or the read end of a
                             pipe.  -1 (default, also any negative): none.
                             Readable -> the call ends as at a deadline
                             (SIGTERM to the child's group, SIGKILL after
                             grace_s) with TBX_ECANCELED, unless its result
                             was already complete.  It is how a blocking
                             tbx_call is ended from outside: from another
                             thread, or from a signal handler (write(2) is
                             async-signal-safe), as a host such as a
                             database server needs when its own interrupt
                             (a cancel request, a statement timeout) arrives
                             during a call.  Every method, blocking and
                             async.  Borrowed: timebox never reads it (so a
                             readable descriptor stays readable and cancels
                             every call that uses it, and the caller drains
                             it before reusing it) and never closes it; the
                             call watches a duplicate, so any number of
                             calls may share one.  It is watched from the
                             launch on: a call waiting for a slot
                             (tbx_set_max_children) sees it when it
                             launches.  Not a descriptor: TBX_EINVAL. */
    int contain;          /* 1 (default): the call runs in a cgroup of its
                             own where this process (for forkserver calls:
                             the server) can have one, killed whole when the
                             call ends (see Containment below); 0: its process
                             group only, as where there are no cgroups (to
                             measure what containment costs, or for a fn that
                             must leave a process behind on purpose) */
    int cap_exempt;       /* 1: the call ignores tbx_set_max_children: it
                             neither waits for a slot nor takes one (a
                             health check, a call that must not queue
                             behind the device the cap guards).  Default 0. */
} tbx_opts;

/* Fills *opts with the defaults above.  Always call it first: fields added in
 * later versions get their defaults from it. */
TBX_EXTERN void tbx_opts_init(tbx_opts *opts);

/* Sets the method used for TBX_METHOD_DEFAULT.  Returns 0, or TBX_EINVAL for
 * a method this build does not provide.  Thread-safe (an atomic store). */
TBX_EXTERN int tbx_set_default_method(tbx_method method);

/* Sets the program spawn runs when opts.executable is NULL, and its argv
 * (NULL: { executable, NULL }).  NULL executable: back to this program.  The
 * strings are copied.  Returns 0, -ENOMEM, or TBX_EINVAL.  Thread-safe; a
 * call already launched keeps the program it had. */
TBX_EXTERN int tbx_set_spawn_executable(const char *executable, char *const *argv);

/* Caps the children alive at once in this process: every method, blocking
 * and async calls together.  Calls beyond the cap wait their turn, in the
 * order they came.  With hard_timeout (the default) the wait counts toward
 * the deadline, and a call whose deadline passes while it waits ends
 * TBX_ETIMEDOUT without a child (queued_s says how long it waited); with
 * hard_timeout = 0 the clock starts when fn does.  A waiting async call can
 * be cancelled.  A cap of 1 runs one call at a time: the lock a program
 * that drives one piece of hardware needs.  0 (default): no cap.  Calls
 * already running are not counted against a cap set later: set it at
 * start-up.  A call with opts.cap_exempt takes no slot and never waits.
 *
 * A blocking call (tbx_call) that could only get a slot from calls on loops
 * that its own thread runs (async calls in flight or queued on them) would
 * wait for ever, since those loops cannot run while it waits: it fails at
 * once with -EDEADLK instead, with or without a deadline, and no child.
 * Thread-safe; returns 0. */
TBX_EXTERN int tbx_set_max_children(unsigned max);

/* ------------------------------------------------------------------------
 * Containment: what ends with a call
 *
 * Every process a call's child makes ends with the call, whatever session or
 * process group it moved to, where this process can have cgroups (v2): each
 * call then runs in a cgroup of its own, joined by the child before any of
 * the caller's code runs in it, and killed whole (cgroup.kill) when the call
 * ends, success included, before tbx_call returns or the callback runs.
 * Elsewhere a call is contained by its process group (a descendant that
 * calls setsid() escapes it), and a forkserver call also by the server, a
 * child subreaper that kills the orphans it inherits.  tbx_result.containment
 * says what a call had.
 *
 * Where the cgroups live: in a directory named with tbx_set_cgroup_root() or
 * the environment variable TIMEBOX_CGROUP (the shared daemon: --cgroup DIR);
 * else in this process's own cgroup if it may make directories there (root,
 * or a subtree delegated to it: a systemd service with Delegate=yes, a user
 * session's user@.service).  timebox makes one directory "timebox-<pid>"
 * there, with one empty cgroup per call in flight below it (a few kept for
 * the calls to come), enables no controller, and removes them at exit and
 * in tbx_forkserver_stop().
 * ------------------------------------------------------------------------ */
#define TBX_CONTAIN_PGROUP 1    /* the child's process group */
#define TBX_CONTAIN_SUBREAPER 2 /* the process group, and the forkserver kills
                                   the orphans it inherits */
#define TBX_CONTAIN_CGROUP 3    /* a cgroup of the call's own */

/* What calls made by this process get where they do not opt out
 * (opts.contain): TBX_CONTAIN_CGROUP or TBX_CONTAIN_PGROUP.  On first use it
 * chooses the directory and tries it (a short-lived child moves itself into
 * a cgroup there).  Thread-safe. */
TBX_EXTERN int tbx_containment(void);

/* Names the cgroup v2 directory per-call cgroups are made in, overriding
 * TIMEBOX_CGROUP: one this process may write to (delegated to its user).
 * NULL: chosen automatically again; "" or "off": no cgroups.  Returns 0,
 * -ENOMEM, or -EBUSY while calls hold cgroups.  The directory is tried on
 * the next call; one that does not work is logged (TBX_LOG_WARN) and calls
 * fall back to their process group.  A forkserver this process starts
 * afterwards gets the same choice; one already running keeps its own until
 * tbx_forkserver_stop().  Thread-safe. */
TBX_EXTERN int tbx_set_cgroup_root(const char *dir);

/* ------------------------------------------------------------------------
 * Results
 */
typedef struct tbx_result {
    int status;           /* 0 or an error code, same as tbx_call's return */
    msgpack_object value; /* the result when status == 0 (nil otherwise);
                             owned by the tbx_result */
    const char *message;  /* NULL when status == 0; otherwise the child's
                             tbx_fail message or what went wrong; owned by the
                             tbx_result */
    int fail_code;        /* the code the child passed to tbx_fail */
    int exit_code;        /* the child's exit status; -1 if it did not exit
                             normally or never ran */
    int term_signal;      /* the signal that ended the child; 0 if none */
    int kill_signal;      /* the strongest signal timebox sent because of the
                             deadline, a cancel or an oversize result: 0,
                             SIGTERM, or SIGKILL (SIGTERM was not enough, or
                             none was tried).  The group kill done after every
                             call to remove stragglers does not count. */
    pid_t pid;            /* the child's pid (already reaped); 0 if none */
    double elapsed_s;     /* from the call to its result: the sum of the four
                             below */
    /* Where the time went (seconds): */
    double queued_s;      /* waiting for a free slot (tbx_set_max_children) */
    double startup_s;     /* launching the child until fn started (for fork
                             with a hard deadline, which has no start signal:
                             until the fork returned) */
    double running_s;     /* fn running, until its result was complete or
                             the child ended */
    double teardown_s;    /* from there until the child was reaped and the
                             call returned (signals, grace, reaping) */
    /* With opts.capture_output: what the child wrote to stdout and stderr,
     * NUL-terminated (the length does not count it); NULL otherwise.  Owned
     * by the result. */
    const char *stdout_data;
    const char *stderr_data; /* the same for stderr */
    size_t stdout_len;       /* bytes in stdout_data */
    size_t stderr_len;       /* bytes in stderr_data */
    int stdout_truncated;    /* 1: more was written to stdout than kept */
    int stderr_truncated;    /* 1: more was written to stderr than kept */
    /* With opts.backtrace_on_timeout and a call that timed out, or
     * opts.backtrace_on_crash and a child that crashed: where fn was, one
     * frame a line; NULL if none came.  Owned by the result.
     * Taken from outside, one block per thread:
     *     thread 4242 "app" (fn):
     *     #0  0x00007f3c2a1b2c3d __lll_lock_wait+0x2d
     *     #1  0x00007f3c2a1b8482 __pthread_mutex_lock+0x112
     *     #2  0x000055d0c0ffee12 stuck+0x1e (/src/app.c:42)
     * (a frame without a symbol: "?? (module+0xoffset)").
     * From the child's handler, as backtrace_symbols_fd writes them. */
    const char *backtrace;
    int containment;      /* what held the call's processes: TBX_CONTAIN_*
                             (see Containment); 0 if no child ran */
    int backtrace_source; /* where backtrace came from: TBX_BACKTRACE_NONE,
                             _OUTSIDE or _HANDLER (tbx_backtrace_source) */
    /* What the child cost, from the kernel's accounting of the reaped
     * child (wait4's rusage): CPU seconds in user mode and in the kernel,
     * and its peak resident size in KiB.  They count the child and those of
     * its own children it waited for, not grandchildren still running when
     * it ended.  Fork and spawn: reaped by the caller; the forkserver: the
     * server reaps and sends them with the child's end.  A spawned worker's
     * figures include its exec and start-up; a fork child's peak size
     * counts the pages it shares with the caller (resident at the fork).
     * cost_known is 0 when no figures came (a call that launched nothing,
     * a child someone else reaped, a server that died or went silent, a
     * pooled call: its process is not reaped per call). */
    double cpu_user_s; /* CPU seconds in user mode */
    double cpu_sys_s;  /* CPU seconds in the kernel */
    long max_rss_kb;   /* peak resident size, KiB */
    int cost_known;    /* 1: the three figures above came; 0: none did */
    tbx_method method;    /* the method that ran the call (TBX_AUTO and
                             TBX_METHOD_DEFAULT resolved) */
    int pool_fate;        /* TBX_POOL: what became of the pooled process
                             (TBX_POOL_KEPT, ...); 0 for other methods */
    void *priv_[7];       /* private: memory owned by the result */
} tbx_result;

/* result.pool_fate: whether the pooled process that ran the call serves on. */
enum {
    TBX_POOL_KEPT = 0,    /* it serves the next call */
    TBX_POOL_DRIFTED = 1, /* it no longer matched its fingerprint (more
                             descriptors or threads than when it started, or
                             a resident size grown past the bound): replaced */
    TBX_POOL_SPENT = 2,   /* it had served pool_max_calls calls: replaced */
    TBX_POOL_RETIRED = 3, /* the call set resource limits, which cannot be
                             undone: replaced */
    TBX_POOL_ENDED = 4    /* it was killed (deadline, cancel, oversize
                             result) or died: replaced */
};

/* Frees what the result owns and resets it to an empty result.  NULL-safe,
 * idempotent.  Thread-safe for distinct results. */
TBX_EXTERN void tbx_result_free(tbx_result *r);

/* tbx_result.backtrace_source. */
enum {
    TBX_BACKTRACE_NONE = 0,    /* no backtrace */
    TBX_BACKTRACE_OUTSIDE = 1, /* taken from outside the child (ptrace, libdwfl) */
    TBX_BACKTRACE_HANDLER = 2  /* written by the child's own handler: ptrace
                                  was refused, or this build or machine has
                                  no libdw */
};

/* The longest opts.label, in bytes. */
#define TBX_MAX_LABEL 255

/* ------------------------------------------------------------------------
 * Calls
 *
 * tbx_call runs fn in a child and waits for its result, its failure or its
 * deadline.  args/args_len: exactly one msgpack object (checked before any
 * child is made; TBX_EINVAL otherwise).  opts may be NULL for the defaults.
 * With fork the child reads the args where they are; with spawn and the
 * forkserver, args of 1 MiB or more are written once into a sealed memfd
 * that the child maps, and smaller ones go down a socket.
 *
 * Always fills *out, whatever it returns (out->status == the return value),
 * so tbx_result_free(out) is always right afterwards.
 *
 * Returns 0 or:
 *   TBX_ETIMEDOUT  the deadline passed; the child's group was sent SIGTERM,
 *                  then SIGKILL after grace_s (out->kill_signal says which)
 *   TBX_ECRASHED   the child died from a signal not ours (out->term_signal)
 *   TBX_EEXITED    the child exited without a result (out->exit_code)
 *   TBX_EFAILED    fn called tbx_fail (out->fail_code, out->message)
 *   TBX_ETOOBIG    the result was over max_result; the child was killed
 *   TBX_EPROTO     the child wrote something that is not a result frame,
 *                  bytes after it, or a result that is not exactly one
 *                  msgpack object
 *   TBX_EINVAL     bad arguments or options
 *   -EDEADLK       every slot of tbx_set_max_children is held by calls
 *                  on this thread's own loops (see there); nothing ran
 *   -errno         a system call failed: -EAGAIN (fork, process limit),
 *                  -EMFILE, -ENOMEM; nothing is left open or running
 *
 * Thread-safe: any number of threads may call at once.  Each blocking call
 * runs timebox's engine on a private event loop of its own.
 *
 * The fork method and threads: a forked child holds a copy of only the
 * calling thread.  A lock held by another thread at the moment of the fork
 * (malloc's, stdio's, one of the program's own) stays held forever in the
 * child, and fn deadlocks on it; the call then ends at its deadline with
 * TBX_ETIMEDOUT, the child killed, but it never succeeds.  A program with
 * threads should use the forkserver or spawn methods, as CPython now advises
 * for multiprocessing.  timebox itself takes no lock and allocates nothing
 * in a fork child before fn runs.
 *
 * Nesting: fn may itself call tbx_call (a nested deadline).  The child starts
 * with no timebox state of its parent's.
 */
TBX_EXTERN int tbx_call(tbx_fn *fn, const void *args, size_t args_len,
                        const tbx_opts *opts, tbx_result *out);

/* Calls the function registered (TBX_REGISTER) under name, where the method
 * finds it:
 *   - spawn and the forkserver resolve the name in the child's program (the
 *     worker, with what it preloads, or the server, with its preloads,
 *     including a shared server attached with tbx_forkserver_attach), so the
 *     caller need not have the function at all: a host that never loads the
 *     job library, or a client of a server that preloaded it;
 *   - fork (and TBX_METHOD_DEFAULT while the default is fork) has no other
 *     program to ask: the name is looked up in this process's registry and
 *     the function called by pointer, as tbx_call would.  A forked child is
 *     a copy of this process, so nothing else could be found there.
 * An unknown name is TBX_ENOTREG, from wherever it was resolved: here
 * (fork) before anything is launched, or from the worker or the server,
 * whose child never runs.  name is borrowed like args; a name longer than
 * 255 bytes is TBX_ENOTREG, a NULL name TBX_EINVAL.  Otherwise everything
 * is as for tbx_call (opts.ctx only with fork).  Thread-safe. */
TBX_EXTERN int tbx_call_named(const char *name, const void *args, size_t args_len,
                              const tbx_opts *opts, tbx_result *out);

/* ------------------------------------------------------------------------
 * The forkserver
 *
 * A small, clean, single-threaded process that forks the children of
 * TBX_FORKSERVER calls, whatever the size or threading of the caller.  It is
 * a fresh copy of this program (or of opts.executable), started with
 * posix_spawn, that becomes the server inside tbx_init(): the caller never
 * forks itself.  It is the parent of the children: it reaps them, kills
 * their process groups, and enforces each call's deadline itself as a
 * backstop, so a caller that dies mid-call leaves nothing running.  It exits
 * when its creator closes the connection or exits.
 *
 * Children forked by the server run the TBX_CHILD_HOOK hooks of the server's
 * program (runtime tbx_add_child_hook calls in the caller do not reach it).
 */
typedef struct tbx_forkserver_opts {
    const char *executable;    /* NULL: this program (/proc/self/exe), whose
                                  main() calls tbx_init() first; or
                                  timebox-worker */
    char *const *argv;         /* argv for executable; NULL: { executable } */
    const char *const *preload; /* shared objects to dlopen in the server
                                  before it serves (their TBX_REGISTER and
                                  TBX_PRELOAD run there); NULL-terminated */
    unsigned max_children;     /* children alive at once; more: -EAGAIN.
                                  0 (default): 1024 */
    double request_timeout_s;  /* how long a request, or a new connection's
                                  handshake, may take to arrive whole before
                                  the server drops it; default 10 */
    /* Sharing (see below).  socket_path NULL (default): a private server. */
    const char *socket_path;   /* also listen here, for other processes */
    const uid_t *allow_uids;   /* uids let in besides the server's own */
    size_t nallow_uids;        /* at most 16 */
    unsigned max_per_client;   /* children alive at once per connection;
                                  0 (default): only max_children */
    unsigned warm_children;    /* keep this many children already forked
                                  and idle, each waiting for one call (then it
                                  exits: calls share nothing), each replaced
                                  in the background once the call that took
                                  it has returned (not while it runs, so the
                                  server's fork does not compete with it for
                                  the CPU).  A call then costs about a pipe
                                  round trip.  Their
                                  deadlines are enforced by the caller alone
                                  (and their caller's death).  0 (default):
                                  none.  This process's calls only; a process
                                  forked from it starts with none.  A slot
                                  whose server has died since is discarded
                                  and the call goes cold on a fresh server
                                  (its request was never sent: fn never runs
                                  twice); the pool is topped up after every
                                  call, so a restart, or a refill that
                                  failed, leaves it short only until the next
                                  call ends.  A call with capture_output or
                                  backtrace_on_timeout takes no warm child:
                                  it starts a fresh one, which provides
                                  them. */
    unsigned pool_size;        /* TBX_POOL: pooled processes kept idle for
                                  this process's calls (more are forked while
                                  more calls run at once; the extra ones exit
                                  when their call ends).  0 (default): the
                                  number of online CPUs.  Set (non-zero),
                                  they are forked by tbx_forkserver_start
                                  (which applies pool_size and
                                  pool_max_calls even when the server already
                                  runs) and TBX_AUTO may choose the pool;
                                  otherwise the pool fills as TBX_POOL calls
                                  come. */
    unsigned pool_max_calls;   /* TBX_POOL: calls one pooled process serves
                                  before it is replaced; 0 (default): no
                                  limit */
} tbx_forkserver_opts;

/* Fills opts with the defaults; always call it first. */
TBX_EXTERN void tbx_forkserver_opts_init(tbx_forkserver_opts *opts);

/* Starts this process's forkserver and waits until it serves (its preload
 * hooks have run).  opts may be NULL.  Started on the first TBX_FORKSERVER
 * call if not started explicitly.  Returns 0 (also when already running
 * with the same options; opts NULL stands for the defaults), -EBUSY when a
 * server already runs with other options (they cannot be applied to it:
 * tbx_forkserver_stop() first), -EADDRINUSE when another server listens on
 * opts.socket_path, -errno if it could not be started, TBX_EFAILED if a
 * preload hook failed,
 * TBX_EEXITED if it exited before serving (does its main() call tbx_init
 * first?).  Thread-safe and idempotent.  If the server dies, calls in flight
 * fail at once with -ECONNRESET and the next call starts a new one. */
TBX_EXTERN int tbx_forkserver_start(const tbx_forkserver_opts *opts);

/* Stops the forkserver: it kills its children and exits; waits for it.
 * Calls in flight fail with -ECONNRESET.  No-op when none runs.  Thread-safe. */
TBX_EXTERN void tbx_forkserver_stop(void);

/* The forkserver's pid, or 0 when this process has none. */
TBX_EXTERN pid_t tbx_forkserver_pid(void);

/* ------------------------------------------------------------------------
 * One forkserver shared by many processes
 *
 * With opts.socket_path, the server started by tbx_forkserver_start() also
 * listens on that Unix socket, so that other processes (the workers of a
 * pre-forking server, started after it) use it too.  Nobody else gets in:
 *   - the socket is created mode 0600 (umask 0177 at bind, no window) in a
 *     directory of mode 0700 that belongs to the server's user (made if
 *     missing; refused with -EPERM if it is anyone else's or open to them).
 *     With allow_uids, those users must reach it: the directory may then be
 *     searchable (not writable) by others, and the socket is made 0666
 *     after the bind, the two checks below keeping everyone else out;
 *     never in the abstract namespace; a path too long for sun_path is
 *     -ENAMETOOLONG, never truncated;
 *   - one server per path: a socket on which a server still answers is
 *     -EADDRINUSE (only one that nobody answers on, left by a server that
 *     died, is replaced), and a server removes, when it ends, only the
 *     socket and key it made (the same inode), never those of a server
 *     started on the path since;
 *   - each connection's peer uid (SO_PEERCRED) is checked before a byte of
 *     payload is read: the server's own uid, or opts.allow_uids;
 *   - each connection proves, both ways, that it knows a 32-byte secret key
 *     (HMAC-SHA256 of a fresh random nonce, constant-time compare).
 * tbx_forkserver_start() with a socket_path sets TIMEBOX_FORKSERVER_SOCKET
 * and TIMEBOX_FORKSERVER_KEY (hex) in this process's environment, so that
 * processes it starts afterwards find the server without code: their first
 * TBX_FORKSERVER call attaches to it.  A process forked from the creator also
 * simply keeps using the connection it inherited.  (Call it before threads:
 * it changes the environment.)  The server exits when every process holding
 * its creator's connection has exited, or on tbx_forkserver_stop() from the
 * creator.
 *
 * timebox-forkserver is the same server as a daemon (--socket PATH); it
 * writes its key to PATH.key (mode 0600) for its clients.
 */

/* Attaches this process to the shared forkserver listening at path: later
 * TBX_FORKSERVER calls go to it.  key: the 32-byte secret, or NULL to read it
 * from $TIMEBOX_FORKSERVER_KEY, else from the file "<path>.key".  Returns 0,
 * -errno (-ENOENT, -ECONNREFUSED: nobody listens; -EACCES: the socket or
 * the key file is closed to us, or the server does not let our uid in),
 * -ETIMEDOUT (no handshake within 10 s), -ENAMETOOLONG,
 * TBX_EINVAL (a key of the wrong length or form), or TBX_EPROTO (the key was
 * refused, or the server could not prove it has it).  Replaces a connection
 * this process had; it never stops a server it did not start.  Thread-safe. */
TBX_EXTERN int tbx_forkserver_attach(const char *path, const void *key, size_t key_len);

/* ------------------------------------------------------------------------
 * Diagnostics
 *
 * timebox tells the host of what it does on its own: a child escalated to
 * SIGKILL because SIGTERM was not enough (INFO), a forkserver that died and
 * was started again (WARN), a child reaped by someone else, such as a
 * waitpid(-1) in the host (WARN).  A forkserver's own notes (clients it
 * refused) are written by that process to its stderr.
 */
typedef enum { TBX_LOG_DEBUG, TBX_LOG_INFO, TBX_LOG_WARN, TBX_LOG_ERROR } tbx_log_level;

/* Called on whatever thread the event happened (a loop's, a caller's), with
 * a message valid for the call only.  Must not call back into timebox. */
typedef void tbx_log_fn(tbx_log_level level, const char *message, void *arg);

/* Sends timebox's diagnostics to fn; NULL restores the default: WARN and
 * ERROR to stderr, "timebox: ..." on a line.  Thread-safe. */
TBX_EXTERN void tbx_set_log(tbx_log_fn *fn, void *arg);

/* An observer hears of every call once it has finished: one callback per
 * call that got under way, whatever its outcome (a call whose deadline
 * passed while it waited for a slot included), not of one refused at its
 * start (TBX_EINVAL, or a launch that failed with -errno before any child
 * ran: tbx_call_async's error return, which never calls back, or its
 * blocking twin),
 * with the method that ran it (never TBX_METHOD_DEFAULT), its label
 * (opts.label, or NULL) and its result: status, pid, exit_code,
 * term_signal, kill_signal, the timings and the cost.  It runs on the thread
 * that finishes the call (a blocking caller's; the loop's for an async
 * call), just before the call returns or its callback runs; result is
 * valid for the callback only.  It must be quick and must not call back
 * into timebox.  For a host's metrics: examples/metrics.c keeps Prometheus
 * counters with it. */
typedef void tbx_observer_fn(void *arg, tbx_method method, const char *label,
                             const tbx_result *result);

/* Sets the observer (NULL: none, the default) for calls that finish from
 * now on.  Thread-safe. */
TBX_EXTERN void tbx_set_observer(tbx_observer_fn *fn, void *arg);

/* ------------------------------------------------------------------------
 * Inside the child
 */

/* Records a failure: the call returns TBX_EFAILED with fail_code = code and
 * message = the formatted text (truncated at 1023 bytes).  Anything already
 * packed into `result` is discarded.  Returns TBX_EFAILED, for
 * `return tbx_fail(result, 42, "bad input %d", x);`.  Called outside a
 * timebox child it only returns TBX_EFAILED. */
TBX_EXTERN int tbx_fail(msgpack_packer *result, int code, const char *fmt, ...)
    TBX_PRINTF(3, 4);

/* Seconds until this call's deadline, as seen by the function; 0 once it has
 * passed; HUGE_VAL when the call has no deadline or when called outside a
 * timebox child.  Async-signal-safe.
 *
 * Nested calls inherit it: a call made inside fn (by any method) ends, its
 * grace period included, before the call it runs in reaches its deadline,
 * so that fn gets the inner call's TBX_ETIMEDOUT back in time to return a
 * result of its own.  Its budget is tbx_remaining() less a margin for fn to
 * react (a tenth of it, at most 50 ms); its grace_s is cut to half that
 * budget if longer; its timeout_s is capped at the budget less the grace,
 * unless it asked for less; and its deadline counts its child's start-up
 * (hard_timeout is forced to 1). */
TBX_EXTERN double tbx_remaining(void);

/* This call's label (opts.label), or NULL when it has none or when called
 * outside a timebox child.  Valid until fn returns.  Async-signal-safe. */
TBX_EXTERN const char *tbx_label(void);

/* ------------------------------------------------------------------------
 * Process set-up
 *
 * Call first in main(), before threads:
 *
 *     int main(int argc, char **argv) { tbx_init(argc, argv); ... }
 *
 * In a process that timebox spawned as a worker it reads the call, finds the
 * function by its registered name, runs the child hooks and the function,
 * writes the result and exits: it never returns there.  In any other process
 * it returns 0 at once (one getenv).  It is the C form of Python's "protect
 * __main__" rule: whatever main() does before tbx_init, every spawned worker
 * does too.  A spawned program that never calls tbx_init makes the call fail
 * with TBX_EEXITED (or TBX_ETIMEDOUT), with a message naming this fix; its
 * own tbx_call()s fail with TBX_EINVAL, so it cannot spawn itself in a loop.
 * Idempotent, thread-safe.  argc/argv are not used today and may be 0/NULL.
 *
 * Workers find their request through the environment variable
 * TIMEBOX_WORKER, which tbx_init removes before the function runs.
 */
TBX_EXTERN int tbx_init(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif /* TIMEBOX_H */
