/*
 * timebox_example: a PostgreSQL extension whose C function may hang or
 * crash without harm to the server.
 *
 *   timebox_example_call(fn text, arg bigint, timeout_ms integer DEFAULT 1000,
 *                        method text DEFAULT 'fork') RETURNS bigint
 *
 * runs one of the jobs of jobs.c in a child process under a deadline.  A job
 * that crashes kills its child, not the backend, so the postmaster never
 * enters crash recovery; a job that hangs is killed at its deadline, or as
 * soon as statement_timeout, pg_cancel_backend() or pg_terminate_backend()
 * asks, through opts.cancel_fd (see "Interrupts" below).  README.md in this
 * directory says which error each outcome raises.
 *
 * The fork method forks the backend itself.  That is safe here because the
 * child runs only the job and leaves with _exit: it never touches shared
 * memory, locks or the client socket, no atexit or on_proc_exit callback
 * runs in it, and timebox resets every signal handler in it to the default
 * before the job runs (opts.reset_signals), so a signal meant for it never
 * reaches PostgreSQL's handlers.  The other methods never copy the backend:
 * they run timebox-worker, which preloads timebox_example_jobs.so.
 */
#define _GNU_SOURCE /* strsignal, before any system header */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include <timebox.h>

#include "jobs.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(timebox_example_call);
PG_FUNCTION_INFO_V1(timebox_example_direct);

void _PG_init(void);

static char *socket_setting;  /* timebox_example.socket */
static char *worker_setting;  /* timebox_example.worker */
static int grace_ms_setting;  /* timebox_example.grace_ms */
static char jobs_path[MAXPGPATH];

void _PG_init(void)
{
    DefineCustomStringVariable("timebox_example.socket",
                               "Socket of the timebox-forkserver daemon that method 'shared' uses.",
                               "Its key is read from the file <socket>.key.", &socket_setting,
                               "", PGC_SUSET, 0, NULL, NULL, NULL);
    DefineCustomStringVariable("timebox_example.worker",
                               "The timebox-worker program that methods 'spawn' and "
                               "'forkserver' run.",
                               NULL, &worker_setting, TIMEBOX_EXAMPLE_WORKER, PGC_SUSET, 0,
                               NULL, NULL, NULL);
    DefineCustomIntVariable("timebox_example.grace_ms",
                            "Milliseconds between SIGTERM and SIGKILL for a child that must end.",
                            NULL, &grace_ms_setting, 200, 0, 60000, PGC_USERSET, GUC_UNIT_MS,
                            NULL, NULL, NULL);
    MarkGUCPrefixReserved("timebox_example");
    snprintf(jobs_path, sizeof jobs_path, "%s/timebox_example_jobs.so", pkglib_path);
}

/* ------------------------------------------------------------ the methods
 *
 * The forkserver slot of a process holds one server at a time: this
 * backend's own ('forkserver', started on first use) or the shared daemon
 * ('shared', attached on first use).  Switching between the two drops the
 * one held, so a session that alternates pays a server start each time. */
typedef enum { SERVER_NONE, SERVER_PRIVATE, SERVER_SHARED } server_kind;

static server_kind server_held = SERVER_NONE;
static char server_socket[MAXPGPATH];

static void use_private_server(void)
{
    if (server_held == SERVER_PRIVATE && tbx_forkserver_pid() > 0)
        return;
    tbx_forkserver_stop(); /* a shared one is only let go, never stopped */
    server_held = SERVER_NONE;
    const char *preload[] = {jobs_path, NULL};
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.executable = worker_setting;
    fo.preload = preload;
    int rc = tbx_forkserver_start(&fo);
    if (rc != 0)
        ereport(ERROR, (errcode(ERRCODE_SYSTEM_ERROR),
                        errmsg("timebox_example: could not start a forkserver (%s): %s",
                               worker_setting, tbx_strerror(rc))));
    server_held = SERVER_PRIVATE;
}

static void use_shared_server(void)
{
    if (socket_setting == NULL || socket_setting[0] == '\0')
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("timebox_example: method 'shared' needs timebox_example.socket")));
    if (server_held == SERVER_SHARED && strcmp(server_socket, socket_setting) == 0)
        return;
    tbx_forkserver_stop();
    server_held = SERVER_NONE;
    int rc = tbx_forkserver_attach(socket_setting, NULL, 0);
    if (rc != 0)
        ereport(ERROR, (errcode(ERRCODE_SYSTEM_ERROR),
                        errmsg("timebox_example: could not attach to the forkserver at %s: %s",
                               socket_setting, tbx_strerror(rc))));
    strlcpy(server_socket, socket_setting, sizeof server_socket);
    server_held = SERVER_SHARED;
}

typedef struct method_row {
    const char *name;
    tbx_method method;
    void (*server)(void); /* makes the server ready; NULL: none needed */
} method_row;

