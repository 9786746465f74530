/*
 * Shared helpers for timebox's Criterion suites.
 *
 * Every test runs with tbx_fixture_init/tbx_fixture_check: the fixture records
 * this (test) process's descriptors before the test and checks afterwards that
 * the same ones are open and that no child process, running or zombie, is
 * left; and, before it stops the forkserver, that the server holds nothing
 * of the test's calls either (no child, no descriptor).  Criterion runs each test in a process of its own, so these checks
 * never see another test's descriptors or children.
 *
 * Start methods: TBX_TEST(suite, name) declares a test parameterized over
 * tbx_test_methods[]; the body reads the method as `*method` and builds its
 * options with test_opts(*method).  Adding TBX_SPAWN or TBX_FORKSERVER to the
 * table when they land runs every such test under them too.
 */
#ifndef TBX_TEST_HELPERS_H
#define TBX_TEST_HELPERS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <timebox.h>
#include <timebox/uv.h>

/* The start methods every parameterized test runs under.  Spawn and the
 * forkserver start fresh copies of the test program: helpers.c calls
 * tbx_init from a constructor, before Criterion's main, so those copies
 * serve their call instead of running the suite. */
static const tbx_method tbx_test_methods[] = {
    TBX_FORK,
    TBX_SPAWN,
    TBX_FORKSERVER,
    TBX_POOL,
};
#define TBX_TEST_NMETHODS (sizeof tbx_test_methods / sizeof tbx_test_methods[0])

/* The fixture every test uses.  init records the state; check asserts it is
 * back.  The check runs at the end of the test's body, not in Criterion's
 * .fini: Criterion 2.4 prints an assertion that fails in .fini but still
 * counts the test as passed.  A test whose body failed earlier has failed
 * anyway. */
void tbx_fixture_init(void);
void tbx_fixture_check(void);

/* The forkserver's part of the check (helpers_server.c), made by
 * tbx_fixture_check before it stops the server: if this process has a
 * server, it has reaped every child of the test's calls and closed every
 * descriptor they brought (waiting a few seconds for it to get there).
 * stop_forkserver() checks, then stops the server: for a test that stops
 * its server itself. */
void check_forkserver(void);
void stop_forkserver(void);
/* Starts the forkserver with a pool of size processes, each replaced after
 * max_calls calls (0: never); asserts it started. */
void start_pool(unsigned size, unsigned max_calls);

/* A test run once per start method; the body sees `const tbx_method *method`.
 * Criterion ends a test that runs over 120 s (a hang, not a slow machine);
 * TBX_TEST_T sets another limit. */
