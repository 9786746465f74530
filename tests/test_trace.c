/*
 * The tracer (lib/trace.c): a trace taken from outside a process with
 * ptrace and libdwfl names the function each thread is in, with its file
 * and line, whatever the process does: spin with every signal blocked,
 * deadlock on a lock, stop, or hang in malloc after a fork from threads.
 *
 * The children here are plain forks of the test process (the tracer's own
 * children, as the caller's are for fork and spawn).  The suite is built
 * with debug information (RelWithDebInfo), so its functions have a file and
 * a line.
 */
#include "helpers.h"

#include "../lib/os.h"
#include "../lib/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Generous: the machine running the tests may be loaded; the default
 * budget is the engine's, and its bound has a test of its own. */
#define TEST_BUDGET_NS ((uint64_t)5 * 1000 * 1000 * 1000)

static void need_tracer(void)
{
    const char *why;
    if (!tbx__trace_available(&why))
        cr_skip_test("no tracer: %s", why);
}

static volatile unsigned long *shared_counter(void)
{
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(p != MAP_FAILED);
    return p;
}

static volatile unsigned long *spin_counter;

/* Forks a child that writes a byte on a pipe once it is ready, then runs
 * body(arg); returns its pid once the byte has come. */
static pid_t start_child(void (*body)(int ready_fd, void *arg), void *arg, int raw_fork)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    pid_t pid = raw_fork ? (pid_t)syscall(SYS_fork) : fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        /* Dies with the test, should an assertion end it early. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(p[0]);
        body(p[1], arg);
        _exit(0);
    }
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1, "the child did not get ready");
    close(p[0]);
    return pid;
}

static void end_child(pid_t pid)
{
    kill(pid, SIGKILL);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %#x", st);
}

/* Waits until the child spins in spin_with_signals_blocked (past its
 * ready byte's write). */
static void wait_spinning(void)
{
    for (int i = 0; i < 5000 && *spin_counter == 0; i++)
        sleep_s(0.001);
    cr_assert_gt(*spin_counter, 0, "the child never spun");
}

static char *trace_of(pid_t pid, pid_t fn_tid, uint64_t budget_ns)
{
    char *text = NULL;
    int r = tbx__trace(pid, fn_tid, budget_ns, &text);
    cr_assert_eq(r, 0, "tbx__trace: %s", strerror(-r));
    cr_assert(text != NULL);
    cr_log_info("%s", text);
    return text;
}

/* The line of text that names fn, checked to give this file and a line. */
static void assert_frame(const char *text, const char *fn)
{
    char want[128];
    snprintf(want, sizeof want, " %s+0x", fn);
    const char *at = strstr(text, want);
    cr_assert(at != NULL, "no frame in %s:\n%s", fn, text);
    const char *eol = strchr(at, '\n');
    const char *file = strstr(at, "test_trace.c:");
    cr_assert(file != NULL && (eol == NULL || file < eol), "no file and line for %s:\n%s", fn,
              text);
    int line = atoi(file + strlen("test_trace.c:"));
    cr_assert_gt(line, 0, "%s", text);
}

/* A child asleep on a futex within tries * 2 ms: waiting on a lock (the
 * malloc loop and the lock test's child never sleep otherwise). */
static int is_stuck(pid_t pid, int tries)
{
    char path[64], wchan[64] = "";
    snprintf(path, sizeof path, "/proc/%d/wchan", (int)pid);
    for (int i = 0; i < tries; i++) {
        sleep_s(0.002);
        FILE *f = fopen(path, "re");
        if (f == NULL)
            return 0;
        size_t n = fread(wchan, 1, sizeof wchan - 1, f);
        fclose(f);
        wchan[n] = '\0';
        if (proc_state(pid) == 'S' && strstr(wchan, "futex") != NULL)
            return 1;
    }
    return 0;
}

static void block_all_signals(void)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
}

/* A call as the last statement may become a jump, leaving no frame of the
 * caller on the stack; the functions whose frames the tests look for end
 * with this instead. */
#define NOT_A_TAIL_CALL() __asm__ volatile("" ::: "memory")

