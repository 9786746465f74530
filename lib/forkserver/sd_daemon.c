/*
 * Socket activation and readiness through libsystemd: systemd (or
 * systemd-socket-activate) binds the socket and passes it as fd 3; the daemon
 * says READY=1 once it serves and STOPPING=1 when it stops, so a Type=notify
 * unit's start waits for the preloads and their hooks.
 */
#include "forkserver/forkserver.h"
#include "forkserver/sd_daemon.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

const char tbx__sd_support[] = "socket activation: available (libsystemd)";

int tbx__sd_listen_fd(int *fd)
{
    *fd = -1;
    /* 1: unset LISTEN_*, so the functions the server runs do not see them. */
    int n = sd_listen_fds(1);
    if (n < 0) {
        fprintf(stderr, "timebox-forkserver: passed sockets: %s\n", strerror(-n));
        return TBX_EINVAL;
    }
    if (n == 0)
        return 0;
    if (n > 1) {
        fprintf(stderr, "timebox-forkserver: %d sockets passed, one is wanted\n", n);
        return TBX_EINVAL;
    }
    /* 1: listening.  A stream or datagram socket, or one that does not
     * listen, would take connections the server cannot serve. */
    if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_SEQPACKET, 1, NULL, 0) <= 0) {
        fprintf(stderr, "timebox-forkserver: the passed socket is not a listening AF_UNIX "
                        "SOCK_SEQPACKET socket (ListenSequentialPacket=)\n");
        return TBX_EINVAL;
    }
    *fd = SD_LISTEN_FDS_START; /* sd_listen_fds made it close-on-exec */
    return 0;
}

void tbx__sd_notify(const char *state)
{
    (void)sd_notify(0, state);
}
