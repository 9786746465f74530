/*
 * timebox internals: the tbx__ types shared between the library's files.
 *
 * Layers, each above what it uses (no cycles):
 *   os_linux.c  errors.c  registry.c  hooks.c  wire.c    (no timebox deps)
 *   deadline.c                                           (per-loop timerfd heap)
 *   child.c                                              (the child side)
 *   launch_fork.c                                        (one file per method)
 *   engine.c                                             (one call's life)
 *   call.c  init.c                                       (the public entry points)
 */
#ifndef TBX_INTERNAL_H
#define TBX_INTERNAL_H

#include "timebox.h"
#include "timebox/uv.h"

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define TBX__UNUSED(x) ((void)(x))

/* Reports a diagnostic to the host's log callback (log.c). */
void tbx__log(tbx_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------- os layer
 * Thin wrappers over Linux system calls, each retrying on EINTR where that is
 * meaningful, each returning -errno on failure.  A kernel without pidfd makes
 * tbx__pidfd_open return -ENOSYS, and the engine falls back to polling. */
uint64_t tbx__now_ns(void); /* CLOCK_MONOTONIC */
/* seconds as nanoseconds, clamped so that now + the result cannot wrap: a
 * timeout of 1e12 s is "never", not a deadline in the past. */
uint64_t tbx__seconds_to_ns(double s);
/* A CPU limit in whole seconds, rounded up; 0 for none. */
uint32_t tbx__cpu_seconds(double s);
int tbx__pidfd_open(pid_t pid);
int tbx__pidfd_send_signal(int pidfd, int sig);
int tbx__pipe(int fds[2], int flags); /* pipe2(O_CLOEXEC | flags) */
int tbx__close(int fd);               /* close, EINTR treated as closed */
int tbx__close_range(unsigned first, unsigned last); /* 0, or -errno (ENOSYS) */
ssize_t tbx__read(int fd, void *buf, size_t len);  /* retries EINTR */
int tbx__write_all(int fd, const void *buf, size_t len); /* blocking fd */
int tbx__timerfd_create(void);        /* CLOCK_MONOTONIC, CLOEXEC|NONBLOCK */
int tbx__timerfd_arm(int fd, uint64_t abs_ns); /* 0 disarms */
int tbx__reap(pid_t pid, int *wstatus, int nohang); /* waitpid, our pid only */
/* Whether our child has exited: 1 (a zombie, still ours to reap), 0 (still
 * running), or -ECHILD (someone else reaped it).  Asked through the pidfd
 * when there is one (kernel 5.4+), so the answer is about our child. */
int tbx__child_state(pid_t pid, int pidfd);
/* Ends our unreaped child now: SIGKILL to its group and to it (it may have
 * left the group), then reaps it.  Its exit status is dropped. */
void tbx__kill_reap(pid_t pid);


/* ------------------------------------------------------------------ wire
 * A frame from the child: a fixed header, then `len` bytes of payload.
 *   TBX__FRAME_OK     payload = the msgpack result
 *   TBX__FRAME_FAIL   payload = the tbx_fail message (<= TBX__MAX_MESSAGE)
 *   TBX__FRAME_START  no payload: fn is starting (soft deadlines only)
 * All fields are in host byte order: both ends are the same machine. */
#define TBX__FRAME_MAGIC 0x31584254u /* "TBX1" */
#define TBX__MAX_MESSAGE 1023
#define TBX__MAX_DEPTH 32 /* msgpack-c unpacks at most 32 open containers */

enum {
    TBX__FRAME_OK = 1,
    TBX__FRAME_FAIL = 2,
    TBX__FRAME_START = 3,
    TBX__FRAME_ERROR = 4, /* the worker could not serve: fail_code is a
                             TBX_E* code (ENOTREG, EPROTO), payload a message */
    TBX__FRAME_OK_BULK = 5 /* the result, len bytes, is in the call's bulk
                              memfd, sealed; nothing follows on the pipe */
};

typedef struct tbx__frame_header {
    uint32_t magic;
    uint32_t kind;
    int32_t fail_code;
    uint32_t reserved;
    uint64_t len;
} tbx__frame_header;

/* 0 if hdr is a well-formed header whose payload fits in max_len bytes;
 * TBX_ETOOBIG if only its length is over; TBX_EPROTO otherwise. */
int tbx__frame_check(const tbx__frame_header *hdr, uint64_t max_len);

/* A request to a worker (spawn): this header, the function's name
 * (name_len bytes, no NUL), then args_len bytes of msgpack args. */
#define TBX__REQUEST_MAGIC 0x51584254u /* "TBXQ" */
#define TBX__MAX_NAME 255
#define TBX__MAX_ARGS ((uint64_t)1 << 32)
enum {
    TBX__REQ_RESET_SIGNALS = 1,
    TBX__REQ_SOFT_DEADLINE = 2,
    TBX__REQ_ALLOW_CORE = 4,
    TBX__REQ_BACKTRACE = 8, /* a backtrace pipe comes with the call */
    TBX__REQ_ARGS_BULK = 16 /* the args are not in the request but in a
                               sealed memfd sent with its first bytes
                               (SCM_RIGHTS, bulk.c) */
};

typedef struct tbx__request_header {
    uint32_t magic;
    uint32_t flags;
    uint32_t name_len;
    uint32_t reserved;
    uint64_t args_len;
    uint64_t deadline_ns;  /* absolute CLOCK_MONOTONIC (hard); 0: none */
    uint64_t timeout_ns;   /* soft deadlines: counted from START */
    uint64_t grace_ns;     /* SIGTERM -> SIGKILL, for the server's backstop */
    uint64_t max_result;
    uint64_t limit_memory; /* the child's resource limits; 0: inherited */
    uint32_t limit_cpu_s;
    uint32_t limit_files;
} tbx__request_header;

/* 0 if hdr is a well-formed request header within the limits above;
 * TBX_EPROTO otherwise. */
int tbx__request_check(const tbx__request_header *hdr);

/* The forkserver.  A client's connection (SOCK_SEQPACKET) carries one
 * message per call: a tbx__hello and, by SCM_RIGHTS, the call's fds.
 *   CALL: the server's end of the call's control socket and the write end of
 *         its result pipe.  The request (as for spawn) comes down the control
 *         socket to the server, which forks when it is whole.
 *         With flags, more fds follow: the write ends of the stdout and
 *         stderr pipes the child's fds 1 and 2 become (CAPTURE), and of the
 *         pipe it writes a backtrace to (BACKTRACE), then the call's bulk
 *         memfd (BULK: the server takes only a fresh, sealable memfd).
 *   WARM: the same as CALL, and the read end of a request socket: the server forks
 *         at once a child that waits for its request there, from the caller
 *         itself, whenever a call takes it (a warm child, see the header).
 * The control socket (SOCK_STREAM) carries tbx__control messages from the
 * server (LAUNCHED with a pidfd by SCM_RIGHTS, then EXITED; or ERROR), and
 * KILL messages to it.  The client closing its end means it is gone: the
 * server kills the child. */
#define TBX__HELLO_MAGIC 0x43584254u   /* "TBXC" */
#define TBX__CONTROL_MAGIC 0x4b584254u /* "TBXK" */

enum { TBX__HELLO_CALL = 1, TBX__HELLO_WARM = 2 };
/* CALL's flags (WARM's: BULK only).  BULK: the call's bulk memfd comes
 * last. */
enum { TBX__HELLO_CAPTURE = 1, TBX__HELLO_BACKTRACE = 2, TBX__HELLO_BULK = 4 };
#define TBX__HELLO_MAX_FDS 6 /* control, result, stdout, stderr, backtrace, bulk */

typedef struct tbx__hello {
    uint32_t magic;
    uint32_t kind;  /* TBX__HELLO_*; in the server's ready message: 0 or the
                       reason it will not serve */
    uint32_t flags; /* CALL: which fds follow control and result: stdout
                       and stderr (CAPTURE), then the backtrace's */
    uint32_t reserved;
} tbx__hello;

enum {
    TBX__CTL_LAUNCHED = 1, /* pid; a pidfd rides along */
    TBX__CTL_EXITED = 2,   /* wstatus: the child is reaped, its group gone */
    TBX__CTL_ERROR = 3,    /* code: nothing was launched */
    TBX__CTL_KILL = 4      /* client -> server: code = the signal */
};

typedef struct tbx__control {
    uint32_t magic;
    uint32_t kind;
    int32_t pid;
    int32_t code; /* wstatus, error code or signal */
} tbx__control;

/* ------------------------------------------------------ the shared server
 * A process that connects to a listening forkserver proves, and is proved,
 * knowledge of the shared key (auth.c) before its first call:
 *   server -> client  tbx__challenge   {magic, nonce_s}
 *   client -> server  tbx__response    {magic, proof(key, "client", nonce_s), nonce_c}
 *   server -> client  tbx__proof       {magic, proof(key, "server", nonce_c)}
 * Each is one SEQPACKET message; then the connection carries calls as the
 * creator's does. */
#define TBX__KEY_LEN 32
#define TBX__NONCE_LEN 32
#define TBX__PROOF_LEN 32
#define TBX__AUTH_MAGIC 0x41584254u /* "TBXA" */

typedef struct tbx__challenge {
    uint32_t magic;
    uint8_t nonce[TBX__NONCE_LEN];
} tbx__challenge;

typedef struct tbx__response {
    uint32_t magic;
    uint8_t proof[TBX__PROOF_LEN];
    uint8_t nonce[TBX__NONCE_LEN];
} tbx__response;

typedef struct tbx__proof {
    uint32_t magic;
    uint8_t proof[TBX__PROOF_LEN];
} tbx__proof;

/* The first message on a creator's connection: the key. */
typedef struct tbx__keymsg {
    uint32_t magic;
    uint8_t key[TBX__KEY_LEN];
} tbx__keymsg;

int tbx__random(void *buf, size_t len);
/* sha256.c: HMAC-SHA256 of msg under key (RFC 2104), and 1 if a and b hold
 * the same n bytes, in time that does not depend on where they differ. */
void tbx__hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                      uint8_t out[32]);
int tbx__equal_ct(const void *a, const void *b, size_t n);
void tbx__auth_prove(const uint8_t key[TBX__KEY_LEN], const char *role,
                     const uint8_t nonce[TBX__NONCE_LEN], uint8_t out[TBX__PROOF_LEN]);
