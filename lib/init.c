/*
 * tbx_init: the process set-up.  A process that timebox spawned as a worker
 * serves its call here, and one spawned as a forkserver serves until its
 * creator is gone; neither returns.  Any other returns 0 at once.
 */
#include "child.h"
#include "forkserver/forkserver.h"

int tbx_init(int argc, char **argv)
{
    TBX__UNUSED(argc);
    TBX__UNUSED(argv);
    tbx__worker_maybe_serve();
    tbx__fs_server_maybe_serve();
    tbx__init_done();
    return 0;
}
