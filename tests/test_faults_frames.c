/*
 * The fault matrix, frames: bytes the function writes straight to its result
 * descriptor (garbage, truncated, oversize, zero-length, trailing, a second
 * START) are refused as what they are, under every start method.
 */
#define _GNU_SOURCE
#include "helpers.h"
#include "../lib/os.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---------------------------------------------- raw frames from the child
 *
 * The result descriptor is found without knowing the method: it is the one
 * pipe write end at fd >= 3 that is blocking (libuv's loop pipes are not),
 * whose pipe the caller did not have open before the call (the caller sends
 * the inodes of the pipes it had) and does have open now (the caller sends
 * its pid; its engine holds the read end).  That leaves out the pipes a
 * child has of its own, such as libuv's signal lock, which libuv makes anew
 * in every fork child.  A fork or spawn child's result descriptor is a
 * socket instead, found where no pipe is: one the caller made (its peer's
 * credentials say the caller's pid), blocking, not there before the call,
 * and closed by the caller since (the caller keeps the other end, which a
 * fork child inherits too).  Not exactly one: _exit(77 + how many). */
static unsigned long pipe_inode(const char *target)
{
    unsigned long ino = 0;
    if (sscanf(target, "pipe:[%lu]", &ino) == 1 || sscanf(target, "socket:[%lu]", &ino) == 1)
        return ino;
    return 0;
}

/* 1 if fd is a socket whose peer was made by pid (socketpair). */
static int socket_of(int fd, pid_t pid)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && cr.pid == pid;
}

/* The pipe inodes among pid's (0: this process's) descriptors, up to max. */
static int pipes_of(pid_t pid, unsigned long *ino, int max)
{
    int fds[MAX_FDS];
    int nfds = list_fds(pid, fds, MAX_FDS), n = 0;
    for (int k = 0; k < nfds && k < MAX_FDS && n < max; k++) {
        char target[64];
        proc_fd_target(pid > 0 ? pid : getpid(), fds[k], target, sizeof target);
        unsigned long i = pipe_inode(target);
        if (i != 0)
            ino[n++] = i;
    }
    return n;
}

static int find_result_fd_once(const msgpack_object *known, pid_t caller)
{
    static unsigned long callers[1024];
    int ncallers = pipes_of(caller, callers, 1024);
    static int fds[MAX_FDS];
    int nfds = list_fds(0, fds, MAX_FDS);
    if (nfds < 0)
        _exit(76);
    int found = -1, found_sock = -1, n = 0;
    for (int k = 0; k < nfds && k < MAX_FDS; k++) {
        int fd = fds[k];
        if (fd < 3)
            continue;
        char target[64];
        fd_target(fd, target, sizeof target);
        unsigned long ino = pipe_inode(target);
        int fl = fcntl(fd, F_GETFL);
        int sock = strncmp(target, "socket:", 7) == 0;
        if (ino == 0 || fl < 0 || (fl & O_NONBLOCK) ||
            (fl & O_ACCMODE) != (sock ? O_RDWR : O_WRONLY) || (sock && !socket_of(fd, caller)))
            continue;
        int old = 0, theirs = 0;
        for (uint32_t i = 0; i < known->via.array.size; i++)
            old |= known->via.array.ptr[i].via.u64 == ino;
        for (int i = 0; i < ncallers; i++)
            theirs |= callers[i] == ino;
        if (sock) /* the caller holds the other end, of another inode, not this one */
            theirs = !theirs;
        if (!old && theirs && !sock) {
            found = fd;
            n++;
        } else if (!old && theirs && found_sock == -1) {
            found_sock = fd;
        } else if (!old && theirs) {
            found_sock = -2;
        }
    }
    /* A socket passes for the result only where no pipe does. */
    if (n == 0 && found_sock >= 0) {
        found = found_sock;
        n = 1;
    }
    if (n > 1)
        _exit(77 + (n > 20 ? 20 : n));
    return n == 1 ? found : -1;
}

/* The caller closes its copy of a fork child's result socket just after
 * the fork: until then the socket is not told apart, so none found is
 * looked for again, for up to two seconds. */
static int find_result_fd(const msgpack_object *known, pid_t caller)
{
    for (int tries = 0; tries < 2000; tries++) {
        int fd = find_result_fd_once(known, caller);
        if (fd >= 0)
            return fd;
        usleep(1000);
    }
    _exit(77);
}

enum { RAW_EXIT, RAW_RETURN };

/* args [bytes (bin), known pipe inodes, mode, caller pid]: writes bytes to the result
 * descriptor, then _exit(0) (RAW_EXIT) or returns 5 the usual way
 * (RAW_RETURN: timebox writes its own frame after them). */
static int fn_raw(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    const msgpack_object *a = args->via.array.ptr;
    int fd = find_result_fd(&a[1], (pid_t)a[3].via.u64);
    const char *p = a[0].via.bin.ptr;
    size_t left = a[0].via.bin.size;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(75);
        p += w;
        left -= (size_t)w;
    }
    if (a[2].via.u64 == RAW_EXIT)
        _exit(0);
    return msgpack_pack_int(pk, 5);
}
TBX_REGISTER(fn_raw);

