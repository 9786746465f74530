/*
 * The engine: one call's life, the same for every start method and for both
 * front doors (the blocking call runs it on a private loop).
 *
 * A launched child is watched three ways at once:
 *   - the result pipe, drained as data arrives so a large result never blocks
 *     the child against a full pipe, and bounded by max_result;
 *   - the child's exit, as its launcher learns it (a pidfd for our own
 *     children, no SIGCHLD handler, no pid reuse; the server's word for a
 *     forkserver's);
 *   - the deadline, on the loop's shared timerfd: SIGTERM to the child's
 *     process group, SIGKILL after the grace period, both sent by the
 *     launcher.
 * The call ends when the child has exited, never on EOF: a grandchild that
 * still holds the pipe cannot delay it.  Whatever differs between start
 * methods is in the launcher (engine.h); this file names none of them.
 */
#include "engine.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* ----------------------------------------------------------------- reading */

static void stop_reading(tbx__call *c)
{
    if (c->reading) {
        /* A launcher's handle (result_watch) is left started, so that it
         * costs no system call: an event on it is stopped when it comes. */
        if (c->h_result)
            uv_poll_stop(&c->result_poll);
        c->reading = 0;
    }
}

/* A frame is bad: nothing more is read from this child, which is killed. */
static void reject(tbx__call *c, int why)
{
    stop_reading(c);
    if (c->verdict == 0)
        c->verdict = why;
    tbx__engine_escalate(c, why, 1);
}

static void mark_done(tbx__call *c)
{
    if (c->t_done == 0)
        c->t_done = tbx__now_ns();
}

/* The result frame is whole: nothing after it is read (until the child has
 * exited: check_trailing). */
static void frame_complete(tbx__call *c)
{
    c->frame_done = 1;
    mark_done(c);
    stop_reading(c);
    if (c->launcher->frame_done != NULL)
        c->launcher->frame_done(c);
}

/* A big result goes straight into one mapping of its size: the size is
 * bounded by max_result, and pages the child never fills are never touched,
 * so a child that claims much and sends little costs address space, not
 * memory.  Falls back to the growing buffer if the mapping fails. */
static void map_payload(tbx__call *c)
{
    size_t len = (size_t)c->hdr.len + TBX__MAP_HEADER;
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return;
    (void)madvise(base, len, MADV_HUGEPAGE);
    memcpy(base, &len, sizeof len); /* for munmap, by tbx__payload_free */
    c->payload_map = base;
    c->payload = base + TBX__MAP_HEADER;
    c->payload_cap = (size_t)c->hdr.len;
}

/* The header is complete: check it and start on its payload. */
static void on_header(tbx__call *c)
{
    int rc = tbx__frame_check(&c->hdr, c->opts.max_result, c->child.pooled);
    if (rc == 0 && c->child.result_sock && c->child.bulk_fd >= 0 &&
        c->hdr.kind != TBX__FRAME_OK_BULK)
        rc = TBX_EPROTO; /* a memfd with any other frame */
    if (rc != 0) {
        reject(c, rc);
        return;
    }
    if (c->hdr.kind == TBX__FRAME_CRASH) {
        c->hdr_got = 0;
        if (!c->opts.backtrace_on_crash || c->crash_signal != 0)
            return reject(c, TBX_EPROTO);
        c->crash_signal = c->hdr.fail_code;
        return c->launcher->crashed(c, c->crash_signal);
    }
    if (c->hdr.kind == TBX__FRAME_START) {
        c->hdr_got = 0;
        if (c->started)
            return reject(c, TBX_EPROTO);
        c->started = 1;
        c->t_started = tbx__now_ns();
        if (!c->opts.hard_timeout && (rc = tbx__engine_arm_deadline(c, c->t_started)) != 0) {
            c->sys_error = rc;
            tbx__engine_escalate(c, rc, 1);
        }
        return;
    }
    if (c->hdr.kind == TBX__FRAME_OK_BULK) {
        /* Nothing follows on the pipe: the payload is the sealed memfd. */
        rc = tbx__bulk_map(c->child.bulk_fd, c->hdr.len, &c->payload, &c->payload_map);
        if (rc != 0) {
            if (rc != TBX_EPROTO)
                c->sys_error = rc;
            return reject(c, rc);
        }
        c->payload_cap = (size_t)c->hdr.len;
        c->payload_got = c->hdr.len;
        frame_complete(c);
        return;
    }
    if (c->hdr.kind == TBX__FRAME_OK && c->hdr.len >= TBX__BIG_PAYLOAD)
        map_payload(c);
    if (c->hdr.len == 0)
        frame_complete(c);
}

