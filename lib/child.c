/*
 * The child side of a call, for every start method.
 *
 * ======================== CHILD SIDE ========================
 * This code runs in a freshly forked child.  With the fork method it goes on
 * to run the user's function, by design, so the process as a whole is not
 * limited to async-signal-safe calls; but timebox's own part is: it takes no
 * lock and calls no malloc.  The arguments were unpacked by the parent; the
 * result is packed into a buffer on this stack, which grows with mmap and
 * mremap (system calls, not the allocator) when the result is large; past
 * TBX__BIG_PAYLOAD it goes on into the call's bulk memfd (bulk.c), which a
 * fork or spawn child makes itself at that moment.  A child
 * forked from a threaded caller therefore cannot deadlock on an allocator
 * lock inside timebox.  The child always ends with _exit.
 * =============================================================
 */
#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <execinfo.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#define RESULT_MAGIC 0x72786274u /* "tbxr" */
#define INLINE_RESULT 4096

/* What the running call knows about itself.  Zero in any process that is
 * not a timebox child. */
static struct {
    uint64_t deadline_ns; /* absolute; 0: none */
    int in_child;
    const char *label;    /* opts.label, or NULL */
} self;

typedef struct result_buf {
    uint32_t magic;
    int failed;
    int fail_code;
    int out_of_memory;
    int bulk_fd;          /* the call's memfd; -1: none; TBX__BULK_MAKE:
                             made here when needed, sent with the header */
    int bulk_own;         /* 1: bulk_fd was made here: it goes with the header */
    int in_bulk;          /* the result goes into bulk_fd: data stages it */
    size_t bulk_len;      /* bytes already written to bulk_fd */
    char *data;
    size_t len;           /* bytes packed (also counted past max) */
    size_t cap;
    size_t max;
    size_t msg_len;
    char msg[TBX__MAX_MESSAGE + 1];
    char inline_data[INLINE_RESULT];
} result_buf;

static int grow(result_buf *rb, size_t need)
{
    size_t cap = rb->cap;
    while (cap < need)
        cap = cap < ((size_t)1 << 62) ? 2 * cap : need;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    cap = (cap + page - 1) & ~(page - 1);
    void *p;
    if (rb->data == rb->inline_data) {
        p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED)
            memcpy(p, rb->data, rb->len);
    } else {
        p = mremap(rb->data, rb->cap, cap, MREMAP_MAYMOVE);
    }
    if (p == MAP_FAILED)
        return -1;
    if (cap >= TBX__BIG_PAYLOAD)
        (void)madvise(p, cap, MADV_HUGEPAGE); /* fewer faults to fill it */
    rb->data = p;
    rb->cap = cap;
    return 0;
}

static int pwrite_all(int fd, const char *p, size_t len, size_t off)
{
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
        off += (size_t)w;
    }
    return 0;
}

/* Into the bulk memfd by pwrite, not through a shared mapping: the kernel
 * fills whole new pages without zeroing them first or faulting them in one
 * by one.  Small pieces gather in data first; large ones go straight in. */
static int bulk_write(result_buf *rb, const char *buf, size_t len)
{
    size_t staged = rb->len - rb->bulk_len;
    if (staged + len > rb->cap) {
        if (pwrite_all(rb->bulk_fd, rb->data, staged, rb->bulk_len) != 0)
            return -1;
        rb->bulk_len += staged;
        staged = 0;
        if (len >= rb->cap) {
            if (pwrite_all(rb->bulk_fd, buf, len, rb->bulk_len) != 0)
                return -1;
            rb->bulk_len += len;
            rb->len += len;
            return 0;
        }
    }
    memcpy(rb->data + staged, buf, len);
    rb->len += len;
    return 0;
}

/* Whether a result past TBX__BIG_PAYLOAD may go to the bulk memfd: one
 * exists, and writing to it cannot meet a file size limit (SIGXFSZ). */
static int bulk_usable(const result_buf *rb)
{
    struct rlimit r;
    return (rb->bulk_fd >= 0 || rb->bulk_fd == TBX__BULK_MAKE) && getrlimit(RLIMIT_FSIZE, &r) == 0 &&
           (r.rlim_cur == RLIM_INFINITY || r.rlim_cur >= rb->max);
}