/* How fn_raw_fds forges the memfd it sends with an OK_BULK header. */
enum { FDS_GOOD, FDS_TWO, FDS_UNSEALED, FDS_SHORT, FDS_NONE, NFDS_HOW };

/* A memfd holding the 5 bytes [1, "ok"] (and pad more), sealed or not. */
static int forged_memfd(size_t pad, int seal)
{
    static const unsigned char v[] = {0x92, 0x01, 0xa2, 'o', 'k'};
    int fd = memfd_create("forged", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || write(fd, v, sizeof v) != (ssize_t)sizeof v || ftruncate(fd, 5 + (off_t)pad))
        _exit(74);
    if (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK) != 0)
        _exit(74);
    return fd;
}

/* args as fn_raw's, then how: sends the bytes (an OK_BULK header of 5)
 * with the descriptors `how` says, in one message, and _exits. */
static int fn_raw_fds(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx, (void)pk;
    const msgpack_object *a = args->via.array.ptr;
    int fd = find_result_fd(&a[1], (pid_t)a[3].via.u64);
    int how = (int)a[4].via.i64, fds[2] = {-1, -1}, nfds = how == FDS_NONE ? 0 : 1;
    fds[0] = forged_memfd(how == FDS_SHORT ? 1 : 0, how != FDS_UNSEALED);
    if (how == FDS_TWO)
        fds[nfds++] = forged_memfd(0, 1);
    size_t len = a[0].via.bin.size;
    _exit(tbx__send_fds(fd, a[0].via.bin.ptr, len, fds, nfds, 0) == (ssize_t)len ? 0 : 75);
}
TBX_REGISTER(fn_raw_fds);

/* A frame header as the child writes it (see lib/wire.h: host byte
 * order, magic "TBX1"). */
struct frame_hdr {
    uint32_t magic, kind;
    int32_t fail_code;
    uint32_t reserved;
    uint64_t len;
};
#define FRAME_MAGIC 0x31584254u
enum { K_OK = 1, K_FAIL = 2, K_START = 3, K_ERROR = 4, K_OK_BULK = 5 };

struct raw {
    unsigned char buf[512];
    size_t len;
};

static void raw_hdr(struct raw *r, uint32_t magic, uint32_t kind, int32_t code, uint32_t reserved,
                    uint64_t len)
{
    struct frame_hdr h = {magic, kind, code, reserved, len};
    cr_assert_leq(r->len + sizeof h, sizeof r->buf);
    memcpy(r->buf + r->len, &h, sizeof h);
    r->len += sizeof h;
}

static void raw_bytes(struct raw *r, const void *p, size_t len)
{
    cr_assert_leq(r->len + len, sizeof r->buf);
    memcpy(r->buf + r->len, p, len);
    r->len += len;
}

