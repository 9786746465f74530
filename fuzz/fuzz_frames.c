/*
 * fuzz_frames: the bytes a child writes to its result pipe, decoded as the
 * engine decodes them (lib/engine.c: on_header, drain, take_value, classify).
 *
 * Input: one byte choosing max_result, then the child's output stream.  Per
 * frame: tbx__frame_check on the header; START frames (at most one); the
 * payload gathered in a buffer grown by tbx__grow_buffer as bytes "arrive";
 * an OK payload checked by tbx__msgpack_check and then unpacked by
 * msgpack_unpack, as the engine does; FAIL and ERROR payloads copied out as
 * the message.  An OK_BULK header takes the rest of the input as the bulk
 * memfd's contents, sealed or not by the first byte's high bit, and goes
 * through tbx__bulk_map as the engine's does.
 *
 * Invariants checked beyond "no crash, no sanitizer report":
 *   - tbx__msgpack_check accepting a buffer means msgpack_unpack unpacks it
 *     whole (SUCCESS, every byte used): the check is what stands between the
 *     child's bytes and the unpacker's allocations;
 *   - the unpacked object can be walked (every pointer in it is valid);
 *   - the same check applied to the input as caller args (engine_prepare)
 *     agrees with itself, whatever the depth limit.
 */
#include "wire.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const uint64_t max_results[] = {
    (uint64_t)256 << 20, 0, 1, 16, 64, 4096, 65536, UINT64_MAX,
};

/* Touches every byte the object points to, recursively. */
static size_t walk(const msgpack_object *o, unsigned depth)
{
    size_t sum = (size_t)o->type;
    if (depth > 64)
        __builtin_trap(); /* deeper than the check allows */
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN:
        for (uint32_t i = 0; i < o->via.str.size; i++)
            sum += (unsigned char)o->via.str.ptr[i];
        break;
    case MSGPACK_OBJECT_EXT:
        for (uint32_t i = 0; i < o->via.ext.size; i++)
            sum += (unsigned char)o->via.ext.ptr[i];
        break;
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++)
            sum += walk(&o->via.array.ptr[i], depth + 1);
        break;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < o->via.map.size; i++)
            sum += walk(&o->via.map.ptr[i].key, depth + 1) +
                   walk(&o->via.map.ptr[i].val, depth + 1);
        break;
    default:
        break;
    }
    return sum;
}

/* take_value: check, then unpack into a zone of its own. */
static int take_value(const char *payload, size_t len)
{
    if (tbx__msgpack_check(payload, len, TBX__MAX_DEPTH) != 0)
        return TBX_EPROTO;
    msgpack_zone *zone = msgpack_zone_new(256);
    if (zone == NULL)
        return -1;
    msgpack_object obj;
    size_t off = 0;
    msgpack_unpack_return u = msgpack_unpack(payload, len, &off, zone, &obj);
    if (u != MSGPACK_UNPACK_SUCCESS || off != len) {
        fprintf(stderr, "tbx__msgpack_check accepted %zu bytes that msgpack_unpack "
                        "refuses (%d, used %zu)\n", len, (int)u, off);
        __builtin_trap();
    }
    volatile size_t sink = walk(&obj, 0);
    (void)sink;
    msgpack_zone_free(zone);
    return 0;
}

/* The child says its result, len bytes, is in the memfd; the memfd holds
 * these bytes, sealed or not.  Mapped only when both are true, and then
 * unpacked as any result. */
static int bulk(int sealed, const uint8_t *p, size_t n, uint64_t len)
{
    int fd = memfd_create("fuzz-bulk", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return 0;
    if (n > 0 && write(fd, p, n) != (ssize_t)n) {
        close(fd);
        return 0;
    }
    if (sealed)
        (void)fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK);
    char *payload, *map;
    if (tbx__bulk_map(fd, len, &payload, &map) == 0) {
        if (!sealed || len != n)
            __builtin_trap(); /* an unsealed or mis-sized memfd is refused */
        (void)take_value(payload, (size_t)len);
        tbx__payload_free(payload, map);
    }
    close(fd);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint64_t max = max_results[data[0] % (sizeof max_results / sizeof max_results[0])];
    const uint8_t *p = data + 1, *end = data + size;

    /* The same bytes as caller args: engine_prepare's check (and, for fork,
     * its unpack) must agree. */
    if (tbx__msgpack_check(p, (size_t)(end - p), TBX__MAX_DEPTH) == 0)
        (void)take_value((const char *)p, (size_t)(end - p));

    int started = 0;
    for (;;) {
        tbx__frame_header hdr;
        if ((size_t)(end - p) < sizeof hdr)
            return 0; /* EOF inside a header: "cut short" */
        memcpy(&hdr, p, sizeof hdr);
        p += sizeof hdr;
        int rc = tbx__frame_check(&hdr, max, (data[0] >> 6) & 1);
        if (rc != 0)
            return 0; /* rejected: the child is killed, nothing more read */
        if (hdr.kind == TBX__FRAME_START) {
            if (hdr.len != 0)
                __builtin_trap(); /* frame_check lets no START payload by */
            if (started++)
                return 0; /* a second START is refused */
            continue;
        }
        if ((hdr.kind == TBX__FRAME_OK || hdr.kind == TBX__FRAME_OK_BULK) && hdr.len > max)
            __builtin_trap();
        if (hdr.kind == TBX__FRAME_OK_BULK)
            return bulk(data[0] >> 7, p, (size_t)(end - p), hdr.len);
        if ((hdr.kind == TBX__FRAME_FAIL || hdr.kind == TBX__FRAME_ERROR) &&
            hdr.len > TBX__MAX_MESSAGE)
            __builtin_trap();
        /* The payload arrives in pieces; the buffer grows with what came,
         * never straight to what the header claims. */
        char *buf = NULL;
        size_t cap = 0;
        uint64_t got = 0, avail = (uint64_t)(end - p);
        while (got < hdr.len && got < avail) {
            if (got == cap) {
                if (tbx__grow_buffer(&buf, &cap, hdr.len) != 0)
                    break;
                if (cap > hdr.len || cap <= got)
                    __builtin_trap(); /* grows, never past the claim */
            }
            size_t n = (size_t)(cap - got);
            if (n > avail - got)
                n = (size_t)(avail - got);
            if (n > 4096 + (data[0] >> 3) * 512u) /* pieces of varying size */
                n = 4096 + (data[0] >> 3) * 512u;
            memcpy(buf + got, p + got, n);
            got += n;
        }
        if (got < hdr.len) { /* EOF inside the payload */
            free(buf);
            return 0;
        }
        p += hdr.len;
        if (hdr.kind == TBX__FRAME_OK) {
            (void)take_value(buf != NULL ? buf : "", (size_t)hdr.len);
        } else {
            char *m = malloc((size_t)hdr.len + 1);
            if (m != NULL) {
                if (hdr.len > 0)
                    memcpy(m, buf, (size_t)hdr.len);
                m[hdr.len] = '\0';
                free(m);
            }
        }
        free(buf);
        /* The engine reads nothing after the first complete frame. */
        return 0;
    }
}