/* 0 if proof is role's proof for nonce under key, compared in constant
 * time; TBX_EPROTO otherwise. */
int tbx__auth_check(const uint8_t key[TBX__KEY_LEN], const char *role,
                    const uint8_t nonce[TBX__NONCE_LEN], const uint8_t proof[TBX__PROOF_LEN]);
int tbx__key_parse(const char *hex, uint8_t key[TBX__KEY_LEN]);
void tbx__key_format(const uint8_t key[TBX__KEY_LEN], char hex[2 * TBX__KEY_LEN + 1]);

/* 0 if m is a well-formed control message of a kind the receiver accepts
 * (from_server: LAUNCHED, EXITED, ERROR; else KILL); TBX_EPROTO otherwise. */
int tbx__control_check(const tbx__control *m, int from_server);

/* SCM_RIGHTS.  send: one message with len bytes and nfds fds.  recv: up to
 * *nfds fds into fds (CLOEXEC); a message with more, or truncated control
 * data, closes every fd it brought and fails with -EBADMSG.  Both retry EINTR
 * and never raise SIGPIPE.  Return bytes, or -errno. */
ssize_t tbx__send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds,
                      int flags);
ssize_t tbx__sendv_fds(int sock, const struct iovec *iov, int iovcnt, const int *fds, int nfds,
                       int flags); /* the same, gathering iovcnt pieces */
