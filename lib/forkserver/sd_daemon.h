/*
 * The forkserver daemon's side of systemd (timebox-forkserver only; the
 * library never links libsystemd).  sd_daemon.c is built on libsystemd,
 * sd_daemon_none.c is its stand-in when libsystemd is missing at build time.
 */
#ifndef TIMEBOX_SD_DAEMON_H
#define TIMEBOX_SD_DAEMON_H

/* One line for --help: whether socket activation is available. */
extern const char tbx__sd_support[];

/* The listening socket systemd passed (socket activation) in *fd, or -1 in
 * *fd when none was passed; returns 0.  When what was passed cannot be used
 * (more than one socket, not a listening AF_UNIX SOCK_SEQPACKET socket, or a
 * build without libsystemd) it says why on stderr and returns TBX_EINVAL.
 * Removes LISTEN_FDS and LISTEN_PID from the environment either way. */
int tbx__sd_listen_fd(int *fd);

/* Tells the service manager state ("READY=1", "STOPPING=1"); does nothing
 * when no service manager listens ($NOTIFY_SOCKET unset) or without
 * libsystemd. */
void tbx__sd_notify(const char *state);

#endif