__attribute__((noinline)) static void spin_with_signals_blocked(void)
{
    /* Never ends in practice; the test that counts is not infinite for the
     * compiler, which would otherwise fold the recursion below into it. */
    while (*spin_counter != ~0UL)
        (*spin_counter)++;
}

static void spin_body(int ready_fd, void *arg)
{
    TBX__UNUSED(arg);
    block_all_signals();
    (void)write(ready_fd, "r", 1);
    spin_with_signals_blocked();
}

TBX_PLAIN_TEST(trace, names_the_function_of_a_child_blocking_every_signal)
{
    need_tracer();
    spin_counter = shared_counter();
    pid_t pid = start_child(spin_body, NULL, 0);
    wait_spinning();
    char *text = trace_of(pid, pid, TEST_BUDGET_NS);
    assert_frame(text, "spin_with_signals_blocked");
    char head[64];
    snprintf(head, sizeof head, "thread %d ", (int)pid);
    cr_assert(strncmp(text, head, strlen(head)) == 0, "%s", text);
    cr_assert(strstr(text, "(fn):\n") != NULL, "%s", text);
    free(text);
    /* Left as it was found: running (on a loaded machine it may wait a
     * while for a CPU). */
    unsigned long before = *spin_counter;
    for (int i = 0; i < 10000 && *spin_counter == before; i++)
        sleep_s(0.001);
    cr_assert_gt(*spin_counter, before, "the child did not run on after the trace");
    end_child(pid);
}

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;

__attribute__((noinline)) static void deadlock_on_held_lock(void)
{
    pthread_mutex_lock(&held);
    pthread_mutex_lock(&held); /* a default mutex: waits for itself forever */
    NOT_A_TAIL_CALL();
}

static void lock_body(int ready_fd, void *arg)
{
    TBX__UNUSED(arg);
    block_all_signals();
    (void)write(ready_fd, "r", 1);
    deadlock_on_held_lock();
}

TBX_PLAIN_TEST(trace, names_the_function_of_a_child_deadlocked_on_a_lock)
{
    need_tracer();
    pid_t pid = start_child(lock_body, NULL, 0);
    cr_assert(is_stuck(pid, 5000), "the child never waited on the lock");
    char *text = trace_of(pid, pid, TEST_BUDGET_NS);
    assert_frame(text, "deadlock_on_held_lock");
    free(text);
    end_child(pid);
}

/* The frames of a trace as named, one per line, without their addresses
 * and the threads' ids (which differ from one child to the next). */
static void frame_names(const char *text, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (p[0] != '#')
            continue;
        const char *name = strstr(p, " 0x");
        name = name != NULL ? strchr(name + 1, ' ') : NULL;
        const char *eol = strchr(p, '\n');
        if (name == NULL || eol == NULL || len + (size_t)(eol - name) + 2 > cap)
            continue;
        memcpy(out + len, name, (size_t)(eol - name + 1));
        len += (size_t)(eol - name + 1);
        out[len] = '\0';
    }
}

/* A second child of the same program, at the same addresses as a fork
 * child is: its frames come named as the first's were, from the files the
 * first trace read, none read again. */
TBX_PLAIN_TEST(trace, a_second_trace_names_the_same_frames_reading_no_file_again)
{
    need_tracer();
    /* Both children from one call site: their stacks are the same. */
    char *text[2];
    unsigned long reads = 0;
    for (int i = 0; i < 2; i++) {
        pid_t pid = start_child(lock_body, NULL, 0);
        cr_assert(is_stuck(pid, 5000), "the child never waited on the lock");
        text[i] = trace_of(pid, pid, TEST_BUDGET_NS);
        end_child(pid);
        if (i == 0)
            reads = tbx__trace_cache_reads();
    }
    cr_assert_gt(reads, 0, "the first trace read no file into the cache");
    cr_assert_eq(tbx__trace_cache_reads(), reads, "the second trace read files again");
    char *text1 = text[0], *text2 = text[1];
    assert_frame(text2, "deadlock_on_held_lock");
    static char names1[16384], names2[16384];
    frame_names(text1, names1, sizeof names1);
    frame_names(text2, names2, sizeof names2);
    cr_assert_str_eq(names2, names1, "first:\n%s\nsecond:\n%s", text1, text2);
    cr_assert(strstr(names2, "pthread_mutex_lock") != NULL, "%s", text2);
    free(text1);
    free(text2);
}

