/*
 * The start methods: one row per tbx_method, each row a launcher in a file
 * of its own (launch_*.c).  tbx_set_default_method, the engine's preparation
 * and its dispatch all read this table and nothing else, so a new method is
 * a new file, a row here and a value of the public enum.
 */
#include "engine.h"

#include <stdatomic.h>

extern const tbx__launcher tbx__launch_fork;       /* launch_fork.c */
extern const tbx__launcher tbx__launch_forkserver; /* forkserver/launch_forkserver.c */
extern const tbx__launcher tbx__launch_spawn;      /* launch_spawn.c */
extern const tbx__launcher tbx__launch_pool;       /* forkserver/launch_pool.c */
extern const tbx__launcher tbx__launch_auto;       /* launch_auto.c */

static const tbx__launcher *const methods[] = {
    [TBX_FORK] = &tbx__launch_fork,
    [TBX_FORKSERVER] = &tbx__launch_forkserver,
    [TBX_SPAWN] = &tbx__launch_spawn,
    [TBX_POOL] = &tbx__launch_pool,
    [TBX_AUTO] = &tbx__launch_auto,
};

static atomic_int default_method = TBX_FORK;

const tbx__launcher *tbx__launcher_of(tbx_method method)
{
    if ((unsigned)method >= sizeof methods / sizeof methods[0])
        return NULL;
    return methods[method];
}

tbx_method tbx__default_method(void)
{
    return (tbx_method)atomic_load(&default_method);
}

int tbx_set_default_method(tbx_method method)
{
    if (tbx__launcher_of(method) == NULL)
        return TBX_EINVAL;
    atomic_store(&default_method, (int)method);
    return 0;
}