ssize_t tbx__recv_fds(int sock, void *buf, size_t len, int *fds, int *nfds, int flags);

/* Grows *buf toward total bytes with what has arrived: doubles from 64 KiB,
 * never past total.  0 or -ENOMEM (*buf unchanged). */
#define TBX__READ_CHUNK ((size_t)64 << 10)
/* From this size a payload gets a mapping of its own, advised for huge
 * pages, and a 1 MiB pipe: page faults, not copies, cost most there. */
#define TBX__BIG_PAYLOAD ((size_t)1 << 20)
int tbx__grow_buffer(char **buf, size_t *cap, uint64_t total);
/* A mapped payload starts this far into its mapping, after the mapping's
 * size; tbx__payload_free frees either kind. */
#define TBX__MAP_HEADER 64
void tbx__payload_free(char *payload, char *map);

/* bulk.c: a big result crosses in a memfd instead of the pipe.  The parent
 * makes one per call (bulk_create) and the child, once its result has grown
 * past TBX__BIG_PAYLOAD, packs straight into it, seals it and sends only a
 * TBX__FRAME_OK_BULK header.  The parent maps the sealed pages: no copy
 * through the pipe, and none into a buffer of ours.
 *   create: a memfd (CLOEXEC, sealable), or -1 when max_result leaves no
 *           room for a big result or the kernel has no memfd.
 *   map:    checks that fd is sealed against writes, growing and shrinking
 *           and holds exactly len bytes, then maps them read-only after a
 *           page of our own (TBX__MAP_HEADER's role: tbx__payload_free
 *           frees it).  0, TBX_EPROTO (the child lied), or -errno. */