static const method_row methods[] = {
    {"fork", TBX_FORK, NULL},
    {"forkserver", TBX_FORKSERVER, use_private_server},
    {"spawn", TBX_SPAWN, NULL},
    {"shared", TBX_FORKSERVER, use_shared_server},
    /* 'pool' (TBX_POOL, issue 14) is one row here once the library has it:
     * {"pool", TBX_POOL, use_private_server}. */
};

static const method_row *find_method(const char *name)
{
    for (size_t i = 0; i < lengthof(methods); i++)
        if (strcmp(methods[i].name, name) == 0)
            return &methods[i];
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("timebox_example: unknown method \"%s\"", name),
                    errhint("Use 'fork', 'forkserver', 'spawn' or 'shared'.")));
    return NULL; /* not reached */
}

static const char *const jobs[] = {"double", "sleep", "crash", "spin"};

static void check_job(const char *fn)
{
    for (size_t i = 0; i < lengthof(jobs); i++)
        if (strcmp(jobs[i], fn) == 0)
            return;
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("timebox_example: unknown fn \"%s\"", fn),
                    errhint("Use 'double', 'sleep', 'crash' or 'spin'.")));
}

/* -------------------------------------------------------------- Interrupts
 *
 * PostgreSQL's handlers for SIGINT (pg_cancel_backend, and statement_timeout,
 * whose SIGALRM handler sends this backend SIGINT), SIGTERM
 * (pg_terminate_backend, shutdown) and SIGALRM only set flags that
 * CHECK_FOR_INTERRUPTS() acts on later, and a blocking tbx_call never
 * checks them.  For the call's duration each handler is wrapped: the wrapper
 * runs PostgreSQL's handler, then, if that handler asked for a cancel or for
 * the backend's end, writes to an eventfd that the call has as its
 * cancel_fd.  timebox then kills the child as at a deadline and returns
 * TBX_ECANCELED, and CHECK_FOR_INTERRUPTS() raises PostgreSQL's own error
 * ("canceling statement due to statement timeout", ...). */
static const int wrapped_signals[] = {SIGINT, SIGTERM, SIGALRM};
#define NWRAPPED ((int)lengthof(wrapped_signals))

static struct sigaction original[NWRAPPED];
static int cancel_efd = -1;

static void chain_handler(int sig, siginfo_t *info, void *uc)
{
    int saved_errno = errno;
    for (int i = 0; i < NWRAPPED; i++) {
        if (wrapped_signals[i] != sig)
            continue;
        if (original[i].sa_flags & SA_SIGINFO)
            original[i].sa_sigaction(sig, info, uc);
        else if (original[i].sa_handler != SIG_DFL && original[i].sa_handler != SIG_IGN)
            original[i].sa_handler(sig);
    }
    if (QueryCancelPending || ProcDiePending) {
        uint64_t one = 1;
        (void)!write(cancel_efd, &one, sizeof one); /* async-signal-safe */
    }
    errno = saved_errno;
}

static int nwrapped; /* how many of wrapped_signals are wrapped now */

static void wrap_handlers(void)
{
    for (; nwrapped < NWRAPPED; nwrapped++) {
        int sig = wrapped_signals[nwrapped];
        struct sigaction sa;
        if (sigaction(sig, NULL, &original[nwrapped]) != 0)
            elog(ERROR, "timebox_example: sigaction: %m");
        sa = original[nwrapped];
        sa.sa_sigaction = chain_handler;
        sa.sa_flags = (original[nwrapped].sa_flags | SA_SIGINFO) & ~SA_RESETHAND;
        if (sigaction(sig, &sa, NULL) != 0)
            elog(ERROR, "timebox_example: sigaction: %m");
    }
}

/* Puts back what wrap_handlers replaced; idempotent, so that every path
 * (an error while wrapping included) can call it. */
static void unwrap_handlers(void)
{
    for (; nwrapped > 0; nwrapped--)
        (void)sigaction(wrapped_signals[nwrapped - 1], &original[nwrapped - 1], NULL);
}

/* The backend's cancel eventfd, made once, emptied before each call. */
static int cancel_fd(void)
{
    uint64_t v;
    if (cancel_efd < 0) {
        cancel_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (cancel_efd < 0)
            elog(ERROR, "timebox_example: eventfd: %m");
    }
    while (read(cancel_efd, &v, sizeof v) == (ssize_t)sizeof v)
        ;
    return cancel_efd;
}

/* ----------------------------------------------------------------- calls */

/* A one-object msgpack buffer that needs no allocation. */
typedef struct small_buf {
    char data[16];
    size_t len;
} small_buf;

static int small_write(void *data, const char *buf, size_t len)
{
    small_buf *b = data;
    if (len > sizeof b->data - b->len)
        return -1;
    memcpy(b->data + b->len, buf, len);
    b->len += len;
    return 0;
}