#define TBX_TEST(suite, name, ...) TBX_TEST_T(suite, name, 120.0, ##__VA_ARGS__)
#define TBX_TEST_T(suite, name, timeout_s, ...)                                 \
    static void suite##__##name##__body(const tbx_method *method);              \
    ParameterizedTestParameters(suite, name)                                    \
    {                                                                           \
        return cr_make_param_array(tbx_method, (tbx_method *)tbx_test_methods,  \
                                   TBX_TEST_NMETHODS);                          \
    }                                                                           \
    ParameterizedTest(const tbx_method *method, suite, name,                    \
                      .init = tbx_fixture_init, .timeout = (timeout_s), ##__VA_ARGS__) \
    {                                                                           \
        suite##__##name##__body(method);                                        \
        tbx_fixture_check();                                                    \
    }                                                                           \
    static void suite##__##name##__body(__attribute__((unused)) const tbx_method *method)

/* A test that does not depend on the start method, with the same fixture. */
#define TBX_PLAIN_TEST(suite, name, ...)                                        \
    static void suite##__##name##__body(void);                                  \
    Test(suite, name, .init = tbx_fixture_init, .timeout = 120.0, ##__VA_ARGS__) \
    {                                                                           \
        suite##__##name##__body();                                              \
        tbx_fixture_check();                                                    \
    }                                                                           \
    static void suite##__##name##__body(void)

/* Options with the defaults and the given method. */
tbx_opts test_opts(tbx_method method);

/* Calls triple (the test plugin's plugin_triple) on 14 with opts and asserts
 * that it returns 42. */
void assert_triples(tbx_fn *triple, const tbx_opts *opts);

/* ------------------------------------------------------------- arguments
 * pack(sb, fmt, ...) initialises sb and packs into it, by fmt:
 *   i int64   u uint64   d double   s string (const char *)   n nil
 *   t true    f false    x bin (const void *, size_t)
 *   a array header (int count)   m map header (int count, then 2*count items)
 * Spaces are ignored.  The caller destroys sb with msgpack_sbuffer_destroy. */
void pack(msgpack_sbuffer *sb, const char *fmt, ...);

/* -------------------------------------------------------- reading values */
const msgpack_object *map_get(const msgpack_object *map, const char *key);
bool obj_str_eq(const msgpack_object *o, const char *s);
/* An integer of either sign as int64 (asserts it is an integer). */
int64_t obj_int(const msgpack_object *o);

/* -------------------------------------------------------- process state */
/* The descriptors process pid (0: this one) has open, without the one used
 * to list them: up to max of them into fds (which may be NULL if max is 0).
 * Returns how many there are, which may be more than max; -1 if pid is gone. */
int list_fds(pid_t pid, int *fds, int max);
#define MAX_FDS 4096
/* Open descriptors of this process (not counting the one used to list them). */
int count_fds(void);
/* What descriptor fd of this process is ("pipe:[123]", a path, ...), as
 * /proc/self/fd says; "" if it cannot tell. */
void fd_target(int fd, char *target, size_t len);
/* The same for descriptor fd of process pid. */
void proc_fd_target(pid_t pid, int fd, char *target, size_t len);
/* Writes "fd -> target" lines for every open descriptor into buf. */
void describe_fds(char *buf, size_t len);
/* Children of this process, running or zombie; pids into pids[0..max). */
int list_children(pid_t *pids, int max);
/* Children of process parent, running or zombie, as list_children. */
int list_children_of(pid_t parent, pid_t *pids, int max);
/* The same, less this process's forkserver: timebox's own long-lived child,
 * not one of a call's. */
int list_call_children(pid_t *pids, int max);
/* How many children pid has (/proc/pid/task/pid/children); -1 if that
 * cannot be read. */
int count_children_of(pid_t pid);
/* Reaps the zombies among our children (orphans a subreaper adopted, such as
 * a dead caller's forkserver), waiting up to timeout_s for them to exit. */
void reap_adopted(double timeout_s);
/* 'R', 'S', 'Z', ... for pid, or 0 if it does not exist. */
char proc_state(pid_t pid);
/* pid's cgroup v2 path (the "0::" line of /proc/pid/cgroup) into buf;
 * false if it cannot be read. */
bool proc_cgroup(pid_t pid, char *buf, size_t len);
/* Waits up to timeout_s for pid's cgroup v2 path (the "0::" line of
 * /proc/pid/cgroup) to be a leaf of the timebox base of process owner
 * (".../timebox-OWNER/cN"), copying the path into buf.  True if it was. */
bool wait_in_leaf_of(pid_t pid, pid_t owner, char *buf, size_t len, double timeout_s);
/* Waits up to timeout_s for pid to be gone: kill(pid, 0) fails with ESRCH,
 * or it is a zombie that is not our child (dead, its parent's to reap).
 * Returns true if it is gone. */
bool wait_gone(pid_t pid, double timeout_s);
/* Makes this test process the subreaper of its descendants, so orphaned
 * grandchildren become its children (and the fixture would notice them). */
void become_subreaper(void);

/* A fresh, empty temporary file (mkstemp) for a child to report through;
 * the test unlinks it. */
void temp_path(char *path, size_t len);
/* The pid a process wrote (as text) to path, 0 if none yet.  Asserts
 * nothing, so a forked helper process may use it. */
pid_t peek_pid(const char *path);
/* The pid a process wrote (as text) to path, waiting up to timeout_s for
 * the file to exist and hold one; asserts it came. */
pid_t read_pid_file(const char *path, double timeout_s);

/* ------------------------------------------------------ checking results */
/* What every result says: status mirrors the return value, and an error
 * comes with a message. */
void check_status(int rc, const tbx_result *r);
/* check_status, and more: no message on success, a nil value on error, a
 * non-negative elapsed time. */
void check_common(int rc, const tbx_result *r);

/* ------------------------------------------------------ async callbacks */
/* Moves the result into the tbx_result that req->data points to (the test
 * frees it). */
void move_cb(tbx_req *req, tbx_result *r);
/* Frees the result unread. */
void ignore_cb(tbx_req *req, tbx_result *r);
/* Counts its calls in count_calls, keeps the last one's status in
 * count_status, and frees the result. */
extern int count_calls, count_status;
void count_cb(tbx_req *req, tbx_result *r);
/* Initialises loop and starts on it an async call of fn with the args in
 * sb, whose result move_cb moves into *r (zeroed first); asserts both
 * worked. */
void start_async(uv_loop_t *loop, tbx_req *req, tbx_result *r, tbx_fn *fn,
                 const msgpack_sbuffer *sb, const tbx_opts *o);

/* An async call of fn_mixed (or of a function that ends as it does), and
 * what its callback found: hreq_cb counts the callbacks and keeps the first
 * mismatch (mixed_mismatch) in bad.  req.data must point to the hreq. */
struct hreq {
    tbx_req req;
    int kind, calls;
    int64_t n;
    char bad[256];
};
void hreq_cb(tbx_req *req, tbx_result *r);

/* ------------------------------------------------------------ payloads */
/* Patterned bytes, and a checksum the child and the parent both compute. */
unsigned char pattern(size_t i);
uint64_t fnv1a(const void *p, size_t len);
/* Packs a bin of len patterned bytes into sb (initialised here). */
void pack_big_bin(msgpack_sbuffer *sb, size_t len);
/* Args big enough to be written while the child already runs. */
#define BIG_ARGS ((size_t)64 << 20)

/* Monotonic seconds. */
double now_s(void);
void sleep_s(double s);

/* Raises RLIMIT_NOFILE's soft limit to the hard limit. */
void raise_nofile_limit(void);

/* ------------------------------------------- functions run in the child
 * Defined and registered (TBX_REGISTER) in helpers_calls.c. */

/* Packs its argument back. */
int fn_echo(const msgpack_object *args, msgpack_packer *result, void *ctx);
/* args: milliseconds to sleep (uint); packs the argument back. */
int fn_sleep_ms(const msgpack_object *args, msgpack_packer *result, void *ctx);
/* args: nil; ignores SIGTERM and sleeps 60 s. */
int fn_ignore_term(const msgpack_object *args, msgpack_packer *result, void *ctx);
/* raise(SIGSEGV). */
int fn_segv(const msgpack_object *args, msgpack_packer *result, void *ctx);
/* abort(). */
int fn_abort(const msgpack_object *args, msgpack_packer *result, void *ctx);
/* _exit(args). */
int fn_exit(const msgpack_object *args, msgpack_packer *result, void *ctx);
/* args [kind, n]: a mix for stress tests.
 *   0: ok, packs n * 2     1: sleeps 60 s (to time out)     2: raise(SIGSEGV)
 *   3: tbx_fail(n)         4: _exit(n)  */
int fn_mixed(const msgpack_object *args, msgpack_packer *result, void *ctx);

enum { MIX_OK, MIX_HANG, MIX_SEGV, MIX_FAIL, MIX_EXIT, MIX_KINDS };

/* NULL if r (returned as rc by a call of fn_mixed(kind, n)) is what that kind
 * gives, else what is wrong (a thread-local buffer).  Safe on any thread:
 * it asserts nothing, so threads can collect and the main thread assert. */
const char *mixed_mismatch(int kind, int64_t n, int rc, const tbx_result *r);

/* args: nil; -> [its pid, its cgroup v2 path ("" if unknown)]. */
int fn_where(const msgpack_object *args, msgpack_packer *result, void *ctx);
/* True if v (a result of fn_where) says pid, in the cgroup path cgroup. */
bool where_is(const msgpack_object *v, pid_t pid, const char *cgroup);

/* args: a bin; -> [its length, its fnv1a]. */
int fn_sum(const msgpack_object *args, msgpack_packer *result, void *ctx);

/* args: a size; packs a bin of that many bytes of pattern(). */
int fn_pattern(const msgpack_object *args, msgpack_packer *result, void *ctx);

/* args: a path; writes the child's pid there, then sleeps 60 s. */
int fn_pid_then_hang(const msgpack_object *args, msgpack_packer *result, void *ctx);

/* Sleeps s seconds even through signals; usable in a child. */
void child_sleep(double s);

#endif /* TBX_TEST_HELPERS_H */
