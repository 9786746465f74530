/*
 * metrics: an observer feeding Prometheus-style counters.
 *
 *   ./metrics [calls]
 *
 * tbx_set_observer hears of every finished call (its method, label,
 * outcome, timings and cost).  This one keeps, per method and outcome, the
 * number of calls, and the seconds they took and the CPU their children
 * used, then prints them in Prometheus' text format, as a /metrics handler
 * would serve them.  The observer runs on the thread that finishes each
 * call: it only adds, under a mutex.
 */
#define _DEFAULT_SOURCE
#include <timebox.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NMETHODS 4
#define NOUTCOMES 12 /* 0 and the TBX_E* codes, by index */

static const int outcomes[NOUTCOMES] = {0,           TBX_ETIMEDOUT, TBX_ECRASHED, TBX_EEXITED,
                                        TBX_EFAILED, TBX_ETOOBIG,   TBX_EPROTO,   TBX_ENOTREG,
                                        TBX_ECANCELED, TBX_EINVAL,  1 /* -errno */, 2};

typedef struct counter {
    unsigned long calls;
    double seconds, cpu_seconds;
} counter;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static counter counters[NMETHODS][NOUTCOMES];

static int outcome_index(int status)
{
    for (int i = 0; i < NOUTCOMES - 2; i++)
        if (outcomes[i] == status)
            return i;
    return NOUTCOMES - 2; /* a system error */
}

static void observe(void *arg, tbx_method method, const char *label, const tbx_result *r)
{
    (void)arg, (void)label;
    if ((unsigned)method >= NMETHODS)
        return;
    counter *c = &counters[method][outcome_index(r->status)];
    pthread_mutex_lock(&lock);
    c->calls++;
    c->seconds += r->elapsed_s;
    c->cpu_seconds += r->cpu_user_s + r->cpu_sys_s;
    pthread_mutex_unlock(&lock);
}

static void print_metrics(void)
{
    static const char *method_names[NMETHODS] = {"default", "fork", "forkserver", "spawn"};
    static const char *series[3][2] = {
        {"timebox_calls_total", "Calls finished."},
        {"timebox_call_seconds_total", "Seconds from call to result."},
        {"timebox_child_cpu_seconds_total", "CPU seconds the children used."}};
    pthread_mutex_lock(&lock);
    for (int s = 0; s < 3; s++) {
        printf("# HELP %s %s\n# TYPE %s counter\n", series[s][0], series[s][1], series[s][0]);
        for (int m = 0; m < NMETHODS; m++) {
            for (int o = 0; o < NOUTCOMES - 1; o++) {
                const counter *c = &counters[m][o];
                if (c->calls == 0)
                    continue;
                const char *outcome = o == NOUTCOMES - 2 ? "ESYSTEM" : tbx_err_name(outcomes[o]);
                double v = s == 0 ? (double)c->calls : s == 1 ? c->seconds : c->cpu_seconds;
                printf("%s{method=\"%s\",outcome=\"%s\"} %.6g\n", series[s][0], method_names[m],
                       outcome, v);
            }
        }
    }
    pthread_mutex_unlock(&lock);
}

/* args: an integer n; n % 4 == 3 hangs (and times out), else it works. */
static int job(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    int64_t n = args->via.i64;
    if (n % 4 == 3)
        for (;;)
            ;
    return msgpack_pack_int64(result, n * n);
}
TBX_REGISTER(job);

int main(int argc, char **argv)
{
    tbx_init(argc, argv);
    int calls = argc > 1 ? atoi(argv[1]) : 12;
    tbx_set_observer(observe, NULL);
    for (int i = 0; i < calls; i++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_int(&pk, i);
        tbx_opts opts;
        tbx_opts_init(&opts);
        opts.method = i % 3 == 0 ? TBX_FORKSERVER : TBX_FORK;
        opts.timeout_s = 0.1;
        char label[32];
        snprintf(label, sizeof label, "job-%d", i);
        opts.label = label;
        tbx_result r;
        (void)tbx_call(job, sb.data, sb.size, &opts, &r);
        tbx_result_free(&r);
        msgpack_sbuffer_destroy(&sb);
    }
    tbx_set_observer(NULL, NULL);
    print_metrics();
    tbx_forkserver_stop();
    return 0;
}
