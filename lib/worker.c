/*
 * The worker side of spawn: a fresh program that timebox started, reading its
 * one request from fd 3 and writing its result to fd 4.  The request comes
 * from our own parent, but it is still bytes from another process: every
 * length is checked before anything is allocated for it.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WORKER_VAR "TIMEBOX_WORKER"

static int read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = tbx__read(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

__attribute__((noreturn, format(printf, 3, 4)))
static void refuse(int res_fd, int code, const char *fmt, ...)
{
    char msg[TBX__MAX_MESSAGE + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n >= sizeof msg ? sizeof msg - 1 : (size_t)n;
    tbx__frame_header h = {TBX__FRAME_MAGIC, TBX__FRAME_ERROR, code, 0, len};
    if (tbx__write_all(res_fd, &h, sizeof h) == 0)
        (void)tbx__write_all(res_fd, msg, len);
    _exit(125);
}

void tbx__worker_serve(int req_fd, int res_fd)
{
    tbx__request_header h;
    char name[TBX__MAX_NAME + 1];
    msgpack_zone zone;
    msgpack_object args;
    size_t off = 0;

    if (read_full(req_fd, &h, sizeof h) != 0 || tbx__request_check(&h) != 0)
        refuse(res_fd, TBX_EPROTO, "the worker got a malformed request");
    char *buf = malloc(h.args_len > 0 ? (size_t)h.args_len : 1);
    if (buf == NULL)
        refuse(res_fd, -ENOMEM, "the worker has no memory for %llu bytes of args",
               (unsigned long long)h.args_len);
    if (read_full(req_fd, name, h.name_len) != 0 ||
        read_full(req_fd, buf, (size_t)h.args_len) != 0)
        refuse(res_fd, TBX_EPROTO, "the worker's request was cut short");
    tbx__close(req_fd);
    name[h.name_len] = '\0';
    tbx_fn *fn = tbx_lookup(name);
    if (fn == NULL)
        refuse(res_fd, TBX_ENOTREG, "function '%s' is not registered in the spawned program",
               name);
    if (tbx__msgpack_check(buf, (size_t)h.args_len, TBX__MAX_DEPTH) != 0 ||
        !msgpack_zone_init(&zone, 1024) ||
        msgpack_unpack(buf, (size_t)h.args_len, &off, &zone, &args) != MSGPACK_UNPACK_SUCCESS)
        refuse(res_fd, TBX_EPROTO, "the worker's args are not one msgpack object");

    tbx__child_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.fn = fn;
    spec.args = &args;
    spec.result_fd = res_fd;
    spec.reset_signals = (h.flags & TBX__REQ_RESET_SIGNALS) != 0;
    spec.soft_deadline = (h.flags & TBX__REQ_SOFT_DEADLINE) != 0;
    spec.send_start = 1;
    spec.timeout_s = (double)h.timeout_ns / 1e9;
    spec.deadline_ns = h.deadline_ns;
    spec.max_result = (size_t)h.max_result;
    spec.parent_pid = getppid();
    tbx__child_main(&spec);
}

static int unserved;
static pthread_once_t unserved_once = PTHREAD_ONCE_INIT;

static void unserved_init(void)
{
    unserved = getenv(WORKER_VAR) != NULL;
}

int tbx__worker_unserved(void)
{
    pthread_once(&unserved_once, unserved_init);
    return unserved;
}

void tbx__worker_maybe_serve(void)
{
    const char *v = getenv(WORKER_VAR);
    int req_fd, res_fd;
    char tail;
    if (v == NULL || sscanf(v, "%d,%d%c", &req_fd, &res_fd, &tail) != 2)
        return;
    /* Gone before fn runs: the function's own children are not workers. */
    unsetenv(WORKER_VAR);
    pthread_once(&unserved_once, unserved_init);
    tbx__worker_serve(req_fd, res_fd);
}
