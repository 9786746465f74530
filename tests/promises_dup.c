/* A second function registered under the name test_traps.c uses too: two
 * `static dup_handler`s in two files, as a real program ends up with them. */
#include "helpers.h"

static int dup_handler(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)args, (void)ctx;
    return msgpack_pack_int(pk, 2);
}
TBX_REGISTER(dup_handler);

tbx_fn *other_dup_handler(void);

tbx_fn *other_dup_handler(void)
{
    return dup_handler;
}
