/*
 * fuzz_request: a request as the worker and the forkserver take it from the
 * other end of a socket.  The bytes go through a socket pair into the one
 * parser both of them run (lib/request_recv.c tbx__request_read), then
 * tbx__request_resolve (lookup by name, msgpack check, unpack) and
 * tbx__request_free, in the order lib/worker.c and
 * lib/forkserver/server_calls.c call them: the worker reads blocking, after
 * everything was sent, and alone (its header's read takes the body's first
 * bytes too); the server reads without blocking, a piece at a time, as bytes
 * arrive.
 *
 * Input: one control byte, then the request (header, name, label, args).  The
 * control byte's low six bits give the size of the pieces the bytes arrive
 * in; its top two bits how the args come:
 *   0  on the socket, after the name;
 *   1  in a sealed memfd sent with the header's first piece (big args), the
 *      socket carrying only the header and the name;
 *   2  the same memfd, unsealed (the parser must refuse it);
 *   3  on the socket, but with a descriptor on the first two pieces (one
 *      more than any request brings).
 * A request whose flags ask for REQ_CAPTURE brings two pipe ends after the
 * memfd, as a pooled call does.  The worker's read takes REQ_CAPTURE, as a
 * pooled process's does; the server's must refuse it.
 * The name "fuzz_fn" is registered here, so requests can get past the lookup.
 */
#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static int fuzz_fn(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fuzz_fn);

enum { ARGS_INLINE, ARGS_SEALED, ARGS_UNSEALED, TWO_FDS };

/* One input taken apart: the bytes for the socket, and the memfd's. */
typedef struct input {
    const uint8_t *sock;
    size_t sock_len;
    const uint8_t *memfd;
    size_t memfd_len;
    int mode;
    size_t piece;
} input;

static size_t walk(const msgpack_object *o)
{
    size_t sum = (size_t)o->type;
    if (o->type == MSGPACK_OBJECT_ARRAY)
        for (uint32_t i = 0; i < o->via.array.size; i++)
            sum += walk(&o->via.array.ptr[i]);
    else if (o->type == MSGPACK_OBJECT_MAP)
        for (uint32_t i = 0; i < o->via.map.size; i++)
            sum += walk(&o->via.map.ptr[i].key) + walk(&o->via.map.ptr[i].val);
    else if (o->type == MSGPACK_OBJECT_STR || o->type == MSGPACK_OBJECT_BIN)
        for (uint32_t i = 0; i < o->via.str.size; i++)
            sum += (unsigned char)o->via.str.ptr[i];
    return sum;
}

/* A whole request: its header bounds what was read, and it resolves to the
 * one registered function or is refused. */
static void resolve(tbx__request *rq)
{
    char why[TBX__MAX_MESSAGE + 1];
    if (rq->h.name_len > TBX__MAX_NAME || rq->h.label_len > TBX_MAX_LABEL ||
        rq->h.args_len > TBX__MAX_ARGS)
        __builtin_trap(); /* the check must bound all three */
    if (tbx__request_resolve(rq, why, sizeof why) != 0)
        return;
    tbx__child_spec spec;
    tbx__request_spec(rq, -1, &spec);
    if (spec.fn != fuzz_fn || spec.args != &rq->args)
        __builtin_trap();
    volatile size_t sink = walk(&rq->args);
    (void)sink;
}

/* The memfd the args come in (modes 1 and 2), or a descriptor to spare
 * (mode 3); -1 for none. */
