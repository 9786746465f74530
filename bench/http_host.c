/*
 * http_host: a small libuv HTTP server that makes one deadlined call per
 * request, as a web host calling slow or untrusted code would.  Driven by
 * bench/http.sh with wrk.  Public API only.
 *
 *   http_host METHOD PORT [hang_every [timeout_ms [pool_size]]]
 *
 * METHOD: fork, forkserver, spawn, pool (TBX_POOL; pool_size, default 32,
 * as many as wrk's connections: fewer idle processes than calls in flight
 * means a fork for each call over), auto, or none: the floor, the same server answering "42" with no
 * call at all.
 * Every request (HTTP/1.1, keep-alive, GET) makes one tbx_call_async with a
 * deadline of timeout_ms (default 50) and a grace of 10 ms; one request in
 * hang_every (default 20; 0: none) calls a function that never returns and
 * is cut at its deadline.  The answer: 200 "42" for a result, 504 for a
 * timeout, 500 for anything else.
 *
 * On SIGINT or SIGTERM it stops taking connections, waits for the calls in
 * flight, stops the forkserver, then prints one RESULT line of outcome counts
 * and whether any child of its own is left (there must be none), and exits 0
 * if every call ended as its kind says (a quick call that met its deadline on
 * a loaded machine is counted late, not wrong) and no child is left, 1
 * otherwise.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#include <timebox.h>
#include <timebox/uv.h>

#define READ_MAX 8192

typedef struct conn {
    uv_tcp_t tcp;
    char buf[READ_MAX];
    size_t len;
    int busy;    /* a call runs, or its answer is being written */
    int closing; /* uv_close was called */
    int closed;  /* its close callback ran while busy: the call frees it */
} conn;

typedef struct call {
    tbx_req req;
    conn *c;
    int hangs;
    uv_write_t w;
    char out[128];
} call;

static const unsigned char args_nil[1] = {0xc0};
static uv_loop_t *loop;
static uv_tcp_t listener;
static uv_signal_t sig_int, sig_term;
static tbx_opts opts;
static unsigned hang_every = 20;
/* late: a quick call that met its deadline all the same (a loaded machine);
 * wrong: a hanging call that returned, or any other error. */
static unsigned long n_req, n_ok, n_timeout, n_late, n_other, n_wrong, in_flight;
static int stopping;
static int no_call; /* METHOD none: the HTTP floor */

static void serve_next(conn *c);

/* A connection that closes while its call runs stays allocated until the
 * call ends: the call's callback needs it. */
static void conn_close_cb(uv_handle_t *h)
{
    conn *c = h->data;
    if (c->busy)
        c->closed = 1;
    else
        free(c);
}

/* The call for c's request is over (answered or not). */
static void conn_idle(conn *c)
{
    c->busy = 0;
    if (c->closed)
        free(c);
    else if (!c->closing)
        serve_next(c);
}

static void conn_close(conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    conn *c = h->data;
    *b = uv_buf_init(c->buf + c->len, (unsigned)(READ_MAX - c->len));
}

static void write_cb(uv_write_t *w, int status)
{
    call *k = w->data;
    conn *c = k->c;
    free(k);
    if (status < 0)
        conn_close(c);
    conn_idle(c);
}

static void done_cb(tbx_req *req, tbx_result *r)
{
    call *k = req->data;
    int code = 200;
    const char *body = "42";
    in_flight--;
    if (r->status == 0) {
        n_ok++;
        if (k->hangs || r->value.type != MSGPACK_OBJECT_POSITIVE_INTEGER || r->value.via.u64 != 42)
            n_wrong++;
    } else if (r->status == TBX_ETIMEDOUT) {
        n_timeout++, code = 504, body = "timeout";
        if (!k->hangs)
            n_late++;
    } else {
        n_other++, code = 500, body = tbx_err_name(r->status);
        n_wrong++;
    }
    tbx_result_free(r);
    if (k->c->closing) {
        conn_idle(k->c);
        free(k);
        return;
    }
    int n = snprintf(k->out, sizeof k->out, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n\r\n%s", code,
                     strlen(body), body);
    uv_buf_t b = uv_buf_init(k->out, (unsigned)n);
    k->w.data = k;
    if (uv_write(&k->w, (uv_stream_t *)&k->c->tcp, &b, 1, write_cb) != 0) {
        conn_close(k->c);
        conn_idle(k->c);
        free(k);
    }
}