int tbx__bulk_create(uint64_t max_result);
int tbx__bulk_map(int fd, uint64_t len, char **payload, char **map);
/* 0 if fd is a sealable memfd with no seal yet, as bulk_create makes them
 * (the forkserver checks what a client sends); TBX_EPROTO otherwise. */
int tbx__bulk_check_fresh(int fd);
/* Args of TBX__BIG_PAYLOAD or more, for a worker or the server: a sealed
 * memfd holding them (CLOEXEC), or -1 (smaller, or no memfd: the request
 * carries them).  map_args: the args in such a memfd, mapped read-only and
 * faulted in as they are read (for munmap of len bytes), if it is sealed
 * and holds exactly len bytes; NULL otherwise. */
int tbx__bulk_args(const void *args, size_t len);
char *tbx__bulk_map_args(int fd, uint64_t len);

/* The forkserver's environment: its connection's fd, its limits
 * ("max_children:request_timeout_ms"), and shared objects to preload
 * (newline-separated). */
#define TBX__FS_VAR "TIMEBOX_FORKSERVER"
#define TBX__FS_LIMITS_VAR "TIMEBOX_FORKSERVER_LIMITS"
#define TBX__FS_PRELOAD_VAR "TIMEBOX_FORKSERVER_PRELOAD"
#define TBX__FS_LISTEN_VAR "TIMEBOX_FORKSERVER_LISTEN" /* path to listen on */
#define TBX__FS_ALLOW_VAR "TIMEBOX_FORKSERVER_ALLOW"   /* uids, comma-separated */

/* 0 if buf holds exactly one msgpack object, nested at most max_depth deep,
 * with no container count larger than the bytes that remain (so unpacking
 * allocates in proportion to the input).  TBX_EINVAL otherwise. */
int tbx__msgpack_check(const void *buf, size_t len, unsigned max_depth);