static int make_fd(const input *in)
{
    if (in->mode == ARGS_INLINE)
        return -1;
    int fd = memfd_create("fuzz-args", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        __builtin_trap(); /* the fuzzer's own machinery failed */
    if (in->mode == TWO_FDS)
        return fd;
    if (in->memfd_len > 0 && write(fd, in->memfd, in->memfd_len) != (ssize_t)in->memfd_len)
        __builtin_trap();
    if (in->mode == ARGS_SEALED &&
        fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0)
        __builtin_trap();
    return fd;
}

/* 1 if the request's header, as far as it came, asks for REQ_CAPTURE. */
static int asks_capture(const input *in)
{
    uint32_t flags;
    if (in->sock_len < offsetof(tbx__request_header, flags) + sizeof flags)
        return 0;
    memcpy(&flags, in->sock + offsetof(tbx__request_header, flags), sizeof flags);
    return (flags & TBX__REQ_CAPTURE) != 0;
}

/* Sends piece number k of the socket's bytes (from at); a descriptor goes
 * with the first piece, and in mode 3 with the second too.  A request that
 * asks for REQ_CAPTURE brings a pipe's write end twice after it on the
 * first piece, as a pooled call does. */
static size_t send_piece(int sock, const input *in, size_t at, int k, size_t piece)
{
    size_t n = in->sock_len - at < piece ? in->sock_len - at : piece;
    if (n == 0)
        return 0;
    int fds[3], nfds = 0, p[2] = {-1, -1};
    int fd = k == 0 || (k == 1 && in->mode == TWO_FDS) ? make_fd(in) : -1;
    if (fd >= 0)
        fds[nfds++] = fd;
    if (k == 0 && asks_capture(in)) {
        if (pipe2(p, O_CLOEXEC) != 0)
            __builtin_trap();
        fds[nfds++] = p[1];
        fds[nfds++] = p[1];
    }
    ssize_t w = tbx__send_fds(sock, in->sock + at, n, fds, nfds, 0);
    tbx__close(fd);
    tbx__close(p[0]);
    tbx__close(p[1]);
    if (w != (ssize_t)n)
        __builtin_trap();
    return n;
}

static void pair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        __builtin_trap();
}

/* The worker: everything is sent (in two pieces, so that the socket's
 * buffer holds it), then read blocking, once: a request cut short is
 * refused. */
static void as_worker(const input *in)
{
    int sv[2];
    tbx__request rq;
    char why[TBX__MAX_MESSAGE + 1];
    pair(sv);
    tbx__request_init(&rq);
    size_t at = send_piece(sv[1], in, 0, 0, sizeof rq.h);
    if (at < in->sock_len)
        send_piece(sv[1], in, at, 1, in->sock_len - at);
    tbx__close(sv[1]);
    rq.alone = 1; /* as lib/worker.c and a pooled process read */
    rq.capture_ok = 1; /* as a pooled process reads */
    if (tbx__request_read(&rq, sv[0], 0, "the worker", why, sizeof why) == 1) {
        if ((rq.h.flags & TBX__REQ_CAPTURE) && (rq.out_fd < 0 || rq.err_fd < 0))
            __builtin_trap(); /* taken without its pipes */
        resolve(&rq);
    }
    tbx__request_free(&rq);
    tbx__close(sv[0]);
}

/* The forkserver: a piece arrives, the parser reads what is there without
 * blocking; when the client has sent everything it closes its end.  The
 * server frees the request twice on the way that launches (once when the
 * child has its copy, once when the call closes). */
static void as_server(const input *in)
{
    int sv[2];
    tbx__request rq;
    char why[TBX__MAX_MESSAGE + 1];
    pair(sv);
    tbx__request_init(&rq);
    size_t at = 0;
    int rc = 0;
    for (int k = 0; rc == 0; k++) {
        if (at < in->sock_len)
            at += send_piece(sv[1], in, at, k, in->piece);
        else if (sv[1] >= 0) {
            tbx__close(sv[1]);
            sv[1] = -1;
        }
        rc = tbx__request_read(&rq, sv[0], MSG_DONTWAIT, "the forkserver", why, sizeof why);
        if (rc == 0 && sv[1] < 0)
            __builtin_trap(); /* the client left: the parser must say so */
    }
    if (rc == 1 && (rq.h.flags & TBX__REQ_CAPTURE))
        __builtin_trap(); /* the server takes no REQ_CAPTURE */
    if (rc == 1)
        resolve(&rq);
    tbx__request_free(&rq);
    tbx__request_free(&rq);
    tbx__close(sv[1]);
    tbx__close(sv[0]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    input in = {.sock = data + 1, .sock_len = size - 1, .mode = data[0] >> 6,
                .piece = 1 + (size_t)(data[0] & 0x3f) * 67};
    if (in.mode == ARGS_SEALED || in.mode == ARGS_UNSEALED) {
        /* The socket carries the header, the name and the label; the rest
         * is the memfd's. */
        tbx__request_header h;
        if (in.sock_len < sizeof h)
            return 0;
        memcpy(&h, in.sock, sizeof h);
        size_t names = (size_t)h.name_len + h.label_len;
        size_t head = sizeof h + (names < in.sock_len - sizeof h ? names : in.sock_len - sizeof h);
        in.memfd = in.sock + head;
        in.memfd_len = in.sock_len - head;
        in.sock_len = head;
    }
    as_worker(&in);
    as_server(&in);
    return 0;
}
