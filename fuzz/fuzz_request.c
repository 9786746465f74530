/*
 * fuzz_request: a request as the worker and the forkserver take it from the
 * other end of a socket (lib/request_recv.c tbx__request_read, then
 * lib/forkserver/server_calls.c launch and call_free_cb): header checked by tbx__request_check,
 * name and args gathered (the server grows its buffer with tbx__grow_buffer
 * as bytes arrive), then tbx__request_resolve (lookup by name, msgpack
 * check, unpack) and tbx__request_free, in the order those files call them.
 *
 * Input: one byte for the size of the pieces the bytes "arrive" in, then the
 * request: header, name, args.  The name "fuzz_fn" is registered here, so
 * requests can get past the lookup.
 */
#include "child.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int fuzz_fn(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fuzz_fn);

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

static void use_resolved(const tbx__request *rq)
{
    tbx__child_spec spec;
    tbx__request_spec(rq, -1, &spec);
    if (spec.fn != fuzz_fn || spec.args != &rq->args)
        __builtin_trap();
    volatile size_t sink = walk(&rq->args);
    (void)sink;
}

/* The worker: reads the header, then exactly name_len + args_len bytes
 * (blocking); a request cut short is refused.  The worker _exits after a
 * refusal, so its buffers are freed here only to keep leaks out of the
 * report. */
static void as_worker(const uint8_t *data, size_t size)
{
    tbx__request rq;
    char why[TBX__MAX_MESSAGE + 1];
    memset(&rq, 0, sizeof rq);
    if (size < sizeof rq.h)
        return;
    memcpy(&rq.h, data, sizeof rq.h);
    if (tbx__request_check(&rq.h) != 0)
        return;
    if (rq.h.name_len > TBX__MAX_NAME || rq.h.args_len > TBX__MAX_ARGS)
        __builtin_trap(); /* the check must bound both */
    size_t left = size - sizeof rq.h;
    if (rq.h.name_len + rq.h.args_len > left)
        return; /* cut short */
    rq.args_buf = malloc((size_t)rq.h.args_len);
    if (rq.args_buf == NULL)
        return;
    memcpy(rq.name, data + sizeof rq.h, rq.h.name_len);
    memcpy(rq.args_buf, data + sizeof rq.h + rq.h.name_len, (size_t)rq.h.args_len);
    if (tbx__request_resolve(&rq, why, sizeof why) != 0) {
        free(rq.args_buf);
        return;
    }
    use_resolved(&rq);
    tbx__request_free(&rq);
}

/* The forkserver: the request arrives in pieces into a zeroed call (calloc);
 * the args buffer grows with what arrives.  Resolved: the server forks and
 * frees the request; the call's close frees it again.  Refused: the call's
 * close frees it once. */
static void as_server(const uint8_t *data, size_t size, size_t piece)
{
    tbx__request *rq = calloc(1, sizeof *rq);
    char why[TBX__MAX_MESSAGE + 1];
    size_t cap = 0;
    uint64_t got = 0;
    const uint64_t hsize = sizeof rq->h;
    if (rq == NULL)
        return;
    for (;;) {
        size_t n;
        if (got < hsize) {
            n = (size_t)(hsize - got);
            if (n > piece)
                n = piece;
            if (got + n > size)
                goto closed; /* the client left mid-header */
            memcpy((char *)&rq->h + got, data + got, n);
        } else {
            uint64_t at = got - hsize, name_len = rq->h.name_len;
            uint64_t args_at = at > name_len ? at - name_len : 0;
            if (at == name_len + rq->h.args_len)
                break; /* whole */
            if (cap == args_at && tbx__grow_buffer(&rq->args_buf, &cap, rq->h.args_len) != 0)
                goto refused;
            if (cap > rq->h.args_len)
                __builtin_trap();
            /* readv into [name rest][args room] */
            size_t room = (at < name_len ? (size_t)(name_len - at) : 0) + (size_t)(cap - args_at);
            n = room < piece ? room : piece;
            if (got + n > size)
                n = size - (size_t)got;
            if (n == 0)
                goto closed; /* EOF */
            const uint8_t *src = data + got;
            size_t k = n;
            if (at < name_len) {
                size_t c = (size_t)(name_len - at) < k ? (size_t)(name_len - at) : k;
                memcpy(rq->name + at, src, c);
                src += c;
                k -= c;
            }
            if (k > 0)
                memcpy(rq->args_buf + args_at, src, k);
        }
        got += n;
        if (got == hsize && tbx__request_check(&rq->h) != 0)
            goto refused;
    }
    if (tbx__request_resolve(rq, why, sizeof why) != 0)
        goto refused;
    use_resolved(rq);
    tbx__request_free(rq); /* launch: "the child has its copy" */
    tbx__request_free(rq); /* call_free_cb */
    free(rq);
    return;
refused:
closed:
    tbx__request_free(rq); /* call_free_cb */
    free(rq);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = 1 + (size_t)data[0] * 17;
    as_worker(data + 1, size - 1);
    as_server(data + 1, size - 1, piece);
    return 0;
}