/* Runs fn (fn_raw, or fn_raw_fds with its fifth arg, how) with these bytes. */
static int raw_call_fn(tbx_fn *fn, tbx_method m, const struct raw *bytes, int mode, int soft,
                       int how, tbx_result *r)
{
    unsigned long ino[256];
    int n = pipes_of(0, ino, 256);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, fn == fn_raw ? 4 : 5);
    msgpack_pack_bin_with_body(&pk, bytes->buf, bytes->len);
    msgpack_pack_array(&pk, (size_t)n);
    for (int i = 0; i < n; i++)
        msgpack_pack_uint64(&pk, ino[i]);
    msgpack_pack_int(&pk, mode);
    msgpack_pack_uint64(&pk, (uint64_t)getpid());
    if (fn != fn_raw)
        msgpack_pack_int(&pk, how);
    tbx_opts o = test_opts(m);
    o.timeout_s = 60;
    o.hard_timeout = !soft;
    int rc = tbx_call(fn, sb.data, sb.size, &o, r);
    msgpack_sbuffer_destroy(&sb);
    check_status(rc, r);
    cr_assert(rc == 0 || r->exit_code < 75 || r->exit_code > 97,
              "the function could not find its result descriptor (exit %d)", r->exit_code);
    return rc;
}

static int raw_call(tbx_method m, const struct raw *bytes, int mode, int soft, tbx_result *r)
{
    return raw_call_fn(fn_raw, m, bytes, mode, soft, 0, r);
}

/* =============================================================== frames */

/* The function's own frame, written raw, is taken as a result: this proves
 * the descriptor finder, so the failures below are about the bytes. */
TBX_TEST(frames, raw_valid_frames_are_results)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process's frames carry its word on the call: test_pool.c");
    struct raw b = {.len = 0};
    unsigned char v[] = {0x92, 0x01, 0xa2, 'o', 'k'}; /* [1, "ok"] */
    raw_hdr(&b, FRAME_MAGIC, K_OK, 0, 0, sizeof v);
    raw_bytes(&b, v, sizeof v);
    tbx_result r;
    int rc = raw_call(*method, &b, RAW_EXIT, 0, &r);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_ARRAY);
    cr_assert(obj_str_eq(&r.value.via.array.ptr[1], "ok"));
    tbx_result_free(&r);

    struct raw f = {.len = 0};
    raw_hdr(&f, FRAME_MAGIC, K_FAIL, 33, 0, 4);
    raw_bytes(&f, "oops", 4);
    rc = raw_call(*method, &f, RAW_EXIT, 0, &r);
    cr_assert_eq(rc, TBX_EFAILED, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.fail_code, 33);
    cr_assert_str_eq(r.message, "oops");
    tbx_result_free(&r);
}

TBX_TEST(frames, garbage_and_bad_headers_are_eproto)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process's frames carry its word on the call: test_pool.c");
    struct {
        const char *what;
        struct raw b;
    } cases[14];
    size_t n = 0;
    memset(cases, 0, sizeof cases);

    cases[n].what = "garbage";
    for (int i = 0; i < 100; i++)
        cases[n].b.buf[i] = (unsigned char)(i * 37 + 11);
    cases[n++].b.len = 100;

    cases[n].what = "text";
    raw_bytes(&cases[n++].b, "hello, I am not a frame at all, just text\n", 42);

    cases[n].what = "bad magic";
    raw_hdr(&cases[n].b, 0x31584255u, K_OK, 0, 0, 1);
    raw_bytes(&cases[n++].b, "\xc0", 1);

    cases[n].what = "reserved set";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_OK, 0, 1, 1);
    raw_bytes(&cases[n++].b, "\xc0", 1);

    cases[n].what = "unknown kind";
    raw_hdr(&cases[n].b, FRAME_MAGIC, 99, 0, 0, 1);
    raw_bytes(&cases[n++].b, "\xc0", 1);

    cases[n].what = "kind 0";
    raw_hdr(&cases[n].b, FRAME_MAGIC, 0, 0, 0, 0);
    n++;

    cases[n].what = "fail message over 1023 bytes";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_FAIL, 1, 0, 1024);
    raw_bytes(&cases[n++].b, "xxxx", 4);

    cases[n].what = "START with a payload";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_START, 0, 0, 3);
    raw_bytes(&cases[n++].b, "abc", 3);

    cases[n].what = "zero-length OK";
    raw_hdr(&cases[n++].b, FRAME_MAGIC, K_OK, 0, 0, 0);

    cases[n].what = "OK payload not msgpack";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_OK, 0, 0, 1);
    raw_bytes(&cases[n++].b, "\xc1", 1);

    cases[n].what = "ERROR with a code no worker sends";
    raw_hdr(&cases[n].b, FRAME_MAGIC, K_ERROR, 12345, 0, 2);
    raw_bytes(&cases[n++].b, "no", 2);

    /* The result is in the bulk memfd, says the child; but nothing is
     * there, and nothing sealed it. */
    cases[n].what = "bulk result in an unsealed, empty memfd";
    raw_hdr(&cases[n++].b, FRAME_MAGIC, K_OK_BULK, 0, 0, 4096);

    cases[n].what = "zero-length bulk result";
    raw_hdr(&cases[n++].b, FRAME_MAGIC, K_OK_BULK, 0, 0, 0);

    for (size_t i = 0; i < n; i++) {
        tbx_result r;
        int rc = raw_call(*method, &cases[i].b, RAW_EXIT, 0, &r);
        cr_assert_eq(rc, TBX_EPROTO, "%s: %s: %s", cases[i].what, tbx_err_name(rc), r.message);
        cr_assert_eq(r.value.type, MSGPACK_OBJECT_NIL);
        tbx_result_free(&r);
    }
}

