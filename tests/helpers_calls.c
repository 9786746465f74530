/*
 * Shared helpers for timebox's Criterion suites, the calls' side: packing
 * and reading values, the functions run in the child (registered here, so
 * every suite that links this file has them), checking results, async
 * callbacks and payloads.  The fixture and the process state are in
 * helpers.c.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* -------------------------------------------------------------- arguments */

void pack(msgpack_sbuffer *sb, const char *fmt, ...)
{
    msgpack_packer pk;
    va_list ap;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    va_start(ap, fmt);
    for (const char *f = fmt; *f; f++) {
        switch (*f) {
        case ' ':
            break;
        case 'i':
            msgpack_pack_int64(&pk, va_arg(ap, int64_t));
            break;
        case 'u':
            msgpack_pack_uint64(&pk, va_arg(ap, uint64_t));
            break;
        case 'd':
            msgpack_pack_double(&pk, va_arg(ap, double));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            msgpack_pack_str_with_body(&pk, s, strlen(s));
            break;
        }
        case 'n':
            msgpack_pack_nil(&pk);
            break;
        case 't':
            msgpack_pack_true(&pk);
            break;
        case 'f':
            msgpack_pack_false(&pk);
            break;
        case 'x': {
            const void *p = va_arg(ap, const void *);
            size_t len = va_arg(ap, size_t);
            msgpack_pack_bin_with_body(&pk, p, len);
            break;
        }
        case 'a':
            msgpack_pack_array(&pk, (size_t)va_arg(ap, int));
            break;
        case 'm':
            msgpack_pack_map(&pk, (size_t)va_arg(ap, int));
            break;
        default:
            cr_assert_fail("pack: bad format character '%c'", *f);
        }
    }
    va_end(ap);
}

/* --------------------------------------------------------- reading values */

bool obj_str_eq(const msgpack_object *o, const char *s)
{
    return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (obj_str_eq(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    return NULL;
}

int64_t obj_int(const msgpack_object *o)
{
    cr_assert_not_null(o);
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return (int64_t)o->via.u64;
    cr_assert_eq(o->type, MSGPACK_OBJECT_NEGATIVE_INTEGER, "not an integer: type %d", o->type);
    return o->via.i64;
}

/* ---------------------------------------------------- child-side functions */

int fn_echo(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    return msgpack_pack_object(result, *args);
}
TBX_REGISTER(fn_echo);

int fn_sleep_ms(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tbx_fail(result, 1, "expected milliseconds");
    child_sleep((double)args->via.u64 / 1e3);
    return msgpack_pack_object(result, *args);
}
TBX_REGISTER(fn_sleep_ms);

int fn_ignore_term(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    signal(SIGTERM, SIG_IGN);
    child_sleep(60);
    return msgpack_pack_nil(result);
}
TBX_REGISTER(fn_ignore_term);

int fn_segv(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)ctx;
    raise(SIGSEGV);
    return msgpack_pack_nil(result);
}
TBX_REGISTER(fn_segv);

int fn_abort(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args, (void)result, (void)ctx;
    abort();
}
TBX_REGISTER(fn_abort);

int fn_exit(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)result, (void)ctx;
    _exit(args->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int)args->via.u64 : 99);
}
TBX_REGISTER(fn_exit);

int fn_mixed(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_ARRAY || args->via.array.size != 2)
        return tbx_fail(result, 1, "expected [kind, n]");
    int kind = (int)args->via.array.ptr[0].via.u64;
    int64_t n = (int64_t)args->via.array.ptr[1].via.u64;
    switch (kind) {
    case MIX_OK:
        return msgpack_pack_int64(result, n * 2);
    case MIX_HANG:
        child_sleep(60);
        return msgpack_pack_nil(result);
    case MIX_SEGV:
        raise(SIGSEGV);
        return msgpack_pack_nil(result);
    case MIX_FAIL:
        return tbx_fail(result, (int)n, "failed with %d", (int)n);
    case MIX_EXIT:
        _exit((int)n);
    default:
        return tbx_fail(result, 2, "bad kind");
    }
}
TBX_REGISTER(fn_mixed);