/* Reads from the result channel.  A socket may bring one descriptor, the
 * big result's memfd, with the header's bytes and nowhere else: any other,
 * a second one, or one cut short is the child's protocol error. */
static ssize_t read_result(tbx__call *c, void *buf, size_t len)
{
    if (!c->child.result_sock)
        return tbx__read(c->child.result_fd, buf, len);
    int fd = -1, nfds = 1;
    ssize_t n = tbx__recv_fds(c->child.result_fd, buf, len, &fd, &nfds, 0);
    if (n == -EBADMSG)
        return TBX_EPROTO;
    if (nfds == 1 && (c->child.bulk_fd >= 0 || c->hdr_got >= sizeof c->hdr)) {
        tbx__close(fd);
        return TBX_EPROTO;
    }
    if (nfds == 1)
        c->child.bulk_fd = fd;
    return n;
}

/* Reads what the pipe holds now.  Returns when it would block, at EOF, or
 * when the frame is complete (what follows it is never read). */
static void drain(tbx__call *c)
{
    while (c->reading) {
        ssize_t n;
        if (c->hdr_got < sizeof c->hdr) {
            n = read_result(c, (char *)&c->hdr + c->hdr_got, sizeof c->hdr - c->hdr_got);
        } else {
            /* The buffer grows with the data that arrived, never straight to
             * the length the child claims. */
            if (c->payload_got == c->payload_cap &&
                tbx__grow_buffer(&c->payload, &c->payload_cap, c->hdr.len) != 0) {
                c->sys_error = -ENOMEM;
                return reject(c, -ENOMEM);
            }
            n = read_result(c, c->payload + c->payload_got,
                            c->payload_cap - (size_t)c->payload_got);
        }
        if (n == -EAGAIN)
            return;
        if (n == TBX_EPROTO)
            return reject(c, TBX_EPROTO);
        if (n <= 0) { /* EOF, or an error on our own pipe */
            if (n < 0)
                c->sys_error = (int)n;
            stop_reading(c);
            return;
        }
        if (c->hdr_got < sizeof c->hdr) {
            c->hdr_got += (size_t)n;
            if (c->hdr_got == sizeof c->hdr)
                on_header(c);
        } else {
            c->payload_got += (uint64_t)n;
            if (c->payload_got == c->hdr.len)
                frame_complete(c);
        }
    }
}

void tbx__engine_result_cb(uv_poll_t *h, int status, int events)
{
    tbx__call *c = h->data;
    TBX__UNUSED(events);
    if (!c->reading) {
        uv_poll_stop(h); /* the launcher's (stop_reading) */
        return;
    }
    if (status < 0) {
        c->sys_error = status;
        stop_reading(c);
        return;
    }
    drain(c);
}

/* ------------------------------------------------------------------ streams */

/* The backtrace ends with a NUL: once it is in, the wait for it is over and
 * the deadline's escalation goes on. */
static void stream_cb(uv_poll_t *h, int status, int events)
{
    tbx__capture *k = h->data;
    tbx__call *c = k->call;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    if (tbx__stream_read(k) && k == &c->capture[TBX__BACKTRACE] && c->backtrace_pending) {
        c->backtrace_pending = 0;
        tbx__engine_escalate(c, TBX_ETIMEDOUT, 0);
    }
}

/* ------------------------------------------------------------------ exiting */

/* The child is gone and every byte it wrote is in the pipe: a byte after a
 * complete frame means the frame was not the whole story.  (A grandchild's
 * later writes are never read.) */
static void check_trailing(tbx__call *c)
{
    char b;
    if (c->frame_done && c->verdict == 0 && c->child.result_fd >= 0 &&
        tbx__read(c->child.result_fd, &b, 1) > 0)
        c->verdict = TBX_EPROTO;
}

