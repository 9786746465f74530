/*
 * The worker side of spawn: a fresh program that timebox started, reading its
 * one request from fd 3 and writing its result to fd 4.  The request comes
 * from our own parent, but it is still bytes from another process: every
 * length is checked before anything is allocated for it.
 */
#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

int tbx__request_resolve(tbx__request *rq, char *why, size_t why_len)
{
    size_t off = 0;
    rq->name[rq->h.name_len] = '\0';
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
    spec->send_start = 1; /* the caller learns that fn is starting */
    spec->timeout_s = (double)rq->h.timeout_ns / 1e9;
    spec->deadline_ns = rq->h.deadline_ns;
    spec->max_result = (size_t)rq->h.max_result;
    spec->parent_pid = getppid();
    spec->stdout_fd = spec->stderr_fd = -1; /* placed by whoever started us */
    spec->backtrace_fd = -1;
    spec->bulk_fd = -1;
    spec->limit_memory = rq->h.limit_memory;
    spec->limit_cpu_s = rq->h.limit_cpu_s;
    spec->limit_files = rq->h.limit_files;
    spec->allow_core = (rq->h.flags & TBX__REQ_ALLOW_CORE) != 0;
}

/* Reads the request: a small one (the usual) in one read, into buf.  Big
 * args come as a sealed memfd with the header's bytes, and are mapped. */
static void read_request(int req_fd, int res_fd, tbx__request *rq)
{
    char buf[sizeof rq->h + TBX__MAX_NAME + 4096];
    size_t got = 0;
    int args_fd = -1;
    while (got < sizeof rq->h) {
        int fd = -1, nfds = 1;
        ssize_t n = tbx__recv_fds(req_fd, buf + got, sizeof buf - got, &fd, &nfds, 0);
        if (n <= 0 || (nfds > 0 && args_fd >= 0))
            refuse(res_fd, TBX_EPROTO, "the worker's request was cut short or malformed");
        if (nfds > 0)
            args_fd = fd;
        got += (size_t)n;
    }
    memcpy(&rq->h, buf, sizeof rq->h);
    int bulk = (rq->h.flags & TBX__REQ_ARGS_BULK) != 0;
    if (tbx__request_check(&rq->h) != 0 || bulk != (args_fd >= 0))
        refuse(res_fd, TBX_EPROTO, "the worker got a malformed request");
    if (bulk) {
        rq->args_buf = tbx__bulk_map_args(args_fd, rq->h.args_len);
        rq->args_mapped = 1;
        tbx__close(args_fd);
        if (rq->args_buf == NULL)
            refuse(res_fd, TBX_EPROTO, "the worker's args memfd is not sealed, or not %llu bytes",
                   (unsigned long long)rq->h.args_len);
    } else {
        rq->args_buf = malloc((size_t)rq->h.args_len);
    }
    if (rq->args_buf == NULL)
        refuse(res_fd, -ENOMEM, "the worker has no memory for %llu bytes of args",
               (unsigned long long)rq->h.args_len);
    /* What came with the header: the name, then the start of the args. */
    size_t name_len = rq->h.name_len, args_len = bulk ? 0 : (size_t)rq->h.args_len;
    size_t more = got - sizeof rq->h;
    size_t in_name = more < name_len ? more : name_len;
    size_t in_args = more - in_name < args_len ? more - in_name : args_len;
    memcpy(rq->name, buf + sizeof rq->h, in_name);
    memcpy(rq->args_buf, buf + sizeof rq->h + in_name, in_args);
    if (read_full(req_fd, rq->name + in_name, name_len - in_name) != 0 ||
        read_full(req_fd, rq->args_buf + in_args, args_len - in_args) != 0)
        refuse(res_fd, TBX_EPROTO, "the worker's request was cut short");
}

void tbx__worker_serve(int req_fd, int res_fd, int backtrace_fd, int bulk_fd, int signals_clean)
{
    tbx__request rq;
    tbx__child_spec spec;
    char why[TBX__MAX_MESSAGE + 1];

    memset(&rq, 0, sizeof rq);
    read_request(req_fd, res_fd, &rq);
    tbx__close(req_fd);
    int rc = tbx__request_resolve(&rq, why, sizeof why);
    if (rc != 0)
        refuse(res_fd, rc, "%s", why);
    tbx__request_spec(&rq, res_fd, &spec);
    if (signals_clean)
        spec.reset_signals = 0; /* the forkserver already put them back */
    if (rq.h.flags & TBX__REQ_BACKTRACE)
        spec.backtrace_fd = backtrace_fd;
    spec.bulk_fd = bulk_fd;
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
    int req_fd, res_fd, backtrace_fd, bulk_fd;
    char tail;
    /* request,result,backtrace,bulk: fds, -1 for one that did not come */
    if (v == NULL ||
        sscanf(v, "%d,%d,%d,%d%c", &req_fd, &res_fd, &backtrace_fd, &bulk_fd, &tail) != 4)
        return;
    /* Gone before fn runs: the function's own children are not workers. */
    unsetenv(WORKER_VAR);
    pthread_once(&unserved_once, unserved_init);
    /* Inherited across our exec on purpose, but not across fn's: a program
     * fn runs gets none of them. */
    int fds[4] = {req_fd, res_fd, backtrace_fd, bulk_fd};
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0)
            (void)fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    tbx__worker_serve(req_fd, res_fd, backtrace_fd, bulk_fd, 0);
}