/* Starts the call for the first whole request in c's buffer, if any. */
static void serve_next(conn *c)
{
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (c->busy || end == NULL)
        return;
    size_t used = (size_t)(end + 4 - c->buf);
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
    call *k = calloc(1, sizeof *k);
    if (k == NULL)
        abort();
    k->c = c;
    k->hangs = hang_every > 0 && ++n_req % hang_every == 0;
    k->req.data = k;
    c->busy = 1;
    in_flight++;
    if (no_call) {
        tbx_result r = {0};
        r.value.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        r.value.via.u64 = 42;
        k->hangs = 0;
        done_cb(&k->req, &r);
        return;
    }
    int rc = tbx_call_async(loop, &k->req, k->hangs ? bench_hang : bench_answer, args_nil, sizeof args_nil,
                            &opts, done_cb);
    if (rc != 0) {
        fprintf(stderr, "http_host: tbx_call_async: %s\n", tbx_err_name(rc));
        n_other++, n_wrong++, in_flight--;
        free(k);
        conn_close(c);
        return;
    }
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    conn *c = s->data;
    if (n < 0 || (n == 0 && c->len == READ_MAX)) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    serve_next(c);
}

static void accept_cb(uv_stream_t *server, int status)
{
    if (status < 0 || stopping)
        return;
    conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        abort();
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
}

static void walk_close_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (h->type == UV_TCP && h != (uv_handle_t *)&listener && !uv_is_closing(h))
        conn_close(h->data);
}

static void stop_cb(uv_signal_t *s, int sig)
{
    (void)s, (void)sig;
    stopping = 1;
    uv_close((uv_handle_t *)&listener, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_walk(loop, walk_close_cb, NULL);
}

/* The number of this process's children, zombies included. */
static int children_left(void)
{
    char path[64];
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/task", (int)getpid());
    DIR *d = opendir(path);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char cp[384];
        snprintf(cp, sizeof cp, "%s/%s/children", path, e->d_name);
        FILE *f = fopen(cp, "r");
        int pid;
        while (f != NULL && fscanf(f, "%d", &pid) == 1)
            n++;
        if (f != NULL)
            fclose(f);
    }
    if (d != NULL)
        closedir(d);
    return n;
}

static int parse_method(const char *s, tbx_method *m)
{
    static const struct {
        const char *name;
        tbx_method m;
    } tab[] = {{"fork", TBX_FORK},   {"forkserver", TBX_FORKSERVER}, {"spawn", TBX_SPAWN},
               {"pool", TBX_POOL},   {"auto", TBX_AUTO}};
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(s, tab[i].name) == 0)
            return *m = tab[i].m, 0;
    return -1;
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    tbx_method m = TBX_METHOD_DEFAULT;
    no_call = argc > 1 && strcmp(argv[1], "none") == 0;
    if (argc < 3 || (!no_call && parse_method(argv[1], &m) != 0)) {
        fprintf(stderr, "usage: http_host none|fork|forkserver|spawn|pool|auto PORT [hang_every [timeout_ms]]\n");
        return 2;
    }
    int port = atoi(argv[2]);
    hang_every = argc > 3 ? (unsigned)atoi(argv[3]) : 20;
    double timeout_ms = argc > 4 ? atof(argv[4]) : 50;
    signal(SIGPIPE, SIG_IGN);
    tbx_opts_init(&opts);
    opts.method = m;
    opts.timeout_s = timeout_ms / 1e3;
    opts.grace_s = 0.01;
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.pool_size = argc > 5 ? (unsigned)atoi(argv[5]) : 32;
    if (!no_call && m != TBX_FORK && m != TBX_SPAWN && tbx_forkserver_start(&fo) != 0) {
        fprintf(stderr, "http_host: tbx_forkserver_start failed\n");
        return 1;
    }
    loop = uv_default_loop();
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_init(loop, &listener);
    if (uv_tcp_bind(&listener, (const struct sockaddr *)&addr, 0) != 0 ||
        uv_listen((uv_stream_t *)&listener, 256, accept_cb) != 0) {
        fprintf(stderr, "http_host: cannot listen on 127.0.0.1:%d\n", port);
        return 1;
    }
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_term);
    uv_signal_start(&sig_int, stop_cb, SIGINT);
    uv_signal_start(&sig_term, stop_cb, SIGTERM);
    printf("http_host: %s on 127.0.0.1:%d, 1 call in %u hangs, deadline %.0f ms\n", argv[1], port,
           hang_every, timeout_ms);
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT);
    tbx_forkserver_stop();
    int left = children_left();
    printf("RESULT scenario=http_host name=%s requests=%lu ok=%lu timeout=%lu late=%lu other=%lu "
           "wrong=%lu in_flight=%lu children_left=%d\n",
           argv[1], n_req, n_ok, n_timeout, n_late, n_other, n_wrong, in_flight, left);
    uv_loop_close(loop);
    return n_wrong == 0 && in_flight == 0 && left == 0 ? 0 : 1;
}