/* Over its bound in bytes, the cache drops the files no trace holds, once
 * a trace is done with them: the next trace reads them again, and names
 * the frames as before. */
TBX_PLAIN_TEST(trace, the_cache_over_its_bytes_drops_what_no_trace_holds)
{
    need_tracer();
    char *text[4];
    unsigned long reads[4];
    size_t bytes[4];
    for (int i = 0; i < 4; i++) {
        /* From the third trace on, the cache is bounded to a byte. */
        if (i == 2)
            (void)tbx__trace_cache_bytes(1);
        pid_t pid = start_child(lock_body, NULL, 0);
        cr_assert(is_stuck(pid, 5000), "the child never waited on the lock");
        text[i] = trace_of(pid, pid, TEST_BUDGET_NS);
        end_child(pid);
        reads[i] = tbx__trace_cache_reads();
        bytes[i] = tbx__trace_cache_bytes(0);
    }
    (void)tbx__trace_cache_bytes(TBX__TRACE_CACHE_BYTES);
    cr_assert_gt(bytes[0], 0, "the first trace's files weigh nothing");
    cr_assert_eq(reads[1], reads[0], "the second trace read files again");
    cr_assert_eq(bytes[1], bytes[0]);
    cr_assert_eq(reads[2], reads[0], "the third trace read files again");
    cr_assert_leq(bytes[2], 1, "%zu bytes kept over a bound of 1", bytes[2]);
    cr_assert_gt(reads[3], reads[2], "the fourth trace found the files dropped before");
    static char names[4][16384];
    for (int i = 0; i < 4; i++) {
        frame_names(text[i], names[i], sizeof names[i]);
        cr_assert_str_eq(names[i], names[0], "%s\n%s", text[0], text[i]);
        free(text[i]);
    }
}

/* In a fork child of the test: traces a child of its own, and says by its
 * exit status whether it started with an empty cache (1 if not), then read
 * the files again (2 if not) and named fn's frame (3 if not). */
static int trace_in_fork_child(void)
{
    if (tbx__trace_cache_bytes(0) != 0)
        return 1;
    unsigned long reads = tbx__trace_cache_reads();
    pid_t pid = start_child(lock_body, NULL, 0);
    char *text = NULL;
    int r = is_stuck(pid, 5000) ? tbx__trace(pid, pid, TEST_BUDGET_NS, &text) : -1;
    kill(pid, SIGKILL);
    (void)waitpid(pid, NULL, 0);
    if (tbx__trace_cache_reads() == reads)
        return 2;
    return r == 0 && strstr(text, " deadlock_on_held_lock+0x") != NULL ? 0 : 3;
}

/* A fork child forgets its parent's cache (another thread may have held a
 * file at the fork): its traces read the files afresh. */
TBX_PLAIN_TEST(trace, a_fork_child_starts_with_an_empty_cache)
{
    need_tracer();
    pid_t pid = start_child(lock_body, NULL, 0);
    cr_assert(is_stuck(pid, 5000), "the child never waited on the lock");
    free(trace_of(pid, pid, TEST_BUDGET_NS));
    end_child(pid);
    cr_assert_gt(tbx__trace_cache_bytes(0), 0);
    pid_t sub = fork();
    cr_assert(sub >= 0);
    if (sub == 0)
        _exit(trace_in_fork_child());
    int st;
    cr_assert_eq(waitpid(sub, &st, 0), sub);
    cr_assert(WIFEXITED(st), "status %#x", st);
    cr_assert_eq(WEXITSTATUS(st), 0, "1: the cache was not empty; 2: no file read again; 3: no "
                                     "trace naming fn");
}

/* One thread's trace of one child, for the test below. */
typedef struct trace_job {
    pid_t pid;
    int rc;
    char *text;
} trace_job;

static void *trace_job_run(void *arg)
{
    trace_job *job = arg;
    job->rc = tbx__trace(job->pid, job->pid, TEST_BUDGET_NS, &job->text);
    return NULL;
}

/* Threads tracing children of the same program at once share the cache's
 * files as they are read: every trace names the frames as the others. */
