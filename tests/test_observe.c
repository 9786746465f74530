/*
 * What a call tells besides its result, under every start method: what it
 * cost (CPU, peak size), its label (inside fn and on timebox's log lines),
 * the observer that hears of each finished call, and the output callback,
 * on the calling thread and on a loop.
 */
#include "helpers.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <timebox/uv.h>
#include <unistd.h>

/* args: [milliseconds of CPU to burn, MiB to touch]. */
static int fn_burn(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    uint64_t ms = args->via.array.ptr[0].via.u64, mib = args->via.array.ptr[1].via.u64;
    size_t len = (size_t)mib << 20;
    char *p = len > 0 ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                             0)
                      : NULL;
    for (size_t i = 0; p != NULL && p != MAP_FAILED && i < len; i += 4096)
        p[i] = 1;
    struct timespec t0, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    volatile unsigned long spin = 0;
    do {
        for (int i = 0; i < 100000; i++)
            spin++;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((double)(t.tv_sec - t0.tv_sec) * 1e3 + (double)(t.tv_nsec - t0.tv_nsec) / 1e6 <
             (double)ms);
    return msgpack_pack_true(pk);
}
TBX_REGISTER(fn_burn);

TBX_TEST(cost, every_result_says_what_the_child_cost)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process is not reaped per call: no per-call cost");
    msgpack_sbuffer sb;
    pack(&sb, "a u u", 2, (uint64_t)300, (uint64_t)96);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 60;
    tbx_result r;
    int rc = tbx_call(fn_burn, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.cost_known, 1);
    cr_assert_geq(r.cpu_user_s + r.cpu_sys_s, 0.25, "user %.3f sys %.3f", r.cpu_user_s,
                  r.cpu_sys_s);
    cr_assert_geq(r.max_rss_kb, 96 * 1024, "peak %ld KiB", r.max_rss_kb);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(cost, a_killed_child_has_its_cost_too)
{
    msgpack_sbuffer sb;
    pack(&sb, "a u u", 2, (uint64_t)60000, (uint64_t)0);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.4;
    tbx_result r;
    int rc = tbx_call(fn_burn, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s", tbx_err_name(rc));
    cr_assert_eq(r.cost_known, 1);
    cr_assert_gt(r.cpu_user_s, 0.0);
    cr_assert_gt(r.max_rss_kb, 0);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static int fn_label(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    const char *label = tbx_label();
    if (label == NULL)
        return msgpack_pack_nil(pk);
    msgpack_pack_str(pk, strlen(label));
    return msgpack_pack_str_body(pk, label, strlen(label));
}
TBX_REGISTER(fn_label);

TBX_TEST(label, fn_reads_its_calls_label)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    char label[TBX_MAX_LABEL + 1];
    memset(label, 'x', TBX_MAX_LABEL);
    memcpy(label, "request 42 ", 11);
    label[TBX_MAX_LABEL] = '\0';
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.label = label;
    tbx_result r;
    int rc = tbx_call(fn_label, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert(obj_str_eq(&r.value, label));
    tbx_result_free(&r);
    o.label = NULL;
    rc = tbx_call(fn_label, sb.data, sb.size, &o, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_NIL);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST(label, a_label_too_long_or_not_text_is_refused)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    char label[TBX_MAX_LABEL + 2];
    memset(label, 'x', sizeof label - 1);
    label[sizeof label - 1] = '\0';
    tbx_opts o = test_opts(*method);
    o.label = label;
    tbx_result r;
    cr_assert_eq(tbx_call(fn_label, sb.data, sb.size, &o, &r), TBX_EINVAL);
    tbx_result_free(&r);
    o.label = "two\nlines";
    cr_assert_eq(tbx_call(fn_label, sb.data, sb.size, &o, &r), TBX_EINVAL);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static char logged[4096];
static pthread_mutex_t logged_lock = PTHREAD_MUTEX_INITIALIZER;

static void keep_log(tbx_log_level level, const char *message, void *arg)
{
    (void)level, (void)arg;
    pthread_mutex_lock(&logged_lock);
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", message);
    pthread_mutex_unlock(&logged_lock);
}

TBX_TEST(label, timebox_log_lines_about_a_call_carry_its_label)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 0.3;
    o.grace_s = 0.1;
    o.label = "job-7";
    logged[0] = '\0';
    tbx_set_log(keep_log, NULL);
    tbx_result r;
    int rc = tbx_call(fn_ignore_term, sb.data, sb.size, &o, &r);
    tbx_set_log(NULL, NULL);
    cr_assert_eq(rc, TBX_ETIMEDOUT, "%s", tbx_err_name(rc));
    cr_assert_eq(r.kill_signal, SIGKILL);
    cr_assert(strstr(logged, "sent SIGKILL [job-7]\n") != NULL, "log:\n%s", logged);
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

typedef struct seen {
    int calls;
    tbx_method method;
    char label[32];
    int status;
    pid_t pid;
    double elapsed_s, cpu_s;
    int cost_known;
} seen;

static void observe(void *arg, tbx_method method, const char *label, const tbx_result *r)
{
    seen *s = arg;
    s->calls++;
    s->method = method;
    snprintf(s->label, sizeof s->label, "%s", label != NULL ? label : "(none)");
    s->status = r->status;
    s->pid = r->pid;
    s->elapsed_s = r->elapsed_s;
    s->cpu_s = r->cpu_user_s + r->cpu_sys_s;
    s->cost_known = r->cost_known;
}

TBX_TEST(observer, hears_each_finished_call_once)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process is not reaped per call: no per-call cost");
    msgpack_sbuffer ok, hang;
    pack(&ok, "a u u", 2, (uint64_t)50, (uint64_t)0);
    pack(&hang, "u", (uint64_t)60000);
    seen s;
    memset(&s, 0, sizeof s);
    tbx_set_observer(observe, &s);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.label = "first";
    tbx_result r;
    cr_assert_eq(tbx_call(fn_burn, ok.data, ok.size, &o, &r), 0, "%s", r.message);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.method, *method);
    cr_assert_str_eq(s.label, "first");
    cr_assert_eq(s.status, 0);
    cr_assert_eq(s.pid, r.pid);
    cr_assert_eq(s.elapsed_s, r.elapsed_s);
    cr_assert_eq(s.cost_known, 1);
    cr_assert_gt(s.cpu_s, 0.0);
    tbx_result_free(&r);
    o.timeout_s = 0.2;
    o.label = NULL;
    cr_assert_eq(tbx_call(fn_sleep_ms, hang.data, hang.size, &o, &r), TBX_ETIMEDOUT);
    cr_assert_eq(s.calls, 2);
    cr_assert_str_eq(s.label, "(none)");
    cr_assert_eq(s.status, TBX_ETIMEDOUT);
    tbx_result_free(&r);
    tbx_set_observer(NULL, NULL);
    o.timeout_s = 30;
    cr_assert_eq(tbx_call(fn_burn, ok.data, ok.size, &o, &r), 0);
    cr_assert_eq(s.calls, 2, "heard after it was removed");
    tbx_result_free(&r);
    msgpack_sbuffer_destroy(&ok);
    msgpack_sbuffer_destroy(&hang);
}

/* args: milliseconds between two lines of stdout, then one of stderr. */
static int fn_two_lines(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    printf("first\n");
    fflush(stdout);
    child_sleep((double)args->via.u64 / 1e3);
    printf("second\n");
    fflush(stdout);
    fprintf(stderr, "done");
    return msgpack_pack_true(pk);
}
TBX_REGISTER(fn_two_lines);

typedef struct chunks {
    char out[256], err[256];
    double first_at, second_at;
} chunks;

static void on_output(void *arg, int stream, const char *data, size_t len)
{
    chunks *ch = arg;
    char *dst = stream == 1 ? ch->out : ch->err;
    size_t n = strlen(dst);
    snprintf(dst + n, 256 - n, "%.*s", (int)len, data);
    if (stream == 1 && ch->first_at == 0 && strstr(ch->out, "first\n") != NULL)
        ch->first_at = now_s();
    if (stream == 1 && ch->second_at == 0 && strstr(ch->out, "second\n") != NULL)
        ch->second_at = now_s();
}

/* fn_two_lines with gap_ms between its lines, its output kept up to
 * capture bytes and passed to on_output into *ch; returns tbx_call's. */
static int call_two_lines(tbx_method m, uint64_t gap_ms, size_t capture, chunks *ch,
                          tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", gap_ms);
    memset(ch, 0, sizeof *ch);
    tbx_opts o = test_opts(m);
    o.timeout_s = 30;
    o.capture_output = capture;
    o.on_output = on_output;
    o.on_output_arg = ch;
    int rc = tbx_call(fn_two_lines, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

TBX_TEST(output, each_chunk_reaches_the_callback_as_it_arrives)
{
    chunks ch;
    tbx_result r;
    int rc = call_two_lines(*method, 400, 4096, &ch, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_str_eq(ch.out, "first\nsecond\n");
    cr_assert_str_eq(ch.err, "done");
    cr_assert_str_eq(r.stdout_data, ch.out);
    cr_assert(ch.first_at > 0 && ch.second_at > 0);
    cr_assert_geq(ch.second_at - ch.first_at, 0.3, "the first line came only at the end");
    tbx_result_free(&r);
}

TBX_TEST(output, the_callback_sees_no_more_than_capture_output_keeps)
{
    chunks ch;
    tbx_result r;
    int rc = call_two_lines(*method, 0, 8, &ch, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_str_eq(ch.out, "first\nse");
    cr_assert(r.stdout_truncated);
    tbx_result_free(&r);
    cr_assert_eq(call_two_lines(*method, 0, 0, &ch, &r), TBX_EINVAL);
    tbx_result_free(&r);
}

/* On the loop: the output callback and the observer run on the loop's
 * thread, while the call is in flight and once it is done. */
typedef struct async_seen {
    chunks ch;
    pthread_t loop_thread;
    int on_loop_thread, observed, done;
} async_seen;

static void async_output(void *arg, int stream, const char *data, size_t len)
{
    async_seen *s = arg;
    s->on_loop_thread += pthread_equal(pthread_self(), s->loop_thread) ? 1 : -1000;
    on_output(&s->ch, stream, data, len);
}

static void async_observe(void *arg, tbx_method m, const char *label, const tbx_result *r)
{
    (void)m, (void)r;
    async_seen *s = arg;
    if (label != NULL && strcmp(label, "async") == 0 &&
        pthread_equal(pthread_self(), s->loop_thread))
        s->observed++;
}

static void async_done(tbx_req *req, tbx_result *r)
{
    async_seen *s = req->data;
    cr_assert_eq(r->status, 0, "%s", r->message);
    s->done = 1;
    tbx_result_free(r);
}

TBX_TEST(output, on_the_loop_the_callback_and_the_observer_run_on_its_thread)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)100);
    async_seen s;
    memset(&s, 0, sizeof s);
    s.loop_thread = pthread_self();
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    tbx_set_observer(async_observe, &s);
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    o.capture_output = 4096;
    o.on_output = async_output;
    o.on_output_arg = &s;
    o.label = "async";
    tbx_req req;
    req.data = &s;
    cr_assert_eq(tbx_call_async(&loop, &req, fn_two_lines, sb.data, sb.size, &o, async_done), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    tbx_set_observer(NULL, NULL);
    cr_assert(s.done);
    cr_assert_eq(s.observed, 1);
    cr_assert_gt(s.on_loop_thread, 0, "a chunk came on another thread");
    cr_assert_str_eq(s.ch.out, "first\nsecond\n");
    cr_assert_eq(uv_loop_close(&loop), 0);
    msgpack_sbuffer_destroy(&sb);
}
