/*
 * The request, as its receiver reads it: the one parser for the spawn worker
 * (blocking, in a fresh program) and the forkserver (on its loop, a little
 * at a time).  The request is bytes from another process: the header is
 * checked before anything is allocated, the buffer grows with what arrives,
 * not with what the header claims, and big args are taken only from a
 * sealed memfd of exactly their size.  Runs in the worker and in the server,
 * never between fork and exec.
 */
#include "child.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

void tbx__request_init(tbx__request *rq)
{
    memset(rq, 0, sizeof *rq);
    rq->args_fd = rq->out_fd = rq->err_fd = -1;
}

/* The args of a whole request: mapped from their memfd, if they came in one. */
static int take_bulk_args(tbx__request *rq, const char *who, char *why, size_t why_len)
{
    if (!(rq->h.flags & TBX__REQ_ARGS_BULK))
        return 1;
    rq->args_buf = tbx__bulk_map_args(rq->args_fd, rq->h.args_len);
    rq->args_mapped = rq->args_buf != NULL;
    tbx__close(rq->args_fd);
    rq->args_fd = -1;
    if (rq->args_buf != NULL)
        return 1;
    snprintf(why, why_len, "%s got an args memfd that is not sealed, or of another size", who);
    return TBX_EPROTO;
}

/* Receives into the header.  The request's descriptors (big args' memfd,
 * then a pooled call's stdout and stderr pipes) come with its first bytes,
 * and are kept in args_fd, out_fd and err_fd in the order they came, until
 * the header says which is which (take_fds).  A request read alone is read
 * on into spill in the same system call. */
static ssize_t recv_header(tbx__request *rq, int fd, int flags)
{
    int got[3] = {-1, -1, -1}, nfds = 3;
    struct iovec iov[2] = {{(char *)&rq->h + rq->got, (size_t)(sizeof rq->h - rq->got)},
                           {rq->spill, sizeof rq->spill}};
    ssize_t n = tbx__recvv_fds(fd, iov, rq->alone ? 2 : 1, got, &nfds, flags);
    if (nfds > 0 && rq->args_fd >= 0) { /* a second batch: malformed */
        for (int i = 0; i < nfds; i++)
            tbx__close(got[i]);
        return -ENOTUNIQ;
    }
    if (nfds > 0) {
        rq->args_fd = got[0];
        rq->out_fd = got[1];
        rq->err_fd = got[2];
    }
    return n;
}

/* The header is whole: the descriptors that came must be the ones it
 * announces, in that order; REQ_CAPTURE only to a reader that takes it. */
static int take_fds(tbx__request *rq)
{
    int bulk = (rq->h.flags & TBX__REQ_ARGS_BULK) != 0;
    int capture = (rq->h.flags & TBX__REQ_CAPTURE) != 0;
    int came = (rq->args_fd >= 0) + (rq->out_fd >= 0) + (rq->err_fd >= 0);
    if ((capture && !rq->capture_ok) || came != bulk + 2 * capture)
        return TBX_EPROTO;
    if (capture && !bulk) { /* the pipes came first */
        rq->err_fd = rq->out_fd;
        rq->out_fd = rq->args_fd;
        rq->args_fd = -1;
    }
    return 0;
}