TBX_PLAIN_TEST(trace, traces_taken_at_once_by_several_threads_name_the_same_frames)
{
    need_tracer();
    enum { N = 4 };
    trace_job jobs[N];
    pthread_t threads[N];
    for (int i = 0; i < N; i++) {
        jobs[i] = (trace_job){start_child(lock_body, NULL, 0), -1, NULL};
        cr_assert(is_stuck(jobs[i].pid, 5000), "the child never waited on the lock");
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(pthread_create(&threads[i], NULL, trace_job_run, &jobs[i]), 0);
    static char names[N][16384];
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        end_child(jobs[i].pid);
        cr_assert_eq(jobs[i].rc, 0, "tbx__trace: %s", strerror(-jobs[i].rc));
        cr_log_info("%s", jobs[i].text);
        assert_frame(jobs[i].text, "deadlock_on_held_lock");
        frame_names(jobs[i].text, names[i], sizeof names[i]);
        cr_assert_str_eq(names[i], names[0], "%s\n%s", jobs[0].text, jobs[i].text);
    }
    for (int i = 0; i < N; i++)
        free(jobs[i].text);
}

static void stop_body(int ready_fd, void *arg)
{
    TBX__UNUSED(arg);
    spin_counter = (volatile unsigned long *)arg;
    (void)write(ready_fd, "r", 1);
    spin_with_signals_blocked();
}

TBX_PLAIN_TEST(trace, traces_a_stopped_child_and_leaves_it_stopped)
{
    need_tracer();
    spin_counter = shared_counter();
    pid_t pid = start_child(stop_body, (void *)spin_counter, 0);
    wait_spinning();
    kill(pid, SIGSTOP);
    int st;
    cr_assert_eq(waitpid(pid, &st, WUNTRACED), pid);
    cr_assert(WIFSTOPPED(st));
    char *text = trace_of(pid, pid, TEST_BUDGET_NS);
    assert_frame(text, "spin_with_signals_blocked");
    free(text);
    cr_assert_eq(proc_state(pid), 'T', "the child was let run");
    unsigned long before = *spin_counter;
    sleep_s(0.02);
    cr_assert_eq(*spin_counter, before);
    end_child(pid);
}

/* Side threads of threads_body that have reached their function. */
static unsigned side_threads_in;

__attribute__((noinline)) static void *wait_in_side_thread(void *arg)
{
    TBX__UNUSED(arg);
    __atomic_add_fetch(&side_threads_in, 1, __ATOMIC_RELEASE);
    for (;;)
        pause();
    return NULL;
}

static void threads_body(int ready_fd, void *arg)
{
    TBX__UNUSED(arg);
    for (int i = 0; i < 3; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, wait_in_side_thread, NULL) != 0)
            _exit(1);
    }
    /* Ready only once every side thread is in its function: on a loaded
     * machine one just created may still be in clone3. */
    while (__atomic_load_n(&side_threads_in, __ATOMIC_ACQUIRE) < 3)
        sched_yield();
    block_all_signals();
    (void)write(ready_fd, "r", 1);
    spin_with_signals_blocked();
}

