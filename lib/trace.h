/*
 * timebox's tracer: where every thread of another process is, taken from
 * outside with ptrace and unwound with elfutils' libdwfl, as eu-stack does.
 *
 * The process that owns a child (the caller for fork and spawn, the server
 * for its children) traces it; nothing runs in the traced process, so the
 * trace comes whatever it does: blocks every signal, is stopped, or is
 * deadlocked inside malloc.  libdw is loaded with dlopen on the first trace,
 * so a program that never traces does not pay for loading it (and neither do
 * its spawned children, which re-execute the program).
 *
 * trace.c holds the ptrace side (attach, stop, detach); trace_unwind.c the
 * libdwfl side (load, unwind, format).
 */
#ifndef TBX_TRACE_H
#define TBX_TRACE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A trace is at most this long; longer ones end with a line saying so. */
#define TBX__TRACE_MAX ((size_t)64 << 10)
/* A trace's budget by default.  Stopping the threads and taking their
 * stacks get it, and naming the frames (reading symbols and line tables
 * from files, after the threads run again) as much again: a trace takes at
 * most twice its budget. */
#define TBX__TRACE_BUDGET_NS ((uint64_t)200 * 1000 * 1000)
#define TBX__TRACE_MAX_THREADS 256
/* The files (programs, libraries) whose symbols and line tables are kept
 * from one trace to the next, at most (trace_cache.c). */
#define TBX__TRACE_CACHE_FILES 16
/* ... and their debug information's bytes, decompressed, at most (libc's,
 * from libc6-dbg, is about 12 MiB); more are dropped, least recently used
 * first, once no trace holds them. */
#define TBX__TRACE_CACHE_BYTES ((size_t)64 << 20)
#define TBX__TRACE_MAX_FRAMES 64

/* 1 if this build has the tracer and libdw could be loaded, else 0 (and
 * *why, if not NULL, says why, a static string).  Loads libdw on the first
 * call.  Thread-safe. */
int tbx__trace_available(const char **why);

/* Traces every thread of process pid, the thread fn_tid (the one running
 * fn, usually pid itself) marked and listed first.  The caller must be
 * allowed to ptrace pid (its parent as root, or named by the child with
 * tbx__trace_allow), and must not be tracing it already.  Holds the process
 * at most budget_ns and takes at most twice that in all (frames not named in
 * time are given by module and offset), whatever the process does, and
 * leaves it as it was
 * found, running or stopped (a thread in uninterruptible sleep is listed,
 * not traced).  Waits only for stops of pid's threads (never reaps pid).
 *
 * Returns 0 with *out a malloc'd, NUL-terminated text of at most
 * TBX__TRACE_MAX bytes, one line per frame:
 *     thread 1234 "name" (fn):
 *     #0  0x00007f3c2a1b2c3d pthread_mutex_lock+0x84
 *     #1  0x000055d0c0ffee12 stuck+0x1e (/src/app.c:42)
 * or -ENOSYS (no tracer in this build, or libdw missing), -EPERM (ptrace
 * refused: Yama, a container without it, another tracer), -ESRCH (pid is
 * gone), -ETIMEDOUT (no thread stopped within the budget), -ENOMEM. */
int tbx__trace(pid_t pid, pid_t fn_tid, uint64_t budget_ns, char **out);

/* How many times the traces of this process have read a file to name
 * frames (a program or a library opened, or its separate debug file looked
 * for) into the cache: a trace that meets only files read before adds
 * nothing.  For the tests. */
unsigned long tbx__trace_cache_reads(void);
/* The bytes the cache holds (debug information, decompressed), after
 * setting its bound to max_bytes unless 0.  For the tests. */
size_t tbx__trace_cache_bytes(size_t max_bytes);

/* trace_unwind.c, for trace.c.  A thread as the trace found it. */
typedef struct tbx__trace_thread {
    pid_t tid;
    int state;   /* 'T': stopped by us; 'D': in uninterruptible sleep, not
                    traced; 'X': did not stop in time */
    char name[16];
} tbx__trace_thread;
typedef struct tbx__trace_stacks tbx__trace_stacks;
/* While the threads are stopped: the return addresses of each thread in
 * state 'T' (threads in order, the first fn's), until deadline_ns.  NULL
 * only without memory. */
tbx__trace_stacks *tbx__trace_stacks_take(pid_t pid, const tbx__trace_thread *threads,
                                          size_t n, uint64_t deadline_ns);
/* Once they run again: the text, into out (cap bytes, always
 * NUL-terminated), frames named until deadline_ns, by module and offset
 * after it.  Returns the length. */
size_t tbx__trace_stacks_format(tbx__trace_stacks *ts, pid_t fn_tid, uint64_t deadline_ns,
                                char *out, size_t cap);
void tbx__trace_stacks_free(tbx__trace_stacks *ts);

#endif /* TBX_TRACE_H */
