/*
 * timebox's own diagnostics: escalations to SIGKILL, a forkserver that died
 * and was restarted, a child that someone else reaped.  They go to the
 * host's callback (tbx_set_log), or by default, warnings and errors only,
 * to stderr.  Rare events: a mutex guards the callback.
 */
#include "os.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static tbx_log_fn *log_fn;
static void *log_arg;

void tbx_set_log(tbx_log_fn *fn, void *arg)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_arg = arg;
    pthread_mutex_unlock(&log_lock);
}

void tbx__log(tbx_log_level level, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    tbx_log_fn *fn = log_fn;
    void *arg = log_arg;
    pthread_mutex_unlock(&log_lock);
    if (fn != NULL)
        fn(level, msg, arg);
    else if (level >= TBX_LOG_WARN)
        fprintf(stderr, "timebox: %s\n", msg);
}
