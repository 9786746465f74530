/*
 * A plugin for the spawn tests: a shared object whose function a host loads
 * with dlopen, and that timebox-worker --preload serves.  It does not link
 * timebox: tbx_register comes from whoever loads it (the test program, which
 * exports its symbols, or timebox-worker's libtimebox.so).
 */
#include <timebox.h>

int plugin_triple(const msgpack_object *args, msgpack_packer *result, void *ctx);

int plugin_triple(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tbx_fail(result, 1, "expected a positive integer");
    return msgpack_pack_int64(result, (int64_t)args->via.u64 * 3);
}
TBX_REGISTER(plugin_triple);