static _Thread_local char mismatch[512];

#define MISMATCH(...) (snprintf(mismatch, sizeof mismatch, __VA_ARGS__), mismatch)

const char *mixed_mismatch(int kind, int64_t n, int rc, const tbx_result *r)
{
    if (rc != r->status)
        return MISMATCH("kind %d: returned %d, status %d", kind, rc, r->status);
    if (r->pid <= 0)
        return MISMATCH("kind %d: pid %d", kind, (int)r->pid);
    switch (kind) {
    case MIX_OK:
        if (rc != 0 || r->value.type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            (int64_t)r->value.via.u64 != 2 * n || r->message != NULL || r->exit_code != 0)
            return MISMATCH("ok %lld: %s (%s), value type %d, exit %d", (long long)n,
                            tbx_err_name(rc), r->message ? r->message : "-", r->value.type,
                            r->exit_code);
        break;
    case MIX_HANG:
        /* A loop slower than the grace period may follow a SIGTERM that
         * worked with a SIGKILL (see async::cancel_kill_signal_is_what_was_needed). */
        if (rc != TBX_ETIMEDOUT || (r->kill_signal != SIGTERM && r->kill_signal != SIGKILL) ||
            (r->term_signal != SIGTERM && r->term_signal != SIGKILL) ||
            (r->kill_signal == SIGTERM && r->term_signal != SIGTERM) || r->exit_code != -1)
            return MISMATCH("hang: %s (%s), kill %d, term %d, exit %d", tbx_err_name(rc),
                            r->message ? r->message : "-", r->kill_signal, r->term_signal,
                            r->exit_code);
        break;
    case MIX_SEGV:
        if (rc != TBX_ECRASHED || r->term_signal != SIGSEGV || r->kill_signal != 0)
            return MISMATCH("segv: %s (%s), term %d, kill %d", tbx_err_name(rc),
                            r->message ? r->message : "-", r->term_signal, r->kill_signal);
        break;
    case MIX_FAIL:
        if (rc != TBX_EFAILED || r->fail_code != (int)n || r->message == NULL ||
            strstr(r->message, "failed with") == NULL)
            return MISMATCH("fail %lld: %s (%s), fail_code %d", (long long)n, tbx_err_name(rc),
                            r->message ? r->message : "-", r->fail_code);
        break;
    case MIX_EXIT:
        if (rc != TBX_EEXITED || r->exit_code != (int)n || r->term_signal != 0)
            return MISMATCH("exit %lld: %s (%s), exit %d", (long long)n, tbx_err_name(rc),
                            r->message ? r->message : "-", r->exit_code);
        break;
    default:
        return MISMATCH("bad kind %d", kind);
    }
    return NULL;
}

/* ------------------------------------------------------- checking results */

void check_status(int rc, const tbx_result *r)
{
    cr_assert_eq(r->status, rc, "status %d, returned %d", r->status, rc);
    if (rc != 0)
        cr_assert_not_null(r->message);
}

void check_common(int rc, const tbx_result *r)
{
    check_status(rc, r);
    if (rc == 0) {
        cr_assert_null(r->message, "message on success: %s", r->message);
    } else {
        cr_assert_eq(r->value.type, MSGPACK_OBJECT_NIL, "value of type %d on error", r->value.type);
    }
    cr_assert_geq(r->elapsed_s, 0.0);
}

/* -------------------------------------------------------- async callbacks */

void move_cb(tbx_req *req, tbx_result *r)
{
    tbx_result *out = req->data;
    *out = *r; /* the callback owns it: moved out, freed by the test */
}

void ignore_cb(tbx_req *req, tbx_result *r)
{
    (void)req;
    tbx_result_free(r);
}

int count_calls, count_status;

