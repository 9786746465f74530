/*
 * The wire: every format that crosses between timebox's processes (result
 * frames, requests, the forkserver's hello and control messages, big
 * payloads in memfds), with the checks a receiver makes on them.  Every byte
 * from another process is untrusted: lengths and counts are checked here
 * before anything is allocated.  Used on both sides of every channel.
 */
#ifndef TBX_WIRE_H
#define TBX_WIRE_H

#include "os.h"

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
    TBX__FRAME_CRASH = 6,  /* no payload: the child caught fail_code (a
                              fatal signal, opts.backtrace_on_crash) and
                              waits, to be traced, then sent it again */
    TBX__FRAME_OK_BULK = 5 /* the result, len bytes, is in the call's bulk
                              memfd, sealed; nothing follows on the pipe.
                              On a result socket the memfd comes with the
                              header's bytes, the only descriptor a result
                              socket may bring */
};

typedef struct tbx__frame_header {
    uint32_t magic;
    uint32_t kind;
    int32_t fail_code;
    uint32_t pool;  /* 0, or from a pooled process (TBX_POOL) the result
                       frame's TBX__POOL_* bits: the call is over there */
    uint64_t len;
} tbx__frame_header;

/* A pooled process's word on the call it just served, in its result frame:
 * DONE is always set (the call's descendants are dead, its state undone);
 * DRIFT: it no longer matches the fingerprint it took when it started (more
 * descriptors or threads, or a resident size grown past the bound) and
 * exits, to be replaced; SPENT: it served pool_max_calls calls and exits;
 * RETIRE: it exits for another reason (limits it cannot undo). */
enum {
    TBX__POOL_DONE = 1,
    TBX__POOL_DRIFT = 2,
    TBX__POOL_SPENT = 4,
    TBX__POOL_RETIRE = 8,
    TBX__POOL_MASK = 15
};

/* 0 if hdr is a well-formed header whose payload fits in max_len bytes;
 * TBX_ETOOBIG if only its length is over; TBX_EPROTO otherwise.  pooled:
 * it comes from a pooled process, whose result frames carry TBX__POOL_DONE
 * and may carry the other TBX__POOL_* bits (an ERROR frame may come
 * without: a pooled process refusing a malformed request exits after it);
 * no other frame has a pool word. */
int tbx__frame_check(const tbx__frame_header *hdr, uint64_t max_len, int pooled);
/* The encoders: a frame as iov (the header in *h, then len bytes at p);
 * an ERROR frame with code and msg, clipped to TBX__MAX_MESSAGE.  Return
 * how many pieces of iov to write (1 or 2). */
int tbx__frame_encode(tbx__frame_header *h, struct iovec iov[2], uint32_t kind, int32_t code,
                      const void *p, uint64_t len);
int tbx__frame_error(tbx__frame_header *h, struct iovec iov[2], int32_t code, const char *msg);

/* A request to a worker (spawn): this header, the function's name
 * (name_len bytes, no NUL), the call's label (label_len bytes, no NUL, at
 * most TBX_MAX_LABEL, none when 0), then args_len bytes of msgpack args. */
#define TBX__REQUEST_MAGIC 0x51584254u /* "TBXQ" */
#define TBX__MAX_NAME 255
#define TBX__MAX_ARGS ((uint64_t)1 << 32)
enum {
    TBX__REQ_RESET_SIGNALS = 1,
    TBX__REQ_SOFT_DEADLINE = 2,
    TBX__REQ_ALLOW_CORE = 4,
    TBX__REQ_BACKTRACE = 8, /* a backtrace pipe comes with the call */
    TBX__REQ_NO_CONTAIN = 32, /* opts.contain = 0: no cgroup of its own */
    TBX__REQ_CRASH_TRACE = 64, /* opts.backtrace_on_crash */
    TBX__REQ_CAPTURE = 128, /* to a pooled process: the write ends of the
                               call's stdout and stderr pipes come with its
                               first bytes (after the args' memfd, if any) */
    TBX__REQ_ARGS_BULK = 16 /* the args are not in the request but in a
                               sealed memfd sent with its first bytes
                               (SCM_RIGHTS, bulk.c) */
};

