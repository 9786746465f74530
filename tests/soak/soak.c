/*
 * soak: many calls, to see that nothing accumulates.  Not run by CI.
 *
 *   timebox_soak [calls] [window] [burst]      defaults: 100000 64 1000
 *
 * Phase 1: `calls` async calls on one loop, `window` in flight at a time,
 * rotating over fork, spawn and the forkserver and over outcomes: success
 * (70%), a timeout of 20 ms (10%, half of them children that ignore SIGTERM),
 * a crash (10%), tbx_fail (5%), _exit (5%).  Every result is checked.
 * Phase 2: `burst` calls started at once whose deadlines expire together.
 *
 * Prints the process's descriptors, RSS and child processes before, between
 * and after, and the forkserver's; exits non-zero if a result was wrong or
 * a descriptor or child was left.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <timebox.h>
#include <timebox/uv.h>
#include <unistd.h>

enum { K_OK, K_HANG, K_STUBBORN, K_SEGV, K_FAIL, K_EXIT };

static int fn_soak(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    int kind = (int)args->via.array.ptr[0].via.u64;
    int64_t n = (int64_t)args->via.array.ptr[1].via.u64;
    struct timespec ts = {60, 0};
    switch (kind) {
    case K_OK:
        msgpack_pack_array(pk, 2);
        msgpack_pack_int64(pk, n);
        return msgpack_pack_str_with_body(pk, "soak", 4);
    case K_STUBBORN:
        signal(SIGTERM, SIG_IGN);
        /* fall through */
    case K_HANG:
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        return msgpack_pack_nil(pk);
    case K_SEGV:
        raise(SIGSEGV);
        return msgpack_pack_nil(pk);
    case K_FAIL:
        return tbx_fail(pk, (int)(n % 1000), "soak failure %lld", (long long)n);
    default:
        _exit((int)(n % 200) + 1);
    }
}
TBX_REGISTER(fn_soak);

/* ------------------------------------------------------ process state */

static long count_fds_of(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    long n = -1; /* the directory's own descriptor, when pid is us */
    if (pid != getpid())
        n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static long rss_kib_of(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* Children of this process, running or zombie, less the forkserver. */
static int count_children(int *zombies)
{
    pid_t me = getpid(), server = tbx_forkserver_pid();
    int n = 0;
    *zombies = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || pid == server)
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *p = strrchr(buf, ')'), st;
        int ppid;
        if (p != NULL && sscanf(p + 1, " %c %d", &st, &ppid) == 2 && ppid == me) {
            n++;
            *zombies += st == 'Z';
        }
    }
    if (d != NULL)
        closedir(d);
    return n;
}

struct snapshot {
    long fds, rss_kib, server_fds, server_rss_kib;
    int children, zombies;
};

