/*
 * sd_daemon.c's stand-in for a build without libsystemd: no socket
 * activation, no readiness notification, and a clear word when a socket is
 * passed anyway.
 */
#include "forkserver/forkserver.h"
#include "forkserver/sd_daemon.h"

#include <stdio.h>
#include <stdlib.h>

const char tbx__sd_support[] = "socket activation: unavailable (built without libsystemd)";

int tbx__sd_listen_fd(int *fd)
{
    *fd = -1;
    int passed = getenv("LISTEN_FDS") != NULL;
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    if (passed) {
        fprintf(stderr, "timebox-forkserver: a socket was passed (LISTEN_FDS), but socket "
                        "activation is unavailable: built without libsystemd\n");
        return TBX_EINVAL;
    }
    return 0;
}

void tbx__sd_notify(const char *state)
{
    TBX__UNUSED(state);
}
