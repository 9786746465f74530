/*
 * A plugin for the spawn tests: a shared object whose function a host loads
 * with dlopen, and that timebox-worker --preload serves.  It does not link
 * timebox: tbx_register comes from whoever loads it (the test program, which
 * exports its symbols, or timebox-worker's libtimebox.so).
 */
#define _GNU_SOURCE
#include <timebox.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int plugin_triple(const msgpack_object *args, msgpack_packer *result, void *ctx);

int plugin_triple(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    if (args->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tbx_fail(result, 1, "expected a positive integer");
    return msgpack_pack_int64(result, (int64_t)args->via.u64 * 3);
}
TBX_REGISTER(plugin_triple);

int plugin_pid_then_hang(const msgpack_object *args, msgpack_packer *result, void *ctx);

/* args: a path; writes the child's pid there, then waits to be killed. */
int plugin_pid_then_hang(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)ctx;
    char path[256];
    if (args->type != MSGPACK_OBJECT_STR || args->via.str.size >= sizeof path)
        return tbx_fail(result, 1, "expected a path");
    memcpy(path, args->via.str.ptr, args->via.str.size);
    path[args->via.str.size] = '\0';
    FILE *f = fopen(path, "w");
    if (f != NULL) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    for (;;)
        pause();
}
TBX_REGISTER(plugin_pid_then_hang);