/* A header whose length is over max_result: refused as too big, whatever
 * the length (up to 2^64 - 1), before anything is allocated for it. */
TBX_TEST(frames, oversize_length_header_is_etoobig)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process's frames carry its word on the call: test_pool.c");
    uint64_t lens[] = {(uint64_t)1 << 40, UINT64_MAX, ((uint64_t)256 << 20) + 1};
    for (size_t i = 0; i < 3; i++) {
        struct raw b = {.len = 0};
        raw_hdr(&b, FRAME_MAGIC, K_OK, 0, 0, lens[i]);
        raw_bytes(&b, "\x01\x02\x03", 3);
        tbx_result r;
        int rc = raw_call(*method, &b, RAW_EXIT, 0, &r);
        cr_assert_eq(rc, TBX_ETOOBIG, "len %llu: %s: %s", (unsigned long long)lens[i],
                     tbx_err_name(rc), r.message);
        tbx_result_free(&r);
    }
}

TBX_TEST(frames, truncated_frames_are_eproto)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process's frames carry its word on the call: test_pool.c");
    struct raw half_header = {.len = 0};
    raw_hdr(&half_header, FRAME_MAGIC, K_OK, 0, 0, 5);
    half_header.len = 10;

    struct raw short_payload = {.len = 0};
    raw_hdr(&short_payload, FRAME_MAGIC, K_OK, 0, 0, 100);
    raw_bytes(&short_payload, "\x92\x01", 2);

    struct raw short_fail = {.len = 0};
    raw_hdr(&short_fail, FRAME_MAGIC, K_FAIL, 4, 0, 50);
    raw_bytes(&short_fail, "cut", 3);

    struct raw one_byte = {.len = 0};
    raw_bytes(&one_byte, "T", 1);

    const struct raw *cases[] = {&half_header, &short_payload, &short_fail, &one_byte};
    const char *what[] = {"half a header", "short payload", "short fail message", "one byte"};
    for (size_t i = 0; i < 4; i++) {
        tbx_result r;
        int rc = raw_call(*method, cases[i], RAW_EXIT, 0, &r);
        cr_assert_eq(rc, TBX_EPROTO, "%s: %s: %s", what[i], tbx_err_name(rc), r.message);
        cr_assert_eq(r.exit_code, 0, "%s", what[i]);
        tbx_result_free(&r);
    }
}

/* Bytes after a complete frame: the child's output is not one result frame.
 * Here fn writes a whole frame of its own and returns, so timebox's frame
 * follows it: the caller must not take the first for the result. */
TBX_TEST(frames, second_frame_after_a_frame_is_eproto)
{
    unsigned char v[] = {0x2a}; /* 42 */
    struct raw frame = {.len = 0};
    raw_hdr(&frame, FRAME_MAGIC, K_OK, 0, 0, 1);
    raw_bytes(&frame, v, 1);
    tbx_result r;
    int rc = raw_call(*method, &frame, RAW_RETURN, 0, &r);
    cr_assert_eq(rc, TBX_EPROTO, "two frames: %s (value type %d, %s)", tbx_err_name(rc),
                 r.value.type, r.message ? r.message : "-");
    tbx_result_free(&r);
}