void tbx__engine_child_ended(tbx__call *c, int wstatus, int trailing)
{
    c->reaped = 1;
    c->wstatus = wstatus;
    mark_done(c);
    /* Every byte the child wrote is in the pipe now. */
    drain(c);
    if (trailing)
        check_trailing(c);
    tbx__engine_finish(c);
}

static void finalize(tbx__call *c)
{
    tbx_result *r = c->out;
    /* The child is reaped: whatever it left in the call's cgroup is killed,
     * and the cgroup empty, before the caller hears. */
    tbx__cgroup_end(&c->cgroup);
    tbx__result_fill(c, r);
    r->containment = c->containment;
    tbx__engine_release_args(c);
    uint64_t end = tbx__now_ns();
    mark_done(c);
    if (c->t_launch == 0) /* never launched: it all went waiting */
        c->t_launch = c->t_done;
    if (c->t_started == 0)
        c->t_started = c->t_done;
    /* The next call waiting for a slot starts while this one reports. */
    if (c->has_slot) {
        c->has_slot = 0;
        tbx__slot_release_call(c);
    }
    r->queued_s = (double)(c->t_launch - c->start_ns) / 1e9;
    r->startup_s = (double)(c->t_started - c->t_launch) / 1e9;
    r->running_s = (double)(c->t_done - c->t_started) / 1e9;
    r->teardown_s = (double)(end - c->t_done) / 1e9;
    r->elapsed_s = (double)(end - c->start_ns) / 1e9;
    if (c->launcher != NULL && c->launcher->ended != NULL)
        c->launcher->ended(c);
    tbx__call_report(c, r);
    c->done_cb(c);
}

void tbx__engine_close_cb(uv_handle_t *h)
{
    tbx__call *c = h->data;
    if (--c->open_handles > 0)
        return;
    if (!c->abandoned)
        finalize(c);
    else if (c->abandoned_cb != NULL)
        c->abandoned_cb(c);
}

/* Closes every handle the call opened (each close_cb counts one down) and
 * every descriptor it holds. */
void tbx__engine_close_handles(tbx__call *c)
{
    if (c->h_wake)
        uv_close((uv_handle_t *)&c->wake, tbx__engine_close_cb);
    c->h_wake = 0;
    if (c->h_result)
        uv_close((uv_handle_t *)&c->result_poll, tbx__engine_close_cb);
    if (c->h_exit)
        uv_close(c->exit_h, tbx__engine_close_cb);
    c->h_result = c->h_exit = 0;
    tbx__cancel_close(c);
    for (int i = 0; i < TBX__NSTREAMS; i++) {
        tbx__capture *k = &c->capture[i];
        if (k->polling) {
            k->poll.data = c; /* close_cb counts the call's handles down */
            uv_close((uv_handle_t *)&k->poll, tbx__engine_close_cb);
        }
        k->polling = 0;
        tbx__close(k->fd);
        k->fd = -1;
    }
    tbx__streams_close_child_ends(c);
    tbx__request_end(c);
    if (c->launcher != NULL && c->launcher->release != NULL)
        c->launcher->release(c); /* what outlives the call, set to -1 */
    tbx__close(c->child.request_fd);
    c->child.request_fd = -1;
    tbx__close(c->child.result_fd);
    tbx__close(c->child.pidfd);
    tbx__close(c->child.control_fd);
    tbx__close(c->control_fd_in);
    tbx__close(c->child.bulk_fd);
    c->child.result_fd = c->child.pidfd = c->child.control_fd = c->control_fd_in = -1;
    c->child.bulk_fd = -1;
}

void tbx__engine_finish(tbx__call *c)
{
    c->finishing = 1;
    stop_reading(c);
    tbx__deadline_stop(&c->deadline);
    /* The child is gone: what it printed is all in the pipes. */
    for (int i = 0; i < TBX__NSTREAMS; i++)
        (void)tbx__stream_read(&c->capture[i]);
    tbx__engine_close_handles(c);
}

/* ------------------------------------------------------------------ launch */

