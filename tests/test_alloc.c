/*
 * Allocation failure at every allocation site on the caller's side.
 *
 * This program's own malloc, calloc and realloc stand in front of glibc's
 * (__libc_malloc and friends), so every allocation a call makes in this
 * process goes through them: timebox's, msgpack-c's zones, libuv's.  For
 * n = 0, 1, 2, ... the n-th allocation of one call fails; each time the call
 * must end with an error or a result, and leave behind no byte of memory, no
 * descriptor and no child.  The loop ends when a call makes no allocation
 * that was failed: every site has been tried.
 *
 * Built only without sanitizers, which own malloc themselves.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <string.h>
#include <timebox/uv.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t align, size_t size);
extern void __libc_free(void *p);

/* Bytes in use, counted here: glibc's own figure (mallinfo) counts chunks
 * parked in its per-thread cache as used, so a freed block would look
 * leaked. */
static atomic_long live_bytes;

static void *counted(void *p)
{
    if (p != NULL)
        atomic_fetch_add(&live_bytes, (long)malloc_usable_size(p));
    return p;
}

/* Armed by the thread under test: the countdown to the allocation that
 * fails (-1: none), and whether it came. */
static _Thread_local long countdown = -1;
static _Thread_local int fired;

static int fail_now(void)
{
    if (countdown < 0)
        return 0;
    if (countdown-- > 0)
        return 0;
    fired = 1;
    countdown = -1;
    return 1;
}

void *malloc(size_t size)
{
    if (fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return counted(__libc_malloc(size));
}

void *calloc(size_t n, size_t size)
{
    if (fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return counted(__libc_calloc(n, size));
}

void *realloc(void *p, size_t size)
{
    if (fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    long old = p != NULL ? (long)malloc_usable_size(p) : 0;
    void *q = __libc_realloc(p, size);
    if (q != NULL || size == 0)
        atomic_fetch_sub(&live_bytes, old);
    return counted(q);
}

void free(void *p)
{
    if (p != NULL)
        atomic_fetch_sub(&live_bytes, (long)malloc_usable_size(p));
    __libc_free(p);
}

void *memalign(size_t align, size_t size)
{
    return counted(__libc_memalign(align, size));
}

void *aligned_alloc(size_t align, size_t size)
{
    return counted(__libc_memalign(align, size));
}

int posix_memalign(void **out, size_t align, size_t size)
{
    void *p = counted(__libc_memalign(align, size));
    if (p == NULL)
        return ENOMEM;
    *out = p;
    return 0;
}

static size_t heap_in_use(void)
{
    return (size_t)atomic_load(&live_bytes);
}

#define MAX_SITES 400

/* What lives for the process (a forkserver's start, its options) is made
 * first, outside the count. */
static void start_up(tbx_method m)
{
    if (m == TBX_FORKSERVER)
        cr_assert_eq(tbx_forkserver_start(NULL), 0);
    if (m == TBX_POOL) {
        /* One pooled process, which each call takes and gives back (or,
         * when the call failed, replaces). */
        tbx_forkserver_opts fo;
        tbx_forkserver_opts_init(&fo);
        fo.pool_size = 1;
        cr_assert_eq(tbx_forkserver_start(&fo), 0);
    }
}

TBX_TEST_T(alloc, every_blocking_call_site_fails_cleanly, 300.0)
{
    start_up(*method);
    msgpack_sbuffer sb;
    pack(&sb, "a s u", 2, "some args", (uint64_t)7);
    int n, errors = 0;
    for (n = 0; n < MAX_SITES; n++) {
        tbx_opts o = test_opts(*method);
        o.timeout_s = 30;
        int fds = count_fds();
        size_t heap = heap_in_use();
        tbx_result r;
        fired = 0;
        countdown = n;
        int rc = tbx_call(fn_echo, sb.data, sb.size, &o, &r);
        countdown = -1;
        cr_assert_eq(r.status, rc);
        if (rc != 0) {
            errors++;
            cr_assert_not_null(r.message, "site %d: %s without a message", n, tbx_err_name(rc));
        } else {
            cr_assert_eq(r.value.type, MSGPACK_OBJECT_ARRAY, "site %d: a wrong result", n);
        }
        tbx_result_free(&r);
        /* The heap first: the checks below allocate (and free) themselves. */
        size_t heap_after = heap_in_use();
        cr_assert_eq(heap_after, heap, "site %d (%s): %zd bytes leaked", n, tbx_err_name(rc),
                     (ssize_t)(heap_after - heap));
        cr_assert_eq(count_fds(), fds, "site %d (%s): a descriptor leaked", n, tbx_err_name(rc));
        pid_t kids[4];
        cr_assert_eq(list_call_children(kids, 4), 0, "site %d: a child is left", n);
        if (!fired) {
            cr_assert_eq(rc, 0, "no allocation failed, yet %s", tbx_err_name(rc));
            break; /* the call made fewer than n + 1 allocations: all tried */
        }
    }
    cr_assert_lt(n, MAX_SITES, "more than %d allocations in one call", MAX_SITES);
    cr_assert_gt(errors, 0, "no injected failure was ever seen");
    cr_log_info("%d allocation sites, %d of them failing the call", n, errors);
    msgpack_sbuffer_destroy(&sb);
}

TBX_TEST_T(alloc, every_async_call_site_fails_cleanly, 300.0)
{
    start_up(*method);
    msgpack_sbuffer sb;
    pack(&sb, "s", "async");
    int n;
    for (n = 0; n < MAX_SITES; n++) {
        int fds = count_fds();
        size_t heap = heap_in_use();
        uv_loop_t loop;
        cr_assert_eq(uv_loop_init(&loop), 0);
        tbx_opts o = test_opts(*method);
        o.timeout_s = 30;
        tbx_req req;
        count_calls = 0;
        fired = 0;
        countdown = n;
        int rc = tbx_call_async(&loop, &req, fn_echo, sb.data, sb.size, &o, count_cb);
        uv_run(&loop, UV_RUN_DEFAULT);
        countdown = -1;
        int closed = uv_loop_close(&loop);
        size_t heap_after = heap_in_use();
        if (rc != 0)
            cr_assert_eq(count_calls, 0, "site %d: refused (%s), yet called back", n,
                         tbx_err_name(rc));
        else
            cr_assert_eq(count_calls, 1, "site %d: %d callbacks", n, count_calls);
        cr_assert_eq(closed, 0, "site %d: a handle is left on the loop", n);
        cr_assert_eq(count_fds(), fds, "site %d: a descriptor leaked", n);
        pid_t kids[4];
        cr_assert_eq(list_call_children(kids, 4), 0, "site %d: a child is left", n);
        cr_assert_eq(heap_after, heap, "site %d: %zd bytes leaked", n,
                     (ssize_t)(heap_after - heap));
        if (!fired) {
            cr_assert_eq(rc, 0);
            cr_assert_eq(count_status, 0, "no allocation failed, yet %s",
                         tbx_err_name(count_status));
            break;
        }
    }
    cr_assert_lt(n, MAX_SITES);
    msgpack_sbuffer_destroy(&sb);
}
