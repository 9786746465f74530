/*
 * What the suites of issue 13's promises share (test_deadlines.c,
 * test_cap.c, test_warm.c, test_daemon.c, test_traps.c): knobs that make a
 * child hook or a preload hook slow, read from the environment so that they
 * reach spawned workers and the forkserver, and a private socket directory.
 */
#ifndef TBX_TEST_PROMISES_UTIL_H
#define TBX_TEST_PROMISES_UTIL_H

#include "helpers.h"

/* Seconds every child hook of the suite sleeps (TBX_CHILD_HOOK, read in the
 * child), and every preload hook (TBX_PRELOAD, read in the forkserver).  Set
 * them before the first call that starts a forkserver: it inherits the
 * environment it was started with. */
#define HOOK_SLEEP_VAR "TBX_TEST_HOOK_SLEEP"
#define PRELOAD_SLEEP_VAR "TBX_TEST_PRELOAD_SLEEP"
void set_seconds_var(const char *name, double s);

/* A fresh directory /tmp/tbx-promises-XXXXXX (mode 0700) and the socket path
 * "dir/fs.sock" in it; remove_tree removes it. */
void make_socket_dir(char *dir, size_t dir_len, char *path, size_t path_len);
void remove_tree(const char *dir);

/* One call of fn_sleep_ms(ms) by method, with these deadline options and
 * opts.cap_exempt; 0 or its error. */
int sleep_call(tbx_method method, unsigned ms, double timeout_s, double grace_s, int hard,
               tbx_result *r);
int sleep_call_exempt(tbx_method method, unsigned ms, double timeout_s, int exempt,
                      tbx_result *r);

/* One call of fn_echo("hi") by method, with a deadline; 0 or its error. */
int echo_once(tbx_method method, double timeout_s, tbx_result *r);

/* Runs cmd through /bin/sh, its stderr and stdout into err and out
 * (NUL-terminated, truncated to the sizes); returns its exit status (the
 * shell's: 0-255), or -1. */
int run_capture(const char *cmd, char *out, size_t out_len, char *err, size_t err_len);

#endif
