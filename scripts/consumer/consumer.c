/*
 * consumer: checks that an installed timebox works from outside the source
 * tree: both headers, one blocking call and one async call.  Exits 0 on
 * success.  Built by .ci/run with CMake (find_package) and with pkg-config.
 */
#define _DEFAULT_SOURCE /* <uv.h> needs POSIX types (pthread_rwlock_t) under -std=c11 */
#include <timebox.h>
#include <timebox/uv.h>

#include <stdio.h>

static int add(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_ARRAY || args->via.array.size != 2)
        return tbx_fail(result, 1, "expected [a, b]");
    return msgpack_pack_int64(result,
                              args->via.array.ptr[0].via.i64 + args->via.array.ptr[1].via.i64);
}

static int async_status = -1;

static void done_cb(tbx_req *req, tbx_result *result)
{
    (void)req;
    async_status = result->status == 0 && result->value.via.i64 == 5 ? 0 : 1;
    tbx_result_free(result);
}

int main(int argc, char **argv)
{
    tbx_init(argc, argv);

    msgpack_sbuffer buf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, 2);
    msgpack_pack_int(&pk, 3);

    tbx_opts opts;
    tbx_opts_init(&opts);
    opts.timeout_s = 5;

    /* Blocking. */
    tbx_result r;
    int rc = tbx_call(add, buf.data, buf.size, &opts, &r);
    int ok = rc == 0 && r.value.via.i64 == 5;
    tbx_result_free(&r);

    /* On a libuv loop. */
    tbx_req req;
    uv_loop_t *loop = uv_default_loop();
    rc = tbx_call_async(loop, &req, add, buf.data, buf.size, &opts, done_cb);
    if (rc == 0)
        uv_run(loop, UV_RUN_DEFAULT);
    ok = ok && rc == 0 && async_status == 0;

    msgpack_sbuffer_destroy(&buf);
    /* The library it runs with is at least the header it was built with. */
    ok = ok && tbx_version() >= TBX_VERSION_HEX;
    printf("consumer (timebox %s, built with %s): %s\n", tbx_version_string(),
           TBX_VERSION_STRING, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