/* ------------------------------------------------------------- registry */
typedef struct tbx__hook {
    tbx_hook_fn *fn;      /* a child hook, or NULL */
    tbx_preload_fn *pre;  /* a preload hook, or NULL */
    void *arg;
} tbx__hook;

/* Runs every child hook; returns 0 or the first non-zero hook value.  Reads
 * the hook table without a lock: called in a child, which has one thread. */
int tbx__run_child_hooks(void);

/* ------------------------------------------------------------- deadlines
 * One timerfd per loop, shared by every call on it, armed at the earliest
 * deadline of a min-heap.  libuv's own timers tick in whole milliseconds;
 * this keeps a deadline's lateness near the kernel's floor. */
typedef struct tbx__timers tbx__timers;
typedef struct tbx__deadline tbx__deadline;
typedef void tbx__deadline_cb(tbx__deadline *d);

struct tbx__deadline {
    uint64_t when_ns;
    size_t index;          /* position in the heap; SIZE_MAX when not armed */
    tbx__deadline_cb *cb;
    tbx__timers *timers;   /* non-NULL while the deadline holds a reference */
};

void tbx__deadline_init(tbx__deadline *d, tbx__deadline_cb *cb);
/* Arms (or re-arms) d at when_ns on loop.  Returns 0 or -errno. */
int tbx__deadline_start(tbx__deadline *d, uv_loop_t *loop, uint64_t when_ns);
/* Disarms d and drops its reference to the loop's timer.  Idempotent. */
void tbx__deadline_stop(tbx__deadline *d);
/* Makes the private loop's timer now and keeps it until unpinned. */
int tbx__deadline_pin(uv_loop_t *loop);
/* Drops the private loop's pinned timer (the thread is ending). */
void tbx__deadline_unpin(uv_loop_t *loop);

/* ---------------------------------------------------------------- a call */
typedef struct tbx__call tbx__call;

/* The cap on children alive at once (slots.c). */
typedef struct tbx__waiter tbx__waiter;
struct tbx__waiter {
    tbx__waiter *next;
    void *cond;                /* pthread_cond_t * of a blocking caller */
    tbx__call *call;           /* an async call, woken by call->wake */
    int granted;
};
/* 1 if a cap is set (calls must take a slot). */
int tbx__slots_capped(void);
/* Blocking: waits for a slot until deadline_ns (0: no limit).  0, or
 * TBX_ETIMEDOUT with no slot taken. */
int tbx__slot_wait(uint64_t deadline_ns);
/* Async: 1 if a slot was free (taken); 0 if c now waits for call->wake. */
int tbx__slot_queue(tbx__call *c);
/* Async: takes c out of the queue; 1 if it had been granted a slot (which
 * it then holds), 0 if not. */
int tbx__slot_unqueue(tbx__call *c);
/* Gives back a slot (held: 1) and grants waiters what is free. */
void tbx__slot_release(int held);
typedef void tbx__done_cb(tbx__call *call);

/* What a launcher gives the engine: a running child, leading its own process
 * group (pgid == pid), and the parent's ends of its channels. */
/* A stream from the child: its stdout, its stderr, or its backtrace. */
enum { TBX__STDOUT, TBX__STDERR, TBX__BACKTRACE, TBX__NSTREAMS };
#define TBX__BACKTRACE_MAX ((size_t)64 << 10)
#define TBX__BACKTRACE_SIGNAL (SIGRTMAX - 3)
#define TBX__BACKTRACE_WAIT_NS 250000000ull
/* How long after SIGKILL a forkserver may take to report its child's end
 * before the call gives up on it. */
#define TBX__SERVER_SLACK_NS 1000000000ull

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
    int worker;    /* 1: a fresh program that must say START before fn */
    int warm;      /* 1: a warm child, taken from the pool */
} tbx__child;

