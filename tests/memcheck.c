/*
 * memcheck: every outcome of a call, by every method, blocking and async,
 * in one process without Criterion, for valgrind's memcheck (Criterion runs
 * each test in a re-executed copy of itself, which valgrind cannot follow
 * cleanly).  tests/valgrind.sh runs it under valgrind; ctest runs it plain
 * as "memcheck".
 *
 * Exit status 0 when every call gave what it must.  Under valgrind,
 * --error-exitcode makes any memory error or definite leak fail it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <timebox.h>
#include <timebox/uv.h>
#include <unistd.h>

static int failures;

#define EXPECT(cond, ...)                                                       \
    do {                                                                        \
        if (!(cond)) {                                                          \
            failures++;                                                         \
            fprintf(stderr, "memcheck: %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

enum { K_OK, K_BIG, K_HANG, K_STUBBORN, K_SEGV, K_FAIL, K_EXIT, K_TWO, K_KINDS };

static void sleep_for(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int fn_mc(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    int kind = (int)args->via.array.ptr[0].via.u64;
    switch (kind) {
    case K_OK:
        msgpack_pack_map(pk, 2);
        msgpack_pack_str_with_body(pk, "echo", 4);
        msgpack_pack_object(pk, args->via.array.ptr[1]);
        msgpack_pack_str_with_body(pk, "list", 4);
        msgpack_pack_array(pk, 100);
        for (int i = 0; i < 100; i++)
            msgpack_pack_int(pk, i);
        return 0;
    case K_BIG: {
        static char chunk[65536];
        memset(chunk, 'b', sizeof chunk);
        msgpack_pack_bin(pk, 16 * sizeof chunk);
        for (int i = 0; i < 16; i++)
            msgpack_pack_bin_body(pk, chunk, sizeof chunk);
        return 0;
    }
    case K_HANG:
        sleep_for(60);
        return msgpack_pack_nil(pk);
    case K_STUBBORN:
        signal(SIGTERM, SIG_IGN);
        sleep_for(60);
        return msgpack_pack_nil(pk);
    case K_SEGV:
        raise(SIGSEGV);
        return msgpack_pack_nil(pk);
    case K_FAIL:
        return tbx_fail(pk, 42, "failed on purpose %d", 42);
    case K_EXIT:
        _exit(7);
    default: /* two objects: TBX_EPROTO */
        msgpack_pack_int(pk, 1);
        return msgpack_pack_int(pk, 2);
    }
}
TBX_REGISTER(fn_mc);

static const tbx_method methods[] = {TBX_FORK, TBX_SPAWN, TBX_FORKSERVER};

static void pack_kind(msgpack_sbuffer *sb, int kind)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, kind);
    msgpack_pack_str_with_body(&pk, "payload", 7);
}

static tbx_opts opts_for(tbx_method m, int kind)
{
    tbx_opts o;
    tbx_opts_init(&o);
    o.method = m;
    o.timeout_s = kind == K_HANG || kind == K_STUBBORN ? 2.0 : 120;
    o.grace_s = 0.5;
    if (kind == K_BIG)
        o.max_result = (size_t)1 << 20; /* 16 * 64 KiB + 5 bytes: over it */
    return o;
}

static void check(const char *how, tbx_method m, int kind, const tbx_result *r)
{
    int rc = r->status;
    switch (kind) {
    case K_OK:
        EXPECT(rc == 0 && r->value.type == MSGPACK_OBJECT_MAP && r->value.via.map.size == 2,
               "%s m%d ok: %s (%s)", how, m, tbx_err_name(rc), r->message);
        break;
    case K_BIG:
        EXPECT(rc == TBX_ETOOBIG, "%s m%d big: %s", how, m, tbx_err_name(rc));
        break;
    case K_HANG:
        EXPECT(rc == TBX_ETIMEDOUT && r->kill_signal == SIGTERM, "%s m%d hang: %s kill %d", how,
               m, tbx_err_name(rc), r->kill_signal);
        break;
    case K_STUBBORN:
        EXPECT(rc == TBX_ETIMEDOUT && r->kill_signal == SIGKILL, "%s m%d stubborn: %s kill %d",
               how, m, tbx_err_name(rc), r->kill_signal);
        break;
    case K_SEGV:
        EXPECT(rc == TBX_ECRASHED && r->term_signal == SIGSEGV, "%s m%d segv: %s term %d", how,
               m, tbx_err_name(rc), r->term_signal);
        break;
    case K_FAIL:
        EXPECT(rc == TBX_EFAILED && r->fail_code == 42 && r->message != NULL &&
                   strcmp(r->message, "failed on purpose 42") == 0,
               "%s m%d fail: %s", how, m, tbx_err_name(rc));
        break;
    case K_EXIT:
        EXPECT(rc == TBX_EEXITED && r->exit_code == 7, "%s m%d exit: %s %d", how, m,
               tbx_err_name(rc), r->exit_code);
        break;
    default:
        EXPECT(rc == TBX_EPROTO, "%s m%d two objects: %s", how, m, tbx_err_name(rc));
    }
}

