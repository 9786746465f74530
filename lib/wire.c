/*
 * Checks on bytes that come from another process.  Nothing here trusts a
 * length, a count or a nesting depth it reads: every one is bounded by what
 * remains of the input before anything is allocated in proportion to it.
 */
#include "wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int tbx__frame_encode(tbx__frame_header *h, struct iovec iov[2], uint32_t kind, int32_t code,
                      const void *p, uint64_t len)
{
    h->magic = TBX__FRAME_MAGIC;
    h->kind = kind;
    h->fail_code = code;
    h->pool = 0;
    h->len = len;
    iov[0].iov_base = h;
    iov[0].iov_len = sizeof *h;
    iov[1].iov_base = (void *)p;
    iov[1].iov_len = (size_t)len;
    return p != NULL && len > 0 ? 2 : 1;
}

int tbx__frame_error(tbx__frame_header *h, struct iovec iov[2], int32_t code, const char *msg)
{
    size_t len = strnlen(msg, TBX__MAX_MESSAGE);
    return tbx__frame_encode(h, iov, TBX__FRAME_ERROR, code, msg, len);
}

int tbx__frame_check(const tbx__frame_header *hdr, uint64_t max_len, int pooled)
{
    int result = hdr->kind != TBX__FRAME_START;
    uint32_t want = pooled && result && hdr->kind != TBX__FRAME_ERROR ? TBX__POOL_DONE : 0;
    uint32_t allowed = pooled && result ? TBX__POOL_MASK : 0;
    if (hdr->magic != TBX__FRAME_MAGIC || (hdr->pool & want) != want || (hdr->pool & ~allowed) != 0)
        return TBX_EPROTO;
    switch (hdr->kind) {
    case TBX__FRAME_OK:
        return hdr->len > max_len ? TBX_ETOOBIG : 0;
    case TBX__FRAME_OK_BULK:
        return hdr->len == 0 ? TBX_EPROTO : hdr->len > max_len ? TBX_ETOOBIG : 0;
    case TBX__FRAME_FAIL:
    case TBX__FRAME_ERROR:
        return hdr->len > TBX__MAX_MESSAGE ? TBX_EPROTO : 0;
    case TBX__FRAME_START:
        return hdr->len != 0 ? TBX_EPROTO : 0;
    case TBX__FRAME_CRASH:
        return hdr->len != 0 || hdr->fail_code <= 0 || hdr->fail_code >= 65 ? TBX_EPROTO : 0;
    default:
        return TBX_EPROTO;
    }
}

static uint64_t load_be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* One msgpack header at p: how many payload bytes follow it (skip) and how
 * many objects it contains (children).  Returns the header's size, or 0 if it
 * is invalid or runs past end. */
static size_t msgpack_header(const uint8_t *p, const uint8_t *end,
                             uint64_t *skip, uint64_t *children, int *container)
{
    static const uint8_t fixext_len[5] = {1, 2, 4, 8, 16};
    size_t avail = (size_t)(end - p);
    uint8_t b = p[0];
    unsigned n; /* width of the length field that follows b */

    *skip = 0;
    *children = 0;
    *container = (b >= 0x80 && b <= 0x9f) || (b >= 0xdc && b <= 0xdf);
    if (b <= 0x7f || b >= 0xe0 || (b >= 0xc0 && b <= 0xc3 && b != 0xc1))
        return 1;
    if (b >= 0x80 && b <= 0x8f) {
        *children = 2u * (b & 0x0fu);
        return 1;
    }
    if (b >= 0x90 && b <= 0x9f) {
        *children = b & 0x0fu;
        return 1;
    }
    if (b >= 0xa0 && b <= 0xbf) {
        *skip = b & 0x1fu;
        return 1;
    }
    switch (b) {
    case 0xca: *skip = 4; return 1;
    case 0xcb: *skip = 8; return 1;
    case 0xcc: case 0xd0: *skip = 1; return 1;
    case 0xcd: case 0xd1: *skip = 2; return 1;
    case 0xce: case 0xd2: *skip = 4; return 1;
    case 0xcf: case 0xd3: *skip = 8; return 1;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        *skip = 1u + fixext_len[b - 0xd4];
        return 1;
    case 0xc4: case 0xd9: n = 1; break; /* bin8, str8 */
    case 0xc5: case 0xda: n = 2; break;
    case 0xc6: case 0xdb: n = 4; break;
    case 0xc7: n = 1; break;            /* ext: length, then a type byte */
    case 0xc8: n = 2; break;
    case 0xc9: n = 4; break;
    case 0xdc: n = 2; break;            /* array16/32 */
    case 0xdd: n = 4; break;
    case 0xde: n = 2; break;            /* map16/32 */
    case 0xdf: n = 4; break;
    default: return 0;                  /* 0xc1: never used */
    }
    if (avail < 1u + n)
        return 0;
    uint64_t v = load_be(p + 1, n);
    if (b == 0xdc || b == 0xdd)
        *children = v;
    else if (b == 0xde || b == 0xdf)
        *children = 2 * v;
    else
        *skip = v + (b >= 0xc7 && b <= 0xc9 ? 1 : 0);
    return 1u + n;
}