/* The launcher interface: one per start method, each in its own file, each
 * a row of tbx__methods (methods.c), indexed by tbx_method.  The engine
 * (engine.c) names no method: whatever differs between them is here.
 *   accepts    TBX__ACCEPTS_*: what the method takes (a ctx pointer, an
 *              unregistered fn); the engine refuses the rest (EINVAL,
 *              ENOTREG) before anything is launched.
 *   resolve    optional: the launcher that really serves this call (a method
 *              chosen per call returns another row); NULL: itself.
 *   prepare    readies the args for the child: unpacked in the parent
 *              (tbx__engine_unpack_args) or as a request (tbx__request_build).
 *   launch     starts the child and fills *child, or returns -errno / TBX_E*
 *              with nothing left open or running.
 *   watch      opens the one handle that learns of the child's end (counted
 *              in open_handles, h_exit set) and returns it through *h; the
 *              launcher calls tbx__engine_child_ended when it knows.
 *   exited     1 if the child has exited, its end not yet handled (the
 *              deadline and the exit can be ready at the same wake-up).
 *   signal     sends sig to the child and its group.
 *   backtrace  asks the child for a backtrace (TBX__BACKTRACE_SIGNAL).
 *   abandon    the launch worked but watching it did not: the child must
 *              end now, with nothing of it left.
 *   ended      optional: runs once the call is over (its child reaped, its
 *              handles closed), just before the caller hears: work that must
 *              not compete with the call's own child for the CPU (replacing a
 *              warm child) goes there. */
enum { TBX__ACCEPTS_CTX = 1, TBX__ACCEPTS_UNREGISTERED = 2 };

typedef struct tbx__launcher tbx__launcher;
struct tbx__launcher {
    const char *name;
    unsigned accepts;
    uint64_t max_args;         /* the longest args it takes; 0: no limit */
    const tbx__launcher *(*resolve)(tbx__call *call);
    int (*prepare)(tbx__call *call);
    int (*launch)(tbx__call *call, tbx__child *child);
    int (*watch)(tbx__call *call, uv_handle_t **h);
    int (*exited)(tbx__call *call);
    void (*signal)(tbx__call *call, int sig);
    void (*backtrace)(tbx__call *call);
    void (*abandon)(tbx__call *call);
    void (*ended)(tbx__call *call);
};

extern const tbx__launcher tbx__launch_fork;
extern const tbx__launcher tbx__launch_spawn;
extern const tbx__launcher tbx__launch_forkserver;
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
void tbx__own_backtrace(tbx__call *call);
void tbx__own_abandon(tbx__call *call);

/* What the engine offers its launchers.
 * child_ended: the child has ended with wstatus (-1: unknown); the rest of
 *   the result is read and the call finishes.  trailing: a byte after the
 *   result frame makes the call TBX_EPROTO (the child is gone, so every byte
 *   it wrote is in the pipe).
 * unpack_args: the args unpacked in the parent (a fork child reads them in
 *   memory).  */
void tbx__engine_child_ended(tbx__call *call, int wstatus, int trailing);
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
    const char *name;          /* registered name (spawn) */
    int args_fd;               /* args of a worker's, when big: a sealed
                                  memfd sent with the request; else -1 */

    /* The request to a worker: header, name, args, written as the socket
     * takes them.  What did not fit at launch is copied to request_copy. */
    tbx__request_header request;
    size_t request_sent;
    char *request_copy;        /* the last request_copy_len bytes */
    size_t request_copy_len;
    uv_poll_t request_poll;

    /* The cap on children (slots.c): waiting for a slot, or holding one. */
    tbx__waiter waiter;
    uv_async_t wake;           /* an async call's slot came */
    unsigned queued : 1, has_slot : 1, h_wake : 1;

    /* opts.capture_output: stdout, stderr; opts.backtrace_on_timeout. */
    tbx__capture capture[TBX__NSTREAMS];
    unsigned backtrace_asked : 1, backtrace_pending : 1;

    /* forkserver: what arrives on the control socket. */
    uv_poll_t control_poll;
    tbx__control control;
    size_t control_got;
    int control_fd_in;         /* a pidfd that came with a partial message */

    /* The running child, who launched it, and its watchers. */
    const tbx__launcher *launcher;
    tbx__child child;
    uv_poll_t result_poll;
    uv_poll_t exit_poll;       /* on the pidfd */
    uv_timer_t exit_timer;     /* polls waitpid when there is no pidfd */
    uv_handle_t *exit_h;       /* the launcher's watch: one of these */
    tbx__deadline deadline;
    int open_handles;          /* closes still to come before done */

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
    unsigned server_gone : 1;
    unsigned h_result : 1;      /* result_poll is open */
    unsigned h_exit : 1;        /* the exit handle (exit_handle()) is open */
    int verdict;               /* first reason decided: 0, ETIMEDOUT, ... */
    int kill_signal;
    int wstatus;
    int sys_error;             /* a -errno met while watching */
    tbx_result result;         /* async: handed to the callback */
};