/* Raises the error for a call that did not return a value; returns only for
 * a cancel that PostgreSQL did not raise itself. */
static void report(const tbx_result *r, const char *fn, const char *method, int timeout_ms)
{
    switch (r->status) {
    case TBX_ETIMEDOUT:
        ereport(ERROR, (errcode(ERRCODE_QUERY_CANCELED),
                        errmsg("timebox_example: %s did not finish within its deadline of %d ms",
                               fn, timeout_ms),
                        errdetail("Its child (pid %d, method %s) was killed with %s.", (int)r->pid,
                                  method, r->kill_signal == SIGKILL ? "SIGKILL" : "SIGTERM")));
        break;
    case TBX_ECANCELED:
        CHECK_FOR_INTERRUPTS(); /* PostgreSQL's own error, if it asked */
        ereport(ERROR, (errcode(ERRCODE_QUERY_CANCELED),
                        errmsg("timebox_example: %s was cancelled", fn)));
        break;
    case TBX_ECRASHED:
        ereport(ERROR, (errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
                        errmsg("timebox_example: %s crashed: %s", fn, strsignal(r->term_signal)),
                        errdetail("Its child (pid %d, method %s) died of signal %d; this session "
                                  "and the server carry on.",
                                  (int)r->pid, method, r->term_signal)));
        break;
    case TBX_EEXITED:
        ereport(ERROR, (errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
                        errmsg("timebox_example: %s exited with code %d without a result", fn,
                               r->exit_code)));
        break;
    case TBX_EFAILED:
        ereport(ERROR, (errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
                        errmsg("timebox_example: %s failed: %s", fn, r->message),
                        errdetail("Failure code %d.", r->fail_code)));
        break;
    case TBX_ENOTREG:
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_FUNCTION),
                        errmsg("timebox_example: %s is not registered where method %s runs it",
                               fn, method),
                        errhint("The worker or server must preload %s.", jobs_path)));
        break;
    default:
        ereport(ERROR, (errcode(ERRCODE_SYSTEM_ERROR),
                        errmsg("timebox_example: %s could not run under method %s: %s (%s)", fn,
                               method, r->message ? r->message : tbx_strerror(r->status),
                               tbx_err_name(r->status))));
    }
}

Datum timebox_example_call(PG_FUNCTION_ARGS)
{
    char *fn = text_to_cstring(PG_GETARG_TEXT_PP(0));
    int64 arg = PG_GETARG_INT64(1);
    int32 timeout_ms = PG_GETARG_INT32(2);
    char *method_name = text_to_cstring(PG_GETARG_TEXT_PP(3));
    const method_row *m = find_method(method_name);
    check_job(fn);
    if (timeout_ms <= 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("timebox_example: timeout_ms must be positive")));
    if (m->server != NULL)
        m->server();

    char name[32];
    snprintf(name, sizeof name, "job_%s", fn);
    small_buf args = {{0}, 0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &args, small_write);
    msgpack_pack_int64(&pk, arg);
    char *worker_argv[] = {"timebox-worker", "--preload", jobs_path, NULL};
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = m->method;
    o.timeout_s = timeout_ms / 1000.0;
    o.grace_s = grace_ms_setting / 1000.0;
    o.executable = worker_setting;
    o.argv = worker_argv;
    o.cancel_fd = cancel_fd();

    tbx_result r;
    memset(&r, 0, sizeof r);
    volatile int64 value = 0;
    PG_TRY();
    {
        wrap_handlers();
        /* A cancel that came before the handlers were wrapped. */
        CHECK_FOR_INTERRUPTS();
        (void)tbx_call_named(name, args.data, args.len, &o, &r);
        unwrap_handlers();
        if (r.status == 0 && r.value.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            value = (int64)r.value.via.u64;
        else if (r.status == 0 && r.value.type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            value = r.value.via.i64;
        else if (r.status == 0)
            ereport(ERROR, (errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
                            errmsg("timebox_example: %s returned something not an integer", fn)));
        else
            report(&r, fn, m->name, timeout_ms);
    }
    PG_FINALLY();
    {
        unwrap_handlers();
        tbx_result_free(&r);
    }
    PG_END_TRY();
    PG_RETURN_INT64(value);
}

/* The same jobs run in the backend itself, with no child: the baseline of
 * the README's measurements.  Not part of the extension's SQL (a crash here
 * takes the whole server through crash recovery): bench.sh declares it for
 * its run only. */
Datum timebox_example_direct(PG_FUNCTION_ARGS)
{
    char *fn = text_to_cstring(PG_GETARG_TEXT_PP(0));
    int64 arg = PG_GETARG_INT64(1);
    if (strcmp(fn, "double") == 0)
        PG_RETURN_INT64(job_double_value(arg));
    if (strcmp(fn, "crash") == 0)
        job_crash_now();
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("timebox_example_direct: fn must be 'double' or 'crash'")));
    PG_RETURN_NULL();
}