/* A launch that did not happen: nothing of it is left. */
static void undo_launch(tbx__call *c)
{
    for (int i = 0; i < TBX__NSTREAMS; i++) {
        tbx__close(c->capture[i].fd);
        c->capture[i].fd = -1;
    }
    tbx__streams_close_child_ends(c);
    tbx__deadline_stop(&c->deadline);
    tbx__engine_release_args(c);
}

int tbx__engine_watch_fd(tbx__call *c, uv_poll_t *p, int fd, uv_handle_t **h)
{
    int rc = uv_poll_init(c->loop, p, fd);
    if (rc != 0)
        return rc;
    p->data = c;
    c->open_handles++;
    *h = (uv_handle_t *)p;
    return 0;
}

static int watch(tbx__call *c)
{
    int rc = 0;
    if (c->child.result_watch == NULL) {
        uv_handle_t *opened;
        rc = tbx__engine_watch_fd(c, &c->result_poll, c->child.result_fd, &opened);
        if (rc != 0)
            return rc;
        c->h_result = 1;
    }
    c->reading = 1;
    if (rc == 0) {
        uv_handle_t *h = NULL;
        rc = c->launcher->watch(c, &h);
        if (h != NULL) { /* opened: it must close, whatever came after */
            c->exit_h = h;
            c->h_exit = 1;
        }
    }
    for (int i = 0; rc == 0 && i < TBX__NSTREAMS; i++) {
        tbx__capture *k = &c->capture[i];
        if (k->fd < 0)
            continue;
        rc = uv_poll_init(c->loop, &k->poll, k->fd);
        if (rc == 0) {
            k->poll.data = k;
            k->polling = 1;
            c->open_handles++;
            rc = uv_poll_start(&k->poll, UV_READABLE, stream_cb);
        }
    }
    if (rc == 0 && c->h_result)
        rc = uv_poll_start(&c->result_poll, UV_READABLE, tbx__engine_result_cb);
    if (rc == 0)
        rc = tbx__request_start(c);
    if (rc == 0 && c->launcher->sent != NULL && tbx__request_whole(c))
        c->launcher->sent(c);
    if (rc == 0)
        rc = tbx__cancel_watch(c);
    return rc;
}

int tbx__engine_run(tbx__call *c)
{
    int rc;

    c->close_cb = tbx__engine_close_cb;

    c->start_ns = c->start_ns ? c->start_ns : tbx__now_ns();
    c->out->exit_code = -1;
    /* The deadline is armed before anything is launched, so that a timer
     * that cannot be made fails the call with nothing to undo.  A soft one
     * bounds the start-up meanwhile (by the same timeout, from the call, or
     * from the launch after a wait for a slot), and is armed again at START:
     * a child stuck before fn (in a hook, in main() before tbx_init) still
     * times out. */
    uint64_t from = c->opts.hard_timeout ? c->start_ns : tbx__now_ns();
    if ((rc = tbx__engine_arm_deadline(c, from)) != 0) {
        tbx__engine_release_args(c);
        return rc;
    }
    if (c->opts.hard_timeout && c->opts.timeout_s > 0)
        c->request.deadline_ns = c->deadline.when_ns;
    rc = tbx__streams_open(c);
    if (rc == 0) {
        c->t_launch = tbx__now_ns();
        rc = c->launcher->launch(c, &c->child);
    }
    tbx__streams_close_child_ends(c);
    if (rc != 0) {
        undo_launch(c);
        return rc;
    }
    /* The args are freed when the call ends, not now: freeing writes pages
     * the fork child still shares, and each write would copy one. */
    rc = watch(c);
    if (rc != 0) {
        tbx__engine_release_args(c);
        /* The child is ended here; a handle that was initialised still needs
         * its close callback, which then hands c to abandoned_cb instead of
         * done_cb: the caller hears only this return value. */
        tbx__deadline_stop(&c->deadline);
        c->launcher->abandon(c);
        tbx__cgroup_end(&c->cgroup);
        c->abandoned = c->open_handles > 0;
        tbx__engine_close_handles(c);
        return rc;
    }
    /* Without a START to come, fn starts about when the launch returns. */
    if (!c->child.worker && c->opts.hard_timeout)
        c->t_started = tbx__now_ns();
    return 0;
}