/* Receives into the name (and the label after it) and the args. */
static ssize_t recv_body(tbx__request *rq, int fd, int flags, uint64_t at, uint64_t args_len)
{
    uint64_t name_len = (uint64_t)rq->h.name_len + rq->h.label_len;
    uint64_t args_at = at > name_len ? at - name_len : 0;
    struct iovec iov[2];
    int k = 0;
    if (at < name_len)
        iov[k++] = (struct iovec){rq->name + at, (size_t)(name_len - at)};
    if (args_len > 0)
        iov[k++] = (struct iovec){rq->args_buf + args_at, rq->cap - (size_t)args_at};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)k};
    ssize_t n;
    do
        n = recvmsg(fd, &msg, flags | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

/* The body's first bytes, read with the header into spill: they go where
 * recv_body would have put them.  More than the body is malformed. */
static int take_spill(tbx__request *rq, uint64_t spilled)
{
    uint64_t name_len = (uint64_t)rq->h.name_len + rq->h.label_len;
    uint64_t args_len = rq->h.flags & TBX__REQ_ARGS_BULK ? 0 : rq->h.args_len;
    if (spilled > name_len + args_len)
        return TBX_EPROTO;
    uint64_t to_name = spilled < name_len ? spilled : name_len;
    memcpy(rq->name, rq->spill, (size_t)to_name);
    if (spilled > to_name) { /* the args' first allocation holds the spill */
        if (tbx__grow_buffer(&rq->args_buf, &rq->cap, args_len) != 0)
            return -ENOMEM;
        memcpy(rq->args_buf, rq->spill + to_name, (size_t)(spilled - to_name));
    }
    rq->got += spilled;
    return 0;
}

int tbx__request_read(tbx__request *rq, int fd, int flags, const char *who, char *why,
                      size_t why_len)
{
    const uint64_t hsize = sizeof rq->h;
    for (;;) {
        ssize_t n;
        uint64_t spilled = 0;
        if (rq->got < hsize) {
            n = recv_header(rq, fd, flags);
            if (n > 0 && (uint64_t)n > hsize - rq->got) {
                spilled = (uint64_t)n - (hsize - rq->got);
                n -= (ssize_t)spilled;
            }
        } else {
            uint64_t at = rq->got - hsize, name_len = (uint64_t)rq->h.name_len + rq->h.label_len;
            uint64_t args_at = at > name_len ? at - name_len : 0;
            uint64_t args_len = rq->h.flags & TBX__REQ_ARGS_BULK ? 0 : rq->h.args_len;
            if (at == name_len + args_len)
                return take_bulk_args(rq, who, why, why_len);
            if (args_len > 0 && rq->cap == args_at &&
                tbx__grow_buffer(&rq->args_buf, &rq->cap, rq->h.args_len) != 0) {
                snprintf(why, why_len, "%s has no memory for the args", who);
                return -ENOMEM;
            }
            n = recv_body(rq, fd, flags, at, args_len);
        }
        if (n == -EAGAIN)
            return 0;
        if (n == -ENOTUNIQ)
            break;
        if (n <= 0)
            return -1;
        rq->got += (uint64_t)n;
        if (rq->got == hsize && (tbx__request_check(&rq->h) != 0 || take_fds(rq) != 0))
            break;
        int rc = spilled > 0 ? take_spill(rq, spilled) : 0;
        if (rc == -ENOMEM) {
            snprintf(why, why_len, "%s has no memory for the args", who);
            return rc;
        }
        if (rc != 0)
            break;
    }
    snprintf(why, why_len, "%s got a malformed request", who);
    return TBX_EPROTO;
}

int tbx__request_resolve(tbx__request *rq, char *why, size_t why_len)
{
    size_t off = 0;
    /* The label: printable text, or none (its bytes are another process's). */
    memcpy(rq->label, rq->name + rq->h.name_len, rq->h.label_len);
    rq->label[rq->h.label_len] = '\0';
    rq->name[rq->h.name_len] = '\0';
    for (uint32_t i = 0; i < rq->h.label_len; i++) {
        if ((unsigned char)rq->label[i] < 0x20 || rq->label[i] == 0x7f) {
            snprintf(why, why_len, "the call's label is not printable text");
            return TBX_EPROTO;
        }
    }
    rq->fn = tbx_lookup(rq->name);
    if (rq->fn == NULL) {
        snprintf(why, why_len, "function '%s' is not registered in the program serving the call",
                 rq->name);
        return TBX_ENOTREG;
    }
    if (tbx__msgpack_check(rq->args_buf, (size_t)rq->h.args_len, TBX__MAX_DEPTH) != 0) {
        snprintf(why, why_len, "the args are not one msgpack object");
        return TBX_EPROTO;
    }
    if (!msgpack_zone_init(&rq->zone, 1024)) {
        snprintf(why, why_len, "no memory to unpack the args");
        return -ENOMEM;
    }
    if (msgpack_unpack(rq->args_buf, (size_t)rq->h.args_len, &off, &rq->zone, &rq->args) !=
        MSGPACK_UNPACK_SUCCESS) {
        msgpack_zone_destroy(&rq->zone);
        snprintf(why, why_len, "the args could not be unpacked");
        return TBX_EPROTO;
    }
    rq->unpacked = 1;
    return 0;
}

void tbx__request_free(tbx__request *rq)
{
    tbx__close(rq->args_fd);
    tbx__close(rq->out_fd);
    tbx__close(rq->err_fd);
    rq->args_fd = rq->out_fd = rq->err_fd = -1;
    if (rq->unpacked)
        msgpack_zone_destroy(&rq->zone);
    rq->unpacked = 0;
    if (rq->args_mapped && rq->args_buf != NULL)
        (void)munmap(rq->args_buf, (size_t)rq->h.args_len);
    else
        free(rq->args_buf);
    rq->args_buf = NULL;
    rq->args_mapped = 0;
    rq->fn = NULL;
}

void tbx__request_spec(const tbx__request *rq, int result_fd, tbx__child_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->fn = rq->fn;
    spec->args = &rq->args;
    spec->result_fd = result_fd;
    spec->reset_signals = (rq->h.flags & TBX__REQ_RESET_SIGNALS) != 0;
    spec->soft_deadline = (rq->h.flags & TBX__REQ_SOFT_DEADLINE) != 0;
    /* The caller learns that fn is starting when it needs to: a soft
     * deadline starts then, and a backtrace may be asked for only once the
     * handler is in.  A hard deadline needs no word (one wake-up less). */
    spec->send_start = (rq->h.flags & (TBX__REQ_SOFT_DEADLINE | TBX__REQ_BACKTRACE)) != 0;
    spec->timeout_s = (double)rq->h.timeout_ns / 1e9;
    spec->deadline_ns = rq->h.deadline_ns;
    spec->max_result = (size_t)rq->h.max_result;
    spec->stdout_fd = spec->stderr_fd = -1; /* placed by whoever started us */
    spec->backtrace_fd = -1;
    spec->bulk_fd = -1;
    spec->cgroup_fd = -1; /* a worker is moved by its parent; a server child
                             joins in the server's steps */
    spec->limit_memory = rq->h.limit_memory;
    spec->limit_cpu_s = rq->h.limit_cpu_s;
    spec->limit_files = rq->h.limit_files;
    spec->allow_core = (rq->h.flags & TBX__REQ_ALLOW_CORE) != 0;
    spec->label = rq->h.label_len > 0 ? rq->label : NULL;
    spec->crash_trace = (rq->h.flags & TBX__REQ_CRASH_TRACE) != 0;
}