static int result_write(void *data, const char *buf, size_t len)
{
    result_buf *rb = data;
    if (len == 0 || rb->failed) /* msgpack hands over (NULL, 0) for empty strings */
        return 0;
    if (rb->len + len > rb->max || rb->out_of_memory) {
        /* Over max_result: stop storing but keep counting, so the header
         * tells the parent the size it refuses. */
        rb->len += len;
        return 0;
    }
    if (!rb->in_bulk && rb->len + len > TBX__BIG_PAYLOAD && rb->len + len > rb->cap &&
        bulk_usable(rb)) {
        if (rb->bulk_fd == TBX__BULK_MAKE) {
            /* None, or no memfd: the socket carries it all. */
            rb->bulk_fd = tbx__sys.memfd_create("timebox-result", MFD_CLOEXEC | MFD_ALLOW_SEALING);
            rb->bulk_own = rb->bulk_fd >= 0;
        }
        /* What is packed so far goes first; data stages the rest. */
        if (rb->bulk_fd >= 0 && pwrite_all(rb->bulk_fd, rb->data, rb->len, 0) == 0) {
            rb->in_bulk = 1;
            rb->bulk_len = rb->len;
        }
    }
    int rc = 0;
    if (rb->in_bulk)
        rc = bulk_write(rb, buf, len);
    else if (rb->len + len > rb->cap && grow(rb, rb->len + len) != 0)
        rc = -1;
    else {
        memcpy(rb->data + rb->len, buf, len);
        rb->len += len;
    }
    if (rc != 0)
        rb->out_of_memory = 1;
    return rc;
}

int tbx_fail(msgpack_packer *result, int code, const char *fmt, ...)
{
    result_buf *rb = result != NULL ? result->data : NULL;
    if (rb == NULL || !self.in_child || rb->magic != RESULT_MAGIC)
        return TBX_EFAILED;
    va_list ap;
    va_start(ap, fmt);
    int n = fmt != NULL ? vsnprintf(rb->msg, sizeof rb->msg, fmt, ap) : 0;
    va_end(ap);
    rb->msg_len = n < 0 ? 0 : (size_t)n >= sizeof rb->msg ? sizeof rb->msg - 1 : (size_t)n;
    rb->failed = 1;
    rb->fail_code = code;
    rb->len = 0;
    return TBX_EFAILED;
}

const char *tbx_label(void)
{
    return self.in_child ? self.label : NULL;
}

double tbx_remaining(void)
{
    if (!self.in_child || self.deadline_ns == 0)
        return HUGE_VAL;
    uint64_t now = tbx__now_ns();
    return now >= self.deadline_ns ? 0.0 : (double)(self.deadline_ns - now) / 1e9;
}

/* One frame, header and payload, in as few writes as the pipe allows.
 * pool: the header's pool word (TBX__POOL_*; 0 outside a pooled process). */
static int write_frame(int fd, uint32_t kind, int32_t code, uint32_t pool, const void *p,
                       size_t len)
{
    tbx__frame_header h;
    struct iovec iov[2];
    int n = tbx__frame_encode(&h, iov, kind, code, p, len);
    h.pool = pool;
    return tbx__writev_all(fd, iov, n) == 0 ? 0 : -1;
}

/* A result in the bulk memfd: the last of it written, the memfd sealed, and
 * only its header down the pipe.  A memfd that will not seal (something has
 * it mapped writable) is read back and goes down the pipe after all. */
static int send_bulk(int fd, result_buf *rb, uint32_t pool)
{
    size_t staged = rb->len - rb->bulk_len;
    if (pwrite_all(rb->bulk_fd, rb->data, staged, rb->bulk_len) != 0)
        return -1;
    if (fcntl(rb->bulk_fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) ==
        0) {
        tbx__frame_header h = {TBX__FRAME_MAGIC, TBX__FRAME_OK_BULK, 0, pool, rb->len};
        if (!rb->bulk_own)
            return tbx__write_all(fd, &h, sizeof h);
        /* The memfd rides on the header's bytes; once sent, it lives on in
         * the socket's queue even if this process ends at once. */
        return tbx__send_fds(fd, &h, sizeof h, &rb->bulk_fd, 1, 0) == (ssize_t)sizeof h ? 0 : -1;
    }
    void *p = mmap(NULL, rb->len, PROT_READ, MAP_SHARED, rb->bulk_fd, 0);
    if (p == MAP_FAILED)
        return -1;
    (void)fcntl(fd, F_SETPIPE_SZ, (int)TBX__BIG_PAYLOAD);
    return write_frame(fd, TBX__FRAME_OK, 0, pool, p, rb->len);
}