/* A whole frame, then junk, then exit. */
TBX_TEST(frames, junk_after_a_frame_is_eproto)
{
    unsigned char v[] = {0x2a};
    struct raw junk = {.len = 0};
    raw_hdr(&junk, FRAME_MAGIC, K_OK, 0, 0, 1);
    raw_bytes(&junk, v, 1);
    raw_bytes(&junk, "junk", 4);
    tbx_result r;
    int rc = raw_call(*method, &junk, RAW_EXIT, 0, &r);
    cr_assert_eq(rc, TBX_EPROTO, "frame + junk: %s (value type %d, %s)", tbx_err_name(rc),
                 r.value.type, r.message ? r.message : "-");
    tbx_result_free(&r);
}

/* A START frame written by fn: a second START (soft deadlines, where the
 * child or worker says START before fn) or one the caller did not expect. */
TBX_TEST(frames, second_start_is_eproto)
{
    if (*method == TBX_POOL)
        cr_skip_test("a pooled process's frames carry its word on the call: test_pool.c");
    struct raw start = {.len = 0};
    raw_hdr(&start, FRAME_MAGIC, K_START, 0, 0, 0);
    tbx_result r;
    /* Soft deadline: every method has said START already. */
    int rc = raw_call(*method, &start, RAW_RETURN, 1, &r);
    cr_assert_eq(rc, TBX_EPROTO, "soft: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
    /* Twice, whatever came before. */
    struct raw twice = start;
    raw_hdr(&twice, FRAME_MAGIC, K_START, 0, 0, 0);
    rc = raw_call(*method, &twice, RAW_RETURN, 0, &r);
    cr_assert_eq(rc, TBX_EPROTO, "hard, two STARTs: %s: %s", tbx_err_name(rc), r.message);
    tbx_result_free(&r);
}

/* A child whose result descriptor is a socket sends a big result's memfd
 * with its OK_BULK header: exactly one, sealed against writes and resizing,
 * of exactly the announced size, or the call is TBX_EPROTO.  (The forged
 * good one proves the forging: it is taken.)  A memfd with another frame is
 * TBX_EPROTO too. */
TBX_TEST(frames, forged_bulk_memfds_are_eproto)
{
    if (*method != TBX_FORK && *method != TBX_SPAWN)
        cr_skip_test("the caller makes this method's memfd: only a fork or spawn child "
                     "sends one");
    static const char *what[] = {"good", "two fds", "unsealed", "of another size", "no fd"};
    for (int how = 0; how < NFDS_HOW; how++) {
        struct raw b = {.len = 0};
        raw_hdr(&b, FRAME_MAGIC, K_OK_BULK, 0, 0, 5);
        tbx_result r;
        int rc = raw_call_fn(fn_raw_fds, *method, &b, RAW_EXIT, 0, how, &r);
        if (how == FDS_GOOD) {
            cr_assert_eq(rc, 0, "%s: %s: %s", what[how], tbx_err_name(rc), r.message);
            cr_assert(obj_str_eq(&r.value.via.array.ptr[1], "ok"));
        } else {
            cr_assert_eq(rc, TBX_EPROTO, "%s: %s", what[how], tbx_err_name(rc));
        }
        tbx_result_free(&r);
    }
    struct raw ok = {.len = 0};
    unsigned char v[] = {0x92, 0x01, 0xa2, 'o', 'k'};
    raw_hdr(&ok, FRAME_MAGIC, K_OK, 0, 0, sizeof v);
    raw_bytes(&ok, v, sizeof v);
    tbx_result r;
    int rc = raw_call_fn(fn_raw_fds, *method, &ok, RAW_EXIT, 0, FDS_GOOD, &r);
    cr_assert_eq(rc, TBX_EPROTO, "a memfd with an OK frame: %s", tbx_err_name(rc));
    tbx_result_free(&r);
}