int tbx__msgpack_check(const void *buf, size_t len, unsigned max_depth)
{
    const uint8_t *p = buf, *end = p + len;
    uint64_t left[TBX__MAX_DEPTH]; /* objects still to read per open container */
    unsigned depth = 0;
    uint64_t pending = 1;          /* objects still to read, all levels */

    if (buf == NULL)
        return TBX_EINVAL;
    if (max_depth > TBX__MAX_DEPTH)
        max_depth = TBX__MAX_DEPTH;
    do {
        uint64_t skip, children;
        int container;
        if (p >= end)
            return TBX_EINVAL;
        size_t h = msgpack_header(p, end, &skip, &children, &container);
        if (h == 0)
            return TBX_EINVAL;
        p += h;
        if (skip > (uint64_t)(end - p))
            return TBX_EINVAL;
        p += skip;
        pending -= 1;
        if (depth > 0)
            left[depth - 1] -= 1;
        /* An empty container still takes a level in msgpack-c's unpacker. */
        if (container && depth == max_depth)
            return TBX_EINVAL;
        if (children > 0) {
            /* Every object takes at least one byte: a count larger than
             * what remains is a lie, refused before anyone allocates it. */
            if (pending + children > (uint64_t)(end - p))
                return TBX_EINVAL;
            pending += children;
            left[depth++] = children;
        }
        while (depth > 0 && left[depth - 1] == 0)
            depth--;
    } while (pending > 0);
    return p == end ? 0 : TBX_EINVAL;
}

int tbx__request_check(const tbx__request_header *hdr)
{
    const uint32_t known = TBX__REQ_RESET_SIGNALS | TBX__REQ_SOFT_DEADLINE | TBX__REQ_ALLOW_CORE |
                           TBX__REQ_BACKTRACE | TBX__REQ_ARGS_BULK | TBX__REQ_CRASH_TRACE |
                           TBX__REQ_NO_CONTAIN | TBX__REQ_CAPTURE;
    if (hdr->magic != TBX__REQUEST_MAGIC || hdr->label_len > TBX_MAX_LABEL ||
        (hdr->flags & ~known) != 0 ||
        hdr->name_len == 0 || hdr->name_len > TBX__MAX_NAME || hdr->args_len == 0 ||
        hdr->args_len > TBX__MAX_ARGS || hdr->max_result == 0)
        return TBX_EPROTO;
    return 0;
}

int tbx__control_check(const tbx__control *m, int from_server)
{
    if (m->magic != TBX__CONTROL_MAGIC)
        return TBX_EPROTO;
    if (from_server)
        return m->kind == TBX__CTL_LAUNCHED || m->kind == TBX__CTL_EXITED ||
                       m->kind == TBX__CTL_ERROR || m->kind == TBX__CTL_TRACED
                   ? 0
                   : TBX_EPROTO;
    return (m->kind == TBX__CTL_KILL && m->code > 0 && m->code < 65) ||
                   (m->kind == TBX__CTL_TRACE && m->code >= 0 && m->code < 65)
               ? 0
               : TBX_EPROTO;
}

void tbx__payload_free(char *payload, char *map)
{
    if (map != NULL) {
        size_t len;
        memcpy(&len, map, sizeof len);
        (void)munmap(map, len);
    } else {
        free(payload);
    }
}

int tbx__grow_buffer(char **buf, size_t *cap, uint64_t total)
{
    uint64_t want = *cap ? 2 * (uint64_t)*cap : TBX__READ_CHUNK;
    if (want > total)
        want = total;
    if (want > SIZE_MAX)
        return -ENOMEM;
    char *p = realloc(*buf, (size_t)want);
    if (p == NULL)
        return -ENOMEM;
    *buf = p;
    *cap = (size_t)want;
    return 0;
}