static struct snapshot snap(const char *label)
{
    struct snapshot s;
    pid_t server = tbx_forkserver_pid();
    s.fds = count_fds_of(getpid());
    s.rss_kib = rss_kib_of(getpid());
    s.children = count_children(&s.zombies);
    s.server_fds = server > 0 ? count_fds_of(server) : -1;
    s.server_rss_kib = server > 0 ? rss_kib_of(server) : -1;
    printf("%-18s fds %4ld  rss %7ld KiB  children %d (zombies %d)  forkserver: pid %d fds %ld "
           "rss %ld KiB\n",
           label, s.fds, s.rss_kib, s.children, s.zombies, (int)server, s.server_fds,
           s.server_rss_kib);
    fflush(stdout);
    return s;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --------------------------------------------------------------- calls */

static const tbx_method methods[] = {TBX_FORK, TBX_SPAWN, TBX_FORKSERVER};
static const char *method_names[] = {"?", "fork", "forkserver", "spawn"};

struct slot {
    tbx_req req;
    int kind;
    int64_t n;
    tbx_method m;
};

static struct {
    uv_loop_t *loop;
    long started, done, total, wrong;
    long by_status[16];
    double lateness_max; /* burst: callback time past the shared deadline */
    double burst_deadline;
} st;

static int kind_for(long i)
{
    int r = (int)(i % 20);
    return r < 14 ? K_OK : r == 14 ? K_HANG : r == 15 ? K_STUBBORN : r < 18 ? K_SEGV
                      : r == 18 ? K_FAIL : K_EXIT;
}

static int status_index(int rc)
{
    switch (rc) {
    case 0: return 0;
    case TBX_ETIMEDOUT: return 1;
    case TBX_ECRASHED: return 2;
    case TBX_EFAILED: return 3;
    case TBX_EEXITED: return 4;
    default: return 5;
    }
}

static const char *wrong_why(const struct slot *s, const tbx_result *r)
{
    switch (s->kind) {
    case K_OK:
        return r->status == 0 && r->value.type == MSGPACK_OBJECT_ARRAY &&
                       r->value.via.array.ptr[0].via.i64 == s->n
                   ? NULL
                   : "ok";
    case K_HANG:
        return r->status == TBX_ETIMEDOUT ? NULL : "hang";
    case K_STUBBORN:
        return r->status == TBX_ETIMEDOUT && r->kill_signal == SIGKILL ? NULL : "stubborn";
    case K_SEGV:
        return r->status == TBX_ECRASHED && r->term_signal == SIGSEGV ? NULL : "segv";
    case K_FAIL:
        return r->status == TBX_EFAILED && r->fail_code == (int)(s->n % 1000) ? NULL : "fail";
    default:
        return r->status == TBX_EEXITED && r->exit_code == (int)(s->n % 200) + 1 ? NULL : "exit";
    }
}

static void start_one(struct slot *s);

static void done_cb(tbx_req *req, tbx_result *r)
{
    struct slot *s = req->data;
    const char *why = wrong_why(s, r);
    st.done++;
    st.by_status[status_index(r->status)]++;
    if (st.burst_deadline > 0) {
        double late = now_s() - st.burst_deadline;
        if (late > st.lateness_max)
            st.lateness_max = late;
    }
    if (why != NULL && st.wrong++ < 10)
        fprintf(stderr, "wrong: call %lld (%s, %s): %s: %s\n", (long long)s->n, why,
                method_names[s->m], tbx_err_name(r->status), r->message ? r->message : "-");
    tbx_result_free(r);
    if (st.started < st.total)
        start_one(s); /* the request is ours again */
}

static void start_one(struct slot *s)
{
    long i = st.started++;
    s->n = i;
    s->kind = kind_for(i);
    s->m = methods[(i / 7) % 3];
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, s->kind);
    msgpack_pack_int64(&pk, s->n);
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = s->m;
    o.timeout_s = s->kind == K_HANG || s->kind == K_STUBBORN ? 0.02 : 60;
    o.grace_s = 0.02;
    /* Hangs count from fn (a stubborn child must have ignored SIGTERM
     * first); the others alternate. */
    o.hard_timeout = s->kind == K_HANG || s->kind == K_STUBBORN ? 0 : (int)(i % 2);
    int rc = tbx_call_async(st.loop, &s->req, fn_soak, sb.data, sb.size, &o, done_cb);
    msgpack_sbuffer_destroy(&sb);
    if (rc != 0) {
        st.done++;
        st.by_status[5]++;
        if (st.wrong++ < 10)
            fprintf(stderr, "refused: call %ld: %s\n", i, tbx_err_name(rc));
    }
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    long calls = argc > 1 ? atol(argv[1]) : 100000;
    int window = argc > 2 ? atoi(argv[2]) : 64;
    int burst = argc > 3 ? atoi(argv[3]) : 1000;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    uv_loop_t loop;
    uv_loop_init(&loop);
    st.loop = &loop;
    /* One warm-up call per method, so that the private loop, the timer
     * and the forkserver exist in the "before" figures. */
    st.total = 21;
    struct slot warm[3];
    for (int i = 0; i < 3; i++) {
        warm[i].req.data = &warm[i];
        st.started = 7 * i; /* call 7 * i runs by methods[i], with a deadline */
        start_one(&warm[i]);
    }
    st.total = 0;
    uv_run(&loop, UV_RUN_DEFAULT);
    struct snapshot before = snap("before");

