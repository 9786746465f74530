/* Helpers for the suites of issue 13's promises: see promises_util.h. */
#define _GNU_SOURCE
#include "promises_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Sleeps for the seconds in the environment variable, if set. */
static void sleep_as_told(const char *var)
{
    const char *v = getenv(var);
    if (v != NULL)
        child_sleep(atof(v));
}

static int slow_child_hook(void *arg)
{
    (void)arg;
    sleep_as_told(HOOK_SLEEP_VAR);
    return 0;
}
TBX_CHILD_HOOK(slow_child_hook);

static int slow_preload(void)
{
    sleep_as_told(PRELOAD_SLEEP_VAR);
    return 0;
}
TBX_PRELOAD(slow_preload);

void set_seconds_var(const char *name, double s)
{
    char v[32];
    snprintf(v, sizeof v, "%.3f", s);
    cr_assert_eq(setenv(name, v, 1), 0);
}

void make_socket_dir(char *dir, size_t dir_len, char *path, size_t path_len)
{
    snprintf(dir, dir_len, "/tmp/tbx-promises-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, path_len, "%s/fs.sock", dir);
}

void remove_tree(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* The call of sleep_call and sleep_call_exempt. */
static int sleep_with(const tbx_opts *o, unsigned ms, tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)ms);
    int rc = tbx_call(fn_sleep_ms, sb.data, sb.size, o, r);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

int sleep_call(tbx_method method, unsigned ms, double timeout_s, double grace_s, int hard,
               tbx_result *r)
{
    tbx_opts o = test_opts(method);
    o.timeout_s = timeout_s;
    o.grace_s = grace_s;
    o.hard_timeout = hard;
    return sleep_with(&o, ms, r);
}

int sleep_call_exempt(tbx_method method, unsigned ms, double timeout_s, int exempt,
                      tbx_result *r)
{
    tbx_opts o = test_opts(method);
    o.timeout_s = timeout_s;
    o.cap_exempt = exempt;
    return sleep_with(&o, ms, r);
}

int echo_once(tbx_method method, double timeout_s, tbx_result *r)
{
    msgpack_sbuffer sb;
    pack(&sb, "s", "hi");
    tbx_opts o = test_opts(method);
    o.timeout_s = timeout_s;
    int rc = tbx_call(fn_echo, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}


/* Reads a whole file into buf (NUL-terminated, truncated). */
static void slurp(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re");
    size_t n = f != NULL ? fread(buf, 1, len - 1, f) : 0;
    if (f != NULL)
        fclose(f);
    buf[n] = '\0';
}

int run_capture(const char *cmd, char *out, size_t out_len, char *err, size_t err_len)
{
    char dir[] = "/tmp/tbx-run-XXXXXX", full[1024], o[64], e[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(o, sizeof o, "%s/out", dir);
    snprintf(e, sizeof e, "%s/err", dir);
    snprintf(full, sizeof full, "%s >%s 2>%s", cmd, o, e);
    int st = system(full);
    slurp(o, out, out_len);
    slurp(e, err, err_len);
    remove_tree(dir);
    return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}