void count_cb(tbx_req *req, tbx_result *r)
{
    (void)req;
    count_calls++;
    count_status = r->status;
    tbx_result_free(r);
}

void start_async(uv_loop_t *loop, tbx_req *req, tbx_result *r, tbx_fn *fn,
                 const msgpack_sbuffer *sb, const tbx_opts *o)
{
    cr_assert_eq(uv_loop_init(loop), 0);
    memset(r, 0, sizeof *r);
    req->data = r;
    cr_assert_eq(tbx_call_async(loop, req, fn, sb->data, sb->size, o, move_cb), 0);
}

void hreq_cb(tbx_req *req, tbx_result *r)
{
    struct hreq *h = req->data;
    h->calls++;
    const char *bad = mixed_mismatch(h->kind, h->n, r->status, r);
    if (bad != NULL)
        snprintf(h->bad, sizeof h->bad, "%.*s", (int)sizeof h->bad - 1, bad); /* cut to fit */
    tbx_result_free(r);
}

/* --------------------------------------------------------------- payloads */

unsigned char pattern(size_t i)
{
    return (unsigned char)((i * 2654435761u) >> 13);
}

uint64_t fnv1a(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

void pack_big_bin(msgpack_sbuffer *sb, size_t len)
{
    unsigned char *data = malloc(len);
    cr_assert_not_null(data);
    for (size_t i = 0; i < len; i++)
        data[i] = pattern(i);
    pack(sb, "x", (const void *)data, len);
    free(data);
}

int fn_pid_then_hang(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    char path[256];
    snprintf(path, sizeof path, "%.*s", (int)args->via.str.size, args->via.str.ptr);
    FILE *f = fopen(path, "w");
    if (f != NULL) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    child_sleep(60);
    return msgpack_pack_nil(pk);
}
TBX_REGISTER(fn_pid_then_hang);

int fn_sum(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_BIN)
        return tbx_fail(pk, 1, "expected bin");
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint64(pk, args->via.bin.size);
    return msgpack_pack_uint64(pk, fnv1a(args->via.bin.ptr, args->via.bin.size));
}
TBX_REGISTER(fn_sum);

int fn_where(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    char path[PATH_MAX];
    if (!proc_cgroup(getpid(), path, sizeof path))
        path[0] = '\0';
    msgpack_pack_array(pk, 2);
    msgpack_pack_int64(pk, getpid());
    size_t n = strlen(path);
    msgpack_pack_str(pk, n);
    return msgpack_pack_str_body(pk, path, n);
}
TBX_REGISTER(fn_where);

bool where_is(const msgpack_object *v, pid_t pid, const char *cgroup)
{
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 2)
        return false;
    const msgpack_object *p = &v->via.array.ptr[0], *c = &v->via.array.ptr[1];
    return p->type == MSGPACK_OBJECT_POSITIVE_INTEGER && p->via.u64 == (uint64_t)pid &&
           c->type == MSGPACK_OBJECT_STR && c->via.str.size == strlen(cgroup) &&
           memcmp(c->via.str.ptr, cgroup, c->via.str.size) == 0;
}

/* args: the size; packs a bin of that many patterned bytes. */
int fn_pattern(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    size_t len = (size_t)args->via.u64;
    unsigned char chunk[65536];
    msgpack_pack_bin(pk, len);
    for (size_t off = 0; off < len; off += sizeof chunk) {
        size_t n = len - off < sizeof chunk ? len - off : sizeof chunk;
        for (size_t i = 0; i < n; i++)
            chunk[i] = pattern(off + i);
        msgpack_pack_bin_body(pk, chunk, n);
    }
    return 0;
}
TBX_REGISTER(fn_pattern);

void assert_triples(tbx_fn *triple, const tbx_opts *opts)
{
    msgpack_sbuffer sb;
    pack(&sb, "u", (uint64_t)14);
    tbx_result r;
    int rc = tbx_call(triple, sb.data, sb.size, opts, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(obj_int(&r.value), 42);
    tbx_result_free(&r);
}