typedef struct tbx__request_header {
    uint32_t magic;
    uint32_t flags;
    uint32_t name_len;
    uint32_t label_len;
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
 *   POOL: control, result and request, as WARM (no flags): the child forked
 *         at once is a pooled process (forkserver/pool_serve.c) that serves
 *         request after request there, each result down the same pipe, until
 *         the client closes the request socket or it retires; the control
 *         socket says LAUNCHED once, and EXITED when it is gone.
 * The control socket (SOCK_STREAM) carries tbx__control messages from the
 * server (LAUNCHED with a pidfd by SCM_RIGHTS, then EXITED; or ERROR), and
 * KILL messages to it.  The client closing its end means it is gone: the
 * server kills the child. */
#define TBX__HELLO_MAGIC 0x43584254u   /* "TBXC" */
#define TBX__CONTROL_MAGIC 0x4b584254u /* "TBXK" */

enum { TBX__HELLO_CALL = 1, TBX__HELLO_WARM = 2, TBX__HELLO_POOL = 3 };
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
    uint32_t max_calls; /* POOL: calls before the process is replaced (0:
                           no limit); 0 for the other kinds */
} tbx__hello;

enum {
    TBX__CTL_LAUNCHED = 1, /* pid, code = its TBX_CONTAIN_*; a pidfd rides
                              along */
    TBX__CTL_EXITED = 2,   /* wstatus: the child is reaped, its group gone */
    TBX__CTL_ERROR = 3,    /* code: nothing was launched */
    TBX__CTL_KILL = 4,     /* client -> server: code = the signal */
    TBX__CTL_TRACE = 5,    /* client -> server: trace the child into the
                              backtrace pipe, from outside if it can, else
                              by its handler; code: 0, or the signal a
                              crashed child waits in (traced from outside
                              only, then sent that signal) */
    TBX__CTL_TRACED = 6    /* code: the TBX_BACKTRACE_* source of what the
                              server wrote (or asked for) */
};

typedef struct tbx__control {
    uint32_t magic;
    uint32_t kind;
    int32_t pid;
    int32_t code; /* wstatus, error code or signal */
    /* EXITED: what the reaped child cost (wait4's rusage); else 0. */
    uint64_t user_us, sys_us, max_rss_kb;
} tbx__control;


/* 0 if m is a well-formed control message of a kind the receiver accepts
 * (from_server: LAUNCHED, EXITED, ERROR, TRACED; else KILL, TRACE);
 * TBX_EPROTO otherwise. */
int tbx__control_check(const tbx__control *m, int from_server);

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

/* bulk.c: a big result crosses in a memfd instead of the pipe.  The child,
 * once its result has grown past TBX__BIG_PAYLOAD, packs straight into it,
 * seals it and sends only a TBX__FRAME_OK_BULK header.  A fork or spawn
 * child makes the memfd then (TBX__BULK_MAKE) and sends it with the header
 * over its result socket (SCM_RIGHTS): a call holds none until it needs
 * one.  A forkserver call's is made by the caller (bulk_create).  The parent maps the sealed pages: no copy
 * through the pipe, and none into a buffer of ours.
 *   create: a memfd (CLOEXEC, sealable), or -1 when max_result leaves no
 *           room for a big result or the kernel has no memfd.
 *   map:    checks that fd is sealed against writes, growing and shrinking
 *           and holds exactly len bytes, then maps them read-only after a
 *           page of our own (TBX__MAP_HEADER's role: tbx__payload_free
 *           frees it).  0, TBX_EPROTO (the child lied), or -errno. */
int tbx__bulk_create(uint64_t max_result);
/* A child's bulk_fd that says: make the memfd yourself when the result grows
 * past TBX__BIG_PAYLOAD, and send it with the OK_BULK header (SCM_RIGHTS)
 * down the result socket.  The parent holds no memfd while the call runs. */
#define TBX__BULK_MAKE (-2)
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

/* 0 if buf holds exactly one msgpack object, nested at most max_depth deep,
 * with no container count larger than the bytes that remain (so unpacking
 * allocates in proportion to the input).  TBX_EINVAL otherwise. */
int tbx__msgpack_check(const void *buf, size_t len, unsigned max_depth);

/* A backtrace: asked of the child with this signal, written by it down its
 * backtrace pipe, at most this long, ending with a NUL. */
#define TBX__BACKTRACE_MAX ((size_t)64 << 10)
#define TBX__BACKTRACE_SIGNAL (SIGRTMAX - 3)

#endif /* TBX_WIRE_H */