/* stdio buffers the function filled are flushed, unless another thread of
 * the parent held a stream's lock at the fork: then that lock is never
 * released here, and waiting on it would hang a call that otherwise worked. */
static void flush_stdio(void)
{
    FILE *streams[2] = {stdout, stderr};
    for (int i = 0; i < 2; i++) {
        /* Nothing buffered: touch nothing (no lock, no page copied). */
        if (__fpending(streams[i]) == 0)
            continue;
        if (ftrylockfile(streams[i]) == 0) {
            fflush_unlocked(streams[i]);
            funlockfile(streams[i]);
        }
    }
}




void tbx__child_main(const tbx__child_spec *spec)
{
    tbx__child_setup(spec);
    _exit(tbx__child_run(spec, 1, NULL, NULL) == 0 ? 0 : 126);
}

/* fn's result, or why there is none, in rb. */
static void run_fn(const tbx__child_spec *spec, result_buf *rb, int hooks)
{
    msgpack_packer pk;
    int rc = hooks ? tbx__run_child_hooks() : 0;
    if (rc != 0) {
        rb->msg_len = (size_t)snprintf(rb->msg, sizeof rb->msg, "a child hook failed with %d", rc);
        rb->failed = 1;
        rb->fail_code = rc;
        return;
    }
    if (spec->send_start && write_frame(spec->result_fd, TBX__FRAME_START, 0, 0, NULL, 0) != 0)
        _exit(126);
    msgpack_packer_init(&pk, rb, result_write);
    rc = spec->fn(spec->args, &pk, spec->ctx);
    if (rc != 0 && !rb->failed) {
        rb->msg_len = (size_t)snprintf(rb->msg, sizeof rb->msg,
                                       "the function returned %d without tbx_fail", rc);
        rb->failed = 1;
        rb->fail_code = rc;
    } else if (rb->out_of_memory && !rb->failed) {
        rb->msg_len = (size_t)snprintf(rb->msg, sizeof rb->msg,
                                       "out of memory packing a %zu-byte result", rb->len);
        rb->failed = 1;
        rb->fail_code = -ENOMEM;
    }
}

int tbx__child_run(const tbx__child_spec *spec, int hooks, tbx__child_end_fn *end, void *end_arg)
{
    result_buf rb;
    int rc;

    self.in_child = 1;
    self.label = spec->label;
    self.deadline_ns = spec->deadline_ns;
    if (spec->soft_deadline && spec->timeout_s > 0)
        self.deadline_ns = tbx__now_ns() + tbx__seconds_to_ns(spec->timeout_s);

    rb.magic = RESULT_MAGIC;
    rb.failed = rb.fail_code = rb.out_of_memory = 0;
    rb.bulk_fd = spec->bulk_fd;
    rb.bulk_own = 0;
    rb.in_bulk = 0;
    rb.bulk_len = 0;
    rb.data = rb.inline_data;
    rb.len = 0;
    rb.cap = sizeof rb.inline_data;
    rb.max = spec->max_result;
    rb.msg_len = 0;
    run_fn(spec, &rb, hooks);
    flush_stdio();
    uint32_t pool = end != NULL ? end(end_arg) : 0;
    if (rb.failed)
        rc = write_frame(spec->result_fd, TBX__FRAME_FAIL, rb.fail_code, pool, rb.msg, rb.msg_len);
    else if (rb.len > rb.max) { /* the header alone: the parent refuses it */
        tbx__frame_header h = {TBX__FRAME_MAGIC, TBX__FRAME_OK, 0, pool, rb.len};
        rc = tbx__write_all(spec->result_fd, &h, sizeof h);
    } else if (rb.in_bulk) {
        rc = send_bulk(spec->result_fd, &rb, pool);
    } else {
        /* A big result crosses in 1 MiB writes, not 64 KiB ones. */
        if (rb.len >= TBX__BIG_PAYLOAD)
            (void)fcntl(spec->result_fd, F_SETPIPE_SZ, (int)TBX__BIG_PAYLOAD);
        rc = write_frame(spec->result_fd, TBX__FRAME_OK, 0, pool, rb.data, rb.len);
    }
    if (rb.data != rb.inline_data)
        (void)munmap(rb.data, rb.cap);
    if (rb.bulk_own) /* a pooled process serves on: its memfd may not pile up */
        tbx__close(rb.bulk_fd);
    self.in_child = 0;
    self.deadline_ns = 0;
    return rc;
}