TBX_PLAIN_TEST(trace, lists_every_thread_with_fns_first)
{
    need_tracer();
#if defined(__SANITIZE_ADDRESS__)
    /* A forked child's new threads start in the sanitizer's own set-up,
     * which can wait on its allocator's lock before they reach their
     * function: where they are is then not where this test expects. */
    cr_skip_test("the threads of a child forked under AddressSanitizer may not reach their "
                 "functions");
#endif
    spin_counter = shared_counter();
    pid_t pid = start_child(threads_body, NULL, 0);
    wait_spinning();
    char *text = trace_of(pid, pid, TEST_BUDGET_NS);
    int threads = 0;
    for (const char *p = text; p != NULL; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        threads += strncmp(p, "thread ", 7) == 0;
    cr_assert_eq(threads, 4, "%s", text);
    const char *fn_at = strstr(text, "spin_with_signals_blocked+0x");
    const char *side_at = strstr(text, "wait_in_side_thread+0x");
    cr_assert(fn_at != NULL && side_at != NULL && fn_at < side_at, "%s", text);
    assert_frame(text, "wait_in_side_thread");
    free(text);
    end_child(pid);
}

/* Fork from threads: a thread allocates without pause while the test forks
 * with the raw system call, which skips glibc's fork handlers (as a fork
 * from another library or a clone would): a child forked while the thread
 * held the arena lock waits for it forever inside malloc. */
static volatile int churning = 1;

static void *churn_malloc(void *arg)
{
    TBX__UNUSED(arg);
    unsigned size = 1;
    while (churning) {
        /* Past the thread cache's sizes: each call takes the arena lock. */
        size = size * 1103515245u + 12345u;
        void *p = malloc(2048 + (size >> 16) % 60000);
        free(p);
    }
    return NULL;
}

__attribute__((noinline)) static void allocate_after_fork(void)
{
    for (;;) {
        void *volatile p = malloc(4000);
        free(p);
        (*spin_counter)++;
    }
    NOT_A_TAIL_CALL();
}

static void malloc_body(int ready_fd, void *arg)
{
    TBX__UNUSED(arg);
    (void)write(ready_fd, "r", 1);
    allocate_after_fork();
}

TBX_PLAIN_TEST(trace, names_the_function_of_a_child_deadlocked_in_malloc)
{
    need_tracer();
    spin_counter = shared_counter();
    /* One arena for every thread: the child's malloc takes the lock the
     * other thread may have held at the fork. */
    mallopt(M_ARENA_MAX, 1);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, churn_malloc, NULL), 0);
    pid_t pid = -1;
    for (int tries = 0; tries < 300 && pid < 0; tries++) {
        pid_t p = start_child(malloc_body, NULL, 1);
        if (is_stuck(p, 10))
            pid = p;
        else
            end_child(p);
    }
    churning = 0;
    pthread_join(t, NULL);
    if (pid < 0)
        cr_skip_test("no fork caught the arena lock held");
    char *text = trace_of(pid, pid, TEST_BUDGET_NS);
    assert_frame(text, "allocate_after_fork");
    cr_assert(strstr(text, "malloc") != NULL, "%s", text);
    free(text);
    end_child(pid);
}

/* Threads of deep_body that have reached the bottom of their recursion. */
static unsigned deep_threads_down;

__attribute__((noinline)) static void recurse_then_spin(int depth)
{
    if (depth > 0) {
        recurse_then_spin(depth - 1);
    } else {
        __atomic_add_fetch(&deep_threads_down, 1, __ATOMIC_RELEASE);
        spin_with_signals_blocked();
    }
    NOT_A_TAIL_CALL();
}

static void *deep_thread(void *arg)
{
    TBX__UNUSED(arg);
    recurse_then_spin(200);
    return NULL;
}

static void deep_body(int ready_fd, void *arg)
{
    TBX__UNUSED(arg);
    for (int i = 0; i < 40; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, deep_thread, NULL) != 0)
            _exit(1);
    }
    /* Ready only once every thread is deep: on a loaded machine a thread just
     * created may not have run yet, and its stack would be a few frames. */
    while (__atomic_load_n(&deep_threads_down, __ATOMIC_ACQUIRE) < 40)
        sched_yield();
    (void)write(ready_fd, "r", 1);
    recurse_then_spin(200);
}

TBX_PLAIN_TEST(trace, a_trace_is_bounded_in_size)
{
    need_tracer();
    spin_counter = shared_counter();
    pid_t pid = start_child(deep_body, NULL, 0);
    wait_spinning();
    char *text = trace_of(pid, pid, (uint64_t)10 * 1000 * 1000 * 1000);
    cr_assert_lt(strlen(text), TBX__TRACE_MAX);
    cr_assert(strstr(text, "... (more frames)") != NULL, "%s", text);
    cr_assert(strstr(text, "... (trace truncated)\n") != NULL, "%.2000s", text);
    free(text);
    end_child(pid);
}

TBX_PLAIN_TEST(trace, a_process_that_is_gone_is_esrch)
{
    need_tracer();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0)
        _exit(0);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    char *text = NULL;
    cr_assert_eq(tbx__trace(pid, pid, TBX__TRACE_BUDGET_NS, &text), -ESRCH);
    cr_assert_null(text);
}
