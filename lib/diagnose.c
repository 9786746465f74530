/*
 * What a call tells besides its result, in the caller's process: where its
 * child was at the deadline (a trace taken from outside, trace.h), what it
 * cost (the reaped child's rusage), its label on every log line about it,
 * and the observer that hears of every finished call.
 */
#include "engine.h"
#include "trace.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static pthread_mutex_t observer_lock = PTHREAD_MUTEX_INITIALIZER;
static tbx_observer_fn *observer_fn;
static void *observer_arg;

void tbx_set_observer(tbx_observer_fn *fn, void *arg)
{
    pthread_mutex_lock(&observer_lock);
    observer_fn = fn;
    observer_arg = arg;
    pthread_mutex_unlock(&observer_lock);
}

int tbx__label_take(tbx__call *c)
{
    const char *label = c->opts.label;
    if (label == NULL)
        return 0;
    size_t n = strnlen(label, TBX_MAX_LABEL + 1);
    if (n > TBX_MAX_LABEL)
        return TBX_EINVAL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)label[i] < 0x20 || label[i] == 0x7f)
            return TBX_EINVAL;
    memcpy(c->label, label, n + 1);
    c->opts.label = c->label;
    return 0;
}

void tbx__call_log(const tbx__call *c, tbx_log_level level, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->opts.label != NULL)
        tbx__log(level, "%s [%s]", msg, c->opts.label);
    else
        tbx__log(level, "%s", msg);
}

int tbx__call_trace(tbx__call *c, pid_t pid)
{
    char *text = NULL;
    int rc = tbx__trace(pid, pid, TBX__TRACE_BUDGET_NS, &text);
    if (rc != 0) {
        const char *why = strerror(-rc);
        if (rc == -ENOSYS)
            (void)tbx__trace_available(&why);
        tbx__call_log(c, TBX_LOG_INFO, "no trace of child %d from outside (%s): asking it",
                      (int)pid, why);
        return rc;
    }
    /* The trace takes the place of what the child's handler would write. */
    tbx__capture *bt = &c->capture[TBX__BACKTRACE];
    free(bt->buf);
    bt->buf = text;
    bt->len = strlen(text);
    bt->cap = bt->len;
    c->backtrace_source = TBX_BACKTRACE_OUTSIDE;
    return 0;
}

/* TODO(containment): a call with a cgroup of its own should take its cost
 * from the cgroup's cpu.stat and memory.peak instead, which count the
 * descendants the child did not wait for. */
void tbx__call_cost(tbx__call *c, const struct rusage *ru)
{
    c->cost_user_s = (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6;
    c->cost_sys_s = (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6;
    c->cost_rss_kb = ru->ru_maxrss;
    c->cost_known = 1;
}

void tbx__call_report(tbx__call *c, tbx_result *r)
{
    r->backtrace_source = r->backtrace != NULL ? c->backtrace_source : TBX_BACKTRACE_NONE;
    if (c->cost_known) {
        r->cpu_user_s = c->cost_user_s;
        r->cpu_sys_s = c->cost_sys_s;
        r->max_rss_kb = c->cost_rss_kb;
        r->cost_known = 1;
    }
    pthread_mutex_lock(&observer_lock);
    tbx_observer_fn *fn = observer_fn;
    void *arg = observer_arg;
    pthread_mutex_unlock(&observer_lock);
    if (fn != NULL)
        fn(arg, c->opts.method, c->opts.label, r);
}