static void blocking(void)
{
    for (size_t mi = 0; mi < 3; mi++) {
        for (int kind = 0; kind < K_KINDS; kind++) {
            msgpack_sbuffer sb;
            pack_kind(&sb, kind);
            tbx_opts o = opts_for(methods[mi], kind);
            tbx_result r;
            tbx_call(fn_mc, sb.data, sb.size, &o, &r);
            check("blocking", methods[mi], kind, &r);
            tbx_result_free(&r);
            msgpack_sbuffer_destroy(&sb);
        }
        /* Refused before launch. */
        static const unsigned char bad[] = {0xc1};
        tbx_opts o = opts_for(methods[mi], K_OK);
        tbx_result r;
        int rc = tbx_call(fn_mc, bad, sizeof bad, &o, &r);
        EXPECT(rc == TBX_EINVAL && r.pid == 0, "m%d bad args: %s", (int)methods[mi],
               tbx_err_name(rc));
        tbx_result_free(&r);
    }
}

struct areq {
    tbx_req req;
    tbx_method m;
    int kind, cancel, seen;
};

static void areq_cb(tbx_req *req, tbx_result *r)
{
    struct areq *a = req->data;
    a->seen++;
    if (a->cancel)
        EXPECT(r->status == TBX_ECANCELED, "async m%d cancel: %s", (int)a->m,
               tbx_err_name(r->status));
    else
        check("async", a->m, a->kind, r);
    tbx_result_free(r);
}

static void async(void)
{
    enum { N = 3 * (K_KINDS + 1) };
    struct areq a[N];
    uv_loop_t loop;
    memset(a, 0, sizeof a);
    EXPECT(uv_loop_init(&loop) == 0, "uv_loop_init");
    for (int i = 0; i < N; i++) {
        a[i].req.data = &a[i];
        a[i].m = methods[i / (K_KINDS + 1)];
        a[i].kind = i % (K_KINDS + 1);
        a[i].cancel = a[i].kind == K_KINDS;
        if (a[i].cancel)
            a[i].kind = K_HANG;
        msgpack_sbuffer sb;
        pack_kind(&sb, a[i].kind);
        tbx_opts o = opts_for(a[i].m, a[i].kind);
        if (a[i].cancel)
            o.timeout_s = 0;
        int rc = tbx_call_async(&loop, &a[i].req, fn_mc, sb.data, sb.size, &o, areq_cb);
        msgpack_sbuffer_destroy(&sb);
        EXPECT(rc == 0, "async %d: %s", i, tbx_err_name(rc));
        if (rc != 0)
            a[i].seen = 1;
        else if (a[i].cancel)
            EXPECT(tbx_cancel(&a[i].req) == 0, "cancel %d", i);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < N; i++)
        EXPECT(a[i].seen == 1, "async %d: %d callbacks", i, a[i].seen);
    EXPECT(uv_loop_close(&loop) == 0, "handles left on the loop");
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    /* Under valgrind /proc/self/exe is valgrind's tool, not this program:
     * spawn and the forkserver are told the program by its path. */
    char self[4096];
    if (argc > 0 && realpath(argv[0], self) != NULL) {
        tbx_forkserver_opts fo;
        tbx_forkserver_opts_init(&fo);
        fo.executable = self;
        EXPECT(tbx_set_spawn_executable(self, NULL) == 0, "tbx_set_spawn_executable");
        int rc = tbx_forkserver_start(&fo);
        EXPECT(rc == 0, "tbx_forkserver_start: %s", tbx_err_name(rc));
    }
    blocking();
    async();
    tbx_forkserver_stop();
    tbx_set_spawn_executable(NULL, NULL);
    printf("memcheck: %d wrong\n", failures);
    return failures == 0 ? 0 : 1;
}