    /* Phase 1 */
    double t0 = now_s();
    memset(st.by_status, 0, sizeof st.by_status);
    st.started = st.done = 0;
    st.total = calls;
    struct slot *slots = calloc((size_t)window, sizeof *slots);
    for (int i = 0; i < window && st.started < st.total; i++) {
        slots[i].req.data = &slots[i];
        start_one(&slots[i]);
    }
    long last_report = 0;
    while (uv_run(&loop, UV_RUN_ONCE) != 0) {
        if (st.done - last_report >= calls / 10 && calls >= 10) {
            last_report = st.done;
            char label[32];
            snprintf(label, sizeof label, "%ld calls", st.done);
            snap(label);
        }
    }
    double t1 = now_s();
    printf("phase 1: %ld calls in %.1f s (%.0f/s): ok %ld, timeout %ld, crash %ld, fail %ld, "
           "exit %ld, other %ld; wrong %ld\n",
           st.done, t1 - t0, (double)st.done / (t1 - t0), st.by_status[0], st.by_status[1],
           st.by_status[2], st.by_status[3], st.by_status[4], st.by_status[5], st.wrong);
    struct snapshot mid = snap("after phase 1");

    /* Phase 2: burst calls, every deadline at the same instant. */
    struct slot *b = calloc((size_t)burst, sizeof *b);
    long wrong_before = st.wrong;
    memset(st.by_status, 0, sizeof st.by_status);
    st.started = st.done = 0;
    st.total = 0; /* no refills */
    double deadline = now_s() + 3.0 + burst / 200.0; /* time to start them all */
    t0 = now_s();
    for (int i = 0; i < burst; i++) {
        struct slot *s = &b[i];
        s->req.data = s;
        s->n = i;
        s->kind = i % 2 ? K_HANG : K_STUBBORN;
        s->m = methods[i % 3];
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_int(&pk, s->kind);
        msgpack_pack_int64(&pk, s->n);
        tbx_opts o;
        tbx_opts_init(&o);
        o.method = s->m;
        o.grace_s = 0.2;
        o.timeout_s = deadline - now_s();
        int rc = o.timeout_s > 0 ? tbx_call_async(&loop, &s->req, fn_soak, sb.data, sb.size, &o,
                                                  done_cb)
                                 : -ETIME;
        msgpack_sbuffer_destroy(&sb);
        if (rc != 0) {
            st.done++;
            if (st.wrong++ < 10)
                fprintf(stderr, "burst: call %d refused: %s\n", i, tbx_err_name(rc));
        }
    }
    double started = now_s();
    struct snapshot during = snap("burst in flight");
    (void)during;
    st.burst_deadline = deadline;
    uv_run(&loop, UV_RUN_DEFAULT);
    double t2 = now_s();
    printf("phase 2: %d calls started in %.2f s, deadline %.2f s after the first; all done "
           "%.3f s after the deadline (grace 0.2 s; half ignore SIGTERM); timeouts %ld; "
           "wrong %ld\n",
           burst, started - t0, deadline - t0, t2 - deadline, st.by_status[1],
           st.wrong - wrong_before);
    struct snapshot after = snap("after");

    uv_loop_close(&loop);
    free(slots);
    free(b);
    int leaked = after.fds != before.fds || after.children != 0 || mid.children != 0;
    printf("result: %s (fds %ld -> %ld, rss %ld -> %ld KiB, children %d -> %d, forkserver fds "
           "%ld -> %ld, rss %ld -> %ld KiB)\n",
           st.wrong == 0 && !leaked ? "PASS" : "FAIL", before.fds, after.fds, before.rss_kib,
           after.rss_kib, before.children, after.children, before.server_fds, after.server_fds,
           before.server_rss_kib, after.server_rss_kib);
    tbx_forkserver_stop();
    return st.wrong == 0 && !leaked ? 0 : 1;
}