/* The close callback of every handle of a call's: the last one finalizes. */
void tbx__engine_close_cb(uv_handle_t *h);

/* request.c: builds the request for a fresh program (a launcher's prepare),
 * writes it down child.request_fd (0 or -errno), and ends the writing
 * (closes the fd, the poll, the copy). */
int tbx__request_build(tbx__call *call);
int tbx__request_start(tbx__call *call);
void tbx__request_end(tbx__call *call);

/* streams.c: the pipes for the child's stdout, stderr and backtrace. */
int tbx__streams_open(tbx__call *call);
void tbx__streams_close_child_ends(tbx__call *call);
int tbx__stream_read(tbx__capture *k); /* 1 if a NUL came */
void tbx__streams_give(tbx__call *call, tbx_result *r);

/* verdict.c: the status of a finished call, with its value or message. */
int tbx__verdict(tbx__call *call, tbx_result *r);

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
/* Async front door: like tbx__engine_run, but when the cap on children is
 * reached the call waits its turn (and may meet its deadline or a cancel
 * while it waits); done_cb then reports whatever becomes of it. */
int tbx__engine_run_queued(tbx__call *call);
/* Blocking front door, for a call that will not run (its deadline passed
 * while it waited for a slot): fills call->out, frees what it holds. */
void tbx__engine_refuse(tbx__call *call, int status, const char *message);

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
    int bulk_fd;               /* a memfd for a result of TBX__BIG_PAYLOAD
                                  or more; -1: the pipe only */
} tbx__child_spec;

/* Runs the call in this (child) process and _exits.  Never returns. */
__attribute__((noreturn)) void tbx__child_main(const tbx__child_spec *spec);

/* The worker side of spawn: if this process was started as a worker, serve
 * the request and _exit; otherwise return. */
void tbx__worker_maybe_serve(void);
/* Reads one request from req_fd and runs it, writing to res_fd; _exits.
 * signals_clean: the dispositions are already the defaults (a forkserver
 * child), so reset_signals has nothing left to do. */
__attribute__((noreturn)) void tbx__worker_serve(int req_fd, int res_fd, int backtrace_fd,
                                                 int bulk_fd, int signals_clean);
/* 1 if this process was started as a worker but never called tbx_init. */
int tbx__worker_unserved(void);

/* Reads one request of h.args_len args and name from fd (blocking), checks
 * and unpacks it.  Returns 0, or a TBX_E* / -errno code with *why set. */
typedef struct tbx__request {
    tbx__request_header h;
    char name[TBX__MAX_NAME + 1];
    char *args_buf;            /* malloc'd, or mapped (args_mapped) */
    int args_mapped;           /* args_buf maps a bulk memfd (REQ_ARGS_BULK) */
    msgpack_zone zone;
    msgpack_object args;
    tbx_fn *fn;
    int unpacked;              /* zone holds args: free destroys it */
} tbx__request;
/* Checks a complete request whose header, name and args_buf are filled in:
 * looks fn up and unpacks the args.  Returns 0 or TBX_ENOTREG / TBX_EPROTO /
 * -ENOMEM with a message in why. */
