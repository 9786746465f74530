/*
 * The forkserver subsystem: its server process (server*.c, main.c), its
 * client side in the caller (client.c, launch_forkserver.c), the socket that
 * joins them (unixsock.c) and its authentication (auth.c).  Server functions
 * are tbx__fs_server_*, client functions tbx__fs_client_*.
 */
#ifndef TBX_FORKSERVER_FORKSERVER_H
#define TBX_FORKSERVER_FORKSERVER_H

#include "auth.h"

#include <sys/stat.h>

/* The forkserver's environment: its connection's fd, its limits
 * ("max_children:request_timeout_ms"), and shared objects to preload
 * (newline-separated). */
#define TBX__FS_VAR "TIMEBOX_FORKSERVER"
#define TBX__FS_LIMITS_VAR "TIMEBOX_FORKSERVER_LIMITS"
#define TBX__FS_PRELOAD_VAR "TIMEBOX_FORKSERVER_PRELOAD"
#define TBX__FS_LISTEN_VAR "TIMEBOX_FORKSERVER_LISTEN" /* path to listen on */
#define TBX__FS_ALLOW_VAR "TIMEBOX_FORKSERVER_ALLOW"   /* uids, comma-separated */

/* What a forkserver process serves with: from its creator (spawned by
 * tbx_forkserver_start) or from timebox-forkserver's command line. */
#define TBX__MAX_ALLOW 16
typedef struct tbx__fs_config {
    int conn;                 /* the creator's connection; -1: none (daemon) */
    const char *listen_path;  /* NULL: serve the creator only */
    uint8_t key[TBX__KEY_LEN];
    unsigned max_children;    /* 0: the default */
    unsigned max_per_client;  /* 0: no limit beyond max_children */
    uint64_t request_timeout_ns; /* also the handshake's; 0: the default */
    uid_t allow[TBX__MAX_ALLOW]; /* besides the server's own uid */
    size_t nallow;
    const char *preload;      /* shared objects, newline-separated, or NULL */
    int listen_fd;            /* >= 0: a listening socket passed in (socket
                                 activation), served instead of one made at
                                 listen_path; it and its key outlive us */
    void (*notify)(const char *state); /* told READY=1 once serving and
                                 STOPPING=1 at shutdown; NULL: no one */
    int ready_fd;             /* gets an int32 (0 or why not) once serving */
    int write_key;            /* write the key to "<listen_path>.key" */
    int verbose;              /* log each refused client to stderr */
    int announce;             /* say "serving" on stderr once it serves */
} tbx__fs_config;

/* Becomes the forkserver: loads preloads, runs preload hooks, listens if
 * asked, reports ready (on conn or ready_fd), serves; never returns.  On
 * SIGTERM, or when conn closes, it kills its children, removes its socket
 * and exits 0. */
__attribute__((noreturn)) void tbx__fs_server_run(tbx__fs_config *cfg);

/* Creates a listening SOCK_SEQPACKET socket at path: its directory is made
 * with mode 0700 if missing and must otherwise belong to us and let no one
 * else in (shared: other uids are allowed in, so the directory may let them
 * search it, never write, and the socket is made 0666 after it is bound);
 * the socket is bound under umask 0177 (mode 0600 from birth) and a
 * stale socket of ours at path (nobody answers on it) is replaced; a live one
 * is -EADDRINUSE.  -ENAMETOOLONG when path does not fit in sun_path (never
 * truncated).  Returns the fd, with the socket's inode in *ret_st (a server
 * removes only its own socket); or -errno with what is wrong in why. */
int tbx__fs_server_listen(const char *path, int shared, struct stat *ret_st, char *why,
                          size_t why_len);
/* Connects to a shared forkserver at path and authenticates both ways.
 * Returns the connection or -errno / TBX_EPROTO (bad key either way). */
int tbx__fs_client_connect(const char *path, const uint8_t key[TBX__KEY_LEN], double timeout_s);

/* If this process was started as a forkserver, becomes it. */
void tbx__fs_server_maybe_serve(void);


#endif /* TBX_FORKSERVER_FORKSERVER_H */
