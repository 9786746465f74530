/*
 * The streams a child may send besides its result: its stdout and stderr
 * (opts.capture_output) and its backtrace (opts.backtrace_on_timeout), each
 * a pipe the engine drains as it fills, kept up to a limit.
 */
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Makes the pipes for the child's stdout and stderr, before the launch. */
int tbx__streams_open(tbx__call *c)
{
    for (int i = 0; i < TBX__NSTREAMS; i++) {
        c->capture[i].fd = c->capture[i].child_fd = -1;
        c->capture[i].call = c;
    }
    c->capture[TBX__STDOUT].limit = c->capture[TBX__STDERR].limit = c->opts.capture_output;
    c->capture[TBX__BACKTRACE].limit = TBX__BACKTRACE_MAX;
    for (int i = 0; i < TBX__NSTREAMS; i++) {
        int p[2];
        if (c->capture[i].limit == 0 ||
            (i == TBX__BACKTRACE && !c->opts.backtrace_on_timeout && !c->opts.backtrace_on_crash))
            continue;
        int rc = tbx__pipe(p, 0);
        if (rc != 0)
            return rc; /* the caller closes what was made */
        c->capture[i].fd = p[0];
        c->capture[i].child_fd = p[1];
    }
    return 0;
}

/* The child's ends: the child has its own once launched. */
void tbx__streams_close_child_ends(tbx__call *c)
{
    for (int i = 0; i < TBX__NSTREAMS; i++) {
        tbx__close(c->capture[i].child_fd);
        c->capture[i].child_fd = -1;
    }
}

/* Reads what the stream holds now: kept up to the limit, the rest read and
 * dropped (so the child never blocks on a full pipe), and counted as
 * truncated.  Stops at EOF, or when it would block.  Returns 1 if a NUL
 * came (the end of a backtrace), else 0. */
int tbx__stream_read(tbx__capture *k)
{
    int nul = 0;
    size_t limit = k->limit;
    char scratch[4096];
    while (k->fd >= 0) {
        char *dst = scratch;
        size_t room = sizeof scratch;
        if (k->len < limit) {
            if (k->len == k->cap) {
                size_t cap = k->cap ? 2 * k->cap : 4096;
                cap = cap > limit ? limit : cap;
                char *p = realloc(k->buf, cap + 1); /* + the NUL */
                if (p != NULL) {
                    k->buf = p;
                    k->cap = cap;
                }
            }
            if (k->len < k->cap) {
                dst = k->buf + k->len;
                room = k->cap - k->len;
            }
        }
        ssize_t n = tbx__read(k->fd, dst, room);
        if (n == -EAGAIN)
            return nul;
        if (n <= 0) {
            if (k->polling)
                uv_poll_stop(&k->poll);
            return nul;
        }
        if (dst == scratch) {
            k->truncated = 1;
        } else {
            k->len += (size_t)n;
            nul |= memchr(dst, 0, (size_t)n) != NULL;
            tbx_opts *o = &k->call->opts;
            if (o->on_output != NULL && k != &k->call->capture[TBX__BACKTRACE])
                o->on_output(o->on_output_arg, k == &k->call->capture[TBX__STDOUT] ? 1 : 2, dst,
                             (size_t)n);
        }
    }
    return nul;
}

/* The result takes the streams: NUL-terminated, owned by it. */
void tbx__streams_give(tbx__call *c, tbx_result *r)
{
    tbx__capture *bt = &c->capture[TBX__BACKTRACE];
    if (bt->buf != NULL && bt->len > 0) {
        bt->buf[bt->len] = '\0'; /* its own NUL ends it already, or this */
        r->backtrace = bt->buf;
        r->priv_[TBX__OWN_BACKTRACE] = bt->buf;
        bt->buf = NULL;
    }
    if (c->opts.capture_output == 0)
        return;
    for (int i = 0; i < 2; i++) {
        tbx__capture *k = &c->capture[i];
        const char *data = "";
        if (k->buf != NULL) {
            k->buf[k->len] = '\0';
            data = k->buf;
            r->priv_[TBX__OWN_STDOUT + i] = k->buf;
            k->buf = NULL;
        }
        if (i == 0) {
            r->stdout_data = data;
            r->stdout_len = k->len;
            r->stdout_truncated = k->truncated;
        } else {
            r->stderr_data = data;
            r->stderr_len = k->len;
            r->stderr_truncated = k->truncated;
        }
    }
}