int tbx__request_resolve(tbx__request *rq, char *why, size_t why_len);
void tbx__request_free(tbx__request *rq);
/* The child spec that runs a resolved request. */
void tbx__request_spec(const tbx__request *rq, int result_fd, tbx__child_spec *spec);

/* What a forkserver process serves with: from its creator (spawned by
 * tbx_forkserver_start) or from timebox-forkserver's command line. */
#define TBX__MAX_ALLOW 16
typedef struct tbx__fs_config {
    int conn;                 /* the creator's connection; -1: none (daemon) */
    const char *listen_path;  /* NULL: serve the creator only */
    uint8_t key[TBX__KEY_LEN];
    unsigned max_children;    /* 0: the default */
    unsigned max_per_client;  /* 0: no limit beyond max_children */
    uint64_t request_timeout_ns; /* also the handshake's; 0: the default */
    uid_t allow[TBX__MAX_ALLOW]; /* besides the server's own uid */
    size_t nallow;
    const char *preload;      /* shared objects, newline-separated, or NULL */
    int ready_fd;             /* gets an int32 (0 or why not) once serving */
    int write_key;            /* write the key to "<listen_path>.key" */
    int verbose;              /* log each refused client to stderr */
} tbx__fs_config;

/* Becomes the forkserver: loads preloads, runs preload hooks, listens if
 * asked, reports ready (on conn or ready_fd), serves; never returns.  On
 * SIGTERM, or when conn closes, it kills its children, removes its socket
 * and exits 0. */
__attribute__((noreturn)) void tbx__forkserver_run(tbx__fs_config *cfg);

/* Creates a listening SOCK_SEQPACKET socket at path: its directory is made
 * with mode 0700 if missing and must otherwise belong to us and let no one
 * else in (shared: other uids are allowed in, so the directory may let them
 * search it, never write, and the socket is made 0666 after it is bound);
 * the socket is bound under umask 0177 (mode 0600 from birth) and a
 * stale socket of ours at path is replaced.  -ENAMETOOLONG when path does not
 * fit in sun_path (never truncated).  Returns the fd or -errno. */
int tbx__listen_unix(const char *path, int shared);
/* Connects to a shared forkserver at path and authenticates both ways.
 * Returns the connection or -errno / TBX_EPROTO (bad key either way). */
int tbx__connect_unix(const char *path, const uint8_t key[TBX__KEY_LEN], double timeout_s);
/* fs_client.c, for the forkserver launcher: hands a call's fds to the
 * server (starting or restarting it; 0 or -errno); takes a warm child into
 * *child (1) if one waits (else 0); tops the warm pool up. */
int tbx__fs_client_hand_over(uint32_t kind, uint32_t flags, const int *fds, int nfds);
int tbx__fs_client_take_warm(tbx__child *child);
void tbx__fs_client_warm_fill(void);
/* If this process was started as a forkserver, becomes it. */
void tbx__forkserver_maybe_serve(void);
/* A fork child: forgets the parent's forkserver connection. */
void tbx__forkserver_forget_parent(void);
/* Runs every TBX_PRELOAD hook; 0 or the first failure. */
int tbx__run_preload_hooks(void);

/* Forgets the timebox state a fork child must not share with its parent
 * that fork handlers keep for other forks (the forkserver connection).
 * Loops and deadline timers are forgotten in every fork child by their own
 * pthread_atfork handlers. */
void tbx__child_forget_parent(void);

/* The calling thread's private loop for blocking calls, made on first use;
 * NULL if it cannot be made. */
uv_loop_t *tbx__private_loop(void);
/* 1 if loop is the calling thread's private loop. */
int tbx__loop_is_private(const uv_loop_t *loop);


#endif /* TBX_INTERNAL_H */
